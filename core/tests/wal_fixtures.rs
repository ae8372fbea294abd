//! The WAL reader against real `-wal` files written by SQLite, checked in under
//! `tests/fixtures/wal/` (how each was made: `tests/fixtures/README.md`; regenerate with
//! `cargo test -p sluice-core --test wal_fixtures -- --ignored regenerate`).
//!
//! For each fixture the tests pin down how many transactions are committed, which pages they
//! leave and the database size, and then prove the reading is right by applying the committed
//! pages to the database file the WAL belongs to and opening the result with SQLite.
//!
//! Not covered: big-endian checksums (SQLite writes the host's byte order and every machine we
//! run on is little-endian; the unit tests in `wal.rs` build such logs by hand).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use sluice_core::wal::{
    Committed, FRAME_HEADER_SIZE, Frame, WAL_HEADER_SIZE, WalHeader, WalScanner, scan_committed,
};

use common::{Workspace, assert_integrity_ok};

const PAGE_SIZE: u32 = 512;
const FRAME_BYTES: usize = FRAME_HEADER_SIZE + PAGE_SIZE as usize;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal")
}

fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

/// Scans a whole WAL image in one go.
fn scan(wal: &[u8]) -> Committed {
    scan_from(wal, u64::MAX)
}

/// Scans a WAL image in steps of at most `step_bytes` (rounded up to a commit), resuming each
/// time where the previous step ended, and merges the steps.
fn scan_from(wal: &[u8], step_bytes: u64) -> Committed {
    let header = WalHeader::parse(wal).expect("fixture has a valid WAL header");
    let mut scanner = WalScanner::new(header);
    let mut all = Committed::default();
    loop {
        let step = scan_committed::<()>(&mut scanner, step_bytes, |offset, buf| {
            let start = usize::try_from(offset)
                .expect("small offset")
                .min(wal.len());
            let n = (wal.len() - start).min(buf.len());
            buf[..n].copy_from_slice(&wal[start..start + n]);
            Ok(n)
        })
        .expect("reading from memory cannot fail");
        if step.transactions == 0 {
            return all;
        }
        all.pages.extend(step.pages);
        if let Some(size) = step.commit_size {
            all.pages.retain(|&p, _| p <= size);
        }
        all.commit_size = step.commit_size;
        all.end_offset = step.end_offset;
        all.end_checksum = step.end_checksum;
        all.transactions += step.transactions;
    }
}

/// Applies the committed pages of `wal` to a copy of `db` and returns the rows of table `t`.
fn apply_and_count(ws: &Workspace, name: &str, db: &[u8], wal: &[u8], c: &Committed) -> i64 {
    let page = PAGE_SIZE as usize;
    let mut image = db.to_vec();
    let size = c.commit_size.expect("at least one commit") as usize * page;
    image.resize(size.max(image.len()), 0);
    for (&pgno, &offset) in &c.pages {
        let at = usize::try_from(offset).expect("small offset") + FRAME_HEADER_SIZE;
        let to = (pgno as usize - 1) * page;
        image[to..to + page].copy_from_slice(&wal[at..at + page]);
    }
    image.truncate(size);
    let path = ws.path(name);
    std::fs::write(&path, &image).expect("write the applied image");
    assert_integrity_ok(&path);
    let conn = Connection::open(&path).expect("open the applied image");
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count rows")
}

fn pages(c: &Committed) -> BTreeSet<u32> {
    c.pages.keys().copied().collect()
}

/// Frame-by-frame verdicts for a WAL image, until the scanner says the log ends.
fn frames(wal: &[u8]) -> Vec<Frame> {
    let header = WalHeader::parse(wal).expect("fixture has a valid WAL header");
    let mut scanner = WalScanner::new(header);
    let mut out = Vec::new();
    loop {
        let at = usize::try_from(scanner.offset()).expect("small offset");
        let frame = &wal[at.min(wal.len())..(at + FRAME_BYTES).min(wal.len())];
        let verdict = scanner.next(frame);
        out.push(verdict);
        if verdict == Frame::End {
            return out;
        }
    }
}

fn commits(frames: &[Frame]) -> usize {
    frames
        .iter()
        .filter(|f| matches!(f, Frame::Commit { .. }))
        .count()
}

