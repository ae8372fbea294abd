//! The application: its connections, the transactions and row operations the seed draws,
//! checkpoints, VACUUM and reconnects, and the oracle's record of every commit.

use super::*;

/// One row operation, drawn before it runs.
#[derive(Clone, Copy, Debug)]
pub(super) struct Op {
    /// Chooses the kind: insert, update, delete or (rarely) a schema change.
    roll: f64,
    size: usize,
    fill: u8,
    /// The row an update or delete aims at.
    target: u64,
}

pub(super) fn apply_ops(app: &Connection, ops: &[Op]) -> rusqlite::Result<()> {
    for op in ops {
        let Op {
            roll,
            size,
            fill,
            target,
        } = *op;
        if roll >= 0.97 {
            // Schema changes: a side table comes and goes.
            let n = target % 4;
            app.execute_batch(&format!("CREATE TABLE IF NOT EXISTS s{n} (a); INSERT INTO s{n} VALUES ({fill}); DROP TABLE IF EXISTS s{}", (n + 2) % 4))?;
        } else if roll < 0.65 {
            app.execute("INSERT INTO t (v) VALUES (?1)", [blob(fill, size)])?;
        } else if roll < 0.85 {
            app.execute(
                "UPDATE t SET v = ?1 WHERE id = ?2",
                rusqlite::params![blob(fill, size / 2 + 1), target as i64],
            )?;
        } else {
            app.execute(
                "DELETE FROM t WHERE id <= ?1 AND id > ?1 - 3",
                [target as i64],
            )?;
        }
    }
    Ok(())
}

/// A row's payload: compressible like real data (a 61-byte pattern repeats) without the long
/// single-byte runs that make LZ4 copy byte by byte.
pub(super) fn blob(fill: u8, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| fill ^ ((i % 61) as u8).wrapping_mul(37))
        .collect()
}

/// Every this many commits the oracle recomputes its digest from the whole image and checks the
/// running one against it.
pub(super) const FULL_DIGEST_EVERY: usize = 256;

impl World {
    /// Opens the application's connection, and with `two_connections` its second one.
    pub(super) fn open_app(&mut self) -> rusqlite::Result<()> {
        self.app = Some(self.connect()?);
        self.other = if self.knobs.two_connections {
            Some(self.connect()?)
        } else {
            None
        };
        Ok(())
    }

    /// Closes the application's connections (the second one last).
    pub(super) fn close_app(&mut self) {
        vfs::with(|s| s.current = Proc::App);
        self.app = None;
        self.other = None;
    }

    pub(super) fn connect(&self) -> rusqlite::Result<Connection> {
        vfs::with(|s| s.current = Proc::App);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut c = Connection::open_with_flags_and_vfs(
            DB,
            flags,
            vfs::VFS_NAME.to_str().unwrap_or("sluice-sim"),
        )?;
        c.busy_timeout(std::time::Duration::ZERO)?;
        c.pragma_update(None, "page_size", self.knobs.page_size)?;
        c.pragma_update(None, "journal_mode", "WAL")?;
        c.pragma_update(None, "synchronous", "FULL")?;
        c.pragma_update(None, "temp_store", "MEMORY")?;
        c.pragma_update(None, "wal_autocheckpoint", self.knobs.app_autocheckpoint)?;
        c.pragma_update(None, "cache_size", self.knobs.app_cache_pages)?;
        if self.knobs.app_journal_size_limit >= 0 {
            c.pragma_update(
                None,
                "journal_size_limit",
                self.knobs.app_journal_size_limit,
            )?;
        }
        // The oracle's feed of committed pages. Installing a WAL hook replaces SQLite's
        // autocheckpoint hook, so the hook checkpoints as that one does (PASSIVE, once the WAL
        // holds the threshold's frames, errors ignored).
        let feed = self.feed.clone();
        let threshold = i32::try_from(self.knobs.app_autocheckpoint).unwrap_or(i32::MAX);
        c.wal_hook(Some(
            move |wal: &mut rusqlite::hooks::Wal, frames: std::ffi::c_int| {
                oracle::lock(&feed).observe(u32::try_from(frames).unwrap_or(0));
                if threshold > 0 && frames >= threshold {
                    let _ = wal.checkpoint();
                }
                Ok(())
            },
        ))?;
        Ok(c)
    }

