//! Recovering the replica's position at a start (or after an upload found its TXID taken):
//! the newest file, looked up past a lagging listing, proven against the local database.

use super::*;

/// How a read of the database file alone ended ([`Engine::judge_db_only_read`]).
pub(super) enum DbOnlyRead {
    /// Nothing it read moved.
    Held,
    /// The WAL restarted: the state read is where this generation begins.
    Restarted(Option<WalPos>),
    /// A checkpoint wrote the file under the read.
    Torn,
}

/// A recovery's read kept through the upload it prepared (see [`Engine::recover_holding`]).
pub(super) struct HeldRead {
    /// The WAL's header when the read's state was judged.
    wal: Option<WalHeader>,
    /// The state read was the database file alone (the WAL wholly checkpointed into it).
    db_only: bool,
}

/// The local database as one recovery read it.
struct LocalRead {
    all: Option<(WalHeader, Committed)>,
    current: StateMap,
    current_sums: PageSums,
    current_wal: Option<WalPos>,
}

/// A WAL header as far as telling generations apart goes.
fn whole_header(h: Option<WalHeader>) -> Option<(u32, u32, (u32, u32))> {
    h.map(|h| (h.salt1, h.salt2, h.checksum))
}

/// The position at the start of the generation `h` begins, before its first frame.
fn generation_start(h: WalHeader) -> WalPos {
    WalPos {
        header: h,
        offset: WAL_HEADER_SIZE as u64,
        checksum: h.checksum,
    }
}

