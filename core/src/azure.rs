//! The Azure Blob Storage replica: a [`CloudStore`] on the `object_store` crate's Azure client.
//! `cloud.rs` says how the seam's contract maps onto it; here is what only Azure has: the
//! account, its credentials (Litestream's order: a SAS token, then the account key, then
//! Azure's default chain) and its endpoints.
//!
//! Litestream 0.5's `abs` replica, exactly: the URL `abs://[account@]container/path`, the keys
//! `account-name`, `account-key`, `sas-token`, `endpoint`, `bucket` (the container) and `path`,
//! the variables `LITESTREAM_AZURE_ACCOUNT_KEY` and `LITESTREAM_AZURE_SAS_TOKEN`, the file
//! layout of its file replica (`<path>/ltx/<level>/<min>-<max>.ltx`) and the timestamp metadata
//! `litestreamtimestamp`.
//!
//! Conditional writes: Azure honours `If-None-Match: *` and `If-Match` on Put Blob atomically,
//! and so does Azurite, so the lease fences writers here as it does on AWS.

use std::fmt;
use std::sync::Arc;

use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};

use crate::cloud::{self, Client, Clients, CloudStore, Service};

/// The metadata key Litestream stores an LTX file's creation time under on Azure (metadata
/// names are C# identifiers there: no hyphen).
pub const METADATA_KEY_TIMESTAMP: &str = "litestreamtimestamp";

/// Azure Blob Storage as a [`Service`].
pub const SERVICE: Service = Service {
    scheme: "abs",
    container_word: "container",
    timestamp_key: METADATA_KEY_TIMESTAMP,
    home_suffix: ".blob.core.windows.net",
    cas_by_generation: false,
};

/// Variables tried, as Litestream does, when the configuration gives no secret.
pub const ACCOUNT_KEY_ENV: &str = "LITESTREAM_AZURE_ACCOUNT_KEY";
pub const SAS_TOKEN_ENV: &str = "LITESTREAM_AZURE_SAS_TOKEN";

/// How the client signs its requests. `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum AzureCredentials {
    /// A shared access signature (the query string Azure hands out, with or without `?`).
    SasToken(String),
    /// The storage account's shared key (base64).
    AccountKey(String),
    /// Azure's default chain, from `AZURE_*` variables: a service principal, workload or
    /// managed identity, the Azure CLI.
    Chain,
}

impl fmt::Debug for AzureCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AzureCredentials::SasToken(_) => "SasToken(<redacted>)",
            AzureCredentials::AccountKey(_) => "AccountKey(<redacted>)",
            AzureCredentials::Chain => "Chain",
        })
    }
}

/// Picks the credentials as Litestream does: a SAS token (configuration, then
/// [`SAS_TOKEN_ENV`]), then an account key (configuration, then [`ACCOUNT_KEY_ENV`]), then
/// the default chain.
pub fn resolve_credentials(
    sas_token: Option<&str>,
    account_key: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> AzureCredentials {
    let set = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    if let Some(t) = set(sas_token.map(str::to_string)).or_else(|| set(env(SAS_TOKEN_ENV))) {
        return AzureCredentials::SasToken(t.trim().trim_start_matches('?').to_string());
    }
    if let Some(k) = set(account_key.map(str::to_string)).or_else(|| set(env(ACCOUNT_KEY_ENV))) {
        return AzureCredentials::AccountKey(k.trim().to_string());
    }
    AzureCredentials::Chain
}

/// Everything needed to reach one Azure replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureConfig {
    pub account: String,
    pub container: String,
    /// The replica's path inside the container, without leading or trailing `/`.
    pub path: String,
    /// The account's blob endpoint, e.g. `http://127.0.0.1:10000/devstoreaccount1` (Azurite);
    /// `None`: `https://<account>.blob.core.windows.net`.
    pub endpoint: Option<String>,
    pub credentials: AzureCredentials,
}

