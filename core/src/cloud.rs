//! The cloud replicas: [`CloudStore`] implements the object-store seam on a client of the
//! `object_store` crate, for every service it speaks. `s3.rs` builds one for AWS S3 and
//! S3-compatible servers, `azure.rs` for Azure Blob Storage; what differs between them is a
//! [`Service`] (names, the metadata key of timestamps) and how the client is built.
//!
//! Keys are relative to the replica path inside the bucket (Azure: container): key
//! `0000/…ltx` of the replica `s3://bkt/app.db` is the object `app.db/0000/…ltx`, exactly where
//! Litestream 0.5 puts it.
//!
//! How the seam's contract maps onto an object store:
//! - `put` is one PUT (a multipart upload above [`MULTIPART_THRESHOLD_BYTES`]: S3 parts, Azure
//!   blocks committed by one block list; aborted if a part fails): either is atomic and durable
//!   once acknowledged. The timestamp is stored as object metadata in Go's RFC 3339 "nano" form,
//!   under the key Litestream writes and reads (`litestream-timestamp` on S3,
//!   `litestreamtimestamp` on Azure, whose metadata names cannot hold a hyphen).
//!   `PutMode::Create` sends `If-None-Match: *`; servers that implement it (AWS, Azure, Azurite,
//!   MinIO, moto) make it atomic, others check then write (s3s-fs) or ignore it (garage): only
//!   the first kind can fence writers.
//! - `list` is one listing request per 1,000 keys (the client pages). The client's listings
//!   carry no user metadata, so the timestamp of each object comes from a cache filled by our own
//!   puts and otherwise from one HEAD per object version (bounded concurrency), falling back to
//!   the modification time when the object has no timestamp metadata (written by another tool).
//!   A long-running replicator therefore HEADs each foreign object once; its own uploads cost
//!   nothing extra. Litestream instead uses the modification time on S3 unless it restores to a
//!   timestamp; that is the upload time, later than the LTX time for compacted files, which
//!   would make timestamp restores and retention see them as younger than they are.
//! - `get_range` is a ranged GET; the client resumes a body cut mid-way with a new ranged
//!   request (Litestream #1077).
//! - `delete` of a missing object succeeds (S3 answers so itself; Azure's 404 is mapped).
//!
//! Failures: the client retries 5xx, throttling (429, SlowDown), timeouts and connection errors
//! with exponential backoff and jitter ([`RETRIES_MAX`], [`RETRY_BACKOFF_MAX_MS`]). Uploads in
//! `Overwrite` mode are idempotent (same key, same bytes), so a retry after an ambiguous failure
//! (applied, reply lost) is harmless. What remains after the retries is classified: missing
//! bucket or container, access denied, wrong region, malformed requests are `Permanent`; the
//! rest is `Transient`. Messages name the bucket and the endpoint and never contain credentials.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as OsPath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientConfigKey, ClientOptions, GetOptions, GetRange,
    ObjectStore as _, ObjectStoreExt as _, PutPayload, RetryConfig,
};

use crate::store::{ObjectMeta, ObjectStore, PutMode, PutOptions, StoreError, StoreErrorKind};

/// What tells one cloud service from another, for messages and metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// The URL scheme of its replicas: `s3`, `abs`.
    pub scheme: &'static str,
    /// What the service calls the namespace objects live in: `bucket`, `container`.
    pub container_word: &'static str,
    /// The metadata key Litestream keeps an LTX file's creation time under.
    pub timestamp_key: &'static str,
    /// The service's own endpoints end so (messages leave them out).
    pub home_suffix: &'static str,
    /// Compare-and-swap by the object's generation (GCS) instead of its ETag (S3, Azure).
    pub cas_by_generation: bool,
}

/// Builds the clients at first use: AWS S3 without a configured region looks the bucket's
/// region up first.
#[async_trait]
pub trait Connect: Send + Sync {
    /// The clients, or the kind and text of why not.
    async fn connect(&self) -> Result<Clients, (StoreErrorKind, String)>;
}

/// The clients of a [`CloudStore`]: built, or built at first use.
pub enum Client {
    Ready(Clients),
    Lazy(Box<dyn Connect>),
}

/// What a [`CloudStore`] sends its requests through.
pub struct Clients {
    /// Every request but the parts and completion of a multipart upload that `multipart`
    /// takes.
    pub store: Arc<dyn object_store::ObjectStore>,
    /// Where the service's client offers it (S3, GCS): multipart uploads part by part, the
    /// completion through its own client whose read timeout is as long as a request may take
    /// ([`completion_options`]). Without it (Azure, whose block list commits at once), uploads
    /// go through `store`'s multipart writer, completion included.
    pub multipart: Option<Multiparts>,
}

/// The two clients of multipart uploads made part by part.
pub struct Multiparts {
    /// Creates the upload, sends its parts and aborts it: a silent connection is a stall.
    pub parts: Arc<dyn MultipartStore>,
    /// Completes the upload: a server may assemble the parts for minutes before it answers
    /// (s3s-fs: more than the read timeout for 10 GiB; AWS documents minutes). A client that
    /// dropped the connection meanwhile would see the upload aborted under it (s3s-fs) and
    /// its retries refused.
    pub complete: Arc<dyn MultipartStore>,
}

impl Clients {
    /// One client for everything.
    pub fn single(store: Arc<dyn object_store::ObjectStore>) -> Clients {
        Clients {
            store,
            multipart: None,
        }
    }

    /// `client` for everything but multipart completions, which go through `completion`
    /// (the same service built with [`completion_options`]).
    pub fn with_completion<C>(client: C, completion: C) -> Clients
    where
        C: object_store::ObjectStore + MultipartStore,
    {
        let client = Arc::new(client);
        Clients {
            store: client.clone(),
            multipart: Some(Multiparts {
                parts: client,
                complete: Arc::new(completion),
            }),
        }
    }
}

