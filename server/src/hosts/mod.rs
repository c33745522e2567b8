//! Hosts: join tokens, enrollment, each host's desired state (served by
//! long-poll, [`state`]), host-key signing, acknowledgements, and login
//! mappings; the host token's policy is in [`policy`]. The wire types are
//! `gatepass_api::hosts`, the routes `crate::http::hosts`; hostd is the
//! other side.
//!
//! A host's state is computed from the data it depends on (its user CA's
//! keys and KRL, the login mappings, dynamic keys for its addresses), and
//! its `index` is a hash of that content: any server sharing the database
//! gives the same index for the same state, with no counters to keep.

use std::collections::BTreeMap;
use std::net::IpAddr;

use gatepass_api::hosts::{
    Ack, Drift, EnrollRequest, Enrolled, HostInfo, JoinToken, JoinTokenInfo, JoinTokenList,
    Mapping, NewJoinToken, SignHostKey, SignedHostKey,
};
use serde::{Deserialize, Serialize};

use crate::auth::token::{self, NewToken, TokenEntry};
use crate::error::{Error, Result};
use crate::ssh::{self, certs, principal::Principal, sign};
use crate::state::Core;
use crate::storage::Change;
use crate::{duration, mounts};

pub mod applied;
pub mod cache;
pub mod notes;
pub mod policy;
pub mod seen;
mod state;

pub use cache::StateCache;
pub use policy::{HOST_POLICY, HOST_POLICY_FORMER_TEXTS, HOST_POLICY_TEXT};
pub use state::{poll_state, state};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct JoinEntry {
    accessor: String,
    expire_time: i64,
    /// Uses left; 0 means unlimited until expiry.
    uses_left: i64,
    config: HostConfig,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HostConfig {
    pub user_mount: String,
    pub host_mount: Option<String>,
    pub host_role: Option<String>,
    /// "mapped" or "default".
    pub principals: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Host {
    pub id: String,
    pub hostname: String,
    pub addresses: Vec<IpAddr>,
    pub host_keys: Vec<String>,
    pub enrolled: i64,
    /// Set at enrollment; later times are kept beside the record (see
    /// [`seen`]), as servers before them wrote here.
    pub last_seen: i64,
    pub token_accessor: String,
    pub config: HostConfig,
    /// The state index the host last acknowledged applying, as servers
    /// stored it before acknowledgements were kept beside the record
    /// (`hosts/applied/<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
    /// The last files the host found changed by someone else and repaired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftRecord>,
}

/// Files a host reported repairing, and when the server heard of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftRecord {
    pub paths: Vec<String>,
    pub time: i64,
}

/// Most paths one acknowledgement may report as repaired: hostd manages a
/// handful of files and one principals file per mapped user.
const MAX_DRIFT_PATHS: usize = 1024;
/// Most dynamic keys one acknowledgement marks installed.
const MAX_INSTALLED_MARKS: usize = 4096;
/// Longest path a host may report (Linux's PATH_MAX).
const MAX_DRIFT_PATH_LEN: usize = 4096;

fn host_key(id: &str) -> String {
    format!("hosts/host/{id}")
}
/// The name index: which host holds a host name. Host names are unique per
/// server, so `creds host=NAME` always means one host.
fn name_key(hostname: &str) -> String {
    format!("hosts/name/{}", hostname.to_ascii_lowercase())
}
fn join_key(hash: &str) -> String {
    format!("hosts/join/{hash}")
}
fn mapping_key(user: &str) -> String {
    format!("hosts/mapping/{user}")
}
/// Where versions before the mark moved onto the key's record kept it.
const OLD_INSTALLED_MARKS: &str = "hosts/installed/";

/// Local user names as Linux's useradd allows them.
pub fn validate_local_user(u: &str) -> Result<()> {
    let ok = !u.is_empty()
        && u.len() <= 32
        && u.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && u.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{u:?} is not a valid local user name"
        )))
    }
}

