//! `sluice` against Azure Blob Storage's emulator, Azurite, as its users run it:
//! - `replicate` to an `abs://` URL, the application's TRUNCATE checkpoint midway, `restore`
//!   byte-identical with the database checksum verified; every file's `litestreamtimestamp`
//!   metadata equals its LTX header time; a second replicator on the same replica is refused
//!   (Azure's conditional writes are atomic, so the lease fences);
//! - the real Litestream restoring sluice's Azure replica and sluice restoring Litestream's, byte
//!   for byte, through one configuration file in Litestream's keys (over HTTPS: Litestream's
//!   Azure client sends shared keys over TLS only; sluice trusts the test CA by SSL_CERT_FILE);
//! - bad input: wrong key, missing container, no credentials, unreachable endpoint, no account:
//!   one line naming the problem, non-zero exit, nothing written.

mod common;

use std::path::Path;
use std::process::Command;

use common::azure::{Azurite, azurite_or_skip, azurite_tls_or_skip};
use common::s3::{
    Running, free_port, open_wal, output, page_size, sluice, start_replicate, wait_settled,
    wait_upload, write,
};
use common::{
    Remote, Workspace, assert_integrity_ok, assert_litestream_restores, assert_refused,
    assert_same_file, assert_timestamps_match_headers, checkpoint_truncate, litestream_command,
    litestream_or_skip, replicate_through,
};

#[test]
fn replicate_and_restore_byte_identical_with_one_replicator_per_replica() {
    let Some(server) = azurite_or_skip() else {
        return;
    };
    let ws = Workspace::new("azure-e2e");
    let path = format!("{}/app.db", server.fresh_path("e2e"));
    let url = server.url(&path);
    let db = ws.path("app.db");
    let conn = open_wal(&db);
    write(&conn, 20, 0);
    let mut proc = start_replicate(server, ws.root(), &db, &url, &ws.path("a.log"));
    wait_upload(server, &path, 0, &mut proc);
    let before = server.max_txid(&path);
    write(&conn, 30, 1);
    let mid = wait_settled(server, &path, before);
    checkpoint_truncate(&conn);
    write(&conn, 10, 2);

    // A second replicator, of another database, on the same replica: refused, naming the
    // first; nothing of it is written.
    let other = ws.path("other.db");
    write(&open_wal(&other), 5, 3);
    let refused = output(
        sluice(server, ws.root())
            .arg("replicate")
            .arg(&other)
            .arg(&url),
    );
    assert_refused(
        "second replicator",
        &refused,
        &[
            "is being replicated by",
            &format!("pid {} ", proc.child.id()),
        ],
        &server.key,
    );

    wait_settled(server, &path, mid);
    let log = proc.stop();
    assert!(!log.contains("ERROR"), "{log}");
    checkpoint_truncate(&conn);
    let page = page_size(&conn);
    drop(conn);
    assert_timestamps_match_headers(&server.replica(&path));

    let out = ws.path("restored.db");
    let (code, stdout, err) = output(
        sluice(server, ws.root())
            .args(["restore", "-o"])
            .arg(&out)
            .arg(&url),
    );
    assert_eq!(code, 0, "restore: {err}");
    assert!(stdout.contains("database checksum verified"), "{stdout}");
    assert_same_file(&db, &out, page, "restore from Azurite vs source");
    assert_integrity_ok(&out);
}

/// A configuration replicating `db` to `path` on `server`, in Litestream's keys, with the
/// short intervals the tests use.
fn config(server: &Azurite, db: &Path, path: &str) -> String {
    format!(
        "dbs:\n  - path: \"{}\"\n    monitor-interval: 20ms\n    replica:\n      sync-interval: 20ms\n{}",
        db.display(),
        server.config_replica(path)
    )
}

