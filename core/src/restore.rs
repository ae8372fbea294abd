//! Restore: turn a replica into a database file.
//!
//! Three steps, each its own function:
//! 1. [`plan`] (pure): the newest snapshot at or below the target, then the files across levels
//!    that extend a contiguous TXID range to the target, preferring the file that reaches
//!    furthest (Litestream's rule). A gap is an error naming the missing range.
//! 2. Fetch: files are downloaded in parallel (bounded by `parallelism`) into a scratch directory
//!    beside the output in ranged chunks, so memory stays bounded whatever the database size;
//!    files already on a local disk are read in place.
//! 3. [`apply_plan`]: pages are streamed into `<out>.tmp` in plan order (later files overwrite
//!    earlier pages; a file's commit size truncates or extends the database). Every file's CRC is
//!    verified, each checksummed file must continue the previous one's database checksum, and
//!    the final database checksum is recomputed from the output when the last file carries one.
//!    Only a fully verified, fsynced temporary is renamed into place.

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use futures::StreamExt;

use crate::checksum::{DbChecksum, checksum_file};
use crate::ltx::{Decoder, Header, LtxError};
use crate::replica::{FileInfo, Replica, SNAPSHOT_LEVEL, file_name};
use crate::scratch::{Scratch, ScratchFile, ScratchReader, read_exact_at};
use crate::store::StoreError;

/// Download chunk size: the most one in-flight download holds in memory.
pub const DOWNLOAD_CHUNK_BYTES: u64 = 8 << 20;
pub use crate::scratch::FETCH_IN_MEMORY_BYTES_MAX;
/// Default and maximum number of files fetched at once. A restore is ruled by round trips
/// when the replica holds many small level-0 files (the seed's 300 files at a 50 ms round trip
/// take 5 rounds at 64, 38 at 8); [`DOWNLOAD_BYTES_IN_FLIGHT_MAX`] keeps large files from
/// multiplying memory by the same factor.
pub const PARALLELISM_DEFAULT: usize = 64;
pub const PARALLELISM_MAX: usize = 256;
/// Download bytes a restore holds in memory at once across all its fetches: each fetch waits
/// for its first chunk's worth (a whole small file, or [`DOWNLOAD_CHUNK_BYTES`]) before it
/// starts, in plan order, so many small files are in flight but only a few large ones.
pub const DOWNLOAD_BYTES_IN_FLIGHT_MAX: u64 = 32 << 20;

