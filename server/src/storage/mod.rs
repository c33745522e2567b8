//! Storage: one sealed key/value table, on embedded SQLite (rusqlite,
//! `sqlite.rs`) or on a PostgreSQL shared by several servers (sqlx's
//! PostgreSQL driver: reads here, writes in `writer.rs`).
//!
//! Keys never contain secrets (secrets are stored under their keyed hash);
//! values are sealed JSON. Parameters are always numbered in order of first
//! use, which both SQLite and PostgreSQL read the same way.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::error::{Error, Result};
use crate::seal::{Barrier, SealKey};

mod audit_batch;
mod health;
mod postgres;
pub mod snapshot;
mod sqlite;
pub use sqlite::Serving;

/// For `serve`: the lock that keeps a second server off the same SQLite
/// file (see [`sqlite::hold_for_serving`]); None for PostgreSQL, which
/// servers share, and for a file not made yet.
pub fn hold_for_serving(url: &str) -> Result<Option<Serving>> {
    if url.starts_with("sqlite:") {
        sqlite::hold_for_serving(&sqlite::path_of(url)?)
    } else {
        Ok(None)
    }
}
mod wal_writes;
mod writer;

pub use health::{describe, PROBE_TIMEOUT};
use health::{Cause, Health};

use writer::{AuditLine, Op, Unit, Upkeep, Writer};

/// The most connections a server opens to PostgreSQL, all told
/// (`storage_connections` in server.toml). One is the health probe's (see
/// `health::Health`); the pool has the others, and the listener for other
/// servers' changes holds one of those. Servers sharing a database must
/// together stay under its `max_connections` (100 by default), so this is
/// what an operator adds up; nothing is ever opened beyond it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "u32")]
pub struct PoolSize(u32);

impl PoolSize {
    /// The probe's connection, the listener's, and one for requests.
    pub const MIN: u32 = 3;

    pub fn new(n: u32) -> std::result::Result<PoolSize, String> {
        if n < Self::MIN {
            return Err(format!(
                "storage_connections = {n} is too few: at least {} (one for health probes, one listening for other servers' changes, the rest for requests)",
                Self::MIN
            ));
        }
        Ok(PoolSize(n))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The pool's share: all but the probe's connection.
    fn pooled(self) -> u32 {
        self.0 - 1
    }
}

impl Default for PoolSize {
    fn default() -> Self {
        PoolSize(16)
    }
}

impl TryFrom<u32> for PoolSize {
    type Error = String;
    fn try_from(n: u32) -> std::result::Result<PoolSize, String> {
        PoolSize::new(n)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where reads go; writes go through `Storage::writer`.
enum Db {
    Sqlite(sqlite::Sqlite),
    Postgres(PgPool),
}

/// The order in which a range of keys is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOrder {
    Ascending,
    Descending,
}

pub struct Storage {
    db: Db,
    /// Shared with the writer, which reads a taken entry (Op::TakeWith).
    barrier: std::sync::Arc<Barrier>,
    backend: Backend,
    /// Bumped on every change this server makes, and on PostgreSQL on
    /// every change another server announces, so that long-polls wake at
    /// once.
    changes: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    cache: std::sync::Arc<ReadCache>,
    audit: AuditQueue,
    /// Every change to `entries` after start-up goes through here.
    writer: Writer,
    /// The storage URL, credentials and all: only ever used to connect.
    url: String,
    /// The storage as messages name it (see [`describe`]).
    target: String,
    health: std::sync::Arc<Health>,
    /// Once [`INIT_KEY`] was seen, for good (it is never removed): every
    /// `sys/health` asks, and must answer without a pooled connection
    /// while a burst of requests holds them all.
    initialized: std::sync::atomic::AtomicBool,
}

/// How long a cached value may be used. Changes made by this server drop
/// their cache entry at once, and on PostgreSQL so do changes another
/// server announces (see `postgres::listen`); one whose announcement was
/// missed (the listening connection was lost) is seen within this time.
pub const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a cached record (see [`is_record`]) may be used while this
/// server hears of every change: until it changes, in effect. The bound
/// only lets go of records nobody asks for any more.
pub const RECORD_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// Plaintext JSON of hot values read on almost every request: mounts,
/// policies, roles and CA issuers, kept for [`CACHE_TTL`]; and the records
/// behind a request's token (the token, and for a host token its host),
/// kept until they change, but only while this server hears of every
/// change: always on SQLite, where it is the only server; on PostgreSQL
/// while its listener for the other servers' announcements is connected
/// (every change of a cached key is announced in the transaction that
/// makes it, and the announcement drops the entry). OTPs and leases are
/// never cached: they must be exact at once on every server. A mount's
/// revocations are, for signing's check of a revoked key ID or key (a
/// certificate signed on a view a moment old is still revoked by the KRL,
/// which lists key IDs and keys for good); the KRL reads them exactly
/// ([`Storage::get_exact`]).
#[derive(Default)]
struct ReadCache {
    inner: std::sync::Mutex<CacheInner>,
    /// Whether this server hears of every change (see above).
    hears_all: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct CacheInner {
    entries: std::collections::HashMap<String, CacheEntry>,
    /// Bumped by every `forget`: a value read from the database is cached
    /// only if its key was not forgotten since the read began (`gone`,
    /// `floor`), so that a read which raced a write never caches the value
    /// the write replaced. Per key: with a fleet's hosts rewriting their
    /// records hundreds of times a second, a rule of "no change anywhere
    /// since" would keep almost nothing.
    generation: u64,
    /// The generation at which each key was last forgotten.
    gone: std::collections::HashMap<String, u64>,
    /// Reads that began before this generation cache nothing (everything
    /// was forgotten, or `gone` grew too large and was emptied).
    floor: u64,
}

/// Keys kept in `CacheInner::gone` at most.
const MAX_GONE: usize = 100_000;

impl CacheInner {
    /// Whether a value of `key` read since generation `read_at` is still
    /// the stored one, as far as this server knows.
    fn current(&self, key: &str, read_at: u64) -> bool {
        read_at >= self.floor && self.gone.get(key).is_none_or(|&g| g <= read_at)
    }
}

/// A cached plaintext value, or None when the key is known to be absent.
type Cached = Option<std::sync::Arc<zeroize::Zeroizing<Vec<u8>>>>;

/// A value parsed from a cached plaintext, kept beside it (see
/// [`Storage::get_shared`]).
type Parsed = std::sync::Arc<dyn std::any::Any + Send + Sync>;

struct CacheEntry {
    at: std::time::Instant,
    value: Cached,
    parsed: Option<Parsed>,
}

/// Entries at most (then all go): room for the token and the host record
/// of each of 100,000 hosts polling one server, about 1 KiB each.
const MAX_CACHED: usize = 250_000;

/// Whether a write of `key` wakes the requests waiting for changes (hosts'
/// and gateways' long-polls, waits for a dynamic key's install) and, on
/// PostgreSQL, is announced to the other servers. A host's record and its
/// bookkeeping are not: a host's state is computed from the record read
/// when its poll began, and from no bookkeeping. With 100,000 hosts their
/// last-seen times and acknowledgements come well over a thousand times a
/// second, and when each woke every waiting poll on every server to
/// compute its state again, the fleet spent its time recomputing states
/// that had not changed.
pub(crate) fn wakes_waiters(key: &str) -> bool {
    !BOOKKEEPING.iter().any(|p| key.starts_with(p))
}

/// Keys whose writes wake nothing (see [`wakes_waiters`]): hosts' records,
/// and what is kept beside them of each host's comings and goings (when
/// it was last seen, which state it applied), written all the time by a
/// fleet and read by no host's state.
const BOOKKEEPING: [&str; 3] = ["hosts/host/", "hosts/seen/", "hosts/applied/"];

/// Records kept in the cache until they change (see [`ReadCache`]): a
/// request's token, and the host behind a host token, read by every
/// request of 100,000 hosts' long-polls. Host records change after
/// enrollment only when a host reports files it repaired (rare, and
/// announced); their bookkeeping is kept beside them (`hosts::seen`), and
/// their removal comes with their token's, which is announced.
fn is_record(key: &str) -> bool {
    key.starts_with("token/") || key.starts_with(HOST_RECORDS)
}

/// Where hosts' records are (see [`Storage::get_host_record`]).
const HOST_RECORDS: &str = "hosts/host/";

/// Present once the storage is initialized (`bootstrap`); never removed.
pub const INIT_KEY: &str = "core/initialized";

fn cacheable(key: &str) -> bool {
    is_record(key)
        || key.starts_with("mounts/")
        || key.starts_with("policy/")
        || (key.starts_with("mount/")
            && (key.contains("/role/")
                || key.contains("/issuer/")
                || key.ends_with("/config/issuers")
                // Read by every OTP creds request; left to the database it
                // was a read of SQLite on the request's worker thread each
                // time (13% of their CPU time under load, see BENCHMARKS.md).
                || key.ends_with("/config/zeroaddress")
                // Read by every signing (a revoked key ID or key is
                // refused), changed only by `ssh/revoke` and retention.
                || key.ends_with("/revocations")))
}

impl ReadCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh cached value, or the generation to pass to `insert` after
    /// reading the database.
    fn get(&self, key: &str) -> Result<Cached, u64> {
        let inner = self.lock();
        match inner.entries.get(key) {
            Some(e) if self.fresh(key, e) => Ok(e.value.clone()),
            _ => Err(inner.generation),
        }
    }

