//! The hosts protocol between `gatepass-server` and `gatepass-hostd`, shared
//! by both sides so they cannot drift apart.
//!
//! Paths (under `/v1/`):
//! - `POST hosts/join-tokens` (admin) → [`JoinToken`]; body [`NewJoinToken`].
//! - `POST hosts/enroll` (no token; the join token is in the body)
//!   [`EnrollRequest`] → [`Enrolled`] in `data`.
//! - `GET hosts/self/state?index=N&wait=30s` (host token) → [`HostState`] in
//!   `data`. When `index` equals the current state's index, the server holds
//!   the request until the state changes or `wait` (at most 60 s) passes.
//!   `&applied=M` acknowledges the state of index M as applied (hostd's
//!   poll after an apply carries it, and so does its poll after a failed
//!   one; an acknowledgement with more to report goes to `hosts/self/ack`).
//!   The server that takes it shows it at once and writes it within a
//!   second; one that stops abruptly before may lose it, and the host's
//!   next poll, after the failed one, says it again.
//! - `POST hosts/self/sign-host-key` (host token) [`SignHostKey`] →
//!   [`SignedHostKey`].
//! - `POST hosts/self/ack` (host token) [`Ack`]: what the host has applied,
//!   and which managed files it found changed by someone else and repaired.
//! - `POST hosts/self/unenroll` (host token): forget this host, revoke its token.
//! - `GET hosts/self` (host token) → [`HostInfo`].
//! - `LIST hosts`, `GET|DELETE hosts/<host_id or hostname>` (admin) →
//!   [`HostInfo`]; host names
//!   are unique, and `replace: true` in [`EnrollRequest`] takes a name over.
//! - `POST|GET|DELETE hosts/mappings/<local user>` (admin) [`Mapping`]:
//!   certificate principals allowed to log in as that local user on every
//!   host in mapped mode; `LIST hosts/mappings`.
//!
//! Request bodies read typed fields leniently, as Vault does ([`crate::lenient`]):
//! `num_uses` may be `"10"`, a list may be `"a,b"`, so `gatepass write` and
//! `vault write` (which send every value as a string) work as well as JSON.

use serde::{Deserialize, Serialize};

/// `POST hosts/join-tokens`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NewJoinToken {
    /// Lifetime, e.g. "1h" or 3600 (default 1h).
    #[serde(
        default,
        deserialize_with = "crate::lenient::opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<String>,
    /// How many hosts may enroll with it (default 1; 0 = unlimited until expiry).
    #[serde(
        default,
        deserialize_with = "crate::lenient::opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub num_uses: Option<i64>,
    /// The ssh mount whose CA the hosts trust for user certificates (default "ssh").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_mount: Option<String>,
    /// The ssh mount and role that sign the hosts' host keys (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_mount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_role: Option<String>,
    /// Principals mode: "mapped" writes AuthorizedPrincipalsFile from the
    /// login mappings; "default" (the default) leaves sshd's rule (the
    /// certificate must name the login user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principals: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinToken {
    pub join_token: String,
    pub accessor: String,
    pub expire_time: i64,
    pub num_uses: i64,
}

/// A join token not yet spent or expired, as `LIST hosts/join-tokens`
/// describes it: by accessor, never by the token itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinTokenInfo {
    pub accessor: String,
    pub expire_time: i64,
    /// Enrollments left; 0 means unlimited until it expires.
    pub uses_left: i64,
    pub user_mount: String,
    #[serde(default)]
    pub host_mount: Option<String>,
    #[serde(default)]
    pub host_role: Option<String>,
    pub principals: String,
}

/// `LIST hosts/join-tokens`: accessors (soonest to expire first) and
/// `key_info` (accessor → [`JoinTokenInfo`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JoinTokenList {
    pub keys: Vec<String>,
    pub key_info: std::collections::BTreeMap<String, JoinTokenInfo>,
}

