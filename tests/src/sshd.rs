//! A real OpenSSH sshd for end-to-end tests, and the client side to talk to
//! it: the real `ssh` (through `sshpass` for passwords), `ssh-agent`,
//! `ssh-add` and `ssh-keygen`.
//!
//! Every [`Sshd`] has its own config, host key, PID file and log in a fresh
//! folder, listens on a free port of 127.0.0.1 only, and is stopped (its
//! folder removed) on drop. The machine's own `/etc/ssh/sshd_config`,
//! `/etc/pam.d/sshd` and any running system sshd are never touched. Tests run
//! as root (sshd needs it to switch users and read its host key).
//!
//! ```no_run
//! use gatepass_tests::sshd::{keygen, pub_path, sign_user_key, Sshd, SshdOptions};
//! let keys = tempfile::tempdir().unwrap();
//! let ca = keygen(keys.path(), "ca", "ed25519", None);
//! let user = keygen(keys.path(), "user", "ed25519", None);
//! let cert = sign_user_key(&ca, &pub_path(&user), "user-id", &["root"], "+5m");
//! let sshd = Sshd::start(SshdOptions::trusting_user_ca(&pub_path(&ca)));
//! let out = sshd.client().identity(&user).certificate(&cert).run_ok("echo hello");
//! assert_eq!(out, "hello\n");
//! ```
//!
//! Things about sshd a test writer must know (all handled or documented here):
//!
//! - sshd keeps the **first** value it reads for most keywords. The
//!   harness therefore writes `extra_config` *before* its own defaults, so a
//!   test's `AuthorizedKeysFile`/`PermitRootLogin`/… wins; lines from the
//!   first `Match` on go to the very end of the file.
//! - `StrictModes yes` rejects `AuthorizedKeysFile`/`AuthorizedPrincipalsFile`
//!   below a group- or world-writable folder such as `/tmp` ("bad ownership or
//!   modes for directory /tmp"). The harness folders therefore live under
//!   `/run/gatepass-tests` (root, 0755), or `$GATEPASS_TEST_SSHD_DIR`, and
//!   are made 0755 so users other than root can read their files too.
//! - With `UsePAM no`, sshd refuses every login of an account whose shadow
//!   password starts with `!` ("account is locked"), even with a key.
//! - sshd takes its PAM service name from the basename of `argv[0]`, so a
//!   PAM test runs sshd through a symlink named after its service.
//! - From OpenSSH 9.8 on, `PerSourcePenalties` would block 127.0.0.1 after a
//!   few failed logins; the harness turns it off where sshd knows it.
//! - With `UsePAM yes`, sshd treats a failing `pam_setcred` after a
//!   keyboard-interactive login as fatal (after a `password` login it only
//!   logs it). `pam_exec` ignores setcred, and a stack in which every module
//!   ignores it fails, so an auth stack of pam_exec alone breaks
//!   keyboard-interactive ("PAM: pam_setcred(): Permission denied"): add a
//!   module whose setcred succeeds, e.g. vault-ssh-helper's
//!   `auth optional pam_unix.so not_set_pass use_first_pass nodelay`.
//! - The ssh client loads `KEY-cert.pub` next to an identity file by itself:
//!   to log in with a bare key, copy it somewhere without its certificate.
//! - Readiness is "Server listening on" in the log plus a banner, so an
//!   `extra_config` `LogLevel` must be INFO or more verbose.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The sshd binary; always started by this absolute path (or a symlink to it).
pub const SSHD: &str = "/usr/sbin/sshd";

/// How long [`Sshd::launch`] and [`Sshd::reload`] wait for the SSH banner.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// First line of every PAM file the harness writes; only such files are
/// overwritten or removed.
const PAM_MARKER: &str =
    "# Written by the gatepass test harness (tests/src/sshd.rs); removed when the test ends.";

/// PAM for an [`Sshd`]: password and keyboard-interactive logins go through
/// `/etc/pam.d/<service>`, written from `pam_config` at launch and removed on
/// drop. Use a service name unique to the test (e.g. `gatepass-test-otp-ok`).
#[derive(Clone, Debug)]
pub struct PamSetup {
    /// PAM service name: `[A-Za-z0-9._-]+`, not `sshd`.
    pub service: String,
    /// The PAM file's text (`auth …`, `account …`, `session …` lines). sshd
    /// also runs the `account` and `session` stacks, for key logins too.
    pub pam_config: String,
}

