//! The S3 replica: a [`CloudStore`] on the `object_store` crate's AmazonS3 client, for AWS S3
//! and S3-compatible servers (MinIO, Backblaze B2, DigitalOcean Spaces, s3s, moto, ...).
//! `cloud.rs` says how the seam's contract maps onto it; here are what only S3 has: its
//! credentials chain, path-style and virtual-hosted addressing, and finding a bucket's region.
//!
//! Keys: `<path>/<level %04x>/<min>-<max>.ltx`, exactly where Litestream 0.5 puts them.

use std::fmt;

use async_trait::async_trait;
use object_store::ClientOptions;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};

use crate::cloud::{self, Client, Clients, CloudStore, Connect, Service, one_line};
use crate::store::StoreErrorKind;

/// The object metadata key Litestream stores an LTX file's creation time under.
pub const METADATA_KEY_TIMESTAMP: &str = "litestream-timestamp";
/// The region used when none is configured and none can be looked up (custom endpoints).
pub const DEFAULT_REGION: &str = "us-east-1";

/// S3 as a [`Service`].
pub const SERVICE: Service = Service {
    scheme: "s3",
    container_word: "bucket",
    timestamp_key: METADATA_KEY_TIMESTAMP,
    home_suffix: ".amazonaws.com",
    cas_by_generation: false,
};

/// An access key pair. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Where the pair came from (`config`, `LITESTREAM_*`, ...), for messages.
    pub source: &'static str,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// Environment variable pairs tried, in order, when the configuration gives no keys. After
/// them the AWS chain applies (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, session tokens,
/// web identity, container and instance credentials).
pub const CREDENTIAL_ENV_PAIRS: [(&str, &str); 3] = [
    ("LITESTREAM_ACCESS_KEY_ID", "LITESTREAM_SECRET_ACCESS_KEY"),
    ("SLUICE_ACCESS_KEY_ID", "SLUICE_SECRET_ACCESS_KEY"),
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
];

/// Picks the static credentials: the configuration's pair, then each pair of
/// [`CREDENTIAL_ENV_PAIRS`]. `Ok(None)` leaves the AWS chain (tokens, roles, instance profile)
/// to the client. Half a pair is an error naming the missing half.
pub fn resolve_credentials(
    config_key_id: Option<&str>,
    config_secret: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<S3Credentials>, String> {
    let set = |v: Option<String>| v.filter(|s| !s.is_empty());
    match (
        set(config_key_id.map(str::to_string)),
        set(config_secret.map(str::to_string)),
    ) {
        (Some(access_key_id), Some(secret_access_key)) => {
            return Ok(Some(S3Credentials {
                access_key_id,
                secret_access_key,
                source: "config",
            }));
        }
        (Some(_), None) => {
            return Err("access-key-id is set but secret-access-key is not".into());
        }
        (None, Some(_)) => {
            return Err("secret-access-key is set but access-key-id is not".into());
        }
        (None, None) => {}
    }
    for (id_var, secret_var) in CREDENTIAL_ENV_PAIRS {
        match (set(env(id_var)), set(env(secret_var))) {
            (Some(access_key_id), Some(secret_access_key)) => {
                return Ok(Some(S3Credentials {
                    access_key_id,
                    secret_access_key,
                    source: id_var.split('_').next().unwrap_or("environment"),
                }));
            }
            (Some(_), None) => return Err(format!("{id_var} is set but {secret_var} is not")),
            (None, Some(_)) => return Err(format!("{secret_var} is set but {id_var} is not")),
            (None, None) => {}
        }
    }
    Ok(None)
}

/// Everything needed to reach one S3 replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// The replica's path inside the bucket, without leading or trailing `/`.
    pub path: String,
    /// `http(s)://host[:port]` of an S3-compatible server; `None` for AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted
    /// (`bucket.endpoint/key`).
    pub force_path_style: bool,
    /// Accept any TLS certificate (self-signed test servers).
    pub skip_verify: bool,
    /// `None`: the AWS credential chain.
    pub credentials: Option<S3Credentials>,
}

/// AWS_* variables handed to the client when no static keys were found: the rest of the AWS
/// credential chain. Endpoint and addressing variables are left out on purpose: the replica's
/// URL and configuration decide those.
const AWS_CHAIN_VARS: [&str; 10] = [
    "AWS_SESSION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_METADATA_ENDPOINT",
    "AWS_IMDSV1_FALLBACK",
];

