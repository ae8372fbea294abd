//! Restore speed: `sluice restore` against `litestream restore` on the same replica.
//!
//! Builds a 100k-row database under the real `litestream replicate` (in a temporary directory),
//! then restores the replica's latest state [`RUNS`] times with each tool, alternating so any
//! drift on the machine hits both, and prints the median wall time of each and the ratio. Both
//! read a warm page cache. Two replica shapes, as the restore cost differs: commits written
//! flat out (Litestream folds them into a few large batches) and one batch per commit (a few
//! hundred small L0 files). Each tool's first output is checked against the source, so a fast
//! but wrong restore cannot pass unnoticed. Nothing here asserts on timing.
//!
//! Run with `cargo bench -p sluice-core --bench restore` (the `sluice` binary is then the
//! release build). Skips, saying why, when Litestream is not installed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::{Connection, params};

use common::{
    Litestream, Workspace, assert_same_file, checkpoint_truncate, file_url, find_litestream,
    replica_max_txid, run_litestream, run_sluice, sluice_bin, wait_for, wait_txid_settled,
};

const RUNS: usize = 5;
const ROWS: u64 = 100_000;
const COMMITS: u64 = 300;
const PAGE_SIZE: u32 = 4096;
const SEED: u64 = 0xbe7c_4096;

fn main() {
    // `cargo test --benches` runs this without `--bench`: building it is the test.
    if !std::env::args().any(|a| a == "--bench") {
        println!("restore bench: run with `cargo bench -p sluice-core --bench restore`");
        return;
    }
    let Some(litestream) = find_litestream() else {
        println!(
            "restore bench skipped: litestream binary not found (set LITESTREAM_BIN or run ci/test.sh)"
        );
        return;
    };
    println!("sluice: {}", sluice_bin().display());
    println!("litestream: {}", litestream.display());
    for (shape, batch_per_commit) in [("flat out", false), ("one batch per commit", true)] {
        let ws = Workspace::new("bench-restore");
        let src = ws.path("src.db");
        let replica = ws.path("replica");
        let started = Instant::now();
        let txid = build_replica(&litestream, &ws, &src, &replica, batch_per_commit);
        let (files, bytes) = replica_size(&replica);
        let db_bytes = std::fs::metadata(&src).expect("stat the source").len();
        println!(
            "\nreplica written {shape}: {ROWS} rows in {COMMITS} commits, {db_bytes} byte database \
             ({PAGE_SIZE}-byte pages), {files} LTX files / {bytes} bytes up to TXID {txid:016x}; \
             built in {:.1?}",
            started.elapsed()
        );
        compare(&litestream, &ws, &src, &replica);
    }
}

/// Times both tools restoring `replica` and prints the medians and their ratio.
fn compare(litestream: &Path, ws: &Workspace, src: &Path, replica: &Path) {
    let out = ws.dir("out");
    let url = file_url(replica);
    let mut sluice_runs = Vec::with_capacity(RUNS);
    let mut litestream_runs = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        let target = out.join(format!("sluice-{run}.db"));
        let t = Instant::now();
        let (code, _, stderr) = run_sluice(&[&"restore", &"-o", &target, &url]);
        sluice_runs.push(t.elapsed());
        assert_eq!(code, 0, "sluice restore failed: {stderr}");

        let target_ls = out.join(format!("litestream-{run}.db"));
        let t = Instant::now();
        let (code, _, stderr) = run_litestream(litestream, &[&"restore", &"-o", &target_ls, &url]);
        litestream_runs.push(t.elapsed());
        assert_eq!(code, 0, "litestream restore failed: {stderr}");

        if run == 0 {
            assert_same_file(src, &target, PAGE_SIZE, "sluice restore");
            assert_same_file(src, &target_ls, PAGE_SIZE, "litestream restore");
        }
        for p in [target, target_ls] {
            std::fs::remove_file(&p).expect("remove a restored database");
        }
    }
    let s = median(&mut sluice_runs);
    let l = median(&mut litestream_runs);
    println!("sluice restore     median {s:>10.1?} of {RUNS}: {sluice_runs:.1?}");
    println!("litestream restore median {l:>10.1?} of {RUNS}: {litestream_runs:.1?}");
    println!(
        "ratio sluice/litestream: {:.2}",
        s.as_secs_f64() / l.as_secs_f64()
    );
}

/// Sorts `runs` and returns the middle one.
fn median(runs: &mut [Duration]) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

/// Writes the workload under Litestream and returns the replica's final TXID. With
/// `batch_per_commit`, each commit waits until Litestream has shipped it. The source is left
/// checkpointed (TRUNCATE), so its file is the expected restore result.
fn build_replica(
    litestream: &Path,
    ws: &Workspace,
    src: &Path,
    replica: &Path,
    batch_per_commit: bool,
) -> u64 {
    let mut conn = Connection::open(src).expect("open the source");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy_timeout");
    conn.execute_batch(&format!(
        "PRAGMA page_size = {PAGE_SIZE};
         PRAGMA journal_mode = WAL;
         CREATE TABLE rows (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT, b BLOB);
         CREATE INDEX rows_k ON rows (k);"
    ))
    .expect("create the schema");
    let ls = Litestream::replicate(litestream, src, replica, ws.root());
    wait_for("Litestream's first LTX file", || {
        (replica_max_txid(replica) > 0).then_some(())
    });
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let per_commit = ROWS.div_ceil(COMMITS);
    let mut id = 0i64;
    for commit in 0..COMMITS {
        let before = replica_max_txid(replica);
        let tx = conn.transaction().expect("begin");
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO rows (id, k, v) VALUES (?1, ?2, ?3)")
                .expect("prepare");
            for _ in 0..per_commit {
                id += 1;
                let v: String = (0..rng.random_range(20..160))
                    .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
                    .collect();
                insert
                    .execute(params![id, format!("key-{id:08}"), v])
                    .expect("insert");
            }
            if commit % 7 == 3 {
                let blob: Vec<u8> = (0..PAGE_SIZE * 3 / 2).map(|_| rng.random()).collect();
                tx.execute(
                    "UPDATE rows SET b = ?1 WHERE id = ?2",
                    params![blob, rng.random_range(1..=id)],
                )
                .expect("blob");
            }
        }
        tx.commit().expect("commit");
        if batch_per_commit {
            wait_for("Litestream to ship a commit", || {
                (replica_max_txid(replica) > before).then_some(())
            });
        }
    }
    let txid = wait_txid_settled(replica, 0);
    ls.stop();
    checkpoint_truncate(&conn);
    txid
}

/// Number and total size of the LTX files in a file replica.
fn replica_size(replica: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for level in 0..=sluice_core::replica::LEVEL_MAX {
        let Ok(entries) = std::fs::read_dir(replica.join("ltx").join(level.to_string())) else {
            continue;
        };
        for e in entries.flatten() {
            files += 1;
            bytes += e.metadata().map_or(0, |m| m.len());
        }
    }
    (files, bytes)
}
