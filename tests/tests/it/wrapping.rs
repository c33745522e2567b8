//! Response wrapping: `X-Vault-Wrap-TTL` on a request gives a single-use
//! wrapping token instead of the response; `sys/wrapping/unwrap`, `lookup`,
//! `rewrap` and `wrap`, on both storage backends.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use gatepass_tests::inproc::{Backend, Server, BACKENDS, ROOT};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const INVALID: &str = "wrapping token is not valid or does not exist";

/// One request with `X-Vault-Wrap-TTL: wrap_ttl`.
async fn call_wrapped(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    wrap_ttl: &str,
) -> (StatusCode, Value) {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("/v1/{path}"))
        .header("X-Vault-Wrap-TTL", wrap_ttl);
    if let Some(t) = token {
        b = b.header("X-Vault-Token", t);
    }
    let raw = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = b.body(Body::from(raw)).unwrap();
    req.extensions_mut().insert(ConnectInfo(s.client));
    let resp = gatepass_server::app(s.core.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// An AppRole role `ci` whose tokens have the `default` policy; its role ID.
async fn approle(s: &Server) -> String {
    let (st, v) = s
        .root(
            "POST",
            "auth/approle/role/ci",
            Some(json!({"token_ttl": "10m"})),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let (_, v) = s.root("GET", "auth/approle/role/ci/role-id", None).await;
    v["data"]["role_id"].as_str().unwrap().to_string()
}

/// Every file under the server's data directory (the SQLite database, its
/// WAL, the audit file), as bytes.
fn data_files(s: &Server) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(s.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.path().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_secret_id_unwraps_once_and_is_never_stored_or_logged_in_clear() {
    for backend in BACKENDS {
        let s = Server::start(backend).await;
        let role_id = approle(&s).await;

        // Wrapped: the answer holds a wrapping token and no secret.
        let (st, v) = call_wrapped(
            &s,
            "POST",
            "auth/approle/role/ci/secret-id",
            Some(ROOT),
            None,
            "5m",
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["data"], Value::Null, "{v}");
        assert_eq!(v["auth"], Value::Null, "{v}");
        let info = &v["wrap_info"];
        assert_eq!(info["ttl"], 300, "{v}");
        assert_eq!(info["creation_path"], "auth/approle/role/ci/secret-id");
        assert!(info["creation_time"].as_str().unwrap().starts_with("2026-"));
        let wrapping_token = info["token"].as_str().unwrap().to_string();
        let wrapping_accessor = info["accessor"].as_str().unwrap().to_string();
        let wrapped_accessor = info["wrapped_accessor"].as_str().unwrap().to_string();
        assert!(!v.to_string().contains("secret_id\""), "{v}");

        // Lookup needs no other token and does not use the wrapping token.
        let (st, v) = s
            .call(
                "POST",
                "sys/wrapping/lookup",
                None,
                Some(json!({"token": wrapping_token})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["data"]["creation_ttl"], 300);
        assert_eq!(v["data"]["creation_path"], "auth/approle/role/ci/secret-id");

        // Unwrapped with the wrapping token as the request's token: the
        // original response, whose secret ID logs in.
        let (st, v) = s
            .call("POST", "sys/wrapping/unwrap", Some(&wrapping_token), None)
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["data"]["secret_id_accessor"], json!(wrapped_accessor));
        assert_eq!(v["wrap_info"], Value::Null);
        let secret_id = v["data"]["secret_id"].as_str().unwrap().to_string();
        let (st, v) = s
            .call(
                "POST",
                "auth/approle/login",
                None,
                Some(json!({"role_id": role_id, "secret_id": secret_id})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");

        // A second unwrap, either way, fails as Vault's does.
        let (st, v) = s
            .call("POST", "sys/wrapping/unwrap", Some(&wrapping_token), None)
            .await;
        assert_eq!(
            (st, v),
            (StatusCode::BAD_REQUEST, json!({"errors": [INVALID]}))
        );
        let (st, v) = s
            .root(
                "POST",
                "sys/wrapping/unwrap",
                Some(json!({"token": wrapping_token})),
            )
            .await;
        assert_eq!(
            (st, v),
            (StatusCode::BAD_REQUEST, json!({"errors": [INVALID]}))
        );
        let (st, _) = s
            .call(
                "POST",
                "sys/wrapping/lookup",
                None,
                Some(json!({"token": wrapping_token})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);

        // The audit log has the wrap and the unwrap, with the wrapping
        // token HMAC'd; neither it nor the secret ID is in any file in
        // clear (on SQLite that includes the database and its WAL).
        let audit = s.audit_text();
        let wrap_event = audit
            .lines()
            .find(|l| l.contains("\"wrap_info\""))
            .expect("wrap audited");
        assert!(wrap_event.contains("\"creation_path\":\"auth/approle/role/ci/secret-id\""));
        assert!(wrap_event.contains("hmac-sha256:"));
        assert!(audit
            .lines()
            .any(|l| l.contains("\"path\":\"sys/wrapping/unwrap\"")
                && l.contains("\"type\":\"response\"")
                && l.contains("\"secret_id\":\"hmac-sha256:")));
        // The database's copy of the audit log, on either backend (read
        // after every queued line is written, so also in the SQLite file).
        let copy = s.core.storage.audit_events(0, 100_000).await.unwrap();
        assert!(copy.iter().any(|(_, l)| l.contains("\"wrap_info\"")));
        for (_, line) in &copy {
            for secret in [&secret_id, &wrapping_token, &wrapping_accessor] {
                assert!(!line.contains(secret.as_str()), "{secret} in clear: {line}");
            }
        }
        for (name, bytes) in data_files(&s) {
            for secret in [&secret_id, &wrapping_token, &wrapping_accessor] {
                assert!(!contains(&bytes, secret), "{secret} in clear in {name}");
            }
        }
        if matches!(backend, Backend::Sqlite) {
            assert!(data_files(&s).iter().any(|(n, _)| n.ends_with("gp.db")));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_wrapping_tokens_fail_and_go_with_their_response() {
    for backend in BACKENDS {
        let s = Server::start(backend).await;
        let (st, v) = call_wrapped(
            &s,
            "POST",
            "sys/wrapping/wrap",
            Some(ROOT),
            Some(json!({"k": "v"})),
            "60",
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let token = v["wrap_info"]["token"].as_str().unwrap().to_string();
        s.clock.advance(60);
        let (st, v) = s
            .call("POST", "sys/wrapping/unwrap", Some(&token), None)
            .await;
        assert_eq!(
            (st, v),
            (StatusCode::BAD_REQUEST, json!({"errors": [INVALID]}))
        );

        // One not unwrapped is deleted by the lease sweeper when it expires.
        let (_, v) = call_wrapped(
            &s,
            "POST",
            "sys/wrapping/wrap",
            Some(ROOT),
            Some(json!({"k": "v"})),
            "60",
        )
        .await;
        let token = v["wrap_info"]["token"].as_str().unwrap().to_string();
        let stored = || async {
            s.core
                .storage
                .keys_with_prefix("wrapping/")
                .await
                .unwrap()
                .len()
        };
        assert_eq!(stored().await, 1);
        s.clock.advance(61);
        let now = s.core.clock.now();
        gatepass_server::leases::sweep(&s.core, now, 100)
            .await
            .unwrap();
        assert_eq!(stored().await, 0);
        let (st, _) = s
            .call(
                "POST",
                "sys/wrapping/lookup",
                None,
                Some(json!({"token": token})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrap_arbitrary_data_rewrap_and_unwrap_by_another_token() {
    let s = Server::start(Backend::Sqlite).await;
    // Any token with the `default` policy may wrap, look up and unwrap, as
    // Vault's default policy allows.
    let alice = s
        .token_with_policy("nothing", r#"path "x" { capabilities = ["read"] }"#)
        .await;
    let bob = s
        .token_with_policy("nothing", r#"path "x" { capabilities = ["read"] }"#)
        .await;

    let (st, v) = s
        .call(
            "POST",
            "sys/wrapping/wrap",
            Some(&alice),
            Some(json!({"a": 1})),
        )
        .await;
    assert_eq!(
        (st, v),
        (
            StatusCode::BAD_REQUEST,
            json!({"errors": ["endpoint requires response wrapping to be used"]})
        )
    );
    let data = json!({"password": "hunter2-wrapped", "n": 3, "list": ["x"]});
    let (st, v) = call_wrapped(
        &s,
        "POST",
        "sys/wrapping/wrap",
        Some(&alice),
        Some(data.clone()),
        "1h",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["warnings"], Value::Null, "{v}");
    assert_eq!(v["wrap_info"]["creation_path"], "sys/wrapping/wrap");
    assert_eq!(v["wrap_info"]["ttl"], 3600);
    assert!(v["wrap_info"].get("wrapped_accessor").is_none(), "{v}");
    let first = v["wrap_info"]["token"].as_str().unwrap().to_string();

    // Rewrap (root: not in the default policy) gives a new token with the
    // same TTL and path; the old one is used up.
    let (st, v) = s
        .call(
            "POST",
            "sys/wrapping/rewrap",
            Some(&bob),
            Some(json!({"token": first})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    s.clock.advance(10);
    let (st, v) = s
        .root("POST", "sys/wrapping/rewrap", Some(json!({"token": first})))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["wrap_info"]["creation_path"], "sys/wrapping/wrap");
    assert_eq!(v["wrap_info"]["ttl"], 3600);
    let second = v["wrap_info"]["token"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    let (st, _) = s
        .call("POST", "sys/wrapping/unwrap", Some(&first), None)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Bob unwraps with the token in the body: Alice's data, as written.
    let (st, v) = s
        .call(
            "POST",
            "sys/wrapping/unwrap",
            Some(&bob),
            Some(json!({"token": second})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"], data);
    assert!(!s.audit_text().contains("hunter2-wrapped"));

    // A token without the default policy may not wrap.
    let (st, v) = s
        .root(
            "POST",
            "auth/token/create",
            Some(json!({"policies": ["nothing"], "no_default_policy": true})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let bare = v["auth"]["client_token"].as_str().unwrap().to_string();
    let (st, _) = call_wrapped(
        &s,
        "POST",
        "sys/wrapping/wrap",
        Some(&bare),
        Some(json!({"a": 1})),
        "1m",
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_tokens_errors_and_bad_headers() {
    let s = Server::start(Backend::Sqlite).await;

    // A token's creation, wrapped: wrapped_accessor is the new token's.
    let (st, v) = call_wrapped(
        &s,
        "POST",
        "auth/token/create",
        Some(ROOT),
        Some(json!({"policies": ["default"]})),
        "2m",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["auth"], Value::Null);
    let wrapped_accessor = v["wrap_info"]["wrapped_accessor"]
        .as_str()
        .unwrap()
        .to_string();
    let token = v["wrap_info"]["token"].as_str().unwrap().to_string();
    let (st, v) = s
        .call("POST", "sys/wrapping/unwrap", Some(&token), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["auth"]["accessor"], json!(wrapped_accessor));
    let child = v["auth"]["client_token"].as_str().unwrap();
    let (st, _) = s
        .call("GET", "auth/token/lookup-self", Some(child), None)
        .await;
    assert_eq!(st, StatusCode::OK);

    // Errors and empty answers are not wrapped; no wrapping token is made.
    let (st, v) = call_wrapped(&s, "GET", "sys/policies/acl/none", Some(ROOT), None, "5m").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    let (st, v) = call_wrapped(&s, "GET", "sys/mounts", None, None, "5m").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert!(s
        .core
        .storage
        .keys_with_prefix("wrapping/")
        .await
        .unwrap()
        .is_empty());

    // A wrap TTL of 0 asks for no wrapping; bad ones are refused before
    // anything is done.
    let (st, v) = call_wrapped(&s, "GET", "sys/mounts", Some(ROOT), None, "0").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["wrap_info"], Value::Null);
    assert!(v["data"].is_object());
    for bad in ["-5", "soon", "5 m"] {
        let (st, v) = call_wrapped(&s, "POST", "auth/token/create", Some(ROOT), None, bad).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
        let msg = v["errors"][0].as_str().unwrap();
        assert!(
            msg.starts_with("error parsing X-Vault-Wrap-TTL header"),
            "{msg}"
        );
    }
    let (_, v) = s.root("LIST", "auth/token/accessors", None).await;
    assert_eq!(v["data"]["keys"].as_array().unwrap().len(), 2, "{v}");

    // A list is wrapped under its path with Vault's trailing slash; the
    // wrapped answer has no request ID of its own, the unwrapped one does.
    let (st, v) = call_wrapped(&s, "LIST", "auth/token/accessors", Some(ROOT), None, "1m").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["request_id"], "");
    assert_eq!(v["wrap_info"]["creation_path"], "auth/token/accessors/");
    let token = v["wrap_info"]["token"].as_str().unwrap().to_string();
    let (_, v) = s
        .call("POST", "sys/wrapping/unwrap", Some(&token), None)
        .await;
    assert_eq!(v["data"]["keys"].as_array().unwrap().len(), 2, "{v}");
    assert!(!v["request_id"].as_str().unwrap().is_empty());

    // Without any token: 403, as in Vault.
    for path in ["sys/wrapping/unwrap", "sys/wrapping/lookup"] {
        let (st, _) = s.call("POST", path, None, None).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{path}");
    }

    // A regular token is not a wrapping token.
    let (st, v) = s
        .root("POST", "sys/wrapping/unwrap", Some(json!({"token": ROOT})))
        .await;
    assert_eq!(
        (st, v),
        (StatusCode::BAD_REQUEST, json!({"errors": [INVALID]}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_unwrap_once_between_them() {
    let (a, b) = Server::start_pair().await;
    let (st, v) = call_wrapped(
        &a,
        "POST",
        "sys/wrapping/wrap",
        Some(ROOT),
        Some(json!({"k": "v"})),
        "5m",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let token = v["wrap_info"]["token"].as_str().unwrap().to_string();
    let (ra, rb) = tokio::join!(
        a.call("POST", "sys/wrapping/unwrap", Some(&token), None),
        b.call("POST", "sys/wrapping/unwrap", Some(&token), None),
    );
    let mut statuses = [ra.0, rb.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::BAD_REQUEST],
        "{ra:?} {rb:?}"
    );
    let got = if ra.0 == StatusCode::OK { ra.1 } else { rb.1 };
    assert_eq!(got["data"], json!({"k": "v"}));
}

/// `gatepass` as the admin (root token in the environment), with a
/// private HOME.
fn cli(
    server: &gatepass_tests::DevServer,
    home: &std::path::Path,
    args: &[&str],
) -> (i32, String, String) {
    let mut c = std::process::Command::new(gatepass_tests::bin("gatepass"));
    for v in gatepass_tests::CLI_AMBIENT_ENV {
        c.env_remove(v);
    }
    c.env_remove("VAULT_WRAP_TTL")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .envs(server.cli_env())
        .args(args);
    gatepass_tests::run(&mut c)
}

#[test]
fn cli_write_with_wrap_ttl_then_unwrap_once() {
    let server = gatepass_tests::DevServer::start();
    let home = tempfile::tempdir().unwrap();
    let ok = |args: &[&str]| {
        let (code, out, err) = cli(&server, home.path(), args);
        assert_eq!(code, 0, "{args:?}\nstdout: {out}\nstderr: {err}");
        out
    };
    ok(&["write", "auth/approle/role/ci", "token_ttl=10m"]);

    // The table shows the wrapping, as Vault's CLI does, and no secret.
    let table = ok(&[
        "write",
        "-wrap-ttl=5m",
        "-f",
        "auth/approle/role/ci/secret-id",
    ]);
    assert!(table.contains("wrapping_token:"), "{table}");
    assert!(
        table.contains("wrapping_token_creation_path:    auth/approle/role/ci/secret-id"),
        "{table}"
    );
    assert!(!table.contains("secret_id "), "{table}");

    let token = ok(&[
        "write",
        "--wrap-ttl",
        "5m",
        "-field=wrapping_token",
        "auth/approle/role/ci/secret-id",
    ]);
    let token = token.trim();
    assert!(token.starts_with("gps."), "{token}");
    let secret_id = ok(&["unwrap", "-field=secret_id", token]);
    assert_eq!(secret_id.trim().len(), 36, "{secret_id}");
    let (code, _, err) = cli(&server, home.path(), &["unwrap", token]);
    assert_ne!(code, 0);
    assert!(
        err.contains("wrapping token is not valid or does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn a_policys_wrapping_ttls_make_wrapping_mandatory_within_them() {
    let s = Server::start(Backend::Sqlite).await;
    approle(&s).await;
    // Secret IDs only wrapped, for 1 to 10 minutes.
    let token = s
        .token_with_policy(
            "ci-issuer",
            r#"path "auth/approle/role/ci/secret-id" {
  capabilities = ["update"]
  min_wrapping_ttl = "1m"
  max_wrapping_ttl = "10m"
}
"#,
        )
        .await;
    let (st, v) = s
        .call(
            "POST",
            "auth/approle/role/ci/secret-id",
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "unwrapped: {v}");
    for (ttl, want) in [
        ("30s", StatusCode::FORBIDDEN),
        ("11m", StatusCode::FORBIDDEN),
        ("1m", StatusCode::OK),
        ("10m", StatusCode::OK),
    ] {
        let (st, v) = call_wrapped(
            &s,
            "POST",
            "auth/approle/role/ci/secret-id",
            Some(&token),
            None,
            ttl,
        )
        .await;
        assert_eq!(st, want, "{ttl}: {v}");
        if st == StatusCode::OK {
            assert!(v["wrap_info"]["token"].is_string(), "{v}");
            assert_eq!(v["data"], Value::Null, "{v}");
        }
    }
    // Root is not bound by policies.
    let (st, v) = s
        .root("POST", "auth/approle/role/ci/secret-id", Some(json!({})))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

/// An explicit deny of a wrapping path overrides what Vault's default
/// policy grants there.
#[tokio::test]
async fn a_deny_of_a_wrapping_path_beats_the_default_policys_grant() {
    let s = Server::start(Backend::Sqlite).await;
    let plain = s
        .token_with_policy("other", r#"path "secret/x" { capabilities = ["read"] }"#)
        .await;
    let denied = s
        .token_with_policy(
            "nowrap",
            r#"path "sys/wrapping/wrap" { capabilities = ["deny"] }
               path "sys/wrapping/unwrap" { capabilities = ["deny"] }"#,
        )
        .await;
    let data = Some(json!({"a": "b"}));
    let (st, v) = call_wrapped(
        &s,
        "POST",
        "sys/wrapping/wrap",
        Some(&plain),
        data.clone(),
        "5m",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "the default policy's grant: {v}");
    let wrapped = v["wrap_info"]["token"].as_str().unwrap().to_string();
    let (st, v) = call_wrapped(&s, "POST", "sys/wrapping/wrap", Some(&denied), data, "5m").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "wrap: {v}");
    let (st, v) = s
        .call(
            "POST",
            "sys/wrapping/unwrap",
            Some(&denied),
            Some(json!({ "token": wrapped })),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "unwrap: {v}");
    let (st, v) = s
        .call(
            "POST",
            "sys/wrapping/unwrap",
            Some(&plain),
            Some(json!({ "token": wrapped })),
        )
        .await;
    assert_eq!((st, &v["data"]["a"]), (StatusCode::OK, &json!("b")), "{v}");
}
