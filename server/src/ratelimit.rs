//! Counts failed attempts per client address, so that guessing from one
//! address is slowed down. Two uses:
//! - OTP verification ([`FailureLimiter::failure`]): only failures are
//!   answered with 429, a right answer always goes through, so one client
//!   cannot lock out others sharing its address (hosts behind one NAT);
//!   an OTP's 74 random bits make guessing it hopeless anyway.
//! - Passwords ([`FailureLimiter::attempt`]): guesses a person chose, so
//!   past the limit every attempt is refused untried, the right one too,
//!   and attempts being checked count as well. The price: more logins at
//!   once from one address than the limit, right ones included, get 429
//!   past it until the earlier ones are done.
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
    /// Per client: when its window began, its failures in it, and its
    /// attempts being tried now ([`FailureLimiter::attempt`]).
    by_client: HashMap<IpAddr, Count>,
    /// When stale entries were last dropped.
    swept: i64,
}

#[derive(Clone, Copy)]
struct Count {
    start: i64,
    failures: u32,
    in_flight: u32,
}

impl Count {
    fn new(now: i64) -> Count {
        Count {
            start: now,
            failures: 0,
            in_flight: 0,
        }
    }

    /// Starts a new window once the last one is over.
    fn at(&mut self, now: i64, window: i64) -> &mut Count {
        if now - self.start >= window {
            self.start = now;
            self.failures = 0;
        }
        self
    }
}

/// Addresses tracked at most; beyond this, stale entries are dropped (at
/// most once a second: each time looks at all of them), and while none is
/// stale a failure or password attempt from a new address is refused
/// without being tracked.
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

    /// Reserves one attempt at a guess (a password) that must be refused
    /// before it is tried, the right one too, or the limit would not slow
    /// guessing: 429 while the address's failures in the current window
    /// and its attempts being tried now reach the limit. The attempt counts
    /// as being tried until [`Attempt::failed`] counts it as a failure or
    /// it is dropped. Counting attempts in flight, not only failures
    /// already seen, is what holds the limit against guesses sent all at
    /// once: each would otherwise be let in before any had failed.
    pub fn attempt(&self, ip: Option<IpAddr>, now: i64) -> Result<Attempt<'_>> {
        let Some(ip) = ip else {
            return Ok(Attempt {
                limiter: self,
                key: None,
                now,
            });
        };
        let key = client(ip);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // A full table of recent clients refuses, as for a failure: an
        // untracked guess would be an unlimited one.
        let c = self.count(&mut seen, key, now)?;
        if c.failures.saturating_add(c.in_flight) >= self.max_failures {
            return Err(Error::RateLimited(
                "too many failed attempts from this address; try again later".into(),
            ));
        }
        c.in_flight += 1;
        Ok(Attempt {
            limiter: self,
            key: Some(key),
            now,
        })
    }

    /// The count of `key` in its current window; 429 when the table is
    /// full of recent clients and `key` is not one (see `MAX_TRACKED`).
    fn count<'s>(&self, seen: &'s mut Seen, key: IpAddr, now: i64) -> Result<&'s mut Count> {
        if !self.make_room(seen, &key, now) {
            return Err(Error::RateLimited(
                "too many failed attempts; try again later".into(),
            ));
        }
        let window = self.window;
        Ok(seen
            .by_client
            .entry(key)
            .or_insert_with(|| Count::new(now))
            .at(now, window))
    }

    /// Whether the table has room for `key` (tracked already, or a place
    /// freed by dropping stale entries).
    fn make_room(&self, seen: &mut Seen, key: &IpAddr, now: i64) -> bool {
        if seen.by_client.len() < MAX_TRACKED || seen.by_client.contains_key(key) {
            return true;
        }
        if seen.swept != now {
            let window = self.window;
            seen.by_client
                .retain(|_, c| c.in_flight > 0 || now - c.start < window);
            seen.swept = now;
        }
        seen.by_client.len() < MAX_TRACKED
    }

    /// Counts one failure; 429 once the address has had more than its
    /// failures in the current window (the caller then answers with that
    /// instead of its own error).
    pub fn failure(&self, ip: Option<IpAddr>, now: i64) -> Result<()> {
        let Some(ip) = ip else { return Ok(()) };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let c = self.count(&mut seen, client(ip), now)?;
        c.failures = c.failures.saturating_add(1);
        if c.failures > self.max_failures {
            return Err(Error::RateLimited(
                "too many failed attempts from this address; try again later".into(),
            ));
        }
        Ok(())
    }
}

