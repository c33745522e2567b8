//! The gateway's SSH server: who gets in, and what they may open.
//!
//! Only user certificates of the gateway session CA are accepted: valid
//! now, without critical options, naming the login user among their
//! principals, and whose key ID is
//! a session the [`SessionSource`] knows and reports open. Passwords and
//! plain keys are refused. Once in, the gateway is already logged in to the
//! target; each channel the user opens gets its twin on the target.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::Fingerprint;
use russh::keys::{Certificate, HashAlg, PrivateKey, PublicKey};
use russh::server::{self, Auth, ChannelOpenHandle, Msg, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect, MethodKind, MethodSet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::bridge::{self, Activity};
use crate::clock;
use crate::limits;
use crate::recording::{ChannelTap, Recorder, RecordingSettings};
use crate::session::{EndReason, Session, SessionSource, SourceError};
use crate::target::{self, Target, TargetLost};
use gatepass_api::recording::EventKind;

/// What the SSH server needs besides its sessions.
pub struct GatewayConfig {
    /// The gateway's own host keys.
    pub host_keys: Vec<PrivateKey>,
    /// The gateway session CA's public keys (more than one while rotating).
    pub session_cas: SessionCas,
    /// Close a session after this long without data either way.
    pub idle_timeout: Option<Duration>,
    /// Record sessions whose source hands out a recording; None records
    /// nothing.
    pub recording: Option<Arc<RecordingSettings>>,
    /// Time for a connection to log in, from its first byte: one that
    /// has not by then is closed ([`LOGIN_GRACE`] by default).
    pub login_grace: Duration,
}

/// sshd's `LoginGraceTime` default: a connection that has not logged in
/// this long after it was accepted is closed. Without a bound, connections
/// that never send a byte pile up until the process runs out of file
/// descriptors.
pub const LOGIN_GRACE: Duration = Duration::from_secs(120);

/// Waited after a failed `accept` (no descriptor free, mostly) before the
/// next: the sessions already open go on, and new ones are taken again
/// once descriptors come back.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The session CA keys the gateway accepts certificates of. Shared: the
/// server source replaces them when the server's list changes, and every
/// login after that checks against the new set.
#[derive(Clone, Debug, Default)]
pub struct SessionCas(Arc<RwLock<Vec<Fingerprint>>>);

impl SessionCas {
    pub fn new(keys: &[PublicKey]) -> SessionCas {
        let cas = SessionCas::default();
        cas.set(keys);
        cas
    }

    /// Replaces the accepted keys.
    pub fn set(&self, keys: &[PublicKey]) {
        let fingerprints = keys
            .iter()
            .map(|k| k.fingerprint(HashAlg::Sha256))
            .collect();
        if let Ok(mut slot) = self.0.write() {
            *slot = fingerprints;
        }
    }

    pub fn fingerprints(&self) -> Vec<Fingerprint> {
        self.0.read().map(|f| f.clone()).unwrap_or_default()
    }
}

/// How long a stopping gateway waits for its sessions' ends to be reported.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` for as long as the process runs (a
/// failed `accept` is waited out, see [`ACCEPT_BACKOFF`]).
pub async fn serve<S: SessionSource>(
    listener: TcpListener,
    config: GatewayConfig,
    source: Arc<S>,
) -> io::Result<()> {
    serve_until(listener, config, source, std::future::pending()).await
}

/// One user's connection that reached the gateway some other way than its
/// own port: relayed by the server ([`serve_relayed_until`]).
pub trait RelayedIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> RelayedIo for T {}
pub type RelayedStream = Box<dyn RelayedIo>;

/// Where users' connections come from.
enum Incoming {
    /// The gateway's own port.
    Port(TcpListener),
    /// Connections the server relays (the gateway listens on no port).
    Relayed(mpsc::Receiver<RelayedStream>),
}

/// Accepts connections on `listener` until `stop` resolves; then tells
/// each connected user that the gateway is stopping, closes their
/// sessions, reports them ended ([`EndReason::GatewayLost`]) and returns
/// once the reports are done and the connections closed (or after grace
/// periods of 10 s and 3 s).
pub async fn serve_until<S: SessionSource>(
    listener: TcpListener,
    config: GatewayConfig,
    source: Arc<S>,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_incoming(Incoming::Port(listener), config, source, stop).await
}

/// As [`serve_until`], for connections relayed by the server instead of
/// accepted on a port: each stream of `streams` is one user's connection,
/// checked and served exactly as one on the port would be. Returns when
/// `stop` resolves (as [`serve_until`] does) or `streams` closes.
pub async fn serve_relayed_until<S: SessionSource>(
    streams: mpsc::Receiver<RelayedStream>,
    config: GatewayConfig,
    source: Arc<S>,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_incoming(Incoming::Relayed(streams), config, source, stop).await
}

/// Serves one connection with `handler` until it closes, until the gateway
/// stops (`down`, with the message users are told), or, if it has not
/// logged in by then, until `grace` after it came.
async fn serve_stream<S: SessionSource>(
    config: Arc<server::Config>,
    stream: RelayedStream,
    handler: Connection<S>,
    mut down: tokio::sync::broadcast::Receiver<String>,
    grace: Duration,
) {
    let deadline = tokio::time::Instant::now() + grace;
    let logged_in = handler.logged_in.clone();
    // russh reads the client's identification line without a time limit.
    let session = match tokio::time::timeout_at(
        deadline,
        server::run_stream(config, stream, handler),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = ?e, "connection failed before its session began");
            return;
        }
        Err(_) => {
            tracing::debug!(
                ?grace,
                "connection closed: no SSH identification within the login grace time"
            );
            return;
        }
    };
    let handle = session.handle();
    tokio::pin!(session);
    let grace_over = tokio::time::sleep_until(deadline);
    tokio::pin!(grace_over);
    let mut checked = false;
    loop {
        tokio::select! {
            r = &mut session => {
                if let Err(e) = r {
                    tracing::debug!(error = ?e, "connection ended");
                }
                return;
            }
            reason = down.recv() => {
                let _ = handle
                    .disconnect(Disconnect::ByApplication, reason.unwrap_or_default(), "en".into())
                    .await;
                let _ = session.await;
                return;
            }
            () = &mut grace_over, if !checked => {
                checked = true;
                if !logged_in.load(Ordering::Acquire) {
                    tracing::debug!(?grace, "connection closed: not logged in within the login grace time");
                    let _ = handle
                        .disconnect(
                            Disconnect::ByApplication,
                            "gatepass: login grace time over".into(),
                            "en".into(),
                        )
                        .await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), &mut session).await;
                    return;
                }
            }
        }
    }
}

