//! `gatepass-helper`: checks a one-time password at SSH login, run by
//! `pam_exec.so expose_authtok`. A drop-in for vault-ssh-helper: the same
//! flags (`-config`, `-verify-only`, `-dev`, `-log-level`, Go-style with one
//! dash, or two) and its HCL configuration file unchanged.
//!
//! Reads the OTP from stdin (up to a NUL or EOF), PAM_USER and PAM_RHOST from
//! the environment — all of it untrusted — and exits 0 only when the OTP
//! logs this user in on this host.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pam_gatepass::client::{Client, InterfaceAddrs, Transport};
use pam_gatepass::config::{Config, DEFAULT_CONFIG};
use pam_gatepass::hostd::{serve_direct, InProcess, LoginVerifier};
use pam_gatepass::logging::{Level, Logger};
use pam_gatepass::verify::{authenticate_overlapped, Outcome, PamItems, Policy};
use zeroize::Zeroizing;

/// The longest token read from stdin; more is not an OTP.
const MAX_TOKEN: u64 = 4096;

#[derive(Parser)]
#[command(
    name = "gatepass-helper",
    version,
    about = "Checks an SSH one-time password against gatepass (run by pam_exec expose_authtok)",
    long_about = "Checks an SSH one-time password against gatepass. Run by pam_exec.so expose_authtok: \
                  reads the OTP from stdin and PAM_USER/PAM_RHOST from the environment, asks the server \
                  (POST /v1/<mount>/verify over TLS with the CA pinned; through gatepass-hostd's socket \
                  /run/gatepass/hostd.sock when it answers, directly otherwise), checks user, this host's \
                  addresses and the role, and exits 0 only on success. A drop-in for vault-ssh-helper: \
                  its flags (one dash or two) and its HCL configuration work unchanged."
)]
struct Cli {
    /// Configuration file: vault-ssh-helper's HCL (*.hcl, or any file that sets
    /// vault_addr) or gatepass's TOML.
    #[arg(long = "config", value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Check the configuration and that every server answers the echo
    /// request, then exit (for operators; reads no OTP).
    #[arg(long = "verify-only")]
    verify_only: bool,
    /// Dev mode: allows http://, tls_skip_verify and no CA file. Never on a
    /// real host.
    #[arg(long = "dev")]
    dev: bool,
    /// What goes to stderr besides syslog: error, warn, info, debug, trace.
    #[arg(long = "log-level", value_name = "LEVEL", default_value = "info", value_parser = parse_level)]
    log_level: Level,
}

fn parse_level(s: &str) -> Result<Level, String> {
    Level::parse(s)
        .ok_or_else(|| format!("unknown log level {s:?} (error, warn, info, debug, trace)"))
}

/// Go's flag package takes `-name`, `--name`, `-name=value` and
/// `-name value`; clap takes two dashes. Single-dash long names become
/// double-dash ones; short flags (`-h`, `-V`) stay as they are.
fn go_style(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    const LONG: [&str; 6] = [
        "config",
        "verify-only",
        "dev",
        "log-level",
        "version",
        "help",
    ];
    let mut out = Vec::new();
    let mut rest_are_values = false;
    for (i, a) in args.into_iter().enumerate() {
        if i == 0 || rest_are_values {
            out.push(a);
            continue;
        }
        let Some(s) = a.to_str() else {
            out.push(a);
            continue;
        };
        if s == "--" {
            rest_are_values = true;
            out.push(a);
            continue;
        }
        let name = s.strip_prefix('-').filter(|r| !r.starts_with('-'));
        let fixed = name.and_then(|n| {
            let key = n.split_once('=').map_or(n, |(k, _)| k);
            // vault-ssh-helper also knows `-v` for its version.
            if n == "v" {
                return Some("--version".to_string());
            }
            LONG.contains(&key).then(|| format!("-{s}"))
        });
        out.push(fixed.map_or(a, OsString::from));
    }
    out
}

/// PAM items as pam_exec hands them over.
struct Exec {
    token: Option<Zeroizing<String>>,
}

impl PamItems for Exec {
    fn user(&mut self) -> Option<String> {
        std::env::var("PAM_USER").ok()
    }
    fn rhost(&mut self) -> Option<String> {
        std::env::var("PAM_RHOST").ok()
    }
    fn authtok(&mut self) -> Option<Zeroizing<String>> {
        self.token.take()
    }
    fn prompt(&mut self, _text: &str) -> Option<Zeroizing<String>> {
        None
    }
}

