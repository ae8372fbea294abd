//! The driver: performs what the [`Scheduler`] decides for one (database, replica) job.
//!
//! [`Driver`] owns the job's engine, lease and scheduler and turns each [`Action`] into calls of
//! the engine, compaction, retention and the lease, classifying their errors into an
//! [`Outcome`]. It holds no timing rule of its own. [`run`] is the production loop around it
//! (wall clock, tokio sleeps, file notifications); the simulator runs the same `Driver` on
//! simulated time, so every decision `sluice replicate` makes runs under simulation.
//!
//! Sync timing: the loop stats the WAL every `monitor_interval_ms` (no reads) and is woken at
//! once by file notifications (`watch.rs`: inotify, one-shot while idle); the scheduler syncs when
//! the stamp changed, at most once per `sync_interval_ms`. Nothing is listed while idle.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::compact;
use crate::engine::{Clock, Engine, EngineConfig, EngineError, LocalDb, OsDb};
use crate::lease::{Lease, LeaseError};
use crate::planted::{self, Bug};
use crate::replica::{FileInfo, Replica};
pub use crate::scheduler::Schedule;
use crate::scheduler::{Action, Failure, Next, Outcome, Scheduler};
use crate::scratch::Scratch;

/// Live figures for `status` and metrics.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct JobStatus {
    pub database: PathBuf,
    pub replica: String,
    pub replicated_txid: u64,
    /// When unshipped changes were first seen (Unix ms), if any are pending.
    pub pending_since_ms: Option<i64>,
    pub last_sync_ms: Option<i64>,
    pub syncs: u64,
    pub sync_errors: u64,
    pub resyncs: u64,
    pub last_error: Option<String>,
    /// Set once the job stopped for good (a permanent error); the process replicates on.
    pub stopped: Option<String>,
    /// Why the replica cannot be restored to its newest state, as the job last judged it (at
    /// its start, when a merge found a file damaged, at a recovery; `None`: restorable, or
    /// not known yet).
    pub replica_break: Option<String>,
    /// The engine's per-page checksum table (8 bytes a page): the one part of a replicator's
    /// memory that grows with its database.
    pub page_checksums_bytes: u64,
    /// Object-store requests per operation, counted by the job's `CountingStore`.
    #[serde(skip)]
    pub requests: std::sync::Arc<crate::counting::RequestCounts>,
}

impl JobStatus {
    /// Replication lag in ms: how long the oldest unshipped change has waited.
    pub fn lag_ms(&self, now_ms: i64) -> i64 {
        self.pending_since_ms.map_or(0, |t| (now_ms - t).max(0))
    }
}

pub type SharedStatus = Arc<Mutex<JobStatus>>;

/// One database replicated to one replica.
#[derive(Debug)]
pub struct Job {
    pub engine: EngineConfig,
    pub replica: Replica,
    pub schedule: Schedule,
    /// Where compaction and snapshots download inputs too large to hold in memory.
    pub scratch: Arc<dyn Scratch>,
    /// The replica's lease, when its store fences writers (taken before the job starts).
    pub lease: Option<Lease>,
}

fn update(status: &SharedStatus, f: impl FnOnce(&mut JobStatus)) {
    let mut s = status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut s);
}

/// An action's error, classified for the scheduler.
fn failure(permanent: bool, message: String) -> (Failure, String) {
    if permanent {
        (Failure::Permanent(message.clone()), message)
    } else {
        (Failure::Transient, message)
    }
}

fn engine_failure(e: &EngineError) -> (Failure, String) {
    failure(e.is_permanent(), e.to_string())
}

/// A job's engine, lease and scheduler, and the code that performs the scheduler's actions.
pub struct Driver {
    work: Work,
    /// Kept apart from `work`: renewed beside a running action.
    lease: Option<Lease>,
    sched: Scheduler,
}

