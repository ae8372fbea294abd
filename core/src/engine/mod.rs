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

pub mod source;
pub mod state;

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
use crate::store::{PutMode, StoreError, StoreErrorKind};
use crate::wal::{
    Committed, FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WalHeader, WalScanner, scan_committed,
    scan_extent,
};
pub use source::{DbFiles, LocalDb, OsDb, OsFiles};
pub use state::{CheckpointPlan, CheckpointPolicy, DbStamp, PageSums, Position, SyncPlan, WalPos};

/// The clock seam. Real time in production, simulated time in the simulator.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
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
}

impl EngineError {
    /// Whether retrying cannot help: a lost lease, a replica of another page size, a file the
    /// engine cannot encode. Everything else (outages, a busy or missing database, races with
    /// the application, a TXID taken) is retried.
    pub fn is_permanent(&self) -> bool {
        match self {
            EngineError::Store(e) => e.kind == StoreErrorKind::Fenced,
            EngineError::Incompatible { .. } | EngineError::Ltx(_) => true,
            EngineError::Database { .. } | EngineError::Io { .. } | EngineError::Replica { .. } => {
                false
            }
        }
    }
}

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
}

impl EngineConfig {
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        Self {
            db_path: db_path.into(),
            vfs: None,
            busy_timeout_ms: 1000,
            checkpoint: CheckpointPolicy::default(),
            sync_wal_bytes_max: 64 << 20,
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

/// A file ready to upload, and the replica's state once it is acknowledged.
/// Always a level-0 file: the engine writes nothing else (see `prepare_full`).
struct Prepared {
    min_txid: u64,
    bytes: Vec<u8>,
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
    ) -> Result<Engine, EngineError> {
        let db_err = |e: rusqlite::Error| EngineError::Database {
            path: cfg.db_path.clone(),
            message: e.to_string(),
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = match &cfg.vfs {
            Some(vfs) => Connection::open_with_flags_and_vfs(&cfg.db_path, flags, vfs.as_str()),
            None => Connection::open_with_flags(&cfg.db_path, flags),
        }
        .map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_millis(cfg.busy_timeout_ms))
            .map_err(db_err)?;
        // Our connection must never checkpoint on its own: checkpoints are decisions.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(db_err)?;
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
        let now = clock.now_ms();
        let mut engine = Engine {
            cfg,
            files,
            replica,
            clock,
            conn: std::sync::Mutex::new(conn),
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
        };
        engine.begin_read()?;
        let prepared = engine.recover_position().await;
        let released = engine.end_read();
        let prepared = prepared?;
        released?;
        if let Some(p) = prepared {
            // A snapshot only on an empty replica; otherwise every page went up as a level-0
            // file and the driver's snapshot schedule decides as usual.
            let snapshot = p.min_txid == 1;
            engine.upload(p).await?;
            engine.opened_with_snapshot = snapshot;
        }
        Ok(engine)
    }

    /// Whether opening shipped a snapshot (an empty replica), so the driver need not write
    /// another one right away.
    pub fn opened_with_snapshot(&self) -> bool {
        self.opened_with_snapshot
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
        scan_committed(scanner, bytes_max, |off, buf| self.files.read_wal(off, buf))
            .map_err(|e| self.io_err(e))
    }

    /// Reads page `pgno` of a state into `buf`.
    fn read_page(&self, map: &StateMap, pgno: u32, buf: &mut [u8]) -> Result<(), EngineError> {
        let n = match map.wal_pages.get(&pgno) {
            Some(&frame) => self.files.read_wal(frame + FRAME_HEADER_SIZE as u64, buf),
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

    fn sums_of(&self, map: &StateMap) -> Result<PageSums, EngineError> {
        let mut sums = PageSums::new(self.page_size);
        sums.resize(map.commit);
        let lock = lock_pgno(self.page_size);
        let mut buf = vec![0u8; self.page_size as usize];
        for pgno in 1..=map.commit {
            if pgno != lock {
                self.read_page(map, pgno, &mut buf)?;
                sums.set(pgno, page_checksum(pgno, &buf));
            }
        }
        Ok(sums)
    }

    /// The file right after `newest` that a listing did not show: a level-0 file of the next
    /// TXID, or a level-9 snapshot ending there.
    async fn probe_next(&self, newest: Option<&FileInfo>) -> Result<Option<FileInfo>, EngineError> {
        let next = newest.map_or(1, |f| f.max_txid + 1);
        for (level, min_txid) in [(0u8, next), (SNAPSHOT_LEVEL, 1)] {
            let mut info = FileInfo {
                level,
                min_txid,
                max_txid: next,
                size: 0,
                created_ms: 0,
            };
            match self.replica.store.head(&self.replica.key(&info)).await {
                Ok(meta) => {
                    info.size = meta.size;
                    info.created_ms = meta.timestamp_ms;
                    tracing::info!(file = %info, "found a file the listing did not show");
                    return Ok(Some(info));
                }
                Err(e) if e.kind == StoreErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// [`Self::recover_position_once`], repeated while the WAL moved under the read: the
    /// application may commit (even restart the WAL, when our read lock is on the database file
    /// alone) while we read, and a proof or snapshot read across that is torn (found by
    /// sluice-sim seed 162: a snapshot written while the application committed).
    async fn recover_position(&mut self) -> Result<Option<Prepared>, EngineError> {
        const ATTEMPTS: u32 = 3;
        for _ in 0..ATTEMPTS {
            let before = self.wal_fingerprint()?;
            let result = self.recover_position_once().await?;
            let after = self.wal_fingerprint()?;
            // Appended commits are harmless (frames are only appended within a generation and
            // the read used the frames before them); a new generation, or a committed chain
            // that no longer reaches as far, means frames we read were overwritten.
            let intact = match (before, after) {
                (None, None) => true,
                (Some((h, end)), Some((h2, end2))) => h == h2 && end2 >= end,
                _ => false,
            };
            if intact || planted::active(Bug::SkipRecoveryRecheck) {
                return Ok(result);
            }
            tracing::debug!(db = %self.cfg.db_path.display(), "WAL changed while recovering the position; reading again");
        }
        Err(EngineError::Database {
            path: self.cfg.db_path.clone(),
            message: format!(
                "the WAL changed during each of {ATTEMPTS} attempts to read a consistent state; will retry"
            ),
        })
    }

    /// The WAL's generation and where its committed frames end. The same generation before and
    /// after a read, with the committed frames reaching at least as far, means nothing the read
    /// used was rewritten (within a generation committed frames are only appended).
    fn wal_fingerprint(&self) -> Result<Option<(WalHeader, u64)>, EngineError> {
        let (header, _) = self.wal_header()?;
        let Some(h) = header else { return Ok(None) };
        let c = self.scan(&mut WalScanner::new(h), u64::MAX)?;
        Ok(Some((h, c.end_offset)))
    }

    /// Finds the replica's newest file and proves how the local database relates to it.
    async fn recover_position_once(&mut self) -> Result<Option<Prepared>, EngineError> {
        let files = self.replica.list_all().await?;
        self.read_stamp = self.files.db_stamp().map_err(|e| self.io_err(e))?;
        let (header, _) = self.wal_header()?;
        let all = match header {
            Some(h) => Some((h, self.scan(&mut WalScanner::new(h), u64::MAX)?)),
            None => None,
        };
        let current = self.state_map(all.as_ref().map(|(_, c)| c))?;
        let current_sums = self.sums_of(&current)?;
        let current_wal = all.as_ref().map(|(h, c)| WalPos {
            header: *h,
            offset: c.end_offset,
            checksum: c.end_checksum,
        });
        let mut newest = files
            .iter()
            .max_by_key(|f| (f.max_txid, std::cmp::Reverse(f.level)))
            .cloned();
        // A listing may lag behind writes (some S3-compatible stores): look past it with HEADs,
        // which see every acknowledged write, for the files a sync or a start would write next.
        while let Some(next) = self.probe_next(newest.as_ref()).await? {
            newest = Some(next);
        }
        let Some(newest) = newest else {
            // An empty replica: the first file is a full snapshot at TXID 1.
            tracing::info!(replica = %self.replica.describe(), "replica is empty; shipping a snapshot");
            return self
                .prepare_full(&current, current_sums, current_wal, 0, 0)
                .map(Some);
        };
        let (rh, post) = self.read_file_ends(&newest).await?;
        if rh.page_size != self.page_size {
            return Err(EngineError::Incompatible {
                replica: self.replica.describe(),
                message: format!(
                    "holds pages of {} bytes but the database uses {}",
                    rh.page_size, self.page_size
                ),
            });
        }
        let replica_sum = DbChecksum::from_raw(post);
        let mut proven = None;
        if post != 0 {
            // (a) Same WAL generation: the state at the replica's WAL offset.
            if let Some((h, _)) = &all
                && (rh.wal_salt1, rh.wal_salt2) == (h.salt1, h.salt2)
                && rh.wal_offset > 0
            {
                let end = u64::try_from(rh.wal_offset + rh.wal_size).unwrap_or(0);
                let mut sc = WalScanner::new(*h);
                let upto = self.scan(&mut sc, end.saturating_sub(WAL_HEADER_SIZE as u64).max(1))?;
                if upto.end_offset == end {
                    let map = self.state_map(Some(&upto))?;
                    let sums = self.sums_of(&map)?;
                    if sums.total() == replica_sum {
                        let wal = WalPos {
                            header: *h,
                            offset: upto.end_offset,
                            checksum: upto.end_checksum,
                        };
                        proven = Some((sums, Some(wal)));
                    }
                }
            }
            // (b) The WAL restarted (or is gone) since: the database file alone.
            let restarted = all
                .as_ref()
                .is_none_or(|(h, _)| (rh.wal_salt1, rh.wal_salt2) != (h.salt1, h.salt2));
            if proven.is_none() && restarted {
                let map = self.state_map(None)?;
                let sums = self.sums_of(&map)?;
                if sums.total() == replica_sum {
                    let wal = all.as_ref().map(|(h, _)| WalPos {
                        header: *h,
                        offset: WAL_HEADER_SIZE as u64,
                        checksum: h.checksum,
                    });
                    proven = Some((sums, wal));
                }
            }
            // (c) Nothing changed at all.
            if proven.is_none() && current_sums.total() == replica_sum {
                proven = Some((current_sums.clone(), current_wal));
            }
        }
        match proven {
            Some((sums, wal)) => {
                tracing::info!(
                    txid = format_args!("{:016x}", newest.max_txid),
                    "resuming replication"
                );
                self.pos = self.pos.follow(
                    newest.max_txid - u64::from(planted::active(Bug::ReuseTxidAfterRestart)),
                    replica_sum,
                    wal,
                    self.read_stamp,
                );
                self.sums = sums;
            }
            None => {
                tracing::warn!(
                    replica = %self.replica.describe(),
                    txid = format_args!("{:016x}", newest.max_txid),
                    "cannot prove the local database continues the replica; shipping every page"
                );
                return self
                    .prepare_full(&current, current_sums, current_wal, newest.max_txid, post)
                    .map(Some);
            }
        }
        Ok(None)
    }

    /// Reads a replica file's header and trailer with two ranged reads.
    async fn read_file_ends(&self, f: &FileInfo) -> Result<(Header, u64), EngineError> {
        let key = self.replica.key(f);
        let head = self
            .replica
            .store
            .get_range(&key, 0, HEADER_SIZE as u64)
            .await?;
        let tail = self
            .replica
            .store
            .get_range(
                &key,
                f.size.saturating_sub(TRAILER_SIZE as u64),
                TRAILER_SIZE as u64,
            )
            .await?;
        let bad = |m: String| EngineError::Replica {
            replica: self.replica.describe(),
            message: format!("{f}: {m}"),
        };
        let head: [u8; HEADER_SIZE] = head
            .try_into()
            .map_err(|_| bad("shorter than an LTX header".into()))?;
        let header = Header::decode(&head).map_err(|e| bad(e.to_string()))?;
        let tail: [u8; TRAILER_SIZE] = tail
            .try_into()
            .map_err(|_| bad("shorter than an LTX trailer".into()))?;
        let mut post = [0u8; 8];
        post.copy_from_slice(&tail[..8]);
        let trailer = crate::ltx::Trailer {
            post_apply_checksum: u64::from_be_bytes(post),
            file_checksum: 0,
        };
        // Zero when the file records no database checksum (Litestream's files).
        Ok((
            header,
            header.db_checksums(&trailer).map_or(0, |(_, post)| post),
        ))
    }

    fn wal_fields(wal: Option<&WalPos>, start: u64) -> (i64, i64, u32, u32) {
        match wal {
            Some(w) => {
                let start = start.min(w.offset);
                (
                    i64::try_from(start).unwrap_or(0),
                    i64::try_from(w.offset - start).unwrap_or(0),
                    w.header.salt1,
                    w.header.salt2,
                )
            }
            None => (0, 0, 0, 0),
        }
    }

    /// Ships a full snapshot of `map`. With an empty replica it is level-0 TXID 1 (as Litestream
    /// starts); otherwise a level-9 snapshot covering 1..=after+1.
    /// Every page of the current state as one level-0 file at TXID `after + 1`: a snapshot
    /// (`1..=1`, `after_checksum` 0) on an empty replica, otherwise an incremental file over the
    /// replica's newest state (`after_checksum`), which holds every page, so it is right whatever that state was.
    /// It stays at level 0, under the conditional PUT: a zombie writer of a replaced host and
    /// this start cannot both claim the TXID (a level-9 snapshot `1..=N` and a level-0 `N`
    /// could coexist, and the chain would fork; found by sluice-sim's zombie writer). The
    /// driver's snapshots (level 9) follow on their schedule.
    fn prepare_full(
        &self,
        map: &StateMap,
        sums: PageSums,
        wal: Option<WalPos>,
        after: u64,
        after_checksum: u64,
    ) -> Result<Prepared, EngineError> {
        let txid = after + 1;
        let min_txid = if after == 0 { 1 } else { txid };
        let (wal_offset, wal_size, salt1, salt2) =
            Self::wal_fields(wal.as_ref(), WAL_HEADER_SIZE as u64);
        let header = self.file_header(
            map.commit,
            (min_txid, txid),
            (wal_offset, wal_size, salt1, salt2),
            after_checksum,
            sums.total(),
        );
        let mut enc = Encoder::new(Vec::new(), header)?;
        let lock = lock_pgno(self.page_size);
        let mut buf = vec![0u8; self.page_size as usize];
        for pgno in (1..=map.commit).filter(|&p| p != lock) {
            self.read_page(map, pgno, &mut buf)?;
            enc.encode_page(pgno, &buf)?;
        }
        let (bytes, _) = enc.finish(None)?;
        Ok(Prepared {
            min_txid,
            bytes,
            timestamp_ms: header.timestamp_ms,
            pos: self.pos.follow(txid, sums.total(), wal, self.read_stamp),
            sums,
        })
    }

    /// The header of a file sluice writes: the no-checksum flag, so Litestream restores it, and
    /// sluice's database checksums in the reserved bytes (see `ltx::ExtChecksums`).
    fn file_header(
        &self,
        commit: u32,
        (min_txid, max_txid): (u64, u64),
        (wal_offset, wal_size, wal_salt1, wal_salt2): (i64, i64, u32, u32),
        pre: u64,
        post: DbChecksum,
    ) -> Header {
        Header {
            flags: HEADER_FLAG_NO_CHECKSUM,
            page_size: self.page_size,
            commit,
            min_txid,
            max_txid,
            timestamp_ms: self.clock.now_ms(),
            pre_apply_checksum: 0,
            wal_offset,
            wal_size,
            wal_salt1,
            wal_salt2,
            node_id: 0,
            ext: Some(ExtChecksums {
                pre,
                post: post.raw(),
            }),
        }
    }

    /// Uploads a prepared file; only once the store acknowledges it does the position move.
    async fn upload(&mut self, p: Prepared) -> Result<FileInfo, EngineError> {
        if planted::active(Bug::AckBeforeUpload) {
            let info = FileInfo {
                level: 0,
                min_txid: p.min_txid,
                max_txid: p.pos.txid,
                size: p.bytes.len() as u64,
                created_ms: p.timestamp_ms,
            };
            let key = self.replica.key(&info);
            self.pos = p.pos;
            self.sums = p.sums;
            let _ = self
                .replica
                .store
                .put(
                    &key,
                    p.bytes,
                    crate::store::PutOptions {
                        timestamp_ms: info.created_ms,
                        ..Default::default()
                    },
                )
                .await;
            return Ok(info);
        }
        let mode = if self.create_uploads {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        let written = self
            .replica
            .write(0, p.min_txid, p.pos.txid, p.bytes, p.timestamp_ms, mode)
            .await;
        let info = match written {
            Ok(info) => info,
            Err(e) if e.kind == StoreErrorKind::AlreadyExists => {
                self.recover_needed = true;
                return Err(EngineError::Replica {
                    replica: self.replica.describe(),
                    message: format!(
                        "TXID {:016x} already exists (an earlier attempt whose reply was lost, another replicator, or a listing that lagged); re-reading the replica's position",
                        p.pos.txid
                    ),
                });
            }
            Err(e) if mode == PutMode::Create && e.kind == StoreErrorKind::Permanent => {
                // A store without conditional writes: carry on unprotected, and say so.
                tracing::warn!(error = %e, replica = %self.replica.describe(), "the store refused a conditional write; uploading without If-None-Match from now on (a second writer could replace files)");
                self.create_uploads = false;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        self.pos = p.pos;
        self.sums = p.sums;
        Ok(info)
    }

    /// One sync: read what changed since the replica's position and ship it as one file.
    ///
    /// The read transaction is held only while reading and encoding, never during the upload
    /// or between syncs: a reader that never lets go starves the application's RESTART and
    /// TRUNCATE checkpoints, which hold the write lock while they wait (Litestream #724). Frames
    /// overwritten between syncs are caught by the continuity checks instead.
    pub async fn sync(&mut self) -> Result<SyncOutcome, EngineError> {
        let mut outcome = SyncOutcome::default();
        if self.recover_needed {
            self.begin_read()?;
            let prepared = self.recover_position().await;
            let released = self.end_read();
            let prepared = prepared?;
            released?;
            self.recover_needed = false;
            if let Some(p) = prepared {
                outcome.resynced = true;
                outcome.shipped = Some(self.upload(p).await?);
                return Ok(outcome);
            }
        }
        self.begin_read()?;
        let prepared = self.prepare_sync(&mut outcome);
        let released = self.end_read();
        let (prepared, wal_len) = prepared?;
        released?;
        if let Some(p) = prepared {
            outcome.shipped = Some(self.upload(p).await?);
        }
        outcome.checkpoint = self.maybe_checkpoint(wal_len)?;
        Ok(outcome)
    }

    /// Reads what changed and encodes it, under the read transaction. Also returns the WAL
    /// size seen, for the checkpoint decision.
    fn prepare_sync(
        &mut self,
        outcome: &mut SyncOutcome,
    ) -> Result<(Option<Prepared>, u64), EngineError> {
        self.read_stamp = self.files.db_stamp().map_err(|e| self.io_err(e))?;
        let (header, wal_len) = self.wal_header()?;
        let plan = state::plan_sync(&self.pos, header, wal_len, self.read_stamp);
        tracing::trace!(
            plan = plan.name(),
            txid = self.pos.txid,
            wal_len,
            salt1 = header.map(|h| h.salt1),
            pos_salt1 = self.pos.wal.map(|w| w.header.salt1),
            pos_offset = self.pos.wal.map(|w| w.offset),
            "sync"
        );
        // For an old tail read beside a new generation: the tail's scanner, where and with
        // which checksum the tail ended, and the new generation's header.
        let mut tail_check: Option<(WalScanner, u64, (u32, u32), WalHeader)> = None;
        let batch = match plan {
            SyncPlan::Idle => None,
            SyncPlan::Continue(mut sc) | SyncPlan::FromStart(mut sc) => {
                let start = sc.offset();
                let c = self.scan(&mut sc, self.cfg.sync_wal_bytes_max)?;
                outcome.more = c.end_offset - start >= self.cfg.sync_wal_bytes_max;
                let wal = WalPos {
                    header: *sc.header(),
                    offset: c.end_offset,
                    checksum: c.end_checksum,
                };
                if c.transactions == 0 {
                    // Following a new, still empty WAL generation changes no state.
                    self.pos = self.pos.follow(
                        self.pos.txid,
                        self.pos.checksum,
                        Some(wal),
                        self.read_stamp,
                    );
                    None
                } else {
                    Some((
                        self.state_map(Some(&c))?,
                        c.pages.keys().copied().collect::<Vec<_>>(),
                        Some(wal),
                        start,
                    ))
                }
            }
            SyncPlan::OldTailThenNew { mut old, mut new } => {
                let n = self.scan(&mut new, u64::MAX)?;
                // The new generation overwrites the file from the start, with uncommitted frames
                // too (a transaction spills before it commits), and a torn frame may follow its
                // last valid one: the old tail is intact only if all that ends before it.
                let written = scan_extent(WalScanner::new(*new.header()), |off, buf| {
                    self.files.read_wal(off, buf)
                })
                .map_err(|e| self.io_err(e))?;
                // Where the old generation's valid frames end, the next frame must not be the
                // new generation's: a transaction of the new generation that spilled and rolled
                // back leaves frames no valid chain reaches, yet they overwrote the old tail
                // (found by the simulator, seed 1239).
                let old_end = scan_extent(old, |off, buf| self.files.read_wal(off, buf))
                    .map_err(|e| self.io_err(e))?;
                let mut next = [0u8; FRAME_HEADER_SIZE];
                let got = self
                    .files
                    .read_wal(old_end, &mut next)
                    .map_err(|e| self.io_err(e))?;
                let salt = |at: usize| {
                    u32::from_be_bytes([next[at], next[at + 1], next[at + 2], next[at + 3]])
                };
                let tail_overwritten = got == FRAME_HEADER_SIZE
                    && (salt(8), salt(12)) == (new.header().salt1, new.header().salt2);
                if n.end_offset > old.offset()
                    || written + new.header().frame_size() > old.offset()
                    || tail_overwritten
                {
                    self.resync_batch(header, outcome)?
                } else {
                    let tail_start = old;
                    let mut t = self.scan(&mut old, u64::MAX)?;
                    tracing::trace!(
                        old_offset = tail_start.offset(),
                        old_end,
                        written,
                        new_end = n.end_offset,
                        tail_end = t.end_offset,
                        tail_pages = t.pages.len(),
                        new_pages = n.pages.len(),
                        "old tail then new"
                    );
                    if planted::active(Bug::DropOldTail) {
                        t.pages.clear();
                    }
                    // Checked again once the pages are read: the new generation may grow over
                    // the old tail meanwhile.
                    tail_check = Some((tail_start, t.end_offset, t.end_checksum, *new.header()));
                    let mut map = self.state_map(None)?;
                    // The old generation's tail happened before the new generation.
                    for c in [&t, &n] {
                        if let Some(size) = c.commit_size {
                            map.commit = size;
                        }
                    }
                    // Old-tail frames are superseded by new-generation frames of the same page.
                    let mut tail_pages = t.pages.clone();
                    tail_pages.retain(|p, _| !n.pages.contains_key(p) && *p <= map.commit);
                    let mut changed: Vec<u32> =
                        tail_pages.keys().chain(n.pages.keys()).copied().collect();
                    changed.sort_unstable();
                    changed.dedup();
                    let mut wal_pages = n.pages.clone();
                    // Tail pages are read from the old generation's frames, still in the file.
                    wal_pages.extend(tail_pages);
                    map.wal_pages = wal_pages;
                    let wal = WalPos {
                        header: *new.header(),
                        offset: n.end_offset,
                        checksum: n.end_checksum,
                    };
                    if changed.is_empty() && map.commit == self.sums.commit() {
                        self.pos = self.pos.follow(
                            self.pos.txid,
                            self.pos.checksum,
                            Some(wal),
                            self.read_stamp,
                        );
                        None
                    } else {
                        Some((map, changed, Some(wal), WAL_HEADER_SIZE as u64))
                    }
                }
            }
            SyncPlan::Resync => self.resync_batch(header, outcome)?,
        };
        let prepared = match batch {
            Some((map, changed, wal, start)) => {
                Some(self.prepare_incremental(&map, &changed, wal, start)?)
            }
            None => None,
        };
        // Nothing we read may have been overwritten while we read it. Within one WAL
        // generation frames are only appended, and an overwritten frame never validates again,
        // so checking at the end covers the whole read. If anything moved, ship nothing now and
        // let the next sync take the path the new WAL calls for.
        let (after, _) = self.wal_header()?;
        // The whole header: salts, and the checksum a rewritten header of the same salts changes.
        let salts = |h: Option<WalHeader>| h.map(|h| (h.salt1, h.salt2, h.checksum));
        let mut intact = salts(after) == salts(header);
        if let Some((mut sc, end, sum, new_header)) = tail_check {
            // The new generation must still end before the old tail. Comparing the tail with
            // itself is not enough: the application may commit between the checks above and
            // the tail's own scan, overwriting the tail's start, and then both scans agree on
            // a tail cut short (found by sluice-sim seed 185, a commit during an engine read).
            let tail_start = sc.offset();
            let written = scan_extent(WalScanner::new(new_header), |off, buf| {
                self.files.read_wal(off, buf)
            })
            .map_err(|e| self.io_err(e))?;
            intact &= written + new_header.frame_size() <= tail_start
                || planted::active(Bug::SkipTailRemeasure);
            let again = self.scan(&mut sc, u64::MAX)?;
            intact &= (again.end_offset, again.end_checksum) == (end, sum);
        }
        if !intact {
            tracing::debug!(db = %self.cfg.db_path.display(), "WAL changed under the read; retrying");
            outcome.more = true;
            return Ok((None, wal_len));
        }
        Ok((prepared, wal_len))
    }

    /// Compares the whole current database with the replica's state: the changed pages.
    #[expect(
        clippy::type_complexity,
        reason = "a private tuple consumed right away by sync"
    )]
    fn resync_batch(
        &mut self,
        header: Option<WalHeader>,
        outcome: &mut SyncOutcome,
    ) -> Result<Option<(StateMap, Vec<u32>, Option<WalPos>, u64)>, EngineError> {
        outcome.resynced = true;
        let all = match header {
            Some(h) => Some((h, self.scan(&mut WalScanner::new(h), u64::MAX)?)),
            None => None,
        };
        let map = self.state_map(all.as_ref().map(|(_, c)| c))?;
        let sums = self.sums_of(&map)?;
        let changed = sums
            .diff(&self.sums)
            .into_iter()
            .filter(|&p| p <= map.commit)
            .collect::<Vec<_>>();
        let wal = all.as_ref().map(|(h, c)| WalPos {
            header: *h,
            offset: c.end_offset,
            checksum: c.end_checksum,
        });
        tracing::info!(db = %self.cfg.db_path.display(), pages = changed.len(), "WAL continuity lost (checkpoint or restart by another process); shipping the pages that differ");
        if changed.is_empty() && map.commit == self.sums.commit() {
            // Nothing differs: follow the current WAL (or none) from here.
            self.pos = self
                .pos
                .follow(self.pos.txid, self.pos.checksum, wal, self.read_stamp);
            return Ok(None);
        }
        Ok(Some((map, changed, wal, WAL_HEADER_SIZE as u64)))
    }

    /// Encodes and uploads the pages `changed` of state `map` as the next level-0 file, then
    /// advances the position. Pages the database grew by without a frame are read from the file.
    fn prepare_incremental(
        &self,
        map: &StateMap,
        changed: &[u32],
        wal: Option<WalPos>,
        start: u64,
    ) -> Result<Prepared, EngineError> {
        let lock = lock_pgno(self.page_size);
        let old_commit = self.sums.commit();
        let mut pages: Vec<u32> = changed
            .iter()
            .copied()
            .filter(|&p| p <= map.commit && p != lock)
            .collect();
        pages.extend((old_commit + 1..=map.commit).filter(|p| *p != lock));
        pages.sort_unstable();
        pages.dedup();
        let mut sums = self.sums.clone();
        sums.resize(map.commit);
        let mut buf = vec![0u8; self.page_size as usize];
        // First pass: the post-apply checksum goes in the header, so it is needed up front.
        for &pgno in &pages {
            self.read_page(map, pgno, &mut buf)?;
            sums.set(pgno, page_checksum(pgno, &buf));
        }
        let txid = self.pos.txid + 1;
        let (wal_offset, wal_size, salt1, salt2) = Self::wal_fields(wal.as_ref(), start);
        let header = self.file_header(
            map.commit,
            (txid, txid),
            (wal_offset, wal_size, salt1, salt2),
            self.pos.checksum.raw(),
            sums.total(),
        );
        let mut enc = Encoder::new(Vec::new(), header)?;
        // Second pass: encode. The pages cannot change in between: the read transaction pins
        // the WAL frames and the database pages they shadow.
        for &pgno in &pages {
            self.read_page(map, pgno, &mut buf)?;
            enc.encode_page(pgno, &buf)?;
        }
        let (bytes, _) = enc.finish(None)?;
        Ok(Prepared {
            min_txid: txid,
            bytes,
            timestamp_ms: header.timestamp_ms,
            pos: self.pos.follow(txid, sums.total(), wal, self.read_stamp),
            sums,
        })
    }

    fn maybe_checkpoint(&mut self, wal_len: u64) -> Result<Option<CheckpointPlan>, EngineError> {
        let frame = u64::from(self.page_size) + FRAME_HEADER_SIZE as u64;
        let frames = wal_len.saturating_sub(WAL_HEADER_SIZE as u64) / frame;
        let now = self.clock.now_ms();
        let plan =
            state::plan_checkpoint(&self.cfg.checkpoint, frames, now - self.last_checkpoint_ms);
        let mode = match plan {
            CheckpointPlan::None => return Ok(None),
            CheckpointPlan::Passive => "PASSIVE",
            CheckpointPlan::Truncate => "TRUNCATE",
        };
        self.checkpoint(mode)?;
        self.last_checkpoint_ms = now;
        Ok(Some(plan))
    }

    /// Runs a checkpoint on the engine's connection. The read lock is released for it (a reader
    /// would block it) and taken again afterwards. A busy database is not an error.
    pub fn checkpoint(&mut self, mode: &str) -> Result<(), EngineError> {
        let r: rusqlite::Result<(i64, i64, i64)> =
            self.conn()
                .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                });
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
