//! Token roles (`auth/token/roles/<name>`): what a token created through
//! `auth/token/create/<name>` may be, decided by whoever wrote the role
//! rather than by the creator's own reach. A role can make orphan and
//! periodic tokens without the creator holding `sudo`, which is what roles
//! are for in Vault; the policies it allows bound what the creator may ask.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::request::Fields;
use crate::state::Core;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRole {
    pub name: String,
    /// The policies a token of this role may have; empty: the creator's.
    #[serde(default)]
    pub allowed_policies: Vec<String>,
    /// Policies it may never have, whatever else says.
    #[serde(default)]
    pub disallowed_policies: Vec<String>,
    /// Tokens of the role have no parent.
    #[serde(default)]
    pub orphan: bool,
    #[serde(default = "yes")]
    pub renewable: bool,
    /// Appended to the token's path (`auth/token/create/<role>/<suffix>`).
    #[serde(default)]
    pub path_suffix: String,
    /// Seconds; tokens of the role are periodic with this period.
    #[serde(default)]
    pub token_period: i64,
    #[serde(default)]
    pub token_explicit_max_ttl: i64,
    #[serde(default)]
    pub token_bound_cidrs: Vec<ipnet::IpNet>,
    #[serde(default)]
    pub token_no_default_policy: bool,
    /// Uses each of the role's tokens has at most (0: no limit).
    #[serde(default)]
    pub token_num_uses: i64,
}

fn yes() -> bool {
    true
}

fn key(name: &str) -> String {
    format!("token-role/{name}")
}

fn name_of(name: &str) -> Result<String> {
    super::validate_login_name("token role", name)
}

pub async fn read(core: &Core, name: &str) -> Result<Option<TokenRole>> {
    core.storage.get(&key(&name_of(name)?)).await
}

pub async fn list(core: &Core) -> Result<Vec<String>> {
    core.storage.list("token-role/").await
}

pub async fn delete(core: &Core, name: &str) -> Result<()> {
    core.storage.delete(&key(&name_of(name)?)).await.map(|_| ())
}

/// Writes a role: the fields given over the current ones (or the defaults).
pub async fn write(core: &Core, name: &str, f: &Fields) -> Result<()> {
    let name = name_of(name)?;
    let mut r = read(core, &name).await?.unwrap_or(TokenRole {
        name: name.clone(),
        allowed_policies: vec![],
        disallowed_policies: vec![],
        orphan: false,
        renewable: true,
        path_suffix: String::new(),
        token_period: 0,
        token_explicit_max_ttl: 0,
        token_bound_cidrs: vec![],
        token_no_default_policy: false,
        token_num_uses: 0,
    });
    // What gatepass cannot honour is refused rather than stored unused.
    for k in [
        "allowed_entity_aliases",
        "allowed_policies_glob",
        "disallowed_policies_glob",
    ] {
        if f.str_list(k)?.is_some_and(|v| !v.is_empty()) {
            return Err(Error::invalid(format!(
                "{k} is not supported: gatepass has no identity entities or policy globs in token roles"
            )));
        }
    }
    match f.str("token_type")?.as_deref() {
        None | Some("") | Some("service") | Some("default") | Some("default-service") => {}
        Some(other) => {
            return Err(Error::invalid(format!(
                "token_type {other:?} is not supported; use \"service\""
            )))
        }
    }
    if let Some(p) = f.str_list("allowed_policies")? {
        r.allowed_policies = crate::policies::normalize_names(p)?;
    }
    if let Some(p) = f.str_list("disallowed_policies")? {
        r.disallowed_policies = crate::policies::normalize_names(p)?;
    }
    if let Some(v) = f.bool("orphan")? {
        r.orphan = v;
    }
    if let Some(v) = f.bool("renewable")? {
        r.renewable = v;
    }
    if let Some(s) = f.str("path_suffix")? {
        let s = s.trim_matches('/').to_string();
        if !s.is_empty() {
            crate::path::validate_name("path_suffix", &s)?;
        }
        r.path_suffix = s;
    }
    if let Some(p) = f.duration("token_period")?.or(f.duration("period")?) {
        r.token_period = p.max(0);
    }
    if let Some(m) = f
        .duration("token_explicit_max_ttl")?
        .or(f.duration("explicit_max_ttl")?)
    {
        r.token_explicit_max_ttl = m.max(0);
    }
    if let Some(c) = f
        .cidr_list("token_bound_cidrs")?
        .or(f.cidr_list("bound_cidrs")?)
    {
        r.token_bound_cidrs = c;
    }
    if let Some(v) = f.bool("token_no_default_policy")? {
        r.token_no_default_policy = v;
    }
    if let Some(n) = f.non_negative("token_num_uses")? {
        r.token_num_uses = n;
    }
    core.storage.put(&key(&name), &r).await
}

/// `GET auth/token/roles/<name>`, Vault's fields.
pub fn json(r: &TokenRole) -> Value {
    let mut v = json!({
        "name": r.name,
        "allowed_policies": r.allowed_policies,
        "disallowed_policies": r.disallowed_policies,
        "allowed_policies_glob": [],
        "disallowed_policies_glob": [],
        "allowed_entity_aliases": [],
        "orphan": r.orphan,
        "renewable": r.renewable,
        "path_suffix": r.path_suffix,
        "token_period": r.token_period,
        "period": r.token_period,
        "token_explicit_max_ttl": r.token_explicit_max_ttl,
        "explicit_max_ttl": r.token_explicit_max_ttl,
        "token_no_default_policy": r.token_no_default_policy,
        "token_type": "service",
    });
    // Shown only when set, as Vault does.
    if r.token_num_uses > 0 {
        v["token_num_uses"] = json!(r.token_num_uses);
    }
    if !r.token_bound_cidrs.is_empty() {
        v["token_bound_cidrs"] = json!(r
            .token_bound_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>());
    }
    v
}

