//! Scratch files: where a large download waits until a restore or a compaction applies it.
//!
//! The seam between fetching and the local disk: production creates temporary files in a
//! directory ([`OsScratch`]); the simulator puts them on its simulated disk, so a simulated run
//! does no real I/O. A file of at most [`Scratch::in_memory_bytes_max`] bytes is fetched into
//! memory instead (`restore::fetch`).

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
        let tmp = tempfile::Builder::new()
            .prefix(".sluice-fetch-")
            .tempfile_in(&self.dir)?;
        let (file, path) = tmp.into_parts();
        Ok(Box::new(OsScratchFile { file, path }))
    }

    fn location(&self) -> PathBuf {
        self.dir.clone()
    }
}

struct OsScratchFile {
    file: std::fs::File,
    /// Removes the file when dropped.
    path: tempfile::TempPath,
}

impl ScratchFile for OsScratchFile {
    fn name(&self) -> &Path {
        &self.path
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
    use std::io::Read;

    #[test]
    fn a_scratch_file_reads_back_what_was_written_and_goes_when_dropped() {
        let dir = tempfile::tempdir().expect("dir");
        let scratch = OsScratch::new(dir.path().join("s"));
        let f = scratch.create().expect("create");
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
        let name = f.name().to_path_buf();
        assert!(name.exists());
        drop(f);
        assert!(!name.exists());
    }
}
