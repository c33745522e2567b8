//! Sealing: every value the server stores is encrypted with AES-256-GCM under
//! a key derived from the operator's seal key, with the storage key as
//! associated data so a sealed value cannot be moved to another key.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::path::Path;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

const NONCE_LEN: usize = 12;

/// The operator's 32-byte seal key, kept as 64 hex characters in a 0600 file.
pub struct SealKey(Zeroizing<[u8; 32]>);

impl SealKey {
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::thread_rng().fill_bytes(k.as_mut());
        SealKey(k)
    }

    pub fn from_hex(text: &str) -> Result<Self> {
        let bytes = Zeroizing::new(
            hex::decode(text.trim())
                .map_err(|_| Error::invalid("seal key is not 64 hexadecimal characters"))?,
        );
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| Error::invalid("seal key is not 64 hexadecimal characters"))?;
        Ok(SealKey(Zeroizing::new(arr)))
    }

    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_ref()))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            Error::internal(format!("cannot read seal key {}: {e}", path.display()))
        })?);
        Self::from_hex(&text)
            .map_err(|_| Error::internal(format!("{}: not a gatepass seal key", path.display())))
    }

    /// Writes the key to a new file with mode 0600; refuses to overwrite.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", path.display())))?;
        f.write_all(format!("{}\n", self.to_hex().as_str()).as_bytes())?;
        f.sync_all()?;
        Ok(())
    }

    /// A purpose-bound subkey, so that the storage cipher, the token hashes
    /// and the audit MACs never share key material.
    pub fn derive(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let hk = Hkdf::<Sha256>::new(Some(b"gatepass seal v1"), self.0.as_ref());
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is always a valid HKDF-SHA256 output length.
        let _ = hk.expand(purpose.as_bytes(), out.as_mut());
        out
    }
}

/// Encrypts and decrypts stored values.
pub struct Barrier {
    cipher: Aes256Gcm,
}

impl Barrier {
    pub fn new(key: &SealKey) -> Self {
        let k = key.derive("storage");
        Barrier {
            cipher: Aes256Gcm::new(k.as_ref().into()),
        }
    }

    pub fn seal(&self, aad: &str, plain: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| Error::internal("seal failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN {
            return Err(Error::internal(format!(
                "sealed value at {aad} is truncated"
            )));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| {
                Error::internal(format!(
                    "cannot unseal {aad}: wrong seal key or tampered value"
                ))
            })
    }
}

/// Keyed hash for stored secrets (tokens, secret IDs, OTPs): the database
/// alone does not let anyone test guesses.
pub struct Hasher {
    key: Zeroizing<[u8; 32]>,
}

impl Hasher {
    pub fn new(key: &SealKey) -> Self {
        Hasher {
            key: key.derive("secret-hash"),
        }
    }

    pub fn hash(&self, secret: &str) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_ref())
            .unwrap_or_else(|_| unreachable!());
        mac.update(secret.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_roundtrip_and_aad_binding() {
        let key = SealKey::generate();
        let b = Barrier::new(&key);
        let s = b.seal("a", b"secret").unwrap();
        assert!(!s.windows(6).any(|w| w == b"secret"));
        assert_eq!(b.open("a", &s).unwrap().as_slice(), b"secret");
        assert!(b.open("b", &s).is_err(), "moved value must not open");
        let other = Barrier::new(&SealKey::generate());
        assert!(other.open("a", &s).is_err(), "wrong key must not open");
    }

    #[test]
    fn key_hex_roundtrip() {
        let k = SealKey::generate();
        let k2 = SealKey::from_hex(&k.to_hex()).unwrap();
        assert_eq!(k.derive("x").as_ref(), k2.derive("x").as_ref());
        assert!(SealKey::from_hex("abcd").is_err());
    }
}
