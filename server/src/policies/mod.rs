//! Stored ACL policies (`sys/policies/acl/<name>`, `sys/policy/<name>`) and
//! the access check every authenticated request goes through.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::policy::{Acl, Capability, Policy, DEFAULT_POLICY};
use crate::state::Core;
use crate::storage::Change;

pub mod cache;

pub use cache::{AclCache, StoredPolicy};

fn key(name: &str) -> String {
    format!("policy/acl/{name}")
}

/// Lower-cases, de-duplicates and checks policy names given to a token or role.
pub fn normalize_names(names: Vec<String>) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let n = n.trim().to_lowercase();
        crate::policy::validate_name(&n, false)?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// [`normalize_names`], for the policies a login method, role or identity
/// gives the tokens of its logins: never `root`. Root tokens come only
/// from a root token (`auth/token/create`) or the server's own start, as
/// in Vault ("auth methods cannot create root tokens"); else whoever may
/// edit a user, role or group could make logins that hold every right
/// and never expire.
pub fn normalize_login_names(names: Vec<String>) -> Result<Vec<String>> {
    let names = normalize_names(names)?;
    if names.iter().any(|n| n == "root") {
        return Err(Error::invalid(
            "the root policy cannot be given to logins: auth methods cannot create root tokens",
        ));
    }
    Ok(names)
}

/// Installs the built-in policies (`default`, `gatepass-host`,
/// `gatepass-gateway`) if missing,
/// and brings an unedited older host policy up to date.
pub async fn ensure_default(core: &Core) -> Result<()> {
    core.storage
        .update(
            &key(crate::hosts::policy::HOST_POLICY),
            |mut p: StoredPolicy| {
                Ok(
                    if crate::hosts::policy::HOST_POLICY_FORMER_TEXTS.contains(&p.text.as_str()) {
                        p.text = crate::hosts::policy::HOST_POLICY_TEXT.into();
                        (Change::Put(p), ())
                    } else {
                        (Change::Keep, ())
                    },
                )
            },
        )
        .await?;
    for (name, text) in [
        ("default", DEFAULT_POLICY),
        (
            crate::hosts::policy::HOST_POLICY,
            crate::hosts::policy::HOST_POLICY_TEXT,
        ),
        (
            crate::pam::policy::GATEWAY_POLICY,
            crate::pam::policy::GATEWAY_POLICY_TEXT,
        ),
    ] {
        if core
            .storage
            .get::<StoredPolicy>(&key(name))
            .await?
            .is_none()
        {
            core.storage
                .put_if_absent(
                    &key(name),
                    &StoredPolicy {
                        name: name.into(),
                        text: text.into(),
                    },
                )
                .await?;
        }
    }
    Ok(())
}

pub async fn read(core: &Core, name: &str) -> Result<Option<StoredPolicy>> {
    let name = name.to_lowercase();
    if name == "root" {
        return Ok(Some(StoredPolicy {
            name,
            text: String::new(),
        }));
    }
    core.storage.get(&key(&name)).await
}

pub async fn write(core: &Core, name: &str, text: &str) -> Result<()> {
    let name = name.to_lowercase();
    crate::policy::validate_name(&name, true)?;
    if text.trim().is_empty() {
        return Err(Error::invalid("missing policy"));
    }
    // Parse before storing: a bad policy is refused and changes nothing.
    Policy::parse(&name, text)?;
    core.storage
        .put(
            &key(&name),
            &StoredPolicy {
                name: name.clone(),
                text: text.to_string(),
            },
        )
        .await
}

pub async fn delete(core: &Core, name: &str) -> Result<()> {
    let name = name.to_lowercase();
    if name == "root" || name == "default" {
        return Err(Error::invalid(format!("cannot delete {name} policy")));
    }
    core.storage.delete(&key(&name)).await?;
    Ok(())
}

pub async fn list(core: &Core) -> Result<Vec<String>> {
    let mut names = core.storage.list("policy/acl/").await?;
    names.push("root".into());
    names.sort();
    Ok(names)
}

/// The ACL of a token's policies. Policies are read from storage (through
/// its read cache) on every request, so that several servers sharing one
/// database agree within the cache's lifetime; what is read is compiled
/// only when its text changed.
pub async fn acl_for(core: &Core, policies: &[String]) -> Result<Arc<Acl>> {
    let mut names: Vec<&String> = policies.iter().collect();
    names.sort();
    names.dedup();
    let mut versions = Vec::with_capacity(names.len());
    let mut compiled = Vec::with_capacity(names.len());
    for name in names {
        match core.storage.get_shared::<StoredPolicy>(&key(name)).await? {
            Some(stored) => {
                let (version, policy) = core.acl_cache.compile(name, stored);
                versions.push((name.clone(), version));
                compiled.push(policy);
            }
            None => core.acl_cache.forget(name),
        }
    }
    Ok(core.acl_cache.acl(versions, &compiled))
}

/// Whether a token with these policies has sudo on `path` (root always has).
pub async fn has_sudo(core: &Core, policies: &[String], path: &str) -> Result<bool> {
    if policies.iter().any(|p| p == "root") {
        return Ok(true);
    }
    Ok(acl_for(core, policies)
        .await?
        .allows(path, Capability::Sudo))
}
