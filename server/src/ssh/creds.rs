//! `creds/<role>` for OTP and dynamic-key roles, `verify`, `lookup` and
//! `config/zeroaddress`: Vault's SSH OTP and dynamic-key API.
//!
//! An OTP is a UUID (vault-ssh-helper refuses any other form) made of its
//! issuing millisecond and 74 random bits, stored only under its keyed hash
//! and consumed atomically by `verify`. A dynamic
//! key is a fresh key pair: the private key goes to the caller once, the
//! public key waits in the mount for the target host's hostd to install.

use std::net::IpAddr;

use gatepass_api::ssh::{CredKind, Credential, OtpInfo, Verified, VERIFY_ECHO_REQUEST};
use serde::{Deserialize, Serialize};
use ssh_key::LineEnding;

use super::roles::{KeyType, Role};
use crate::error::{Error, Result};
use crate::leases::{self, Lease};
use crate::mounts::Mount;
use crate::mounts::TtlLimits;
use crate::state::Core;
use crate::storage::Change;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OtpEntry {
    pub username: String,
    pub ip: String,
    pub role_name: String,
    pub lease_id: String,
    pub expire_time: i64,
    /// gatepass: the enrolled host this OTP is bound to; only that host's
    /// helper (presenting its host token) can verify it.
    #[serde(default)]
    pub host_id: Option<String>,
    /// The accessor of the token that asked for it (its lease's token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DynamicKey {
    pub username: String,
    pub ip: String,
    pub role_name: String,
    pub lease_id: String,
    /// OpenSSH public key line.
    pub public_key: String,
    pub key_option_specs: String,
    pub expire_time: i64,
    /// The host that acknowledged installing it (`hosts/self/ack`): kept
    /// on the key's own record, so that it goes with the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_on: Option<String>,
    /// The enrolled host it was asked for by name (`host=`): it goes to
    /// that host alone, not to every host that has its address too (a
    /// Docker bridge's 172.17.0.1 is on many).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ZeroAddress {
    roles: Vec<String>,
}

/// OTPs bound to a host live under that host's ID, unbound ones under `-`:
/// a verify looks only where its caller may look, so one atomic take both
/// checks the binding and consumes, and the wrong host cannot burn an OTP.
///
/// Within that, an OTP sits under its issuing millisecond (the first 48
/// bits of a version 7 UUID, see `new_otp`) and then its hash, so the OTPs
/// issued together, and consumed about as soon, share a page or two of the
/// database's index instead of each landing on a random page of its own:
/// one page written per batch of creds or verifies instead of one per OTP.
/// An OTP issued before OTPs carried their millisecond (a version 4 UUID)
/// is still where it was stored, under its hash alone.
fn otp_key(m: &Mount, host: Option<&str>, otp: &uuid::Uuid, hash: &str) -> String {
    let host = host.unwrap_or("-");
    if otp.get_version_num() == 7 {
        let b = otp.as_bytes();
        let ms = u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]);
        format!("{}otp/{host}/{ms:012x}/{hash}", m.data_prefix())
    } else {
        format!("{}otp/{host}/{hash}", m.data_prefix())
    }
}

/// A new OTP: a version 7 UUID, its issuing millisecond and then 74 bits
/// from the operating system's random source. Not `Uuid::now_v7`, which
/// steps a counter within a millisecond (an OTP issued next to another
/// would be guessable from it). 74 random bits are more than the 64 that
/// session identifiers are held to, for a secret that lives minutes, is
/// bound to a user and an address and is taken by its first use; the clock
/// only places it in storage (its expiry takes `now`).
fn new_otp() -> uuid::Uuid {
    use rand::RngCore;
    let (secs, nanos) = uuid::Timestamp::now(uuid::NoContext).to_unix();
    let ms = secs * 1000 + u64::from(nanos / 1_000_000);
    let mut random = [0u8; 10];
    rand::rngs::OsRng.fill_bytes(&mut random);
    uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid()
}
fn dynkey_key(m: &Mount, id: &str) -> String {
    format!("{}dynkey/{id}", m.data_prefix())
}
fn zero_key(m: &Mount) -> String {
    format!("{}config/zeroaddress", m.data_prefix())
}

pub async fn zero_address_roles(core: &Core, m: &Mount) -> Result<Vec<String>> {
    Ok(core
        .storage
        .get::<ZeroAddress>(&zero_key(m))
        .await?
        .unwrap_or_default()
        .roles)
}

