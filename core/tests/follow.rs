//! `sluice restore -f`, a read replica: while `sluice replicate` ships a busy database (inserts
//! of assorted sizes, deletes, the application's TRUNCATE checkpoint, a VACUUM that shrinks the
//! file), a follower keeps its copy current and a separate reader process (python3's sqlite3)
//! checks the copy in a loop: `quick_check` passes and a row-count invariant the writer keeps in
//! every transaction holds, in every state it sees. At the end the follower's copy equals the
//! source byte for byte but for the stamp SQLite writes into page 1 (change counter and version
//! numbers, bytes 24..28 and 92..100: the follower's own SQLite stamps them when it writes page
//! 1); a follower restarted on its own output continues from where it was.
//!
//! And a follower that cannot continue its output seeds it again from the newest snapshot,
//! saying why in its log and its metrics (`-addr`): once retention removed files it needed (a
//! gap), once the replica was replaced by a new lineage behind it.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{
    Workspace, file_url, first_difference, replica_max_txid, run_sluice, sluice_bin, wait_for,
    wait_txid_settled,
};
use rusqlite::Connection;

/// The reader: opens the follower's copy again and again, checks it, prints `seen SEQ` for
/// each new state it sees and a summary line once `stop` exists.
const READER: &str = r#"
import os, sqlite3, sys, time
db, stop = sys.argv[1], sys.argv[2]
reads = busy = 0
seen = set()
violations = []
while not os.path.exists(stop):
    if not os.path.exists(db):
        time.sleep(0.005)
        continue
    try:
        c = sqlite3.connect(db, timeout=30)
        c.execute("BEGIN")
        rows, n, seq = c.execute("SELECT (SELECT count(*) FROM t), n, seq FROM c").fetchone()
        check = c.execute("PRAGMA quick_check").fetchone()[0]
        c.execute("COMMIT")
        c.close()
    except sqlite3.OperationalError as e:
        busy += 1
        continue
    reads += 1
    if seq not in seen:
        seen.add(seq)
        print(f"seen {seq}", flush=True)
    if check != "ok" or rows != n:
        violations.append((rows, n, check))
print(f"reads={reads} states={len(seen)} busy={busy} violations={violations[:5]}", flush=True)
"#;

fn start_follower(ws: &Workspace, out: &Path, replica: &Path, log: &str) -> Child {
    start_follower_with(ws, out, replica, log, &["-follow-interval", "20ms"])
}

fn start_follower_with(
    ws: &Workspace,
    out: &Path,
    replica: &Path,
    log: &str,
    flags: &[&str],
) -> Child {
    let log = std::fs::File::create(ws.path(log)).expect("create the follower log");
    Command::new(sluice_bin())
        .args(["restore", "-f"])
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(format!("file://{}", replica.display()))
        .env("SLUICE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log"))
        .stderr(log)
        .spawn()
        .expect("start the follower")
}

fn stop(mut child: Child, what: &str) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "{what} exited with {status}");
}

/// One transaction of the workload: rows in, some out, the count kept in `c`.
fn commit(c: &Connection, i: u32) {
    let tx = c.unchecked_transaction().expect("begin");
    let k = 1 + i % 4;
    for j in 0..k {
        let size = [20usize, 700, 5000, 12000][((i + j) % 4) as usize];
        tx.execute(
            "INSERT INTO t (v) VALUES (?1)",
            [vec![(i % 251) as u8; size]],
        )
        .expect("insert");
    }
    let gone = if i.is_multiple_of(5) {
        tx.execute("DELETE FROM t WHERE id % 9 = ?1", [i % 9])
            .expect("delete")
    } else {
        0
    };
    // `seq` tells states apart where the count does not (a commit may delete as many rows
    // as it adds).
    tx.execute(
        "UPDATE c SET n = n + ?1, seq = ?2",
        [
            i64::from(k) - i64::try_from(gone).expect("rows"),
            i64::from(i),
        ],
    )
    .expect("count");
    tx.commit().expect("commit");
}

/// The count the writer keeps, or -1 while there is no database (opening one would create it).
fn count(db: &Path) -> i64 {
    read_c(db, "n")
}

/// The number of the last commit applied, or -1.
fn seq(db: &Path) -> i64 {
    read_c(db, "seq")
}

/// The database file with page 1's stamp (bytes 24..28 and 92..100) zeroed.
fn unstamped(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).expect("read a database");
    for range in [24..28, 92..100] {
        bytes[range].fill(0);
    }
    bytes
}

fn assert_same_but_stamp(src: &Path, copy: &Path, what: &str) {
    let (a, b) = (unstamped(src), unstamped(copy));
    assert_eq!(a.len(), b.len(), "{what}: sizes differ");
    assert_eq!(first_difference(&a, &b), None, "{what}: the copy differs");
}

/// The source database: the writer's schema, WAL mode.
fn source(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open the source");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);
         CREATE TABLE c (n INTEGER, seq INTEGER); INSERT INTO c VALUES (0, 0);",
    )
    .expect("schema");
    conn
}

