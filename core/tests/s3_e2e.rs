//! `sluice` against a real S3 server (s3s-fs: SigV4 checked, data on disk), as its users run
//! it:
//! - the issue's four commands (replicate, restore in the `bucket.localhost:PORT` form,
//!   `restore -if-db-not-exists` on a replacement host, replicate there again), every restore
//!   byte-identical to the source after its TRUNCATE checkpoint;
//! - the real Litestream restoring sluice's S3 replica, and sluice restoring Litestream's, byte
//!   for byte; the `litestream-timestamp` metadata of every file equals its LTX header time;
//! - a configuration file with `type: s3` and the keys in it;
//! - bad input: wrong keys, missing bucket, unreachable endpoint, malformed URL, invalid bucket
//!   name: one line naming the problem, non-zero exit, nothing written;
//! - writer fencing on moto (atomic conditional writes): a second replicator on the same path is
//!   refused naming the first; expired, crashed and taken-over leases.
//!
//! Not checked here: faults between sluice and the server (`s3_faults.rs`), AWS itself (region
//! lookup, virtual-hosted addressing).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::s3::{
    Running, S3Server, free_port, open_wal, output, page_size, runtime, s3_files, s3_max_txid,
    s3s_or_skip, sluice, start_replicate, wait_settled, wait_upload, write,
};
use common::{
    WAIT_MAX, Workspace, assert_integrity_ok, assert_refused, assert_same_file,
    assert_timestamps_match_headers, checkpoint_truncate, litestream_command, litestream_or_skip,
};

