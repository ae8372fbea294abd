//! Deliberate engine and driver bugs for proving the simulator catches them (cargo feature
//! `planted-bugs`, off by default). Without the feature `active` is always false and the
//! checks compile away.

/// The bugs that can be planted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Continue in the WAL even when its salts changed (a restart is not noticed).
    SkipSaltCheck,
    /// Ship frames of transactions that have not committed.
    ShipUncommitted,
    /// Treat a truncated WAL (an application TRUNCATE checkpoint) as "nothing happened".
    IgnoreAppTruncate,
    /// Move the position before the upload is acknowledged, and swallow upload errors.
    AckBeforeUpload,
    /// After a restart, reuse the replica's newest TXID for the next file.
    ReuseTxidAfterRestart,
    /// Restore plan accepts a file that skips one TXID.
    RestorePlanOffByOne,
    /// After one WAL restart, ship only the new generation and forget the old tail.
    DropOldTail,
    /// Treat a WAL appearing over a database-file state as all new (the bug sluice-sim found).
    FromStartAlways,
    /// Upload level-0 files with plain PUTs: a zombie writer can replace an acknowledged file.
    UnconditionalUploads,
    /// Trust a position recovery even if the WAL moved under it (sluice-sim seed 162).
    SkipRecoveryRecheck,
    /// After reading an old WAL tail, check the tail against itself only (seed 185).
    SkipTailRemeasure,
    /// Take a WAL header with the same salts as the same generation, whatever its checksum
    /// (seed 3208).
    SaltsOnlyGeneration,
    /// The scheduler's sync retries back off to `backoff_max_ms` without jitter (the old
    /// driver's rule): after an outage commits wait up to 30 s with the store up.
    UnboundedBackoff,
    /// A clean shutdown skips the final sync.
    NoFinalSync,
    /// A failed compaction counts as a run: it is not retried until new writes arrive.
    CompactionNeverRetried,
    /// The scheduler never renews the lease: writes stop once it runs out.
    LeaseNotRenewed,
    /// A restore renames its temporary file into place before fsyncing it: a crash in between
    /// leaves a torn database at the output path.
    RenameBeforeFsync,
    /// Retention deletes any level-0 file level 1 covers once it is old, not a whole level-1
    /// file's worth at a time (the old rule): a kept level-0 file whose predecessors went
    /// cannot be restored to by TXID, nor the moment just after it by time.
    RetentionSplitsLevel1,
    /// The fenced store checks the lease only before a write, not when its answer arrives: a
    /// replaced host whose upload stalled past its lease acknowledges it in the new holder's
    /// term.
    FenceCheckedBeforeOnly,
    /// A recovery takes the WAL as backfilled whenever the database file has the committed
    /// size, without comparing its pages: frames not yet checkpointed are left out of the state.
    BackfillUnchecked,
    /// The engine's PASSIVE checkpoint counts the `-wal` file's length, not its current
    /// generation: once the file reached the threshold, every sync checkpoints, and the next
    /// write restarts the WAL over frames not read yet (a full compare every few seconds).
    PassiveByFileLength,
    /// A compaction that copies the first snapshot up a level reports its whole run done and
    /// merges nothing after the copy: the level skips the TXIDs that followed the snapshot.
    CopiedSnapshotEndsTheRun,
    /// A recovery lets its read go before the upload it prepared (the old rule): a busy
    /// application's checkpoints restart the WAL under the first snapshot's upload, and the
    /// next sync compares the whole database.
    SnapshotReadReleased,
    /// The lease is renewed only between actions (the old driver): an action longer than the
    /// lease (a large first snapshot, a compaction on a slow store) has its writes refused.
    LeaseNotKeptDuringActions,
    /// A WAL restart waits for the sync interval like any other change (the old rule): under
    /// heavy writes the new generation grows past the position first, and the next sync
    /// compares the whole database.
    RestartNoticedLate,
    /// Syncs are spaced one interval from the end of the last upload (the old rule): a commit
    /// made just after a sync read the WAL waits that sync's upload, an interval, and its own
    /// upload, past the recovery point objective.
    SyncSpacedFromUploadEnd,
    /// The pages a sync's scans read are looked up by page number alone, not by the frame the
    /// state names: a page written again later in the WAL (by a transaction past the
    /// position, or not committed) is shipped in place of the committed one.
    FrameCacheIgnoresOffset,
}

