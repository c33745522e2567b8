//! Session recordings: what the gateway records of a session, how the
//! server checks it, and how a person reads it back.
//!
//! End to end (the harness of `pam_sessions`: a real server, a real
//! gateway, a real target sshd, the real `ssh` and `sftp`): a shell, a
//! command and an upload through the gateway come back as an asciicast
//! file that `asciinema play` plays, a replay, and JSON events; the
//! recording survives the server being away and the gateway being killed.
//! In process (both storage backends): every kind of tampering with the
//! stored chunks is named.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use gatepass_api::recording::{self, Event, EventKind, SealedChunk, SftpOp, Stream, GENESIS};
use gatepass_tests::inproc::{Backend, Server, BACKENDS};
use gatepass_tests::ssh::keypair;
use gatepass_tests::{bin, run, CLI_AMBIENT_ENV};
use serde_json::{json, Value};

use crate::pam_sessions::{
    config_block, key_account, ok, session_id_in, wait_exit, wait_for_active, Pam,
};

/// `gatepass pam sessions verify ID` as the administrator, until `done`
/// holds for (exit code, stdout) or 20 s pass: the gateway delivers its
/// chunks as the session runs and after.
pub(crate) fn verify_until(pam: &Pam, id: &str, done: impl Fn(i32, &str) -> bool) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, err) = run(&mut pam.admin_cli(&["pam", "sessions", "verify", id]));
        if done(code, &out) {
            return (code, out);
        }
        assert!(
            Instant::now() < deadline,
            "verify {id}: {code}\n{out}\n{err}\n{}",
            pam.gateway_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An active session other than `other` (within 15 s).
fn wait_for_another_active(pam: &Pam, other: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = ok(pam.admin_cli(&[
            "pam", "sessions", "list", "--state", "active", "--format", "json",
        ]));
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let found = v.as_array().into_iter().flatten().find_map(|s| {
            s["session_id"]
                .as_str()
                .filter(|id| *id != other)
                .map(String::from)
        });
        if let Some(id) = found {
            return id;
        }
        assert!(Instant::now() < deadline, "no other active session: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The session's recordings as `export --format json` writes them.
fn exported(pam: &Pam, id: &str) -> Value {
    let out = ok(pam.admin_cli(&["pam", "sessions", "export", id, "--format", "json"]));
    serde_json::from_str(&out).unwrap()
}

fn events(v: &Value) -> Vec<Event> {
    v["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| serde_json::from_value::<Vec<Event>>(r["events"].clone()).unwrap())
        .collect()
}

/// All output of the channel that ran `command`, from the recording of its
/// connection (channel numbers are per connection). Output may follow the
/// exit status: sshd sends `exit-status` when the command exits, while what
/// it wrote last may still be in the pipe.
fn output_of(v: &Value, command: &str) -> String {
    let is_it = |e: &Event| matches!(&e.kind, EventKind::Exec { command: c } if c == command);
    for r in v["recordings"].as_array().unwrap() {
        let evs: Vec<Event> = serde_json::from_value(r["events"].clone()).unwrap();
        let Some(ch) = evs.iter().find(|e| is_it(e)).map(|e| e.ch) else {
            continue;
        };
        let mut out = String::new();
        for e in evs.iter().skip_while(|e| !is_it(e)).skip(1) {
            match &e.kind {
                EventKind::Output { data } if e.ch == ch => out.push_str(data),
                // The channel's number taken again by a later channel.
                EventKind::Exec { .. } | EventKind::Shell | EventKind::Subsystem { .. }
                    if e.ch == ch =>
                {
                    break
                }
                _ => {}
            }
        }
        return out;
    }
    panic!("no exec of {command:?}")
}

#[test]
fn a_session_is_recorded_and_exports_plays_and_replays() {
    let pam = Pam::start();
    let _target = key_account(&pam);
    // $ gatepass pam ssh config … >> ~/.ssh/config: one session, several
    // connections (a shell, a command, an upload), each recorded.
    let (block, id) = config_block(&pam);
    let config = pam.home.path().join("ssh_config");
    std::fs::write(&config, &block).unwrap();
    let ssh = |args: &[&str]| {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(&config)
            .args(["-o", "BatchMode=yes", "-o", "IdentityAgent=none"])
            .env_remove("SSH_AUTH_SOCK")
            .args(args);
        c
    };

    // A shell on a terminal, typed into.
    let mut shell = ssh(&["-tt", "gatepass-keys-root"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = shell.stdin.take().unwrap();
        stdin
            .write_all(b"printf 'MARK-%s\\n' 4242\nexit\n")
            .unwrap();
    }
    let status = wait_exit(&mut shell, Duration::from_secs(20));
    let mut seen = String::new();
    std::io::Read::read_to_string(&mut shell.stdout.take().unwrap(), &mut seen).unwrap();
    assert!(status.success(), "{seen}\n{}", pam.gateway_log());
    assert!(seen.contains("MARK-4242"), "{seen}");

    // A command, whose output is 3000 pairs of a 2- and a 4-byte character:
    // printf writes 4096 bytes at a time, so characters straddle the
    // gateway's packets; and it exits 3.
    let multibyte = "printf 'é𝄞%.0s' $(seq 1 3000); exit 3";
    let (code, out, _) = run(ssh(&["gatepass-keys-root", multibyte]).stdin(Stdio::null()));
    assert_eq!(code, 3);
    assert_eq!(out, "é𝄞".repeat(3000));

    // A file piped into a command: binary data, recorded as its size.
    let work = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0u32..300_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let piped = work.path().join("piped.bin");
    std::fs::write(&piped, &blob).unwrap();
    let (code, out, err) =
        run(ssh(&["gatepass-keys-root", "wc -c"]).stdin(std::fs::File::open(&piped).unwrap()));
    assert_eq!((code, out.trim()), (0, "300000"), "{err}");

    // An upload with sftp, its mode changed and the file renamed.
    let src = work.path().join("upload.bin");
    std::fs::write(&src, vec![7u8; 100_000]).unwrap();
    let up = work.path().join("uploaded.bin");
    let moved = work.path().join("moved.bin");
    let batch = work.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {src} {up}\nchmod 640 {up}\nrename {up} {moved}\n",
            src = src.display(),
            up = up.display(),
            moved = moved.display()
        ),
    )
    .unwrap();
    ok(Command::new("sftp")
        .arg("-F")
        .arg(&config)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentityAgent=none",
            "-q",
            "-b",
        ])
        .arg(&batch)
        .arg("gatepass-keys-root")
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null()));
    assert_eq!(std::fs::read(&moved).unwrap().len(), 100_000);

    // A local forward, once the account allows forwarding (the stored key
    // is kept).
    pam.admin_write(
        "pam/resources/keys/accounts/root",
        json!({"auth_method": "key", "username": "root", "max_duration": "1h",
            "allow_forwarding": true}),
    );
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in echo.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut r = conn.try_clone().unwrap();
            let _ = std::io::copy(&mut r, &mut conn);
        }
    });
    let local_port = crate::pam_sessions::free_port();
    let mut forward = ssh(&[
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("127.0.0.1:{local_port}:127.0.0.1:{echo_port}"),
        "gatepass-keys-root",
    ])
    .stdin(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match std::net::TcpStream::connect(("127.0.0.1", local_port)) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("no forward: {e}\n{}", pam.gateway_log()),
        }
    };
    {
        use std::io::{Read, Write};
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        conn.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
    }
    drop(conn);
    std::thread::sleep(Duration::from_millis(300));
    let _ = forward.kill();
    let _ = forward.wait();

    // Every connection's recording arrives whole, signed by the gateway.
    let (_, out) = verify_until(&pam, &id, |code, out| {
        code == 0 && out.matches(": whole").count() == 5
    });
    assert!(out.contains("is whole"), "{out}");

    // The events: the command with its exit status, the upload with its
    // path and size, the characters whole.
    let json = exported(&pam, &id);
    let evs = events(&json);
    assert!(
        evs.iter().any(|e| matches!(&e.kind,
            EventKind::Exit { status: 3, command: Some(c) } if c == multibyte)),
        "{json}"
    );
    let path = up.display().to_string();
    assert!(
        evs.iter().any(|e| matches!(&e.kind,
            EventKind::Sftp { op: SftpOp::Write, path: p, bytes: Some(100_000), .. } if *p == path)),
        "{json}"
    );
    assert!(
        evs.iter().any(|e| matches!(&e.kind,
            EventKind::Sftp { op: SftpOp::Setstat, path: p, attrs: Some(a), .. }
                if *p == path && a == "mode=0640")),
        "{json}"
    );
    let to = moved.display().to_string();
    assert!(
        evs.iter().any(|e| matches!(&e.kind,
            EventKind::Sftp { op: SftpOp::Rename, path: p, to: Some(t), .. }
                if *p == path && *t == to)),
        "{json}"
    );
    assert_eq!(output_of(&json, multibyte), "é𝄞".repeat(3000));
    // The piped file: its size, in one or a few events (one per chunk it
    // spans), and none of its bytes as text.
    let piped_in: u64 = evs
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Binary {
                stream: Stream::Input,
                bytes,
                ..
            } => Some(bytes),
            _ => None,
        })
        .sum();
    assert_eq!(piped_in, 300_000, "{json}");
    assert!(
        !evs.iter()
            .any(|e| matches!(&e.kind, EventKind::Input { data } if data.contains('\u{fffd}'))),
        "{json}"
    );
    for opened in [true, false] {
        assert!(
            evs.iter().any(|e| match &e.kind {
                EventKind::ForwardOpen { host, port } if opened =>
                    host == "127.0.0.1" && *port == u32::from(echo_port),
                EventKind::ForwardClose { host, port } if !opened =>
                    host == "127.0.0.1" && *port == u32::from(echo_port),
                _ => false,
            }),
            "{json}"
        );
    }
    // The terminal request (ssh -tt without a terminal of its own asks for
    // one of size 0x0).
    assert!(evs
        .iter()
        .any(|e| matches!(&e.kind, EventKind::Resize { .. })));
    assert!(evs
        .iter()
        .any(|e| matches!(&e.kind, EventKind::Input { data } if data.contains("MARK-%s"))));

    // The .cast plays in asciinema, the marker in its output.
    let cast = work.path().join("session.cast");
    ok(pam.admin_cli(&[
        "pam",
        "sessions",
        "export",
        &id,
        "--format",
        "cast",
        "--output",
        cast.to_str().unwrap(),
    ]));
    let header: Value = serde_json::from_str(
        std::fs::read_to_string(&cast)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["version"], 2, "{header}");
    let (code, played, err) = run(Command::new("asciinema")
        .args(["play", "-i", "0.1", "-s", "100"])
        .arg(&cast)
        .stdin(Stdio::null()));
    assert_eq!(code, 0, "asciinema play: {err}");
    assert!(played.contains("MARK-4242"), "{played}");

    // `replay` plays it in the terminal.
    let replayed = ok(pam.admin_cli(&[
        "pam",
        "sessions",
        "replay",
        &id,
        "--speed",
        "100",
        "--idle-limit",
        "0.1",
    ]));
    assert!(replayed.contains("MARK-4242"), "{replayed}");

    // The final digests are in the audit log.
    let audit = pam.audit();
    assert_eq!(audit.matches("recording_ended").count(), 5, "{audit}");
    assert!(audit.contains("final digest sha256:"), "{audit}");
}

