//! `pam_gatepass.so`: the check as a native PAM module (pam-bindings).
//!
//! ```text
//! auth    required  pam_gatepass.so config=/etc/gatepass/helper.toml [mount=ssh] [timeout=5s] [helper=/usr/bin/gatepass-helper] [stderr]
//! account required  pam_gatepass.so
//! ```
//!
//! - `authenticate` takes the OTP from PAM_AUTHTOK, or asks for it through
//!   the PAM conversation (`Password: `, echo off), which is what sshd's
//!   password and keyboard-interactive methods both answer.
//! - `setcred` and `acct_mgmt` succeed, so that a stack of this module alone
//!   works for keyboard-interactive (sshd treats a failing pam_setcred there
//!   as fatal).
//! - Arguments: `config=` (default [`DEFAULT_CONFIG`]), `mount=`,
//!   `timeout=` override the file; `helper=` names the `gatepass-helper`
//!   that asks the servers when hostd does not (default [`DEFAULT_HELPER`]);
//!   `stderr` also writes the log line to
//!   stderr; `use_first_pass` never asks (PAM_AUTHTOK only);
//!   `try_first_pass` is the default. An unknown argument refuses every login, as a bad configuration
//!   does: it fails closed.
//!
//! The question goes to hostd's socket first and, when hostd is not there,
//! to a `gatepass-helper __direct` process that asks the servers directly
//! ([`crate::hostd::ExecHelper`]); the checks and the log line stay here.
//! No async runtime, no thread and no TLS stack in sshd's process: the
//! module is loaded into every new sshd process, and what it does not link
//! it does not load (issue 20: loading the library was most of its cost).
//!
//! No panic crosses into the application: every hook runs under
//! `catch_unwind` (and pam-bindings adds its own guard around it), and the
//! crate denies `unwrap`/`expect`/`panic!`.

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Duration;

use pam::constants::{PamFlag, PamResultCode, PAM_PROMPT_ECHO_OFF};
use pam::conv::Conv;
use pam::items::{AuthTok, RHost, Service};
use pam::module::{PamHandle, PamHooks};
use zeroize::Zeroizing;

use crate::client::{InterfaceAddrs, Transport};
use crate::config::{parse_timeout, Config, DEFAULT_CONFIG};
use crate::hostd::{ExecHelper, LoginVerifier};
use crate::logging::{Level, Logger};
use crate::verify::{authenticate_overlapped, Decision, Outcome, PamItems, Policy};

/// Where the module finds `gatepass-helper` (the packages install it here).
pub const DEFAULT_HELPER: &str = "/usr/bin/gatepass-helper";

/// The module's hooks.
pub struct PamGatepass;

pam::pam_hooks!(PamGatepass);

impl PamHooks for PamGatepass {
    fn sm_authenticate(pamh: &mut PamHandle, args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        catch_unwind(AssertUnwindSafe(|| authenticate_hook(pamh, &args)))
            .unwrap_or(PamResultCode::PAM_AUTH_ERR)
    }

    fn sm_setcred(_pamh: &mut PamHandle, _args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        PamResultCode::PAM_SUCCESS
    }

    fn acct_mgmt(_pamh: &mut PamHandle, _args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        PamResultCode::PAM_SUCCESS
    }
}

/// The module's arguments from the PAM file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    pub config: Option<PathBuf>,
    pub mount: Option<String>,
    pub timeout: Option<Duration>,
    /// `gatepass-helper`, for the direct way.
    pub helper: Option<PathBuf>,
    pub stderr: bool,
    /// Only PAM_AUTHTOK, never ask (`try_first_pass`, the default, asks when
    /// there is none).
    pub use_first_pass: bool,
}

impl Args {
    pub fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Args, String> {
        let mut a = Args::default();
        for arg in args {
            match arg.split_once('=') {
                Some(("config", v)) if !v.is_empty() => a.config = Some(PathBuf::from(v)),
                Some(("mount", v)) if !v.is_empty() => a.mount = Some(v.to_string()),
                Some(("timeout", v)) => a.timeout = Some(parse_timeout(v).map_err(|e| e.0)?),
                Some(("helper", v)) if v.starts_with('/') => a.helper = Some(PathBuf::from(v)),
                None if arg == "stderr" => a.stderr = true,
                None if arg == "use_first_pass" => a.use_first_pass = true,
                None if arg == "try_first_pass" => a.use_first_pass = false,
                _ => return Err(format!("unknown module argument {arg:?}")),
            }
        }
        Ok(a)
    }
}

/// PAM items through pam-bindings; `.1`: may ask through the conversation.
struct Handle<'a>(&'a mut PamHandle, bool);

