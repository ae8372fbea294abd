//! `sluice restore` against replicas written by the real Litestream binary.
//!
//! Each test writes a database with rusqlite while `litestream replicate` ships it to a file
//! replica, then checks that:
//! - restoring the latest state with `sluice restore` gives exactly the bytes of the source after
//!   `PRAGMA wal_checkpoint(TRUNCATE)`, and so does `litestream restore`;
//! - restoring with `-txid T` gives exactly the source as it was when the replica's newest TXID
//!   was `T` (recorded during the run for a sample of batches, see [`Recorder`]);
//! - a `-txid` the replica does not reach fails and leaves no output file.
//!
//! Not checked here: timestamp restores (Litestream's file times are not under our control),
//! compaction levels above L1 (they need minutes of runtime), and S3 replicas.

mod common;

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::{Connection, params};

use common::{
    Litestream, Workspace, assert_integrity_ok, assert_same_file, checkpoint_truncate, file_url,
    litestream_or_skip, replica_max_txid, run_litestream, run_sluice, wait_for, wait_txid_settled,
};

/// One workload: a table of text rows (with an index, so a commit touches several b-trees),
/// written in `commits` transactions with a mass DELETE + VACUUM halfway.
#[derive(Clone, Copy, Debug)]
struct Workload {
    page_size: u32,
    rows: u64,
    commits: u64,
    /// How many batches to record as `-txid` restore targets.
    samples: u64,
    seed: u64,
}

/// A source image recorded while the replica's newest TXID was `txid`.
#[derive(Debug)]
struct Sample {
    txid: u64,
    /// Holds copies of `src.db` and `src.db-wal`.
    dir: PathBuf,
    label: String,
}

/// Records the source database at a batch boundary.
///
/// After a commit it waits until the replica's newest TXID is above the one seen before the
/// commit and then stops moving, so that TXID holds every committed frame. It copies the
/// database and its WAL while a read transaction on another connection pins the WAL (no
/// checkpoint can restart it under the copy; a concurrent PASSIVE backfill only writes pages
/// the copied WAL also holds). If the TXID moved meanwhile (Litestream wrote into the database
/// itself) the sample is dropped and the caller tries again at a later commit.
struct Recorder<'a> {
    src: &'a Path,
    replica: &'a Path,
    out: &'a Path,
    samples: Vec<Sample>,
    skipped: u32,
}

impl Recorder<'_> {
    fn try_record(&mut self, before: u64, label: &str) -> bool {
        let txid = wait_txid_settled(self.replica, before);
        let dir = self.out.join(format!("sample-{txid:016x}"));
        std::fs::create_dir_all(&dir).expect("create a sample directory");
        let reader = Connection::open(self.src).expect("open a reader connection");
        reader
            .busy_timeout(std::time::Duration::from_secs(10))
            .expect("busy_timeout");
        reader.execute_batch("BEGIN").expect("BEGIN");
        // A deferred transaction takes its read lock (and WAL snapshot) at the first read.
        let _: i64 = reader
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .expect("read inside the pinning transaction");
        std::fs::copy(self.src, dir.join("src.db")).expect("copy src.db");
        let wal = wal_path(self.src);
        if wal.exists() {
            std::fs::copy(&wal, dir.join("src.db-wal")).expect("copy src.db-wal");
        }
        reader.execute_batch("COMMIT").expect("COMMIT");
        drop(reader);
        let again = wait_txid_settled(self.replica, 0);
        if again != txid {
            self.skipped += 1;
            std::fs::remove_dir_all(&dir).expect("remove a dropped sample");
            return false;
        }
        self.samples.push(Sample {
            txid,
            dir,
            label: label.to_string(),
        });
        true
    }
}

fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn random_text(rng: &mut ChaCha8Rng, len_min: usize, len_max: usize) -> String {
    let len = rng.random_range(len_min..=len_max);
    (0..len)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

fn open_source(path: &Path, page_size: u32) -> Connection {
    let conn = Connection::open(path).expect("open the source database");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy_timeout");
    // page_size must be set before the first table makes the file.
    conn.execute_batch(&format!(
        "PRAGMA page_size = {page_size};
         PRAGMA journal_mode = WAL;
         CREATE TABLE rows (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT, b BLOB);
         CREATE INDEX rows_k ON rows (k);"
    ))
    .expect("create the schema");
    let actual: u32 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("read page_size");
    assert_eq!(actual, page_size, "page size did not take");
    conn
}

/// Runs the workload under Litestream, then checks every restore. Returns `None` when
/// Litestream is not installed (the test skips).
fn run(w: Workload) -> Option<()> {
    let litestream = litestream_or_skip()?;
    let ws = Workspace::new(&format!("ls-{}", w.page_size));
    let src = ws.path("src.db");
    let replica = ws.path("replica");
    let samples_dir = ws.dir("samples");
    let mut conn = open_source(&src, w.page_size);
    let mut ls = Litestream::replicate(&litestream, &src, &replica, ws.root());
    wait_for("Litestream's first LTX file", || {
        (replica_max_txid(&replica) > 0).then_some(())
    });

    let mut rng = ChaCha8Rng::seed_from_u64(w.seed);
    let mut recorder = Recorder {
        src: &src,
        replica: &replica,
        out: &samples_dir,
        samples: Vec::new(),
        skipped: 0,
    };
    let rows_per_commit = w.rows.div_ceil(w.commits);
    let vacuum_at = w.commits / 2;
    let sample_every = (w.commits / w.samples).max(1);
    let blob_bytes = w.page_size as usize * 3 / 2;
    let mut inserted = 0u64;
    let mut want_sample = false;
    for commit in 0..w.commits {
        if commit % sample_every == sample_every / 2 {
            want_sample = true;
        }
        let before = replica_max_txid(&replica);
        let tx = conn.transaction().expect("begin");
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO rows (id, k, v, b) VALUES (?1, ?2, ?3, ?4)")
                .expect("prepare insert");
            let n = rows_per_commit.min(w.rows - inserted);
            for _ in 0..n {
                inserted += 1;
                let k = format!("key-{:08}-{}", inserted, random_text(&mut rng, 4, 12));
                let v = random_text(&mut rng, 20, 160);
                insert
                    .execute(params![inserted as i64, k, v, Option::<Vec<u8>>::None])
                    .expect("insert a row");
            }
            if commit % 7 == 3 {
                // A blob bigger than a page lands on overflow pages.
                let blob: Vec<u8> = (0..blob_bytes).map(|_| rng.random()).collect();
                let id = rng.random_range(1..=inserted) as i64;
                tx.execute("UPDATE rows SET b = ?1 WHERE id = ?2", params![blob, id])
                    .expect("store a blob");
            }
            for _ in 0..5 {
                let id = rng.random_range(1..=inserted) as i64;
                let v = random_text(&mut rng, 10, 300);
                tx.execute("UPDATE rows SET v = ?1 WHERE id = ?2", params![v, id])
                    .expect("update a row");
            }
            for _ in 0..2 {
                let id = rng.random_range(1..=inserted) as i64;
                tx.execute("DELETE FROM rows WHERE id = ?1", params![id])
                    .expect("delete a row");
            }
            if commit == vacuum_at {
                tx.execute("DELETE FROM rows WHERE id % 4 != 0", [])
                    .expect("mass delete");
            }
        }
        tx.commit().expect("commit");
        let mut label = format!("after commit {commit}");
        if commit == vacuum_at {
            // VACUUM rewrites every page and shrinks the file: a commit with a smaller size.
            conn.execute_batch("VACUUM").expect("VACUUM");
            label.push_str(" (mass DELETE + VACUUM)");
            want_sample = true;
        }
        if want_sample && recorder.try_record(before, &label) {
            want_sample = false;
        }
        ls.assert_running();
    }
    assert_eq!(inserted, w.rows);

    let final_txid = wait_txid_settled(&replica, 0);
    ls.stop();
    checkpoint_truncate(&conn);
    drop(conn);
    assert_eq!(
        replica_max_txid(&replica),
        final_txid,
        "Litestream shipped more after the replica settled"
    );
    let Recorder {
        samples, skipped, ..
    } = recorder;
    assert!(
        samples.len() as u64 >= w.samples / 2,
        "only {} of ~{} samples recorded ({skipped} dropped because the TXID moved)",
        samples.len(),
        w.samples
    );
    assert!(
        samples.iter().any(|s| s.label.contains("VACUUM")),
        "the post-VACUUM state was not recorded"
    );

    // Latest state: sluice and Litestream both reproduce the checkpointed source exactly.
    let out = ws.dir("out");
    let by_sluice = out.join("sluice.db");
    let (code, stdout, stderr) = run_sluice(&[&"restore", &"-o", &by_sluice, &file_url(&replica)]);
    assert_eq!(code, 0, "sluice restore failed: {stderr}");
    assert!(
        stdout.contains(&format!("{final_txid:016x}")),
        "sluice did not restore to TXID {final_txid:016x}: {stdout}"
    );
    assert_same_file(&src, &by_sluice, w.page_size, "sluice restore (latest)");
    assert_integrity_ok(&by_sluice);

    let by_litestream = out.join("litestream.db");
    let (code, _, stderr) = run_litestream(
        &litestream,
        &[&"restore", &"-o", &by_litestream, &file_url(&replica)],
    );
    assert_eq!(code, 0, "litestream restore failed: {stderr}");
    assert_same_file(
        &src,
        &by_litestream,
        w.page_size,
        "litestream restore (latest)",
    );

    // Every recorded batch: -txid gives the source as it was at that batch.
    for s in &samples {
        let expected = s.dir.join("src.db");
        {
            let c = Connection::open(&expected).expect("open a recorded copy");
            checkpoint_truncate(&c);
        }
        let restored = out.join(format!("txid-{:016x}.db", s.txid));
        let (code, _, stderr) = run_sluice(&[
            &"restore",
            &"-txid",
            &format!("{:016x}", s.txid),
            &"-o",
            &restored,
            &file_url(&replica),
        ]);
        assert_eq!(
            code, 0,
            "sluice restore -txid {:016x} ({}) failed: {stderr}",
            s.txid, s.label
        );
        assert_same_file(
            &expected,
            &restored,
            w.page_size,
            &format!("sluice restore -txid {:016x} ({})", s.txid, s.label),
        );
    }
    assert_integrity_ok(&out.join(format!(
        "txid-{:016x}.db",
        samples.last().map_or(0, |s| s.txid)
    )));

    // A TXID past the end of the replica is an error, and nothing is written.
    let beyond = out.join("beyond.db");
    let (code, _, stderr) = run_sluice(&[
        &"restore",
        &"-txid",
        &format!("{:016x}", final_txid + 1000),
        &"-o",
        &beyond,
        &file_url(&replica),
    ]);
    assert_eq!(code, 1, "restore beyond the replica's end: {stderr}");
    assert!(
        stderr.contains(&format!("{:016x}", final_txid + 1000)),
        "the error should name the TXID: {stderr}"
    );
    assert!(
        !beyond.exists(),
        "a failed restore left {}",
        beyond.display()
    );
    let mut tmp = beyond.into_os_string();
    tmp.push(".tmp");
    assert!(!Path::new(&tmp).exists(), "a failed restore left its .tmp");
    println!(
        "page size {}: {} rows, {} commits, final TXID {final_txid:016x}, {} samples ({skipped} dropped)",
        w.page_size,
        w.rows,
        w.commits,
        samples.len()
    );
    Some(())
}

#[test]
fn restore_matches_source_with_4096_byte_pages_and_100k_rows() {
    run(Workload {
        page_size: 4096,
        rows: 100_000,
        commits: 300,
        samples: 6,
        seed: 0x5eed_4096,
    });
}

#[test]
fn restore_matches_source_with_512_byte_pages() {
    run(Workload {
        page_size: 512,
        rows: 5_000,
        commits: 40,
        samples: 6,
        seed: 0x5eed_0512,
    });
}

#[test]
fn restore_matches_source_with_65536_byte_pages() {
    run(Workload {
        page_size: 65536,
        rows: 5_000,
        commits: 40,
        samples: 6,
        seed: 0x5eed_6553,
    });
}