#[test]
fn recordings_outlive_a_server_outage_and_a_killed_gateway() {
    let mut pam = Pam::start();
    let _target = key_account(&pam);

    // The server is away for 30 s in the middle of a session.
    let mut live = pam
        .access(
            "keys",
            "root",
            "5m",
            &["printf 'BEFORE-%s\\n' 1; sleep 33; printf 'AFTER-%s\\n' 2"],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let id = wait_for_active(&pam);
    pam.server.stop();
    let stopped = Instant::now();
    // Meanwhile the chunks wait in the gateway's spool, private to it.
    let spool = pam.admin.path().join("recording-spool");
    let deadline = Instant::now() + Duration::from_secs(10);
    let spooled = loop {
        let files: Vec<_> = std::fs::read_dir(&spool)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        if !files.is_empty() {
            break files;
        }
        assert!(
            Instant::now() < deadline,
            "nothing spooled\n{}",
            pam.gateway_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for f in &spooled {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    std::thread::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed()));
    pam.server.restart();
    let status = wait_exit(&mut live, Duration::from_secs(20));
    assert!(status.success(), "{}", pam.gateway_log());
    let (_, out) = verify_until(&pam, &id, |code, _| code == 0);
    assert!(out.contains("whole"), "{out}");
    let evs = events(&exported(&pam, &id));
    let text: String = evs
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Output { data } => Some(data.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "BEFORE-1\nAFTER-2\n");
    // The gap is in the recording's time line, as it happened.
    let after = evs
        .iter()
        .find(|e| matches!(&e.kind, EventKind::Output { data } if data.contains("AFTER")))
        .unwrap();
    assert!(after.t > 30.0, "{after:?}");

    // The gateway is killed mid-session while the server is away: what it
    // had sealed is on its disk, and sent when it is back.
    // (The first session's end report gave up while the server was away:
    // it may still read as active.)
    let first = id;
    let mut live = pam
        .access("keys", "root", "5m", &["printf 'KILLED-%s\\n' 7; sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = wait_for_another_active(&pam, &first);
    pam.server.stop();
    // The person has seen the line, so the gateway has it: it is in a
    // chunk sealed within the chunk interval (2 s), which the spool keeps
    // while the server is away.
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(live.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "KILLED-7\n");
    let seen = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.elapsed() < Duration::from_secs(3)
        || std::fs::read_dir(&spool)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0)
            == 0
    {
        assert!(
            Instant::now() < deadline,
            "nothing spooled\n{}",
            pam.gateway_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut gateway = pam.gateway.take().unwrap();
    gateway.kill().unwrap(); // SIGKILL
    gateway.wait().unwrap();
    let _ = live.kill();
    let _ = live.wait();
    pam.server.restart();
    pam.start_gateway();
    let (code, out) = verify_until(&pam, &id, |_, out| out.contains("cut"));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("chunks verify up to the cut"), "{out}");
    let json = exported(&pam, &id);
    assert_eq!(json["recordings"][0]["complete"], false, "{json}");
    assert!(
        json.to_string().contains("KILLED-7"),
        "{json}\n{}",
        pam.gateway_log()
    );
    // Nothing is left behind in the spool.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0) != 0 {
        assert!(Instant::now() < deadline, "the spool was not emptied");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn masked_output_reaches_the_user_but_never_the_recording() {
    let mut pam = Pam::start();
    // The gateway's configuration gets a masking rule for GitHub tokens.
    pam.stop_gateway();
    let path = pam.admin.path().join("gateway.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    assert!(cfg.contains("[recording]\n"), "{cfg}");
    let cfg = cfg.replacen(
        "[recording]\n",
        "[recording]\nmask = [\"ghp_[A-Za-z0-9]{36}\"]\n",
        1,
    );
    std::fs::write(&path, cfg).unwrap();
    pam.start_gateway();
    let _target = key_account(&pam);
    let (block, id) = config_block(&pam);
    let config = pam.home.path().join("ssh_config");
    std::fs::write(&config, &block).unwrap();

    // A command prints a token (made by the shell, so that the command
    // line does not hold it) between two markers.
    let token = format!("ghp_{}", "Ab12".repeat(9));
    let (code, out, err) = run(Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args(["-o", "BatchMode=yes", "-o", "IdentityAgent=none"])
        .env_remove("SSH_AUTH_SOCK")
        .args([
            "gatepass-keys-root",
            "printf 'MARK-A ghp_%s MARK-B\\n' $(printf 'Ab12%.0s' $(seq 9))",
        ])
        .stdin(Stdio::null()));
    assert_eq!(code, 0, "{err}\n{}", pam.gateway_log());
    assert_eq!(out, format!("MARK-A {token} MARK-B\n"), "the user sees it");

    // The recording is whole, and neither export holds the token.
    verify_until(&pam, &id, |code, _| code == 0);
    let json = ok(pam.admin_cli(&["pam", "sessions", "export", &id, "--format", "json"]));
    let cast = ok(pam.admin_cli(&["pam", "sessions", "export", &id, "--format", "cast"]));
    for text in [&json, &cast] {
        assert!(!text.contains("Ab12Ab12"), "{text}");
        assert!(
            text.contains(&format!("MARK-A {} MARK-B", "*".repeat(40))),
            "{text}"
        );
    }
}

/// The value of `key` in an ssh_config block.
fn ssh_option<'a>(block: &'a str, key: &str) -> &'a str {
    block
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {key} in {block}"))
        .trim()
}

struct AnyHostKey;

impl russh::client::Handler for AnyHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Output of a russh channel until it holds `want` (10 s at most).
/// A russh client logged in to the gateway with the session certificate
/// of `block` (what `gatepass pam ssh config` printed).
async fn russh_login(pam: &Pam, block: &str) -> russh::client::Handle<AnyHostKey> {
    let key = russh::keys::load_secret_key(ssh_option(block, "IdentityFile"), None).unwrap();
    let cert = russh::keys::Certificate::read_file(std::path::Path::new(ssh_option(
        block,
        "CertificateFile",
    )))
    .unwrap();
    let addr = (
        ssh_option(block, "HostName").to_string(),
        ssh_option(block, "Port").parse::<u16>().unwrap(),
    );
    let config = std::sync::Arc::new(russh::client::Config::default());
    let mut h = russh::client::connect(config, addr, AnyHostKey)
        .await
        .unwrap();
    let user = ssh_option(block, "User");
    let auth = h
        .authenticate_openssh_cert(user, std::sync::Arc::new(key), cert)
        .await
        .unwrap();
    assert!(auth.success(), "{}", pam.gateway_log());
    h
}

async fn read_until(ch: &mut russh::Channel<russh::client::Msg>, want: &str) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(want) {
        match tokio::time::timeout_at(deadline, ch.wait()).await {
            Ok(Some(russh::ChannelMsg::Data { data })) => {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("no {want:?} in {seen:?}"),
        }
    }
    seen
}

#[test]
fn a_start_request_the_target_refuses_does_not_change_how_the_channel_is_recorded() {
    let pam = Pam::start();
    let _target = key_account(&pam);
    let (block, id) = config_block(&pam);
    // A client (not OpenSSH's, which never does this) starts a shell, then
    // asks for the sftp subsystem on the same channel, which the target
    // refuses (the channel runs a shell), and goes on typing.
    let seen = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let h = russh_login(&pam, &block).await;
        let mut ch = h.channel_open_session().await.unwrap();
        ch.exec(true, "sh").await.unwrap();
        ch.data(&b"echo VISIBLE-$((6*6))\n"[..]).await.unwrap();
        let mut seen = read_until(&mut ch, "VISIBLE-36").await;
        ch.request_subsystem(false, "sftp").await.unwrap();
        ch.data(&b"echo HIDDEN-$((6*7)); exit 0\n"[..])
            .await
            .unwrap();
        seen.push_str(&read_until(&mut ch, "HIDDEN-42").await);
        let _ = ch.eof().await;
        seen
    });
    assert!(seen.contains("HIDDEN-42"), "the shell ran on: {seen}");

    // All that the shell printed is in the recording, and nothing was
    // read as sftp.
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !out.contains("HIDDEN-42") {
        assert!(
            Instant::now() < deadline,
            "not recorded: {out}\n{}",
            pam.gateway_log()
        );
        std::thread::sleep(Duration::from_millis(300));
        let v = exported(&pam, &id);
        assert!(
            !events(&v).iter().any(|e| matches!(
                &e.kind,
                EventKind::Subsystem { .. } | EventKind::Sftp { .. }
            )),
            "{v}"
        );
        out = output_of(&v, "sh");
    }
    assert!(out.contains("VISIBLE-36"), "{out}");
    let (code, text) = verify_until(&pam, &id, |code, _| code == 0);
    assert_eq!(code, 0, "{text}");
    let found = ok(pam.admin_cli(&["pam", "sessions", "list", "--grep", "HIDDEN-42"]));
    assert!(found.contains(&id), "{found}");
}

#[test]
fn a_connection_may_have_only_so_many_channels_open_at_once() {
    let pam = Pam::start();
    let _target = key_account(&pam);
    pam.admin_write(
        "pam/resources/keys/accounts/root",
        json!({"auth_method": "key", "username": "root", "max_duration": "1h",
            "allow_forwarding": true}),
    );
    let (block, _id) = config_block(&pam);
    // Somewhere on the target's side that forwards reach.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = u32::from(sink.local_addr().unwrap().port());
    let _accepting = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in sink.incoming().take(200) {
            held.extend(conn.ok());
        }
    });
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let h = russh_login(&pam, &block).await;
        let mut open = Vec::new();
        for n in 0..64 {
            let ch = h
                .channel_open_direct_tcpip("127.0.0.1", port, "127.0.0.1", 4000 + n)
                .await
                .unwrap_or_else(|e| panic!("forward {n}: {e}\n{}", pam.gateway_log()));
            open.push(ch);
        }
        // One more, of either kind, is refused while they are open.
        let more = h
            .channel_open_direct_tcpip("127.0.0.1", port, "127.0.0.1", 5000)
            .await;
        assert!(
            matches!(
                more,
                Err(russh::Error::ChannelOpenFailure(
                    russh::ChannelOpenFailure::ResourceShortage
                ))
            ),
            "{:?}",
            more.err()
        );
        assert!(h.channel_open_session().await.is_err());
        // One closed makes room for one more.
        let first = open.remove(0);
        first.close().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match h
                .channel_open_direct_tcpip("127.0.0.1", port, "127.0.0.1", 5001)
                .await
            {
                Ok(ch) => {
                    open.push(ch);
                    break;
                }
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "no room made: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    assert!(
        pam.gateway_log().contains("as many open as it may"),
        "{}",
        pam.gateway_log()
    );
}

