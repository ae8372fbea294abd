//! `FaultyStore<S>`: object-store faults as a wrapper around any store (see `FAULT_MODEL.md`).

use std::sync::Mutex;

use async_trait::async_trait;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_core::lease::LEASE_KEY;
use sluice_core::scratch::ScratchFile;
use sluice_core::store::{
    ObjectMeta, ObjectStore, PutMode, PutOptions, StoreError, StoreErrorKind,
};

use crate::vfs;

/// Fault knobs: probabilities per request (0 disables the site) and times in simulated ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFaults {
    /// The request fails before it is applied.
    pub transient: f64,
    /// The request is applied, then the reply is lost.
    pub ambiguous: f64,
    /// A GET returns only the first half of the requested bytes (a body cut short).
    pub truncated_get: f64,
    /// Every request takes `latency_min_ms..=latency_max_ms` of simulated time (none with
    /// this 0).
    pub latency_max_ms: i64,
    /// The least a request takes (a store whose requests take a steady time).
    #[serde(default)]
    pub latency_min_ms: i64,
    /// The probability that a request stalls for 200..2000 ms instead.
    pub latency_spike: f64,
    /// A LIST does not show objects written less than this many ms ago (GET and HEAD do).
    pub list_lag_ms: i64,
}

#[derive(Debug)]
struct Inner {
    rng: ChaCha8Rng,
    faults: StoreFaults,
    /// Simulated-time windows `[start, end)` in which every request fails.
    partitions: Vec<(i64, i64)>,
    /// Counts by outcome, for the report.
    injected: u64,
    /// Simulated time of the last injected fault (`i64::MIN`: none yet).
    last_injected_ms: i64,
    /// Requests that must fail next (a plan's `fail-next`), and whether mutations apply first.
    fail_next: u32,
    fail_next_ambiguous: bool,
    /// When each key was last written (for listing lag).
    written_ms: std::collections::HashMap<String, i64>,
    /// While `Some`, the next put waits for this before it reaches the store (a writer that
    /// passed its lease check and then stalled: the simulator opens the gate when the zombie
    /// wakes).
    stall: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Inner {
    fn note_injected(&mut self) {
        self.injected += 1;
        self.last_injected_ms = vfs::with(|v| v.now_ms);
    }
}

#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    state: Mutex<Inner>,
}

enum Fate {
    Ok,
    FailBefore,
    FailAfter,
}

impl<S> FaultyStore<S> {
    pub fn new(inner: S, seed: u64, faults: StoreFaults, partitions: Vec<(i64, i64)>) -> Self {
        let state = Inner {
            rng: ChaCha8Rng::seed_from_u64(seed),
            faults,
            partitions,
            injected: 0,
            last_injected_ms: i64::MIN,
            fail_next: 0,
            fail_next_ambiguous: false,
            written_ms: std::collections::HashMap::new(),
            stall: None,
        };
        Self {
            inner,
            state: Mutex::new(state),
        }
    }

    /// Turns every fault off (the healed phase).
    pub fn heal(&self) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.faults = StoreFaults::default();
        s.partitions.clear();
        s.fail_next = 0;
    }

    /// The next `requests` requests fail; with `ambiguous`, mutating ones are applied first.
    pub fn fail_next(&self, requests: u32, ambiguous: bool) {
        let mut s = self.lock();
        s.fail_next = requests;
        s.fail_next_ambiguous = ambiguous;
    }

    /// The next put stalls until the returned gate is opened (a value sent) or dropped, then
    /// goes on as any put does.
    pub fn stall_next_put(&self) -> tokio::sync::oneshot::Sender<()> {
        let (open, gate) = tokio::sync::oneshot::channel();
        self.lock().stall = Some(gate);
        open
    }

    /// Disarms a stall no put took.
    pub fn unstall(&self) {
        self.lock().stall = None;
    }

    /// Nothing gets through in `[start_ms, end_ms)`.
    pub fn add_partition(&self, start_ms: i64, end_ms: i64) {
        self.lock().partitions.push((start_ms, end_ms));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Simulated time of the last injected fault, `i64::MIN` if none.
    pub fn last_injected_ms(&self) -> i64 {
        self.lock().last_injected_ms
    }

    pub fn injected(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .injected
    }

    /// Whether the store is inside a partition at `now_ms`.
    pub fn partitioned(&self, now_ms: i64) -> bool {
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.partitions.iter().any(|&(a, b)| now_ms >= a && now_ms < b)
    }

    /// The fate of a request on `key`, once its time has passed. Simulated time moves only
    /// inside requests, so the process's other work that came due meanwhile (the lease
    /// renewed beside a long action) runs at a yield before the answer is judged. The lease's
    /// own requests do not yield: a renewal completes before the request it ran beside is
    /// answered, as a renewal sent concurrently when it came due would in production.
    async fn answer(&self, key: &str, mutating: bool) -> Fate {
        let fate = self.fate(mutating);
        if key != LEASE_KEY {
            tokio::task::yield_now().await;
        }
        fate
    }

    fn fate(&self, mutating: bool) -> Fate {
        let mut s = self.lock();
        // Latency: the request takes simulated time (a spike counts as an injected fault).
        let mut delay = 0;
        let faults = s.faults;
        if faults.latency_max_ms > 0 {
            delay = s.rng.random_range(
                faults.latency_min_ms.clamp(0, faults.latency_max_ms)..=faults.latency_max_ms,
            );
        }
        let spike = faults.latency_spike > 0.0 && s.rng.random_bool(faults.latency_spike.min(1.0));
        if spike {
            delay = s.rng.random_range(200..2000);
        }
        let now = vfs::with(|v| {
            v.now_ms += delay;
            v.now_ms
        });
        // Noted when it ends: the store misbehaved until then (a renewal stalled across a
        // partition's end answers with a lease already run out).
        if spike {
            s.note_injected();
        }
        let fate = if s.partitions.iter().any(|&(a, b)| now >= a && now < b) {
            Fate::FailBefore
        } else if s.fail_next > 0 {
            s.fail_next -= 1;
            if mutating && s.fail_next_ambiguous {
                Fate::FailAfter
            } else {
                Fate::FailBefore
            }
        } else {
            let (t, a) = (s.faults.transient, s.faults.ambiguous);
            let roll: f64 = s.rng.random();
            if roll < t {
                Fate::FailBefore
            } else if mutating && roll < t + a {
                Fate::FailAfter
            } else {
                Fate::Ok
            }
        };
        if !matches!(fate, Fate::Ok) {
            s.note_injected();
        }
        fate
    }
}

