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
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pam_gatepass::client::{Client, Transport};
use pam_gatepass::hostd::{peer_uid, read_line_by, send_all, Reply, Request, MAX_LINE};
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
/// Logins asked of the servers at once; more wait for a turn.
const MAX_CONCURRENT: usize = 64;
/// Threads taking connections at most. Beyond [`MAX_CONCURRENT`] they wait
/// for a turn, their time running; beyond this, connections wait to be
/// taken (sshd's MaxStartups keeps a host's logins at once far below).
const MAX_THREADS: usize = 256;
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

/// The login socket's threads, answering until [`LoginSocket::stop`].
///
/// Threads rather than tasks on hostd's runtime: a login is one blocking
/// exchange with the servers, and on the runtime every one paid for
/// thread hand-offs (the accepting task's worker, a worker for its task,
/// `block_in_place` moving that worker's other tasks to yet another
/// thread), about six thread switches and 0.18 ms of CPU a login on a
/// small virtual machine, against about five and 0.14 ms here. Each thread
/// waits in `accept` and answers what it took itself (the kernel wakes one
/// waiting thread per connection); a thread that takes the last waiting
/// place starts another first, so that a connection is taken at once while
/// fewer than [`MAX_THREADS`] are, and a login's time runs from when its
/// caller connected, its wait for a turn ([`MAX_CONCURRENT`]) included.
pub struct LoginSocket {
    shared: Arc<Shared>,
}

struct Shared {
    listener: UnixListener,
    clients: Clients,
    turns: Turns,
    /// Threads waiting in `accept`.
    waiting: AtomicUsize,
    /// Threads alive.
    threads: AtomicUsize,
    stopping: AtomicBool,
}

/// Threads kept waiting in `accept` when no login is being answered.
const SPARE: usize = 2;

impl LoginSocket {
    /// Stops taking connections: the threads waiting in `accept` return
    /// (the listening socket is shut down under them); one answering a
    /// login finishes it first.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = nix::sys::socket::shutdown(
            self.shared.listener.as_raw_fd(),
            nix::sys::socket::Shutdown::Both,
        );
    }
}

/// Binds `path` and answers on it on threads of its own.
pub fn start(path: &Path) -> Result<LoginSocket, Error> {
    let listener = bind(path)?;
    tracing::info!(socket = %path.display(), "answering login checks");
    serve(listener, Clients::default())
}

/// Answers on `listener` until [`LoginSocket::stop`].
pub fn serve(listener: UnixListener, clients: Clients) -> Result<LoginSocket, Error> {
    let shared = Arc::new(Shared {
        listener,
        clients,
        turns: Turns::default(),
        waiting: AtomicUsize::new(0),
        threads: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
    });
    for _ in 0..SPARE {
        spawn_acceptor(&shared).map_err(|e| Error::Other(format!("login socket: {e}")))?;
    }
    Ok(LoginSocket { shared })
}

/// Starts one more thread waiting in `accept`, unless [`MAX_THREADS`] are
/// running.
fn spawn_acceptor(shared: &Arc<Shared>) -> std::io::Result<()> {
    if shared.threads.fetch_add(1, Ordering::SeqCst) >= MAX_THREADS {
        shared.threads.fetch_sub(1, Ordering::SeqCst);
        return Ok(());
    }
    // Counted as waiting from now: a second taker must not start a third
    // thread for the same gap.
    shared.waiting.fetch_add(1, Ordering::SeqCst);
    let s = shared.clone();
    let started = std::thread::Builder::new()
        .name("hostd-login".into())
        .spawn(move || acceptor(&s));
    if let Err(e) = started {
        shared.waiting.fetch_sub(1, Ordering::SeqCst);
        shared.threads.fetch_sub(1, Ordering::SeqCst);
        return Err(e);
    }
    Ok(())
}