/// What a test wants in its sshd.
#[derive(Clone, Debug, Default)]
pub struct SshdOptions {
    /// Lines added to sshd_config (e.g. "TrustedUserCAKeys /path",
    /// "RevokedKeys /path", "AuthorizedPrincipalsFile /path/%u",
    /// "HostCertificate /path"). They are written before the harness's own
    /// defaults, so they override them; from the first `Match` line on they
    /// are written at the end of the file.
    pub extra_config: Vec<String>,
    /// Password / keyboard-interactive logins through PAM: `UsePAM yes`,
    /// `PasswordAuthentication yes`, `KbdInteractiveAuthentication yes`,
    /// `PermitRootLogin yes`.
    pub pam: Option<PamSetup>,
    /// Environment variables sshd runs with besides the test's own (`TZ`).
    pub env: Vec<(String, String)>,
}

impl SshdOptions {
    /// Options whose only extra line is `TrustedUserCAKeys <ca_pub>`.
    pub fn trusting_user_ca(ca_pub: &Path) -> SshdOptions {
        SshdOptions {
            extra_config: vec![format!("TrustedUserCAKeys {}", ca_pub.display())],
            ..SshdOptions::default()
        }
    }
}

/// A private sshd on `127.0.0.1:port`. Stopped with SIGTERM (then SIGKILL)
/// on drop; its folder and PAM file are removed then. A watchdog process
/// does the same if the test process dies without dropping it.
pub struct Sshd {
    /// The loopback port it listens on (may change in [`Sshd::launch`] if
    /// another process took it in the meantime; read it after launching).
    pub port: u16,
    /// Its folder (root, 0755): config, host key, PID file, log, and any
    /// files the test puts there with [`Sshd::write_file`].
    pub dir: PathBuf,
    /// sshd_config written by the harness.
    pub config: PathBuf,
    /// The ed25519 host private key (made with ssh-keygen).
    pub host_key: PathBuf,
    /// Its public half (`host_key.pub`), e.g. to sign a host certificate.
    pub host_key_pub: PathBuf,
    /// sshd's log (stderr of `sshd -D -e`), appended across reloads.
    pub log_path: PathBuf,
    /// Read at [`Sshd::launch`] and [`Sshd::reload`]; a test may change them
    /// in between (except `pam`, which is fixed at launch).
    pub options: SshdOptions,
    child: Option<Child>,
    pam_file: Option<PathBuf>,
    watchdog: Option<Child>,
    tmp: Option<tempfile::TempDir>,
}

impl Sshd {
    /// Makes the folder, host key and port of an sshd without starting it,
    /// so that a test can prepare files that need them (a host certificate
    /// of `host_key_pub`, a known_hosts line with the port), push more
    /// `options.extra_config` lines, and then call [`Sshd::launch`].
    pub fn new(options: SshdOptions) -> Sshd {
        assert_root();
        ensure_privsep_dir();
        let tmp = tempfile::Builder::new()
            .prefix("sshd-")
            .tempdir_in(base_dir())
            .expect("sshd temp dir");
        let dir = tmp.path().to_path_buf();
        set_mode(&dir, 0o755);
        let host_key = keygen(&dir, "host_key", "ed25519", None);
        Sshd {
            port: crate::free_port(),
            config: dir.join("sshd_config"),
            host_key_pub: pub_path(&host_key),
            host_key,
            log_path: dir.join("sshd.log"),
            dir,
            options,
            child: None,
            pam_file: None,
            watchdog: None,
            tmp: Some(tmp),
        }
    }

    /// [`Sshd::new`] then [`Sshd::launch`]: a running sshd that answers with
    /// its SSH banner.
    pub fn start(options: SshdOptions) -> Sshd {
        let mut sshd = Sshd::new(options);
        sshd.launch();
        sshd
    }

