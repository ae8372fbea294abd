//! `sluice restore -f`: a read replica on another host. After the restore, the output database
//! is kept current: every poll interval the replica is listed and each file that continues the
//! output's TXID is downloaded, checked (CRC, and the database checksums it records before and
//! after) and applied.
//!
//! Applied through SQLite, not beside it: each file's pages go in one write transaction through
//! the `sqlite_dbpage` virtual table (a truncation, when the database shrank, last). SQLite
//! writes them to the output's WAL like any transaction, so an application reading the output
//! sees the state before a file or after it, never a mix, and never waits longer than one
//! file's transaction. (Writing pages into the file directly, as Litestream's follow mode does,
//! lets a reader see half a file.) The output must not be written by anything else.
//!
//! Where the replica cannot be continued (retention removed files the follower still needed, a
//! new lineage whose TXIDs are behind ours, a file that does not match the database we have),
//! the follower says so in the log and its metrics (`restore -f -addr`) and re-seeds from the
//! replica's newest snapshot through the same transactions, so a reader still sees only whole
//! states.
//!
//! One part of page 1 is SQLite's own: a writer stamps its change counter and version numbers
//! (bytes 24..28 and 92..100) into page 1 whenever it writes it, so the follower's copy carries
//! its own SQLite's stamp there, not the source's; every other byte is the source's. The
//! follower's checksums are the source's state (the stamp it applied), which is what the files'
//! checksums are checked against.
//!
//! `<output>-sluice-follow` records the TXID, the database checksum reached and that stamp: a
//! follower restarted on its own output continues from there when the output's checksum still
//! matches, and re-seeds otherwise.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::checksum::{DbChecksum, PageSums, page_checksum};
use crate::ltx::LtxError;
use crate::replica::{FileInfo, Replica};
use crate::restore::{self, Fetched, Image, RestoreError, Target};
use crate::scratch::Scratch;

/// The poll interval when `-follow-interval` is not given (Litestream's default).
pub const FOLLOW_INTERVAL_DEFAULT_MS: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("follow {path}: {message}")]
    Sqlite { path: PathBuf, message: String },
}

/// The sidecar recording where a follower's output is.
pub fn state_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push("-sluice-follow");
    PathBuf::from(s)
}

/// The bytes of page 1 a writing SQLite stamps itself: the change counter (24..28), the
/// version-valid-for number and the SQLite version (92..100).
const STAMP_RANGES: [std::ops::Range<usize>; 2] = [24..28, 92..100];
type Stamp = [u8; 12];

fn stamp_of(page1: &[u8]) -> Stamp {
    let mut s = [0u8; 12];
    s[..4].copy_from_slice(&page1[STAMP_RANGES[0].clone()]);
    s[4..].copy_from_slice(&page1[STAMP_RANGES[1].clone()]);
    s
}

fn with_stamp(page1: &mut [u8], stamp: &Stamp) {
    page1[STAMP_RANGES[0].clone()].copy_from_slice(&stamp[..4]);
    page1[STAMP_RANGES[1].clone()].copy_from_slice(&stamp[4..]);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the follower's sidecar says: the TXID, the database checksum at it and the source's
/// page-1 stamp.
fn read_state(out: &Path) -> Option<(u64, u64, Stamp)> {
    let text = std::fs::read_to_string(state_path(out)).ok()?;
    let mut words = text.split_whitespace();
    let txid = u64::from_str_radix(words.next()?, 16).ok()?;
    let sum = u64::from_str_radix(words.next()?, 16).ok()?;
    let stamp_hex = words.next()?;
    let mut stamp = [0u8; 12];
    for (i, b) in stamp.iter_mut().enumerate() {
        *b = u8::from_str_radix(stamp_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((txid, sum, stamp))
}

fn write_state(out: &Path, txid: u64, sum: DbChecksum, stamp: &Stamp) -> std::io::Result<()> {
    let path = state_path(out);
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!("{txid:016x} {:016x} {}\n", sum.raw(), hex(stamp)),
    )?;
    std::fs::rename(tmp, path)
}

/// The output database, open for applying files, and what it holds.
pub struct Follower {
    conn: Connection,
    out: PathBuf,
    sums: PageSums,
    /// The TXID the output is at; 0 when it must be seeded from a snapshot.
    txid: u64,
    /// The source's stamp on the page 1 last applied (see the module documentation).
    stamp: Stamp,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("out", &self.out)
            .field("txid", &self.txid)
            .finish_non_exhaustive()
    }
}

/// A transaction on the output as a restore image: pages through `sqlite_dbpage`, their
/// checksums kept in the follower's table.
struct DbPageImage<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    sums: &'a mut PageSums,
    /// The stamp of page 1, if this file sets it.
    stamp: Option<Stamp>,
}

