//! Accounts: how the gateway logs in to a resource (password, key, or a
//! certificate made per session), the longest session, and whether port
//! forwarding goes through. Passwords and private keys are write-only.

use gatepass_api::pam::{AccountInfo, AccountSpec, AuthMethod};
use serde::{Deserialize, Serialize};

use super::{Name, Secret};
use crate::error::{Error, Result};
use crate::state::Core;
use crate::{hosts, mounts, ssh};

/// The account's way in, with exactly what that way needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "auth_method", rename_all = "snake_case")]
pub enum Login {
    Password {
        password: Secret,
    },
    Key {
        private_key: Secret,
    },
    /// A new key pair per session, signed by this ssh mount and role.
    Certificate {
        ca_mount: String,
        ca_role: String,
    },
}

impl Login {
    pub fn method(&self) -> AuthMethod {
        match self {
            Login::Password { .. } => AuthMethod::Password,
            Login::Key { .. } => AuthMethod::Key,
            Login::Certificate { .. } => AuthMethod::Certificate,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Account {
    pub resource: Name,
    pub name: Name,
    /// The user name on the target (a valid Linux user name).
    pub username: String,
    pub login: Login,
    /// Seconds, positive.
    pub max_duration: i64,
    pub allow_forwarding: bool,
    /// Record what the user types; accounts stored before it was kept do.
    #[serde(default = "yes")]
    pub record_input: bool,
}

fn yes() -> bool {
    true
}

fn account_key(resource: &str, name: &str) -> String {
    format!("pam/account/{resource}/{name}")
}

/// Default longest session.
const DEFAULT_MAX_DURATION: i64 = 3600;

/// The longest `max_duration` an account may have: 768 h (32 days), the
/// server's system max lease TTL, which already bounds every token and
/// certificate it issues. A just-in-time session is meant to last hours;
/// anything longer is a standing credential in disguise, and an unbounded
/// one made `now + duration` overflow and the certificate valid for ever.
pub const MAX_SESSION_DURATION: i64 = crate::tune::SYSTEM_MAX_TTL;

/// Checks an unencrypted OpenSSH private key.
fn check_private_key(text: &str) -> Result<()> {
    let key = ssh_key::PrivateKey::from_openssh(text.trim()).map_err(|_| {
        Error::invalid(
            "private_key: not an OpenSSH private key (-----BEGIN OPENSSH PRIVATE KEY-----)",
        )
    })?;
    if key.is_encrypted() {
        return Err(Error::invalid(
            "private_key: the key is passphrase-protected; store it unencrypted (it is sealed at rest)",
        ));
    }
    Ok(())
}

/// Checks that a mount and role exist and that the role signs user
/// certificates.
async fn check_ca(core: &Core, mount: &str, role: &str) -> Result<()> {
    let m = mounts::get(core, mount)
        .await?
        .ok_or_else(|| Error::invalid(format!("ca_mount: no ssh mount at {mount:?}")))?;
    let r = ssh::ca_role(core, &m, role)
        .await
        .map_err(|e| Error::invalid(format!("ca_role: {}", e.public_message())))?;
    if !r.allow_user_certificates {
        return Err(Error::invalid(format!(
            "ca_role: role {role} does not allow user certificates"
        )));
    }
    Ok(())
}

/// Makes an account from a spec; `old` is the stored one, whose secret a
/// rewrite without one keeps (when the method still needs it).
pub async fn validate(
    core: &Core,
    resource: &Name,
    name: &Name,
    spec: AccountSpec,
    old: Option<&Account>,
) -> Result<Account> {
    hosts::validate_local_user(&spec.username).map_err(|_| {
        Error::invalid(format!(
            "username {:?} is not a valid Linux user name",
            spec.username
        ))
    })?;
    let method = spec
        .auth_method
        .ok_or_else(|| Error::invalid("auth_method is required: password, key or certificate"))?;
    let old_login = old.map(|a| &a.login);
    let extra = |field: &str| {
        Error::invalid(format!(
            "{field} does not go with auth_method {}",
            match method {
                AuthMethod::Password => "password",
                AuthMethod::Key => "key",
                AuthMethod::Certificate => "certificate",
            }
        ))
    };
    let login = match method {
        AuthMethod::Password => {
            if spec.private_key.is_some() {
                return Err(extra("private_key"));
            }
            if spec.ca_mount.is_some() || spec.ca_role.is_some() {
                return Err(extra("ca_mount/ca_role"));
            }
            let password = match (spec.password, old_login) {
                (Some(p), _) if !p.is_empty() => Secret::new(p),
                (Some(_), _) => return Err(Error::invalid("password must not be empty")),
                (None, Some(Login::Password { password })) => password.clone(),
                (None, _) => {
                    return Err(Error::invalid(
                        "password is required for auth_method password",
                    ))
                }
            };
            Login::Password { password }
        }
        AuthMethod::Key => {
            if spec.password.is_some() {
                return Err(extra("password"));
            }
            if spec.ca_mount.is_some() || spec.ca_role.is_some() {
                return Err(extra("ca_mount/ca_role"));
            }
            let private_key = match (spec.private_key, old_login) {
                (Some(k), _) => {
                    check_private_key(&k)?;
                    Secret::new(k)
                }
                (None, Some(Login::Key { private_key })) => private_key.clone(),
                (None, _) => {
                    return Err(Error::invalid(
                        "private_key is required for auth_method key",
                    ))
                }
            };
            Login::Key { private_key }
        }
        AuthMethod::Certificate => {
            if spec.password.is_some() {
                return Err(extra("password"));
            }
            if spec.private_key.is_some() {
                return Err(extra("private_key"));
            }
            let (Some(ca_mount), Some(ca_role)) = (spec.ca_mount, spec.ca_role) else {
                return Err(Error::invalid(
                    "ca_mount and ca_role are required for auth_method certificate",
                ));
            };
            let ca_mount = ca_mount.trim().trim_matches('/').to_string();
            check_ca(core, &ca_mount, &ca_role).await?;
            Login::Certificate { ca_mount, ca_role }
        }
    };
    let max_duration = match &spec.max_duration {
        Some(t) => checked_max_duration(t)?,
        None => DEFAULT_MAX_DURATION,
    };
    Ok(Account {
        resource: resource.clone(),
        name: name.clone(),
        username: spec.username,
        login,
        max_duration,
        allow_forwarding: spec.allow_forwarding.unwrap_or(false),
        record_input: spec.record_input.unwrap_or(true),
    })
}

/// A `max_duration` as written: positive and at most the bound.
fn checked_max_duration(text: &str) -> Result<i64> {
    let d = super::positive_duration("max_duration", text)?;
    if d > MAX_SESSION_DURATION {
        return Err(Error::invalid(format!(
            "max_duration {} is longer than the longest session allowed, {}",
            crate::duration::text(d),
            crate::duration::text(MAX_SESSION_DURATION)
        )));
    }
    Ok(d)
}

pub async fn write(core: &Core, a: &Account) -> Result<()> {
    core.storage
        .put(&account_key(a.resource.as_str(), a.name.as_str()), a)
        .await
}

pub async fn get(core: &Core, resource: &Name, name: &Name) -> Result<Option<Account>> {
    core.storage
        .get(&account_key(resource.as_str(), name.as_str()))
        .await
}

/// The account, or the server's 404.
pub async fn require(core: &Core, resource: &Name, name: &Name) -> Result<Account> {
    get(core, resource, name).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "resource {resource:?} has no account named {name:?}"
        ))
    })
}

