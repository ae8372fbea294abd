//! One simulated run: a seeded workload, the real driver and engine, faults, restores and the
//! checks.
//!
//! Each simulated host runs production's `replicate::Driver`: its scheduler decides every
//! action (open, sync, compaction, snapshots, retention, the lease's renewals, the final sync)
//! and the simulator performs them on simulated time, waking the host exactly when its
//! scheduler asked to. The engine reaches the simulated disk through `SimFiles`, its own SQLite
//! connection through the simulated VFS, the store through `FaultyStore` (and, with a lease,
//! production's `FencedStore` on the simulated clock). The simulator holds the world, the
//! faults and the checkers; it has no scheduling rule of its own.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::{Connection, OpenFlags};
use sluice_core::checksum::Hasher;
use sluice_core::engine::{CheckpointPolicy, EngineConfig};
use sluice_core::lease::{FencedStore, Holder, Lease, LeaseError};
use sluice_core::replica::{Layout, Replica};
use sluice_core::replicate::{Driver, Job, JobStatus, Schedule};
use sluice_core::restore::{self, Fetched, Target};
use sluice_core::scheduler::{Action, Failure, Next, Outcome};
use sluice_core::store::{DynStore, MemStore, ObjectStore, StoreErrorKind};

use crate::faulty::FaultyStore;
use crate::files::{self, SimClock, SimDb, SimFs};
pub use crate::knobs::Knobs;
use crate::oracle::{self, Changes, PageDigest, WalFeed};
use crate::plan::{CheckpointMode, Scenario, Step};
use crate::vfs::{self, Proc};
use sluice_core::place;

mod check_compaction;
mod check_heals;
mod check_history;
mod check_pitr;
mod check_progress;
mod check_restore;
mod check_terms;
mod check_verify;
mod hosts;
mod workload;

use check_compaction::check_compaction_catches_up;
use check_history::check_history;
use check_pitr::check_point_in_time;
use check_verify::check_verify;

pub const DB: &str = "/sim/app.db";
/// The recovery point objective the checker holds the engine to.
pub const RPO_MS: i64 = 1000;
/// After a partition ends, commits made before its end must be acknowledged within the sync
/// interval plus this (one upload, and the simulator's step between two wakes).
pub const POST_HEAL_SLACK_MS: i64 = 300;
/// The most actions one host performs at one simulated instant (a scheduler that kept
/// answering "now" would be a bug; this bounds the damage).
const ACTIONS_PER_WAKE_MAX: u32 = 64;

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub log: Vec<String>,
    pub failures: Vec<String>,
    pub commits: usize,
    pub restores: u32,
    pub worst_lag_ms: i64,
    /// The longest time commits made before a partition's end waited after it (see
    /// [`POST_HEAL_SLACK_MS`]), over the heals the checker could judge.
    pub post_heal_lag_ms_max: i64,
    pub lost_commits_max: usize,
    /// Files shipped after comparing the whole database, because WAL continuity could not be
    /// proven (each reads every page).
    pub resyncs: u64,
    /// The longest a commit made while nothing disturbed the replicator waited for the sync
    /// that acknowledged it (see [`crate::plan::Expect::commit_lag_max_ms`]).
    pub commit_lag_ms_max: i64,
    /// Lag of each checked restore, in ms, for the histogram.
    pub lags_ms: Vec<i64>,
    /// The scenario file the run used, for the replay line.
    pub scenario: Option<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// CRC-64 of the event log: two runs of one seed must agree.
    pub fn log_hash(&self) -> u64 {
        let mut h = Hasher::new();
        for line in &self.log {
            h.update(line.as_bytes());
            h.update(b"\n");
        }
        h.finish_flagged()
    }

    pub fn replay_line(&self) -> String {
        let mut line = format!(
            "cargo run --release -p sluice-sim -- run --seed {}",
            self.seed
        );
        if let Some(path) = &self.scenario {
            line.push_str(&format!(" --scenario {path}"));
        }
        line
    }
}

#[derive(Clone)]
struct Commit {
    time_ms: i64,
    hash: u64,
    /// The image itself, kept only with `SLUICE_SIM_KEEP_IMAGES=1` (for diagnosing failures).
    image: Option<Vec<u8>>,
}

/// The commits a replaced host made after commit `base`, which its successor restored.
struct Abandoned {
    base: usize,
    commits: Vec<Commit>,
}

