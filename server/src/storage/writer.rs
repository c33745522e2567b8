//! Group commit. Every write goes to a writer, which applies all the writes
//! waiting at that moment in one transaction: under load one commit serves
//! many requests instead of one each. When nothing else waits, a write is
//! applied at once, alone. SQLite's writer is a thread (`sqlite.rs`);
//! PostgreSQL's are tasks (`postgres.rs`), which send a batch as a few
//! multi-row statements, one network round trip each rather than one per
//! write. This module holds what both share: the writes and their outcomes.
//!
//! The writes of one batch were all in flight together, so any order among
//! them is one their callers could have seen; the PostgreSQL batch applies
//! them by kind (guarding inserts, takes, deletes, inserts, puts). The ops
//! of one unit touch distinct keys, so that order never reorders a unit
//! against itself; a unit that names a key twice is applied alone, op by op.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::error::{Error, Result};

/// One write to the `entries` table.
pub enum Op {
    /// Stores if the key is free.
    Insert {
        key: String,
        value: Vec<u8>,
    },
    /// Stores, replacing any value.
    Put {
        key: String,
        value: Vec<u8>,
    },
    /// Stores, replacing any value, only while the key `beside` holds a
    /// value: bookkeeping about an entry (a host's last-seen time) that
    /// must not outlive it nor be written after it was deleted.
    PutBeside {
        key: String,
        value: Vec<u8>,
        beside: String,
    },
    Delete {
        key: String,
    },
    /// Deletes and returns the value.
    Take {
        key: String,
    },
    /// [`Op::Take`], and when there was a value, deletes in the same
    /// transaction the keys `also` names from it (its sealed bytes): what
    /// belongs to the taken entry alone, found without a read before the
    /// write.
    TakeWith {
        key: String,
        also: Dependents,
    },
    /// Replaces the value (or deletes it, with None) only if it is still
    /// `expected`: a compare-and-swap on the sealed bytes. Every write seals
    /// with a fresh random nonce, so equal bytes mean no write came between.
    Swap {
        key: String,
        expected: Vec<u8>,
        value: Option<Vec<u8>>,
    },
}

/// The keys that go with a taken entry, computed from its sealed value on
/// the writer (see [`Op::TakeWith`]); none when the value cannot be read
/// (the caller, opening the value it gets back, reports that).
pub type Dependents = Arc<dyn Fn(&[u8]) -> Vec<String> + Send + Sync>;

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Insert { key, .. } | Op::Put { key, .. } | Op::PutBeside { key, .. } => key,
            Op::Delete { key } | Op::Take { key } | Op::TakeWith { key, .. } => key,
            Op::Swap { key, .. } => key,
        }
    }
}

/// What one op did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Insert: it stored; Delete and Take: there was a value; Swap: the
    /// value was the expected one and was replaced; Put: always; PutBeside:
    /// the entry beside was there, so it stored.
    pub hit: bool,
    /// Take: the value it removed.
    pub value: Option<Vec<u8>>,
}

/// Ops applied together, all or none. With `guarded`, the first op is an
/// `Insert` or a `Swap` that decides: if the insert's key is taken, or the
/// swap's value is no longer the expected one, nothing is applied.
pub struct Unit {
    pub ops: Vec<Op>,
    pub guarded: bool,
}

impl Unit {
    pub fn has_swap(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, Op::Swap { .. }))
    }

    /// Whether the first op's outcome lets a guarded unit go on.
    pub fn guard_holds(&self, first: &Op, outcome: &Outcome) -> bool {
        !self.guarded || (matches!(first, Op::Insert { .. } | Op::Swap { .. }) && outcome.hit)
    }
}

pub struct Applied {
    /// False when the guard failed (nothing was written).
    pub applied: bool,
    /// One per op, in order.
    pub outcomes: Vec<Outcome>,
    /// An upkeep task's count (see [`Upkeep`]).
    pub count: u64,
}

impl Applied {
    pub fn empty() -> Applied {
        Applied {
            applied: true,
            outcomes: Vec::new(),
            count: 0,
        }
    }

    pub fn counted(count: u64) -> Applied {
        Applied {
            count,
            ..Applied::empty()
        }
    }

    pub fn new(unit: &Unit) -> Applied {
        Applied {
            applied: true,
            outcomes: vec![Outcome::default(); unit.ops.len()],
            count: 0,
        }
    }

