//! When each host was last seen, kept apart from its sealed record.
//!
//! Every poll of a host's state counts as seeing it, and its last-seen time
//! moves at most once a [`SEEN_EVERY`]. With 100,000 hosts that is well
//! over a thousand times a second; each used to rewrite the host's whole
//! record (a read and a compare-and-swap transaction) and to make the next
//! poll read it again. Now a poll only notes the time here, in memory, and
//! [`flush`] writes the times noted since the last flush every
//! [`FLUSH_EVERY`], a thousand to a transaction, each to its own entry beside
//! the host's record (`hosts/seen/<id>`), never to the record. A server that
//! stops abruptly loses at most that many seconds of last-seen times: a
//! host counts as out of sync only after [`super::SYNC_GRACE_SECS`].
//!
//! Readers (`GET hosts/<id>`, the web UI) take the newest of the record's
//! time (set at enrollment, and by servers before this), the stored entry
//! and this server's memory.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::notes::Notes;
pub use super::notes::SeenTimes;
use crate::error::Result;
use crate::state::{Core, State};

/// The entries written per transaction at most, so that one flush of a
/// large fleet does not hold a writer long.
const FLUSH_BATCH: usize = 1000;

/// Seconds between two notes of a host's last-seen time.
pub const SEEN_EVERY: i64 = 60;

/// How often what the polls noted is written: last-seen times, and the
/// states hosts acknowledged with a poll ([`super::applied`]).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

impl Notes<i64> {
    /// Notes that host `id`, whose record says it was last seen at
    /// `recorded`, was seen at `now`: kept for the next flush when the
    /// newest time known is at least [`SEEN_EVERY`] old. True when noted.
    pub fn note(&self, id: &str, recorded: i64, now: i64) -> bool {
        self.note_if(id, now, |known| {
            now - known.copied().unwrap_or(recorded).max(recorded) >= SEEN_EVERY
        })
    }
}

/// A host's last-seen time as stored beside its record.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct SeenEntry {
    pub time: i64,
}

pub fn seen_key(id: &str) -> String {
    format!("hosts/seen/{id}")
}

/// Writes the last-seen times noted since the last flush, each only while
/// its host is still enrolled (a host unenrolled meanwhile stays gone, its
/// time dropped); returns how many were written.
pub async fn flush(core: &Core) -> Result<usize> {
    let written = write_due(core, &core.hosts_seen, seen_key, |t| SeenEntry { time: *t }).await?;
    core.metrics
        .host_bookkeeping_by("seen_written", written as u64);
    Ok(written)
}

/// Writes the values noted since the last flush, each as `entry(v)` under
/// `key(id)` and only while its host is still enrolled (a host unenrolled
/// meanwhile stays gone, its value dropped); returns how many were written.
/// A batch that fails goes back to be written by the next flush.
pub(super) async fn write_due<V: Clone, E: Serialize>(
    core: &Core,
    notes: &Notes<V>,
    key: fn(&str) -> String,
    entry: fn(&V) -> E,
) -> Result<usize> {
    let _flushing = notes.flushing.lock().await;
    let mut due = notes.take_due();
    let mut written = 0;
    while !due.is_empty() {
        let rest = due.split_off(due.len().min(FLUSH_BATCH));
        let items: Vec<(String, E, String)> = due
            .iter()
            .map(|(id, v)| (key(id), entry(v), super::host_key(id)))
            .collect();
        match core.storage.put_beside(&items).await {
            Ok(stored) => {
                let gone: Vec<&str> = due
                    .iter()
                    .zip(&stored)
                    .filter(|(_, s)| !**s)
                    .map(|((id, _), _)| id.as_str())
                    .collect();
                notes.gone(&gone);
                written += stored.len() - gone.len();
            }
            Err(e) => {
                notes.put_back(due);
                notes.put_back(rest);
                return Err(e);
            }
        }
        due = rest;
    }
    Ok(written)
}

/// Flushes every [`FLUSH_EVERY`] for as long as the server runs: the
/// last-seen times, and the acknowledged states when their
/// [`super::applied::Pace`] says so.
pub async fn flusher(core: State) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pace = super::applied::Pace::default();
    loop {
        tick.tick().await;
        if let Err(e) = flush(&core).await {
            tracing::warn!(error = %e, "hosts' last-seen times not written; trying again in {} s", FLUSH_EVERY.as_secs());
        }
        let (noted, due) = super::applied::counts(&core);
        if !pace.write_now(noted, due) {
            continue;
        }
        if let Err(e) = super::applied::flush(&core).await {
            tracing::warn!(error = %e, "hosts' acknowledged states not written; trying again at a later flush");
        }
    }
}

/// The last flush, as the server stops: a clean stop loses nothing noted.
pub async fn flush_at_stop(core: &Core) {
    if let Err(e) = flush(core).await {
        tracing::warn!(error = %e, "hosts' last-seen times not written at stop");
    }
    if let Err(e) = super::applied::flush(core).await {
        tracing::warn!(error = %e, "hosts' acknowledged states not written at stop");
    }
}

/// The newest last-seen time of a host whose record says `recorded`: the
/// stored entry's, this server's, or the record's.
pub async fn last_seen(core: &Core, id: &str, recorded: i64) -> Result<i64> {
    let stored = core.storage.get::<SeenEntry>(&seen_key(id)).await?;
    Ok(stored
        .map(|s| s.time)
        .into_iter()
        .chain(core.hosts_seen.known(id))
        .fold(recorded, i64::max))
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
    }
}
