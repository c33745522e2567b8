//! Use-limited credentials under concurrency: of many requests arriving at
//! once, exactly as many as the limit allows succeed — tokens (`num_uses`),
//! AppRole secret IDs (`secret_id_num_uses`) and host join tokens
//! (`num_uses`), on SQLite and on two servers sharing one PostgreSQL (in
//! process, and as two `gatepass-server serve` processes).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use gatepass_api::Client;
use gatepass_tests::inproc::{Backend, Server, BACKENDS};
use gatepass_tests::{serve_pair_on_postgres, ServeProcess};
use serde_json::{json, Map, Value};

/// Requests sent together in every race.
const AT_ONCE: usize = 20;

/// One server on SQLite (the only kind of deployment it allows); two
/// sharing one database on PostgreSQL.
async fn servers(backend: Backend) -> Vec<Arc<Server>> {
    match backend {
        Backend::Sqlite => vec![Arc::new(Server::start(backend).await)],
        Backend::Postgres => {
            let (a, b) = Server::start_pair().await;
            vec![Arc::new(a), Arc::new(b)]
        }
    }
}

async fn ok(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (st, v) = s.root(method, path, Some(body)).await;
    assert!(st.is_success(), "{method} {path}: {st} {v}");
    v
}

/// Sends [`AT_ONCE`] copies of one request, spread over the servers and
/// released together from spawned tasks; returns the answers of those that
/// succeeded. The others must have been refused as a client error, not
/// failed.
async fn race(
    servers: &[Arc<Server>],
    method: &'static str,
    path: &'static str,
    token: Option<&str>,
    body: Option<Value>,
) -> Vec<Value> {
    let start = Arc::new(tokio::sync::Barrier::new(AT_ONCE));
    let mut tasks = Vec::new();
    for i in 0..AT_ONCE {
        let server = servers[i % servers.len()].clone();
        let start = start.clone();
        let token = token.map(str::to_string);
        // `{i}` in the body becomes this request's number (host names are
        // unique, so each enrollment names its own host).
        let body = body
            .as_ref()
            .map(|b| b.to_string().replace("{i}", &i.to_string()))
            .unwrap_or_default();
        // Each from an address of its own, as separate clients would be.
        let client: SocketAddr = format!("127.0.0.{}:40000", i + 2).parse().unwrap();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            server
                .call_from(client, method, path, token.as_deref(), body.into_bytes())
                .await
        }));
    }
    let mut wins = Vec::new();
    for t in tasks {
        let (st, v) = t.await.unwrap();
        if st.is_success() {
            wins.push(v);
        } else {
            assert!(
                st == StatusCode::BAD_REQUEST || st == StatusCode::FORBIDDEN,
                "{method} {path}: {st} {v}"
            );
        }
    }
    wins
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_use_limited_token_serves_exactly_its_uses() {
    for backend in BACKENDS {
        let servers = servers(backend).await;
        for limit in [1u64, 3] {
            let v = ok(
                &servers[0],
                "POST",
                "auth/token/create",
                json!({ "num_uses": limit }),
            )
            .await;
            let token = v["auth"]["client_token"].as_str().unwrap().to_string();
            let wins = race(
                &servers,
                "GET",
                "auth/token/lookup-self",
                Some(&token),
                None,
            )
            .await;
            assert_eq!(
                wins.len() as u64,
                limit,
                "{backend:?}: num_uses={limit} served {} of {AT_ONCE} requests",
                wins.len()
            );
            // Each success took a different use, down to the last, which
            // shows the token used up (-1), as Vault does.
            let mut left: Vec<i64> = wins
                .iter()
                .map(|v| v["data"]["num_uses"].as_i64().unwrap())
                .collect();
            left.sort();
            let limit = limit as i64;
            let expected: Vec<i64> = std::iter::once(-1).chain(1..limit).collect();
            assert_eq!(left, expected, "{backend:?}");
            // And the token is gone, on every server.
            for s in &servers {
                let (st, _) = s
                    .call("GET", "auth/token/lookup-self", Some(&token), None)
                    .await;
                assert_eq!(st, StatusCode::FORBIDDEN, "{backend:?}");
            }
        }
    }
}

