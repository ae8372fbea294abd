//! Litestream-compatible YAML configuration.
//!
//! The schema is Litestream 0.5's (`dbs:` with `path` and `replica:`/`replicas:`, global defaults
//! for replica settings, `$VAR`/`${VAR}` expansion), with two deliberate differences:
//! - an unknown key is an error naming the key and its line (Litestream ignores it silently, so a
//!   typo such as `sync-intreval` quietly does nothing). Every key Litestream 0.5 knows is
//!   accepted: implemented, or in [`LITESTREAM_KEYS`] with one warning saying why it changes
//!   nothing here, or refused there where going on would do something else than asked
//!   (encryption sluice cannot do, directory replication);
//! - a database may list several replicas (Litestream 0.5 refuses more than one).
//!
//! A configuration is parsed and validated completely before anything starts, so a bad entry
//! never leaves half of a configuration replicating.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where `sluice` looks for its configuration unless `-config` or `$SLUICE_CONFIG` says
/// otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sluice.yml";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(
        "config {path}: environment variable ${var} is not set (use -no-expand-env to keep it literally)"
    )]
    MissingEnv { path: PathBuf, var: String },
}

/// A duration written Go-style (`1s`, `500ms`, `5m`, `24h`, `1h30m`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(GoDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a Go duration string: a sequence of `<number><unit>` with units ns, us, µs, ms, s, m, h.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("invalid duration {s:?} (expected e.g. 1s, 500ms, 5m, 24h)");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = t;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// A credential read from the configuration: its `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Settings a replica may carry, each also allowed at the top level as a default. (No
/// `deny_unknown_fields`: it is flattened beside a catch-all, which judges the other keys.)
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReplicaSettings {
    pub sync_interval: Option<GoDuration>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: Option<bool>,
    pub skip_verify: Option<bool>,
    /// Azure Blob Storage (`abs`): the storage account, its shared key, or a SAS token.
    pub account_name: Option<String>,
    pub account_key: Option<Secret>,
    pub sas_token: Option<Secret>,
    /// SFTP (`sftp`): `host[:port]`, the login, its password or private key file, and the
    /// server's public key (`ssh-ed25519 AAAA...`).
    pub host: Option<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub key_path: Option<String>,
    pub host_key: Option<String>,
}

