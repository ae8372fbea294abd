//! Writer fencing: at most one `sluice replicate` per replica.
//!
//! A replicator holds a lease: the object [`LEASE_KEY`] in the replica, a small JSON document
//! naming its holder and when it expires. Every change to it is a compare-and-swap on the
//! object's version (`put_if_version`, If-Match on S3; the first one `PutMode::Create`,
//! If-None-Match), so of two replicators racing for it exactly one wins on a store whose
//! conditional writes are atomic (AWS, MinIO, moto, the in-memory store).
//!
//! - Acquire: create the lease; if it exists and has not expired, refuse, naming the holder.
//!   An expired lease, or one whose holder was a process on this host that no longer runs
//!   (a crash or SIGKILL, so a restart need not wait out the lease), is taken over by CAS.
//! - Renew every `ttl / 3` by CAS. A CAS that fails because someone else now holds the lease
//!   means the lease is lost: the replicator stops. A renewal that fails for another reason
//!   (outage) is retried; once the lease's time is up locally, [`FencedStore`] refuses
//!   uploads until a renewal succeeds.
//! - Release on a clean stop: CAS the lease to "expired now", so the next replicator starts at
//!   once. The object stays (deleting it could race with a new holder's create).
//!
//! A write counts only if the lease holds both when it is sent and when its answer arrives
//! ([`FencedStore`] reports a late answer as a failure the engine treats as ambiguous), so no
//! two replicators acknowledge writes in overlapping lease terms. What this does not
//! guarantee: a holder that stalls (paused VM, stopped process) for longer than the lease after
//! checking it can still land the bytes of that one write beside a new holder's (the
//! conditional PUT refuses it if the new holder wrote that TXID first); on
//! stores whose conditional writes are not atomic (s3s-fs checks then writes; garage ignores
//! them) two replicators starting at the same instant can both win. A directory replica swaps
//! its lease under `flock(2)` (`DirStore::put_if_version`): atomic between processes of one
//! host, and between hosts only where the filesystem's locks are (NFS with its lock service).
//! Stores without conditional writes are not fenced at all.
//!
//! The lease also records the replica's lineage: the database whose history it holds. A start
//! of another database ([`Lease::other_lineage`]) must prove it continues that history (a
//! host replaced by a restore to a new path does); the engine refuses one that cannot, instead
//! of shipping every page over another database's replica, unless `-force` says to. Once a
//! start proved it or shipped a full state on purpose, [`Lease::adopt_lineage`] makes the
//! replica this database's (written with the next renewal).

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::engine::Clock;
use crate::store::{
    DynStore, ObjectMeta, ObjectStore, PutMode, PutOptions, StoreError, StoreErrorKind,
};

/// The lease object, relative to the replica's root (beside Litestream's level directories,
/// which Litestream and sluice list by prefix, so neither sees it).
pub const LEASE_KEY: &str = "sluice-lease.json";
/// How long a lease lasts without renewal.
pub const LEASE_TTL_MS: i64 = 30_000;
/// Attempts to acquire when the lease changes under us between reading and swapping.
pub const ACQUIRE_ATTEMPTS_MAX: u32 = 3;

/// Who holds a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    /// The PID namespace, so a PID is only judged dead on the host and namespace it lives in.
    pub pid_namespace: String,
    pub pid: u32,
    pub database: String,
    /// Distinguishes two runs that reuse a PID.
    pub nonce: u64,
}

impl Holder {
    /// This process, replicating `database`.
    pub fn here(database: &std::path::Path) -> Holder {
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Holder {
            host: read("/proc/sys/kernel/hostname")
                .or_else(|_| read("/etc/hostname"))
                .unwrap_or_else(|_| "unknown-host".into()),
            pid_namespace: std::fs::read_link("/proc/self/ns/pid")
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            pid: std::process::id(),
            database: database.display().to_string(),
            nonce,
        }
    }

