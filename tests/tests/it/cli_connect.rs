//! `gatepass ssh connect` (and `ssh config`/`proxy`) as a user runs them:
//! a real dev server, a real sshd from the harness and the system `ssh`, in
//! each mode: ca (with and without an ssh-agent), otp (through the PAM
//! helper `gatepass-helper`) and dynamic (with a stand-in for hostd that
//! installs the key from the host's desired state). Also: host certificates
//! checked strictly, every refusal with ssh's exit status and a clear
//! message, no secret on any process's command line or environment, and no
//! temporary file left, not even after ssh is killed.
//!
//! Every test has its own HOME, working folder and TMPDIR (whose emptiness
//! shows that nothing was left behind), and runs ssh with `-F /dev/null`
//! (through `--ssh-config`) so root's own ~/.ssh/config does not matter.
//! Run as root (sshd needs it).

use std::io::{Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatepass_tests::sshd::{keygen, pub_path, Agent, PamSetup, Sshd, SshdOptions};
use gatepass_tests::{bin, DevServer};
use serde_json::{json, Map, Value};

/// Host keys are not what these tests check: accept the harness's sshd.
/// (gatepass's own options come first on ssh's command line and win, so
/// these do not weaken --host-ca-mount.)
const INSECURE: [&str; 4] = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
];

/// Bound on every command a test runs.
const LIMIT: Duration = Duration::from_secs(60);

struct Session {
    server: DevServer,
    home: tempfile::TempDir,
    cwd: tempfile::TempDir,
    tmp: tempfile::TempDir,
    /// Keys made by the test (never in TMPDIR).
    keys: tempfile::TempDir,
    ca_pub: String,
}

impl Session {
    /// A dev server whose `ssh` mount has a CA, the user role `ops` (root by
    /// default, or nobody; 10m) and the host role `hosts` (127.0.0.1).
    fn start() -> Session {
        let mut s = Session {
            server: DevServer::start(),
            home: tempfile::tempdir().expect("home"),
            cwd: tempfile::tempdir().expect("cwd"),
            tmp: tempfile::tempdir().expect("tmp"),
            keys: tempfile::tempdir().expect("keys"),
            ca_pub: String::new(),
        };
        s.ca_pub = ok(s.gatepass(&[
            "write",
            "--field",
            "public_key",
            "ssh/config/ca",
            "key_type=ssh-ed25519",
        ]));
        ok(s.gatepass(&[
            "write",
            "ssh/roles/ops",
            "key_type=ca",
            "allow_user_certificates=true",
            "allowed_users=root,nobody",
            "default_user=root",
            "ttl=10m",
        ]));
        ok(s.gatepass(&[
            "write",
            "ssh/roles/hosts",
            "key_type=ca",
            "allow_host_certificates=true",
            "allowed_domains=127.0.0.1",
            "allow_bare_domains=true",
        ]));
        s
    }

    fn gatepass(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("gatepass"));
        for v in gatepass_tests::CLI_AMBIENT_ENV {
            c.env_remove(v);
        }
        c.env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join(".config"))
            .env("TMPDIR", self.tmp.path())
            .envs(self.server.cli_env())
            .current_dir(self.cwd.path())
            .args(args);
        c
    }

    /// `gatepass ssh connect --ssh-config /dev/null ARGS…`.
    fn connect(&self, args: &[&str]) -> Command {
        let mut all = vec!["ssh", "connect", "--ssh-config", "/dev/null"];
        all.extend_from_slice(args);
        self.gatepass(&all)
    }

    /// One API call with the root token.
    fn api(&self, method: &str, path: &str, body: Value) -> Value {
        api(
            &self.server.settings(Some(&self.server.token)),
            method,
            path,
            body,
        )
    }

    /// An sshd trusting the session's CA for user certificates.
    fn sshd(&self, extra: &[String]) -> Sshd {
        let mut sshd = Sshd::new(SshdOptions::default());
        let ca = sshd.write_file("user_ca.pub", &self.ca_pub);
        sshd.options
            .extra_config
            .push(format!("TrustedUserCAKeys {}", ca.display()));
        sshd.options.extra_config.extend(extra.iter().cloned());
        sshd.launch();
        sshd
    }

    /// TMPDIR's entries: none once a command is over.
    fn leftovers(&self) -> Vec<String> {
        names(self.tmp.path())
    }
}

fn api(settings: &gatepass_api::Settings, method: &str, path: &str, body: Value) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = gatepass_api::Client::new(settings).unwrap();
    let body: Option<Map<String, Value>> = body.as_object().cloned();
    rt.block_on(client.request(method, path, body.as_ref()))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
        .unwrap_or(Value::Null)
}

