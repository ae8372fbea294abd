//! A SQLite VFS over the simulated [`Disk`]: every read, write, sync, truncate, lock and
//! shared-memory call of every connection (the application's and the engine's) lands here.
//!
//! SQLite's randomness, clock and sleep come from the simulation, so a run is deterministic.
//! State is process-global (SQLite's VFS table is), so runs are serialised by [`RUN_LOCK`].
//! Handles belong to a simulated process; crashing a process makes its handles inert (no I/O
//! reaches the disk, no close logic runs) and releases their locks.
#![expect(unsafe_code, reason = "a SQLite VFS is an FFI surface")]

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::{Mutex, MutexGuard, OnceLock};

use libsqlite3_sys as ffi;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::disk::Disk;

pub const VFS_NAME: &CStr = c"sluice-sim";
/// Shared-memory region size SQLite uses.
const SHM_REGION_BYTES: usize = 32_768;

/// Serialises simulation runs within a process.
pub static RUN_LOCK: Mutex<()> = Mutex::new(());

/// A simulated process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proc {
    App,
    Engine,
}

#[derive(Debug)]
struct Handle {
    path: String,
    proc: Proc,
    dead: bool,
    lock: c_int,
    delete_on_close: bool,
    shm_shared: u8,
    shm_excl: u8,
    shm_mapped: bool,
}

#[derive(Debug, Default)]
struct Shm {
    regions: Vec<Box<[u8]>>,
    refs: u32,
}

/// Everything the VFS knows.
#[derive(Debug)]
pub struct VfsState {
    pub disk: Disk,
    shm: BTreeMap<String, Shm>,
    handles: BTreeMap<u64, Handle>,
    next_id: u64,
    rng: ChaCha8Rng,
    pub now_ms: i64,
    pub current: Proc,
    temp_counter: u64,
    /// Shared memory detached by a power loss, kept alive until the run ends because dead
    /// connections may still hold pointers into it.
    graveyard: Vec<Shm>,
}

static STATE: Mutex<Option<VfsState>> = Mutex::new(None);

fn state() -> MutexGuard<'static, Option<VfsState>> {
    STATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `f` on the VFS state. Panics if no run is active (a harness bug).
pub fn with<T>(f: impl FnOnce(&mut VfsState) -> T) -> T {
    let mut guard = state();
    #[expect(
        clippy::expect_used,
        reason = "calling the VFS outside a run is a harness bug"
    )]
    let s = guard.as_mut().expect("simulation VFS used outside a run");
    f(s)
}

/// Starts a run: fresh disk, SQLite's PRNG reseeded from `seed`.
pub fn begin_run(seed: u64, now_ms: i64) {
    register();
    *state() = Some(VfsState {
        disk: Disk::default(),
        shm: BTreeMap::new(),
        handles: BTreeMap::new(),
        next_id: 1,
        rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5157_1173),
        now_ms,
        current: Proc::App,
        temp_counter: 0,
        graveyard: Vec::new(),
    });
    // SQLite reseeds its PRNG from the default VFS's xRandomness on next use.
    // SAFETY: sqlite3_randomness(0, NULL) is the documented way to reset the PRNG.
    unsafe { ffi::sqlite3_randomness(0, std::ptr::null_mut()) };
}

pub fn end_run() {
    *state() = None;
}

impl VfsState {
    /// Makes every handle of `proc` inert and releases its locks (a process crash).
    pub fn crash(&mut self, proc: Proc) {
        for h in self.handles.values_mut().filter(|h| h.proc == proc) {
            h.dead = true;
            h.lock = ffi::SQLITE_LOCK_NONE;
            h.shm_shared = 0;
            h.shm_excl = 0;
        }
    }

    /// A power loss: every process crashes, shared memory is lost, the disk keeps only what is
    /// durable (plus a random fate for each pending write).
    pub fn power_loss(&mut self, rng: &mut impl rand::Rng) -> crate::disk::PowerLoss {
        self.crash(Proc::App);
        self.crash(Proc::Engine);
        // Regions still mapped by dead connections stay allocated until those close; they are
        // detached from the database so new connections start with fresh memory.
        let old = std::mem::take(&mut self.shm);
        self.graveyard.extend(old.into_values());
        self.disk.power_loss(rng)
    }

    /// The host is replaced by a new, empty one: every process is gone and so is the disk.
    pub fn replace_host(&mut self) {
        self.crash(Proc::App);
        self.crash(Proc::Engine);
        let old = std::mem::take(&mut self.shm);
        self.graveyard.extend(old.into_values());
        self.disk = Disk::default();
    }

    pub fn open_handles(&self, proc: Proc) -> usize {
        self.handles
            .values()
            .filter(|h| h.proc == proc && !h.dead)
            .count()
    }
}

