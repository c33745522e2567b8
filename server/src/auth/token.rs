//! Tokens: Vault's `auth/token/*`. A token is stored only under its keyed
//! hash; its accessor (a second, non-secret handle) points to that hash.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use gatepass_api::{Auth, TokenInfo};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::policies;
use crate::request::Fields;
use crate::state::Core;
use crate::storage::Change;

/// Vault's default and maximum token lifetime (768h).
pub use crate::tune::SYSTEM_MAX_TTL;

/// The path of a web UI session's token made from a token given at
/// sign-in (a child of it, which the person never holds): on the audit
/// record, and how such a token is told from others.
pub const UI_SESSION_PATH: &str = "ui/login/token";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenEntry {
    /// Keyed hash of the token: the storage id.
    pub hash: String,
    pub accessor: String,
    pub policies: Vec<String>,
    /// Accessor of the parent token; children die with their parent.
    pub parent: Option<String>,
    pub display_name: String,
    pub meta: BTreeMap<String, String>,
    pub creation_time: i64,
    pub creation_ttl: i64,
    /// None: never expires (root tokens).
    pub expire_time: Option<i64>,
    pub explicit_max_ttl: i64,
    /// The latest renewal may reach.
    pub max_expire: Option<i64>,
    /// Uses left; 0 means unlimited, -1 that the last use was taken (the
    /// token is being revoked and serves no further request).
    pub num_uses: i64,
    pub renewable: bool,
    pub path: String,
    pub bound_cidrs: Vec<ipnet::IpNet>,
    pub orphan: bool,
    /// The enrolled host this token belongs to. Only enrollment sets it (no
    /// API input reaches it), so it is the one thing that says "this caller
    /// is host X"; `meta` is free text a token creator chooses.
    #[serde(default)]
    pub host_id: Option<String>,
    /// The enrolled PAM gateway this token belongs to (by name); set only
    /// by gateway enrollment, like `host_id`.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Seconds; a periodic token (Vault's `period`) gets this TTL at
    /// creation and at every renewal, with no maximum but its
    /// `explicit_max_ttl` and its creator's expiry. 0: not periodic.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub period: i64,
    /// The identity entity of the person this token was issued to (logins
    /// through an OIDC or JWT mount); children inherit it, as in Vault.
    /// Only logins set it, so it cannot be claimed by a token creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// The userpass user whose login made this token, by name and the id
    /// the user was created with, so that a user deleted and made again
    /// under the same name is someone else. Only the login sets it, and
    /// children do not inherit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_user: Option<String>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl TokenEntry {
    pub fn is_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root")
    }

    pub fn ttl(&self, now: i64) -> i64 {
        self.expire_time.map(|e| (e - now).max(0)).unwrap_or(0)
    }

    fn expired(&self, now: i64) -> bool {
        self.expire_time.is_some_and(|e| e <= now)
    }

    /// The last of its uses was taken.
    fn used_up(&self) -> bool {
        self.num_uses < 0
    }
}

/// Takes one use of a limited token, in storage. None when there is none
/// left (or the token is gone).
fn spend_use(mut e: TokenEntry) -> Result<(Change<TokenEntry>, Option<TokenEntry>)> {
    Ok(match e.num_uses {
        n if n < 0 => (Change::Keep, None),
        0 => (Change::Keep, Some(e)),
        n => {
            // The last use leaves -1, not 0 (which would mean unlimited).
            e.num_uses = if n == 1 { -1 } else { n - 1 };
            (Change::Put(e.clone()), Some(e))
        }
    })
}

/// What a new token should be.
#[derive(Debug, Default)]
pub struct NewToken {
    /// A fixed token text (the dev server's `--root-token`); else random.
    pub id: Option<String>,
    pub policies: Vec<String>,
    pub no_default_policy: bool,
    pub ttl: Option<i64>,
    pub explicit_max_ttl: i64,
    pub num_uses: i64,
    pub renewable: bool,
    pub display_name: String,
    pub meta: BTreeMap<String, String>,
    pub bound_cidrs: Vec<ipnet::IpNet>,
    pub path: String,
    pub parent: Option<TokenEntry>,
    /// Renewable without a maximum (host tokens, renewed by hostd).
    pub periodic: bool,
    /// The latest the token may ever live to, whatever its TTL says: its
    /// creator's expiry, so no token outlives the one that made it.
    pub expire_limit: Option<i64>,
    /// Set by host enrollment only: see [`TokenEntry::host_id`].
    pub host_id: Option<String>,
    /// Set by gateway enrollment only: see [`TokenEntry::gateway`].
    pub gateway: Option<String>,
    /// Vault's `period` (seconds; 0: none): see [`TokenEntry::period`].
    pub period: i64,
    /// The issuing auth method's TTLs (`sys/auth/<path>/tune`): the TTL of
    /// a token that asks for none, and the most any may live; by default
    /// the system's.
    pub limits: crate::tune::TtlLimits,
    /// Set by logins only: see [`TokenEntry::entity_id`].
    pub entity_id: Option<String>,
    /// Set by the userpass login only: see [`TokenEntry::login_user`].
    pub login_user: Option<String>,
}

