//! The engine's model of what the replica holds, and the decisions made from it. No I/O here.

use crate::checksum::DbChecksum;
pub use crate::checksum::PageSums;
use crate::planted::{self, Bug};
use crate::wal::{WAL_HEADER_SIZE, WalHeader, WalScanner};

/// Where in the WAL the replica's state ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalPos {
    pub header: WalHeader,
    /// Offset just past the last shipped commit frame.
    pub offset: u64,
    /// Cumulative WAL checksum at `offset`.
    pub checksum: (u32, u32),
}

impl WalPos {
    pub fn scanner(&self) -> WalScanner {
        WalScanner::resume(self.header, self.offset, self.checksum)
    }
}

/// What the replica holds: TXID, database checksum, and where it ends in the local WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub txid: u64,
    pub checksum: DbChecksum,
    /// `None` when the state is the database file alone (no valid WAL was present).
    pub wal: Option<WalPos>,
    /// With `wal == None`: the database file's stamp when the state was read, so a change made
    /// while no WAL is visible (written, checkpointed and truncated between two syncs) is seen.
    pub db_stamp: Option<DbStamp>,
    /// With `wal == None`: the last WAL generation seen before, if any.
    pub last_header: Option<WalHeader>,
}

/// A cheap fingerprint of the database file: its size and modification time (in the simulator,
/// a write counter). Equal stamps mean the file was not written in between.
pub type DbStamp = (u64, u64);

impl Position {
    /// The position after shipping a state that ends in the WAL at `wal`, or (`None`) a state
    /// that is the database file alone as of `stamp`.
    pub fn follow(
        &self,
        txid: u64,
        checksum: DbChecksum,
        wal: Option<WalPos>,
        stamp: DbStamp,
    ) -> Position {
        let last_header = self.wal.map(|w| w.header).or(self.last_header);
        match wal {
            Some(w) => Position {
                txid,
                checksum,
                wal: Some(w),
                db_stamp: None,
                last_header: None,
            },
            None => Position {
                txid,
                checksum,
                wal: None,
                db_stamp: Some(stamp),
                last_header,
            },
        }
    }
}

/// How to read the changes since the replica's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPlan {
    /// Nothing can have changed: no WAL and none before.
    Idle,
    /// Same WAL generation: read committed frames from the saved offset.
    Continue(WalScanner),
    /// No WAL was followed before; a WAL has appeared: all its committed frames are new.
    FromStart(WalScanner),
    /// The WAL restarted once. The old generation's frames past our offset may still be in the
    /// file (a restart overwrites from the start); if the new generation ends before our offset,
    /// read the old tail, then the new generation.
    OldTailThenNew { old: WalScanner, new: WalScanner },
    /// Continuity cannot be proven: compare the whole current state with the replica's.
    Resync,
}

impl SyncPlan {
    /// The plan's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            SyncPlan::Idle => "idle",
            SyncPlan::Continue(_) => "continue",
            SyncPlan::FromStart(_) => "from-start",
            SyncPlan::OldTailThenNew { .. } => "old-tail-then-new",
            SyncPlan::Resync => "resync",
        }
    }
}

