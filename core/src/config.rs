//! Litestream-compatible YAML configuration.
//!
//! The schema is Litestream 0.5's (`dbs:` with `path` and `replica:`/`replicas:`, global defaults
//! for replica settings, `$VAR`/`${VAR}` expansion), with two deliberate differences:
//! - an unknown key is an error naming the key and its line (Litestream ignores it silently, so a
//!   typo such as `sync-intreval` quietly does nothing);
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

/// Settings a replica may carry, each also allowed at the top level as a default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReplicaSettings {
    pub sync_interval: Option<GoDuration>,
    pub validation_interval: Option<GoDuration>,
    pub max_sync_ltx_files: Option<u32>,
    pub auto_recover: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: Option<bool>,
    pub skip_verify: Option<bool>,
    pub sign_payload: Option<bool>,
    pub require_content_md5: Option<bool>,
    pub storage_class: Option<String>,
    pub part_size: Option<u64>,
    pub concurrency: Option<u32>,
    /// Azure Blob Storage (`abs`): the storage account, its shared key, or a SAS token.
    pub account_name: Option<String>,
    pub account_key: Option<Secret>,
    pub sas_token: Option<Secret>,
}

impl ReplicaSettings {
    /// Fills every unset field from `defaults`.
    fn inherit(&mut self, d: &ReplicaSettings) {
        macro_rules! inherit {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = d.$f.clone(); } )* };
        }
        inherit!(
            sync_interval,
            validation_interval,
            max_sync_ltx_files,
            auto_recover,
            access_key_id,
            secret_access_key,
            region,
            bucket,
            endpoint,
            force_path_style,
            skip_verify,
            sign_payload,
            require_content_md5,
            storage_class,
            part_size,
            concurrency,
            account_name,
            account_key,
            sas_token
        );
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReplicaConfig {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: Option<String>,
    pub path: Option<String>,
    pub url: Option<String>,
    #[serde(flatten)]
    pub settings: ReplicaSettings,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SnapshotConfig {
    pub interval: Option<GoDuration>,
    pub retention: Option<GoDuration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DbConfig {
    pub path: String,
    pub meta_path: Option<String>,
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
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LoggingConfig {
    pub level: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub stderr: Option<bool>,
    pub source: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub dbs: Vec<DbConfig>,
    pub addr: Option<String>,
    pub exec: Option<String>,
    pub levels: Option<Vec<LevelConfig>>,
    pub snapshot: Option<SnapshotConfig>,
    pub l0_retention: Option<GoDuration>,
    pub l0_retention_check_interval: Option<GoDuration>,
    pub retention: Option<RetentionConfig>,
    pub logging: Option<LoggingConfig>,
    pub shutdown_sync_timeout: Option<GoDuration>,
    pub shutdown_sync_interval: Option<GoDuration>,
    #[serde(flatten)]
    pub defaults: ReplicaSettings,
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
    /// Reads, expands and validates a configuration file.
    pub fn load(path: &Path, expand: bool) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text, expand)
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
        let defaults = config.defaults.clone();
        for (i, db) in config.dbs.iter_mut().enumerate() {
            if db.path.trim().is_empty() {
                return Err(invalid(format!("dbs[{i}]: path is required")));
            }
            db.path = expand_path(&db.path);
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
        for db in &config.dbs {
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

    /// The database entry for `path` (compared after expansion and canonicalisation).
    pub fn db(&self, path: &str) -> Option<&DbConfig> {
        let want = expand_path(path);
        self.dbs.iter().find(|d| d.path == want)
    }
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
}
