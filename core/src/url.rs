//! Replica addresses: URLs on the command line, `url:` or `type:`+`path:` in a config.

use std::path::PathBuf;
use std::sync::Arc;

use crate::azure;
use crate::config::{Config, ConfigError, ReplicaConfig, ReplicaSettings, expand_path};
use crate::replica::{Layout, Replica};
use crate::s3::{S3Config, resolve_credentials};
use crate::store::DirStore;

/// Where a replica lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaTarget {
    /// A directory, Litestream's `file` replica type.
    Dir(PathBuf),
    /// An S3-compatible bucket.
    S3 {
        bucket: String,
        path: String,
        endpoint: Option<String>,
        region: Option<String>,
        force_path_style: bool,
        skip_verify: bool,
    },
    /// An Azure Blob Storage container (`abs://[account@]container/path`).
    Azure {
        /// The storage account; `None` until the configuration's `account-name` gives it.
        account: Option<String>,
        container: String,
        path: String,
        /// The account's blob endpoint (`http(s)://host[:port][/path]`); `None` for Azure's.
        endpoint: Option<String>,
    },
    /// A Google Cloud Storage bucket (`gs://bucket/path`).
    Gcs {
        bucket: String,
        path: String,
        /// An emulator or private endpoint; `None`: Google's (or `STORAGE_EMULATOR_HOST`).
        endpoint: Option<String>,
    },
    /// A directory on an SFTP server (`sftp://user[:password]@host[:port]/path`).
    Sftp {
        user: Option<String>,
        /// From the URL; kept out of `Display` and `Debug`.
        password: Option<crate::config::Secret>,
        /// `host[:port]`.
        host: String,
        path: String,
    },
}

/// The replica as a URL, for listings (no credentials are ever part of a target).
impl std::fmt::Display for ReplicaTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicaTarget::Dir(p) => write!(f, "file://{}", p.display()),
            ReplicaTarget::S3 {
                bucket,
                path,
                endpoint,
                ..
            } => {
                write!(f, "s3://{bucket}/{path}")?;
                endpoint_query(f, endpoint.as_deref())
            }
            ReplicaTarget::Azure {
                account,
                container,
                path,
                endpoint,
            } => {
                write!(f, "abs://")?;
                if let Some(a) = account {
                    write!(f, "{a}@")?;
                }
                write!(f, "{container}/{path}")?;
                endpoint_query(f, endpoint.as_deref())
            }
            ReplicaTarget::Gcs {
                bucket,
                path,
                endpoint,
            } => {
                write!(f, "gs://{bucket}/{path}")?;
                endpoint_query(f, endpoint.as_deref())
            }
            ReplicaTarget::Sftp {
                user, host, path, ..
            } => {
                write!(f, "sftp://")?;
                if let Some(u) = user {
                    write!(f, "{u}@")?;
                }
                write!(f, "{host}/{}", path.trim_start_matches('/'))
            }
        }
    }
}

/// The `?endpoint=` of a listed URL, when the replica names one.
fn endpoint_query(f: &mut std::fmt::Formatter<'_>, endpoint: Option<&str>) -> std::fmt::Result {
    match endpoint {
        Some(e) => write!(f, "?endpoint={e}"),
        None => Ok(()),
    }
}