    /// Whether this holder was a process on this host (and PID namespace) that has exited.
    fn is_dead_here(&self, here: &Holder) -> bool {
        !here.pid_namespace.is_empty()
            && self.host == here.host
            && self.pid_namespace == here.pid_namespace
            && self.pid != here.pid
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} on {} replicating {}",
            self.pid, self.host, self.database
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct LeaseBody {
    holder: Holder,
    renewed_ms: i64,
    expires_ms: i64,
    /// The database whose history the replica holds (absent in older leases: the holder's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lineage: Option<String>,
}

impl LeaseBody {
    fn lineage(&self) -> &str {
        self.lineage.as_deref().unwrap_or(&self.holder.database)
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    #[error(
        "replica {replica} is being replicated by {holder} (its lease expires at {expires}); stop that process first, or wait for the lease to expire"
    )]
    Held {
        replica: String,
        holder: Holder,
        expires: String,
    },
    #[error(
        "replica {replica}: the lease was taken over by {holder}; stopping so that two replicators never interleave"
    )]
    Lost { replica: String, holder: String },
    #[error("replica {replica}: the lease keeps changing under us; another replicator is starting")]
    Contended { replica: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    store: DynStore,
    replica: String,
    holder: Holder,
    ttl_ms: i64,
    version: String,
    state: Arc<Mutex<LeaseState>>,
    /// The database whose history the replica holds, as the lease records it.
    lineage: String,
}

/// What [`FencedStore`] checks before every write.
#[derive(Debug, Clone, Default)]
pub struct LeaseState {
    /// Local time (Unix ms) until which the lease is ours for certain.
    pub valid_until_ms: i64,
    /// Set once another replicator took the lease over.
    pub lost_to: Option<String>,
}

impl Lease {
    fn body(&self, now_ms: i64, expires_ms: i64) -> Vec<u8> {
        encode(&self.holder, now_ms, expires_ms, &self.lineage)
    }

