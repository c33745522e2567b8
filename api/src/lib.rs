//! Types of gatepass's Vault-compatible API and an HTTPS client for it, with
//! the server's CA pinned.

#[cfg(feature = "docs")]
pub mod docs;
pub mod hosts;
pub mod lenient;
pub mod pam;
pub mod recording;
pub mod ssh;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Vault's success envelope.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub request_id: String,
    #[serde(default)]
    pub lease_id: String,
    #[serde(default)]
    pub renewable: bool,
    #[serde(default)]
    pub lease_duration: i64,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
    #[serde(default)]
    pub auth: Option<Auth>,
    /// Set when the response was wrapped (`X-Vault-Wrap-TTL`): `data` and
    /// `auth` are then empty, and the response is unwrapped with the token.
    #[serde(default)]
    pub wrap_info: Option<WrapInfo>,
}

/// An envelope's `wrap_info`: the single-use token holding a wrapped
/// response (`sys/wrapping/unwrap`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrapInfo {
    pub token: String,
    #[serde(default)]
    pub accessor: String,
    /// Seconds the token lives from `creation_time`.
    #[serde(default)]
    pub ttl: i64,
    /// RFC 3339.
    #[serde(default)]
    pub creation_time: String,
    /// The request path whose response is wrapped.
    #[serde(default)]
    pub creation_path: String,
    /// The accessor of the token or AppRole secret ID wrapped, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_accessor: Option<String>,
}

/// An envelope's `data` as a response type of [`ssh`], [`hosts`] or [`pam`]; None
/// when the answer has no `data` or it is not of that shape.
pub fn data_of<T: serde::de::DeserializeOwned>(envelope: &Value) -> Option<T> {
    envelope.get("data").and_then(|d| T::deserialize(d).ok())
}

/// The `auth` block of a login, a token's creation or renewal (Vault's
/// fields; those gatepass has no use for are always empty or null).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    pub client_token: String,
    #[serde(default)]
    pub accessor: String,
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub token_policies: Vec<String>,
    /// Absent when empty, as in Vault's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_policies: Option<Vec<String>>,
    /// The token's metadata (and the host a host token belongs to); null
    /// when there is none.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub lease_duration: i64,
    #[serde(default)]
    pub renewable: bool,
    #[serde(default)]
    pub entity_id: String,
    #[serde(default)]
    pub token_type: String,
    #[serde(default)]
    pub orphan: bool,
    #[serde(default)]
    pub mfa_requirement: Option<Value>,
    /// Uses left; 0 is unlimited.
    #[serde(default)]
    pub num_uses: i64,
}

/// `auth/token/lookup-self`, `lookup` and `lookup-accessor`: a token as
/// Vault describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub accessor: String,
    /// Unix time.
    pub creation_time: i64,
    pub creation_ttl: i64,
    pub display_name: String,
    pub entity_id: String,
    /// RFC 3339; null for a token that never expires.
    pub expire_time: Option<String>,
    pub explicit_max_ttl: i64,
    /// The token itself when the caller presented it, else empty.
    pub id: String,
    /// RFC 3339.
    pub issue_time: String,
    pub meta: Option<BTreeMap<String, String>>,
    pub num_uses: i64,
    pub orphan: bool,
    pub path: String,
    pub policies: Vec<String>,
    pub renewable: bool,
    pub ttl: i64,
    #[serde(rename = "type")]
    pub token_type: String,
    /// Shown only when set, as Vault does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bound_cidrs: Vec<String>,
    /// A periodic token's period, seconds: each renewal gives it this TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<i64>,
    /// The token role it was made through (`auth/token/create/<role>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("cannot reach {addr}: {source}")]
    Transport {
        addr: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{status}: {}", if .errors.is_empty() { "(no details)".to_string() } else { .errors.join("; ") })]
    Api { status: u16, errors: Vec<String> },
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the server is and how to trust and authenticate to it. Read from
/// GATEPASS_* variables, falling back to Vault's VAULT_* names.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub addr: String,
    pub token: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub timeout: Option<Duration>,
}

fn env2(a: &str, b: &str) -> Option<String> {
    std::env::var(a)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| std::env::var(b).ok().filter(|v| !v.is_empty()))
}

impl Settings {
    pub fn from_env() -> Settings {
        Settings {
            addr: env2("GATEPASS_ADDR", "VAULT_ADDR")
                .unwrap_or_else(|| "https://127.0.0.1:8200".into()),
            token: env2("GATEPASS_TOKEN", "VAULT_TOKEN"),
            ca_cert: env2("GATEPASS_CACERT", "VAULT_CACERT").map(PathBuf::from),
            timeout: None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    addr: String,
    token: Option<String>,
    /// The pinned CA, if any, for [`Client::upgrade`]'s own client.
    ca: Option<Vec<reqwest::Certificate>>,
    /// Sent as `X-Vault-Wrap-TTL`: the server answers with a wrapping
    /// token in `wrap_info` instead of the response.
    wrap_ttl: Option<String>,
}

/// Loads PEM certificates to trust.
pub fn load_ca(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).map_err(|e| {
        Error::Config(format!(
            "cannot read CA certificate {}: {e}",
            path.display()
        ))
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| Error::Config(format!("{}: not a PEM certificate: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{}: no certificate in file",
            path.display()
        )));
    }
    Ok(certs)
}

impl Client {
    pub fn new(s: &Settings) -> Result<Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let addr = s.addr.trim_end_matches('/').to_string();
        if !(addr.starts_with("https://") || addr.starts_with("http://")) {
            return Err(Error::Config(format!(
                "server address {addr:?} must start with https:// (or http:// for a local proxy)"
            )));
        }
        let ca = s.ca_cert.as_deref().map(load_ca).transpose()?;
        let b = reqwest::Client::builder().timeout(s.timeout.unwrap_or(Duration::from_secs(60)));
        let http = with_trust(b, ca.as_deref())?;
        Ok(Client {
            http,
            addr,
            token: s.token.clone(),
            ca,
            wrap_ttl: None,
        })
    }

