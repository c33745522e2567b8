//! `gatepass-gateway`: the PAM gateway's binary.
//!
//! The proxy itself is the library (`gatepass_gateway`); this is its
//! command line: `setup` enrolls the gateway with the server, `run` is the
//! systemd service following its sessions from the server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use gatepass_gateway::config::{Config, Mode, DEFAULT_CONFIG, DEFAULT_HOST_KEY};
use gatepass_gateway::recording::{Masking, RecordingSettings};
use gatepass_gateway::server_source::{ServerSettings, ServerSource};
use gatepass_gateway::setup::{self, Reach, SetupOptions};
use gatepass_gateway::spool::Spool;
use gatepass_gateway::{GatewayConfig, SessionCas};
use russh::keys::PrivateKey;
use tokio::net::TcpListener;
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "gatepass-gateway",
    version,
    about = "gatepass PAM gateway: proxies just-in-time SSH sessions to target servers",
    long_about = "gatepass PAM gateway: accepts SSH connections carrying a session \
certificate of the gateway session CA, logs in to the session's target with a \
credential the user never sees, and bridges the session until it ends (its end \
time, an administrator's terminate, the user closing it, or the idle timeout).\n\n\
`setup` enrolls the gateway with the gatepass server once (with a join token from \
`POST /v1/pam/gateways/join-tokens`) and writes its config, token and host key; \
`run` (the systemd service) follows the gateway's sessions from the server and \
serves SSH.\n\n\
Users ask the server for access (`POST /v1/pam/resources/<r>/accounts/<a>/access`, \
which the `gatepass` CLI does for them) and run plain `ssh -p PORT ACCOUNT@GATEWAY` \
with the session certificate they get; the gateway only accepts certificates of the \
session CA whose key ID is a session the server reports open and assigned to this \
gateway."
)]
struct Cli {
    /// The gateway's config file.
    #[arg(long, global = true, env = "GATEPASS_GATEWAY_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this gateway with the server (once) and write its config.
    ///
    /// Makes the SSH host key if it is missing (ed25519, mode 0600, with
    /// its .pub next to it), enrolls with the join token (POST
    /// pam/gateways/enroll: name, address, host key), and writes the
    /// gateway token (gateway.token next to the config, mode 0600), the
    /// server's CA certificate (gateway-server-ca.pem next to the config; the only
    /// CA trusted) and the config (--config). Refuses to enroll again over
    /// an existing config or token unless --replace is given.
    Setup {
        /// The gatepass server, e.g. https://gatepass.example.com:8200.
        #[arg(long)]
        server: String,
        /// A join token from `POST /v1/pam/gateways/join-tokens`.
        #[arg(long, env = "GATEPASS_JOIN_TOKEN", hide_env_values = true)]
        join_token: String,
        /// The server's CA certificate (PEM); copied next to the config and
        /// pinned: no other CA is trusted.
        #[arg(long)]
        ca_cert: PathBuf,
        /// Where the gateway's SSH server listens, e.g. 0.0.0.0:2222.
        #[arg(long, required_unless_present = "relay")]
        listen: Option<std::net::SocketAddr>,
        /// No inbound port: the gateway keeps its connection to the server
        /// and dials out for each user connection, which the server relays
        /// (users' `gatepass pam ssh` goes through the server). Config
        /// `mode = "relay"`; neither --listen nor --address.
        #[arg(long, conflicts_with_all = ["listen", "address"])]
        relay: bool,
        /// The gateway's name; resources name their gateway by it
        /// (lower-case letters, digits, '-', '_' and '.').
        #[arg(long)]
        name: String,
        /// host:port users' ssh dials to reach the gateway [default: the
        /// listen address].
        #[arg(long)]
        address: Option<String>,
        /// The gateway token's file [default: gateway.token next to the
        /// config].
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// The gateway's SSH host key; made when missing.
        #[arg(long, default_value = DEFAULT_HOST_KEY)]
        host_key: PathBuf,
        /// Enroll again over an existing config and token, and take the
        /// place of a gateway enrolled under the same name (the server
        /// revokes its token).
        #[arg(long)]
        replace: bool,
    },
    /// Serve SSH and follow the gateway's sessions (the systemd service).
    ///
    /// Tells the server it started (sessions left active by a previous run
    /// end as gateway_lost), long-polls the open sessions and the session
    /// CA keys, and serves SSH on the listen address (a relay gateway binds
    /// no port: it dials the server for each relayed connection the
    /// long-poll lists and serves it the same way). A session ends at its
    /// end time, when an administrator terminates it (within 2 s), when the
    /// user closes it, or after the idle timeout; each end is reported to
    /// the server. While the server cannot be reached, open sessions keep
    /// running to their end time and new ones are refused. SIGTERM or
    /// SIGINT tells every user "gatepass: the gateway is stopping", closes
    /// the sessions, reports them as gateway_lost and exits. Logs go to
    /// stderr (the journal under systemd); GATEPASS_LOG sets the level.
    Run,
    /// Write man pages and shell completions into DIR (for packaging).
    #[command(name = "__docs", hide = true)]
    Docs { dir: PathBuf },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEPASS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,russh=warn"));
    // Colours for a terminal only: in a file or the journal their escape
    // codes are noise around every field.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // journald stamps lines itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        b.without_time().init();
    } else {
        b.init();
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    match cli.command {
        Command::Setup {
            server,
            join_token,
            ca_cert,
            listen,
            relay,
            name,
            address,
            token_file,
            host_key,
            replace,
        } => {
            let reach = match (relay, listen) {
                (false, Some(listen)) => Reach::Direct { listen, address },
                (false, None) => return Err(anyhow!("--listen or --relay is required")),
                (true, _) => Reach::Relay,
            };
            let opts = SetupOptions {
                config_path: cli.config.clone(),
                server,
                join_token,
                ca_cert,
                reach,
                name,
                token_file,
                host_key,
                replace,
            };
            let report = rt.block_on(setup::setup(&opts)).map_err(|e| anyhow!(e))?;
            let cfg = &report.config;
            if report.made_host_key {
                println!("made the host key {}", cfg.host_key.display());
            }
            println!("host key: {}", report.host_key_public);
            match cfg.mode {
                Mode::Direct => println!(
                    "enrolled as gateway {:?}; users reach it at {}",
                    cfg.name, cfg.address
                ),
                Mode::Relay => println!(
                    "enrolled as relay gateway {:?}; users reach it through the server (no inbound port)",
                    cfg.name
                ),
            }
            println!("wrote {}", cfg.token_file.display());
            println!("wrote {}", cli.config.display());
            println!("start it with: systemctl enable --now gatepass-gateway");
            Ok(())
        }
        Command::Run => {
            let cfg = Config::load(&cli.config)?;
            rt.block_on(run(cfg))
        }
        Command::Docs { dir } => {
            use clap::CommandFactory;
            Ok(gatepass_api::docs::write(Cli::command(), &dir)?)
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = int.recv() => info!("SIGINT: stopping"),
        }
    })
}