/// The client options every cloud store uses: timeouts, and TLS and plain-HTTP permissions.
pub fn client_options(skip_verify: bool, allow_http: bool) -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .with_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .with_config(
            ClientConfigKey::ReadTimeout,
            format!("{}ms", READ_TIMEOUT_MS),
        )
        .with_allow_invalid_certificates(skip_verify)
        .with_allow_http(allow_http)
}

/// `options` for the client that completes multipart uploads: it waits for an answer as long
/// as a request may take ([`REQUEST_TIMEOUT_MS`]) instead of [`READ_TIMEOUT_MS`].
pub fn completion_options(options: ClientOptions) -> ClientOptions {
    options.with_config(
        ClientConfigKey::ReadTimeout,
        format!("{}ms", REQUEST_TIMEOUT_MS),
    )
}

/// The retries every cloud store's client makes (see the module documentation).
pub fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(RETRY_BACKOFF_INIT_MS),
            max_backoff: Duration::from_millis(RETRY_BACKOFF_MAX_MS),
            base: 2.0,
        },
        max_retries: RETRIES_MAX,
        retry_timeout: Duration::from_millis(RETRY_TIMEOUT_MS),
    }
}

/// Retries of one request after its first attempt (transient failures only).
pub const RETRIES_MAX: usize = 5;
/// First backoff between retries; it doubles, with jitter, up to the maximum.
pub const RETRY_BACKOFF_INIT_MS: u64 = 100;
pub const RETRY_BACKOFF_MAX_MS: u64 = 5_000;
/// No retry starts later than this after the first attempt.
pub const RETRY_TIMEOUT_MS: u64 = 60_000;
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// A response that sends nothing for this long is a stalled connection: fail and retry.
pub const READ_TIMEOUT_MS: u64 = 30_000;
/// The longest one request may take, including a large upload.
pub const REQUEST_TIMEOUT_MS: u64 = 15 * 60_000;
/// After a failed multipart completion, how long the object may take to appear: the read
/// timeout (the first attempt's answer was lost after it) plus the assembly of `size` bytes
/// at this rate.
pub const COMPLETION_ASSEMBLY_BYTES_PER_S: u64 = 50 << 20;
pub const COMPLETION_POLL_MS: u64 = 1_000;

fn completion_wait(size: u64) -> Duration {
    Duration::from_millis(READ_TIMEOUT_MS)
        + Duration::from_secs(size / COMPLETION_ASSEMBLY_BYTES_PER_S)
}

/// Whether `present` turns true within `wait`, asked at once and then every `poll`.
async fn appears_within<F, Fut>(wait: Duration, poll: Duration, mut present: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if present().await {
            return true;
        }
        if tokio::time::Instant::now() + poll > deadline {
            return false;
        }
        tokio::time::sleep(poll).await;
    }
}

/// HEAD requests in flight while a listing looks up timestamps.
pub const METADATA_HEADS_IN_FLIGHT_MAX: usize = 32;
/// Entries of the timestamp cache; past this it is cleared (and refilled by HEADs).
pub const TIMESTAMP_CACHE_ENTRIES_MAX: usize = 100_000;
/// Objects larger than this go up as multipart uploads (one PUT is limited to 5 GiB).
pub const MULTIPART_THRESHOLD_BYTES: u64 = 64 << 20;
/// Part size of multipart uploads: with S3's 10,000 parts, objects up to 156 GiB.
pub const MULTIPART_PART_BYTES: usize = 16 << 20;
/// S3's smallest part (all but the last).
pub const MULTIPART_PART_BYTES_MIN: usize = 5 << 20;
/// Parts of one upload in flight at once.
pub const MULTIPART_PARTS_IN_FLIGHT_MAX: usize = 4;
/// The shape of one multipart upload.
#[derive(Clone, Copy, Debug)]
struct Multipart {
    size: u64,
    /// Parts in memory at once.
    in_flight: usize,
    part_bytes: usize,
    /// A `Create`: the key is checked again before the upload completes.
    create: bool,
}

/// A multipart upload under way.
enum Upload<'a> {
    /// Through the client's writer, which completes it with the client's read timeout.
    Writer(Box<dyn object_store::MultipartUpload>),
    /// Part by part, completed through the completion client.
    Parts {
        clients: &'a Multiparts,
        path: OsPath,
        id: object_store::MultipartId,
    },
}

/// One part's upload: its index, and its id where the upload goes part by part.
type PartSent = futures::future::BoxFuture<'static, object_store::Result<(usize, Option<PartId>)>>;

impl Upload<'_> {
    /// Sends part `index`.
    fn send(&mut self, index: usize, bytes: bytes::Bytes) -> PartSent {
        use futures::{FutureExt as _, TryFutureExt as _};
        match self {
            Upload::Writer(writer) => writer
                .put_part(PutPayload::from(bytes))
                .map_ok(move |()| (index, None))
                .boxed(),
            Upload::Parts { clients, path, id } => {
                let (parts, path, id) = (clients.parts.clone(), path.clone(), id.clone());
                async move {
                    let part = parts
                        .put_part(&path, &id, index, PutPayload::from(bytes))
                        .await?;
                    Ok((index, Some(part)))
                }
                .boxed()
            }
        }
    }

    /// Completes the upload from `parts`, the ids of its parts in order.
    async fn complete(
        &mut self,
        parts: Vec<PartId>,
    ) -> object_store::Result<object_store::PutResult> {
        match self {
            Upload::Writer(writer) => writer.complete().await,
            Upload::Parts { clients, path, id } => {
                clients.complete.complete_multipart(path, id, parts).await
            }
        }
    }

    /// Aborts the upload: the server deletes its parts.
    async fn abort(&mut self) -> object_store::Result<()> {
        match self {
            Upload::Writer(writer) => writer.abort().await,
            Upload::Parts { clients, path, id } => clients.parts.abort_multipart(path, id).await,
        }
    }
}

