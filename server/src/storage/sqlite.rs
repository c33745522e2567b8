//! The embedded SQLite backend, on rusqlite: its migrations, reads and
//! writes. (sqlx's SQLite driver hands every statement to a thread of the
//! connection's own and back; for the primary-key lookups and
//! one-row writes this server makes, those two thread switches cost more
//! than the statement.) Here reads run on the calling thread (a lookup in
//! SQLite's page cache takes microseconds), and all writes run on one
//! thread of their own that commits whatever is queued in one transaction
//! (group commit), in the order it arrived; a commit's WAL frames reach
//! the file in one system call (`wal_writes`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::mpsc;

use super::audit_batch;
use super::writer::{Applied, Job, Op, Outcome, Unit, Upkeep, MAX_UNITS, QUEUE};
use crate::error::{Error, Result};

/// Idle read connections kept for reuse (more are opened while more
/// callers read at once).
const READERS_KEPT: usize = 8;

pub struct Sqlite {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
}

/// The file of a `sqlite://PATH[?options]` URL.
pub fn path_of(url: &str) -> Result<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path == ":memory:" {
        return Err(Error::invalid(format!(
            "storage URL {url:?} names no file: use sqlite:///PATH/TO/FILE.db"
        )));
    }
    Ok(PathBuf::from(path))
}

/// Held by the server serving an SQLite file, for as long as it runs: an
/// SQLite file belongs to one running server, which caches on the
/// understanding that every change goes through it (a second one would,
/// for one, go on accepting a token the first revoked).
pub struct Serving {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Takes the serving lock of the file at `path` (a `flock`, which SQLite's
/// own `fcntl` locks, an operator's `sqlite3` and `snapshot save` never
/// meet); None when there is no such file yet.
pub fn hold_for_serving(path: &Path) -> Result<Option<Serving>> {
    use nix::errno::Errno;
    use nix::fcntl::{Flock, FlockArg};
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot open {}: {e}",
                path.display()
            )))
        }
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(Serving { _lock: lock })),
        Err((_, Errno::EWOULDBLOCK)) => Err(Error::invalid(format!(
            "{} is served by another gatepass-server already: an SQLite file belongs to one \
             running server (several servers share a PostgreSQL database instead)",
            path.display()
        ))),
        Err((_, e)) => Err(Error::internal(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

pub(super) fn open(path: &Path) -> Result<Connection> {
    super::wal_writes::install();
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The busy timeout covers other processes and the checkpointer; WAL
    // lets reads run beside the writer. It is short: a file another process
    // keeps locked fails requests promptly ("database is locked", a 503)
    // rather than holding them, and the reads that wait run on the calling
    // thread.
    conn.busy_timeout(super::health::SQLITE_BUSY_TIMEOUT)?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The WAL grows to hold what a checkpoint has not copied yet; without a
    // limit it keeps its largest size for ever once started over (the
    // checkpointer cuts it back when writes pause, see `checkpoint_loop`).
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    Ok(conn)
}

/// The schema, in order; each applied once, in a transaction of its own,
/// and recorded in `_sqlx_migrations` (the table and the form in which
/// earlier versions, which migrated with sqlx, recorded theirs).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "audit time",
        include_str!("../../migrations/sqlite/0002_audit_time.sql"),
    ),
    (
        3,
        "audit batches",
        include_str!("../../migrations/sqlite/0003_audit_batches.sql"),
    ),
];

