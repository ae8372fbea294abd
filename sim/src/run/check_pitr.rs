//! Point-in-time restores inside the retention window, by TXID and by time (Litestream's
//! `-txid` and `-timestamp`; its users lost such restores to retention: #771, #1038).

use std::collections::BTreeSet;

use sluice_core::replica::FileInfo;

use super::*;

/// Full restores per run (each is checked against the oracle); every other point is planned.
const PITR_RESTORES_MAX: usize = 6;

/// After compaction and retention ran under faults, every point of the retention window must
/// still restore:
/// - by TXID: every TXID a file ends at, from the state current at the window's start, plans
///   to exactly that TXID;
/// - by time: every moment just after a file was written inside the window, and the window's
///   oldest moment, plans without error to a TXID no newer than the newest file written before
///   it, exactly that TXID when the moment lies inside the level-0 retention (older moments may
///   fall back to the level-1 file before them, Litestream's `l0-retention`);
/// - a sample of those points, always including the oldest of each kind, restores in full to a
///   state the oracle committed before the moment, never going backwards as the point advances.
///
/// Does not check: TXIDs between two file boundaries (no file ends there, so neither tool can
/// restore them), or moments older than the window (retention may delete their files).
pub(super) fn check_point_in_time(w: &mut World) {
    let replica = Replica::new(Arc::new(w.mem.clone()), Layout::File);
    let Ok(files) = w.rt.block_on(replica.list_all()) else {
        return;
    };
    if files.is_empty() {
        return;
    }
    let now = w.now();
    let window_start = if w.knobs.snapshot_retention_ms > 0 {
        now - w.knobs.snapshot_retention_ms
    } else {
        i64::MIN
    };
    let by_txid = txid_points(&files, window_start);
    let mut samples = Vec::new();
    for (i, &t) in by_txid.iter().enumerate() {
        match restore::plan("sim", &files, Target::Txid(t)) {
            Ok(p) if p.last().is_some_and(|f| f.max_txid == t) => {}
            Ok(p) => {
                let got = p.last().map_or(0, |f| f.max_txid);
                return w.fail(format!(
                    "point-in-time plan at TXID {t:016x} reaches {got:016x}, not the TXID a file ends at"
                ));
            }
            Err(e) => {
                log_files(w, &files);
                return w.fail(format!(
                    "TXID {t:016x} (a file ends there) cannot be restored: {e}"
                ));
            }
        }
        if i == 0 {
            samples.push(Target::Txid(t));
        }
    }
    let exact_from = if w.knobs.snapshot_retention_ms > 0 {
        now - w.knobs.l0_retention_ms
    } else {
        i64::MIN
    };
    let by_time = time_points(&files, window_start);
    for (i, &at) in by_time.iter().enumerate() {
        let newest = newest_before(&files, at);
        match restore::plan("sim", &files, Target::Before(at)) {
            Ok(p) => {
                let got = p.last().map_or(0, |f| f.max_txid);
                if got > newest || (at > exact_from && got != newest) {
                    return w.fail(format!(
                        "restore before {at} plans TXID {got:016x}; the newest file written before it ends at {newest:016x}"
                    ));
                }
            }
            Err(e) => {
                log_files(w, &files);
                return w.fail(format!(
                    "moment {at} inside the retention window (from {window_start}) cannot be restored: {e}"
                ));
            }
        }
        if i == 0 {
            samples.push(Target::Before(at));
        }
    }
    let mut rest: Vec<Target> = by_txid
        .iter()
        .skip(1)
        .map(|&t| Target::Txid(t))
        .chain(by_time.iter().skip(1).map(|&at| Target::Before(at)))
        .collect();
    while samples.len() < PITR_RESTORES_MAX && !rest.is_empty() {
        let i = w.rng.random_range(0..rest.len());
        samples.push(rest.swap_remove(i));
    }
    check_samples(w, &files, samples);
}