fn sql_io(e: rusqlite::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Image for DbPageImage<'_> {
    fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
        let page_size = u64::from(self.sums.page_size());
        if data.len() as u64 != page_size || !offset.is_multiple_of(page_size) {
            return Err(std::io::Error::other(format!(
                "a write of {} bytes at {offset} is not one page of {page_size} bytes",
                data.len()
            )));
        }
        let pgno = u32::try_from(offset / page_size + 1).map_err(std::io::Error::other)?;
        self.tx
            .execute(
                "INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)",
                rusqlite::params![pgno, data],
            )
            .map_err(sql_io)?;
        self.sums.set(pgno, page_checksum(pgno, data));
        if pgno == 1 {
            self.stamp = Some(stamp_of(data));
        }
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        let pages =
            u32::try_from(len / u64::from(self.sums.page_size())).map_err(std::io::Error::other)?;
        let current: u32 = self
            .tx
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(sql_io)?;
        if pages < current && pages >= 1 {
            // Truncates to `pages` at commit; must be the transaction's last write.
            self.tx
                .execute(
                    "INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, NULL)",
                    [pages + 1],
                )
                .map_err(sql_io)?;
        }
        self.sums.resize(pages);
        Ok(())
    }

    fn db_checksum(&mut self, _page_size: u32) -> std::io::Result<DbChecksum> {
        Ok(self.sums.total())
    }
}

impl Follower {
    /// Opens `out` (a database this process restored, or a follower's earlier output) and
    /// reads the checksum of every page once. `txid` is where it is, if known; otherwise the
    /// sidecar decides, and without one the follower seeds from the newest snapshot.
    pub fn open(out: &Path, txid: Option<u64>) -> Result<Follower, FollowError> {
        let sql = |e: rusqlite::Error| FollowError::Sqlite {
            path: out.to_path_buf(),
            message: e.to_string(),
        };
        let conn = Connection::open(out).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(sql)?;
        let page_size: u32 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(sql)?;
        let probe: rusqlite::Result<Option<i64>> = conn
            .query_row("SELECT pgno FROM sqlite_dbpage WHERE pgno = 1", [], |r| {
                r.get(0)
            })
            .optional();
        if let Err(e) = probe {
            return Err(FollowError::Sqlite {
                path: out.to_path_buf(),
                message: format!(
                    "this build's SQLite has no sqlite_dbpage table, which follow mode writes through ({e}); build with LIBSQLITE3_FLAGS=-DSQLITE_ENABLE_DBPAGE_VTAB (the repository's .cargo/config.toml sets it)"
                ),
            });
        }
        // A fresh restore's page 1 is the source's, stamp included; a follower's own output
        // carries its SQLite's stamp, and the sidecar the source's.
        let recorded = if txid.is_none() {
            read_state(out)
        } else {
            None
        };
        let mut sums = PageSums::new(page_size);
        let mut stamp = [0u8; 12];
        {
            let mut stmt = conn
                .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")
                .map_err(sql)?;
            let mut rows = stmt.query([]).map_err(sql)?;
            while let Some(row) = rows.next().map_err(sql)? {
                let pgno: u32 = row.get(0).map_err(sql)?;
                let mut data: Vec<u8> = row.get(1).map_err(sql)?;
                if pgno == 1 {
                    match &recorded {
                        Some((_, _, s)) => with_stamp(&mut data, s),
                        None => stamp = stamp_of(&data),
                    }
                }
                sums.set(pgno, page_checksum(pgno, &data));
            }
        }
        let txid = match txid {
            Some(t) => {
                // Recorded at once, so a follower stopped before its first file continues too.
                if let Err(e) = write_state(out, t, sums.total(), &stamp) {
                    tracing::warn!(error = %e, "cannot record the follower's TXID");
                }
                t
            }
            None => match recorded {
                Some((t, sum, s)) if sum == sums.total().raw() => {
                    stamp = s;
                    t
                }
                Some((t, _, _)) => {
                    tracing::warn!(
                        output = %out.display(),
                        txid = format!("{t:016x}"),
                        "the output changed since the follower recorded TXID; seeding it again from the newest snapshot"
                    );
                    0
                }
                None => 0,
            },
        };
        Ok(Follower {
            conn,
            out: out.to_path_buf(),
            sums,
            txid,
            stamp,
        })
    }