/// Builds the store. Makes no request: a wrong key or a missing bucket shows at the first
/// operation (`sluice replicate` lists the replica before it starts, so it refuses at once).
pub fn open(cfg: S3Config) -> Result<CloudStore, String> {
    let S3Config {
        bucket,
        path,
        endpoint,
        region,
        force_path_style,
        skip_verify,
        credentials,
    } = cfg;
    let label = format!("s3://{bucket}/{path}");
    let region = region
        .filter(|r| !r.is_empty())
        .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
        .or_else(|| {
            std::env::var("AWS_DEFAULT_REGION")
                .ok()
                .filter(|r| !r.is_empty())
        });
    // AWS without a configured region: ask AWS where the bucket lives, at first use.
    let lookup_region = region.is_none() && endpoint.is_none();
    let region = region.unwrap_or_else(|| DEFAULT_REGION.to_string());
    let allow_http = endpoint
        .as_deref()
        .is_some_and(|ep| ep.starts_with("http://"));
    let options = cloud::client_options(skip_verify, allow_http);
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&bucket)
        .with_region(&region)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(cloud::retry_config());
    let endpoint_label = match &endpoint {
        Some(ep) => {
            let (scheme, host) = ep.split_once("://").ok_or_else(|| {
                format!("{label}: endpoint {ep:?} needs a scheme (http:// or https://)")
            })?;
            if force_path_style {
                builder = builder.with_endpoint(ep.trim_end_matches('/'));
            } else {
                // Virtual-hosted style: the client expects the bucket in the endpoint.
                builder = builder
                    .with_endpoint(format!(
                        "{scheme}://{bucket}.{}",
                        host.trim_end_matches('/')
                    ))
                    .with_virtual_hosted_style_request(true);
            }
            ep.trim_end_matches('/').to_string()
        }
        None => {
            // AWS: virtual-hosted unless the bucket name has dots (TLS wildcards cover one
            // label) or path style is asked for.
            let virtual_hosted = !force_path_style && !bucket.contains('.');
            builder = builder.with_virtual_hosted_style_request(virtual_hosted);
            if lookup_region {
                "https://s3.amazonaws.com".to_string()
            } else {
                format!("https://s3.{region}.amazonaws.com")
            }
        }
    };
    match credentials {
        Some(c) => {
            builder = builder
                .with_access_key_id(c.access_key_id)
                .with_secret_access_key(c.secret_access_key);
        }
        None if endpoint.is_some() => {
            // The instance-metadata chain only makes sense on AWS; asking it for a
            // custom server's keys would just hang on a link-local address.
            return Err(format!(
                "{label}: no credentials for endpoint {endpoint_label}: set access-key-id and secret-access-key in the configuration, or LITESTREAM_ACCESS_KEY_ID and LITESTREAM_SECRET_ACCESS_KEY (or SLUICE_* or AWS_*) in the environment"
            ));
        }
        None => {
            for var in AWS_CHAIN_VARS {
                if let Ok(value) = std::env::var(var)
                    && let Ok(key) = var.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
                {
                    builder = builder.with_config(key, value);
                }
            }
        }
    }
    // Built now even when the region is still to be looked up, so a bad setting shows
    // before any request.
    let clients = build_clients(&builder, &options)
        .map_err(|e| format!("{label}: cannot configure the S3 client: {e}"))?;
    let client = if lookup_region {
        Client::Lazy(Box::new(RegionLookup {
            bucket: bucket.clone(),
            builder,
            options,
        }))
    } else {
        Client::Ready(clients)
    };
    Ok(CloudStore::new(
        SERVICE,
        bucket,
        path,
        endpoint_label,
        client,
    ))
}

/// The client of an AWS bucket whose region is not configured: found at first use.
struct RegionLookup {
    bucket: String,
    builder: AmazonS3Builder,
    options: ClientOptions,
}