#[tokio::test]
async fn renewing_a_token_with_its_last_use_does_not_bring_it_back() {
    for backend in BACKENDS {
        let s = Server::start(backend).await;
        let v = ok(
            &s,
            "POST",
            "auth/token/create",
            json!({ "num_uses": 1, "ttl": "1h" }),
        )
        .await;
        let token = v["auth"]["client_token"].as_str().unwrap().to_string();
        let (st, v) = s
            .call(
                "POST",
                "auth/token/renew-self",
                Some(&token),
                Some(json!({})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{backend:?}: {v}");
        // The last use is spent: the token is gone, not renewed.
        for _ in 0..3 {
            let (st, v) = s
                .call("GET", "auth/token/lookup-self", Some(&token), None)
                .await;
            assert_eq!(st, StatusCode::FORBIDDEN, "{backend:?}: {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_use_limited_secret_id_logs_in_exactly_its_uses() {
    for backend in BACKENDS {
        let servers = servers(backend).await;
        let a = &servers[0];
        ok(
            a,
            "POST",
            "auth/approle/role/web",
            json!({ "token_policies": "default", "secret_id_num_uses": 3 }),
        )
        .await;
        let v = ok(a, "GET", "auth/approle/role/web/role-id", json!({})).await;
        let role_id = v["data"]["role_id"].as_str().unwrap().to_string();
        let v = ok(a, "POST", "auth/approle/role/web/secret-id", json!({})).await;
        let secret_id = v["data"]["secret_id"].as_str().unwrap().to_string();

        let login = json!({ "role_id": role_id, "secret_id": secret_id });
        let wins = race(&servers, "POST", "auth/approle/login", None, Some(login)).await;
        assert_eq!(
            wins.len(),
            3,
            "{backend:?}: secret_id_num_uses=3 allowed {} of {AT_ONCE} logins",
            wins.len()
        );
        // Three logins, three distinct tokens.
        let mut tokens: Vec<&str> = wins
            .iter()
            .map(|v| v["auth"]["client_token"].as_str().unwrap())
            .collect();
        tokens.sort();
        tokens.dedup();
        assert_eq!(tokens.len(), 3, "{backend:?}");
        // The used-up secret ID is gone with its accessor.
        let (_, v) = a
            .root("LIST", "auth/approle/role/web/secret-id", None)
            .await;
        assert!(
            v["data"]["keys"].as_array().is_none_or(|k| k.is_empty()),
            "{backend:?}: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_use_limited_join_token_enrolls_exactly_its_uses() {
    for backend in BACKENDS {
        let servers = servers(backend).await;
        let v = ok(
            &servers[0],
            "POST",
            "hosts/join-tokens",
            json!({ "ttl": "10m", "num_uses": 3 }),
        )
        .await;
        let join = v["data"]["join_token"].as_str().unwrap().to_string();

        let enroll = json!({ "join_token": join, "hostname": "web-{i}.example.com" });
        let wins = race(&servers, "POST", "hosts/enroll", None, Some(enroll)).await;
        assert_eq!(
            wins.len(),
            3,
            "{backend:?}: a join token with num_uses=3 enrolled {} of {AT_ONCE} hosts",
            wins.len()
        );
        let v = ok(&servers[0], "LIST", "hosts", json!({})).await;
        assert_eq!(
            v["data"]["keys"].as_array().map(Vec::len),
            Some(3),
            "{backend:?}: {v}"
        );
    }
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// [`AT_ONCE`] writes released together, alternating between the servers,
/// each with `token`; returns how many succeeded (the others must be 400 or
/// 403).
async fn race_processes(
    servers: [&ServeProcess; 2],
    path: &'static str,
    token: Option<&str>,
    body: Value,
) -> usize {
    let start = Arc::new(tokio::sync::Barrier::new(AT_ONCE));
    let mut tasks = Vec::new();
    for i in 0..AT_ONCE {
        let mut settings = servers[i % 2].settings.clone();
        settings.token = token.map(str::to_string);
        let body: Value =
            serde_json::from_str(&body.to_string().replace("{i}", &i.to_string())).unwrap();
        let (start, body) = (start.clone(), obj(body));
        tasks.push(tokio::spawn(async move {
            let client = Client::new(&settings).unwrap();
            start.wait().await;
            client.write(path, &body).await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(gatepass_api::Error::Api {
                status: 400 | 403, ..
            }) => {}
            Err(e) => panic!("{path}: {e}"),
        }
    }
    wins
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_server_processes_on_one_postgres_spend_each_use_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = serve_pair_on_postgres(tmp.path(), "counts2").await;
    let (ka, kb) = (
        Client::new(&a.settings).unwrap(),
        Client::new(&b.settings).unwrap(),
    );

    // A token with three uses, used twenty times at once through both.
    let t = ka
        .write("auth/token/create", &obj(json!({ "num_uses": 3 })))
        .await
        .unwrap()
        .unwrap();
    let token = t.auth.unwrap().client_token;
    let wins = race_processes([&a, &b], "auth/token/lookup-self", Some(&token), json!({})).await;
    assert_eq!(wins, 3, "num_uses=3 served {wins} of {AT_ONCE} requests");

    // A secret ID with three uses.
    kb.write(
        "auth/approle/role/web",
        &obj(json!({ "token_policies": "default", "secret_id_num_uses": 3 })),
    )
    .await
    .unwrap();
    let role_id = ka
        .read("auth/approle/role/web/role-id")
        .await
        .unwrap()
        .unwrap()
        .data
        .unwrap()["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id = ka
        .write("auth/approle/role/web/secret-id", &Map::new())
        .await
        .unwrap()
        .unwrap()
        .data
        .unwrap()["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    let login = json!({ "role_id": role_id, "secret_id": secret_id });
    let wins = race_processes([&a, &b], "auth/approle/login", None, login).await;
    assert_eq!(
        wins, 3,
        "secret_id_num_uses=3 allowed {wins} of {AT_ONCE} logins"
    );

    // A join token with three uses.
    let join = kb
        .write(
            "hosts/join-tokens",
            &obj(json!({ "ttl": "10m", "num_uses": 3 })),
        )
        .await
        .unwrap()
        .unwrap()
        .data
        .unwrap()["join_token"]
        .as_str()
        .unwrap()
        .to_string();
    let enroll = json!({ "join_token": join, "hostname": "web-{i}.example.com" });
    let wins = race_processes([&a, &b], "hosts/enroll", None, enroll).await;
    assert_eq!(
        wins, 3,
        "a join token with num_uses=3 enrolled {wins} of {AT_ONCE} hosts"
    );
}
