//! Host certificates: which host keys sshd uses, whether their certificate
//! in the managed folder is current, and when to renew it (at 2/3 of its
//! life).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use ssh_key::certificate::CertType;

use crate::apply::Layout;
use crate::sshd::Effective;

/// One of sshd's host keys.
#[derive(Clone, Debug)]
pub struct HostKey {
    /// The private key file (sshd's HostKey).
    pub private: PathBuf,
    /// Its public key line (`<private>.pub`), without comment.
    pub public_line: String,
    pub public: ssh_key::PublicKey,
    /// Where its certificate goes.
    pub cert: PathBuf,
}

/// What a certificate file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    pub path: PathBuf,
    pub serial: u64,
    pub valid_after: u64,
    pub valid_before: u64,
}

impl CertInfo {
    /// When to ask for a new one: 2/3 into its validity.
    pub fn renew_at(&self) -> i64 {
        let (a, b) = (self.valid_after as i64, self.valid_before as i64);
        a + (b - a).max(0) * 2 / 3
    }
}

/// The host keys sshd loads (HostKey lines of `sshd -T`) whose public half
/// is readable next to them; keys without one are skipped.
pub fn discover(eff: &Effective, layout: &Layout) -> Vec<HostKey> {
    let mut out = Vec::new();
    for private in eff.all("hostkey") {
        let private = PathBuf::from(private);
        let mut pub_path = private.clone().into_os_string();
        pub_path.push(".pub");
        let Ok(text) = std::fs::read_to_string(&pub_path) else {
            tracing::debug!(key = %private.display(), "host key has no readable .pub file; skipped");
            continue;
        };
        let Ok(mut public) = ssh_key::PublicKey::from_openssh(text.trim()) else {
            tracing::warn!(key = %private.display(), "host public key does not parse; skipped");
            continue;
        };
        public.set_comment("");
        let Ok(public_line) = public.to_openssh() else {
            continue;
        };
        out.push(HostKey {
            cert: layout.host_cert(&private),
            private,
            public_line,
            public,
        });
    }
    out
}

/// Checks a certificate's text: a host certificate of exactly this key.
pub fn parse_for(text: &str, key: &ssh_key::PublicKey, path: &Path) -> Result<CertInfo, String> {
    let cert = ssh_key::Certificate::from_openssh(text.trim())
        .map_err(|e| format!("not an OpenSSH certificate: {e}"))?;
    if cert.cert_type() != CertType::Host {
        return Err("not a host certificate".into());
    }
    if cert.public_key() != key.key_data() {
        return Err("certifies another key".into());
    }
    Ok(CertInfo {
        path: path.to_path_buf(),
        serial: cert.serial(),
        valid_after: cert.valid_after(),
        valid_before: cert.valid_before(),
    })
}

/// The certificate on disk for this key, if there is a good one.
pub fn installed(key: &HostKey) -> Option<CertInfo> {
    let text = std::fs::read_to_string(&key.cert).ok()?;
    parse_for(&text, &key.public, &key.cert).ok()
}

/// Whether this key needs a (new) certificate at `now`.
pub fn needs_signing(key: &HostKey, now: i64) -> bool {
    installed(key).is_none_or(|c| now >= c.renew_at())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_two_thirds() {
        let c = CertInfo {
            path: "/x".into(),
            serial: 1,
            valid_after: 1000,
            valid_before: 4000,
        };
        assert_eq!(c.renew_at(), 3000);
    }
}
