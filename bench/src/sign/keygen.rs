//! The reference: OpenSSH's `ssh-keygen -s`, one process per certificate,
//! as a user or a script signs keys by hand.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use gatepass_server::clock::Clock;
use ssh_key::{Certificate, HashAlg};

use crate::measure::{self, Budget, Sample};

/// The certificate `ssh-keygen -s` writes next to `key.pub`.
fn cert_path(user_pub: &Path) -> PathBuf {
    let name = user_pub
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".pub").unwrap_or(&name);
    user_pub.with_file_name(format!("{stem}-cert.pub"))
}

fn sign_once(ca: &Path, user_pub: &Path) -> Result<(), String> {
    let out = Command::new("ssh-keygen")
        .arg("-s")
        .arg(ca)
        .args(["-I", "id", "-n", "user", "-V", "+1h"])
        .arg(user_pub)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ssh-keygen: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ssh-keygen -s: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Signs `user_pub` with the CA private key file `ca` until the budget is
/// spent, then checks that the last certificate is one from that CA.
pub fn measure(
    ca: &Path,
    ca_key: &ssh_key::PublicKey,
    user_pub: &Path,
    budget: Budget,
) -> anyhow::Result<Sample> {
    let sample = measure::serial(budget, || sign_once(ca, user_pub));
    if sample.ops > 0 {
        let path = cert_path(user_pub);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let cert = Certificate::from_openssh(&text)?;
        let fp = ca_key.fingerprint(HashAlg::Sha256);
        cert.validate_at(u64::try_from(Clock::System.now())?, [&fp])
            .context("ssh-keygen's certificate does not verify")?;
    } else if sample.first_error.is_none() {
        bail!("ssh-keygen signed nothing in {:?}", budget.measure);
    }
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_next_to_key() {
        assert_eq!(
            cert_path(Path::new("/t/user.pub")),
            PathBuf::from("/t/user-cert.pub")
        );
    }
}
