//! Request paths through the real HTTP layer (in-process): one canonical
//! path is checked by the ACL and dispatched by the router, so no spelling
//! of a denied path gets past a deny rule; names that are path segments
//! cannot be `.` or `..`; listing the top of the lease tree needs sudo.

use axum::http::StatusCode;
use gatepass_tests::inproc::{Backend, Server};
use gatepass_tests::ssh::keypair;
use serde_json::{json, Value};

const SIGNER: &str = r#"
path "ssh/*" { capabilities = ["read", "update", "list"] }
path "ssh/sign/admin" { capabilities = ["deny"] }
"#;

async fn root_ok(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (st, v) = s.root(method, path, Some(body)).await;
    assert!(st.is_success(), "{method} {path}: {st} {v}");
    v
}

async fn sign(s: &Server, token: &str, path: &str, pk: &str) -> (StatusCode, Value) {
    s.call("POST", path, Some(token), Some(json!({ "public_key": pk })))
        .await
}

#[tokio::test]
async fn a_deny_rule_holds_for_every_spelling_of_its_path() {
    let s = Server::start(Backend::Sqlite).await;
    root_ok(&s, "POST", "ssh/config/ca", json!({})).await;
    for role in ["admin", "dev"] {
        root_ok(
            &s,
            "POST",
            &format!("ssh/roles/{role}"),
            json!({"key_type": "ca", "allow_user_certificates": true, "default_user": "alice", "allowed_users": "alice"}),
        )
        .await;
    }
    let t = s.token_with_policy("signer", SIGNER).await;
    let pk = keypair(s.dir.path(), "user", "ed25519", None).1;

    // The allowed role signs; the denied one does not.
    let (st, v) = sign(&s, &t, "ssh/sign/dev", &pk).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["data"]["signed_key"].is_string(), "{v}");
    let (st, v) = sign(&s, &t, "ssh/sign/admin", &pk).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");

    let bad_path = StatusCode::BAD_REQUEST;
    let denied = StatusCode::FORBIDDEN;
    for (path, want) in [
        ("ssh//sign/admin", bad_path),
        ("ssh/./sign/admin", bad_path),
        ("ssh/sign/./admin", bad_path),
        ("ssh/x/../sign/admin", bad_path),
        ("ssh%2Fsign%2Fadmin", bad_path),
        ("ssh/sign%2Fadmin", bad_path),
        ("ssh/sign%2fadmin", bad_path),
        ("ssh/%2e%2e/ssh/sign/admin", bad_path),
        ("ssh/sign/%2561dmin", bad_path),
        ("ssh/sign/admin//", bad_path),
        ("ssh/sign/%61dmin", denied),
        ("ssh/sign/%61%64%6D%69%6E", denied),
        ("ssh/sign/admin/", denied),
    ] {
        let (st, v) = sign(&s, &t, path, &pk).await;
        assert_eq!(st, want, "POST {path}: {v}");
        assert!(v.get("data").is_none(), "POST {path} answered data: {v}");
        if want == bad_path {
            let msg = v["errors"][0].as_str().unwrap_or_default();
            assert!(msg.starts_with("invalid request path"), "{path}: {v}");
            // Refused as a path, not by the ACL: root is refused alike.
            let (st, _) = s
                .root("POST", path, Some(json!({ "public_key": pk })))
                .await;
            assert_eq!(st, bad_path, "root POST {path}");
        }
    }

    // Lifting the deny takes effect at once (the compiled policy is
    // replaced when its text changes).
    let (st, v) = s
        .root(
            "POST",
            "sys/policies/acl/signer",
            Some(json!({"policy": r#"path "ssh/*" { capabilities = ["update"] }"#})),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let (st, v) = sign(&s, &t, "ssh/sign/%61dmin", &pk).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn dot_names_are_refused_in_paths_and_fields() {
    let s = Server::start(Backend::Sqlite).await;
    root_ok(&s, "POST", "ssh/config/ca", json!({})).await;
    let role = json!({"key_type": "ca", "allow_user_certificates": true});
    let user = json!({"password": "pw-123456", "token_policies": "default"});
    for dot in [".", ".."] {
        for (path, body) in [
            (format!("ssh/roles/{dot}"), role.clone()),
            (format!("auth/userpass/users/{dot}"), user.clone()),
            (format!("auth/approle/role/{dot}"), json!({})),
            (
                format!("sys/policies/acl/{dot}"),
                json!({"policy": r#"path "x" { capabilities = ["read"] }"#}),
            ),
            (
                format!("sys/policy/{dot}"),
                json!({"policy": "path \"x\" {}"}),
            ),
            (format!("sys/mounts/{dot}"), json!({"type": "ssh"})),
        ] {
            let (st, v) = s.root("POST", &path, Some(body)).await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "POST {path}: {v}");
        }
        // The same names given in body fields.
        for (path, body) in [
            ("ssh/issuer/default", json!({ "issuer_name": dot })),
            ("ssh/roles/r", json!({"key_type": "ca", "issuer_ref": dot})),
            ("auth/token/create", json!({ "policies": [dot] })),
        ] {
            let (st, v) = s.root("POST", path, Some(body)).await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "POST {path} with {dot:?}: {v}");
        }
    }
    // Names merely starting with dots are still names.
    root_ok(&s, "POST", "ssh/roles/..r", role).await;
    let (st, v) = s.root("GET", "ssh/roles/..r", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn listing_the_top_of_the_lease_tree_needs_sudo() {
    let s = Server::start(Backend::Sqlite).await;
    let t = s
        .token_with_policy(
            "leases",
            r#"path "sys/leases/*" { capabilities = ["read", "update", "list"] }"#,
        )
        .await;
    for path in [
        "sys/leases/lookup",
        "sys/leases/lookup/",
        "sys/leases/lookup/ssh/",
    ] {
        let (st, v) = s.call("LIST", path, Some(&t), None).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "LIST {path}: {v}");
        let (st, v) = s
            .call("GET", &format!("{path}?list=true"), Some(&t), None)
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "GET {path}?list=true: {v}");
    }
    // Looking up one lease by ID is not a listing and needs no sudo.
    let (st, v) = s
        .call(
            "POST",
            "sys/leases/lookup",
            Some(&t),
            Some(json!({"lease_id": "ssh/creds/x/none"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["errors"][0], "invalid lease", "{v}");
    // With sudo the listing is allowed (empty: 404, as in Vault).
    let sudo = s
        .token_with_policy(
            "leases-sudo",
            r#"path "sys/leases/*" { capabilities = ["list", "sudo"] }"#,
        )
        .await;
    for path in ["sys/leases/lookup", "sys/leases/lookup/"] {
        let (st, v) = s.call("LIST", path, Some(&sudo), None).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "LIST {path}: {v}");
    }
}
