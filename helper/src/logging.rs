//! One syslog line (facility auth) per login attempt: the result, the
//! reason and who/where, never the OTP.
//!
//! Lines go to the system's syslog socket (`/dev/log`) or the configured
//! `syslog_socket`, through the `syslog` crate, which opens its own socket
//! and so leaves the host application's openlog(3) settings (sshd's) alone.
//! Where no syslog listens, the line goes to stderr instead.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use syslog::{Facility, Formatter3164};

use crate::verify::{Decision, Outcome};

/// Longest value written for one field; longer ones are cut.
const MAX_FIELD: usize = 256;

/// Severity of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" | "err" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" | "trace" => Some(Level::Debug),
            _ => None,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

/// Where and how lines are written.
#[derive(Debug, Clone)]
pub struct Logger {
    /// The syslog tag (`gatepass-helper`, or the application for the module).
    pub process: String,
    /// Put before every message (the module's `pam_gatepass(sshd:auth): `).
    pub prefix: String,
    /// A syslog socket other than the system's.
    pub socket: Option<PathBuf>,
    /// Also write lines up to this level to stderr (the helper binary, whose
    /// stderr pam_exec's `log=` keeps; the module's `stderr` argument).
    pub stderr: Option<Level>,
}

/// A connection to syslog opened before its line is known
/// ([`Logger::open`]).
pub struct Opened(Option<SyslogConn>);

type SyslogConn = syslog::Logger<syslog::LoggerBackend, Formatter3164>;

impl Logger {
    /// Writes one line to syslog (and stderr if asked); a line syslog
    /// could not take goes to stderr. Debug lines go to stderr only, so that
    /// syslog has the attempt's one line.
    pub fn log(&self, level: Level, message: &str) {
        self.log_on(None, level, message);
    }

    /// Opens the syslog socket for a line written later: the PAM module
    /// does it while the servers are asked, off the login's path.
    pub fn open(&self) -> Opened {
        Opened(self.connect())
    }

    fn log_on(&self, conn: Option<Opened>, level: Level, message: &str) {
        let text = format!("{}{}", self.prefix, message);
        if level == Level::Debug {
            if self.stderr.is_some_and(|max| max >= Level::Debug) {
                let _ = writeln!(std::io::stderr().lock(), "{}: [DEBUG] {text}", self.process);
            }
            return;
        }
        let sent = self.syslog(conn.and_then(|c| c.0), level, &text);
        let to_stderr = self.stderr.is_some_and(|max| level <= max) || !sent;
        if to_stderr {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{}: [{}] {text}", self.process, level.tag());
        }
    }

    /// The attempt's line, at info (granted), warning (denied) or error
    /// (the check could not be made).
    pub fn attempt(&self, outcome: &Outcome) {
        self.attempt_on(None, outcome);
    }

    /// [`Logger::attempt`] through a connection opened before (or a new
    /// one when there is none).
    pub fn attempt_on(&self, conn: Option<Opened>, outcome: &Outcome) {
        let level = match outcome.decision {
            Decision::Granted => Level::Info,
            Decision::Denied => Level::Warn,
            Decision::Unavailable => Level::Error,
        };
        self.log_on(conn, level, &attempt_line(outcome));
    }

    fn connect(&self) -> Option<SyslogConn> {
        let f = Formatter3164 {
            facility: Facility::LOG_AUTH,
            hostname: None,
            process: self.process.clone(),
            pid: std::process::id(),
        };
        let logger = match &self.socket {
            Some(p) => syslog::unix_custom(f, p),
            None => syslog::unix(f),
        };
        logger.ok()
    }

    fn syslog(&self, conn: Option<SyslogConn>, level: Level, text: &str) -> bool {
        let Some(mut l) = conn.or_else(|| self.connect()) else {
            return false;
        };
        let r = match level {
            Level::Error => l.err(text),
            Level::Warn => l.warning(text),
            Level::Info | Level::Debug => l.info(text),
        };
        r.is_ok()
    }
}

