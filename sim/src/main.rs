//! `sluice-sim run --seed N` and `sluice-sim sweep --seeds A..B | --minutes M`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_sim::run::{Report, run};

#[derive(Debug, Parser)]
#[command(
    name = "sluice-sim",
    about = "Deterministic fault-injection simulator for sluice"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one seed and print its event log, checks and figures.
    Run {
        #[arg(long)]
        seed: u64,
        /// Transactions in the fault phase.
        #[arg(long, default_value_t = 1000)]
        transactions: u32,
        /// Print only the summary.
        #[arg(long)]
        quiet: bool,
        /// Plant a deliberate engine bug (needs the `planted-bugs` feature).
        #[arg(long, value_name = "BUG")]
        plant: Option<String>,
    },
    /// Run many seeds; print failures with their replay lines.
    Sweep {
        /// A range `A..B` (end exclusive).
        #[arg(long)]
        seeds: Option<String>,
        /// Or run consecutive seeds from 0 for this many minutes.
        #[arg(long)]
        minutes: Option<f64>,
        #[arg(long, default_value_t = 1000)]
        transactions: u32,
        /// Plant a deliberate engine bug (needs the `planted-bugs` feature).
        #[arg(long, value_name = "BUG")]
        plant: Option<String>,
    },
}

fn plant(name: Option<&str>) -> Result<(), String> {
    let Some(name) = name else { return Ok(()) };
    if !sluice_core::planted::ENABLED {
        return Err("--plant needs a build with --features planted-bugs".into());
    }
    let bug = sluice_core::planted::Bug::parse(name).ok_or_else(|| {
        let names: Vec<_> = sluice_core::planted::Bug::ALL
            .iter()
            .map(|b| b.name())
            .collect();
        format!("unknown bug {name:?}; one of: {}", names.join(", "))
    })?;
    sluice_core::planted::plant(Some(bug));
    Ok(())
}

fn summary(r: &Report) -> String {
    let mut lags = r.lags_ms.clone();
    lags.sort_unstable();
    let p = |q: f64| {
        lags.get(((lags.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    format!(
        "seed {}: {} commits, {} restores checked, most commits lost at a crash {}, lag p50 {} ms p99 {} ms worst {} ms, RPO {}, log {:016x}",
        r.seed,
        r.commits,
        r.restores,
        r.lost_commits_max,
        p(0.5),
        p(0.99),
        r.worst_lag_ms,
        if r.passed() { "held" } else { "see failures" },
        r.log_hash()
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            seed,
            transactions,
            quiet,
            plant: bug,
        } => {
            if let Err(e) = plant(bug.as_deref()) {
                eprintln!("Error: {e}");
                return ExitCode::FAILURE;
            }
            let r = run(seed, transactions);
            if !quiet {
                for line in &r.log {
                    println!("{line}");
                }
            }
            println!("{}", summary(&r));
            if r.passed() {
                ExitCode::SUCCESS
            } else {
                for f in &r.failures {
                    println!("FAILED: {f}");
                }
                println!("replay: {}", r.replay_line());
                ExitCode::FAILURE
            }
        }
        Command::Sweep {
            seeds,
            minutes,
            transactions,
            plant: bug,
        } => {
            if let Err(e) = plant(bug.as_deref()) {
                eprintln!("Error: {e}");
                return ExitCode::FAILURE;
            }
            let range = match (seeds, minutes) {
                (Some(s), None) => {
                    let Some((a, b)) = s
                        .split_once("..")
                        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
                    else {
                        eprintln!("Error: --seeds takes A..B, e.g. 0..100");
                        return ExitCode::FAILURE;
                    };
                    (a, Some(b), None)
                }
                (None, Some(m)) => (
                    0,
                    None,
                    Some(std::time::Instant::now() + std::time::Duration::from_secs_f64(m * 60.0)),
                ),
                _ => {
                    eprintln!("Error: give exactly one of --seeds A..B or --minutes M");
                    return ExitCode::FAILURE;
                }
            };
            let started = std::time::Instant::now();
            let (mut seed, mut ran, mut failed) = (range.0, 0u64, 0u64);
            loop {
                if range.1.is_some_and(|end| seed >= end)
                    || range.2.is_some_and(|t| std::time::Instant::now() >= t)
                {
                    break;
                }
                let r = run(seed, transactions);
                ran += 1;
                if !r.passed() {
                    failed += 1;
                    println!("seed {seed} FAILED: {}", r.failures.join("; "));
                    println!("  replay: {}", r.replay_line());
                }
                seed += 1;
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{ran} seeds, {failed} failed, {:.0} seeds/minute",
                ran as f64 / secs * 60.0
            );
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
