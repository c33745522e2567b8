//! Running the API on a socket, with TLS or (loopback only) without, inside
//! connection limits: a client that opens connections and then sends
//! nothing, or trickles a request header, must not be able to hold the
//! server's sockets until it stops answering everyone else.
//!
//! Every connection passes [`Guard`] first: it takes a slot of the global
//! limit and of its address's limit (refused at once when none is free, so
//! the open-file limit is never reached), and wraps the socket in
//! [`GuardedStream`], which ends a connection that has carried no bytes and
//! served no request for `idle_timeout`, or whose client has taken nothing
//! of what it is sent for as long. The TLS handshake has its own
//! bound (axum-server's acceptor). [`HeaderLimit`], over the bytes after
//! TLS, bounds the time from a request header's first byte to the request
//! (HTTP/1.1; over HTTP/2 a header block's, or any frame's but a body's,
//! and there only requests keep a connection from idling), and
//! [`crate::http::Deadline`] a request body's.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use hyper_util::rt::TokioTimer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::state::State;

/// File descriptors kept free of client connections: the database, the
/// audit file, TLS files and outgoing connections need some.
const FD_RESERVE: u64 = 256;

/// The connection limit in force: the configured one, never above what the
/// open-file limit allows (a server at that limit cannot open its own files).
pub fn effective_max_connections(configured: usize) -> usize {
    let by_files = open_file_limit().saturating_sub(FD_RESERVE).max(16) as usize;
    if configured == 0 {
        by_files
    } else {
        configured.min(by_files)
    }
}

/// Raises the soft open-file limit to the hard one (systemd's default soft
/// limit of 1024 would cap a server long-polled by a fleet); Go does the
/// same for Vault at start.
pub fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
            }
        }
    }
}

/// Turns transparent huge pages off for this process. mimalloc asks the
/// kernel for them on its regions, and each first touch of memory there
/// made the kernel fault in and zero a whole 2 MiB page. When a
/// revocation woke 40,000 long-polls, that zeroing was 12% of the
/// machine's samples and 23% of the servers'; with 4 KiB pages the
/// servers spent 58-61 µs of CPU per host reached, against 75-80.
pub fn no_transparent_huge_pages() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off");
    }
}

fn open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, Resource};
    getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

/// Connections the kernel queues for `accept` (Go's servers, Vault among
/// them, use the system's maximum too). std's 128 overflows when a fleet
/// reconnects at once: the surplus sit half-open, unseen by the server.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the API's listening socket with a deep accept queue.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// Serves until `shutdown` completes, then drains open requests.
pub async fn run(
    core: State,
    listener: std::net::TcpListener,
    tls: Option<RustlsConfig>,
    limits: &Limits,
    proxies: &[ipnet::IpNet],
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // The API and, beside it, the web UI (`/ui/`), which calls into the API's
    // pipeline (so it is merged here rather than known to `http`).
    let app = crate::http::app(core.clone()).merge(crate::ui::routes().with_state(core));
    if !proxies.is_empty() {
        let proxies: Vec<String> = proxies.iter().map(ToString::to_string).collect();
        tracing::info!(
            ?proxies,
            "clients named by X-Forwarded-For from trusted proxies"
        );
    }
    let app = crate::http::proxies::behind(app, proxies)
        .into_make_service_with_connect_info::<SocketAddr>();
    listener.set_nonblocking(true)?;
    let max = effective_max_connections(limits.max_connections);
    tracing::info!(
        max_connections = max,
        max_connections_per_address = limits.max_connections_per_address,
        tls_handshake_timeout = ?limits.tls_handshake_timeout,
        header_read_timeout = ?limits.header_read_timeout,
        idle_timeout = ?limits.idle_timeout,
        "connection limits"
    );
    let guard = Guard::new(max, limits);
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let mut server = axum_server::from_tcp(listener).handle(handle);
    {
        // Not hyper's own header timeout: it also runs while a kept-alive
        // connection waits for its next request, so an idle connection
        // would be closed after `header_read_timeout` rather than
        // `idle_timeout`, and a client pausing between requests would pay
        // a new TLS handshake. `HeaderLimit` starts it at the first byte.
        let builder = server.http_builder();
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None);
        builder.http2().timer(TokioTimer::new());
    }
    let header_read = limits.header_read_timeout;
    let served = match tls {
        Some(cfg) => {
            let acceptor = RustlsAcceptor::new(cfg)
                .handshake_timeout(limits.tls_handshake_timeout)
                .acceptor(guard);
            server
                .acceptor(HeaderLimit::new(acceptor, header_read))
                .serve(app)
                .await
        }
        None => {
            server
                .acceptor(HeaderLimit::new(guard, header_read))
                .serve(app)
                .await
        }
    };
    served.map_err(Error::Io)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// Admits a connection within the limits, before any TLS work is spent on it.
