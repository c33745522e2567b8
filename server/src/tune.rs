//! What `sys/mounts/<path>/tune` and `sys/auth/<path>/tune` set: the TTLs
//! a secrets engine's leases or an auth method's tokens fall back on and
//! are capped by. Shared by mounts and the auth methods, and importing
//! neither.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Vault's default and maximum lease and token lifetime (768h).
pub const SYSTEM_MAX_TTL: i64 = 768 * 3600;

/// A mount's or an auth method's tunable settings (`sys/mounts/<path>/tune`,
/// `sys/auth/<path>/tune`). Zero TTLs mean the system's (768 h).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tune {
    /// Seconds: the TTL of certificates and leases whose role sets none.
    #[serde(default)]
    pub default_lease_ttl: i64,
    /// Seconds: the longest TTL, where the role sets no `max_ttl`.
    #[serde(default)]
    pub max_lease_ttl: i64,
    /// Vault's UI listing hint (`hidden` or `unauth`); kept and shown.
    #[serde(default)]
    pub listing_visibility: String,
}

/// A `tune` write: what is given changes, the rest stays.
#[derive(Clone, Debug, Default)]
pub struct TuneInput {
    pub default_lease_ttl: Option<i64>,
    pub max_lease_ttl: Option<i64>,
    pub description: Option<String>,
    pub listing_visibility: Option<String>,
}

impl TuneInput {
    /// Nothing is to change.
    pub fn is_empty(&self) -> bool {
        self.default_lease_ttl.is_none()
            && self.max_lease_ttl.is_none()
            && self.description.is_none()
            && self.listing_visibility.is_none()
    }
}

/// The TTLs a role falls back on when it sets none, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlLimits {
    pub default: i64,
    pub max: i64,
}

impl Default for TtlLimits {
    /// The system's: 768 hours each, as Vault's.
    fn default() -> Self {
        let sys = SYSTEM_MAX_TTL;
        TtlLimits {
            default: sys,
            max: sys,
        }
    }
}

impl Tune {
    /// The tuned TTLs, where set, else the system's; the default never
    /// above the maximum.
    pub fn limits(&self) -> TtlLimits {
        let sys = TtlLimits::default();
        let max = if self.max_lease_ttl > 0 {
            self.max_lease_ttl
        } else {
            sys.max
        };
        let default = if self.default_lease_ttl > 0 {
            self.default_lease_ttl
        } else {
            sys.default
        };
        TtlLimits {
            default: default.min(max),
            max,
        }
    }

    /// A `tune` write over these settings (all but the description, which
    /// lives beside them): checked whole before anything changes.
    pub fn apply(&mut self, t: &TuneInput) -> Result<()> {
        for (name, v) in [
            ("default_lease_ttl", t.default_lease_ttl),
            ("max_lease_ttl", t.max_lease_ttl),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(Error::invalid(format!("{name} must not be negative")));
            }
        }
        if let Some(v) = &t.listing_visibility {
            if !matches!(v.as_str(), "" | "hidden" | "unauth") {
                return Err(Error::invalid(format!(
                    "listing_visibility must be \"hidden\", \"unauth\" or empty, not {v:?}"
                )));
            }
        }
        let d = t.default_lease_ttl.unwrap_or(self.default_lease_ttl);
        let x = t.max_lease_ttl.unwrap_or(self.max_lease_ttl);
        if d > 0 && x > 0 && d > x {
            return Err(Error::invalid(
                "default_lease_ttl cannot be greater than max_lease_ttl",
            ));
        }
        self.default_lease_ttl = d;
        self.max_lease_ttl = x;
        if let Some(v) = &t.listing_visibility {
            self.listing_visibility = v.clone();
        }
        Ok(())
    }
}