/// Creates or brings up to date the tables of the database at `path`.
/// Refuses a database that a newer version has migrated further.
pub fn migrate(path: &Path) -> Result<()> {
    use sha2::Digest;
    super::wal_writes::install();
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(super::health::SQLITE_BUSY_TIMEOUT)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
            version BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            success BOOLEAN NOT NULL,
            checksum BLOB NOT NULL,
            execution_time BIGINT NOT NULL
        )",
    )?;
    let applied: Vec<i64> = {
        let mut st = conn.prepare("SELECT version FROM _sqlx_migrations WHERE success")?;
        let rows = st.query_map([], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(v) = applied.iter().find(|v| **v > known) {
        return Err(Error::internal(format!(
            "{} was migrated by a newer gatepass-server (schema version {v}; this one knows up to {known})",
            path.display()
        )));
    }
    for (version, description, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let started = std::time::Instant::now();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (?1, ?2, TRUE, ?3, ?4)",
            rusqlite::params![
                version,
                description,
                sha2::Sha384::digest(sql.as_bytes()).to_vec(),
                i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX)
            ],
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// Bytes the WAL file is cut back to when SQLite starts it over: more than
/// it grows to before the writer starts it over under load
/// ([`WAL_MAX_FRAMES`]), so that the writer never also truncates a large
/// file then. That truncation held a batch up for 760 ms (its fsync waited
/// for the freed blocks); the checkpointer cuts the WAL back instead, once
/// writes pause.
const WAL_SIZE_LIMIT: i64 = 2 * WAL_MAX_BYTES;

/// Makes the database give freed pages back to the file system on demand
/// (`PRAGMA incremental_vacuum`, see [`Upkeep::Vacuum`]) rather than keep
/// them for ever. SQLite fixes this mode when the first table is made; a
/// database made before gatepass set it is rebuilt once (VACUUM), which
/// needs free space about its size and takes a while for a large one, so
/// it is logged. Runs before the migrations and before anything serves.
pub fn set_incremental_vacuum(path: &Path) -> Result<()> {
    let conn = Connection::open(path)?;
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?;
    if mode == 2 {
        return Ok(());
    }
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    if pages > 0 {
        tracing::info!(file = %path.display(), pages, "rebuilding the database once so that it can give freed space back");
    }
    // On a new, empty file this only writes the header with the mode.
    if let Err(e) = conn.execute_batch("VACUUM") {
        // Most likely too little free space for the copy: the database
        // works as before, it only keeps its freed pages.
        tracing::warn!(file = %path.display(), error = %e, "could not rebuild the database for incremental vacuum; freed space stays in the file");
    }
    Ok(())
}

/// The database file and its WAL, in bytes (what the storage takes on disk).
pub fn size_on_disk(path: &Path) -> u64 {
    let mut total = 0;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(m) = std::fs::metadata(&p) {
            total += m.len();
        }
    }
    total
}

impl Sqlite {
    /// Opens the (already migrated) database and starts its writer thread.
    pub fn open(path: &Path) -> Result<(Sqlite, mpsc::Sender<Job>)> {
        Sqlite::open_with(path, WAL_MAX_FRAMES, CHECKPOINT_EVERY)
    }

    /// [`Sqlite::open`], the WAL started over under load only beyond
    /// `max_frames`, and checkpointed at most every `checkpoint_every`.
    fn open_with(
        path: &Path,
        max_frames: i64,
        checkpoint_every: Duration,
    ) -> Result<(Sqlite, mpsc::Sender<Job>)> {
        let writer = open(path)?;
        // A WAL left large by the last run is copied back now, before any
        // request could wait for it (the writer would otherwise start it
        // over at its first write, holding requests for as long). Only a
        // head start: on a full disk it fails, and the server still starts
        // (and answers 503 for writes until there is room, as it does when
        // the disk fills while it runs), the checkpointer trying again.
        if let Err(e) = writer.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "cannot copy the last run's WAL into the database now; it is tried again while serving");
        }
        // Checkpoints (copying the WAL into the database file, with an
        // fsync) run on a thread of their own, so that no commit waits for
        // one: left to the writer, every thousandth page's commit would.
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        // A WAL started over is cut back to twice the bound (the server's
        // own bound gives `WAL_SIZE_LIMIT`), below the writer's cap.
        writer.pragma_update(
            None,
            "journal_size_limit",
            WAL_SIZE_LIMIT.min(2 * max_frames * WAL_FRAME_BYTES),
        )?;
        // Room for every statement the writer runs (about twenty, upkeep's
        // included), so that none is evicted and compiled again.
        writer.set_prepared_statement_cache_capacity(64);
        let checkpointer = Checkpointer {
            conn: open(path)?,
            file: std::mem::ManuallyDrop::new(std::fs::File::open(path)?),
            wal: wal_path(path),
        };
        let restart = Arc::new(AtomicBool::new(false));
        let (dirty_tx, dirty_rx) = std::sync::mpsc::sync_channel(1);
        let r = restart.clone();
        std::thread::Builder::new()
            .name("gatepass-ckpt".into())
            .spawn(move || {
                checkpoint_loop(checkpointer, r, dirty_rx, max_frames, checkpoint_every)
            })?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let cap = WalCap::new(wal_path(path), max_frames);
        std::thread::Builder::new()
            .name("gatepass-writer".into())
            .spawn(move || write_loop(writer, rx, restart, dirty_tx, cap))?;
        let db = Sqlite {
            path: path.to_path_buf(),
            readers: Mutex::new(Vec::new()),
        };
        Ok((db, tx))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let idle = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => open(&self.path)?,
        };
        let out = f(&conn);
        let mut idle = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < READERS_KEPT {
            idle.push(conn);
        }
        Ok(out?)
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read(|c| {
            c.prepare_cached("SELECT value FROM entries WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()
        })
    }

    /// Keys `from <= key < to` in byte order, at most `limit` (all when None).
    pub fn keys(
        &self,
        from: &str,
        to: &str,
        limit: Option<i64>,
        order: super::KeyOrder,
    ) -> Result<Vec<String>> {
        self.read(|c| {
            let mut st = c.prepare_cached(match order {
                super::KeyOrder::Ascending => {
                    "SELECT key FROM entries WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3"
                }
                super::KeyOrder::Descending => {
                    "SELECT key FROM entries WHERE key >= ?1 AND key < ?2 ORDER BY key DESC LIMIT ?3"
                }
            })?;
            let rows = st.query_map(rusqlite::params![from, to, limit.unwrap_or(-1)], |r| {
                r.get(0)
            })?;
            rows.collect()
        })
    }

    pub fn count(&self, from: &str, to: &str) -> Result<u64> {
        self.read(|c| {
            let mut st =
                c.prepare_cached("SELECT COUNT(*) FROM entries WHERE key >= ?1 AND key < ?2")?;
            st.query_row(rusqlite::params![from, to], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
        })
    }

    /// Rows after id `after` whose `at` is within `since..=until`.
    /// The last audit line copied into the database, if any.
    pub fn last_audit_line(&self) -> Result<Option<String>> {
        let last: i64 = self.read(|c| {
            c.query_row(
                "SELECT max(coalesce((SELECT max(id) FROM audit_events), 0), \
                 coalesce((SELECT max(last_id) FROM audit_batches), 0))",
                [],
                |r| r.get(0),
            )
        })?;
        if last == 0 {
            return Ok(None);
        }
        Ok(self
            .audit_rows(last - 1, 1, i64::MIN, i64::MAX)?
            .pop()
            .map(|(_, line)| line))
    }

    pub fn audit_rows(
        &self,
        after: i64,
        limit: i64,
        since: i64,
        until: i64,
    ) -> Result<Vec<(i64, String)>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, line FROM audit_events WHERE id > ?1 AND at >= ?2 AND at <= ?3 \
                 ORDER BY id LIMIT ?4",
            )?;
            let rows =
                st.query_map([after, since, until, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let mut out = rows.collect::<rusqlite::Result<Vec<(i64, String)>>>()?;
            // Then the batches' lines, whose ids are all higher; a few
            // batches at a time (a page of lines is usually in one).
            let want = usize::try_from(limit).unwrap_or(0);
            let mut batches = c.prepare_cached(
                "SELECT last_id, base_id, body FROM audit_batches \
                 WHERE last_id > ?1 AND last_at >= ?2 AND first_at <= ?3 \
                 ORDER BY last_id LIMIT 4",
            )?;
            let mut from = after;
            while out.len() < want {
                let rows = batches
                    .query_map([from, since, until], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let Some((last, ..)) = rows.last() else { break };
                from = *last;
                for (_, base, body) in &rows {
                    audit_batch::read_into(*base, body, after, (since, until), want, &mut out)
                        .map_err(not_sqlite)?;
                }
            }
            Ok(out)
        })
    }
}

/// Whether the file can be opened and read, and with `write`, whether its
/// write lock can be taken (then let go at once): the cause when not.
pub fn probe(path: &Path, write: bool) -> std::result::Result<(), String> {
    let check = || -> rusqlite::Result<()> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(super::health::PROBE_TIMEOUT)?;
        conn.query_row(
            "SELECT count(*) FROM entries WHERE key = ''",
            [],
            |_| Ok(()),
        )?;
        if write {
            conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK")?;
        }
        Ok(())
    };
    check().map_err(|e| e.to_string())
}