    /// Writes the config, checks it with `sshd -t` (panics with its message
    /// when invalid), starts `sshd -D -e -f CONFIG` and waits (at most 10 s)
    /// until the port answers with an SSH banner; panics with the log
    /// otherwise.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "sshd is already running");
        if let Some(pam) = self.options.pam.clone() {
            self.install_pam(&pam);
        }
        let exe = match &self.options.pam {
            Some(pam) => {
                let link = self.dir.join(&pam.service);
                if !link.exists() {
                    std::os::unix::fs::symlink(SSHD, &link).expect("symlink to sshd");
                }
                link
            }
            None => PathBuf::from(SSHD),
        };
        // The port was free when chosen; if someone took it since, sshd
        // exits with "Address already in use" and we try another one.
        for attempt in 0..5 {
            self.write_config();
            let before = self.log().matches("Server listening on").count();
            let in_use_before = self.log().matches(IN_USE).count();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log_path)
                .expect("open sshd log");
            let child = Command::new(&exe)
                .envs(self.options.env.iter().map(|(k, v)| (k, v)))
                .args(["-D", "-e", "-f"])
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().expect("clone log handle")))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
            self.child = Some(child);
            match self.wait_ready(before) {
                Ok(()) => {
                    self.start_watchdog();
                    return;
                }
                // sshd's last line is "Cannot bind any address."; why is
                // on the line before.
                Err(_) if attempt < 4 && self.log().matches(IN_USE).count() > in_use_before => {
                    self.child = None;
                    self.port = crate::free_port();
                }
                Err(e) => {
                    self.stop();
                    panic!("sshd did not start: {e}\n--- sshd log ---\n{}", self.log());
                }
            }
        }
    }

    /// Rewrites the config from `options` (checked with `sshd -t`), sends
    /// SIGHUP and waits until the re-executed sshd answers again.
    pub fn reload(&mut self) {
        let pid = self.pid().expect("reload: sshd is not running");
        self.write_config();
        let before = self.log().matches("Server listening on").count();
        signal(pid, "HUP");
        if let Err(e) = self.wait_ready(before) {
            panic!(
                "sshd did not come back after SIGHUP: {e}\n--- sshd log ---\n{}",
                self.log()
            );
        }
    }

    /// Stops sshd (SIGTERM, then SIGKILL after 10 s) and waits for it. The
    /// folder stays until drop; [`Sshd::launch`] may start it again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::stop_child(&mut child);
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    /// The listener's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// sshd's log so far (LogLevel VERBOSE): show it when a test fails.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The text of the host public key file (`ssh-ed25519 AAAA… comment\n`).
    pub fn host_public_key(&self) -> String {
        std::fs::read_to_string(&self.host_key_pub).expect("read host public key")
    }

    /// How ssh names this server in known_hosts: `[127.0.0.1]:PORT`.
    pub fn host_pattern(&self) -> String {
        format!("[127.0.0.1]:{}", self.port)
    }

    /// A known_hosts line trusting exactly this server's host key.
    pub fn known_hosts_line(&self) -> String {
        let key = self.host_public_key();
        let mut fields = key.split_whitespace();
        let (kind, blob) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        format!("{} {kind} {blob}\n", self.host_pattern())
    }

    /// Writes `content` to `dir/name` with mode 0644 (folders on the way
    /// 0755, as StrictModes wants) and returns its path. `name` is relative,
    /// e.g. `user_ca.pub` or `principals/root`. For private keys use
    /// [`Sshd::write_file_mode`] with 0o600: ssh refuses readable ones.
    pub fn write_file(&self, name: &str, content: &str) -> PathBuf {
        self.write_file_mode(name, content, 0o644)
    }

    /// [`Sshd::write_file`] with an explicit mode (e.g. 0o755 for a script).
    pub fn write_file_mode(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let rel = Path::new(name);
        assert!(
            !name.is_empty()
                && rel
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
            "write_file: {name:?} must be a relative path without `..`"
        );
        let path = self.dir.join(rel);
        let mut parent = path.parent().expect("parent folder").to_path_buf();
        std::fs::create_dir_all(&parent).expect("create folder");
        while parent.starts_with(&self.dir) && parent != self.dir {
            set_mode(&parent, 0o755);
            parent.pop();
        }
        write_atomic(&path, content.as_bytes(), mode);
        path
    }

    /// A client for this server: user root, host keys not checked (see
    /// [`SshClient::insecure_host_key`]), BatchMode, no agent, no identity.
    pub fn client(&self) -> SshClient<'_> {
        SshClient {
            sshd: self,
            user: "root".into(),
            identity: None,
            certificate: None,
            known_hosts: None,
            agent: None,
            password: None,
            options: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }

    fn install_pam(&mut self, pam: &PamSetup) {
        let ok = !pam.service.is_empty()
            && pam.service != "sshd"
            && pam
                .service
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && !pam.service.starts_with('.');
        assert!(
            ok,
            "PAM service name {:?} must be [A-Za-z0-9._-]+ and not sshd",
            pam.service
        );
        let path = Path::new("/etc/pam.d").join(&pam.service);
        if let Ok(old) = std::fs::read_to_string(&path) {
            assert!(
                old.starts_with(PAM_MARKER),
                "{} exists and was not written by the test harness: choose another PAM service name",
                path.display()
            );
        } else if path.exists() {
            panic!(
                "{} exists and is not readable text: choose another PAM service name",
                path.display()
            );
        }
        let text = format!("{PAM_MARKER}\n{}\n", pam.pam_config.trim_end());
        write_atomic(&path, text.as_bytes(), 0o644);
        self.pam_file = Some(path);
    }

    fn write_config(&self) {
        let extra = &self.options.extra_config;
        let split = extra
            .iter()
            .position(|l| l.trim_start().to_ascii_lowercase().starts_with("match "))
            .unwrap_or(extra.len());
        let pam = self.options.pam.is_some();
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let mut c = String::from("# Written by the gatepass test harness (tests/src/sshd.rs).\n");
        c.push_str("# The test's lines come first: sshd keeps the first value of a keyword.\n");
        for line in &extra[..split] {
            c.push_str(line);
            c.push('\n');
        }
        c.push_str("# Harness defaults.\n");
        c.push_str(&format!("ListenAddress 127.0.0.1:{}\n", self.port));
        c.push_str(&format!("HostKey {}\n", self.host_key.display()));
        c.push_str(&format!(
            "PidFile {}\n",
            self.dir.join("sshd.pid").display()
        ));
        c.push_str("AuthorizedKeysFile none\n");
        c.push_str(&format!("PasswordAuthentication {}\n", yes_no(pam)));
        c.push_str(&format!("KbdInteractiveAuthentication {}\n", yes_no(pam)));
        c.push_str(&format!("UsePAM {}\n", yes_no(pam)));
        c.push_str(&format!(
            "PermitRootLogin {}\n",
            if pam { "yes" } else { "prohibit-password" }
        ));
        c.push_str("StrictModes yes\n");
        c.push_str("LogLevel VERBOSE\n");
        if penalties_supported(&self.dir, &self.host_key) {
            c.push_str("PerSourcePenalties no\n");
        }
        for line in &extra[split..] {
            c.push_str(line);
            c.push('\n');
        }
        write_atomic(&self.config, c.as_bytes(), 0o644);
        let out = Command::new(SSHD)
            .arg("-t")
            .arg("-f")
            .arg(&self.config)
            .stdin(Stdio::null())
            .output()
            .expect("run sshd -t");
        assert!(
            out.status.success(),
            "sshd -t rejects the config: {}{}\n--- {} ---\n{c}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.config.display()
        );
    }

    /// Waits until the log shows more than `listening_before` "Server
    /// listening on" lines and the port answers with a banner.
    fn wait_ready(&mut self, listening_before: usize) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            let child = self.child.as_mut().expect("sshd child");
            if let Ok(Some(status)) = child.try_wait() {
                let log = self.log();
                let why = log
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .to_string();
                return Err(format!("sshd exited ({status}): {why}"));
            }
            let listening = self.log().matches("Server listening on").count() > listening_before;
            if listening && banner(addr) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no SSH banner on {addr} within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops sshd and removes its folder and PAM file if this test process
    /// dies without dropping the `Sshd` (e.g. killed by a timeout).
    fn start_watchdog(&mut self) {
        let Some(pid) = self.pid() else { return };
        let pam = self
            .pam_file
            .as_ref()
            .map(|p| {
                format!(
                    "grep -qxF '{PAM_MARKER}' '{0}' && rm -f '{0}'; ",
                    p.display()
                )
            })
            .unwrap_or_default();
        self.watchdog = watchdog(pid, &format!("{pam}rm -rf '{}'", self.dir.display()));
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        if let Some(path) = self.pam_file.take() {
            let ours = std::fs::read_to_string(&path)
                .map(|t| t.starts_with(PAM_MARKER))
                .unwrap_or(false);
            if ours {
                let _ = std::fs::remove_file(&path);
            }
        }
        if let Some(tmp) = self.tmp.take() {
            let _ = tmp.close();
        }
    }
}

