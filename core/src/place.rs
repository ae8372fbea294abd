//! Restoring into place: a restored database appears at its path whole, or not at all.

use crate::scratch::{OsScratch, Scratch};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use crate::args::IntegrityCheck;
use crate::replica::{FileInfo, Replica};
use crate::restore;

/// The `-wal` and `-shm` files beside a database.
pub fn sidecars(path: &Path) -> [PathBuf; 2] {
    let s = path.as_os_str().to_owned();
    let with = |suffix: &str| {
        let mut p = s.clone();
        p.push(suffix);
        PathBuf::from(p)
    };
    [with("-wal"), with("-shm")]
}

/// The local-file seam of a restore: where the restored database is written and moved into
/// place. Real files in production ([`OsFs`]); the simulated disk in the simulator, which
/// crashes in the middle of a restore and checks what each step left behind.
pub trait OutputFs: Send + Sync {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()>;
    /// Creates `path` (truncating it if it exists) for the restored image. Nothing it holds is
    /// durable before [`restore::OutputFile::sync`].
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn restore::OutputFile>>;
    fn exists(&self, path: &Path) -> bool;
    /// Removes a file; a missing one is not an error.
    fn remove(&self, path: &Path) -> std::io::Result<()>;
    /// Renames atomically: a crash leaves either name, never a mix. The new name is durable
    /// only once [`OutputFs::sync_dir`] of its directory returns.
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()>;
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()>;
    /// Fsyncs the file at `path` (opened again by name).
    fn sync_file(&self, path: &Path) -> std::io::Result<()>;
    /// Where the restore downloads files too large for memory, beside the output in `dir`.
    fn scratch(&self, dir: &Path) -> Box<dyn Scratch>;
}

/// The real filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsFs;

impl OutputFs for OsFs {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn restore::OutputFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(restore::OsOutput(f)))
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
    fn sync_file(&self, path: &Path) -> std::io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }
    fn scratch(&self, dir: &Path) -> Box<dyn Scratch> {
        Box::new(OsScratch::new(dir))
    }
}

/// Restores `files` into `<output>.tmp`, fsyncs and checks it, and only then renames it into
/// place and fsyncs the directory (removing stale `-wal`/`-shm` files first when `force`).
/// Nothing is left at the output path on failure, and a crash at any point leaves either no
/// database at the output path or the whole restored one.
#[expect(
    clippy::too_many_arguments,
    reason = "the restore command's options, passed through as they are"
)]
pub async fn restore_into_place(
    fs: &dyn OutputFs,
    replica: &Replica,
    files: Vec<FileInfo>,
    output: &Path,
    parallelism: usize,
    check: IntegrityCheck,
    force: bool,
    show_progress: bool,
) -> Result<restore::RestoreReport> {
    let parent = output.parent().unwrap_or(Path::new("/")).to_path_buf();
    fs.create_dir_all(&parent)
        .with_context(|| format!("cannot create output directory {}", parent.display()))?;
    let mut tmp = output.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = if show_progress {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} restoring [{bar:30}] {bytes}/{total_bytes} {msg}",
            )
            .map_err(|e| anyhow!(e))?,
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let progress = bar.clone();
    let out = fs
        .create(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let scratch = fs.scratch(&parent);
    let result = restore::restore_to(
        replica,
        files,
        out,
        &tmp,
        scratch.as_ref(),
        parallelism,
        move |f: &FileInfo| {
            progress.inc(f.size);
            progress.set_message(format!("TXID {:016x}", f.max_txid));
        },
    )
    .await;
    bar.finish_and_clear();
    let fail = |e: anyhow::Error| {
        let _ = fs.remove(&tmp);
        e
    };
    let (report, mut out) = result.map_err(|e| fail(e.into()))?;
    let rename_first = crate::planted::active(crate::planted::Bug::RenameBeforeFsync);
    if !rename_first {
        out.sync()
            .with_context(|| format!("cannot sync {}", tmp.display()))
            .map_err(fail)?;
    }
    drop(out);
    if check != IntegrityCheck::None {
        integrity_check(&tmp, check).map_err(fail)?;
    }
    if force {
        for side in sidecars(output) {
            fs.remove(&side)
                .with_context(|| format!("cannot remove {}", side.display()))?;
        }
    }
    fs.rename(&tmp, output)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), output.display()))?;
    if rename_first {
        // The planted bug: the name is in place before the bytes are durable.
        fs.sync_file(output)
            .with_context(|| format!("cannot sync {}", output.display()))?;
    }
    fs.sync_dir(&parent)
        .with_context(|| format!("cannot sync directory {}", parent.display()))?;
    Ok(report)
}

/// The sidecar's restore (`restore -if-db-not-exists`, `replicate -restore-if-db-not-exists`):
/// the replica's latest state into `path`, unless a database is already there. `Ok(None)`:
/// nothing to do (the database exists, or the replica is empty: a new database starts).
pub async fn restore_if_missing(
    fs: &dyn OutputFs,
    replica: &Replica,
    path: &Path,
) -> Result<Option<restore::RestoreReport>> {
    if fs.exists(path) {
        return Ok(None);
    }
    let files = replica.list_all_untimed().await?;
    match restore::plan(&replica.describe(), &files, restore::Target::Latest) {
        Ok(plan) => {
            let report = restore_into_place(
                fs,
                replica,
                plan,
                path,
                restore::PARALLELISM_DEFAULT,
                IntegrityCheck::None,
                false,
                false,
            )
            .await?;
            Ok(Some(report))
        }
        Err(restore::RestoreError::ReplicaEmpty { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn integrity_check(path: &Path, mode: IntegrityCheck) -> Result<()> {
    let uri = format!("file:{}?immutable=1", path.display());
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let conn = rusqlite::Connection::open_with_flags(&uri, flags)
        .with_context(|| format!("integrity check: cannot open {}", path.display()))?;
    let pragma = if mode == IntegrityCheck::Quick {
        "PRAGMA quick_check"
    } else {
        "PRAGMA integrity_check"
    };
    let mut stmt = conn.prepare(pragma)?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if rows != ["ok"] {
        bail!(
            "integrity check of restored database failed: {}",
            rows.join("; ")
        );
    }
    Ok(())
}