impl Bug {
    pub const ALL: [Bug; 27] = [
        Bug::SkipSaltCheck,
        Bug::ShipUncommitted,
        Bug::IgnoreAppTruncate,
        Bug::AckBeforeUpload,
        Bug::ReuseTxidAfterRestart,
        Bug::RestorePlanOffByOne,
        Bug::DropOldTail,
        Bug::FromStartAlways,
        Bug::UnconditionalUploads,
        Bug::SkipRecoveryRecheck,
        Bug::SkipTailRemeasure,
        Bug::SaltsOnlyGeneration,
        Bug::UnboundedBackoff,
        Bug::NoFinalSync,
        Bug::CompactionNeverRetried,
        Bug::LeaseNotRenewed,
        Bug::RenameBeforeFsync,
        Bug::RetentionSplitsLevel1,
        Bug::FenceCheckedBeforeOnly,
        Bug::BackfillUnchecked,
        Bug::PassiveByFileLength,
        Bug::CopiedSnapshotEndsTheRun,
        Bug::SnapshotReadReleased,
        Bug::LeaseNotKeptDuringActions,
        Bug::RestartNoticedLate,
        Bug::SyncSpacedFromUploadEnd,
        Bug::FrameCacheIgnoresOffset,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::SkipSaltCheck => "skip-salt-check",
            Bug::ShipUncommitted => "ship-uncommitted",
            Bug::IgnoreAppTruncate => "ignore-app-truncate",
            Bug::AckBeforeUpload => "ack-before-upload",
            Bug::ReuseTxidAfterRestart => "reuse-txid-after-restart",
            Bug::RestorePlanOffByOne => "restore-plan-off-by-one",
            Bug::DropOldTail => "drop-old-tail",
            Bug::FromStartAlways => "from-start-always",
            Bug::UnconditionalUploads => "unconditional-uploads",
            Bug::SkipRecoveryRecheck => "skip-recovery-recheck",
            Bug::SkipTailRemeasure => "skip-tail-remeasure",
            Bug::SaltsOnlyGeneration => "salts-only-generation",
            Bug::UnboundedBackoff => "unbounded-backoff",
            Bug::NoFinalSync => "no-final-sync",
            Bug::CompactionNeverRetried => "compaction-never-retried",
            Bug::LeaseNotRenewed => "lease-not-renewed",
            Bug::RenameBeforeFsync => "rename-before-fsync",
            Bug::RetentionSplitsLevel1 => "retention-splits-level1",
            Bug::FenceCheckedBeforeOnly => "fence-checked-before-only",
            Bug::BackfillUnchecked => "backfill-unchecked",
            Bug::PassiveByFileLength => "passive-by-file-length",
            Bug::CopiedSnapshotEndsTheRun => "copied-snapshot-ends-the-run",
            Bug::SnapshotReadReleased => "snapshot-read-released",
            Bug::LeaseNotKeptDuringActions => "lease-not-kept-during-actions",
            Bug::RestartNoticedLate => "restart-noticed-late",
            Bug::SyncSpacedFromUploadEnd => "sync-spaced-from-upload-end",
            Bug::FrameCacheIgnoresOffset => "frame-cache-ignores-offset",
        }
    }

    pub fn parse(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

#[cfg(feature = "planted-bugs")]
static ACTIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

/// Plants `bug` (or none) for the whole process. A no-op without the feature.
pub fn plant(bug: Option<Bug>) {
    #[cfg(feature = "planted-bugs")]
    {
        let i = bug
            .and_then(|b| Bug::ALL.iter().position(|x| *x == b))
            .unwrap_or(usize::MAX);
        ACTIVE.store(i, std::sync::atomic::Ordering::SeqCst);
    }
    #[cfg(not(feature = "planted-bugs"))]
    let _ = bug;
}

/// Whether `bug` is planted.
#[inline]
pub fn active(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        Bug::ALL.get(ACTIVE.load(std::sync::atomic::Ordering::SeqCst)) == Some(&bug)
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}

/// Whether this build can plant bugs.
pub const ENABLED: bool = cfg!(feature = "planted-bugs");