#[derive(Clone)]
struct Guard {
    shared: Arc<GuardShared>,
}

struct GuardShared {
    total: Arc<Semaphore>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    max_per_address: usize,
    idle: Duration,
    body_read: Duration,
    /// Refusals since the last warning; warnings are at most one a second
    /// so that a flood cannot fill the journal.
    refused: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl Guard {
    fn new(max: usize, limits: &Limits) -> Guard {
        Guard {
            shared: Arc::new(GuardShared {
                total: Arc::new(Semaphore::new(max)),
                per_address: Mutex::new(HashMap::new()),
                max_per_address: limits.max_connections_per_address,
                idle: limits.idle_timeout,
                body_read: limits.body_read_timeout,
                refused: AtomicU64::new(0),
                last_warning: Mutex::new(None),
            }),
        }
    }

    fn admit(&self, stream: &TcpStream) -> io::Result<Admission> {
        let ip = stream.peer_addr()?.ip();
        let Ok(permit) = self.shared.total.clone().try_acquire_owned() else {
            return Err(self.refuse(ip, "the server's connection limit is reached"));
        };
        if self.shared.max_per_address > 0 {
            let mut counts = self
                .shared
                .per_address
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let n = counts.entry(ip).or_insert(0);
            if *n >= self.shared.max_per_address {
                drop(counts);
                return Err(self.refuse(ip, "this address's connection limit is reached"));
            }
            *n += 1;
        }
        Ok(Admission {
            shared: self.shared.clone(),
            ip,
            _permit: permit,
        })
    }

    fn refuse(&self, ip: IpAddr, why: &'static str) -> io::Error {
        let refused = self.shared.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self
            .shared
            .last_warning
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            *last = Some(now);
            self.shared.refused.store(0, Ordering::Relaxed);
            tracing::warn!(client = %ip, refused, "connection refused: {why}");
        }
        io::Error::other(why)
    }
}

/// A connection's slots; given back when the connection ends.
struct Admission {
    shared: Arc<GuardShared>,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.shared.max_per_address == 0 {
            return;
        }
        let mut counts = self
            .shared
            .per_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl<S> Accept<TcpStream, S> for Guard {
    type Stream = GuardedStream;
    type Service = CountedService<S>;
    type Future = std::future::Ready<io::Result<(GuardedStream, CountedService<S>)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        std::future::ready(self.admit(&stream).and_then(|admission| {
            // TCP_NODELAY: small TLS handshake records otherwise wait on
            // delayed ACKs (tens of ms added to a fresh connection).
            stream.set_nodelay(true)?;
            let activity = Arc::new(Activity::new());
            Ok((
                GuardedStream {
                    inner: stream,
                    activity: activity.clone(),
                    idle: self.shared.idle,
                    timer: Box::pin(tokio::time::sleep(self.shared.idle)),
                    stalled_since: None,
                    write_timer: None,
                    _admission: admission,
                },
                CountedService {
                    inner: service,
                    activity,
                    body_read: self.shared.body_read,
                },
            ))
        }))
    }
}

/// What the idle timer needs to know about a connection.
struct Activity {
    /// Requests being answered; a connection is never idle while one is
    /// (a long-poll may be silent for its whole wait).
    in_flight: AtomicUsize,
    /// Requests begun on the connection so far.
    begun: AtomicU64,
    /// The connection switched protocols (101): what it carries from then
    /// on is no HTTP request.
    switched: AtomicBool,
    /// The client speaks HTTP/2: only its requests' frames count as
    /// activity, which [`HeaderTimed`] (seeing the clear text) notes; the
    /// bytes of pings, settings and window updates do not, or a client
    /// could hold a connection for ever by pinging.
    h2: AtomicBool,
    /// When a byte last moved or a request last finished, in milliseconds
    /// since `base`.
    last_ms: AtomicU64,
    base: Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
            switched: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            last_ms: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Release);
    }

    /// When the connection becomes idle if nothing happens before then.
    fn idle_at(&self, idle: Duration) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Acquire)) + idle
    }
}

