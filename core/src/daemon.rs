//! `sluice replicate` (the long-running process), `status` and `databases`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;
use tokio::sync::watch;

use crate::args::{ConfigArgs, ReplicateArgs};
use crate::config::{Config, config_path};
use crate::engine::{Clock, SystemClock};
use crate::jobs::{config_from_args, jobs_from_config};
use crate::lease::{FencedStore, Holder, LEASE_TTL_MS, Lease};
use crate::place::{OsFs, restore_if_missing};
use crate::replica::SNAPSHOT_LEVEL;
use crate::replicate::{self, JobStatus, SharedStatus};
use crate::url::ReplicaTarget;

fn load_config(flag: Option<&Path>, no_expand: bool) -> Result<Config> {
    let (path, _) = config_path(flag);
    if !path.exists() {
        bail!(
            "no configuration at {} (pass -config PATH, or replicate DB URL)",
            path.display()
        );
    }
    let config = Config::load(&path, !no_expand)?;
    crate::url::check_targets(&path, &config)?;
    Ok(config)
}

pub async fn cmd_replicate(args: ReplicateArgs) -> Result<i32> {
    let mut config = match args.args.as_slice() {
        [] => load_config(args.config.as_deref(), args.no_expand_env)?,
        [db] => bail!("must specify at least one replica URL for {db}"),
        [db, urls @ ..] => {
            if args.config.is_some() {
                bail!("cannot specify a replica URL and the -config flag");
            }
            config_from_args(db, urls).map_err(|e| anyhow!(e))?
        }
    };
    if args.exec.is_some() && args.once {
        bail!("-exec and -once cannot be used together");
    }
    if (args.force_snapshot || args.enforce_retention) && !args.once {
        let flag = if args.force_snapshot {
            "-force-snapshot"
        } else {
            "-enforce-retention"
        };
        bail!("{flag} needs -once");
    }
    let exec = args.exec.clone().or_else(|| config.exec.clone());
    if config.dbs.is_empty() {
        bail!("the configuration lists no databases");
    }
    // Directory replication: the databases there now, each an entry of its own; watched
    // directories are looked at again while running.
    let watched = config.discover().map_err(|e| anyhow!(e))?;
    if args.once && !watched.is_empty() {
        tracing::info!("-once: watched directories are replicated as they are now");
    }
    // Validate everything before touching anything.
    let scratch = tempfile::Builder::new()
        .prefix("sluice-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let jobs = jobs_from_config(&config, scratch.path()).map_err(|e| anyhow!(e))?;
    // Reach every replica once before starting: wrong keys, a missing bucket or an unreachable
    // endpoint are refused now, naming the cause, instead of being retried in the background
    // (a transient failure is retried a few times first: a store blinking as the replicator
    // starts is an outage, found by sluice-sim chaos). Failures after this are outages:
    // replication retries them and catches up.
    for job in &jobs {
        let db = job.engine.db_path.display().to_string();
        at_start(&db, || job.replica.list_level(SNAPSHOT_LEVEL), |e| Some(e))
            .await
            .map_err(|e| anyhow!("database {db}: {e}"))?;
        // Compaction and snapshots download large inputs here.
        let dir = job.scratch.location();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create scratch directory {}", dir.display()))?;
    }
    // Databases this start restored, with the replica each came from: it continues that
    // replica's lineage whatever path it has now (a replaced host).
    let mut restored: Vec<(PathBuf, String)> = Vec::new();
    for db in &mut config.dbs {
        let path = PathBuf::from(&db.path);
        if !path.exists() {
            if args.restore_if_db_not_exists || db.restore_if_db_not_exists.unwrap_or(false) {
                if let Some(from) = restore_missing(&path, db.replicas.first()).await? {
                    restored.push((path.clone(), from));
                }
            } else {
                // The usual sidecar and -exec deployment: the application creates its database
                // on first start. The job waits for it (its open is retried), as Litestream does.
                tracing::info!(db = %path.display(), "database does not exist yet; replicating once it appears");
                continue;
            }
        }
        if !path.is_file() {
            bail!("database {} is not a regular file", path.display());
        }
    }

    // Bound before any lease is taken: a wrong address fails the start with nothing to undo.
    let listener = match &config.addr {
        Some(addr) => Some(crate::metrics::listen(addr).await?),
        None => None,
    };
    let clock = Arc::new(SystemClock);
    let mut jobs = jobs;
    take_leases(&mut jobs, clock.now_ms(), args.force, &restored).await?;
    let statuses: crate::metrics::Statuses = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut running = Running::default();
    let once = args.once.then_some(crate::scheduler::Once {
        force_snapshot: args.force_snapshot,
        enforce_retention: args.enforce_retention,
    });
    for job in jobs {
        running.start(job, once, clock.clone(), &statuses);
    }
    if let Some(listener) = listener {
        tokio::spawn(crate::metrics::serve(
            listener,
            crate::metrics::jobs(statuses.clone()),
        ));
    }
    let mut rescan = tokio::time::interval(std::time::Duration::from_millis(WATCH_RESCAN_MS));
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watching = !watched.is_empty() && !args.once;
    let mut batches = 0usize;

    let mut child = match &exec {
        Some(cmd) => Some(spawn_exec(cmd)?),
        None => None,
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut exit_code = 0;
    if args.once {
        // Each job opens, syncs what is pending, does what -once asks and ends on its own
        // (within shutdown-sync-timeout); a signal cuts it short, as a final sync.
        loop {
            tokio::select! {
                _ = sigterm.recv() => running.stop_all(),
                _ = sigint.recv() => running.stop_all(),
                res = running.tasks.join_next_with_id() => match res.map(|r| running.finished(r)) {
                    None => break,
                    Some((_, Ok(Ok(())))) => {}
                    Some((_, Ok(Err(stopped)))) => {
                        tracing::error!(error = %stopped, "-once: a job did not finish");
                        exit_code = 1;
                    }
                    Some((_, Err(e))) => return Err(anyhow!(e)),
                },
            }
        }
    } else {
        // Exit policy: a job that stops for good (a lost lease, an incompatible replica) is
        // logged and shown in metrics and status, and the other jobs replicate on; once every
        // job has stopped, the process stops its child and exits with 1.
        loop {
            tokio::select! {
                _ = sigterm.recv() => { forward(&child, Signal::SIGTERM); if child.is_none() { break; } }
                _ = sigint.recv() => { forward(&child, Signal::SIGINT); if child.is_none() { break; } }
                status = wait_child(&mut child) => {
                    exit_code = status;
                    tracing::info!(code = status, "child process exited");
                    break;
                }
                _ = rescan.tick(), if watching => {
                    batches += 1;
                    running
                        .rescan(&watched, &config, scratch.path(), batches, clock.clone(), &statuses)
                        .await;
                }
                res = running.tasks.join_next_with_id(), if !running.tasks.is_empty() => {
                    match res.map(|r| running.finished(r)) {
                        // A database removed from a watched directory: asked to stop.
                        Some((true, Ok(_))) => continue,
                        Some((_, Ok(Ok(())))) => {
                            tracing::error!("a replication job ended without being asked to");
                        }
                        Some((_, Ok(Err(stopped)))) => {
                            tracing::error!(error = %stopped, "replication job stopped; the others carry on");
                        }
                        Some((_, Err(e))) => tracing::error!(error = %e, "replication job failed"),
                        None => {}
                    }
                    exit_code = 1;
                    if running.tasks.is_empty() && !watching {
                        tracing::error!("every replication job has stopped; exiting");
                        forward(&child, Signal::SIGTERM);
                        if let Some(c) = child.as_mut() {
                            let _ = c.wait().await;
                        }
                        return Ok(1);
                    }
                }
            }
        }
        running.stop_all();
        if let Some(c) = child.as_mut() {
            exit_code = c.wait().await.ok().and_then(|s| s.code()).unwrap_or(1);
        }
    }
    while let Some(res) = running.tasks.join_next_with_id().await {
        match running.finished(res).1 {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "replication stopped with an error");
                exit_code = exit_code.max(1);
            }
            Err(e) => return Err(anyhow!(e)),
        }
    }
    Ok(exit_code)
}

