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
use std::collections::BTreeMap;
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
use sluice_core::scheduler::{Action, Next, Outcome};
use sluice_core::store::{DynStore, MemStore, ObjectStore, StoreErrorKind};

use crate::faulty::FaultyStore;
use crate::files::{self, SimClock, SimDb};
pub use crate::knobs::Knobs;
use crate::oracle::{self, Changes, PageDigest, WalFeed};
use crate::plan::{CheckpointMode, Scenario, Step};
use crate::vfs::{self, Proc};

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
    /// Last time something could delay replication (engine start, injected fault, partition).
    disturbed_ms: i64,
    report: Report,
    next_row: u64,
    /// The application's committed pages, fed by its WAL hook.
    feed: Arc<std::sync::Mutex<WalFeed>>,
    /// The digest of the last committed state, kept page by page.
    digest: PageDigest,
    /// Scratch space compaction downloads into (its contents never affect a run).
    scratch: tempfile::TempDir,
    /// The stream `Knobs::draw_later` drew from, for those knobs' events.
    extra: ChaCha8Rng,
    /// A replaced host's stalled uploads and when they land, with its lease and fenced store.
    zombie: Option<Zombie>,
    /// Commits lost with a replaced host: real states (they were committed), which a zombie's
    /// upload may still put in the replica.
    abandoned: Vec<Abandoned>,
    /// The commit a new host restored, after the latest replacement.
    replaced_at: Option<usize>,
    /// Every partition of the run, `[start, end)`, and the heals the RPO checker follows.
    partitions: Vec<(i64, i64)>,
    heals: Vec<Heal>,
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

/// A replaced host that stalled in the middle of an upload.
struct Zombie {
    wake_at: i64,
    held: Vec<crate::faulty::Captured>,
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

/// One row operation, drawn before it runs.
#[derive(Clone, Copy, Debug)]
struct Op {
    /// Chooses the kind: insert, update, delete or (rarely) a schema change.
    roll: f64,
    size: usize,
    fill: u8,
    /// The row an update or delete aims at.
    target: u64,
}

fn apply_ops(app: &Connection, ops: &[Op]) -> rusqlite::Result<()> {
    for op in ops {
        let Op {
            roll,
            size,
            fill,
            target,
        } = *op;
        if roll >= 0.97 {
            // Schema changes: a side table comes and goes.
            let n = target % 4;
            app.execute_batch(&format!("CREATE TABLE IF NOT EXISTS s{n} (a); INSERT INTO s{n} VALUES ({fill}); DROP TABLE IF EXISTS s{}", (n + 2) % 4))?;
        } else if roll < 0.65 {
            app.execute("INSERT INTO t (v) VALUES (?1)", [blob(fill, size)])?;
        } else if roll < 0.85 {
            app.execute(
                "UPDATE t SET v = ?1 WHERE id = ?2",
                rusqlite::params![blob(fill, size / 2 + 1), target as i64],
            )?;
        } else {
            app.execute(
                "DELETE FROM t WHERE id <= ?1 AND id > ?1 - 3",
                [target as i64],
            )?;
        }
    }
    Ok(())
}

/// A row's payload: compressible like real data (a 61-byte pattern repeats) without the long
/// single-byte runs that make LZ4 copy byte by byte.
fn blob(fill: u8, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| fill ^ ((i % 61) as u8).wrapping_mul(37))
        .collect()
}