/// Runs a command (stdin /dev/null) to its end, at most [`LIMIT`].
fn run(cmd: &mut Command) -> (i32, String, String) {
    let mut child = spawn(cmd);
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.child.try_wait().unwrap() {
            let (out, err) = child.output();
            return (status.code().unwrap_or(-1), out, err);
        }
        if Instant::now() >= deadline {
            let _ = child.child.kill();
            let _ = child.child.wait();
            let (out, err) = child.output();
            panic!("{cmd:?} did not end within {LIMIT:?}\nstdout: {out}\nstderr: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ok(mut cmd: impl std::borrow::BorrowMut<Command>) -> String {
    let cmd = cmd.borrow_mut();
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "{cmd:?} failed\nstdout: {out}\nstderr: {err}");
    out
}

/// A running command whose output goes to temporary files.
struct Running {
    child: Child,
    out: std::fs::File,
    err: std::fs::File,
}

impl Running {
    fn output(&mut self) -> (String, String) {
        let read = |f: &mut std::fs::File| {
            let mut s = String::new();
            f.rewind().unwrap();
            f.read_to_string(&mut s).unwrap();
            s
        };
        (read(&mut self.out), read(&mut self.err))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(cmd: &mut Command) -> Running {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(err.try_clone().unwrap()))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Running { child, out, err }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// Waits (at most 15 s) until `f` gives something.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid of the `ssh` that process `parent` started.
fn ssh_child_of(parent: u32) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let comm = comm.split_once(" (").map(|x| x.1).unwrap_or("");
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if comm == "ssh" && ppid == Some(parent) {
            return Some(pid);
        }
    }
    None
}

/// Every process's command line and environment that contains one of the
/// secrets: (pid, which file, the secret's first characters).
fn processes_showing(secrets: &[String]) -> Vec<(String, &'static str, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        for file in ["cmdline", "environ"] {
            let Ok(bytes) = std::fs::read(e.path().join(file)) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            for s in secrets {
                if text.contains(s.as_str()) {
                    found.push((name.clone(), file, s.chars().take(12).collect()));
                }
            }
        }
    }
    found
}

/// The long base64 lines of a private key, and the blob of a public key
/// or certificate line: text that must not show up anywhere.
fn secret_fragments(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.len() >= 40 && !l.starts_with("-----"))
        .map(|l| match l.split_whitespace().nth(1) {
            Some(blob) if l.contains("-cert-v01@openssh.com") => blob.to_string(),
            _ => l.to_string(),
        })
        .collect();
    v.retain(|s| s.len() >= 40);
    v
}

fn sshd_log_count(sshd: &Sshd, what: &str) -> usize {
    sshd.log().matches(what).count()
}

// ------------------------------------------------------------------ ca

