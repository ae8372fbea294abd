//! The replication scheduler: every timing rule of one job, as a plain value with no I/O.
//!
//! In the style of raft-rs's `Ready`/`advance`: the caller asks [`Scheduler::next`] what to do
//! at `now_ms`, performs the [`Action`] it returns, and hands the [`Outcome`] back to
//! [`Scheduler::done`]; on [`Next::Sleep`] it waits until then, or until a file notification,
//! and reports the database's stamp with [`Scheduler::observe_stamp`]. `sluice replicate`
//! (`replicate::run`, on the wall clock) and the simulator (on simulated time) drive the same
//! value, so every rule here runs under simulation.
//!
//! The rules:
//! - **Open** the engine first; a transient failure is retried with full jitter, capped at the
//!   sync interval (everything is pending, so the recovery point objective applies).
//! - **Sync** when the stamp changed and the last sync that shipped started at least
//!   `sync_interval_ms` ago, less what uploads take (a decaying peak of the recent ones, at
//!   most half the interval): sparse writes ship at once, sustained writes cost about one PUT
//!   per interval, and a commit made just after a sync read the WAL is on the replica one
//!   interval after its commit, its own upload included (the RPO as a user reads it). A
//!   WAL restart (the stamp's generation changed) that ended a generation shorter than
//!   [`RESTART_URGENT_BELOW_INTERVALS`] sync intervals is synced at once, interval or not
//!   ([`Action::SyncRestart`]), and again [`RESTART_FOLLOW_UP_MS`] later: the new generation
//!   overwrites the old one's unread tail as it grows, and once it has grown past the position
//!   the next sync cannot prove continuity and compares the whole database. While commits are
//!   pending the stamp is therefore polled every `wal_watch_ms`.
//! - **Retries** back off with full jitter from [`RETRY_BASE_MS`]. A sync's backoff is capped at
//!   the sync interval while commits are pending, so once the store answers again the next
//!   commit ships within one sync interval plus one upload (the stated bound, checked by the
//!   simulator after every heal). Compaction, snapshot, retention and lease retries are capped at
//!   `backoff_max_ms` and never wait longer than their own interval.
//! - **Compaction** of level `n` runs every `levels_ms[n - 1]`, aligned to the interval, when
//!   something new can reach it (no LIST while idle); a failed one is retried, idle or not.
//! - **Snapshots** every `snapshot_interval_ms` after the newest full file, when the TXID moved;
//!   **retention** after each level-1 compaction that produced a file and after each snapshot.
//!   After any compaction the chain is judged from one listing (whether the newest state still
//!   restores): by the retention that follows it, else by [`Action::CheckChain`].
//! - **Lease**: renewed every third of its time, between actions and during a long one (the
//!   driver renews it beside the action when [`Scheduler::renewal_due_ms`] comes); a lost lease
//!   stops the job.
//! - **Shutdown**: a final sync until nothing is pending, bounded by
//!   `shutdown_sync_timeout_ms`, then the lease is released.
//! - **Errors**: transient ones are retried; a permanent one stops this job only (the caller
//!   keeps the other databases replicating).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::planted::{self, Bug};
use crate::replica::SNAPSHOT_LEVEL;

/// The first retry waits up to this long; each further failure doubles the cap.
pub const RETRY_BASE_MS: i64 = 100;

/// [`Schedule::wal_watch_ms`]'s default.
pub const WAL_WATCH_MS: i64 = 10;

/// The sync after a WAL restart's is due this long after it (at the first change then): far
/// enough for the position to move past more than the new generation's first transaction.
pub const RESTART_FOLLOW_UP_MS: i64 = 50;

/// A WAL restart is synced at once only when the generation it ended lasted less than this
/// many sync intervals (or for how long is not known). The new generation overwrites the old
/// one's unread tail (at most the last interval's frames) once it has grown as far as the
/// old one had at the last sync: at a steady rate, after the old generation's length less an
/// interval. A generation of three intervals leaves two for a sync at the interval to read
/// the tail first; a longer one, more. Sooner, the restart's two extra syncs would cost two
/// PUTs for nothing: at 100 commits/s with SQLite's default automatic checkpoint a generation
/// lasts seconds.
pub const RESTART_URGENT_BELOW_INTERVALS: i64 = 3;

/// When things happen. Defaults are Litestream's.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub sync_interval_ms: i64,
    pub monitor_interval_ms: i64,
    /// While commits are pending, the stamp is observed this often (a stat of two files and a
    /// read of the WAL's 32-byte header), so a WAL restart is synced within this long of the
    /// write that began it. The old generation's tail survives until the new one has grown
    /// past the position: at 1,000 frames a second, a restart within 10 ms of the position's
    /// last sync is the most this catches too late.
    pub wal_watch_ms: i64,
    /// Compaction interval for levels 1, 2, ...
    pub levels_ms: Vec<i64>,
    pub snapshot_interval_ms: i64,
    pub snapshot_retention_ms: i64,
    pub l0_retention_ms: i64,
    pub retention_enabled: bool,
    /// Upper bound of the retry backoff of compaction, snapshots, retention and the lease.
    pub backoff_max_ms: i64,
    pub shutdown_sync_timeout_ms: i64,
    /// `replicate -once`: open, ship what is pending, then do what this asks and stop, all
    /// within `shutdown_sync_timeout_ms` of the start.
    pub once: Option<Once>,
}

/// What a one-shot run (`replicate -once`) does after its sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Once {
    /// Write a snapshot of the newest state (`-force-snapshot`).
    pub force_snapshot: bool,
    /// Delete what retention allows (`-enforce-retention`).
    pub enforce_retention: bool,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            sync_interval_ms: 1000,
            monitor_interval_ms: 1000,
            wal_watch_ms: WAL_WATCH_MS,
            levels_ms: vec![30_000, 300_000, 3_600_000],
            snapshot_interval_ms: 24 * 3_600_000,
            snapshot_retention_ms: 24 * 3_600_000,
            l0_retention_ms: 300_000,
            retention_enabled: true,
            backoff_max_ms: 30_000,
            shutdown_sync_timeout_ms: 30_000,
            once: None,
        }
    }
}

/// What the caller must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open the engine: recover the replica's position (it may ship a full level-0 file).
    Open,
    /// Ship what changed since the last sync.
    Sync,
    /// The WAL restarted: ship the old generation's tail and the new one's frames while the
    /// tail is still there to prove continuity from; ship nothing if it is already gone (a
    /// sync at the interval then compares the database, once, instead of this one).
    SyncRestart,
    /// Compact level `level - 1` into `level`, up to `up_to_txid`; `known_max_txid` is the
    /// newest TXID this job knows the destination reaches (a lagging listing may not show it).
    Compact {
        level: u8,
        up_to_txid: u64,
        known_max_txid: u64,
    },
    /// Write a level-9 snapshot of `1..=up_to_txid`.
    Snapshot {
        up_to_txid: u64,
    },
    /// Delete what retention allows, then judge the chain from the same listing.
    Retention,
    /// Judge from one listing whether the replica's newest state still restores (after a
    /// compaction that no retention follows).
    CheckChain,
    RenewLease,
    ReleaseLease,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Open => f.write_str("open"),
            Action::Sync => f.write_str("sync"),
            Action::SyncRestart => f.write_str("sync-restart"),
            Action::Compact {
                level, up_to_txid, ..
            } => write!(f, "compact level {level} to {up_to_txid:016x}"),
            Action::Snapshot { up_to_txid } => write!(f, "snapshot to {up_to_txid:016x}"),
            Action::Retention => f.write_str("retention"),
            Action::CheckChain => f.write_str("check-chain"),
            Action::RenewLease => f.write_str("renew-lease"),
            Action::ReleaseLease => f.write_str("release-lease"),
        }
    }
}

