//! Certificate logins into a real sshd: the server signs, sshd (own config,
//! loopback port) trusts the CA, and the real `ssh` client logs in — or is
//! refused, for each reason a certificate should be refused.

use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use gatepass_tests::inproc::{Backend, Server, T0};
use gatepass_tests::sshd::{keygen, pub_path, Sshd, SshdOptions};
use serde_json::{json, Value};

/// An in-process server whose clock reads the real time, so that sshd
/// (which reads the real clock) agrees on validity windows.
async fn server() -> Server {
    let s = Server::start(Backend::Sqlite).await;
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    s.clock.advance(now - T0);
    s
}

async fn ok(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (st, v) = s.root(method, path, Some(body)).await;
    assert!(st.is_success(), "{method} {path}: {st} {v}");
    v
}

async fn public_keys(s: &Server, mount: &str) -> String {
    let (st, v) = s
        .call("GET", &format!("{mount}/public_key"), None, None)
        .await;
    assert_eq!(st, StatusCode::OK);
    v.as_str().unwrap().to_string()
}

/// Signs `key` (a private key path) and writes `<key>-cert.pub`.
async fn sign(s: &Server, mount: &str, role: &str, key: &Path, body: Value) -> PathBuf {
    let mut body = body;
    body["public_key"] = json!(std::fs::read_to_string(pub_path(key)).unwrap());
    let v = ok(s, "POST", &format!("{mount}/sign/{role}"), body).await;
    let cert = PathBuf::from(format!("{}-cert.pub", key.display()));
    std::fs::write(&cert, v["data"]["signed_key"].as_str().unwrap()).unwrap();
    cert
}