/// Logs a failed `accept` at most once a second, with how many failed.
struct AcceptFailures {
    since_warning: u64,
    last_warning: Option<tokio::time::Instant>,
}

impl AcceptFailures {
    fn note(&mut self, e: &io::Error) {
        self.since_warning += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            warn!(error = %e, failed = self.since_warning, "cannot accept connections (open sessions go on)");
            self.last_warning = Some(now);
            self.since_warning = 0;
        }
    }
}

async fn serve_incoming<S: SessionSource>(
    incoming: Incoming,
    config: GatewayConfig,
    source: Arc<S>,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let ssh = server::Config {
        keys: config.host_keys,
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // OpenSSH probes with "none" first; answer that at once.
        auth_rejection_time_initial: Some(Duration::ZERO),
        auth_rejection_time: Duration::from_millis(300),
        // The idle timeout is the gateway's own, with a message.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    };
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let (guard, mut reports_done) = mpsc::channel::<()>(1);
    let guards = Arc::new(Mutex::new(Some(guard)));
    let (open, mut connections_gone) = mpsc::channel::<()>(1);
    let connection_guards = Arc::new(Mutex::new(Some(open)));
    let mut acceptor = Acceptor {
        source,
        shared: Arc::new(Shared {
            cas: config.session_cas,
            idle_timeout: config.idle_timeout,
            recording: config.recording,
            stopping: stopping_rx,
            guards: guards.clone(),
            connection_guards: connection_guards.clone(),
        }),
    };
    let ssh = Arc::new(ssh);
    let grace = config.login_grace;
    // Disconnects whoever is still connected, with a message.
    let disconnect_all: Box<dyn FnOnce(String) + Send> = match incoming {
        Incoming::Port(listener) => {
            // The gateway's own accept loop rather than russh's, which
            // ends at the first failed `accept` (EMFILE): the process
            // would exit and every open session drop with it.
            let (down, _) = tokio::sync::broadcast::channel::<String>(1);
            let accepting = async {
                let mut failures = AcceptFailures {
                    since_warning: 0,
                    last_warning: None,
                };
                loop {
                    match listener.accept().await {
                        Ok((socket, peer)) => {
                            let _ = socket.set_nodelay(true);
                            let handler = server::Server::new_client(&mut acceptor, Some(peer));
                            tokio::spawn(serve_stream(
                                ssh.clone(),
                                Box::new(socket),
                                handler,
                                down.subscribe(),
                                grace,
                            ));
                        }
                        Err(e) => {
                            failures.note(&e);
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                        }
                    }
                }
            };
            tokio::select! {
                () = accepting => {}
                () = stop => {}
            }
            drop(listener);
            Box::new(move |why| {
                let _ = down.send(why);
            })
        }
        Incoming::Relayed(mut streams) => {
            let (down, _) = tokio::sync::broadcast::channel::<String>(1);
            let accepting = async {
                while let Some(stream) = streams.recv().await {
                    let handler = server::Server::new_client(&mut acceptor, None);
                    tokio::spawn(serve_stream(
                        ssh.clone(),
                        stream,
                        handler,
                        down.subscribe(),
                        grace,
                    ));
                }
            };
            tokio::select! {
                () = accepting => return Ok(()),
                () = stop => {}
            }
            drop(streams);
            Box::new(move |why| {
                let _ = down.send(why);
            })
        }
    };
    // No new connections from here; those in flight see `stopping`.
    drop(acceptor);
    info!("stopping: closing the open sessions");
    let _ = stopping_tx.send(true);
    if let Ok(mut slot) = guards.lock() {
        slot.take();
    }
    // Every session holds a guard until its end is reported.
    if tokio::time::timeout(STOP_GRACE, reports_done.recv())
        .await
        .is_err()
    {
        warn!("stopping without having reported every session's end");
    }
    // The messages and disconnects are queued: the connections must write
    // them out and close before the process may exit. Whoever is still
    // connected after a while (not logged in) is disconnected by russh,
    // which drops what its connection had queued, so only then.
    if let Ok(mut slot) = connection_guards.lock() {
        slot.take();
    }
    if tokio::time::timeout(Duration::from_secs(2), connections_gone.recv())
        .await
        .is_err()
    {
        disconnect_all("gatepass: the gateway is stopping".into());
        let _ = tokio::time::timeout(Duration::from_secs(1), connections_gone.recv()).await;
    }
    Ok(())
}

struct Shared {
    cas: SessionCas,
    idle_timeout: Option<Duration>,
    recording: Option<Arc<RecordingSettings>>,
    /// Becomes true when the gateway stops.
    stopping: watch::Receiver<bool>,
    /// Handed out to each admitted session and dropped once its end is
    /// reported; None once the gateway stops.
    guards: Arc<Mutex<Option<mpsc::Sender<()>>>>,
    /// Held by each connection until it is gone; None once the gateway
    /// stops.
    connection_guards: Arc<Mutex<Option<mpsc::Sender<()>>>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    fn guard(&self) -> Option<mpsc::Sender<()>> {
        self.guards.lock().ok().and_then(|g| g.clone())
    }
}

/// Reports one session's end to the source, exactly once: [`Reporter::send`]
/// consumes it, and dropping it unsent (the connection went before its
/// supervisor started) reports [`EndReason::Closed`].
struct Reporter<S: SessionSource> {
    inner: Option<(Arc<S>, String, Option<mpsc::Sender<()>>)>,
}

impl<S: SessionSource> Reporter<S> {
    fn new(source: Arc<S>, session_id: String, guard: Option<mpsc::Sender<()>>) -> Reporter<S> {
        Reporter {
            inner: Some((source, session_id, guard)),
        }
    }

    fn send(mut self, reason: EndReason, detail: Option<String>) {
        self.report(reason, detail);
    }

    fn report(&mut self, reason: EndReason, detail: Option<String>) {
        let Some((source, id, guard)) = self.inner.take() else {
            return;
        };
        info!(session = %id, reason = ?reason, detail = detail.as_deref().unwrap_or(""),
            "session ended");
        // The connection closes without waiting for the source.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                source.ended(&id, reason, detail).await;
                drop(guard);
            });
        }
    }
}

