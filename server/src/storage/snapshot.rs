//! Snapshots: a consistent copy of the storage in one file, taken while a
//! server serves (`gatepass-server snapshot save`), and brought into new,
//! empty storage (`gatepass-server snapshot restore`).
//!
//! The entries are copied as they are stored: values stay sealed under the
//! seal key (each bound to its key), and keys hold no secrets, so the file
//! is as safe as the database itself. It is sealed as a whole too: an
//! HMAC-SHA256 over everything in it, keyed from the seal key, lets
//! `restore` refuse a truncated, edited or another key's file before it
//! writes anything. The database's copy of the audit log (`audit_batches`,
//! and `audit_events` from earlier versions) is left out: the audit file
//! is the record.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! "gatepass snapshot\n"   magic
//! u32                     format version (1)
//! [u8; 16]                seal key id: tells another key's snapshot from a damaged one
//! i64                     when it was taken, Unix seconds
//! u64                     number of entries
//! entries, keys in byte order:
//!     u32 key length, key (UTF-8), u32 value length, value (sealed)
//! [u8; 32]                HMAC-SHA256 of everything before it
//! ```

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sha2::Sha256;
use sqlx::{Connection as _, PgConnection};
use zeroize::Zeroizing;

use super::{describe, health, sqlite, unavailable_text, OPEN_CONNECT_TIMEOUT, SEAL_CHECK_KEY};
use crate::error::{Error, Result};
use crate::seal::{Barrier, SealKey};

const MAGIC: &[u8] = b"gatepass snapshot\n";

/// The format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Bounds on one entry, so that a damaged length is refused rather than
/// allocated; `save` refuses an entry above them, so every snapshot it
/// writes can be restored.
const MAX_KEY: usize = 64 * 1024;
const MAX_VALUE: usize = 64 * 1024 * 1024;

const MAC_LEN: usize = 32;

/// Rows per `FETCH` when reading PostgreSQL, and per `INSERT` when writing
/// it (or fewer, when they hold more than [`PG_BATCH_BYTES`]).
const PG_BATCH_ROWS: usize = 1000;
const PG_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// How long the SQLite connections here wait for a lock: a save reads
/// beside a running server's writer; a restore takes the write lock.
const SQLITE_WAIT: Duration = Duration::from_secs(5);

type HmacSha256 = Hmac<Sha256>;

/// What a snapshot is sealed and checked with, all derived from the seal
/// key.
pub struct SnapshotKey {
    mac: Zeroizing<[u8; 32]>,
    id: [u8; 16],
    barrier: Barrier,
}

impl SnapshotKey {
    pub fn new(seal: &SealKey) -> Self {
        let derived = seal.derive("snapshot key id");
        let mut id = [0u8; 16];
        id.copy_from_slice(&derived[..16]);
        SnapshotKey {
            mac: seal.derive("snapshot mac"),
            id,
            barrier: Barrier::new(seal),
        }
    }

    fn hmac(&self) -> Result<HmacSha256> {
        <HmacSha256 as Mac>::new_from_slice(self.mac.as_ref())
            .map_err(|_| Error::internal("cannot key the snapshot MAC"))
    }
}

/// What a snapshot's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// When it was taken, Unix seconds.
    pub created: i64,
    pub entries: u64,
}

/// Writes a snapshot: the header, then exactly `header.entries` entries in
/// ascending key order, then [`SnapshotWriter::finish`].
pub struct SnapshotWriter<W: Write> {
    out: W,
    mac: HmacSha256,
    left: u64,
    last: Option<Vec<u8>>,
}

impl<W: Write> SnapshotWriter<W> {
    pub fn new(out: W, key: &SnapshotKey, header: Header) -> Result<Self> {
        let mut w = SnapshotWriter {
            out,
            mac: key.hmac()?,
            left: header.entries,
            last: None,
        };
        w.put(MAGIC)?;
        w.put(&FORMAT_VERSION.to_be_bytes())?;
        w.put(&key.id)?;
        w.put(&header.created.to_be_bytes())?;
        w.put(&header.entries.to_be_bytes())?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.mac.update(bytes);
        self.out.write_all(bytes)?;
        Ok(())
    }

