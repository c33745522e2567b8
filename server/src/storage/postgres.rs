//! The PostgreSQL backend: the writer tasks' batches (see `writer.rs` for
//! what a batch means) and the reads, on sqlx's PostgreSQL driver. Several
//! servers may share the database: every compare and every guard is
//! decided by the database itself, never by what one server remembers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::postgres::PgPoolCopyExt;
use sqlx::{PgPool, Postgres, Row, Transaction};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::writer::{Applied, AuditLine, Job, Op, Outcome, Unit, Upkeep, MAX_UNITS, PRUNE_AUDIT};
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

/// Rows after id `after` whose `at` is within `since..=until`.
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
    rows.iter()
        .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?)))
        .collect()
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
    // Keys nobody caches (revocations, leases, dynamic keys) are not
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
            l.listen(CHANGES).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        let mut listener = match listener {
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
            let note = match listener.try_recv().await {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(_) if pool.is_closed() => return,
                Err(e) => {
                    tracing::warn!(error = %e, "lost the connection listening for other servers' changes");
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

/// Copies audit lines to the database with one `COPY … FROM STDIN` in
/// PostgreSQL's binary format: one statement (and so one transaction) per
/// batch, rows kept in their order, and no statement for the database to
/// parse and plan per batch as a many-row `INSERT` needs.
async fn insert_audit(pool: &PgPool, lines: &[AuditLine]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let data = copy_rows(lines)?;
    let mut copy = pool.copy_in_raw(COPY_AUDIT).await?;
    if let Err(e) = copy.send(data).await {
        // The connection is told, so that it goes back to the pool usable.
        let _ = copy.abort("audit batch not sent").await;
        return Err(e.into());
    }
    copy.finish().await?;
    Ok(())
}

const COPY_AUDIT: &str = "COPY audit_events (line, at) FROM STDIN (FORMAT binary)";

/// The rows of `lines` in COPY's binary format: a signature and two empty
/// header words, per row its field count and each field as its length and
/// bytes (`line` as UTF-8 text, `at` as an 8-byte big-endian integer), and
/// -1 at the end.
fn copy_rows(lines: &[AuditLine]) -> Result<Vec<u8>> {
    let size = lines.iter().map(|l| l.line.len() + 18).sum::<usize>();
    let mut out = Vec::with_capacity(COPY_SIGNATURE.len() + 8 + size + 2);
    out.extend_from_slice(COPY_SIGNATURE);
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    for l in lines {
        let len = i32::try_from(l.line.len())
            .map_err(|_| Error::internal("audit line too long for the database's copy"))?;
        out.extend_from_slice(&2i16.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(l.line.as_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&l.at.to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(out)
}

const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

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

    /// PostgreSQL's binary COPY format, as its documentation lays it out:
    /// the signature, flags and header extension, then per row the field
    /// count and each field's length and bytes, and -1 at the end.
    #[test]
    fn audit_lines_are_copied_in_postgresqls_binary_format() {
        let lines = [
            AuditLine {
                line: "{\"a\":\"é\"}".into(),
                at: 1_700_000_000,
            },
            AuditLine {
                line: String::new(),
                at: -1,
            },
        ];
        let mut want = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        want.extend_from_slice(&[0, 2, 0, 0, 0, 10]);
        want.extend_from_slice("{\"a\":\"é\"}".as_bytes());
        want.extend_from_slice(&[0, 0, 0, 8]);
        want.extend_from_slice(&[0, 0, 0, 0, 0x65, 0x53, 0xf1, 0x00]);
        want.extend_from_slice(&[0, 2, 0, 0, 0, 0, 0, 0, 0, 8]);
        want.extend_from_slice(&[0xff; 8]);
        want.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(copy_rows(&lines).unwrap(), want);
    }

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
