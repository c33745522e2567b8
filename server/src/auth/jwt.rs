//! Vault's `oidc` and `jwt` login methods (one backend): people log in
//! through their identity provider with the authorization code flow (PKCE,
//! `state` and `nonce`), machines with a JWT their issuer signed. The
//! signature is checked by `jsonwebtoken` against the provider's JWKS
//! (from discovery or `jwks_url`, cached, fetched again on an unknown key
//! ID) or `jwt_validation_pubkeys`; `iss`, `aud`, `exp`, `nbf` and `iat`
//! against the server's clock with the role's leeways.

use std::collections::BTreeMap;

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::mounts::AuthMount;
use super::oidc_cache::{Discovery, Fetched};
use super::token;
use super::TokenSettings;
use crate::error::{Error, Result};
use crate::identity::{self, LoginMount};
use crate::request::Fields;
use crate::state::Core;

/// How long a started browser login (its `state`) may take.
const STATE_TTL: i64 = 600;
/// Browser logins in progress per mount. Anyone may start one (no token
/// is needed), so they are bounded: past this, expired ones are cleared,
/// and if that is not enough new ones wait.
const MAX_PENDING: usize = 1000;
/// Cached discovery documents and key sets are fetched again after this.
const CACHE_TTL: i64 = 3600;
/// An unknown key ID fetches the key set again, at most this often, so
/// that made-up key IDs cannot turn logins into a flood of fetches.
const REFETCH_INTERVAL: i64 = 2;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub oidc_discovery_url: String,
    #[serde(default)]
    pub oidc_client_id: String,
    /// Never shown; stored sealed like every value.
    #[serde(default)]
    pub oidc_client_secret: String,
    #[serde(default)]
    pub jwks_url: String,
    #[serde(default)]
    pub jwt_validation_pubkeys: Vec<String>,
    #[serde(default)]
    pub bound_issuer: String,
    #[serde(default)]
    pub default_role: String,
    #[serde(default)]
    pub jwt_supported_algs: Vec<String>,
}

