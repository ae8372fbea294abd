//! `CountingStore<S>`: counts requests per operation and outcome, for the metrics endpoint.
//! A wrapper around the seam like every other store decoration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::store::{ObjectMeta, ObjectStore, PutMode, PutOptions, StoreError};

/// Operations counted, in metric label order.
pub const OPS: [&str; 5] = ["put", "get", "head", "list", "delete"];

/// Request and error counts per operation (index as in [`OPS`]).
#[derive(Debug, Default)]
pub struct RequestCounts {
    pub requests: [AtomicU64; 5],
    pub errors: [AtomicU64; 5],
}

impl RequestCounts {
    pub fn snapshot(&self) -> [(u64, u64); 5] {
        std::array::from_fn(|i| {
            (
                self.requests[i].load(Ordering::Relaxed),
                self.errors[i].load(Ordering::Relaxed),
            )
        })
    }
}

#[derive(Debug)]
pub struct CountingStore<S: ?Sized> {
    counts: Arc<RequestCounts>,
    inner: Arc<S>,
}

impl<S: ObjectStore + ?Sized> CountingStore<S> {
    pub fn new(inner: Arc<S>, counts: Arc<RequestCounts>) -> Self {
        Self { counts, inner }
    }

    fn count<T>(&self, op: usize, key: &str, r: Result<T, StoreError>) -> Result<T, StoreError> {
        tracing::trace!(op = OPS[op], key, ok = r.is_ok(), "store request");
        self.counts.requests[op].fetch_add(1, Ordering::Relaxed);
        if r.is_err() {
            self.counts.errors[op].fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<S: ObjectStore + ?Sized> ObjectStore for CountingStore<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, data: Vec<u8>, opts: PutOptions) -> Result<(), StoreError> {
        self.count(0, key, self.inner.put(key, data, opts).await)
    }
    async fn put_spooled(
        &self,
        key: &str,
        body: &dyn crate::scratch::ScratchFile,
        opts: PutOptions,
    ) -> Result<(), StoreError> {
        self.count(0, key, self.inner.put_spooled(key, body, opts).await)
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.count(1, key, self.inner.get_range(key, offset, len).await)
    }
    /// Counted as a put: on S3 a copy is a PUT.
    async fn copy(&self, from: &str, to: &str, mode: PutMode) -> Result<(), StoreError> {
        self.count(0, from, self.inner.copy(from, to, mode).await)
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.count(2, key, self.inner.head(key).await)
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.count(3, prefix, self.inner.list(prefix).await)
    }
    async fn list_untimed(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.count(3, prefix, self.inner.list_untimed(prefix).await)
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.count(4, key, self.inner.delete(key).await)
    }
    fn supports_conditional_writes(&self) -> bool {
        self.inner.supports_conditional_writes()
    }

    fn timestamp_resolution_ms(&self) -> i64 {
        self.inner.timestamp_resolution_ms()
    }
    async fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        self.count(1, key, self.inner.get_versioned(key).await)
    }
    async fn put_if_version(
        &self,
        key: &str,
        data: Vec<u8>,
        timestamp_ms: i64,
        version: &str,
    ) -> Result<String, StoreError> {
        self.count(
            0,
            key,
            self.inner
                .put_if_version(key, data, timestamp_ms, version)
                .await,
        )
    }
    fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
        self.inner.local_path(key)
    }
}
