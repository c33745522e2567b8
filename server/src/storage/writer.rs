//! Group commit. Every write goes to a writer, which applies all the writes
//! waiting at that moment in one transaction: under load one commit serves
//! many requests instead of one each. When nothing else waits, a write is
//! applied at once, alone. SQLite's writer is a thread (`sqlite.rs`);
//! PostgreSQL's are tasks here, which send a batch as a few multi-row
//! statements, one network round trip each rather than one per write.
//!
//! The writes of one batch were all in flight together, so any order among
//! them is one their callers could have seen; the PostgreSQL batch applies
//! them by kind (guarding inserts, takes, deletes, inserts, puts). The ops
//! of one unit touch distinct keys, so that order never reorders a unit
//! against itself; a unit that names a key twice is applied alone, op by op.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::{PgPool, Postgres, Row, Transaction};
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
    Delete {
        key: String,
    },
    /// Deletes and returns the value.
    Take {
        key: String,
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

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Insert { key, .. } | Op::Put { key, .. } => key,
            Op::Delete { key } | Op::Take { key } => key,
            Op::Swap { key, .. } => key,
        }
    }
}

/// What one op did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Insert: it stored; Delete and Take: there was a value; Swap: the
    /// value was the expected one and was replaced; Put: always.
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
}

pub enum Job {
    Unit {
        unit: Unit,
        reply: oneshot::Sender<Result<Applied>>,
    },
    /// Lines for the database copy of the audit log.
    Audit {
        lines: Vec<AuditLine>,
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
/// Rows per statement: well under SQLite's and PostgreSQL's limits on
/// bound parameters.
const CHUNK: usize = 200;

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
    pub fn postgres(pool: PgPool, tasks: usize) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..tasks.max(1) {
            tokio::spawn(run(pool.clone(), rx.clone()));
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

    /// Stores audit lines (in order: the caller waits for each batch).
    pub async fn audit(&self, lines: Vec<AuditLine>) -> Result<()> {
        self.send(|reply| Job::Audit { lines, reply }).await?;
        Ok(())
    }

    /// Runs one step of upkeep; returns its count.
    pub async fn upkeep(&self, task: Upkeep) -> Result<u64> {
        Ok(self.send(|reply| Job::Upkeep { task, reply }).await?.count)
    }
}

async fn run(pool: PgPool, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let mut jobs = Vec::new();
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            jobs.push(first);
            while jobs.len() < MAX_UNITS {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
        }
        apply_jobs(&pool, jobs).await;
    }
}

fn has_duplicate_keys(unit: &Unit) -> bool {
    let mut seen = HashSet::new();
    unit.ops.iter().any(|op| !seen.insert(op.key()))
}

async fn apply_jobs(pool: &PgPool, jobs: Vec<Job>) {
    let mut together: Vec<(Unit, oneshot::Sender<Result<Applied>>)> = Vec::new();
    let mut alone = Vec::new();
    for job in jobs {
        match job {
            Job::Audit { lines, reply } => {
                let _ = reply.send(insert_audit(pool, &lines).await.map(|()| Applied::empty()));
            }
            Job::Upkeep { task, reply } => {
                let _ = reply.send(upkeep(pool, task).await.map(Applied::counted));
            }
            Job::Unit { unit, reply } => {
                // A swap compares against the value as it is when the swap
                // runs; the batch applies ops by kind, which could run it
                // before or after another unit's put of the same key in
                // ways its caller never saw. Swaps are rare (consumable
                // counts), so their units get a transaction of their own.
                if has_duplicate_keys(&unit) || unit.ops.is_empty() || unit.has_swap() {
                    alone.push((unit, reply));
                } else {
                    together.push((unit, reply));
                }
            }
        }
    }
    if !together.is_empty() {
        let units: Vec<&Unit> = together.iter().map(|(u, _)| u).collect();
        match batch(pool, &units).await {
            Ok(results) => {
                for ((_, reply), r) in together.into_iter().zip(results) {
                    let _ = reply.send(Ok(r));
                }
            }
            Err(e) if together.len() == 1 => {
                if let Some((_, reply)) = together.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
            }
            Err(e) if super::health::unavailable_cause(&e).is_some() => {
                // The database is down or unreachable: every unit would
                // fail the same way, each after waiting out the pool's
                // timeout in turn.
                if let Some(cause) = super::health::unavailable_cause(&e) {
                    for (_, reply) in together {
                        let _ = reply.send(Err(cause.to_error()));
                    }
                }
            }
            Err(e) => {
                // One unit's failure (or a deadlock with another server) must
                // not fail the others: the batch was rolled back, so each is
                // tried again on its own.
                tracing::warn!(error = %e, units = together.len(), "batched write failed; applying its units one by one");
                alone.extend(together);
            }
        }
    }
    let mut down = None;
    for (unit, reply) in alone {
        // Once the database is found down, the rest fail the same way at
        // once rather than each after the pool's timeout.
        let r = match &down {
            Some(cause) => Err(super::health::Cause::to_error(cause)),
            None => one_by_one(pool, &unit).await,
        };
        if let Err(e) = &r {
            down = super::health::unavailable_cause(e);
        }
        let _ = reply.send(r);
    }
}

async fn insert_audit(pool: &PgPool, lines: &[AuditLine]) -> Result<()> {
    for chunk in lines.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO audit_events (line, at) VALUES {}",
            values(chunk.len(), 2)
        );
        let mut q = sqlx::query(&sql);
        for l in chunk {
            q = q.bind(l.line.as_str()).bind(l.at);
        }
        q.execute(pool).await?;
    }
    Ok(())
}

