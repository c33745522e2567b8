//! `gatepass-helper`: checks a one-time password at SSH login for
//! pam_exec. The OTP engine on the server comes first; until then the
//! helper refuses every login (it fails closed).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "gatepass-helper",
    version,
    about = "Checks an SSH one-time password against gatepass (run by pam_exec expose_authtok)"
)]
struct Cli {
    /// Configuration file.
    #[arg(long = "config", default_value = "/etc/gatepass/helper.toml")]
    config: std::path::PathBuf,
}

fn main() {
    let _cli = Cli::parse();
    eprintln!("gatepass-helper: OTP verification is not available in this build; login refused");
    std::process::exit(1);
}
