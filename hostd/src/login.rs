//! The login socket: the OTP check's fast path (`pam_gatepass.so` and
//! `gatepass-helper` ask here first; see `pam_gatepass::hostd`).
//!
//! A login attempt runs in a process of its own and would otherwise open a
//! new TLS connection to the servers every time. hostd runs all the time:
//! it keeps one [`Client`] per transport (servers, mount, pinned CAs and
//! token, as the caller's configuration names them) with its connections
//! open, and asks the servers on them exactly as the caller would
//! ([`Client::verify`]: the same failover, the same time budget). The
//! caller checks the answer (user, addresses, role) and logs the attempt
//! itself; hostd only carries the question.
//!
//! Only root is answered: the socket is 0600 in a root folder, and every
//! connection's peer is checked (SO_PEERCRED) to be uid 0 before its
//! request is read. Nothing the caller sends is logged here.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pam_gatepass::client::{Client, Transport};
use pam_gatepass::hostd::{Reply, Request, MAX_LINE};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::Error;

pub use pam_gatepass::hostd::DEFAULT_SOCKET;

/// At most this many transports keep a client; the one used longest ago
/// goes first. A host has one or two configurations.
const MAX_CLIENTS: usize = 8;
/// Connections unused this long are dropped before the next request
/// rather than reused: the server ends a connection idle for 60 s (its
/// default `idle_timeout`), and a request sent as it does would be lost.
/// A new connection resumes the TLS session, so it is cheap.
const IDLE: Duration = Duration::from_secs(45);
/// Requests answered at once; more wait for a turn.
const MAX_CONCURRENT: usize = 64;
/// How long a peer has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// sshd's LoginGraceTime; no check may take longer.
const MAX_BUDGET: Duration = Duration::from_secs(120);

/// The clients, by transport.
#[derive(Default)]
pub struct Clients {
    map: Mutex<HashMap<Transport, Entry>>,
}

struct Entry {
    client: Arc<Client>,
    used: Instant,
}

impl Clients {
    /// The client for `t`, built on first use.
    pub fn get(&self, t: &Transport, now: Instant) -> Result<Arc<Client>, String> {
        let mut map = self
            .map
            .lock()
            .map_err(|_| "the client table is unusable".to_string())?;
        if let Some(e) = map.get_mut(t) {
            if now.saturating_duration_since(e.used) > IDLE {
                e.client = Arc::new(e.client.without_connections());
            }
            e.used = now;
            return Ok(e.client.clone());
        }
        let client = Arc::new(Client::new(t.clone()).map_err(|e| e.0)?);
        if map.len() >= MAX_CLIENTS {
            let oldest = map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(
            t.clone(),
            Entry {
                client: client.clone(),
                used: now,
            },
        );
        Ok(client)
    }
}

/// Binds the socket at `path`: its folder made if missing (root, 0755), a
/// socket left by an earlier run replaced, the new one 0600. Anything else
/// at `path` is left alone and refused.
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    let fail = |what: &str, e: std::io::Error| {
        Error::Other(format!("login socket {}: {what}: {e}", path.display()))
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| fail("cannot make its folder", e))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| fail("cannot set its folder's mode", e))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| fail("cannot remove the old socket", e))?
        }
        Ok(_) => {
            return Err(Error::Other(format!(
                "login socket {}: something else is there",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("cannot look at it", e)),
    }
    // Under the service's umask (0022) the socket is never writable, so
    // never connectable, by anyone but root before the chmod below; and
    // every peer is checked anyway.
    let listener = UnixListener::bind(path).map_err(|e| fail("cannot listen", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail("cannot set its mode", e))?;
    Ok(listener)
}

/// Answers on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, clients: Arc<Clients>) {
    let turns = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("login socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let accepted = Instant::now();
        let (clients, turns) = (clients.clone(), turns.clone());
        tokio::spawn(async move {
            let Ok(_turn) = turns.acquire_owned().await else {
                return;
            };
            handle(stream, &clients, accepted).await;
        });
    }
}

/// Binds `path` and serves it in a task of its own.
pub fn start(path: &Path) -> Result<tokio::task::JoinHandle<()>, Error> {
    let listener = bind(path)?;
    tracing::info!(socket = %path.display(), "answering login checks");
    Ok(tokio::spawn(serve(listener, Arc::new(Clients::default()))))
}

/// Removes the socket (at shutdown): a caller then asks the servers itself
/// at once instead of finding nobody listening.
pub fn remove(path: &PathBuf) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Answers one request on a connection accepted at `accepted`.
async fn handle(mut stream: UnixStream, clients: &Clients, accepted: Instant) {
    let uid = stream.peer_cred().map(|c| c.uid());
    if !matches!(uid, Ok(0)) {
        tracing::warn!("login socket: refused a peer that is not root ({uid:?})");
        send(&mut stream, &Reply::NotAsked("only root may ask".into())).await;
        return;
    }
    let mut line = Zeroizing::new(Vec::new());
    let read = tokio::time::timeout(
        READ_TIMEOUT,
        BufReader::new(&mut stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line),
    )
    .await;
    if !matches!(read, Ok(Ok(_))) {
        send(&mut stream, &Reply::NotAsked("no request in time".into())).await;
        return;
    }
    let req: Request = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => {
            send(
                &mut stream,
                &Reply::NotAsked(format!("unreadable request: {e}")),
            )
            .await;
            return;
        }
    };
    let client = match clients.get(&req.transport, Instant::now()) {
        Ok(c) => c,
        Err(e) => {
            send(&mut stream, &Reply::NotAsked(e)).await;
            return;
        }
    };
    // The caller's time runs from when it connected, not from this
    // request's turn: once every turn is taken, a request waits, and the
    // caller gives up at the end of its budget. Asked after that, a
    // server would take the OTP with nobody left to hear the answer.
    let budget = Duration::from_millis(req.budget_ms).min(MAX_BUDGET);
    let Some(budget) = budget
        .checked_sub(accepted.elapsed())
        .filter(|b| !b.is_zero())
    else {
        send(
            &mut stream,
            &Reply::NotAsked("the login's time ran out while it waited its turn".into()),
        )
        .await;
        return;
    };
    let otp = Zeroizing::new(req.otp);
    match ask(client, otp, budget).await {
        Ok(v) => send(&mut stream, &Reply::Verified(v)).await,
        // The caller sees the connection close without an answer and
        // treats the OTP as possibly used.
        Err(e) => tracing::error!("login socket: the check failed: {e}"),
    }
}

