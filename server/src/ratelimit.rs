//! Limits failed attempts per client address (OTP verification), so that
//! guessing is slow. In memory: each server counts its own clients.

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

    /// 429 when the address used up its failures in the current window.
    pub fn check(&self, ip: Option<IpAddr>, now: i64) -> Result<()> {
        let Some(ip) = ip else { return Ok(()) };
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(&ip) {
            Some((start, n)) if now - start < self.window && *n >= self.max_failures => {
                Err(Error::RateLimited(
                    "too many failed attempts from this address; try again later".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    pub fn failure(&self, ip: Option<IpAddr>, now: i64) {
        let Some(ip) = ip else { return };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_TRACKED {
            let window = self.window;
            seen.retain(|_, (start, _)| now - *start < window);
        }
        let e = seen.entry(ip).or_insert((now, 0));
        if now - e.0 >= self.window {
            *e = (now, 0);
        }
        e.1 += 1;
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
            assert!(l.check(Some(a), 100).is_ok());
            l.failure(Some(a), 100);
        }
        assert!(l.check(Some(a), 100).is_err());
        assert!(l.check(Some(b), 100).is_ok());
        assert!(l.check(Some(a), 161).is_ok(), "window over");
    }
}
