//! Atomic file writes with the owner and mode sshd's StrictModes wants.
//!
//! A write goes to a temp file in the same folder (created 0600, so nobody
//! reads a half-written file), is fsynced, gets its owner and mode, is
//! renamed over the target, and then the folder is fsynced so the rename
//! itself survives a crash. A crash at any instant leaves the old file or
//! the new one, never a mix; at worst a hidden temp file stays behind, which
//! [`clean_temp_files`] removes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Public files sshd reads (CA keys, KRL, principals, keys, certificates).
pub const PUBLIC_FILE: u32 = 0o644;
/// Folders on the way to those files.
pub const DIR: u32 = 0o755;
/// The host token and the local state.
pub const SECRET_FILE: u32 = 0o600;

/// Temp files carry this in their name; nothing sshd globs (`*.conf`) matches it.
const TEMP_MARK: &str = ".gatepass-tmp-";

#[derive(Debug, thiserror::Error)]
#[error("{}: {op}: {source}", path.display())]
pub struct FsError {
    pub path: PathBuf,
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

pub type Result<T, E = FsError> = std::result::Result<T, E>;

fn err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Who owns what we write: root:root when we are root (sshd wants that);
/// otherwise we cannot chown and leave the owner as it is (tests, dry runs).
pub fn default_owner() -> Option<(u32, u32)> {
    nix::unistd::geteuid().is_root().then_some((0, 0))
}

/// Writes `content` to `path` atomically, owned by [`default_owner`], with `mode`.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    write_atomic_owned(path, content, mode, default_owner())
}

/// [`write_atomic`] with an explicit owner (None: leave it to the process).
pub fn write_atomic_owned(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let tmp = stage(path, content, mode, owner, true)?;
    let result = std::fs::rename(&tmp, path)
        .map_err(err(path, "rename"))
        .and_then(|()| sync_dir(parent(path)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `content` to a new hidden temp file beside `path` with its owner
/// and mode (created 0600 so nobody reads it half-written); fsynced when
/// `fsync`. Returns the temp file's path.
fn stage(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    fsync: bool,
) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| FsError {
            path: path.to_path_buf(),
            op: "write",
            source: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
        })?
        .to_string_lossy();
    let tmp = parent(path).join(format!(
        ".{name}{TEMP_MARK}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err(&tmp, "create temp file"))?;
        f.write_all(content).map_err(err(&tmp, "write"))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(err(&tmp, "chown"))?;
        }
        // fchmod after fchown: chown may clear set-id bits, and the umask
        // must not decide the mode.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err(&tmp, "chmod"))?;
        if fsync {
            f.sync_all().map_err(err(&tmp, "fsync"))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Makes many changes with the same guarantee as one [`Change::apply`] per
/// file, but with one `syncfs` for all the new contents and one fsync per
/// folder instead of two fsyncs per file: every temp file is written, the
/// file system is synced (so all new contents are durable), and only then
/// is each renamed over its target, in order.
pub fn apply_all(changes: &[Change]) -> Result<()> {
    if changes.len() < 4 {
        return changes.iter().try_for_each(Change::apply);
    }
    let owner = default_owner();
    let mut staged: Vec<(PathBuf, &Path)> = Vec::new();
    let mut dirs: Vec<&Path> = Vec::new();
    let result = (|| {
        for c in changes {
            let dir = parent(&c.path);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
            if let Some(new) = &c.new {
                staged.push((stage(&c.path, new, c.mode, owner, false)?, &c.path));
            }
        }
        for dir in &dirs {
            let d = File::open(dir).map_err(err(dir, "open folder"))?;
            nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d))
                .map_err(|e| err(dir, "syncfs")(io::Error::from(e)))?;
        }
        for c in changes {
            match &c.new {
                Some(_) => {
                    let i = staged
                        .iter()
                        .position(|(_, p)| *p == c.path.as_path())
                        .ok_or_else(|| err(&c.path, "rename")(io::ErrorKind::NotFound.into()))?;
                    let (tmp, path) = staged.swap_remove(i);
                    std::fs::rename(&tmp, path).map_err(err(path, "rename"))?;
                }
                None => match std::fs::remove_file(&c.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(err(&c.path, "remove")(e)),
                },
            }
        }
        dirs.iter().try_for_each(|d| sync_dir(d))
    })();
    for (tmp, _) in staged {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsync a folder so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir, "fsync folder"))
}

/// Whether `path` already has exactly this content, mode and owner.
pub fn is_current(path: &Path, content: &[u8], mode: u32) -> Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err(path, "stat")(e)),
    };
    if !meta.is_file() || meta.mode() & 0o7777 != mode || meta.len() != content.len() as u64 {
        return Ok(false);
    }
    if let Some((uid, gid)) = default_owner() {
        if meta.uid() != uid || meta.gid() != gid {
            return Ok(false);
        }
    }
    Ok(std::fs::read(path).map_err(err(path, "read"))? == content)
}

