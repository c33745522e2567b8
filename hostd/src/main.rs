//! `gatepass-hostd`: the per-host daemon's command line.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use gatepass_api::hosts::HostState;
use gatepass_hostd::config::{Config, Paths, DEFAULT_CONFIG};
use gatepass_hostd::enroll::{self, PathOverrides, SetupOptions};
use gatepass_hostd::files::{self, Change};
use gatepass_hostd::host::Host;
use gatepass_hostd::sshd_config::{self, Placement};
use gatepass_hostd::state::LocalState;
use gatepass_hostd::{clock, login, remote, sync};

#[derive(Parser)]
#[command(
    name = "gatepass-hostd",
    version,
    about = "gatepass host daemon: makes sshd trust the gatepass CA and keeps its files in step",
    long_about = "gatepass host daemon: makes sshd trust the gatepass CA and keeps its files in step.\n\n\
        `setup` enrolls this host with a join token and installs everything; `run` (the systemd \
        service) keeps the files in step with the server; `status` shows what is installed; \
        `uninstall` removes it all again.\n\n\
        Files: gatepass's own files live in the managed folder (default /etc/ssh/gatepass, root, 0755): \
        user_ca.pub (TrustedUserCAKeys), revoked.krl (RevokedKeys), principals/<user> \
        (AuthorizedPrincipalsFile, mapped mode), authorized_keys/<user> (dynamic keys, a second \
        AuthorizedKeysFile after the usual ones) and <hostkey>-cert.pub (HostCertificate). The \
        directives go into <sshd_config.d>/50-gatepass.conf when sshd_config Includes that folder \
        before its first Match (and the folder is writable), otherwise into sshd_config.conf in the \
        managed folder, which `setup` makes sshd_config Include from a marked block before its first \
        Match (the one edit of sshd_config itself; the service later writes only the managed folder \
        and the drop-in folder). \
        A line of sshd_config that would override gatepass's is commented out with the marker \
        `#gatepass-hostd-disabled# ` and restored by `uninstall`. The host's own TrustedUserCAKeys \
        and RevokedKeys files, which gatepass's lines replace, are noted by `setup` \
        (paths.host_user_ca_keys, paths.host_revoked_keys) and merged into user_ca.pub and \
        revoked.krl at every apply (the CA keys not in mapped mode), so they stay in force. Every change is checked with \
        `sshd -t` and rolled back if sshd rejects it; sshd is reloaded only when its config or a \
        host certificate changed."
)]
struct Cli {
    /// hostd's config file.
    #[arg(long, global = true, env = "GATEPASS_HOSTD_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Debug, Default)]
struct PathArgs {
    /// sshd's main config file [default: /etc/ssh/sshd_config].
    #[arg(long)]
    sshd_config: Option<PathBuf>,
    /// sshd's drop-in folder [default: /etc/ssh/sshd_config.d].
    #[arg(long)]
    sshd_config_dir: Option<PathBuf>,
    /// gatepass's managed folder [default: /etc/ssh/gatepass].
    #[arg(long)]
    managed_dir: Option<PathBuf>,
    /// The sshd binary, for `sshd -t`/`-T` [default: /usr/sbin/sshd].
    #[arg(long)]
    sshd: Option<PathBuf>,
    /// hostd's state folder [default: /var/lib/gatepass-hostd].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Command (run with sh -c) that reloads sshd [default: SIGHUP to the
    /// pid in sshd's PidFile].
    #[arg(long)]
    reload_command: Option<String>,
    /// Where `run` answers the OTP login check [default:
    /// /run/gatepass/hostd.sock; "" for none].
    #[arg(long)]
    login_socket: Option<PathBuf>,
}

impl PathArgs {
    fn overrides(&self) -> PathOverrides {
        PathOverrides {
            sshd_config: self.sshd_config.clone(),
            sshd_config_dir: self.sshd_config_dir.clone(),
            managed_dir: self.managed_dir.clone(),
            sshd: self.sshd.clone(),
            state_dir: self.state_dir.clone(),
            reload_command: self.reload_command.clone(),
            login_socket: self.login_socket.clone(),
        }
    }