/// Whether `id_or_name` can name a host: a host ID or a valid host name.
pub fn is_host_ref(id_or_name: &str) -> bool {
    uuid::Uuid::parse_str(id_or_name).is_ok() || validate_hostname(id_or_name).is_ok()
}

fn validate_hostname(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("{h:?} is not a valid host name")))
    }
}

async fn require_mount(core: &Core, path: &str) -> Result<mounts::Mount> {
    mounts::get(core, path)
        .await?
        .ok_or_else(|| Error::invalid(format!("no ssh mount at {path:?}")))
}

pub async fn new_join_token(core: &Core, spec: NewJoinToken, now: i64) -> Result<JoinToken> {
    let ttl = match &spec.ttl {
        Some(t) => duration::parse(t)
            .ok_or_else(|| Error::invalid(format!("ttl {t:?} is not a duration")))?,
        None => 3600,
    };
    if ttl <= 0 {
        return Err(Error::invalid("ttl must be positive"));
    }
    let uses = spec.num_uses.unwrap_or(1);
    if uses < 0 {
        return Err(Error::invalid("num_uses must not be negative"));
    }
    let user_mount = spec.user_mount.unwrap_or_else(|| "ssh".into());
    require_mount(core, &user_mount).await?;
    if spec.host_mount.is_some() != spec.host_role.is_some() {
        return Err(Error::invalid("host_mount and host_role go together"));
    }
    if let (Some(hm), Some(hr)) = (&spec.host_mount, &spec.host_role) {
        let m = require_mount(core, hm).await?;
        let role = ssh::ca_role(core, &m, hr).await?;
        if !role.allow_host_certificates {
            return Err(Error::invalid(format!(
                "role {hr} does not allow host certificates"
            )));
        }
    }
    let principals = spec.principals.unwrap_or_else(|| "default".into());
    if principals != "default" && principals != "mapped" {
        return Err(Error::invalid(
            "principals must be \"default\" or \"mapped\"",
        ));
    }
    let text = format!("gpj.{}", crate::auth::random_text(40));
    let entry = JoinEntry {
        accessor: crate::auth::random_text(24),
        expire_time: now + ttl,
        uses_left: uses,
        config: HostConfig {
            user_mount,
            host_mount: spec.host_mount,
            host_role: spec.host_role,
            principals,
        },
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

/// A host name's holder, written before the host record exists.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct NameClaim {
    host_id: String,
    since: i64,
}

/// A claim whose host record never appeared this long after (the enrolling
/// server stopped half-way) no longer holds the name.
const STALE_CLAIM: i64 = 300;

/// Claims `hostname` for the host `id`. A name held by another host is
/// refused, unless `replace`: then that host is unenrolled (its token
/// revoked) and the name passes to `id`. Of concurrent claimants of a free
/// name exactly one wins (the insert only succeeds on a free key).
async fn claim_name(core: &Core, hostname: &str, id: &str, replace: bool, now: i64) -> Result<()> {
    let key = name_key(hostname);
    let claim = NameClaim {
        host_id: id.to_string(),
        since: now,
    };
    for _ in 0..8 {
        if core.storage.put_if_absent(&key, &claim).await? {
            return Ok(());
        }
        let Some(held) = core.storage.get::<NameClaim>(&key).await? else {
            continue;
        };
        let holder = core.storage.get::<Host>(&host_key(&held.host_id)).await?;
        let stale = holder.is_none() && now - held.since >= STALE_CLAIM;
        if holder.is_none() && !stale {
            return Err(Error::invalid(format!(
                "host name {hostname:?} is being enrolled right now; try again later"
            )));
        }
        if !replace && !stale {
            return Err(Error::invalid(format!(
                "host name {hostname:?} is already enrolled (host {}); unenroll that host first, or enroll with replace=true to take its place",
                held.host_id
            )));
        }
        // Whoever takes the claim removes the host that held it; a claim
        // that changed hands meanwhile goes back to its holder.
        if let Some(taken) = core.storage.take::<NameClaim>(&key).await? {
            if taken.host_id != held.host_id {
                core.storage.put_if_absent(&key, &taken).await?;
                continue;
            }
            if let Some(old) = core.storage.get::<Host>(&host_key(&taken.host_id)).await? {
                remove_host(core, &old, now).await?;
            }
        }
    }
    Err(Error::invalid(format!(
        "host name {hostname:?} is being enrolled concurrently; try again"
    )))
}

/// Gives up a name claim, unless it has passed to another host meanwhile.
async fn release_name(core: &Core, hostname: &str, id: &str) -> Result<()> {
    let key = name_key(hostname);
    if let Some(held) = core.storage.take::<NameClaim>(&key).await? {
        if held.host_id != id {
            core.storage.put_if_absent(&key, &held).await?;
        }
    }
    Ok(())
}

/// The join tokens not yet spent or expired, soonest to expire first.
/// Join tokens are few (an operator makes one per enrollment batch), so
/// they are read whole.
pub async fn join_tokens(core: &Core, now: i64) -> Result<JoinTokenList> {
    let mut infos = Vec::new();
    for k in core.storage.keys_with_prefix("hosts/join/").await? {
        if let Some(e) = core.storage.get::<JoinEntry>(&k).await? {
            if e.expire_time > now {
                infos.push(JoinTokenInfo {
                    accessor: e.accessor,
                    expire_time: e.expire_time,
                    uses_left: e.uses_left,
                    user_mount: e.config.user_mount,
                    host_mount: e.config.host_mount,
                    host_role: e.config.host_role,
                    principals: e.config.principals,
                });
            }
        }
    }
    infos.sort_by(|a, b| (a.expire_time, &a.accessor).cmp(&(b.expire_time, &b.accessor)));
    Ok(JoinTokenList {
        keys: infos.iter().map(|i| i.accessor.clone()).collect(),
        key_info: infos.into_iter().map(|i| (i.accessor.clone(), i)).collect(),
    })
}

/// Revokes the join token with this accessor: no host enrolls with it any
/// more. Hosts already enrolled with it keep their own tokens.
pub async fn revoke_join_token(core: &Core, accessor: &str) -> Result<()> {
    for k in core.storage.keys_with_prefix("hosts/join/").await? {
        if let Some(e) = core.storage.get::<JoinEntry>(&k).await? {
            if e.accessor == accessor {
                core.storage.delete(&k).await?;
                return Ok(());
            }
        }
    }
    Err(Error::invalid(format!(
        "no join token with accessor {accessor:?}"
    )))
}

/// Checks a join token without spending it.
async fn peek_join_token(core: &Core, text: &str, now: i64) -> Result<JoinEntry> {
    core.storage
        .get::<JoinEntry>(&join_key(&core.hasher.hash(text)))
        .await?
        .filter(|e| e.expire_time > now)
        .ok_or_else(|| Error::invalid("invalid or expired join token"))
}

/// Spends one use of a join token; the last use deletes it atomically, so
/// a one-use token enrolls exactly one host.
async fn spend_join_token(core: &Core, text: &str, now: i64) -> Result<JoinEntry> {
    let invalid = || Error::invalid("invalid or expired join token");
    let key = join_key(&core.hasher.hash(text));
    let e: JoinEntry = core.storage.get(&key).await?.ok_or_else(invalid)?;
    if e.expire_time <= now {
        core.storage.delete(&key).await?;
        return Err(invalid());
    }
    if e.uses_left == 0 {
        return Ok(e);
    }
    // Spent in storage, not on the copy read above: of any number of
    // concurrent enrollments, on any server, exactly num_uses succeed.
    core.storage
        .update(&key, |mut e: JoinEntry| {
            Ok(match e.uses_left {
                0 => (Change::Keep, e),
                1 => (Change::Delete, e),
                n => {
                    e.uses_left = n - 1;
                    (Change::Put(e.clone()), e)
                }
            })
        })
        .await?
        .ok_or_else(invalid)
}

pub async fn enroll(core: &Core, r: EnrollRequest, now: i64) -> Result<Enrolled> {
    validate_hostname(&r.hostname)?;
    let addresses: Vec<IpAddr> = r
        .addresses
        .iter()
        .map(|a| {
            crate::request::parse_ip(a)
                .map_err(|_| Error::invalid(format!("{a:?} is not an IP address")))
        })
        .collect::<Result<_>>()?;
    if r.host_keys.len() > 16 || addresses.len() > 256 {
        return Err(Error::invalid("too many host keys or addresses"));
    }
    let host_keys: Vec<String> = r
        .host_keys
        .iter()
        .map(|k| {
            sign::parse_public_key(k)
                .and_then(|k| k.to_openssh().map_err(|e| Error::invalid(e.to_string())))
        })
        .collect::<Result<_>>()?;
    // Without `replace`, a taken name is refused before the join token is
    // spent, so the operator can unenroll the old host and retry with the
    // same token; the join token is checked first so that only its holders
    // learn which names are taken.
    let id = uuid::Uuid::new_v4().to_string();
    let join = if r.replace {
        // Taking a name removes the host that held it: only a use of the
        // join token already spent does that, so one use cannot remove
        // the holders of many names by enrollments racing each other (a
        // claim refused after it, a name being enrolled right then, costs
        // that use).
        let join = spend_join_token(core, &r.join_token, now).await?;
        claim_name(core, &r.hostname, &id, true, now).await?;
        join
    } else {
        peek_join_token(core, &r.join_token, now).await?;
        claim_name(core, &r.hostname, &id, false, now).await?;
        match spend_join_token(core, &r.join_token, now).await {
            Ok(j) => j,
            Err(e) => {
                release_name(core, &r.hostname, &id).await?;
                return Err(e);
            }
        }
    };
    let token::Issued {
        text, entry: tok, ..
    } = token::create(
        core,
        NewToken {
            policies: vec![HOST_POLICY.into()],
            no_default_policy: true,
            ttl: Some(token::SYSTEM_MAX_TTL),
            renewable: true,
            periodic: true,
            display_name: format!("host-{}", r.hostname),
            meta: BTreeMap::from([("hostname".to_string(), r.hostname.clone())]),
            host_id: Some(id.clone()),
            path: "hosts/enroll".into(),
            ..NewToken::default()
        },
        now,
    )
    .await?;
    let host = Host {
        id: id.clone(),
        hostname: r.hostname,
        addresses,
        host_keys,
        enrolled: now,
        last_seen: now,
        token_accessor: tok.accessor,
        config: join.config.clone(),
        applied_index: None,
        drift: None,
    };
    core.storage.put(&host_key(&id), &host).await?;
    Ok(Enrolled {
        host_id: id,
        host_token: text,
        user_mount: join.config.user_mount,
        host_mount: join.config.host_mount,
        host_role: join.config.host_role,
        principals: join.config.principals,
    })
}

/// A host as the API shows it, with the state index it would be handed
/// now (beside the one it last applied). Its bookkeeping is read from
/// beside the record: the newest last-seen time ([`seen::last_seen`]) and
/// the state it last acknowledged.
pub async fn host_detail(core: &Core, h: &Host, now: i64) -> Result<HostInfo> {
    let current = state(core, h, now).await?;
    let last_seen = seen::last_seen(core, &h.id, h.last_seen).await?;
    let applied = applied::last(core, h).await?;
    Ok(HostInfo {
        state_index: Some(current.state.index),
        last_seen: crate::clock::rfc3339(last_seen),
        applied_index: applied,
        ..host_info(h)
    })
}

pub fn host_info(h: &Host) -> HostInfo {
    HostInfo {
        host_id: h.id.clone(),
        hostname: h.hostname.clone(),
        addresses: h.addresses.iter().map(|a| a.to_string()).collect(),
        host_keys: h.host_keys.clone(),
        enrolled: crate::clock::rfc3339(h.enrolled),
        last_seen: crate::clock::rfc3339(h.last_seen),
        user_mount: h.config.user_mount.clone(),
        host_mount: h.config.host_mount.clone(),
        host_role: h.config.host_role.clone(),
        principals: h.config.principals.clone(),
        applied_index: h.applied_index,
        state_index: None,
        drift: h.drift.as_ref().map(|d| Drift {
            paths: d.paths.clone(),
            time: crate::clock::rfc3339(d.time),
        }),
    }
}

/// An enrolled host by ID or hostname (through the name index: one host
/// per name).
pub async fn find(core: &Core, id_or_name: &str) -> Result<Option<Host>> {
    if uuid::Uuid::parse_str(id_or_name).is_ok() {
        if let Some(h) = core.storage.get::<Host>(&host_key(id_or_name)).await? {
            return Ok(Some(h));
        }
    }
    if validate_hostname(id_or_name).is_err() {
        return Ok(None);
    }
    let Some(claim) = core.storage.get::<NameClaim>(&name_key(id_or_name)).await? else {
        return Ok(None);
    };
    core.storage.get::<Host>(&host_key(&claim.host_id)).await
}

/// Brings data from before the name index and token host binding up to
/// date, once per database: each host's name is indexed (of hosts sharing
/// a name, the first enrolled keeps it) and its token bound to it, taken
/// from the host record, never from token metadata. Marks of installed
/// keys an older version kept apart are removed at every start.
pub async fn migrate(core: &Core) -> Result<()> {
    // Marks of installed keys kept apart by older versions, which nothing
    // removed: the marks are now on the keys' records.
    let old_marks = core.storage.keys_with_prefix(OLD_INSTALLED_MARKS).await?;
    for marks in old_marks.chunks(256) {
        core.storage.delete_many(marks).await?;
    }
    const DONE: &str = "hosts/migrated/name-index";
    if core.storage.get::<i64>(DONE).await?.is_some() {
        return Ok(());
    }
    let now = core.clock.now();
    let mut hosts = Vec::new();
    for k in core.storage.keys_with_prefix("hosts/host/").await? {
        if let Some(h) = core.storage.get::<Host>(&k).await? {
            hosts.push(h);
        }
    }
    hosts.sort_by_key(|h| h.enrolled);
    for h in &hosts {
        let claim = NameClaim {
            host_id: h.id.clone(),
            since: h.enrolled,
        };
        core.storage
            .put_if_absent(&name_key(&h.hostname), &claim)
            .await?;
        if let Some(t) = token::lookup_accessor(core, &h.token_accessor, now).await? {
            if t.host_id.is_none() {
                token::bind_host(core, t, &h.id).await?;
            }
        }
    }
    core.storage.put(DONE, &now).await
}

/// The host a host token belongs to.
pub async fn own_host(core: &Core, caller: Option<&TokenEntry>) -> Result<std::sync::Arc<Host>> {
    let id = caller
        .and_then(|c| c.host_id.as_ref())
        .ok_or_else(|| Error::invalid("this path needs a host token (from hosts/enroll)"))?;
    core.storage
        .get_host_record(&host_key(id))
        .await?
        .ok_or_else(|| Error::invalid("this host is no longer enrolled"))
}

pub async fn mappings(core: &Core) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for k in core.storage.keys_with_prefix("hosts/mapping/").await? {
        if let Some(m) = core.storage.get::<Mapping>(&k).await? {
            out.insert(k["hosts/mapping/".len()..].to_string(), m.principals);
        }
    }
    Ok(out)
}

