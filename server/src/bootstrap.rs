//! Bringing storage into service: first-time set-up (the `default` policy
//! and a root token), the dev server's fixed root token and `ssh` mount,
//! and the upgrades data from older versions gets when a server opens it.
//! Kept apart from `state`, which only holds what is open.

use crate::auth::token::{self, NewToken};
use crate::error::{Error, Result};
use crate::state::{Core, Options, State};
use crate::{hosts, mounts, policies};

// Set once, by the first `initialize`.
use crate::storage::INIT_KEY;

impl Core {
    /// Opens the server's state; initialized data from an older version is
    /// brought up to date.
    pub async fn open(opts: Options) -> Result<State> {
        let core = Core::connect(opts).await?;
        if core.is_initialized().await? {
            // Built-in policies added by newer versions reach older data.
            policies::ensure_default(&core).await?;
            hosts::migrate(&core).await?;
            // Indexes the UI's searches and pages read, built once over
            // what an older version stored.
            crate::ssh::certs::index_for_search(&core).await?;
            crate::pam::sessions::index_for_search(&core).await?;
        }
        Ok(core)
    }

    pub async fn is_initialized(&self) -> Result<bool> {
        self.storage.is_initialized().await
    }

    /// First-time set-up: the `default` policy and a root token (`root_token`
    /// fixes its text). Refuses to run on initialized storage, so a second
    /// `init` can never mint another root token by accident.
    ///
    /// The storage is marked initialized last, once the root token exists:
    /// a failure before it leaves storage that `init` can set up again,
    /// never one marked initialized whose root token nobody was shown.
    pub async fn initialize(&self, root_token: Option<String>) -> Result<String> {
        let already = || Error::invalid("storage is already initialized");
        let now = self.clock.now();
        if self.is_initialized().await? {
            return Err(already());
        }
        policies::ensure_default(self).await?;
        // Nothing to index yet: this marks the indexes built, so that no
        // later start scans for records from before them.
        crate::ssh::certs::index_for_search(self).await?;
        crate::pam::sessions::index_for_search(self).await?;
        let made = token::create(self, root(root_token), now).await?;
        if !self.storage.put_if_absent(INIT_KEY, &now).await? {
            // Another server's init marked it first: its root token is the
            // one; this one goes.
            token::revoke(self, &made.entry, false).await?;
            return Err(already());
        }
        // Seen once, the storage stays known to be initialized: health
        // answers from then on without a read.
        self.is_initialized().await?;
        Ok(made.text)
    }

    /// Makes sure a given root token exists (the dev server's `--root-token`
    /// on a data dir that was already initialized).
    pub async fn ensure_root_token(&self, text: &str) -> Result<()> {
        let now = self.clock.now();
        if token::lookup(self, text, now).await?.is_none() {
            token::create(self, root(Some(text.to_string())), now).await?;
        }
        Ok(())
    }

    pub async fn ensure_mount(&self, path: &str, kind: &str) -> Result<()> {
        if mounts::get(self, path).await?.is_none() {
            mounts::enable(self, path, kind, "", Default::default(), self.clock.now()).await?;
        }
        Ok(())
    }
}

/// A root token, with the given text or a new one.
fn root(id: Option<String>) -> NewToken {
    NewToken {
        id,
        policies: vec!["root".into()],
        display_name: "root".into(),
        path: "auth/token/root".into(),
        ..NewToken::default()
    }
}