/// How often at most the WAL is checkpointed while writes go on.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Bytes the WAL may hold, while writes go on without a pause, before the
/// writer starts it over all the same: 64 MiB, about a quarter of a second
/// of OTP creds at this server's full rate on 2 cores. A bound of 1 GiB
/// (a burst of several seconds never restarting) made each restart, when
/// it came under writes that never pause (retention's paced steps beside
/// the clients), hold requests up for 221 ms; at 64 MiB, with the
/// checkpointer caught up first, no request waited 100 ms (BENCHMARKS.md,
/// "Disk").
const WAL_MAX_BYTES: i64 = 64 * 1024 * 1024;
const WAL_MAX_FRAMES: i64 = WAL_MAX_BYTES / 4096;

/// A WAL frame of a database of 4 KiB pages (SQLite's default, which
/// gatepass keeps): a 24-byte header and the page.
const WAL_FRAME_BYTES: i64 = 24 + 4096;

/// A WAL file larger than this (16 MiB) is cut back to nothing once the
/// writer has been quiet for [`QUIET`], giving its space back; a smaller
/// one is started over by SQLite at the next write.
const WAL_CUT_BYTES: u64 = 16 * 1024 * 1024;

/// How long the writer must have written nothing for the checkpointer to
/// cut the WAL back: longer than the gaps between the batches of a steady
/// load, so that it happens between bursts of writes, not during one.
const QUIET: Duration = Duration::from_millis(100);

/// Checkpoints run back to back, at most, before the WAL is started over.
const CATCH_UP_ROUNDS: usize = 3;

/// Times a quiet moment's cut is tried before the checkpointer waits for
/// the next writes (after which it tries again).
const CUT_TRIES: usize = 10;

/// Frames a catch-up checkpoint may copy and still count as caught up:
/// what a few write batches add (a quarter of a MiB).
const CAUGHT_UP_FRAMES: i64 = 64;

/// Checkpoints after writes, at most once per [`CHECKPOINT_EVERY`], and
/// once more when the writer stops; sleeps while nothing is written.
///
/// A PASSIVE checkpoint copies what it can without waiting for (or
/// blocking) the writer or readers. But under steady writes the WAL is
/// never wholly copied when the writer starts its next transaction, so
/// SQLite never starts it over and it grows. Starting it over costs every
/// write that waits meanwhile: the copy of what no checkpoint has copied
/// yet and two fsyncs (the WAL's and the database's), and then the first
/// commit into the restarted WAL fsyncs its header. On a disk shared with
/// other work an fsync takes from 1 to 40 ms. So the WAL is not started
/// over at each chance: it grows, and once the writer has been quiet for
/// [`QUIET`] the checkpointer copies the rest and cuts it back to nothing
/// (TRUNCATE), with no request waiting. Only under writes that never
/// pause until the WAL holds [`WAL_MAX_FRAMES`] does the writer start it
/// over during load: the checkpointer first catches up — checkpoints again at once,
/// each copying only what was written during the one before, until one
/// copies little — and only then asks the writer, which starts the WAL
/// over after its current batch with a few pages left to copy. Asked from
/// here, a RESTART would hold the writer off through SQLite's busy-wait
/// sleeps (1, 2, 5, 10 ms…). The restart's sync of the database file
/// writes every page copied into it since its last sync: SQLite syncs it
/// only when a checkpoint reaches the WAL's end, which under such writes
/// none does, so the checkpointer syncs what each of its checkpoints
/// copied (left to the kernel, those pages stay in memory for up to 30 s,
/// and the restart wrote up to the whole 64 MiB while requests waited).
fn checkpoint_loop(
    ckpt: Checkpointer,
    restart: Arc<AtomicBool>,
    dirty: std::sync::mpsc::Receiver<()>,
    max_frames: i64,
    checkpoint_every: Duration,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let conn = &ckpt.conn;
    // The frames in the WAL and how many of them were copied so far; what
    // a checkpoint copied is synced here, not by the restart (see above).
    let synced = std::cell::Cell::new(0);
    let checkpoint = || {
        let (frames, copied) = conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
            .map_err(|e| tracing::warn!(error = %e, "SQLite checkpoint failed"))
            .ok()?;
        if copied != synced.get() {
            ckpt.sync();
            synced.set(copied);
        }
        Some((frames, copied))
    };
    'idle: while dirty.recv().is_ok() {
        // Writes go on: a checkpoint at most every CHECKPOINT_EVERY.
        'idle_writes: loop {
            std::thread::sleep(checkpoint_every);
            let Some((frames, mut copied)) = checkpoint() else {
                continue 'idle;
            };
            if frames > max_frames {
                for _ in 0..CATCH_UP_ROUNDS {
                    let Some((_, now_copied)) = checkpoint() else {
                        break;
                    };
                    // Below zero when the WAL was started over meanwhile.
                    let step = now_copied - copied;
                    copied = now_copied;
                    if step <= CAUGHT_UP_FRAMES {
                        break;
                    }
                }
                restart.store(true, Ordering::Release);
            }
            match dirty.recv_timeout(QUIET) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    // A reader still in the WAL (or a write that came just
                    // then) makes the cut give up: again while it stays
                    // quiet, a few times.
                    if ckpt.wal_is_large() {
                        for _ in 0..CUT_TRIES {
                            if cut_wal(conn) {
                                break;
                            }
                            match dirty.recv_timeout(QUIET) {
                                Ok(()) => continue 'idle_writes,
                                Err(RecvTimeoutError::Timeout) => {}
                                Err(RecvTimeoutError::Disconnected) => break 'idle,
                            }
                        }
                    }
                    continue 'idle;
                }
                Err(RecvTimeoutError::Disconnected) => break 'idle,
            }
        }
    }
    let _ = checkpoint();
}

/// The checkpointer's connection, the database file it syncs, and the
/// WAL's path.
struct Checkpointer {
    conn: Connection,
    /// Never closed: closing any descriptor of a file drops every POSIX
    /// lock this process holds on it, those of SQLite's own connections
    /// too (SQLite keeps its own descriptors open for that reason). One
    /// descriptor per database opened, for the life of the process.
    file: std::mem::ManuallyDrop<std::fs::File>,
    wal: PathBuf,
}

