//! `gatepass-server serve` behind a reverse proxy (`trusted_proxies`): the
//! client each request counts as is the one the proxy names in
//! `X-Forwarded-For`, so one client's failed logins lock out that client
//! and not everyone behind the proxy; anyone else's header is ignored.

use std::time::Duration;

use gatepass_tests::{init_server, serve_config, start_serve};
use serde_json::{json, Value};

/// Logs in as alice from the client `forwarded_for` names (none: the
/// connection's own address); the status.
async fn login(http: &reqwest::Client, addr: &str, password: &str, forwarded_for: &str) -> u16 {
    let mut req = http
        .post(format!("{addr}/v1/auth/userpass/login/alice"))
        .json(&json!({ "password": password }));
    if !forwarded_for.is_empty() {
        req = req.header("X-Forwarded-For", forwarded_for);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_has_its_own_login_limit() {
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("sqlite://{}", dir.path().join("gp.db").display());
    let (config, mut settings) = serve_config(
        dir.path(),
        "a",
        &storage,
        "trusted_proxies = [\"127.0.0.1/32\"]",
    );
    settings.token = Some(init_server(&config));
    let server = start_serve(&config, &dir.path().join("a.log"), settings);
    server.wait_up().await;
    let c = gatepass_api::Client::new(&server.settings).unwrap();
    c.request(
        "POST",
        "auth/userpass/users/alice",
        Some(
            &json!({"password": "right-horse", "token_policies": "default"})
                .as_object()
                .cloned()
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    let ca = std::fs::read(server.settings.ca_cert.as_ref().unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let addr = &server.settings.addr;

    // A client behind the proxy guesses until it is locked out (what it
    // writes into the header itself is passed over).
    let guesser = "6.6.6.6, 198.51.100.7";
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(login(&http, addr, "wrong", guesser).await);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert_eq!(login(&http, addr, "right-horse", "198.51.100.7").await, 429);
    // Another client behind the same proxy logs in.
    assert_eq!(login(&http, addr, "right-horse", "198.51.100.8").await, 200);
    // A header that names no address is refused, not guessed at.
    assert_eq!(login(&http, addr, "right-horse", "unknown").await, 400);

    // The audit log names the clients.
    let audit = std::fs::read_to_string(dir.path().join("a-audit.log")).unwrap();
    let remotes: Vec<String> = audit
        .lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            v["request"]["remote_address"].as_str().map(String::from)
        })
        .collect();
    assert!(remotes.iter().any(|r| r == "198.51.100.7"), "{remotes:?}");
    assert!(remotes.iter().any(|r| r == "198.51.100.8"), "{remotes:?}");
    assert!(!remotes.iter().any(|r| r == "6.6.6.6"), "{remotes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_proxies_a_clients_header_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("sqlite://{}", dir.path().join("gp.db").display());
    let (config, mut settings) = serve_config(dir.path(), "a", &storage, "");
    settings.token = Some(init_server(&config));
    let server = start_serve(&config, &dir.path().join("a.log"), settings);
    server.wait_up().await;
    let ca = std::fs::read(server.settings.ca_cert.as_ref().unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let addr = &server.settings.addr;
    // Each guess claims another address; they all count against the
    // connection's own.
    let mut last = 0;
    for i in 0..12 {
        last = login(&http, addr, "wrong", &format!("198.51.100.{i}")).await;
    }
    assert_eq!(last, 429);
    let audit = std::fs::read_to_string(dir.path().join("a-audit.log")).unwrap();
    assert!(
        !audit.contains("198.51.100."),
        "the header reached the audit log"
    );
}
