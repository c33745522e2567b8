//! The PAM sessions protocol (`/v1/pam/`): what administrators, users, the
//! CLI and `gatepass-gateway` send and receive, shared by all sides so they
//! cannot drift apart.
//!
//! Administrators and users (their own tokens, ACL-checked like every path):
//! - `POST pam/gateways/join-tokens` [`NewGatewayJoinToken`] →
//!   [`crate::hosts::JoinToken`].
//! - `LIST pam/gateways`; `GET|DELETE pam/gateways/<name>` → [`GatewayInfo`].
//! - `POST|GET|DELETE pam/resources/<name>` [`ResourceSpec`] →
//!   [`ResourceInfo`]; `LIST pam/resources`.
//! - `POST|GET|DELETE pam/resources/<r>/accounts/<a>` [`AccountSpec`] →
//!   [`AccountInfo`] (never the password or private key); `LIST
//!   pam/resources/<r>/accounts`.
//! - `POST pam/resources/<r>/accounts/<a>/access` [`AccessRequest`] →
//!   [`Access`]: a session and a user certificate for it.
//! - `LIST pam/sessions?resource=&account=&user=&state=` → `keys` (session
//!   IDs, newest first) and `key_info` (ID → [`SessionInfo`]).
//! - `GET pam/sessions/<id>` → [`SessionInfo`].
//! - `POST pam/sessions/<id>/terminate` → [`SessionInfo`].
//! - `GET pam/sessions/<id>/recording` → [`SessionRecordings`]: the
//!   session's recordings, checked by the server, with their events. Its
//!   own ACL path, so that seeing a session need not mean reading what was
//!   typed in it.
//! - `POST pam/sessions/<id>/relay` with `Connection: Upgrade` and
//!   `Upgrade: gatepass-relay` ([`RELAY_PROTOCOL`]): for a relay gateway's
//!   session, by the token that asked for it; `101 Switching Protocols`
//!   once the gateway dialed in (504 if it does not within 10 s), then
//!   the connection carries ssh's bytes to the gateway.
//!
//! The gateway (no token to enroll; then its own token, policy
//! `gatepass-gateway`, which reaches only `pam/gateway/self/…`):
//! - `POST pam/gateways/enroll` [`GatewayEnroll`] → [`GatewayEnrolled`].
//! - `POST pam/gateway/self/started` [`GatewayStarted`] → [`GatewaySessions`]:
//!   at start, sessions left active by the gateway's previous run end
//!   (reason `gateway_lost`).
//! - `GET pam/gateway/self/sessions?index=N&wait=30s` → [`GatewaySessions`]:
//!   the gateway's open sessions; held while `index` is current, as hosts'
//!   state is (`wait` at most 60 s).
//! - `POST pam/gateway/self/sessions/<id>/open` [`OpenSession`] →
//!   [`GatewaySession`]: the session's target and credential, only to the
//!   gateway the resource names and only while the session is pending (a
//!   reusable one: while it is open); the session becomes active.
//! - `POST pam/gateway/self/sessions/<id>/end` [`EndSession`]: the gateway
//!   closed it (or could not open it), with the reason. A reusable
//!   session's connection closing (`closed`, `idle`) or failing (`failed`)
//!   does not end it.
//! - `POST pam/gateway/self/sessions/<id>/recordings/<rec>/chunks/<i>`
//!   [`crate::recording::SealedChunk`]: one sealed chunk of a recording;
//!   idempotent (the same chunk again is harmless; another one under the
//!   same index is refused).
//! - `POST pam/gateway/self/sessions/<id>/recordings/<rec>/end`
//!   [`crate::recording::RecordingEnd`]: the signed end, once.
//! - `POST pam/gateway/self/relay/<conn_id>` with `Upgrade:
//!   gatepass-relay`, for each of [`GatewaySessions::relay_requests`]:
//!   `101`, then the connection carries the user's ssh bytes.
//!
//! Times users read are RFC 3339; times the gateway computes with are Unix
//! seconds. Request bodies read typed fields leniently ([`crate::lenient`]),
//! so `gatepass write` and `vault write` work as well as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The policy every gateway token carries.
pub const GATEWAY_POLICY: &str = "gatepass-gateway";

/// The `Upgrade:` protocol of relayed connections.
pub const RELAY_PROTOCOL: &str = "gatepass-relay";

