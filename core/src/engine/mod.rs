//! The replication engine: follows one database's WAL and ships each batch of committed
//! transactions to one replica as a level-0 LTX file.
//!
//! The engine reaches the world through three seams: [`DbFiles`] (reading the database and its
//! WAL), the replica's [`crate::store::ObjectStore`], and a [`Clock`]. Its decisions
//! ([`state::plan_sync`], [`state::plan_checkpoint`]) are plain functions over values. The
//! engine's own SQLite connection (held read transaction, checkpoints) is opened through an
//! optional VFS name so the simulator can put it on its simulated disk too.
//!
//! Invariant: `sums` always describes exactly the database state the replica holds at
//! `pos.txid`, and `sums.total() == pos.checksum`. Every shipped file carries the pre-apply
//! checksum of that state and the post-apply checksum of the next, so a restore proves it
//! reproduced the chain. Continuity with the local WAL is either proven (same WAL generation, or
//! the old generation's tail is still readable after one restart) or the engine compares the
//! whole current database with `sums` and ships exactly the pages that differ.

mod encode;
mod frames;
mod recovery;
use recovery::HeldRead;
pub mod source;
pub mod state;
mod sync;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags};

use crate::checksum::{DbChecksum, lock_pgno, page_checksum};
use crate::ltx::{
    Encoder, ExtChecksums, HEADER_FLAG_NO_CHECKSUM, HEADER_SIZE, Header, LtxError, TRAILER_SIZE,
};
use crate::planted::{self, Bug};
use crate::replica::{FileInfo, Replica, SNAPSHOT_LEVEL};
use crate::scratch::{Scratch, Spool, SpoolBody};
use crate::store::{PutMode, PutOptions, StoreError, StoreErrorKind};
use crate::wal::{
    Committed, FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WalHeader, WalScanner, scan_committed,
    scan_extent,
};
pub use recovery::chain_break;
pub use source::{DbFiles, LocalDb, OsDb, OsFiles, wal_generation};
pub use state::{CheckpointPlan, CheckpointPolicy, DbStamp, PageSums, Position, SyncPlan, WalPos};

/// Pages a pass over the whole database (a first snapshot, a full compare) reads between two
/// yields: 8 MiB at 4 KiB pages. Such a pass takes minutes on a large database and runs in
/// the driver's task; at each yield the work beside it (the lease kept during the action, the
/// other jobs of the process on a single worker thread) gets its turn.
const PAGES_PER_YIELD: u32 = 2048;

/// Yields after every [`PAGES_PER_YIELD`]th page (`n` counts pages from 1).
async fn pace(n: u32) {
    if n.is_multiple_of(PAGES_PER_YIELD) {
        tokio::task::yield_now().await;
    }
}

/// The clock seam. Real time in production, simulated time in the simulator.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;

    /// Resolves once [`Clock::now_ms`] reaches `at_ms`. The default sleeps on tokio's timer;
    /// a simulated clock resolves when its time, moved by the simulated world, has come (it
    /// is polled again whenever the task it runs in is woken).
    fn sleep_until(&self, at_ms: i64) -> futures::future::BoxFuture<'static, ()> {
        let ms = u64::try_from(at_ms.saturating_sub(self.now_ms())).unwrap_or(0);
        Box::pin(tokio::time::sleep(std::time::Duration::from_millis(ms)))
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("database {path}: {message}")]
    Database { path: PathBuf, message: String },
    #[error("database {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("replica {replica}: {message}")]
    Replica { replica: String, message: String },
    /// The replica cannot continue this database (its pages are of another size).
    #[error("replica {replica}: {message}")]
    Incompatible { replica: String, message: String },
    #[error("encoding LTX: {0}")]
    Ltx(#[from] LtxError),
    /// The database was removed (or replaced by another file) while replicating: this engine
    /// reads a file nobody writes any more.
    #[error("database {path} was removed or replaced while replicating")]
    Gone { path: PathBuf },
}

impl EngineError {
    /// Whether retrying cannot help: a lost lease, a replica of another page size, a file the
    /// engine cannot encode. Everything else (outages, a busy or missing database, races with
    /// the application, a TXID taken) is retried.
    pub fn is_permanent(&self) -> bool {
        match self {
            EngineError::Store(e) => e.kind == StoreErrorKind::Fenced,
            EngineError::Incompatible { .. } | EngineError::Ltx(_) => true,
            EngineError::Database { .. }
            | EngineError::Io { .. }
            | EngineError::Replica { .. }
            | EngineError::Gone { .. } => false,
        }
    }
}

