//! The chaos writer: a real process committing to a real SQLite database at a set rate, and
//! logging each commit once `COMMIT` returned. Every commit's content is a pure function of the
//! seed and its sequence number, so the state after commit `k` can be computed by anyone
//! ([`expected_state`]) and a restored database judged exactly, whatever was lost before it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Bytes of each row's value.
const VALUE_BYTES: usize = 200;

/// The value commit `seq` writes into `row`.
pub fn value(seed: u64, seq: u64, row: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(VALUE_BYTES);
    let mut i = 0u64;
    while out.len() < VALUE_BYTES {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(
            &[seq, row, i].map(u64::to_le_bytes).concat(),
            seed,
        );
        out.extend_from_slice(&h.to_le_bytes());
        i += 1;
    }
    out.truncate(VALUE_BYTES);
    out
}

/// The older row commit `seq` also updates (itself when `seq` is 1).
pub fn updated_row(seed: u64, seq: u64) -> u64 {
    1 + xxhash_rust::xxh3::xxh3_64_with_seed(&seq.to_le_bytes(), seed ^ 0x5eed) % seq
}

/// The table after commits `1..=k`: row id to value.
pub fn expected_state(seed: u64, k: u64) -> BTreeMap<u64, Vec<u8>> {
    let mut rows = BTreeMap::new();
    for seq in 1..=k {
        rows.insert(seq, value(seed, seq, seq));
        let u = updated_row(seed, seq);
        rows.insert(u, value(seed, seq, u));
    }
    rows
}

/// What the writer does, from the command line of `sluice-sim chaos-writer`.
#[derive(Debug, Clone)]
pub struct WriterArgs {
    pub db: std::path::PathBuf,
    pub log: std::path::PathBuf,
    pub seed: u64,
    pub commits_per_second: u32,
    /// Chance per commit of an application checkpoint (mode drawn from all four).
    pub checkpoint_rate: f64,
    /// Which of the run's writers this is (its checkpoint draws differ from the others').
    pub writer: u32,
    /// Open the database for each commit and close it after (the last connection to close
    /// checkpoints the WAL and deletes it), instead of one connection for the process.
    pub connection_per_commit: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The highest row, 0 in an empty table.
fn highest_row(conn: &rusqlite::Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT coalesce(max(id), 0) FROM chaos", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as u64)
}

fn open(db: &Path) -> anyhow::Result<rusqlite::Connection> {
    use anyhow::Context;
    let conn =
        rusqlite::Connection::open(db).with_context(|| format!("cannot open {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

/// Commits until killed: commit `seq` inserts row `seq` and updates one older row, then the
/// line `seq unix_ms pid` is appended to the log. `seq` is one past the database's highest row,
/// read inside the commit's write transaction, so writers restarted (or started on a restored
/// database), and several writers at once, make one sequence of commits between them.
pub fn run_writer(args: &WriterArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let conn = open(&args.db)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS chaos (id INTEGER PRIMARY KEY, v BLOB NOT NULL)",
    )?;
    let highest = highest_row(&conn)?;
    let mut kept = Some(conn);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .with_context(|| format!("cannot open {}", args.log.display()))?;
    // Checkpoint draws from the seed, the writer and where the database was at the start.
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ (u64::from(args.writer) << 48) ^ highest);
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.commits_per_second.max(1)));
    let started = Instant::now();
    let mut n = 0u32;
    loop {
        let conn = match kept.take() {
            Some(c) => c,
            None => open(&args.db)?,
        };
        let tx =
            rusqlite::Transaction::new_unchecked(&conn, rusqlite::TransactionBehavior::Immediate)?;
        let seq = 1 + highest_row(&tx)?;
        let u = updated_row(args.seed, seq);
        tx.execute(
            "INSERT INTO chaos (id, v) VALUES (?1, ?2)",
            rusqlite::params![seq as i64, value(args.seed, seq, seq)],
        )?;
        tx.execute(
            "UPDATE chaos SET v = ?2 WHERE id = ?1",
            rusqlite::params![u as i64, value(args.seed, seq, u)],
        )?;
        tx.commit()?;
        // One write per line: the writers share the log, appending.
        log.write_all(format!("{seq} {} {}\n", now_ms(), std::process::id()).as_bytes())?;
        if rng.random_bool(args.checkpoint_rate) {
            let mode = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"][rng.random_range(0..4)];
            // A busy checkpoint is the application's everyday lot, not an error.
            let _ = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()));
        }
        if !args.connection_per_commit {
            kept = Some(conn);
        }
        n += 1;
        // Pacing, not synchronisation: the rate is a workload parameter.
        if let Some(wait) = (interval * n).checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// One logged commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Logged {
    pub seq: u64,
    /// Wall-clock time `COMMIT` returned.
    pub ms: u64,
    /// The writer process that made it.
    pub pid: u32,
}

