//! Counts failed attempts per client address (OTP verification), so that
//! guessing from one address is slowed down. Only failures are answered
//! with 429: a right answer always goes through, so one client cannot lock
//! out others sharing its address (hosts behind one NAT).
//!
//! In memory: each server counts what it sees. Spreading guesses over N
//! servers gives N times the budget, which the 74 random bits of an OTP
//! make irrelevant; the limit only bounds the load of guessing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::error::{Error, Result};

pub struct FailureLimiter {
    max_failures: u32,
    window: i64,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    by_client: HashMap<IpAddr, (i64, u32)>,
    /// When stale entries were last dropped.
    swept: i64,
}

/// Addresses tracked at most; beyond this, stale entries are dropped (at
/// most once a second: each time looks at all of them), and while none is
/// stale a failure from a new address is refused without being tracked.
/// Rotating source addresses then costs the rotator, not the server's
/// memory.
const MAX_TRACKED: usize = 100_000;

/// The client an address counts for: an IPv6 address by its /64, which a
/// single client usually holds whole (a host can take any address in it);
/// an IPv4 address written as IPv6 as the IPv4 address.
fn client(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

impl FailureLimiter {
    pub fn new(max_failures: u32, window_secs: i64) -> Self {
        FailureLimiter {
            max_failures,
            window: window_secs,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// 429 while the address has used up its failures in the current
    /// window: for guesses (passwords) that must be refused before they
    /// are tried, the right one too, or the limit would not slow them.
    pub fn refused(&self, ip: Option<IpAddr>, now: i64) -> Result<()> {
        let Some(ip) = ip else { return Ok(()) };
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.by_client.get(&client(ip)) {
            Some((start, n)) if now - start < self.window && *n >= self.max_failures => {
                Err(Error::RateLimited(
                    "too many failed attempts from this address; try again later".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Counts one failure; 429 once the address has had more than its
    /// failures in the current window (the caller then answers with that
    /// instead of its own error).
    pub fn failure(&self, ip: Option<IpAddr>, now: i64) -> Result<()> {
        let Some(ip) = ip else { return Ok(()) };
        let key = client(ip);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.by_client.len() >= MAX_TRACKED && !seen.by_client.contains_key(&key) {
            if seen.swept != now {
                let window = self.window;
                seen.by_client.retain(|_, (start, _)| now - *start < window);
                seen.swept = now;
            }
            if seen.by_client.len() >= MAX_TRACKED {
                return Err(Error::RateLimited(
                    "too many failed attempts; try again later".into(),
                ));
            }
        }
        let e = seen.by_client.entry(key).or_insert((now, 0));
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

    #[test]
    fn an_address_that_used_up_its_failures_is_refused_before_trying_until_the_window_passes() {
        let l = FailureLimiter::new(2, 60);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.refused(Some(a), 100).is_ok());
        l.failure(Some(a), 100).unwrap();
        assert!(l.refused(Some(a), 100).is_ok());
        l.failure(Some(a), 101).unwrap();
        assert!(l.refused(Some(a), 101).is_err());
        assert!(l.refused(Some(b), 101).is_ok());
        assert!(l.refused(Some(a), 160).is_ok(), "window over");
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_slash_64_and_the_table_is_bounded() {
        let l = FailureLimiter::new(3, 60);
        // Rotating addresses inside one /64 does not buy more guesses.
        for i in 0..3 {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            assert!(l.failure(Some(ip), 100).is_ok());
        }
        let next: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(l.failure(Some(next), 100).is_err());
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.failure(Some(other), 100).is_ok());
        // The IPv4 address written as IPv6 is the IPv4 address.
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.failure(Some(v4), 100).is_ok());
        }
        assert!(l.failure(Some(mapped), 100).is_err());

        // A full table of recent clients: a new one is refused, untracked;
        // a tracked one is counted as before; once they are stale, the
        // table is swept and new ones are let in again.
        let l = FailureLimiter::new(3, 60);
        for i in 0..MAX_TRACKED as u32 {
            assert!(l.failure(Some(IpAddr::V4(i.into())), 100).is_ok());
        }
        let fresh: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(l.failure(Some(fresh), 100).is_err());
        assert!(l.failure(Some(IpAddr::V4(7.into())), 100).is_ok());
        assert!(l.failure(Some(fresh), 161).is_ok());
        let size = l.seen.lock().unwrap().by_client.len();
        assert_eq!(size, 1);
    }
}
