//! Response wrapping (Vault's `X-Vault-Wrap-TTL` and `sys/wrapping/*`): a
//! response is kept in storage under a single-use wrapping token, and the
//! caller gets only the token. Whoever holds the token gets the response
//! once: an unwrap takes the stored response out in one storage operation,
//! so of any number of concurrent unwraps, on any server, one gets it.
//!
//! A wrapping token is not a general token: it authenticates nothing but
//! its own unwrap. It is stored under its keyed hash, like tokens, and the
//! response in it is sealed at rest like every stored value. Its expiry is
//! a lease (`sys/wrapping/wrap/<id>`, not renewable) standing for the
//! stored response, so the lease sweeper deletes expired wrapped responses
//! and `sys/leases/revoke` revokes a wrapping token as Vault's does.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::leases::{self, Lease};
use crate::state::Core;

/// Vault's answer for a wrapping token that is unknown, used or expired.
pub const INVALID_TOKEN: &str = "wrapping token is not valid or does not exist";

/// The longest a wrapped response is kept: the system's maximum token TTL.
pub const MAX_TTL: i64 = super::token::SYSTEM_MAX_TTL;

/// A wrapping TTL: whole seconds, at least 1, at most [`MAX_TTL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrapTtl(i64);

impl WrapTtl {
    /// The `X-Vault-Wrap-TTL` header as Vault reads it: seconds, or
    /// duration text ("5m", "1h30m"). None when it asks for no wrapping (0).
    /// A TTL above [`MAX_TTL`] is brought down to it, as token TTLs are.
    pub fn from_header(text: &str) -> Result<Option<WrapTtl>> {
        let text = text.trim();
        if text.starts_with('-') {
            return Err(Error::invalid(
                "error parsing X-Vault-Wrap-TTL header: requested wrap ttl cannot be negative",
            ));
        }
        let secs = crate::duration::parse(text).ok_or_else(|| {
            Error::invalid(format!(
                "error parsing X-Vault-Wrap-TTL header: {text:?} is not a duration (examples: 300, \"5m\", \"1h\")"
            ))
        })?;
        Ok(Self::from_secs(secs))
    }

    /// None for 0 (no wrapping); longer than [`MAX_TTL`] is cut to it.
    pub fn from_secs(secs: i64) -> Option<WrapTtl> {
        (secs > 0).then(|| WrapTtl(secs.min(MAX_TTL)))
    }

    pub fn secs(self) -> i64 {
        self.0
    }
}

/// What the caller of a wrapped request gets instead of the response
/// (the envelope's `wrap_info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrapInfo {
    /// The wrapping token: shown once, stored only as its keyed hash.
    pub token: String,
    pub accessor: String,
    pub ttl: i64,
    pub creation_time: i64,
    /// The request path whose response is wrapped.
    pub creation_path: String,
    /// The accessor of a token or AppRole secret ID in the wrapped response:
    /// it lets the holder revoke what was wrapped without unwrapping it.
    pub wrapped_accessor: Option<String>,
}

impl WrapInfo {
    /// The envelope's `wrap_info` in Vault's form (`wrapped_accessor` left
    /// out when there is none).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "token": self.token,
            "accessor": self.accessor,
            "ttl": self.ttl,
            "creation_time": rfc3339(self.creation_time),
            "creation_path": self.creation_path,
        });
        if let Some(a) = &self.wrapped_accessor {
            v["wrapped_accessor"] = json!(a);
        }
        v
    }
}

/// What `sys/wrapping/lookup` tells about a wrapping token without using it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lookup {
    pub creation_ttl: i64,
    pub creation_time: String,
    pub creation_path: String,
}

/// A wrapped response as stored (sealed by the storage, under the token's
/// keyed hash).
#[derive(Serialize, Deserialize)]
struct Wrapped {
    accessor: String,
    creation_time: i64,
    ttl: i64,
    creation_path: String,
    /// The lease that expires it.
    lease_id: String,
    /// The response envelope, JSON text, as the request would have
    /// answered without wrapping.
    response: String,
}

impl Wrapped {
    fn expired(&self, now: i64) -> bool {
        self.creation_time + self.ttl <= now
    }
}

fn key(hash: &str) -> String {
    format!("wrapping/token/{hash}")
}

fn invalid_token() -> Error {
    Error::invalid(INVALID_TOKEN)
}

/// Wraps `response` (an envelope's JSON text) for `ttl`: stores it with its
/// lease in one transaction and returns the new wrapping token.
pub async fn wrap(
    core: &Core,
    response: String,
    creation_path: &str,
    ttl: WrapTtl,
    wrapped_accessor: Option<String>,
    now: i64,
) -> Result<WrapInfo> {
    let token = format!("gps.{}", super::random_text(40));
    let accessor = super::random_text(24);
    let stored = Wrapped {
        accessor: accessor.clone(),
        creation_time: now,
        ttl: ttl.secs(),
        creation_path: creation_path.to_string(),
        lease_id: format!("sys/wrapping/wrap/{}", uuid::Uuid::new_v4()),
        response,
    };
    let lease = Lease::new(
        stored.lease_id.clone(),
        key(&core.hasher.hash(&token)),
        now,
        ttl.secs(),
        false,
        ttl.secs(),
    );
    if !leases::create_with_secret(core, &lease, &stored).await? {
        return Err(Error::internal(
            "a wrapping token with this id already exists",
        ));
    }
    Ok(WrapInfo {
        token,
        accessor,
        ttl: ttl.secs(),
        creation_time: now,
        creation_path: stored.creation_path,
        wrapped_accessor,
    })
}

