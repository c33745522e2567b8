//! Secrets-engine mounts (`sys/mounts`). Each `ssh` mount is one certificate
//! authority with its own roles; its data lives under `mount/<uuid>/`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::Core;
use crate::storage::Change;
pub use crate::tune::{TtlLimits, Tune, TuneInput};

pub const ENGINE_TYPES: &[&str] = &["ssh"];
const RESERVED: &[&str] = &["sys", "auth", "hosts", "pam", "cubbyhole", "identity", "v1"];

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mount {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub accessor: String,
    pub uuid: String,
    pub created: i64,
    /// `sys/mounts/<path>/tune`.
    #[serde(default)]
    pub tune: Tune,
}

impl Mount {
    /// What roles without `ttl` or `max_ttl` fall back on: the mount's
    /// tuned values, else the system's.
    pub fn ttl_limits(&self) -> TtlLimits {
        self.tune.limits()
    }

    /// Storage prefix for the engine's own data: by uuid, so that a mount
    /// disabled and enabled again starts empty.
    pub fn data_prefix(&self) -> String {
        format!("mount/{}/", self.uuid)
    }
}

fn key(path: &str) -> String {
    format!("mounts/{path}")
}

/// `ssh`, `/ssh/`, `team/ssh` → canonical form without slashes at the ends.
pub fn normalize_path(path: &str) -> Result<String> {
    let p = crate::path::mount_path(path, "mount")?;
    let first = p.split('/').next().unwrap_or_default();
    if RESERVED.contains(&first) {
        return Err(Error::invalid(format!(
            "cannot mount at reserved path {first:?}"
        )));
    }
    Ok(p)
}