/// The most damaged files an engine remembers; past it the oldest are forgotten (a merge that
/// reads one again finds it again).
pub const DAMAGED_FILES_MAX: usize = 64;

/// Engine settings. Every limit is named.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub db_path: PathBuf,
    /// SQLite VFS for the engine's own connection (`None`: the default VFS).
    pub vfs: Option<String>,
    pub busy_timeout_ms: u64,
    pub checkpoint: CheckpointPolicy,
    /// The most WAL bytes one level-0 file covers; a larger backlog ships over several syncs.
    pub sync_wal_bytes_max: u64,
    /// The database whose history the replica holds, when its lease names another one than
    /// this (`lease::Lease::other_lineage`): a start that cannot prove it continues that
    /// history is refused instead of shipping every page over it. `None`: ship (`-force`).
    pub foreign_lineage: Option<String>,
}

impl EngineConfig {
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        Self {
            db_path: db_path.into(),
            vfs: None,
            busy_timeout_ms: 1000,
            checkpoint: CheckpointPolicy::default(),
            sync_wal_bytes_max: 64 << 20,
            foreign_lineage: None,
        }
    }
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// The file shipped, if any.
    pub shipped: Option<FileInfo>,
    /// Whether the change was found by comparing the whole database (continuity not provable).
    pub resynced: bool,
    /// More committed WAL remains than one file may carry: sync again at once.
    pub more: bool,
    pub checkpoint: Option<CheckpointPlan>,
}

/// What [`Engine::prepare`] found: nothing to ship (what the sync did), or an upload to perform
/// and hand back to [`Engine::acknowledge`].
#[derive(Debug)]
pub enum Ready {
    Nothing(SyncOutcome),
    Upload(Box<Upload>),
}

/// A level-0 file to put at `key`, and what its acknowledgement applies.
#[derive(Debug)]
pub struct Upload {
    pub key: String,
    /// The file, in memory or spooled (`store::put_body` uploads either).
    pub body: SpoolBody,
    pub opts: PutOptions,
    pub ack: Ack,
}

/// The replica's state once an upload is acknowledged: the position and page checksums it
/// moves to, and the sync's outcome.
#[derive(Debug)]
pub struct Ack {
    pub info: FileInfo,
    pos: Position,
    sums: PageSums,
    resynced: bool,
    more: bool,
    /// The checkpoint the sync decided, run once the upload is acknowledged. `None` for a file
    /// a position recovery shipped.
    checkpoint: Option<CheckpointPlan>,
}

/// A file ready to upload, and the replica's state once it is acknowledged.
/// Always a level-0 file: the engine writes nothing else (see `prepare_full`).
struct Prepared {
    min_txid: u64,
    /// The encoded file: in memory while small, else spooled to a scratch file.
    body: SpoolBody,
    size: u64,
    timestamp_ms: i64,
    pos: Position,
    sums: PageSums,
}

/// Where each page of a database state comes from.
#[derive(Clone, Debug, Default)]
struct StateMap {
    commit: u32,
    /// Page number to the offset of its newest committed WAL frame; other pages are read from
    /// the database file.
    wal_pages: BTreeMap<u32, u64>,
}

