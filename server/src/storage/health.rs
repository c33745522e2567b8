//! Whether the storage can be used now, and if not, why: the database may
//! be down or unreachable, the SQLite file locked or unreadable. Callers
//! then get a prompt 503 naming the storage and the cause instead of
//! waiting out timeouts, and `sys/health` answers without touching a dead
//! database more than a few times a second.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::error::Error;

/// How long a request waits for a pooled database connection. A burst of
/// requests larger than the pool (a fleet of hosts polling at once) queues
/// for the connections: each waits its turn for up to this long, and only
/// one that waited longer fails, alone (the database is not declared down
/// for it; see [`Health`]).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one storage call may take in all, its wait for a connection
/// included (a query on a connection to a host that stopped answering
/// would otherwise wait for TCP to give up).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A call still running after this long asks whether the database answers
/// (one probe for all of them, see [`HEALTH_TTL`]): when it does not, the
/// call fails now, naming the cause, rather than after [`CALL_TIMEOUT`].
pub const SLOW_CALL: Duration = Duration::from_secs(1);

/// How long a new connection of a health probe may take to open.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// How long the probe's `SELECT 1` may take on its open connection: a
/// database busy with a burst of requests answers it more slowly than an
/// idle one, and is not down for that.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a probe's result stands: a load balancer polling `sys/health`,
/// or every request while the storage is down, causes at most one probe
/// per this time.
pub const HEALTH_TTL: Duration = Duration::from_millis(250);

/// How long SQLite waits for a lock another connection holds before it
/// answers "database is locked".
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// How the storage is named in messages and logs: its kind and where it
/// is (host, port and database, or file), never its credentials.
pub fn describe(url: &str) -> String {
    if url.starts_with("sqlite:") {
        return match super::sqlite::path_of(url) {
            Ok(p) => format!("SQLite {}", p.display()),
            Err(_) => "SQLite (no file named)".to_string(),
        };
    }
    match sqlx::postgres::PgConnectOptions::from_str(url) {
        Ok(o) => {
            let db = o.get_database().unwrap_or(o.get_username());
            match o.get_socket() {
                Some(dir) => format!("PostgreSQL {}/{db}", dir.display()),
                None => format!("PostgreSQL {}:{}/{db}", o.get_host(), o.get_port()),
            }
        }
        Err(_) => "PostgreSQL (unreadable storage URL)".to_string(),
    }
}

/// Why a storage call failed, when the failure means the storage cannot
/// be used now (rather than a fault of the request or a bug).
pub enum Cause {
    Known(String),
    /// The pool found no connection in time; it does not say why.
    PoolTimedOut,
}

impl Cause {
    /// The same failure again, for each of several callers it failed.
    pub fn to_error(&self) -> Error {
        match self {
            Cause::Known(c) => Error::StorageUnavailable(c.clone()),
            Cause::PoolTimedOut => Error::Storage(sqlx::Error::PoolTimedOut),
        }
    }
}

/// The cause when `e` means the storage is unavailable, None otherwise.
/// An `Error::StorageUnavailable` here is a bare cause that a writer task
/// passed on (see `writer.rs`).
pub fn unavailable_cause(e: &Error) -> Option<Cause> {
    match e {
        Error::Storage(e) => sqlx_cause(e),
        Error::Sqlite(e) => sqlite_unavailable(e).then(|| Cause::Known(e.to_string())),
        Error::StorageUnavailable(c) | Error::AuditUnconfirmed { cause: c, .. } => {
            Some(Cause::Known(c.clone()))
        }
        _ => None,
    }
}

fn sqlx_cause(e: &sqlx::Error) -> Option<Cause> {
    match e {
        sqlx::Error::PoolTimedOut => Some(Cause::PoolTimedOut),
        sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => Some(Cause::Known(e.to_string())),
        // SQLSTATE classes 08 (connection exception), 53 (insufficient
        // resources: too many connections, disk full) and 57 (operator
        // intervention: shutdown, starting up, cancelled), and 25006 (a
        // write in a read-only transaction: a standby, or a database set
        // read-only).
        sqlx::Error::Database(d)
            if d.code().is_some_and(|c| {
                c.starts_with("08") || c.starts_with("53") || c.starts_with("57") || c == "25006"
            }) =>
        {
            Some(Cause::Known(e.to_string()))
        }
        _ => None,
    }
}

/// SQLite failures of the file or its locks rather than of a statement.
pub fn sqlite_unavailable(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            DatabaseBusy
                | DatabaseLocked
                | CannotOpen
                | ReadOnly
                | PermissionDenied
                | SystemIoFailure
                | DiskFull
                | NotADatabase
        ),
        _ => false,
    }
}

/// Why a connection of its own could not be made.
pub struct ConnectFailure {
    pub cause: String,
    /// Worth trying again later (the database is down or unreachable),
    /// rather than refused for good (a wrong password, no such database).
    pub retryable: bool,
}

