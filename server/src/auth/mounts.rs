//! Login methods enabled at a path of one's choosing (`sys/auth/<path>`):
//! the `oidc` and `jwt` methods (one backend, as in Vault). token/,
//! approle/ and userpass/ are built in and always at their paths.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::Core;

/// Types that can be enabled, each any number of times.
pub const TYPES: &[&str] = &["oidc", "jwt"];
/// The built-in methods' paths (and types).
pub const BUILT_IN: &[&str] = &["token", "approle", "userpass"];

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthMount {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub accessor: String,
    pub uuid: String,
    pub created: i64,
}

impl AuthMount {
    /// Storage prefix of the method's own data (config, roles, pending
    /// logins): by uuid, so that a path disabled and enabled again starts
    /// empty.
    pub fn data_prefix(&self) -> String {
        format!("auth-mount/{}/", self.uuid)
    }
}

fn key(path: &str) -> String {
    format!("auth-mounts/{path}")
}

/// `oidc`, `/oidc/`, `team/oidc` → without slashes at the ends; the
/// built-in paths are taken.
pub fn normalize_path(path: &str) -> Result<String> {
    let p = crate::path::mount_path(path, "auth")?;
    let first = p.split('/').next().unwrap_or_default();
    if BUILT_IN.contains(&first) {
        return Err(Error::invalid(format!(
            "path is already in use at {first}/ (a built-in auth method)"
        )));
    }
    Ok(p)
}

pub async fn enable(
    core: &Core,
    path: &str,
    kind: &str,
    description: &str,
    now: i64,
) -> Result<AuthMount> {
    let path = normalize_path(path)?;
    if !TYPES.contains(&kind) {
        return Err(Error::invalid(format!(
            "auth method {kind:?} is not available; gatepass has token/, approle/ and userpass/ \
             built in, and can enable: {}",
            TYPES.join(", ")
        )));
    }
    let taken = all(core).await?;
    if let Some(m) = crate::path::overlapping(&path, taken.iter().map(|m| m.path.as_str())) {
        return Err(Error::invalid(format!("path is already in use at {m}/")));
    }
    let mount = AuthMount {
        path: path.clone(),
        kind: kind.to_string(),
        description: description.to_string(),
        accessor: format!(
            "auth_{kind}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        uuid: uuid::Uuid::new_v4().to_string(),
        created: now,
    };
    if !core.storage.put_if_absent(&key(&path), &mount).await? {
        return Err(Error::invalid(format!("path is already in use at {path}/")));
    }
    Ok(mount)
}

/// Disables the method at `path`: its settings and roles go, and so do the
/// tokens its logins gave (with the tokens made from them), as in Vault;
/// an operator who turns single sign-on off means to end its sessions.
pub async fn disable(core: &Core, path: &str, now: i64) -> Result<()> {
    let path = normalize_path(path)?;
    if let Some(m) = core.storage.take::<AuthMount>(&key(&path)).await? {
        let keys = core.storage.keys_with_prefix(&m.data_prefix()).await?;
        core.storage.delete_many(&keys).await?;
    }
    // After the mount and its settings are gone, so that no login slips in
    // after the revocation; and whether or not it was found, so that a
    // disable retried after a failure here finishes the job.
    super::token::revoke_by_path(core, &format!("auth/{path}"), now).await?;
    Ok(())
}

pub async fn all(core: &Core) -> Result<Vec<AuthMount>> {
    let mut out = Vec::new();
    for k in core.storage.keys_with_prefix("auth-mounts/").await? {
        if let Some(m) = core.storage.get_shared::<AuthMount>(&k).await? {
            out.push(AuthMount::clone(&m));
        }
    }
    Ok(out)
}

pub async fn accessor_exists(core: &Core, accessor: &str) -> Result<bool> {
    Ok(all(core).await?.iter().any(|m| m.accessor == accessor))
}

/// The mount a path under `auth/` (without the `auth/`) falls under, and
/// the rest of the path.
pub async fn find(core: &Core, under_auth: &str) -> Result<Option<(AuthMount, String)>> {
    let mut best: Option<AuthMount> = None;
    for m in all(core).await? {
        let hit = under_auth == m.path || under_auth.starts_with(&format!("{}/", m.path));
        if hit && best.as_ref().is_none_or(|b| b.path.len() < m.path.len()) {
            best = Some(m);
        }
    }
    Ok(best.map(|m| {
        let rest = under_auth[m.path.len()..]
            .trim_start_matches('/')
            .to_string();
        (m, rest)
    }))
}