impl ReplicaSettings {
    /// Fills every unset field from `defaults`.
    fn inherit(&mut self, d: &ReplicaSettings) {
        macro_rules! inherit {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = d.$f.clone(); } )* };
        }
        inherit!(
            sync_interval,
            access_key_id,
            secret_access_key,
            region,
            bucket,
            endpoint,
            force_path_style,
            skip_verify,
            account_name,
            account_key,
            sas_token,
            host,
            user,
            password,
            key_path,
            host_key
        );
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReplicaConfig {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: Option<String>,
    pub path: Option<String>,
    pub url: Option<String>,
    #[serde(flatten)]
    pub settings: ReplicaSettings,
    /// Every other key, judged by [`LITESTREAM_KEYS`] after parsing.
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SnapshotConfig {
    pub interval: Option<GoDuration>,
    pub retention: Option<GoDuration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DbConfig {
    #[serde(default)]
    pub path: String,
    /// Directory replication: every SQLite database in `dir` whose file name matches `pattern`
    /// (in its subdirectories too when `recursive`), each to its replicas' path joined with the
    /// database's path relative to `dir`, as Litestream does.
    pub dir: Option<String>,
    pub pattern: Option<String>,
    pub recursive: Option<bool>,
    /// Directory replication: keep looking, replicating databases that appear in `dir` and
    /// stopping for those removed from it.
    pub watch: Option<bool>,
    pub monitor_interval: Option<GoDuration>,
    pub checkpoint_interval: Option<GoDuration>,
    pub busy_timeout: Option<GoDuration>,
    pub min_checkpoint_page_count: Option<u64>,
    pub truncate_page_n: Option<u64>,
    pub max_sync_wal_bytes: Option<u64>,
    pub restore_if_db_not_exists: Option<bool>,
    pub snapshot: Option<SnapshotConfig>,
    pub replica: Option<ReplicaConfig>,
    #[serde(default)]
    pub replicas: Vec<ReplicaConfig>,
    /// Every other key, judged by [`LITESTREAM_KEYS`] after parsing.
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LevelConfig {
    pub interval: GoDuration,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RetentionConfig {
    pub enabled: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub dbs: Vec<DbConfig>,
    pub addr: Option<String>,
    pub exec: Option<String>,
    pub levels: Option<Vec<LevelConfig>>,
    pub snapshot: Option<SnapshotConfig>,
    pub l0_retention: Option<GoDuration>,
    pub retention: Option<RetentionConfig>,
    pub shutdown_sync_timeout: Option<GoDuration>,
    #[serde(flatten)]
    pub defaults: ReplicaSettings,
    /// Every other key, judged by [`LITESTREAM_KEYS`] after parsing.
    #[serde(flatten)]
    pub other: Other,
    /// One line per Litestream key this configuration sets that sluice does not act on (logged
    /// by [`Config::load`]).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The keys of a mapping that its struct does not name, with their values.
pub type Other = std::collections::BTreeMap<String, serde_norway::Value>;

/// Where in a configuration a key may stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// The top level only.
    Top,
    /// A `dbs:` entry.
    Db,
    /// A replica entry, or the top level as every replica's default.
    Replica,
}

/// What sluice does with a key Litestream knows and sluice does not implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unacted {
    /// Accepted, with one warning saying why it changes nothing.
    Warn(&'static str),
    /// Refused: going on without it would do something else than what the user asked for
    /// (upload in the clear what was to be encrypted, replicate nothing).
    Refuse(&'static str),
}

const WEBDAV: Unacted =
    Unacted::Warn("a WebDAV replica setting; sluice has no webdav replicas (file, s3, abs, sftp)");
const NATS: Unacted =
    Unacted::Warn("a NATS replica setting; sluice has no nats replicas (file, s3, abs, sftp)");
const SSE: Unacted = Unacted::Refuse(
    "server-side encryption is not supported yet, and replicating without it would upload unencrypted what this asks to be encrypted",
);
const V3: Unacted = Unacted::Warn(
    "a Litestream 0.3 replica setting, ignored by 0.5 too; 0.5 sets snapshot: interval and retention at the top level or per database",
);

const VALIDATION: Unacted = Unacted::Warn(
    "sluice does not restore in the background to validate; run `sluice verify -restore` on a schedule",
);

/// Every key Litestream 0.5 knows (its `cmd/litestream/main.go`, v0.5.17, and the 0.3 replica
/// keys still found in configurations) that sluice does not implement, and what it does with it.
const LITESTREAM_KEYS: &[(Scope, &str, Unacted)] = &[
    (
        Scope::Top,
        "socket",
        Unacted::Warn("sluice has no control socket"),
    ),
    (Scope::Top, "validation", VALIDATION),
    (
        Scope::Top,
        "verify-compaction",
        Unacted::Warn(
            "every file sluice writes, compactions included, records the database checksum it was built to, checked on restore",
        ),
    ),
    (
        Scope::Top,
        "heartbeat-url",
        Unacted::Warn("sluice sends no heartbeats; monitor sluice_replication_lag_seconds (addr:)"),
    ),
    (
        Scope::Top,
        "heartbeat-interval",
        Unacted::Warn("sluice sends no heartbeats; monitor sluice_replication_lag_seconds (addr:)"),
    ),
    (
        Scope::Top,
        "mcp-addr",
        Unacted::Warn("sluice has no MCP server"),
    ),
    (
        Scope::Top,
        "logging",
        Unacted::Warn(
            "sluice logs to stderr; set the level with SLUICE_LOG (e.g. SLUICE_LOG=debug)",
        ),
    ),
    (
        Scope::Top,
        "l0-retention-check-interval",
        Unacted::Warn("sluice applies level-0 retention after each compaction into level 1"),
    ),
    (
        Scope::Top,
        "shutdown-sync-interval",
        Unacted::Warn(
            "the final sync retries on sluice's own backoff, within shutdown-sync-timeout",
        ),
    ),
    (
        Scope::Db,
        "meta-path",
        Unacted::Warn(
            "sluice keeps no metadata beside the database: its position is in the replica",
        ),
    ),
    (
        Scope::Db,
        "meta-dir",
        Unacted::Warn(
            "sluice keeps no metadata beside the database: its position is in the replica",
        ),
    ),
    (Scope::Replica, "validation-interval", VALIDATION),
    (
        Scope::Replica,
        "max-sync-ltx-files",
        Unacted::Warn("sluice uploads every pending level-0 file at each sync"),
    ),
    (
        Scope::Replica,
        "auto-recover",
        Unacted::Warn(
            "sluice always recovers: when its position is lost it compares the database with the replica and ships the difference",
        ),
    ),
    (
        Scope::Replica,
        "sign-payload",
        Unacted::Warn("sluice always signs request bodies (SigV4 with the payload's SHA-256)"),
    ),
    (
        Scope::Replica,
        "require-content-md5",
        Unacted::Warn(
            "sluice sends no Content-MD5; every LTX file carries a CRC-64, checked on restore",
        ),
    ),
    (
        Scope::Replica,
        "storage-class",
        Unacted::Warn("objects get the bucket's default storage class"),
    ),
    (
        Scope::Replica,
        "part-size",
        Unacted::Warn(
            "multipart parts are 16 MiB (8 MiB from a spool), larger only past 10,000 parts",
        ),
    ),
    (
        Scope::Replica,
        "concurrency",
        Unacted::Warn("at most 4 parts of one upload are in flight (2 from a spool)"),
    ),
    (Scope::Replica, "sse-customer-algorithm", SSE),
    (Scope::Replica, "sse-customer-key", SSE),
    (Scope::Replica, "sse-customer-key-path", SSE),
    (Scope::Replica, "sse-kms-key-id", SSE),
    (
        Scope::Replica,
        "age",
        Unacted::Refuse(
            "age encryption is not supported yet, and replicating without it would upload in the clear what this asks to be encrypted",
        ),
    ),
    (
        Scope::Replica,
        "concurrent-writes",
        Unacted::Warn("sluice writes an SFTP file's requests in order, one file at a time"),
    ),
    (Scope::Replica, "webdav-url", WEBDAV),
    (Scope::Replica, "webdav-username", WEBDAV),
    (Scope::Replica, "webdav-password", WEBDAV),
    (Scope::Replica, "jwt", NATS),
    (Scope::Replica, "seed", NATS),
    (Scope::Replica, "creds", NATS),
    (Scope::Replica, "nkey", NATS),
    (Scope::Replica, "username", NATS),
    (Scope::Replica, "token", NATS),
    (Scope::Replica, "tls", NATS),
    (Scope::Replica, "root-cas", NATS),
    (Scope::Replica, "client-cert", NATS),
    (Scope::Replica, "client-key", NATS),
    (Scope::Replica, "max-reconnects", NATS),
    (Scope::Replica, "reconnect-wait", NATS),
    (Scope::Replica, "timeout", NATS),
    (Scope::Replica, "snapshot-interval", V3),
    (Scope::Replica, "retention", V3),
    (Scope::Replica, "retention-check-interval", V3),
];

/// Judges the keys of one mapping that its struct does not name: a warning for each Litestream
/// key sluice ignores, an error for one it refuses or one neither tool knows. `at` names the
/// mapping (`dbs[0] replica 1: `).
fn judge(
    other: &Other,
    scopes: &[Scope],
    at: &str,
    text: &str,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    for key in other.keys() {
        let known = LITESTREAM_KEYS
            .iter()
            .find(|(scope, k, _)| k == key && scopes.contains(scope));
        match known {
            Some((_, _, Unacted::Warn(why))) => {
                warnings.push(format!(
                    "{at}{key}: a Litestream setting sluice ignores: {why}"
                ));
            }
            Some((_, _, Unacted::Refuse(why))) => {
                return Err(format!("{at}{key}: {why}{}", line_of(text, key)));
            }
            None => {
                return Err(format!("{at}unknown field `{key}`{}", line_of(text, key)));
            }
        }
    }
    Ok(())
}

/// ` at line N` for the first line that sets `key`, or nothing.
fn line_of(text: &str, key: &str) -> String {
    text.lines()
        .position(|l| {
            l.trim_start()
                .trim_start_matches("- ")
                .starts_with(&format!("{key}:"))
        })
        .map_or_else(String::new, |i| format!(" at line {}", i + 1))
}

/// Expands `$VAR` and `${VAR}` in a YAML text, leaving comments as they are (`# costs $5` is
/// not a variable). `$$` is a literal dollar. An unset variable is an error (Litestream silently
/// substitutes an empty string, which turns a missing secret into a confusing failure). A
/// comment starts at a `#` that begins a line or follows a space or tab, outside quotes; inside
/// a block scalar (`|`, `>`) such a `#` is text, and what follows it is not expanded.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (code, comment) = line.split_at(comment_start(line).unwrap_or(line.len()));
        out.push_str(&expand_vars(code, &lookup)?);
        out.push_str(comment);
    }
    Ok(out)
}

/// Where a YAML line's comment starts, if it has one.
fn comment_start(line: &str) -> Option<usize> {
    let (mut single, mut double, mut prev) = (false, false, ' ');
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single && prev != '\\' => double = !double,
            '#' if !single && !double && (prev == ' ' || prev == '\t') => return Some(i),
            _ => {}
        }
        prev = c;
    }
    None
}

/// `$VAR`, `${VAR}` and `$$` in one piece of text.
fn expand_vars(text: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| "unterminated ${".to_string())?;
            (&braced[..end], end + 2)
        } else if let Some(escaped) = after.strip_prefix('$') {
            out.push('$');
            rest = escaped;
            continue;
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        let value = if name == "PID" {
            Some(std::process::id().to_string())
        } else {
            lookup(name)
        };
        out.push_str(&value.ok_or_else(|| name.to_string())?);
        rest = &after[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Config {
    /// Reads, expands and validates a configuration file, and logs a warning for each
    /// Litestream setting in it that sluice ignores.
    pub fn load(path: &Path, expand: bool) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Self::parse(path, &text, expand)?;
        for w in &config.warnings {
            tracing::warn!("config {}: {w}", path.display());
        }
        Ok(config)
    }

    pub fn parse(path: &Path, text: &str, expand: bool) -> Result<Config, ConfigError> {
        let text = if expand {
            expand_env(text, |k| std::env::var(k).ok()).map_err(|var| ConfigError::MissingEnv {
                path: path.to_path_buf(),
                var,
            })?
        } else {
            text.to_string()
        };
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_norway::from_str(&text).map_err(|e| invalid(pinpoint_unknown_key(&text, e)))?
        };
        let mut warnings = Vec::new();
        judge(
            &config.other,
            &[Scope::Top, Scope::Replica],
            "",
            &text,
            &mut warnings,
        )
        .map_err(invalid)?;
        for (i, db) in config.dbs.iter().enumerate() {
            judge(
                &db.other,
                &[Scope::Db],
                &format!("dbs[{i}]: "),
                &text,
                &mut warnings,
            )
            .map_err(invalid)?;
            for (j, r) in db.replica.iter().chain(&db.replicas).enumerate() {
                let at = format!("dbs[{i}] replica {j}: ");
                judge(&r.other, &[Scope::Replica], &at, &text, &mut warnings).map_err(invalid)?;
            }
        }
        config.warnings = warnings;
        let defaults = config.defaults.clone();
        for (i, db) in config.dbs.iter_mut().enumerate() {
            match (&db.dir, db.path.trim().is_empty()) {
                (Some(_), false) => {
                    return Err(invalid(format!(
                        "dbs[{i}]: give either path (one database) or dir (directory replication), not both"
                    )));
                }
                (Some(dir), true) => {
                    let pattern = db.pattern.as_deref().ok_or_else(|| {
                        invalid(format!(
                            "dbs[{i}]: dir {dir} needs a pattern (e.g. \"*.db\")"
                        ))
                    })?;
                    glob::Pattern::new(pattern)
                        .map_err(|e| invalid(format!("dbs[{i}]: pattern {pattern:?}: {e}")))?;
                    db.dir = Some(expand_path(dir));
                }
                (None, true) => return Err(invalid(format!("dbs[{i}]: path is required"))),
                (None, false) => {
                    if db.pattern.is_some() || db.recursive.is_some() || db.watch.is_some() {
                        return Err(invalid(format!(
                            "dbs[{i}]: pattern, recursive and watch go with dir (directory replication)"
                        )));
                    }
                    db.path = expand_path(&db.path);
                }
            }
            if let Some(one) = db.replica.take() {
                db.replicas.insert(0, one);
            }
            if db.replicas.is_empty() {
                return Err(invalid(format!(
                    "dbs[{i}] ({}): no replica configured (add `replica:` with a url)",
                    db.path
                )));
            }
            for r in &mut db.replicas {
                r.settings.inherit(&defaults);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for db in config.dbs.iter().filter(|d| d.dir.is_none()) {
            if !seen.insert(db.path.clone()) {
                return Err(invalid(format!("database {} is listed twice", db.path)));
            }
        }
        if let Some(levels) = &config.levels {
            for (i, l) in levels.iter().enumerate() {
                if l.interval.0.is_zero() {
                    return Err(invalid(format!(
                        "levels[{i}]: interval must be greater than zero"
                    )));
                }
            }
        }
        Ok(config)
    }

    /// The database entry for `path` (compared after expansion and canonicalisation): its own
    /// entry, or the one a directory entry makes for it (whether the file exists or not: a
    /// restore on a new host names a database that is not there yet).
    pub fn db(&self, path: &str) -> Option<DbConfig> {
        let want = expand_path(path);
        if let Some(d) = self.dbs.iter().find(|d| d.dir.is_none() && d.path == want) {
            return Some(d.clone());
        }
        self.dbs.iter().find_map(|d| d.entry_for(Path::new(&want)))
    }

    /// Replaces each directory entry by an entry for every SQLite database found in it now,
    /// and returns the entries with `watch: true`, to look in again. A directory that holds
    /// none is an error unless it is watched, as in Litestream.
    pub fn discover(&mut self) -> Result<Vec<DbConfig>, String> {
        let mut dbs = Vec::with_capacity(self.dbs.len());
        let mut watched = Vec::new();
        for db in std::mem::take(&mut self.dbs) {
            let Some(dir) = db.dir.clone() else {
                dbs.push(db);
                continue;
            };
            let entries = db.databases_now().map_err(|e| format!("dir {dir}: {e}"))?;
            if db.watch.unwrap_or(false) {
                watched.push(db.clone());
            } else if entries.is_empty() {
                return Err(format!(
                    "no SQLite databases found in directory {dir} with pattern {}",
                    db.pattern.as_deref().unwrap_or_default()
                ));
            }
            for e in entries {
                if dbs.iter().any(|d: &DbConfig| d.path == e.path) {
                    return Err(format!("database {} is listed twice", e.path));
                }
                tracing::info!(db = %e.path, dir = %dir, "found by directory replication");
                dbs.push(e);
            }
        }
        self.dbs = dbs;
        Ok(watched)
    }
}

impl DbConfig {
    /// A directory entry's entries for the SQLite databases in its directory now, by path.
    pub fn databases_now(&self) -> std::io::Result<Vec<DbConfig>> {
        let Some(dir) = self.dir.as_deref() else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        find_databases(Path::new(dir), self.recursive.unwrap_or(false), &mut found)?;
        found.sort();
        Ok(found.iter().filter_map(|p| self.entry_for(p)).collect())
    }

    /// The entry of database `db` under this directory entry, if `db` is inside `dir` (directly,
    /// or deeper when `recursive`) and its file name matches `pattern`: this entry with `path`
    /// set and every replica's path joined with `db`'s path relative to `dir`.
    pub fn entry_for(&self, db: &Path) -> Option<DbConfig> {
        let dir = self.dir.as_deref()?;
        let rel = db.strip_prefix(dir).ok()?;
        let name = rel.file_name()?.to_str()?;
        let nested = rel.components().count() > 1;
        if nested && !self.recursive.unwrap_or(false) {
            return None;
        }
        let pattern = glob::Pattern::new(self.pattern.as_deref()?).ok()?;
        if !pattern.matches(name) {
            return None;
        }
        let rel = rel.to_str()?.replace(std::path::MAIN_SEPARATOR, "/");
        let mut entry = self.clone();
        entry.path = db.display().to_string();
        entry.dir = None;
        entry.pattern = None;
        entry.recursive = None;
        entry.watch = None;
        for r in entry.replica.iter_mut().chain(entry.replicas.iter_mut()) {
            if let Some(url) = &mut r.url {
                let (base, query) = url
                    .split_once('?')
                    .map_or((url.as_str(), None), |(b, q)| (b, Some(q)));
                let mut joined = format!("{}/{rel}", base.trim_end_matches('/'));
                if let Some(q) = query {
                    joined.push('?');
                    joined.push_str(q);
                }
                *url = joined;
            } else {
                let base = r.path.as_deref().unwrap_or_default().trim_end_matches('/');
                r.path = Some(if base.is_empty() {
                    rel.clone()
                } else {
                    format!("{base}/{rel}")
                });
            }
        }
        Some(entry)
    }
}

/// Every regular file under `dir` that starts like a SQLite database (its 16-byte magic),
/// descending into subdirectories when `recursive`.
fn find_databases(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            if recursive {
                find_databases(&path, recursive, out)?;
            }
        } else if kind.is_file() && is_sqlite_database(&path) {
            out.push(path);
        }
    }
    Ok(())
}

