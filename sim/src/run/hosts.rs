//! The replicator's hosts: production's driver started (lease first), woken when its scheduler
//! asks, stopped cleanly, crashed, powered off and replaced, and the zombie a replaced host can
//! leave behind.

use super::*;

impl World {
    pub(super) fn engine_config(&self) -> EngineConfig {
        let mut cfg = EngineConfig::new(DB);
        cfg.vfs = vfs::VFS_NAME.to_str().ok().map(str::to_string);
        cfg.busy_timeout_ms = 0;
        cfg.checkpoint = CheckpointPolicy {
            min_pages: self.knobs.engine_checkpoint_pages.max(1),
            truncate_pages: 4 * self.knobs.engine_checkpoint_pages.max(1000),
            interval_ms: if self.knobs.engine_checkpoint_pages == 0 {
                i64::MAX / 4
            } else {
                5_000
            },
        };
        cfg
    }

    /// The schedule the knobs describe, for production's scheduler.
    pub(super) fn schedule(&self) -> Schedule {
        let k = &self.knobs;
        Schedule {
            sync_interval_ms: k.sync_interval_ms,
            monitor_interval_ms: k.sync_interval_ms.max(1),
            wal_watch_ms: sluice_core::scheduler::WAL_WATCH_MS,
            levels_ms: if k.compact_interval_ms > 0 {
                vec![k.compact_interval_ms, 4 * k.compact_interval_ms]
            } else {
                Vec::new()
            },
            snapshot_interval_ms: if k.snapshot_interval_ms > 0 {
                k.snapshot_interval_ms
            } else {
                i64::MAX / 4
            },
            snapshot_retention_ms: k.snapshot_retention_ms,
            l0_retention_ms: k.l0_retention_ms,
            retention_enabled: k.snapshot_retention_ms > 0,
            ..Schedule::default()
        }
    }

    pub(super) fn engine_open(&self) -> bool {
        self.host
            .as_ref()
            .is_some_and(|h| h.driver.engine().is_some())
    }

    /// Starts the replicator process as `sluice replicate` does: take the replica's lease
    /// (production's `Lease::acquire` and `FencedStore`), then a driver whose scheduler opens
    /// the engine first. A lease held by another host refuses the start, as it does in
    /// production; the orchestrator restarts the process a little later.
    pub(super) fn spawn_host(&mut self) {
        let now = self.now();
        self.disturbed_ms = now;
        self.hosts_started += 1;
        let raw: DynStore = self.store.clone();
        let mut store = raw.clone();
        let mut lease = None;
        if self.knobs.lease_ttl_ms > 0 {
            let holder = Holder {
                host: format!("sim-host-{}", self.hosts_started),
                pid_namespace: String::new(),
                pid: 1,
                database: DB.into(),
                nonce: self.hosts_started,
            };
            vfs::with(|s| s.current = Proc::Engine);
            let taken = self.rt.block_on(Lease::take(
                raw.clone(),
                holder,
                now,
                self.knobs.lease_ttl_ms,
            ));
            vfs::with(|s| s.current = Proc::App);
            match taken {
                Ok(Some(l)) => {
                    store = Arc::new(FencedStore::new(raw, l.state(), Arc::new(SimClock)));
                    self.begin_term(self.hosts_started, l.state());
                    lease = Some(l);
                }
                Ok(None) => self.fail("the simulated store refused conditional writes"),
                Err(e) => {
                    let held = matches!(e, LeaseError::Held { .. });
                    let delay = self.rng.random_range(100..1_000);
                    self.host_start_at = self.now() + delay;
                    self.log(format!(
                        "host start-refused{} restart-in={delay}ms: {e}",
                        if held { " lease-held" } else { "" }
                    ));
                    return;
                }
            }
        }
        let job = Job {
            engine: self.engine_config(),
            replica: Replica::new(store.clone(), Layout::File),
            schedule: self.schedule(),
            scratch: self.scratch.clone(),
            lease,
        };
        let status = Arc::new(std::sync::Mutex::new(JobStatus::default()));
        let seed = self.rng.random();
        let driver = Driver::new(
            job,
            Arc::new(SimDb { db: DB.into() }),
            Arc::new(SimClock),
            status,
            seed,
        );
        self.log(format!("host start {}", self.hosts_started));
        self.host = Some(Host {
            driver,
            store,
            wake_at: now,
            generation: self.hosts_started,
        });
    }

