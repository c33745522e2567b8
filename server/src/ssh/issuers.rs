//! CA keys ("issuers"). Each ssh mount holds one or more issuers; one is the
//! default. `config/ca` is Vault's single-CA view of the default issuer;
//! `issuers/…`, `issuer/<ref>` and `config/issuers` are OpenBao's API for
//! several, which makes rotation possible: stage a new issuer, let hosts
//! trust both (`public_key` lists every issuer), switch the default, delete
//! the old one.

use serde::{Deserialize, Serialize};
use ssh_key::{Algorithm, EcdsaCurve, HashAlg, LineEnding, PrivateKey, PublicKey};

use crate::error::{Error, Result};
use crate::mounts::Mount;
use crate::state::Core;
use crate::storage::Change;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Issuer {
    pub id: String,
    pub name: String,
    /// OpenSSH public key line.
    pub public_key: String,
    /// OpenSSH private key; sealed with everything else in storage and never
    /// returned by the API.
    pub private_key: String,
    pub created: i64,
}

/// The CA key's text is wiped when an issuer goes out of memory (parsed
/// copies are kept in the read cache and made on every change).
impl Drop for Issuer {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.private_key);
    }
}

impl Issuer {
    pub fn signing_key(&self) -> Result<PrivateKey> {
        PrivateKey::from_openssh(&self.private_key)
            .map_err(|e| Error::internal(format!("stored CA key {} unreadable: {e}", self.id)))
    }

    pub fn public(&self) -> Result<PublicKey> {
        PublicKey::from_openssh(&self.public_key).map_err(|e| {
            Error::internal(format!("stored CA public key {} unreadable: {e}", self.id))
        })
    }

    pub fn key_type(&self) -> String {
        self.public()
            .map(|k| k.algorithm().as_str().to_string())
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct IssuersConfig {
    default: Option<String>,
}

fn issuer_key(m: &Mount, id: &str) -> String {
    format!("{}issuer/{id}", m.data_prefix())
}
fn config_key(m: &Mount) -> String {
    format!("{}config/issuers", m.data_prefix())
}

/// Makes a new CA key. `key_type` takes Vault's names (`ssh-rsa`, `rsa`,
/// `ecdsa-sha2-nistp256`, `ec`, `ssh-ed25519`, `ed25519`).
pub fn generate_key(key_type: &str, key_bits: i64) -> Result<PrivateKey> {
    let mut rng = rand::rngs::OsRng;
    let alg = match key_type {
        "ed25519" | "ssh-ed25519" => Algorithm::Ed25519,
        "ec" | "ecdsa" | "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" => {
            let curve = match (key_type, key_bits) {
                ("ecdsa-sha2-nistp384", _) | (_, 384) => EcdsaCurve::NistP384,
                (_, 0) | (_, 256) => EcdsaCurve::NistP256,
                (_, b) => return Err(Error::invalid(format!("key_bits {b} is not valid for ECDSA: use 256 or 384"))),
            };
            Algorithm::Ecdsa { curve }
        }
        "rsa" | "ssh-rsa" => {
            let bits = match key_bits {
                0 => 4096,
                b @ (2048 | 3072 | 4096) => b as usize,
                b => return Err(Error::invalid(format!("key_bits {b} is not valid for RSA: use 2048, 3072 or 4096"))),
            };
            let kp = ssh_key::private::RsaKeypair::random(&mut rng, bits)
                .map_err(|e| Error::internal(format!("RSA key generation failed: {e}")))?;
            return Ok(PrivateKey::from(kp));
        }
        other => {
            return Err(Error::invalid(format!(
                "unsupported key_type {other:?}: use ed25519, ecdsa-sha2-nistp256, ecdsa-sha2-nistp384 or ssh-rsa"
            )))
        }
    };
    PrivateKey::random(&mut rng, alg)
        .map_err(|e| Error::internal(format!("key generation failed: {e}")))
}

/// Reads an imported private key (OpenSSH format) and checks that it matches
/// the given public key, if any.
pub fn import_key(private_key: &str, public_key: Option<&str>) -> Result<PrivateKey> {
    let key = PrivateKey::from_openssh(private_key.trim()).map_err(|_| {
        Error::invalid("private_key: not an unencrypted OpenSSH private key (-----BEGIN OPENSSH PRIVATE KEY-----)")
    })?;
    if key.is_encrypted() {
        return Err(Error::invalid(
            "private_key: the key is passphrase-protected; import it unencrypted",
        ));
    }
    if let Some(p) = public_key.filter(|p| !p.trim().is_empty()) {
        let pubk = PublicKey::from_openssh(p.trim())
            .map_err(|_| Error::invalid("public_key: not an OpenSSH public key"))?;
        if pubk.key_data() != key.public_key().key_data() {
            return Err(Error::invalid("public_key does not match private_key"));
        }
    }
    match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } | Algorithm::Rsa { .. } => Ok(key),
        other => Err(Error::invalid(format!(
            "unsupported CA key type {}",
            other.as_str()
        ))),
    }
}

