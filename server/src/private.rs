//! Files and folders for the server's own user only (the database, keys,
//! the audit log): created with modes 0600 and 0700 from the start, so
//! there is no moment when another user could open them. The process umask
//! can only take bits away from these modes, never add any.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// Creates a folder and any missing parents with mode 0700; folders that
/// exist already are left as they are.
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Creates an empty file with mode 0600 (and its folder with 0700) unless
/// it exists; an existing file is left as it is.
pub fn create_file(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dir(dir)?;
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_private_and_existing_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("a/b/data.db");
        create_file(&f).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&f), 0o600);
        assert_eq!(mode(&t.path().join("a")), 0o700);
        assert_eq!(mode(&t.path().join("a/b")), 0o700);
        std::fs::write(&f, "x").unwrap();
        create_file(&f).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "x");
    }
}
