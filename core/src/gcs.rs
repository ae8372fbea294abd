//! The Google Cloud Storage replica: a [`CloudStore`] on the `object_store` crate's GCS client.
//! `cloud.rs` says how the seam's contract maps onto it; here is what only GCS has.
//!
//! Litestream 0.5's `gs` replica: URL `gs://bucket/path`, keys `bucket` and `path`, the file
//! replica's layout (`<path>/ltx/<level>/<min>-<max>.ltx`) and the timestamp metadata
//! `litestream-timestamp`. Credentials: `GOOGLE_APPLICATION_CREDENTIALS` (a service account or
//! authorized-user file), else the instance's metadata server, as Google's clients do. An
//! emulator is reached through `endpoint` or `STORAGE_EMULATOR_HOST` (the variable Google's Go
//! client, and so Litestream, honours), without credentials.
//!
//! Conditional writes: GCS compares the object's generation (`x-goog-if-generation-match`),
//! atomically, so the lease fences writers on GCS. No emulator on the registries serves this
//! client (see `tests/common/gcs.rs`), so CI runs the GCS cases only where a server is named.

use std::sync::Arc;

use object_store::StaticCredentialProvider;
use object_store::gcp::{GcpCredential, GoogleCloudStorageBuilder};

use crate::cloud::{self, Client, Clients, CloudStore, Service};

/// GCS as a [`Service`].
pub const SERVICE: Service = Service {
    scheme: "gs",
    container_word: "bucket",
    timestamp_key: crate::s3::METADATA_KEY_TIMESTAMP,
    home_suffix: "storage.googleapis.com",
    cas_by_generation: true,
};

/// The variable naming a GCS emulator (`host:port`), as Google's clients read it.
pub const EMULATOR_ENV: &str = "STORAGE_EMULATOR_HOST";

/// Everything needed to reach one GCS replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcsConfig {
    pub bucket: String,
    /// The replica's path inside the bucket, without leading or trailing `/`.
    pub path: String,
    /// `http(s)://host[:port]` of an emulator or a private endpoint; `None`: Google's.
    /// (`url.rs` fills it from `STORAGE_EMULATOR_HOST` when the replica names none.)
    pub endpoint: Option<String>,
}

/// Builds the store. Makes no request.
pub fn open(cfg: GcsConfig) -> Result<CloudStore, String> {
    let GcsConfig {
        bucket,
        path,
        endpoint,
    } = cfg;
    let label = format!("gs://{bucket}/{path}");
    let mut builder = GoogleCloudStorageBuilder::from_env()
        .with_bucket_name(&bucket)
        .with_retry(cloud::retry_config());
    let label_endpoint = match &endpoint {
        Some(e) => {
            // An emulator: no credentials to present. Skipping signatures alone is not enough:
            // the client would still fetch a bearer token from the metadata server.
            builder = builder
                .with_base_url(e)
                .with_skip_signature(true)
                .with_credentials(Arc::new(StaticCredentialProvider::new(GcpCredential {
                    bearer: String::new(),
                })));
            e.trim_end_matches('/').to_string()
        }
        None => format!("https://{}", SERVICE.home_suffix),
    };
    let allow_http = label_endpoint.starts_with("http://");
    let options = cloud::client_options(false, allow_http);
    let build = |options| {
        builder
            .clone()
            .with_client_options(options)
            .build()
            .map_err(|e| format!("{label}: cannot configure the GCS client: {e}"))
    };
    let client = build(options.clone())?;
    let completion = build(cloud::completion_options(options))?;
    Ok(CloudStore::new(
        SERVICE,
        bucket,
        path,
        label_endpoint,
        Client::Ready(Clients::with_completion(client, completion)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectStore as _;

    #[test]
    fn an_emulator_endpoint_needs_no_credentials_and_is_named() {
        let store = open(GcsConfig {
            bucket: "bkt".into(),
            path: "db".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
        })
        .expect("builds without a request");
        assert_eq!(
            store.describe(),
            "gs://bkt/db (endpoint http://127.0.0.1:9)"
        );
    }
}