/// `GET /metrics` on 127.0.0.1:`port`: the value of metric `name` in the sample carrying every
/// label of `labels`, or `None` while nothing answers or there is no such sample.
fn metric_with(port: u16, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    sock.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    sock.read_to_string(&mut text).ok()?;
    text.lines().find_map(|line| {
        let (sample, value) = line
            .strip_prefix(name)?
            .strip_prefix('{')?
            .rsplit_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| sample.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())?
    })
}

fn read_c(db: &Path, column: &str) -> i64 {
    if !db.exists() {
        return -1;
    }
    Connection::open(db)
        .and_then(|c| c.query_row(&format!("SELECT {column} FROM c"), [], |r| r.get(0)))
        .unwrap_or(-1)
}

#[test]
fn a_follower_stays_current_and_readers_never_see_a_torn_state() {
    let ws = Workspace::new("follow");
    let src = ws.path("src.db");
    let replica = ws.dir("replica");
    let copy = ws.path("copy.db");
    let conn = source(&src);
    for i in 0..20 {
        commit(&conn, i);
    }
    let cfg = ws.path("sluice.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: \"{}\"\n    monitor-interval: 20ms\n    replica:\n      url: \"file://{}\"\n      sync-interval: 20ms\n",
            src.display(),
            replica.display()
        ),
    )
    .expect("write the config");
    let replicate_log = std::fs::File::create(ws.path("replicate.log")).expect("log");
    let replicate = Command::new(sluice_bin())
        .args(["replicate", "-config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(replicate_log.try_clone().expect("clone"))
        .stderr(replicate_log)
        .spawn()
        .expect("start sluice replicate");
    wait_txid_settled(&replica, 0);

    let stop_file = ws.path("stop-reader");
    let mut reader = Command::new("python3")
        .args(["-c", READER])
        .arg(&copy)
        .arg(&stop_file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the reader");
    // What the reader has seen, as it says it: the writer waits for it between batches, so the
    // reader reads while files are applied however the machine schedules the processes.
    let reader_seen = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(-1));
    let summary_line = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let lines = {
        let out = reader.stdout.take().expect("the reader's stdout");
        let (seen, summary) = (reader_seen.clone(), summary_line.clone());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                match line
                    .strip_prefix("seen ")
                    .and_then(|n| n.parse::<i64>().ok())
                {
                    Some(n) => {
                        seen.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    None => *summary.lock().expect("summary") = line,
                }
            }
        })
    };
    let follower = start_follower(&ws, &copy, &replica, "follow.log");
    wait_for("the follower's first restore", || {
        (count(&copy) >= 0).then_some(())
    });

    for i in 20..220 {
        commit(&conn, i);
        if i == 90 {
            common::checkpoint_truncate(&conn);
        }
        if i == 150 {
            // Shrinks the file: the follower truncates its copy in the same transaction.
            conn.execute_batch("DELETE FROM t WHERE id % 2 = 0; UPDATE c SET n = (SELECT count(*) FROM t); VACUUM;")
                .expect("vacuum");
        }
        if i % 20 == 19 {
            let at = i64::from(i);
            wait_for("the follower and its reader to reach this batch", || {
                (seq(&copy) >= at && reader_seen.load(std::sync::atomic::Ordering::Relaxed) >= at)
                    .then_some(())
            });
        }
    }
    let want = seq(&src);
    wait_for("the follower to reach the source", || {
        (seq(&copy) == want).then_some(())
    });

    std::fs::write(&stop_file, b"").expect("stop the reader");
    let status = reader.wait().expect("the reader's exit");
    lines.join().expect("the reader's output");
    let summary = summary_line.lock().expect("summary").clone();
    println!("reader: {summary}");
    assert!(status.success(), "reader failed: {summary}");
    assert!(
        summary.contains("violations=[]"),
        "torn state seen: {summary}"
    );
    let number = |key: &str| -> u64 {
        summary
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {summary:?}"))
    };
    assert!(number("reads=") >= 20, "the reader barely read: {summary}");
    assert!(
        number("states=") >= 10,
        "the reader saw too few states to have read while files were applied: {summary}"
    );

    // A follower restarted on its own output continues it (no second restore).
    stop(follower, "the follower");
    let follower = start_follower(&ws, &copy, &replica, "follow2.log");
    for i in 220..240 {
        commit(&conn, i);
    }
    let want = seq(&src);
    wait_for("the restarted follower to reach the source", || {
        (seq(&copy) == want).then_some(())
    });
    stop(follower, "the restarted follower");
    let log2 = std::fs::read_to_string(ws.path("follow2.log")).expect("log");
    assert!(!log2.contains("restored "), "restored again:\n{log2}");
    assert!(log2.contains("following the replica"), "{log2}");
    assert!(
        !log2.contains("seeding"),
        "seeded again instead of continuing:\n{log2}"
    );

    common::checkpoint_truncate(&conn);
    stop(replicate, "sluice replicate");
    drop(conn);
    // The follower's last connection checkpointed its WAL into the copy on exit.
    assert_same_but_stamp(&src, &copy, "the follower's copy");
}