/// Decides how to find what changed, from the WAL header now on disk. `header` is `None` when the
/// WAL is missing, shorter than a header, or its header is invalid (truncated, being rewritten).
pub fn plan_sync(
    pos: &Position,
    header: Option<WalHeader>,
    wal_len: u64,
    db_stamp: DbStamp,
) -> SyncPlan {
    let db_unchanged = pos.db_stamp == Some(db_stamp);
    match (pos.wal, header) {
        // A WAL may have come and gone (written, checkpointed, truncated) between two syncs:
        // only an unchanged database file proves nothing happened.
        (None, None) => {
            if db_unchanged {
                SyncPlan::Idle
            } else {
                SyncPlan::Resync
            }
        }
        // A WAL appeared on top of the database-file state. Its frames are all newer only if
        // nothing was checkpointed in between: the file is unchanged, or this generation is the
        // one right after the last generation seen (the restart that emptied it).
        (None, Some(h)) => {
            let next_generation = pos
                .last_header
                .is_some_and(|l| h.salt1 == l.salt1.wrapping_add(1) && h.page_size == l.page_size);
            if db_unchanged || next_generation || planted::active(Bug::FromStartAlways) {
                SyncPlan::FromStart(WalScanner::new(h))
            } else {
                SyncPlan::Resync
            }
        }
        (Some(_), None) if planted::active(Bug::IgnoreAppTruncate) => SyncPlan::Idle,
        (Some(_), None) => SyncPlan::Resync,
        (Some(w), Some(h)) => {
            let same_generation = (h.salt1, h.salt2) == (w.header.salt1, w.header.salt2)
                || planted::active(Bug::SkipSaltCheck);
            // SQLite rewrites the header of a generation that has no committed frame yet when
            // another connection writes the first frame: same salts, but that connection's
            // checkpoint sequence, so a new header checksum from which the frames chain
            // (found by sluice-sim seed 3208 with two application connections). Nothing we read
            // can be in such a generation, so its frames are all new; past the header it cannot
            // happen, and continuity is compared instead.
            let rewritten = same_generation
                && h.checksum != w.header.checksum
                && !planted::active(Bug::SkipSaltCheck)
                && !planted::active(Bug::SaltsOnlyGeneration);
            if rewritten {
                if w.offset == WAL_HEADER_SIZE as u64 && h.page_size == w.header.page_size {
                    SyncPlan::FromStart(WalScanner::new(h))
                } else {
                    SyncPlan::Resync
                }
            } else if same_generation && h.page_size == w.header.page_size {
                if wal_len < w.offset {
                    SyncPlan::Resync
                } else {
                    SyncPlan::Continue(w.scanner())
                }
            } else if h.salt1 == w.header.salt1.wrapping_add(1)
                && h.page_size == w.header.page_size
                && h.big_endian_checksums == w.header.big_endian_checksums
                // A restart leaves the file's length as it was: a file that ends where we
                // stopped reading has an empty old tail (seen at every checkpoint that followed
                // a sync which had read to the end). Only a shorter file was truncated.
                && wal_len >= w.offset
            {
                SyncPlan::OldTailThenNew {
                    old: w.scanner(),
                    new: WalScanner::new(h),
                }
            } else {
                SyncPlan::Resync
            }
        }
    }
}

/// When to checkpoint, from the WAL size after a sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointPlan {
    None,
    Passive,
    Truncate,
}

/// Checkpoint thresholds in WAL pages (Litestream's defaults: PASSIVE at 1,000 pages or after
/// `checkpoint_interval` with any frames, TRUNCATE at 121,359 pages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    pub min_pages: u64,
    pub truncate_pages: u64,
    pub interval_ms: i64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            min_pages: 1000,
            truncate_pages: 121_359,
            interval_ms: 60_000,
        }
    }
}

/// `generation_frames` counts the frames of the WAL's current generation (what a checkpoint
/// would backfill); `file_frames` the `-wal` file's length in frames, which a restart leaves as
/// it was. PASSIVE goes by the generation: counting the file would checkpoint after every sync
/// once the file had reached the threshold, and each of those checkpoints lets the next write
/// restart the WAL over frames sluice has not read yet (measured: a full compare of the database
/// every few seconds at 100 commits a second). TRUNCATE goes by the file, the disk it holds.
pub fn plan_checkpoint(
    policy: &CheckpointPolicy,
    generation_frames: u64,
    file_frames: u64,
    ms_since_checkpoint: i64,
) -> CheckpointPlan {
    if policy.truncate_pages > 0 && file_frames >= policy.truncate_pages {
        CheckpointPlan::Truncate
    } else if generation_frames >= policy.min_pages
        || (generation_frames > 0 && ms_since_checkpoint >= policy.interval_ms)
    {
        CheckpointPlan::Passive
    } else {
        CheckpointPlan::None
    }
}