    /// Starts the replicator if it is down, and runs its first action if that is the open.
    pub(super) fn start_engine(&mut self) {
        if self.host.is_none() {
            self.spawn_host();
        }
        if let Some(h) = self.host.as_mut()
            && h.driver.poll() == Next::Run(Action::Open)
        {
            self.act(Action::Open);
        }
    }

    /// Performs one of the host's actions through production's driver, and logs it.
    pub(super) fn act(&mut self, action: Action) {
        let before = self.commits.len();
        let injected_before = self.store.injected();
        let Some(h) = self.host.as_mut() else { return };
        let break_before = h
            .driver
            .engine()
            .and_then(|e| e.replica_break())
            .map(str::to_string);
        vfs::with(|s| s.current = Proc::Engine);
        tracing::trace!(commits = before, %action, wal = ?wal_summary(), "action begins");
        let (outcome, error) = self.rt.block_on(h.driver.run_action(action));
        let shipped = h.driver.take_shipped();
        let txid = h.driver.scheduler().txid();
        let generation = h.generation;
        // A break the engine found during this action (at an open, or a recovery in a sync).
        let replica_break = h
            .driver
            .engine()
            .and_then(|e| e.replica_break())
            .map(str::to_string)
            .filter(|b| action == Action::Open || break_before.as_ref() != Some(b));
        vfs::with(|s| s.current = Proc::App);
        let faulted = self.store.injected() != injected_before;
        if faulted || action == Action::Open {
            self.disturbed_ms = self.now();
        }
        let failed = outcome == Outcome::Failed(Failure::Transient);
        self.judge_progress(
            action,
            failed,
            faulted,
            error.as_deref().unwrap_or_default(),
        );
        match &outcome {
            Outcome::Synced { more, .. } => {
                if !more {
                    self.note_commit_lags(before);
                    self.acked = before;
                }
                match shipped {
                    Some((f, resynced)) => {
                        self.report.resyncs += u64::from(resynced);
                        self.log(format!(
                            "engine ship {f} txid={txid:016x}{}",
                            if resynced { " resync" } else { "" }
                        ));
                        self.check_ack_in_term(generation, "the host");
                    }
                    None => self.log(format!("act {action}: nothing to ship")),
                }
            }
            Outcome::Opened { txid, .. } => self.log(format!("engine start txid={txid:016x}")),
            Outcome::Failed(f) => self.log(format!(
                "act {action} failed ({f:?}): {}",
                error.unwrap_or_default()
            )),
            other => self.log(format!("act {action}: {other:?}")),
        }
        if let Some(why) = replica_break {
            // The simulated store never loses or damages a stored file: a break the engine
            // reports must be one a restore hits too.
            match self.restore(Target::Latest) {
                Ok((_, t)) => self.fail(format!(
                    "the engine called the replica unrestorable ({why}) but a restore reaches TXID {t:016x}"
                )),
                Err(e) => self.log(format!("engine replica-break {why}; restore: {e}")),
            }
        }
        // A heal is judged when its commits are acknowledged, not when the host goes back to
        // sleep (a snapshot or retention after the sync would count against the bound).
        self.judge_heals();
    }

    /// Commits `acked..upto` are acknowledged now: the longest any of them made undisturbed
    /// waited joins the report.
    fn note_commit_lags(&mut self, upto: usize) {
        let now = self.now();
        let quiet_from = self.disturbed_ms.saturating_add(2 * RPO_MS);
        let waited = (self.acked..upto.min(self.commits.len()))
            .map(|i| self.commits[i].time_ms)
            .filter(|&t| t >= quiet_from && !self.partitioned_between(t, now + 1))
            .map(|t| now - t)
            .max();
        if let Some(lag) = waited {
            self.report.commit_lag_ms_max = self.report.commit_lag_ms_max.max(lag);
        }
    }

    /// A sync the simulator forces (a plan's step, or one in the middle of a transaction).
    pub(super) fn engine_sync(&mut self) {
        if self.engine_open() {
            self.act(Action::Sync);
        }
    }

