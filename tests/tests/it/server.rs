//! The real `gatepass-server` binary, as an operator meets it: the dev
//! server from the README, hvac against it, restarts and a crash, the audit
//! file and `audit verify`, `init` and `serve`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use gatepass_tests::{bin, run, DevServer};
use serde_json::{json, Map, Value};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn hvac_logs_in_with_approle_and_uses_generic_calls() {
    let s = DevServer::start();
    let (code, out, err) = run(Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/hvac_approle.py"
        ))
        .envs(s.cli_env()));
    assert_eq!(code, 0, "hvac script failed:\n{out}\n{err}");
    assert!(out.contains("hvac: OK"));
}

#[test]
fn a_crash_under_load_loses_no_certificate_it_answered_for() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let tmp = tempfile::tempdir().unwrap();
    let (_, pk) = gatepass_tests::ssh::keypair(tmp.path(), "k", "ed25519", None);
    let mut s = DevServer::start();
    let rt = rt();
    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // Eight clients sign without a pause; the server is killed while they
    // do, once it has answered 500 of them.
    let clients = rt.block_on(async {
        let root = s.client();
        root.write("ssh/config/ca", &obj(json!({"key_type": "ed25519"})))
            .await
            .unwrap();
        let role = json!({"key_type": "ca", "allow_user_certificates": true,
                          "allowed_users": "*", "default_user": "root", "ttl": "30m"});
        root.write("ssh/roles/ops", &obj(role)).await.unwrap();
        let mut clients = Vec::new();
        for _ in 0..8 {
            let (c, pk) = (s.client(), pk.clone());
            let (answered, stop) = (answered.clone(), stop.clone());
            clients.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let body = obj(json!({ "public_key": pk }));
                    let Ok(Some(e)) = c.write("ssh/sign/ops", &body).await else {
                        break;
                    };
                    let serial = e.data.unwrap()["serial_number"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    answered.lock().unwrap().push(serial);
                }
            }));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while answered.lock().unwrap().len() < 500 {
            assert!(
                std::time::Instant::now() < deadline,
                "500 certificates took over 60 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        clients
    });
    s.crash_and_restart();
    stop.store(true, Ordering::Relaxed);
    let listed = rt.block_on(async {
        for c in clients {
            c.await.unwrap();
        }
        s.client().list("ssh/certs").await.unwrap()
    });
    let listed: std::collections::HashSet<String> = listed.into_iter().collect();
    let answered = answered.lock().unwrap();
    let lost: Vec<&String> = answered.iter().filter(|a| !listed.contains(*a)).collect();
    assert!(
        lost.is_empty(),
        "{} of the {} certificates answered before the crash are not in the inventory after it: {lost:?}",
        lost.len(),
        answered.len()
    );
}