/// Where the keys that sign tokens come from: exactly one.
enum KeySource<'a> {
    Discovery(&'a str),
    Jwks(&'a str),
    Pubkeys(&'a [String]),
}

impl Config {
    fn key_source(&self) -> Result<KeySource<'_>> {
        match (
            self.oidc_discovery_url.is_empty(),
            self.jwks_url.is_empty(),
            self.jwt_validation_pubkeys.is_empty(),
        ) {
            (false, true, true) => Ok(KeySource::Discovery(&self.oidc_discovery_url)),
            (true, false, true) => Ok(KeySource::Jwks(&self.jwks_url)),
            (true, true, false) => Ok(KeySource::Pubkeys(&self.jwt_validation_pubkeys)),
            (true, true, true) => Err(Error::invalid(
                "the method is not configured: set one of oidc_discovery_url, jwks_url or \
                 jwt_validation_pubkeys at auth/<path>/config",
            )),
            _ => Err(Error::invalid(
                "exactly one of oidc_discovery_url, jwks_url and jwt_validation_pubkeys must be set",
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleType {
    Oidc,
    Jwt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BoundClaimsType {
    String,
    Glob,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Role {
    pub role_type: RoleType,
    #[serde(default)]
    pub bound_audiences: Vec<String>,
    #[serde(default)]
    pub allowed_redirect_uris: Vec<String>,
    pub user_claim: String,
    #[serde(default)]
    pub groups_claim: String,
    #[serde(default)]
    pub bound_subject: String,
    /// Claim (name or JSON pointer) → the values it may have.
    #[serde(default)]
    pub bound_claims: BTreeMap<String, Vec<String>>,
    pub bound_claims_type: BoundClaimsType,
    /// Claim → metadata key, for the token's and the alias's metadata.
    #[serde(default)]
    pub claim_mappings: BTreeMap<String, String>,
    #[serde(default)]
    pub oidc_scopes: Vec<String>,
    pub clock_skew_leeway: i64,
    pub expiration_leeway: i64,
    pub not_before_leeway: i64,
    #[serde(flatten)]
    pub token: TokenSettings,
}

/// A browser login between `auth_url` and `callback`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pending {
    role: String,
    redirect_uri: String,
    nonce: String,
    code_verifier: String,
    client_nonce: Option<String>,
    expires: i64,
}

fn config_key(m: &AuthMount) -> String {
    format!("{}config", m.data_prefix())
}
fn role_key(m: &AuthMount, name: &str) -> String {
    format!("{}role/{name}", m.data_prefix())
}
/// A browser login is kept under its state's keyed hash: the state is
/// the credential the callback presents.
fn state_key(core: &Core, m: &AuthMount, state: &str) -> String {
    format!("{}state/{}", m.data_prefix(), core.hasher.hash(state))
}

// ---- config -----------------------------------------------------------------

pub async fn read_config(core: &Core, m: &AuthMount) -> Result<Option<Value>> {
    Ok(core.storage.get::<Config>(&config_key(m)).await?.map(|c| {
        json!({
            "oidc_discovery_url": c.oidc_discovery_url,
            "oidc_client_id": c.oidc_client_id,
            "jwks_url": c.jwks_url,
            "jwt_validation_pubkeys": c.jwt_validation_pubkeys,
            "bound_issuer": c.bound_issuer,
            "default_role": c.default_role,
            "jwt_supported_algs": c.jwt_supported_algs,
            "oidc_response_mode": "",
            "oidc_response_types": [],
            "provider_config": {},
            "namespace_in_state": false,
        })
    }))
}

pub async fn write_config(core: &Core, m: &AuthMount, f: &Fields) -> Result<()> {
    let mut c = core
        .storage
        .get::<Config>(&config_key(m))
        .await?
        .unwrap_or_default();
    let s = |k: &str, into: &mut String| -> Result<()> {
        if let Some(v) = f.str(k)? {
            *into = v.trim().to_string();
        }
        Ok(())
    };
    s("oidc_discovery_url", &mut c.oidc_discovery_url)?;
    s("oidc_client_id", &mut c.oidc_client_id)?;
    s("oidc_client_secret", &mut c.oidc_client_secret)?;
    s("jwks_url", &mut c.jwks_url)?;
    s("bound_issuer", &mut c.bound_issuer)?;
    s("default_role", &mut c.default_role)?;
    if let Some(k) = f.str_list("jwt_validation_pubkeys")? {
        c.jwt_validation_pubkeys = k;
    }
    if let Some(a) = f.str_list("jwt_supported_algs")? {
        for alg in &a {
            parse_alg(alg)?;
        }
        c.jwt_supported_algs = a;
    }
    // Vault's other settings (response mode and types, provider_config,
    // CA PEMs, namespace_in_state) are accepted and not used.
    for k in [
        "oidc_response_mode",
        "oidc_response_types",
        "provider_config",
        "oidc_discovery_ca_pem",
        "jwks_ca_pem",
        "namespace_in_state",
    ] {
        f.value(k);
    }
    if c.oidc_client_id.is_empty() != c.oidc_client_secret.is_empty() {
        return Err(Error::invalid(
            "both oidc_client_id and oidc_client_secret must be set for OIDC",
        ));
    }
    if !c.oidc_client_id.is_empty() && c.oidc_discovery_url.is_empty() {
        return Err(Error::invalid(
            "oidc_client_id and oidc_client_secret need oidc_discovery_url",
        ));
    }
    // Checked now, as Vault does, so that a typo shows at configuration
    // rather than at the first login.
    match c.key_source()? {
        KeySource::Discovery(url) => {
            let d = discovery(core, url, core.clock.now(), true).await?;
            // OpenID Connect Discovery: the document must be the issuer's
            // own (a mismatch means tokens would be checked against the
            // wrong issuer).
            if !url.contains("/.well-known/")
                && d.issuer.trim_end_matches('/') != url.trim_end_matches('/')
            {
                return Err(Error::invalid(format!(
                    "the discovery document at {url} names another issuer: {:?}",
                    d.issuer
                )));
            }
        }
        KeySource::Jwks(url) => {
            key_set(core, url, core.clock.now(), true).await?;
        }
        KeySource::Pubkeys(pems) => {
            for pem in pems {
                pem_key(pem)?;
            }
        }
    }
    core.storage.put(&config_key(m), &c).await
}

async fn config(core: &Core, m: &AuthMount) -> Result<Config> {
    core.storage
        .get::<Config>(&config_key(m))
        .await?
        .ok_or_else(|| {
            Error::invalid(format!(
                "auth/{}/ is not configured: write its config first",
                m.path
            ))
        })
}

// ---- roles ------------------------------------------------------------------

fn validate_role_name(name: &str) -> Result<String> {
    super::validate_login_name("role name", name)
}

pub async fn write_role(core: &Core, m: &AuthMount, name: &str, f: &Fields) -> Result<()> {
    let name = validate_role_name(name)?;
    let existing: Option<Role> = core.storage.get(&role_key(m, &name)).await?;
    let mut r = existing.unwrap_or(Role {
        role_type: if m.kind == "jwt" {
            RoleType::Jwt
        } else {
            RoleType::Oidc
        },
        bound_audiences: vec![],
        allowed_redirect_uris: vec![],
        user_claim: "sub".into(),
        groups_claim: String::new(),
        bound_subject: String::new(),
        bound_claims: BTreeMap::new(),
        bound_claims_type: BoundClaimsType::String,
        claim_mappings: BTreeMap::new(),
        oidc_scopes: vec![],
        clock_skew_leeway: 60,
        expiration_leeway: 150,
        not_before_leeway: 150,
        token: TokenSettings::default(),
    });
    if let Some(t) = f.choice(
        "role_type",
        &[("oidc", RoleType::Oidc), ("jwt", RoleType::Jwt)],
    )? {
        r.role_type = t;
    }
    if let Some(v) = f.str_list("bound_audiences")? {
        r.bound_audiences = v;
    }
    if let Some(v) = f.str_list("allowed_redirect_uris")? {
        for u in &v {
            reqwest::Url::parse(u)
                .map_err(|e| Error::invalid(format!("allowed_redirect_uris: {u:?}: {e}")))?;
        }
        r.allowed_redirect_uris = v;
    }
    if let Some(v) = f.str("user_claim")? {
        r.user_claim = v;
    }
    if let Some(v) = f.str("groups_claim")? {
        r.groups_claim = v;
    }
    if let Some(v) = f.str("bound_subject")? {
        r.bound_subject = v;
    }
    if let Some(v) = f.value("bound_claims") {
        r.bound_claims = bound_claims(&v)?;
    }
    if let Some(t) = f.choice(
        "bound_claims_type",
        &[
            ("string", BoundClaimsType::String),
            ("glob", BoundClaimsType::Glob),
        ],
    )? {
        r.bound_claims_type = t;
    }
    if let Some(v) = f.str_map("claim_mappings")? {
        r.claim_mappings = v;
    }
    if let Some(v) = f.str_list("oidc_scopes")? {
        r.oidc_scopes = v;
    }
    for (k, into) in [
        ("clock_skew_leeway", &mut r.clock_skew_leeway),
        ("expiration_leeway", &mut r.expiration_leeway),
        ("not_before_leeway", &mut r.not_before_leeway),
    ] {
        if let Some(v) = f.duration(k)? {
            *into = v;
        }
    }
    for k in ["verbose_oidc_logging", "max_age", "user_claim_json_pointer"] {
        f.value(k);
    }
    r.token.update_from(f)?;
    if r.user_claim.is_empty() {
        return Err(Error::invalid("user_claim must not be empty"));
    }
    if r.role_type == RoleType::Oidc && r.allowed_redirect_uris.is_empty() {
        return Err(Error::invalid(
            "allowed_redirect_uris must be set for an oidc role",
        ));
    }
    if r.role_type == RoleType::Jwt
        && r.bound_audiences.is_empty()
        && r.bound_subject.is_empty()
        && r.bound_claims.is_empty()
    {
        return Err(Error::invalid(
            "a jwt role must have at least one bound constraint: bound_audiences, \
             bound_subject or bound_claims",
        ));
    }
    core.storage.put(&role_key(m, &name), &r).await
}

/// `bound_claims`: a map of claim to a string (one value, commas and
/// all) or a list of strings.
fn bound_claims(v: &Value) -> Result<BTreeMap<String, Vec<String>>> {
    let bad = || {
        Error::invalid("bound_claims must be a map of claim names to strings or lists of strings")
    };
    let map = match v {
        Value::Object(m) => m.clone(),
        Value::String(s) if s.is_empty() => Map::new(),
        Value::String(s) => serde_json::from_str(s).map_err(|_| bad())?,
        Value::Null => Map::new(),
        _ => return Err(bad()),
    };
    map.into_iter()
        .map(|(k, v)| {
            let values = match v {
                // One value, as Vault compares it: a claim such as
                // "Acme, Inc." split at its comma would match "Acme".
                Value::String(s) => vec![s],
                Value::Array(items) => items
                    .into_iter()
                    .map(|i| match i {
                        Value::String(s) => Ok(s),
                        Value::Number(n) => Ok(n.to_string()),
                        Value::Bool(b) => Ok(b.to_string()),
                        _ => Err(bad()),
                    })
                    .collect::<Result<Vec<_>>>()?,
                Value::Number(n) => vec![n.to_string()],
                Value::Bool(b) => vec![b.to_string()],
                _ => return Err(bad()),
            };
            Ok((k, values))
        })
        .collect()
}

pub async fn read_role(core: &Core, m: &AuthMount, name: &str) -> Result<Option<Value>> {
    let name = validate_role_name(name)?;
    Ok(core
        .storage
        .get::<Role>(&role_key(m, &name))
        .await?
        .map(|r| {
            let mut out = Map::new();
            out.insert("role_type".into(), json!(r.role_type));
            out.insert("bound_audiences".into(), json!(r.bound_audiences));
            out.insert(
                "allowed_redirect_uris".into(),
                json!(r.allowed_redirect_uris),
            );
            out.insert("user_claim".into(), json!(r.user_claim));
            out.insert("groups_claim".into(), json!(r.groups_claim));
            out.insert("bound_subject".into(), json!(r.bound_subject));
            out.insert("bound_claims".into(), json!(r.bound_claims));
            out.insert("bound_claims_type".into(), json!(r.bound_claims_type));
            out.insert("claim_mappings".into(), json!(r.claim_mappings));
            out.insert("oidc_scopes".into(), json!(r.oidc_scopes));
            out.insert("clock_skew_leeway".into(), json!(r.clock_skew_leeway));
            out.insert("expiration_leeway".into(), json!(r.expiration_leeway));
            out.insert("not_before_leeway".into(), json!(r.not_before_leeway));
            r.token.to_json(&mut out);
            Value::Object(out)
        }))
}

pub async fn delete_role(core: &Core, m: &AuthMount, name: &str) -> Result<()> {
    core.storage
        .delete(&role_key(m, &validate_role_name(name)?))
        .await?;
    Ok(())
}

pub async fn list_roles(core: &Core, m: &AuthMount) -> Result<Vec<String>> {
    core.storage
        .list(&format!("{}role/", m.data_prefix()))
        .await
}

/// The role a login names, else the config's `default_role`.
async fn role_for(core: &Core, m: &AuthMount, c: &Config, f: &Fields) -> Result<(String, Role)> {
    let name = match f.str("role")?.filter(|r| !r.is_empty()) {
        Some(r) => r,
        None if !c.default_role.is_empty() => c.default_role.clone(),
        None => {
            return Err(Error::invalid(
                "missing role, and no default_role is configured",
            ))
        }
    };
    let name = validate_role_name(&name)?;
    let role = core
        .storage
        .get::<Role>(&role_key(m, &name))
        .await?
        .ok_or_else(|| Error::invalid(format!("role {name:?} could not be found")))?;
    Ok((name, role))
}

// ---- the provider: discovery and keys, cached -----------------------------

fn unreachable(what: &str, url: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!(
        "cannot fetch the identity provider's {what} from {url}: {e}"
    ))
}

async fn get_json<T: serde::de::DeserializeOwned>(core: &Core, what: &str, url: &str) -> Result<T> {
    let resp = core
        .oidc
        .client()?
        .get(url)
        .send()
        .await
        .map_err(|e| unreachable(what, url, e))?;
    if !resp.status().is_success() {
        return Err(unreachable(what, url, format!("HTTP {}", resp.status())));
    }
    resp.json::<T>()
        .await
        .map_err(|e| unreachable(what, url, format!("not a valid {what}: {e}")))
}

/// The discovery document at `url` (the issuer URL, or its
/// `.well-known/openid-configuration`).
async fn discovery(core: &Core, url: &str, now: i64, fresh: bool) -> Result<Discovery> {
    let mut cache = core.oidc.discovery.lock().await;
    if let Some(f) = cache.get(url).filter(|f| !fresh && now - f.at < CACHE_TTL) {
        return Ok(f.value.clone());
    }
    let doc_url = if url.contains("/.well-known/") {
        url.to_string()
    } else {
        format!(
            "{}/.well-known/openid-configuration",
            url.trim_end_matches('/')
        )
    };
    let d: Discovery = get_json(core, "discovery document", &doc_url).await?;
    cache.insert(
        url.to_string(),
        Fetched {
            value: d.clone(),
            at: now,
        },
    );
    Ok(d)
}

async fn key_set(core: &Core, url: &str, now: i64, fresh: bool) -> Result<JwkSet> {
    let mut cache = core.oidc.keys.lock().await;
    if let Some(f) = cache.get(url) {
        let stale = now - f.at >= CACHE_TTL;
        let may_refetch = now - f.at >= REFETCH_INTERVAL || f.at > now;
        if !(stale || (fresh && may_refetch)) {
            return Ok(f.value.clone());
        }
    }
    let set: JwkSet = get_json(core, "key set (JWKS)", url).await?;
    cache.insert(
        url.to_string(),
        Fetched {
            value: set.clone(),
            at: now,
        },
    );
    Ok(set)
}

fn parse_alg(name: &str) -> Result<Algorithm> {
    name.parse::<Algorithm>()
        .map_err(|_| Error::invalid(format!("unsupported signing algorithm {name:?}")))
}

fn pem_key(pem: &str) -> Result<Vec<DecodingKey>> {
    let b = pem.as_bytes();
    let keys: Vec<DecodingKey> = [
        DecodingKey::from_rsa_pem(b),
        DecodingKey::from_ec_pem(b),
        DecodingKey::from_ed_pem(b),
    ]
    .into_iter()
    .filter_map(|k| k.ok())
    .collect();
    if keys.is_empty() {
        return Err(Error::invalid(
            "jwt_validation_pubkeys: not a PEM-encoded RSA, EC or Ed25519 public key",
        ));
    }
    Ok(keys)
}

// ---- token validation -------------------------------------------------------

/// What a token must show besides a good signature.
struct Expect<'a> {
    issuer: Option<&'a str>,
    /// The token's `aud` must hold one of these; empty: the token must have
    /// no `aud` (Vault's rule for roles without bound audiences).
    audiences: Vec<String>,
    nonce: Option<&'a str>,
    /// For an ID token, the client it must have been issued to: its `azp`
    /// (authorized party), if it has one, must name it, and a token for
    /// several audiences must have one (OpenID Connect Core 3.1.3.7): else
    /// an ID token another client of the provider obtained for an audience
    /// list that happens to include ours would sign its holder in here.
    client_id: Option<&'a str>,
    role: &'a Role,
    now: i64,
}

/// Checks the signature, then the claims; returns the claims.
async fn validate(
    core: &Core,
    c: &Config,
    jwt: &str,
    x: &Expect<'_>,
) -> Result<Map<String, Value>> {
    let header = jsonwebtoken::decode_header(jwt)
        .map_err(|e| Error::invalid(format!("the token is not a valid JWT: {e}")))?;
    let allowed: Vec<Algorithm> = if c.jwt_supported_algs.is_empty() {
        vec![Algorithm::RS256]
            .into_iter()
            .chain([
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::ES256,
                Algorithm::ES384,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
                Algorithm::EdDSA,
            ])
            .collect()
    } else {
        c.jwt_supported_algs
            .iter()
            .map(|a| parse_alg(a))
            .collect::<Result<_>>()?
    };
    if !allowed.contains(&header.alg) {
        return Err(Error::invalid(format!(
            "the token is signed with {:?}, which this method does not accept",
            header.alg
        )));
    }
    let mut v = Validation::new(header.alg);
    // Times, issuer and audience are checked below against the server's
    // clock and Vault's rules; the crate checks the signature.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let check = |key: &DecodingKey| {
        jsonwebtoken::decode::<Map<String, Value>>(jwt, key, &v).map(|d| d.claims)
    };
    let claims = match c.key_source()? {
        KeySource::Pubkeys(pems) => {
            let mut found = None;
            for pem in pems {
                for k in pem_key(pem)? {
                    if let Ok(cl) = check(&k) {
                        found = Some(cl);
                    }
                }
            }
            found.ok_or_else(bad_signature)?
        }
        KeySource::Discovery(url) => {
            let d = discovery(core, url, x.now, false).await?;
            by_key_set(core, &d.jwks_uri, header.kid.as_deref(), x.now, &check).await?
        }
        KeySource::Jwks(url) => by_key_set(core, url, header.kid.as_deref(), x.now, &check).await?,
    };
    check_claims(&claims, x)?;
    Ok(claims)
}

fn bad_signature() -> Error {
    Error::invalid("the token's signature is not valid")
}

/// The claims of a token checked with the key set at `url`: the key its
/// `kid` names (the set is fetched again once when the key is unknown: the
/// provider may have rotated its keys), or any key when it names none.
async fn by_key_set(
    core: &Core,
    url: &str,
    kid: Option<&str>,
    now: i64,
    check: &(dyn Fn(&DecodingKey) -> jsonwebtoken::errors::Result<Map<String, Value>> + Sync),
) -> Result<Map<String, Value>> {
    let mut set = key_set(core, url, now, false).await?;
    if let Some(kid) = kid {
        if set.find(kid).is_none() {
            set = key_set(core, url, now, true).await?;
        }
        let jwk = set.find(kid).ok_or_else(|| {
            Error::invalid(format!(
                "the token is signed with key {kid:?}, which the identity provider does not publish"
            ))
        })?;
        let key = DecodingKey::from_jwk(jwk).map_err(|_| bad_signature())?;
        return check(&key).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                Error::invalid("the token's algorithm does not match its key")
            }
            _ => bad_signature(),
        });
    }
    set.keys
        .iter()
        .filter_map(|j| DecodingKey::from_jwk(j).ok())
        .find_map(|k| check(&k).ok())
        .ok_or_else(bad_signature)
}

fn num(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| Error::invalid(format!("the token's {name} claim is not a time"))),
        Some(_) => Err(Error::invalid(format!(
            "the token's {name} claim is not a time"
        ))),
    }
}