#[repr(C)]
struct SimFile {
    base: ffi::sqlite3_file,
    id: u64,
}

fn register() {
    static REGISTERED: OnceLock<usize> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
            iVersion: 2,
            szOsFile: c_int::try_from(std::mem::size_of::<SimFile>()).unwrap_or(c_int::MAX),
            mxPathname: 512,
            pNext: std::ptr::null_mut(),
            zName: VFS_NAME.as_ptr(),
            pAppData: std::ptr::null_mut(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            xDlOpen: None,
            xDlError: None,
            xDlSym: None,
            xDlClose: None,
            xRandomness: Some(x_randomness),
            xSleep: Some(x_sleep),
            xCurrentTime: Some(x_current_time),
            xGetLastError: Some(x_get_last_error),
            xCurrentTimeInt64: Some(x_current_time_int64),
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        }));
        // SAFETY: the VFS struct is leaked, so it lives for the whole process as SQLite needs;
        // registering it as the default makes SQLite seed its PRNG from our xRandomness.
        unsafe { ffi::sqlite3_vfs_register(vfs, 1) };
        0
    });
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 2,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: None,
    xUnfetch: None,
};

/// # Safety
/// `f` must be a `SimFile` opened by [`x_open`].
unsafe fn file_id(f: *mut ffi::sqlite3_file) -> u64 {
    // SAFETY: SQLite hands back the pointer we initialised in x_open.
    unsafe { (*f.cast::<SimFile>()).id }
}

