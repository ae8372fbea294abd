//! The seed's restore: "100k rows in ~300 .wal files took about 25 seconds" from S3. A figure
//! ruled by round trips, so it is measured through a proxy that adds 0, 25 and 50 ms of
//! round-trip time, by both tools, on the same replicas, beside the floor (one LIST, one
//! round of parallel GETs of the files the restore needs, writing and fsyncing the database).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use super::{TOOLS, config, same_file, wait_first_file, wait_settled};
use crate::Ctx;
use crate::plot;
use crate::proc::{Tool, WAIT_MAX};
use crate::report::{Report, Stat, verdict};
use crate::s3::{Link, files, floor_restore, max_txid};
use crate::workload;

const ROWS: u64 = 100_000;
const COMMITS: u64 = 300;
/// Targets of the seed's restore at 50 ms round trip (issue 13).
const TARGET_VS_LITESTREAM: f64 = 0.25;
const TARGET_VS_FLOOR: f64 = 1.5;

/// One replica the restores read.
struct Shape {
    name: &'static str,
    path: String,
    /// The source database, checkpointed: what every restore must reproduce.
    source: PathBuf,
    files: usize,
    bytes: u64,
}

#[derive(Serialize)]
struct Row {
    replica: &'static str,
    files: usize,
    replica_bytes: u64,
    rtt_ms: u64,
    sluice_s: Stat,
    litestream_s: Stat,
    floor_s: Stat,
    sluice_over_litestream: Stat,
    sluice_over_floor: Stat,
    sluice_rss_kib: Stat,
    litestream_rss_kib: Stat,
}

