//! `sluice-sim run --seed N`, `sluice-sim sweep --seeds A..B | --minutes M`, and
//! `sluice-sim chaos --sut sluice|litestream --seed N` (real processes, see `chaos`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_sim::plan::Scenario;
use sluice_sim::run::{Report, run_scenario};

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
        /// A scenario file (YAML): knob overrides and/or an explicit plan of steps.
        #[arg(long, value_name = "FILE")]
        scenario: Option<std::path::PathBuf>,
        /// Plant a deliberate engine bug (needs the `planted-bugs` feature).
        #[arg(long, value_name = "BUG")]
        plant: Option<String>,
    },
    /// Run many seeds; print failures with their replay lines.
    Sweep {
        /// A range `A..B` (end exclusive).
        #[arg(long)]
        seeds: Option<String>,
        /// Or run consecutive seeds for this many minutes...
        #[arg(long)]
        minutes: Option<f64>,
        /// ...from this seed (the nightly starts from the date).
        #[arg(long, default_value_t = 0, requires = "minutes")]
        start: u64,
        #[arg(long, default_value_t = 1000)]
        transactions: u32,
        /// Plant a deliberate engine bug (needs the `planted-bugs` feature).
        #[arg(long, value_name = "BUG")]
        plant: Option<String>,
        /// Worker processes (one simulation runs per process: SQLite's state is global).
        /// Default: the number of CPUs.
        #[arg(long)]
        jobs: Option<usize>,
        /// Internal: a worker process, reading seeds from stdin.
        #[arg(long, hide = true)]
        worker: bool,
        /// A scenario file (YAML) every seed runs under.
        #[arg(long, value_name = "FILE")]
        scenario: Option<std::path::PathBuf>,
    },
    /// Real-process chaos: the system under test and a writer as real processes, SIGKILLed and
    /// restarted on a seeded schedule, each cycle ending in a host loss and a restore.
    Chaos(ChaosArgs),
    /// Internal: the chaos writer process.
    #[command(hide = true)]
    ChaosWriter {
        #[arg(long)]
        db: std::path::PathBuf,
        #[arg(long)]
        log: std::path::PathBuf,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        commits_per_second: u32,
        #[arg(long)]
        checkpoint_rate: f64,
        #[arg(long, default_value_t = 0)]
        writer: u32,
        #[arg(long)]
        connection_per_commit: bool,
    },
}

/// `sluice-sim chaos`'s flags.
#[derive(Debug, clap::Args)]
struct ChaosArgs {
    /// The system under test.
    #[arg(long, value_enum, default_value_t = SutKind::Sluice)]
    sut: SutKind,
    /// Its binary. Default: `sluice` beside this executable, or `litestream` on PATH
    /// (`LITESTREAM_BIN` when set).
    #[arg(long, value_name = "PATH")]
    bin: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A chaos scenario file (YAML, `scenarios/chaos/`).
    #[arg(long, value_name = "FILE")]
    scenario: Option<std::path::PathBuf>,
    /// Override the scenario's number of cycles.
    #[arg(long)]
    cycles: Option<u32>,
    /// Where run directories go (a failed run's is kept). Default: the system's temp dir.
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Keep the run's directory (the SUT's logs, commit logs, replica) even if it passed.
    #[arg(long)]
    keep: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SutKind {
    Sluice,
    Litestream,
}