fn check_claims(claims: &Map<String, Value>, x: &Expect<'_>) -> Result<()> {
    let r = x.role;
    let skew = r.clock_skew_leeway.max(0);
    let exp =
        num(claims, "exp")?.ok_or_else(|| Error::invalid("the token has no expiry (exp claim)"))?;
    // Saturating: `num` turns a claim such as 1e19 into i64::MAX (or
    // i64::MIN), and the leeways are the administrator's; a sum that
    // overflowed would panic, or wrap a far-future nbf into the past.
    // Saturated, each comparison is the exact one: an exp past i64::MAX
    // has not expired, an nbf or iat past it is not valid yet.
    if x.now
        > exp
            .saturating_add(r.expiration_leeway.max(0))
            .saturating_add(skew)
    {
        return Err(Error::invalid("the token has expired (exp claim)"));
    }
    if let Some(nbf) = num(claims, "nbf")? {
        if x.now
            < nbf
                .saturating_sub(r.not_before_leeway.max(0))
                .saturating_sub(skew)
        {
            return Err(Error::invalid("the token is not valid yet (nbf claim)"));
        }
    }
    if let Some(iat) = num(claims, "iat")? {
        if x.now < iat.saturating_sub(skew) {
            return Err(Error::invalid(
                "the token was issued in the future (iat claim)",
            ));
        }
    }
    if let Some(iss) = x.issuer.filter(|i| !i.is_empty()) {
        if claims.get("iss").and_then(Value::as_str) != Some(iss) {
            return Err(Error::invalid(format!(
                "the token's issuer (iss claim) is not {iss:?}"
            )));
        }
    }
    let aud: Vec<&str> = match claims.get("aud") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(_) => return Err(Error::invalid("the token's aud claim is not valid")),
    };
    if x.audiences.is_empty() {
        if !aud.is_empty() {
            return Err(Error::invalid(
                "the token has an audience (aud claim) but the role binds none: set bound_audiences",
            ));
        }
    } else if !aud.iter().any(|a| x.audiences.iter().any(|b| b == a)) {
        return Err(Error::invalid(
            "the token's audience (aud claim) is not one the role accepts",
        ));
    }
    if let Some(client) = x.client_id {
        // As hashicorp/cap, which Vault's OIDC logins use, checks it.
        let azp = match claims.get("azp") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_str().unwrap_or_default()),
        };
        let ours = aud.contains(&client);
        let why = match azp {
            Some(a) if a != client => Some(format!(
                "the ID token was issued to another client (its azp claim is not {client:?})"
            )),
            _ if aud.len() > 1 && !ours => Some(format!(
                "the ID token has several audiences and none is this client {client:?}"
            )),
            None if aud.len() > 1 => {
                Some("the ID token has several audiences but no authorized party (azp claim)".into())
            }
            None if !ours => Some(format!(
                "the ID token's audience is not this client {client:?} and it names no authorized party (azp claim)"
            )),
            _ => None,
        };
        if let Some(why) = why {
            return Err(Error::invalid(why));
        }
    }
    if let Some(nonce) = x.nonce {
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(Error::invalid(
                "the ID token's nonce does not match this login's",
            ));
        }
    }
    if !r.bound_subject.is_empty()
        && claims.get("sub").and_then(Value::as_str) != Some(r.bound_subject.as_str())
    {
        return Err(Error::invalid(
            "the token's sub claim does not match bound_subject",
        ));
    }
    for (name, wanted) in &r.bound_claims {
        let values = claim_texts(claim(claims, name));
        let ok = values.iter().any(|v| {
            wanted.iter().any(|w| match r.bound_claims_type {
                BoundClaimsType::String => w == v,
                BoundClaimsType::Glob => glob(w, v),
            })
        });
        if !ok {
            return Err(Error::invalid(format!(
                "claim {name:?} does not match any associated bound claim values"
            )));
        }
    }
    Ok(())
}

