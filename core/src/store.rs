//! The object-store seam: the only way the engine and restore reach a replica.
//!
//! Keys are `/`-separated and relative to the replica's root. Every implementation (a local
//! directory here, S3 and the simulator's in-memory store elsewhere) keeps the same contract,
//! checked by one conformance suite (`tests/store_conformance.rs`):
//!
//! - `put` is atomic: a reader sees the whole old object, the whole new one, or nothing; never a
//!   prefix. Once `put` returns `Ok` the object is durable (for a directory: file and directory
//!   fsynced). If `put` fails or the process dies during it, the object is either absent or
//!   whole; a leftover temporary object is never listed.
//! - `put` with [`PutMode::Create`] fails with [`StoreErrorKind::AlreadyExists`] if the key
//!   exists, atomically with respect to other `Create` puts on the same store.
//! - `list` returns every object under a prefix in lexicographic key order, each with the
//!   timestamp given at `put`, rounded down to the store's `timestamp_resolution_ms`.
//! - `get_range` returns exactly the requested bytes, or fewer only at the end of the object.
//! - `delete` of a missing key succeeds (deletes are idempotent).
//! - Where `supports_conditional_writes`, `put_if_version` is a compare-and-swap on one object,
//!   atomic against other writers.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;

use crate::scratch::{ScratchFile, SpoolBody};

/// What kind of failure, so callers can decide whether to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    NotFound,
    AlreadyExists,
    /// Worth retrying: timeouts, 5xx, throttling, resets.
    Transient,
    /// Not worth retrying: permissions, missing bucket, bad configuration.
    Permanent,
    /// The store does not implement the request: a conditional write it cannot honour (HTTP
    /// 501, S3's `NotImplemented`). A conditional upload falls back to a plain one, with a
    /// warning; nothing else does (a full disk or a refused write must not turn fencing off).
    Unsupported,
    /// A conditional write found the object changed (or gone) since it was read.
    Precondition,
    /// The write was refused because this replicator lost the replica's lease: another
    /// replicator owns it now. Never retried.
    Fenced,
}

#[derive(Debug, thiserror::Error)]
#[error("{op} {location}: {message}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub op: &'static str,
    /// The store and key involved, e.g. `file:///backups/app.db/ltx/0/...`.
    pub location: String,
    pub message: String,
}

