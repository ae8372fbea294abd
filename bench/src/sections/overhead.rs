//! Writer overhead: commits per second of one connection committing single-row INSERTs as
//! fast as it can, with no replicator, with sluice, with Litestream (each replicating to a
//! file replica at its defaults), in rounds so drift hits all three alike.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::TOOLS;
use crate::Ctx;
use crate::proc::{Sampler, Tool};
use crate::report::{Report, Stat, verdict};
use crate::workload;

/// Target (issue 13): at most 3 % fewer commits/s than with no replicator.
const TARGET_OVERHEAD: f64 = 0.03;

#[derive(Serialize)]
struct Figures {
    seconds_per_run: f64,
    none_commits_per_s: Stat,
    sluice_commits_per_s: Stat,
    litestream_commits_per_s: Stat,
    sluice_overhead: Stat,
    litestream_overhead: Stat,
    /// The replicator's CPU seconds per second of the run (1.0 = one core).
    sluice_cpu_cores: Stat,
    litestream_cpu_cores: Stat,
}

/// Commits/s of one run, with `tool` replicating (or none), and the replicator's CPU seconds
/// per second of the run.
fn one(ctx: &Ctx, tool: Option<Tool>, round: usize, length: Duration) -> Result<(f64, f64)> {
    let name = tool.map_or("none", Tool::name);
    let dir = ctx.work.join(format!("overhead-{name}-{round}"));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("app.db");
    let conn = workload::open(&db)?;
    workload::marker_schema(&conn)?;
    let replicator = match tool {
        Some(t) => {
            let url = format!("file://{}", dir.join("replica").display());
            let mut r = ctx
                .tools
                .replicate(t, &db, &url, &dir.join("replicate.log"))?;
            let replica = dir.join("replica");
            r.wait_until("its first file", || Ok(super::has_level0_file(&replica)))?;
            Some(r)
        }
        None => None,
    };
    let sampler = replicator.as_ref().map(|r| Sampler::start(r.pid()));
    let before = sampler.as_ref().map(Sampler::last).unwrap_or_default();
    let rate = workload::saturate(&conn, length)?;
    let after = sampler.as_ref().map(Sampler::last).unwrap_or_default();
    if let Some(r) = replicator {
        r.stop()?;
    }
    drop(sampler);
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((rate, (after.cpu_s - before.cpu_s) / length.as_secs_f64()))
}

pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let length = Duration::from_secs(if ctx.quick { 3 } else { 10 });
    let (mut none, mut with, mut cpu) = (
        Vec::new(),
        [Vec::new(), Vec::new()],
        [Vec::new(), Vec::new()],
    );
    for round in 0..ctx.runs {
        none.push(one(ctx, None, round, length)?.0);
        for (i, tool) in TOOLS.into_iter().enumerate() {
            let (rate, cpu_share) = one(ctx, Some(tool), round, length)?;
            with[i].push(rate);
            cpu[i].push(cpu_share);
        }
    }
    let overhead = |w: &[f64]| Stat::of(w.iter().zip(&none).map(|(w, n)| 1.0 - w / n).collect());
    let f = Figures {
        seconds_per_run: length.as_secs_f64(),
        sluice_overhead: overhead(&with[0]),
        litestream_overhead: overhead(&with[1]),
        none_commits_per_s: Stat::of(none.clone()),
        sluice_commits_per_s: Stat::of(with[0].clone()),
        litestream_commits_per_s: Stat::of(with[1].clone()),
        sluice_cpu_cores: Stat::of(cpu[0].clone()),
        litestream_cpu_cores: Stat::of(cpu[1].clone()),
    };
    report.section("Writer overhead");
    report.line(format!(
        "One connection, single-row autocommit INSERTs (`synchronous=NORMAL`) as fast as it \
         goes for {} s, fresh database each run; overhead = 1 − commits/s with the replicator \
         ÷ commits/s with none in the same round.",
        length.as_secs()
    ));
    let pct = |s: &Stat| {
        format!(
            "{:.1} % ({:.1}–{:.1})",
            s.median * 100.0,
            s.min * 100.0,
            s.max * 100.0
        )
    };
    report.table(
        &[
            "replicator",
            "commits/s",
            "overhead",
            "replicator CPU (cores)",
        ],
        &[
            vec![
                "none".into(),
                f.none_commits_per_s.show(0),
                "—".into(),
                "—".into(),
            ],
            vec![
                "sluice".into(),
                f.sluice_commits_per_s.show(0),
                pct(&f.sluice_overhead),
                f.sluice_cpu_cores.show(2),
            ],
            vec![
                "Litestream".into(),
                f.litestream_commits_per_s.show(0),
                pct(&f.litestream_overhead),
                f.litestream_cpu_cores.show(2),
            ],
        ],
    );
    report.line(format!(
        "Target: sluice's overhead ≤ 3 %: {}.",
        verdict(f.sluice_overhead.median.max(0.0), TARGET_OVERHEAD, true)
    ));
    report.put("writer_overhead", &f);
    Ok(())
}