/// The WAL's file beside the database at `path`.
fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

impl Checkpointer {
    /// Whether the WAL's file holds more than [`WAL_CUT_BYTES`]. Its size,
    /// not the frames in it: after the writer started it over, a few
    /// frames may sit at the start of a file that keeps the size it grew
    /// to (up to `journal_size_limit`), which only a cut gives back.
    fn wal_is_large(&self) -> bool {
        std::fs::metadata(&self.wal).is_ok_and(|m| m.len() > WAL_CUT_BYTES)
    }

    /// Writes the pages checkpoints copied into the database file to disk.
    /// Only their data: the file's size is SQLite's to change (and sync).
    fn sync(&self) {
        let started = std::time::Instant::now();
        if let Err(e) = self.file.sync_data() {
            tracing::warn!(error = %e, "syncing the SQLite database file failed");
        }
        tracing::trace!(
            millis = started.elapsed().as_millis() as u64,
            "SQLite database file synced after a checkpoint"
        );
    }
}

/// Copies what is left of the WAL and cuts it to nothing, while the
/// writer is quiet. A write that comes meanwhile waits for it (its
/// transaction's busy wait), as it would for any checkpoint holding the
/// write lock; this one gives up at once rather than wait for readers.
/// Whether it was cut.
fn cut_wal(conn: &Connection) -> bool {
    let started = std::time::Instant::now();
    // Its first column is 1 when it could not finish (busy).
    let cut = conn.busy_timeout(Duration::ZERO).and_then(|()| {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
    });
    let restored = conn.busy_timeout(super::health::SQLITE_BUSY_TIMEOUT);
    match cut.and_then(|busy| restored.map(|()| busy)) {
        Ok(0) => {
            tracing::debug!(
                millis = started.elapsed().as_millis() as u64,
                "SQLite WAL cut back"
            );
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::debug!(error = %e, "SQLite WAL not cut back");
            false
        }
    }
}

fn write_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    restart: Arc<AtomicBool>,
    dirty: std::sync::mpsc::SyncSender<()>,
    mut cap: WalCap,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_UNITS {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let outcome = batch(&mut conn, &jobs);
        slow("write batch", started.elapsed(), jobs.len());
        match outcome {
            Ok(results) => {
                for (job, r) in jobs.into_iter().zip(results) {
                    job.answer(Ok(r));
                }
            }
            Err(e) if super::health::sqlite_unavailable(&e) => {
                // The file is locked or unreadable: trying each job again,
                // or the jobs that queued meanwhile, would make each wait
                // out the busy timeout in turn. They fail now; later ones
                // find the lock again (or not).
                let cause = e.to_string();
                for job in jobs {
                    job.answer(Err(Error::StorageUnavailable(cause.clone())));
                }
                while let Ok(job) = rx.try_recv() {
                    job.answer(Err(Error::StorageUnavailable(cause.clone())));
                }
            }
            Err(e) if jobs.len() == 1 => {
                if let Some(job) = jobs.into_iter().next() {
                    job.answer(Err(e.into()));
                }
            }
            Err(e) => {
                // The batch was rolled back: each job again on its own, so
                // that one failing write fails only its own caller.
                tracing::warn!(error = %e, jobs = jobs.len(), "batched write failed; applying its jobs one by one");
                for job in jobs {
                    let r = batch(&mut conn, std::slice::from_ref(&job))
                        .map(|mut v| v.pop().unwrap_or_else(Applied::empty));
                    job.answer(r.map_err(Error::from));
                }
            }
        }
        // A full channel means a checkpoint is already due.
        let _ = dirty.try_send(());
        // At once: the checkpointer asks just after it caught up, and what
        // is left to copy grows with every batch from then on.
        if restart.swap(false, Ordering::Acquire) || cap.passed() {
            restart_wal(&conn);
        }
    }
}

/// The writer's own bound on the WAL file, for writes that outrun the
/// checkpointer. The checkpointer looks every [`CHECKPOINT_EVERY`] and
/// then catches up before it asks for a restart; writes of large values
/// with no pause (256 KiB each at 160 MB a second or more, in a release
/// build on 2 cores) grew the WAL by that much meanwhile, to 165-275 MB
/// against a bound of 32 MiB. Past [`WAL_CAP_FACTOR`] times the bound the
/// writer starts the WAL over itself, copying what is left while writes
/// wait: what the disk can take then sets the pace of writing, not the
/// size of the WAL.
struct WalCap {
    wal: PathBuf,
    bytes: u64,
    next_look: std::time::Instant,
    over: bool,
}

/// The file size, in multiples of the bound at which the checkpointer asks
/// for a restart, past which the writer makes one itself. Well above what
/// the checkpointer lets the WAL reach under request loads (the file's
/// own limit, [`WAL_SIZE_LIMIT`], is twice the bound), so that requests
/// never wait for this: it is for writes that nothing else keeps up with.
const WAL_CAP_FACTOR: u64 = 4;

/// How often at most the writer looks at the WAL file's size: a `stat`
/// per batch would be thousands a second under load.
const WAL_CAP_EVERY: Duration = Duration::from_millis(10);

/// How long after a restart the cap asked for it looks again. A restart
/// that succeeds cuts the file back at the next commit; one that a reader
/// holds off (a snapshot being saved) is tried again this much later, not
/// at every look.
const WAL_CAP_RETRY: Duration = Duration::from_millis(100);

impl WalCap {
    fn new(wal: PathBuf, max_frames: i64) -> WalCap {
        WalCap {
            wal,
            bytes: u64::try_from(max_frames.saturating_mul(WAL_FRAME_BYTES)).unwrap_or(0)
                * WAL_CAP_FACTOR,
            next_look: std::time::Instant::now(),
            over: false,
        }
    }

    /// True when the WAL file is past the cap, looked at once per
    /// [`WAL_CAP_EVERY`] (once per [`WAL_CAP_RETRY`] while it stays past).
    fn passed(&mut self) -> bool {
        let now = std::time::Instant::now();
        if now < self.next_look {
            return false;
        }
        let passed = std::fs::metadata(&self.wal).is_ok_and(|m| m.len() > self.bytes);
        self.next_look = now + if passed { WAL_CAP_RETRY } else { WAL_CAP_EVERY };
        if passed && !self.over {
            tracing::warn!(
                file = %self.wal.display(),
                cap = self.bytes,
                "writes outran the SQLite checkpointer: the writer starts the WAL over itself"
            );
        }
        self.over = passed;
        passed
    }
}

