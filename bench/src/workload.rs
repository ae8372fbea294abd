//! The databases and writers the benchmark drives: real SQLite in this process.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::{Connection, params};

pub const PAGE_SIZE: u32 = 4096;
const SEED: u64 = 0xbe7c_4096;

/// Opens (creating) a WAL database with the application's usual settings: `synchronous =
/// NORMAL`, SQLite's default auto-checkpoint, a busy timeout so a replicator's lock waits.
pub fn open(db: &Path) -> Result<Connection> {
    let conn = Connection::open(db).with_context(|| format!("cannot open {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch(&format!(
        "PRAGMA page_size = {PAGE_SIZE}; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
    ))?;
    Ok(conn)
}

/// Folds the WAL into the database file so the file alone is the expected restore result.
pub fn checkpoint_truncate(conn: &Connection) -> Result<()> {
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    anyhow::ensure!(busy == 0, "the final checkpoint was blocked");
    Ok(())
}

/// The seed's workload: `rows` rows in `commits` transactions (key, text of 20-160 bytes, and
/// every seventh commit a 6 KiB blob), the same bytes on every run. `after_commit` runs after
/// each commit (to wait for a replicator to ship it, for one file per commit).
pub fn seed_rows(
    conn: &mut Connection,
    rows: u64,
    commits: u64,
    mut after_commit: impl FnMut() -> Result<()>,
) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE rows (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT, b BLOB);
         CREATE INDEX rows_k ON rows (k);",
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let per_commit = rows.div_ceil(commits);
    let mut id = 0i64;
    for commit in 0..commits {
        let tx = conn.transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO rows (id, k, v) VALUES (?1, ?2, ?3)")?;
            for _ in 0..per_commit {
                id += 1;
                let v: String = (0..rng.random_range(20..160))
                    .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
                    .collect();
                insert.execute(params![id, format!("key-{id:08}"), v])?;
            }
            if commit % 7 == 3 {
                let mut blob = vec![0u8; PAGE_SIZE as usize * 3 / 2];
                rng.fill_bytes(&mut blob);
                tx.execute(
                    "UPDATE rows SET b = ?1 WHERE id = ?2",
                    params![blob, rng.random_range(1..=id)],
                )?;
            }
        }
        tx.commit()?;
        after_commit()?;
    }
    Ok(())
}

/// Bytes of each row of the large database: random, so neither tool's compression helps, and
/// under a page so a row is one page's worth of cell.
pub const BLOB_BYTES: usize = 3000;

/// Fills a new database with random rows until the file holds `bytes` (a database above
/// 1 GiB crosses SQLite's lock-byte page). Returns the row count.
pub fn large(db: &Path, bytes: u64) -> Result<u64> {
    let mut conn = open(db)?;
    conn.execute_batch("CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB NOT NULL);")?;
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ bytes);
    let rows = bytes / PAGE_SIZE as u64;
    let per_tx = 2000u64;
    let mut blob = vec![0u8; BLOB_BYTES];
    let mut id = 0u64;
    while id < rows {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT INTO blobs (id, b) VALUES (?1, ?2)")?;
            for _ in 0..per_tx.min(rows - id) {
                id += 1;
                rng.fill_bytes(&mut blob);
                insert.execute(params![id as i64, blob])?;
            }
        }
        tx.commit()?;
    }
    checkpoint_truncate(&conn)?;
    Ok(rows)
}

/// Random single-row updates of the large database at `per_second` until `stop`, with the
/// default auto-checkpoint (the load under which a replicator that loses WAL continuity
/// rereads the database). `run` picks the values written. Returns the commits made and the
/// bytes of the WAL frames they wrote ([`wal_frames_counted`]).
pub fn update_load(
    db: &Path,
    rows: u64,
    per_second: u64,
    run: u64,
    stop: &AtomicBool,
) -> Result<(u64, u64)> {
    let mut conn = open(db)?;
    let frames = wal_frames_counted(&mut conn)?;
    // Each run its own values: SQLite writes nothing for an UPDATE that stores the bytes a
    // row already holds, so a second run drawing the first one's would be idle load.
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 0x5eed ^ run.wrapping_mul(0x9e37_79b9));
    let mut update = conn.prepare("UPDATE blobs SET b = ?1 WHERE id = ?2")?;
    let mut blob = vec![0u8; BLOB_BYTES];
    let period = Duration::from_secs(1) / u32::try_from(per_second)?;
    let start = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = start + period * u32::try_from(n)?;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        rng.fill_bytes(&mut blob);
        update.execute(params![blob, rng.random_range(1..=rows) as i64])?;
        n += 1;
    }
    let frames = frames.load(Ordering::Relaxed);
    Ok((n, frames * (u64::from(PAGE_SIZE) + WAL_FRAME_HEADER)))
}

const WAL_FRAME_HEADER: u64 = 24;
/// SQLite's default automatic checkpoint: a PASSIVE one after a commit that leaves the WAL
/// at this many frames or more.
const AUTOCHECKPOINT_FRAMES: i32 = 1000;

