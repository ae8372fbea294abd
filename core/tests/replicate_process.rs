//! `sluice replicate` as a real process beside a writer in another process (python3's sqlite3),
//! with the writer checkpointing in every mode at random moments, sluice killed with SIGKILL and
//! restarted mid-stream while the writer continues, and finally restores by sluice and by the
//! real Litestream compared byte for byte with the source.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{Workspace, assert_integrity_ok, assert_same_file, file_url, run_sluice};

/// The writer: `N` transactions of inserts, updates and deletes with rows from a few bytes to
/// several pages, a checkpoint of a random mode every few transactions, a new connection now and
/// then (closing the last connection while sluice is down checkpoints and deletes the WAL), and
/// a VACUUM in the middle. Seeded, so a failure replays.
const WRITER: &str = r#"
import random, sqlite3, sys, time
path, n, seed, pace_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rng = random.Random(seed)
def connect():
    c = sqlite3.connect(path, timeout=30, isolation_level=None)
    c.execute("PRAGMA busy_timeout=30000")
    return c
c = connect()
c.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
for i in range(n):
    c.execute("BEGIN IMMEDIATE")
    for _ in range(rng.randint(1, 20)):
        op = rng.random()
        if op < 0.7:
            c.execute("INSERT INTO t (v) VALUES (?)", (rng.randbytes(rng.choice([10, 200, 3000, 9000])),))
        elif op < 0.85:
            c.execute("UPDATE t SET v = ? WHERE id = (SELECT id FROM t ORDER BY random() LIMIT 1)", (rng.randbytes(100),))
        else:
            c.execute("DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT 3)")
    c.execute("COMMIT")
    if i == n // 2:
        c.execute("DELETE FROM t WHERE id % 2 = 0")
        c.execute("VACUUM")
    if rng.random() < 0.08:
        mode = rng.choice(["PASSIVE", "FULL", "RESTART", "TRUNCATE"])
        c.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
    if rng.random() < 0.03:
        c.close()
        c = connect()
    time.sleep(pace_ms / 1000.0)
c.close()
"#;

fn write_config(dir: &Path, db: &Path, replica: &Path) -> std::path::PathBuf {
    let cfg = dir.join("sluice.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    monitor-interval: 5ms\n    replica:\n      url: {}\n      sync-interval: 50ms\n",
            db.display(),
            file_url(replica)
        ),
    )
    .expect("write config");
    cfg
}

fn start_sluice(cfg: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(common::sluice_bin())
        .args(["replicate", "-config"])
        .arg(cfg)
        .env("SLUICE_LOG", "info")
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start sluice replicate")
}

fn python() -> Option<String> {
    let ok = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3")
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some("python3".into());
    }
    if std::env::var("SLUICE_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!("python3 with sqlite3 is required for the writer process");
    }
    println!("skipping: python3 with sqlite3 not found");
    None
}

/// The writer's seed: `SLUICE_TEST_SEED` replays a failure (the test prints the one it used).
fn seed() -> String {
    let seed = std::env::var("SLUICE_TEST_SEED").unwrap_or_else(|_| "7".into());
    println!("writer seed {seed} (replay with SLUICE_TEST_SEED={seed})");
    seed
}

#[test]
fn replicate_survives_app_checkpoints_and_sigkill() {
    let Some(py) = python() else { return };
    let ws = Workspace::new("replicate");
    let db = ws.path("app.db");
    let replica = ws.dir("replica");
    let log = ws.path("sluice.log");
    {
        let c = rusqlite::Connection::open(&db).expect("create db");
        c.pragma_update(None, "journal_mode", "WAL").expect("wal");
        c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
            .expect("table");
    }
    let cfg = write_config(ws.root(), &db, &replica);
    let mut sluice = start_sluice(&cfg, &log);
    let mut writer = Command::new(&py)
        .args(["-c", WRITER])
        .arg(&db)
        .args(["600", &seed(), "3"])
        .spawn()
        .expect("start writer");

    // Kill sluice twice while the writer runs, leaving it down for a while each time.
    for round in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        sluice.kill().expect("SIGKILL sluice");
        let _ = sluice.wait();
        std::thread::sleep(std::time::Duration::from_millis(300 + 200 * round));
        sluice = start_sluice(&cfg, &log);
    }
    let status = writer.wait().expect("writer");
    assert!(status.success(), "writer failed: {status}");

    // A graceful stop makes a final sync: everything committed is in the replica.
    let pid = sluice.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let exit = sluice.wait().expect("sluice exit");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        exit.success(),
        "sluice exited with {exit}; log:\n{log_text}"
    );

    let c = rusqlite::Connection::open(&db).expect("open source");
    common::checkpoint_truncate(&c);
    let page_size: u32 = c
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page size");
    drop(c);

    let out = ws.path("restored.db");
    let r = run_sluice(&[
        &"restore",
        &"-integrity-check",
        &"full",
        &"-o",
        &out,
        &file_url(&replica),
    ]);
    assert_eq!(r.0, 0, "sluice restore failed: {}\nlog:\n{log_text}", r.2);
    assert_same_file(&db, &out, page_size, "sluice restore vs source");
    assert_integrity_ok(&out);

    if let Some(ls) = common::litestream_or_skip() {
        let out = ws.path("litestream.db");
        let r = common::run_litestream(&ls, &[&"restore", &"-o", &out, &file_url(&replica)]);
        assert_eq!(r.0, 0, "litestream restore failed: {}", r.2);
        assert_same_file(
            &db,
            &out,
            page_size,
            "litestream restore of a sluice replica vs source",
        );
    }
}

#[test]
fn replicate_refuses_bad_input_clearly() {
    let ws = Workspace::new("replicate-bad");
    let cfg = ws.path("bad.yml");
    std::fs::write(
        &cfg,
        "dbs:\n  - path: /x.db\n    replica:\n      url: file:///r\n      sync-intreval: 1s\n",
    )
    .expect("cfg");
    let (code, _, err) = run_sluice(&[&"replicate", &"-config", &cfg]);
    assert!(
        code != 0 && err.contains("sync-intreval") && err.contains("line 5"),
        "{err}"
    );

    std::fs::write(
        &cfg,
        "dbs:\n  - path: /x.db\n    replica:\n      url: ${SLUICE_TEST_UNSET_VAR}\n",
    )
    .expect("cfg");
    let (code, _, err) = run_sluice(&[&"replicate", &"-config", &cfg]);
    assert!(code != 0 && err.contains("SLUICE_TEST_UNSET_VAR"), "{err}");

    std::fs::write(
        &cfg,
        "dbs:\n  - path: /x.db\n    replica:\n      url: ftp://host/x\n",
    )
    .expect("cfg");
    let (code, _, err) = run_sluice(&[&"replicate", &"-config", &cfg]);
    assert!(code != 0 && err.contains("ftp"), "{err}");
}
