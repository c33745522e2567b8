//! The production [`SessionSource`]: the gatepass server over HTTPS with its
//! CA pinned.
//!
//! A background task ([`ServerSource::follow`]) long-polls the gateway's
//! open sessions (`GET pam/gateway/self/sessions`) and keeps the set of
//! open session IDs and the session CA keys; a session that disappears from
//! the set was terminated. Logins fetch the session's target and
//! credential (`POST …/open`), and ends are reported (`POST …/end`).
//!
//! A relay gateway also dials out for each relayed user connection the
//! long-poll lists ([`ServerSource::dial_relays`]).
//!
//! While the server cannot be reached, sessions already open keep running
//! to their end time (a failed poll never counts as a termination), and new
//! ones are refused within [`CALL_TIMEOUT`]. A server that refuses the
//! gateway's token (401 or 403: the gateway was deleted or replaced) ends
//! them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatepass_api::pam::{
    self, EndSession, GatewaySession, GatewaySessions, OpenSession, SessionCredential,
};
use gatepass_api::{Client, Settings};
use russh::keys::ssh_key::{Algorithm, LineEnding};
use russh::keys::{Certificate, PrivateKey, PublicKey};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::accept::{RelayedStream, SessionCas};
use crate::session::{Credential, EndReason, HostKeyTrust, Session, SessionSource, SourceError};

/// Bound on a login's request to the server (and on each try of an end
/// report): a user waits at most this long to hear the server is down.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the gateway's server is and how it authenticates.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub server: String,
    pub ca_cert: std::path::PathBuf,
    pub token: String,
    /// How long the server may hold a long-poll.
    pub wait: Duration,
    /// Upper bound of the retry backoff of the long-poll.
    pub max_backoff: Duration,
    /// Whether this gateway records sessions; when not, each open tells
    /// the server so (it records that instead).
    pub recording: bool,
}

/// What the last successful poll said.
#[derive(Clone, Debug, Default)]
struct Known {
    /// The sequence number of the request that brought this answer; 0
    /// before the first answer.
    seq: u64,
    open: HashSet<String>,
}

pub struct ServerSource {
    /// For logins and end reports: short timeout.
    calls: Client,
    /// For the long-poll: the wait plus a margin.
    polls: Client,
    cas: SessionCas,
    known: watch::Sender<Known>,
    /// The relayed connections waiting for this gateway, as the last
    /// answer listed them.
    relay_requests: watch::Sender<Vec<String>>,
    /// The sequence number of the latest poll request sent.
    started: AtomicU64,
    /// For each session being served: the latest poll sent when the
    /// gateway began to open it. Any later poll's answer lists the session
    /// while it is open, so one that does not means it ended, even if that
    /// answer came before the session's supervisor started watching.
    opened_after: Mutex<HashMap<String, u64>>,
    wait: Duration,
    max_backoff: Duration,
    recording: bool,
}

/// An error with its causes ("error sending request: … Connection
/// refused"), as a person needs it to act.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Errors of the server's API, in the words a log reader needs.
fn unreachable(e: &gatepass_api::Error) -> String {
    format!("the gatepass server cannot be reached: {}", with_causes(e))
}

fn body<T: Serialize>(v: &T) -> Result<Map<String, Value>, gatepass_api::Error> {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(gatepass_api::Error::Decode(
            "request is not an object".into(),
        )),
    }
}

fn data<T: DeserializeOwned>(
    env: Option<gatepass_api::Envelope>,
    what: &str,
) -> Result<T, gatepass_api::Error> {
    let data = env
        .and_then(|e| e.data)
        .ok_or_else(|| gatepass_api::Error::Decode(format!("{what}: the answer has no data")))?;
    serde_json::from_value(data).map_err(|e| gatepass_api::Error::Decode(format!("{what}: {e}")))
}

/// A client for the server with the gateway's token and the pinned CA.
pub fn client(
    server: &str,
    ca_cert: &std::path::Path,
    token: Option<String>,
    timeout: Duration,
) -> Result<Client, gatepass_api::Error> {
    Client::new(&Settings {
        addr: server.to_string(),
        token,
        ca_cert: Some(ca_cert.to_path_buf()),
        timeout: Some(timeout),
    })
}