    pub fn txid(&self) -> u64 {
        self.txid
    }

    pub fn output(&self) -> &Path {
        &self.out
    }

    /// Applies one fetched file in one transaction, after checking it continues the output;
    /// on any failure the transaction is rolled back and the checksum table read again.
    pub fn apply(&mut self, fetched: &Fetched) -> Result<u64, FollowError> {
        let before = self.sums.total();
        let result = self.apply_in_transaction(fetched, before);
        if result.is_err() {
            // The transaction rolled back; the table may hold some of its pages.
            let fresh = Follower::open(&self.out, None)?;
            self.conn = fresh.conn;
            self.sums = fresh.sums;
            self.stamp = fresh.stamp;
            if fresh.txid != self.txid {
                self.txid = 0;
            }
        }
        result
    }

    fn apply_in_transaction(
        &mut self,
        fetched: &Fetched,
        before: DbChecksum,
    ) -> Result<u64, FollowError> {
        let sql = |e: rusqlite::Error| FollowError::Sqlite {
            path: self.out.clone(),
            message: e.to_string(),
        };
        let out = self.out.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| FollowError::Sqlite {
                path: out.clone(),
                message: e.to_string(),
            })?;
        let mut page = Vec::new();
        let mut image = DbPageImage {
            tx: &tx,
            sums: &mut self.sums,
            stamp: None,
        };
        let (h, checks) = restore::apply_one(&mut image, &out, fetched, &mut page)?;
        if let Some((pre, post)) = checks {
            let mismatch = |stored: u64, computed: u64| {
                FollowError::Restore(RestoreError::Ltx {
                    file: fetched.info.to_string(),
                    error: LtxError::DbChecksumMismatch { stored, computed },
                })
            };
            if !restore::checksum_continues(self.txid, before.raw(), h.min_txid, pre) {
                return Err(mismatch(pre, before.raw()));
            }
            let after = image.sums.total();
            if after.raw() != post {
                return Err(mismatch(post, after.raw()));
            }
        }
        let stamp = image.stamp;
        tx.commit().map_err(sql)?;
        self.txid = h.max_txid;
        if let Some(s) = stamp {
            self.stamp = s;
        }
        if let Err(e) = write_state(&self.out, self.txid, self.sums.total(), &self.stamp) {
            tracing::warn!(error = %e, "cannot record the follower's TXID");
        }
        Ok(self.txid)
    }
}

/// Why the follower seeds its output again from the newest snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reseed {
    /// The replica has newer TXIDs but no file continues the output's: retention removed what
    /// the follower still needed.
    Gap { txid: u64 },
    /// The replica's newest TXID is behind the output's: a new lineage.
    Lineage { txid: u64, newest: u64 },
    /// A file failed its checks against the output (see the log's error).
    Checks,
}

