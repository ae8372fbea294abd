//! `sluice-bench`: sluice beside the real Litestream on the same machine, the same S3 server and
//! the same data, in the same run. Writes `report.md`, `report.json` and SVG plots.
//!
//! Every figure is a median of several runs with min and max; every comparison is a ratio
//! measured pair by pair in the same run (the two tools alternate), never across runs. Each
//! restore is checked byte for byte against its source, so a fast wrong restore cannot pass.
//! Nothing here asserts on time: targets are printed beside each figure, met or missed.
//! `ci/bench` installs the peers, starts the S3 server and runs this.

mod plot;
mod proc;
mod report;
mod s3;
mod sections;
mod workload;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

use proc::{Tool, Tools};
use report::Report;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Part {
    /// The seed's restore: 100k rows in 300 commits, from S3 at several round-trip times.
    Restore,
    /// Large databases: first snapshot under load, bytes read, restore beside the floor.
    Size,
    /// Commit-to-replica lag at several commit rates.
    Lag,
    /// The writer's commits/s with no replicator, with sluice, with Litestream.
    Overhead,
    /// RSS, CPU, bytes read and S3 requests by kind, idle and under steady writes.
    Cost,
    /// The simulator's seeds per minute, one and two processes.
    Sim,
}

#[derive(Parser, Debug)]
#[command(
    name = "sluice-bench",
    about = "sluice beside Litestream: the benchmark report"
)]
struct Args {
    /// A few minutes: every part end to end at small sizes and few runs.
    #[arg(long)]
    quick: bool,
    /// Where the report and the plots go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The `sluice` binary (default: beside this one).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// The `sluice-sim` binary (default: beside this one).
    #[arg(long)]
    sim: Option<PathBuf>,
    /// The `litestream` binary (default: $LITESTREAM_BIN).
    #[arg(long)]
    litestream: Option<PathBuf>,
    /// Only these parts (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Part>,
    /// Database sizes of the size part, in MiB (default: 96 quick, 1088 full; 1088 MiB is
    /// 1 GiB and past the lock-byte page; add 10304 for the 10 GiB run).
    #[arg(long, value_delimiter = ',')]
    size_mib: Vec<u64>,
    /// The size part with sluice alone, for a machine without the disk for both tools'
    /// replicas (each tool keeps the snapshot at several levels: a 10 GiB database with both
    /// needs about 110 GiB free, with sluice alone about 60).
    #[arg(long)]
    size_sluice_only: bool,
    /// Counted runs of each measurement (default: 3 quick, 5 full).
    #[arg(long)]
    runs: Option<usize>,
}

/// What every part gets.
pub struct Ctx {
    pub tools: Tools,
    pub sim: PathBuf,
    pub s3: s3::S3,
    pub rt: tokio::runtime::Runtime,
    /// Scratch space, removed at the end.
    pub work: PathBuf,
    pub out: PathBuf,
    pub quick: bool,
    pub runs: usize,
    pub size_mib: Vec<u64>,
    /// The size part's tools: both, or sluice alone (`--size-sluice-only`).
    pub size_tools: Vec<Tool>,
    /// A prefix of this run on the S3 server.
    pub run_id: String,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("__exec") {
        if let Err(e) = proc::exec_main(&argv[2..]) {
            eprintln!("sluice-bench __exec: {e:#}");
            std::process::exit(2);
        }
        return;
    }
    match run(Args::parse()) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("sluice-bench: {e:#}");
            std::process::exit(2);
        }
    }
}

fn beside_me(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    Ok(me.with_file_name(name))
}

