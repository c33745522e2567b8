//! The PostgreSQL backend: the writer tasks' batches (see `writer.rs` for
//! what a batch means) and the reads, on sqlx's PostgreSQL driver. Several
//! servers may share the database: every compare and every guard is
//! decided by the database itself, never by what one server remembers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::{PgPool, Postgres, Row, Transaction};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::audit_batch;
use super::writer::{Applied, Job, Op, Outcome, Unit, Upkeep, MAX_UNITS, PRUNE_AUDIT};
use crate::error::{Error, Result};

/// Rows per statement: well under PostgreSQL's limit on bound parameters.
const CHUNK: usize = 200;

pub async fn get(pool: &PgPool, key: &str) -> Result<Option<Vec<u8>>> {
    let row = sqlx::query("SELECT value FROM entries WHERE key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| r.try_get::<Vec<u8>, _>(0)).transpose()?)
}

/// Keys `from <= key < to` in byte order, at most `limit` (all when None).
pub async fn keys(
    pool: &PgPool,
    from: &str,
    to: &str,
    limit: Option<i64>,
    order: super::KeyOrder,
) -> Result<Vec<String>> {
    let rows = sqlx::query(match order {
        super::KeyOrder::Ascending => {
            "SELECT key FROM entries WHERE key >= $1 AND key < $2 ORDER BY key LIMIT $3"
        }
        super::KeyOrder::Descending => {
            "SELECT key FROM entries WHERE key >= $1 AND key < $2 ORDER BY key DESC LIMIT $3"
        }
    })
    .bind(from)
    .bind(to)
    // PostgreSQL has no "no limit" number; more rows than exist.
    .bind(limit.unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>(0).map_err(Error::from))
        .collect()
}

/// How many keys `from <= key < to` there are.
pub async fn count(pool: &PgPool, from: &str, to: &str) -> Result<u64> {
    let row = sqlx::query("SELECT COUNT(*) FROM entries WHERE key >= $1 AND key < $2")
        .bind(from)
        .bind(to)
        .fetch_one(pool)
        .await?;
    Ok(row.try_get::<i64, _>(0)?.max(0) as u64)
}

/// Lines after id `after` whose `at` is within `since..=until`, at most
/// `limit`, oldest first: those stored a row each before the copy went to
/// batches (`audit_events`, all with lower ids), then the batches'.
pub async fn audit_rows(
    pool: &PgPool,
    after: i64,
    limit: i64,
    since: i64,
    until: i64,
) -> Result<Vec<(i64, String)>> {
    let rows = sqlx::query(
        "SELECT id, line FROM audit_events WHERE id > $1 AND at >= $2 AND at <= $3 \
         ORDER BY id LIMIT $4",
    )
    .bind(after)
    .bind(since)
    .bind(until)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out = rows
        .iter()
        .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?)))
        .collect::<Result<Vec<_>>>()?;
    let want = usize::try_from(limit).unwrap_or(0);
    let mut from = after;
    while out.len() < want {
        // A few batches at a time: a page of lines is usually in one.
        let batches = sqlx::query(
            "SELECT last_id, base_id, body FROM audit_batches \
             WHERE last_id > $1 AND last_at >= $2 AND first_at <= $3 \
             ORDER BY last_id LIMIT 4",
        )
        .bind(from)
        .bind(since)
        .bind(until)
        .fetch_all(pool)
        .await?;
        let Some(last) = batches.last() else { break };
        from = last.try_get::<i64, _>(0)?;
        for b in &batches {
            let (base, body) = (b.try_get::<i64, _>(1)?, b.try_get::<Vec<u8>, _>(2)?);
            audit_batch::read_into(base, &body, after, (since, until), want, &mut out)?;
        }
    }
    Ok(out)
}

/// The database's size in bytes.
pub async fn size(pool: &PgPool) -> Result<u64> {
    let row = sqlx::query("SELECT CAST(pg_database_size(current_database()) AS BIGINT)")
        .fetch_one(pool)
        .await?;
    Ok(row.try_get::<i64, _>(0)?.max(0) as u64)
}

pub async fn run(pool: PgPool, rx: Arc<Mutex<mpsc::Receiver<Job>>>, origin: Arc<str>) {
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
        apply_jobs(&pool, jobs, &origin).await;
    }
}

