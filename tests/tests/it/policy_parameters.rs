//! Policy parameter constraints (`allowed_parameters`, `denied_parameters`,
//! `required_parameters`) on real requests: a policy copied from Vault that
//! limits `valid_principals` must limit the certificates a token gets.

use axum::http::StatusCode;
use gatepass_tests::inproc::{Backend, Server};
use gatepass_tests::ssh::keypair;
use serde_json::{json, Value};

async fn ok(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (st, v) = s.root(method, path, Some(body)).await;
    assert!(st.is_success(), "{method} {path}: {st} {v}");
    v
}

/// A CA and a role that would sign for root and alice, and a user key.
async fn ca_with_role(s: &Server) -> String {
    ok(s, "POST", "ssh/config/ca", json!({})).await;
    ok(
        s,
        "POST",
        "ssh/roles/dev",
        json!({"key_type": "ca", "allow_user_certificates": true,
               "allowed_users": "root,alice", "default_user": "root"}),
    )
    .await;
    keypair(s.dir.path(), "user", "ed25519", None).1
}

fn denied(st: StatusCode, v: &Value) {
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["errors"], json!(["permission denied"]), "{v}");
}

#[tokio::test]
async fn allowed_principals_limit_the_certificates_a_token_gets() {
    let s = Server::start(Backend::Sqlite).await;
    let pk = ca_with_role(&s).await;
    let token = s
        .token_with_policy(
            "alice-only",
            r#"path "ssh/sign/*" {
                 capabilities = ["update"]
                 allowed_parameters = {
                   "valid_principals" = ["alice"]
                   "public_key" = []
                 }
               }"#,
        )
        .await;
    let sign = |principals: Value| {
        let s = &s;
        let token = token.clone();
        let mut body = json!({ "public_key": pk });
        if !principals.is_null() {
            body["valid_principals"] = principals;
        }
        async move {
            s.call("POST", "ssh/sign/dev", Some(&token), Some(body))
                .await
        }
    };

    let (st, v) = sign(json!("root")).await;
    denied(st, &v);
    let (st, v) = sign(json!("alice")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["data"]["signed_key"]
        .as_str()
        .is_some_and(|k| !k.is_empty()));
    // The engine reads this as two principals: root must not slip in.
    let (st, v) = sign(json!("alice,root")).await;
    denied(st, &v);
    let (st, v) = sign(json!("alice, root")).await;
    denied(st, &v);
    // A parameter the policy does not name is refused.
    let (st, v) = s
        .call(
            "POST",
            "ssh/sign/dev",
            Some(&token),
            Some(json!({"public_key": pk, "valid_principals": "alice", "ttl": "1h"})),
        )
        .await;
    denied(st, &v);
    // As in Vault, a constraint does not apply to a parameter left out: the
    // role's default user (root) is signed. required_parameters closes that.
    let (st, v) = sign(Value::Null).await;
    assert_eq!(st, StatusCode::OK, "{v}");

    let strict = s
        .token_with_policy(
            "alice-required",
            r#"path "ssh/sign/*" {
                 capabilities = ["update"]
                 required_parameters = ["valid_principals"]
                 allowed_parameters = {
                   "valid_principals" = ["alice"]
                   "public_key" = []
                 }
               }"#,
        )
        .await;
    let (st, v) = s
        .call(
            "POST",
            "ssh/sign/dev",
            Some(&strict),
            Some(json!({ "public_key": pk })),
        )
        .await;
    denied(st, &v);
    let (st, v) = s
        .call(
            "POST",
            "ssh/sign/dev",
            Some(&strict),
            Some(json!({ "public_key": pk, "valid_principals": "alice" })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn denied_values_are_refused_on_a_write_in_every_form() {
    let s = Server::start(Backend::Sqlite).await;
    ok(&s, "POST", "ssh/config/ca", json!({})).await;
    let token = s
        .token_with_policy(
            "role-editor",
            r#"path "ssh/roles/*" {
                 capabilities = ["create", "update", "read"]
                 denied_parameters = {
                   "allowed_users" = ["root", "*"]
                   "default_user" = []
                 }
               }"#,
        )
        .await;
    let write = |body: Value| {
        let s = &s;
        let token = token.clone();
        let mut full = json!({"key_type": "ca", "allow_user_certificates": true});
        for (k, v) in body.as_object().cloned().unwrap_or_default() {
            full[k] = v;
        }
        async move {
            s.call("POST", "ssh/roles/team", Some(&token), Some(full))
                .await
        }
    };
    let (st, v) = write(json!({"allowed_users": "alice,bob"})).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    for refused in [
        json!({"allowed_users": "root"}),
        json!({"allowed_users": "alice,root"}),
        json!({"allowed_users": ["alice", " root"]}),
        json!({"allowed_users": "*"}),
        json!({"allowed_users": "alice", "default_user": "alice"}),
    ] {
        let (st, v) = write(refused.clone()).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{refused}: {v}");
    }
    // Nothing refused was written.
    let (st, v) = s.root("GET", "ssh/roles/team", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["allowed_users"], json!("alice,bob"), "{v}");
}

#[tokio::test]
async fn templated_principals_follow_the_logged_in_user() {
    let s = Server::start(Backend::Sqlite).await;
    let pk = ca_with_role(&s).await;
    ok(
        &s,
        "POST",
        "sys/policies/acl/self-sign",
        json!({"policy": r#"
            path "ssh/sign/dev" {
              capabilities = ["update"]
              allowed_parameters = {
                "valid_principals" = ["{{identity.entity.name}}"]
                "public_key" = []
              }
            }"#}),
    )
    .await;
    ok(
        &s,
        "POST",
        "auth/userpass/users/alice",
        json!({"password": "pw-alice-123", "token_policies": "self-sign"}),
    )
    .await;
    let (st, v) = s
        .call(
            "POST",
            "auth/userpass/login/alice",
            None,
            Some(json!({"password": "pw-alice-123"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let alice = v["auth"]["client_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let sign = |p: &'static str| {
        let s = &s;
        let alice = alice.clone();
        let body = json!({"public_key": pk, "valid_principals": p});
        async move {
            s.call("POST", "ssh/sign/dev", Some(&alice), Some(body))
                .await
        }
    };
    assert_eq!(sign("alice").await.0, StatusCode::OK);
    let (st, v) = sign("root").await;
    denied(st, &v);
    // A template in a value that gatepass cannot fill in is refused when
    // the policy is written, not silently compared as text.
    let (st, v) = s
        .root(
            "POST",
            "sys/policies/acl/bad",
            Some(json!({"policy": r#"path "a" {
                capabilities = ["update"]
                allowed_parameters = { "x" = ["{{identity.entity.groups.names}}"] }
            }"#})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}
