//! The server's one error type. The HTTP layer maps it to a status and
//! Vault's `{"errors":[…]}` body in one place (`http::status_of`), with
//! [`Error::public_message`] as the text, so internals never leak to clients.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: the message is shown to the client as is.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("permission denied")]
    PermissionDenied,
    #[error("{0}")]
    NotFound(String),
    #[error("unsupported operation")]
    UnsupportedOperation,
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    Unavailable(String),
    /// Something the server waited for on the client's behalf (a gateway
    /// dialing in for a relayed connection) did not come in time: 504.
    #[error("{0}")]
    GatewayTimeout(String),
    /// The storage cannot be used right now (database down or unreachable,
    /// file locked or unreadable): 503, with a message naming the storage
    /// (never its password) and the cause, so that an operator knows what
    /// to fix and a client that retrying later may work.
    #[error("{0}")]
    StorageUnavailable(String),
    /// A batch of the audit copy whose commit was sent but whose answer
    /// never came (the connection lost on the way): stored or not, nobody
    /// knows until the row `last_id`, whose id no other batch can take, is
    /// looked for.
    #[error("{cause} (whether audit batch {last_id} was stored is not known)")]
    AuditUnconfirmed { last_id: i64, cause: String },
    #[error("storage error: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("storage error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidRequest(msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }

    /// What the client is told. Server-side failures get a fixed text; the
    /// detail goes to the log only.
    pub fn public_message(&self) -> String {
        match self {
            Error::Storage(_)
            | Error::Sqlite(_)
            | Error::Migrate(_)
            | Error::Io(_)
            | Error::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        }
    }
}
