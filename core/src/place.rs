//! Restoring into place: a restored database appears at its path whole, or not at all.

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

/// Restores `files` into `<output>.tmp`, checks it, and only then moves it into place (removing
/// stale `-wal`/`-shm` files first when `force`). Nothing is left at the output path on failure.
pub async fn restore_into_place(
    replica: &Replica,
    files: Vec<FileInfo>,
    output: &Path,
    parallelism: usize,
    check: IntegrityCheck,
    force: bool,
    show_progress: bool,
) -> Result<restore::RestoreReport> {
    let parent = output.parent().unwrap_or(Path::new("/")).to_path_buf();
    std::fs::create_dir_all(&parent)
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
    let result = restore::restore_to(replica, files, &tmp, parallelism, move |f: &FileInfo| {
        progress.inc(f.size);
        progress.set_message(format!("TXID {:016x}", f.max_txid));
    })
    .await;
    bar.finish_and_clear();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
    };
    if check != IntegrityCheck::None
        && let Err(e) = integrity_check(&tmp, check)
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if force {
        for side in sidecars(output) {
            match std::fs::remove_file(&side) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", side.display()));
                }
            }
        }
    }
    std::fs::rename(&tmp, output)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), output.display()))?;
    std::fs::File::open(&parent)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", parent.display()))?;
    Ok(report)
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