fn chaos(args: ChaosArgs) -> Result<bool, String> {
    let ChaosArgs {
        sut: kind,
        bin,
        seed,
        scenario,
        cycles,
        dir,
        json,
        keep,
    } = args;
    let scenario = scenario.as_deref();
    let json = json.as_deref();
    use sluice_sim::chaos::{self, Sut};
    let bin = match (bin, kind) {
        (Some(b), _) => b,
        (None, SutKind::Sluice) => std::env::current_exe()
            .map_err(|e| format!("cannot find this executable: {e}"))?
            .with_file_name("sluice"),
        (None, SutKind::Litestream) => {
            std::env::var_os("LITESTREAM_BIN").map_or_else(|| "litestream".into(), Into::into)
        }
    };
    let sut = match kind {
        SutKind::Sluice => Sut::Sluice(bin),
        SutKind::Litestream => Sut::Litestream(bin),
    };
    let mut s = match scenario {
        Some(p) => chaos::Scenario::load(p)?,
        None => chaos::Scenario::default(),
    };
    if let Some(c) = cycles {
        s.cycles = c;
    }
    let parent = dir.unwrap_or_else(std::env::temp_dir);
    let path = scenario.map(|p| p.display().to_string());
    let report = chaos::run(&sut, seed, &s, path.as_deref(), &parent, keep)?;
    for (i, c) in report.cycles.iter().enumerate() {
        println!(
            "cycle {i}: {} commits (longest stall {} ms), {} SUT kills, {} writer kills, {} network faults, {} disk fulls, {} of {} second replicators refused, host loss restored to commit {} in {} ms, {} lost{}",
            c.commits_logged,
            c.longest_stall_ms,
            c.sut_kills,
            c.writer_kills,
            c.network_faults,
            c.disk_fulls,
            c.second_replicators_refused,
            c.second_replicators,
            c.restored_commit,
            c.restore_ms,
            c.lost_commits,
            c.oldest_lost_ms
                .map(|ms| format!(" (oldest {ms} ms old)"))
                .unwrap_or_default()
        );
    }
    for why in &report.skipped {
        println!("skipped {why}");
    }
    for v in report.violations() {
        println!("VIOLATION {v}");
    }
    println!("{}", report.summary());
    if keep || !report.passed() {
        println!("  files: {}", report.dir.display());
    }
    if !report.passed() {
        println!("  replay: {}", report.replay_line());
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(report.passed())
}

/// What every seed of a command runs under.
struct Setup {
    transactions: u32,
    scenario: Scenario,
    path: Option<String>,
}

impl Setup {
    fn load(path: Option<&std::path::Path>, transactions: u32) -> Result<Self, String> {
        let scenario = match path {
            Some(p) => Scenario::load(p)?,
            None => Scenario::default(),
        };
        Ok(Self {
            transactions,
            scenario,
            path: path.map(|p| p.display().to_string()),
        })
    }

    fn run(&self, seed: u64) -> Report {
        run_scenario(
            seed,
            self.transactions,
            &self.scenario,
            self.path.as_deref(),
        )
    }
}

/// What a sweep found: seeds run, seeds failed.
#[derive(Default)]
struct Tally {
    ran: u64,
    failed: u64,
}

/// Runs seeds from `start` until the range's end or the deadline.
fn sweep_here(
    start: u64,
    end: Option<u64>,
    deadline: Option<std::time::Instant>,
    setup: &Setup,
) -> Tally {
    let mut tally = Tally::default();
    let mut seed = start;
    while end.is_none_or(|end| seed < end) && deadline.is_none_or(|t| std::time::Instant::now() < t)
    {
        tally.record(run_one(seed, setup).passed());
        seed += 1;
    }
    tally
}

/// Runs one seed, printing its failures with the replay line.
fn run_one(seed: u64, setup: &Setup) -> Report {
    let r = setup.run(seed);
    if !r.passed() {
        println!("seed {seed} FAILED: {}", r.failures.join("; "));
        println!("  replay: {}", r.replay_line());
    }
    r
}

impl Tally {
    fn record(&mut self, passed: bool) {
        self.ran += 1;
        self.failed += u64::from(!passed);
    }
}

/// A worker process: reads seeds from stdin, one per line, and answers each with
/// `worker-done SEED ok|failed` after any failure lines.
fn worker(setup: &Setup) {
    use std::io::{BufRead, Write};
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let Ok(seed) = line.trim().parse::<u64>() else {
            continue;
        };
        let r = run_one(seed, setup);
        println!(
            "worker-done {seed} {}",
            if r.passed() { "ok" } else { "failed" }
        );
        let _ = std::io::stdout().flush();
    }
}

