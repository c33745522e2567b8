//! Backups of a running server: `gatepass-server snapshot save` while it
//! signs certificates, `snapshot restore` into new storage with the same
//! seal key, and a new server there on which what existed before the
//! snapshot still works (the token signs, the certificate is in the
//! inventory and can be revoked, the CA and role are the same). On SQLite
//! and PostgreSQL; and a snapshot that is damaged, edited, sealed with
//! another key, or aimed at storage in use is refused with nothing written.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatepass_api::{Client, Settings};
use gatepass_server::seal::SealKey;
use gatepass_tests::ssh::{keypair, krl_revokes};
use gatepass_tests::{bin, init_server, pg, run, serve_config, start_serve};
use serde_json::{json, Value};

/// `gatepass-server snapshot save|restore --config CONFIG FILE`: exit
/// code, stdout, stderr.
async fn snapshot(what: &str, config: &Path, file: &Path) -> (i32, String, String) {
    let mut cmd = Command::new(bin("gatepass-server"));
    cmd.args(["snapshot", what, "--config"])
        .arg(config)
        .arg(file);
    tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap()
}

async fn api(c: &Client, method: &str, path: &str, body: Value) -> Value {
    let body = body.as_object().cloned();
    c.request(method, path, body.as_ref())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
        .unwrap_or(Value::Null)
}

fn client(settings: &Settings, token: &str) -> Client {
    let mut s = settings.clone();
    s.token = Some(token.to_string());
    Client::new(&s).unwrap()
}

