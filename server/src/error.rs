//! The server's one error type, mapped to Vault's `{"errors":[…]}` bodies in
//! one place (`http::error_response`), so internals never leak to clients.

use axum::http::StatusCode;

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
    /// The storage cannot be used right now (database down or unreachable,
    /// file locked or unreadable): 503, with a message naming the storage
    /// (never its password) and the cause, so that an operator knows what
    /// to fix and a client that retrying later may work.
    #[error("{0}")]
    StorageUnavailable(String),
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

    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Error::PermissionDenied => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::UnsupportedOperation => StatusCode::METHOD_NOT_ALLOWED,
            Error::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) | Error::StorageUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Storage(_)
            | Error::Sqlite(_)
            | Error::Migrate(_)
            | Error::Io(_)
            | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
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
