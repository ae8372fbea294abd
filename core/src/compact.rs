//! Compaction, snapshots and retention on a replica.
//!
//! - Compaction merges the files of level `n-1` that follow level `n`'s newest file into one
//!   file at level `n` (newest copy of each page wins; pages past the final commit size drop).
//! - A snapshot merges the restore plan up to the replica's newest TXID into one level-9 file
//!   covering `1..=txid`, so it needs no local read of the live database.
//! - Retention ([`plan_retention`], pure) never removes what a restore to any time inside the
//!   retention window needs.
//!
//! Merging streams every input from disk (downloaded to a scratch directory when the store is
//! remote) and spools the output (`scratch::Spool`), so memory is one page per input plus a
//! bounded buffer.

use std::sync::Arc;

use crate::scratch::{Scratch, Spool, SpoolBody};

use crate::ltx::{Decoder, Encoder, ExtChecksums, HEADER_FLAG_NO_CHECKSUM, Header, LtxError};
use crate::replica::{FileInfo, Replica, SNAPSHOT_LEVEL};
use crate::restore::{self, Fetched, RestoreError, Target};
use crate::store::{PutMode, StoreErrorKind};

/// The most input files one compaction merges (the rest wait for the next run).
pub const COMPACTION_INPUTS_MAX: usize = 1024;
/// The read buffer of each merge input read from a file.
const MERGE_READ_BUFFER_BYTES: usize = 8 << 10;
/// The most bytes of inputs one compaction holds in memory (small files); the rest are fetched
/// into scratch files.
pub const COMPACTION_MEMORY_BYTES_MAX: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompactError {
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("{file}: {error}")]
    Ltx { file: String, error: LtxError },
    #[error("compacting {what}: {message}")]
    Invalid { what: String, message: String },
    /// An input cannot be read as what its name says (truncated, empty, foreign, a bad
    /// checksum, or not continuing the file before it): restores through it fail too.
    #[error("{file} is damaged: {message}")]
    Damaged { file: FileInfo, message: String },
}

impl CompactError {
    /// The input file this failure found damaged, if that is what failed.
    pub fn damaged(&self) -> Option<&FileInfo> {
        match self {
            CompactError::Damaged { file, .. } => Some(file),
            _ => None,
        }
    }
}

/// The failure of decoding `file`: damage, unless the local read itself failed.
fn input_error(file: &FileInfo, error: LtxError) -> CompactError {
    match error {
        LtxError::Io(error) => CompactError::Restore(RestoreError::Io {
            path: file.to_string().into(),
            error,
        }),
        error => CompactError::Damaged {
            file: file.clone(),
            message: error.to_string(),
        },
    }
}

struct Input<'a> {
    info: FileInfo,
    dec: Decoder<Box<dyn std::io::Read + 'a>>,
    page: Vec<u8>,
    pgno: Option<u32>,
}

impl Input<'_> {
    fn advance(&mut self) -> Result<(), CompactError> {
        self.pgno = self
            .dec
            .next_page(&mut self.page)
            .map_err(|error| input_error(&self.info, error))?;
        Ok(())
    }
}