pub fn validate_issuer_name(name: &str) -> Result<()> {
    let ok = !crate::path::is_dot_or_empty(name)
        && name.len() <= 64
        && name != "default"
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid issuer name {name:?}: 1-64 letters, digits, '-', '_' or '.', and not \"default\", '.' or '..'"
        )))
    }
}

/// Stores a new issuer; with `make_default` (or when it is the first) it
/// becomes the mount's default.
pub async fn add(
    core: &Core,
    m: &Mount,
    name: Option<String>,
    key: PrivateKey,
    make_default: bool,
    now: i64,
) -> Result<Issuer> {
    let id = uuid::Uuid::new_v4().to_string();
    let name = match name {
        Some(n) => {
            validate_issuer_name(&n)?;
            if find_by_name(core, m, &n).await?.is_some() {
                return Err(Error::invalid(format!(
                    "issuer name {n:?} is already in use"
                )));
            }
            n
        }
        None => format!("issuer-{}", &id[..8]),
    };
    let issuer = Issuer {
        id: id.clone(),
        name,
        public_key: key
            .public_key()
            .to_openssh()
            .map_err(|e| Error::internal(e.to_string()))?,
        private_key: key
            .to_openssh(LineEnding::LF)
            .map_err(|e| Error::internal(e.to_string()))?
            .to_string(),
        created: now,
    };
    core.storage.put(&issuer_key(m, &id), &issuer).await?;
    let mut cfg: IssuersConfig = core.storage.get(&config_key(m)).await?.unwrap_or_default();
    if make_default || cfg.default.is_none() {
        cfg.default = Some(id);
        core.storage.put(&config_key(m), &cfg).await?;
    }
    Ok(issuer)
}

pub async fn all(core: &Core, m: &Mount) -> Result<Vec<Issuer>> {
    let mut out = Vec::new();
    for k in core
        .storage
        .keys_with_prefix(&format!("{}issuer/", m.data_prefix()))
        .await?
    {
        if let Some(i) = core.storage.get::<Issuer>(&k).await? {
            out.push(i);
        }
    }
    out.sort_by_key(|i| i.created);
    Ok(out)
}

async fn find_by_name(core: &Core, m: &Mount, name: &str) -> Result<Option<Issuer>> {
    Ok(all(core, m).await?.into_iter().find(|i| i.name == name))
}

pub async fn default_id(core: &Core, m: &Mount) -> Result<Option<String>> {
    Ok(core
        .storage
        .get_shared::<IssuersConfig>(&config_key(m))
        .await?
        .and_then(|c| c.default.clone()))
}

