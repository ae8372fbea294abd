//! The SFTP replica (Hetzner Storage Box, a machine of one's own): [`SftpStore`] implements the
//! object-store seam over SSH with `russh` and `russh-sftp`: pure Rust on tokio, no `ssh`
//! binary needed in the container (`openssh-sftp-client` drives the system's `ssh`; OpenDAL's
//! sftp service does too), host keys checked by our own callback.
//!
//! Litestream 0.5's `sftp` replica, exactly: URL `sftp://user[:password]@host[:port]/path`, keys
//! `host`, `user`, `password`, `key-path`, `host-key`, `path`; the file replica's layout
//! (`<path>/ltx/<level>/<min>-<max>.ltx`); the timestamp is the file's modification time.
//! One difference: the host key is always checked, against `host-key` (an `authorized_keys`
//! line, as `ssh-keyscan` prints it) or else `~/.ssh/known_hosts`; Litestream accepts any host
//! key when `host-key` is not set.
//!
//! How the seam's contract maps onto SFTP:
//! - `put` writes `<key>.<pid>.<random>.tmp` in the object's directory (fsynced where the server
//!   offers `fsync@openssh.com`), sets its modification time, then renames it into place. SFTP's
//!   rename refuses an existing target (OpenSSH links, then unlinks), which makes `Create`
//!   atomic; `Overwrite` removes the old object first when the rename is refused, so a reader may
//!   find it absent for that moment, never partial. A failure removes the temporary; listings
//!   never show temporaries.
//! - Timestamps: SFTP version 3 carries modification times in whole seconds, so listed
//!   timestamps are the LTX time rounded down to the second (Litestream's too).
//! - `list` walks the directory holding the prefix and its subdirectories, in key order.
//! - Conditional writes: none (SFTP has no compare-and-swap), so the lease is advisory here
//!   (`lease.rs` warns): as with Litestream, one replicator per SFTP replica is the operator's
//!   rule.
//!
//! Failures: a lost connection is `Transient` and the next request connects again; a missing
//! file is `NotFound`; a refused login, an unknown host key or a permission error is
//! `Permanent`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use russh::client;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey};
use russh_sftp::client::SftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::store::{ObjectMeta, ObjectStore, PutMode, PutOptions, StoreError, StoreErrorKind};

/// How long connecting and logging in may take.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// How long one SFTP request may wait for its answer.
pub const REQUEST_TIMEOUT_SECS: u64 = 60;
/// Bytes written or read per SFTP request (OpenSSH's server takes up to 255 KiB).
const CHUNK_BYTES: usize = 64 << 10;
const TMP_SUFFIX: &str = ".tmp";

/// Everything needed to reach one SFTP replica. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SftpConfig {
    /// `host` or `host:port` (port 22 by default).
    pub host: String,
    pub user: String,
    pub password: Option<String>,
    /// A private key file (OpenSSH or PEM format, unencrypted).
    pub key_path: Option<PathBuf>,
    /// The server's public key, as `ssh-keyscan` prints it (`ssh-ed25519 AAAA...`); `None`:
    /// `~/.ssh/known_hosts`.
    pub host_key: Option<String>,
    /// The replica's directory on the server (absolute, or relative to the login directory).
    pub path: String,
}

impl fmt::Debug for SftpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpConfig")
            .field("host", &self.host)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("key_path", &self.key_path)
            .field("host_key", &self.host_key)
            .field("path", &self.path)
            .finish()
    }
}

/// An SFTP replica. See the module documentation for how the seam's contract maps onto it.
pub struct SftpStore {
    cfg: SftpConfig,
    host: String,
    port: u16,
    /// The session, connected at first use and again after it is lost.
    session: tokio::sync::Mutex<Option<Arc<Connected>>>,
}

/// One SSH connection and the SFTP session on it.
struct Connected {
    sftp: SftpSession,
    _ssh: client::Handle<HostKeyCheck>,
}

impl fmt::Debug for SftpStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpStore")
            .field("host", &self.cfg.host)
            .field("user", &self.cfg.user)
            .field("path", &self.cfg.path)
            .finish_non_exhaustive()
    }
}