/// What state to restore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// The newest state in the replica.
    #[default]
    Latest,
    /// The state right after this TXID.
    Txid(u64),
    /// The newest state whose files were all created strictly before this time (Unix ms).
    Before(i64),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    #[error("no backups found in replica {replica}")]
    ReplicaEmpty { replica: String },
    #[error(
        "no backup in replica {replica} reaches {target}; the restorable TXIDs are {oldest:016x}..={newest:016x}"
    )]
    TargetNotAvailable {
        replica: String,
        target: String,
        /// The oldest TXID a restore can start from (a snapshot's, or the end of a file that
        /// starts at TXID 1).
        oldest: u64,
        newest: u64,
    },
    #[error(
        "replica {replica} has a gap: TXIDs {from:016x}..={to:016x} are missing (next file: {next})"
    )]
    Gap {
        replica: String,
        from: u64,
        to: u64,
        next: String,
    },
    #[error("{file}: {error}")]
    Ltx { file: String, error: LtxError },
    #[error("{file}: {message}")]
    Chain { file: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |error| RestoreError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn describe_target(target: Target) -> String {
    match target {
        Target::Latest => "the latest state".into(),
        Target::Txid(t) => format!("TXID {t:016x}"),
        Target::Before(ms) => {
            let ts = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
                .map_or_else(|| ms.to_string(), |t| t.to_rfc3339());
            format!("timestamp {ts}")
        }
    }
}

fn eligible(f: &FileInfo, target: Target) -> bool {
    match target {
        Target::Latest => true,
        Target::Txid(t) => f.max_txid <= t,
        Target::Before(ms) => f.created_ms < ms,
    }
}

/// Litestream's tie-break among files that extend the range: reach furthest, then start
/// earliest, then the higher level, then the older file.
fn better(candidate: &FileInfo, than: &FileInfo) -> bool {
    (
        candidate.max_txid,
        std::cmp::Reverse(candidate.min_txid),
        candidate.level,
        std::cmp::Reverse(candidate.created_ms),
    ) > (
        than.max_txid,
        std::cmp::Reverse(than.min_txid),
        than.level,
        std::cmp::Reverse(than.created_ms),
    )
}

/// The incremental files (levels below the snapshots') that take a state at TXID `current`
/// furthest towards `target`, in order: each starts at or before the TXID after the last and
/// reaches past it (a compacted file overlapping what came before is applied whole: its pages
/// are the newest versions of what it covers). The restore plan's loop, and follow mode's.
pub fn extend(files: &[FileInfo], mut current: u64, target: Target) -> Vec<FileInfo> {
    let reached = |current: u64| matches!(target, Target::Txid(t) if current >= t);
    let incremental: Vec<&FileInfo> = files
        .iter()
        .filter(|f| f.level < SNAPSHOT_LEVEL && eligible(f, target))
        .collect();
    let mut chain = Vec::new();
    while !reached(current) {
        let next = incremental
            .iter()
            .filter(|f| {
                let reach = if crate::planted::active(crate::planted::Bug::RestorePlanOffByOne) {
                    2
                } else {
                    1
                };
                f.min_txid <= current + reach && f.max_txid > current
            })
            .fold(None::<&FileInfo>, |best, f| match best {
                Some(b) if !better(f, b) => Some(b),
                _ => Some(f),
            });
        let Some(next) = next else { break };
        current = next.max_txid;
        chain.push((*next).clone());
    }
    chain
}

/// Chooses the files to apply, in order. `files` is every LTX file of the replica, any order.
pub fn plan(
    replica: &str,
    files: &[FileInfo],
    target: Target,
) -> Result<Vec<FileInfo>, RestoreError> {
    if files.is_empty() {
        return Err(RestoreError::ReplicaEmpty {
            replica: replica.to_string(),
        });
    }
    let mut chosen: Vec<FileInfo> = Vec::new();
    let snapshot = files
        .iter()
        .filter(|f| f.level == SNAPSHOT_LEVEL && eligible(f, target))
        .fold(None::<&FileInfo>, |best, f| match best {
            Some(b) if !better(f, b) => Some(b),
            _ => Some(f),
        });
    let mut current = 0u64;
    if let Some(s) = snapshot {
        current = s.max_txid;
        chosen.push(s.clone());
    }
    let incremental: Vec<&FileInfo> = files
        .iter()
        .filter(|f| f.level < SNAPSHOT_LEVEL && eligible(f, target))
        .collect();
    let reached = |current: u64| matches!(target, Target::Txid(t) if current >= t);
    let chain = extend(files, current, target);
    current = chain.last().map_or(current, |f| f.max_txid);
    chosen.extend(chain);
    // A later eligible file that cannot be reached means history is missing, unless a file
    // the target excludes holds the TXIDs between (a level-1 file written after the moment,
    // whose level-0 files retention removed): then the state at `current` is the answer.
    let held_elsewhere = files
        .iter()
        .any(|f| f.min_txid <= current + 1 && f.max_txid > current);
    if let Some(after) = incremental
        .iter()
        .filter(|f| f.min_txid > current + 1)
        .min_by_key(|f| f.min_txid)
        && !reached(current)
        && !held_elsewhere
    {
        return Err(RestoreError::Gap {
            replica: replica.to_string(),
            from: current + 1,
            to: after.min_txid - 1,
            next: after.to_string(),
        });
    }
    let oldest = || {
        files
            .iter()
            .filter(|f| f.level == SNAPSHOT_LEVEL || f.min_txid == 1)
            .map(|f| f.max_txid)
            .min()
            .unwrap_or(0)
    };
    if chosen.is_empty() {
        return Err(RestoreError::TargetNotAvailable {
            replica: replica.to_string(),
            target: describe_target(target),
            oldest: oldest(),
            newest: files.iter().map(|f| f.max_txid).max().unwrap_or(0),
        });
    }
    if !reached(current) && matches!(target, Target::Txid(_)) {
        return Err(RestoreError::TargetNotAvailable {
            replica: replica.to_string(),
            target: describe_target(target),
            oldest: oldest(),
            newest: current,
        });
    }
    Ok(chosen)
}

/// Whether a file starting at `min_txid`, written against database checksum `pre`, continues
/// a state at TXID `prev_max_txid` with checksum `prev_post` (both sides checksummed). Only a
/// file that starts right after it and is not a snapshot is judged: the database it was written
/// against must be the one we have. A compacted file overlapping the state before it is applied
/// as it is (its pages are the newest versions of what it covers).
pub fn checksum_continues(prev_max_txid: u64, prev_post: u64, min_txid: u64, pre: u64) -> bool {
    min_txid == 1 || min_txid != prev_max_txid + 1 || pre == prev_post
}

/// What a finished restore did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoreReport {
    pub txid: u64,
    pub page_size: u32,
    pub pages: u32,
    pub files: usize,
    pub bytes: u64,
    /// Whether the final database checksum was recomputed and matched.
    pub checksum_verified: bool,
}

