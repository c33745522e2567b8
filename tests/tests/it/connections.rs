//! Connection limits of the real `gatepass-server`: a client that opens
//! connections and then sends nothing, finishes TLS and stays silent, or
//! sends half a request header must not keep the server from answering
//! others. The server runs with an open-file limit of 1024 (soft and hard),
//! where 1,000 held connections would otherwise use up its descriptors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatepass_tests::DevServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const FILE_LIMIT: &[&str] = &["prlimit", "--nofile=1024:1024", "--"];
const SHORT_TIMEOUTS: &[&str] = &[
    "--tls-handshake-timeout",
    "2s",
    "--header-read-timeout",
    "2s",
    "--body-read-timeout",
    "2s",
    "--idle-timeout",
    "3s",
];

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn server_addr(s: &DevServer) -> SocketAddr {
    s.addr
        .strip_prefix("https://")
        .unwrap()
        .parse()
        .expect("dev server address")
}

fn tls_connector(s: &DevServer) -> TlsConnector {
    tls_connector_for(s, &[])
}

/// A TLS client offering `alpn` (none: HTTP/1.1 by default).
fn tls_connector_for(s: &DevServer, alpn: &[&[u8]]) -> TlsConnector {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(&s.cacert).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

/// What a held connection is made to do.
#[derive(Clone, Copy)]
enum Misbehave {
    /// Connects and never starts TLS.
    Silent,
    /// Finishes TLS, then sends nothing.
    SilentAfterTls,
    /// Finishes TLS and sends half a request header.
    HalfHeader,
}

enum Held {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Held {
    /// Waits until the server ends the connection (EOF or reset); false if
    /// it is still open after `limit`.
    async fn closed_within(self, limit: Duration) -> bool {
        let mut buf = [0u8; 512];
        let read = async {
            match self {
                Held::Plain(mut s) => loop {
                    if matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {
                        return;
                    }
                },
                Held::Tls(mut s) => loop {
                    if matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {
                        return;
                    }
                },
            }
        };
        tokio::time::timeout(limit, read).await.is_ok()
    }
}

/// Opens `n` misbehaving connections from 127.0.0.1; the ones the server
/// admitted (and did not drop at once) are returned still open.
async fn open_held(s: &DevServer, n: usize) -> Vec<Held> {
    let addr = server_addr(s);
    let tls = tls_connector(s);
    let kinds = [
        Misbehave::Silent,
        Misbehave::SilentAfterTls,
        Misbehave::HalfHeader,
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let kind = kinds[i % kinds.len()];
        let tls = tls.clone();
        tasks.spawn(async move {
            let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
                .await
                .ok()?
                .ok()?;
            match kind {
                Misbehave::Silent => Some(Held::Plain(tcp)),
                Misbehave::SilentAfterTls | Misbehave::HalfHeader => {
                    let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
                    let mut t =
                        tokio::time::timeout(Duration::from_secs(5), tls.connect(name, tcp))
                            .await
                            .ok()?
                            .ok()?;
                    if let Misbehave::HalfHeader = kind {
                        t.write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: localhost\r\n")
                            .await
                            .ok()?;
                        t.flush().await.ok()?;
                    }
                    Some(Held::Tls(Box::new(t)))
                }
            }
        });
    }
    let mut held = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Some(h) = r.unwrap() {
            held.push(h);
        }
    }
    held
}

/// `sys/health` from a given local address: the status, or the error.
async fn health_from(s: &DevServer, local: &str) -> Result<u16, String> {
    let pem = std::fs::read(&s.cacert).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .local_address(Some(local.parse().unwrap()))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    client
        .get(format!("{}/v1/sys/health", s.addr))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

/// Retries `sys/health` until it answers 200 or `limit` has passed; how
/// long it took.
async fn health_answers_within(s: &DevServer, local: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match health_from(s, local).await {
            Ok(200) => return Some(start.elapsed()),
            Ok(code) => last = format!("status {code}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("sys/health from {local} did not answer 200 within {limit:?}: {last}");
    None
}

#[test]
fn a_thousand_held_connections_do_not_stop_health() {
    // Default limits except shorter timeouts, so the test waits seconds.
    let s = DevServer::start_with(SHORT_TIMEOUTS, FILE_LIMIT);
    rt().block_on(async {
        let held = open_held(&s, 1000).await;
        assert!(!held.is_empty(), "no connection was admitted");
        // The held connections fill what the server admits; as the header
        // and handshake timeouts end them, a real client gets through.
        let took = health_answers_within(&s, "127.0.0.1", Duration::from_secs(8)).await;
        assert!(
            took.is_some(),
            "sys/health did not answer while 1,000 connections were held"
        );
        // Every held connection is ended by the server, none kept open.
        let mut still_open = 0;
        let checks: Vec<_> = held
            .into_iter()
            .map(|h| tokio::spawn(h.closed_within(Duration::from_secs(10))))
            .collect();
        for c in checks {
            if !c.await.unwrap() {
                still_open += 1;
            }
        }
        assert_eq!(still_open, 0, "connections the server never closed");
    });
}

#[test]
fn per_address_limit_keeps_other_clients_served_at_once() {
    // Long timeouts: the flood holds what it was given for the whole test.
    let mut s = DevServer::start_with(
        &[
            "--tls-handshake-timeout",
            "60s",
            "--header-read-timeout",
            "60s",
            "--max-connections-per-address",
            "200",
        ],
        FILE_LIMIT,
    );
    let took = rt().block_on(async {
        let held = open_held(&s, 1000).await;
        // Another client address is not held up by the first one's flood.
        let took = health_answers_within(&s, "127.0.0.2", Duration::from_secs(1)).await;
        if took.is_none() {
            return took;
        }
        // TCP connects succeed in the kernel before the server decides
        // (some wait in a full accept queue), so count what is still open a
        // few seconds later: refused ones are closed, admitted ones stay.
        let checks: Vec<_> = held
            .into_iter()
            .map(|h| tokio::spawn(h.closed_within(Duration::from_secs(3))))
            .collect();
        let mut open = 0;
        for c in checks {
            if !c.await.unwrap() {
                open += 1;
            }
        }
        assert!(
            (1..=200).contains(&open),
            "{open} connections from one address were kept open (limit 200)"
        );
        took
    });
    if took.is_none() {
        // Say whether the server was still there: a refused connect from
        // a server that has exited reads like one that is held up.
        let state = s.child.try_wait();
        let log = s.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        panic!(
            "sys/health from another address waited; server process: {state:?}; \
             the end of its log:\n{tail}"
        );
    }
}

/// A TLS connection that has had one request answered (HTTP/1.1 keeps it).
async fn after_one_request(s: &DevServer) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(server_addr(s)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut t = tls_connector(s).connect(name, tcp).await.unwrap();
    t.write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = t.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    t
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let s = DevServer::start_with(SHORT_TIMEOUTS, &[]);
    rt().block_on(async {
        // Timed from before the request: the server cannot count the
        // connection idle before it has answered, however late this
        // process (on a busy machine) reads the answer.
        let start = Instant::now();
        let t = after_one_request(&s).await;
        // Kept alive by HTTP/1.1, then closed by the server once idle for
        // the idle timeout (3 s here), not sooner: the header read timeout
        // (2 s) is for a header that has begun to come.
        let closed = Held::Tls(Box::new(t))
            .closed_within(Duration::from_secs(10))
            .await;
        assert!(closed, "an idle connection stayed open");
        assert!(
            start.elapsed() >= Duration::from_secs(3),
            "closed before its idle timeout: {:?}",
            start.elapsed()
        );
    });
}

#[test]
fn a_header_trickled_on_a_kept_alive_connection_is_cut_at_the_header_timeout() {
    let s = DevServer::start_with(SHORT_TIMEOUTS, &[]);
    rt().block_on(async {
        let mut t = after_one_request(&s).await;
        let mut buf = vec![0u8; 4096];
        // The next request's header, a line every 0.5 s: the bytes keep the
        // idle timeout (3 s) from ever running out; the header read timeout
        // (2 s from its first byte) ends the connection.
        let started = Instant::now();
        t.write_all(b"GET /v1/sys/health HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut cut = None;
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let line = format!("X-Slow-{i}: 1\r\n");
            let write = t.write_all(line.as_bytes()).await;
            let read = tokio::time::timeout(Duration::from_millis(1), t.read(&mut buf)).await;
            if write.is_err() || matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
                cut = Some(started.elapsed());
                break;
            }
        }
        let cut = cut.expect("a header trickled for 10 s was never cut");
        assert!(
            cut >= Duration::from_secs(2),
            "cut before the header read timeout: {cut:?}"
        );
        assert!(
            cut < Duration::from_secs(6),
            "cut long after the header read timeout: {cut:?}"
        );
    });
}

/// Reads what the server sends until it ends the connection or `limit`
/// passes; the text and when the connection ended (None: still open).
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(
    t: &mut S,
    limit: Duration,
) -> (String, Option<Instant>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let end = Instant::now() + limit;
    while Instant::now() < end {
        match tokio::time::timeout(Duration::from_millis(200), t.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&got).into(), Some(Instant::now()))
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    (String::from_utf8_lossy(&got).into(), None)
}

#[test]
fn a_body_trickled_is_answered_408_at_the_body_timeout_and_a_slow_one_in_time_is_not() {
    let s = DevServer::start_with(SHORT_TIMEOUTS, &[]);
    rt().block_on(async {
        // A body in three pieces, a second in all: well within the body
        // read timeout (2 s), so answered as usual.
        let mut t = after_one_request(&s).await;
        let body = br#"{"otp":"not-an-otp"}"#;
        t.write_all(
            format!(
                "POST /v1/ssh/verify HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        for piece in body.chunks(8) {
            tokio::time::sleep(Duration::from_millis(400)).await;
            t.write_all(piece).await.unwrap();
        }
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), t.read(&mut buf))
            .await
            .expect("no answer to a body sent in time")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
        assert!(!answer.starts_with("HTTP/1.1 408"), "{answer}");

        // A byte of the body every 0.5 s: the bytes keep the idle timeout
        // (3 s) from running out and the request is in flight, so only the
        // body read timeout (2 s from the header) ends it.
        let mut t = after_one_request(&s).await;
        t.write_all(
            b"POST /v1/ssh/verify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
        let started = Instant::now();
        let mut answer = String::new();
        let mut closed = None;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = t.write_all(b" ").await;
            let (got, end) = read_until_closed(&mut t, Duration::from_millis(10)).await;
            answer.push_str(&got);
            if !answer.is_empty() || end.is_some() {
                let (rest, end2) = read_until_closed(&mut t, Duration::from_secs(5)).await;
                answer.push_str(&rest);
                closed = end.or(end2);
                break;
            }
        }
        let answered = started.elapsed();
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "a body trickled for 10 s was not answered 408: {answer:?}"
        );
        assert!(
            answer.contains("request body not received in time: the limit is 2s"),
            "{answer}"
        );
        assert!(
            answered >= Duration::from_secs(2),
            "answered before the body read timeout: {answered:?}"
        );
        assert!(
            answered < Duration::from_secs(6),
            "answered long after the body read timeout: {answered:?}"
        );
        assert!(closed.is_some(), "the connection stayed open after the 408");
    });
}

#[test]
fn a_client_that_reads_none_of_its_answers_is_cut_at_the_idle_timeout() {
    let s = DevServer::start_with(SHORT_TIMEOUTS, &[]);
    rt().block_on(async {
        let tcp = TcpStream::connect(server_addr(&s)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let t = tls_connector(&s).connect(name, tcp).await.unwrap();
        let (mut from_server, mut to_server) = tokio::io::split(t);
        // Requests in a row (HTTP/1.1 pipelining) whose answers, about
        // 18 MB, are more than the sockets' buffers hold: the server's
        // writes wait for this client, which reads nothing.
        const REQUESTS: usize = 40_000;
        let request = b"GET /v1/sys/health HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let sender = tokio::spawn(async move {
            let _ = to_server.write_all(&request.repeat(REQUESTS)).await;
            // The write half stays open: the client has not hung up.
            std::future::pending::<()>().await;
        });
        // Longer than the time to fill them (a second or two) and the idle
        // timeout (3 s) after it, with room for a slow machine.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let mut got = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            // A cut connection ends without TLS's close: an error here.
            let _ = from_server.read_to_end(&mut got).await;
        })
        .await;
        sender.abort();
        let answers = got
            .windows(b"HTTP/1.1 200".len())
            .filter(|w| w == b"HTTP/1.1 200")
            .count();
        assert!(
            ended.is_ok(),
            "the server kept the connection open ({answers} answers read)"
        );
        assert!(
            answers > 0 && answers < REQUESTS,
            "{answers} of {REQUESTS} answers came: the connection was not cut while they waited"
        );
    });
}

