//! Relayed connections: how users reach a gateway that has no inbound port.
//!
//! A relay gateway keeps its long-poll open to the server and dials out
//! for each user connection. The user's `POST pam/sessions/<id>/relay`
//! ([`Relays::request`]) registers a waiting connection and wakes the
//! gateway's long-poll, whose answer then lists the connection's ID; the
//! gateway's `POST pam/gateway/self/relay/<conn_id>` ([`Relays::claim`])
//! completes the pair, and the server copies the bytes of the two upgraded
//! connections both ways ([`GatewayEnd::splice`]). The relay carries only
//! SSH bytes: the gateway still checks the session certificate.
//!
//! Waiting connections are in this server's memory: with several servers
//! behind one database, the gateway and its users must reach the same
//! server (sticky routing) for relayed connections to pair.
//!
//! Who may relay to a session is `super::sessions::authorize_relay`'s
//! call; this module only pairs connections (the server's state holds it,
//! so it names nothing that names the state).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};

use super::Name;
use crate::error::{Error, Result};

/// How long a user's relayed connection waits for its gateway to dial in.
pub const PICKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections waiting for one gateway at once.
pub const MAX_WAITING_PER_GATEWAY: usize = 100;
/// Connections waiting for one session at once.
pub const MAX_WAITING_PER_SESSION: usize = 10;
/// Per direction, between the two connections.
const COPY_BUFFER: usize = 16 * 1024;

/// A byte stream of either side (an upgraded HTTP connection).
pub trait RelayStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> RelayStream for T {}
pub type Stream = Box<dyn RelayStream>;

struct Waiting {
    gateway: Name,
    session_id: String,
    /// Tells the user's request that its gateway dialed in.
    claimed: oneshot::Sender<()>,
    /// The user's connection, once upgraded.
    user: oneshot::Receiver<Stream>,
}

#[derive(Default)]
struct Inner {
    waiting: HashMap<String, Waiting>,
}

/// The waiting relayed connections of this server.
pub struct Relays {
    inner: Arc<Mutex<Inner>>,
    /// Bumped whenever a connection starts or stops waiting: wakes the
    /// gateways' long-polls.
    changed: watch::Sender<u64>,
    pickup_timeout: Duration,
}

impl Default for Relays {
    fn default() -> Relays {
        Relays::with_timeout(PICKUP_TIMEOUT)
    }
}

/// The user's side, paired: hand it the upgraded connection.
pub struct UserEnd {
    pub conn_id: String,
    stream: oneshot::Sender<Stream>,
}

impl UserEnd {
    pub fn deliver(self, s: Stream) {
        // The gateway's side gave up waiting: the connection closes.
        let _ = self.stream.send(s);
    }
}

/// The gateway's side, paired: splices its upgraded connection to the
/// user's.
pub struct GatewayEnd {
    user: oneshot::Receiver<Stream>,
}

impl GatewayEnd {
    /// Copies both ways, once the user's connection is upgraded (waiting at
    /// most the pickup timeout); see [`splice`] for how it ends.
    pub async fn splice(self, gateway: Stream) {
        let Ok(Ok(user)) = tokio::time::timeout(PICKUP_TIMEOUT, self.user).await else {
            return;
        };
        splice(user, gateway, USER_GRACE).await;
    }
}

/// How long the user's side may go on once the gateway's side has ended.
/// The gateway ends a session's connection (at the session's end, or when
/// its SSH server hangs up); a client that then neither closes nor sends
/// would otherwise hold the relay, and a slot of this server's connection
/// limits, until the idle timeout (60 s by default).
const USER_GRACE: Duration = Duration::from_secs(5);

