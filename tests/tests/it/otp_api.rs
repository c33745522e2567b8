//! OTP and dynamic-key roles, `verify`, `lookup`, zero-address roles and
//! leases, in-process on SQLite and PostgreSQL.

use axum::http::StatusCode;
use gatepass_tests::inproc::{Backend, Server, BACKENDS};
use serde_json::{json, Value};

async fn setup(s: &Server) {
    for (name, body) in [
        (
            "otp",
            json!({"key_type": "otp", "default_user": "ubuntu", "allowed_users": "deploy", "cidr_list": "10.0.0.0/8,fd00::/8", "exclude_cidr_list": "10.9.0.0/16", "port": 2222, "ttl": "5m"}),
        ),
        (
            "anywhere",
            json!({"key_type": "otp", "default_user": "ops"}),
        ),
        (
            "dyn",
            json!({"key_type": "dynamic", "default_user": "app", "cidr_list": "10.0.0.0/8", "ttl": "10m", "max_ttl": "1h", "key_option_specs": "no-port-forwarding", "admin_user": "ignored", "key": "ignored"}),
        ),
        (
            "certs",
            json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*"}),
        ),
    ] {
        let (st, v) = s
            .root("POST", &format!("ssh/roles/{name}"), Some(body))
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{name}: {v}");
    }
}

async fn otp(s: &Server, body: Value) -> (StatusCode, Value) {
    s.root("POST", "ssh/creds/otp", Some(body)).await
}

#[tokio::test]
async fn otp_creds_and_verify_once() {
    for b in BACKENDS {
        let s = Server::start(b).await;
        setup(&s).await;
        let (st, v) = otp(&s, json!({"ip": "10.1.2.3"})).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let d = &v["data"];
        assert_eq!(
            (
                d["username"].clone(),
                d["ip"].clone(),
                d["port"].clone(),
                d["key_type"].clone()
            ),
            (
                json!("ubuntu"),
                json!("10.1.2.3"),
                json!(2222),
                json!("otp")
            )
        );
        let key = d["key"].as_str().unwrap().to_string();
        assert!(uuid::Uuid::parse_str(&key).is_ok(), "OTPs are UUIDs: {key}");
        assert!(v["lease_id"]
            .as_str()
            .unwrap()
            .starts_with("ssh/creds/otp/"));
        assert_eq!(v["lease_duration"], 300);
        let lease_id = v["lease_id"].as_str().unwrap().to_string();
        let lease_uuid = lease_id.rsplit('/').next().unwrap().to_string();
        // The OTP is stored only as a hash.
        let keys = s.core.storage.keys_with_prefix("").await.unwrap();
        assert!(keys.iter().all(|k| !k.contains(&key)));
        // The lease and its index entries are stored beside it.
        let lease_keys = keys.iter().filter(|k| k.contains(&lease_uuid)).count();
        assert!(lease_keys >= 2, "{keys:?}");
        // verify needs no token, answers as Vault, and works exactly once.
        let (st, v) = s
            .call("POST", "ssh/verify", None, Some(json!({"otp": key})))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(
            v["data"],
            json!({"username": "ubuntu", "ip": "10.1.2.3", "role_name": "otp"})
        );
        // The verify that took the OTP took its lease with it: nothing of
        // it is left in the storage.
        let keys = s.core.storage.keys_with_prefix("").await.unwrap();
        assert!(
            keys.iter().all(|k| !k.contains(&lease_uuid)),
            "{lease_id} left {keys:?}"
        );
        let (st, v) = s
            .call("POST", "ssh/verify", None, Some(json!({"otp": key})))
            .await;
        assert_eq!(
            (st, v),
            (
                StatusCode::BAD_REQUEST,
                json!({"errors": ["OTP not found"]})
            )
        );
        // vault-ssh-helper -verify-only.
        let (st, v) = s
            .call(
                "POST",
                "ssh/verify",
                None,
                Some(json!({"otp": "verify-echo-request"})),
            )
            .await;
        assert_eq!(
            (st, v["data"].clone()),
            (StatusCode::OK, json!({"message": "verify-echo-response"}))
        );
        // Allowed user, IPv6, zero-address role.
        assert_eq!(
            otp(&s, json!({"ip": "10.1.2.3", "username": "deploy"}))
                .await
                .0,
            StatusCode::OK
        );
        let (st, v) = otp(&s, json!({"ip": "fd00::1"})).await;
        assert_eq!(
            (st, v["data"]["ip"].clone()),
            (StatusCode::OK, json!("fd00::1"))
        );
        // A role with an empty CIDR list serves any address only once it is
        // a zero-address role.
        for (path, body, want) in [
            (
                "ssh/creds/anywhere",
                json!({"ip": "192.0.2.1"}),
                StatusCode::BAD_REQUEST,
            ),
            (
                "ssh/config/zeroaddress",
                json!({"roles": "anywhere"}),
                StatusCode::NO_CONTENT,
            ),
            (
                "ssh/creds/anywhere",
                json!({"ip": "192.0.2.1"}),
                StatusCode::OK,
            ),
        ] {
            assert_eq!(s.root("POST", path, Some(body)).await.0, want, "{path}");
        }
        let (_, v) = s.root("GET", "ssh/config/zeroaddress", None).await;
        assert_eq!(v["data"]["roles"], json!(["anywhere"]));
        let (_, v) = s
            .root("POST", "ssh/lookup", Some(json!({"ip": "10.5.5.5"})))
            .await;
        assert_eq!(v["data"]["roles"], json!(["anywhere", "dyn", "otp"]));
        let (_, v) = s
            .root("POST", "ssh/lookup", Some(json!({"ip": "10.9.1.1"})))
            .await;
        assert_eq!(
            v["data"]["roles"],
            json!(["anywhere", "dyn"]),
            "excluded from otp's range"
        );
        assert_eq!(
            s.root("DELETE", "ssh/config/zeroaddress", None).await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            s.root("GET", "ssh/config/zeroaddress", None).await.0,
            StatusCode::NOT_FOUND
        );
        // The zero-address roles are cached for creds: the delete is seen
        // by the very next request.
        assert_eq!(
            s.root(
                "POST",
                "ssh/creds/anywhere",
                Some(json!({"ip": "192.0.2.1"}))
            )
            .await
            .0,
            StatusCode::BAD_REQUEST
        );
    }
}