/// Metadata keys gatepass itself reads (identity templates, hosts) or that
/// name a host or gateway: only the server sets them, at login or
/// enrollment. A token creator choosing them could claim to be another
/// user, host or gateway.
pub const RESERVED_META: [&str; 5] = ["host_id", "hostname", "username", "role_name", "gateway"];

fn id_key(hash: &str) -> String {
    format!("token/id/{hash}")
}
fn accessor_key(accessor: &str) -> String {
    format!("token/accessor/{accessor}")
}
fn child_key(parent: &str, child: &str) -> String {
    format!("token/parent/{parent}/{child}")
}

/// The tokens' expiry index: `token-exp/<expiry, 16 hex>/<accessor>`, an
/// entry for each expiry a token was given (at creation, renewal, or when
/// brought forward). The sweeper ([`sweep_expired`]) revokes the tokens
/// whose time has come, with their children and leases: a token no one
/// presents again must not leave its OTPs working until their own TTL. A
/// renewed token's earlier entries are stale and only removed.
const EXPIRY_PREFIX: &str = "token-exp/";

fn expiry_key(at: i64, accessor: &str) -> String {
    format!("{EXPIRY_PREFIX}{:016x}/{accessor}", at.max(0))
}

/// Marks that tokens made before the expiry index have their entries.
const EXPIRY_INDEXED: &str = "token-exp-indexed";

#[derive(Serialize, Deserialize)]
struct AccessorEntry {
    hash: String,
}

/// A token just made: its text (shown once), its entry, and what its
/// answer tells of the request cut to the limits (Vault's warnings).
#[derive(Debug)]
pub struct Issued {
    pub text: String,
    pub entry: TokenEntry,
    pub warnings: Vec<String>,
}

/// Vault's warning for a TTL (or period, `what`) asked for beyond what the
/// token may live: `asked` cut to `got` seconds.
pub fn capped_warning(what: &str, asked: i64, got: i64) -> String {
    format!(
        "{what} of {:?} exceeded the effective max_ttl of {:?}; {what} value is capped accordingly",
        crate::duration::text(asked),
        crate::duration::text(got)
    )
}

/// [`create`] for a login (userpass, AppRole, JWT/OIDC): refuses a root
/// token, whatever the settings stored before this check came to be say.
pub async fn create_for_login(core: &Core, spec: NewToken, now: i64) -> Result<Issued> {
    if spec.policies.iter().any(|p| p == "root") {
        return Err(Error::invalid("auth methods cannot create root tokens"));
    }
    create(core, spec, now).await
}

