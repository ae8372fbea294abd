//! Turning a configuration into replication jobs, validated as a whole before anything starts.

use std::path::PathBuf;

use crate::config::{Config, DbConfig, ReplicaConfig};
use crate::engine::{CheckpointPolicy, EngineConfig};
use crate::replicate::{Job, Schedule};
use crate::url::ReplicaTarget;

fn ms(d: Option<crate::config::GoDuration>) -> Option<i64> {
    d.map(|d| i64::try_from(d.0.as_millis()).unwrap_or(i64::MAX))
}

/// Builds every job of `config`. Any error (bad URL, unsupported backend) fails the whole
/// configuration, so a bad entry never starts half of it.
pub fn jobs_from_config(config: &Config, scratch: &std::path::Path) -> Result<Vec<Job>, String> {
    let mut jobs = Vec::new();
    for db in &config.dbs {
        for (i, r) in db.replicas.iter().enumerate() {
            let target = ReplicaTarget::from_config(r)
                .map_err(|e| format!("database {} replica {i}: {e}", db.path))?;
            let replica = target
                .open(&r.settings)
                .map_err(|e| format!("database {} replica {i}: {e}", db.path))?;
            jobs.push(Job {
                engine: engine_config(db),
                replica,
                schedule: schedule(config, db, r),
                scratch: std::sync::Arc::new(crate::scratch::OsScratch::new(
                    scratch.join(format!("{}-{i}", jobs.len())),
                )),
                lease: None,
            });
        }
    }
    Ok(jobs)
}

fn engine_config(db: &DbConfig) -> EngineConfig {
    let mut e = EngineConfig::new(PathBuf::from(&db.path));
    if let Some(t) = ms(db.busy_timeout) {
        e.busy_timeout_ms = u64::try_from(t).unwrap_or(1000);
    }
    let d = CheckpointPolicy::default();
    e.checkpoint = CheckpointPolicy {
        min_pages: db.min_checkpoint_page_count.unwrap_or(d.min_pages),
        truncate_pages: db.truncate_page_n.unwrap_or(d.truncate_pages),
        interval_ms: ms(db.checkpoint_interval).unwrap_or(d.interval_ms),
    };
    if let Some(b) = db.max_sync_wal_bytes {
        e.sync_wal_bytes_max = b;
    }
    e
}

fn schedule(config: &Config, db: &DbConfig, r: &ReplicaConfig) -> Schedule {
    let mut s = Schedule::default();
    if let Some(v) = ms(r.settings.sync_interval) {
        s.sync_interval_ms = v;
    }
    if let Some(v) = ms(db.monitor_interval) {
        s.monitor_interval_ms = v.max(1);
    }
    if let Some(levels) = &config.levels {
        s.levels_ms = levels
            .iter()
            .map(|l| ms(Some(l.interval)).unwrap_or(30_000))
            .collect();
    }
    let snap = db.snapshot.as_ref().or(config.snapshot.as_ref());
    if let Some(v) = snap.and_then(|c| ms(c.interval)) {
        s.snapshot_interval_ms = v;
    }
    if let Some(v) = snap.and_then(|c| ms(c.retention)) {
        s.snapshot_retention_ms = v;
    }
    if let Some(v) = ms(config.l0_retention) {
        s.l0_retention_ms = v;
    }
    if let Some(r) = &config.retention {
        s.retention_enabled = r.enabled.unwrap_or(true);
    }
    if let Some(v) = ms(config.shutdown_sync_timeout) {
        s.shutdown_sync_timeout_ms = v;
    }
    s
}

/// The configuration `sluice replicate DB URL...` stands for.
pub fn config_from_args(db: &str, urls: &[String]) -> Result<Config, String> {
    let mut replicas = Vec::new();
    for u in urls {
        ReplicaTarget::parse(u)?;
        replicas.push(ReplicaConfig {
            url: Some(u.clone()),
            ..ReplicaConfig::default()
        });
    }
    Ok(Config {
        dbs: vec![DbConfig {
            path: crate::config::expand_path(db),
            replicas,
            ..DbConfig::default()
        }],
        ..Config::default()
    })
}
