//! Authority comes only from what the server bound (in-process): a host is
//! who enrollment says, host names are unique, child tokens never widen
//! their creator's bounds (through a token role either, nor outlive a
//! creator limited in uses, nor its revocation or expiry), no login is made root, an ACL
//! decides on the names a handler acts on and a deny under a glob hides a
//! folder from LIST, OTP-guess limiting never refuses a right OTP, and
//! certificates carry only options OpenSSH can parse.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use gatepass_tests::inproc::{Backend, Server, BACKENDS};
use gatepass_tests::ssh::keypair;
use serde_json::{json, Value};

async fn ok(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (st, v) = s.root(method, path, Some(body)).await;
    assert!(st.is_success(), "{method} {path}: {st} {v}");
    v
}

/// An OTP role for 10.0.0.0/8 and a join token with unlimited uses.
async fn otp_setup(s: &Server) -> String {
    ok(
        s,
        "POST",
        "ssh/roles/otp",
        json!({"key_type": "otp", "default_user": "ubuntu", "cidr_list": "10.0.0.0/8"}),
    )
    .await;
    let v = ok(s, "POST", "hosts/join-tokens", json!({"num_uses": 0})).await;
    v["data"]["join_token"].as_str().unwrap().to_string()
}

async fn enroll(s: &Server, body: Value) -> (StatusCode, Value) {
    s.call("POST", "hosts/enroll", None, Some(body)).await
}

async fn verify(s: &Server, token: Option<&str>, otp: &str) -> (StatusCode, Value) {
    s.call("POST", "ssh/verify", token, Some(json!({ "otp": otp })))
        .await
}

fn field(v: &Value, path: &[&str]) -> String {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_str()
        .unwrap_or_else(|| panic!("{path:?} in {v}"))
        .to_string()
}