#[test]
fn a_long_request_is_not_cut_by_the_idle_timeout() {
    // A host's long-poll sends nothing while it waits; the idle timeout
    // must not end it. The wait (5 s) is longer than the idle timeout (3 s).
    let s = DevServer::start_with(SHORT_TIMEOUTS, &[]);
    rt().block_on(async {
        let pem = std::fs::read(&s.cacert).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let c = s.client();
        let jt = c
            .write(
                "hosts/join-tokens",
                &serde_json::from_value(serde_json::json!({"ttl": "1h"})).unwrap(),
            )
            .await
            .unwrap()
            .unwrap();
        let join = jt.data.unwrap()["join_token"].as_str().unwrap().to_string();
        let enrolled = client
            .post(format!("{}/v1/hosts/enroll", s.addr))
            .json(&serde_json::json!({"join_token": join, "hostname": "idle-poll"}))
            .send()
            .await
            .unwrap();
        assert_eq!(enrolled.status(), 200);
        let body: serde_json::Value = enrolled.json().await.unwrap();
        let host_token = body["data"]["host_token"].as_str().unwrap().to_string();
        let state = client
            .get(format!("{}/v1/hosts/self/state", s.addr))
            .header("X-Vault-Token", &host_token)
            .send()
            .await
            .unwrap();
        assert_eq!(state.status(), 200);
        let body: serde_json::Value = state.json().await.unwrap();
        let index = body["data"]["index"].as_u64().unwrap();
        let start = Instant::now();
        let waited = client
            .get(format!(
                "{}/v1/hosts/self/state?index={index}&wait=5s",
                s.addr
            ))
            .header("X-Vault-Token", &host_token)
            .send()
            .await
            .unwrap();
        assert_eq!(waited.status(), 200);
        assert!(start.elapsed() >= Duration::from_secs(4));
    });
}

