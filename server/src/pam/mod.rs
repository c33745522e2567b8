//! PAM gateway sessions: gateways (enrolled like hosts, with a token of
//! their own), resources (servers reached through a gateway) and their
//! accounts (with write-only secrets), and sessions (granted for a
//! duration, signed by the gateway session CA, opened by the gateway, ended
//! with a reason). The wire types are `gatepass_api::pam`, the routes
//! `crate::http::pam`; `gatepass-gateway` is the other side.
//!
//! Every value the storage keeps is sealed (AES-256-GCM under the seal key,
//! bound to its storage key: see `crate::seal` and `crate::storage`), so
//! account passwords and private keys, and the session CA's key, are sealed
//! at rest like the ssh mounts' CA keys; no read, list or error returns them.
//!
//! Storage keys: `pam/join/<hash>` gateway join tokens, `pam/gateway/<name>`,
//! `pam/resource/<name>`, `pam/account/<resource>/<name>`,
//! `pam/session/<id>`, `pam/open/<gateway>/<id>` (the index of a gateway's
//! open sessions its long-poll reads), `pam/session-ca`.

pub mod accounts;
pub mod events;
pub mod gateways;
pub mod policy;
pub mod recordings;
pub mod relay;
pub mod resources;
pub mod session_ca;
pub mod sessions;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use policy::{GATEWAY_POLICY, GATEWAY_POLICY_TEXT};

/// A gateway, resource or account name: lower-case letters, digits, `-`,
/// `_` and `.`, starting with a letter or digit, at most 63 characters. It
/// is a path segment and a storage key segment, so nothing else gets in.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Name(String);

/// As the quoted text, so that `{name:?}` in a message reads `"web"`.
impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Name {
    /// `what` names the field in the error ("resource", "account", …).
    pub fn parse(what: &str, s: &str) -> Result<Name> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
            });
        if ok {
            Ok(Name(s.to_string()))
        } else {
            Err(Error::invalid(format!(
                "{what} name {s:?} is not valid: use lower-case letters, digits, '-', '_' and '.', starting with a letter or digit, at most 63 characters"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A write-only secret (an account's password or private key). Storage
/// seals it with every other value; `Debug` never shows it, and its text is
/// wiped when it goes out of memory.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// A duration field ("1h", 3600) in seconds, which must be positive.
pub(crate) fn positive_duration(field: &str, text: &str) -> Result<i64> {
    let secs = crate::duration::parse(text).ok_or_else(|| {
        Error::invalid(format!(
            "{field}: {text:?} is not a duration (examples: 3600, \"30m\", \"4h\")"
        ))
    })?;
    if secs <= 0 {
        return Err(Error::invalid(format!("{field} must be positive")));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["web", "db-1", "a.b_c", "0x"] {
            assert!(Name::parse("resource", ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "Web", "-x", ".x", "a/b", "a b", "é", long.as_str()] {
            assert!(Name::parse("resource", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(positive_duration("d", "1h").ok(), Some(3600));
        assert_eq!(positive_duration("d", "90").ok(), Some(90));
        assert!(positive_duration("d", "0").is_err());
        assert!(positive_duration("d", "soon").is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
