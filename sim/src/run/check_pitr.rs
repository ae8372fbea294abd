//! Point-in-time restores, by TXID and by time (Litestream's `-timestamp`).

use super::*;

/// Restores at up to four random level-0 TXIDs must each equal some committed state, never
/// going backwards; then restores by time (`check_timestamps`).
///
/// Does not check: every TXID (the history walk does, file by file).
pub(super) fn check_point_in_time(w: &mut World) {
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
pub(super) fn check_timestamps(w: &mut World, level0: &[sluice_core::replica::FileInfo]) {
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
