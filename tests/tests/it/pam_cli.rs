//! `gatepass pam …` as a user runs it. Against a real dev server: a
//! resource it does not know is a clear error. Against a stand-in for the
//! server's `/v1/pam/` API (plain HTTP, canned answers, a certificate
//! signed for the key the CLI sent) and a stand-in `ssh` on PATH that
//! records what it was given: the files and command line `pam ssh access`
//! hands to ssh, ssh's exit status passed through, nothing left in TMPDIR,
//! a stopped gateway told within 5 s; the block `pam ssh config` prints,
//! read back by the real `ssh -G`; and `pam sessions list|show|terminate`.
//! The end-to-end runs with a real gateway are in the gateway's tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatepass_tests::sshd::{Sshd, SshdOptions};
use gatepass_tests::{bin, run, DevServer};
use serde_json::{json, Value};
use ssh_key::{Algorithm, PrivateKey, PublicKey};

/// One request the stand-in server got.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    body: Value,
}

type Handler = dyn Fn(&Seen) -> (u16, Value) + Send + Sync;

/// A plain-HTTP stand-in for the server: each request is answered by the
/// handler, one connection at a time, and recorded.
struct FakeServer {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeServer {
    fn start(handler: Box<Handler>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                if let Some(req) = read_request(&conn) {
                    log.lock().unwrap().push(req.clone());
                    let (status, body) = handler(&req);
                    let text = body.to_string();
                    let mut w = &conn;
                    let _ = write!(
                        w,
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                }
            }
        });
        FakeServer { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn read_request(conn: &TcpStream) -> Option<Seen> {
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Seen {
        method,
        path,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

fn envelope(data: Value) -> Value {
    json!({"request_id": "r", "lease_id": "", "renewable": false, "lease_duration": 0,
           "data": data, "warnings": null, "auth": null})
}

const GATEWAY_HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl gw1";

fn session_info(id: &str, state: &str) -> Value {
    json!({
        "session_id": id, "resource": "web1", "account": "root", "username": "root",
        "gateway": "gw1", "user": "alice",
        "created_at": "2026-12-02T13:00:00Z", "expires_at": "2026-12-02T14:00:00Z",
        "started_at": null, "ended_at": if state == "ended" { json!("2026-12-02T13:10:00Z") } else { Value::Null },
        "state": state,
        "end_reason": if state == "ended" { json!("terminated") } else { Value::Null },
        "end_detail": null,
    })
}

/// A stand-in server that grants access to root on web1 through a gateway
/// at `gateway_port` with these host keys: session `s-1`, a certificate of
/// the session CA `ca` for the key it was sent.
fn granting_server_with(ca: PrivateKey, gateway_port: u16, host_keys: Vec<String>) -> FakeServer {
    FakeServer::start(Box::new(move |req| {
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/v1/pam/resources/web1/accounts/root/access") => {
                let key =
                    PublicKey::from_openssh(req.body["public_key"].as_str().unwrap()).unwrap();
                let mut b = ssh_key::certificate::Builder::new_with_random_nonce(
                    &mut rand_core(),
                    &key,
                    0,
                    4_000_000_000,
                )
                .unwrap();
                b.key_id("s-1").unwrap();
                b.valid_principal("root").unwrap();
                let cert = b.sign(&ca).unwrap();
                (
                    200,
                    envelope(json!({
                        "session_id": "s-1",
                        "gateway": format!("127.0.0.1:{gateway_port}"),
                        "gateway_host_keys": host_keys,
                        "login": "root",
                        "expires_at": "2096-10-02T07:06:40Z",
                        "expires_at_unix": 4_000_000_000u64,
                        "signed_key": cert.to_openssh().unwrap(),
                    })),
                )
            }
            ("GET", "/v1/pam/sessions/s-1") => (200, envelope(session_info("s-1", "pending"))),
            _ => (404, json!({"errors": ["unknown resource: nosuch"]})),
        }
    }))
}

fn granting_server(gateway_port: u16) -> FakeServer {
    let ca = PrivateKey::random(&mut rand_core(), Algorithm::Ed25519).unwrap();
    granting_server_with(ca, gateway_port, vec![GATEWAY_HOST_KEY.into()])
}

fn rand_core() -> impl ssh_key::rand_core::CryptoRngCore {
    ssh_key::rand_core::OsRng
}

/// A user's shell: private HOME and TMPDIR, a stand-in `ssh` first on PATH
/// that records its arguments and the files they name, and exits with 7
/// (or, with FAKE_SSH_WAIT set, waits as a live session does).
struct Shell {
    home: tempfile::TempDir,
    tmp: tempfile::TempDir,
    bin: tempfile::TempDir,
}

impl Shell {
    fn new() -> Shell {
        let s = Shell {
            home: tempfile::tempdir().unwrap(),
            tmp: tempfile::tempdir().unwrap(),
            bin: tempfile::tempdir().unwrap(),
        };
        let ssh = s.bin.path().join("ssh");
        std::fs::write(
            &ssh,
            format!(
                r#"#!/bin/sh
log={log}
printf '%s\n' "$@" > "$log/argv"
key=$2
stat -c %a "$key" > "$log/key_mode"
stat -c %a "$(dirname "$key")" > "$log/dir_mode"
for a in "$@"; do
  case "$a" in
    CertificateFile=*) cat "${{a#CertificateFile=}}" > "$log/cert" ;;
    UserKnownHostsFile=*) cat "${{a#UserKnownHostsFile=}}" > "$log/known_hosts" ;;
  esac
done
[ -n "$FAKE_SSH_WAIT" ] && exec sleep 30
exit 7
"#,
                log = s.home.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
        s
    }

    /// `gatepass` with the stand-in ssh.
    fn gatepass(&self, server: &str, args: &[&str]) -> Command {
        let mut c = self.gatepass_real_ssh(server, args);
        let path = format!(
            "{}:{}",
            self.bin.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env("PATH", path);
        c
    }

    fn gatepass_real_ssh(&self, server: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin("gatepass"));
        for v in gatepass_tests::CLI_AMBIENT_ENV {
            c.env_remove(v);
        }
        c.env_remove("XDG_RUNTIME_DIR")
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join(".config"))
            .env("TMPDIR", self.tmp.path())
            .env("GATEPASS_ADDR", server)
            .env("GATEPASS_TOKEN", "user-token")
            .args(args);
        c
    }

    fn recorded(&self, name: &str) -> String {
        std::fs::read_to_string(self.home.path().join(name)).unwrap_or_default()
    }

    fn leftovers(&self) -> Vec<String> {
        names(self.tmp.path())
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn access_to_an_unknown_resource_is_a_clear_error_and_leaves_nothing() {
    let server = DevServer::start();
    let shell = Shell::new();
    let mut cmd = shell.gatepass(
        &server.addr,
        &[
            "pam",
            "ssh",
            "access",
            "--resource",
            "nosuch",
            "--account",
            "root",
            "--",
            "true",
        ],
    );
    cmd.envs(server.cli_env());
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 2, "stdout: {out}\nstderr: {err}");
    assert!(
        err.starts_with("Error: requesting access to the account root of the resource nosuch: "),
        "{err}"
    );
    assert!(err.contains("HTTP 404"), "{err}");
    assert_eq!(shell.recorded("argv"), "", "ssh must not run");
    assert!(shell.leftovers().is_empty(), "{:?}", shell.leftovers());
}

#[test]
fn access_runs_ssh_with_the_session_certificate_and_pinned_gateway() {
    let gateway = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = gateway.local_addr().unwrap().port();
    let server = granting_server(port);
    let shell = Shell::new();
    let (code, out, err) = run(&mut shell.gatepass(
        &server.addr,
        &[
            "pam",
            "ssh",
            "access",
            "--resource",
            "web1",
            "--account",
            "root",
            "--duration",
            "1h",
            "--",
            "echo",
            "hello",
        ],
    ));
    assert_eq!(code, 7, "ssh's exit status\nstdout: {out}\nstderr: {err}");
    assert!(
        err.contains("gatepass: session s-1 for root on web1, ends at 2096-10-02T07:06:40Z"),
        "{err}"
    );

    // The request: our duration and a fresh public key.
    let seen = server.seen();
    let req = seen.iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(req.body["duration"], "1h");
    let sent = PublicKey::from_openssh(req.body["public_key"].as_str().unwrap()).unwrap();
    assert_eq!(sent.algorithm(), Algorithm::Ed25519);

    // ssh's command line, and the files it was given.
    let argv: Vec<String> = shell.recorded("argv").lines().map(String::from).collect();
    let dir = Path::new(&argv[1]).parent().unwrap().to_path_buf();
    assert!(dir.starts_with(shell.tmp.path()), "{dir:?}");
    let d = |f: &str| dir.join(f).display().to_string();
    let want: Vec<String> = [
        "-i".to_string(),
        d("id"),
        "-o".into(),
        format!("CertificateFile={}", d("id-cert.pub")),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", d("known_hosts")),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-p".into(),
        port.to_string(),
        "-l".into(),
        "root".into(),
        "--".into(),
        "127.0.0.1".into(),
        "echo".into(),
        "hello".into(),
    ]
    .to_vec();
    assert_eq!(argv, want);
    assert_eq!(shell.recorded("key_mode").trim(), "600");
    assert_eq!(shell.recorded("dir_mode").trim(), "700");
    let cert = ssh_key::Certificate::from_openssh(shell.recorded("cert").trim()).unwrap();
    assert_eq!(cert.public_key(), sent.key_data());
    assert_eq!(cert.key_id(), "s-1");
    assert_eq!(
        shell.recorded("known_hosts"),
        format!(
            "[127.0.0.1]:{port} {}\n",
            GATEWAY_HOST_KEY.trim_end_matches(" gw1")
        )
    );
    assert!(!out.contains("PRIVATE KEY") && !err.contains("PRIVATE KEY"));
    assert!(shell.leftovers().is_empty(), "{:?}", shell.leftovers());
}

/// The real ssh logs in with what `access` gives it, to an sshd standing in
/// for the gateway (it trusts the session CA); and refuses a gateway whose
/// host key is not the one the server gave.
#[test]
fn the_real_ssh_logs_in_and_checks_the_gateway_host_key() {
    let ca = PrivateKey::random(&mut rand_core(), Algorithm::Ed25519).unwrap();
    let mut sshd = Sshd::new(SshdOptions::default());
    let ca_file = sshd.write_file("session_ca.pub", &ca.public_key().to_openssh().unwrap());
    sshd.options
        .extra_config
        .push(format!("TrustedUserCAKeys {}", ca_file.display()));
    sshd.launch();
    let shell = Shell::new();
    let args = [
        "pam",
        "ssh",
        "access",
        "--resource",
        "web1",
        "--account",
        "root",
        "-F",
        "/dev/null",
        "--",
        "echo",
        "hello",
    ];

    let server = granting_server_with(
        ca.clone(),
        sshd.port,
        vec![sshd.host_public_key().trim().to_string()],
    );
    let (code, out, err) = run(&mut shell.gatepass_real_ssh(&server.addr, &args));
    assert_eq!(
        (code, out.as_str()),
        (0, "hello\n"),
        "{err}\n{}",
        sshd.log()
    );
    assert!(shell.leftovers().is_empty(), "{:?}", shell.leftovers());

    let impostor = granting_server_with(ca, sshd.port, vec![GATEWAY_HOST_KEY.into()]);
    let (code, out, err) = run(&mut shell.gatepass_real_ssh(&impostor.addr, &args));
    assert_eq!(code, 255, "{out}\n{err}");
    assert!(err.contains("Host key verification failed"), "{err}");
    assert!(err.contains("gatepass pam sessions show s-1"), "{err}");
    assert!(shell.leftovers().is_empty(), "{:?}", shell.leftovers());
}

/// Ctrl-C while ssh runs: passed on to ssh, and the key is gone after.
#[test]
fn ctrl_c_reaches_ssh_and_leaves_no_key_behind() {
    let gateway = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = granting_server(gateway.local_addr().unwrap().port());
    let shell = Shell::new();
    let child = shell
        .gatepass(
            &server.addr,
            &[
                "pam",
                "ssh",
                "access",
                "--resource",
                "web1",
                "--account",
                "root",
            ],
        )
        .env("FAKE_SSH_WAIT", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while shell.recorded("known_hosts").is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "ssh never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        shell.leftovers().len(),
        1,
        "the session's folder while ssh runs"
    );
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("ssh ended after SIGINT was passed on to it"),
        "{err}"
    );
    assert!(shell.leftovers().is_empty(), "{:?}", shell.leftovers());
}

#[test]
fn a_stopped_gateway_is_a_clear_error_within_5_seconds() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = granting_server(port);
    let shell = Shell::new();
    let started = Instant::now();
    let (code, _, err) = run(&mut shell.gatepass(
        &server.addr,
        &[
            "pam",
            "ssh",
            "access",
            "--resource",
            "web1",
            "--account",
            "root",
        ],
    ));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "Error: cannot reach the gateway gw1 at 127.0.0.1:{port}: connection refused"
        )),
        "{err}"
    );
    assert_eq!(shell.recorded("argv"), "", "ssh must not run");
    assert!(shell.leftovers().is_empty(), "{:?}", shell.leftovers());
}