/// Resolves `default`, an issuer ID or an issuer name.
pub async fn resolve(
    core: &Core,
    m: &Mount,
    reference: &str,
) -> Result<Option<std::sync::Arc<Issuer>>> {
    let id = if reference.is_empty() || reference == "default" {
        match default_id(core, m).await? {
            Some(id) => id,
            None => return Ok(None),
        }
    } else {
        reference.to_string()
    };
    if uuid::Uuid::parse_str(&id).is_ok() {
        // Read on every signature: shared, not parsed again while cached.
        if let Some(i) = core
            .storage
            .get_shared::<Issuer>(&issuer_key(m, &id))
            .await?
        {
            return Ok(Some(i));
        }
    }
    Ok(find_by_name(core, m, &id).await?.map(std::sync::Arc::new))
}

pub async fn set_default(core: &Core, m: &Mount, reference: &str) -> Result<Issuer> {
    let issuer = resolve(core, m, reference)
        .await?
        .ok_or_else(|| Error::invalid(format!("issuer {reference:?} does not exist")))?;
    let issuer = Issuer::clone(&issuer);
    core.storage
        .put(
            &config_key(m),
            &IssuersConfig {
                default: Some(issuer.id.clone()),
            },
        )
        .await?;
    Ok(issuer)
}

pub async fn rename(core: &Core, m: &Mount, reference: &str, new_name: &str) -> Result<Issuer> {
    validate_issuer_name(new_name)?;
    let issuer = resolve(core, m, reference)
        .await?
        .map(|i| Issuer::clone(&i))
        .ok_or_else(|| Error::invalid(format!("issuer {reference:?} does not exist")))?;
    if issuer.name != new_name && find_by_name(core, m, new_name).await?.is_some() {
        return Err(Error::invalid(format!(
            "issuer name {new_name:?} is already in use"
        )));
    }
    // Changed in storage, not written back from the copy: an issuer
    // deleted meanwhile stays deleted.
    core.storage
        .update(&issuer_key(m, &issuer.id), |mut i: Issuer| {
            i.name = new_name.to_string();
            Ok((Change::Put(i.clone()), i))
        })
        .await?
        .ok_or_else(|| Error::invalid(format!("issuer {reference:?} does not exist")))
}

/// Deletes an issuer. The default issuer can only go when it is the last
/// one, so that signing never silently switches CA.
pub async fn delete(core: &Core, m: &Mount, reference: &str, now: i64) -> Result<()> {
    let Some(issuer) = resolve(core, m, reference).await? else {
        return Ok(());
    };
    let default = default_id(core, m).await?;
    let count = all(core, m).await?.len();
    let is_default = default.as_deref() == Some(&issuer.id);
    if is_default && count > 1 {
        return Err(Error::invalid(
            "this is the default issuer: make another issuer the default (config/issuers) before deleting it",
        ));
    }
    super::certs::retire_issuer(core, m, &issuer, now).await?;
    if is_default {
        core.storage.delete(&config_key(m)).await?;
    }
    core.storage.delete(&issuer_key(m, &issuer.id)).await?;
    Ok(())
}

/// Deletes every issuer (Vault's `DELETE config/ca`).
pub async fn delete_all(core: &Core, m: &Mount, now: i64) -> Result<()> {
    for i in all(core, m).await? {
        super::certs::retire_issuer(core, m, &i, now).await?;
        core.storage.delete(&issuer_key(m, &i.id)).await?;
    }
    core.storage.delete(&config_key(m)).await?;
    Ok(())
}

/// The text `public_key` serves: every issuer's key, default first, one per
/// line, so that a TrustedUserCAKeys file made from it trusts them all.
pub async fn public_keys_text(core: &Core, m: &Mount) -> Result<Option<String>> {
    let mut issuers = all(core, m).await?;
    if issuers.is_empty() {
        return Ok(None);
    }
    let default = default_id(core, m).await?;
    issuers.sort_by_key(|i| (Some(&i.id) != default.as_ref(), i.created));
    Ok(Some(
        issuers
            .iter()
            .map(|i| format!("{}\n", i.public_key.trim()))
            .collect(),
    ))
}

/// SHA-256 fingerprint, as `ssh-keygen -l` prints it.
pub fn fingerprint(k: &PublicKey) -> String {
    k.fingerprint(HashAlg::Sha256).to_string()
}
