//! gatepass-gateway's SSH proxy with real OpenSSH on both ends: a person
//! with a session certificate of the gateway session CA runs plain `ssh`,
//! `scp` and `sftp` to the gateway, which logs in to private target sshds on
//! loopback by password (PAM, a local user made for the test), key
//! (authorized_keys) or certificate (TrustedUserCAKeys), and bridges the
//! session until it ends. Sessions come from a TOML file read by
//! `gatepass-gateway-testkit`, standing in for the gatepass server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatepass_tests::bin;
use gatepass_tests::sshd::{
    cert_path, keygen, pub_path, sign_host_key, sign_user_key, ssh_keygen, Sshd, SshdOptions,
};
use gatepass_tests::targets::{self, LocalUser};

#[allow(clippy::disallowed_methods)]
fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

fn now() -> u64 {
    since_epoch().as_secs()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// The person's side and the gateway: keys, the session CA, the sessions
/// file, and a running `gatepass-gateway-testkit`.
struct Gateway {
    dir: tempfile::TempDir,
    session_ca: PathBuf,
    person_key: PathBuf,
    known_hosts: PathBuf,
    sessions: PathBuf,
    port: u16,
    child: Child,
    log: PathBuf,
}

/// One `[[session]]` of the sessions file.
#[derive(Clone)]
struct SessionEntry {
    id: String,
    expires_at: u64,
    port: u16,
    username: String,
    credential: String,
    trust: String,
    allow_forwarding: bool,
    terminated: bool,
}

impl SessionEntry {
    fn new(id: &str, target: &Sshd, username: &str, credential: String) -> SessionEntry {
        SessionEntry {
            id: id.into(),
            expires_at: now() + 600,
            port: target.port,
            username: username.into(),
            credential,
            trust: format!("known_hosts = [{:?}]", target.host_public_key().trim()),
            allow_forwarding: false,
            terminated: false,
        }
    }

    fn toml(&self) -> String {
        format!(
            "[[session]]\nid = {:?}\nexpires_at = {}\nhost = \"127.0.0.1\"\nport = {}\n\
             username = {:?}\n{}\n{}\nallow_forwarding = {}\nterminated = {}\n\n",
            self.id,
            self.expires_at,
            self.port,
            self.username,
            self.credential,
            self.trust,
            self.allow_forwarding,
            self.terminated
        )
    }
}

impl Gateway {
    fn start(extra_args: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let session_ca = keygen(dir.path(), "session_ca", "ed25519", None);
        let person_key = keygen(dir.path(), "person", "ed25519", None);
        let host_key = keygen(dir.path(), "gateway_host", "ed25519", None);
        let sessions = dir.path().join("sessions.toml");
        std::fs::write(&sessions, "").unwrap();
        let log = dir.path().join("gateway.log");
        let child = Command::new(bin("gatepass-gateway-testkit"))
            .args(["serve", "--listen", "127.0.0.1:0", "--host-key"])
            .arg(&host_key)
            .arg("--session-ca")
            .arg(pub_path(&session_ca))
            .arg("--sessions")
            .arg(&sessions)
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Gateway::started(dir, session_ca, person_key, &host_key, child, log)
    }

    /// Reads the port the testkit prints and makes the person's
    /// known_hosts.
    fn started(
        dir: tempfile::TempDir,
        session_ca: PathBuf,
        person_key: PathBuf,
        host_key: &Path,
        mut child: Child,
        log: PathBuf,
    ) -> Gateway {
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .strip_prefix("port=")
            .unwrap_or_else(|| panic!("no port line: {line:?}\n{}", read(&log)))
            .parse()
            .unwrap();
        Gateway::with_known_hosts(dir, session_ca, person_key, host_key, child, log, port)
    }

    fn with_known_hosts(
        dir: tempfile::TempDir,
        session_ca: PathBuf,
        person_key: PathBuf,
        host_key: &Path,
        child: Child,
        log: PathBuf,
        port: u16,
    ) -> Gateway {
        let sessions = dir.path().join("sessions.toml");
        // The person checks the gateway's host key like any server's.
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("[127.0.0.1]:{port} {}", read(&pub_path(host_key))),
        )
        .unwrap();
        Gateway {
            dir,
            session_ca,
            person_key,
            known_hosts,
            sessions,
            port,
            child,
            log,
        }
    }

    /// `gatepass-gateway run`, the service, as `setup` would have left it
    /// enrolled with the server at `server` (token `gw-token`), listening
    /// on a free loopback port, with no idle timeout.
    fn start_service(server: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let session_ca = keygen(d, "session_ca", "ed25519", None);
        let person_key = keygen(d, "person", "ed25519", None);
        let host_key = keygen(d, "gateway_host", "ed25519", None);
        // The pinned CA: the stand-in server speaks plain HTTP on loopback
        // (as the client allows for a local proxy), but the file must be a
        // certificate.
        let ca_pem = d.join("server-ca.pem");
        let o = run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "ed25519", "-nodes", "-subj", "/CN=gp",
            ])
            .arg("-keyout")
            .arg(d.join("server-ca.key"))
            .arg("-out")
            .arg(&ca_pem));
        assert!(o.status.success(), "openssl: {}", stderr(&o));
        let token = d.join("gateway.token");
        std::fs::write(&token, "gw-token\n").unwrap();
        let port = gatepass_tests::free_port();
        let config = d.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "server = {server:?}\nca_cert = {:?}\ntoken_file = {:?}\nname = \"gw1\"\n\
                 listen = \"127.0.0.1:{port}\"\naddress = \"127.0.0.1:{port}\"\n\
                 host_key = {:?}\nstate_dir = {:?}\nidle_timeout = \"off\"\n[sync]\nmax_backoff_seconds = 1\n",
                ca_pem.display().to_string(),
                token.display().to_string(),
                host_key.display().to_string(),
                d.join("state").display().to_string()
            ),
        )
        .unwrap();
        let log = d.join("gateway.log");
        let child = Command::new(bin("gatepass-gateway"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !read(&log).contains("gateway ready") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the gateway did not start:\n{}",
                read(&log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Gateway::with_known_hosts(dir, session_ca, person_key, &host_key, child, log, port)
    }

    fn set_sessions(&self, sessions: &[&SessionEntry]) {
        let text: String = sessions.iter().map(|s| s.toml()).collect();
        // Written whole and renamed, so the gateway never reads half a file.
        let tmp = self.dir.path().join("sessions.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.sessions).unwrap();
    }

    /// A certificate for the person's key, as the server would issue it:
    /// key ID = session ID, the login name as principal.
    fn certificate(&self, session_id: &str, principal: &str, validity: &str) -> PathBuf {
        self.certificate_from(&self.session_ca, session_id, principal, validity)
    }

    fn certificate_from(
        &self,
        ca: &Path,
        session_id: &str,
        principal: &str,
        validity: &str,
    ) -> PathBuf {
        let made = sign_user_key(
            ca,
            &pub_path(&self.person_key),
            session_id,
            &[principal],
            validity,
        );
        let kept = self
            .dir
            .path()
            .join(format!("{session_id}-{}-cert.pub", now_nanos()));
        std::fs::rename(made, &kept).unwrap();
        kept
    }

    fn common_options(&self, cert: Option<&Path>) -> Vec<String> {
        let mut o = vec![
            "-F".to_string(),
            "/dev/null".into(),
            "-o".into(),
            format!("IdentityFile={}", self.person_key.display()),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "IdentityAgent=none".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            "ConnectTimeout=5".into(),
        ];
        if let Some(cert) = cert {
            o.extend(["-o".into(), format!("CertificateFile={}", cert.display())]);
        }
        o
    }

    /// `ssh -p PORT … USER@127.0.0.1 ARGS…` (not run).
    fn ssh(&self, cert: Option<&Path>, user: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(self.common_options(cert))
            .args(["-p", &self.port.to_string(), "-l", user, "127.0.0.1"])
            .args(args)
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null());
        cmd
    }

    fn log(&self) -> String {
        read(&self.log)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_nanos() -> u128 {
    since_epoch().as_nanos()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(gw: &Gateway, o: Output) -> String {
    assert!(
        o.status.success(),
        "exited {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- gateway log ---\n{}",
        o.status,
        stdout(&o),
        stderr(&o),
        gw.log()
    );
    stdout(&o)
}

/// A target sshd that takes `target_key` through authorized_keys.
fn key_target(target_key: &Path) -> Sshd {
    targets::key_target(&targets::public_line(target_key))
}

fn key_credential(key: &Path) -> String {
    format!("private_key_file = {:?}", key.display().to_string())
}

#[test]
fn each_account_kind_runs_a_command_through_the_gateway() {
    let gw = Gateway::start(&[]);
    let keys = tempfile::tempdir().unwrap();

    // Key account: root on a target that trusts one key.
    let target_key = keygen(keys.path(), "target_key", "ed25519", None);
    let key_sshd = key_target(&target_key);
    let by_key = SessionEntry::new("s-key", &key_sshd, "root", key_credential(&target_key));

    // Certificate account: a per-session key pair with a certificate of a CA
    // the target trusts; the target proves itself with a host certificate.
    let user_ca = keygen(keys.path(), "target_user_ca", "ed25519", None);
    let host_ca = keygen(keys.path(), "target_host_ca", "ed25519", None);
    let session_key = keygen(keys.path(), "per_session", "ed25519", None);
    let session_cert = sign_user_key(
        &user_ca,
        &pub_path(&session_key),
        "s-cert",
        &["root"],
        "+5m",
    );
    let mut cert_sshd = Sshd::new(SshdOptions::trusting_user_ca(&pub_path(&user_ca)));
    let host_cert = sign_host_key(
        &host_ca,
        &cert_sshd.host_key_pub,
        "target",
        &["127.0.0.1"],
        "+5m",
    );
    cert_sshd
        .options
        .extra_config
        .push(format!("HostCertificate {}", host_cert.display()));
    cert_sshd.launch();
    let mut by_cert = SessionEntry::new(
        "s-cert",
        &cert_sshd,
        "root",
        format!(
            "{}\ncertificate_file = {:?}",
            key_credential(&session_key),
            session_cert.display().to_string()
        ),
    );
    by_cert.trust = format!("host_ca = [{:?}]", read(&pub_path(&host_ca)).trim());

    // Password account: a local user the test makes, checked by pam_unix;
    // a second target takes only keyboard-interactive (PAM's prompts).
    let user = LocalUser::create("gp-gw-test", "Tr0ub4dor-gateway");
    let pam_target = targets::password_target;
    let pam_sshd = pam_target("gatepass-test-gateway-pw", vec![]);
    let kbd_sshd = pam_target(
        "gatepass-test-gateway-kbd",
        vec!["PasswordAuthentication no".into()],
    );
    let password = "password = \"Tr0ub4dor-gateway\"".to_string();
    let by_password = SessionEntry::new("s-pw", &pam_sshd, &user.name, password.clone());
    let by_kbd = SessionEntry::new("s-kbd", &kbd_sshd, &user.name, password);

    gw.set_sessions(&[&by_key, &by_cert, &by_password, &by_kbd]);

    for (session, login) in [
        ("s-key", "root"),
        ("s-cert", "root"),
        ("s-pw", user.name.as_str()),
        ("s-kbd", user.name.as_str()),
    ] {
        let cert = gw.certificate(session, login, "+1m");
        let out = ok(
            &gw,
            run(&mut gw.ssh(Some(&cert), login, &["echo hello; id -un"])),
        );
        assert_eq!(out, format!("hello\n{login}\n"), "session {session}");
        // Exit status and stderr come back as the target sent them.
        let o = run(&mut gw.ssh(Some(&cert), login, &["echo oops >&2; exit 3"]));
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        assert_eq!(stderr(&o), "oops\n");
    }

    assert!(
        pam_sshd.log().contains("Accepted password for gp-gw-test"),
        "{}",
        pam_sshd.log()
    );
    assert!(
        kbd_sshd
            .log()
            .contains("Accepted keyboard-interactive/pam for gp-gw-test"),
        "{}",
        kbd_sshd.log()
    );
    assert!(
        cert_sshd.log().contains("Accepted publickey for root"),
        "{}",
        cert_sshd.log()
    );

    // An interactive login gets a terminal on the target.
    let cert = gw.certificate("s-key", "root", "+1m");
    let out = ok(&gw, run(&mut gw.ssh(Some(&cert), "root", &["-tt", "tty"])));
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    // Environment variables the person sends reach the target's shell.
    let out = ok(
        &gw,
        run(&mut gw.ssh(
            Some(&cert),
            "root",
            &[
                "-o",
                "SetEnv=GATEPASS_TEST_VAR=bridged",
                "echo $GATEPASS_TEST_VAR",
            ],
        )),
    );
    assert_eq!(out, "bridged\n");

    // The credential is the gateway's: it is in no line it logged.
    let log = gw.log();
    assert!(!log.contains("Tr0ub4dor"), "{log}");
    assert!(log.contains("session started"), "{log}");
}

#[test]
fn scp_and_sftp_copy_files_intact_and_ssh_l_forwards() {
    let gw = Gateway::start(&[]);
    let keys = tempfile::tempdir().unwrap();
    let target_key = keygen(keys.path(), "target_key", "ed25519", None);
    let sshd = key_target(&target_key);
    let mut forwarding = SessionEntry::new("s-fwd", &sshd, "root", key_credential(&target_key));
    forwarding.allow_forwarding = true;
    let no_forwarding = SessionEntry::new("s-nofwd", &sshd, "root", key_credential(&target_key));
    gw.set_sessions(&[&forwarding, &no_forwarding]);
    let cert = gw.certificate("s-fwd", "root", "+1m");

    // 1 MiB of random bytes up with scp (SFTP protocol), with the legacy
    // scp protocol (`scp -t` on the target), and down with sftp.
    let work = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; 1 << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    let src = work.path().join("random.bin");
    std::fs::write(&src, &data).unwrap();
    let port = gw.port.to_string();
    for (flags, name) in [(vec![], "scp.bin"), (vec!["-O"], "scp-legacy.bin")] {
        let dest = work.path().join(name);
        let o = run(Command::new("scp")
            .args(gw.common_options(Some(&cert)))
            .args(["-q", "-P", &port])
            .args(flags)
            .arg(&src)
            .arg(format!("root@127.0.0.1:{}", dest.display()))
            .stdin(Stdio::null()));
        ok(&gw, o);
        assert!(std::fs::read(&dest).unwrap() == data, "{name} differs");
    }
    let back = work.path().join("sftp.bin");
    let batch = work.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "get {} {}\n",
            work.path().join("scp.bin").display(),
            back.display()
        ),
    )
    .unwrap();
    let o = run(Command::new("sftp")
        .args(gw.common_options(Some(&cert)))
        .args(["-q", "-P", &port, "-b"])
        .arg(&batch)
        .arg("root@127.0.0.1")
        .stdin(Stdio::null()));
    ok(&gw, o);
    assert!(
        std::fs::read(&back).unwrap() == data,
        "sftp download differs"
    );

    // `ssh -L` to a TCP echo server next to the target.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in echo.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut read_half = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut read_half, &mut conn);
            });
        }
    });
    let forward = |session_cert: &Path| -> (Child, u16) {
        let local_port = gatepass_tests::free_port();
        let child = gw
            .ssh(
                Some(session_cert),
                "root",
                &[
                    "-N",
                    "-o",
                    "ExitOnForwardFailure=yes",
                    "-L",
                    &format!("127.0.0.1:{local_port}:127.0.0.1:{echo_port}"),
                ],
            )
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (child, local_port)
    };
    let connect = |port: u16| -> TcpStream {
        let start = Instant::now();
        loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no -L listener");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (mut ssh_l, local_port) = forward(&cert);
    let mut stream = connect(local_port);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"ping through the gateway\n").unwrap();
    let mut answer = [0u8; 25];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"ping through the gateway\n");
    drop(stream);
    let _ = ssh_l.kill();
    let _ = ssh_l.wait();

    // `ssh -R` would open a port on the target towards the person: refused
    // even where -L is allowed.
    let o = run(&mut gw.ssh(
        Some(&cert),
        "root",
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("127.0.0.1:0:127.0.0.1:{echo_port}"),
        ],
    ));
    assert_eq!(o.status.code(), Some(255));
    assert!(
        stderr(&o).contains("remote port forwarding failed"),
        "{}",
        stderr(&o)
    );

    // A session that does not allow forwarding: the channel is refused.
    let cert = gw.certificate("s-nofwd", "root", "+1m");
    let (mut ssh_l, local_port) = forward(&cert);
    let mut stream = connect(local_port);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(b"ping\n");
    let mut buf = [0u8; 5];
    let got = stream.read(&mut buf).unwrap_or(0);
    assert_eq!(got, 0, "forwarded although the session does not allow it");
    let _ = ssh_l.kill();
    let _ = ssh_l.wait();
    assert!(
        gw.log().contains("refused a forwarding channel"),
        "{}",
        gw.log()
    );
}