/// The scheduler's answer to "what now?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Run(Action),
    /// Nothing is due before `until_ms` (a file notification may wake the caller earlier).
    Sleep {
        until_ms: i64,
    },
    /// The job is over: shut down cleanly, or stopped by a permanent error
    /// ([`Scheduler::stopped_by`]).
    Exit,
}

/// What an action did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The engine is open at `txid`. `newest_full_ms`: when the newest file covering TXID 1
    /// was written (the snapshot schedule starts from it); `shipped_full`: opening shipped one.
    Opened {
        txid: u64,
        shipped_full: bool,
        newest_full_ms: Option<i64>,
    },
    /// A sync finished at `txid`; `more`: a backlog remains beyond one file's limit.
    Synced {
        txid: u64,
        shipped: bool,
        more: bool,
    },
    /// A compaction ran; `produced`: the newest TXID of the file it wrote, if it wrote one
    /// (short of `up_to_txid` when the inputs were capped: the level runs again);
    /// `level_max_txid`: the newest TXID the level reaches (what a restarted job learns).
    Compacted {
        produced: Option<u64>,
        level_max_txid: u64,
    },
    Snapshotted,
    Retained,
    /// The chain was judged (a break found makes the next sync recover).
    Checked,
    Renewed,
    Released,
    Failed(Failure),
}

/// Why an action failed, as far as scheduling cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying (an outage, a busy database, a race with the application).
    Transient,
    /// Not worth retrying: this job stops, with this reason.
    Permanent(String),
    /// The database is gone (removed, or replaced by another file): the engine was closed,
    /// and the job opens it again, waiting for it to appear.
    Gone,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Opening,
    Running,
    /// Final syncs until nothing is pending or the deadline passes.
    Draining {
        deadline_ms: i64,
    },
    /// `-once`, after its sync: the snapshot and retention it was asked for, then release.
    OnceTodo {
        deadline_ms: i64,
        todo: Once,
    },
    /// The final sync is over, or the job stopped; the lease goes next.
    Releasing,
    Stopped,
}

/// One retry timer with its consecutive failures.
#[derive(Clone, Copy, Debug, Default)]
struct Retry {
    at_ms: i64,
    failures: u32,
}

#[derive(Clone, Copy, Debug)]
struct LeaseTimer {
    ttl_ms: i64,
    renew_at_ms: i64,
    retry: Retry,
}

#[derive(Clone, Debug)]
struct Level {
    due_ms: i64,
    /// The newest TXID this level is known to reach (its outputs so far).
    newest: u64,
    /// The source's newest TXID when a run last found nothing to compact: no LIST again until
    /// the source grows past it.
    idle_at_source: u64,
    retry: Retry,
}

/// The schedule of one (database, replica) job.
#[derive(Clone, Debug)]
pub struct Scheduler {
    s: Schedule,
    rng: ChaCha8Rng,
    phase: Phase,
    open: Retry,
    txid: u64,
    stamp: Option<Stamp>,
    /// When unshipped changes were first seen, if any are pending.
    pending_since_ms: Option<i64>,
    /// Where the job is in syncing a WAL restart (see [`Restart`]).
    restart: Restart,
    /// When the WAL's current generation was first seen.
    generation_since_ms: Option<i64>,
    /// When the last sync that shipped ended, and when it started.
    last_upload_ms: i64,
    last_ship_started_ms: i64,
    /// What an upload takes, as a decaying peak of the recent syncs that shipped (each counted
    /// at most half the interval).
    ship_ms_estimate: i64,
    /// When the sync under way started ([`Scheduler::next`] returned it).
    sync_started_ms: Option<i64>,
    sync: Retry,
    levels: Vec<Level>,
    snapshot_due_ms: i64,
    snapshot_txid: u64,
    snapshot_retry: Retry,
    retention_due: bool,
    retention_retry: Retry,
    /// A compaction changed the replica since the chain was last judged.
    chain_check_due: bool,
    lease: Option<LeaseTimer>,
    stopped_by: Option<String>,
    /// `-once`: when the whole run gives up.
    once_deadline_ms: Option<i64>,
    opened: bool,
    /// The final sync left nothing pending.
    drained: bool,
}

/// A WAL restart's syncs: the one that reads the old generation's tail while it is still
/// there, and one more soon after. The first leaves the position right after the new
/// generation's first transactions, where the next restart's first transaction (as large)
/// overwrites the frames after it before any sync at the interval could read them; the second
/// moves it further.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restart {
    None,
    /// A new generation was seen: sync at once.
    Seen,
    /// Its sync shipped: the next one is due [`RESTART_FOLLOW_UP_MS`] after it, at the first
    /// change then, interval or not.
    FollowUp,
}

/// What the caller observed of the database and its WAL: the WAL's size, its modification
/// time (or the simulated disk's version), the database's size, and the WAL's generation (its
/// header's salts and checksum, `STAMP_GENERATION`; 0 without a header). A change means commits may be
/// pending; a change of generation, that the WAL restarted.
pub type Stamp = [u64; 4];

/// The index of the WAL's generation in a [`Stamp`].
pub const STAMP_GENERATION: usize = 3;

fn align_next(now_ms: i64, interval_ms: i64) -> i64 {
    (now_ms / interval_ms.max(1) + 1) * interval_ms.max(1)
}

impl Scheduler {
    /// A job starting at `now_ms`. `seed` drives the retry jitter (the simulator passes its
    /// own; production a random one, so that databases do not retry in lockstep).
    pub fn new(schedule: Schedule, seed: u64, now_ms: i64) -> Scheduler {
        let levels = schedule
            .levels_ms
            .iter()
            .map(|&interval| Level {
                due_ms: align_next(now_ms, interval),
                newest: 0,
                idle_at_source: 0,
                retry: Retry::default(),
            })
            .collect();
        Scheduler {
            rng: ChaCha8Rng::seed_from_u64(seed),
            phase: Phase::Opening,
            open: Retry {
                at_ms: now_ms,
                failures: 0,
            },
            txid: 0,
            stamp: None,
            pending_since_ms: None,
            restart: Restart::None,
            generation_since_ms: None,
            last_upload_ms: i64::MIN / 2,
            last_ship_started_ms: i64::MIN / 2,
            ship_ms_estimate: 0,
            sync_started_ms: None,
            sync: Retry::default(),
            levels,
            snapshot_due_ms: i64::MAX,
            snapshot_txid: 0,
            snapshot_retry: Retry::default(),
            retention_due: false,
            retention_retry: Retry::default(),
            chain_check_due: false,
            lease: None,
            stopped_by: None,
            once_deadline_ms: schedule
                .once
                .map(|_| now_ms.saturating_add(schedule.shutdown_sync_timeout_ms)),
            opened: false,
            drained: false,
            s: schedule,
        }
    }

    /// The job holds a lease of `ttl_ms`, taken at `taken_ms`: renew it on schedule.
    pub fn with_lease(mut self, ttl_ms: i64, taken_ms: i64) -> Scheduler {
        self.lease = Some(LeaseTimer {
            ttl_ms,
            renew_at_ms: taken_ms + ttl_ms / 3,
            retry: Retry::default(),
        });
        self
    }