/// Every TXID a file ends at, from the state current at the window's start (the newest TXID
/// written before it), or without a window from the oldest state a restore can start from (a
/// snapshot, or a file starting at TXID 1).
fn txid_points(files: &[FileInfo], window_start: i64) -> Vec<u64> {
    let oldest = files
        .iter()
        .filter(|f| f.level == sluice_core::replica::SNAPSHOT_LEVEL || f.min_txid == 1)
        .map(|f| f.max_txid)
        .min()
        .unwrap_or(u64::MAX);
    let start = oldest.max(newest_before(files, window_start));
    let set: BTreeSet<u64> = files
        .iter()
        .map(|f| f.max_txid)
        .filter(|&t| t >= start)
        .collect();
    set.into_iter().collect()
}

/// The window's oldest moment (once a file exists before it), then the moment just after each
/// file inside the window was written, oldest first.
fn time_points(files: &[FileInfo], window_start: i64) -> Vec<i64> {
    let oldest = files.iter().map(|f| f.created_ms).min().unwrap_or(0);
    let mut set: BTreeSet<i64> = files
        .iter()
        .map(|f| f.created_ms + 1)
        .filter(|&at| at >= window_start)
        .collect();
    if window_start > oldest {
        set.insert(window_start);
    }
    set.into_iter().collect()
}

/// The newest TXID of any file written strictly before `at`.
fn newest_before(files: &[FileInfo], at: i64) -> u64 {
    files
        .iter()
        .filter(|f| f.created_ms < at)
        .map(|f| f.max_txid)
        .max()
        .unwrap_or(0)
}

/// Restores each sample in full: the image must be a state the oracle committed (before the
/// moment, for a time), the TXID the plan promised, and the commits must not go backwards as
/// the points advance (TXIDs and moments each in their own order).
fn check_samples(w: &mut World, files: &[FileInfo], mut samples: Vec<Target>) {
    samples.sort_by_key(|t| match *t {
        Target::Txid(t) => (0, t as i64),
        Target::Before(at) => (1, at),
        Target::Latest => (2, 0),
    });
    let mut prev = (0u8, 0usize);
    for target in samples {
        let kind = u8::from(matches!(target, Target::Before(_)));
        let (image, got) = match w.restore(target) {
            Ok(r) => r,
            Err(e) => return w.fail(format!("point-in-time restore {target:?} failed: {e}")),
        };
        let digest = w.digest_of(&image).digest();
        let (at, want) = match target {
            Target::Txid(t) => (i64::MAX, Some(t)),
            Target::Before(at) => (at, None),
            Target::Latest => (i64::MAX, None),
        };
        let k = w
            .commits
            .iter()
            .rposition(|c| c.hash == digest && c.time_ms < at)
            .map(|i| i + 1);
        let floor = if prev.0 == kind { prev.1 } else { 0 };
        match k {
            Some(k) if want.is_none_or(|t| t == got) && k >= floor => {
                prev = (kind, k);
                w.log(format!(
                    "check pitr {target:?} txid={got:016x} commit={k}"
                ));
            }
            Some(k) => w.fail(format!(
                "point-in-time restore {target:?} gave commit {k} (TXID {got:016x}) after commit {floor}"
            )),
            None if w.is_abandoned(digest) => {
                w.log(format!("check pitr {target:?} a replaced host's state (zombie upload)"));
            }
            None if w.commit_of(digest).is_some() => w.fail(format!(
                "point-in-time restore {target:?} (TXID {got:016x}) gave a state committed after the moment; the newest file before it ends at {:016x}",
                newest_before(files, at)
            )),
            None => w.fail(format!(
                "point-in-time restore {target:?} (TXID {got:016x}) matches no committed state"
            )),
        }
    }
}

/// The replica's listing, into the event log of a failed run.
fn log_files(w: &mut World, files: &[FileInfo]) {
    for f in files {
        w.log(format!("check pitr file {f} created={}", f.created_ms));
    }
}