impl Engine {
    /// The file right after `newest` that a listing did not show: a level-0 file of the next
    /// TXID, or a level-9 snapshot ending there.
    pub(super) async fn probe_next(
        &self,
        newest: Option<&FileInfo>,
    ) -> Result<Option<FileInfo>, EngineError> {
        let next = newest.map_or(1, |f| f.max_txid + 1);
        for (level, min_txid) in [(0u8, next), (SNAPSHOT_LEVEL, 1)] {
            let mut info = FileInfo {
                level,
                min_txid,
                max_txid: next,
                size: 0,
                created_ms: 0,
            };
            match self.replica.store.head(&self.replica.key(&info)).await {
                Ok(meta) => {
                    info.size = meta.size;
                    info.created_ms = meta.timestamp_ms;
                    tracing::info!(file = %info, "found a file the listing did not show");
                    return Ok(Some(info));
                }
                Err(e) if e.kind == StoreErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// [`Self::recover_position`] under a read transaction. When it prepared an upload (the
    /// first snapshot, a heal: every page), the read is kept until the store answers
    /// ([`Self::acknowledge`]): the application's checkpoints cannot backfill past the state
    /// shipped, nor restart the WAL over frames not read yet, while it uploads, so the next
    /// sync continues from it instead of comparing the whole database (core/DESIGN.md, "The
    /// first snapshot of a busy database").
    pub(super) async fn recover_holding(&mut self) -> Result<Option<Prepared>, EngineError> {
        self.release_held()?;
        self.begin_read()?;
        let prepared = self.recover_position().await;
        let keep = matches!(prepared, Ok(Some(_))) && !planted::active(Bug::SnapshotReadReleased);
        let header = if keep {
            self.wal_header().map(|(h, _)| Some(h))
        } else {
            Ok(None)
        };
        if let Ok(Some(wal)) = header {
            self.held = Some(HeldRead {
                wal,
                db_only: self.read_db_only.is_some(),
            });
            return prepared;
        }
        let released = self.end_read();
        let prepared = prepared?;
        header?;
        released?;
        Ok(prepared)
    }

    /// At the answer to an upload read under `held`: whether the WAL restarted meanwhile. Only
    /// a read of the database file alone (SQLite's read mark 0) lets a writer restart it, and
    /// that mark also stops every checkpoint from writing the file, so the state shipped is
    /// where the new generation begins (as [`Self::judge_db_only_read`] finds for a restart
    /// during the read). `Some(start)` moves the position there.
    pub(super) fn restart_under(
        &self,
        held: &HeldRead,
    ) -> Result<Option<Option<WalPos>>, EngineError> {
        if !held.db_only {
            return Ok(None);
        }
        let (now, _) = self.wal_header()?;
        Ok((whole_header(held.wal) != whole_header(now)).then(|| now.map(generation_start)))
    }

    /// [`Self::recover_position_once`], repeated while the WAL moved under the read: the
    /// application may commit (even restart the WAL, when our read lock is on the database file
    /// alone) while we read, and a proof or snapshot read across that is torn (found by
    /// sluice-sim seed 162: a snapshot written while the application committed).
    ///
    /// A read of the database file alone is kept, restart or not ([`Self::judge_db_only_read`]):
    /// otherwise the first snapshot of a busy database would be thrown away at each restart
    /// and, on a large database under steady writes, never finish.
    pub(super) async fn recover_position(&mut self) -> Result<Option<Prepared>, EngineError> {
        const ATTEMPTS: u32 = 3;
        for _ in 0..ATTEMPTS {
            let (mut result, before) = self.recover_position_once().await?;
            let after = self.wal_fingerprint()?;
            match self.judge_db_only_read(before.map(|b| b.0), after.map(|a| a.0))? {
                Some(DbOnlyRead::Held) => return Ok(result),
                Some(DbOnlyRead::Restarted(wal)) => {
                    self.begin_at(&mut result, wal);
                    return Ok(result);
                }
                Some(DbOnlyRead::Torn) => {}
                None => {
                    if state::read_was_stable(before, after)
                        || planted::active(Bug::SkipRecoveryRecheck)
                    {
                        return Ok(result);
                    }
                }
            }
            tracing::debug!(db = %self.cfg.db_path.display(), "WAL changed while recovering the position; reading again");
        }
        Err(EngineError::Database {
            path: self.cfg.db_path.clone(),
            message: format!(
                "the WAL changed during each of {ATTEMPTS} attempts to read a consistent state; will retry"
            ),
        })
    }

    /// The WAL's generation and where its committed frames end. The same generation before and
    /// after a read, with the committed frames reaching at least as far, means nothing the read
    /// used was rewritten (within a generation committed frames are only appended).
    pub(super) fn wal_fingerprint(&self) -> Result<Option<(WalHeader, u64)>, EngineError> {
        let (header, _) = self.wal_header()?;
        let Some(h) = header else { return Ok(None) };
        let c = self.scan(&mut WalScanner::new(h), u64::MAX)?;
        Ok(Some((h, c.end_offset)))
    }

    /// Whether the database file already holds the state `map` describes: the committed size,
    /// and every page the WAL carries with the WAL's bytes (a checkpoint backfilled them all).
    /// Reads the WAL's pages twice, never the rest of the database.
    pub(super) fn wal_backfilled(&self, map: &StateMap) -> Result<bool, EngineError> {
        let db_pages = self.files.db_len().map_err(|e| self.io_err(e))? / u64::from(self.page_size);
        if db_pages != u64::from(map.commit) {
            return Ok(false);
        }
        if planted::active(Bug::BackfillUnchecked) {
            return Ok(true);
        }
        let db_file = StateMap {
            commit: map.commit,
            wal_pages: BTreeMap::new(),
        };
        let mut in_wal = vec![0u8; self.page_size as usize];
        let mut in_db = vec![0u8; self.page_size as usize];
        for &pgno in map.wal_pages.keys() {
            self.read_page(map, pgno, &mut in_wal)?;
            self.read_page(&db_file, pgno, &mut in_db)?;
            if in_wal != in_db {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The state "database file plus `committed`", read from the database file alone when there
    /// is no WAL or it is wholly checkpointed into it (remembered in `read_db_only` for the
    /// judgement at the read's end).
    pub(super) fn read_map(
        &mut self,
        committed: Option<&Committed>,
    ) -> Result<StateMap, EngineError> {
        let mut map = self.state_map(committed)?;
        self.read_db_only = None;
        // No WAL (none yet, or truncated by a checkpoint) is a read of the file alone too.
        if committed.is_none() || self.wal_backfilled(&map)? {
            self.read_db_only = Some(StateMap {
                commit: map.commit,
                wal_pages: std::mem::take(&mut map.wal_pages),
            });
        }
        Ok(map)
    }

    /// Makes the state read (shipped by `prepared`, or the position itself) end at `wal`: the
    /// start of the generation a restart began under a read of the database file alone.
    pub(super) fn begin_at(&mut self, prepared: &mut Option<Prepared>, wal: Option<WalPos>) {
        let pos = prepared.as_ref().map_or(self.pos, |p| p.pos);
        let moved = self
            .pos
            .follow(pos.txid, pos.checksum, wal, self.read_stamp);
        match prepared {
            Some(p) => p.pos = moved,
            None => self.pos = moved,
        }
    }

    /// Judges, once it is over, a read that took the database file alone (`None` for any other
    /// read). `before` is the WAL header the read began with, `after` the one now.
    ///
    /// SQLite gives a read begun on a wholly checkpointed WAL read mark 0, under which no
    /// checkpoint writes the database file, but a writer may still restart the WAL: then the
    /// state read is where the new generation begins. A read that found the WAL checkpointed
    /// while holding a later mark (the checkpoint ran after the read began) has no restart to
    /// fear, but a checkpoint may still be copying frames up to that mark; such a read holds
    /// only if the file still matches the WAL at its end.
    pub(super) fn judge_db_only_read(
        &self,
        before: Option<WalHeader>,
        after: Option<WalHeader>,
    ) -> Result<Option<DbOnlyRead>, EngineError> {
        let Some(map) = &self.read_db_only else {
            return Ok(None);
        };
        if whole_header(before) != whole_header(after) {
            tracing::debug!(db = %self.cfg.db_path.display(), "the WAL restarted while the database file was read; following the new generation from its start");
            return Ok(Some(DbOnlyRead::Restarted(after.map(generation_start))));
        }
        Ok(Some(if self.wal_backfilled(map)? {
            DbOnlyRead::Held
        } else {
            DbOnlyRead::Torn
        }))
    }

    /// Finds the replica's newest file and proves how the local database relates to it. Also
    /// returns the WAL as the read found it, for [`Self::recover_position`]'s check.
    pub(super) async fn recover_position_once(
        &mut self,
    ) -> Result<(Option<Prepared>, Option<(WalHeader, u64)>), EngineError> {
        self.heal_pending = false;
        self.recoveries += 1;
        let files = self.replica.list_all().await?;
        let local = self.read_local().await?;
        let fingerprint = local.all.as_ref().map(|(h, c)| (*h, c.end_offset));
        Ok((self.prove_position(files, local).await?, fingerprint))
    }

    /// The local database's current state, with its page checksums.
    async fn read_local(&mut self) -> Result<LocalRead, EngineError> {
        self.read_stamp = self.files.db_stamp().map_err(|e| self.io_err(e))?;
        let (header, _) = self.wal_header()?;
        let all = match header {
            Some(h) => Some((h, self.scan(&mut WalScanner::new(h), u64::MAX)?)),
            None => None,
        };
        let current = self.read_map(all.as_ref().map(|(_, c)| c))?;
        let current_sums = self.sums_of(&current).await?;
        let current_wal = all.as_ref().map(|(h, c)| WalPos {
            header: *h,
            offset: c.end_offset,
            checksum: c.end_checksum,
        });
        Ok(LocalRead {
            all,
            current,
            current_sums,
            current_wal,
        })
    }

    /// Proves how the local state read relates to the replica's newest file: resumes from it,
    /// or returns every page to ship.
    async fn prove_position(
        &mut self,
        files: Vec<FileInfo>,
        local: LocalRead,
    ) -> Result<Option<Prepared>, EngineError> {
        let LocalRead {
            all,
            current,
            current_sums,
            current_wal,
        } = local;
        let mut newest = files
            .iter()
            .max_by_key(|f| (f.max_txid, std::cmp::Reverse(f.level)))
            .cloned();
        // A listing may lag behind writes (some S3-compatible stores): look past it with HEADs,
        // which see every acknowledged write, for the files a sync or a start would write next.
        let mut known = files.clone();
        while let Some(next) = self.probe_next(newest.as_ref()).await? {
            known.push(next.clone());
            newest = Some(next);
        }
        // Damaged files a merge found count as missing (the newest one is read back below).
        known.retain(|f| !self.damaged.contains(f));
        self.replica_break = newest
            .as_ref()
            .and_then(|n| chain_break(&self.replica.describe(), &known, n.max_txid));
        if let Some(why) = &self.replica_break {
            tracing::error!(
                replica = %self.replica.describe(),
                "the replica cannot be restored to its newest state: {why}; new files extend it but restores fail until the break is repaired (`sluice verify` shows it)"
            );
        }
        let Some(newest) = newest else {
            // An empty replica: the first file is a full snapshot at TXID 1.
            tracing::info!(replica = %self.replica.describe(), "replica is empty; shipping a snapshot");
            return self
                .prepare_full(&current, current_sums, current_wal, 0, 0)
                .await
                .map(Some);
        };
        let ends = match self.read_file_ends(&newest).await {
            Err(EngineError::Replica { message, .. }) => Err(message),
            Err(e) => return Err(e),
            Ok(ends) => match self.newest_file_damage(&newest).await? {
                Some(damage) => Err(damage),
                None => Ok(ends),
            },
        };
        let (rh, post) = match ends {
            Ok(ends) => ends,
            Err(damage) => {
                // A newest file that cannot be read back is a break too: heal past it.
                let why = format!("its newest file {newest} is damaged: {damage}");
                tracing::error!(
                    replica = %self.replica.describe(),
                    "the replica cannot be restored to its newest state: {why}"
                );
                self.replica_break = Some(why);
                self.refuse_foreign_lineage()?;
                let p = self
                    .prepare_full(&current, current_sums, current_wal, newest.max_txid, 0)
                    .await?;
                self.heal_pending = true;
                return Ok(Some(p));
            }
        };
        if rh.page_size != self.page_size {
            return Err(EngineError::Incompatible {
                replica: self.replica.describe(),
                message: format!(
                    "holds pages of {} bytes but the database uses {}",
                    rh.page_size, self.page_size
                ),
            });
        }
        if self.replica_break.is_some() {
            self.refuse_foreign_lineage()?;
            // The heal: every page at the next TXID (under the conditional PUT), which the
            // driver then writes again as a snapshot, so restores start past the break.
            tracing::warn!(
                replica = %self.replica.describe(),
                txid = format_args!("{:016x}", newest.max_txid + 1),
                "healing the replica: shipping every page"
            );
            let p = self
                .prepare_full(&current, current_sums, current_wal, newest.max_txid, post)
                .await?;
            self.heal_pending = true;
            return Ok(Some(p));
        }
        let replica_sum = DbChecksum::from_raw(post);
        let mut proven = None;
        if post != 0 {
            // (a) Same WAL generation: the state at the replica's WAL offset. Not after a read
            // of the database file alone: its WAL frames, all checkpointed, may be overwritten
            // under the read, and an earlier state is no longer in the file (at the WAL's end,
            // (c) proves the same).
            if let Some((h, _)) = &all
                && self.read_db_only.is_none()
                && (rh.wal_salt1, rh.wal_salt2) == (h.salt1, h.salt2)
                && rh.wal_offset > 0
            {
                let end = u64::try_from(rh.wal_offset + rh.wal_size).unwrap_or(0);
                let mut sc = WalScanner::new(*h);
                let upto = self.scan(&mut sc, end.saturating_sub(WAL_HEADER_SIZE as u64).max(1))?;
                if upto.end_offset == end {
                    let map = self.state_map(Some(&upto))?;
                    let sums = self.sums_of(&map).await?;
                    if sums.total() == replica_sum {
                        let wal = WalPos {
                            header: *h,
                            offset: upto.end_offset,
                            checksum: upto.end_checksum,
                        };
                        proven = Some((sums, Some(wal)));
                    }
                }
            }
            // (b) The WAL restarted (or is gone) since: the database file alone.
            let restarted = all
                .as_ref()
                .is_none_or(|(h, _)| (rh.wal_salt1, rh.wal_salt2) != (h.salt1, h.salt2));
            if proven.is_none() && restarted {
                let map = self.state_map(None)?;
                let sums = if current.wal_pages.is_empty() && map.commit == current.commit {
                    current_sums.clone()
                } else {
                    self.sums_of(&map).await?
                };
                if sums.total() == replica_sum {
                    let wal = all.as_ref().map(|(h, _)| WalPos {
                        header: *h,
                        offset: WAL_HEADER_SIZE as u64,
                        checksum: h.checksum,
                    });
                    proven = Some((sums, wal));
                }
            }
            // (c) Nothing changed at all.
            if proven.is_none() && current_sums.total() == replica_sum {
                proven = Some((current_sums.clone(), current_wal));
            }
        }
        match proven {
            Some((sums, wal)) => {
                tracing::info!(
                    txid = format_args!("{:016x}", newest.max_txid),
                    "resuming replication"
                );
                self.pos = self.pos.follow(
                    newest.max_txid - u64::from(planted::active(Bug::ReuseTxidAfterRestart)),
                    replica_sum,
                    wal,
                    self.read_stamp,
                );
                self.sums = sums;
            }
            None => {
                self.refuse_foreign_lineage()?;
                tracing::warn!(
                    replica = %self.replica.describe(),
                    txid = format_args!("{:016x}", newest.max_txid),
                    "cannot prove the local database continues the replica; shipping every page"
                );
                return self
                    .prepare_full(&current, current_sums, current_wal, newest.max_txid, post)
                    .await
                    .map(Some);
            }
        }
        Ok(None)
    }

    /// Refuses to ship every page over a replica that holds another database's history (its
    /// lease says so): two databases on one replica path overwrite each other, and a restore
    /// returns whichever wrote last. A database restored from it to a new path (a replaced
    /// host) proves it continues the replica and never gets here.
    fn refuse_foreign_lineage(&self) -> Result<(), EngineError> {
        let Some(theirs) = &self.cfg.foreign_lineage else {
            return Ok(());
        };
        let ours = self.cfg.db_path.display();
        Err(EngineError::Incompatible {
            replica: self.replica.describe(),
            message: format!(
                "it holds the history of database {theirs}, which {ours} does not continue: two databases on one replica would overwrite each other's files. Give {ours} its own replica path, or pass -force to continue the replica with {ours} (restores to later times then return {ours})"
            ),
        })
    }

    /// Reads the newest file whole (when at most `NEWEST_CHECK_BYTES_MAX`) and decodes it:
    /// its CRC, header and pages. `Some(why)` when it is damaged; store errors are errors.
    async fn newest_file_damage(&self, f: &FileInfo) -> Result<Option<String>, EngineError> {
        if f.size > NEWEST_CHECK_BYTES_MAX {
            return Ok(None);
        }
        let bytes = self.read_range(f, 0, f.size).await?;
        if bytes.len() as u64 != f.size {
            return Ok(Some(format!(
                "{} bytes read of the {} listed",
                bytes.len(),
                f.size
            )));
        }
        Ok(crate::ltx::check_whole(&bytes[..])
            .err()
            .map(|e| e.to_string()))
    }

    async fn read_range(
        &self,
        f: &FileInfo,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, EngineError> {
        Ok(self.replica.read_range(f, offset, len, len.max(1)).await?)
    }

    /// Reads a replica file's header and trailer with two ranged reads.
    pub(super) async fn read_file_ends(&self, f: &FileInfo) -> Result<(Header, u64), EngineError> {
        let head = self.read_range(f, 0, HEADER_SIZE as u64).await?;
        let tail = self
            .read_range(
                f,
                f.size.saturating_sub(TRAILER_SIZE as u64),
                TRAILER_SIZE as u64,
            )
            .await?;
        let bad = |m: String| EngineError::Replica {
            replica: self.replica.describe(),
            message: format!("{f}: {m}"),
        };
        let head: [u8; HEADER_SIZE] = head
            .try_into()
            .map_err(|_| bad("shorter than an LTX header".into()))?;
        let header = Header::decode(&head).map_err(|e| bad(e.to_string()))?;
        let tail: [u8; TRAILER_SIZE] = tail
            .try_into()
            .map_err(|_| bad("shorter than an LTX trailer".into()))?;
        let mut post = [0u8; 8];
        post.copy_from_slice(&tail[..8]);
        let trailer = crate::ltx::Trailer {
            post_apply_checksum: u64::from_be_bytes(post),
            file_checksum: 0,
        };
        // Zero when the file records no database checksum (Litestream's files).
        Ok((
            header,
            header.db_checksums(&trailer).map_or(0, |(_, post)| post),
        ))
    }
}

/// The newest file is read back whole at every start up to this size (a level-0 file usually
/// is small; a larger one, such as a resync of a big database, is trusted to its header).
pub const NEWEST_CHECK_BYTES_MAX: u64 = 16 << 20;

/// Why a replica whose newest file ends at `newest` cannot be restored to it, judged from the
/// file names alone (restore's own plan): `None` when it can.
pub fn chain_break(replica: &str, files: &[FileInfo], newest: u64) -> Option<String> {
    match crate::restore::plan(replica, files, crate::restore::Target::Latest) {
        Ok(p) => match p.last() {
            Some(f) if f.max_txid >= newest => None,
            Some(f) => Some(format!(
                "a restore stops at TXID {:016x}, before the newest file's {newest:016x}",
                f.max_txid
            )),
            None => Some("a restore finds no file to start from".into()),
        },
        Err(e) => Some(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::replica::test_file as f;

    #[test]
    fn a_deleted_middle_file_is_a_break_and_a_snapshot_past_it_is_not() {
        let broken = [f(0, 1, 1), f(0, 2, 2), f(0, 4, 4)];
        let why = chain_break("r", &broken, 4).expect("a break");
        assert!(why.contains("gap"), "{why}");
        let bridged = [f(0, 1, 1), f(0, 2, 2), f(9, 1, 3), f(0, 4, 4)];
        assert_eq!(chain_break("r", &bridged, 4), None);
        assert!(chain_break("r", &[f(0, 2, 2)], 2).is_some(), "no start");
    }
}