pub async fn list(core: &Core, resource: &Name) -> Result<Vec<String>> {
    core.storage
        .list(&format!("pam/account/{}/", resource.as_str()))
        .await
}

pub async fn delete(core: &Core, resource: &Name, name: &Name) -> Result<()> {
    core.storage
        .delete(&account_key(resource.as_str(), name.as_str()))
        .await?;
    Ok(())
}

pub(super) async fn delete_all(core: &Core, resource: &Name) -> Result<()> {
    let keys = core
        .storage
        .keys_with_prefix(&format!("pam/account/{}/", resource.as_str()))
        .await?;
    core.storage.delete_many(&keys).await
}

/// What reads show: never the secret, only whether one is stored.
pub fn info(a: &Account) -> AccountInfo {
    let (ca_mount, ca_role) = match &a.login {
        Login::Certificate { ca_mount, ca_role } => (Some(ca_mount.clone()), Some(ca_role.clone())),
        _ => (None, None),
    };
    AccountInfo {
        resource: a.resource.to_string(),
        name: a.name.to_string(),
        auth_method: a.login.method(),
        username: a.username.clone(),
        ca_mount,
        ca_role,
        max_duration: a.max_duration,
        allow_forwarding: a.allow_forwarding,
        has_secret: matches!(a.login, Login::Password { .. } | Login::Key { .. }),
        record_input: a.record_input,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_must_be_openssh_and_unencrypted() {
        let key = ssh_key::PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519)
            .unwrap();
        let text = key.to_openssh(ssh_key::LineEnding::LF).unwrap();
        assert!(check_private_key(&text).is_ok());
        let enc = key.encrypt(&mut rand::rngs::OsRng, "pw").unwrap();
        let enc_text = enc.to_openssh(ssh_key::LineEnding::LF).unwrap();
        assert!(check_private_key(&enc_text).is_err());
        assert!(check_private_key("-----BEGIN RSA PRIVATE KEY-----\nxx\n").is_err());
    }

    #[test]
    fn max_duration_is_bounded_at_write() {
        assert_eq!(checked_max_duration("4h").unwrap(), 4 * 3600);
        assert_eq!(checked_max_duration("768h").unwrap(), MAX_SESSION_DURATION);
        for too_long in ["768h1s", "100000000h", "9223372036854775807"] {
            let e = checked_max_duration(too_long).unwrap_err();
            assert!(matches!(e, Error::InvalidRequest(_)), "{too_long}: {e}");
            assert!(
                e.to_string()
                    .contains("longer than the longest session allowed, 768h"),
                "{e}"
            );
        }
        assert!(checked_max_duration("0").is_err());
    }

    #[test]
    fn info_never_holds_the_secret() {
        let a = Account {
            resource: Name::parse("r", "web").unwrap(),
            name: Name::parse("a", "root").unwrap(),
            username: "root".into(),
            login: Login::Password {
                password: Secret::new("s3cret-pw".into()),
            },
            max_duration: 3600,
            allow_forwarding: false,
            record_input: true,
        };
        let shown = serde_json::to_string(&info(&a)).unwrap();
        assert!(!shown.contains("s3cret-pw"));
        assert!(shown.contains("\"has_secret\":true"));
    }
}