impl ReplicaTarget {
    /// Parses `file:///abs/path`, a plain path, `s3://bucket[.host:port]/path[?query]` or
    /// `abs://[account@]container/path[?endpoint=...]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(format!(
                    "replica URL {url:?}: file URLs need an absolute path (file:///abs/path)"
                ));
            }
            return Ok(ReplicaTarget::Dir(PathBuf::from(rest)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            return parse_s3(url, rest);
        }
        if let Some(rest) = url.strip_prefix("abs://") {
            return parse_abs(url, rest);
        }
        if let Some(rest) = url.strip_prefix("sftp://") {
            return parse_sftp(url, rest);
        }
        if let Some(rest) = url.strip_prefix("gs://") {
            return parse_gs(url, rest);
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(format!(
                "replica URL {url:?}: unsupported scheme {scheme:?} (supported: file, s3, abs, sftp, gs)"
            ));
        }
        if url.trim().is_empty() {
            return Err("replica URL is empty".into());
        }
        Ok(ReplicaTarget::Dir(PathBuf::from(expand_path(url))))
    }

    pub fn from_config(r: &ReplicaConfig) -> Result<Self, String> {
        let s = &r.settings;
        match (&r.url, &r.path) {
            (Some(_), Some(_)) => Err("give either url or path, not both".into()),
            (Some(url), None) => {
                let mut target = Self::parse(url)?;
                if let ReplicaTarget::S3 {
                    bucket,
                    endpoint,
                    region,
                    force_path_style,
                    skip_verify,
                    ..
                } = &mut target
                {
                    // Litestream's precedence: the configuration's settings win over the URL's.
                    one_container(url, "bucket", bucket, s.bucket.as_deref())?;
                    if let Some(ep) = &s.endpoint {
                        *endpoint = Some(endpoint_with_scheme(ep)?);
                    }
                    if let Some(rg) = s.region.clone().filter(|r| !r.is_empty()) {
                        *region = Some(rg);
                    }
                    *force_path_style |= s.force_path_style.unwrap_or(s.endpoint.is_some());
                    *skip_verify |= s.skip_verify.unwrap_or(false);
                }
                if let ReplicaTarget::Azure {
                    account,
                    container,
                    endpoint,
                    ..
                } = &mut target
                {
                    one_container(url, "container", container, s.bucket.as_deref())?;
                    if let Some(a) = &s.account_name {
                        azure::check_account(a).map_err(|e| format!("account-name: {e}"))?;
                        *account = Some(a.clone());
                    }
                    if let Some(ep) = &s.endpoint {
                        *endpoint = Some(azure_endpoint(ep)?);
                    }
                    require_account(account.as_deref())?;
                }
                if let ReplicaTarget::Gcs {
                    bucket, endpoint, ..
                } = &mut target
                {
                    one_container(url, "bucket", bucket, s.bucket.as_deref())?;
                    if let Some(ep) = &s.endpoint {
                        *endpoint = Some(endpoint_with_scheme(ep)?);
                    }
                }
                if let ReplicaTarget::Sftp {
                    user, host, path, ..
                } = &mut target
                {
                    // Litestream's rule: the configuration's settings win over the URL's.
                    if let Some(h) = s.host.clone().filter(|h| !h.is_empty()) {
                        *host = h;
                    }
                    if let Some(u) = s.user.clone().filter(|u| !u.is_empty()) {
                        *user = Some(u);
                    }
                    if user.is_none() {
                        return Err(format!("replica URL {url:?}: an sftp replica needs a user"));
                    }
                    if path.trim_matches('/').is_empty() {
                        return Err(format!("replica URL {url:?}: an sftp replica needs a path"));
                    }
                }
                Ok(target)
            }
            (None, path) => match r.kind.as_deref().unwrap_or("file") {
                "file" => {
                    let path = path.as_deref().ok_or("file replica needs a path")?;
                    if path.contains("://") {
                        return Err(format!("replica path {path:?} is a URL; use url: instead"));
                    }
                    Ok(ReplicaTarget::Dir(PathBuf::from(expand_path(path))))
                }
                "s3" => {
                    let bucket = s.bucket.clone().ok_or("s3 replica needs a bucket")?;
                    check_bucket(&bucket).map_err(|e| format!("bucket: {e}"))?;
                    let endpoint = s
                        .endpoint
                        .as_deref()
                        .map(endpoint_with_scheme)
                        .transpose()?;
                    Ok(ReplicaTarget::S3 {
                        bucket,
                        path: clean_path(path.as_deref().unwrap_or_default(), "bucket")
                            .map_err(|e| format!("path: {e}"))?,
                        force_path_style: s.force_path_style.unwrap_or(endpoint.is_some()),
                        endpoint,
                        region: s.region.clone().filter(|r| !r.is_empty()),
                        skip_verify: s.skip_verify.unwrap_or(false),
                    })
                }
                "abs" => {
                    let container = s
                        .bucket
                        .clone()
                        .ok_or("abs replica needs a container (bucket:)")?;
                    azure::check_container(&container).map_err(|e| format!("bucket: {e}"))?;
                    let account = s.account_name.clone();
                    if let Some(a) = &account {
                        azure::check_account(a).map_err(|e| format!("account-name: {e}"))?;
                    }
                    require_account(account.as_deref())?;
                    Ok(ReplicaTarget::Azure {
                        account,
                        container,
                        path: clean_path(path.as_deref().unwrap_or_default(), "container")
                            .map_err(|e| format!("path: {e}"))?,
                        endpoint: s.endpoint.as_deref().map(azure_endpoint).transpose()?,
                    })
                }
                "gs" => {
                    let bucket = s.bucket.clone().ok_or("gs replica needs a bucket")?;
                    Ok(ReplicaTarget::Gcs {
                        bucket,
                        path: clean_path(path.as_deref().unwrap_or_default(), "bucket")
                            .map_err(|e| format!("path: {e}"))?,
                        endpoint: s
                            .endpoint
                            .as_deref()
                            .map(endpoint_with_scheme)
                            .transpose()?,
                    })
                }
                "sftp" => {
                    let host = s.host.clone().ok_or("sftp replica needs a host")?;
                    let user = s.user.clone().ok_or("sftp replica needs a user")?;
                    let path = path.clone().unwrap_or_default();
                    if path.trim_matches('/').is_empty() {
                        return Err("sftp replica needs a path".into());
                    }
                    Ok(ReplicaTarget::Sftp {
                        user: Some(user),
                        password: None,
                        host,
                        path,
                    })
                }
                other => Err(format!(
                    "unsupported replica type {other:?} (supported: file, s3, abs, sftp, gs)"
                )),
            },
        }
    }

    /// Opens the replica. `settings` supplies what a URL cannot carry (S3 credentials); for
    /// a bare URL pass `ReplicaSettings::default()` and the environment is consulted.
    /// Makes no request.
    pub fn open(&self, settings: &ReplicaSettings) -> Result<Replica, String> {
        match self {
            ReplicaTarget::Dir(p) => Ok(Replica::new(
                Arc::new(DirStore::new(p.clone())),
                Layout::File,
            )),
            ReplicaTarget::S3 {
                bucket,
                path,
                endpoint,
                region,
                force_path_style,
                skip_verify,
            } => {
                let credentials = resolve_credentials(
                    settings.access_key_id.as_deref(),
                    settings.secret_access_key.as_deref(),
                    |k| std::env::var(k).ok(),
                )
                .map_err(|e| format!("s3://{bucket}/{path}: {e}"))?;
                // Litestream's LITESTREAM_S3_ENDPOINT: a default endpoint (path-style) for
                // replicas that name none, so `s3://bucket/path` can point at MinIO and friends.
                let (endpoint, force_path_style) = match (endpoint, env_endpoint()) {
                    (Some(e), _) => (Some(e.clone()), *force_path_style),
                    (None, Some(e)) => (
                        Some(
                            endpoint_with_scheme(&e)
                                .map_err(|m| format!("LITESTREAM_S3_ENDPOINT: {m}"))?,
                        ),
                        true,
                    ),
                    (None, None) => (None, *force_path_style),
                };
                let store = crate::s3::open(S3Config {
                    bucket: bucket.clone(),
                    path: path.clone(),
                    endpoint,
                    region: region.clone(),
                    force_path_style,
                    skip_verify: *skip_verify,
                    credentials,
                })?;
                Ok(Replica::new(Arc::new(store), Layout::S3))
            }
            ReplicaTarget::Azure {
                account,
                container,
                path,
                endpoint,
            } => {
                let account = match &settings.account_name {
                    Some(a) => a.clone(),
                    None => require_account(account.as_deref())
                        .map_err(|e| format!("abs://{container}/{path}: {e}"))?,
                };
                let credentials = azure::resolve_credentials(
                    settings.sas_token.as_deref(),
                    settings.account_key.as_deref(),
                    |k| std::env::var(k).ok(),
                );
                let store = azure::open(azure::AzureConfig {
                    account,
                    container: container.clone(),
                    path: path.clone(),
                    endpoint: endpoint.clone(),
                    credentials,
                })?;
                // Litestream's Azure replica lays files out as its file replica does.
                Ok(Replica::new(Arc::new(store), Layout::File))
            }
            ReplicaTarget::Gcs {
                bucket,
                path,
                endpoint,
            } => {
                // Google's clients' variable for an emulator, for replicas that name no endpoint.
                let endpoint = match endpoint {
                    Some(e) => Some(e.clone()),
                    None => std::env::var(crate::gcs::EMULATOR_ENV)
                        .ok()
                        .filter(|h| !h.trim().is_empty())
                        .map(|h| endpoint_with_scheme(&h))
                        .transpose()
                        .map_err(|e| {
                            format!("gs://{bucket}/{path}: {}: {e}", crate::gcs::EMULATOR_ENV)
                        })?,
                };
                let store = crate::gcs::open(crate::gcs::GcsConfig {
                    bucket: bucket.clone(),
                    path: path.clone(),
                    endpoint,
                })?;
                // Litestream's GCS replica lays files out as its file replica does.
                Ok(Replica::new(Arc::new(store), Layout::File))
            }
            ReplicaTarget::Sftp {
                user,
                password,
                host,
                path,
            } => {
                let user = settings
                    .user
                    .clone()
                    .or_else(|| user.clone())
                    .ok_or_else(|| format!("sftp://{host}/{path}: an sftp replica needs a user"))?;
                let store = crate::sftp::SftpStore::new(crate::sftp::SftpConfig {
                    host: settings.host.clone().unwrap_or_else(|| host.clone()),
                    user,
                    password: settings
                        .password
                        .as_ref()
                        .or(password.as_ref())
                        .map(|p| p.0.clone()),
                    key_path: settings
                        .key_path
                        .as_deref()
                        .map(|p| PathBuf::from(expand_path(p))),
                    host_key: settings.host_key.clone(),
                    path: path.clone(),
                })?;
                // Litestream's SFTP replica lays files out as its file replica does.
                Ok(Replica::new(Arc::new(store), Layout::File))
            }
        }
    }
}