    fn hears_every_change(&self, yes: bool) {
        self.hears_all
            .store(yes, std::sync::atomic::Ordering::SeqCst);
    }

    fn fresh(&self, key: &str, e: &CacheEntry) -> bool {
        if is_record(key) {
            self.hears_all.load(std::sync::atomic::Ordering::SeqCst) && e.at.elapsed() < RECORD_TTL
        } else {
            e.at.elapsed() < CACHE_TTL
        }
    }

    /// The parsed value kept beside a fresh entry: Some(None) when the key
    /// is known to be absent, None when there is nothing of type `T`.
    fn get_parsed<T: std::any::Any + Send + Sync>(
        &self,
        key: &str,
    ) -> Option<Option<std::sync::Arc<T>>> {
        let inner = self.lock();
        let e = inner.entries.get(key)?;
        if !self.fresh(key, e) {
            return None;
        }
        match (&e.value, &e.parsed) {
            (None, _) => Some(None),
            (Some(_), Some(p)) => p.clone().downcast::<T>().ok().map(Some),
            (Some(_), None) => None,
        }
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps `parsed` beside the entry it was parsed from, unless a change
    /// was forgotten since `read_at`.
    fn set_parsed(&self, key: &str, parsed: Parsed, read_at: u64) {
        let mut inner = self.lock();
        if !inner.current(key, read_at) {
            return;
        }
        if let Some(e) = inner.entries.get_mut(key) {
            e.parsed = Some(parsed);
        }
    }

    fn insert(&self, key: &str, v: Cached, read_at: u64) {
        let mut inner = self.lock();
        if !inner.current(key, read_at) {
            return;
        }
        if is_record(key) && !self.hears_all.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if inner.entries.len() >= MAX_CACHED {
            inner.entries.clear();
        }
        inner.entries.insert(
            key.to_string(),
            CacheEntry {
                at: std::time::Instant::now(),
                value: v,
                parsed: None,
            },
        );
    }

    fn forget(&self, key: &str) {
        let mut inner = self.lock();
        inner.entries.remove(key);
        inner.generation += 1;
        if inner.gone.len() >= MAX_GONE {
            inner.gone.clear();
            inner.floor = inner.generation;
        }
        let g = inner.generation;
        inner.gone.insert(key.to_string(), g);
    }

    fn forget_all(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.gone.clear();
        inner.generation += 1;
        inner.floor = inner.generation;
    }

    /// Drops what a change of `key` makes stale.
    fn changed(&self, key: &str) {
        if cacheable(key) {
            self.forget(key);
        }
        if key.starts_with("mounts/") {
            self.forget(MOUNT_TABLE);
        }
    }
}

const SEAL_CHECK_KEY: &str = "core/seal-check";

/// The read cache's entry for the mount table ([`Storage::mount_table`]).
const MOUNT_TABLE: &str = "table:mounts/";

/// What [`Storage::update`] is to do with the value it read.
pub enum Change<T> {
    /// Nothing: the value read stands (no write).
    Keep,
    /// Replace it.
    Put(T),
    /// Delete it.
    Delete,
}

/// Times [`Storage::update`] reads again after another writer changed the
/// value first. Every lost round means another caller's change went in, so
/// this bounds only how many callers may change one value at once.
const UPDATE_TRIES: u32 = 100;

impl Storage {
    /// Connects (creating an SQLite file if needed), runs the migrations and
    /// checks that the seal key is the one this storage was made with. A
    /// database that cannot be reached now is an
    /// [`Error::StorageUnavailable`] naming it and the cause (worth trying
    /// again later).
    pub async fn open(url: &str, seal: &SealKey) -> Result<Storage> {
        Storage::open_with(url, seal, PoolSize::default()).await
    }

    /// [`Storage::open`] with at most `connections` to PostgreSQL.
    pub async fn open_with(url: &str, seal: &SealKey, connections: PoolSize) -> Result<Storage> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(Error::invalid(format!(
                "unsupported storage URL {url:?}: use sqlite://PATH or postgres://…"
            )));
        };
        let target = describe(url);
        let changes = std::sync::Arc::new(tokio::sync::watch::channel(0).0);
        let cache = std::sync::Arc::new(ReadCache::default());
        let mut probe_conn = None;
        let (db, writer) = match backend {
            Backend::Sqlite => {
                // The file is made here, private; SQLite gives its -wal and
                // -shm files the database file's mode.
                let path = sqlite::path_of(url)?;
                crate::private::create_file(&path).map_err(|e| {
                    Error::internal(format!("cannot create {}: {e}", path.display()))
                })?;
                let prepare = path.clone();
                tokio::task::spawn_blocking(move || {
                    sqlite::set_incremental_vacuum(&prepare)?;
                    sqlite::migrate(&prepare)
                })
                .await
                .map_err(|e| Error::internal(e.to_string()))??;
                let (db, tx) = sqlite::Sqlite::open(&path)?;
                // This server makes every change: it hears of them all.
                cache.hears_every_change(true);
                (Db::Sqlite(db), Writer::new(tx))
            }
            Backend::Postgres => {
                // The health probe's connection first: when the database
                // cannot be reached it says why, where the pool would only
                // time out.
                match health::connect(url, OPEN_CONNECT_TIMEOUT).await {
                    Ok(c) => probe_conn = Some(c),
                    Err(f) => {
                        return Err(if f.retryable {
                            Error::StorageUnavailable(unavailable_text(&target, &f.cause))
                        } else {
                            Error::internal(format!("cannot use storage {target}: {}", f.cause))
                        })
                    }
                }
                let pool = PgPoolOptions::new()
                    .max_connections(connections.pooled())
                    // Bounds how long a request waits for its turn when
                    // every connection is busy (and, while the database
                    // refuses connections, how long the pool retries).
                    .acquire_timeout(health::ACQUIRE_TIMEOUT)
                    // An idle connection is checked before use, so that one
                    // the database closed (it restarted) is replaced by a new
                    // one rather than failing a request.
                    .test_before_acquire(true)
                    .connect_lazy(url)?;
                sqlx::migrate!("./migrations/postgres").run(&pool).await?;
                // Several batches commit at once on PostgreSQL. Each
                // announces its keys to the other servers, which drop them
                // from their caches and wake their long-polls at once.
                let origin = format!("{:016x}", rand::random::<u64>());
                let writer = Writer::postgres(pool.clone(), 4, origin.clone());
                tokio::spawn(postgres::listen(
                    pool.clone(),
                    origin,
                    std::sync::Arc::downgrade(&changes),
                    std::sync::Arc::downgrade(&cache),
                ));
                (Db::Postgres(pool), writer)
            }
        };
        let health = std::sync::Arc::new(Health::default());
        *health.probing.lock().await = probe_conn;
        let (audit, copier) = AuditQueue::new(AUDIT_QUEUE);
        tokio::spawn(audit_writer(writer.clone(), health.clone(), copier));
        let storage = Storage {
            db,
            writer,
            barrier: std::sync::Arc::new(Barrier::new(seal)),
            backend,
            changes,
            cache,
            audit,
            url: url.to_string(),
            target,
            health,
            initialized: Default::default(),
        };
        storage.check_seal().await?;
        Ok(storage)
    }