    /// Takes the lease of the replica behind `store`, or says who holds it.
    pub async fn acquire(
        store: DynStore,
        holder: Holder,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Lease, LeaseError> {
        let replica = store.describe();
        let ours = holder.database.clone();
        let make = |version: String, lineage: String| Lease {
            store: store.clone(),
            replica: replica.clone(),
            holder: holder.clone(),
            ttl_ms,
            version,
            state: Arc::new(Mutex::new(LeaseState {
                valid_until_ms: now_ms + ttl_ms,
                lost_to: None,
            })),
            lineage,
        };
        for _ in 0..ACQUIRE_ATTEMPTS_MAX {
            let create = PutOptions {
                mode: PutMode::Create,
                timestamp_ms: now_ms,
            };
            let body = encode(&holder, now_ms, now_ms + ttl_ms, &ours);
            match store.put(LEASE_KEY, body, create).await {
                Ok(()) => {
                    let (bytes, version) = store.get_versioned(LEASE_KEY).await?;
                    // Between our create and this read another process could only have
                    // swapped in its own body if ours had expired: check it is still ours.
                    if decode(&bytes).is_some_and(|b| b.holder == holder) {
                        return Ok(make(version, ours));
                    }
                    continue;
                }
                Err(e) if e.kind == StoreErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
            let (bytes, version) = match store.get_versioned(LEASE_KEY).await {
                Ok(found) => found,
                Err(e) if e.kind == StoreErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            // An unreadable lease protects nothing: treat it as expired.
            let current = decode(&bytes);
            if let Some(current) = &current
                && current.expires_ms > now_ms
                && current.holder != holder
                && !current.holder.is_dead_here(&holder)
            {
                return Err(LeaseError::Held {
                    replica,
                    holder: current.holder.clone(),
                    expires: rfc3339(current.expires_ms),
                });
            }
            // The replica's lineage carries over until a start proves it continues it.
            let lineage = current.map_or(ours.clone(), |c| c.lineage().to_string());
            let body = encode(&holder, now_ms, now_ms + ttl_ms, &lineage);
            match store
                .put_if_version(LEASE_KEY, body, now_ms, &version)
                .await
            {
                Ok(version) => return Ok(make(version, lineage)),
                Err(e) if e.kind == StoreErrorKind::Precondition => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LeaseError::Contended { replica })
    }

    /// Takes the lease for a replicator that is starting. `Ok(None)`: the server refused the
    /// conditional write itself (some S3-compatible services answer If-None-Match with 501), so
    /// the replicator runs unfenced, as Litestream does, with a warning. A transient failure is
    /// an error: a replicator must not run unfenced because of one lost request.
    pub async fn take(
        store: DynStore,
        holder: Holder,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, LeaseError> {
        match Lease::acquire(store.clone(), holder, now_ms, ttl_ms).await {
            Ok(lease) => Ok(Some(lease)),
            Err(LeaseError::Store(e)) if e.kind == StoreErrorKind::Unsupported => {
                tracing::warn!(replica = %store.describe(), error = %e, "cannot take the replica's lease; replicating without writer fencing");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The state [`FencedStore`] checks; shared with the renewals.
    pub fn state(&self) -> Arc<Mutex<LeaseState>> {
        self.state.clone()
    }

    pub fn ttl_ms(&self) -> i64 {
        self.ttl_ms
    }

    /// The database whose history the replica holds, when it is not the one this lease's
    /// holder replicates.
    pub fn other_lineage(&self) -> Option<&str> {
        (self.lineage != self.holder.database).then_some(self.lineage.as_str())
    }

    /// Records that the replica now holds this holder's database's history (its start proved
    /// it continues the replica, or shipped a full state on purpose). Written with the next
    /// renewal.
    pub fn adopt_lineage(&mut self) {
        self.lineage.clone_from(&self.holder.database);
    }

    fn set_state(&self, f: impl FnOnce(&mut LeaseState)) {
        f(&mut self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// Extends the lease to `now_ms + ttl`. [`LeaseError::Lost`] when another replicator holds
    /// it now; a store error (outage) leaves the lease valid until its time is up.
    pub async fn renew(&mut self, now_ms: i64) -> Result<(), LeaseError> {
        let body = self.body(now_ms, now_ms + self.ttl_ms);
        let outcome = self
            .store
            .put_if_version(LEASE_KEY, body.clone(), now_ms, &self.version)
            .await;
        let err = match outcome {
            Ok(version) => {
                self.version = version;
                let until = now_ms + self.ttl_ms;
                self.set_state(|s| s.valid_until_ms = until);
                return Ok(());
            }
            Err(e) => e,
        };
        if err.kind != StoreErrorKind::Precondition {
            return Err(err.into());
        }
        // Our version is stale. If an earlier renewal was applied but its reply lost, the
        // lease is still ours: adopt the version and swap again. Otherwise it is lost.
        let (bytes, version) = match self.store.get_versioned(LEASE_KEY).await {
            Ok(found) => found,
            Err(e) if e.kind == StoreErrorKind::NotFound => {
                return Err(self.lost("nobody (the lease object was deleted)".into()));
            }
            Err(e) => return Err(e.into()),
        };
        match decode(&bytes) {
            Some(current) if current.holder == self.holder => {
                self.version = version;
                let version = self
                    .store
                    .put_if_version(LEASE_KEY, body, now_ms, &self.version)
                    .await
                    .map_err(|e| {
                        if e.kind == StoreErrorKind::Precondition {
                            self.lost("another replicator".into())
                        } else {
                            e.into()
                        }
                    })?;
                self.version = version;
                let until = now_ms + self.ttl_ms;
                self.set_state(|s| s.valid_until_ms = until);
                Ok(())
            }
            Some(current) => Err(self.lost(current.holder.to_string())),
            None => Err(self.lost("an unreadable lease object".into())),
        }
    }

    fn lost(&self, holder: String) -> LeaseError {
        self.set_state(|s| {
            s.lost_to = Some(holder.clone());
            s.valid_until_ms = i64::MIN;
        });
        LeaseError::Lost {
            replica: self.replica.clone(),
            holder,
        }
    }

    /// Gives the lease up: it expires now, so the next replicator need not wait.
    pub async fn release(self, now_ms: i64) -> Result<(), LeaseError> {
        self.set_state(|s| s.valid_until_ms = i64::MIN);
        let body = self.body(now_ms, now_ms);
        match self
            .store
            .put_if_version(LEASE_KEY, body.clone(), now_ms, &self.version)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.kind == StoreErrorKind::Precondition => {}
            Err(e) => return Err(e.into()),
        }
        // Our version is stale: a renewal was applied but its answer lost (one dropped when a
        // stopping job's last action was cut off). Still ours: released with the version
        // read; someone else's: nothing of ours to release.
        let (bytes, version) = match self.store.get_versioned(LEASE_KEY).await {
            Ok(found) => found,
            Err(e) if e.kind == StoreErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if !decode(&bytes).is_some_and(|b| b.holder == self.holder) {
            return Ok(());
        }
        match self
            .store
            .put_if_version(LEASE_KEY, body, now_ms, &version)
            .await
        {
            Ok(_) => Ok(()),
            // Taken over meanwhile: nothing of ours to release.
            Err(e) if e.kind == StoreErrorKind::Precondition => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn encode(holder: &Holder, now_ms: i64, expires_ms: i64, lineage: &str) -> Vec<u8> {
    let body = LeaseBody {
        holder: holder.clone(),
        renewed_ms: now_ms,
        expires_ms,
        lineage: Some(lineage.to_string()),
    };
    serde_json::to_vec_pretty(&body).unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Option<LeaseBody> {
    serde_json::from_slice(bytes).ok()
}

/// A store that writes only while its lease is held: uploads and deletes fail once the lease
/// is lost (`Permanent`) or its time is up without a renewal (`Transient`); reads pass through.
pub struct FencedStore {
    inner: DynStore,
    state: Arc<Mutex<LeaseState>>,
    /// The clock the lease's time is judged by (simulated time in the simulator).
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for FencedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FencedStore")
            .field("inner", &self.inner)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl FencedStore {
    pub fn new(
        inner: DynStore,
        state: Arc<Mutex<LeaseState>>,
        clock: Arc<dyn Clock>,
    ) -> FencedStore {
        FencedStore {
            inner,
            state,
            clock,
        }
    }

    fn check(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let location = format!("{}/{key}", self.inner.describe());
        if let Some(holder) = s.lost_to {
            return Err(StoreError::new(
                StoreErrorKind::Fenced,
                op,
                location,
                format!("not writing: the replica's lease was taken over by {holder}"),
            ));
        }
        if self.clock.now_ms() >= s.valid_until_ms {
            return Err(StoreError::new(
                StoreErrorKind::Transient,
                op,
                location,
                "not writing: the replica's lease ran out while it could not be renewed",
            ));
        }
        Ok(())
    }

    /// A write the store acknowledged counts only if the lease still holds now: a request
    /// that stalled past the lease's end (a paused VM, a slow network) may have landed after
    /// another replicator took over, so its success is reported as an ambiguous failure (the
    /// engine then does not move its position, and re-reads the replica before its next
    /// file). Together with the check before, no two replicators acknowledge writes in
    /// overlapping lease terms.
    fn answered(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        if crate::planted::active(crate::planted::Bug::FenceCheckedBeforeOnly) {
            return Ok(());
        }
        self.check(op, key).map_err(|mut e| {
            e.message = format!(
                "{}; the write may have landed (its answer came too late)",
                e.message
            );
            e
        })
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for FencedStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn put(&self, key: &str, data: Vec<u8>, opts: PutOptions) -> Result<(), StoreError> {
        self.check("put", key)?;
        self.inner.put(key, data, opts).await?;
        self.answered("put", key)
    }

    async fn put_spooled(
        &self,
        key: &str,
        body: &dyn crate::scratch::ScratchFile,
        opts: PutOptions,
    ) -> Result<(), StoreError> {
        self.check("put", key)?;
        self.inner.put_spooled(key, body, opts).await?;
        self.answered("put", key)
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.inner.get_range(key, offset, len).await
    }

    async fn copy(&self, from: &str, to: &str, mode: PutMode) -> Result<(), StoreError> {
        self.check("copy", to)?;
        self.inner.copy(from, to, mode).await?;
        self.answered("copy", to)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn list_untimed(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list_untimed(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check("delete", key)?;
        self.inner.delete(key).await?;
        self.answered("delete", key)
    }

    fn supports_conditional_writes(&self) -> bool {
        self.inner.supports_conditional_writes()
    }

    fn timestamp_resolution_ms(&self) -> i64 {
        self.inner.timestamp_resolution_ms()
    }

    async fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        self.inner.get_versioned(key).await
    }

    async fn put_if_version(
        &self,
        key: &str,
        data: Vec<u8>,
        timestamp_ms: i64,
        version: &str,
    ) -> Result<String, StoreError> {
        self.check("put", key)?;
        let version = self
            .inner
            .put_if_version(key, data, timestamp_ms, version)
            .await?;
        self.answered("put", key)?;
        Ok(version)
    }

    fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
        self.inner.local_path(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn holder(pid: u32, host: &str) -> Holder {
        Holder {
            host: host.into(),
            pid_namespace: "pid:[1]".into(),
            pid,
            database: "/data/app.db".into(),
            nonce: u64::from(pid),
        }
    }

    #[tokio::test]
    async fn second_holder_is_refused_until_the_lease_expires() {
        let store: DynStore = Arc::new(MemStore::new());
        let a = Lease::acquire(store.clone(), holder(1, "other"), 1_000, 30_000)
            .await
            .expect("first acquire");
        let err = Lease::acquire(store.clone(), holder(2, "other"), 2_000, 30_000)
            .await
            .expect_err("held");
        let msg = err.to_string();
        assert!(
            matches!(err, LeaseError::Held { .. }) && msg.contains("pid 1 on other"),
            "{msg}"
        );
        // After its expiry the lease is taken over, and the old holder learns it lost.
        let _b = Lease::acquire(store.clone(), holder(2, "other"), 31_001, 30_000)
            .await
            .expect("takeover after expiry");
        let mut a = a;
        let err = a.renew(31_002).await.expect_err("lost");
        assert!(matches!(err, LeaseError::Lost { .. }), "{err}");
        assert!(a.state().lock().expect("state").lost_to.is_some());
    }

    #[tokio::test]
    async fn renewals_keep_it_and_release_frees_it() {
        let store: DynStore = Arc::new(MemStore::new());
        let mut a = Lease::acquire(store.clone(), holder(1, "other"), 0, 1_000)
            .await
            .expect("acquire");
        for t in [300, 600, 900, 1_200] {
            a.renew(t).await.expect("renew");
        }
        assert!(
            Lease::acquire(store.clone(), holder(2, "other"), 2_000, 1_000)
                .await
                .is_err(),
            "renewed until 2,200"
        );
        a.release(2_100).await.expect("release");
        Lease::acquire(store.clone(), holder(2, "other"), 2_101, 1_000)
            .await
            .expect("free after release");
    }

    #[tokio::test]
    async fn a_release_after_a_renewal_whose_answer_was_lost_frees_the_lease() {
        let store: DynStore = Arc::new(MemStore::new());
        let a = Lease::acquire(store.clone(), holder(1, "other"), 0, 30_000)
            .await
            .expect("acquire");
        // A renewal the store applied, its answer never read: the lease keeps an old version.
        let (_, version) = store.get_versioned(LEASE_KEY).await.expect("read");
        let renewed = encode(&holder(1, "other"), 300, 30_300, "/data/app.db");
        store
            .put_if_version(LEASE_KEY, renewed, 300, &version)
            .await
            .expect("the renewal lands");
        a.release(400).await.expect("release");
        Lease::acquire(store.clone(), holder(2, "other"), 401, 30_000)
            .await
            .expect("released, although the lease's version was stale");
    }

    #[tokio::test]
    async fn a_dead_holder_on_this_host_is_taken_over_at_once() {
        let store: DynStore = Arc::new(MemStore::new());
        let here = Holder::here(std::path::Path::new("/data/app.db"));
        // PID 0 never names a running process in /proc.
        let dead = Holder {
            pid: 0,
            nonce: 1,
            ..here.clone()
        };
        let _old = Lease::acquire(store.clone(), dead, 0, 60_000)
            .await
            .expect("acquire");
        Lease::acquire(store.clone(), here, 1, 60_000)
            .await
            .expect("a crashed holder on this host does not block a restart");
    }

    #[tokio::test]
    async fn the_lineage_carries_over_until_a_start_adopts_it() {
        let store: DynStore = Arc::new(MemStore::new());
        let other = |pid| Holder {
            database: "/data/other.db".into(),
            ..holder(pid, "b")
        };
        let a = Lease::acquire(store.clone(), holder(1, "a"), 0, 1_000)
            .await
            .expect("acquire");
        assert_eq!(
            a.other_lineage(),
            None,
            "a new replica is its first database's"
        );
        a.release(10).await.expect("release");
        // Another database takes the expired lease, but the replica is still app.db's.
        let b = Lease::acquire(store.clone(), other(2), 20, 1_000)
            .await
            .expect("acquire");
        assert_eq!(b.other_lineage(), Some("/data/app.db"));
        b.release(30).await.expect("release");
        let mut b = Lease::acquire(store.clone(), other(3), 40, 1_000)
            .await
            .expect("acquire");
        assert_eq!(b.other_lineage(), Some("/data/app.db"), "not adopted: kept");
        b.adopt_lineage();
        assert_eq!(b.other_lineage(), None);
        b.renew(50).await.expect("renew writes the lineage");
        b.release(60).await.expect("release");
        let a = Lease::acquire(store.clone(), holder(4, "a"), 70, 1_000)
            .await
            .expect("acquire");
        assert_eq!(a.other_lineage(), Some("/data/other.db"));
        // A lease written before lineages were recorded: its holder's database.
        let old = br#"{"holder":{"host":"h","pid_namespace":"","pid":9,"database":"/old.db","nonce":1},"renewed_ms":0,"expires_ms":0}"#;
        let old_store: DynStore = Arc::new(MemStore::new());
        old_store
            .put(LEASE_KEY, old.to_vec(), PutOptions::default())
            .await
            .expect("plant");
        let a = Lease::acquire(old_store, holder(5, "a"), 80, 1_000)
            .await
            .expect("acquire");
        assert_eq!(a.other_lineage(), Some("/old.db"));
    }

    #[tokio::test]
    async fn fenced_store_refuses_writes_once_the_lease_is_lost() {
        let inner: DynStore = Arc::new(MemStore::new());
        let state = Arc::new(Mutex::new(LeaseState {
            valid_until_ms: i64::MAX,
            lost_to: None,
        }));
        let fenced = FencedStore::new(
            inner.clone(),
            state.clone(),
            Arc::new(crate::engine::SystemClock),
        );
        fenced
            .put("0000/a", vec![1], PutOptions::default())
            .await
            .expect("write while held");
        state.lock().expect("state").lost_to = Some("pid 9 on h".into());
        let err = fenced
            .put("0000/b", vec![1], PutOptions::default())
            .await
            .expect_err("lost");
        assert_eq!(err.kind, StoreErrorKind::Fenced);
        assert!(err.to_string().contains("pid 9 on h"), "{err}");
        assert!(fenced.delete("0000/a").await.is_err());
        assert_eq!(fenced.list("").await.expect("reads still work").len(), 1);
    }

    /// A clock the test moves; the store below moves it by `put_takes_ms` during every put (a
    /// request that stalls).
    #[derive(Debug, Default)]
    struct Slow {
        now_ms: std::sync::atomic::AtomicI64,
        put_takes_ms: i64,
        inner: MemStore,
    }

    impl crate::engine::Clock for Slow {
        fn now_ms(&self) -> i64 {
            self.now_ms.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl ObjectStore for Slow {
        fn describe(&self) -> String {
            "slow".into()
        }
        async fn put(&self, key: &str, data: Vec<u8>, opts: PutOptions) -> Result<(), StoreError> {
            self.inner.put(key, data, opts).await?;
            self.now_ms
                .fetch_add(self.put_takes_ms, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
            self.inner.get_range(key, offset, len).await
        }
        async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
            self.inner.head(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key).await
        }
    }

    #[tokio::test]
    async fn a_write_whose_answer_arrives_after_the_lease_ran_out_does_not_count() {
        let slow = Arc::new(Slow {
            put_takes_ms: 1_000,
            ..Slow::default()
        });
        let state = Arc::new(Mutex::new(LeaseState {
            valid_until_ms: 1_500,
            lost_to: None,
        }));
        let fenced = FencedStore::new(slow.clone(), state, slow.clone());
        fenced
            .put("0000/a", vec![1], PutOptions::default())
            .await
            .expect("sent at 0, answered at 1000: inside the lease");
        let err = fenced
            .put("0000/b", vec![1], PutOptions::default())
            .await
            .expect_err("sent at 1000, answered at 2000: after the lease");
        assert_eq!(err.kind, StoreErrorKind::Transient);
        assert!(err.to_string().contains("answer came too late"), "{err}");
        // The bytes did land: the failure is ambiguous, as the engine treats it.
        assert!(slow.head("0000/b").await.is_ok());
    }
}