impl TokenRole {
    /// The policies of a token created through the role: those asked for
    /// (each allowed by the role), or without a request the role's allowed
    /// ones, else the creator's; never a disallowed one. A request for a
    /// disallowed or not allowed policy is refused, as Vault does. A role
    /// without allowed policies grants nothing of its own: what is asked
    /// for must then be the creator's (unless `privileged`: root, or sudo
    /// on the path), as without a role; else any token that may use such a
    /// role could mint itself any policy.
    pub fn policies(
        &self,
        requested: Option<Vec<String>>,
        creator: &[String],
        privileged: bool,
    ) -> Result<Vec<String>> {
        let chosen = match requested {
            Some(p) => {
                if let Some(bad) = p.iter().find(|x| self.disallowed_policies.contains(x)) {
                    return Err(Error::invalid(format!(
                        "token policy {bad:?} is disallowed by this role"
                    )));
                }
                if !self.allowed_policies.is_empty() {
                    if let Some(bad) = p
                        .iter()
                        .find(|x| *x != "default" && !self.allowed_policies.contains(x))
                    {
                        return Err(Error::invalid(format!(
                            "token policies ({bad}) must be subset of the role's allowed policies"
                        )));
                    }
                } else if !privileged {
                    if let Some(bad) = p.iter().find(|x| *x != "default" && !creator.contains(x)) {
                        return Err(Error::invalid(format!(
                            "token policies ({bad}) must be subset of the parent token's policies"
                        )));
                    }
                }
                p
            }
            None if !self.allowed_policies.is_empty() => self.allowed_policies.clone(),
            None => creator.to_vec(),
        };
        // Every policy the token would get is checked, the role's allowed
        // ones and the creator's included, as Vault checks them: a creator
        // holding a disallowed policy asks for the others by name. (A
        // disallowed `default` is not added to them: `disallows_default`.)
        if let Some(bad) = chosen.iter().find(|x| self.disallowed_policies.contains(x)) {
            return Err(Error::invalid(format!(
                "token policy {bad:?} is disallowed by this role"
            )));
        }
        Ok(chosen)
    }

    /// Whether the role's tokens go without the `default` policy, which
    /// Vault then does not add rather than refuse.
    pub fn disallows_default(&self) -> bool {
        self.token_no_default_policy || self.disallowed_policies.iter().any(|p| p == "default")
    }

    /// The path tokens of the role are created at.
    pub fn token_path(&self) -> String {
        if self.path_suffix.is_empty() {
            format!("auth/token/create/{}", self.name)
        } else {
            format!("auth/token/create/{}/{}", self.name, self.path_suffix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(allowed: &[&str], disallowed: &[&str]) -> TokenRole {
        TokenRole {
            name: "ci".into(),
            allowed_policies: allowed.iter().map(|s| s.to_string()).collect(),
            disallowed_policies: disallowed.iter().map(|s| s.to_string()).collect(),
            orphan: false,
            renewable: true,
            path_suffix: String::new(),
            token_period: 0,
            token_explicit_max_ttl: 0,
            token_bound_cidrs: vec![],
            token_no_default_policy: false,
            token_num_uses: 0,
        }
    }

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn policies_follow_the_role() {
        let r = role(&["ci", "deploy"], &["admin"]);
        assert_eq!(
            r.policies(None, &v(&["admin"]), false).unwrap(),
            v(&["ci", "deploy"])
        );
        assert_eq!(
            r.policies(Some(v(&["ci"])), &[], false).unwrap(),
            v(&["ci"])
        );
        assert!(r.policies(Some(v(&["ops"])), &[], false).is_err());
        assert!(r.policies(Some(v(&["admin"])), &[], true).is_err());
        // A creator holding a disallowed policy is refused when it asks for
        // nothing, as in Vault, and names the others to get them.
        let open = role(&[], &["admin"]);
        let err = open
            .policies(None, &v(&["admin", "ops"]), false)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("token policy \"admin\" is disallowed by this role"),
            "{err}"
        );
        assert_eq!(
            open.policies(Some(v(&["ops"])), &v(&["admin", "ops"]), false)
                .unwrap(),
            v(&["ops"])
        );
        assert!(open.policies(Some(v(&["admin"])), &[], true).is_err());
        // Without allowed policies, only the creator's may be asked for,
        // unless the creator is privileged.
        let ops = v(&["ops"]);
        assert_eq!(open.policies(Some(ops.clone()), &ops, false).unwrap(), ops);
        let err = open
            .policies(Some(v(&["superuser"])), &ops, false)
            .unwrap_err();
        assert!(err.to_string().contains("subset of the parent"), "{err}");
        assert_eq!(
            open.policies(Some(v(&["superuser"])), &ops, true).unwrap(),
            v(&["superuser"])
        );
        // A disallowed policy among the role's allowed ones is refused when
        // nothing is asked for; a disallowed default is left out instead.
        let both = role(&["p1", "admin"], &["admin"]);
        let err = both.policies(None, &ops, false).unwrap_err();
        assert!(err.to_string().contains("\"admin\" is disallowed"), "{err}");
        let no_default = role(&["p1"], &["default"]);
        assert!(no_default.disallows_default() && !both.disallows_default());
        let err = no_default
            .policies(Some(v(&["default"])), &ops, false)
            .unwrap_err();
        assert!(
            err.to_string().contains("\"default\" is disallowed"),
            "{err}"
        );
    }
}
