//! `gatepass-gateway`: the PAM gateway's binary.
//!
//! The proxy itself is the library (`gatepass_gateway`); the commands that
//! enroll the gateway with the server (`setup`) and run it as a service
//! following its sessions from the server (`run`) come with the server's
//! `/v1/pam/` endpoints.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "gatepass-gateway",
    version,
    about = "gatepass PAM gateway: proxies just-in-time SSH sessions to target servers",
    long_about = "gatepass PAM gateway: accepts SSH connections carrying a session \
certificate of the gateway session CA, logs in to the session's target with a \
credential the user never sees, and bridges the session until it ends.\n\n\
`setup` (enroll with the gatepass server) and `run` (the systemd service, \
following its sessions from the server) are not available in this version."
)]
struct Cli {}

fn main() -> std::process::ExitCode {
    Cli::parse();
    eprintln!(
        "gatepass-gateway: nothing to run yet: `setup` and `run` are not available in this version; see --help"
    );
    std::process::ExitCode::from(2)
}