    pub fn schedule(&self) -> &Schedule {
        &self.s
    }

    /// The replica's TXID as far as the scheduler knows.
    pub fn txid(&self) -> u64 {
        self.txid
    }

    /// When unshipped changes were first seen, if any are pending.
    pub fn pending_since_ms(&self) -> Option<i64> {
        self.pending_since_ms
    }

    /// Whether a file notification could change what happens next. Not while a change is
    /// already pending: the sync it waits for is due at a time no further change moves
    /// (`sync_due_ms`). Under a busy writer every WAL write notifies (tens of thousands a
    /// second); the driver need not wake and stat the files for each.
    pub fn wants_notifications(&self) -> bool {
        self.pending_since_ms.is_none()
    }

    /// The permanent error that stopped the job, if one did.
    pub fn stopped_by(&self) -> Option<&str> {
        self.stopped_by.as_deref()
    }

    /// Whether the engine opened (the job got past its first successful open).
    pub fn is_open(&self) -> bool {
        self.opened
    }

    /// Whether the job holds a lease it renews.
    pub fn holds_lease(&self) -> bool {
        self.lease.is_some()
    }

    /// While stopping: when the final sync gives up.
    pub fn stop_deadline_ms(&self) -> Option<i64> {
        match self.phase {
            Phase::Draining { deadline_ms } | Phase::OnceTodo { deadline_ms, .. } => {
                Some(deadline_ms)
            }
            _ => None,
        }
    }

    /// Whether the final sync left nothing pending (meaningful once [`Next::Exit`]).
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// The database's stamp at `now_ms`: a change marks commits pending.
    pub fn observe_stamp(&mut self, now_ms: i64, stamp: Option<Stamp>) {
        if stamp != self.stamp {
            // A generation that replaced another: the old one's unread tail is being
            // overwritten (none to fear after a WAL that was missing or truncated).
            let generation = |s: Option<Stamp>| s.map_or(0, |s| s[STAMP_GENERATION]);
            let (old, new) = (generation(self.stamp), generation(stamp));
            if new != old {
                let lasted = self.generation_since_ms.map(|t| now_ms - t);
                self.generation_since_ms = (new != 0).then_some(now_ms);
                let urgent = lasted
                    .is_none_or(|ms| ms < RESTART_URGENT_BELOW_INTERVALS * self.s.sync_interval_ms);
                if old != 0 && new != 0 && urgent && !planted::active(Bug::RestartNoticedLate) {
                    self.restart = Restart::Seen;
                }
            }
            self.stamp = stamp;
            self.pending_since_ms.get_or_insert(now_ms);
        }
    }

    /// Marks changes pending as of `now_ms` whatever the stamp says (a caller that knows).
    pub fn mark_pending(&mut self, now_ms: i64) {
        self.pending_since_ms.get_or_insert(now_ms);
    }

    /// Asks the job to stop: a final sync (if the engine is open), then the lease goes.
    pub fn shutdown(&mut self, now_ms: i64) {
        self.phase = match self.phase {
            Phase::Opening => Phase::Releasing,
            Phase::Running if planted::active(Bug::NoFinalSync) => Phase::Releasing,
            Phase::Running => {
                // The final sync runs whatever the stamp said last.
                self.pending_since_ms.get_or_insert(now_ms);
                self.sync.at_ms = now_ms;
                Phase::Draining {
                    deadline_ms: now_ms + self.s.shutdown_sync_timeout_ms,
                }
            }
            ref p => p.clone(),
        };
    }

    /// A delay with full jitter: uniform in `1..=min(cap, base * 2^failures)`.
    fn backoff(&mut self, failures: u32, cap_ms: i64) -> i64 {
        let exp = RETRY_BASE_MS.saturating_mul(1i64 << failures.min(30));
        if planted::active(Bug::UnboundedBackoff) {
            // The old rule: no jitter, capped only by `backoff_max_ms`.
            return exp.min(self.s.backoff_max_ms);
        }
        let cap = exp.min(cap_ms).max(1);
        self.rng.random_range(1..=cap)
    }

    /// The retry after one more failure of `retry`, at `now_ms`, waiting up to `cap_ms`.
    fn failed(&mut self, retry: Retry, now_ms: i64, cap_ms: i64) -> Retry {
        Retry {
            at_ms: now_ms + self.backoff(retry.failures, cap_ms),
            failures: retry.failures.saturating_add(1),
        }
    }

    fn stop(&mut self, why: String) {
        self.stopped_by = Some(why);
        self.phase = Phase::Releasing;
    }

    /// When the lease is to be renewed next (`None`: there is none to keep). It is renewed
    /// then whatever the job is doing: between actions [`Scheduler::next`] asks for it, and
    /// during a long one (the first snapshot of a large database, a heal, a compaction) the
    /// driver renews it beside the action, reporting to [`Scheduler::done`] as usual.
    pub fn renewal_due_ms(&self) -> Option<i64> {
        let l = self.lease.as_ref()?;
        if matches!(self.phase, Phase::Stopped | Phase::Releasing)
            || planted::active(Bug::LeaseNotRenewed)
        {
            return None;
        }
        Some(l.renew_at_ms.max(l.retry.at_ms))
    }

    /// The next thing to do at `now_ms`.
    pub fn next(&mut self, now_ms: i64) -> Next {
        let next = self.decide(now_ms);
        if let Next::Run(Action::Sync | Action::SyncRestart) = next {
            self.sync_started_ms = Some(now_ms);
        }
        next
    }

    fn decide(&mut self, now_ms: i64) -> Next {
        let lease_due = self.renewal_due_ms().unwrap_or(i64::MAX);
        if now_ms >= lease_due {
            return Next::Run(Action::RenewLease);
        }
        let sleep = |until_ms: i64| Next::Sleep {
            until_ms: until_ms.min(lease_due).max(now_ms + 1),
        };
        match self.phase {
            Phase::Stopped => Next::Exit,
            Phase::Releasing => {
                if self.lease.is_some() {
                    Next::Run(Action::ReleaseLease)
                } else {
                    self.phase = Phase::Stopped;
                    Next::Exit
                }
            }
            Phase::Opening => {
                if let Some(deadline) = self.once_deadline_ms
                    && now_ms >= deadline
                {
                    self.stopped_by = Some("-once: the replica could not be opened in time".into());
                    self.phase = Phase::Releasing;
                    return self.next(now_ms);
                }
                if now_ms >= self.open.at_ms {
                    Next::Run(Action::Open)
                } else {
                    sleep(self.open.at_ms)
                }
            }
            Phase::OnceTodo { deadline_ms, todo } => {
                if now_ms >= deadline_ms {
                    tracing::warn!("-once: timed out");
                    self.phase = Phase::Releasing;
                    return self.next(now_ms);
                }
                let (action, retry) = if todo.force_snapshot && self.txid > 0 {
                    (
                        Action::Snapshot {
                            up_to_txid: self.txid,
                        },
                        self.snapshot_retry,
                    )
                } else if todo.enforce_retention {
                    (Action::Retention, self.retention_retry)
                } else {
                    self.drained = true;
                    self.phase = Phase::Releasing;
                    return self.next(now_ms);
                };
                if now_ms >= retry.at_ms {
                    Next::Run(action)
                } else {
                    sleep(retry.at_ms.min(deadline_ms))
                }
            }
            Phase::Draining { deadline_ms } => {
                if now_ms >= deadline_ms {
                    tracing::warn!("final sync timed out");
                    self.phase = Phase::Releasing;
                    return self.next(now_ms);
                }
                if self.pending_since_ms.is_none() {
                    if let Some(todo) = self.s.once.filter(|_| self.once_deadline_ms.is_some()) {
                        self.phase = Phase::OnceTodo { deadline_ms, todo };
                        return self.next(now_ms);
                    }
                    self.drained = true;
                    self.phase = Phase::Releasing;
                    return self.next(now_ms);
                }
                if now_ms >= self.sync.at_ms {
                    Next::Run(Action::Sync)
                } else {
                    sleep(self.sync.at_ms.min(deadline_ms))
                }
            }
            Phase::Running => self.next_running(now_ms, lease_due),
        }
    }

