//! Checks (1)-(4) of `FAULT_MODEL.md` against a restore of the latest state: a committed
//! state, nothing acknowledged lost, never backwards, the RPO with a healthy store.
//!
//! Does not check: restores through the CLI or from a file or S3 replica (the restore code runs
//! on the in-memory store and writes the image to memory), or the RPO while the store was
//! unreachable, the engine down, or within two objectives of a disturbance.

use super::*;

impl World {
    /// Restores from the store (no faults) into memory.
    pub(super) fn restore(&mut self, target: Target) -> Result<(Vec<u8>, u64), NoImage> {
        let failed = |e: &dyn std::fmt::Display| NoImage::Failed(e.to_string());
        let replica = Replica::new(Arc::new(self.mem.clone()), Layout::File);
        let rt = &self.rt;
        let files = rt.block_on(replica.list_all()).map_err(|e| failed(&e))?;
        let plan = restore::plan("sim", &files, target).map_err(|e| match e {
            restore::RestoreError::ReplicaEmpty { .. } => NoImage::ReplicaEmpty,
            e => failed(&e),
        })?;
        let mut fetched = Vec::with_capacity(plan.len());
        for f in plan {
            let bytes = rt
                .block_on(self.mem.get_range(&replica.key(&f), 0, f.size))
                .map_err(|e| failed(&e))?;
            fetched.push(Ok(Fetched::in_memory(f, bytes)));
        }
        let mut image = Vec::new();
        let report =
            restore::apply_plan(&mut image, std::path::Path::new("memory"), fetched, |_| {})
                .map_err(|e| failed(&e))?;
        if !report.checksum_verified {
            return Err(failed(&"restore could not verify the database checksum"));
        }
        Ok((image, report.txid))
    }

    /// The newest commit whose image hashes to `h`.
    pub(super) fn commit_of(&self, h: u64) -> Option<usize> {
        self.commits
            .iter()
            .rposition(|c| c.hash == h)
            .map(|i| i + 1)
    }

    pub(super) fn integrity_ok(image: &[u8]) -> Result<(), String> {
        // The simulated VFS is the default; an in-memory check database uses the OS VFS (it
        // touches no file).
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_MEMORY;
        let mut c = Connection::open_with_flags_and_vfs(":memory:", flags, "unix")
            .map_err(|e| e.to_string())?;
        // A WAL-mode image (header bytes 18 and 19 are 2) cannot be opened from memory; the
        // check runs on the image as read with those bytes marking a rollback-journal
        // database, pages otherwise untouched.
        let mut head = image[..image.len().min(20)].to_vec();
        if head.len() == 20 {
            head[18] = 1;
            head[19] = 1;
        }
        let bytes = std::io::Read::chain(&head[..], &image[head.len()..]);
        c.deserialize_read_exact("main", bytes, image.len(), true)
            .map_err(|e| e.to_string())?;
        let rows: Vec<String> = c
            .prepare("PRAGMA integrity_check")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| e.to_string())?;
        if rows == ["ok"] {
            Ok(())
        } else {
            Err(rows.join("; "))
        }
    }

    /// The oracle's running digest must equal a digest of the whole database as SQLite
    /// serializes it (outside a transaction, the last commit's state).
    pub(super) fn check_oracle(&mut self, why: &str) {
        if self.app.is_none() || self.feed_has_commit() {
            return;
        }
        if let Some(full) = self.app_digest()
            && self.commits.last().map(|c| c.hash) != Some(full.digest())
        {
            self.fail(format!(
                "{why}: oracle: the last commit's digest disagrees with sqlite3_serialize (simulator bug)"
            ));
        }
    }

    /// Checks (1)-(4) of FAULT_MODEL.md against a restore of the latest state.
    ///
    /// Does not check: restores through the CLI or from a file or S3 replica (the restore code
    /// runs on the in-memory store), restores by timestamp, or the RPO while the store was
    /// unreachable, the engine down, or within two objectives of a disturbance (the lag is
    /// recorded for the histogram either way).
    pub(super) fn check_restore(&mut self, why: &str) {
        self.report.restores += 1;
        // The running digest is checked against a whole serialization at the end (and every
        // `FULL_DIGEST_EVERY` commits); a wrong digest cannot make a wrong restore match, only
        // a right one fail.
        if why == "final" {
            self.check_oracle(why);
        }
        let (image, txid) = match self.restore(Target::Latest) {
            Ok(r) => r,
            Err(NoImage::ReplicaEmpty) => {
                if self.acked > 0 {
                    self.fail(format!(
                        "{why}: replica empty but {} commits were acknowledged",
                        self.acked
                    ));
                }
                return;
            }
            Err(e) => {
                self.fail(format!("{why}: restore failed: {e}"));
                return;
            }
        };
        let digest = self.digest_of(&image).digest();
        let Some(k) = self.commit_of(digest) else {
            if self.is_abandoned(digest) {
                // A zombie's upload: a replaced host's commit, now at the top of the replica.
                // Acceptable only while the new host has acknowledged nothing of its own.
                if self.acked_since_takeover() {
                    self.fail(format!(
                        "{why}: restored TXID {txid:016x} is a replaced host's state (a zombie's upload), but the new host had acknowledged commits up to {}",
                        self.acked
                    ));
                } else {
                    self.log(format!(
                        "check {why} txid={txid:016x} a replaced host's state (zombie upload); nothing acknowledged since the takeover"
                    ));
                }
                return;
            }
            if let Some(d) = self.diagnose(&image) {
                self.log(d);
            }
            self.fail(format!(
                "{why}: restored TXID {txid:016x} matches no committed state"
            ));
            return;
        };
        if !self.intact.contains(&digest) {
            match Self::integrity_ok(&image) {
                Ok(()) => {
                    self.intact.insert(digest);
                }
                Err(e) => self.fail(format!(
                    "{why}: restored database fails integrity_check: {e}"
                )),
            }
        }
        if k < self.acked {
            self.fail(format!(
                "{why}: restore reached commit {k} but {} were acknowledged",
                self.acked
            ));
        }
        if k < self.last_restored {
            self.fail(format!(
                "{why}: restore went backwards from commit {} to {k}",
                self.last_restored
            ));
        }
        self.last_restored = self.last_restored.max(k);
        let now = self.now();
        let lost = self.commits.len() - k;
        let lag = self.commits.get(k).map_or(0, |c| now - c.time_ms);
        self.report.lags_ms.push(lag);
        self.report.worst_lag_ms = self.report.worst_lag_ms.max(lag);
        self.report.lost_commits_max = self.report.lost_commits_max.max(lost);
        self.log(format!(
            "check {why} txid={txid:016x} commit={k}/{} lag={lag}ms",
            self.commits.len()
        ));
        let quiet = now - self.disturbed_ms >= 2 * RPO_MS
            && !self.store.partitioned(now)
            && self.engine_open();
        if quiet && lag >= RPO_MS {
            self.fail(format!(
                "{why}: RPO broken: the oldest lost commit is {lag} ms old with a healthy store"
            ));
        }
    }
}
