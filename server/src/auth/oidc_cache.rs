//! What the OIDC and JWT methods keep of identity providers between
//! logins: discovery documents and key sets by URL, and one HTTP client.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;

use crate::error::{Error, Result};

/// Outbound requests to the provider give up after this.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    #[serde(default)]
    pub authorization_endpoint: String,
    #[serde(default)]
    pub token_endpoint: String,
    pub jwks_uri: String,
    /// RFC 8628's endpoint, when the provider offers the device grant.
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
}

pub struct Fetched<T> {
    pub value: T,
    pub at: i64,
}

/// Discovery documents and key sets by URL, shared by every mount.
#[derive(Default)]
pub struct ProviderCache {
    pub discovery: tokio::sync::Mutex<HashMap<String, Fetched<Discovery>>>,
    pub keys: tokio::sync::Mutex<HashMap<String, Fetched<JwkSet>>>,
    client: std::sync::OnceLock<reqwest::Client>,
}

impl ProviderCache {
    pub fn client(&self) -> Result<&reqwest::Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = reqwest::Client::builder()
            .timeout(PROVIDER_TIMEOUT)
            .connect_timeout(PROVIDER_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| Error::internal(format!("HTTP client: {e}")))?;
        Ok(self.client.get_or_init(|| c))
    }
}
