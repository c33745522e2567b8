//! `gatepass-bench`: gatepass's benchmarks. Every suite measures gatepass
//! beside a reference (OpenSSH's own tools) on the same machine in the same
//! run, and reports ratios to it, so that results from different machines
//! can be compared. See BENCHMARKS.md for the method and the results.
//!
//! One subcommand per suite; each suite owns a section of BENCHMARKS.md
//! between `<!-- NAME:begin -->` and `<!-- NAME:end -->`, which `--write`
//! replaces. To add a suite: a module with `Args` (flattening [`Common`])
//! and `run`, and a variant of [`Command`].

mod machine;
mod measure;
mod report;
mod server;
mod sign;

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
        if let Some(p) = &self.server_bin {
            return Ok(p.clone());
        }
        let exe = std::env::current_exe()?;
        let Some(dir) = exe.parent() else {
            bail!("cannot tell the directory of {}", exe.display());
        };
        Ok(dir.join("gatepass-server"))
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    gatepass_server::tls::install_crypto_provider();
    match cli.command {
        Command::Sign(args) => sign::run(&args),
    }
}
