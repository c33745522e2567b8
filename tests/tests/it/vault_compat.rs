//! What Vault's clients do in their first minutes, against a real dev
//! server: `write -f` (a `null` body), `status` (`sys/leader`), a
//! namespace header, a stale token sent to an unauthenticated path, and a
//! field printed into a file.

use std::process::Command;

use gatepass_tests::ssh::keypair;
use gatepass_tests::{bin, run, DevServer, CLI_AMBIENT_ENV};
use serde_json::{json, Value};

/// `curl` with the dev server's CA: the status and the body as JSON.
fn call(
    s: &DevServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Value) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-X", method, "--cacert"])
        .arg(&s.cacert)
        .args(["-w", "\n%{http_code}"]);
    for (k, v) in headers {
        c.args(["-H", &format!("{k}: {v}")]);
    }
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    c.arg(format!("{}/v1/{path}", s.addr));
    let (code, out, err) = run(&mut c);
    assert_eq!(code, 0, "curl: {err}");
    let (text, status) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (
        status.parse().unwrap(),
        serde_json::from_str(text).unwrap_or(Value::Null),
    )
}

fn root(s: &DevServer) -> (&'static str, &str) {
    ("X-Vault-Token", s.token.as_str())
}

#[test]
fn write_f_sends_null_and_gets_a_secret_id() {
    let s = DevServer::start();
    let (st, _) = call(
        &s,
        "POST",
        "sys/auth/approle",
        &[root(&s)],
        Some(r#"{"type":"approle"}"#),
    );
    assert!(st < 300, "{st}");
    let (st, _) = call(&s, "POST", "auth/approle/role/ci", &[root(&s)], Some("{}"));
    assert!(st < 300, "{st}");
    // What `vault write -f auth/approle/role/ci/secret-id` sends.
    let (st, v) = call(
        &s,
        "POST",
        "auth/approle/role/ci/secret-id",
        &[root(&s)],
        Some("null"),
    );
    assert_eq!(st, 200, "{v}");
    assert!(
        v["data"]["secret_id"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{v}"
    );
    // Other bodies that are not objects stay refused.
    let (st, v) = call(
        &s,
        "POST",
        "auth/approle/role/ci/secret-id",
        &[root(&s)],
        Some("[1]"),
    );
    assert_eq!(st, 400, "{v}");
}

#[test]
fn status_reads_the_leader_and_a_namespace_is_refused_not_ignored() {
    let s = DevServer::start();
    // `bao status` / hvac's read_leader_status.
    let (st, v) = call(&s, "GET", "sys/leader", &[], None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ha_enabled"], false);
    assert_eq!(v["leader_address"], "");
    // A namespace other than the root one is refused, with why.
    let (st, v) = call(
        &s,
        "GET",
        "sys/mounts",
        &[root(&s), ("X-Vault-Namespace", "ns1")],
        None,
    );
    assert_eq!(st, 400, "{v}");
    assert!(
        v["errors"][0].as_str().unwrap().contains("namespace"),
        "{v}"
    );
    // The root namespace, however spelled, is this server.
    for ns in ["", "root", "root/"] {
        let (st, v) = call(
            &s,
            "GET",
            "sys/mounts",
            &[root(&s), ("X-Vault-Namespace", ns)],
            None,
        );
        assert_eq!(st, 200, "{ns:?}: {v}");
    }
}

/// Vault's envelope names the type of the mount that answered
/// (`mount_type`, HashiCorp Vault 1.12 and later).
#[test]
fn an_answer_names_the_type_of_the_mount_that_gave_it() {
    let s = DevServer::start();
    let (st, _) = call(
        &s,
        "POST",
        "sys/auth/sso",
        &[root(&s)],
        Some(r#"{"type": "jwt"}"#),
    );
    assert_eq!(st, 204);
    let (st, _) = call(
        &s,
        "POST",
        "auth/sso/config",
        &[root(&s)],
        Some(
            r#"{"jwks_url": "", "jwt_validation_pubkeys": ["-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----"]}"#,
        ),
    );
    assert_eq!(st, 204);
    for (method, path, body, mount_type) in [
        ("GET", "sys/mounts", None, "system"),
        ("GET", "auth/token/lookup-self", None, "token"),
        ("POST", "ssh/config/ca", Some("{}"), "ssh"),
        ("GET", "ssh/config/ca", None, "ssh"),
        ("GET", "auth/sso/config", None, "jwt"),
        ("POST", "hosts/join-tokens", Some("{}"), ""),
    ] {
        let (st, v) = call(&s, method, path, &[root(&s)], body);
        assert_eq!(st, 200, "{path}: {v}");
        assert_eq!(v["mount_type"], mount_type, "{path}: {v}");
    }
}

#[test]
fn a_stale_token_on_an_unauthenticated_path_is_ignored() {
    let s = DevServer::start();
    let h = [root(&s)];
    call(
        &s,
        "POST",
        "ssh/roles/otp",
        &h,
        Some(
            &json!({"key_type": "otp", "default_user": "alice", "cidr_list": "127.0.0.0/8"})
                .to_string(),
        ),
    );
    let (st, v) = call(
        &s,
        "POST",
        "ssh/creds/otp",
        &h,
        Some(r#"{"ip":"127.0.0.1"}"#),
    );
    assert_eq!(st, 200, "{v}");
    let otp = v["data"]["key"].as_str().unwrap().to_string();
    // hvac sends ~/.vault-token on its own; vault-ssh-helper VAULT_TOKEN.
    let (st, v) = call(
        &s,
        "POST",
        "ssh/verify",
        &[("X-Vault-Token", "hvs.a-token-revoked-long-ago")],
        Some(&json!({ "otp": otp }).to_string()),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["username"], "alice");
}

#[test]
fn a_field_written_to_a_file_is_the_value_as_it_is() {
    let s = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let gatepass = |args: &[&str]| {
        let mut c = Command::new(bin("gatepass"));
        for v in CLI_AMBIENT_ENV {
            c.env_remove(v);
        }
        c.envs(s.cli_env()).env("HOME", dir.path()).args(args);
        c
    };
    let (code, _, err) = run(&mut gatepass(&[
        "write",
        "ssh/config/ca",
        "key_type=ssh-ed25519",
    ]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&mut gatepass(&[
        "write",
        "ssh/roles/dev",
        "key_type=ca",
        "allow_user_certificates=true",
        "allowed_users=*",
        "default_user=root",
    ]));
    assert_eq!(code, 0, "{err}");
    let (_, public) = keypair(dir.path(), "user", "ed25519", None);
    // $ gatepass write -field=signed_key ssh/sign/dev public_key=@user.pub > cert.pub
    let (code, out, err) = run(&mut gatepass(&[
        "write",
        "-field=signed_key",
        "ssh/sign/dev",
        &format!("public_key={}", public.trim()),
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with('\n') && !out.ends_with("\n\n"), "{out:?}");
    let cert = dir.path().join("cert.pub");
    std::fs::write(&cert, &out).unwrap();
    let (code, shown, err) = run(Command::new("ssh-keygen").arg("-L").arg("-f").arg(&cert));
    assert_eq!(code, 0, "{err}");
    assert!(shown.contains("user certificate"), "{shown}");
    assert!(!err.contains("invalid format"), "{err}");
    // A value with no line end of its own gets none added.
    let (code, out, _) = run(&mut gatepass(&["read", "-field=key_type", "ssh/roles/dev"]));
    assert_eq!(code, 0);
    assert_eq!(out, "ca");
}

#[test]
fn a_mount_is_tuned_and_moved_and_its_roles_follow() {
    let s = DevServer::start();
    let h = [root(&s)];
    let post = |path: &str, body: Value| call(&s, "POST", path, &h, Some(&body.to_string()));
    let (st, v) = post("ssh/config/ca", json!({"key_type": "ssh-ed25519"}));
    assert_eq!(st, 200, "{v}");
    let ca = v["data"]["public_key"].as_str().unwrap().to_string();
    // A role without TTLs of its own.
    let (st, v) = post(
        "ssh/roles/dev",
        json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*", "default_user": "root"}),
    );
    assert!(st < 300, "{v}");

    // $ vault secrets tune -default-lease-ttl=1h -max-lease-ttl=2h ssh
    let (st, v) = post(
        "sys/mounts/ssh/tune",
        json!({"default_lease_ttl": "1h", "max_lease_ttl": "7200"}),
    );
    assert_eq!(st, 204, "{v}");
    let (st, v) = call(&s, "GET", "sys/mounts/ssh/tune", &h, None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["default_lease_ttl"], 3600);
    assert_eq!(v["data"]["max_lease_ttl"], 7200);
    let (_, v) = call(&s, "GET", "sys/mounts", &h, None);
    assert_eq!(v["data"]["ssh/"]["config"]["max_lease_ttl"], 7200, "{v}");
    // The role falls back on them.
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = keypair(dir.path(), "user", "ed25519", None);
    let (st, v) = post("ssh/sign/dev", json!({ "public_key": public.trim() }));
    assert_eq!(st, 200, "{v}");
    let cert = v["data"]["signed_key"].as_str().unwrap();
    let described = gatepass_tests::ssh::describe_cert(dir.path(), cert);
    let valid = described
        .lines()
        .find(|l| l.trim_start().starts_with("Valid:"))
        .unwrap()
        .to_string();
    let (from, to) = valid.split_once(" to ").unwrap();
    let t = |x: &str| {
        let x = x.trim().trim_start_matches("Valid: from ").trim();
        let (c, o, _) = run(Command::new("date").args(["-d", x, "+%s"]));
        assert_eq!(c, 0, "{x}");
        o.trim().parse::<i64>().unwrap()
    };
    let span = t(to) - t(from);
    assert!((3500..=3700).contains(&span), "{valid}: {span} s");
    let (st, v) = post(
        "ssh/sign/dev",
        json!({ "public_key": public.trim(), "ttl": "3h" }),
    );
    assert_eq!(st, 400, "over the mount's max: {v}");
    // Asked to keep audit keys readable: refused, not silently ignored.
    let (st, v) = post(
        "sys/mounts/ssh/tune",
        json!({"audit_non_hmac_request_keys": ["public_key"]}),
    );
    assert_eq!(st, 400, "{v}");
    let (st, v) = post("sys/mounts/ssh/tune", json!({"default_lease_ttl": "3h"}));
    assert_eq!(st, 400, "default over max: {v}");

    // $ vault secrets move ssh team/ssh
    let (st, v) = post("sys/remount", json!({"from": "ssh", "to": "team/ssh"}));
    assert_eq!(st, 200, "{v}");
    let id = v["data"]["migration_id"].as_str().unwrap().to_string();
    let (st, v) = call(&s, "GET", &format!("sys/remount/status/{id}"), &h, None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["migration_info"]["status"], "success");
    // The CA, its roles and its tuning moved with it.
    let (st, v) = call(&s, "GET", "team/ssh/config/ca", &h, None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["public_key"].as_str().unwrap(), ca);
    let (st, v) = post("team/ssh/sign/dev", json!({ "public_key": public.trim() }));
    assert_eq!(st, 200, "{v}");
    let (_, v) = call(&s, "GET", "sys/mounts/team/ssh/tune", &h, None);
    assert_eq!(v["data"]["max_lease_ttl"], 7200);
    let (st, _) = call(&s, "GET", "ssh/config/ca", &h, None);
    assert_eq!(st, 404);
    for (from, to) in [
        ("team/ssh", "sys/x"),
        ("team/ssh", "auth/x"),
        ("nope", "other"),
    ] {
        let (st, v) = post("sys/remount", json!({ "from": from, "to": to }));
        assert_eq!(st, 400, "{from} → {to}: {v}");
    }
}

#[test]
fn an_auth_method_tuned_bounds_the_tokens_it_issues() {
    let s = DevServer::start();
    let h = [root(&s)];
    let post = |path: &str, body: Value| call(&s, "POST", path, &h, Some(&body.to_string()));
    // Untuned: the system's 768 h, as Vault shows it.
    let (st, v) = call(&s, "GET", "sys/auth/approle/tune", &h, None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["default_lease_ttl"], 768 * 3600);
    assert_eq!(v["data"]["max_lease_ttl"], 768 * 3600);

    // $ vault auth tune -default-lease-ttl=30m -max-lease-ttl=1h approle
    let (st, v) = post(
        "sys/auth/approle/tune",
        json!({"default_lease_ttl": "30m", "max_lease_ttl": "1h", "description": "CI"}),
    );
    assert_eq!(st, 204, "{v}");
    let (_, v) = call(&s, "GET", "sys/auth/approle/tune", &h, None);
    assert_eq!(v["data"]["default_lease_ttl"], 1800, "{v}");
    assert_eq!(v["data"]["max_lease_ttl"], 3600, "{v}");
    assert_eq!(v["data"]["description"], "CI", "{v}");
    let (_, v) = call(&s, "GET", "sys/auth", &h, None);
    assert_eq!(
        v["data"]["approle/"]["config"]["max_lease_ttl"], 3600,
        "{v}"
    );
    assert_eq!(v["data"]["approle/"]["description"], "CI", "{v}");

    // A role without token_ttl gets the method's default; one asking for
    // more than its maximum gets the maximum, and renewals stop there.
    post("auth/approle/role/plain", json!({}));
    post("auth/approle/role/greedy", json!({"token_ttl": "5h"}));
    let login = |role: &str| {
        let (_, v) = call(
            &s,
            "GET",
            &format!("auth/approle/role/{role}/role-id"),
            &h,
            None,
        );
        let role_id = v["data"]["role_id"].as_str().unwrap().to_string();
        let (_, v) = post(&format!("auth/approle/role/{role}/secret-id"), json!({}));
        let secret_id = v["data"]["secret_id"].as_str().unwrap().to_string();
        let (st, v) = call(
            &s,
            "POST",
            "auth/approle/login",
            &[],
            Some(&json!({"role_id": role_id, "secret_id": secret_id}).to_string()),
        );
        assert_eq!(st, 200, "{v}");
        (
            v["auth"]["client_token"].as_str().unwrap().to_string(),
            v["auth"]["lease_duration"].as_i64().unwrap(),
        )
    };
    let (_, ttl) = login("plain");
    assert_eq!(ttl, 1800);
    let (greedy, ttl) = login("greedy");
    assert_eq!(ttl, 3600);
    let (st, v) = call(
        &s,
        "POST",
        "auth/token/renew-self",
        &[("X-Vault-Token", &greedy)],
        Some(r#"{"increment":"10h"}"#),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["auth"]["lease_duration"].as_i64().unwrap() <= 3600, "{v}");

    // userpass is tuned on its own: its logins keep the system's default
    // until their own maximum is lowered.
    post(
        "auth/userpass/users/alice",
        json!({"password": "pw-of-alice"}),
    );
    let (_, v) = post(
        "auth/userpass/login/alice",
        json!({"password": "pw-of-alice"}),
    );
    assert_eq!(v["auth"]["lease_duration"], 768 * 3600, "{v}");
    let (st, _) = post("sys/auth/userpass/tune", json!({"max_lease_ttl": "2h"}));
    assert_eq!(st, 204);
    let (_, v) = post(
        "auth/userpass/login/alice",
        json!({"password": "pw-of-alice"}),
    );
    assert_eq!(v["auth"]["lease_duration"], 7200, "{v}");

    // What cannot be tuned says why.
    for (path, body) in [
        ("sys/auth/nope/tune", json!({"max_lease_ttl": "1h"})),
        ("sys/auth/approle/tune", json!({"default_lease_ttl": "3h"})),
        (
            "sys/auth/approle/tune",
            json!({"audit_non_hmac_request_keys": ["secret_id"]}),
        ),
        (
            "sys/auth/approle/tune",
            json!({"listing_visibility": "everyone"}),
        ),
    ] {
        let (st, v) = post(path, body.clone());
        assert_eq!(st, 400, "{path} {body}: {v}");
        assert!(
            v["errors"][0].as_str().is_some_and(|e| !e.is_empty()),
            "{v}"
        );
    }
    // "system" puts the system's value back.
    post(
        "sys/auth/approle/tune",
        json!({"default_lease_ttl": "system", "max_lease_ttl": "system"}),
    );
    let (_, ttl) = login("plain");
    assert_eq!(ttl, 768 * 3600);
}
