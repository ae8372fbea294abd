//! The simulator's throughput: seeds per minute of `sluice-sim sweep` (1,000 transactions a
//! seed, restores and checks included), one process and two at once.

use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::Ctx;
use crate::report::{Report, Stat, verdict};

/// Target (issue 13): seeds per minute on this machine's two cores, two processes.
const TARGET_SEEDS_PER_MIN: f64 = 1000.0;

#[derive(Serialize)]
struct Figures {
    seeds_per_process: u64,
    one_process_seeds_per_min: Stat,
    two_processes_seeds_per_min: Stat,
}

fn sweep(ctx: &Ctx, from: u64, seeds: u64) -> Result<std::process::Child> {
    Ok(Command::new(&ctx.sim)
        .args([
            "sweep",
            "--jobs",
            "1",
            "--seeds",
            &format!("{from}..{}", from + seeds),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?)
}

fn wait(child: std::process::Child) -> Result<()> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "sluice-sim sweep failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let seeds: u64 = if ctx.quick { 15 } else { 120 };
    // Each round is a minute or two of both cores in the full run: three are enough.
    let rounds = if ctx.quick { 1 } else { ctx.runs.min(3) as u64 };
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let base = 1_000_000 + round * seeds * 3;
        let t = Instant::now();
        wait(sweep(ctx, base, seeds)?)?;
        one.push(seeds as f64 / t.elapsed().as_secs_f64() * 60.0);
        let t = Instant::now();
        let (a, b) = (
            sweep(ctx, base + seeds, seeds)?,
            sweep(ctx, base + 2 * seeds, seeds)?,
        );
        wait(a)?;
        wait(b)?;
        two.push(2.0 * seeds as f64 / t.elapsed().as_secs_f64() * 60.0);
    }
    let f = Figures {
        seeds_per_process: seeds,
        one_process_seeds_per_min: Stat::of(one),
        two_processes_seeds_per_min: Stat::of(two),
    };
    report.section("Simulator throughput");
    report.line(format!(
        "`sluice-sim sweep` of {seeds} consecutive seeds per process (1,000 transactions a \
         seed, with its restores and checks)."
    ));
    report.table(
        &["processes", "seeds/min"],
        &[
            vec!["1".into(), f.one_process_seeds_per_min.show(0)],
            vec!["2".into(), f.two_processes_seeds_per_min.show(0)],
        ],
    );
    report.line(format!(
        "Target: ≥ 1,000 seeds/min on two cores: {}.",
        verdict(
            f.two_processes_seeds_per_min.median,
            TARGET_SEEDS_PER_MIN,
            false
        )
    ));
    report.put("simulator", &f);
    Ok(())
}