/// Counts the WAL frames the connection's commits write, with a WAL hook that also makes
/// SQLite's default automatic checkpoint (the hook replaces it; `sqlite3WalDefaultHook` is
/// this: a PASSIVE checkpoint once a commit leaves 1,000 frames or more). The hook is told
/// the WAL's frames after each commit; fewer than before means the commit restarted it.
fn wal_frames_counted(conn: &mut Connection) -> Result<std::sync::Arc<AtomicU64>> {
    let frames = std::sync::Arc::new(AtomicU64::new(0));
    let counted = frames.clone();
    let mut before = 0i32;
    conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, now: i32| {
        let written = if now > before { now - before } else { now };
        counted.fetch_add(u64::try_from(written).unwrap_or(0), Ordering::Relaxed);
        before = now;
        if now >= AUTOCHECKPOINT_FRAMES {
            // As SQLite's own hook: a busy or failed checkpoint is not the commit's error.
            let _ = wal.checkpoint();
        }
        Ok(())
    }))?;
    Ok(frames)
}

pub const MARKER: &[u8] = b"<seq:";
pub const MARKER_DIGITS: usize = 10;
/// Filler after the marker: rows of about 200 bytes, 15-20 to a page.
const FILLER_BYTES: usize = 180;

pub fn marker_schema(conn: &Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL);")?;
    Ok(())
}

/// Row `seq` carries `<seq:SEQ>` in its text, so a replica's pages show which commits it
/// holds. Commits `1..=commits` at `per_second`, each an autocommit INSERT; a late commit is
/// made at once, never skipped. Returns when each COMMIT returned.
pub fn marker_commits(conn: &Connection, per_second: f64, commits: u64) -> Result<Vec<Instant>> {
    let mut insert = conn.prepare("INSERT INTO t (id, v) VALUES (?1, ?2)")?;
    let filler = "x".repeat(FILLER_BYTES);
    let mut returned = Vec::with_capacity(usize::try_from(commits)?);
    let period = Duration::from_secs_f64(1.0 / per_second);
    let start = Instant::now();
    for seq in 1..=commits {
        let due = start + period.mul_f64((seq - 1) as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let text = format!("<seq:{seq:0width$}>{filler}", width = MARKER_DIGITS);
        insert.execute(params![seq as i64, text])?;
        returned.push(Instant::now());
    }
    Ok(returned)
}

/// The largest `<seq:NNNNNNNNNN>` marker in a page, 0 if none. Old copies of rows left in free
/// space by page splits only ever hold smaller numbers.
pub fn newest_marker(page: &[u8]) -> u64 {
    let mut newest = 0u64;
    let mut at = 0usize;
    while let Some(found) = page[at..].windows(MARKER.len()).position(|w| w == MARKER) {
        let digits_at = at + found + MARKER.len();
        if let Some(digits) = page.get(digits_at..digits_at + MARKER_DIGITS)
            && digits.iter().all(u8::is_ascii_digit)
            && page.get(digits_at + MARKER_DIGITS) == Some(&b'>')
        {
            let n = digits
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            newest = newest.max(n);
        }
        at = digits_at;
    }
    newest
}

/// Single-row commits as fast as one connection makes them, for `length`. Returns commits/s.
pub fn saturate(conn: &Connection, length: Duration) -> Result<f64> {
    let mut insert = conn.prepare("INSERT INTO t (v) VALUES (?1)")?;
    let filler = "y".repeat(FILLER_BYTES);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < length {
        insert.execute(params![filler])?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_marker_takes_the_largest_well_formed_marker() {
        let mut page = vec![0u8; 256];
        page[10..26].copy_from_slice(b"<seq:0000000042>");
        page[100..116].copy_from_slice(b"<seq:0000000007>");
        // Truncated or malformed markers do not count.
        page[200..215].copy_from_slice(b"<seq:000000099x");
        assert_eq!(newest_marker(&page), 42);
        assert_eq!(newest_marker(&[0u8; 64]), 0);
    }

    #[test]
    fn the_wal_hook_counts_every_frame_written_and_still_checkpoints() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("a.db");
        let mut conn = open(&db).expect("open");
        conn.execute_batch("CREATE TABLE t (b BLOB)")
            .expect("schema");
        // The hook counts from an empty WAL, as the load starts (each run checkpoints).
        checkpoint_truncate(&conn).expect("checkpoint");
        let frames = wal_frames_counted(&mut conn).expect("hook");
        let wal_frames = |db: &Path| {
            let len = std::fs::metadata(db.with_extension("db-wal")).map_or(0, |m| m.len());
            len.saturating_sub(32) / (u64::from(PAGE_SIZE) + WAL_FRAME_HEADER)
        };
        let commit = |conn: &Connection| {
            conn.execute("INSERT INTO t (b) VALUES (zeroblob(3000))", [])
                .expect("insert")
        };
        // A reader holding a snapshot: nothing restarts the WAL, so its file holds every frame.
        let reader = open(&db).expect("reader");
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM t;")
            .expect("read");
        for _ in 0..1500 {
            commit(&conn);
        }
        let held = frames.load(Ordering::Relaxed);
        assert_eq!(held, wal_frames(&db), "every frame counted once");
        assert!(held >= 1500, "at least a frame a commit: {held}");
        // Released: the hook's checkpoints let the WAL restart, and the count goes on.
        reader.execute_batch("COMMIT").expect("end read");
        for _ in 0..3000 {
            commit(&conn);
        }
        let after = frames.load(Ordering::Relaxed) - held;
        assert!(after >= 3000, "at least a frame a commit: {after}");
        // The file is rewritten from its start after a restart, never shortened.
        assert!(
            wal_frames(&db) < held + after,
            "the WAL restarted: {} frames in the file, {} written",
            wal_frames(&db),
            held + after
        );
    }
}