pub struct Engine {
    cfg: EngineConfig,
    files: Arc<dyn DbFiles>,
    replica: Replica,
    clock: Arc<dyn Clock>,
    /// A mutex only so the engine is `Sync`; the engine is driven by one task at a time.
    conn: std::sync::Mutex<Connection>,
    /// A second connection for PASSIVE checkpoints run while `conn` holds a read: SQLite then
    /// backfills only frames at or before that read's snapshot, all of them shipped, so no
    /// checkpoint of ours lets a WAL restart overwrite a frame not read yet.
    checkpointer: std::sync::Mutex<Connection>,
    reading: bool,
    page_size: u32,
    pos: Position,
    sums: PageSums,
    last_checkpoint_ms: i64,
    /// The database file's stamp taken when the current read began (before reading it).
    read_stamp: DbStamp,
    opened_with_snapshot: bool,
    /// Level-0 files are uploaded with `PutMode::Create` (`If-None-Match: *`) so that an
    /// existing TXID is never replaced; off once the store refuses conditional writes.
    create_uploads: bool,
    /// An upload found its TXID taken: the replica moved without us (our own earlier attempt
    /// whose reply was lost, another writer, or a listing that lagged), so the next sync first
    /// re-reads the replica's position and proves it again.
    recover_needed: bool,
    /// Why the replica cannot be restored to its newest state, as found at the last position
    /// recovery (from the listing alone), if it cannot.
    replica_break: Option<String>,
    /// The full-state file shipped to heal a broken replica (at a start, or after a recovery
    /// a running driver asked for), until the driver takes it to write the heal's snapshot.
    heal_file: Option<FileInfo>,
    /// The upload being prepared or sent is a heal: acknowledged, it becomes `heal_file`;
    /// failed, the next sync recovers (and judges the chain) again.
    heal_pending: bool,
    /// Files found damaged (by a merge that read them), left out of later merges and of the
    /// chain a recovery judges; at most [`DAMAGED_FILES_MAX`], the newest kept.
    damaged: Vec<FileInfo>,
    /// Position recoveries so far (each judges the chain anew).
    recoveries: u64,
    /// The WAL's committed pages, when the last recovery or resync read the database file
    /// alone because the WAL was wholly checkpointed into it (see `recover_position`).
    read_db_only: Option<StateMap>,
    /// The read a recovery began, kept through the upload it prepared until the store answers
    /// ([`Engine::acknowledge`]).
    held: Option<HeldRead>,
    /// Where files too large for memory are spooled while they are encoded and uploaded.
    scratch: Arc<dyn Scratch>,
    /// The sync being prepared is a WAL restart's ([`Engine::sync_restart`]): it ships
    /// nothing rather than compare the database. Set by every prepare.
    restart_only: bool,
    /// The pages the sync being prepared read with its WAL scans (`frames.rs`).
    frames: std::sync::Mutex<frames::FrameCache>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("db", &self.cfg.db_path)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the database (switching it to WAL mode if needed), takes the read lock, finds the
    /// replica's position and proves where it stands relative to the local database. Ships a
    /// snapshot when the replica is empty or continuity cannot be proven.
    pub async fn open(
        cfg: EngineConfig,
        files: Arc<dyn DbFiles>,
        replica: Replica,
        clock: Arc<dyn Clock>,
        scratch: Arc<dyn Scratch>,
    ) -> Result<Engine, EngineError> {
        let db_err = |e: rusqlite::Error| EngineError::Database {
            path: cfg.db_path.clone(),
            message: e.to_string(),
        };
        let conn = connect(&cfg).map_err(db_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            let new: String = conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(db_err)?;
            if !new.eq_ignore_ascii_case("wal") {
                return Err(EngineError::Database {
                    path: cfg.db_path.clone(),
                    message: format!(
                        "cannot switch journal_mode from {mode} to WAL (is another process holding it?)"
                    ),
                });
            }
            tracing::info!(db = %cfg.db_path.display(), from = %mode, "switched database to WAL mode");
        }
        let page_size: u32 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(db_err)?;
        let checkpointer = connect(&cfg).map_err(db_err)?;
        let now = clock.now_ms();
        let mut engine = Engine {
            cfg,
            files,
            replica,
            clock,
            conn: std::sync::Mutex::new(conn),
            checkpointer: std::sync::Mutex::new(checkpointer),
            reading: false,
            page_size,
            pos: Position {
                txid: 0,
                checksum: DbChecksum::EMPTY,
                wal: None,
                db_stamp: None,
                last_header: None,
            },
            sums: PageSums::new(page_size),
            last_checkpoint_ms: now,
            read_stamp: (0, 0),
            opened_with_snapshot: false,
            create_uploads: !planted::active(Bug::UnconditionalUploads),
            recover_needed: false,
            replica_break: None,
            heal_file: None,
            heal_pending: false,
            damaged: Vec::new(),
            recoveries: 0,
            read_db_only: None,
            held: None,
            scratch,
            restart_only: false,
            frames: std::sync::Mutex::default(),
        };
        let prepared = engine.recover_holding().await?;
        // Proven, or shipped on purpose: later recoveries continue this database's lineage.
        engine.cfg.foreign_lineage = None;
        if let Some(p) = prepared {
            // A snapshot only on an empty replica; otherwise every page went up as a level-0
            // file and the driver's snapshot schedule decides as usual.
            let snapshot = p.min_txid == 1;
            let upload = engine.upload_of(p, false, false, None);
            engine.send(upload).await?;
            engine.opened_with_snapshot = snapshot;
        }
        Ok(engine)
    }

