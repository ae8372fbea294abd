//! `sluice restore -f`, a read replica: while `sluice replicate` ships a busy database (inserts
//! of assorted sizes, deletes, the application's TRUNCATE checkpoint, a VACUUM that shrinks the
//! file), a follower keeps its copy current and a separate reader process (python3's sqlite3)
//! checks the copy in a loop: `quick_check` passes and a row-count invariant the writer keeps in
//! every transaction holds, in every state it sees. At the end the follower's copy equals the
//! source byte for byte but for the stamp SQLite writes into page 1 (change counter and version
//! numbers, bytes 24..28 and 92..100: the follower's own SQLite stamps them when it writes page
//! 1); a follower restarted on its own output continues from where it was.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{Workspace, first_difference, sluice_bin, wait_for, wait_txid_settled};
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
    let log = std::fs::File::create(ws.path(log)).expect("create the follower log");
    Command::new(sluice_bin())
        .args(["restore", "-f", "-follow-interval", "20ms", "-o"])
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
    let conn = Connection::open(&src).expect("open the source");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);
         CREATE TABLE c (n INTEGER, seq INTEGER); INSERT INTO c VALUES (0, 0);",
    )
    .expect("schema");
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
    let unstamped = |path: &Path| {
        let mut bytes = std::fs::read(path).expect("read a database");
        for range in [24..28, 92..100] {
            bytes[range].fill(0);
        }
        bytes
    };
    let (a, b) = (unstamped(&src), unstamped(&copy));
    assert_eq!(a.len(), b.len(), "sizes differ");
    assert_eq!(
        first_difference(&a, &b),
        None,
        "the follower's copy differs from the source"
    );
}