/// The KRL as a host fetches it (no token).
async fn krl(settings: &Settings) -> Vec<u8> {
    let mut b = reqwest::Client::builder().use_rustls_tls();
    for c in gatepass_api::load_ca(settings.ca_cert.as_ref().unwrap()).unwrap() {
        b = b.add_root_certificate(c);
    }
    let resp = b
        .build()
        .unwrap()
        .get(format!("{}/v1/ssh/krl", settings.addr))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.bytes().await.unwrap().to_vec()
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

async fn sign(c: &Client, public_key: &str) -> (String, String) {
    let v = api(
        c,
        "POST",
        "ssh/sign/dev",
        json!({"public_key": public_key, "valid_principals": "alice"}),
    )
    .await;
    (
        v["data"]["serial_number"].as_str().unwrap().to_string(),
        v["data"]["signed_key"].as_str().unwrap().to_string(),
    )
}

/// The whole session: a server on `source` signs under load while a
/// snapshot is taken; the snapshot goes into `target`, a new server starts
/// there, and what was made before the snapshot works on it.
async fn snapshot_under_load_restores(source: &str, target: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (old_config, mut old_settings) = serve_config(d, "old", source, "");
    let root = init_server(&old_config);
    old_settings.token = Some(root.clone());
    let old = start_serve(&old_config, &d.join("old.log"), old_settings.clone());
    old.wait_up().await;
    let c = client(&old.settings, &root);

    // A CA, a role, and a token whose policy lets it sign with the role.
    let ca = api(&c, "POST", "ssh/config/ca", json!({})).await["data"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    api(
        &c,
        "POST",
        "ssh/roles/dev",
        json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*", "ttl": "1h"}),
    )
    .await;
    api(
        &c,
        "POST",
        "sys/policies/acl/signer",
        json!({"policy": "path \"ssh/sign/dev\" { capabilities = [\"update\"] }"}),
    )
    .await;
    let token = api(
        &c,
        "POST",
        "auth/token/create",
        json!({"policies": ["signer"], "ttl": "24h"}),
    )
    .await["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    let role = api(&c, "GET", "ssh/roles/dev", json!(null)).await["data"].clone();
    let (_, user_pub) = keypair(d, "user", "ed25519", None);
    let signer = client(&old.settings, &token);
    let (serial, cert) = sign(&signer, &user_pub).await;

    // A signing load: four clients sign in a loop until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let signed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, signed) = (stop.clone(), signed.clone());
        let (signer, user_pub) = (signer.clone(), user_pub.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sign(&signer, &user_pub).await;
                signed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    while signed.load(Ordering::Relaxed) < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the load does not sign"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The snapshot, taken while the load signs. On a busy machine a quick
    // snapshot can start and end between two signatures: it is taken
    // again (a few times at most) until one overlaps the load.
    let file = d.join("backup.snap");
    let mut during = 0;
    let mut out = String::new();
    for _ in 0..10 {
        let _ = std::fs::remove_file(&file);
        let before = signed.load(Ordering::Relaxed);
        let (code, saved, err) = snapshot("save", &old_config, &file).await;
        assert_eq!(code, 0, "snapshot save: {err}");
        out = saved;
        during = signed.load(Ordering::Relaxed) - before;
        if during > 0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert!(
        during > 0,
        "nothing was signed while the snapshot was taken"
    );
    assert!(out.contains("wrote") && out.contains("entries"), "{out}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the snapshot is readable by others");
    }
    drop(old);

    // A new server: new storage, the old seal key (the same folder's
    // seal.key), the snapshot restored into it; no `init`.
    let (new_config, new_settings) = serve_config(d, "new", target, "");
    let (code, out, err) = snapshot("restore", &new_config, &file).await;
    assert_eq!(code, 0, "snapshot restore: {err}");
    assert!(out.contains("restored"), "{out}");
    let new = start_serve(&new_config, &d.join("new.log"), new_settings);
    new.wait_up().await;
    let c = client(&new.settings, &root);

    // The same CA and role; the token made before the snapshot signs.
    let v = api(&c, "GET", "ssh/config/ca", json!(null)).await;
    assert_eq!(v["data"]["public_key"].as_str().unwrap(), ca);
    let v = api(&c, "GET", "ssh/roles/dev", json!(null)).await;
    assert_eq!(v["data"], role);
    let signer = client(&new.settings, &token);
    sign(&signer, &user_pub).await;

    // The certificate signed before the snapshot is in the inventory, and
    // revoking it by serial puts it in the KRL.
    let v = api(&c, "GET", &format!("ssh/certs/{serial}"), json!(null)).await;
    assert_eq!(v["data"]["revoked"], false, "{v}");
    assert!(!krl_revokes(d, &krl(&new.settings).await, &cert));
    api(&c, "POST", "ssh/revoke", json!({"serial_number": serial})).await;
    assert!(
        krl_revokes(d, &krl(&new.settings).await, &cert),
        "the revoked certificate is not in the KRL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_under_signing_load_restores_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    snapshot_under_load_restores(
        &sqlite_url(&dir.path().join("old/gatepass.db")),
        &sqlite_url(&dir.path().join("new/gatepass.db")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_under_signing_load_restores_on_postgres() {
    let pg = pg::shared();
    snapshot_under_load_restores(&pg.new_database("snap_old"), &pg.new_database("snap_new")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshots_and_used_storage_are_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A server's storage (SQLite); a save needs no running server.
    let (old_config, _) = serve_config(d, "old", &sqlite_url(&d.join("old.db")), "");
    let root = init_server(&old_config);
    let file = d.join("backup.snap");
    let (code, _, err) = snapshot("save", &old_config, &file).await;
    assert_eq!(code, 0, "{err}");

    // Save never replaces a file.
    let saved = std::fs::read(&file).unwrap();
    let (code, _, err) = snapshot("save", &old_config, &file).await;
    assert_eq!(code, 1);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), saved);

    // The new storage is an empty PostgreSQL database (a SQLite snapshot
    // goes into PostgreSQL as it is).
    let target = pg::shared().new_database("snap_target");
    let (new_config, new_settings) = serve_config(d, "new", &target, "");

    // Another seal key: refused, the database untouched.
    let other = tempfile::tempdir().unwrap();
    SealKey::generate()
        .write_new(&other.path().join("seal.key"))
        .unwrap();
    let (other_config, _) = serve_config(other.path(), "new", &target, "");
    let (code, _, err) = snapshot("restore", &other_config, &file).await;
    assert_eq!(code, 1);
    assert!(err.contains("sealed with another seal key"), "{err}");

    // Edited, cut short, missing: refused.
    let edited = d.join("edited.snap");
    let mut bytes = saved.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&edited, &bytes).unwrap();
    let (code, _, err) = snapshot("restore", &new_config, &edited).await;
    assert_eq!(code, 1);
    assert!(err.contains("damaged or was edited"), "{err}");
    let cut = d.join("cut.snap");
    std::fs::write(&cut, &saved[..saved.len() - 40]).unwrap();
    let (code, _, err) = snapshot("restore", &new_config, &cut).await;
    assert_eq!(code, 1);
    assert!(err.contains("truncated"), "{err}");
    let (code, _, err) = snapshot("restore", &new_config, &d.join("nonesuch.snap")).await;
    assert_eq!(code, 1);
    assert!(err.contains("no such file"), "{err}");

    // Storage in use: refused.
    let (code, _, err) = snapshot("restore", &old_config, &file).await;
    assert_eq!(code, 1);
    assert!(err.contains("is not empty"), "{err}");
    assert!(err.contains("old.db"), "{err}");

    // Storage that cannot be reached: refused, naming it.
    let (down_config, _) = serve_config(d, "down", "postgres://postgres@127.0.0.1:1/gone", "");
    let (code, _, err) = snapshot("restore", &down_config, &file).await;
    assert_eq!(code, 1);
    assert!(err.contains("PostgreSQL 127.0.0.1:1/gone"), "{err}");
    let (code, _, err) = snapshot("save", &down_config, &d.join("down.snap")).await;
    assert_eq!(code, 1);
    assert!(err.contains("PostgreSQL 127.0.0.1:1/gone"), "{err}");
    assert!(!d.join("down.snap").exists());

    // None of that wrote anything: the good snapshot goes in, and a server
    // on it knows the root token.
    let (code, _, err) = snapshot("restore", &new_config, &file).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = snapshot("restore", &new_config, &file).await;
    assert_eq!(code, 1, "restored twice");
    assert!(err.contains("is not empty"), "{err}");
    let new = start_serve(&new_config, &d.join("new.log"), new_settings);
    new.wait_up().await;
    let v = api(
        &client(&new.settings, &root),
        "GET",
        "auth/token/lookup-self",
        json!(null),
    )
    .await;
    assert_eq!(v["data"]["policies"], json!(["root"]), "{v}");
}
