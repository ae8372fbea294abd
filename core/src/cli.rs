//! The `sluice` command line. Flags follow Litestream's and are accepted with one dash or two.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::{Config, config_path};
use crate::replica::{FileInfo, Replica};
use crate::restore::{self, RestoreError, Target};
use crate::url::ReplicaTarget;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Continuous SQLite replication to object storage, compatible with Litestream 0.5"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replicate databases continuously: `replicate DB URL...` or `replicate -config FILE`.
    Replicate(ReplicateArgs),
    /// Restore a database from a replica.
    Restore(RestoreArgs),
    /// List the LTX files of a replica.
    Ltx(LtxArgs),
    /// Show each configured database's replicated TXID and lag.
    Status(ConfigArgs),
    /// List the databases in the configuration.
    Databases(ConfigArgs),
    /// Run the whole cycle on a scratch directory: write, replicate, delete, restore, compare.
    Demo(DemoArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// A database path followed by one or more replica URLs; none to use the configuration.
    pub args: Vec<String>,
    #[arg(long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[arg(long = "no-expand-env")]
    pub no_expand_env: bool,
    /// Run this command as a child, forward signals to it, and exit with it.
    #[arg(long = "exec", value_name = "CMD")]
    pub exec: Option<String>,
    /// Restore each database from its first replica first if it does not exist.
    #[arg(long = "restore-if-db-not-exists")]
    pub restore_if_db_not_exists: bool,
    /// Sync once, then exit.
    #[arg(long = "once")]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[arg(long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[arg(long = "no-expand-env")]
    pub no_expand_env: bool,
    #[arg(long = "json")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory to work in (default: a new temporary directory, removed afterwards).
    pub dir: Option<PathBuf>,
    /// Rows to write.
    #[arg(long = "rows", default_value_t = 10_000)]
    pub rows: u32,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Replica URL (file:///path, /path, s3://bucket/path) or a database path from the config.
    pub source: String,
    /// Output database path (required when restoring from a URL).
    #[arg(short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Restore up to this TXID (16 hex digits or fewer).
    #[arg(long = "txid", value_name = "HEX")]
    pub txid: Option<String>,
    /// Restore the newest state created before this RFC 3339 time.
    #[arg(long = "timestamp", value_name = "RFC3339")]
    pub timestamp: Option<String>,
    /// Do nothing (exit 0) if the output database already exists.
    #[arg(long = "if-db-not-exists")]
    pub if_db_not_exists: bool,
    /// Do nothing (exit 0) if the replica has no backups.
    #[arg(long = "if-replica-exists")]
    pub if_replica_exists: bool,
    /// Replace an existing output database (and remove its -wal and -shm files).
    #[arg(long = "force")]
    pub force: bool,
    /// Print the plan without restoring.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Print the result as JSON; no progress bar.
    #[arg(long = "json")]
    pub json: bool,
    /// Check the restored database before putting it in place: none, quick or full.
    #[arg(long = "integrity-check", value_name = "MODE", default_value = "none")]
    pub integrity_check: IntegrityCheck,
    /// Configuration file.
    #[arg(long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Do not expand $VAR references in the configuration.
    #[arg(long = "no-expand-env")]
    pub no_expand_env: bool,
    /// Files downloaded at once.
    #[arg(long = "parallelism", value_name = "N", default_value_t = restore::PARALLELISM_DEFAULT)]
    pub parallelism: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IntegrityCheck {
    None,
    Quick,
    Full,
}

#[derive(Debug, Args)]
pub struct LtxArgs {
    /// Replica URL or a database path from the config.
    pub source: String,
    /// Level to list (0-9) or "all".
    #[arg(long = "level", default_value = "all")]
    pub level: String,
    #[arg(long = "json")]
    pub json: bool,
    #[arg(long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[arg(long = "no-expand-env")]
    pub no_expand_env: bool,
}

/// Rewrites Go-style `-flag` into `--flag` for every long flag clap knows, so both spellings work.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let cmd = Cli::command();
    let mut longs: Vec<String> = vec!["help".into(), "version".into()];
    for sub in cmd.get_subcommands() {
        longs.extend(
            sub.get_arguments()
                .filter_map(|a| a.get_long().map(str::to_string)),
        );
    }
    args.into_iter()
        .map(|a| {
            let Some(rest) = a.strip_prefix('-') else {
                return a;
            };
            if rest.starts_with('-') {
                return a;
            }
            let name = rest.split_once('=').map_or(rest, |(n, _)| n);
            if longs.iter().any(|l| l == name) {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

/// Outcome of a command for `main`: the exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Replicate(args) => crate::daemon::cmd_replicate(args).await,
        Command::Status(args) => crate::daemon::cmd_status(args, false).await,
        Command::Databases(args) => crate::daemon::cmd_status(args, true).await,
        Command::Demo(args) => crate::demo::cmd_demo(args).await,
        Command::Restore(args) => cmd_restore(args).await,
        Command::Ltx(args) => cmd_ltx(args).await,
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
        if let Some(db) = config.db(source) {
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
    let replica = target
        .open(&crate::config::ReplicaSettings::default())
        .map_err(|e| anyhow!(e))?;
    Ok((replica, None))
}

fn parse_target(args: &RestoreArgs) -> Result<Target> {
    match (&args.txid, &args.timestamp) {
        (Some(_), Some(_)) => bail!("-txid and -timestamp cannot be used together"),
        (Some(hex), None) => {
            let t = u64::from_str_radix(hex.trim_start_matches("0x"), 16)
                .ok()
                .filter(|t| *t > 0 && hex.len() <= 18)
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

pub(crate) fn sidecars(path: &Path) -> [PathBuf; 2] {
    let s = path.as_os_str().to_owned();
    let with = |suffix: &str| {
        let mut p = s.clone();
        p.push(suffix);
        PathBuf::from(p)
    };
    [with("-wal"), with("-shm")]
}

async fn cmd_restore(args: RestoreArgs) -> Result<i32> {
    let target = parse_target(&args)?;
    if args.parallelism == 0 {
        bail!("-parallelism must be at least 1");
    }
    let (replica, db_path) =
        resolve_source(&args.source, args.config.as_deref(), args.no_expand_env)?;
    let output = match (&args.output, db_path) {
        (Some(o), _) => o.clone(),
        (None, Some(db)) => db,
        (None, None) => bail!("-o is required when restoring from a replica URL"),
    };
    let output =
        std::path::absolute(&output).with_context(|| format!("-o {}", output.display()))?;
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

    let files = replica.list_all().await?;
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
    Ok(0)
}

/// Restores `files` into `<output>.tmp`, checks it, and only then moves it into place (removing
/// stale `-wal`/`-shm` files first when `force`). Nothing is left at the output path on failure.
pub(crate) async fn restore_into_place(
    replica: &Replica,
    files: Vec<FileInfo>,
    output: &Path,
    parallelism: usize,
    check: IntegrityCheck,
    force: bool,
    show_progress: bool,
) -> Result<restore::RestoreReport> {
    let parent = output.parent().unwrap_or(Path::new("/")).to_path_buf();
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create output directory {}", parent.display()))?;
    let mut tmp = output.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = if show_progress {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} restoring [{bar:30}] {bytes}/{total_bytes} {msg}",
            )
            .map_err(|e| anyhow!(e))?,
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let progress = bar.clone();
    let result = restore::restore_to(replica, files, &tmp, parallelism, move |f: &FileInfo| {
        progress.inc(f.size);
        progress.set_message(format!("TXID {:016x}", f.max_txid));
    })
    .await;
    bar.finish_and_clear();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
    };
    if check != IntegrityCheck::None
        && let Err(e) = integrity_check(&tmp, check)
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if force {
        for side in sidecars(output) {
            match std::fs::remove_file(&side) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", side.display()));
                }
            }
        }
    }
    std::fs::rename(&tmp, output)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), output.display()))?;
    std::fs::File::open(&parent)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", parent.display()))?;
    Ok(report)
}

fn integrity_check(path: &Path, mode: IntegrityCheck) -> Result<()> {
    let uri = format!("file:{}?immutable=1", path.display());
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let conn = rusqlite::Connection::open_with_flags(&uri, flags)
        .with_context(|| format!("integrity check: cannot open {}", path.display()))?;
    let pragma = if mode == IntegrityCheck::Quick {
        "PRAGMA quick_check"
    } else {
        "PRAGMA integrity_check"
    };
    let mut stmt = conn.prepare(pragma)?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if rows != ["ok"] {
        bail!(
            "integrity check of restored database failed: {}",
            rows.join("; ")
        );
    }
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

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_dash_long_flags_become_double() {
        let args = normalize_args(
            [
                "sluice",
                "restore",
                "-if-db-not-exists",
                "-o",
                "x.db",
                "-txid=2a",
                "--json",
                "-",
            ]
            .map(String::from),
        );
        assert_eq!(
            args,
            [
                "sluice",
                "restore",
                "--if-db-not-exists",
                "-o",
                "x.db",
                "--txid=2a",
                "--json",
                "-"
            ]
        );
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
