//! The SSH certificate authority through the API (in-process), with
//! OpenSSH's `ssh-keygen -L` and `-Q` judging what comes out: CA keys,
//! role options, bad input, issuers and rotation, revocation and the KRL.

use axum::http::StatusCode;
use gatepass_tests::inproc::{Backend, Server, T0};
use gatepass_tests::ssh::{describe_cert, keypair, krl_listing, krl_revokes};
use serde_json::{json, Value};

async fn server() -> Server {
    Server::start(Backend::Sqlite).await
}

async fn ok(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (st, v) = s.root(method, path, Some(body)).await;
    assert!(st.is_success(), "{method} {path}: {st} {v}");
    v
}

async fn role(s: &Server, name: &str, body: Value) {
    let (st, v) = s
        .root("POST", &format!("ssh/roles/{name}"), Some(body))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "role {name}: {v}");
}

/// A 400 whose first error says `says`.
fn refused(st: StatusCode, v: &Value, says: &str) {
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let error = v["errors"][0].as_str().unwrap_or_default();
    assert!(error.contains(says), "{v}");
}

fn user_key(dir: &std::path::Path, name: &str) -> String {
    keypair(dir, name, "ed25519", None).1
}

#[tokio::test]
async fn ca_key_types_generate_and_sign() {
    let s = server().await;
    let dir = s.dir.path();
    let pk = user_key(dir, "u1");
    for (i, (kt, bits, want)) in [
        ("", 0, "ED25519 "),
        ("ecdsa-sha2-nistp256", 0, "ECDSA "),
        ("ecdsa-sha2-nistp384", 0, "ECDSA "),
        ("ssh-rsa", 2048, "RSA "),
    ]
    .into_iter()
    .enumerate()
    {
        let mount = format!("ca{i}");
        ok(
            &s,
            "POST",
            &format!("sys/mounts/{mount}"),
            json!({"type": "ssh"}),
        )
        .await;
        let body = if kt.is_empty() {
            json!({})
        } else {
            json!({"key_type": kt, "key_bits": bits})
        };
        let v = ok(&s, "POST", &format!("{mount}/config/ca"), body).await;
        let ca_pub = v["data"]["public_key"].as_str().unwrap().to_string();
        let (st, text) = s
            .call("GET", &format!("{mount}/public_key"), None, None)
            .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(
            text.as_str().unwrap().trim(),
            ca_pub.trim(),
            "public_key is served without a token"
        );
        let (st, _) = s
            .root("POST", &format!("{mount}/config/ca"), Some(json!({})))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "a second config/ca is refused");
        s.root("POST", &format!("{mount}/roles/r"), Some(json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "alice", "default_user": "alice"}))).await;
        let v = ok(
            &s,
            "POST",
            &format!("{mount}/sign/r"),
            json!({"public_key": pk}),
        )
        .await;
        let cert = v["data"]["signed_key"].as_str().unwrap();
        let l = describe_cert(dir, cert);
        assert!(l.contains(&format!("Signing CA: {want}")), "{kt}: {l}");
        if kt == "ecdsa-sha2-nistp384" {
            assert!(l.contains("using ecdsa-sha2-nistp384"), "{l}");
        }
        if kt == "ssh-rsa" {
            assert!(
                l.contains("rsa-sha2-256"),
                "RSA CA signs with rsa-sha2-256 by default: {l}"
            );
        }
    }
}