/// An HTTP/2 frame: 9 bytes of header, then the payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A TLS connection that agreed on HTTP/2, its preface and (empty)
/// SETTINGS sent.
async fn h2_connection(s: &DevServer) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(server_addr(s)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut t = tls_connector_for(s, &[b"h2"])
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(t.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    t.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    t.write_all(&h2_frame(0x4, 0, 0, &[])).await.unwrap();
    t
}

/// Sends `next()` every 0.5 s until the server ends the connection or
/// 10 s pass; when it ended, from `started`.
async fn cut_while_sending(
    t: &mut tokio_rustls::client::TlsStream<TcpStream>,
    started: Instant,
    mut next: impl FnMut(usize) -> Vec<u8>,
) -> Option<Duration> {
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if t.write_all(&next(i)).await.is_err() {
            return Some(started.elapsed());
        }
        let (_, end) = read_until_closed(t, Duration::from_millis(20)).await;
        if end.is_some() {
            return Some(started.elapsed());
        }
    }
    None
}

/// A connection was cut at `limit` (which cuts it at `from` seconds), not
/// before, and not long after (`by` seconds, room for a busy machine).
fn cut_between(cut: Duration, from: u64, by: u64, limit: &str) {
    assert!(
        cut >= Duration::from_secs(from),
        "cut before {limit}: {cut:?}"
    );
    assert!(
        cut < Duration::from_secs(by),
        "cut long after {limit}: {cut:?}"
    );
}

