//! Storage: one sealed key/value table behind sqlx's `Any` driver, so the
//! same code runs on embedded SQLite and on a shared PostgreSQL.
//!
//! Keys never contain secrets (secrets are stored under their keyed hash);
//! values are sealed JSON. Parameters are always numbered in order of first
//! use, which both SQLite and PostgreSQL read the same way.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::error::{Error, Result};
use crate::seal::{Barrier, SealKey};

mod writer;

use writer::{Op, Unit, Writer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Storage {
    pool: AnyPool,
    /// Writes (the same pool as `pool` on PostgreSQL).
    wpool: AnyPool,
    barrier: Barrier,
    backend: Backend,
    /// Bumped on every change this server makes, so that long-polls wake
    /// at once (changes made by other servers are seen by polling).
    changes: tokio::sync::watch::Sender<u64>,
    cache: ReadCache,
    audit_tx: tokio::sync::mpsc::Sender<AuditMsg>,
    /// Every change to `entries` after start-up goes through here.
    writer: Writer,
}

/// How long a cached value may be used. Changes made by this server drop
/// their cache entry at once; changes made by another server sharing the
/// database are seen within this time.
pub const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Plaintext JSON of hot, rarely-changing values (mounts, policies, roles,
/// CA issuers), read on every request. Tokens, OTPs, leases and revocations
/// are never cached: they must be exact at once on every server.
#[derive(Default)]
struct ReadCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Cached)>>,
}

/// A cached plaintext value, or None when the key is known to be absent.
type Cached = Option<std::sync::Arc<zeroize::Zeroizing<Vec<u8>>>>;

const MAX_CACHED: usize = 10_000;

fn cacheable(key: &str) -> bool {
    key.starts_with("mounts/")
        || key.starts_with("policy/")
        || (key.starts_with("mount/")
            && (key.contains("/role/")
                || key.contains("/issuer/")
                || key.ends_with("/config/issuers")))
}

