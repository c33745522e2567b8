//! Which state each host last acknowledged applying, kept beside its
//! record (`hosts/applied/<id>`).
//!
//! hostd acknowledges every state it applies, mostly with its next poll
//! (`applied=<index>`): a change reaching 100,000 hosts brings 100,000
//! acknowledgements within seconds. Each stored before its poll went on
//! was a write of its own, and at that scale half of what a change cost
//! the database and a fifth of what it cost the servers. A poll's
//! acknowledgement is now noted in memory and written with the others by
//! a later flush, once they stop pouring in (see [`Pace`]). This server
//! shows it at once; other servers once it is written.
//!
//! A server that stops abruptly loses what it had not written. hostd says
//! its applied state again with the poll that follows a failed one, and
//! the poll that was waiting on a server that stopped is such a failure:
//! what was lost is written again as soon as the host is back.
//!
//! `hosts/self/ack`, sent when there is more to say (dynamic keys
//! installed, files repaired), is stored before it is answered.

pub use super::notes::{AppliedEntry, AppliedNotes};
use super::Host;
use crate::error::{Error, Result};
use crate::state::Core;

pub fn applied_key(id: &str) -> String {
    format!("hosts/applied/{id}")
}

/// A poll's acknowledgement: noted for the next flush unless this server
/// already knows the host applied that index. Nothing is read or written.
pub fn note(core: &Core, host: &Host, index: u64, now: i64) {
    let entry = AppliedEntry { index, time: now };
    if core.hosts_applied.note_if(&host.id, entry, |known| {
        known.map(|k| k.index) != Some(index)
    }) {
        core.metrics.host_bookkeeping("applied_noted");
    }
}

/// Stores an acknowledgement before the caller answers (`hosts/self/ack`);
/// refused when the host is no longer enrolled.
pub async fn store(core: &Core, id: &str, index: u64, now: i64) -> Result<()> {
    let entry = AppliedEntry { index, time: now };
    // Held while storing, so that a flush which took an older note of this
    // host cannot write it over this one.
    let _flushing = core.hosts_applied.flushing.lock().await;
    core.hosts_applied.writing(id, entry);
    let stored = core
        .storage
        .put_beside(&[(applied_key(id), entry, super::host_key(id))])
        .await
        .inspect_err(|_| core.hosts_applied.not_written(id, &entry))?;
    if !stored.first().copied().unwrap_or(false) {
        core.hosts_applied.forget(id);
        return Err(Error::invalid("this host is no longer enrolled"));
    }
    core.metrics.host_bookkeeping("applied_written");
    Ok(())
}

/// Flush intervals, at most, that noted acknowledgements wait while more
/// keep coming (see [`Pace`]).
pub const WAIT_AT_MOST: u32 = 10;

/// When the acknowledgements noted are written. A change reaching a fleet
/// brings every host's acknowledgement within seconds, and writing them
/// took as much of the database's time as everything else the change
/// cost, while the change was still reaching hosts. The state reaching
/// hosts comes first: acknowledgements wait for the first flush after
/// which a whole flush interval brought no new one, or for
/// [`WAIT_AT_MOST`] flushes, whichever comes first. This server shows
/// them at once all the same; other servers once they are written.
#[derive(Debug, Default)]
pub struct Pace {
    noted: u64,
    waited: u32,
}

impl Pace {
    /// Asked once per flush interval with the notes' counts (how many
    /// were ever noted, how many are due): true when the due ones are to
    /// be written now.
    pub fn write_now(&mut self, noted: u64, due: usize) -> bool {
        let quiet = noted == self.noted;
        self.noted = noted;
        if due == 0 {
            self.waited = 0;
            return false;
        }
        self.waited += 1;
        if quiet || self.waited >= WAIT_AT_MOST {
            self.waited = 0;
            return true;
        }
        false
    }
}

/// How many acknowledgements were ever noted, and how many are due.
pub fn counts(core: &Core) -> (u64, usize) {
    core.hosts_applied.counts()
}

/// Writes the acknowledgements noted since the last flush, each only while
/// its host is still enrolled; returns how many were written.
pub async fn flush(core: &Core) -> Result<usize> {
    let written = super::seen::write_due(core, &core.hosts_applied, applied_key, |e| *e).await?;
    core.metrics
        .host_bookkeeping_by("applied_written", written as u64);
    Ok(written)
}

/// The state a host last acknowledged: the newer of the stored entry and
/// this server's note, or what its record says (servers before these
/// entries stored it there).
pub async fn last(core: &Core, host: &Host) -> Result<Option<u64>> {
    let stored = core
        .storage
        .get::<AppliedEntry>(&applied_key(&host.id))
        .await?;
    let newest = stored
        .into_iter()
        .chain(core.hosts_applied.known(&host.id))
        .max_by_key(|e| e.time);
    Ok(newest.map(|e| e.index).or(host.applied_index))
}

#[cfg(test)]
mod tests {
    use super::{Pace, WAIT_AT_MOST};

    #[test]
    fn acknowledgements_wait_while_more_keep_coming_and_no_longer_than_the_bound() {
        let mut pace = Pace::default();
        assert!(!pace.write_now(0, 0), "nothing due");
        // One acknowledgement: written at the first flush after a quiet
        // interval.
        assert!(!pace.write_now(1, 1), "one came in this interval");
        assert!(pace.write_now(1, 1), "none came since");
        // A wave: more in every interval, written at the bound.
        let mut noted = 1;
        for _ in 1..WAIT_AT_MOST {
            noted += 1000;
            assert!(!pace.write_now(noted, 5000), "still coming");
        }
        noted += 1000;
        assert!(pace.write_now(noted, 5000), "waited the most it may");
        // Its tail: written once an interval brings none.
        noted += 3;
        assert!(!pace.write_now(noted, 3));
        assert!(pace.write_now(noted, 3));
        // A failed write leaves them due: tried again at the next quiet
        // flush.
        assert!(pace.write_now(noted, 3));
        assert!(!pace.write_now(noted, 0));
    }
}
