//! The server's shared state: storage, keys, audit log, clock and metrics.

use std::path::PathBuf;
use std::sync::Arc;

use crate::audit::{AuditKey, AuditLog};
use crate::auth::token::{self, NewToken};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::ratelimit::FailureLimiter;
use crate::seal::{Hasher, SealKey};
use crate::storage::Storage;
use crate::{mounts, policies};

pub struct Options {
    /// `sqlite://PATH` or `postgres://…`.
    pub storage_url: String,
    pub seal_key: SealKey,
    /// JSON-lines audit file; None turns file auditing off (the database
    /// copy is always kept).
    pub audit_path: Option<PathBuf>,
    pub clock: Clock,
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
    /// The host-independent part of hosts' desired states.
    pub hosts_cache: crate::hosts::StateCache,
    /// Compiled policies and combined ACLs (see [`policies::acl_for`]).
    pub acl_cache: policies::AclCache,
}

pub type State = Arc<Core>;

/// Failed OTP verifications a client address may make per minute.
pub const VERIFY_FAILURES_PER_MINUTE: u32 = 30;

const INIT_KEY: &str = "core/initialized";

impl Core {
    pub async fn open(opts: Options) -> Result<State> {
        let storage = Storage::open(&opts.storage_url, &opts.seal_key).await?;
        let audit_key = AuditKey::new(*opts.seal_key.derive("audit"));
        let audit = match &opts.audit_path {
            Some(p) => Some(AuditLog::open(
                p,
                AuditKey::new(*opts.seal_key.derive("audit")),
                opts.clock.now(),
            )?),
            None => None,
        };
        let core = Arc::new(Core {
            storage,
            hasher: Hasher::new(&opts.seal_key),
            audit,
            audit_key,
            clock: opts.clock,
            metrics: Metrics::default(),
            verify_limiter: FailureLimiter::new(VERIFY_FAILURES_PER_MINUTE, 60),
            hosts_cache: Default::default(),
            acl_cache: Default::default(),
        });
        if core.is_initialized().await? {
            // Built-in policies added by newer versions reach older data.
            policies::ensure_default(&core).await?;
            crate::hosts::migrate(&core).await?;
        }
        Ok(core)
    }

    pub async fn is_initialized(&self) -> Result<bool> {
        Ok(self.storage.get::<i64>(INIT_KEY).await?.is_some())
    }

    /// First-time set-up: the `default` policy and a root token (`root_token`
    /// fixes its text). Refuses to run on initialized storage, so a second
    /// `init` can never mint another root token by accident.
    pub async fn initialize(&self, root_token: Option<String>) -> Result<String> {
        let now = self.clock.now();
        if !self.storage.put_if_absent(INIT_KEY, &now).await? {
            return Err(Error::invalid("storage is already initialized"));
        }
        policies::ensure_default(self).await?;
        let (text, _) = token::create(
            self,
            NewToken {
                id: root_token,
                policies: vec!["root".into()],
                display_name: "root".into(),
                path: "auth/token/root".into(),
                ..NewToken::default()
            },
            now,
        )
        .await?;
        Ok(text)
    }

    /// Makes sure a given root token exists (the dev server's `--root-token`
    /// on a data dir that was already initialized).
    pub async fn ensure_root_token(&self, text: &str) -> Result<()> {
        let now = self.clock.now();
        if token::lookup(self, text, now).await?.is_none() {
            token::create(
                self,
                NewToken {
                    id: Some(text.to_string()),
                    policies: vec!["root".into()],
                    display_name: "root".into(),
                    path: "auth/token/root".into(),
                    ..NewToken::default()
                },
                now,
            )
            .await?;
        }
        Ok(())
    }

    pub async fn ensure_mount(&self, path: &str, kind: &str) -> Result<()> {
        if mounts::get(self, path).await?.is_none() {
            mounts::enable(self, path, kind, "", self.clock.now()).await?;
        }
        Ok(())
    }
}