/// Where a planned file's bytes are.
pub struct Fetched {
    pub info: FileInfo,
    /// Where the bytes are, for messages (`memory:…` for bytes in memory).
    pub path: PathBuf,
    bytes: Held,
    /// The share of a restore's download budget its bytes in memory hold, until dropped.
    budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

enum Held {
    /// A file on a local disk, read in place (a directory replica's).
    InPlace,
    /// A download in a scratch file (removed when dropped).
    Scratch(Box<dyn ScratchFile>),
    /// The bytes themselves.
    Memory(Vec<u8>),
    /// A download still arriving, chunk by chunk, read once as it comes (`restore_to`).
    Stream(std::sync::Mutex<Option<ChunkReader>>),
}

/// Chunks of a download still in progress, in order: read as one byte stream. The sender sends
/// an error instead of the rest when the download fails; a sender gone early ends the stream
/// short, which the LTX decoder reports as a truncated file.
struct ChunkReader {
    chunks: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.current = chunk?;
                    self.at = 0;
                }
                Err(std::sync::mpsc::RecvError) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("info", &self.info)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Fetched {
    /// A file already in memory (the simulator's restores).
    pub fn in_memory(info: FileInfo, bytes: Vec<u8>) -> Self {
        let path = PathBuf::from(format!("memory:{info}"));
        Self {
            info,
            path,
            bytes: Held::Memory(bytes),
            budget: None,
        }
    }

    /// The database checksums the file records (before, after), from its header and trailer.
    pub fn checksums(&self) -> Result<Option<(u64, u64)>, LtxError> {
        let b = match &self.bytes {
            Held::Memory(b) => b,
            Held::InPlace => return file_checksums(&self.path),
            Held::Scratch(f) => return scratch_checksums(f.as_ref()),
            Held::Stream(_) => return Err(LtxError::Io(stream_read_twice())),
        };
        let short = || LtxError::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        let head: &[u8; crate::ltx::HEADER_SIZE] = b
            .get(..crate::ltx::HEADER_SIZE)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(short)?;
        let header = Header::decode(head)?;
        let tail = b
            .len()
            .checked_sub(crate::ltx::TRAILER_SIZE)
            .and_then(|at| b.get(at..at + 8))
            .ok_or_else(short)?;
        let mut post = [0u8; 8];
        post.copy_from_slice(tail);
        let trailer = crate::ltx::Trailer {
            post_apply_checksum: u64::from_be_bytes(post),
            file_checksum: 0,
        };
        Ok(header.db_checksums(&trailer))
    }

    /// The file's bytes, from memory or from its file (read through a buffer of
    /// `buffer_bytes`).
    pub fn reader(&self, buffer_bytes: usize) -> Result<Box<dyn std::io::Read + '_>, RestoreError> {
        match &self.bytes {
            Held::Memory(b) => Ok(Box::new(&b[..])),
            Held::InPlace => {
                let f = File::open(&self.path).map_err(io_err(&self.path))?;
                Ok(Box::new(BufReader::with_capacity(buffer_bytes, f)))
            }
            Held::Scratch(f) => Ok(Box::new(BufReader::with_capacity(
                buffer_bytes,
                ScratchReader::new(f.as_ref()),
            ))),
            Held::Stream(r) => r
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
                .map(|r| Box::new(r) as Box<dyn std::io::Read>)
                .ok_or_else(|| RestoreError::Io {
                    path: self.path.clone(),
                    error: stream_read_twice(),
                }),
        }
    }

    /// A file whose chunks arrive on `chunks` while it is applied.
    fn streamed(
        info: FileInfo,
        key: &str,
        chunks: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    ) -> Self {
        Self {
            info,
            path: PathBuf::from(format!("download:{key}")),
            bytes: Held::Stream(std::sync::Mutex::new(Some(ChunkReader {
                chunks,
                current: Vec::new(),
                at: 0,
            }))),
            budget: None,
        }
    }
}

fn stream_read_twice() -> std::io::Error {
    std::io::Error::other("a streamed download is read once, as it arrives")
}

