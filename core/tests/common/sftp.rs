//! OpenSSH's sshd for the SFTP tests. `ci/servers.sh` installs `openssh-server` from Debian and
//! starts it on loopback with a throwaway host key, user and login key, exporting
//! `SLUICE_SFTP_HOST` (`127.0.0.1:PORT`), `SLUICE_SFTP_USER`, `SLUICE_SFTP_PASSWORD`,
//! `SLUICE_SFTP_KEY` (the private key file), `SLUICE_SFTP_HOST_KEY` (`ssh-ed25519 AAAA...`) and
//! `SLUICE_SFTP_ROOT` (a directory the user owns). Without them a test skips with a printed
//! reason, or fails when `SLUICE_REQUIRE_PEERS=1`.

use std::sync::OnceLock;

use super::Remote;
use super::s3::{env, runtime, skip};

#[derive(Debug)]
pub struct Sshd {
    pub host: String,
    pub user: String,
    pub password: String,
    pub key: String,
    pub host_key: String,
    pub root: String,
}

impl Sshd {
    pub fn fresh_path(&self, label: &str) -> String {
        format!("{}/{}", self.root, super::fresh_path(label))
    }

    /// `sftp://user@host/path` (the login comes from the settings or the environment).
    pub fn url(&self, path: &str) -> String {
        format!(
            "sftp://{}@{}/{}",
            self.user,
            self.host,
            path.trim_start_matches('/')
        )
    }

    /// A replica entry of a configuration file, in Litestream's keys.
    pub fn config_replica(&self, path: &str) -> String {
        format!(
            "      type: sftp\n      host: {}\n      user: {}\n      key-path: {}\n      host-key: {}\n      path: {path}\n",
            self.host, self.user, self.key, self.host_key
        )
    }

    pub fn settings(&self) -> sluice_core::config::ReplicaSettings {
        sluice_core::config::ReplicaSettings {
            key_path: Some(self.key.clone()),
            host_key: Some(self.host_key.clone()),
            ..Default::default()
        }
    }

    /// Opens the replica at `path` through sluice's own URL handling.
    pub fn replica(&self, path: &str) -> sluice_core::replica::Replica {
        let target = sluice_core::url::ReplicaTarget::parse(&self.url(path))
            .unwrap_or_else(|e| panic!("parse {}: {e}", self.url(path)));
        target
            .open(&self.settings())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.url(path)))
    }
}

impl Remote for Sshd {
    fn max_txid(&self, path: &str) -> u64 {
        let replica = self.replica(path);
        let files = runtime()
            .block_on(replica.list_all())
            .unwrap_or_else(|e| panic!("list {path}: {e}"));
        files.iter().map(|f| f.max_txid).max().unwrap_or(0)
    }

    fn sluice_env(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// The loopback sshd, else `None` after printing why.
pub fn sshd_or_skip() -> Option<&'static Sshd> {
    static SERVER: OnceLock<Option<Sshd>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        Some(Sshd {
            host: env("SLUICE_SFTP_HOST")?,
            user: env("SLUICE_SFTP_USER")?,
            password: env("SLUICE_SFTP_PASSWORD")?,
            key: env("SLUICE_SFTP_KEY")?,
            host_key: env("SLUICE_SFTP_HOST_KEY")?,
            root: env("SLUICE_SFTP_ROOT")?,
        })
    });
    match server {
        Some(s) => Some(s),
        None => skip("sshd is not running (ci/servers.sh starts it and exports SLUICE_SFTP_*)"),
    }
}