/// The commits writers logged, in order.
pub fn read_log(path: &Path) -> std::io::Result<Vec<Logged>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // A line cut short by the kill is not a logged commit.
    Ok(text
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(Logged {
                seq: f.next()?.parse().ok()?,
                ms: f.next()?.parse().ok()?,
                pid: f.next()?.parse().ok()?,
            })
        })
        .collect())
}

/// The longest wait between two consecutive commits of one writer process, or between the
/// last commit of a writer in `alive` (still running at `end_ms`) and `end_ms`: time the
/// application spent blocked (an application checkpoint waiting on the replicator's read
/// lock, Litestream #724), or the writer descheduled.
pub fn longest_stall_ms(log: &[Logged], end_ms: u64, alive: &[u32]) -> u64 {
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    let mut longest = 0;
    for l in log {
        if let Some(before) = last.insert(l.pid, l.ms) {
            longest = longest.max(l.ms.saturating_sub(before));
        }
    }
    alive
        .iter()
        .filter_map(|pid| last.get(pid))
        .map(|&ms| end_ms.saturating_sub(ms))
        .fold(longest, u64::max)
}

/// Reads a restored database: `integrity_check`, then the table. Opened immutable: nothing is
/// written beside it.
pub fn read_restored(path: &Path) -> Result<BTreeMap<u64, Vec<u8>>, String> {
    let uri = format!("file:{}?immutable=1", path.display());
    let conn = rusqlite::Connection::open_with_flags(
        &uri,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| format!("integrity_check of {}: {e}", path.display()))?;
    if check != "ok" {
        return Err(format!("integrity_check of {}: {check}", path.display()));
    }
    let mut stmt = conn
        .prepare("SELECT id, v FROM chaos ORDER BY id")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
        })
        .map_err(|e| format!("{}: {e}", path.display()))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_state_is_a_function_of_seed_and_commit() {
        let a = expected_state(7, 50);
        assert_eq!(a, expected_state(7, 50));
        assert_ne!(a, expected_state(8, 50));
        assert_eq!(a.len(), 50);
        assert_ne!(expected_state(7, 49), a);
        assert!((1..=50).all(|s| (1..=s).contains(&updated_row(7, s))));
    }

    #[test]
    fn a_stall_is_measured_within_one_writer_process() {
        let at = |seq, ms, pid| Logged { seq, ms, pid };
        let log = [
            at(1, 100, 7),
            at(2, 110, 7),
            at(3, 900, 8),
            at(4, 1400, 8),
            at(5, 1410, 8),
        ];
        // 110 -> 900 is a restart of the writer, not a stall.
        assert_eq!(longest_stall_ms(&log, 1420, &[8]), 500);
        assert_eq!(
            longest_stall_ms(&log, 3000, &[8]),
            1590,
            "blocked since its last commit"
        );
        assert_eq!(
            longest_stall_ms(&log, 3000, &[9]),
            500,
            "writer 8 was gone by then"
        );
        assert_eq!(longest_stall_ms(&log[..1], 100, &[7]), 0);
        // Two writers interleaved: each one's own gaps.
        let log = [
            at(1, 100, 7),
            at(2, 105, 8),
            at(3, 110, 7),
            at(4, 700, 8),
            at(5, 120, 7),
        ];
        assert_eq!(
            longest_stall_ms(&log, 720, &[7, 8]),
            600,
            "writer 7 since 120"
        );
        assert_eq!(
            longest_stall_ms(&log, 130, &[7, 8]),
            595,
            "writer 8: 105 -> 700"
        );
    }
}
