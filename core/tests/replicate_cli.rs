//! `sluice replicate` as an operator runs it: `-exec` children (exit code, signal forwarding,
//! final sync), a database still in rollback-journal mode, `-restore-if-db-not-exists`, several
//! replicas of one database, `status` and `databases`, and a restart that must resume rather
//! than re-upload the database.
//!
//! Each test runs the real binary against real SQLite in a temporary directory. Waits poll the
//! replica or the process log; their limits are failure guards ([`WAIT_MAX`]), never the
//! behaviour under test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use common::{
    POLL_INTERVAL, WAIT_MAX, Workspace, assert_integrity_ok, assert_same_file, checkpoint_truncate,
    file_url, replica_max_txid, run_sluice, sluice_bin, wait_for, wait_txid_settled,
};

const PAGE_SIZE: u32 = 4096;

/// A running `sluice replicate`, stdout and stderr in one log file. Dropping it kills the
/// process if it still runs, so a failed assertion leaves nothing behind.
struct Replicate {
    child: Child,
    log_path: PathBuf,
}

impl Replicate {
    fn start(args: &[&dyn AsRef<OsStr>], log_path: PathBuf) -> Self {
        Self::start_with(args, log_path, |_| {})
    }

    /// `start` with more settings of the command (its environment).
    fn start_with(
        args: &[&dyn AsRef<OsStr>],
        log_path: PathBuf,
        set: impl FnOnce(&mut Command),
    ) -> Self {
        let log = std::fs::File::create(&log_path).expect("create the sluice log");
        let mut cmd = Command::new(sluice_bin());
        set(&mut cmd);
        let child = cmd
            .arg("replicate")
            .args(args)
            .env("SLUICE_LOG", "info")
            .env_remove("SLUICE_CONFIG")
            .env_remove("LITESTREAM_CONFIG")
            .env_remove("AWS_CA_BUNDLE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("start sluice replicate");
        Self { child, log_path }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log if the process exits first.
    fn wait_log(&mut self, needle: &str) {
        let started = Instant::now();
        loop {
            if self.log().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // The line may have been written just before the exit.
                assert!(
                    self.log().contains(needle),
                    "sluice exited ({status}) before logging {needle:?}; log:\n{}",
                    self.log()
                );
                return;
            }
            assert!(
                started.elapsed() < WAIT_MAX,
                "sluice did not log {needle:?} within {WAIT_MAX:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.child.id());
    }

    /// Waits for the process to exit; returns its exit code (-1 if a signal ended it).
    fn wait_exit(&mut self) -> i32 {
        let started = Instant::now();
        loop {
            match self.child.try_wait().expect("wait for sluice") {
                Some(status) => return status.code().unwrap_or(-1),
                None => assert!(
                    started.elapsed() < WAIT_MAX,
                    "sluice did not exit within {WAIT_MAX:?}; log:\n{}",
                    self.log()
                ),
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Stops the process as an operator would (SIGTERM) and asserts it exited cleanly.
    fn stop(mut self) -> String {
        self.signal("TERM");
        let code = self.wait_exit();
        let log = self.log();
        assert_eq!(
            code, 0,
            "sluice exited with {code} after SIGTERM; log:\n{log}"
        );
        log
    }
}

impl Drop for Replicate {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A sluice config for `db` replicated to each of `replicas`. `monitor` and `sync` are Go
/// durations: `5ms`/`50ms` where speed matters, `1h` to keep the driver from syncing on its
/// own so that only the initial snapshot and the final sync can ship anything.
fn write_config(
    ws: &Workspace,
    db: &Path,
    replicas: &[&Path],
    monitor: &str,
    sync: &str,
) -> PathBuf {
    let mut text = format!(
        "dbs:\n  - path: {}\n    monitor-interval: {monitor}\n    replicas:\n",
        db.display()
    );
    for r in replicas {
        text.push_str(&format!(
            "      - url: {}\n        sync-interval: {sync}\n",
            file_url(r)
        ));
    }
    let cfg = ws.path("sluice.yml");
    std::fs::write(&cfg, text).expect("write the sluice config");
    cfg
}

fn open_db(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open the database");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy_timeout");
    conn
}

/// Creates `path` with table `t` in `journal_mode` and `rows` rows, and closes it.
fn create_db(path: &Path, journal_mode: &str, rows: u32) {
    let conn = open_db(path);
    conn.pragma_update(None, "page_size", PAGE_SIZE)
        .expect("page_size");
    let mode: String = conn
        .query_row(&format!("PRAGMA journal_mode = {journal_mode}"), [], |r| {
            r.get(0)
        })
        .expect("journal_mode");
    assert!(
        mode.eq_ignore_ascii_case(journal_mode),
        "journal_mode {mode}"
    );
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .expect("create table");
    insert(&conn, rows);
}

/// Inserts `rows` rows in one transaction.
fn insert(conn: &Connection, rows: u32) {
    conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
    for _ in 0..rows {
        conn.execute(
            "INSERT INTO t (v) VALUES (printf('%.*c', 300, 'x') || random())",
            [],
        )
        .expect("insert");
    }
    conn.execute_batch("COMMIT").expect("commit");
}

/// Rows in `t` of a database file that nothing else writes (opened immutable: no side files).
fn row_count(path: &Path) -> i64 {
    let uri = format!("file:{}?immutable=1", path.display());
    let conn = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count rows")
}

/// Restores the latest state of a file replica to `out` with `sluice restore`.
fn restore(replica: &Path, out: &Path) {
    let (code, _, err) = run_sluice(&[&"restore", &"-o", &out, &file_url(replica)]);
    assert_eq!(
        code,
        0,
        "sluice restore of {} failed: {err}",
        replica.display()
    );
}

/// The LTX file names at one level of a file replica (temporaries ignored).
fn level_files(replica: &Path, level: u8) -> BTreeSet<String> {
    let dir = replica.join("ltx").join(level.to_string());
    match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| sluice_core::replica::parse_file_name(n).is_some())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => panic!("cannot list {}: {e}", dir.display()),
    }
}

/// Checkpoints the source (nothing else may have it open) so its file is what a restore must
/// produce, then restores `replica` and compares byte for byte.
fn assert_replica_matches(db: &Path, replica: &Path, out: &Path) {
    checkpoint_truncate(&open_db(db));
    restore(replica, out);
    assert_same_file(db, out, PAGE_SIZE, "restore vs source");
    assert_integrity_ok(out);
}

/// `-exec` runs the application as a child; when it exits, sluice makes a final sync and exits
/// with the child's code. The monitor interval is an hour, so after the initial snapshot only
/// the final sync can ship the rows written while the child ran.
#[test]
fn exec_child_exit_code_becomes_sluices_after_a_final_sync() {
    let ws = Workspace::new("exec-exit");
    let db = ws.path("app.db");
    let replica = ws.dir("replica");
    create_db(&db, "wal", 10);
    let cfg = write_config(&ws, &db, &[&replica], "1h", "1h");
    let go = ws.path("go");
    // Our temporary paths hold no quotes or spaces.
    let child = format!(
        "sh -c 'while [ ! -e {} ]; do sleep 0.01; done; exit 3'",
        go.display()
    );
    let mut sluice = Replicate::start(&[&"-exec", &child, &"-config", &cfg], ws.path("sluice.log"));
    let snapshot_txid = wait_txid_settled(&replica, 0);
    // The first change after the start ships as soon as it is seen (no sync has uploaded yet,
    // so no interval runs); once one has, the next waits out the 1h interval.
    insert(&open_db(&db), 5);
    let shipped_txid = wait_txid_settled(&replica, snapshot_txid);

    insert(&open_db(&db), 5);
    assert_eq!(
        replica_max_txid(&replica),
        shipped_txid,
        "nothing but the final sync may ship within a 1h sync interval"
    );
    std::fs::write(&go, b"").expect("let the child exit");
    let code = sluice.wait_exit();
    let log = sluice.log();
    assert_exit_after_final_sync(code, 3, &log, &ws, &db, &replica, (shipped_txid, 20));
}

/// SIGTERM to sluice goes to the child, which decides when to exit (here: at once, with code
/// 7); sluice then makes its final sync and exits with the child's code, long before the
/// child's 300 s sleep would have ended. sluice runs with an empty `PATH`, as in a sidecar
/// image with no `kill` binary: it signals by kill(2).
#[test]
fn sigterm_is_forwarded_to_the_exec_child() {
    let ws = Workspace::new("exec-term");
    let db = ws.path("app.db");
    let replica = ws.dir("replica");
    create_db(&db, "wal", 10);
    let cfg = write_config(&ws, &db, &[&replica], "1h", "1h");
    let ready = ws.path("ready");
    let got_term = ws.path("got-term");
    // The trap is a function so `$pid` is read when the signal arrives; it also stops the
    // background sleep so nothing outlives the test.
    let child = format!(
        "/bin/sh -c 'on_term() {{ kill $pid; echo term > {}; exit 7; }}; trap on_term TERM; \
         /bin/sleep 300 & pid=$!; echo ready > {}; wait'",
        got_term.display(),
        ready.display()
    );
    let no_bins = ws.dir("no-bins");
    let mut sluice = Replicate::start_with(
        &[&"-exec", &child, &"-config", &cfg],
        ws.path("sluice.log"),
        |cmd| {
            cmd.env("PATH", &no_bins);
        },
    );
    wait_for("the child to install its trap", || {
        ready.exists().then_some(())
    });
    let snapshot_txid = wait_txid_settled(&replica, 0);
    insert(&open_db(&db), 5);

    let sent = Instant::now();
    sluice.signal("TERM");
    let code = sluice.wait_exit();
    let took = sent.elapsed();
    let log = sluice.log();
    println!("sluice exited {took:?} after SIGTERM");
    assert!(
        got_term.exists(),
        "the child never saw SIGTERM; log:\n{log}"
    );
    assert_exit_after_final_sync(code, 7, &log, &ws, &db, &replica, (snapshot_txid, 15));
}

/// A database in rollback-journal mode has no WAL to tail. Expected behaviour, as Litestream's:
/// sluice switches it to WAL mode (a persistent setting: the application's next connection is
/// in WAL mode too) and replicates it.
#[test]
fn rollback_journal_database_is_switched_to_wal_and_replicated() {
    let ws = Workspace::new("journal-delete");
    let db = ws.path("app.db");
    let replica = ws.dir("replica");
    create_db(&db, "delete", 20);
    let cfg = write_config(&ws, &db, &[&replica], "5ms", "50ms");
    let mut sluice = Replicate::start(&[&"-config", &cfg], ws.path("sluice.log"));
    sluice.wait_log("switched database to WAL mode");
    let snapshot_txid = wait_txid_settled(&replica, 0);

    let conn = open_db(&db);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    for _ in 0..4 {
        insert(&conn, 5);
    }
    drop(conn);
    wait_txid_settled(&replica, snapshot_txid);
    sluice.stop();

    let out = ws.path("restored.db");
    assert_replica_matches(&db, &replica, &out);
    assert_eq!(row_count(&out), 40);
}

/// `-restore-if-db-not-exists`: the database is gone but its replica is not; sluice restores
/// it, proves the restored file continues the replica (no resync snapshot), and replicates
/// what is written next.
#[test]
fn missing_database_is_restored_then_replicated() {
    let ws = Workspace::new("restore-if-missing");
    let db = ws.path("app.db");
    let replica = ws.dir("replica");
    create_db(&db, "wal", 30);
    let cfg = write_config(&ws, &db, &[&replica], "5ms", "50ms");
    let (code, _, err) = run_sluice(&[&"replicate", &"-once", &"-config", &cfg]);
    assert_eq!(code, 0, "replicate -once failed: {err}");
    let first_txid = replica_max_txid(&replica);
    assert!(first_txid > 0, "replicate -once shipped nothing: {err}");
    for p in [&db, &ws.path("app.db-wal"), &ws.path("app.db-shm")] {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove {}: {e}", p.display()),
        }
    }

    let mut sluice = Replicate::start(
        &[&"-restore-if-db-not-exists", &"-config", &cfg],
        ws.path("sluice.log"),
    );
    sluice.wait_log("restored database before replicating");
    sluice.wait_log("resuming replication");
    let conn = open_db(&db);
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count");
    assert_eq!(
        rows, 30,
        "the restored database must hold the replicated rows"
    );
    insert(&conn, 10);
    drop(conn);
    wait_txid_settled(&replica, first_txid);
    let log = sluice.stop();
    assert!(
        !log.contains("cannot prove"),
        "a database restored from the replica continues it; no resync snapshot expected:\n{log}"
    );

    let out = ws.path("restored.db");
    assert_replica_matches(&db, &replica, &out);
    assert_eq!(row_count(&out), 40);
}

/// One database, two replicas in one config: each is a complete, independent backup.
#[test]
fn two_replicas_of_one_database_both_restore_identically() {
    let ws = Workspace::new("two-replicas");
    let db = ws.path("app.db");
    let (a, b) = (ws.dir("replica-a"), ws.dir("replica-b"));
    create_db(&db, "wal", 0);
    let cfg = write_config(&ws, &db, &[&a, &b], "5ms", "50ms");
    let sluice = Replicate::start(&[&"-config", &cfg], ws.path("sluice.log"));
    let start_a = wait_txid_settled(&a, 0);
    let start_b = wait_txid_settled(&b, 0);
    let conn = open_db(&db);
    for _ in 0..5 {
        insert(&conn, 10);
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(conn);
    wait_txid_settled(&a, start_a);
    wait_txid_settled(&b, start_b);
    sluice.stop();

    checkpoint_truncate(&open_db(&db));
    for (name, replica) in [("a", &a), ("b", &b)] {
        let out = ws.path(&format!("restored-{name}.db"));
        restore(replica, &out);
        assert_same_file(&db, &out, PAGE_SIZE, &format!("restore of replica {name}"));
        assert_eq!(row_count(&out), 50, "replica {name}");
    }
}

/// `databases` lists the configuration; `status` also reads each replica and reports the
/// newest replicated TXID.
#[test]
fn status_and_databases_report_the_configured_database() {
    let ws = Workspace::new("status");
    let db = ws.path("app.db");
    let replica = ws.dir("replica");
    create_db(&db, "wal", 25);
    let cfg = write_config(&ws, &db, &[&replica], "5ms", "50ms");
    let (code, _, err) = run_sluice(&[&"replicate", &"-once", &"-config", &cfg]);
    assert_eq!(code, 0, "replicate -once failed: {err}");
    let txid = format!("{:016x}", replica_max_txid(&replica));
    let db_path = db.display().to_string();

    let (code, out, err) = run_sluice(&[&"databases", &"-config", &cfg]);
    assert_eq!(code, 0, "databases failed: {err}");
    assert!(
        out.contains(&db_path),
        "databases output lacks {db_path}:\n{out}"
    );
    assert!(
        out.contains(&replica.display().to_string()),
        "databases output lacks the replica:\n{out}"
    );

    let (code, out, err) = run_sluice(&[&"status", &"-config", &cfg]);
    assert_eq!(code, 0, "status failed: {err}");
    let line = out
        .lines()
        .find(|l| l.contains(&db_path))
        .unwrap_or_else(|| panic!("status output lacks {db_path}:\n{out}"));
    assert!(
        line.contains(&txid),
        "status does not report TXID {txid}:\n{out}"
    );
    assert!(line.contains(" ok "), "status is not ok:\n{out}");

    let (code, out, err) = run_sluice(&[&"status", &"-json", &"-config", &cfg]);
    assert_eq!(code, 0, "status -json failed: {err}");
    let rows: serde_json::Value = serde_json::from_str(&out).expect("status -json is JSON");
    assert_eq!(rows[0]["database"], db_path.as_str(), "{out}");
    assert_eq!(rows[0]["replicated_txid"], txid.as_str(), "{out}");
    // The replicator's growing memory: 8 bytes a page of the database.
    let pages = std::fs::metadata(&db).expect("size").len() / u64::from(PAGE_SIZE);
    assert_eq!(rows[0]["page_checksums_bytes"], 8 * pages, "{out}");
}

/// A clean stop and a restart with no writes in between must resume from the replica's
/// position: no resync snapshot (level 9) and no new level-0 file, as nothing changed. Twice:
/// once with the application still connected (the WAL is as sluice left it) and once after the
/// application's last connection closed, which checkpoints and deletes the WAL.
#[test]
fn restart_without_writes_resumes_without_a_snapshot() {
    let ws = Workspace::new("restart");
    let db = ws.path("app.db");
    let replica = ws.dir("replica");
    create_db(&db, "wal", 0);
    let cfg = write_config(&ws, &db, &[&replica], "5ms", "50ms");
    let app = open_db(&db);
    let sluice = Replicate::start(&[&"-config", &cfg], ws.path("sluice-0.log"));
    let start_txid = wait_txid_settled(&replica, 0);
    for _ in 0..3 {
        insert(&app, 20);
    }
    wait_txid_settled(&replica, start_txid);
    sluice.stop();

    let mut app = Some(app);
    for round in 1..=2 {
        if round == 2 {
            // The last connection to close checkpoints the WAL and deletes it.
            drop(app.take());
            assert!(!ws.path("app.db-wal").exists(), "the WAL should be gone");
        }
        let l0 = level_files(&replica, 0);
        let l9 = level_files(&replica, 9);
        let txid = replica_max_txid(&replica);
        let mut sluice =
            Replicate::start(&[&"-config", &cfg], ws.path(&format!("sluice-{round}.log")));
        sluice.wait_log("resuming replication");
        // Several monitor and sync intervals with nothing to ship.
        std::thread::sleep(Duration::from_millis(300));
        let log = sluice.stop();
        assert!(
            !log.contains("cannot prove"),
            "round {round}: resynced:\n{log}"
        );
        let new_l9: Vec<_> = level_files(&replica, 9).difference(&l9).cloned().collect();
        assert!(
            new_l9.is_empty(),
            "round {round}: new snapshots {new_l9:?}; log:\n{log}"
        );
        let new_l0: Vec<_> = level_files(&replica, 0).difference(&l0).cloned().collect();
        assert!(
            new_l0.is_empty(),
            "round {round}: new level-0 files {new_l0:?}; log:\n{log}"
        );
        assert_eq!(replica_max_txid(&replica), txid, "round {round}");
    }

    let out = ws.path("restored.db");
    assert_replica_matches(&db, &replica, &out);
    assert_eq!(row_count(&out), 60);
}

/// The database changes while sluice is down and the WAL that held the changes is gone (the last
/// connection checkpointed and deleted it): continuity cannot be proven, so the restart ships
/// every page as one level-0 file over the replica's newest state (not a level-9 snapshot: a
/// conditional PUT fences one key, see DESIGN.md invariant 4). Both sluice and Litestream
/// restore the result byte for byte.
#[test]
fn changes_made_while_down_ship_every_page_at_level_0() {
    let ws = Workspace::new("down");
    let db = ws.path("app.db");
    let replica = ws.dir("replica");
    create_db(&db, "wal", 10);
    let cfg = write_config(&ws, &db, &[&replica], "5ms", "50ms");
    let sluice = Replicate::start(&[&"-config", &cfg], ws.path("sluice-0.log"));
    wait_txid_settled(&replica, 0);
    sluice.stop();

    let app = open_db(&db);
    insert(&app, 25);
    drop(app);
    assert!(!ws.path("app.db-wal").exists(), "the WAL should be gone");
    let (l0, l9, txid) = (
        level_files(&replica, 0),
        level_files(&replica, 9),
        replica_max_txid(&replica),
    );

    let sluice = Replicate::start(&[&"-config", &cfg], ws.path("sluice-1.log"));
    wait_txid_settled(&replica, txid);
    let log = sluice.stop();
    assert!(log.contains("shipping every page"), "{log}");
    let new_l0: Vec<_> = level_files(&replica, 0).difference(&l0).cloned().collect();
    let expected = sluice_core::replica::file_name(txid + 1, txid + 1);
    assert!(
        new_l0.contains(&expected),
        "new level-0 files {new_l0:?}, want {expected}"
    );
    assert_eq!(level_files(&replica, 9), l9, "no snapshot at start");

    let out = ws.path("restored.db");
    assert_replica_matches(&db, &replica, &out);
    assert_eq!(row_count(&out), 35);
    if let Some(ls) = common::litestream_or_skip() {
        let by_litestream = ws.path("litestream.db");
        let (code, _, err) = common::run_litestream(
            &ls,
            &[&"restore", &"-o", &by_litestream, &file_url(&replica)],
        );
        assert_eq!(code, 0, "litestream restore failed: {err}");
        assert_same_file(
            &db,
            &by_litestream,
            PAGE_SIZE,
            "litestream restore vs source",
        );
    }
}

/// sluice exited with the child's `expected` code after a final sync that shipped the rows
/// written after the initial snapshot: the restore matches the source with all 15 rows.
fn assert_exit_after_final_sync(
    code: i32,
    expected: i32,
    log: &str,
    ws: &Workspace,
    db: &Path,
    replica: &Path,
    (before_txid, rows): (u64, i64),
) {
    assert_eq!(
        code, expected,
        "sluice must exit with the child's code; log:\n{log}"
    );
    assert!(log.contains("final sync done"), "{log}");
    assert!(replica_max_txid(replica) > before_txid, "{log}");
    let out = ws.path("restored.db");
    assert_replica_matches(db, replica, &out);
    assert_eq!(row_count(&out), rows);
}

/// Exit policy: a permanent error stops one database's job, not the process. One database's
/// replica holds pages of another size (it was written from another database); that job stops
/// with a clear error while the other database keeps replicating, and the process, asked to
/// stop, exits 1 because a job had stopped.
#[test]
fn a_job_stopped_by_a_permanent_error_leaves_the_others_replicating() {
    let ws = Workspace::new("job-stops");
    let (good, bad, other) = (ws.path("good.db"), ws.path("bad.db"), ws.path("other.db"));
    let (good_replica, bad_replica) = (ws.dir("replica-good"), ws.dir("replica-bad"));
    create_db(&good, "wal", 5);
    create_db(&bad, "wal", 5);
    // The bad replica gets pages of 1,024 bytes from another database first.
    let conn = open_db(&other);
    conn.pragma_update(None, "page_size", 1024)
        .expect("page_size");
    conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v); INSERT INTO t VALUES (1);")
        .expect("create other");
    drop(conn);
    let (code, _, err) = run_sluice(&[&"replicate", &"-once", &other, &file_url(&bad_replica)]);
    assert_eq!(code, 0, "seeding the other replica failed: {err}");

    let cfg = ws.path("sluice.yml");
    let text = format!(
        "dbs:\n  - path: {}\n    monitor-interval: 5ms\n    replicas:\n      - url: {}\n        sync-interval: 50ms\n  - path: {}\n    monitor-interval: 5ms\n    replicas:\n      - url: {}\n        sync-interval: 50ms\n",
        good.display(),
        file_url(&good_replica),
        bad.display(),
        file_url(&bad_replica)
    );
    std::fs::write(&cfg, text).expect("write the config");
    let mut sluice = Replicate::start(&[&"-config", &cfg], ws.path("sluice.log"));
    sluice.wait_log("replication job stopped; the others carry on");
    let log = sluice.log();
    assert!(
        log.contains("holds pages of 1024 bytes") && log.contains("bad.db"),
        "the stop must say why and for which database:\n{log}"
    );
    // The other database still replicates after the stop.
    let before = wait_txid_settled(&good_replica, 0);
    let conn = open_db(&good);
    insert(&conn, 10);
    drop(conn);
    let after = wait_txid_settled(&good_replica, before);
    assert!(after > before, "the good database stopped replicating");
    assert!(
        sluice.child.try_wait().expect("poll").is_none(),
        "the process exited:\n{}",
        sluice.log()
    );
    sluice.signal("TERM");
    assert_eq!(
        sluice.wait_exit(),
        1,
        "a job had stopped: exit 1; log:\n{}",
        sluice.log()
    );
    assert_replica_matches(&good, &good_replica, &ws.path("restored.db"));
}

/// The sidecar and `-exec` deployment: the application creates its database on its first
/// start, after `sluice replicate` started. sluice waits for the file (it never creates it) and
/// replicates it once it appears, as Litestream does.
#[test]
fn a_database_that_does_not_exist_yet_is_replicated_once_it_appears() {
    let ws = Workspace::new("appears-later");
    let db = ws.path("later.db");
    let replica = ws.dir("replica");
    let cfg = write_config(&ws, &db, &[&replica], "5ms", "50ms");
    let mut sluice = Replicate::start(&[&"-config", &cfg], ws.path("sluice.log"));
    sluice.wait_log("waiting for the database to appear");
    assert!(!db.exists(), "sluice must not create the database");
    assert!(
        sluice.child.try_wait().expect("poll").is_none(),
        "sluice exited:\n{}",
        sluice.log()
    );
    create_db(&db, "wal", 20);
    let txid = wait_txid_settled(&replica, 0);
    assert!(txid > 0, "nothing replicated:\n{}", sluice.log());
    sluice.stop();
    assert_replica_matches(&db, &replica, &ws.path("restored.db"));
}

/// Issue 11: `sluice replicate -exec "app"`, where the app creates its database on its first
/// start, exited at once with "database … does not exist" and never started the app. Now the
/// app starts, sluice waits for the database, replicates what the app writes while it runs and
/// after it exits (the final sync), and exits with the app's code; the restore is the app's
/// database byte for byte. The app is python3's sqlite3 (a writer that is not ours).
#[test]
fn exec_app_that_creates_its_database_is_started_and_replicated() {
    let python_ok = Command::new("python3")
        .args(["-c", "import sqlite3"])
        .status()
        .is_ok_and(|s| s.success());
    if !python_ok {
        assert_ne!(
            std::env::var("SLUICE_REQUIRE_PEERS").as_deref(),
            Ok("1"),
            "python3 with sqlite3 is required"
        );
        println!("skipping: python3 with sqlite3 not found");
        return;
    }
    let ws = Workspace::new("exec-creates");
    let db = ws.path("app.db");
    let replica = ws.dir("replica");
    let cfg = write_config(&ws, &db, &[&replica], "5ms", "50ms");
    let (go, app) = (ws.path("go"), ws.path("app.py"));
    std::fs::write(
        &app,
        format!(
            r#"import os, sqlite3, time
c = sqlite3.connect({db:?}, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
for i in range(20):
    c.execute("INSERT INTO t (v) VALUES (?)", ("first %d" % i,))
while not os.path.exists({go:?}):
    time.sleep(0.01)
for i in range(20):
    c.execute("INSERT INTO t (v) VALUES (?)", ("last %d" % i,))
c.close()
"#,
            db = db.display().to_string(),
            go = go.display().to_string()
        ),
    )
    .expect("write the app");
    let exec = format!("python3 {}", app.display());
    let mut sluice = Replicate::start(&[&"-exec", &exec, &"-config", &cfg], ws.path("sluice.log"));
    // Replicated while the app runs: the first rows.
    let txid = wait_txid_settled(&replica, 0);
    assert!(txid > 0, "nothing replicated:\n{}", sluice.log());
    std::fs::write(&go, b"").expect("let the app finish");
    let code = sluice.wait_exit();
    let log = sluice.log();
    assert_eq!(code, 0, "sluice exits with the app's code:\n{log}");
    assert!(!log.contains("does not exist\n"), "{log}");
    assert_replica_matches(&db, &replica, &ws.path("restored.db"));
    assert_eq!(row_count(&db), 40, "the app ran to its end");
}

/// Issue 11: a database removed while replicating (an application that deletes and recreates
/// its database, a volume swapped) is said once and waited for again; the file that appears
/// at the path is replicated from then on (it does not continue the old one: every page).
#[test]
fn a_database_removed_while_replicating_is_waited_for_again() {
    let ws = Workspace::new("removed");
    let db = ws.path("app.db");
    let replica = ws.dir("replica");
    create_db(&db, "wal", 5);
    let cfg = write_config(&ws, &db, &[&replica], "5ms", "50ms");
    let mut sluice = Replicate::start(&[&"-config", &cfg], ws.path("sluice.log"));
    let first = wait_txid_settled(&replica, 0);
    for side in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(side);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    sluice.wait_log("removed or replaced while replicating; waiting for it to appear");
    assert!(
        sluice.child.try_wait().expect("poll").is_none(),
        "sluice exited:\n{}",
        sluice.log()
    );
    create_db(&db, "wal", 9);
    let txid = wait_txid_settled(&replica, first);
    assert!(
        txid > first,
        "the new database was not replicated:\n{}",
        sluice.log()
    );
    let log = sluice.stop();
    assert_eq!(
        log.matches("removed or replaced while replicating").count(),
        1,
        "said once:\n{log}"
    );
    assert_replica_matches(&db, &replica, &ws.path("restored.db"));
}

/// Every LTX file of a directory replica, with its bytes.
fn ltx_files(replica: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for level in 0..=9u8 {
        for name in level_files(replica, level) {
            let path = replica.join("ltx").join(level.to_string()).join(&name);
            let bytes = std::fs::read(&path).expect("read a replica file");
            out.insert(format!("{level}/{name}"), bytes);
        }
    }
    out
}

/// Issue 11: `sluice replicate x.db file:///r` and `sluice replicate y.db file:///r` both ran,
/// each re-uploading every page, and a restore returned whichever wrote last. Directory
/// replicas now hold the lease too, and the lease records whose history the replica holds:
/// while x runs every second replicator is refused; after it stopped, y (which does not
/// continue x's history) is refused naming both and writes no file. `-force` continues the
/// replica with y on purpose; a copy of x restored to a new path (a replaced host) continues
/// it without.
#[test]
fn a_second_database_on_one_directory_replica_is_refused_and_touches_nothing() {
    let ws = Workspace::new("two-dbs");
    let (x, y) = (ws.path("x.db"), ws.path("y.db"));
    let replica = ws.dir("replica");
    create_db(&x, "wal", 5);
    create_db(&y, "wal", 7);
    let url = file_url(&replica);
    let first = Replicate::start(&[&x, &url], ws.path("x.log"));
    wait_txid_settled(&replica, 0);
    let (y_name, x_name) = (y.display().to_string(), x.display().to_string());
    // While it runs, any second replicator is refused by the lease, naming the holder.
    for db in [&y, &x] {
        let (code, _, err) = run_sluice(&[&"replicate", &"-once", db, &url]);
        assert_ne!(
            code,
            0,
            "a second replicator was accepted ({})",
            db.display()
        );
        assert!(
            err.contains("is being replicated by") && err.contains(&x_name),
            "{err}"
        );
    }
    let log = first.stop();
    assert!(!log.contains("ERROR"), "{log}");
    let files = ltx_files(&replica);

    // Stopped: its lease expired, but the replica still holds x's history.
    let (code, out, err) = run_sluice(&[&"replicate", &"-once", &y, &url]);
    let said = format!("{out}{err}");
    assert_ne!(
        code, 0,
        "a second database was accepted after the first stopped"
    );
    assert!(
        said.contains(&y_name) && said.contains(&x_name) && said.contains("-force"),
        "the refusal must name both databases and the way out:\n{said}"
    );
    assert_eq!(
        ltx_files(&replica),
        files,
        "the refused database wrote to the replica"
    );
    assert_replica_matches(&x, &replica, &ws.path("x-restored.db"));

    // A replaced host: x restored to a new path continues the replica, and the replica is
    // the new path's from then on (written when its lease is released).
    let moved = ws.path("moved.db");
    restore(&replica, &moved);
    for _ in 0..2 {
        let (code, _, err) = run_sluice(&[&"replicate", &"-once", &moved, &url]);
        assert_eq!(code, 0, "a restored copy must continue its replica: {err}");
        insert(&open_db(&moved), 3);
    }
    let (code, _, err) = run_sluice(&[&"replicate", &"-once", &moved, &url]);
    assert_eq!(code, 0, "the replica is the restored copy's now: {err}");
    assert_replica_matches(&moved, &replica, &ws.path("moved-restored.db"));

    // On purpose: the replica continues with y, and its newest state is y's.
    let (code, _, err) = run_sluice(&[&"replicate", &"-once", &"-force", &y, &url]);
    assert_eq!(code, 0, "-force must take the replica over: {err}");
    assert_replica_matches(&y, &replica, &ws.path("y-restored.db"));
}

/// `replicate -once` for cron backups: each run ships what is pending and exits 0;
/// `-force-snapshot` adds a snapshot of the newest state, `-enforce-retention` deletes what
/// retention allows (here the older snapshot), and the replica still restores byte for byte.
#[test]
fn once_ships_then_snapshots_and_enforces_retention_on_request() {
    let ws = Workspace::new("once-ops");
    let db = ws.path("app.db");
    let replica = ws.dir("replica");
    create_db(&db, "wal", 30);
    let cfg = ws.path("sluice.yml");
    std::fs::write(
        &cfg,
        format!(
            "snapshot:\n  retention: 1ms\nl0-retention: 1ms\ndbs:\n  - path: \"{}\"\n    replica:\n      url: \"file://{}\"\n",
            db.display(),
            replica.display()
        ),
    )
    .expect("write the config");
    let once = |extra: &[&str]| {
        let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"replicate", &"-once"];
        for a in extra {
            args.push(a);
        }
        args.push(&"-config");
        args.push(&cfg);
        let (code, _, err) = run_sluice(&args);
        assert_eq!(code, 0, "replicate -once {extra:?}: {err}");
    };
    let snapshots = || -> Vec<String> {
        common::dir_entries(&replica.join("ltx/9"))
            .into_iter()
            .filter(|n| n.ends_with(".ltx"))
            .collect()
    };
    once(&[]);
    let first = replica_max_txid(&replica);
    assert!(first > 0, "nothing shipped");
    let conn = open_db(&db);
    insert(&conn, 10);
    once(&["-force-snapshot"]);
    let second = replica_max_txid(&replica);
    assert!(second > first, "the second run shipped nothing");
    let snaps = snapshots();
    assert!(
        snaps
            .iter()
            .any(|n| n.ends_with(&format!("-{second:016x}.ltx"))),
        "no snapshot of TXID {second:016x}: {snaps:?}"
    );
    insert(&conn, 10);
    once(&["-force-snapshot"]);
    let third = replica_max_txid(&replica);
    assert!(snapshots().len() >= 2, "{:?}", snapshots());
    once(&["-enforce-retention"]);
    let left = snapshots();
    assert_eq!(
        left,
        vec![format!("0000000000000001-{third:016x}.ltx")],
        "retention keeps the newest snapshot only"
    );
    drop(conn);
    let out = ws.path("restored.db");
    assert_replica_matches(&db, &replica, &out);
    assert_eq!(row_count(&out), 50);

    let (code, _, err) = run_sluice(&[&"replicate", &"-force-snapshot", &"-config", &cfg]);
    assert_ne!(code, 0, "-force-snapshot without -once was accepted");
    assert!(err.contains("needs -once"), "{err}");
}

/// Directory replication: every matching SQLite database under `dir` (recursively) goes to
/// its own replica path, the replica's path joined with the database's relative path; other
/// files are left alone; each restores by its own path through the same configuration.
#[test]
fn directory_replication_replicates_every_matching_database_to_its_own_path() {
    let ws = Workspace::new("dir-repl");
    let tenants = ws.dir("tenants");
    std::fs::create_dir_all(tenants.join("eu")).expect("mkdir");
    let (a, b) = (tenants.join("a.db"), tenants.join("eu/b.db"));
    create_db(&a, "wal", 12);
    create_db(&b, "wal", 7);
    std::fs::write(tenants.join("readme.db"), b"not a database").expect("write");
    create_db(&tenants.join("c.sqlite"), "wal", 3);
    let replicas = ws.dir("replicas");
    let cfg = ws.path("sluice.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - dir: \"{}\"\n    pattern: \"*.db\"\n    recursive: true\n    replica:\n      url: \"file://{}\"\n",
            tenants.display(),
            replicas.display()
        ),
    )
    .expect("write the config");
    let (code, _, err) = run_sluice(&[&"replicate", &"-once", &"-config", &cfg]);
    assert_eq!(code, 0, "replicate -once: {err}");
    assert!(replica_max_txid(&replicas.join("a.db")) > 0, "{err}");
    assert!(replica_max_txid(&replicas.join("eu/b.db")) > 0, "{err}");
    assert!(!replicas.join("c.sqlite").exists() && !replicas.join("readme.db").exists());
    for (db, rows) in [(&a, 12), (&b, 7)] {
        let out = ws.path("out.db");
        let _ = std::fs::remove_file(&out);
        let (code, _, err) = run_sluice(&[
            &"restore",
            &"-config",
            &cfg,
            &"-o",
            &out,
            &db.display().to_string(),
        ]);
        assert_eq!(code, 0, "restore {}: {err}", db.display());
        assert_eq!(row_count(&out), rows, "{}", db.display());
    }
}

/// `watch: true`: a database that appears in the directory while sluice runs is replicated
/// within a rescan; one removed from it stops being replicated, and sluice runs on.
#[test]
fn watched_directories_pick_up_new_databases_and_let_go_of_removed_ones() {
    let ws = Workspace::new("dir-watch");
    let tenants = ws.dir("tenants");
    let a = tenants.join("a.db");
    create_db(&a, "wal", 5);
    let replicas = ws.dir("replicas");
    let cfg = ws.path("sluice.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - dir: \"{}\"\n    pattern: \"*.db\"\n    watch: true\n    monitor-interval: 20ms\n    replica:\n      url: \"file://{}\"\n      sync-interval: 20ms\n",
            tenants.display(),
            replicas.display()
        ),
    )
    .expect("write the config");
    let mut sluice = Replicate::start(&[&"-config", &cfg], ws.path("sluice.log"));
    wait_txid_settled(&replicas.join("a.db"), 0);

    let b = tenants.join("b.db");
    create_db(&b, "wal", 9);
    sluice.wait_log("appeared in a watched directory");
    wait_txid_settled(&replicas.join("b.db"), 0);
    let out = ws.path("b-restored.db");
    restore(&replicas.join("b.db"), &out);
    assert_eq!(row_count(&out), 9);

    for p in [
        a.clone(),
        tenants.join("a.db-wal"),
        tenants.join("a.db-shm"),
    ] {
        let _ = std::fs::remove_file(p);
    }
    sluice.wait_log("removed from a watched directory");
    // b.db still replicates.
    let before = replica_max_txid(&replicas.join("b.db"));
    insert(&open_db(&b), 4);
    wait_txid_settled(&replicas.join("b.db"), before);
    let log = sluice.stop();
    assert!(!log.contains("ERROR"), "{log}");
}

/// Issue 10: the first compaction of each level read and wrote the whole database again (the
/// first snapshot is level-0 file 1, and the level-1 file over it held every page). Now the
/// store copies that file up: on a directory replica a hard link (the same inode at levels 0,
/// 1 and 2: no byte moved), and the TXIDs after it are merged as before. With level 0 pruned
/// down to what the levels above do not hold, both tools restore the levels' chains, and
/// `-txid 1` still gives the first snapshot's state.
#[test]
fn each_level_copies_the_first_snapshot_up_and_both_tools_restore_the_levels() {
    use std::os::unix::fs::MetadataExt;
    let ws = Workspace::new("copy-up");
    let db = ws.path("app.db");
    let replica = ws.dir("replica");
    create_db(&db, "wal", 200);
    let first_state = ws.path("first.db");
    std::fs::copy(&db, &first_state).expect("copy the first state");
    let cfg = ws.path("sluice.yml");
    std::fs::write(
        &cfg,
        format!(
            "levels:\n  - interval: 1s\n  - interval: 2s\nl0-retention: 1ms\ndbs:\n  - path: \"{}\"\n    monitor-interval: 5ms\n    replica:\n      url: \"{}\"\n      sync-interval: 20ms\n",
            db.display(),
            file_url(&replica)
        ),
    )
    .expect("write the config");
    let mut sluice = Replicate::start(&[&"-config", &cfg], ws.path("sluice.log"));
    let snapshot = "0000000000000001-0000000000000001.ltx";
    wait_for("the first snapshot", || {
        level_files(&replica, 0).contains(snapshot).then_some(())
    });
    let conn = open_db(&db);
    let mut txid = replica_max_txid(&replica);
    // Commits until level 2 holds the copy and a merged file after it, and level 0 has been
    // pruned below level 1's newest file.
    let mut commits = 0;
    wait_for("level 2 past the first snapshot, level 0 pruned", || {
        if let Ok(Some(status)) = sluice.child.try_wait() {
            panic!("sluice exited ({status}); log:\n{}", sluice.log());
        }
        insert(&conn, 3);
        commits += 1;
        txid = wait_txid_settled(&replica, txid);
        let (l0, l2) = (level_files(&replica, 0), level_files(&replica, 2));
        (l2.len() >= 2 && !l0.contains(snapshot)).then_some(())
    });
    sluice.stop();
    drop(conn);
    for level in [1, 2] {
        assert!(
            level_files(&replica, level).contains(snapshot),
            "level {level} has no copy of the first snapshot: {:?}",
            level_files(&replica, level)
        );
    }
    // Level 0's snapshot was pruned, but levels 1 and 2 still name its inode.
    let inode = |level: u8| {
        std::fs::metadata(replica.join(format!("ltx/{level}/{snapshot}")))
            .expect("stat the copy")
            .ino()
    };
    assert_eq!(inode(1), inode(2), "level 2's copy is not a hard link");
    // The merge goes on right after the copy (however many commits the levels' boundaries
    // let through before the wait saw them: one in a fast build).
    let after_copy = level_files(&replica, 2);
    assert!(
        after_copy
            .iter()
            .any(|f| f.starts_with("0000000000000002-")),
        "level 2 has no file from TXID 2 on after the copy ({commits} commits): {after_copy:?}"
    );
    assert_replica_matches(&db, &replica, &ws.path("restored.db"));
    let at_one = ws.path("at-1.db");
    let (code, _, err) = run_sluice(&[
        &"restore",
        &"-txid",
        &"1",
        &"-o",
        &at_one,
        &file_url(&replica),
    ]);
    assert_eq!(code, 0, "restore -txid 1: {err}");
    assert_same_file(
        &first_state,
        &at_one,
        PAGE_SIZE,
        "restore -txid 1 vs the first state",
    );
    if let Some(ls) = common::litestream_or_skip() {
        let out = ws.path("litestream.db");
        let (code, _, err) =
            common::run_litestream(&ls, &[&"restore", &"-o", &out, &file_url(&replica)]);
        assert_eq!(code, 0, "litestream restore of the copied levels: {err}");
        assert_same_file(&db, &out, PAGE_SIZE, "litestream restore vs source");
    }
}