pub async fn sign_host_key(
    core: &Core,
    host: &Host,
    r: &SignHostKey,
    now: i64,
) -> Result<SignedHostKey> {
    let key = sign::parse_public_key(&r.public_key)?;
    let text = key
        .to_openssh()
        .map_err(|e| Error::internal(e.to_string()))?;
    // A host gets certificates only for the keys it enrolled with.
    if !host
        .host_keys
        .iter()
        .any(|k| k.split_whitespace().nth(1) == text.split_whitespace().nth(1))
    {
        return Err(Error::invalid(
            "this key is not one of the host keys this host enrolled with",
        ));
    }
    let (Some(mount), Some(role_name)) = (&host.config.host_mount, &host.config.host_role) else {
        return Err(Error::invalid(
            "no host_mount/host_role was set for this host at enrollment",
        ));
    };
    let m = require_mount(core, mount).await?;
    let role = ssh::ca_role(core, &m, role_name).await?;
    let mut names = vec![host.hostname.clone()];
    names.extend(host.addresses.iter().map(|a| a.to_string()));
    let principals: Vec<Principal> = names
        .iter()
        .filter(|n| sign::host_principal_allowed(&role, n))
        .map(|n| Principal::new(n))
        .collect::<Result<_>>()?;
    if principals.is_empty() {
        return Err(Error::invalid(format!(
            "role {role_name} allows none of this host's names ({})",
            names.join(", ")
        )));
    }
    let input = sign::SignInput {
        public_key: key,
        cert_type: ssh_key::certificate::CertType::Host,
        valid_principals: principals,
        ttl: None,
        key_id: None,
        critical_options: Default::default(),
        extensions: Default::default(),
    };
    let who = sign::Requester {
        display_name: format!("host-{}", host.hostname),
        meta: Default::default(),
        entity: None,
    };
    let (rec, cert) = ssh::issue_with(core, &m, role_name, &input, &who, now).await?;
    Ok(SignedHostKey {
        signed_key: format!(
            "{}\n",
            cert.to_openssh()
                .map_err(|e| Error::internal(e.to_string()))?
        ),
        serial_number: certs::serial_hex(rec.serial),
        valid_before: rec.valid_before as i64,
        valid_after: rec.valid_after as i64,
    })
}

