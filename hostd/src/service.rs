//! Whether the service (`gatepass-hostd run`) runs on this host: it holds
//! a lock on a file in its state folder for as long as it runs (the lock
//! goes with the process, however it ends). `uninstall` asks, because the
//! service's next pass would put back everything it removes; and a second
//! `run` on the same folder is refused.

use std::fs::File;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

const LOCK: &str = "service.lock";

/// Held while the service runs.
pub struct Running {
    _lock: Flock<File>,
}

fn open(state_dir: &Path, create: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .mode(0o600)
        .open(state_dir.join(LOCK))
}

/// Marks the service running; refused while another runs on `state_dir`.
pub fn mark_running(state_dir: &Path) -> Result<Running, String> {
    let at = state_dir.join(LOCK);
    std::fs::create_dir_all(state_dir)
        .and_then(|()| open(state_dir, true))
        .map_err(|e| format!("cannot open {}: {e}", at.display()))
        .and_then(|f| {
            Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|_| {
                format!(
                    "gatepass-hostd already runs on {} (it holds {})",
                    state_dir.display(),
                    at.display()
                )
            })
        })
        .map(|lock| Running { _lock: lock })
}

/// Whether a service holds `state_dir`'s mark.
pub fn is_running(state_dir: &Path) -> bool {
    match open(state_dir, false) {
        Ok(f) => Flock::lock(f, FlockArg::LockSharedNonblock).is_err(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_held_while_the_service_runs_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_running(dir.path()), "no mark yet");
        let running = mark_running(dir.path()).unwrap();
        assert!(is_running(dir.path()));
        let e = mark_running(dir.path()).err().unwrap();
        assert!(e.contains("already runs"), "{e}");
        drop(running);
        assert!(!is_running(dir.path()));
        assert!(mark_running(dir.path()).is_ok());
    }
}
