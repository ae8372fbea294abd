//! The engine's file seam over the simulated disk: the engine reads exactly the bytes SQLite
//! wrote through the VFS.

use std::io;
use std::path::{Path, PathBuf};

use sluice_core::engine::{Clock, DbFiles};

use crate::vfs;

#[derive(Debug)]
pub struct SimFiles {
    db: String,
    wal: String,
    db_path: PathBuf,
}

impl SimFiles {
    pub fn new(db: &str) -> Self {
        Self {
            db: db.to_string(),
            wal: format!("{db}-wal"),
            db_path: PathBuf::from(db),
        }
    }
}

fn read(name: &str, offset: u64, buf: &mut [u8]) -> usize {
    let offset = usize::try_from(offset).unwrap_or(usize::MAX);
    vfs::with(|s| s.disk.read(name, offset, buf))
}

fn len(name: &str) -> u64 {
    vfs::with(|s| s.disk.len(name).unwrap_or(0) as u64)
}

impl DbFiles for SimFiles {
    fn read_db(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        Ok(read(&self.db, offset, buf))
    }
    fn db_len(&self) -> io::Result<u64> {
        Ok(len(&self.db))
    }
    fn read_wal(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        Ok(read(&self.wal, offset, buf))
    }
    fn wal_len(&self) -> io::Result<u64> {
        Ok(len(&self.wal))
    }
    fn db_stamp(&self) -> io::Result<(u64, u64)> {
        Ok(vfs::with(|s| {
            (
                s.disk.len(&self.db).unwrap_or(0) as u64,
                s.disk.version(&self.db),
            )
        }))
    }
    fn db_path(&self) -> &Path {
        &self.db_path
    }
}

/// The simulated clock (the VFS holds the time so SQLite and the engine agree).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimClock;

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        vfs::with(|s| s.now_ms)
    }
}
