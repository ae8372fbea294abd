//! File notifications that wake an idle job at the application's first write, and cost the
//! application nothing once the job is busy anyway.
//!
//! A watch on a file makes the kernel queue an event at every `write` to it, inside the
//! writer's own system call: measured with a writer committing as fast as it can, a watch of
//! the database's directory for modifications (what a directory watch with the `notify`
//! crate's mask amounts to) took 20-30 % of its commits a second. The job only needs the first
//! write after it went idle: once a change is pending it polls the stamp on its own schedule
//! and ignores notifications. So the database and its WAL are watched with `IN_ONESHOT`,
//! armed when the job is about to sleep with nothing pending; the first write fires and
//! removes the watch, and every later write costs the writer nothing until the job is idle
//! again. The directory is watched for entries created, removed or renamed under the
//! database's name (rare events: a WAL appearing, a database replaced), always.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// What a write to the database or its WAL shows (`ftruncate` included).
const FILE_EVENTS: AddWatchFlags = AddWatchFlags::IN_MODIFY;
/// What happens to the directory's entries.
const DIR_EVENTS: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO);

/// The job's watch of its database. Dropping it stops the task that reads the events.
pub struct DbWatch {
    inotify: Arc<Inotify>,
    files: [PathBuf; 2],
    armed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// The descriptor as tokio's reactor wants it.
struct Fd(Arc<Inotify>);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl DbWatch {
    /// Watches `db`'s directory and starts the task that wakes `wake` at each notification
    /// that concerns the database. Call [`DbWatch::arm`] before each sleep while idle.
    pub fn start(db: &Path, wake: Arc<Notify>) -> std::io::Result<DbWatch> {
        let dir = match db.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = db.file_name().map(OsString::from).unwrap_or_default();
        let inotify = Arc::new(Inotify::init(
            InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC,
        )?);
        let dir_wd = inotify.add_watch(&dir, DIR_EVENTS)?;
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let armed = Arc::new(AtomicBool::new(false));
        // SAFETY: `Fd` holds the inotify descriptor through an `Arc` for as long as the
        // `AsyncFd` lives (the task owns both), so it is neither closed nor replaced while
        // registered with the reactor.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register(Fd(inotify.clone()))? };
        let task = tokio::spawn(read_events(fd, dir_wd, name, armed.clone(), wake));
        Ok(DbWatch {
            inotify,
            files: [db.to_path_buf(), PathBuf::from(wal)],
            armed,
            task,
        })
    }

    /// Arms the one-shot watches of the database and its WAL unless they are armed. Returns
    /// true if it armed them: a write made before that woke nothing, so the caller looks at
    /// the files once more before it sleeps. A file that does not exist yet is not watched;
    /// its creation is a directory event.
    pub fn arm(&self) -> bool {
        if self.armed.swap(true, Ordering::SeqCst) {
            return false;
        }
        for file in &self.files {
            match self
                .inotify
                .add_watch(file, FILE_EVENTS | AddWatchFlags::IN_ONESHOT)
            {
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(e) => tracing::debug!(file = %file.display(), error = %e, "cannot watch"),
            }
        }
        true
    }