pub async fn set_zero_address_roles(core: &Core, m: &Mount, roles: Vec<String>) -> Result<()> {
    for r in &roles {
        super::roles::validate_name(r)?;
        // As Vault: a name that is no role is a mistake to say now, not a
        // role that would serve every address once someone makes it.
        if super::roles::read_shared(core, m, r).await?.is_none() {
            return Err(Error::invalid(format!("Role {r:?} does not exist")));
        }
    }
    core.storage.put(&zero_key(m), &ZeroAddress { roles }).await
}

pub async fn delete_zero_address(core: &Core, m: &Mount) -> Result<()> {
    core.storage.delete(&zero_key(m)).await?;
    Ok(())
}

/// Vault's rule: the IP must be in the role's `cidr_list` and not in
/// `exclude_cidr_list`; a role with no `cidr_list` serves any IP only when it
/// is listed in `config/zeroaddress`.
fn ip_allowed(role: &Role, ip: IpAddr, zero: &[String]) -> Result<()> {
    if role.exclude_cidr_list.iter().any(|c| c.contains(&ip)) {
        return Err(Error::invalid(format!(
            "IP {ip} is in the role's exclude_cidr_list"
        )));
    }
    if role.cidr_list.iter().any(|c| c.contains(&ip)) {
        return Ok(());
    }
    if zero.contains(&role.name) {
        return Ok(());
    }
    if role.cidr_list.is_empty() {
        return Err(Error::invalid(format!(
            "role {} has no cidr_list and is not a zero-address role",
            role.name
        )));
    }
    Err(Error::invalid(format!(
        "IP {ip} does not belong to role {}",
        role.name
    )))
}

fn username(role: &Role, requested: Option<String>) -> Result<String> {
    let user = requested
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| role.default_user.clone());
    super::principal::Principal::new(&user).map_err(|_| Error::invalid("invalid username"))?;
    if user == role.default_user || role.allowed_users.iter().any(|a| a == "*" || *a == user) {
        Ok(user)
    } else {
        Err(Error::invalid(format!(
            "username {user} is not in the role's allowed_users"
        )))
    }
}

/// The role's TTLs, and where it sets none its mount's.
fn lease_ttl(role: &Role, limits: TtlLimits) -> (i64, i64) {
    let max = if role.max_ttl > 0 {
        role.max_ttl
    } else {
        limits.max
    };
    let ttl = if role.ttl > 0 {
        role.ttl.min(max)
    } else {
        limits.default.min(max)
    };
    (ttl, max)
}

/// What `creds` answers: the data and the lease fields of the envelope.
pub struct Issued {
    pub data: Credential,
    pub lease_id: String,
    pub lease_duration: i64,
    pub renewable: bool,
}

/// What a credential is asked for.
pub struct CredsInput {
    /// The address it is for (checked against the role here).
    pub ip: IpAddr,
    /// gatepass: the enrolled host an OTP is bound to (see [`host_address`]).
    pub host_id: Option<String>,
    /// The role's `default_user` when None or empty.
    pub username: Option<String>,
    /// The accessor of the token asking: its revocation revokes the lease.
    pub token: Option<String>,
}

/// An enrolled host a credential is asked for by name.
pub struct HostTarget<'a> {
    pub hostname: &'a str,
    pub addresses: &'a [IpAddr],
}

/// The address of `host` a credential is for: `ip` if given (it must be
/// one of the host's), else the first of its addresses the role serves.
pub async fn host_address(
    core: &Core,
    m: &Mount,
    role: &Role,
    host: &HostTarget<'_>,
    ip: Option<IpAddr>,
) -> Result<IpAddr> {
    let zero = zero_address_roles(core, m).await?;
    match ip {
        Some(ip) => {
            if !host.addresses.contains(&ip) {
                return Err(Error::invalid(format!(
                    "{ip} is not an address of host {}",
                    host.hostname
                )));
            }
            Ok(ip)
        }
        None => host
            .addresses
            .iter()
            .find(|a| ip_allowed(role, **a, &zero).is_ok())
            .copied()
            .ok_or_else(|| {
                Error::invalid(format!(
                    "none of host {}'s addresses belongs to role {}",
                    host.hostname, role.name
                ))
            }),
    }
}

/// The longest user a dynamic key is issued for: what hostd installs
/// (Linux's 32 bytes, `check_user` in hostd's `apply.rs`).
const MAX_DYNAMIC_USER: usize = 32;