/// PostgreSQL's upkeep: its own autovacuum makes deleted rows' space
/// reusable, so there is nothing to give back here.
async fn upkeep(pool: &PgPool, task: Upkeep) -> Result<u64> {
    match task {
        Upkeep::PruneAudit { before, limit } => Ok(sqlx::query(PRUNE_AUDIT)
            .bind(limit)
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected()),
        Upkeep::Vacuum { .. } => Ok(0),
    }
}

/// [`Upkeep::PruneAudit`] for both backends ($1 limit, $2 before): the
/// oldest `limit` lines by id, of them those older than `before`. Looking
/// at the oldest lines only (the primary key's order) keeps each step
/// short whatever the table holds; a search for old lines by time would
/// scan it all once none are left.
pub const PRUNE_AUDIT: &str = "DELETE FROM audit_events WHERE id IN \
     (SELECT id FROM audit_events ORDER BY id LIMIT $1) AND at < $2";

/// `(` `$1,$2` `),(` … numbered from 1, `cols` per row.
fn values(rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push(',');
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push(',');
            }
            s.push('$');
            s.push_str(&(r * cols + c + 1).to_string());
        }
        s.push(')');
    }
    s
}

/// `$1,$2,…,$n`.
fn list(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Inserts the rows whose keys are free; returns the keys it stored.
async fn insert_free(
    tx: &mut Transaction<'static, Postgres>,
    rows: &[(&str, &[u8])],
) -> Result<HashSet<String>> {
    let mut stored = HashSet::new();
    for chunk in rows.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO entries (key, value) VALUES {} ON CONFLICT (key) DO NOTHING RETURNING key",
            values(chunk.len(), 2)
        );
        let mut q = sqlx::query(&sql);
        for (k, v) in chunk {
            q = q.bind(*k).bind(*v);
        }
        for row in q.fetch_all(&mut **tx).await? {
            stored.insert(row.try_get::<String, _>(0)?);
        }
    }
    Ok(stored)
}

/// Deletes the keys; returns the deleted keys with their values.
async fn delete_returning(
    tx: &mut Transaction<'static, Postgres>,
    keys: &[&str],
) -> Result<HashMap<String, Vec<u8>>> {
    let mut gone = HashMap::new();
    for chunk in keys.chunks(CHUNK) {
        let sql = format!(
            "DELETE FROM entries WHERE key IN ({}) RETURNING key, value",
            list(chunk.len())
        );
        let mut q = sqlx::query(&sql);
        for k in chunk {
            q = q.bind(*k);
        }
        for row in q.fetch_all(&mut **tx).await? {
            gone.insert(row.try_get::<String, _>(0)?, row.try_get::<Vec<u8>, _>(1)?);
        }
    }
    Ok(gone)
}

