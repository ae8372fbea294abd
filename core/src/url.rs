//! Replica addresses: URLs on the command line, `url:` or `type:`+`path:` in a config.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{ReplicaConfig, expand_path};
use crate::replica::{Layout, Replica};
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
    },
}

impl ReplicaTarget {
    /// Parses `file:///abs/path`, a plain path, or `s3://bucket[.host:port]/path[?query]`.
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
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(format!(
                "replica URL {url:?}: unsupported scheme {scheme:?} (supported: file, s3)"
            ));
        }
        if url.trim().is_empty() {
            return Err("replica URL is empty".into());
        }
        Ok(ReplicaTarget::Dir(PathBuf::from(expand_path(url))))
    }

    pub fn from_config(r: &ReplicaConfig) -> Result<Self, String> {
        match (&r.url, &r.path) {
            (Some(_), Some(_)) => Err("give either url or path, not both".into()),
            (Some(url), None) => Self::parse(url),
            (None, path) => match r.kind.as_deref().unwrap_or("file") {
                "file" => {
                    let path = path.as_deref().ok_or("file replica needs a path")?;
                    if path.contains("://") {
                        return Err(format!("replica path {path:?} is a URL; use url: instead"));
                    }
                    Ok(ReplicaTarget::Dir(PathBuf::from(expand_path(path))))
                }
                "s3" => {
                    let bucket = r
                        .settings
                        .bucket
                        .clone()
                        .ok_or("s3 replica needs a bucket")?;
                    Ok(ReplicaTarget::S3 {
                        bucket,
                        path: path
                            .clone()
                            .unwrap_or_default()
                            .trim_start_matches('/')
                            .to_string(),
                        endpoint: r.settings.endpoint.clone(),
                        region: r.settings.region.clone(),
                        force_path_style: r.settings.force_path_style.unwrap_or(false),
                    })
                }
                other => Err(format!(
                    "unsupported replica type {other:?} (supported: file, s3)"
                )),
            },
        }
    }

    /// Opens the replica. S3 is recognised but not built into this version.
    pub fn open(&self) -> Result<Replica, String> {
        match self {
            ReplicaTarget::Dir(p) => Ok(Replica::new(
                Arc::new(DirStore::new(p.clone())),
                Layout::File,
            )),
            ReplicaTarget::S3 { bucket, .. } => Err(format!(
                "s3://{bucket}: S3 replicas are not supported by this build yet"
            )),
        }
    }
}

fn parse_s3(url: &str, rest: &str) -> Result<ReplicaTarget, String> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(format!("replica URL {url:?}: missing bucket name"));
    }
    let (mut bucket, mut endpoint, mut force_path_style) = (host.to_string(), None, false);
    // `bucket.host:port` puts the endpoint in the host, as Litestream allows for MinIO.
    if let Some((b, h)) = host.split_once('.')
        && (h.contains(':') || h == "localhost" || h.starts_with("localhost:"))
    {
        let local = h.starts_with("localhost") || h.starts_with("127.") || h.starts_with("[::1]");
        bucket = b.to_string();
        endpoint = Some(format!("{}://{h}", if local { "http" } else { "https" }));
        force_path_style = true;
    }
    let mut region = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "endpoint" => endpoint = Some(v.to_string()),
            "region" => region = Some(v.to_string()),
            "forcePathStyle" => force_path_style = v != "false",
            "skipVerify" => {}
            other => {
                return Err(format!(
                    "replica URL {url:?}: unknown query parameter {other:?}"
                ));
            }
        }
    }
    let valid = bucket.len() >= 3
        && bucket.len() <= 63
        && bucket
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    if !valid {
        return Err(format!(
            "replica URL {url:?}: invalid bucket name {bucket:?} (3-63 characters: a-z, 0-9, '-', '.')"
        ));
    }
    Ok(ReplicaTarget::S3 {
        bucket,
        path: path.trim_matches('/').to_string(),
        endpoint,
        region,
        force_path_style,
    })
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
                force_path_style: true
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
}
