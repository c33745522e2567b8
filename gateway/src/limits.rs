//! When a session ends: at its end time, when the source says it was
//! terminated, after a stretch without traffic, or when the target goes.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::bridge::Activity;
use crate::clock;
use crate::recording::Recorder;
use crate::session::SessionSource;
use crate::target::TargetLost;

/// Why the gateway closed a session's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Expired,
    Terminated,
    Idle,
    /// The target closed the connection or it broke.
    TargetLost,
    /// The gateway is shutting down.
    Stopping,
    /// The session's recording cannot be kept (see `Spool::trouble`).
    Unrecorded,
}

impl EndReason {
    /// What the user reads on their terminal.
    pub fn message(self) -> &'static str {
        match self {
            EndReason::Expired => "gatepass: the session has reached its end time",
            EndReason::Terminated => "gatepass: the session was terminated by an administrator",
            EndReason::Idle => "gatepass: the session was closed after being idle too long",
            EndReason::TargetLost => "gatepass: the connection to the target was lost",
            EndReason::Stopping => "gatepass: the gateway is stopping",
            EndReason::Unrecorded => {
                "gatepass: the session's recording cannot be stored, so the session was closed"
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Terminated => "terminated",
            EndReason::Idle => "idle",
            EndReason::TargetLost => "target lost",
            EndReason::Stopping => "gateway stopping",
            EndReason::Unrecorded => "recording cannot be stored",
        }
    }

    /// The reason the server records, with a detail where the reason alone
    /// does not say what happened.
    pub fn reported(self) -> (crate::session::EndReason, Option<String>) {
        use crate::session::EndReason as R;
        match self {
            EndReason::Expired => (R::Expired, None),
            EndReason::Terminated => (R::Terminated, None),
            EndReason::Idle => (R::Idle, None),
            EndReason::TargetLost => (
                R::Failed,
                Some("the connection to the target was lost".into()),
            ),
            EndReason::Stopping => (R::GatewayLost, None),
            EndReason::Unrecorded => (
                R::Failed,
                Some("the gateway could not store the session's recording".into()),
            ),
        }
    }
}

/// The monotonic instant at which the Unix time `expires_at` (seconds)
/// is reached, given the current time since the epoch.
pub fn deadline(expires_at: u64, since_epoch: Duration, now: Instant) -> Instant {
    let end = Duration::from_secs(expires_at);
    now + end.saturating_sub(since_epoch)
}

/// Resolves with the first reason the session must end.
pub async fn watch<S: SessionSource>(
    source: &S,
    session_id: &str,
    expires_at: u64,
    idle_timeout: Option<Duration>,
    activity: Arc<Activity>,
    target_lost: TargetLost,
    recorder: Option<&Recorder>,
) -> EndReason {
    let end = deadline(expires_at, clock::since_epoch(), Instant::now());
    let idle = async {
        match idle_timeout {
            None => std::future::pending::<()>().await,
            Some(limit) => loop {
                let until = Instant::from_std(activity.last()) + limit;
                if Instant::now() >= until {
                    return;
                }
                tokio::time::sleep_until(until).await;
            },
        }
    };
    let unrecorded = async {
        match recorder {
            Some(r) => {
                let why = r.cannot_keep().await;
                tracing::warn!(session = session_id, reason = %why, "ending the session: its recording cannot be kept");
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = tokio::time::sleep_until(end) => EndReason::Expired,
        () = unrecorded => EndReason::Unrecorded,
        () = source.terminated(session_id) => EndReason::Terminated,
        () = idle => EndReason::Idle,
        _ = target_lost => EndReason::TargetLost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_counts_from_the_fraction_of_a_second_already_gone() {
        let now = Instant::now();
        let d = deadline(100, Duration::from_millis(97_250), now);
        assert_eq!(d - now, Duration::from_millis(2_750));
        // An end already passed is now, not a panic or a wrap.
        assert_eq!(deadline(100, Duration::from_secs(200), now), now);
    }
}
