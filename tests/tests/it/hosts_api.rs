//! The hosts registry through the API (in-process): join tokens,
//! enrollment, the desired state and its long-poll, host-key signing,
//! acknowledgements, login mappings, and bad input.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use gatepass_tests::inproc::{Backend, Server};
use gatepass_tests::ssh::keypair;
use serde_json::{json, Value};

async fn ok(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (st, v) = s.root(method, path, Some(body)).await;
    assert!(st.is_success(), "{method} {path}: {st} {v}");
    v
}

async fn setup(s: &Server) -> String {
    ok(s, "POST", "ssh/config/ca", json!({})).await;
    ok(s, "POST", "sys/mounts/ssh-host", json!({"type": "ssh"})).await;
    ok(s, "POST", "ssh-host/config/ca", json!({})).await;
    ok(s, "POST", "ssh-host/roles/hosts", json!({"key_type": "ca", "allow_host_certificates": true, "allowed_domains": "example.com,10.0.0.0", "allow_subdomains": true, "allow_bare_domains": true})).await;
    let v = ok(s, "POST", "hosts/join-tokens", json!({"ttl": "10m", "num_uses": 1, "host_mount": "ssh-host", "host_role": "hosts", "principals": "mapped"})).await;
    v["data"]["join_token"].as_str().unwrap().to_string()
}