    /// The replicator's duties at this instant, as its scheduler decides them: observe the
    /// database, then run every action that is due now. A driver that exits (a permanent
    /// error, or a lost lease) is a process that stopped: the orchestrator restarts it.
    pub(super) fn host_wake(&mut self) {
        let now = self.now();
        let Some(h) = self.host.as_mut() else { return };
        // As production's loop: it wakes when its sleep ends, or at a file notification while
        // it listens for them (not while a change is already pending), and then observes.
        if now < h.wake_at && !h.driver.scheduler().wants_notifications() {
            return;
        }
        h.driver.observe();
        for _ in 0..ACTIONS_PER_WAKE_MAX {
            let Some(h) = self.host.as_mut() else { return };
            match h.driver.poll() {
                Next::Run(action) => self.act(action),
                Next::Sleep { until_ms } => {
                    h.wake_at = until_ms;
                    return;
                }
                Next::Exit => {
                    let why = h
                        .driver
                        .scheduler()
                        .stopped_by()
                        .unwrap_or("exit")
                        .to_string();
                    self.stop_host();
                    let delay = self.rng.random_range(100..1_000);
                    self.host_start_at = self.now() + delay;
                    self.log(format!("host exited restart-in={delay}ms: {why}"));
                    return;
                }
            }
        }
        self.fail(format!(
            "the scheduler asked for more than {ACTIONS_PER_WAKE_MAX} actions at one instant"
        ));
    }

    /// Ends the replicator process (its SQLite connection closes; nothing is released).
    pub(super) fn stop_host(&mut self) {
        if let Some(g) = self.host.as_ref().map(|h| h.generation) {
            self.end_term(g);
        }
        self.drop_host();
    }

    /// The replicator process ends; its lease term is left to the caller.
    fn drop_host(&mut self) {
        vfs::with(|s| s.current = Proc::Engine);
        self.host = None;
        vfs::with(|s| s.current = Proc::App);
    }

    /// A clean stop (SIGTERM): production's final sync and lease release, on simulated time,
    /// until the driver exits. With the store reachable throughout, every commit is then in the
    /// replica (checked); the replicator starts again later.
    pub(super) fn graceful_stop(&mut self) {
        if !self.engine_open() {
            return;
        }
        let start = self.now();
        let injected_before = self.store.injected();
        let commits = self.commits.len();
        if let Some(h) = self.host.as_mut() {
            h.driver.scheduler_mut().shutdown(start);
        }
        self.log("host graceful-stop");
        let mut drained = false;
        for _ in 0..10_000 {
            let Some(h) = self.host.as_mut() else { break };
            match h.driver.poll() {
                Next::Run(action) => self.act(action),
                Next::Sleep { until_ms } => vfs::with(|s| s.now_ms = s.now_ms.max(until_ms)),
                Next::Exit => {
                    drained = h.driver.scheduler().drained();
                    break;
                }
            }
        }
        self.stop_host();
        let delay = self.rng.random_range(100..2_000);
        self.host_start_at = self.now() + delay;
        self.log(format!(
            "host stopped drained={drained} restart-in={delay}ms"
        ));
        let quiet = self.store.injected() == injected_before
            && !self.partitioned_between(start, self.now() + 1);
        self.check_restore("graceful-stop");
        if quiet && self.last_restored < commits {
            self.fail(format!(
                "a graceful stop with the store reachable left the replica at commit {} of {commits}",
                self.last_restored
            ));
        }
    }

    /// The acknowledged commits, counting the commits after them that changed nothing (a
    /// transaction whose statements matched no row writes no frame: there is nothing to ship
    /// and the scheduler, seeing no change, rightly does not sync).
    pub(super) fn acked_effective(&self) -> usize {
        let Some(base) = self.acked.checked_sub(1).and_then(|i| self.commits.get(i)) else {
            return self.acked;
        };
        self.acked
            + self.commits[self.acked..]
                .iter()
                .take_while(|c| c.hash == base.hash)
                .count()
    }

    /// Whether a partition overlaps `[a, b)`.
    pub(super) fn partitioned_between(&self, a: i64, b: i64) -> bool {
        self.partitions.iter().any(|&(s, e)| s < b && a < e)
    }

