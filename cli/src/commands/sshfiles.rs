//! The user's own OpenSSH files: the public key to sign and the
//! certificate beside it, known_hosts and ~/.ssh/config, written atomically;
//! new files for keys of the moment; ssh options as the user gives them.

use std::fs;
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ssh_key::PublicKey;

use crate::error::{Error, Result};

/// Public keys `sign` tries when none is given, in ssh's own order of preference.
const DEFAULT_KEYS: [&str; 3] = ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"];

/// The first of ssh's usual public keys that exists.
pub(super) fn default_public_key() -> Result<PathBuf> {
    let ssh_dir = home()?.join(".ssh");
    DEFAULT_KEYS
        .iter()
        .map(|k| ssh_dir.join(k))
        .find(|p| p.exists())
        .ok_or_else(|| {
            Error::Local(format!(
                "no SSH public key found (looked for {} in {}): pass --public-key FILE, \
                 or create a key with `ssh-keygen -t ed25519`",
                DEFAULT_KEYS.join(", "),
                ssh_dir.display()
            ))
        })
}

pub(super) fn home() -> Result<PathBuf> {
    dirs::home_dir().ok_or_else(|| Error::Local("cannot find the home folder: set HOME".into()))
}

/// Reads a public key file. Given the private key by mistake, it uses the
/// `.pub` beside it, as ssh-keygen does.
pub(super) fn read_public_key(path: &Path) -> Result<(PathBuf, PublicKey)> {
    let text = fs::read_to_string(path).map_err(|e| {
        Error::Local(format!(
            "cannot read the public key {}: {}",
            path.display(),
            io_reason(&e)
        ))
    })?;
    if text.contains("PRIVATE KEY-----") {
        let public = with_suffix(path, ".pub");
        if public.exists() {
            return read_public_key(&public);
        }
        return Err(Error::Local(format!(
            "{} is a private key; pass its public key (.pub) instead",
            path.display()
        )));
    }
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    if line.contains("-cert-v01@openssh.com") {
        return Err(Error::Local(format!(
            "{} is a certificate; pass the public key it was made for",
            path.display()
        )));
    }
    let key = PublicKey::from_openssh(line).map_err(|_| {
        Error::Local(format!(
            "{} is not an OpenSSH public key (\"ssh-ed25519 AAAA… comment\")",
            path.display()
        ))
    })?;
    Ok((path.to_path_buf(), key))
}

/// `dir/id_ed25519.pub` → `dir/id_ed25519-cert.pub`, where ssh looks for it.
pub(super) fn cert_path(key: &Path) -> PathBuf {
    let s = key.as_os_str().to_string_lossy();
    let stem = s.strip_suffix(".pub").unwrap_or(&s);
    PathBuf::from(format!("{stem}-cert.pub"))
}

pub(super) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

pub(super) fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        ErrorKind::NotFound => "no such file".into(),
        ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// A known_hosts pattern list is one field: no spaces, no line breaks.
pub(super) fn check_pattern(p: &str) -> Result<()> {
    if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()) || p.starts_with('@')
    {
        return Err(Error::Usage(format!(
            "--domain {p:?} is not a known_hosts pattern (e.g. * or *.example.com)"
        )));
    }
    Ok(())
}

/// Whether known_hosts already has this line: same marker, patterns and
/// key, whatever the spacing or comment.
pub(super) fn contains_line(known_hosts: &str, line: &str) -> bool {
    let norm = |l: &str| -> Option<(String, String, String, String)> {
        let mut f = l.split_whitespace();
        Some((
            f.next()?.to_ascii_lowercase(),
            f.next()?.to_string(),
            f.next()?.to_string(),
            f.next()?.to_string(),
        ))
    };
    let want = norm(line);
    want.is_some() && known_hosts.lines().any(|l| norm(l) == want)
}

/// Rewrites known_hosts through a temporary file and a rename: creating
/// ~/.ssh (0700) and the file (0644) when missing, keeping an existing
/// file's mode, and writing through a symlink to its target.
pub(super) fn write_known_hosts(path: &Path, text: &str) -> io::Result<()> {
    write_user_file(path, text, 0o644)
}