/// Writes only when something differs; returns whether it wrote.
pub fn sync_file(path: &Path, content: &[u8], mode: u32) -> Result<bool> {
    if is_current(path, content, mode)? {
        return Ok(false);
    }
    write_atomic(path, content, mode)?;
    Ok(true)
}

/// Makes the folder (and missing parents) and gives the folder itself its
/// owner and mode; returns whether anything changed.
pub fn ensure_dir(path: &Path, mode: u32) -> Result<bool> {
    let mut changed = false;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(FsError {
                path: path.to_path_buf(),
                op: "make folder",
                source: io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a folder"),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(err(path, "make folder"))?;
            sync_dir(parent(path))?;
            changed = true;
        }
        Err(e) => return Err(err(path, "stat")(e)),
    }
    let meta = std::fs::metadata(path).map_err(err(path, "stat"))?;
    if let Some((uid, gid)) = default_owner() {
        if meta.uid() != uid || meta.gid() != gid {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(err(path, "chown"))?;
            changed = true;
        }
    }
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(err(path, "chmod"))?;
        changed = true;
    }
    Ok(changed)
}

/// Removes a file if present (and makes that durable); returns whether it was there.
pub fn remove_file(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            sync_dir(parent(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(err(path, "remove")(e)),
    }
}

/// Removes an empty folder if present; a folder that still holds files
/// (someone else's) stays.
pub fn remove_empty_dir(path: &Path) -> Result<bool> {
    match std::fs::remove_dir(path) {
        Ok(()) => {
            sync_dir(parent(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTEMPTY) => Ok(false),
        Err(e) => Err(err(path, "remove folder")(e)),
    }
}

/// The file's bytes, or None when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(path, "read")(e)),
    }
}

/// Names of the regular files in a folder (none if it does not exist),
/// without our temp files, sorted.
pub fn list_files(dir: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(dir, "list")(e)),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(err(dir, "list"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_file && !name.contains(TEMP_MARK) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Removes temp files a killed writer left in `dir`; returns how many.
pub fn clean_temp_files(dir: &Path) -> Result<usize> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(err(dir, "list")(e)),
    };
    let mut n = 0;
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(TEMP_MARK) && remove_file(&entry.path())? {
            n += 1;
        }
    }
    Ok(n)
}

/// One file as it is and as it should be: what `--dry-run` shows and what
/// an apply writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub path: PathBuf,
    /// Current content (None: absent).
    pub old: Option<Vec<u8>>,
    /// Wanted content (None: remove).
    pub new: Option<Vec<u8>>,
    pub mode: u32,
}

impl Change {
    /// The change that puts back what this one replaced (for rollbacks).
    pub fn reversed(&self) -> Change {
        Change {
            path: self.path.clone(),
            old: self.new.clone(),
            new: self.old.clone(),
            mode: self.mode,
        }
    }

    /// Compares `new` with what is on disk; None when nothing would change.
    pub fn compute(path: &Path, new: Option<Vec<u8>>, mode: u32) -> Result<Option<Change>> {
        let old = read_optional(path)?;
        let same = match &new {
            Some(n) => is_current(path, n, mode)?,
            None => old.is_none(),
        };
        Ok((!same).then(|| Change {
            path: path.to_path_buf(),
            old,
            new,
            mode,
        }))
    }

    /// Carries the change out.
    pub fn apply(&self) -> Result<()> {
        match &self.new {
            Some(n) => write_atomic(&self.path, n, self.mode),
            None => remove_file(&self.path).map(|_| ()),
        }
    }

