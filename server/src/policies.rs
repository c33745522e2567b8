//! Stored ACL policies (`sys/policies/acl/<name>`, `sys/policy/<name>`) and
//! the access check every authenticated request goes through.

use serde::{Deserialize, Serialize};

use crate::auth::token::TokenEntry;
use crate::error::{Error, Result};
use crate::policy::{Acl, Capability, Policy, DEFAULT_POLICY};
use crate::state::Core;
use crate::storage::Change;

#[derive(Serialize, Deserialize)]
pub struct StoredPolicy {
    pub name: String,
    pub text: String,
}

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

/// Installs the built-in policies (`default`, `gatepass-host`) if missing,
/// and brings an unedited older host policy up to date.
pub async fn ensure_default(core: &Core) -> Result<()> {
    core.storage
        .update(&key(crate::hosts::HOST_POLICY), |mut p: StoredPolicy| {
            Ok(
                if crate::hosts::HOST_POLICY_FORMER_TEXTS.contains(&p.text.as_str()) {
                    p.text = crate::hosts::HOST_POLICY_TEXT.into();
                    (Change::Put(p), ())
                } else {
                    (Change::Keep, ())
                },
            )
        })
        .await?;
    for (name, text) in [
        ("default", DEFAULT_POLICY),
        (crate::hosts::HOST_POLICY, crate::hosts::HOST_POLICY_TEXT),
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

/// The ACL of a token's policies. Policies are read from storage on every
/// request so that several servers sharing one database agree at once.
pub async fn acl_for(core: &Core, token: &TokenEntry) -> Result<Acl> {
    let mut parsed = Vec::with_capacity(token.policies.len());
    for name in &token.policies {
        if let Some(p) = core.storage.get::<StoredPolicy>(&key(name)).await? {
            match Policy::parse(name, &p.text) {
                Ok(pol) => parsed.push(pol),
                // A stored policy was valid when written; if it is not now,
                // grant nothing from it rather than fail every request.
                Err(e) => {
                    tracing::warn!(policy = %name, error = %e, "stored policy does not parse")
                }
            }
        }
    }
    Ok(Acl::new(parsed.iter()))
}

pub async fn has_sudo(core: &Core, token: &TokenEntry, path: &str) -> Result<bool> {
    if token.is_root() {
        return Ok(true);
    }
    Ok(acl_for(core, token).await?.allows(path, Capability::Sudo))
}