/// Rewrites a file of the user's ssh setup (known_hosts, config) the way
/// [`write_known_hosts`] does; a new file gets `new_mode`.
pub(super) fn write_user_file(path: &Path, text: &str, new_mode: u32) -> io::Result<()> {
    let (target, mode) = match fs::metadata(path) {
        Ok(m) => (fs::canonicalize(path)?, m.permissions().mode() & 0o7777),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
            (path.to_path_buf(), new_mode)
        }
        Err(e) => return Err(e),
    };
    write_atomic(&target, text.as_bytes(), mode, true)
}

/// Writes through a temporary file in the same folder and a rename, so a
/// reader sees the old file or the new one, never half of one. The mode is
/// set on the open file (not subject to the umask). Without `replace`, an
/// existing file is an `AlreadyExists` error.
pub(super) fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    replace: bool,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".gatepass-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    if replace {
        tmp.persist(path).map_err(|e| e.error)?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    fs::File::open(dir)?.sync_all()
}

/// A private folder for keys of the moment (`PREFIX*`, 0700) in
/// $XDG_RUNTIME_DIR (a tmpfs: keys never reach a disk) or else $TMPDIR,
/// removed when dropped.
pub fn private_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let base = dirs::runtime_dir()
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(&base)
        .map_err(|e| {
            Error::Local(format!(
                "cannot create a private folder in {}: {e}",
                base.display()
            ))
        })?;
    // Whatever the umask did to the mode asked for.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::Local(format!("cannot make {} private: {e}", dir.path().display())))?;
    Ok(dir)
}

/// `-o KEY=VALUE` (or `KEY VALUE`), one line, as ssh takes it.
pub(super) fn check_ssh_option(o: &str) -> Result<()> {
    let key = o.split(['=', ' ']).next().unwrap_or("");
    let ok = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric())
        && o.len() > key.len()
        && !o.chars().any(|c| c.is_control());
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--ssh-option {o:?}: expected KEY=VALUE, e.g. ServerAliveInterval=30"
        )))
    }
}

/// A new file with its mode set at creation (not subject to the umask).
pub(super) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::Local(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(contents)
        .map_err(|e| Error::Local(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_options_are_checked() {
        assert!(check_ssh_option("ServerAliveInterval=30").is_ok());
        assert!(check_ssh_option("User alice").is_ok());
        for bad in ["", "=1", "Foo", "a-b=1", "X=1\nProxyCommand=sh"] {
            assert!(check_ssh_option(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cert_paths_follow_ssh() {
        assert_eq!(
            cert_path(Path::new("/h/.ssh/id_ed25519.pub")),
            PathBuf::from("/h/.ssh/id_ed25519-cert.pub")
        );
        assert_eq!(
            cert_path(Path::new("key.txt")),
            PathBuf::from("key.txt-cert.pub")
        );
    }

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn known_hosts_lines_compare_by_content() {
        let line = format!("@cert-authority * {KEY}");
        let kh = format!("host1 {KEY}\n@cert-authority   *   {KEY} some comment\n");
        assert!(contains_line(&kh, &line));
        assert!(!contains_line(
            &format!("@cert-authority *.example.com {KEY}\n"),
            &line
        ));
        assert!(!contains_line(&format!("host1 {KEY}\n"), &line));
        assert!(!contains_line("", &line));
    }

    #[test]
    fn patterns() {
        assert!(check_pattern("*").is_ok());
        assert!(check_pattern("*.example.com,10.0.0.*").is_ok());
        assert!(check_pattern("a b").is_err());
        assert!(check_pattern("a\nb").is_err());
        assert!(check_pattern("").is_err());
    }

    #[test]
    fn atomic_writes_keep_or_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o644, false).unwrap();
        let e = write_atomic(&p, b"two", 0o644, false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        write_atomic(&p, b"three", 0o600, true).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "three");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn known_hosts_created_private_folder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".ssh").join("known_hosts");
        write_known_hosts(&p, "x\n").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o644);
        assert_eq!(mode(p.parent().unwrap()), 0o700);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        write_known_hosts(&p, "y\n").unwrap();
        assert_eq!(mode(&p), 0o600, "an existing file keeps its mode");
    }
}