/// `POST pam/gateways/join-tokens`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NewGatewayJoinToken {
    /// Lifetime, e.g. "1h" or 3600 (default 1h).
    #[serde(
        default,
        deserialize_with = "crate::lenient::opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<String>,
    /// How many gateways may enroll with it (default 1; 0 = unlimited until
    /// expiry).
    #[serde(
        default,
        deserialize_with = "crate::lenient::opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub num_uses: Option<i64>,
}

/// `POST pam/gateways/enroll`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GatewayEnroll {
    pub join_token: String,
    /// The gateway's name: resources name their gateway by it. Lower-case
    /// letters, digits, `-`, `_` and `.`, at most 63 characters.
    pub name: String,
    /// `host:port` users' ssh dials to reach the gateway; empty for a
    /// relay gateway.
    #[serde(default)]
    pub address: String,
    /// The gateway's SSH host public keys (OpenSSH lines): users' ssh pins
    /// them (the CLI writes them to a known_hosts file of its own).
    #[serde(default, deserialize_with = "crate::lenient::list")]
    pub host_keys: Vec<String>,
    /// Take the place of an enrolled gateway of the same name (its token is
    /// revoked); without it, a taken name is refused.
    #[serde(default, deserialize_with = "crate::lenient::bool")]
    pub replace: bool,
    /// The gateway has no inbound port: it keeps its long-poll to the
    /// server and dials out for each user connection, which the server
    /// relays (`POST pam/sessions/<id>/relay`).
    #[serde(
        default,
        deserialize_with = "crate::lenient::bool",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub relay: bool,
    /// The public half of the gateway's recording signing key (ed25519,
    /// base64 of its 32 bytes): the gateway signs the end of each session
    /// recording with it ([`crate::recording`]).
    #[serde(
        default,
        deserialize_with = "crate::lenient::opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub recording_key: Option<String>,
}

/// What a gateway gets at enrollment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GatewayEnrolled {
    pub name: String,
    /// The gateway's own token (policy [`GATEWAY_POLICY`]); keep it 0600.
    pub gateway_token: String,
    /// The gateway session CA's public keys (OpenSSH lines); also in every
    /// [`GatewaySessions`].
    pub session_ca_keys: Vec<String>,
}

/// `GET pam/gateways/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInfo {
    pub name: String,
    /// Empty for a relay gateway.
    pub address: String,
    /// Users reach it through the server ([`GatewayEnroll::relay`]).
    #[serde(default)]
    pub relay: bool,
    pub host_keys: Vec<String>,
    /// RFC 3339.
    pub enrolled: String,
    /// RFC 3339: when it last asked for its sessions.
    pub last_seen: String,
    /// Its recording signing key (base64 ed25519 public key); None for a
    /// gateway enrolled before recordings were signed.
    #[serde(default)]
    pub recording_key: Option<String>,
}

/// `POST pam/resources/<name>`: a server reached through a gateway.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ResourceSpec {
    /// Only `ssh` (the default).
    #[serde(
        default,
        rename = "type",
        deserialize_with = "crate::lenient::opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub kind: Option<String>,
    /// Host name or address the gateway dials; a host certificate must name
    /// it among its principals.
    pub host: String,
    /// Default 22.
    #[serde(
        default,
        deserialize_with = "crate::lenient::opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<i64>,
    /// The enrolled gateway that reaches it.
    pub gateway: String,
    /// Trust host certificates signed by this ssh mount's CA; or
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ca_mount: Option<String>,
    /// trust these pinned host keys (OpenSSH public key lines, or
    /// known_hosts lines whose key is taken). Exactly one of the two. A
    /// list, or text with one key per line (known_hosts lines hold commas,
    /// so text is not split on them).
    #[serde(
        default,
        deserialize_with = "key_lines",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub known_hosts: Vec<String>,
}

/// A list of strings, or text split into its lines. Null is the empty list.
fn key_lines<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lines {
        Text(String),
        List(Vec<String>),
    }
    Ok(match Option::<Lines>::deserialize(d)? {
        None => Vec::new(),
        Some(Lines::Text(t)) => t
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        Some(Lines::List(l)) => l,
    })
}

/// `GET pam/resources/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub host: String,
    pub port: u16,
    pub gateway: String,
    pub host_ca_mount: Option<String>,
    /// The pinned keys, one OpenSSH public key line each.
    pub known_hosts: Vec<String>,
}

/// How an account logs in to its resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    Password,
    Key,
    Certificate,
}