async fn enroll(s: &Server, join: &str, host_key: &str) -> (StatusCode, Value) {
    s.call("POST", "hosts/enroll", None, Some(json!({"join_token": join, "hostname": "web1.example.com", "addresses": ["10.0.0.7", "fd00::7"], "host_keys": [host_key]}))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_state_sign_and_mappings() {
    let s = Arc::new(Server::start(Backend::Sqlite).await);
    let join = setup(&s).await;
    let (_, host_pub) = keypair(s.dir.path(), "host", "ed25519", None);
    let (st, v) = enroll(&s, &join, &host_pub).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let host_token = v["data"]["host_token"].as_str().unwrap().to_string();
    let host_id = v["data"]["host_id"].as_str().unwrap().to_string();
    assert_eq!(v["data"]["principals"], "mapped");
    // A one-use join token enrolls one host.
    let (st, _) = enroll(&s, &join, &host_pub).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // The host token reads its own state, nothing else.
    let (st, v) = s
        .call("GET", "hosts/self/state", Some(&host_token), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let state = v["data"].clone();
    let (_, ca) = s.call("GET", "ssh/public_key", None, None).await;
    assert_eq!(state["user_ca_keys"], ca);
    assert!(!state["krl"].as_str().unwrap().is_empty());
    assert_eq!(state["principals"], json!({}));
    assert_eq!(
        s.call("GET", "sys/mounts", Some(&host_token), None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.call(
            "POST",
            "hosts/join-tokens",
            Some(&host_token),
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    // Same state, same index; a mapping changes it.
    let index = state["index"].as_u64().unwrap();
    let (_, v) = s
        .call("GET", "hosts/self/state", Some(&host_token), None)
        .await;
    assert_eq!(v["data"]["index"].as_u64().unwrap(), index);
    ok(
        &s,
        "POST",
        "hosts/mappings/deploy",
        json!({"principals": "alice,ops"}),
    )
    .await;
    let (st, v) = s
        .call(
            "GET",
            &format!("hosts/self/state?index={index}&wait=5s"),
            Some(&host_token),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_ne!(v["data"]["index"].as_u64().unwrap(), index);
    assert_eq!(v["data"]["principals"], json!({"deploy": ["alice", "ops"]}));
    let index = v["data"]["index"].as_u64().unwrap();
    // Long-poll: held until a change (a revocation) arrives.
    let s2 = s.clone();
    let t2 = host_token.clone();
    let poll = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let (_, v) = s2
            .call(
                "GET",
                &format!("hosts/self/state?index={index}&wait=30s"),
                Some(&t2),
                None,
            )
            .await;
        (started.elapsed(), v)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    if poll.is_finished() {
        panic!(
            "the long-poll answered before anything changed: {:?}",
            poll.await.unwrap().1
        );
    }
    ok(
        &s,
        "POST",
        "ssh/roles/u",
        json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*"}),
    )
    .await;
    let (_, user_pub) = keypair(s.dir.path(), "user", "ed25519", None);
    let v = ok(
        &s,
        "POST",
        "ssh/sign/u",
        json!({"public_key": user_pub, "valid_principals": "alice"}),
    )
    .await;
    ok(
        &s,
        "POST",
        "ssh/revoke",
        json!({"serial_number": v["data"]["serial_number"]}),
    )
    .await;
    let (elapsed, v) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap()
        .unwrap();
    assert!(
        elapsed < Duration::from_secs(5),
        "the change took {elapsed:?}"
    );
    assert_ne!(v["data"]["index"].as_u64().unwrap(), index);
    // Host key signing: only the enrolled key, principals the role allows.
    let (st, v) = s
        .call(
            "POST",
            "hosts/self/sign-host-key",
            Some(&host_token),
            Some(json!({"public_key": host_pub})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let l =
        gatepass_tests::ssh::describe_cert(s.dir.path(), v["data"]["signed_key"].as_str().unwrap());
    assert!(
        l.contains("host certificate") && l.contains("web1.example.com") && !l.contains("fd00::7"),
        "{l}"
    );
    let (st, _) = s
        .call(
            "POST",
            "hosts/self/sign-host-key",
            Some(&host_token),
            Some(json!({"public_key": user_pub})),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "a key the host did not enroll with"
    );
    // Dynamic keys for the host's addresses reach its state; ack marks them.
    ok(
        &s,
        "POST",
        "ssh/roles/dyn",
        json!({"key_type": "dynamic", "default_user": "app", "cidr_list": "10.0.0.0/8"}),
    )
    .await;
    let v = ok(&s, "POST", "ssh/creds/dyn", json!({"ip": "10.0.0.7"})).await;
    let lease = v["lease_id"].as_str().unwrap().to_string();
    let v = ok(&s, "POST", "ssh/creds/dyn", json!({"ip": "10.0.0.8"})).await;
    let others = v["lease_id"].as_str().unwrap().to_string();
    let (_, v) = s
        .call("GET", "hosts/self/state", Some(&host_token), None)
        .await;
    let keys = v["data"]["dynamic_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "only the key for this host's address");
    assert_eq!(keys[0]["lease_id"], lease.as_str());
    assert_eq!(keys[0]["user"], "app");
    // creds with `wait` returns once the host acknowledges.
    let s3 = s.clone();
    let waiting = tokio::spawn(async move {
        s3.root(
            "POST",
            "ssh/creds/dyn",
            Some(json!({"ip": "10.0.0.7", "wait": "10s"})),
        )
        .await
    });
    let mut acked = false;
    for _ in 0..50 {
        let (_, v) = s
            .call("GET", "hosts/self/state", Some(&host_token), None)
            .await;
        let leases: Vec<String> = v["data"]["dynamic_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["lease_id"].as_str().unwrap().to_string())
            .collect();
        if leases.len() == 2 {
            let (st, _) = s
                .call(
                    "POST",
                    "hosts/self/ack",
                    Some(&host_token),
                    Some(json!({"index": v["data"]["index"], "installed": leases})),
                )
                .await;
            assert_eq!(st, StatusCode::NO_CONTENT);
            acked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(acked);
    let (st, v) = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["data"]["installed"], true, "{v}");
    // A host marks only its own keys, and what it names stores nothing
    // else: another host's key, leases made up.
    let before = s.core.storage.keys_with_prefix("").await.unwrap();
    let mut named: Vec<String> = (0..50)
        .map(|i| format!("ssh/creds/dyn/made-up-{i}"))
        .collect();
    named.push(others.clone());
    let (st, v) = s
        .call(
            "POST",
            "hosts/self/ack",
            Some(&host_token),
            Some(json!({"index": 1, "installed": named})),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(s.core.storage.keys_with_prefix("").await.unwrap(), before);
    assert!(!gatepass_server::hosts::installed(&s.core, &others)
        .await
        .unwrap());
    assert!(gatepass_server::hosts::installed(&s.core, &lease)
        .await
        .unwrap());
    // Marks an older version kept apart go at the next start.
    let old_mark = "hosts/installed/ssh/creds/dyn/old";
    s.core
        .storage
        .put(old_mark, &json!({"host_id": host_id, "time": 1}))
        .await
        .unwrap();
    gatepass_server::hosts::migrate(&s.core).await.unwrap();
    assert!(s
        .core
        .storage
        .get::<Value>(old_mark)
        .await
        .unwrap()
        .is_none());
    // Admin views, and unenrolling revokes the host token.
    let (_, v) = s.root("LIST", "hosts", None).await;
    assert_eq!(v["data"]["keys"], json!([host_id]));
    let (_, v) = s.root("GET", &format!("hosts/{host_id}"), None).await;
    assert_eq!(v["data"]["hostname"], "web1.example.com");
    let info: gatepass_api::hosts::HostInfo = gatepass_api::data_of(&v).unwrap();
    assert_eq!(
        serde_json::to_value(&info).unwrap(),
        v["data"],
        "HostInfo's fields"
    );
    assert_eq!(info.addresses, ["10.0.0.7", "fd00::7"]);
    assert_eq!(
        s.root("DELETE", &format!("hosts/{host_id}"), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.call("GET", "hosts/self/state", Some(&host_token), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn bad_enrollments_and_mappings_are_refused() {
    let s = Server::start(Backend::Sqlite).await;
    let join = setup(&s).await;
    let (_, host_pub) = keypair(s.dir.path(), "host", "ed25519", None);
    let before = s
        .core
        .storage
        .keys_with_prefix("hosts/host/")
        .await
        .unwrap();
    for body in [
        json!({"join_token": "gpj.nope", "hostname": "a", "addresses": [], "host_keys": []}),
        json!({"join_token": join, "hostname": "bad host", "addresses": [], "host_keys": []}),
        json!({"join_token": join, "hostname": "a\nb", "addresses": [], "host_keys": []}),
        json!({"join_token": join, "hostname": "a", "addresses": ["10.0.0.300"], "host_keys": []}),
        json!({"join_token": join, "hostname": "a", "addresses": [], "host_keys": ["ssh-ed25519 garbage"]}),
        json!({"join_token": join, "hostname": "a", "addresses": 10, "host_keys": []}),
    ] {
        let (st, v) = s
            .call("POST", "hosts/enroll", None, Some(body.clone()))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    assert_eq!(
        s.core
            .storage
            .keys_with_prefix("hosts/host/")
            .await
            .unwrap(),
        before
    );
    // The join token was not spent by the refused attempts.
    assert_eq!(enroll(&s, &join, &host_pub).await.0, StatusCode::OK);
    // An expired join token.
    let v = ok(&s, "POST", "hosts/join-tokens", json!({"ttl": "1m"})).await;
    let j = v["data"]["join_token"].as_str().unwrap().to_string();
    s.clock.advance(61);
    assert_eq!(enroll(&s, &j, &host_pub).await.0, StatusCode::BAD_REQUEST);
    for (path, body) in [
        ("hosts/mappings/Root", json!({"principals": "a"})),
        ("hosts/mappings/a%2Fb", json!({"principals": "a"})),
        ("hosts/mappings/deploy", json!({"principals": "a b"})),
        ("hosts/mappings/deploy", json!({"principals": "a,b\nc"})),
        ("hosts/join-tokens", json!({"user_mount": "nope"})),
        ("hosts/join-tokens", json!({"principals": "sometimes"})),
        ("hosts/join-tokens", json!({"host_mount": "ssh-host"})),
    ] {
        let (st, v) = s.root("POST", path, Some(body.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path} {body}: {v}");
    }
}

#[tokio::test]
async fn otps_bound_to_an_enrolled_host_verify_only_there() {
    let s = Server::start(Backend::Sqlite).await;
    ok(&s, "POST", "ssh/config/ca", json!({})).await;
    ok(
        &s,
        "POST",
        "ssh/roles/otp",
        json!({"key_type": "otp", "default_user": "ubuntu", "cidr_list": "10.0.0.0/8"}),
    )
    .await;
    let mut tokens = Vec::new();
    for (name, addr) in [("web1", "10.0.0.7"), ("web2", "10.0.0.8")] {
        let v = ok(&s, "POST", "hosts/join-tokens", json!({})).await;
        let join = v["data"]["join_token"].as_str().unwrap();
        let (st, v) = s.call("POST", "hosts/enroll", None, Some(json!({"join_token": join, "hostname": name, "addresses": ["192.168.50.1", addr]}))).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        tokens.push(v["data"]["host_token"].as_str().unwrap().to_string());
    }
    // Named by hostname: the IP is the host's address inside the role's CIDRs.
    let v = ok(&s, "POST", "ssh/creds/otp", json!({"host": "web1"})).await;
    assert_eq!(v["data"]["ip"], "10.0.0.7");
    let otp = v["data"]["key"].as_str().unwrap().to_string();
    let verify = |token: Option<String>| {
        let s = &s;
        let otp = otp.clone();
        async move {
            s.call(
                "POST",
                "ssh/verify",
                token.as_deref(),
                Some(json!({"otp": otp})),
            )
            .await
        }
    };
    assert_eq!(
        verify(None).await.0,
        StatusCode::BAD_REQUEST,
        "a bound OTP verified without the host's token"
    );
    assert_eq!(
        verify(Some(tokens[1].clone())).await.0,
        StatusCode::BAD_REQUEST,
        "another host verified it"
    );
    let (st, v) = verify(Some(tokens[0].clone())).await;
    assert_eq!(
        st,
        StatusCode::OK,
        "the wrong attempts must not burn it: {v}"
    );
    assert_eq!(v["data"]["ip"], "10.0.0.7");
    assert_eq!(
        verify(Some(tokens[0].clone())).await.0,
        StatusCode::BAD_REQUEST,
        "verified twice"
    );
    // A host presenting its token verifies only OTPs bound to it.
    let v = ok(&s, "POST", "ssh/creds/otp", json!({"ip": "10.0.0.7"})).await;
    let unbound = v["data"]["key"].as_str().unwrap().to_string();
    let (st, _) = s
        .call(
            "POST",
            "ssh/verify",
            Some(&tokens[0]),
            Some(json!({"otp": unbound})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = s
        .call("POST", "ssh/verify", None, Some(json!({"otp": unbound})))
        .await;
    assert_eq!(st, StatusCode::OK);
    // Unknown host, or an IP that is not the host's.
    assert_eq!(
        s.root("POST", "ssh/creds/otp", Some(json!({"host": "nope"})))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.root(
            "POST",
            "ssh/creds/otp",
            Some(json!({"host": "web1", "ip": "10.0.0.8"}))
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    // A bad token on verify is ignored, as Vault ignores tokens on
    // unauthenticated paths: it binds no host, so a bound OTP stays out of
    // reach and the helper's echo request is answered.
    let v = ok(&s, "POST", "ssh/creds/otp", json!({"host": "web1"})).await;
    let bound = v["data"]["key"].as_str().unwrap().to_string();
    let with_bogus = |otp: &str| {
        s.call(
            "POST",
            "ssh/verify",
            Some("gps.bogus"),
            Some(json!({ "otp": otp })),
        )
    };
    assert_eq!(with_bogus(&bound).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(with_bogus("verify-echo-request").await.0, StatusCode::OK);
    let (st, _) = s
        .call(
            "POST",
            "ssh/verify",
            Some(&tokens[0]),
            Some(json!({"otp": bound})),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::OK,
        "the bound OTP survived the bogus attempt"
    );
}

#[tokio::test]
async fn a_host_reads_its_own_record() {
    let s = Server::start(Backend::Sqlite).await;
    let join = setup(&s).await;
    let (_, host_pub) = keypair(s.dir.path(), "host", "ed25519", None);
    let (_, v) = enroll(&s, &join, &host_pub).await;
    let host_token = v["data"]["host_token"].as_str().unwrap().to_string();
    let host_id = v["data"]["host_id"].as_str().unwrap().to_string();
    let (st, v) = s.call("GET", "hosts/self", Some(&host_token), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["host_id"], host_id.as_str());
    assert_eq!(v["data"]["hostname"], "web1.example.com");
    // Its own record only: other hosts' stay the admin's.
    assert_eq!(
        s.call("GET", &format!("hosts/{host_id}"), Some(&host_token), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.call("LIST", "hosts", Some(&host_token), None).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn an_unedited_older_host_policy_is_brought_up_to_date_at_start() {
    use gatepass_server::hosts::{HOST_POLICY, HOST_POLICY_FORMER_TEXTS, HOST_POLICY_TEXT};
    use gatepass_server::policies::{self, StoredPolicy};
    let s = Server::start(Backend::Sqlite).await;
    let key = format!("policy/acl/{HOST_POLICY}");
    // As an older server stored it.
    let old = StoredPolicy {
        name: HOST_POLICY.into(),
        text: HOST_POLICY_FORMER_TEXTS[0].into(),
    };
    s.core.storage.put(&key, &old).await.unwrap();
    policies::ensure_default(&s.core).await.unwrap();
    let (_, v) = s
        .root("GET", &format!("sys/policies/acl/{HOST_POLICY}"), None)
        .await;
    assert_eq!(v["data"]["policy"], HOST_POLICY_TEXT, "{v}");
    // A policy the admin edited is theirs.
    let edited = "path \"hosts/self/*\" {\n  capabilities = [\"read\"]\n}\n";
    let (st, v) = s
        .root(
            "POST",
            &format!("sys/policies/acl/{HOST_POLICY}"),
            Some(json!({ "policy": edited })),
        )
        .await;
    assert!(st.is_success(), "{v}");
    policies::ensure_default(&s.core).await.unwrap();
    let (_, v) = s
        .root("GET", &format!("sys/policies/acl/{HOST_POLICY}"), None)
        .await;
    assert_eq!(v["data"]["policy"], edited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_polls_racing_an_unenroll_never_bring_the_host_back() {
    let s = Arc::new(Server::start(Backend::Sqlite).await);
    setup(&s).await;
    let (_, host_pub) = keypair(s.dir.path(), "host", "ed25519", None);
    for round in 0..25 {
        let v = ok(&s, "POST", "hosts/join-tokens", json!({})).await;
        let join = v["data"]["join_token"].as_str().unwrap().to_string();
        let (_, v) = enroll(&s, &join, &host_pub).await;
        let host_token = v["data"]["host_token"].as_str().unwrap().to_string();
        let host_id = v["data"]["host_id"].as_str().unwrap().to_string();
        // A minute on: every poll records that the host was seen.
        s.clock.advance(61);
        let polls: Vec<_> = (0..6)
            .map(|_| {
                let (s, t) = (s.clone(), host_token.clone());
                tokio::spawn(
                    async move { s.call("GET", "hosts/self/state", Some(&t), None).await.0 },
                )
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(
            s.root("DELETE", &format!("hosts/{host_id}"), None).await.0,
            StatusCode::NO_CONTENT
        );
        for p in polls {
            let st = p.await.unwrap();
            assert!(
                st == StatusCode::OK
                    || st == StatusCode::FORBIDDEN
                    || st == StatusCode::BAD_REQUEST,
                "{st}"
            );
        }
        assert_eq!(
            s.root("GET", &format!("hosts/{host_id}"), None).await.0,
            StatusCode::NOT_FOUND,
            "round {round}: the unenrolled host came back"
        );
        // And a poll afterwards is refused and changes nothing.
        assert_eq!(
            s.call("GET", "hosts/self/state", Some(&host_token), None)
                .await
                .0,
            StatusCode::FORBIDDEN
        );
        assert!(s
            .core
            .storage
            .keys_with_prefix("hosts/host/")
            .await
            .unwrap()
            .is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_wait_sees_an_ack_taken_by_another_server() {
    // Two servers on one PostgreSQL: the user asks one for a dynamic key
    // and waits; the host's hostd acknowledges it through the other.
    let (a, b) = Server::start_pair().await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let join = setup(&a).await;
    let (_, host_pub) = keypair(b.dir.path(), "host", "ed25519", None);
    let (st, v) = enroll(&b, &join, &host_pub).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let host_token = v["data"]["host_token"].as_str().unwrap().to_string();
    ok(
        &a,
        "POST",
        "ssh/roles/dyn",
        json!({"key_type": "dynamic", "default_user": "app", "cidr_list": "10.0.0.0/8"}),
    )
    .await;
    let a2 = a.clone();
    let waiting = tokio::spawn(async move {
        let (st, v) = a2
            .root(
                "POST",
                "ssh/creds/dyn",
                Some(json!({"ip": "10.0.0.7", "wait": "30s"})),
            )
            .await;
        (st, v, std::time::Instant::now())
    });
    let mut acked_at = None;
    for _ in 0..100 {
        let (_, v) = b
            .call("GET", "hosts/self/state", Some(&host_token), None)
            .await;
        let leases: Vec<Value> = v["data"]["dynamic_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["lease_id"].clone())
            .collect();
        if !leases.is_empty() {
            let (st, _) = b
                .call(
                    "POST",
                    "hosts/self/ack",
                    Some(&host_token),
                    Some(json!({"index": v["data"]["index"], "installed": leases})),
                )
                .await;
            assert_eq!(st, StatusCode::NO_CONTENT);
            acked_at = Some(std::time::Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked_at = acked_at.expect("the key reached the host's state");
    let (st, v, answered_at) = tokio::time::timeout(Duration::from_secs(40), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["installed"], true, "{v}");
    // The other server's ack is seen by the next check (about 1 s), not
    // when the wait runs out.
    let took = answered_at.saturating_duration_since(acked_at);
    assert!(took < Duration::from_secs(5), "the answer took {took:?}");
}

/// A dynamic key asked for an enrolled host by name goes to that host
/// alone, even when other hosts share the address it was issued for (a
/// Docker bridge's 172.17.0.1 is on many): their states do not carry it,
/// and their acknowledgements do not mark it installed.
#[tokio::test]
async fn a_dynamic_key_asked_for_a_host_by_name_goes_to_that_host_alone() {
    let s = Server::start(Backend::Sqlite).await;
    ok(&s, "POST", "ssh/config/ca", json!({})).await;
    ok(
        &s,
        "POST",
        "ssh/roles/dyn",
        json!({"key_type": "dynamic", "default_user": "app", "cidr_list": "0.0.0.0/0"}),
    )
    .await;
    let join = ok(&s, "POST", "hosts/join-tokens", json!({"num_uses": 0})).await["data"]
        ["join_token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut tokens = Vec::new();
    for (name, own) in [("web1", "10.0.0.1"), ("web2", "10.0.0.2")] {
        let (st, v) = s
            .call(
                "POST",
                "hosts/enroll",
                None,
                Some(
                    json!({"join_token": join, "hostname": name, "addresses": ["172.17.0.1", own]}),
                ),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        tokens.push(v["data"]["host_token"].as_str().unwrap().to_string());
    }
    let v = ok(&s, "POST", "ssh/creds/dyn", json!({"host": "web1"})).await;
    let lease = v["lease_id"].as_str().unwrap().to_string();
    let keys_of = |v: &Value| -> Vec<Value> {
        v["data"]["dynamic_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["lease_id"].clone())
            .collect()
    };
    let (_, web1) = s
        .call("GET", "hosts/self/state", Some(&tokens[0]), None)
        .await;
    assert_eq!(keys_of(&web1), vec![json!(lease)], "{web1}");
    let (_, web2) = s
        .call("GET", "hosts/self/state", Some(&tokens[1]), None)
        .await;
    assert!(keys_of(&web2).is_empty(), "web2 got web1's key: {web2}");
    // web2 says it installed it: not taken.
    let (st, _) = s
        .call(
            "POST",
            "hosts/self/ack",
            Some(&tokens[1]),
            Some(json!({"index": web2["data"]["index"], "installed": [lease]})),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let key = s
        .core
        .storage
        .keys_with_prefix("mount/")
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.contains("/dynkey/"))
        .collect::<Vec<_>>();
    assert_eq!(key.len(), 1, "{key:?}");
    for k in key {
        let d: gatepass_server::ssh::creds::DynamicKey =
            s.core.storage.get(&k).await.unwrap().unwrap();
        assert_eq!(d.installed_on, None, "{k}: marked by another host");
    }
}

/// Join tokens are listed by accessor (never the token), with what is left
/// of them; a spent or expired one drops out of the list, and a revoked
/// one enrolls no host. Listing and revoking are the admin's: a host's
/// token may do neither.
#[tokio::test]
async fn join_tokens_are_listed_by_accessor_and_revoked() {
    let s = Server::start(Backend::Sqlite).await;
    let join = setup(&s).await;
    let two = ok(
        &s,
        "POST",
        "hosts/join-tokens",
        json!({"ttl": "1h", "num_uses": 2}),
    )
    .await;
    let two_token = two["data"]["join_token"].as_str().unwrap().to_string();
    let two_acc = two["data"]["accessor"].as_str().unwrap().to_string();
    let short = ok(&s, "POST", "hosts/join-tokens", json!({"ttl": "5m"})).await;
    let short_acc = short["data"]["accessor"].as_str().unwrap().to_string();

    let (st, list) = s.root("LIST", "hosts/join-tokens", None).await;
    assert_eq!(st, StatusCode::OK, "{list}");
    // Soonest to expire first; no token text anywhere.
    let keys: Vec<&str> = list["data"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 3, "{list}");
    assert_eq!(keys[0], short_acc);
    assert!(keys.contains(&two_acc.as_str()));
    let text = list.to_string();
    assert!(
        !text.contains(&two_token) && !text.contains(&join),
        "{text}"
    );
    assert_eq!(list["data"]["key_info"][&two_acc]["uses_left"], 2);
    assert_eq!(list["data"]["key_info"][&two_acc]["user_mount"], "ssh");

    // The one-use token is spent by an enrollment: gone from the list.
    let (_, host_pub) = keypair(s.dir.path(), "host", "ed25519", None);
    let (st, v) = enroll(&s, &join, &host_pub).await;
    assert!(st.is_success(), "{v}");
    let host_token = v["data"]["host_token"].as_str().unwrap().to_string();
    // Past the short one's expiry: gone too.
    s.clock.advance(6 * 60);
    let (_, list) = s.root("LIST", "hosts/join-tokens", None).await;
    assert_eq!(list["data"]["keys"], json!([two_acc]), "{list}");

    // A host's token may not list or revoke them.
    for (method, path) in [
        ("LIST", "hosts/join-tokens".to_string()),
        ("DELETE", format!("hosts/join-tokens/{two_acc}")),
    ] {
        let (st, v) = s.call(method, &path, Some(&host_token), None).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{method} {path}: {v}");
    }

    // Revoked: it enrolls no host, and the list is empty (404, as Vault's
    // LIST answers no keys).
    let (st, _) = s
        .root("DELETE", &format!("hosts/join-tokens/{two_acc}"), None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, other_pub) = keypair(s.dir.path(), "host2", "ed25519", None);
    let (st, v) = s
        .call(
            "POST",
            "hosts/enroll",
            None,
            Some(json!({"join_token": two_token, "hostname": "web2.example.com", "host_keys": [other_pub]})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        s.root("LIST", "hosts/join-tokens", None).await.0,
        StatusCode::NOT_FOUND
    );
    let (st, v) = s
        .root("DELETE", &format!("hosts/join-tokens/{two_acc}"), None)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}

/// On PostgreSQL as on SQLite, a host's requests find its token and its
/// record in the server's memory, not in the database: with 100,000 hosts
/// polling, those were two database reads per poll. Memory is trusted
/// because every change to them is announced: a host token revoked
/// through the other server is refused here at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_is_read_from_memory_on_postgres_and_dropped_when_another_server_says_so() {
    let (a, b) = Server::start_pair().await;
    let join = setup(&a).await;
    let (_, host_pub) = keypair(a.dir.path(), "host", "ed25519", None);
    let (st, v) = enroll(&a, &join, &host_pub).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let host_token = v["data"]["host_token"].as_str().unwrap().to_string();
    let host_id = v["data"]["host_id"].as_str().unwrap().to_string();
    let (st, v) = a
        .call("GET", "hosts/self/state", Some(&host_token), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");

    // The record goes from the database behind both servers' backs
    // (nothing announced): A, which read it, still has it in memory; B
    // reads the database and finds the host gone.
    let url = a.storage_url().to_string();
    gatepass_tests::pg::exec(
        &url,
        &format!("DELETE FROM entries WHERE key = 'hosts/host/{host_id}'"),
    );
    let (st, v) = a
        .call("GET", "hosts/self/state", Some(&host_token), None)
        .await;
    assert_eq!(st, StatusCode::OK, "A read the database: {v}");
    let (st, v) = b
        .call("GET", "hosts/self/state", Some(&host_token), None)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("no longer enrolled"), "{v}");

    // The host token revoked through B: B announces it, and A refuses the
    // token at once rather than when its copy would have expired.
    let (st, v) = b
        .root(
            "POST",
            "auth/token/revoke",
            Some(json!({"token": host_token})),
        )
        .await;
    assert!(st.is_success(), "{st} {v}");
    let t = std::time::Instant::now();
    loop {
        let (st, v) = a
            .call("GET", "hosts/self/state", Some(&host_token), None)
            .await;
        if st == StatusCode::FORBIDDEN {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "A still serves a revoked host token: {st} {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `gatepass_host_states_total{kind="KIND"}` from `sys/metrics`: hosts'
/// states computed (`computed`), handed out as computed before
/// (`reused`), and host-independent views built from storage (`view`).
async fn host_states(s: &Server, kind: &str) -> u64 {
    counted(s, "host_states", kind).await
}

/// `gatepass_FAMILY_total{kind="KIND"}` from `sys/metrics`.
async fn counted(s: &Server, family: &str, kind: &str) -> u64 {
    let (st, v) = s.root("GET", "sys/metrics", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let text = v.as_str().unwrap_or_default();
    let prefix = format!("gatepass_{family}_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// How many times hosts' states were had, computed or reused: one per look
/// of a poll at its state.
async fn looks(s: &Server) -> u64 {
    host_states(s, "computed").await + host_states(s, "reused").await
}

/// Waits (10 s at most) until hosts' states were had `n` times in all.
async fn until_looks(s: &Server, n: u64) -> u64 {
    for _ in 0..200 {
        let now = looks(s).await;
        if now >= n {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("hosts' states were had {} times, not {n}", looks(s).await);
}

/// `n` hosts enrolled with one join token, none with a dynamic key: every
/// one of them gets the same state. Returns their host tokens.
async fn enroll_fleet(s: &Server, n: usize) -> Vec<String> {
    ok(s, "POST", "ssh/config/ca", json!({})).await;
    ok(
        s,
        "POST",
        "ssh/roles/u",
        json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*"}),
    )
    .await;
    let v = ok(
        s,
        "POST",
        "hosts/join-tokens",
        json!({"ttl": "10m", "num_uses": 0}),
    )
    .await;
    let join = v["data"]["join_token"].as_str().unwrap().to_string();
    let mut tokens = Vec::new();
    for i in 0..n {
        let (st, v) = s
            .call(
                "POST",
                "hosts/enroll",
                None,
                Some(json!({"join_token": join, "hostname": format!("sim-{i}"), "addresses": [format!("10.9.0.{}", i + 1)], "host_keys": []})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        tokens.push(v["data"]["host_token"].as_str().unwrap().to_string());
    }
    tokens
}

/// Signs a user certificate on `s` and revokes it: every host's KRL, and
/// so its state, changes.
async fn revoke_one(s: &Server) {
    let (_, user_pub) = keypair(
        s.dir.path(),
        &format!("user-{}", rand_tag()),
        "ed25519",
        None,
    );
    let v = ok(
        s,
        "POST",
        "ssh/sign/u",
        json!({"public_key": user_pub, "valid_principals": "alice"}),
    )
    .await;
    ok(
        s,
        "POST",
        "ssh/revoke",
        json!({"serial_number": v["data"]["serial_number"]}),
    )
    .await;
}

/// A new name for each key pair made in a test.
fn rand_tag() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Starts a long-poll for `token` at `index`; answers (time taken, body).
fn spawn_poll(
    s: &Arc<Server>,
    token: &str,
    index: u64,
) -> tokio::task::JoinHandle<(Duration, Value)> {
    let (s, token) = (s.clone(), token.to_string());
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let (st, v) = s
            .call(
                "GET",
                &format!("hosts/self/state?index={index}&wait=30s"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        (started.elapsed(), v)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_with_the_same_state_are_answered_from_one_computation() {
    let s = Arc::new(Server::start(Backend::Sqlite).await);
    let tokens = enroll_fleet(&s, 30).await;

    // Thirty hosts ask for their state: one is computed, the rest reuse it.
    let computed = host_states(&s, "computed").await;
    let reused = host_states(&s, "reused").await;
    let mut index = None;
    for t in &tokens {
        let (st, v) = s.call("GET", "hosts/self/state", Some(t), None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let i = v["data"]["index"].as_u64().unwrap();
        assert_eq!(
            *index.get_or_insert(i),
            i,
            "hosts with one state, one index"
        );
    }
    let index = index.unwrap();
    assert_eq!(host_states(&s, "computed").await - computed, 1);
    assert_eq!(host_states(&s, "reused").await - reused, 29);

    // All thirty wait: each looks at its state once as it starts (found
    // computed), then, idle, at nothing: no view is built nor state
    // computed or looked at over more than a second (the polls once looked
    // at their state every second).
    let looked = looks(&s).await;
    let polls: Vec<_> = tokens.iter().map(|t| spawn_poll(&s, t, index)).collect();
    let looked = until_looks(&s, looked + 30).await;
    let views = host_states(&s, "view").await;
    let computed = host_states(&s, "computed").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        host_states(&s, "view").await,
        views,
        "idle polls rebuilt the view"
    );
    assert_eq!(host_states(&s, "computed").await, computed);
    assert_eq!(looks(&s).await, looked, "idle polls looked at their state");

    // A change that leaves their state as it was wakes them (a policy
    // written): each looks once more and finds the state one of them
    // computed again, the same, and they wait on.
    ok(
        &s,
        "POST",
        "sys/policies/acl/unrelated",
        json!({"policy": "path \"secret/*\" { capabilities = [\"read\"] }"}),
    )
    .await;
    until_looks(&s, looked + 30).await;
    assert!(
        polls.iter().all(|p| !p.is_finished()),
        "a poll answered although its state did not change"
    );
    assert_eq!(host_states(&s, "view").await - views, 1);
    assert_eq!(host_states(&s, "computed").await - computed, 1);

    // A revocation changes it: every poll answers with the new state,
    // computed once per change the revocation writes, not once per host.
    let computed = host_states(&s, "computed").await;
    revoke_one(&s).await;
    let mut new_index = None;
    for p in polls {
        let (elapsed, v) = tokio::time::timeout(Duration::from_secs(10), p)
            .await
            .expect("the revocation reaches every poll")
            .unwrap();
        assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
        let i = v["data"]["index"].as_u64().unwrap();
        assert_ne!(i, index);
        assert_eq!(*new_index.get_or_insert(i), i);
    }
    let n = host_states(&s, "computed").await - computed;
    assert!(n < 10, "{n} states computed for 30 hosts sharing one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_sharing_a_state_are_each_on_record_with_it_redacted_once() {
    let s = Server::start(Backend::Sqlite).await;
    let tokens = enroll_fleet(&s, 5).await;
    let ca_key = s.root("GET", "ssh/public_key", None).await.1;
    let ca_key = ca_key.as_str().unwrap().trim().to_string();
    assert!(ca_key.starts_with("ssh-ed25519 "), "{ca_key}");

    // Five hosts ask for the same state: each answer holds it whole.
    let redacted = host_states(&s, "redacted").await;
    let mut answers = Vec::new();
    for t in &tokens {
        let (st, v) = s.call("GET", "hosts/self/state", Some(t), None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["data"]["user_ca_keys"].as_str().unwrap().trim(), ca_key);
        assert!(v["request_id"].as_str().is_some_and(|id| !id.is_empty()));
        assert_eq!(v["warnings"], Value::Null);
        answers.push(v);
    }
    assert!(answers.windows(2).all(|w| w[0]["data"] == w[1]["data"]));
    assert_ne!(answers[0]["request_id"], answers[1]["request_id"]);

    // Every answer is on record with the state as the audit log writes
    // any answer's data: strings HMAC'd, numbers as they are. Its audit
    // form was made once for the five.
    let audit = s.audit_text();
    let entries: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["type"] == "response" && e["request"]["path"] == "hosts/self/state")
        .collect();
    assert_eq!(entries.len(), 5, "{audit}");
    for (e, a) in entries.iter().zip(&answers) {
        assert_eq!(e["request"]["id"], a["request_id"]);
        assert_eq!(e["status"], 200);
        let data = &e["response"]["data"];
        assert_eq!(data["index"], a["data"]["index"]);
        assert!(data["user_ca_keys"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:"));
        assert!(data["krl"].as_str().unwrap().starts_with("hmac-sha256:"));
        assert_eq!(data, &entries[0]["response"]["data"]);
    }
    assert!(!audit.contains(&ca_key[12..]), "the CA key in clear");
    assert_eq!(host_states(&s, "redacted").await - redacted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_server_reaches_a_poll_on_the_other_also_after_its_listener_was_cut() {
    let (a, b) = Server::start_pair().await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let tokens = enroll_fleet(&a, 1).await;
    let token = &tokens[0];
    // B listens for A's announcements from shortly after it opened: wait
    // until one gets through.
    b.hears(&a).await;

    // The host waits on B; a revocation made on A reaches it through the
    // database's announcement, well before the polls' own re-check (the
    // revocations are a key no server caches: their announcement named
    // nothing and woke nobody, so only that re-check once found it).
    let (_, v) = b.call("GET", "hosts/self/state", Some(token), None).await;
    let index = v["data"]["index"].as_u64().unwrap();
    let poll = spawn_poll(&b, token, index);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "answered before anything changed");
    revoke_one(&a).await;
    let (elapsed, v) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("A's revocation reaches the poll waiting on B")
        .unwrap();
    let index2 = v["data"]["index"].as_u64().unwrap();
    assert_ne!(index2, index);
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // The connections the servers listen on are cut, and A revokes again
    // at once: the announcement may be lost, but B's poll still has it
    // within seconds (B looks again when it notices the loss and when it
    // listens again).
    let poll = spawn_poll(&b, token, index2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "answered before anything changed");
    let cut = gatepass_tests::pg::exec(
        a.storage_url(),
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND (query LIKE 'LISTEN%' OR query LIKE '%listening for changes%') \
         AND pid <> pg_backend_pid()",
    );
    assert_ne!(cut, "0", "no listening connection found to cut");
    revoke_one(&a).await;
    let (_, v) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("A's revocation reaches the poll on B after B's listener was cut")
        .unwrap();
    assert_ne!(v["data"]["index"].as_u64().unwrap(), index2);
}

/// The connections the servers listen on hang without an error (their
/// backends stopped, as behind a half-open TCP connection): a token
/// revoked on A is refused on B, which had it cached, within seconds, not
/// when the cache's own time limit runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_server_is_refused_on_the_other_when_its_listener_hangs() {
    let (a, b) = Server::start_pair().await;
    b.hears(&a).await;
    let v = ok(
        &a,
        "POST",
        "auth/token/create",
        json!({"policies": ["default"]}),
    )
    .await;
    let token = v["auth"]["client_token"].as_str().unwrap().to_string();
    let lookup = || b.call("GET", "auth/token/lookup-self", Some(&token), None);
    assert_eq!(lookup().await.0, StatusCode::OK, "B has it cached now");

    /// Stopped backends, continued when dropped (also on a failure).
    struct Stopped(Vec<String>);
    impl Drop for Stopped {
        fn drop(&mut self) {
            for pid in &self.0 {
                let _ = std::process::Command::new("kill")
                    .args(["-CONT", pid])
                    .status();
            }
        }
    }
    let pids = gatepass_tests::pg::exec(
        a.storage_url(),
        "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity \
         WHERE datname = current_database() AND (query LIKE 'LISTEN%' OR query LIKE '%listening for changes%') \
         AND pid <> pg_backend_pid()",
    );
    let stopped = Stopped(pids.split_whitespace().map(str::to_string).collect());
    assert!(!stopped.0.is_empty(), "no listening connection found");
    for pid in &stopped.0 {
        let st = std::process::Command::new("kill")
            .args(["-STOP", pid])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let (st, v) = a
        .root("POST", "auth/token/revoke", Some(json!({"token": token})))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (st, _) = lookup().await;
        if st == StatusCode::FORBIDDEN {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B still serves the revoked token: {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stopped);
}

/// hostd's poll after an apply acknowledges it (`applied=N`), as a
/// `hosts/self/ack {index: N}` would: the server shows the index applied
/// before the poll is answered, on SQLite and PostgreSQL. A bad value is
/// refused and notes nothing.
#[tokio::test]
async fn a_poll_acknowledges_the_state_it_names_applied() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let s = Server::start(backend).await;
        let host = enroll_fleet(&s, 1).await.remove(0);
        let (st, v) = s.call("GET", "hosts/self/state", Some(&host), None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let index = v["data"]["index"].as_u64().unwrap();
        let id = host_id(&s, &host).await;
        let (_, v) = s.root("GET", &format!("hosts/{id}"), None).await;
        assert!(v["data"]["applied_index"].is_null(), "{v}");

        // A bad field refuses the whole poll: nothing is acknowledged,
        // the good `applied` of a poll with a bad `wait` or `index` neither.
        for bad in [
            "applied=-1".to_string(),
            "applied=ten".to_string(),
            format!("applied={index}&wait=soon"),
            format!("applied={index}&index=last"),
        ] {
            let path = format!("hosts/self/state?{bad}");
            let (st, v) = s.call("GET", &path, Some(&host), None).await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
        }
        let (_, v) = s.root("GET", &format!("hosts/{id}"), None).await;
        assert!(v["data"]["applied_index"].is_null(), "{v}");

        // The poll that follows the apply says so, and waits as any poll.
        let (st, v) = s
            .call(
                "GET",
                &format!("hosts/self/state?index={index}&wait=1s&applied={index}"),
                Some(&host),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let (_, v) = s.root("GET", &format!("hosts/{id}"), None).await;
        assert_eq!(v["data"]["applied_index"].as_u64(), Some(index), "{v}");
        assert_eq!(v["data"]["state_index"].as_u64(), Some(index), "{v}");
    }
}

/// A poll's acknowledgement is noted in memory: the server that took it
/// shows it at once, the next flush writes it beside the record, and the
/// other server shows it from then on. The same index said again notes
/// nothing. A `hosts/self/ack` stored after a note is not overwritten by
/// that older note, and a host unenrolled on the other server before the
/// flush gets nothing written back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polls_acknowledgement_is_written_by_the_next_flush() {
    use gatepass_server::hosts::applied;
    let (a, b) = Server::start_pair().await;
    let token = enroll_fleet(&a, 1).await.remove(0);
    let id = host_id(&a, &token).await;
    let key = format!("hosts/applied/{id}");
    let (st, v) = a.call("GET", "hosts/self/state", Some(&token), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let index = v["data"]["index"].as_u64().unwrap();
    let shown = |s| applied_shown(s, &id);
    let poll_acking = |n| poll_acking(&a, &token, n);

    poll_acking(index).await;
    poll_acking(index).await;
    assert_eq!(shown(&a).await, json!(index));
    assert_eq!(shown(&b).await, Value::Null, "not written yet");
    assert_eq!(stored(&a, &key).await, None);
    assert_eq!(counted(&a, "host_bookkeeping", "applied_noted").await, 1);

    assert_eq!(applied::flush(&a.core).await.unwrap(), 1);
    assert_eq!(applied::flush(&a.core).await.unwrap(), 0);
    assert_eq!(stored(&a, &key).await.unwrap()["index"], json!(index));
    assert_eq!(shown(&b).await, json!(index));
    assert_eq!(counted(&a, "host_bookkeeping", "applied_written").await, 1);

    // A note, then an acknowledgement stored past the notes: the flush
    // has nothing older to write over it.
    poll_acking(index + 1).await;
    let st = ack(&a, &token, json!({ "index": index + 2 })).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(applied::flush(&a.core).await.unwrap(), 0);
    assert_eq!(stored(&a, &key).await.unwrap()["index"], json!(index + 2));
    assert_eq!(shown(&a).await, json!(index + 2));

    // Noted on one server, the host removed on the other: nothing of it
    // is written back.
    poll_acking(index + 3).await;
    let (st, v) = b.root("DELETE", &format!("hosts/{id}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(applied::flush(&a.core).await.unwrap(), 0);
    assert_eq!(stored(&a, &key).await, None);
}

/// The state index `GET hosts/<id>` shows applied.
async fn applied_shown(s: &Server, id: &str) -> Value {
    ok(s, "GET", &format!("hosts/{id}"), json!({})).await["data"]["applied_index"].clone()
}

/// A poll (answered at once) acknowledging index `n`.
async fn poll_acking(s: &Server, token: &str, n: u64) {
    let path = format!("hosts/self/state?applied={n}");
    let (st, v) = s.call("GET", &path, Some(token), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

/// A host's ID, asked with its own token.
async fn host_id(s: &Server, token: &str) -> String {
    let (st, v) = s.call("GET", "hosts/self", Some(token), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["data"]["host_id"].as_str().unwrap().to_string()
}

/// A stored entry as its JSON, read from the database.
async fn stored(s: &Server, key: &str) -> Option<Value> {
    s.core.storage.get::<Value>(key).await.unwrap()
}

async fn poll_now(s: &Server, token: &str) {
    let (st, v) = s.call("GET", "hosts/self/state", Some(token), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

/// A host's polls cost it no storage: its last-seen time is noted in
/// memory at most once a minute and written beside its record, with every
/// other host's, by the next flush. The record is never rewritten for it,
/// and the API shows the newest time before and after the flush, also from
/// a server that never saw the host (here: the same storage restarted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_host_is_seen_in_memory_and_its_time_written_beside_its_record() {
    use gatepass_server::hosts::seen;
    for backend in gatepass_tests::inproc::BACKENDS {
        let s = Server::start(backend).await;
        let token = enroll_fleet(&s, 1).await.remove(0);
        let id = host_id(&s, &token).await;
        let record_key = format!("hosts/host/{id}");
        let seen_key = format!("hosts/seen/{id}");
        let record = stored(&s, &record_key).await;
        let shown = |v: &Value| v["data"]["last_seen"].as_str().unwrap().to_string();
        let t0 = s.clock.now();

        // Within the minute after enrollment: nothing to note.
        for _ in 0..5 {
            s.clock.advance(10);
            poll_now(&s, &token).await;
        }
        assert_eq!(counted(&s, "host_bookkeeping", "seen_noted").await, 0);

        // A minute on: the first poll notes it, the next ones within that
        // minute do not, and nothing is written yet.
        s.clock.advance(20);
        for _ in 0..6 {
            poll_now(&s, &token).await;
            s.clock.advance(5);
        }
        assert_eq!(counted(&s, "host_bookkeeping", "seen_noted").await, 1);
        assert_eq!(
            stored(&s, &record_key).await,
            record,
            "{backend:?}: the record was rewritten"
        );
        assert_eq!(stored(&s, &seen_key).await, None);
        let v = ok(&s, "GET", &format!("hosts/{id}"), json!({})).await;
        assert_eq!(shown(&v), gatepass_server::clock::rfc3339(t0 + 70));

        // The flush writes it once, beside the record.
        assert_eq!(seen::flush(&s.core).await.unwrap(), 1);
        assert_eq!(seen::flush(&s.core).await.unwrap(), 0);
        assert_eq!(counted(&s, "host_bookkeeping", "seen_written").await, 1);
        assert_eq!(
            stored(&s, &seen_key).await,
            Some(json!({ "time": t0 + 70 }))
        );
        assert_eq!(stored(&s, &record_key).await, record);
        let s = s.restart().await;
        let v = ok(&s, "GET", &format!("hosts/{id}"), json!({})).await;
        assert_eq!(
            shown(&v),
            gatepass_server::clock::rfc3339(t0 + 70),
            "{backend:?}"
        );
    }
}

/// A host unenrolled after a poll noted its time, before the flush: the
/// flush writes nothing for it, also when the poll, which read the host's
/// record before the unenroll, notes the time only after it (or another
/// server, whose memory the unenroll does not reach, holds it). One whose
/// time was written first has it deleted with it. Either way nothing of
/// the host is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unenrolled_hosts_last_seen_time_is_not_written_back() {
    use gatepass_server::hosts::seen;
    for backend in gatepass_tests::inproc::BACKENDS {
        let s = Server::start(backend).await;
        let tokens = enroll_fleet(&s, 2).await;
        let (early, late) = (host_id(&s, &tokens[0]).await, host_id(&s, &tokens[1]).await);
        s.clock.advance(61);
        poll_now(&s, &tokens[0]).await;
        assert_eq!(seen::flush(&s.core).await.unwrap(), 1);
        poll_now(&s, &tokens[1]).await;
        for id in [&early, &late] {
            let (st, v) = s.root("DELETE", &format!("hosts/{id}"), None).await;
            assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
        }
        // The poll that raced the unenroll notes its time now.
        assert!(s.core.hosts_seen.note(&late, 0, s.clock.now()));
        assert_eq!(seen::flush(&s.core).await.unwrap(), 0, "{backend:?}");
        let left: Vec<String> = s
            .core
            .storage
            .keys_with_prefix("hosts/")
            .await
            .unwrap()
            .into_iter()
            .filter(|k| k.contains(&early) || k.contains(&late))
            .collect();
        assert!(left.is_empty(), "{backend:?}: {left:?}");
        for id in [&early, &late] {
            assert_eq!(
                s.root("GET", &format!("hosts/{id}"), None).await.0,
                StatusCode::NOT_FOUND
            );
        }
    }
}

/// An acknowledgement stores the state index beside the host's record, and
/// before it is answered: the other server shows it at once. The record
/// itself, which both servers keep in memory, is not rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_state_is_stored_beside_the_record_before_the_answer() {
    let (a, b) = Server::start_pair().await;
    let token = enroll_fleet(&a, 1).await.remove(0);
    let id = host_id(&a, &token).await;
    let record_key = format!("hosts/host/{id}");
    let record = stored(&a, &record_key).await;
    let (st, v) = a.call("GET", "hosts/self/state", Some(&token), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let index = v["data"]["index"].as_u64().unwrap();
    assert_eq!(
        ack(&a, &token, json!({ "index": index })).await,
        StatusCode::NO_CONTENT
    );
    let v = ok(&b, "GET", &format!("hosts/{id}"), json!({})).await;
    assert_eq!(v["data"]["applied_index"], json!(index), "{v}");
    assert_eq!(v["data"]["state_index"], json!(index), "{v}");
    assert_eq!(
        stored(&a, &record_key).await,
        record,
        "the record was rewritten"
    );
    assert_eq!(counted(&a, "host_bookkeeping", "applied_written").await, 1);
    // Files the host repaired still go into the record, shown by both.
    let drift = json!({ "index": index, "drift": ["/etc/ssh/gatepass/user_ca.pub"] });
    assert_eq!(ack(&a, &token, drift).await, StatusCode::NO_CONTENT);
    let v = ok(&b, "GET", &format!("hosts/{id}"), json!({})).await;
    assert_eq!(
        v["data"]["drift"]["paths"],
        json!(["/etc/ssh/gatepass/user_ca.pub"]),
        "{v}"
    );
    // Unenrolled: its acknowledgements are refused and store nothing.
    let (st, v) = b.root("DELETE", &format!("hosts/{id}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let st = ack(&a, &token, json!({ "index": index })).await;
    assert!(st.is_client_error(), "{st}");
    assert_eq!(stored(&a, &format!("hosts/applied/{id}")).await, None);
}

/// A host's acknowledgement; its answer's status.
async fn ack(s: &Server, token: &str, body: Value) -> StatusCode {
    let (st, v) = s
        .call("POST", "hosts/self/ack", Some(token), Some(body))
        .await;
    assert!(
        st == StatusCode::NO_CONTENT || st.is_client_error(),
        "{st} {v}"
    );
    st
}
