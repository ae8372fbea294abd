//! `sluice` against a real OpenSSH server over SFTP, as its users run it (a Hetzner Storage
//! Box, a machine of their own):
//! - `replicate` to an `sftp://` URL with a key and the server's host key, the application's
//!   TRUNCATE checkpoint midway, `restore` byte-identical with the database checksum verified;
//!   a password in the URL instead of a key;
//! - the real Litestream restoring sluice's SFTP replica and sluice restoring Litestream's, byte
//!   for byte, through one configuration file in Litestream's keys;
//! - bad input: another host key, a host key nowhere on record, a wrong password, an unreachable
//!   server, no credentials: one line naming the problem, non-zero exit, nothing written.

mod common;

use std::path::Path;
use std::process::Command;

use common::s3::{
    Running, free_port, open_wal, output, page_size, sluice, wait_settled, wait_upload, write,
};
use common::sftp::{Sshd, sshd_or_skip};
use common::{
    Remote, Workspace, assert_integrity_ok, assert_litestream_restores, assert_refused,
    assert_same_file, checkpoint_truncate, litestream_command, litestream_or_skip,
    replicate_through,
};

/// A configuration replicating `db` to `path` on `server` in Litestream's keys (SFTP's key
/// and host key have no environment variables: they live in a configuration).
fn config(server: &Sshd, db: &Path, path: &str) -> String {
    format!(
        "dbs:\n  - path: \"{}\"\n    monitor-interval: 20ms\n    replica:\n      sync-interval: 20ms\n{}",
        db.display(),
        server.config_replica(path)
    )
}

#[test]
fn replicate_and_restore_byte_identical_over_sftp() {
    let Some(server) = sshd_or_skip() else {
        return;
    };
    let ws = Workspace::new("sftp-e2e");
    let path = format!("{}/app.db", server.fresh_path("e2e"));
    let db = ws.path("app.db");
    let conn = open_wal(&db);
    write(&conn, 20, 0);
    let cfg = ws.path("sluice.yml");
    std::fs::write(&cfg, config(server, &db, &path)).expect("write the config");
    let mut cmd = sluice(server, ws.root());
    cmd.env("SLUICE_LOG", "info")
        .args(["replicate", "-config"])
        .arg(&cfg);
    let mut proc = Running::start(cmd, &ws.path("a.log"));
    wait_upload(server, &path, 0, &mut proc);
    let before = server.max_txid(&path);
    write(&conn, 30, 1);
    let mid = wait_settled(server, &path, before);
    checkpoint_truncate(&conn);
    write(&conn, 10, 2);
    wait_settled(server, &path, mid);
    let log = proc.stop();
    assert!(!log.contains("ERROR"), "{log}");
    checkpoint_truncate(&conn);
    let page = page_size(&conn);
    drop(conn);

    let out = ws.path("restored.db");
    let (code, stdout, err) = output(
        sluice(server, ws.root())
            .args(["restore", "-config"])
            .arg(&cfg)
            .arg("-o")
            .arg(&out)
            .arg(&db),
    );
    assert_eq!(code, 0, "restore: {err}");
    assert!(stdout.contains("database checksum verified"), "{stdout}");
    assert_same_file(&db, &out, page, "restore over SFTP vs source");
    assert_integrity_ok(&out);

    // The same replica through a URL with the password in it (and the host key in the
    // configuration's defaults: a host key is always checked).
    let pw_cfg = ws.path("pw.yml");
    std::fs::write(&pw_cfg, format!("host-key: {}\ndbs: []\n", server.host_key))
        .expect("write the config");
    let url = format!(
        "sftp://{}:{}@{}/{}",
        server.user,
        server.password,
        server.host,
        path.trim_start_matches('/')
    );
    let out2 = ws.path("restored-pw.db");
    let (code, _, err) = output(
        sluice(server, ws.root())
            .args(["restore", "-config"])
            .arg(&pw_cfg)
            .arg("-o")
            .arg(&out2)
            .arg(&url),
    );
    assert_eq!(code, 0, "restore with a password: {err}");
    assert!(
        !err.contains(&server.password),
        "the password leaked: {err}"
    );
    assert_same_file(&db, &out2, page, "restore with a password vs source");
}