/// Which prompt [`SshClient`] answers with its password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordMethod {
    /// SSH `password` authentication (`PreferredAuthentications=password`).
    Password,
    /// `keyboard-interactive` (the PAM conversation's prompts).
    KeyboardInteractive,
}

/// One invocation of the real `ssh` to an [`Sshd`], built step by step:
///
/// ```text
/// sshd.client().user("alice").identity(&key).certificate(&cert).known_hosts(&kh).run("id -un")
/// ```
///
/// Always: `-F /dev/null` (no user or system ssh_config),
/// `GlobalKnownHostsFile=/dev/null`, `UpdateHostKeys=no`, `ConnectTimeout=5`,
/// `LogLevel=ERROR`, `-p PORT`, `127.0.0.1`, stdin from /dev/null, and a
/// bound of 30 s on the whole run. `BatchMode=yes` unless a password is
/// given. Options given with [`SshClient::option`] come first, and ssh keeps
/// the first value of an option, so they override all of these.
pub struct SshClient<'a> {
    sshd: &'a Sshd,
    user: String,
    identity: Option<PathBuf>,
    certificate: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
    agent: Option<PathBuf>,
    password: Option<(String, PasswordMethod)>,
    options: Vec<String>,
    timeout: Duration,
}

impl<'a> SshClient<'a> {
    /// The remote user (default root).
    pub fn user(mut self, user: &str) -> Self {
        self.user = user.to_string();
        self
    }