/// The token: stdin up to the first NUL (pam_exec's terminator) or EOF,
/// without a trailing newline. `None` when it is empty, too long or not UTF-8.
fn read_token() -> Option<Zeroizing<String>> {
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin()
        .lock()
        .take(MAX_TOKEN + 1)
        .read_to_end(&mut buf)
        .ok()?;
    if buf.len() as u64 > MAX_TOKEN {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let text = std::str::from_utf8(&buf[..end]).ok()?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    Some(Zeroizing::new(text.to_string()))
}

fn main() -> ExitCode {
    // Packaging: `gatepass-helper __docs DIR` writes man page and completions.
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).and_then(|a| a.to_str()) == Some("__docs") {
        use clap::CommandFactory;
        let dir = args
            .get(2)
            .map(std::path::PathBuf::from)
            .unwrap_or_default();
        return match gatepass_api::docs::write(Cli::command(), &dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatepass-helper: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // The PAM module's direct way (`pam_gatepass::hostd::ExecHelper`): one
    // request on stdin, the servers' answer on stdout; the module makes
    // the checks and writes the log line.
    if args.get(1).and_then(|a| a.to_str()) == Some("__direct") {
        return match serve_direct(std::io::stdin().lock(), std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatepass-helper: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse_from(go_style(args));
    let logger = Logger {
        process: "gatepass-helper".into(),
        prefix: String::new(),
        socket: None,
        stderr: Some(cli.log_level),
    };
    let fail = |logger: &Logger, why: String| {
        if cli.verify_only {
            logger.log(Level::Error, &why);
        } else {
            let o = Outcome::unavailable(
                format!("configuration: {why}"),
                std::env::var("PAM_USER").ok(),
                std::env::var("PAM_RHOST").ok(),
            );
            logger.attempt(&o);
        }
        ExitCode::FAILURE
    };

    let cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => return fail(&logger, e.0),
    };
    let logger = Logger {
        socket: cfg.syslog_socket.clone(),
        ..logger
    };
    if cli.dev {
        logger.log(
            Level::Warn,
            "==> WARNING: Dev mode is enabled! Never use -dev on a real host.",
        );
    }
    let warnings = match cfg.check_transport(cli.dev) {
        Ok(w) => w,
        Err(e) => return fail(&logger, e.0),
    };
    for w in warnings {
        logger.log(Level::Warn, &format!("dev mode: {w}"));
    }
    let transport = match Transport::load(&cfg) {
        Ok(t) => t,
        Err(e) => return fail(&logger, e.0),
    };
    logger.log(
        Level::Debug,
        &format!(
            "servers {}, mount {}, timeout {:?}, hostd {}",
            cfg.servers.join(", "),
            cfg.mount,
            cfg.timeout,
            cfg.hostd_socket
                .as_deref()
                .map_or("not asked".into(), |p| p.display().to_string())
        ),
    );

    if cli.verify_only {
        // The operator's check of this host's own way to the servers:
        // hostd is not asked. Each server gets the whole timeout.
        let client = match Client::new(transport) {
            Ok(c) => c,
            Err(e) => return fail(&logger, e.0),
        };
        let mut ok = true;
        for (srv, r) in client.echo_all(cfg.timeout) {
            match r {
                Ok(()) => logger.log(
                    Level::Info,
                    &format!("{srv}: verification successful (verify-echo-response)"),
                ),
                Err(e) => {
                    ok = false;
                    logger.log(Level::Error, &format!("{srv}: {e}"));
                }
            }
        }
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }

    // pam_exec writes the token and closes the pipe; the bound starts after.
    let token = read_token();

    // Belt and braces on top of the client's own bound: whatever happens,
    // sshd gets an answer (a refusal) shortly after the timeout.
    let hard_limit = cfg.timeout + Duration::from_secs(1);
    let _ = std::thread::Builder::new()
        .name("deadline".into())
        .spawn(move || {
            std::thread::sleep(hard_limit);
            eprintln!("gatepass-helper: [ERROR] no result within {hard_limit:?}; refusing");
            std::process::exit(1);
        });

    let server = LoginVerifier {
        transport,
        timeout: cfg.timeout,
        socket: cfg.hostd_socket.clone(),
        direct: InProcess,
    };
    let mut pam = Exec { token };
    // The log's socket is opened while the servers are asked.
    let mut opened = None;
    let outcome = authenticate_overlapped(
        &mut pam,
        &Policy::from(&cfg),
        &server,
        &InterfaceAddrs,
        &mut || opened = Some(logger.open()),
    );
    logger.attempt_on(opened, &outcome);
    if outcome.granted() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(args: &[&str]) -> Vec<String> {
        go_style(args.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn go_style_flags_become_clap_ones() {
        assert_eq!(
            conv(&[
                "h",
                "-config=/etc/x.hcl",
                "-verify-only",
                "-dev",
                "-log-level",
                "debug"
            ]),
            [
                "h",
                "--config=/etc/x.hcl",
                "--verify-only",
                "--dev",
                "--log-level",
                "debug"
            ]
        );
        assert_eq!(
            conv(&["h", "-config", "/c", "--dev"]),
            ["h", "--config", "/c", "--dev"]
        );
        assert_eq!(conv(&["h", "-v"]), ["h", "--version"]);
        assert_eq!(
            conv(&["h", "-h", "-V", "-nope"]),
            ["h", "-h", "-V", "-nope"]
        );
        let cli = Cli::try_parse_from(go_style(
            ["h", "-config=/c.hcl", "-dev"].map(OsString::from),
        ))
        .unwrap();
        assert_eq!(cli.config, PathBuf::from("/c.hcl"));
        assert!(cli.dev && !cli.verify_only);
        assert_eq!(cli.log_level, Level::Info);
    }
}