/// Runs `ssh` in the background; `finish` waits for it and tells when it
/// ended (wall clock, to compare with a session's end time).
struct Running {
    child: Child,
}

impl Running {
    fn start(cmd: &mut Command) -> Running {
        Running {
            child: cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        }
    }

    /// Waits at most `bound`; (output, when it exited as time since epoch).
    fn finish(mut self, bound: Duration) -> (Output, Duration) {
        let start = Instant::now();
        loop {
            if self.child.try_wait().unwrap().is_some() {
                let ended = since_epoch();
                return (self.child.wait_with_output().unwrap(), ended);
            }
            if start.elapsed() > bound {
                let _ = self.child.kill();
                let out = self.child.wait_with_output().unwrap();
                panic!(
                    "still running after {bound:?}\n{}\n{}",
                    stdout(&out),
                    stderr(&out)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn sessions_end_at_their_end_time_on_terminate_and_when_idle() {
    let gw = Gateway::start(&[]);
    let keys = tempfile::tempdir().unwrap();
    let target_key = keygen(keys.path(), "target_key", "ed25519", None);
    let sshd = key_target(&target_key);
    let mut short = SessionEntry::new("s-short", &sshd, "root", key_credential(&target_key));
    short.expires_at = now() + 3;
    let mut doomed = SessionEntry::new("s-doomed", &sshd, "root", key_credential(&target_key));
    gw.set_sessions(&[&short, &doomed]);

    // Two live sessions running a long command: one reaches its end time,
    // the other is terminated by an administrator a second in.
    let short_cert = gw.certificate("s-short", "root", "+1m");
    let doomed_cert = gw.certificate("s-doomed", "root", "+1m");
    let expiring =
        Running::start(&mut gw.ssh(Some(&short_cert), "root", &["echo started; sleep 30"]));
    let terminated =
        Running::start(&mut gw.ssh(Some(&doomed_cert), "root", &["echo started; sleep 30"]));
    std::thread::sleep(Duration::from_millis(1000));
    doomed.terminated = true;
    gw.set_sessions(&[&short, &doomed]);
    let terminated_at = since_epoch();

    let (out, ended) = terminated.finish(Duration::from_secs(10));
    assert_eq!(stdout(&out), "started\n");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("terminated by an administrator"),
        "{}",
        stderr(&out)
    );
    let took = ended - terminated_at;
    assert!(took < Duration::from_secs(2), "terminate took {took:?}");

    let (out, ended) = expiring.finish(Duration::from_secs(10));
    assert_eq!(stdout(&out), "started\n");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("reached its end time"),
        "{}",
        stderr(&out)
    );
    let end = Duration::from_secs(short.expires_at);
    assert!(
        ended + Duration::from_millis(100) >= end,
        "closed before its end"
    );
    assert!(
        ended < end + Duration::from_secs(1),
        "closed {:?} after its end",
        ended - end
    );

    // After their end neither session lets anyone in again.
    for cert in [&short_cert, &doomed_cert] {
        let o = run(&mut gw.ssh(Some(cert), "root", &["echo hello"]));
        assert_eq!(o.status.code(), Some(255), "{}", stdout(&o));
        assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    }

    // A gateway with a 2 s idle timeout closes a silent session, not a
    // talkative one.
    let idle_gw = Gateway::start(&["--idle-timeout", "2"]);
    let long = SessionEntry::new("s-long", &sshd, "root", key_credential(&target_key));
    idle_gw.set_sessions(&[&long]);
    let cert = idle_gw.certificate("s-long", "root", "+1m");
    let talking = Running::start(&mut idle_gw.ssh(
        Some(&cert),
        "root",
        &["for i in 1 2 3 4 5 6; do echo tick; sleep 0.5; done"],
    ));
    let silent = Running::start(&mut idle_gw.ssh(Some(&cert), "root", &["sleep 30"]));
    let (out, _) = talking.finish(Duration::from_secs(10));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "tick\n".repeat(6));
    let (out, _) = silent.finish(Duration::from_secs(10));
    assert!(stderr(&out).contains("idle"), "{}", stderr(&out));
}

#[test]
fn the_gateway_refuses_what_it_must() {
    let gw = Gateway::start(&[]);
    let keys = tempfile::tempdir().unwrap();
    let target_key = keygen(keys.path(), "target_key", "ed25519", None);
    let sshd = key_target(&target_key);
    let good = SessionEntry::new("s-good", &sshd, "root", key_credential(&target_key));
    // The target's host key changed (or someone is in the middle): the
    // pinned key is another one.
    let other_host = keygen(keys.path(), "other_host", "ed25519", None);
    let mut moved = good.clone();
    moved.id = "s-moved".into();
    moved.trust = format!("known_hosts = [{:?}]", read(&pub_path(&other_host)).trim());
    // A resource trusting a host CA, whose target shows only a plain key.
    let host_ca = keygen(keys.path(), "host_ca", "ed25519", None);
    let mut uncertified = good.clone();
    uncertified.id = "s-uncertified".into();
    uncertified.trust = format!("host_ca = [{:?}]", read(&pub_path(&host_ca)).trim());
    let mut closed = good.clone();
    closed.id = "s-closed".into();
    closed.terminated = true;
    // A target whose host certificate names another host.
    let mut misnamed_sshd = Sshd::new(SshdOptions::default());
    let misnamed_cert = sign_host_key(
        &host_ca,
        &misnamed_sshd.host_key_pub,
        "elsewhere",
        &["elsewhere.example"],
        "+5m",
    );
    misnamed_sshd
        .options
        .extra_config
        .push(format!("HostCertificate {}", misnamed_cert.display()));
    misnamed_sshd.launch();
    let mut misnamed = uncertified.clone();
    misnamed.id = "s-misnamed".into();
    misnamed.port = misnamed_sshd.port;
    // A target nobody listens on.
    let mut down = good.clone();
    down.id = "s-down".into();
    down.port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // An account whose key the target does not take.
    let stale_key = keygen(keys.path(), "stale_key", "ed25519", None);
    let mut stale = good.clone();
    stale.id = "s-stale".into();
    stale.credential = key_credential(&stale_key);
    gw.set_sessions(&[
        &good,
        &moved,
        &uncertified,
        &closed,
        &misnamed,
        &down,
        &stale,
    ]);

    let refused = |cert: Option<&Path>, why: &str| {
        let o = run(&mut gw.ssh(cert, "root", &["echo hello"]));
        assert_eq!(o.status.code(), Some(255), "{why}: {}", stdout(&o));
        assert_eq!(stdout(&o), "", "{why}");
        stderr(&o)
    };

    // Host key mismatch: refused, and the person is told why.
    let err = refused(
        Some(&gw.certificate("s-moved", "root", "+1m")),
        "host key mismatch",
    );
    assert!(
        err.contains("the target's host key is not trusted"),
        "{err}"
    );
    assert!(
        err.contains("not among the resource's pinned keys"),
        "{err}"
    );
    let err = refused(
        Some(&gw.certificate("s-uncertified", "root", "+1m")),
        "no host cert",
    );
    assert!(
        err.contains("without a certificate of the resource's host CA"),
        "{err}"
    );
    assert!(
        gw.log().contains("cannot log in to the target"),
        "{}",
        gw.log()
    );
    let err = refused(
        Some(&gw.certificate("s-misnamed", "root", "+1m")),
        "host cert for another name",
    );
    assert!(
        err.contains("names [\"elsewhere.example\"], not \"127.0.0.1\""),
        "{err}"
    );
    let err = refused(
        Some(&gw.certificate("s-down", "root", "+1m")),
        "target down",
    );
    assert!(err.contains("cannot reach the target 127.0.0.1:"), "{err}");
    let err = refused(
        Some(&gw.certificate("s-stale", "root", "+1m")),
        "stale credential",
    );
    assert!(
        err.contains("the target refused the account's credential"),
        "{err}"
    );

    // Certificates the gateway must not take.
    let other_ca = keygen(keys.path(), "other_ca", "ed25519", None);
    let foreign = gw.certificate_from(&other_ca, "s-good", "root", "+1m");
    let expired = gw.certificate("s-good", "root", "-10m:-5m");
    let not_yet = gw.certificate("s-good", "root", "+5m:+10m");
    let unknown = gw.certificate("s-nonexistent", "root", "+1m");
    let closed_cert = gw.certificate("s-closed", "root", "+1m");
    let other_login = gw.certificate("s-good", "someone-else", "+1m");
    let restricted = {
        let cert = gw.dir.path().join("restricted-cert.pub");
        ssh_keygen([
            "-q".as_ref(),
            "-s".as_ref(),
            gw.session_ca.as_os_str(),
            "-I".as_ref(),
            "s-good".as_ref(),
            "-n".as_ref(),
            "root".as_ref(),
            "-V".as_ref(),
            "+1m".as_ref(),
            "-O".as_ref(),
            "force-command=/bin/true".as_ref(),
            pub_path(&gw.person_key).as_os_str(),
        ]);
        std::fs::rename(cert_path(&pub_path(&gw.person_key)), &cert).unwrap();
        cert
    };
    for (cert, why) in [
        (Some(&foreign), "another CA"),
        (Some(&expired), "expired"),
        (Some(&not_yet), "not yet valid"),
        (Some(&unknown), "unknown session"),
        (Some(&closed_cert), "closed session"),
        (Some(&other_login), "login not a principal"),
        (Some(&restricted), "critical option"),
        (None, "plain key"),
    ] {
        let err = refused(cert.map(|p| p.as_path()), why);
        assert!(err.contains("Permission denied"), "{why}: {err}");
    }
    let log = gw.log();
    for reason in [
        "not signed by the session CA",
        "no such session",
        "has ended",
        "principals",
        "plain key",
        "critical option",
    ] {
        assert!(log.contains(reason), "{reason}: {log}");
    }

    // And the good one still works.
    let good_cert = gw.certificate("s-good", "root", "+1m");
    let out = ok(
        &gw,
        run(&mut gw.ssh(Some(&good_cert), "root", &["echo hello"])),
    );
    assert_eq!(out, "hello\n");

    // When the gateway cannot learn its sessions, a genuine session
    // certificate gets a clear message rather than "Permission denied".
    std::fs::write(&gw.sessions, "this is not TOML [").unwrap();
    let err = refused(Some(&good_cert), "source unavailable");
    assert!(err.contains("cannot open the session now"), "{err}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_fast_producer_and_a_stalled_reader_do_not_fill_the_gateways_memory() {
    let gw = Gateway::start(&[]);
    let keys = tempfile::tempdir().unwrap();
    let target_key = keygen(keys.path(), "target_key", "ed25519", None);
    let sshd = key_target(&target_key);
    gw.set_sessions(&[&SessionEntry::new(
        "s-bulk",
        &sshd,
        "root",
        key_credential(&target_key),
    )]);
    let cert = gw.certificate("s-bulk", "root", "+1m");
    let before = rss_kib(gw.child.id());

    // The target writes 64 MiB as fast as it can; the person's ssh writes
    // into a pipe nobody reads for 3 s. Whatever the target sent beyond the
    // SSH windows and russh's bounded buffers would pile up in the gateway.
    const SIZE: usize = 64 << 20;
    let mut ssh = gw
        .ssh(Some(&cert), "root", &[&format!("head -c {SIZE} /dev/zero")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let during = rss_kib(gw.child.id());
    eprintln!("gateway RSS {before} KiB before, {during} KiB while stalled");
    assert!(
        during.saturating_sub(before) < 32 * 1024,
        "gateway grew from {before} KiB to {during} KiB while the reader stalled"
    );

    // Then everything arrives, intact in length.
    let mut got = Vec::new();
    ssh.stdout.take().unwrap().read_to_end(&mut got).unwrap();
    let out = ssh.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(got.len(), SIZE);
    assert!(got.iter().all(|b| *b == 0));
}

#[test]
fn the_person_is_told_when_the_target_connection_breaks() {
    let gw = Gateway::start(&[]);
    let keys = tempfile::tempdir().unwrap();
    let target_key = keygen(keys.path(), "target_key", "ed25519", None);
    let sshd = key_target(&target_key);
    gw.set_sessions(&[&SessionEntry::new(
        "s-lost",
        &sshd,
        "root",
        key_credential(&target_key),
    )]);
    let cert = gw.certificate("s-lost", "root", "+1m");

    // A connection with no channel (`ssh -N`, as for port forwarding): no
    // channel close would end it when the target goes away.
    let idle = Running::start(&mut gw.ssh(Some(&cert), "root", &["-N"]));
    let listener = sshd.pid().unwrap();
    let children = || -> Vec<i32> {
        read(Path::new(&format!(
            "/proc/{listener}/task/{listener}/children"
        )))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
    };
    let start = Instant::now();
    while children().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no target connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    // The target's side of that one connection dies.
    for pid in children() {
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
    }
    let killed_at = since_epoch();
    let (out, ended) = idle.finish(Duration::from_secs(10));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the connection to the target was lost"),
        "{}",
        stderr(&out)
    );
    assert!(ended - killed_at < Duration::from_secs(2));
}

/// Runs ARGV in a new terminal of 24 rows × 80 columns, resizes it to
/// 40 × 132 once the output shows `marker`, and prints everything the
/// terminal showed. (Python's pty module: the test needs a real terminal
/// whose size changes, as a person's does.)
const RESIZE_IN_A_TERMINAL: &str = r#"
import fcntl, os, pty, select, signal, struct, sys, termios, time
marker = sys.argv[1].encode()
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    os.execvp(sys.argv[2], sys.argv[2:])
seen, resized, deadline = b"", False, time.time() + 20
while time.time() < deadline:
    ready, _, _ = select.select([fd], [], [], 0.1)
    if ready:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    if not resized and marker in seen:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))
        os.kill(pid, signal.SIGWINCH)
        resized = True
os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
"#;

#[test]
fn the_terminal_size_and_its_changes_reach_the_target() {
    let gw = Gateway::start(&[]);
    let keys = tempfile::tempdir().unwrap();
    let target_key = keygen(keys.path(), "target_key", "ed25519", None);
    let sshd = key_target(&target_key);
    gw.set_sessions(&[&SessionEntry::new(
        "s-tty",
        &sshd,
        "root",
        key_credential(&target_key),
    )]);
    let cert = gw.certificate("s-tty", "root", "+1m");

    let ssh = gw.ssh(
        Some(&cert),
        "root",
        &["-tt", "stty size; echo resize-now; sleep 1.5; stty size"],
    );
    let mut argv = vec![ssh.get_program().to_owned()];
    argv.extend(ssh.get_args().map(|a| a.to_owned()));
    let out = run(Command::new("python3")
        .args(["-c", RESIZE_IN_A_TERMINAL, "resize-now"])
        .args(argv)
        .env_remove("SSH_AUTH_SOCK"));
    let shown = stdout(&out).replace('\r', "");
    assert!(
        shown.contains("24 80\nresize-now\n40 132\n"),
        "{shown:?}\n{}",
        stderr(&out)
    );
}

/// The lines of the testkit's `--ends` file once `want` of them are there
/// (at most 10 s).
fn wait_for_ends(path: &Path, want: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let lines: Vec<String> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.len() >= want || start.elapsed() > Duration::from_secs(10) {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn each_sessions_end_is_reported_once_with_its_reason() {
    let ends_dir = tempfile::tempdir().unwrap();
    let ends = ends_dir.path().join("ends");
    let ends_arg = ends.display().to_string();
    let mut gw = Gateway::start(&["--idle-timeout", "2", "--ends", &ends_arg]);
    let keys = tempfile::tempdir().unwrap();
    let target_key = keygen(keys.path(), "target_key", "ed25519", None);
    let sshd = key_target(&target_key);
    let entry = |id: &str| SessionEntry::new(id, &sshd, "root", key_credential(&target_key));
    let closed = entry("s-closed");
    let mut expired = entry("s-expired");
    expired.expires_at = now() + 3;
    let mut terminated = entry("s-terminated");
    let idle = entry("s-idle");
    let lost = entry("s-lost");
    let mut failed = entry("s-failed");
    let other_host = keygen(keys.path(), "other_host", "ed25519", None);
    failed.trust = format!("known_hosts = [{:?}]", read(&pub_path(&other_host)).trim());
    let all = |t: &SessionEntry, e: &SessionEntry| {
        gw.set_sessions(&[&closed, e, t, &idle, &lost, &failed]);
    };
    all(&terminated, &expired);

    // The person runs a command and leaves.
    let cert = |id: &str| gw.certificate(id, "root", "+1m");
    let out = run(&mut gw.ssh(Some(&cert("s-closed")), "root", &["echo hello"]));
    assert_eq!(ok(&gw, out), "hello\n");
    // The target's host key is not the pinned one: refused and reported.
    let out = run(&mut gw.ssh(Some(&cert("s-failed")), "root", &["echo hello"]));
    assert!(
        stderr(&out).contains("host key is not trusted"),
        "{}",
        stderr(&out)
    );

    // Talkative sessions (the idle timeout spares them) that reach their
    // end time, are terminated, or outlive the gateway; and a silent one.
    let ticking = ["while true; do echo tick; sleep 0.3; done"];
    let expiring = Running::start(&mut gw.ssh(Some(&cert("s-expired")), "root", &ticking));
    let terminating = Running::start(&mut gw.ssh(Some(&cert("s-terminated")), "root", &ticking));
    let staying = Running::start(&mut gw.ssh(Some(&cert("s-lost")), "root", &ticking));
    let silent = Running::start(&mut gw.ssh(Some(&cert("s-idle")), "root", &["sleep 30"]));
    std::thread::sleep(Duration::from_millis(1000));
    terminated.terminated = true;
    all(&terminated, &expired);
    let (out, _) = terminating.finish(Duration::from_secs(10));
    assert!(stderr(&out).contains("terminated"), "{}", stderr(&out));
    let (out, _) = expiring.finish(Duration::from_secs(10));
    assert!(stderr(&out).contains("end time"), "{}", stderr(&out));
    let (out, _) = silent.finish(Duration::from_secs(10));
    assert!(stderr(&out).contains("idle"), "{}", stderr(&out));

    // Stopping the gateway tells the person and reports the session lost;
    // then the gateway exits.
    let o = run(Command::new("kill").args(["-TERM", &gw.child.id().to_string()]));
    assert!(o.status.success(), "{}", stderr(&o));
    let (out, _) = staying.finish(Duration::from_secs(10));
    assert!(
        stderr(&out).contains("gatepass: the gateway is stopping"),
        "{}\n--- gateway log ---\n{}",
        stderr(&out),
        gw.log()
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the gateway did not exit on SIGTERM\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", gw.log());

    let mut lines = wait_for_ends(&ends, 6);
    lines.sort();
    let (failure, rest): (Vec<String>, Vec<String>) =
        lines.into_iter().partition(|l| l.starts_with("s-failed "));
    assert_eq!(
        rest,
        [
            "s-closed closed",
            "s-expired expired",
            "s-idle idle",
            "s-lost gateway_lost",
            "s-terminated terminated",
        ],
        "{}",
        gw.log()
    );
    assert_eq!(failure.len(), 1, "{failure:?}");
    assert!(
        failure[0].starts_with("s-failed failed the target's host key is not trusted"),
        "{failure:?}"
    );
}

/// A stand-in for the gatepass server's gateway paths (`pam/gateway/self/…`),
/// answering as the protocol (`gatepass_api::pam`) says, on plain HTTP.
mod stand_in {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use axum::extract::{Path, Query, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use gatepass_api::pam::{
        GatewaySession, GatewaySessions, OpenSessionSummary, SessionCredential, SessionState,
    };
    use serde_json::{json, Value};
    use tokio::sync::watch;

    #[derive(Clone)]
    struct Shared {
        sessions: Arc<watch::Sender<GatewaySessions>>,
        details: Arc<Mutex<HashMap<String, GatewaySession>>>,
        /// Certificate accounts' user CA (private key file), by session:
        /// the key the gateway sends at open is signed with it.
        signers: Arc<Mutex<HashMap<String, std::path::PathBuf>>>,
        /// (path, body) of every POST, in order.
        calls: Arc<Mutex<Vec<(String, Value)>>>,
        /// The index of the gateway's latest poll.
        polled: Arc<Mutex<Option<u64>>>,
    }

    pub struct StandIn {
        _rt: tokio::runtime::Runtime,
        pub url: String,
        shared: Shared,
    }

    fn envelope(data: impl serde::Serialize) -> Response {
        Json(json!({ "data": data })).into_response()
    }

    async fn list(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
        let index: u64 = q.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
        *s.polled.lock().unwrap() = Some(index);
        let mut rx = s.sessions.subscribe();
        let _ =
            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|l| l.index != index)).await;
        let now = rx.borrow().clone();
        envelope(now)
    }

    async fn started(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
        s.calls.lock().unwrap().push(("started".into(), body));
        envelope(s.sessions.borrow().clone())
    }

    async fn open(
        State(s): State<Shared>,
        Path(id): Path<String>,
        Json(body): Json<Value>,
    ) -> Response {
        s.calls
            .lock()
            .unwrap()
            .push((format!("open/{id}"), body.clone()));
        let signer = s.signers.lock().unwrap().get(&id).cloned();
        let detail = s.details.lock().unwrap().get(&id).cloned();
        match detail {
            Some(mut d) => {
                if let Some(ca) = signer {
                    // As the server signs it with the account's CA role.
                    let dir = tempfile::tempdir().unwrap();
                    let key = dir.path().join("session.pub");
                    std::fs::write(&key, body["public_key"].as_str().unwrap()).unwrap();
                    let cert = tokio::task::spawn_blocking(move || {
                        let made =
                            gatepass_tests::sshd::sign_user_key(&ca, &key, &id, &["root"], "+5m");
                        let text = std::fs::read_to_string(made).unwrap();
                        drop(dir);
                        text
                    })
                    .await
                    .unwrap();
                    d.credential = SessionCredential::Certificate {
                        signed_key: cert.trim().to_string(),
                    };
                }
                envelope(d)
            }
            None => (
                StatusCode::NOT_FOUND,
                Json(json!({"errors": ["no such session"]})),
            )
                .into_response(),
        }
    }

    async fn end(
        State(s): State<Shared>,
        Path(id): Path<String>,
        Json(body): Json<Value>,
    ) -> Response {
        s.calls.lock().unwrap().push((format!("end/{id}"), body));
        StatusCode::NO_CONTENT.into_response()
    }

    async fn renew(State(s): State<Shared>) -> Response {
        s.calls.lock().unwrap().push(("renew".into(), Value::Null));
        Json(json!({"auth": {"client_token": "", "lease_duration": 3600}})).into_response()
    }

    impl StandIn {
        pub fn start() -> StandIn {
            let shared = Shared {
                sessions: Arc::new(watch::Sender::new(GatewaySessions {
                    index: 1,
                    ..GatewaySessions::default()
                })),
                details: Arc::default(),
                signers: Arc::default(),
                calls: Arc::default(),
                polled: Arc::default(),
            };
            let app = Router::new()
                .route("/v1/pam/gateway/self/sessions", get(list))
                .route("/v1/pam/gateway/self/started", post(started))
                .route("/v1/pam/gateway/self/sessions/{id}/open", post(open))
                .route("/v1/pam/gateway/self/sessions/{id}/end", post(end))
                .route("/v1/auth/token/renew-self", post(renew))
                .with_state(shared.clone());
            let rt = tokio::runtime::Runtime::new().unwrap();
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            rt.spawn(async move { axum::serve(listener, app).await });
            StandIn {
                _rt: rt,
                url,
                shared,
            }
        }

        pub fn add(&self, session: GatewaySession) {
            self.shared
                .details
                .lock()
                .unwrap()
                .insert(session.session_id.clone(), session);
        }

        /// A certificate account's session: the gateway's key is signed
        /// with `user_ca` at open.
        pub fn add_signed(&self, session: GatewaySession, user_ca: &std::path::Path) {
            self.shared
                .signers
                .lock()
                .unwrap()
                .insert(session.session_id.clone(), user_ca.to_path_buf());
            self.add(session);
        }

        /// The open list and CA keys change; returns once the gateway has
        /// them (it polls again with the new index).
        pub fn publish(&self, open: &[&str], ca_keys: &[String]) {
            let details = self.shared.details.lock().unwrap().clone();
            self.shared.sessions.send_modify(|l| {
                l.index += 1;
                l.sessions = open
                    .iter()
                    .map(|id| OpenSessionSummary {
                        session_id: (*id).into(),
                        expires_at: details[*id].expires_at,
                        state: SessionState::Pending,
                    })
                    .collect();
                l.session_ca_keys = ca_keys.to_vec();
            });
            let index = self.shared.sessions.borrow().index;
            let start = Instant::now();
            while *self.shared.polled.lock().unwrap() != Some(index) {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "the gateway did not poll"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// The bodies POSTed to `path` so far.
        pub fn posted(&self, path: &str) -> Vec<Value> {
            self.shared
                .calls
                .lock()
                .unwrap()
                .iter()
                .filter(|(p, _)| p == path)
                .map(|(_, b)| b.clone())
                .collect()
        }

        /// The end reported for `id`, once there (at most 10 s).
        pub fn end_of(&self, id: &str) -> Value {
            let start = Instant::now();
            loop {
                let ends = self.posted(&format!("end/{id}"));
                if let Some(e) = ends.first() {
                    assert_eq!(ends.len(), 1, "{id} ended more than once: {ends:?}");
                    return e.clone();
                }
                assert!(start.elapsed() < Duration::from_secs(10), "no end for {id}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn the_service_follows_its_sessions_from_the_server() {
    use gatepass_api::pam::{GatewaySession, HostKeyTrust, SessionCredential};
    let server = stand_in::StandIn::start();
    let mut gw = Gateway::start_service(&server.url);
    // It said it started, with its host key.
    let host_key = read(&gw.dir.path().join("gateway_host.pub"));
    assert_eq!(
        server.posted("started"),
        [serde_json::json!({ "host_keys": [host_key.trim()] })]
    );
    let keys = tempfile::tempdir().unwrap();
    let target_key = keygen(keys.path(), "target_key", "ed25519", None);
    let sshd = key_target(&target_key);
    for id in ["s-run", "s-term", "s-lost"] {
        server.add(GatewaySession {
            session_id: id.into(),
            expires_at: (now() + 600) as i64,
            host: "127.0.0.1".into(),
            port: sshd.port,
            username: "root".into(),
            credential: SessionCredential::Key {
                private_key: read(&target_key),
            },
            host_key_trust: HostKeyTrust::Pinned {
                keys: vec![sshd.host_public_key().trim().to_string()],
            },
            allow_forwarding: false,
            recording: None,
        });
    }
    // A certificate account: the target trusts a user CA, and the server
    // signs the key pair the gateway makes for the session.
    let user_ca = keygen(keys.path(), "target_user_ca", "ed25519", None);
    let cert_sshd = Sshd::start(SshdOptions::trusting_user_ca(&pub_path(&user_ca)));
    server.add_signed(
        GatewaySession {
            session_id: "s-cert".into(),
            expires_at: (now() + 600) as i64,
            host: "127.0.0.1".into(),
            port: cert_sshd.port,
            username: "root".into(),
            credential: SessionCredential::Certificate {
                signed_key: String::new(),
            },
            host_key_trust: HostKeyTrust::Pinned {
                keys: vec![cert_sshd.host_public_key().trim().to_string()],
            },
            allow_forwarding: false,
            recording: None,
        },
        &user_ca,
    );
    // The session CA arrives with the sessions, over the long-poll.
    let ca = vec![read(&pub_path(&gw.session_ca)).trim().to_string()];
    server.publish(&["s-run", "s-term", "s-lost", "s-cert"], &ca);

    // A person runs a command and leaves: the session is opened with a
    // fresh public key and reported closed.
    let cert = |id: &str| gw.certificate(id, "root", "+1m");
    let out = run(&mut gw.ssh(Some(&cert("s-run")), "root", &["echo hello"]));
    assert_eq!(ok(&gw, out), "hello\n");
    let opened = server.posted("open/s-run");
    assert!(
        opened[0]["public_key"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519 "),
        "{opened:?}"
    );
    assert_eq!(
        server.end_of("s-run"),
        serde_json::json!({ "reason": "closed" })
    );
    let out = run(&mut gw.ssh(Some(&cert("s-cert")), "root", &["echo by certificate"]));
    assert_eq!(ok(&gw, out), "by certificate\n");
    assert_eq!(
        server.end_of("s-cert"),
        serde_json::json!({ "reason": "closed" })
    );
    // Unknown to the server: refused like any stranger.
    let o = run(&mut gw.ssh(Some(&cert("s-other")), "root", &["echo hello"]));
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));

    // An administrator terminates a running session: it leaves the list
    // and the connection closes within 2 s.
    let ticking = ["while true; do echo tick; sleep 0.3; done"];
    let terminated = Running::start(&mut gw.ssh(Some(&cert("s-term")), "root", &ticking));
    let lost = Running::start(&mut gw.ssh(Some(&cert("s-lost")), "root", &ticking));
    let start = Instant::now();
    while server.posted("open/s-term").is_empty() || server.posted("open/s-lost").is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", gw.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let at = since_epoch();
    server.publish(&["s-run", "s-lost", "s-cert"], &ca);
    let (out, ended) = terminated.finish(Duration::from_secs(10));
    assert!(
        stderr(&out).contains("terminated by an administrator"),
        "{}\n{}",
        stderr(&out),
        gw.log()
    );
    assert!(ended - at < Duration::from_secs(2), "took {:?}", ended - at);
    assert_eq!(
        server.end_of("s-term"),
        serde_json::json!({ "reason": "terminated" })
    );

    // The service stops: the person is told, the session reported lost.
    let o = run(Command::new("kill").args(["-TERM", &gw.child.id().to_string()]));
    assert!(o.status.success());
    let (out, _) = lost.finish(Duration::from_secs(10));
    assert!(
        stderr(&out).contains("gatepass: the gateway is stopping"),
        "{}\n{}",
        stderr(&out),
        gw.log()
    );
    assert_eq!(
        server.end_of("s-lost"),
        serde_json::json!({ "reason": "gateway_lost" })
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", gw.log());
    // Its token is kept alive.
    assert_eq!(server.posted("renew").len(), 1);
    // The token and credentials never reach the log.
    let log = gw.log();
    assert!(
        !log.contains("gw-token") && !log.contains("PRIVATE KEY"),
        "{log}"
    );
}

/// Reads what `s` is sent until the gateway closes it or `limit` passes;
/// true if it was closed.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    let mut buf = [0u8; 512];
    while Instant::now() < end {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn silent_connections_are_closed_at_the_login_grace_time_and_cannot_stop_the_gateway() {
    let mut gw = Gateway::start(&["--login-grace-time", "2"]);
    // An open-file limit the silent connections below are more than: the
    // gateway cannot accept them all at once.
    run(Command::new("prlimit")
        .arg(format!("--pid={}", gw.child.id()))
        .arg("--nofile=64:64"));
    let addr = format!("127.0.0.1:{}", gw.port);
    let started = Instant::now();
    let mut held: Vec<TcpStream> = (0..80)
        .map(|i| TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    // Each is closed once the login grace time (2 s) has passed: those the
    // gateway could not take at first once others went and freed theirs.
    for (i, s) in held.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(30).saturating_sub(started.elapsed())),
            "silent connection {i} still open after {:?}\n{}",
            started.elapsed(),
            gw.log()
        );
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed before the login grace time"
    );
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "the gateway exited when it ran out of descriptors\n{}",
        gw.log()
    );
    assert!(
        gw.log().contains("cannot accept connections"),
        "{}",
        gw.log()
    );
    // And it still serves: a person logs in and runs a command.
    let keys = tempfile::tempdir().unwrap();
    let target_key = keygen(keys.path(), "target_key", "ed25519", None);
    let sshd = key_target(&target_key);
    let entry = SessionEntry::new("s-after", &sshd, "root", key_credential(&target_key));
    gw.set_sessions(&[&entry]);
    let cert = gw.certificate("s-after", "root", "+5m");
    let out = ok(
        &gw,
        run(&mut gw.ssh(Some(&cert), "root", &["echo", "still-here"])),
    );
    assert!(out.contains("still-here"), "{out}");
}