/// Writes the seed's workload with `tool` replicating to `path` and returns the shape.
/// `per_commit`: 20 ms intervals and each commit waits until it is shipped (one L0 file each).
fn build(
    ctx: &Ctx,
    link: &Link,
    tool: Tool,
    per_commit: bool,
    name: &'static str,
) -> Result<Shape> {
    let dir = ctx.work.join(format!("restore-{}", name.replace(' ', "-")));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("src.db");
    let path = format!(
        "{}/restore/{}",
        ctx.run_id,
        dir.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    );
    let url = link.url(&path);
    let mut conn = workload::open(&db)?;
    conn.execute_batch("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT); INSERT INTO meta VALUES ('seed', 'restore');")?;
    let log = dir.join(format!("{}.log", tool.name()));
    let mut replicator = if per_commit {
        let cfg = config(&dir, &db, &url, "20ms")?;
        ctx.tools.replicate_config(tool, &cfg, &log)?
    } else {
        ctx.tools.replicate(tool, &db, &url, &log)?
    };
    wait_first_file(ctx, link, &path, &mut replicator)?;
    let replica = link.replica(&path)?;
    let rt = &ctx.rt;
    let mut last = rt.block_on(max_txid(&replica))?;
    workload::seed_rows(&mut conn, ROWS, COMMITS, || {
        if !per_commit {
            return Ok(());
        }
        // Each commit is one TXID: wait until the replica holds it, so it gets a file alone.
        let started = Instant::now();
        loop {
            let now = rt.block_on(max_txid(&replica))?;
            if now > last {
                last = now;
                return Ok(());
            }
            if started.elapsed() > WAIT_MAX {
                bail!("{} did not ship a commit within {WAIT_MAX:?}", tool.name());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })?;
    wait_settled(ctx, link, &path, &mut replicator)?;
    replicator.stop()?;
    workload::checkpoint_truncate(&conn)?;
    if per_commit {
        // The seed's shape is level 0 alone. Litestream compacts level 0 into level 1 every
        // 30 s, so whether a compaction ran during the build depends on timing: remove what
        // it wrote, and every restore reads the 300 level-0 files.
        for f in ctx.rt.block_on(files(&replica))? {
            if (1..sluice_core::replica::SNAPSHOT_LEVEL).contains(&f.level) {
                ctx.rt.block_on(replica.store.delete(&replica.key(&f)))?;
            }
        }
    }
    let all = ctx.rt.block_on(files(&replica))?;
    Ok(Shape {
        name,
        path,
        source: db,
        files: all.len(),
        bytes: all.iter().map(|f| f.size).sum(),
    })
}

pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let link = ctx.s3.link()?;
    let mut shapes = vec![
        build(ctx, &link, Tool::Litestream, true, "one file per commit")?,
        build(ctx, &link, Tool::Sluice, false, "written by sluice")?,
    ];
    // The quick run (CI) keeps to the seed's shape and sluice's own: Litestream restoring its
    // 300 files through 50 ms takes half a minute a run (and through 25 ms, a quarter).
    if !ctx.quick {
        shapes.push(build(
            ctx,
            &link,
            Tool::Litestream,
            false,
            "written by Litestream",
        )?);
    }
    let runs = if ctx.quick { 2 } else { ctx.runs };
    let rtts_ms: &[u64] = if ctx.quick { &[0, 25] } else { &[0, 25, 50] };
    let out = ctx.work.join("restore-out");
    std::fs::create_dir_all(&out)?;
    let mut rows = Vec::new();
    for shape in &shapes {
        for &rtt_ms in rtts_ms {
            link.set_rtt(Duration::from_millis(rtt_ms));
            let url = link.url(&shape.path);
            let db_bytes = std::fs::metadata(&shape.source)?.len();
            let (mut s, mut l, mut f, mut s_rss, mut l_rss) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for run in 0..runs {
                for tool in TOOLS {
                    let target = out.join(format!("{}-{run}.db", tool.name()));
                    let log = out.join(format!("{}.log", tool.name()));
                    let (m, _) = ctx.tools.restore(tool, &url, &target, &log)?;
                    if run == 0 {
                        same_file(
                            &shape.source,
                            &target,
                            &format!("{} restore of {}", tool.name(), shape.name),
                        )?;
                    }
                    let _ = std::fs::remove_file(&target);
                    match tool {
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
                let floor_out = out.join("floor.db");
                f.push(
                    ctx.rt
                        .block_on(floor_restore(&link, &shape.path, db_bytes, &floor_out))?,
                );
                let _ = std::fs::remove_file(&floor_out);
            }
            rows.push(Row {
                replica: shape.name,
                files: shape.files,
                replica_bytes: shape.bytes,
                rtt_ms,
                sluice_over_litestream: Stat::ratio(&s, &l),
                sluice_over_floor: Stat::ratio(&s, &f),
                sluice_s: Stat::of(s),
                litestream_s: Stat::of(l),
                floor_s: Stat::of(f),
                sluice_rss_kib: Stat::of(s_rss),
                litestream_rss_kib: Stat::of(l_rss),
            });
        }
    }
    link.set_rtt(Duration::ZERO);

    report.section("The seed's restore: 100k rows in 300 commits, from S3");
    report.line(format!(
        "{ROWS} rows in {COMMITS} commits. Three replicas of the same workload: Litestream with \
         one level-0 file per commit (the seed's ~300 files), and each tool at its defaults. \
         Both tools restore every replica (each restores the other's files). Round-trip time \
         added by the proxy; the floor is one LIST of the replica, one round of parallel GETs of \
         the files a restore needs, and writing plus fsyncing the database. Seconds."
    ));
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                format!(
                    "{} ({} files, {:.1} MiB)",
                    r.replica,
                    r.files,
                    super::mib(r.replica_bytes)
                ),
                format!("{} ms", r.rtt_ms),
                r.sluice_s.show(3),
                r.litestream_s.show(3),
                r.floor_s.show(3),
                r.sluice_over_litestream.show(2),
                r.sluice_over_floor.show(2),
                format!(
                    "{:.0} / {:.0}",
                    r.sluice_rss_kib.median / 1024.0,
                    r.litestream_rss_kib.median / 1024.0
                ),
            ]
        })
        .collect();
    report.table(
        &[
            "replica",
            "RTT",
            "sluice s",
            "Litestream s",
            "floor s",
            "sluice / Litestream",
            "sluice / floor",
            "peak RSS MiB sluice / Litestream",
        ],
        &table,
    );
    if let Some(r) = rows
        .iter()
        .find(|r| r.files >= COMMITS as usize && r.rtt_ms == 50)
    {
        report.line(format!(
            "Targets at 50 ms, 300 files: sluice / Litestream {:.2}: {}; sluice / floor {:.2}: {}.",
            r.sluice_over_litestream.median,
            verdict(r.sluice_over_litestream.median, TARGET_VS_LITESTREAM, true),
            r.sluice_over_floor.median,
            verdict(r.sluice_over_floor.median, TARGET_VS_FLOOR, true)
        ));
    }
    let series: Vec<plot::Series> = shapes
        .iter()
        .flat_map(|shape| {
            let of = |pick: fn(&Row) -> f64, label: String| plot::Series {
                label,
                points: rows
                    .iter()
                    .filter(|r| r.replica == shape.name)
                    .map(|r| (r.rtt_ms as f64, pick(r)))
                    .collect(),
            };
            [
                of(|r| r.sluice_s.median, format!("sluice, {}", shape.name)),
                of(
                    |r| r.litestream_s.median,
                    format!("Litestream, {}", shape.name),
                ),
                of(|r| r.floor_s.median, format!("floor, {}", shape.name)),
            ]
        })
        .collect();
    report.figure(
        &ctx.out,
        "restore_vs_rtt.svg",
        "Restore time vs round-trip time",
        "round-trip time (ms)",
        "seconds (median)",
        &series,
    )?;
    report.put("seed_restore", &rows);
    Ok(())
}