#[tokio::test]
async fn bad_creds_requests_get_400_and_store_nothing() {
    for b in BACKENDS {
        let s = Server::start(b).await;
        setup(&s).await;
        let any_user = json!({"key_type": "dynamic", "default_user": "app", "allowed_users": "*", "cidr_list": "10.0.0.0/8"});
        let (st, v) = s.root("POST", "ssh/roles/dynany", Some(any_user)).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
        let before = s.core.storage.keys_with_prefix("").await.unwrap();
        let cases = [
            ("ssh/creds/otp", json!({"ip": "192.168.1.1"})),
            ("ssh/creds/otp", json!({"ip": "10.9.3.4"})),
            (
                "ssh/creds/otp",
                json!({"ip": "10.1.2.3", "username": "root"}),
            ),
            (
                "ssh/creds/otp",
                json!({"ip": "10.1.2.3", "username": "a\nb"}),
            ),
            // A dynamic key's user is a file name on the host: no longer
            // than a local user name can be.
            (
                "ssh/creds/dynany",
                json!({"ip": "10.0.0.7", "username": "a".repeat(33)}),
            ),
            ("ssh/creds/otp", json!({"ip": "10.1.2"})),
            ("ssh/creds/otp", json!({"ip": "not-an-ip"})),
            ("ssh/creds/otp", json!({})),
            ("ssh/creds/otp", json!({"ip": ["10.1.2.3"]})),
            ("ssh/creds/nope", json!({"ip": "10.1.2.3"})),
            ("ssh/creds/certs", json!({"ip": "10.1.2.3"})),
            (
                "ssh/sign/otp",
                json!({"public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMLzyYuPqzYUfUlCpbDP/HMWZsSH5XQydZZzoyAGOvmL x"}),
            ),
            ("ssh/roles/bad", json!({"key_type": "otp"})),
            (
                "ssh/roles/bad",
                json!({"key_type": "dynamic", "default_user": "a", "key_option_specs": "x\nssh-ed25519 AAAA"}),
            ),
            (
                "ssh/roles/bad",
                json!({"key_type": "otp", "default_user": "a", "cidr_list": "10.0.0.0/33"}),
            ),
            (
                "ssh/roles/bad",
                json!({"key_type": "otp", "default_user": "a", "port": 70000}),
            ),
            ("ssh/lookup", json!({"ip": "nope"})),
            ("ssh/config/zeroaddress", json!({"roles": "bad role"})),
        ];
        for (path, body) in cases {
            let (st, v) = s.root("POST", path, Some(body.clone())).await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{path} {body}: {v}");
        }
        assert_eq!(
            s.core.storage.keys_with_prefix("").await.unwrap(),
            before,
            "a refused request stored something"
        );
    }
}