    /// `IdentityFile=<key>` with `IdentitiesOnly=yes`: only this key is
    /// offered (from the file, or from the agent if one is given and holds
    /// it). Without it no key file at all is used (not even ~/.ssh/id_*).
    pub fn identity(mut self, key: &Path) -> Self {
        self.identity = Some(key.to_path_buf());
        self
    }

    /// `CertificateFile=<cert>`. (Without it ssh still picks up
    /// `<identity>-cert.pub` next to the identity file by itself.)
    pub fn certificate(mut self, cert: &Path) -> Self {
        self.certificate = Some(cert.to_path_buf());
        self
    }

    /// Checks the host key: `UserKnownHostsFile=<path>` and
    /// `StrictHostKeyChecking=yes`.
    pub fn known_hosts(mut self, path: &Path) -> Self {
        self.known_hosts = Some(path.to_path_buf());
        self
    }

    /// Accepts any host key: `UserKnownHostsFile=/dev/null` and
    /// `StrictHostKeyChecking=no`. This is the default; call it to say so.
    pub fn insecure_host_key(mut self) -> Self {
        self.known_hosts = None;
        self
    }

    /// Uses this agent: `SSH_AUTH_SOCK=<socket>`. Without it the client has
    /// no agent (`IdentityAgent=none`, SSH_AUTH_SOCK removed). With an agent
    /// and no [`SshClient::identity`], every key the agent holds is offered.
    pub fn agent(mut self, agent: &Agent) -> Self {
        self.agent = Some(agent.socket.clone());
        self
    }