    pub fn entry(&mut self, key: &str, value: &[u8]) -> Result<()> {
        if self.left == 0 {
            return Err(Error::internal(
                "the storage holds more entries than it counted",
            ));
        }
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Err(Error::internal(format!(
                "entry {key} is larger than a snapshot holds ({} bytes of key, {} of value)",
                key.len(),
                value.len()
            )));
        }
        // Restore relies on it (no key twice); the databases sort keys
        // bytewise, as Rust compares them.
        if let Some(last) = &mut self.last {
            if last.as_slice() >= key.as_bytes() {
                return Err(Error::internal(format!(
                    "the storage did not list its keys in byte order (at {key})"
                )));
            }
            last.clear();
            last.extend_from_slice(key.as_bytes());
        } else {
            self.last = Some(key.as_bytes().to_vec());
        }
        // Both lengths are bounded above, far below u32::MAX.
        self.put(&(key.len() as u32).to_be_bytes())?;
        self.put(key.as_bytes())?;
        self.put(&(value.len() as u32).to_be_bytes())?;
        self.put(value)?;
        self.left -= 1;
        Ok(())
    }

    /// Writes the MAC; the writer, flushed.
    pub fn finish(mut self) -> Result<W> {
        if self.left != 0 {
            return Err(Error::internal(format!(
                "the storage listed {} entries fewer than it counted",
                self.left
            )));
        }
        let tag = self.mac.finalize().into_bytes();
        self.out.write_all(&tag)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a snapshot entry by entry. The MAC covers the whole file, so an
/// entry is only known good once [`SnapshotReader::next_entry`] has
/// answered None: whoever writes entries as they come must be able to undo
/// them until then.
pub struct SnapshotReader<R: Read> {
    input: R,
    mac: HmacSha256,
    header: Header,
    left: u64,
    last: Option<String>,
    done: bool,
    /// The file as messages name it.
    name: String,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads and checks the header: a gatepass snapshot, of a format this
    /// reads, sealed with this key.
    pub fn open(input: R, key: &SnapshotKey, name: &str) -> Result<Self> {
        let mut r = SnapshotReader {
            input,
            mac: key.hmac()?,
            header: Header {
                created: 0,
                entries: 0,
            },
            left: 0,
            last: None,
            done: false,
            name: name.to_string(),
        };
        let mut magic = [0u8; MAGIC.len()];
        if r.take(&mut magic).is_err() || magic != MAGIC {
            return Err(Error::invalid(format!("{name} is not a gatepass snapshot")));
        }
        let version = u32::from_be_bytes(r.array()?);
        if version != FORMAT_VERSION {
            return Err(Error::invalid(format!(
                "{name} is a snapshot in format {version}; this gatepass-server reads format {FORMAT_VERSION}"
            )));
        }
        let id: [u8; 16] = r.array()?;
        if id != key.id {
            return Err(Error::invalid(format!(
                "{name}: the snapshot was sealed with another seal key (use the seal key of the \
                 server it was taken from)"
            )));
        }
        r.header = Header {
            created: i64::from_be_bytes(r.array()?),
            entries: u64::from_be_bytes(r.array()?),
        };
        r.left = r.header.entries;
        Ok(r)
    }

    pub fn header(&self) -> Header {
        self.header
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<()> {
        self.input.read_exact(buf).map_err(|e| self.read_error(e))?;
        self.mac.update(buf);
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        self.take(&mut a)?;
        Ok(a)
    }

    fn bytes(&mut self, max: usize) -> Result<Vec<u8>> {
        let len = u32::from_be_bytes(self.array()?) as usize;
        if len > max {
            return Err(self.damaged());
        }
        let mut v = vec![0u8; len];
        self.take(&mut v)?;
        Ok(v)
    }

    fn read_error(&self, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::invalid(format!(
                "{}: the snapshot is truncated (it ends before its last entry and MAC)",
                self.name
            ))
        } else {
            Error::internal(format!("cannot read {}: {e}", self.name))
        }
    }

    fn damaged(&self) -> Error {
        Error::invalid(format!(
            "{}: the snapshot is damaged or was edited (its content does not match its MAC)",
            self.name
        ))
    }

    /// The next entry; None at the end, once the MAC over the whole file
    /// has been checked (an error if it does not match).
    pub fn next_entry(&mut self) -> Result<Option<(String, Vec<u8>)>> {
        if self.left == 0 {
            if !self.done {
                self.check_end()?;
                self.done = true;
            }
            return Ok(None);
        }
        let key = self.bytes(MAX_KEY)?;
        let value = self.bytes(MAX_VALUE)?;
        let key = String::from_utf8(key).map_err(|_| self.damaged())?;
        if self
            .last
            .as_deref()
            .is_some_and(|last| last >= key.as_str())
        {
            return Err(self.damaged());
        }
        self.last = Some(key.clone());
        self.left -= 1;
        Ok(Some((key, value)))
    }

    fn check_end(&mut self) -> Result<()> {
        let mut tag = [0u8; MAC_LEN];
        self.input
            .read_exact(&mut tag)
            .map_err(|e| self.read_error(e))?;
        self.mac
            .clone()
            .verify_slice(&tag)
            .map_err(|_| self.damaged())?;
        let mut more = [0u8; 1];
        match self.input.read(&mut more) {
            Ok(0) => Ok(()),
            Ok(_) => Err(Error::invalid(format!(
                "{}: the snapshot is damaged (there is more after its end)",
                self.name
            ))),
            Err(e) => Err(self.read_error(e)),
        }
    }
}

/// Opens a snapshot file for reading.
fn read_file(file: &Path) -> Result<BufReader<File>> {
    match File::open(file) {
        Ok(f) => Ok(BufReader::with_capacity(256 * 1024, f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(Error::invalid(format!("{}: no such file", file.display())))
        }
        Err(e) => Err(Error::internal(format!(
            "cannot open {}: {e}",
            file.display()
        ))),
    }
}

/// Reads a whole snapshot file and checks it: its MAC, and that its seal
/// check opens with this key (so it is a gatepass storage's snapshot, and
/// the key is the one its values are sealed with). Writes nothing.
pub fn check(file: &Path, key: &SnapshotKey) -> Result<Header> {
    let name = file.display().to_string();
    let mut r = SnapshotReader::open(read_file(file)?, key, &name)?;
    let mut seal_check = false;
    while let Some((k, v)) = r.next_entry()? {
        if k == SEAL_CHECK_KEY {
            key.barrier.open(&k, &v).map_err(|_| {
                Error::invalid(format!(
                    "{name}: the snapshot was sealed with another seal key"
                ))
            })?;
            seal_check = true;
        }
    }
    if !seal_check {
        return Err(Error::invalid(format!(
            "{name} holds no seal check: it is not a snapshot of a gatepass server's storage"
        )));
    }
    Ok(r.header())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

fn kind_of(url: &str) -> Result<Kind> {
    if url.starts_with("sqlite:") {
        Ok(Kind::Sqlite)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Kind::Postgres)
    } else {
        Err(Error::invalid(format!(
            "unsupported storage URL {url:?}: use sqlite://PATH or postgres://…"
        )))
    }
}

/// What `save` wrote.
#[derive(Clone, Copy, Debug)]
pub struct Saved {
    pub header: Header,
    /// Size of the file.
    pub bytes: u64,
}

/// Writes a snapshot of the storage at `url` (sealed with `seal`, which
/// must be the storage's seal key) to the new file `file`, taken at `now`.
///
/// Every entry is read in one read transaction, so the file holds one
/// moment's state while a server goes on writing: on SQLite a read
/// transaction of its own beside the server's writer (WAL), on PostgreSQL
/// one `REPEATABLE READ READ ONLY` transaction. Rows stream to the file;
/// nothing is held in memory but one entry (one batch on PostgreSQL).
///
/// The file is written 0600 under a temporary name in the same folder,
/// synced, and renamed to `file` only when complete; an existing `file`
/// is never replaced.
pub async fn save(url: &str, seal: &SealKey, file: &Path, now: i64) -> Result<Saved> {
    let kind = kind_of(url)?;
    let target = describe(url);
    let key = SnapshotKey::new(seal);
    let tmp = new_private_temp(file)?;
    let out = BufWriter::with_capacity(256 * 1024, tmp.as_file().try_clone()?);
    let header = match kind {
        Kind::Sqlite => {
            let path = sqlite::path_of(url)?;
            tokio::task::spawn_blocking(move || save_sqlite(&path, &target, &key, out, now))
                .await
                .map_err(|e| Error::internal(e.to_string()))??
        }
        Kind::Postgres => save_postgres(url, &target, &key, out, now).await?,
    };
    tmp.as_file().sync_all()?;
    let bytes = tmp.as_file().metadata()?.len();
    tmp.persist_noclobber(file).map_err(|e| {
        if e.error.kind() == io::ErrorKind::AlreadyExists {
            exists(file)
        } else {
            Error::internal(format!("cannot write {}: {}", file.display(), e.error))
        }
    })?;
    // The rename itself is durable only once the folder is synced.
    File::open(folder_of(file))?.sync_all()?;
    Ok(Saved { header, bytes })
}

fn folder_of(file: &Path) -> &Path {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn exists(file: &Path) -> Error {
    Error::invalid(format!(
        "{} exists: snapshot save never replaces a file (name a new one, or move the old one \
         away first)",
        file.display()
    ))
}

/// A temporary file, 0600, beside `file` (so that renaming it is atomic);
/// removed again if dropped.
fn new_private_temp(file: &Path) -> Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    if file.symlink_metadata().is_ok() {
        return Err(exists(file));
    }
    let name = file
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{} names no file", file.display())))?;
    let dir = folder_of(file);
    tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".partial")
        .permissions(std::fs::Permissions::from_mode(crate::private::FILE_MODE))
        .tempfile_in(dir)
        .map_err(|e| Error::internal(format!("cannot create a file in {}: {e}", dir.display())))
}

/// A SQLite failure, as the storage names it elsewhere: a file that cannot
/// be used now (locked, unreadable) is "storage unavailable".
fn sqlite_error(target: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| {
        if health::sqlite_unavailable(&e) {
            Error::StorageUnavailable(unavailable_text(target, &e.to_string()))
        } else {
            Error::internal(format!("storage {target}: {e}"))
        }
    }
}

fn pg_error(target: &str) -> impl Fn(sqlx::Error) -> Error + '_ {
    move |e| {
        let text = e.to_string();
        match health::unavailable_cause(&Error::Storage(e)) {
            Some(health::Cause::Known(cause)) => {
                Error::StorageUnavailable(unavailable_text(target, &cause))
            }
            _ => Error::internal(format!("storage {target}: {text}")),
        }
    }
}

