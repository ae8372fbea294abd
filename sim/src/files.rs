//! The engine's file seam over the simulated disk: the engine reads exactly the bytes SQLite
//! wrote through the VFS.

use std::io;
use std::path::{Path, PathBuf};

use sluice_core::engine::{Clock, DbFiles, LocalDb, wal_generation};
use sluice_core::scheduler::Stamp;
use sluice_core::wal::WAL_HEADER_SIZE;

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
    /// The read it runs before, or 0: when an upload of an LTX file begins instead.
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

/// Arms `action` to run when the engine's next upload of an LTX file begins.
pub fn arm_upload_interrupt(action: Box<dyn FnOnce()>) {
    INTERRUPT.with(|i| {
        *i.borrow_mut() = Some(Interrupt {
            at: 0,
            reads: 0,
            action: Some(action),
        });
    });
}

/// An upload of an LTX file begins (the simulated store's put): runs an interrupt armed for it.
pub fn upload_begins() {
    let due = INTERRUPT.with(|i| {
        let mut i = i.borrow_mut();
        let x = i.as_mut()?;
        if x.at == 0 { x.action.take() } else { None }
    });
    if let Some(action) = due {
        action();
    }
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
        if x.at > 0 && x.reads == x.at {
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
    fn replaced(&self) -> io::Result<bool> {
        Ok(vfs::with(|s| s.disk.len(&self.db).is_none()))
    }
}

/// The simulated clock (the VFS holds the time so SQLite and the engine agree).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimClock;

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        vfs::with(|s| s.now_ms)
    }

    /// Ready once simulated time has reached `at_ms`. Simulated time moves only inside the
    /// world's calls (a store request's latency), and the simulated store yields after each
    /// request, so a task waiting on this beside an action (the lease kept during it) is
    /// polled again at every request of that action: no waker to register.
    fn sleep_until(&self, at_ms: i64) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(std::future::poll_fn(move |_| {
            if vfs::with(|s| s.now_ms) >= at_ms {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        }))
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
            // Not an engine read: no interrupt counts it.
            let mut header = [0u8; WAL_HEADER_SIZE];
            let generation = if s.disk.read(&wal, 0, &mut header) == WAL_HEADER_SIZE {
                wal_generation(&header)
            } else {
                0
            };
            Some([
                s.disk.len(&wal).unwrap_or(0) as u64,
                s.disk.version(&wal),
                db_len as u64,
                generation,
            ])
        })
    }
}

/// The restore's local-file seam (`place::OutputFs`) over the simulated disk. With a crash point
/// armed, the power fails just before the seam's `crash_at`th operation: the disk loses,
/// keeps or tears what was not synced (`Disk::power_loss`) and every later operation fails, as
/// the process died.
#[derive(Debug, Clone)]
pub struct SimFs {
    state: std::sync::Arc<std::sync::Mutex<FsState>>,
    /// Restored files up to this size are fetched into memory, larger ones into scratch files
    /// on the simulated disk.
    fetch_in_memory_bytes_max: u64,
}

#[derive(Debug)]
struct FsState {
    ops: u32,
    crash_at: Option<u32>,
    rng: rand_chacha::ChaCha8Rng,
    crashed: Option<crate::disk::PowerLoss>,
}

fn name_of(path: &Path) -> String {
    path.display().to_string()
}

impl SimFs {
    /// A seam that loses power before its `crash_at`th operation (never with `None`).
    pub fn new(crash_at: Option<u32>, seed: u64) -> Self {
        use rand::SeedableRng;
        Self {
            state: std::sync::Arc::new(std::sync::Mutex::new(FsState {
                ops: 0,
                crash_at,
                rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
                crashed: None,
            })),
            fetch_in_memory_bytes_max: sluice_core::scratch::FETCH_IN_MEMORY_BYTES_MAX,
        }
    }

    /// The same seam, fetching files larger than `max` bytes into scratch files.
    pub fn fetching(mut self, max: u64) -> Self {
        self.fetch_in_memory_bytes_max = max;
        self
    }

    /// Operations performed so far.
    pub fn ops(&self) -> u32 {
        self.lock().ops
    }