    /// Answers the password prompt with `password` through `sshpass -e`
    /// (`PreferredAuthentications=password`, `BatchMode=no`,
    /// `NumberOfPasswordPrompts=1`). A wrong password makes the run fail
    /// (non-zero) with "Permission denied" on stderr.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some((password.to_string(), PasswordMethod::Password));
        self
    }

    /// Like [`SshClient::password`], answering keyboard-interactive prompts
    /// (`PreferredAuthentications=keyboard-interactive`).
    pub fn keyboard_interactive(mut self, password: &str) -> Self {
        self.password = Some((password.to_string(), PasswordMethod::KeyboardInteractive));
        self
    }

    /// An extra `-o` option, e.g. `"LogLevel=DEBUG1"`; see the type's docs
    /// for why it overrides the harness's own.
    pub fn option(mut self, option: &str) -> Self {
        self.options.push(option.to_string());
        self
    }

    /// Bound on the whole run (default 30 s); ssh is killed after it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command line this client runs (program first), for messages.
    pub fn command_line(&self, command: &str) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        if self.password.is_some() {
            argv.extend(["sshpass", "-e"].map(OsString::from));
        }
        argv.extend(["ssh", "-F", "/dev/null", "-p"].map(OsString::from));
        argv.push(self.sshd.port.to_string().into());
        let mut opts: Vec<OsString> = self.options.iter().map(OsString::from).collect();
        let mut o = |k: &str, v: &OsStr| {
            let mut s = OsString::from(format!("{k}="));
            s.push(v);
            opts.push(s);
        };
        o("ConnectTimeout", "5".as_ref());
        o("LogLevel", "ERROR".as_ref());
        o("GlobalKnownHostsFile", "/dev/null".as_ref());
        o("UpdateHostKeys", "no".as_ref());
        match &self.known_hosts {
            Some(kh) => {
                o("UserKnownHostsFile", kh.as_os_str());
                o("StrictHostKeyChecking", "yes".as_ref());
            }
            None => {
                o("UserKnownHostsFile", "/dev/null".as_ref());
                o("StrictHostKeyChecking", "no".as_ref());
            }
        }
        match &self.identity {
            Some(key) => {
                o("IdentityFile", key.as_os_str());
                o("IdentitiesOnly", "yes".as_ref());
            }
            // `IdentityFile none` keeps ssh from trying ~/.ssh/id_* (an
            // IdentityFile of /dev/null would print a loud permissions warning).
            None => o("IdentityFile", "none".as_ref()),
        }
        if let Some(cert) = &self.certificate {
            o("CertificateFile", cert.as_os_str());
        }
        if self.agent.is_none() {
            o("IdentityAgent", "none".as_ref());
        }
        match &self.password {
            Some((_, method)) => {
                o("BatchMode", "no".as_ref());
                o("NumberOfPasswordPrompts", "1".as_ref());
                let m = match method {
                    PasswordMethod::Password => "password",
                    PasswordMethod::KeyboardInteractive => "keyboard-interactive",
                };
                o("PreferredAuthentications", m.as_ref());
            }
            None => o("BatchMode", "yes".as_ref()),
        }
        for opt in opts {
            argv.push("-o".into());
            argv.push(opt);
        }
        argv.extend([
            "-l".into(),
            self.user.clone().into(),
            "--".into(),
            "127.0.0.1".into(),
        ]);
        if !command.is_empty() {
            argv.push(command.into());
        }
        argv
    }

    /// Runs `command` on the server; returns (exit status, stdout, stderr).
    /// The status is -1 when ssh was killed by the timeout (stderr says so).
    pub fn run(&self, command: &str) -> (i32, String, String) {
        let argv = self.command_line(command);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("SSH_AGENT_PID")
            .env_remove("SSH_ASKPASS")
            .env_remove("SSH_ASKPASS_REQUIRE")
            .env_remove("DISPLAY")
            .env_remove("SSHPASS");
        if let Some(sock) = &self.agent {
            cmd.env("SSH_AUTH_SOCK", sock);
        }
        if let Some((pw, _)) = &self.password {
            cmd.env("SSHPASS", pw);
        }
        run_bounded(&mut cmd, self.timeout)
    }

    /// Runs `command`, panics unless it exits 0 (with ssh's stderr and the
    /// sshd log), and returns its stdout.
    pub fn run_ok(&self, command: &str) -> String {
        let (status, out, err) = self.run(command);
        assert!(
            status == 0,
            "ssh {command:?} exited {status}\n--- stdout ---\n{out}\n--- stderr ---\n{err}\n\
             --- command ---\n{:?}\n--- sshd log ---\n{}",
            self.command_line(command),
            self.sshd.log()
        );
        out
    }
}

