//! Scratch files: where a large download waits until a restore or a compaction applies it.
//!
//! The seam between fetching and the local disk: production creates temporary files in a
//! directory ([`OsScratch`]); the simulator puts them on its simulated disk, so a simulated run
//! does no real I/O. A file of at most [`Scratch::in_memory_bytes_max`] bytes is fetched into
//! memory instead (`restore::fetch`).
//!
//! The other way round, a [`Spool`] holds a file being encoded (a snapshot, a compaction, the
//! engine's every-page file): in memory up to [`Scratch::in_memory_bytes_max`], then in a
//! scratch file, so an encoder of any size holds at most that much; the store uploads a
//! spooled file a part at a time (`store::ObjectStore::put_spooled`).

use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Files up to this size are fetched into memory instead of a scratch file: at most this much
/// per file in flight (a restore holds at most `parallelism + 2` fetched files at once).
pub const FETCH_IN_MEMORY_BYTES_MAX: u64 = 1 << 20;

/// Creates scratch files.
pub trait Scratch: Send + Sync + fmt::Debug {
    /// A new, empty scratch file, removed when dropped.
    fn create(&self) -> io::Result<Box<dyn ScratchFile>>;

    /// Where the files go, for messages.
    fn location(&self) -> PathBuf;

    /// Files up to this size are fetched into memory rather than into a scratch file.
    fn in_memory_bytes_max(&self) -> u64 {
        FETCH_IN_MEMORY_BYTES_MAX
    }
}

/// One scratch file: written once at offsets while downloading, then read.
pub trait ScratchFile: Send + Sync {
    /// Its name, for messages.
    fn name(&self) -> &Path;
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Reads at `offset`; fewer bytes than `buf` holds only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn size(&self) -> io::Result<u64>;
}

/// The most bytes a [`Spool`] holds in memory once it writes to its scratch file (its write
/// buffer).
pub const SPOOL_BUFFER_BYTES: usize = 1 << 20;

/// A file being written by an encoder: in memory while small, then in a scratch file.
pub struct Spool {
    scratch: std::sync::Arc<dyn Scratch>,
    in_memory_max: usize,
    /// The bytes in memory: the whole body while small, else the unwritten tail.
    buf: Vec<u8>,
    /// The scratch file once the body outgrew memory, and how much of it is written.
    file: Option<(Box<dyn ScratchFile>, u64)>,
}

/// A finished body: its bytes, or the scratch file holding them.
pub enum SpoolBody {
    Memory(Vec<u8>),
    File(Box<dyn ScratchFile>),
}

impl fmt::Debug for SpoolBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolBody::Memory(b) => write!(f, "Memory({} bytes)", b.len()),
            SpoolBody::File(file) => write!(f, "File({})", file.name().display()),
        }
    }
}

