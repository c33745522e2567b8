//! The Vault-compatible API driven in-process, on SQLite and on a private
//! PostgreSQL: policies and ACLs, tokens, AppRole, userpass, mounts, and bad
//! input. Every case runs on both backends.

use axum::http::StatusCode;
use gatepass_tests::inproc::{Server, BACKENDS, ROOT};
use serde_json::json;

macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for backend in BACKENDS {
                let s = Server::start(backend).await;
                let f: fn(Server) -> _ = $body;
                f(s).await;
            }
        }
    };
}

async fn policy_names(s: &Server) -> Vec<String> {
    let (_, v) = s.root("LIST", "sys/policies/acl", None).await;
    serde_json::from_value(v["data"]["keys"].clone()).unwrap_or_default()
}

on_both_backends!(acl_denies_with_403_and_changes_nothing, |s| async move {
    let t = s
        .token_with_policy(
            "reader",
            r#"path "sys/policies/acl/*" { capabilities = ["read", "list"] }"#,
        )
        .await;
    // Allowed: read and list.
    let (st, v) = s
        .call("GET", "sys/policies/acl/reader", Some(&t), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["data"]["policy"]
        .as_str()
        .unwrap()
        .contains("sys/policies/acl"));
    // Denied: writing a policy, deleting one, creating a mount.
    let before = policy_names(&s).await;
    let (st, v) = s
        .call(
            "POST",
            "sys/policies/acl/evil",
            Some(&t),
            Some(json!({"policy": "path \"*\" { capabilities = [\"sudo\"] }"})),
        )
        .await;
    assert_eq!(
        (st, v.clone()),
        (
            StatusCode::FORBIDDEN,
            json!({"errors": ["permission denied"]})
        )
    );
    let (st, _) = s
        .call("DELETE", "sys/policies/acl/reader", Some(&t), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .call(
            "POST",
            "sys/mounts/other",
            Some(&t),
            Some(json!({"type": "ssh"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(
        policy_names(&s).await,
        before,
        "a denied request changed the policies"
    );
    let (_, mounts) = s.root("GET", "sys/mounts", None).await;
    assert!(
        mounts["data"].get("other/").is_none(),
        "a denied request created a mount"
    );
});

on_both_backends!(deny_beats_allow, |s| async move {
    s.root(
        "POST",
        "sys/policies/acl/allow",
        Some(json!({"policy": r#"path "sys/policies/acl/*" { capabilities = ["read"] }"#})),
    )
    .await;
    s.root(
        "POST",
        "sys/policies/acl/deny",
        Some(json!({"policy": r#"path "sys/policies/acl/*" { capabilities = ["deny"] }"#})),
    )
    .await;
    // The same pattern in two policies: deny wins over read.
    let (_, v) = s
        .root(
            "POST",
            "auth/token/create",
            Some(json!({"policies": ["allow", "deny"]})),
        )
        .await;
    let t = v["auth"]["client_token"].as_str().unwrap().to_string();
    let (st, _) = s
        .call("GET", "sys/policies/acl/default", Some(&t), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // A more specific deny inside a broad allow.
    let t2 = s
        .token_with_policy(
            "mixed",
            r#"
            path "sys/policies/acl/*" { capabilities = ["read"] }
            path "sys/policies/acl/default" { capabilities = ["deny"] }
            "#,
        )
        .await;
    let (st, _) = s
        .call("GET", "sys/policies/acl/default", Some(&t2), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .call("GET", "sys/policies/acl/mixed", Some(&t2), None)
        .await;
    assert_eq!(st, StatusCode::OK);
});

on_both_backends!(plus_and_star_globs_match_as_vault, |s| async move {
    let t = s
        .token_with_policy(
            "globs",
            r#"
            path "auth/userpass/users/+" { capabilities = ["read"] }
            path "auth/approle/role/+/role-id" { capabilities = ["read"] }
            path "auth/approle/role/web*" { capabilities = ["update", "read"] }
            "#,
        )
        .await;
    s.root(
        "POST",
        "auth/userpass/users/bob",
        Some(json!({"password": "pw-bob-123"})),
    )
    .await;
    let (st, v) = s
        .root(
            "POST",
            "auth/approle/role/db",
            Some(json!({"token_policies": "default"})),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    // In order: `+` matches exactly one segment; `*` is a prefix match,
    // across segments (the POST creates the role the next line reads).
    let cases = [
        ("GET", "auth/userpass/users/bob", None, StatusCode::OK),
        ("GET", "auth/approle/role/db/role-id", None, StatusCode::OK),
        (
            "GET",
            "auth/approle/role/db/secret-id",
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            "POST",
            "auth/userpass/users/bob/password",
            Some(json!({"password":"x"})),
            StatusCode::FORBIDDEN,
        ),
        (
            "POST",
            "auth/approle/role/web-frontend",
            Some(json!({"token_policies": "default"})),
            StatusCode::NO_CONTENT,
        ),
        (
            "GET",
            "auth/approle/role/web-frontend/role-id",
            None,
            StatusCode::OK,
        ),
        (
            "POST",
            "auth/approle/role/db",
            Some(json!({})),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (method, path, body, want) in cases {
        assert_eq!(
            s.call(method, path, Some(&t), body).await.0,
            want,
            "{method} {path}"
        );
    }
    // capabilities-self reports what the ACL grants.
    let (_, v) = s
        .call(
            "POST",
            "sys/capabilities-self",
            Some(&t),
            Some(json!({"paths": ["auth/userpass/users/x", "auth/userpass/users/x/y"]})),
        )
        .await;
    assert_eq!(v["data"]["auth/userpass/users/x"], json!(["read"]));
    assert_eq!(v["data"]["auth/userpass/users/x/y"], json!(["deny"]));
    // A path no request could take is refused, not answered for.
    for odd in ["auth/userpass/users/../users/x", "auth//userpass/users/x"] {
        let (st, v) = s
            .call(
                "POST",
                "sys/capabilities-self",
                Some(&t),
                Some(json!({ "paths": [odd] })),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{odd}: {v}");
    }
});

on_both_backends!(tokens_lifecycle, |s| async move {
    s.root(
        "POST",
        "sys/policies/acl/p1",
        Some(json!({"policy": r#"path "auth/token/create" { capabilities = ["update"] }"#})),
    )
    .await;
    let (st, v) = s
        .root("POST", "auth/token/create", Some(json!({"policies": ["p1"], "ttl": "1h", "explicit_max_ttl": "2h", "meta": {"team": "ops"}, "display_name": "ci"})))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let auth = &v["auth"];
    let t = auth["client_token"].as_str().unwrap().to_string();
    assert_eq!(auth["policies"], json!(["default", "p1"]));
    assert_eq!(auth["lease_duration"], 3600);
    assert_eq!(auth["renewable"], true);
    let (_, v) = s
        .call("GET", "auth/token/lookup-self", Some(&t), None)
        .await;
    assert_eq!(v["data"]["display_name"], "token-ci");
    assert_eq!(v["data"]["meta"]["team"], "ops");
    assert_eq!(v["data"]["ttl"], 3600);
    // Renew within explicit_max_ttl.
    s.clock.advance(1800);
    let (_, v) = s
        .call(
            "POST",
            "auth/token/renew-self",
            Some(&t),
            Some(json!({"increment": "10h"})),
        )
        .await;
    assert_eq!(
        v["auth"]["lease_duration"], 5400,
        "capped at explicit_max_ttl: {v}"
    );
    // A child may not have policies its parent lacks.
    let (st, v) = s
        .call(
            "POST",
            "auth/token/create",
            Some(&t),
            Some(json!({"policies": ["root"]})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = s
        .call(
            "POST",
            "auth/token/create",
            Some(&t),
            Some(json!({"policies": ["p1"], "num_uses": 2})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let child = v["auth"]["client_token"].as_str().unwrap().to_string();
    // num_uses: two uses, then gone.
    assert_eq!(
        s.call("GET", "auth/token/lookup-self", Some(&child), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        s.call("GET", "auth/token/lookup-self", Some(&child), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        s.call("GET", "auth/token/lookup-self", Some(&child), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // Revoking a parent revokes its children.
    let (_, v) = s
        .call("POST", "auth/token/create", Some(&t), Some(json!({})))
        .await;
    let child2 = v["auth"]["client_token"].as_str().unwrap().to_string();
    assert_eq!(
        s.root("POST", "auth/token/revoke", Some(json!({"token": t})))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.call("GET", "auth/token/lookup-self", Some(&t), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.call("GET", "auth/token/lookup-self", Some(&child2), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // Expiry: a token is refused once its TTL has passed.
    let (_, v) = s
        .root("POST", "auth/token/create", Some(json!({"ttl": "60s"})))
        .await;
    let short = v["auth"]["client_token"].as_str().unwrap().to_string();
    assert_eq!(
        s.call("GET", "auth/token/lookup-self", Some(&short), None)
            .await
            .0,
        StatusCode::OK
    );
    s.clock.advance(61);
    let (st, v) = s
        .call("GET", "auth/token/lookup-self", Some(&short), None)
        .await;
    assert_eq!(
        (st, v),
        (
            StatusCode::FORBIDDEN,
            json!({"errors": ["permission denied"]})
        )
    );
    // Tokens are stored only as hashes: the token text is nowhere in storage keys.
    let keys = s.core.storage.keys_with_prefix("").await.unwrap();
    assert!(keys
        .iter()
        .all(|k| !k.contains(&short) && !k.contains(ROOT)));
});

on_both_backends!(approle_login_and_secret_id_limits, |s| async move {
    s.root(
        "POST",
        "sys/policies/acl/app",
        Some(json!({"policy": r#"path "sys/mounts" { capabilities = ["read"] }"#})),
    )
    .await;
    let (st, v) = s
        .root("POST", "auth/approle/role/web", Some(json!({"token_policies": "app", "token_ttl": "20m", "secret_id_num_uses": 2, "secret_id_ttl": "10m"})))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let (_, v) = s.root("GET", "auth/approle/role/web/role-id", None).await;
    let role_id = v["data"]["role_id"].as_str().unwrap().to_string();
    let (_, v) = s
        .root("POST", "auth/approle/role/web/secret-id", None)
        .await;
    let secret_id = v["data"]["secret_id"].as_str().unwrap().to_string();
    assert_eq!(v["data"]["secret_id_num_uses"], 2);
    let login = json!({"role_id": role_id, "secret_id": secret_id});
    let (st, v) = s
        .call("POST", "auth/approle/login", None, Some(login.clone()))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["auth"]["policies"], json!(["app", "default"]));
    assert_eq!(v["auth"]["lease_duration"], 1200);
    assert_eq!(v["auth"]["metadata"]["role_name"], "web");
    let t = v["auth"]["client_token"].as_str().unwrap().to_string();
    assert_eq!(
        s.call("GET", "sys/mounts", Some(&t), None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        s.call("GET", "sys/policies/acl/app", Some(&t), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // Second use works, third does not (secret_id_num_uses = 2).
    assert_eq!(
        s.call("POST", "auth/approle/login", None, Some(login.clone()))
            .await
            .0,
        StatusCode::OK
    );
    let (st, v) = s
        .call("POST", "auth/approle/login", None, Some(login))
        .await;
    assert_eq!(
        (st, v),
        (
            StatusCode::BAD_REQUEST,
            json!({"errors": ["invalid role or secret ID"]})
        )
    );
    // An expired secret ID fails.
    let (_, v) = s
        .root("POST", "auth/approle/role/web/secret-id", None)
        .await;
    let sid = v["data"]["secret_id"].as_str().unwrap().to_string();
    s.clock.advance(601);
    let (st, _) = s
        .call(
            "POST",
            "auth/approle/login",
            None,
            Some(json!({"role_id": role_id, "secret_id": sid})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // token_bound_cidrs: the token only works from the bound network.
    s.root(
        "POST",
        "auth/approle/role/bound",
        Some(json!({"token_policies": "app", "token_bound_cidrs": ["10.0.0.0/8"]})),
    )
    .await;
    let (_, v) = s.root("GET", "auth/approle/role/bound/role-id", None).await;
    let rid = v["data"]["role_id"].as_str().unwrap().to_string();
    let (_, v) = s
        .root("POST", "auth/approle/role/bound/secret-id", None)
        .await;
    let sid = v["data"]["secret_id"].as_str().unwrap().to_string();
    let (_, v) = s
        .call(
            "POST",
            "auth/approle/login",
            None,
            Some(json!({"role_id": rid, "secret_id": sid})),
        )
        .await;
    let bound = v["auth"]["client_token"].as_str().unwrap().to_string();
    assert_eq!(
        s.call("GET", "sys/mounts", Some(&bound), None).await.0,
        StatusCode::FORBIDDEN,
        "client 127.0.0.1 is outside 10.0.0.0/8"
    );
    // Secret IDs are stored only as hashes.
    let keys = s.core.storage.keys_with_prefix("").await.unwrap();
    assert!(keys.iter().all(|k| !k.contains(&sid)));
});

on_both_backends!(userpass_login, |s| async move {
    let (st, v) = s
        .root(
            "POST",
            "auth/userpass/users/Alice",
            Some(json!({"password": "correct horse", "token_policies": ["default"]})),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let (_, v) = s.root("GET", "auth/userpass/users/alice", None).await;
    assert!(
        v["data"].get("password").is_none() && v["data"].get("password_hash").is_none(),
        "{v}"
    );
    let (st, v) = s
        .call(
            "POST",
            "auth/userpass/login/alice",
            None,
            Some(json!({"password": "correct horse"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["auth"]["metadata"]["username"], "alice");
    let (st, v) = s
        .call(
            "POST",
            "auth/userpass/login/alice",
            None,
            Some(json!({"password": "wrong"})),
        )
        .await;
    assert_eq!(
        (st, v),
        (
            StatusCode::BAD_REQUEST,
            json!({"errors": ["invalid username or password"]})
        )
    );
    let (st, _) = s
        .call(
            "POST",
            "auth/userpass/login/nobody",
            None,
            Some(json!({"password": "x"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (_, v) = s.root("LIST", "auth/userpass/users", None).await;
    assert_eq!(v["data"]["keys"], json!(["alice"]));
});

on_both_backends!(mounts_and_list_conventions, |s| async move {
    let (st, v) = s
        .root(
            "POST",
            "sys/mounts/ssh-host",
            Some(json!({"type": "ssh", "description": "host CA"})),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let (_, v) = s.root("GET", "sys/mounts", None).await;
    assert_eq!(v["data"]["ssh-host/"]["type"], "ssh");
    assert_eq!(v["data"]["ssh/"]["type"], "ssh");
    assert_eq!(
        s.root("POST", "sys/mounts/ssh-host", Some(json!({"type": "ssh"})))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.root("POST", "sys/mounts/kv", Some(json!({"type": "kv"})))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.root("POST", "sys/mounts/sys", Some(json!({"type": "ssh"})))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.root("DELETE", "sys/mounts/ssh-host", None).await.0,
        StatusCode::NO_CONTENT
    );
    let (_, v) = s.root("GET", "sys/mounts", None).await;
    assert!(v["data"].get("ssh-host/").is_none());
    // LIST as a method and as GET ?list=true answer the same.
    let (_, a) = s.root("LIST", "sys/policies/acl", None).await;
    let (_, b) = s.root("GET", "sys/policies/acl?list=true", None).await;
    assert_eq!(a["data"], b["data"]);
    assert_eq!(
        a["data"]["keys"],
        json!(["default", "gatepass-gateway", "gatepass-host", "root"])
    );
    // An empty list is Vault's 404 with no errors.
    assert_eq!(
        s.root("LIST", "auth/approle/role", None).await,
        (StatusCode::NOT_FOUND, json!({"errors": []}))
    );
    // Health needs no token; metrics are Prometheus text.
    let (st, v) = s.call("GET", "sys/health", None, None).await;
    assert_eq!(
        (st, v["initialized"].clone(), v["sealed"].clone()),
        (StatusCode::OK, json!(true), json!(false))
    );
    let (st, v) = s.root("GET", "sys/metrics?format=prometheus", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        v.as_str().unwrap().contains("gatepass_requests_total"),
        "{v}"
    );
    // The envelope has Vault's fields.
    let (_, v) = s.root("GET", "auth/token/lookup-self", None).await;
    for k in [
        "request_id",
        "lease_id",
        "renewable",
        "lease_duration",
        "data",
        "wrap_info",
        "warnings",
        "auth",
    ] {
        assert!(v.get(k).is_some(), "envelope lacks {k}: {v}");
    }
});

on_both_backends!(bad_input_gets_4xx_and_changes_nothing, |s| async move {
    let before = s.core.storage.keys_with_prefix("").await.unwrap();
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode)> = vec![
        (
            "POST",
            "sys/policies/acl/x",
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "sys/policies/acl/x",
            b"[1,2]".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "sys/policies/acl/x",
            br#"{"policy": 5}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "sys/policies/acl/x",
            br#"{"policy": "path \"a\" { capabilities = [\"fly\"] }"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "sys/policies/acl/x",
            br#"{"policy": "this is not hcl {"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "sys/policies/acl/bad%0Aname",
            br#"{"policy": "path \"a\" { capabilities = [\"read\"] }"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "auth/token/create",
            br#"{"ttl": {"h": 1}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "auth/token/create",
            br#"{"ttl": "forever"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "auth/token/create",
            br#"{"num_uses": -1}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "auth/token/create",
            br#"{"policies": [1, 2]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "auth/token/create",
            br#"{"renewable": "maybe"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "auth/userpass/users/bob",
            br#"{"token_policies": "x"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "auth/userpass/users/bo%20b",
            br#"{"password": "x"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "auth/approle/role/r",
            br#"{"token_bound_cidrs": "not-a-cidr"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "auth/approle/role/r",
            br#"{"token_ttl": "2h", "token_max_ttl": "1h"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "sys/mounts/a%20b",
            br#"{"type": "ssh"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        ("GET", "no/such/path", vec![], StatusCode::NOT_FOUND),
        ("GET", "sys/nothing-here", vec![], StatusCode::NOT_FOUND),
        (
            "PATCH",
            "sys/health",
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "POST",
            "sys/policies/acl/x",
            vec![b' '; 2 * 1024 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (method, path, body, want) in cases {
        let (st, v) = s.call_raw(method, path, Some(ROOT), body).await;
        assert_eq!(st, want, "{method} {path}: {v}");
        let errors = v["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path}: no errors list: {v}"));
        if want != StatusCode::NOT_FOUND && want != StatusCode::METHOD_NOT_ALLOWED {
            assert!(
                !errors.is_empty() && !errors[0].as_str().unwrap().is_empty(),
                "{method} {path}: empty error"
            );
        }
        assert!(
            !v.to_string().contains("sqlx") && !v.to_string().contains("panicked"),
            "internals leaked: {v}"
        );
    }
    // Bad, missing and malformed tokens.
    for t in [Some("nope"), None, Some(""), Some("gps.not-a-real-token")] {
        let (st, v) = s
            .call(
                "POST",
                "sys/policies/acl/x",
                t,
                Some(json!({"policy": "path \"a\" { capabilities = [\"read\"] }"})),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{t:?}: {v}");
    }
    // An expired token.
    let (_, v) = s
        .root("POST", "auth/token/create", Some(json!({"ttl": 5})))
        .await;
    let t = v["auth"]["client_token"].as_str().unwrap().to_string();
    s.clock.advance(6);
    assert_eq!(
        s.call("GET", "auth/token/lookup-self", Some(&t), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // Nothing but the token we just made (and removed) and audit rows changed.
    let after = s.core.storage.keys_with_prefix("").await.unwrap();
    assert_eq!(before, after);
});

on_both_backends!(audit_log_hides_secrets, |s| async move {
    s.root(
        "POST",
        "auth/userpass/users/carol",
        Some(json!({"password": "hunter2-very-secret"})),
    )
    .await;
    let (_, v) = s
        .call(
            "POST",
            "auth/userpass/login/carol",
            None,
            Some(json!({"password": "hunter2-very-secret"})),
        )
        .await;
    let t = v["auth"]["client_token"].as_str().unwrap().to_string();
    s.call("GET", "auth/token/lookup-self", Some(&t), None)
        .await;
    s.root("POST", "auth/approle/role/r1", Some(json!({})))
        .await;
    let (_, v) = s.root("POST", "auth/approle/role/r1/secret-id", None).await;
    let sid = v["data"]["secret_id"].as_str().unwrap().to_string();
    let text = s.audit_text();
    assert!(text.lines().count() >= 5);
    for secret in ["hunter2-very-secret", t.as_str(), sid.as_str(), ROOT] {
        assert!(!text.contains(secret), "audit log contains a secret");
    }
    assert!(text.contains("auth/userpass/login/carol"));
    assert!(text.contains("hmac-sha256:"));
    // The database holds the same events.
    let rows = s.core.storage.audit_events(0, 1000).await.unwrap();
    assert_eq!(rows.len(), text.lines().count());
});

on_both_backends!(
    a_password_change_racing_a_delete_never_brings_the_user_back,
    |s| async move {
        let s = std::sync::Arc::new(s);
        let (st, v) = s
            .root(
                "POST",
                "auth/userpass/users/bob",
                Some(json!({"password": "first one"})),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
        let s2 = s.clone();
        let change = tokio::spawn(async move {
            s2.root(
                "POST",
                "auth/userpass/users/bob/password",
                Some(json!({"password": "second one"})),
            )
            .await
        });
        // The admin deletes bob while the new password is being hashed.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let (st, _) = s.root("DELETE", "auth/userpass/users/bob", None).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, v) = change.await.unwrap();
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(
            s.root("GET", "auth/userpass/users/bob", None).await.0,
            StatusCode::NOT_FOUND,
            "the deleted user came back"
        );
        let (st, _) = s
            .call(
                "POST",
                "auth/userpass/login/bob",
                None,
                Some(json!({"password": "second one"})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }
);

#[tokio::test]
async fn token_answers_are_the_api_types() {
    use gatepass_tests::inproc::Backend;
    let s = Server::start(Backend::Sqlite).await;
    let (st, v) = s
        .root(
            "POST",
            "auth/token/create",
            Some(json!({"policies": "default", "ttl": "1h", "meta": {"team": "ops"}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // The auth block reads as gatepass_api::Auth, field for field.
    let auth: gatepass_api::Auth = serde_json::from_value(v["auth"].clone()).unwrap();
    assert_eq!(serde_json::to_value(&auth).unwrap(), v["auth"]);
    assert_eq!(
        (
            auth.policies.clone(),
            auth.lease_duration,
            auth.token_type.as_str()
        ),
        (vec!["default".to_string()], 3600, "service")
    );
    assert_eq!(auth.metadata.unwrap()["team"], "ops");
    let (st, v) = s
        .call(
            "GET",
            "auth/token/lookup-self",
            Some(&auth.client_token),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let info: gatepass_api::TokenInfo = gatepass_api::data_of(&v).unwrap();
    assert_eq!(serde_json::to_value(&info).unwrap(), v["data"]);
    assert_eq!((info.id, info.ttl), (auth.client_token, 3600));
    // A token without metadata shows null, as Vault does.
    let (_, v) = s.root("GET", "auth/token/lookup-self", None).await;
    assert_eq!(v["data"]["meta"], serde_json::Value::Null, "{v}");
    assert_eq!(v["data"]["expire_time"], serde_json::Value::Null, "{v}");
}

// Revoking a token revokes the leases it created, and those of its
// children; `revoke-orphan` keeps the children's.
on_both_backends!(revoking_a_token_revokes_its_leases, |s| async move {
    s.root(
        "POST",
        "ssh/roles/otp",
        Some(json!({"key_type": "otp", "default_user": "alice", "cidr_list": "10.0.0.0/8"})),
    )
    .await;
    s.root(
        "POST",
        "sys/policies/acl/otp",
        Some(json!({"policy": r#"
        path "ssh/creds/otp" { capabilities = ["update"] }
        path "auth/token/create" { capabilities = ["update"] }
    "#})),
    )
    .await;
    let token = |parent: &str| {
        let s = &s;
        let parent = parent.to_string();
        async move {
            let (st, v) = s
                .call(
                    "POST",
                    "auth/token/create",
                    Some(&parent),
                    Some(json!({"policies": ["otp"]})),
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{v}");
            v["auth"]["client_token"].as_str().unwrap().to_string()
        }
    };
    let otp_of = |t: String| {
        let s = &s;
        async move {
            let (st, v) = s
                .call(
                    "POST",
                    "ssh/creds/otp",
                    Some(&t),
                    Some(json!({"ip": "10.0.0.7"})),
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{v}");
            (
                v["data"]["key"].as_str().unwrap().to_string(),
                v["lease_id"].as_str().unwrap().to_string(),
            )
        }
    };
    let lease_alive = |id: String| {
        let s = &s;
        async move {
            s.root("POST", "sys/leases/lookup", Some(json!({ "lease_id": id })))
                .await
                .0
                == StatusCode::OK
        }
    };
    let verifies = |otp: String| {
        let s = &s;
        async move {
            s.call("POST", "ssh/verify", None, Some(json!({ "otp": otp })))
                .await
                .0
                == StatusCode::OK
        }
    };

    // A parent and its child each take an OTP; the parent is revoked.
    let parent = token(ROOT).await;
    let child = token(&parent).await;
    let (p_otp, p_lease) = otp_of(parent.clone()).await;
    let (c_otp, c_lease) = otp_of(child.clone()).await;
    assert!(lease_alive(p_lease.clone()).await && lease_alive(c_lease.clone()).await);
    let (st, v) = s
        .root(
            "POST",
            "auth/token/revoke",
            Some(json!({ "token": parent })),
        )
        .await;
    assert!(st.is_success(), "{v}");
    assert!(
        !lease_alive(p_lease).await,
        "the parent's lease outlived it"
    );
    assert!(!lease_alive(c_lease).await, "the child's lease outlived it");
    assert!(!verifies(p_otp).await && !verifies(c_otp).await);

    // revoke-orphan: the parent's leases go, the child's stay.
    let parent = token(ROOT).await;
    let child = token(&parent).await;
    let (_, p_lease) = otp_of(parent.clone()).await;
    let (c_otp, c_lease) = otp_of(child.clone()).await;
    let (st, v) = s
        .root(
            "POST",
            "auth/token/revoke-orphan",
            Some(json!({ "token": parent })),
        )
        .await;
    assert!(st.is_success(), "{v}");
    assert!(!lease_alive(p_lease).await);
    assert!(lease_alive(c_lease).await);
    assert!(verifies(c_otp).await, "the orphan's OTP still works");

    // A used OTP leaves nothing of its lease behind, its token's index
    // included: revoking the token later finds nothing to do.
    let t = token(ROOT).await;
    let (otp, lease) = otp_of(t.clone()).await;
    assert!(verifies(otp).await);
    assert!(!lease_alive(lease).await);
    let (st, _) = s
        .root("POST", "auth/token/revoke", Some(json!({ "token": t })))
        .await;
    assert!(st.is_success());
});

// `token create -period=1h`: a periodic token, renewed to its period each
// time, with no maximum; only root or sudo may make one.
on_both_backends!(periodic_tokens_renew_to_their_period, |s| async move {
    let (st, v) = s
        .root(
            "POST",
            "sys/policies/acl/creator",
            Some(json!({"policy": r#"path "auth/token/create" { capabilities = ["update"] }"#})),
        )
        .await;
    assert!(st.is_success(), "{v}");
    let (st, v) = s
        .root(
            "POST",
            "auth/token/create",
            Some(json!({"period": "30h", "policies": ["creator"]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["auth"]["lease_duration"], 30 * 3600, "{v}");
    assert_eq!(v["auth"]["renewable"], true);
    let t = v["auth"]["client_token"].as_str().unwrap().to_string();
    let (_, v) = s
        .call("GET", "auth/token/lookup-self", Some(&t), None)
        .await;
    assert_eq!(v["data"]["period"], 30 * 3600, "{v}");
    assert_eq!(v["data"]["ttl"], 30 * 3600);
    // Renewed every 25 hours, past the system's 768 h.
    for _ in 0..33 {
        s.clock.advance(25 * 3600);
        let (st, v) = s
            .call(
                "POST",
                "auth/token/renew-self",
                Some(&t),
                Some(json!({"increment": "10m"})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(
            v["auth"]["lease_duration"],
            30 * 3600,
            "the period, not the increment: {v}"
        );
    }
    // Not for a token without sudo.
    let (st, v) = s
        .call(
            "POST",
            "auth/token/create",
            Some(&t),
            Some(json!({"period": "1h"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["errors"][0].as_str().unwrap().contains("periodic"), "{v}");
});

// `token create -role=ci`: the role decides the policies, orphan and
// period, with no `sudo` for its creator.
on_both_backends!(
    token_roles_shape_the_tokens_made_through_them,
    |s| async move {
        for (name, text) in [
            (
                "ci-maker",
                r#"path "auth/token/create/ci*" { capabilities = ["update"] }"#,
            ),
            ("deploy", r#"path "sys/mounts" { capabilities = ["read"] }"#),
            ("admin", r#"path "*" { capabilities = ["sudo", "update"] }"#),
        ] {
            let (st, v) = s
                .root(
                    "POST",
                    &format!("sys/policies/acl/{name}"),
                    Some(json!({ "policy": text })),
                )
                .await;
            assert!(st.is_success(), "{v}");
        }
        let (st, v) = s
            .root(
                "POST",
                "auth/token/roles/ci",
                Some(
                    json!({"allowed_policies": "deploy", "disallowed_policies": "admin",
                        "orphan": true, "token_period": "2h", "path_suffix": "builds"}),
                ),
            )
            .await;
        assert!(st.is_success(), "{v}");
        let (st, v) = s.root("GET", "auth/token/roles/ci", None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["data"]["allowed_policies"], json!(["deploy"]));
        assert_eq!(v["data"]["token_period"], 7200);
        let (_, v) = s.root("LIST", "auth/token/roles", None).await;
        assert_eq!(v["data"]["keys"], json!(["ci"]));

        let (_, v) = s
            .root(
                "POST",
                "auth/token/create",
                Some(json!({"policies": ["ci-maker"]})),
            )
            .await;
        let maker = v["auth"]["client_token"].as_str().unwrap().to_string();
        let (st, v) = s
            .call(
                "POST",
                "auth/token/create/ci",
                Some(&maker),
                Some(json!({})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["auth"]["policies"], json!(["default", "deploy"]), "{v}");
        assert_eq!(v["auth"]["lease_duration"], 7200);
        assert_eq!(v["auth"]["orphan"], true);
        let made = v["auth"]["client_token"].as_str().unwrap().to_string();
        let (_, v) = s
            .call("GET", "auth/token/lookup-self", Some(&made), None)
            .await;
        assert_eq!(v["data"]["path"], "auth/token/create/ci/builds");
        assert_eq!(v["data"]["period"], 7200);
        // Outside the role: refused, clearly.
        for (body, why) in [
            (json!({"policies": ["admin"]}), "disallowed"),
            (json!({"policies": ["ci-maker"]}), "allowed policies"),
            (json!({"entity_alias": "alice"}), "entity_alias"),
        ] {
            let (st, v) = s
                .call("POST", "auth/token/create/ci", Some(&maker), Some(body))
                .await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
            assert!(v["errors"][0].as_str().unwrap().contains(why), "{v}");
        }
        // A role's token_bound_cidrs bound what the creator asks: narrower
        // is taken; wider, or none, is not.
        let (st, v) = s
            .root(
                "POST",
                "auth/token/roles/ci-net",
                Some(json!({"allowed_policies": "deploy", "token_bound_cidrs": "10.0.0.0/8"})),
            )
            .await;
        assert!(st.is_success(), "{v}");
        for (body, want) in [
            (json!({}), "10.0.0.0/8"),
            (json!({"bound_cidrs": ""}), "10.0.0.0/8"),
            (json!({"bound_cidrs": []}), "10.0.0.0/8"),
            (json!({"bound_cidrs": "10.1.0.0/16"}), "10.1.0.0/16"),
        ] {
            let (st, v) = s
                .call(
                    "POST",
                    "auth/token/create/ci-net",
                    Some(&maker),
                    Some(body.clone()),
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{body}: {v}");
            let made = v["auth"]["client_token"].as_str().unwrap();
            let (_, v) = s
                .root("POST", "auth/token/lookup", Some(json!({ "token": made })))
                .await;
            assert_eq!(v["data"]["bound_cidrs"], json!([want]), "{body}: {v}");
        }
        let (st, v) = s
            .call(
                "POST",
                "auth/token/create/ci-net",
                Some(&maker),
                Some(json!({"bound_cidrs": "0.0.0.0/0"})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["errors"][0]
                .as_str()
                .unwrap()
                .contains("token_bound_cidrs"),
            "{v}"
        );
        // The same token cannot make an orphan or periodic token outside it.
        let (st, _) = s
            .call(
                "POST",
                "auth/token/create",
                Some(&maker),
                Some(json!({"period": "1h"})),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        let (st, v) = s
            .root(
                "POST",
                "auth/token/roles/ci",
                Some(json!({"allowed_entity_aliases": ["x"]})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        let (st, v) = s
            .root("POST", "auth/token/create/nope", Some(json!({})))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    }
);

on_both_backends!(
    the_databases_copy_of_the_audit_log_is_the_file_line_for_line,
    |s| async move {
        // Text a copy must carry exactly: quotes, backslashes, a tab, and
        // characters beyond ASCII, in paths and error messages (kept in
        // clear) and in a body (HMAC'd).
        for path in [
            "sys/policies/acl/caf%C3%A9",
            "sys/policies/acl/a%5Cb%22c",
            "no-such-mount/x%09y",
        ] {
            s.root("GET", path, None).await;
        }
        s.root(
            "POST",
            "sys/policies/acl/quoted",
            Some(json!({"policy": "path \"a\\\\b\" {\tcapabilities = [\"read\"] } # café"})),
        )
        .await;
        // More lines than one batch of the copy takes.
        for _ in 0..150 {
            s.root("GET", "sys/policies/acl/quoted", None).await;
        }
        let text = s.audit_text();
        assert!(
            text.contains("café") && text.contains(r#"a\\b\""#),
            "{text}"
        );
        let rows = s.core.storage.audit_events(0, 10_000).await.unwrap();
        let copied: Vec<&str> = rows.iter().map(|(_, line)| line.as_str()).collect();
        let written: Vec<&str> = text.lines().collect();
        assert!(written.len() > 300, "{} lines", written.len());
        assert_eq!(copied, written);
    }
);