/// Every this many commits the oracle recomputes its digest from the whole image and checks the
/// running one against it.
const FULL_DIGEST_EVERY: usize = 256;

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

    /// Opens the application's connection, and with `two_connections` its second one.
    fn open_app(&mut self) -> rusqlite::Result<()> {
        self.app = Some(self.connect()?);
        self.other = if self.knobs.two_connections {
            Some(self.connect()?)
        } else {
            None
        };
        Ok(())
    }

    /// Closes the application's connections (the second one last).
    fn close_app(&mut self) {
        vfs::with(|s| s.current = Proc::App);
        self.app = None;
        self.other = None;
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        vfs::with(|s| s.current = Proc::App);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut c = Connection::open_with_flags_and_vfs(
            DB,
            flags,
            vfs::VFS_NAME.to_str().unwrap_or("sluice-sim"),
        )?;
        c.busy_timeout(std::time::Duration::ZERO)?;
        c.pragma_update(None, "page_size", self.knobs.page_size)?;
        c.pragma_update(None, "journal_mode", "WAL")?;
        c.pragma_update(None, "synchronous", "FULL")?;
        c.pragma_update(None, "temp_store", "MEMORY")?;
        c.pragma_update(None, "wal_autocheckpoint", self.knobs.app_autocheckpoint)?;
        c.pragma_update(None, "cache_size", self.knobs.app_cache_pages)?;
        // The oracle's feed of committed pages. Installing a WAL hook replaces SQLite's
        // autocheckpoint hook, so the hook checkpoints as that one does (PASSIVE, once the WAL
        // holds the threshold's frames, errors ignored).
        let feed = self.feed.clone();
        let threshold = i32::try_from(self.knobs.app_autocheckpoint).unwrap_or(i32::MAX);
        c.wal_hook(Some(
            move |wal: &mut rusqlite::hooks::Wal, frames: std::ffi::c_int| {
                oracle::lock(&feed).observe(u32::try_from(frames).unwrap_or(0));
                if threshold > 0 && frames >= threshold {
                    let _ = wal.checkpoint();
                }
                Ok(())
            },
        ))?;
        Ok(c)
    }

    fn app_image(&mut self) -> Option<Vec<u8>> {
        vfs::with(|s| s.current = Proc::App);
        let app = self.app.as_mut()?;
        app.serialize("main").ok().map(|d| d.to_vec())
    }

    /// The commit whose image is closest to `image`, and the pages that differ from it.
    fn closest_commit(&self, image: &[u8], page_size: usize) -> Option<(usize, Vec<usize>)> {
        self.commits
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.image.as_ref().map(|img| (i + 1, img)))
            .map(|(k, img)| (k, diff_pages(img, image, page_size)))
            .min_by_key(|(_, d)| d.len())
    }

    /// A diagnosis line for an image that matches no commit: the closest commit and how the
    /// next one differs (a partly shipped commit shows as pages shared with the next).
    fn diagnose(&self, image: &[u8]) -> Option<String> {
        let ps = self.knobs.page_size as usize;
        let (k, pages) = self.closest_commit(image, ps)?;
        let next = self
            .commits
            .get(k)
            .and_then(|c| c.image.as_ref())
            .map(|img| diff_pages(img, image, ps));
        // Where each differing page's content was committed, if anywhere.
        let origins: Vec<String> = pages
            .iter()
            .take(8)
            .map(|&p| {
                let want = image.get((p - 1) * ps..p * ps);
                let from = self.commits.iter().enumerate().rev().find(|(_, c)| {
                    c.image
                        .as_ref()
                        .is_some_and(|img| img.get((p - 1) * ps..p * ps) == want)
                });
                match from {
                    Some((i, _)) => format!("{p}:commit {}", i + 1),
                    None => format!("{p}:never committed"),
                }
            })
            .collect();
        Some(format!(
            "diagnosis: closest commit {k} of {} differs in pages {pages:?}; commit {} differs in {next:?}; those pages as committed last by [{}]",
            self.commits.len(),
            k + 1,
            origins.join(", ")
        ))
    }

    /// The digest of an image, computed from all of it.
    fn digest_of(&self, image: &[u8]) -> PageDigest {
        PageDigest::of(image, self.knobs.page_size as usize)
    }

    /// The application's database as SQLite serializes it, digested whole.
    fn app_digest(&mut self) -> Option<PageDigest> {
        let image = self.app_image()?;
        Some(self.digest_of(&image))
    }

    /// Whether the feed has seen a commit not yet recorded.
    fn feed_has_commit(&self) -> bool {
        oracle::lock(&self.feed).has_commit()
    }

    /// Records the application's last commit: its time and the digest of its image, updated
    /// from the pages the WAL hook saw committed (and recomputed whole every
    /// `FULL_DIGEST_EVERY` commits, at the first, and whenever the feed lost track).
    fn record_commit(&mut self) {
        let now = self.now();
        self.record_commit_at(now);
    }

    /// [`Self::record_commit`] for a commit made at `time_ms`.
    fn record_commit_at(&mut self, time_ms: i64) {
        let keep = std::env::var_os("SLUICE_SIM_KEEP_IMAGES").is_some();
        let changes = oracle::lock(&self.feed).take();
        let incremental = match changes {
            Changes::Pages { changes, db_pages } => {
                oracle::apply(&mut self.digest, &changes, db_pages);
                !self.commits.is_empty()
            }
            Changes::Unknown(e) => {
                self.log(format!("oracle feed lost track ({e}): full digest"));
                false
            }
            Changes::None => false,
        };
        let mut image = None;
        if keep || !incremental || self.commits.len().is_multiple_of(FULL_DIGEST_EVERY) {
            let Some(bytes) = self.app_image() else {
                return;
            };
            let full = self.digest_of(&bytes);
            if incremental && full != self.digest {
                self.fail(format!(
                    "oracle: the page-by-page digest of commit {} disagrees with sqlite3_serialize (simulator bug)",
                    self.commits.len() + 1
                ));
            }
            self.digest = full;
            image = keep.then_some(bytes);
        }
        self.commits.push(Commit {
            time_ms,
            hash: self.digest.digest(),
            image,
        });
    }

    fn app_ops(&mut self, ops: &[Op]) -> rusqlite::Result<()> {
        vfs::with(|s| s.current = Proc::App);
        match self.app.as_ref() {
            Some(app) => apply_ops(app, ops),
            None => Ok(()),
        }
    }

    /// Draws the contents of `n` row operations.
    fn draw_ops(&mut self, n: u8) -> Vec<Op> {
        let ops: Vec<Op> = (0..n)
            .map(|_| Op {
                roll: self.rng.random(),
                size: [8usize, 100, 700, 3000, 9000][self.rng.random_range(0..5)],
                fill: self.rng.random(),
                target: self.rng.random_range(0..self.next_row.max(1)),
            })
            .collect();
        self.next_row += ops.len() as u64;
        ops
    }

    fn app_exec(&mut self, sql: &str) -> rusqlite::Result<()> {
        vfs::with(|s| s.current = Proc::App);
        match self.app.as_mut() {
            Some(app) => app.execute_batch(sql),
            None => Ok(()),
        }
    }

    /// One application transaction of `n_ops` operations. With `sync_midway` the engine syncs
    /// in its middle (with a small page cache the transaction has already spilled uncommitted
    /// frames into the WAL); with `rollback` it then rolls back.
    fn transaction(&mut self, n_ops: u8, sync_midway: bool, rollback: bool) {
        // With two connections, each transaction takes one of them (the other keeps its own
        // page cache and WAL snapshot, which SQLite must notice are stale).
        let swap = self.other.is_some() && self.extra.random_bool(0.5);
        if swap {
            std::mem::swap(&mut self.app, &mut self.other);
        }
        self.transaction_on_app(n_ops, sync_midway, rollback);
        if swap {
            std::mem::swap(&mut self.app, &mut self.other);
        }
    }

    fn transaction_on_app(&mut self, n_ops: u8, sync_midway: bool, rollback: bool) {
        let ops = self.draw_ops(n_ops);
        let half = ops.len() / 2;
        let result = self
            .app_exec("BEGIN IMMEDIATE")
            .and_then(|()| self.app_ops(&ops[..half]));
        let result = result.and_then(|()| {
            if sync_midway && self.engine_open() {
                self.log("engine sync mid-transaction");
                self.engine_sync();
            }
            self.app_ops(&ops[half..])
        });
        match result {
            Ok(()) if rollback => {
                let r = self.app_exec("ROLLBACK");
                self.log(format!("app rollback {r:?}"));
            }
            Ok(()) => match self.app_exec("COMMIT") {
                Ok(()) => self.record_commit(),
                Err(e) => {
                    let _ = self.app_exec("ROLLBACK");
                    self.log(format!("app commit-failed {e}"));
                }
            },
            Err(e) => {
                let _ = self.app_exec("ROLLBACK");
                self.log(format!("app txn-failed {e}"));
            }
        }
    }

    /// The engine syncs and, just before its `at_read`th read of the database or WAL, the
    /// application commits a transaction: a write landing in the middle of the engine's read.
    fn transaction_during_sync(&mut self, n_ops: u8, at_read: u32) {
        if !self.engine_open() || self.app.is_none() {
            self.transaction(n_ops, false, false);
            return;
        }
        self.transaction_during(n_ops, at_read, "sync", Self::engine_sync);
    }

    /// The engine starts (it is down) and the application commits in the middle of the
    /// engine's reads while it recovers its position.
    fn transaction_during_start(&mut self, n_ops: u8, at_read: u32) {
        if self.engine_open() || self.app.is_none() {
            self.transaction(n_ops, false, false);
            return;
        }
        self.transaction_during(n_ops, at_read, "start", Self::start_engine);
    }

    /// Runs `engine_action` with an application commit armed before its `at_read`th read.
    fn transaction_during(
        &mut self,
        n_ops: u8,
        at_read: u32,
        what: &str,
        engine_action: fn(&mut Self),
    ) {
        let ops = self.draw_ops(n_ops);
        let slot = Rc::new(RefCell::new(self.app.take()));
        // The transaction's outcome and the simulated time it committed at (store latency may
        // move the clock before the engine's action returns).
        let outcome = Rc::new(RefCell::new(None::<(rusqlite::Result<()>, i64)>));
        let (app, out) = (slot.clone(), outcome.clone());
        files::arm_interrupt(
            at_read,
            Box::new(move || {
                tracing::trace!(
                    wal = ?wal_summary(),
                    "interrupt: app commits now"
                );
                let was = vfs::with(|s| std::mem::replace(&mut s.current, Proc::App));
                if let Some(c) = app.borrow().as_ref() {
                    let r = c
                        .execute_batch("BEGIN IMMEDIATE")
                        .and_then(|()| apply_ops(c, &ops))
                        .and_then(|()| c.execute_batch("COMMIT"));
                    if r.is_err() {
                        let _ = c.execute_batch("ROLLBACK");
                    }
                    tracing::trace!(
                        wal = ?wal_summary(),
                        ok = r.is_ok(),
                        "interrupt: app committed"
                    );
                    *out.borrow_mut() = Some((r, vfs::with(|s| s.now_ms)));
                }
                vfs::with(|s| s.current = was);
            }),
        );
        engine_action(self);
        let fired = files::disarm_interrupt();
        self.app = slot.borrow_mut().take();
        match outcome.borrow_mut().take() {
            Some((Ok(()), at)) => {
                self.log(format!("app commit during-{what} read={at_read}"));
                self.record_commit_at(at);
            }
            Some((Err(e), _)) => self.log(format!("app txn-failed during-{what} {e}")),
            None => {
                debug_assert!(!fired);
                self.log(format!("app {what} read fewer than {at_read} times"));
                self.transaction(n_ops, false, false);
            }
        }
    }

    fn app_vacuum(&mut self) {
        vfs::with(|s| s.current = Proc::App);
        let Some(app) = self.app.as_mut() else { return };
        let r = app.execute_batch("DELETE FROM t WHERE id % 3 = 0; VACUUM;");
        match r {
            Ok(()) => {
                self.record_commit();
                self.log("app vacuum");
            }
            Err(e) => {
                self.log(format!("app vacuum-failed {e}"));
                // The DELETE before it may have committed.
                if self.feed_has_commit() {
                    self.record_commit();
                }
            }
        }
    }

    fn app_checkpoint(&mut self, mode: CheckpointMode) {
        let mode = mode.sql();
        vfs::with(|s| s.current = Proc::App);
        let Some(app) = self.app.as_mut() else { return };
        let r: rusqlite::Result<(i64, i64, i64)> =
            app.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            });
        match r {
            Ok((busy, log, done)) => self.log(format!(
                "app checkpoint {mode} busy={busy} log={log} done={done}"
            )),
            Err(e) => self.log(format!("app checkpoint {mode} error {e}")),
        }
    }

    fn app_reconnect(&mut self) {
        vfs::with(|s| s.current = Proc::App);
        self.close_app();
        match self.open_app() {
            Ok(()) => self.log("app reconnect"),
            Err(e) => self.fail(format!("app cannot reopen the database: {e}")),
        }
    }

    fn engine_config(&self) -> EngineConfig {
        let mut cfg = EngineConfig::new(DB);
        cfg.vfs = vfs::VFS_NAME.to_str().ok().map(str::to_string);
        cfg.busy_timeout_ms = 0;
        cfg.checkpoint = CheckpointPolicy {
            min_pages: self.knobs.engine_checkpoint_pages.max(1),
            truncate_pages: 4 * self.knobs.engine_checkpoint_pages.max(1000),
            interval_ms: if self.knobs.engine_checkpoint_pages == 0 {
                i64::MAX / 4
            } else {
                5_000
            },
        };
        cfg
    }

    /// The schedule the knobs describe, for production's scheduler.
    fn schedule(&self) -> Schedule {
        let k = &self.knobs;
        Schedule {
            sync_interval_ms: k.sync_interval_ms,
            monitor_interval_ms: k.sync_interval_ms.max(1),
            levels_ms: if k.compact_interval_ms > 0 {
                vec![k.compact_interval_ms, 4 * k.compact_interval_ms]
            } else {
                Vec::new()
            },
            snapshot_interval_ms: if k.snapshot_interval_ms > 0 {
                k.snapshot_interval_ms
            } else {
                i64::MAX / 4
            },
            snapshot_retention_ms: k.snapshot_retention_ms,
            l0_retention_ms: k.l0_retention_ms,
            retention_enabled: k.snapshot_retention_ms > 0,
            ..Schedule::default()
        }
    }

    fn engine_open(&self) -> bool {
        self.host
            .as_ref()
            .is_some_and(|h| h.driver.engine().is_some())
    }

    /// Starts the replicator process as `sluice replicate` does: take the replica's lease
    /// (production's `Lease::acquire` and `FencedStore`), then a driver whose scheduler opens
    /// the engine first. A lease held by another host refuses the start, as it does in
    /// production; the orchestrator restarts the process a little later.
    fn spawn_host(&mut self) {
        let now = self.now();
        self.disturbed_ms = now;
        self.hosts_started += 1;
        let raw: DynStore = self.store.clone();
        let mut store = raw.clone();
        let mut lease = None;
        if self.knobs.lease_ttl_ms > 0 {
            let holder = Holder {
                host: format!("sim-host-{}", self.hosts_started),
                pid_namespace: String::new(),
                pid: 1,
                database: DB.into(),
                nonce: self.hosts_started,
            };
            vfs::with(|s| s.current = Proc::Engine);
            let taken = self.rt.block_on(Lease::take(
                raw.clone(),
                holder,
                now,
                self.knobs.lease_ttl_ms,
            ));
            vfs::with(|s| s.current = Proc::App);
            match taken {
                Ok(Some(l)) => {
                    store = Arc::new(FencedStore::new(raw, l.state(), Arc::new(SimClock)));
                    lease = Some(l);
                }
                Ok(None) => self.fail("the simulated store refused conditional writes"),
                Err(e) => {
                    let held = matches!(e, LeaseError::Held { .. });
                    let delay = self.rng.random_range(100..1_000);
                    self.host_start_at = self.now() + delay;
                    self.log(format!(
                        "host start-refused{} restart-in={delay}ms: {e}",
                        if held { " lease-held" } else { "" }
                    ));
                    return;
                }
            }
        }
        let job = Job {
            engine: self.engine_config(),
            replica: Replica::new(store.clone(), Layout::File),
            schedule: self.schedule(),
            scratch: self.scratch.path().to_path_buf(),
            lease,
        };
        let status = Arc::new(std::sync::Mutex::new(JobStatus::default()));
        let seed = self.rng.random();
        let driver = Driver::new(
            job,
            Arc::new(SimDb { db: DB.into() }),
            Arc::new(SimClock),
            status,
            seed,
        );
        self.log(format!("host start {}", self.hosts_started));
        self.host = Some(Host {
            driver,
            store,
            wake_at: now,
            generation: self.hosts_started,
        });
    }

    /// Starts the replicator if it is down, and runs its first action if that is the open.
    fn start_engine(&mut self) {
        if self.host.is_none() {
            self.spawn_host();
        }
        if let Some(h) = self.host.as_mut()
            && h.driver.poll() == Next::Run(Action::Open)
        {
            self.act(Action::Open);
        }
    }

    /// Performs one of the host's actions through production's driver, and logs it.
    fn act(&mut self, action: Action) {
        let before = self.commits.len();
        let injected_before = self.store.injected();
        let Some(h) = self.host.as_mut() else { return };
        vfs::with(|s| s.current = Proc::Engine);
        tracing::trace!(commits = before, %action, wal = ?wal_summary(), "action begins");
        let (outcome, error) = self.rt.block_on(h.driver.run_action(action));
        let shipped = h.driver.take_shipped();
        let txid = h.driver.scheduler().txid();
        vfs::with(|s| s.current = Proc::App);
        if self.store.injected() != injected_before || action == Action::Open {
            self.disturbed_ms = self.now();
        }
        match &outcome {
            Outcome::Synced { more, .. } => {
                if !more {
                    self.acked = before;
                }
                match shipped {
                    Some((f, resynced)) => self.log(format!(
                        "engine ship {f} txid={txid:016x}{}",
                        if resynced { " resync" } else { "" }
                    )),
                    None => self.log(format!("act {action}: nothing to ship")),
                }
            }
            Outcome::Opened { txid, .. } => self.log(format!("engine start txid={txid:016x}")),
            Outcome::Failed(f) => self.log(format!(
                "act {action} failed ({f:?}): {}",
                error.unwrap_or_default()
            )),
            other => self.log(format!("act {action}: {other:?}")),
        }
    }

    /// A sync the simulator forces (a plan's step, or one in the middle of a transaction).
    fn engine_sync(&mut self) {
        if self.engine_open() {
            self.act(Action::Sync);
        }
    }

    /// The replicator's duties at this instant, as its scheduler decides them: observe the
    /// database, then run every action that is due now. A driver that exits (a permanent
    /// error, or a lost lease) is a process that stopped: the orchestrator restarts it.
    fn host_wake(&mut self) {
        let Some(h) = self.host.as_mut() else { return };
        h.driver.observe();
        for _ in 0..ACTIONS_PER_WAKE_MAX {
            let Some(h) = self.host.as_mut() else { return };
            match h.driver.poll() {
                Next::Run(action) => self.act(action),
                Next::Sleep { until_ms } => {
                    h.wake_at = until_ms;
                    return;
                }
                Next::Exit => {
                    let why = h
                        .driver
                        .scheduler()
                        .stopped_by()
                        .unwrap_or("exit")
                        .to_string();
                    self.stop_host();
                    let delay = self.rng.random_range(100..1_000);
                    self.host_start_at = self.now() + delay;
                    self.log(format!("host exited restart-in={delay}ms: {why}"));
                    return;
                }
            }
        }
        self.fail(format!(
            "the scheduler asked for more than {ACTIONS_PER_WAKE_MAX} actions at one instant"
        ));
    }

    /// Ends the replicator process (its SQLite connection closes; nothing is released).
    fn stop_host(&mut self) {
        vfs::with(|s| s.current = Proc::Engine);
        self.host = None;
        vfs::with(|s| s.current = Proc::App);
    }

    /// A clean stop (SIGTERM): production's final sync and lease release, on simulated time,
    /// until the driver exits. With the store reachable throughout, every commit is then in the
    /// replica (checked); the replicator starts again later.
    fn graceful_stop(&mut self) {
        if !self.engine_open() {
            return;
        }
        let start = self.now();
        let injected_before = self.store.injected();
        let commits = self.commits.len();
        if let Some(h) = self.host.as_mut() {
            h.driver.scheduler_mut().shutdown(start);
        }
        self.log("host graceful-stop");
        let mut drained = false;
        for _ in 0..10_000 {
            let Some(h) = self.host.as_mut() else { break };
            match h.driver.poll() {
                Next::Run(action) => self.act(action),
                Next::Sleep { until_ms } => vfs::with(|s| s.now_ms = s.now_ms.max(until_ms)),
                Next::Exit => {
                    drained = h.driver.scheduler().drained();
                    break;
                }
            }
        }
        self.stop_host();
        let delay = self.rng.random_range(100..2_000);
        self.host_start_at = self.now() + delay;
        self.log(format!(
            "host stopped drained={drained} restart-in={delay}ms"
        ));
        let quiet = self.store.injected() == injected_before
            && !self.partitioned_between(start, self.now() + 1);
        self.check_restore("graceful-stop");
        if quiet && self.last_restored < commits {
            self.fail(format!(
                "a graceful stop with the store reachable left the replica at commit {} of {commits}",
                self.last_restored
            ));
        }
    }

    /// The acknowledged commits, counting the commits after them that changed nothing (a
    /// transaction whose statements matched no row writes no frame: there is nothing to ship
    /// and the scheduler, seeing no change, rightly does not sync).
    fn acked_effective(&self) -> usize {
        let Some(base) = self.acked.checked_sub(1).and_then(|i| self.commits.get(i)) else {
            return self.acked;
        };
        self.acked
            + self.commits[self.acked..]
                .iter()
                .take_while(|c| c.hash == base.hash)
                .count()
    }

    /// Whether a partition overlaps `[a, b)`.
    fn partitioned_between(&self, a: i64, b: i64) -> bool {
        self.partitions.iter().any(|&(s, e)| s < b && a < e)
    }

    /// Runs one step of a plan (the seed's own events go through here too).
    fn exec(&mut self, step: &Step) {
        match *step {
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

    /// A replaced host's stalled uploads land (past its lease check, the gap `lease.rs`
    /// documents: only the conditional PUT stands in their way). If the new host has taken the
    /// lease over since, the zombie's renewal must learn that it lost the lease, and its fenced
    /// store must refuse to write from then on.
    fn zombie_wakes(&mut self) {
        let Some(z) = self.zombie.take() else { return };
        for c in z.held {
            let r = self.rt.block_on(self.store.put(&c.key, c.data, c.opts));
            match r {
                Ok(()) => self.log(format!("zombie put {} landed", c.key)),
                Err(e) => self.log(format!("zombie put {} refused: {e}", c.key)),
            }
        }
        let taken_over = self
            .host
            .as_ref()
            .is_some_and(|h| h.driver.scheduler().holds_lease());
        let Some(mut lease) = z.lease else { return };
        if !taken_over {
            return;
        }
        let now = self.now();
        match self.rt.block_on(lease.renew(now)) {
            Err(LeaseError::Lost { holder, .. }) => {
                let probe = self.rt.block_on(z.store.delete("0000/zombie-probe.ltx"));
                match probe {
                    Err(e) if e.kind == StoreErrorKind::Fenced => {
                        self.log(format!(
                            "zombie lease lost to {holder}; its writes are refused"
                        ));
                    }
                    other => self.fail(format!(
                        "a zombie that lost its lease could still write: {other:?}"
                    )),
                }
            }
            // The store failed the request: the zombie learns nothing yet, and dies.
            Err(LeaseError::Store(e)) => self.log(format!("zombie renewal failed: {e}")),
            Ok(()) => self.fail(
                "a zombie renewed its lease after the new host had taken it over".to_string(),
            ),
            Err(e) => self.fail(format!("a zombie's renewal: {e}")),
        }
    }

    /// Partitions that ended by now start being followed by the post-heal check.
    fn register_heals(&mut self) {
        let now = self.now();
        let generation = self.host.as_ref().map(|h| h.generation);
        let ended: Vec<i64> = self
            .partitions
            .iter()
            .filter(|&&(_, end)| end <= now)
            .map(|&(_, end)| end)
            .collect();
        self.partitions.retain(|&(_, end)| end > now);
        for at in ended {
            let need = self.commits.iter().filter(|c| c.time_ms < at).count();
            if need > self.acked_effective() {
                self.heals.push(Heal {
                    at,
                    need,
                    injected: self.store.injected(),
                    generation,
                });
            }
        }
    }

    /// The retry bound: once a partition ended, commits made before its end are acknowledged
    /// within the sync interval plus [`POST_HEAL_SLACK_MS`]. A heal is not judged if the
    /// store failed anything since, the host restarted, or another partition began.
    fn judge_heals(&mut self) {
        let now = self.now();
        let generation = self.host.as_ref().map(|h| h.generation);
        let bound = self.knobs.sync_interval_ms + POST_HEAL_SLACK_MS;
        let acked = self.acked_effective();
        let injected = self.store.injected();
        let partitioned = self.store.partitioned(now);
        let mut verdicts = Vec::new();
        self.heals.retain(|h| {
            // A process that was not running when the partition ended is started by the
            // orchestrator, outside the bound (and it refuses to start while the store is
            // unreachable, as production does).
            if h.injected != injected
                || h.generation.is_none()
                || h.generation != generation
                || partitioned
            {
                return false;
            }
            if acked >= h.need {
                verdicts.push((h.at, now - h.at));
                return false;
            }
            if now - h.at > bound {
                verdicts.push((h.at, now - h.at));
                return false;
            }
            true
        });
        for (at, lag) in verdicts {
            self.report.post_heal_lag_ms_max = self.report.post_heal_lag_ms_max.max(lag);
            if lag > bound {
                self.fail(format!(
                    "after the partition that ended at {at}, commits made before it waited over {lag} ms (bound: sync interval {} + {POST_HEAL_SLACK_MS} ms)",
                    self.knobs.sync_interval_ms
                ));
            } else {
                self.log(format!("check heal at={at} lag={lag}ms"));
            }
        }
    }

    fn crash_engine(&mut self) {
        vfs::with(|s| s.crash(Proc::Engine));
        self.stop_host();
        let delay = self.rng.random_range(100..3000);
        self.host_start_at = self.now() + delay;
        self.log(format!("engine crash restart-in={delay}ms"));
    }

    fn power_loss(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng.random());
        let r = vfs::with(|s| s.power_loss(&mut rng));
        self.close_app();
        self.stop_host();
        self.host_start_at = self.now() + self.rng.random_range(100..2000);
        self.log(format!(
            "power-loss persisted={} dropped={} torn={} vanished={}",
            r.persisted, r.dropped, r.torn, r.vanished_files
        ));
        if let Err(e) = self.open_app() {
            self.fail(format!("app cannot reopen after power loss: {e}"));
            return;
        }
        // SQLite's own contract with synchronous=FULL: every commit survives a power loss.
        oracle::lock(&self.feed).reset();
        let expect = self.commits.last().map(|c| c.hash);
        let now = self.app_digest();
        if let Some(d) = now.clone() {
            self.digest = d;
        }
        if now.map(|d| d.digest()) != expect {
            self.fail("after a power loss the database is not the last committed state (simulator or VFS bug)");
        }
    }

    /// The host dies and a new, empty one takes over: it restores the latest state (as the
    /// sidecar's `restore -if-db-not-exists` does), then the application and the engine carry
    /// on from it. Commits after the restored one are lost with the old host.
    fn replace_host(&mut self, zombie_wake_ms: Option<i64>) {
        if let Some(wake) = zombie_wake_ms
            && self.engine_open()
        {
            // The old engine prepares its next upload from the old disk and stalls sending it
            // (past its lease check: the capture sits below the fenced store).
            self.store.start_capture();
            self.engine_sync();
            let held = self.store.stop_capture();
            if !held.is_empty() {
                let at = self.now() + wake.max(0);
                self.log(format!(
                    "zombie stalled with {} upload(s), wakes at {at}",
                    held.len()
                ));
                let Some(h) = self.host.as_mut() else { return };
                let lease = h.driver.take_lease();
                let store = h.store.clone();
                self.zombie = Some(Zombie {
                    wake_at: at,
                    held,
                    lease,
                    store,
                });
            }
        }
        self.stop_host();
        self.close_app();
        vfs::with(vfs::VfsState::replace_host);
        oracle::lock(&self.feed).reset();
        let (image, txid) = match self.restore(Target::Latest) {
            Ok(r) => r,
            // Nothing was ever replicated (the store was unreachable since the start): the new
            // host starts a new database, as `restore -if-replica-exists` lets it.
            Err(NoImage::ReplicaEmpty) => {
                if self.acked > 0 {
                    self.fail(format!(
                        "host replacement: replica empty but {} commits were acknowledged",
                        self.acked
                    ));
                    return;
                }
                self.commits.clear();
                self.digest = PageDigest::new(self.knobs.page_size as usize);
                self.last_restored = 0;
                self.host_start_at = self.now();
                self.log("host-replaced replica empty: new database");
                if let Err(e) = self.open_app() {
                    self.fail(format!(
                        "host replacement: cannot create a new database: {e}"
                    ));
                    return;
                }
                if let Err(e) = self.app_exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)") {
                    self.fail(format!("host replacement: cannot create the table: {e}"));
                    return;
                }
                self.record_commit();
                return;
            }
            Err(e) => {
                self.fail(format!("host replacement: restore failed: {e}"));
                return;
            }
        };
        let digest = self.digest_of(&image).digest();
        let k = match self.commit_of(digest) {
            Some(k) => Some(k),
            // A zombie's upload put a replaced host's commit on top, and this host acknowledged
            // nothing since its takeover: the next host carries on from that commit.
            None if self.is_abandoned(digest) && !self.acked_since_takeover() => {
                let k = self.adopt_abandoned(digest);
                self.log(format!(
                    "host-replaced restores a replaced host's commit (a zombie's upload) at {k:?}"
                ));
                k
            }
            None => None,
        };
        let Some(k) = k else {
            self.fail(format!(
                "host replacement: restored TXID {txid:016x} matches no committed state"
            ));
            return;
        };
        if k < self.acked {
            self.fail(format!(
                "host replacement: restored commit {k} but {} were acknowledged",
                self.acked
            ));
        }
        vfs::with(|s| {
            s.disk.write(DB, 0, &image);
            s.disk.sync(DB);
        });
        self.digest = self.digest_of(&image);
        let lost = self.commits.len() - k;
        // The new host's history continues from commit k; the rest stay real states.
        self.abandoned.push(Abandoned {
            base: k,
            commits: self.commits[k..].to_vec(),
        });
        self.replaced_at = Some(k);
        self.commits.truncate(k);
        self.acked = k;
        self.last_restored = k;
        self.host_start_at = self.now();
        self.log(format!(
            "host-replaced restored txid={txid:016x} commit={k} lost={lost}"
        ));
        if let Err(e) = self.open_app() {
            self.fail(format!(
                "host replacement: the restored database does not open: {e}"
            ));
        }
    }

    /// Whether this host has acknowledged a commit that changed the database since it took
    /// over (commits that changed nothing leave the restored state as the acknowledged one).
    fn acked_since_takeover(&self) -> bool {
        let base = self.replaced_at.unwrap_or(0);
        let base_hash = base
            .checked_sub(1)
            .and_then(|i| self.commits.get(i))
            .map(|c| c.hash);
        self.commits
            .iter()
            .take(self.acked)
            .skip(base)
            .any(|c| Some(c.hash) != base_hash)
    }

    fn is_abandoned(&self, digest: u64) -> bool {
        self.abandoned
            .iter()
            .any(|a| a.commits.iter().any(|c| c.hash == digest))
    }

    /// Makes the replaced host's commit with `digest` (and those before it) the history again;
    /// this host's commits since the shared base are lost in turn. Returns the commit's index.
    fn adopt_abandoned(&mut self, digest: u64) -> Option<usize> {
        let (a, j) = self.abandoned.iter().enumerate().find_map(|(a, seg)| {
            seg.commits
                .iter()
                .position(|c| c.hash == digest)
                .map(|j| (a, j))
        })?;
        let base = self.abandoned[a].base.min(self.commits.len());
        let ours = self.commits[base..].to_vec();
        let theirs = self.abandoned[a].commits[..=j].to_vec();
        self.commits.truncate(base);
        self.commits.extend(theirs);
        self.abandoned.push(Abandoned {
            base,
            commits: ours,
        });
        Some(self.commits.len())
    }

    /// Restores from the store (no faults) into memory.
    fn restore(&mut self, target: Target) -> Result<(Vec<u8>, u64), NoImage> {
        let failed = |e: &dyn std::fmt::Display| NoImage::Failed(e.to_string());
        let replica = Replica::new(Arc::new(self.mem.clone()), Layout::File);
        let rt = &self.rt;
        let files = rt.block_on(replica.list_all()).map_err(|e| failed(&e))?;
        let plan = restore::plan("sim", &files, target).map_err(|e| match e {
            restore::RestoreError::ReplicaEmpty { .. } => NoImage::ReplicaEmpty,
            e => failed(&e),
        })?;
        let mut fetched = Vec::with_capacity(plan.len());
        for f in plan {
            let bytes = rt
                .block_on(self.mem.get_range(&replica.key(&f), 0, f.size))
                .map_err(|e| failed(&e))?;
            fetched.push(Ok(Fetched::in_memory(f, bytes)));
        }
        let mut image = Vec::new();
        let report =
            restore::apply_plan(&mut image, std::path::Path::new("memory"), fetched, |_| {})
                .map_err(|e| failed(&e))?;
        if !report.checksum_verified {
            return Err(failed(&"restore could not verify the database checksum"));
        }
        Ok((image, report.txid))
    }

    /// The newest commit whose image hashes to `h`.
    fn commit_of(&self, h: u64) -> Option<usize> {
        self.commits
            .iter()
            .rposition(|c| c.hash == h)
            .map(|i| i + 1)
    }

    fn integrity_ok(image: &[u8]) -> Result<(), String> {
        // The simulated VFS is the default; an in-memory check database uses the OS VFS (it
        // touches no file).
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_MEMORY;
        let mut c = Connection::open_with_flags_and_vfs(":memory:", flags, "unix")
            .map_err(|e| e.to_string())?;
        // A WAL-mode image (header bytes 18 and 19 are 2) cannot be opened from memory; the
        // check runs on a copy marked as a rollback-journal database, pages otherwise untouched.
        let mut copy = image.to_vec();
        if copy.len() >= 20 {
            copy[18] = 1;
            copy[19] = 1;
        }
        c.deserialize_read_exact("main", &copy[..], copy.len(), true)
            .map_err(|e| e.to_string())?;
        let rows: Vec<String> = c
            .prepare("PRAGMA integrity_check")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| e.to_string())?;
        if rows == ["ok"] {
            Ok(())
        } else {
            Err(rows.join("; "))
        }
    }

    /// The oracle's running digest must equal a digest of the whole database as SQLite
    /// serializes it (outside a transaction, the last commit's state).
    fn check_oracle(&mut self, why: &str) {
        if self.app.is_none() || self.feed_has_commit() {
            return;
        }
        if let Some(full) = self.app_digest()
            && self.commits.last().map(|c| c.hash) != Some(full.digest())
        {
            self.fail(format!(
                "{why}: oracle: the last commit's digest disagrees with sqlite3_serialize (simulator bug)"
            ));
        }
    }

    /// Checks (1)-(4) of FAULT_MODEL.md against a restore of the latest state.
    ///
    /// Does not check: restores through the CLI or from a file or S3 replica (the restore code
    /// runs on the in-memory store), restores by timestamp, or the RPO while the store was
    /// unreachable, the engine down, or within two objectives of a disturbance (the lag is
    /// recorded for the histogram either way).
    fn check_restore(&mut self, why: &str) {
        self.report.restores += 1;
        // The running digest is checked against a whole serialization at the end (and every
        // `FULL_DIGEST_EVERY` commits); a wrong digest cannot make a wrong restore match, only
        // a right one fail.
        if why == "final" {
            self.check_oracle(why);
        }
        let (image, txid) = match self.restore(Target::Latest) {
            Ok(r) => r,
            Err(NoImage::ReplicaEmpty) => {
                if self.acked > 0 {
                    self.fail(format!(
                        "{why}: replica empty but {} commits were acknowledged",
                        self.acked
                    ));
                }
                return;
            }
            Err(e) => {
                self.fail(format!("{why}: restore failed: {e}"));
                return;
            }
        };
        let digest = self.digest_of(&image).digest();
        let Some(k) = self.commit_of(digest) else {
            if self.is_abandoned(digest) {
                // A zombie's upload: a replaced host's commit, now at the top of the replica.
                // Acceptable only while the new host has acknowledged nothing of its own.
                if self.acked_since_takeover() {
                    self.fail(format!(
                        "{why}: restored TXID {txid:016x} is a replaced host's state (a zombie's upload), but the new host had acknowledged commits up to {}",
                        self.acked
                    ));
                } else {
                    self.log(format!(
                        "check {why} txid={txid:016x} a replaced host's state (zombie upload); nothing acknowledged since the takeover"
                    ));
                }
                return;
            }
            if let Some(d) = self.diagnose(&image) {
                self.log(d);
            }
            self.fail(format!(
                "{why}: restored TXID {txid:016x} matches no committed state"
            ));
            return;
        };
        if let Err(e) = Self::integrity_ok(&image) {
            self.fail(format!(
                "{why}: restored database fails integrity_check: {e}"
            ));
        }
        if k < self.acked {
            self.fail(format!(
                "{why}: restore reached commit {k} but {} were acknowledged",
                self.acked
            ));
        }
        if k < self.last_restored {
            self.fail(format!(
                "{why}: restore went backwards from commit {} to {k}",
                self.last_restored
            ));
        }
        self.last_restored = self.last_restored.max(k);
        let now = self.now();
        let lost = self.commits.len() - k;
        let lag = self.commits.get(k).map_or(0, |c| now - c.time_ms);
        self.report.lags_ms.push(lag);
        self.report.worst_lag_ms = self.report.worst_lag_ms.max(lag);
        self.report.lost_commits_max = self.report.lost_commits_max.max(lost);
        self.log(format!(
            "check {why} txid={txid:016x} commit={k}/{} lag={lag}ms",
            self.commits.len()
        ));
        let quiet = now - self.disturbed_ms >= 2 * RPO_MS
            && !self.store.partitioned(now)
            && self.engine_open();
        if quiet && lag >= RPO_MS {
            self.fail(format!(
                "{why}: RPO broken: the oldest lost commit is {lag} ms old with a healthy store"
            ));
        }
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
    let (Ok(rt), Ok(scratch)) = (
        tokio::runtime::Builder::new_current_thread().build(),
        tempfile::tempdir(),
    ) else {
        vfs::end_run();
        return Report {
            seed,
            failures: vec!["cannot build a runtime or a scratch directory".into()],
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
        disturbed_ms: 0,
        report: Report {
            seed,
            scenario: scenario_path.map(str::to_string),
            ..Report::default()
        },
        next_row: 0,
        feed: WalFeed::new(DB),
        digest: PageDigest::new(knobs.page_size as usize),
        scratch,
        extra,
        zombie: None,
        abandoned: Vec::new(),
        replaced_at: None,
        partitions: partitions.clone(),
        heals: Vec::new(),
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
    w.start_engine();

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
        check_compaction_catches_up(&mut w);
        w.graceful_stop();
    }
    w.report.commits = w.commits.len();
    w.log(format!(
        "end commits={} restores={} worst-lag={}ms failures={}",
        w.commits.len(),
        w.report.restores,
        w.report.worst_lag_ms,
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

/// Compaction catches up once faults heal, even on an idle database: with one request failing
/// at the start of an idle stretch of three level-2 intervals, level 1 must end at the engine's
/// TXID and level 2 at level 1's newest file (a failed compaction is retried, idle or not).
///
/// Does not check: snapshots' schedule, or retention's deletions (the point-in-time checks
/// cover what retention must keep); nor runs with a lagging listing, where a restarted job
/// that cannot see the level's newest file forks the level into overlapping files and the level
/// above waits for a snapshot to bridge the fork (`compact_level`).
fn check_compaction_catches_up(w: &mut World) {
    let interval = w.knobs.compact_interval_ms;
    if interval <= 0 || !w.engine_open() || !w.report.failures.is_empty() {
        return;
    }
    if w.knobs.store.list_lag_ms > 0 {
        w.log("check compaction not judged: the listing lags");
        return;
    }
    w.store.fail_next(1, false);
    w.advance(3 * 4 * interval);
    let Some(txid) = w.host.as_ref().map(|h| h.driver.scheduler().txid()) else {
        return;
    };
    let replica = Replica::new(Arc::new(w.mem.clone()), Layout::File);
    let Ok(files) = w.rt.block_on(replica.list_all()) else {
        return;
    };
    let newest = |level: u8| {
        files
            .iter()
            .filter(|f| f.level == level)
            .map(|f| f.max_txid)
            .max()
            .unwrap_or(0)
    };
    let (l1, l2) = (newest(1), newest(2));
    if l1 != txid || l2 != l1 {
        let ranges = |level: u8| {
            files
                .iter()
                .filter(|f| f.level == level)
                .map(|f| format!("{}-{}", f.min_txid, f.max_txid))
                .collect::<Vec<_>>()
                .join(" ")
        };
        w.log(format!(
            "level 0: {}; level 1: {}; level 2: {}; level 9: {}",
            ranges(0),
            ranges(1),
            ranges(2),
            ranges(9)
        ));
        w.fail(format!(
            "compaction did not catch up while idle: level 1 ends at {l1:016x}, level 2 at {l2:016x}, the replica at {txid:016x}"
        ));
    } else {
        w.log(format!("check compaction caught up at {txid:016x}"));
    }
}

/// Walks the replica's whole history: every TXID's file applied in order (a resync snapshot
/// where a level-0 file is replaced by one) must give a committed state, never going backwards,
/// each file continuing the previous one's database checksum.
///
/// Does not check: compacted files (levels 1..8) or driver snapshots against the level-0 files
/// they merge (restores read them, so check (1) covers the ones a restore picks), or files of
/// a replaced host's lineage past the takeover (accepted as abandoned states, logged).
fn check_history(w: &mut World) {
    let replica = Replica::new(Arc::new(w.mem.clone()), Layout::File);
    let Ok(files) = w.rt.block_on(replica.list_all()) else {
        return;
    };
    let max = files.iter().map(|f| f.max_txid).max().unwrap_or(0);
    let mut image = Tracked::default();
    let mut digest = PageDigest::new(w.knobs.page_size as usize);
    let mut page = Vec::new();
    let (mut prev_k, mut prev_post, mut walked) = (0usize, None::<u64>, 0u32);
    let mut started = false;
    let mut t = 1u64;
    while t <= max {
        // The level-0 file of this TXID; where retention deleted it, the compacted file that
        // starts here; or a snapshot ending here (a resync, or where the walk can begin once
        // retention removed the files before it).
        let level0 = files
            .iter()
            .find(|f| f.level == 0 && f.min_txid == t && f.max_txid == t);
        let compacted = files
            .iter()
            .filter(|f| (1..9).contains(&f.level) && f.min_txid == t)
            .min_by_key(|f| f.max_txid);
        let snapshot = files
            .iter()
            .find(|f| f.min_txid == 1 && f.max_txid == t && (f.level == 9 || t == 1));
        // Failing those, a compacted file or snapshot covering this TXID: applied over the
        // state before it, it gives the state at its end (its newest page versions win).
        let covering = files
            .iter()
            .filter(|f| f.level >= 1 && f.min_txid <= t && t <= f.max_txid)
            .min_by_key(|f| f.max_txid);
        let file = if started {
            level0.or(compacted).or(snapshot).or(covering)
        } else {
            snapshot
                .or(level0.filter(|_| t == 1))
                .or(compacted.filter(|_| t == 1))
        };
        let Some(f) = file.cloned() else {
            if started {
                w.fail(format!(
                    "history: no file continues the replica at TXID {t:016x}"
                ));
                return;
            }
            // Retention removed the history before the oldest snapshot it keeps.
            t += 1;
            continue;
        };
        started = true;
        // A covering file starts before this TXID: its pre-apply checksum is of an older state.
        let continues = f.min_txid == t || f.min_txid == 1;
        t = f.max_txid + 1;
        let Ok(bytes) = w.rt.block_on(w.mem.get_range(&replica.key(&f), 0, f.size)) else {
            return;
        };
        if f.min_txid == 1 {
            image = Tracked::default();
            digest = PageDigest::new(w.knobs.page_size as usize);
        }
        let fetched = Fetched::in_memory(f.clone(), bytes);
        match restore::apply_one(
            &mut image,
            std::path::Path::new("memory"),
            &fetched,
            &mut page,
        ) {
            Ok((h, sums)) => {
                if let (Some(pp), Some((pre, _)), false, true) =
                    (prev_post, sums, h.is_snapshot(), continues)
                    && pre != pp
                {
                    w.fail(format!(
                        "history: {f} does not continue the previous file's database checksum"
                    ));
                    return;
                }
                prev_post = sums.map(|(_, post)| post);
            }
            Err(e) => {
                w.fail(format!("history: {f}: {e}"));
                return;
            }
        }
        walked += 1;
        image.update(&mut digest);
        if w.commit_of(digest.digest()).is_none() && w.is_abandoned(digest.digest()) {
            w.log(format!(
                "history: TXID {:016x} ({f}) is a replaced host's state (a zombie's upload)",
                f.max_txid
            ));
            continue;
        }
        match w.commit_of(digest.digest()) {
            Some(k) if k >= prev_k => prev_k = k,
            Some(k) => {
                w.fail(format!(
                    "history: TXID {:016x} is commit {k}, after commit {prev_k}: backwards",
                    f.max_txid
                ));
                return;
            }
            None => {
                if let Some(d) = w.diagnose(&image.bytes) {
                    w.log(d);
                }
                w.fail(format!(
                    "history: TXID {:016x} ({f}) is a state that was never committed",
                    f.max_txid
                ));
                return;
            }
        }
    }
    w.log(format!("check history txids={walked}"));
}

/// An image that remembers which pages a restore step wrote, so the walk over the history
/// digests only those.
#[derive(Default)]
struct Tracked {
    bytes: Vec<u8>,
    /// Byte ranges written since the last [`Tracked::update`].
    written: Vec<(u64, usize)>,
}

impl Tracked {
    fn update(&mut self, digest: &mut PageDigest) {
        let ps = digest.page_size();
        for (at, len) in std::mem::take(&mut self.written) {
            let (first, end) = (at as usize / ps, (at as usize + len).div_ceil(ps));
            for p in first..end.min(self.bytes.len().div_ceil(ps)) {
                let page = &self.bytes[p * ps..((p + 1) * ps).min(self.bytes.len())];
                digest.set(u32::try_from(p + 1).unwrap_or(u32::MAX), page);
            }
        }
        digest.truncate(u32::try_from(self.bytes.len().div_ceil(ps)).unwrap_or(u32::MAX));
    }
}

impl restore::Image for Tracked {
    fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
        self.written.push((offset, data.len()));
        restore::Image::write_at(&mut self.bytes, data, offset)
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        restore::Image::set_len(&mut self.bytes, len)
    }
    fn db_checksum(
        &mut self,
        page_size: u32,
    ) -> std::io::Result<sluice_core::checksum::DbChecksum> {
        restore::Image::db_checksum(&mut self.bytes, page_size)
    }
}

/// Restores at up to four random level-0 TXIDs must each equal some committed state, never
/// going backwards; then restores by time (`check_timestamps`).
///
/// Does not check: every TXID (the history walk does, file by file).
fn check_point_in_time(w: &mut World) {
    let replica = Replica::new(Arc::new(w.mem.clone()), Layout::File);
    let Ok(files) = w.rt.block_on(replica.list_level(0)) else {
        return;
    };
    let mut txids: Vec<u64> = files.iter().map(|f| f.max_txid).collect();
    txids.sort_unstable();
    let mut picks = BTreeMap::new();
    for _ in 0..4 {
        if let Some(&t) = txids.get(w.rng.random_range(0..txids.len().max(1))) {
            picks.insert(t, ());
        }
    }
    let mut prev = 0usize;
    for (txid, ()) in picks {
        let (image, got) = match w.restore(Target::Txid(txid)) {
            Ok(r) => r,
            // A TXID whose level-0 file the plan cannot reach alone is not an error here.
            Err(e) => {
                w.log(format!("check pitr txid={txid:016x} unavailable: {e}"));
                continue;
            }
        };
        let digest = w.digest_of(&image).digest();
        match w.commit_of(digest) {
            Some(k) if k >= prev && got == txid => {
                prev = k;
                w.log(format!("check pitr txid={txid:016x} commit={k}"));
            }
            Some(k) => w.fail(format!(
                "point-in-time restore at {txid:016x} gave commit {k} (TXID {got:016x}) after commit {prev}"
            )),
            None if w.is_abandoned(digest) => w.log(format!(
                "check pitr txid={txid:016x} a replaced host's state (zombie upload)"
            )),
            None => w.fail(format!(
                "point-in-time restore at {txid:016x} matches no committed state"
            )),
        }
    }
    check_timestamps(w, &files);
}

/// Restores to a moment (`Target::Before`, Litestream's `-timestamp`): just after a random
/// level-0 file was written, the restore must reach the newest TXID of any file written before
/// that moment and give a state committed before it.
fn check_timestamps(w: &mut World, level0: &[sluice_core::replica::FileInfo]) {
    let replica = Replica::new(Arc::new(w.mem.clone()), Layout::File);
    let Ok(all) = w.rt.block_on(replica.list_all()) else {
        return;
    };
    for _ in 0..2 {
        let Some(f) = level0.get(w.rng.random_range(0..level0.len().max(1))) else {
            return;
        };
        let at = f.created_ms + 1;
        let expect = all
            .iter()
            .filter(|g| g.created_ms < at)
            .map(|g| g.max_txid)
            .max()
            .unwrap_or(0);
        match w.restore(Target::Before(at)) {
            Ok((image, got)) => {
                let digest = w.digest_of(&image).digest();
                // The newest commit of this image made before the moment (later commits may
                // leave the same image).
                let before = w
                    .commits
                    .iter()
                    .rposition(|c| c.hash == digest && c.time_ms < at)
                    .map(|i| i + 1);
                match (w.commit_of(digest), before) {
                    (Some(_), Some(k)) if got == expect => {
                        w.log(format!("check pitr before={at} txid={got:016x} commit={k}"));
                    }
                    (Some(k), _) => w.fail(format!(
                        "restore before {at} gave TXID {got:016x} (commit {k}, committed at {}); expected TXID {expect:016x}, a state committed before",
                        w.commits[k - 1].time_ms
                    )),
                    (None, _) if w.is_abandoned(digest) => w.log(format!(
                        "check pitr before={at} a replaced host's state (zombie upload)"
                    )),
                    (None, _) => w.fail(format!(
                        "restore before {at} (TXID {got:016x}) matches no committed state"
                    )),
                }
            }
            Err(e) => w.log(format!("check pitr before={at} unavailable: {e}")),
        }
    }
}
