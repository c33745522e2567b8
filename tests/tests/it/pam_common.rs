//! What the PAM helper tests share: a dev server with OTP roles, OTPs,
//! helper configurations, servers that are down or hang, a foreign CA, a
//! syslog socket to read the helper's lines from, PAM service files that
//! are removed on drop, and bounded commands with stdin.

#![allow(dead_code)]

use std::io::{Read, Seek, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gatepass_tests::DevServer;
use serde_json::{json, Map, Value};

/// The OTP role: root by default, any user, loopback and a range that is not
/// this host's (10.255.255.0/24) so that OTPs for "another IP" can be made.
pub const ROLE: &str = "gp-otp";
/// The same with a 2 s TTL, for expired OTPs.
pub const SHORT_ROLE: &str = "gp-short";
/// A role the helper's allowed_roles does not list.
pub const OTHER_ROLE: &str = "gp-other";
/// An address in the role's range that is not this host's.
pub const OTHER_IP: &str = "10.255.255.1";
/// The check's bound in these tests (the default is 5 s).
pub const TIMEOUT_SECS: u64 = 2;

/// A dev server with the OTP roles, a runtime for its API client, and a
/// folder (0755, so sshd's PAM stack may read it) for configurations.
pub struct Env {
    /// Dropped first: it holds the API client's idle connections, which
    /// would keep the server's graceful shutdown waiting.
    pub rt: tokio::runtime::Runtime,
    pub server: DevServer,
    pub dir: tempfile::TempDir,
    /// The helper's syslog socket (its TOML configurations point here).
    pub syslog: UnixDatagram,
    pub syslog_path: PathBuf,
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

impl Env {
    pub fn start() -> Env {
        let server = DevServer::start();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::Builder::new()
            .prefix("gatepass-pam-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let syslog_path = dir.path().join("syslog.sock");
        let syslog = UnixDatagram::bind(&syslog_path).unwrap();
        let env = Env {
            server,
            rt,
            dir,
            syslog,
            syslog_path,
        };
        let client = env.server.client();
        for (name, ttl) in [(ROLE, "5m"), (SHORT_ROLE, "2s"), (OTHER_ROLE, "5m")] {
            let body = obj(json!({
                "key_type": "otp", "default_user": "root", "allowed_users": "*",
                "cidr_list": "127.0.0.0/8,10.255.255.0/24", "ttl": ttl,
            }));
            env.rt
                .block_on(client.write(&format!("ssh/roles/{name}"), &body))
                .unwrap_or_else(|e| panic!("create role {name}: {e}"));
        }
        env
    }

    /// `ssh/creds/<role> {ip, username}` → the OTP.
    pub fn otp(&self, role: &str, user: &str, ip: &str) -> String {
        let body = obj(json!({"ip": ip, "username": user}));
        let env = self
            .rt
            .block_on(
                self.server
                    .client()
                    .write(&format!("ssh/creds/{role}"), &body),
            )
            .unwrap_or_else(|e| panic!("creds/{role}: {e}"))
            .expect("creds answer");
        env.data.expect("data")["key"]
            .as_str()
            .expect("key")
            .to_string()
    }

    /// A gatepass TOML configuration for the dev server (or `servers`),
    /// pinned to `ca` (default: the dev server's CA).
    pub fn toml_config(
        &self,
        name: &str,
        servers: &[&str],
        ca: Option<&Path>,
        extra: &str,
    ) -> PathBuf {
        let servers = if servers.is_empty() {
            vec![self.server.addr.as_str()]
        } else {
            servers.to_vec()
        };
        let list: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
        let text = format!(
            "servers = [{}]\nmount = \"ssh\"\nca_cert = {:?}\ntimeout = \"{TIMEOUT_SECS}s\"\n\
             allowed_roles = [{ROLE:?}, {SHORT_ROLE:?}]\nsyslog_socket = {:?}\n{extra}",
            list.join(", "),
            ca.unwrap_or(&self.server.cacert).display().to_string(),
            self.syslog_path.display().to_string(),
        );
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The syslog lines written since the last call (waits up to `wait` for
    /// the first one).
    pub fn syslog_lines(&self, wait: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        let mut buf = vec![0u8; 8192];
        self.syslog.set_read_timeout(Some(wait)).unwrap();
        if let Ok(n) = self.syslog.recv(&mut buf) {
            lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            self.syslog.set_nonblocking(true).unwrap();
            while let Ok(n) = self.syslog.recv(&mut buf) {
                lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            self.syslog.set_nonblocking(false).unwrap();
        }
        lines
    }

    /// Exactly one attempt line since the last call, with the auth facility,
    /// the expected result and reason, and without the OTP.
    pub fn assert_one_line(&self, what: &str, result: &str, reason: &str, otp: &str) -> String {
        let lines = self.syslog_lines(Duration::from_secs(5));
        let attempts: Vec<&String> = lines.iter().filter(|l| l.contains("OTP login")).collect();
        assert_eq!(
            attempts.len(),
            1,
            "{what}: one syslog line per attempt, got {lines:#?}"
        );
        let line = attempts[0].clone();
        // <PRI>: facility auth (4) × 8 + severity (err 3, warning 4, info 6).
        assert!(
            ["<35>", "<36>", "<38>"].iter().any(|p| line.starts_with(p)),
            "{what}: not the auth facility: {line}"
        );
        assert!(
            line.contains(&format!("OTP login {result}")),
            "{what}: expected {result}: {line}"
        );
        assert!(
            line.contains(reason),
            "{what}: expected reason {reason:?}: {line}"
        );
        assert!(
            !otp.is_empty() && !line.contains(otp),
            "{what}: the OTP is in the log: {line}"
        );
        line
    }
}

/// A loopback address where nothing listens.
pub fn closed_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("https://{addr}")
}

/// A server that accepts connections and never says a word. The listener
/// and the accepted connections live until the returned guard is dropped.
pub struct Hanging {
    pub url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Hanging {
    pub fn start() -> Hanging {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", l.local_addr().unwrap());
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((s, _)) = l.accept() {
                    held.push(s);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Hanging { url, stop }
    }
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The CA of another (dev) server: a certificate chain the helper must refuse.
pub fn foreign_ca(dir: &Path) -> PathBuf {
    gatepass_server::tls::dev_certificates(&dir.join("foreign-tls"))
        .unwrap()
        .ca
}

/// Marks PAM files these tests write; only such files are removed.
const MARKER: &str =
    "# Written by gatepass's PAM helper tests (tests/tests/it/pam_*.rs); removed when the test ends.";

/// `/etc/pam.d/<service>`, removed on drop (also when the test panics).
pub struct PamFile {
    pub service: String,
    path: PathBuf,
}

impl PamFile {
    pub fn write(service: &str, text: &str) -> PamFile {
        let path = Path::new("/etc/pam.d").join(service);
        if let Ok(old) = std::fs::read_to_string(&path) {
            assert!(
                old.starts_with(MARKER),
                "{} exists and is not ours",
                path.display()
            );
        }
        std::fs::write(&path, format!("{MARKER}\n{text}\n")).unwrap();
        PamFile {
            service: service.to_string(),
            path,
        }
    }
}

impl Drop for PamFile {
    fn drop(&mut self) {
        if std::fs::read_to_string(&self.path).is_ok_and(|t| t.starts_with(MARKER)) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A service name unique to this test process.
pub fn service(name: &str) -> String {
    format!("gatepass-test-{name}-{}", std::process::id())
}

/// What a bounded command did.
#[derive(Debug)]
pub struct Ran {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `cmd` with `input` on stdin, killing it after `timeout` (status -1).
pub fn run_with_stdin(cmd: &mut Command, input: &[u8], timeout: Duration) -> Ran {
    let mut out = tempfile::tempfile().unwrap();
    let mut err = tempfile::tempfile().unwrap();
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(err.try_clone().unwrap()))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let deadline = start + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code().unwrap_or(-1);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let read = |f: &mut std::fs::File| {
        let mut s = String::new();
        f.rewind().unwrap();
        f.read_to_string(&mut s).unwrap();
        s
    };
    Ran {
        status,
        stdout: read(&mut out),
        stderr: read(&mut err),
        elapsed,
    }
}

/// Sleeps until `since + d`.
pub fn sleep_until(since: Instant, d: Duration) {
    let left = (since + d).saturating_duration_since(Instant::now());
    std::thread::sleep(left);
}

/// An ssh login that sshd refused (and why not, with its log, when it wasn't).
pub fn assert_refused(
    sshd: &gatepass_tests::sshd::Sshd,
    (status, out, err): (i32, String, String),
    what: &str,
) {
    assert!(
        status != 0 && err.contains("Permission denied"),
        "{what}: expected a refusal, got status {status}\nstdout: {out}\nstderr: {err}\n--- sshd log ---\n{}",
        sshd.log()
    );
}
