//! The server-backed session source against a stand-in for the gatepass
//! server's gateway paths (plain HTTP on loopback, as the client allows for
//! a local proxy): what it sends, and what it makes of the answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gatepass_api::pam::{
    EndReason, GatewaySession, GatewaySessions, HostKeyTrust, OpenSessionSummary,
    SessionCredential, SessionState,
};
use gatepass_gateway::server_source::{ServerSettings, ServerSource};
use gatepass_gateway::{Credential, SessionCas, SessionSource, SourceError};
use russh::keys::{HashAlg, PublicKey};
use serde_json::{json, Value};
use tokio::sync::watch;

const CA1: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFw2sFw+dxSvV+bm0wjC+wLdtPUJZMWivFmnO12B2VcC ca1";
const CA2: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbi1r8gMSRZFgWoA7wM/y7qNbR1OXAXgqKqYv2ynCeG ca2";

#[derive(Clone)]
struct Fake {
    sessions: watch::Sender<GatewaySessions>,
    /// Path → request bodies, in order.
    seen: Arc<Mutex<HashMap<String, Vec<Value>>>>,
    token_ok: Arc<Mutex<bool>>,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            sessions: watch::Sender::new(GatewaySessions {
                index: 1,
                sessions: vec![],
                session_ca_keys: vec![CA1.into()],
                relay_requests: vec![],
            }),
            seen: Arc::default(),
            token_ok: Arc::new(Mutex::new(true)),
        }
    }

    fn set(&self, open: &[&str], cas: &[&str]) {
        self.sessions.send_modify(|s| {
            s.index += 1;
            s.sessions = open
                .iter()
                .map(|id| OpenSessionSummary {
                    session_id: (*id).into(),
                    expires_at: 4_000_000_000,
                    state: SessionState::Pending,
                })
                .collect();
            s.session_ca_keys = cas.iter().map(|k| (*k).into()).collect();
        });
    }

    fn seen(&self, path: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    fn record(&self, path: String, body: Value) {
        self.seen
            .lock()
            .unwrap()
            .entry(path)
            .or_default()
            .push(body);
    }
}

fn envelope(data: impl serde::Serialize) -> Response {
    Json(json!({ "data": data })).into_response()
}

fn error(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "errors": [text] }))).into_response()
}

async fn list(State(f): State<Fake>, Query(q): Query<HashMap<String, String>>) -> Response {
    let index: u64 = q.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    let mut rx = f.sessions.subscribe();
    // Held while the index is current, as the server does (bounded here).
    let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.index != index)).await;
    let now = rx.borrow().clone();
    envelope(now)
}

async fn started(State(f): State<Fake>, Json(body): Json<Value>) -> Response {
    if !*f.token_ok.lock().unwrap() {
        return error(StatusCode::FORBIDDEN, "permission denied");
    }
    f.record("started".into(), body);
    envelope(f.sessions.borrow().clone())
}

async fn open(State(f): State<Fake>, Path(id): Path<String>, Json(body): Json<Value>) -> Response {
    f.record(format!("open/{id}"), body);
    let trust = HostKeyTrust::Pinned {
        keys: vec![format!("db1.example {CA2}")],
    };
    match id.as_str() {
        "s-pass" => envelope(GatewaySession {
            session_id: id.clone(),
            expires_at: 4_000_000_000,
            host: "db1.example".into(),
            port: 2022,
            username: "postgres".into(),
            credential: SessionCredential::Password {
                password: "hunter2".into(),
            },
            host_key_trust: trust,
            allow_forwarding: false,
            recording: None,
        }),
        "s-badkey" => envelope(GatewaySession {
            session_id: id.clone(),
            expires_at: 4_000_000_000,
            host: "db1.example".into(),
            port: 22,
            username: "postgres".into(),
            credential: SessionCredential::Key {
                private_key: "not a key".into(),
            },
            host_key_trust: trust,
            allow_forwarding: false,
            recording: None,
        }),
        "s-active" => error(StatusCode::BAD_REQUEST, "session s-active is not pending"),
        "s-broken" => error(StatusCode::INTERNAL_SERVER_ERROR, "database is down"),
        _ => error(StatusCode::NOT_FOUND, "no such session"),
    }
}

async fn enroll(State(f): State<Fake>, Json(body): Json<Value>) -> Response {
    f.record("enroll".into(), body.clone());
    if body["join_token"] != "good" {
        return error(StatusCode::BAD_REQUEST, "invalid or expired join token");
    }
    envelope(json!({
        "name": body["name"],
        "gateway_token": "gw-token",
        "session_ca_keys": [CA1],
    }))
}