/// The storage's seal check must open with the key the snapshot is sealed
/// with, or the snapshot would carry values no one could open with it.
fn check_seal(target: &str, key: &SnapshotKey, sealed: Option<Vec<u8>>) -> Result<()> {
    match sealed {
        None => Err(Error::invalid(format!(
            "storage {target} holds no gatepass data (no seal check): nothing to save"
        ))),
        Some(v) => key
            .barrier
            .open(SEAL_CHECK_KEY, &v)
            .map(|_| ())
            .map_err(|_| {
                Error::invalid(format!(
                    "the seal key does not match storage {target}: save with the configuration \
                 of the server that uses it"
                ))
            }),
    }
}

fn save_sqlite<W: Write>(
    path: &Path,
    target: &str,
    key: &SnapshotKey,
    out: W,
    now: i64,
) -> Result<Header> {
    if !path.exists() {
        return Err(Error::invalid(format!("storage {target}: no such file")));
    }
    let err = sqlite_error(target);
    // Read-write without create, but made unable to write: the file must
    // exist, and nothing here changes it.
    let mut conn = open_existing(path, target)?;
    conn.pragma_update(None, "query_only", true).map_err(&err)?;
    // A deferred transaction: its first read fixes the state every later
    // read in it sees, whatever the server commits meanwhile.
    let tx = conn.transaction().map_err(&err)?;
    let entries: i64 = tx
        .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
        .map_err(&err)?;
    let sealed: Option<Vec<u8>> = tx
        .query_row(
            "SELECT value FROM entries WHERE key = ?1",
            [SEAL_CHECK_KEY],
            |r| r.get(0),
        )
        .optional()
        .map_err(&err)?;
    check_seal(target, key, sealed)?;
    let header = Header {
        created: now,
        entries: u64::try_from(entries).unwrap_or(0),
    };
    let mut w = SnapshotWriter::new(out, key, header)?;
    {
        let mut st = tx
            .prepare("SELECT key, value FROM entries ORDER BY key")
            .map_err(&err)?;
        let mut rows = st.query([]).map_err(&err)?;
        while let Some(row) = rows.next().map_err(&err)? {
            let k = row.get_ref(0).and_then(|v| Ok(v.as_str()?)).map_err(&err)?;
            let v = row
                .get_ref(1)
                .and_then(|v| Ok(v.as_blob()?))
                .map_err(&err)?;
            w.entry(k, v)?;
        }
    }
    w.finish()?;
    tx.commit().map_err(&err)?;
    Ok(header)
}