/// Whether a host has acknowledged installing a dynamic key's lease.
pub async fn installed(core: &Core, lease_id: &str) -> Result<bool> {
    let Some(lease) = crate::leases::get(core, lease_id).await? else {
        return Ok(false);
    };
    Ok(core
        .storage
        .get::<crate::ssh::creds::DynamicKey>(&lease.secret_key)
        .await?
        .is_some_and(|k| k.installed_on.is_some()))
}

/// Marks a dynamic key installed, on its own record, when it is one meant
/// for `host` (asked for it by name, or else for one of its addresses): a
/// host token cannot mark another host's keys, nor store marks of its own
/// making, and the mark goes when the key is revoked or expires.
async fn mark_installed(core: &Core, host: &Host, lease_id: &str) -> Result<()> {
    crate::leases::check_id(lease_id)?;
    let Some(lease) = crate::leases::get(core, lease_id).await? else {
        return Ok(());
    };
    if !crate::ssh::creds::is_dynamic_key(&lease.secret_key) {
        return Ok(());
    }
    core.storage
        .update(&lease.secret_key, |mut k: crate::ssh::creds::DynamicKey| {
            let for_host =
                cache::Meant::new(k.host_id.clone(), &k.ip).is_for(&host.id, &host.addresses);
            if !for_host || k.installed_on.as_deref() == Some(host.id.as_str()) {
                return Ok((Change::Keep, ()));
            }
            k.installed_on = Some(host.id.clone());
            Ok((Change::Put(k), ()))
        })
        .await?;
    Ok(())
}

