//! What the gateway knows about a session, and where it learns it from.
//!
//! The gateway does not decide who may reach what: a [`SessionSource`] (the
//! gatepass server in production, a TOML file in the testkit) tells it, for
//! a session ID taken from the user's certificate, where to log in, with
//! which credential, how to trust the target's host key, and until when.

use std::fmt;
use std::future::Future;

pub use gatepass_api::pam::EndReason;
use russh::keys::{Certificate, PrivateKey, PublicKey};
use zeroize::Zeroizing;

/// One open session, as the source hands it to the gateway.
#[derive(Debug, Clone)]
pub struct Session {
    /// The session ID; the key ID of the user's certificate.
    pub id: String,
    /// End of the session, Unix seconds. The gateway closes the connection
    /// then, whatever the user's certificate says.
    pub expires_at: u64,
    /// The target server's host name or address, as the gateway dials it and
    /// as a host certificate must name it among its principals.
    pub target_host: String,
    pub target_port: u16,
    /// The account on the target.
    pub target_username: String,
    pub credential: Credential,
    pub host_key_trust: HostKeyTrust,
    /// Whether `direct-tcpip` channels (`ssh -L`) are let through.
    pub allow_forwarding: bool,
    /// The connection's recording (its ID and key), when the source
    /// records sessions.
    pub recording: Option<gatepass_api::recording::RecordingGrant>,
}

/// How the gateway logs in to the target. Never shown to the user; `Debug`
/// prints only the kind.
#[derive(Clone)]
pub enum Credential {
    /// Password authentication, with keyboard-interactive as fallback.
    Password(Zeroizing<String>),
    /// Public key authentication.
    Key(PrivateKey),
    /// A key pair with a user certificate made for this session.
    Certificate {
        key: PrivateKey,
        cert: Box<Certificate>,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credential::Password(_) => "Password(..)",
            Credential::Key(_) => "Key(..)",
            Credential::Certificate { .. } => "Certificate(..)",
        })
    }
}

/// How the target's host key is trusted. There is deliberately no variant
/// that trusts any key.
#[derive(Debug, Clone)]
pub enum HostKeyTrust {
    /// The target must present one of these keys.
    PinnedKeys(Vec<PublicKey>),
    /// The target must present a host certificate signed by one of these
    /// CA keys, valid now, with the target host among its principals.
    HostCa(Vec<PublicKey>),
}

/// Why a source has no open session for an ID.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("no such session")]
    Unknown,
    #[error("the session has ended")]
    Ended,
    /// The source refused it (not this gateway's, not pending any more).
    #[error("refused by the server: {0}")]
    Refused(String),
    /// The source could not be asked; the text says what failed, in words
    /// the person reads ("the gatepass server cannot be reached: …").
    #[error("{0}")]
    Unavailable(String),
}

/// Where the gateway learns its sessions.
///
/// The server-side implementation fetches the session (and its credential)
/// from gatepass, which hands it out only to the gateway the resource names
/// and only while the session is open.
pub trait SessionSource: Send + Sync + 'static {
    /// The open session `id`, with its credential. `now` is Unix seconds; a
    /// session whose end is not after `now` is [`SourceError::Ended`].
    fn open_session(
        &self,
        id: &str,
        now: u64,
    ) -> impl Future<Output = Result<Session, SourceError>> + Send;

    /// Resolves when the session `id` has been ended from outside (an admin
    /// terminated it); never resolves while the session stays open. The
    /// gateway closes the connection within 2 s of this resolving, so an
    /// implementation that polls must poll at least every second or so. Its
    /// own end time is enforced by the gateway, not by this future.
    fn terminated(&self, id: &str) -> impl Future<Output = ()> + Send;

    /// The gateway closed the session `id` (or could not open it after the
    /// source handed it out): called exactly once per session that
    /// [`SessionSource::open_session`] returned, with the reason, and for
    /// [`EndReason::Failed`] a detail saying what went wrong. The gateway
    /// does not wait on it to close the connection; an implementation that
    /// reports over the network should bound its own retries.
    fn ended(
        &self,
        id: &str,
        reason: EndReason,
        detail: Option<String>,
    ) -> impl Future<Output = ()> + Send;
}