/// What the scheduler's actions work on: the whole job but its lease and its scheduler.
struct Work {
    cfg: EngineConfig,
    replica: Replica,
    scratch: Arc<dyn Scratch>,
    local: Arc<dyn LocalDb>,
    clock: Arc<dyn Clock>,
    engine: Option<Engine>,
    status: SharedStatus,
    /// The last file a sync shipped (for the simulator's event log).
    last_shipped: Option<(FileInfo, bool)>,
    /// "Waiting for the database" was logged (once, not per open retry).
    waiting_logged: bool,
    /// A merge or a heal asked for the replica's chain to be judged again: the next sync is
    /// due now, even on an idle database.
    recheck: bool,
    /// Lease renewals made beside the last action.
    renewed_beside: u32,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("db", &self.work.cfg.db_path)
            .field("sched", &self.sched)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// A job at `now_ms`, its engine not open yet (the scheduler's first action opens it).
    /// `seed` drives the retry jitter.
    pub fn new(
        job: Job,
        local: Arc<dyn LocalDb>,
        clock: Arc<dyn Clock>,
        status: SharedStatus,
        seed: u64,
    ) -> Driver {
        let now = clock.now_ms();
        let mut sched = Scheduler::new(job.schedule, seed, now);
        if let Some(l) = &job.lease {
            sched = sched.with_lease(l.ttl_ms(), now);
        }
        Driver {
            work: Work {
                cfg: job.engine,
                replica: job.replica,
                scratch: job.scratch,
                local,
                clock,
                engine: None,
                status,
                last_shipped: None,
                waiting_logged: false,
                recheck: false,
                renewed_beside: 0,
            },
            lease: job.lease,
            sched,
        }
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    pub fn scheduler_mut(&mut self) -> &mut Scheduler {
        &mut self.sched
    }

    pub fn engine(&self) -> Option<&Engine> {
        self.work.engine.as_ref()
    }

    /// The engine, to drive a sync step by step (the simulator's stalled uploads).
    pub fn engine_mut(&mut self) -> Option<&mut Engine> {
        self.work.engine.as_mut()
    }

    /// The file the last sync shipped, and whether it was a resync (taken: read once).
    pub fn take_shipped(&mut self) -> Option<(FileInfo, bool)> {
        self.work.last_shipped.take()
    }

    /// How many times the lease was renewed beside the last action (while it ran).
    pub fn renewed_beside(&self) -> u32 {
        self.work.renewed_beside
    }

    /// Hands the job's lease over (a host that stalls: the simulator's zombie keeps it).
    pub fn take_lease(&mut self) -> Option<Lease> {
        self.lease.take()
    }

    /// Reports the database's current stamp to the scheduler.
    pub fn observe(&mut self) {
        let now = self.work.clock.now_ms();
        let stamp = self.work.local.stamp();
        self.sched.observe_stamp(now, stamp);
    }

    /// What to do next, now.
    pub fn poll(&mut self) -> Next {
        let now = self.work.clock.now_ms();
        self.sched.next(now)
    }

    /// Performs `action` and hands its outcome to the scheduler; returns the outcome and, for
    /// a failure, its message. While the action runs, the lease is renewed beside it whenever
    /// the scheduler says a renewal is due: an action may take longer than the lease (the
    /// first snapshot of a large database, a heal, a merge on a slow store).
    pub async fn run_action(&mut self, action: Action) -> (Outcome, Option<String>) {
        let result = match action {
            Action::RenewLease | Action::ReleaseLease => self.lease_action(action).await,
            _ => {
                let s = self.sched.schedule();
                let retention = (s.snapshot_retention_ms, s.l0_retention_ms);
                let Driver { work, lease, sched } = self;
                work.renewed_beside = 0;
                match lease
                    .as_mut()
                    .filter(|_| !planted::active(Bug::LeaseNotKeptDuringActions))
                {
                    None => work.perform(action, retention).await,
                    Some(lease) => {
                        let finished = tokio::sync::Notify::new();
                        let clock = work.clock.clone();
                        let mut renewed = 0;
                        let (result, ()) = tokio::join!(
                            biased;
                            async {
                                let r = work.perform(action, retention).await;
                                finished.notify_one();
                                r
                            },
                            keep_lease(sched, lease, clock.as_ref(), &finished, &mut renewed),
                        );
                        work.renewed_beside = renewed;
                        result
                    }
                }
            }
        };
        let (outcome, error) = match result {
            Ok(o) => (o, None),
            Err((f, message)) => (Outcome::Failed(f), Some(message)),
        };
        if matches!(outcome, Outcome::Opened { .. })
            && let Some(lease) = self.lease.as_mut()
        {
            lease.adopt_lineage();
        }
        let now = self.work.clock.now_ms();
        self.sched.done(now, action, outcome.clone());
        // After the outcome: a sync's own outcome would clear what is marked pending.
        if std::mem::take(&mut self.work.recheck) {
            self.sched.mark_pending(now);
        }
        let pending = self.sched.pending_since_ms();
        let stopped = self.sched.stopped_by().map(str::to_string);
        update(&self.work.status, |s| {
            s.pending_since_ms = pending;
            if stopped.is_some() {
                s.stopped = stopped;
            }
        });
        (outcome, error)
    }

    async fn lease_action(&mut self, action: Action) -> Result<Outcome, (Failure, String)> {
        let now = self.work.clock.now_ms();
        match action {
            Action::RenewLease => match self.lease.as_mut() {
                Some(lease) => renew(lease, now).await,
                None => Ok(Outcome::Renewed),
            },
            _ => {
                if let Some(lease) = self.lease.take()
                    && let Err(e) = lease.release(now).await
                {
                    tracing::warn!(error = %e, "cannot release the replica lease; it expires on its own");
                }
                Ok(Outcome::Released)
            }
        }
    }

    /// Releases the engine's read lock (the job is over).
    pub fn close(&mut self) -> Result<(), EngineError> {
        match self.work.engine.take() {
            Some(e) => e.close(),
            None => Ok(()),
        }
    }
}

/// Renews `lease` whenever `sched` says it is due, reporting each renewal to `sched`, until
/// `finished` is notified; a renewal under way then completes first (dropped in the middle,
/// its answer would be lost and the next renewal would have to recover the lease's version).
async fn keep_lease(
    sched: &mut Scheduler,
    lease: &mut Lease,
    clock: &dyn Clock,
    finished: &tokio::sync::Notify,
    renewed: &mut u32,
) {
    loop {
        let Some(due_ms) = sched.renewal_due_ms() else {
            // Nothing left to renew beside the action (lost, or the job is stopping).
            finished.notified().await;
            return;
        };
        tokio::select! {
            biased;
            () = finished.notified() => return,
            () = clock.sleep_until(due_ms) => {}
        }
        let outcome = renew(lease, clock.now_ms())
            .await
            .unwrap_or_else(|(f, _)| Outcome::Failed(f));
        *renewed += 1;
        tracing::debug!(?outcome, "lease renewed beside a running action");
        sched.done(clock.now_ms(), Action::RenewLease, outcome);
    }
}

/// One renewal of `lease` at `now_ms`, its error classified for the scheduler.
async fn renew(lease: &mut Lease, now_ms: i64) -> Result<Outcome, (Failure, String)> {
    match lease.renew(now_ms).await {
        Ok(()) => Ok(Outcome::Renewed),
        Err(e @ LeaseError::Lost { .. }) => {
            tracing::error!(error = %e, "lost the replica's lease");
            Err(failure(true, e.to_string()))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot renew the replica lease; will retry");
            Err(failure(false, e.to_string()))
        }
    }
}

impl Work {
    async fn perform(
        &mut self,
        action: Action,
        retention: (i64, i64),
    ) -> Result<Outcome, (Failure, String)> {
        let now = self.clock.now_ms();
        match action {
            Action::Open => self.open().await,
            Action::Sync | Action::SyncRestart => {
                let Some(engine) = self.engine.as_mut() else {
                    return Err(failure(true, "sync before the engine opened".into()));
                };
                let recoveries = engine.recoveries();
                let synced = if action == Action::SyncRestart {
                    engine.sync_restart().await
                } else {
                    engine.sync().await
                };
                match synced {
                    Ok(out) => {
                        tracing::debug!(db = %self.cfg.db_path.display(), txid = format_args!("{:016x}", engine.position().txid), shipped = out.shipped.is_some(), "sync done");
                        let judged = engine.recoveries() != recoveries;
                        let txid = engine.position().txid;
                        let shipped = out.shipped.is_some();
                        let healed = engine.take_heal_file();
                        let post = engine.position().checksum.raw();
                        let found = engine.replica_break().map(str::to_string);
                        if let Some(f) = out.shipped {
                            self.last_shipped = Some((f, out.resynced));
                        }
                        // A recovery inside this sync judged the chain: a break it confirmed
                        // was healed by this file (every page), now written as a snapshot.
                        if judged {
                            update(&self.status, |st| st.replica_break.clone_from(&found));
                        }
                        if let (Some(why), Some(full)) = (found, healed) {
                            match self.heal(&why, full, post).await {
                                Ok(still) => update(&self.status, |st| st.replica_break = still),
                                // The sync shipped; the heal is judged and shipped again.
                                Err(_) => self.recheck(),
                            }
                        }
                        let table = self.engine.as_ref().map_or(0, Engine::page_checksums_bytes);
                        update(&self.status, |st| {
                            st.page_checksums_bytes = table;
                            st.replicated_txid = txid;
                            st.last_sync_ms = Some(now);
                            st.syncs += 1;
                            st.resyncs += u64::from(out.resynced);
                            st.last_error = None;
                        });
                        Ok(Outcome::Synced {
                            txid,
                            shipped,
                            more: out.more,
                        })
                    }
                    Err(e @ EngineError::Gone { .. }) => {
                        // Logged once; the open that follows waits for the file to appear.
                        tracing::warn!(db = %self.cfg.db_path.display(), "the database was removed or replaced while replicating; waiting for it to appear");
                        if let Some(engine) = self.engine.take()
                            && let Err(e) = engine.close()
                        {
                            tracing::debug!(error = %e, "closing the engine of a removed database");
                        }
                        self.waiting_logged = true;
                        update(&self.status, |st| st.last_error = Some(e.to_string()));
                        Err((Failure::Gone, e.to_string()))
                    }
                    Err(e) => {
                        tracing::warn!(db = %self.cfg.db_path.display(), error = %e, "sync failed; will retry");
                        update(&self.status, |st| {
                            st.sync_errors += 1;
                            st.last_error = Some(e.to_string());
                        });
                        Err(engine_failure(&e))
                    }
                }
            }
            Action::Compact {
                level,
                up_to_txid,
                known_max_txid,
            } => {
                let r = compact::compact_level(
                    &self.replica,
                    level,
                    up_to_txid,
                    known_max_txid,
                    &self.scratch,
                    self.damaged(),
                )
                .await;
                match r {
                    Ok(c) => Ok(Outcome::Compacted {
                        produced: c.file.map(|f| f.max_txid),
                        level_max_txid: c.level_max_txid,
                    }),
                    Err(e) => {
                        self.found_damage(&e);
                        tracing::warn!(level, error = %e, "compaction failed; will retry");
                        Err(failure(false, e.to_string()))
                    }
                }
            }
            Action::Snapshot { up_to_txid } => {
                match compact::snapshot(&self.replica, up_to_txid, &self.scratch, self.damaged())
                    .await
                {
                    Ok(info) => {
                        tracing::info!(file = %info, "snapshot written");
                        Ok(Outcome::Snapshotted)
                    }
                    Err(e) => {
                        self.found_damage(&e);
                        tracing::warn!(error = %e, "snapshot failed; will retry");
                        Err(failure(false, e.to_string()))
                    }
                }
            }
            Action::Retention => self.retention(now, retention).await,
            Action::CheckChain => {
                if let Ok(files) = self.replica.list_all_untimed().await {
                    self.judge_chain(files);
                }
                Ok(Outcome::Checked)
            }
            // `Driver::lease_action` performs these; never sent here.
            Action::RenewLease | Action::ReleaseLease => Err(failure(
                true,
                format!("{action}: a lease action reached the job's work"),
            )),
        }
    }