struct World {
    rng: ChaCha8Rng,
    knobs: Knobs,
    rt: tokio::runtime::Runtime,
    app: Option<Connection>,
    /// The application's second connection (`two_connections`).
    other: Option<Connection>,
    /// The replicator process of the current host (`sluice replicate`), if it runs.
    host: Option<Host>,
    /// When the replicator (re)starts, if it is down: the orchestrator's restart.
    host_start_at: i64,
    /// Hosts started so far (names each one's lease holder).
    hosts_started: u64,
    mem: MemStore,
    store: Arc<FaultyStore<MemStore>>,
    commits: Vec<Commit>,
    /// Commits (count) the store acknowledged.
    acked: usize,
    last_restored: usize,
    /// Digests of restored images that passed `integrity_check` (the same bytes get the same
    /// verdict, so a restore of an image already checked is not checked again).
    intact: std::collections::HashSet<u64>,
    /// Last time something could delay replication (engine start, injected fault, partition).
    disturbed_ms: i64,
    report: Report,
    next_row: u64,
    /// The application's committed pages, fed by its WAL hook.
    feed: Arc<std::sync::Mutex<WalFeed>>,
    /// The digest of the last committed state, kept page by page.
    digest: PageDigest,
    /// Where compaction and snapshots download large inputs: the simulated disk.
    scratch: Arc<files::SimScratch>,
    /// The stream `Knobs::draw_later` drew from, for those knobs' events.
    extra: ChaCha8Rng,
    /// The stream `Knobs::draw_restore` drew from, for the restore's crash points.
    restore_rng: ChaCha8Rng,
    /// A replaced host's stalled uploads and when they land, with its lease and fenced store.
    zombie: Option<Zombie>,
    /// Every host's lease term, for the overlap check.
    terms: Vec<check_terms::Term>,
    /// Commits lost with a replaced host: real states (they were committed), which a zombie's
    /// upload may still put in the replica.
    abandoned: Vec<Abandoned>,
    /// The commit a new host restored, after the latest replacement.
    replaced_at: Option<usize>,
    /// Every partition of the run, `[start, end)`, and the heals the RPO checker follows.
    partitions: Vec<(i64, i64)>,
    heals: Vec<Heal>,
    /// The replicator's current run of failed actions with a healthy store.
    streak: check_progress::Streak,
}

/// One replicator process: production's driver, and the fenced store it writes through.
struct Host {
    driver: Driver,
    store: DynStore,
    /// When the driver asked to be woken.
    wake_at: i64,
    /// Increments each time this host is (re)started, so heals can tell restarts apart.
    generation: u64,
}

/// A replaced host that stalled in the middle of an upload: its engine prepared the file
/// (production's `Engine::prepare`), its fenced store let the put through, and the put waits
/// at the simulated store's gate until the zombie wakes.
struct Zombie {
    wake_at: i64,
    generation: u64,
    file: sluice_core::replica::FileInfo,
    put: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), sluice_core::store::StoreError>>>,
    >,
    gate: tokio::sync::oneshot::Sender<()>,
    lease: Option<Lease>,
    store: DynStore,
}

/// A partition that ended: commits made before `at` must be acknowledged within the bound.
struct Heal {
    at: i64,
    /// Commits made before the partition ended.
    need: usize,
    injected: u64,
    generation: Option<u64>,
}

/// Why a simulated restore gave no image.
enum NoImage {
    /// Nothing was ever replicated.
    ReplicaEmpty,
    Failed(String),
}

impl std::fmt::Display for NoImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoImage::ReplicaEmpty => f.write_str("the replica is empty"),
            NoImage::Failed(e) => f.write_str(e),
        }
    }
}

/// The WAL's first frames as (salt-1, page number, commit size), for trace logs.
fn wal_summary() -> Vec<(u32, u32, u32)> {
    vfs::with(|s| {
        let name = format!("{DB}-wal");
        let mut h = [0u8; 32];
        s.disk.read(&name, 0, &mut h);
        let ps = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let len = s.disk.len(&name).unwrap_or(0);
        let mut out = Vec::new();
        let mut at = 32;
        while ps > 0 && at + 24 + ps <= len && out.len() < 40 {
            let mut f = [0u8; 24];
            s.disk.read(&name, at, &mut f);
            out.push((
                u32::from_be_bytes([f[8], f[9], f[10], f[11]]),
                u32::from_be_bytes([f[0], f[1], f[2], f[3]]),
                u32::from_be_bytes([f[4], f[5], f[6], f[7]]),
            ));
            at += 24 + ps;
        }
        out
    })
}

