//! SSH helpers for the tests: ssh-keygen for keys and for reading
//! certificates (`-L`) and KRLs (`-Q`), so OpenSSH itself is the judge.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes `text` to `dir/name` with the given mode.
pub fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

/// A key pair made by ssh-keygen; returns (private key path, public key text).
pub fn keypair(dir: &Path, name: &str, kind: &str, bits: Option<u32>) -> (PathBuf, String) {
    let p = dir.join(name);
    let mut c = Command::new("ssh-keygen");
    c.args(["-q", "-N", "", "-C", name, "-t", kind, "-f"])
        .arg(&p);
    if let Some(b) = bits {
        c.args(["-b", &b.to_string()]);
    }
    let out = c.output().expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(p.with_extension("pub")).unwrap_or_else(|_| {
        std::fs::read_to_string(format!("{}.pub", p.display())).expect("read public key")
    });
    (p, public)
}

/// `ssh-keygen -L` of a certificate text.
pub fn describe_cert(dir: &Path, cert: &str) -> String {
    let p = write(dir, "describe-cert.pub", cert, 0o644);
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&p)
        .output()
        .expect("ssh-keygen -L");
    assert!(
        out.status.success(),
        "ssh-keygen -L refused the certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ssh-keygen -Q -f krl cert`: true when the KRL revokes the certificate.
pub fn krl_revokes(dir: &Path, krl: &[u8], cert: &str) -> bool {
    let k = dir.join("check.krl");
    std::fs::write(&k, krl).expect("write krl");
    let c = write(dir, "check-cert.pub", cert, 0o644);
    let out = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(&k)
        .arg(&c)
        .output()
        .expect("ssh-keygen -Q");
    let text = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        Some(0) => false,
        Some(1) if text.contains("REVOKED") => true,
        _ => panic!(
            "ssh-keygen -Q failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// What `ssh-keygen -Ql` lists of a KRL: its CAs' revoked serials and key
/// IDs, and its revoked keys, one per line.
pub fn krl_listing(dir: &Path, krl: &[u8]) -> String {
    let k = dir.join("listed.krl");
    std::fs::write(&k, krl).expect("write krl");
    let out = Command::new("ssh-keygen")
        .arg("-Ql")
        .arg("-f")
        .arg(&k)
        .output()
        .expect("ssh-keygen -Ql");
    assert!(out.status.success(), "ssh-keygen -Ql: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