/// Creates and stores a token.
pub async fn create(core: &Core, spec: NewToken, now: i64) -> Result<Issued> {
    let mut policies = spec.policies;
    let root = policies.iter().any(|p| p == "root");
    if !root && !spec.no_default_policy && !policies.iter().any(|p| p == "default") {
        policies.push("default".into());
    }
    policies.sort();
    policies.dedup();

    // A root token never expires unless asked to; others default to their
    // auth method's TTL (the system's unless tuned), never live past its
    // maximum, and a child never outlives its parent.
    let limits = spec.limits;
    let mut expire_time = match spec.ttl {
        _ if spec.period > 0 => Some(now + spec.period),
        Some(0) | None if root => None,
        Some(t) if t > 0 => Some(now + t.min(limits.max)),
        _ => Some(now + limits.default),
    };
    let mut max_expire = if (root && expire_time.is_none()) || spec.periodic || spec.period > 0 {
        None
    } else {
        Some(now + limits.max)
    };
    if spec.explicit_max_ttl > 0 {
        let m = now + spec.explicit_max_ttl;
        max_expire = Some(max_expire.map_or(m, |x| x.min(m)));
    }
    let limit = [
        spec.parent.as_ref().and_then(|p| p.expire_time),
        spec.expire_limit,
    ]
    .into_iter()
    .flatten()
    .min();
    if let Some(p) = limit {
        max_expire = Some(max_expire.map_or(p, |x| x.min(p)));
    }
    if let (Some(e), Some(m)) = (expire_time, max_expire) {
        expire_time = Some(e.min(m));
    }

    let text = match spec.id {
        Some(id) => id,
        None => format!("gps.{}", super::random_text(40)),
    };
    let hash = core.hasher.hash(&text);
    let entry = TokenEntry {
        hash: hash.clone(),
        accessor: super::random_text(24),
        policies,
        parent: spec.parent.as_ref().map(|p| p.accessor.clone()),
        display_name: spec.display_name,
        meta: spec.meta,
        creation_time: now,
        creation_ttl: expire_time.map(|e| e - now).unwrap_or(0),
        expire_time,
        explicit_max_ttl: match limit {
            Some(l) if spec.explicit_max_ttl > 0 => spec.explicit_max_ttl.min((l - now).max(0)),
            _ => spec.explicit_max_ttl,
        },
        max_expire,
        num_uses: spec.num_uses,
        renewable: spec.renewable && expire_time.is_some(),
        path: spec.path,
        bound_cidrs: spec.bound_cidrs,
        orphan: spec.parent.is_none(),
        host_id: spec.host_id,
        gateway: spec.gateway,
        period: spec.period,
        entity_id: spec
            .entity_id
            .or_else(|| spec.parent.as_ref().and_then(|p| p.entity_id.clone())),
        login_user: spec.login_user,
    };
    // The index entry first: one left by a failure below is stale, where
    // a token without one would be swept only when presented.
    if let Some(at) = entry.expire_time {
        core.storage
            .put(&expiry_key(at, &entry.accessor), &json!({}))
            .await?;
    }
    if !core.storage.put_if_absent(&id_key(&hash), &entry).await? {
        return Err(Error::invalid("a token with this id already exists"));
    }
    core.storage
        .put(&accessor_key(&entry.accessor), &AccessorEntry { hash })
        .await?;
    if let Some(parent) = &entry.parent {
        core.storage
            .put(&child_key(parent, &entry.accessor), &json!({}))
            .await?;
        // A parent revoked while this child was made may have listed its
        // children before the link above: the child goes too, as it would
        // have with its parent.
        if !is_live_accessor(core, parent).await? {
            revoke_tree(core, &entry).await?;
            return Err(Error::PermissionDenied);
        }
    }
    // A TTL asked for (by the request or the login's role) and cut to the
    // method's maximum, the explicit maximum or the creator's expiry.
    let warnings = match spec.ttl {
        Some(asked) if spec.period == 0 && asked > entry.creation_ttl && entry.creation_ttl > 0 => {
            vec![capped_warning("TTL", asked, entry.creation_ttl)]
        }
        _ => vec![],
    };
    Ok(Issued {
        text,
        entry,
        warnings,
    })
}

/// Keeps a lease just made for a token only if the token is still stored.
/// A lease made while its token was being revoked may have been written
/// after the revocation listed the token's leases: it goes now, as it
/// would have with its token. So does the lease of a token's last use
/// (revoked as the request began), and the secret is not returned, as in
/// Vault.
pub async fn keep_lease(core: &Core, lease: &crate::leases::Lease) -> Result<()> {
    if let Some(accessor) = &lease.token {
        if !is_live_accessor(core, accessor).await? {
            crate::leases::revoke(core, &lease.id).await?;
            return Err(Error::invalid(
                "secret cannot be returned: its token was revoked (it had one use left, or was revoked meanwhile), so the leased credentials were revoked at once",
            ));
        }
    }
    Ok(())
}

/// Sweeps expired tokens with their leases every 5 seconds, for the life
/// of the server, after giving the tokens made before the expiry index
/// their entries.
pub async fn sweeper(core: crate::state::State) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    let mut indexed = false;
    loop {
        tick.tick().await;
        if !indexed {
            match index_expiries(&core, core.clock.now()).await {
                Ok(n) => {
                    indexed = true;
                    if n > 0 {
                        tracing::info!(tokens = n, "tokens made before the expiry index indexed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "indexing the tokens' expiries failed"),
            }
        }
        loop {
            match sweep_expired(&core, core.clock.now(), 1000).await {
                Ok(1000) => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "sweep of expired tokens failed");
                    break;
                }
            }
        }
    }
}

/// Whether the token with this accessor is still stored (not revoked;
/// an expired one not yet swept counts as stored).
pub async fn is_live_accessor(core: &Core, accessor: &str) -> Result<bool> {
    Ok(core
        .storage
        .get::<AccessorEntry>(&accessor_key(accessor))
        .await?
        .is_some())
}

/// The live entry for a token text; expired tokens are removed on sight.
pub async fn lookup(core: &Core, text: &str, now: i64) -> Result<Option<TokenEntry>> {
    Ok(lookup_shared(core, text, now)
        .await?
        .map(|e| TokenEntry::clone(&e)))
}

/// [`lookup`], shared with the cache rather than copied: for a reader
/// that only looks at the entry.
pub async fn lookup_shared(core: &Core, text: &str, now: i64) -> Result<Option<Arc<TokenEntry>>> {
    load(core, &core.hasher.hash(text), now).await
}

/// The live entry, shared with the cache: every request reads its token
/// (a fleet's polls thousands a second), and parsing it again and copying
/// it for each was a visible share of what a poll cost.
async fn load(core: &Core, hash: &str, now: i64) -> Result<Option<Arc<TokenEntry>>> {
    match core.storage.get_shared::<TokenEntry>(&id_key(hash)).await? {
        // A used-up token is revoked by the request that took its last use;
        // whoever sees one left over (that request failed midway) finishes.
        Some(e) if e.expired(now) || e.used_up() => {
            revoke_tree(core, &e).await?;
            Ok(None)
        }
        other => Ok(other),
    }
}