#[test]
fn clean_wal_commits_every_transaction() {
    let wal = fixture("clean.wal");
    let header = WalHeader::parse(&wal).expect("header");
    assert_eq!(header.page_size, PAGE_SIZE);
    assert_eq!(header.checkpoint_seq, 0);
    assert_eq!(
        (wal.len() - WAL_HEADER_SIZE) % FRAME_BYTES,
        0,
        "whole frames"
    );

    let c = scan(&wal);
    assert_eq!(c.transactions, 5);
    assert_eq!(c.commit_size, Some(5));
    assert_eq!(pages(&c), BTreeSet::from([1, 2, 3, 4, 5]));
    assert_eq!(c.end_offset, wal.len() as u64, "every frame is committed");

    let verdicts = frames(&wal);
    assert_eq!(commits(&verdicts), 5);
    assert_eq!(
        verdicts.len(),
        (wal.len() - WAL_HEADER_SIZE) / FRAME_BYTES + 1
    );
    // CREATE TABLE (2 frames), 3 inserts (1), 10 inserts splitting the table (5), one update
    // (1), a delete (5): the database grows from 2 to 5 pages and stays there.
    let sizes: Vec<(usize, u32)> = verdicts
        .iter()
        .enumerate()
        .filter_map(|(i, f)| match f {
            Frame::Commit { commit_size, .. } => Some((i, *commit_size)),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, [(1, 2), (2, 2), (7, 5), (8, 5), (13, 5)]);

    let ws = Workspace::new("wal-clean");
    assert_eq!(
        apply_and_count(&ws, "clean.db", &fixture("base.db"), &wal, &c),
        8
    );
}

#[test]
fn scanning_in_small_steps_gives_the_same_result() {
    let wal = fixture("clean.wal");
    let whole = scan(&wal);
    // One byte per step: every step stops at its first commit, so each resumes the last.
    let stepped = scan_from(&wal, 1);
    assert_eq!(stepped, whole);
}

#[test]
fn torn_final_frame_drops_only_the_last_transaction() {
    let clean = fixture("clean.wal");
    let torn = fixture("torn.wal");
    assert!(
        clean.starts_with(&torn),
        "torn.wal is a prefix of clean.wal"
    );
    assert_eq!(
        (torn.len() - WAL_HEADER_SIZE) % FRAME_BYTES,
        FRAME_BYTES / 2,
        "cut in the middle of a frame"
    );

    let c = scan(&torn);
    assert_eq!(c.transactions, 4);
    assert_eq!(c.commit_size, Some(5));
    assert_eq!(c.end_offset, (WAL_HEADER_SIZE + 9 * FRAME_BYTES) as u64);
    assert!(c.end_offset < torn.len() as u64);

    let ws = Workspace::new("wal-torn");
    assert_eq!(
        apply_and_count(&ws, "torn.db", &fixture("base.db"), &torn, &c),
        13
    );
}

#[test]
fn bad_checksum_in_a_middle_frame_ends_the_log_there() {
    let clean = fixture("clean.wal");
    let bad = fixture("bad_checksum.wal");
    assert_eq!(bad.len(), clean.len());
    let diffs: Vec<usize> = (0..bad.len()).filter(|&i| bad[i] != clean[i]).collect();
    assert_eq!(diffs.len(), 1, "exactly one byte differs from clean.wal");
    let frame = (diffs[0] - WAL_HEADER_SIZE) / FRAME_BYTES;
    assert!(
        (diffs[0] - WAL_HEADER_SIZE) % FRAME_BYTES >= FRAME_HEADER_SIZE,
        "the damage is in a page, not a frame header"
    );

    let c = scan(&bad);
    assert_eq!(c.transactions, 2);
    assert_eq!(c.commit_size, Some(2));
    assert_eq!(
        c.end_offset,
        (WAL_HEADER_SIZE + frame * FRAME_BYTES) as u64,
        "the log ends right before the damaged frame"
    );
    // The frames after the damaged one are intact on their own, yet not accepted.
    let verdicts = frames(&bad);
    assert_eq!(verdicts.len(), frame + 1);
    assert_eq!(verdicts.last(), Some(&Frame::End));

    let ws = Workspace::new("wal-bad-checksum");
    assert_eq!(
        apply_and_count(&ws, "bad.db", &fixture("base.db"), &bad, &c),
        3
    );
}

#[test]
fn stale_frames_after_a_restart_are_ignored() {
    let clean = WalHeader::parse(&fixture("clean.wal")).expect("header");
    let wal = fixture("stale_salt.wal");
    let header = WalHeader::parse(&wal).expect("header");
    assert_eq!(header.checkpoint_seq, 1, "one restart");

    let c = scan(&wal);
    assert_eq!(c.transactions, 1);
    assert_eq!(c.commit_size, Some(5));
    assert!(
        c.end_offset < wal.len() as u64,
        "the older, longer log is still in the file after the new frames"
    );
    // The frame right after the new log is from the old one: its salts are the old header's.
    let next = usize::try_from(c.end_offset).expect("small offset");
    let salts = &wal[next + 8..next + 16];
    assert_ne!(
        salts,
        [header.salt1.to_be_bytes(), header.salt2.to_be_bytes()].concat(),
        "stale frame carries the salts of the log before the restart"
    );
    assert_eq!(
        header.salt1,
        salt1_of_previous_log(&wal, next).wrapping_add(1)
    );
    assert_ne!((header.salt1, header.salt2), (clean.salt1, clean.salt2));

    let ws = Workspace::new("wal-stale-salt");
    let db = fixture("stale_salt.db");
    assert_eq!(apply_and_count(&ws, "stale.db", &db, &wal, &c), 9);
}

/// Salt-1 as written in the stale frame at `offset`: SQLite increments salt-1 on a restart.
fn salt1_of_previous_log(wal: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes([
        wal[offset + 8],
        wal[offset + 9],
        wal[offset + 10],
        wal[offset + 11],
    ])
}

/// The transactions every fixture replays, in order: 0, 3, 13, 13 and 8 rows of table `t`
/// after each.
const WORKLOAD: [&str; 5] = [
    "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
    "INSERT INTO t (v) VALUES ('a'), ('b'), ('c')",
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10)
     INSERT INTO t (v) SELECT printf('%.100c', char(96 + i)) FROM n",
    "UPDATE t SET v = 'updated' WHERE id = 2",
    "DELETE FROM t WHERE id > 8",
];

