//! The S3 server both tools replicate to and restore from, reached through a `faultnet` proxy
//! that adds a round-trip time and counts requests by kind.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures::future::try_join_all;
use sluice_core::config::{ReplicaSettings, Secret};
use sluice_core::replica::{FileInfo, Replica};
use sluice_core::restore::{Target, plan};
use sluice_core::url::ReplicaTarget;

/// The server from `SLUICE_S3_*`, as `ci/servers.sh` exports it.
#[derive(Clone, Debug)]
pub struct S3 {
    upstream: SocketAddr,
    bucket: String,
    key: String,
    secret: String,
}

fn env_var(name: &str) -> Result<String> {
    std::env::var(name).map_err(|_| {
        anyhow!(
            "{name} is not set: the benchmark needs an S3 server (SLUICE_S3_ENDPOINT, \
             SLUICE_S3_BUCKET, SLUICE_S3_ACCESS_KEY, SLUICE_S3_SECRET_KEY); ci/bench starts one"
        )
    })
}

impl S3 {
    pub fn from_env() -> Result<S3> {
        let endpoint = env_var("SLUICE_S3_ENDPOINT")?;
        let upstream = endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("SLUICE_S3_ENDPOINT {endpoint:?} is not http://IP:PORT"))?;
        Ok(S3 {
            upstream,
            bucket: env_var("SLUICE_S3_BUCKET")?,
            key: env_var("SLUICE_S3_ACCESS_KEY")?,
            secret: env_var("SLUICE_S3_SECRET_KEY")?,
        })
    }

    /// The credentials as both tools read them.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", &self.key),
            ("AWS_SECRET_ACCESS_KEY", &self.secret),
            ("LITESTREAM_ACCESS_KEY_ID", &self.key),
            ("LITESTREAM_SECRET_ACCESS_KEY", &self.secret),
        ]
        .map(|(k, v)| (k.to_string(), v.clone()))
        .into()
    }

    /// A new proxy in front of the server (no added latency until [`Link::set_rtt`]).
    pub fn link(&self) -> Result<Link> {
        let proxy = faultnet::Proxy::start(self.upstream).context("cannot start the proxy")?;
        Ok(Link {
            s3: self.clone(),
            proxy,
        })
    }
}

/// One proxy in front of the server: every URL made here goes through it.
#[derive(Clone)]
pub struct Link {
    s3: S3,
    pub proxy: faultnet::Proxy,
}

impl Link {
    pub fn set_rtt(&self, rtt: Duration) {
        self.proxy.set_latency(rtt);
    }

    /// The replica URL of `path`, in the form both tools take (endpoint in the host).
    pub fn url(&self, path: &str) -> String {
        format!(
            "s3://{}.localhost:{}/{path}",
            self.s3.bucket, self.proxy.port
        )
    }

    /// sluice-core's view of the replica at `path` (a fresh client: new connections).
    pub fn replica(&self, path: &str) -> Result<Replica> {
        let settings = ReplicaSettings {
            access_key_id: Some(self.s3.key.clone()),
            secret_access_key: Some(Secret(self.s3.secret.clone())),
            ..ReplicaSettings::default()
        };
        ReplicaTarget::parse(&self.url(path))
            .and_then(|t| t.open(&settings))
            .map_err(|e| anyhow!(e))
    }
}

pub async fn files(replica: &Replica) -> Result<Vec<FileInfo>> {
    Ok(replica.list_all().await?)
}

/// The newest TXID the replica holds, 0 if none.
pub async fn max_txid(replica: &Replica) -> Result<u64> {
    Ok(files(replica)
        .await?
        .iter()
        .map(|f| f.max_txid)
        .max()
        .unwrap_or(0))
}

/// The restore floor: what any restore of the replica's latest state must do at the least.
/// One LIST of the whole replica, one round of GETs of every file the restore needs, all at
/// once, then writing the database's bytes to `out` and fsyncing it. Returns seconds.
pub async fn floor_restore(link: &Link, path: &str, db_bytes: u64, out: &Path) -> Result<f64> {
    let replica = link.replica(path)?;
    let started = Instant::now();
    // Keys and sizes are all a plan to the latest state needs: no HEAD per file.
    let metas = replica.store.list_untimed("").await?;
    let all: Vec<FileInfo> = metas
        .iter()
        .filter_map(|m| {
            let (level, min_txid, max_txid) = replica.layout.parse_key(&m.key)?;
            Some(FileInfo {
                level,
                min_txid,
                max_txid,
                size: m.size,
                created_ms: m.timestamp_ms,
            })
        })
        .collect();
    let chosen = plan(&replica.describe(), &all, Target::Latest)?;
    let bodies = try_join_all(chosen.iter().map(|f| {
        let key = replica.key(f);
        let store = replica.store.clone();
        async move { store.get_range(&key, 0, f.size).await }
    }))
    .await?;
    let got: u64 = bodies.iter().map(|b| b.len() as u64).sum();
    drop(bodies);
    write_and_sync(out, db_bytes)?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(got > 0, "the floor read nothing from {path}");
    Ok(secs)
}

/// Writes `bytes` zero bytes to `out` in 1 MiB writes and fsyncs it.
pub fn write_and_sync(out: &Path, bytes: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(out)?;
    let block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// Bytes per GET of the large-object floor: a few large requests, not one (which would hold
/// the whole object in this process's memory).
const FLOOR_GET_BYTES: u64 = 256 << 20;

/// The large-object floor: `key` read in [`FLOOR_GET_BYTES`] GETs one after the other (one
/// connection, as a single streamed GET would) and written to `out`, then fsync. Returns seconds.
pub async fn floor_get(link: &Link, path: &str, key: &str, size: u64, out: &Path) -> Result<f64> {
    use std::io::Write;
    let replica = link.replica(path)?;
    let started = Instant::now();
    let mut f = std::fs::File::create(out)?;
    let mut offset = 0;
    while offset < size {
        let body = replica
            .store
            .get_range(key, offset, FLOOR_GET_BYTES.min(size - offset))
            .await?;
        anyhow::ensure!(!body.is_empty(), "{key} ended at {offset} of {size} bytes");
        f.write_all(&body)?;
        offset += body.len() as u64;
    }
    f.sync_all()?;
    Ok(started.elapsed().as_secs_f64())
}