/// The checkpointer copied nearly all of the WAL a moment ago: this copies
/// the rest and waits for readers to leave it, so that the next commit
/// writes it from its start again.
fn restart_wal(conn: &Connection) {
    let started = std::time::Instant::now();
    // Without waiting: a reader that stays long (a snapshot being saved)
    // would otherwise hold every write up for the busy timeout each time;
    // the WAL is started over once it has gone.
    let restarted = conn
        .busy_timeout(Duration::ZERO)
        .and_then(|()| conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())));
    let restored = conn.busy_timeout(super::health::SQLITE_BUSY_TIMEOUT);
    if let Err(e) = restarted.and(restored) {
        tracing::warn!(error = %e, "SQLite WAL restart failed");
    }
    slow("WAL restart", started.elapsed(), 0);
}

/// Logs a write that held the writer up long enough for requests to notice.
fn slow(what: &str, took: Duration, jobs: usize) {
    if took >= SLOW_WRITE {
        tracing::warn!(millis = took.as_millis() as u64, jobs, "slow SQLite {what}");
    }
}

/// A write that takes this long is logged (requests queue behind it).
const SLOW_WRITE: Duration = Duration::from_millis(50);

/// Applies the jobs in arrival order in one transaction.
fn batch(conn: &mut Connection, jobs: &[Job]) -> rusqlite::Result<Vec<Applied>> {
    let tx = WriteTx::begin(conn)?;
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        out.push(match job {
            Job::Unit { unit, .. } => apply_unit(tx.conn, unit)?,
            Job::Audit { batch, .. } => {
                insert_audit(tx.conn, batch)?;
                Applied::empty()
            }
            Job::Upkeep { task, .. } => Applied::counted(upkeep(tx.conn, *task)?),
        });
    }
    tx.commit()?;
    Ok(out)
}

/// The writer's transaction, begun and committed with statements prepared
/// once per connection. rusqlite's `Transaction` runs `BEGIN` and `COMMIT`
/// through `execute_batch`, which parses them again for every batch: two
/// statements compiled per commit, thousands of times a second under load.
/// Rolled back when dropped unfinished, a failed commit included (SQLite
/// may leave the transaction open then).
struct WriteTx<'c> {
    conn: &'c Connection,
}

impl<'c> WriteTx<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<WriteTx<'c>> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(WriteTx { conn })
    }

    fn commit(self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "SQLite rollback failed");
            }
        }
    }
}

/// Stores a batch of audit lines (`audit_batch`), numbered on from the
/// counter `audit_events` kept for its ids, so ids are never used twice.
fn insert_audit(tx: &Connection, batch: &audit_batch::Batch) -> rusqlite::Result<()> {
    // The counter's row is there since migration 3.
    let last_id: i64 = tx
        .prepare_cached(
            "UPDATE sqlite_sequence SET seq = seq + ?1 WHERE name = 'audit_events' RETURNING seq",
        )?
        .query_row([batch.lines], |r| r.get(0))?;
    tx.prepare_cached(
        "INSERT INTO audit_batches (last_id, base_id, lines, first_at, last_at, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(rusqlite::params![
        last_id,
        last_id - batch.lines + 1,
        batch.lines,
        batch.first_at,
        batch.last_at,
        batch.body
    ])?;
    Ok(())
}