/// Merges `inputs` (in TXID order, contiguous) into one file covering `min_txid..=max_txid`.
/// Blocking. Verifies every input's checksum and, when all inputs carry database checksums,
/// that they chain.
pub fn merge(
    inputs: &[Fetched],
    min_txid: u64,
    timestamp_ms: i64,
    known_post: Option<u64>,
    out: Spool,
) -> Result<(SpoolBody, Header), CompactError> {
    let what = || format!("{} files into {min_txid:016x}", inputs.len());
    let mut opened = Vec::with_capacity(inputs.len());
    for f in inputs {
        // A small buffer per input: a merge has up to `COMPACTION_INPUTS_MAX` of them.
        let reader = f.reader(MERGE_READ_BUFFER_BYTES)?;
        let dec = Decoder::new(reader).map_err(|error| input_error(&f.info, error))?;
        let h = dec.header();
        if (h.min_txid, h.max_txid) != (f.info.min_txid, f.info.max_txid) {
            return Err(CompactError::Damaged {
                file: f.info.clone(),
                message: format!(
                    "its header covers TXIDs {:016x}..={:016x}",
                    h.min_txid, h.max_txid
                ),
            });
        }
        let page = vec![0u8; dec.header().page_size as usize];
        opened.push(Input {
            info: f.info.clone(),
            dec,
            page,
            pgno: None,
        });
    }
    let (Some(first), Some(last)) = (opened.first(), opened.last()) else {
        return Err(CompactError::Invalid {
            what: what(),
            message: "no inputs".into(),
        });
    };
    let (fh, lh) = (*first.dec.header(), *last.dec.header());
    let sums = inputs
        .iter()
        .map(|f| f.checksums().map_err(|error| input_error(&f.info, error)))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, pair) in opened.windows(2).enumerate() {
        let (a, b) = (pair[0].dec.header(), pair[1].dec.header());
        if b.page_size != a.page_size || b.min_txid > a.max_txid + 1 || b.max_txid <= a.max_txid {
            return Err(CompactError::Damaged {
                file: pair[1].info.clone(),
                message: format!("its header does not follow {}", pair[0].info),
            });
        }
        // Both record checksums and b starts right after a: b must continue a's database.
        if let (Some((_, post)), Some((pre, _))) = (sums[i], sums[i + 1])
            && !restore::checksum_continues(a.max_txid, post, b.min_txid, pre)
        {
            return Err(CompactError::Damaged {
                file: pair[1].info.clone(),
                message: format!(
                    "it was written against a different database than {} produced",
                    pair[0].info
                ),
            });
        }
    }
    let snapshot = min_txid == 1;
    let ext = match (
        sums.first().copied().flatten(),
        sums.last().copied().flatten(),
    ) {
        (Some((pre, _)), Some((_, post))) if sums.iter().all(Option::is_some) => {
            Some(ExtChecksums {
                pre: if snapshot { 0 } else { pre },
                post,
            })
        }
        // A snapshot of inputs without checksums, whose resulting state the caller knows.
        _ => known_post
            .filter(|_| snapshot)
            .map(|post| ExtChecksums { pre: 0, post }),
    };
    let header = Header {
        flags: HEADER_FLAG_NO_CHECKSUM,
        page_size: fh.page_size,
        commit: lh.commit,
        min_txid,
        max_txid: lh.max_txid,
        timestamp_ms,
        ext,
        ..Header::default()
    };
    let mut enc = Encoder::new(out, header).map_err(|error| CompactError::Ltx {
        file: what(),
        error,
    })?;
    for i in &mut opened {
        i.advance()?;
    }
    while let Some(pgno) = opened.iter().filter_map(|i| i.pgno).min() {
        // The newest input holding this page wins.
        let winner = opened
            .iter()
            .rposition(|i| i.pgno == Some(pgno))
            .unwrap_or(0);
        if pgno <= header.commit {
            enc.encode_page(pgno, &opened[winner].page)
                .map_err(|error| CompactError::Ltx {
                    file: what(),
                    error,
                })?;
        }
        for i in opened.iter_mut().filter(|i| i.pgno == Some(pgno)) {
            i.advance()?;
        }
    }
    for i in opened {
        let info = i.info.clone();
        i.dec.finish().map_err(|error| input_error(&info, error))?;
    }
    let (spool, _) = enc.finish(None).map_err(|error| CompactError::Ltx {
        file: what(),
        error,
    })?;
    let body = spool.finish().map_err(|error| CompactError::Ltx {
        file: what(),
        error: error.into(),
    })?;
    Ok((body, header))
}