impl SpoolBody {
    pub fn len(&self) -> io::Result<u64> {
        match self {
            SpoolBody::Memory(b) => Ok(b.len() as u64),
            SpoolBody::File(f) => f.size(),
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The whole body in memory (small bodies, tests).
    pub fn into_bytes(self) -> io::Result<Vec<u8>> {
        match self {
            SpoolBody::Memory(b) => Ok(b),
            SpoolBody::File(f) => read_all(f.as_ref()),
        }
    }
}

impl Spool {
    pub fn new(scratch: std::sync::Arc<dyn Scratch>) -> Spool {
        let in_memory_max = usize::try_from(scratch.in_memory_bytes_max()).unwrap_or(usize::MAX);
        Spool {
            scratch,
            in_memory_max,
            buf: Vec::new(),
            file: None,
        }
    }

    fn flush_to_file(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            self.file = Some((self.scratch.create()?, 0));
        }
        if let Some((file, written)) = self.file.as_mut()
            && !self.buf.is_empty()
        {
            file.write_at(&self.buf, *written)?;
            *written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// The body as written.
    pub fn finish(self) -> io::Result<SpoolBody> {
        match self.file {
            None => Ok(SpoolBody::Memory(self.buf)),
            Some((file, written)) => {
                file.write_at(&self.buf, written)?;
                Ok(SpoolBody::File(file))
            }
        }
    }
}

impl io::Write for Spool {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let limit = if self.file.is_some() {
            SPOOL_BUFFER_BYTES
        } else {
            self.in_memory_max
        };
        if self.buf.len() + data.len() > limit {
            self.flush_to_file()?;
            if data.len() > SPOOL_BUFFER_BYTES
                && let Some((file, written)) = self.file.as_mut()
            {
                file.write_at(data, *written)?;
                *written += data.len() as u64;
                return Ok(data.len());
            }
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a scratch file from its start.
pub struct ScratchReader<'a> {
    file: &'a dyn ScratchFile,
    offset: u64,
}

impl<'a> ScratchReader<'a> {
    pub fn new(file: &'a dyn ScratchFile) -> Self {
        Self { file, offset: 0 }
    }
}

impl io::Read for ScratchReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// A scratch file read whole.
pub fn read_all(file: &dyn ScratchFile) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    io::Read::read_to_end(&mut ScratchReader::new(file), &mut out)?;
    Ok(out)
}

/// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
pub fn read_exact_at(file: &dyn ScratchFile, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        done += n;
    }
    Ok(())
}

/// Temporary files in a directory (created on first use).
#[derive(Clone, Debug)]
pub struct OsScratch {
    dir: PathBuf,
}

impl OsScratch {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl Scratch for OsScratch {
    fn create(&self) -> io::Result<Box<dyn ScratchFile>> {
        std::fs::create_dir_all(&self.dir)?;
        // Unnamed (`O_TMPFILE` where the filesystem has it, else created and unlinked at
        // once): the kernel frees it when its descriptor closes, so a process killed while it
        // spools a first snapshot leaves nothing behind. Named, the spools of a SIGKILLed
        // replicator stayed until someone removed them (7 GiB each, found at 10 GiB).
        let file = tempfile::tempfile_in(&self.dir)?;
        Ok(Box::new(OsScratchFile {
            file,
            name: self.dir.join("(unnamed scratch file)"),
        }))
    }

    fn location(&self) -> PathBuf {
        self.dir.clone()
    }
}

struct OsScratchFile {
    file: std::fs::File,
    /// What messages call it: it has no name on disk.
    name: PathBuf,
}

impl ScratchFile for OsScratchFile {
    fn name(&self) -> &Path {
        &self.name
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A scratch whose files hold up to `max` bytes in memory.
    #[derive(Debug)]
    struct Small(OsScratch, u64);

    impl Scratch for Small {
        fn create(&self) -> io::Result<Box<dyn ScratchFile>> {
            self.0.create()
        }
        fn location(&self) -> PathBuf {
            self.0.location()
        }
        fn in_memory_bytes_max(&self) -> u64 {
            self.1
        }
    }

    #[test]
    fn a_spool_stays_in_memory_while_small_and_moves_to_a_file_past_its_limit() {
        let dir = tempfile::tempdir().expect("dir");
        let small = std::sync::Arc::new(Small(OsScratch::new(dir.path()), 10));
        let mut spool = Spool::new(small.clone());
        spool.write_all(b"0123456789").expect("write");
        assert!(
            matches!(spool.finish().expect("finish"), SpoolBody::Memory(b) if b == b"0123456789")
        );
        let mut spool = Spool::new(small);
        let big: Vec<u8> = (0..3 * SPOOL_BUFFER_BYTES + 7)
            .map(|i| (i % 251) as u8)
            .collect();
        for chunk in big.chunks(4099) {
            spool.write_all(chunk).expect("write");
        }
        spool.write_all(&big).expect("one large write");
        let body = spool.finish().expect("finish");
        assert!(matches!(body, SpoolBody::File(_)), "{body:?}");
        assert_eq!(body.len().expect("len"), 2 * big.len() as u64);
        let bytes = body.into_bytes().expect("read back");
        assert_eq!(&bytes[..big.len()], &big[..]);
        assert_eq!(&bytes[big.len()..], &big[..]);
    }

    #[test]
    fn a_scratch_file_reads_back_what_was_written_and_is_never_in_its_directory() {
        let dir = tempfile::tempdir().expect("dir");
        let scratch = OsScratch::new(dir.path().join("s"));
        let f = scratch.create().expect("create");
        // Nothing to leave behind if the process is killed now.
        let entries = || {
            std::fs::read_dir(dir.path().join("s"))
                .expect("dir")
                .count()
        };
        f.write_at(b"world", 5).expect("write");
        f.write_at(b"hello", 0).expect("write");
        assert_eq!(f.size().expect("size"), 10);
        let mut all = String::new();
        ScratchReader::new(f.as_ref())
            .read_to_string(&mut all)
            .expect("read");
        assert_eq!(all, "helloworld");
        let mut tail = [0u8; 3];
        read_exact_at(f.as_ref(), &mut tail, 7).expect("tail");
        assert_eq!(&tail, b"rld");
        assert!(read_exact_at(f.as_ref(), &mut tail, 8).is_err());
        assert_eq!(entries(), 0, "the scratch file has no name");
        drop(f);
        assert_eq!(entries(), 0);
    }
}