    /// Whether the one-shot watches are armed (none of them has fired since [`DbWatch::arm`]).
    pub fn is_armed(&self) -> bool {
        self.armed.load(Ordering::SeqCst)
    }
}

impl Drop for DbWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_events(
    fd: AsyncFd<Fd>,
    dir_wd: WatchDescriptor,
    name: OsString,
    armed: Arc<AtomicBool>,
    wake: Arc<Notify>,
) {
    loop {
        let mut ready = match fd.readable().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "file notifications stopped; polling instead");
                return;
            }
        };
        let events = match ready.get_inner().0.read_events() {
            Ok(events) => events,
            Err(Errno::EAGAIN) => {
                ready.clear_ready();
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "file notifications stopped; polling instead");
                return;
            }
        };
        let mut concerns_us = false;
        for event in events {
            if event.wd == dir_wd {
                if event
                    .name
                    .as_ref()
                    .is_some_and(|n| n.as_encoded_bytes().starts_with(name.as_encoded_bytes()))
                {
                    // A file of ours created, removed or renamed: a watch of the old file
                    // watches nothing now, so the next idle sleep arms the one at the path.
                    armed.store(false, Ordering::SeqCst);
                    concerns_us = true;
                }
            } else {
                // A one-shot watch fired, or its file is gone (`IN_IGNORED`): either way the
                // watch is gone, and the next idle sleep arms it again.
                armed.store(false, Ordering::SeqCst);
                concerns_us |= !event.mask.contains(AddWatchFlags::IN_IGNORED);
            }
        }
        if concerns_us {
            wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    /// The watches the kernel holds on the inotify descriptor (`/proc/self/fdinfo`).
    fn kernel_watches(w: &DbWatch) -> usize {
        let fd = w.inotify.as_fd().as_raw_fd();
        std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .expect("fdinfo")
            .lines()
            .filter(|l| l.starts_with("inotify wd:"))
            .count()
    }

    /// A directory holding `app.db` (and its WAL, `with_wal`), and the watch of it.
    fn watched(with_wal: bool) -> (tempfile::TempDir, PathBuf, Arc<Notify>, DbWatch) {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("app.db");
        std::fs::write(&db, b"db").expect("db");
        let wal = dir.path().join("app.db-wal");
        if with_wal {
            std::fs::write(&wal, b"").expect("wal");
        }
        let wake = Arc::new(Notify::new());
        let w = DbWatch::start(&db, wake.clone()).expect("watch");
        (dir, wal, wake, w)
    }

    async fn woken(wake: &Notify) {
        tokio::time::timeout(Duration::from_secs(10), wake.notified())
            .await
            .expect("no notification within 10 s");
    }

    #[tokio::test]
    async fn a_write_fires_the_armed_watch_once_and_later_writes_are_not_watched() {
        let (_dir, wal_path, wake, w) = watched(true);
        let mut wal = std::fs::OpenOptions::new()
            .append(true)
            .open(&wal_path)
            .expect("wal");
        assert_eq!(kernel_watches(&w), 1, "the directory only, until armed");
        assert!(w.arm(), "the first arm arms");
        assert!(!w.arm(), "armed already");
        assert_eq!(kernel_watches(&w), 3, "directory, database, WAL");
        wal.write_all(b"frame").expect("write");
        woken(&wake).await;
        assert!(!w.is_armed(), "the write fired the one-shot watch");
        assert_eq!(
            kernel_watches(&w),
            2,
            "the WAL's watch is gone from the kernel"
        );
        // Unwatched now: the next writes queue nothing until the job arms again.
        wal.write_all(b"more frames").expect("write");
        assert!(w.arm(), "a fired watch is armed again");
        assert_eq!(kernel_watches(&w), 3);
        wal.write_all(b"and more").expect("write");
        woken(&wake).await;
    }

    #[tokio::test]
    async fn a_wal_removed_and_created_again_is_watched_at_the_next_arm() {
        let (_dir, wal_path, wake, w) = watched(true);
        assert!(w.arm());
        // The application's last connection closes (SQLite removes the WAL), a new one opens.
        std::fs::remove_file(&wal_path).expect("remove");
        woken(&wake).await;
        let mut wal = std::fs::File::create(&wal_path).expect("wal again");
        woken(&wake).await;
        assert!(!w.is_armed(), "the old WAL's watch watches nothing now");
        assert!(w.arm());
        assert_eq!(kernel_watches(&w), 3, "directory, database, the new WAL");
        wal.write_all(b"frame").expect("write");
        woken(&wake).await;
    }

    #[tokio::test]
    async fn the_wal_appearing_wakes_the_job_whether_armed_or_not() {
        let (dir, wal_path, wake, w) = watched(false);
        // Armed while there is no WAL: only the database is watched.
        assert!(w.arm());
        assert_eq!(kernel_watches(&w), 2, "directory and database");
        std::fs::write(dir.path().join("other.db-wal"), b"x").expect("write");
        std::fs::write(&wal_path, b"x").expect("write");
        woken(&wake).await;
        assert!(!w.is_armed(), "a new WAL needs arming to be watched");
        assert!(w.arm());
        assert_eq!(kernel_watches(&w), 3, "directory, database, the new WAL");
    }
}