async fn fetch_all(
    replica: &Replica,
    files: Vec<FileInfo>,
    scratch: &dyn Scratch,
) -> Result<Vec<Fetched>, RestoreError> {
    let mut out = Vec::with_capacity(files.len());
    // Small inputs are held in memory up to a total budget; the rest go to scratch files.
    let mut budget = COMPACTION_MEMORY_BYTES_MAX;
    for f in files {
        let in_memory_max = if f.size <= budget.min(scratch.in_memory_bytes_max()) {
            budget -= f.size;
            scratch.in_memory_bytes_max()
        } else {
            0
        };
        out.push(restore::fetch(replica, f, scratch, in_memory_max).await?);
    }
    Ok(out)
}

async fn merge_and_write(
    replica: &Replica,
    inputs: Vec<FileInfo>,
    level: u8,
    min_txid: u64,
    scratch: &Arc<dyn Scratch>,
    known_post: Option<u64>,
) -> Result<FileInfo, CompactError> {
    let timestamp_ms = inputs.last().map_or(0, |f| f.created_ms);
    let fetched = fetch_all(replica, inputs, scratch.as_ref()).await?;
    // The output is spooled too: memory is one page per input plus the spool's buffer.
    let out = Spool::new(scratch.clone());
    let (bytes, header) = tokio::task::spawn_blocking(move || {
        merge(&fetched, min_txid, timestamp_ms, known_post, out)
    })
    .await
    .map_err(|e| CompactError::Invalid {
        what: "merge".into(),
        message: e.to_string(),
    })??;
    let info = replica
        .write(
            level,
            header.min_txid,
            header.max_txid,
            bytes,
            timestamp_ms,
            PutMode::Overwrite,
        )
        .await
        .map_err(|e| CompactError::Restore(e.into()))?;
    Ok(info)
}

/// What one compaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// The file written, or `None` when there was nothing contiguous to compact.
    pub file: Option<FileInfo>,
    /// The newest TXID the level reaches now (its listing, the caller's knowledge, the file):
    /// after a restart the scheduler learns from it what the level already holds.
    pub level_max_txid: u64,
}

/// Compacts level `level - 1` into `level` up to `up_to_txid`.
///
/// `known_max_txid` is the newest TXID the caller knows the destination reaches (its own last
/// output): a listing that lags writes must not make it compact the same TXIDs twice, forking
/// the level into overlapping chains (found by sluice-sim with a 2 s listing lag and a 1.3 s
/// compaction interval). Where the source has no file right after the destination's newest one
/// (retention removed the files below a snapshot), the run resumes at the first source file
/// whose preceding state a snapshot holds, so the level does not stall for good (found by
/// sluice-sim).
///
/// Files in `damaged` (found so by an earlier merge) are left out: the run stops before one,
/// and resumes past it once a snapshot (the heal's) covers it.
pub async fn compact_level(
    replica: &Replica,
    level: u8,
    up_to_txid: u64,
    known_max_txid: u64,
    scratch: &Arc<dyn Scratch>,
    damaged: &[FileInfo],
) -> Result<Compacted, CompactError> {
    let dst_max = replica
        .list_level(level)
        .await
        .map_err(RestoreError::from)?
        .iter()
        .map(|f| f.max_txid)
        .max()
        .unwrap_or(0)
        .max(known_max_txid);
    let src: Vec<FileInfo> = replica
        .list_level(level - 1)
        .await
        .map_err(RestoreError::from)?
        .into_iter()
        .filter(|f| f.min_txid > dst_max && f.max_txid <= up_to_txid && !damaged.contains(f))
        .collect();
    let starts_at = |t: u64| src.iter().any(|f| f.min_txid == t);
    let mut next = dst_max + 1;
    if !starts_at(next) && !src.is_empty() {
        // The first source file whose preceding state a snapshot holds: the gap before it is
        // the snapshot's (restores read the snapshot, then this level's files).
        let snapshot_max = replica
            .list_level(SNAPSHOT_LEVEL)
            .await
            .map_err(RestoreError::from)?
            .iter()
            .map(|f| f.max_txid)
            .max();
        let resume = src
            .iter()
            .map(|f| f.min_txid)
            .find(|&min| snapshot_max.is_some_and(|m| m + 1 >= min));
        if let Some(min) = resume {
            tracing::info!(
                level,
                after = format_args!("{dst_max:016x}"),
                resume = format_args!("{min:016x}"),
                "compaction resumes after a gap in its input that a snapshot covers"
            );
            next = min;
        }
    }
    // Only a contiguous run starting at `next`.
    let mut run = Vec::new();
    let start = next;
    for f in src
        .into_iter()
        .filter(|f| f.min_txid >= start || start == 1)
    {
        if run.len() == COMPACTION_INPUTS_MAX
            || (f.min_txid != next && !(next == 1 && f.min_txid == 1))
        {
            break;
        }
        next = f.max_txid + 1;
        run.push(f);
    }
    if run.is_empty() {
        return Ok(Compacted {
            file: None,
            level_max_txid: dst_max,
        });
    }
    let run_max = run.last().map_or(0, |f| f.max_txid);
    let copied = copy_first_snapshot(replica, &mut run, level).await?;
    if crate::planted::active(crate::planted::Bug::CopiedSnapshotEndsTheRun)
        && let Some(copied) = copied
    {
        return Ok(Compacted {
            file: Some(copied),
            level_max_txid: run_max.max(dst_max),
        });
    }
    let file = match (run.first(), copied) {
        (Some(first), _) => {
            let min_txid = first.min_txid;
            merge_and_write(replica, run, level, min_txid, scratch, None).await?
        }
        (None, Some(copied)) => copied,
        (None, None) => unreachable!("the run was not empty"),
    };
    Ok(Compacted {
        level_max_txid: file.max_txid.max(dst_max),
        file: Some(file),
    })
}