/// Removes a host and its name, and revokes its token.
pub async fn unenroll(core: &Core, host: &Host, now: i64) -> Result<()> {
    remove_host(core, host, now).await?;
    release_name(core, &host.hostname, &host.id).await
}

/// Removes a host record and revokes its token, leaving the name index to
/// the caller.
async fn remove_host(core: &Core, host: &Host, now: i64) -> Result<()> {
    if let Some(t) = token::lookup_accessor(core, &host.token_accessor, now).await? {
        token::revoke(core, &t, false).await?;
    }
    core.storage.delete(&host_key(&host.id)).await?;
    // Only after the record is gone: its bookkeeping is written only
    // beside it (`Storage::put_beside`), so none comes back after this.
    core.storage
        .delete_many(&[seen::seen_key(&host.id), applied::applied_key(&host.id)])
        .await?;
    core.hosts_seen.forget(&host.id);
    core.hosts_applied.forget(&host.id);
    Ok(())
}

/// Records that a host asked for its state: in memory, written with the
/// others' by the next [`seen::flush`], at most once a minute per host.
/// Nothing is read or written here: a poll costs its host no storage.
pub fn seen(core: &Core, host: &Host, now: i64) {
    if core.hosts_seen.note(&host.id, host.last_seen, now) {
        core.metrics.host_bookkeeping("seen_noted");
    }
}