pub async fn lookup_accessor(core: &Core, accessor: &str, now: i64) -> Result<Option<TokenEntry>> {
    match core
        .storage
        .get::<AccessorEntry>(&accessor_key(accessor))
        .await?
    {
        Some(a) => Ok(load(core, &a.hash, now)
            .await?
            .map(|e| TokenEntry::clone(&e))),
        None => Ok(None),
    }
}

/// Checks a presented token for a request: it exists, has not expired, is
/// used from an allowed address; counts one use.
pub async fn authenticate(
    core: &Core,
    text: Option<&str>,
    client_ip: Option<IpAddr>,
    now: i64,
) -> Result<Arc<TokenEntry>> {
    let text = text
        .filter(|t| !t.is_empty())
        .ok_or(Error::PermissionDenied)?;
    let mut entry = lookup_shared(core, text, now)
        .await?
        .ok_or(Error::PermissionDenied)?;
    if !entry.bound_cidrs.is_empty() {
        let ok = client_ip.is_some_and(|ip| entry.bound_cidrs.iter().any(|c| c.contains(&ip)));
        if !ok {
            return Err(Error::PermissionDenied);
        }
    }
    if entry.num_uses != 0 {
        // Spent in storage, not on the copy read above: of any number of
        // concurrent requests, on any server, exactly num_uses get a use.
        entry = Arc::new(
            core.storage
                .update(&id_key(&entry.hash), spend_use)
                .await?
                .flatten()
                .ok_or(Error::PermissionDenied)?,
        );
        if entry.used_up() {
            // Last use: the token goes now, but this request still runs.
            revoke_tree(core, &entry).await?;
        }
    }
    Ok(entry)
}

/// Revokes a token and every token created from it.
pub async fn revoke_tree(core: &Core, entry: &TokenEntry) -> Result<()> {
    // Iterative, so a deep chain of children cannot overflow the stack.
    let mut pending = vec![entry.accessor.clone()];
    while let Some(accessor) = pending.pop() {
        // The token goes first, and then what it made: a child or lease
        // made while this runs either is listed below or finds its maker
        // gone when it checks (`create`, `keep_lease`) and goes itself.
        forget(core, &accessor).await?;
        // Its leases go with it, as in Vault.
        crate::leases::revoke_for_token(core, &accessor).await?;
        let prefix = format!("token/parent/{accessor}/");
        for child in core.storage.keys_with_prefix(&prefix).await? {
            pending.push(child[prefix.len()..].to_string());
            core.storage.delete(&child).await?;
        }
    }
    if let Some(parent) = &entry.parent {
        core.storage
            .delete(&child_key(parent, &entry.accessor))
            .await?;
    }
    Ok(())
}

/// Deletes the token with this accessor (its accessor entry, its entry and
/// its entry in the expiry index), if it is still there.
async fn forget(core: &Core, accessor: &str) -> Result<()> {
    if let Some(a) = core
        .storage
        .take::<AccessorEntry>(&accessor_key(accessor))
        .await?
    {
        let gone = core.storage.take::<TokenEntry>(&id_key(&a.hash)).await?;
        if let Some(at) = gone.and_then(|e| e.expire_time) {
            core.storage.delete(&expiry_key(at, accessor)).await?;
        }
    }
    Ok(())
}

/// Revokes one token, making its children orphans.
async fn revoke_orphan(core: &Core, entry: &TokenEntry) -> Result<()> {
    // The token first, as in [`revoke_tree`]: a lease or child made while
    // this runs is listed below or finds the token gone and goes itself.
    forget(core, &entry.accessor).await?;
    crate::leases::revoke_for_token(core, &entry.accessor).await?;
    let prefix = format!("token/parent/{}/", entry.accessor);
    for child in core.storage.keys_with_prefix(&prefix).await? {
        core.storage.delete(&child).await?;
        let acc = &child[prefix.len()..];
        if let Some(a) = core
            .storage
            .get::<AccessorEntry>(&accessor_key(acc))
            .await?
        {
            // Changed in place, so that a use the child spends meanwhile
            // is not given back.
            core.storage
                .update(&id_key(&a.hash), |mut c: TokenEntry| {
                    c.parent = None;
                    c.orphan = true;
                    Ok((Change::Put(c), ()))
                })
                .await?;
        }
    }
    if let Some(parent) = &entry.parent {
        core.storage
            .delete(&child_key(parent, &entry.accessor))
            .await?;
    }
    Ok(())
}

