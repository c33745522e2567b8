//! The gateway session CA: an ed25519 key the server makes once and keeps
//! sealed in storage (as ssh mounts keep their CA keys), which signs the
//! user certificates of access grants. Gateways trust only it, so a
//! certificate from an ssh mount, however broad its role, opens no session.

use serde::{Deserialize, Serialize};
use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

use crate::error::{Error, Result};
use crate::state::Core;

const KEY: &str = "pam/session-ca";

/// How far back a certificate's `valid_after` goes, for clocks a little
/// behind the server's.
const SKEW: i64 = 60;

#[derive(Clone, Serialize, Deserialize)]
struct StoredCa {
    /// OpenSSH private key; sealed with everything else in storage.
    private_key: String,
    public_key: String,
    created: i64,
}

impl Drop for StoredCa {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.private_key);
    }
}

fn ssh_err(e: ssh_key::Error) -> Error {
    Error::internal(format!("session CA: {e}"))
}

/// The CA, made on first use. Of servers racing to make it, one wins and
/// all use its key.
async fn load(core: &Core, now: i64) -> Result<StoredCa> {
    if let Some(ca) = core.storage.get::<StoredCa>(KEY).await? {
        return Ok(ca);
    }
    let key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519).map_err(ssh_err)?;
    let ca = StoredCa {
        private_key: key.to_openssh(LineEnding::LF).map_err(ssh_err)?.to_string(),
        public_key: key.public_key().to_openssh().map_err(ssh_err)?,
        created: now,
    };
    core.storage.put_if_absent(KEY, &ca).await?;
    core.storage
        .get::<StoredCa>(KEY)
        .await?
        .ok_or_else(|| Error::internal("session CA vanished after creation"))
}

/// The CA's public keys, OpenSSH lines (one now; a list so that a rotation
/// can add the next before the old one goes).
pub async fn public_keys(core: &Core, now: i64) -> Result<Vec<String>> {
    Ok(vec![load(core, now).await?.public_key.clone()])
}

/// What one access certificate says.
pub struct AccessCert<'a> {
    pub public_key: &'a PublicKey,
    pub session_id: &'a str,
    pub login: &'a str,
    pub expires_at: i64,
    pub allow_forwarding: bool,
}

/// Signs an access certificate: key ID = session ID, the one principal =
/// the account's name, valid until the session's end, no critical options.
pub async fn sign(core: &Core, c: &AccessCert<'_>, now: i64) -> Result<String> {
    let stored = load(core, now).await?;
    let ca = PrivateKey::from_openssh(&stored.private_key).map_err(ssh_err)?;
    let mut b = Builder::new_with_random_nonce(
        &mut rand::rngs::OsRng,
        c.public_key.key_data().clone(),
        (now - SKEW).max(0) as u64,
        c.expires_at.max(0) as u64,
    )
    .map_err(|e| Error::invalid(format!("cannot build the certificate: {e}")))?;
    b.serial(rand::random()).map_err(ssh_err)?;
    b.cert_type(CertType::User).map_err(ssh_err)?;
    b.key_id(c.session_id).map_err(ssh_err)?;
    b.valid_principal(c.login).map_err(ssh_err)?;
    b.extension("permit-pty", "").map_err(ssh_err)?;
    if c.allow_forwarding {
        b.extension("permit-port-forwarding", "").map_err(ssh_err)?;
    }
    let cert = b
        .sign(&ca)
        .map_err(|e| Error::internal(format!("session CA signing failed: {e}")))?;
    cert.to_openssh().map_err(ssh_err)
}
