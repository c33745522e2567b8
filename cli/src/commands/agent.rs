//! The ssh-agent: making sure one is running, and loading a key with its
//! certificate into it through `ssh-add`, for as long as the certificate
//! is valid.

use std::fs;
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;

use ssh_key::Certificate;

use super::signals::Signals;
use super::sshfiles::with_suffix;
use crate::error::{Error, Result};
use crate::output::date;

/// Fails early, before a credential is issued, when there is no agent to
/// take it.
pub(super) async fn check_agent() -> Result<()> {
    let sock = std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty());
    if sock.is_none() {
        return Err(Error::Local(
            "--add-to-agent needs a running ssh-agent, but SSH_AUTH_SOCK is not set: \
             start one with `eval $(ssh-agent)`, or leave out --add-to-agent to save files"
                .into(),
        ));
    }
    // `ssh-add -l`: 0 = keys, 1 = no keys, 2 = no agent there.
    let out = tokio::process::Command::new("ssh-add")
        .arg("-l")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(ssh_add_missing)?;
    if out.status.code() == Some(0) || out.status.code() == Some(1) {
        return Ok(());
    }
    Err(Error::Local(format!(
        "cannot reach the ssh-agent at SSH_AUTH_SOCK={}: {}",
        sock.unwrap_or_default().to_string_lossy(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

pub(super) fn ssh_add_missing(e: io::Error) -> Error {
    if e.kind() == ErrorKind::NotFound {
        Error::Local("ssh-add was not found: install the OpenSSH client".into())
    } else {
        Error::Local(format!("cannot run ssh-add: {e}"))
    }
}

/// How long the agent may keep the key: what is left of the certificate's
/// validity. None for a certificate that never expires.
pub(super) fn agent_lifetime(cert: &Certificate, now: u64) -> Result<Option<u64>> {
    let before = cert.valid_before();
    if before == u64::MAX {
        return Ok(None);
    }
    match before.checked_sub(now) {
        Some(left) if left > 0 => Ok(Some(left)),
        _ => Err(Error::Local(format!(
            "the certificate has already expired ({}); is this machine's clock right?",
            date(before)
        ))),
    }
}

/// Loads key and certificate into the agent. ssh-add reads the certificate
/// only from `<key>-cert.pub` beside a key file (`ssh-add -` takes the key
/// alone), so both go to a private temporary folder for the moment
/// ssh-add needs them; the folder is removed whatever happens.
pub(super) async fn add_to_agent(
    name: &str,
    private_pem: &str,
    cert_text: &str,
    cert: &Certificate,
    now: u64,
) -> Result<Option<u64>> {
    let lifetime = agent_lifetime(cert, now)?;
    // Signals are caught from here on, so Ctrl-C cannot leave the key behind.
    let signals = Signals::new()?;
    // A tmpfs such as /run/user/UID keeps the key off the disk entirely.
    let dir = super::sshfiles::private_dir("gatepass-agent-")?;
    let mut signals = signals;
    let result = load_into_agent(
        dir.path(),
        name,
        private_pem,
        cert_text,
        lifetime,
        &mut signals,
    )
    .await;
    let shown = dir.path().display().to_string();
    let cleaned = dir.close();
    match (result, cleaned) {
        (Ok(()), Ok(())) => Ok(lifetime),
        (Err(e), Ok(())) => Err(e),
        (result, Err(e)) => {
            let mut msg = format!(
                "could not remove the temporary folder {shown}, which holds the private key: \
                 {e}; delete it now"
            );
            if let Err(first) = result {
                msg = format!("{first}\n{msg}");
            }
            Err(Error::Local(msg))
        }
    }
}

pub(super) async fn load_into_agent(
    dir: &Path,
    name: &str,
    private_pem: &str,
    cert_text: &str,
    lifetime: Option<u64>,
    signals: &mut Signals,
) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::Local(format!("cannot make {} private: {e}", dir.display())))?;
    let key = dir.join(name);
    let write_new = |p: &Path, text: &str, mode: u32| -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)?;
        f.write_all(text.as_bytes())
    };
    write_new(&key, private_pem, 0o600)
        .and_then(|()| write_new(&with_suffix(&key, "-cert.pub"), cert_text, 0o644))
        .map_err(|e| Error::Local(format!("cannot write to {}: {e}", dir.display())))?;

    let mut cmd = tokio::process::Command::new("ssh-add");
    if let Some(secs) = lifetime {
        cmd.arg("-t").arg(secs.to_string());
    }
    cmd.arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(ssh_add_missing)?;
    let out = tokio::select! {
        out = child.wait_with_output() => {
            out.map_err(|e| Error::Local(format!("ssh-add failed: {e}")))?
        }
        sig = signals.any() => {
            return Err(Error::Local(format!("interrupted by {sig}; nothing was kept on disk")));
        }
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(Error::Local(format!(
            "ssh-add could not add the key to the agent: {}",
            said.trim()
        )));
    }
    if !said.contains("Certificate added") {
        eoutln!(
            "WARNING! ssh-add added the key but did not say it added the certificate: {}",
            said.trim()
        );
    }
    Ok(())
}