/// How often watched directories are looked at again.
pub const WATCH_RESCAN_MS: u64 = 1000;

type JobResult = Result<(), replicate::JobStopped>;

/// The running jobs: each with its own stop signal, so that one whose database left a watched
/// directory can be stopped alone.
#[derive(Default)]
struct Running {
    tasks: tokio::task::JoinSet<JobResult>,
    jobs: std::collections::HashMap<tokio::task::Id, RunningJob>,
}

struct RunningJob {
    db: PathBuf,
    stop: watch::Sender<bool>,
    /// Stopped because its database was removed from a watched directory.
    removed: bool,
}

impl Running {
    fn start(
        &mut self,
        mut job: replicate::Job,
        once: Option<crate::scheduler::Once>,
        clock: Arc<SystemClock>,
        statuses: &crate::metrics::Statuses,
    ) {
        let requests = Arc::new(crate::counting::RequestCounts::default());
        job.replica.store = Arc::new(crate::counting::CountingStore::new(
            job.replica.store.clone(),
            requests.clone(),
        ));
        let status: SharedStatus = Arc::new(std::sync::Mutex::new(JobStatus {
            database: job.engine.db_path.clone(),
            replica: job.replica.describe(),
            requests,
            ..JobStatus::default()
        }));
        job.schedule.once = once;
        statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(status.clone());
        tracing::info!(db = %job.engine.db_path.display(), replica = %job.replica.describe(), "replicating");
        let (stop, stop_rx) = watch::channel(false);
        let db = job.engine.db_path.clone();
        let handle = self
            .tasks
            .spawn(replicate::run(job, clock, status, stop_rx));
        self.jobs.insert(
            handle.id(),
            RunningJob {
                db,
                stop,
                removed: false,
            },
        );
    }