/// A private `ssh-agent -D -a SOCKET`, killed on drop.
pub struct Agent {
    /// Its socket: what SSH_AUTH_SOCK is set to.
    pub socket: PathBuf,
    child: Child,
    dir: PathBuf,
    watchdog: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent and waits (at most 5 s) for its socket.
    pub fn start() -> Agent {
        let tmp = tempfile::Builder::new()
            .prefix("agent-")
            .tempdir_in(base_dir())
            .expect("agent temp dir");
        let dir = tmp.path().to_path_buf();
        let socket = dir.join("agent.sock");
        let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
        let mut child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start ssh-agent");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !socket.exists() {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ssh-agent did not make its socket: {}",
                    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let watchdog = watchdog(child.id(), &format!("rm -rf '{}'", dir.display()));
        Agent {
            socket,
            child,
            dir,
            watchdog,
            _tmp: tmp,
        }
    }

    /// `ssh-add KEY`: adds the key and, if `KEY-cert.pub` exists next to it,
    /// its certificate. Panics on failure; returns ssh-add's stderr.
    pub fn add(&self, key: &Path) -> String {
        let (status, out, err) = self.ssh_add([key.as_os_str()]);
        assert!(
            status == 0,
            "ssh-add {} failed ({status}): {out}{err}",
            key.display()
        );
        err
    }

    /// Runs `ssh-add ARGS…` against this agent; (status, stdout, stderr).
    pub fn ssh_add<I, S>(&self, args: I) -> (i32, String, String)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ssh-add");
        cmd.args(args)
            .env("SSH_AUTH_SOCK", &self.socket)
            .env_remove("SSH_ASKPASS")
            .env_remove("DISPLAY");
        run_bounded(&mut cmd, Duration::from_secs(10))
    }

    /// `ssh-add -l`: one line per identity (certificates show as
    /// `… (ED25519-CERT)`), or "The agent has no identities.".
    pub fn list(&self) -> String {
        let (status, out, err) = self.ssh_add(["-l"]);
        assert!(
            status == 0 || status == 1,
            "ssh-add -l failed ({status}): {out}{err}"
        );
        out
    }

    /// The agent's own output (it logs little).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Generates a key pair with `ssh-keygen -t KIND [-b BITS] -N "" -C NAME`
/// as `dir/name` (replacing an old one); returns the private key path (the
/// public one is that path + ".pub", see [`pub_path`]). `kind`: ed25519,
/// ecdsa, rsa…
pub fn keygen(dir: &Path, name: &str, kind: &str, bits: Option<u32>) -> PathBuf {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(pub_path(&path));
    let mut args: Vec<OsString> = vec!["-q".into(), "-t".into(), kind.into()];
    if let Some(bits) = bits {
        args.extend(["-b".into(), bits.to_string().into()]);
    }
    args.extend([
        "-N".into(),
        "".into(),
        "-C".into(),
        name.into(),
        "-f".into(),
    ]);
    args.push(path.clone().into());
    ssh_keygen(args);
    path
}

/// `path` + ".pub".
pub fn pub_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_os_string();
    s.push(".pub");
    PathBuf::from(s)
}

/// Where `ssh-keygen -s` writes the certificate of `key_pub`: `key` without
/// ".pub" + "-cert.pub".
pub fn cert_path(key_pub: &Path) -> PathBuf {
    let s = key_pub.to_string_lossy();
    let stem = s.strip_suffix(".pub").unwrap_or(&s);
    PathBuf::from(format!("{stem}-cert.pub"))
}

/// `ssh-keygen -s CA -I ID -n P1,P2… -V VALIDITY KEY.pub`: a user
/// certificate; returns its path (`KEY-cert.pub`).
pub fn sign_user_key(
    ca: &Path,
    key_pub: &Path,
    id: &str,
    principals: &[&str],
    validity: &str,
) -> PathBuf {
    sign(ca, key_pub, id, principals, validity, false)
}

/// `ssh-keygen -s CA -h -I ID -n NAMES -V VALIDITY KEY.pub`: a host
/// certificate; returns its path.
pub fn sign_host_key(
    ca: &Path,
    key_pub: &Path,
    id: &str,
    names: &[&str],
    validity: &str,
) -> PathBuf {
    sign(ca, key_pub, id, names, validity, true)
}

fn sign(
    ca: &Path,
    key_pub: &Path,
    id: &str,
    principals: &[&str],
    validity: &str,
    host: bool,
) -> PathBuf {
    let mut args: Vec<OsString> = vec!["-q".into(), "-s".into(), ca.into()];
    if host {
        args.push("-h".into());
    }
    args.extend(["-I", id, "-n", &principals.join(","), "-V", validity].map(OsString::from));
    args.push(key_pub.into());
    ssh_keygen(args);
    let cert = cert_path(key_pub);
    assert!(cert.exists(), "ssh-keygen wrote no {}", cert.display());
    cert
}