fn is_sqlite_database(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"SQLite format 3\0"
}

/// serde reports an unknown key inside a flattened struct at the line where its mapping starts;
/// point at the key's own line instead.
fn pinpoint_unknown_key(text: &str, e: serde_norway::Error) -> String {
    let msg = e.to_string();
    let key = msg
        .split_once("unknown field `")
        .and_then(|(_, r)| r.split_once('`'))
        .map(|(k, _)| k);
    let (Some(key), Some(loc)) = (key, e.location()) else {
        return msg;
    };
    let line = text
        .lines()
        .enumerate()
        .skip(loc.line().saturating_sub(1))
        .find(|(_, l)| {
            l.trim_start()
                .trim_start_matches("- ")
                .starts_with(&format!("{key}:"))
        })
        .map(|(i, _)| i + 1);
    match line {
        Some(n) if n != loc.line() => {
            let head = msg.split(" at line ").next().unwrap_or(&msg);
            format!("{head} at line {n}")
        }
        _ => msg,
    }
}

/// Litestream's path expansion: strip `sqlite://`, expand `~`, make absolute.
pub fn expand_path(p: &str) -> String {
    let p = p
        .strip_prefix("sqlite3://")
        .or_else(|| p.strip_prefix("sqlite://"))
        .unwrap_or(p);
    let p = if p == "~" || p.starts_with("~/") {
        std::env::var("HOME").map_or_else(|_| p.to_string(), |h| format!("{h}{}", &p[1..]))
    } else {
        p.to_string()
    };
    std::path::absolute(&p).map_or(p, |a| a.display().to_string())
}

