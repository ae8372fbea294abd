//! Compaction catching up while idle (check 8).

use super::*;

/// Compaction catches up once faults heal, even on an idle database: with one request failing
/// at the start of an idle stretch of three level-2 intervals, level 1 must end at the engine's
/// TXID and level 2 at level 1's newest file (a failed compaction is retried, idle or not).
///
/// Does not check: snapshots' schedule, or retention's deletions (the point-in-time checks
/// cover what retention must keep); nor runs with a lagging listing, where a restarted job
/// that cannot see the level's newest file forks the level into overlapping files and the level
/// above waits for a snapshot to bridge the fork (`compact_level`).
pub(super) fn check_compaction_catches_up(w: &mut World) {
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