#[tokio::test]
async fn only_enrollment_makes_a_token_a_host_token() {
    let s = Server::start(Backend::Sqlite).await;
    let join = otp_setup(&s).await;
    let (st, v) = enroll(
        &s,
        json!({"join_token": join, "hostname": "web-a", "addresses": ["10.0.0.7"]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let host_id = field(&v, &["data", "host_id"]);
    let host_token = field(&v, &["data", "host_token"]);
    // The host token's lookup still shows which host it is.
    let (_, v) = s
        .call("GET", "auth/token/lookup-self", Some(&host_token), None)
        .await;
    assert_eq!(v["data"]["meta"]["host_id"], host_id.as_str());
    assert_eq!(v["data"]["meta"]["hostname"], "web-a");

    // Someone who may only create tokens tries to become the host, and
    // even root cannot write the keys the server itself reads.
    let creator = s
        .token_with_policy(
            "creator",
            r#"path "auth/token/create" { capabilities = ["update"] }"#,
        )
        .await;
    for (who, meta) in [
        (creator.as_str(), json!({"host_id": host_id})),
        (creator.as_str(), json!({"hostname": "web-a"})),
        (creator.as_str(), json!({"username": "root"})),
        (gatepass_tests::inproc::ROOT, json!({"host_id": host_id})),
        (gatepass_tests::inproc::ROOT, json!({"role_name": "admin"})),
    ] {
        let (st, v) = s
            .call(
                "POST",
                "auth/token/create",
                Some(who),
                Some(json!({ "meta": meta })),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{meta}: {v}");
        assert!(v["errors"][0].as_str().unwrap().contains("reserved"), "{v}");
    }
    // Tokens it can create carry no host, so they cannot verify the
    // host-bound OTP, which stays unspent for its host.
    let (st, v) = s
        .call(
            "POST",
            "auth/token/create",
            Some(&creator),
            Some(json!({"meta": {"team": "web"}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let child = field(&v, &["auth", "client_token"]);
    let otp = field(
        &ok(&s, "POST", "ssh/creds/otp", json!({"host": "web-a"})).await,
        &["data", "key"],
    );
    for t in [&creator, &child] {
        let (st, v) = verify(&s, Some(t), &otp).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    }
    let (st, v) = verify(&s, Some(&host_token), &otp).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["ip"], "10.0.0.7");
}

#[tokio::test]
async fn host_names_are_unique_and_replace_takes_the_place() {
    let s = Server::start(Backend::Sqlite).await;
    let join = otp_setup(&s).await;
    let one_use = field(
        &ok(&s, "POST", "hosts/join-tokens", json!({"num_uses": 1})).await,
        &["data", "join_token"],
    );
    let (st, v) = enroll(
        &s,
        json!({"join_token": join, "hostname": "web-a", "addresses": ["10.0.0.7"]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let first_token = field(&v, &["data", "host_token"]);
    let (st, v) = s
        .call("GET", "hosts/self/state", Some(&first_token), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");

    // A second host under the same name (any case) is refused, and the
    // one-use join token it presented is still good.
    for name in ["web-a", "WEB-A"] {
        let (st, v) = enroll(
            &s,
            json!({"join_token": one_use, "hostname": name, "addresses": ["10.0.0.8"]}),
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        let msg = v["errors"][0].as_str().unwrap();
        assert!(
            msg.contains("already enrolled") && msg.contains("replace"),
            "{msg}"
        );
    }
    let v = ok(&s, "POST", "ssh/creds/otp", json!({"host": "web-a"})).await;
    assert_eq!(v["data"]["ip"], "10.0.0.7");

    // replace=true: the new host holds the name, the old one is gone and
    // its token revoked. The join token is spent now.
    let (st, v) = enroll(
        &s,
        json!({"join_token": one_use, "hostname": "web-a", "addresses": ["10.0.0.8"], "replace": true}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let second_id = field(&v, &["data", "host_id"]);
    let second_token = field(&v, &["data", "host_token"]);
    let (st, _) = s
        .call("GET", "hosts/self/state", Some(&first_token), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let v = ok(&s, "POST", "ssh/creds/otp", json!({"host": "web-a"})).await;
    assert_eq!(v["data"]["ip"], "10.0.0.8");
    let (st, v) = verify(&s, Some(&second_token), &field(&v, &["data", "key"])).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        s.core
            .storage
            .keys_with_prefix("hosts/host/")
            .await
            .unwrap()
            .len(),
        1
    );

    // Unenrolling by name frees the name for a fresh enrollment.
    let (st, v) = s.root("GET", "hosts/web-a", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["host_id"], second_id.as_str());
    let (st, _) = s.root("DELETE", "hosts/web-a", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = s
        .call("GET", "hosts/self/state", Some(&second_token), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, v) = enroll(
        &s,
        json!({"join_token": join, "hostname": "web-a", "addresses": ["10.0.0.9"]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_enrollments_under_one_name_exactly_one_wins() {
    for backend in BACKENDS {
        let s = Arc::new(Server::start(backend).await);
        let join = otp_setup(&s).await;
        let mut tries = tokio::task::JoinSet::new();
        for i in 0..8 {
            let (s, join) = (s.clone(), join.clone());
            tries.spawn(async move {
                enroll(
                    &s,
                    json!({"join_token": join, "hostname": "web-c", "addresses": [format!("10.0.1.{i}")]}),
                )
                .await
            });
        }
        let results = tries.join_all().await;
        let won = results
            .iter()
            .filter(|(st, _)| *st == StatusCode::OK)
            .count();
        assert_eq!(won, 1, "{backend:?}: {results:?}");
        assert!(
            results
                .iter()
                .all(|(st, _)| *st == StatusCode::OK || *st == StatusCode::BAD_REQUEST),
            "{results:?}"
        );
        assert_eq!(
            s.core
                .storage
                .keys_with_prefix("hosts/host/")
                .await
                .unwrap()
                .len(),
            1,
            "{backend:?}"
        );
    }
}

/// Enrollments with replace=true racing each other on one use of a join
/// token, each naming another enrolled host: one use removes one host at
/// most, not every host named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_use_of_a_join_token_replaces_one_host_at_most() {
    for backend in BACKENDS {
        let s = Arc::new(Server::start(backend).await);
        let join = otp_setup(&s).await;
        for i in 0..8 {
            let (st, v) = enroll(
                &s,
                json!({"join_token": join, "hostname": format!("victim-{i}"), "addresses": [format!("10.0.2.{i}")]}),
            )
            .await;
            assert_eq!(st, StatusCode::OK, "{v}");
        }
        let one_use = field(
            &ok(&s, "POST", "hosts/join-tokens", json!({"num_uses": 1})).await,
            &["data", "join_token"],
        );
        let mut tries = tokio::task::JoinSet::new();
        for i in 0..8 {
            let (s, one_use) = (s.clone(), one_use.clone());
            tries.spawn(async move {
                enroll(
                    &s,
                    json!({"join_token": one_use, "hostname": format!("victim-{i}"), "addresses": ["10.0.3.1"], "replace": true}),
                )
                .await
            });
        }
        let results = tries.join_all().await;
        let won = results
            .iter()
            .filter(|(st, _)| *st == StatusCode::OK)
            .count();
        assert_eq!(won, 1, "{backend:?}: {results:?}");
        // Eight hosts still: seven victims and the one that took a place.
        let hosts = s
            .core
            .storage
            .keys_with_prefix("hosts/host/")
            .await
            .unwrap();
        assert_eq!(hosts.len(), 8, "{backend:?}: {results:?}");
    }
}

#[tokio::test]
async fn child_tokens_never_widen_their_parent() {
    let s = Server::start(Backend::Sqlite).await;
    let here: SocketAddr = "127.0.0.1:50001".parse().unwrap();
    let elsewhere: SocketAddr = "127.0.0.2:50001".parse().unwrap();
    ok(
        &s,
        "POST",
        "sys/policies/acl/maker",
        json!({"policy": r#"
            path "auth/token/create" { capabilities = ["update"] }
            path "auth/token/create-orphan" { capabilities = ["update", "sudo"] }
            path "auth/token/lookup-self" { capabilities = ["read"] }
        "#}),
    )
    .await;
    ok(
        &s,
        "POST",
        "auth/userpass/users/ci",
        json!({"password": "pw-ci-12345", "token_policies": "maker", "token_bound_cidrs": "127.0.0.1/32", "token_ttl": "1h", "token_max_ttl": "1h"}),
    )
    .await;
    let call = |from: SocketAddr,
                method: &'static str,
                path: &'static str,
                token: Option<String>,
                body: Value| {
        let s = &s;
        async move {
            let raw = if body.is_null() {
                Vec::new()
            } else {
                body.to_string().into_bytes()
            };
            s.call_from(from, method, path, token.as_deref(), raw).await
        }
    };
    let (st, v) = call(
        here,
        "POST",
        "auth/userpass/login/ci",
        None,
        json!({"password": "pw-ci-12345"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let parent = field(&v, &["auth", "client_token"]);
    let (st, _) = call(
        elsewhere,
        "GET",
        "auth/token/lookup-self",
        Some(parent.clone()),
        Value::Null,
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "the parent is bound");

    // A child (or an orphan made with sudo) is bound just as narrowly.
    for path in ["auth/token/create", "auth/token/create-orphan"] {
        let (st, v) = call(
            here,
            "POST",
            path,
            Some(parent.clone()),
            json!({"ttl": "10h", "explicit_max_ttl": "100h"}),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{path}: {v}");
        let child = field(&v, &["auth", "client_token"]);
        let (st, _) = call(
            elsewhere,
            "GET",
            "auth/token/lookup-self",
            Some(child.clone()),
            Value::Null,
        )
        .await;
        assert_eq!(
            st,
            StatusCode::FORBIDDEN,
            "{path}: child used from outside the CIDR"
        );
        let (st, v) = call(
            here,
            "GET",
            "auth/token/lookup-self",
            Some(child.clone()),
            Value::Null,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["data"]["bound_cidrs"], json!(["127.0.0.1/32"]), "{path}");
        // Its lifetime and maximum stay within the parent's remaining hour.
        assert!(v["data"]["ttl"].as_i64().unwrap() <= 3600, "{path}: {v}");
        assert!(
            v["data"]["explicit_max_ttl"].as_i64().unwrap() <= 3600,
            "{path}: {v}"
        );
    }
    // Narrower addresses may be asked for; wider ones are refused.
    let (st, v) = call(
        here,
        "POST",
        "auth/token/create",
        Some(parent.clone()),
        json!({"bound_cidrs": ["0.0.0.0/0"]}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["errors"][0].as_str().unwrap().contains("bound_cidrs"),
        "{v}"
    );
    let (st, v) = call(
        here,
        "POST",
        "auth/token/create",
        Some(parent.clone()),
        json!({"bound_cidrs": ["127.0.0.1"]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");

    // Renewing a child never carries it past its parent's expiry.
    let (_, v) = call(
        here,
        "POST",
        "auth/token/create",
        Some(parent.clone()),
        json!({"ttl": "30m"}),
    )
    .await;
    let child = field(&v, &["auth", "client_token"]);
    s.clock.advance(1200);
    let (st, v) = call(
        here,
        "POST",
        "auth/token/renew-self",
        Some(child.clone()),
        json!({"increment": "10h"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["auth"]["lease_duration"].as_i64().unwrap() <= 2400, "{v}");
}

#[tokio::test]
async fn a_right_otp_verifies_after_many_wrong_guesses_from_its_address() {
    let s = Server::start(Backend::Sqlite).await;
    ok(
        &s,
        "POST",
        "ssh/roles/otp",
        json!({"key_type": "otp", "default_user": "ubuntu", "cidr_list": "10.0.0.0/8"}),
    )
    .await;
    let v = ok(&s, "POST", "ssh/creds/otp", json!({"ip": "10.0.0.7"})).await;
    let otp = field(&v, &["data", "key"]);
    // One host behind the NAT guesses; it is slowed down (429 past 30).
    let mut statuses = Vec::new();
    for i in 0..100 {
        statuses.push(verify(&s, None, &format!("wrong-guess-{i}")).await.0);
    }
    assert!(statuses[..30]
        .iter()
        .all(|st| *st == StatusCode::BAD_REQUEST));
    assert!(statuses[30..]
        .iter()
        .all(|st| *st == StatusCode::TOO_MANY_REQUESTS));
    // Another host behind the same address logs in with its right OTP.
    let (st, v) = verify(&s, None, &otp).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["ip"], "10.0.0.7");
    let (st, _) = verify(&s, None, "wrong-again").await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    // A spent OTP is a failure like any other.
    let (st, _) = verify(&s, None, &otp).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn certificates_carry_only_options_openssh_can_parse() {
    let s = Server::start(Backend::Sqlite).await;
    ok(&s, "POST", "ssh/config/ca", json!({})).await;
    let (_, pk) = keypair(s.dir.path(), "alice", "ed25519", None);
    let role = |name: &'static str, extra: Value| {
        let s = &s;
        async move {
            let mut body = json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*", "allowed_extensions": "*"});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            s.root("POST", &format!("ssh/roles/{name}"), Some(body))
                .await
        }
    };
    let sign = |name: &'static str, extra: Value| {
        let s = &s;
        let pk = pk.clone();
        async move {
            let mut body = json!({"public_key": pk, "valid_principals": "alice"});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            s.root("POST", &format!("ssh/sign/{name}"), Some(body))
                .await
        }
    };
    assert_eq!(role("plain", json!({})).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        role(
            "named",
            json!({"allowed_critical_options": "x-gatepass-test"})
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        role("star", json!({"allowed_critical_options": "*"}))
            .await
            .0,
        StatusCode::NO_CONTENT
    );

    // Flags take no value, at signing and as a role default.
    let (st, v) = sign("plain", json!({"extensions": {"permit-pty": "x"}})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["errors"][0].as_str().unwrap().contains("permit-pty"),
        "{v}"
    );
    let (st, v) = sign(
        "plain",
        json!({"critical_options": {"verify-required": "yes"}}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = role(
        "bad",
        json!({"default_extensions": {"permit-agent-forwarding": "yes"}}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = sign(
        "plain",
        json!({"extensions": {"permit-pty": "", "permit-port-forwarding": ""}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");

    // Unknown critical options only when a role names them.
    for name in ["plain", "star"] {
        let (st, v) = sign(name, json!({"critical_options": {"x-gatepass-test": "1"}})).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{name}: {v}");
        assert!(
            v["errors"][0]
                .as_str()
                .unwrap()
                .contains("allowed_critical_options"),
            "{v}"
        );
    }
    let (st, v) = role(
        "bad",
        json!({"default_critical_options": {"x-gatepass-test": "1"}}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = sign(
        "named",
        json!({"critical_options": {"x-gatepass-test": "1"}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = sign(
        "star",
        json!({"critical_options": {"force-command": "/usr/bin/uptime", "verify-required": ""}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // What was signed parses as an OpenSSH certificate.
    let cert = ssh_key::Certificate::from_openssh(v["data"]["signed_key"].as_str().unwrap().trim())
        .expect("certificate parses");
    assert_eq!(
        cert.critical_options()
            .get("force-command")
            .map(String::as_str),
        Some("/usr/bin/uptime")
    );
}

#[tokio::test]
async fn hosts_enrolled_before_the_binding_keep_working() {
    let s = Server::start(Backend::Sqlite).await;
    let join = otp_setup(&s).await;
    let (_, v) = enroll(
        &s,
        json!({"join_token": join, "hostname": "old-host", "addresses": ["10.0.0.7"]}),
    )
    .await;
    let host_token = field(&v, &["data", "host_token"]);
    // Stored the way older versions did: the host only in the token's
    // metadata, no name index.
    let store = &s.core.storage;
    let mut entry = gatepass_server::auth::token::lookup(&s.core, &host_token, s.clock.now())
        .await
        .unwrap()
        .unwrap();
    let host_id = entry.host_id.take().unwrap();
    entry.meta.insert("host_id".into(), host_id.clone());
    store
        .put(&format!("token/id/{}", entry.hash), &entry)
        .await
        .unwrap();
    store.delete("hosts/name/old-host").await.unwrap();
    store.delete("hosts/migrated/name-index").await.unwrap();
    let (st, _) = s
        .call("GET", "hosts/self/state", Some(&host_token), None)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "metadata alone makes no host");

    // The next start brings the data up to date from the host record.
    gatepass_server::hosts::migrate(&s.core).await.unwrap();
    let (st, v) = s
        .call("GET", "hosts/self/state", Some(&host_token), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, v) = s
        .call("GET", "auth/token/lookup-self", Some(&host_token), None)
        .await;
    assert_eq!(v["data"]["meta"]["host_id"], host_id.as_str());
    let v = ok(&s, "POST", "ssh/creds/otp", json!({"host": "old-host"})).await;
    let (st, v) = verify(&s, Some(&host_token), &field(&v, &["data", "key"])).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

fn client_token(v: &Value) -> String {
    v["auth"]["client_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {v}"))
        .to_string()
}

#[tokio::test]
async fn a_token_role_without_allowed_policies_grants_only_the_creators() {
    let s = Server::start(Backend::Sqlite).await;
    ok(
        &s,
        "POST",
        "sys/policies/acl/superuser",
        json!({"policy": r#"path "*" { capabilities = ["create", "read", "update", "delete", "list"] }"#}),
    )
    .await;
    ok(
        &s,
        "POST",
        "auth/token/roles/ci",
        json!({"orphan": true, "disallowed_policies": "admin"}),
    )
    .await;
    let maker = s
        .token_with_policy(
            "ci-maker",
            r#"path "auth/token/create/ci" { capabilities = ["update"] }
               path "auth/token/create" { capabilities = ["update"] }"#,
        )
        .await;
    // Neither way gives the maker a policy it does not hold.
    for path in ["auth/token/create", "auth/token/create/ci"] {
        let (st, v) = s
            .call(
                "POST",
                path,
                Some(&maker),
                Some(json!({"policies": ["superuser"]})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert!(v.to_string().contains("must be subset of"), "{path}: {v}");
    }
    // Its own policy, and the role's defaults (the creator's), still work.
    let (st, v) = s
        .call(
            "POST",
            "auth/token/create/ci",
            Some(&maker),
            Some(json!({"policies": ["ci-maker"]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["auth"]["policies"], json!(["ci-maker", "default"]), "{v}");
    // Root may give any policy through the role.
    let v = ok(
        &s,
        "POST",
        "auth/token/create/ci",
        json!({"policies": ["superuser"]}),
    )
    .await;
    assert_eq!(
        v["auth"]["policies"],
        json!(["default", "superuser"]),
        "{v}"
    );
}

#[tokio::test]
async fn no_login_method_or_group_makes_a_root_token() {
    let s = Server::start(Backend::Sqlite).await;
    let admin = s
        .token_with_policy(
            "user-admin",
            r#"path "auth/userpass/users/*" { capabilities = ["create", "update"] }
               path "auth/approle/role/*" { capabilities = ["create", "update"] }
               path "identity/group" { capabilities = ["create", "update"] }"#,
        )
        .await;
    for (path, body) in [
        (
            "auth/userpass/users/mallory",
            json!({"password": "pw123456", "token_policies": "root"}),
        ),
        (
            "auth/userpass/users/mallory",
            json!({"password": "pw123456", "policies": ["default", "root"]}),
        ),
        ("auth/approle/role/job", json!({"token_policies": "root"})),
        (
            "identity/group",
            json!({"name": "ops", "type": "external", "policies": "root"}),
        ),
    ] {
        let (st, v) = s.call("POST", path, Some(&admin), Some(body.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path} {body}: {v}");
        assert!(
            v.to_string().contains("cannot create root tokens"),
            "{path}: {v}"
        );
        // Not even root can give it to logins.
        let (st, v) = s.root("POST", path, Some(body)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "root, {path}: {v}");
    }
    let (st, v) = s
        .call(
            "POST",
            "auth/userpass/login/mallory",
            None,
            Some(json!({"password": "pw123456"})),
        )
        .await;
    assert_ne!(st, StatusCode::OK, "mallory exists: {v}");
}

/// A token limited to a number of uses creates no tokens, as in Vault: not
/// a child (which would have no limit of its own), not an orphan through a
/// role (which would outlive it too), not with its last use.
#[tokio::test]
async fn a_token_limited_in_uses_cannot_create_tokens() {
    let s = Server::start(Backend::Sqlite).await;
    ok(
        &s,
        "POST",
        "sys/policies/acl/maker",
        json!({"policy": r#"path "auth/token/create*" { capabilities = ["update"] }"#}),
    )
    .await;
    ok(
        &s,
        "POST",
        "auth/token/roles/orph",
        json!({"orphan": true, "allowed_policies": ["maker"]}),
    )
    .await;
    for (uses, path) in [
        (1, "auth/token/create"),
        (2, "auth/token/create"),
        (5, "auth/token/create/orph"),
    ] {
        let v = ok(
            &s,
            "POST",
            "auth/token/create",
            json!({"policies": ["maker"], "num_uses": uses, "ttl": "1h"}),
        )
        .await;
        let limited = client_token(&v);
        let (st, v) = s
            .call(
                "POST",
                path,
                Some(&limited),
                Some(json!({"policies": ["maker"]})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{uses} uses, {path}: {v}");
        assert!(v.to_string().contains("restricted use token"), "{v}");
    }
    // Without a limit, children are made, and go with their parent.
    let v = ok(
        &s,
        "POST",
        "auth/token/create",
        json!({"policies": ["maker"], "ttl": "1h"}),
    )
    .await;
    let parent = client_token(&v);
    let (st, v) = s
        .call("POST", "auth/token/create", Some(&parent), Some(json!({})))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let child = client_token(&v);
    ok(&s, "POST", "auth/token/revoke", json!({ "token": parent })).await;
    let (st, _) = s
        .call("GET", "auth/token/lookup-self", Some(&child), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "the child outlived its parent");
}

/// Waits (at most 10 s) until the concurrent makers have made `n` things,
/// so that what comes next meets them at work.
async fn until_made(count: &AtomicUsize, n: usize) {
    for _ in 0..5000 {
        if count.load(Ordering::Relaxed) >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    panic!("only {} made in 10 s", count.load(Ordering::Relaxed));
}

/// Children a token keeps making while it is revoked go with it: none made
/// during the revocation survives it.
#[tokio::test]
async fn children_made_during_their_parents_revocation_go_with_it() {
    let s = Arc::new(Server::start(Backend::Sqlite).await);
    ok(
        &s,
        "POST",
        "sys/policies/acl/maker",
        json!({"policy": r#"path "auth/token/create" { capabilities = ["update"] }"#}),
    )
    .await;
    for round in 0..3 {
        let v = ok(
            &s,
            "POST",
            "auth/token/create",
            json!({"policies": ["maker"], "ttl": "1h"}),
        )
        .await;
        let parent = client_token(&v);
        let count = Arc::new(AtomicUsize::new(0));
        let makers: Vec<_> = (0..8)
            .map(|_| {
                let (s, parent, count) = (s.clone(), parent.clone(), count.clone());
                tokio::spawn(async move {
                    let mut made = Vec::new();
                    for _ in 0..40 {
                        let (st, v) = s
                            .call("POST", "auth/token/create", Some(&parent), Some(json!({})))
                            .await;
                        if st != StatusCode::OK {
                            break;
                        }
                        made.push(client_token(&v));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    made
                })
            })
            .collect();
        // Revoked while the makers are at it.
        until_made(&count, 8).await;
        ok(&s, "POST", "auth/token/revoke", json!({ "token": parent })).await;
        let mut made = Vec::new();
        for m in makers {
            made.extend(m.await.unwrap());
        }
        assert!(!made.is_empty(), "round {round}: no child was made at all");
        for child in &made {
            let (st, v) = s
                .call("GET", "auth/token/lookup-self", Some(child), None)
                .await;
            assert_eq!(
                st,
                StatusCode::FORBIDDEN,
                "round {round}: a child of {} survived its parent's revocation: {v}",
                made.len()
            );
        }
    }
}

/// A server with the OTP role of [`otp_setup`] and a policy `otp` that may
/// ask it for credentials.
async fn otp_server() -> Server {
    let s = Server::start(Backend::Sqlite).await;
    otp_setup(&s).await;
    ok(
        &s,
        "POST",
        "sys/policies/acl/otp",
        json!({"policy": r#"path "ssh/creds/otp" { capabilities = ["update"] }"#}),
    )
    .await;
    s
}

async fn otp_creds(s: &Server, token: &str) -> (StatusCode, Value) {
    let body = json!({"ip": "10.0.0.9", "username": "ubuntu"});
    s.call("POST", "ssh/creds/otp", Some(token), Some(body))
        .await
}

/// A token that expires takes its leases with it even when no one presents
/// it again: its OTPs stop verifying once the sweeper has run, as in Vault,
/// and so do those of a token made before the expiry index existed.
#[tokio::test]
async fn an_expired_tokens_otps_stop_working_without_it_being_seen_again() {
    use gatepass_server::auth::token;
    let s = otp_server().await;
    let mut otps = Vec::new();
    for unindexed in [false, true] {
        let v = ok(
            &s,
            "POST",
            "auth/token/create",
            json!({"policies": ["otp"], "ttl": "8s"}),
        )
        .await;
        let short = client_token(&v);
        let (st, v) = otp_creds(&s, &short).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        otps.push(field(&v, &["data", "key"]));
        if unindexed {
            // As a database from before the index holds it: no entries and
            // no mark that tokens were indexed.
            for k in s.core.storage.keys_with_prefix("token-exp").await.unwrap() {
                s.core.storage.delete(&k).await.unwrap();
            }
            let n = token::index_expiries(&s.core, s.clock.now()).await.unwrap();
            assert!(n >= 2, "tokens indexed: {n}");
            assert_eq!(
                token::index_expiries(&s.core, s.clock.now()).await.unwrap(),
                0
            );
        }
    }
    s.clock.advance(15);
    let swept = token::sweep_expired(&s.core, s.clock.now(), 100)
        .await
        .unwrap();
    assert!(swept >= 2, "{swept}");
    for otp in &otps {
        let (st, v) = verify(&s, None, otp).await;
        assert_ne!(
            st,
            StatusCode::OK,
            "the OTP of an expired token verified: {v}"
        );
    }
    // The root token and tokens still valid are left alone.
    let (st, _) = s.root("GET", "auth/token/lookup-self", None).await;
    assert_eq!(st, StatusCode::OK);
}

/// A token role's `token_num_uses` bounds its tokens' uses, and lowering
/// the token method's `max_lease_ttl` bounds the renewals of tokens already
/// out, as in Vault.
#[tokio::test]
async fn token_roles_and_the_methods_tuning_bound_tokens_already_out() {
    let s = Server::start(Backend::Sqlite).await;
    ok(
        &s,
        "POST",
        "auth/token/roles/short",
        json!({"token_num_uses": 3}),
    )
    .await;
    for (asked, uses) in [
        (json!({"num_uses": 10, "ttl": "1h"}), 3),
        (json!({"num_uses": 2, "ttl": "1h"}), 2),
    ] {
        let v = ok(&s, "POST", "auth/token/create/short", asked).await;
        let t = client_token(&v);
        let (st, v) = s
            .call("GET", "auth/token/lookup-self", Some(&t), None)
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(
            v["data"]["num_uses"],
            uses - 1,
            "{uses} uses, one spent: {v}"
        );
    }
    let (_, v) = s.root("GET", "auth/token/roles/short", None).await;
    assert_eq!(v["data"]["token_num_uses"], 3, "{v}");
    // A token of the method's 32 days, then the method's maximum lowered.
    let v = ok(&s, "POST", "auth/token/create", json!({"ttl": "1h"})).await;
    let t = client_token(&v);
    s.clock.advance(600);
    tune_token_max(&s, "2h").await;
    let (st, v) = renew_self(&s, &t, json!({"increment": "100h"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["auth"]["lease_duration"], 7200 - 600, "{v}");
    assert_eq!(
        v["warnings"],
        json!([
            "TTL of \"100h\" exceeded the effective max_ttl of \"1h50m\"; TTL value is capped accordingly"
        ]),
        "the cut is told, as Vault tells it"
    );
    // Its entry in the expiry index follows it: one, at its expiry.
    assert!(indexed_at_its_expiry(&s, &t).await);
    // Past a maximum lowered again, a renewal is refused and the token
    // keeps the time it has, as in Vault.
    tune_token_max(&s, "5m").await;
    let (st, v) = renew_self(&s, &t, json!({})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("past the max TTL"), "{v}");
    let (st, v) = s
        .call("GET", "auth/token/lookup-self", Some(&t), None)
        .await;
    assert_eq!(
        (st, &v["data"]["ttl"]),
        (StatusCode::OK, &json!(6600)),
        "{v}"
    );
    // A periodic token's period is cut to the maximum, at creation and at
    // every renewal.
    tune_token_max(&s, "60s").await;
    let v = ok(&s, "POST", "auth/token/create", json!({"period": "1h"})).await;
    assert_eq!(v["auth"]["lease_duration"], 60, "{v}");
    assert_eq!(
        v["warnings"],
        json!([
            "period of \"1h\" exceeded the effective max_ttl of \"1m\"; period value is capped accordingly"
        ])
    );
    let periodic = client_token(&v);
    ok(
        &s,
        "POST",
        "auth/token/roles/per",
        json!({"token_period": "1h"}),
    )
    .await;
    let v = ok(&s, "POST", "auth/token/create/per", json!({})).await;
    assert_eq!(v["auth"]["lease_duration"], 60, "{v}");
    tune_token_max(&s, "30s").await;
    let (st, v) = renew_self(&s, &periodic, json!({})).await;
    assert_eq!(
        (st, &v["auth"]["lease_duration"]),
        (StatusCode::OK, &json!(30)),
        "{v}"
    );
    assert!(indexed_at_its_expiry(&s, &periodic).await);
    // A token that never expires has nothing to renew, as in Vault.
    let (st, v) = s
        .root("POST", "auth/token/renew-self", Some(json!({})))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("not renewable"), "{v}");
}

#[tokio::test]
async fn a_login_whose_ttl_is_cut_to_the_methods_maximum_is_told_so() {
    let s = Server::start(Backend::Sqlite).await;
    ok(
        &s,
        "POST",
        "auth/userpass/users/long",
        json!({"password": "pw-long-12345", "token_ttl": "3h"}),
    )
    .await;
    let login = || {
        let body = json!({"password": "pw-long-12345"});
        s.call("POST", "auth/userpass/login/long", None, Some(body))
    };
    let (st, v) = login().await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["auth"]["lease_duration"], 3 * 3600, "{v}");
    assert_eq!(v["warnings"], Value::Null, "nothing cut, nothing told: {v}");
    let body = json!({"max_lease_ttl": "2h"});
    ok(&s, "POST", "sys/auth/userpass/tune", body).await;
    let (st, v) = login().await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["auth"]["lease_duration"], 7200, "{v}");
    assert_eq!(
        v["warnings"],
        json!([
            "TTL of \"3h\" exceeded the effective max_ttl of \"2h\"; TTL value is capped accordingly"
        ])
    );
}

/// Sets the token method's `max_lease_ttl`.
async fn tune_token_max(s: &Server, max: &str) {
    let body = json!({ "max_lease_ttl": max });
    ok(s, "POST", "sys/auth/token/tune", body).await;
}

async fn renew_self(s: &Server, token: &str, body: Value) -> (StatusCode, Value) {
    s.call("POST", "auth/token/renew-self", Some(token), Some(body))
        .await
}

/// Whether the tokens' expiry index has an entry for this token at the
/// expiry it has now (what the sweeper finds it by).
async fn indexed_at_its_expiry(s: &Server, token: &str) -> bool {
    let e = gatepass_server::auth::token::lookup(&s.core, token, s.clock.now())
        .await
        .unwrap()
        .expect("a live token");
    let at = e.expire_time.expect("an expiring token");
    let key = format!("token-exp/{at:016x}/{}", e.accessor);
    s.core.storage.keys_with_prefix(&key).await.unwrap() == vec![key]
}

/// Renewals of one token that overlap leave it in the expiry index at the
/// expiry it ends up with, whatever their order: none takes the entry the
/// other needs. Once expired, all are swept.
#[tokio::test]
async fn overlapping_renewals_leave_the_token_findable_by_the_sweeper() {
    let s = Arc::new(otp_server().await);
    let mut tokens = Vec::new();
    for _ in 0..40 {
        let v = ok(
            &s,
            "POST",
            "auth/token/create",
            json!({"policies": ["otp"], "ttl": "25s"}),
        )
        .await;
        tokens.push(client_token(&v));
    }
    let mut otps = Vec::new();
    for t in &tokens {
        let (st, v) = otp_creds(&s, t).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        otps.push(field(&v, &["data", "key"]));
    }
    // One renewal moves the expiry, the other back to where it was.
    let mut renewals = Vec::new();
    for t in &tokens {
        for increment in ["8s", "25s"] {
            let (s, t) = (s.clone(), t.clone());
            renewals.push(tokio::spawn(async move {
                let body = json!({ "increment": increment });
                s.call("POST", "auth/token/renew-self", Some(&t), Some(body))
                    .await
            }));
        }
    }
    for r in renewals {
        let (st, v) = r.await.unwrap();
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    for t in &tokens {
        assert!(indexed_at_its_expiry(&s, t).await, "a token lost its entry");
    }
    s.clock.advance(30);
    for _ in 0..3 {
        gatepass_server::auth::token::sweep_expired(&s.core, s.clock.now(), 1000)
            .await
            .unwrap();
    }
    for otp in &otps {
        let (st, v) = verify(&s, None, otp).await;
        assert_ne!(st, StatusCode::OK, "an expired token's OTP verified: {v}");
    }
}

/// A token revoked with `revoke-orphan` takes the leases it was making
/// while that ran: none of its OTPs verifies afterwards.
#[tokio::test]
async fn leases_made_during_a_revoke_orphan_go_with_the_token() {
    let s = Arc::new(otp_server().await);
    let v = ok(
        &s,
        "POST",
        "auth/token/create",
        json!({"policies": ["otp"]}),
    )
    .await;
    let maker = client_token(&v);
    let count = Arc::new(AtomicUsize::new(0));
    let makers: Vec<_> = (0..8)
        .map(|_| {
            let (s, maker, count) = (s.clone(), maker.clone(), count.clone());
            tokio::spawn(async move {
                let mut otps = Vec::new();
                for _ in 0..40 {
                    let (st, v) = otp_creds(&s, &maker).await;
                    if st != StatusCode::OK {
                        break;
                    }
                    otps.push(field(&v, &["data", "key"]));
                    count.fetch_add(1, Ordering::Relaxed);
                }
                otps
            })
        })
        .collect();
    until_made(&count, 8).await;
    ok(
        &s,
        "POST",
        "auth/token/revoke-orphan",
        json!({ "token": maker }),
    )
    .await;
    let mut otps = Vec::new();
    for m in makers {
        otps.extend(m.await.unwrap());
    }
    assert!(!otps.is_empty(), "no OTP was made at all");
    for otp in &otps {
        let (st, v) = verify(&s, None, otp).await;
        assert_ne!(
            st,
            StatusCode::OK,
            "an OTP of {} outlived its token: {v}",
            otps.len()
        );
    }
}

#[tokio::test]
async fn a_deny_under_a_glob_hides_the_folder_from_list() {
    let s = Server::start(Backend::Sqlite).await;
    ok(
        &s,
        "POST",
        "ssh/roles/secret-admin",
        json!({"key_type": "otp", "default_user": "root", "cidr_list": "10.0.0.0/8"}),
    )
    .await;
    let t = s
        .token_with_policy(
            "ssh-but-roles",
            r#"path "ssh/*" { capabilities = ["read", "list"] }
               path "ssh/roles/*" { capabilities = ["deny"] }"#,
        )
        .await;
    let (st, v) = s
        .call("GET", "ssh/roles/secret-admin", Some(&t), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, v) = s.call("LIST", "ssh/roles", Some(&t), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "LIST: {v}");
    let (st, v) = s.call("GET", "ssh/roles?list=true", Some(&t), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "GET ?list=true: {v}");
}

#[tokio::test]
async fn the_acl_decides_on_the_name_the_handler_acts_on() {
    let s = Server::start(Backend::Sqlite).await;
    ok(
        &s,
        "POST",
        "auth/userpass/users/admin",
        json!({"password": "admin-pw-1", "token_policies": "default"}),
    )
    .await;
    ok(
        &s,
        "POST",
        "sys/policies/acl/audit-only",
        json!({"policy": r#"path "sys/audit" { capabilities = ["read"] }"#}),
    )
    .await;
    let helpdesk = s
        .token_with_policy(
            "helpdesk",
            r#"path "auth/userpass/users/*" { capabilities = ["create", "update"] }
               path "auth/userpass/users/admin*" { capabilities = ["deny"] }
               path "sys/policies/acl/*" { capabilities = ["create", "update"] }
               path "sys/policies/acl/audit-only" { capabilities = ["deny"] }"#,
        )
        .await;
    for (path, body) in [
        (
            "auth/userpass/users/admin/password",
            json!({"password": "owned1234"}),
        ),
        (
            "auth/userpass/users/ADMIN/password",
            json!({"password": "owned1234"}),
        ),
        (
            "auth/userpass/users/Admin",
            json!({"password": "owned1234"}),
        ),
        (
            "sys/policies/acl/AUDIT-ONLY",
            json!({"policy": r#"path "*" { capabilities = ["sudo"] }"#}),
        ),
    ] {
        let (st, v) = s.call("POST", path, Some(&helpdesk), Some(body)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{path}: {v}");
    }
    let (st, v) = s
        .call(
            "POST",
            "auth/userpass/login/admin",
            None,
            Some(json!({"password": "admin-pw-1"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "admin's password changed: {v}");
    // Names it may edit still work, in any case.
    let (st, v) = s
        .call(
            "POST",
            "auth/userpass/users/Bob",
            Some(&helpdesk),
            Some(json!({"password": "bob-pw-12"})),
        )
        .await;
    assert!(st.is_success(), "{v}");
    let (st, v) = s
        .call(
            "POST",
            "auth/userpass/login/bob",
            None,
            Some(json!({"password": "bob-pw-12"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

/// `create` alone makes what does not exist yet, on the paths Vault gives
/// an existence check (token roles, userpass users, AppRole and JWT
/// roles), and nothing else: it cannot change what exists (a policy meant
/// for adding users cannot reset the admin's password), and every other
/// write needs `update`. Each case as OpenBao 2.7.2 answers it.
#[tokio::test]
async fn create_alone_makes_new_objects_and_changes_none() {
    let s = Server::start(Backend::Sqlite).await;
    ok(&s, "POST", "sys/auth/ci", json!({"type": "jwt"})).await;
    let role = json!({"role_type": "jwt", "user_claim": "sub", "bound_audiences": "x"});
    let ssh_role = json!({"key_type": "otp", "default_user": "root", "cidr_list": "10.0.0.0/8"});
    let existing = [
        (
            "auth/userpass/users/admin",
            json!({"password": "admin-pw-1"}),
        ),
        (
            "auth/approle/role/deploy",
            json!({"token_policies": "default"}),
        ),
        (
            "auth/token/roles/ci",
            json!({"allowed_policies": "default"}),
        ),
        ("auth/ci/role/build", role.clone()),
    ];
    for (path, body) in &existing {
        ok(&s, "POST", path, body.clone()).await;
    }
    let adder = s
        .token_with_policy(
            "adder",
            r#"path "auth/userpass/users/*" { capabilities = ["create"] }
               path "auth/approle/role/*" { capabilities = ["create"] }
               path "auth/token/roles/*" { capabilities = ["create"] }
               path "auth/ci/role/*" { capabilities = ["create"] }
               path "ssh/roles/*" { capabilities = ["create"] }
               path "sys/policies/acl/*" { capabilities = ["create"] }
               path "auth/token/create" { capabilities = ["create"] }"#,
        )
        .await;
    for (path, body) in existing {
        let (st, v) = s.call("POST", path, Some(&adder), Some(body)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{path} exists: {v}");
    }
    // Named in another case, it is the same user.
    let (st, v) = s
        .call(
            "POST",
            "auth/userpass/users/ADMIN",
            Some(&adder),
            Some(json!({"password": "owned1234"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, v) = s
        .call(
            "POST",
            "auth/userpass/login/admin",
            None,
            Some(json!({"password": "admin-pw-1"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "admin's password changed: {v}");
    for (path, body) in [
        ("auth/userpass/users/bob", json!({"password": "bob-pw-12"})),
        (
            "auth/approle/role/new",
            json!({"token_policies": "default"}),
        ),
        (
            "auth/token/roles/new",
            json!({"allowed_policies": "default"}),
        ),
        ("auth/ci/role/new", role),
    ] {
        let (st, v) = s.call("POST", path, Some(&adder), Some(body)).await;
        assert!(st.is_success(), "{path} is new: {st} {v}");
    }
    // Paths without an existence check: every write is an update.
    for (path, body) in [
        (
            "auth/userpass/users/bob/password",
            json!({"password": "bob-pw-34"}),
        ),
        ("ssh/roles/new", ssh_role),
        (
            "sys/policies/acl/new",
            json!({"policy": r#"path "x" { capabilities = ["read"] }"#}),
        ),
        ("auth/token/create", json!({"policies": ["default"]})),
    ] {
        let (st, v) = s.call("POST", path, Some(&adder), Some(body)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{path}: {v}");
    }
}

/// A rule on a host's name holds however the request names the host: in
/// another case, or by its ID.
#[tokio::test]
async fn a_rule_on_a_host_holds_for_every_name_of_it() {
    let s = Server::start(Backend::Sqlite).await;
    let join = otp_setup(&s).await;
    let mut ids = Vec::new();
    for (name, ip) in [("Bastion", "10.0.0.1"), ("web", "10.0.0.2")] {
        let (st, v) = enroll(
            &s,
            json!({"join_token": join, "hostname": name, "addresses": [ip]}),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        ids.push(field(&v, &["data", "host_id"]));
    }
    let ops = s
        .token_with_policy(
            "host-ops",
            r#"path "hosts/*" { capabilities = ["read", "delete"] }
               path "hosts/bastion" { capabilities = ["deny"] }"#,
        )
        .await;
    for name in ["bastion", "BASTION", "Bastion", ids[0].as_str()] {
        for method in ["GET", "DELETE"] {
            let path = format!("hosts/{name}");
            let (st, v) = s.call(method, &path, Some(&ops), None).await;
            assert_eq!(st, StatusCode::FORBIDDEN, "{method} {path}: {v}");
        }
    }
    let (st, v) = s.root("GET", "hosts/bastion", None).await;
    assert_eq!(st, StatusCode::OK, "still enrolled: {v}");
    // The other host, by its ID.
    let path = format!("hosts/{}", ids[1]);
    let (st, v) = s.call("GET", &path, Some(&ops), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = s.call("DELETE", &path, Some(&ops), None).await;
    assert!(st.is_success(), "{v}");
}

/// Sudo on token creation through a role is looked for at the role's name
/// as the ACL checked it: `create/CI` is `create/ci`, whose rule has no
/// sudo, whatever a wider rule gives the names it does not match exactly.
#[tokio::test]
async fn sudo_on_a_token_role_is_its_own_rules_in_any_case() {
    let s = Server::start(Backend::Sqlite).await;
    ok(&s, "POST", "auth/token/roles/ci", json!({})).await;
    let maker = s
        .token_with_policy(
            "ci-maker",
            r#"path "auth/token/create/*" { capabilities = ["update", "sudo"] }
               path "auth/token/create/ci" { capabilities = ["update"] }"#,
        )
        .await;
    for role in ["ci", "CI"] {
        let path = format!("auth/token/create/{role}");
        let (st, v) = s
            .call(
                "POST",
                &path,
                Some(&maker),
                Some(json!({"policies": ["superuser"], "no_parent": true})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert!(!v.to_string().contains("client_token"), "{path}: {v}");
    }
}

#[tokio::test]
async fn changing_how_everyone_logs_in_needs_sudo() {
    let s = Server::start(Backend::Sqlite).await;
    let without = s
        .token_with_policy(
            "auth-admin",
            r#"path "sys/auth" { capabilities = ["read"] }
               path "sys/auth/*" { capabilities = ["create", "update", "read", "delete"] }"#,
        )
        .await;
    let with = s
        .token_with_policy(
            "auth-root",
            r#"path "sys/auth/*" { capabilities = ["create", "update", "read", "delete", "sudo"] }"#,
        )
        .await;
    // The same tune under its other name, with rights on `sys/mounts/*`.
    let mounts = s
        .token_with_policy(
            "mounts-admin",
            r#"path "sys/mounts/*" { capabilities = ["create", "update", "read", "delete", "list"] }"#,
        )
        .await;
    for path in [
        "sys/mounts/auth/token/tune",
        "sys/mounts/auth/userpass/tune",
    ] {
        let body = json!({"max_lease_ttl": "87600h", "default_lease_ttl": "87600h"});
        let (st, v) = s.call("POST", path, Some(&mounts), Some(body)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{path} without sudo: {v}");
    }
    for (method, path, body) in [
        ("POST", "sys/auth/ci", Some(json!({"type": "jwt"}))),
        ("GET", "sys/auth/token/tune", None),
        (
            "POST",
            "sys/auth/token/tune",
            Some(json!({"max_lease_ttl": "87600h"})),
        ),
    ] {
        let (st, v) = s.call(method, path, Some(&without), body.clone()).await;
        assert_eq!(
            st,
            StatusCode::FORBIDDEN,
            "{method} {path} without sudo: {v}"
        );
        let (st, v) = s.call(method, path, Some(&with), body).await;
        assert!(st.is_success(), "{method} {path} with sudo: {st} {v}");
    }
    // Listing the methods needs no sudo.
    let (st, v) = s.call("GET", "sys/auth", Some(&without), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

/// `sys/capabilities-self` answers for the path a request would be
/// checked at: names in lower case, and a trailing `/` kept (a folder's
/// rule, as a LIST asks for it).
#[tokio::test]
async fn capabilities_are_told_for_the_path_a_request_is_checked_at() {
    let s = Server::start(Backend::Sqlite).await;
    let t = s
        .token_with_policy(
            "reader",
            r#"path "secret/" { capabilities = ["list"] }
               path "auth/userpass/users/admin" { capabilities = ["read"] }"#,
        )
        .await;
    let (st, v) = s
        .call(
            "POST",
            "sys/capabilities-self",
            Some(&t),
            Some(json!({"paths": ["secret/", "auth/userpass/users/ADMIN", "secret"]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["secret/"], json!(["list"]), "{v}");
    assert_eq!(
        v["data"]["auth/userpass/users/ADMIN"],
        json!(["read"]),
        "{v}"
    );
    assert_eq!(v["data"]["secret"], json!(["deny"]), "{v}");
    // What Vault's default policy grants, as the request's check grants it.
    let (st, v) = s
        .call(
            "POST",
            "sys/capabilities-self",
            Some(&t),
            Some(json!({"paths": ["sys/wrapping/wrap", "sys/wrapping/unwrap"]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["sys/wrapping/wrap"], json!(["update"]), "{v}");
    assert_eq!(v["data"]["sys/wrapping/unwrap"], json!(["update"]), "{v}");
}

/// A LIST that needs sudo takes it from the rule that grants the listing,
/// at the path with a trailing slash, as Vault does.
#[tokio::test]
async fn a_list_takes_sudo_from_the_rule_that_lets_it_list() {
    let s = otp_server().await;
    let (st, v) = otp_creds(&s, gatepass_tests::inproc::ROOT).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let path = "sys/leases/lookup/ssh/creds/otp";
    let lister = s
        .token_with_policy(
            "lease-lister",
            r#"path "sys/leases/lookup/ssh/creds/otp/*" { capabilities = ["list", "sudo"] }"#,
        )
        .await;
    let (st, v) = s.call("LIST", path, Some(&lister), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["keys"].as_array().map(Vec::len), Some(1), "{v}");
    // Sudo from a rule that does not grant the listing does not count.
    let split = s
        .token_with_policy(
            "lease-lister-split",
            r#"path "sys/leases/lookup/ssh/creds/otp/" { capabilities = ["list"] }
               path "sys/leases/lookup/ssh/creds/otp" { capabilities = ["sudo"] }"#,
        )
        .await;
    let (st, v) = s.call("LIST", path, Some(&split), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
}

/// A token's last use revokes it as the request begins, and with it the
/// lease that request makes: the OTP is not handed out to work on with no
/// token behind it (Vault: "Secret cannot be returned").
#[tokio::test]
async fn a_tokens_last_use_returns_no_leased_secret() {
    let s = otp_server().await;
    let v = ok(
        &s,
        "POST",
        "auth/token/create",
        json!({"policies": ["otp"], "num_uses": 1}),
    )
    .await;
    let once = client_token(&v);
    let (st, v) = otp_creds(&s, &once).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("secret cannot be returned"), "{v}");
    let left = s.core.storage.keys_with_prefix("lease/").await.unwrap();
    assert!(left.is_empty(), "leases left: {left:?}");
}