    /// `POST /v1/<path>` asking to switch to `protocol` (`Connection:
    /// Upgrade`, over HTTP/1.1): the connection, once the server answered
    /// `101 Switching Protocols`. No timeout applies after that.
    pub async fn upgrade(&self, path: &str, protocol: &str) -> Result<reqwest::Upgraded> {
        let http = with_trust(reqwest::Client::builder().http1_only(), self.ca.as_deref())?;
        let mut rb = http
            .post(self.url(path))
            .header(reqwest::header::CONNECTION, "Upgrade")
            .header(reqwest::header::UPGRADE, protocol);
        if let Some(t) = &self.token {
            rb = rb.header("X-Vault-Token", t);
        }
        let transport = |source| Error::Transport {
            addr: self.addr.clone(),
            source,
        };
        let resp = rb.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        if status != 101 {
            let text = resp.text().await.map_err(transport)?;
            let errors = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| b.errors)
                .unwrap_or_else(|_| vec![text.trim().to_string()]);
            return Err(Error::Api { status, errors });
        }
        resp.upgrade().await.map_err(transport)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Asks for every later response to be wrapped for this long (duration
    /// text such as "5m", or seconds); None stops wrapping.
    pub fn set_wrap_ttl(&mut self, ttl: Option<String>) {
        self.wrap_ttl = ttl;
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Sends one request; `Ok(None)` for 204 and for 404 with no errors
    /// (Vault's "nothing here").
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Map<String, Value>>,
    ) -> Result<Option<Value>> {
        let m = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| Error::Config(format!("bad method {method}")))?;
        let mut rb = self.http.request(m, self.url(path));
        if let Some(t) = &self.token {
            rb = rb.header("X-Vault-Token", t);
        }
        if let Some(t) = &self.wrap_ttl {
            rb = rb.header("X-Vault-Wrap-TTL", t);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let (status, text) = self.send(rb).await?;
        if status == 204 {
            return Ok(None);
        }
        if status >= 400 {
            let errors = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| b.errors)
                .unwrap_or_else(|_| vec![text.trim().to_string()]);
            if status == 404 && errors.is_empty() {
                return Ok(None);
            }
            return Err(Error::Api { status, errors });
        }
        if text.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Decode(e.to_string()))
    }

    pub async fn read(&self, path: &str) -> Result<Option<Envelope>> {
        self.request("GET", path, None)
            .await?
            .map(to_env)
            .transpose()
    }

    pub async fn write(&self, path: &str, body: &Map<String, Value>) -> Result<Option<Envelope>> {
        self.request("POST", path, Some(body))
            .await?
            .map(to_env)
            .transpose()
    }

    pub async fn list(&self, path: &str) -> Result<Vec<String>> {
        let env = self
            .request("LIST", path, None)
            .await?
            .map(to_env)
            .transpose()?;
        Ok(env
            .and_then(|e| e.data)
            .and_then(|d| d.get("keys").cloned())
            .and_then(|k| serde_json::from_value(k).ok())
            .unwrap_or_default())
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        self.request("DELETE", path, None).await.map(|_| ())
    }

    /// Sends a request: its status and its body's text.
    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<(u16, String)> {
        let transport = |source| Error::Transport {
            addr: self.addr.clone(),
            source,
        };
        let resp = rb.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(transport)?;
        Ok((status, text))
    }

    /// Raw text of an unauthenticated or non-JSON endpoint.
    pub async fn get_text(&self, path: &str) -> Result<String> {
        let (status, text) = self.send(self.http.get(self.url(path))).await?;
        if status >= 400 {
            return Err(Error::Api {
                status,
                errors: vec![text],
            });
        }
        Ok(text)
    }
}

/// A client that trusts only `ca` if given (the server is pinned),
/// otherwise the system's trusted CAs.
fn with_trust(
    b: reqwest::ClientBuilder,
    ca: Option<&[reqwest::Certificate]>,
) -> Result<reqwest::Client> {
    let mut b = b.use_rustls_tls().connect_timeout(Duration::from_secs(10));
    if let Some(certs) = ca {
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c.clone());
        }
    }
    b.build()
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))
}

fn to_env(v: Value) -> Result<Envelope> {
    serde_json::from_value(v).map_err(|e| Error::Decode(e.to_string()))
}