impl<S: SessionSource> Drop for Reporter<S> {
    fn drop(&mut self) {
        self.report(EndReason::Closed, None);
    }
}

struct Acceptor<S> {
    source: Arc<S>,
    shared: Arc<Shared>,
}

impl<S: SessionSource> server::Server for Acceptor<S> {
    type Handler = Connection<S>;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Connection<S> {
        Connection {
            source: self.source.clone(),
            shared: self.shared.clone(),
            peer,
            state: State::Unauthenticated,
            logged_in: Arc::new(AtomicBool::new(false)),
            _open: self
                .shared
                .connection_guards
                .lock()
                .ok()
                .and_then(|g| g.clone()),
        }
    }
}

/// One user's connection.
pub struct Connection<S: SessionSource> {
    source: Arc<S>,
    shared: Arc<Shared>,
    peer: Option<SocketAddr>,
    state: State<S>,
    /// Set once the user is in with a live session: the login grace time
    /// no longer applies.
    logged_in: Arc<AtomicBool>,
    /// Dropped with the connection: a stopping gateway waits for that.
    _open: Option<mpsc::Sender<()>>,
}

enum State<S: SessionSource> {
    Unauthenticated,
    /// The certificate was good but the session's source or target could
    /// not be used; the user is told why and disconnected, and no channel
    /// opens.
    TargetFailed {
        session_id: String,
        message: String,
    },
    Live(Box<Live<S>>),
}