/// What the engine measured of an old WAL generation's tail beside the new generation that
/// restarted the WAL, for [`old_tail_intact`]. Offsets are byte offsets in the `-wal` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailEvidence {
    /// Where the old generation's frames we have not shipped begin.
    pub old_offset: u64,
    /// Where the new generation's committed frames end.
    pub new_committed_end: u64,
    /// Where everything the new generation wrote ends (uncommitted frames too).
    pub new_written_end: u64,
    /// One frame of the new generation (a write past its last valid frame may be torn).
    pub frame_bytes: u64,
    /// The salts of the frame right after the old generation's last valid frame, if a whole
    /// frame header is there.
    pub next_frame_salts: Option<(u32, u32)>,
    /// The new generation's salts.
    pub new_salts: (u32, u32),
    /// Where the old generation's valid frames end, and the `-wal` file's length now.
    pub old_end: u64,
    pub file_len: u64,
}

/// Whether the old generation's tail is still in the file, unread by nobody: everything the new
/// generation wrote (committed or not, plus one frame for a torn write) ends before the tail
/// (simulator seed 5: a spilling transaction overwrites the tail before it commits), and the
/// frame right after the tail's last valid frame is not the new generation's (seed 1239: a
/// new-generation transaction that spilled and rolled back left frames no valid chain reaches,
/// yet they overwrote the tail).
///
/// And the file must not end inside a frame just past the tail: SQLite writes whole frames, so
/// only a truncation cuts one, and `PRAGMA journal_size_limit` truncates the file at the first
/// commit after a restart, cutting off old frames that were already checkpointed into the
/// database (found by the simulator with `app_journal_size_limit`: states shipped that were
/// never committed). A limit that falls exactly on a frame boundary is not caught here (see
/// core/DESIGN.md).
pub fn old_tail_intact(e: &TailEvidence) -> bool {
    let after = e.file_len.saturating_sub(e.old_end);
    e.new_committed_end <= e.old_offset
        && e.new_written_end + e.frame_bytes <= e.old_offset
        && e.next_frame_salts != Some(e.new_salts)
        && (after == 0 || after >= e.frame_bytes)
}