    /// Whether opening shipped a snapshot (an empty replica), so the driver need not write
    /// another one right away.
    pub fn opened_with_snapshot(&self) -> bool {
        self.opened_with_snapshot
    }

    /// Why the replica cannot be restored to its newest state (a gap in its chain, found from
    /// the listing when the position was last recovered), if it cannot.
    pub fn replica_break(&self) -> Option<&str> {
        self.replica_break.as_deref()
    }

    /// How many times the position was recovered (at the start, and in syncs after an upload
    /// found its TXID taken or a driver asked): each judged [`Self::replica_break`] anew.
    pub fn recoveries(&self) -> u64 {
        self.recoveries
    }

    /// The file of every page shipped because the replica was broken (taken: once): the
    /// driver writes it again as a snapshot (`compact::snapshot_of_full`).
    pub fn take_heal_file(&mut self) -> Option<FileInfo> {
        self.heal_file.take()
    }

    /// Records `file` as damaged (a merge could not read it); `false` if it was known.
    pub fn note_damaged(&mut self, file: &FileInfo) -> bool {
        if self.damaged.contains(file) {
            return false;
        }
        if self.damaged.len() == DAMAGED_FILES_MAX {
            self.damaged.remove(0);
        }
        self.damaged.push(file.clone());
        true
    }

    /// The files found damaged, which merges and recoveries leave out.
    pub fn damaged(&self) -> &[FileInfo] {
        &self.damaged
    }

    /// A running driver found the replica's chain broken from a listing, or a damaged file in
    /// it: the next sync recovers the position first, judging the chain without the damaged
    /// files, and heals a break it confirms.
    pub fn recheck_replica(&mut self) {
        self.recover_needed = true;
    }

    /// The memory of the per-page checksum table (8 bytes a page).
    pub fn page_checksums_bytes(&self) -> u64 {
        self.sums.table_bytes()
    }

