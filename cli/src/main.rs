//! `gatepass`: the command line of gatepass for people and scripts.

// First, for its `out!` and `outln!` macros.
#[macro_use]
mod output;

mod askpass;
mod clock;
mod commands;
mod config;
mod error;
mod input;
mod yaml;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::{generic, login, pam, ssh, token, unwrap, Ctx, GlobalArgs};

const ENVIRONMENT: &str = "\
Environment:
  GATEPASS_ADDR    the server's address (VAULT_ADDR is read when it is unset)
  GATEPASS_TOKEN   the token to use (then VAULT_TOKEN, then the token saved by
                   `gatepass login` in ~/.config/gatepass/token)
  GATEPASS_CACERT  the server's CA certificate (then VAULT_CACERT)
  GATEPASS_FORMAT  the default for --format

Exit status: 0 on success, 2 when the server refused the request or the
arguments are wrong, 1 for local problems (files, network, configuration).
`gatepass ssh connect` and `gatepass pam ssh access` end with ssh's own
exit status once ssh has run. When what reads the output goes away
(`gatepass list … | head -1`), the command ends quietly with 141, as a
process that SIGPIPE ended.";

/// Short-lived SSH access: log in to a gatepass server and use its
/// Vault-compatible API
///
/// gatepass speaks HashiCorp Vault's HTTP API, and this command works like
/// Vault's for the commands it shares with it (login, read, write, list,
/// delete, token). Options may also be written Vault's way, with one dash
/// (-format=json).
#[derive(Debug, Parser)]
#[command(name = "gatepass", version, after_help = ENVIRONMENT)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Authenticate and save the token for later commands
    ///
    /// Logs in with a token, AppRole, username and password, or the identity
    /// provider in a browser (OIDC), and saves the token in
    /// ~/.config/gatepass/token (or $XDG_CONFIG_HOME/gatepass/token,
    /// mode 0600), which later commands use unless GATEPASS_TOKEN or
    /// VAULT_TOKEN is set. The token is not printed unless asked for.
    #[command(after_long_help = login::EXAMPLES)]
    Login(login::Args),

    /// Read data from a path of the API
    ///
    /// Prints the answer's data as a Key/Value table, or the whole answer
    /// with --format json. KEY=VALUE arguments are sent as query parameters.
    /// Exits with 2 when there is nothing at the path.
    #[command(after_long_help = generic::READ_EXAMPLES)]
    Read(generic::ReadArgs),

    /// Write data to a path of the API
    ///
    /// Sends KEY=VALUE pairs as a JSON object (values as strings; the server
    /// converts numbers, booleans and comma-separated lists) and prints the
    /// answer, if there is one.
    #[command(after_long_help = generic::WRITE_EXAMPLES)]
    Write(generic::WriteArgs),

    /// List the names under a path of the API
    ///
    /// Exits with 2 when there is nothing there.
    List(generic::ListArgs),

    /// Delete the data at a path of the API
    ///
    /// Succeeds also when there was nothing to delete.
    Delete(generic::DeleteArgs),

    /// Look up and create tokens
    #[command(subcommand)]
    Token(token::Command),

    /// Get the answer a wrapping token holds (once)
    ///
    /// Without TOKEN, the command's own token (GATEPASS_TOKEN, VAULT_TOKEN
    /// or the saved one) is taken as the wrapping token.
    Unwrap(unwrap::Args),

    /// SSH: certificates, one-time passwords, dynamic keys, and logging in
    ///
    /// Talks to an ssh secrets engine (mounted at `ssh` unless --mount says
    /// otherwise) and puts what it returns where OpenSSH looks for it, or
    /// runs ssh with it (`gatepass ssh connect`).
    #[command(subcommand)]
    Ssh(ssh::Command),

    /// Privileged sessions: SSH to an account through a gatepass-gateway
    ///
    /// Asks the server for access to an account of a resource for a while,
    /// and logs in through the resource's gateway with a certificate for a
    /// key made here; the gateway logs in to the server with the account's
    /// password or key, which never reach this machine. Also lists, shows
    /// and terminates sessions.
    #[command(subcommand, after_long_help = pam::EXAMPLES)]
    Pam(pam::Command),
}