/// A claim by name, or by JSON pointer (`/a/b`), as Vault reads them.
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let Some(pointer) = name.strip_prefix('/') else {
        return claims.get(name);
    };
    let mut parts = pointer
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"));
    let mut cur = claims.get(&parts.next()?)?;
    for part in parts {
        cur = match cur {
            Value::Object(m) => m.get(&part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// A claim's value as text: a string, number or boolean, or each of a
/// list's.
fn claim_texts(v: Option<&Value>) -> Vec<String> {
    let one = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(one).collect(),
        Some(v) => one(v).into_iter().collect(),
        None => vec![],
    }
}

/// Vault's bound-claim globs: `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text.ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    // Both ends are where a prefix and a suffix of `text` end and begin,
    // so on character boundaries (the claim is the token holder's text).
    let Some(mut rest) = text.get(first.len()..text.len() - last.len()) else {
        return false;
    };
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

// ---- logins -----------------------------------------------------------------

/// The token for a person or machine whose token checked out.
async fn login_with_claims(
    core: &Core,
    m: &AuthMount,
    role_name: &str,
    r: &Role,
    claims: &Map<String, Value>,
    now: i64,
) -> Result<token::Issued> {
    let user = claim_texts(claim(claims, &r.user_claim))
        .into_iter()
        .next()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Error::invalid(format!(
                "claim {:?} (the role's user_claim) not found in token",
                r.user_claim
            ))
        })?;
    let groups = if r.groups_claim.is_empty() {
        vec![]
    } else {
        match claim(claims, &r.groups_claim) {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(_) | Value::String(_)) => claim_texts(claim(claims, &r.groups_claim)),
            Some(_) => {
                return Err(Error::invalid(format!(
                    "claim {:?} (the role's groups_claim) is not a list of strings",
                    r.groups_claim
                )))
            }
        }
    };
    let mut metadata = BTreeMap::new();
    for (claim_name, key) in &r.claim_mappings {
        if let Some(v) = claim_texts(claim(claims, claim_name)).into_iter().next() {
            metadata.insert(key.clone(), v);
        }
    }
    let entity = identity::entity_for_login(
        core,
        LoginMount {
            accessor: &m.accessor,
            path: &m.path,
            kind: &m.kind,
        },
        &user,
        &metadata,
        now,
    )
    .await?;
    let mut spec = r.token.new_token(
        format!("{}-{}", m.path.replace('/', "-"), user),
        ("role", role_name),
        format!("auth/{}/login", m.path),
        // JWT and OIDC mounts are not tuned here: the server's defaults,
        // which the role's `token_max_ttl` lowers.
        crate::tune::TtlLimits::default(),
    );
    for (k, v) in &metadata {
        // The keys gatepass reads itself, and the role's, stay the server's.
        if !token::RESERVED_META.contains(&k.as_str()) && k != "role" {
            spec.meta.insert(k.clone(), v.clone());
        }
    }
    spec.policies
        .extend(identity::group_policies(core, &m.accessor, &groups).await?);
    spec.policies.extend(entity.policies.iter().cloned());
    spec.entity_id = Some(entity.id.clone());
    token::create_for_login(core, spec, now).await
}