impl StoreError {
    pub fn new(
        kind: StoreErrorKind,
        op: &'static str,
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            op,
            location: location.into(),
            message: message.into(),
        }
    }

    pub fn from_io(op: &'static str, location: impl Into<String>, e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let kind = match e.kind() {
            K::NotFound => StoreErrorKind::NotFound,
            K::AlreadyExists => StoreErrorKind::AlreadyExists,
            // A full disk is an outage: freeing space heals it (found by sluice-sim chaos, which
            // fills a directory replica's filesystem: the upload's ENOSPC turned conditional
            // writes off for good).
            K::Interrupted | K::TimedOut | K::WouldBlock | K::StorageFull | K::QuotaExceeded => {
                StoreErrorKind::Transient
            }
            K::Unsupported => StoreErrorKind::Unsupported,
            _ => StoreErrorKind::Permanent,
        };
        Self::new(kind, op, location, e.to_string())
    }
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// The timestamp given at `put` (for LTX files, the file's creation time), in Unix ms.
    pub timestamp_ms: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PutMode {
    #[default]
    Overwrite,
    /// Only if the key does not exist yet.
    Create,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PutOptions {
    pub mode: PutMode,
    /// Stored as the object's timestamp (file mtime, S3 `litestream-timestamp` metadata).
    pub timestamp_ms: i64,
}

#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// A description for messages, e.g. `file:///backups/app.db`. Never contains secrets.
    fn describe(&self) -> String;

    async fn put(&self, key: &str, data: Vec<u8>, opts: PutOptions) -> Result<(), StoreError>;

    /// `put` of a body spooled to a local file (`scratch::Spool`), with the same contract, read
    /// a part at a time so that no backend holds all of it in memory. A failure (of the store,
    /// or of reading `body`) leaves no object; on S3 the multipart upload is aborted (a
    /// process killed midway leaves its parts unlisted until the bucket's lifecycle rule for
    /// incomplete uploads removes them). The default reads the body whole and calls `put`
    /// (stores that hold everything in memory anyway).
    async fn put_spooled(
        &self,
        key: &str,
        body: &dyn ScratchFile,
        opts: PutOptions,
    ) -> Result<(), StoreError> {
        let bytes = crate::scratch::read_all(body)
            .map_err(|e| StoreError::from_io("put", format!("{}/{key}", self.describe()), &e))?;
        self.put(key, bytes, opts).await
    }

    /// Reads `len` bytes from `offset` (fewer at the end of the object).
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError>;

    /// Copies the object at `from` to `to`, its bytes and its timestamp, with `put`'s contract
    /// for `to` (atomic and durable; `Create` refuses an existing key), without the bytes
    /// passing through this process: a hard link in a directory, a server-side copy on S3,
    /// Azure and GCS. A missing `from` is [`StoreErrorKind::NotFound`]. Where the store cannot
    /// copy by itself (the default, SFTP) it fails with [`StoreErrorKind::Unsupported`], and
    /// the caller moves the bytes itself.
    async fn copy(&self, _from: &str, to: &str, _mode: PutMode) -> Result<(), StoreError> {
        Err(StoreError::new(
            StoreErrorKind::Unsupported,
            "copy",
            format!("{}/{to}", self.describe()),
            "this store has no server-side copy",
        ))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError>;

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;

    /// `list` for callers that do not read `timestamp_ms` (a restore to the latest state or to
    /// a TXID: the plan never looks at it, as one level holds one file per TXID range): the
    /// same keys and sizes, but `timestamp_ms` may be the store's own modification time
    /// instead of the stored timestamp, so a store that keeps the timestamp in per-object
    /// metadata (S3) needs no request per object. The default is `list`.
    async fn list_untimed(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// How finely the store keeps `PutOptions::timestamp_ms`, in ms: a listed timestamp is the
    /// given one rounded down to a multiple of this. 1 for every store but SFTP, whose version
    /// 3 carries modification times in whole seconds (1,000).
    fn timestamp_resolution_ms(&self) -> i64 {
        1
    }

    /// Whether [`ObjectStore::get_versioned`] and [`ObjectStore::put_if_version`] work: a
    /// compare-and-swap on one object, atomic against other writers of the same store. Writer
    /// fencing (`lease.rs`) needs it.
    fn supports_conditional_writes(&self) -> bool {
        false
    }

    /// Reads a whole object and its version: an opaque tag that changes on every write.
    async fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        Err(unsupported(self, "get", key))
    }

    /// Replaces an object only if its current version is `version`; returns the new version.
    /// Fails with [`StoreErrorKind::Precondition`] if the object changed or is gone. Not
    /// retried on an ambiguous failure: the caller reads the version again to find out.
    async fn put_if_version(
        &self,
        key: &str,
        _data: Vec<u8>,
        _timestamp_ms: i64,
        _version: &str,
    ) -> Result<String, StoreError> {
        Err(unsupported(self, "put", key))
    }

    /// A local file holding the object, when the store is a directory, so readers can skip a
    /// download. `None` for remote stores.
    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }
}

pub type DynStore = Arc<dyn ObjectStore>;

/// Uploads a finished body: in memory through `put`, spooled through `put_spooled`.
pub async fn put_body(
    store: &dyn ObjectStore,
    key: &str,
    body: SpoolBody,
    opts: PutOptions,
) -> Result<(), StoreError> {
    match body {
        SpoolBody::Memory(bytes) => store.put(key, bytes, opts).await,
        SpoolBody::File(file) => store.put_spooled(key, file.as_ref(), opts).await,
    }
}

/// The bytes of a spooled body, in parts of at most `part_bytes` (the last one shorter).
pub(crate) fn read_part(
    body: &dyn ScratchFile,
    offset: u64,
    part_bytes: usize,
    size: u64,
) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(size.saturating_sub(offset))
        .unwrap_or(usize::MAX)
        .min(part_bytes);
    let mut buf = vec![0u8; len];
    crate::scratch::read_exact_at(body, &mut buf, offset)?;
    Ok(buf)
}