/// `POST hosts/enroll`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub join_token: String,
    pub hostname: String,
    /// The host's own interface addresses (dynamic keys for these IPs are
    /// routed to it).
    #[serde(default, deserialize_with = "crate::lenient::list")]
    pub addresses: Vec<String>,
    /// The host's public host keys (OpenSSH lines).
    #[serde(default, deserialize_with = "crate::lenient::list")]
    pub host_keys: Vec<String>,
    /// Take the place of an enrolled host of the same name (it is removed
    /// and its token revoked); without it, a taken name is refused.
    #[serde(default, deserialize_with = "crate::lenient::bool")]
    pub replace: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Enrolled {
    pub host_id: String,
    /// The host's own token (policy `gatepass-host`); keep it 0600.
    pub host_token: String,
    pub user_mount: String,
    #[serde(default)]
    pub host_mount: Option<String>,
    #[serde(default)]
    pub host_role: Option<String>,
    pub principals: String,
}

/// `GET hosts/self` and `GET hosts/<host_id or hostname>`: an enrolled host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub host_id: String,
    pub hostname: String,
    pub addresses: Vec<String>,
    /// The public host keys it enrolled with (OpenSSH lines).
    pub host_keys: Vec<String>,
    /// RFC 3339.
    pub enrolled: String,
    /// RFC 3339: when it last asked for its state (to the minute).
    pub last_seen: String,
    pub user_mount: String,
    pub host_mount: Option<String>,
    pub host_role: Option<String>,
    pub principals: String,
    /// The state index the host last acknowledged applying (none before
    /// its first acknowledgement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
    /// The state index the server would hand the host now; the host is
    /// current when it equals `applied_index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_index: Option<u64>,
    /// The last time the host found files it manages changed by someone
    /// else, and put them back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
}

/// Files a host repaired: they had been changed on disk since hostd wrote
/// them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// The paths hostd rewrote, as the host names them.
    pub paths: Vec<String>,
    /// RFC 3339: when the server heard of it.
    pub time: String,
}

/// What a host should look like. Everything hostd writes comes from here.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostState {
    /// Changes whenever anything below changes.
    pub index: u64,
    /// TrustedUserCAKeys content: one CA public key per line.
    pub user_ca_keys: String,
    /// RevokedKeys content: an OpenSSH KRL, base64.
    pub krl: String,
    /// Mapped mode: local user → principals (AuthorizedPrincipalsFile per
    /// user). None: default mode, no principals files.
    #[serde(default)]
    pub principals: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// Dynamic keys for this host's addresses.
    #[serde(default)]
    pub dynamic_keys: Vec<DynamicKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicKey {
    /// Local user whose authorized_keys file gets the key.
    pub user: String,
    /// OpenSSH public key line (no options, no comment).
    pub public_key: String,
    /// authorized_keys options from the role (`key_option_specs`), may be empty.
    #[serde(default)]
    pub options: String,
    /// Unix time the key stops working (hostd writes `expiry-time=`).
    pub expires: i64,
    /// The lease, written as the line's comment.
    pub lease_id: String,
}

/// `POST hosts/self/sign-host-key`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignHostKey {
    pub public_key: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignedHostKey {
    pub signed_key: String,
    pub serial_number: String,
    /// Unix time the certificate expires (renew at 2/3 of its life).
    pub valid_before: i64,
    pub valid_after: i64,
}

/// `POST hosts/self/ack`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ack {
    #[serde(deserialize_with = "crate::lenient::int")]
    pub index: u64,
    /// Leases of the dynamic keys now installed.
    #[serde(default, deserialize_with = "crate::lenient::list")]
    pub installed: Vec<String>,
    /// Managed files hostd found changed on disk by someone else and
    /// rewrote in this pass (absent from older hostd: nothing to report).
    #[serde(
        default,
        deserialize_with = "crate::lenient::list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub drift: Vec<String>,
}

/// `POST hosts/mappings/<user>`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Mapping {
    #[serde(deserialize_with = "crate::lenient::list")]
    pub principals: Vec<String>,
}