#[test]
fn ca_mode_logs_in_without_and_with_an_agent() {
    let s = Session::start();
    let sshd = s.sshd(&[]);
    let port = sshd.port.to_string();
    let connect = |extra: &[&str], command: &[&str]| {
        let mut a = vec!["--role", "ops", "--port", &port];
        a.extend_from_slice(&INSECURE);
        a.extend_from_slice(extra);
        a.push("--");
        a.extend_from_slice(command);
        s.connect(&a)
    };

    // Without an agent: a key file in a private folder, gone afterwards.
    // $ gatepass ssh connect --role ops root@127.0.0.1 -- echo hello
    let out = ok(connect(&["root@127.0.0.1"], &["echo", "hello"]));
    assert_eq!(out, "hello\n");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
    assert!(names(s.cwd.path()).is_empty());

    // ssh's exit status is passed through; the role's default user is the
    // login when no user@ is given.
    let (code, out, err) = run(&mut connect(&["127.0.0.1"], &["id -un; exit 7"]));
    assert_eq!((code, out.as_str()), (7, "root\n"), "{err}");
    assert!(!err.contains("Error"), "{err}");

    // With an agent: the key and certificate go there, for the
    // certificate's lifetime, and nothing stays on disk.
    let agent = Agent::start();
    let out =
        ok(connect(&["root@127.0.0.1"], &["echo", "hello"]).env("SSH_AUTH_SOCK", &agent.socket));
    assert_eq!(out, "hello\n");
    let listed = agent.list();
    assert!(
        listed.contains("(ED25519-CERT)") && listed.contains("gatepass:ssh/ops:"),
        "{listed}"
    );
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());

    // Several keys in the agent do not use up sshd's MaxAuthTries: only
    // the new certificate is offered.
    for i in 0..6 {
        let k = keygen(s.keys.path(), &format!("other{i}"), "ed25519", None);
        agent.add(&k);
    }
    let out = ok(
        connect(&["--mode", "ca", "root@127.0.0.1"], &["echo", "again"])
            .env("SSH_AUTH_SOCK", &agent.socket),
    );
    assert_eq!(out, "again\n");

    // An SSH_AUTH_SOCK with no agent behind it: the key-file way.
    let out = ok(connect(&["root@127.0.0.1"], &["echo", "hello"])
        .env("SSH_AUTH_SOCK", s.keys.path().join("no-agent.sock")));
    assert_eq!(out, "hello\n");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn host_certificates_from_the_mount_are_checked_strictly() {
    let s = Session::start();
    let mut sshd = Sshd::new(SshdOptions::default());
    let ca = sshd.write_file("user_ca.pub", &s.ca_pub);
    ok(s.gatepass(&[
        "ssh",
        "sign",
        "--role",
        "hosts",
        "--cert-type",
        "host",
        "--principals",
        "127.0.0.1",
        "--public-key",
        sshd.host_key_pub.to_str().unwrap(),
    ]));
    let host_cert = sshd.dir.join("host_key-cert.pub");
    sshd.options.extra_config.extend([
        format!("TrustedUserCAKeys {}", ca.display()),
        format!("HostCertificate {}", host_cert.display()),
    ]);
    sshd.launch();
    let port = sshd.port.to_string();

    // No StrictHostKeyChecking=no here: the host proves itself with its
    // certificate. $ gatepass ssh connect --role ops --host-ca-mount ssh root@127.0.0.1
    let out = ok(s.connect(&[
        "--role",
        "ops",
        "--host-ca-mount",
        "ssh",
        "--port",
        &port,
        "root@127.0.0.1",
        "--",
        "echo",
        "hello",
    ]));
    assert_eq!(out, "hello\n");
    // The same from a file holding the CA key; and the mount's key is read
    // without a token.
    let ca_file = s.keys.path().join("host_ca.pub");
    std::fs::write(&ca_file, &s.ca_pub).unwrap();
    let out = ok(s.connect(&[
        "--role",
        "ops",
        "--host-ca",
        ca_file.to_str().unwrap(),
        "--port",
        &port,
        "root@127.0.0.1",
        "--",
        "echo",
        "file",
    ]));
    assert_eq!(out, "file\n");

    // A host CA that did not sign this host: refused before logging in,
    // even with StrictHostKeyChecking=no given by the user.
    let foreign = pub_path(&keygen(s.keys.path(), "foreign_ca", "ed25519", None));
    let mut args = vec![
        "--role",
        "ops",
        "--host-ca",
        foreign.to_str().unwrap(),
        "--port",
        &port,
    ];
    args.extend_from_slice(&INSECURE);
    args.extend(["root@127.0.0.1", "--", "echo", "hello"]);
    let (code, out, err) = run(&mut s.connect(&args));
    assert_eq!(code, 255, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("Host key verification failed"), "{err}");
    assert!(err.contains("host certificate signed by it"), "{err}");

    // Without a host CA, ssh's own checking applies and is not turned off:
    // an unknown host key is refused in batch mode.
    let known = s.keys.path().join("known_hosts");
    std::fs::write(&known, "").unwrap();
    let kh = format!("UserKnownHostsFile={}", known.display());
    let (code, _, err) = run(&mut s.connect(&[
        "--role",
        "ops",
        "--port",
        &port,
        "-o",
        &kh,
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "root@127.0.0.1",
        "--",
        "true",
    ]));
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("Host key verification failed"), "{err}");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn refusals_end_non_zero_with_a_clear_message_and_leave_nothing() {
    let s = Session::start();
    // An sshd that trusts another CA: the login is refused.
    let other_ca = keygen(s.keys.path(), "other_ca", "ed25519", None);
    let mut sshd = Sshd::new(SshdOptions::trusting_user_ca(&pub_path(&other_ca)));
    sshd.launch();
    let port = sshd.port.to_string();
    let args = |role: &str, extra: &[&str], port: &str| {
        let mut a = vec![
            "--role".to_string(),
            role.to_string(),
            "--port".into(),
            port.to_string(),
        ];
        a.extend(INSECURE.iter().map(|x| x.to_string()));
        a.extend(extra.iter().map(|x| x.to_string()));
        a.extend(["root@127.0.0.1", "--", "echo", "hello"].map(String::from));
        a
    };
    let connect = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        s.connect(&a)
    };

    // An unknown role: the server's answer, exit 2, ssh never runs.
    let (code, out, err) = run(&mut connect(args("nope", &[], &port)));
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("unknown role: nope"), "{err}");
    let (code, _, err) = run(&mut connect(args("nope", &["--mode", "ca"], &port)));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown role: nope"), "{err}");

    // A token without permission on the role.
    let limited = s.api(
        "POST",
        "auth/token/create",
        json!({"policies": ["default"]}),
    );
    let token = limited["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _, err) = run(connect(args("ops", &[], &port)).env("GATEPASS_TOKEN", &token));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("reading the role ssh/roles/ops") && err.contains("permission denied"),
        "{err}"
    );
    let (code, _, err) =
        run(connect(args("ops", &["--mode", "ca"], &port)).env("GATEPASS_TOKEN", &token));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("signing") && err.contains("permission denied"),
        "{err}"
    );

    // Nothing listens: ssh's 255 and its message, then ours.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let (code, out, err) = run(&mut connect(args("ops", &[], &closed)));
    assert_eq!(code, 255, "{out}{err}");
    assert!(err.contains("Connection refused"), "{err}");
    assert!(err.contains("ssh could not connect or log in"), "{err}");

    // The host does not accept the certificate: refused login.
    let (code, out, err) = run(&mut connect(args("ops", &[], &port)));
    assert_eq!(code, 255, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(err.contains("must trust the CA of ssh"), "{err}");

    // The host trusts the CA but lets only other principals in as root: the
    // certificate (for root) is refused.
    let mut strict = Sshd::new(SshdOptions::default());
    let ca = strict.write_file("user_ca.pub", &s.ca_pub);
    strict.write_file("principals/root", "someone-else\n");
    strict.options.extra_config.extend([
        format!("TrustedUserCAKeys {}", ca.display()),
        format!(
            "AuthorizedPrincipalsFile {}/principals/%u",
            strict.dir.display()
        ),
    ]);
    strict.launch();
    let (code, out, err) = run(&mut connect(args("ops", &[], &strict.port.to_string())));
    assert_eq!(code, 255, "{out}{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(
        strict
            .log()
            .contains("Certificate does not contain an authorized principal"),
        "{}",
        strict.log()
    );

    // Bad arguments never reach the server.
    let (code, _, err) = run(&mut connect(args("ops", &["-o", "ProxyCommand"], &port)));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("KEY=VALUE"), "{err}");

    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn no_secret_on_any_command_line_and_nothing_survives_a_killed_ssh() {
    let s = Session::start();
    let sshd = s.sshd(&[]);
    let port = sshd.port.to_string();

    let before = sshd_log_count(&sshd, "Accepted");
    let mut a = vec!["--role", "ops", "--port", &port];
    a.extend_from_slice(&INSECURE);
    a.extend(["root@127.0.0.1", "--", "sleep", "20"]);
    let mut running = spawn(&mut s.connect(&a));
    let gatepass_pid = running.child.id();

    // While ssh runs: the key and certificate in a private folder …
    let dir = wait_for("the private folder", || {
        names(s.tmp.path())
            .into_iter()
            .find(|n| n.starts_with("gatepass-connect-"))
            .map(|n| s.tmp.path().join(n))
    });
    let key = dir.join("id");
    let cert = dir.join("id-cert.pub");
    let key_text = wait_for("the key file", || {
        std::fs::read_to_string(&key)
            .ok()
            .filter(|t| t.contains("END OPENSSH PRIVATE KEY"))
    });
    let cert_text = wait_for("the certificate", || {
        std::fs::read_to_string(&cert)
            .ok()
            .filter(|t| t.ends_with('\n'))
    });
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&key), 0o600);
    let ssh_pid = wait_for("ssh", || ssh_child_of(gatepass_pid));
    wait_for("the login", || {
        (sshd_log_count(&sshd, "Accepted") > before).then_some(())
    });

    // … and on no command line or environment of any process.
    let mut secrets = secret_fragments(&key_text);
    secrets.extend(secret_fragments(&cert_text));
    assert!(secrets.len() >= 3, "{secrets:?}");
    let shown = processes_showing(&secrets);
    assert!(shown.is_empty(), "secrets visible in /proc: {shown:?}");

    // ssh is killed: gatepass reports it and still removes everything.
    nix_kill(ssh_pid, "KILL");
    let status = wait_for("gatepass to end", || running.child.try_wait().unwrap());
    let (out, err) = running.output();
    assert_eq!(status.code(), Some(128 + 9), "{out}{err}");
    assert!(err.contains("ssh was killed by SIGKILL"), "{err}");
    assert!(s.leftovers().is_empty(), "left behind: {:?}", s.leftovers());

    // SIGTERM to gatepass itself is passed on to ssh, and the same holds.
    let mut running = spawn(&mut s.connect(&a));
    let gatepass_pid = running.child.id();
    wait_for("ssh", || ssh_child_of(gatepass_pid));
    wait_for("the key file", || {
        names(s.tmp.path())
            .first()
            .map(|d| s.tmp.path().join(d).join("id"))
            .filter(|k| k.exists())
    });
    nix_kill(gatepass_pid, "TERM");
    let status = wait_for("gatepass to end", || running.child.try_wait().unwrap());
    let (out, err) = running.output();
    assert_ne!(status.code(), Some(0), "{out}{err}");
    assert!(
        status.code().is_some(),
        "gatepass itself was not killed: {status:?}"
    );
    assert!(s.leftovers().is_empty(), "left behind: {:?}", s.leftovers());
}