    async fn open(&mut self) -> Result<Outcome, (Failure, String)> {
        let db = self.cfg.db_path.clone();
        let opened = match self.local.open() {
            Ok(files) => {
                Engine::open(
                    self.cfg.clone(),
                    files,
                    self.replica.clone(),
                    self.clock.clone(),
                    self.scratch.clone(),
                )
                .await
            }
            Err(error) => Err(EngineError::Io { path: db, error }),
        };
        let engine = match opened {
            Ok(e) => e,
            Err(EngineError::Io { ref error, .. })
                if error.kind() == std::io::ErrorKind::NotFound =>
            {
                // Waiting for the application to create its database: said once, not per retry.
                if !self.waiting_logged {
                    self.waiting_logged = true;
                    tracing::info!(db = %self.cfg.db_path.display(), "waiting for the database to appear");
                }
                update(&self.status, |s| {
                    s.last_error = Some("the database does not exist yet".into())
                });
                return Err(failure(false, "the database does not exist yet".into()));
            }
            Err(e) if e.is_permanent() => {
                tracing::error!(db = %self.cfg.db_path.display(), error = %e, "cannot start replicating");
                update(&self.status, |s| s.last_error = Some(e.to_string()));
                return Err(engine_failure(&e));
            }
            Err(e) => {
                tracing::warn!(db = %self.cfg.db_path.display(), error = %e, "cannot start replicating; will retry");
                update(&self.status, |s| s.last_error = Some(e.to_string()));
                return Err(engine_failure(&e));
            }
        };
        let txid = engine.position().txid;
        let shipped_full = engine.opened_with_snapshot();
        let mut engine = engine;
        let mut replica_break = engine.replica_break().map(str::to_string);
        if let (Some(why), Some(full)) = (replica_break.clone(), engine.take_heal_file()) {
            let post = engine.position().checksum.raw();
            replica_break = self.heal(&why, full, post).await?;
        }
        update(&self.status, |s| s.replica_break = replica_break);
        // When the newest full file was written: the snapshot schedule continues from it. One
        // listing, at start; if it fails, a snapshot is due now.
        let newest_full_ms = if shipped_full {
            None
        } else {
            self.replica.list_all().await.ok().and_then(|files| {
                files
                    .iter()
                    .filter(|f| f.min_txid == 1)
                    .map(|f| f.created_ms)
                    .max()
            })
        };
        let now = self.clock.now_ms();
        let table = engine.page_checksums_bytes();
        update(&self.status, |st| {
            st.page_checksums_bytes = table;
            st.replicated_txid = txid;
            st.last_sync_ms = Some(now);
            st.last_error = None;
        });
        self.engine = Some(engine);
        Ok(Outcome::Opened {
            txid,
            shipped_full,
            newest_full_ms,
        })
    }