/// One thread: takes a connection, answers it, and waits again, or ends
/// when [`SPARE`] others are waiting. Counted in `waiting` on entry.
fn acceptor(shared: &Arc<Shared>) {
    loop {
        let taken = shared.listener.accept();
        let before = shared.waiting.fetch_sub(1, Ordering::SeqCst);
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match taken {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("login socket: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                shared.waiting.fetch_add(1, Ordering::SeqCst);
                continue;
            }
        };
        let accepted = Instant::now();
        if before == 1 {
            // Nobody is left waiting: another thread takes the next
            // connection while this one answers.
            if let Err(e) = spawn_acceptor(shared) {
                tracing::warn!("login socket: cannot start a thread: {e}");
            }
        }
        handle(&stream, &shared.clients, &shared.turns, accepted);
        drop(stream);
        // Back to waiting only while fewer than SPARE wait: in one step,
        // or threads finishing together would all go back.
        let back = shared
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < SPARE).then_some(w + 1)
            });
        if back.is_err() {
            break;
        }
    }
    shared.threads.fetch_sub(1, Ordering::SeqCst);
}

/// Removes the socket (at shutdown): a caller then asks the servers itself
/// at once instead of finding nobody listening.
pub fn remove(path: &PathBuf) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Turns to ask the servers: [`MAX_CONCURRENT`] at once. A counting
/// semaphore for threads, which std does not have (tokio's is for tasks).
#[derive(Default)]
struct Turns {
    taken: Mutex<usize>,
    freed: std::sync::Condvar,
}

/// A turn, given back when dropped.
struct Turn<'a>(&'a Turns);

impl Turns {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A turn by `until`, or None when none came free by then.
    fn take(&self, until: Instant) -> Option<Turn<'_>> {
        let mut taken = self.lock();
        while *taken >= MAX_CONCURRENT {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            taken = match self.freed.wait_timeout(taken, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        *taken += 1;
        Some(Turn(self))
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.lock() -= 1;
        self.0.freed.notify_one();
    }
}

/// Answers one request on a connection accepted at `accepted`.
fn handle(stream: &UnixStream, clients: &Clients, turns: &Turns, accepted: Instant) {
    let uid = peer_uid(stream);
    if !matches!(uid, Ok(0)) {
        tracing::warn!("login socket: refused a peer that is not root ({uid:?})");
        send(stream, &Reply::NotAsked("only root may ask".into()));
        return;
    }
    // Zeroed when dropped, whatever becomes of it: it holds an OTP.
    let line = match read_line_by(stream, accepted + READ_TIMEOUT) {
        Ok(l) => Zeroizing::new(l),
        Err(_) => {
            send(stream, &Reply::NotAsked("no request in time".into()));
            return;
        }
    };
    if !line.ends_with(b"\n") {
        let why = if line.len() as u64 >= MAX_LINE {
            "the request is longer than a line may be"
        } else {
            "the request ended before its line did"
        };
        send(stream, &Reply::NotAsked(why.into()));
        return;
    }
    let req: Request = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => {
            send(stream, &Reply::NotAsked(format!("unreadable request: {e}")));
            return;
        }
    };
    let client = match clients.get(&req.transport, Instant::now()) {
        Ok(c) => c,
        Err(e) => {
            send(stream, &Reply::NotAsked(e));
            return;
        }
    };
    // The caller's time runs from when it connected, not from this
    // request's turn: once every turn is taken, a request waits, and the
    // caller gives up at the end of its budget. Asked after that, a
    // server would take the OTP with nobody left to hear the answer.
    let deadline = accepted + Duration::from_millis(req.budget_ms).min(MAX_BUDGET);
    let turn = turns.take(deadline);
    let budget = deadline.saturating_duration_since(Instant::now());
    if turn.is_none() || budget.is_zero() {
        send(
            stream,
            &Reply::NotAsked("the login's time ran out while it waited its turn".into()),
        );
        return;
    }
    // A caller that hung up (its own time ran out while the request waited
    // to be taken or for its turn) hears no answer: a server asked now
    // would take the OTP for a login that already failed.
    if caller_hung_up(stream) {
        tracing::warn!("login socket: the caller hung up before its turn; its OTP was not sent");
        return;
    }
    let otp = Zeroizing::new(req.otp);
    let verified = client.verify(&otp, budget);
    drop(turn);
    send(stream, &Reply::Verified(verified));
}

