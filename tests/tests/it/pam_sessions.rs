//! PAM sessions end to end, as an administrator and a person meet them: a
//! real `gatepass-server dev`, a real `gatepass-gateway` enrolled with
//! `setup` and started with `run`, private target sshds on loopback (a key
//! account, a certificate account of the server's own CA, a password
//! account through PAM for a local user the test makes), and the person's
//! `gatepass pam …` commands with the real `ssh`, `scp` and `sftp`.
//!
//! The person has a token whose only policy grants `update` on the access
//! paths and reads of sessions; they never see the accounts' password or
//! private key.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatepass_tests::sshd::{keygen, Sshd};
use gatepass_tests::targets::{
    certificate_target, key_target, password_target, public_line, LocalUser,
};
use gatepass_tests::{bin, run, stop_child, DevServer, CLI_AMBIENT_ENV};
use serde_json::{json, Value};

const PASSWORD: &str = "Tr0ub4dor-pam-sessions";
const PERSON_POLICY: &str = r#"
path "pam/resources/+/accounts/+/access" { capabilities = ["update"] }
path "pam/sessions" { capabilities = ["list"] }
path "pam/sessions/*" { capabilities = ["read"] }
"#;

/// The deployment: server, CA, gateway, and one person with their own
/// HOME and TMPDIR.
pub(crate) struct Pam {
    pub(crate) server: DevServer,
    /// The gateway's files, the account keys, the test's scratch.
    pub(crate) admin: tempfile::TempDir,
    pub(crate) home: tempfile::TempDir,
    pub(crate) tmp: tempfile::TempDir,
    /// The ssh mount's CA public key (user and host certificates).
    pub(crate) ca_pub: String,
    pub(crate) gateway: Option<Child>,
    pub(crate) gateway_port: u16,
    /// The gateway was set up with `--relay`: no port of its own.
    pub(crate) relay: bool,
    pub(crate) person_token: String,
    /// Every API answer the person's token received in this test.
    pub(crate) answers: std::cell::RefCell<Vec<String>>,
}

impl Pam {
    pub(crate) fn start() -> Pam {
        Pam::start_as(false)
    }

    /// With a gateway enrolled with `setup --relay`: users reach it through
    /// the server.
    pub(crate) fn start_relay() -> Pam {
        Pam::start_as(true)
    }

    fn start_as(relay: bool) -> Pam {
        // A relay's connections switch protocols and then carry SSH for
        // as long as the session lasts: a short header read timeout on the
        // server must not cut them (a session below outlasts it).
        let server = if relay {
            DevServer::start_with(&["--header-read-timeout", "2s"], &[])
        } else {
            DevServer::start()
        };
        let mut pam = Pam {
            server,
            admin: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
            tmp: tempfile::tempdir().unwrap(),
            ca_pub: String::new(),
            gateway: None,
            gateway_port: free_port(),
            relay,
            person_token: String::new(),
            answers: Default::default(),
        };
        // The administrator: a CA, a role for the certificate account, a
        // role for the targets' host certificates.
        pam.ca_pub = ok(pam.admin_cli(&[
            "write",
            "--field",
            "public_key",
            "ssh/config/ca",
            "key_type=ssh-ed25519",
        ]));
        ok(pam.admin_cli(&[
            "write",
            "ssh/roles/pam-targets",
            "key_type=ca",
            "allow_user_certificates=true",
            "allowed_users=*",
            "ttl=1h",
        ]));
        // The gateway: a join token, `setup`, `run`.
        let join = ok(pam.admin_cli(&[
            "write",
            "--field",
            "join_token",
            "pam/gateways/join-tokens",
            "ttl=10m",
        ]));
        let dir = pam.admin.path();
        let mut setup = Command::new(bin("gatepass-gateway"));
        setup
            .args(["setup", "--server", &pam.server.addr, "--join-token"])
            .arg(join.trim())
            .arg("--ca-cert")
            .arg(&pam.server.cacert);
        if relay {
            setup.arg("--relay");
        } else {
            setup.args(["--listen", &format!("127.0.0.1:{}", pam.gateway_port)]);
        }
        let setup = run(setup
            .args(["--name", "gw1", "--config"])
            .arg(dir.join("gateway.toml"))
            .arg("--token-file")
            .arg(dir.join("gateway.token"))
            .arg("--host-key")
            .arg(dir.join("gateway_host_key")));
        assert_eq!(setup.0, 0, "gateway setup: {}{}", setup.1, setup.2);
        pam.start_gateway();
        // The person: a token with only their policy.
        ok(pam.admin_cli(&[
            "write",
            "sys/policies/acl/pam-person",
            &format!("policy={PERSON_POLICY}"),
        ]));
        pam.person_token = ok(pam.admin_cli(&[
            "write",
            "--field",
            "token",
            "auth/token/create",
            "policies=pam-person",
            "display_name=alice",
        ]))
        .trim()
        .to_string();
        pam
    }

    pub(crate) fn gateway_log(&self) -> String {
        std::fs::read_to_string(self.admin.path().join("gateway.log")).unwrap_or_default()
    }

