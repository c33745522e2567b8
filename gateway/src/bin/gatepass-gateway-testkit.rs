//! `gatepass-gateway-testkit`: the gateway with its sessions read from a
//! TOML file instead of the gatepass server, for the end-to-end tests
//! (tests/tests/it/gateway_proxy.rs). Built only with the `testkit` feature.
//!
//! The sessions file is read again at every login and polled for
//! terminations, so a test can add sessions or set `terminated = true`
//! while the gateway runs:
//!
//! ```toml
//! [[session]]
//! id = "s-key"
//! expires_at = 1900000000          # Unix seconds
//! host = "127.0.0.1"
//! port = 2201
//! username = "root"
//! private_key_file = "/path/key"   # or password = "…", or both
//! certificate_file = "/path/key-cert.pub"  # with private_key_file
//! known_hosts = ["ssh-ed25519 AAAA…"]      # or host_ca = ["ssh-ed25519 AAAA…"]
//! allow_forwarding = true
//! terminated = false
//! ```
//!
//! With `--ends FILE`, each session's end is appended to FILE as a line
//! `ID REASON` (and ` DETAIL` for a failure). SIGTERM or SIGINT stops the
//! gateway the way the service stops: users are told, sessions are
//! reported `gateway_lost`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use gatepass_gateway::{
    Credential, EndReason, GatewayConfig, HostKeyTrust, Session, SessionCas, SessionSource,
    SourceError,
};
use russh::keys::{Certificate, PrivateKey, PublicKey};
use serde::Deserialize;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "gatepass-gateway-testkit",
    about = "gatepass-gateway with sessions from a file, for tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve SSH; prints `port=N` once listening.
    Serve {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long)]
        host_key: PathBuf,
        #[arg(long)]
        session_ca: PathBuf,
        #[arg(long)]
        sessions: PathBuf,
        /// Idle timeout in seconds.
        #[arg(long)]
        idle_timeout: Option<u64>,
        /// Login grace time in seconds (default: the gateway's, 120).
        #[arg(long)]
        login_grace_time: Option<u64>,
        /// Append each session's end here as `ID REASON [DETAIL]`.
        #[arg(long)]
        ends: Option<PathBuf>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    session: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    expires_at: u64,
    host: String,
    port: u16,
    username: String,
    password: Option<String>,
    private_key_file: Option<PathBuf>,
    certificate_file: Option<PathBuf>,
    #[serde(default)]
    known_hosts: Vec<String>,
    #[serde(default)]
    host_ca: Vec<String>,
    #[serde(default)]
    allow_forwarding: bool,
    #[serde(default)]
    terminated: bool,
}

struct FileSource {
    path: PathBuf,
    ends: Option<PathBuf>,
}

impl FileSource {
    fn read(&self) -> Result<File> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", self.path.display()))
    }

    fn entry_terminated(&self, id: &str) -> bool {
        match self.read() {
            Ok(file) => file
                .session
                .iter()
                .find(|e| e.id == id)
                .is_none_or(|e| e.terminated),
            // A file caught half written is not a termination.
            Err(_) => false,
        }
    }
}

fn public_keys(lines: &[String]) -> Result<Vec<PublicKey>> {
    lines
        .iter()
        .map(|l| PublicKey::from_openssh(l).with_context(|| format!("bad public key {l:?}")))
        .collect()
}

fn session_of(e: &Entry) -> Result<Session> {
    let key = |path: &Path| -> Result<PrivateKey> {
        let text = std::fs::read_to_string(path)?;
        Ok(PrivateKey::from_openssh(text)?)
    };
    let credential = match (&e.password, &e.private_key_file, &e.certificate_file) {
        (Some(p), None, None) => Credential::Password(p.clone().into()),
        (None, Some(k), None) => Credential::Key(key(k)?),
        (None, Some(k), Some(c)) => Credential::Certificate {
            key: key(k)?,
            cert: Box::new(Certificate::read_file(c)?),
        },
        _ => bail!(
            "session {}: give password, private_key_file, or private_key_file and certificate_file",
            e.id
        ),
    };
    let trust = match (e.known_hosts.is_empty(), e.host_ca.is_empty()) {
        (false, true) => HostKeyTrust::PinnedKeys(public_keys(&e.known_hosts)?),
        (true, false) => HostKeyTrust::HostCa(public_keys(&e.host_ca)?),
        _ => bail!("session {}: give known_hosts or host_ca", e.id),
    };
    Ok(Session {
        id: e.id.clone(),
        expires_at: e.expires_at,
        target_host: e.host.clone(),
        target_port: e.port,
        target_username: e.username.clone(),
        credential,
        host_key_trust: trust,
        allow_forwarding: e.allow_forwarding,
        recording: None,
    })
}

impl SessionSource for FileSource {
    async fn open_session(&self, id: &str, now: u64) -> Result<Session, SourceError> {
        let file = self.read().map_err(|e| {
            SourceError::Unavailable(format!("the session source cannot be reached: {e:#}"))
        })?;
        let entry = file
            .session
            .iter()
            .find(|e| e.id == id)
            .ok_or(SourceError::Unknown)?;
        if entry.terminated || entry.expires_at <= now {
            return Err(SourceError::Ended);
        }
        session_of(entry).map_err(|e| {
            SourceError::Unavailable(format!("the session source cannot be reached: {e:#}"))
        })
    }

    async fn terminated(&self, id: &str) {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if self.entry_terminated(id) {
                return;
            }
        }
    }

    async fn ended(&self, id: &str, reason: EndReason, detail: Option<String>) {
        let reason = serde_json::to_value(reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let line = match detail {
            Some(d) => format!("{id} {reason} {d}\n"),
            None => format!("{id} {reason}\n"),
        };
        eprintln!("session end: {}", line.trim_end());
        if let Some(path) = &self.ends {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = written {
                eprintln!("cannot append to {}: {e}", path.display());
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,russh=warn".into()),
        )
        .init();
    let Command::Serve {
        listen,
        host_key,
        session_ca,
        sessions,
        idle_timeout,
        login_grace_time,
        ends,
    } = Cli::parse().command;
    let host_key = PrivateKey::read_openssh_file(&host_key)
        .with_context(|| format!("reading {}", host_key.display()))?;
    let ca = PublicKey::read_openssh_file(&session_ca)
        .with_context(|| format!("reading {}", session_ca.display()))?;
    let listener = TcpListener::bind(&listen).await?;
    println!("port={}", listener.local_addr()?.port());
    let config = GatewayConfig {
        host_keys: vec![host_key],
        session_cas: SessionCas::new(&[ca]),
        idle_timeout: idle_timeout.map(Duration::from_secs),
        recording: None,
        login_grace: login_grace_time.map_or(gatepass_gateway::LOGIN_GRACE, Duration::from_secs),
    };
    let source = Arc::new(FileSource {
        path: sessions,
        ends,
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    gatepass_gateway::serve_until(listener, config, source, stop).await?;
    Ok(())
}