/// # Safety
/// `p` must be NULL or a NUL-terminated string.
unsafe fn cstr(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: SQLite passes NUL-terminated names.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Runs `f` with the state and the live handle `id`; a dead handle gets `dead` instead.
fn with_handle(id: u64, dead: c_int, f: impl FnOnce(&mut VfsState, &str) -> c_int) -> c_int {
    with(|s| {
        let Some(h) = s.handles.get(&id) else {
            return ffi::SQLITE_IOERR;
        };
        if h.dead {
            return dead;
        }
        let path = h.path.clone();
        f(s, &path)
    })
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: name is NULL or NUL-terminated.
    let name = unsafe { cstr(name) };
    let rc = with(|s| {
        let path = name.unwrap_or_else(|| {
            s.temp_counter += 1;
            format!("/sim/temp-{}", s.temp_counter)
        });
        if !s.disk.exists(&path) {
            if flags & ffi::SQLITE_OPEN_CREATE == 0 {
                return Err(ffi::SQLITE_CANTOPEN);
            }
            s.disk.create(&path);
        }
        let id = s.next_id;
        s.next_id += 1;
        let h = Handle {
            path,
            proc: s.current,
            dead: false,
            lock: ffi::SQLITE_LOCK_NONE,
            delete_on_close: flags & ffi::SQLITE_OPEN_DELETEONCLOSE != 0,
            shm_shared: 0,
            shm_excl: 0,
            shm_mapped: false,
        };
        s.handles.insert(id, h);
        Ok(id)
    });
    let sim = file.cast::<SimFile>();
    match rc {
        Ok(id) => {
            // SAFETY: SQLite allocated szOsFile bytes for the file object.
            unsafe {
                (*sim).base.pMethods = &IO_METHODS;
                (*sim).id = id;
                if !out_flags.is_null() {
                    *out_flags = flags;
                }
            }
            ffi::SQLITE_OK
        }
        Err(rc) => {
            // SAFETY: as above; a failed open must leave pMethods NULL.
            unsafe { (*sim).base.pMethods = std::ptr::null() };
            rc
        }
    }
}

unsafe extern "C" fn x_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    _sync_dir: c_int,
) -> c_int {
    // SAFETY: NUL-terminated name from SQLite.
    if let Some(name) = unsafe { cstr(name) } {
        with(|s| s.disk.delete(&name));
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_access(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    _flags: c_int,
    out: *mut c_int,
) -> c_int {
    // SAFETY: NUL-terminated name from SQLite.
    let name = unsafe { cstr(name) }.unwrap_or_default();
    let exists = with(|s| s.disk.exists(&name));
    // SAFETY: out points to an int SQLite owns.
    unsafe { *out = c_int::from(exists) };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: NUL-terminated input, output buffer of n_out bytes.
    unsafe {
        let src = CStr::from_ptr(name).to_bytes_with_nul();
        if src.len() > usize::try_from(n_out).unwrap_or(0) {
            return ffi::SQLITE_CANTOPEN;
        }
        std::ptr::copy_nonoverlapping(src.as_ptr().cast::<c_char>(), out, src.len());
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_randomness(
    _vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    let len = usize::try_from(n).unwrap_or(0);
    let mut buf = vec![0u8; len];
    with(|s| s.rng.fill_bytes(&mut buf));
    // SAFETY: out has n bytes.
    unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr().cast::<c_char>(), out, len) };
    n
}

unsafe extern "C" fn x_sleep(_vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    with(|s| s.now_ms += i64::from(micros) / 1000);
    micros
}

unsafe extern "C" fn x_current_time(_vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    let ms = with(|s| s.now_ms);
    // SAFETY: out points to a double SQLite owns.
    unsafe { *out = 2_440_587.5 + ms as f64 / 86_400_000.0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_current_time_int64(
    _vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    let ms = with(|s| s.now_ms);
    // SAFETY: out points to an int64 SQLite owns. Julian day 2440587.5 in ms.
    unsafe { *out = 210_866_760_000_000 + ms };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_get_last_error(
    _vfs: *mut ffi::sqlite3_vfs,
    _n: c_int,
    _out: *mut c_char,
) -> c_int {
    0
}

unsafe extern "C" fn x_close(f: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: f is one of ours.
    let id = unsafe { file_id(f) };
    with(|s| {
        if let Some(h) = s.handles.remove(&id)
            && h.delete_on_close
            && !h.dead
        {
            s.disk.delete(&h.path);
        }
    });
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_read(
    f: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    off: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: f is one of ours; buf has amt bytes.
    let (id, out) = unsafe {
        (
            file_id(f),
            std::slice::from_raw_parts_mut(buf.cast::<u8>(), usize::try_from(amt).unwrap_or(0)),
        )
    };
    with_handle(id, ffi::SQLITE_IOERR, |s, path| {
        let n = s.disk.read(path, usize::try_from(off).unwrap_or(0), out);
        if n < out.len() {
            out[n..].fill(0);
            return ffi::SQLITE_IOERR_SHORT_READ;
        }
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_write(
    f: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    off: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: f is one of ours; buf has amt bytes.
    let (id, data) = unsafe {
        (
            file_id(f),
            std::slice::from_raw_parts(buf.cast::<u8>(), usize::try_from(amt).unwrap_or(0)),
        )
    };
    with_handle(id, ffi::SQLITE_IOERR, |s, path| {
        s.disk.write(path, usize::try_from(off).unwrap_or(0), data);
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_truncate(f: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    // SAFETY: f is one of ours.
    let id = unsafe { file_id(f) };
    with_handle(id, ffi::SQLITE_IOERR, |s, path| {
        s.disk.truncate(path, usize::try_from(size).unwrap_or(0));
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_sync(f: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    // SAFETY: f is one of ours.
    let id = unsafe { file_id(f) };
    with_handle(id, ffi::SQLITE_IOERR, |s, path| {
        s.disk.sync(path);
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_file_size(f: *mut ffi::sqlite3_file, out: *mut ffi::sqlite3_int64) -> c_int {
    // SAFETY: f is one of ours.
    let id = unsafe { file_id(f) };
    let mut size = 0i64;
    let rc = with_handle(id, ffi::SQLITE_IOERR, |s, path| {
        size = i64::try_from(s.disk.len(path).unwrap_or(0)).unwrap_or(0);
        ffi::SQLITE_OK
    });
    // SAFETY: out points to an int64 SQLite owns.
    unsafe { *out = size };
    rc
}

/// The highest lock any other live handle holds on `path`.
fn others_max(s: &VfsState, id: u64, path: &str) -> c_int {
    s.handles
        .iter()
        .filter(|(hid, h)| **hid != id && !h.dead && h.path == path)
        .map(|(_, h)| h.lock)
        .max()
        .unwrap_or(ffi::SQLITE_LOCK_NONE)
}

unsafe extern "C" fn x_lock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: f is one of ours.
    let id = unsafe { file_id(f) };
    with_handle(id, ffi::SQLITE_IOERR, |s, path| {
        let others = others_max(s, id, path);
        let Some(h) = s.handles.get_mut(&id) else {
            return ffi::SQLITE_IOERR;
        };
        if h.lock >= level {
            return ffi::SQLITE_OK;
        }
        let granted = match level {
            ffi::SQLITE_LOCK_SHARED => others < ffi::SQLITE_LOCK_PENDING,
            ffi::SQLITE_LOCK_RESERVED => others < ffi::SQLITE_LOCK_RESERVED,
            ffi::SQLITE_LOCK_EXCLUSIVE => {
                if others >= ffi::SQLITE_LOCK_RESERVED {
                    false
                } else if others == ffi::SQLITE_LOCK_SHARED {
                    // Keep new readers out while we wait, as the unix VFS does.
                    h.lock = ffi::SQLITE_LOCK_PENDING;
                    false
                } else {
                    true
                }
            }
            _ => true,
        };
        if granted {
            h.lock = level;
            ffi::SQLITE_OK
        } else {
            ffi::SQLITE_BUSY
        }
    })
}

unsafe extern "C" fn x_unlock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: f is one of ours.
    let id = unsafe { file_id(f) };
    with(|s| {
        if let Some(h) = s.handles.get_mut(&id) {
            h.lock = h.lock.min(level);
        }
    });
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_check_reserved_lock(f: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: f is one of ours.
    let id = unsafe { file_id(f) };
    let mut reserved = false;
    let rc = with_handle(id, ffi::SQLITE_IOERR, |s, path| {
        reserved = others_max(s, id, path) >= ffi::SQLITE_LOCK_RESERVED;
        ffi::SQLITE_OK
    });
    // SAFETY: out points to an int SQLite owns.
    unsafe { *out = c_int::from(reserved) };
    rc
}

unsafe extern "C" fn x_file_control(
    _f: *mut ffi::sqlite3_file,
    _op: c_int,
    _arg: *mut c_void,
) -> c_int {
    ffi::SQLITE_NOTFOUND
}

unsafe extern "C" fn x_sector_size(_f: *mut ffi::sqlite3_file) -> c_int {
    c_int::try_from(crate::disk::SECTOR_BYTES).unwrap_or(512)
}

unsafe extern "C" fn x_device_characteristics(_f: *mut ffi::sqlite3_file) -> c_int {
    // Claim nothing: no atomic writes, no powersafe overwrite, no sequential ordering.
    0
}

unsafe extern "C" fn x_shm_map(
    f: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: f is one of ours.
    let id = unsafe { file_id(f) };
    let region = usize::try_from(region).unwrap_or(0);
    let size = usize::try_from(size).unwrap_or(SHM_REGION_BYTES);
    let mut ptr: *mut c_void = std::ptr::null_mut();
    let rc = with_handle(id, ffi::SQLITE_IOERR, |s, path| {
        let shm = s.shm.entry(path.to_string()).or_default();
        if shm.regions.len() <= region {
            if extend == 0 {
                return ffi::SQLITE_OK;
            }
            while shm.regions.len() <= region {
                shm.regions.push(vec![0u8; size].into_boxed_slice());
            }
        }
        ptr = shm.regions[region].as_mut_ptr().cast::<c_void>();
        let first_map = s.handles.get(&id).is_some_and(|h| !h.shm_mapped);
        if first_map {
            if let Some(shm) = s.shm.get_mut(path) {
                shm.refs += 1;
            }
            if let Some(h) = s.handles.get_mut(&id) {
                h.shm_mapped = true;
            }
        }
        ffi::SQLITE_OK
    });
    // SAFETY: out points to a pointer SQLite owns. Regions are boxed, so they never move.
    unsafe { *out = ptr };
    rc
}

unsafe extern "C" fn x_shm_lock(
    f: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: f is one of ours.
    let id = unsafe { file_id(f) };
    let mask: u8 = (offset..offset + n).fold(0u8, |m, i| m | (1u8 << (i as u32 & 7)));
    with_handle(id, ffi::SQLITE_IOERR, |s, path| {
        let (mut shared_others, mut excl_others) = (0u8, 0u8);
        for (hid, h) in &s.handles {
            if *hid != id && !h.dead && h.path == path {
                shared_others |= h.shm_shared;
                excl_others |= h.shm_excl;
            }
        }
        let Some(h) = s.handles.get_mut(&id) else {
            return ffi::SQLITE_IOERR;
        };
        if flags & ffi::SQLITE_SHM_UNLOCK != 0 {
            if flags & ffi::SQLITE_SHM_SHARED != 0 {
                h.shm_shared &= !mask;
            } else {
                h.shm_excl &= !mask;
            }
            return ffi::SQLITE_OK;
        }
        if flags & ffi::SQLITE_SHM_SHARED != 0 {
            if excl_others & mask != 0 {
                return ffi::SQLITE_BUSY;
            }
            h.shm_shared |= mask;
        } else {
            if (excl_others | shared_others) & mask != 0 {
                return ffi::SQLITE_BUSY;
            }
            h.shm_excl |= mask;
        }
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_shm_barrier(_f: *mut ffi::sqlite3_file) {}

unsafe extern "C" fn x_shm_unmap(f: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    // SAFETY: f is one of ours.
    let id = unsafe { file_id(f) };
    with(|s| {
        let Some(h) = s.handles.get_mut(&id) else {
            return;
        };
        if !h.shm_mapped {
            return;
        }
        h.shm_mapped = false;
        let (path, dead) = (h.path.clone(), h.dead);
        if let Some(shm) = s.shm.get_mut(&path) {
            shm.refs = shm.refs.saturating_sub(1);
            // The last clean close deletes the -shm; a crashed process leaves it behind.
            if shm.refs == 0 && delete != 0 && !dead {
                s.shm.remove(&path);
            }
        }
    });
    ffi::SQLITE_OK
}