    pub(crate) fn start_gateway(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.admin.path().join("gateway.log"))
            .unwrap();
        let child = Command::new(bin("gatepass-gateway"))
            .arg("run")
            .arg("--config")
            .arg(self.admin.path().join("gateway.toml"))
            .env("GATEPASS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.gateway = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        // A relay gateway has no port to try: it says when it is ready.
        let ready = |pam: &Pam| {
            if pam.relay {
                pam.gateway_log().contains("gateway ready")
            } else {
                TcpStream::connect(("127.0.0.1", pam.gateway_port)).is_ok()
            }
        };
        while !ready(self) {
            assert!(
                Instant::now() < deadline,
                "the gateway did not listen:\n{}",
                self.gateway_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn stop_gateway(&mut self) {
        if let Some(mut child) = self.gateway.take() {
            stop_child(&mut child);
        }
    }

    pub(crate) fn cli(&self, token: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin("gatepass"));
        for v in CLI_AMBIENT_ENV {
            c.env_remove(v);
        }
        c.env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join(".config"))
            .env("TMPDIR", self.tmp.path())
            .env("GATEPASS_ADDR", &self.server.addr)
            .env("GATEPASS_CACERT", &self.server.cacert)
            .env("GATEPASS_TOKEN", token)
            .current_dir(self.home.path())
            .stdin(Stdio::null())
            .args(args);
        c
    }

    /// `sh -c SCRIPT` in the person's environment with `token`, the
    /// `gatepass` CLI on the PATH (as a ProxyCommand finds it).
    pub(crate) fn shell(&self, token: &str, script: &str) -> Command {
        let mut c = self.cli(token, &[]);
        let path = format!(
            "{}:{}",
            gatepass_tests::bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env("PATH", path);
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(script);
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        sh.current_dir(self.home.path()).stdin(Stdio::null());
        sh
    }

    pub(crate) fn admin_cli(&self, args: &[&str]) -> Command {
        self.cli(&self.server.token, args)
    }

    pub(crate) fn person_cli(&self, args: &[&str]) -> Command {
        self.cli(&self.person_token, args)
    }

    /// `gatepass pam ssh access --resource R --account A --duration D --
    /// COMMAND`, as the person.
    pub(crate) fn access(
        &self,
        resource: &str,
        account: &str,
        duration: &str,
        command: &[&str],
    ) -> Command {
        let mut args = vec![
            "pam",
            "ssh",
            "access",
            "--resource",
            resource,
            "--account",
            account,
            "--duration",
            duration,
            "--",
        ];
        args.extend(command);
        self.person_cli(&args)
    }

    /// One API call with curl: status and body. The person's answers are
    /// kept for the secret check.
    pub(crate) fn api(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let mut c = Command::new("curl");
        c.args(["-sS", "-X", method, "--cacert"])
            .arg(&self.server.cacert)
            .args(["-H", &format!("X-Vault-Token: {token}")])
            .args(["-w", "\n%{http_code}"]);
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
        }
        c.arg(format!("{}/v1/{path}", self.server.addr));
        let (code, out, err) = run(&mut c);
        assert_eq!(code, 0, "curl {path}: {err}");
        let (text, status) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        if token == self.person_token {
            self.answers.borrow_mut().push(text.to_string());
        }
        (status.parse().unwrap(), text.to_string())
    }

    pub(crate) fn admin_write(&self, path: &str, body: Value) -> Value {
        let (status, text) = self.api("POST", path, &self.server.token, Some(body));
        assert!(status < 300, "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub(crate) fn session(&self, id: &str) -> Value {
        let (status, text) = self.api(
            "GET",
            &format!("pam/sessions/{id}"),
            &self.server.token,
            None,
        );
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()["data"].clone()
    }

    /// The session once `done` holds for it (within 10 s).
    pub(crate) fn session_when(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.session(id);
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "session {id} stayed {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A resource on `sshd` through gw1 whose host key is pinned.
    pub(crate) fn pinned_resource(&self, name: &str, sshd: &Sshd) {
        self.admin_write(
            &format!("pam/resources/{name}"),
            json!({
                "type": "ssh",
                "host": "127.0.0.1",
                "port": sshd.port,
                "gateway": "gw1",
                "known_hosts": [sshd.host_public_key().trim()],
            }),
        );
    }

    /// `GET pam/gateways/gw1` as the administrator.
    fn session_gateway_info(&self) -> Value {
        let (status, text) = self.api("GET", "pam/gateways/gw1", &self.server.token, None);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()["data"].clone()
    }

    pub(crate) fn audit(&self) -> String {
        std::fs::read_to_string(self.server.data_dir.join("audit.log")).unwrap_or_default()
    }
}

impl Drop for Pam {
    fn drop(&mut self) {
        self.stop_gateway();
    }
}

/// Below the ephemeral range (see [`gatepass_tests::free_port`]): a port
/// from `bind(0)` can be taken by a client connection before the gateway
/// binds it.
pub(crate) use gatepass_tests::free_port;

pub(crate) fn ok(mut cmd: impl std::borrow::BorrowMut<Command>) -> String {
    let cmd = cmd.borrow_mut();
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "{cmd:?} failed\nstdout: {out}\nstderr: {err}");
    out
}

/// The session ID the CLI announced on stderr.
pub(crate) fn session_id_in(stderr: &str) -> String {
    stderr
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .find(|w| uuid::Uuid::parse_str(w).is_ok())
        .unwrap_or_else(|| panic!("no session ID in {stderr:?}"))
        .to_string()
}

/// The three targets and their resources and accounts: `keys` (root by
/// key, forwarding allowed), `certs` (root by a certificate of the ssh
/// mount's CA, host trusted through the mount's host certificates) and
/// `passwords` (a local user by password through PAM).
struct Targets {
    key_sshd: Sshd,
    cert_sshd: Sshd,
    password_sshd: Sshd,
    user: LocalUser,
    account_key: PathBuf,
}

fn targets(pam: &Pam) -> Targets {
    let dir = pam.admin.path();
    let account_key = keygen(dir, "account_key", "ed25519", None);
    let key_sshd = key_target(&public_line(&account_key));
    pam.pinned_resource("keys", &key_sshd);
    pam.admin_write(
        "pam/resources/keys/accounts/root",
        json!({
            "auth_method": "key",
            "username": "root",
            "private_key": std::fs::read_to_string(&account_key).unwrap(),
            "max_duration": "1h",
            "allow_forwarding": true,
        }),
    );

    // The certificate target trusts the mount's CA for users and presents
    // a host certificate the mount signed.
    ok(pam.admin_cli(&[
        "write",
        "ssh/roles/pam-hosts",
        "key_type=ca",
        "allow_host_certificates=true",
        "allowed_domains=127.0.0.1",
        "allow_bare_domains=true",
    ]));
    let make_host_cert = |sshd: &Sshd| -> PathBuf {
        let signed = ok(pam.admin_cli(&[
            "write",
            "--field",
            "signed_key",
            "ssh/sign/pam-hosts",
            "cert_type=host",
            "valid_principals=127.0.0.1",
            &format!(
                "public_key={}",
                std::fs::read_to_string(&sshd.host_key_pub).unwrap().trim()
            ),
        ]));
        sshd.write_file("host_key-cert.pub", &signed)
    };
    let cert_sshd = certificate_target(&pam.ca_pub, Some(&make_host_cert));
    pam.admin_write(
        "pam/resources/certs",
        json!({
            "host": "127.0.0.1",
            "port": cert_sshd.port,
            "gateway": "gw1",
            "host_ca_mount": "ssh",
        }),
    );
    pam.admin_write(
        "pam/resources/certs/accounts/root",
        json!({
            "auth_method": "certificate",
            "username": "root",
            "ca_mount": "ssh",
            "ca_role": "pam-targets",
            "max_duration": "1h",
        }),
    );

    // An account and a PAM service of this test's own: the tests of this
    // file run side by side, and each removes its account and PAM file
    // when it ends (a shared one went from under another test's login).
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pid = std::process::id();
    let user = LocalUser::create(&format!("gp-pam-e2e-{pid}-{n}"), PASSWORD);
    let password_sshd = password_target(&format!("gatepass-test-pam-sessions-{pid}-{n}"), vec![]);
    pam.pinned_resource("passwords", &password_sshd);
    pam.admin_write(
        "pam/resources/passwords/accounts/ops",
        json!({
            "auth_method": "password",
            "username": user.name,
            "password": PASSWORD,
            "max_duration": "30m",
        }),
    );
    Targets {
        key_sshd,
        cert_sshd,
        password_sshd,
        user,
        account_key,
    }
}

#[test]
fn each_account_kind_runs_a_command_through_gatepass_pam_ssh_access() {
    let pam = Pam::start();
    let t = targets(&pam);
    for (resource, account, login) in [
        ("keys", "root", "root"),
        ("certs", "root", "root"),
        ("passwords", "ops", t.user.name.as_str()),
    ] {
        // $ gatepass pam ssh access --resource keys --account root --duration 5m -- echo hello
        let (code, out, err) =
            run(&mut pam.access(resource, account, "5m", &["echo hello; id -un"]));
        assert_eq!(
            code,
            0,
            "{resource}/{account}: {out}{err}\n--- gateway ---\n{}",
            pam.gateway_log()
        );
        assert_eq!(out, format!("hello\n{login}\n"), "{resource}/{account}");
        let id = session_id_in(&err);
        // The one connection closed: the gateway reports it, the session ends.
        let s = pam.session_when(&id, |s| s["state"] == "ended");
        assert_eq!(s["end_reason"], "closed", "{s}");
        assert_eq!(s["resource"], resource);
        assert_eq!(s["account"], account);
        assert_eq!(s["user"].as_str().unwrap_or_default(), "token-alice", "{s}");
        assert_eq!(s["gateway"], "gw1");
    }
    assert!(t.key_sshd.log().contains("Accepted publickey for root"));
    assert!(t.cert_sshd.log().contains("Accepted publickey for root"));
    assert!(t
        .password_sshd
        .log()
        .contains(&format!("Accepted password for {}", t.user.name)));

    // The audit log has the story of each session, never the credential.
    let audit = pam.audit();
    for event in [
        "access_granted",
        "credential_fetched",
        "session_started",
        "session_ended",
    ] {
        assert!(audit.contains(event), "no {event} in the audit log");
    }
    assert!(!audit.contains(PASSWORD));
    assert!(!pam.gateway_log().contains(PASSWORD));
    let key_text = std::fs::read_to_string(&t.account_key).unwrap();
    let key_body = key_text.lines().nth(1).unwrap();
    assert!(!audit.contains(key_body));
}

#[test]
fn scp_sftp_and_ssh_l_reach_a_session_through_its_ssh_config_block() {
    let pam = Pam::start();
    let t = targets(&pam);
    // $ gatepass pam ssh config --resource keys --account root --duration 10m >> ~/.ssh/config
    let (block, _) = config_block(&pam);
    assert!(block.contains("Host gatepass-keys-root"), "{block}");
    let config = pam.home.path().join("ssh_config");
    std::fs::write(&config, &block).unwrap();
    let opts = |c: &mut Command| {
        c.arg("-F")
            .arg(&config)
            .args(["-o", "BatchMode=yes", "-o", "IdentityAgent=none"])
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null());
    };

    let out = ok({
        let mut c = Command::new("ssh");
        opts(&mut c);
        c.args(["gatepass-keys-root", "echo plain-ssh"]);
        c
    });
    assert_eq!(out, "plain-ssh\n");

    // 1 MiB of random bytes up with scp and back down with sftp.
    let work = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; 1 << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    let src = work.path().join("random.bin");
    std::fs::write(&src, &data).unwrap();
    let up = work.path().join("up.bin");
    ok({
        let mut c = Command::new("scp");
        opts(&mut c);
        c.arg("-q")
            .arg(&src)
            .arg(format!("gatepass-keys-root:{}", up.display()));
        c
    });
    assert!(std::fs::read(&up).unwrap() == data, "scp copy differs");
    let down = work.path().join("down.bin");
    let batch = work.path().join("batch");
    std::fs::write(&batch, format!("get {} {}\n", up.display(), down.display())).unwrap();
    ok({
        let mut c = Command::new("sftp");
        opts(&mut c);
        c.args(["-q", "-b"]).arg(&batch).arg("gatepass-keys-root");
        c
    });
    assert!(std::fs::read(&down).unwrap() == data, "sftp copy differs");

    // `ssh -L` to an echo server beside the target.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in echo.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut r = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut conn);
            });
        }
    });
    let local_port = free_port();
    let mut forward = {
        let mut c = Command::new("ssh");
        opts(&mut c);
        c.args([
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            &format!("127.0.0.1:{local_port}:127.0.0.1:{echo_port}"),
            "gatepass-keys-root",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match TcpStream::connect(("127.0.0.1", local_port)) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("no forward: {e}\n{}", pam.gateway_log()),
        }
    };
    use std::io::Write;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"through the gateway\n").unwrap();
    let mut back = [0u8; 20];
    conn.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"through the gateway\n");
    let _ = forward.kill();
    let _ = forward.wait();
    drop(t);
}