    fn sync_due_ms(&self) -> Option<i64> {
        self.pending_since_ms?;
        let due = match self.restart {
            // A restart's syncs come sooner than the interval (a failing store still gets its
            // backoff).
            Restart::Seen => return Some(self.sync.at_ms),
            Restart::FollowUp => self.last_upload_ms.saturating_add(RESTART_FOLLOW_UP_MS),
            // One interval from the start of the last sync that shipped, less what an upload
            // takes: a commit made just after that sync read the WAL is on the replica one
            // interval later, its own upload included (the RPO). Capped at half the interval,
            // so a slow store costs at most two PUTs an interval.
            Restart::None if planted::active(Bug::SyncSpacedFromUploadEnd) => {
                self.last_upload_ms.saturating_add(self.s.sync_interval_ms)
            }
            Restart::None => {
                let upload = self.ship_ms_estimate;
                self.last_ship_started_ms
                    .saturating_add(self.s.sync_interval_ms - upload)
            }
        };
        Some(due.max(self.sync.at_ms))
    }

    /// The newest TXID the source of level `i + 1` reaches: the replica for level 1, the
    /// level below otherwise.
    fn source_newest(&self, i: usize) -> u64 {
        match i.checked_sub(1) {
            None => self.txid,
            Some(below) => self.levels[below].newest,
        }
    }

    fn next_running(&mut self, now_ms: i64, lease_due: i64) -> Next {
        let mut wake = now_ms + self.s.monitor_interval_ms.max(1);
        if let Some(due) = self.sync_due_ms() {
            if now_ms >= due {
                return Next::Run(if self.restart == Restart::Seen {
                    Action::SyncRestart
                } else {
                    Action::Sync
                });
            }
            // Pending: watch for a WAL restart, which makes the sync due at once.
            wake = wake.min(due).min(now_ms + self.s.wal_watch_ms.max(1));
        }
        for i in 0..self.levels.len() {
            let level = u8::try_from(i + 1)
                .unwrap_or(SNAPSHOT_LEVEL - 1)
                .min(SNAPSHOT_LEVEL - 1);
            let source = self.source_newest(i);
            let l = &self.levels[i];
            // No LIST while idle: a level runs only when something new can reach it.
            if source <= l.newest.max(l.idle_at_source) {
                continue;
            }
            let due = l.due_ms.max(l.retry.at_ms);
            if now_ms >= due {
                return Next::Run(Action::Compact {
                    level,
                    up_to_txid: source,
                    known_max_txid: l.newest,
                });
            }
            wake = wake.min(due);
        }
        if self.txid != self.snapshot_txid && self.txid > 0 {
            let due = self.snapshot_due_ms.max(self.snapshot_retry.at_ms);
            if now_ms >= due {
                return Next::Run(Action::Snapshot {
                    up_to_txid: self.txid,
                });
            }
            wake = wake.min(due);
        }
        if self.retention_due {
            if now_ms >= self.retention_retry.at_ms {
                return Next::Run(Action::Retention);
            }
            wake = wake.min(self.retention_retry.at_ms);
        } else if self.chain_check_due {
            // Retention's listing judges the chain too: one listing of every level, not two.
            return Next::Run(Action::CheckChain);
        }
        Next::Sleep {
            until_ms: wake.min(lease_due).max(now_ms + 1),
        }
    }