#[async_trait]
impl Connect for RegionLookup {
    async fn connect(&self) -> Result<Clients, (StoreErrorKind, String)> {
        let region = object_store::aws::resolve_bucket_region(&self.bucket, &self.options)
            .await
            .map_err(|e| {
                let text = one_line(&e.to_string());
                let kind = if text.contains("not found") {
                    StoreErrorKind::Permanent
                } else {
                    StoreErrorKind::Transient
                };
                (
                    kind,
                    format!(
                        "cannot find the region of bucket {:?} on AWS: {text} (set region)",
                        self.bucket
                    ),
                )
            })?;
        tracing::info!(bucket = %self.bucket, %region, "found the bucket's region");
        build_clients(&self.builder.clone().with_region(region), &self.options).map_err(|e| {
            (
                StoreErrorKind::Permanent,
                format!("cannot configure the S3 client: {e}"),
            )
        })
    }
}

/// The client of `builder` with `options`, and its twin that completes multipart uploads.
fn build_clients(
    builder: &AmazonS3Builder,
    options: &ClientOptions,
) -> object_store::Result<Clients> {
    let client = builder
        .clone()
        .with_client_options(options.clone())
        .build()?;
    let completion = builder
        .clone()
        .with_client_options(cloud::completion_options(options.clone()))
        .build()?;
    Ok(Clients::with_completion(client, completion))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectStore as _;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn credentials_come_from_config_then_litestream_sluice_and_aws_variables() {
        let all = env_of(&[
            ("LITESTREAM_ACCESS_KEY_ID", "lk"),
            ("LITESTREAM_SECRET_ACCESS_KEY", "ls"),
            ("SLUICE_ACCESS_KEY_ID", "sk"),
            ("SLUICE_SECRET_ACCESS_KEY", "ss"),
            ("AWS_ACCESS_KEY_ID", "ak"),
            ("AWS_SECRET_ACCESS_KEY", "as"),
        ]);
        let c = resolve_credentials(Some("ck"), Some("cs"), &all)
            .expect("valid")
            .expect("found");
        assert_eq!((c.access_key_id.as_str(), c.source), ("ck", "config"));
        let c = resolve_credentials(None, None, &all)
            .expect("valid")
            .expect("found");
        assert_eq!((c.access_key_id.as_str(), c.source), ("lk", "LITESTREAM"));
        let sluice_aws = env_of(&[
            ("SLUICE_ACCESS_KEY_ID", "sk"),
            ("SLUICE_SECRET_ACCESS_KEY", "ss"),
            ("AWS_ACCESS_KEY_ID", "ak"),
            ("AWS_SECRET_ACCESS_KEY", "as"),
        ]);
        let c = resolve_credentials(None, None, &sluice_aws)
            .expect("valid")
            .expect("found");
        assert_eq!(c.access_key_id, "sk");
        let aws = env_of(&[("AWS_ACCESS_KEY_ID", "ak"), ("AWS_SECRET_ACCESS_KEY", "as")]);
        let c = resolve_credentials(None, None, &aws)
            .expect("valid")
            .expect("found");
        assert_eq!(c.access_key_id, "ak");
        assert_eq!(resolve_credentials(None, None, env_of(&[])), Ok(None));
    }

    #[test]
    fn half_a_key_pair_is_refused_naming_the_missing_half() {
        let err = resolve_credentials(Some("k"), None, env_of(&[])).expect_err("half");
        assert!(err.contains("secret-access-key"), "{err}");
        let err = resolve_credentials(None, None, env_of(&[("LITESTREAM_ACCESS_KEY_ID", "k")]))
            .expect_err("half");
        assert!(err.contains("LITESTREAM_SECRET_ACCESS_KEY"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let c = S3Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI".into(),
            source: "config",
        };
        let cfg = S3Config {
            bucket: "bkt".into(),
            path: "db".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            region: None,
            force_path_style: true,
            skip_verify: false,
            credentials: Some(c),
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        let store = open(cfg).expect("builds without a request");
        let shown = format!("{store:?} {}", store.describe());
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert_eq!(
            store.describe(),
            "s3://bkt/db (endpoint http://127.0.0.1:9)"
        );
    }

    #[test]
    fn custom_endpoint_without_credentials_is_refused_before_any_request() {
        let err = open(S3Config {
            bucket: "bkt".into(),
            path: "db".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            region: None,
            force_path_style: true,
            skip_verify: false,
            credentials: None,
        })
        .expect_err("no keys");
        assert!(err.contains("no credentials"), "{err}");
    }
}
