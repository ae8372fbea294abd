//! `sluice verify` against replicas the real `sluice replicate` wrote, healthy and damaged the
//! ways users damage them (a deleted middle file, a truncated newest file, a zero-byte file, a
//! foreign file under an LTX name). In every case verify's verdict agrees with what
//! `sluice restore` of the same replica does.
//!
//! Not checked here: S3 replicas (the same code reads them through the store seam), and
//! replicas Litestream wrote (their files carry no database checksums: only the CRC and the
//! chain are checked).

mod common;

use std::path::{Path, PathBuf};

use common::{Workspace, file_url, run_sluice};
use rusqlite::{Connection, params};

/// A new database in WAL mode with an empty table `t (id, v BLOB)`.
fn wal_db(db: &Path) -> Connection {
    let conn = Connection::open(db).expect("open");
    conn.pragma_update(None, "journal_mode", "wal")
        .expect("wal");
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", [])
        .expect("create");
    conn
}

/// A directory replica of a database with `rounds` syncs, each after a few commits.
fn replica_of(ws: &Workspace, rounds: u32) -> (PathBuf, PathBuf) {
    let db = ws.path("app.db");
    let replica = ws.dir("replica");
    let conn = wal_db(&db);
    for round in 0..rounds {
        for i in 0..3 {
            conn.execute(
                "INSERT INTO t (v) VALUES (?1)",
                params![vec![(round * 3 + i) as u8; 3000]],
            )
            .expect("insert");
        }
        let (code, _, err) = run_sluice(&[&"replicate", &"-once", &db, &file_url(&replica)]);
        assert_eq!(code, 0, "replicate -once: {err}");
    }
    (db, replica)
}

/// The level-0 files, oldest first.
fn level0(replica: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(replica.join("ltx/0"))
        .expect("level 0")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

fn verify(replica: &Path, extra: &[&str]) -> (i32, String, String) {
    let url = file_url(replica);
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"verify"];
    for e in extra {
        args.push(e);
    }
    args.push(&url);
    run_sluice(&args)
}

fn restore_code(ws: &Workspace, replica: &Path, name: &str) -> i32 {
    let out = ws.path(name);
    run_sluice(&[&"restore", &"-o", &out, &file_url(replica)]).0
}