/// A run from TXID 1 opens with a file holding the whole database (the first snapshot):
/// merged alone it would come out as it is, so the store copies it up to `level` under the same
/// name (a hard link, a server-side copy) and the rest of the run is merged after it. Without
/// this, the first compaction of each level read and wrote the whole database again (level 1
/// 30 s after the first snapshot, then level 2 and level 3). Where the store cannot copy
/// (SFTP, an S3 object over 5 GB) the file stays in the run and is merged as before. Returns
/// the copy, taken off the front of `run`.
async fn copy_first_snapshot(
    replica: &Replica,
    run: &mut Vec<FileInfo>,
    level: u8,
) -> Result<Option<FileInfo>, CompactError> {
    let Some(first) = run.first().filter(|f| f.min_txid == 1) else {
        return Ok(None);
    };
    match replica
        .copy_to_level(first, level, PutMode::Overwrite)
        .await
    {
        Ok(copied) => {
            run.remove(0);
            Ok(Some(copied))
        }
        Err(e)
            if matches!(
                e.kind,
                StoreErrorKind::Unsupported | StoreErrorKind::Permanent
            ) =>
        {
            tracing::debug!(%e, "the store cannot copy the snapshot up a level: merging it");
            Ok(None)
        }
        Err(e) => Err(CompactError::Restore(e.into())),
    }
}

/// Writes a level-9 snapshot covering `1..=up_to_txid` by merging the restore plan, planned
/// without the files in `damaged`.
pub async fn snapshot(
    replica: &Replica,
    up_to_txid: u64,
    scratch: &Arc<dyn Scratch>,
    damaged: &[FileInfo],
) -> Result<FileInfo, CompactError> {
    let mut files = replica.list_all().await.map_err(RestoreError::from)?;
    files.retain(|f| !damaged.contains(f));
    let plan = restore::plan(&replica.describe(), &files, Target::Txid(up_to_txid))?;
    merge_and_write(replica, plan, SNAPSHOT_LEVEL, 1, scratch, None).await
}

