//! Small filesystems for fault tests: a full disk on demand. Mounting
//! needs root.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run;

/// A small tmpfs, unmounted when dropped (also when the test fails).
pub struct Tmpfs {
    /// Where it is mounted.
    pub dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let (code, _, err) = run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir));
        assert_eq!(code, 0, "mount tmpfs (run as root): {err}");
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }

    /// Takes all the space that is left; delete the file to free it. A
    /// file's last page may still have room for a few bytes.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.dir.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = [0u8; 1024];
        while f.write_all(&chunk).is_ok() {}
        // Byte by byte into the last partial block.
        while f.write_all(&chunk[..1]).is_ok() {}
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so that a server still holding its audit file open cannot
        // leave the mount behind.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