    pub fn position(&self) -> Position {
        self.pos
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn db_err(&self, e: impl std::fmt::Display) -> EngineError {
        EngineError::Database {
            path: self.cfg.db_path.clone(),
            message: e.to_string(),
        }
    }

    fn io_err(&self, e: std::io::Error) -> EngineError {
        EngineError::Io {
            path: self.files.db_path().to_path_buf(),
            error: e,
        }
    }

    /// Holds a read transaction so the WAL cannot restart under frames we have not read.
    fn begin_read(&mut self) -> Result<(), EngineError> {
        if !self.reading {
            let r = {
                let conn = self.conn();
                conn.execute_batch("BEGIN DEFERRED").and_then(|()| {
                    let r: rusqlite::Result<i64> =
                        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0));
                    if r.is_err() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                    r
                })
            };
            r.map_err(|e| self.db_err(e))?;
            self.reading = true;
        }
        Ok(())
    }

    /// Ends a read kept for an upload that was never answered (its sync was cancelled).
    fn release_held(&mut self) -> Result<(), EngineError> {
        if self.held.take().is_some() {
            self.end_read()?;
        }
        Ok(())
    }

    fn end_read(&mut self) -> Result<(), EngineError> {
        if self.reading {
            self.reading = false;
            let r = self.conn().execute_batch("ROLLBACK");
            r.map_err(|e| self.db_err(e))?;
        }
        Ok(())
    }

    fn wal_header(&self) -> Result<(Option<WalHeader>, u64), EngineError> {
        let len = self.files.wal_len().map_err(|e| self.io_err(e))?;
        let mut buf = [0u8; WAL_HEADER_SIZE];
        let n = self
            .files
            .read_wal(0, &mut buf)
            .map_err(|e| self.io_err(e))?;
        let header = WalHeader::parse(&buf[..n])
            .ok()
            .filter(|h| h.page_size == self.page_size);
        Ok((header, len))
    }

    fn scan(&self, scanner: &mut WalScanner, bytes_max: u64) -> Result<Committed, EngineError> {
        let mut frames = self.frames();
        scan_committed(scanner, bytes_max, |off, buf| {
            let n = self.files.read_wal(off, buf)?;
            if n == buf.len() {
                frames.keep(off, buf);
            }
            Ok(n)
        })
        .map_err(|e| self.io_err(e))
    }

    fn frames(&self) -> std::sync::MutexGuard<'_, frames::FrameCache> {
        self.frames
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads page `pgno` of a state into `buf`.
    fn read_page(&self, map: &StateMap, pgno: u32, buf: &mut [u8]) -> Result<(), EngineError> {
        let n = match map.wal_pages.get(&pgno) {
            Some(&frame) => match self.frames().page(pgno, frame) {
                Some(page) if page.len() == buf.len() => {
                    buf.copy_from_slice(page);
                    Ok(buf.len())
                }
                _ => self.files.read_wal(frame + FRAME_HEADER_SIZE as u64, buf),
            },
            None => self
                .files
                .read_db(u64::from(pgno - 1) * u64::from(self.page_size), buf),
        }
        .map_err(|e| self.io_err(e))?;
        // Beyond the end of the database file SQLite reads zeros.
        buf[n..].fill(0);
        Ok(())
    }

    /// The state "database file plus these committed frames".
    fn state_map(&self, committed: Option<&Committed>) -> Result<StateMap, EngineError> {
        let db_pages = self.files.db_len().map_err(|e| self.io_err(e))? / u64::from(self.page_size);
        let mut map = StateMap {
            commit: u32::try_from(db_pages).unwrap_or(u32::MAX),
            wal_pages: BTreeMap::new(),
        };
        if let Some(c) = committed
            && let Some(size) = c.commit_size
        {
            map.commit = size;
            map.wal_pages = c.pages.clone();
        }
        Ok(map)
    }

    /// The page checksums of state `map`, read page by page. Built over the replica's table
    /// (shared copy-on-write): the pages that did not change cost no memory, so a full compare
    /// of a database that changed little costs little beside the one table.
    async fn sums_of(&self, map: &StateMap) -> Result<PageSums, EngineError> {
        let mut sums = self.sums.clone();
        sums.resize(map.commit);
        let lock = lock_pgno(self.page_size);
        let mut buf = vec![0u8; self.page_size as usize];
        for pgno in 1..=map.commit {
            if pgno != lock {
                self.read_page(map, pgno, &mut buf)?;
                sums.set(pgno, page_checksum(pgno, &buf));
            }
            pace(pgno).await;
        }
        Ok(sums)
    }

    /// Runs a checkpoint: PASSIVE on the checkpointing connection while the engine's read is
    /// held (it backfills only what that read's snapshot covers), TRUNCATE on the engine's own
    /// connection with no read held (a reader would block it). A busy database is not an error.
    fn checkpoint(&mut self, plan: CheckpointPlan) -> Result<(), EngineError> {
        let (mode, conn) = match plan {
            CheckpointPlan::None => return Ok(()),
            CheckpointPlan::Passive => {
                debug_assert!(
                    self.reading,
                    "a PASSIVE checkpoint runs under the engine's read"
                );
                ("PASSIVE", &self.checkpointer)
            }
            CheckpointPlan::Truncate => {
                debug_assert!(
                    !self.reading,
                    "a TRUNCATE checkpoint would wait on our own read"
                );
                ("TRUNCATE", &self.conn)
            }
        };
        let r: rusqlite::Result<(i64, i64, i64)> = conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            });
        self.last_checkpoint_ms = self.clock.now_ms();
        match r {
            Ok((busy, log, done)) => {
                tracing::debug!(mode, busy, log, done, "checkpoint");
                Ok(())
            }
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                Ok(())
            }
            Err(e) => Err(self.db_err(e)),
        }
    }

    /// Releases the read lock (for shutdown).
    pub fn close(mut self) -> Result<(), EngineError> {
        self.end_read()
    }
}

/// A connection of the engine's to the database: its busy timeout, and never an automatic
/// checkpoint (checkpoints are the engine's decisions).
fn connect(cfg: &EngineConfig) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = match &cfg.vfs {
        Some(vfs) => Connection::open_with_flags_and_vfs(&cfg.db_path, flags, vfs.as_str()),
        None => Connection::open_with_flags(&cfg.db_path, flags),
    }?;
    conn.busy_timeout(std::time::Duration::from_millis(cfg.busy_timeout_ms))?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}