    fn stop_all(&self) {
        for j in self.jobs.values() {
            let _ = j.stop.send(true);
        }
    }

    /// Forgets a finished job: whether it was stopped for leaving a watched directory, and
    /// its result.
    fn finished(
        &mut self,
        res: Result<(tokio::task::Id, JobResult), tokio::task::JoinError>,
    ) -> (bool, Result<JobResult, tokio::task::JoinError>) {
        match res {
            Ok((id, r)) => {
                let removed = self.jobs.remove(&id).is_some_and(|j| j.removed);
                (removed, Ok(r))
            }
            Err(e) => {
                self.jobs.remove(&e.id());
                (false, Err(e))
            }
        }
    }

    /// Looks in the watched directories again: starts replicating the databases that
    /// appeared (taking their leases; one refused is logged and tried again later) and stops
    /// those whose database is gone.
    async fn rescan(
        &mut self,
        watched: &[crate::config::DbConfig],
        config: &Config,
        scratch: &Path,
        batch: usize,
        clock: Arc<SystemClock>,
        statuses: &crate::metrics::Statuses,
    ) {
        let mut present = std::collections::HashSet::new();
        for entry in watched {
            let found = match entry.databases_now() {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(dir = entry.dir.as_deref().unwrap_or_default(), error = %e, "cannot look in a watched directory");
                    continue;
                }
            };
            for db in found {
                let path = PathBuf::from(&db.path);
                present.insert(path.clone());
                if self.jobs.values().any(|j| j.db == path) {
                    continue;
                }
                tracing::info!(db = %path.display(), "appeared in a watched directory");
                let one = Config {
                    dbs: vec![db],
                    ..config.clone()
                };
                let dir = scratch.join(format!("watch-{batch}"));
                let mut jobs = match jobs_from_config(&one, &dir) {
                    Ok(j) => j,
                    Err(e) => {
                        tracing::error!(db = %path.display(), error = %e, "cannot replicate it");
                        continue;
                    }
                };
                for job in &jobs {
                    let _ = std::fs::create_dir_all(job.scratch.location());
                }
                if let Err(e) = take_leases(&mut jobs, clock.now_ms(), false, &[]).await {
                    tracing::error!(db = %path.display(), error = %e, "cannot replicate it; trying again at the next look");
                    continue;
                }
                for job in jobs {
                    self.start(job, None, clock.clone(), statuses);
                }
            }
        }
        let under_watch = |db: &Path| {
            watched
                .iter()
                .any(|w| w.dir.as_deref().is_some_and(|d| db.starts_with(d)))
        };
        for j in self.jobs.values_mut() {
            if !j.removed && under_watch(&j.db) && !present.contains(&j.db) && !j.db.exists() {
                tracing::info!(db = %j.db.display(), "removed from a watched directory; no longer replicating it");
                j.removed = true;
                let _ = j.stop.send(true);
            }
        }
    }
}

/// The lease time in effect: `SLUICE_LEASE_TTL_MS` (for tests and unusual deployments), else
/// [`LEASE_TTL_MS`].
fn lease_ttl_ms() -> Result<i64> {
    match std::env::var("SLUICE_LEASE_TTL_MS") {
        Ok(v) => v.parse::<i64>().ok().filter(|ms| *ms >= 30).ok_or_else(|| {
            anyhow!("SLUICE_LEASE_TTL_MS={v:?}: expected milliseconds, at least 30")
        }),
        Err(_) => Ok(LEASE_TTL_MS),
    }
}