/// A URL and a `bucket:` setting must not name two buckets (Azure: containers).
fn one_container(url: &str, word: &str, in_url: &str, setting: Option<&str>) -> Result<(), String> {
    match setting {
        Some(b) if b != in_url => Err(format!(
            "replica URL {url:?} names {word} {in_url:?} but bucket: says {b:?}; give one"
        )),
        _ => Ok(()),
    }
}

/// The account of an Azure replica, or an error saying where to give it.
fn require_account(account: Option<&str>) -> Result<String, String> {
    account.map(str::to_string).ok_or_else(|| {
        "an abs replica needs a storage account: abs://ACCOUNT@container/path, or account-name: in the configuration".to_string()
    })
}

/// An Azure blob endpoint: `http(s)://host[:port]` as [`endpoint_with_scheme`] takes it, and
/// an optional path (Azurite and other emulators put the account there:
/// `http://127.0.0.1:10000/devstoreaccount1`).
pub fn azure_endpoint(endpoint: &str) -> Result<String, String> {
    let e = endpoint.trim().trim_end_matches('/');
    let (scheme, rest) = e.split_once("://").map_or(("", e), |(s, r)| (s, r));
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let base = if scheme.is_empty() {
        endpoint_with_scheme(host)
    } else {
        endpoint_with_scheme(&format!("{scheme}://{host}"))
    }?;
    if path.is_empty() {
        return Ok(base);
    }
    let clean = clean_path(path, "endpoint").map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
    Ok(format!("{base}/{clean}"))
}