struct Live<S: SessionSource> {
    session_id: String,
    /// Taken by the supervisor, which reports the end.
    reporter: Option<Reporter<S>>,
    expires_at: u64,
    allow_forwarding: bool,
    target: Arc<Target>,
    /// Taken by the supervisor.
    target_lost: Option<TargetLost>,
    /// Set when the session ends: no channel opens after that.
    ended: Arc<AtomicBool>,
    /// The user's open session channels, to tell them why it ended.
    channels: Arc<Mutex<HashSet<ChannelId>>>,
    /// Each bridged channel's answers to its requests, in order.
    answers: HashMap<ChannelId, bridge::Answers>,
    /// Channels bridged and not yet ended (sessions and forwards): at
    /// most [`MAX_CHANNELS`].
    bridged: Arc<AtomicUsize>,
    activity: Arc<Activity>,
    /// The connection's recording.
    recorder: Option<Arc<Recorder>>,
    /// Dropped with the connection, which stops its supervisor.
    gone: Option<oneshot::Sender<()>>,
}

impl<S: SessionSource> Live<S> {
    fn open(&self) -> bool {
        !self.ended.load(Ordering::SeqCst) && clock::now_unix() < self.expires_at
    }

    /// Whether one more channel may be bridged; says so in the log when
    /// not.
    fn room_for_a_channel(&self, kind: &str) -> bool {
        let room = self.bridged.load(Ordering::SeqCst) < MAX_CHANNELS;
        if !room {
            warn!(session = %self.session_id, kind, max = MAX_CHANNELS,
                "refused a channel: the connection has as many open as it may");
        }
        room
    }

    /// Counts a channel bridged until the returned guard goes.
    fn count_channel(&self) -> ChannelCount {
        self.bridged.fetch_add(1, Ordering::SeqCst);
        ChannelCount(self.bridged.clone())
    }
}

/// Channels one connection may have bridged at once (sessions and
/// forwards together). Each holds, per direction, up to russh's buffer of
/// messages that the other side has not taken (about 3 MiB): without a
/// bound, a client opening forwards it never reads could fill the
/// gateway's memory. OpenSSH's sshd allows 10 session channels; forwards
/// (a browser through `ssh -L`) take more.
pub const MAX_CHANNELS: usize = 64;

/// One bridged channel of a connection, counted while it lives.
struct ChannelCount(Arc<AtomicUsize>);

