//! Which area's routes serve a path (`sys`, `auth`, `hosts`, `pam`, or an ssh
//! mount's), which paths need no token, and which need sudo. The areas'
//! modules hold the routes themselves.

use serde_json::Value;

use super::request::{Operation, Request};
use super::{no_route, Reply};
use crate::auth::token::TokenEntry;
use crate::error::{Error, Result};
use crate::mounts;
use crate::path::ApiPath;
use crate::state::Core;

/// Paths anyone may call without a token.
pub async fn is_unauthenticated(core: &Core, req: &Request) -> Result<bool> {
    let p = req.path.as_str();
    if matches!(
        p,
        "sys/health" | "sys/seal-status" | "sys/init" | "sys/leader"
    ) || (p == "auth/approle/login" && req.op == Operation::Write)
        // Vault's: a wrapping token can be looked up by anyone holding it.
        || p == "sys/wrapping/lookup"
        // An unwrap without a `token` field presents the wrapping token as
        // its X-Vault-Token: that token is the whole credential, checked by
        // the unwrap itself (it can do nothing else).
        || (p == "sys/wrapping/unwrap" && req.op == Operation::Write && !req.fields.contains("token"))
        || (p.starts_with("auth/userpass/login/") && req.op == Operation::Write)
    {
        return Ok(true);
    }
    if let Some(under) = p.strip_prefix("auth/") {
        if let Some((_, rest)) = crate::auth::mounts::find(core, under).await? {
            return Ok(super::auth::mount_path_is_unauthenticated(&rest, req.op));
        }
    }
    if p.starts_with("sys/") || p.starts_with("auth/") {
        return Ok(false);
    }
    if p == "hosts" || p.starts_with("hosts/") {
        return Ok(super::hosts::is_unauthenticated(req));
    }
    if p == "pam" || p.starts_with("pam/") {
        return Ok(super::pam::is_unauthenticated(req));
    }
    Ok(match mounts::find(core, p).await? {
        Some((_, rest)) => super::ssh::is_unauthenticated(&rest, req.op),
        None => false,
    })
}

/// The path with the names that handlers take in lower case (token roles,
/// userpass users, AppRole and JWT/OIDC roles, policies: as Vault takes
/// them; host names) in lower case, and a host named by its ID named by
/// its name, for the ACL to decide on what the handler will act on. Other
/// paths are returned as they are.
pub async fn canonical_names(core: &Core, path: &ApiPath) -> Result<String> {
    let segs = path.segments();
    // A host named by its ID or in any case is the host by its name, in
    // lower case (names are unique ignoring case), so that a rule written
    // for `hosts/bastion` meets `hosts/BASTION` and `hosts/<its ID>`.
    if let ["hosts", id] = segs.as_slice() {
        if !matches!(*id, "join-tokens" | "enroll" | "mappings" | "self")
            && crate::hosts::is_host_ref(id)
        {
            let name = match crate::hosts::find(core, id).await? {
                Some(h) => h.hostname.to_lowercase(),
                None => id.to_lowercase(),
            };
            return Ok(format!("hosts/{name}"));
        }
    }
    let at = match segs.as_slice() {
        ["auth", "token", "create" | "roles", _, ..]
        | ["auth", "userpass", "users" | "login", _, ..]
        | ["auth", "approle", "role", _, ..]
        | ["sys", "policies", "acl", _, ..] => Some(3),
        ["sys", "policy", _, ..] => Some(2),
        ["auth", mount, ..] if !crate::auth::mounts::BUILT_IN.contains(mount) => {
            let under = path.as_str().strip_prefix("auth/").unwrap_or_default();
            match crate::auth::mounts::find(core, under).await? {
                Some((m, rest)) if rest.starts_with("role/") => {
                    // `auth/` + the mount's segments + `role/`: the name.
                    Some(1 + m.path.split('/').count() + 1)
                }
                _ => None,
            }
        }
        _ => None,
    };
    Ok(match at.and_then(|i| segs.get(i)) {
        Some(name) if name.to_lowercase() != *name => {
            let mut segs: Vec<String> = segs.iter().map(|s| (*s).to_string()).collect();
            if let Some(i) = at {
                segs[i] = segs[i].to_lowercase();
            }
            segs.join("/")
        }
        _ => path.as_str().to_string(),
    })
}

