//! The engine's file seam over the simulated disk: the engine reads exactly the bytes SQLite
//! wrote through the VFS.

use std::io;
use std::path::{Path, PathBuf};

use sluice_core::engine::{Clock, DbFiles, LocalDb};
use sluice_core::scheduler::Stamp;

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

/// Something to run just before the engine's `at`th read through the file seam: the simulator
/// uses it to land an application commit in the middle of an engine read.
struct Interrupt {
    at: u32,
    reads: u32,
    action: Option<Box<dyn FnOnce()>>,
}

thread_local! {
    static INTERRUPT: std::cell::RefCell<Option<Interrupt>> = const { std::cell::RefCell::new(None) };
}

/// Arms `action` to run before the engine's `at`th read (1-based) from now.
pub fn arm_interrupt(at: u32, action: Box<dyn FnOnce()>) {
    INTERRUPT.with(|i| {
        *i.borrow_mut() = Some(Interrupt {
            at: at.max(1),
            reads: 0,
            action: Some(action),
        });
    });
}

/// Disarms the interrupt; whether it ran.
pub fn disarm_interrupt() -> bool {
    INTERRUPT.with(|i| i.borrow_mut().take().is_some_and(|x| x.action.is_none()))
}

/// Counts a read and runs the armed action when its turn comes (outside any VFS borrow).
fn tick() {
    let due = INTERRUPT.with(|i| {
        let mut i = i.borrow_mut();
        let x = i.as_mut()?;
        x.reads += 1;
        if x.reads == x.at {
            x.action.take()
        } else {
            None
        }
    });
    if let Some(action) = due {
        action();
    }
}

fn read(name: &str, offset: u64, buf: &mut [u8]) -> usize {
    tick();
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

/// The simulated database as a job sees it: its files on the simulated disk, stamped by the
/// disk's write versions (the simulated modification times).
#[derive(Debug, Clone)]
pub struct SimDb {
    pub db: String,
}

impl LocalDb for SimDb {
    fn open(&self) -> io::Result<std::sync::Arc<dyn DbFiles>> {
        Ok(std::sync::Arc::new(SimFiles::new(&self.db)))
    }

    fn stamp(&self) -> Option<Stamp> {
        let wal = format!("{}-wal", self.db);
        vfs::with(|s| {
            let db_len = s.disk.len(&self.db)?;
            Some([
                s.disk.len(&wal).unwrap_or(0) as u64,
                s.disk.version(&wal),
                db_len as u64,
            ])
        })
    }
}