/// Runs `ssh-keygen ARGS…` (stdin /dev/null); panics with its output on
/// failure, returns its stdout.
pub fn ssh_keygen<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(args);
    let (status, out, err) = run_bounded(&mut cmd, Duration::from_secs(60));
    assert!(status == 0, "{cmd:?} failed ({status}): {out}{err}");
    out
}

/// Runs a command with stdin from /dev/null and its output in temp files
/// (no pipe can fill up), killing it after `timeout`.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> (i32, String, String) {
    let mut out = tempfile::tempfile().expect("stdout temp file");
    let mut err = tempfile::tempfile().expect("stderr temp file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().expect("clone")))
        .stderr(Stdio::from(err.try_clone().expect("clone")))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |f: &mut std::fs::File| {
        let mut buf = Vec::new();
        f.rewind().expect("rewind");
        f.read_to_end(&mut buf).expect("read output");
        String::from_utf8_lossy(&buf).into_owned()
    };
    let (stdout, mut stderr) = (read(&mut out), read(&mut err));
    match status {
        Some(s) => (s.code().unwrap_or(-1), stdout, stderr),
        None => {
            stderr.push_str(&format!("\n[test harness: killed after {timeout:?}]\n"));
            (-1, stdout, stderr)
        }
    }
}

/// A shell that, once this test process is gone while `pid` still runs,
/// sends `pid` SIGTERM and runs `cleanup`. It ends by itself when `pid` ends.
fn watchdog(pid: u32, cleanup: &str) -> Option<Child> {
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do kill -0 {pid} 2>/dev/null || exit 0; sleep 1; done; \
         kill -TERM {pid} 2>/dev/null; {cleanup}",
        me = std::process::id(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// Whether the SSH server at `addr` sends its `SSH-2.0-…` banner.
fn banner(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while got.len() < 4 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    // Answer with our own banner so sshd logs a clean disconnect.
    let _ = s.write_all(b"SSH-2.0-gatepass-test-probe\r\n");
    got.starts_with(b"SSH-")
}

/// Whether this sshd knows `PerSourcePenalties` (OpenSSH 9.8+); asked once.
fn penalties_supported(dir: &Path, host_key: &Path) -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let probe = dir.join("probe_config");
        let text = format!("HostKey {}\nPerSourcePenalties no\n", host_key.display());
        write_atomic(&probe, text.as_bytes(), 0o644);
        let ok = Command::new(SSHD)
            .arg("-t")
            .arg("-f")
            .arg(&probe)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let _ = std::fs::remove_file(&probe);
        ok
    })
}

/// Root folder of the harness's folders: `$GATEPASS_TEST_SSHD_DIR` or
/// `/run/gatepass-tests`, root-owned and 0755 all the way up (StrictModes).
fn base_dir() -> PathBuf {
    let base = std::env::var_os("GATEPASS_TEST_SSHD_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/gatepass-tests"));
    if !base.exists() {
        std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("create {}: {e}", base.display()));
        set_mode(&base, 0o755);
    }
    base
}

/// sshd refuses to start without its privilege separation folder.
fn ensure_privsep_dir() {
    let dir = Path::new("/run/sshd");
    if !dir.exists() {
        match std::fs::create_dir(dir) {
            Ok(()) => set_mode(dir, 0o755),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("create /run/sshd: {e}"),
        }
    }
}

fn assert_root() {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    assert!(
        uid == 0,
        "the sshd tests must run as root (they start sshd; tests/run does)"
    );
}

/// What sshd logs when another process took its port since it was chosen.
const IN_USE: &str = "Address already in use";

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

/// Temp file in the same folder, mode set, then renamed over `path`.
fn write_atomic(path: &Path, content: &[u8], mode: u32) {
    let name = path.file_name().expect("file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f =
            std::fs::File::create(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
        f.write_all(content).expect("write file");
        f.sync_all().expect("sync file");
    }
    set_mode(&tmp, mode);
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid} failed");
}