/// `OTP login denied: reason="…" user=root rhost=… otp_user=… otp_ip=…
/// role=… server=… elapsed_ms=…`
pub fn attempt_line(o: &Outcome) -> String {
    let result = match o.decision {
        Decision::Granted => "granted",
        Decision::Denied => "denied",
        Decision::Unavailable => "failed",
    };
    let mut s = format!("OTP login {result}: reason={}", quote(&o.reason));
    let mut field = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            let _ = write!(s, " {k}={}", quote(v));
        }
    };
    field("user", o.user.as_deref());
    field("rhost", o.rhost.as_deref());
    field("otp_user", o.otp.as_ref().map(|i| i.username.as_str()));
    field("otp_ip", o.otp.as_ref().map(|i| i.ip.as_str()));
    field("role", o.otp.as_ref().map(|i| i.role_name.as_str()));
    field("server", o.server.as_deref());
    field("via", o.via.map(|v| v.as_str()));
    if !o.elapsed.is_zero() {
        let _ = write!(s, " elapsed_ms={}", o.elapsed.as_millis());
    }
    s
}

/// A value as is when it is plain, else in quotes with `"`, `\` and
/// control characters escaped, and cut to [`MAX_FIELD`] characters: the
/// user name and remote host come from the client and must not forge a
/// second line or field.
fn quote(v: &str) -> String {
    let cut: String = v.chars().take(MAX_FIELD).collect();
    let plain = !cut.is_empty()
        && cut.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@' | '[' | ']')
        });
    if plain && cut.len() == v.len() {
        return cut;
    }
    let mut q = String::from("\"");
    for c in cut.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(q, "\\x{:02x}", u32::from(c));
            }
            c => q.push(c),
        }
    }
    if cut.len() < v.len() {
        q.push('…');
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::OtpInfo;
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    fn outcome() -> Outcome {
        Outcome {
            decision: Decision::Denied,
            reason: "username mismatch: the OTP is for \"alice\"".into(),
            user: Some("root".into()),
            rhost: Some("evil\nhost user=admin".into()),
            otp: Some(OtpInfo {
                username: "alice".into(),
                ip: "127.0.0.1".into(),
                role_name: "otp".into(),
            }),
            server: Some("https://127.0.0.1:8200".into()),
            via: Some(crate::client::Via::Hostd),
            elapsed: Duration::from_millis(12),
        }
    }

    #[test]
    fn the_line_has_result_reason_and_fields_on_one_line() {
        let l = attempt_line(&outcome());
        assert_eq!(
            l,
            "OTP login denied: reason=\"username mismatch: the OTP is for \\\"alice\\\"\" user=root \
             rhost=\"evil\\x0ahost user=admin\" otp_user=alice otp_ip=127.0.0.1 role=otp \
             server=https://127.0.0.1:8200 via=hostd elapsed_ms=12"
        );
        let long = "x".repeat(1000);
        assert!(quote(&long).chars().count() < MAX_FIELD + 4);
    }

    #[test]
    fn lines_go_to_syslog_with_the_auth_facility() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("log");
        let rx = UnixDatagram::bind(&sock).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let logger = Logger {
            process: "gatepass-helper".into(),
            prefix: String::new(),
            socket: Some(sock),
            stderr: None,
        };
        logger.attempt(&outcome());
        let mut buf = [0u8; 4096];
        let n = rx.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]);
        // <PRI> = facility auth (4) * 8 + severity warning (4) = 36.
        assert!(got.starts_with("<36>"), "{got}");
        assert!(
            got.contains(&format!(
                "gatepass-helper[{}]: OTP login denied",
                std::process::id()
            )),
            "{got}"
        );
        let mut ok = outcome();
        ok.decision = Decision::Granted;
        logger.attempt(&ok);
        let n = rx.recv(&mut buf).unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("<38>"),
            "info = 6"
        );
    }
}