/// Asks the servers with the blocking client. Its wait must not hold up
/// the runtime's other tasks, but handing it to another thread and back
/// (`spawn_blocking`) costs two thread wake-ups, a good part of what a
/// login waits for on a virtual machine: on the multi-threaded runtime
/// this thread makes the request itself and hands its other tasks to
/// another worker meanwhile (`block_in_place`).
async fn ask(
    client: Arc<Client>,
    otp: Zeroizing<String>,
    budget: Duration,
) -> Result<pam_gatepass::client::Verified, tokio::task::JoinError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        Ok(tokio::task::block_in_place(|| client.verify(&otp, budget)))
    } else {
        tokio::task::spawn_blocking(move || client.verify(&otp, budget)).await
    }
}

async fn send(stream: &mut UnixStream, reply: &Reply) {
    let Ok(mut line) = serde_json::to_vec(reply) else {
        return;
    };
    line.push(b'\n');
    let _ = stream.write_all(&line).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use pam_gatepass::client::Trust;

    fn transport(server: &str) -> Transport {
        Transport {
            servers: vec![server.into()],
            mount: "ssh".into(),
            namespace: None,
            trust: Trust::AnyCertificate,
            tls_server_name: None,
            token: None,
        }
    }

    #[test]
    fn clients_are_kept_per_transport_and_refreshed_when_idle() {
        let c = Clients::default();
        let t0 = Instant::now();
        let a = c.get(&transport("https://a"), t0).unwrap();
        let again = c.get(&transport("https://a"), t0 + IDLE / 2).unwrap();
        assert!(Arc::ptr_eq(&a, &again), "reused while warm");
        let later = c
            .get(&transport("https://a"), t0 + IDLE / 2 + IDLE * 2)
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &later), "idle connections are dropped");
        for i in 0..MAX_CLIENTS + 3 {
            c.get(&transport(&format!("https://h{i}")), t0).unwrap();
        }
        assert_eq!(c.map.lock().unwrap().len(), MAX_CLIENTS);
    }

    #[tokio::test]
    async fn the_socket_is_roots_alone_and_replaces_an_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/gatepass/hostd.sock");
        let l = bind(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o755);
        drop(l);
        // A restart finds the old socket and takes its place.
        let _l = bind(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        // A file that is not a socket is not removed.
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "x").unwrap();
        assert!(bind(&file).is_err());
        assert!(file.is_file());
    }

    #[tokio::test]
    async fn a_request_whose_time_ran_out_in_the_queue_is_not_sent_to_a_server() {
        // A server that would take the OTP: nobody may connect to it.
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let addr = format!("https://{}", server.local_addr().unwrap());
        let (mut caller, hostd_end) = UnixStream::pair().unwrap();
        let req = serde_json::json!({
            "transport": transport(&addr), "otp": "a-one-time-password", "budget_ms": 2000,
        });
        caller
            .write_all(format!("{req}\n").as_bytes())
            .await
            .unwrap();
        // Accepted three seconds ago: the caller's 2 s are gone.
        let accepted = Instant::now() - Duration::from_secs(3);
        handle(hostd_end, &Clients::default(), accepted).await;
        let mut answer = String::new();
        caller.read_to_string(&mut answer).await.unwrap();
        let reply: Reply = serde_json::from_str(answer.trim()).unwrap();
        assert!(
            matches!(&reply, Reply::NotAsked(why) if why.contains("ran out")),
            "{reply:?}"
        );
        assert!(server.accept().is_err(), "the OTP was sent to a server");
    }
}