fn has_duplicate_keys(unit: &Unit) -> bool {
    let mut seen = HashSet::new();
    unit.ops.iter().any(|op| !seen.insert(op.key()))
}

async fn apply_jobs(pool: &PgPool, jobs: Vec<Job>, origin: &str) {
    let mut together: Vec<(Unit, oneshot::Sender<Result<Applied>>)> = Vec::new();
    let mut alone = Vec::new();
    for job in jobs {
        match job {
            Job::Audit { batch, reply } => {
                let _ = reply.send(insert_audit(pool, &batch).await.map(|()| Applied::empty()));
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
        match batch(pool, &units, origin).await {
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
            None => one_by_one(pool, &unit, origin).await,
        };
        // A unit that waited out its turn for a connection says only that
        // the pool is busy: the next unit may well get one.
        if let Err(e) = &r {
            down = super::health::unavailable_cause(e)
                .filter(|c| matches!(c, super::health::Cause::Known(_)));
        }
        let _ = reply.send(r);
    }
}

/// The channel on which servers sharing the database announce the keys
/// they change.
pub const CHANGES: &str = "gatepass_changes";

/// Longest payload sent: PostgreSQL takes up to 8000 bytes.
const MAX_PAYLOAD: usize = 7900;

/// Announces, in the transaction (so only when it commits), that this
/// server changed these keys: the payload is `origin` and then each key
/// another server may hold in its cache, one per line, or `*` when they do
/// not fit, and `!` last when waiters are to wake. The other servers drop those keys from their caches and, when
/// any of them wakes waiters (`wakes_waiters`; `*` does), wake their
/// long-polls.
async fn announce<'a>(
    tx: &mut Transaction<'static, Postgres>,
    origin: &str,
    units: impl Iterator<Item = &'a Unit>,
) -> Result<()> {
    let mut payload = origin.to_string();
    let mut wakes = false;
    let mut cached = false;
    'units: for unit in units {
        for op in &unit.ops {
            let key = op.key();
            wakes |= super::wakes_waiters(key);
            if !super::cacheable(key) {
                continue;
            }
            cached = true;
            if payload.len() + 1 + key.len() > MAX_PAYLOAD {
                payload.truncate(origin.len());
                payload.push_str("\n*");
                break 'units;
            }
            payload.push('\n');
            payload.push_str(key);
        }
    }
    // Nothing another server caches nor anything that wakes (hosts'
    // bookkeeping): nothing to say.
    if !wakes && !cached {
        return Ok(());
    }
    // Keys nobody caches (leases, dynamic keys) are not
    // named, but their change must still wake the other servers' waiters:
    // `!` says so. Before it, a revocation reached another server's
    // long-polls only through their once-a-second look.
    if wakes && !payload.ends_with('*') {
        payload.push_str("\n!");
    }
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANGES)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// How long the listening connection may be quiet before it is asked to
/// answer, and how long it has to: a connection that hangs is given up
/// within their sum, and what was cached goes with it.
const LISTEN_QUIET: std::time::Duration = std::time::Duration::from_secs(2);
/// The listening connection's ping, which names its backend; the comment
/// tells the connection apart in `pg_stat_activity`.
const LISTENER_PING: &str = "/* gatepass: listening for changes */ SELECT pg_backend_pid()";
const PING_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Listens for other servers' announcements (see [`announce`]) for as long
/// as the storage they update lives: drops the keys named from the cache
/// and wakes the long-polls. When the connection is lost, everything
/// cached is dropped (announcements may have been missed) and it connects
/// again; meanwhile the cache's time limit and the long-polls' own
/// re-check bound how stale anything gets.
pub(super) async fn listen(
    pool: PgPool,
    origin: String,
    changes: std::sync::Weak<tokio::sync::watch::Sender<u64>>,
    cache: std::sync::Weak<super::ReadCache>,
) {
    use sqlx::postgres::PgListener;
    let mut failing = false;
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            // A lost connection is said at once (`Ok(None)`), never mended
            // behind this loop's back: a reconnect that a timeout cut
            // short, then made by the next call, would listen again
            // without the cache learning that announcements were missed.
            l.eager_reconnect(false);
            let backend: i32 = sqlx::query_scalar(LISTENER_PING).fetch_one(&mut l).await?;
            l.listen(CHANGES).await?;
            Ok::<_, sqlx::Error>((l, backend))
        }
        .await;
        let (mut listener, backend) = match listener {
            Ok(l) => l,
            // The server is stopping: nothing left to listen for.
            Err(_) if pool.is_closed() => return,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot listen for other servers' changes; trying again");
                    failing = true;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                if changes.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        if failing {
            tracing::info!("listening for other servers' changes again");
            failing = false;
        }
        let (Some(tx), Some(c)) = (changes.upgrade(), cache.upgrade()) else {
            return;
        };
        // From here on every change is heard of: what was cached before
        // (announcements may have been missed) goes, and the records kept
        // until announced changed may be cached again.
        c.hears_every_change(true);
        c.forget_all();
        tx.send_modify(|n| *n = n.wrapping_add(1));
        drop((tx, c));
        loop {
            let heard = tokio::time::timeout(LISTEN_QUIET, listener.try_recv()).await;
            let note = match heard {
                Ok(Ok(Some(n))) => n,
                Ok(Ok(None)) => break,
                Ok(Err(_)) if pool.is_closed() => return,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "lost the connection listening for other servers' changes");
                    break;
                }
                // Quiet for a while: the connection must show it still
                // answers. One that hangs without an error (a half-open
                // TCP connection, a stopped backend) would otherwise keep
                // this server trusting its cache while it hears nothing,
                // e.g. a token revoked on another server still served.
                // The ping also names its backend: the listener connects
                // again by itself when used without a connection, and one
                // that answers from another backend is not the one that
                // has been listening.
                Err(_) => {
                    let ping = sqlx::query_scalar::<_, i32>(LISTENER_PING).fetch_one(&mut listener);
                    match tokio::time::timeout(PING_WITHIN, ping).await {
                        Ok(Ok(pid)) if pid == backend => continue,
                        Ok(Ok(_)) => tracing::warn!(
                            "the connection listening for other servers' changes was replaced; announcements may have been missed"
                        ),
                        Ok(Err(_)) if pool.is_closed() => return,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "lost the connection listening for other servers' changes");
                        }
                        Err(_) => tracing::warn!(
                            "the connection listening for other servers' changes stopped answering; connecting again"
                        ),
                    }
                    break;
                }
            };
            let mut lines = note.payload().split('\n');
            if lines.next() == Some(origin.as_str()) {
                continue;
            }
            let (Some(tx), Some(c)) = (changes.upgrade(), cache.upgrade()) else {
                return;
            };
            let mut wake = false;
            for key in lines {
                if key == "*" {
                    c.forget_all();
                    wake = true;
                } else if key == "!" {
                    wake = true;
                } else {
                    c.changed(key);
                    wake |= super::wakes_waiters(key);
                }
            }
            if wake {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        // Until listening again, changes may go unheard: nothing is kept
        // that only an announcement would drop.
        if let Some(c) = cache.upgrade() {
            c.hears_every_change(false);
            c.forget_all();
        }
        // Waiters that trusted the announcements look again now, and every
        // second until the listener is back (`Storage::hears_every_change`).
        if let Some(tx) = changes.upgrade() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// Stores a batch of audit lines (`audit_batch`): one row, one
/// transaction. The ids are taken under a lock that every server's copier
/// takes for its insert, so they are consecutive within the batch and
/// follow the order in which batches commit: a reader paging by id never
/// finds a line appear behind its cursor.
async fn insert_audit(pool: &PgPool, batch: &audit_batch::Batch) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(AUDIT_IDS_LOCK)
        .execute(&mut *tx)
        .await?;
    // Under the lock nobody else moves the sequence: `setval` takes the
    // batch's ids in one step.
    let last_id: i64 = sqlx::query_scalar(
        "SELECT setval('audit_events_id_seq', nextval('audit_events_id_seq') + $1 - 1)",
    )
    .bind(batch.lines)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO audit_batches (last_id, base_id, lines, first_at, last_at, body) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(last_id)
    .bind(last_id - batch.lines + 1)
    .bind(batch.lines as i32)
    .bind(batch.first_at)
    .bind(batch.last_at)
    .bind(&batch.body)
    .execute(&mut *tx)
    .await?;
    match tx.commit().await {
        Ok(()) => Ok(()),
        // The server's refusal of the commit: it rolled the batch back.
        Err(e @ sqlx::Error::Database(_)) => Err(e.into()),
        // The answer lost on the way: the batch may be in. Sent again as
        // it is, its lines would be there twice; the copier looks for
        // `last_id` first (`Upkeep::AuditStored`).
        Err(e) => Err(Error::AuditUnconfirmed {
            last_id,
            cause: e.to_string(),
        }),
    }
}