    /// Heals a replica that could not be restored (`why`): the full-state file the engine
    /// shipped at start is written again as a snapshot, then the chain is judged again. Returns
    /// what still breaks it ("" once it restores). A failed write fails the start: the retry
    /// opens again, finds the break again and ships another full state.
    async fn heal(
        &mut self,
        why: &str,
        full: FileInfo,
        post: u64,
    ) -> Result<Option<String>, (Failure, String)> {
        let written = compact::snapshot_of_full(&self.replica, full, post, &self.scratch)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "healing the replica: the snapshot failed; will retry");
                failure(false, e.to_string())
            })?;
        let files = self
            .replica
            .list_all()
            .await
            .map_err(|e| failure(false, e.to_string()))?;
        match crate::engine::chain_break(&self.replica.describe(), &files, written.max_txid) {
            None => {
                tracing::warn!(
                    replica = %self.replica.describe(),
                    snapshot = %written,
                    "healed the replica: restores work again from TXID {:016x} on (the break before it stays: {why})",
                    written.max_txid
                );
                Ok(None)
            }
            Some(still) => {
                tracing::error!(replica = %self.replica.describe(), "the heal did not make the replica restorable: {still}");
                Ok(Some(still))
            }
        }
    }

    /// A merge found an input damaged: it is left out of later merges and of the chain the
    /// engine judges, and the next sync recovers, confirms the break and heals it.
    fn found_damage(&mut self, e: &compact::CompactError) {
        let (Some(file), Some(engine)) = (e.damaged(), self.engine.as_mut()) else {
            return;
        };
        if !engine.note_damaged(file) {
            return;
        }
        tracing::error!(replica = %self.replica.describe(), error = %e, "a replica file is damaged; restores through it fail: healing the replica");
        update(&self.status, |s| s.replica_break = Some(e.to_string()));
        self.recheck();
    }

    /// The files merges leave out: the engine's record of damaged ones.
    fn damaged(&self) -> &[FileInfo] {
        self.engine.as_ref().map_or(&[], Engine::damaged)
    }

    /// The next sync (due now, even on an idle database) recovers and judges the chain.
    fn recheck(&mut self) {
        if let Some(engine) = self.engine.as_mut() {
            engine.recheck_replica();
            self.recheck = true;
        }
    }

    /// After a compaction: whether the replica's newest state still restores, judged from
    /// one listing (its names alone, the damaged files left out). A break found here (a file
    /// deleted from under us, say) makes the next sync recover: the engine confirms it past
    /// a listing that may lag, and heals it.
    fn judge_chain(&mut self, mut files: Vec<FileInfo>) {
        let Some(newest) = files.iter().map(|f| f.max_txid).max() else {
            return;
        };
        files.retain(|f| !self.damaged().contains(f));
        if let Some(why) = crate::engine::chain_break(&self.replica.describe(), &files, newest) {
            tracing::warn!(replica = %self.replica.describe(), "the replica's listing shows a break ({why}); checking it at the next sync");
            self.recheck();
        }
    }

    /// Deletes what retention lets go: `(snapshot_retention_ms, l0_retention_ms)`.
    async fn retention(
        &mut self,
        now: i64,
        (snapshot_ms, l0_ms): (i64, i64),
    ) -> Result<Outcome, (Failure, String)> {
        // Timestamps matter for level 0 and the snapshots alone (`compact::plan_retention`).
        let timed = [0, crate::replica::SNAPSHOT_LEVEL];
        let files = match self.replica.list_all_timed_on(&timed).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "retention: cannot list replica");
                return Err(failure(false, e.to_string()));
            }
        };
        // In the plan's order, stopping at the first failure: every prefix of it leaves the
        // window restorable (the retry plans again from a fresh listing).
        let deletes = compact::plan_retention(&files, now, snapshot_ms, l0_ms);
        for f in &deletes {
            if let Err(e) = self.replica.store.delete(&self.replica.key(f)).await {
                tracing::warn!(file = %f, error = %e, "retention: delete failed; will retry");
                return Err(failure(false, e.to_string()));
            }
        }
        // The chain as retention left it, from the same listing.
        let kept = files.into_iter().filter(|f| !deletes.contains(f)).collect();
        self.judge_chain(kept);
        Ok(Outcome::Retained)
    }
}

