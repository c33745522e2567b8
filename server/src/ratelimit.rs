//! Counts failed attempts per client address (OTP verification), so that
//! guessing from one address is slowed down. Only failures are answered
//! with 429: a right answer always goes through, so one client cannot lock
//! out others sharing its address (hosts behind one NAT).
//!
//! In memory: each server counts what it sees. Spreading guesses over N
//! servers gives N times the budget, which 128-bit random OTPs make
//! irrelevant; the limit only bounds the load of guessing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::error::{Error, Result};

pub struct FailureLimiter {
    max_failures: u32,
    window: i64,
    seen: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

/// Addresses tracked at most; beyond this, stale entries are dropped.
const MAX_TRACKED: usize = 100_000;

impl FailureLimiter {
    pub fn new(max_failures: u32, window_secs: i64) -> Self {
        FailureLimiter {
            max_failures,
            window: window_secs,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one failure; 429 once the address has had more than its
    /// failures in the current window (the caller then answers with that
    /// instead of its own error).
    pub fn failure(&self, ip: Option<IpAddr>, now: i64) -> Result<()> {
        let Some(ip) = ip else { return Ok(()) };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_TRACKED {
            let window = self.window;
            seen.retain(|_, (start, _)| now - *start < window);
        }
        let e = seen.entry(ip).or_insert((now, 0));
        if now - e.0 >= self.window {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
        if e.1 > self.max_failures {
            return Err(Error::RateLimited(
                "too many failed attempts from this address; try again later".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_and_window() {
        let l = FailureLimiter::new(3, 60);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.failure(Some(a), 100).is_ok());
        }
        assert!(l.failure(Some(a), 100).is_err());
        assert!(l.failure(Some(b), 100).is_ok());
        assert!(l.failure(Some(a), 161).is_ok(), "window over");
    }
}