#[test]
fn a_healthy_replica_verifies_restores_and_exits_0() {
    let ws = Workspace::new("verify-ok");
    let (_, replica) = replica_of(&ws, 4);
    let (code, out, err) = verify(&replica, &["-restore"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is restorable"), "{out}");
    assert!(out.contains("integrity_check ok"), "{out}");
    let (code, json, err) = verify(&replica, &["-json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["latest_restorable"], true, "{json}");
    assert!(v["files_checked"].as_u64().expect("count") >= 4, "{json}");
    assert_eq!(restore_code(&ws, &replica, "r.db"), 0);
}

/// A healed replica restores byte for byte `db` (checkpointed), by sluice and, where it is
/// installed, by Litestream: it is still a Litestream replica.
fn both_restore(ws: &Workspace, db: &Path, replica: &Path, litestream: Option<&Path>, name: &str) {
    let url = file_url(replica);
    let restored = ws.path("healed.db");
    let (code, _, err) = run_sluice(&[&"restore", &"-o", &restored, &url]);
    assert_eq!(
        code, 0,
        "{name}: sluice restore of the healed replica: {err}"
    );
    common::assert_same_file(
        db,
        &restored,
        4096,
        "sluice's restore of the healed replica",
    );
    common::assert_integrity_ok(&restored);
    if let Some(bin) = litestream {
        let out = ws.path("litestream.db");
        let (code, _, err) = common::run_litestream(bin, &[&"restore", &"-o", &out, &url]);
        assert_eq!(
            code, 0,
            "{name}: litestream restore of the healed replica: {err}"
        );
        common::assert_same_file(db, &out, 4096, "Litestream's restore of the healed replica");
    }
}

/// Each damage: verify exits 1 naming it, and restore fails too.
#[test]
fn each_damage_is_named_and_agrees_with_restore() {
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str); 4] = [
        (
            "deleted-middle",
            |r| std::fs::remove_file(&level0(r)[1]).expect("delete"),
            "held nowhere",
        ),
        (
            "truncated-newest",
            |r| {
                let newest = level0(r).pop().expect("a file");
                let len = std::fs::metadata(&newest).expect("meta").len();
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&newest)
                    .expect("open");
                f.set_len(len / 2).expect("truncate");
            },
            "damaged",
        ),
        (
            "zero-bytes",
            |r| {
                let newest = level0(r).pop().expect("a file");
                std::fs::write(&newest, b"").expect("empty");
            },
            "damaged",
        ),
        (
            "foreign-file",
            |r| {
                let newest = level0(r).pop().expect("a file");
                std::fs::write(&newest, vec![7u8; 5000]).expect("foreign");
            },
            "damaged",
        ),
    ];
    let litestream = common::litestream_or_skip();
    for (name, damage, says) in cases {
        let ws = Workspace::new(&format!("verify-{name}"));
        let (db, replica) = replica_of(&ws, 4);
        damage(&replica);
        let (code, out, err) = verify(&replica, &[]);
        assert_eq!(code, 1, "{name}: verify exit code\n{out}{err}");
        assert!(out.contains(says), "{name}: expected {says:?} in\n{out}");
        assert!(out.contains("NOT restorable"), "{name}:\n{out}");
        assert_ne!(
            restore_code(&ws, &replica, "r.db"),
            0,
            "{name}: restore succeeded where verify said it cannot"
        );
        {
            // A replicator started on it says so at once and heals it: the replica restores
            // again, byte for byte the database.
            let (code, _, err) = run_sluice(&[&"replicate", &"-once", &db, &file_url(&replica)]);
            assert_eq!(code, 0, "{name}: {err}");
            assert!(
                err.contains("cannot be restored to its newest state"),
                "{name}: {err}"
            );
            assert!(err.contains("healed the replica"), "{name}: {err}");
            let (code, out, err) = verify(&replica, &[]);
            assert_eq!(code, 0, "{name}: after the heal:\n{out}{err}");
            common::checkpoint_truncate(&Connection::open(&db).expect("open"));
            both_restore(&ws, &db, &replica, litestream.as_deref(), name);
        }
    }
}

/// A restore target outside the replica's range names the range (`-txid 0` is valid hex; it
/// precedes the first file).
#[test]
fn restore_targets_outside_the_replica_name_the_restorable_range() {
    let ws = Workspace::new("verify-range");
    let (_, replica) = replica_of(&ws, 2);
    for txid in ["0000000000000000", "00000000000000ff"] {
        let out = ws.path(&format!("{txid}.db"));
        let (code, _, err) = run_sluice(&[
            &"restore",
            &"-txid",
            &txid,
            &"-o",
            &out,
            &file_url(&replica),
        ]);
        assert_ne!(code, 0, "-txid {txid}");
        assert!(
            err.contains(&format!("reaches TXID {txid}"))
                && err.contains("the restorable TXIDs are 0000000000000001..="),
            "-txid {txid}: {err}"
        );
        assert!(!out.exists());
    }
}

/// The level-`level` files' TXID ranges, oldest first.
fn level_ranges(replica: &Path, level: u8) -> Vec<(u64, u64, PathBuf)> {
    let dir = replica.join("ltx").join(level.to_string());
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (min, max) = sluice_core::replica::parse_file_name(&name)?;
            Some((min, max, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Issue 11: a replica damaged while `sluice replicate` runs (a level-0 file truncated, or
/// deleted, before compaction reached it) was extended in silence. Now the compaction that
/// reaches the file finds it (the merge fails on the truncated file; the listing after the
/// compaction shows the deleted one's gap), says so, and the next sync heals the replica
/// without waiting for a write: restores by sluice and by Litestream are byte-identical again.
#[test]
fn damage_while_replicating_is_found_by_compaction_and_healed() {
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str); 2] = [
        (
            "truncated",
            |f| {
                let len = std::fs::metadata(f).expect("meta").len();
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(f)
                    .expect("open");
                file.set_len(len / 2).expect("truncate");
            },
            "a replica file is damaged",
        ),
        (
            "deleted",
            |f| std::fs::remove_file(f).expect("delete"),
            "the replica's listing shows a break",
        ),
    ];
    let litestream = common::litestream_or_skip();
    for (name, damage, says) in cases {
        let ws = Workspace::new(&format!("damage-live-{name}"));
        let db = ws.path("app.db");
        let replica = ws.dir("replica");
        let conn = wal_db(&db);
        let cfg = ws.path("sluice.yml");
        std::fs::write(
            &cfg,
            format!(
                "levels:\n  - interval: 2s\ndbs:\n  - path: {}\n    monitor-interval: 5ms\n    replicas:\n      - url: {}\n        sync-interval: 20ms\n",
                db.display(),
                file_url(&replica)
            ),
        )
        .expect("config");
        let log = ws.path("sluice.log");
        let mut cmd = std::process::Command::new(common::sluice_bin());
        cmd.args(["replicate", "-config"])
            .arg(&cfg)
            .env("SLUICE_LOG", "info")
            .env_remove("AWS_CA_BUNDLE")
            .stdin(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"));
        let mut child = Guard(cmd.spawn().expect("start sluice replicate"));
        let mut txid = 0;
        let mut commit = |round: u32| {
            conn.execute(
                "INSERT INTO t (v) VALUES (?1)",
                params![vec![round as u8; 3000]],
            )
            .expect("insert");
            txid = common::wait_txid_settled(&replica, txid);
        };
        // Level-0 files past level 1's newest: compaction has not read them yet. (Its
        // interval is aligned to 2 s; a run that just passed them is waited out.)
        let mut round = 0;
        let target = loop {
            commit(round);
            round += 1;
            let l1_max = level_ranges(&replica, 1).last().map_or(0, |f| f.1);
            let fresh: Vec<_> = level_ranges(&replica, 0)
                .into_iter()
                .filter(|f| f.0 > l1_max)
                .collect();
            if fresh.len() >= 3 {
                break fresh[fresh.len() - 2].2.clone();
            }
            assert!(round < 200, "{name}: no fresh level-0 files");
        };
        damage(&target);
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        common::wait_for(&format!("{name}: the heal"), || {
            assert!(
                child.0.try_wait().expect("poll").is_none(),
                "{name}: sluice exited:\n{}",
                read()
            );
            read().contains("healed the replica").then_some(())
        });
        let text = read();
        assert!(text.contains(says), "{name}: expected {says:?} in:\n{text}");
        commit(round);
        child.stop();
        drop(conn);
        common::checkpoint_truncate(&Connection::open(&db).expect("open"));
        let (code, out, err) = verify(&replica, &[]);
        assert_eq!(code, 0, "{name}: verify after the heal:\n{out}{err}");
        both_restore(&ws, &db, &replica, litestream.as_deref(), name);
    }
}

/// Kills the process if a test fails before stopping it.
struct Guard(std::process::Child);

impl Guard {
    /// SIGTERM, then waits: a clean exit.
    fn stop(&mut self) {
        let pid = self.0.id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = self.0.wait().expect("wait");
        assert!(exit.success(), "sluice exited with {exit}");
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