/// Opens one connection of its own: unlike the pool, which retries
/// refused connections until it times out, this says why the database
/// cannot be reached.
pub async fn connect(url: &str, within: Duration) -> Result<sqlx::PgConnection, ConnectFailure> {
    match tokio::time::timeout(within, sqlx::PgConnection::connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(ConnectFailure {
            retryable: sqlx_cause(&e).is_some(),
            cause: e.to_string(),
        }),
        Err(_) => Err(ConnectFailure {
            cause: format!("no answer within {} ms", within.as_millis()),
            retryable: true,
        }),
    }
}

/// Whether PostgreSQL answers, asked on the probe's own connection `held`
/// (opened when there is none, and dropped when it fails: a new one then
/// says whether the database is back and, if not, why). Err holds the
/// cause.
pub async fn probe_postgres(
    url: &str,
    held: &mut Option<sqlx::PgConnection>,
) -> Result<(), String> {
    if let Some(conn) = held.as_mut() {
        if ping(conn).await.is_ok() {
            return Ok(());
        }
        *held = None;
    }
    let mut conn = connect(url, PROBE_TIMEOUT).await.map_err(|f| f.cause)?;
    ping(&mut conn).await?;
    *held = Some(conn);
    Ok(())
}

/// Whether the database answers and takes writes. A standby (after a
/// failover pointed the address at the wrong node, say), or a database set
/// read-only, answers reads but refuses every write, and the LISTEN that
/// other servers' change announcements need: this server cannot do its
/// work there, and a load balancer should send clients elsewhere.
async fn ping(conn: &mut sqlx::PgConnection) -> Result<(), String> {
    let read_only =
        sqlx::query_scalar::<_, String>("SELECT current_setting('transaction_read_only')")
            .fetch_one(conn);
    match tokio::time::timeout(PING_TIMEOUT, read_only).await {
        Ok(Ok(ro)) if ro == "on" => Err(
            "the database is read-only (a standby, or default_transaction_read_only is on) and takes no writes"
                .into(),
        ),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", PING_TIMEOUT.as_millis())),
    }
}

/// The last probe's result: Err holds the message for clients.
#[derive(Clone)]
struct Probe {
    at: Instant,
    result: Result<(), String>,
}

/// Whether the storage can be used, as the last probe found. Only a probe
/// decides that the storage is down: a call that failed because every
/// pooled connection was busy, or that was slow, fails alone, since under
/// a burst of requests that is the database at work, not the database
/// gone. On PostgreSQL the probe asks on a connection of its own, kept
/// open between probes and counted in the server's connection budget
/// (the pool has one connection fewer, see `storage::PoolSize`), so a
/// probe never needs a connection the database may refuse when the pool
/// is full, nor waits behind the requests queued for the pool.
#[derive(Default)]
pub struct Health {
    last: Mutex<Option<Probe>>,
    /// Whether `last` is a failure: read by every storage call, so kept
    /// where reading it takes no lock.
    down: AtomicBool,
    /// One probe at a time; callers that arrive meanwhile use its result.
    /// It holds the probe's PostgreSQL connection while that is open.
    pub probing: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Probe>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the storage was last seen unavailable.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// The last result, if it is recent enough to stand.
    pub fn fresh(&self) -> Option<Result<(), String>> {
        self.lock()
            .as_ref()
            .filter(|p| p.at.elapsed() < HEALTH_TTL)
            .map(|p| p.result.clone())
    }

    pub fn record(&self, result: Result<(), String>) {
        let mut last = self.lock();
        let was_down = last.as_ref().is_some_and(|p| p.result.is_err());
        self.down.store(result.is_err(), Ordering::Relaxed);
        match (&result, was_down) {
            (Err(msg), false) => tracing::error!("{msg}"),
            (Ok(()), true) => tracing::info!("storage available again"),
            _ => {}
        }
        *last = Some(Probe {
            at: Instant::now(),
            result,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_is_named_without_its_password() {
        let d = describe("postgres://gatepass:s3cret@db.example.internal:5433/gp");
        assert_eq!(d, "PostgreSQL db.example.internal:5433/gp");
        assert_eq!(
            describe("postgres://gatepass@db.example.internal/gatepass"),
            "PostgreSQL db.example.internal:5432/gatepass"
        );
        assert_eq!(
            describe("sqlite:///var/lib/gatepass/gatepass.db?mode=rwc"),
            "SQLite /var/lib/gatepass/gatepass.db"
        );
    }

    #[test]
    fn connection_failures_are_unavailable_and_query_faults_are_not() {
        let refused = Error::Storage(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(matches!(unavailable_cause(&refused), Some(Cause::Known(_))));
        assert!(matches!(
            unavailable_cause(&Error::Storage(sqlx::Error::PoolTimedOut)),
            Some(Cause::PoolTimedOut)
        ));
        assert!(unavailable_cause(&Error::Storage(sqlx::Error::RowNotFound)).is_none());
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some("database is locked".into()),
        );
        assert!(sqlite_unavailable(&busy));
        assert!(!sqlite_unavailable(&rusqlite::Error::QueryReturnedNoRows));
    }
}
