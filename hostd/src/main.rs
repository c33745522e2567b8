//! `gatepass-hostd`: the per-host daemon. Enrollment and the sync loop
//! arrive with the hosts registry on the server.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gatepass-hostd",
    version,
    about = "gatepass host daemon: makes sshd trust the gatepass CA and keeps its files in step"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Show what gatepass has installed on this host.
    Status,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Status) | None => {
            println!("gatepass-hostd {}: not enrolled", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}