/// Copies both ways between the two connections. The end of one side's
/// bytes is passed on to the other (a half-close), and the other direction
/// goes on. When the gateway's side ends first, the user's gets `grace`
/// more to end too; when the user's side ends first, the relay lasts as
/// long as the gateway keeps its side open: the gateway is the server's
/// own party and ends its sessions on time, a user's client is not.
/// (`tokio::io::copy_bidirectional` waits for both sides to end.)
async fn splice(user: Stream, gateway: Stream, grace: Duration) {
    use tokio::io::AsyncWriteExt;
    let (user_in, mut user_out) = tokio::io::split(user);
    let (gateway_in, mut gateway_out) = tokio::io::split(gateway);
    let up = async {
        let mut from = tokio::io::BufReader::with_capacity(COPY_BUFFER, user_in);
        let _ = tokio::io::copy_buf(&mut from, &mut gateway_out).await;
        let _ = gateway_out.shutdown().await;
    };
    let down = async {
        let mut from = tokio::io::BufReader::with_capacity(COPY_BUFFER, gateway_in);
        let _ = tokio::io::copy_buf(&mut from, &mut user_out).await;
        let _ = user_out.shutdown().await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut down => {
            let _ = tokio::time::timeout(grace, up).await;
        }
        () = &mut up => down.await,
    }
}

/// Removes a waiting connection whose request went away (timeout, or the
/// user hung up) unless it was claimed first.
struct Unregister<'a> {
    relays: &'a Relays,
    conn_id: String,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        if self.relays.lock().waiting.remove(&self.conn_id).is_some() {
            self.relays.changed.send_modify(|n| *n += 1);
        }
    }
}

