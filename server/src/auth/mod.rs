//! Authentication: tokens (the one credential every request carries), and
//! the login methods that hand them out (AppRole, userpass, and OIDC / JWT
//! mounts enabled through `sys/auth`).

pub mod approle;
pub mod jwt;
pub mod methods;
pub mod mounts;
pub mod oidc_cache;
pub mod token;
pub mod token_roles;
pub mod userpass;
pub mod wrapping;

use rand::distributions::Alphanumeric;
use rand::Rng;

/// Random text of `len` letters and digits from the OS-seeded CSPRNG.
pub fn random_text(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Names of login-method objects (AppRole roles, userpass users):
/// case-insensitive as in Vault, so stored lower-cased.
pub fn validate_login_name(what: &str, name: &str) -> crate::error::Result<String> {
    let n = name.to_lowercase();
    crate::path::validate_name(what, &n)?;
    Ok(n)
}

/// Settings shared by every login method for the tokens it issues (Vault's
/// `token_*` fields).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TokenSettings {
    #[serde(default)]
    pub token_policies: Vec<String>,
    #[serde(default)]
    pub token_ttl: i64,
    #[serde(default)]
    pub token_max_ttl: i64,
    #[serde(default)]
    pub token_num_uses: i64,
    #[serde(default)]
    pub token_bound_cidrs: Vec<ipnet::IpNet>,
    #[serde(default)]
    pub token_no_default_policy: bool,
}

impl TokenSettings {
    /// The token a login with these settings gets: `display_name`, one
    /// `meta` entry naming who logged in, the login path, and the TTLs of
    /// the auth method that issues it (lowered by `token_max_ttl`, see
    /// [`Self::limits`]).
    pub fn new_token(
        &self,
        display_name: String,
        meta: (&str, &str),
        path: String,
        method: crate::tune::TtlLimits,
    ) -> token::NewToken {
        token::NewToken {
            policies: self.token_policies.clone(),
            no_default_policy: self.token_no_default_policy,
            ttl: (self.token_ttl > 0).then_some(self.token_ttl),
            // Vault's token_max_ttl caps the TTL and renewals like the
            // mount's max_lease_ttl (see `limits`); it is not an explicit
            // maximum of the token.
            explicit_max_ttl: 0,
            num_uses: self.token_num_uses,
            renewable: true,
            display_name,
            meta: std::collections::BTreeMap::from([(meta.0.to_string(), meta.1.to_string())]),
            bound_cidrs: self.token_bound_cidrs.clone(),
            path,
            limits: self.limits(method),
            ..token::NewToken::default()
        }
    }

    /// The TTLs a token issued with these settings gets from its auth
    /// method's (`sys/auth/<path>/tune`): `token_max_ttl`, where set,
    /// lowers the maximum.
    pub fn limits(&self, method: crate::tune::TtlLimits) -> crate::tune::TtlLimits {
        let max = if self.token_max_ttl > 0 {
            self.token_max_ttl.min(method.max)
        } else {
            method.max
        };
        crate::tune::TtlLimits {
            default: method.default.min(max),
            max,
        }
    }

    /// Reads the `token_*` fields (and Vault's older `policies`, `ttl`,
    /// `max_ttl` names) over the current values.
    pub fn update_from(&mut self, f: &crate::request::Fields) -> crate::error::Result<()> {
        if let Some(p) = f.str_list("token_policies")? {
            self.token_policies = crate::policies::normalize_login_names(p)?;
        } else if let Some(p) = f.str_list("policies")? {
            self.token_policies = crate::policies::normalize_login_names(p)?;
        }
        if let Some(t) = f.duration("token_ttl")?.or(f.duration("ttl")?) {
            self.token_ttl = t;
        }
        if let Some(t) = f.duration("token_max_ttl")?.or(f.duration("max_ttl")?) {
            self.token_max_ttl = t;
        }
        if let Some(n) = f.non_negative("token_num_uses")? {
            self.token_num_uses = n;
        }
        if let Some(c) = f.cidr_list("token_bound_cidrs")? {
            self.token_bound_cidrs = c;
        }
        if let Some(b) = f.bool("token_no_default_policy")? {
            self.token_no_default_policy = b;
        }
        if self.token_max_ttl > 0 && self.token_ttl > self.token_max_ttl {
            return Err(crate::error::Error::invalid(
                "token_ttl must not be greater than token_max_ttl",
            ));
        }
        Ok(())
    }

    pub fn to_json(&self, out: &mut serde_json::Map<String, serde_json::Value>) {
        use serde_json::json;
        out.insert("token_policies".into(), json!(self.token_policies));
        out.insert("policies".into(), json!(self.token_policies));
        out.insert("token_ttl".into(), json!(self.token_ttl));
        out.insert("token_max_ttl".into(), json!(self.token_max_ttl));
        out.insert("token_num_uses".into(), json!(self.token_num_uses));
        out.insert(
            "token_bound_cidrs".into(),
            json!(self
                .token_bound_cidrs
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()),
        );
        out.insert(
            "token_no_default_policy".into(),
            json!(self.token_no_default_policy),
        );
        out.insert("token_type".into(), json!("service"));
    }
}