fn main() -> ExitCode {
    // `gatepass ssh connect` runs this binary as ssh's SSH_ASKPASS.
    if askpass::invoked() {
        return askpass::main();
    }
    // Packaging: `gatepass __docs DIR` writes man pages and completions.
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if raw.get(1).and_then(|a| a.to_str()) == Some("__docs") {
        use clap::CommandFactory;
        let dir = raw.get(2).map(std::path::PathBuf::from).unwrap_or_default();
        return match gatepass_api::docs::write(Cli::command(), &dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eoutln!("gatepass: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse_from(vault_style_args(raw));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eoutln!("Error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let ran = runtime.block_on(run(cli));
    // Without waiting for blocking work: a relay the server ended leaves a
    // read of standard input blocked until ssh closes it, which ssh does
    // only once this process has exited.
    runtime.shutdown_background();
    match ran {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eoutln!("Error: {e}");
            if let Some(hint) = e.hint() {
                eoutln!("Hint: {hint}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs the command; Ok holds the exit status (ssh's for `ssh connect`).
async fn run(cli: Cli) -> error::Result<u8> {
    let global = &cli.global;
    match cli.command {
        Command::Login(args) => login::run(global, args).await?,
        Command::Read(args) => generic::read(&Ctx::new(global)?, args).await?,
        Command::Write(args) => generic::write(&Ctx::new(global)?, args).await?,
        Command::List(args) => generic::list(&Ctx::new(global)?, args).await?,
        Command::Delete(args) => generic::delete(&Ctx::new(global)?, args).await?,
        Command::Token(cmd) => token::run(&Ctx::new(global)?, cmd).await?,
        Command::Unwrap(args) => unwrap::run(&Ctx::new(global)?, args).await?,
        Command::Ssh(cmd) => return ssh::run(global, cmd).await,
        Command::Pam(cmd) => return pam::run(global, cmd).await,
    }
    Ok(0)
}

/// Long options people bring from Vault's CLI, which writes them with one
/// dash (`-format=json`, `-method userpass`).
const VAULT_LONG_OPTIONS: &[&str] = &[
    "accessor",
    "address",
    "ca-cert",
    "display-name",
    "field",
    "force",
    "format",
    "help",
    "method",
    "no-store",
    "num-uses",
    "orphan",
    "policy",
    "print-token",
    "ttl",
    "wrap-ttl",
];

/// Rewrites `-name[=value]` to `--name[=value]` for those options, up to a
/// `--`. Anything else is left for clap to judge.
fn vault_style_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut rest = false;
    args.into_iter()
        .map(|arg| {
            if rest {
                return arg;
            }
            let Some(s) = arg.to_str() else { return arg };
            if s == "--" {
                rest = true;
                return arg;
            }
            match s.strip_prefix('-') {
                Some(body)
                    if !body.starts_with('-')
                        && VAULT_LONG_OPTIONS.contains(&body.split('=').next().unwrap_or("")) =>
                {
                    OsString::from(format!("-{s}"))
                }
                _ => arg,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn vault_style_options() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            vault_style_args(args(&[
                "gatepass",
                "login",
                "-method=userpass",
                "-no-store",
                "-",
                "-a",
                "x"
            ])),
            args(&[
                "gatepass",
                "login",
                "--method=userpass",
                "--no-store",
                "-",
                "-a",
                "x"
            ])
        );
        assert_eq!(
            vault_style_args(args(&["gatepass", "write", "p", "--", "-field"])),
            args(&["gatepass", "write", "p", "--", "-field"])
        );
        assert_eq!(
            vault_style_args(args(&["gatepass", "-x=1"])),
            args(&["gatepass", "-x=1"])
        );
    }
}