/// The metadata shown for a token: its own, plus the host it belongs to.
fn shown_meta(e: &TokenEntry) -> Option<BTreeMap<String, String>> {
    let mut m = e.meta.clone();
    if let Some(h) = &e.host_id {
        m.insert("host_id".into(), h.clone());
    }
    if let Some(g) = &e.gateway {
        m.insert("gateway".into(), g.clone());
    }
    (!m.is_empty()).then_some(m)
}

/// The `auth` block of a login or create response.
pub fn auth(text: &str, e: &TokenEntry, now: i64) -> Auth {
    Auth {
        client_token: text.to_string(),
        accessor: e.accessor.clone(),
        policies: e.policies.clone(),
        token_policies: e.policies.clone(),
        identity_policies: None,
        metadata: shown_meta(e),
        lease_duration: e.ttl(now),
        renewable: e.renewable,
        entity_id: e.entity_id.clone().unwrap_or_default(),
        token_type: "service".into(),
        orphan: e.orphan,
        mfa_requirement: None,
        num_uses: e.num_uses.max(0),
    }
}

/// The `data` of a lookup response. `text` is the token when the caller
/// presented it, else empty (lookups by accessor).
pub fn info(text: &str, e: &TokenEntry, now: i64) -> TokenInfo {
    TokenInfo {
        accessor: e.accessor.clone(),
        creation_time: e.creation_time,
        creation_ttl: e.creation_ttl,
        display_name: e.display_name.clone(),
        entity_id: e.entity_id.clone().unwrap_or_default(),
        expire_time: e.expire_time.map(rfc3339),
        explicit_max_ttl: e.explicit_max_ttl,
        id: text.to_string(),
        issue_time: rfc3339(e.creation_time),
        meta: shown_meta(e),
        // -1 once the last use is spent (this lookup's, say), as in Vault:
        // 0 would read as unlimited.
        num_uses: e.num_uses,
        orphan: e.orphan,
        path: e.path.clone(),
        policies: e.policies.clone(),
        renewable: e.renewable,
        ttl: e.ttl(now),
        token_type: "service".into(),
        bound_cidrs: e.bound_cidrs.iter().map(|c| c.to_string()).collect(),
        period: (e.period > 0).then_some(e.period),
        role: e
            .path
            .strip_prefix("auth/token/create/")
            .and_then(|r| r.split('/').next())
            .filter(|r| !r.is_empty())
            .map(str::to_string),
    }
}

// ---- endpoint logic -------------------------------------------------------

