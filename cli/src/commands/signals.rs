//! Signals caught while a command holds something to clean up (a key on
//! disk, a lease to give back), instead of ending the process at once.

use std::future::Future;

use crate::error::{Error, Result};

/// SIGINT, SIGTERM, SIGHUP and SIGQUIT, caught instead of ending the
/// process (so that temporary files are removed first).
pub(super) struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn new() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let s =
            |k| signal(k).map_err(|e| Error::Local(format!("cannot set up signal handling: {e}")));
        Ok(Signals {
            int: s(SignalKind::interrupt())?,
            term: s(SignalKind::terminate())?,
            hup: s(SignalKind::hangup())?,
            quit: s(SignalKind::quit())?,
        })
    }

    /// The next signal to arrive.
    pub(super) async fn next(&mut self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal;
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.hup.recv() => Signal::SIGHUP,
            _ = self.quit.recv() => Signal::SIGQUIT,
        }
    }

    pub(super) async fn any(&mut self) -> &'static str {
        self.next().await.as_str()
    }
}

/// A server call that a signal interrupts (the caller's cleanup then runs).
pub(super) async fn interruptible<T>(
    signals: &mut Signals,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        r = fut => r,
        sig = signals.next() => Err(Error::Local(format!("interrupted by {}", sig.as_str()))),
    }
}
