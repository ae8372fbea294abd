//! Large databases. A database of random rows (incompressible, 1088 MiB by default: past the
//! 1 GiB lock-byte page) under 100 commits/s of random single-row updates with SQLite's default
//! auto-checkpoint, the load under which a replicator that loses WAL continuity rereads the
//! whole file. Each tool starts on it at its defaults with the load running: time until its
//! first snapshot is on S3, its peak RSS, and the bytes it reads per minute afterwards beside
//! the bytes the writer wrote. Then both tools restore their replicas, beside the floor (the
//! replica's largest file in large GETs on one connection, written and fsynced) and `cp` of the
//! database plus fsync.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use serde::Serialize;

use super::{mib, same_file, wait_first_file, wait_settled};
use crate::Ctx;
use crate::plot;
use crate::proc::{FileReads, Sample, Sampler, Tool};
use crate::report::{Report, Stat, verdict};
use crate::s3::{files, floor_get};
use crate::workload::{self, PAGE_SIZE};

const LOAD_COMMITS_PER_S: u64 = 100;
/// Targets (issue 10 and 13).
const TARGET_RSS_BASE_KIB: f64 = 64.0 * 1024.0;
const TARGET_RESTORE_VS_LITESTREAM: f64 = 0.5;
const TARGET_RESTORE_VS_FLOOR: f64 = 1.2;
const TARGET_READ_VS_WRITTEN: f64 = 2.0;

#[derive(Serialize)]
struct Replication {
    tool: Tool,
    first_snapshot_s: f64,
    first_snapshot_peak_rss_kib: u64,
    steady_peak_rss_kib: u64,
    /// Restarted with a short `snapshot.interval`: seconds until its first scheduled snapshot
    /// was on S3, and the restarted process's peak RSS to then; or why it was not measured
    /// (the other figures are kept: the replicator is started again to settle).
    scheduled_snapshot: std::result::Result<(f64, u64), String>,
    load_seconds: f64,
    load_commits: u64,
    /// Everything the replicator read (`rchar`: the database, sockets, its own files).
    read_bytes_per_min: f64,
    /// What it read from the database and its WAL (`strace`), if strace could attach.
    db_read_bytes_per_min: Option<f64>,
    /// WAL frames the writer's commits wrote, in bytes.
    wal_bytes_per_min: f64,
    #[serde(skip)]
    samples: Vec<Sample>,
    #[serde(skip)]
    expected: PathBuf,
    #[serde(skip)]
    path: String,
}

#[derive(Serialize)]
struct Size {
    mib: u64,
    db_bytes: u64,
    pages: u64,
    replication: Vec<Replication>,
    sluice_restore_s: Stat,
    litestream_restore_s: Stat,
    sluice_restore_rss_kib: Stat,
    litestream_restore_rss_kib: Stat,
    floor_s: Stat,
    cp_s: Stat,
    sluice_over_litestream: Stat,
    sluice_over_floor: Stat,
    #[serde(skip)]
    restore_samples: Vec<(Tool, Vec<Sample>)>,
}

/// A replicator's log, kept beside the report (`OUT/logs/`) for whoever reads a figure and
/// wants to know why.
fn kept_log(ctx: &Ctx, dir: &Path, name: &str) -> Result<std::path::PathBuf> {
    let logs = ctx.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let size = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    Ok(logs.join(format!("{size}-{name}")))
}