pub async fn create(
    core: &Core,
    m: &Mount,
    role: &Role,
    input: CredsInput,
    now: i64,
) -> Result<Issued> {
    let CredsInput {
        ip,
        host_id,
        username: requested,
        token,
    } = input;
    let user = username(role, requested)?;
    if role.key_type == KeyType::Dynamic && user.len() > MAX_DYNAMIC_USER {
        return Err(Error::invalid(format!(
            "username {user:?} is longer than {MAX_DYNAMIC_USER} bytes: a host installs a dynamic \
             key in a file named for its user, and takes no longer local user names"
        )));
    }
    ip_allowed(role, ip, &zero_address_roles(core, m).await?)?;
    let (ttl, max) = lease_ttl(role, m.ttl_limits());
    // Time-ordered (UUIDv7, a counter orders those of one millisecond):
    // the lease's entries (the lease and its token's index) of the
    // requests written in one batch sort next to each other and share a
    // page or two of the table, where random ids put each on a page of its
    // own, one more 4 KiB WAL frame per request for the writer (see
    // BENCHMARKS.md). Its 42-bit counter is seeded at random every
    // millisecond and 32 more bits are random, so ids stay unguessable;
    // the clock only orders ids (expiry takes `now`).
    let id = uuid::Uuid::now_v7().to_string();
    let lease_id = format!("{}/creds/{}/{id}", m.path, role.name);
    match role.key_type {
        KeyType::Otp => {
            let uuid = new_otp();
            let otp = uuid.to_string();
            let key = otp_key(m, host_id.as_deref(), &uuid, &core.hasher.hash(&otp));
            let entry = OtpEntry {
                username: user.clone(),
                ip: ip.to_string(),
                role_name: role.name.clone(),
                lease_id: lease_id.clone(),
                expire_time: now + ttl,
                host_id,
                token: token.clone(),
            };
            let lease = Lease::new(lease_id.clone(), key, now, ttl, false, ttl).of_token(token);
            // The OTP and its lease in one transaction: both or neither.
            if !leases::create_with_secret(core, &lease, &entry).await? {
                return Err(Error::internal("OTP collision"));
            }
            crate::auth::token::keep_lease(core, &lease).await?;
            Ok(Issued {
                data: Credential {
                    ip: ip.to_string(),
                    key: otp,
                    key_type: CredKind::Otp,
                    port: role.port,
                    username: user,
                    installed: None,
                },
                lease_id,
                lease_duration: ttl,
                renewable: false,
            })
        }
        KeyType::Dynamic => {
            let kt = if role.key_bits > 0 { "rsa" } else { "ed25519" };
            let bits = role.key_bits;
            let private =
                tokio::task::spawn_blocking(move || super::issuers::generate_key(kt, bits))
                    .await
                    .map_err(|e| Error::internal(e.to_string()))??;
            let public = private
                .public_key()
                .to_openssh()
                .map_err(|e| Error::internal(e.to_string()))?;
            let key = dynkey_key(m, &id);
            let entry = DynamicKey {
                username: user.clone(),
                ip: ip.to_string(),
                role_name: role.name.clone(),
                lease_id: lease_id.clone(),
                public_key: public,
                key_option_specs: role.key_option_specs.clone(),
                expire_time: now + ttl,
                installed_on: None,
                host_id,
            };
            let lease = Lease::new(lease_id.clone(), key, now, ttl, true, max).of_token(token);
            // The key and its lease in one transaction, as an OTP's: a key
            // never waits for its host without a lease to expire it.
            if !leases::create_with_secret(core, &lease, &entry).await? {
                return Err(Error::internal("dynamic key collision"));
            }
            crate::auth::token::keep_lease(core, &lease).await?;
            let pem = private
                .to_openssh(LineEnding::LF)
                .map_err(|e| Error::internal(e.to_string()))?;
            Ok(Issued {
                data: Credential {
                    ip: ip.to_string(),
                    key: pem.to_string(),
                    key_type: CredKind::Dynamic,
                    port: role.port,
                    username: user,
                    installed: None,
                },
                lease_id,
                lease_duration: ttl,
                renewable: true,
            })
        }
        KeyType::Ca => Err(Error::invalid(format!(
            "role {} has key_type=ca: use sign/{0} or issue/{0}",
            role.name
        ))),
    }
}

/// `verify`: consumes the OTP. Of any number of concurrent calls with one
/// OTP — on one server or several sharing PostgreSQL — exactly one gets it,
/// because the delete itself decides.
/// `verify_host` is the enrolled host whose token the caller presented, if
/// any: a bound OTP verifies only for its own host, and a host presenting its
/// token verifies only OTPs bound to it.
pub async fn verify(
    core: &Core,
    m: &Mount,
    otp: &str,
    verify_host: Option<&str>,
    now: i64,
) -> Result<Option<Verified>> {
    if otp == VERIFY_ECHO_REQUEST {
        return Ok(Some(Verified::echo()));
    }
    // Anything not shaped like a UUID was never issued: no storage round trip.
    let Ok(uuid) = uuid::Uuid::parse_str(otp) else {
        return Ok(None);
    };
    let key = otp_key(m, verify_host, &uuid, &core.hasher.hash(otp));
    // The take decides: of concurrent verifications one gets the entry,
    // and its lease goes in the same transaction, named by the entry
    // itself, so no read comes before the write (that read, of a page the
    // last commit had made stale, cost each verify a trip to the file).
    // OTP leases are not renewable, so the entry's expiry is the lease's.
    let Some(entry) = core
        .storage
        .take_with(&key, |e: OtpEntry| {
            leases::keys_of(&e.lease_id, e.expire_time, e.token.as_deref())
        })
        .await?
    else {
        return Ok(None);
    };
    if entry.expire_time <= now {
        return Ok(None);
    }
    Ok(Some(Verified::Otp(OtpInfo {
        username: entry.username,
        ip: entry.ip,
        role_name: entry.role_name,
    })))
}

