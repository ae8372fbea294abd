//! `sluice` reading Google Cloud Storage replicas that the real Litestream wrote, through
//! fake-gcs-server (the emulator CI runs; it serves Litestream's writes and sluice's reads, not
//! sluice's writes: see `tests/common/gcs.rs`):
//! - Litestream replicates a database to `gs://` with `STORAGE_EMULATOR_HOST` set, as its users
//!   point it at an emulator; sluice restores it byte for byte, once by the URL and the same
//!   variable, once through Litestream's configuration file;
//! - every file's `litestream-timestamp` metadata, as sluice lists it, equals its LTX header time.

mod common;

use std::path::Path;
use std::process::Command;

use common::gcs::{GcsEmulator, fake_gcs_or_skip};
use common::s3::{Running, open_wal, output, sluice, write};
use common::{
    Workspace, assert_integrity_ok, assert_same_file, assert_timestamps_match_headers,
    litestream_command, litestream_or_skip, replicate_through,
};

/// `host:port` of the emulator, as `STORAGE_EMULATOR_HOST` takes it.
fn emulator_host(server: &GcsEmulator) -> &str {
    server
        .endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
}

fn config(server: &GcsEmulator, db: &Path, path: &str) -> String {
    format!(
        "dbs:\n  - path: {}\n    replicas:\n      - url: gs://{}/{path}\n",
        db.display(),
        server.bucket
    )
}

#[test]
fn sluice_restores_litestreams_gcs_replica() {
    let Some(server) = fake_gcs_or_skip() else {
        return;
    };
    let Some(ls) = litestream_or_skip() else {
        return;
    };
    let ws = Workspace::new("gcs-litestream");
    let path = server.fresh_path("from-litestream");
    let db = ws.path("ls.db");
    let conn = open_wal(&db);
    write(&conn, 10, 5);
    let cfg = ws.path("ls.yml");
    std::fs::write(&cfg, config(server, &db, &path)).expect("write the config");
    let mut cmd = litestream_command(&ls);
    cmd.env("STORAGE_EMULATOR_HOST", emulator_host(server))
        .args(["replicate", "-config"])
        .arg(&cfg);
    let proc = Running::start(cmd, &ws.path("litestream.log"));
    let page = replicate_through(server, &path, conn, 6, proc);

    let restore = |out: &Path, how: &mut dyn FnMut(&mut Command)| {
        let mut cmd = sluice(server, ws.root());
        cmd.env("STORAGE_EMULATOR_HOST", emulator_host(server))
            .args(["restore", "-o"])
            .arg(out);
        how(&mut cmd);
        let (code, stdout, err) = output(&mut cmd);
        assert_eq!(code, 0, "sluice restore of Litestream's GCS replica: {err}");
        assert!(stdout.contains("not recorded by the writer"), "{stdout}");
        assert_same_file(&db, out, page, "sluice restore of Litestream's GCS replica");
        assert_integrity_ok(out);
    };
    let url = format!("gs://{}/{path}", server.bucket);
    restore(&ws.path("by-url.db"), &mut |cmd| {
        cmd.arg(&url);
    });
    restore(&ws.path("by-config.db"), &mut |cmd| {
        cmd.arg("-config").arg(&cfg).arg(&db);
    });

    assert_timestamps_match_headers(&server.replica(&path));
}