fn env_endpoint() -> Option<String> {
    std::env::var("LITESTREAM_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
}

/// Litestream's rule for local development hosts, which get `http://` by default.
fn is_local_host(host_port: &str) -> bool {
    let host = match host_port.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let private_172 = host
        .strip_prefix("172.")
        .and_then(|r| r.split('.').next())
        .and_then(|o| o.parse::<u8>().ok())
        .is_some_and(|o| (16..=31).contains(&o));
    host == "localhost"
        || host == "::1"
        || host.starts_with("127.")
        || host.starts_with("10.")
        || host.starts_with("192.168.")
        || private_172
        || host.ends_with(".localhost")
        || host.ends_with(".local")
}

/// Adds `http://` (local hosts) or `https://` to an endpoint without a scheme, and checks that
/// what remains is `host[:port]`.
pub fn endpoint_with_scheme(endpoint: &str) -> Result<String, String> {
    let e = endpoint.trim();
    let (scheme, rest) = match e.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (s, rest),
        Some((s, _)) => {
            return Err(format!(
                "endpoint {endpoint:?}: unsupported scheme {s:?} (use http:// or https://)"
            ));
        }
        None => (if is_local_host(e) { "http" } else { "https" }, e),
    };
    let host_port = rest.trim_end_matches('/');
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !p.contains(']') => (h, Some(p)),
        _ => (host_port, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-_[]:".contains(&c));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if !host_ok || !port_ok {
        return Err(format!(
            "endpoint {endpoint:?}: expected http(s)://host[:port]"
        ));
    }
    Ok(format!("{scheme}://{host_port}"))
}