/// The socket of one admitted connection, ended by the server (EOF to the
/// HTTP layer) after `idle` without a byte or a request.
pub struct GuardedStream {
    inner: TcpStream,
    activity: Arc<Activity>,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    /// Since when a write has waited for the client to take bytes.
    stalled_since: Option<Instant>,
    /// Made at the first write that waits (most connections never have one).
    write_timer: Option<Pin<Box<Sleep>>>,
    _admission: Admission,
}

impl GuardedStream {
    /// Polls the idle timer; Ready when the connection is to be ended.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let deadline = if self.activity.in_flight.load(Ordering::Acquire) > 0 {
                now + self.idle
            } else {
                self.activity.idle_at(self.idle)
            };
            if deadline <= now {
                return Poll::Ready(());
            }
            // Something happened since the timer was set: wait the rest.
            self.timer.as_mut().reset(deadline);
        }
    }

    /// For a write the socket does not take: Ready with an error once the
    /// client has taken nothing for `idle` since this write got stuck, and
    /// no byte has moved the other way either, whether or not a request is
    /// in flight. A client that stops reading would otherwise hold the task
    /// writing to it, and its slot, for ever: what it was sent fills the
    /// kernel's buffers and the write waits (a relayed session whose user
    /// reads nothing, an answer larger than those buffers). A slow reader
    /// is not cut: each byte it takes lets a write through and starts the
    /// time over. A timer of its own: the idle timer is pushed on while a
    /// request is in flight.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let now = Instant::now();
        let since = *self.stalled_since.get_or_insert(now);
        let deadline = || (since + self.idle).max(self.activity.idle_at(self.idle));
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline())));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let at = deadline();
            if at <= Instant::now() {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took no bytes for the idle timeout",
                ));
            }
            timer.as_mut().reset(at);
        }
    }

    /// A write's outcome, counted as activity, or the stall's error.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    if !self.activity.h2.load(Ordering::Acquire) {
                        self.activity.touch();
                    }
                    self.stalled_since = None;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_stalled(cx).map(Err),
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before && !self.activity.h2.load(Ordering::Acquire) {
                    self.activity.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                match self.poll_idle(cx) {
                    // End of stream: the HTTP layer closes the connection
                    // as if the client had.
                    Poll::Ready(()) => Poll::Ready(Ok(())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connection's service, counting its requests in flight and giving
/// each request's body its deadline ([`crate::http::Deadline`]).
#[derive(Clone)]
pub struct CountedService<S> {
    inner: S,
    activity: Arc<Activity>,
    body_read: Duration,
}

/// One request in flight; finished (and the timer started over) on drop,
/// also when the client hung up mid-request.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.begun.fetch_add(1, Ordering::AcqRel);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, B, ResB> tower::Service<axum::http::Request<B>> for CountedService<S>
where
    S: tower::Service<
        axum::http::Request<crate::http::Deadline<B>>,
        Response = axum::http::Response<ResB>,
    >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let in_flight = InFlight::new(self.activity.clone());
        let limit = self.body_read;
        let fut = self
            .inner
            .call(req.map(|body| crate::http::Deadline::new(body, limit)));
        let activity = self.activity.clone();
        Box::pin(async move {
            let r = fut.await;
            // Before hyper writes the 101 and hands the connection over.
            if matches!(&r, Ok(res) if res.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS)
            {
                activity.switched.store(true, Ordering::Release);
            }
            drop(in_flight);
            r
        })
    }
}

/// Wraps the stream each connection ends up with (after TLS, where there
/// is TLS) in [`HeaderTimed`], which sees what the client sends in clear.
#[derive(Clone)]
struct HeaderLimit<A> {
    inner: A,
    limit: Duration,
}

impl<A> HeaderLimit<A> {
    fn new(inner: A, limit: Duration) -> HeaderLimit<A> {
        HeaderLimit { inner, limit }
    }
}

impl<A, I, S> Accept<I, S> for HeaderLimit<A>
where
    A: Accept<I, S, Service = CountedService<S>>,
    A::Future: Send + 'static,
{
    type Stream = HeaderTimed<A::Stream>;
    type Service = CountedService<S>;
    type Future = Pin<
        Box<dyn Future<Output = io::Result<(HeaderTimed<A::Stream>, CountedService<S>)>> + Send>,
    >;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepted = self.inner.accept(stream, service);
        let limit = self.limit;
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            let activity = service.activity.clone();
            Ok((HeaderTimed::new(stream, activity, limit), service))
        })
    }
}