fn replicate(
    ctx: &Ctx,
    link: &crate::s3::Link,
    tool: Tool,
    db: &Path,
    rows: u64,
    dir: &Path,
) -> Result<Replication> {
    let path = format!(
        "{}/size/{}-{}",
        ctx.run_id,
        dir.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        tool.name()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (db, stop) = (db.to_path_buf(), stop.clone());
        let run = tool as u64;
        std::thread::spawn(move || workload::update_load(&db, rows, LOAD_COMMITS_PER_S, run, &stop))
    };
    // The load runs a moment before the replicator starts, as on a live host.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut replicator = ctx.tools.replicate(
        tool,
        db,
        &link.url(&path),
        &kept_log(ctx, dir, &format!("{}.log", tool.name()))?,
    )?;
    let sampler = Sampler::start(replicator.pid());
    let waited = wait_first_file(ctx, link, &path, &mut replicator);
    let first_snapshot_s = started.elapsed().as_secs_f64();
    let at_snapshot = sampler.last();
    let load_s = if ctx.quick { 10.0 } else { 60.0 };
    let mut db_reads = None;
    if waited.is_ok() {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        db_reads = FileReads::attach(replicator.pid(), &[db.to_path_buf(), PathBuf::from(wal)])
            .map_err(|e| eprintln!("sluice-bench: not counting reads of the database: {e:#}"))
            .ok();
        std::thread::sleep(Duration::from_secs_f64(load_s));
    }
    let at_end = sampler.last();
    let db_read = db_reads.map(FileReads::finish).transpose()?;
    // A scheduled snapshot, under the same load: the tool restarted with a short interval
    // (both take one when the interval has passed since the last; Litestream at the next
    // multiple of it).
    let scheduled = waited.and_then(|()| {
        replicator.stop()?;
        Ok(scheduled_snapshot(ctx, link, tool, db, &path, dir))
    });
    stop.store(true, Ordering::Relaxed);
    let loaded = load
        .join()
        .map_err(|_| anyhow!("the load thread panicked"))?;
    let (mut replicator, scheduled) = match scheduled? {
        Ok((r, seconds, sampler)) => (r, Ok((seconds, sampler))),
        Err(e) => {
            // The scheduled snapshot is one figure: the rest stand, with a replicator started
            // again (default settings) to settle the replica for the restore.
            let why = format!("{e:#}");
            eprintln!("sluice-bench: no scheduled snapshot measured: {why}");
            let again = ctx.tools.replicate(
                tool,
                db,
                &link.url(&path),
                &kept_log(ctx, dir, &format!("{}-settle.log", tool.name()))?,
            )?;
            (
                again,
                Err(why.lines().next().unwrap_or_default().to_string()),
            )
        }
    };
    let (load_commits, wal_written) = loaded?;
    let load_total_s = started.elapsed().as_secs_f64() + 0.5;
    wait_settled(ctx, link, &path, &mut replicator)?;
    replicator.stop()?;
    let scheduled_snapshot = scheduled.map(|(seconds, sampler)| (seconds, sampler.peak_hwm_kib()));
    let samples = sampler.finish();
    let conn = workload::open(db)?;
    workload::checkpoint_truncate(&conn)?;
    drop(conn);
    let expected = dir.join(format!("expected-{}.db", tool.name()));
    std::fs::copy(db, &expected)?;
    let window_s = (at_end.t_s - at_snapshot.t_s).max(1e-3);
    Ok(Replication {
        tool,
        first_snapshot_s,
        first_snapshot_peak_rss_kib: at_snapshot.hwm_kib,
        steady_peak_rss_kib: samples
            .iter()
            .filter(|s| s.t_s >= at_snapshot.t_s)
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(0),
        scheduled_snapshot,
        load_seconds: load_total_s,
        load_commits,
        read_bytes_per_min: at_end.read_bytes.saturating_sub(at_snapshot.read_bytes) as f64
            / window_s
            * 60.0,
        db_read_bytes_per_min: db_read.map(|(bytes, s)| bytes as f64 / s.max(1e-3) * 60.0),
        wal_bytes_per_min: wal_written as f64 / load_total_s * 60.0,
        samples,
        expected,
        path,
    })
}

/// `snapshot.interval` of the restarted replicator.
const SCHEDULED_SNAPSHOT_INTERVAL: &str = "10s";

