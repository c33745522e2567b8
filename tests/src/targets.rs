//! Target servers for the PAM gateway's tests: private sshds on loopback
//! that take one kind of login each (a key in authorized_keys, a
//! certificate of a trusted user CA, a password through PAM for a local
//! user the test makes and removes), all serving SFTP.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::sshd::{PamSetup, Sshd, SshdOptions};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Lines every target gets: SFTP (which the harness's sshd leaves out) and
/// the test's environment variables.
fn common(sshd: &mut Sshd) {
    sshd.options
        .extra_config
        .push("Subsystem sftp internal-sftp".into());
    sshd.options
        .extra_config
        .push("AcceptEnv GATEPASS_TEST_*".into());
}

/// An sshd that takes the key `public_key_line` (an OpenSSH public key
/// line) through authorized_keys, for any account.
pub fn key_target(public_key_line: &str) -> Sshd {
    let mut sshd = Sshd::new(SshdOptions::default());
    common(&mut sshd);
    let ak = sshd.write_file("authorized_keys", public_key_line);
    sshd.options
        .extra_config
        .push(format!("AuthorizedKeysFile {}", ak.display()));
    sshd.launch();
    sshd
}

/// An sshd that trusts user certificates of `user_ca_line` (an OpenSSH
/// public key line); with `host_certificate`, it presents that host
/// certificate (made by the caller for [`Sshd::host_key_pub`] before
/// launch, hence the closure).
pub fn certificate_target(
    user_ca_line: &str,
    host_certificate: Option<&dyn Fn(&Sshd) -> std::path::PathBuf>,
) -> Sshd {
    let mut sshd = Sshd::new(SshdOptions::default());
    common(&mut sshd);
    let ca = sshd.write_file("user_ca.pub", user_ca_line);
    sshd.options
        .extra_config
        .push(format!("TrustedUserCAKeys {}", ca.display()));
    if let Some(make) = host_certificate {
        let cert = make(&sshd);
        sshd.options
            .extra_config
            .push(format!("HostCertificate {}", cert.display()));
    }
    sshd.launch();
    sshd
}

/// An sshd whose password (and keyboard-interactive) logins go through PAM
/// service `service` (pam_unix: the machine's local accounts).
pub fn password_target(service: &str, extra: Vec<String>) -> Sshd {
    let mut sshd = Sshd::new(SshdOptions {
        extra_config: extra,
        pam: Some(PamSetup {
            service: service.into(),
            pam_config: "auth required pam_unix.so nodelay\n\
                         account required pam_unix.so\n\
                         session required pam_unix.so\n"
                .into(),
        }),
        ..SshdOptions::default()
    });
    common(&mut sshd);
    sshd.launch();
    sshd
}

/// The public key line of a key file's `.pub`.
pub fn public_line(key: &Path) -> String {
    read(&crate::sshd::pub_path(key))
}

/// A local account with a password and a home, removed (with its home) on
/// drop.
pub struct LocalUser {
    pub name: String,
}

impl LocalUser {
    pub fn create(name: &str, password: &str) -> LocalUser {
        // useradd and chpasswd lock /etc/passwd and /etc/shadow and fail at
        // once when another test holds them: one account change at a time
        // in this process, and a few tries against other processes.
        static ACCOUNTS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("userdel").args(["-r", name]).output();
        let mut last = String::new();
        for _ in 0..10 {
            match add_user(name, password) {
                Ok(()) => return LocalUser { name: name.into() },
                Err(e) => last = e,
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        panic!("cannot create the local account {name}: {last}");
    }
}

fn add_user(name: &str, password: &str) -> Result<(), String> {
    let exists = Command::new("id")
        .arg(name)
        .output()
        .unwrap()
        .status
        .success();
    if !exists {
        let o = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", name])
            .output()
            .unwrap();
        if !o.status.success() {
            return Err(format!("useradd: {}", String::from_utf8_lossy(&o.stderr)));
        }
    }
    let mut chpasswd = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    chpasswd
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{name}:{password}\n").as_bytes())
        .unwrap();
    let o = chpasswd.wait_with_output().unwrap();
    if !o.status.success() {
        return Err(format!("chpasswd: {}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(())
}

impl Drop for LocalUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").args(["-r", &self.name]).output();
    }
}
