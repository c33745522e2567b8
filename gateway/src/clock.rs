//! The only place that reads the wall clock; everything else takes `now`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, as certificates and sessions count time.
pub fn now_unix() -> u64 {
    since_epoch().as_secs()
}

/// Time since the Unix epoch, with sub-second precision, for scheduling the
/// end of a session to the moment rather than to the next whole second.
#[allow(clippy::disallowed_methods)] // the one place that may
pub fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}
