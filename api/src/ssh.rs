//! The ssh secrets engine's request and response types (Vault's shapes), as
//! the server writes them and the CLI, hostd and the PAM helper read them.
//!
//! Paths (under `/v1/<mount>/`):
//! - `POST sign/<role>` → [`SignedKey`] in `data`.
//! - `POST issue/<role>` → [`IssuedKey`].
//! - `POST revoke` → [`Revoked`].
//! - `POST creds/<role>` [`CredsRequest`] → [`Credential`], with the lease
//!   in the envelope.
//! - `POST verify` [`VerifyRequest`] (no token, or a host's token) →
//!   [`Verified`].
//! - `POST lookup` [`LookupRequest`] → [`RoleNames`]; `GET
//!   config/zeroaddress` → [`RoleNames`] as well.

use serde::{Deserialize, Serialize};

/// What `vault-ssh-helper -verify-only` sends to `verify` instead of an OTP.
pub const VERIFY_ECHO_REQUEST: &str = "verify-echo-request";
/// What the server answers to [`VERIFY_ECHO_REQUEST`] (in [`Verified::Echo`]).
pub const VERIFY_ECHO_RESPONSE: &str = "verify-echo-response";

/// `POST sign/<role>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedKey {
    /// Hex, as in the inventory (`certs/<serial>`).
    pub serial_number: String,
    /// The certificate, one OpenSSH line ending in a newline.
    pub signed_key: String,
    /// The issuer that signed it, as Vault names it.
    #[serde(default)]
    pub issuer_id: String,
}

/// `POST issue/<role>`: a new key pair and its certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedKey {
    pub serial_number: String,
    pub signed_key: String,
    /// OpenSSH private key (PEM-like text).
    pub private_key: String,
    /// `ed25519`, `rsa` or `ec`.
    pub private_key_type: String,
    /// The issuer that signed it, as Vault names it.
    #[serde(default)]
    pub issuer_id: String,
}

/// `POST revoke`: the serial numbers revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub revoked: Vec<String>,
}

/// `POST lift` (gatepass): a key-ID or key revocation lifted; the serial
/// numbers of the certificates it covered, which stay revoked until they
/// expire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifted {
    pub still_revoked: Vec<String>,
}

/// `POST creds/<role>`. Either `ip`, or `host` (gatepass: an enrolled host's
/// ID or name, optionally with one of its addresses in `ip`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// gatepass, dynamic keys: hold the answer until the host reports the
    /// key installed, at most this long (e.g. "30s"; at most 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<String>,
}

/// What kind of credential `creds` made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredKind {
    /// `key` is a one-time password (a UUID) that the host's helper verifies.
    Otp,
    /// `key` is an OpenSSH private key whose public half hostd installs.
    Dynamic,
}

/// `POST creds/<role>`'s `data`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub ip: String,
    /// The OTP, or the dynamic key's private key.
    pub key: String,
    pub key_type: CredKind,
    pub port: u16,
    pub username: String,
    /// gatepass, with `wait`: whether the host reported the dynamic key
    /// installed before the answer was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed: Option<bool>,
}

/// `POST verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// An OTP, or [`VERIFY_ECHO_REQUEST`].
    pub otp: String,
}

/// What a verified OTP was issued for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtpInfo {
    pub username: String,
    pub ip: String,
    #[serde(default)]
    pub role_name: String,
}

/// `POST verify`'s `data`: the OTP's details (it is now used up), or the
/// answer to [`VERIFY_ECHO_REQUEST`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Verified {
    Otp(OtpInfo),
    Echo { message: String },
}

impl Verified {
    /// The answer to [`VERIFY_ECHO_REQUEST`].
    pub fn echo() -> Verified {
        Verified::Echo {
            message: VERIFY_ECHO_RESPONSE.to_string(),
        }
    }
}

/// `POST lookup`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupRequest {
    pub ip: String,
}

/// `POST lookup` (the OTP and dynamic roles that serve an IP) and `GET
/// config/zeroaddress` (the roles that serve any IP).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleNames {
    pub roles: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verify_answers_read_back_as_what_they_are() {
        let otp: Verified = serde_json::from_value(
            json!({"username": "root", "ip": "10.0.0.1", "role_name": "otp"}),
        )
        .unwrap();
        assert!(matches!(otp, Verified::Otp(ref i) if i.role_name == "otp"));
        let echo: Verified =
            serde_json::from_value(json!({"message": VERIFY_ECHO_RESPONSE})).unwrap();
        assert_eq!(echo, Verified::echo());
        assert_eq!(
            serde_json::to_value(Verified::echo()).unwrap(),
            json!({"message": "verify-echo-response"})
        );
    }

    #[test]
    fn a_credential_without_wait_has_no_installed_field() {
        let c = Credential {
            ip: "10.0.0.1".into(),
            key: "k".into(),
            key_type: CredKind::Otp,
            port: 22,
            username: "u".into(),
            installed: None,
        };
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"ip": "10.0.0.1", "key": "k", "key_type": "otp", "port": 22, "username": "u"})
        );
    }
}