#[test]
fn a_channels_requests_sent_at_once_are_answered_each_in_order() {
    let pam = Pam::start();
    let _target = key_account(&pam);
    let (block, _id) = config_block(&pam);
    // A client sends a channel's requests back to back, each wanting a
    // reply, as OpenSSH's client does (which sends `env` without one) and
    // as Go's x/crypto/ssh does for `Setenv` (with one, waiting for it).
    // The target answers the terminal, the variable (its sshd accepts
    // GATEPASS_TEST_*) and the command; the gateway refuses X11 itself.
    let (replies, out) = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let h = russh_login(&pam, &block).await;
        let mut ch = h.channel_open_session().await.unwrap();
        ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
            .await
            .unwrap();
        ch.set_env(true, "GATEPASS_TEST_ORDER", "kept")
            .await
            .unwrap();
        ch.request_x11(
            true,
            false,
            "MIT-MAGIC-COOKIE-1",
            "00112233445566778899aabbccddeeff",
            0,
        )
        .await
        .unwrap();
        ch.exec(true, "echo VAR-$GATEPASS_TEST_ORDER")
            .await
            .unwrap();
        let mut replies = Vec::new();
        let mut out = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while replies.len() < 4 || !out.contains("VAR-kept") {
            match tokio::time::timeout_at(deadline, ch.wait()).await {
                Ok(Some(russh::ChannelMsg::Success)) => replies.push("success"),
                Ok(Some(russh::ChannelMsg::Failure)) => replies.push("failure"),
                Ok(Some(russh::ChannelMsg::Data { data })) => {
                    out.push_str(&String::from_utf8_lossy(&data));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        (replies, out)
    });
    // One reply per request, in the order asked: terminal, variable, X11,
    // command.
    assert_eq!(
        replies,
        ["success", "success", "failure", "success"],
        "{out}\n{}",
        pam.gateway_log()
    );
    assert!(out.contains("VAR-kept"), "{out}");

    // OpenSSH's client, X11 forwarding on, as many configure it for every
    // host: it hears the refusal as X11's, and the terminal and the
    // command as taken.
    let config = pam.home.path().join("ssh_config");
    std::fs::write(&config, &block).unwrap();
    let (code, out, err) = run(Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args(["-o", "BatchMode=yes", "-o", "IdentityAgent=none"])
        .args(["-o", "ForwardX11=yes", "-o", "SendEnv=GATEPASS_TEST_ORDER"])
        .args([
            "-tt",
            "-vv",
            "gatepass-keys-root",
            "echo VAR-$GATEPASS_TEST_ORDER",
        ])
        .env("DISPLAY", ":97")
        .env("GATEPASS_TEST_ORDER", "sent")
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null()));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("VAR-sent"), "{out}");
    for line in [
        "X11 forwarding request failed",
        "PTY allocation request accepted",
        "exec request accepted",
    ] {
        assert!(err.contains(line), "no {line:?} in {err}");
    }
}