/// One guess being tried, reserved by [`FailureLimiter::attempt`]: ended
/// by [`Attempt::failed`] or [`Attempt::done`]. Dropped without either (the
/// client went away while it was being checked, and the request with it),
/// it counts as a failure: the check may have run all the same, and
/// guesses whose answers are never read must not be free.
pub struct Attempt<'a> {
    limiter: &'a FailureLimiter,
    /// None when the attempt is not tracked (no address).
    key: Option<IpAddr>,
    now: i64,
}

impl Attempt<'_> {
    /// Counts the attempt as a failure (it was wrong).
    pub fn failed(mut self, now: i64) {
        self.now = now;
        self.end(true);
    }

    /// Ends the attempt without counting it: it was right, or it was not
    /// checked (the storage failed).
    pub fn done(mut self) {
        self.end(false);
    }

    fn end(&mut self, failed: bool) {
        let Some(key) = self.key.take() else { return };
        let mut seen = self.limiter.seen.lock().unwrap_or_else(|e| e.into_inner());
        let window = self.limiter.window;
        let Some(c) = seen.by_client.get_mut(&key) else {
            return;
        };
        c.in_flight = c.in_flight.saturating_sub(1);
        if failed {
            let c = c.at(self.now, window);
            c.failures = c.failures.saturating_add(1);
        } else if c.in_flight == 0 && c.failures == 0 {
            // An address with nothing else counted is forgotten.
            seen.by_client.remove(&key);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.end(true);
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
        l.attempt(Some(a), 100).unwrap().failed(100);
        // A right guess counts for nothing once it is done.
        l.attempt(Some(a), 100).unwrap().done();
        l.attempt(Some(a), 101).unwrap().failed(101);
        assert!(l.attempt(Some(a), 101).is_err());
        assert!(l.attempt(Some(b), 101).is_ok());
        assert!(l.attempt(Some(a), 160).is_ok(), "window over");
    }

    #[test]
    fn guesses_sent_at_once_are_tried_no_more_than_the_limit() {
        let l = FailureLimiter::new(3, 60);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| l.attempt(Some(a), 100).unwrap()).collect();
        assert!(
            l.attempt(Some(a), 100).is_err(),
            "a fourth guess while three are being tried"
        );
        // Two were right: their places are free again; one was wrong.
        let mut held = held.into_iter();
        held.next().unwrap().failed(100);
        for t in held {
            t.done();
        }
        let again: Vec<_> = (0..2).map(|_| l.attempt(Some(a), 100).unwrap()).collect();
        assert!(l.attempt(Some(a), 100).is_err());
        for t in again {
            t.failed(100);
        }
        assert!(l.attempt(Some(a), 100).is_err(), "three failures");
        assert!(l.attempt(Some(a), 160).is_ok(), "window over");
        // An address whose attempts were all right is not kept.
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        l.attempt(Some(b), 100).unwrap().done();
        assert!(!l.seen.lock().unwrap().by_client.contains_key(&b));
    }

    #[test]
    fn a_guess_whose_client_went_away_counts_as_a_failure() {
        let l = FailureLimiter::new(3, 60);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            // The request is dropped mid-check: neither failed nor done.
            drop(l.attempt(Some(a), 100).unwrap());
        }
        assert!(l.attempt(Some(a), 100).is_err(), "three guesses went");
        assert!(l.attempt(Some(a), 160).is_ok(), "window over");
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