/// The host key callback: the configured key, else `~/.ssh/known_hosts`.
struct HostKeyCheck {
    host: String,
    port: u16,
    expected: Option<PublicKey>,
    /// What the check found, for the error message when it refuses.
    verdict: Arc<std::sync::Mutex<Option<String>>>,
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = offered else {
            self.set_verdict("offered a certificate; sluice checks plain host keys only");
            return Ok(false);
        };
        let ok = match &self.expected {
            Some(expected) => {
                let same = expected.key_data() == key.key_data();
                if !same {
                    self.set_verdict(&format!(
                        "host key {} is not the configured host-key {}",
                        key.fingerprint(Default::default()),
                        expected.fingerprint(Default::default())
                    ));
                }
                same
            }
            None => match russh::keys::check_known_hosts(&self.host, self.port, key) {
                Ok(true) => true,
                Ok(false) => {
                    self.set_verdict(&format!(
                        "host key {} is not in ~/.ssh/known_hosts: set host-key (ssh-keyscan -p {} {} prints it)",
                        key.fingerprint(Default::default()),
                        self.port,
                        self.host
                    ));
                    false
                }
                Err(e) => {
                    self.set_verdict(&format!(
                        "host key {} does not match ~/.ssh/known_hosts ({e})",
                        key.fingerprint(Default::default())
                    ));
                    false
                }
            },
        };
        Ok(ok)
    }
}

impl HostKeyCheck {
    fn set_verdict(&self, text: &str) {
        *self
            .verdict
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(text.to_string());
    }
}