    /// Whether the storage was initialized (see [`INIT_KEY`]); read from
    /// the database only until it was seen once.
    pub async fn is_initialized(&self) -> Result<bool> {
        use std::sync::atomic::Ordering;
        if self.initialized.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let yes = self.get::<i64>(INIT_KEY).await?.is_some();
        if yes {
            self.initialized.store(true, Ordering::Relaxed);
        }
        Ok(yes)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The storage as messages name it: kind and host, port and database,
    /// or file; never credentials.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether the storage can be used now; Err holds a message naming the
    /// storage and the cause. The answer is at most [`health::HEALTH_TTL`]
    /// old, so that frequent callers (a load balancer polling `sys/health`)
    /// cost at most a few probes a second, and takes at most about
    /// [`health::PING_TIMEOUT`] and a [`health::PROBE_TIMEOUT`].
    pub async fn health(&self) -> std::result::Result<(), String> {
        if let Some(r) = self.health.fresh() {
            return r;
        }
        let mut held = self.health.probing.lock().await;
        if let Some(r) = self.health.fresh() {
            return r;
        }
        let r = self
            .probe(&mut held)
            .await
            .map_err(|cause| unavailable_text(&self.target, &cause));
        self.health.record(r.clone());
        r
    }

    async fn probe(
        &self,
        held: &mut Option<sqlx::PgConnection>,
    ) -> std::result::Result<(), String> {
        match &self.db {
            // On the probe's own connection, never one of the pool's: the
            // pool may be busy with a burst of requests, and a connection
            // beyond it may be refused (`max_connections`).
            Db::Postgres(_) => health::probe_postgres(&self.url, held).await,
            Db::Sqlite(db) => {
                let path = db.path().to_path_buf();
                // After a write failed, the probe checks that writing works
                // again; otherwise a read will do (a write probe would take
                // the write lock from under the writer).
                let write = self.health.is_down();
                tokio::task::spawn_blocking(move || sqlite::probe(&path, write))
                    .await
                    .map_err(|e| e.to_string())?
            }
        }
    }

    /// Runs one storage call, bounded in time. While the storage is known
    /// to be down the call is not tried at all: the caller gets the 503 at
    /// once (a probe at most every [`health::HEALTH_TTL`] sees it back).
    async fn run<T>(&self, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        if self.health.is_down() {
            self.health().await.map_err(Error::StorageUnavailable)?;
        }
        let call = tokio::time::timeout(health::CALL_TIMEOUT, call);
        tokio::pin!(call);
        let outcome = tokio::select! {
            done = &mut call => done,
            _ = tokio::time::sleep(health::SLOW_CALL) => {
                // Slow: waiting for its turn at a busy pool, or the
                // database gone. Only the probe can tell; while the
                // database answers, the call goes on.
                if self.backend == Backend::Postgres {
                    self.health().await.map_err(Error::StorageUnavailable)?;
                }
                call.await
            }
        };
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => match health::unavailable_cause(&e) {
                Some(cause) => Err(self.failed(cause).await),
                None => Err(e),
            },
            Err(_) => Err(self
                .failed(Cause::Known(format!(
                    "no answer within {} s",
                    health::CALL_TIMEOUT.as_secs()
                )))
                .await),
        }
    }

    /// The caller's error for a call that failed as if the storage were
    /// unavailable. SQLite is this server's alone, so such a failure (a
    /// file locked or unreadable) is the storage's state. On PostgreSQL
    /// the health probe decides: while the database answers it, this call
    /// alone fails (its turn for a connection did not come in time, or
    /// its connection was lost) and the next ones are tried as usual.
    async fn failed(&self, cause: Cause) -> Error {
        if self.backend == Backend::Postgres {
            if let Err(msg) = self.health().await {
                return Error::StorageUnavailable(msg);
            }
            return Error::StorageUnavailable(match cause {
                Cause::Known(c) => unavailable_text(&self.target, &c),
                Cause::PoolTimedOut => format!(
                    "storage busy: {}: the database answers, but every one of this server's connections to it stayed busy for {} s; try again (storage_connections sets how many there are)",
                    self.target,
                    health::ACQUIRE_TIMEOUT.as_secs()
                ),
            });
        }
        let cause = match cause {
            Cause::Known(c) => c,
            Cause::PoolTimedOut => "no connection in time".to_string(),
        };
        let msg = unavailable_text(&self.target, &cause);
        self.health.record(Err(msg.clone()));
        Error::StorageUnavailable(msg)
    }

    /// Whether this server hears of every change that wakes waiters: always
    /// on SQLite (it is the only server), on PostgreSQL while the listener
    /// for the other servers' announcements is connected. While it does,
    /// what is computed from storage stays true until [`Self::subscribe`]'s
    /// count moves; while it does not, it must be looked at again now and
    /// then.
    pub fn hears_every_change(&self) -> bool {
        self.cache
            .hears_all
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many changes this server has made (for caches keyed on it).
    pub fn change_count(&self) -> u64 {
        *self.changes.borrow()
    }

    /// A receiver that sees every change this server makes (and, on
    /// PostgreSQL, that others announce) except those of [`wakes_waiters`]'s
    /// bookkeeping keys.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self, key: &str) {
        self.cache.changed(key);
        if wakes_waiters(key) {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    async fn check_seal(&self) -> Result<()> {
        match self.fetch(SEAL_CHECK_KEY).await? {
            Some(v) => {
                self.barrier
                    .open(SEAL_CHECK_KEY, &v)
                    .map_err(|_| Error::internal("the seal key does not match this storage"))?;
            }
            None => {
                self.put_if_absent(SEAL_CHECK_KEY, &"gatepass").await?;
            }
        }
        Ok(())
    }

    /// The sealed value stored at `key`.
    async fn fetch(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.run(async {
            match &self.db {
                Db::Sqlite(db) => db.get(key),
                Db::Postgres(pool) => postgres::get(pool, key).await,
            }
        })
        .await
    }

    /// Keys `from <= key < to` in byte order, at most `limit` (all if None).
    async fn fetch_keys(&self, from: &str, to: &str, limit: Option<i64>) -> Result<Vec<String>> {
        self.run(self.fetch_keys_now(from, to, limit, KeyOrder::Ascending))
            .await
    }

    async fn fetch_keys_now(
        &self,
        from: &str,
        to: &str,
        limit: Option<i64>,
        order: KeyOrder,
    ) -> Result<Vec<String>> {
        match &self.db {
            Db::Sqlite(db) => db.keys(from, to, limit, order),
            Db::Postgres(pool) => postgres::keys(pool, from, to, limit, order).await,
        }
    }

    fn encode<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>> {
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(value).map_err(|e| Error::internal(e.to_string()))?,
        );
        self.barrier.seal(key, &plain)
    }

    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        if !cacheable(key) || key.starts_with(HOST_RECORDS) {
            return self.get_uncached(key).await;
        }
        self.get_through_cache(key).await
    }

    /// The host record behind a host token, for that host's own requests:
    /// from the cache while this server hears of every change (see
    /// [`ReadCache`]). Its last-seen time and applied index are kept
    /// beside it (`hosts::seen`, `hosts::ack`), not in it. Other readers
    /// (listings, the web UI) use [`Storage::get`], which reads host
    /// records from the database.
    /// Shared, as [`Storage::get_shared`] keeps it: each poll of a
    /// fleet's hosts reads its host's record, and parsing it again for
    /// every poll was a visible share of a poll's time.
    pub async fn get_host_record<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        key: &str,
    ) -> Result<Option<std::sync::Arc<T>>> {
        if !key.starts_with(HOST_RECORDS) {
            return self.get_shared(key).await;
        }
        self.get_parsed_through_cache(key).await
    }