/// An IPv4 address written as IPv6 (`::ffff:10.9.3.4`) is the IPv4 address
/// for every check, as the host and Vault read it: an excluded IPv4 block
/// excludes it, and the OTP is issued for the IPv4 form.
#[tokio::test]
async fn an_ipv4_address_written_as_ipv6_is_checked_as_itself() {
    for b in BACKENDS {
        let s = Server::start(b).await;
        let (st, v) = s
            .root(
                "POST",
                "ssh/roles/wide",
                Some(json!({"key_type": "otp", "default_user": "ops",
                    "cidr_list": "0.0.0.0/0,::/0",
                    "exclude_cidr_list": "10.9.0.0/16,::ffff:10.8.0.0/112"})),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
        for excluded in [
            "::ffff:10.9.3.4",
            "::FFFF:10.9.3.4",
            "::ffff:a09:304",
            "::ffff:10.8.1.1",
        ] {
            let (st, v) = s
                .root("POST", "ssh/creds/wide", Some(json!({"ip": excluded})))
                .await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{excluded}: {v}");
            assert!(
                v["errors"][0]
                    .as_str()
                    .unwrap()
                    .contains("exclude_cidr_list"),
                "{excluded}: {v}"
            );
        }
        let (st, v) = s
            .root(
                "POST",
                "ssh/creds/wide",
                Some(json!({"ip": "::ffff:10.1.2.3"})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["data"]["ip"], "10.1.2.3", "{v}");
        let (_, v) = s
            .root("POST", "ssh/lookup", Some(json!({"ip": "::ffff:10.9.1.1"})))
            .await;
        assert_eq!(v["data"]["roles"], json!([]), "{v}");
    }
}

#[tokio::test]
async fn expired_otps_never_verify_and_failures_are_rate_limited() {
    let s = Server::start(gatepass_tests::inproc::Backend::Sqlite).await;
    setup(&s).await;
    let (_, v) = otp(&s, json!({"ip": "10.1.2.3"})).await;
    let key = v["data"]["key"].as_str().unwrap().to_string();
    s.clock.advance(301);
    let (st, _) = s
        .call("POST", "ssh/verify", None, Some(json!({"otp": key})))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "expired OTP verified");
    // The sweeper removes expired leases and their OTPs.
    let (_, v) = otp(&s, json!({"ip": "10.1.2.3"})).await;
    let lease = v["lease_id"].as_str().unwrap().to_string();
    s.clock.advance(301);
    let n = gatepass_server::leases::sweep(&s.core, s.clock.now(), 100)
        .await
        .unwrap();
    assert!(n >= 1);
    let (st, _) = s
        .root(
            "POST",
            "sys/leases/lookup",
            Some(json!({"lease_id": lease})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(s
        .core
        .storage
        .keys_with_prefix("mount/")
        .await
        .unwrap()
        .iter()
        .all(|k| !k.contains("/otp/")));
    // Failed verifies from one address: 429 after the limit; a good OTP from
    // another address still works.
    let (_, v) = otp(&s, json!({"ip": "10.1.2.3"})).await;
    let good = v["data"]["key"].as_str().unwrap().to_string();
    let mut saw_429 = false;
    for i in 0..40 {
        let (st, _) = s
            .call(
                "POST",
                "ssh/verify",
                None,
                Some(json!({"otp": uuid::Uuid::new_v4().to_string()})),
            )
            .await;
        if st == StatusCode::TOO_MANY_REQUESTS {
            assert!(i >= 30, "limited too early at {i}");
            saw_429 = true;
            break;
        }
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }
    assert!(saw_429, "no 429 after 40 failures");
    let body = json!({"otp": good}).to_string().into_bytes();
    let (st, v) = s
        .call_from(
            "127.0.0.2:4000".parse().unwrap(),
            "POST",
            "ssh/verify",
            None,
            body,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

/// The storage keys of the OTPs bound to no host, sorted.
async fn unbound_otp_keys(s: &Server) -> Vec<String> {
    let mut keys: Vec<String> = s
        .core
        .storage
        .keys_with_prefix("")
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.contains("/otp/-/"))
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn otps_are_stored_in_the_order_they_were_issued_and_one_from_before_still_verifies() {
    for b in BACKENDS {
        let s = Server::start(b).await;
        setup(&s).await;
        // Each OTP carries its issuing millisecond, and is stored under it:
        // the OTPs of one batch share a page of the index.
        let mut otps = Vec::new();
        for i in 0..20 {
            if i % 5 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            }
            let (st, v) = otp(&s, json!({"ip": "10.1.2.3"})).await;
            assert_eq!(st, StatusCode::OK, "{v}");
            otps.push(v["data"]["key"].as_str().unwrap().to_string());
        }
        let millis: Vec<String> = otps
            .iter()
            .map(|o| o.replace('-', "")[..12].to_string())
            .collect();
        let keys = unbound_otp_keys(&s).await;
        let stored: Vec<String> = keys
            .iter()
            .map(|k| k.rsplit('/').nth(1).unwrap().to_string())
            .collect();
        assert_eq!(stored.len(), 20, "{keys:?}");
        let mut issued = millis.clone();
        issued.sort();
        assert_eq!(stored, issued, "{keys:?}");
        assert_eq!(issued, millis, "OTPs issued later sort later: {otps:?}");
        assert!(millis.windows(2).any(|w| w[0] < w[1]), "{otps:?}");

        // An OTP issued before OTPs carried their millisecond (a random,
        // version 4 UUID) was stored under its hash alone: it still
        // verifies once, and takes its lease with it.
        let (st, v) = otp(&s, json!({"ip": "10.1.2.3"})).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let lease_uuid = v["lease_id"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        let new_key = unbound_otp_keys(&s)
            .await
            .into_iter()
            .find(|k| !keys.contains(k))
            .unwrap();
        let entry: Value = s.core.storage.get(&new_key).await.unwrap().unwrap();
        let old = uuid::Uuid::new_v4().to_string();
        let prefix = &new_key[..new_key.find("/otp/-/").unwrap()];
        let old_key = format!("{prefix}/otp/-/{}", s.core.hasher.hash(&old));
        s.core.storage.put(&old_key, &entry).await.unwrap();
        assert!(s.core.storage.delete(&new_key).await.unwrap());
        let (st, v) = s
            .call("POST", "ssh/verify", None, Some(json!({"otp": old})))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["data"]["username"], "ubuntu", "{v}");
        let left = s.core.storage.keys_with_prefix("").await.unwrap();
        assert!(
            left.iter()
                .all(|k| k != &old_key && !k.contains(&lease_uuid)),
            "{left:?}"
        );
        let (st, _) = s
            .call("POST", "ssh/verify", None, Some(json!({"otp": old})))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn lease_ids_of_successive_creds_sort_in_the_order_they_were_issued() {
    // So that the leases written together land next to each other in the
    // storage (one page of it per batch rather than one per lease).
    let s = Server::start(Backend::Sqlite).await;
    setup(&s).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let (st, v) = otp(&s, json!({"ip": "10.1.2.3"})).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        ids.push(v["lease_id"].as_str().unwrap().to_string());
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids);
    // Each still revocable by its id.
    let (st, v) = s
        .root(
            "POST",
            "sys/leases/revoke",
            Some(json!({"lease_id": ids[7]})),
        )
        .await;
    assert!(st.is_success(), "{st}: {v}");
    let (st, v) = s
        .root(
            "POST",
            "sys/leases/lookup",
            Some(json!({"lease_id": ids[7]})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn concurrent_verifies_of_one_otp_succeed_exactly_once() {
    for b in BACKENDS {
        let s = std::sync::Arc::new(Server::start(b).await);
        setup(&s).await;
        for round in 0..3u8 {
            // Each round from its own address: 15 losers a round stay
            // below the per-address limit on failed verifies.
            let from: std::net::SocketAddr = format!("127.0.1.{round}:4000").parse().unwrap();
            let (_, v) = otp(&s, json!({"ip": "10.1.2.3"})).await;
            let key = v["data"]["key"].as_str().unwrap().to_string();
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let s = s.clone();
                let key = key.clone();
                tasks.push(tokio::spawn(async move {
                    let body = json!({"otp": key}).to_string().into_bytes();
                    s.call_from(from, "POST", "ssh/verify", None, body).await.0
                }));
            }
            let mut ok = 0;
            for t in tasks {
                match t.await.unwrap() {
                    StatusCode::OK => ok += 1,
                    StatusCode::BAD_REQUEST => {}
                    other => panic!("unexpected status {other}"),
                }
            }
            assert_eq!(ok, 1, "{b:?}: {ok} verifies succeeded");
        }
    }
}

#[tokio::test]
async fn dynamic_keys_and_leases() {
    for b in BACKENDS {
        let s = Server::start(b).await;
        setup(&s).await;
        let (st, v) = s
            .root("POST", "ssh/creds/dyn", Some(json!({"ip": "10.0.0.7"})))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["data"]["key_type"], "dynamic");
        assert_eq!(v["renewable"], true);
        assert!(v["data"]["key"]
            .as_str()
            .unwrap()
            .contains("OPENSSH PRIVATE KEY"));
        let lease = v["lease_id"].as_str().unwrap().to_string();
        let m = gatepass_server::mounts::get(&s.core, "ssh")
            .await
            .unwrap()
            .unwrap();
        let keys = gatepass_server::ssh::creds::dynamic_keys(&s.core, &m, s.clock.now())
            .await
            .unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            (
                keys[0].username.as_str(),
                keys[0].ip.as_str(),
                keys[0].key_option_specs.as_str()
            ),
            ("app", "10.0.0.7", "no-port-forwarding")
        );
        assert!(keys[0].public_key.starts_with("ssh-ed25519 "));
        // Lookup and renew within max_ttl.
        let (_, v) = s
            .root(
                "POST",
                "sys/leases/lookup",
                Some(json!({"lease_id": lease})),
            )
            .await;
        assert_eq!(
            (v["data"]["ttl"].clone(), v["data"]["renewable"].clone()),
            (json!(600), json!(true))
        );
        s.clock.advance(300);
        let (st, v) = s
            .root(
                "POST",
                "sys/leases/renew",
                Some(json!({"lease_id": lease, "increment": "2h"})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(
            v["lease_duration"], 3300,
            "capped at max_ttl (1h from issue)"
        );
        let keys = gatepass_server::ssh::creds::dynamic_keys(&s.core, &m, s.clock.now())
            .await
            .unwrap();
        assert_eq!(keys[0].expire_time, s.clock.now() + 3300);
        // OTP leases are not renewable.
        let (_, v) = otp(&s, json!({"ip": "10.1.2.3"})).await;
        let otp_lease = v["lease_id"].as_str().unwrap().to_string();
        assert_eq!(
            s.root(
                "POST",
                "sys/leases/renew",
                Some(json!({"lease_id": otp_lease}))
            )
            .await
            .0,
            StatusCode::BAD_REQUEST
        );
        // Revoking the lease removes the key from the hosts' desired state.
        assert_eq!(
            s.root(
                "POST",
                "sys/leases/revoke",
                Some(json!({"lease_id": lease}))
            )
            .await
            .0,
            StatusCode::NO_CONTENT
        );
        assert!(
            gatepass_server::ssh::creds::dynamic_keys(&s.core, &m, s.clock.now())
                .await
                .unwrap()
                .is_empty()
        );
        // revoke-prefix takes every lease of a role (and its OTP).
        let (_, v) = otp(&s, json!({"ip": "10.1.2.3"})).await;
        let key = v["data"]["key"].as_str().unwrap().to_string();
        assert_eq!(
            s.root("POST", "sys/leases/revoke-prefix/ssh/creds/otp", None)
                .await
                .0,
            StatusCode::NO_CONTENT
        );
        let (st, _) = s
            .call("POST", "ssh/verify", None, Some(json!({"otp": key})))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "revoked OTP still verified");
        let (st, _) = s
            .root("LIST", "sys/leases/lookup/ssh/creds/otp", None)
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }
}

/// Each answer, read as the `gatepass_api::ssh` type the CLI, hostd and
/// the PAM helper read it as, exactly (no field missing or added).
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> T {
    let t: T = gatepass_api::data_of(v).unwrap_or_else(|| panic!("not the API type: {v}"));
    assert_eq!(
        serde_json::to_value(&t).unwrap(),
        v["data"],
        "fields differ"
    );
    t
}

#[tokio::test]
async fn answers_are_the_api_types() {
    use gatepass_api::ssh::{
        CredKind, Credential, IssuedKey, Revoked, RoleNames, SignedKey, Verified,
        VERIFY_ECHO_REQUEST,
    };
    let s = Server::start(Backend::Sqlite).await;
    setup(&s).await;
    let (_, v) = otp(&s, json!({"ip": "10.1.2.3"})).await;
    let c: Credential = typed(&v);
    assert_eq!(
        (c.key_type, c.port, c.installed),
        (CredKind::Otp, 2222, None)
    );
    let (st, v) = s
        .call("POST", "ssh/verify", None, Some(json!({"otp": c.key})))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    match typed::<Verified>(&v) {
        Verified::Otp(i) => assert_eq!(
            (i.username, i.ip, i.role_name),
            ("ubuntu".into(), "10.1.2.3".into(), "otp".into())
        ),
        other => panic!("{other:?}"),
    }
    let (_, v) = s
        .call(
            "POST",
            "ssh/verify",
            None,
            Some(json!({"otp": VERIFY_ECHO_REQUEST})),
        )
        .await;
    assert_eq!(typed::<Verified>(&v), Verified::echo());
    let (_, v) = s
        .root(
            "POST",
            "ssh/creds/dyn",
            Some(json!({"ip": "10.0.0.7", "wait": "1s"})),
        )
        .await;
    let c: Credential = typed(&v);
    assert_eq!((c.key_type, c.installed), (CredKind::Dynamic, Some(false)));
    let (_, v) = s
        .root("POST", "ssh/lookup", Some(json!({"ip": "10.0.0.7"})))
        .await;
    assert_eq!(typed::<RoleNames>(&v).roles, ["dyn", "otp"]);
    s.root(
        "POST",
        "ssh/config/zeroaddress",
        Some(json!({"roles": "anywhere"})),
    )
    .await;
    let (_, v) = s.root("GET", "ssh/config/zeroaddress", None).await;
    assert_eq!(typed::<RoleNames>(&v).roles, ["anywhere"]);
    s.root("POST", "ssh/config/ca", Some(json!({}))).await;
    let (_, public) = gatepass_tests::ssh::keypair(s.dir.path(), "user", "ed25519", None);
    let (_, v) = s
        .root(
            "POST",
            "ssh/sign/certs",
            Some(json!({"public_key": public, "valid_principals": "alice"})),
        )
        .await;
    let signed: SignedKey = typed(&v);
    assert!(signed
        .signed_key
        .starts_with("ssh-ed25519-cert-v01@openssh.com "));
    let (_, v) = s
        .root(
            "POST",
            "ssh/issue/certs",
            Some(json!({"valid_principals": "alice", "key_type": "ed25519"})),
        )
        .await;
    let issued: IssuedKey = typed(&v);
    assert_eq!(issued.private_key_type, "ed25519");
    let (_, v) = s
        .root(
            "POST",
            "ssh/revoke",
            Some(json!({"serial_number": signed.serial_number})),
        )
        .await;
    assert_eq!(typed::<Revoked>(&v).revoked, [signed.serial_number]);
}

#[tokio::test]
async fn a_dynamic_key_is_stored_with_its_lease_or_not_at_all() {
    let s = Server::start(Backend::Sqlite).await;
    setup(&s).await;
    // The database refuses lease rows (as a full disk or a failing
    // database would refuse a write half-way through).
    let db = rusqlite::Connection::open(s.dir.path().join("gp.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER no_leases BEFORE INSERT ON entries WHEN NEW.key LIKE 'lease/%' \
         BEGIN SELECT RAISE(ABORT, 'no leases today'); END;",
    )
    .unwrap();
    let (st, v) = s
        .root("POST", "ssh/creds/dyn", Some(json!({"ip": "10.0.0.7"})))
        .await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    // No key was left waiting for its host without a lease to end it.
    db.execute_batch("DROP TRIGGER no_leases").unwrap();
    let m = gatepass_server::mounts::get(&s.core, "ssh")
        .await
        .unwrap()
        .unwrap();
    let keys = gatepass_server::ssh::creds::dynamic_keys(&s.core, &m, s.clock.now())
        .await
        .unwrap();
    assert!(keys.is_empty(), "a key without a lease: {keys:?}");
    // Once the database takes writes again, key and lease come together.
    let (st, v) = s
        .root("POST", "ssh/creds/dyn", Some(json!({"ip": "10.0.0.7"})))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, _) = s
        .root(
            "POST",
            "sys/leases/lookup",
            Some(json!({"lease_id": v["lease_id"]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let keys = gatepass_server::ssh::creds::dynamic_keys(&s.core, &m, s.clock.now())
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewals_racing_a_revoke_never_bring_the_lease_or_key_back() {
    use std::sync::Arc;
    let s = Arc::new(Server::start(BACKENDS[0]).await);
    setup(&s).await;
    let m = gatepass_server::mounts::get(&s.core, "ssh")
        .await
        .unwrap()
        .unwrap();
    for round in 0..25 {
        let (st, v) = s
            .root("POST", "ssh/creds/dyn", Some(json!({"ip": "10.0.0.7"})))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let lease = v["lease_id"].as_str().unwrap().to_string();
        let renewals: Vec<_> = (0..6)
            .map(|_| {
                let (s, lease) = (s.clone(), lease.clone());
                tokio::spawn(async move {
                    for _ in 0..3 {
                        s.root(
                            "POST",
                            "sys/leases/renew",
                            Some(json!({"lease_id": lease, "increment": "20m"})),
                        )
                        .await;
                    }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        let (st, v) = s
            .root(
                "POST",
                "sys/leases/revoke",
                Some(json!({"lease_id": lease})),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
        for r in renewals {
            r.await.unwrap();
        }
        assert!(
            gatepass_server::leases::get(&s.core, &lease)
                .await
                .unwrap()
                .is_none(),
            "round {round}: the revoked lease came back"
        );
        assert!(
            gatepass_server::ssh::creds::dynamic_keys(&s.core, &m, s.clock.now())
                .await
                .unwrap()
                .is_empty(),
            "round {round}: the revoked key came back"
        );
    }
    // Renewing a revoked lease fails and leaves nothing behind: no lease,
    // no expiry entry for the sweeper, no key.
    let (_, v) = s
        .root("POST", "ssh/creds/dyn", Some(json!({"ip": "10.0.0.7"})))
        .await;
    let lease = v["lease_id"].as_str().unwrap().to_string();
    s.root(
        "POST",
        "sys/leases/revoke",
        Some(json!({"lease_id": lease})),
    )
    .await;
    let (st, _) = s
        .root(
            "POST",
            "sys/leases/renew",
            Some(json!({"lease_id": lease, "increment": "20m"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(gatepass_server::leases::get(&s.core, &lease)
        .await
        .unwrap()
        .is_none());
    let left: Vec<String> = s
        .core
        .storage
        .keys_with_prefix("lease-exp/")
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.ends_with(&lease))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