/// The 1-based pages where two images differ.
fn diff_pages(a: &[u8], b: &[u8], page_size: usize) -> Vec<usize> {
    let n = a.len().max(b.len()).div_ceil(page_size);
    (0..n)
        .filter(|p| {
            a.get(p * page_size..(p + 1) * page_size) != b.get(p * page_size..(p + 1) * page_size)
        })
        .map(|p| p + 1)
        .collect()
}

impl World {
    fn now(&self) -> i64 {
        vfs::with(|s| s.now_ms)
    }

    fn log(&mut self, event: impl AsRef<str>) {
        let line = format!("{:>8} {}", self.now(), event.as_ref());
        self.report.log.push(line);
    }

    fn fail(&mut self, what: impl Into<String>) {
        let what = what.into();
        self.log(format!("FAIL {what}"));
        self.report.failures.push(what);
    }

    /// Runs one step of a plan (the seed's own events go through here too).
    fn exec(&mut self, step: &Step) {
        match *step {
            Step::Repeat { times, ref steps } => {
                for _ in 0..times {
                    for s in steps {
                        if !self.report.failures.is_empty() {
                            return;
                        }
                        self.exec(s);
                        self.drive();
                    }
                }
            }
            Step::Wait(ms) => self.advance(ms),
            Step::Txn {
                ops,
                sync_midway,
                rollback,
            } => self.transaction(ops.max(1), sync_midway, rollback),
            Step::TxnDuringSync { ops, at_read } => {
                self.transaction_during_sync(ops.max(1), at_read);
            }
            Step::TxnDuringStart { ops, at_read } => {
                self.transaction_during_start(ops.max(1), at_read);
            }
            Step::StormDuringStartUpload { ops } => self.storm_during_start_upload(ops.max(1)),
            Step::Vacuum => self.app_vacuum(),
            Step::Checkpoint(mode) => self.app_checkpoint(mode),
            Step::Reconnect => self.app_reconnect(),
            Step::Sync => self.engine_sync(),
            Step::Compact => self.force(|txid| Action::Compact {
                level: 1,
                up_to_txid: txid,
                known_max_txid: 0,
            }),
            Step::Snapshot => self.force(|txid| Action::Snapshot { up_to_txid: txid }),
            Step::GracefulStop => self.graceful_stop(),
            Step::EngineCrash => {
                if self.host.is_some() {
                    self.crash_engine();
                    self.check_restore("engine-crash");
                }
            }
            Step::PowerLoss => {
                self.power_loss();
                self.check_restore("power-loss");
            }
            Step::ReplaceHost => {
                self.check_restore("host-replacement");
                self.replace_host(None);
            }
            Step::ZombieReplaceHost(wake_ms) => {
                self.check_restore("host-replacement");
                self.replace_host(Some(wake_ms));
            }
            Step::Partition(ms) => {
                let now = self.now();
                self.store.add_partition(now, now + ms.max(0));
                self.partitions.push((now, now + ms.max(0)));
                self.disturbed_ms = self.disturbed_ms.max(now + ms.max(0));
                self.log(format!("partition for {ms}ms"));
            }
            Step::FailNext {
                requests,
                ambiguous,
            } => {
                self.store.fail_next(requests, ambiguous);
                self.log(format!(
                    "store fail-next {requests}{}",
                    if ambiguous { " ambiguous" } else { "" }
                ));
            }
        }
    }

    /// Runs an action the plan asks for outside the schedule (its outcome still reaches the
    /// scheduler), at the TXID the scheduler knows.
    fn force(&mut self, action: impl FnOnce(u64) -> Action) {
        let Some(txid) = self
            .host
            .as_ref()
            .filter(|h| h.driver.engine().is_some())
            .map(|h| h.driver.scheduler().txid())
        else {
            return;
        };
        if txid > 0 {
            self.act(action(txid));
        }
    }

    /// After each step: a zombie wakes when due, the replicator starts when due, heals are
    /// registered, and the host does what its scheduler says is due now.
    fn drive(&mut self) {
        if self
            .zombie
            .as_ref()
            .is_some_and(|z| self.now() >= z.wake_at)
        {
            self.zombie_wakes();
        }
        if self.host.is_none() && self.now() >= self.host_start_at {
            self.spawn_host();
        }
        self.register_heals();
        self.host_wake();
        self.judge_heals();
    }

