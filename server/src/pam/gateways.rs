//! Gateways: join tokens, enrollment (a token of the gateway's own, policy
//! `gatepass-gateway`, bound to the gateway's name), list, read, delete, and
//! finding the caller's own gateway from its token.

use std::net::SocketAddr;

use gatepass_api::hosts::JoinToken;
use gatepass_api::pam::{GatewayEnroll, GatewayEnrolled, GatewayInfo, NewGatewayJoinToken};
use serde::{Deserialize, Serialize};

use super::{session_ca, Name, GATEWAY_POLICY};
use crate::auth::token::{self, NewToken, TokenEntry};
use crate::error::{Error, Result};
use crate::ssh::sign;
use crate::state::Core;
use crate::storage::Change;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct JoinEntry {
    accessor: String,
    expire_time: i64,
    /// Uses left; 0 means unlimited until expiry.
    uses_left: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Gateway {
    pub name: Name,
    /// Where users' ssh dials it; None for a relay gateway, which has no
    /// inbound port (users reach it through the server, `super::relay`).
    pub address: Option<Address>,
    pub host_keys: Vec<String>,
    pub enrolled: i64,
    pub last_seen: i64,
    pub token_accessor: String,
    /// Its recording signing key (base64 ed25519 public key); None for
    /// gateways enrolled before recordings were signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_key: Option<String>,
}

/// `host:port` users' ssh dials: a host name or IP address and a port
/// other than 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Address(String);

impl Address {
    pub fn parse(s: &str) -> Result<Address> {
        let s = s.trim();
        let bad = || {
            Error::invalid(format!(
                "address {s:?} is not host:port (e.g. \"gw.example.com:2222\" or \"[fd00::1]:2222\")"
            ))
        };
        if let Ok(a) = s.parse::<SocketAddr>() {
            return if a.port() == 0 {
                Err(bad())
            } else {
                Ok(Address(a.to_string()))
            };
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 || super::resources::TargetHost::parse(host).is_err() {
            return Err(bad());
        }
        Ok(Address(format!("{}:{port}", host.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Paths under `pam/gateways/` that are not gateways.
const RESERVED: [&str; 2] = ["enroll", "join-tokens"];

/// A gateway name (see [`Name`]), other than the words of its sibling paths.
impl Gateway {
    /// Users reach it through the server, not at an address.
    pub fn is_relay(&self) -> bool {
        self.address.is_none()
    }
}

pub fn gateway_name(s: &str) -> Result<Name> {
    if RESERVED.contains(&s) {
        return Err(Error::invalid(format!(
            "{s:?} cannot name a gateway (it is a path under pam/gateways/)"
        )));
    }
    Name::parse("gateway", s)
}

fn gateway_key(name: &str) -> String {
    format!("pam/gateway/{name}")
}
fn join_key(hash: &str) -> String {
    format!("pam/join/{hash}")
}

/// Host keys as OpenSSH public key lines (comments dropped).
pub(super) fn parse_host_keys(keys: &[String]) -> Result<Vec<String>> {
    if keys.len() > 16 {
        return Err(Error::invalid("too many host keys (at most 16)"));
    }
    keys.iter()
        .map(|k| {
            let key = sign::parse_public_key(k)?;
            let mut key = key.clone();
            key.set_comment("");
            key.to_openssh()
                .map(|t| t.trim().to_string())
                .map_err(|e| Error::invalid(e.to_string()))
        })
        .collect()
}

pub async fn new_join_token(core: &Core, spec: NewGatewayJoinToken, now: i64) -> Result<JoinToken> {
    let ttl = match &spec.ttl {
        Some(t) => super::positive_duration("ttl", t)?,
        None => 3600,
    };
    let uses = spec.num_uses.unwrap_or(1);
    if uses < 0 {
        return Err(Error::invalid("num_uses must not be negative"));
    }
    let text = format!("gpg.{}", crate::auth::random_text(40));
    let entry = JoinEntry {
        accessor: crate::auth::random_text(24),
        expire_time: now + ttl,
        uses_left: uses,
    };
    core.storage
        .put(&join_key(&core.hasher.hash(&text)), &entry)
        .await?;
    Ok(JoinToken {
        join_token: text,
        accessor: entry.accessor,
        expire_time: entry.expire_time,
        num_uses: uses,
    })
}

fn invalid_join() -> Error {
    Error::invalid("invalid or expired join token")
}

/// Spends one use of a join token, in storage (the last use deletes it), so
/// a one-use token enrolls exactly one gateway.
async fn spend_join_token(core: &Core, text: &str, now: i64) -> Result<()> {
    let key = join_key(&core.hasher.hash(text));
    let e: JoinEntry = core.storage.get(&key).await?.ok_or_else(invalid_join)?;
    if e.expire_time <= now {
        core.storage.delete(&key).await?;
        return Err(invalid_join());
    }
    core.storage
        .update(&key, |mut e: JoinEntry| {
            Ok(match e.uses_left {
                0 => (Change::Keep, ()),
                1 => (Change::Delete, ()),
                n => {
                    e.uses_left = n - 1;
                    (Change::Put(e), ())
                }
            })
        })
        .await?
        .ok_or_else(invalid_join)
}

pub async fn enroll(core: &Core, r: GatewayEnroll, now: i64) -> Result<GatewayEnrolled> {
    let name = gateway_name(&r.name)?;
    let address = match (r.relay, r.address.trim()) {
        (false, a) => Some(Address::parse(a)?),
        (true, "") => None,
        (true, a) => {
            return Err(Error::invalid(format!(
                "a relay gateway has no address users dial (got {a:?}): leave address empty, or enroll without relay"
            )))
        }
    };
    let host_keys = parse_host_keys(&r.host_keys)?;
    let recording_key = match r.recording_key.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(k) => {
            if gatepass_api::recording::parse_public_key(k).is_none() {
                return Err(Error::invalid(format!(
                    "recording_key {k:?} is not an ed25519 public key (base64 of 32 bytes)"
                )));
            }
            Some(k.to_string())
        }
    };
    // The join token is checked first, so that only its holders learn which
    // names are taken; it is spent only once the name is known to be free.
    let peek: Option<JoinEntry> = core
        .storage
        .get(&join_key(&core.hasher.hash(&r.join_token)))
        .await?;
    if peek.is_none_or(|e| e.expire_time <= now) {
        return Err(invalid_join());
    }
    let existing = find(core, &name).await?;
    if existing.is_some() && !r.replace {
        return Err(Error::invalid(format!(
            "gateway name {name:?} is already enrolled; delete that gateway first, or enroll with replace=true to take its place"
        )));
    }
    spend_join_token(core, &r.join_token, now).await?;
    if let Some(old) = existing {
        remove(core, &old, now).await?;
    }
    let token::Issued {
        text, entry: tok, ..
    } = token::create(
        core,
        NewToken {
            policies: vec![GATEWAY_POLICY.into()],
            no_default_policy: true,
            ttl: Some(token::SYSTEM_MAX_TTL),
            renewable: true,
            periodic: true,
            display_name: format!("gateway-{name}"),
            gateway: Some(name.to_string()),
            path: "pam/gateways/enroll".into(),
            ..NewToken::default()
        },
        now,
    )
    .await?;
    let gw = Gateway {
        name: name.clone(),
        address,
        host_keys,
        enrolled: now,
        last_seen: now,
        token_accessor: tok.accessor.clone(),
        recording_key,
    };
    // Of two enrollments racing for a free name, one wins; the other's
    // token is revoked again.
    if !core
        .storage
        .put_if_absent(&gateway_key(name.as_str()), &gw)
        .await?
    {
        token::revoke(core, &tok, false).await?;
        return Err(Error::invalid(format!(
            "gateway name {name:?} was enrolled concurrently; try again"
        )));
    }
    Ok(GatewayEnrolled {
        name: name.to_string(),
        gateway_token: text,
        session_ca_keys: session_ca::public_keys(core, now).await?,
    })
}

pub fn info(g: &Gateway) -> GatewayInfo {
    GatewayInfo {
        name: g.name.to_string(),
        address: g
            .address
            .as_ref()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default(),
        relay: g.is_relay(),
        host_keys: g.host_keys.clone(),
        enrolled: crate::clock::rfc3339(g.enrolled),
        last_seen: crate::clock::rfc3339(g.last_seen),
        recording_key: g.recording_key.clone(),
    }
}

pub async fn find(core: &Core, name: &Name) -> Result<Option<Gateway>> {
    core.storage.get(&gateway_key(name.as_str())).await
}

pub async fn list(core: &Core) -> Result<Vec<String>> {
    core.storage.list("pam/gateway/").await
}

/// Deletes a gateway and revokes its token. Its sessions stay on record;
/// open ones can no longer be opened or followed by it.
pub async fn delete(core: &Core, name: &Name, now: i64) -> Result<()> {
    if let Some(g) = find(core, name).await? {
        remove(core, &g, now).await?;
    }
    Ok(())
}

async fn remove(core: &Core, g: &Gateway, now: i64) -> Result<()> {
    if let Some(t) = token::lookup_accessor(core, &g.token_accessor, now).await? {
        token::revoke(core, &t, false).await?;
    }
    core.storage.delete(&gateway_key(g.name.as_str())).await?;
    Ok(())
}

/// The gateway a gateway token belongs to: named by the token's own
/// binding (set only at enrollment), and still the token that gateway
/// enrolled with.
pub async fn own_gateway(core: &Core, caller: Option<&TokenEntry>) -> Result<Gateway> {
    let caller = caller.ok_or(Error::PermissionDenied)?;
    let name = caller.gateway.as_deref().ok_or_else(|| {
        Error::invalid("this path needs a gateway token (from pam/gateways/enroll)")
    })?;
    let name = Name::parse("gateway", name)?;
    match find(core, &name).await? {
        Some(g) if g.token_accessor == caller.accessor => Ok(g),
        _ => Err(Error::invalid("this gateway is no longer enrolled")),
    }
}

/// Records that a gateway asked for its sessions, at most once a minute.
pub async fn seen(core: &Core, g: &Gateway, now: i64) -> Result<()> {
    if now - g.last_seen < 60 {
        return Ok(());
    }
    core.storage
        .update(&gateway_key(g.name.as_str()), |mut cur: Gateway| {
            if now <= cur.last_seen {
                return Ok((Change::Keep, ()));
            }
            cur.last_seen = now;
            Ok((Change::Put(cur), ()))
        })
        .await?;
    Ok(())
}

/// A restarted gateway's current host keys, if it sent any.
pub async fn set_host_keys(core: &Core, g: &Gateway, keys: &[String]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let keys = parse_host_keys(keys)?;
    core.storage
        .update(&gateway_key(g.name.as_str()), |mut cur: Gateway| {
            if cur.host_keys == keys {
                return Ok((Change::Keep, ()));
            }
            cur.host_keys = keys.clone();
            Ok((Change::Put(cur), ()))
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("gw.example.com:2222").unwrap().as_str(),
            "gw.example.com:2222"
        );
        assert_eq!(
            Address::parse("127.0.0.1:22").unwrap().as_str(),
            "127.0.0.1:22"
        );
        assert_eq!(
            Address::parse("[fd00::1]:2222").unwrap().as_str(),
            "[fd00::1]:2222"
        );
        for bad in ["gw", "gw:0", "gw:99999", ":22", "g w:22", "127.0.0.1:0"] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gateway_names_exclude_sibling_paths() {
        assert!(gateway_name("enroll").is_err());
        assert!(gateway_name("join-tokens").is_err());
        assert!(gateway_name("gw-1").is_ok());
    }
}
