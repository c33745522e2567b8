//! The server driven in-process through its axum `Router` (no socket), with
//! a manual clock, on SQLite or PostgreSQL.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use gatepass_server::clock::Clock;
use gatepass_server::seal::SealKey;
use gatepass_server::{Core, Options, State};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub const ROOT: &str = "inproc-root-token";
/// 2026-01-01T00:00:00Z: tests start at a fixed time and move it by hand.
pub const T0: i64 = 1_767_225_600;

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

pub struct Server {
    pub core: State,
    pub clock: Clock,
    pub dir: tempfile::TempDir,
    pub client: SocketAddr,
    /// Where its storage is and its seal key, to open it again.
    url: String,
    seal_hex: String,
}

impl Server {
    pub async fn start(backend: Backend) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("gp.db").display()),
            Backend::Postgres => crate::pg::shared().new_database("inproc"),
        };
        Server::start_on(dir, &url, Default::default()).await
    }

    /// A server on a new PostgreSQL database that opens at most
    /// `connections` to it (`storage_connections`).
    pub async fn start_postgres_with(connections: u32) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = crate::pg::shared().new_database("inproc");
        let pool = gatepass_server::storage::PoolSize::new(connections).expect("pool size");
        Server::start_on(dir, &url, pool).await
    }

    async fn start_on(
        dir: tempfile::TempDir,
        url: &str,
        pool: gatepass_server::storage::PoolSize,
    ) -> Server {
        let server = Server::open_with(dir, url, SealKey::generate(), pool).await;
        server
            .core
            .initialize(Some(ROOT.into()))
            .await
            .expect("initialize");
        server.core.ensure_mount("ssh", "ssh").await.expect("mount");
        server
    }

    /// The storage URL (PostgreSQL's names the database).
    pub fn storage_url(&self) -> &str {
        &self.url
    }

    /// Two servers sharing one new PostgreSQL database (and seal key), as
    /// two processes behind a load balancer would.
    pub async fn start_pair() -> (Server, Server) {
        let url = crate::pg::shared().new_database("inproc2");
        let seal = SealKey::generate();
        let again = SealKey::from_hex(&seal.to_hex()).expect("seal key");
        let a = Server::open(tempfile::tempdir().expect("tempdir"), &url, seal).await;
        a.core
            .initialize(Some(ROOT.into()))
            .await
            .expect("initialize");
        a.core.ensure_mount("ssh", "ssh").await.expect("mount");
        let b = Server::open(tempfile::tempdir().expect("tempdir"), &url, again).await;
        (a, b)
    }

    /// Waits until `self` hears the change announcements of `other` (its
    /// listener connects shortly after it opened): `other` writes until
    /// one reaches `self`, for up to 10 s.
    pub async fn hears(&self, other: &Server) {
        let mut changes = self.core.storage.subscribe();
        for i in 0..50u32 {
            changes.borrow_and_update();
            other
                .core
                .storage
                .put("policy/warm-up", &i)
                .await
                .expect("write");
            let heard =
                tokio::time::timeout(std::time::Duration::from_millis(200), changes.changed())
                    .await;
            if heard.is_ok() {
                return;
            }
        }
        panic!("one server never heard of a change the other made");
    }

    /// Stops this server and starts another on its storage (at the same
    /// time), as a restart or an upgrade does.
    pub async fn restart(self) -> Server {
        let now = self.clock.now();
        self.core.storage.close().await;
        let seal = SealKey::from_hex(&self.seal_hex).expect("seal key");
        let (dir, url) = (self.dir, self.url);
        drop(self.core);
        let s = Server::open(dir, &url, seal).await;
        s.clock.advance(now - T0);
        s
    }

    async fn open(dir: tempfile::TempDir, url: &str, seal_key: SealKey) -> Server {
        Server::open_with(dir, url, seal_key, Default::default()).await
    }

    async fn open_with(
        dir: tempfile::TempDir,
        url: &str,
        seal_key: SealKey,
        storage_connections: gatepass_server::storage::PoolSize,
    ) -> Server {
        let seal_hex = seal_key.to_hex().to_string();
        let clock = Clock::manual(T0);
        let core = Core::open(Options {
            storage_url: url.to_string(),
            seal_key,
            audit_path: Some(dir.path().join("audit.log")),
            clock: clock.clone(),
            storage_connections,
        })
        .await
        .expect("open core");
        Server {
            core,
            clock,
            dir,
            client: "127.0.0.1:50000".parse().expect("addr"),
            url: url.to_string(),
            seal_hex,
        }
    }

    /// Sends one request; returns the status and the body as JSON (Null when
    /// empty, a string when not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let raw = body.map(|b| b.to_string()).unwrap_or_default();
        self.call_raw(method, path, token, raw.into_bytes()).await
    }

    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        self.call_from(self.client, method, path, token, body).await
    }

    /// A request as if from another client address.
    pub async fn call_from(
        &self,
        client: SocketAddr,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(format!("/v1/{path}"));
        if let Some(t) = token {
            b = b.header("X-Vault-Token", t);
        }
        let mut req = b.body(Body::from(body)).expect("request");
        req.extensions_mut().insert(ConnectInfo(client));
        let resp = gatepass_server::app(self.core.clone())
            .oneshot(req)
            .await
            .expect("infallible");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    /// Serves this server's router on a loopback port (plain HTTP) so that
    /// the real `gatepass` CLI can talk to it; returns the address for
    /// `GATEPASS_ADDR`. The listener runs until the test's runtime ends.
    pub async fn listen(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let app = gatepass_server::app(self.core.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    pub async fn root(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, path, Some(ROOT), body).await
    }

    /// Writes a policy as root and makes a token with just that policy.
    pub async fn token_with_policy(&self, name: &str, hcl: &str) -> String {
        let (s, v) = self
            .root(
                "POST",
                &format!("sys/policies/acl/{name}"),
                Some(serde_json::json!({ "policy": hcl })),
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
        let (s, v) = self
            .root(
                "POST",
                "auth/token/create",
                Some(serde_json::json!({ "policies": [name] })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["auth"]["client_token"]
            .as_str()
            .expect("client_token")
            .to_string()
    }

    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default()
    }
}