impl<S> FaultyStore<S> {
    fn cut_short(&self) -> bool {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rate = s.faults.truncated_get;
        let cut = rate > 0.0 && s.rng.random_bool(rate.min(1.0));
        if cut {
            s.note_injected();
        }
        cut
    }
}

impl<S: ObjectStore> FaultyStore<S> {
    /// A put (`write`, not started yet) under the store's faults: the zombie's stall gate,
    /// then a failure before it is applied, after it (the reply lost), or none.
    async fn faulted_put(
        &self,
        key: &str,
        write: impl std::future::Future<Output = Result<(), StoreError>>,
    ) -> Result<(), StoreError> {
        if key.ends_with(".ltx") {
            crate::files::upload_begins();
        }
        let stall = self.lock().stall.take();
        if let Some(gate) = stall {
            // Opened or dropped, the writer goes on.
            let _ = gate.await;
        }
        let fate = self.answer(key, true).await;
        if matches!(fate, Fate::FailBefore) {
            return Err(injected("put", key));
        }
        write.await?;
        let now = vfs::with(|v| v.now_ms);
        self.lock().written_ms.insert(key.to_string(), now);
        match fate {
            Fate::Ok => Ok(()),
            _ => Err(injected("put", key)),
        }
    }
}

fn injected(op: &'static str, key: &str) -> StoreError {
    StoreError::new(StoreErrorKind::Transient, op, key, "injected fault")
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<S: ObjectStore> ObjectStore for FaultyStore<S> {
    fn describe(&self) -> String {
        format!("faulty+{}", self.inner.describe())
    }

    async fn put(&self, key: &str, data: Vec<u8>, opts: PutOptions) -> Result<(), StoreError> {
        self.faulted_put(key, self.inner.put(key, data, opts)).await
    }

    async fn put_spooled(
        &self,
        key: &str,
        body: &dyn ScratchFile,
        opts: PutOptions,
    ) -> Result<(), StoreError> {
        self.faulted_put(key, self.inner.put_spooled(key, body, opts))
            .await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        match self.answer(key, false).await {
            Fate::Ok => {
                let mut body = self.inner.get_range(key, offset, len).await?;
                if self.cut_short() {
                    body.truncate(body.len() / 2);
                }
                Ok(body)
            }
            _ => Err(injected("get", key)),
        }
    }

    /// The faults of a put: a copy is a write of `to`.
    async fn copy(&self, from: &str, to: &str, mode: PutMode) -> Result<(), StoreError> {
        self.faulted_put(to, self.inner.copy(from, to, mode)).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        match self.answer(key, false).await {
            Fate::Ok => self.inner.head(key).await,
            _ => Err(injected("head", key)),
        }
    }

    /// The same faults as `list`: the simulated stores keep every timestamp in the listing.
    async fn list_untimed(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.list(prefix).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        match self.answer(prefix, false).await {
            Fate::Ok => {
                let mut all = self.inner.list(prefix).await?;
                let now = vfs::with(|v| v.now_ms);
                let s = self.lock();
                let lag = s.faults.list_lag_ms;
                if lag > 0 {
                    all.retain(|m| s.written_ms.get(&m.key).is_none_or(|&t| now - t >= lag));
                }
                Ok(all)
            }
            _ => Err(injected("list", prefix)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.answer(key, true).await {
            Fate::Ok => self.inner.delete(key).await,
            Fate::FailBefore => Err(injected("delete", key)),
            Fate::FailAfter => {
                self.inner.delete(key).await?;
                Err(injected("delete", key))
            }
        }
    }

    fn supports_conditional_writes(&self) -> bool {
        self.inner.supports_conditional_writes()
    }

    fn timestamp_resolution_ms(&self) -> i64 {
        self.inner.timestamp_resolution_ms()
    }

    async fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        match self.answer(key, false).await {
            Fate::Ok => self.inner.get_versioned(key).await,
            _ => Err(injected("get", key)),
        }
    }

    async fn put_if_version(
        &self,
        key: &str,
        data: Vec<u8>,
        timestamp_ms: i64,
        version: &str,
    ) -> Result<String, StoreError> {
        let fate = self.answer(key, true).await;
        if matches!(fate, Fate::FailBefore) {
            return Err(injected("put", key));
        }
        let version = self
            .inner
            .put_if_version(key, data, timestamp_ms, version)
            .await?;
        match fate {
            Fate::Ok => Ok(version),
            _ => Err(injected("put", key)),
        }
    }

    fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
        self.inner.local_path(key)
    }
}