/// Takes the lease of every replica whose store can fence writers, hands it to its job (whose
/// scheduler renews and finally releases it) and wraps the job's store so it writes only while
/// the lease holds. Refuses (releasing what it took) if another replicator holds one. A lease
/// that names another database's lineage makes the job's engine refuse a start it cannot prove
/// continues it, unless `force`.
async fn take_leases(
    jobs: &mut [replicate::Job],
    now_ms: i64,
    force: bool,
    restored: &[(PathBuf, String)],
) -> Result<()> {
    let ttl_ms = lease_ttl_ms()?;
    for i in 0..jobs.len() {
        let job = &mut jobs[i];
        let store = job.replica.store.clone();
        if !store.supports_conditional_writes() {
            continue;
        }
        let holder = Holder::here(&job.engine.db_path);
        let db = job.engine.db_path.display().to_string();
        // Retrying is safe: a take whose answer was lost left a lease naming this holder,
        // which the next attempt takes again.
        let taken = at_start(
            &db,
            || Lease::take(store.clone(), holder.clone(), now_ms, ttl_ms),
            |e| match e {
                crate::lease::LeaseError::Store(e) => Some(e),
                _ => None,
            },
        )
        .await;
        match taken {
            Ok(Some(lease)) => {
                let from_here = restored
                    .iter()
                    .any(|(db, r)| *db == job.engine.db_path && *r == job.replica.describe());
                if !force && !from_here {
                    job.engine.foreign_lineage = lease.other_lineage().map(str::to_string);
                }
                job.replica.store = Arc::new(FencedStore::new(
                    store,
                    lease.state(),
                    Arc::new(SystemClock),
                ));
                job.lease = Some(lease);
            }
            Ok(None) => {}
            Err(e) => {
                let db = job.engine.db_path.display().to_string();
                for job in jobs.iter_mut() {
                    if let Some(lease) = job.lease.take() {
                        let _ = lease.release(now_ms).await;
                    }
                }
                bail!("database {db}: {e}");
            }
        }
    }
    Ok(())
}

/// Attempts of a start's first request to a replica while it fails transiently; the waits
/// between them double from [`START_RETRY_FIRST_MS`] (about 4 s in all).
const START_ATTEMPTS: u32 = 5;
const START_RETRY_FIRST_MS: u64 = 250;

