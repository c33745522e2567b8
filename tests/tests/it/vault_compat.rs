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