    pub fn refused(unit: &Unit) -> Applied {
        Applied {
            applied: false,
            ..Applied::new(unit)
        }
    }
}

/// One line of the database copy of the audit log.
pub struct AuditLine {
    pub line: String,
    /// Its time (Unix seconds), by which retention removes it.
    pub at: i64,
}

/// Upkeep of the storage itself, queued with the writes so that on SQLite
/// it runs between two batches, in short steps, never holding requests up
/// for long.
#[derive(Clone, Copy, Debug)]
pub enum Upkeep {
    /// Deletes the audit copy's oldest lines, up to `limit` of them, as long
    /// as they are older than `before` (Unix seconds); the count is how many
    /// went. Lines are stored in time order, so a step that deletes fewer
    /// than `limit` has reached the first line to keep.
    PruneAudit { before: i64, limit: i64 },
    /// SQLite: gives up to `pages` free pages back to the file system
    /// (incremental vacuum); the count is how many free pages are left.
    Vacuum { pages: i64 },
    /// The lines of the audit batch stored as `last_id`, 0 when there is
    /// none: whether a batch whose commit went unanswered went in.
    AuditStored { last_id: i64 },
}

pub enum Job {
    Unit {
        unit: Unit,
        reply: oneshot::Sender<Result<Applied>>,
    },
    /// Lines for the database copy of the audit log, made into a batch.
    Audit {
        batch: super::audit_batch::Batch,
        reply: oneshot::Sender<Result<Applied>>,
    },
    Upkeep {
        task: Upkeep,
        reply: oneshot::Sender<Result<Applied>>,
    },
}

impl Job {
    pub fn answer(self, r: Result<Applied>) {
        let reply = match self {
            Job::Unit { reply, .. } | Job::Audit { reply, .. } | Job::Upkeep { reply, .. } => reply,
        };
        // The caller may have gone (a client that hung up): the write
        // stands all the same, as a committed one would.
        let _ = reply.send(r);
    }
}

/// Waiting writes the queue holds before senders wait for room.
pub const QUEUE: usize = 4096;
/// Jobs per transaction.
pub const MAX_UNITS: usize = 256;

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// A writer whose jobs `tx` delivers (SQLite's writer thread).
    pub fn new(tx: mpsc::Sender<Job>) -> Writer {
        Writer { tx }
    }

    /// Starts `tasks` writer tasks on a PostgreSQL pool.
    /// `origin` names this server in the changes it announces.
    pub fn postgres(pool: PgPool, tasks: usize, origin: String) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let origin: Arc<str> = origin.into();
        for _ in 0..tasks.max(1) {
            tokio::spawn(super::postgres::run(
                pool.clone(),
                rx.clone(),
                origin.clone(),
            ));
        }
        Writer { tx }
    }

    async fn send(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<Applied>>) -> Job,
    ) -> Result<Applied> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(job(reply))
            .await
            .map_err(|_| Error::internal("storage writer stopped"))?;
        rx.await
            .map_err(|_| Error::internal("storage writer stopped"))?
    }

    pub async fn apply(&self, unit: Unit) -> Result<Applied> {
        self.send(|reply| Job::Unit { unit, reply }).await
    }

    /// Stores audit lines as one batch (in order: the caller waits for
    /// each); the lines are compressed here, by the caller, not on the
    /// storage writer every request waits on.
    pub async fn audit(&self, lines: &[AuditLine]) -> Result<()> {
        let Some(batch) = super::audit_batch::Batch::of(lines)? else {
            return Ok(());
        };
        self.send(|reply| Job::Audit { batch, reply }).await?;
        Ok(())
    }

    /// Runs one step of upkeep; returns its count.
    pub async fn upkeep(&self, task: Upkeep) -> Result<u64> {
        Ok(self.send(|reply| Job::Upkeep { task, reply }).await?.count)
    }
}

/// [`Upkeep::PruneAudit`] for both backends ($1 limit, $2 before): the
/// oldest `limit` lines by id, of them those older than `before`. Looking
/// at the oldest lines only (the primary key's order) keeps each step
/// short whatever the table holds; a search for old lines by time would
/// scan it all once none are left.
pub const PRUNE_AUDIT: &str = "DELETE FROM audit_events WHERE id IN \
     (SELECT id FROM audit_events ORDER BY id LIMIT $1) AND at < $2";
