//! Where the token comes from: GATEPASS_TOKEN, then VAULT_TOKEN, then the
//! file `gatepass login` saves (`<config dir>/gatepass/token`).

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Environment variables holding a token, in order of precedence.
pub const TOKEN_VARS: [&str; 2] = ["GATEPASS_TOKEN", "VAULT_TOKEN"];

/// The first token variable that is set (and not empty).
pub fn token_var() -> Option<&'static str> {
    TOKEN_VARS
        .into_iter()
        .find(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// `$XDG_CONFIG_HOME/gatepass/token`, or `~/.config/gatepass/token`.
pub fn token_path() -> Result<PathBuf> {
    dirs::config_dir()
        .map(|d| d.join("gatepass").join("token"))
        .ok_or_else(|| {
            Error::Local("cannot find the configuration folder: set HOME or XDG_CONFIG_HOME".into())
        })
}

/// The saved token, if there is one.
pub fn load_token() -> Result<Option<String>> {
    let path = token_path()?;
    match fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_string();
            check_token(&token, &path.display().to_string())?;
            Ok(Some(token))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Local(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))),
    }
}

/// A token goes into an HTTP header, so it must be printable ASCII. The
/// message names where it came from, never the token itself.
pub fn check_token(token: &str, source: &str) -> Result<()> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Local(format!(
            "the token from {source} is not valid: a token is printable text without spaces"
        )));
    }
    Ok(())
}

/// Saves the token for later commands: folder 0700, file 0600, replaced
/// atomically so that a crash leaves either the old token or the new one.
pub fn save_token(token: &str) -> Result<PathBuf> {
    let path = token_path()?;
    let dir = path.parent().ok_or_else(|| {
        Error::Local(format!(
            "cannot save the token: {} has no folder",
            path.display()
        ))
    })?;
    write_private(dir, &path, token.as_bytes())
        .map_err(|e| Error::Local(format!("cannot save the token in {}: {e}", path.display())))?;
    Ok(path)
}

fn write_private(dir: &Path, path: &Path, contents: &[u8]) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // The folder may predate us with a looser mode; it holds only our secret.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".token.")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // Make the rename itself durable.
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_private_file_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("gatepass");
        let path = dir.join("token");
        write_private(&dir, &path, b"one").unwrap();
        write_private(&dir, &path, b"two").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir), 0o700);
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn token_must_be_header_safe() {
        assert!(check_token("gps.abc", "x").is_ok());
        assert!(check_token("", "x").is_err());
        let err = check_token("gps.secret value", "the file")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }
}
