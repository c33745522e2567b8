//! The audit file under faults, with real server processes: a full disk
//! refuses requests with 503 before they change anything, and the server
//! serves again by itself once there is room; a torn last line found at
//! start is set aside; `audit rotate` and SIGHUP move to a fresh file whose
//! chain continues; and a server that cannot audit does not block OTP logins
//! through the PAM helper when another server is healthy. Run as root (the
//! small filesystems are tmpfs mounts).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gatepass_api::{Client, Error};
use gatepass_server::audit::AuditKey;
use gatepass_server::seal::SealKey;
use gatepass_tests::tmpfs::Tmpfs;
use gatepass_tests::{bin, run, serve_pair_on_postgres_with, DevServer};
use serde_json::{json, Map, Value};

const ROOT: &str = "gatepass-test-root-token";

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// Uses up the room left in the audit file's last page: a small audited
/// request (an anonymous read, refused with 403 but on record) until the
/// server answers 503; every other request's line is longer.
async fn until_full(c: &Client) {
    for _ in 0..100 {
        if status_of(&c.read("sys/mounts").await) == 503 {
            return;
        }
    }
    panic!("the server never found its audit file full");
}

fn status_of<T: std::fmt::Debug>(r: &Result<T, Error>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(Error::Api { status, .. }) => *status,
        Err(e) => panic!("no answer: {e}"),
    }
}

fn audit_key(seal_key_file: &Path) -> AuditKey {
    AuditKey::new(*SealKey::load(seal_key_file).unwrap().derive("audit"))
}

fn audit_verify(seal_key_file: &Path, file: &Path, extra: &[&str]) -> (i32, String) {
    let (code, out, err) = run(Command::new(bin("gatepass-server"))
        .args(["audit", "verify"])
        .args(extra)
        .arg("--seal-key-file")
        .arg(seal_key_file)
        .arg(file));
    (code, format!("{out}{err}"))
}