/// The configuration path in effect: the flag, then `$SLUICE_CONFIG`, then `$LITESTREAM_CONFIG`,
/// then [`DEFAULT_CONFIG_PATH`]. The bool says whether it was chosen explicitly.
pub fn config_path(flag: Option<&Path>) -> (PathBuf, bool) {
    if let Some(p) = flag {
        return (p.to_path_buf(), true);
    }
    for var in ["SLUICE_CONFIG", "LITESTREAM_CONFIG"] {
        if let Ok(p) = std::env::var(var)
            && !p.is_empty()
        {
            return (PathBuf::from(p), true);
        }
    }
    (PathBuf::from(DEFAULT_CONFIG_PATH), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.yml"), text, true)
    }

    #[test]
    fn litestream_config_parses() {
        let c = parse(
            "sync-interval: 2s\ndbs:\n  - path: /data/app.db\n    replica:\n      url: file:///backups/app\n  - path: /data/b.db\n    replicas:\n      - type: file\n        path: /backups/b1\n      - url: file:///backups/b2\n        sync-interval: 5s\n",
        )
        .expect("parses");
        assert_eq!(c.dbs.len(), 2);
        assert_eq!(c.dbs[1].replicas.len(), 2);
        assert_eq!(
            c.dbs[0].replicas[0].settings.sync_interval,
            Some(GoDuration(Duration::from_secs(2)))
        );
        assert_eq!(
            c.dbs[1].replicas[1].settings.sync_interval,
            Some(GoDuration(Duration::from_secs(5)))
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse(
            "dbs:\n  - path: /a.db\n    replica:\n      url: file:///b\n      sync-intreval: 1s\n",
        )
        .expect_err("typo");
        let msg = err.to_string();
        assert!(
            msg.contains("sync-intreval") && msg.contains("line 5"),
            "{msg}"
        );
    }

    #[test]
    fn env_expansion_and_missing_vars() {
        let vars = |k: &str| (k == "BUCKET").then(|| "bkt".to_string());
        assert_eq!(
            expand_env("a $BUCKET ${BUCKET} $$x", vars).as_deref(),
            Ok("a bkt bkt $x")
        );
        assert_eq!(expand_env("${NOPE}", vars), Err("NOPE".to_string()));
        // Comments are not expanded, wherever they are; a '#' inside a value or quotes is not
        // a comment.
        assert_eq!(
            expand_env(
                "# costs $5 a month\nbucket: $BUCKET   # was ${OLD}\npath: a#$BUCKET\nx: \"# $BUCKET\" # $NOPE\ny: '#$BUCKET'\n",
                vars
            )
            .as_deref(),
            Ok("# costs $5 a month\nbucket: bkt   # was ${OLD}\npath: a#bkt\nx: \"# bkt\" # $NOPE\ny: '#bkt'\n")
        );
    }

    #[test]
    fn database_without_replica_is_refused() {
        let msg = parse("dbs:\n  - path: /a.db\n")
            .expect_err("no replica")
            .to_string();
        assert!(msg.contains("no replica"), "{msg}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let c = parse(
            "secret-access-key: hunter2-secret\ndbs:\n  - path: /a.db\n    replica:\n      url: s3://bkt/a\n      access-key-id: AKID\n",
        )
        .expect("parses");
        let r = &c.dbs[0].replicas[0].settings;
        assert_eq!(r.secret_access_key.as_deref(), Some("hunter2-secret"));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("AKID"),
            "{shown}"
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn directory_entries_make_one_entry_per_database_with_its_relative_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().display().to_string();
        let text = format!(
            "dbs:\n  - dir: {root}\n    pattern: \"*.db\"\n    recursive: true\n    replicas:\n      - url: s3://bkt/tenants?endpoint=localhost:9000\n      - type: file\n        path: /backups/tenants\n"
        );
        let mut c = parse(&text).expect("parses");
        let e = c.db(&format!("{root}/a/b.db")).expect("an entry");
        assert_eq!(e.path, format!("{root}/a/b.db"));
        assert_eq!(
            e.replicas[0].url.as_deref(),
            Some("s3://bkt/tenants/a/b.db?endpoint=localhost:9000")
        );
        assert_eq!(
            e.replicas[1].path.as_deref(),
            Some("/backups/tenants/a/b.db")
        );
        assert!(c.db(&format!("{root}/a/b.sqlite")).is_none(), "pattern");
        // Discovery: SQLite files only, recursively, sorted.
        std::fs::create_dir_all(dir.path().join("a")).expect("mkdir");
        for p in ["x.db", "a/b.db"] {
            let conn = rusqlite::Connection::open(dir.path().join(p)).expect("create");
            conn.execute_batch("CREATE TABLE t (x)").expect("schema");
        }
        std::fs::write(dir.path().join("notes.db"), b"not a database").expect("write");
        c.discover().expect("discover");
        let paths: Vec<String> = c.dbs.iter().map(|d| d.path.clone()).collect();
        assert_eq!(
            paths,
            vec![format!("{root}/a/b.db"), format!("{root}/x.db")]
        );
        // Not recursive: the subdirectory is left alone; nothing found is an error.
        let flat = text.replace("    recursive: true\n", "");
        let mut c = parse(&flat).expect("parses");
        c.discover().expect("discover");
        assert_eq!(c.dbs.len(), 1);
        let none = parse(&flat.replace("*.db", "*.sqlite")).expect("parses");
        assert!(
            none.clone()
                .discover()
                .expect_err("none")
                .contains("no SQLite databases")
        );
        for (bad, says) in [
            (
                text.replace("    pattern: \"*.db\"\n", ""),
                "needs a pattern",
            ),
            (
                text.replace("  - dir:", "  - path: /x.db\n    dir:"),
                "not both",
            ),
            (text.replace("\"*.db\"", "\"[\""), "pattern"),
        ] {
            let err = parse(&bad).expect_err(says).to_string();
            assert!(err.contains(says), "{err}");
        }
    }
}
