//! One sync: read what changed under the read transaction, prove continuity, encode, upload,
//! and move the position only once the store acknowledged the file.

use super::*;
use recovery::DbOnlyRead;

impl Engine {
    /// The upload of a prepared file, and what its acknowledgement will apply.
    pub(super) fn upload_of(
        &self,
        p: Prepared,
        resynced: bool,
        more: bool,
        checkpoint: Option<CheckpointPlan>,
    ) -> Upload {
        let info = FileInfo {
            level: 0,
            min_txid: p.min_txid,
            max_txid: p.pos.txid,
            size: p.size,
            created_ms: p.timestamp_ms,
        };
        let mode = if self.create_uploads {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        Upload {
            key: self.replica.key(&info),
            body: p.body,
            opts: PutOptions {
                mode,
                timestamp_ms: p.timestamp_ms,
            },
            ack: Ack {
                info,
                pos: p.pos,
                sums: p.sums,
                resynced,
                more,
                checkpoint,
            },
        }
    }

    /// Ready: recovers the position if an earlier upload found its TXID taken, reads what
    /// changed under the read transaction, proves continuity and encodes it. Returns the
    /// upload to perform, or what the sync did when there is nothing to ship. Nothing moves
    /// until [`Engine::acknowledge`].
    pub async fn prepare(&mut self) -> Result<Ready, EngineError> {
        self.prepare_as(false).await
    }

    /// [`Self::prepare`], for a WAL restart's sync when `restart_only` (see
    /// [`Self::sync_restart`]). Every prepare sets the flag, so a cancelled one leaves nothing.
    async fn prepare_as(&mut self, restart_only: bool) -> Result<Ready, EngineError> {
        self.restart_only = restart_only;
        if self.files.replaced().map_err(|e| self.io_err(e))? {
            return Err(EngineError::Gone {
                path: self.cfg.db_path.clone(),
            });
        }
        let mut outcome = SyncOutcome::default();
        self.release_held()?;
        if self.recover_needed {
            let prepared = self.recover_holding().await?;
            self.recover_needed = false;
            if let Some(p) = prepared {
                return Ok(Ready::Upload(Box::new(
                    self.upload_of(p, true, false, None),
                )));
            }
        }
        self.begin_read()?;
        let prepared = match self.prepare_sync(&mut outcome).await {
            Err(e) => Err(e),
            Ok((prepared, wal_len)) => {
                // Decided on the state just read; none when the read stopped short of the WAL's
                // end (one file's worth, or the WAL moved under it). With nothing to ship, a
                // PASSIVE one runs now, under the read; with an upload, once it is acknowledged.
                let generation_end = prepared.as_ref().map_or(self.pos.wal, |p| p.pos.wal);
                let plan = if outcome.more {
                    CheckpointPlan::None
                } else {
                    self.checkpoint_plan(generation_end, wal_len)
                };
                let checkpointed = if prepared.is_none() && plan == CheckpointPlan::Passive {
                    self.checkpoint(plan)
                } else {
                    Ok(())
                };
                checkpointed.map(|()| (prepared, plan))
            }
        };
        let released = self.end_read();
        let (prepared, plan) = prepared?;
        released?;
        let checkpoint = (plan != CheckpointPlan::None).then_some(plan);
        match prepared {
            Some(p) => Ok(Ready::Upload(Box::new(self.upload_of(
                p,
                outcome.resynced,
                outcome.more,
                checkpoint,
            )))),
            None => {
                if plan == CheckpointPlan::Truncate {
                    self.checkpoint(plan)?;
                }
                outcome.checkpoint = checkpoint;
                Ok(Ready::Nothing(outcome))
            }
        }
    }

    /// Advance: applies the store's answer to an upload. Only an acknowledged upload moves the
    /// position. A TXID found taken (our own earlier attempt whose reply was lost, another
    /// replicator, a listing that lagged) makes the next sync recover the position first; a
    /// store that refuses the conditional write gets plain PUTs from then on, with a warning.
    pub fn acknowledge(
        &mut self,
        ack: Ack,
        answer: Result<(), StoreError>,
    ) -> Result<SyncOutcome, EngineError> {
        // A read kept through the upload: judged while still held, then let go before any
        // checkpoint (it would block a TRUNCATE), whatever the answer.
        let held = self.held.take();
        let restarted = match (&held, &answer) {
            (Some(h), Ok(())) => self.restart_under(h),
            _ => Ok(None),
        };
        if held.is_some() {
            self.end_read()?;
        }
        let restarted = restarted?;
        let heals = std::mem::take(&mut self.heal_pending);
        if heals && answer.is_err() {
            // Judge the chain again and ship the heal again at the next sync.
            self.recover_needed = true;
        }
        match answer {
            Ok(()) => {}
            Err(e) if e.kind == StoreErrorKind::AlreadyExists => {
                self.recover_needed = true;
                return Err(EngineError::Replica {
                    replica: self.replica.describe(),
                    message: format!(
                        "TXID {:016x} already exists (an earlier attempt whose reply was lost, another replicator, or a listing that lagged); re-reading the replica's position",
                        ack.pos.txid
                    ),
                });
            }
            Err(e) if self.create_uploads && e.kind == StoreErrorKind::Unsupported => {
                // A store without conditional writes: carry on unprotected, and say so.
                tracing::warn!(error = %e, replica = %self.replica.describe(), "the store refused a conditional write; uploading without If-None-Match from now on (a second writer could replace files)");
                self.create_uploads = false;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        }
        if heals {
            self.heal_file = Some(ack.info.clone());
        }
        self.pos = match restarted {
            Some(wal) => ack
                .pos
                .follow(ack.pos.txid, ack.pos.checksum, wal, self.read_stamp),
            None => ack.pos,
        };
        self.sums = ack.sums;
        let checkpoint = match ack.checkpoint {
            Some(CheckpointPlan::Truncate) => {
                self.checkpoint(CheckpointPlan::Truncate)?;
                ack.checkpoint
            }
            Some(CheckpointPlan::Passive) => self
                .checkpoint_shipped()?
                .then_some(CheckpointPlan::Passive),
            _ => None,
        };
        Ok(SyncOutcome {
            shipped: Some(ack.info),
            resynced: ack.resynced,
            more: ack.more,
            checkpoint,
        })
    }

    /// Performs an upload and acknowledges the answer: what a sync does between `prepare` and
    /// `acknowledge`.
    pub(super) async fn send(&mut self, upload: Upload) -> Result<SyncOutcome, EngineError> {
        let Upload {
            key,
            body,
            opts,
            ack,
        } = upload;
        let store = self.replica.store.clone();
        if planted::active(Bug::AckBeforeUpload) {
            // The position moves first, and the store's answer is ignored.
            let outcome = self.acknowledge(ack, Ok(()));
            let _ = crate::store::put_body(store.as_ref(), &key, body, opts).await;
            return outcome;
        }
        let answer = crate::store::put_body(store.as_ref(), &key, body, opts).await;
        self.acknowledge(ack, answer)
    }

    /// One sync: read what changed since the replica's position and ship it as one file
    /// ([`Engine::prepare`], the upload, [`Engine::acknowledge`]).
    ///
    /// The read transaction is held only while reading and encoding, never during the upload
    /// or between syncs: a reader that never lets go starves the application's RESTART and
    /// TRUNCATE checkpoints, which hold the write lock while they wait (Litestream #724). Frames
    /// overwritten between syncs are caught by the continuity checks instead. The one exception
    /// is the upload a recovery prepared (a first snapshot, a heal: every page), whose read is
    /// kept until the store answers ([`Engine::recover_holding`]): that read already lasted as
    /// long as reading the whole database, and letting it go before a long upload let a busy
    /// application's checkpoints restart the WAL past the snapshot, so the next sync compared
    /// the whole database again.
    pub async fn sync(&mut self) -> Result<SyncOutcome, EngineError> {
        self.sync_as(false).await
    }

    async fn sync_as(&mut self, restart_only: bool) -> Result<SyncOutcome, EngineError> {
        match self.prepare_as(restart_only).await? {
            Ready::Nothing(outcome) => Ok(outcome),
            Ready::Upload(upload) => self.send(*upload).await,
        }
    }

    /// A sync right after the WAL restarted (`scheduler::Action::SyncRestart`): ships the old
    /// generation's tail and the new generation while the tail still proves continuity, and
    /// nothing when it no longer can (the new generation already overwrote it): the full
    /// compare that needs is left to the next sync at the interval, so a WAL that restarts
    /// faster than the engine can follow costs one compare an interval, not one a restart.
    /// Declined, the outcome ships nothing and says `more` (the changes are still pending).
    pub async fn sync_restart(&mut self) -> Result<SyncOutcome, EngineError> {
        self.sync_as(true).await
    }

    /// Reads what changed and encodes it, under the read transaction. Also returns the WAL
    /// size seen, for the checkpoint decision.
    pub(super) async fn prepare_sync(
        &mut self,
        outcome: &mut SyncOutcome,
    ) -> Result<(Option<Prepared>, u64), EngineError> {
        // The pages its scans read are kept for its encoding, and for no later sync.
        self.frames().begin();
        let prepared = self.prepare_sync_scanned(outcome).await;
        self.frames().end();
        prepared
    }

    async fn prepare_sync_scanned(
        &mut self,
        outcome: &mut SyncOutcome,
    ) -> Result<(Option<Prepared>, u64), EngineError> {
        self.read_db_only = None;
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
                let next_frame_salts = self.frame_salts_at(old_end)?;
                let evidence = state::TailEvidence {
                    old_offset: old.offset(),
                    new_committed_end: n.end_offset,
                    new_written_end: written,
                    frame_bytes: new.header().frame_size(),
                    next_frame_salts,
                    new_salts: (new.header().salt1, new.header().salt2),
                    old_end,
                    file_len: self.files.wal_len().map_err(|e| self.io_err(e))?,
                };
                if !state::old_tail_intact(&evidence) {
                    if self.restart_only {
                        return Ok(self.decline(outcome, wal_len));
                    }
                    self.resync_batch(header, outcome).await?
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
                    // The state continues ours: its size is ours until a commit of the tail or
                    // of the new generation sets it. Not the file's length, which a checkpoint
                    // may leave longer than the database (simulator seed 20261202002000184,
                    // the first nightly: a file of 1,089 pages under a database of 1,080
                    // shipped as 1,089 pages).
                    map.commit = self.sums.commit();
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
            SyncPlan::Resync if self.restart_only => return Ok(self.decline(outcome, wal_len)),
            SyncPlan::Resync => self.resync_batch(header, outcome).await?,
        };
        let mut prepared = match batch {
            Some((map, changed, wal, start)) => {
                Some(self.prepare_incremental(&map, &changed, wal, start).await?)
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
        match self.judge_db_only_read(header, after)? {
            Some(DbOnlyRead::Held) => intact = true,
            Some(DbOnlyRead::Restarted(wal)) => {
                self.begin_at(&mut prepared, wal);
                intact = true;
            }
            Some(DbOnlyRead::Torn) => intact = false,
            None => {}
        }
        if !intact {
            tracing::debug!(db = %self.cfg.db_path.display(), "WAL changed under the read; retrying");
            outcome.more = true;
            return Ok((None, wal_len));
        }
        Ok((prepared, wal_len))
    }

    /// A restart's sync that cannot prove continuity ships nothing (see [`Self::sync_restart`]).
    fn decline(&self, outcome: &mut SyncOutcome, wal_len: u64) -> (Option<Prepared>, u64) {
        tracing::debug!(db = %self.cfg.db_path.display(), "the WAL restarted over frames not read yet; the next sync compares the database");
        outcome.more = true;
        (None, wal_len)
    }

    /// Compares the whole current database with the replica's state: the changed pages.
    pub(super) async fn resync_batch(
        &mut self,
        header: Option<WalHeader>,
        outcome: &mut SyncOutcome,
    ) -> Result<Option<(StateMap, Vec<u32>, Option<WalPos>, u64)>, EngineError> {
        outcome.resynced = true;
        let all = match header {
            Some(h) => Some((h, self.scan(&mut WalScanner::new(h), u64::MAX)?)),
            None => None,
        };
        let map = self.read_map(all.as_ref().map(|(_, c)| c))?;
        let sums = self.sums_of(&map).await?;
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

    /// A PASSIVE checkpoint of what the replica now holds, once an upload is acknowledged (an
    /// upload that failed leaves the WAL as it was, so the recovery after it can prove the
    /// position from the frames). It runs under a fresh read, and only when nothing was written
    /// to the WAL past the position: that read's snapshot then ends at the position, and the
    /// checkpoint backfills no frame the replica lacks. Otherwise it waits for a later sync.
    /// Whether it ran.
    fn checkpoint_shipped(&mut self) -> Result<bool, EngineError> {
        let Some(w) = self.pos.wal else {
            return Ok(false);
        };
        self.begin_read()?;
        let quiet = (|| -> Result<bool, EngineError> {
            let (header, _) = self.wal_header()?;
            if header != Some(w.header) {
                return Ok(false);
            }
            // A frame of this generation past the position (committed or not): written since.
            let next = self.frame_salts_at(w.offset)?;
            Ok(next != Some((w.header.salt1, w.header.salt2)))
        })();
        let ran = match quiet {
            Ok(true) => self.checkpoint(CheckpointPlan::Passive).map(|()| true),
            other => other,
        };
        let released = self.end_read();
        let ran = ran?;
        released?;
        Ok(ran)
    }

    /// The salts of the frame header at `offset` in the WAL, if a whole header is there.
    fn frame_salts_at(&self, offset: u64) -> Result<Option<(u32, u32)>, EngineError> {
        let mut h = [0u8; FRAME_HEADER_SIZE];
        let got = self
            .files
            .read_wal(offset, &mut h)
            .map_err(|e| self.io_err(e))?;
        let salt = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        Ok((got == FRAME_HEADER_SIZE).then(|| (salt(8), salt(12))))
    }

    /// The checkpoint a sync calls for, from where the state it read ends in the WAL (the
    /// current generation's committed frames, all read) and the `-wal` file's length.
    ///
    /// PASSIVE runs under a read of ours, on the checkpointing connection: SQLite then
    /// backfills only frames that read's snapshot covers, all shipped, so the restart that may
    /// follow overwrites nothing unread. (Run with no read held, as it once was, it backfilled
    /// frames the application committed after the sync's read, the next write restarted the
    /// WAL over them, and the following sync compared the whole database.) TRUNCATE waits for
    /// readers, ours too, so it runs after the read: frames committed in between are lost to
    /// the WAL and the next sync compares the database (a file past the TRUNCATE threshold is
    /// rare: hundreds of MiB).
    pub(super) fn checkpoint_plan(&self, read_end: Option<WalPos>, wal_len: u64) -> CheckpointPlan {
        let frame = u64::from(self.page_size) + FRAME_HEADER_SIZE as u64;
        let frames = |len: u64| len.saturating_sub(WAL_HEADER_SIZE as u64) / frame;
        let generation = if planted::active(Bug::PassiveByFileLength) {
            frames(wal_len)
        } else {
            read_end.map_or(0, |w| frames(w.offset))
        };
        state::plan_checkpoint(
            &self.cfg.checkpoint,
            generation,
            frames(wal_len),
            self.clock.now_ms() - self.last_checkpoint_ms,
        )
    }
}
