//! The `sluice` command line's flags and subcommands (clap). Flags follow Litestream's and are
//! accepted with one dash or two ([`normalize_args`]).

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::restore;

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
    /// Check a replica: every file's CRC, the chain at every level, the database checksums
    /// along the latest restore; exit 0 only if the latest state is restorable.
    Verify(VerifyArgs),
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
    /// Sync once, then exit: 0 once everything pending is in every replica, 1 otherwise.
    #[arg(long = "once")]
    pub once: bool,
    /// With -once: write a snapshot of the newest state after the sync.
    #[arg(long = "force-snapshot")]
    pub force_snapshot: bool,
    /// With -once: delete what retention allows after the sync.
    #[arg(long = "enforce-retention")]
    pub enforce_retention: bool,
    /// Continue a replica whose lease names another database (its history stays, restores
    /// to a later time return this database). Without it such a replica is refused.
    #[arg(long = "force")]
    pub force: bool,
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
    /// Follow mode: after the restore, keep the output current as the replica grows (a read
    /// replica), until SIGINT or SIGTERM.
    #[arg(short = 'f')]
    pub follow: bool,
    /// How often follow mode looks for new files (1s, 500ms, ...).
    #[arg(long = "follow-interval", value_name = "DURATION")]
    pub follow_interval: Option<String>,
    /// With -f: serve the follower's Prometheus metrics on ADDR (`host:port`, or `:port` for
    /// loopback), at /metrics.
    #[arg(long = "addr", value_name = "ADDR")]
    pub addr: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IntegrityCheck {
    None,
    Quick,
    Full,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Replica URL or a database path from the config.
    pub source: String,
    /// Also restore the latest state into a temporary file and run `PRAGMA integrity_check`.
    #[arg(long = "restore")]
    pub restore: bool,
    /// Files read at once.
    #[arg(long = "parallelism", default_value_t = crate::restore::PARALLELISM_DEFAULT)]
    pub parallelism: usize,
    #[arg(long = "json")]
    pub json: bool,
    #[arg(long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[arg(long = "no-expand-env")]
    pub no_expand_env: bool,
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