    /// Absorbs the outcome of `action`, performed at (or finished by) `now_ms`. Outcomes of
    /// actions the caller chose on its own (the simulator's forced syncs) are absorbed alike.
    pub fn done(&mut self, now_ms: i64, action: Action, outcome: Outcome) {
        if let Outcome::Failed(Failure::Permanent(why)) = &outcome {
            match action {
                // Nothing left to renew or release: the lease is someone else's now.
                Action::RenewLease => self.lease = None,
                Action::ReleaseLease => {
                    self.lease = None;
                    self.phase = Phase::Stopped;
                }
                _ => {}
            }
            if self.stopped_by.is_none() {
                self.stop(format!("{action}: {why}"));
            }
            return;
        }
        if outcome == Outcome::Failed(Failure::Gone) {
            self.phase = match self.phase {
                Phase::Running => Phase::Opening,
                // Nothing left to sync finally.
                Phase::Draining { .. } => Phase::Releasing,
                ref p => p.clone(),
            };
            self.opened = false;
            self.open = Retry {
                at_ms: now_ms,
                failures: 0,
            };
            return;
        }
        // The job stopped while this action ran (its lease was lost to another replicator
        // beside it): the outcome changes nothing; the release comes next.
        if self.stopped_by.is_some() && action != Action::ReleaseLease {
            return;
        }
        let failed = outcome == Outcome::Failed(Failure::Transient);
        match action {
            Action::Open => {
                if failed {
                    let cap = self.s.sync_interval_ms;
                    self.open = self.failed(self.open, now_ms, cap);
                } else if let Outcome::Opened {
                    txid,
                    shipped_full,
                    newest_full_ms,
                } = outcome
                {
                    self.open = Retry::default();
                    self.opened = true;
                    self.txid = txid;
                    // Whatever was committed while nobody watched is pending.
                    self.pending_since_ms = Some(now_ms);
                    self.sync.at_ms = now_ms;
                    // A full file shipped while opening counts: the whole database is not
                    // uploaded twice.
                    if shipped_full {
                        self.snapshot_txid = txid;
                        self.snapshot_due_ms = now_ms + self.s.snapshot_interval_ms;
                    } else {
                        self.snapshot_due_ms = newest_full_ms
                            .map_or(now_ms, |t| t.saturating_add(self.s.snapshot_interval_ms));
                    }
                    self.phase = match self.once_deadline_ms {
                        // One sync of everything pending, then what -once asks for.
                        Some(deadline_ms) => Phase::Draining { deadline_ms },
                        None => Phase::Running,
                    };
                }
            }
            Action::Sync | Action::SyncRestart => {
                let started_ms = self.sync_started_ms.take().unwrap_or(now_ms).min(now_ms);
                if failed {
                    // Capped at the sync interval: commits are pending (the RPO bound).
                    let cap = self.s.sync_interval_ms;
                    self.sync = self.failed(self.sync, now_ms, cap);
                } else if let Outcome::Synced {
                    txid,
                    shipped,
                    more,
                } = outcome
                {
                    self.sync = Retry::default();
                    self.txid = txid;
                    self.restart = match self.restart {
                        Restart::Seen if shipped => Restart::FollowUp,
                        _ => Restart::None,
                    };
                    if shipped {
                        self.last_upload_ms = now_ms;
                        self.last_ship_started_ms = started_ms;
                        // At most half the interval, so that one slow sync (a recovery's full
                        // compare) is forgotten within a few syncs.
                        let took = (now_ms - started_ms).min(self.s.sync_interval_ms / 2);
                        self.ship_ms_estimate =
                            took.max(self.ship_ms_estimate - self.ship_ms_estimate / 4);
                    }
                    if !more {
                        self.pending_since_ms = None;
                    }
                }
            }
            Action::Compact {
                level, up_to_txid, ..
            } => {
                let i = usize::from(level.max(1) - 1);
                let Some(interval) = self.s.levels_ms.get(i).copied() else {
                    return;
                };
                if failed {
                    let cap = self.s.backoff_max_ms.min(interval);
                    let retry = self.failed(self.levels[i].retry, now_ms, cap);
                    let l = &mut self.levels[i];
                    l.retry = retry;
                    if planted::active(Bug::CompactionNeverRetried) {
                        // The old rule: the attempt counts as a run, failed or not.
                        l.retry = Retry::default();
                        l.due_ms = align_next(now_ms, interval);
                        l.idle_at_source = up_to_txid;
                    }
                    return;
                }
                let Outcome::Compacted {
                    produced,
                    level_max_txid,
                } = outcome
                else {
                    return;
                };
                // A run that wrote nothing changed nothing to judge.
                self.chain_check_due |= produced.is_some();
                let l = &mut self.levels[i];
                l.retry = Retry::default();
                l.due_ms = align_next(now_ms, interval);
                // A capped run covers less than asked: the rest is still new.
                l.newest = l.newest.max(level_max_txid);
                if produced.is_none() {
                    l.idle_at_source = up_to_txid;
                }
                // Level-0 files become deletable once level 1 covers them.
                if produced.is_some() && level == 1 && self.s.retention_enabled {
                    self.retention_due = true;
                }
            }
            Action::Snapshot { up_to_txid } => {
                if failed {
                    let cap = self.s.backoff_max_ms.min(self.s.snapshot_interval_ms);
                    self.snapshot_retry = self.failed(self.snapshot_retry, now_ms, cap);
                } else {
                    self.snapshot_retry = Retry::default();
                    self.snapshot_txid = up_to_txid;
                    self.snapshot_due_ms = now_ms + self.s.snapshot_interval_ms;
                    if self.s.retention_enabled {
                        self.retention_due = true;
                    }
                    if let Phase::OnceTodo { todo, .. } = &mut self.phase {
                        todo.force_snapshot = false;
                    }
                }
            }
            Action::Retention => {
                if failed {
                    let cap = self.s.backoff_max_ms;
                    self.retention_retry = self.failed(self.retention_retry, now_ms, cap);
                } else {
                    self.retention_retry = Retry::default();
                    self.retention_due = false;
                    self.chain_check_due = false;
                    if let Phase::OnceTodo { todo, .. } = &mut self.phase {
                        todo.enforce_retention = false;
                    }
                }
            }
            Action::RenewLease => {
                let Some(mut l) = self.lease else { return };
                if failed {
                    // Well inside the lease, and no later than a sync would retry: once the
                    // lease has run out, uploads wait on it.
                    let cap = (l.ttl_ms / 6).min(self.s.sync_interval_ms).max(1);
                    l.retry = self.failed(l.retry, now_ms, cap);
                } else {
                    l.retry = Retry::default();
                    l.renew_at_ms = now_ms + l.ttl_ms / 3;
                }
                self.lease = Some(l);
            }
            Action::ReleaseLease => {
                // Released, or not (it then expires on its own): either way the job is over.
                self.lease = None;
                self.phase = Phase::Stopped;
            }
            // Judged, or not (a failed listing judges nothing): the next compaction asks again.
            Action::CheckChain => self.chain_check_due = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule {
            sync_interval_ms: 1_000,
            monitor_interval_ms: 1_000,
            levels_ms: vec![10_000, 40_000],
            snapshot_interval_ms: 100_000,
            ..Schedule::default()
        }
    }

    fn opened(s: &mut Scheduler, now: i64, txid: u64) {
        assert_eq!(s.next(now), Next::Run(Action::Open));
        s.done(
            now,
            Action::Open,
            Outcome::Opened {
                txid,
                shipped_full: true,
                newest_full_ms: Some(now),
            },
        );
    }

    fn synced(s: &mut Scheduler, now: i64, txid: u64) {
        assert_eq!(s.next(now), Next::Run(Action::Sync), "at {now}");
        s.done(
            now,
            Action::Sync,
            Outcome::Synced {
                txid,
                shipped: true,
                more: false,
            },
        );
    }

    /// When the scheduler runs its next sync, stepping through its sleeps from `now`.
    fn next_sync_at(s: &mut Scheduler, mut now: i64) -> i64 {
        for _ in 0..100_000 {
            match s.next(now) {
                Next::Run(Action::Sync | Action::SyncRestart) => return now,
                Next::Sleep { until_ms } => now = until_ms,
                other => panic!("{other:?} at {now}"),
            }
        }
        panic!("no sync by {now}");
    }

    #[test]
    fn syncs_once_per_interval_and_only_after_a_change() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        opened(&mut s, 0, 1);
        synced(&mut s, 0, 1);
        // Nothing changed: sleep until the monitor interval, no sync.
        assert_eq!(s.next(10), Next::Sleep { until_ms: 1_010 });
        s.observe_stamp(500, Some([1, 1, 1, 7]));
        // Changed, but the last upload is younger than the interval: the stamp is watched
        // meanwhile.
        assert_eq!(
            s.next(500),
            Next::Sleep {
                until_ms: 500 + WAL_WATCH_MS
            }
        );
        assert_eq!(s.next(999), Next::Sleep { until_ms: 1_000 });
        synced(&mut s, 1_000, 2);
        s.observe_stamp(1_200, Some([1, 1, 1, 7]));
        assert_eq!(
            s.next(1_200),
            Next::Sleep { until_ms: 2_200 },
            "same stamp: idle until the monitor interval"
        );
    }