/// Vault's existence check, on the paths that have one: whether the object
/// a write to `path` (in its canonical form) names exists already. `None`
/// where the path has no such check: every write there is an update. Only
/// on these paths does `create` alone let a write through, and only while
/// the object does not exist (Vault's and OpenBao's rule, compared with
/// OpenBao 2.7.2: token roles, userpass users, AppRole and JWT/OIDC roles).
pub async fn exists(core: &Core, path: &str) -> Result<Option<bool>> {
    let found = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["auth", "token", "roles", name] => crate::auth::token_roles::read(core, name)
            .await
            .map(|r| r.is_some()),
        ["auth", "userpass", "users", name] => crate::auth::userpass::read_user(core, name)
            .await
            .map(|u| u.is_some()),
        ["auth", "approle", "role", name] => crate::auth::approle::read_role(core, name)
            .await
            .map(|r| r.is_some()),
        ["auth", mount, ..] if !crate::auth::mounts::BUILT_IN.contains(mount) => {
            let under = path.strip_prefix("auth/").unwrap_or_default();
            match crate::auth::mounts::find(core, under).await? {
                Some((m, rest)) => match rest.strip_prefix("role/") {
                    Some(name) if !name.is_empty() && !name.contains('/') => {
                        crate::auth::jwt::read_role(core, &m, name)
                            .await
                            .map(|r| r.is_some())
                    }
                    _ => return Ok(None),
                },
                None => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    match found {
        Ok(found) => Ok(Some(found)),
        // A name the handler refuses names nothing that exists.
        Err(Error::InvalidRequest(_)) => Ok(Some(false)),
        Err(e) => Err(e),
    }
}

/// Paths any valid token may call without an ACL grant, because their
/// handler lets only the owner of what they name through.
pub fn is_owner_checked(req: &Request) -> bool {
    super::pam::is_owner_checked(req)
}

/// What Vault's built-in `default` policy grants that gatepass's stored
/// one does not: wrapping arbitrary data, and looking up and unwrapping a
/// wrapping token given in the body. Only tokens with the `default` policy
/// get it, as in Vault.
pub fn granted_by_default_policy(policies: &[String], req: &Request) -> bool {
    req.op == Operation::Write && default_policy_updates(policies, req.path.as_str())
}

/// Whether Vault's default policy, held by `policies`, grants `update` on
/// `path` in gatepass (see [`granted_by_default_policy`]).
pub fn default_policy_updates(policies: &[String], path: &str) -> bool {
    matches!(
        path,
        "sys/wrapping/wrap" | "sys/wrapping/lookup" | "sys/wrapping/unwrap"
    ) && policies.iter().any(|p| p == "default")
}

/// Paths that need `sudo` in the caller's policy (root always has it).
pub fn needs_sudo(path: &str, op: Operation) -> bool {
    let under = |prefix: &str| {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    matches!(path, "auth/token/accessors" | "sys/audit-log")
        || under("sys/audit")
        // Enabling, disabling and tuning auth methods, and moving mounts,
        // as in Vault (`auth/*`, `remount`): who may change how everyone
        // logs in holds every right. Listing the methods (`sys/auth`)
        // does not need it.
        || path.starts_with("sys/auth/")
        // The same tune endpoint under its other name (Vault has it
        // without sudo there: one right for one change, here).
        || path.starts_with("sys/mounts/auth/")
        || under("sys/remount")
        || under("sys/leases/revoke-prefix")
        // Listing the top of the lease tree shows every lease prefix, so it
        // needs sudo as much as any sub-path (Vault's `leases/lookup/*`,
        // which a LIST of `sys/leases/lookup/` matches); a lookup of one
        // lease by ID (a write to the top) does not.
        || path.starts_with("sys/leases/lookup/")
        || (path == "sys/leases/lookup" && op == Operation::List)
}

pub(super) fn caller_of(caller: Option<&TokenEntry>) -> Result<&TokenEntry> {
    caller.ok_or(Error::PermissionDenied)
}

pub(super) fn ok_or_404(v: Option<Value>) -> Reply {
    v.map(Reply::Data).unwrap_or(Reply::NotFound)
}

/// Path → the routes of its area.
pub async fn dispatch(core: &Core, req: &Request, caller: Option<&TokenEntry>) -> Result<Reply> {
    let p = req.path.as_str();
    // A request's future is as large as the largest one it may await, and
    // a fleet's long-polls each hold theirs while they wait (100,000 of
    // them on one server): the long-poll is awaited here directly, every
    // other route from its own allocation, so that a waiting poll holds
    // only what it needs (with `handle`'s own awaits boxed alike: 8.7 KiB
    // for the whole request in a debug build before, 4.6 KiB after).
    if p == "hosts/self/state" && req.op == Operation::Read {
        return super::hosts::self_state(core, req, caller).await;
    }
    if p == "sys" || p.starts_with("sys/") {
        return Box::pin(super::sys::route(core, req, caller)).await;
    }
    if p == "auth" || p.starts_with("auth/") {
        return Box::pin(super::auth::route(core, req, caller)).await;
    }
    if p == "hosts" || p.starts_with("hosts/") {
        return Box::pin(super::hosts::route(core, req, caller)).await;
    }
    if p == "identity" || p.starts_with("identity/") {
        return Box::pin(super::identity::route(core, req)).await;
    }
    if p == "pam" || p.starts_with("pam/") {
        return Box::pin(super::pam::route(core, req, caller)).await;
    }
    match mounts::find(core, p).await? {
        Some((mount, rest)) => Box::pin(super::ssh::route(core, &mount, &rest, req, caller)).await,
        None => Err(no_route(p)),
    }
}