impl ServerSource {
    pub fn new(settings: &ServerSettings, cas: SessionCas) -> Result<ServerSource, String> {
        let make = |timeout| {
            client(
                &settings.server,
                &settings.ca_cert,
                Some(settings.token.clone()),
                timeout,
            )
            .map_err(|e| e.to_string())
        };
        Ok(ServerSource {
            calls: make(CALL_TIMEOUT)?,
            polls: make(settings.wait + Duration::from_secs(15))?,
            cas,
            known: watch::Sender::new(Known::default()),
            relay_requests: watch::Sender::new(Vec::new()),
            started: AtomicU64::new(0),
            opened_after: Mutex::default(),
            wait: settings.wait,
            max_backoff: settings.max_backoff,
            recording: settings.recording,
        })
    }

    /// A client of the server with the gateway's token and the short
    /// timeout, for the recording spool's deliveries.
    pub fn client(&self) -> Client {
        self.calls.clone()
    }

    /// `POST pam/gateway/self/started`: ends what the previous run left
    /// active, and gives the first list and CA keys.
    pub async fn started(&self, host_keys: Vec<String>) -> Result<u64, gatepass_api::Error> {
        let req = pam::GatewayStarted { host_keys };
        let sessions: GatewaySessions = data(
            self.calls
                .write("pam/gateway/self/started", &body(&req)?)
                .await?,
            "started",
        )?;
        let seq = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        self.learn(&sessions, seq);
        Ok(sessions.index)
    }

    /// Takes in one answer of the server.
    fn learn(&self, sessions: &GatewaySessions, seq: u64) {
        let keys = parse_keys(&sessions.session_ca_keys);
        if keys.is_empty() {
            warn!("the server lists no usable session CA key; keeping the previous ones");
        } else {
            self.cas.set(&keys);
        }
        let open = sessions
            .sessions
            .iter()
            .map(|s| s.session_id.clone())
            .collect();
        self.known.send_replace(Known { seq, open });
        self.relay_requests.send_if_modified(|cur| {
            if *cur == sessions.relay_requests {
                return false;
            }
            cur.clone_from(&sessions.relay_requests);
            true
        });
    }

    /// For a relay gateway: dials the server for each relayed connection
    /// the long-poll lists (`POST pam/gateway/self/relay/<conn_id>`, an
    /// HTTP upgrade) and hands each connection to `streams`, which the SSH
    /// server serves as if it had come to a port. Each is dialed once.
    pub async fn dial_relays(self: Arc<Self>, streams: mpsc::Sender<RelayedStream>) {
        let mut listed = self.relay_requests.subscribe();
        let mut dialed: HashSet<String> = HashSet::new();
        loop {
            let ids = listed.borrow_and_update().clone();
            // One no longer listed was taken (or given up): forget it.
            dialed.retain(|id| ids.contains(id));
            for id in ids {
                if !plain_id(&id) || !dialed.insert(id.clone()) {
                    continue;
                }
                let (me, streams) = (self.clone(), streams.clone());
                tokio::spawn(async move {
                    let path = format!("pam/gateway/self/relay/{id}");
                    match me.calls.upgrade(&path, pam::RELAY_PROTOCOL).await {
                        Ok(conn) => {
                            debug!(conn = %id, "relayed connection");
                            let _ = streams.send(Box::new(conn)).await;
                        }
                        Err(e) => {
                            warn!(conn = %id, "cannot take the relayed connection: {}", with_causes(&e))
                        }
                    }
                });
            }
            if listed.changed().await.is_err() {
                return;
            }
        }
    }

