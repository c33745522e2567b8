//! The web UI's session cookie and CSRF tokens.
//!
//! A signed-in browser holds a cookie with the session's gatepass token
//! sealed (AES-256-GCM under a key derived from the seal key), never the
//! token in clear: the server alone can open it, and nothing is kept in
//! memory, so every server sharing the storage accepts the cookie and a
//! restart signs no one out. The token is one made for the session (a child
//! of a token given at sign-in, or a userpass login's), so signing out
//! revokes it without touching the token the user signed in with.
//!
//! A form that changes something carries a CSRF token: an HMAC of the
//! session token's accessor, which a page of another site cannot read nor
//! compute.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The cookie's name.
/// `__Host-`: browsers take a cookie so named only from this host itself,
/// over HTTPS, for the path `/` and without a `Domain` (RFC 6265bis 4.1.3.2),
/// so no other site, a sibling subdomain included, can plant one to sign a
/// browser in as someone else.
pub const COOKIE: &str = "__Host-gatepass_session";
/// Associated data of a sealed cookie: a value sealed for another purpose
/// under the same key does not open as a session.
const AAD: &[u8] = b"gatepass web ui session v1";
const NONCE_LEN: usize = 12;

pub struct UiKey {
    cipher: Aes256Gcm,
    mac: Zeroizing<[u8; 32]>,
}

impl UiKey {
    /// From a key derived for the web UI alone (`SealKey::derive`).
    pub fn new(key: &[u8; 32]) -> UiKey {
        let hk = hkdf::Hkdf::<Sha256>::new(None, key);
        let mut enc = Zeroizing::new([0u8; 32]);
        let mut mac = Zeroizing::new([0u8; 32]);
        // 32 bytes is always a valid HKDF-SHA256 output length.
        let _ = hk.expand(b"cookie", enc.as_mut());
        let _ = hk.expand(b"csrf", mac.as_mut());
        UiKey {
            cipher: Aes256Gcm::new(enc.as_ref().into()),
            mac,
        }
    }

    /// The cookie value for a session token.
    pub fn seal(&self, token: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: token.as_bytes(),
                    aad: AAD,
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The session token in a cookie value; None for anything this server's
    /// key did not seal.
    pub fn open(&self, cookie: &str) -> Option<Zeroizing<String>> {
        let raw = URL_SAFE_NO_PAD.decode(cookie.trim()).ok()?;
        if raw.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: AAD,
                    },
                )
                .ok()?,
        );
        String::from_utf8(plain.to_vec()).ok().map(Zeroizing::new)
    }

    /// The CSRF token of the session whose token has this accessor.
    pub fn csrf(&self, accessor: &str) -> String {
        hex::encode(self.mac_of(accessor))
    }

    /// Whether a form's CSRF token is the session's (in constant time).
    pub fn csrf_ok(&self, accessor: &str, given: &str) -> bool {
        let Ok(bytes) = hex::decode(given.trim()) else {
            return false;
        };
        let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(self.mac.as_ref()) else {
            return false;
        };
        m.update(b"csrf:");
        m.update(accessor.as_bytes());
        m.verify_slice(&bytes).is_ok()
    }

    fn mac_of(&self, accessor: &str) -> Vec<u8> {
        match <Hmac<Sha256> as Mac>::new_from_slice(self.mac.as_ref()) {
            Ok(mut m) => {
                m.update(b"csrf:");
                m.update(accessor.as_bytes());
                m.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_opens_only_under_its_key_and_hides_the_token() {
        let k = UiKey::new(&[7u8; 32]);
        let c = k.seal("gps.secret-token");
        assert!(!c.contains("secret"));
        assert_eq!(k.open(&c).unwrap().as_str(), "gps.secret-token");
        assert!(UiKey::new(&[8u8; 32]).open(&c).is_none());
        assert!(k.open("gps.secret-token").is_none());
        let csrf = k.csrf("acc1");
        assert!(k.csrf_ok("acc1", &csrf));
        assert!(!k.csrf_ok("acc2", &csrf));
        assert!(!k.csrf_ok("acc1", ""));
    }
}