    /// The paths of the config file if there is one, with these overrides.
    fn resolve(&self, config: &Path) -> Result<Paths> {
        let mut paths = if config.exists() {
            Config::load(config)?.paths
        } else {
            Paths::default()
        };
        self.overrides().apply(&mut paths);
        Ok(paths)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this host (once) and install the CA trust, KRL, principals,
    /// dynamic keys and host certificates; safe to run again.
    ///
    /// Enrolls with the join token (POST hosts/enroll: hostname, addresses,
    /// host public keys), writes the config (--config) and the host token
    /// (hostd.token next to it, mode 0600), fetches the host's desired
    /// state, requests host certificates when the join token names a host
    /// mount, writes the files, checks sshd's config with `sshd -t` and
    /// reloads sshd. When the config and token exist already, it does not
    /// enroll again and rewrites nothing whose content is right.
    Setup {
        /// The gatepass server, e.g. https://gatepass.example.com:8200.
        #[arg(long)]
        server: Option<String>,
        /// A join token from `POST /v1/hosts/join-tokens`.
        #[arg(long, env = "GATEPASS_JOIN_TOKEN", hide_env_values = true)]
        join_token: Option<String>,
        /// The server's CA certificate (PEM); copied next to the config and
        /// pinned: no other CA is trusted.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// Print what would change (unified diffs) and change nothing; does
        /// not enroll.
        #[arg(long)]
        dry_run: bool,
        /// An address to report besides the detected ones (repeatable).
        #[arg(long = "address", value_name = "IP")]
        addresses: Vec<String>,
        /// Also report loopback addresses (for tests on 127.0.0.1).
        #[arg(long)]
        include_loopback: bool,
        /// The name to enroll under [default: this host's name].
        #[arg(long)]
        hostname: Option<String>,
        /// If a host is enrolled under the same name, take its place: the
        /// server removes it and revokes its token. Without this a taken
        /// name is refused.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        paths: PathArgs,
    },
    /// Keep the files in step with the server (the systemd service).
    ///
    /// Long-polls the desired state and applies it; removes expired dynamic
    /// keys by itself even while the server is unreachable; renews host
    /// certificates at 2/3 of their life; acknowledges what it installed;
    /// every sync.recheck_seconds (default 60) writes back the files and
    /// sshd_config lines someone else changed and reports them to the
    /// server as drift; sends READY=1 and WATCHDOG=1 to systemd. Also answers the OTP
    /// login check (pam_gatepass.so, gatepass-helper) on the login socket
    /// (paths.login_socket, default /run/gatepass/hostd.sock, root only),
    /// asking the servers on connections it keeps open. Logs go to stderr
    /// (the journal under systemd); GATEPASS_LOG sets the level.
    Run,
    /// Show what is installed and when it last synced.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove every gatepass line from sshd's config (checked with
    /// `sshd -t`), reload sshd, then remove gatepass's files.
    Uninstall {
        /// Print what would change and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also tell the server to forget this host and remove the config,
        /// token and state files.
        #[arg(long)]
        unenroll: bool,
        #[command(flatten)]
        paths: PathArgs,
    },
    /// Answer only the login check's socket, as `run` does, without
    /// enrollment or sync (tests and the benchmark), until SIGTERM.
    #[command(name = "__login-socket", hide = true)]
    LoginSocket {
        #[arg(long, default_value = login::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Apply a desired state from a JSON file without a server (testing).
    #[command(name = "__apply-state", hide = true)]
    ApplyState {
        state: PathBuf,
        #[command(flatten)]
        paths: PathArgs,
    },
    /// Write man pages and shell completions into DIR (for packaging).
    #[command(name = "__docs", hide = true)]
    Docs { dir: PathBuf },
}

fn print_changes(changes: &[Change], dry_run: bool) {
    for c in changes {
        if dry_run {
            print!("{}", c.unified_diff());
        } else {
            let what = if c.new.is_some() {
                "wrote  "
            } else {
                "removed"
            };
            println!("{what} {}", c.path.display());
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    gatepass_hostd::logging::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    match cli.command {
        Command::Setup {
            server,
            join_token,
            ca_cert,
            dry_run,
            addresses,
            include_loopback,
            hostname,
            replace,
            paths,
        } => {
            let opts = SetupOptions {
                config_path: cli.config,
                server,
                join_token,
                ca_cert,
                paths: paths.overrides(),
                addresses,
                include_loopback,
                hostname,
                replace,
                dry_run,
            };
            let report = rt.block_on(enroll::setup(&opts))?;
            if dry_run {
                println!("dry run: nothing is changed");
                for p in &report.plan {
                    println!("would {p}");
                }
            } else if report.enrolled_now {
                println!("enrolled as host {}", report.host_id);
            } else {
                println!("already enrolled as host {}", report.host_id);
            }
            print_changes(&report.changes, dry_run);
            for n in &report.notes {
                println!("note: {n}");
            }
            if let Some(out) = &report.outcome {
                for r in &out.rendered.rejected {
                    println!("refused: {r}");
                }
                match &out.reloaded {
                    Some(r) => println!("reloaded sshd ({r:?})"),
                    None => println!("sshd needs no reload"),
                }
            }
            if report.changes.is_empty() {
                println!("no changes");
            }
            Ok(())
        }
        Command::Run => {
            let cfg = Config::load(&cli.config)?;
            rt.block_on(sync::run(cfg, &cli.config))?;
            Ok(())
        }
        Command::Status { json } => status(&cli.config, json),
        Command::Uninstall {
            dry_run,
            unenroll,
            paths,
        } => {
            let resolved = paths.resolve(&cli.config)?;
            let host = Host::new(&resolved);
            if dry_run {
                println!("dry run: nothing is changed");
                print_changes(&host.uninstall_preview()?, true);
                return Ok(());
            }
            if gatepass_hostd::service::is_running(&resolved.state_dir) {
                anyhow::bail!(
                    "gatepass-hostd's service is running, and its next pass would put back what \
                     uninstall removes: stop it first (systemctl stop gatepass-hostd)"
                );
            }
            let (changes, reloaded) = host.uninstall()?;
            print_changes(&changes, false);
            if let Some(r) = reloaded {
                println!("reloaded sshd ({r:?})");
            }
            if unenroll {
                if let Some(cfg) = enroll::enrolled(&cli.config)? {
                    let token = sync::read_token(&cfg)?;
                    let client =
                        sync::client(&cfg, Some(token), std::time::Duration::from_secs(30))?;
                    if let Err(e) = rt.block_on(remote::unenroll(&client)) {
                        eprintln!("warning: the server was not told: {e}");
                    }
                    for p in [&cfg.token_file, &cli.config, &cfg.ca_cert] {
                        if files::remove_file(p)? {
                            println!("removed {}", p.display());
                        }
                    }
                }
                let state = gatepass_hostd::state::path(&resolved.state_dir);
                if files::remove_file(&state)? {
                    println!("removed {}", state.display());
                }
                for p in gatepass_hostd::host::remove_kept_copies(&resolved.state_dir)? {
                    println!("removed {}", p.display());
                }
            }
            if changes.is_empty() {
                println!("nothing was installed");
            }
            Ok(())
        }
        Command::LoginSocket { socket } => rt.block_on(async {
            let served = login::start(&socket)?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            served.stop();
            login::remove(&socket);
            Ok(())
        }),
        Command::ApplyState { state, paths } => {
            let resolved = paths.resolve(&cli.config)?;
            let text = std::fs::read_to_string(&state)
                .with_context(|| format!("read {}", state.display()))?;
            let desired: HostState = serde_json::from_str(&text).context("state JSON")?;
            let out = Host::new(&resolved).converge(&desired, clock::now(), &[])?;
            sync::log_outcome(&out, &mut sync::LeftOut::default());
            print_changes(&out.changes, false);
            Ok(())
        }
        Command::Docs { dir } => {
            use clap::CommandFactory;
            Ok(gatepass_api::docs::write(Cli::command(), &dir)?)
        }
    }
}

fn status(config: &Path, json: bool) -> Result<()> {
    let Some(cfg) = enroll::enrolled(config)? else {
        if json {
            println!("{}", serde_json::json!({ "enrolled": false }));
        } else {
            println!(
                "not enrolled ({} or its token file not found)",
                config.display()
            );
        }
        return Ok(());
    };
    let local = LocalState::load(&cfg.paths.state_dir);
    let host = Host::new(&cfg.paths);
    let placement = sshd_config::installed_placement(&host.sshd_paths);
    let count = |d: PathBuf| files::list_files(&d).map(|v| v.len()).unwrap_or(0);
    let ca_keys = std::fs::read_to_string(host.layout.user_ca())
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0);
    if json {
        let v = serde_json::json!({
            "enrolled": true,
            "host_id": cfg.host_id,
            "server": cfg.server,
            "placement": placement,
            "sshd_config": cfg.paths.sshd_config,
            "managed_dir": cfg.paths.managed_dir,
            "user_ca_keys": ca_keys,
            "principals_users": count(host.layout.principals_dir()),
            "authorized_keys_users": count(host.layout.authorized_keys_dir()),
            "state": local,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("gatepass-hostd {}", env!("CARGO_PKG_VERSION"));
    println!("host:          {} at {}", cfg.host_id, cfg.server);
    match placement {
        Some(Placement::DropIn) => {
            println!("sshd config:   {}", host.sshd_paths.dropin().display())
        }
        Some(Placement::Included) => println!(
            "sshd config:   {} (Included from {})",
            host.sshd_paths.included.display(),
            cfg.paths.sshd_config.display()
        ),
        Some(Placement::Block) => println!(
            "sshd config:   marked block in {} (run `gatepass-hostd setup` once to move it into {})",
            cfg.paths.sshd_config.display(),
            host.sshd_paths.included.display()
        ),
        None => println!("sshd config:   not installed"),
    }
    println!(
        "managed files: {} ({ca_keys} CA key(s), {} user(s) with principals, {} user(s) with dynamic keys)",
        cfg.paths.managed_dir.display(),
        count(host.layout.principals_dir()),
        count(host.layout.authorized_keys_dir()),
    );
    println!("dynamic keys:  {} installed", local.installed.len());
    for c in &local.host_certs {
        println!(
            "host cert:     {} valid until {} (renewal from {})",
            c.path.display(),
            clock::show(c.valid_before as i64),
            clock::show(c.renew_at())
        );
    }
    let now = clock::now();
    match local.last_sync {
        Some(t) => println!(
            "last sync:     {} ({} s ago), state index {}",
            clock::show(t),
            now - t,
            local.index
        ),
        None => println!("last sync:     never"),
    }
    for n in &local.notes {
        println!("note:          {n}");
    }
    for r in &local.rejected {
        println!("refused:       {r}");
    }
    if let Some(e) = &local.last_error {
        println!("last error:    {e}");
    }
    Ok(())
}
