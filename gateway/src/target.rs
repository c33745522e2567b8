//! The gateway's SSH client to the target: logs in with the session's
//! credential after checking the target's host key against pinned keys or
//! a host CA. There is no path that skips the host key check.

use std::sync::{Arc, Mutex};

use russh::client;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::Algorithm;
use russh::keys::EcdsaCurve;
use russh::keys::{Certificate, HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};

use tokio::sync::oneshot;

use crate::session::{Credential, HostKeyTrust, Session};

/// A logged-in connection to the target.
pub type Target = client::Handle<HostKeyCheck>;

/// Resolves (with an error, its sender being dropped) when the connection
/// to the target has ended, whichever side ended it.
pub type TargetLost = oneshot::Receiver<()>;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot reach the target {host}:{port}: {detail}")]
    Connect {
        host: String,
        port: u16,
        detail: String,
    },
    #[error("the target's host key is not trusted: {0}")]
    HostKey(String),
    #[error("the target did not answer and accept the login within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the target refused the account's credential")]
    Auth,
    #[error("SSH error with the target: {0}")]
    Ssh(#[from] russh::Error),
}

/// The client handler: only checks the host key; everything else arrives
/// on channels.
pub struct HostKeyCheck {
    trust: HostKeyTrust,
    host: String,
    now: u64,
    /// Why the key was refused, for the error the user sees.
    refusal: Arc<Mutex<Option<String>>>,
    /// Dropped with the handler, that is when russh's connection task ends.
    _alive: Option<oneshot::Sender<()>>,
}

impl HostKeyCheck {
    fn verdict(&self, presented: &PublicKeyOrCertificate) -> Result<(), String> {
        match (&self.trust, presented) {
            (HostKeyTrust::PinnedKeys(keys), PublicKeyOrCertificate::PublicKey { key, .. }) => {
                if keys.iter().any(|k| k.key_data() == key.key_data()) {
                    Ok(())
                } else {
                    Err(format!(
                        "it presented {} {}, which is not among the resource's pinned keys",
                        key.algorithm(),
                        key.fingerprint(HashAlg::Sha256)
                    ))
                }
            }
            (HostKeyTrust::PinnedKeys(_), PublicKeyOrCertificate::Certificate(_)) => {
                Err("it presented a host certificate, but the resource pins keys".into())
            }
            (HostKeyTrust::HostCa(_), PublicKeyOrCertificate::PublicKey { key, .. }) => {
                Err(format!(
                "it presented the plain key {} {} without a certificate of the resource's host CA",
                key.algorithm(),
                key.fingerprint(HashAlg::Sha256)
            ))
            }
            (HostKeyTrust::HostCa(cas), PublicKeyOrCertificate::Certificate(cert)) => {
                check_host_cert(cert, cas, &self.host, self.now)
            }
        }
    }
}

fn check_host_cert(
    cert: &Certificate,
    cas: &[russh::keys::PublicKey],
    host: &str,
    now: u64,
) -> Result<(), String> {
    if cert.cert_type() != CertType::Host {
        return Err("its certificate is not a host certificate".into());
    }
    let fingerprints: Vec<_> = cas.iter().map(|k| k.fingerprint(HashAlg::Sha256)).collect();
    cert.validate_at(now, &fingerprints).map_err(|e| {
        format!(
            "its host certificate (key ID {:?}) is not valid for the resource's host CA: {e}",
            cert.key_id()
        )
    })?;
    if !cert.valid_principals().iter().any(|p| p == host) {
        return Err(format!(
            "its host certificate names {:?}, not {host:?}",
            cert.valid_principals()
        ));
    }
    Ok(())
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match self.verdict(server_public_key) {
            Ok(()) => Ok(true),
            Err(why) => {
                if let Ok(mut slot) = self.refusal.lock() {
                    *slot = Some(why);
                }
                Ok(false)
            }
        }
    }
}

/// Host certificate algorithms the client asks for when the resource
/// trusts a host CA, so the target presents its certificate.
const CERT_ALGORITHMS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

/// How often the gateway checks that a silent target is still there.
const TARGET_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);