/// Records the dynamic keys a host reports installed, the state index it
/// applied and the files it repaired (the request itself is in the audit
/// log, so each repair is on the record there too).
pub async fn ack(core: &Core, host: &Host, ack: &Ack, now: i64) -> Result<()> {
    let drift = checked_drift(&ack.drift)?;
    // Each costs a read: a host token's request is bounded, not its body.
    // hostd lists every key it holds, so more are left unmarked, not
    // refused (a refused acknowledgement would be sent again and again).
    let mut seen = std::collections::HashSet::new();
    for lease in ack
        .installed
        .iter()
        .filter(|l| seen.insert(l.as_str()))
        .take(MAX_INSTALLED_MARKS)
    {
        mark_installed(core, host, lease).await?;
    }
    store_ack(core, &host.id, ack.index, drift, now).await
}

/// The repaired paths a host reports, refused when they could not be paths
/// hostd wrote (so the hosts page shows nothing odd).
fn checked_drift(paths: &[String]) -> Result<Vec<String>> {
    if paths.len() > MAX_DRIFT_PATHS {
        return Err(Error::invalid(format!(
            "drift lists {} paths; at most {MAX_DRIFT_PATHS}",
            paths.len()
        )));
    }
    for p in paths {
        if !p.starts_with('/') || p.len() > MAX_DRIFT_PATH_LEN || p.chars().any(char::is_control) {
            return Err(Error::invalid(format!(
                "drift: {p:?} is not an absolute path"
            )));
        }
    }
    Ok(paths.to_vec())
}

