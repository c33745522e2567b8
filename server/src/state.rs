//! The server's shared state: storage, keys, audit log, clock and metrics.
//! Opening it on data that needs first-time set-up or an upgrade is
//! `crate::bootstrap`'s.

use std::path::PathBuf;
use std::sync::Arc;

use crate::audit::{AuditKey, AuditLog};
use crate::clock::Clock;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::ratelimit::FailureLimiter;
use crate::seal::{Hasher, SealKey};
use crate::storage::Storage;

pub struct Options {
    /// `sqlite://PATH` or `postgres://…`.
    pub storage_url: String,
    pub seal_key: SealKey,
    /// JSON-lines audit file; None turns file auditing off (the database
    /// copy is always kept).
    pub audit_path: Option<PathBuf>,
    pub clock: Clock,
    /// Connections to PostgreSQL at most (unused on SQLite).
    pub storage_connections: crate::storage::PoolSize,
}

pub struct Core {
    pub storage: Storage,
    pub hasher: Hasher,
    pub audit: Option<AuditLog>,
    pub audit_key: AuditKey,
    pub clock: Clock,
    pub metrics: Metrics,
    /// Failed OTP verifications per client address.
    pub verify_limiter: FailureLimiter,
    /// Failed password logins (userpass, by the API or the UI's sign-in).
    pub login_limiter: FailureLimiter,
    /// Single sign-on logins started (OIDC `auth_url`, `device_code`):
    /// anyone may start one, and each is kept until it ends or expires.
    pub sso_start_limiter: FailureLimiter,
    /// The host-independent part of hosts' desired states.
    pub hosts_cache: crate::hosts::cache::StateCache,
    /// Hosts' last-seen times not yet written (see [`crate::hosts::seen`]).
    pub hosts_seen: crate::hosts::notes::SeenTimes,
    /// Hosts' acknowledged states not yet written (see
    /// [`crate::hosts::applied`]).
    pub hosts_applied: crate::hosts::notes::AppliedNotes,
    /// Compiled policies and combined ACLs (see [`crate::policies::acl_for`]).
    pub acl_cache: crate::policies::cache::AclCache,
    /// Relayed PAM connections waiting for their gateway to dial in.
    pub relays: crate::pam::relay::Relays,
    /// Identity providers' discovery documents and signing keys.
    pub oidc: crate::auth::oidc_cache::ProviderCache,
    /// Seals the web UI's session cookies and keys its CSRF tokens.
    pub ui_key: crate::ui::session::UiKey,
}

pub type State = Arc<Core>;

/// Failed OTP verifications a client address may make per minute.
pub const VERIFY_FAILURES_PER_MINUTE: u32 = 30;

/// Failed password logins a client address may make in
/// [`LOGIN_FAILURE_WINDOW`] seconds; then it is refused, the right
/// password too, until the window has passed.
pub const LOGIN_FAILURES: u32 = 10;
pub const LOGIN_FAILURE_WINDOW: i64 = 300;

/// Single sign-on logins a client address may start in
/// [`SSO_START_WINDOW`] seconds. A mount keeps at most 1000 in progress,
/// so without this one address could fill them and lock every user out.
pub const SSO_STARTS: u32 = 30;
pub const SSO_START_WINDOW: i64 = 600;

impl Core {
    /// A server's state on a fresh SQLite file in `dir`, with a manual
    /// clock at `now`: the unit tests' server.
    #[cfg(test)]
    pub(crate) async fn for_test(dir: &tempfile::TempDir, now: i64) -> State {
        Core::open(Options {
            storage_url: format!("sqlite://{}", dir.path().join("db").display()),
            seal_key: SealKey::generate(),
            audit_path: None,
            clock: crate::clock::Clock::manual(now),
            storage_connections: Default::default(),
        })
        .await
        .expect("open a test server's state")
    }

    /// Opens the storage and the audit file, as they are: no set-up, no
    /// upgrade (`Core::open` in `crate::bootstrap` does those).
    pub(crate) async fn connect(opts: Options) -> Result<State> {
        let storage =
            Storage::open_with(&opts.storage_url, &opts.seal_key, opts.storage_connections).await?;
        let audit_key = AuditKey::new(*opts.seal_key.derive("audit"));
        let audit = match &opts.audit_path {
            Some(p) => Some(AuditLog::open(
                p,
                AuditKey::new(*opts.seal_key.derive("audit")),
                opts.clock.now(),
            )?),
            None => None,
        };
        if let Some(log) = audit.as_ref().filter(|l| matches!(l.head(), Ok(None))) {
            if let Some(last) = storage.own_last_audit_line().await? {
                let now = opts.clock.now();
                for line in log.continue_from_copy(&last, now)? {
                    storage.append_audit(line, now).await?;
                }
            }
        }
        Ok(Arc::new(Core {
            storage,
            hasher: Hasher::new(&opts.seal_key),
            audit,
            audit_key,
            clock: opts.clock,
            metrics: Metrics::default(),
            verify_limiter: FailureLimiter::new(VERIFY_FAILURES_PER_MINUTE, 60),
            login_limiter: FailureLimiter::new(LOGIN_FAILURES, LOGIN_FAILURE_WINDOW),
            sso_start_limiter: FailureLimiter::new(SSO_STARTS, SSO_START_WINDOW),
            hosts_cache: Default::default(),
            hosts_seen: Default::default(),
            hosts_applied: Default::default(),
            acl_cache: Default::default(),
            relays: Default::default(),
            oidc: Default::default(),
            ui_key: crate::ui::session::UiKey::new(&opts.seal_key.derive("web-ui")),
        }))
    }
}