#[test]
fn config_prints_a_block_that_ssh_reads() {
    let gateway = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = gateway.local_addr().unwrap().port();
    let server = granting_server(port);
    let shell = Shell::new();
    let base = shell.home.path().join("pam sessions");
    let (code, block, err) = run(&mut shell.gatepass(
        &server.addr,
        &[
            "pam",
            "ssh",
            "config",
            "--resource",
            "web1",
            "--account",
            "root",
            "--dir",
            base.to_str().unwrap(),
        ],
    ));
    assert_eq!(code, 0, "{err}");
    let dir = base.join("s-1");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("id")), 0o600);
    assert!(block.starts_with(
        "# gatepass PAM session s-1: account root of web1, ends at 2096-10-02T07:06:40Z\n\
         Host gatepass-web1-root\n"
    ));
    assert!(err.contains("ssh gatepass-web1-root"), "{err}");
    assert!(!block.contains("PRIVATE KEY"));

    // The real ssh reads it back (-G: print the configuration, connect nowhere).
    let config = shell.home.path().join("config");
    std::fs::write(&config, &block).unwrap();
    let (code, resolved, err) =
        run(Command::new("ssh").args(["-F", config.to_str().unwrap(), "-G", "gatepass-web1-root"]));
    assert_eq!(code, 0, "{err}");
    let settings: BTreeMap<&str, Vec<&str>> = resolved.lines().fold(BTreeMap::new(), |mut m, l| {
        if let Some((k, v)) = l.split_once(' ') {
            m.entry(k).or_default().push(v);
        }
        m
    });
    let one = |k: &str| settings.get(k).map(|v| v.join(",")).unwrap_or_default();
    assert_eq!(one("hostname"), "127.0.0.1");
    assert_eq!(one("port"), port.to_string());
    assert_eq!(one("user"), "root");
    assert_eq!(one("identitiesonly"), "yes");
    assert_eq!(one("stricthostkeychecking"), "true");
    let path = |f: &str| dir.join(f).display().to_string();
    assert_eq!(one("certificatefile"), path("id-cert.pub"));
    assert_eq!(one("identityfile"), path("id"));
    assert_eq!(one("userknownhostsfile"), path("known_hosts"));
    drop(gateway);
}