impl Reseed {
    /// Every reason's metric label, in [`Reseed::index`] order.
    pub const LABELS: [&'static str; 3] = ["gap", "lineage", "checks"];

    pub fn index(self) -> usize {
        match self {
            Reseed::Gap { .. } => 0,
            Reseed::Lineage { .. } => 1,
            Reseed::Checks => 2,
        }
    }
}

impl std::fmt::Display for Reseed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reseed::Gap { txid } => write!(
                f,
                "no file continues TXID {txid:016x} (retention removed what the follower still needed)"
            ),
            Reseed::Lineage { txid, newest } => write!(
                f,
                "the replica's newest TXID {newest:016x} is behind the output's {txid:016x} (a new lineage)"
            ),
            Reseed::Checks => write!(f, "a file does not continue the output"),
        }
    }
}

/// The files that take the output from `txid` as far as the replica goes: the chain that
/// continues it, or (when none does, or the replica is behind it) the newest snapshot and its
/// chain, to seed it again, with the reason. Empty when there is nothing new.
pub fn next_files(
    replica: &str,
    files: &[FileInfo],
    txid: u64,
) -> Result<(Vec<FileInfo>, Option<Reseed>), RestoreError> {
    if txid == 0 {
        return Ok((restore::plan(replica, files, Target::Latest)?, None));
    }
    let newest = files.iter().map(|f| f.max_txid).max().unwrap_or(0);
    let chain = restore::extend(files, txid, Target::Latest);
    let why = if newest < txid {
        Reseed::Lineage { txid, newest }
    } else if chain.is_empty() && newest > txid {
        Reseed::Gap { txid }
    } else {
        // What continues the output (a gap after it is judged at the next poll), or nothing.
        return Ok((chain, None));
    };
    Ok((restore::plan(replica, files, Target::Latest)?, Some(why)))
}

/// What a follower has done, for its metrics (`restore -f -addr`).
#[derive(Debug, Default)]
pub struct FollowStatus {
    pub output: PathBuf,
    pub replica: String,
    /// The TXID the output is at.
    pub txid: u64,
    pub files_applied: u64,
    /// Re-seeds by reason ([`Reseed::LABELS`]).
    pub reseeds: [u64; 3],
    /// Polls that failed (the replica did not answer, or a file could not be applied).
    pub poll_errors: u64,
    /// When a poll last ended with the output as current as the replica (wall-clock ms).
    pub current_at_ms: Option<i64>,
    pub requests: std::sync::Arc<crate::counting::RequestCounts>,
}

/// A follower's status, shared with the metrics endpoint.
pub type SharedFollowStatus = std::sync::Arc<std::sync::Mutex<FollowStatus>>;

fn update(status: &SharedFollowStatus, f: impl FnOnce(&mut FollowStatus)) {
    f(&mut status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner));
}

/// A poll lists level 0 only, where every new file first lands (one LIST on S3 instead of one per
/// level), unless level 0 is empty or shows a gap after the output ([`listing`]); every this many
/// polls it lists every level, which is how a follower notices what level 0 cannot show: a new lineage whose files
/// are all behind the output, or newer files that were compacted out of level 0 while it was
/// away (then it catches up within this many polls).
pub const FULL_LISTING_EVERY: u32 = 60;

