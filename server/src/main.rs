//! `gatepass-server`: dev, serve, init, audit verify and audit rotate,
//! snapshot save and snapshot restore.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use gatepass_server::audit::{self, AuditKey, VerifyOutcome};
use gatepass_server::clock::Clock;
use gatepass_server::config::{parse_duration, Limits, Retention, ServerConfig};
use gatepass_server::seal::SealKey;
use gatepass_server::storage::describe as describe_storage;
use gatepass_server::storage::snapshot;
use gatepass_server::{private, serve, tls, Core, Options};

// glibc's malloc spent about an eighth of the server's CPU under load (its
// arenas shared between the runtime's threads); mimalloc's per-thread heaps
// do not.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gatepass-server",
    version,
    about = "gatepass central server: SSH certificate authority and OTP issuer with a Vault-compatible HTTPS API",
    long_about = "gatepass central server: SSH certificate authority and OTP issuer with a \
                  Vault-compatible HTTPS API.\n\nTry it with `gatepass-server dev`; run it in \
                  production with `gatepass-server init` once, then `gatepass-server serve`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a complete throw-away server for trying gatepass out (like `vault server -dev`).
    ///
    /// Embedded SQLite in a fresh temporary folder (or --data-dir), HTTPS with a
    /// self-signed certificate whose CA is written to DATA_DIR/tls/ca.pem, a root
    /// token, and the `ssh` mount enabled. Prints `export` lines for the client.
    Dev {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8200")]
        listen: SocketAddr,
        /// Keep data here instead of a temporary folder removed on exit.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Use this root token instead of a random one.
        #[arg(long, env = "GATEPASS_DEV_ROOT_TOKEN")]
        root_token: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        retention: RetentionArgs,
    },
    /// Run the server from a configuration file.
    Serve {
        #[arg(long, short, default_value = "/etc/gatepass/server.toml")]
        config: PathBuf,
    },
    /// Create the seal key and the first root token (once; refuses to run twice).
    Init {
        #[arg(long, short, default_value = "/etc/gatepass/server.toml")]
        config: PathBuf,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Backups: a consistent, sealed copy of the storage, and bringing one back.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Write man pages and shell completions into DIR (for packaging).
    #[command(name = "__docs", hide = true)]
    Docs { dir: PathBuf },
}

/// The dev server's connection limits (`serve` reads them from `[limits]`).
#[derive(clap::Args)]
struct LimitArgs {
    /// Open connections at most (0: as many as the open-file limit allows).
    #[arg(long, default_value_t = 0)]
    max_connections: usize,
    /// Open connections from one client address at most (0: no limit).
    #[arg(long, default_value_t = 0)]
    max_connections_per_address: usize,
    /// Time for a client to finish the TLS handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    tls_handshake_timeout: std::time::Duration,
    /// Time for a client to send a whole request header, from its first byte.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: std::time::Duration,
    /// Time for a client to send a whole request body, once its header has
    /// come; a request over it is answered 408 and its connection closed.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    body_read_timeout: std::time::Duration,
    /// Close a connection with nothing sent or answered for this long, or
    /// whose client takes nothing of what it is sent for this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: std::time::Duration,
}

impl From<LimitArgs> for Limits {
    fn from(a: LimitArgs) -> Limits {
        Limits {
            max_connections: a.max_connections,
            max_connections_per_address: a.max_connections_per_address,
            tls_handshake_timeout: a.tls_handshake_timeout,
            header_read_timeout: a.header_read_timeout,
            body_read_timeout: a.body_read_timeout,
            idle_timeout: a.idle_timeout,
        }
    }
}

/// The dev server's retention (`serve` reads it from `[retention]`).
#[derive(clap::Args)]
struct RetentionArgs {
    /// Delete lines of the database's copy of the audit log older than this.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    retention_audit_copy: std::time::Duration,
    /// Keep certificates in the inventory this long after they expire.
    #[arg(long, default_value = "1d", value_parser = parse_duration)]
    retention_expired_certificates: std::time::Duration,
    /// How often retention runs (and gives freed space back).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    retention_interval: std::time::Duration,
    /// Delete session recordings this long after they began (once their
    /// session ended); unset: kept.
    #[arg(long, value_parser = parse_duration)]
    retention_recordings: Option<std::time::Duration>,
}