/// What the client's first bytes say it speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Speaks {
    /// Not known yet: this many bytes matched HTTP/2's preface so far.
    Unknown(usize),
    Http1,
    /// HTTP/2: its frames (window updates, pings) come between requests
    /// too, so its limits follow the frames ([`H2Frames`]).
    Http2,
}

/// HTTP/2's connection preface; its first four bytes are never the start
/// of an HTTP/1.1 request hyper would take.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Speaks {
    fn after(self, bytes: &[u8]) -> Speaks {
        let Speaks::Unknown(matched) = self else {
            return self;
        };
        let want = &H2_PREFACE[matched..];
        let n = bytes.len().min(want.len());
        if bytes[..n] != want[..n] {
            Speaks::Http1
        } else if matched + n >= 4 {
            Speaks::Http2
        } else {
            Speaks::Unknown(matched + n)
        }
    }
}

/// HTTP/2 frame types and the flag that ends a header block (RFC 9113).
const H2_DATA: u8 = 0x0;
const H2_HEADERS: u8 = 0x1;
const H2_PUSH_PROMISE: u8 = 0x5;
const H2_CONTINUATION: u8 = 0x9;
const H2_END_HEADERS: u8 = 0x4;

/// Follows the frames an HTTP/2 client sends, as far as the connection
/// limits need: whether a header block, or a frame that is not a body's,
/// is part-way (its time is the header read timeout's), and whether bytes
/// belong to a request (HEADERS, CONTINUATION, DATA). hyper keeps neither
/// a header read limit nor an idle timeout for HTTP/2, so a client could
/// trickle a header block, or ping, for ever.
#[derive(Debug)]
struct H2Frames {
    /// Bytes of the connection preface still to come.
    preface_left: usize,
    /// The frame header being read (9 bytes), then its type and flags.
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// A HEADERS or PUSH_PROMISE without END_HEADERS came: CONTINUATION
    /// frames follow until one has it.
    block_open: bool,
}

impl H2Frames {
    fn new(preface_seen: usize) -> H2Frames {
        H2Frames {
            preface_left: H2_PREFACE.len().saturating_sub(preface_seen),
            head: [0; 9],
            head_len: 0,
            payload_left: 0,
            block_open: false,
        }
    }

    fn kind(&self) -> u8 {
        self.head[3]
    }

    /// Something that must come whole within the limit is part-way.
    fn pending(&self) -> bool {
        self.preface_left > 0
            || self.block_open
            || (self.head_len > 0 && !(self.head_len == 9 && self.kind() == H2_DATA))
    }

    /// Takes the client's next bytes.
    fn take(&mut self, mut bytes: &[u8]) -> Took {
        let mut took = Took {
            request: false,
            settled: false,
        };
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
                took.settled |= self.preface_left == 0;
                continue;
            }
            if self.head_len < 9 {
                let n = (9 - self.head_len).min(bytes.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
                self.head_len += n;
                bytes = &bytes[n..];
                if self.head_len < 9 {
                    continue;
                }
                let [a, b, c, ..] = self.head;
                self.payload_left = u32::from_be_bytes([0, a, b, c]) as usize;
            } else {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            }
            let kind = self.kind();
            took.request |= matches!(kind, H2_DATA | H2_HEADERS | H2_CONTINUATION);
            if self.payload_left == 0 {
                // The frame is whole.
                let ends_block = self.head[4] & H2_END_HEADERS != 0;
                match kind {
                    H2_HEADERS | H2_PUSH_PROMISE | H2_CONTINUATION => self.block_open = !ends_block,
                    _ => {}
                }
                self.head_len = 0;
                took.settled |= !self.block_open;
            }
        }
        took
    }
}

/// What a read of HTTP/2 bytes did.
struct Took {
    /// Some bytes were a request's frames (HEADERS, CONTINUATION, DATA).
    request: bool,
    /// Some frame came whole with no header block left open: what is
    /// part-way now began in this read.
    settled: bool,
}