/// Where restored pages go: a file, or memory.
pub trait Image {
    fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()>;
    fn set_len(&mut self, len: u64) -> std::io::Result<()>;
    fn db_checksum(&mut self, page_size: u32) -> std::io::Result<DbChecksum>;
    /// Reads `buf.len()` bytes written earlier at `offset` (zeros where nothing was). A restore
    /// reads a page back before it overwrites or truncates it, to keep the database checksum
    /// as it goes; an image that cannot (the default) has it computed once at the end.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let _ = (buf, offset);
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// The file a restore writes: the image, and its durability. The local-file seam for restores
/// (`place::OutputFs` creates them): a real file in production, the simulated disk in the
/// simulator.
pub trait OutputFile: Image + Send {
    /// Makes every byte written so far durable (fsync). A failure leaves the file's contents
    /// unknown: the restore fails and the file is removed.
    fn sync(&mut self) -> std::io::Result<()>;
}

/// A real output file.
#[derive(Debug)]
pub struct OsOutput(pub File);

impl Image for OsOutput {
    fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_all_at(data, offset)
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn db_checksum(&mut self, page_size: u32) -> std::io::Result<DbChecksum> {
        checksum_file(&self.0, page_size)
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
}

impl Image for Box<dyn OutputFile> {
    fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
        (**self).write_at(data, offset)
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        (**self).set_len(len)
    }
    fn db_checksum(&mut self, page_size: u32) -> std::io::Result<DbChecksum> {
        (**self).db_checksum(page_size)
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        (**self).read_at(buf, offset)
    }
}

impl OutputFile for OsOutput {
    fn sync(&mut self) -> std::io::Result<()> {
        self.0.sync_all()
    }
}

impl Image for &File {
    fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
        self.write_all_at(data, offset)
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        File::set_len(self, len)
    }
    fn db_checksum(&mut self, page_size: u32) -> std::io::Result<DbChecksum> {
        checksum_file(self, page_size)
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

impl Image for Vec<u8> {
    fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
        let at = usize::try_from(offset).map_err(std::io::Error::other)?;
        if self.len() < at + data.len() {
            self.resize(at + data.len(), 0);
        }
        self[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.resize(usize::try_from(len).map_err(std::io::Error::other)?, 0);
        Ok(())
    }
    fn db_checksum(&mut self, page_size: u32) -> std::io::Result<DbChecksum> {
        let pages = self
            .chunks(page_size as usize)
            .zip(1u32..)
            .map(|(p, n)| (n, p));
        Ok(DbChecksum::of_pages(pages, page_size))
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let at = usize::try_from(offset).map_err(std::io::Error::other)?;
        let src = self
            .get(at..at + buf.len())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Fetches one replica file: a directory replica's file is read in place; a file of at most
/// `in_memory_max` bytes is fetched into memory; a larger one into a file of `scratch`
/// (deleted when the `Fetched` is dropped). Ranged GETs: a dropped connection costs one chunk,
/// not the whole file.
pub async fn fetch(
    replica: &Replica,
    info: FileInfo,
    scratch: &dyn Scratch,
    in_memory_max: u64,
) -> Result<Fetched, RestoreError> {
    let key = replica.key(&info);
    if let Some(path) = replica.store.local_path(&key) {
        return Ok(Fetched {
            info,
            path,
            bytes: Held::InPlace,
            budget: None,
        });
    }
    if info.size <= in_memory_max {
        let bytes = replica
            .read_range(&info, 0, info.size, DOWNLOAD_CHUNK_BYTES)
            .await?;
        return Ok(Fetched::in_memory(info, bytes));
    }
    let file = scratch.create().map_err(|error| RestoreError::Io {
        path: scratch.location(),
        error,
    })?;
    let path = file.name().to_path_buf();
    let mut offset = 0u64;
    while offset < info.size {
        let chunk = replica
            .store
            .get_range(&key, offset, DOWNLOAD_CHUNK_BYTES)
            .await?;
        if chunk.is_empty() {
            break;
        }
        file.write_at(&chunk, offset).map_err(io_err(&path))?;
        offset += chunk.len() as u64;
    }
    Ok(Fetched {
        info,
        path,
        bytes: Held::Scratch(file),
        budget: None,
    })
}

/// The database checksums a scratch file records (before, after), from its header and trailer.
fn scratch_checksums(f: &dyn ScratchFile) -> Result<Option<(u64, u64)>, LtxError> {
    let mut hb = [0u8; crate::ltx::HEADER_SIZE];
    read_exact_at(f, &mut hb, 0)?;
    let h = Header::decode(&hb)?;
    let mut tb = [0u8; 8];
    let at = f
        .size()?
        .checked_sub(crate::ltx::TRAILER_SIZE as u64)
        .ok_or_else(|| LtxError::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)))?;
    read_exact_at(f, &mut tb, at)?;
    let trailer = crate::ltx::Trailer {
        post_apply_checksum: u64::from_be_bytes(tb),
        file_checksum: 0,
    };
    Ok(h.db_checksums(&trailer))
}

/// The database checksums a file records (before, after), reading only its header and trailer.
fn file_checksums(path: &Path) -> Result<Option<(u64, u64)>, LtxError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    let mut hb = [0u8; crate::ltx::HEADER_SIZE];
    f.read_exact(&mut hb)?;
    let h = Header::decode(&hb)?;
    let mut tb = [0u8; 8];
    f.seek(SeekFrom::End(-(crate::ltx::TRAILER_SIZE as i64)))?;
    f.read_exact(&mut tb)?;
    let trailer = crate::ltx::Trailer {
        post_apply_checksum: u64::from_be_bytes(tb),
        file_checksum: 0,
    };
    Ok(h.db_checksums(&trailer))
}

/// Applies one file's pages onto `out`. Returns its header and trailer's post-apply checksum
/// (`None` for no-checksum files).
pub fn apply_one(
    out: &mut impl Image,
    out_path: &Path,
    fetched: &Fetched,
    page: &mut Vec<u8>,
) -> Result<(Header, Option<(u64, u64)>), RestoreError> {
    let name = format!("{} ({})", fetched.info, fetched.path.display());
    let ltx = |error: LtxError| RestoreError::Ltx {
        file: name.clone(),
        error,
    };
    let mut dec = Decoder::new(fetched.reader(1 << 20)?).map_err(ltx)?;
    let h = *dec.header();
    if (h.min_txid, h.max_txid) != (fetched.info.min_txid, fetched.info.max_txid) {
        return Err(RestoreError::Chain {
            file: name,
            message: format!(
                "header says TXIDs {}, file name disagrees",
                file_name(h.min_txid, h.max_txid)
            ),
        });
    }
    page.resize(h.page_size as usize, 0);
    while let Some(pgno) = dec.next_page(page).map_err(ltx)? {
        let at = u64::from(pgno - 1) * u64::from(h.page_size);
        out.write_at(page, at).map_err(io_err(out_path))?;
    }
    let trailer = dec.finish().map_err(ltx)?;
    out.set_len(u64::from(h.commit) * u64::from(h.page_size))
        .map_err(io_err(out_path))?;
    Ok((h, h.db_checksums(&trailer)))
}

/// An image whose database checksum is kept up to date as whole pages are written, so the end
/// of a restore need not read the whole output back, in memory that does not grow with the
/// database: a page about to be overwritten or truncated away is read back from the image
/// first (one page read per page an incremental file carries; a snapshot onto the empty output
/// reads nothing). Any other write (not one whole page at a page boundary), a page size that
/// changes, or an image that cannot read back turns it off, and the inner image computes the
/// checksum at the end.
struct Summed<'a, I: Image> {
    inner: &'a mut I,
    /// `None` before the first write.
    page_size: Option<u32>,
    /// The image's size in pages, as the writes and truncations made it.
    pages: u64,
    total: DbChecksum,
    exact: bool,
    /// The page read back.
    old: Vec<u8>,
}

impl<'a, I: Image> Summed<'a, I> {
    fn new(inner: &'a mut I) -> Self {
        Self {
            inner,
            page_size: None,
            pages: 0,
            total: DbChecksum::EMPTY,
            exact: true,
            old: Vec::new(),
        }
    }