#[tokio::test]
async fn imported_ca_keys_sign() {
    let s = server().await;
    let dir = s.dir.path();
    let pk = user_key(dir, "u1");
    for (i, (kt, bits)) in [
        ("rsa", Some(3072)),
        ("rsa", Some(4096)),
        ("ecdsa", Some(384)),
        ("ed25519", None),
    ]
    .into_iter()
    .enumerate()
    {
        let (priv_path, public) = keypair(dir, &format!("ca-import-{i}"), kt, bits);
        let private = std::fs::read_to_string(&priv_path).unwrap();
        let mount = format!("imp{i}");
        ok(
            &s,
            "POST",
            &format!("sys/mounts/{mount}"),
            json!({"type": "ssh"}),
        )
        .await;
        ok(
            &s,
            "POST",
            &format!("{mount}/config/ca"),
            json!({"private_key": private, "public_key": public}),
        )
        .await;
        let (_, text) = s
            .call("GET", &format!("{mount}/public_key"), None, None)
            .await;
        assert_eq!(
            text.as_str().unwrap().split_whitespace().nth(1),
            public.split_whitespace().nth(1)
        );
        let (st, v) = s.root("POST", &format!("{mount}/roles/r"), Some(json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "bob", "default_user": "bob", "algorithm_signer": "rsa-sha2-512"}))).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
        let v = ok(
            &s,
            "POST",
            &format!("{mount}/sign/r"),
            json!({"public_key": pk}),
        )
        .await;
        let l = describe_cert(dir, v["data"]["signed_key"].as_str().unwrap());
        if kt == "rsa" {
            assert!(l.contains("rsa-sha2-512"), "{l}");
        }
        // The private key never comes back.
        let (_, v) = s.root("GET", &format!("{mount}/config/ca"), None).await;
        assert!(!v.to_string().contains("PRIVATE KEY"));
    }
    // A mismatched public key is refused.
    let (a, _) = keypair(dir, "mis-a", "ed25519", None);
    let (_, b_pub) = keypair(dir, "mis-b", "ed25519", None);
    ok(&s, "POST", "sys/mounts/mis", json!({"type": "ssh"})).await;
    let (st, v) = s
        .root(
            "POST",
            "mis/config/ca",
            Some(json!({"private_key": std::fs::read_to_string(a).unwrap(), "public_key": b_pub})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn role_options_show_in_the_certificate() {
    let s = server().await;
    let dir = s.dir.path();
    ok(&s, "POST", "ssh/config/ca", json!({})).await;
    role(
        &s,
        "ops",
        json!({
            "key_type": "ca",
            "allow_user_certificates": true,
            "allowed_users": "alice,bob",
            "default_user": "alice",
            "ttl": "30m",
            "max_ttl": "2h",
            "not_before_duration": "60s",
            "allowed_extensions": "permit-pty,permit-port-forwarding",
            "default_extensions": {"permit-pty": ""},
            "allowed_critical_options": "source-address,force-command",
            "allowed_source_addresses": "10.0.0.0/8",
            "allowed_force_commands": ["/usr/bin/uptime"],
            // A role that limits these options must set them by default.
            "default_critical_options": {"source-address": "10.0.0.0/8", "force-command": "/usr/bin/uptime"},
            "allow_user_key_ids": true,
            "key_id_format": "{{role_name}}-{{token_display_name}}",
        }),
    )
    .await;
    let pk = user_key(dir, "k");
    // Defaults: default user, default extensions, role TTL, key ID format.
    let v = ok(&s, "POST", "ssh/sign/ops", json!({"public_key": pk})).await;
    let serial = v["data"]["serial_number"].as_str().unwrap().to_string();
    let l = describe_cert(dir, v["data"]["signed_key"].as_str().unwrap());
    assert!(
        l.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"),
        "{l}"
    );
    assert!(l.contains("Key ID: \"ops-root\""), "{l}");
    assert!(
        l.contains(&format!(
            "Serial: {}",
            u64::from_str_radix(&serial, 16).unwrap()
        )),
        "{l}"
    );
    assert!(l.contains("Principals: \n                alice\n"), "{l}");
    assert!(l.contains("force-command /usr/bin/uptime"), "{l}");
    assert!(
        l.contains("permit-pty") && !l.contains("permit-port-forwarding"),
        "{l}"
    );
    let from = gatepass_server::clock::rfc3339(T0 - 60).replace('Z', "");
    let to = gatepass_server::clock::rfc3339(T0 + 1800).replace('Z', "");
    assert!(
        l.contains(&format!("Valid: from {from} to {to}")) || l.contains("Valid: from"),
        "{l}"
    );
    // Requested principals, TTL, extensions, critical options and key ID.
    let v = ok(
        &s,
        "POST",
        "ssh/sign/ops",
        json!({
            "public_key": pk,
            "valid_principals": "alice,bob",
            "ttl": "1h",
            "extensions": {"permit-port-forwarding": ""},
            "critical_options": {"source-address": "10.1.0.0/16,10.2.3.4", "force-command": "/usr/bin/uptime"},
            "key_id": "ticket-42",
        }),
    )
    .await;
    let l = describe_cert(dir, v["data"]["signed_key"].as_str().unwrap());
    assert!(l.contains("Key ID: \"ticket-42\""), "{l}");
    assert!(l.contains("alice") && l.contains("bob"), "{l}");
    assert!(
        l.contains("permit-port-forwarding") && !l.contains("permit-pty"),
        "{l}"
    );
    assert!(l.contains("source-address 10.1.0.0/16,10.2.3.4"), "{l}");
    assert!(l.contains("force-command /usr/bin/uptime"), "{l}");
    // Inventory: LIST certs and certs/<serial>.
    let (_, v) = s.root("LIST", "ssh/certs", None).await;
    assert_eq!(v["data"]["keys"].as_array().unwrap().len(), 2);
    let (_, v) = s.root("GET", &format!("ssh/certs/{serial}"), None).await;
    assert_eq!(v["data"]["valid_principals"], json!(["alice"]));
    assert_eq!(v["data"]["requested_by"], "root");
    assert_eq!(v["data"]["role"], "ops");
}

#[tokio::test]
async fn bad_requests_get_400_and_issue_nothing() {
    let s = server().await;
    let dir = s.dir.path();
    ok(&s, "POST", "ssh/config/ca", json!({})).await;
    role(&s, "users", json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*", "max_ttl": "1h", "allowed_extensions": "permit-pty", "allowed_critical_options": "force-command", "allowed_user_key_lengths": {"rsa": 3072, "ed25519": 0}})).await;
    role(
        &s,
        "otp",
        json!({"key_type": "otp", "default_user": "ubuntu", "cidr_list": "10.0.0.0/8"}),
    )
    .await;
    let pk = user_key(dir, "k");
    let (_, rsa_short) = keypair(dir, "short", "rsa", Some(2048));
    let truncated = &pk[..pk.len() / 2];
    let cases: Vec<(&str, Value)> = vec![
        (
            "ssh/sign/users",
            json!({"public_key": "ssh-ed25519 AAAAnotbase64"}),
        ),
        ("ssh/sign/users", json!({"public_key": truncated})),
        ("ssh/sign/users", json!({"public_key": ""})),
        ("ssh/sign/users", json!({"public_key": 42})),
        (
            "ssh/sign/users",
            json!({"public_key": pk, "valid_principals": "alice,bob smith"}),
        ),
        (
            "ssh/sign/users",
            json!({"public_key": pk, "valid_principals": "alice\nbob"}),
        ),
        (
            "ssh/sign/users",
            json!({"public_key": pk, "valid_principals": "alice\tx"}),
        ),
        (
            "ssh/sign/users",
            json!({"public_key": pk, "valid_principals": "alice", "ttl": "2h"}),
        ),
        (
            "ssh/sign/users",
            json!({"public_key": pk, "valid_principals": "alice", "extensions": {"permit-X11-forwarding": ""}}),
        ),
        (
            "ssh/sign/users",
            json!({"public_key": pk, "valid_principals": "alice", "critical_options": {"source-address": "10.0.0.0/8"}}),
        ),
        (
            "ssh/sign/users",
            json!({"public_key": pk, "valid_principals": "alice", "critical_options": {"force-command": "a\nb"}}),
        ),
        (
            "ssh/sign/users",
            json!({"public_key": rsa_short, "valid_principals": "alice"}),
        ),
        (
            "ssh/sign/users",
            json!({"public_key": pk, "valid_principals": "web.example.com", "cert_type": "host"}),
        ),
        (
            "ssh/sign/users",
            json!({"public_key": pk, "valid_principals": "alice", "cert_type": "both"}),
        ),
        (
            "ssh/sign/users",
            json!({"public_key": pk, "valid_principals": "alice", "key_id": "mine"}),
        ),
        ("ssh/sign/users", json!({"public_key": pk})),
        (
            "ssh/sign/otp",
            json!({"public_key": pk, "valid_principals": "alice"}),
        ),
        ("ssh/sign/nope", json!({"public_key": pk})),
        (
            "ssh/issue/users",
            json!({"valid_principals": "alice", "key_type": "dsa"}),
        ),
        (
            "ssh/roles/bad",
            json!({"key_type": "ca", "allowed_users": "a b"}),
        ),
        ("ssh/roles/bad", json!({"key_type": "magic"})),
        (
            "ssh/roles/bad",
            json!({"key_type": "ca", "ttl": "2h", "max_ttl": "1h"}),
        ),
        (
            "ssh/roles/bad",
            json!({"key_type": "ca", "default_extensions": {"permit pty": ""}}),
        ),
        (
            "ssh/roles/bad",
            json!({"key_type": "ca", "algorithm_signer": "md5"}),
        ),
        (
            "ssh/config/ca",
            json!({"key_type": "ssh-rsa", "key_bits": 1024}),
        ),
        ("ssh/revoke", json!({"serial_number": "zz"})),
        ("ssh/revoke", json!({"serial_number": "1234"})),
        ("ssh/revoke", json!({})),
    ];
    for (path, body) in cases {
        let (st, v) = s.root("POST", path, Some(body.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path} {body}: {v}");
        assert!(
            !v["errors"][0].as_str().unwrap_or("").is_empty(),
            "{path}: no message"
        );
    }
    assert_eq!(
        s.root("LIST", "ssh/certs", None).await.0,
        StatusCode::NOT_FOUND,
        "nothing was issued"
    );
    assert_eq!(
        s.root("GET", "ssh/roles/bad", None).await.0,
        StatusCode::NOT_FOUND
    );
    // allow_empty_principals is off by default (CVE-2024-7594).
    role(
        &s,
        "empty",
        json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*"}),
    )
    .await;
    let (st, v) = s
        .root("POST", "ssh/sign/empty", Some(json!({"public_key": pk})))
        .await;
    assert_eq!(
        (st, v["errors"][0].clone()),
        (
            StatusCode::BAD_REQUEST,
            json!("empty valid principals not allowed by role")
        )
    );
}

/// The principals and options a role limits cannot be had by leaving them
/// out: the default user is checked like a requested one (as in Vault), a
/// role that limits `force-command` or `source-address` signs no
/// certificate without it, and a list longer than OpenSSH takes is
/// refused.
#[tokio::test]
async fn what_a_role_limits_is_not_escaped_by_leaving_it_out() {
    let s = server().await;
    let dir = s.dir.path();
    ok(&s, "POST", "ssh/config/ca", json!({})).await;
    let pk = user_key(dir, "k");
    let sign = |role: &'static str, body: Value| {
        let s = &s;
        let mut body = body;
        body["public_key"] = json!(pk.clone());
        async move {
            s.root("POST", &format!("ssh/sign/{role}"), Some(body))
                .await
        }
    };

    // The default user must be allowed too.
    role(
        &s,
        "alice-only",
        json!({"key_type": "ca", "allow_user_certificates": true,
        "allowed_users": "alice", "default_user": "root"}),
    )
    .await;
    let (st, v) = sign("alice-only", json!({})).await;
    refused(st, &v, "root is not a valid value");
    role(
        &s,
        "no-users",
        json!({"key_type": "ca", "allow_user_certificates": true,
        "default_user": "root"}),
    )
    .await;
    let (st, v) = sign("no-users", json!({})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    role(
        &s,
        "both",
        json!({"key_type": "ca", "allow_user_certificates": true,
        "allowed_users": "alice,root", "default_user": "root"}),
    )
    .await;
    let (st, v) = sign("both", json!({})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let l = describe_cert(dir, v["data"]["signed_key"].as_str().unwrap());
    assert!(l.contains("Principals: \n                root\n"), "{l}");

    // A role that limits force-command: a certificate must carry one.
    role(
        &s,
        "backup",
        json!({"key_type": "ca", "allow_user_certificates": true,
        "allowed_users": "backup", "allowed_force_commands": "/usr/local/bin/backup",
        "allowed_source_addresses": "10.0.0.0/8"}),
    )
    .await;
    for body in [
        json!({"valid_principals": "backup"}),
        json!({"valid_principals": "backup", "critical_options": {"source-address": "10.1.0.0/16"}}),
        json!({"valid_principals": "backup", "critical_options": {"force-command": "/usr/local/bin/backup"}}),
    ] {
        let (st, v) = sign("backup", body.clone()).await;
        refused(st, &v, "must carry it");
    }
    let (st, v) = sign(
        "backup",
        json!({"valid_principals": "backup", "critical_options": {
        "force-command": "/usr/local/bin/backup", "source-address": "10.1.0.0/16"}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");

    // More principals than OpenSSH loads.
    role(
        &s,
        "any",
        json!({"key_type": "ca", "allow_user_certificates": true,
        "allowed_users": "*"}),
    )
    .await;
    let many: Vec<String> = (0..257).map(|i| format!("u{i}")).collect();
    let (st, v) = sign("any", json!({"valid_principals": many.join(",")})).await;
    refused(st, &v, "more than 256");
    let (st, v) = sign("any", json!({"valid_principals": many[..256].join(",")})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn host_certificates_and_domain_rules() {
    let s = server().await;
    let dir = s.dir.path();
    ok(&s, "POST", "ssh/config/ca", json!({})).await;
    role(&s, "hosts", json!({"key_type": "ca", "allow_host_certificates": true, "allowed_domains": "example.com,*.acme.com,10.1.2.3", "allow_bare_domains": true, "allow_subdomains": true})).await;
    let pk = user_key(dir, "host");
    for good in ["example.com", "web.example.com", "db.acme.com", "10.1.2.3"] {
        let v = ok(
            &s,
            "POST",
            "ssh/sign/hosts",
            json!({"public_key": pk, "cert_type": "host", "valid_principals": good}),
        )
        .await;
        let l = describe_cert(dir, v["data"]["signed_key"].as_str().unwrap());
        assert!(l.contains("host certificate") && l.contains(good), "{l}");
    }
    for bad in ["acme.com", "example.org", "evil-example.com", "10.1.2.4"] {
        let (st, v) = s
            .root(
                "POST",
                "ssh/sign/hosts",
                Some(json!({"public_key": pk, "cert_type": "host", "valid_principals": bad})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    // A host role refuses user certificates.
    let (st, _) = s
        .root(
            "POST",
            "ssh/sign/hosts",
            Some(json!({"public_key": pk, "valid_principals": "example.com"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn issue_returns_a_key_pair_and_certificate() {
    let s = server().await;
    let dir = s.dir.path();
    ok(&s, "POST", "ssh/config/ca", json!({})).await;
    role(&s, "r", json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "carol", "ttl": "5m"})).await;
    // The private key in the PEM form Vault gives (PKCS#1 for RSA, SEC1
    // for ECDSA, OpenSSH's for Ed25519), which ssh-keygen reads back to
    // the key the certificate is for.
    for (kt, bits, want, pem) in [
        (
            "ed25519",
            0,
            "ed25519",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
        ),
        ("ec", 256, "ec", "-----BEGIN EC PRIVATE KEY-----"),
        ("ec", 384, "ec", "-----BEGIN EC PRIVATE KEY-----"),
        ("rsa", 2048, "rsa", "-----BEGIN RSA PRIVATE KEY-----"),
    ] {
        let v = ok(
            &s,
            "POST",
            "ssh/issue/r",
            json!({"key_type": kt, "key_bits": bits, "valid_principals": "carol"}),
        )
        .await;
        let d = &v["data"];
        assert_eq!(d["private_key_type"], want);
        let private = d["private_key"].as_str().unwrap();
        assert!(private.starts_with(pem), "{kt}: {private}");
        let l = describe_cert(dir, d["signed_key"].as_str().unwrap());
        assert!(l.contains("carol"), "{l}");
        let file = dir.join(format!("issued-{kt}-{bits}"));
        std::fs::write(&file, private).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let derived = std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&file)
            .output()
            .unwrap();
        assert!(derived.status.success(), "{kt}: {derived:?}");
        let derived = String::from_utf8(derived.stdout).unwrap();
        let parsed = ssh_key::Certificate::from_openssh(d["signed_key"].as_str().unwrap()).unwrap();
        let public = ssh_key::PublicKey::from(parsed.public_key().clone())
            .to_openssh()
            .unwrap();
        assert_eq!(
            derived.split_whitespace().nth(1),
            public.split_whitespace().nth(1),
            "{kt}: the private key is not the certificate's"
        );
    }
}

#[tokio::test]
async fn issuers_rotation_revocation_and_krl() {
    let s = server().await;
    let dir = s.dir.path();
    let v = ok(&s, "POST", "ssh/config/ca", json!({})).await;
    let old_pub = v["data"]["public_key"].as_str().unwrap().to_string();
    let old_id = v["data"]["issuer_id"].as_str().unwrap().to_string();
    role(&s, "r", json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*", "allow_user_key_ids": true})).await;
    let pk = user_key(dir, "k");
    let sign = |id: &'static str| {
        let s = &s;
        let pk = pk.clone();
        async move {
            let v = ok(
                s,
                "POST",
                "ssh/sign/r",
                json!({"public_key": pk, "valid_principals": "dave", "key_id": id}),
            )
            .await;
            (
                v["data"]["serial_number"].as_str().unwrap().to_string(),
                v["data"]["signed_key"].as_str().unwrap().to_string(),
            )
        }
    };
    let (serial1, cert1) = sign("first").await;
    let (_, cert2) = sign("second").await;
    let (serial_late, cert_late) = sign("revoked-after-its-ca-went").await;
    // Stage a new issuer: both keys are served, the old one stays default.
    let v = ok(
        &s,
        "POST",
        "ssh/issuers/generate/next",
        json!({"key_type": "ecdsa-sha2-nistp256"}),
    )
    .await;
    let new_id = v["data"]["issuer_id"].as_str().unwrap().to_string();
    assert_eq!(v["data"]["is_default"], false);
    let (_, text) = s.call("GET", "ssh/public_key", None, None).await;
    let text = text.as_str().unwrap().to_string();
    assert_eq!(text.lines().count(), 2);
    assert_eq!(
        text.lines().next().unwrap().trim(),
        old_pub.trim(),
        "default issuer first"
    );
    let (_, v) = s.root("LIST", "ssh/issuers", None).await;
    assert_eq!(v["data"]["keys"].as_array().unwrap().len(), 2);
    // Deleting the default while another exists is refused.
    assert_eq!(
        s.root("DELETE", "ssh/issuer/default", None).await.0,
        StatusCode::BAD_REQUEST
    );
    // Switch, sign with the new one, retire the old one.
    ok(&s, "POST", "ssh/config/issuers", json!({"default": "next"})).await;
    let (_, cert3) = sign("third").await;
    assert!(describe_cert(dir, &cert3).contains("Signing CA: ECDSA"));
    let (_, v) = s.root("GET", "ssh/config/issuers", None).await;
    assert_eq!(v["data"]["default"], new_id);

    // Revocation: by serial, by key ID, by public key.
    let (st, _) = s.call("GET", "ssh/krl", None, None).await;
    assert_eq!(st, StatusCode::OK, "the KRL is served without a token");
    let krl_bytes = |core: gatepass_server::State| async move {
        let m = gatepass_server::mounts::get(&core, "ssh")
            .await
            .unwrap()
            .unwrap();
        gatepass_server::ssh::certs::krl(&core, &m, core.clock.now())
            .await
            .unwrap()
    };
    let empty = krl_bytes(s.core.clone()).await;
    assert!(
        !krl_revokes(dir, &empty, &cert1),
        "an empty KRL revokes nothing"
    );
    let v = ok(&s, "POST", "ssh/revoke", json!({"serial_number": serial1})).await;
    assert_eq!(v["data"]["revoked"], json!([serial1]));
    let k = krl_bytes(s.core.clone()).await;
    assert!(krl_revokes(dir, &k, &cert1));
    assert!(!krl_revokes(dir, &k, &cert2));
    ok(&s, "POST", "ssh/revoke", json!({"key_id": "second"})).await;
    let k = krl_bytes(s.core.clone()).await;
    assert!(krl_revokes(dir, &k, &cert2));
    assert!(!krl_revokes(dir, &k, &cert3));
    // A revoked key ID is not signed again: the certificate would be born
    // revoked.
    let again = |id: &'static str| {
        let s = &s;
        let pk = pk.clone();
        async move {
            s.root(
                "POST",
                "ssh/sign/r",
                Some(json!({"public_key": pk, "valid_principals": "dave", "key_id": id})),
            )
            .await
        }
    };
    let (st, v) = again("second").await;
    refused(st, &v, r#"key_id "second" is revoked"#);
    // Retiring the old CA keeps its revocations in the KRL, for hosts that
    // still trust it by hand, until its revoked certificates expire.
    let (st, v) = s
        .root("DELETE", &format!("ssh/issuer/{old_id}"), None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let (_, v) = s.root("LIST", "ssh/issuers", None).await;
    assert_eq!(v["data"]["keys"].as_array().unwrap().len(), 1);
    let k = krl_bytes(s.core.clone()).await;
    assert!(krl_revokes(dir, &k, &cert1), "its revoked serial");
    assert!(krl_revokes(dir, &k, &cert2), "its revoked key ID");
    let listed = krl_listing(dir, &k);
    assert!(listed.contains("# CA key ssh-ed25519"), "{listed}");
    // And so does a revocation made after it went.
    assert!(!krl_revokes(dir, &k, &cert_late));
    ok(
        &s,
        "POST",
        "ssh/revoke",
        json!({"serial_number": serial_late}),
    )
    .await;
    let k = krl_bytes(s.core.clone()).await;
    assert!(krl_revokes(dir, &k, &cert_late), "{}", krl_listing(dir, &k));
    ok(&s, "POST", "ssh/revoke", json!({"public_key": pk})).await;
    let k = krl_bytes(s.core.clone()).await;
    assert!(krl_revokes(dir, &k, &cert3), "the key itself is revoked");
    let (st, v) = again("fourth").await;
    refused(st, &v, "public_key is revoked");
    let (_, v) = s.root("GET", &format!("ssh/certs/{serial1}"), None).await;
    assert_eq!(v["data"]["revoked"], true);
    // Expired serials drop out of the KRL; key IDs and keys stay (under
    // every CA the mount has), so a certificate with the key ID that a
    // server signed before it heard of the revocation is revoked whenever
    // it expires.
    s.clock.advance(800 * 3600);
    let k = krl_bytes(s.core.clone()).await;
    let other = user_key(dir, "other");
    let v = ok(
        &s,
        "POST",
        "ssh/sign/r",
        json!({"public_key": other, "valid_principals": "dave", "key_id": "fifth"}),
    )
    .await;
    let fifth = v["data"]["signed_key"].as_str().unwrap().to_string();
    assert!(!krl_revokes(dir, &k, &fifth));
    let listed = krl_listing(dir, &k);
    assert!(!listed.contains("serial:"), "{listed}");
    assert!(listed.contains("id: second"), "the key ID stays: {listed}");
    assert!(
        !listed.contains("# CA key ssh-ed25519"),
        "the retired CA goes when its certificates have expired: {listed}"
    );
}

/// A CA retired with nothing of its own revoked: a certificate of it
/// revoked afterwards is in the KRL, under that CA.
#[tokio::test]
async fn a_certificate_of_a_deleted_ca_revoked_afterwards_reaches_the_krl() {
    let s = server().await;
    let dir = s.dir.path();
    let v = ok(&s, "POST", "ssh/config/ca", json!({})).await;
    let old_id = v["data"]["issuer_id"].as_str().unwrap().to_string();
    role(
        &s,
        "r",
        json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*"}),
    )
    .await;
    let pk = user_key(dir, "k");
    let v = ok(
        &s,
        "POST",
        "ssh/sign/r",
        json!({"public_key": pk, "valid_principals": "dave"}),
    )
    .await;
    let serial = v["data"]["serial_number"].as_str().unwrap().to_string();
    let cert = v["data"]["signed_key"].as_str().unwrap().to_string();
    ok(
        &s,
        "POST",
        "ssh/issuers/generate/next",
        json!({"set_default": true}),
    )
    .await;
    let (st, v) = s
        .root("DELETE", &format!("ssh/issuer/{old_id}"), None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    ok(&s, "POST", "ssh/revoke", json!({"serial_number": serial})).await;
    let m = gatepass_server::mounts::get(&s.core, "ssh")
        .await
        .unwrap()
        .unwrap();
    let k = gatepass_server::ssh::certs::krl(&s.core, &m, s.core.clock.now())
        .await
        .unwrap();
    assert!(krl_revokes(dir, &k, &cert), "{}", krl_listing(dir, &k));
}

/// A key ID or key revoked by mistake is lifted: signing takes it again,
/// and what the revocation covered stays revoked until it expires.
#[tokio::test]
async fn a_lifted_key_id_or_key_signs_again_and_its_certificates_stay_revoked() {
    let s = server().await;
    let dir = s.dir.path();
    ok(&s, "POST", "ssh/config/ca", json!({})).await;
    role(
        &s,
        "r",
        json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*",
               "allow_user_key_ids": true, "ttl": "1h"}),
    )
    .await;
    let (alice_key, carol_key) = (user_key(dir, "alice"), user_key(dir, "carol"));
    let sign = |pk: &str, id: &str| {
        let body = json!({"public_key": pk, "valid_principals": "dave", "key_id": id});
        let s = &s;
        async move { s.root("POST", "ssh/sign/r", Some(body)).await }
    };
    let signed = |v: &Value| {
        (
            v["data"]["serial_number"].as_str().unwrap().to_string(),
            v["data"]["signed_key"].as_str().unwrap().to_string(),
        )
    };
    let krl = || async {
        let m = gatepass_server::mounts::get(&s.core, "ssh")
            .await
            .unwrap()
            .unwrap();
        gatepass_server::ssh::certs::krl(&s.core, &m, s.core.clock.now())
            .await
            .unwrap()
    };
    let (alice_serial, alice_cert) = signed(&sign(&alice_key, "alice").await.1);

    // Nothing to lift, or not said what: 400, and nothing changes.
    let (st, v) = s
        .root("POST", "ssh/lift", Some(json!({"key_id": "alice"})))
        .await;
    refused(st, &v, r#"key_id "alice" is not revoked in this mount"#);
    let (st, v) = s.root("POST", "ssh/lift", Some(json!({}))).await;
    refused(st, &v, "give exactly one of key_id or public_key");

    ok(&s, "POST", "ssh/revoke", json!({"key_id": "alice"})).await;
    let (st, v) = sign(&alice_key, "alice").await;
    refused(st, &v, r#"key_id "alice" is revoked"#);
    let v = ok(&s, "POST", "ssh/lift", json!({"key_id": "alice"})).await;
    assert_eq!(v["data"]["still_revoked"], json!([alice_serial]));
    let (st, v) = sign(&alice_key, "alice").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, alice_again) = signed(&v);
    let k = krl().await;
    assert!(
        krl_revokes(dir, &k, &alice_cert),
        "{}",
        krl_listing(dir, &k)
    );
    assert!(
        !krl_revokes(dir, &k, &alice_again),
        "{}",
        krl_listing(dir, &k)
    );
    assert!(!krl_listing(dir, &k).contains("id: alice"));
    let (_, v) = s
        .root("GET", &format!("ssh/certs/{alice_serial}"), None)
        .await;
    assert_eq!(v["data"]["revoked"], true);

    // The same for a key, named with another comment than it was revoked with.
    let (carol_serial, carol_cert) = signed(&sign(&carol_key, "carol").await.1);
    ok(&s, "POST", "ssh/revoke", json!({"public_key": carol_key})).await;
    let (st, v) = sign(&carol_key, "carol-2").await;
    refused(st, &v, "public_key is revoked");
    let renamed = format!(
        "{} someone-else@elsewhere",
        carol_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let v = ok(&s, "POST", "ssh/lift", json!({"public_key": renamed})).await;
    assert_eq!(v["data"]["still_revoked"], json!([carol_serial]));
    let (st, v) = sign(&carol_key, "carol-2").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, carol_again) = signed(&v);
    let k = krl().await;
    assert!(krl_revokes(dir, &k, &carol_cert));
    assert!(!krl_revokes(dir, &k, &carol_again));

    // Once they expire, the certificates revoked by serial leave the KRL.
    s.clock.advance(2 * 3600);
    let listed = krl_listing(dir, &krl().await);
    assert!(!listed.contains("serial:"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_made_at_once_all_reach_the_krl() {
    let s = std::sync::Arc::new(server().await);
    let dir = s.dir.path().to_path_buf();
    ok(&s, "POST", "ssh/config/ca", json!({})).await;
    role(
        &s,
        "r",
        json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*"}),
    )
    .await;
    let pk = user_key(&dir, "k");
    let mut certs = Vec::new();
    for _ in 0..10 {
        let v = ok(
            &s,
            "POST",
            "ssh/sign/r",
            json!({"public_key": pk, "valid_principals": "dave"}),
        )
        .await;
        certs.push((
            v["data"]["serial_number"].as_str().unwrap().to_string(),
            v["data"]["signed_key"].as_str().unwrap().to_string(),
        ));
    }
    // Ten revocations released together.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(certs.len()));
    let mut tasks = Vec::new();
    for (serial, _) in &certs {
        let (s, start, serial) = (s.clone(), start.clone(), serial.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            s.root(
                "POST",
                "ssh/revoke",
                Some(json!({ "serial_number": serial })),
            )
            .await
        }));
    }
    for t in tasks {
        let (st, v) = t.await.unwrap();
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let m = gatepass_server::mounts::get(&s.core, "ssh")
        .await
        .unwrap()
        .unwrap();
    let krl = gatepass_server::ssh::certs::krl(&s.core, &m, s.core.clock.now())
        .await
        .unwrap();
    for (serial, cert) in &certs {
        assert!(
            krl_revokes(&dir, &krl, cert),
            "certificate {serial} was revoked but is missing from the KRL"
        );
    }
}

/// Pages of `LIST ssh/certs` with `query` (`limit`, a search): every key
/// of every page, following `next_after`, and the size of each page.
async fn all_pages(s: &Server, query: &str) -> (Vec<String>, Vec<usize>) {
    let (mut keys, mut sizes) = (Vec::new(), Vec::new());
    let mut after = String::new();
    loop {
        let (st, v) = s
            .root("LIST", &format!("ssh/certs?{query}{after}"), None)
            .await;
        if st == StatusCode::NOT_FOUND {
            break;
        }
        assert_eq!(st, StatusCode::OK, "{query}{after}: {v}");
        let page: Vec<String> = serde_json::from_value(v["data"]["keys"].clone()).unwrap();
        for k in &page {
            assert_eq!(v["data"]["key_info"][k]["serial_number"], k.as_str());
        }
        sizes.push(page.len());
        keys.extend(page);
        match v["data"]["next_after"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => break,
        }
    }
    (keys, sizes)
}

/// The inventory is searched through indexes kept as certificates are
/// signed, a page at a time and newest first: by the beginning of a key ID,
/// by a principal, or all of it; each page holds exactly `limit`, and its
/// `next_after` leads to the next. A database from before the indexes gets
/// them when the server starts.
#[tokio::test]
async fn the_inventory_is_searched_by_key_id_and_principal_a_page_at_a_time() {
    for backend in gatepass_tests::inproc::BACKENDS {
        let s = Server::start(backend).await;
        ok(&s, "POST", "ssh/config/ca", json!({})).await;
        role(&s, "r", json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*", "allow_user_key_ids": true})).await;
        let pk = user_key(s.dir.path(), "k");
        // 24 certificates, oldest first: key IDs team-a-00… and team-b-00…
        // by turns; alice on every third, bob on the others.
        let mut signed = Vec::new();
        for i in 0..24 {
            let team = if i % 2 == 0 { "a" } else { "b" };
            let who = if i % 3 == 0 { "alice" } else { "bob" };
            let v = ok(
                &s,
                "POST",
                "ssh/sign/r",
                json!({"public_key": pk, "valid_principals": who, "key_id": format!("team-{team}-{i:02}")}),
            )
            .await;
            signed.push((
                v["data"]["serial_number"].as_str().unwrap().to_string(),
                team,
                who,
            ));
            if i % 5 == 0 {
                s.clock.advance(1);
            }
        }
        let newest_first = |f: &dyn Fn(&str, &str) -> bool| -> Vec<String> {
            signed
                .iter()
                .rev()
                .filter(|(_, t, w)| f(t, w))
                .map(|(s, _, _)| s.clone())
                .collect()
        };

        let (team_a, sizes) = all_pages(&s, "key_id=team-a&limit=5").await;
        assert_eq!(team_a, newest_first(&|t, _| t == "a"), "{backend:?}");
        assert_eq!(sizes, vec![5, 5, 2]);
        let (alice, sizes) = all_pages(&s, "principal=alice&limit=3").await;
        assert_eq!(alice, newest_first(&|_, w| w == "alice"));
        assert_eq!(sizes, vec![3, 3, 2]);
        let (every, sizes) = all_pages(&s, "limit=10").await;
        assert_eq!(every, newest_first(&|_, _| true));
        assert_eq!(sizes, vec![10, 10, 4]);
        // One key ID exactly; a principal nobody has.
        let (one, _) = all_pages(&s, "key_id=team-b-07&limit=10").await;
        assert_eq!(one, vec![signed[7].0.clone()]);
        assert_eq!(all_pages(&s, "principal=carol&limit=10").await.0.len(), 0);
        // A page of the whole inventory says how large it is.
        let (_, v) = s.root("LIST", "ssh/certs?limit=1", None).await;
        assert_eq!(v["data"]["total"], 24);
        // The plain LIST is Vault's: every serial.
        let (_, v) = s.root("LIST", "ssh/certs", None).await;
        assert_eq!(v["data"]["keys"].as_array().unwrap().len(), 24);
        // A cursor the list did not give, a page too large.
        let (st, v) = s.root("LIST", "ssh/certs?limit=5&after=zz", None).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        let (st, _) = s.root("LIST", "ssh/certs?limit=5000", None).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);

        // Revoking by key ID finds its certificates through the index.
        ok(&s, "POST", "ssh/revoke", json!({"key_id": "team-a-04"})).await;
        let (_, v) = s
            .root("GET", &format!("ssh/certs/{}", signed[4].0), None)
            .await;
        assert_eq!(v["data"]["revoked"], true);

        // A database written before the indexes existed: they and the
        // mark that they were built are gone; a restart builds them.
        let mut old = Vec::new();
        for k in s.core.storage.keys_with_prefix("mount/").await.unwrap() {
            if k.contains("/cert-kid/") || k.contains("/cert-pr/") {
                old.push(k);
            }
        }
        assert_eq!(old.len(), 48, "a key ID and a principal each");
        old.push("ssh/migrated/cert-search-index".into());
        s.core.storage.delete_many(&old).await.unwrap();
        assert_eq!(all_pages(&s, "principal=alice&limit=3").await.0.len(), 0);
        let s = s.restart().await;
        let (alice, _) = all_pages(&s, "principal=alice&limit=3").await;
        assert_eq!(alice, newest_first(&|_, w| w == "alice"));
        let (team_b, _) = all_pages(&s, "key_id=team-b&limit=100").await;
        assert_eq!(team_b, newest_first(&|t, _| t == "b"));
    }
}