async fn end(State(f): State<Fake>, Path(id): Path<String>, Json(body): Json<Value>) -> Response {
    f.record(format!("end/{id}"), body);
    StatusCode::NO_CONTENT.into_response()
}

struct Running {
    fake: Fake,
    source: Arc<ServerSource>,
    cas: SessionCas,
    url: String,
    dir: tempfile::TempDir,
}

/// A CA file for the client to pin (unused over plain HTTP, but required).
fn ca_file(dir: &std::path::Path) -> std::path::PathBuf {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let path = dir.join("ca.pem");
    std::fs::write(&path, ck.cert.pem()).unwrap();
    path
}

fn source_for(server: String, dir: &std::path::Path, cas: SessionCas) -> ServerSource {
    ServerSource::new(
        &ServerSettings {
            server,
            ca_cert: ca_file(dir),
            token: "gw-token".into(),
            wait: Duration::from_secs(30),
            max_backoff: Duration::from_secs(1),
            recording: true,
        },
        cas,
    )
    .unwrap()
}

async fn start() -> Running {
    let fake = Fake::new();
    let app = Router::new()
        .route("/v1/pam/gateway/self/sessions", get(list))
        .route("/v1/pam/gateway/self/started", post(started))
        .route("/v1/pam/gateway/self/sessions/{id}/open", post(open))
        .route("/v1/pam/gateway/self/sessions/{id}/end", post(end))
        .route("/v1/pam/gateways/enroll", post(enroll))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let cas = SessionCas::default();
    let url = format!("http://{addr}");
    let source = Arc::new(source_for(url.clone(), dir.path(), cas.clone()));
    Running {
        fake,
        source,
        cas,
        url,
        dir,
    }
}

fn fingerprint(line: &str) -> russh::keys::ssh_key::Fingerprint {
    PublicKey::from_openssh(line)
        .unwrap()
        .fingerprint(HashAlg::Sha256)
}

#[tokio::test]
async fn started_sends_the_host_key_and_learns_the_session_ca() {
    let r = start().await;
    let index = r
        .source
        .started(vec!["ssh-ed25519 AAAA host".into()])
        .await
        .unwrap();
    assert_eq!(index, 1);
    assert_eq!(
        r.fake.seen("started"),
        [json!({ "host_keys": ["ssh-ed25519 AAAA host"] })]
    );
    assert_eq!(r.cas.fingerprints(), [fingerprint(CA1)]);

    // A revoked token is a refusal, not "unreachable".
    *r.fake.token_ok.lock().unwrap() = false;
    let e = r.source.started(vec![]).await.unwrap_err();
    assert!(
        matches!(e, gatepass_api::Error::Api { status: 403, .. }),
        "{e}"
    );
}