    /// What the power loss did, if it happened.
    pub fn crashed(&self) -> Option<crate::disk::PowerLoss> {
        self.lock().crashed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FsState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one operation; fails it (and every later one) once the power is gone.
    fn tick(&self) -> io::Result<()> {
        let mut s = self.lock();
        if s.crashed.is_some() {
            return Err(io::Error::other("the power is off"));
        }
        s.ops += 1;
        if s.crash_at == Some(s.ops) {
            let r = vfs::with(|v| v.disk.power_loss(&mut s.rng));
            s.crashed = Some(r);
            return Err(io::Error::other("the power failed"));
        }
        Ok(())
    }
}

impl sluice_core::place::OutputFs for SimFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        self.tick()
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn sluice_core::restore::OutputFile>> {
        self.tick()?;
        let name = name_of(path);
        vfs::with(|s| {
            s.disk.create(&name);
            s.disk.truncate(&name, 0);
        });
        Ok(Box::new(SimOutput {
            fs: self.clone(),
            name,
        }))
    }
    fn exists(&self, path: &Path) -> bool {
        vfs::with(|s| s.disk.exists(&name_of(path)))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.tick()?;
        vfs::with(|s| s.disk.delete(&name_of(path)));
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.tick()?;
        if vfs::with(|s| s.disk.rename(&name_of(from), &name_of(to))) {
            Ok(())
        } else {
            Err(io::Error::from(io::ErrorKind::NotFound))
        }
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        self.tick()
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.tick()?;
        vfs::with(|s| s.disk.sync(&name_of(path)));
        Ok(())
    }
    fn scratch(&self, _dir: &Path) -> Box<dyn sluice_core::scratch::Scratch> {
        Box::new(SimScratch::new(
            "/sim-restore-scratch",
            self.fetch_in_memory_bytes_max,
        ))
    }
}

/// A restored image being written to the simulated disk.
#[derive(Debug)]
struct SimOutput {
    fs: SimFs,
    name: String,
}

impl sluice_core::restore::Image for SimOutput {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        self.fs.tick()?;
        let at = usize::try_from(offset).map_err(io::Error::other)?;
        vfs::with(|s| s.disk.write(&self.name, at, data));
        Ok(())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.fs.tick()?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        vfs::with(|s| s.disk.truncate(&self.name, len));
        Ok(())
    }
    fn db_checksum(&mut self, page_size: u32) -> io::Result<sluice_core::checksum::DbChecksum> {
        let image = vfs::with(|s| s.disk.contents(&self.name).map(<[u8]>::to_vec))
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let mut image = image;
        sluice_core::restore::Image::db_checksum(&mut image, page_size)
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = usize::try_from(offset).map_err(io::Error::other)?;
        vfs::with(|s| {
            let src = s
                .disk
                .contents(&self.name)
                .and_then(|c| c.get(at..at + buf.len()))
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }
}

impl sluice_core::restore::OutputFile for SimOutput {
    fn sync(&mut self) -> io::Result<()> {
        self.fs.tick()?;
        vfs::with(|s| s.disk.sync(&self.name));
        Ok(())
    }
}

/// Scratch files on the simulated disk (`DIR/N`): a simulated compaction, snapshot or restore
/// that downloads a file too large for memory does no real I/O.
#[derive(Debug)]
pub struct SimScratch {
    dir: &'static str,
    in_memory_bytes_max: u64,
    created: std::sync::atomic::AtomicU64,
}

impl SimScratch {
    pub fn new(dir: &'static str, in_memory_bytes_max: u64) -> Self {
        Self {
            dir,
            in_memory_bytes_max,
            created: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Scratch files created so far.
    pub fn created(&self) -> u64 {
        self.created.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl sluice_core::scratch::Scratch for SimScratch {
    fn create(&self) -> io::Result<Box<dyn sluice_core::scratch::ScratchFile>> {
        let n = self
            .created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = PathBuf::from(format!("{}/{n}", self.dir));
        let name = path.display().to_string();
        vfs::with(|s| s.disk.create(&name));
        Ok(Box::new(SimScratchFile { name, path }))
    }

    fn location(&self) -> PathBuf {
        PathBuf::from(self.dir)
    }

    fn in_memory_bytes_max(&self) -> u64 {
        self.in_memory_bytes_max
    }
}

struct SimScratchFile {
    name: String,
    path: PathBuf,
}

impl sluice_core::scratch::ScratchFile for SimScratchFile {
    fn name(&self) -> &Path {
        &self.path
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let at = usize::try_from(offset).map_err(io::Error::other)?;
        vfs::with(|s| s.disk.write(&self.name, at, data));
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let at = usize::try_from(offset).map_err(io::Error::other)?;
        Ok(vfs::with(|s| s.disk.read(&self.name, at, buf)))
    }

    fn size(&self) -> io::Result<u64> {
        vfs::with(|s| s.disk.len(&self.name))
            .map(|n| n as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

impl Drop for SimScratchFile {
    fn drop(&mut self) {
        vfs::with(|s| s.disk.delete(&self.name));
    }
}