/// A spooled body up to this size goes up as one PUT (read into memory).
pub const SPOOLED_SINGLE_PUT_BYTES_MAX: u64 = 16 << 20;
/// Parts of a spooled body in memory at once (read from its file as they are sent): the
/// upload's memory is this many parts.
pub const SPOOLED_PARTS_IN_FLIGHT_MAX: usize = 2;
/// The part size of a spooled body's upload (larger only past S3's 10,000 parts: 80 GB).
pub const SPOOLED_PART_BYTES_MAX: usize = 8 << 20;
/// S3's limit on the parts of one upload.
pub const MULTIPART_PARTS_MAX: u64 = 10_000;

/// A cloud replica. See the module documentation for how the seam's contract maps onto it.
pub struct CloudStore {
    service: Service,
    /// Set at construction, or at first use by `connect`.
    clients: tokio::sync::OnceCell<Clients>,
    connect: Option<Box<dyn Connect>>,
    /// The bucket (Azure: container).
    container: String,
    path: String,
    /// For messages: the endpoint, or the service's regional endpoint.
    endpoint: String,
    /// Key to (object version, timestamp in Unix ms) for objects whose timestamp is known.
    timestamps: Mutex<HashMap<String, (String, i64)>>,
    multipart_threshold_bytes: u64,
    multipart_part_bytes: usize,
}