/// Stores the state index a host applied beside its record, committed
/// before the acknowledgement is answered ([`applied::store`]); what it
/// repaired, rarely anything, goes into the record.
async fn store_ack(core: &Core, id: &str, index: u64, drift: Vec<String>, now: i64) -> Result<()> {
    if !drift.is_empty() {
        core.storage
            .update(&host_key(id), |mut h: Host| {
                h.drift = Some(DriftRecord {
                    paths: drift.clone(),
                    time: now,
                });
                Ok((Change::Put(h), ()))
            })
            .await?
            .ok_or_else(|| Error::invalid("this host is no longer enrolled"))?;
    }
    applied::store(core, id, index, now).await
}

/// How long a host may go without asking for its state before it counts
/// as out of sync. hostd long-polls for at most a minute at a time and a
/// host's `last_seen` moves at most once a minute, so a host that follows
/// its state is never more than about two minutes behind; five leaves room
/// for a restart, and past it the host may be missing a KRL or CA key.
pub const SYNC_GRACE_SECS: i64 = 300;

/// Whether a host last seen at `last_seen` has stopped following its state.
pub fn out_of_sync(last_seen: i64, now: i64) -> bool {
    now - last_seen > SYNC_GRACE_SECS
}

/// The IDs of the enrolled hosts.
pub async fn list(core: &Core) -> Result<Vec<String>> {
    core.storage.list("hosts/host/").await
}

pub async fn mapping(core: &Core, user: &str) -> Result<Option<Mapping>> {
    validate_local_user(user)?;
    core.storage.get::<Mapping>(&mapping_key(user)).await
}

pub async fn set_mapping(core: &Core, user: &str, mapping: &Mapping) -> Result<()> {
    validate_local_user(user)?;
    for p in &mapping.principals {
        Principal::new(p)?;
    }
    core.storage.put(&mapping_key(user), mapping).await
}

pub async fn delete_mapping(core: &Core, user: &str) -> Result<()> {
    validate_local_user(user)?;
    core.storage.delete(&mapping_key(user)).await?;
    Ok(())
}