    #[test]
    fn syncs_are_spaced_start_to_start_less_the_upload() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        opened(&mut s, 0, 1);
        let shipped = |txid| Outcome::Synced {
            txid,
            shipped: true,
            more: false,
        };
        // A sync that starts at 0 and takes 40 ms to upload.
        assert_eq!(s.next(0), Next::Run(Action::Sync));
        s.done(40, Action::Sync, shipped(2));
        // A commit made just after it read the WAL is on the replica by 1,000: the next sync
        // starts 40 ms early, at one interval from the last one's start.
        s.observe_stamp(41, Some([1, 1, 1, 7]));
        assert_eq!(next_sync_at(&mut s, 41), 960);
        // A store that takes longer than half the interval: syncs at most twice an interval.
        s.done(1_660, Action::Sync, shipped(3));
        s.observe_stamp(1_661, Some([2, 1, 1, 7]));
        assert_eq!(next_sync_at(&mut s, 1_661), 1_661, "due at 960 + 500");
        // A slow upload is remembered beyond the next fast ones: the estimate (500, capped)
        // loses a quarter a sync.
        s.done(1_671, Action::Sync, shipped(4));
        s.observe_stamp(1_672, Some([3, 1, 1, 7]));
        assert_eq!(next_sync_at(&mut s, 1_672), 1_661 + 1_000 - 375);
        s.done(2_296, Action::Sync, shipped(5));
        s.observe_stamp(2_297, Some([4, 1, 1, 7]));
        assert_eq!(next_sync_at(&mut s, 2_297), 2_286 + 1_000 - 282);
    }

    #[test]
    fn a_wal_restart_is_synced_at_once_then_once_more_soon_after() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        opened(&mut s, 0, 1);
        synced(&mut s, 0, 1);
        s.observe_stamp(100, Some([8_192, 1, 4_096, 7]));
        synced(&mut s, 1_000, 2);
        // Writes within the generation wait for the interval.
        s.observe_stamp(1_100, Some([12_288, 2, 4_096, 7]));
        assert!(matches!(s.next(1_100), Next::Sleep { .. }));
        // The WAL restarted (a new generation over the old file): the old tail is being
        // overwritten, so its sync is due now, 110 ms after the last upload.
        s.observe_stamp(1_110, Some([12_288, 3, 8_192, 9]));
        if planted::active(Bug::RestartNoticedLate) {
            assert!(matches!(s.next(1_110), Next::Sleep { .. }));
            return;
        }
        assert_eq!(s.next(1_110), Next::Run(Action::SyncRestart));
        let shipped = Outcome::Synced {
            txid: 3,
            shipped: true,
            more: false,
        };
        s.done(1_110, Action::SyncRestart, shipped.clone());
        // One more sync soon after, at the first change from then on.
        s.observe_stamp(1_115, Some([16_384, 4, 8_192, 9]));
        assert_eq!(next_sync_at(&mut s, 1_115), 1_110 + RESTART_FOLLOW_UP_MS);
        let follow_up = 1_110 + RESTART_FOLLOW_UP_MS;
        synced(&mut s, follow_up, 4);
        // Then the generation is an ordinary one again.
        s.observe_stamp(follow_up + 10, Some([20_480, 5, 8_192, 9]));
        assert_eq!(next_sync_at(&mut s, follow_up + 10), follow_up + 1_000);
    }

    #[test]
    fn a_restart_after_a_long_generation_waits_for_the_interval() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        opened(&mut s, 0, 1);
        synced(&mut s, 0, 1);
        // A generation seen from 100 to 3,200: longer than three intervals.
        s.observe_stamp(100, Some([8_192, 1, 4_096, 7]));
        synced(&mut s, 1_000, 2);
        s.observe_stamp(2_000, Some([12_288, 2, 4_096, 7]));
        synced(&mut s, 2_000, 3);
        s.observe_stamp(3_000, Some([16_384, 3, 4_096, 7]));
        synced(&mut s, 3_000, 4);
        s.observe_stamp(3_200, Some([16_384, 4, 8_192, 9]));
        // The new generation needs seconds to reach the old tail: the next sync at the
        // interval reads it first, and no PUT is spent on the restart.
        assert_eq!(next_sync_at(&mut s, 3_200), 4_000);
        synced(&mut s, 4_000, 5);
        // A generation of 0.9 s (from 3,200) is short: its end is synced at once.
        s.observe_stamp(4_100, Some([16_384, 5, 8_192, 11]));
        assert_eq!(s.next(4_100), Next::Run(Action::SyncRestart));
    }

    #[test]
    fn a_restart_whose_tail_was_already_gone_waits_for_the_interval() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        opened(&mut s, 0, 1);
        s.observe_stamp(0, Some([8_192, 1, 4_096, 7]));
        synced(&mut s, 0, 1);
        s.observe_stamp(300, Some([8_192, 2, 4_096, 9]));
        if planted::active(Bug::RestartNoticedLate) {
            return;
        }
        assert_eq!(s.next(300), Next::Run(Action::SyncRestart));
        // The engine shipped nothing: the changes stay pending, no follow-up.
        s.done(
            300,
            Action::SyncRestart,
            Outcome::Synced {
                txid: 1,
                shipped: false,
                more: true,
            },
        );
        assert_eq!(next_sync_at(&mut s, 301), 1_000);
        assert_eq!(s.next(1_000), Next::Run(Action::Sync));
    }

    #[test]
    fn no_rush_after_a_wal_that_was_missing_or_truncated() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        opened(&mut s, 0, 1);
        s.observe_stamp(0, Some([0, 0, 4_096, 0]));
        synced(&mut s, 0, 1);
        // A WAL appears: no old generation's tail to rescue, the interval holds.
        s.observe_stamp(100, Some([8_192, 1, 4_096, 7]));
        assert_eq!(
            s.next(100),
            Next::Sleep {
                until_ms: 100 + WAL_WATCH_MS
            }
        );
    }

    #[test]
    fn a_restart_during_an_outage_waits_for_the_retry() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        opened(&mut s, 0, 1);
        s.observe_stamp(0, Some([8_192, 1, 4_096, 7]));
        assert_eq!(s.next(0), Next::Run(Action::Sync));
        s.done(0, Action::Sync, Outcome::Failed(Failure::Transient));
        s.observe_stamp(1, Some([8_192, 2, 4_096, 9]));
        assert!(
            matches!(s.next(1), Next::Sleep { .. }),
            "the store's backoff still holds"
        );
        assert_eq!(
            s.next(next_sync_at(&mut s.clone(), 1)),
            Next::Run(if planted::active(Bug::RestartNoticedLate) {
                Action::Sync
            } else {
                Action::SyncRestart
            })
        );
    }

    #[test]
    fn notifications_matter_only_until_a_change_is_pending() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        opened(&mut s, 0, 1);
        synced(&mut s, 0, 1);
        assert!(
            s.wants_notifications(),
            "idle: a notification is the news of a change"
        );
        s.observe_stamp(300, Some([1, 1, 1, 0]));
        assert!(
            !s.wants_notifications(),
            "pending: more changes move nothing"
        );
        s.observe_stamp(600, Some([2, 2, 2, 0]));
        assert_eq!(
            s.next(999),
            Next::Sleep { until_ms: 1_000 },
            "a later change (no restart) does not move the sync"
        );
        synced(&mut s, 1_000, 2);
        assert!(s.wants_notifications(), "shipped: listening again");
    }

    #[test]
    fn sync_retries_are_capped_at_the_interval_whatever_the_outage() {
        let no_levels = Schedule {
            levels_ms: Vec::new(),
            ..schedule()
        };
        let mut s = Scheduler::new(no_levels, 7, 0);
        opened(&mut s, 0, 1);
        let mut now = 0;
        for _ in 0..40 {
            assert_eq!(s.next(now), Next::Run(Action::Sync));
            s.done(now, Action::Sync, Outcome::Failed(Failure::Transient));
            let retry = next_sync_at(&mut s, now + 1);
            assert!(
                retry > now && retry <= now + 1_000,
                "retry {retry} after a failure at {now}"
            );
            now = retry;
        }
    }

    #[test]
    fn retries_are_jittered_per_seed() {
        let delays = |seed: u64| {
            let mut s = Scheduler::new(schedule(), seed, 0);
            opened(&mut s, 0, 1);
            (0..6)
                .map(|_| {
                    s.done(0, Action::Sync, Outcome::Failed(Failure::Transient));
                    next_sync_at(&mut s.clone(), 1)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(delays(3), delays(3), "the seed decides");
        assert_ne!(delays(3), delays(4), "two jobs do not retry in lockstep");
    }

    #[test]
    fn open_retries_are_capped_at_the_interval_and_permanent_errors_stop_the_job() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        let mut now = 0;
        for _ in 0..20 {
            assert_eq!(s.next(now), Next::Run(Action::Open));
            s.done(now, Action::Open, Outcome::Failed(Failure::Transient));
            let Next::Sleep { until_ms } = s.next(now) else {
                panic!("must wait");
            };
            assert!(until_ms <= now + 1_000);
            now = until_ms;
        }
        s.done(
            now,
            Action::Open,
            Outcome::Failed(Failure::Permanent("page size".into())),
        );
        assert_eq!(s.next(now), Next::Exit);
        assert_eq!(s.stopped_by(), Some("open: page size"));
    }

    #[test]
    fn a_database_gone_while_running_is_waited_for_and_opened_again() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        opened(&mut s, 0, 1);
        s.observe_stamp(500, Some([1, 1, 1, 0]));
        synced(&mut s, 1_000, 1);
        // The file is gone: its stamp is none.
        s.observe_stamp(4_500, None);
        assert_eq!(s.next(5_000), Next::Run(Action::Sync));
        s.done(5_000, Action::Sync, Outcome::Failed(Failure::Gone));
        assert!(!s.is_open());
        // Back to opening at once; a missing file is retried as any failed open.
        assert_eq!(s.next(5_000), Next::Run(Action::Open));
        s.done(5_000, Action::Open, Outcome::Failed(Failure::Transient));
        assert!(matches!(s.next(5_000), Next::Sleep { .. }));
        opened(&mut s, 6_000, 5);
        assert!(s.is_open());
        // Gone while draining: nothing left to sync finally.
        s.shutdown(7_000);
        s.done(7_000, Action::Sync, Outcome::Failed(Failure::Gone));
        assert_eq!(s.next(7_000), Next::Exit);
    }

    #[test]
    fn a_failed_compaction_is_retried_while_idle() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        opened(&mut s, 0, 1);
        synced(&mut s, 0, 5);
        let compact = Action::Compact {
            level: 1,
            up_to_txid: 5,
            known_max_txid: 0,
        };
        assert_eq!(s.next(10_000), Next::Run(compact));
        s.done(10_000, compact, Outcome::Failed(Failure::Transient));
        // No new writes; the level is retried before its next interval ends.
        let mut now = 10_000;
        let retried = loop {
            match s.next(now) {
                Next::Run(a @ Action::Compact { .. }) => break Some((now, a)),
                Next::Run(a) => panic!("{a}"),
                Next::Sleep { until_ms } if until_ms <= 20_000 => now = until_ms,
                _ => break None,
            }
        };
        let (at, a) = retried.expect("retried while idle");
        assert!(at < 20_000 && a == compact);
        // A capped run: level 1 reaches 3 of 5 and runs again at its next interval.
        s.done(
            at,
            compact,
            Outcome::Compacted {
                produced: Some(3),
                level_max_txid: 3,
            },
        );
        // Then retention, and level 2 (from level 1's 3) at its own interval.
        assert_eq!(s.next(at), Next::Run(Action::Retention));
        s.done(at, Action::Retention, Outcome::Retained);
        let again = Action::Compact {
            level: 1,
            up_to_txid: 5,
            known_max_txid: 3,
        };
        assert_eq!(s.next(20_000), Next::Run(again));
        s.done(
            20_000,
            again,
            Outcome::Compacted {
                produced: Some(5),
                level_max_txid: 5,
            },
        );
        s.done(20_000, Action::Retention, Outcome::Retained);
        assert_eq!(
            s.next(40_000),
            Next::Run(Action::Compact {
                level: 2,
                up_to_txid: 5,
                known_max_txid: 0,
            })
        );
    }

    #[test]
    fn idle_levels_and_snapshots_do_nothing() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        opened(&mut s, 0, 3);
        synced(&mut s, 0, 3);
        let c = Action::Compact {
            level: 1,
            up_to_txid: 3,
            known_max_txid: 0,
        };
        assert_eq!(s.next(10_000), Next::Run(c));
        s.done(
            10_000,
            c,
            Outcome::Compacted {
                produced: None,
                level_max_txid: 0,
            },
        );
        for t in (10_001..400_000).step_by(997) {
            assert!(matches!(s.next(t), Next::Sleep { .. }), "at {t}");
        }
    }

    #[test]
    fn the_chain_is_judged_once_after_a_compaction_by_retention_or_alone() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        opened(&mut s, 0, 3);
        synced(&mut s, 0, 3);
        let compacted = |level, up_to_txid| {
            (
                Action::Compact {
                    level,
                    up_to_txid,
                    known_max_txid: 0,
                },
                Outcome::Compacted {
                    produced: Some(up_to_txid),
                    level_max_txid: up_to_txid,
                },
            )
        };
        // Level 1 wrote a file: retention follows, and judges the chain from its listing.
        let (c, o) = compacted(1, 3);
        assert_eq!(s.next(10_000), Next::Run(c));
        s.done(10_000, c, o);
        assert_eq!(s.next(10_000), Next::Run(Action::Retention));
        s.done(10_000, Action::Retention, Outcome::Retained);
        assert!(matches!(s.next(10_000), Next::Sleep { .. }));
        // Level 2 wrote one: no retention follows it, so the chain is judged alone, once.
        let (c, o) = compacted(2, 3);
        assert_eq!(s.next(40_000), Next::Run(c));
        s.done(40_000, c, o);
        assert_eq!(s.next(40_000), Next::Run(Action::CheckChain));
        s.done(40_000, Action::CheckChain, Outcome::Checked);
        assert!(matches!(s.next(40_000), Next::Sleep { .. }));
    }

    #[test]
    fn snapshots_follow_the_newest_full_file() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        assert_eq!(s.next(0), Next::Run(Action::Open));
        s.done(
            0,
            Action::Open,
            Outcome::Opened {
                txid: 9,
                shipped_full: false,
                newest_full_ms: Some(-50_000),
            },
        );
        synced(&mut s, 0, 9);
        let snap = Action::Snapshot { up_to_txid: 9 };
        let mut now = 1;
        while now < 50_000 {
            match s.next(now) {
                Next::Run(a @ Action::Compact { .. }) => {
                    s.done(
                        now,
                        a,
                        Outcome::Compacted {
                            produced: None,
                            level_max_txid: 0,
                        },
                    );
                }
                Next::Run(a) => panic!("{a} at {now}"),
                Next::Sleep { until_ms } => now = until_ms,
                Next::Exit => panic!("exit"),
            }
        }
        assert_eq!(s.next(50_000), Next::Run(snap));
        s.done(50_000, snap, Outcome::Failed(Failure::Transient));
        let Next::Sleep { until_ms } = s.next(50_000) else {
            panic!("retry waits")
        };
        assert!(until_ms <= 50_000 + 30_000);
    }

    #[test]
    fn lease_is_renewed_every_third_and_retried_on_failure() {
        let mut s = Scheduler::new(schedule(), 1, 0).with_lease(9_000, 0);
        opened(&mut s, 0, 1);
        synced(&mut s, 0, 1);
        assert_eq!(s.next(2_999).clone(), Next::Sleep { until_ms: 3_000 });
        assert_eq!(s.next(3_000), Next::Run(Action::RenewLease));
        s.done(
            3_000,
            Action::RenewLease,
            Outcome::Failed(Failure::Transient),
        );
        let Next::Sleep { until_ms } = s.next(3_000) else {
            panic!()
        };
        assert!(until_ms <= 3_000 + 1_500, "retried well inside the lease");
        assert_eq!(s.next(until_ms), Next::Run(Action::RenewLease));
        s.done(until_ms, Action::RenewLease, Outcome::Renewed);
        let at = until_ms + 3_000;
        assert_eq!(s.next(at), Next::Run(Action::RenewLease));
        s.done(
            at,
            Action::RenewLease,
            Outcome::Failed(Failure::Permanent("taken over by pid 9".into())),
        );
        // Lost: no renewal again, nothing to release, the job ends.
        assert_eq!(s.next(at), Next::Exit);
        assert!(s.stopped_by().is_some_and(|w| w.contains("pid 9")));
    }

    #[test]
    fn renewals_beside_a_long_action_move_the_next_one() {
        let mut s = Scheduler::new(schedule(), 1, 0).with_lease(9_000, 0);
        assert_eq!(s.renewal_due_ms(), Some(3_000));
        // The open runs from 0 past 6,000 (a large first snapshot): renewed beside it at 3,000
        // and, after a failure at 6,000, at the retry.
        assert_eq!(s.next(0), Next::Run(Action::Open));
        s.done(3_000, Action::RenewLease, Outcome::Renewed);
        assert_eq!(s.renewal_due_ms(), Some(6_000));
        s.done(
            6_000,
            Action::RenewLease,
            Outcome::Failed(Failure::Transient),
        );
        let retry = s.renewal_due_ms().expect("still held");
        assert!(
            (6_001..=7_500).contains(&retry),
            "retried well inside: {retry}"
        );
        s.done(retry, Action::RenewLease, Outcome::Renewed);
        let end = retry + 1;
        s.done(
            end,
            Action::Open,
            Outcome::Opened {
                txid: 1,
                shipped_full: true,
                newest_full_ms: None,
            },
        );
        assert_eq!(s.renewal_due_ms(), Some(retry + 3_000));
        assert_eq!(s.next(end), Next::Run(Action::Sync), "the open counted");
    }

    #[test]
    fn a_lease_lost_beside_an_action_stops_the_job_when_it_ends() {
        let mut s = Scheduler::new(schedule(), 1, 0).with_lease(9_000, 0);
        assert_eq!(s.next(0), Next::Run(Action::Open));
        s.done(
            3_000,
            Action::RenewLease,
            Outcome::Failed(Failure::Permanent("taken over by pid 9".into())),
        );
        assert_eq!(s.renewal_due_ms(), None, "nothing left to renew");
        // The open finishing afterwards must not start the job running again.
        s.done(
            4_000,
            Action::Open,
            Outcome::Opened {
                txid: 1,
                shipped_full: true,
                newest_full_ms: None,
            },
        );
        assert_eq!(s.next(4_000), Next::Exit);
        assert!(s.stopped_by().is_some_and(|w| w.contains("pid 9")));
    }

    #[test]
    fn shutdown_syncs_until_nothing_is_pending_then_releases() {
        let mut s = Scheduler::new(schedule(), 1, 0).with_lease(30_000, 0);
        opened(&mut s, 0, 1);
        synced(&mut s, 0, 1);
        // The last upload was just now, and the stamp is unchanged: the final sync runs anyway.
        s.shutdown(100);
        assert_eq!(s.next(100), Next::Run(Action::Sync));
        s.done(
            100,
            Action::Sync,
            Outcome::Synced {
                txid: 2,
                shipped: true,
                more: true,
            },
        );
        assert_eq!(s.next(101), Next::Run(Action::Sync), "a backlog remains");
        s.done(
            101,
            Action::Sync,
            Outcome::Synced {
                txid: 3,
                shipped: true,
                more: false,
            },
        );
        assert_eq!(s.next(102), Next::Run(Action::ReleaseLease));
        s.done(102, Action::ReleaseLease, Outcome::Released);
        assert_eq!(s.next(103), Next::Exit);
        assert!(s.drained());
    }

    #[test]
    fn shutdown_gives_up_at_the_deadline() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        opened(&mut s, 0, 1);
        s.shutdown(0);
        let mut now = 0;
        loop {
            match s.next(now) {
                Next::Run(Action::Sync) => {
                    s.done(now, Action::Sync, Outcome::Failed(Failure::Transient));
                }
                Next::Sleep { until_ms } => now = until_ms,
                Next::Exit => break,
                Next::Run(a) => panic!("{a}"),
            }
            assert!(now <= 30_000 + 1_000, "past the deadline: {now}");
        }
        assert!(!s.drained());
    }

    #[test]
    fn shutdown_before_the_engine_opened_exits() {
        let mut s = Scheduler::new(schedule(), 1, 0);
        s.done(0, Action::Open, Outcome::Failed(Failure::Transient));
        s.shutdown(1);
        assert_eq!(s.next(1), Next::Exit);
        assert!(!s.is_open());
    }

    #[test]
    fn once_syncs_then_snapshots_and_applies_retention_then_stops() {
        let once = Schedule {
            once: Some(Once {
                force_snapshot: true,
                enforce_retention: true,
            }),
            ..schedule()
        };
        let mut s = Scheduler::new(once, 1, 0);
        opened(&mut s, 0, 3);
        synced(&mut s, 1, 4);
        assert_eq!(s.next(2), Next::Run(Action::Snapshot { up_to_txid: 4 }));
        s.done(2, Action::Snapshot { up_to_txid: 4 }, Outcome::Snapshotted);
        assert_eq!(s.next(3), Next::Run(Action::Retention));
        s.done(3, Action::Retention, Outcome::Retained);
        assert_eq!(s.next(4), Next::Exit);
        assert!(s.drained());
    }

    #[test]
    fn once_gives_up_at_the_shutdown_sync_timeout() {
        let once = Schedule {
            once: Some(Once::default()),
            shutdown_sync_timeout_ms: 5_000,
            ..schedule()
        };
        let mut s = Scheduler::new(once, 1, 0);
        opened(&mut s, 0, 3);
        let mut now = 0;
        loop {
            match s.next(now) {
                Next::Run(Action::Sync) => {
                    s.done(now, Action::Sync, Outcome::Failed(Failure::Transient))
                }
                Next::Sleep { until_ms } => now = until_ms,
                Next::Exit => break,
                other => panic!("unexpected {other:?} at {now}"),
            }
        }
        assert!(!s.drained(), "a sync that never succeeded is not drained");
        assert!((5_000..6_000).contains(&now), "gave up at {now}");
        // Nor does a replica that never opens keep a one-shot run alive.
        let mut s = Scheduler::new(
            Schedule {
                once: Some(Once::default()),
                shutdown_sync_timeout_ms: 5_000,
                ..schedule()
            },
            1,
            0,
        );
        let mut now = 0;
        loop {
            match s.next(now) {
                Next::Run(Action::Open) => {
                    s.done(now, Action::Open, Outcome::Failed(Failure::Transient))
                }
                Next::Sleep { until_ms } => now = until_ms,
                Next::Exit => break,
                other => panic!("unexpected {other:?} at {now}"),
            }
        }
        assert!(s.stopped_by().is_some_and(|w| w.contains("-once")));
    }
}