/// Runs `jobs` worker processes of this binary, handing each the next seed as it finishes one
/// (seeds differ in length, so a fixed split leaves a core idle), and adds up what they report.
fn sweep_parallel(
    start: u64,
    end: Option<u64>,
    deadline: Option<std::time::Instant>,
    worker_args: &[String],
    jobs: usize,
) -> Result<Tally, String> {
    use std::io::{BufRead, Write};
    use std::sync::{Arc, Mutex};
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let next = Arc::new(Mutex::new(start));
    let take = move |next: &Mutex<u64>| -> Option<u64> {
        let mut n = next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if end.is_some_and(|end| *n >= end)
            || deadline.is_some_and(|t| std::time::Instant::now() >= t)
        {
            return None;
        }
        *n += 1;
        Some(*n - 1)
    };
    let mut handles = Vec::new();
    for i in 0..jobs {
        let mut child = std::process::Command::new(&exe)
            .args(worker_args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start worker {i}: {e}"))?;
        let next = next.clone();
        handles.push(std::thread::spawn(move || -> Result<Tally, String> {
            let mut tally = Tally::default();
            let (Some(mut input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(format!("worker {i} has no pipes"));
            };
            let Some(first) = take(&next) else {
                drop(input);
                let _ = child.wait();
                return Ok(tally);
            };
            writeln!(input, "{first}").map_err(|e| format!("worker {i}: {e}"))?;
            let mut input = Some(input);
            for line in std::io::BufReader::new(output)
                .lines()
                .map_while(Result::ok)
            {
                let Some(rest) = line.strip_prefix("worker-done ") else {
                    println!("{line}");
                    continue;
                };
                tally.record(rest.ends_with(" ok"));
                match (take(&next), input.as_mut()) {
                    (Some(seed), Some(pipe)) => {
                        writeln!(pipe, "{seed}").map_err(|e| format!("worker {i}: {e}"))?;
                    }
                    // No seed left: closing stdin ends the worker.
                    _ => input = None,
                }
            }
            let status = child.wait().map_err(|e| format!("worker {i}: {e}"))?;
            if !status.success() {
                return Err(format!("worker {i} died: {status}"));
            }
            Ok(tally)
        }));
    }
    let mut total = Tally::default();
    for h in handles {
        let t = h
            .join()
            .map_err(|_| "a worker's thread panicked".to_string())??;
        total.ran += t.ran;
        total.failed += t.failed;
    }
    Ok(total)
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
        "seed {}: {} commits, {} restores checked, most commits lost at a crash {}, lag p50 {} ms p99 {} ms worst {} ms, worst post-heal lag {} ms, worst undisturbed commit-to-upload {} ms, {} files shipped after a full compare, RPO {}, log {:016x}",
        r.seed,
        r.commits,
        r.restores,
        r.lost_commits_max,
        p(0.5),
        p(0.99),
        r.worst_lag_ms,
        r.post_heal_lag_ms_max,
        r.commit_lag_ms_max,
        r.resyncs,
        if r.passed() { "held" } else { "see failures" },
        r.log_hash()
    )
}

/// The lag (age of the oldest commit a restore lacked) at each checked restore, bucketed.
fn lag_histogram(lags_ms: &[i64]) -> String {
    const BOUNDS: [i64; 5] = [100, 250, 500, 1000, 2000];
    let mut counts = [0usize; BOUNDS.len() + 1];
    for &lag in lags_ms {
        counts[BOUNDS.iter().position(|&b| lag < b).unwrap_or(BOUNDS.len())] += 1;
    }
    let mut parts: Vec<String> = BOUNDS
        .iter()
        .zip(counts)
        .map(|(b, n)| format!("<{b} ms: {n}"))
        .collect();
    parts.push(format!(
        ">={} ms: {}",
        BOUNDS[BOUNDS.len() - 1],
        counts[BOUNDS.len()]
    ));
    format!("lag at restores: {}", parts.join(", "))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The engine's own log, for diagnosing a failing seed: SLUICE_SIM_TRACE=debug (any
    // tracing filter). Off by default; it never changes a run.
    if let Ok(filter) = std::env::var("SLUICE_SIM_TRACE") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
    match cli.command {
        Command::Chaos(args) => match chaos(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("Error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::ChaosWriter {
            db,
            log,
            seed,
            commits_per_second,
            checkpoint_rate,
            writer,
            connection_per_commit,
        } => {
            let args = sluice_sim::chaos::workload::WriterArgs {
                db,
                log,
                seed,
                commits_per_second,
                checkpoint_rate,
                writer,
                connection_per_commit,
            };
            match sluice_sim::chaos::workload::run_writer(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("Error: chaos writer: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            seed,
            transactions,
            quiet,
            plant: bug,
            scenario,
        } => {
            if let Err(e) = plant(bug.as_deref()) {
                eprintln!("Error: {e}");
                return ExitCode::FAILURE;
            }
            let setup = match Setup::load(scenario.as_deref(), transactions) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("Error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let r = setup.run(seed);
            let mut text = String::new();
            if !quiet {
                for line in &r.log {
                    text.push_str(line);
                    text.push('\n');
                }
            }
            text.push_str(&format!("{}\n{}\n", summary(&r), lag_histogram(&r.lags_ms)));
            for f in &r.failures {
                text.push_str(&format!("FAILED: {f}\n"));
            }
            if !r.passed() {
                text.push_str(&format!("replay: {}\n", r.replay_line()));
            }
            // A reader that stops early (`| head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
            if r.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Sweep {
            seeds,
            minutes,
            start,
            transactions,
            plant: bug,
            jobs,
            worker: worker_mode,
            scenario,
        } => {
            let setup = match Setup::load(scenario.as_deref(), transactions) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("Error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = plant(bug.as_deref()) {
                eprintln!("Error: {e}");
                return ExitCode::FAILURE;
            }
            if worker_mode {
                worker(&setup);
                return ExitCode::SUCCESS;
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
                    start,
                    None,
                    Some(std::time::Instant::now() + std::time::Duration::from_secs_f64(m * 60.0)),
                ),
                _ => {
                    eprintln!("Error: give exactly one of --seeds A..B or --minutes M");
                    return ExitCode::FAILURE;
                }
            };
            let started = std::time::Instant::now();
            let jobs = jobs.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
            });
            let tally = if jobs > 1 {
                let mut args: Vec<String> = vec![
                    "sweep".into(),
                    "--worker".into(),
                    "--transactions".into(),
                    transactions.to_string(),
                ];
                if let Some(b) = &bug {
                    args.extend(["--plant".into(), b.clone()]);
                }
                if let Some(path) = &scenario {
                    args.extend(["--scenario".into(), path.display().to_string()]);
                }
                match sweep_parallel(range.0, range.1, range.2, &args, jobs) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("Error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                sweep_here(range.0, range.1, range.2, &setup)
            };
            let (ran, failed) = (tally.ran, tally.failed);
            let secs = started.elapsed().as_secs_f64();
            {
                println!(
                    "{ran} seeds, {failed} failed, {:.0} seeds/minute ({jobs} processes)",
                    ran as f64 / secs * 60.0
                );
            }
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
