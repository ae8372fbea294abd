//! The async driver: runs one [`Engine`] per (database, replica) pair on a schedule.
//!
//! Sync timing: the driver polls the WAL's size and modification time every
//! `monitor_interval_ms` (a `stat`, no reads) and is woken at once by file notifications
//! (inotify) on the database's directory. When it changed, it syncs at once if the previous
//! upload is at least `sync_interval_ms` old, otherwise when that interval ends. So sparse writes
//! replicate within one poll, sustained writes cost at most one PUT per interval, and no commit
//! waits longer than the interval plus one upload. Nothing is listed while idle.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::compact;
use crate::engine::{Clock, Engine, EngineConfig, EngineError, OsFiles};
use crate::replica::{LEVEL_MAX, Replica, SNAPSHOT_LEVEL};

/// When things happen. Defaults are Litestream's.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub sync_interval_ms: i64,
    pub monitor_interval_ms: i64,
    /// Compaction interval for levels 1, 2, ...
    pub levels_ms: Vec<i64>,
    pub snapshot_interval_ms: i64,
    pub snapshot_retention_ms: i64,
    pub l0_retention_ms: i64,
    pub retention_enabled: bool,
    /// Upper bound of the retry backoff after a failed sync.
    pub backoff_max_ms: i64,
    pub shutdown_sync_timeout_ms: i64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            sync_interval_ms: 1000,
            monitor_interval_ms: 1000,
            levels_ms: vec![30_000, 300_000, 3_600_000],
            snapshot_interval_ms: 24 * 3_600_000,
            snapshot_retention_ms: 24 * 3_600_000,
            l0_retention_ms: 300_000,
            retention_enabled: true,
            backoff_max_ms: 30_000,
            shutdown_sync_timeout_ms: 30_000,
        }
    }
}

/// Live figures for `status` and metrics.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct JobStatus {
    pub database: PathBuf,
    pub replica: String,
    pub replicated_txid: u64,
    /// When unshipped changes were first seen (Unix ms), if any are pending.
    pub pending_since_ms: Option<i64>,
    pub last_sync_ms: Option<i64>,
    pub syncs: u64,
    pub sync_errors: u64,
    pub resyncs: u64,
    pub last_error: Option<String>,
    /// Object-store requests per operation, counted by the job's `CountingStore`.
    #[serde(skip)]
    pub requests: std::sync::Arc<crate::counting::RequestCounts>,
}

impl JobStatus {
    /// Replication lag in ms: how long the oldest unshipped change has waited.
    pub fn lag_ms(&self, now_ms: i64) -> i64 {
        self.pending_since_ms.map_or(0, |t| (now_ms - t).max(0))
    }
}

pub type SharedStatus = Arc<Mutex<JobStatus>>;

/// One database replicated to one replica.
#[derive(Debug)]
pub struct Job {
    pub engine: EngineConfig,
    pub replica: Replica,
    pub schedule: Schedule,
    pub scratch: PathBuf,
}

fn align_next(now_ms: i64, interval_ms: i64) -> i64 {
    (now_ms / interval_ms + 1) * interval_ms
}

fn wal_stamp(db: &std::path::Path) -> Option<(u64, std::time::SystemTime, u64)> {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let w = std::fs::metadata(PathBuf::from(wal)).ok();
    let d = std::fs::metadata(db).ok()?;
    Some((
        w.as_ref().map_or(0, std::fs::Metadata::len),
        w.and_then(|m| m.modified().ok())
            .unwrap_or(std::time::UNIX_EPOCH),
        d.len(),
    ))
}

fn update(status: &SharedStatus, f: impl FnOnce(&mut JobStatus)) {
    let mut s = status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut s);
}