    pub(super) fn app_image(&mut self) -> Option<Vec<u8>> {
        vfs::with(|s| s.current = Proc::App);
        let app = self.app.as_mut()?;
        app.serialize("main").ok().map(|d| d.to_vec())
    }

    /// The commit whose image is closest to `image`, and the pages that differ from it.
    pub(super) fn closest_commit(
        &self,
        image: &[u8],
        page_size: usize,
    ) -> Option<(usize, Vec<usize>)> {
        self.commits
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.image.as_ref().map(|img| (i + 1, img)))
            .map(|(k, img)| (k, diff_pages(img, image, page_size)))
            .min_by_key(|(_, d)| d.len())
    }

    /// A diagnosis line for an image that matches no commit: the closest commit and how the
    /// next one differs (a partly shipped commit shows as pages shared with the next).
    pub(super) fn diagnose(&self, image: &[u8]) -> Option<String> {
        let ps = self.knobs.page_size as usize;
        let (k, pages) = self.closest_commit(image, ps)?;
        let next = self
            .commits
            .get(k)
            .and_then(|c| c.image.as_ref())
            .map(|img| diff_pages(img, image, ps));
        // Where each differing page's content was committed, if anywhere.
        let origins: Vec<String> = pages
            .iter()
            .take(8)
            .map(|&p| {
                let want = image.get((p - 1) * ps..p * ps);
                let from = self.commits.iter().enumerate().rev().find(|(_, c)| {
                    c.image
                        .as_ref()
                        .is_some_and(|img| img.get((p - 1) * ps..p * ps) == want)
                });
                match from {
                    Some((i, _)) => format!("{p}:commit {}", i + 1),
                    None => format!("{p}:never committed"),
                }
            })
            .collect();
        Some(format!(
            "diagnosis: closest commit {k} of {} differs in pages {pages:?}; commit {} differs in {next:?}; those pages as committed last by [{}]",
            self.commits.len(),
            k + 1,
            origins.join(", ")
        ))
    }

    /// The digest of an image, computed from all of it.
    pub(super) fn digest_of(&self, image: &[u8]) -> PageDigest {
        PageDigest::of(image, self.knobs.page_size as usize)
    }

    /// The application's database as SQLite serializes it, digested whole.
    pub(super) fn app_digest(&mut self) -> Option<PageDigest> {
        let image = self.app_image()?;
        Some(self.digest_of(&image))
    }

    /// Whether the feed has seen a commit not yet recorded.
    pub(super) fn feed_has_commit(&self) -> bool {
        oracle::lock(&self.feed).has_commit()
    }

    /// Records the application's last commit: its time and the digest of its image, updated
    /// from the pages the WAL hook saw committed (and recomputed whole every
    /// `FULL_DIGEST_EVERY` commits, at the first, and whenever the feed lost track).
    pub(super) fn record_commit(&mut self) {
        let now = self.now();
        self.record_commit_at(now);
    }

    /// [`Self::record_commit`] for a commit made at `time_ms`.
    pub(super) fn record_commit_at(&mut self, time_ms: i64) {
        let keep = std::env::var_os("SLUICE_SIM_KEEP_IMAGES").is_some();
        let changes = oracle::lock(&self.feed).take();
        let incremental = match changes {
            Changes::Pages { changes, db_pages } => {
                oracle::apply(&mut self.digest, &changes, db_pages);
                !self.commits.is_empty()
            }
            Changes::Unknown(e) => {
                self.log(format!("oracle feed lost track ({e}): full digest"));
                false
            }
            // SQLite calls the WAL hook after every commit that wrote a frame: a commit after
            // which it was not called changed nothing (a DELETE or UPDATE that matched no
            // row), so the previous commit's digest stands. The periodic and pre-restore full digests
            // check that claim like every other.
            Changes::None => !self.commits.is_empty(),
        };
        let mut image = None;
        if keep || !incremental || self.commits.len().is_multiple_of(FULL_DIGEST_EVERY) {
            let Some(bytes) = self.app_image() else {
                return;
            };
            let full = self.digest_of(&bytes);
            if incremental && full != self.digest {
                self.fail(format!(
                    "oracle: the page-by-page digest of commit {} disagrees with sqlite3_serialize (simulator bug)",
                    self.commits.len() + 1
                ));
            }
            self.digest = full;
            image = keep.then_some(bytes);
        }
        self.commits.push(Commit {
            time_ms,
            hash: self.digest.digest(),
            image,
        });
    }

    pub(super) fn app_ops(&mut self, ops: &[Op]) -> rusqlite::Result<()> {
        vfs::with(|s| s.current = Proc::App);
        match self.app.as_ref() {
            Some(app) => apply_ops(app, ops),
            None => Ok(()),
        }
    }

    /// Draws the contents of `n` row operations.
    pub(super) fn draw_ops(&mut self, n: u8) -> Vec<Op> {
        let ops: Vec<Op> = (0..n)
            .map(|_| Op {
                roll: self.rng.random(),
                size: [8usize, 100, 700, 3000, 9000][self.rng.random_range(0..5)],
                fill: self.rng.random(),
                target: self.rng.random_range(0..self.next_row.max(1)),
            })
            .collect();
        self.next_row += ops.len() as u64;
        ops
    }

    pub(super) fn app_exec(&mut self, sql: &str) -> rusqlite::Result<()> {
        vfs::with(|s| s.current = Proc::App);
        match self.app.as_mut() {
            Some(app) => app.execute_batch(sql),
            None => Ok(()),
        }
    }

    /// One application transaction of `n_ops` operations. With `sync_midway` the engine syncs
    /// in its middle (with a small page cache the transaction has already spilled uncommitted
    /// frames into the WAL); with `rollback` it then rolls back.
    pub(super) fn transaction(&mut self, n_ops: u8, sync_midway: bool, rollback: bool) {
        // With two connections, each transaction takes one of them (the other keeps its own
        // page cache and WAL snapshot, which SQLite must notice are stale).
        let swap = self.other.is_some() && self.extra.random_bool(0.5);
        if swap {
            std::mem::swap(&mut self.app, &mut self.other);
        }
        self.transaction_on_app(n_ops, sync_midway, rollback);
        if swap {
            std::mem::swap(&mut self.app, &mut self.other);
        }
    }

    pub(super) fn transaction_on_app(&mut self, n_ops: u8, sync_midway: bool, rollback: bool) {
        let ops = self.draw_ops(n_ops);
        let half = ops.len() / 2;
        let result = self
            .app_exec("BEGIN IMMEDIATE")
            .and_then(|()| self.app_ops(&ops[..half]));
        let result = result.and_then(|()| {
            if sync_midway && self.engine_open() {
                self.log("engine sync mid-transaction");
                self.engine_sync();
            }
            self.app_ops(&ops[half..])
        });
        match result {
            Ok(()) if rollback => {
                let r = self.app_exec("ROLLBACK");
                self.log(format!("app rollback {r:?}"));
            }
            Ok(()) => match self.app_exec("COMMIT") {
                Ok(()) => self.record_commit(),
                Err(e) => {
                    let _ = self.app_exec("ROLLBACK");
                    self.log(format!("app commit-failed {e}"));
                }
            },
            Err(e) => {
                let _ = self.app_exec("ROLLBACK");
                self.log(format!("app txn-failed {e}"));
            }
        }
    }

    /// The engine syncs and, just before its `at_read`th read of the database or WAL, the
    /// application commits a transaction: a write landing in the middle of the engine's read.
    pub(super) fn transaction_during_sync(&mut self, n_ops: u8, at_read: u32) {
        if !self.engine_open() || self.app.is_none() {
            self.transaction(n_ops, false, false);
            return;
        }
        self.transaction_during(n_ops, at_read, "sync", Self::engine_sync);
    }

    /// The engine starts (it is down) and the application commits in the middle of the
    /// engine's reads while it recovers its position.
    pub(super) fn transaction_during_start(&mut self, n_ops: u8, at_read: u32) {
        if self.engine_open() || self.app.is_none() {
            self.transaction(n_ops, false, false);
            return;
        }
        self.transaction_during(n_ops, at_read, "start", Self::start_engine);
    }

    /// The engine starts (it is down) and, as the upload its start prepared begins, the
    /// application commits and then asks for a TRUNCATE checkpoint (busy while the engine
    /// holds the read its upload was taken under; let through, it would leave the next sync
    /// nothing to read the commit from but a compare of the whole database).
    pub(super) fn storm_during_start_upload(&mut self, n_ops: u8) {
        if self.engine_open() || self.app.is_none() {
            self.transaction(n_ops, false, false);
            return;
        }
        self.transaction_during(n_ops, 0, "start-upload", Self::start_engine);
    }

    /// Runs `engine_action` with an application commit armed before its `at_read`th read, or
    /// with `at_read` 0 as its next upload of an LTX file begins, followed then by a TRUNCATE
    /// checkpoint.
    pub(super) fn transaction_during(
        &mut self,
        n_ops: u8,
        at_read: u32,
        what: &str,
        engine_action: fn(&mut Self),
    ) {
        let at_upload = at_read == 0;
        let checkpointed = Rc::new(RefCell::new(None::<String>));
        let ckpt = checkpointed.clone();
        let ops = self.draw_ops(n_ops);
        let slot = Rc::new(RefCell::new(self.app.take()));
        // The transaction's outcome and the simulated time it committed at (store latency may
        // move the clock before the engine's action returns).
        let outcome = Rc::new(RefCell::new(None::<(rusqlite::Result<()>, i64)>));
        let (app, out) = (slot.clone(), outcome.clone());
        let action: Box<dyn FnOnce()> = Box::new(move || {
            tracing::trace!(
                wal = ?wal_summary(),
                "interrupt: app commits now"
            );
            let was = vfs::with(|s| std::mem::replace(&mut s.current, Proc::App));
            if let Some(c) = app.borrow().as_ref() {
                let r = c
                    .execute_batch("BEGIN IMMEDIATE")
                    .and_then(|()| apply_ops(c, &ops))
                    .and_then(|()| c.execute_batch("COMMIT"));
                if r.is_err() {
                    let _ = c.execute_batch("ROLLBACK");
                }
                tracing::trace!(
                    wal = ?wal_summary(),
                    ok = r.is_ok(),
                    "interrupt: app committed"
                );
                let committed = r.is_ok();
                *out.borrow_mut() = Some((r, vfs::with(|s| s.now_ms)));
                if at_upload && committed {
                    let r: rusqlite::Result<(i64, i64, i64)> =
                        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        });
                    *ckpt.borrow_mut() = Some(match r {
                        Ok((busy, log, done)) => {
                            format!("busy={busy} log={log} done={done}")
                        }
                        Err(e) => format!("error {e}"),
                    });
                }
            }
            vfs::with(|s| s.current = was);
        });
        if at_upload {
            files::arm_upload_interrupt(action);
        } else {
            files::arm_interrupt(at_read, action);
        }
        engine_action(self);
        let fired = files::disarm_interrupt();
        self.app = slot.borrow_mut().take();
        match outcome.borrow_mut().take() {
            Some((Ok(()), at)) => {
                self.log(format!("app commit during-{what} read={at_read}"));
                self.record_commit_at(at);
                if let Some(c) = checkpointed.borrow_mut().take() {
                    self.log(format!("app checkpoint TRUNCATE during-{what} {c}"));
                }
            }
            Some((Err(e), _)) => self.log(format!("app txn-failed during-{what} {e}")),
            None => {
                debug_assert!(!fired);
                self.log(format!("app {what} read fewer than {at_read} times"));
                self.transaction(n_ops, false, false);
            }
        }
    }

    pub(super) fn app_vacuum(&mut self) {
        vfs::with(|s| s.current = Proc::App);
        let Some(app) = self.app.as_mut() else { return };
        let r = app.execute_batch("DELETE FROM t WHERE id % 3 = 0; VACUUM;");
        match r {
            Ok(()) => {
                self.record_commit();
                self.log("app vacuum");
            }
            Err(e) => {
                self.log(format!("app vacuum-failed {e}"));
                // The DELETE before it may have committed.
                if self.feed_has_commit() {
                    self.record_commit();
                }
            }
        }
    }

    pub(super) fn app_checkpoint(&mut self, mode: CheckpointMode) {
        let mode = mode.sql();
        vfs::with(|s| s.current = Proc::App);
        let Some(app) = self.app.as_mut() else { return };
        let r: rusqlite::Result<(i64, i64, i64)> =
            app.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            });
        match r {
            Ok((busy, log, done)) => self.log(format!(
                "app checkpoint {mode} busy={busy} log={log} done={done}"
            )),
            Err(e) => self.log(format!("app checkpoint {mode} error {e}")),
        }
    }

    pub(super) fn app_reconnect(&mut self) {
        vfs::with(|s| s.current = Proc::App);
        self.close_app();
        match self.open_app() {
            Ok(()) => self.log("app reconnect"),
            Err(e) => self.fail(format!("app cannot reopen the database: {e}")),
        }
    }
}
