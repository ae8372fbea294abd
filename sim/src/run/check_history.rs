//! The replica's whole history, file by file (see [`check_history`]).

use super::*;

/// Walks the replica's whole history: every TXID's file applied in order (a resync snapshot
/// where a level-0 file is replaced by one) must give a committed state, never going backwards,
/// each file continuing the previous one's database checksum.
///
/// Does not check: compacted files (levels 1..8) or driver snapshots against the level-0 files
/// they merge (restores read them, so check (1) covers the ones a restore picks), or files of
/// a replaced host's lineage past the takeover (accepted as abandoned states, logged).
pub(super) fn check_history(w: &mut World) {
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
pub(super) struct Tracked {
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