fn nix_kill(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

// ------------------------------------------------------------- dynamic

/// What gatepass-hostd does for dynamic keys, in a thread: reads the host's
/// desired state with its host token, writes the keys to sshd's
/// AuthorizedKeysFile and acknowledges them.
struct StandInHostd {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandInHostd {
    fn start(settings: gatepass_api::Settings, keys_file: PathBuf) -> StandInHostd {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut index = 0u64;
            while !flag.load(Ordering::SeqCst) {
                let st = api(
                    &settings,
                    "GET",
                    &format!("hosts/self/state?index={index}&wait=1s"),
                    Value::Null,
                );
                let data = &st["data"];
                index = data["index"].as_u64().unwrap_or(0);
                let mut text = String::new();
                let mut leases = Vec::new();
                for k in data["dynamic_keys"].as_array().cloned().unwrap_or_default() {
                    if k["user"] != "root" {
                        continue;
                    }
                    let opts = k["options"].as_str().unwrap_or("");
                    let sep = if opts.is_empty() { "" } else { " " };
                    text.push_str(&format!(
                        "{opts}{sep}{} {}\n",
                        k["public_key"].as_str().unwrap(),
                        k["lease_id"].as_str().unwrap()
                    ));
                    leases.push(k["lease_id"].clone());
                }
                let tmp = keys_file.with_extension("tmp");
                std::fs::write(&tmp, &text).unwrap();
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
                std::fs::rename(&tmp, &keys_file).unwrap();
                api(
                    &settings,
                    "POST",
                    "hosts/self/ack",
                    json!({"index": index, "installed": leases}),
                );
            }
        });
        StandInHostd {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StandInHostd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn dynamic_mode_logs_in_with_the_key_the_host_installed() {
    let s = Session::start();
    let mut sshd = Sshd::new(SshdOptions::default());
    let keys_file = sshd.write_file("authorized_keys/root", "");
    sshd.options.extra_config.push(format!(
        "AuthorizedKeysFile {}/authorized_keys/%u",
        sshd.dir.display()
    ));
    sshd.launch();
    // The role names the sshd's port: connect takes it from the answer.
    ok(s.gatepass(&[
        "write",
        "ssh/roles/dyn",
        "key_type=dynamic",
        "default_user=root",
        "cidr_list=127.0.0.0/8",
        &format!("port={}", sshd.port),
        "ttl=10m",
    ]));
    // The host enrolls with its address, as hostd would.
    let join = s.api("POST", "hosts/join-tokens", json!({}));
    let enrolled = s.api(
        "POST",
        "hosts/enroll",
        json!({
            "join_token": join["data"]["join_token"],
            "hostname": "test-host",
            "addresses": ["127.0.0.1"],
            "host_keys": [sshd.host_public_key().trim()],
        }),
    );
    let host_token = enrolled["data"]["host_token"].as_str().unwrap();
    let hostd = StandInHostd::start(s.server.settings(Some(host_token)), keys_file.clone());

    // $ gatepass ssh connect --role dyn root@127.0.0.1 -- echo hello
    let mut a = vec!["--role", "dyn"];
    a.extend_from_slice(&INSECURE);
    a.extend(["root@127.0.0.1", "--", "echo", "hello"]);
    let (code, out, err) = run(&mut s.connect(&a));
    assert_eq!(code, 0, "{out}{err}\n--- sshd log ---\n{}", sshd.log());
    assert_eq!(out, "hello\n");
    assert!(
        !err.contains("WARNING"),
        "the host reported the key installed: {err}"
    );
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
    // The lease is given back once ssh is done, so the host drops the key.
    wait_for("the key to leave the host", || {
        std::fs::read_to_string(&keys_file)
            .ok()
            .filter(|t| t.is_empty())
    });

    // While it runs: the key file is private and nowhere in /proc.
    let mut a = vec!["--role", "dyn"];
    a.extend_from_slice(&INSECURE);
    a.extend(["root@127.0.0.1", "--", "sleep", "3"]);
    let mut running = spawn(&mut s.connect(&a));
    let key = wait_for("the key file", || {
        names(s.tmp.path())
            .first()
            .map(|d| s.tmp.path().join(d).join("id"))
            .and_then(|k| std::fs::read_to_string(k).ok())
            .filter(|t| t.contains("END OPENSSH PRIVATE KEY"))
    });
    wait_for("ssh", || ssh_child_of(running.child.id()));
    let shown = processes_showing(&secret_fragments(&key));
    assert!(shown.is_empty(), "secrets visible in /proc: {shown:?}");
    let status = wait_for("the session to end", || running.child.try_wait().unwrap());
    let (out, err) = running.output();
    assert!(status.success(), "{out}{err}");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());

    // No hostd: the server waits --wait, says it was not installed, and
    // the login is refused with a hint.
    drop(hostd);
    let mut a = vec!["--role", "dyn", "--wait", "1s"];
    a.extend_from_slice(&INSECURE);
    a.extend(["root@127.0.0.1", "--", "echo", "hello"]);
    let (code, out, err) = run(&mut s.connect(&a));
    assert_eq!(code, 255, "{out}{err}");
    assert!(err.contains("has not reported the key installed"), "{err}");
    assert!(err.contains("is gatepass-hostd running there"), "{err}");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

// ----------------------------------------------------------------- otp

/// vault-ssh-helper's documented configuration, for gatepass-helper.
fn helper_config(s: &Session, roles: &str) -> String {
    format!(
        "vault_addr = \"{}\"\ntls_skip_verify = false\nca_cert = \"{}\"\n\
         ssh_mount_point = \"ssh\"\nallowed_roles = \"{roles}\"\n",
        s.server.addr,
        s.server.cacert.display()
    )
}

/// An sshd checking OTPs with gatepass-helper, and the role `otp` for it.
/// A recorder in front of the helper keeps what ssh typed (the file
/// returned), so the test knows the OTP to look for.
fn otp_host(s: &Session, pam_service: &str) -> (Sshd, PathBuf) {
    let mut sshd = Sshd::new(SshdOptions::default());
    let config = sshd.write_file("helper.hcl", &helper_config(s, "*"));
    let seen = sshd.dir.join("seen");
    let recorder = recorder(&sshd, &seen);
    sshd.options.pam = Some(PamSetup {
        service: pam_service.into(),
        pam_config: format!(
            "auth optional pam_exec.so quiet expose_authtok {recorder}\n\
             auth requisite pam_exec.so quiet expose_authtok {helper} -config={config}\n\
             auth optional pam_unix.so not_set_pass use_first_pass nodelay\n\
             account required pam_unix.so\n\
             session required pam_unix.so\n",
            recorder = recorder.display(),
            helper = bin("gatepass-helper").display(),
            config = config.display(),
        ),
    });
    sshd.launch();
    ok(s.gatepass(&[
        "write",
        "ssh/roles/otp",
        "key_type=otp",
        "default_user=root",
        "cidr_list=127.0.0.0/8",
        &format!("port={}", sshd.port),
        "ttl=5m",
    ]));
    (sshd, seen)
}

/// A script for pam_exec's `expose_authtok` that adds what it is given to
/// `seen`.
fn recorder(sshd: &Sshd, seen: &Path) -> PathBuf {
    sshd.write_file_mode(
        "record",
        &format!("#!/bin/sh\ntr -d '\\000' >> {}\n", seen.display()),
        0o755,
    )
}

#[test]
fn otp_mode_types_the_password_through_askpass_once() {
    let s = Session::start();
    let (sshd, seen) = otp_host(&s, "gatepass-test-cli-connect-otp");

    // $ gatepass ssh connect --role otp root@127.0.0.1 -- echo hello
    let mut a = vec!["--role", "otp"];
    a.extend_from_slice(&INSECURE);
    a.extend(["root@127.0.0.1", "--", "echo", "hello"]);
    let (code, out, err) = run(&mut s.connect(&a));
    assert_eq!(code, 0, "{out}{err}\n--- sshd log ---\n{}", sshd.log());
    assert_eq!(out, "hello\n");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
    let first = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(first.len(), 36, "one OTP typed once: {first:?}");
    // It was used up by the login.
    let settings = s.server.settings(None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let again = rt.block_on(gatepass_api::Client::new(&settings).unwrap().request(
        "POST",
        "ssh/verify",
        json!({"otp": first}).as_object(),
    ));
    assert!(again.is_err(), "the OTP verified twice: {again:?}");

    // While a session runs, the OTP is on no command line or environment.
    std::fs::remove_file(&seen).unwrap();
    let mut a = vec!["--role", "otp"];
    a.extend_from_slice(&INSECURE);
    a.extend(["root@127.0.0.1", "--", "sleep", "3"]);
    let mut running = spawn(&mut s.connect(&a));
    let otp = wait_for("the OTP to be typed", || {
        std::fs::read_to_string(&seen)
            .ok()
            .filter(|t| t.len() == 36)
    });
    wait_for("ssh", || ssh_child_of(running.child.id()));
    let shown = processes_showing(std::slice::from_ref(&otp));
    assert!(shown.is_empty(), "the OTP is visible in /proc: {shown:?}");
    let status = wait_for("the session to end", || running.child.try_wait().unwrap());
    let (out, err) = running.output();
    assert!(status.success(), "{out}{err}");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());

    // The host refuses the OTP (its helper allows another role only): ssh
    // gets the OTP once, asks again for the next method, gets no answer,
    // and ends with 255.
    std::fs::remove_file(&seen).unwrap();
    sshd.write_file("helper.hcl", &helper_config(&s, "other"));
    let mut a = vec!["--role", "otp"];
    a.extend_from_slice(&INSECURE);
    a.extend(["root@127.0.0.1", "--", "echo", "hello"]);
    let (code, out, err) = run(&mut s.connect(&a));
    assert_eq!(code, 255, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(
        err.contains("the one-time password was typed once"),
        "{err}"
    );
    assert!(
        err.contains("the one-time password was already given to ssh"),
        "the askpass answers once: {err}"
    );
    let typed = std::fs::read_to_string(&seen).unwrap_or_default();
    assert_eq!(
        typed.len(),
        36,
        "the OTP was typed once, nothing else: {typed:?}"
    );
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

/// With a ProxyJump whose host asks for a password too, the OTP goes only
/// to the prompt of the login it is for: ssh runs the same askpass for the
/// jump host's prompt, which goes to the terminal (here there is none, so
/// it gets no answer) instead of getting the OTP. A HostKeyAlias, which
/// ssh's prompts name instead of the host, still gets it.
#[test]
fn otp_mode_types_the_password_only_into_the_logins_own_prompt() {
    let s = Session::start();
    let (_sshd, seen) = otp_host(&s, "gatepass-test-cli-connect-otp-jump");
    let mut jump = Sshd::new(SshdOptions::default());
    let jump_seen = jump.dir.join("seen");
    let recorder = recorder(&jump, &jump_seen);
    jump.options.pam = Some(PamSetup {
        service: "gatepass-test-cli-connect-jump-host".into(),
        pam_config: format!(
            "auth optional pam_exec.so quiet expose_authtok {}\n\
             auth requisite pam_deny.so\n\
             account required pam_permit.so\n",
            recorder.display()
        ),
    });
    jump.launch();
    // The jump host's ssh reads this file too (ssh passes -F on), not our
    // -o options.
    let config = s.keys.path().join("ssh_config");
    std::fs::write(
        &config,
        "StrictHostKeyChecking no\nUserKnownHostsFile /dev/null\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // Without a terminal, as the askpass would otherwise ask at this one.
    let detached = |args: &[&str]| {
        let cmd = s.gatepass(args);
        let mut c = Command::new("setsid");
        c.arg("--wait").arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.current_dir(s.cwd.path());
        c
    };

    // $ gatepass ssh connect --role otp -o ProxyJump=nobody@127.0.0.1:PORT root@127.0.0.1 -- echo hello
    let jump_to = format!("ProxyJump=nobody@127.0.0.1:{}", jump.port);
    let connect_with = |option: &str| {
        run(&mut detached(&[
            "ssh",
            "connect",
            "--ssh-config",
            config,
            "--role",
            "otp",
            "-o",
            option,
            "root@127.0.0.1",
            "--",
            "echo",
            "hello",
        ]))
    };
    let (code, out, err) = connect_with(&jump_to);
    assert_eq!(code, 255, "{out}{err}");
    assert!(
        err.contains(
            "not answering ssh's question without a terminal: (nobody@127.0.0.1) Password:"
        ),
        "{err}"
    );
    let typed = std::fs::read_to_string(&jump_seen).unwrap_or_default();
    assert!(
        typed.trim().len() != 36,
        "the jump host was given the OTP: {typed:?}"
    );
    assert!(
        !seen.exists(),
        "the target was never reached: {:?}",
        std::fs::read_to_string(&seen)
    );
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());

    // $ gatepass ssh connect --role otp -o HostKeyAlias=web-1 root@127.0.0.1 -- echo hello
    let (code, out, err) = connect_with("HostKeyAlias=web-1");
    assert_eq!((code, out.as_str()), (0, "hello\n"), "{err}");
    assert_eq!(std::fs::read_to_string(&seen).unwrap().len(), 36);
}

// ------------------------------------------------- ssh config and proxy

#[test]
fn ssh_config_block_lets_plain_ssh_log_in_through_the_agent() {
    let s = Session::start();
    let mut sshd = Sshd::new(SshdOptions::default());
    let ca = sshd.write_file("user_ca.pub", &s.ca_pub);
    ok(s.gatepass(&[
        "ssh",
        "sign",
        "--role",
        "hosts",
        "--cert-type",
        "host",
        "--principals",
        "127.0.0.1",
        "--public-key",
        sshd.host_key_pub.to_str().unwrap(),
    ]));
    sshd.options.extra_config.extend([
        format!("TrustedUserCAKeys {}", ca.display()),
        format!(
            "HostCertificate {}",
            sshd.dir.join("host_key-cert.pub").display()
        ),
    ]);
    sshd.launch();

    // Printed: a Host block with the ProxyCommand and KnownHostsCommand.
    let printed = ok(s.gatepass(&[
        "ssh",
        "config",
        "--role",
        "ops",
        "--host-ca-mount",
        "ssh",
        "127.0.0.1",
    ]));
    assert!(printed.contains("Host 127.0.0.1\n"), "{printed}");
    assert!(
        printed.contains("ProxyCommand ") && printed.contains(" ssh proxy --mount=ssh --role=ops"),
        "{printed}"
    );
    assert!(printed.contains("KnownHostsCommand "), "{printed}");
    // KnownHostsCommand's output.
    let kh = ok(s
        .gatepass(&["ssh", "known-hosts"])
        .env_remove("GATEPASS_TOKEN"));
    assert_eq!(kh, format!("@cert-authority * {}\n", s.ca_pub.trim_end()));

    // Written twice: one block.
    let file = s.home.path().join(".ssh").join("config");
    let args = [
        "ssh",
        "config",
        "--role",
        "ops",
        "--host-ca-mount",
        "ssh",
        "127.0.0.1",
        "--write",
        "--file",
        file.to_str().unwrap(),
    ];
    let out = ok(s.gatepass(&args));
    assert!(out.starts_with("Added to "), "{out}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text, printed);
    assert_eq!(mode(&file), 0o600);
    let out = ok(s.gatepass(&args));
    assert!(out.contains("already has this block"), "{out}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    // Plain ssh with that config, an agent and strict host key checking.
    let agent = Agent::start();
    let plain_ssh = |agent: Option<&Agent>| {
        let mut c = Command::new("ssh");
        for v in gatepass_tests::CLI_AMBIENT_ENV {
            c.env_remove(v);
        }
        c.env("HOME", s.home.path())
            .env("TMPDIR", s.tmp.path())
            .envs(s.server.cli_env())
            .args(["-F", file.to_str().unwrap(), "-p", &sshd.port.to_string()])
            .args([
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
            ])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .args(["root@127.0.0.1", "echo", "hello"]);
        if let Some(a) = agent {
            c.env("SSH_AUTH_SOCK", &a.socket);
        }
        c
    };
    let (code, out, err) = run(&mut plain_ssh(Some(&agent)));
    assert_eq!(code, 0, "{out}{err}\n--- sshd log ---\n{}", sshd.log());
    assert_eq!(out, "hello\n");
    let certs = |a: &Agent| {
        a.list()
            .lines()
            .filter(|l| l.contains("gatepass:ssh/ops:") && l.contains("CERT"))
            .count()
    };
    assert_eq!(certs(&agent), 1, "{}", agent.list());
    // The next login reuses the certificate in the agent.
    assert_eq!(ok(plain_ssh(Some(&agent))), "hello\n");
    assert_eq!(certs(&agent), 1, "{}", agent.list());
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());

    // Without an agent the proxy says what it needs.
    let (code, _, err) = run(&mut plain_ssh(None));
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("ssh-agent"), "{err}");
}