    /// Moves simulated time forward by `ms`, waking the host whenever its scheduler asked to
    /// be woken on the way (a real process sleeps until then, not longer).
    fn advance(&mut self, ms: i64) {
        let target = self.now() + ms.max(0);
        for _ in 0..100_000 {
            let wake = self
                .host
                .as_ref()
                .map_or(self.host_start_at, |h| h.wake_at)
                .max(self.now() + 1);
            if wake > target {
                break;
            }
            vfs::with(|s| s.now_ms = wake);
            self.drive();
            if !self.report.failures.is_empty() {
                break;
            }
        }
        vfs::with(|s| s.now_ms = s.now_ms.max(target));
    }
}

/// Runs one seed.
pub fn run(seed: u64, transactions: u32) -> Report {
    run_scenario(seed, transactions, &Scenario::default(), None)
}

/// Runs one seed under a scenario (knob overrides, and a plan that replaces the seed's random
/// events). `scenario_path` goes into the replay line.
pub fn run_scenario(
    seed: u64,
    transactions: u32,
    scenario: &Scenario,
    scenario_path: Option<&str>,
) -> Report {
    let _guard = vfs::RUN_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let transactions = scenario.transactions.unwrap_or(transactions);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut drawn = Knobs::draw(&mut rng, transactions);
    let mut extra = ChaCha8Rng::seed_from_u64(seed ^ 0x5a4d_b1e5_0000_0001);
    drawn.draw_later(&mut extra);
    let mut restore_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5a4d_b1e5_0000_0002);
    drawn.draw_restore(&mut restore_rng);
    drawn.draw_scratch(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5a4d_b1e5_0000_0003));
    let knobs = match scenario.knobs_for(&drawn) {
        Ok(k) => k,
        Err(e) => {
            return Report {
                seed,
                failures: vec![format!("scenario: {e}")],
                ..Report::default()
            };
        }
    };
    vfs::begin_run(rng.random(), 1_700_000_000_000);
    let mem = MemStore::new();
    let start = vfs::with(|s| s.now_ms);
    // Partitions are drawn relative to the start of the run.
    let partitions: Vec<(i64, i64)> = knobs
        .partitions
        .iter()
        .map(|&(a, b)| (start + a, start + b))
        .collect();
    let store = Arc::new(FaultyStore::new(
        mem.clone(),
        rng.random(),
        knobs.store,
        partitions.clone(),
    ));
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        vfs::end_run();
        return Report {
            seed,
            failures: vec!["cannot build a runtime".into()],
            ..Report::default()
        };
    };
    let mut w = World {
        rng,
        knobs: knobs.clone(),
        rt,
        app: None,
        other: None,
        host: None,
        host_start_at: 0,
        hosts_started: 0,
        mem,
        store,
        commits: Vec::new(),
        acked: 0,
        last_restored: 0,
        intact: std::collections::HashSet::new(),
        disturbed_ms: 0,
        report: Report {
            seed,
            scenario: scenario_path.map(str::to_string),
            ..Report::default()
        },
        next_row: 0,
        feed: WalFeed::new(DB),
        digest: PageDigest::new(knobs.page_size as usize),
        scratch: Arc::new(files::SimScratch::new(
            "/sim-scratch",
            knobs.fetch_in_memory_bytes_max,
        )),
        extra,
        restore_rng,
        zombie: None,
        terms: Vec::new(),
        abandoned: Vec::new(),
        replaced_at: None,
        partitions: partitions.clone(),
        heals: Vec::new(),
        streak: check_progress::Streak::default(),
    };
    w.log(format!("seed {seed} knobs {knobs:?}"));
    if let Err(e) = w.open_app() {
        w.fail(format!("cannot open the database: {e}"));
    }
    if let Some(app) = w.app.as_ref()
        && let Err(e) = app.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    {
        w.fail(format!("cannot create the table: {e}"));
    }
    w.record_commit();
    if w.knobs.first_start_ms > 0 {
        w.host_start_at = w.now() + w.knobs.first_start_ms;
    } else {
        w.start_engine();
    }

    // Fault phase: the plan's steps, or events drawn from the seed.
    match &scenario.steps {
        Some(steps) => {
            for step in steps {
                if !w.report.failures.is_empty() {
                    break;
                }
                w.exec(step);
                w.drive();
            }
        }
        None => random_events(&mut w, transactions),
    }

    // Healed phase: faults off; the replicator catches up on its own schedule (restarting if
    // it was down), and the replica must equal the primary.
    if w.report.failures.is_empty() {
        w.store.heal();
        let now = w.now();
        for p in &mut w.partitions {
            p.1 = p.1.min(now);
        }
        w.log("heal");
        let deadline = now + 60_000;
        while w.acked_effective() < w.commits.len()
            && w.now() < deadline
            && w.report.failures.is_empty()
        {
            let step = w.knobs.sync_interval_ms.max(50);
            w.advance(step);
            w.drive();
        }
        if w.acked_effective() != w.commits.len() {
            w.fail(format!(
                "after healing only {} of {} commits are acknowledged",
                w.acked_effective(),
                w.commits.len()
            ));
        }
        w.check_restore("final");
        if w.last_restored != w.commits.len() {
            let last = w.last_restored;
            w.fail(format!(
                "after healing the replica holds commit {last} of {}",
                w.commits.len()
            ));
        }
        check_history(&mut w);
        check_point_in_time(&mut w);
        check_verify(&mut w);
        check_compaction_catches_up(&mut w);
        w.graceful_stop();
    }
    if let Some(max) = scenario.expect.resyncs_max
        && w.report.resyncs > max
    {
        let n = w.report.resyncs;
        w.fail(format!(
            "{n} files shipped after a full compare of the database, at most {max} expected: the engine lost WAL continuity in a workload that gives it no reason to"
        ));
    }
    if let Some(max) = scenario.expect.commit_lag_max_ms
        && w.report.commit_lag_ms_max > max
    {
        let lag = w.report.commit_lag_ms_max;
        w.fail(format!(
            "a commit made with the store healthy waited {lag} ms for its upload, at most {max} ms expected"
        ));
    }
    w.report.commits = w.commits.len();
    w.log(format!(
        "end commits={} restores={} worst-lag={}ms scratch-files={} failures={}",
        w.commits.len(),
        w.report.restores,
        w.report.worst_lag_ms,
        w.scratch.created(),
        w.report.failures.len()
    ));
    w.stop_host();
    w.close_app();
    let report = std::mem::take(&mut w.report);
    drop(w);
    vfs::end_run();
    report
}