impl PamItems for Handle<'_> {
    fn user(&mut self) -> Option<String> {
        self.0.get_user(None).ok()
    }

    fn rhost(&mut self) -> Option<String> {
        let h = self.0.get_item::<RHost>().ok().flatten()?;
        Some(h.0.to_string_lossy().into_owned())
    }

    fn authtok(&mut self) -> Option<Zeroizing<String>> {
        let t = self.0.get_item::<AuthTok>().ok().flatten()?;
        let s = Zeroizing::new(t.as_bytes().to_vec());
        std::str::from_utf8(&s)
            .ok()
            .map(|s| Zeroizing::new(s.to_string()))
    }

    fn prompt(&mut self, text: &str) -> Option<Zeroizing<String>> {
        if !self.1 {
            return None;
        }
        let conv = self.0.get_item::<Conv>().ok().flatten()?;
        let answer = conv.send(PAM_PROMPT_ECHO_OFF, text).ok().flatten()?;
        answer.as_str().ok().map(|s| Zeroizing::new(s.to_string()))
    }
}

fn authenticate_hook(pamh: &mut PamHandle, raw_args: &[&CStr]) -> PamResultCode {
    let service = pamh
        .get_item::<Service>()
        .ok()
        .flatten()
        .map(|s| s.0.to_string_lossy().into_owned())
        .unwrap_or_else(|| "?".into());
    let mut logger = Logger {
        process: application_name(),
        prefix: format!("pam_gatepass({service}:auth): "),
        socket: None,
        stderr: None,
    };
    let args: Result<Vec<&str>, String> = raw_args
        .iter()
        .map(|a| {
            a.to_str()
                .map_err(|_| "a module argument is not UTF-8".to_string())
        })
        .collect();
    let args = args.and_then(Args::parse);
    // `stderr` counts even when another argument is bad, so that the
    // refusal's line shows where it was asked for.
    if raw_args.iter().any(|a| a.to_bytes() == b"stderr") {
        logger.stderr = Some(Level::Debug);
    }
    let may_prompt = args.as_ref().map_or(true, |a| !a.use_first_pass);
    let setup = args.and_then(|a| {
        let path = a
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let mut cfg = Config::load(&path).map_err(|e| e.0)?;
        if let Some(m) = &a.mount {
            cfg.set_mount(m).map_err(|e| e.0)?;
        }
        if let Some(t) = a.timeout {
            cfg.timeout = t;
        }
        cfg.check_transport(false).map_err(|e| e.0)?;
        // The files are read (and checked) here; no connection is opened
        // and no TLS state built until the direct way is needed.
        let transport = Transport::load(&cfg).map_err(|e| e.0)?;
        let helper = a.helper.unwrap_or_else(|| PathBuf::from(DEFAULT_HELPER));
        Ok((cfg, transport, helper))
    });
    let mut pam = Handle(pamh, may_prompt);
    let mut opened = None;
    let outcome = match setup {
        Ok((cfg, transport, helper)) => {
            if cfg.syslog_socket.is_some() {
                logger.socket.clone_from(&cfg.syslog_socket);
            }
            let server = LoginVerifier {
                transport,
                timeout: cfg.timeout,
                socket: cfg.hostd_socket.clone(),
                direct: ExecHelper { path: helper },
            };
            // The log's socket is opened while the servers are asked.
            authenticate_overlapped(
                &mut pam,
                &Policy::from(&cfg),
                &server,
                &InterfaceAddrs,
                &mut || opened = Some(logger.open()),
            )
        }
        Err(e) => {
            let (user, rhost) = (pam.user(), pam.rhost());
            Outcome::unavailable(format!("configuration: {e}"), user, rhost)
        }
    };
    logger.attempt_on(opened, &outcome);
    match outcome.decision {
        Decision::Granted => PamResultCode::PAM_SUCCESS,
        Decision::Denied => PamResultCode::PAM_AUTH_ERR,
        Decision::Unavailable if outcome.reason.starts_with("configuration:") => {
            PamResultCode::PAM_SERVICE_ERR
        }
        Decision::Unavailable => PamResultCode::PAM_AUTHINFO_UNAVAIL,
    }
}

/// The application's name (sshd, su, pamtester) for the syslog tag: the
/// kernel's `comm`, which sshd's setproctitle leaves alone (argv[0] becomes
/// "sshd: root [priv]"), kept to `[A-Za-z0-9._-]`.
fn application_name() -> String {
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    let name: String = comm
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    if name.is_empty() {
        "pam_gatepass".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_arguments() {
        assert_eq!(Args::parse([]).unwrap(), Args::default());
        let a = Args::parse([
            "config=/etc/gatepass/h.toml",
            "mount=ssh-prod",
            "timeout=2s",
            "helper=/opt/gatepass/bin/gatepass-helper",
            "stderr",
        ])
        .unwrap();
        assert_eq!(
            a,
            Args {
                config: Some("/etc/gatepass/h.toml".into()),
                mount: Some("ssh-prod".into()),
                timeout: Some(Duration::from_secs(2)),
                helper: Some("/opt/gatepass/bin/gatepass-helper".into()),
                stderr: true,
                use_first_pass: false,
            }
        );
        assert!(Args::parse(["use_first_pass"]).unwrap().use_first_pass);
        assert!(!Args::parse(["try_first_pass"]).unwrap().use_first_pass);
        for bad in [
            "confg=/x",
            "timeout=soon",
            "config=",
            "debug",
            "use_first_pass=1",
            "helper=gatepass-helper",
            "helper=",
        ] {
            assert!(Args::parse([bad]).is_err(), "{bad}");
        }
    }
}