#[test]
fn over_http2_a_trickled_header_block_is_cut_and_pings_do_not_keep_a_connection() {
    let s = DevServer::start_with(SHORT_TIMEOUTS, &[]);
    rt().block_on(async {
        // A HEADERS frame of 40 bytes, one byte every 0.5 s: never whole,
        // so cut at the header read timeout (2 s), whatever the bytes do
        // to the idle timeout (3 s).
        let mut t = h2_connection(&s).await;
        let started = Instant::now();
        let mut head = h2_frame(0x1, 0x4 | 0x1, 1, &[0x82; 40]);
        head.truncate(9);
        t.write_all(&head).await.unwrap();
        let cut = cut_while_sending(&mut t, started, |_| vec![0x82])
            .await
            .expect("a header block trickled for 10 s was never cut");
        cut_between(cut, 2, 6, "the header read timeout");

        // Pings and nothing else: not a request, so the idle timeout (3 s)
        // runs as if nothing came.
        let mut t = h2_connection(&s).await;
        let started = Instant::now();
        let cut = cut_while_sending(&mut t, started, |i| {
            h2_frame(0x6, 0, 0, &(i as u64).to_be_bytes())
        })
        .await
        .expect("a client pinging for 10 s kept its connection");
        cut_between(cut, 3, 8, "the idle timeout");
    });
}

#[test]
fn over_http2_requests_are_answered_and_a_connection_stays_while_it_is_used() {
    let s = DevServer::start_with(SHORT_TIMEOUTS, &[]);
    rt().block_on(async {
        // `GET /v1/sys/health` every second for 5 s on one connection: each
        // answered, the connection kept past the idle timeout (3 s).
        let mut t = h2_connection(&s).await;
        // HPACK: :method GET (2), :scheme https (7), :path (literal, not
        // indexed, name index 4), :authority localhost (literal, index 1).
        let mut block = vec![0x82, 0x87, 0x04, 14];
        block.extend_from_slice(b"/v1/sys/health");
        block.extend_from_slice(&[0x01, 9]);
        block.extend_from_slice(b"localhost");
        for i in 0..5u32 {
            let stream = 1 + 2 * i;
            t.write_all(&h2_frame(0x1, 0x4 | 0x1, stream, &block))
                .await
                .unwrap();
            let mut bytes = Vec::new();
            let mut buf = vec![0u8; 4096];
            let end = Instant::now() + Duration::from_secs(1);
            while Instant::now() < end {
                match tokio::time::timeout(Duration::from_millis(100), t.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => panic!("closed while in use (request {i})"),
                    Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
            }
            // A HEADERS frame back on this stream: status 200 (HPACK 0x88).
            let answered = bytes.windows(10).any(|w| {
                w[3] == 0x1
                    && u32::from_be_bytes([w[5], w[6], w[7], w[8]]) == stream
                    && w[9] == 0x88
            });
            assert!(answered, "no 200 on stream {stream}: {bytes:?}");
        }
    });
}