/// Whether the caller has closed its end of the connection. The kernel
/// tells that apart from a caller that only shut down its writing side
/// (`POLLHUP` against `POLLRDHUP`), which still waits for the answer.
fn caller_hung_up(stream: &UnixStream) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        Err(_) => false,
    }
}

/// Writes `reply` (bounded by [`READ_TIMEOUT`]: a caller that stopped
/// reading does not hold the thread) and closes the writing side.
fn send(stream: &UnixStream, reply: &Reply) {
    let Ok(mut line) = serde_json::to_vec(reply) else {
        return;
    };
    line.push(b'\n');
    let _ = send_all(stream, &line, Instant::now() + READ_TIMEOUT);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pam_gatepass::client::{Trust, Verified};
    use std::io::{Read, Write};

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

    #[test]
    fn the_socket_is_roots_alone_and_replaces_an_old_one() {
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

    fn request(server: &str, budget_ms: u64) -> String {
        let req = serde_json::json!({
            "transport": transport(server), "otp": "a-one-time-password", "budget_ms": budget_ms,
        });
        format!("{req}\n")
    }

    /// Runs `handle` on a request of `budget_ms` accepted at `accepted`:
    /// its answer must say the login's time ran out, and nothing may have
    /// reached the server, which would take the OTP.
    fn not_sent_for_lack_of_time(budget_ms: u64, turns: &Turns, accepted: Instant) {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let addr = format!("https://{}", server.local_addr().unwrap());
        let (mut caller, hostd_end) = UnixStream::pair().unwrap();
        caller
            .write_all(request(&addr, budget_ms).as_bytes())
            .unwrap();
        handle(&hostd_end, &Clients::default(), turns, accepted);
        let mut answer = String::new();
        caller.read_to_string(&mut answer).unwrap();
        let reply: Reply = serde_json::from_str(answer.trim()).unwrap();
        assert!(
            matches!(&reply, Reply::NotAsked(why) if why.contains("ran out")),
            "{reply:?}"
        );
        assert!(server.accept().is_err(), "the OTP was sent to a server");
    }

    #[test]
    fn a_request_whose_time_ran_out_in_the_queue_is_not_sent_to_a_server() {
        // Accepted three seconds ago: the caller's 2 s are gone.
        let accepted = Instant::now() - Duration::from_secs(3);
        not_sent_for_lack_of_time(2000, &Turns::default(), accepted);
    }

    #[test]
    fn a_request_that_finds_no_turn_before_its_time_runs_out_is_not_sent_to_a_server() {
        // Every turn taken, and none given back in time.
        let turns = Turns::default();
        let held: Vec<Turn<'_>> = (0..MAX_CONCURRENT)
            .map(|_| turns.take(Instant::now()).unwrap())
            .collect();
        assert!(turns.take(Instant::now()).is_none());
        not_sent_for_lack_of_time(200, &turns, Instant::now());
        // A turn given back goes to the next in line.
        drop(held);
        assert!(turns.take(Instant::now()).is_some());
    }

    #[test]
    fn a_request_whose_caller_hung_up_before_its_turn_is_not_sent_to_a_server() {
        // A server that never answers: asked, it holds the caller's budget.
        for caller_waits in [true, false] {
            let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            server.set_nonblocking(true).unwrap();
            let addr = format!("https://{}", server.local_addr().unwrap());
            let (mut caller, hostd_end) = UnixStream::pair().unwrap();
            caller.write_all(request(&addr, 300).as_bytes()).unwrap();
            // One that still waits has said all it will, as a shell's
            // `socat` does: that is not hanging up.
            caller.shutdown(std::net::Shutdown::Write).unwrap();
            let caller = caller_waits.then_some(caller);
            handle(
                &hostd_end,
                &Clients::default(),
                &Turns::default(),
                Instant::now(),
            );
            assert_eq!(
                server.accept().is_ok(),
                caller_waits,
                "the OTP reached a server: {}",
                if caller_waits {
                    "no (but the caller waited for its answer)"
                } else {
                    "yes (but the caller had hung up)"
                }
            );
            drop(caller);
        }
    }

    #[test]
    fn a_request_that_is_not_one_whole_line_is_refused_saying_why() {
        let answer_to = |sent: Vec<u8>| {
            let (mut caller, hostd_end) = UnixStream::pair().unwrap();
            let writer = std::thread::spawn(move || {
                // hostd stops reading at its limit: the rest may not go.
                let _ = caller.write_all(&sent);
                let _ = caller.shutdown(std::net::Shutdown::Write);
                let mut answer = String::new();
                let _ = caller.read_to_string(&mut answer);
                answer
            });
            handle(
                &hostd_end,
                &Clients::default(),
                &Turns::default(),
                Instant::now(),
            );
            drop(hostd_end);
            let answer = writer.join().unwrap();
            serde_json::from_str::<Reply>(answer.trim()).unwrap()
        };
        let cut = answer_to(br#"{"transport":{"servers":["#.to_vec());
        assert!(
            matches!(&cut, Reply::NotAsked(why) if why.contains("ended before its line")),
            "{cut:?}"
        );
        let long = answer_to(vec![b'x'; usize::try_from(MAX_LINE).unwrap() + 10]);
        assert!(
            matches!(&long, Reply::NotAsked(why) if why.contains("longer than a line")),
            "{long:?}"
        );
    }

    /// Waits (at most 10 s) for `cond`.
    fn until(what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn logins_at_once_are_each_taken_at_once_and_stop_ends_every_thread() {
        // Only root is answered; the suite runs as root.
        assert!(nix::unistd::geteuid().is_root(), "run as root");
        // A server that accepts connections and never answers: each login
        // is held for its whole budget.
        let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("https://{}", hanging.local_addr().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hostd.sock");
        let socket = serve(bind(&path).unwrap(), Clients::default()).unwrap();
        let shared = socket.shared.clone();
        let count = |a: &AtomicUsize| a.load(Ordering::SeqCst);
        until("the spare threads wait", || count(&shared.waiting) == SPARE);

        let callers: Vec<UnixStream> = (0..5)
            .map(|_| {
                let mut c = UnixStream::connect(&path).unwrap();
                c.write_all(request(&addr, 3000).as_bytes()).unwrap();
                c
            })
            .collect();
        // Five answered together, and still a thread waiting for the next.
        until("five threads answering and one waiting", || {
            count(&shared.threads) >= 6 && count(&shared.waiting) >= 1
        });
        for mut c in callers {
            let mut answer = String::new();
            c.read_to_string(&mut answer).unwrap();
            let reply: Reply = serde_json::from_str(answer.trim()).unwrap();
            assert!(
                matches!(&reply, Reply::Verified(Verified::Unreachable(_))),
                "{reply:?}"
            );
        }
        // The threads no longer needed end.
        until("back to the spare threads", || {
            count(&shared.threads) == SPARE && count(&shared.waiting) == SPARE
        });

        socket.stop();
        until("every thread ended", || count(&shared.threads) == 0);
        // Nobody takes a connection any more.
        assert!(UnixStream::connect(&path)
            .and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(5)))?;
                c.write_all(request(&addr, 1000).as_bytes())?;
                let mut answer = String::new();
                c.read_to_string(&mut answer)?;
                Ok(answer)
            })
            .map_or(true, |a| a.is_empty()));
    }
}