/// The seed's own events: per transaction a time step, the transaction (sometimes with a sync
/// in its middle or a commit landing in the middle of a sync), then with the knobs'
/// probabilities a checkpoint, a reconnect, the driver's duties and the crashes.
fn random_events(w: &mut World, transactions: u32) {
    let vacuum_at = w.rng.random_range(0..transactions.max(1));
    for i in 0..transactions {
        if !w.report.failures.is_empty() {
            break;
        }
        let ms = w.rng.random_range(1..40);
        w.exec(&Step::Wait(ms));
        let ops = w.rng.random_range(1..8u8);
        let sync_midway = w.rng.random_bool(w.knobs.interleave_rate);
        let rollback = sync_midway && w.rng.random_bool(0.3);
        if w.rng.random_bool(w.knobs.write_during_sync_rate) {
            let at_read = w.rng.random_range(1..16);
            let starting = !w.engine_open() && (w.host.is_some() || w.now() >= w.host_start_at);
            if starting {
                w.exec(&Step::TxnDuringStart { ops, at_read });
            } else {
                w.exec(&Step::TxnDuringSync { ops, at_read });
            }
        } else {
            w.exec(&Step::Txn {
                ops,
                sync_midway,
                rollback,
            });
        }
        if i == vacuum_at {
            w.exec(&Step::Vacuum);
        }
        if w.rng.random_bool(w.knobs.app_checkpoint_rate) {
            let mode = CheckpointMode::ALL[w.rng.random_range(0..4)];
            w.exec(&Step::Checkpoint(mode));
        }
        if w.rng.random_bool(w.knobs.app_reconnect_rate) {
            w.exec(&Step::Reconnect);
        }
        w.drive();
        if w.host.is_some() && w.rng.random_bool(w.knobs.engine_crash_rate) {
            w.exec(&Step::EngineCrash);
        }
        if w.knobs.graceful_stop_rate > 0.0 && w.extra.random_bool(w.knobs.graceful_stop_rate) {
            w.exec(&Step::GracefulStop);
        }
        if w.rng.random_bool(w.knobs.power_loss_rate) {
            w.exec(&Step::PowerLoss);
        }
        if w.rng.random_bool(w.knobs.host_replace_rate) {
            if w.extra.random_bool(w.knobs.zombie_rate) {
                w.exec(&Step::ZombieReplaceHost(w.knobs.zombie_wake_ms));
            } else {
                w.exec(&Step::ReplaceHost);
            }
        }
    }
}