#[test]
fn sessions_list_show_and_terminate() {
    let server = FakeServer::start(Box::new(|req| {
        match (req.method.as_str(), req.path.as_str()) {
            ("LIST", "/v1/pam/sessions?resource=web1&state=ended")
            | ("LIST", "/v1/pam/sessions") => (
                200,
                envelope(json!({
                    "keys": ["s-2", "s-1"],
                    "key_info": {"s-1": session_info("s-1", "ended"), "s-2": session_info("s-2", "active")},
                })),
            ),
            ("GET", "/v1/pam/sessions/s-2") => (200, envelope(session_info("s-2", "active"))),
            ("POST", "/v1/pam/sessions/s-2/terminate") => {
                (200, envelope(session_info("s-2", "ended")))
            }
            _ => (404, json!({"errors": ["no such session"]})),
        }
    }));
    let shell = Shell::new();
    let gp = |args: &[&str]| {
        let (code, out, err) = run(&mut shell.gatepass(&server.addr, args));
        assert_eq!(code, 0, "{args:?}\nstdout: {out}\nstderr: {err}");
        out
    };

    let table = gp(&[
        "pam",
        "sessions",
        "list",
        "--resource",
        "web1",
        "--state",
        "ended",
    ]);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0][..3], ["Session", "State", "Resource"]);
    assert_eq!(lines[2][..3], ["s-2", "active", "web1"]);
    assert_eq!(lines[3][..4], ["s-1", "ended", "(terminated)", "web1"]);

    let listed: Value =
        serde_json::from_str(&gp(&["pam", "sessions", "list", "--format", "json"])).unwrap();
    assert_eq!(listed[0]["session_id"], "s-2");
    assert_eq!(listed[1]["end_reason"], "terminated");

    let shown = gp(&["pam", "sessions", "show", "s-2"]);
    assert!(
        shown
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["state", "active"]),
        "{shown}"
    );
    let ended = gp(&["pam", "sessions", "terminate", "s-2"]);
    assert!(
        ended
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["end_reason", "terminated"]),
        "{ended}"
    );

    let (code, _, err) =
        run(&mut shell.gatepass(&server.addr, &["pam", "sessions", "show", "s-9"]));
    assert_eq!(code, 2);
    assert_eq!(
        err.trim(),
        "Error: reading the session s-9: no such session (HTTP 404)"
    );

    let paths: Vec<(String, String)> = server
        .seen()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(
        paths[..4],
        [
            (
                "LIST".into(),
                "/v1/pam/sessions?resource=web1&state=ended".into()
            ),
            ("LIST".into(), "/v1/pam/sessions".into()),
            ("GET".into(), "/v1/pam/sessions/s-2".into()),
            ("POST".into(), "/v1/pam/sessions/s-2/terminate".into()),
        ]
    );
}