/// `auth/token/create`, `create-orphan`, and `create/<role>` (`role`:
/// the token role, which then decides policies, orphan, period and limits
/// in place of the creator's `sudo`).
pub async fn handle_create(
    core: &Core,
    f: &Fields,
    path: &str,
    caller: &TokenEntry,
    force_orphan: bool,
    role: Option<&super::token_roles::TokenRole>,
    now: i64,
) -> Result<Issued> {
    let privileged = caller.is_root() || policies::has_sudo(core, &caller.policies, path).await?;
    let requested = match f.str_list("policies")? {
        Some(p) => Some(policies::normalize_names(p)?),
        None => None,
    };
    let no_default_policy = f.bool("no_default_policy")?.unwrap_or(false)
        || role.is_some_and(|r| r.disallows_default());
    let policies = match (role, requested) {
        (Some(r), requested) => r.policies(requested, &caller.policies, privileged)?,
        (None, Some(p)) => {
            if !privileged {
                let missing: Vec<&String> = p
                    .iter()
                    .filter(|x| *x != "default" && !caller.policies.contains(x))
                    .collect();
                if !missing.is_empty() {
                    return Err(Error::invalid("child policies must be subset of parent"));
                }
            }
            p
        }
        (None, None) => caller.policies.clone(),
    };
    if policies.iter().any(|p| p == "root") && !caller.is_root() {
        return Err(Error::invalid(
            "root tokens may only be created by a root token",
        ));
    }
    if f.str("entity_alias")?.is_some_and(|a| !a.is_empty()) {
        return Err(Error::invalid(
            "entity_alias is not supported: gatepass has no identity entities",
        ));
    }
    let role_orphan = role.is_some_and(|r| r.orphan);
    // `no_parent` takes root or sudo, as in Vault; `create-orphan` only the
    // policy's grant of that path itself (an administrator who grants it
    // means orphans), and the orphan still never outlives its creator.
    let asked_orphan = f.bool("no_parent")?.unwrap_or(false);
    if asked_orphan && !privileged {
        return Err(Error::invalid(
            "root or sudo privileges required to create orphan token",
        ));
    }
    let no_parent = asked_orphan || force_orphan || role_orphan;
    if caller.num_uses != 0 {
        // A token limited to a few uses would otherwise spend one on making
        // a token without a limit (an orphan, through a role, outliving it
        // too); Vault refuses it the same way.
        return Err(Error::invalid(
            "restricted use token cannot generate child tokens: a token limited to a number of uses (num_uses) cannot create tokens",
        ));
    }
    let id = f.str("id")?;
    if id.is_some() && !caller.is_root() {
        return Err(Error::invalid(
            "root or sudo privileges required to specify token id",
        ));
    }
    if let Some(id) = &id {
        if id.len() < 8 || id.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid(
                "id: must be at least 8 printable characters without spaces",
            ));
        }
    }
    match f.str("type")?.as_deref() {
        None | Some("") | Some("service") | Some("default") => {}
        Some(other) => {
            return Err(Error::invalid(format!(
                "token type {other:?} is not supported; use \"service\""
            )))
        }
    }
    let ttl = f.duration("ttl")?;
    let mut explicit_max_ttl = f.duration("explicit_max_ttl")?.unwrap_or(0);
    let asked_period = f.duration("period")?.unwrap_or(0).max(0);
    let mut period = asked_period;
    if let Some(r) = role {
        // The role's limits bound what is asked; its period is given
        // without `sudo`.
        if r.token_explicit_max_ttl > 0 {
            explicit_max_ttl = match explicit_max_ttl {
                0 => r.token_explicit_max_ttl,
                m => m.min(r.token_explicit_max_ttl),
            };
        }
        if r.token_period > 0 {
            period = r.token_period;
        }
    }
    if asked_period > 0 && !privileged && role.is_none_or(|r| r.token_period == 0) {
        return Err(Error::invalid(
            "root or sudo privileges required to create periodic token",
        ));
    }
    if period > 0 && explicit_max_ttl > 0 && period > explicit_max_ttl {
        return Err(Error::invalid(
            "period must not be greater than explicit_max_ttl",
        ));
    }
    // A TTL above the explicit maximum is cut to it, as Vault does
    // (create() bounds the expiry by explicit_max_ttl).
    let meta = f.str_map("meta")?.unwrap_or_default();
    if let Some(k) = meta.keys().find(|k| RESERVED_META.contains(&k.as_str())) {
        return Err(Error::invalid(format!(
            "meta: {k:?} is reserved: the server sets it at login or at host or gateway enrollment"
        )));
    }
    // A role's token_bound_cidrs bound what the creator asks, as the
    // creator's own do: narrower may be asked, nothing wider (nor none).
    let role_cidrs = role.map_or(&[][..], |r| &r.token_bound_cidrs[..]);
    let asked_cidrs = within(
        role_cidrs,
        f.cidr_list("bound_cidrs")?,
        "the role's token_bound_cidrs",
    )?;
    let bound_cidrs = within(
        &caller.bound_cidrs,
        Some(asked_cidrs),
        "the creating token's bound_cidrs",
    )?;
    let display_name = f.str("display_name")?.unwrap_or_default();
    let display_name = if display_name.is_empty() {
        "token".to_string()
    } else {
        format!("token-{}", sanitize_display_name(&display_name))
    };
    // A role's limit on uses bounds what is asked, as in Vault.
    let mut num_uses = f.non_negative("num_uses")?.unwrap_or(0);
    if let Some(n) = role.map(|r| r.token_num_uses).filter(|n| *n > 0) {
        num_uses = if num_uses == 0 { n } else { num_uses.min(n) };
    }
    let limits = super::methods::limits(core, super::methods::Method::Token).await?;
    let spec = NewToken {
        id,
        policies,
        no_default_policy,
        ttl,
        explicit_max_ttl,
        num_uses,
        renewable: f.bool("renewable")?.unwrap_or(true) && role.is_none_or(|r| r.renewable),
        display_name,
        meta,
        bound_cidrs,
        path: role
            .map(|r| r.token_path())
            .unwrap_or_else(|| "auth/token/create".into()),
        parent: if no_parent {
            None
        } else {
            Some(caller.clone())
        },
        periodic: false,
        // A period longer than the token method's maximum is cut to it,
        // as Vault cuts it.
        period: period.min(limits.max),
        // Even an orphan made by a sudo caller never outlives the caller;
        // only a root token without expiry makes tokens without this bound.
        expire_limit: caller.expire_time,
        host_id: None,
        gateway: None,
        limits,
        entity_id: None,
        login_user: None,
    };
    let mut issued = create(core, spec, now).await?;
    if period > limits.max {
        issued
            .warnings
            .push(capped_warning("period", period, limits.max));
    }
    Ok(issued)
}