/// `lookup {ip}`: the OTP and dynamic roles that may serve an IP.
pub async fn lookup(core: &Core, m: &Mount, ip_text: &str) -> Result<Vec<String>> {
    let ip: IpAddr = crate::request::parse_ip(ip_text)
        .map_err(|_| Error::invalid(format!("ip {ip_text:?} is not an IPv4 or IPv6 address")))?;
    let zero = zero_address_roles(core, m).await?;
    let mut out = Vec::new();
    for name in super::roles::list(core, m).await? {
        if let Some(r) = super::roles::read(core, m, &name).await? {
            if r.key_type != KeyType::Ca && ip_allowed(&r, ip, &zero).is_ok() {
                out.push(name);
            }
        }
    }
    Ok(out)
}

/// Whether a lease's secret (`Lease::secret_key`) is a dynamic key.
pub fn is_dynamic_key(secret_key: &str) -> bool {
    secret_key.contains("/dynkey/")
}

/// Dynamic keys waiting to be (or installed) on hosts, for hostd.
pub async fn dynamic_keys(core: &Core, m: &Mount, now: i64) -> Result<Vec<DynamicKey>> {
    let mut out = Vec::new();
    for k in core
        .storage
        .keys_with_prefix(&format!("{}dynkey/", m.data_prefix()))
        .await?
    {
        if let Some(d) = core.storage.get::<DynamicKey>(&k).await? {
            if d.expire_time > now {
                out.push(d);
            }
        }
    }
    Ok(out)
}

/// Keeps a dynamic key's expiry in step with its renewed lease. Changed in
/// storage rather than written back from a copy: a key whose lease was
/// revoked meanwhile stays gone from its host.
pub async fn renewed(core: &Core, lease: &Lease) -> Result<()> {
    if is_dynamic_key(&lease.secret_key) {
        core.storage
            .update(&lease.secret_key, |mut d: DynamicKey| {
                d.expire_time = lease.expire_time;
                Ok((Change::Put(d), ()))
            })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otps_carry_their_millisecond_and_random_bits_not_a_counter() {
        let before = uuid::Timestamp::now(uuid::NoContext).to_unix().0;
        let otps: Vec<uuid::Uuid> = (0..1000).map(|_| new_otp()).collect();
        let after = uuid::Timestamp::now(uuid::NoContext).to_unix().0;
        let mut distinct = otps.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), otps.len(), "an OTP repeated");
        for o in &otps {
            assert_eq!(o.get_version_num(), 7, "{o}");
            let (secs, _) = o.get_timestamp().expect("a v7 timestamp").to_unix();
            assert!((before..=after).contains(&secs), "{o}");
        }
        // A counter (as `Uuid::now_v7` keeps) would make every OTP sort
        // after the one issued before it; 1000 random tails issued within a
        // few milliseconds do not come out sorted.
        assert!(
            otps.windows(2).any(|w| w[1] < w[0]),
            "successive OTPs are in order: their tails count, not random"
        );
    }

    #[test]
    fn an_otp_is_stored_under_its_millisecond_and_an_older_one_where_it_was() {
        let m = Mount {
            path: "ssh".into(),
            kind: "ssh".into(),
            description: String::new(),
            accessor: "ssh_1".into(),
            uuid: "u1".into(),
            created: 0,
            tune: Default::default(),
        };
        let v7 = uuid::Uuid::parse_str("019ae9d1-5c8a-7e3b-9f10-2a4b6c8d0e1f").unwrap();
        assert_eq!(otp_key(&m, None, &v7, "h"), "mount/u1/otp/-/019ae9d15c8a/h");
        let v4 = uuid::Uuid::parse_str("2f1c3a6e-8d4b-4c2a-9e7f-1b3d5f7a9c0e").unwrap();
        assert_eq!(
            otp_key(&m, Some("host-1"), &v4, "h"),
            "mount/u1/otp/host-1/h"
        );
    }
}