#[tokio::test]
async fn a_session_gone_from_the_list_is_terminated_at_once_and_ca_changes_apply() {
    let r = start().await;
    r.fake.set(&["s1", "s2"], &[CA1]);
    let index = r.source.started(vec![]).await.unwrap();
    tokio::spawn(r.source.clone().follow(index));

    let s1 = tokio::spawn({
        let source = r.source.clone();
        async move { source.terminated("s1").await }
    });
    // Still listed: never terminated, however long the poll goes on.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!s1.is_finished());

    // Terminated (s1 left the list) and the CA rotated.
    let at = Instant::now();
    r.fake.set(&["s2"], &[CA1, CA2]);
    tokio::time::timeout(Duration::from_secs(2), s1)
        .await
        .expect("terminated within 2 s")
        .unwrap();
    assert!(at.elapsed() < Duration::from_secs(2));
    assert_eq!(r.cas.fingerprints(), [fingerprint(CA1), fingerprint(CA2)]);
    // s2 stays open.
    let s2 = tokio::time::timeout(Duration::from_millis(500), r.source.terminated("s2")).await;
    assert!(s2.is_err(), "s2 was reported terminated");
    // A list without any usable CA key keeps the known ones.
    r.fake.set(&["s2"], &["ssh-ed25519 broken"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.cas.fingerprints(), [fingerprint(CA1), fingerprint(CA2)]);
}

#[tokio::test]
async fn a_session_opened_after_the_last_poll_is_not_taken_for_terminated() {
    let r = start().await;
    let index = r.source.started(vec![]).await.unwrap();
    tokio::spawn(r.source.clone().follow(index));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Granted after the gateway's last answer: not in what it knows yet.
    let watching = tokio::spawn({
        let source = r.source.clone();
        async move { source.terminated("s-new").await }
    });
    r.fake.set(&["s-new"], &[CA1]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !watching.is_finished(),
        "a new session was taken for terminated"
    );
    r.fake.set(&[], &[CA1]);
    tokio::time::timeout(Duration::from_secs(2), watching)
        .await
        .expect("terminated within 2 s")
        .unwrap();
}

#[tokio::test]
async fn a_session_terminated_before_it_is_watched_is_still_seen_terminated() {
    let r = start().await;
    r.fake.set(&["s-pass"], &[CA1]);
    let index = r.source.started(vec![]).await.unwrap();
    tokio::spawn(r.source.clone().follow(index));
    tokio::time::sleep(Duration::from_millis(200)).await;
    r.source.open_session("s-pass", 1_000).await.unwrap();
    // The server marks it active (the list changes), then an administrator
    // terminates it while the gateway is still logging in to the target:
    // both answers come before the session's supervisor starts watching.
    r.fake.set(&["s-pass"], &[CA1]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.fake.set(&[], &[CA1]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(Duration::from_secs(2), r.source.terminated("s-pass"))
        .await
        .expect("the terminate was missed");
}

#[tokio::test]
async fn opening_sends_a_fresh_public_key_and_converts_the_answer() {
    let r = start().await;
    let session = r.source.open_session("s-pass", 1_000).await.unwrap();
    assert_eq!(session.id, "s-pass");
    assert_eq!(
        (session.target_host.as_str(), session.target_port),
        ("db1.example", 2022)
    );
    assert_eq!(session.target_username, "postgres");
    assert!(matches!(&session.credential, Credential::Password(p) if p.as_str() == "hunter2"));
    let sent = r.fake.seen("open/s-pass");
    let key = sent[0]["public_key"].as_str().unwrap();
    assert!(key.starts_with("ssh-ed25519 "), "{key}");
    // A new key pair for every login.
    r.source.open_session("s-pass", 1_000).await.unwrap();
    assert_ne!(
        r.fake.seen("open/s-pass")[1]["public_key"],
        sent[0]["public_key"]
    );

    // Past its end by the gateway's clock: reported expired.
    let e = r
        .source
        .open_session("s-pass", 4_000_000_000)
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::Ended), "{e}");
    assert_eq!(r.fake.seen("end/s-pass"), [json!({ "reason": "expired" })]);
    let e = r.source.open_session("s-nope", 1_000).await.unwrap_err();
    assert!(matches!(e, SourceError::Unknown), "{e}");
    let e = r.source.open_session("s-active", 1_000).await.unwrap_err();
    assert!(
        matches!(&e, SourceError::Refused(m) if m.contains("not pending")),
        "{e}"
    );
    let e = r.source.open_session("s-broken", 1_000).await.unwrap_err();
    assert!(
        matches!(&e, SourceError::Unavailable(m) if m.contains("the gatepass server cannot be reached")),
        "{e}"
    );
    // Handed out but unusable: the person is told, the server hears it
    // failed (rather than counting it active until its end).
    let e = r.source.open_session("s-badkey", 1_000).await.unwrap_err();
    assert!(
        matches!(&e, SourceError::Unavailable(m) if m.contains("private key does not parse")),
        "{e}"
    );
    let ended = r.fake.seen("end/s-badkey");
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["reason"], "failed");
    assert!(
        ended[0]["detail"]
            .as_str()
            .unwrap()
            .contains("private key does not parse"),
        "{ended:?}"
    );
    // Not a session ID: never sent.
    let e = r
        .source
        .open_session("../started", 1_000)
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::Unknown), "{e}");
}

#[tokio::test]
async fn ends_are_reported_with_reason_and_detail() {
    let r = start().await;
    r.source.ended("s1", EndReason::Idle, None).await;
    r.source
        .ended(
            "s2",
            EndReason::Failed,
            Some("the target refused the account's credential".into()),
        )
        .await;
    assert_eq!(r.fake.seen("end/s1"), [json!({ "reason": "idle" })]);
    assert_eq!(
        r.fake.seen("end/s2"),
        [json!({ "reason": "failed", "detail": "the target refused the account's credential" })]
    );
}

#[tokio::test]
async fn an_unreachable_server_refuses_new_sessions_quickly_and_terminates_none() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(source_for(
        format!("http://127.0.0.1:{port}"),
        dir.path(),
        SessionCas::default(),
    ));
    tokio::spawn(source.clone().follow(0));
    let at = Instant::now();
    let e = source.open_session("s1", 1_000).await.unwrap_err();
    assert!(at.elapsed() < Duration::from_secs(6));
    assert!(
        matches!(&e, SourceError::Unavailable(m) if m.starts_with("the gatepass server cannot be reached")),
        "{e}"
    );
    // Failed polls are no termination: the session runs to its end.
    let t = tokio::time::timeout(Duration::from_millis(1500), source.terminated("s1")).await;
    assert!(
        t.is_err(),
        "terminated fired while the server was unreachable"
    );
}