async fn connect_pg(url: &str, target: &str) -> Result<PgConnection> {
    match tokio::time::timeout(OPEN_CONNECT_TIMEOUT, PgConnection::connect(url)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(Error::StorageUnavailable(unavailable_text(
            target,
            &e.to_string(),
        ))),
        Err(_) => Err(Error::StorageUnavailable(unavailable_text(
            target,
            &format!("no answer within {} s", OPEN_CONNECT_TIMEOUT.as_secs()),
        ))),
    }
}

async fn save_postgres<W: Write>(
    url: &str,
    target: &str,
    key: &SnapshotKey,
    out: W,
    now: i64,
) -> Result<Header> {
    let err = pg_error(target);
    let mut conn = connect_pg(url, target).await?;
    let mut tx = conn.begin().await.map_err(&err)?;
    // One snapshot of the database for every statement of the transaction.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM entries")
        .fetch_one(&mut *tx)
        .await
        .map_err(&err)?;
    let sealed: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM entries WHERE key = $1")
        .bind(SEAL_CHECK_KEY)
        .fetch_optional(&mut *tx)
        .await
        .map_err(&err)?;
    check_seal(target, key, sealed)?;
    let header = Header {
        created: now,
        entries: u64::try_from(entries).unwrap_or(0),
    };
    let mut w = SnapshotWriter::new(out, key, header)?;
    // A cursor hands the rows over a batch at a time.
    sqlx::query(
        "DECLARE snapshot NO SCROLL CURSOR FOR SELECT key, value FROM entries ORDER BY key",
    )
    .execute(&mut *tx)
    .await
    .map_err(&err)?;
    let fetch = format!("FETCH FORWARD {PG_BATCH_ROWS} FROM snapshot");
    loop {
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(&fetch)
            .fetch_all(&mut *tx)
            .await
            .map_err(&err)?;
        if rows.is_empty() {
            break;
        }
        for (k, v) in &rows {
            w.entry(k, v)?;
        }
    }
    w.finish()?;
    tx.commit().await.map_err(&err)?;
    let _ = conn.close().await;
    Ok(header)
}