#[test]
fn restart_keeps_tokens_policies_and_mounts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut s = DevServer::start_in(&dir, "restart-root-token");
    let token = rt().block_on(async {
        let c = s.client();
        c.write(
            "sys/policies/acl/keep",
            &obj(json!({"policy": "path \"sys/mounts\" { capabilities = [\"read\"] }"})),
        )
        .await
        .unwrap();
        c.write("sys/mounts/ssh-host", &obj(json!({"type": "ssh"})))
            .await
            .unwrap();
        c.write(
            "auth/userpass/users/erin",
            &obj(json!({"password": "pw-erin-1"})),
        )
        .await
        .unwrap();
        let e = c
            .write("auth/token/create", &obj(json!({"policies": ["keep"]})))
            .await
            .unwrap()
            .unwrap();
        e.auth.unwrap().client_token
    });
    let addr_before = s.addr.clone();
    s.stop();
    let s = DevServer::start_in(&dir, "restart-root-token");
    assert_ne!(s.addr, "", "restarted server printed its address");
    let _ = addr_before;
    rt().block_on(async {
        let c = s.client();
        let p = c
            .read("sys/policies/acl/keep")
            .await
            .unwrap()
            .expect("policy kept");
        assert!(p.data.unwrap()["policy"]
            .as_str()
            .unwrap()
            .contains("sys/mounts"));
        let m = c.read("sys/mounts").await.unwrap().unwrap().data.unwrap();
        assert_eq!(m["ssh-host/"]["type"], "ssh");
        assert_eq!(m["ssh/"]["type"], "ssh");
        assert_eq!(c.list("auth/userpass/users").await.unwrap(), vec!["erin"]);
        // The token made before the restart still works, with its policy.
        let t = gatepass_api::Client::new(&s.settings(Some(&token))).unwrap();
        let me = t
            .read("auth/token/lookup-self")
            .await
            .unwrap()
            .unwrap()
            .data
            .unwrap();
        assert_eq!(me["policies"], json!(["default", "keep"]));
        assert!(t.read("sys/mounts").await.unwrap().is_some());
        // And the login still works with the stored password hash.
        let anon = gatepass_api::Client::new(&s.settings(None)).unwrap();
        let l = anon
            .write(
                "auth/userpass/login/erin",
                &obj(json!({"password": "pw-erin-1"})),
            )
            .await
            .unwrap();
        assert!(l.unwrap().auth.is_some());
    });
    // The audit chain continued across the restart.
    let (code, out, err) = run(Command::new(bin("gatepass-server"))
        .args(["audit", "verify", "--seal-key-file"])
        .arg(dir.join("seal.key"))
        .arg(dir.join("audit.log")));
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn password_guesses_sent_at_once_are_tried_no_more_than_the_limit() {
    let s = DevServer::start();
    let answers = rt().block_on(async {
        let c = s.client();
        c.write(
            "auth/userpass/users/gus",
            &obj(json!({"password": "gus-right-password"})),
        )
        .await
        .unwrap();
        // Forty wrong passwords at once from one address, and the right
        // one just after: the limit (ten failures in five minutes) must
        // hold against guesses that are all let in before any has failed,
        // so the right one comes too late to be tried.
        let anon = gatepass_api::Client::new(&s.settings(None)).unwrap();
        // One HTTP/2 connection made first carries them all, so the wrong
        // ones reach the server together, before the right one.
        let _ = anon.read("sys/health").await;
        let mut tries = Vec::new();
        for i in 0..41 {
            if i == 40 {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            let anon = anon.clone();
            let password = match i {
                40 => "gus-right-password".to_string(),
                _ => format!("wrong-{i}"),
            };
            tries.push(tokio::spawn(async move {
                let body = obj(json!({ "password": password }));
                match anon.write("auth/userpass/login/gus", &body).await {
                    Ok(_) => 200,
                    Err(gatepass_api::Error::Api { status, .. }) => status,
                    Err(e) => panic!("{e}"),
                }
            }));
        }
        let mut answers = Vec::new();
        for t in tries {
            answers.push(t.await.unwrap());
        }
        answers
    });
    let tried = answers.iter().filter(|&&a| a != 429).count();
    assert!(tried <= 10, "{tried} guesses were tried: {answers:?}");
    assert_eq!(answers.last(), Some(&429), "the right one: {answers:?}");
    assert!(
        answers.iter().all(|a| [200, 400, 429].contains(a)),
        "{answers:?}"
    );
}

/// Makes some traffic with secrets in it and returns them.
fn traffic(s: &DevServer) -> Vec<String> {
    rt().block_on(async {
        let c = s.client();
        c.write(
            "auth/userpass/users/fay",
            &obj(json!({"password": "fay-password-9f8e"})),
        )
        .await
        .unwrap();
        let anon = gatepass_api::Client::new(&s.settings(None)).unwrap();
        let l = anon
            .write(
                "auth/userpass/login/fay",
                &obj(json!({"password": "fay-password-9f8e"})),
            )
            .await
            .unwrap()
            .unwrap();
        let tok = l.auth.unwrap().client_token;
        c.write("auth/approle/role/ci", &obj(json!({})))
            .await
            .unwrap();
        let sid = c
            .write("auth/approle/role/ci/secret-id", &obj(json!({})))
            .await
            .unwrap()
            .unwrap();
        let sid = sid.data.unwrap()["secret_id"].as_str().unwrap().to_string();
        let _ = anon.read("sys/mounts").await;
        vec!["fay-password-9f8e".into(), tok, sid, s.token.clone()]
    })
}

fn verify(s: &DevServer, file: &std::path::Path) -> (i32, String) {
    let (code, out, err) = run(Command::new(bin("gatepass-server"))
        .args(["audit", "verify", "--seal-key-file"])
        .arg(s.data_dir.join("seal.key"))
        .arg(file));
    (code, format!("{out}{err}"))
}

#[test]
fn audit_verify_catches_edits_deletions_and_swaps_and_no_secret_is_logged() {
    let mut s = DevServer::start();
    let secrets = traffic(&s);
    s.stop();
    let audit = s.data_dir.join("audit.log");
    let text = std::fs::read_to_string(&audit).unwrap();
    let log = s.log();
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "audit file holds a secret");
        assert!(!log.contains(secret.as_str()), "server log holds a secret");
    }
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() >= 5,
        "expected several audit lines, got {}",
        lines.len()
    );
    let (code, out) = verify(&s, &audit);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{} lines", lines.len())), "{out}");

    let tampered = s.data_dir.join("tampered.log");
    let write = |ls: Vec<String>| std::fs::write(&tampered, ls.join("\n") + "\n").unwrap();
    let owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();

    // Edited: change line 3.
    let mut edited = owned.clone();
    edited[2] = edited[2].replacen("\"operation\":\"", "\"operation\":\"x", 1);
    write(edited);
    let (code, out) = verify(&s, &tampered);
    assert_eq!(code, 1);
    assert!(out.contains("line 3") && out.contains("edited"), "{out}");

    // Deleted: drop line 2.
    let mut deleted = owned.clone();
    deleted.remove(1);
    write(deleted);
    let (code, out) = verify(&s, &tampered);
    assert_eq!(code, 1);
    assert!(out.contains("line 2") && out.contains("removed"), "{out}");

    // Swapped: lines 4 and 5.
    let mut swapped = owned.clone();
    swapped.swap(3, 4);
    write(swapped);
    let (code, out) = verify(&s, &tampered);
    assert_eq!(code, 1);
    assert!(out.contains("line 4") && out.contains("reordered"), "{out}");
}