    /// A replaced host's stalled upload gets through the store's gate (it passed its fenced
    /// store's check before it stalled: the gap `lease.rs` documents, where only the
    /// conditional PUT stands in the bytes' way). Its answer comes back through the fenced
    /// store, which must refuse to count it once the lease ran out; a write it acknowledges
    /// must lie inside its own term (checked). If the new host has taken the lease over since,
    /// the zombie's renewal must learn that it lost the lease, and its fenced store must refuse
    /// to write from then on.
    pub(super) fn zombie_wakes(&mut self) {
        let Some(z) = self.zombie.take() else { return };
        let _ = z.gate.send(());
        match self.rt.block_on(z.put) {
            Ok(()) => {
                self.log(format!("zombie put {} landed, acknowledged", z.file));
                self.check_ack_in_term(z.generation, "a zombie");
            }
            Err(e) => self.log(format!("zombie put {} not acknowledged: {e}", z.file)),
        }
        self.end_term(z.generation);
        let taken_over = self
            .host
            .as_ref()
            .is_some_and(|h| h.driver.scheduler().holds_lease());
        let Some(mut lease) = z.lease else { return };
        if !taken_over {
            return;
        }
        let now = self.now();
        match self.rt.block_on(lease.renew(now)) {
            Err(LeaseError::Lost { holder, .. }) => {
                let probe = self.rt.block_on(z.store.delete("0000/zombie-probe.ltx"));
                match probe {
                    Err(e) if e.kind == StoreErrorKind::Fenced => {
                        self.log(format!(
                            "zombie lease lost to {holder}; its writes are refused"
                        ));
                    }
                    other => self.fail(format!(
                        "a zombie that lost its lease could still write: {other:?}"
                    )),
                }
            }
            // The store failed the request: the zombie learns nothing yet, and dies.
            Err(LeaseError::Store(e)) => self.log(format!("zombie renewal failed: {e}")),
            Ok(()) => self.fail(
                "a zombie renewed its lease after the new host had taken it over".to_string(),
            ),
            Err(e) => self.fail(format!("a zombie's renewal: {e}")),
        }
    }

    /// The old host, about to be replaced, prepares its next upload from the old disk
    /// (production's `Engine::prepare`) and sends it through its fenced store, where the put
    /// stalls at the store's gate until `wake_ms` from now. Nothing to upload, or a put the
    /// fence refused at once, leaves no zombie.
    fn stall_zombie(&mut self, wake_ms: i64) {
        let Some(h) = self.host.as_mut() else { return };
        let Some(engine) = h.driver.engine_mut() else {
            return;
        };
        vfs::with(|s| s.current = Proc::Engine);
        let ready = self.rt.block_on(engine.prepare());
        vfs::with(|s| s.current = Proc::App);
        let upload = match ready {
            Ok(sluice_core::engine::Ready::Upload(u)) => *u,
            Ok(sluice_core::engine::Ready::Nothing(_)) => {
                return self.log("zombie had nothing to upload");
            }
            Err(e) => return self.log(format!("zombie could not prepare an upload: {e}")),
        };
        let file = upload.ack.info.clone();
        // The bytes in flight: read now, before the old host's disk goes.
        let bytes = match upload.body.into_bytes() {
            Ok(b) => b,
            Err(e) => return self.log(format!("zombie could not read its spooled upload: {e}")),
        };
        let (key, opts) = (upload.key, upload.opts);
        let gate = self.store.stall_next_put();
        let store = h.store.clone();
        let mut put: std::pin::Pin<Box<dyn std::future::Future<Output = _>>> =
            Box::pin(async move { store.put(&key, bytes, opts).await });
        let first = self.rt.block_on(std::future::poll_fn(|cx| {
            std::task::Poll::Ready(put.as_mut().poll(cx))
        }));
        if let std::task::Poll::Ready(r) = first {
            self.store.unstall();
            return self.log(format!(
                "zombie put {file} answered before it stalled: {r:?}"
            ));
        }
        let at = self.now() + wake_ms.max(0);
        self.log(format!("zombie stalled uploading {file}, wakes at {at}"));
        let Some(h) = self.host.as_mut() else { return };
        let lease = h.driver.take_lease();
        self.zombie = Some(Zombie {
            wake_at: at,
            generation: h.generation,
            file,
            put,
            gate,
            lease,
            store: h.store.clone(),
        });
    }

    pub(super) fn crash_engine(&mut self) {
        vfs::with(|s| s.crash(Proc::Engine));
        self.stop_host();
        let delay = self.rng.random_range(100..3000);
        self.host_start_at = self.now() + delay;
        self.log(format!("engine crash restart-in={delay}ms"));
    }