/// A job stopped for good by a permanent error.
#[derive(Debug, thiserror::Error)]
#[error("database {db}: replication to {replica} stopped: {reason}")]
pub struct JobStopped {
    pub db: String,
    pub replica: String,
    pub reason: String,
}

/// The seed of a production job's retry jitter: different per process and job.
fn jitter_seed(db: &std::path::Path) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut h = crate::checksum::Hasher::new();
    h.update(db.as_os_str().as_encoded_bytes());
    h.update(&nanos.to_be_bytes());
    h.update(&std::process::id().to_be_bytes());
    h.finish_flagged()
}

/// Runs a job until `shutdown` turns true, then makes a final sync (bounded by
/// `shutdown_sync_timeout_ms`) and releases the lease. Ends early with [`JobStopped`] when a
/// permanent error stops the job.
pub async fn run(
    job: Job,
    clock: Arc<dyn Clock>,
    status: SharedStatus,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), JobStopped> {
    let db_path = job.engine.db_path.clone();
    let replica = job.replica.describe();
    let local: Arc<dyn LocalDb> = Arc::new(OsDb {
        path: db_path.clone(),
    });
    let seed = jitter_seed(&db_path);
    let mut d = Driver::new(job, local, clock.clone(), status.clone(), seed);
    let wake = Arc::new(tokio::sync::Notify::new());
    let watcher = watch_database(&db_path, wake.clone());
    let mut stopping = false;
    loop {
        if !stopping && *shutdown.borrow() {
            stopping = true;
            d.scheduler_mut().shutdown(clock.now_ms());
        }
        match d.poll() {
            Next::Run(action) => {
                // While stopping, no action outlives the final sync's deadline (a release
                // after it gets one more timeout of its own).
                let timeout_ms = match d.scheduler().stop_deadline_ms() {
                    Some(deadline) => (deadline - clock.now_ms()).max(1),
                    None if stopping => d.scheduler().schedule().shutdown_sync_timeout_ms,
                    None => i64::MAX / 4,
                };
                let limit = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(30_000));
                if tokio::time::timeout(limit, d.run_action(action))
                    .await
                    .is_err()
                {
                    tracing::warn!(db = %db_path.display(), %action, "timed out while stopping");
                    break;
                }
            }
            Next::Sleep { until_ms } => {
                let listen = d.scheduler().wants_notifications();
                if listen && watcher.as_ref().is_some_and(crate::watch::DbWatch::arm) {
                    // A write made after the last look and before the watch was armed woke
                    // nothing: look once more before sleeping.
                    d.observe();
                    continue;
                }
                let sleep_ms = u64::try_from(until_ms - clock.now_ms()).unwrap_or(1).max(1);
                tokio::select! {
                    _ = shutdown.changed(), if !stopping => {}
                    () = wake.notified(), if listen => {}
                    () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
                }
                d.observe();
            }
            Next::Exit => break,
        }
    }
    let txid = d.scheduler().txid();
    update(&status, |st| st.replicated_txid = txid);
    let opened = d.engine().is_some();
    if stopping && opened && d.scheduler().drained() {
        tracing::info!(db = %db_path.display(), txid = format_args!("{txid:016x}"), "final sync done");
    } else if stopping && opened {
        tracing::warn!(db = %db_path.display(), "final sync did not finish; what is left ships at the next start");
    }
    if let Err(e) = d.close() {
        tracing::warn!(db = %db_path.display(), error = %e, "cannot release the read lock");
    }
    if let Some(reason) = d.scheduler().stopped_by() {
        return Err(JobStopped {
            db: db_path.display().to_string(),
            replica,
            reason: reason.to_string(),
        });
    }
    if d.scheduler().schedule().once.is_some() {
        if !d.scheduler().drained() {
            return Err(JobStopped {
                db: db_path.display().to_string(),
                replica,
                reason: "-once did not finish within shutdown-sync-timeout".into(),
            });
        }
        tracing::info!(db = %db_path.display(), txid = format_args!("{txid:016x}"), "one-shot sync done");
    }
    if !opened {
        return Err(JobStopped {
            db: db_path.display().to_string(),
            replica,
            reason: "stopped before replication could start (the database never appeared, or the replica never answered); nothing was replicated".into(),
        });
    }
    Ok(())
}

/// The database's watch (see `watch.rs`), or `None` with a warning where notifications are
/// unavailable: an idle job then looks every `monitor_interval_ms`.
fn watch_database(
    db: &std::path::Path,
    wake: Arc<tokio::sync::Notify>,
) -> Option<crate::watch::DbWatch> {
    crate::watch::DbWatch::start(db, wake)
        .map_err(|e| tracing::warn!(db = %db.display(), error = %e, "file notifications unavailable; polling instead"))
        .ok()
}