/// Follows `replica` into `out` until `stop` resolves: polls every `interval`, applies what
/// continues the output, re-seeds where it cannot. A poll that fails (the store unreachable) is
/// logged and retried at the next.
pub async fn run(
    replica: &Replica,
    mut follower: Follower,
    interval: Duration,
    scratch: &dyn Scratch,
    status: &SharedFollowStatus,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), FollowError> {
    let mut stop = std::pin::pin!(stop);
    tracing::info!(
        output = %follower.out.display(),
        txid = format!("{:016x}", follower.txid),
        interval_ms = interval.as_millis() as u64,
        "following the replica"
    );
    let in_memory_max = scratch.in_memory_bytes_max();
    for poll in 0u32.. {
        let full = poll % FULL_LISTING_EVERY == 0;
        let polled = poll_once(replica, &mut follower, scratch, in_memory_max, full, status).await;
        let now_ms = chrono::Utc::now().timestamp_millis();
        update(status, |s| {
            s.txid = follower.txid;
            match &polled {
                Ok(()) => s.current_at_ms = Some(now_ms),
                Err(_) => s.poll_errors += 1,
            }
            if matches!(polled, Err(FollowError::Restore(RestoreError::Ltx { .. }))) {
                s.reseeds[Reseed::Checks.index()] += 1;
            }
        });
        if let Err(e) = polled {
            match e {
                FollowError::Restore(RestoreError::Store(ref s))
                    if s.kind == crate::store::StoreErrorKind::Transient =>
                {
                    tracing::warn!(error = %e, "follow: the replica did not answer; trying again at the next poll");
                }
                FollowError::Restore(RestoreError::ReplicaEmpty { .. }) => {
                    tracing::warn!(error = %e, "follow: the replica is empty");
                }
                e @ FollowError::Restore(RestoreError::Ltx { .. }) => {
                    tracing::error!(error = %e, "follow: a file does not continue the output; seeding it again from the newest snapshot");
                    follower.txid = 0;
                }
                e => return Err(e),
            }
        }
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(interval) => {}
        }
    }
    Ok(())
}

/// What one poll lists for an output at `txid`: level 0 alone when it continues the output
/// (`None` when it shows nothing newer), or every level when `full`, when the output is empty,
/// or when level 0 is empty or shows a gap after the output.
pub async fn listing(
    replica: &Replica,
    txid: u64,
    full: bool,
) -> Result<Option<Vec<FileInfo>>, crate::store::StoreError> {
    if !full && txid > 0 {
        let level0 = replica.list_level_untimed(0).await?;
        let newest = level0.iter().map(|f| f.max_txid).max();
        match newest {
            Some(n) if n <= txid => return Ok(None),
            Some(_) if !restore::extend(&level0, txid, Target::Latest).is_empty() => {
                return Ok(Some(level0));
            }
            _ => {}
        }
    }
    replica.list_all_untimed().await.map(Some)
}

