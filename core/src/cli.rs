//! The `sluice` command line. Flags follow Litestream's and are accepted with one dash or two.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};

pub use crate::args::{
    Cli, Command, ConfigArgs, DemoArgs, IntegrityCheck, LtxArgs, ReplicateArgs, RestoreArgs,
    VerifyArgs, normalize_args,
};
use crate::config::{Config, config_path};
use crate::place::{restore_into_place, sidecars};
use crate::replica::{FileInfo, Replica, rfc3339};
use crate::restore::{self, RestoreError, Target};
use crate::url::ReplicaTarget;

/// Outcome of a command for `main`: the exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Replicate(args) => crate::daemon::cmd_replicate(args).await,
        Command::Status(args) => crate::daemon::cmd_status(args, false).await,
        Command::Databases(args) => crate::daemon::cmd_status(args, true).await,
        Command::Demo(args) => crate::demo::cmd_demo(args).await,
        Command::Restore(args) => cmd_restore(args).await,
        Command::Ltx(args) => cmd_ltx(args).await,
        Command::Verify(args) => cmd_verify(args).await,
        Command::Version => {
            println!("sluice {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
    }
}

/// Resolves a positional argument to a replica: a URL or directory, or a database in the
/// config. Returns the replica and, for config databases, the database path.
fn resolve_source(
    source: &str,
    config_flag: Option<&Path>,
    no_expand: bool,
) -> Result<(Replica, Option<PathBuf>)> {
    let is_url = source.contains("://");
    let (cfg_path, explicit) = config_path(config_flag);
    if !is_url && (explicit || cfg_path.exists()) {
        let config = Config::load(&cfg_path, !no_expand)?;
        crate::url::check_targets(&cfg_path, &config)?;
        if let Some(db) = config.db(source) {
            let db = &db;
            let first = db
                .replicas
                .first()
                .ok_or_else(|| anyhow!("database {} has no replica", db.path))?;
            let target = ReplicaTarget::from_config(first)
                .map_err(|e| anyhow!("database {}: {e}", db.path))?;
            return Ok((
                target.open(&first.settings).map_err(|e| anyhow!(e))?,
                Some(PathBuf::from(&db.path)),
            ));
        }
        if explicit {
            bail!("database {source} is not in config {}", cfg_path.display());
        }
    }
    let target = ReplicaTarget::parse(source).map_err(|e| anyhow!(e))?;
    if let ReplicaTarget::Dir(dir) = &target
        && !is_url
        && !dir.is_dir()
    {
        bail!(
            "{source}: no such replica directory, and no database of that path in {}",
            cfg_path.display()
        );
    }
    // A URL takes the configuration's top-level settings when one is given (`-config`): the
    // settings a URL cannot carry, such as an SFTP key-path and host-key.
    let settings = if is_url && explicit {
        Config::load(&cfg_path, !no_expand)?.defaults
    } else {
        crate::config::ReplicaSettings::default()
    };
    let replica = target.open(&settings).map_err(|e| anyhow!(e))?;
    Ok((replica, None))
}

fn parse_target(args: &RestoreArgs) -> Result<Target> {
    match (&args.txid, &args.timestamp) {
        (Some(_), Some(_)) => bail!("-txid and -timestamp cannot be used together"),
        (Some(hex), None) => {
            let t = u64::from_str_radix(hex.trim_start_matches("0x"), 16)
                .ok()
                .filter(|_| hex.len() <= 18)
                .ok_or_else(|| anyhow!("invalid -txid {hex:?}: expected a hexadecimal TXID such as 000000000000002a"))?;
            Ok(Target::Txid(t))
        }
        (None, Some(ts)) => {
            let t = chrono::DateTime::parse_from_rfc3339(ts).map_err(|_| {
                anyhow!("invalid -timestamp {ts:?}: expected RFC 3339, e.g. 2000-01-01T00:00:00Z")
            })?;
            Ok(Target::Before(t.timestamp_millis()))
        }
        (None, None) => Ok(Target::Latest),
    }
}