impl Drop for ChannelCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S: SessionSource> Connection<S> {
    /// Answers the request being handled on `channel` (if its client
    /// wanted an answer) with the bridge's next answer for the channel.
    /// Nothing more of the user's connection is read meanwhile, so the
    /// answers go out in the order of the requests. A channel not bridged,
    /// or whose target did not answer in time, gets a refusal.
    async fn answer(
        &mut self,
        channel: ChannelId,
        session: &mut server::Session,
    ) -> Result<(), russh::Error> {
        let answers = match &mut self.state {
            State::Live(live) => live.answers.get_mut(&channel),
            _ => None,
        };
        let ok = match answers {
            Some(answers) => match tokio::time::timeout(bridge::REPLY_WAIT, answers.recv()).await {
                Ok(Some(ok)) => ok,
                Ok(None) => false,
                Err(_) => {
                    // Later answers would be out of step with the requests.
                    if let State::Live(live) = &mut self.state {
                        live.answers.remove(&channel);
                    }
                    false
                }
            },
            None => false,
        };
        if ok {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    fn peer(&self) -> String {
        self.peer.map(|p| p.to_string()).unwrap_or_default()
    }

    /// Checks the certificate; the session it names if it passes.
    async fn admit(&self, user: &str, cert: &Certificate, now: u64) -> Result<Session, Refusal> {
        if cert.cert_type() != CertType::User {
            return Err(Refusal::Denied("not a user certificate".into()));
        }
        cert.validate_at(now, &self.shared.cas.fingerprints())
            .map_err(|e| {
                Refusal::Denied(format!(
                    "certificate not valid now or not signed by the session CA: {e}"
                ))
            })?;
        // OpenSSH refuses a certificate with a critical option it does not
        // understand; the session CA sets none, and honouring one (e.g.
        // force-command) half-way would be worse than refusing it.
        if let Some((name, _)) = cert.critical_options().iter().next() {
            return Err(Refusal::Denied(format!(
                "certificate carries the critical option {name:?}, which the gateway does not honour"
            )));
        }
        if !cert.valid_principals().iter().any(|p| p == user) {
            return Err(Refusal::Denied(format!(
                "login name {user:?} is not among the certificate's principals"
            )));
        }
        if self.shared.stopping() {
            return Err(Refusal::Unavailable("the gateway is stopping".into()));
        }
        // Asked before the session is: a session refused here is not
        // opened on the server at all.
        if let Some(why) = self
            .shared
            .recording
            .as_ref()
            .and_then(|r| r.spool.trouble())
        {
            return Err(Refusal::Unavailable(format!(
                "the gateway cannot record sessions: {why}"
            )));
        }
        let session = match self.source.open_session(cert.key_id(), now).await {
            Ok(session) => session,
            Err(e @ SourceError::Unavailable(_)) => {
                return Err(Refusal::Unavailable(e.to_string()))
            }
            Err(e) => return Err(Refusal::Denied(format!("session {:?}: {e}", cert.key_id()))),
        };
        if session.expires_at <= now {
            // The source handed it out, so it hears of its end.
            self.reporter(&session.id).send(EndReason::Expired, None);
            return Err(Refusal::Denied(format!(
                "session {:?} has ended",
                session.id
            )));
        }
        Ok(session)
    }

    fn reporter(&self, session_id: &str) -> Reporter<S> {
        Reporter::new(
            self.source.clone(),
            session_id.to_owned(),
            self.shared.guard(),
        )
    }
}

/// Why a certificate does not open a session.
enum Refusal {
    /// Not for this gateway, or not now: "Permission denied", like sshd.
    Denied(String),
    /// A genuine session certificate, but the gateway cannot learn the
    /// session: the person is told so rather than "Permission denied".
    Unavailable(String),
}

/// How long the gateway gives the target to answer and accept the login.
const TARGET_LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

impl<S: SessionSource> server::Handler for Connection<S> {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        info!(peer = %self.peer(), user, key = %key.public_key.fingerprint(HashAlg::Sha256),
            "refused: a plain key, not a session certificate");
        Ok(Auth::reject())
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let now = clock::now_unix();
        let session = match self.admit(user, cert, now).await {
            Ok(session) => session,
            Err(Refusal::Denied(why)) => {
                warn!(peer = %self.peer(), user, key_id = cert.key_id(), reason = %why, "access refused");
                return Ok(Auth::reject());
            }
            Err(Refusal::Unavailable(why)) => {
                warn!(peer = %self.peer(), user, key_id = cert.key_id(), reason = %why, "access refused");
                self.state = State::TargetFailed {
                    session_id: cert.key_id().to_owned(),
                    message: format!("gatepass: cannot open the session now: {why}"),
                };
                return Ok(Auth::Accept);
            }
        };
        // The recording starts before the target is reached: a session the
        // gateway cannot record does not run.
        let recorder = match (&self.shared.recording, &session.recording) {
            (Some(settings), Some(grant)) => {
                match Recorder::start(&session.id, grant, settings.clone()) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        warn!(peer = %self.peer(), session = %session.id, error = %e,
                            "refused: the session's recording cannot be started");
                        self.reporter(&session.id).send(
                            EndReason::Failed,
                            Some(format!("the gateway could not record the session: {e}")),
                        );
                        self.state = State::TargetFailed {
                            session_id: session.id.clone(),
                            message: format!(
                                "gatepass: cannot open the session now: the gateway cannot record it: {e}"
                            ),
                        };
                        return Ok(Auth::Accept);
                    }
                }
            }
            _ => None,
        };
        let login = tokio::time::timeout(TARGET_LOGIN_TIMEOUT, target::connect(&session, now))
            .await
            .unwrap_or(Err(target::TargetError::Timeout(TARGET_LOGIN_TIMEOUT)));
        match login {
            Ok((target, target_lost)) => {
                info!(peer = %self.peer(), session = %session.id, target = %session.target_host,
                    port = session.target_port, "session started");
                self.state = State::Live(Box::new(Live {
                    session_id: session.id.clone(),
                    reporter: Some(self.reporter(&session.id)),
                    expires_at: session.expires_at,
                    allow_forwarding: session.allow_forwarding,
                    target: Arc::new(target),
                    target_lost: Some(target_lost),
                    ended: Arc::new(AtomicBool::new(false)),
                    channels: Arc::new(Mutex::new(HashSet::new())),
                    answers: HashMap::new(),
                    bridged: Arc::new(AtomicUsize::new(0)),
                    activity: Arc::new(Activity::new()),
                    recorder,
                    gone: None,
                }));
            }
            Err(e) => {
                warn!(peer = %self.peer(), session = %session.id, target = %session.target_host,
                    port = session.target_port, error = %e, "cannot log in to the target");
                // The connection the server opened a recording for
                // carried nothing: its recording ends at once, whole and
                // empty, rather than read as cut.
                if let Some(rec) = recorder {
                    rec.finish().await;
                }
                self.reporter(&session.id)
                    .send(EndReason::Failed, Some(e.to_string()));
                self.state = State::TargetFailed {
                    session_id: session.id.clone(),
                    message: format!("gatepass: {e}"),
                };
            }
        }
        // The credential (in `session`) is dropped, and zeroized, here.
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, session: &mut server::Session) -> Result<(), Self::Error> {
        match &mut self.state {
            State::Unauthenticated => {
                session.disconnect(Disconnect::ByApplication, "not authenticated", "")?;
            }
            State::TargetFailed {
                session_id,
                message,
            } => {
                info!(session = %session_id, "disconnecting: the target is not usable");
                session.disconnect(Disconnect::ByApplication, message, "")?;
            }
            State::Live(live) => {
                self.logged_in.store(true, Ordering::Release);
                let (gone_tx, gone_rx) = oneshot::channel();
                live.gone = Some(gone_tx);
                let (Some(target_lost), Some(reporter)) =
                    (live.target_lost.take(), live.reporter.take())
                else {
                    return Ok(());
                };
                tokio::spawn(supervise(
                    self.source.clone(),
                    reporter,
                    self.shared.stopping.clone(),
                    live.session_id.clone(),
                    live.expires_at,
                    self.shared.idle_timeout,
                    live.activity.clone(),
                    live.ended.clone(),
                    live.channels.clone(),
                    live.target.clone(),
                    target_lost,
                    session.handle(),
                    gone_rx,
                    live.recorder.clone(),
                ));
            }
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let State::Live(live) = &mut self.state else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        if !live.open() {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        if !live.room_for_a_channel("session") {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let twin = match live.target.channel_open_session().await {
            Ok(twin) => twin,
            Err(e) => {
                warn!(session = %live.session_id, error = %e, "target refused a session channel");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        reply.accept().await;
        let id = channel.id();
        if let Ok(mut open) = live.channels.lock() {
            open.insert(id);
        }
        let channels = live.channels.clone();
        let activity = live.activity.clone();
        let handle = session.handle();
        let tap = live.recorder.clone().map(ChannelTap::new);
        let counted = live.count_channel();
        let (answers, bridging) = bridge::start(channel, twin, handle, activity, tap);
        live.answers.insert(id, answers);
        tokio::spawn(async move {
            let _counted = counted;
            if let Some(tap) = bridging.await {
                tap.close();
            }
            if let Ok(mut open) = channels.lock() {
                open.remove(&id);
            }
        });
        Ok(())
    }

    // Each request that may want a reply is answered here, while russh's
    // want-reply flag is this request's: see `bridge::Answers`.

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, session).await
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, session).await
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, session).await
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, session).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, session).await
    }

    /// Passed on to the target, which answers none: taken, as sshd does.
    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        if let State::Live(live) = &mut self.state {
            live.answers.remove(&channel);
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let State::Live(live) = &mut self.state else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        if !live.open() || !live.allow_forwarding {
            info!(session = %live.session_id, host = host_to_connect, port = port_to_connect,
                "refused a forwarding channel");
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        if !live.room_for_a_channel("direct-tcpip") {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let twin = match live
            .target
            .channel_open_direct_tcpip(
                host_to_connect,
                port_to_connect,
                originator_address,
                originator_port,
            )
            .await
        {
            Ok(twin) => twin,
            Err(e) => {
                info!(session = %live.session_id, error = %e, "target refused a forwarding channel");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        reply.accept().await;
        let handle = session.handle();
        let activity = live.activity.clone();
        let forward = live.recorder.clone().map(|rec| {
            let ch = rec.next_channel();
            let (host, port) = (host_to_connect.to_owned(), port_to_connect);
            rec.event(
                ch,
                EventKind::ForwardOpen {
                    host: host.clone(),
                    port,
                },
            );
            (rec, ch, host, port)
        });
        let id = channel.id();
        let counted = live.count_channel();
        let (answers, bridging) = bridge::start(channel, twin, handle, activity, None);
        live.answers.insert(id, answers);
        tokio::spawn(async move {
            let _counted = counted;
            bridging.await;
            if let Some((rec, ch, host, port)) = forward {
                rec.event(ch, EventKind::ForwardClose { host, port });
            }
        });
        Ok(())
    }

    /// `ssh -R` would open a port on the target towards the user: refused.
    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut server::Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }
}

/// Ends the connection when the session ends: tells each open session
/// channel why on its stderr, then disconnects the user and the target.
#[allow(clippy::too_many_arguments)]
async fn supervise<S: SessionSource>(
    source: Arc<S>,
    reporter: Reporter<S>,
    mut stopping: watch::Receiver<bool>,
    session_id: String,
    expires_at: u64,
    idle_timeout: Option<Duration>,
    activity: Arc<Activity>,
    ended: Arc<AtomicBool>,
    channels: Arc<Mutex<HashSet<ChannelId>>>,
    target: Arc<Target>,
    target_lost: TargetLost,
    user: server::Handle,
    gone: oneshot::Receiver<()>,
    recorder: Option<Arc<Recorder>>,
) {
    let watch = limits::watch(
        &*source,
        &session_id,
        expires_at,
        idle_timeout,
        activity,
        target_lost,
        recorder.as_deref(),
    );
    let stop = async {
        // A dropped sender is the gateway gone some other way, not a stop.
        if stopping.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let reason = tokio::select! {
        reason = watch => Some(reason),
        () = stop => Some(limits::EndReason::Stopping),
        _ = gone => None,
    };
    ended.store(true, Ordering::SeqCst);
    // What the channels still pass after this is not the session's.
    let finish = || async {
        if let Some(rec) = &recorder {
            rec.finish().await;
        }
    };
    match reason {
        None => {
            info!(session = %session_id, "session closed by the user");
            let _ = target
                .disconnect(Disconnect::ByApplication, "session ended", "")
                .await;
            finish().await;
            reporter.send(EndReason::Closed, None);
        }
        Some(reason) => {
            info!(session = %session_id, reason = reason.as_str(), "closing the session");
            let open: Vec<ChannelId> = channels
                .lock()
                .map(|open| open.iter().copied().collect())
                .unwrap_or_default();
            let text = format!("\r\n{}\r\n", reason.message());
            // A user who stopped reading must not hold the end back; a
            // busy gateway still gets the message out in time.
            let tell = async {
                for id in open {
                    let _ = user.extended_data(id, 1, text.clone().into_bytes()).await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_millis(1000), tell).await;
            let _ = user
                .disconnect(
                    Disconnect::ByApplication,
                    reason.message().into(),
                    String::new(),
                )
                .await;
            let _ = target
                .disconnect(Disconnect::ByApplication, "session ended", "")
                .await;
            finish().await;
            let (reported, detail) = reason.reported();
            reporter.send(reported, detail);
        }
    }
}