#[test]
fn sessions_end_on_time_on_terminate_and_refuse_a_changed_host_key() {
    let pam = Pam::start();
    let t = targets(&pam);

    // A 10 s session whose command would run for a minute is closed
    // within 1 s of its end.
    let started = Instant::now();
    let (code, _out, err) = run(&mut pam.access("keys", "root", "10s", &["sleep 60"]));
    let closed_at = unix_now();
    let took = started.elapsed();
    assert_ne!(code, 0);
    assert!(err.contains("ended"), "the person is told: {err}");
    let id = session_id_in(&err);
    let s = pam.session(&id);
    assert_eq!(s["state"], "ended", "{s}");
    assert_eq!(s["end_reason"], "expired", "{s}");
    let end = unix_of(s["expires_at"].as_str().unwrap());
    assert!(
        closed_at >= end as f64 && closed_at < end as f64 + 1.0,
        "closed at {closed_at}, the session ended at {end}"
    );
    assert!(took >= Duration::from_secs(9), "closed after {took:?}");

    // An administrator's terminate closes a live session within 2 s.
    let (mut live, id) = live_session(&pam);
    let asked = Instant::now();
    // $ gatepass pam sessions terminate ID
    ok(pam.admin_cli(&["pam", "sessions", "terminate", &id]));
    let status = wait_exit(&mut live, Duration::from_secs(5));
    assert!(!status.success());
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "closed {:?} after terminate",
        asked.elapsed()
    );
    let s = pam.session(&id);
    assert_eq!(s["end_reason"], "terminated", "{s}");
    let shown = ok(pam.admin_cli(&["pam", "sessions", "show", &id]));
    assert!(shown.contains("terminated"), "{shown}");

    // The target's host key changes: the gateway refuses to log in, says
    // why, and the refusal is in the audit log.
    let other = keygen(pam.admin.path(), "not_the_target", "ed25519", None);
    pam.admin_write(
        "pam/resources/keys",
        json!({
            "host": "127.0.0.1",
            "port": t.key_sshd.port,
            "gateway": "gw1",
            "known_hosts": [public_line(&other).trim()],
        }),
    );
    let (code, out, err) = run(&mut pam.access("keys", "root", "5m", &["echo hello"]));
    assert_ne!(code, 0);
    assert!(!out.contains("hello"));
    assert!(err.contains("host key"), "{err}");
    let id = session_id_in(&err);
    let s = pam.session_when(&id, |s| s["state"] == "ended");
    assert_eq!(s["end_reason"], "failed", "{s}");
    // Nothing passed: its recording is whole and empty, not cut.
    let (_, out) = crate::pam_recording::verify_until(&pam, &id, |code, _| code == 0);
    assert!(out.contains("whole: 0 chunks"), "{out}");
    assert!(
        s["end_detail"]
            .as_str()
            .unwrap_or_default()
            .contains("host key"),
        "{s}"
    );
    let audit = pam.audit();
    assert!(
        audit
            .lines()
            .any(|l| l.contains(&id) && l.contains("host key")),
        "no audit event for the refused host key"
    );
}

