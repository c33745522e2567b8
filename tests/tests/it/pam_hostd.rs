//! The login check through hostd's login socket: `pam_gatepass.so` (under
//! pamtester and in a real sshd) and `gatepass-helper` ask a real
//! `gatepass-hostd` first, which asks the dev server on its open
//! connection; every check still holds on that path; the direct way takes
//! over when hostd is stopped or killed; the socket answers only root and
//! the check talks only to root's socket. Run as root (sshd, /etc/pam.d,
//! a second uid).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pam_common::*;
use gatepass_tests::bin;
use gatepass_tests::sshd::{PamSetup, Sshd, SshdOptions};

/// `nobody`: a uid that is not root.
const NOBODY: u32 = 65534;

/// The module as a PAM line names it: its path and the `gatepass-helper`
/// it runs for the direct way (hostd not answering).
fn module() -> String {
    format!(
        "{} helper={}",
        bin("libpam_gatepass.so").display(),
        bin("gatepass-helper").display()
    )
}

/// A `gatepass-hostd` process, SIGTERM on drop.
struct Hostd {
    child: Child,
    log: PathBuf,
    ended: bool,
}

impl Hostd {
    /// `gatepass-hostd ARGS`, waiting until `socket` is there.
    fn start(args: &[&str], socket: &Path, log: PathBuf) -> Hostd {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin("gatepass-hostd"))
            .args(args)
            .env("GATEPASS_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        let h = Hostd {
            child,
            log,
            ended: false,
        };
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "hostd made no socket:\n{}",
                h.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -SIG` and wait for it to end.
    fn signal(&mut self, sig: &str) {
        // A pid that was waited for may be someone else's by now.
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Hostd {
    fn drop(&mut self) {
        self.signal("TERM");
    }
}

/// `pamtester SERVICE root authenticate` with `otp` as the answer.
fn pamtester(service: &str, otp: &str) -> Ran {
    let mut cmd = Command::new("pamtester");
    cmd.args([
        "-v",
        "-I",
        "rhost=203.0.113.9",
        service,
        "root",
        "authenticate",
    ]);
    run_with_stdin(
        &mut cmd,
        format!("{otp}\n").as_bytes(),
        Duration::from_secs(TIMEOUT_SECS + 10),
    )
}

fn granted(r: &Ran) -> bool {
    r.status == 0 && format!("{}{}", r.stdout, r.stderr).contains("successfully")
}

/// The helper as pam_exec runs it.
fn helper(config: &Path, otp: &str) -> Ran {
    let mut cmd = Command::new(bin("gatepass-helper"));
    cmd.arg(format!("-config={}", config.display()))
        .env_clear()
        .env("PAM_USER", "root")
        .env("PAM_RHOST", "192.0.2.10")
        .env("PAM_SERVICE", "sshd")
        .env("PAM_TYPE", "auth");
    let mut input = otp.as_bytes().to_vec();
    input.push(0);
    run_with_stdin(&mut cmd, &input, Duration::from_secs(TIMEOUT_SECS + 10))
}

/// A hostd configuration for `run` that serves the login socket; its
/// token is not the server's, so its sync fails and retries, which the
/// login socket does not depend on.
fn hostd_config(env: &Env, socket: &Path) -> PathBuf {
    let d = env.dir.path().join("hostd");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("hostd.token"), "not-a-real-token\n").unwrap();
    let p = d.join("hostd.toml");
    std::fs::write(
        &p,
        format!(
            "server = {server:?}\nca_cert = {ca:?}\ntoken_file = {token:?}\nhost_id = \"h1\"\n\
             [paths]\nsshd_config = {sc:?}\nsshd_config_dir = {sd:?}\nmanaged_dir = {md:?}\n\
             state_dir = {st:?}\nlogin_socket = {sock:?}\n",
            server = env.server.addr,
            ca = env.server.cacert.display().to_string(),
            token = d.join("hostd.token").display().to_string(),
            sc = d.join("sshd_config").display().to_string(),
            sd = d.join("sshd_config.d").display().to_string(),
            md = d.join("managed").display().to_string(),
            st = d.join("state").display().to_string(),
            sock = socket.display().to_string(),
        ),
    )
    .unwrap();
    p
}

#[test]
fn module_and_helper_ask_through_hostd_keep_every_check_and_fall_back_when_it_is_gone() {
    let env = Env::start();
    let socket = env.dir.path().join("run/gatepass/hostd.sock");
    let cfg_path = hostd_config(&env, &socket);
    let mut hostd = Hostd::start(
        &["--config", cfg_path.to_str().unwrap(), "run"],
        &socket,
        env.dir.path().join("hostd.log"),
    );
    let sock_line = format!("hostd_socket = {:?}\n", socket.display().to_string());
    let config = env.dir.path().join("helper.toml");
    let use_config = |p: &Path| std::fs::copy(p, &config).map(|_| ()).unwrap();
    use_config(&env.toml_config("good.toml", &[], None, &sock_line));
    let pam = PamFile::write(
        &service("hostd-module"),
        &format!("auth required {} config={}\n", module(), config.display()),
    );

    // A login through hostd, and every refusal the check makes on the
    // answer hostd brings back.
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    assert!(granted(&pamtester(&pam.service, &otp)));
    let line = env.assert_one_line("through hostd", "granted", "OTP accepted", &otp);
    assert!(
        line.contains("via=hostd") && line.contains(&format!("server={}", env.server.addr)),
        "{line}\n{}",
        hostd.log()
    );
    assert!(!granted(&pamtester(&pam.service, &otp)));
    let line = env.assert_one_line("replayed", "denied", "OTP not found", &otp);
    assert!(line.contains("via=hostd"), "{line}");
    for (user, ip, role, reason) in [
        ("alice", "127.0.0.1", ROLE, "username mismatch"),
        ("root", OTHER_IP, ROLE, "not an address of this host"),
        ("root", "127.0.0.1", OTHER_ROLE, "is not in allowed_roles"),
    ] {
        let otp = env.otp(role, user, ip);
        assert!(!granted(&pamtester(&pam.service, &otp)), "{reason}");
        let line = env.assert_one_line(reason, "denied", reason, &otp);
        assert!(line.contains("via=hostd"), "{line}");
    }
    // hostd trusts what the caller's configuration pins, nothing else.
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    use_config(&env.toml_config(
        "foreign.toml",
        &[],
        Some(&foreign_ca(env.dir.path())),
        &sock_line,
    ));
    assert!(!granted(&pamtester(&pam.service, &otp)));
    env.assert_one_line("foreign CA via hostd", "failed", "certificate", &otp);
    // The time bound holds through hostd too.
    let hanging = Hanging::start();
    use_config(&env.toml_config("hanging.toml", &[&hanging.url], None, &sock_line));
    let r = pamtester(&pam.service, &otp);
    assert!(!granted(&r));
    assert!(
        r.elapsed < Duration::from_secs(TIMEOUT_SECS + 2),
        "{:?}",
        r.elapsed
    );
    env.assert_one_line("hanging via hostd", "failed", "no answer within", &otp);
    use_config(&env.toml_config("good.toml", &[], None, &sock_line));

    // gatepass-helper takes the same way.
    let r = helper(&config, &otp);
    assert_eq!(r.status, 0, "{r:?}");
    let line = env.assert_one_line("helper through hostd", "granted", "OTP accepted", &otp);
    assert!(
        line.contains("gatepass-helper[") && line.contains("via=hostd"),
        "{line}"
    );

    // hostd stopped: its socket is gone and the check asks the server.
    hostd.signal("TERM");
    assert!(!socket.exists(), "hostd left its socket behind");
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    assert!(granted(&pamtester(&pam.service, &otp)));
    let line = env.assert_one_line("hostd stopped", "granted", "OTP accepted", &otp);
    assert!(line.contains("via=direct"), "{line}");

    // hostd killed: the socket is left with nobody listening.
    let mut hostd = Hostd::start(
        &["__login-socket", "--socket", socket.to_str().unwrap()],
        &socket,
        env.dir.path().join("hostd2.log"),
    );
    hostd.signal("KILL");
    assert!(socket.exists());
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    let started = Instant::now();
    assert!(granted(&pamtester(&pam.service, &otp)));
    assert!(started.elapsed() < Duration::from_secs(2));
    let line = env.assert_one_line("hostd killed", "granted", "OTP accepted", &otp);
    assert!(line.contains("via=direct"), "{line}");
    let r = helper(&config, &env.otp(ROLE, "root", "127.0.0.1"));
    assert_eq!(r.status, 0, "{r:?}");
    env.syslog_lines(Duration::from_millis(500));
}

#[test]
fn sshd_logs_in_through_hostd() {
    let env = Env::start();
    let socket = env.dir.path().join("hostd.sock");
    let hostd = Hostd::start(
        &["__login-socket", "--socket", socket.to_str().unwrap()],
        &socket,
        env.dir.path().join("hostd.log"),
    );
    let sock_line = format!("hostd_socket = {:?}\n", socket.display().to_string());
    let config = env.toml_config("helper.toml", &[], None, &sock_line);
    let mut sshd = Sshd::new(SshdOptions::default());
    sshd.options.pam = Some(PamSetup {
        service: service("hostd-sshd"),
        pam_config: format!(
            "auth required {m} config={c}\naccount required {m}\nsession required pam_unix.so\n",
            m = module(),
            c = config.display()
        ),
    });
    sshd.launch();
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    assert_eq!(sshd.client().password(&otp).run_ok("id -un"), "root\n");
    let line = env.assert_one_line("sshd via hostd", "granted", "OTP accepted", &otp);
    assert!(line.contains("via=hostd"), "{line}\n{}", hostd.log());
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    assert_eq!(
        sshd.client().keyboard_interactive(&otp).run_ok("echo kbd"),
        "kbd\n"
    );
    let line = env.assert_one_line("sshd kbd via hostd", "granted", "OTP accepted", &otp);
    assert!(line.contains("via=hostd"), "{line}");
}

/// Runs python3 as `nobody` with `script` and `args`.
fn python_as_nobody(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-c").arg(script).args(args).uid(NOBODY).gid(NOBODY);
    cmd
}

const ASK: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("connect: permission denied"); sys.exit(0)
try:
    s.sendall(sys.argv[2].encode() + b"\n")
except BrokenPipeError:
    pass  # hostd answers a refused peer without reading its request
print(s.makefile().readline().strip())
"#;

#[test]
fn the_login_socket_is_roots_alone() {
    let env = Env::start();
    let socket = env.dir.path().join("run/gatepass/hostd.sock");
    let hostd = Hostd::start(
        &["__login-socket", "--socket", socket.to_str().unwrap()],
        &socket,
        env.dir.path().join("hostd.log"),
    );
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    let dir = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!((dir.permissions().mode() & 0o777, dir.uid()), (0o755, 0));

    // What a non-root process would send: a real OTP and the right
    // transport.
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    let request = serde_json::json!({
        "transport": {
            "servers": [env.server.addr],
            "mount": "ssh",
            "namespace": null,
            "trust": {"pinned": [std::fs::read_to_string(&env.server.cacert).unwrap()]},
            "tls_server_name": null,
            "token": null,
        },
        "otp": otp,
        "budget_ms": 2000,
    })
    .to_string();
    let ask = || {
        let out = python_as_nobody(ASK, &[socket.to_str().unwrap(), &request])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // The file's mode keeps it out…
    assert_eq!(ask(), "connect: permission denied");
    // …and with the mode opened, hostd's own check does.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let said = ask();
    assert!(said.contains("only root may ask"), "{said}");
    assert!(
        hostd.log().contains("refused a peer that is not root"),
        "{}",
        hostd.log()
    );
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The OTP was never sent on: root's login through hostd still takes it.
    let sock_line = format!("hostd_socket = {:?}\n", socket.display().to_string());
    let config = env.toml_config("helper.toml", &[], None, &sock_line);
    let r = helper(&config, &otp);
    assert_eq!(r.status, 0, "{r:?}");
    let line = env.assert_one_line("root via hostd", "granted", "OTP accepted", &otp);
    assert!(line.contains("via=hostd"), "{line}");
}

const LISTEN: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen(4); s.settimeout(20)
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(5)
got = b""
try:
    while True:
        b = c.recv(65536)
        if not b: break
        got += b
except Exception:
    pass
print("received", len(got), flush=True)
"#;

#[test]
fn the_check_never_sends_an_otp_to_a_socket_that_is_not_roots() {
    let env = Env::start();
    let open = env.dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = open.join("hostd.sock");
    let mut fake = python_as_nobody(LISTEN, &[socket.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(fake.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    let sock_line = format!("hostd_socket = {:?}\n", socket.display().to_string());
    let config = env.toml_config("helper.toml", &[], None, &sock_line);
    let pam = PamFile::write(
        &service("hostd-impostor"),
        &format!("auth required {} config={}\n", module(), config.display()),
    );
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    assert!(granted(&pamtester(&pam.service, &otp)));
    let line = env.assert_one_line("impostor socket", "granted", "OTP accepted", &otp);
    assert!(line.contains("via=direct"), "{line}");
    assert_eq!(lines.next().unwrap().unwrap(), "received 0");
    let _ = fake.wait();
}
