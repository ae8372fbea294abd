//! Encoding level-0 files: every page of a state, or the pages a batch changed, with the
//! database checksums before and after.

use super::*;

impl Engine {
    pub(super) fn wal_fields(wal: Option<&WalPos>, start: u64) -> (i64, i64, u32, u32) {
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

    /// Every page of the current state as one level-0 file at TXID `after + 1`: a snapshot
    /// (`1..=1`, `after_checksum` 0) on an empty replica, otherwise an incremental file over the
    /// replica's newest state (`after_checksum`), which holds every page, so it is right whatever that state was.
    /// It stays at level 0, under the conditional PUT: a zombie writer of a replaced host and
    /// this start cannot both claim the TXID (a level-9 snapshot `1..=N` and a level-0 `N`
    /// could coexist, and the chain would fork; found by sluice-sim's zombie writer). The
    /// driver's snapshots (level 9) follow on their schedule.
    pub(super) async fn prepare_full(
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
        let mut enc = Encoder::new(Spool::new(self.scratch.clone()), header)?;
        let lock = lock_pgno(self.page_size);
        let mut buf = vec![0u8; self.page_size as usize];
        for pgno in (1..=map.commit).filter(|&p| p != lock) {
            self.read_page(map, pgno, &mut buf)?;
            enc.encode_page(pgno, &buf)?;
            pace(pgno).await;
        }
        let (spool, _) = enc.finish(None)?;
        let body = spool.finish().map_err(|e| self.spool_err(e))?;
        Ok(Prepared {
            min_txid,
            size: body.len().map_err(|e| self.spool_err(e))?,
            body,
            timestamp_ms: header.timestamp_ms,
            pos: self.pos.follow(txid, sums.total(), wal, self.read_stamp),
            sums,
        })
    }

    /// A failure of the scratch file a large file is spooled to.
    fn spool_err(&self, error: std::io::Error) -> EngineError {
        EngineError::Io {
            path: self.scratch.location(),
            error,
        }
    }

    /// The header of a file sluice writes: the no-checksum flag, so Litestream restores it, and
    /// sluice's database checksums in the reserved bytes (see `ltx::ExtChecksums`).
    pub(super) fn file_header(
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
            // A non-snapshot whose starting state is unknown (a heal past a damaged file)
            // records no checksums rather than a false one.
            ext: (min_txid == 1 || pre != 0).then_some(ExtChecksums {
                pre,
                post: post.raw(),
            }),
        }
    }

    /// Encodes and uploads the pages `changed` of state `map` as the next level-0 file, then
    /// advances the position. Pages the database grew by without a frame are read from the file.
    pub(super) async fn prepare_incremental(
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
        for (n, &pgno) in (1..).zip(&pages) {
            self.read_page(map, pgno, &mut buf)?;
            sums.set(pgno, page_checksum(pgno, &buf));
            pace(n).await;
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
        let mut enc = Encoder::new(Spool::new(self.scratch.clone()), header)?;
        // Second pass: encode. The pages cannot change in between: the read transaction pins
        // the WAL frames and the database pages they shadow.
        for (n, &pgno) in (1..).zip(&pages) {
            self.read_page(map, pgno, &mut buf)?;
            enc.encode_page(pgno, &buf)?;
            pace(n).await;
        }
        let (spool, _) = enc.finish(None)?;
        let body = spool.finish().map_err(|e| self.spool_err(e))?;
        Ok(Prepared {
            min_txid: txid,
            size: body.len().map_err(|e| self.spool_err(e))?,
            body,
            timestamp_ms: header.timestamp_ms,
            pos: self.pos.follow(txid, sums.total(), wal, self.read_stamp),
            sums,
        })
    }
}