/// `auth/<path>/login`: a JWT for a `jwt` role.
pub async fn login(core: &Core, m: &AuthMount, f: &Fields, now: i64) -> Result<token::Issued> {
    let c = config(core, m).await?;
    let (name, r) = role_for(core, m, &c, f).await?;
    let jwt = f.required_str("jwt")?;
    if r.role_type != RoleType::Jwt {
        return Err(Error::invalid(format!(
            "role {name:?} is an oidc role: log in through auth/{}/oidc/auth_url",
            m.path
        )));
    }
    let issuer = match c.key_source()? {
        KeySource::Discovery(url) if c.bound_issuer.is_empty() => {
            Some(discovery(core, url, now, false).await?.issuer)
        }
        _ => Some(c.bound_issuer.clone()),
    };
    let claims = validate(
        core,
        &c,
        &jwt,
        &Expect {
            issuer: issuer.as_deref(),
            audiences: r.bound_audiences.clone(),
            nonce: None,
            client_id: None,
            role: &r,
            now,
        },
    )
    .await?;
    login_with_claims(core, m, &name, &r, &claims, now).await
}

/// Whether a redirect URI is one of the role's: exactly, or, for loopback
/// addresses, with any port (RFC 8252: native apps listen on a port of
/// their choosing), as Vault allows.
fn redirect_allowed(r: &Role, uri: &str) -> bool {
    if r.allowed_redirect_uris.iter().any(|a| a == uri) {
        return true;
    }
    let Ok(u) = reqwest::Url::parse(uri) else {
        return false;
    };
    let loopback = |u: &reqwest::Url| {
        matches!(
            u.host_str(),
            Some("127.0.0.1" | "[::1]" | "::1" | "localhost")
        )
    };
    loopback(&u)
        && r.allowed_redirect_uris.iter().any(|a| {
            reqwest::Url::parse(a).is_ok_and(|a| {
                loopback(&a)
                    && a.scheme() == u.scheme()
                    && a.host_str() == u.host_str()
                    && a.path() == u.path()
                    && a.query() == u.query()
            })
        })
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `auth/<path>/oidc/auth_url`: starts a browser login.
pub async fn auth_url(core: &Core, m: &AuthMount, f: &Fields, now: i64) -> Result<Value> {
    let c = config(core, m).await?;
    let (name, r) = role_for(core, m, &c, f).await?;
    let redirect_uri = f.required_str("redirect_uri")?;
    let client_nonce = f.str("client_nonce")?.filter(|n| !n.is_empty());
    if r.role_type != RoleType::Oidc {
        return Err(Error::invalid(format!(
            "role {name:?} is a jwt role: log in through auth/{}/login",
            m.path
        )));
    }
    if !redirect_allowed(&r, &redirect_uri) {
        return Err(Error::invalid(format!(
            "unauthorized redirect_uri: {redirect_uri}"
        )));
    }
    let KeySource::Discovery(url) = c.key_source()? else {
        return Err(Error::invalid(
            "OIDC logins need oidc_discovery_url in the config",
        ));
    };
    if c.oidc_client_id.is_empty() {
        return Err(Error::invalid(
            "OIDC logins need oidc_client_id and oidc_client_secret in the config",
        ));
    }
    let d = discovery(core, url, now, false).await?;
    make_room(core, m, now).await?;
    let state = super::random_text(32);
    let nonce = super::random_text(32);
    let code_verifier = super::random_text(64);
    let challenge = b64url(&Sha256::digest(code_verifier.as_bytes()));
    let mut scopes = vec!["openid".to_string()];
    scopes.extend(r.oidc_scopes.iter().filter(|s| *s != "openid").cloned());
    let url = reqwest::Url::parse_with_params(
        &d.authorization_endpoint,
        &[
            ("client_id", c.oidc_client_id.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("response_type", "code"),
            ("scope", scopes.join(" ").as_str()),
            ("state", state.as_str()),
            ("nonce", nonce.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    )
    .map_err(|e| {
        Error::invalid(format!(
            "the provider's authorization_endpoint is not a URL: {e}"
        ))
    })?;
    core.storage
        .put(
            &state_key(core, m, &state),
            &Pending {
                role: name,
                redirect_uri,
                nonce,
                code_verifier,
                client_nonce,
                expires: now + STATE_TTL,
            },
        )
        .await?;
    Ok(json!({ "auth_url": url.to_string() }))
}

/// Clears expired browser logins once there are [`MAX_PENDING`].
async fn make_room(core: &Core, m: &AuthMount, now: i64) -> Result<()> {
    clear_expired::<Pending>(
        core,
        &format!("{}state/", m.data_prefix()),
        now,
        |p| p.expires,
        "",
    )
    .await
}

/// Clears the expired logins in progress under `prefix` once there are
/// [`MAX_PENDING`]; refuses a new one while that many are still live.
async fn clear_expired<T: serde::de::DeserializeOwned>(
    core: &Core,
    prefix: &str,
    now: i64,
    expires: impl Fn(&T) -> i64,
    kind: &str,
) -> Result<()> {
    let keys = core.storage.keys_with_prefix(prefix).await?;
    if keys.len() < MAX_PENDING {
        return Ok(());
    }
    let mut expired = Vec::new();
    for k in &keys {
        match core.storage.get::<T>(k).await? {
            Some(p) if expires(&p) > now => {}
            _ => expired.push(k.clone()),
        }
    }
    core.storage.delete_many(&expired).await?;
    if keys.len() - expired.len() >= MAX_PENDING {
        return Err(Error::RateLimited(format!(
            "too many OIDC {kind}logins in progress: try again in a few minutes"
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    id_token: Option<String>,
}

/// `auth/<path>/oidc/callback` (GET from the redirect's query, or POST):
/// the `state` is taken (it serves one callback, and only before it
/// expires), the `code` exchanged with the PKCE verifier, and the ID token
/// checked.
pub async fn callback(core: &Core, m: &AuthMount, f: &Fields, now: i64) -> Result<token::Issued> {
    let state = f.str("state")?.unwrap_or_default();
    let code = f.str("code")?.unwrap_or_default();
    let client_nonce = f.str("client_nonce")?.filter(|n| !n.is_empty());
    let id_token_in = f.str("id_token")?.filter(|t| !t.is_empty());
    if let Some(err) = f.str("error")?.filter(|e| !e.is_empty()) {
        let desc = f.str("error_description")?.unwrap_or_default();
        return Err(Error::invalid(format!(
            "the identity provider refused the login: {err} {desc}"
        )));
    }
    let expired = || Error::invalid("expired or missing OAuth state");
    if state.is_empty() {
        return Err(expired());
    }
    let pending: Pending = core
        .storage
        .take(&state_key(core, m, &state))
        .await?
        .ok_or_else(expired)?;
    if pending.expires <= now {
        return Err(expired());
    }
    if pending.client_nonce.is_some() && pending.client_nonce != client_nonce {
        return Err(Error::invalid("invalid client_nonce"));
    }
    let c = config(core, m).await?;
    let r: Role = core
        .storage
        .get(&role_key(m, &pending.role))
        .await?
        .ok_or_else(|| Error::invalid(format!("role {:?} could not be found", pending.role)))?;
    let KeySource::Discovery(url) = c.key_source()? else {
        return Err(Error::invalid(
            "OIDC logins need oidc_discovery_url in the config",
        ));
    };
    let d = discovery(core, url, now, false).await?;
    let id_token = match (code.is_empty(), id_token_in) {
        (false, _) => exchange(core, &c, &d, &code, &pending).await?,
        (true, Some(t)) => t,
        (true, None) => return Err(Error::invalid("missing code")),
    };
    let claims = check_id_token(core, &c, &d, &r, &id_token, Some(&pending.nonce), now).await?;
    login_with_claims(core, m, &pending.role, &r, &claims, now).await
}

/// The claims of an ID token from the provider's token endpoint, checked:
/// signature, issuer, times, the client as audience (and one of the role's
/// bound audiences when it has some), and the login's nonce when it had one.
async fn check_id_token(
    core: &Core,
    c: &Config,
    d: &Discovery,
    r: &Role,
    id_token: &str,
    nonce: Option<&str>,
    now: i64,
) -> Result<Map<String, Value>> {
    let mut audiences = vec![c.oidc_client_id.clone()];
    audiences.extend(r.bound_audiences.iter().cloned());
    let x = Expect {
        issuer: Some(if c.bound_issuer.is_empty() {
            &d.issuer
        } else {
            &c.bound_issuer
        }),
        audiences,
        nonce,
        client_id: Some(&c.oidc_client_id),
        role: r,
        now,
    };
    let claims = validate(core, c, id_token, &x).await?;
    // With bound audiences, the ID token must be for one of them too.
    if !r.bound_audiences.is_empty() {
        let aud = claim_texts(claims.get("aud"));
        if !aud.iter().any(|a| r.bound_audiences.contains(a)) {
            return Err(Error::invalid(
                "the token's audience (aud claim) is not one the role accepts",
            ));
        }
    }
    Ok(claims)
}

/// The authorization code for the ID token, at the provider's token
/// endpoint, with the client's secret and the PKCE verifier.
async fn exchange(
    core: &Core,
    c: &Config,
    d: &Discovery,
    code: &str,
    p: &Pending,
) -> Result<String> {
    let resp = core
        .oidc
        .client()?
        .post(&d.token_endpoint)
        .basic_auth(&c.oidc_client_id, Some(&c.oidc_client_secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", p.redirect_uri.as_str()),
            ("code_verifier", p.code_verifier.as_str()),
        ])
        .send()
        .await
        .map_err(|e| unreachable("token endpoint", &d.token_endpoint, e))?;
    let status = resp.status();
    if !status.is_success() {
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let why = body
            .get("error_description")
            .or_else(|| body.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("no reason given")
            .to_string();
        return Err(Error::invalid(format!(
            "the identity provider did not accept the authorization code: {why}"
        )));
    }
    let t: TokenResponse = resp
        .json()
        .await
        .map_err(|e| unreachable("token response", &d.token_endpoint, e))?;
    t.id_token
        .ok_or_else(|| Error::invalid("the identity provider's token response has no id_token"))
}

// ---- the device flow (RFC 8628), a gatepass extension ----------------------

/// A device login between `oidc/device_code` and `oidc/device_poll`. The
/// provider's device code stays here; the client holds only a handle to
/// it, which is kept under its keyed hash like a browser login's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DeviceLogin {
    role: String,
    device_code: String,
    expires: i64,
    /// Seconds between polls, as the provider asked (5 more after each
    /// `slow_down`).
    interval: i64,
    /// When the provider was last asked (0: not yet).
    last_poll: i64,
}

fn device_key(core: &Core, m: &AuthMount, handle: &str) -> String {
    format!("{}device/{}", m.data_prefix(), core.hasher.hash(handle))
}

/// Clears expired device logins once there are [`MAX_PENDING`], as
/// [`make_room`] does for browser logins.
async fn make_device_room(core: &Core, m: &AuthMount, now: i64) -> Result<()> {
    clear_expired::<DeviceLogin>(
        core,
        &format!("{}device/", m.data_prefix()),
        now,
        |p| p.expires,
        "device ",
    )
    .await
}

#[derive(Deserialize)]
struct DeviceAuthorization {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: i64,
    #[serde(default)]
    interval: Option<i64>,
}

/// The provider's OAuth error answer (`error`, `error_description`).
async fn oauth_error(resp: reqwest::Response) -> (String, String) {
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let text = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (text("error"), text("error_description"))
}

/// `auth/<path>/oidc/device_code`: starts a login for a machine without a
/// browser through the provider's device authorization grant. The person
/// opens `verification_uri` anywhere and enters `user_code`; the client
/// polls `oidc/device_poll` with `device_code` every `interval` seconds.
pub async fn device_code(core: &Core, m: &AuthMount, f: &Fields, now: i64) -> Result<Value> {
    let c = config(core, m).await?;
    let (name, r) = role_for(core, m, &c, f).await?;
    if r.role_type != RoleType::Oidc {
        return Err(Error::invalid(format!(
            "role {name:?} is a jwt role: log in through auth/{}/login",
            m.path
        )));
    }
    let KeySource::Discovery(url) = c.key_source()? else {
        return Err(Error::invalid(
            "OIDC logins need oidc_discovery_url in the config",
        ));
    };
    if c.oidc_client_id.is_empty() {
        return Err(Error::invalid(
            "OIDC logins need oidc_client_id and oidc_client_secret in the config",
        ));
    }
    let d = discovery(core, url, now, false).await?;
    let Some(endpoint) = d.device_authorization_endpoint.clone() else {
        return Err(Error::invalid(
            "the identity provider offers no device authorization grant \
             (no device_authorization_endpoint in its discovery document)",
        ));
    };
    make_device_room(core, m, now).await?;
    let mut scopes = vec!["openid".to_string()];
    scopes.extend(r.oidc_scopes.iter().filter(|s| *s != "openid").cloned());
    let resp = core
        .oidc
        .client()?
        .post(&endpoint)
        .basic_auth(&c.oidc_client_id, Some(&c.oidc_client_secret))
        .form(&[
            ("client_id", c.oidc_client_id.as_str()),
            ("scope", scopes.join(" ").as_str()),
        ])
        .send()
        .await
        .map_err(|e| unreachable("device authorization endpoint", &endpoint, e))?;
    if !resp.status().is_success() {
        let (err, desc) = oauth_error(resp).await;
        return Err(Error::invalid(format!(
            "the identity provider refused the device login: {err} {desc}"
        )));
    }
    let a: DeviceAuthorization = resp
        .json()
        .await
        .map_err(|e| unreachable("device authorization response", &endpoint, e))?;
    let handle = super::random_text(32);
    let expires_in = a.expires_in.clamp(1, STATE_TTL);
    let interval = a.interval.unwrap_or(5).clamp(1, 60);
    core.storage
        .put(
            &device_key(core, m, &handle),
            &DeviceLogin {
                role: name,
                device_code: a.device_code,
                expires: now + expires_in,
                interval,
                last_poll: 0,
            },
        )
        .await?;
    Ok(json!({
        "device_code": handle,
        "user_code": a.user_code,
        "verification_uri": a.verification_uri,
        "verification_uri_complete": a.verification_uri_complete,
        "interval": interval,
        "expires_in": expires_in,
    }))
}

fn slow_down() -> Error {
    Error::invalid("slow_down: poll 5 seconds less often")
}

/// `auth/<path>/oidc/device_poll`: asks the provider whether the person
/// approved; once they have, the ID token is checked as the callback's is
/// and the token issued. A device login serves one token, and none after
/// it expires or the person denied it. While the person has not decided,
/// the answer is a 400 starting `authorization_pending` (or `slow_down`:
/// poll 5 s less often), which clients poll on.
pub async fn device_poll(
    core: &Core,
    m: &AuthMount,
    f: &Fields,
    now: i64,
) -> Result<token::Issued> {
    let handle = f.str("device_code")?.unwrap_or_default();
    let gone = || Error::invalid("expired or unknown device code");
    if handle.is_empty() {
        return Err(gone());
    }
    let key = device_key(core, m, &handle);
    let mut login: DeviceLogin = core.storage.get(&key).await?.ok_or_else(gone)?;
    if login.expires <= now {
        core.storage.delete_many(&[key]).await?;
        return Err(gone());
    }
    // The server keeps to the provider's interval itself, so that a client
    // polling too fast does not get the provider to slow down every login
    // of this server.
    if now < login.last_poll + login.interval {
        login.interval += 5;
        core.storage.put(&key, &login).await?;
        return Err(slow_down());
    }
    login.last_poll = now;
    core.storage.put(&key, &login).await?;
    let c = config(core, m).await?;
    let r: Role = core
        .storage
        .get(&role_key(m, &login.role))
        .await?
        .ok_or_else(|| Error::invalid(format!("role {:?} could not be found", login.role)))?;
    let KeySource::Discovery(url) = c.key_source()? else {
        return Err(Error::invalid(
            "OIDC logins need oidc_discovery_url in the config",
        ));
    };
    let d = discovery(core, url, now, false).await?;
    let resp = core
        .oidc
        .client()?
        .post(&d.token_endpoint)
        .basic_auth(&c.oidc_client_id, Some(&c.oidc_client_secret))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", login.device_code.as_str()),
            ("client_id", c.oidc_client_id.as_str()),
        ])
        .send()
        .await
        .map_err(|e| unreachable("token endpoint", &d.token_endpoint, e))?;
    if !resp.status().is_success() {
        let (err, desc) = oauth_error(resp).await;
        return Err(match err.as_str() {
            "authorization_pending" => {
                Error::invalid("authorization_pending: the person has not approved the login yet")
            }
            "slow_down" => {
                login.interval += 5;
                core.storage.put(&key, &login).await?;
                slow_down()
            }
            _ => {
                // Denied, expired at the provider, or refused: this login
                // is over.
                core.storage.delete_many(&[key]).await?;
                match err.as_str() {
                    "access_denied" => {
                        Error::invalid("the person denied the login at the identity provider")
                    }
                    "expired_token" => gone(),
                    _ => Error::invalid(format!(
                        "the identity provider refused the device login: {err} {desc}"
                    )),
                }
            }
        });
    }
    let t: TokenResponse = resp
        .json()
        .await
        .map_err(|e| unreachable("token response", &d.token_endpoint, e))?;
    // One token per device login, even if two polls got this far.
    if core.storage.take::<DeviceLogin>(&key).await?.is_none() {
        return Err(gone());
    }
    let id_token = t
        .id_token
        .ok_or_else(|| Error::invalid("the identity provider's token response has no id_token"))?;
    let claims = check_id_token(core, &c, &d, &r, &id_token, None, now).await?;
    login_with_claims(core, m, &login.role, &r, &claims, now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("refs/heads/*", "refs/heads/main"));
        assert!(glob("*-prod", "web-prod"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abde"));
        assert!(!glob("refs/heads/*", "refs/tags/v1"));
        assert!(glob("main", "main"));
        assert!(!glob("ab*ba", "aba"));
        // Text the token holder chose, multi-byte included: no panic.
        assert!(!glob("*-prod", "éééé"));
        assert!(!glob("é*é", "é"));
        assert!(glob("*-prød", "web-prød"));
        assert!(glob("é*é", "éxé"));
    }

    fn role() -> Role {
        Role {
            role_type: RoleType::Jwt,
            bound_audiences: vec!["gatepass".into()],
            allowed_redirect_uris: vec![],
            user_claim: "sub".into(),
            groups_claim: String::new(),
            bound_subject: String::new(),
            bound_claims: BTreeMap::new(),
            bound_claims_type: BoundClaimsType::String,
            claim_mappings: BTreeMap::new(),
            oidc_scopes: vec![],
            clock_skew_leeway: 60,
            expiration_leeway: 150,
            not_before_leeway: 150,
            token: TokenSettings::default(),
        }
    }

    fn checked(claims: Value, now: i64) -> Result<()> {
        checked_for(claims, None, now)
    }

    /// [`checked`] as an ID token issued to `client_id` would be.
    fn checked_for(claims: Value, client_id: Option<&str>, now: i64) -> Result<()> {
        let r = role();
        let claims: Map<String, Value> = serde_json::from_value(claims).unwrap();
        check_claims(
            &claims,
            &Expect {
                issuer: Some("https://idp"),
                audiences: r.bound_audiences.clone(),
                nonce: None,
                client_id,
                role: &r,
                now,
            },
        )
    }

    #[test]
    fn an_id_token_must_be_for_this_client_by_its_authorized_party() {
        let t = 1_000_000;
        let id_token = |aud: Value, azp: Option<&str>| {
            let mut c = json!({"iss": "https://idp", "aud": aud, "exp": t + 300, "iat": t});
            if let Some(a) = azp {
                c["azp"] = json!(a);
            }
            c
        };
        let ours = Some("gatepass");
        // A client whose ID is not the role's bound audience ("gatepass").
        let other_client = Some("gatepass-client");
        // One audience: azp may be left out, or name this client.
        assert!(checked_for(id_token(json!("gatepass"), None), ours, t).is_ok());
        assert!(checked_for(id_token(json!("gatepass"), Some("gatepass")), ours, t).is_ok());
        // Issued to another client of the same provider.
        let e = checked_for(id_token(json!("gatepass"), Some("intruder")), ours, t).unwrap_err();
        assert!(e.public_message().contains("another client"), "{e:?}");
        // Several audiences: azp is required, and must be this client.
        let several = json!(["gatepass", "other"]);
        let e = checked_for(id_token(several.clone(), None), ours, t).unwrap_err();
        assert!(e.public_message().contains("azp"), "{e:?}");
        assert!(checked_for(id_token(several.clone(), Some("other")), ours, t).is_err());
        assert!(checked_for(id_token(several.clone(), Some("gatepass")), ours, t).is_ok());
        // For the bound audience only, not this client: azp must name
        // this client, and with several audiences this client must be one.
        let bound_only = |azp| checked_for(id_token(json!("gatepass"), azp), other_client, t);
        assert!(bound_only(None).is_err());
        assert!(bound_only(Some("gatepass-client")).is_ok());
        let several_bound = id_token(json!(["gatepass", "x"]), Some("gatepass-client"));
        assert!(checked_for(several_bound, other_client, t).is_err());
        // A JWT login (not an ID token) is not held to it.
        assert!(checked_for(id_token(several, None), None, t).is_ok());
    }

    #[test]
    fn times_with_leeways() {
        let t = 1_000_000;
        let good = |extra: Value| {
            let mut c = json!({"iss": "https://idp", "aud": "gatepass", "exp": t + 300, "iat": t});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            c
        };
        assert!(checked(good(json!({})), t).is_ok());
        // exp: expiration_leeway (150) + clock_skew_leeway (60) past it.
        assert!(checked(good(json!({})), t + 300 + 210).is_ok());
        assert!(checked(good(json!({})), t + 300 + 211).is_err());
        // nbf: not_before_leeway (150) + skew (60) before it.
        assert!(checked(good(json!({"nbf": t + 210})), t).is_ok());
        assert!(checked(good(json!({"nbf": t + 211})), t).is_err());
        // iat: skew only.
        assert!(checked(good(json!({"iat": t + 60})), t).is_ok());
        assert!(checked(good(json!({"iat": t + 61})), t).is_err());
        // exp is required; iss and aud must match.
        let mut no_exp = good(json!({}));
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(checked(no_exp, t).is_err());
        assert!(checked(good(json!({"iss": "https://other"})), t).is_err());
        assert!(checked(good(json!({"aud": ["x", "gatepass"]})), t).is_ok());
        assert!(checked(good(json!({"aud": "other"})), t).is_err());
    }

    /// Times at and past the ends of i64 (floats saturate into it), with
    /// leeways that would carry them over: refused or accepted as the
    /// time says, never a panic or a wrap into acceptance.
    #[test]
    fn times_past_the_ends_of_i64() {
        let t = 1_000_000;
        let with = |times: Value| {
            let mut c = json!({"iss": "https://idp", "aud": "gatepass", "exp": t + 300, "iat": t});
            for (k, v) in times.as_object().unwrap() {
                c[k] = v.clone();
            }
            c
        };
        let refused = |times: Value, why: &str| {
            let e = checked(with(times.clone()), t).unwrap_err();
            assert!(matches!(e, Error::InvalidRequest(_)), "{times}: {e:?}");
            assert!(e.public_message().contains(why), "{times}: {e:?}");
        };
        // An exp that far out has not expired.
        for exp in [json!(1e19), json!(i64::MAX), json!(u64::MAX)] {
            assert!(checked(with(json!({"exp": exp})), t).is_ok(), "{exp}");
        }
        for exp in [json!(-1e19), json!(i64::MIN)] {
            refused(json!({"exp": exp}), "expired");
        }
        // nbf or iat that far out: not valid yet, and far past is fine.
        for far in [json!(1e19), json!(i64::MAX), json!(u64::MAX)] {
            refused(json!({"nbf": far.clone()}), "not valid yet");
            refused(json!({"iat": far}), "issued in the future");
        }
        for past in [json!(-1e19), json!(i64::MIN)] {
            assert!(checked(with(json!({"nbf": past.clone(), "iat": past})), t).is_ok());
        }
    }

    #[test]
    fn pointers() {
        let c: Map<String, Value> =
            serde_json::from_value(json!({"a": {"b/c": ["x", "y"]}, "n": 1})).unwrap();
        assert_eq!(claim_texts(claim(&c, "/a/b~1c")), vec!["x", "y"]);
        assert_eq!(claim_texts(claim(&c, "n")), vec!["1"]);
        assert!(claim(&c, "/a/zz").is_none());
    }
}