    /// Toggles page `pgno` as the image holds it now (read back) out of the total.
    fn toggle_out(&mut self, pgno: u64, page_size: u32) -> std::io::Result<bool> {
        let Ok(n) = u32::try_from(pgno) else {
            return Ok(false);
        };
        if n == crate::checksum::lock_pgno(page_size) {
            return Ok(true);
        }
        self.old.resize(page_size as usize, 0);
        match self
            .inner
            .read_at(&mut self.old, (pgno - 1) * u64::from(page_size))
        {
            Ok(()) => {
                self.total
                    .toggle(crate::checksum::page_checksum(n, &self.old));
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Grows the image to `pages` with all-zero pages (a gap, or a longer length).
    fn grow(&mut self, pages: u64, page_size: u32) -> bool {
        // The common case, a page written just past the end: nothing to add, nothing allocated.
        if pages <= self.pages {
            return true;
        }
        let zero = vec![0u8; page_size as usize];
        let lock = crate::checksum::lock_pgno(page_size);
        for pgno in self.pages + 1..=pages {
            let Ok(n) = u32::try_from(pgno) else {
                return false;
            };
            if n != lock {
                self.total.toggle(crate::checksum::page_checksum(n, &zero));
            }
        }
        self.pages = pages;
        true
    }

    /// Takes a whole-page write into the total before it is made. `false`: not trackable.
    fn track_write(&mut self, data: &[u8], offset: u64) -> std::io::Result<bool> {
        let Some(page_size) = u32::try_from(data.len()).ok().filter(|&p| p > 0) else {
            return Ok(false);
        };
        if *self.page_size.get_or_insert(page_size) != page_size
            || !offset.is_multiple_of(u64::from(page_size))
        {
            return Ok(false);
        }
        let pgno = offset / u64::from(page_size) + 1;
        let Ok(n) = u32::try_from(pgno) else {
            return Ok(false);
        };
        if pgno <= self.pages {
            if !self.toggle_out(pgno, page_size)? {
                return Ok(false);
            }
        } else if self.grow(pgno - 1, page_size) {
            // Pages in between are a gap of zeros; this one is new.
            self.pages = pgno;
        } else {
            return Ok(false);
        }
        // The lock-byte page is never part of the checksum.
        if n != crate::checksum::lock_pgno(page_size) {
            self.total.toggle(crate::checksum::page_checksum(n, data));
        }
        Ok(true)
    }

    /// Takes a new length into the total before it is set. `false`: not trackable.
    fn track_len(&mut self, len: u64) -> std::io::Result<bool> {
        let Some(page_size) = self.page_size else {
            // Nothing written yet: only an empty image is known.
            return Ok(len == 0);
        };
        if !len.is_multiple_of(u64::from(page_size)) {
            return Ok(false);
        }
        let pages = len / u64::from(page_size);
        while self.pages > pages {
            if !self.toggle_out(self.pages, page_size)? {
                return Ok(false);
            }
            self.pages -= 1;
        }
        Ok(self.grow(pages, page_size))
    }
}

impl<I: Image> Image for Summed<'_, I> {
    fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
        if self.exact && !self.track_write(data, offset)? {
            self.exact = false;
        }
        self.inner.write_at(data, offset)
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        if self.exact && !self.track_len(len)? {
            self.exact = false;
        }
        self.inner.set_len(len)
    }
    fn db_checksum(&mut self, page_size: u32) -> std::io::Result<DbChecksum> {
        match self.page_size {
            Some(p) if self.exact && p == page_size => Ok(self.total),
            None if self.exact => Ok(DbChecksum::EMPTY),
            _ => self.inner.db_checksum(page_size),
        }
    }
}

/// Streams `files` into `out` and verifies the chain. Blocking.
pub fn apply_plan(
    out: &mut impl Image,
    out_path: &Path,
    files: impl IntoIterator<Item = Result<Fetched, RestoreError>>,
    mut on_file: impl FnMut(&FileInfo),
) -> Result<RestoreReport, RestoreError> {
    let out = &mut Summed::new(out);
    let mut page = Vec::new();
    let mut prev: Option<(Header, Option<(u64, u64)>)> = None;
    let mut report = RestoreReport {
        txid: 0,
        page_size: 0,
        pages: 0,
        files: 0,
        bytes: 0,
        checksum_verified: false,
    };
    for fetched in files {
        let fetched = fetched?;
        let (h, sums) = apply_one(out, out_path, &fetched, &mut page)?;
        let name = fetched.info.to_string();
        if let Some((ph, psums)) = prev {
            if h.page_size != ph.page_size {
                return Err(RestoreError::Chain {
                    file: name,
                    message: format!(
                        "page size {} differs from the {} bytes of earlier files",
                        h.page_size, ph.page_size
                    ),
                });
            }
            if h.min_txid > ph.max_txid + 1 {
                return Err(RestoreError::Chain {
                    file: name,
                    message: format!("does not follow TXID {:016x}", ph.max_txid),
                });
            }
            if let (Some((_, pp)), Some((pre, _))) = (psums, sums)
                && !checksum_continues(ph.max_txid, pp, h.min_txid, pre)
            {
                return Err(RestoreError::Chain {
                    file: name,
                    message: format!(
                        "was written against database checksum {pre:016x} but the restored state has {pp:016x}"
                    ),
                });
            }
        } else if !h.is_snapshot() {
            return Err(RestoreError::Chain {
                file: name,
                message: "the first file of a restore must be a snapshot".into(),
            });
        }
        report.txid = h.max_txid;
        report.page_size = h.page_size;
        report.pages = h.commit;
        report.files += 1;
        report.bytes += fetched.info.size;
        on_file(&fetched.info);
        prev = Some((h, sums));
    }
    if let Some((h, Some((_, expected)))) = prev {
        let computed = out.db_checksum(h.page_size).map_err(io_err(out_path))?;
        if computed != DbChecksum::from_raw(expected) {
            return Err(RestoreError::Ltx {
                file: format!(
                    "restored database (as recorded by {})",
                    file_name(h.min_txid, h.max_txid)
                ),
                error: LtxError::DbChecksumMismatch {
                    stored: expected,
                    computed: computed.raw(),
                },
            });
        }
        report.checksum_verified = true;
    }
    Ok(report)
}

/// What the download loop of [`restore_to`] hands the applier next.
enum Next {
    Fetched(Fetched),
    Stream(FileInfo),
}

/// Ranged GETs one streamed download keeps in flight, and chunks it queues for the applier:
/// with [`STREAM_CHUNK_BYTES`] chunks and the one being read, at most 24 MiB of it in memory.
/// Several GETs at once keep the connections busy while earlier chunks are decoded and written
/// (measured on s3s-fs, 1 GiB: 4 MiB chunks two at a time took 9.8 s, four at a time 6.1 s, and
/// 8 MiB chunks two at a time 6.9 s).
pub const STREAM_GETS_IN_FLIGHT: usize = 4;
/// The ranged GETs of a streamed download: half a fetch's chunk, so the chunks in flight and
/// queued stay small beside the 64 MiB a restore may use.
pub const STREAM_CHUNK_BYTES: u64 = DOWNLOAD_CHUNK_BYTES / 2;
pub const STREAM_CHUNKS_QUEUED: usize = 1;

/// Streams one large file into the applier while it is applied: the download, the decoding
/// and the write of its pages overlap, and nothing goes through a scratch file. The chunks are
/// fetched in order by this loop alone (no task of its own), so the store sees the same
/// requests in the same order whatever the applier's pace. `false` once the applier is gone
/// or the download failed (its error sent on the stream).
async fn stream_into(
    replica: &Replica,
    info: FileInfo,
    tx: &std::sync::mpsc::SyncSender<Result<Fetched, RestoreError>>,
) -> bool {
    let key = replica.key(&info);
    let (chunks_tx, chunks_rx) = std::sync::mpsc::sync_channel(STREAM_CHUNKS_QUEUED);
    let size = info.size;
    if tx
        .send(Ok(Fetched::streamed(info, &key, chunks_rx)))
        .is_err()
    {
        return false;
    }
    let key = &key;
    let mut gets = futures::stream::iter(
        (0..size).step_by(usize::try_from(STREAM_CHUNK_BYTES).unwrap_or(usize::MAX)),
    )
    .map(|offset| async move {
        replica
            .store
            .get_range(key, offset, STREAM_CHUNK_BYTES.min(size - offset))
            .await
    })
    .buffered(STREAM_GETS_IN_FLIGHT);
    while let Some(chunk) = gets.next().await {
        match chunk {
            // An empty chunk before the end: the stream ends short, which the decoder reports.
            Ok(c) if c.is_empty() => return true,
            Ok(c) => {
                if chunks_tx.send(Ok(c)).is_err() {
                    return false;
                }
            }
            Err(e) => {
                let _ = chunks_tx.send(Err(std::io::Error::other(format!(
                    "download of {key}: {e}"
                ))));
                return false;
            }
        }
    }
    true
}

fn kib(bytes: u64) -> usize {
    usize::try_from(bytes.div_ceil(1024)).unwrap_or(usize::MAX)
}

/// Fetches `files` with up to `parallelism` downloads in flight and applies them in order onto
/// `out` (named `out_path` in messages; large downloads go to files of `scratch`). Hands `out`
/// back unsynced: the caller syncs it and moves it into place (`place.rs`).
pub async fn restore_to(
    replica: &Replica,
    files: Vec<FileInfo>,
    mut out: Box<dyn OutputFile>,
    out_path: &Path,
    scratch: &dyn Scratch,
    parallelism: usize,
    on_file: impl FnMut(&FileInfo) + Send + 'static,
) -> Result<(RestoreReport, Box<dyn OutputFile>), RestoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Fetched, RestoreError>>(1);
    let label = out_path.to_path_buf();
    let applier = tokio::task::spawn_blocking(move || {
        apply_plan(&mut out, &label, rx, on_file).map(|r| (r, out))
    });
    let parallelism = parallelism.clamp(1, PARALLELISM_MAX);
    // Permits are KiB: the budget fits a semaphore's count on every platform.
    let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(kib(
        DOWNLOAD_BYTES_IN_FLIGHT_MAX,
    )));
    let budget = &budget;
    let in_memory_max = scratch.in_memory_bytes_max();
    let mut downloads = futures::stream::iter(files)
        .map(|info| async move {
            // A large remote file is streamed into the applier below, in order, not fetched.
            if info.size > in_memory_max && replica.store.local_path(&replica.key(&info)).is_none()
            {
                return Ok(Next::Stream(info));
            }
            let want = kib(info.size.clamp(1, DOWNLOAD_CHUNK_BYTES));
            // The semaphore is never closed. The permits go back when the fetch is done, or,
            // for a file held in memory, once the applier is done with it: files fetched
            // ahead of the applier (while a large one streams) stay inside the budget. No
            // deadlock: the permits are granted in plan order (the fetches are polled in plan
            // order and the semaphore is fair), so a file waiting for them is never behind
            // later files holding them.
            let held = budget
                .clone()
                .acquire_many_owned(u32::try_from(want).unwrap_or(u32::MAX))
                .await
                .ok();
            let mut fetched = fetch(replica, info, scratch, in_memory_max).await?;
            if matches!(fetched.bytes, Held::Memory(_)) {
                fetched.budget = held;
            }
            Ok(Next::Fetched(fetched))
        })
        .buffered(parallelism);
    // Files that finished while a large one streamed, in plan order.
    let mut early = std::collections::VecDeque::new();
    loop {
        let next = match early.pop_front() {
            Some(n) => n,
            None => match downloads.next().await {
                Some(n) => n,
                None => break,
            },
        };
        // The applier stops at its first error and drops the receiver; its error wins.
        let sent = match next {
            Ok(Next::Fetched(f)) => tx.send(Ok(f)).is_ok(),
            Ok(Next::Stream(info)) => {
                // The fetches already started keep going meanwhile (a connection left unread
                // for a whole large file could time out); at most `parallelism` wait here.
                let streaming = std::pin::pin!(stream_into(replica, info, &tx));
                let drain = async {
                    while early.len() < parallelism {
                        match downloads.next().await {
                            Some(n) => early.push_back(n),
                            None => break,
                        }
                    }
                    std::future::pending::<()>().await;
                };
                tokio::select! {
                    biased;
                    sent = streaming => sent,
                    () = drain => unreachable!("the drain never ends"),
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                false
            }
        };
        if !sent {
            break;
        }
    }
    drop(tx);
    applier.await.map_err(|e| RestoreError::Io {
        path: out_path.to_path_buf(),
        error: std::io::Error::other(e),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::replica::test_file as f;

    /// Pages by number and a length: the reference checksum reads every page, as
    /// `checksum_file` does (zeros for pages never written).
    #[derive(Default)]
    struct Sparse {
        pages: std::collections::BTreeMap<u64, Vec<u8>>,
        len: u64,
    }

    impl Image for Sparse {
        fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
            self.pages.insert(offset, data.to_vec());
            self.len = self.len.max(offset + data.len() as u64);
            Ok(())
        }
        fn set_len(&mut self, len: u64) -> std::io::Result<()> {
            self.pages.retain(|&at, _| at < len);
            self.len = len;
            Ok(())
        }
        fn db_checksum(&mut self, page_size: u32) -> std::io::Result<DbChecksum> {
            let zeros = vec![0u8; page_size as usize];
            let pages = (0..self.len / u64::from(page_size)).map(|i| {
                let page = self
                    .pages
                    .get(&(i * u64::from(page_size)))
                    .map_or(&zeros[..], |p| &p[..]);
                (u32::try_from(i + 1).expect("pgno"), page)
            });
            Ok(DbChecksum::of_pages(pages, page_size))
        }
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            if offset + buf.len() as u64 > self.len {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            match self.pages.get(&offset) {
                Some(p) => buf.copy_from_slice(p),
                None => buf.fill(0),
            }
            Ok(())
        }
    }

    /// The checksum kept while writing equals the one read back, through overwrites, gaps,
    /// shrinking and growing, and across the lock-byte page.
    #[test]
    fn a_checksum_kept_while_writing_equals_the_one_read_back() {
        // 64 KiB pages put the lock-byte page at 16,385: small enough to cross here.
        let ps = 65_536u32;
        let lock = crate::checksum::lock_pgno(ps);
        let page = |n: u8| vec![n; ps as usize];
        let at = |pgno: u32| u64::from(pgno - 1) * u64::from(ps);
        let mut inner = Sparse::default();
        let mut summed = Summed::new(&mut inner);
        let steps: Vec<(&str, u32, u8)> = vec![
            ("write", 1, 1),
            ("write", 3, 3), // page 2 is a gap: zeros
            ("write", 1, 9), // an overwrite
            ("len", 5, 0),   // grows with zero pages
            ("len", 2, 0),   // shrinks, dropping page 3
            ("write", lock - 2, 4),
            ("write", lock + 1, 5), // across the lock-byte page
            ("len", lock + 3, 0),
            ("len", lock - 1, 0),
        ];
        for (op, n, fill) in steps {
            match op {
                "write" => summed.write_at(&page(fill), at(n)).expect("write"),
                _ => summed.set_len(u64::from(n) * u64::from(ps)).expect("len"),
            }
            assert!(summed.exact, "{op} {n} turned the tracking off");
            // Reading a GiB back is slow in a debug build: near the lock-byte page, only at
            // its crossing.
            if n < 100 || n == lock + 3 {
                let kept = summed.db_checksum(ps).expect("kept");
                let read = summed.inner.db_checksum(ps).expect("read back");
                assert_eq!(kept, read, "after {op} {n}");
            }
        }
        // A write that is not one whole page turns it off; the inner image answers.
        summed.write_at(&[7u8; 10], 5).expect("write");
        assert!(!summed.exact);
        let read = summed.inner.db_checksum(ps).expect("read back");
        assert_eq!(summed.db_checksum(ps).expect("checksum"), read);
    }

    /// An image that cannot read back: the first overwrite turns the tracking off, and the
    /// checksum read at the end is still right.
    #[test]
    fn an_image_that_cannot_read_back_is_checksummed_at_the_end() {
        struct NoRead(Sparse);
        impl Image for NoRead {
            fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
                self.0.write_at(data, offset)
            }
            fn set_len(&mut self, len: u64) -> std::io::Result<()> {
                self.0.set_len(len)
            }
            fn db_checksum(&mut self, page_size: u32) -> std::io::Result<DbChecksum> {
                self.0.db_checksum(page_size)
            }
        }
        let mut inner = NoRead(Sparse::default());
        let mut summed = Summed::new(&mut inner);
        summed.write_at(&[1u8; 512], 0).expect("write");
        summed.write_at(&[2u8; 512], 512).expect("write");
        assert!(summed.exact, "new pages need no read");
        summed.write_at(&[3u8; 512], 0).expect("overwrite");
        assert!(!summed.exact);
        let read = summed.inner.db_checksum(512).expect("read");
        let want = DbChecksum::of_pages([(1, &[3u8; 512][..]), (2, &[2u8; 512][..])], 512);
        assert_eq!(read, want);
        assert_eq!(summed.db_checksum(512).expect("checksum"), want);
    }

    fn ranges(p: &[FileInfo]) -> Vec<(u8, u64, u64)> {
        p.iter()
            .map(|f| (f.level, f.min_txid, f.max_txid))
            .collect()
    }

    #[test]
    fn latest_uses_snapshot_then_the_widest_files() {
        let files = vec![
            f(9, 1, 10),
            f(1, 1, 8),
            f(1, 9, 12),
            f(0, 11, 11),
            f(0, 12, 12),
            f(0, 13, 13),
            f(2, 1, 12),
        ];
        let p = plan("r", &files, Target::Latest).expect("plan");
        // Among files reaching TXID 12, the one starting earliest wins (Litestream's tie-break).
        assert_eq!(ranges(&p), vec![(9, 1, 10), (2, 1, 12), (0, 13, 13)]);
    }

    #[test]
    fn txid_target_stops_exactly_there() {
        let files = vec![f(0, 1, 1), f(0, 2, 2), f(0, 3, 3), f(1, 1, 3)];
        assert_eq!(
            ranges(&plan("r", &files, Target::Txid(2)).expect("plan")),
            vec![(0, 1, 1), (0, 2, 2)]
        );
        assert_eq!(
            ranges(&plan("r", &files, Target::Txid(3)).expect("plan")),
            vec![(1, 1, 3)]
        );
    }

    #[test]
    fn txid_beyond_the_replica_is_refused() {
        let files = vec![f(0, 1, 1), f(0, 2, 2)];
        assert!(matches!(
            plan("r", &files, Target::Txid(5)),
            Err(RestoreError::TargetNotAvailable { newest: 2, .. })
        ));
    }

    #[test]
    fn txid_inside_a_compacted_file_is_refused() {
        let files = vec![f(1, 1, 5)];
        assert!(matches!(
            plan("r", &files, Target::Txid(3)),
            Err(RestoreError::TargetNotAvailable { .. })
        ));
    }

    #[test]
    fn gap_names_the_missing_range() {
        let files = vec![f(0, 1, 1), f(0, 2, 2), f(0, 5, 5)];
        let err = plan("r", &files, Target::Latest).expect_err("gap");
        assert!(
            matches!(err, RestoreError::Gap { from: 3, to: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_moment_before_the_level1_file_that_holds_the_missing_txids_is_no_gap() {
        // Level-0 files 3 and 4 were removed (level 1 holds them, written at 5000); at 4500
        // level-0 file 5 exists but cannot be reached: the answer is the state at 2.
        let files = vec![
            f(0, 1, 1),
            f(0, 2, 2),
            FileInfo {
                created_ms: 4000,
                ..f(0, 5, 5)
            },
            FileInfo {
                created_ms: 5000,
                ..f(1, 3, 6)
            },
        ];
        assert_eq!(
            ranges(&plan("r", &files, Target::Before(4500)).expect("plan")),
            vec![(0, 1, 1), (0, 2, 2)]
        );
        // By TXID the level-1 file is reachable.
        assert_eq!(
            ranges(&plan("r", &files, Target::Txid(6)).expect("plan")),
            vec![(0, 1, 1), (0, 2, 2), (1, 3, 6)]
        );
    }

    #[test]
    fn timestamp_target_uses_only_older_files() {
        let files = vec![f(0, 1, 1), f(0, 2, 2), f(0, 3, 3)];
        assert_eq!(
            ranges(&plan("r", &files, Target::Before(2500)).expect("plan")),
            vec![(0, 1, 1), (0, 2, 2)]
        );
        assert!(plan("r", &files, Target::Before(500)).is_err());
    }

    #[test]
    fn empty_replica_is_its_own_error() {
        assert!(matches!(
            plan("r", &[], Target::Latest),
            Err(RestoreError::ReplicaEmpty { .. })
        ));
    }

    #[test]
    fn without_a_snapshot_history_must_start_at_txid_1() {
        let files = vec![f(0, 2, 2), f(0, 3, 3)];
        assert!(matches!(
            plan("r", &files, Target::Latest),
            Err(RestoreError::Gap { from: 1, to: 1, .. })
        ));
    }

    #[test]
    fn newer_snapshot_below_target_wins() {
        let files = vec![
            f(9, 1, 5),
            f(9, 1, 9),
            f(0, 6, 6),
            f(0, 7, 7),
            f(0, 8, 8),
            f(0, 9, 9),
            f(0, 10, 10),
        ];
        assert_eq!(
            ranges(&plan("r", &files, Target::Latest).expect("plan")),
            vec![(9, 1, 9), (0, 10, 10)]
        );
        assert_eq!(
            ranges(&plan("r", &files, Target::Txid(7)).expect("plan")),
            vec![(9, 1, 5), (0, 6, 6), (0, 7, 7)]
        );
    }
}