async fn upsert(tx: &mut Transaction<'static, Postgres>, rows: &[(&str, &[u8])]) -> Result<()> {
    for chunk in rows.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO entries (key, value) VALUES {} \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            values(chunk.len(), 2)
        );
        let mut q = sqlx::query(&sql);
        for (k, v) in chunk {
            q = q.bind(*k).bind(*v);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// (unit, op) positions of the ops of one kind, first claimant of each key
/// first; later claimants of a key already claimed in this phase find it
/// gone (deletes, takes) or taken (inserts).
struct Claims<'a> {
    first: HashMap<&'a str, (usize, usize)>,
    keys: Vec<&'a str>,
}

impl<'a> Claims<'a> {
    fn new() -> Claims<'a> {
        Claims {
            first: HashMap::new(),
            keys: Vec::new(),
        }
    }

    fn claim(&mut self, key: &'a str, at: (usize, usize)) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.first.entry(key) {
            e.insert(at);
            self.keys.push(key);
        }
    }
}

async fn batch(pool: &PgPool, units: &[&Unit]) -> Result<Vec<Applied>> {
    let mut out: Vec<Applied> = units.iter().map(|u| Applied::new(u)).collect();
    let mut tx = pool.begin().await?;

    // 1. Guards decide which units apply at all.
    let mut guards = Claims::new();
    let mut guard_values: HashMap<&str, &[u8]> = HashMap::new();
    for (u, unit) in units.iter().enumerate() {
        if !unit.guarded {
            continue;
        }
        match unit.ops.first() {
            Some(Op::Insert { key, value }) if !guards.first.contains_key(key.as_str()) => {
                guards.claim(key, (u, 0));
                guard_values.insert(key, value);
            }
            // A second unit guarding the same key loses to the first; a guard
            // that is not an insert guards nothing and is refused.
            _ => out[u] = Applied::refused(unit),
        }
    }
    if !guards.keys.is_empty() {
        let rows: Vec<(&str, &[u8])> = guards.keys.iter().map(|k| (*k, guard_values[k])).collect();
        let stored = insert_free(&mut tx, &rows).await?;
        for (key, &(u, _)) in &guards.first {
            if stored.contains(*key) {
                out[u].outcomes[0].hit = true;
            } else {
                out[u] = Applied::refused(units[u]);
            }
        }
    }

    // 2–5. The other ops of the units that apply, by kind.
    let mut takes = Claims::new();
    let mut deletes = Claims::new();
    let mut inserts = Claims::new();
    let mut inserts_v: HashMap<&str, &[u8]> = HashMap::new();
    // Puts: the last one of a key wins, as if applied in order.
    let mut puts: HashMap<&str, &[u8]> = HashMap::new();
    let mut put_order: Vec<&str> = Vec::new();
    for (u, unit) in units.iter().enumerate() {
        if !out[u].applied {
            continue;
        }
        let skip = usize::from(unit.guarded);
        for (i, op) in unit.ops.iter().enumerate().skip(skip) {
            match op {
                Op::Take { key } => takes.claim(key, (u, i)),
                Op::Delete { key } => deletes.claim(key, (u, i)),
                Op::Insert { key, value } => {
                    inserts.claim(key, (u, i));
                    inserts_v.entry(key).or_insert(value);
                }
                Op::Put { key, value } => {
                    if puts.insert(key, value).is_none() {
                        put_order.push(key);
                    }
                    out[u].outcomes[i].hit = true;
                }
                Op::Swap { .. } => {
                    return Err(Error::internal("a swap reached a batched write"));
                }
            }
        }
    }
    if !takes.keys.is_empty() {
        let mut gone = delete_returning(&mut tx, &takes.keys).await?;
        for (key, &(u, i)) in &takes.first {
            if let Some(v) = gone.remove(*key) {
                out[u].outcomes[i] = Outcome {
                    hit: true,
                    value: Some(v),
                };
            }
        }
    }
    if !deletes.keys.is_empty() {
        let gone = delete_returning(&mut tx, &deletes.keys).await?;
        for (key, &(u, i)) in &deletes.first {
            out[u].outcomes[i].hit = gone.contains_key(*key);
        }
    }
    if !inserts.keys.is_empty() {
        let rows: Vec<(&str, &[u8])> = inserts.keys.iter().map(|k| (*k, inserts_v[k])).collect();
        let stored = insert_free(&mut tx, &rows).await?;
        for (key, &(u, i)) in &inserts.first {
            out[u].outcomes[i].hit = stored.contains(*key);
        }
    }
    if !put_order.is_empty() {
        let rows: Vec<(&str, &[u8])> = put_order.iter().map(|k| (*k, puts[k])).collect();
        upsert(&mut tx, &rows).await?;
    }
    tx.commit().await?;
    Ok(out)
}

