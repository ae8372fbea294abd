//! Azurite, Azure Blob Storage's emulator, for the Azure tests. `ci/servers.sh` installs it
//! from npm and starts it twice (see there), exporting `SLUICE_AZURE_ENDPOINT` (HTTP),
//! `SLUICE_AZURE_TLS_ENDPOINT` and `SLUICE_AZURE_CA_FILE` (HTTPS under a throwaway CA: the
//! Litestream cross-tests need it), `SLUICE_AZURE_ACCOUNT`, `SLUICE_AZURE_KEY` and
//! `SLUICE_AZURE_CONTAINER`, the container already created. Without them a test skips with a
//! printed reason, or fails when `SLUICE_REQUIRE_PEERS=1`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::Remote;
use super::s3::{env, runtime, skip};

/// A reachable Azurite account and a container on it.
#[derive(Debug)]
pub struct Azurite {
    /// The account's blob endpoint, `http(s)://127.0.0.1:PORT/ACCOUNT`.
    pub endpoint: String,
    pub account: String,
    pub key: String,
    pub container: String,
    /// The CA a TLS endpoint's certificate is signed by (`SSL_CERT_FILE` for clients).
    pub ca_file: Option<PathBuf>,
}

impl Azurite {
    pub fn fresh_path(&self, label: &str) -> String {
        super::fresh_path(label)
    }

    /// `abs://account@container/path?endpoint=...` for this server.
    pub fn url(&self, path: &str) -> String {
        format!(
            "abs://{}@{}/{path}?endpoint={}",
            self.account, self.container, self.endpoint
        )
    }

    /// A replica entry of a configuration file, Litestream's keys, the secret in it.
    pub fn config_replica(&self, path: &str) -> String {
        format!(
            "      type: abs\n      account-name: {}\n      account-key: {}\n      bucket: {}\n      path: {path}\n      endpoint: {}\n",
            self.account, self.key, self.container, self.endpoint
        )
    }

    /// An Azure store on `path` that splits uploads above 6 MiB into 5 MiB blocks, so tests
    /// exercise block uploads with small objects (HTTP endpoint only).
    pub fn small_part_store(&self, path: &str) -> sluice_core::store::DynStore {
        let store = sluice_core::azure::open(sluice_core::azure::AzureConfig {
            account: self.account.clone(),
            container: self.container.clone(),
            path: path.to_string(),
            endpoint: Some(self.endpoint.clone()),
            credentials: sluice_core::azure::AzureCredentials::AccountKey(self.key.clone()),
        })
        .unwrap_or_else(|e| panic!("Azure store on {path}: {e}"));
        std::sync::Arc::new(store.with_multipart(6 << 20, 5 << 20))
    }

    /// Opens the replica at `path` through sluice's own URL handling (HTTP endpoint only: the
    /// test process does not trust the TLS endpoint's CA).
    pub fn replica(&self, path: &str) -> sluice_core::replica::Replica {
        assert!(
            self.ca_file.is_none(),
            "in-process clients reach the HTTP Azurite only"
        );
        let target = sluice_core::url::ReplicaTarget::parse(&self.url(path))
            .unwrap_or_else(|e| panic!("parse {}: {e}", self.url(path)));
        let settings = sluice_core::config::ReplicaSettings {
            account_key: Some(sluice_core::config::Secret(self.key.clone())),
            ..Default::default()
        };
        target
            .open(&settings)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.url(path)))
    }
}

impl Remote for Azurite {
    fn max_txid(&self, path: &str) -> u64 {
        if self.ca_file.is_none() {
            let replica = self.replica(path);
            let files = runtime()
                .block_on(replica.list_all())
                .unwrap_or_else(|e| panic!("list {path}: {e}"));
            return files.iter().map(|f| f.max_txid).max().unwrap_or(0);
        }
        // Over TLS through a `sluice ltx` process, which trusts the CA by SSL_CERT_FILE.
        let out = Command::new(super::sluice_bin())
            .envs(self.sluice_env())
            .args(["ltx", "-json", &self.url(path)])
            .output()
            .expect("run sluice ltx");
        assert!(
            out.status.success(),
            "sluice ltx {}: {}",
            self.url(path),
            String::from_utf8_lossy(&out.stderr)
        );
        let files: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("sluice ltx -json prints JSON");
        files
            .iter()
            .filter_map(|f| f["max_txid"].as_str())
            .filter_map(|t| u64::from_str_radix(t, 16).ok())
            .max()
            .unwrap_or(0)
    }

    fn sluice_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("LITESTREAM_AZURE_ACCOUNT_KEY", self.key.clone())];
        if let Some(ca) = &self.ca_file {
            env.push(("SSL_CERT_FILE", ca.display().to_string()));
        }
        env
    }
}

fn from_env(endpoint_var: &str, tls: bool) -> Option<Azurite> {
    Some(Azurite {
        endpoint: env(endpoint_var)?,
        account: env("SLUICE_AZURE_ACCOUNT")?,
        key: env("SLUICE_AZURE_KEY")?,
        container: env("SLUICE_AZURE_CONTAINER")?,
        ca_file: if tls {
            Some(PathBuf::from(env("SLUICE_AZURE_CA_FILE")?))
        } else {
            None
        },
    })
}

const NOT_RUNNING: &str =
    "Azurite is not running (ci/servers.sh starts it and exports SLUICE_AZURE_*)";

/// The HTTP Azurite, else `None` after printing why.
pub fn azurite_or_skip() -> Option<&'static Azurite> {
    static SERVER: OnceLock<Option<Azurite>> = OnceLock::new();
    match SERVER.get_or_init(|| from_env("SLUICE_AZURE_ENDPOINT", false)) {
        Some(s) => Some(s),
        None => skip(NOT_RUNNING),
    }
}

/// The HTTPS Azurite (its CA in `ca_file`), else `None` after printing why.
pub fn azurite_tls_or_skip() -> Option<&'static Azurite> {
    static SERVER: OnceLock<Option<Azurite>> = OnceLock::new();
    match SERVER.get_or_init(|| from_env("SLUICE_AZURE_TLS_ENDPOINT", true)) {
        Some(s) => Some(s),
        None => skip(NOT_RUNNING),
    }
}