fn unsupported<S: ObjectStore + ?Sized>(store: &S, op: &'static str, key: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Permanent,
        op,
        format!("{}/{key}", store.describe()),
        "conditional writes are not supported by this store",
    )
}

/// Rejects keys that could escape the store's root or name temporaries.
pub(crate) fn check_key(op: &'static str, store: &str, key: &str) -> Result<(), StoreError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        || key.ends_with(TMP_SUFFIX)
        || key.ends_with(LOCK_SUFFIX);
    if bad {
        return Err(StoreError::new(
            StoreErrorKind::Permanent,
            op,
            format!("{store}/{key}"),
            "invalid key",
        ));
    }
    Ok(())
}

const TMP_SUFFIX: &str = ".tmp";
/// The lock file beside a directory store's object that `put_if_version` swaps under.
const LOCK_SUFFIX: &str = ".lock";

/// A replica in a local directory: keys are relative paths, objects are files.
#[derive(Clone, Debug)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        key.split('/')
            .fold(self.root.clone(), |p, part| p.join(part))
    }

    fn location(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn mtime_ms(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn put_file(final_path: &Path, data: &[u8], opts: PutOptions) -> std::io::Result<()> {
    put_file_with(final_path, opts, |f| f.write_all(data))
}

/// The bytes of a spooled body copied into `f`, a part at a time, yielding every
/// [`COPY_PARTS_PER_YIELD`] parts: a copy of many GiB runs in the caller's task, beside the
/// lease kept during it.
async fn copy_spooled(body: &dyn ScratchFile, f: &mut std::fs::File) -> std::io::Result<()> {
    let size = body.size()?;
    let mut offset = 0;
    for n in 1u32.. {
        if offset >= size {
            break;
        }
        let part = read_part(body, offset, COPY_PART_BYTES, size)?;
        f.write_all(&part)?;
        offset += part.len() as u64;
        if n.is_multiple_of(COPY_PARTS_PER_YIELD) {
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

/// How much of a spooled body a directory store copies at a time.
const COPY_PART_BYTES: usize = 1 << 20;
/// Parts copied between two yields (8 MiB).
const COPY_PARTS_PER_YIELD: u32 = 8;

/// Writes a temporary file with `write` (`tempfile`, in the object's directory, named
/// `<name>.<random>.tmp` so listings skip it), fsyncs it, and moves it into place: a rename for
/// `Overwrite`, a rename that refuses an existing target for `Create` (`persist_noclobber`:
/// `renameat2(RENAME_NOREPLACE)`, or link then unlink), then fsyncs the directory. A failure,
/// or a panic, removes the temporary.
fn put_file_with(
    final_path: &Path,
    opts: PutOptions,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut tmp = begin_put(final_path)?;
    write(tmp.as_file_mut())?;
    finish_put(tmp, final_path, opts)
}

/// The temporary a put of `final_path` writes (see [`put_file_with`]).
fn begin_put(final_path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = final_path
        .parent()
        .ok_or_else(|| std::io::Error::other("key has no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let mut prefix = final_path.file_name().unwrap_or_default().to_os_string();
    prefix.push(".");
    tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(TMP_SUFFIX)
        .tempfile_in(dir)
}

/// The written temporary stamped, fsynced and moved into place (see [`put_file_with`]).
fn finish_put(
    tmp: tempfile::NamedTempFile,
    final_path: &Path,
    opts: PutOptions,
) -> std::io::Result<()> {
    let when =
        UNIX_EPOCH + Duration::from_millis(u64::try_from(opts.timestamp_ms.max(0)).unwrap_or(0));
    tmp.as_file().set_modified(when)?;
    tmp.as_file().sync_all()?;
    match opts.mode {
        PutMode::Overwrite => tmp.persist(final_path).map_err(|e| e.error)?,
        PutMode::Create => tmp.persist_noclobber(final_path).map_err(|e| e.error)?,
    };
    let dir = final_path
        .parent()
        .ok_or_else(|| std::io::Error::other("key has no parent directory"))?;
    fsync_dir(dir)
}

/// `src` given a second name, `dst` (objects are never written in place, so a hard link is a
/// copy that moves no bytes), then the directory fsynced: through a temporary like every put,
/// renamed over `dst` for `Overwrite` or refusing an existing `dst` for `Create`. Where the
/// filesystem has no hard links the bytes are copied instead, with the source's mtime.
fn link_file(src: &Path, dst: &Path, mode: PutMode) -> std::io::Result<()> {
    let dir = dst
        .parent()
        .ok_or_else(|| std::io::Error::other("key has no parent directory"))?;
    let source = std::fs::metadata(src)?;
    std::fs::create_dir_all(dir)?;
    let mut prefix = dst.file_name().unwrap_or_default().to_os_string();
    prefix.push(".");
    let linked = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(TMP_SUFFIX)
        .make_in(dir, |tmp| std::fs::hard_link(src, tmp));
    let tmp = match linked {
        Ok(tmp) => tmp,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {
            let mut from = std::fs::File::open(src)?;
            let opts = PutOptions {
                mode,
                timestamp_ms: mtime_ms(&source),
            };
            return put_file_with(dst, opts, |f| std::io::copy(&mut from, f).map(drop));
        }
    };
    match mode {
        PutMode::Overwrite => tmp.persist(dst).map_err(|e| e.error)?,
        PutMode::Create => tmp.persist_noclobber(dst).map_err(|e| e.error)?,
    };
    fsync_dir(dir)
}

fn list_dir(
    root: &Path,
    dir: &Path,
    prefix: &str,
    out: &mut Vec<ObjectMeta>,
) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let ft = entry.file_type()?;
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let key = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if ft.is_dir() {
            if prefix.starts_with(&key) || key.starts_with(prefix) {
                list_dir(root, &path, prefix, out)?;
            }
        } else if ft.is_file()
            && key.starts_with(prefix)
            && !key.ends_with(TMP_SUFFIX)
            && !key.ends_with(LOCK_SUFFIX)
        {
            let meta = entry.metadata()?;
            out.push(ObjectMeta {
                key,
                size: meta.len(),
                timestamp_ms: mtime_ms(&meta),
            });
        }
    }
    Ok(())
}

/// A directory object's bytes and version. The version names the inode and its change time:
/// every `put` writes a new file and renames it into place, so every write changes it, even
/// one of the same bytes.
fn read_versioned(path: &Path) -> std::io::Result<(Vec<u8>, String)> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    f.read_to_end(&mut bytes)?;
    let version = format!(
        "{:x}-{:x}-{}.{:09}-{}",
        meta.dev(),
        meta.ino(),
        meta.ctime(),
        meta.ctime_nsec(),
        meta.len()
    );
    Ok((bytes, version))
}

/// The compare-and-swap of a directory object: under an exclusive lock on its lock file
/// (`flock(2)`, held by every swapper of this key, across processes on this host and, on NFS,
/// across hosts through the server's locks), read the version, compare, write and rename.
/// `Ok(None)`: the object changed or is gone.
fn swap_file(
    path: &Path,
    data: &[u8],
    timestamp_ms: i64,
    version: &str,
) -> std::io::Result<Option<String>> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("key has no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let mut lock_name = path.file_name().unwrap_or_default().to_os_string();
    lock_name.push(LOCK_SUFFIX);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(lock_name))?;
    lock.lock()?;
    let current = match read_versioned(path) {
        Ok((_, v)) => Some(v),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if current.as_deref() != Some(version) {
        return Ok(None);
    }
    let opts = PutOptions {
        mode: PutMode::Overwrite,
        timestamp_ms,
    };
    put_file(path, data, opts)?;
    let (_, new) = read_versioned(path)?;
    // The lock is released when `lock` closes.
    Ok(Some(new))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::new(StoreErrorKind::Permanent, "task", "", e.to_string()))?
}

#[async_trait]
impl ObjectStore for DirStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put(&self, key: &str, data: Vec<u8>, opts: PutOptions) -> Result<(), StoreError> {
        check_key("put", &self.describe(), key)?;
        let (path, loc) = (self.path(key), self.location(key));
        blocking(move || {
            put_file(&path, &data, opts).map_err(|e| StoreError::from_io("put", loc, &e))
        })
        .await
    }

    async fn put_spooled(
        &self,
        key: &str,
        body: &dyn ScratchFile,
        opts: PutOptions,
    ) -> Result<(), StoreError> {
        check_key("put", &self.describe(), key)?;
        let (path, loc) = (self.path(key), self.location(key));
        let io = |e: std::io::Error| StoreError::from_io("put", loc.clone(), &e);
        // In this task (`body` is borrowed; a copy is local disk to local disk), a part at a
        // time with yields; the fsync, which may write back GiB, on the blocking pool.
        let mut tmp = begin_put(&path).map_err(io)?;
        copy_spooled(body, tmp.as_file_mut()).await.map_err(io)?;
        let finish_loc = loc.clone();
        blocking(move || {
            finish_put(tmp, &path, opts).map_err(|e| StoreError::from_io("put", finish_loc, &e))
        })
        .await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        check_key("get", &self.describe(), key)?;
        let (path, loc) = (self.path(key), self.location(key));
        blocking(move || {
            use std::os::unix::fs::FileExt;
            let io = |e: std::io::Error| StoreError::from_io("get", loc.clone(), &e);
            let f = std::fs::File::open(&path).map_err(io)?;
            let size = f.metadata().map_err(io)?.len();
            let end = offset.saturating_add(len).min(size);
            let mut buf = vec![0u8; usize::try_from(end.saturating_sub(offset)).unwrap_or(0)];
            f.read_exact_at(&mut buf, offset).map_err(io)?;
            Ok(buf)
        })
        .await
    }

    async fn copy(&self, from: &str, to: &str, mode: PutMode) -> Result<(), StoreError> {
        check_key("copy", &self.describe(), from)?;
        check_key("copy", &self.describe(), to)?;
        let (src, dst, loc) = (self.path(from), self.path(to), self.location(to));
        blocking(move || {
            link_file(&src, &dst, mode).map_err(|e| StoreError::from_io("copy", loc, &e))
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        check_key("head", &self.describe(), key)?;
        let (path, loc, key) = (self.path(key), self.location(key), key.to_string());
        blocking(move || {
            let meta =
                std::fs::metadata(&path).map_err(|e| StoreError::from_io("head", loc, &e))?;
            Ok(ObjectMeta {
                key,
                size: meta.len(),
                timestamp_ms: mtime_ms(&meta),
            })
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let (root, prefix, loc) = (self.root.clone(), prefix.to_string(), self.describe());
        blocking(move || {
            let mut out = Vec::new();
            list_dir(&root, &root, &prefix, &mut out)
                .map_err(|e| StoreError::from_io("list", loc, &e))?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key("delete", &self.describe(), key)?;
        let (path, loc) = (self.path(key), self.location(key));
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::from_io("delete", loc, &e)),
        })
        .await
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        Some(self.path(key))
    }

    fn supports_conditional_writes(&self) -> bool {
        true
    }

    async fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        check_key("get", &self.describe(), key)?;
        let (path, loc) = (self.path(key), self.location(key));
        blocking(move || read_versioned(&path).map_err(|e| StoreError::from_io("get", loc, &e)))
            .await
    }

    async fn put_if_version(
        &self,
        key: &str,
        data: Vec<u8>,
        timestamp_ms: i64,
        version: &str,
    ) -> Result<String, StoreError> {
        check_key("put", &self.describe(), key)?;
        let (path, loc, version) = (self.path(key), self.location(key), version.to_string());
        blocking(
            move || match swap_file(&path, &data, timestamp_ms, &version) {
                Ok(Some(new)) => Ok(new),
                Ok(None) => Err(StoreError::new(
                    StoreErrorKind::Precondition,
                    "put",
                    loc,
                    "object changed or vanished since it was read",
                )),
                Err(e) => Err(StoreError::from_io("put", loc, &e)),
            },
        )
        .await
    }
}

/// An in-memory store: the simulator's backend and a reference for the conformance suite.
/// Key to (bytes, timestamp in Unix ms, version).
type MemObjects = std::collections::BTreeMap<String, (Vec<u8>, i64, u64)>;

/// Versions of MemStore objects: unique per write in this process.
fn next_mem_version() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static VERSION: AtomicU64 = AtomicU64::new(1);
    VERSION.fetch_add(1, Ordering::Relaxed)
}

#[derive(Debug, Default, Clone)]
pub struct MemStore {
    objects: Arc<Mutex<MemObjects>>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemObjects> {
        // A panic while holding the lock cannot leave a half-applied put: each operation is a
        // single map call, so the data is consistent even if the mutex is poisoned.
        self.objects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn mem_not_found(op: &'static str, key: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::NotFound,
        op,
        format!("mem://{key}"),
        "no such object",
    )
}

#[async_trait]
impl ObjectStore for MemStore {
    fn describe(&self) -> String {
        "mem://".to_string()
    }

    async fn put(&self, key: &str, data: Vec<u8>, opts: PutOptions) -> Result<(), StoreError> {
        check_key("put", "mem:/", key)?;
        let mut objects = self.lock();
        if opts.mode == PutMode::Create && objects.contains_key(key) {
            return Err(StoreError::new(
                StoreErrorKind::AlreadyExists,
                "put",
                format!("mem://{key}"),
                "object exists",
            ));
        }
        objects.insert(
            key.to_string(),
            (data, opts.timestamp_ms, next_mem_version()),
        );
        Ok(())
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let objects = self.lock();
        let (data, _, _) = objects.get(key).ok_or_else(|| mem_not_found("get", key))?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = usize::try_from(offset.saturating_add(len))
            .unwrap_or(usize::MAX)
            .min(data.len());
        Ok(data.get(start..end).unwrap_or_default().to_vec())
    }

    async fn copy(&self, from: &str, to: &str, mode: PutMode) -> Result<(), StoreError> {
        check_key("copy", "mem:/", to)?;
        let mut objects = self.lock();
        let (data, ts, _) = objects
            .get(from)
            .cloned()
            .ok_or_else(|| mem_not_found("copy", from))?;
        if mode == PutMode::Create && objects.contains_key(to) {
            return Err(StoreError::new(
                StoreErrorKind::AlreadyExists,
                "copy",
                format!("mem://{to}"),
                "object exists",
            ));
        }
        objects.insert(to.to_string(), (data, ts, next_mem_version()));
        Ok(())
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let objects = self.lock();
        let (data, ts, _) = objects.get(key).ok_or_else(|| mem_not_found("head", key))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: data.len() as u64,
            timestamp_ms: *ts,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let objects = self.lock();
        Ok(objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (d, ts, _))| ObjectMeta {
                key: k.clone(),
                size: d.len() as u64,
                timestamp_ms: *ts,
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.lock().remove(key);
        Ok(())
    }

    fn supports_conditional_writes(&self) -> bool {
        true
    }

    async fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        let objects = self.lock();
        let (data, _, version) = objects.get(key).ok_or_else(|| mem_not_found("get", key))?;
        Ok((data.clone(), version.to_string()))
    }

    async fn put_if_version(
        &self,
        key: &str,
        data: Vec<u8>,
        timestamp_ms: i64,
        version: &str,
    ) -> Result<String, StoreError> {
        check_key("put", "mem:/", key)?;
        let mut objects = self.lock();
        let current = objects.get(key).map(|(_, _, v)| v.to_string());
        if current.as_deref() != Some(version) {
            return Err(StoreError::new(
                StoreErrorKind::Precondition,
                "put",
                format!("mem://{key}"),
                "object changed or vanished since it was read",
            ));
        }
        let new = next_mem_version();
        objects.insert(key.to_string(), (data, timestamp_ms, new));
        Ok(new.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk is an outage, retried until space is freed; only a store that cannot honour
    /// a request is `Unsupported` (the one answer that turns conditional uploads off).
    #[test]
    fn io_errors_are_classified_by_what_heals_them() {
        use std::io::{Error, ErrorKind as K};
        let kind = |k: K| StoreError::from_io("put", "k", &Error::from(k)).kind;
        assert_eq!(kind(K::StorageFull), StoreErrorKind::Transient);
        assert_eq!(kind(K::QuotaExceeded), StoreErrorKind::Transient);
        assert_eq!(kind(K::TimedOut), StoreErrorKind::Transient);
        assert_eq!(kind(K::PermissionDenied), StoreErrorKind::Permanent);
        assert_eq!(kind(K::Unsupported), StoreErrorKind::Unsupported);
        assert_eq!(kind(K::NotFound), StoreErrorKind::NotFound);
    }
}