/// An error of ours where rusqlite's is expected.
fn not_sqlite(e: Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

/// One step of the copy's retention: of the oldest `limit` lines by id,
/// those older than `before`, first of the lines stored a row each
/// (`PRUNE_AUDIT`), then of the batches: one whose lines are all older
/// goes, one holding newer lines too is written again without the older
/// ones (their ids kept). Returns the lines deleted.
fn prune_audit(tx: &Connection, before: i64, limit: i64) -> rusqlite::Result<u64> {
    let mut gone = tx
        .prepare_cached(&super::writer::PRUNE_AUDIT.replace('$', "?"))?
        .execute(rusqlite::params![limit, before])? as u64;
    let mut next = tx.prepare_cached(
        "SELECT last_id, lines, first_at, last_at, base_id FROM audit_batches \
         WHERE last_id > ?1 ORDER BY last_id LIMIT 1",
    )?;
    let (mut seen, mut from) = (0i64, i64::MIN);
    while seen < limit {
        let Some((last_id, lines, first_at, last_at, base_id)) = next
            .query_row([from], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()?
        else {
            break;
        };
        (from, seen) = (last_id, seen + lines);
        if last_at < before {
            tx.prepare_cached("DELETE FROM audit_batches WHERE last_id = ?1")?
                .execute([last_id])?;
            gone += lines as u64;
        } else if first_at < before {
            let body: Vec<u8> = tx
                .prepare_cached("SELECT body FROM audit_batches WHERE last_id = ?1")?
                .query_row([last_id], |r| r.get(0))?;
            if let Some(r) =
                audit_batch::without_older(base_id, &body, before).map_err(not_sqlite)?
            {
                tx.prepare_cached(
                    "UPDATE audit_batches SET lines = ?2, first_at = ?3, body = ?4 \
                     WHERE last_id = ?1",
                )?
                .execute(rusqlite::params![last_id, r.lines, r.first_at, r.body])?;
                gone += r.gone;
            }
        }
    }
    Ok(gone)
}

fn upkeep(tx: &Connection, task: Upkeep) -> rusqlite::Result<u64> {
    match task {
        Upkeep::PruneAudit { before, limit } => prune_audit(tx, before, limit),
        Upkeep::Vacuum { pages } => {
            // The pragma frees one page per step of its statement: every
            // row must be stepped through for all of them to go.
            let mut st = tx.prepare(&format!("PRAGMA incremental_vacuum({})", pages.max(1)))?;
            let mut rows = st.query([])?;
            while rows.next()?.is_some() {}
            drop(rows);
            tx.query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
        }
        Upkeep::AuditStored { last_id } => tx
            .prepare_cached("SELECT lines FROM audit_batches WHERE last_id = ?1")?
            .query_row([last_id], |r| r.get::<_, i64>(0))
            .optional()
            .map(|n| n.map_or(0, |n| n.max(0) as u64)),
    }
}

fn take(tx: &Connection, key: &str) -> rusqlite::Result<Outcome> {
    let value: Option<Vec<u8>> = tx
        .prepare_cached("DELETE FROM entries WHERE key = ?1 RETURNING value")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    Ok(Outcome {
        hit: value.is_some(),
        value,
    })
}

fn apply_unit(tx: &Connection, unit: &Unit) -> rusqlite::Result<Applied> {
    let mut out = Applied::new(unit);
    for (i, op) in unit.ops.iter().enumerate() {
        let outcome = match op {
            Op::Insert { key, value } => Outcome {
                hit: tx
                    .prepare_cached(
                        "INSERT INTO entries (key, value) VALUES (?1, ?2) \
                         ON CONFLICT (key) DO NOTHING",
                    )?
                    .execute(rusqlite::params![key, value])?
                    == 1,
                value: None,
            },
            Op::Put { key, value } => {
                tx.prepare_cached(
                    "INSERT INTO entries (key, value) VALUES (?1, ?2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )?
                .execute(rusqlite::params![key, value])?;
                Outcome {
                    hit: true,
                    value: None,
                }
            }
            Op::PutBeside { key, value, beside } => Outcome {
                hit: tx
                    .prepare_cached(
                        "INSERT INTO entries (key, value) SELECT ?1, ?2 \
                         WHERE EXISTS (SELECT 1 FROM entries WHERE key = ?3) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    )?
                    .execute(rusqlite::params![key, value, beside])?
                    == 1,
                value: None,
            },
            Op::Delete { key } => Outcome {
                hit: tx
                    .prepare_cached("DELETE FROM entries WHERE key = ?1")?
                    .execute([key])?
                    > 0,
                value: None,
            },
            Op::Take { key } => take(tx, key)?,
            Op::TakeWith { key, also } => {
                let outcome = take(tx, key)?;
                if let Some(v) = &outcome.value {
                    let mut st = tx.prepare_cached("DELETE FROM entries WHERE key = ?1")?;
                    for k in also(v) {
                        st.execute([k])?;
                    }
                }
                outcome
            }
            Op::Swap {
                key,
                expected,
                value,
            } => {
                // One writer thread applies every write, in order: the
                // compare sees exactly what the writes before it left.
                let changed = match value {
                    Some(v) => tx
                        .prepare_cached(
                            "UPDATE entries SET value = ?1 WHERE key = ?2 AND value = ?3",
                        )?
                        .execute(rusqlite::params![v, key, expected])?,
                    None => tx
                        .prepare_cached("DELETE FROM entries WHERE key = ?1 AND value = ?2")?
                        .execute(rusqlite::params![key, expected])?,
                };
                Outcome {
                    hit: changed == 1,
                    value: None,
                }
            }
        };
        // The guard is the unit's first op: when it fails nothing of the
        // unit has been written.
        if i == 0 && !unit.guard_holds(op, &outcome) {
            return Ok(Applied::refused(unit));
        }
        out.outcomes[i] = outcome;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first column of every row `sql` answers, as integers.
    fn ints(path: &Path, sql: &str) -> Vec<i64> {
        let c = Connection::open(path).unwrap();
        let mut st = c.prepare(sql).unwrap();
        let rows = st.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    fn versions(path: &Path) -> Vec<i64> {
        ints(
            path,
            "SELECT version FROM _sqlx_migrations ORDER BY version",
        )
    }

    #[test]
    fn a_database_migrated_by_an_earlier_version_is_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            // As sqlx left it: the first migration applied and recorded.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL,
                 installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL,
                 checksum BLOB NOT NULL, execution_time BIGINT NOT NULL);
                 INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
                 VALUES (1, 'init', TRUE, x'00', 1);",
            )
            .unwrap();
            c.execute_batch(MIGRATIONS[0].2).unwrap();
            c.execute(
                "INSERT INTO audit_events (line) VALUES (?1), ('not json')",
                [r#"{"time":"2026-01-01T00:00:10Z","type":"request"}"#],
            )
            .unwrap();
        }
        migrate(&path).unwrap();
        assert_eq!(versions(&path), vec![1, 2, 3]);
        let at = ints(&path, "SELECT at FROM audit_events ORDER BY id");
        // A line's own time; 0 for one that carries none.
        assert_eq!(at, vec![1_767_225_610, 0]);
        // The batches' ids go on from the table's counter, kept as it was.
        let counter = ints(
            &path,
            "SELECT seq FROM sqlite_sequence WHERE name = 'audit_events'",
        );
        assert_eq!(counter, vec![2]);
        // Again: nothing to do.
        migrate(&path).unwrap();
        assert_eq!(versions(&path), vec![1, 2, 3]);
    }

    /// A server stopped with a large WAL on a disk that is full by the time
    /// it starts again: it starts (and serves what it can, writes failing
    /// until there is room), rather than exiting because the WAL cannot be
    /// copied into the database first.
    #[test]
    fn a_server_starts_on_a_full_disk_with_the_last_runs_wal_uncopied() {
        let dir = tempfile::tempdir().unwrap();
        let fs = dir.path().join("fs");
        std::fs::create_dir(&fs).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
            .arg(&fs)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount tmpfs (run as root)");
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                // Lazily: the connection left open on purpose holds files there.
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.0)
                    .status();
            }
        }
        let _unmount = Unmount(fs.clone());
        let path = fs.join("gatepass.db");
        migrate(&path).unwrap();
        let last_run = open(&path).unwrap();
        last_run
            .pragma_update(None, "wal_autocheckpoint", 0)
            .unwrap();
        last_run
            .execute_batch(
                "CREATE TABLE filler (x BLOB); INSERT INTO filler VALUES (zeroblob(1048576));",
            )
            .unwrap();
        // Stopped without closing: its WAL stays as it was.
        std::mem::forget(last_run);
        let filler = fs.join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            while f.write_all(&[0; 4096]).is_ok() {}
        }
        let started = Sqlite::open(&path);
        assert!(started.is_ok(), "{:?}", started.err());
        drop(started);
        std::fs::remove_file(&filler).unwrap();
        assert_eq!(ints(&path, "SELECT length(x) FROM filler"), vec![1_048_576]);
    }

    #[test]
    fn a_database_from_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        migrate(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
                 VALUES (99, 'future', TRUE, x'00', 1)",
                [],
            )
            .unwrap();
        let e = migrate(&path).unwrap_err().to_string();
        assert!(e.contains("newer gatepass-server"), "{e}");
    }

    /// Waits (10 s at most) for the checkpointer to cut the WAL's file to
    /// nothing once writes have paused.
    fn wait_until_the_wal_is_cut(wal: &Path) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let size = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
            if size == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL file still holds {size} bytes after the writes paused"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes of 256 KiB each, one after another without a pause (each
    /// waits for the one before); the WAL's largest size meanwhile.
    fn write_without_pause(tx: &mpsc::Sender<Job>, wal: &Path, writes: usize) -> u64 {
        write_with_gaps(tx, wal, writes, Duration::ZERO)
    }

    /// [`write_without_pause`] with `gap` between each write and the next.
    fn write_with_gaps(tx: &mpsc::Sender<Job>, wal: &Path, writes: usize, gap: Duration) -> u64 {
        let value = vec![7u8; 256 * 1024];
        let mut largest = 0;
        for i in 0..writes {
            std::thread::sleep(gap);
            apply(
                tx,
                vec![Op::Put {
                    key: format!("k{}", i % 16),
                    value: value.iter().map(|b| b ^ (i as u8)).collect(),
                }],
            );
            largest = largest.max(std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0));
        }
        largest
    }

    #[test]
    fn the_wal_is_started_over_at_its_bound_under_writes_that_never_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        migrate(&path).unwrap();
        // A bound of 32 MiB (the server's is 64 MiB) and three and a half
        // times as much written: SQLite alone would never find a moment to
        // start it over, and the WAL would hold it all. A gap of 5 ms
        // between writes is no pause to the checkpointer (it waits 100 ms
        // for one) and keeps them, in any build, to a pace its copies
        // follow: faster ones are the writer's cap's (the test after this).
        let bound = 32 * 1024 * 1024;
        let (_db, tx) = Sqlite::open_with(&path, bound / 4096, CHECKPOINT_EVERY).unwrap();
        let gap = Duration::from_millis(5);
        let largest = write_with_gaps(&tx, &dir.path().join("busy.db-wal"), 448, gap);
        // The checkpointer looks every 200 ms: the WAL may pass the bound
        // by what is written meanwhile. The writer's cap is four times the
        // bound: this is the checkpointer's doing.
        let bound = u64::try_from(bound).unwrap();
        assert!(
            largest < 5 * bound / 2,
            "the WAL grew to {largest} bytes (bound {bound})"
        );
    }

    #[test]
    fn writes_that_outrun_the_checkpointer_meet_the_writers_own_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outrun.db");
        migrate(&path).unwrap();
        // A bound of 8 MiB and a checkpointer that looks once a minute, so
        // that it never does during the test: only the writer's own cap,
        // four times the bound, keeps the WAL from holding all of the
        // 96 MiB written.
        let bound = 8 * 1024 * 1024;
        let max_frames = bound / 4096;
        let (_db, tx) = Sqlite::open_with(&path, max_frames, Duration::from_secs(60)).unwrap();
        let largest = write_without_pause(&tx, &wal_path(&path), 384);
        let cap = WAL_CAP_FACTOR * u64::try_from(max_frames * WAL_FRAME_BYTES).unwrap();
        // The writer looks every 10 ms: the WAL may pass the cap by what is
        // written meanwhile.
        assert!(
            largest < cap + 16 * 1024 * 1024,
            "the WAL grew to {largest} bytes (cap {cap})"
        );
        assert!(
            largest > cap / 2,
            "the WAL never grew ({largest} bytes): the writes did not outrun anything"
        );
        // And every write is there.
        let conn = Connection::open(&path).unwrap();
        let keys: i64 = conn
            .query_row(
                "SELECT count(*) FROM entries WHERE key LIKE 'k%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(keys, 16);
    }

    #[test]
    fn a_burst_of_writes_grows_the_wal_which_is_cut_back_once_they_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("burst.db");
        migrate(&path).unwrap();
        let (_db, tx) = Sqlite::open(&path).unwrap();
        let wal = dir.path().join("burst.db-wal");
        // 40 MiB without a pause, below the bound at which the writer
        // starts the WAL over: it grows through the burst, no request
        // waiting for a restart's fsyncs.
        let limit = WAL_MAX_BYTES as u64;
        let burst = 5 * limit / 8;
        // A test thread held off the CPUs for the quiet time mid-burst is
        // a real pause, and the WAL is rightly cut then: up to three tries
        // for one burst without such a stall.
        let mut largest = 0;
        for _ in 0..3 {
            largest = write_without_pause(&tx, &wal, (burst / (256 * 1024)) as usize);
            if largest > burst * 3 / 4 {
                break;
            }
        }
        assert!(
            largest > burst * 3 / 4,
            "the WAL was started over during the burst (largest {largest} bytes)"
        );
        // The writes pause: the WAL is copied back and cut to nothing,
        // without a write to wait for.
        wait_until_the_wal_is_cut(&wal);
        // And the next write starts it afresh.
        write_without_pause(&tx, &wal, 1);
        let size = std::fs::metadata(&wal).unwrap().len();
        assert!(
            size < limit / 16,
            "the WAL holds {size} bytes after one write"
        );
    }

    #[test]
    fn a_wal_started_over_is_cut_back_once_writes_pause_though_it_holds_few_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("restarted.db");
        migrate(&path).unwrap();
        // A bound of 24 MiB, and writes of 256 KiB without a pause until
        // the writer has started the WAL over (the salt in its header
        // changes), then a few more: the file keeps the size it grew to,
        // with a few frames at its start.
        let bound = 24 * 1024 * 1024;
        let (_db, tx) = Sqlite::open_with(&path, bound / 4096, CHECKPOINT_EVERY).unwrap();
        let wal = wal_path(&path);
        let salt = || {
            let mut header = [0u8; 32];
            std::io::Read::read_exact(&mut std::fs::File::open(&wal).unwrap(), &mut header)
                .unwrap();
            header[16..24].to_vec()
        };
        // Each write a new value, so that each writes its pages.
        let mut n = 0u32;
        let mut write = || {
            n += 1;
            apply(
                &tx,
                vec![Op::Put {
                    key: format!("k{}", n % 16),
                    value: n.to_le_bytes().repeat(64 * 1024),
                }],
            );
        };
        // Bounded by time, not by writes: the checkpointer asks for the
        // restart when it next looks (every 200 ms), and unpaced writes
        // could all be done before then. A 2 ms gap is no pause to it; a
        // test thread held off the CPUs for the quiet time is, and the
        // WAL is rightly cut then (its salt changes too, its file is
        // small): up to three tries for a restart without such a stall.
        let mut grown = 0;
        for _ in 0..3 {
            write();
            let first = salt();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                write();
                if salt() != first {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the WAL was never started over"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            for _ in 0..8 {
                write();
            }
            grown = std::fs::metadata(&wal).unwrap().len();
            if grown > WAL_CUT_BYTES {
                break;
            }
        }
        assert!(grown > WAL_CUT_BYTES, "the WAL file holds {grown} bytes");
        // The writes pause: the file is cut to nothing, though the frames
        // written since the restart are fewer than a cut is made for.
        wait_until_the_wal_is_cut(&wal);
    }

    /// Pages of `file` in the page cache not yet written to disk
    /// (Linux's cachestat, 6.5 and later).
    fn dirty_pages(file: &std::fs::File) -> u64 {
        use std::os::fd::AsRawFd;
        #[repr(C)]
        struct Range {
            off: u64,
            len: u64,
        }
        #[repr(C)]
        #[derive(Default)]
        struct Stat {
            cache: u64,
            dirty: u64,
            writeback: u64,
            evicted: u64,
            recently_evicted: u64,
        }
        const SYS_CACHESTAT: libc::c_long = 451;
        let range = Range { off: 0, len: 0 };
        let mut stat = Stat::default();
        // SAFETY: the kernel reads `range` and writes `stat`, both live
        // for the call and laid out as its `struct cachestat_range` and
        // `struct cachestat`.
        let rc = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                file.as_raw_fd(),
                &range as *const Range,
                &mut stat as *mut Stat,
                0,
            )
        };
        assert_eq!(
            rc,
            0,
            "cachestat failed ({}): this test needs Linux 6.5 or later",
            std::io::Error::last_os_error()
        );
        stat.dirty + stat.writeback
    }

    #[test]
    fn pages_a_checkpoint_copies_are_synced_by_the_checkpointer_not_left_to_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let first = 256 * 1024;
        let mut tries = 0;
        let (path, reader, _db) = loop {
            let path = dir.path().join(format!("synced{tries}.db"));
            migrate(&path).unwrap();
            let (db, tx) = Sqlite::open(&path).unwrap();
            let mut wal = path.clone().into_os_string();
            wal.push("-wal");
            let reader = open(&path).unwrap();
            // A write into the WAL, then a reader whose snapshot ends there,
            // then another write: a checkpoint copies up to the reader's
            // snapshot and stops, short of the WAL's end, where SQLite
            // does not sync the database file itself. Left so, those pages
            // would wait in memory for the next WAL restart, whose sync on
            // the writer's thread would write them all while requests wait.
            write_without_pause(&tx, Path::new(&wal), 1);
            reader.execute_batch("BEGIN").unwrap();
            let _: i64 = reader
                .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
                .unwrap();
            // (The first rewrites the same value: SQLite writes no page.)
            write_without_pause(&tx, Path::new(&wal), 2);
            // The checkpointer waits 200 ms after the first write: if it
            // copied that write before the reader came (a test thread held
            // up that long), it reached the WAL's end then, which SQLite
            // syncs itself; that try shows nothing, and is made again.
            if std::fs::metadata(&path).unwrap().len() < first {
                break (path, reader, (db, tx));
            }
            tries += 1;
            assert!(tries < 10, "the checkpointer always came before the reader");
        };
        let file = std::fs::File::open(&path).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let size = std::fs::metadata(&path).unwrap().len();
            let dirty = dirty_pages(&file);
            // Copied (the file holds the first write) and on disk.
            if size >= first && dirty == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the database file ({size} bytes) still holds {dirty} pages not on disk"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reader.execute_batch("COMMIT").unwrap();
    }

    fn apply(tx: &mpsc::Sender<Job>, ops: Vec<Op>) -> Applied {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let unit = Unit {
            ops,
            guarded: false,
        };
        tx.blocking_send(Job::Unit { unit, reply }).unwrap();
        answer.blocking_recv().unwrap().unwrap()
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_take_with_deletes_what_the_taken_value_names_only_when_it_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("take.db");
        migrate(&path).unwrap();
        let (db, tx) = Sqlite::open(&path).unwrap();
        // An entry naming the keys that belong to it, one a line.
        let names: super::super::writer::Dependents = Arc::new(|v: &[u8]| {
            String::from_utf8_lossy(v)
                .lines()
                .map(String::from)
                .collect()
        });
        apply(
            &tx,
            vec![
                put("otp/1", "lease/1\nlease-exp/1"),
                put("lease/1", "l"),
                put("lease-exp/1", "e"),
                put("lease/2", "other"),
            ],
        );
        let take = || Op::TakeWith {
            key: "otp/1".into(),
            also: names.clone(),
        };
        let done = apply(&tx, vec![take()]);
        assert!(done.outcomes[0].hit);
        assert_eq!(
            done.outcomes[0].value.as_deref(),
            Some(&b"lease/1\nlease-exp/1"[..])
        );
        for gone in ["otp/1", "lease/1", "lease-exp/1"] {
            assert_eq!(db.get(gone).unwrap(), None, "{gone} is left");
        }
        assert_eq!(db.get("lease/2").unwrap(), Some(b"other".to_vec()));

        // Taken already: a second take gets nothing and deletes nothing.
        apply(&tx, vec![put("lease/1", "l")]);
        let done = apply(&tx, vec![take()]);
        assert!(!done.outcomes[0].hit);
        assert_eq!(db.get("lease/1").unwrap(), Some(b"l".to_vec()));
    }

    #[test]
    fn urls_name_their_file() {
        assert_eq!(
            path_of("sqlite:///var/lib/gatepass/gatepass.db?mode=rwc").unwrap(),
            PathBuf::from("/var/lib/gatepass/gatepass.db")
        );
        assert_eq!(path_of("sqlite://rel.db").unwrap(), PathBuf::from("rel.db"));
        assert!(path_of("sqlite::memory:").is_err());
        assert!(path_of("sqlite://").is_err());
    }
}
