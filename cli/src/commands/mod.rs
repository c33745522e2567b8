//! The subcommands, and what they share: the options every command takes
//! and a client set up from them.

pub mod connect;
pub mod creds;
pub mod generic;
pub mod login;
pub mod oidc;
pub mod pam;
pub mod ssh;
pub mod sshconfig;
pub mod token;
pub mod unwrap;

// What the ssh commands (ssh, connect, creds, sshconfig, pam) share; none
// of them imports another's pieces.
mod agent;
mod engine;
mod signals;
mod sshfiles;

use std::path::PathBuf;

use gatepass_api::{Client, Settings};
use serde_json::{Map, Value};

use crate::config;
use crate::error::{Error, Result};
use crate::output::Format;

/// Options every command takes.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// The server's address [default: $GATEPASS_ADDR, $VAULT_ADDR, or
    /// https://127.0.0.1:8200]
    #[arg(short = 'a', long, global = true, value_name = "URL")]
    pub address: Option<String>,

    /// How to print answers
    #[arg(long, global = true, value_enum, default_value_t = Format::Table, env = "GATEPASS_FORMAT")]
    pub format: Format,

    /// PEM file of the CA that signed the server's certificate; only that CA
    /// is then trusted [default: $GATEPASS_CACERT or $VAULT_CACERT]
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// Have the server wrap the answer: it is kept under a single-use
    /// wrapping token for this long (e.g. 5m), and only that token is
    /// printed; `gatepass unwrap` gets the answer [default: $VAULT_WRAP_TTL]
    #[arg(long, global = true, value_name = "DURATION", env = "VAULT_WRAP_TTL")]
    pub wrap_ttl: Option<String>,
}

/// A client for one command, and how to show its answers.
pub struct Ctx {
    pub client: Client,
    pub format: Format,
    has_token: bool,
}

impl Ctx {
    /// A client with the user's token: GATEPASS_TOKEN, VAULT_TOKEN, or the
    /// token `gatepass login` saved.
    pub fn new(global: &GlobalArgs) -> Result<Ctx> {
        let mut settings = settings(global);
        match config::token_var() {
            Some(var) => config::check_token(settings.token.as_deref().unwrap_or(""), var)?,
            None => settings.token = config::load_token()?,
        }
        let mut ctx = Self::with_settings(&settings, global.format)?;
        ctx.client.set_wrap_ttl(global.wrap_ttl.clone());
        Ok(ctx)
    }

    /// A client that sends no token (logins).
    pub fn anonymous(global: &GlobalArgs) -> Result<Ctx> {
        let mut settings = settings(global);
        settings.token = None;
        Self::with_settings(&settings, global.format)
    }

    fn with_settings(settings: &Settings, format: Format) -> Result<Ctx> {
        let client = Client::new(settings).map_err(|e| Error::from_api(e, "connecting", false))?;
        Ok(Ctx {
            has_token: settings.token.is_some(),
            client,
            format,
        })
    }

    pub fn set_token(&mut self, token: String) {
        self.client.set_token(Some(token));
        self.has_token = true;
    }

    /// One API call; `action` says what it was for in error messages.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Map<String, Value>>,
        action: &str,
    ) -> Result<Option<Value>> {
        self.client
            .request(method, path, body)
            .await
            .map_err(|e| self.api_error(e, action))
    }

    pub fn api_error(&self, e: gatepass_api::Error, action: &str) -> Error {
        Error::from_api(e, action, self.has_token)
    }
}

/// The environment's settings, overridden by the command line.
fn settings(global: &GlobalArgs) -> Settings {
    let mut s = Settings::from_env();
    if let Some(a) = &global.address {
        s.addr = a.clone();
    }
    if let Some(c) = &global.ca_cert {
        s.ca_cert = Some(c.clone());
    }
    s
}

/// An API path as typed: `/sys/mounts/` and `sys/mounts` are the same.
pub fn api_path(raw: &str) -> Result<String> {
    let p = raw.trim_matches('/');
    if p.is_empty() {
        return Err(Error::Usage("a path is required, e.g. sys/mounts".into()));
    }
    Ok(p.to_string())
}