/// `POST pam/resources/<r>/accounts/<a>`. `password` and `private_key` are
/// write-only: stored sealed, never returned. On a rewrite that leaves them
/// out, the stored one is kept (if the method still needs it).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AccountSpec {
    pub auth_method: Option<AuthMethod>,
    /// The account's user name on the target.
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// OpenSSH private key (unencrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// `certificate`: the ssh mount and role that sign a new key pair for
    /// each session (principal: `username`; valid until the session ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_mount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_role: Option<String>,
    /// Longest session, e.g. "4h" (default 1h).
    #[serde(
        default,
        deserialize_with = "crate::lenient::opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_duration: Option<String>,
    /// Let `direct-tcpip` channels (`ssh -L`) through (default false).
    #[serde(
        default,
        deserialize_with = "crate::lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_forwarding: Option<bool>,
    /// Record what the user types (asciicast `i` events) in the session
    /// recordings (default true). Output is always recorded.
    #[serde(
        default,
        deserialize_with = "crate::lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub record_input: Option<bool>,
}

/// `GET pam/resources/<r>/accounts/<a>`: never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountInfo {
    pub resource: String,
    pub name: String,
    pub auth_method: AuthMethod,
    pub username: String,
    pub ca_mount: Option<String>,
    pub ca_role: Option<String>,
    /// Seconds.
    pub max_duration: i64,
    pub allow_forwarding: bool,
    /// Whether a password or private key is stored (for those methods).
    pub has_secret: bool,
    /// Whether what the user types is recorded.
    #[serde(default = "crate::pam::yes")]
    pub record_input: bool,
}

pub(crate) fn yes() -> bool {
    true
}

/// `POST pam/resources/<r>/accounts/<a>/access`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AccessRequest {
    /// e.g. "1h" or 3600; at most the account's `max_duration` (default:
    /// `max_duration`).
    #[serde(
        default,
        deserialize_with = "crate::lenient::opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration: Option<String>,
    /// The caller's SSH public key (OpenSSH line): the certificate is for it.
    pub public_key: String,
    /// Let the certificate open any number of connections until the
    /// session ends (what `gatepass pam ssh config` asks for, so that
    /// plain `ssh`, `scp` and `sftp` each connect). By default a session
    /// serves one connection and ends, closed by the user, when it closes.
    #[serde(
        default,
        deserialize_with = "crate::lenient::bool",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub reusable: bool,
}

/// A granted session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    pub session_id: String,
    /// `host:port` to ssh to; for a relay gateway, its name.
    pub gateway: String,
    /// The gateway is reached through the server: ssh's connection goes
    /// through `POST pam/sessions/<id>/relay` (`gatepass pam ssh relay`
    /// as ssh's ProxyCommand), not to an address.
    #[serde(default)]
    pub relay: bool,
    /// The gateway's host keys (OpenSSH lines), to pin.
    pub gateway_host_keys: Vec<String>,
    /// The login name to give ssh (the certificate's principal): the
    /// account's name.
    pub login: String,
    /// RFC 3339; the certificate's `valid_before`.
    pub expires_at: String,
    /// Unix seconds, the same instant.
    pub expires_at_unix: i64,
    /// The user certificate for `public_key`, signed by the gateway session
    /// CA, key ID = `session_id`; one OpenSSH line.
    pub signed_key: String,
}

/// A session's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Granted; nobody has connected yet.
    Pending,
    /// A user is connected through the gateway.
    Active,
    Ended,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Its time was up.
    Expired,
    /// An administrator terminated it.
    Terminated,
    /// The user closed the connection.
    Closed,
    /// The gateway stopped, restarted or lost the connection.
    GatewayLost,
    /// The gateway could not log in to the target (host key mismatch,
    /// refused login, unreachable); `detail` says which.
    Failed,
    /// No activity for the gateway's idle timeout.
    Idle,
}

/// `GET pam/sessions/<id>` and the `key_info` of `LIST pam/sessions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub session_id: String,
    pub resource: String,
    pub account: String,
    /// The target account's user name.
    pub username: String,
    pub gateway: String,
    /// Who asked: the token's display name.
    pub user: String,
    /// RFC 3339 times.
    pub created_at: String,
    pub expires_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub state: SessionState,
    /// Whether it serves any number of connections until its end
    /// ([`AccessRequest::reusable`]).
    #[serde(default)]
    pub reusable: bool,
    pub end_reason: Option<EndReason>,
    /// Free text for `failed` and the like.
    pub end_detail: Option<String>,
}

