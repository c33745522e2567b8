//! Stored ACL policies (`sys/policies/acl/<name>`, `sys/policy/<name>`) and
//! the access check every authenticated request goes through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

/// Compiled policies and the combined ACLs of token policy sets, so that a
/// request pays for neither parsing nor merging. A policy is compiled once
/// per change of its text and given a version; a combined ACL is kept per
/// sorted list of (policy name, version), so a changed policy makes a new
/// key and its old ACLs are never used again.
#[derive(Default)]
pub struct AclCache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    policies: HashMap<String, Compiled>,
    acls: HashMap<Vec<(String, u64)>, Arc<Acl>>,
    next_version: u64,
}

struct Compiled {
    /// The stored value this was compiled from. Holding it keeps the read
    /// cache's shared copy alive, so a pointer match proves the same value.
    stored: Arc<StoredPolicy>,
    version: u64,
    /// None when the stored text does not parse (it then grants nothing).
    policy: Option<Arc<Policy>>,
}

/// Combined ACLs kept at most; past this the map starts again (each one is
/// rebuilt from compiled policies on its next use).
const MAX_ACLS: usize = 1024;

impl AclCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The compiled form of a stored policy and its version.
    fn compile(&self, name: &str, stored: Arc<StoredPolicy>) -> (u64, Option<Arc<Policy>>) {
        if let Some(c) = self.lock().policies.get_mut(name) {
            if Arc::ptr_eq(&c.stored, &stored) {
                return (c.version, c.policy.clone());
            }
            // Read again after the read cache expired: same text, same policy.
            if c.stored.text == stored.text {
                c.stored = stored;
                return (c.version, c.policy.clone());
            }
        }
        // Parsed outside the lock: a large policy takes milliseconds.
        let policy = match Policy::parse(name, &stored.text) {
            Ok(p) => Some(Arc::new(p)),
            // A stored policy was valid when written; if it is not now,
            // grant nothing from it rather than fail every request.
            Err(e) => {
                tracing::warn!(policy = %name, error = %e, "stored policy does not parse");
                None
            }
        };
        let mut inner = self.lock();
        inner.next_version += 1;
        let version = inner.next_version;
        inner.policies.insert(
            name.to_owned(),
            Compiled {
                stored,
                version,
                policy: policy.clone(),
            },
        );
        (version, policy)
    }

    fn forget(&self, name: &str) {
        self.lock().policies.remove(name);
    }

    fn acl(&self, key: Vec<(String, u64)>, policies: &[Arc<Policy>]) -> Arc<Acl> {
        if let Some(acl) = self.lock().acls.get(&key) {
            return acl.clone();
        }
        let acl = Arc::new(Acl::new(policies.iter().map(|p| &**p)));
        let mut inner = self.lock();
        if inner.acls.len() >= MAX_ACLS {
            inner.acls.clear();
        }
        inner.acls.insert(key, acl.clone());
        acl
    }
}

/// The ACL of a token's policies. Policies are read from storage (through
/// its read cache) on every request, so that several servers sharing one
/// database agree within the cache's lifetime; what is read is compiled
/// only when its text changed.
pub async fn acl_for(core: &Core, token: &TokenEntry) -> Result<Arc<Acl>> {
    let mut names: Vec<&String> = token.policies.iter().collect();
    names.sort();
    names.dedup();
    let mut versions = Vec::with_capacity(names.len());
    let mut compiled = Vec::with_capacity(names.len());
    for name in names {
        match core.storage.get_shared::<StoredPolicy>(&key(name)).await? {
            Some(stored) => {
                let (version, policy) = core.acl_cache.compile(name, stored);
                versions.push((name.clone(), version));
                compiled.extend(policy);
            }
            None => core.acl_cache.forget(name),
        }
    }
    Ok(core.acl_cache.acl(versions, &compiled))
}

pub async fn has_sudo(core: &Core, token: &TokenEntry, path: &str) -> Result<bool> {
    if token.is_root() {
        return Ok(true);
    }
    Ok(acl_for(core, token).await?.allows(path, Capability::Sudo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(text: &str) -> Arc<StoredPolicy> {
        Arc::new(StoredPolicy {
            name: "p".into(),
            text: text.into(),
        })
    }

    #[test]
    fn policies_compile_once_per_text() {
        let cache = AclCache::default();
        let a = stored(r#"path "a" { capabilities = ["read"] }"#);
        let (v1, p1) = cache.compile("p", a.clone());
        // The same shared value, and the same text read again: no new version.
        assert_eq!(cache.compile("p", a).0, v1);
        let (v2, p2) = cache.compile("p", stored(r#"path "a" { capabilities = ["read"] }"#));
        assert_eq!(v2, v1);
        assert!(Arc::ptr_eq(&p1.unwrap(), &p2.unwrap()));
        // A changed text is compiled again under a new version.
        let (v3, p3) = cache.compile("p", stored(r#"path "b" { capabilities = ["read"] }"#));
        assert_ne!(v3, v1);
        let p3 = p3.unwrap();
        // The combined ACL follows the version: the old one is not reused.
        let old = cache.acl(vec![("p".into(), v1)], &[]);
        let new = cache.acl(vec![("p".into(), v3)], std::slice::from_ref(&p3));
        assert!(!Arc::ptr_eq(&old, &new));
        assert!(new.allows("b", Capability::Read));
        assert!(Arc::ptr_eq(&new, &cache.acl(vec![("p".into(), v3)], &[p3])));
        // Text that no longer parses grants nothing but is still versioned.
        let (v4, p4) = cache.compile("p", stored("not a policy"));
        assert!(v4 > v3 && p4.is_none());
    }
}