fn not_empty(target: &str, entries: i64) -> Error {
    Error::invalid(format!(
        "storage {target} is not empty ({entries} entries): restore needs new storage, a new \
         SQLite file or an empty PostgreSQL database, on which neither `gatepass-server init` \
         nor a server has run (the snapshot brings the root token and everything else)"
    ))
}

/// Brings the snapshot `file` into the storage at `url`, which must be
/// empty (see [`not_empty`]); `seal` must be the key the snapshot was
/// sealed with.
///
/// The whole file is read and checked first, writing nothing: a truncated,
/// edited or another key's snapshot is refused with the storage untouched.
/// Then the storage is opened (created and migrated as `serve` would) and
/// every entry written in one transaction, with the file's MAC checked
/// again before it commits (the file could have changed in between).
pub async fn restore(url: &str, seal: &SealKey, file: &Path) -> Result<Header> {
    let kind = kind_of(url)?;
    let target = describe(url);
    let key = SnapshotKey::new(seal);
    let (header, key) = {
        let file = file.to_path_buf();
        tokio::task::spawn_blocking(move || check(&file, &key).map(|h| (h, key)))
            .await
            .map_err(|e| Error::internal(e.to_string()))??
    };
    match kind {
        Kind::Sqlite => {
            let path = sqlite::path_of(url)?;
            migrate_sqlite(&path, &target).await?;
            let file = file.to_path_buf();
            tokio::task::spawn_blocking(move || restore_sqlite(&path, &target, &key, &file, header))
                .await
                .map_err(|e| Error::internal(e.to_string()))??
        }
        Kind::Postgres => restore_postgres(url, &target, &key, file, header).await?,
    }
    Ok(header)
}

