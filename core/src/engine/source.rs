//! The local-file seam: how the engine reads the database and its WAL.
//!
//! The engine never opens, closes or writes these files itself: SQLite's POSIX locks belong to the
//! process, so closing any descriptor of the database file would drop the locks of the engine's
//! own SQLite connection. The real implementation opens each file once and keeps the descriptor
//! for the engine's whole life; the simulator implements the same trait over its simulated disk.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Read-only access to a database file and its `-wal`. Reads of a range past the end of a file
/// return fewer bytes (possibly zero); a missing WAL reads as empty.
pub trait DbFiles: Send + Sync {
    fn read_db(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    fn db_len(&self) -> io::Result<u64>;
    fn read_wal(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    fn wal_len(&self) -> io::Result<u64>;
    /// A cheap fingerprint of the database file (size, modification time): equal stamps mean
    /// the file was not written in between.
    fn db_stamp(&self) -> io::Result<(u64, u64)>;
    /// Path of the database, for messages.
    fn db_path(&self) -> &Path;
    /// Whether the path no longer names the file these reads see: the database was removed
    /// (or replaced by another file) while replicating.
    fn replaced(&self) -> io::Result<bool>;
}

/// The real files. The database descriptor is opened once and never closed while the engine
/// runs. The WAL descriptor is reopened if the WAL file is replaced (new inode) or appears.
#[derive(Debug)]
pub struct OsFiles {
    db_path: PathBuf,
    wal_path: PathBuf,
    db: File,
    wal: Mutex<Option<(File, u64)>>,
}

impl OsFiles {
    pub fn open(db_path: &Path) -> io::Result<Self> {
        let db = File::open(db_path)?;
        let mut wal = db_path.as_os_str().to_owned();
        wal.push("-wal");
        Ok(Self {
            db_path: db_path.to_path_buf(),
            wal_path: PathBuf::from(wal),
            db,
            wal: Mutex::new(None),
        })
    }

    /// Runs `f` on the current WAL descriptor, (re)opening it when the file was replaced.
    fn with_wal<T>(&self, f: impl FnOnce(Option<&File>) -> io::Result<T>) -> io::Result<T> {
        use std::os::unix::fs::MetadataExt;
        let mut guard = self
            .wal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = match std::fs::metadata(&self.wal_path) {
            Ok(m) => Some(m.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let stale = match (&*guard, current) {
            (Some((_, ino)), Some(cur)) => *ino != cur,
            (None, Some(_)) | (Some(_), None) => true,
            (None, None) => false,
        };
        if stale {
            *guard = match current {
                Some(ino) => match File::open(&self.wal_path) {
                    Ok(file) => Some((file, ino)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                },
                None => None,
            };
        }
        f(guard.as_ref().map(|(file, _)| file))
    }
}

fn read_full_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl DbFiles for OsFiles {
    fn read_db(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        read_full_at(&self.db, offset, buf)
    }

    fn db_len(&self) -> io::Result<u64> {
        Ok(self.db.metadata()?.len())
    }

    fn db_stamp(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = self.db.metadata()?;
        let mtime_ns = u64::try_from(m.mtime())
            .unwrap_or(0)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(u64::try_from(m.mtime_nsec()).unwrap_or(0));
        Ok((m.len(), mtime_ns))
    }

    fn read_wal(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.with_wal(|f| f.map_or(Ok(0), |f| read_full_at(f, offset, buf)))
    }

    fn wal_len(&self) -> io::Result<u64> {
        self.with_wal(|f| f.map_or(Ok(0), |f| Ok(f.metadata()?.len())))
    }

    fn db_path(&self) -> &Path {
        &self.db_path
    }

    fn replaced(&self) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let open = self.db.metadata()?;
        match std::fs::metadata(&self.db_path) {
            Ok(now) => Ok((now.dev(), now.ino()) != (open.dev(), open.ino())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// Where a job finds its database: the files the engine reads (opened at each engine start,
/// so a database that appears later is picked up) and a cheap stamp of them that changes when
/// the application writes. The scheduler syncs only after the stamp changed.
pub trait LocalDb: Send + Sync {
    /// Opens the database's files for one engine's life.
    fn open(&self) -> io::Result<std::sync::Arc<dyn DbFiles>>;
    /// The WAL's size and modification time and the database's size, `None` if the database
    /// is missing. Two equal stamps mean nothing was written in between.
    fn stamp(&self) -> Option<crate::scheduler::Stamp>;
}

/// The real database on the local filesystem.
#[derive(Debug, Clone)]
pub struct OsDb {
    pub path: PathBuf,
}

impl LocalDb for OsDb {
    fn open(&self) -> io::Result<std::sync::Arc<dyn DbFiles>> {
        Ok(std::sync::Arc::new(OsFiles::open(&self.path)?))
    }

    fn stamp(&self) -> Option<crate::scheduler::Stamp> {
        use std::os::unix::fs::MetadataExt;
        let ns = |m: &std::fs::Metadata| {
            u64::try_from(m.mtime())
                .unwrap_or(0)
                .wrapping_mul(1_000_000_000)
                .wrapping_add(u64::try_from(m.mtime_nsec()).unwrap_or(0))
        };
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let w = std::fs::metadata(&wal).ok();
        let d = std::fs::metadata(&self.path).ok()?;
        // The WAL's header, read through a descriptor of its own: SQLite locks the database
        // file and the `-shm`, never the `-wal`, so closing it drops no lock of ours.
        let mut header = [0u8; crate::wal::WAL_HEADER_SIZE];
        let generation = match File::open(&wal) {
            Ok(f) => match read_full_at(&f, 0, &mut header) {
                Ok(n) if n == header.len() => wal_generation(&header),
                _ => 0,
            },
            Err(_) => 0,
        };
        Some([
            w.as_ref().map_or(0, std::fs::Metadata::len),
            w.as_ref().map_or(0, ns),
            d.len(),
            generation,
        ])
    }
}

/// A WAL header's generation for a [`crate::scheduler::Stamp`]: its salts and checksum folded
/// into one non-zero number (every restart writes new salts; a header rewritten with the same
/// salts has another checkpoint sequence, hence another checksum).
pub fn wal_generation(header: &[u8; crate::wal::WAL_HEADER_SIZE]) -> u64 {
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_be_bytes(b)
    };
    (word(16) ^ word(24).rotate_left(32)).max(1)
}