/// The heal of a replica that cannot be restored: `full`, a level-0 file holding every page of
/// the database (the engine's resync file), written again as the level-9 snapshot `1..=N` of
/// the same state, so restores start there. Conditional: the level-0 file already claimed the
/// TXID, so this can only repeat that state. `post` is that state's database checksum (the
/// file may record none: a heal past a damaged newest file cannot name the state before it).
pub async fn snapshot_of_full(
    replica: &Replica,
    full: FileInfo,
    post: u64,
    scratch: &Arc<dyn Scratch>,
) -> Result<FileInfo, CompactError> {
    merge_and_write(replica, vec![full], SNAPSHOT_LEVEL, 1, scratch, Some(post)).await
}

/// What retention may delete now, in the order to delete it: stopping at the first failed
/// delete leaves every point of the window restorable. Rules, each keeping restores inside the
/// window intact:
/// - snapshots: keep the newest one created at or before `now - snapshot_retention` (it is the
///   base for the window's oldest moment) and everything newer; never the newest snapshot;
/// - levels 1..=8: delete files wholly at or below that base snapshot; never a level's newest;
/// - level 0: delete files wholly below the base snapshot, and the files a level-1 file covers
///   once every one of them is older than `l0_retention`, a whole level-1 file's worth at a
///   time and newest first (the kept level-0 files of a level-1 file are then always a chain
///   from its first TXID, so every TXID a kept file ends at still restores, even after a delete
///   failed halfway); never the newest level-0 file.
pub fn plan_retention(
    files: &[FileInfo],
    now_ms: i64,
    snapshot_retention_ms: i64,
    l0_retention_ms: i64,
) -> Vec<FileInfo> {
    let mut snapshots: Vec<&FileInfo> =
        files.iter().filter(|f| f.level == SNAPSHOT_LEVEL).collect();
    snapshots.sort_by_key(|f| (f.max_txid, f.created_ms));
    let cutoff = now_ms - snapshot_retention_ms;
    let base = snapshots
        .iter()
        .rev()
        .find(|s| s.created_ms <= cutoff)
        .copied();
    let floor = base.map_or(0, |b| b.max_txid);
    let newest_of = |level: u8| {
        files
            .iter()
            .filter(|f| f.level == level)
            .map(|f| f.max_txid)
            .max()
    };
    let mut out: Vec<FileInfo> = files
        .iter()
        .filter(|f| {
            let newest = newest_of(f.level) == Some(f.max_txid);
            match f.level {
                SNAPSHOT_LEVEL => base.is_some_and(|b| f.max_txid < b.max_txid) && !newest,
                _ => !newest && f.max_txid <= floor,
            }
        })
        .cloned()
        .collect();
    let newest0 = newest_of(0);
    for f in covered_and_expired(files, now_ms - l0_retention_ms) {
        if f.max_txid > floor && Some(f.max_txid) != newest0 {
            out.push(f.clone());
        }
    }
    out
}

