//! The report's parts, one module each, and what they share.

pub mod cost;
pub mod lag;
pub mod overhead;
pub mod restore;
pub mod sim;
pub mod size;

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::Ctx;
use crate::proc::{Running, Tool};
use crate::s3::{Link, max_txid};

/// Both tools, in the order each round runs them.
pub const TOOLS: [Tool; 2] = [Tool::Sluice, Tool::Litestream];

/// How long a replica's newest TXID must stay the same to count as settled (both tools ship
/// within their 1 s sync interval).
const SETTLED_FOR: Duration = Duration::from_secs(3);

/// Fails unless the two files hold the same bytes; names the first differing page.
pub fn same_file(expected: &Path, actual: &Path, what: &str) -> Result<()> {
    let mut a = std::io::BufReader::new(std::fs::File::open(expected)?);
    let mut b = std::io::BufReader::new(std::fs::File::open(actual)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut at = 0u64;
    loop {
        let na = read_full(&mut a, &mut ba)?;
        let nb = read_full(&mut b, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            let off = ba[..na.min(nb)]
                .iter()
                .zip(&bb[..na.min(nb)])
                .position(|(x, y)| x != y)
                .unwrap_or(na.min(nb));
            bail!(
                "{what}: {} and {} differ at byte {} (page {})",
                expected.display(),
                actual.display(),
                at + off as u64,
                (at + off as u64) / u64::from(crate::workload::PAGE_SIZE) + 1
            );
        }
        if na == 0 {
            return Ok(());
        }
        at += na as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Waits until the replica at `path` holds a file, while `replicator` runs.
pub fn wait_first_file(ctx: &Ctx, link: &Link, path: &str, replicator: &mut Running) -> Result<()> {
    let replica = link.replica(path)?;
    replicator.wait_until("its first LTX file", || {
        Ok(ctx.rt.block_on(max_txid(&replica))? > 0)
    })
}

/// Waits until the replica's newest TXID has stayed the same for [`SETTLED_FOR`]; returns it.
pub fn wait_settled(ctx: &Ctx, link: &Link, path: &str, replicator: &mut Running) -> Result<u64> {
    let replica = link.replica(path)?;
    let mut last = (0u64, Instant::now());
    replicator.wait_until("the replica to settle", || {
        let now = ctx.rt.block_on(max_txid(&replica))?;
        if now != last.0 {
            last = (now, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
        Ok(now > 0 && last.1.elapsed() >= SETTLED_FOR)
    })?;
    Ok(last.0)
}

/// A Litestream-format config replicating `db` to `url` with both intervals at `interval`
/// (sluice reads the same file).
pub fn config(dir: &Path, db: &Path, url: &str, interval: &str) -> Result<std::path::PathBuf> {
    let path = dir.join("replicate.yml");
    // Double-quoted YAML scalars: our temporary paths hold no quotes or backslashes.
    std::fs::write(
        &path,
        format!(
            "dbs:\n  - path: \"{}\"\n    monitor-interval: {interval}\n    replica:\n      url: \"{url}\"\n      sync-interval: {interval}\n",
            db.display()
        ),
    )?;
    Ok(path)
}

/// RSS over time of one process of `tool`, in MiB, for a plot.
pub fn rss_series(tool: Tool, samples: &[crate::proc::Sample]) -> crate::plot::Series {
    crate::plot::Series {
        label: tool.label().into(),
        points: samples
            .iter()
            .map(|s| (s.t_s, s.rss_kib as f64 / 1024.0))
            .collect(),
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// Whether a file replica holds a level-0 file yet (a replicator's first upload).
pub(crate) fn has_level0_file(replica: &std::path::Path) -> bool {
    std::fs::read_dir(replica.join("ltx").join("0")).is_ok_and(|mut d| d.next().is_some())
}