#[tokio::test]
async fn setup_makes_the_host_key_enrolls_once_and_writes_token_and_config() {
    use gatepass_gateway::config::Config;
    use gatepass_gateway::setup::{setup, Reach, SetupOptions};
    use std::os::unix::fs::PermissionsExt;
    let r = start().await;
    let etc = r.dir.path().join("etc");
    let mut opts = SetupOptions {
        config_path: etc.join("gateway.toml"),
        server: r.url.clone(),
        join_token: "stale".into(),
        ca_cert: r.dir.path().join("ca.pem"),
        reach: Reach::Direct {
            listen: "127.0.0.1:2222".parse().unwrap(),
            address: None,
        },
        name: "gw1".into(),
        token_file: None,
        host_key: r.dir.path().join("state/ssh_host_ed25519_key"),
        replace: false,
    };
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

    // A bad join token: the server's reason, and nothing written but the
    // host key (kept for the next try).
    let e = setup(&opts).await.unwrap_err();
    assert!(e.contains("enrollment refused"), "{e}");
    assert!(e.contains("invalid or expired join token"), "{e}");
    assert!(!etc.join("gateway.toml").exists());
    assert!(!etc.join("gateway.token").exists());

    opts.join_token = "good".into();
    let report = setup(&opts).await.unwrap();
    let sent = r.fake.seen("enroll");
    let host_key =
        std::fs::read_to_string(r.dir.path().join("state/ssh_host_ed25519_key.pub")).unwrap();
    // The recording key is made beside the host key, private, and its
    // public half enrolled.
    let recording_key = r.dir.path().join("state/recording_ed25519_key");
    assert_eq!(mode(&recording_key), 0o600);
    let signer = gatepass_api::recording::parse_signing_key(
        &std::fs::read_to_string(&recording_key).unwrap(),
    )
    .unwrap();
    assert_eq!(
        sent[1],
        json!({
            "join_token": "good",
            "name": "gw1",
            "address": "127.0.0.1:2222",
            "host_keys": [host_key.trim()],
            "replace": false,
            "recording_key": gatepass_api::recording::public_key_text(&signer),
        })
    );
    assert_eq!(
        report.config.recording_key.as_deref(),
        Some(recording_key.as_path())
    );
    assert_eq!(report.config.state_dir, r.dir.path().join("state"));
    assert_eq!(report.host_key_public, host_key.trim());
    assert_eq!(mode(&opts.host_key), 0o600);
    let token = etc.join("gateway.token");
    assert_eq!(std::fs::read_to_string(&token).unwrap(), "gw-token\n");
    assert_eq!(mode(&token), 0o600);
    let cfg = Config::load(&etc.join("gateway.toml")).unwrap();
    assert_eq!(cfg, report.config);
    assert_eq!(cfg.server, r.url);
    assert_eq!(cfg.name, "gw1");
    assert_eq!(cfg.address, "127.0.0.1:2222");
    assert_eq!(cfg.token_file, token);
    assert_eq!(cfg.idle_timeout, Some(Duration::from_secs(1800)));
    assert_eq!(
        std::fs::read(&cfg.ca_cert).unwrap(),
        std::fs::read(r.dir.path().join("ca.pem")).unwrap()
    );

    // Enrolled: not again, unless asked to take the name over.
    let e = setup(&opts).await.unwrap_err();
    assert!(e.contains("--replace"), "{e}");
    assert_eq!(r.fake.seen("enroll").len(), 2);
    opts.replace = true;
    opts.reach = Reach::Direct {
        listen: "127.0.0.1:2222".parse().unwrap(),
        address: Some("gw1.example:2222".into()),
    };
    setup(&opts).await.unwrap();
    let sent = r.fake.seen("enroll");
    assert_eq!(sent[2]["replace"], true);
    assert_eq!(sent[2]["address"], "gw1.example:2222");
    // The same host key as before.
    assert_eq!(sent[2]["host_keys"], sent[1]["host_keys"]);

    // Enrolled again as a relay gateway: no address, no port.
    opts.reach = Reach::Relay;
    let report = setup(&opts).await.unwrap();
    let sent = r.fake.seen("enroll");
    assert_eq!(sent[3]["relay"], true);
    assert_eq!(sent[3]["address"], "");
    let cfg = Config::load(&etc.join("gateway.toml")).unwrap();
    assert_eq!(cfg, report.config);
    assert_eq!(cfg.mode, gatepass_gateway::config::Mode::Relay);
    assert_eq!(cfg.listen, None);
}