/// The addresses a new token may be used from, within `limit` (`what`
/// names it): the limit itself when none (or an empty list) is asked, so
/// that a token bound to some addresses cannot make one usable from
/// anywhere; narrower ones when asked; refused when wider.
fn within(
    limit: &[ipnet::IpNet],
    requested: Option<Vec<ipnet::IpNet>>,
    what: &str,
) -> Result<Vec<ipnet::IpNet>> {
    let Some(requested) = requested.filter(|r| !r.is_empty()) else {
        return Ok(limit.to_vec());
    };
    if limit.is_empty() {
        return Ok(requested);
    }
    if let Some(wide) = requested
        .iter()
        .find(|r| !limit.iter().any(|c| c.contains(*r)))
    {
        return Err(Error::invalid(format!(
            "bound_cidrs: {wide} is outside {what} ({})",
            limit
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(requested)
}

/// Vault keeps display names to letters, digits and dashes.
pub fn sanitize_display_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}

/// Binds an existing token to an enrolled host (data enrolled before the
/// binding was a field of its own).
pub async fn bind_host(core: &Core, mut e: TokenEntry, host_id: &str) -> Result<()> {
    e.host_id = Some(host_id.to_string());
    core.storage.put(&id_key(&e.hash), &e).await
}

/// Extends a token's lifetime within its maximum; with Vault's warning
/// when the increment was cut to it.
pub async fn renew(
    core: &Core,
    e: TokenEntry,
    increment: Option<i64>,
    now: i64,
) -> Result<(TokenEntry, Vec<String>)> {
    // A token that never expires has nothing to renew; Vault says so.
    if e.expire_time.is_none() || !e.renewable {
        return Err(Error::invalid("lease is not renewable"));
    }
    // The maximum of the method that issued it, as tuned now (None for
    // tokens no tunable method issued: hosts', gateways', the web UI's).
    let method = e
        .path
        .strip_prefix("auth/")
        .and_then(|p| p.split('/').next())
        .and_then(|m| super::methods::Method::at(m).ok());
    let method_max = match method {
        Some(m) => Some(super::methods::limits(core, m).await?.max),
        None => None,
    };
    // A periodic token's renewal always gives it its period, as Vault's,
    // at most the method's maximum.
    let inc = if e.period > 0 {
        method_max.map_or(e.period, |m| e.period.min(m))
    } else {
        increment
            .filter(|i| *i > 0)
            .unwrap_or(if e.creation_ttl > 0 {
                e.creation_ttl
            } else {
                SYSTEM_MAX_TTL
            })
    };
    let mut exp = now + inc;
    if let Some(m) = e.max_expire {
        exp = exp.min(m);
    }
    // The method's maximum bounds other tokens' renewals too, counted
    // from the token's creation as Vault counts it: lowering
    // `max_lease_ttl` reaches the tokens already out. A token past it
    // keeps the time it has, and is told so.
    if let (0, Some(max)) = (e.period, method_max) {
        let cap = e.creation_time.saturating_add(max);
        if cap <= now {
            return Err(Error::invalid(
                "past the max TTL, cannot renew: the auth method's max_lease_ttl was lowered since the token was made",
            ));
        }
        exp = exp.min(cap);
    }
    core.storage
        .put(&expiry_key(exp, &e.accessor), &json!({}))
        .await?;
    // Only the expiry changes, in place: writing back `e` would give back
    // uses spent since it was read, or bring back a token revoked since
    // (such as one whose last use was this very request).
    // The latest a renewal may reach is the stored one: `expire_by` may
    // have brought it forward since `e` was read.
    let renewed = core
        .storage
        .update(&id_key(&e.hash), |mut cur: TokenEntry| {
            if cur.used_up() {
                return Ok((Change::Keep, None));
            }
            cur.expire_time = Some(cur.max_expire.map_or(exp, |m| exp.min(m)));
            Ok((Change::Put(cur.clone()), Some(cur)))
        })
        .await?
        .flatten()
        .ok_or_else(|| Error::invalid("the token was revoked"))?;
    if let Some(at) = renewed.expire_time.filter(|at| *at != exp) {
        core.storage
            .put(&expiry_key(at, &e.accessor), &json!({}))
            .await?;
    }
    // The entry of the expiry it had is left for the sweeper, which puts
    // the token's current one back when it meets a stale one: deleting it
    // here could take the entry of another renewal made meanwhile.
    let got = renewed.expire_time.map_or(0, |at| at - now);
    let warnings = if e.period == 0 && inc > got {
        vec![capped_warning("TTL", inc, got)]
    } else {
        vec![]
    };
    Ok((renewed, warnings))
}

/// Brings a token's expiry, and the latest a renewal may reach, down to
/// `until` at the latest, in place (as [`renew`], so that uses spent
/// meanwhile are not given back). None when the token is gone or used up.
pub async fn expire_by(core: &Core, hash: &str, until: i64) -> Result<Option<TokenEntry>> {
    let e = core
        .storage
        .update(&id_key(hash), |mut cur: TokenEntry| {
            if cur.used_up() {
                return Ok((Change::Keep, None));
            }
            cur.expire_time = Some(cur.expire_time.map_or(until, |e| e.min(until)));
            cur.max_expire = Some(cur.max_expire.map_or(until, |m| m.min(until)));
            Ok((Change::Put(cur.clone()), Some(cur)))
        })
        .await?
        .flatten();
    if let Some(at) = e.as_ref().and_then(|e| e.expire_time) {
        let accessor = e.as_ref().map(|e| e.accessor.as_str()).unwrap_or_default();
        core.storage
            .put(&expiry_key(at, accessor), &json!({}))
            .await?;
    }
    Ok(e)
}

/// Revokes, with their children and leases, up to `limit` tokens whose
/// expiry by the index came by `now`; returns how many index entries were
/// handled (`limit` when more may be due).
pub async fn sweep_expired(core: &Core, now: i64, limit: i64) -> Result<usize> {
    let due = core
        .storage
        .keys_between(
            EXPIRY_PREFIX,
            &format!("{EXPIRY_PREFIX}{:016x}/", now.max(0) + 1),
            limit,
        )
        .await?;
    for k in &due {
        let accessor = k.get(EXPIRY_PREFIX.len() + 17..).unwrap_or_default();
        if !accessor.is_empty() {
            // Looking an expired token up revokes it with what it made. A
            // renewed one stays: the entry of its expiry now is put again
            // (it is there unless a race took it), and this stale one goes.
            if let Some(at) = lookup_accessor(core, accessor, now)
                .await?
                .and_then(|e| e.expire_time)
            {
                core.storage
                    .put(&expiry_key(at, accessor), &json!({}))
                    .await?;
            }
        }
        core.storage.delete(k).await?;
    }
    Ok(due.len())
}

/// Gives the tokens made before the expiry index their entries, once per
/// database (a marker says it was done); tokens expired by then are
/// revoked on the way. Returns how many entries were written.
pub async fn index_expiries(core: &Core, now: i64) -> Result<usize> {
    if core
        .storage
        .get::<serde_json::Value>(EXPIRY_INDEXED)
        .await?
        .is_some()
    {
        return Ok(0);
    }
    let mut n = 0;
    for accessor in accessors(core).await? {
        if let Some(at) = lookup_accessor(core, &accessor, now)
            .await?
            .and_then(|e| e.expire_time)
        {
            core.storage
                .put(&expiry_key(at, &accessor), &json!({}))
                .await?;
            n += 1;
        }
    }
    core.storage
        .put(EXPIRY_INDEXED, &json!({ "at": now }))
        .await?;
    Ok(n)
}

pub async fn revoke(core: &Core, e: &TokenEntry, orphan_children: bool) -> Result<()> {
    if orphan_children {
        revoke_orphan(core, e).await
    } else {
        revoke_tree(core, e).await
    }
}

/// Revokes, with their children, the tokens created at `prefix` or below
/// it, whole path segments only (`auth/userpass/login/al` does not take
/// `auth/userpass/login/alice`): Vault's `sys/leases/revoke-prefix` on a
/// login path, how an operator ends every session of a user or of an auth
/// method. Returns how many were revoked.
pub async fn revoke_by_path(core: &Core, prefix: &str, now: i64) -> Result<usize> {
    let prefix = prefix.trim_matches('/');
    let mut n = 0;
    for accessor in accessors(core).await? {
        // Gone meanwhile (a parent revoked with its children): nothing to do.
        let Some(e) = lookup_accessor(core, &accessor, now).await? else {
            continue;
        };
        let under = e.path == prefix
            || (e.path.starts_with(prefix) && e.path[prefix.len()..].starts_with('/'));
        if under {
            revoke_tree(core, &e).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Accessors of every live token (Vault's `LIST auth/token/accessors`).
pub async fn accessors(core: &Core) -> Result<Vec<String>> {
    core.storage.list("token/accessor/").await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token's entry is parsed once and shared by the requests that
    /// present it, and never outlives a change: a spent use is seen by
    /// the very next request.
    #[tokio::test]
    async fn requests_share_a_token_entry_until_it_changes() {
        let now = 1_700_000_000;
        let dir = tempfile::tempdir().unwrap();
        let core = Core::for_test(&dir, now).await;
        let text = create(
            &core,
            NewToken {
                policies: vec!["default".into()],
                ..Default::default()
            },
            now,
        )
        .await
        .unwrap()
        .text;
        let a = authenticate(&core, Some(&text), None, now).await.unwrap();
        let b = authenticate(&core, Some(&text), None, now).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the entry was parsed again");

        let limited = create(
            &core,
            NewToken {
                policies: vec!["default".into()],
                num_uses: 3,
                ..Default::default()
            },
            now,
        )
        .await
        .unwrap()
        .text;
        for left in [2, 1, -1] {
            let e = authenticate(&core, Some(&limited), None, now)
                .await
                .unwrap();
            assert_eq!(e.num_uses, left);
        }
        assert!(matches!(
            authenticate(&core, Some(&limited), None, now).await,
            Err(Error::PermissionDenied)
        ));

        revoke_tree(&core, &a).await.unwrap();
        assert!(matches!(
            authenticate(&core, Some(&text), None, now).await,
            Err(Error::PermissionDenied)
        ));
    }
}
