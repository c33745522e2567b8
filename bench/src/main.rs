//! `gatepass-bench`: gatepass's benchmarks. Every suite measures gatepass
//! beside a reference (OpenSSH's own tools) on the same machine in the same
//! run, and reports ratios to it, so that results from different machines
//! can be compared. See BENCHMARKS.md for the method and the results.
//!
//! One subcommand per suite; each suite owns a section of BENCHMARKS.md
//! between `<!-- NAME:begin -->` and `<!-- NAME:end -->`, which `--write`
//! replaces. To add a suite: a module with `Args` (flattening [`Common`])
//! and `run`, and a variant of [`Command`].

mod acl;
mod disk;
mod fleet;
mod gateway;
mod h1;
mod h2_client;
mod helper;
mod hostd;
mod load;
mod machine;
mod measure;
mod memory;
mod otp;
mod peers;
mod recording;
mod report;
mod server;
mod sign;
mod ui;
mod vload;

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gatepass-bench",
    about = "gatepass benchmarks, measured against OpenSSH's tools in the same run (see BENCHMARKS.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Certificates per second: `ssh-keygen -s`, in-process signing per CA
    /// key type, and the HTTPS API with several concurrent clients.
    Sign(sign::Args),
    /// OTP creations and verifications per second over HTTPS, p50 and p99,
    /// beside `GET /v1/sys/health` with the same clients.
    Otp(otp::Args),
    /// Time the PAM helper adds to a login (exec + TLS + verify), beside
    /// spawning `/bin/true` and an in-process HTTPS verify.
    Helper(helper::Args),
    /// gatepass-hostd applying 10,000 dynamic keys over 1,000 users: time
    /// and peak memory, beside plain file writes.
    Hostd(hostd::Args),
    /// N simulated hosts long-polling their state from one server: server
    /// memory, and how long a revocation takes to reach all of them.
    Fleet(fleet::Args),
    /// Server memory while it issues many short-lived OTPs (200,000 by
    /// default) and its lease sweeper removes them as they expire.
    Memory(memory::Args),
    /// The data directory after 1,000,000 OTPs created and used, before and
    /// after a retention run, and request latency while it runs.
    Disk(disk::Args),
    /// What a 10,000-path policy adds to each request of its tokens, beside
    /// a one-path policy: over HTTPS, and the ACL lookup and policy
    /// compilation in-process.
    Acl(acl::Args),
    /// The PAM gateway beside direct `ssh` to the same target: added
    /// round-trip latency, throughput of 1 GiB, memory with 500 sessions.
    Gateway(gateway::Args),
    /// What recording sessions costs the gateway: throughput of 1 GiB with
    /// recording on against off, bytes stored per minute of a busy
    /// terminal.
    Recording(recording::Args),
    /// gatepass beside an OpenBao 2.7.2 dev server in the same run, under
    /// the same load: sign, OTP creds, verify, token lookup, a
    /// policy-checked read; ratios and memory.
    Peers(peers::Args),
    /// The web UI's pages with 100,000 certificates and 10,000 sessions
    /// stored: each page's time, p50 and p99, against the 100 ms target.
    Ui(ui::Args),
    /// A load generator for any Vault-compatible server (gatepass or Vault):
    /// N keep-alive clients on one request; requests/s, p50, p99, p99.9 and
    /// answers by status. Not a suite: it needs a target.
    Load(vload::Args),
    /// Every suite in turn (what `bench/run` does by default; not `load`).
    All(AllArgs),
}

#[derive(clap::Args, Debug)]
struct AllArgs {
    #[command(flatten)]
    common: Common,
    /// Numbers of concurrent HTTPS clients (sign and otp).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    clients: Vec<usize>,
}

fn all(args: &AllArgs) -> anyhow::Result<()> {
    type Suite = (&'static str, Box<dyn Fn() -> anyhow::Result<()>>);
    let (c, n) = (args.common.clone(), args.clients.clone());
    let suites: Vec<Suite> = vec![
        ("sign", {
            let a = sign::Args {
                common: c.clone(),
                clients: n.clone(),
            };
            Box::new(move || sign::run(&a))
        }),
        ("otp", {
            let a = otp::Args::with(c.clone(), n.clone());
            Box::new(move || otp::run(&a))
        }),
        ("helper", {
            let a = helper::Args::with(c.clone());
            Box::new(move || helper::run(&a))
        }),
        ("hostd", {
            let a = hostd::Args::with(c.clone());
            Box::new(move || hostd::run(&a))
        }),
        ("fleet", {
            let a = fleet::Args::with(c.clone());
            Box::new(move || fleet::run(&a))
        }),
        ("memory", {
            let a = memory::Args::with(c.clone());
            Box::new(move || memory::run(&a))
        }),
        ("acl", {
            let a = acl::Args::with(c.clone());
            Box::new(move || acl::run(&a))
        }),
    ];
    let mut failed = Vec::new();
    for (name, run) in suites {
        eprintln!("=== gatepass-bench {name}");
        if let Err(e) = run() {
            eprintln!("gatepass-bench {name} failed: {e:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("suites failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Options every suite takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Seconds each measurement runs (after a short warm-up).
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Replace this suite's section of FILE (e.g. BENCHMARKS.md) with the results.
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// The gatepass-server binary to start (default: next to this binary).
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
}

impl Common {
    pub fn budget(&self) -> anyhow::Result<measure::Budget> {
        if !(0.1..=3600.0).contains(&self.seconds) {
            bail!("--seconds must be between 0.1 and 3600");
        }
        Ok(measure::Budget::from_seconds(self.seconds))
    }

    pub fn server_bin(&self) -> anyhow::Result<PathBuf> {
        server_bin(self.server_bin.as_deref())
    }

    /// Another of the workspace's binaries, next to the server binary.
    pub fn sibling_bin(&self, name: &str) -> anyhow::Result<PathBuf> {
        let server = self.server_bin()?;
        let bin = server
            .parent()
            .map(|d| d.join(name))
            .unwrap_or_else(|| PathBuf::from(name));
        if !bin.is_file() {
            // The testkit is a binary of the hostd package, behind a feature.
            let build = match name {
                "gatepass-hostd-testkit" => "-p gatepass-hostd --features testkit".to_string(),
                _ => format!("-p {name}"),
            };
            bail!(
                "{} not found: build it with `cargo build --release {build}` (bench/run does)",
                bin.display()
            );
        }
        Ok(bin)
    }
}

/// The gatepass-server binary: the one given, or the one next to this
/// binary.
pub fn server_bin(given: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    let Some(dir) = exe.parent() else {
        bail!("cannot tell the directory of {}", exe.display());
    };
    Ok(dir.join("gatepass-server"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    gatepass_server::tls::install_crypto_provider();
    match cli.command {
        Command::Sign(args) => sign::run(&args),
        Command::Otp(args) => otp::run(&args),
        Command::Helper(args) => helper::run(&args),
        Command::Hostd(args) => hostd::run(&args),
        Command::Fleet(args) => fleet::run(&args),
        Command::Memory(args) => memory::run(&args),
        Command::Disk(args) => disk::run(&args),
        Command::Acl(args) => acl::run(&args),
        Command::Gateway(args) => gateway::run(&args),
        Command::Recording(args) => recording::run(&args),
        Command::Peers(args) => peers::run(&args),
        Command::Ui(args) => ui::run(&args),
        Command::Load(args) => vload::run(&args),
        Command::All(args) => all(&args),
    }
}