/// The file read a second time must be the one checked the first time
/// (its MAC alone would pass another snapshot of the same key).
fn same_file(file: &Path, checked: Header, read: Header) -> Result<()> {
    if checked == read {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{} changed while it was restored; nothing was written",
            file.display()
        )))
    }
}

/// A connection to an existing database file (never creating one), that
/// waits for a lock up to [`SQLITE_WAIT`].
fn open_existing(path: &Path, target: &str) -> Result<Connection> {
    let err = sqlite_error(target);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(&err)?;
    conn.busy_timeout(SQLITE_WAIT).map_err(&err)?;
    Ok(conn)
}

/// Creates the file (private, as `serve` does) and its tables.
async fn migrate_sqlite(path: &Path, target: &str) -> Result<()> {
    crate::private::create_file(path)
        .map_err(|e| Error::internal(format!("cannot create {}: {e}", path.display())))?;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        super::sqlite::set_incremental_vacuum(&path)?;
        super::sqlite::migrate(&path)
    })
    .await
    .map_err(|e| Error::internal(e.to_string()))?
    .map_err(|e| match e {
        Error::Sqlite(e) => Error::StorageUnavailable(unavailable_text(target, &e.to_string())),
        other => other,
    })
}

fn restore_sqlite(
    path: &Path,
    target: &str,
    key: &SnapshotKey,
    file: &Path,
    checked: Header,
) -> Result<()> {
    let err = sqlite_error(target);
    let mut conn = open_existing(path, target)?;
    // The write lock from the start: nothing else writes while the
    // storage is found empty and filled. Dropped without commit, the
    // transaction rolls back, so an error anywhere leaves it as it was.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(&err)?;
    let others: i64 = tx
        .query_row(
            "SELECT count(*) FROM entries WHERE key <> ?1",
            [SEAL_CHECK_KEY],
            |r| r.get(0),
        )
        .map_err(&err)?;
    if others > 0 {
        return Err(not_empty(target, others));
    }
    // A seal check alone is what opening the storage once leaves; the
    // snapshot's own replaces it.
    tx.execute("DELETE FROM entries WHERE key = ?1", [SEAL_CHECK_KEY])
        .map_err(&err)?;
    let name = file.display().to_string();
    let mut r = SnapshotReader::open(read_file(file)?, key, &name)?;
    {
        let mut st = tx
            .prepare("INSERT INTO entries (key, value) VALUES (?1, ?2)")
            .map_err(&err)?;
        while let Some((k, v)) = r.next_entry()? {
            st.execute(rusqlite::params![k, v]).map_err(&err)?;
        }
    }
    same_file(file, checked, r.header())?;
    tx.commit().map_err(&err)?;
    Ok(())
}