/// Runs `request` (a start's first request to the replica of database `db`) until it succeeds,
/// fails for good, or failed transiently [`START_ATTEMPTS`] times. `store_error` finds the
/// store's answer in the request's error type.
async fn at_start<T, E, Fut>(
    db: &str,
    mut request: impl FnMut() -> Fut,
    store_error: impl Fn(&E) -> Option<&crate::store::StoreError>,
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut wait_ms = START_RETRY_FIRST_MS;
    let mut attempt = 1;
    loop {
        match request().await {
            Err(e)
                if attempt < START_ATTEMPTS
                    && store_error(&e)
                        .is_some_and(|s| s.kind == crate::store::StoreErrorKind::Transient) =>
            {
                // Debug: a start that recovers needs no warning, and one that does not ends in
                // one error line naming the cause (bad input is one line).
                tracing::debug!(db, error = %e, "the replica failed transiently at the start; retrying in {wait_ms} ms (attempt {attempt} of {START_ATTEMPTS})");
                tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
                wait_ms *= 2;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Litestream accepts `:9090`; so do we.
fn spawn_exec(cmd: &str) -> Result<tokio::process::Child> {
    let words = shell_words::split(cmd).with_context(|| format!("-exec {cmd:?}: cannot parse"))?;
    let (prog, rest) = words
        .split_first()
        .ok_or_else(|| anyhow!("-exec is empty"))?;
    tokio::process::Command::new(prog)
        .args(rest)
        .spawn()
        .with_context(|| format!("-exec: cannot start {prog}"))
}

/// Sends `sig` to the `-exec` child, if it runs (kill(2): sidecar images often have no `kill`
/// binary to spawn).
fn forward(child: &Option<tokio::process::Child>, sig: Signal) {
    let pid = child
        .as_ref()
        .and_then(tokio::process::Child::id)
        .and_then(|p| i32::try_from(p).ok());
    if let Some(pid) = pid
        && let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
    {
        tracing::warn!(pid, signal = %sig, error = %e, "cannot signal the -exec child");
    }
}

async fn wait_child(child: &mut Option<tokio::process::Child>) -> i32 {
    match child {
        Some(c) => c.wait().await.ok().and_then(|s| s.code()).unwrap_or(1),
        None => std::future::pending().await,
    }
}

/// Restores a missing database from `replica`; returns that replica's description when it
/// restored something.
async fn restore_missing(
    path: &Path,
    replica: Option<&crate::config::ReplicaConfig>,
) -> Result<Option<String>> {
    let r = replica
        .ok_or_else(|| anyhow!("database {} has no replica to restore from", path.display()))?;
    let target = ReplicaTarget::from_config(r).map_err(|e| anyhow!(e))?;
    let replica = target.open(&r.settings).map_err(|e| anyhow!(e))?;
    match restore_if_missing(&OsFs, &replica, path).await? {
        Some(report) => {
            tracing::info!(db = %path.display(), txid = format_args!("{:016x}", report.txid), "restored database before replicating");
            Ok(Some(replica.describe()))
        }
        None => {
            tracing::info!(db = %path.display(), "no backup to restore; starting with a new database");
            Ok(None)
        }
    }
}

/// Pages of a database: its size over the page size in its header (bytes 16..18, big-endian;
/// 1 means 65,536).
fn page_count(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut header = [0u8; 18];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut header)
        .ok()?;
    let raw = u16::from_be_bytes([header[16], header[17]]);
    let page_size = if raw == 1 { 65_536 } else { u64::from(raw) };
    (page_size >= 512).then(|| std::fs::metadata(path).map(|m| m.len() / page_size).ok())?
}

fn mtime_ms(path: &Path) -> Option<i64> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(
        i64::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis())
            .unwrap_or(i64::MAX),
    )
}

/// `status`: for each database and replica, the replicated TXID and an estimate of the lag
/// (newest local write minus the newest replicated file's time). `databases` lists the
/// configuration only.
pub async fn cmd_status(args: ConfigArgs, list_only: bool) -> Result<i32> {
    let mut config = load_config(args.config.as_deref(), args.no_expand_env)?;
    config.discover().map_err(|e| anyhow!(e))?;
    let mut rows = Vec::new();
    for db in &config.dbs {
        let path = PathBuf::from(&db.path);
        for r in &db.replicas {
            let target = ReplicaTarget::from_config(r).map_err(|e| anyhow!(e))?;
            let mut row = serde_json::json!({ "database": db.path, "replica": target.to_string() });
            if !list_only {
                let replica = target.open(&r.settings).map_err(|e| anyhow!(e))?;
                row["replica"] = replica.describe().into();
                let files = replica.list_all().await.unwrap_or_default();
                let newest = files.iter().max_by_key(|f| f.max_txid);
                let mut wal = path.as_os_str().to_owned();
                wal.push("-wal");
                let local = [mtime_ms(&path), mtime_ms(Path::new(&wal))]
                    .into_iter()
                    .flatten()
                    .max();
                row["status"] = match (path.exists(), newest) {
                    (false, _) => "no database",
                    (true, None) => "not replicated",
                    (true, Some(_)) => "ok",
                }
                .into();
                row["replicated_txid"] = newest.map(|f| format!("{:016x}", f.max_txid)).into();
                let lag = match (local, newest) {
                    (Some(l), Some(n)) => Some(((l - n.created_ms).max(0)) as f64 / 1000.0),
                    _ => None,
                };
                row["lag_seconds"] = lag.into();
                // What a replicator of it holds per page (8 bytes each): the one part of its
                // memory that grows with the database.
                row["page_checksums_bytes"] = page_count(&path).map(|p| 8 * p).into();
            }
            rows.push(row);
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Array(rows));
    } else if list_only {
        println!("{:<40} replica", "database");
        for r in rows {
            println!(
                "{:<40} {}",
                r["database"].as_str().unwrap_or(""),
                r["replica"].as_str().unwrap_or("")
            );
        }
    } else {
        println!(
            "{:<40} {:<14} {:<16} {:>8} {:>10}  replica",
            "database", "status", "replicated_txid", "lag_s", "sums_MiB"
        );
        for r in rows {
            println!(
                "{:<40} {:<14} {:<16} {:>8} {:>10}  {}",
                r["database"].as_str().unwrap_or(""),
                r["status"].as_str().unwrap_or(""),
                r["replicated_txid"].as_str().unwrap_or("-"),
                r["lag_seconds"]
                    .as_f64()
                    .map_or("-".into(), |l| format!("{l:.1}")),
                r["page_checksums_bytes"]
                    .as_u64()
                    .map_or("-".into(), |b| format!(
                        "{:.1}",
                        b as f64 / f64::from(1 << 20)
                    )),
                r["replica"].as_str().unwrap_or("")
            );
        }
    }
    Ok(0)
}