async fn cmd_restore(args: RestoreArgs) -> Result<i32> {
    let target = parse_target(&args)?;
    if args.parallelism == 0 {
        bail!("-parallelism must be at least 1");
    }
    let follow_interval = follow_interval(&args)?;
    // Bound before anything is restored, so a taken port fails at once.
    let metrics = match &args.addr {
        Some(addr) => Some(crate::metrics::listen(addr).await?),
        None => None,
    };
    let (replica, db_path) =
        resolve_source(&args.source, args.config.as_deref(), args.no_expand_env)?;
    let output = match (&args.output, db_path) {
        (Some(o), _) => o.clone(),
        (None, Some(db)) => db,
        (None, None) => bail!("-o is required when restoring from a replica URL"),
    };
    let output =
        std::path::absolute(&output).with_context(|| format!("-o {}", output.display()))?;
    // A follower restarted on its own output continues it instead of restoring again.
    if let Some(interval) = follow_interval
        && output.exists()
        && crate::follow::state_path(&output).exists()
        && !args.force
    {
        let follower = crate::follow::Follower::open(&output, None)?;
        follow(&replica, follower, interval, metrics).await?;
        return Ok(0);
    }
    if output.exists() {
        if args.if_db_not_exists {
            eprintln!(
                "database {} already exists, skipping restore",
                output.display()
            );
            return Ok(0);
        }
        if !args.force {
            bail!(
                "cannot restore: output {} already exists (use -force to replace it)",
                output.display()
            );
        }
    }
    for side in sidecars(&output) {
        if side.exists() && !args.force {
            bail!(
                "cannot restore: {} exists and would be applied on top of the restored database (use -force to remove it)",
                side.display()
            );
        }
    }

    // Only a point-in-time restore reads the files' timestamps (on S3, a HEAD per file).
    let files = match target {
        Target::Before(_) => replica.list_all().await?,
        Target::Latest | Target::Txid(_) => replica.list_all_untimed().await?,
    };
    let chosen = match restore::plan(&replica.describe(), &files, target) {
        Ok(p) => p,
        Err(RestoreError::ReplicaEmpty { .. }) if args.if_replica_exists => {
            eprintln!(
                "no backups found in replica {}, skipping restore",
                replica.describe()
            );
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    let txid = chosen.last().map_or(0, |f| f.max_txid);
    if args.dry_run {
        print_plan(&chosen, &output, txid, args.json);
        return Ok(0);
    }

    let show_progress = !args.json && std::io::stderr().is_terminal();
    let report = restore_into_place(
        &crate::place::OsFs,
        &replica,
        chosen,
        &output,
        args.parallelism,
        args.integrity_check,
        args.force,
        show_progress,
    )
    .await?;
    if args.json {
        let v = serde_json::json!({
            "output": output,
            "txid": format!("{:016x}", report.txid),
            "page_size": report.page_size,
            "pages": report.pages,
            "files": report.files,
            "bytes": report.bytes,
            "checksum_verified": report.checksum_verified,
        });
        println!("{v}");
    } else {
        println!(
            "restored {} to TXID {:016x} from {} files ({} bytes); database checksum {}",
            output.display(),
            report.txid,
            report.files,
            report.bytes,
            if report.checksum_verified {
                "verified"
            } else {
                "not recorded by the writer (Litestream files)"
            }
        );
    }
    if let Some(interval) = follow_interval {
        let follower = crate::follow::Follower::open(&output, Some(report.txid))?;
        follow(&replica, follower, interval, metrics).await?;
    }
    Ok(0)
}

/// Follow mode's poll interval, when `-f` is given, after checking the flags it cannot be
/// combined with.
fn follow_interval(args: &RestoreArgs) -> Result<Option<std::time::Duration>> {
    if !args.follow {
        for (set, flag) in [
            (args.follow_interval.is_some(), "-follow-interval"),
            (args.addr.is_some(), "-addr"),
        ] {
            if set {
                bail!("{flag} needs -f");
            }
        }
        return Ok(None);
    }
    for (set, flag) in [
        (args.txid.is_some(), "-txid"),
        (args.timestamp.is_some(), "-timestamp"),
        (args.dry_run, "-dry-run"),
        (args.if_db_not_exists, "-if-db-not-exists"),
    ] {
        if set {
            bail!("-f follows the newest state; it cannot be combined with {flag}");
        }
    }
    let interval = match &args.follow_interval {
        Some(text) => {
            crate::config::parse_duration(text).map_err(|e| anyhow!("-follow-interval: {e}"))?
        }
        None => std::time::Duration::from_millis(crate::follow::FOLLOW_INTERVAL_DEFAULT_MS),
    };
    if interval.is_zero() {
        bail!("-follow-interval must be greater than zero");
    }
    Ok(Some(interval))
}

/// Runs follow mode until SIGINT or SIGTERM.
async fn follow(
    replica: &Replica,
    follower: crate::follow::Follower,
    interval: std::time::Duration,
    metrics: Option<tokio::net::TcpListener>,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let tmp = tempfile::Builder::new()
        .prefix("sluice-follow-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let scratch = crate::scratch::OsScratch::new(tmp.path());
    let requests = Arc::new(crate::counting::RequestCounts::default());
    let counted = Replica::new(
        Arc::new(crate::counting::CountingStore::new(
            replica.store.clone(),
            requests.clone(),
        )),
        replica.layout,
    );
    let status = Arc::new(std::sync::Mutex::new(crate::follow::FollowStatus {
        output: follower.output().to_path_buf(),
        replica: replica.describe(),
        txid: follower.txid(),
        requests,
        ..Default::default()
    }));
    if let Some(listener) = metrics {
        tokio::spawn(crate::metrics::serve(
            listener,
            crate::metrics::follower(status.clone()),
        ));
    }
    crate::follow::run(&counted, follower, interval, &scratch, &status, stop).await?;
    Ok(())
}

fn print_plan(files: &[FileInfo], output: &Path, txid: u64, json: bool) {
    if json {
        let v = serde_json::json!({
            "output": output,
            "txid": format!("{txid:016x}"),
            "files": files.iter().map(file_json).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!(
            "would restore {} to TXID {txid:016x} from:",
            output.display()
        );
        for f in files {
            println!("  {f} ({} bytes)", f.size);
        }
    }
}

fn file_json(f: &FileInfo) -> serde_json::Value {
    serde_json::json!({
        "level": f.level,
        "min_txid": format!("{:016x}", f.min_txid),
        "max_txid": format!("{:016x}", f.max_txid),
        "size": f.size,
        "timestamp": rfc3339(f.created_ms),
    })
}

async fn cmd_ltx(args: LtxArgs) -> Result<i32> {
    let (replica, _) = resolve_source(&args.source, args.config.as_deref(), args.no_expand_env)?;
    let files = if args.level == "all" {
        replica.list_all().await?
    } else {
        let level: u8 = args
            .level
            .parse()
            .ok()
            .filter(|l| *l <= crate::replica::LEVEL_MAX)
            .ok_or_else(|| anyhow!("invalid -level {:?}: expected 0-9 or all", args.level))?;
        replica.list_level(level).await?
    };
    if args.json {
        println!(
            "{}",
            serde_json::Value::Array(files.iter().map(file_json).collect())
        );
    } else {
        println!(
            "{:<6} {:<16}  {:<16}  {:>10}  created",
            "level", "min_txid", "max_txid", "size"
        );
        for f in &files {
            println!(
                "{:<6} {:016x}  {:016x}  {:>10}  {}",
                f.level,
                f.min_txid,
                f.max_txid,
                f.size,
                rfc3339(f.created_ms)
            );
        }
    }
    Ok(0)
}

async fn cmd_verify(args: VerifyArgs) -> Result<i32> {
    if args.parallelism == 0 {
        bail!("-parallelism must be at least 1");
    }
    let (replica, _) = resolve_source(&args.source, args.config.as_deref(), args.no_expand_env)?;
    let tmp = tempfile::Builder::new()
        .prefix("sluice-verify-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let scratch = crate::scratch::OsScratch::new(tmp.path());
    let mut report = crate::verify::verify(&replica, &scratch, args.parallelism).await?;
    // -restore: the latest state restored for real, then SQLite's own check.
    let mut restored = None;
    if args.restore && report.latest_restorable() {
        let files = replica.list_all_untimed().await?;
        let plan = restore::plan(&replica.describe(), &files, Target::Latest)?;
        let out = tmp.path().join("verify.db");
        match restore_into_place(
            &crate::place::OsFs,
            &replica,
            plan,
            &out,
            args.parallelism,
            IntegrityCheck::Full,
            false,
            false,
        )
        .await
        {
            Ok(r) => restored = Some(r.txid),
            Err(e) => report.latest_error = Some(format!("the restore failed: {e:#}")),
        }
    }
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["latest_restorable"] = report.latest_restorable().into();
        v["restored_txid"] = restored.map(|t| format!("{t:016x}")).into();
        println!("{v}");
    } else {
        print!("{}", crate::verify::render(&report));
        if let Some(t) = restored {
            println!("restored TXID {t:016x} into a temporary file: integrity_check ok");
        }
    }
    Ok(if report.latest_restorable() { 0 } else { 1 })
}