impl fmt::Debug for CloudStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudStore")
            .field("service", &self.service.scheme)
            .field("container", &self.container)
            .field("path", &self.path)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl CloudStore {
    /// A store on `path` inside `container`, reached through `client`; `endpoint` is what
    /// messages name. Makes no request.
    pub fn new(
        service: Service,
        container: String,
        path: String,
        endpoint: String,
        client: Client,
    ) -> CloudStore {
        let (clients, connect) = match client {
            Client::Ready(c) => (tokio::sync::OnceCell::new_with(Some(c)), None),
            Client::Lazy(connect) => (tokio::sync::OnceCell::new(), Some(connect)),
        };
        CloudStore {
            service,
            clients,
            connect,
            container,
            path,
            endpoint,
            timestamps: Mutex::new(HashMap::new()),
            multipart_threshold_bytes: MULTIPART_THRESHOLD_BYTES,
            multipart_part_bytes: MULTIPART_PART_BYTES,
        }
    }

    /// Changes when and how uploads are split into parts (tests use small objects). Parts are
    /// at least [`MULTIPART_PART_BYTES_MIN`].
    pub fn with_multipart(mut self, threshold_bytes: u64, part_bytes: usize) -> CloudStore {
        self.multipart_threshold_bytes = threshold_bytes;
        self.multipart_part_bytes = part_bytes.max(MULTIPART_PART_BYTES_MIN);
        self
    }

    /// A multipart upload of `size` bytes, each part read by `part(offset, len)` as it is
    /// sent (at most `in_flight` parts in memory), aborted (parts deleted) if a part fails to
    /// read or to upload. A `Create` checks the key again before the upload completes: taken
    /// meanwhile aborts it too.
    async fn put_multipart(
        &self,
        key: &str,
        path: &OsPath,
        m: Multipart,
        mut part: impl FnMut(u64, usize) -> std::io::Result<bytes::Bytes> + Send,
        attributes: Attributes,
    ) -> Result<object_store::PutResult, StoreError> {
        let Multipart {
            size,
            in_flight,
            part_bytes,
            create,
        } = m;
        let clients = self.clients("put", key).await?;
        let opts = object_store::PutMultipartOptions {
            attributes,
            ..object_store::PutMultipartOptions::default()
        };
        let mut upload = match &clients.multipart {
            Some(m) => Upload::Parts {
                id: m
                    .parts
                    .create_multipart_opts(path, opts)
                    .await
                    .map_err(|e| self.error("put", key, &e))?,
                clients: m,
                path: path.clone(),
            },
            None => Upload::Writer(
                clients
                    .store
                    .put_multipart_opts(path, opts)
                    .await
                    .map_err(|e| self.error("put", key, &e))?,
            ),
        };
        let mut sending = futures::stream::FuturesUnordered::new();
        // Per part in order, its id once sent (the writer keeps them itself).
        let mut sent: Vec<Option<PartId>> = Vec::new();
        let mut offset = 0u64;
        let failed = 'send: {
            while offset < size {
                // At most `in_flight` parts in memory: each is read only when one slot frees.
                while sending.len() >= in_flight.max(1) {
                    match futures::StreamExt::next(&mut sending).await {
                        Some(Ok((index, id))) => sent[index] = id,
                        Some(Err(e)) => break 'send Some(self.error("put", key, &e)),
                        None => {}
                    }
                }
                let len = usize::try_from(size - offset)
                    .unwrap_or(usize::MAX)
                    .min(part_bytes);
                match part(offset, len) {
                    Ok(bytes) => {
                        offset += bytes.len() as u64;
                        sending.push(upload.send(sent.len(), bytes));
                        sent.push(None);
                    }
                    Err(e) => break 'send Some(StoreError::from_io("put", self.location(key), &e)),
                }
            }
            while let Some(r) = futures::StreamExt::next(&mut sending).await {
                match r {
                    Ok((index, id)) => sent[index] = id,
                    Err(e) => break 'send Some(self.error("put", key, &e)),
                }
            }
            // object_store has no conditional completion: a `Create` checks the key again
            // before the upload completes (check-then-write; the lease fences writers).
            if create && let Err(e) = self.refuse_existing(key, path).await {
                break 'send Some(e);
            }
            None
        };
        if let Some(e) = failed {
            drop(sending);
            let _ = upload.abort().await;
            return Err(e);
        }
        let err = match upload.complete(sent.into_iter().flatten().collect()).await {
            Ok(done) => return Ok(done),
            Err(e) => self.error("put", key, &e),
        };
        // The client retries a completion whose answer it lost, and a server answers the
        // retry of an upload that did complete with an error (NoSuchUpload on AWS, 403 on
        // s3s-fs): not an access problem, and the object may exist, or appear: a server that
        // assembles the parts before it answers (AWS says a completion may take minutes) may
        // still be completing the first attempt. An object of the size sent, there or
        // appearing within a wait that grows with the size, makes the failure ambiguous,
        // which the caller resolves (the engine re-reads the replica's position); otherwise
        // the error stands.
        let found = appears_within(
            completion_wait(size),
            Duration::from_millis(COMPLETION_POLL_MS),
            || async {
                clients
                    .store
                    .head(path)
                    .await
                    .is_ok_and(|meta| meta.size == size)
            },
        )
        .await;
        if found {
            Err(StoreError::new(
                StoreErrorKind::Transient,
                "put",
                self.location(key),
                format!(
                    "the upload's completion failed ({}), but an object of its size is there: it may have completed",
                    err.message
                ),
            ))
        } else {
            // Not completed: its parts would stay on the server (and be billed) until a
            // lifecycle rule removed them.
            let _ = upload.abort().await;
            Err(err)
        }
    }

    /// The part size of a multipart upload of `size` bytes: the configured size, at most
    /// `max`, larger only where S3's 10,000 parts would not hold the object.
    fn part_bytes(&self, size: u64, max: usize) -> usize {
        let needed = usize::try_from(size.div_ceil(MULTIPART_PARTS_MAX)).unwrap_or(usize::MAX);
        self.multipart_part_bytes
            .min(max)
            .max(needed)
            .max(MULTIPART_PART_BYTES_MIN)
    }

    /// `AlreadyExists` if `key` exists (the check of a `Create` that cannot be conditional).
    async fn refuse_existing(&self, key: &str, path: &OsPath) -> Result<(), StoreError> {
        match self.head_object("put", key, path).await {
            Ok(_) => Err(StoreError::new(
                StoreErrorKind::AlreadyExists,
                "put",
                self.location(key),
                "object exists",
            )),
            Err(e) if e.kind == StoreErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// What a finished put leaves in the timestamp cache.
    fn finish_put(
        &self,
        key: &str,
        size: u64,
        timestamp_ms: i64,
        result: Result<object_store::PutResult, StoreError>,
    ) -> Result<(), StoreError> {
        match result {
            Ok(res) => {
                match res.e_tag {
                    Some(tag) => self.cache_put(key, tag, timestamp_ms),
                    None => self.cache_forget(key),
                }
                tracing::trace!(key, size, "s3 put");
                Ok(())
            }
            Err(e) => {
                self.cache_forget(key);
                Err(e)
            }
        }
    }

    /// The bucket (Azure: container).
    pub fn container(&self) -> &str {
        &self.container
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The client of every request but multipart uploads, built now if it is built at first
    /// use.
    async fn client(
        &self,
        op: &'static str,
        key: &str,
    ) -> Result<&Arc<dyn object_store::ObjectStore>, StoreError> {
        Ok(&self.clients(op, key).await?.store)
    }

    /// The clients, built now if they are built at first use.
    async fn clients(&self, op: &'static str, key: &str) -> Result<&Clients, StoreError> {
        self.clients
            .get_or_try_init(|| async {
                let connect = self.connect.as_ref().ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Permanent,
                        op,
                        self.location(key),
                        "client missing",
                    )
                })?;
                connect.connect().await.map_err(|(kind, message)| {
                    StoreError::new(kind, op, self.location(key), message)
                })
            })
            .await
    }

    fn location(&self, key: &str) -> String {
        if key.is_empty() {
            format!("{}://{}/{}", self.service.scheme, self.container, self.path)
        } else {
            format!(
                "{}://{}/{}/{key}",
                self.service.scheme, self.container, self.path
            )
        }
    }

    fn object_path(&self, op: &'static str, key: &str) -> Result<OsPath, StoreError> {
        crate::store::check_key(op, &self.describe(), key)?;
        OsPath::parse(format!("{}/{key}", self.path)).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Permanent,
                op,
                self.location(key),
                format!("invalid key: {e}"),
            )
        })
    }

    /// LIST, then (when `timed`) a HEAD of every object whose timestamp is not cached: S3
    /// returns no user metadata in a listing.
    async fn list_objects(&self, prefix: &str, timed: bool) -> Result<Vec<ObjectMeta>, StoreError> {
        // S3 lists by any string prefix, the client by whole path segments: list the segment
        // holding the prefix and keep what matches.
        let dir = prefix.rsplit_once('/').map_or("", |(d, _)| d);
        let list_path = if dir.is_empty() {
            OsPath::parse(&self.path)
        } else {
            OsPath::parse(format!("{}/{dir}", self.path))
        }
        .map_err(|e| {
            StoreError::new(
                StoreErrorKind::Permanent,
                "list",
                self.location(prefix),
                format!("invalid prefix: {e}"),
            )
        })?;
        let listed: Vec<object_store::ObjectMeta> = self
            .client("list", prefix)
            .await?
            .list(Some(&list_path))
            .try_collect()
            .await
            .map_err(|e| self.error("list", prefix, &e))?;
        let mut out = Vec::with_capacity(listed.len());
        let mut unknown = Vec::new();
        for meta in &listed {
            let Some(key) = self.key_of(&meta.location) else {
                continue;
            };
            if !key.starts_with(prefix) {
                continue;
            }
            let version = version_of(meta);
            match self.cache_get(key, &version) {
                Some(timestamp_ms) => out.push(ObjectMeta {
                    key: key.to_string(),
                    size: meta.size,
                    timestamp_ms,
                }),
                None if !timed => out.push(ObjectMeta {
                    key: key.to_string(),
                    size: meta.size,
                    timestamp_ms: meta.last_modified.timestamp_millis(),
                }),
                // A listing without ETags (s3s-fs) names versions by size and mtime: cache
                // under that name, or every listing would HEAD every object again.
                None => unknown.push((
                    key.to_string(),
                    meta.location.clone(),
                    meta.e_tag.is_none().then_some(version),
                )),
            }
        }
        let looked_up: Vec<Option<(ObjectMeta, String)>> = futures::stream::iter(unknown)
            .map(|(key, path, listed_as)| async move {
                match self.head_object("list", &key, &path).await {
                    Ok((meta, version)) => Ok(Some((meta, listed_as.unwrap_or(version)))),
                    // Deleted between the listing and the HEAD: it is gone.
                    Err(e) if e.kind == StoreErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(METADATA_HEADS_IN_FLIGHT_MAX)
            .try_collect()
            .await?;
        for (meta, version) in looked_up.into_iter().flatten() {
            self.cache_put(&meta.key, version, meta.timestamp_ms);
            out.push(meta);
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The key of an object path under the replica path, or `None` for anything else.
    fn key_of<'a>(&self, path: &'a OsPath) -> Option<&'a str> {
        path.as_ref()
            .strip_prefix(self.path.as_str())?
            .strip_prefix('/')
    }

    fn cache_get(&self, key: &str, version: &str) -> Option<i64> {
        let cache = self
            .timestamps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .get(key)
            .filter(|(v, _)| v == version)
            .map(|&(_, ts)| ts)
    }

    fn cache_put(&self, key: &str, version: String, timestamp_ms: i64) {
        let mut cache = self
            .timestamps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= TIMESTAMP_CACHE_ENTRIES_MAX {
            cache.clear();
        }
        cache.insert(key.to_string(), (version, timestamp_ms));
    }

    fn cache_forget(&self, key: &str) {
        self.timestamps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    /// HEAD: size, timestamp (metadata, else LastModified) and version of one object.
    async fn head_object(
        &self,
        op: &'static str,
        key: &str,
        path: &OsPath,
    ) -> Result<(ObjectMeta, String), StoreError> {
        tracing::trace!(op, key, "s3 head");
        let opts = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let res = self
            .client(op, key)
            .await?
            .get_opts(path, opts)
            .await
            .map_err(|e| self.error(op, key, &e))?;
        let timestamp_ms = res
            .attributes
            .get(&Attribute::Metadata(self.service.timestamp_key.into()))
            .and_then(|v| parse_timestamp(v.as_ref()))
            .unwrap_or_else(|| res.meta.last_modified.timestamp_millis());
        let version = version_of(&res.meta);
        Ok((
            ObjectMeta {
                key: key.to_string(),
                size: res.meta.size,
                timestamp_ms,
            },
            version,
        ))
    }

    /// Maps a client error to the seam's error: kind, and a one-line message naming the bucket
    /// and endpoint.
    fn error(&self, op: &'static str, key: &str, e: &object_store::Error) -> StoreError {
        let details = Details::of(e);
        let (kind, message) = classify(
            e,
            &details,
            self.service.container_word,
            &self.container,
            &self.endpoint,
        );
        StoreError::new(kind, op, self.location(key), message)
    }
}

/// A version string for the timestamp cache: the ETag, else size and modification time.
fn version_of(meta: &object_store::ObjectMeta) -> String {
    meta.e_tag.clone().unwrap_or_else(|| {
        format!(
            "{}@{}",
            meta.size,
            meta.last_modified.timestamp_nanos_opt().unwrap_or(0)
        )
    })
}

/// What an error chain says: HTTP status, the service's error code and message, transport
/// failure.
#[derive(Debug, Default)]
struct Details {
    status: Option<u16>,
    code: Option<String>,
    message: Option<String>,
    transport: Option<HttpErrorKind>,
    /// The innermost cause, e.g. `Connection refused (os error 111)`.
    cause: String,
}

impl Details {
    fn of(e: &object_store::Error) -> Details {
        let mut d = Details::default();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(h) = err.downcast_ref::<HttpError>() {
                d.transport.get_or_insert(h.kind());
            }
            let text = err.to_string();
            // The client keeps its retry error private; its text is stable:
            // "Server returned non-2xx status code: 403 Forbidden: <body>".
            if d.status.is_none()
                && let Some((_, rest)) = text.split_once("status code: ")
            {
                d.status = rest.get(..3).and_then(|s| s.parse().ok());
            }
            if d.code.is_none() {
                d.code = xml_tag(&text, "Code");
            }
            if d.message.is_none() {
                d.message = xml_tag(&text, "Message");
            }
            d.cause = text;
            cur = err.source();
        }
        d.cause = one_line(&d.cause);
        d
    }

    /// `HTTP 403 AccessDenied: Access Denied`, as much as is known.
    fn reply(&self) -> String {
        let mut s = self
            .status
            .map_or_else(|| "error".to_string(), |st| format!("HTTP {st}"));
        if let Some(code) = &self.code {
            s.push(' ');
            s.push_str(code);
        }
        if let Some(m) = &self.message {
            s.push_str(": ");
            s.push_str(m);
        }
        s
    }
}

fn xml_tag(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let (_, rest) = text.split_once(&open)?;
    let (value, _) = rest.split_once(&close)?;
    Some(one_line(value))
}

/// Collapses whitespace so every message is one line, and bounds its length.
pub(crate) fn one_line(s: &str) -> String {
    const MESSAGE_CHARS_MAX: usize = 300;
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > MESSAGE_CHARS_MAX {
        let cut: String = joined.chars().take(MESSAGE_CHARS_MAX).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

fn classify(
    e: &object_store::Error,
    d: &Details,
    word: &str,
    bucket: &str,
    endpoint: &str,
) -> (StoreErrorKind, String) {
    use StoreErrorKind::{
        AlreadyExists, NotFound, Permanent, Precondition, Transient, Unsupported,
    };
    // S3's and Azure's codes.
    if matches!(
        d.code.as_deref(),
        Some("NoSuchBucket" | "ContainerNotFound")
    ) {
        return (
            Permanent,
            format!("{word} {bucket:?} does not exist at {endpoint}"),
        );
    }
    let denied = matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || matches!(d.status, Some(401 | 403));
    if denied {
        return (
            Permanent,
            format!(
                "access denied to {word} {bucket:?} by {endpoint} ({}): check the credentials and the {word}'s permissions",
                d.reply()
            ),
        );
    }
    match e {
        object_store::Error::Precondition { .. } => {
            return (
                Precondition,
                "object changed or vanished since it was read".into(),
            );
        }
        object_store::Error::NotFound { .. } => return (NotFound, "no such object".into()),
        object_store::Error::AlreadyExists { .. } => {
            return (AlreadyExists, "object exists".into());
        }
        object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. } => {
            return (Unsupported, one_line(&e.to_string()));
        }
        object_store::Error::InvalidPath { .. }
        | object_store::Error::UnknownConfigurationKey { .. } => {
            return (Permanent, one_line(&e.to_string()));
        }
        _ => {}
    }
    if let Some(kind) = d.transport
        && d.status.is_none()
    {
        return (
            Transient,
            format!("cannot reach {endpoint} ({kind:?}): {}", d.cause),
        );
    }
    if d.status == Some(501) || d.code.as_deref() == Some("NotImplemented") {
        return (
            Unsupported,
            format!("{endpoint} does not implement the request ({})", d.reply()),
        );
    }
    match d.status {
        Some(s) if s >= 500 || s == 429 || s == 408 => (
            Transient,
            format!("{endpoint} failed the request ({})", d.reply()),
        ),
        Some(301 | 307) => (
            Permanent,
            format!(
                "{word} {bucket:?} is in another region than the one configured ({}); set region",
                d.reply()
            ),
        ),
        Some(s) if (300..500).contains(&s) => (
            Permanent,
            format!(
                "{endpoint} refused the request for {word} {bucket:?} ({})",
                d.reply()
            ),
        ),
        // A response the client could not make sense of (say, a listing cut short): worth
        // another try.
        _ => (Transient, format!("{endpoint}: {}", d.cause)),
    }
}

/// Formats Unix ms as Go's `time.RFC3339Nano` in UTC, as Litestream writes the metadata:
/// `2006-01-02T15:04:05.999999999Z07:00` with trailing zeros of the fraction dropped.
pub fn format_timestamp(ms: i64) -> String {
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).unwrap_or_default();
    let frac_ms = ms.rem_euclid(1000);
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    if frac_ms != 0 {
        let frac = format!("{frac_ms:03}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Parses an RFC 3339 timestamp (any fraction, any offset) to Unix ms.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.timestamp_millis())
}

#[async_trait]
impl ObjectStore for CloudStore {
    fn describe(&self) -> String {
        if self.endpoint.ends_with(self.service.home_suffix) {
            self.location("")
        } else {
            format!("{} (endpoint {})", self.location(""), self.endpoint)
        }
    }

    async fn put(&self, key: &str, data: Vec<u8>, opts: PutOptions) -> Result<(), StoreError> {
        let path = self.object_path("put", key)?;
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(self.service.timestamp_key.into()),
            format_timestamp(opts.timestamp_ms).into(),
        );
        let mode = match opts.mode {
            PutMode::Overwrite => object_store::PutMode::Overwrite,
            PutMode::Create => object_store::PutMode::Create,
        };
        let size = data.len() as u64;
        let put_opts = object_store::PutOptions {
            mode,
            attributes,
            ..object_store::PutOptions::default()
        };
        // Create needs one conditional PUT; the lease and other small objects use it.
        let result = if size > self.multipart_threshold_bytes && opts.mode == PutMode::Overwrite {
            let data = bytes::Bytes::from(data);
            let part = |offset: u64, len: usize| {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                Ok(data.slice(start..start + len))
            };
            let m = Multipart {
                size,
                in_flight: MULTIPART_PARTS_IN_FLIGHT_MAX,
                part_bytes: self.part_bytes(size, usize::MAX),
                create: false,
            };
            self.put_multipart(key, &path, m, part, put_opts.attributes)
                .await
        } else {
            self.client("put", key)
                .await?
                .put_opts(&path, PutPayload::from(data), put_opts)
                .await
                .map_err(|e| self.error("put", key, &e))
        };
        self.finish_put(key, size, opts.timestamp_ms, result)
    }

    /// Up to [`SPOOLED_SINGLE_PUT_BYTES_MAX`] one PUT (read into memory; conditional for
    /// `Create`), above it a multipart upload read from the file a part at a time, at most
    /// [`SPOOLED_PARTS_IN_FLIGHT_MAX`] parts in memory. A `Create` above it checks the key
    /// before and again before completing: object_store offers no conditional multipart
    /// completion, so two racing creators of one large file could both succeed (the lease
    /// fences writers; see lease.rs).
    async fn put_spooled(
        &self,
        key: &str,
        body: &dyn crate::scratch::ScratchFile,
        opts: PutOptions,
    ) -> Result<(), StoreError> {
        let path = self.object_path("put", key)?;
        let io = |e: std::io::Error| StoreError::from_io("put", self.location(key), &e);
        let size = body.size().map_err(io)?;
        if size <= SPOOLED_SINGLE_PUT_BYTES_MAX {
            let bytes = crate::scratch::read_all(body).map_err(io)?;
            return self.put(key, bytes, opts).await;
        }
        let create = opts.mode == PutMode::Create;
        if create {
            self.refuse_existing(key, &path).await?;
        }
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(self.service.timestamp_key.into()),
            format_timestamp(opts.timestamp_ms).into(),
        );
        let part = |offset: u64, len: usize| {
            crate::store::read_part(body, offset, len, size).map(bytes::Bytes::from)
        };
        let m = Multipart {
            size,
            in_flight: SPOOLED_PARTS_IN_FLIGHT_MAX,
            part_bytes: self.part_bytes(size, SPOOLED_PART_BYTES_MAX),
            create,
        };
        let result = self.put_multipart(key, &path, m, part, attributes).await;
        self.finish_put(key, size, opts.timestamp_ms, result)
    }

    /// A server-side copy (S3 CopyObject, Azure Copy Blob, GCS rewrite), which keeps the
    /// object's metadata and so its timestamp. `Create` is conditional where the service
    /// offers it (Azure, GCS); S3's copies have no condition (`Unsupported`). S3 copies at most
    /// 5 GB in one request, and a larger source fails (`Permanent`): callers then write the
    /// bytes themselves.
    async fn copy(&self, from: &str, to: &str, mode: PutMode) -> Result<(), StoreError> {
        let src = self.object_path("copy", from)?;
        let dst = self.object_path("copy", to)?;
        self.cache_forget(to);
        let options = object_store::CopyOptions {
            mode: match mode {
                PutMode::Overwrite => object_store::CopyMode::Overwrite,
                PutMode::Create => object_store::CopyMode::Create,
            },
            ..object_store::CopyOptions::default()
        };
        self.client("copy", to)
            .await?
            .copy_opts(&src, &dst, options)
            .await
            .map_err(|e| self.error("copy", to, &e))
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.object_path("get", key)?;
        if len == 0 {
            // Nothing to read, but a missing object is still an error.
            self.head_object("get", key, &path).await?;
            return Ok(Vec::new());
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(offset..offset.saturating_add(len))),
            ..GetOptions::default()
        };
        let result = match self.client("get", key).await?.get_opts(&path, opts).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        match result {
            // Without a copy where the body is one buffer (a large GET is).
            Ok(bytes) => Ok(Vec::from(bytes)),
            Err(e) => {
                let err = self.error("get", key, &e);
                if err.kind == StoreErrorKind::NotFound {
                    return Err(err);
                }
                // S3 refuses a range that starts at or past the end (416); the seam answers
                // with no bytes, as a file read does.
                match self.head_object("get", key, &path).await {
                    Ok((meta, _)) if offset >= meta.size => Ok(Vec::new()),
                    _ => Err(err),
                }
            }
        }
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let path = self.object_path("head", key)?;
        let (meta, version) = self.head_object("head", key, &path).await?;
        self.cache_put(key, version, meta.timestamp_ms);
        Ok(meta)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.list_objects(prefix, true).await
    }

    /// One LIST per 1,000 keys and nothing else: LastModified stands in for timestamps not
    /// cached.
    async fn list_untimed(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.list_objects(prefix, false).await
    }

    fn supports_conditional_writes(&self) -> bool {
        // If-Match on PutObject: atomic on AWS, MinIO and moto; servers that ignore it (garage)
        // or check then write (s3s-fs) make the lease advisory only.
        true
    }

    async fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        let path = self.object_path("get", key)?;
        let client = self.client("get", key).await?;
        let result = client
            .get_opts(&path, GetOptions::default())
            .await
            .map_err(|e| self.error("get", key, &e))?;
        let version = if self.service.cas_by_generation {
            result.meta.version.clone()
        } else {
            result.meta.e_tag.clone()
        };
        let version = version.ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Permanent,
                "get",
                self.location(key),
                format!("{} returned no ETag", self.endpoint),
            )
        })?;
        let bytes = result
            .bytes()
            .await
            .map_err(|e| self.error("get", key, &e))?;
        Ok((bytes.to_vec(), version))
    }

    async fn put_if_version(
        &self,
        key: &str,
        data: Vec<u8>,
        timestamp_ms: i64,
        version: &str,
    ) -> Result<String, StoreError> {
        let path = self.object_path("put", key)?;
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(self.service.timestamp_key.into()),
            format_timestamp(timestamp_ms).into(),
        );
        let put_opts = object_store::PutOptions {
            mode: object_store::PutMode::Update(if self.service.cas_by_generation {
                object_store::UpdateVersion {
                    e_tag: None,
                    version: Some(version.to_string()),
                }
            } else {
                object_store::UpdateVersion {
                    e_tag: Some(version.to_string()),
                    version: None,
                }
            }),
            attributes,
            ..object_store::PutOptions::default()
        };
        self.cache_forget(key);
        let client = self.client("put", key).await?;
        let res = client
            .put_opts(&path, PutPayload::from(data), put_opts)
            .await
            .map_err(|e| self.error("put", key, &e))?;
        let new = if self.service.cas_by_generation {
            res.version
        } else {
            res.e_tag
        };
        new.ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Permanent,
                "put",
                self.location(key),
                format!("{} returned no object version", self.endpoint),
            )
        })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.object_path("delete", key)?;
        self.cache_forget(key);
        match self.client("delete", key).await?.delete(&path).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = self.error("delete", key, &e);
                if err.kind == StoreErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_completed_object_is_awaited_while_the_server_assembles_it() {
        let poll = Duration::from_secs(1);
        // Appears at the fourth look: found within a wait of ten polls.
        let mut looks = 0;
        let found = appears_within(Duration::from_secs(10), poll, || {
            looks += 1;
            let now = looks;
            async move { now >= 4 }
        })
        .await;
        assert!(found);
        assert_eq!(looks, 4);
        // Never appears: given up once the wait is over, not before.
        let started = tokio::time::Instant::now();
        let mut looks = 0;
        let found = appears_within(Duration::from_secs(10), poll, || {
            looks += 1;
            async { false }
        })
        .await;
        assert!(!found);
        assert_eq!(looks, 11, "at once, then every second for ten seconds");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // The wait grows with what the server has to assemble.
        assert_eq!(completion_wait(0), Duration::from_millis(READ_TIMEOUT_MS));
        assert_eq!(
            completion_wait(10 << 30),
            Duration::from_millis(READ_TIMEOUT_MS) + Duration::from_secs(204)
        );
    }

    /// A multipart client over `store` that records what it is asked, and fails the part
    /// `fail_part` if set.
    struct Recorder {
        store: object_store::memory::InMemory,
        name: &'static str,
        calls: Arc<Mutex<Vec<String>>>,
        fail_part: Option<usize>,
    }

    impl Recorder {
        fn note(&self, call: String) {
            self.calls
                .lock()
                .expect("recorder lock")
                .push(format!("{}:{call}", self.name));
        }
    }

    #[async_trait]
    impl MultipartStore for Recorder {
        async fn create_multipart(
            &self,
            path: &OsPath,
        ) -> object_store::Result<object_store::MultipartId> {
            self.note("create".into());
            self.store.create_multipart(path).await
        }

        async fn create_multipart_opts(
            &self,
            path: &OsPath,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<object_store::MultipartId> {
            self.note("create".into());
            self.store.create_multipart_opts(path, opts).await
        }

        async fn put_part(
            &self,
            path: &OsPath,
            id: &object_store::MultipartId,
            part_idx: usize,
            data: PutPayload,
        ) -> object_store::Result<PartId> {
            self.note(format!("part {part_idx}"));
            if self.fail_part == Some(part_idx) {
                return Err(object_store::Error::Generic {
                    store: "recorder",
                    source: "connection reset".into(),
                });
            }
            self.store.put_part(path, id, part_idx, data).await
        }

        async fn complete_multipart(
            &self,
            path: &OsPath,
            id: &object_store::MultipartId,
            parts: Vec<PartId>,
        ) -> object_store::Result<object_store::PutResult> {
            self.note(format!("complete {}", parts.len()));
            self.store.complete_multipart(path, id, parts).await
        }

        async fn abort_multipart(
            &self,
            path: &OsPath,
            id: &object_store::MultipartId,
        ) -> object_store::Result<()> {
            self.note("abort".into());
            self.store.abort_multipart(path, id).await
        }
    }

    /// A store on an in-memory server whose multipart uploads go through recorders (parts
    /// failing at `fail_part`), and what they recorded.
    fn recorded_store(fail_part: Option<usize>) -> (CloudStore, Arc<Mutex<Vec<String>>>) {
        let server = object_store::memory::InMemory::new();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recorder = |name| {
            Arc::new(Recorder {
                store: server.clone(),
                name,
                calls: calls.clone(),
                fail_part,
            })
        };
        let clients = Clients {
            store: Arc::new(server.clone()),
            multipart: Some(Multiparts {
                parts: recorder("parts"),
                complete: recorder("complete"),
            }),
        };
        let store = CloudStore::new(
            crate::s3::SERVICE,
            "bkt".into(),
            "app.db".into(),
            "memory".into(),
            Client::Ready(clients),
        )
        .with_multipart(6 << 20, 5 << 20);
        (store, calls)
    }

    #[tokio::test]
    async fn a_multipart_upload_is_completed_by_the_completion_client() {
        use crate::store::ObjectStore as _;
        let (store, calls) = recorded_store(None);
        let data: Vec<u8> = (0..12u32 << 20).map(|i| (i % 251) as u8).collect();
        let opts = PutOptions {
            mode: PutMode::Overwrite,
            timestamp_ms: 1_700_000_000_000,
        };
        store.put("big", data.clone(), opts).await.expect("upload");
        let mut calls = calls.lock().expect("recorder lock").clone();
        // Parts go out concurrently: their order among themselves is the scheduler's.
        calls[1..4].sort();
        assert_eq!(
            calls,
            [
                "parts:create",
                "parts:part 0",
                "parts:part 1",
                "parts:part 2",
                "complete:complete 3"
            ]
        );
        let back = store
            .get_range("big", 0, data.len() as u64)
            .await
            .expect("read back");
        assert!(back == data, "the object is the bytes sent, in order");
    }

    #[tokio::test]
    async fn a_failed_part_aborts_the_upload_and_leaves_nothing() {
        use crate::store::ObjectStore as _;
        let (store, calls) = recorded_store(Some(1));
        let data = vec![7u8; 12 << 20];
        let opts = PutOptions {
            mode: PutMode::Overwrite,
            timestamp_ms: 0,
        };
        let err = store
            .put("big", data, opts)
            .await
            .expect_err("a part fails");
        assert!(err.to_string().contains("connection reset"), "{err}");
        let calls = calls.lock().expect("recorder lock").clone();
        assert_eq!(
            calls.last().map(String::as_str),
            Some("parts:abort"),
            "{calls:?}"
        );
        assert!(
            !calls.iter().any(|c| c.starts_with("complete:")),
            "{calls:?}"
        );
        assert_eq!(
            store.head("big").await.expect_err("nothing left").kind,
            StoreErrorKind::NotFound
        );
    }

    #[test]
    fn completions_wait_for_an_answer_as_long_as_a_request_may_take() {
        let read_timeout = |o: &ClientOptions| o.get_config_value(&ClientConfigKey::ReadTimeout);
        let options = client_options(false, true);
        assert_eq!(read_timeout(&options), Some(format!("{READ_TIMEOUT_MS}ms")));
        let completion = completion_options(options.clone());
        assert_eq!(
            read_timeout(&completion),
            Some(format!("{REQUEST_TIMEOUT_MS}ms"))
        );
        // Nothing else changes: the same connect timeout and plain-HTTP permission.
        for key in [
            ClientConfigKey::ConnectTimeout,
            ClientConfigKey::AllowHttp,
            ClientConfigKey::Timeout,
        ] {
            assert_eq!(
                options.get_config_value(&key),
                completion.get_config_value(&key),
                "{key:?}"
            );
        }
    }

    #[test]
    fn timestamps_are_written_as_go_rfc3339_nano() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_timestamp(1_700_000_000_120),
            "2023-11-14T22:13:20.12Z"
        );
        assert_eq!(
            format_timestamp(1_700_000_000_001),
            "2023-11-14T22:13:20.001Z"
        );
        assert_eq!(format_timestamp(1_700_000_000_000), "2023-11-14T22:13:20Z");
        for ms in [0, 1, 999, 1_700_000_000_120, 1_764_000_000_456] {
            assert_eq!(parse_timestamp(&format_timestamp(ms)), Some(ms));
        }
        // Litestream (Go) writes nanoseconds when it has them; we keep milliseconds.
        assert_eq!(
            parse_timestamp("2023-11-14T22:13:20.123456789Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn messages_are_one_line_and_bounded() {
        assert_eq!(one_line("a\n  b\tc"), "a b c");
        assert!(one_line(&"x ".repeat(1000)).chars().count() <= 301);
        assert_eq!(
            xml_tag("<Error><Code>NoSuchBucket</Code></Error>", "Code").as_deref(),
            Some("NoSuchBucket")
        );
    }
}