fn version(bin: &std::path::Path) -> String {
    std::process::Command::new(bin)
        .arg("version")
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn run(args: Args) -> Result<bool> {
    let sluice = match args.sluice {
        Some(p) => p,
        None => beside_me("sluice")?,
    };
    let sim = match args.sim {
        Some(p) => p,
        None => beside_me("sluice-sim")?,
    };
    let litestream = match args.litestream {
        Some(p) => p,
        None => std::env::var_os("LITESTREAM_BIN")
            .map(PathBuf::from)
            .context(
                "no Litestream: pass --litestream or set LITESTREAM_BIN (ci/bench installs it)",
            )?,
    };
    for (what, p) in [
        ("sluice", &sluice),
        ("sluice-sim", &sim),
        ("litestream", &litestream),
    ] {
        if !p.is_file() {
            bail!("the {what} binary {} does not exist", p.display());
        }
    }
    let s3 = s3::S3::from_env()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create --out {}", args.out.display()))?;
    let work = tempfile::Builder::new()
        .prefix("sluice-bench-")
        .tempdir_in(std::env::temp_dir())?;
    let run_id = format!(
        "bench/{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    );
    let ctx = Ctx {
        tools: Tools {
            sluice: sluice.clone(),
            litestream: litestream.clone(),
            env: s3.env(),
        },
        sim,
        s3,
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
        work: work.path().to_path_buf(),
        out: args.out.clone(),
        quick: args.quick,
        runs: args.runs.unwrap_or(if args.quick { 3 } else { 5 }),
        size_mib: if args.size_mib.is_empty() {
            vec![if args.quick { 96 } else { 1088 }]
        } else {
            args.size_mib.clone()
        },
        size_tools: if args.size_sluice_only {
            vec![Tool::Sluice]
        } else {
            sections::TOOLS.to_vec()
        },
        run_id,
    };
    let mut report = Report::default();
    let machine = machine();
    report.line(format!(
        "# sluice beside Litestream{}\n",
        if args.quick { " (quick run)" } else { "" }
    ));
    report.line(format!(
        "- sluice {} ({})\n- Litestream {} ({})\n- machine: {machine}\n- S3: s3s-fs on \
         127.0.0.1 behind a proxy that adds the round-trip time\n- every figure: median \
         (min–max) of {} runs unless said; ratios pair by pair, the tools alternating",
        version(&sluice),
        sluice.display(),
        version(&litestream),
        litestream.display(),
        ctx.runs
    ));
    report.put(
        "versions",
        serde_json::json!({
            "sluice": version(&sluice),
            "litestream": version(&litestream),
            "machine": machine,
            "quick": args.quick,
            "runs": ctx.runs,
        }),
    );
    let parts = if args.only.is_empty() {
        Part::value_variants().to_vec()
    } else {
        args.only.clone()
    };
    for part in parts {
        let started = Instant::now();
        eprintln!("sluice-bench: {part:?} ...");
        let result = match part {
            Part::Restore => sections::restore::run(&ctx, &mut report),
            Part::Size => sections::size::run(&ctx, &mut report),
            Part::Lag => sections::lag::run(&ctx, &mut report),
            Part::Overhead => sections::overhead::run(&ctx, &mut report),
            Part::Cost => sections::cost::run(&ctx, &mut report),
            Part::Sim => sections::sim::run(&ctx, &mut report),
        };
        eprintln!("sluice-bench: {part:?} took {:.0?}", started.elapsed());
        if let Err(e) = result {
            let msg = format!("{part:?} failed: {e:#}");
            eprintln!("sluice-bench: {msg}");
            report.line(format!("\n**{msg}**\n"));
            report.failures.push(msg);
        }
    }
    report.put("failures", report.failures.clone());
    let md = args.out.join("report.md");
    std::fs::write(&md, &report.md).with_context(|| format!("cannot write {}", md.display()))?;
    let json = args.out.join("report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report.json)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    println!("{}", report.md);
    eprintln!(
        "sluice-bench: wrote {}, {} and {} plots",
        md.display(),
        json.display(),
        report.plots.len()
    );
    Ok(report.failures.is_empty())
}

/// CPU model, cores and memory, from /proc.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / (1 << 20) as f64);
    format!("{model}, {cores} cores, {mem_gib:.0} GiB")
}