/// The advisory lock the copiers of all servers take to number their
/// batches ("gpaudit" in ASCII).
const AUDIT_IDS_LOCK: i64 = 0x0067_7061_7564_6974;

/// One step of the copy's retention: of the oldest `limit` lines by id,
/// those older than `before` (as [`PRUNE_AUDIT`] does with the lines
/// stored a row each, which come first). A batch whose lines are all older
/// goes at once; one holding newer lines too is written again without the
/// older ones, their ids kept. Returns the lines deleted.
async fn prune_audit(pool: &PgPool, before: i64, limit: i64) -> Result<u64> {
    let mut gone = sqlx::query(PRUNE_AUDIT)
        .bind(limit)
        .bind(before)
        .execute(pool)
        .await?
        .rows_affected();
    let mut seen: i64 = 0;
    let mut from = i64::MIN;
    while seen < limit {
        let Some(b) = sqlx::query(
            "SELECT last_id, lines, first_at, last_at, base_id FROM audit_batches \
             WHERE last_id > $1 ORDER BY last_id LIMIT 1",
        )
        .bind(from)
        .fetch_optional(pool)
        .await?
        else {
            break;
        };
        let last_id: i64 = b.try_get(0)?;
        let lines: i32 = b.try_get(1)?;
        let (first_at, last_at): (i64, i64) = (b.try_get(2)?, b.try_get(3)?);
        let base_id: i64 = b.try_get(4)?;
        from = last_id;
        seen += i64::from(lines);
        // Each change only if the batch is still as read (another server's
        // retention may have rewritten it meanwhile).
        if last_at < before {
            let done = sqlx::query("DELETE FROM audit_batches WHERE last_id = $1 AND lines = $2")
                .bind(last_id)
                .bind(lines)
                .execute(pool)
                .await?
                .rows_affected();
            if done == 1 {
                gone += lines as u64;
            }
        } else if first_at < before {
            let body: Vec<u8> =
                sqlx::query_scalar("SELECT body FROM audit_batches WHERE last_id = $1")
                    .bind(last_id)
                    .fetch_one(pool)
                    .await?;
            let Some(r) = audit_batch::without_older(base_id, &body, before)? else {
                continue;
            };
            let done = sqlx::query(
                "UPDATE audit_batches SET lines = $3, first_at = $4, body = $5 \
                 WHERE last_id = $1 AND lines = $2",
            )
            .bind(last_id)
            .bind(lines)
            .bind(r.lines as i32)
            .bind(r.first_at)
            .bind(r.body)
            .execute(pool)
            .await?
            .rows_affected();
            if done == 1 {
                gone += r.gone;
            }
        }
    }
    Ok(gone)
}