impl ReadCache {
    fn get(&self, key: &str) -> Option<Cached> {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some((at, v)) if at.elapsed() < CACHE_TTL => Some(v.clone()),
            _ => None,
        }
    }

    fn insert(&self, key: &str, v: Cached) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(key.to_string(), (std::time::Instant::now(), v));
    }

    fn forget(&self, key: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

const SEAL_CHECK_KEY: &str = "core/seal-check";

impl Storage {
    /// Connects (creating an SQLite file if needed), runs the migrations and
    /// checks that the seal key is the one this storage was made with.
    pub async fn open(url: &str, seal: &SealKey) -> Result<Storage> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(Error::invalid(format!(
                "unsupported storage URL {url:?}: use sqlite://PATH or postgres://…"
            )));
        };
        let (pool, wpool) = match backend {
            Backend::Sqlite => {
                let url = if url.contains('?') {
                    url.to_string()
                } else {
                    format!("{url}?mode=rwc")
                };
                // SQLite takes one writer at a time: all writes go through a
                // one-connection pool, so they queue here instead of sleeping
                // on SQLite's lock; reads run beside them (WAL).
                let reads = sqlite_pool(&url, 4).await?;
                let writes = sqlite_pool(&url, 1).await?;
                (reads, writes)
            }
            Backend::Postgres => {
                let p = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(std::time::Duration::from_secs(10))
                    .connect(url)
                    .await?;
                (p.clone(), p)
            }
        };
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&wpool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&wpool).await?,
        }
        let audit_tx = {
            let (tx, rx) = tokio::sync::mpsc::channel(16 * 1024);
            tokio::spawn(audit_writer(wpool.clone(), rx));
            tx
        };
        // SQLite's one write connection takes one writer task; PostgreSQL
        // commits several batches at once.
        let writer = Writer::start(
            wpool.clone(),
            match backend {
                Backend::Sqlite => 1,
                Backend::Postgres => 4,
            },
        );
        let storage = Storage {
            writer,
            pool,
            wpool,
            barrier: Barrier::new(seal),
            backend,
            changes: tokio::sync::watch::channel(0).0,
            cache: ReadCache::default(),
            audit_tx,
        };
        storage.check_seal().await?;
        Ok(storage)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// How many changes this server has made (for caches keyed on it).
    pub fn change_count(&self) -> u64 {
        *self.changes.borrow()
    }

    /// A receiver that sees every change this server makes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self, key: &str) {
        if cacheable(key) {
            self.cache.forget(key);
        }
        if key.starts_with("mounts/") {
            self.cache.forget("list:mounts/");
        }
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn check_seal(&self) -> Result<()> {
        let row = sqlx::query("SELECT value FROM entries WHERE key = $1")
            .bind(SEAL_CHECK_KEY)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => {
                let v: Vec<u8> = row.try_get(0)?;
                self.barrier
                    .open(SEAL_CHECK_KEY, &v)
                    .map_err(|_| Error::internal("the seal key does not match this storage"))?;
            }
            None => {
                let sealed = self.barrier.seal(SEAL_CHECK_KEY, b"gatepass")?;
                sqlx::query(
                    "INSERT INTO entries (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                )
                .bind(SEAL_CHECK_KEY)
                .bind(sealed)
                .execute(&self.wpool)
                .await?;
            }
        }
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, row: &AnyRow) -> Result<T> {
        let v: Vec<u8> = row.try_get(0)?;
        let plain = self.barrier.open(key, &v)?;
        serde_json::from_slice(&plain)
            .map_err(|e| Error::internal(format!("stored value at {key} is unreadable: {e}")))
    }

    fn encode<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>> {
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(value).map_err(|e| Error::internal(e.to_string()))?,
        );
        self.barrier.seal(key, &plain)
    }

    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        if !cacheable(key) {
            return self.get_uncached(key).await;
        }
        let plain = match self.cache.get(key) {
            Some(hit) => hit,
            None => {
                let row = sqlx::query("SELECT value FROM entries WHERE key = $1")
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?;
                let plain = match row {
                    Some(r) => {
                        let v: Vec<u8> = r.try_get(0)?;
                        Some(std::sync::Arc::new(self.barrier.open(key, &v)?))
                    }
                    None => None,
                };
                self.cache.insert(key, plain.clone());
                plain
            }
        };
        plain
            .map(|p| {
                serde_json::from_slice(&p).map_err(|e| {
                    Error::internal(format!("stored value at {key} is unreadable: {e}"))
                })
            })
            .transpose()
    }

    async fn get_uncached<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let row = sqlx::query("SELECT value FROM entries WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| self.decode(key, &r)).transpose()
    }

    /// Applies a unit of writes through the group-commit writer and marks
    /// the keys it changed.
    async fn apply(&self, unit: Unit) -> Result<writer::Applied> {
        let keys: Vec<String> = unit.ops.iter().map(|op| op.key().to_string()).collect();
        let done = self.writer.apply(unit).await?;
        if done.applied {
            for (key, o) in keys.iter().zip(&done.outcomes) {
                if o.hit {
                    self.changed(key);
                }
            }
        }
        Ok(done)
    }

    pub async fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let value = self.encode(key, value)?;
        self.apply(Unit {
            ops: vec![Op::Put {
                key: key.to_string(),
                value,
            }],
            guarded: false,
        })
        .await?;
        Ok(())
    }

    /// Stores only if the key is free; true when this call stored it. This is
    /// the primitive for "exactly once" across several servers.
    pub async fn put_if_absent<T: Serialize>(&self, key: &str, value: &T) -> Result<bool> {
        let value = self.encode(key, value)?;
        let done = self
            .apply(Unit {
                ops: vec![Op::Insert {
                    key: key.to_string(),
                    value,
                }],
                guarded: true,
            })
            .await?;
        Ok(done.applied)
    }

    /// Stores several values in one transaction (one commit instead of one
    /// per value). With `first_is_new`, the first key must be free: if it
    /// is taken nothing is stored and the answer is false.
    pub async fn put_many(
        &self,
        items: &[(String, serde_json::Value)],
        first_is_new: bool,
    ) -> Result<bool> {
        let mut ops = Vec::with_capacity(items.len());
        for (i, (key, value)) in items.iter().enumerate() {
            let value = self.encode(key, value)?;
            let key = key.clone();
            ops.push(if i == 0 && first_is_new {
                Op::Insert { key, value }
            } else {
                Op::Put { key, value }
            });
        }
        let done = self
            .apply(Unit {
                ops,
                guarded: first_is_new,
            })
            .await?;
        Ok(done.applied)
    }

    /// Deletes several keys in one transaction.
    pub async fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.apply(Unit {
            ops: keys.iter().map(|k| Op::Delete { key: k.clone() }).collect(),
            guarded: false,
        })
        .await?;
        Ok(())
    }

    /// Deletes; true when something was deleted.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let done = self
            .apply(Unit {
                ops: vec![Op::Delete {
                    key: key.to_string(),
                }],
                guarded: false,
            })
            .await?;
        Ok(done.outcomes.first().is_some_and(|o| o.hit))
    }

    /// Deletes and returns the value in one statement: of several concurrent
    /// takers of one key, at most one gets it.
    pub async fn take<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let mut done = self
            .apply(Unit {
                ops: vec![Op::Take {
                    key: key.to_string(),
                }],
                guarded: false,
            })
            .await?;
        let Some(sealed) = done.outcomes.pop().and_then(|o| o.value) else {
            return Ok(None);
        };
        let plain = self.barrier.open(key, &sealed)?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| Error::internal(format!("stored value at {key} is unreadable: {e}")))
    }

    /// Every full key under a prefix, in byte order.
    pub async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        // The mount table is read on every request to route it.
        if prefix == "mounts/" {
            let ck = "list:mounts/";
            if let Some(Some(bytes)) = self.cache.get(ck) {
                if let Ok(keys) = serde_json::from_slice::<Vec<String>>(&bytes) {
                    return Ok(keys);
                }
            }
            let keys = self.keys_with_prefix_uncached(prefix).await?;
            let bytes = serde_json::to_vec(&keys).map_err(|e| Error::internal(e.to_string()))?;
            self.cache.insert(
                ck,
                Some(std::sync::Arc::new(zeroize::Zeroizing::new(bytes))),
            );
            return Ok(keys);
        }
        self.keys_with_prefix_uncached(prefix).await
    }

    async fn keys_with_prefix_uncached(&self, prefix: &str) -> Result<Vec<String>> {
        // U+10FFFF sorts after every other UTF-8 text bytewise.
        let upper = format!("{prefix}\u{10FFFF}");
        let rows = sqlx::query("SELECT key FROM entries WHERE key >= $1 AND key < $2 ORDER BY key")
            .bind(prefix)
            .bind(upper)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(Error::from))
            .collect()
    }

    /// Keys `from <= key < to`, in byte order, at most `limit` of them.
    pub async fn keys_between(&self, from: &str, to: &str, limit: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT key FROM entries WHERE key >= $1 AND key < $2 ORDER BY key LIMIT $3",
        )
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(Error::from))
            .collect()
    }

    /// Vault-style LIST: the direct children of a folder, sub-folders with a
    /// trailing `/`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for k in self.keys_with_prefix(prefix).await? {
            let rest = &k[prefix.len()..];
            let child = match rest.find('/') {
                Some(i) => &rest[..=i],
                None => rest,
            };
            if !child.is_empty() && out.last().map(String::as_str) != Some(child) {
                out.push(child.to_string());
            }
        }
        Ok(out)
    }

    /// Queues an audit line for the database copy. The file (written before
    /// the answer, fail-closed) is the record; the database copy is written
    /// in batches by one task, so auditing costs one write per batch rather
    /// than per request.
    pub async fn append_audit(&self, line: &str) -> Result<()> {
        self.audit_tx
            .send(AuditMsg::Line(line.to_string()))
            .await
            .map_err(|_| Error::internal("audit writer stopped"))
    }

    /// Waits until every queued audit line is in the database.
    pub async fn flush_audit(&self) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.audit_tx
            .send(AuditMsg::Flush(tx))
            .await
            .map_err(|_| Error::internal("audit writer stopped"))?;
        rx.await
            .map_err(|_| Error::internal("audit writer stopped"))?
    }

    /// Audit lines stored in the database after id `after`, oldest first.
    pub async fn audit_events(&self, after: i64, limit: i64) -> Result<Vec<(i64, String)>> {
        self.flush_audit().await?;
        let rows =
            sqlx::query("SELECT id, line FROM audit_events WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?)))
            .collect()
    }

    pub async fn close(&self) {
        if let Err(e) = self.flush_audit().await {
            tracing::warn!(error = %e, "audit lines not copied to the database");
        }
        self.pool.close().await;
        self.wpool.close().await;
    }
}