async fn restore_postgres(
    url: &str,
    target: &str,
    key: &SnapshotKey,
    file: &Path,
    checked: Header,
) -> Result<()> {
    let err = pg_error(target);
    let mut conn = connect_pg(url, target).await?;
    sqlx::migrate!("./migrations/postgres")
        .run(&mut conn)
        .await?;
    let mut tx = conn.begin().await.map_err(&err)?;
    // No server writes while the storage is found empty and filled.
    sqlx::query("LOCK TABLE entries IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
    let others: i64 = sqlx::query_scalar("SELECT count(*) FROM entries WHERE key <> $1")
        .bind(SEAL_CHECK_KEY)
        .fetch_one(&mut *tx)
        .await
        .map_err(&err)?;
    if others > 0 {
        return Err(not_empty(target, others));
    }
    sqlx::query("DELETE FROM entries WHERE key = $1")
        .bind(SEAL_CHECK_KEY)
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
    let name = file.display().to_string();
    let mut r = SnapshotReader::open(read_file(file)?, key, &name)?;
    let mut keys: Vec<String> = Vec::with_capacity(PG_BATCH_ROWS);
    let mut values: Vec<Vec<u8>> = Vec::with_capacity(PG_BATCH_ROWS);
    let mut bytes = 0usize;
    loop {
        let next = r.next_entry()?;
        let end = next.is_none();
        if let Some((k, v)) = next {
            bytes += k.len() + v.len();
            keys.push(k);
            values.push(v);
        }
        if !keys.is_empty() && (end || keys.len() >= PG_BATCH_ROWS || bytes >= PG_BATCH_BYTES) {
            sqlx::query(
                "INSERT INTO entries (key, value) SELECT * FROM UNNEST($1::text[], $2::bytea[])",
            )
            .bind(&keys)
            .bind(&values)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
            keys.clear();
            values.clear();
            bytes = 0;
        }
        if end {
            break;
        }
    }
    same_file(file, checked, r.header())?;
    tx.commit().await.map_err(&err)?;
    let _ = conn.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(key: &SnapshotKey, entries: &[(&str, &[u8])]) -> Vec<u8> {
        let header = Header {
            created: 1_700_000_000,
            entries: entries.len() as u64,
        };
        let mut w = SnapshotWriter::new(Vec::new(), key, header).unwrap();
        for (k, v) in entries {
            w.entry(k, v).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(key: &SnapshotKey, bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
        let mut r = SnapshotReader::open(bytes, key, "snap")?;
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            out.push(e);
        }
        Ok(out)
    }

    fn message(r: Result<Vec<(String, Vec<u8>)>>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn entries_come_back_as_written() {
        let key = SnapshotKey::new(&SealKey::generate());
        let bytes = snapshot(
            &key,
            &[("a", b"1"), ("b/c", b""), ("core/seal-check", b"x")],
        );
        let mut r = SnapshotReader::open(bytes.as_slice(), &key, "snap").unwrap();
        assert_eq!(
            r.header(),
            Header {
                created: 1_700_000_000,
                entries: 3
            }
        );
        assert_eq!(
            r.next_entry().unwrap().unwrap(),
            ("a".into(), b"1".to_vec())
        );
        assert_eq!(r.next_entry().unwrap().unwrap().0, "b/c");
        assert_eq!(r.next_entry().unwrap().unwrap().0, "core/seal-check");
        assert!(r.next_entry().unwrap().is_none());
        assert!(r.next_entry().unwrap().is_none(), "the end stays the end");
        assert!(read_all(&key, &snapshot(&key, &[])).unwrap().is_empty());
    }

    #[test]
    fn another_key_is_told_from_damage() {
        let key = SnapshotKey::new(&SealKey::generate());
        let bytes = snapshot(&key, &[("a", b"1")]);
        let other = SnapshotKey::new(&SealKey::generate());
        assert!(message(read_all(&other, &bytes)).contains("another seal key"));
    }

    #[test]
    fn every_changed_byte_and_every_cut_is_refused() {
        let key = SnapshotKey::new(&SealKey::generate());
        let bytes = snapshot(&key, &[("a", b"one"), ("b", b"two")]);
        for i in 0..bytes.len() {
            let mut edited = bytes.clone();
            edited[i] ^= 0x01;
            assert!(read_all(&key, &edited).is_err(), "byte {i} changed");
        }
        for len in 0..bytes.len() {
            assert!(read_all(&key, &bytes[..len]).is_err(), "cut at {len}");
        }
        let cut = message(read_all(&key, &bytes[..bytes.len() - 5]));
        assert!(cut.contains("truncated"), "{cut}");
        let mut edited = bytes.clone();
        let last_value_byte = bytes.len() - MAC_LEN - 1;
        edited[last_value_byte] ^= 0x01;
        assert!(message(read_all(&key, &edited)).contains("damaged or was edited"));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(message(read_all(&key, &longer)).contains("more after its end"));
        assert!(
            message(read_all(&key, b"SQLite format 3\0...")).contains("not a gatepass snapshot")
        );
    }

    #[test]
    fn the_writer_keeps_to_its_count_and_order() {
        let key = SnapshotKey::new(&SealKey::generate());
        let header = Header {
            created: 0,
            entries: 1,
        };
        let mut w = SnapshotWriter::new(Vec::new(), &key, header).unwrap();
        w.entry("a", b"").unwrap();
        assert!(w.entry("b", b"").is_err(), "more than counted");
        let header = Header {
            created: 0,
            entries: 2,
        };
        let mut w = SnapshotWriter::new(Vec::new(), &key, header).unwrap();
        w.entry("b", b"").unwrap();
        assert!(w.entry("a", b"").is_err(), "out of order");
        let w = SnapshotWriter::new(Vec::new(), &key, header).unwrap();
        assert!(w.finish().is_err(), "fewer than counted");
    }
}
