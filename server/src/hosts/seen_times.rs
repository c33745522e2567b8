//! The last-seen times a server noted and has not yet written (see
//! [`super::seen`]): in memory only, in a file that names nothing of the
//! server's shared state (`crate::state`), which holds them.

use std::collections::HashMap;
use std::sync::Mutex;

/// Seconds between two notes of a host's last-seen time.
pub const SEEN_EVERY: i64 = 60;

/// This server's last-seen times (see [`super::seen`]).
#[derive(Default)]
pub struct SeenTimes {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Per host ID, the newest time this server noted, written or not.
    known: HashMap<String, i64>,
    /// The hosts noted since the last flush, with their times.
    due: HashMap<String, i64>,
}

impl SeenTimes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that host `id`, whose record says it was last seen at
    /// `recorded`, was seen at `now`: kept for the next flush when the
    /// newest time known is at least [`SEEN_EVERY`] old. True when noted.
    pub fn note(&self, id: &str, recorded: i64, now: i64) -> bool {
        let mut inner = self.lock();
        let last = inner
            .known
            .get(id)
            .copied()
            .unwrap_or(recorded)
            .max(recorded);
        if now - last < SEEN_EVERY {
            return false;
        }
        inner.known.insert(id.to_string(), now);
        inner.due.insert(id.to_string(), now);
        true
    }

    /// The newest time this server noted for host `id`.
    pub fn known(&self, id: &str) -> Option<i64> {
        self.lock().known.get(id).copied()
    }

    /// Forgets an unenrolled host.
    pub fn forget(&self, id: &str) {
        let mut inner = self.lock();
        inner.known.remove(id);
        inner.due.remove(id);
    }

    pub(super) fn take_due(&self) -> Vec<(String, i64)> {
        self.lock().due.drain().collect()
    }

    /// Puts back times a flush could not write, unless newer ones were
    /// noted meanwhile.
    pub(super) fn put_back(&self, rows: Vec<(String, i64)>) {
        let mut inner = self.lock();
        for (id, t) in rows {
            let at = inner.due.entry(id).or_insert(t);
            *at = (*at).max(t);
        }
    }

    /// Hosts found gone when their time was written.
    pub(super) fn gone(&self, ids: &[&str]) {
        let mut inner = self.lock();
        for id in ids {
            inner.known.remove(*id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_noted_at_most_once_a_minute() {
        let times = SeenTimes::default();
        // Enrolled at 1000: not due until 1060.
        assert!(!times.note("h", 1000, 1030));
        assert!(times.note("h", 1000, 1060));
        // The record still says 1000; the time noted counts.
        assert!(!times.note("h", 1000, 1100));
        assert!(times.note("h", 1000, 1120));
        assert_eq!(times.known("h"), Some(1120));
        assert_eq!(times.take_due(), vec![("h".to_string(), 1120)]);
        assert!(times.take_due().is_empty());
        // A write that failed is tried again, with the newest time.
        times.put_back(vec![("h".to_string(), 1120)]);
        assert!(times.note("h", 1000, 1180));
        assert_eq!(times.take_due(), vec![("h".to_string(), 1180)]);
        times.forget("h");
        assert_eq!(times.known("h"), None);
    }
}