async fn sqlite_pool(url: &str, connections: u32) -> Result<AnyPool> {
    Ok(AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(std::time::Duration::from_secs(30))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                use sqlx::Executor;
                // WAL lets reads run beside the writer; the busy timeout
                // covers other processes and the checkpointer.
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA busy_timeout = 10000;",
                )
                .await?;
                Ok(())
            })
        })
        .connect(url)
        .await?)
}

enum AuditMsg {
    Line(String),
    Flush(tokio::sync::oneshot::Sender<Result<()>>),
}

/// Lines per INSERT: well under SQLite's limit on bound parameters.
const AUDIT_BATCH: usize = 256;

async fn audit_writer(pool: AnyPool, mut rx: tokio::sync::mpsc::Receiver<AuditMsg>) {
    let mut lines: Vec<String> = Vec::new();
    let mut waiting: Vec<tokio::sync::oneshot::Sender<Result<()>>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Take whatever else is already queued, up to a batch.
        while let Some(msg) = next.take() {
            match msg {
                AuditMsg::Line(l) => lines.push(l),
                AuditMsg::Flush(tx) => waiting.push(tx),
            }
            if lines.len() >= AUDIT_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        let mut result = Ok(());
        for chunk in lines.chunks(AUDIT_BATCH) {
            let mut sql = String::from("INSERT INTO audit_events (line) VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("(${})", i + 1));
            }
            let mut q = sqlx::query(&sql);
            for l in chunk {
                q = q.bind(l.as_str());
            }
            if let Err(e) = q.execute(&pool).await {
                tracing::error!(error = %e, lines = chunk.len(), "cannot copy audit lines to the database");
                result = Err(Error::internal("audit lines not stored in the database"));
            }
        }
        lines.clear();
        for w in waiting.drain(..) {
            let _ = w.send(match &result {
                Ok(()) => Ok(()),
                Err(_) => Err(Error::internal("audit lines not stored in the database")),
            });
        }
    }
}