/// An init that stopped after the storage was sealed with its new key
/// (killed, or failed on the way) leaves that key beside its place; the
/// next `init` goes on with it instead of making another, which the
/// storage would refuse for good.
#[test]
fn an_init_stopped_half_way_goes_on_with_the_key_it_made() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // The storage's folder is another user's, as the packages make
    // /var/lib/gatepass the `gatepass` user's.
    std::fs::create_dir(d.join("prod")).unwrap();
    std::os::unix::fs::chown(d.join("prod"), Some(65534), Some(65534)).unwrap();
    let config = |seal: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\nstorage = \"sqlite://{db}\"\nseal_key_file = \"{seal}\"\naudit_log = \"{audit}\"\n",
            db = d.join("prod/gatepass.db").display(),
            seal = d.join(seal).display(),
            audit = d.join("audit.log").display(),
        )
    };
    let cfg = d.join("server.toml");
    std::fs::write(&cfg, config("prod/seal.key")).unwrap();
    // The storage sealed with the key left in seal.key.new, and not
    // initialized: what an init stopped between the two leaves.
    let left = "ab".repeat(32);
    let aside = d.join("prod/seal.key.new");
    std::fs::write(&aside, format!("{left}\n")).unwrap();
    std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(0o600)).unwrap();
    let half = d.join("half.toml");
    std::fs::write(&half, config("prod/seal.key.new")).unwrap();
    let (code, _, err) = run(Command::new(bin("gatepass-server"))
        .args(["serve", "--config"])
        .arg(&half));
    assert_ne!(code, 0);
    assert!(err.contains("not initialized"), "{err}");

    let (code, root, err) = run(Command::new(bin("gatepass-server"))
        .args(["init", "--config"])
        .arg(&cfg));
    assert_eq!(code, 0, "{err}");
    assert!(root.trim().starts_with("gps."), "{root:?}");
    let key = std::fs::read_to_string(d.join("prod/seal.key")).unwrap();
    assert_eq!(key.trim(), left, "the key the storage was sealed with");
    assert!(!aside.exists());
    assert_eq!(mode(&d.join("prod/seal.key")), "600");
    // The database init (as root) made is given to the folder's owner,
    // as whom the service runs.
    use std::os::unix::fs::MetadataExt;
    let db = std::fs::metadata(d.join("prod/gatepass.db")).unwrap();
    assert_eq!((db.uid(), db.gid()), (65534, 65534));
}