fn lines_of(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Successful `ssh/verify` responses on record for `otp`.
fn verifies_on_record(file: &Path, key: &AuditKey, otp: &str) -> usize {
    let otp = key.hmac(otp);
    lines_of(file)
        .iter()
        .filter(|l| {
            l["type"] == "response"
                && l["request"]["path"] == "ssh/verify"
                && l["status"] == 200
                && l["request"]["data"]["otp"] == otp.as_str()
        })
        .count()
}

async fn set_up_ssh(c: &Client) {
    c.write("ssh/config/ca", &obj(json!({"key_type": "ed25519"})))
        .await
        .unwrap();
    c.write(
        "ssh/roles/ops",
        &obj(json!({"key_type": "ca", "allow_user_certificates": true,
                    "allowed_users": "*", "default_user": "root", "ttl": "30m"})),
    )
    .await
    .unwrap();
    c.write(
        "ssh/roles/otp",
        &obj(json!({"key_type": "otp", "default_user": "root", "cidr_list": "127.0.0.0/8"})),
    )
    .await
    .unwrap();
}

async fn otp(c: &Client) -> Result<String, Error> {
    let e = c
        .write("ssh/creds/otp", &obj(json!({"ip": "127.0.0.1"})))
        .await?
        .unwrap();
    Ok(e.data.unwrap()["key"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_disk_refuses_with_503_changes_nothing_and_recovers_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&tmp.path().join("fs"), "256k");
    // The dev server keeps its audit file in its data folder: point that at
    // the small filesystem, the database stays where there is room.
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink(fs.dir.join("audit.log"), data.join("audit.log")).unwrap();
    let s = DevServer::start_in(&data, ROOT);
    let root = s.client();
    let anon = Client::new(&s.settings(None)).unwrap();
    set_up_ssh(&root).await;
    let (_, pk) = gatepass_tests::ssh::keypair(tmp.path(), "k", "ed25519", None);
    let sign = || async {
        root.write("ssh/sign/ops", &obj(json!({"public_key": pk})))
            .await
            .map(|e| {
                e.unwrap().data.unwrap()["serial_number"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
    };
    let verify = |otp: String| {
        let anon = &anon;
        async move { anon.write("ssh/verify", &obj(json!({"otp": otp}))).await }
    };
    let first = sign().await.unwrap();
    let used = otp(&root).await.unwrap();
    assert_eq!(status_of(&verify(used.clone()).await), 200);
    let kept = otp(&root).await.unwrap();
    let certs_before = root.list("ssh/certs").await.unwrap();
    assert_eq!(certs_before, vec![first.clone()]);

    // The disk fills up.
    let filler = fs.fill();
    until_full(&anon).await;
    for round in 0..5 {
        assert_eq!(status_of(&sign().await), 503, "sign, round {round}");
        assert_eq!(status_of(&otp(&root).await), 503, "creds, round {round}");
        assert_eq!(
            status_of(&verify(kept.clone()).await),
            503,
            "verify, round {round}"
        );
        let token = root
            .write("auth/token/create", &obj(json!({"policies": ["default"]})))
            .await;
        assert_eq!(status_of(&token), 503, "token create, round {round}");
        // Status reads keep answering; health says why nothing else is
        // served (503), so that a load balancer sends requests elsewhere.
        assert_eq!(status_of(&anon.read("sys/health").await), 503);
        anon.read("sys/seal-status").await.unwrap();
    }
    // Failed writes left no partial line behind.
    let text = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(
        text.ends_with('\n'),
        "partial line at the end of the audit file"
    );

    let ca = reqwest::Certificate::from_pem(&std::fs::read(&s.cacert).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let health = http
        .get(format!("{}/v1/sys/health", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["audit"]["available"], false, "{health}");
    assert!(
        health["audit"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot write audit file"),
        "{health}"
    );

    // Space is freed: the server finds out by itself, with no request to
    // show it (a load balancer sends none while health says 503), and puts
    // it on record.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    while status_of(&anon.read("sys/health").await) != 200 {
        assert!(
            freed.elapsed() < Duration::from_secs(5),
            "health still 503 5 s after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lines_of(&data.join("audit.log"))
            .iter()
            .any(|l| l["type"] == "audit_log_writable_again"),
        "the recovery is on record"
    );
    let second = loop {
        match sign().await {
            Ok(serial) => break serial,
            Err(Error::Api { status: 503, .. }) if freed.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("not serving 5 s after space was freed: {other:?}"),
        }
    };
    // Nothing happened while full: one new certificate, the refused OTP
    // still valid, the refused token never made.
    let mut certs = root.list("ssh/certs").await.unwrap();
    certs.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(certs, expected);
    let v = verify(kept.clone()).await.unwrap().unwrap();
    assert_eq!(v.data.unwrap()["username"], "root");

    // Every certificate and every consumed OTP is on record.
    let file = data.join("audit.log");
    let text = std::fs::read_to_string(&file).unwrap();
    for serial in &certs {
        assert!(
            text.contains(&format!("\"serial_number\":\"{serial}\"")),
            "certificate {serial} has no audit record"
        );
    }
    let key = audit_key(&data.join("seal.key"));
    assert_eq!(verifies_on_record(&file, &key, &used), 1);
    assert_eq!(verifies_on_record(&file, &key, &kept), 1);
    // No request is on record as answered with 503: those were refused
    // before they were put on record at all.
    assert!(lines_of(&file).iter().all(|l| l["status"] != 503));
    let (code, out) = audit_verify(&data.join("seal.key"), &file, &[]);
    assert_eq!(code, 0, "{out}");
}

/// A dev server started on `data`, one request made, stopped.
fn one_request_run(data: &std::path::Path, rt: &tokio::runtime::Runtime) {
    let mut s = DevServer::start_in(data, ROOT);
    rt.block_on(s.client().read("sys/mounts")).unwrap();
    s.stop();
}

#[test]
fn a_torn_last_line_at_start_is_set_aside_and_the_chain_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    one_request_run(&data, &rt);
    // A write that did not finish (as the old server left after a full disk).
    let file = data.join("audit.log");
    let whole = std::fs::read_to_string(&file).unwrap();
    let whole_lines = whole.lines().count();
    std::fs::write(&file, format!("{whole}{{\"auth\":null,\"request\":{{\"da")).unwrap();

    one_request_run(&data, &rt);

    let aside: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-torn"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let seal = data.join("seal.key");
    // The continued file verifies, and starts by saying what happened.
    let (code, out) = audit_verify(&seal, &file, &[]);
    assert_eq!(code, 0, "{out}");
    let lines = lines_of(&file);
    assert_eq!(lines[0]["type"], "audit_log_recovered");
    assert_eq!(lines[0]["seq"], whole_lines as u64 + 1);
    assert_eq!(lines[0]["set_aside"], aside[0].display().to_string());
    // The set-aside file is kept as it was: its whole lines verify, and the
    // incomplete one is named.
    let (code, out) = audit_verify(&seal, &aside[0], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{whole_lines} whole lines, chain intact"))
            && out.contains("incomplete last line"),
        "{out}"
    );
    let (code, out) = audit_verify(&seal, &aside[0], &["--allow-torn-tail"]);
    assert_eq!(code, 0, "{out}");
}

/// The audit file emptied (or removed) while the server was stopped: at
/// start the chain goes on from the database's copy, and its first line
/// says so, rather than a new chain from 1 that would hide the lines gone.
#[test]
fn an_audit_file_emptied_while_stopped_goes_on_from_the_databases_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    one_request_run(&data, &rt);
    let file = data.join("audit.log");
    let before = lines_of(&file);
    let last_seq = before.last().unwrap()["seq"].as_u64().unwrap();
    std::fs::write(&file, "").unwrap();

    one_request_run(&data, &rt);
    let after = lines_of(&file);
    assert_eq!(
        after[0]["type"], "audit_file_empty_at_start",
        "{:?}",
        after[0]
    );
    assert_eq!(after[0]["copy_seq"], last_seq);
    assert_eq!(after[0]["seq"], last_seq + 1);
    assert_eq!(after[0]["prev"], before.last().unwrap()["mac"]);
    let (code, out) = audit_verify(&data.join("seal.key"), &file, &[]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn audit_rotate_and_sighup_continue_the_chain_in_a_fresh_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = DevServer::start_in(&data, ROOT);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let call = |s: &DevServer| rt.block_on(s.client().read("sys/mounts")).unwrap();
    call(&s);
    let file = data.join("audit.log");
    let seal = data.join("seal.key");
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:1\"\nseal_key_file = {:?}\naudit_log = {:?}\n",
            seal.display().to_string(),
            file.display().to_string()
        ),
    )
    .unwrap();
    let rotate = || {
        let (code, out, err) = run(Command::new(bin("gatepass-server"))
            .args(["audit", "rotate", "--config"])
            .arg(&config));
        assert_eq!(code, 0, "{out}{err}");
    };
    let wait_for_file = || {
        let start = Instant::now();
        while !file.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no new audit file"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let last_mac = |p: &Path| lines_of(p).last().unwrap()["mac"].clone();
    let check = |older: &Path, newer: &Path| {
        for p in [older, newer] {
            let (code, out) = audit_verify(&seal, p, &[]);
            assert_eq!(code, 0, "{}: {out}", p.display());
        }
        assert_eq!(lines_of(newer)[0]["prev"], last_mac(older), "chain broken");
    };

    // `audit rotate` while the server runs.
    rotate();
    wait_for_file();
    call(&s);
    let rotated = |n: usize| {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("audit.log."))
            .collect();
        v.sort();
        assert_eq!(v.len(), n, "{v:?}");
        v
    };
    let first = rotated(1).remove(0);
    check(&first, &file);
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("\"path\":\"sys/mounts\""));

    // logrotate: move the file, then SIGHUP. The server lives on.
    let moved = data.join("audit.log.hup");
    std::fs::rename(&file, &moved).unwrap();
    let (code, _, err) = run(Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .stdout(Stdio::null()));
    assert_eq!(code, 0, "{err}");
    wait_for_file();
    call(&s);
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the server"
    );
    let first_line = &lines_of(&file)[0];
    assert_eq!(first_line["type"], "audit_file_reopened");
    check(&moved, &file);

    // `audit rotate` while no server runs: it starts the new file itself.
    s.stop();
    let before = std::fs::read_to_string(&file).unwrap();
    rotate();
    let all = rotated(3);
    let offline = all
        .iter()
        .find(|p| std::fs::read_to_string(p).unwrap() == before)
        .unwrap()
        .clone();
    assert_eq!(lines_of(&file)[0]["type"], "audit_file_rotated");
    check(&offline, &file);
    // And a server started after it continues that chain.
    let s = DevServer::start_in(&data, ROOT);
    call(&s);
    let (code, out) = audit_verify(&seal, &file, &[]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otp_login_succeeds_through_the_helper_when_the_first_server_cannot_audit() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let fs = Tmpfs::mount(&d.join("fs"), "256k");
    let (a, b) = serve_pair_on_postgres_with(
        d,
        "auditfault",
        &fs.dir.join("a-audit.log"),
        &d.join("b-audit.log"),
    )
    .await;
    let kb = Client::new(&b.settings).unwrap();
    set_up_ssh(&kb).await;
    let ka = Client::new(&a.settings).unwrap();
    ka.read("sys/mounts").await.unwrap();
    // A cannot write its audit file any more.
    let _filler = fs.fill();
    let mut anon_a = a.settings.clone();
    anon_a.token = None;
    until_full(&Client::new(&anon_a).unwrap()).await;
    assert_eq!(status_of(&ka.read("sys/mounts").await), 503);

    let otp = otp(&kb).await.unwrap();
    let syslog_path = d.join("syslog.sock");
    let syslog = UnixDatagram::bind(&syslog_path).unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let config = d.join("helper.toml");
    std::fs::write(
        &config,
        format!(
            "servers = [{:?}, {:?}]\nmount = \"ssh\"\nca_cert = {:?}\ntimeout = \"5s\"\n\
             allowed_roles = [\"*\"]\nsyslog_socket = {:?}\n",
            a.settings.addr,
            b.settings.addr,
            a.settings.ca_cert.as_ref().unwrap().display().to_string(),
            syslog_path.display().to_string(),
        ),
    )
    .unwrap();
    // As pam_exec runs it: PAM variables, the OTP on stdin.
    let mut child = Command::new(bin("gatepass-helper"))
        .arg(format!("-config={}", config.display()))
        .env_clear()
        .env("PAM_USER", "root")
        .env("PAM_RHOST", "192.0.2.10")
        .env("PAM_SERVICE", "sshd")
        .env("PAM_TYPE", "auth")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{otp}\0").as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let mut buf = vec![0u8; 8192];
    let n = syslog.recv(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..n]).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "login refused: {line}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(line.contains("OTP login granted"), "{line}");
    assert!(line.contains(&b.settings.addr), "{line}");

    // B has the verify on record; A never took the OTP.
    let key = audit_key(&d.join("seal.key"));
    assert_eq!(verifies_on_record(&d.join("b-audit.log"), &key, &otp), 1);
    assert!(std::fs::read_to_string(fs.dir.join("a-audit.log"))
        .unwrap()
        .ends_with('\n'));
    drop((a, b));
}