/// The level-0 files inside each level-1 file all of whose level-0 files were created before
/// `cutoff_ms`, level-1 file by level-1 file, each newest first.
fn covered_and_expired(files: &[FileInfo], cutoff_ms: i64) -> Vec<&FileInfo> {
    let mut level0: Vec<&FileInfo> = files.iter().filter(|f| f.level == 0).collect();
    level0.sort_by_key(|f| (f.min_txid, f.max_txid));
    let mut level1: Vec<&FileInfo> = files.iter().filter(|f| f.level == 1).collect();
    level1.sort_by_key(|f| (f.min_txid, f.max_txid));
    let mut out = Vec::new();
    for l1 in level1 {
        let from = level0.partition_point(|f| f.min_txid < l1.min_txid);
        let inside: Vec<&FileInfo> = level0[from..]
            .iter()
            .take_while(|f| f.min_txid <= l1.max_txid)
            .filter(|f| f.max_txid <= l1.max_txid)
            .copied()
            .collect();
        if crate::planted::active(crate::planted::Bug::RetentionSplitsLevel1) {
            out.extend(inside.iter().filter(|f| f.created_ms < cutoff_ms));
        } else if inside.iter().all(|f| f.created_ms < cutoff_ms) {
            out.extend(inside.iter().rev());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(level: u8, min: u64, max: u64, created_ms: i64) -> FileInfo {
        FileInfo {
            level,
            min_txid: min,
            max_txid: max,
            size: 1,
            created_ms,
        }
    }

    #[test]
    fn retention_keeps_the_window_restorable() {
        let hour = 3_600_000;
        let now = 100 * hour;
        let files = vec![
            f(9, 1, 10, now - 50 * hour),
            f(9, 1, 20, now - 30 * hour),
            f(9, 1, 30, now - 10 * hour),
            f(1, 1, 10, now - 50 * hour),
            f(1, 11, 20, now - 30 * hour),
            f(1, 21, 30, now - 10 * hour),
            f(1, 31, 31, now - hour),
            f(0, 31, 31, now - hour),
            f(0, 32, 32, now - 1000),
        ];
        let del = plan_retention(&files, now, 24 * hour, 300_000);
        let del: Vec<_> = del
            .iter()
            .map(|f| (f.level, f.min_txid, f.max_txid))
            .collect();
        // The snapshot at -30h is the base for the window starting at -24h: it stays.
        assert_eq!(del, vec![(9, 1, 10), (1, 1, 10), (1, 11, 20), (0, 31, 31)]);
        // Every time inside the window still restores.
        for t in [now - 24 * hour, now - 20 * hour, now - hour / 2, now] {
            let kept: Vec<FileInfo> = files
                .iter()
                .filter(|x| !del.contains(&(x.level, x.min_txid, x.max_txid)))
                .cloned()
                .collect();
            assert!(
                restore::plan("r", &kept, Target::Before(t + 1)).is_ok(),
                "time {t}"
            );
        }
    }

    #[test]
    fn retention_removes_level0_a_whole_level1_file_at_a_time() {
        // Level 1 covers 1..=4; level-0 files 1 and 2 are old, 3 and 4 are not.
        let now = 10_000;
        let files = vec![
            f(1, 1, 4, 500),
            f(0, 1, 1, 100),
            f(0, 2, 2, 200),
            f(0, 3, 3, 9_900),
            f(0, 4, 4, 9_950),
            f(0, 5, 5, 9_990),
        ];
        assert!(plan_retention(&files, now, 0, 1_000).is_empty());
        let kept: Vec<FileInfo> = files.clone();
        for t in 1..=5 {
            let p = restore::plan("r", &kept, Target::Txid(t)).expect("restorable");
            assert_eq!(p.last().map(|f| f.max_txid), Some(t));
        }
        // Once all four are old, all four go, newest first: any prefix of the deletes (a
        // delete failed, retention stopped there) keeps every kept file's TXID restorable.
        let del = plan_retention(&files, 20_000, 0, 1_000);
        let order: Vec<_> = del.iter().map(|f| (f.level, f.min_txid)).collect();
        assert_eq!(order, vec![(0, 4), (0, 3), (0, 2), (0, 1)]);
        for done in 0..=del.len() {
            let kept: Vec<FileInfo> = files
                .iter()
                .filter(|x| !del[..done].contains(x))
                .cloned()
                .collect();
            for t in kept.iter().map(|x| x.max_txid) {
                let p = restore::plan("r", &kept, Target::Txid(t)).expect("restorable");
                assert_eq!(
                    p.last().map(|f| f.max_txid),
                    Some(t),
                    "after {done} deletes"
                );
            }
        }
    }

    #[test]
    fn retention_never_deletes_the_newest_files() {
        let files = vec![f(9, 1, 5, 0), f(0, 5, 5, 0), f(1, 1, 5, 0)];
        assert!(plan_retention(&files, i64::MAX / 2, 1, 1).is_empty());
    }
}