    /// A unified diff for people (binary content is summarized).
    pub fn unified_diff(&self) -> String {
        let text = |b: &Option<Vec<u8>>| -> Option<Option<String>> {
            match b {
                None => Some(None),
                Some(b) => std::str::from_utf8(b)
                    .ok()
                    .filter(|s| !s.contains('\0'))
                    .map(|s| Some(s.to_string())),
            }
        };
        let p = self.path.display().to_string();
        match (text(&self.old), text(&self.new)) {
            (Some(old), Some(new)) => {
                let (o, n) = (
                    old.clone().unwrap_or_default(),
                    new.clone().unwrap_or_default(),
                );
                let from = if old.is_some() {
                    p.clone()
                } else {
                    "/dev/null".into()
                };
                let to = if new.is_some() {
                    p.clone()
                } else {
                    "/dev/null".into()
                };
                if o == n {
                    return format!("{p}: owner or mode set to {:o}\n", self.mode);
                }
                similar::TextDiff::from_lines(&o, &n)
                    .unified_diff()
                    .context_radius(3)
                    .header(&from, &to)
                    .to_string()
            }
            _ => {
                let len = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, Vec::len);
                match (&self.old, &self.new) {
                    (None, Some(_)) => format!("{p}: new binary file ({} bytes)\n", len(&self.new)),
                    (Some(_), None) => format!("{p}: binary file removed\n"),
                    _ => format!(
                        "{p}: binary file changes ({} -> {} bytes)\n",
                        len(&self.old),
                        len(&self.new)
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_sync_remove() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.pub");
        assert!(sync_file(&p, b"one\n", PUBLIC_FILE).unwrap());
        assert!(!sync_file(&p, b"one\n", PUBLIC_FILE).unwrap());
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o644);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(
            sync_file(&p, b"one\n", PUBLIC_FILE).unwrap(),
            "mode is repaired"
        );
        assert!(sync_file(&p, b"two\n", PUBLIC_FILE).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"two\n");
        assert_eq!(list_files(dir.path()).unwrap(), vec!["a.pub".to_string()]);
        assert!(remove_file(&p).unwrap());
        assert!(!remove_file(&p).unwrap());
    }

    #[test]
    fn apply_all_writes_removes_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("gone"), b"x").unwrap();
        let mut changes: Vec<Change> = (0..5)
            .map(|i| Change {
                path: p(&format!("f{i}")),
                old: None,
                new: Some(format!("content {i}\n").into_bytes()),
                mode: PUBLIC_FILE,
            })
            .collect();
        changes.push(Change {
            path: p("gone"),
            old: Some(b"x".to_vec()),
            new: None,
            mode: PUBLIC_FILE,
        });
        apply_all(&changes).unwrap();
        assert_eq!(std::fs::read(p("f3")).unwrap(), b"content 3\n");
        assert_eq!(std::fs::metadata(p("f3")).unwrap().mode() & 0o7777, 0o644);
        assert!(!p("gone").exists());
        assert_eq!(list_files(dir.path()).unwrap().len(), 5);
        assert_eq!(clean_temp_files(dir.path()).unwrap(), 0);
    }

    #[test]
    fn temp_files_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!(".x{TEMP_MARK}1-2")), b"half").unwrap();
        std::fs::write(dir.path().join("keep"), b"k").unwrap();
        assert_eq!(list_files(dir.path()).unwrap(), vec!["keep".to_string()]);
        assert_eq!(clean_temp_files(dir.path()).unwrap(), 1);
        assert!(dir.path().join("keep").exists());
    }

    #[test]
    fn dirs_get_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        assert!(ensure_dir(&d, DIR).unwrap());
        assert!(!ensure_dir(&d, DIR).unwrap());
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(ensure_dir(&d, DIR).unwrap());
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o7777, 0o755);
    }

    #[test]
    fn diff_shows_lines() {
        let c = Change {
            path: "/x/y".into(),
            old: Some(b"a\nb\n".to_vec()),
            new: Some(b"a\nc\n".to_vec()),
            mode: 0o644,
        };
        let d = c.unified_diff();
        assert!(d.contains("-b\n") && d.contains("+c\n"), "{d}");
        let bin = Change {
            path: "/x/k".into(),
            old: None,
            new: Some(b"SSHKRL\n\0".to_vec()),
            mode: 0o644,
        };
        assert!(bin.unified_diff().contains("new binary file"));
    }
}