fn copy_live(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

/// Rewrites the fixtures with the bundled SQLite. Salts are random, so the bytes change on
/// every run while the structure (and every assertion above) stays the same.
#[test]
#[ignore = "writes tests/fixtures/wal; run by hand"]
fn regenerate() {
    let out = fixture_dir();
    std::fs::create_dir_all(&out).expect("create the fixture directory");
    let ws = Workspace::new("wal-gen");

    // base.db + clean.wal: every transaction stays in the WAL (no checkpoint), and the files
    // are copied while the connection is open (closing it would checkpoint and delete the WAL).
    let db = ws.path("clean.db");
    let conn = Connection::open(&db).expect("open");
    conn.execute_batch(
        "PRAGMA page_size = 512; PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;",
    )
    .expect("configure");
    copy_live(&db, &out.join("base.db"));
    for sql in WORKLOAD {
        conn.execute_batch(sql).expect("workload");
    }
    let clean_path = out.join("clean.wal");
    copy_live(&ws.path("clean.db-wal"), &clean_path);
    drop(conn);
    let clean = std::fs::read(&clean_path).expect("read clean.wal");

    // torn.wal: cut in the middle of the last frame.
    std::fs::write(
        out.join("torn.wal"),
        &clean[..clean.len() - FRAME_BYTES / 2],
    )
    .expect("write torn.wal");

    // bad_checksum.wal: one byte flipped inside the page of the first frame of transaction 3.
    let header = WalHeader::parse(&clean).expect("header");
    let mut scanner = WalScanner::new(header);
    let mut commits_seen = 0;
    let mut frame_index = 0usize;
    while commits_seen < 2 {
        let at = WAL_HEADER_SIZE + frame_index * FRAME_BYTES;
        if let Frame::Commit { .. } = scanner.next(&clean[at..at + FRAME_BYTES]) {
            commits_seen += 1;
        }
        frame_index += 1;
    }
    let mut bad = clean.clone();
    bad[WAL_HEADER_SIZE + frame_index * FRAME_BYTES + FRAME_HEADER_SIZE + 200] ^= 0x10;
    std::fs::write(out.join("bad_checksum.wal"), &bad).expect("write bad_checksum.wal");

    // stale_salt.db + stale_salt.wal: the same log, fully checkpointed (PASSIVE, nobody
    // reading), then one more transaction. Finding the WAL fully backfilled, the writer
    // restarts it: a new header (salt-1 + 1, new salt-2) and new frames over the old ones,
    // with the older, longer log left behind them in the file.
    let db = ws.path("stale.db");
    let conn = Connection::open(&db).expect("open");
    conn.execute_batch(
        "PRAGMA page_size = 512; PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;",
    )
    .expect("configure");
    for sql in WORKLOAD {
        conn.execute_batch(sql).expect("workload");
    }
    let (busy, log, done): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint");
    assert_eq!((busy, log == done), (0, true), "checkpoint was complete");
    copy_live(&db, &out.join("stale_salt.db"));
    conn.execute_batch("INSERT INTO t (v) VALUES ('after restart')")
        .expect("write after the checkpoint");
    copy_live(&ws.path("stale.db-wal"), &out.join("stale_salt.wal"));
    drop(conn);
}