/// S3's bucket naming rules: 3-63 characters of a-z, 0-9, '-' and '.', starting and ending
/// with a letter or digit.
pub fn check_bucket(bucket: &str) -> Result<(), String> {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && edge_ok(bucket.chars().next())
        && edge_ok(bucket.chars().last());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid bucket name {bucket:?} (3-63 characters: a-z, 0-9, '-', '.', starting and ending with a letter or digit)"
        ))
    }
}

/// The replica path inside a bucket: segments joined by '/', none empty, '.' or '..', and no
/// character S3 clients escape differently (so Litestream and sluice name the same objects).
pub fn clean_path(path: &str, container_word: &str) -> Result<String, String> {
    const UNSAFE: &[char] = &[
        '\\', '{', '}', '^', '%', '`', '[', ']', '"', '<', '>', '~', '#', '|', '*', '?',
    ];
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err(format!(
            "a replica needs a path inside the {container_word} ({container_word}/path)"
        ));
    }
    if let Some(bad) = parts.iter().find(|p| **p == "." || **p == "..") {
        return Err(format!("path {path:?}: segment {bad:?} is not allowed"));
    }
    if let Some(c) = path.chars().find(|c| c.is_control() || UNSAFE.contains(c)) {
        return Err(format!("path {path:?}: character {c:?} is not allowed"));
    }
    Ok(parts.join("/"))
}

fn parse_s3(url: &str, rest: &str) -> Result<ReplicaTarget, String> {
    let bad = |what: String| format!("replica URL {url:?}: {what}");
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(bad("missing bucket name".into()));
    }
    let (mut bucket, mut endpoint, mut region, mut force_path_style) =
        (host.to_string(), None, None, false);
    if let Some((b, r)) = host
        .strip_suffix(".amazonaws.com")
        .and_then(|h| h.rsplit_once(".s3"))
    {
        // bucket.s3.amazonaws.com or bucket.s3.<region>.amazonaws.com
        bucket = b.to_string();
        region = r.strip_prefix('.').map(str::to_string);
    } else if let Some((b, h)) = host.split_once('.')
        && (h.contains(':') || is_local_host(h))
    {
        // `bucket.host:port` puts the endpoint in the host (MinIO and friends): path-style.
        bucket = b.to_string();
        endpoint = Some(endpoint_with_scheme(h).map_err(bad)?);
        force_path_style = true;
    }
    let mut skip_verify = false;
    let mut path_style_given = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let flag = || match v {
            "" | "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(bad(format!("{k}={v:?}: expected true or false"))),
        };
        match k {
            "endpoint" => {
                if v.is_empty() {
                    return Err(bad("endpoint= is empty".into()));
                }
                endpoint = Some(endpoint_with_scheme(v).map_err(bad)?);
            }
            "region" => region = Some(v.to_string()).filter(|r| !r.is_empty()),
            "forcePathStyle" | "force-path-style" => path_style_given = Some(flag()?),
            "skipVerify" | "skip-verify" => skip_verify = flag()?,
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    // Custom endpoints are path-style unless told otherwise, as in Litestream.
    force_path_style = path_style_given.unwrap_or(force_path_style || endpoint.is_some());
    check_bucket(&bucket).map_err(bad)?;
    Ok(ReplicaTarget::S3 {
        bucket,
        path: clean_path(path, "bucket").map_err(bad)?,
        endpoint,
        region,
        force_path_style,
        skip_verify,
    })
}