/// Builds the store. Makes no request: a wrong key or a missing container shows at the first
/// operation.
pub fn open(cfg: AzureConfig) -> Result<CloudStore, String> {
    let AzureConfig {
        account,
        container,
        path,
        endpoint,
        credentials,
    } = cfg;
    let label = format!("abs://{account}@{container}/{path}");
    let endpoint = endpoint
        .map(|e| e.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("https://{account}{}", SERVICE.home_suffix));
    let custom = !endpoint.ends_with(SERVICE.home_suffix);
    if credentials == AzureCredentials::Chain
        && custom
        && !std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("AZURE_"))
    {
        // Managed identities answer on Azure only; anywhere else requests would go unsigned
        // and fail with a bare 403.
        return Err(format!(
            "{label}: no credentials for endpoint {endpoint}: set account-key or sas-token in the configuration, or {ACCOUNT_KEY_ENV} or {SAS_TOKEN_ENV} in the environment"
        ));
    }
    let mut builder = match &credentials {
        // Only the chain reads AZURE_*: explicit secrets are not mixed with the environment's.
        AzureCredentials::Chain => MicrosoftAzureBuilder::from_env(),
        _ => MicrosoftAzureBuilder::new(),
    };
    builder = builder
        .with_use_emulator(false)
        .with_account(&account)
        .with_container_name(&container)
        .with_endpoint(endpoint.clone())
        .with_retry(cloud::retry_config())
        .with_client_options(cloud::client_options(
            false,
            endpoint.starts_with("http://"),
        ));
    builder = match credentials {
        AzureCredentials::SasToken(t) => builder.with_config(AzureConfigKey::SasKey, t),
        AzureCredentials::AccountKey(k) => builder.with_access_key(k),
        AzureCredentials::Chain => builder,
    };
    let client = builder
        .build()
        .map_err(|e| format!("{label}: cannot configure the Azure client: {e}"))?;
    Ok(CloudStore::new(
        SERVICE,
        container,
        path,
        endpoint,
        Client::Ready(Clients::single(Arc::new(client))),
    ))
}

/// Azure's container naming rules: 3-63 characters of a-z, 0-9 and '-', starting and ending
/// with a letter or digit, no two '-' in a row.
pub fn check_container(name: &str) -> Result<(), String> {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let valid = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.contains("--")
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid container name {name:?} (3-63 characters: a-z, 0-9, '-', starting and ending with a letter or digit, no \"--\")"
        ))
    }
}

/// Azure account names: 3-24 lowercase letters and digits.
pub fn check_account(name: &str) -> Result<(), String> {
    let valid = (3..=24).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid storage account name {name:?} (3-24 characters: a-z, 0-9)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectStore as _;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn credentials_in_litestreams_order() {
        let both = env_of(&[(SAS_TOKEN_ENV, "?sv=env"), (ACCOUNT_KEY_ENV, "a2V5")]);
        assert_eq!(
            resolve_credentials(Some("sv=cfg"), Some("k"), &both),
            AzureCredentials::SasToken("sv=cfg".into())
        );
        assert_eq!(
            resolve_credentials(None, Some("k"), &both),
            AzureCredentials::SasToken("sv=env".into()),
            "a SAS token anywhere wins over a key, and its leading ? goes"
        );
        let key_only = env_of(&[(ACCOUNT_KEY_ENV, "a2V5")]);
        assert_eq!(
            resolve_credentials(None, None, &key_only),
            AzureCredentials::AccountKey("a2V5".into())
        );
        assert_eq!(
            resolve_credentials(None, Some(" "), env_of(&[])),
            AzureCredentials::Chain
        );
    }

    #[test]
    fn secrets_never_show() {
        let cfg = AzureConfig {
            account: "acct".into(),
            container: "cnt".into(),
            path: "db".into(),
            endpoint: Some("http://127.0.0.1:9/acct/".into()),
            credentials: AzureCredentials::AccountKey("c2VjcmV0c2VjcmV0".into()),
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("c2VjcmV0c2VjcmV0"), "{shown}");
        let store = open(cfg).expect("builds without a request");
        let shown = format!("{store:?} {}", store.describe());
        assert!(!shown.contains("c2VjcmV0c2VjcmV0"), "{shown}");
        assert_eq!(
            store.describe(),
            "abs://cnt/db (endpoint http://127.0.0.1:9/acct)"
        );
        let home = open(AzureConfig {
            account: "acct".into(),
            container: "cnt".into(),
            path: "a/db".into(),
            endpoint: None,
            credentials: AzureCredentials::SasToken("sv=1&sig=x".into()),
        })
        .expect("builds");
        assert_eq!(home.describe(), "abs://cnt/a/db");
    }

    #[test]
    fn names_follow_azures_rules() {
        for ok in ["abc", "my-container-1", &"a".repeat(63)] {
            assert_eq!(check_container(ok), Ok(()), "{ok}");
        }
        for bad in ["ab", "-abc", "abc-", "a--b", "ABC", "a_b", &"a".repeat(64)] {
            assert!(check_container(bad).is_err(), "{bad}");
        }
        assert_eq!(check_account("devstoreaccount1"), Ok(()));
        for bad in ["ab", "Dev", "dev-store", &"a".repeat(25)] {
            assert!(check_account(bad).is_err(), "{bad}");
        }
    }
}
