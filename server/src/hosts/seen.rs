//! When each host was last seen, kept apart from its sealed record.
//!
//! Every poll of a host's state counts as seeing it, and its last-seen time
//! moves at most once a [`SEEN_EVERY`]. With 100,000 hosts that is well
//! over a thousand times a second; each used to rewrite the host's whole
//! record (a read and a compare-and-swap transaction) and to make the next
//! poll read it again. Now a poll only notes the time here, in memory, and
//! [`flush`] writes the times noted since the last flush every
//! [`FLUSH_EVERY`], all in one transaction, each to its own entry beside
//! the host's record (`hosts/seen/<id>`), never to the record. A server that
//! stops abruptly loses at most that many seconds of last-seen times: a
//! host counts as out of sync only after [`super::SYNC_GRACE_SECS`].
//!
//! Readers (`GET hosts/<id>`, the web UI) take the newest of the record's
//! time (set at enrollment, and by servers before this), the stored entry
//! and this server's memory.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::state::{Core, State};

pub use super::seen_times::{SeenTimes, SEEN_EVERY};

/// How often the times noted are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// The entries written per transaction at most, so that one flush of a
/// large fleet does not hold a writer long.
const FLUSH_BATCH: usize = 1000;

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
    let mut due = core.hosts_seen.take_due();
    let mut written = 0;
    while !due.is_empty() {
        let rest = due.split_off(due.len().min(FLUSH_BATCH));
        let items: Vec<(String, SeenEntry, String)> = due
            .iter()
            .map(|(id, t)| (seen_key(id), SeenEntry { time: *t }, super::host_key(id)))
            .collect();
        match core.storage.put_beside(&items).await {
            Ok(stored) => {
                let gone: Vec<&str> = due
                    .iter()
                    .zip(&stored)
                    .filter(|(_, s)| !**s)
                    .map(|((id, _), _)| id.as_str())
                    .collect();
                core.hosts_seen.gone(&gone);
                let now_written = stored.len() - gone.len();
                written += now_written;
                core.metrics
                    .host_bookkeeping_by("seen_written", now_written as u64);
            }
            Err(e) => {
                core.hosts_seen.put_back(due);
                core.hosts_seen.put_back(rest);
                return Err(e);
            }
        }
        due = rest;
    }
    Ok(written)
}

/// Flushes every [`FLUSH_EVERY`] for as long as the server runs.
pub async fn flusher(core: State) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = flush(&core).await {
            tracing::warn!(error = %e, "hosts' last-seen times not written; trying again in {} s", FLUSH_EVERY.as_secs());
        }
    }
}

/// The last flush, as the server stops: a clean stop loses no time.
pub async fn flush_at_stop(core: &Core) {
    if let Err(e) = flush(core).await {
        tracing::warn!(error = %e, "hosts' last-seen times not written at stop");
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
