//! PAM sessions through the API (in-process, manual clock): gateways
//! enroll and follow their sessions, administrators set up resources and
//! accounts, users get access with a duration and a certificate of the
//! gateway session CA, the gateway opens, ends and loses sessions, and
//! everything is in the audit log without the account's secrets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use gatepass_tests::inproc::{Backend, Server, BACKENDS, T0};
use gatepass_tests::ssh::{describe_cert, keypair};
use serde_json::{json, Value};

const PASSWORD: &str = "Tr0ub4dor&3-target-pw";

async fn ok(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (st, v) = s.root(method, path, Some(body)).await;
    assert!(st.is_success(), "{method} {path}: {st} {v}");
    v
}

/// A gateway enrolled with a one-use join token; returns its token.
async fn enroll_gateway(s: &Server, name: &str) -> String {
    let v = ok(s, "POST", "pam/gateways/join-tokens", json!({"ttl": "10m"})).await;
    let join = v["data"]["join_token"].as_str().unwrap().to_string();
    let (_, host_pub) = keypair(s.dir.path(), &format!("{name}-hostkey"), "ed25519", None);
    let (st, v) = s
        .call(
            "POST",
            "pam/gateways/enroll",
            None,
            Some(json!({"join_token": join, "name": name, "address": "127.0.0.1:2222", "host_keys": [host_pub]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["name"], name);
    assert!(v["data"]["session_ca_keys"][0]
        .as_str()
        .unwrap()
        .starts_with("ssh-ed25519 "));
    // The join token was for one gateway.
    let (st, _) = s
        .call(
            "POST",
            "pam/gateways/enroll",
            None,
            Some(json!({"join_token": join, "name": "other", "address": "127.0.0.1:2223"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    v["data"]["gateway_token"].as_str().unwrap().to_string()
}

struct Setup {
    gw: String,
    private_key: String,
    /// A user token allowed access to every account of `web`.
    user: String,
}

/// Gateway `gw1`; resource `web` behind it with a pinned host key; accounts
/// `root` (password, at most 1h), `deploy` (key) and `ops` (certificate of
/// the `ssh` mount's role `targets`).
async fn setup(s: &Server) -> Setup {
    let gw = enroll_gateway(s, "gw1").await;
    let (_, target_pub) = keypair(s.dir.path(), "target-hostkey", "ed25519", None);
    ok(
        s,
        "POST",
        "pam/resources/web",
        json!({"host": "10.0.0.7", "gateway": "gw1", "known_hosts": [format!("web,10.0.0.7 {target_pub}")]}),
    )
    .await;
    ok(
        s,
        "POST",
        "pam/resources/web/accounts/root",
        json!({"auth_method": "password", "username": "root", "password": PASSWORD, "max_duration": "1h"}),
    )
    .await;
    let (key_path, _) = keypair(s.dir.path(), "deploy-key", "ed25519", None);
    let private_key = std::fs::read_to_string(key_path).unwrap();
    ok(
        s,
        "POST",
        "pam/resources/web/accounts/deploy",
        json!({"auth_method": "key", "username": "deploy", "private_key": private_key, "max_duration": "4h", "allow_forwarding": true}),
    )
    .await;
    ok(s, "POST", "ssh/config/ca", json!({})).await;
    ok(
        s,
        "POST",
        "ssh/roles/targets",
        json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*", "max_ttl": "24h"}),
    )
    .await;
    ok(
        s,
        "POST",
        "pam/resources/web/accounts/ops",
        json!({"auth_method": "certificate", "username": "ops", "ca_mount": "ssh", "ca_role": "targets"}),
    )
    .await;
    let user = s
        .token_with_policy(
            "pam-web",
            r#"path "pam/resources/web/accounts/*" { capabilities = ["update"] }
path "pam/sessions/*" { capabilities = ["read"] }"#,
        )
        .await;
    Setup {
        gw,
        private_key,
        user,
    }
}

async fn access(s: &Server, token: &str, account: &str, body: Value) -> (StatusCode, Value) {
    s.call(
        "POST",
        &format!("pam/resources/web/accounts/{account}/access"),
        Some(token),
        Some(body),
    )
    .await
}

/// Every answer a token got, to grep for secrets.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn keep(&mut self, v: &Value) -> Value {
        self.0.push(v.to_string());
        v.clone()
    }

    fn assert_none_contains(&self, secret: &str) {
        for body in &self.0 {
            assert!(!body.contains(secret), "a secret is in an answer: {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_open_and_end_a_session() {
    for backend in BACKENDS {
        let s = Server::start(backend).await;
        let st = setup(&s).await;
        let mut seen = Seen::default();
        let (_, user_pub) = keypair(s.dir.path(), "alice", "ed25519", None);

        // The user asks for 10 minutes of root on web.
        let (code, v) = access(
            &s,
            &st.user,
            "root",
            json!({"duration": "10m", "public_key": user_pub}),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{backend:?}: {v}");
        let a = seen.keep(&v["data"]);
        let id = a["session_id"].as_str().unwrap().to_string();
        assert_eq!(a["gateway"], "127.0.0.1:2222");
        assert!(a["gateway_host_keys"][0]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519 "));
        assert_eq!(a["login"], "root");
        assert_eq!(a["expires_at_unix"], T0 + 600);
        assert_eq!(a["expires_at"], "2026-01-01T00:10:00Z");
        let cert = describe_cert(s.dir.path(), a["signed_key"].as_str().unwrap());
        assert!(cert.contains(&format!("Key ID: \"{id}\"")), "{cert}");
        assert!(
            cert.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"),
            "{cert}"
        );
        assert!(
            cert.contains("Principals: \n                root\n"),
            "{cert}"
        );
        assert!(cert.contains("to 2026-01-01T00:10:00"), "{cert}");
        assert!(cert.contains("Critical Options: (none)"), "{cert}");
        assert!(cert.contains("permit-pty"), "{cert}");
        assert!(!cert.contains("permit-port-forwarding"), "{cert}");

        // The session is pending, in the user's name.
        let (code, v) = s
            .call("GET", &format!("pam/sessions/{id}"), Some(&st.user), None)
            .await;
        assert_eq!(code, StatusCode::OK, "{v}");
        let info = seen.keep(&v["data"]);
        assert_eq!(info["state"], "pending");
        assert_eq!(info["user"], "token");
        assert_eq!(info["resource"], "web");
        assert_eq!(info["account"], "root");
        assert_eq!(info["username"], "root");
        assert_eq!(info["gateway"], "gw1");

        // Longer than the account allows: refused.
        let (code, v) = access(
            &s,
            &st.user,
            "root",
            json!({"duration": "2h", "public_key": user_pub}),
        )
        .await;
        seen.keep(&v);
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(
            v["errors"][0]
                .as_str()
                .unwrap()
                .contains("max_duration of 1h"),
            "{v}"
        );

        // The gateway follows its open sessions.
        let (code, v) = s
            .call("GET", "pam/gateway/self/sessions", Some(&st.gw), None)
            .await;
        assert_eq!(code, StatusCode::OK, "{v}");
        assert_eq!(
            v["data"]["sessions"],
            json!([{"session_id": id, "expires_at": T0 + 600, "state": "pending"}])
        );
        assert!(v["data"]["index"].as_u64().unwrap() > 0);

        // Neither the user nor another gateway can open it.
        let open = format!("pam/gateway/self/sessions/{id}/open");
        let (code, v) = s.call("POST", &open, Some(&st.user), Some(json!({}))).await;
        seen.keep(&v);
        assert_eq!(code, StatusCode::FORBIDDEN);
        let other = enroll_gateway(&s, "gw2").await;
        let (code, v) = s.call("POST", &open, Some(&other), Some(json!({}))).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{v}");
        // A gateway token reaches nothing but its own paths.
        let (code, _) = s.call("GET", "pam/resources/web", Some(&st.gw), None).await;
        assert_eq!(code, StatusCode::FORBIDDEN);

        // Its gateway opens it once: the password, and the session is active.
        let (code, v) = s.call("POST", &open, Some(&st.gw), Some(json!({}))).await;
        assert_eq!(code, StatusCode::OK, "{v}");
        let g = &v["data"];
        assert_eq!(
            g["credential"],
            json!({"auth_method": "password", "password": PASSWORD})
        );
        assert_eq!(g["host"], "10.0.0.7");
        assert_eq!(g["port"], 22);
        assert_eq!(g["username"], "root");
        assert_eq!(g["host_key_trust"]["kind"], "pinned");
        assert_eq!(g["expires_at"], T0 + 600);
        let (code, _) = s.call("POST", &open, Some(&st.gw), Some(json!({}))).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let (_, v) = s
            .call("GET", &format!("pam/sessions/{id}"), Some(&st.user), None)
            .await;
        let info = seen.keep(&v["data"]);
        assert_eq!(info["state"], "active");
        assert!(info["started_at"].is_string());

        // The user closes the connection; the gateway reports it.
        s.clock.advance(60);
        let (code, v) = s
            .call(
                "POST",
                &format!("pam/gateway/self/sessions/{id}/end"),
                Some(&st.gw),
                Some(json!({"reason": "closed"})),
            )
            .await;
        assert_eq!(code, StatusCode::NO_CONTENT, "{v}");
        let (_, v) = s
            .call("GET", &format!("pam/sessions/{id}"), Some(&st.user), None)
            .await;
        let info = seen.keep(&v["data"]);
        assert_eq!(info["state"], "ended");
        assert_eq!(info["end_reason"], "closed");
        assert_eq!(info["ended_at"], "2026-01-01T00:01:00Z");
        let (code, _) = s.call("POST", &open, Some(&st.gw), Some(json!({}))).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let (_, v) = s
            .call("GET", "pam/gateway/self/sessions", Some(&st.gw), None)
            .await;
        assert_eq!(v["data"]["sessions"], json!([]));

        // The key account: its private key goes to the gateway only.
        let (code, v) = access(
            &s,
            &st.user,
            "deploy",
            json!({"duration": 600, "public_key": user_pub}),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{v}");
        let a = seen.keep(&v["data"]);
        let cert = describe_cert(s.dir.path(), a["signed_key"].as_str().unwrap());
        assert!(cert.contains("permit-port-forwarding"), "{cert}");
        let (_, v) = s
            .call(
                "POST",
                &format!(
                    "pam/gateway/self/sessions/{}/open",
                    a["session_id"].as_str().unwrap()
                ),
                Some(&st.gw),
                Some(json!({})),
            )
            .await;
        assert_eq!(v["data"]["credential"]["private_key"], st.private_key);
        assert_eq!(v["data"]["allow_forwarding"], true);

        // Admin reads and lists show no secret either.
        let mut admin = Seen::default();
        for path in [
            "pam/resources/web/accounts/root",
            "pam/resources/web/accounts/deploy",
            "pam/resources/web",
        ] {
            let (code, v) = s.root("GET", path, None).await;
            assert_eq!(code, StatusCode::OK, "{path}: {v}");
            admin.keep(&v);
        }
        let (_, v) = s.root("GET", "pam/resources/web/accounts/root", None).await;
        assert_eq!(v["data"]["has_secret"], true);
        assert_eq!(v["data"]["auth_method"], "password");
        for path in [
            "pam/resources/web/accounts",
            "pam/resources",
            "pam/sessions",
            "pam/gateways",
        ] {
            let (code, v) = s.root("LIST", path, None).await;
            assert_eq!(code, StatusCode::OK, "{path}: {v}");
            admin.keep(&v);
        }
        let key_body = st.private_key.lines().nth(1).unwrap();
        for secret in [PASSWORD, key_body] {
            seen.assert_none_contains(secret);
            admin.assert_none_contains(secret);
            assert!(
                !s.audit_text().contains(secret),
                "a secret is in the audit log"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_accounts_sign_the_gateway_key_until_the_end() {
    let s = Server::start(Backend::Sqlite).await;
    let st = setup(&s).await;
    let (_, user_pub) = keypair(s.dir.path(), "alice", "ed25519", None);
    let (_, v) = access(
        &s,
        &st.user,
        "ops",
        json!({"duration": "30m", "public_key": user_pub}),
    )
    .await;
    let id = v["data"]["session_id"].as_str().unwrap().to_string();
    let open = format!("pam/gateway/self/sessions/{id}/open");
    // Without the gateway's key there is nothing to sign.
    let (code, v) = s.call("POST", &open, Some(&st.gw), Some(json!({}))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    let (_, gw_pub) = keypair(s.dir.path(), "session-key", "ed25519", None);
    let (code, v) = s
        .call(
            "POST",
            &open,
            Some(&st.gw),
            Some(json!({"public_key": gw_pub})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["credential"]["auth_method"], "certificate");
    let cert = describe_cert(
        s.dir.path(),
        v["data"]["credential"]["signed_key"].as_str().unwrap(),
    );
    assert!(
        cert.contains("Principals: \n                ops\n"),
        "{cert}"
    );
    assert!(cert.contains("to 2026-01-01T00:30:00"), "{cert}");
}

/// A reusable session (an ssh config block: several connections while it
/// is open) outlives a connection that failed: the target refused one
/// login, or one connection to it broke. The failure is on record; the
/// other connections, and later ones, go on until the session ends.
#[tokio::test]
async fn a_failed_connection_does_not_end_a_reusable_session() {
    for backend in BACKENDS {
        let s = Server::start(backend).await;
        let st = setup(&s).await;
        let (_, user_pub) = keypair(s.dir.path(), "alice", "ed25519", None);
        let (code, v) = access(
            &s,
            &st.user,
            "root",
            json!({"duration": "10m", "public_key": user_pub, "reusable": true}),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{backend:?}: {v}");
        let id = v["data"]["session_id"].as_str().unwrap().to_string();
        let open = format!("pam/gateway/self/sessions/{id}/open");
        let end = format!("pam/gateway/self/sessions/{id}/end");
        let state = || async {
            let (_, v) = s
                .call("GET", &format!("pam/sessions/{id}"), Some(&st.user), None)
                .await;
            v["data"]["state"].as_str().unwrap_or_default().to_string()
        };
        // Two connections; the second cannot log in to the target.
        for _ in 0..2 {
            let (code, v) = s.call("POST", &open, Some(&st.gw), Some(json!({}))).await;
            assert_eq!(code, StatusCode::OK, "{v}");
        }
        s.clock.advance(5);
        let (code, v) = s
            .call(
                "POST",
                &end,
                Some(&st.gw),
                Some(json!({"reason": "failed", "detail": "cannot log in to the target: refused"})),
            )
            .await;
        assert_eq!(code, StatusCode::NO_CONTENT, "{v}");
        assert_eq!(state().await, "active", "{backend:?}");
        let (_, v) = s
            .call("GET", "pam/gateway/self/sessions", Some(&st.gw), None)
            .await;
        assert_eq!(v["data"]["sessions"][0]["session_id"], id.as_str(), "{v}");
        let audit = s.audit_text();
        assert!(
            audit.contains("connection_closed") && audit.contains("cannot log in to the target"),
            "{audit}"
        );
        assert!(audit.contains("access_refused"), "{audit}");
        // A later connection is let in, and the session ends at its end.
        let (code, v) = s.call("POST", &open, Some(&st.gw), Some(json!({}))).await;
        assert_eq!(code, StatusCode::OK, "{v}");
        s.clock.advance(600);
        let (code, _) = s
            .call(
                "POST",
                &end,
                Some(&st.gw),
                Some(json!({"reason": "expired"})),
            )
            .await;
        assert_eq!(code, StatusCode::NO_CONTENT);
        assert_eq!(state().await, "ended");

        // A session for one connection ends with its failure, as before.
        let (_, v) = access(
            &s,
            &st.user,
            "root",
            json!({"duration": "10m", "public_key": user_pub}),
        )
        .await;
        let once = v["data"]["session_id"].as_str().unwrap().to_string();
        let (code, _) = s
            .call(
                "POST",
                &format!("pam/gateway/self/sessions/{once}/open"),
                Some(&st.gw),
                Some(json!({})),
            )
            .await;
        assert_eq!(code, StatusCode::OK);
        s.call(
            "POST",
            &format!("pam/gateway/self/sessions/{once}/end"),
            Some(&st.gw),
            Some(json!({"reason": "failed", "detail": "the connection to the target was lost"})),
        )
        .await;
        let (_, v) = s
            .call("GET", &format!("pam/sessions/{once}"), Some(&st.user), None)
            .await;
        assert_eq!(v["data"]["state"], "ended", "{v}");
        assert_eq!(v["data"]["end_reason"], "failed", "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_wakes_the_gateway_at_once() {
    let s = Arc::new(Server::start(Backend::Sqlite).await);
    let st = setup(&s).await;
    let (_, user_pub) = keypair(s.dir.path(), "alice", "ed25519", None);
    let (_, v) = access(&s, &st.user, "root", json!({"public_key": user_pub})).await;
    let id = v["data"]["session_id"].as_str().unwrap().to_string();
    // Without a duration, the session lasts the account's max_duration.
    assert_eq!(v["data"]["expires_at_unix"], T0 + 3600);
    let (_, v) = s
        .call("GET", "pam/gateway/self/sessions", Some(&st.gw), None)
        .await;
    let index = v["data"]["index"].as_u64().unwrap();

    // The gateway waits on its list; an administrator terminates.
    let waiting = {
        let (s, gw) = (s.clone(), st.gw.clone());
        tokio::spawn(async move {
            let v = s
                .call(
                    "GET",
                    &format!("pam/gateway/self/sessions?index={index}&wait=30s"),
                    Some(&gw),
                    None,
                )
                .await;
            (v, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the long-poll answered without a change"
    );
    let terminated = Instant::now();
    let (code, v) = s
        .root(
            "POST",
            &format!("pam/sessions/{id}/terminate"),
            Some(json!({})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["state"], "ended");
    assert_eq!(v["data"]["end_reason"], "terminated");
    let ((code, v), answered) = waiting.await.unwrap();
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["sessions"], json!([]));
    assert!(answered.duration_since(terminated) < Duration::from_secs(1));
    // An ended session cannot be terminated again, nor opened.
    let (code, v) = s
        .root(
            "POST",
            &format!("pam/sessions/{id}/terminate"),
            Some(json!({})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        v["errors"][0].as_str().unwrap().contains("already ended"),
        "{v}"
    );
    let (code, _) = s
        .call(
            "POST",
            &format!("pam/gateway/self/sessions/{id}/open"),
            Some(&st.gw),
            Some(json!({})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    // The user's policy does not reach terminate.
    let (_, v) = access(&s, &st.user, "root", json!({"public_key": user_pub})).await;
    let other = v["data"]["session_id"].as_str().unwrap();
    let (code, _) = s
        .call(
            "POST",
            &format!("pam/sessions/{other}/terminate"),
            Some(&st.user),
            Some(json!({})),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_read_as_ended_and_leave_the_gateway_list() {
    let s = Server::start(Backend::Sqlite).await;
    let st = setup(&s).await;
    let (_, user_pub) = keypair(s.dir.path(), "alice", "ed25519", None);
    let (_, v) = access(
        &s,
        &st.user,
        "root",
        json!({"duration": "10s", "public_key": user_pub}),
    )
    .await;
    let id = v["data"]["session_id"].as_str().unwrap().to_string();
    s.clock.advance(10);
    let (_, v) = s.root("GET", &format!("pam/sessions/{id}"), None).await;
    assert_eq!(v["data"]["state"], "ended");
    assert_eq!(v["data"]["end_reason"], "expired");
    let (_, v) = s
        .call("GET", "pam/gateway/self/sessions", Some(&st.gw), None)
        .await;
    assert_eq!(v["data"]["sessions"], json!([]));
    let (code, v) = s
        .call(
            "POST",
            &format!("pam/gateway/self/sessions/{id}/open"),
            Some(&st.gw),
            Some(json!({})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(v["errors"][0].as_str().unwrap().contains("expired"), "{v}");

    // Never used, it stays on its gateway's list in storage (read on each
    // of its polls) until retention ends it there, on record.
    let open = || async { s.core.storage.keys_with_prefix("pam/open/").await.unwrap() };
    assert_eq!(open().await, [format!("pam/open/gw1/{id}")]);
    let r = gatepass_server::retention::run(
        &s.core,
        &gatepass_server::config::Retention::default(),
        s.clock.now(),
    )
    .await
    .unwrap();
    assert_eq!(r.sessions, 1);
    assert!(open().await.is_empty());
    let (_, v) = s.root("GET", &format!("pam/sessions/{id}"), None).await;
    assert_eq!(v["data"]["state"], "ended");
    assert_eq!(v["data"]["end_reason"], "expired");
    assert!(s.audit_text().contains("session_ended"));
    let r = gatepass_server::retention::run(
        &s.core,
        &gatepass_server::config::Retention::default(),
        s.clock.now(),
    )
    .await
    .unwrap();
    assert_eq!(r.sessions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_loses_its_active_sessions() {
    let s = Server::start(Backend::Sqlite).await;
    let st = setup(&s).await;
    let (_, user_pub) = keypair(s.dir.path(), "alice", "ed25519", None);
    let (_, v) = access(&s, &st.user, "root", json!({"public_key": user_pub})).await;
    let active = v["data"]["session_id"].as_str().unwrap().to_string();
    let (_, v) = access(&s, &st.user, "root", json!({"public_key": user_pub})).await;
    let pending = v["data"]["session_id"].as_str().unwrap().to_string();
    let (code, _) = s
        .call(
            "POST",
            &format!("pam/gateway/self/sessions/{active}/open"),
            Some(&st.gw),
            Some(json!({})),
        )
        .await;
    assert_eq!(code, StatusCode::OK);

    let (code, v) = s
        .call(
            "POST",
            "pam/gateway/self/started",
            Some(&st.gw),
            Some(json!({})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(
        v["data"]["sessions"],
        json!([{"session_id": pending, "expires_at": T0 + 3600, "state": "pending"}])
    );
    let (_, v) = s.root("GET", &format!("pam/sessions/{active}"), None).await;
    assert_eq!(v["data"]["state"], "ended");
    assert_eq!(v["data"]["end_reason"], "gateway_lost");
    assert!(s
        .audit_text()
        .lines()
        .any(|l| l.contains("\"event\":\"session_ended\"")
            && l.contains(&active)
            && l.contains("\"reason\":\"gateway_lost\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_and_unknown_names() {
    let s = Server::start(Backend::Sqlite).await;
    let st = setup(&s).await;
    let (_, user_pub) = keypair(s.dir.path(), "alice", "ed25519", None);
    let body = json!({"duration": "5m", "public_key": user_pub});
    // A token whose policy does not grant the account: 403; one that does: 200.
    let other = s
        .token_with_policy(
            "pam-root-only",
            r#"path "pam/resources/web/accounts/root/access" { capabilities = ["update"] }"#,
        )
        .await;
    assert_eq!(
        access(&s, &other, "deploy", body.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        access(&s, &other, "root", body.clone()).await.0,
        StatusCode::OK
    );
    // Unknown resource or account: 404.
    let (code, v) = s
        .call(
            "POST",
            "pam/resources/nope/accounts/root/access",
            Some(&st.user),
            Some(body.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{v}");
    let (code, v) = s
        .root(
            "POST",
            "pam/resources/nope/accounts/root/access",
            Some(body.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["errors"][0], "no resource named \"nope\"");
    let (code, v) = access(&s, &st.user, "nobody", body.clone()).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(
        v["errors"][0],
        "resource \"web\" has no account named \"nobody\""
    );
    assert_eq!(
        s.root("GET", "pam/resources/nope", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.root("GET", "pam/sessions/not-a-session", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.root("GET", "pam/gateways/nope", None).await.0,
        StatusCode::NOT_FOUND
    );
    let (code, v) = s.root("GET", "pam/gateways/gw1", None).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["address"], "127.0.0.1:2222");
    assert_eq!(v["data"]["last_seen"], "2026-01-01T00:00:00Z");
    // A caller with no token at all.
    assert_eq!(
        s.call(
            "POST",
            "pam/resources/web/accounts/root/access",
            None,
            Some(body)
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_and_accounts_are_checked() {
    let s = Server::start(Backend::Sqlite).await;
    let _st = setup(&s).await;
    let (_, key) = keypair(s.dir.path(), "k", "ed25519", None);
    let bad_resources = [
        (
            json!({"host": "10.0.0.7", "gateway": "gw1"}),
            "host_ca_mount",
        ),
        (
            json!({"host": "10.0.0.7", "gateway": "gw1", "host_ca_mount": "ssh", "known_hosts": [key]}),
            "not both",
        ),
        (
            json!({"host": "10.0.0.7", "gateway": "gw9", "known_hosts": [key]}),
            "not enrolled",
        ),
        (
            json!({"host": "bad host", "gateway": "gw1", "known_hosts": [key]}),
            "host name",
        ),
        (
            json!({"host": "10.0.0.7", "port": 0, "gateway": "gw1", "known_hosts": [key]}),
            "port",
        ),
        (
            json!({"host": "10.0.0.7", "port": 70000, "gateway": "gw1", "known_hosts": [key]}),
            "port",
        ),
        (
            json!({"host": "10.0.0.7", "gateway": "gw1", "known_hosts": ["nonsense"]}),
            "known_hosts",
        ),
        (
            json!({"host": "10.0.0.7", "gateway": "gw1", "host_ca_mount": "nomount"}),
            "no ssh mount",
        ),
        (
            json!({"type": "rdp", "host": "10.0.0.7", "gateway": "gw1", "known_hosts": [key]}),
            "ssh",
        ),
    ];
    for (body, words) in bad_resources {
        let (code, v) = s.root("POST", "pam/resources/db", Some(body.clone())).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(
            v["errors"][0].as_str().unwrap().contains(words),
            "{body}: {v}"
        );
    }
    // known_hosts as text (a file sent with `known_hosts=@FILE`): one key a
    // line, host patterns with commas and all.
    let text = format!("# web's keys\nweb,10.0.0.7 {}\n\n", key.trim());
    let (code, v) = s
        .root(
            "POST",
            "pam/resources/pinned",
            Some(json!({"host": "10.0.0.7", "gateway": "gw1", "known_hosts": text})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let bare: Vec<&str> = key.split_whitespace().take(2).collect();
    assert_eq!(v["data"]["known_hosts"], json!([bare.join(" ")]));
    let (code, v) = s
        .root("POST", "pam/resources/Bad_Name!", Some(json!({})))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    let (code, v) = s
        .root(
            "POST",
            "pam/resources/db",
            Some(json!({"host": "db.internal", "gateway": "gw1", "host_ca_mount": "ssh"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["port"], 22);

    ok(&s, "POST", "ssh/roles/hostsonly", json!({"key_type": "ca", "allow_host_certificates": true, "allow_user_certificates": false})).await;
    let bad_accounts = [
        (
            json!({"auth_method": "password", "username": "root"}),
            "password is required",
        ),
        (
            json!({"auth_method": "key", "username": "root", "private_key": "nope"}),
            "private_key",
        ),
        (
            json!({"auth_method": "certificate", "username": "root"}),
            "ca_mount and ca_role",
        ),
        (
            json!({"auth_method": "certificate", "username": "root", "ca_mount": "ssh", "ca_role": "hostsonly"}),
            "does not allow user certificates",
        ),
        (
            json!({"auth_method": "certificate", "username": "root", "ca_mount": "ssh", "ca_role": "missing"}),
            "unknown role",
        ),
        (
            json!({"auth_method": "password", "username": "Root!", "password": "x"}),
            "Linux user name",
        ),
        (
            json!({"auth_method": "password", "username": "root", "password": "x", "max_duration": "0"}),
            "max_duration",
        ),
        (json!({"username": "root", "password": "x"}), "auth_method"),
    ];
    for (body, words) in bad_accounts {
        let (code, v) = s
            .root("POST", "pam/resources/db/accounts/a", Some(body.clone()))
            .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(
            v["errors"][0].as_str().unwrap().contains(words),
            "{body}: {v}"
        );
    }
    // An account of a resource that does not exist.
    let (code, _) = s
        .root(
            "POST",
            "pam/resources/nope/accounts/a",
            Some(json!({"auth_method": "password", "username": "root", "password": "x"})),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // A rewrite without the password keeps the stored one.
    ok(
        &s,
        "POST",
        "pam/resources/web/accounts/root",
        json!({"auth_method": "password", "username": "root", "max_duration": "2h"}),
    )
    .await;
    let (_, v) = s.root("GET", "pam/resources/web/accounts/root", None).await;
    assert_eq!(v["data"]["max_duration"], 7200);
    assert_eq!(v["data"]["has_secret"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_lists_filter_by_resource_account_user_and_state() {
    let s = Server::start(Backend::Sqlite).await;
    let st = setup(&s).await;
    let (_, user_pub) = keypair(s.dir.path(), "alice", "ed25519", None);
    let body = json!({"duration": "5m", "public_key": user_pub});
    let (_, v) = access(&s, &st.user, "root", body.clone()).await;
    let first = v["data"]["session_id"].as_str().unwrap().to_string();
    s.clock.advance(1);
    let (_, v) = s
        .root(
            "POST",
            "pam/resources/web/accounts/deploy/access",
            Some(body.clone()),
        )
        .await;
    let second = v["data"]["session_id"].as_str().unwrap().to_string();
    s.root(
        "POST",
        &format!("pam/sessions/{first}/terminate"),
        Some(json!({})),
    )
    .await;

    let list = |q: &'static str| {
        let s = &s;
        async move {
            let (code, v) = s.root("LIST", &format!("pam/sessions{q}"), None).await;
            if code == StatusCode::NOT_FOUND {
                return vec![];
            }
            assert_eq!(code, StatusCode::OK, "{q}: {v}");
            let keys: Vec<String> = serde_json::from_value(v["data"]["keys"].clone()).unwrap();
            for k in &keys {
                assert_eq!(v["data"]["key_info"][k]["session_id"], k.as_str());
            }
            keys
        }
    };
    // Newest first.
    assert_eq!(list("").await, vec![second.clone(), first.clone()]);
    assert_eq!(list("?account=root").await, vec![first.clone()]);
    assert_eq!(
        list("?resource=web&account=deploy").await,
        vec![second.clone()]
    );
    assert_eq!(list("?user=root").await, vec![second.clone()]);
    assert_eq!(list("?user=token").await, vec![first.clone()]);
    assert_eq!(list("?state=ended").await, vec![first.clone()]);
    assert_eq!(list("?state=pending").await, vec![second.clone()]);
    assert_eq!(list("?state=active").await, Vec::<String>::new());
    assert_eq!(list("?resource=other").await, Vec::<String>::new());
    // GET with list=true is the same LIST.
    let (code, v) = s
        .root("GET", "pam/sessions?list=true&state=pending", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["data"]["keys"], json!([second]));
    let (code, _) = s.root("LIST", "pam/sessions?state=sleeping", None).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pam_events_are_in_the_audit_log_without_secrets() {
    let s = Server::start(Backend::Sqlite).await;
    let st = setup(&s).await;
    let (_, user_pub) = keypair(s.dir.path(), "alice", "ed25519", None);
    let (_, v) = access(
        &s,
        &st.user,
        "root",
        json!({"duration": "10m", "public_key": user_pub}),
    )
    .await;
    let id = v["data"]["session_id"].as_str().unwrap().to_string();
    access(
        &s,
        &st.user,
        "root",
        json!({"duration": "3h", "public_key": user_pub}),
    )
    .await;
    s.call(
        "POST",
        &format!("pam/gateway/self/sessions/{id}/open"),
        Some(&st.gw),
        Some(json!({})),
    )
    .await;
    // The gateway could not log in: the target's host key changed.
    let (code, _) = s
        .call(
            "POST",
            &format!("pam/gateway/self/sessions/{id}/end"),
            Some(&st.gw),
            Some(json!({"reason": "failed", "detail": "host key mismatch for 10.0.0.7:22"})),
        )
        .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (_, v) = access(&s, &st.user, "root", json!({"public_key": user_pub})).await;
    let other = v["data"]["session_id"].as_str().unwrap().to_string();
    s.root(
        "POST",
        &format!("pam/sessions/{other}/terminate"),
        Some(json!({})),
    )
    .await;

    let audit = s.audit_text();
    let events: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["type"] == "pam")
        .collect();
    let find = |event: &str, session: Option<&str>| {
        events
            .iter()
            .find(|e| e["event"] == event && session.is_none_or(|s| e["session_id"] == s))
            .unwrap_or_else(|| panic!("no {event} event in {events:#?}"))
            .clone()
    };
    let granted = find("access_granted", Some(&id));
    assert_eq!(granted["resource"], "web");
    assert_eq!(granted["account"], "root");
    assert_eq!(granted["user"], "token");
    assert_eq!(granted["gateway"], "gw1");
    let refused = find("access_refused", None);
    assert!(
        refused["detail"].as_str().unwrap().contains("max_duration"),
        "{refused}"
    );
    find("credential_fetched", Some(&id));
    find("session_started", Some(&id));
    let failed = events
        .iter()
        .find(|e| e["event"] == "access_refused" && e["session_id"] == id.as_str())
        .expect("the failed login is a refused access");
    assert_eq!(failed["reason"], "failed");
    assert_eq!(failed["detail"], "host key mismatch for 10.0.0.7:22");
    assert_eq!(find("session_ended", Some(&id))["reason"], "failed");
    let term = find("session_terminated", Some(&other));
    assert_eq!(term["reason"], "terminated");
    assert_eq!(term["detail"], "terminated by root");
    assert!(!audit.contains(PASSWORD));
    assert!(!audit.contains(st.private_key.lines().nth(1).unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_enroll_once_per_name_and_are_identified_by_their_token() {
    let s = Server::start(Backend::Sqlite).await;
    let first = enroll_gateway(&s, "gw1").await;
    let (code, v) = s.root("LIST", "pam/gateways", None).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["keys"], json!(["gw1"]));
    let v = ok(
        &s,
        "POST",
        "pam/gateways/join-tokens",
        json!({"num_uses": 0}),
    )
    .await;
    let j = v["data"]["join_token"].as_str().unwrap().to_string();
    let enroll = |body: Value| s.call("POST", "pam/gateways/enroll", None, Some(body));
    // A taken name is refused, and names that are paths are no names.
    let (code, v) =
        enroll(json!({"join_token": j, "name": "gw1", "address": "127.0.0.1:2222"})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap()
            .contains("already enrolled"),
        "{v}"
    );
    for (name, address) in [
        ("enroll", "127.0.0.1:2222"),
        ("GW", "127.0.0.1:2222"),
        ("gw3", "nowhere"),
    ] {
        let (code, v) = enroll(json!({"join_token": j, "name": name, "address": address})).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{name} {address}: {v}");
    }
    let (code, _) =
        enroll(json!({"join_token": "gpg.bogus", "name": "gw3", "address": "127.0.0.1:2222"}))
            .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    // A gateway token is not an administrator's, nor a host's.
    for path in ["pam/sessions", "hosts/self/state"] {
        let (code, _) = s.call("GET", path, Some(&first), None).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{path}");
    }
    // A token with the gateway policy but not made by enrollment is no
    // gateway: the gateway is the token's, never the request's.
    let (code, v) = s
        .root(
            "POST",
            "auth/token/create",
            Some(json!({"policies": ["gatepass-gateway"], "meta": {"gateway": "gw1"}})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    let v = ok(
        &s,
        "POST",
        "auth/token/create",
        json!({"policies": ["gatepass-gateway"]}),
    )
    .await;
    let forged = v["auth"]["client_token"].as_str().unwrap().to_string();
    let (code, v) = s
        .call("GET", "pam/gateway/self/sessions", Some(&forged), None)
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["errors"][0].as_str().unwrap().contains("gateway token"),
        "{v}"
    );

    // Replacing gw1 revokes the old token.
    let (code, v) = enroll(
        json!({"join_token": j, "name": "gw1", "address": "127.0.0.1:2300", "replace": true}),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let second = v["data"]["gateway_token"].as_str().unwrap().to_string();
    assert_eq!(
        s.call("GET", "pam/gateway/self/sessions", Some(&first), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.call("GET", "pam/gateway/self/sessions", Some(&second), None)
            .await
            .0,
        StatusCode::OK
    );
    let (_, v) = s.root("GET", "pam/gateways/gw1", None).await;
    assert_eq!(v["data"]["address"], "127.0.0.1:2300");
    // Deleting it revokes that one too.
    assert_eq!(
        s.root("DELETE", "pam/gateways/gw1", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.call("GET", "pam/gateway/self/sessions", Some(&second), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.root("LIST", "pam/gateways", None).await.0,
        StatusCode::NOT_FOUND
    );
}

/// `LIST pam/sessions` pages of the filtered list: every key of every page
/// (following `next_after`) and the size of each.
async fn session_pages(s: &Server, query: &str) -> (Vec<String>, Vec<usize>) {
    let (mut keys, mut sizes) = (Vec::new(), Vec::new());
    let mut after = String::new();
    loop {
        let (st, v) = s
            .root("LIST", &format!("pam/sessions?{query}{after}"), None)
            .await;
        if st == StatusCode::NOT_FOUND {
            break;
        }
        assert_eq!(st, StatusCode::OK, "{query}{after}: {v}");
        let page: Vec<String> = serde_json::from_value(v["data"]["keys"].clone()).unwrap();
        sizes.push(page.len());
        keys.extend(page);
        match v["data"]["next_after"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => break,
        }
    }
    (keys, sizes)
}

/// The session list is read a page at a time, newest first, through
/// indexes kept as sessions are granted (by time, user and resource):
/// filtered by user or state, each page holds exactly `limit`, and
/// `next_after` leads to the next. A database from before the indexes
/// gets them when the server starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_lists_are_paged_newest_first_with_filters() {
    for backend in BACKENDS {
        let s = Server::start(backend).await;
        let st = setup(&s).await;
        let (_, user_pub) = keypair(s.dir.path(), "alice", "ed25519", None);
        let body = json!({"duration": "30m", "public_key": user_pub});
        // Nine sessions a second apart, oldest first: the user token's on
        // every third, root's on the others; the first four terminated.
        let mut granted = Vec::new();
        for i in 0..9 {
            let (code, v) = if i % 3 == 0 {
                access(&s, &st.user, "root", body.clone()).await
            } else {
                s.root(
                    "POST",
                    "pam/resources/web/accounts/deploy/access",
                    Some(body.clone()),
                )
                .await
            };
            assert_eq!(code, StatusCode::OK, "{v}");
            granted.push(v["data"]["session_id"].as_str().unwrap().to_string());
            s.clock.advance(1);
        }
        for id in &granted[..4] {
            ok(
                &s,
                "POST",
                &format!("pam/sessions/{id}/terminate"),
                json!({}),
            )
            .await;
        }
        let newest_first = |pick: &dyn Fn(usize) -> bool| -> Vec<String> {
            (0..9)
                .rev()
                .filter(|i| pick(*i))
                .map(|i| granted[i].clone())
                .collect()
        };
        let (all, sizes) = session_pages(&s, "limit=4").await;
        assert_eq!(all, newest_first(&|_| true), "{backend:?}");
        assert_eq!(sizes, vec![4, 4, 1]);
        let (rooted, sizes) = session_pages(&s, "user=root&limit=2").await;
        assert_eq!(rooted, newest_first(&|i| i % 3 != 0));
        assert_eq!(sizes, vec![2, 2, 2]);
        let (ended, sizes) = session_pages(&s, "state=ended&limit=3").await;
        assert_eq!(ended, newest_first(&|i| i < 4));
        assert_eq!(sizes, vec![3, 1]);
        let (pending, sizes) = session_pages(&s, "state=pending&limit=3").await;
        assert_eq!(pending, newest_first(&|i| i >= 4));
        assert_eq!(sizes, vec![3, 2]);
        let (by_resource, _) =
            session_pages(&s, "resource=web&account=root&state=ended&limit=1").await;
        assert_eq!(by_resource, newest_first(&|i| i < 4 && i % 3 == 0));
        let (st_code, _) = s
            .root("LIST", "pam/sessions?limit=2&after=not%20a%20cursor", None)
            .await;
        assert_eq!(st_code, StatusCode::BAD_REQUEST);

        // A database written before the indexes existed: a restart builds
        // them.
        let mut old = s
            .core
            .storage
            .keys_with_prefix("pam/sessions-by/")
            .await
            .unwrap();
        assert_eq!(old.len(), 27, "three entries a session");
        old.push("pam/migrated/session-index".into());
        s.core.storage.delete_many(&old).await.unwrap();
        assert_eq!(session_pages(&s, "limit=4").await.0.len(), 0);
        let s = s.restart().await;
        let (all, _) = session_pages(&s, "limit=4").await;
        assert_eq!(all, newest_first(&|_| true));
        let (rooted, _) = session_pages(&s, "user=root&limit=2").await;
        assert_eq!(rooted, newest_first(&|i| i % 3 != 0));
    }
}