/// Whether a read of the WAL was stable: the WAL's generation (header) and where its committed
/// frames end, before and after. Appended commits are harmless (within a generation frames are
/// only appended and the read used those before them); a new generation, or a committed chain
/// that no longer reaches as far, means frames the read used were overwritten (simulator seed
/// 162: with the engine's read lock on the database file alone, an application commit restarts
/// the WAL and overwrites frames being read).
pub fn read_was_stable<H: PartialEq>(before: Option<(H, u64)>, after: Option<(H, u64)>) -> bool {
    match (before, after) {
        (None, None) => true,
        (Some((h, end)), Some((h2, end2))) => h == h2 && end2 >= end,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(salt1: u32, salt2: u32) -> WalHeader {
        WalHeader {
            big_endian_checksums: false,
            page_size: 4096,
            checkpoint_seq: 0,
            salt1,
            salt2,
            checksum: (1, 2),
        }
    }

    fn pos(salt1: u32, offset: u64) -> Position {
        Position {
            txid: 3,
            checksum: DbChecksum::EMPTY,
            wal: Some(WalPos {
                header: header(salt1, 7),
                offset,
                checksum: (5, 6),
            }),
            db_stamp: None,
            last_header: None,
        }
    }

    const STAMP: DbStamp = (4096, 1);

    #[test]
    fn same_generation_continues_at_the_offset() {
        let plan = plan_sync(&pos(10, 5000), Some(header(10, 7)), 9000, STAMP);
        assert!(
            matches!(plan, SyncPlan::Continue(s) if s.offset() == 5000 && s.checksum() == (5, 6))
        );
    }

    #[test]
    fn a_header_rewritten_with_the_same_salts_starts_a_new_chain() {
        let rewritten = WalHeader {
            checkpoint_seq: 4,
            checksum: (8, 9),
            ..header(10, 7)
        };
        let empty = pos(10, WAL_HEADER_SIZE as u64);
        assert!(matches!(
            plan_sync(&empty, Some(rewritten), 9000, STAMP),
            SyncPlan::FromStart(s) if s.offset() == WAL_HEADER_SIZE as u64 && s.checksum() == (8, 9)
        ));
        // Past the header it cannot happen; if it does, nothing is assumed.
        assert!(matches!(
            plan_sync(&pos(10, 5000), Some(rewritten), 9000, STAMP),
            SyncPlan::Resync
        ));
    }

    #[test]
    fn one_restart_tries_the_old_tail() {
        assert!(matches!(
            plan_sync(&pos(10, 5000), Some(header(11, 99)), 9000, STAMP),
            SyncPlan::OldTailThenNew { .. }
        ));
        // A restart keeps the file's length: when we had read to its end the old tail is
        // empty, and the new generation's extent decides (`old_tail_intact`).
        assert!(matches!(
            plan_sync(&pos(10, 5000), Some(header(11, 99)), 5000, STAMP),
            SyncPlan::OldTailThenNew { .. }
        ));
    }

    #[test]
    fn anything_unprovable_resyncs() {
        // Truncated WAL, two restarts, a shrunken WAL with the same salts, a different page size.
        assert_eq!(plan_sync(&pos(10, 5000), None, 0, STAMP), SyncPlan::Resync);
        assert_eq!(
            plan_sync(&pos(10, 5000), Some(header(12, 1)), 9000, STAMP),
            SyncPlan::Resync
        );
        assert_eq!(
            plan_sync(&pos(10, 5000), Some(header(10, 7)), 4000, STAMP),
            SyncPlan::Resync
        );
        // One restart, but the file is shorter than where we stopped: it was truncated.
        assert_eq!(
            plan_sync(&pos(10, 5000), Some(header(11, 1)), 4000, STAMP),
            SyncPlan::Resync
        );
        let mut big = header(10, 7);
        big.page_size = 8192;
        assert_eq!(
            plan_sync(&pos(10, 5000), Some(big), 9000, STAMP),
            SyncPlan::Resync
        );
    }

    #[test]
    fn database_file_state_needs_proof_of_no_change() {
        let p = Position {
            txid: 1,
            checksum: DbChecksum::EMPTY,
            wal: None,
            db_stamp: Some(STAMP),
            last_header: Some(header(9, 1)),
        };
        assert_eq!(plan_sync(&p, None, 0, STAMP), SyncPlan::Idle);
        // Written, checkpointed and truncated between two looks: the file changed.
        assert_eq!(plan_sync(&p, None, 0, (4096, 2)), SyncPlan::Resync);
        assert!(matches!(
            plan_sync(&p, Some(header(1, 1)), 32, STAMP),
            SyncPlan::FromStart(_)
        ));
        // The file changed, but the WAL is the generation right after the last one seen.
        assert!(matches!(
            plan_sync(&p, Some(header(10, 1)), 32, (8192, 3)),
            SyncPlan::FromStart(_)
        ));
        // The file changed and a generation went by unseen: its frames were checkpointed.
        assert_eq!(
            plan_sync(&p, Some(header(11, 1)), 32, (8192, 3)),
            SyncPlan::Resync
        );
    }

    #[test]
    fn page_sums_track_the_total() {
        let mut a = PageSums::new(512);
        a.set(1, 11 | crate::checksum::CHECKSUM_FLAG);
        a.set(3, 33 | crate::checksum::CHECKSUM_FLAG);
        assert_eq!(a.commit(), 3);
        let mut b = a.clone();
        b.set(2, 22 | crate::checksum::CHECKSUM_FLAG);
        assert_eq!(b.diff(&a), vec![2]);
        b.resize(1);
        assert_eq!(b.diff(&a), vec![2, 3]);
        let mut c = PageSums::new(512);
        c.set(1, 11 | crate::checksum::CHECKSUM_FLAG);
        assert_eq!(b.total(), c.total());
    }

    #[test]
    fn checkpoint_thresholds() {
        let p = CheckpointPolicy::default();
        assert_eq!(plan_checkpoint(&p, 10, 10, 1000), CheckpointPlan::None);
        assert_eq!(plan_checkpoint(&p, 10, 10, 60_000), CheckpointPlan::Passive);
        assert_eq!(plan_checkpoint(&p, 0, 0, 600_000), CheckpointPlan::None);
        assert_eq!(plan_checkpoint(&p, 1000, 1000, 0), CheckpointPlan::Passive);
        assert_eq!(
            plan_checkpoint(&p, 200_000, 200_000, 0),
            CheckpointPlan::Truncate
        );
        // A restarted WAL keeps its file's length: a short generation in a long file is no
        // reason for a PASSIVE checkpoint, but a file past the TRUNCATE threshold still is.
        assert_eq!(plan_checkpoint(&p, 100, 1000, 0), CheckpointPlan::None);
        assert_eq!(
            plan_checkpoint(&p, 100, 200_000, 0),
            CheckpointPlan::Truncate
        );
    }

    fn tail(old_offset: u64) -> TailEvidence {
        TailEvidence {
            old_offset,
            new_committed_end: 1_000,
            new_written_end: 1_000,
            frame_bytes: 100,
            next_frame_salts: Some((1, 2)),
            new_salts: (7, 8),
            old_end: old_offset + 300,
            file_len: old_offset + 500,
        }
    }

    #[test]
    fn an_old_tail_is_intact_only_beyond_all_the_new_generation_wrote() {
        assert!(
            old_tail_intact(&tail(1_100)),
            "ends a whole frame before the tail"
        );
        assert!(
            !old_tail_intact(&tail(1_099)),
            "a torn frame could reach the tail"
        );
        // Uncommitted frames count (seed 5).
        let spilled = TailEvidence {
            new_written_end: 2_000,
            ..tail(1_500)
        };
        assert!(!old_tail_intact(&spilled));
        // Committed frames past the tail's start.
        let committed = TailEvidence {
            new_committed_end: 1_600,
            new_written_end: 1_000,
            ..tail(1_500)
        };
        assert!(!old_tail_intact(&committed));
        // The frame after the tail's last valid frame carries the new salts (seed 1239).
        let rolled_back = TailEvidence {
            next_frame_salts: Some((7, 8)),
            ..tail(5_000)
        };
        assert!(!old_tail_intact(&rolled_back));
        let no_frame_after = TailEvidence {
            next_frame_salts: None,
            ..tail(5_000)
        };
        assert!(old_tail_intact(&no_frame_after));
        // The file ends inside a frame after the tail: a journal_size_limit cut it, and frames
        // already checkpointed are gone.
        let cut = TailEvidence {
            next_frame_salts: None,
            file_len: 5_000 + 300 + 40,
            ..tail(5_000)
        };
        assert!(!old_tail_intact(&cut));
        let ends_with_the_tail = TailEvidence {
            next_frame_salts: None,
            file_len: 5_300,
            ..tail(5_000)
        };
        assert!(old_tail_intact(&ends_with_the_tail));
    }

    #[test]
    fn a_read_is_stable_only_if_its_generation_stayed_and_its_commits_reach_as_far() {
        assert!(read_was_stable::<u8>(None, None));
        assert!(read_was_stable(Some((1, 100)), Some((1, 100))));
        assert!(
            read_was_stable(Some((1, 100)), Some((1, 300))),
            "appended commits"
        );
        assert!(!read_was_stable(Some((1, 100)), Some((1, 90))), "cut short");
        assert!(
            !read_was_stable(Some((1, 100)), Some((2, 100))),
            "a new generation"
        );
        assert!(!read_was_stable(None, Some((1, 100))));
        assert!(!read_was_stable(Some((1, 100)), None));
    }
}