    /// Follows the open sessions for good: long-polls, with a backoff
    /// while the server is unreachable.
    pub async fn follow(self: Arc<Self>, mut index: u64) {
        let mut backoff = Duration::from_secs(1);
        let mut failing = false;
        loop {
            let seq = self.started.fetch_add(1, Ordering::SeqCst) + 1;
            let path = format!(
                "pam/gateway/self/sessions?index={index}&wait={}s",
                self.wait.as_secs()
            );
            let begun = tokio::time::Instant::now();
            let answer = self
                .polls
                .read(&path)
                .await
                .and_then(|env| data::<GatewaySessions>(env, "sessions"));
            match answer {
                Ok(sessions) => {
                    if failing {
                        info!("the gatepass server answers again");
                        failing = false;
                    }
                    backoff = Duration::from_secs(1);
                    let changed = sessions.index != index;
                    index = sessions.index;
                    debug!(index, open = sessions.sessions.len(), "sessions");
                    self.learn(&sessions, seq);
                    if !changed && begun.elapsed() < Duration::from_secs(1) {
                        // A server that answers at once with the same index
                        // must not make this a busy loop.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                // The server refuses this gateway's token: the gateway was
                // deleted, or enrolled again in its place. Nothing it opened
                // may go on without the server following it (a terminate
                // would never reach it), so its open sessions end now, as if
                // terminated, and it keeps asking, in case of a server
                // mistake. A server that cannot be reached is another thing:
                // sessions keep running then.
                Err(gatepass_api::Error::Api {
                    status: status @ (401 | 403),
                    errors,
                }) => {
                    if !failing {
                        warn!(
                            status,
                            "the server refuses this gateway's token ({}): the gateway was deleted or enrolled again elsewhere; its open sessions are ended and new ones refused",
                            errors.join("; ")
                        );
                    }
                    failing = true;
                    self.known.send_replace(Known {
                        seq,
                        open: HashSet::new(),
                    });
                    self.relay_requests.send_replace(Vec::new());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
                Err(e) => {
                    if !failing {
                        warn!("cannot follow the sessions: {}; open sessions keep running, new ones are refused until it answers", unreachable(&e));
                    } else {
                        debug!("still cannot follow the sessions: {e}");
                    }
                    failing = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }
}

impl ServerSource {
    /// `POST pam/gateway/self/sessions/<id>/end`, once.
    async fn report(
        &self,
        id: &str,
        reason: EndReason,
        detail: Option<String>,
    ) -> Result<(), gatepass_api::Error> {
        let req = EndSession { reason, detail };
        let path = format!("pam/gateway/self/sessions/{id}/end");
        self.calls.write(&path, &body(&req)?).await.map(|_| ())
    }

    /// Renews the gateway token now and then every 12 hours (sooner after
    /// a failure): a periodic token that is not renewed lapses.
    pub async fn renew_token(self: Arc<Self>) {
        loop {
            let pause = match self.calls.write("auth/token/renew-self", &Map::new()).await {
                Ok(_) => {
                    debug!("gateway token renewed");
                    Duration::from_secs(12 * 3600)
                }
                Err(e @ gatepass_api::Error::Api { .. }) => {
                    warn!("the server did not renew the gateway token: {e}");
                    Duration::from_secs(3600)
                }
                Err(e) => {
                    warn!("cannot renew the gateway token: {}", with_causes(&e));
                    Duration::from_secs(300)
                }
            };
            tokio::time::sleep(pause).await;
        }
    }
}

/// Parses OpenSSH public key lines, leaving out (with a warning) those that
/// do not parse.
fn parse_keys(lines: &[String]) -> Vec<PublicKey> {
    lines
        .iter()
        .filter_map(|l| match host_key_line(l) {
            Ok(k) => Some(k),
            Err(e) => {
                warn!("ignoring a session CA key: {e}");
                None
            }
        })
        .collect()
}

/// One public key from an OpenSSH public key line or a known_hosts line
/// (`[marker] hosts key-type base64 [comment]`), whose key is taken.
pub fn host_key_line(line: &str) -> Result<PublicKey, String> {
    let line = line.trim();
    if let Ok(key) = PublicKey::from_openssh(line) {
        return Ok(key);
    }
    let mut fields: Vec<&str> = line.split_whitespace().collect();
    if fields.first().is_some_and(|f| f.starts_with('@')) {
        if fields[0] != "@cert-authority" {
            return Err(format!(
                "{line:?}: a {} line is not a key to trust",
                fields[0]
            ));
        }
        fields.remove(0);
    }
    if fields.len() >= 3 {
        if let Ok(key) = PublicKey::from_openssh(&fields[1..].join(" ")) {
            return Ok(key);
        }
    }
    Err(format!(
        "{line:?} is neither an OpenSSH public key nor a known_hosts line"
    ))
}

/// A new key pair for a `certificate` account's session; its public half
/// goes to the server to be signed.
pub fn session_key() -> Result<(PrivateKey, String), String> {
    let key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
        .map_err(|e| format!("cannot make a session key: {e}"))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| format!("cannot encode the session key: {e}"))?;
    Ok((key, public))
}

/// The gateway's view of what the server handed out: keys parsed, the
/// password kept in zeroizing memory. `key` is the key pair made for a
/// `certificate` account.
pub fn session_of(gs: GatewaySession, key: Option<PrivateKey>) -> Result<Session, String> {
    let GatewaySession {
        session_id,
        expires_at,
        host,
        port,
        username,
        credential,
        host_key_trust,
        allow_forwarding,
        recording,
    } = gs;
    let credential = match credential {
        SessionCredential::Password { password } => Credential::Password(Zeroizing::new(password)),
        SessionCredential::Key { private_key } => {
            let text = Zeroizing::new(private_key);
            let key = PrivateKey::from_openssh(text.as_bytes())
                .map_err(|e| format!("the account's private key does not parse: {e}"))?;
            if key.is_encrypted() {
                return Err("the account's private key is encrypted".into());
            }
            Credential::Key(key)
        }
        SessionCredential::Certificate { signed_key } => {
            let key =
                key.ok_or("the server sent a certificate for a key the gateway did not make")?;
            let cert = Certificate::from_openssh(signed_key.trim())
                .map_err(|e| format!("the session's certificate does not parse: {e}"))?;
            if cert.public_key() != key.public_key().key_data() {
                return Err("the session's certificate is not for the key the gateway made".into());
            }
            Credential::Certificate {
                key,
                cert: Box::new(cert),
            }
        }
    };
    let keys = |lines: &[String], what: &str| -> Result<Vec<PublicKey>, String> {
        if lines.is_empty() {
            return Err(format!("the resource has no {what}"));
        }
        lines.iter().map(|l| host_key_line(l)).collect()
    };
    let trust = match host_key_trust {
        pam::HostKeyTrust::Pinned { keys: lines } => {
            HostKeyTrust::PinnedKeys(keys(&lines, "pinned host keys")?)
        }
        pam::HostKeyTrust::HostCa { ca_keys } => {
            HostKeyTrust::HostCa(keys(&ca_keys, "host CA keys")?)
        }
    };
    let expires_at = u64::try_from(expires_at).map_err(|_| format!("bad end time {expires_at}"))?;
    Ok(Session {
        id: session_id,
        expires_at,
        target_host: host,
        target_port: port,
        target_username: username,
        credential,
        host_key_trust: trust,
        allow_forwarding,
        recording,
    })
}

/// Whether a session ID can go into a URL path as it is.
fn plain_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl ServerSource {
    /// `POST pam/gateway/self/sessions/<id>/open`: the session, or why not.
    async fn open(&self, id: &str, now: u64) -> Result<Session, SourceError> {
        // A certificate account's key pair is made before asking, so only
        // its public half travels; unused for other accounts.
        let (key, public) = session_key().map_err(SourceError::Unavailable)?;
        let req = OpenSession {
            public_key: Some(public),
            unrecorded: !self.recording,
        };
        let path = format!("pam/gateway/self/sessions/{id}/open");
        let answer = match body(&req) {
            Ok(b) => self.calls.write(&path, &b).await,
            Err(e) => Err(e),
        };
        let gs: GatewaySession = match answer {
            // Vault's bare 404: nothing there.
            Ok(None) => return Err(SourceError::Unknown),
            Ok(env) => data(env, "open").map_err(|e| SourceError::Unavailable(e.to_string()))?,
            Err(gatepass_api::Error::Api { status, errors }) if (400..500).contains(&status) => {
                let why = errors.join("; ");
                return Err(if status == 404 {
                    SourceError::Unknown
                } else {
                    SourceError::Refused(why)
                });
            }
            Err(e) => return Err(SourceError::Unavailable(unreachable(&e))),
        };
        if gs.session_id != id {
            return Err(SourceError::Unavailable(format!(
                "the server answered for session {:?}, not {id:?}",
                gs.session_id
            )));
        }
        // From here the server counts the session active: a session the
        // gateway cannot use is reported ended at once (one try, so the
        // person is not kept waiting), not left active until its end.
        let is_cert = matches!(gs.credential, SessionCredential::Certificate { .. });
        let session = match session_of(gs, is_cert.then_some(key)) {
            Ok(session) => session,
            Err(e) => {
                let detail = format!("the session's details are not usable: {e}");
                self.report(id, EndReason::Failed, Some(detail.clone()))
                    .await
                    .ok();
                return Err(SourceError::Unavailable(detail));
            }
        };
        if session.expires_at <= now {
            self.report(id, EndReason::Expired, None).await.ok();
            return Err(SourceError::Ended);
        }
        Ok(session)
    }
}

impl SessionSource for ServerSource {
    async fn open_session(&self, id: &str, now: u64) -> Result<Session, SourceError> {
        if !plain_id(id) {
            return Err(SourceError::Unknown);
        }
        let seq = self.started.load(Ordering::SeqCst);
        if let Ok(mut m) = self.opened_after.lock() {
            m.entry(id.to_string()).or_insert(seq);
        }
        let opened = self.open(id, now).await;
        if opened.is_err() {
            if let Ok(mut m) = self.opened_after.lock() {
                m.remove(id);
            }
        }
        opened
    }

    async fn terminated(&self, id: &str) {
        // A list without the session means it ended if an earlier list had
        // it, or if the poll that brought it was sent after the gateway
        // began to open it (or, without that record, after this point): an
        // answer to a poll sent before the session was opened may not list
        // it yet.
        let after = self
            .opened_after
            .lock()
            .ok()
            .and_then(|m| m.get(id).copied())
            .unwrap_or_else(|| self.started.load(Ordering::SeqCst));
        let mut known = self.known.subscribe();
        let mut seen = false;
        loop {
            {
                let k = known.borrow_and_update();
                if k.open.contains(id) {
                    seen = true;
                } else if seen || k.seq > after {
                    return;
                }
            }
            if known.changed().await.is_err() {
                // The source is gone; the session is left to its own end.
                std::future::pending::<()>().await;
            }
        }
    }

    async fn ended(&self, id: &str, reason: EndReason, detail: Option<String>) {
        if !plain_id(id) {
            return;
        }
        if let Ok(mut m) = self.opened_after.lock() {
            m.remove(id);
        }
        for attempt in 0..3u64 {
            match self.report(id, reason, detail.clone()).await {
                Ok(()) => return,
                Err(gatepass_api::Error::Api { status, errors })
                    if (400..500).contains(&status) =>
                {
                    warn!(
                        session = id,
                        status,
                        "the server did not take the session's end: {}",
                        errors.join("; ")
                    );
                    return;
                }
                Err(e) => {
                    warn!(session = id, "cannot report the session's end: {e}");
                    tokio::time::sleep(Duration::from_secs(1 + attempt * 2)).await;
                }
            }
        }
    }
}

/// The OpenSSH private key text of a new ed25519 host key.
pub fn new_host_key() -> Result<(Zeroizing<String>, String), String> {
    let key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
        .map_err(|e| format!("cannot make a host key: {e}"))?;
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| format!("cannot encode the host key: {e}"))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| format!("cannot encode the host key: {e}"))?;
    Ok((Zeroizing::new(private.to_string()), public))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatepass_api::pam::HostKeyTrust as Trust;

    const A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFw2sFw+dxSvV+bm0wjC+wLdtPUJZMWivFmnO12B2VcC a";

    fn gateway_session(credential: SessionCredential, trust: Trust) -> GatewaySession {
        GatewaySession {
            session_id: "s1".into(),
            expires_at: 2_000_000_000,
            host: "db1.example".into(),
            port: 22,
            username: "postgres".into(),
            credential,
            host_key_trust: trust,
            allow_forwarding: true,
            recording: None,
        }
    }

    fn pinned() -> Trust {
        Trust::Pinned {
            keys: vec![A.into()],
        }
    }

    #[test]
    fn a_password_session_converts() {
        let gs = gateway_session(
            SessionCredential::Password {
                password: "s3cret".into(),
            },
            pinned(),
        );
        let s = session_of(gs, None).unwrap();
        assert_eq!(s.id, "s1");
        assert_eq!(s.expires_at, 2_000_000_000);
        assert_eq!((s.target_host.as_str(), s.target_port), ("db1.example", 22));
        assert_eq!(s.target_username, "postgres");
        assert!(s.allow_forwarding);
        assert!(matches!(&s.credential, Credential::Password(p) if p.as_str() == "s3cret"));
        assert!(matches!(&s.host_key_trust, HostKeyTrust::PinnedKeys(k) if k.len() == 1));
        // Debug never shows the secret.
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn a_key_session_converts_and_a_bad_key_is_refused() {
        let (private, _) = new_host_key().unwrap();
        let gs = gateway_session(
            SessionCredential::Key {
                private_key: private.to_string(),
            },
            Trust::HostCa {
                ca_keys: vec![A.into()],
            },
        );
        let s = session_of(gs, None).unwrap();
        assert!(matches!(s.credential, Credential::Key(_)));
        assert!(matches!(s.host_key_trust, HostKeyTrust::HostCa(_)));

        let gs = gateway_session(
            SessionCredential::Key {
                private_key: "-----BEGIN OPENSSH PRIVATE KEY-----\nnope\n".into(),
            },
            pinned(),
        );
        let e = session_of(gs, None).unwrap_err();
        assert!(e.contains("private key does not parse"), "{e}");
    }

    #[test]
    fn bad_host_keys_and_empty_trust_are_refused() {
        let gs = gateway_session(
            SessionCredential::Password {
                password: "p".into(),
            },
            Trust::Pinned {
                keys: vec!["ssh-ed25519 notbase64".into()],
            },
        );
        let e = session_of(gs, None).unwrap_err();
        assert!(e.contains("neither an OpenSSH public key"), "{e}");
        let gs = gateway_session(
            SessionCredential::Password {
                password: "p".into(),
            },
            Trust::HostCa { ca_keys: vec![] },
        );
        let e = session_of(gs, None).unwrap_err();
        assert!(e.contains("no host CA keys"), "{e}");
    }

    #[test]
    fn a_certificate_must_be_for_the_key_the_gateway_made() {
        let (mine, _) = session_key().unwrap();
        let gs = gateway_session(
            SessionCredential::Certificate {
                signed_key: "ssh-ed25519-cert-v01@openssh.com AAAA garbage".into(),
            },
            pinned(),
        );
        let e = session_of(gs, Some(mine)).unwrap_err();
        assert!(e.contains("certificate does not parse"), "{e}");
        let gs = gateway_session(
            SessionCredential::Certificate {
                signed_key: "x".into(),
            },
            pinned(),
        );
        let e = session_of(gs, None).unwrap_err();
        assert!(e.contains("did not make"), "{e}");
    }

    #[test]
    fn known_hosts_lines_give_their_key() {
        let plain = host_key_line(A).unwrap();
        let hosts = host_key_line(&format!("db1.example,10.0.0.5 {A}")).unwrap();
        assert_eq!(plain.key_data(), hosts.key_data());
        let hashed = host_key_line(&format!("|1|abc=|def= {A}")).unwrap();
        assert_eq!(plain.key_data(), hashed.key_data());
        let ca = host_key_line(&format!("@cert-authority *.example {A}")).unwrap();
        assert_eq!(plain.key_data(), ca.key_data());
        assert!(host_key_line(&format!("@revoked * {A}")).is_err());
        assert!(host_key_line("db1.example").is_err());
        assert!(host_key_line("").is_err());
    }

    #[test]
    fn session_ids_in_paths_are_plain() {
        assert!(plain_id("3f2a-b_c.1"));
        assert!(!plain_id("../sys"));
        assert!(!plain_id("a/b"));
        assert!(!plain_id(".."));
        assert!(!plain_id(""));
    }
}