/// Connects to the session's target, checks its host key and logs in.
pub async fn connect(session: &Session, now: u64) -> Result<(Target, TargetLost), TargetError> {
    let mut config = client::Config::default();
    if let HostKeyTrust::HostCa(_) = session.host_key_trust {
        config.preferred.host_key_certificates = CERT_ALGORITHMS.into();
    }
    config.nodelay = true;
    // A target that vanishes without a word (a partition) is noticed after
    // three unanswered keepalives, and the person told, rather than left
    // with a session that hangs until it times out.
    config.keepalive_interval = Some(TARGET_KEEPALIVE);
    config.keepalive_max = 3;
    let refusal = Arc::new(Mutex::new(None));
    let (alive, lost) = oneshot::channel();
    let handler = HostKeyCheck {
        trust: session.host_key_trust.clone(),
        host: session.target_host.clone(),
        now,
        refusal: refusal.clone(),
        _alive: Some(alive),
    };
    let addr = (session.target_host.as_str(), session.target_port);
    let connected = client::connect(Arc::new(config), addr, handler).await;
    let mut handle = match connected {
        Ok(handle) => handle,
        Err(e) => {
            if let Some(why) = refusal.lock().ok().and_then(|mut slot| slot.take()) {
                return Err(TargetError::HostKey(why));
            }
            return Err(match e {
                russh::Error::IO(io) => TargetError::Connect {
                    host: session.target_host.clone(),
                    port: session.target_port,
                    detail: io.to_string(),
                },
                other => TargetError::Ssh(other),
            });
        }
    };
    let user = session.target_username.as_str();
    let ok = match &session.credential {
        Credential::Password(password) => {
            let plain = handle
                .authenticate_password(user, password.as_str())
                .await?
                .success();
            plain || keyboard_interactive(&mut handle, user, password).await?
        }
        Credential::Key(key) => {
            let hash = handle.best_supported_rsa_hash().await?.flatten();
            let key = PrivateKeyWithHashAlg::new(Arc::new(key.clone()), hash);
            handle.authenticate_publickey(user, key).await?.success()
        }
        Credential::Certificate { key, cert } => handle
            .authenticate_openssh_cert(user, Arc::new(key.clone()), (**cert).clone())
            .await?
            .success(),
    };
    if ok {
        Ok((handle, lost))
    } else {
        Err(TargetError::Auth)
    }
}

/// Answers every hidden prompt with the password (PAM's "Password: "),
/// visible prompts with nothing; a few rounds at most.
async fn keyboard_interactive(
    handle: &mut Target,
    user: &str,
    password: &str,
) -> Result<bool, TargetError> {
    use client::KeyboardInteractiveAuthResponse as R;
    let mut reply = handle
        .authenticate_keyboard_interactive_start(user, None)
        .await?;
    for _ in 0..4 {
        match reply {
            R::Success => return Ok(true),
            R::Failure { .. } => return Ok(false),
            R::InfoRequest { prompts, .. } => {
                let answers = prompts
                    .iter()
                    .map(|p| {
                        if p.echo {
                            String::new()
                        } else {
                            password.to_owned()
                        }
                    })
                    .collect();
                reply = handle
                    .authenticate_keyboard_interactive_respond(answers)
                    .await?;
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::PublicKey;

    const A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFw2sFw+dxSvV+bm0wjC+wLdtPUJZMWivFmnO12B2VcC a";
    const B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbi1r8gMSRZFgWoA7wM/y7qNbR1OXAXgqKqYv2ynCeG b";

    fn key(line: &str) -> PublicKey {
        PublicKey::from_openssh(line).unwrap()
    }

    fn check(trust: HostKeyTrust) -> HostKeyCheck {
        HostKeyCheck {
            trust,
            host: "db1.example".into(),
            now: 1_000,
            refusal: Arc::default(),
            _alive: None,
        }
    }

    fn presented(line: &str) -> PublicKeyOrCertificate {
        PublicKeyOrCertificate::PublicKey {
            key: key(line),
            hash_alg: None,
        }
    }

    #[test]
    fn a_pinned_key_matches_by_key_not_by_comment() {
        let pinned = check(HostKeyTrust::PinnedKeys(vec![key(A)]));
        assert!(pinned.verdict(&presented(A)).is_ok());
        let renamed = A.replace(" a", " another comment");
        assert!(pinned.verdict(&presented(&renamed)).is_ok());
        let err = pinned.verdict(&presented(B)).unwrap_err();
        assert!(
            err.contains("not among the resource's pinned keys"),
            "{err}"
        );
        assert!(err.contains("SHA256:"), "{err}");
    }

    #[test]
    fn no_pinned_key_trusts_nothing() {
        let empty = check(HostKeyTrust::PinnedKeys(vec![]));
        assert!(empty.verdict(&presented(A)).is_err());
    }

    #[test]
    fn a_host_ca_never_accepts_a_plain_key_even_the_cas_own() {
        let ca = check(HostKeyTrust::HostCa(vec![key(A)]));
        let err = ca.verdict(&presented(A)).unwrap_err();
        assert!(err.contains("without a certificate"), "{err}");
    }
}