impl From<RetentionArgs> for Retention {
    fn from(a: RetentionArgs) -> Retention {
        Retention {
            audit_copy: a.retention_audit_copy,
            expired_certificates: a.retention_expired_certificates,
            interval: a.retention_interval,
            recordings: a.retention_recordings,
        }
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check an audit file's hash chain; reports the first edited, removed or reordered line.
    Verify {
        /// The audit file.
        file: PathBuf,
        /// Server configuration (for its seal key file).
        #[arg(long, short, conflicts_with = "seal_key_file")]
        config: Option<PathBuf>,
        /// The seal key file directly (a dev server keeps it in DATA_DIR/seal.key).
        #[arg(long)]
        seal_key_file: Option<PathBuf>,
        /// Pass a file whose only fault is an incomplete last line (a write
        /// that did not finish), such as one the server set aside as `*-torn`.
        #[arg(long)]
        allow_torn_tail: bool,
    },
    /// Move the audit file aside (to `<audit_log>.<UTC time>`) and continue its chain in a new file.
    ///
    /// While a server writes the file, the server moves to the new file by
    /// itself within a second; otherwise this command starts the new file.
    Rotate {
        #[arg(long, short, default_value = "/etc/gatepass/server.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Write a consistent copy of the server's storage to FILE, while it serves.
    ///
    /// Reads the storage named in the configuration (SQLite or PostgreSQL)
    /// in one read transaction, so FILE holds the state of one moment even
    /// while a server keeps writing: SQLite is read beside the server's
    /// writer (WAL), PostgreSQL in one REPEATABLE READ READ ONLY
    /// transaction. Every entry is copied as stored, its value still sealed
    /// with the seal key; the whole file carries a MAC keyed from the seal
    /// key, so `restore` refuses a truncated, edited or another key's file.
    /// Tokens, CA keys, roles, policies, certificates, leases, hosts and
    /// the rest are all entries. Not included: the database's copy of the
    /// audit log (the audit file is the record; keep it with the snapshot).
    ///
    /// FILE is written 0600 under a temporary name in its folder, synced,
    /// then renamed; an existing FILE is never replaced. A snapshot is of
    /// no use without the seal key: back that up too, apart from it.
    Save {
        #[arg(long, short, default_value = "/etc/gatepass/server.toml")]
        config: PathBuf,
        /// The snapshot file to write (must not exist).
        file: PathBuf,
    },
    /// Bring a snapshot into new, empty storage, for a new server.
    ///
    /// The configuration names the new storage: a new SQLite file or an
    /// empty PostgreSQL database, on which neither `init` nor a server has
    /// run (the snapshot brings the root token and everything else), and
    /// the seal key the snapshot was taken with (copy the old server's
    /// seal key file). The whole file is read and checked first: a
    /// truncated, edited or another key's snapshot is refused with the
    /// storage untouched. Then the storage is created and migrated as
    /// `serve` would, and every entry written in one transaction. Start
    /// the server afterwards with `serve`.
    Restore {
        #[arg(long, short, default_value = "/etc/gatepass/server.toml")]
        config: PathBuf,
        /// The snapshot file, written by `snapshot save`.
        file: PathBuf,
    },
}

fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("GATEPASS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours for a terminal only: in a file or the journal their escape
    // codes are noise around every field.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // journald stamps lines itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        b.without_time().init();
    } else {
        b.init();
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The error and its causes on one line, never a backtrace (anyhow
    // prints one for `main() -> Result` when RUST_BACKTRACE is set).
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Docs { dir } = &cli.command {
        use clap::CommandFactory;
        return Ok(gatepass_api::docs::write(Cli::command(), dir)?);
    }
    init_logging();
    tls::install_crypto_provider();
    serve::raise_open_file_limit();
    serve::no_transparent_huge_pages();
    match cli.command {
        Command::Dev {
            listen,
            data_dir,
            root_token,
            limits,
            retention,
        } => {
            dev(
                listen,
                data_dir,
                root_token,
                limits.into(),
                retention.into(),
            )
            .await
        }
        Command::Serve { config } => serve_cmd(&config).await,
        Command::Init { config } => init_cmd(&config).await,
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    config,
                    seal_key_file,
                    allow_torn_tail,
                },
        } => verify_cmd(&file, config, seal_key_file, allow_torn_tail),
        Command::Audit {
            command: AuditCommand::Rotate { config },
        } => rotate_cmd(&config),
        Command::Snapshot {
            command: SnapshotCommand::Save { config, file },
        } => snapshot_save_cmd(&config, &file).await,
        Command::Snapshot {
            command: SnapshotCommand::Restore { config, file },
        } => snapshot_restore_cmd(&config, &file).await,
        Command::Docs { .. } => Ok(()),
    }
}

/// Tells systemd (Type=notify) the socket is bound and requests are served;
/// a no-op when not run by systemd.
fn notify_ready() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

async fn dev(
    listen: SocketAddr,
    data_dir: Option<PathBuf>,
    root_token: Option<String>,
    limits: Limits,
    retention: Retention,
) -> anyhow::Result<()> {
    // A temporary folder lives as long as this guard, i.e. until exit.
    let (dir, _guard) = match data_dir {
        Some(d) => {
            private::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
            (std::fs::canonicalize(&d)?, None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("gatepass-dev-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let seal_path = dir.join("seal.key");
    let seal = if seal_path.exists() {
        SealKey::load(&seal_path)?
    } else {
        let k = SealKey::generate();
        k.write_new(&seal_path)?;
        k
    };
    let files = tls::dev_certificates(&dir.join("tls"))?;
    let core = Core::open(Options {
        storage_url: sqlite_url(&dir.join("gatepass.db")),
        seal_key: seal,
        audit_path: Some(dir.join("audit.log")),
        clock: Clock::System,
        storage_connections: Default::default(),
    })
    .await?;
    let token = if core.is_initialized().await? {
        if let Some(t) = &root_token {
            core.ensure_root_token(t).await?;
        }
        root_token
    } else {
        Some(core.initialize(root_token).await?)
    };
    core.ensure_mount("ssh", "ssh").await?;

    let listener = serve::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let host = if addr.ip().is_unspecified() || addr.ip().is_loopback() && addr.is_ipv4() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    eprintln!(
        "gatepass dev server: data in {} (SQLite), listening on https://{host}",
        dir.display()
    );
    eprintln!("Do not use the dev server in production. Run these in your shell:");
    println!("export GATEPASS_ADDR='https://{host}'");
    match &token {
        Some(t) => println!("export GATEPASS_TOKEN='{t}'"),
        None => eprintln!("(root token unchanged from the first run on this data dir)"),
    }
    println!("export GATEPASS_CACERT='{}'", files.ca.display());
    use std::io::Write;
    std::io::stdout().flush()?;
    let cfg = tls::rustls_config(&files.cert, &files.key).await?;
    tokio::spawn(gatepass_server::leases::sweeper(core.clone()));
    tokio::spawn(gatepass_server::auth::token::sweeper(core.clone()));
    tokio::spawn(gatepass_server::hosts::seen::flusher(core.clone()));
    tokio::spawn(gatepass_server::retention::task(core.clone(), retention));
    spawn_audit_tasks(&core);
    notify_ready();
    serve::run(
        core.clone(),
        listener,
        Some(cfg),
        &limits,
        &[],
        serve::shutdown_signal(),
    )
    .await?;
    gatepass_server::hosts::seen::flush_at_stop(&core).await;
    gatepass_server::http::audit_at_stop(&core).await;
    core.storage.close().await;
    Ok(())
}

/// Opens the storage, waiting up to `cfg.storage_wait` for one that
/// cannot be reached yet (a database starting at the same time as this
/// server, or restarting): each attempt that fails is logged with its
/// cause, and the last one's error is returned.
async fn open_waiting(cfg: &ServerConfig) -> anyhow::Result<gatepass_server::State> {
    let target = describe_storage(&cfg.storage);
    let started = std::time::Instant::now();
    let mut attempt = 1u32;
    loop {
        let seal = SealKey::load(&cfg.seal_key_file).context(
            "run `gatepass-server init` first to create the seal key; if the storage was \
             initialized already, restore the seal key it was initialized with from your backup",
        )?;
        let opened = Core::open(Options {
            storage_url: cfg.storage.clone(),
            seal_key: seal,
            audit_path: cfg.audit_log.clone(),
            clock: Clock::System,
            storage_connections: cfg.storage_connections,
        })
        .await;
        let e = match opened {
            Ok(core) => {
                if attempt > 1 {
                    tracing::info!(storage = %target, "storage reached");
                }
                return Ok(core);
            }
            Err(e) => e,
        };
        let waited = started.elapsed();
        let unavailable = matches!(e, gatepass_server::Error::StorageUnavailable(_));
        if !unavailable {
            return Err(anyhow::Error::new(e).context(format!("cannot open storage {target}")));
        }
        // The error names the storage already; the log line does too.
        let text = e.to_string();
        let prefix = format!("storage unavailable: {target}: ");
        let cause = text.strip_prefix(&prefix).unwrap_or(&text);
        if waited >= cfg.storage_wait {
            bail!(
                "gave up waiting for storage {target} after {:.1} s (storage_wait): {cause}",
                waited.as_secs_f32()
            );
        }
        tracing::warn!(
            attempt,
            "waiting for storage {target} (up to {:.1} s more): {cause}",
            (cfg.storage_wait - waited).as_secs_f32()
        );
        attempt += 1;
        let pause = std::time::Duration::from_secs(1).min(cfg.storage_wait - waited);
        tokio::time::sleep(pause).await;
    }
}

async fn serve_cmd(config: &Path) -> anyhow::Result<()> {
    let cfg = ServerConfig::load(config)?;
    // Held until the server exits.
    let _serving = gatepass_server::storage::hold_for_serving(&cfg.storage)?;
    let core = open_waiting(&cfg).await?;
    if !core.is_initialized().await? {
        bail!(
            "storage {} is not initialized: run `gatepass-server init --config {}`",
            describe_storage(&cfg.storage),
            config.display()
        );
    }
    let tls_cfg = match &cfg.tls {
        Some(t) => Some(tls::rustls_config(&t.cert, &t.key).await?),
        None => None,
    };
    let listener =
        serve::bind(cfg.listen).with_context(|| format!("listening on {}", cfg.listen))?;
    tracing::info!(listen = %listener.local_addr()?, tls = tls_cfg.is_some(), "gatepass-server ready");
    tokio::spawn(gatepass_server::leases::sweeper(core.clone()));
    tokio::spawn(gatepass_server::auth::token::sweeper(core.clone()));
    tokio::spawn(gatepass_server::hosts::seen::flusher(core.clone()));
    tokio::spawn(gatepass_server::retention::task(
        core.clone(),
        cfg.retention.clone(),
    ));
    spawn_audit_tasks(&core);
    notify_ready();
    serve::run(
        core.clone(),
        listener,
        tls_cfg,
        &cfg.limits,
        &cfg.trusted_proxies,
        serve::shutdown_signal(),
    )
    .await?;
    gatepass_server::hosts::seen::flush_at_stop(&core).await;
    gatepass_server::http::audit_at_stop(&core).await;
    core.storage.close().await;
    Ok(())
}

async fn init_cmd(config: &Path) -> anyhow::Result<()> {
    let cfg = ServerConfig::load(config)?;
    // A new seal key is written beside its place first and moved there only
    // once the storage turns out new: on storage initialized already (with
    // a key since lost) it would stand where the real one must be restored.
    let mut new_key = None;
    let seal = if cfg.seal_key_file.exists() {
        SealKey::load(&cfg.seal_key_file)?
    } else {
        if let Some(dir) = cfg.seal_key_file.parent() {
            private::create_dir(dir)?;
        }
        let mut aside = cfg.seal_key_file.clone().into_os_string();
        aside.push(".new");
        let aside = PathBuf::from(aside);
        // Left by an init that stopped half-way, after the storage may
        // have been sealed with it: tried again, never replaced (the
        // storage's check below says whether it is that storage's key).
        let k = if aside.exists() {
            SealKey::load(&aside)?
        } else {
            let k = SealKey::generate();
            k.write_new(&aside)?;
            k
        };
        new_key = Some(aside);
        k
    };
    // The new key goes only when the storage is sealed with another:
    // after any other failure it may already be the storage's key.
    let not_its_key = |why: String| {
        if let Some(aside) = &new_key {
            let _ = std::fs::remove_file(aside);
        }
        anyhow::anyhow!(why)
    };
    let kept = |why: String| match &new_key {
        Some(aside) => anyhow::anyhow!(
            "{why}\n(the new seal key stays in {}; run `init` again to go on with it)",
            aside.display()
        ),
        None => anyhow::anyhow!(why),
    };
    if let Some(p) = cfg.storage.strip_prefix("sqlite://") {
        if let Some(dir) = Path::new(p).parent() {
            private::create_dir(dir)?;
        }
    }
    let opened = Core::open(Options {
        storage_url: cfg.storage.clone(),
        seal_key: seal,
        audit_path: None,
        clock: Clock::System,
        storage_connections: cfg.storage_connections,
    })
    .await;
    let core = match opened {
        Ok(core) => core,
        Err(e) if new_key.is_some() && e.to_string().contains("seal key does not match") => {
            return Err(not_its_key(format!(
                "storage {} is already initialized, with another seal key than the one {} should \
                 hold: restore that file from your backup (`init` runs only once)",
                describe_storage(&cfg.storage),
                cfg.seal_key_file.display()
            )))
        }
        Err(e) => return Err(kept(e.to_string())),
    };
    if core
        .is_initialized()
        .await
        .map_err(|e| kept(e.to_string()))?
    {
        return Err(kept(format!(
            "storage {} is already initialized; `init` runs only once",
            describe_storage(&cfg.storage)
        )));
    }
    if let Some(aside) = &new_key {
        std::fs::rename(aside, &cfg.seal_key_file)
            .and_then(|()| sync_parent(&cfg.seal_key_file))
            .map_err(|e| {
                kept(format!(
                    "moving the new seal key into {}: {e}",
                    cfg.seal_key_file.display()
                ))
            })?;
        eprintln!(
            "wrote seal key {} (back it up; keep it secret)",
            cfg.seal_key_file.display()
        );
    }
    let token = core.initialize(None).await?;
    // Shown before anything else can fail: the storage is initialized now,
    // and `init` will not run again to show another.
    eprintln!(
        "initialized {}. The root token is shown only now:",
        describe_storage(&cfg.storage)
    );
    println!("{token}");
    core.ensure_mount("ssh", "ssh").await.with_context(|| {
        "enabling the `ssh` mount (enable it with `gatepass write sys/mounts/ssh type=ssh`)"
    })?;
    core.storage.close().await;
    if let Some(db) = cfg.storage.strip_prefix("sqlite://") {
        hand_over_to_folder_owner(Path::new(db))?;
    }
    Ok(())
}

/// The SQLite files `init` (run as root) made, given to the owner of their
/// folder: the packages make `/var/lib/gatepass` the `gatepass` user's, and
/// the server, running as that user, must open them. (systemd's
/// `StateDirectory=` does not do it: it leaves a folder alone whose own
/// owner is right already.)
fn hand_over_to_folder_owner(db: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = db.parent() else {
        return Ok(());
    };
    let owner = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if owner.uid() == 0 {
        return Ok(());
    }
    let mut files = vec![db.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        files.push(PathBuf::from(p));
    }
    for f in files.iter().filter(|f| f.exists()) {
        std::os::unix::fs::chown(f, Some(owner.uid()), Some(owner.gid()))
            .with_context(|| format!("giving {} to the owner of {}", f.display(), dir.display()))?;
    }
    Ok(())
}

/// Makes a rename in `path`'s folder durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

async fn snapshot_save_cmd(config: &Path, file: &Path) -> anyhow::Result<()> {
    let cfg = ServerConfig::load(config)?;
    let seal = SealKey::load(&cfg.seal_key_file)?;
    let now = Clock::System.now();
    let saved = snapshot::save(&cfg.storage, &seal, file, now).await?;
    println!(
        "wrote {}: {} entries of {} as of {} ({} bytes; sealed with {}; audit events not included)",
        file.display(),
        saved.header.entries,
        describe_storage(&cfg.storage),
        gatepass_server::clock::rfc3339(saved.header.created),
        saved.bytes,
        cfg.seal_key_file.display()
    );
    Ok(())
}

async fn snapshot_restore_cmd(config: &Path, file: &Path) -> anyhow::Result<()> {
    let cfg = ServerConfig::load(config)?;
    let seal = SealKey::load(&cfg.seal_key_file).context(
        "restore needs the seal key the snapshot was taken with: copy the old server's seal key file",
    )?;
    let header = snapshot::restore(&cfg.storage, &seal, file).await?;
    println!(
        "restored {} entries taken at {} into {}; start the server with `gatepass-server serve --config {}`",
        header.entries,
        gatepass_server::clock::rfc3339(header.created),
        describe_storage(&cfg.storage),
        config.display()
    );
    Ok(())
}

/// Keeps the audit file caught up, and reopens it on SIGHUP (logrotate's
/// `postrotate`).
fn spawn_audit_tasks(core: &gatepass_server::State) {
    tokio::spawn(gatepass_server::http::audit_keeper(core.clone()));
    let core = core.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                return;
            }
        };
        while hup.recv().await.is_some() {
            gatepass_server::http::reopen_audit(&core, "SIGHUP").await;
        }
    });
}

fn rotate_cmd(config: &Path) -> anyhow::Result<()> {
    let cfg = ServerConfig::load(config)?;
    let Some(path) = cfg.audit_log.clone() else {
        bail!("{} sets no audit_log", config.display());
    };
    let now = Clock::System.now();
    let aside = audit::aside_path(&path, now, "");
    match audit::in_use(&path)? {
        None => bail!("{}: no such file, nothing to rotate", path.display()),
        Some(true) => {
            // The server follows the path: it notices the move and continues
            // the chain in a new file there.
            std::fs::rename(&path, &aside)
                .with_context(|| format!("moving {} to {}", path.display(), aside.display()))?;
            println!(
                "moved {} to {}; the running server continues the chain in a new {} within a second",
                path.display(),
                aside.display(),
                path.display()
            );
        }
        Some(false) => {
            let seal = SealKey::load(&cfg.seal_key_file)?;
            let log = audit::AuditLog::open(&path, AuditKey::new(*seal.derive("audit")), now)?;
            log.rotate(&aside, now)?;
            println!(
                "moved {} to {}; the chain continues in a new {}",
                path.display(),
                aside.display(),
                path.display()
            );
        }
    }
    Ok(())
}

fn verify_cmd(
    file: &Path,
    config: Option<PathBuf>,
    seal_key_file: Option<PathBuf>,
    allow_torn_tail: bool,
) -> anyhow::Result<()> {
    let seal_path = match (config, seal_key_file) {
        (_, Some(p)) => p,
        (Some(c), None) => ServerConfig::load(&c)?.seal_key_file,
        (None, None) => ServerConfig::load(Path::new("/etc/gatepass/server.toml"))?.seal_key_file,
    };
    let seal = SealKey::load(&seal_path)?;
    let key = AuditKey::new(*seal.derive("audit"));
    match audit::verify_file(file, &key)? {
        VerifyOutcome::Ok { lines } => {
            println!("{}: OK, {lines} lines, chain intact", file.display());
            Ok(())
        }
        VerifyOutcome::TornTail { lines, bytes } => {
            println!(
                "{}: {lines} whole lines, chain intact; line {}: incomplete last line \
                 ({bytes} bytes, a write that did not finish)",
                file.display(),
                lines + 1
            );
            if !allow_torn_tail {
                std::process::exit(1);
            }
            Ok(())
        }
        VerifyOutcome::Bad { line, kind, detail } => {
            println!("{}: line {line}: {kind}: {detail}", file.display());
            std::process::exit(1);
        }
    }
}