/// The spool in the state directory and the signing key.
fn recording_settings(cfg: &Config) -> Result<Arc<RecordingSettings>> {
    let spool = Spool::open(
        &cfg.state_dir.join("recording-spool"),
        cfg.recording.spool_max_mib << 20,
    )
    .map_err(|e| anyhow!(e))?;
    let signer = match &cfg.recording_key {
        Some(path) => gatepass_gateway::setup::load_recording_key(path).map_err(|e| anyhow!(e))?,
        None => None,
    };
    if signer.is_none() {
        warn!("no recording key: session recordings end unsigned (run `gatepass-gateway setup --replace` to make and register one)");
    }
    Ok(Arc::new(RecordingSettings {
        spool: Arc::new(spool),
        signer,
        chunk_bytes: usize::try_from(cfg.recording.chunk_kib).unwrap_or(64) * 1024,
        max_chunk_bytes: gatepass_gateway::recording::MAX_CHUNK_BYTES,
        max_sealed_bytes: gatepass_gateway::recording::MAX_SEALED_BYTES,
        chunk_interval: Duration::from_secs(cfg.recording.chunk_seconds),
        mask: Masking::new(&cfg.recording.mask).map_err(|e| anyhow!(e))?,
    }))
}

async fn run(cfg: Config) -> Result<()> {
    let token = cfg.read_token().map_err(|e| anyhow!(e))?;
    let host_key = PrivateKey::read_openssh_file(&cfg.host_key)
        .with_context(|| format!("cannot read the host key {}", cfg.host_key.display()))?;
    let host_key_line = host_key
        .public_key()
        .to_openssh()
        .context("encoding the host key")?;
    let cas = SessionCas::default();
    let source = Arc::new(
        ServerSource::new(
            &ServerSettings {
                server: cfg.server.clone(),
                ca_cert: cfg.ca_cert.clone(),
                token,
                wait: Duration::from_secs(cfg.sync.wait_seconds),
                max_backoff: Duration::from_secs(cfg.sync.max_backoff_seconds),
                recording: cfg.recording.enabled,
            },
            cas.clone(),
        )
        .map_err(|e| anyhow!(e))?,
    );
    let stop = stop_signal().await?;
    tokio::pin!(stop);
    // Nothing can be admitted before the server has named the session CA,
    // so the gateway waits for it; a refusal (revoked token) is final.
    let mut backoff = Duration::from_secs(1);
    let index = loop {
        tokio::select! {
            answer = source.started(vec![host_key_line.clone()]) => match answer {
                Ok(index) => break index,
                Err(e @ gatepass_api::Error::Api { status, .. }) if (400..500).contains(&status) => {
                    return Err(anyhow!("the gatepass server refused the gateway: {e} (enroll again with `gatepass-gateway setup --replace`)"));
                }
                Err(e) => {
                    warn!("the gatepass server cannot be reached: {}; trying again in {}s",
                        gatepass_gateway::server_source::with_causes(&e), backoff.as_secs());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(cfg.sync.max_backoff_seconds));
                }
            },
            () = &mut stop => return Ok(()),
        }
    };
    // Bound before the follower starts, so that a taken port fails the
    // start at once.
    let listener = match cfg.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        ),
        None => None,
    };
    match cfg.listen {
        Some(addr) => {
            info!(listen = %addr, name = %cfg.name, server = %cfg.server, "gateway ready")
        }
        None => info!(name = %cfg.name, server = %cfg.server,
            "gateway ready (relay: no inbound port; connections come through the server)"),
    }
    let follower = tokio::spawn(source.clone().follow(index));
    let renewer = tokio::spawn(source.clone().renew_token());
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let recording = recording_settings(&cfg)?;
    let spool = recording.spool.clone();
    let deliverer = tokio::spawn(gatepass_gateway::spool::deliver(
        spool.clone(),
        source.client(),
    ));
    if !cfg.recording.enabled {
        warn!("session recording is off ([recording] enabled = false): sessions through this gateway are not recorded; the server puts a session_not_recorded event on record for each");
    }
    let config = GatewayConfig {
        host_keys: vec![host_key],
        session_cas: cas,
        idle_timeout: cfg.idle_timeout,
        recording: cfg.recording.enabled.then_some(recording),
        login_grace: gatepass_gateway::LOGIN_GRACE,
    };
    let (served, dialer) = match listener {
        Some(listener) => (
            gatepass_gateway::serve_until(listener, config, source, stop).await,
            None,
        ),
        None => {
            let (streams_tx, streams) = tokio::sync::mpsc::channel(64);
            let dialer = tokio::spawn(source.clone().dial_relays(streams_tx));
            (
                gatepass_gateway::serve_relayed_until(streams, config, source, stop).await,
                Some(dialer),
            )
        }
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    follower.abort();
    renewer.abort();
    // What is not delivered yet waits in the spool for the next start,
    // once the writer has put it there.
    deliverer.abort();
    spool.flush();
    if let Some(d) = dialer {
        d.abort();
    }
    served.context("serving SSH")?;
    info!("stopped");
    Ok(())
}