#[test]
fn litestream_and_sluice_restore_each_others_azure_replicas() {
    let Some(server) = azurite_tls_or_skip() else {
        return;
    };
    let Some(ls) = litestream_or_skip() else {
        return;
    };
    let ws = Workspace::new("azure-litestream");
    let ca = server.ca_file.clone().expect("the TLS Azurite has a CA");
    let litestream = |cmd: &mut Command| {
        cmd.env("SSL_CERT_FILE", &ca)
            .env_remove("LITESTREAM_AZURE_ACCOUNT_KEY");
    };

    // Litestream writes, sluice restores.
    let path = server.fresh_path("from-litestream");
    let db = ws.path("ls.db");
    let conn = open_wal(&db);
    write(&conn, 10, 5);
    let cfg = ws.path("ls.yml");
    std::fs::write(&cfg, config(server, &db, &path)).expect("write the config");
    let mut cmd = litestream_command(&ls);
    litestream(&mut cmd);
    cmd.args(["replicate", "-config"]).arg(&cfg);
    let proc = Running::start(cmd, &ws.path("litestream.log"));
    let page = replicate_through(server, &path, conn, 6, proc);
    let out = ws.path("ls-restored.db");
    let (code, stdout, err) = output(
        sluice(server, ws.root())
            .args(["restore", "-o"])
            .arg(&out)
            .arg(server.url(&path)),
    );
    assert_eq!(
        code, 0,
        "sluice restore of Litestream's Azure replica: {err}"
    );
    assert!(stdout.contains("not recorded by the writer"), "{stdout}");
    assert_same_file(
        &db,
        &out,
        page,
        "sluice restore of Litestream's Azure replica",
    );
    assert_integrity_ok(&out);

    // sluice writes, through the same configuration keys (the secret only in the file),
    // Litestream restores.
    let path = server.fresh_path("from-sluice");
    let db = ws.path("sl.db");
    let conn = open_wal(&db);
    write(&conn, 10, 7);
    let cfg = ws.path("sl.yml");
    std::fs::write(&cfg, config(server, &db, &path)).expect("write the config");
    let mut cmd = sluice(server, ws.root());
    cmd.env_remove("LITESTREAM_AZURE_ACCOUNT_KEY")
        .args(["replicate", "-config"])
        .arg(&cfg);
    let proc = Running::start(cmd, &ws.path("sluice.log"));
    let page = replicate_through(server, &path, conn, 8, proc);
    let mut cmd = litestream_command(&ls);
    litestream(&mut cmd);
    assert_litestream_restores(
        cmd,
        &cfg,
        &db,
        &ws.path("sl-restored.db"),
        page,
        "Litestream restore of sluice's Azure replica",
    );
}

#[test]
fn bad_azure_input_is_refused_in_one_line_and_writes_nothing() {
    let Some(server) = azurite_or_skip() else {
        return;
    };
    let ws = Workspace::new("azure-bad");
    let path = server.fresh_path("bad");
    let db = ws.path("app.db");
    drop(open_wal(&db));
    let db_bytes = std::fs::read(&db).expect("read db");
    let closed = format!("127.0.0.1:{}", free_port());
    let (acct, cnt, ep) = (&server.account, &server.container, &server.endpoint);
    // Another valid key: 64 bytes, base64.
    let wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleS13cm9uZw==";
    let cases: [(&str, String, Option<&str>, Vec<String>); 5] = [
        (
            "wrong key",
            server.url(&path),
            Some(wrong_key),
            vec!["access denied".into(), cnt.clone(), ep.clone()],
        ),
        (
            "missing container",
            format!("abs://{acct}@no-such-container/{path}?endpoint={ep}"),
            None,
            vec!["\"no-such-container\" does not exist".into(), ep.clone()],
        ),
        (
            "no credentials",
            server.url(&path),
            Some(""),
            vec![
                "no credentials".into(),
                "LITESTREAM_AZURE_ACCOUNT_KEY".into(),
            ],
        ),
        (
            "unreachable endpoint",
            format!("abs://{acct}@{cnt}/{path}?endpoint=http://{closed}/{acct}"),
            None,
            vec!["cannot reach".into(), closed.clone()],
        ),
        (
            "no account",
            format!("abs://{cnt}/{path}?endpoint={ep}"),
            None,
            vec!["storage account".into(), "account-name".into()],
        ),
    ];
    for (what, url, key, says) in &cases {
        let says: Vec<&str> = says.iter().map(String::as_str).collect();
        let with_key = |cmd: &mut Command| {
            if let Some(k) = key {
                cmd.env("LITESTREAM_AZURE_ACCOUNT_KEY", k);
            }
        };
        let out = ws.path("out.db");
        let mut cmd = sluice(server, ws.root());
        with_key(&mut cmd);
        let r = output(cmd.args(["restore", "-o"]).arg(&out).arg(url));
        assert_refused(&format!("restore, {what}"), &r, &says, &server.key);
        let left: Vec<String> = common::dir_entries(ws.root())
            .into_iter()
            .filter(|n| !n.starts_with("app.db"))
            .collect();
        assert!(left.is_empty(), "restore, {what}: left behind {left:?}");

        let mut cmd = sluice(server, ws.root());
        with_key(&mut cmd);
        let r = output(cmd.arg("replicate").arg(&db).arg(url));
        assert_refused(&format!("replicate, {what}"), &r, &says, &server.key);
        assert_eq!(
            std::fs::read(&db).expect("read db"),
            db_bytes,
            "replicate, {what}: the database changed"
        );
    }
    assert_eq!(server.max_txid(&path), 0, "nothing may reach the replica");
}