/// Runs one `sluice replicate` from start to SIGTERM around `work`: waits for the first upload
/// before `work`, and for the replica to settle after it. Returns the log.
fn replicate_around(
    server: &S3Server,
    dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    path: &str,
    log: &Path,
    work: impl FnOnce(),
) -> String {
    let before = s3_max_txid(server, path);
    let mut cmd = sluice(server, dir);
    cmd.envs(env.iter().copied()).arg("replicate").args(args);
    let mut proc = Running::start(cmd, log);
    let started = Instant::now();
    while s3_max_txid(server, path) <= before {
        proc.assert_running();
        assert!(
            started.elapsed() < WAIT_MAX,
            "no upload; log:\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    work();
    let reached = s3_max_txid(server, path);
    wait_settled(server, path, reached.saturating_sub(1));
    proc.assert_running();
    proc.stop()
}

#[test]
fn issue_commands_replicate_and_restore_byte_identical() {
    let Some(server) = s3s_or_skip() else { return };
    let ws = Workspace::new("s3-issue");
    let path = format!("{}/fruits.db", server.fresh_path("issue"));
    let plain_url = format!("s3://{}/{path}", server.bucket);

    // Host A: `sluice replicate fruits.db s3://bucket/fruits.db`, the server given the way
    // Litestream users give it, by LITESTREAM_S3_ENDPOINT.
    let host_a = ws.dir("a");
    let db = host_a.join("fruits.db");
    let conn = open_wal(&db);
    write(&conn, 20, 0);
    let log = replicate_around(
        server,
        &host_a,
        &[("LITESTREAM_S3_ENDPOINT", server.endpoint.as_str())],
        &["fruits.db", &plain_url],
        &path,
        &ws.path("a.log"),
        || {
            let before = s3_max_txid(server, &path);
            write(&conn, 30, 1);
            wait_settled(server, &path, before);
            // The application truncates the WAL while sluice runs; more writes follow.
            checkpoint_truncate(&conn);
            write(&conn, 10, 2);
        },
    );
    checkpoint_truncate(&conn);
    let page = page_size(&conn);
    drop(conn);
    assert!(!log.contains("ERROR"), "{log}");

    // `sluice restore -o fruits2.db s3://bucket.localhost:PORT/fruits.db`
    let (code, out, err) = output(sluice(server, &host_a).args([
        "restore",
        "-o",
        "fruits2.db",
        &server.host_url(&path),
    ]));
    assert_eq!(code, 0, "restore failed: {err}");
    assert!(out.contains("database checksum verified"), "{out}");
    assert_same_file(&db, &host_a.join("fruits2.db"), page, "restore vs source");
    assert_integrity_ok(&host_a.join("fruits2.db"));

    // Host B replaces A: `sluice restore -if-db-not-exists -o /data/MyApp.sqlite s3://…`
    let host_b = ws.dir("b");
    let app = host_b.join("data/MyApp.sqlite");
    let restore_if_missing = |what: &str| {
        let (code, _, err) = output(
            sluice(server, &host_b)
                .env("LITESTREAM_S3_ENDPOINT", &server.endpoint)
                .args(["restore", "-if-db-not-exists", "-o"])
                .arg(&app)
                .arg(&plain_url),
        );
        assert_eq!(code, 0, "{what}: {err}");
        err
    };
    restore_if_missing("restore on the new host");
    assert_same_file(&db, &app, page, "replacement host's restore vs source");
    let stamp = std::fs::metadata(&app).and_then(|m| m.modified()).ok();
    let err = restore_if_missing("second restore");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::metadata(&app).and_then(|m| m.modified()).ok(),
        stamp,
        "-if-db-not-exists must leave an existing database alone"
    );

    // `sluice replicate /data/MyApp.sqlite s3://…` on host B continues the same replica.
    let conn = open_wal(&app);
    let mut replicate_b = sluice(server, &host_b);
    replicate_b.env("LITESTREAM_S3_ENDPOINT", &server.endpoint);
    let before = s3_max_txid(server, &path);
    let log_b = ws.path("b.log");
    let mut proc = Running::start(
        {
            replicate_b.arg("replicate").arg(&app).arg(&plain_url);
            replicate_b
        },
        &log_b,
    );
    // Give the engine time to open and prove its position before writing.
    std::thread::sleep(Duration::from_millis(300));
    proc.assert_running();
    write(&conn, 15, 3);
    wait_settled(server, &path, before);
    let log = proc.stop();
    assert!(
        !log.contains("cannot prove"),
        "a restored database must continue the replica without a resync snapshot:\n{log}"
    );
    checkpoint_truncate(&conn);
    drop(conn);
    let (code, _, err) = output(sluice(server, &host_b).args([
        "restore",
        "-integrity-check",
        "full",
        "-o",
        "check.db",
        &server.url(&path),
    ]));
    assert_eq!(code, 0, "restore after host B: {err}");
    assert_same_file(
        &app,
        &host_b.join("check.db"),
        page,
        "host B restore vs source",
    );

    // Every file's metadata timestamp is its LTX header time.
    assert_timestamps_match_headers(&server.store(&path));

    // The real Litestream restores sluice's S3 replica byte for byte.
    if let Some(ls) = litestream_or_skip() {
        let out = ws.path("litestream.db");
        let r = litestream_command(&ls)
            .env("AWS_ACCESS_KEY_ID", &server.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &server.secret_key)
            .args(["restore", "-o"])
            .arg(&out)
            .arg(server.host_url(&path))
            .output()
            .expect("run litestream restore");
        assert!(
            r.status.success(),
            "litestream restore of sluice's S3 replica failed: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_same_file(&app, &out, page, "litestream restore vs source");
    }
}

#[test]
fn sluice_restores_litestreams_s3_replica() {
    let Some(server) = s3s_or_skip() else { return };
    let Some(ls) = litestream_or_skip() else {
        return;
    };
    let ws = Workspace::new("s3-from-litestream");
    let path = server.fresh_path("litestream");
    let db = ws.path("src.db");
    let conn = open_wal(&db);
    write(&conn, 10, 5);
    let config = ws.path("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:\n  - path: \"{}\"\n    monitor-interval: 20ms\n    replica:\n      type: s3\n      bucket: {}\n      path: {path}\n      endpoint: {}\n      force-path-style: true\n      sync-interval: 20ms\n",
            db.display(),
            server.bucket,
            server.endpoint
        ),
    )
    .expect("write the Litestream config");
    let mut cmd = litestream_command(&ls);
    cmd.env("AWS_ACCESS_KEY_ID", &server.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &server.secret_key)
        .arg("replicate")
        .arg("-config")
        .arg(&config);
    let mut proc = Running::start(cmd, &ws.path("litestream.log"));
    let first = {
        let started = Instant::now();
        loop {
            proc.assert_running();
            let t = s3_max_txid(server, &path);
            if t > 0 {
                break t;
            }
            assert!(started.elapsed() < WAIT_MAX, "litestream uploaded nothing");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    write(&conn, 40, 6);
    wait_settled(server, &path, first);
    proc.stop();
    checkpoint_truncate(&conn);
    let page = page_size(&conn);
    drop(conn);

    assert_timestamps_match_headers(&server.store(&path));
    let out = ws.path("restored.db");
    let (code, stdout, err) = output(
        sluice(server, ws.root())
            .args(["restore", "-o"])
            .arg(&out)
            .arg(server.host_url(&path)),
    );
    assert_eq!(code, 0, "sluice restore of Litestream's replica: {err}");
    assert!(stdout.contains("not recorded by the writer"), "{stdout}");
    assert_same_file(&db, &out, page, "sluice restore of Litestream's S3 replica");
    assert_integrity_ok(&out);
}

#[test]
fn config_file_with_type_s3_and_keys_in_it() {
    let Some(server) = s3s_or_skip() else { return };
    let ws = Workspace::new("s3-config");
    let path = server.fresh_path("config");
    let db = ws.path("app.db");
    let conn = open_wal(&db);
    write(&conn, 10, 7);
    let config = ws.path("sluice.yml");
    std::fs::write(
        &config,
        format!(
            "access-key-id: {}\nsecret-access-key: ${{TEST_S3_SECRET}}\ndbs:\n  - path: {}\n    replica:\n      type: s3\n      bucket: {}\n      path: /{path}\n      endpoint: {}\n      sync-interval: 100ms\n",
            server.access_key,
            db.display(),
            server.bucket,
            server.endpoint
        ),
    )
    .expect("write the config");
    // Keys only in the configuration: none in the environment.
    let no_env_keys = |cmd: &mut Command| {
        cmd.env_remove("LITESTREAM_ACCESS_KEY_ID")
            .env_remove("LITESTREAM_SECRET_ACCESS_KEY")
            .env("TEST_S3_SECRET", &server.secret_key);
    };
    let before = s3_max_txid(server, &path);
    let mut cmd = sluice(server, ws.root());
    no_env_keys(&mut cmd);
    cmd.args(["replicate", "-config"]).arg(&config);
    let mut proc = Running::start(cmd, &ws.path("sluice.log"));
    let started = Instant::now();
    while s3_max_txid(server, &path) <= before {
        proc.assert_running();
        assert!(started.elapsed() < WAIT_MAX, "no upload:\n{}", proc.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    write(&conn, 20, 8);
    wait_settled(server, &path, 1);
    proc.stop();
    checkpoint_truncate(&conn);
    let page = page_size(&conn);
    drop(conn);

    // `restore DB` finds the replica and the keys in the configuration.
    let out = ws.path("out.db");
    let mut cmd = sluice(server, ws.root());
    no_env_keys(&mut cmd);
    let (code, _, err) = output(
        cmd.args(["restore", "-config"])
            .arg(&config)
            .arg("-o")
            .arg(&out)
            .arg(&db),
    );
    assert_eq!(code, 0, "restore through the config: {err}");
    assert_same_file(&db, &out, page, "restore through the config vs source");
    let mut cmd = sluice(server, ws.root());
    no_env_keys(&mut cmd);
    let (code, stdout, err) = output(cmd.args(["ltx", "-config"]).arg(&config).arg(&db));
    assert_eq!(code, 0, "ltx through the config: {err}");
    assert!(stdout.contains("0000000000000001"), "{stdout}");
}

struct BadCase {
    what: &'static str,
    url: String,
    env: Vec<(&'static str, String)>,
    says: Vec<String>,
}

#[test]
fn bad_input_is_refused_in_one_line_and_writes_nothing() {
    let Some(server) = s3s_or_skip() else { return };
    let ws = Workspace::new("s3-bad");
    let path = server.fresh_path("bad");
    let db = ws.path("app.db");
    drop(open_wal(&db));
    let db_bytes = std::fs::read(&db).expect("read db");
    let closed = format!("127.0.0.1:{}", free_port());
    let cases = [
        BadCase {
            what: "wrong secret key",
            url: server.url(&path),
            env: vec![("LITESTREAM_SECRET_ACCESS_KEY", "wrong".into())],
            says: vec![
                "access denied".into(),
                server.bucket.clone(),
                server.endpoint.clone(),
            ],
        },
        BadCase {
            what: "missing bucket",
            url: format!("s3://no-such-bucket/{path}?endpoint={}", server.endpoint),
            env: vec![],
            says: vec![
                "\"no-such-bucket\" does not exist".into(),
                server.endpoint.clone(),
            ],
        },
        BadCase {
            what: "unreachable endpoint",
            url: format!("s3://{}/{path}?endpoint=http://{closed}", server.bucket),
            env: vec![],
            says: vec!["cannot reach".into(), closed.clone()],
        },
        BadCase {
            what: "malformed URL",
            url: format!("s3:///{path}"),
            env: vec![],
            says: vec!["missing bucket name".into()],
        },
        BadCase {
            what: "no path in the bucket",
            url: format!("s3://{}?endpoint={}", server.bucket, server.endpoint),
            env: vec![],
            says: vec!["needs a path".into()],
        },
        BadCase {
            what: "invalid bucket name",
            url: format!("s3://My_Bucket/{path}?endpoint={}", server.endpoint),
            env: vec![],
            says: vec!["invalid bucket name".into(), "My_Bucket".into()],
        },
    ];
    for BadCase {
        what,
        url,
        env,
        says,
    } in &cases
    {
        let says: Vec<&str> = says.iter().map(String::as_str).collect();
        let out = ws.path("out.db");
        let r = output(
            sluice(server, ws.root())
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .args(["restore", "-o"])
                .arg(&out)
                .arg(url),
        );
        assert_refused(&format!("restore, {what}"), &r, &says, &server.secret_key);
        let left: Vec<String> = common::dir_entries(ws.root())
            .into_iter()
            .filter(|n| !n.starts_with("app.db"))
            .collect();
        assert!(left.is_empty(), "restore, {what}: left behind {left:?}");

        let r = output(
            sluice(server, ws.root())
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .arg("replicate")
                .arg(&db)
                .arg(url),
        );
        assert_refused(&format!("replicate, {what}"), &r, &says, &server.secret_key);
        assert_eq!(
            std::fs::read(&db).expect("read db"),
            db_bytes,
            "replicate, {what}: the database changed"
        );
    }
    assert!(
        s3_files(server, &path).is_empty(),
        "nothing may reach the replica"
    );
}

// ---- writer fencing, on moto (atomic conditional writes) ----

fn fresh_url(server: &S3Server, label: &str) -> (String, String) {
    let path = server.fresh_path(label);
    (server.url(&path), path)
}

/// A lease body as another sluice on another host, replicating `db`, writes it.
fn foreign_lease(db: &Path, expires_ms: i64) -> Vec<u8> {
    format!(
        r#"{{"holder":{{"host":"elsewhere","pid_namespace":"pid:[1]","pid":4242,"database":"{}","nonce":7}},"renewed_ms":0,"expires_ms":{expires_ms}}}"#,
        db.display()
    )
    .into_bytes()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[test]
fn second_replicator_on_the_same_path_is_refused() {
    let Some(server) = common::s3::moto_or_skip() else {
        return;
    };
    let ws = Workspace::new("s3-fence");
    let (url, path) = fresh_url(server, "fence");
    let (a, b) = (ws.path("a.db"), ws.path("b.db"));
    write(&open_wal(&a), 5, 1);
    write(&open_wal(&b), 5, 2);
    let b_before = std::fs::read(&b).expect("read b");

    let mut first = start_replicate(server, ws.root(), &a, &url, &ws.path("a.log"));
    wait_upload(server, &path, 0, &mut first);
    let pid = first.child.id();
    let refused = output(sluice(server, ws.root()).arg("replicate").arg(&b).arg(&url));
    assert_refused(
        "second replicator",
        &refused,
        &["is being replicated by", &format!("pid {pid} "), "a.db"],
        &server.secret_key,
    );
    assert_eq!(std::fs::read(&b).expect("read b"), b_before, "b.db changed");
    first.assert_running();

    // Once the first stops (releasing its lease) the replica is still a.db's: b.db is
    // refused, naming both, and with -force it continues the replica at once.
    first.stop();
    // The engine finds that b.db does not continue the replica before it writes a file, and
    // the process, its only job stopped, exits on its own.
    let (code, _, err) = output(sluice(server, ws.root()).arg("replicate").arg(&b).arg(&url));
    assert_ne!(code, 0, "another database was accepted:\n{err}");
    for says in ["holds the history of database", "a.db", "b.db", "-force"] {
        assert!(err.contains(says), "{says:?} not in:\n{err}");
    }
    assert!(
        !err.contains("will retry"),
        "a refusal is not retried:\n{err}"
    );
    let before = s3_max_txid(server, &path);
    let mut cmd = sluice(server, ws.root());
    cmd.arg("replicate").arg("-force").arg(&b).arg(&url);
    let mut second = Running::start(cmd, &ws.path("b.log"));
    wait_upload(server, &path, before, &mut second);
    second.stop();
}

#[test]
fn stale_crashed_and_lost_leases() {
    let Some(server) = common::s3::moto_or_skip() else {
        return;
    };
    let ws = Workspace::new("s3-lease");
    let (url, path) = fresh_url(server, "lease");
    let db = ws.path("app.db");
    let conn = open_wal(&db);
    write(&conn, 5, 3);
    let store = server.store(&path).store;
    let rt = runtime();
    let key = sluice_core::lease::LEASE_KEY;
    let create = sluice_core::store::PutOptions {
        mode: sluice_core::store::PutMode::Create,
        timestamp_ms: 0,
    };

    // A lease another host let expire is taken over.
    rt.block_on(store.put(key, foreign_lease(&db, now_ms() - 1_000), create))
        .expect("plant an expired lease");
    let mut cmd = sluice(server, ws.root());
    cmd.env("SLUICE_LEASE_TTL_MS", "900")
        .arg("replicate")
        .arg(&db)
        .arg(&url);
    let mut holder = Running::start(cmd, &ws.path("a.log"));
    wait_upload(server, &path, 0, &mut holder);

    // Another replicator takes the lease over: the holder stops at its next renewal.
    rt.block_on(store.put(
        key,
        foreign_lease(&db, now_ms() + 600_000),
        sluice_core::store::PutOptions::default(),
    ))
    .expect("take the lease over");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = holder.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < WAIT_MAX,
            "the holder kept running after losing its lease:\n{}",
            holder.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = holder.log();
    assert!(!status.success(), "exit {status}:\n{log}");
    assert!(
        log.contains("taken over by pid 4242 on elsewhere"),
        "the holder must name who took over:\n{log}"
    );

    // A crashed holder on this host does not make its restart wait out the lease.
    rt.block_on(store.put(
        key,
        foreign_lease(&db, now_ms() - 1),
        sluice_core::store::PutOptions::default(),
    ))
    .expect("expire the foreign lease");
    let mut crashed = start_replicate(server, ws.root(), &db, &url, &ws.path("c.log"));
    let before = s3_max_txid(server, &path);
    write(&conn, 3, 4);
    wait_upload(server, &path, before, &mut crashed);
    crashed.child.kill().expect("SIGKILL");
    let _ = crashed.child.wait();
    let mut restarted = start_replicate(server, ws.root(), &db, &url, &ws.path("d.log"));
    let before = s3_max_txid(server, &path);
    write(&conn, 3, 5);
    wait_upload(server, &path, before, &mut restarted);
    restarted.stop();
}