/// Runs a job until `shutdown` turns true, then makes a final sync (bounded by
/// `shutdown_sync_timeout_ms`).
pub async fn run(
    job: Job,
    clock: Arc<dyn Clock>,
    status: SharedStatus,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), EngineError> {
    let db_path = job.engine.db_path.clone();
    let mut backoff_ms = 100i64;
    // Opening can fail transiently (replica unreachable): retry until told to stop.
    let mut engine = loop {
        let files = Arc::new(OsFiles::open(&db_path).map_err(|error| EngineError::Io {
            path: db_path.clone(),
            error,
        })?);
        match Engine::open(
            job.engine.clone(),
            files,
            job.replica.clone(),
            clock.clone(),
        )
        .await
        {
            Ok(e) => break e,
            Err(EngineError::Store(e))
                if !matches!(e.kind, crate::store::StoreErrorKind::Permanent) =>
            {
                tracing::warn!(error = %e, retry_ms = backoff_ms, "cannot reach replica; retrying");
                update(&status, |s| s.last_error = Some(e.to_string()));
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = shutdown.changed() => {
                return Err(EngineError::Replica {
                    replica: job.replica.describe(),
                    message: "stopped before the replica could be reached; nothing was replicated".into(),
                });
            }
            () = tokio::time::sleep(Duration::from_millis(u64::try_from(backoff_ms).unwrap_or(100))) => {}
        }
        backoff_ms = (backoff_ms * 2).min(job.schedule.backoff_max_ms);
    };
    let s = &job.schedule;
    let now = clock.now_ms();
    update(&status, |st| {
        st.replicated_txid = engine.position().txid;
        st.last_sync_ms = Some(now);
    });
    let mut last_upload_ms = i64::MIN / 2;
    let mut pending_since: Option<i64> = Some(now);
    let mut last_stamp = None;
    let mut retry_at_ms = i64::MIN;
    backoff_ms = 100;
    let mut next_level: Vec<i64> = s.levels_ms.iter().map(|&i| align_next(now, i)).collect();
    // A snapshot shipped while opening counts: the whole database is not uploaded twice.
    let (mut next_snapshot, mut snapshot_txid) = if engine.opened_with_snapshot() {
        (now + s.snapshot_interval_ms, engine.position().txid)
    } else {
        (
            newest_snapshot_due(&job.replica, s.snapshot_interval_ms, now).await,
            0u64,
        )
    };
    // Per level: the TXID when it last ran, and whether it produced a file its next level has
    // not consumed yet.
    let mut ran_at_txid = vec![0u64; s.levels_ms.len()];
    let mut produced = vec![false; s.levels_ms.len()];
    let wake = Arc::new(tokio::sync::Notify::new());
    let _watcher = watch_database(&db_path, wake.clone());
    loop {
        // Sleep until the next thing that is due, a file notification, or the monitor
        // interval (the fallback where notifications do not work, e.g. network filesystems).
        let now = clock.now_ms();
        let mut due = now + s.monitor_interval_ms;
        if pending_since.is_some() {
            due = due.min((last_upload_ms + s.sync_interval_ms).max(retry_at_ms));
        }
        due = next_level
            .iter()
            .fold(due.min(next_snapshot), |d, n| d.min(*n));
        let sleep_ms =
            u64::try_from((due - now).clamp(1, s.monitor_interval_ms.max(1))).unwrap_or(1);
        tokio::select! {
            _ = shutdown.changed() => break,
            () = wake.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
        }
        let now = clock.now_ms();
        let stamp = wal_stamp(&db_path);
        if stamp != last_stamp {
            last_stamp = stamp;
            pending_since.get_or_insert(now);
        }
        if let Some(since) = pending_since
            && now - last_upload_ms >= s.sync_interval_ms
            && now >= retry_at_ms
        {
            match engine.sync().await {
                Ok(out) => {
                    backoff_ms = 100;
                    if out.shipped.is_some() {
                        last_upload_ms = now;
                    }
                    pending_since = out.more.then_some(since);
                    update(&status, |st| {
                        st.replicated_txid = engine.position().txid;
                        st.last_sync_ms = Some(now);
                        st.syncs += 1;
                        st.resyncs += u64::from(out.resynced);
                        st.last_error = None;
                    });
                }
                Err(e) => {
                    tracing::warn!(db = %db_path.display(), error = %e, retry_ms = backoff_ms, "sync failed; will retry");
                    retry_at_ms = now + backoff_ms;
                    backoff_ms = (backoff_ms * 2).min(s.backoff_max_ms);
                    update(&status, |st| {
                        st.sync_errors += 1;
                        st.last_error = Some(e.to_string());
                    });
                }
            }
            update(&status, |st| st.pending_since_ms = pending_since);
        }
        let txid = engine.position().txid;
        for (i, due) in next_level.iter_mut().enumerate() {
            if now >= *due {
                *due = align_next(now, s.levels_ms[i]);
                let level = u8::try_from(i + 1)
                    .unwrap_or(LEVEL_MAX - 1)
                    .min(SNAPSHOT_LEVEL - 1);
                // No LIST while idle: a level runs only when something new can reach it.
                let fresh = if i == 0 {
                    txid != ran_at_txid[0]
                } else {
                    produced[i - 1]
                };
                if !fresh {
                    continue;
                }
                ran_at_txid[i] = txid;
                match compact::compact_level(&job.replica, level, txid, &job.scratch).await {
                    Ok(Some(_)) => {
                        produced[i] = true;
                        if i > 0 {
                            produced[i - 1] = false;
                        }
                        // Level-0 files become deletable once level 1 covers them.
                        if level == 1 && s.retention_enabled {
                            enforce_retention(&job.replica, s, now).await;
                        }
                    }
                    Ok(None) => {
                        if i > 0 {
                            produced[i - 1] = false;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(level, error = %e, "compaction failed; will retry next interval")
                    }
                }
            }
        }
        if now >= next_snapshot && txid != snapshot_txid {
            next_snapshot = now + s.snapshot_interval_ms;
            snapshot_txid = txid;
            match compact::snapshot(&job.replica, txid, &job.scratch).await {
                Ok(info) => tracing::info!(file = %info, "snapshot written"),
                Err(e) => tracing::warn!(error = %e, "snapshot failed; will retry next interval"),
            }
            if s.retention_enabled {
                enforce_retention(&job.replica, s, now).await;
            }
        }
    }
    // Final sync, bounded.
    let timeout =
        Duration::from_millis(u64::try_from(s.shutdown_sync_timeout_ms).unwrap_or(30_000));
    match tokio::time::timeout(timeout, async {
        loop {
            let out = engine.sync().await?;
            if !out.more {
                return Ok::<_, EngineError>(());
            }
        }
    })
    .await
    {
        Ok(Ok(())) => {
            tracing::info!(db = %db_path.display(), txid = format_args!("{:016x}", engine.position().txid), "final sync done")
        }
        Ok(Err(e)) => tracing::warn!(db = %db_path.display(), error = %e, "final sync failed"),
        Err(_) => tracing::warn!(db = %db_path.display(), "final sync timed out"),
    }
    update(&status, |st| st.replicated_txid = engine.position().txid);
    engine.close()
}

/// Watches the database's directory so a write to the database or its WAL wakes the driver at
/// once. `None` (with a warning) where notifications are unavailable: polling remains.
fn watch_database(
    db: &std::path::Path,
    wake: Arc<tokio::sync::Notify>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = db.parent().map_or_else(
        || std::path::PathBuf::from("."),
        std::path::Path::to_path_buf,
    );
    let name = db.file_name()?.to_os_string();
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event.paths.iter().any(|p| {
                p.file_name()
                    .is_some_and(|f| f.as_encoded_bytes().starts_with(name.as_encoded_bytes()))
            })
        {
            wake.notify_one();
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(db = %db.display(), error = %e, "file notifications unavailable; polling instead");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(db = %db.display(), error = %e, "cannot watch the database directory; polling instead");
        return None;
    }
    Some(watcher)
}

/// When the next snapshot is due: an interval after the newest file covering TXID 1 at any level
/// (the level-0 file an empty replica starts with is a full snapshot too). One listing, at start.
async fn newest_snapshot_due(replica: &Replica, interval_ms: i64, now: i64) -> i64 {
    match replica.list_all().await {
        Ok(files) => files
            .iter()
            .filter(|f| f.min_txid == 1)
            .map(|f| f.created_ms + interval_ms)
            .max()
            .unwrap_or(now),
        Err(_) => now,
    }
}

async fn enforce_retention(replica: &Replica, s: &Schedule, now: i64) {
    let files = match replica.list_all().await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "retention: cannot list replica");
            return;
        }
    };
    for f in compact::plan_retention(&files, now, s.snapshot_retention_ms, s.l0_retention_ms) {
        if let Err(e) = replica.store.delete(&replica.key(&f)).await {
            tracing::warn!(file = %f, error = %e, "retention: delete failed");
        }
    }
}