/// `LIST pam/sessions`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionList {
    pub keys: Vec<String>,
    #[serde(default)]
    pub key_info: BTreeMap<String, SessionInfo>,
    /// With `limit`: the `after` of the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// `POST pam/gateway/self/started`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GatewayStarted {
    /// The gateway's current SSH host keys (OpenSSH lines), if changed.
    #[serde(default, deserialize_with = "crate::lenient::list")]
    pub host_keys: Vec<String>,
}

/// `GET pam/gateway/self/sessions`: the gateway's open (pending or active)
/// sessions. A session the gateway serves that is missing here has ended
/// (an administrator terminated it): the gateway closes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewaySessions {
    /// Changes whenever the list or the CA keys change.
    pub index: u64,
    pub sessions: Vec<OpenSessionSummary>,
    /// The gateway session CA's public keys (OpenSSH lines).
    pub session_ca_keys: Vec<String>,
    /// Relayed user connections waiting for this gateway to dial in:
    /// for each, `POST pam/gateway/self/relay/<conn_id>` with `Upgrade:
    /// gatepass-relay` (a relay gateway's; empty for others).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay_requests: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSessionSummary {
    pub session_id: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub state: SessionState,
}

/// `POST pam/gateway/self/sessions/<id>/open`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OpenSession {
    /// `certificate` accounts: the public key of the key pair the gateway
    /// made for this session (OpenSSH line); the server signs it with the
    /// account's CA role. The private key never leaves the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The gateway records nothing (its `[recording] enabled = false`):
    /// the server makes no recording for this connection and puts a
    /// `session_not_recorded` event on record instead, so the gap in the
    /// audit trail is stated, not silent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unrecorded: bool,
}

/// What the gateway needs to log in to the target for one session.
#[derive(Clone, Serialize, Deserialize)]
pub struct GatewaySession {
    pub session_id: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub credential: SessionCredential,
    pub host_key_trust: HostKeyTrust,
    pub allow_forwarding: bool,
    /// The recording of this connection: its ID and key. None from a
    /// server that does not record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<crate::recording::RecordingGrant>,
}

impl std::fmt::Debug for GatewaySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySession")
            .field("session_id", &self.session_id)
            .field("expires_at", &self.expires_at)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("credential", &self.credential)
            .field("host_key_trust", &self.host_key_trust)
            .field("allow_forwarding", &self.allow_forwarding)
            .field("recording", &self.recording)
            .finish()
    }
}

/// The credential, only ever sent to the gateway. `Debug` shows the kind.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "auth_method", rename_all = "snake_case")]
pub enum SessionCredential {
    Password {
        password: String,
    },
    Key {
        private_key: String,
    },
    /// The certificate for the public key the gateway sent in
    /// [`OpenSession`] (one OpenSSH line).
    Certificate {
        signed_key: String,
    },
}

impl std::fmt::Debug for SessionCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionCredential::Password { .. } => "Password(..)",
            SessionCredential::Key { .. } => "Key(..)",
            SessionCredential::Certificate { .. } => "Certificate(..)",
        })
    }
}

/// How the gateway trusts the target's host key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostKeyTrust {
    /// One of these keys (OpenSSH public key lines).
    Pinned { keys: Vec<String> },
    /// A host certificate signed by one of these CA keys, valid now, naming
    /// the host among its principals.
    HostCa { ca_keys: Vec<String> },
}

/// `POST pam/gateway/self/sessions/<id>/end`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndSession {
    pub reason: EndReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `GET pam/sessions/<id>/recording`: the session's recordings (one per
/// connection), each checked, with the events of the chunks that verified.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionRecordings {
    pub session_id: String,
    /// Every recording is whole.
    pub whole: bool,
    pub recordings: Vec<RecordingInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordingInfo {
    pub recording_id: String,
    /// When the connection began, Unix milliseconds: event times are
    /// seconds after it.
    pub started_at_ms: i64,
    /// Chunks stored.
    pub chunks: u64,
    pub verdict: crate::recording::Verdict,
    /// The verdict in words.
    pub message: String,
    /// Whether it ended with the gateway's signed end (complete) or not
    /// (cut, or still recording).
    pub complete: bool,
    /// The events of the chunks before the first fault (with `after`
    /// asked for this recording, only those of the chunks from then on).
    pub events: Vec<crate::recording::Event>,
    /// How many chunks were opened (the events are theirs): what to ask
    /// `after` next time to get only newer events (`watch` does).
    #[serde(default)]
    pub opened_chunks: u64,
}