fn parse_abs(url: &str, rest: &str) -> Result<ReplicaTarget, String> {
    let bad = |what: String| format!("replica URL {url:?}: {what}");
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (account, container) = match host.split_once('@') {
        Some((a, c)) => (Some(a.to_string()), c),
        None => (None, host),
    };
    if container.is_empty() {
        return Err(bad("missing container name".into()));
    }
    if let Some(a) = &account {
        azure::check_account(a).map_err(bad)?;
    }
    azure::check_container(container).map_err(bad)?;
    let mut endpoint = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "endpoint" if !v.is_empty() => endpoint = Some(azure_endpoint(v).map_err(bad)?),
            "endpoint" => return Err(bad("endpoint= is empty".into())),
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    Ok(ReplicaTarget::Azure {
        account,
        container: container.to_string(),
        path: clean_path(path, "container").map_err(bad)?,
        endpoint,
    })
}

fn parse_gs(url: &str, rest: &str) -> Result<ReplicaTarget, String> {
    let bad = |what: String| format!("replica URL {url:?}: {what}");
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("missing bucket name".into()));
    }
    let mut endpoint = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "endpoint" if !v.is_empty() => endpoint = Some(endpoint_with_scheme(v).map_err(bad)?),
            "endpoint" => return Err(bad("endpoint= is empty".into())),
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    Ok(ReplicaTarget::Gcs {
        bucket: bucket.to_string(),
        path: clean_path(path, "bucket").map_err(bad)?,
        endpoint,
    })
}

fn parse_sftp(url: &str, rest: &str) -> Result<ReplicaTarget, String> {
    let bad = |what: String| format!("replica URL {url:?}: {what}");
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{p}")),
        None => (rest, String::new()),
    };
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if host.is_empty() {
        return Err(bad("missing host".into()));
    }
    let (user, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
        Some((u, p)) => (
            Some(u.to_string()).filter(|u| !u.is_empty()),
            Some(crate::config::Secret(p.to_string())).filter(|p| !p.is_empty()),
        ),
        None => (None, None),
    };
    if path.contains('?') {
        return Err(bad("sftp URLs take no query parameters".into()));
    }
    Ok(ReplicaTarget::Sftp {
        user,
        password,
        host: host.to_string(),
        path,
    })
}