async fn poll_once(
    replica: &Replica,
    follower: &mut Follower,
    scratch: &dyn Scratch,
    in_memory_max: u64,
    full: bool,
    status: &SharedFollowStatus,
) -> Result<(), FollowError> {
    let Some(files) = listing(replica, follower.txid, full)
        .await
        .map_err(RestoreError::from)?
    else {
        return Ok(());
    };
    let (todo, reseed) = next_files(&replica.describe(), &files, follower.txid)?;
    if let Some(why) = reseed {
        tracing::warn!(
            output = %follower.out.display(),
            reason = Reseed::LABELS[why.index()],
            "follow: {why}; seeding the output again from the newest snapshot"
        );
        update(status, |s| s.reseeds[why.index()] += 1);
    }
    for info in todo {
        let fetched = restore::fetch(replica, info, scratch, in_memory_max).await?;
        let txid = tokio::task::block_in_place(|| follower.apply(&fetched))?;
        update(status, |s| {
            s.files_applied += 1;
            s.txid = txid;
        });
        tracing::info!(
            file = %fetched.info,
            txid = format!("{txid:016x}"),
            "follow: applied"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(level: u8, min: u64, max: u64) -> FileInfo {
        FileInfo {
            level,
            min_txid: min,
            max_txid: max,
            size: 100,
            created_ms: 0,
        }
    }

    fn ranges(files: &[FileInfo]) -> Vec<(u8, u64, u64)> {
        files
            .iter()
            .map(|f| (f.level, f.min_txid, f.max_txid))
            .collect()
    }

    #[test]
    fn the_next_files_continue_the_output_or_seed_it_again() {
        let replica = [
            file(9, 1, 10),
            file(1, 1, 10),
            file(0, 11, 11),
            file(0, 12, 14),
        ];
        // Continues from where the output is; nothing to do at the end.
        let (next, why) = next_files("r", &replica, 10).expect("plan");
        assert_eq!((ranges(&next), why), (vec![(0, 11, 11), (0, 12, 14)], None));
        let (next, why) = next_files("r", &replica, 14).expect("plan");
        assert_eq!((ranges(&next), why), (vec![], None));
        // A compacted file overlapping the output's TXID continues it.
        let (next, _) = next_files("r", &[file(9, 1, 3), file(1, 1, 20)], 5).expect("plan");
        assert_eq!(ranges(&next), vec![(1, 1, 20)]);
        // Retention removed what the output needed: the newest snapshot and its chain.
        let gap = [file(9, 1, 30), file(0, 31, 31)];
        let (next, why) = next_files("r", &gap, 14).expect("plan");
        assert_eq!(ranges(&next), vec![(9, 1, 30), (0, 31, 31)]);
        assert_eq!(why, Some(Reseed::Gap { txid: 14 }));
        // A new lineage behind the output.
        let (next, why) = next_files("r", &[file(9, 1, 3)], 14).expect("plan");
        assert_eq!(ranges(&next), vec![(9, 1, 3)]);
        assert_eq!(
            why,
            Some(Reseed::Lineage {
                txid: 14,
                newest: 3
            })
        );
        // Seeding from nothing.
        let (next, why) = next_files("r", &replica, 0).expect("plan");
        assert_eq!(ranges(&next)[0], (9, 1, 10));
        assert_eq!(why, None);
    }

    #[tokio::test]
    async fn a_poll_lists_level_zero_and_every_level_only_when_it_must() {
        use std::sync::Arc;

        use crate::counting::{CountingStore, OPS, RequestCounts};
        use crate::replica::Layout;
        use crate::store::{MemStore, PutOptions};
        let counts = Arc::new(RequestCounts::default());
        let store = Arc::new(CountingStore::new(
            Arc::new(MemStore::new()),
            counts.clone(),
        ));
        let replica = Replica::new(store, Layout::File);
        for f in [
            file(9, 1, 10),
            file(1, 1, 10),
            file(0, 11, 11),
            file(0, 12, 14),
        ] {
            replica
                .store
                .put(&replica.key(&f), vec![0; 4], PutOptions::default())
                .await
                .expect("put");
        }
        let list = OPS.iter().position(|&op| op == "list").expect("a list op");
        let lists = |counts: &RequestCounts| counts.snapshot()[list].0;
        let mut polls = Vec::new();
        for (txid, full) in [
            (11, false),
            (12, false),
            (14, false),
            (20, false),
            (9, false),
            (11, true),
            (0, false),
        ] {
            let before = lists(&counts);
            let files = listing(&replica, txid, full).await.expect("listing");
            polls.push((lists(&counts) - before, files.map(|f| ranges(&f))));
        }
        let all = 1 + crate::replica::LEVEL_MAX as u64;
        let level0 = vec![(0, 11, 11), (0, 12, 14)];
        let every = vec![(0, 11, 11), (0, 12, 14), (1, 1, 10), (9, 1, 10)];
        assert_eq!(
            polls,
            vec![
                (1, Some(level0.clone())),      // level 0 continues 11
                (1, Some(level0)),              // and 12, from inside a file
                (1, None),                      // nothing newer than 14
                (1, None),                      // nor than 20 (a lineage shows at a full listing)
                (1 + all, Some(every.clone())), // a gap after 9: every level
                (all, Some(every.clone())),     // the periodic full listing
                (all, Some(every)),             // an empty output seeds from every level
            ]
        );
    }

    #[test]
    fn the_sidecar_round_trips_and_the_stamp_is_page_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("db");
        let stamp = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        write_state(&out, 0x2a, DbChecksum::from_raw(0xfeed), &stamp).expect("write");
        assert_eq!(read_state(&out), Some((0x2a, 0xfeed, stamp)));
        let mut page = vec![0u8; 4096];
        with_stamp(&mut page, &stamp);
        assert_eq!(stamp_of(&page), stamp);
        assert_eq!(&page[24..28], &[1, 2, 3, 4]);
        assert_eq!(&page[92..100], &[5, 6, 7, 8, 9, 10, 11, 12]);
        assert!(page[..24].iter().chain(&page[28..92]).all(|&b| b == 0));
    }
}