#[test]
fn a_gateway_with_recording_off_says_so_and_the_server_records_the_gap() {
    let mut pam = Pam::start();
    // The gateway's configuration turns recording off.
    pam.stop_gateway();
    let path = pam.admin.path().join("gateway.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    assert!(cfg.contains("[recording]\n"), "{cfg}");
    let cfg = cfg.replacen("[recording]\n", "[recording]\nenabled = false\n", 1);
    std::fs::write(&path, cfg).unwrap();
    pam.start_gateway();
    assert!(
        pam.gateway_log().contains("session recording is off"),
        "{}",
        pam.gateway_log()
    );
    let _target = key_account(&pam);

    // $ gatepass pam ssh access --resource keys --account root -- echo MARK-OFF
    let (code, out, err) = run(&mut pam.access("keys", "root", "5m", &["echo MARK-OFF"]));
    assert_eq!(code, 0, "{out}{err}\n{}", pam.gateway_log());
    assert_eq!(out, "MARK-OFF\n");
    let id = session_id_in(&err);

    // Not recorded, and that is on record: verify says so and fails, the
    // audit log names the session.
    let (code, out, err) = run(&mut pam.admin_cli(&["pam", "sessions", "verify", &id]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("no recording"), "{out}");
    assert!(out.contains("is NOT whole"), "{out}");
    let audit = pam.audit();
    let line = audit
        .lines()
        .find(|l| l.contains("session_not_recorded"))
        .unwrap_or_else(|| panic!("no session_not_recorded event: {audit}"));
    assert!(line.contains(&id), "{line}");
    assert!(line.contains("enabled = false"), "{line}");
}

/// A gateway whose spool's disk is full runs no session unrecorded: the
/// session being recorded ends with a message saying why, a new one is
/// refused with the reason, and once there is room again sessions run and
/// are recorded whole.
#[test]
fn a_full_spool_disk_ends_recorded_sessions_and_refuses_new_ones_until_there_is_room() {
    let mut pam = Pam::start();
    let _target = key_account(&pam);
    // The spool on a small filesystem of its own.
    pam.stop_gateway();
    let fs = gatepass_tests::tmpfs::Tmpfs::mount(&pam.admin.path().join("recording-spool"), "32m");
    pam.start_gateway();

    // A session prints a line every 100 ms; the disk fills under it.
    let mut live = pam
        .access(
            "keys",
            "root",
            "5m",
            &["for i in $(seq 1 300); do echo LINE-$i; sleep 0.1; done"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = wait_for_active(&pam);
    let filler = fs.fill();
    // Kept full: a chunk written before the fill and sent after it frees
    // a page, which a later one could take.
    let top_up = fs.dir.join("top-up");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = live.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the session ran on:\n{}",
            pam.gateway_log()
        );
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&top_up)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &[0; 4096]));
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(live.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("the session's recording cannot be stored, so the session was closed"),
        "{err}\n{}",
        pam.gateway_log()
    );
    let s = pam.session_when(&id, |s| s["state"] == "ended");
    assert_eq!(s["end_reason"], "failed", "{s}");
    assert!(
        s["end_detail"]
            .as_str()
            .unwrap_or_default()
            .contains("could not store the session's recording"),
        "{s}"
    );

    // A new session is refused, and told why.
    let (code, out, err) = run(&mut pam.access("keys", "root", "5m", &["echo NOT-RUN"]));
    assert_ne!(code, 0, "{out}{err}");
    assert!(!out.contains("NOT-RUN"), "{out}");
    assert!(
        err.contains("cannot open the session now: the gateway cannot record sessions"),
        "{err}"
    );
    assert!(err.contains("cannot be written"), "{err}");

    // Room again: within seconds sessions run, and are recorded whole.
    std::fs::remove_file(filler).unwrap();
    std::fs::remove_file(top_up).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let (out, err) = loop {
        let (code, out, err) = run(&mut pam.access("keys", "root", "5m", &["echo ROOM-AGAIN"]));
        if code == 0 {
            break (out, err);
        }
        assert!(
            Instant::now() < deadline,
            "still refused: {err}\n{}",
            pam.gateway_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(out, "ROOM-AGAIN\n");
    let again = session_id_in(&err);
    let (_, verdict) = verify_until(&pam, &again, |code, _| code == 0);
    assert!(verdict.contains("whole"), "{verdict}");
    pam.stop_gateway();
    drop(fs);
}

#[test]
fn watch_follows_a_live_session_and_stops_when_it_ends() {
    let pam = Pam::start();
    let _target = key_account(&pam);
    let (block, id) = config_block(&pam);
    let config = pam.home.path().join("ssh_config");
    std::fs::write(&config, &block).unwrap();

    // $ gatepass pam sessions watch ID, from before the session connects.
    let mut watch = pam
        .admin_cli(&["pam", "sessions", "watch", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdout = stdout;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut watched = String::new();
    let mut wait_for = |text: &str, within: Duration| {
        let deadline = Instant::now() + within;
        while !watched.contains(text) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(more) => watched.push_str(&more),
                Err(_) => panic!("watch did not show {text:?} within {within:?}: {watched}"),
            }
        }
    };

    // A shell, typed into; the marker is made by the shell, so only its
    // output holds it whole.
    let mut shell = Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args(["-o", "BatchMode=yes", "-o", "IdentityAgent=none", "-tt"])
        .arg("gatepass-keys-root")
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = shell.stdin.take().unwrap();
    {
        use std::io::Write;
        stdin.write_all(b"printf 'WATCH-%s\\n' 4711\n").unwrap();
        stdin.flush().unwrap();
    }
    // Shown while the session still runs, within a few seconds.
    let asked = Instant::now();
    wait_for("WATCH-4711", Duration::from_secs(10));
    assert!(
        asked.elapsed() < Duration::from_secs(6),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        shell.try_wait().unwrap().is_none(),
        "the session still runs"
    );

    // The session ends: watch stops by itself.
    {
        use std::io::Write;
        stdin.write_all(b"exit\n").unwrap();
    }
    drop(stdin);
    assert!(wait_exit(&mut shell, Duration::from_secs(20)).success());
    let status = wait_exit(&mut watch, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}

// ------------------------------------------------------------ in process

async fn root_ok(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (st, v) = s.root(method, path, Some(body)).await;
    assert!(st.is_success(), "{method} {path}: {st} {v}");
    v
}

fn chunk_key(session: &str, recording: &str, index: u64) -> String {
    format!("pam/rec-chunk/{session}/{recording}/{index:012}")
}

/// What [`recorded_session`] sets up.
struct Recorded {
    /// The gateway's token and signing key.
    gw: String,
    signer: ed25519_dalek::SigningKey,
    /// A person who may open sessions and read them (and their recordings).
    reader: String,
    /// The session, opened by the gateway, and its recording.
    id: String,
    rec: String,
    key: [u8; 32],
}

/// A gateway enrolled with its recording key; a resource and an account
/// behind it; a person who may read sessions; a session of theirs the
/// gateway has opened, with the recording's ID and key.
async fn recorded_session(s: &Server) -> Recorded {
    let signer = recording::new_signing_key();
    let v = root_ok(s, "POST", "pam/gateways/join-tokens", json!({})).await;
    let join = v["data"]["join_token"].as_str().unwrap().to_string();
    let (_, host_pub) = keypair(s.dir.path(), "gw-host", "ed25519", None);
    let (st, v) = s
        .call(
            "POST",
            "pam/gateways/enroll",
            None,
            Some(
                json!({"join_token": join, "name": "gw1", "address": "127.0.0.1:2222",
                "host_keys": [host_pub], "recording_key": recording::public_key_text(&signer)}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let gw = v["data"]["gateway_token"].as_str().unwrap().to_string();
    let (_, target_pub) = keypair(s.dir.path(), "target", "ed25519", None);
    root_ok(
        s,
        "POST",
        "pam/resources/web",
        json!({"host": "10.0.0.7", "gateway": "gw1", "known_hosts": [target_pub]}),
    )
    .await;
    root_ok(
        s,
        "POST",
        "pam/resources/web/accounts/root",
        json!({"auth_method": "password", "username": "root", "password": "pw-123456"}),
    )
    .await;
    let reader = s
        .token_with_policy(
            "reader",
            r#"path "pam/resources/web/accounts/*" { capabilities = ["update"] }
path "pam/sessions/*" { capabilities = ["read"] }"#,
        )
        .await;
    let (id, rec, key) = open_session(s, &reader, &gw).await;
    Recorded {
        gw,
        signer,
        reader,
        id,
        rec,
        key,
    }
}

/// A new session of `reader`'s on the account `web/root`, opened by the
/// gateway: its ID, its recording's ID and key.
async fn open_session(s: &Server, reader: &str, gw: &str) -> (String, String, [u8; 32]) {
    let name = format!("user-{}", uuid::Uuid::new_v4());
    let (_, user_pub) = keypair(s.dir.path(), &name, "ed25519", None);
    let (st, v) = s
        .call(
            "POST",
            "pam/resources/web/accounts/root/access",
            Some(reader),
            Some(json!({"public_key": user_pub})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let id = v["data"]["session_id"].as_str().unwrap().to_string();

    // The gateway opens the session: the recording's ID and key come
    // with it.
    let (st, v) = s
        .call(
            "POST",
            &format!("pam/gateway/self/sessions/{id}/open"),
            Some(gw),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let rec = v["data"]["recording"]["recording_id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = recording::parse_key(v["data"]["recording"]["key"].as_str().unwrap()).unwrap();
    assert_eq!(v["data"]["recording"]["record_input"], true);
    (id, rec, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_stored_chunks_is_named_and_an_untouched_recording_verifies() {
    for backend in BACKENDS {
        let s = Server::start(backend).await;
        let Recorded {
            gw,
            signer,
            reader,
            id,
            rec,
            key,
        } = recorded_session(&s).await;

        // Four chunks, sealed and chained as the gateway does, sent (one
        // twice: harmless).
        let mut prev = GENESIS;
        let mut chunks = Vec::new();
        for i in 0..4u64 {
            let line = serde_json::to_string(&Event {
                t: i as f64,
                ch: 0,
                kind: EventKind::Output {
                    data: format!("MARK-{i}\n"),
                },
            })
            .unwrap();
            let (c, d) =
                recording::seal(&key, &id, &rec, i, &prev, format!("{line}\n").as_bytes()).unwrap();
            chunks.push(c);
            prev = d;
        }
        let send = |c: &SealedChunk| {
            let path = format!(
                "pam/gateway/self/sessions/{id}/recordings/{rec}/chunks/{}",
                c.index
            );
            let body = serde_json::to_value(c).unwrap();
            let (s, gw) = (&s, &gw);
            async move { s.call("POST", &path, Some(gw), Some(body)).await }
        };
        for c in chunks.iter().chain([&chunks[1]]) {
            let (st, v) = send(c).await;
            assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
        }
        // Another chunk under a stored index is refused.
        let (st, v) = send(&SealedChunk {
            index: 1,
            ..chunks[0].clone()
        })
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");

        let read = |token: String| {
            let s = &s;
            let path = format!("pam/sessions/{id}/recording");
            async move { s.call("GET", &path, Some(&token), None).await }
        };
        let verdict = |v: &Value| v["data"]["recordings"][0]["verdict"].clone();
        let (st, v) = read(reader.clone()).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(verdict(&v), json!({"verdict": "recording", "chunks": 4}));

        // The signed end: the recording is whole, its digest on record.
        let end = recording::sign_end(Some(&signer), &id, &rec, 4, &prev);
        let (st, v) = s
            .call(
                "POST",
                &format!("pam/gateway/self/sessions/{id}/recordings/{rec}/end"),
                Some(&gw),
                Some(serde_json::to_value(&end).unwrap()),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
        assert!(s.audit_text().contains(&end.digest), "{}", s.audit_text());
        // A resend after the end is still harmless; a new chunk is not.
        let (st, v) = send(&chunks[3]).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
        let (extra, _) = recording::seal(&key, &id, &rec, 4, &prev, b"late").unwrap();
        let (st, v) = send(&extra).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        let (_, v) = read(reader.clone()).await;
        assert_eq!(verdict(&v), json!({"verdict": "whole", "chunks": 4}));
        assert_eq!(v["data"]["whole"], true);
        let text = v.to_string();
        for i in 0..4 {
            assert!(text.contains(&format!("MARK-{i}")), "{text}");
        }

        // The recording has its own ACL path.
        let no_recordings = s
            .token_with_policy(
                "no-recordings",
                r#"path "pam/sessions/*" { capabilities = ["read"] }
path "pam/sessions/+/recording" { capabilities = ["deny"] }"#,
            )
            .await;
        let (st, _) = read(no_recordings.clone()).await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        let (st, _) = s
            .call(
                "GET",
                &format!("pam/sessions/{id}"),
                Some(&no_recordings),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK);

        // The same verdicts as a person reads them: `gatepass pam sessions
        // verify ID`, the real CLI over HTTP, exits 0 only when whole.
        let addr = s.listen().await;
        let home = tempfile::tempdir().unwrap();
        let cli_verify = |expect_whole: bool, says: &str| {
            let mut c = Command::new(bin("gatepass"));
            for v in CLI_AMBIENT_ENV {
                c.env_remove(v);
            }
            c.env("HOME", home.path())
                .env("XDG_CONFIG_HOME", home.path().join(".config"))
                .env("GATEPASS_ADDR", &addr)
                .env("GATEPASS_TOKEN", &reader)
                .stdin(Stdio::null())
                .args(["pam", "sessions", "verify", &id]);
            let says = says.to_string();
            async move {
                let (code, out, err) = tokio::task::spawn_blocking(move || run(&mut c))
                    .await
                    .unwrap();
                assert_eq!(code == 0, expect_whole, "exit {code}\n{out}\n{err}");
                assert!(out.contains(&says), "{says:?} not in:\n{out}\n{err}");
                let verdict = if expect_whole {
                    "is whole"
                } else {
                    "is NOT whole"
                };
                assert!(out.contains(verdict), "{out}");
            }
        };
        cli_verify(true, "whole: 4 chunks, signed by the gateway").await;

        // Tampering through the storage, each undone after.
        let storage = &s.core.storage;
        let put = |i: u64, c: &SealedChunk| {
            let k = chunk_key(&id, &rec, i);
            let c = c.clone();
            async move { storage.put(&k, &c).await.unwrap() }
        };
        // One byte of chunk 2 changed.
        let mut edited = chunks[2].clone();
        let mut raw = base64_decode(&edited.data);
        raw[15] ^= 0x01;
        edited.data = base64_encode(&raw);
        put(2, &edited).await;
        let (_, v) = read(reader.clone()).await;
        assert_eq!(verdict(&v), json!({"verdict": "edited", "index": 2}));
        assert_eq!(v["data"]["whole"], false);
        assert_eq!(v["data"]["recordings"][0]["message"], "chunk 2 was edited");
        cli_verify(false, "chunk 2 was edited").await;
        put(2, &chunks[2]).await;
        // Chunk 1 dropped.
        storage.delete(&chunk_key(&id, &rec, 1)).await.unwrap();
        let (_, v) = read(reader.clone()).await;
        assert_eq!(verdict(&v), json!({"verdict": "dropped", "index": 1}));
        cli_verify(false, "chunk 1 was dropped").await;
        put(1, &chunks[1]).await;
        // Chunks 1 and 2 swapped.
        put(1, &chunks[2]).await;
        put(2, &chunks[1]).await;
        let (_, v) = read(reader.clone()).await;
        assert_eq!(
            verdict(&v),
            json!({"verdict": "reordered", "index": 1, "holds": 2})
        );
        cli_verify(false, "chunk 2 is stored in place of chunk 1").await;
        put(1, &chunks[1]).await;
        put(2, &chunks[2]).await;
        // The end cut off.
        storage.delete(&chunk_key(&id, &rec, 3)).await.unwrap();
        let (_, v) = read(reader.clone()).await;
        assert_eq!(
            verdict(&v),
            json!({"verdict": "truncated", "have": 3, "expected": 4})
        );
        cli_verify(
            false,
            "the recording ends after chunk 2, but the gateway signed 4 chunks",
        )
        .await;
        put(3, &chunks[3]).await;
        // Untouched again: whole.
        let (_, v) = read(reader.clone()).await;
        assert_eq!(verdict(&v), json!({"verdict": "whole", "chunks": 4}));
        cli_verify(true, "whole: 4 chunks, signed by the gateway").await;

        // An account whose input is not recorded: the gateway is told so.
        let v = root_ok(
            &s,
            "POST",
            "pam/resources/web/accounts/quiet",
            json!({"auth_method": "password", "username": "quiet", "password": "pw-123456",
                "record_input": false}),
        )
        .await;
        assert_eq!(v["data"]["record_input"], false, "{v}");
        let (_, user_pub) = keypair(s.dir.path(), "quiet-user", "ed25519", None);
        let (st, v) = s
            .call(
                "POST",
                "pam/resources/web/accounts/quiet/access",
                Some(&reader),
                Some(json!({"public_key": user_pub})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let quiet = v["data"]["session_id"].as_str().unwrap().to_string();
        let (st, v) = s
            .call(
                "POST",
                &format!("pam/gateway/self/sessions/{quiet}/open"),
                Some(&gw),
                Some(json!({})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["data"]["recording"]["record_input"], false, "{v}");
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Records `texts` as output, one chunk each, and the signed end, as the
/// gateway sends them.
async fn send_recording(
    s: &Server,
    r: &Recorded,
    id: &str,
    rec: &str,
    key: &[u8; 32],
    texts: &[&str],
) {
    let mut prev = GENESIS;
    for (i, text) in texts.iter().enumerate() {
        let line = serde_json::to_string(&Event {
            t: i as f64,
            ch: 0,
            kind: EventKind::Output {
                data: text.to_string(),
            },
        })
        .unwrap();
        let (c, d) = recording::seal(
            key,
            id,
            rec,
            i as u64,
            &prev,
            format!("{line}\n").as_bytes(),
        )
        .unwrap();
        prev = d;
        let (st, v) = s
            .call(
                "POST",
                &format!("pam/gateway/self/sessions/{id}/recordings/{rec}/chunks/{i}"),
                Some(&r.gw),
                Some(serde_json::to_value(&c).unwrap()),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    }
    let end = recording::sign_end(Some(&r.signer), id, rec, texts.len() as u64, &prev);
    let (st, v) = s
        .call(
            "POST",
            &format!("pam/gateway/self/sessions/{id}/recordings/{rec}/end"),
            Some(&r.gw),
            Some(serde_json::to_value(&end).unwrap()),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
}

/// The gateway reports the session's connection closed.
async fn end_session(s: &Server, r: &Recorded, id: &str) {
    let (st, v) = s
        .call(
            "POST",
            &format!("pam/gateway/self/sessions/{id}/end"),
            Some(&r.gw),
            Some(json!({"reason": "closed"})),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_recordings_past_their_age_each_on_the_audit_log() {
    use gatepass_server::config::Retention;
    const MINUTE: i64 = 60;
    for backend in BACKENDS {
        let s = Server::start(backend).await;
        // An old session, recorded and ended…
        let r = recorded_session(&s).await;
        send_recording(&s, &r, &r.id, &r.rec, &r.key, &["OLD-1\n", "OLD-2\n"]).await;
        end_session(&s, &r, &r.id).await;
        // …and one an hour later, recorded and ended too.
        s.clock.advance(60 * MINUTE);
        let (new_id, new_rec, new_key) = open_session(&s, &r.reader, &r.gw).await;
        send_recording(&s, &r, &new_id, &new_rec, &new_key, &["NEW-1\n"]).await;
        end_session(&s, &r, &new_id).await;
        let stored = |id: String| {
            let s = &s;
            async move {
                s.core
                    .storage
                    .keys_with_prefix(&format!("pam/rec-chunk/{id}/"))
                    .await
                    .unwrap()
                    .len()
            }
        };
        let recordings = |id: String| {
            let s = &s;
            async move {
                let (st, v) = s
                    .root("GET", &format!("pam/sessions/{id}/recording"), None)
                    .await;
                assert_eq!(st, StatusCode::OK, "{v}");
                v["data"]["recordings"].as_array().unwrap().len()
            }
        };

        // 100 minutes after the first: with no age configured nothing goes.
        s.clock.advance(40 * MINUTE);
        let keep_all = Retention::default();
        assert_eq!(keep_all.recordings, None);
        let removed = gatepass_server::retention::run(&s.core, &keep_all, s.clock.now())
            .await
            .unwrap();
        assert_eq!(removed.recordings, 0);
        assert_eq!(stored(r.id.clone()).await, 2);

        // With 90 minutes the first goes, chunks, end and key, on record
        // with its session and recording; the second, 40 minutes old,
        // stays.
        let policy = Retention {
            recordings: Some(std::time::Duration::from_secs(90 * MINUTE as u64)),
            ..Retention::default()
        };
        let removed = gatepass_server::retention::run(&s.core, &policy, s.clock.now())
            .await
            .unwrap();
        assert_eq!(removed.recordings, 1, "{backend:?}");
        assert_eq!(stored(r.id.clone()).await, 0);
        assert_eq!(recordings(r.id.clone()).await, 0);
        assert!(s
            .core
            .storage
            .keys_with_prefix(&format!("pam/rec/{}/", r.id))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(stored(new_id.clone()).await, 1);
        assert_eq!(recordings(new_id.clone()).await, 1);
        let audit = s.audit_text();
        let line = audit
            .lines()
            .find(|l| l.contains("recording_deleted"))
            .unwrap_or_else(|| panic!("no recording_deleted event: {audit}"));
        assert!(line.contains(&r.id) && line.contains(&r.rec), "{line}");
        assert_eq!(audit.matches("recording_deleted").count(), 1, "{audit}");

        // Another run finds nothing more to delete.
        let removed = gatepass_server::retention::run(&s.core, &policy, s.clock.now())
            .await
            .unwrap();
        assert_eq!(removed.recordings, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grep_finds_the_sessions_whose_recordings_hold_the_text_as_far_as_the_acl_allows() {
    for backend in BACKENDS {
        let s = Server::start(backend).await;
        // Two sessions: one prints the text (split across two chunks), one
        // does not; a third runs the text as a command.
        let r = recorded_session(&s).await;
        send_recording(
            &s,
            &r,
            &r.id,
            &r.rec,
            &r.key,
            &["deploy: NEEDLE-", "4711 done\r\n"],
        )
        .await;
        let (quiet, quiet_rec, quiet_key) = open_session(&s, &r.reader, &r.gw).await;
        send_recording(
            &s,
            &r,
            &quiet,
            &quiet_rec,
            &quiet_key,
            &["nothing here\r\n"],
        )
        .await;
        let grep = |token: String, text: &'static str| {
            let s = &s;
            async move {
                let (st, v) = s
                    .call(
                        "LIST",
                        &format!("pam/sessions?grep={text}"),
                        Some(&token),
                        None,
                    )
                    .await;
                if st == StatusCode::NOT_FOUND {
                    return Vec::new();
                }
                assert_eq!(st, StatusCode::OK, "{v}");
                let mut keys: Vec<String> = v["data"]["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap().to_string())
                    .collect();
                keys.sort();
                keys
            }
        };
        let lister = s
            .token_with_policy(
                "lister",
                r#"path "pam/sessions" { capabilities = ["list"] }
path "pam/sessions/*" { capabilities = ["read"] }"#,
            )
            .await;
        assert_eq!(
            grep(lister.clone(), "NEEDLE-4711").await,
            vec![r.id.clone()]
        );
        assert_eq!(grep(lister.clone(), "nothing").await, vec![quiet.clone()]);
        assert!(grep(lister.clone(), "NEEDLE-9999").await.is_empty());
        // Without --grep both are listed.
        let (_, v) = s.call("LIST", "pam/sessions", Some(&lister), None).await;
        assert_eq!(v["data"]["keys"].as_array().unwrap().len(), 2, "{v}");

        // A token that may list sessions but not read their recordings
        // finds nothing, though the text is there.
        let no_recordings = s
            .token_with_policy(
                "no-recordings",
                r#"path "pam/sessions" { capabilities = ["list"] }
path "pam/sessions/*" { capabilities = ["read"] }
path "pam/sessions/+/recording" { capabilities = ["deny"] }"#,
            )
            .await;
        assert!(grep(no_recordings.clone(), "NEEDLE-4711").await.is_empty());
        // Nor when only the first session's recording is denied.
        let one_denied = s
            .token_with_policy(
                "one-denied",
                &format!(
                    r#"path "pam/sessions" {{ capabilities = ["list"] }}
path "pam/sessions/*" {{ capabilities = ["read"] }}
path "pam/sessions/{}/recording" {{ capabilities = ["deny"] }}"#,
                    r.id
                ),
            )
            .await;
        assert!(grep(one_denied.clone(), "NEEDLE-4711").await.is_empty());
        assert_eq!(grep(one_denied, "nothing").await, vec![quiet.clone()]);
    }
}

/// Whether a session's recordings read as whole, and the answer.
async fn whole(s: &Server, reader: &str, id: &str) -> (bool, Value) {
    let (st, v) = s
        .call(
            "GET",
            &format!("pam/sessions/{id}/recording"),
            Some(reader),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    (v["data"]["whole"].as_bool().unwrap(), v)
}

#[tokio::test]
async fn a_recording_stays_whole_after_its_gateway_enrolls_again_with_a_new_key() {
    let s = Server::start(Backend::Sqlite).await;
    let r = recorded_session(&s).await;
    send_recording(
        &s,
        &r,
        &r.id,
        &r.rec,
        &r.key,
        &["before the re-enrollment\n"],
    )
    .await;
    end_session(&s, &r, &r.id).await;
    let (ok, v) = whole(&s, &r.reader, &r.id).await;
    assert!(ok, "{v}");

    // `setup --replace`: the same name, a new recording key.
    let v = root_ok(&s, "POST", "pam/gateways/join-tokens", json!({})).await;
    let join = v["data"]["join_token"].as_str().unwrap().to_string();
    let (_, host_pub) = keypair(s.dir.path(), "gw-host-2", "ed25519", None);
    let new_signer = recording::new_signing_key();
    let (st, v) = s
        .call(
            "POST",
            "pam/gateways/enroll",
            None,
            Some(
                json!({"join_token": join, "name": "gw1", "address": "127.0.0.1:2222",
                "host_keys": [host_pub], "replace": true,
                "recording_key": recording::public_key_text(&new_signer)}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (ok, v) = whole(&s, &r.reader, &r.id).await;
    assert!(
        ok,
        "signed by the key of its time, it reads as tampered with: {v}"
    );

    // The gateway deleted: its recordings are as whole as they were.
    root_ok(&s, "DELETE", "pam/gateways/gw1", json!({})).await;
    let (ok, v) = whole(&s, &r.reader, &r.id).await;
    assert!(ok, "after the gateway's deletion: {v}");
}