fn user_role() -> Value {
    json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "root,alice", "default_extensions": {"permit-pty": ""}, "ttl": "10m"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ca_key_type_logs_in() {
    let s = server().await;
    let dir = s.dir.path();
    let mut trusted = String::new();
    let mut certs = Vec::new();
    let cases: [(&str, Value); 6] = [
        ("ed", json!({})),
        ("p256", json!({"key_type": "ecdsa-sha2-nistp256"})),
        ("p384", json!({"key_type": "ecdsa-sha2-nistp384"})),
        ("rsa2048", json!({"key_type": "ssh-rsa", "key_bits": 2048})),
        ("rsa3072", json!({"import": "rsa", "bits": 3072})),
        ("rsa4096", json!({"import": "rsa", "bits": 4096})),
    ];
    for (mount, ca) in cases {
        ok(
            &s,
            "POST",
            &format!("sys/mounts/{mount}"),
            json!({"type": "ssh"}),
        )
        .await;
        let body = match ca.get("import") {
            // RSA keys made by ssh-keygen, imported: the import path and
            // every RSA size, without waiting for slow key generation.
            Some(_) => {
                let k = keygen(
                    dir,
                    &format!("ca-{mount}"),
                    "rsa",
                    Some(ca["bits"].as_u64().unwrap() as u32),
                );
                json!({"private_key": std::fs::read_to_string(&k).unwrap()})
            }
            None => ca,
        };
        ok(&s, "POST", &format!("{mount}/config/ca"), body).await;
        ok(&s, "POST", &format!("{mount}/roles/ops"), user_role()).await;
        trusted.push_str(&public_keys(&s, mount).await);
        let key = keygen(dir, &format!("user-{mount}"), "ed25519", None);
        let cert = sign(&s, mount, "ops", &key, json!({"valid_principals": "root"})).await;
        certs.push((mount, key, cert));
    }
    let sshd = Sshd::start(SshdOptions::trusting_user_ca(&write(
        dir,
        "trusted.pub",
        &trusted,
    )));
    for (mount, key, cert) in &certs {
        let (code, out, err) = sshd
            .client()
            .identity(key)
            .certificate(cert)
            .run("echo hello");
        assert_eq!(
            (code, out.as_str()),
            (0, "hello\n"),
            "{mount}: {err}\n{}",
            sshd.log()
        );
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    gatepass_tests::ssh::write(dir, name, text, 0o644)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_refused_for_every_reason() {
    let s = server().await;
    let dir = s.dir.path();
    ok(&s, "POST", "ssh/config/ca", json!({})).await;
    ok(&s, "POST", "ssh/roles/ops", user_role()).await;
    ok(&s, "POST", "sys/mounts/other", json!({"type": "ssh"})).await;
    ok(&s, "POST", "other/config/ca", json!({})).await;
    ok(&s, "POST", "other/roles/ops", user_role()).await;
    let trusted = write(dir, "trusted.pub", &public_keys(&s, "ssh").await);
    let krl = dir.join("revoked.krl");
    let refresh_krl = |bytes: Vec<u8>| std::fs::write(&krl, bytes).unwrap();
    let (_, _) = s.call("GET", "ssh/krl", None, None).await;
    refresh_krl(krl_bytes(&s).await);
    let sshd = Sshd::start(SshdOptions {
        extra_config: vec![
            format!("TrustedUserCAKeys {}", trusted.display()),
            format!("RevokedKeys {}", krl.display()),
        ],
        ..SshdOptions::default()
    });
    let login = |key: &Path, cert: &Path| {
        sshd.client()
            .identity(key)
            .certificate(cert)
            .run("echo hello")
    };

    // The good one, as the baseline every refusal is measured against.
    let good = keygen(dir, "good", "ed25519", None);
    let good_cert = sign(&s, "ssh", "ops", &good, json!({"valid_principals": "root"})).await;
    assert_eq!(login(&good, &good_cert).0, 0, "{}", sshd.log());

    // A principal other than the login user.
    let k = keygen(dir, "alice", "ed25519", None);
    let c = sign(&s, "ssh", "ops", &k, json!({"valid_principals": "alice"})).await;
    let (code, _, err) = login(&k, &c);
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");

    // Expired: signed two hours ago for ten minutes.
    s.clock.advance(-7200);
    let k = keygen(dir, "expired", "ed25519", None);
    let c = sign(&s, "ssh", "ops", &k, json!({"valid_principals": "root"})).await;
    s.clock.advance(7200);
    assert_ne!(login(&k, &c).0, 0, "an expired certificate logged in");

    // Not yet valid: signed "an hour from now".
    s.clock.advance(3600);
    let k = keygen(dir, "future", "ed25519", None);
    let c = sign(&s, "ssh", "ops", &k, json!({"valid_principals": "root"})).await;
    s.clock.advance(-3600);
    assert_ne!(login(&k, &c).0, 0, "a not-yet-valid certificate logged in");

    // Another CA's certificate.
    let k = keygen(dir, "foreign", "ed25519", None);
    let c = sign(&s, "other", "ops", &k, json!({"valid_principals": "root"})).await;
    assert_ne!(login(&k, &c).0, 0, "another CA's certificate logged in");

    // Revoked: through RevokedKeys with the KRL the server serves.
    let k = keygen(dir, "revoked", "ed25519", None);
    let c = sign(&s, "ssh", "ops", &k, json!({"valid_principals": "root"})).await;
    assert_eq!(login(&k, &c).0, 0);
    let serial = ssh_key::Certificate::read_file(&c).unwrap().serial();
    ok(
        &s,
        "POST",
        "ssh/revoke",
        json!({"serial_number": format!("{serial:x}")}),
    )
    .await;
    refresh_krl(krl_bytes(&s).await);
    let (code, _, _) = login(&k, &c);
    assert_ne!(code, 0, "a revoked certificate logged in");
    assert!(sshd.log().contains("revoked"), "{}", sshd.log());
    // And the rest still work with the KRL in place.
    assert_eq!(login(&good, &good_cert).0, 0);
}

async fn krl_bytes(s: &Server) -> Vec<u8> {
    let m = gatepass_server::mounts::get(&s.core, "ssh")
        .await
        .unwrap()
        .unwrap();
    gatepass_server::ssh::certs::krl(&s.core, &m, s.clock.now())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_and_new_certificates_working() {
    let s = server().await;
    let dir = s.dir.path();
    ok(&s, "POST", "ssh/config/ca", json!({})).await;
    ok(&s, "POST", "ssh/roles/ops", user_role()).await;
    let old_key = keygen(dir, "old", "ed25519", None);
    let old_cert = sign(
        &s,
        "ssh",
        "ops",
        &old_key,
        json!({"valid_principals": "root"}),
    )
    .await;
    // Stage the new issuer; hosts pick up both keys from public_key.
    ok(&s, "POST", "ssh/issuers/generate/next", json!({})).await;
    let trusted = write(dir, "trusted.pub", &public_keys(&s, "ssh").await);
    let sshd = Sshd::start(SshdOptions::trusting_user_ca(&trusted));
    ok(&s, "POST", "ssh/config/issuers", json!({"default": "next"})).await;
    let new_key = keygen(dir, "new", "ed25519", None);
    let new_cert = sign(
        &s,
        "ssh",
        "ops",
        &new_key,
        json!({"valid_principals": "root"}),
    )
    .await;
    assert_ne!(
        std::fs::read_to_string(&old_cert)
            .unwrap()
            .split_whitespace()
            .nth(1),
        None
    );
    for (k, c) in [(&old_key, &old_cert), (&new_key, &new_cert)] {
        let (code, out, err) = sshd.client().identity(k).certificate(c).run("echo hello");
        assert_eq!((code, out.as_str()), (0, "hello\n"), "{err}");
    }
    // Retire the old issuer: hosts trust only the new one, old certs stop.
    let (st, v) = s.root("LIST", "ssh/issuers", None).await;
    assert_eq!(st, StatusCode::OK);
    let old_id = v["data"]["key_info"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, i)| i["is_default"] == false)
        .map(|(id, _)| id.clone())
        .unwrap();
    assert_eq!(
        s.root("DELETE", &format!("ssh/issuer/{old_id}"), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    std::fs::write(&trusted, public_keys(&s, "ssh").await).unwrap();
    assert_ne!(
        sshd.client()
            .identity(&old_key)
            .certificate(&old_cert)
            .run("true")
            .0,
        0
    );
    assert_eq!(
        sshd.client()
            .identity(&new_key)
            .certificate(&new_cert)
            .run("true")
            .0,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_certificates_are_trusted_through_cert_authority() {
    let s = server().await;
    let dir = s.dir.path();
    ok(&s, "POST", "sys/mounts/ssh-host", json!({"type": "ssh"})).await;
    ok(&s, "POST", "ssh-host/config/ca", json!({})).await;
    ok(&s, "POST", "ssh-host/roles/hosts", json!({"key_type": "ca", "allow_host_certificates": true, "allowed_domains": "127.0.0.1,example.com", "allow_bare_domains": true, "allow_subdomains": true})).await;
    ok(&s, "POST", "ssh/config/ca", json!({})).await;
    ok(&s, "POST", "ssh/roles/ops", user_role()).await;
    let host_ca = public_keys(&s, "ssh-host").await;
    let user = keygen(dir, "user", "ed25519", None);
    let user_cert = sign(&s, "ssh", "ops", &user, json!({"valid_principals": "root"})).await;
    let trusted = write(dir, "trusted.pub", &public_keys(&s, "ssh").await);
    // Only the @cert-authority line in known_hosts, as `trust-hosts` writes it.
    let known = write(
        dir,
        "known_hosts",
        &format!("@cert-authority * {}", host_ca.trim()),
    );

    for (principal, should_work) in [("127.0.0.1", true), ("other.example.com", false)] {
        let mut sshd = Sshd::new(SshdOptions::trusting_user_ca(&trusted));
        let host_key = sshd.host_key.clone();
        let hc = sign(
            &s,
            "ssh-host",
            "hosts",
            &host_key,
            json!({"cert_type": "host", "valid_principals": principal}),
        )
        .await;
        sshd.options
            .extra_config
            .push(format!("HostCertificate {}", hc.display()));
        sshd.launch();
        let (code, out, err) = sshd
            .client()
            .identity(&user)
            .certificate(&user_cert)
            .known_hosts(&known)
            .run("echo hello");
        if should_work {
            assert_eq!(
                (code, out.as_str()),
                (0, "hello\n"),
                "{err}\n{}",
                sshd.log()
            );
        } else {
            assert_ne!(code, 0, "a host certificate for another name was accepted");
            assert!(err.contains("Host key verification failed"), "{err}");
        }
    }
}