/// Starts `tool` on `db` again with a `snapshot.interval` of [`SCHEDULED_SNAPSHOT_INTERVAL`]
/// and waits until a level-9 file the replica did not hold before is there. Returns the
/// running replicator, the seconds that took, and the sampler of its memory (started first).
fn scheduled_snapshot(
    ctx: &Ctx,
    link: &crate::s3::Link,
    tool: Tool,
    db: &Path,
    path: &str,
    dir: &Path,
) -> Result<(crate::proc::Running, f64, Sampler)> {
    let replica = link.replica(path)?;
    let snapshots = || -> Result<Vec<(u64, u64)>> {
        Ok(ctx
            .rt
            .block_on(files(&replica))?
            .into_iter()
            .filter(|f| f.level == sluice_core::replica::SNAPSHOT_LEVEL)
            .map(|f| (f.min_txid, f.max_txid))
            .collect())
    };
    let before = snapshots()?;
    let config = dir.join(format!("scheduled-{}.yml", tool.name()));
    std::fs::write(
        &config,
        format!(
            "snapshot:\n  interval: {SCHEDULED_SNAPSHOT_INTERVAL}\ndbs:\n  - path: \"{}\"\n    replica:\n      url: \"{}\"\n",
            db.display(),
            link.url(path)
        ),
    )?;
    let started = Instant::now();
    let mut replicator = ctx.tools.replicate_config(
        tool,
        &config,
        &kept_log(ctx, dir, &format!("{}-scheduled.log", tool.name()))?,
    )?;
    let sampler = Sampler::start(replicator.pid());
    replicator.wait_until("a scheduled snapshot", || {
        Ok(snapshots()?.iter().any(|s| !before.contains(s)))
    })?;
    Ok((replicator, started.elapsed().as_secs_f64(), sampler))
}

fn one_size(ctx: &Ctx, size_mib: u64) -> Result<Size> {
    let dir = ctx.work.join(format!("size-{size_mib}"));
    std::fs::create_dir_all(&dir)?;
    // The database, and per tool a copy of its end state, a restore's output and a replica
    // holding the snapshot at several levels (L0, L1, L2 and a scheduled L9).
    let need = size_mib * (1 << 20) * (1 + 5 * ctx.size_tools.len() as u64);
    let free = nix::sys::statvfs::statvfs(&dir)?;
    let avail = free.blocks_available() as u64 * free.fragment_size() as u64;
    anyhow::ensure!(
        avail > need,
        "{size_mib} MiB needs about {} GiB free in {} (the database, per tool a copy, a replica \
         on the S3 server with the snapshot at several levels, a restore; --size-sluice-only \
         halves it); {} GiB are",
        need >> 30,
        dir.display(),
        avail >> 30
    );
    let db = dir.join("large.db");
    let t = Instant::now();
    let rows = workload::large(&db, size_mib << 20)?;
    let db_bytes = std::fs::metadata(&db)?.len();
    eprintln!(
        "sluice-bench: built a {:.0} MiB database in {:.0?}",
        mib(db_bytes),
        t.elapsed()
    );
    let link = ctx.s3.link()?;
    let mut replication = Vec::new();
    for &tool in &ctx.size_tools {
        replication.push(replicate(ctx, &link, tool, &db, rows, &dir)?);
    }
    let _ = std::fs::remove_file(&db);
    let out = dir.join("out.db");
    let log = dir.join("restore.log");
    let runs = if ctx.quick { 2 } else { ctx.runs.min(3) };
    let (mut s, mut l, mut s_rss, mut l_rss, mut floor, mut cp) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut restore_samples = Vec::new();
    let sluice_replica = link.replica(&replication[0].path)?;
    let largest = ctx
        .rt
        .block_on(files(&sluice_replica))?
        .into_iter()
        .max_by_key(|f| f.size)
        .ok_or_else(|| anyhow!("sluice's replica of the large database is empty"))?;
    for run in 0..runs {
        for r in &replication {
            let (m, samples) = ctx.tools.restore(r.tool, &link.url(&r.path), &out, &log)?;
            if run == 0 {
                same_file(
                    &r.expected,
                    &out,
                    &format!("{} restore of the {size_mib} MiB database", r.tool.name()),
                )?;
                restore_samples.push((r.tool, samples));
            }
            std::fs::remove_file(&out)?;
            match r.tool {
                Tool::Sluice => {
                    s.push(m.wall_s);
                    s_rss.push(m.max_rss_kib as f64);
                }
                Tool::Litestream => {
                    l.push(m.wall_s);
                    l_rss.push(m.max_rss_kib as f64);
                }
            }
        }
        let key = sluice_replica.key(&largest);
        floor.push(ctx.rt.block_on(floor_get(
            &link,
            &replication[0].path,
            &key,
            largest.size,
            &out,
        ))?);
        std::fs::remove_file(&out)?;
        let t = Instant::now();
        std::fs::copy(&replication[0].expected, &out)?;
        std::fs::File::open(&out)?.sync_all()?;
        cp.push(t.elapsed().as_secs_f64());
        std::fs::remove_file(&out)?;
    }
    for r in &replication {
        let _ = std::fs::remove_file(&r.expected);
    }
    Ok(Size {
        mib: size_mib,
        db_bytes,
        pages: db_bytes / u64::from(PAGE_SIZE),
        replication,
        sluice_over_litestream: Stat::ratio(&s, &l),
        sluice_over_floor: Stat::ratio(&s, &floor),
        sluice_restore_s: Stat::of(s),
        litestream_restore_s: Stat::of(l),
        sluice_restore_rss_kib: Stat::of(s_rss),
        litestream_restore_rss_kib: Stat::of(l_rss),
        floor_s: Stat::of(floor),
        cp_s: Stat::of(cp),
        restore_samples,
    })
}

pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    // A size that fails is reported beside the ones that did not, not instead of them.
    let mut sizes: Vec<Size> = Vec::new();
    let mut failed = Vec::new();
    for &m in &ctx.size_mib {
        match one_size(ctx, m) {
            Ok(z) => sizes.push(z),
            Err(e) => failed.push(format!("{m} MiB: {e:#}")),
        }
    }
    if sizes.is_empty() {
        anyhow::bail!("{}", failed.join("; "));
    }
    report.section("Large databases");
    report.line(format!(
        "Random rows of {} bytes (incompressible), page size {PAGE_SIZE}; {LOAD_COMMITS_PER_S} \
         random single-row updates a second with SQLite's default auto-checkpoint, running \
         before each tool starts and until its replica settles. One run per tool for \
         replication; restores alternate the tools. Per minute, in the {} s after the first \
         snapshot: read from the database, what the replicator's `read` calls on the database \
         and its `-wal` returned (counted by `strace` on every thread); all reads, its `rchar` \
         (sockets and its own spool and cache files too); WAL written, the frames of the \
         writer's commits (a WAL hook counting them). Then, the load still running, each \
         tool is restarted with `snapshot.interval: {SCHEDULED_SNAPSHOT_INTERVAL}` until its \
         first scheduled snapshot (a new level-9 file) is on S3: the seconds from the restart \
         and the restarted process's peak RSS.",
        workload::BLOB_BYTES,
        if ctx.quick { 10 } else { 60 }
    ));
    let mut rows = Vec::new();
    for z in &sizes {
        for r in &z.replication {
            rows.push(vec![
                format!("{} MiB", z.mib),
                r.tool.name().to_string(),
                format!("{:.1}", r.first_snapshot_s),
                format!("{:.0}", r.first_snapshot_peak_rss_kib as f64 / 1024.0),
                format!("{:.0}", r.steady_peak_rss_kib as f64 / 1024.0),
                match &r.scheduled_snapshot {
                    Ok((seconds, kib)) => format!("{:.0} ({seconds:.0} s)", *kib as f64 / 1024.0),
                    Err(why) => format!("not measured: {why}"),
                },
                r.db_read_bytes_per_min
                    .map_or_else(|| "—".into(), |b| format!("{:.0}", mib(b as u64))),
                format!("{:.0}", mib(r.read_bytes_per_min as u64)),
                format!("{:.0}", mib(r.wal_bytes_per_min as u64)),
            ]);
        }
    }
    report.table(
        &[
            "database",
            "tool",
            "first snapshot s",
            "peak RSS to it MiB",
            "peak RSS after MiB",
            "peak RSS to a scheduled snapshot MiB",
            "read from the database MiB/min",
            "all reads MiB/min",
            "WAL written MiB/min",
        ],
        &rows,
    );
    let mut rows = Vec::new();
    for z in &sizes {
        rows.push(vec![
            format!("{} MiB", z.mib),
            z.sluice_restore_s.show(2),
            z.litestream_restore_s.show(2),
            z.floor_s.show(2),
            z.cp_s.show(2),
            z.sluice_over_litestream.show(2),
            z.sluice_over_floor.show(2),
            format!(
                "{:.0} / {}",
                z.sluice_restore_rss_kib.median / 1024.0,
                if z.litestream_restore_rss_kib.runs.is_empty() {
                    "not run".to_string()
                } else {
                    format!("{:.0}", z.litestream_restore_rss_kib.median / 1024.0)
                }
            ),
        ]);
    }
    report.table(
        &[
            "database",
            "sluice restore s",
            "Litestream restore s",
            "floor s",
            "cp + fsync s",
            "sluice / Litestream",
            "sluice / floor",
            "restore peak RSS MiB sluice / Litestream",
        ],
        &rows,
    );
    for z in &sizes {
        let s = &z.replication[0];
        let rss_target = TARGET_RSS_BASE_KIB + (z.pages * 8) as f64 / 1024.0;
        let peak =
            s.first_snapshot_peak_rss_kib
                .max(s.steady_peak_rss_kib)
                .max(s.scheduled_snapshot.as_ref().map_or(0, |(_, kib)| *kib)) as f64;
        let read = s.db_read_bytes_per_min.map_or_else(
            || "not measured (strace could not attach)".to_string(),
            |b| {
                let ratio = b / s.wal_bytes_per_min.max(1.0);
                format!(
                    "{ratio:.2}: {}",
                    verdict(ratio, TARGET_READ_VS_WRITTEN, true)
                )
            },
        );
        report.line(format!(
            "- {} MiB targets: replicator peak RSS {:.0} MiB{} ≤ {:.0} MiB (64 MiB + 8 B a page): {}; \
             restore RSS {:.0} MiB ≤ 64 MiB: {}; read from the database / WAL written {read}; restore / \
             Litestream {:.2}: {}; restore / floor {:.2}: {}.",
            z.mib,
            peak / 1024.0,
            if s.scheduled_snapshot.is_ok() {
                ""
            } else {
                " (no scheduled snapshot measured)"
            },
            rss_target / 1024.0,
            verdict(peak / 1024.0, (rss_target / 1024.0).round(), true),
            z.sluice_restore_rss_kib.median / 1024.0,
            verdict(z.sluice_restore_rss_kib.median / 1024.0, 64.0, true),
            z.sluice_over_litestream.median,
            verdict(z.sluice_over_litestream.median, TARGET_RESTORE_VS_LITESTREAM, true),
            z.sluice_over_floor.median,
            verdict(z.sluice_over_floor.median, TARGET_RESTORE_VS_FLOOR, true),
        ));
    }
    if let Some(z) = sizes.last() {
        let series: Vec<plot::Series> = z
            .replication
            .iter()
            .map(|r| super::rss_series(r.tool, &r.samples))
            .collect();
        report.figure(
            &ctx.out,
            "rss_replicate_large.svg",
            &format!(
                "Replicator RSS: first snapshot of {} MiB under load, then steady writes",
                z.mib
            ),
            "seconds since start",
            "RSS (MiB)",
            &series,
        )?;
        let series: Vec<plot::Series> = z
            .restore_samples
            .iter()
            .map(|(t, samples)| super::rss_series(*t, samples))
            .collect();
        report.figure(
            &ctx.out,
            "rss_restore_large.svg",
            &format!("Restore RSS: {} MiB", z.mib),
            "seconds since start",
            "RSS (MiB)",
            &series,
        )?;
    }
    let pick = |f: fn(&Size) -> f64, label: &str| plot::Series {
        label: label.into(),
        // A figure not measured (Litestream left out of a size) is not a point.
        points: sizes
            .iter()
            .map(|z| (mib(z.db_bytes), f(z)))
            .filter(|(_, y)| y.is_finite())
            .collect(),
    };
    let series = [
        pick(|z| z.sluice_restore_s.median, "sluice"),
        pick(|z| z.litestream_restore_s.median, "Litestream"),
        pick(|z| z.floor_s.median, "floor (GET + write + fsync)"),
        pick(|z| z.cp_s.median, "cp + fsync"),
    ];
    report.figure(
        &ctx.out,
        "restore_vs_size.svg",
        "Restore time vs database size",
        "database (MiB)",
        "seconds (median)",
        &series,
    )?;
    report.put("large", &sizes);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{}", failed.join("; ")))
    }
}