/// PostgreSQL's upkeep: its own autovacuum makes deleted rows' space
/// reusable, so there is nothing to give back here.
async fn upkeep(pool: &PgPool, task: Upkeep) -> Result<u64> {
    match task {
        Upkeep::PruneAudit { before, limit } => prune_audit(pool, before, limit).await,
        Upkeep::Vacuum { .. } => Ok(0),
        Upkeep::AuditStored { last_id } => {
            let lines: Option<i32> =
                sqlx::query_scalar("SELECT lines FROM audit_batches WHERE last_id = $1")
                    .bind(last_id)
                    .fetch_optional(pool)
                    .await?;
            Ok(lines.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
        }
    }
}

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

/// Stores each row `(key, value, beside)` whose `beside` key holds a value
/// (see `Op::PutBeside`); returns the keys it stored. The entry beside is
/// locked (`FOR KEY SHARE`) until the transaction ends: a delete of it
/// waits, and one that came first leaves nothing to store beside, so no
/// row outlives its entry.
async fn upsert_beside(
    tx: &mut Transaction<'static, Postgres>,
    rows: &[(&str, &[u8], &str)],
) -> Result<HashSet<String>> {
    let mut stored = HashSet::new();
    for chunk in rows.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO entries (key, value) SELECT v.key, v.value \
             FROM (VALUES {}) AS v(key, value, beside) \
             JOIN entries e ON e.key = v.beside FOR KEY SHARE OF e \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value RETURNING key",
            values(chunk.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for (k, v, b) in chunk {
            q = q.bind(*k).bind(*v).bind(*b);
        }
        for row in q.fetch_all(&mut **tx).await? {
            stored.insert(row.try_get::<String, _>(0)?);
        }
    }
    Ok(stored)
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

async fn batch(pool: &PgPool, units: &[&Unit], origin: &str) -> Result<Vec<Applied>> {
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
    // Puts beside another entry: likewise, the last one of a key wins.
    let mut besides: HashMap<&str, (&[u8], &str)> = HashMap::new();
    let mut beside_at: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    let mut beside_order: Vec<&str> = Vec::new();
    for (u, unit) in units.iter().enumerate() {
        if !out[u].applied {
            continue;
        }
        let skip = usize::from(unit.guarded);
        for (i, op) in unit.ops.iter().enumerate().skip(skip) {
            match op {
                Op::Take { key } | Op::TakeWith { key, .. } => takes.claim(key, (u, i)),
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
                Op::PutBeside { key, value, beside } => {
                    if besides.insert(key, (value, beside)).is_none() {
                        beside_order.push(key);
                    }
                    beside_at.entry(key).or_default().push((u, i));
                }
                Op::Swap { .. } => {
                    return Err(Error::internal("a swap reached a batched write"));
                }
            }
        }
    }
    if !takes.keys.is_empty() {
        let mut gone = delete_returning(&mut tx, &takes.keys).await?;
        // What the taken entries name, deleted with them (Op::TakeWith).
        let mut dependents: Vec<String> = Vec::new();
        for (key, &(u, i)) in &takes.first {
            if let Some(v) = gone.remove(*key) {
                if let Some(Op::TakeWith { also, .. }) = units[u].ops.get(i) {
                    dependents.extend(also(&v));
                }
                out[u].outcomes[i] = Outcome {
                    hit: true,
                    value: Some(v),
                };
            }
        }
        if !dependents.is_empty() {
            let keys: Vec<&str> = dependents.iter().map(String::as_str).collect();
            delete_returning(&mut tx, &keys).await?;
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
    if !beside_order.is_empty() {
        let rows: Vec<(&str, &[u8], &str)> = beside_order
            .iter()
            .map(|k| (*k, besides[k].0, besides[k].1))
            .collect();
        let stored = upsert_beside(&mut tx, &rows).await?;
        for (key, at) in &beside_at {
            for &(u, i) in at {
                out[u].outcomes[i].hit = stored.contains(*key);
            }
        }
    }
    announce(&mut tx, origin, units.iter().copied()).await?;
    tx.commit().await?;
    Ok(out)
}

/// Applies one unit op by op in its own transaction: the exact meaning of
/// a unit, for units the batch cannot take and after a batch failed.
async fn one_by_one(pool: &PgPool, unit: &Unit, origin: &str) -> Result<Applied> {
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
            Op::PutBeside { key, value, beside } => {
                let stored = upsert_beside(
                    &mut tx,
                    &[(key.as_str(), value.as_slice(), beside.as_str())],
                )
                .await?;
                Outcome {
                    hit: !stored.is_empty(),
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
            Op::Delete { key } | Op::Take { key } | Op::TakeWith { key, .. } => {
                let mut gone = delete_returning(&mut tx, &[key.as_str()]).await?;
                let value = gone.remove(key.as_str());
                if let (Some(v), Op::TakeWith { also, .. }) = (&value, op) {
                    let dependents = also(v);
                    let keys: Vec<&str> = dependents.iter().map(String::as_str).collect();
                    if !keys.is_empty() {
                        delete_returning(&mut tx, &keys).await?;
                    }
                }
                Outcome {
                    hit: value.is_some(),
                    value: if matches!(op, Op::Take { .. } | Op::TakeWith { .. }) {
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
    announce(&mut tx, origin, std::iter::once(unit)).await?;
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