/// Takes the stored response out (the token is used up by this, whatever
/// follows), with its lease.
async fn take(core: &Core, token: &str, now: i64) -> Result<Wrapped> {
    let taken: Option<Wrapped> = core.storage.take(&key(&core.hasher.hash(token))).await?;
    let w = taken.ok_or_else(invalid_token)?;
    leases::forget(core, &w.lease_id).await?;
    if w.expired(now) {
        return Err(invalid_token());
    }
    Ok(w)
}

/// The wrapped response (an envelope's JSON text), once: the token is
/// gone afterwards, and an unknown, used or expired token is refused.
pub async fn unwrap(core: &Core, token: &str, now: i64) -> Result<String> {
    Ok(take(core, token, now).await?.response)
}

/// What a wrapping token holds, without using it.
pub async fn lookup(core: &Core, token: &str, now: i64) -> Result<Lookup> {
    let w: Wrapped = core
        .storage
        .get(&key(&core.hasher.hash(token)))
        .await?
        .filter(|w: &Wrapped| !w.expired(now))
        .ok_or_else(invalid_token)?;
    Ok(Lookup {
        creation_ttl: w.ttl,
        creation_time: rfc3339(w.creation_time),
        creation_path: w.creation_path,
    })
}

/// The same response under a new wrapping token, with the original TTL
/// (counted from now) and creation path; the old token is used up.
pub async fn rewrap(core: &Core, token: &str, now: i64) -> Result<WrapInfo> {
    let w = take(core, token, now).await?;
    let ttl = WrapTtl::from_secs(w.ttl).ok_or_else(|| Error::internal("stored wrapping TTL"))?;
    wrap(core, w.response, &w.creation_path, ttl, None, now).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::seal::SealKey;
    use crate::state::Options;

    async fn core(dir: &tempfile::TempDir) -> crate::state::State {
        crate::state::Core::connect(Options {
            storage_url: format!("sqlite://{}", dir.path().join("db").display()),
            seal_key: SealKey::generate(),
            audit_path: None,
            clock: Clock::System,
            storage_connections: Default::default(),
        })
        .await
        .unwrap()
    }

    #[test]
    fn header_ttls_as_vault_reads_them() {
        let secs = |t: &str| WrapTtl::from_header(t).unwrap().map(WrapTtl::secs);
        assert_eq!(secs("300"), Some(300));
        assert_eq!(secs("5m"), Some(300));
        assert_eq!(secs("1h30m"), Some(5400));
        assert_eq!(secs("0"), None);
        assert_eq!(secs("100000h"), Some(MAX_TTL));
        let err = WrapTtl::from_header("-5").unwrap_err().to_string();
        assert!(err.contains("cannot be negative"), "{err}");
        let err = WrapTtl::from_header("soon").unwrap_err().to_string();
        assert!(err.contains("X-Vault-Wrap-TTL"), "{err}");
    }

    #[tokio::test]
    async fn unwraps_once_then_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(&dir).await;
        let ttl = WrapTtl::from_secs(60).unwrap();
        let info = wrap(&core, "{\"x\":1}".into(), "p", ttl, None, 1000)
            .await
            .unwrap();
        assert_eq!(info.to_json()["creation_path"], "p");
        assert!(info.to_json().get("wrapped_accessor").is_none());
        let l = lookup(&core, &info.token, 1001).await.unwrap();
        assert_eq!((l.creation_ttl, l.creation_path.as_str()), (60, "p"));
        assert_eq!(unwrap(&core, &info.token, 1001).await.unwrap(), "{\"x\":1}");
        let err = unwrap(&core, &info.token, 1002).await.unwrap_err();
        assert_eq!(err.to_string(), INVALID_TOKEN);
        assert!(lookup(&core, &info.token, 1002).await.is_err());
        assert!(unwrap(&core, "gps.nothing", 1002).await.is_err());
    }

    #[tokio::test]
    async fn expired_tokens_refused_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(&dir).await;
        let ttl = WrapTtl::from_secs(60).unwrap();
        let a = wrap(&core, "a".into(), "p", ttl, None, 1000).await.unwrap();
        let b = wrap(&core, "b".into(), "p", ttl, None, 1000).await.unwrap();
        assert!(lookup(&core, &a.token, 1060).await.is_err());
        assert_eq!(
            unwrap(&core, &a.token, 1060).await.unwrap_err().to_string(),
            INVALID_TOKEN
        );
        // The sweeper deletes what expired, with its lease.
        assert_eq!(leases::sweep(&core, 1060, 100).await.unwrap(), 1);
        assert!(core
            .storage
            .keys_with_prefix("wrapping/")
            .await
            .unwrap()
            .is_empty());
        assert!(core
            .storage
            .keys_with_prefix("lease")
            .await
            .unwrap()
            .is_empty());
        assert!(unwrap(&core, &b.token, 1000).await.is_err());
    }

    #[tokio::test]
    async fn rewrap_gives_a_new_token_and_ends_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(&dir).await;
        let ttl = WrapTtl::from_secs(300).unwrap();
        let old = wrap(&core, "r".into(), "orig", ttl, Some("acc".into()), 1000)
            .await
            .unwrap();
        let new = rewrap(&core, &old.token, 1100).await.unwrap();
        assert_ne!(new.token, old.token);
        assert_eq!((new.ttl, new.creation_path.as_str()), (300, "orig"));
        assert_eq!(new.creation_time, 1100);
        assert!(unwrap(&core, &old.token, 1100).await.is_err());
        assert!(rewrap(&core, &old.token, 1100).await.is_err());
        assert_eq!(unwrap(&core, &new.token, 1350).await.unwrap(), "r");
    }
}