pub async fn enable(
    core: &Core,
    path: &str,
    kind: &str,
    description: &str,
    tune: Tune,
    now: i64,
) -> Result<Mount> {
    let path = normalize_path(path)?;
    if !ENGINE_TYPES.contains(&kind) {
        return Err(Error::invalid(format!(
            "unknown secrets engine type {kind:?}; gatepass supports: {}",
            ENGINE_TYPES.join(", ")
        )));
    }
    // Mounts may not nest: requests are routed by the longest mount prefix.
    let taken = all(core).await?;
    if let Some(m) = crate::path::overlapping(&path, taken.iter().map(|m| m.path.as_str())) {
        return Err(Error::invalid(format!("path is already in use at {m}/")));
    }
    let mount = Mount {
        path: path.clone(),
        kind: kind.to_string(),
        description: description.to_string(),
        accessor: format!("{kind}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        uuid: uuid::Uuid::new_v4().to_string(),
        created: now,
        tune,
    };
    if !core.storage.put_if_absent(&key(&path), &mount).await? {
        return Err(Error::invalid(format!("path is already in use at {path}/")));
    }
    Ok(mount)
}

pub async fn disable(core: &Core, path: &str) -> Result<()> {
    let path = normalize_path(path)?;
    if let Some(m) = core.storage.take::<Mount>(&key(&path)).await? {
        // A remount that stopped half-way leaves the mount at both paths:
        // the data goes only with the last of them.
        if all(core).await?.iter().any(|o| o.uuid == m.uuid) {
            return Ok(());
        }
        // Its leases go with it, as in Vault: none stays listed, renewable
        // or revocable for a secret that no longer exists.
        crate::leases::revoke_prefix(core, &path).await?;
        for k in core.storage.keys_with_prefix(&m.data_prefix()).await? {
            core.storage.delete(&k).await?;
        }
    }
    Ok(())
}

/// `sys/mounts/<path>/tune` (write): changes what is given.
pub async fn tune(core: &Core, path: &str, t: TuneInput) -> Result<Mount> {
    let path = normalize_path(path)?;
    core.storage
        .update(&key(&path), |mut m: Mount| {
            if let Err(e) = m.tune.apply(&t) {
                return Ok((Change::Keep, Err(e)));
            }
            if let Some(v) = &t.description {
                m.description = v.clone();
            }
            Ok((Change::Put(m.clone()), Ok(m)))
        })
        .await?
        .ok_or_else(|| Error::invalid(format!("no mount at {path:?}")))?
}

/// `sys/remount`: moves a mount to another path, revoking its leases. Its
/// data stays where it is (under its uuid), so only the mount entry moves:
/// first written at
/// the new path, then removed from the old one (a stop in between leaves
/// it at both, and [`disable`] keeps the data while either remains).
pub async fn remount(core: &Core, from: &str, to: &str) -> Result<Mount> {
    let from = normalize_path(from)?;
    let to = normalize_path(to)?;
    let m = get(core, &from)
        .await?
        .ok_or_else(|| Error::invalid(format!("no mount at {from:?}")))?;
    for o in all(core).await? {
        let clash = o.path == to
            || to.starts_with(&format!("{}/", o.path))
            || o.path.starts_with(&format!("{to}/"));
        if clash && o.uuid != m.uuid {
            return Err(Error::invalid(format!(
                "path is already in use at {}/",
                o.path
            )));
        }
    }
    let moved = Mount {
        path: to.clone(),
        ..m
    };
    if !core.storage.put_if_absent(&key(&to), &moved).await? {
        return Err(Error::invalid(format!("path is already in use at {to}/")));
    }
    // The leases are the old path's (their IDs name it): revoked, as Vault
    // revokes a moved engine's leases, rather than left for another mount
    // later enabled at the old path to take with it when disabled.
    crate::leases::revoke_prefix(core, &from).await?;
    core.storage.delete(&key(&from)).await?;
    Ok(moved)
}

/// Every mount, shared from the read cache: requests under a mount route
/// through here, so the mounts are not parsed again each time.
pub async fn all(core: &Core) -> Result<Vec<std::sync::Arc<Mount>>> {
    Ok(core.storage.mount_table::<Mount>().await?.to_vec())
}

pub async fn get(core: &Core, path: &str) -> Result<Option<Mount>> {
    core.storage.get(&key(&normalize_path(path)?)).await
}

/// The mount a request path falls under, and the rest of the path.
pub async fn find(core: &Core, req_path: &str) -> Result<Option<(Mount, String)>> {
    let table = core.storage.mount_table::<Mount>().await?;
    let mut best: Option<&Mount> = None;
    for m in table.iter() {
        let hit = req_path
            .strip_prefix(m.path.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if hit && best.is_none_or(|b| b.path.len() < m.path.len()) {
            best = Some(m);
        }
    }
    Ok(best.map(|m| {
        let rest = req_path[m.path.len()..].trim_start_matches('/').to_string();
        (m.clone(), rest)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mount a path routes to, by its path and description.
    async fn routed(core: &Core, req_path: &str) -> Option<(String, String, String)> {
        find(core, req_path)
            .await
            .unwrap()
            .map(|(m, rest)| (m.path, m.description, rest))
    }

    fn at(path: &str, description: &str, rest: &str) -> Option<(String, String, String)> {
        Some((path.into(), description.into(), rest.into()))
    }

    #[tokio::test]
    async fn requests_route_by_the_mounts_as_they_are_now() {
        let dir = tempfile::tempdir().unwrap();
        let core = Core::for_test(&dir, 1).await;
        // What a new server mounts itself.
        let own = all(&core).await.unwrap().len();
        enable(&core, "a", "ssh", "first", Tune::default(), 1)
            .await
            .unwrap();
        // Each step routes once before the change, so that the table the
        // change must replace is cached.
        assert_eq!(routed(&core, "a/sign/r").await, at("a", "first", "sign/r"));
        assert_eq!(routed(&core, "a").await, at("a", "first", ""));
        assert_eq!(
            routed(&core, "ab/sign/r").await,
            None,
            "a prefix of a segment"
        );

        enable(&core, "b/c", "ssh", "second", Tune::default(), 2)
            .await
            .unwrap();
        assert_eq!(
            routed(&core, "b/c/creds/o").await,
            at("b/c", "second", "creds/o")
        );
        assert_eq!(routed(&core, "b/other").await, None);

        let tuned = TuneInput {
            description: Some("tuned".into()),
            ..TuneInput::default()
        };
        tune(&core, "a", tuned).await.unwrap();
        assert_eq!(routed(&core, "a/sign/r").await, at("a", "tuned", "sign/r"));

        remount(&core, "a", "z").await.unwrap();
        assert_eq!(routed(&core, "a/sign/r").await, None, "the old path");
        assert_eq!(routed(&core, "z/sign/r").await, at("z", "tuned", "sign/r"));

        disable(&core, "b/c").await.unwrap();
        assert_eq!(routed(&core, "b/c/creds/o").await, None);
        assert_eq!(all(&core).await.unwrap().len(), own + 1);
    }
}