impl SftpStore {
    /// Builds the store. Makes no connection: a wrong password or host key shows at the first
    /// operation (`sluice replicate` lists the replica before it starts).
    pub fn new(cfg: SftpConfig) -> Result<SftpStore, String> {
        let label = format!("sftp://{}@{}/{}", cfg.user, cfg.host, cfg.path);
        let (host, port) = match cfg.host.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !h.ends_with(':') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("{label}: port {p:?} is not a number"))?,
            ),
            _ => (cfg.host.clone(), 22),
        };
        if host.is_empty() || cfg.user.is_empty() {
            return Err(format!("{label}: an SFTP replica needs a host and a user"));
        }
        if cfg.password.is_none() && cfg.key_path.is_none() {
            return Err(format!(
                "{label}: no credentials: set key-path (a private key file) or password"
            ));
        }
        if let Some(k) = &cfg.host_key {
            parse_host_key(k).map_err(|e| format!("{label}: host-key: {e}"))?;
        }
        if cfg.path.trim_matches('/').is_empty() {
            return Err(format!("{label}: an SFTP replica needs a directory path"));
        }
        Ok(SftpStore {
            cfg,
            host,
            port,
            session: tokio::sync::Mutex::new(None),
        })
    }

    fn location(&self, key: &str) -> String {
        format!(
            "sftp://{}@{}/{}/{key}",
            self.cfg.user,
            self.cfg.host,
            self.cfg.path.trim_start_matches('/')
        )
    }

    /// The remote path of `key`.
    fn remote(&self, key: &str) -> String {
        let root = self.cfg.path.trim_end_matches('/');
        if key.is_empty() {
            root.to_string()
        } else {
            format!("{root}/{key}")
        }
    }

    /// The session, connecting first when there is none.
    async fn session(&self, op: &'static str, key: &str) -> Result<Arc<Connected>, StoreError> {
        let mut held = self.session.lock().await;
        if let Some(s) = held.as_ref() {
            return Ok(s.clone());
        }
        let connected =
            tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), self.connect())
                .await
                .unwrap_or_else(|_| {
                    Err((
                        StoreErrorKind::Transient,
                        format!(
                            "cannot reach {}:{} within {CONNECT_TIMEOUT_MS} ms",
                            self.host, self.port
                        ),
                    ))
                })
                .map_err(|(kind, message)| {
                    StoreError::new(kind, op, self.location(key), message)
                })?;
        let connected = Arc::new(connected);
        *held = Some(connected.clone());
        Ok(connected)
    }

    async fn connect(&self) -> Result<Connected, (StoreErrorKind, String)> {
        let permanent = |m: String| (StoreErrorKind::Permanent, m);
        let expected = self
            .cfg
            .host_key
            .as_deref()
            .map(parse_host_key)
            .transpose()
            .map_err(permanent)?;
        let verdict = Arc::new(std::sync::Mutex::new(None));
        let check = HostKeyCheck {
            host: self.host.clone(),
            port: self.port,
            expected,
            verdict: verdict.clone(),
        };
        let config = Arc::new(client::Config {
            inactivity_timeout: None,
            ..client::Config::default()
        });
        let mut ssh = match client::connect(config, (self.host.as_str(), self.port), check).await {
            Ok(h) => h,
            Err(e) => {
                let refused = verdict
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                return Err(match refused {
                    Some(why) => permanent(format!("{}:{}: {why}", self.host, self.port)),
                    None => (
                        StoreErrorKind::Transient,
                        format!("cannot reach {}:{}: {e}", self.host, self.port),
                    ),
                });
            }
        };
        let mut accepted = false;
        if let Some(path) = &self.cfg.key_path {
            let key = russh::keys::load_secret_key(path, None).map_err(|e| {
                permanent(format!(
                    "key-path {}: cannot load the key: {e}",
                    path.display()
                ))
            })?;
            let hash = ssh.best_supported_rsa_hash().await.ok().flatten().flatten();
            let auth = ssh
                .authenticate_publickey(
                    &self.cfg.user,
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
                .map_err(|e| (StoreErrorKind::Transient, format!("login: {e}")))?;
            accepted = auth.success();
        }
        if !accepted && let Some(pw) = &self.cfg.password {
            let auth = ssh
                .authenticate_password(&self.cfg.user, pw)
                .await
                .map_err(|e| (StoreErrorKind::Transient, format!("login: {e}")))?;
            accepted = auth.success();
        }
        if !accepted {
            return Err(permanent(format!(
                "{}:{} refused the login of user {:?}: check key-path or password",
                self.host, self.port, self.cfg.user
            )));
        }
        let channel = ssh
            .channel_open_session()
            .await
            .map_err(|e| (StoreErrorKind::Transient, format!("open a channel: {e}")))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| (StoreErrorKind::Transient, format!("start sftp: {e}")))?;
        let sftp = SftpSession::new(channel.into_stream())
            .await
            .map_err(|e| (StoreErrorKind::Transient, format!("start sftp: {e}")))?;
        sftp.set_timeout(REQUEST_TIMEOUT_SECS);
        Ok(Connected { sftp, _ssh: ssh })
    }

    /// Maps an SFTP error, and forgets the session when the connection is the problem.
    async fn error(&self, op: &'static str, key: &str, e: &SftpError) -> StoreError {
        let (kind, message) = match e {
            SftpError::Status(s) => match s.status_code {
                StatusCode::NoSuchFile => (StoreErrorKind::NotFound, "no such file".to_string()),
                StatusCode::PermissionDenied => (
                    StoreErrorKind::Permanent,
                    format!("permission denied by {}: {}", self.host, s.error_message),
                ),
                StatusCode::OpUnsupported => (
                    StoreErrorKind::Unsupported,
                    format!("{} does not support it: {}", self.host, s.error_message),
                ),
                StatusCode::NoConnection | StatusCode::ConnectionLost => (
                    StoreErrorKind::Transient,
                    format!("connection to {} lost", self.host),
                ),
                _ => (
                    StoreErrorKind::Permanent,
                    format!("{} failed it: {}", self.host, s.error_message),
                ),
            },
            other => (
                StoreErrorKind::Transient,
                format!("connection to {}: {other}", self.host),
            ),
        };
        if kind == StoreErrorKind::Transient {
            *self.session.lock().await = None;
        }
        StoreError::new(kind, op, self.location(key), message)
    }

    /// Creates the directories of `dir` that do not exist yet.
    async fn make_dirs(&self, s: &SftpSession, dir: &str) -> Result<(), SftpError> {
        if s.try_exists(dir).await? {
            return Ok(());
        }
        let mut at = String::new();
        for part in dir.split('/') {
            if !at.is_empty() || dir.starts_with('/') {
                at.push('/');
            }
            at.push_str(part);
            if part.is_empty() || s.try_exists(at.as_str()).await? {
                continue;
            }
            if let Err(e) = s.create_dir(at.as_str()).await
                && !s.try_exists(at.as_str()).await?
            {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes a temporary beside `key` from `body` (called with an offset, it returns the next
    /// bytes, empty at the end), then moves it into place as `opts` says.
    async fn put_with(
        &self,
        key: &str,
        opts: PutOptions,
        mut body: impl FnMut(u64) -> std::io::Result<Vec<u8>> + Send,
    ) -> Result<(), StoreError> {
        crate::store::check_key("put", &self.describe(), key)?;
        let conn = self.session("put", key).await?;
        let s = &conn.sftp;
        let target = self.remote(key);
        let dir = target.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        let tmp = format!(
            "{target}.{}.{:x}{TMP_SUFFIX}",
            std::process::id(),
            rand::random::<u64>()
        );
        let written: Result<(), StoreError> = async {
            if !dir.is_empty()
                && let Err(e) = self.make_dirs(s, &dir).await
            {
                return Err(self.error("put", key, &e).await);
            }
            let mut f = match s
                .open_with_flags(
                    tmp.as_str(),
                    OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE,
                )
                .await
            {
                Ok(f) => f,
                Err(e) => return Err(self.error("put", key, &e).await),
            };
            let mut offset = 0u64;
            loop {
                let chunk =
                    body(offset).map_err(|e| StoreError::from_io("put", self.location(key), &e))?;
                if chunk.is_empty() {
                    break;
                }
                f.write_all(&chunk)
                    .await
                    .map_err(|e| self.io_error(key, &e))?;
                offset += chunk.len() as u64;
            }
            f.flush().await.map_err(|e| self.io_error(key, &e))?;
            // Durable before it is visible, where the server offers fsync.
            let _ = f.sync_all().await;
            f.shutdown().await.map_err(|e| self.io_error(key, &e))?;
            let secs = u32::try_from(opts.timestamp_ms.max(0) / 1000).unwrap_or(u32::MAX);
            let times = FileAttributes {
                atime: Some(secs),
                mtime: Some(secs),
                ..FileAttributes::empty()
            };
            if let Err(e) = s.set_metadata(tmp.as_str(), times).await {
                return Err(self.error("put", key, &e).await);
            }
            self.rename_into_place(s, key, &tmp, &target, opts.mode)
                .await
        }
        .await;
        if written.is_err() {
            let _ = s.remove_file(tmp.as_str()).await;
        }
        written
    }

    /// Renames `tmp` to `target`: refused if it exists for `Create`, replacing it otherwise.
    async fn rename_into_place(
        &self,
        s: &SftpSession,
        key: &str,
        tmp: &str,
        target: &str,
        mode: PutMode,
    ) -> Result<(), StoreError> {
        let Err(first) = s.rename(tmp, target).await else {
            return Ok(());
        };
        let exists = match s.try_exists(target).await {
            Ok(x) => x,
            Err(e) => return Err(self.error("put", key, &e).await),
        };
        match (exists, mode) {
            (true, PutMode::Create) => Err(StoreError::new(
                StoreErrorKind::AlreadyExists,
                "put",
                self.location(key),
                "object exists",
            )),
            (true, PutMode::Overwrite) => {
                if let Err(e) = s.remove_file(target).await {
                    return Err(self.error("put", key, &e).await);
                }
                match s.rename(tmp, target).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(self.error("put", key, &e).await),
                }
            }
            (false, _) => Err(self.error("put", key, &first).await),
        }
    }

    fn io_error(&self, key: &str, e: &std::io::Error) -> StoreError {
        StoreError::new(
            StoreErrorKind::Transient,
            "put",
            self.location(key),
            format!("write to {}: {e}", self.host),
        )
    }

    /// Every file under the remote directory `dir` (keys relative to the root), recursively.
    async fn walk(
        &self,
        s: &SftpSession,
        dir_key: &str,
        out: &mut Vec<ObjectMeta>,
    ) -> Result<(), SftpError> {
        let entries = match s.read_dir(self.remote(dir_key)).await {
            Ok(e) => e,
            Err(SftpError::Status(st)) if st.status_code == StatusCode::NoSuchFile => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut dirs = Vec::new();
        for entry in entries {
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let key = if dir_key.is_empty() {
                name.clone()
            } else {
                format!("{dir_key}/{name}")
            };
            let meta = entry.metadata();
            if meta.is_dir() {
                dirs.push(key);
            } else if meta.is_regular() && !name.ends_with(TMP_SUFFIX) && !name.ends_with(".lock") {
                out.push(ObjectMeta {
                    key,
                    size: meta.len(),
                    timestamp_ms: i64::from(meta.mtime.unwrap_or(0)) * 1000,
                });
            }
        }
        for d in dirs {
            Box::pin(self.walk(s, &d, out)).await?;
        }
        Ok(())
    }
}

/// Parses an `authorized_keys`-style public key: `ssh-ed25519 AAAA... [comment]`.
fn parse_host_key(text: &str) -> Result<PublicKey, String> {
    let mut words = text.split_whitespace();
    let (Some(_kind), Some(base64)) = (words.next(), words.next()) else {
        return Err(format!(
            "{text:?} is not a public key line (expected e.g. \"ssh-ed25519 AAAA...\", as ssh-keyscan prints it)"
        ));
    };
    russh::keys::parse_public_key_base64(base64).map_err(|e| format!("cannot parse {text:?}: {e}"))
}

#[async_trait]
impl ObjectStore for SftpStore {
    fn describe(&self) -> String {
        format!(
            "sftp://{}@{}/{}",
            self.cfg.user,
            self.cfg.host,
            self.cfg.path.trim_start_matches('/')
        )
    }

    fn timestamp_resolution_ms(&self) -> i64 {
        1000
    }

    async fn put(&self, key: &str, data: Vec<u8>, opts: PutOptions) -> Result<(), StoreError> {
        self.put_with(key, opts, |offset| {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let end = start.saturating_add(CHUNK_BYTES).min(data.len());
            Ok(data[start..end].to_vec())
        })
        .await
    }

    async fn put_spooled(
        &self,
        key: &str,
        body: &dyn crate::scratch::ScratchFile,
        opts: PutOptions,
    ) -> Result<(), StoreError> {
        let size = body
            .size()
            .map_err(|e| StoreError::from_io("put", self.location(key), &e))?;
        self.put_with(key, opts, |offset| {
            crate::store::read_part(body, offset, CHUNK_BYTES, size)
        })
        .await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        crate::store::check_key("get", &self.describe(), key)?;
        let conn = self.session("get", key).await?;
        let mut f = match conn.sftp.open(self.remote(key)).await {
            Ok(f) => f,
            Err(e) => return Err(self.error("get", key, &e).await),
        };
        let io = |e: std::io::Error| {
            StoreError::new(
                StoreErrorKind::Transient,
                "get",
                self.location(key),
                format!("read from {}: {e}", self.host),
            )
        };
        f.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
        let want = usize::try_from(len).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(want.min(8 << 20));
        let mut buf = vec![0u8; CHUNK_BYTES];
        while out.len() < want {
            let n = (want - out.len()).min(buf.len());
            let got = f.read(&mut buf[..n]).await.map_err(io)?;
            if got == 0 {
                break;
            }
            out.extend_from_slice(&buf[..got]);
        }
        Ok(out)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        crate::store::check_key("head", &self.describe(), key)?;
        let conn = self.session("head", key).await?;
        match conn.sftp.metadata(self.remote(key)).await {
            Ok(m) if m.is_regular() => Ok(ObjectMeta {
                key: key.to_string(),
                size: m.len(),
                timestamp_ms: i64::from(m.mtime.unwrap_or(0)) * 1000,
            }),
            Ok(_) => Err(StoreError::new(
                StoreErrorKind::NotFound,
                "head",
                self.location(key),
                "not a file",
            )),
            Err(e) => Err(self.error("head", key, &e).await),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let conn = self.session("list", prefix).await?;
        let dir = prefix.rsplit_once('/').map_or("", |(d, _)| d);
        let mut out = Vec::new();
        if let Err(e) = self.walk(&conn.sftp, dir, &mut out).await {
            return Err(self.error("list", prefix, &e).await);
        }
        out.retain(|m| m.key.starts_with(prefix));
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        crate::store::check_key("delete", &self.describe(), key)?;
        let conn = self.session("delete", key).await?;
        match conn.sftp.remove_file(self.remote(key)).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = self.error("delete", key, &e).await;
                if err.kind == StoreErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SftpConfig {
        SftpConfig {
            host: "storage.example.com:23".into(),
            user: "u123".into(),
            password: Some("hunter2-secret".into()),
            key_path: None,
            host_key: None,
            path: "/backups/app".into(),
        }
    }

    #[test]
    fn secrets_never_show_and_ports_default_to_22() {
        let store = SftpStore::new(cfg()).expect("builds without connecting");
        let shown = format!("{:?} {:?} {}", cfg(), store, store.describe());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(store.port, 23);
        assert_eq!(
            store.describe(),
            "sftp://u123@storage.example.com:23/backups/app"
        );
        let plain = SftpStore::new(SftpConfig {
            host: "h".into(),
            ..cfg()
        })
        .expect("builds");
        assert_eq!((plain.host.as_str(), plain.port), ("h", 22));
    }

    #[test]
    fn bad_settings_are_refused_naming_them() {
        let no_auth = SftpStore::new(SftpConfig {
            password: None,
            ..cfg()
        })
        .expect_err("no credentials");
        assert!(no_auth.contains("key-path"), "{no_auth}");
        let bad_key = SftpStore::new(SftpConfig {
            host_key: Some("AAAA".into()),
            ..cfg()
        })
        .expect_err("bad host key");
        assert!(bad_key.contains("host-key"), "{bad_key}");
        let no_path = SftpStore::new(SftpConfig {
            path: "/".into(),
            ..cfg()
        })
        .expect_err("no path");
        assert!(no_path.contains("directory path"), "{no_path}");
    }
}