/// Applies one unit op by op in its own transaction: the exact meaning of
/// a unit, for units the batch cannot take and after a batch failed.
async fn one_by_one(pool: &PgPool, unit: &Unit) -> Result<Applied> {
    let mut out = Applied::new(unit);
    let mut tx = pool.begin().await?;
    for (i, op) in unit.ops.iter().enumerate() {
        let outcome = match op {
            Op::Insert { key, value } => {
                let done = sqlx::query(
                    "INSERT INTO entries (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                )
                .bind(key.as_str())
                .bind(value.as_slice())
                .execute(&mut *tx)
                .await?;
                Outcome {
                    hit: done.rows_affected() == 1,
                    value: None,
                }
            }
            Op::Put { key, value } => {
                upsert(&mut tx, &[(key.as_str(), value.as_slice())]).await?;
                Outcome {
                    hit: true,
                    value: None,
                }
            }
            Op::Swap {
                key,
                expected,
                value,
            } => {
                // Under READ COMMITTED a concurrent writer's row lock makes
                // this wait, then the WHERE is checked again against the row
                // that writer committed: the compare is exact across servers.
                let done = match value {
                    Some(v) => {
                        sqlx::query("UPDATE entries SET value = $1 WHERE key = $2 AND value = $3")
                            .bind(v.as_slice())
                            .bind(key.as_str())
                            .bind(expected.as_slice())
                            .execute(&mut *tx)
                            .await?
                    }
                    None => {
                        sqlx::query("DELETE FROM entries WHERE key = $1 AND value = $2")
                            .bind(key.as_str())
                            .bind(expected.as_slice())
                            .execute(&mut *tx)
                            .await?
                    }
                };
                Outcome {
                    hit: done.rows_affected() == 1,
                    value: None,
                }
            }
            Op::Delete { key } | Op::Take { key } => {
                let mut gone = delete_returning(&mut tx, &[key.as_str()]).await?;
                let value = gone.remove(key.as_str());
                Outcome {
                    hit: value.is_some(),
                    value: if matches!(op, Op::Take { .. }) {
                        value
                    } else {
                        None
                    },
                }
            }
        };
        if i == 0 && !unit.guard_holds(op, &outcome) {
            tx.rollback().await?;
            return Ok(Applied::refused(unit));
        }
        out.outcomes[i] = outcome;
    }
    tx.commit().await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(values(2, 2), "($1,$2),($3,$4)");
        assert_eq!(values(1, 1), "($1)");
        assert_eq!(list(3), "$1,$2,$3");
    }

    #[test]
    fn units_naming_a_key_twice_are_applied_alone() {
        let dup = Unit {
            ops: vec![
                Op::Delete { key: "a".into() },
                Op::Put {
                    key: "a".into(),
                    value: vec![],
                },
            ],
            guarded: false,
        };
        assert!(has_duplicate_keys(&dup));
        let distinct = Unit {
            ops: vec![Op::Delete { key: "a".into() }, Op::Take { key: "b".into() }],
            guarded: false,
        };
        assert!(!has_duplicate_keys(&distinct));
    }
}