#[test]
fn a_follower_that_cannot_continue_seeds_again_and_says_why() {
    let ws = Workspace::new("follow-reseed");
    let src = ws.path("src.db");
    let replica = ws.dir("replica");
    let copy = ws.path("copy.db");
    let url = file_url(&replica);
    let once = |flags: &[&str]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"replicate", &"-once"];
        args.extend(flags.iter().map(|f| f as &dyn AsRef<std::ffi::OsStr>));
        args.extend([&src as &dyn AsRef<std::ffi::OsStr>, &url]);
        let (code, _, err) = run_sluice(&args);
        assert_eq!(code, 0, "replicate -once {flags:?}: {err}");
        replica_max_txid(&replica)
    };
    let port = common::s3::free_port();
    let addr = format!("127.0.0.1:{port}");
    let flags = ["-follow-interval", "50ms", "-addr", addr.as_str()];
    let txid_is = |want: u64| {
        move || {
            metric_with(port, "sluice_follow_txid", &[])
                .filter(|&t| t as u64 == want)
                .map(|_| ())
        }
    };
    let reseeds = |reason: &str| {
        metric_with(port, "sluice_follow_reseeds_total", &[("reason", reason)]).unwrap_or(-1.0)
    };

    let conn = source(&src);
    for i in 0..10 {
        commit(&conn, i);
    }
    let first = once(&[]);
    let follower = start_follower_with(&ws, &copy, &replica, "follow.log", &flags);
    wait_for("the follower to reach the replica", txid_is(first));
    stop(follower, "the follower");

    // A gap: the files after the follower's TXID are gone, a newer snapshot is there.
    for i in 10..20 {
        commit(&conn, i);
    }
    once(&[]);
    for i in 20..25 {
        commit(&conn, i);
    }
    let newest = once(&["-force-snapshot"]);
    let mut removed = 0;
    for level in 0..9 {
        let dir = replica.join("ltx").join(level.to_string());
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let range = name.strip_suffix(".ltx").and_then(|r| r.split_once('-'));
            let Some((min, max)) = range else { continue };
            let (min, max) = (
                u64::from_str_radix(min, 16).expect("min TXID"),
                u64::from_str_radix(max, 16).expect("max TXID"),
            );
            if min <= first + 1 && first < max {
                std::fs::remove_file(entry.path()).expect("remove a file");
                removed += 1;
            }
        }
    }
    assert!(removed > 0, "no file continued TXID {first:016x}");
    let follower = start_follower_with(&ws, &copy, &replica, "follow-gap.log", &flags);
    wait_for("the follower to seed again across the gap", txid_is(newest));
    assert_eq!(reseeds("gap"), 1.0, "the gap re-seed in the metrics");
    common::checkpoint_truncate(&conn);
    drop(conn);
    wait_for("the follower's copy to match", || {
        (seq(&copy) == seq(&src)).then_some(())
    });
    let log = std::fs::read_to_string(ws.path("follow-gap.log")).expect("log");
    assert!(
        log.contains("no file continues") && log.contains("seeding the output again"),
        "the gap is not in the log:\n{log}"
    );

    // A new lineage behind the follower: the replica and the database replaced by a smaller one.
    std::fs::remove_dir_all(&replica).expect("remove the replica");
    for p in [src.clone(), ws.path("src.db-wal"), ws.path("src.db-shm")] {
        let _ = std::fs::remove_file(p);
    }
    let conn = source(&src);
    for i in 100..103 {
        commit(&conn, i);
    }
    let lineage = once(&[]);
    assert!(
        lineage < newest,
        "the new lineage is not behind the follower"
    );
    wait_for("the follower to seed the new lineage", txid_is(lineage));
    assert_eq!(
        reseeds("lineage"),
        1.0,
        "the lineage re-seed in the metrics"
    );
    assert_eq!(reseeds("checks"), 0.0, "no file failed its checks");
    let applied = metric_with(port, "sluice_follow_files_applied_total", &[]).expect("applied");
    assert!(
        applied >= 2.0,
        "a file for each re-seed; applied: {applied}"
    );
    let lists = metric_with(port, "sluice_store_requests_total", &[("op", "list")]).expect("lists");
    assert!(lists > 0.0, "the follower's LISTs are not counted");
    common::checkpoint_truncate(&conn);
    drop(conn);
    stop(follower, "the follower");
    let log = std::fs::read_to_string(ws.path("follow-gap.log")).expect("log");
    assert!(
        log.contains("a new lineage"),
        "the lineage is not in the log:\n{log}"
    );
    assert_same_but_stamp(&src, &copy, "the follower's copy of the new lineage");
}