    pub(super) fn power_loss(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng.random());
        let r = vfs::with(|s| s.power_loss(&mut rng));
        self.close_app();
        self.stop_host();
        self.host_start_at = self.now() + self.rng.random_range(100..2000);
        self.log(format!(
            "power-loss persisted={} dropped={} torn={} vanished={}",
            r.persisted, r.dropped, r.torn, r.vanished_files
        ));
        if let Err(e) = self.open_app() {
            self.fail(format!("app cannot reopen after power loss: {e}"));
            return;
        }
        // SQLite's own contract with synchronous=FULL: every commit survives a power loss.
        oracle::lock(&self.feed).reset();
        let expect = self.commits.last().map(|c| c.hash);
        let now = self.app_digest();
        if let Some(d) = now.clone() {
            self.digest = d;
        }
        if now.map(|d| d.digest()) != expect {
            self.fail("after a power loss the database is not the last committed state (simulator or VFS bug)");
        }
    }

    /// The host dies and a new, empty one takes over: it restores the latest state (as the
    /// sidecar's `restore -if-db-not-exists` does), then the application and the engine carry
    /// on from it. Commits after the restored one are lost with the old host.
    pub(super) fn replace_host(&mut self, zombie_wake_ms: Option<i64>) {
        if let Some(wake) = zombie_wake_ms
            && self.engine_open()
        {
            self.stall_zombie(wake);
        }
        if self.zombie.is_some() {
            // The zombie's term ends when its stalled write gets its answer.
            self.drop_host();
        }
        self.stop_host();
        self.close_app();
        vfs::with(vfs::VfsState::replace_host);
        oracle::lock(&self.feed).reset();
        let (image, txid) = match self.restore_new_host() {
            Ok(r) => r,
            // Nothing was ever replicated (the store was unreachable since the start): the new
            // host starts a new database, as `restore -if-replica-exists` lets it.
            Err(NoImage::ReplicaEmpty) => {
                if self.acked > 0 {
                    self.fail(format!(
                        "host replacement: replica empty but {} commits were acknowledged",
                        self.acked
                    ));
                    return;
                }
                self.commits.clear();
                self.digest = PageDigest::new(self.knobs.page_size as usize);
                self.last_restored = 0;
                self.host_start_at = self.now();
                self.log("host-replaced replica empty: new database");
                if let Err(e) = self.open_app() {
                    self.fail(format!(
                        "host replacement: cannot create a new database: {e}"
                    ));
                    return;
                }
                if let Err(e) = self.app_exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)") {
                    self.fail(format!("host replacement: cannot create the table: {e}"));
                    return;
                }
                self.record_commit();
                return;
            }
            Err(e) => {
                self.fail(format!("host replacement: restore failed: {e}"));
                return;
            }
        };
        let digest = self.digest_of(&image).digest();
        let k = match self.commit_of(digest) {
            Some(k) => Some(k),
            // A zombie's upload put a replaced host's commit on top, and this host acknowledged
            // nothing since its takeover: the next host carries on from that commit.
            None if self.is_abandoned(digest) && !self.acked_since_takeover() => {
                let k = self.adopt_abandoned(digest);
                self.log(format!(
                    "host-replaced restores a replaced host's commit (a zombie's upload) at {k:?}"
                ));
                k
            }
            None => None,
        };
        let Some(k) = k else {
            self.fail(format!(
                "host replacement: restored TXID {txid:016x} matches no committed state"
            ));
            return;
        };
        if k < self.acked {
            self.fail(format!(
                "host replacement: restored commit {k} but {} were acknowledged",
                self.acked
            ));
        }
        self.digest = self.digest_of(&image);
        let lost = self.commits.len() - k;
        // The new host's history continues from commit k; the rest stay real states.
        self.abandoned.push(Abandoned {
            base: k,
            commits: self.commits[k..].to_vec(),
        });
        self.replaced_at = Some(k);
        self.commits.truncate(k);
        self.acked = k;
        self.last_restored = k;
        self.host_start_at = self.now();
        self.log(format!(
            "host-replaced restored txid={txid:016x} commit={k} lost={lost}"
        ));
        if let Err(e) = self.open_app() {
            self.fail(format!(
                "host replacement: the restored database does not open: {e}"
            ));
        }
    }

    /// The new host's restore, as the sidecar runs it: production's `place::restore_if_missing`
    /// writing through the file seam onto the simulated disk. With `restore_crash_rate` the
    /// power fails in the middle (half the time in one of its last four operations: the
    /// fsyncs and the rename); the host boots again and reruns it. Returns the image then at
    /// the database's path and the TXID restored (0 when a database was already there).
    fn restore_new_host(&mut self) -> Result<(Vec<u8>, u64), NoImage> {
        let failed = |e: &dyn std::fmt::Display| NoImage::Failed(e.to_string());
        let replica = Replica::new(Arc::new(self.mem.clone()), Layout::File);
        let path = std::path::Path::new(DB);
        let mut crash_at = None;
        if self.knobs.restore_crash_rate > 0.0
            && self.restore_rng.random_bool(self.knobs.restore_crash_rate)
        {
            // Count a whole restore's operations on a copy of the disk, to aim the crash.
            let saved = vfs::with(|s| s.disk.clone());
            let counter = SimFs::new(None, 0).fetching(self.knobs.fetch_in_memory_bytes_max);
            let _ = self
                .rt
                .block_on(place::restore_if_missing(&counter, &replica, path));
            vfs::with(|s| s.disk = saved);
            let total = counter.ops();
            if total > 0 {
                crash_at = Some(if self.restore_rng.random_bool(0.5) {
                    total - self.restore_rng.random_range(0..total.min(4))
                } else {
                    self.restore_rng.random_range(1..=total)
                });
            }
        }
        let fs = SimFs::new(crash_at, self.restore_rng.random())
            .fetching(self.knobs.fetch_in_memory_bytes_max);
        let mut result = self
            .rt
            .block_on(place::restore_if_missing(&fs, &replica, path));
        if let Some(r) = fs.crashed() {
            self.log(format!(
                "host-replace power-loss during the restore at operation {} persisted={} dropped={} torn={} vanished={}; rebooting",
                crash_at.unwrap_or(0),
                r.persisted,
                r.dropped,
                r.torn,
                r.vanished_files
            ));
            let again = SimFs::new(None, 0).fetching(self.knobs.fetch_in_memory_bytes_max);
            result = self
                .rt
                .block_on(place::restore_if_missing(&again, &replica, path));
        }
        let report = result.map_err(|e| failed(&format!("{e:#}")))?;
        if report.as_ref().is_some_and(|r| !r.checksum_verified) {
            return Err(failed(&"restore could not verify the database checksum"));
        }
        let image = vfs::with(|s| s.disk.contents(DB).map(<[u8]>::to_vec));
        match (image, report) {
            (Some(image), report) => Ok((image, report.map_or(0, |r| r.txid))),
            (None, _) => Err(NoImage::ReplicaEmpty),
        }
    }

    /// Whether this host has acknowledged a commit that changed the database since it took
    /// over (commits that changed nothing leave the restored state as the acknowledged one).
    pub(super) fn acked_since_takeover(&self) -> bool {
        let base = self.replaced_at.unwrap_or(0);
        let base_hash = base
            .checked_sub(1)
            .and_then(|i| self.commits.get(i))
            .map(|c| c.hash);
        self.commits
            .iter()
            .take(self.acked)
            .skip(base)
            .any(|c| Some(c.hash) != base_hash)
    }

    pub(super) fn is_abandoned(&self, digest: u64) -> bool {
        self.abandoned
            .iter()
            .any(|a| a.commits.iter().any(|c| c.hash == digest))
    }

    /// Makes the replaced host's commit with `digest` (and those before it) the history again;
    /// this host's commits since the shared base are lost in turn. Returns the commit's index.
    pub(super) fn adopt_abandoned(&mut self, digest: u64) -> Option<usize> {
        let (a, j) = self.abandoned.iter().enumerate().find_map(|(a, seg)| {
            seg.commits
                .iter()
                .position(|c| c.hash == digest)
                .map(|j| (a, j))
        })?;
        let base = self.abandoned[a].base.min(self.commits.len());
        let ours = self.commits[base..].to_vec();
        let theirs = self.abandoned[a].commits[..=j].to_vec();
        self.commits.truncate(base);
        self.commits.extend(theirs);
        self.abandoned.push(Abandoned {
            base,
            commits: ours,
        });
        Some(self.commits.len())
    }
}