/// `gatepass pam ssh config` for root on the `keys` target, 10 minutes:
/// the ssh_config block and its session's ID.
pub(crate) fn config_block(pam: &Pam) -> (String, String) {
    let block = ok(pam.person_cli(&[
        "pam",
        "ssh",
        "config",
        "--resource",
        "keys",
        "--account",
        "root",
        "--duration",
        "10m",
    ]));
    let id = block
        .split_whitespace()
        .map(|w| w.trim_end_matches(':'))
        .find(|w| uuid::Uuid::parse_str(w).is_ok())
        .unwrap()
        .to_string();
    (block, id)
}

/// `gatepass pam ssh access … -- sleep 60` on the `keys` target, running,
/// and its session once active.
pub(crate) fn live_session(pam: &Pam) -> (Child, String) {
    let live = pam
        .access("keys", "root", "5m", &["sleep 60"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (live, wait_for_active(pam))
}

/// The one session the person holds that a gateway connection made active.
pub(crate) fn wait_for_active(pam: &Pam) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = ok(pam.admin_cli(&[
            "pam", "sessions", "list", "--state", "active", "--format", "json",
        ]));
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let ids: Vec<String> = match &v {
            Value::Array(a) => a
                .iter()
                .filter_map(|s| {
                    s.as_str()
                        .or_else(|| s["session_id"].as_str())
                        .map(String::from)
                })
                .collect(),
            Value::Object(o) => o
                .get("keys")
                .and_then(|k| k.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            _ => vec![],
        };
        if let Some(id) = ids.first() {
            return id.clone();
        }
        assert!(Instant::now() < deadline, "no active session: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[allow(clippy::disallowed_methods)]
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Unix seconds of an RFC 3339 time, as `date` reads it.
fn unix_of(rfc3339: &str) -> i64 {
    let (code, out, err) = run(Command::new("date").args(["-u", "-d", rfc3339, "+%s"]));
    assert_eq!(code, 0, "{err}");
    out.trim().parse().unwrap()
}

pub(crate) fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A gateway whose long-polls last 2 s instead of 30, so that the one in
/// flight when something changes is soon over, with the `keys` target.
fn pam_with_short_polls() -> (Pam, Sshd) {
    let mut pam = Pam::start();
    pam.stop_gateway();
    let path = pam.admin.path().join("gateway.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    assert!(cfg.contains("wait_seconds = 30\n"), "{cfg}");
    std::fs::write(
        &path,
        cfg.replacen("wait_seconds = 30\n", "wait_seconds = 2\n", 1),
    )
    .unwrap();
    pam.start_gateway();
    let target = key_account(&pam);
    (pam, target)
}

#[test]
fn a_gateway_whose_token_is_refused_ends_its_sessions() {
    let (pam, _target) = pam_with_short_polls();
    let (mut live, id) = live_session(&pam);

    // The gateway's token is revoked (as when the gateway is enrolled
    // again elsewhere): the server can no longer tell it of a terminate,
    // so it closes what it runs instead of running it to its end.
    let token = std::fs::read_to_string(pam.admin.path().join("gateway.token")).unwrap();
    // $ gatepass write auth/token/revoke token=…
    ok(pam.admin_cli(&[
        "write",
        "auth/token/revoke",
        &format!("token={}", token.trim()),
    ]));
    let status = wait_exit(&mut live, Duration::from_secs(15));
    assert!(!status.success());
    let log = pam.gateway_log();
    assert!(
        log.contains("the server refuses this gateway's token"),
        "{log}"
    );
    // New sessions are refused.
    let (code, out, err) = run(&mut pam.access("keys", "root", "5m", &["echo hello"]));
    assert_ne!(code, 0, "{out}{err}");
    assert!(!out.contains("hello"));
    assert_eq!(
        pam.session(&id)["state"],
        "active",
        "nothing told the server"
    );
}

/// The session is ended on record (`gateway_lost`) at once, and its
/// connection closed within 15 s.
fn ended_as_gateway_lost(pam: &Pam, id: &str, live: &mut Child) {
    let s = pam.session(id);
    assert_eq!(s["state"], "ended", "{s}");
    assert_eq!(s["end_reason"], "gateway_lost", "{s}");
    let status = wait_exit(live, Duration::from_secs(15));
    assert!(!status.success());
}

#[test]
fn deleting_a_gateway_ends_the_sessions_it_was_running() {
    let (pam, _target) = pam_with_short_polls();
    let (mut live, id) = live_session(&pam);

    // $ gatepass delete pam/gateways/gw1
    ok(pam.admin_cli(&["delete", "pam/gateways/gw1"]));
    // The record says so at once, and the connection is closed.
    ended_as_gateway_lost(&pam, &id, &mut live);
}

#[test]
fn enrolling_a_gateway_in_anothers_place_ends_the_sessions_the_other_ran() {
    let (pam, _target) = pam_with_short_polls();
    let (mut live, id) = live_session(&pam);

    // $ gatepass-gateway setup --name gw1 --replace … (on another machine)
    let join = ok(pam.admin_cli(&[
        "write",
        "--field",
        "join_token",
        "pam/gateways/join-tokens",
        "ttl=10m",
    ]));
    let other = tempfile::tempdir().unwrap();
    let (code, out, err) = run(Command::new(bin("gatepass-gateway"))
        .args(["setup", "--server", &pam.server.addr, "--join-token"])
        .arg(join.trim())
        .arg("--ca-cert")
        .arg(&pam.server.cacert)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--name", "gw1", "--replace", "--config"])
        .arg(other.path().join("gateway.toml"))
        .arg("--token-file")
        .arg(other.path().join("gateway.token"))
        .arg("--host-key")
        .arg(other.path().join("gateway_host_key")));
    assert_eq!(code, 0, "{out}{err}");
    ended_as_gateway_lost(&pam, &id, &mut live);
}

#[test]
fn refusals_are_clear_400_403_404_and_a_stopped_gateway_is_named() {
    let mut pam = Pam::start();
    let t = targets(&pam);
    let key = keygen(pam.admin.path(), "person", "ed25519", None);
    let public_key = public_line(&key);
    let access = |path: &str, token: &str, duration: &str| {
        pam.api(
            "POST",
            path,
            token,
            Some(json!({ "duration": duration, "public_key": public_key.trim() })),
        )
    };
    let person = pam.person_token.clone();
    let (status, text) = access("pam/resources/passwords/accounts/ops/access", &person, "2h");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("max_duration"), "{text}");
    let (status, _) = access("pam/resources/nope/accounts/ops/access", &person, "5m");
    assert_eq!(status, 404);
    let (status, _) = access(
        "pam/resources/passwords/accounts/nope/access",
        &person,
        "5m",
    );
    assert_eq!(status, 404);
    let stranger = ok(pam.admin_cli(&[
        "write",
        "--field",
        "token",
        "auth/token/create",
        "policies=default",
    ]));
    let (status, _) = access(
        "pam/resources/passwords/accounts/ops/access",
        stranger.trim(),
        "5m",
    );
    assert_eq!(status, 403);
    // The CLI says the same in words.
    let (code, _, err) = run(&mut pam.access("passwords", "ops", "2h", &["true"]));
    assert_ne!(code, 0);
    assert!(err.contains("max_duration"), "{err}");

    // The gateway stops: the CLI names it and gives up within 5 s.
    pam.stop_gateway();
    let started = Instant::now();
    let (code, _, err) = run(&mut pam.access("keys", "root", "5m", &["echo hello"]));
    assert_ne!(code, 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.contains("gateway") && err.contains(&pam.gateway_port.to_string()),
        "{err}"
    );
    drop(t);
}

#[test]
fn the_person_never_holds_the_password_or_private_key() {
    let pam = Pam::start();
    let t = targets(&pam);
    let key_text = std::fs::read_to_string(&t.account_key).unwrap();
    // Every OpenSSH ed25519 key file starts with the same base64 line
    // (format, cipher "none", key type): the probes are the key's own bytes
    // from the lines after it, each within one line, so that they are found
    // however the text was wrapped or escaped.
    let lines: Vec<&str> = key_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .skip(1)
        .collect();
    assert!(lines.len() >= 3, "{key_text}");
    let probes: Vec<&str> = lines
        .iter()
        .filter(|l| l.len() >= 40)
        .map(|l| &l[5..35])
        .collect();
    // The check finds the key as a file holds it and as JSON carries it.
    let escaped = serde_json::to_string(&key_text).unwrap();
    assert!(probes.len() >= 2 && probes.iter().all(|p| escaped.contains(p)));
    let secret_in = |what: &str, text: &str| {
        assert!(!text.contains(PASSWORD), "the password is in {what}");
        for p in &probes {
            assert!(!text.contains(p), "the private key is in {what}");
        }
    };
    let tmp_files = |pam: &Pam| -> Vec<(PathBuf, Vec<u8>)> {
        let mut found = vec![];
        for root in [pam.home.path(), pam.tmp.path()] {
            walk(root, &mut found);
        }
        found
    };

    // While a session runs, and after: the CLI's output and every file it
    // wrote.
    for (resource, account) in [("passwords", "ops"), ("keys", "root")] {
        let child = pam
            .access(resource, account, "5m", &["sleep 2; echo done"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        for (path, bytes) in tmp_files(&pam) {
            secret_in(
                &path.display().to_string(),
                &String::from_utf8_lossy(&bytes),
            );
        }
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        secret_in("the CLI's output", &String::from_utf8_lossy(&o.stdout));
        secret_in("the CLI's errors", &String::from_utf8_lossy(&o.stderr));
    }
    let config = ok(pam.person_cli(&[
        "pam",
        "ssh",
        "config",
        "--resource",
        "passwords",
        "--account",
        "ops",
    ]));
    secret_in("the ssh config block", &config);
    for (path, bytes) in tmp_files(&pam) {
        secret_in(
            &path.display().to_string(),
            &String::from_utf8_lossy(&bytes),
        );
    }

    // Every API answer the person's token can get about these accounts
    // and sessions, and the administrator's reads too.
    let person = pam.person_token.clone();
    let root = pam.server.token.clone();
    for token in [&person, &root] {
        for (method, path) in [
            ("GET", "pam/resources/passwords/accounts/ops"),
            ("GET", "pam/resources/keys/accounts/root"),
            ("LIST", "pam/resources/passwords/accounts"),
            ("GET", "pam/resources/passwords"),
            ("LIST", "pam/sessions"),
        ] {
            let (_, text) = pam.api(method, path, token, None);
            secret_in(path, &text);
        }
    }
    let key = keygen(pam.admin.path(), "person", "ed25519", None);
    let (status, text) = pam.api(
        "POST",
        "pam/resources/passwords/accounts/ops/access",
        &person,
        Some(json!({ "duration": "5m", "public_key": public_line(&key).trim() })),
    );
    assert_eq!(status, 200, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["data"]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = pam.api("GET", &format!("pam/sessions/{id}"), &person, None);
    assert_eq!(status, 200);
    let answers = pam.answers.borrow();
    assert!(answers.len() >= 7, "{answers:?}");
    for a in answers.iter() {
        secret_in("an API answer", a);
    }
}

fn walk(dir: &Path, found: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, found);
        } else if let Ok(bytes) = std::fs::read(&p) {
            found.push((p, bytes));
        }
    }
}

#[test]
fn open_sessions_outlive_a_lost_server_and_a_gateway_restart_ends_them() {
    let mut pam = Pam::start();
    let t = targets(&pam);

    // A gateway restart ends the session it was serving, with the reason.
    let (mut live, id) = live_session(&pam);
    pam.stop_gateway();
    let status = wait_exit(&mut live, Duration::from_secs(10));
    assert!(!status.success());
    let mut err = String::new();
    live.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("gateway"), "{err}");
    pam.start_gateway();
    let s = pam.session_when(&id, |s| s["state"] == "ended");
    assert_eq!(s["state"], "ended", "{s}");
    assert_eq!(s["end_reason"], "gateway_lost", "{s}");

    // The server goes away while a session runs: the session runs on, and
    // a session granted before but not yet used is refused, saying why.
    let (block, _) = config_block(&pam);
    let config = pam.home.path().join("ssh_config");
    std::fs::write(&config, &block).unwrap();
    let mut live = pam
        .access("keys", "root", "5m", &["sleep 3; echo still-here"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_active(&pam);
    pam.server.stop();
    let status = wait_exit(&mut live, Duration::from_secs(15));
    let mut out = String::new();
    live.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{out}\n{}", pam.gateway_log());
    assert_eq!(out, "still-here\n");
    let started = Instant::now();
    let (code, out, err) = run(Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args(["-o", "BatchMode=yes", "gatepass-keys-root", "echo hello"])
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null()));
    assert_ne!(code, 0);
    assert!(!out.contains("hello"));
    assert!(err.contains("cannot be reached"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    drop(t);
}

/// The TCP sockets a process listens on, from /proc: its socket inodes
/// that /proc/net/tcp{,6} list in state LISTEN (0A).
fn listening_sockets(pid: u32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    assert!(!inodes.is_empty(), "the gateway holds no socket at all");
    let mut listening = vec![];
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for row in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let cols: Vec<&str> = row.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" && inodes.iter().any(|i| i == cols[9]) {
                listening.push(cols[1].to_string());
            }
        }
    }
    listening
}

/// A key account on its own target, as `targets` makes it, for the relay
/// tests that need only one.
pub(crate) fn key_account(pam: &Pam) -> Sshd {
    let account_key = keygen(pam.admin.path(), "account_key", "ed25519", None);
    let sshd = key_target(&public_line(&account_key));
    pam.pinned_resource("keys", &sshd);
    pam.admin_write(
        "pam/resources/keys/accounts/root",
        json!({
            "auth_method": "key",
            "username": "root",
            "private_key": std::fs::read_to_string(&account_key).unwrap(),
            "max_duration": "1h",
        }),
    );
    sshd
}

#[test]
fn a_gateway_without_an_inbound_port_serves_access_ssh_scp_and_terminate_through_the_server() {
    let pam = Pam::start_relay();
    // `setup --relay` wrote no listen address and `run` listens on no port.
    let config = std::fs::read_to_string(pam.admin.path().join("gateway.toml")).unwrap();
    assert!(config.contains("mode = \"relay\""), "{config}");
    assert!(!config.contains("listen"), "{config}");
    let pid = pam.gateway.as_ref().unwrap().id();
    assert_eq!(listening_sockets(pid), Vec::<String>::new());
    let gw = pam.session_gateway_info();
    assert_eq!(gw["relay"], true, "{gw}");
    let sshd = key_account(&pam);

    // $ gatepass pam ssh access --resource keys --account root --duration 5m -- echo hello
    let (code, out, err) = run(&mut pam.access("keys", "root", "5m", &["echo hello"]));
    assert_eq!(
        code,
        0,
        "{out}{err}\n--- gateway ---\n{}",
        pam.gateway_log()
    );
    assert_eq!(out, "hello\n");
    let id = session_id_in(&err);
    let s = pam.session_when(&id, |s| s["state"] == "ended");
    assert_eq!(s["end_reason"], "closed", "{s}");
    assert!(sshd.log().contains("Accepted publickey for root"));
    // A session longer than the server's header read timeout (2 s here),
    // its output coming a line a second through both relayed connections.
    let mut long = pam
        .access(
            "keys",
            "root",
            "5m",
            &["for i in 1 2 3 4; do echo $i; sleep 1; done"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while long.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = long.kill();
            panic!(
                "a 4 s session still running after 30 s\n--- gateway ---\n{}",
                pam.gateway_log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let long = long.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&long.stdout);
    assert!(
        long.status.success(),
        "{out}{}\n--- gateway ---\n{}",
        String::from_utf8_lossy(&long.stderr),
        pam.gateway_log()
    );
    assert_eq!(out, "1\n2\n3\n4\n");

    // $ gatepass pam ssh config … >> ~/.ssh/config; then plain ssh and scp,
    // with the person's token in their environment as usual.
    let (block, _) = config_block(&pam);
    assert!(block.contains("ProxyCommand "), "{block}");
    assert!(
        block.contains("HostKeyAlias gatepass-gateway-gw1"),
        "{block}"
    );
    let ssh_config = pam.home.path().join("ssh_config");
    std::fs::write(&ssh_config, &block).unwrap();
    let plain = |program: &str| {
        let mut c = Command::new(program);
        for v in CLI_AMBIENT_ENV {
            c.env_remove(v);
        }
        c.arg("-F")
            .arg(&ssh_config)
            .args(["-o", "BatchMode=yes", "-o", "IdentityAgent=none"])
            .env_remove("SSH_AUTH_SOCK")
            .env("HOME", pam.home.path())
            .env("GATEPASS_TOKEN", &pam.person_token)
            .stdin(Stdio::null());
        c
    };
    let out = ok({
        let mut c = plain("ssh");
        c.args(["gatepass-keys-root", "echo plain-ssh"]);
        c
    });
    assert_eq!(out, "plain-ssh\n");
    let work = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let src = work.path().join("data.bin");
    std::fs::write(&src, &data).unwrap();
    let up = work.path().join("up.bin");
    ok({
        let mut c = plain("scp");
        c.arg("-q")
            .arg(&src)
            .arg(format!("gatepass-keys-root:{}", up.display()));
        c
    });
    assert!(std::fs::read(&up).unwrap() == data, "scp copy differs");
    // Once the block's session is terminated, the relay refuses it.
    let config_session = session_id_in(&block.replace(':', " "));
    ok(pam.admin_cli(&["pam", "sessions", "terminate", &config_session]));
    let (code, _, err) = run(plain("ssh").args(["gatepass-keys-root", "echo plain-ssh"]));
    assert_ne!(code, 0);
    assert!(err.contains("has ended"), "{err}");

    // An administrator's terminate closes a relayed session within 2 s.
    let (mut live, id) = live_session(&pam);
    let asked = Instant::now();
    ok(pam.admin_cli(&["pam", "sessions", "terminate", &id]));
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = live.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = live.kill();
            let mut err = String::new();
            let _ = live.stderr.take().unwrap().read_to_string(&mut err);
            panic!(
                "still running 5 s after terminate: {}\n{err}\n--- gateway ---\n{}",
                pam.session(&id),
                pam.gateway_log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "closed {:?} after terminate",
        asked.elapsed()
    );
    assert_eq!(pam.session(&id)["end_reason"], "terminated");
    // Relayed connections are audited as any request.
    let audit = pam.audit();
    assert!(
        audit.contains("pam/gateway/self/relay/"),
        "gateway's relay not audited"
    );
    assert!(
        audit.contains(&format!("pam/sessions/{id}/relay")),
        "user's relay not audited"
    );
}

#[test]
fn a_relay_is_only_for_its_sessions_owner_and_a_stopped_relay_gateway_is_named() {
    let mut pam = Pam::start_relay();
    let _sshd = key_account(&pam);
    let key = keygen(pam.admin.path(), "person", "ed25519", None);
    let (status, text) = pam.api(
        "POST",
        "pam/resources/keys/accounts/root/access",
        &pam.person_token.clone(),
        Some(json!({ "duration": "5m", "public_key": public_line(&key).trim() })),
    );
    assert_eq!(status, 200, "{text}");
    let access: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(access["data"]["relay"], true, "{access}");
    assert_eq!(access["data"]["gateway"], "gw1", "{access}");
    let id = access["data"]["session_id"].as_str().unwrap().to_string();

    // Bob may ask for sessions too, but not relay to Alice's.
    let bob = ok(pam.admin_cli(&[
        "write",
        "--field",
        "token",
        "auth/token/create",
        "policies=pam-person",
        "display_name=bob",
    ]));
    let (code, _, err) = run(&mut pam.cli(bob.trim(), &["pam", "ssh", "relay", &id]));
    assert_ne!(code, 0);
    assert!(
        err.contains("403") || err.contains("permission denied"),
        "{err}"
    );
    // Without a token, or without asking to upgrade, nothing is relayed.
    let upgrade = |token: Option<&str>, headers: bool| {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--http1.1",
            "-X",
            "POST",
            "--max-time",
            "20",
            "--cacert",
        ])
        .arg(&pam.server.cacert)
        .args(["-o", "/dev/null", "-w", "%{http_code}"]);
        if let Some(t) = token {
            c.args(["-H", &format!("X-Vault-Token: {t}")]);
        }
        if headers {
            c.args(["-H", "Connection: Upgrade", "-H", "Upgrade: gatepass-relay"]);
        }
        c.arg(format!("{}/v1/pam/sessions/{id}/relay", pam.server.addr));
        run(&mut c).1
    };
    assert_eq!(upgrade(None, true), "403");
    assert_eq!(upgrade(Some(bob.trim()), true), "403");
    assert_eq!(upgrade(Some(&pam.person_token), false), "400");

    // The gateway stops: the person's relay gives up within 15 s and names it.
    pam.stop_gateway();
    let started = Instant::now();
    let (code, _, err) = run(&mut pam.person_cli(&["pam", "ssh", "relay", &id]));
    assert_ne!(code, 0);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.contains("gateway gw1 did not pick up the relayed connection"),
        "{err}"
    );
    // And `pam ssh access` shows ssh the same message through its ProxyCommand.
    let started = Instant::now();
    let (code, _, err) = run(&mut pam.access("keys", "root", "5m", &["echo hello"]));
    assert_ne!(code, 0);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(err.contains("gateway gw1 did not pick up"), "{err}");
}

/// The web UI's Access button for an account behind a relay gateway: the
/// page's `ssh` command, run as shown with the person's own CLI token,
/// connects. The UI asked for the session with its session's token, which
/// stays in the browser; the token the person signed in with (or any
/// token of theirs, for a password sign-in) relays, and another person's
/// does not.
#[test]
fn a_session_granted_in_the_web_ui_is_relayed_by_the_persons_own_cli() {
    const CAROL_PASSWORD: &str = "carol-relay-password-77";
    let pam = Pam::start_relay();
    let sshd = key_account(&pam);
    let key = keygen(pam.home.path(), "person", "ed25519", None);
    // People who use the web UI may also see the resources, to find the
    // Access button.
    ok(pam.admin_cli(&[
        "write",
        "sys/policies/acl/pam-browse",
        r#"policy=path "pam/resources" { capabilities = ["list"] }
path "pam/resources/*" { capabilities = ["read", "list"] }"#,
    ]));
    for name in ["carol", "dave"] {
        ok(pam.admin_cli(&[
            "write",
            &format!("auth/userpass/users/{name}"),
            &format!("password={CAROL_PASSWORD}"),
            "token_policies=pam-person,pam-browse",
        ]));
    }
    let login = |name: &str| {
        ok(pam.cli(
            "",
            &[
                "write",
                "--field",
                "token",
                &format!("auth/userpass/login/{name}"),
                &format!("password={CAROL_PASSWORD}"),
            ],
        ))
        .trim()
        .to_string()
    };
    let token_for = |name: &str| {
        ok(pam.admin_cli(&[
            "write",
            "--field",
            "token",
            "auth/token/create",
            "policies=pam-person,pam-browse",
            &format!("display_name={name}"),
        ]))
        .trim()
        .to_string()
    };
    let (erin, bob) = (token_for("erin"), token_for("bob"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token_sign_in = vec![("method", "token"), ("token", erin.as_str())];
    let password_sign_in = vec![
        ("method", "userpass"),
        ("username", "carol"),
        ("password", CAROL_PASSWORD),
    ];
    // Carol's CLI logs in on its own: a token of her own, not the UI's.
    let (carol, dave) = (login("carol"), login("dave"));
    let mut carols_command = String::new();
    for (form, own, other) in [
        (token_sign_in, erin.clone(), bob.clone()),
        (password_sign_in, carol, dave),
    ] {
        let page = rt.block_on(ui_access(&pam, &form, public_line(&key).trim()));
        let field = |id: &str| crate::web_ui::element_text(&page, id);
        let id = field("granted-session");
        std::fs::write(
            pam.home.path().join(format!("gatepass-{id}-cert.pub")),
            field("cert"),
        )
        .unwrap();
        std::fs::write(
            pam.home.path().join(format!("gatepass-{id}-known_hosts")),
            field("kh"),
        )
        .unwrap();
        let command = field("ssh-command")
            .replace("&#x27;", "'")
            .replace("&#39;", "'")
            .replacen(
                "ssh -i ~/.ssh/id_ed25519",
                &format!("ssh -o BatchMode=yes -i {}", key.display()),
                1,
            );
        assert!(
            command.contains("ProxyCommand='gatepass pam ssh relay"),
            "{command}"
        );
        // Another person's token is refused the relay.
        let (code, out, err) = run(&mut pam.shell(&other, &format!("{command} echo UI-RELAY-OK")));
        assert!(code != 0 && !out.contains("UI-RELAY-OK"), "{out}{err}");
        assert!(
            err.contains("permission denied") || err.contains("403"),
            "{err}"
        );
        let (code, out, err) = run(&mut pam.shell(&own, &format!("{command} echo UI-RELAY-OK")));
        assert_eq!(
            (code, out.as_str()),
            (0, "UI-RELAY-OK\n"),
            "{command}: {err}\n--- gateway ---\n{}",
            pam.gateway_log()
        );
        carols_command = command;
    }
    // Another user made under carol's name after hers was deleted is
    // someone else: their token does not relay her session (refused as
    // another person's, 403, before the session's end is looked at: the
    // same token of the old carol would be told it has ended, 400).
    ok(pam.admin_cli(&["delete", "auth/userpass/users/carol"]));
    ok(pam.admin_cli(&[
        "write",
        "auth/userpass/users/carol",
        &format!("password={CAROL_PASSWORD}"),
        "token_policies=pam-person,pam-browse",
    ]));
    let new_carol = login("carol");
    let (code, out, err) =
        run(&mut pam.shell(&new_carol, &format!("{carols_command} echo UI-RELAY-OK")));
    assert!(code != 0 && !out.contains("UI-RELAY-OK"), "{out}{err}");
    assert!(
        err.contains("permission denied") || err.contains("403"),
        "{err}"
    );
    assert!(sshd.log().contains("Accepted publickey for root"));
}

/// Signs in to the web UI with `form` and presses the Access button of
/// the key account `keys/root` for `public_key`: the page it answers.
async fn ui_access(pam: &Pam, form: &[(&str, &str)], public_key: &str) -> String {
    let pem = std::fs::read(&pam.server.cacert).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = pam.server.addr.trim_end_matches('/');
    let r = http
        .post(format!("{base}/ui/login"))
        .header("origin", base)
        .form(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "sign-in: {}", r.text().await.unwrap());
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let page = http
        .get(format!("{base}/ui/pam/resources/keys"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in {page}"))
        + 19;
    let csrf = &page[at..at + page[at..].find('"').unwrap()];
    let r = http
        .post(format!("{base}/ui/pam/resources/keys/accounts/root/access"))
        .header("cookie", &cookie)
        .header("origin", base)
        .form(&[
            ("csrf", csrf),
            ("public_key", public_key),
            ("duration", "5m"),
        ])
        .send()
        .await
        .unwrap();
    let status = r.status();
    let page = r.text().await.unwrap();
    assert_eq!(status, 200, "{page}");
    page
}

/// The web UI's Terminate button (in a real browser) ends a live session:
/// the person's ssh client is disconnected, as with the CLI's terminate.
#[test]
fn an_admin_terminates_a_live_session_from_the_web_ui_and_the_ssh_client_is_disconnected() {
    use gatepass_tests::browser::Browser;
    let pam = Pam::start();
    let _sshd = key_account(&pam);
    let (mut live, id) = live_session(&pam);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let asked = rt.block_on(async {
        let b = Browser::start().await;
        b.goto(&format!("{}/ui/login", pam.server.addr)).await;
        b.fill("#token", &pam.server.token).await;
        b.click("#token-submit").await;
        b.goto(&format!("{}/ui/sessions?state=active", pam.server.addr))
            .await;
        assert!(
            b.exists(&format!("#session-{id}")).await,
            "{}",
            b.source().await
        );
        b.screenshot("sessions-live").await;
        b.click(&format!("#terminate-{id}")).await;
        let asked = Instant::now();
        b.close().await;
        asked
    });
    let status = wait_exit(&mut live, Duration::from_secs(5));
    assert!(!status.success());
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "closed {:?} after terminate",
        asked.elapsed()
    );
    let s = pam.session(&id);
    assert_eq!(s["end_reason"], "terminated", "{s}");
    // The audit trail has the terminate, made through the UI as root.
    assert!(
        pam.audit()
            .lines()
            .any(|l| l.contains(&format!("pam/sessions/{id}/terminate"))),
        "no audit event for the terminate"
    );
}