/// The clear-text stream of one connection, ended (EOF to the HTTP layer)
/// when a request header takes longer than its limit: from the first byte
/// that came while no request was being answered to the request's start.
/// A kept-alive connection that sends nothing is the idle timeout's, and a
/// connection that switched protocols (a relay) carries no more requests.
pub struct HeaderTimed<T> {
    inner: T,
    activity: Arc<Activity>,
    limit: Duration,
    speaks: Speaks,
    /// While a header is coming: the count of requests begun when its
    /// first byte came.
    reading: Option<u64>,
    /// The client's HTTP/2 frames, once it speaks HTTP/2.
    h2: Option<H2Frames>,
    timer: Pin<Box<Sleep>>,
}

impl<T> HeaderTimed<T> {
    fn new(inner: T, activity: Arc<Activity>, limit: Duration) -> HeaderTimed<T> {
        HeaderTimed {
            inner,
            activity,
            limit,
            speaks: Speaks::Unknown(0),
            reading: None,
            h2: None,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }

    fn header_expected(&self) -> bool {
        self.speaks != Speaks::Http2
            && !self.activity.switched.load(Ordering::Acquire)
            && self.activity.in_flight.load(Ordering::Acquire) == 0
    }

    /// Bytes came from the client.
    fn received(&mut self, bytes: &[u8]) {
        let before = self.speaks;
        self.speaks = self.speaks.after(bytes);
        if self.speaks == Speaks::Http2 {
            self.received_h2(before, bytes);
            return;
        }
        if !self.header_expected() {
            return;
        }
        let begun = self.activity.begun.load(Ordering::Acquire);
        // The same header still coming, or the first byte of a new one.
        if self.reading != Some(begun) {
            self.reading = Some(begun);
            self.timer.as_mut().reset(Instant::now() + self.limit);
        }
    }

    /// HTTP/2 bytes came: a header block, or any frame but a body's, has
    /// `limit` from its first byte to its last (as an HTTP/1.1 header
    /// has), and only requests' frames keep the connection from idling.
    fn received_h2(&mut self, before: Speaks, bytes: &[u8]) {
        let (frames, was_pending) = match &mut self.h2 {
            Some(f) => {
                let pending = f.pending();
                (f, pending)
            }
            None => {
                self.activity.h2.store(true, Ordering::Release);
                // The preface's bytes matched in earlier reads.
                let seen = match before {
                    Speaks::Unknown(matched) => matched,
                    _ => 0,
                };
                (self.h2.insert(H2Frames::new(seen)), false)
            }
        };
        let took = frames.take(bytes);
        if took.request {
            self.activity.touch();
        }
        // The time runs from the read in which the part-way frame or block
        // began: one that came whole starts it over, a CONTINUATION of a
        // block still open does not.
        if frames.pending() && (!was_pending || took.settled) {
            self.timer.as_mut().reset(Instant::now() + self.limit);
        }
    }

    /// Ready when the header being read is over its limit.
    fn poll_overdue(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(frames) = &self.h2 {
            if !frames.pending() || self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            tracing::debug!(limit = ?self.limit, "HTTP/2 header block or frame not received in time: connection closed");
            return Poll::Ready(());
        }
        let Some(begun) = self.reading else {
            return Poll::Pending;
        };
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.reading = None;
        if self.header_expected() && self.activity.begun.load(Ordering::Acquire) == begun {
            tracing::debug!(limit = ?self.limit, "request header not received in time: connection closed");
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeaderTimed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    self.received(new);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.poll_overdue(cx) {
                // End of stream, as for the idle timeout.
                Poll::Ready(()) => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeaderTimed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const IDLE: Duration = Duration::from_secs(1);

    /// A guarded server side and its client, both sockets with small
    /// buffers, so that a client that reads nothing stops the server's
    /// writes after a few kilobytes.
    async fn guarded_pair() -> (GuardedStream, TcpStream) {
        let small = |s: &tokio::net::TcpSocket| {
            s.set_send_buffer_size(4096).unwrap();
            s.set_recv_buffer_size(4096).unwrap();
        };
        let listen = tokio::net::TcpSocket::new_v4().unwrap();
        small(&listen);
        listen.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listen.listen(8).unwrap();
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        small(&client);
        let client = client
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let limits = Limits {
            idle_timeout: IDLE,
            ..Limits::default()
        };
        let (guarded, _service) = Guard::new(8, &limits).accept(server, ()).await.unwrap();
        (guarded, client)
    }

    #[tokio::test]
    async fn a_write_the_client_does_not_take_fails_after_the_idle_timeout() {
        let (mut server, _client) = guarded_pair().await;
        let chunk = vec![7u8; 16 * 1024];
        let started = Instant::now();
        let mut sent = 0usize;
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match server.write(&chunk).await {
                    Ok(n) => sent += n,
                    Err(e) => return e,
                }
            }
        })
        .await
        .expect("a write the client never took waited for ever");
        assert_eq!(outcome.kind(), io::ErrorKind::TimedOut, "{outcome}");
        assert!(sent > 0, "nothing was written before the stall");
        assert!(started.elapsed() >= IDLE, "cut before the idle timeout");
    }

    #[tokio::test]
    async fn a_slow_reader_is_not_cut_however_long_it_takes() {
        let (mut server, mut client) = guarded_pair().await;
        // A read every 150 ms: every write waits (the kernel lets one
        // through once the client has taken about half its buffer, about
        // every other read), none for the whole idle timeout, and the whole
        // takes longer than it.
        let total = 48 * 1024;
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = vec![0u8; 4096];
            while got < total {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "the server ended the connection");
                got += n;
            }
            got
        });
        let started = Instant::now();
        server.write_all(&vec![7u8; total]).await.unwrap();
        assert_eq!(reader.await.unwrap(), total);
        assert!(
            started.elapsed() > IDLE,
            "the writes never waited for the reader: {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn h2_frames_time_what_is_part_way_and_start_over_when_it_comes_whole() {
        let frame = |kind: u8, flags: u8, payload: &[u8]| {
            let len = payload.len() as u32;
            let mut f = vec![
                (len >> 16) as u8,
                (len >> 8) as u8,
                len as u8,
                kind,
                flags,
                0,
                0,
                0,
                1,
            ];
            f.extend_from_slice(payload);
            f
        };
        let mut f = H2Frames::new(0);
        assert!(f.pending(), "the preface is to come");
        let took = f.take(H2_PREFACE);
        assert!(took.settled && !took.request && !f.pending());
        // A busy connection whose reads each end part-way into the next
        // frame: every read completes one, so the time starts over.
        let mut stream = Vec::new();
        for _ in 0..3 {
            stream.extend(frame(H2_HEADERS, H2_END_HEADERS, &[0x82; 30]));
        }
        let (first, rest) = stream.split_at(20);
        let took = f.take(first);
        assert!(took.request && !took.settled && f.pending());
        for piece in rest.chunks(39) {
            let took = f.take(piece);
            assert!(took.settled, "a whole frame came: the time starts over");
        }
        assert!(!f.pending());
        // A block left open by HEADERS: CONTINUATIONs do not start it over
        // until one ends it.
        assert!(f.take(&frame(H2_HEADERS, 0, &[0x82])).request);
        assert!(f.pending());
        let took = f.take(&frame(H2_CONTINUATION, 0, &[0x86]));
        assert!(!took.settled && f.pending());
        let took = f.take(&frame(H2_CONTINUATION, H2_END_HEADERS, &[0x84]));
        assert!(took.settled && !f.pending());
        // A body's payload may take its time; pings are not requests.
        let data = frame(H2_DATA, 0, &[0u8; 100]);
        f.take(&data[..20]);
        assert!(!f.pending(), "a body is the body timeout's");
        f.take(&data[20..]);
        let took = f.take(&frame(0x6, 0, &[0u8; 8]));
        assert!(!took.request && took.settled && !f.pending());
    }

    #[test]
    fn http2_is_told_from_http1_by_its_preface_however_it_is_split() {
        let first = |parts: &[&[u8]]| parts.iter().fold(Speaks::Unknown(0), |s, p| s.after(p));
        assert_eq!(first(&[H2_PREFACE]), Speaks::Http2);
        assert_eq!(first(&[b"P", b"R", b"I", b" * HTTP/2.0"]), Speaks::Http2);
        assert_eq!(first(&[b"PR"]), Speaks::Unknown(2));
        assert_eq!(first(&[b"POST /v1/ssh/sign/r HTTP/1.1\r\n"]), Speaks::Http1);
        assert_eq!(first(&[b"PU", b"T / HTTP/1.1"]), Speaks::Http1);
        assert_eq!(first(&[b"GET / HTTP/1.1\r\n", H2_PREFACE]), Speaks::Http1);
    }
}