/// Checks that every replica of `config` (loaded from `path`) names a target sluice can open,
/// naming the first that does not. Part of loading a configuration: nothing starts on a
/// configuration with one bad entry.
pub fn check_targets(path: &std::path::Path, config: &Config) -> Result<(), ConfigError> {
    for (i, db) in config.dbs.iter().enumerate() {
        for (j, r) in db.replicas.iter().enumerate() {
            ReplicaTarget::from_config(r).map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                message: format!("dbs[{i}] ({}) replica {j}: {e}", db.path),
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_and_plain_paths() {
        assert_eq!(
            ReplicaTarget::parse("file:///b/app"),
            Ok(ReplicaTarget::Dir("/b/app".into()))
        );
        assert_eq!(
            ReplicaTarget::parse("/b/app"),
            Ok(ReplicaTarget::Dir("/b/app".into()))
        );
        assert!(ReplicaTarget::parse("file://relative").is_err());
        assert!(ReplicaTarget::parse("gcs://x/y").is_err());
    }

    #[test]
    fn s3_url_forms() {
        assert_eq!(
            ReplicaTarget::parse("s3://mybkt.localhost:9000/fruits.db"),
            Ok(ReplicaTarget::S3 {
                bucket: "mybkt".into(),
                path: "fruits.db".into(),
                endpoint: Some("http://localhost:9000".into()),
                region: None,
                force_path_style: true,
                skip_verify: false,
            })
        );
        let t = ReplicaTarget::parse("s3://my-sqlite-backup-bucket/mydb.sqlite?region=us-east-1")
            .expect("plain");
        assert!(
            matches!(t, ReplicaTarget::S3 { ref bucket, endpoint: None, .. } if bucket == "my-sqlite-backup-bucket")
        );
        assert!(ReplicaTarget::parse("s3://Bad_Bucket/x").is_err());
        assert!(ReplicaTarget::parse("s3:///x").is_err());
    }

    fn s3(url: &str) -> (String, String, Option<String>, Option<String>, bool) {
        match ReplicaTarget::parse(url) {
            Ok(ReplicaTarget::S3 {
                bucket,
                path,
                endpoint,
                region,
                force_path_style,
                ..
            }) => (bucket, path, endpoint, region, force_path_style),
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn s3_endpoints_get_litestreams_scheme_and_addressing() {
        // Query endpoint without a scheme: http for local hosts, https otherwise; path style.
        assert_eq!(
            s3("s3://bkt/db?endpoint=127.0.0.1:9000"),
            (
                "bkt".into(),
                "db".into(),
                Some("http://127.0.0.1:9000".into()),
                None,
                true
            )
        );
        assert_eq!(
            s3("s3://bkt/a/b.db?endpoint=nyc3.digitaloceanspaces.com&region=nyc3").2,
            Some("https://nyc3.digitaloceanspaces.com".into())
        );
        assert!(!s3("s3://bkt/db?endpoint=http://h:1&forcePathStyle=false").4);
        // The bucket in the host of a remote endpoint: https.
        assert_eq!(
            s3("s3://bkt.minio.example.net:9000/db").2,
            Some("https://minio.example.net:9000".into())
        );
        // AWS virtual-hosted names carry the region.
        assert_eq!(
            s3("s3://bkt.s3.eu-west-1.amazonaws.com/db"),
            (
                "bkt".into(),
                "db".into(),
                None,
                Some("eu-west-1".into()),
                false
            )
        );
        // Slashes are normalised as Litestream's path.Clean does.
        assert_eq!(s3("s3://bkt//a//b/").1, "a/b");
    }

    #[test]
    fn bad_s3_urls_name_what_is_wrong() {
        for (url, says) in [
            ("s3://bkt", "needs a path"),
            ("s3://bkt/", "needs a path"),
            ("s3://-bkt/db", "invalid bucket name"),
            ("s3://bk/db", "invalid bucket name"),
            ("s3://bkt/db?endpoint=ftp://h", "unsupported scheme"),
            ("s3://bkt/db?endpoint=http://h:port", "host[:port]"),
            ("s3://bkt/db?endpoint=", "empty"),
            ("s3://bkt/a/../b", "\"..\""),
            ("s3://bkt/a%20b", "'%'"),
            ("s3://bkt/db?forcePathStyle=maybe", "true or false"),
            ("s3://bkt/db?sync=1", "unknown query parameter"),
        ] {
            let err = ReplicaTarget::parse(url).expect_err(url);
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn config_settings_win_over_the_url() {
        let mut r = ReplicaConfig {
            url: Some("s3://bkt/db".into()),
            ..ReplicaConfig::default()
        };
        r.settings.endpoint = Some("localhost:9000".into());
        r.settings.region = Some("eu-1".into());
        let ReplicaTarget::S3 {
            endpoint,
            region,
            force_path_style,
            ..
        } = ReplicaTarget::from_config(&r).expect("valid")
        else {
            panic!("not s3")
        };
        assert_eq!(endpoint.as_deref(), Some("http://localhost:9000"));
        assert_eq!(region.as_deref(), Some("eu-1"));
        assert!(force_path_style, "a configured endpoint implies path style");
        r.settings.bucket = Some("other".into());
        assert!(ReplicaTarget::from_config(&r).is_err());

        let mut t = ReplicaConfig {
            kind: Some("s3".into()),
            path: Some("/app.db".into()),
            ..ReplicaConfig::default()
        };
        t.settings.bucket = Some("bkt".into());
        let target = ReplicaTarget::from_config(&t).expect("valid");
        assert!(
            matches!(&target, ReplicaTarget::S3 { path, endpoint: None, force_path_style: false, .. } if path == "app.db"),
            "{target:?}"
        );
    }

    #[test]
    fn abs_urls_and_configs_are_litestreams() {
        assert_eq!(
            ReplicaTarget::parse("abs://acct@backups/app/db.sqlite"),
            Ok(ReplicaTarget::Azure {
                account: Some("acct".into()),
                container: "backups".into(),
                path: "app/db.sqlite".into(),
                endpoint: None,
            })
        );
        let azurite = ReplicaTarget::parse(
            "abs://devstoreaccount1@cnt/db?endpoint=127.0.0.1:10000/devstoreaccount1/",
        )
        .expect("azurite");
        assert!(
            matches!(&azurite, ReplicaTarget::Azure { endpoint: Some(e), .. } if e == "http://127.0.0.1:10000/devstoreaccount1"),
            "{azurite:?}"
        );
        assert_eq!(
            ReplicaTarget::parse(&azurite.to_string()),
            Ok(azurite.clone()),
            "a listed target parses back"
        );
        for (url, says) in [
            ("abs://acct@/db", "missing container"),
            ("abs://acct@Cnt/db", "invalid container name"),
            ("abs://ACCT@cnt/db", "invalid storage account name"),
            ("abs://acct@cnt", "needs a path inside the container"),
            ("abs://acct@cnt/db?region=x", "unknown query parameter"),
            ("abs://acct@cnt/db?endpoint=ftp://h", "unsupported scheme"),
        ] {
            let err = ReplicaTarget::parse(url).expect_err(url);
            assert!(err.contains(says), "{url}: {err}");
        }
        // The account may come from the configuration instead of the URL, as in Litestream.
        let mut r = ReplicaConfig {
            url: Some("abs://cnt/db".into()),
            ..ReplicaConfig::default()
        };
        let err = ReplicaTarget::from_config(&r).expect_err("no account");
        assert!(err.contains("account-name"), "{err}");
        r.settings.account_name = Some("acct".into());
        r.settings.endpoint = Some("https://acct.blob.core.windows.net".into());
        assert!(matches!(
            ReplicaTarget::from_config(&r),
            Ok(ReplicaTarget::Azure { account: Some(a), endpoint: Some(_), .. }) if a == "acct"
        ));
        let mut t = ReplicaConfig {
            kind: Some("abs".into()),
            path: Some("/app.db".into()),
            ..ReplicaConfig::default()
        };
        t.settings.account_name = Some("acct".into());
        let err = ReplicaTarget::from_config(&t).expect_err("no container");
        assert!(err.contains("bucket"), "{err}");
        t.settings.bucket = Some("cnt".into());
        assert!(matches!(
            ReplicaTarget::from_config(&t),
            Ok(ReplicaTarget::Azure { path, .. }) if path == "app.db"
        ));
    }

    #[test]
    fn gs_urls_and_configs() {
        assert_eq!(
            ReplicaTarget::parse("gs://bkt/a/db?endpoint=localhost:4443"),
            Ok(ReplicaTarget::Gcs {
                bucket: "bkt".into(),
                path: "a/db".into(),
                endpoint: Some("http://localhost:4443".into()),
            })
        );
        assert!(ReplicaTarget::parse("gs:///db").is_err());
        assert!(ReplicaTarget::parse("gs://bkt").is_err());
        let mut r = ReplicaConfig {
            kind: Some("gs".into()),
            path: Some("/db".into()),
            ..ReplicaConfig::default()
        };
        assert!(ReplicaTarget::from_config(&r).is_err(), "no bucket");
        r.settings.bucket = Some("bkt".into());
        assert_eq!(
            ReplicaTarget::from_config(&r),
            Ok(ReplicaTarget::Gcs {
                bucket: "bkt".into(),
                path: "db".into(),
                endpoint: None,
            })
        );
    }
}