#[test]
fn init_runs_once_and_serve_uses_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Certificates for `serve`: reuse the dev server's generator by running
    // a dev server once on this folder.
    let certs = d.join("dev");
    {
        let _dev = DevServer::start_in(&certs, "cert-maker-token");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = d.join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstorage = \"sqlite://{db}\"\nseal_key_file = \"{seal}\"\naudit_log = \"{audit}\"\n[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n",
            db = d.join("prod/gatepass.db").display(),
            seal = d.join("prod/seal.key").display(),
            audit = d.join("log/audit.log").display(),
            cert = certs.join("tls/server.pem").display(),
            key = certs.join("tls/server.key").display(),
        ),
    )
    .unwrap();
    let (code, root, err) = run(Command::new(bin("gatepass-server"))
        .args(["init", "--config"])
        .arg(&cfg));
    assert_eq!(code, 0, "{err}");
    let root = root.trim().to_string();
    assert!(
        root.starts_with("gps."),
        "root token printed once: {root:?}"
    );
    assert_eq!(mode(&d.join("prod/seal.key")), "600");
    let (code, out, err) = run(Command::new(bin("gatepass-server"))
        .args(["init", "--config"])
        .arg(&cfg));
    assert_ne!(code, 0);
    assert!(err.contains("already initialized"), "{out}{err}");
    // With the seal key lost, init says what to restore, and puts no new
    // key where the real one must go back.
    let seal = d.join("prod/seal.key");
    let kept = d.join("seal.key.backup");
    std::fs::rename(&seal, &kept).unwrap();
    let (code, out, err) = run(Command::new(bin("gatepass-server"))
        .args(["init", "--config"])
        .arg(&cfg));
    assert_ne!(code, 0);
    assert!(
        err.contains("already initialized, with another seal key")
            && err.contains("restore that file from your backup"),
        "{out}{err}"
    );
    assert!(!seal.exists(), "a new seal key was left in place");
    assert!(!d.join("prod/seal.key.new").exists());
    std::fs::rename(&kept, &seal).unwrap();

    let mut server = Command::new(bin("gatepass-server"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(std::fs::File::create(d.join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let settings = gatepass_api::Settings {
        addr: format!("https://127.0.0.1:{port}"),
        token: Some(root.clone()),
        ca_cert: Some(certs.join("tls/ca.pem")),
        timeout: Some(std::time::Duration::from_secs(10)),
    };
    let ok = rt().block_on(async {
        let c = gatepass_api::Client::new(&settings).unwrap();
        for _ in 0..100 {
            if let Ok(Some(e)) = c.read("auth/token/lookup-self").await {
                return e.data.unwrap()["policies"] == json!(["root"]);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    });
    // What init and serve created is theirs alone.
    let modes: Vec<(&str, String)> = [
        "prod",
        "prod/seal.key",
        "prod/gatepass.db",
        "prod/gatepass.db-wal",
        "log",
        "log/audit.log",
    ]
    .into_iter()
    .map(|f| (f, mode(&d.join(f))))
    .collect();
    // A second server on the same file (by mistake: another audit file
    // and port) is refused, and the first serves on.
    let second_cfg = d.join("second.toml");
    let second_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &second_cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(&format!(":{port}\""), &format!(":{second_port}\""))
            .replace("log/audit.log", "log/second-audit.log"),
    )
    .unwrap();
    let second_log = d.join("second.log");
    let mut second = Command::new(bin("gatepass-server"))
        .args(["serve", "--config"])
        .arg(&second_cfg)
        .stderr(std::fs::File::create(&second_log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let exit = loop {
        if let Some(st) = second.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            gatepass_tests::stop_child(&mut second);
            gatepass_tests::stop_child(&mut server);
            panic!(
                "a second server serves the same file: {}",
                std::fs::read_to_string(&second_log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&second_log).unwrap();
    assert!(!exit.success(), "{err}");
    assert!(
        err.contains("is served by another gatepass-server already"),
        "{err}"
    );
    let still = rt().block_on(async {
        let c = gatepass_api::Client::new(&settings).unwrap();
        c.read("auth/token/lookup-self").await.is_ok()
    });
    assert!(still);
    gatepass_tests::stop_child(&mut server);
    assert_eq!(
        modes,
        [
            ("prod", "700"),
            ("prod/seal.key", "600"),
            ("prod/gatepass.db", "600"),
            ("prod/gatepass.db-wal", "600"),
            ("log", "700"),
            ("log/audit.log", "600")
        ]
        .map(|(f, m)| (f, m.to_string()))
    );
    assert!(
        ok,
        "serve did not answer with the root token: {}",
        std::fs::read_to_string(d.join("serve.log")).unwrap_or_default()
    );

    // Plain HTTP on a public address is refused with a clear message.
    let bad = d.join("bad.toml");
    std::fs::write(&bad, "listen = \"0.0.0.0:8200\"\n").unwrap();
    let (code, out, err) = run(Command::new(bin("gatepass-server"))
        .args(["serve", "--config"])
        .arg(&bad));
    assert_ne!(code, 0);
    assert!(err.contains("refusing plain HTTP"), "{out}{err}");
}

#[test]
fn a_client_without_the_pinned_ca_is_refused() {
    let s = DevServer::start();
    let other = tempfile::tempdir().unwrap();
    let other_dev = DevServer::start_in(&other.path().join("d"), "other-root-token");
    let mut settings = s.settings(Some(&s.token));
    settings.ca_cert = Some(other_dev.cacert.clone());
    let err = rt().block_on(async {
        gatepass_api::Client::new(&settings)
            .unwrap()
            .read("sys/mounts")
            .await
            .unwrap_err()
    });
    assert!(
        matches!(err, gatepass_api::Error::Transport { .. }),
        "{err}"
    );
}

/// A file's permission bits in octal, as `ls -l` users read them.
fn mode(p: &Path) -> String {
    let m = std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode();
    format!("{:o}", m & 0o777)
}

#[test]
fn the_dev_servers_data_is_its_users_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut dev = Command::new(bin("gatepass-server"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(tmp.path().join("dev.log")).unwrap())
        .spawn()
        .unwrap();
    // The exports are printed once the data folder is set up.
    let stdout = dev.stdout.take().unwrap();
    let printed = BufReader::new(stdout).lines().take(3).count();
    let files = [
        "",
        "gatepass.db",
        "gatepass.db-wal",
        "gatepass.db-shm",
        "audit.log",
        "seal.key",
        "tls",
        "tls/server.key",
    ];
    let modes: Vec<(&str, String)> = files.iter().map(|f| (*f, mode(&data.join(f)))).collect();
    gatepass_tests::stop_child(&mut dev);
    assert_eq!(
        printed,
        3,
        "{}",
        std::fs::read_to_string(tmp.path().join("dev.log")).unwrap_or_default()
    );
    let want: Vec<(&str, String)> = files
        .iter()
        .map(|f| {
            (
                *f,
                if f.is_empty() || *f == "tls" {
                    "700"
                } else {
                    "600"
                }
                .to_string(),
            )
        })
        .collect();
    assert_eq!(modes, want);
}

/// The server runs without transparent huge pages (see
/// `serve::no_transparent_huge_pages`): the kernel says so for the process.
#[test]
fn the_server_runs_without_transparent_huge_pages() {
    let s = DevServer::start();
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
    let thp: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("THP_enabled:"))
        .collect();
    assert_eq!(thp, ["THP_enabled:\t0"], "{status}");
}
