//! gatepass-gateway: the SSH proxy of gatepass's PAM sessions.
//!
//! A person holds an SSH user certificate signed by the gateway session CA
//! whose key ID is a session ID. They run plain `ssh` to the gateway; the
//! gateway ([`accept`]) accepts only such certificates for sessions its
//! [`session::SessionSource`] knows and that are still open, logs in to the
//! session's target ([`target`]) with a credential the person never sees,
//! checks the target's host key, and bridges channels one to one
//! ([`bridge`]) until the session ends ([`limits`]).

pub mod accept;
pub mod bridge;
pub mod clock;
pub mod config;
pub mod limits;
pub mod recording;
pub mod server_source;
pub mod session;
pub mod setup;
pub mod spool;
pub mod target;

pub use accept::{
    serve, serve_relayed_until, serve_until, GatewayConfig, RelayedStream, SessionCas, LOGIN_GRACE,
};
pub use session::{Credential, EndReason, HostKeyTrust, Session, SessionSource, SourceError};