    /// A cached value's parsed form, kept beside it in the cache.
    async fn get_parsed_through_cache<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        key: &str,
    ) -> Result<Option<std::sync::Arc<T>>> {
        if let Some(hit) = self.cache.get_parsed::<T>(key) {
            return Ok(hit);
        }
        let read_at = self.cache.generation();
        let value = self
            .get_through_cache::<T>(key)
            .await?
            .map(std::sync::Arc::new);
        if let Some(v) = &value {
            self.cache.set_parsed(key, v.clone(), read_at);
        }
        Ok(value)
    }

    async fn get_through_cache<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let plain = match self.cache.get(key) {
            Ok(hit) => hit,
            Err(read_at) => {
                let plain = match self.fetch(key).await? {
                    Some(v) => Some(std::sync::Arc::new(self.barrier.open(key, &v)?)),
                    None => None,
                };
                self.cache.insert(key, plain.clone(), read_at);
                plain
            }
        };
        plain.map(|p| parse(key, &p)).transpose()
    }

    /// [`Storage::get`], shared: for the hot cached values (mounts, roles,
    /// issuers, …) the parsed value itself is kept beside the cached text,
    /// so a request that reads them does not parse their JSON again.
    pub async fn get_shared<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        key: &str,
    ) -> Result<Option<std::sync::Arc<T>>> {
        if !cacheable(key) {
            return Ok(self.get_uncached(key).await?.map(std::sync::Arc::new));
        }
        if key.starts_with(HOST_RECORDS) {
            // Other readers than the host itself read host records from
            // the database (see `get_host_record`).
            return Ok(self.get_uncached(key).await?.map(std::sync::Arc::new));
        }
        self.get_parsed_through_cache(key).await
    }

    /// [`Storage::get`] from the database whether the key is cached or
    /// not: for readers that must see every change at once on every
    /// server (a mount's KRL).
    pub async fn get_exact<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.get_uncached(key).await
    }

    async fn get_uncached<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.fetch(key).await? {
            Some(v) => parse(key, &self.barrier.open(key, &v)?).map(Some),
            None => Ok(None),
        }
    }

    /// Applies a unit of writes through the group-commit writer and marks
    /// the keys it changed.
    async fn apply(&self, unit: Unit) -> Result<writer::Applied> {
        let keys: Vec<String> = unit.ops.iter().map(|op| op.key().to_string()).collect();
        let done = self.run(self.writer.apply(unit)).await?;
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

    /// Stores each `(key, value, beside)` in one transaction, each only
    /// while the key `beside` holds a value; true for those stored. For
    /// bookkeeping about an entry, which must never outlive it: one whose
    /// entry was deleted first is not stored, and one stored first is
    /// there for the delete's caller to delete after it.
    pub async fn put_beside<T: Serialize>(
        &self,
        items: &[(String, T, String)],
    ) -> Result<Vec<bool>> {
        let ops = items
            .iter()
            .map(|(key, value, beside)| {
                Ok(Op::PutBeside {
                    key: key.clone(),
                    value: self.encode(key, value)?,
                    beside: beside.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let done = self
            .apply(Unit {
                ops,
                guarded: false,
            })
            .await?;
        Ok(done.outcomes.iter().map(|o| o.hit).collect())
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

    /// Changes one value atomically, on every backend and across servers
    /// sharing one database: reads it (never from the cache), asks `decide`
    /// what to do with it, and writes the change only if the stored value
    /// is still the one read (a compare-and-swap on its sealed bytes); if
    /// another write came first, reads again and asks again. `decide` may
    /// run several times, so it must only compute; an error from it is
    /// returned as is and nothing is written. None when the key is absent.
    ///
    /// This is how counts are spent: read-then-`put` would let concurrent
    /// callers each spend the same use.
    pub async fn update<T, R>(
        &self,
        key: &str,
        mut decide: impl FnMut(T) -> Result<(Change<T>, R)>,
    ) -> Result<Option<R>>
    where
        T: Serialize + DeserializeOwned,
    {
        for attempt in 0..UPDATE_TRIES {
            let Some(sealed) = self.fetch(key).await? else {
                return Ok(None);
            };
            let current: T = parse(key, &self.barrier.open(key, &sealed)?)?;
            let (change, answer) = decide(current)?;
            let value = match change {
                Change::Keep => return Ok(Some(answer)),
                Change::Put(v) => Some(self.encode(key, &v)?),
                Change::Delete => None,
            };
            let done = self
                .apply(Unit {
                    ops: vec![Op::Swap {
                        key: key.to_string(),
                        expected: sealed,
                        value,
                    }],
                    guarded: true,
                })
                .await?;
            if done.applied {
                return Ok(Some(answer));
            }
            // Lost to another writer: a short random pause spreads the
            // callers that lost together before they read again.
            let micros = rand::random::<u64>() % (50 * u64::from(attempt.min(20) + 1));
            tokio::time::sleep(std::time::Duration::from_micros(micros)).await;
        }
        Err(Error::Unavailable(
            "too many concurrent changes to one entry; try again".into(),
        ))
    }

    /// Deletes and returns the value in one statement: of several concurrent
    /// takers of one key, at most one gets it.
    pub async fn take<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.take_and_delete(key, &[]).await
    }

    /// [`Storage::take`], deleting `also` in the same transaction whether
    /// or not this caller got the value (what belongs to it alone, e.g. its
    /// lease, which whoever got it deletes too).
    pub async fn take_and_delete<T: DeserializeOwned>(
        &self,
        key: &str,
        also: &[String],
    ) -> Result<Option<T>> {
        let mut ops = vec![Op::Take {
            key: key.to_string(),
        }];
        ops.extend(also.iter().map(|k| Op::Delete { key: k.clone() }));
        self.take_in(key, ops).await
    }

    /// [`Storage::take`], deleting in the same transaction the keys `also`
    /// names from the taken value (what belongs to it alone, e.g. its
    /// lease): one write, with no read before it to find those keys. Only
    /// the caller that gets the value deletes them.
    pub async fn take_with<T, F>(&self, key: &str, also: F) -> Result<Option<T>>
    where
        T: DeserializeOwned + 'static,
        F: Fn(T) -> Vec<String> + Send + Sync + 'static,
    {
        let barrier = self.barrier.clone();
        let aad = key.to_string();
        let also: writer::Dependents = std::sync::Arc::new(move |sealed: &[u8]| {
            barrier
                .open(&aad, sealed)
                .ok()
                .and_then(|plain| serde_json::from_slice::<T>(&plain).ok())
                .map(&also)
                .unwrap_or_default()
        });
        let take = Op::TakeWith {
            key: key.to_string(),
            also,
        };
        self.take_in(key, vec![take]).await
    }

    /// Applies `ops`, the first of which takes `key`, in one transaction:
    /// the taken value, or None when another caller had it first.
    async fn take_in<T: DeserializeOwned>(&self, key: &str, ops: Vec<Op>) -> Result<Option<T>> {
        let mut done = self
            .apply(Unit {
                ops,
                guarded: false,
            })
            .await?;
        let Some(sealed) = done.outcomes.swap_remove(0).value else {
            return Ok(None);
        };
        parse(key, &self.barrier.open(key, &sealed)?).map(Some)
    }

    /// Every value under `mounts/`, parsed and shared: the mount table,
    /// which routes every request (two or three lookups each). Kept in the
    /// read cache as one entry, so that a lookup neither lists the keys
    /// nor asks the cache for each mount; any change under `mounts/`
    /// forgets it.
    pub async fn mount_table<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
    ) -> Result<std::sync::Arc<Vec<std::sync::Arc<T>>>> {
        if let Some(Some(table)) = self.cache.get_parsed::<Vec<std::sync::Arc<T>>>(MOUNT_TABLE) {
            return Ok(table);
        }
        let read_at = self.cache.generation();
        let mut table = Vec::new();
        for k in self.keys_with_prefix("mounts/").await? {
            if let Some(m) = self.get_shared::<T>(&k).await? {
                table.push(m);
            }
        }
        let table = std::sync::Arc::new(table);
        // The entry's text is empty: what it holds is the table beside it.
        self.cache.insert(
            MOUNT_TABLE,
            Some(std::sync::Arc::new(zeroize::Zeroizing::new(Vec::new()))),
            read_at,
        );
        self.cache.set_parsed(MOUNT_TABLE, table.clone(), read_at);
        Ok(table)
    }

    /// Every full key under a prefix, in byte order.
    pub async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        // U+10FFFF sorts after every other UTF-8 text bytewise.
        let upper = format!("{prefix}\u{10FFFF}");
        self.fetch_keys(prefix, &upper, None).await
    }

    /// Keys `from <= key < to`, in byte order, at most `limit` of them.
    pub async fn keys_between(&self, from: &str, to: &str, limit: i64) -> Result<Vec<String>> {
        self.fetch_keys(from, to, Some(limit)).await
    }

    /// How many keys `from <= key < to` there are, counted by the
    /// database (the keys are not read out).
    pub async fn count_between(&self, from: &str, to: &str) -> Result<u64> {
        self.run(async {
            match &self.db {
                Db::Sqlite(db) => db.count(from, to),
                Db::Postgres(pool) => postgres::count(pool, from, to).await,
            }
        })
        .await
    }

    /// Keys `from <= key < to` from the last down, at most `limit` of them:
    /// a page of an index whose keys sort oldest first, newest first (the
    /// next page ends where this one did).
    pub async fn keys_between_desc(&self, from: &str, to: &str, limit: i64) -> Result<Vec<String>> {
        self.run(self.fetch_keys_now(from, to, Some(limit), KeyOrder::Descending))
            .await
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
    /// `at` is the line's time (Unix seconds), by which retention removes
    /// it from the copy later.
    ///
    /// A request waits at most [`AUDIT_QUEUE_WAIT`] for room in the
    /// copier's queue (see [`AuditQueue::push`]).
    pub async fn append_audit(&self, line: String, at: i64) -> Result<()> {
        self.audit.push(AuditLine { line, at }).await
    }

    /// Deletes up to `limit` of the oldest lines of the audit copy that are
    /// older than `before`; returns how many went (fewer than `limit`: no
    /// more to delete now).
    pub async fn prune_audit_copy(&self, before: i64, limit: i64) -> Result<u64> {
        self.writer
            .upkeep(Upkeep::PruneAudit { before, limit })
            .await
    }

    /// Gives up to `pages` freed pages back to the file system; returns how
    /// many free pages are left. Only SQLite keeps freed pages in its file
    /// (PostgreSQL's autovacuum makes them reusable): 0 there.
    pub async fn give_back_space(&self, pages: i64) -> Result<u64> {
        match self.backend {
            Backend::Sqlite => self.writer.upkeep(Upkeep::Vacuum { pages }).await,
            Backend::Postgres => Ok(0),
        }
    }

    /// Bytes the storage takes: SQLite's file and WAL, or the PostgreSQL
    /// database's size.
    pub async fn size_bytes(&self) -> Result<u64> {
        match &self.db {
            Db::Sqlite(db) => Ok(sqlite::size_on_disk(db.path())),
            Db::Postgres(pool) => postgres::size(pool).await,
        }
    }

    /// The folder holding the SQLite database (None on PostgreSQL).
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        match &self.db {
            Db::Sqlite(db) => db.path().parent(),
            Db::Postgres(_) => None,
        }
    }

    /// Waits until every queued audit line is in the database.
    pub async fn flush_audit(&self) -> Result<()> {
        // The copier holds lines while the storage is known down; a reader
        // finding it back (a fresh probe) lets it copy them first.
        if self.health.is_down() {
            self.health().await.map_err(Error::StorageUnavailable)?;
        }
        match self.tell_copier(AuditMsg::Flush).await {
            Some(Ok(())) => Ok(()),
            // The storage went down (again) under the copy: the reader is
            // told so, as any caller is, rather than that something broke.
            Some(Err(e)) => Err(match health::unavailable_cause(&e) {
                Some(cause) => match self.health().await {
                    Err(msg) => Error::StorageUnavailable(msg),
                    Ok(()) => self.failed(cause).await,
                },
                None => e,
            }),
            None => Err(Error::StorageUnavailable(format!(
                "the database's copy of the audit log is behind: its last write has not \
                 finished in {} s (the audit file has every line)",
                health::CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Sends the audit copier a flush or a stop and waits for its answer,
    /// bounded like any storage call: a copier held up (a lock on the
    /// copy's table, a connection gone silent mid-insert) must hold neither
    /// a reader nor the server's stop. None when the time ran out.
    async fn tell_copier(
        &self,
        msg: impl FnOnce(tokio::sync::oneshot::Sender<Result<()>>) -> AuditMsg,
    ) -> Option<Result<()>> {
        let answered = async {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.audit
                .tx
                .send(msg(tx))
                .await
                .map_err(|_| Error::internal("audit writer stopped"))?;
            self.audit.flush.notify_one();
            rx.await
                .map_err(|_| Error::internal("audit writer stopped"))?
        };
        tokio::time::timeout(health::CALL_TIMEOUT, answered)
            .await
            .ok()
    }

    /// The last audit line in the database's copy, when the database is
    /// one server's own (SQLite): on PostgreSQL the copy interleaves every
    /// server's chain, so its last line need not be this server's.
    pub async fn own_last_audit_line(&self) -> Result<Option<String>> {
        match &self.db {
            Db::Sqlite(db) => self.run(async { db.last_audit_line() }).await,
            Db::Postgres(_) => Ok(None),
        }
    }

    /// Audit lines stored in the database after id `after`, oldest first.
    pub async fn audit_events(&self, after: i64, limit: i64) -> Result<Vec<(i64, String)>> {
        self.audit_events_in(after, limit, &crate::audit::TimeRange::ALL)
            .await
    }

    /// Audit lines after id `after` whose time falls in `range`, oldest
    /// first.
    pub async fn audit_events_in(
        &self,
        after: i64,
        limit: i64,
        range: &crate::audit::TimeRange,
    ) -> Result<Vec<(i64, String)>> {
        self.flush_audit().await?;
        let (since, until) = (range.start(), range.end());
        self.run(async {
            match &self.db {
                Db::Sqlite(db) => db.audit_rows(after, limit, since, until),
                Db::Postgres(pool) => postgres::audit_rows(pool, after, limit, since, until).await,
            }
        })
        .await
    }

    /// Copies what the audit copier holds, if the storage lets it, and
    /// stops the copier, which logs what the copy is left without.
    pub async fn close(&self) {
        // As for a reader: a storage known down is probed once more, so
        // that lines held through an outage that just ended go in.
        if self.health.is_down() {
            let _ = self.health().await;
        }
        match self.tell_copier(AuditMsg::Stop).await {
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::warn!(error = %e, "audit lines not copied to the database"),
            None => tracing::error!(
                "the database's copy of the audit log did not finish its last write in time; \
                 lines not yet copied are in the audit file only"
            ),
        }
        if let Db::Postgres(pool) = &self.db {
            pool.close().await;
        }
    }
}

/// How long `open` waits for a first connection to the database.
const OPEN_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// What a client is told when the storage cannot be used.
/// A stored value's JSON parsed, or an internal error naming its key.
fn parse<T: DeserializeOwned>(key: &str, plain: &[u8]) -> Result<T> {
    serde_json::from_slice(plain)
        .map_err(|e| Error::internal(format!("stored value at {key} is unreadable: {e}")))
}

fn unavailable_text(target: &str, cause: &str) -> String {
    format!("storage unavailable: {target}: {cause}")
}

/// Lines the copier's queue holds: about a second of a busy server's.
const AUDIT_QUEUE: usize = 16 * 1024;

/// How long a request waits for room in the copier's queue before its line
/// is left to the file (see [`Storage::append_audit`]). Long enough that a
/// burst the copier catches up with keeps the copy whole.
const AUDIT_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Lines left to the file because the copier's queue was full.
#[derive(Default)]
struct Skipped {
    /// Set by the first line that found no room, cleared by the first
    /// that finds the queue empty again (see [`AuditQueue::push`]).
    on: std::sync::atomic::AtomicBool,
    lines: std::sync::atomic::AtomicU64,
}

impl Skipped {
    fn is_on(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Counts a line left to the file; the first says so in the log.
    fn skip(&self) {
        use std::sync::atomic::Ordering;
        self.lines.fetch_add(1, Ordering::Relaxed);
        if !self.on.swap(true, Ordering::AcqRel) {
            tracing::error!(
                "the database's copy of the audit log is not keeping up (its writes are held up): \
                 audit lines are left to the audit file until it catches up"
            );
        }
    }

    /// Ends the skipping; how many lines were skipped.
    fn end(&self) -> u64 {
        use std::sync::atomic::Ordering;
        self.on.store(false, Ordering::Release);
        self.lines.swap(0, Ordering::AcqRel)
    }
}

/// The audit copier's queue as the requests see it.
struct AuditQueue {
    tx: tokio::sync::mpsc::Sender<AuditMsg>,
    /// Ends the copier's window at once (see [`audit_writer`]).
    flush: std::sync::Arc<tokio::sync::Notify>,
    /// Lines left to the file while the queue was full.
    skipped: std::sync::Arc<Skipped>,
}

impl AuditQueue {
    /// A queue of `capacity` lines and the copier's end of it.
    fn new(capacity: usize) -> (AuditQueue, Copier) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        let queue = AuditQueue {
            tx,
            flush: Default::default(),
            skipped: Default::default(),
        };
        let copier = Copier {
            rx,
            flush: queue.flush.clone(),
            skipped: queue.skipped.clone(),
        };
        (queue, copier)
    }

    /// Queues a line, waiting at most [`AUDIT_QUEUE_WAIT`] for room: a
    /// copier held up (a lock on the copy's table that lasts) must not
    /// hold every request that audits. A line that finds no room is left
    /// to the file, and so is every line after it until the copier has
    /// taken those queued before: the copy then has one gap, whose count
    /// the first line after it logs.
    async fn push(&self, line: AuditLine) -> Result<()> {
        use tokio::sync::mpsc::error::{SendTimeoutError, TrySendError};
        if self.skipped.is_on() {
            // The queue empty again: the copier has taken every line
            // queued before the gap, and this one is the first after it.
            if self.tx.capacity() < self.tx.max_capacity() {
                self.skipped.skip();
                return Ok(());
            }
            report_skipped(self.skipped.end());
        }
        // Room at once is the usual case: no timer for it.
        let msg = match self.tx.try_send(AuditMsg::Line(line)) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(msg)) => msg,
            Err(TrySendError::Closed(_)) => return Err(Error::internal("audit writer stopped")),
        };
        match self.tx.send_timeout(msg, AUDIT_QUEUE_WAIT).await {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(_)) => {
                self.skipped.skip();
                Ok(())
            }
            Err(SendTimeoutError::Closed(_)) => Err(Error::internal("audit writer stopped")),
        }
    }
}

/// What the audit copier is handed: its queue, the nudge that ends its
/// window, and the count of lines that found the queue full (which it
/// logs if the server stops before the queue is empty again).
struct Copier {
    rx: tokio::sync::mpsc::Receiver<AuditMsg>,
    flush: std::sync::Arc<tokio::sync::Notify>,
    skipped: std::sync::Arc<Skipped>,
}

/// Says how many lines found the copier's queue full, if any.
fn report_skipped(lines: u64) {
    if lines > 0 {
        tracing::error!(
            lines,
            "the database's copy of the audit log fell behind: audit lines it could not take \
             not copied to the database (they are in the audit file)"
        );
    }
}

enum AuditMsg {
    Line(AuditLine),
    Flush(tokio::sync::oneshot::Sender<Result<()>>),
    /// A flush after which the copier says what it could not copy and
    /// ends (the server is stopping).
    Stop(tokio::sync::oneshot::Sender<Result<()>>),
}

/// Lines per batch.
const AUDIT_BATCH: usize = 1024;

/// How long the copier gathers lines before it writes them (unless a
/// reader asks for them first, [`Storage::flush_audit`]). Without it,
/// under load it wrote a line or two at a time, each its own commit
/// beside the requests' writes; the copy is read through a flush, so a
/// reader never sees it behind.
const AUDIT_WINDOW: std::time::Duration = std::time::Duration::from_millis(10);

/// Copies audit lines to the database in batches, one batch at a time so
/// that their order is kept.
///
/// Within a window the copier sleeps rather than waits on the channel: a
/// task waiting there is woken by every line sent, two per request, and
/// each wake schedules it (and may wake a parked runtime thread to look
/// for work) on the request's path. Now only the window's first line
/// wakes it; a flush ends the window through `flush`.
///
/// While the storage is down the lines are held (up to
/// [`AUDIT_HELD_BYTES`]) and copied, before any line after them, once it
/// is back: an outage is when someone reads the log afterwards, and
/// `sys/audit-log` should then show it whole, as the file does.
async fn audit_writer(writer: Writer, health: std::sync::Arc<Health>, mut copier: Copier) -> Held {
    let mut held = Held::new(AUDIT_HELD_BYTES);
    let mut lines: Vec<AuditLine> = Vec::new();
    let mut waiting: Vec<tokio::sync::oneshot::Sender<Result<()>>> = Vec::new();
    let mut stopping = false;
    // Whether the message asks the copier to stop.
    let take = |msg, lines: &mut Vec<AuditLine>, waiting: &mut Vec<_>| match msg {
        AuditMsg::Line(l) => {
            lines.push(l);
            false
        }
        AuditMsg::Flush(tx) => {
            waiting.push(tx);
            false
        }
        AuditMsg::Stop(tx) => {
            waiting.push(tx);
            true
        }
    };
    // Held lines wait for the next line or flush: the request that finds
    // the storage back (each probes it while it is known down) sends one.
    while let Some(first) = copier.rx.recv().await {
        stopping |= take(first, &mut lines, &mut waiting);
        let mut window = Some(tokio::time::Instant::now() + AUDIT_WINDOW);
        // Take what is queued, up to a batch; when the batch is not full
        // and nobody waits for it, once more at the window's end.
        loop {
            while lines.len() < AUDIT_BATCH {
                match copier.rx.try_recv() {
                    Ok(m) => stopping |= take(m, &mut lines, &mut waiting),
                    Err(_) => break,
                }
            }
            let Some(until) = window.take() else { break };
            if lines.len() >= AUDIT_BATCH || !waiting.is_empty() {
                break;
            }
            let _ = tokio::time::timeout_at(until, copier.flush.notified()).await;
        }
        held.hold(std::mem::take(&mut lines));
        // While the storage is known down nothing is tried: waiting out a
        // timeout per batch would let the queue fill and then hold every
        // request that audits.
        let outcome = if health.is_down() {
            held.note_down();
            Err(Error::StorageUnavailable(
                "found unavailable before the audit copy was tried".into(),
            ))
        } else {
            held.copy(&writer, &health).await
        };
        if stopping {
            held.report_at_stop();
            report_skipped(copier.skipped.end());
        }
        for w in waiting.drain(..) {
            let _ = w.send(match &outcome {
                Ok(()) => Ok(()),
                Err(e) => Err(health::unavailable_cause(e).map_or_else(
                    || Error::internal("audit lines not stored in the database"),
                    |c| c.to_error(),
                )),
            });
        }
        if stopping {
            return held;
        }
    }
    // Every sender gone without a stop: what is held goes with the copier.
    held.report_at_stop();
    report_skipped(copier.skipped.end());
    held
}

/// How much the audit copier holds while the storage is down; lines beyond
/// it are in the audit file only. 64 MiB is about 80,000 lines, a minute
/// or so of a busy server answering 503.
const AUDIT_HELD_BYTES: usize = 64 << 20;

/// Lines waiting for the database, oldest first, and how many did not fit.
struct Held {
    lines: Vec<AuditLine>,
    /// At most this many bytes of lines are held.
    cap: usize,
    bytes: usize,
    /// Lines left to the file since the held list was last empty; once
    /// one is, every later line is too until the held ones are copied.
    dropped: u64,
    /// Whether a copy failed for the storage being down since the last
    /// that went through (to log the outage's start and end once each).
    down: bool,
    /// The first held lines' batch whose commit went unanswered: its id
    /// and how many lines it took. Looked for before they are sent again.
    unconfirmed: Option<(i64, usize)>,
}

impl Held {
    fn new(cap: usize) -> Held {
        Held {
            lines: Vec::new(),
            cap,
            bytes: 0,
            dropped: 0,
            down: false,
            unconfirmed: None,
        }
    }

    /// Says, as the server stops, what the database's copy will not have:
    /// the lines still held and those that did not fit (all are in the
    /// audit file).
    fn report_at_stop(&self) {
        if !self.lines.is_empty() {
            tracing::error!(
                lines = self.lines.len(),
                "storage unavailable at stop: audit lines not copied to the database (they are in the audit file)"
            );
        }
        self.report_dropped();
    }

    /// Says how many lines did not fit, if any.
    fn report_dropped(&self) {
        if self.dropped > 0 {
            tracing::error!(
                lines = self.dropped,
                "storage was unavailable: audit lines beyond what is held in memory not copied to the database (they are in the audit file)"
            );
        }
    }

    /// Logs, once an outage, that lines are being held.
    fn note_down(&mut self) {
        if !self.down && !self.lines.is_empty() {
            tracing::error!(
                lines = self.lines.len(),
                "storage unavailable: audit lines held for the database until it is back"
            );
            self.down = true;
        }
    }

    /// Adds `lines` after those held; what would go over the bound is left
    /// to the file. The oldest are kept: dropping them instead would cut
    /// the copy's run in two places rather than one.
    fn hold(&mut self, lines: Vec<AuditLine>) {
        // The usual case, nothing held: the window's lines as they are.
        if self.lines.is_empty() && self.dropped == 0 {
            let bytes = lines.iter().map(|l| l.line.len()).sum();
            if bytes <= self.cap {
                self.lines = lines;
                self.bytes = bytes;
                return;
            }
        }
        for l in lines {
            // Past the first line that did not fit, none is held: a
            // shorter one after it would leave a second gap in the copy.
            if self.dropped > 0 || self.bytes + l.line.len() > self.cap {
                self.dropped += 1;
                continue;
            }
            self.bytes += l.line.len();
            self.lines.push(l);
        }
    }

    /// Copies the held lines a batch at a time, oldest first. Stops, keeping
    /// the rest, when the storage is found down; a batch the database
    /// refuses otherwise is dropped (it is in the file) so that one bad
    /// batch cannot hold the copy up for good. The error, when not all
    /// went in, is the outage's when there was one (a reader then hears
    /// the storage is unavailable, not that something broke).
    async fn copy(&mut self, writer: &Writer, health: &Health) -> Result<()> {
        let mut outcome = Ok(());
        let mut done = 0;
        if let Some((last_id, lines)) = self.unconfirmed {
            match writer.upkeep(Upkeep::AuditStored { last_id }).await {
                // It went in: those lines are not sent again.
                Ok(n) if n > 0 => done = lines.min(self.lines.len()),
                Ok(_) => {}
                Err(e) if health.is_down() || health::unavailable_cause(&e).is_some() => {
                    return Err(e);
                }
                // Not knowing, the lines are sent again: twice in the copy
                // (the same `seq` and `mac`) rather than missing from it.
                Err(e) => {
                    tracing::error!(error = %e, last_id, "cannot tell whether an audit batch was stored; copying its lines again");
                }
            }
            self.unconfirmed = None;
        }
        while done < self.lines.len() {
            let end = self.lines.len().min(done + AUDIT_BATCH);
            let batch = &self.lines[done..end];
            match writer.audit(batch).await {
                Ok(()) => done = end,
                Err(e @ Error::AuditUnconfirmed { .. }) => {
                    if let Error::AuditUnconfirmed { last_id, cause } = &e {
                        tracing::warn!(last_id, cause = %cause, "an audit batch's commit went unanswered; it is looked for before its lines are sent again");
                        self.unconfirmed = Some((*last_id, end - done));
                    }
                    outcome = Err(e);
                    break;
                }
                // The database gone under the copy (the writer does not ask
                // the probe; its error says so) is an outage like any other.
                Err(e) if health.is_down() || health::unavailable_cause(&e).is_some() => {
                    outcome = Err(e);
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, lines = end - done, "cannot copy audit lines to the database");
                    done = end;
                    outcome = Err(Error::internal("audit lines not stored in the database"));
                }
            }
        }
        if done == self.lines.len() {
            self.lines.clear();
            self.bytes = 0;
        } else {
            let copied: usize = self.lines[..done].iter().map(|l| l.line.len()).sum();
            self.bytes -= copied;
            self.lines.drain(..done);
        }
        if !self.lines.is_empty() {
            self.note_down();
        } else if self.down || self.dropped > 0 {
            if self.dropped > 0 {
                self.report_dropped();
            } else {
                tracing::info!(
                    "storage back: audit lines held while it was down copied to the database"
                );
            }
            self.down = false;
            self.dropped = 0;
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_held_while_the_storage_is_down_are_bounded_keeping_the_oldest() {
        let line = |n: i64| AuditLine {
            line: format!("line {n:04}"),
            at: n,
        };
        let mut held = Held::new(3 * 9);
        held.hold((1..=2).map(line).collect());
        held.hold((3..=5).map(line).collect());
        let kept: Vec<i64> = held.lines.iter().map(|l| l.at).collect();
        assert_eq!(kept, [1, 2, 3]);
        assert_eq!((held.bytes, held.dropped), (27, 2));
        // A shorter line that would fit in what is left is not held
        // either: past the first gap, the copy has none but the one.
        held.cap = 30;
        held.hold(vec![AuditLine {
            line: "abc".into(),
            at: 6,
        }]);
        assert_eq!(held.lines.len(), 3);
        assert_eq!((held.bytes, held.dropped), (27, 3));
    }

    /// Batches a fake writer stored: each one's last id and its lines.
    type Stored = std::sync::Arc<std::sync::Mutex<Vec<(i64, Vec<String>)>>>;

    /// Every line the fake writer stored, in order.
    fn copied_lines(stored: &Stored) -> Vec<String> {
        let stored = stored.lock().unwrap();
        stored.iter().flat_map(|(_, l)| l.clone()).collect()
    }

    /// A storage writer that stores audit batches in `stored` and answers
    /// the first `unanswered` commits as lost although they went in.
    fn fake_writer(stored: Stored, unanswered: usize) -> Writer {
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(1 << 20));
        gated_writer(stored, unanswered, gate)
    }

    /// [`fake_writer`] storing a batch only once it has a permit from
    /// `gate` (a lock on the copy's table, held while there are none).
    fn gated_writer(
        stored: Stored,
        mut unanswered: usize,
        gate: std::sync::Arc<tokio::sync::Semaphore>,
    ) -> Writer {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<writer::Job>(16);
        tokio::spawn(async move {
            let mut next_id = 0;
            while let Some(job) = rx.recv().await {
                match job {
                    writer::Job::Audit { batch, reply } => {
                        gate.acquire().await.unwrap().forget();
                        next_id += batch.lines;
                        let base = next_id - batch.lines + 1;
                        let lines = audit_batch::decode(base, &batch.body)
                            .unwrap()
                            .into_iter()
                            .map(|l| l.line)
                            .collect();
                        stored.lock().unwrap().push((next_id, lines));
                        let _ = reply.send(if unanswered > 0 {
                            unanswered -= 1;
                            Err(Error::AuditUnconfirmed {
                                last_id: next_id,
                                cause: "connection reset".into(),
                            })
                        } else {
                            Ok(writer::Applied::empty())
                        });
                    }
                    writer::Job::Upkeep {
                        task: Upkeep::AuditStored { last_id },
                        reply,
                    } => {
                        let n = stored
                            .lock()
                            .unwrap()
                            .iter()
                            .find(|(id, _)| *id == last_id)
                            .map_or(0, |(_, l)| l.len() as u64);
                        let _ = reply.send(Ok(writer::Applied::counted(n)));
                    }
                    other => other.answer(Err(Error::internal("not in this test"))),
                }
            }
        });
        Writer::new(tx)
    }

    #[tokio::test]
    async fn a_batch_whose_commit_went_unanswered_is_not_copied_twice() {
        let stored = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = fake_writer(stored.clone(), 1);
        let health = Health::default();
        let mut held = Held::new(AUDIT_HELD_BYTES);
        held.hold((1..=3).map(line).collect());
        // The commit went in, its answer did not come: the lines stay held.
        assert!(held.copy(&writer, &health).await.is_err());
        assert_eq!(held.lines.len(), 3);
        // More lines come; the next copy finds the batch stored and sends
        // only what came after it.
        held.hold((4..=5).map(line).collect());
        held.copy(&writer, &health).await.unwrap();
        assert!(held.lines.is_empty());
        let copied = copied_lines(&stored);
        assert_eq!(copied, ["line 1", "line 2", "line 3", "line 4", "line 5"]);
    }

    #[tokio::test]
    async fn the_copier_stops_when_told_saying_what_it_still_holds() {
        let stored = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = fake_writer(stored.clone(), 0);
        let health = std::sync::Arc::new(Health::default());
        health.record(Err("connection refused".into()));
        let (queue, copier) = AuditQueue::new(16);
        let copier = tokio::spawn(audit_writer(writer, health, copier));
        for n in 1..=2 {
            queue.push(line(n)).await.unwrap();
        }
        let (stop, stopped) = tokio::sync::oneshot::channel();
        queue.tx.send(AuditMsg::Stop(stop)).await.unwrap();
        // The storage is down: the stop is answered that the lines were
        // not copied, and the copier ends (its sender still open) with them.
        assert!(stopped.await.unwrap().is_err());
        let held = tokio::time::timeout(std::time::Duration::from_secs(5), copier)
            .await
            .expect("the copier ended")
            .unwrap();
        assert_eq!(held.lines.len(), 2);
        assert!(stored.lock().unwrap().is_empty());
        drop(queue);
    }

    /// A queue of `capacity` lines whose copier, the storage up, copies
    /// through `writer`.
    fn copying_to(writer: Writer, capacity: usize) -> AuditQueue {
        let (queue, copier) = AuditQueue::new(capacity);
        let health = std::sync::Arc::new(Health::default());
        tokio::spawn(audit_writer(writer, health, copier));
        queue
    }

    /// What the copier answers a reader's flush.
    async fn flush(queue: &AuditQueue) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        queue.tx.send(AuditMsg::Flush(tx)).await.unwrap();
        queue.flush.notify_one();
        rx.await.unwrap()
    }

    #[tokio::test]
    async fn a_reader_is_told_the_storage_is_unavailable_when_the_copy_meets_an_outage() {
        // The storage was found up, and the copy's commit then went
        // unanswered (the connection broke).
        let queue = copying_to(fake_writer(Default::default(), 1), 16);
        queue.push(line(1)).await.unwrap();
        let e = flush(&queue).await.unwrap_err();
        assert!(matches!(e, Error::StorageUnavailable(_)), "{e:?}");
    }

    fn line(n: i64) -> AuditLine {
        AuditLine {
            line: format!("line {n}"),
            at: n,
        }
    }

    #[tokio::test]
    async fn a_copier_held_up_holds_no_request_and_leaves_one_gap_in_the_copy() {
        let stored: Stored = Default::default();
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let queue = copying_to(gated_writer(stored.clone(), 0, gate.clone()), 4);
        // Line 1 goes to the writer, which waits for the gate; 2-5 fill
        // the queue. 6 waits for room at most the bound, then is left to
        // the file, and so is 7 at once.
        queue.push(line(1)).await.unwrap();
        tokio::time::sleep(AUDIT_WINDOW * 3).await;
        for n in 2..=5 {
            queue.push(line(n)).await.unwrap();
        }
        let t = std::time::Instant::now();
        queue.push(line(6)).await.unwrap();
        queue.push(line(7)).await.unwrap();
        let took = t.elapsed();
        assert!(
            took >= AUDIT_QUEUE_WAIT && took < AUDIT_QUEUE_WAIT * 2,
            "{took:?}"
        );
        assert!(queue.skipped.is_on());
        // The lock goes: the copier copies what it took. The first line
        // after that is queued again (and says how many were not).
        gate.add_permits(100);
        for _ in 0..200 {
            if queue.tx.capacity() == queue.tx.max_capacity() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(queue.tx.capacity(), 4, "the copier never caught up");
        queue.push(line(8)).await.unwrap();
        assert!(!queue.skipped.is_on());
        flush(&queue).await.unwrap();
        let copied = copied_lines(&stored);
        assert_eq!(
            copied,
            ["line 1", "line 2", "line 3", "line 4", "line 5", "line 8"]
        );
    }

    fn value(text: &str) -> Cached {
        Some(std::sync::Arc::new(zeroize::Zeroizing::new(
            text.as_bytes().to_vec(),
        )))
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_cached() {
        let cache = ReadCache::default();
        cache.hears_every_change(true);
        // A reader misses and reads the old value from the database...
        let read_at = cache.get("token/id/x").unwrap_err();
        // ...while a writer replaces it and forgets the key.
        cache.forget("token/id/x");
        cache.insert("token/id/x", value("old"), read_at);
        assert!(
            cache.get("token/id/x").is_err(),
            "the stale value was cached"
        );

        // A read that began after the write is cached.
        let read_at = cache.get("token/id/x").unwrap_err();
        cache.insert("token/id/x", value("new"), read_at);
        let hit = cache.get("token/id/x").unwrap().unwrap();
        assert_eq!(hit.as_slice(), b"new");
        // And the next change drops it.
        cache.forget("token/id/x");
        assert!(cache.get("token/id/x").is_err());

        // A change of another key meanwhile (a fleet's hosts touch their
        // records all the time) does not keep a read from being cached.
        let read_at = cache.get("token/id/y").unwrap_err();
        cache.forget("hosts/host/z");
        cache.insert("token/id/y", value("y"), read_at);
        assert!(cache.get("token/id/y").is_ok(), "a read was not cached");
        // Everything forgotten at once (the listener reconnected): a read
        // that began before is not cached.
        let read_at = cache.get("token/id/w").unwrap_err();
        cache.forget_all();
        cache.insert("token/id/w", value("w"), read_at);
        assert!(cache.get("token/id/w").is_err());
    }

    #[test]
    fn a_parsed_value_lives_and_dies_with_the_text_it_came_from() {
        let cache = ReadCache::default();
        let read_at = cache.get("k").unwrap_err();
        cache.insert("k", value("1"), read_at);
        cache.set_parsed("k", std::sync::Arc::new(1u32), cache.generation());
        assert_eq!(*cache.get_parsed::<u32>("k").unwrap().unwrap(), 1);
        assert!(cache.get_parsed::<String>("k").is_none(), "another type");
        // A value parsed before a change is not kept after it.
        let before = cache.generation();
        cache.forget("k");
        let read_at = cache.get("k").unwrap_err();
        cache.insert("k", value("2"), read_at);
        cache.set_parsed("k", std::sync::Arc::new(1u32), before);
        assert!(
            cache.get_parsed::<u32>("k").is_none(),
            "a stale parse was kept"
        );
    }

    #[test]
    fn records_are_kept_only_while_this_server_hears_of_every_change() {
        assert!(cacheable("token/id/abc"));
        assert!(cacheable("hosts/host/0b3e"));
        assert!(cacheable("policy/default"));
        assert!(!cacheable("mount/x/otp/-/abc"));
        assert!(!cacheable("hosts/join/abc"));

        // A PostgreSQL server whose listener is not connected: a token is
        // not kept (a change on another server could go unheard), while
        // configuration is, for its second.
        let cache = ReadCache::default();
        let read_at = cache.get("token/id/a").unwrap_err();
        cache.insert("token/id/a", value("t"), read_at);
        assert!(cache.get("token/id/a").is_err(), "a token was kept unheard");
        let read_at = cache.get("policy/p").unwrap_err();
        cache.insert("policy/p", value("p"), read_at);
        assert!(cache.get("policy/p").is_ok());

        // Listening: kept until a change is heard of.
        cache.hears_every_change(true);
        let read_at = cache.get("token/id/a").unwrap_err();
        cache.insert("token/id/a", value("t"), read_at);
        assert_eq!(cache.get("token/id/a").unwrap().unwrap().as_slice(), b"t");
        cache.changed("token/id/a");
        assert!(cache.get("token/id/a").is_err());

        // The listener lost: what was kept is no longer used.
        let read_at = cache.get("hosts/host/h").unwrap_err();
        cache.insert("hosts/host/h", value("h"), read_at);
        assert!(cache.get("hosts/host/h").is_ok());
        cache.hears_every_change(false);
        assert!(cache.get("hosts/host/h").is_err());
        // The zero-address roles, read by every creds request, are
        // configuration like a role: cached on both backends.
        assert!(cacheable("mount/x/config/zeroaddress"));
    }
}
