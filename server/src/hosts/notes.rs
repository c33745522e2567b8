//! What a server notes of its hosts' comings and goings and has not yet
//! written (see [`super::seen`] and [`super::applied`]): in memory only,
//! in a file that names nothing of the server's shared state
//! (`crate::state`), which holds them.
//!
//! A fleet's polls note hundreds of such things a second; each written on
//! its own was a transaction and a round trip per poll. Noted here, they
//! are written together by the next flush (`seen::write_due`), each beside
//! its host's record and only while that record exists.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// This server's last-seen times not yet written, per host ID.
pub type SeenTimes = Notes<i64>;

/// This server's acknowledgements not yet written, per host ID.
pub type AppliedNotes = Notes<AppliedEntry>;

/// The state index a host last acknowledged, and when, as noted and as
/// stored beside its record (see [`super::applied`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedEntry {
    pub index: u64,
    pub time: i64,
}

/// Per host ID, the newest value this server noted, and those noted since
/// the last flush.
pub struct Notes<V> {
    inner: Mutex<Inner<V>>,
    /// Held by a flush, and by whoever writes a value of this kind past the
    /// notes (`applied::store`): a flush that took a value before such a
    /// write cannot land after it.
    pub(super) flushing: tokio::sync::Mutex<()>,
}

impl<V> Default for Notes<V> {
    fn default() -> Self {
        Notes {
            inner: Mutex::new(Inner {
                noted: 0,
                known: HashMap::new(),
                due: HashMap::new(),
            }),
            flushing: tokio::sync::Mutex::new(()),
        }
    }
}

struct Inner<V> {
    /// How many values were noted, ever: a flush that sees it unchanged
    /// since the last knows none came meanwhile.
    noted: u64,
    /// The newest value noted, written or not.
    known: HashMap<String, V>,
    /// The values noted since the last flush.
    due: HashMap<String, V>,
}

impl<V: Clone> Notes<V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes `v` for host `id` when `due`, given the newest value known,
    /// says it is worth writing; true when noted.
    pub(super) fn note_if(&self, id: &str, v: V, due: impl FnOnce(Option<&V>) -> bool) -> bool {
        let mut inner = self.lock();
        if !due(inner.known.get(id)) {
            return false;
        }
        inner.known.insert(id.to_string(), v.clone());
        inner.due.insert(id.to_string(), v);
        inner.noted = inner.noted.wrapping_add(1);
        true
    }

    /// How many values were noted so far (it only grows), and how many
    /// are due.
    pub(super) fn counts(&self) -> (u64, usize) {
        let inner = self.lock();
        (inner.noted, inner.due.len())
    }

    /// Takes `v` as known for host `id` and drops what is due for it, as
    /// its caller, holding [`Notes::flushing`], is about to write `v`
    /// itself: nothing older is written after it.
    pub(super) fn writing(&self, id: &str, v: V) {
        let mut inner = self.lock();
        inner.due.remove(id);
        inner.known.insert(id.to_string(), v);
    }

    /// Undoes [`Notes::writing`] when that write failed, unless a newer
    /// value was noted meanwhile: the next note of `v` is written again.
    pub(super) fn not_written(&self, id: &str, v: &V)
    where
        V: PartialEq,
    {
        let mut inner = self.lock();
        if inner.known.get(id) == Some(v) {
            inner.known.remove(id);
        }
    }

    /// The newest value this server noted for host `id`.
    pub fn known(&self, id: &str) -> Option<V> {
        self.lock().known.get(id).cloned()
    }

    /// Forgets an unenrolled host.
    pub fn forget(&self, id: &str) {
        let mut inner = self.lock();
        inner.known.remove(id);
        inner.due.remove(id);
    }

    pub(super) fn take_due(&self) -> Vec<(String, V)> {
        self.lock().due.drain().collect()
    }

    /// Puts back values a flush could not write, unless newer ones were
    /// noted meanwhile.
    pub(super) fn put_back(&self, rows: Vec<(String, V)>) {
        let mut inner = self.lock();
        for (id, v) in rows {
            inner.due.entry(id).or_insert(v);
        }
    }

    /// Hosts found gone when their value was written.
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
    fn a_value_is_noted_when_worth_writing_and_taken_once() {
        let notes = Notes::<u64>::default();
        let changed = |v: u64| move |k: Option<&u64>| k != Some(&v);
        assert!(notes.note_if("h", 1, changed(1)));
        assert!(!notes.note_if("h", 1, changed(1)));
        assert_eq!(notes.known("h"), Some(1));
        assert_eq!(notes.take_due(), vec![("h".to_string(), 1)]);
        assert!(notes.take_due().is_empty());
        // A write that failed is tried again, unless a newer value came.
        notes.put_back(vec![("h".to_string(), 1)]);
        assert!(notes.note_if("h", 2, changed(2)));
        notes.put_back(vec![("h".to_string(), 1)]);
        assert_eq!(notes.take_due(), vec![("h".to_string(), 2)]);
        // A value written past the notes is known and no longer due; if
        // that write fails, the next note of it is due again.
        assert!(notes.note_if("h", 3, changed(3)));
        notes.writing("h", 4);
        assert!(notes.take_due().is_empty());
        assert_eq!(notes.known("h"), Some(4));
        notes.not_written("h", &4);
        assert!(notes.note_if("h", 4, changed(4)));
        notes.forget("h");
        assert_eq!(notes.known("h"), None);
    }
}