#[test]
fn litestream_and_sluice_restore_each_others_sftp_replicas() {
    let Some(server) = sshd_or_skip() else {
        return;
    };
    let Some(ls) = litestream_or_skip() else {
        return;
    };
    let ws = Workspace::new("sftp-litestream");

    // Litestream writes, sluice restores.
    let path = server.fresh_path("from-litestream");
    let db = ws.path("ls.db");
    let conn = open_wal(&db);
    write(&conn, 10, 5);
    let cfg = ws.path("ls.yml");
    std::fs::write(&cfg, config(server, &db, &path)).expect("write the config");
    let mut cmd = litestream_command(&ls);
    cmd.args(["replicate", "-config"]).arg(&cfg);
    let proc = Running::start(cmd, &ws.path("litestream.log"));
    let page = replicate_through(server, &path, conn, 6, proc);
    let out = ws.path("ls-restored.db");
    let (code, stdout, err) = output(
        sluice(server, ws.root())
            .args(["restore", "-config"])
            .arg(&cfg)
            .arg("-o")
            .arg(&out)
            .arg(&db),
    );
    assert_eq!(
        code, 0,
        "sluice restore of Litestream's SFTP replica: {err}"
    );
    assert!(stdout.contains("not recorded by the writer"), "{stdout}");
    assert_same_file(
        &db,
        &out,
        page,
        "sluice restore of Litestream's SFTP replica",
    );
    assert_integrity_ok(&out);

    // sluice writes, Litestream restores.
    let path = server.fresh_path("from-sluice");
    let db = ws.path("sl.db");
    let conn = open_wal(&db);
    write(&conn, 10, 7);
    let cfg = ws.path("sl.yml");
    std::fs::write(&cfg, config(server, &db, &path)).expect("write the config");
    let proc = start_replicate_config(server, ws.root(), &cfg, &ws.path("sluice.log"));
    let page = replicate_through(server, &path, conn, 8, proc);
    assert_litestream_restores(
        litestream_command(&ls),
        &cfg,
        &db,
        &ws.path("sl-restored.db"),
        page,
        "Litestream restore of sluice's SFTP replica",
    );
}

fn start_replicate_config(server: &Sshd, dir: &Path, cfg: &Path, log: &Path) -> Running {
    let mut cmd = sluice(server, dir);
    cmd.env("SLUICE_LOG", "info")
        .args(["replicate", "-config"])
        .arg(cfg);
    Running::start(cmd, log)
}

#[test]
fn bad_sftp_input_is_refused_in_one_line_and_writes_nothing() {
    let Some(server) = sshd_or_skip() else {
        return;
    };
    let ws = Workspace::new("sftp-bad");
    let path = server.fresh_path("bad");
    let db = ws.path("app.db");
    drop(open_wal(&db));
    let db_bytes = std::fs::read(&db).expect("read db");
    let closed = format!("127.0.0.1:{}", free_port());
    // Another server's key: a fresh ed25519 key, never this server's.
    let other_key = ws.path("other");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other_key)
        .status()
        .expect("run ssh-keygen");
    assert!(made.success());
    let other_pub = std::fs::read_to_string(other_key.with_extension("pub")).expect("read key");
    let other_pub = other_pub
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let home = ws.dir("home");
    let entry = |host: &str, user: &str, auth: &str, host_key: Option<&str>| {
        let hk = host_key.map_or_else(String::new, |k| format!("      host-key: {k}\n"));
        format!(
            "dbs:\n  - path: \"{}\"\n    replica:\n      type: sftp\n      host: {host}\n      user: {user}\n{auth}{hk}      path: {path}\n",
            db.display()
        )
    };
    let key_auth = format!("      key-path: {}\n", server.key);
    let cases: [(&str, String, Vec<String>); 5] = [
        (
            "another host key",
            entry(&server.host, &server.user, &key_auth, Some(&other_pub)),
            vec!["is not the configured host-key".into(), server.host.clone()],
        ),
        (
            "a host key on record nowhere",
            entry(&server.host, &server.user, &key_auth, None),
            vec!["known_hosts".into(), "ssh-keyscan".into()],
        ),
        (
            "wrong password",
            entry(
                &server.host,
                &server.user,
                "      password: not-the-password\n",
                Some(&server.host_key),
            ),
            vec!["refused the login".into(), server.user.clone()],
        ),
        (
            "unreachable server",
            entry(&closed, &server.user, &key_auth, Some(&server.host_key)),
            vec!["cannot reach".into(), closed.clone()],
        ),
        (
            "no credentials",
            entry(&server.host, &server.user, "", Some(&server.host_key)),
            vec!["no credentials".into(), "key-path".into()],
        ),
    ];
    for (what, text, says) in &cases {
        let says: Vec<&str> = says.iter().map(String::as_str).collect();
        let cfg = ws.path("bad.yml");
        std::fs::write(&cfg, text).expect("write the config");
        let out = ws.path("out.db");
        let r = output(
            sluice(server, ws.root())
                .env("HOME", &home)
                .args(["restore", "-config"])
                .arg(&cfg)
                .arg("-o")
                .arg(&out)
                .arg(&db),
        );
        assert_refused(&format!("restore, {what}"), &r, &says, &server.password);
        assert!(!out.exists(), "restore, {what}: left {}", out.display());
        let r = output(
            sluice(server, ws.root())
                .env("HOME", &home)
                .args(["replicate", "-config"])
                .arg(&cfg),
        );
        assert_refused(&format!("replicate, {what}"), &r, &says, &server.password);
        assert_eq!(
            std::fs::read(&db).expect("read db"),
            db_bytes,
            "replicate, {what}: the database changed"
        );
    }
    assert_eq!(server.max_txid(&path), 0, "nothing may reach the replica");
}
