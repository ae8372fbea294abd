//! A GCS server for the GCS tests, where one is given: `SLUICE_GCS_ENDPOINT` (an emulator
//! that speaks GCS's XML and JSON APIs as Google does, such as fake-gcs-server in Docker) and
//! `SLUICE_GCS_BUCKET`. CI has none: the one emulator the registries carry,
//! `gcp-storage-emulator` (PyPI, 2026.7.19), answers HEAD with 501, does not decode the `%2F`
//! that `object_store`'s client sends in object paths (so no object is found) and ignores
//! `x-goog-if-generation-match`, so no conformance case can run against it. Without a server the
//! tests skip with that reason, even under `SLUICE_REQUIRE_PEERS=1`.

use std::sync::OnceLock;

use super::Remote;
use super::s3::{env, runtime};

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
