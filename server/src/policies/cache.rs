//! Compiled policies and combined ACLs, kept between requests (the server's
//! state holds one [`AclCache`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::policy::{Acl, Policy};

/// A policy as stored (`policy/acl/<name>`).
#[derive(Serialize, Deserialize)]
pub struct StoredPolicy {
    pub name: String,
    pub text: String,
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
    pub(super) fn compile(
        &self,
        name: &str,
        stored: Arc<StoredPolicy>,
    ) -> (u64, Option<Arc<Policy>>) {
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
            // A stored policy was valid when written; if it is not now
            // (a stricter parser), the tokens holding it are granted
            // nothing at all ([`AclCache::acl`]): leaving it out would drop
            // its `deny` rules and widen what their other policies grant.
            Err(e) => {
                tracing::error!(policy = %name, error = %e, "stored policy does not parse: tokens holding it are denied everything until it is written again");
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

    pub(super) fn forget(&self, name: &str) {
        self.lock().policies.remove(name);
    }

    /// The ACL of a set of compiled policies (`None`: one that does not
    /// parse, which makes it grant nothing).
    pub(super) fn acl(
        &self,
        key: Vec<(String, u64)>,
        policies: &[Option<Arc<Policy>>],
    ) -> Arc<Acl> {
        if let Some(acl) = self.lock().acls.get(&key) {
            return acl.clone();
        }
        let acl = if policies.iter().any(Option::is_none) {
            Acl::new(std::iter::empty())
        } else {
            Acl::new(policies.iter().flatten().map(|p| &**p))
        };
        let acl = Arc::new(acl);
        let mut inner = self.lock();
        if inner.acls.len() >= MAX_ACLS {
            inner.acls.clear();
        }
        inner.acls.insert(key, acl.clone());
        acl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Capability;

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
        let new = cache.acl(vec![("p".into(), v3)], &[Some(p3.clone())]);
        assert!(!Arc::ptr_eq(&old, &new));
        assert!(new.allows("b", Capability::Read));
        assert!(Arc::ptr_eq(
            &new,
            &cache.acl(vec![("p".into(), v3)], &[Some(p3)])
        ));
        // Text that no longer parses is still versioned.
        let (v4, p4) = cache.compile("p", stored("not a policy"));
        assert!(v4 > v3 && p4.is_none());
    }

    /// A token holding a policy that no longer parses is granted nothing,
    /// also not what its other policies grant: the broken one's `deny`
    /// rules are not known, and leaving them out would widen the rest.
    #[test]
    fn a_policy_that_no_longer_parses_makes_its_tokens_grant_nothing() {
        let cache = AclCache::default();
        let (va, a) = cache.compile(
            "broad",
            stored(r#"path "ssh/*" { capabilities = ["update"] }"#),
        );
        let (vb, b) = cache.compile(
            "restrict",
            stored("path \"ssh/roles/*\" { capabilities = [\"deny\"] } ;;"),
        );
        assert!(b.is_none());
        let acl = cache.acl(
            vec![("broad".into(), va), ("restrict".into(), vb)],
            &[a.clone(), b],
        );
        assert!(!acl.allows("ssh/roles/x", Capability::Update));
        assert!(!acl.allows("ssh/sign/x", Capability::Update));
        // Alone, the one that parses grants what it says.
        let acl = cache.acl(vec![("broad".into(), va)], &[a]);
        assert!(acl.allows("ssh/sign/x", Capability::Update));
    }

    #[test]
    fn constraints_are_part_of_the_compiled_policy() {
        use crate::policy::Identity;
        let cache = AclCache::default();
        let open = r#"path "ssh/sign/*" { capabilities = ["update"] }"#;
        let limited = r#"path "ssh/sign/*" {
            capabilities = ["update"]
            allowed_parameters = { "valid_principals" = ["alice"] }
        }"#;
        let body = serde_json::json!({"valid_principals": "root"});
        let data = body.as_object().cloned().unwrap_or_default();
        let who = Identity::default();
        let (v1, p1) = cache.compile("p", stored(open));
        let acl = cache.acl(vec![("p".into(), v1)], &[p1]);
        assert!(acl.check_parameters("ssh/sign/x", &data, &who).is_ok());
        // Only the constraints changed: a new version, and its ACL refuses.
        let (v2, p2) = cache.compile("p", stored(limited));
        assert_ne!(v1, v2);
        let acl = cache.acl(vec![("p".into(), v2)], &[p2]);
        assert!(acl.check_parameters("ssh/sign/x", &data, &who).is_err());
    }
}