impl Relays {
    pub fn with_timeout(pickup_timeout: Duration) -> Relays {
        Relays {
            inner: Arc::default(),
            changed: watch::Sender::new(0),
            pickup_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes when a connection starts or stops waiting.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The IDs of the connections waiting for `gateway`, in order.
    pub fn waiting_for(&self, gateway: &Name) -> Vec<String> {
        let mut ids: Vec<String> = self
            .lock()
            .waiting
            .iter()
            .filter(|(_, w)| &w.gateway == gateway)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// A user's connection to `gateway` for `session_id`: waits until the
    /// gateway dials in for it (then the caller answers 101 and delivers
    /// the upgraded connection) or the pickup timeout passes (504).
    pub async fn request(&self, gateway: &Name, session_id: &str) -> Result<UserEnd> {
        let conn_id = uuid::Uuid::new_v4().to_string();
        let (claimed_tx, claimed_rx) = oneshot::channel();
        let (user_tx, user_rx) = oneshot::channel();
        {
            let mut inner = self.lock();
            let for_gateway = inner
                .waiting
                .values()
                .filter(|w| &w.gateway == gateway)
                .count();
            if for_gateway >= MAX_WAITING_PER_GATEWAY {
                return Err(Error::RateLimited(format!(
                    "gateway {gateway} has {MAX_WAITING_PER_GATEWAY} relayed connections waiting already; try again shortly"
                )));
            }
            let for_session = inner
                .waiting
                .values()
                .filter(|w| w.session_id == session_id)
                .count();
            if for_session >= MAX_WAITING_PER_SESSION {
                return Err(Error::RateLimited(format!(
                    "session {session_id} has {MAX_WAITING_PER_SESSION} relayed connections waiting already; try again shortly"
                )));
            }
            inner.waiting.insert(
                conn_id.clone(),
                Waiting {
                    gateway: gateway.clone(),
                    session_id: session_id.to_string(),
                    claimed: claimed_tx,
                    user: user_rx,
                },
            );
        }
        self.changed.send_modify(|n| *n += 1);
        let unregister = Unregister {
            relays: self,
            conn_id: conn_id.clone(),
        };
        // A claim takes the entry out, then signals; once the wait is
        // over its signal cannot arrive (the receiver is gone), so a claim
        // racing the timeout fails on the gateway's side too.
        let picked_up = tokio::time::timeout(self.pickup_timeout, claimed_rx).await;
        drop(unregister);
        if !matches!(picked_up, Ok(Ok(()))) {
            return Err(Error::GatewayTimeout(format!(
                "gateway {gateway} did not pick up the relayed connection within {} s (is it running?)",
                self.pickup_timeout.as_secs()
            )));
        }
        Ok(UserEnd {
            conn_id,
            stream: user_tx,
        })
    }

    /// The gateway dials in for a waiting connection; only the gateway the
    /// connection is for may take it.
    pub fn claim(&self, gateway: &Name, conn_id: &str) -> Result<GatewayEnd> {
        let waiting = {
            let mut inner = self.lock();
            match inner.waiting.get(conn_id) {
                None => {
                    return Err(Error::NotFound(format!(
                        "no relayed connection {conn_id:?} is waiting (its user gave up, or another server holds it)"
                    )))
                }
                Some(w) if &w.gateway != gateway => return Err(Error::PermissionDenied),
                Some(_) => {}
            }
            inner.waiting.remove(conn_id)
        };
        let Some(w) = waiting else {
            return Err(Error::internal("relayed connection vanished"));
        };
        self.changed.send_modify(|n| *n += 1);
        if w.claimed.send(()).is_err() {
            return Err(Error::NotFound(format!(
                "the relayed connection {conn_id:?} is no longer waiting (its user gave up)"
            )));
        }
        Ok(GatewayEnd { user: w.user })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::task::JoinHandle;

    fn name(s: &str) -> Name {
        Name::parse("gateway", s).unwrap()
    }

    async fn waiting(r: &Relays, gw: &Name, n: usize) {
        for _ in 0..200 {
            if r.waiting_for(gw).len() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{n} connections never waited");
    }

    #[tokio::test]
    async fn a_claimed_connection_pairs_and_copies_both_ways() {
        let r = Arc::new(Relays::default());
        let gw = name("gw1");
        let mut wake = r.subscribe();
        let user = tokio::spawn({
            let (r, gw) = (r.clone(), gw.clone());
            async move { r.request(&gw, "s1").await }
        });
        waiting(&r, &gw, 1).await;
        assert!(wake.has_changed().unwrap());
        wake.mark_unchanged();
        let id = r.waiting_for(&gw)[0].clone();
        let gateway_end = r.claim(&gw, &id).unwrap();
        assert!(wake.has_changed().unwrap(), "a claim wakes the long-poll");
        assert!(r.waiting_for(&gw).is_empty());
        let user_end = user.await.unwrap().unwrap();
        assert_eq!(user_end.conn_id, id);
        let (mut u_far, u_near) = tokio::io::duplex(64);
        let (mut g_far, g_near) = tokio::io::duplex(64);
        user_end.deliver(Box::new(u_near));
        let splice = tokio::spawn(gateway_end.splice(Box::new(g_near)));
        u_far.write_all(b"SSH-2.0-user\r\n").await.unwrap();
        let mut buf = [0u8; 14];
        g_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"SSH-2.0-user\r\n");
        g_far.write_all(b"hi").await.unwrap();
        let mut two = [0u8; 2];
        u_far.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"hi");
        drop(u_far);
        drop(g_far);
        tokio::time::timeout(Duration::from_secs(2), splice)
            .await
            .unwrap()
            .unwrap();
    }

    /// Two far ends and the splice between them, under way.
    fn spliced(grace: Duration) -> (DuplexStream, DuplexStream, JoinHandle<()>) {
        let (user_far, user_near) = tokio::io::duplex(64);
        let (gateway_far, gateway_near) = tokio::io::duplex(64);
        let task = tokio::spawn(splice(Box::new(user_near), Box::new(gateway_near), grace));
        (user_far, gateway_far, task)
    }

    async fn ends_within(task: JoinHandle<()>, secs: u64) {
        tokio::time::timeout(Duration::from_secs(secs), task)
            .await
            .expect("the relay did not end")
            .unwrap();
    }

    #[tokio::test]
    async fn a_relay_ends_soon_after_the_gateway_does_though_the_user_stays_silent() {
        let (mut user, gateway, task) = spliced(Duration::from_millis(300));
        drop(gateway);
        let mut rest = Vec::new();
        user.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        // The user's side neither sends nor closes: the grace ends it.
        ends_within(task, 3).await;
        drop(user);
    }

    #[tokio::test]
    async fn the_end_of_the_users_bytes_is_passed_on_and_the_gateways_answer_still_comes() {
        let (mut user, mut gateway, task) = spliced(Duration::from_millis(300));
        user.write_all(b"last words").await.unwrap();
        user.shutdown().await.unwrap();
        let mut got = Vec::new();
        gateway.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        // Longer than the grace: the gateway's side may take its time.
        tokio::time::sleep(Duration::from_millis(600)).await;
        gateway.write_all(b"the answer").await.unwrap();
        let mut answer = [0u8; 10];
        user.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"the answer");
        drop(gateway);
        ends_within(task, 3).await;
    }

    #[tokio::test]
    async fn an_unclaimed_connection_times_out_naming_the_gateway() {
        let r = Relays::with_timeout(Duration::from_millis(50));
        let gw = name("gw1");
        let e = r.request(&gw, "s1").await.err().unwrap();
        assert!(matches!(e, Error::GatewayTimeout(_)));
        assert!(
            e.to_string()
                .contains("gateway gw1 did not pick up the relayed connection"),
            "{e}"
        );
        assert!(
            r.waiting_for(&gw).is_empty(),
            "a timed-out one stops waiting"
        );
    }

    #[tokio::test]
    async fn only_its_gateway_claims_a_connection_and_only_once() {
        let r = Arc::new(Relays::default());
        let gw = name("gw1");
        let user = tokio::spawn({
            let (r, gw) = (r.clone(), gw.clone());
            async move { r.request(&gw, "s1").await }
        });
        waiting(&r, &gw, 1).await;
        let id = r.waiting_for(&gw)[0].clone();
        assert!(matches!(
            r.claim(&name("gw2"), &id),
            Err(Error::PermissionDenied)
        ));
        assert_eq!(r.waiting_for(&gw), vec![id.clone()], "still waiting");
        assert!(matches!(
            r.claim(&gw, "no-such-connection"),
            Err(Error::NotFound(_))
        ));
        assert!(r.claim(&gw, &id).is_ok());
        assert!(matches!(r.claim(&gw, &id), Err(Error::NotFound(_))));
        assert!(user.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_user_who_hangs_up_stops_waiting() {
        let r = Arc::new(Relays::default());
        let gw = name("gw1");
        let user = tokio::spawn({
            let (r, gw) = (r.clone(), gw.clone());
            async move { r.request(&gw, "s1").await }
        });
        waiting(&r, &gw, 1).await;
        let id = r.waiting_for(&gw)[0].clone();
        user.abort();
        let _ = user.await;
        assert!(r.waiting_for(&gw).is_empty());
        assert!(matches!(r.claim(&gw, &id), Err(Error::NotFound(_))));
    }

    #[tokio::test]
    async fn waiting_connections_are_capped_per_session_and_per_gateway() {
        let r = Arc::new(Relays::default());
        let gw = name("gw1");
        let mut users = Vec::new();
        for i in 0..MAX_WAITING_PER_GATEWAY {
            // Ten sessions of ten connections each.
            let session = format!("s{}", i / MAX_WAITING_PER_SESSION);
            let (r, gw) = (r.clone(), gw.clone());
            users.push(tokio::spawn(async move { r.request(&gw, &session).await }));
        }
        waiting(&r, &gw, MAX_WAITING_PER_GATEWAY).await;
        let e = r.request(&gw, "s-new").await.err().unwrap();
        assert!(matches!(e, Error::RateLimited(_)), "{e}");
        assert!(e.to_string().contains("gateway gw1"), "{e}");
        // Another gateway is not held up by gw1's queue; one session's cap
        // is its own.
        let other = name("gw2");
        let mut more = Vec::new();
        for _ in 0..MAX_WAITING_PER_SESSION {
            let (r, other) = (r.clone(), other.clone());
            more.push(tokio::spawn(async move { r.request(&other, "t1").await }));
        }
        waiting(&r, &other, MAX_WAITING_PER_SESSION).await;
        let e = r.request(&other, "t1").await.err().unwrap();
        assert!(e.to_string().contains("session t1"), "{e}");
        for u in users.into_iter().chain(more) {
            u.abort();
        }
    }
}
