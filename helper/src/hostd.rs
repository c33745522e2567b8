//! Asking through hostd: the login check's fast path.
//!
//! Every login attempt runs in a fresh process (sshd's per-connection
//! child, pamtester, pam_exec's helper), so a client of its own always
//! starts cold: a new TCP connection and a full TLS handshake per attempt.
//! hostd runs all the time; it answers on a unix socket
//! ([`DEFAULT_SOCKET`], root only) and keeps a [`Client`] per
//! [`Transport`] with its connections to the servers open, the way
//! kanidm's PAM module asks its unixd. The caller sends its transport (the
//! servers, mount, pinned CAs and token from its own configuration, the
//! files already read) with the OTP and its time budget; hostd asks the
//! servers exactly as [`Client::verify`] would and sends back the
//! [`Verified`]. The caller then makes every check on the answer itself
//! (user, addresses, role) and writes the log line.
//!
//! The caller sends the OTP only to a socket whose listener is root's
//! (SO_PEERCRED), and hostd answers only root (the same check on its
//! side). When hostd is not there (no socket, nobody listening, a listener
//! that does not accept or is not root, an answer saying it did not ask)
//! the request never left: [`LoginVerifier`] asks the servers directly
//! within the same budget. When hostd took the request and no answer came
//! back, the OTP may have been used: the servers are still asked with what
//! is left of the budget, and a refusal then says so, as after a server's
//! lost answer.
//!
//! Protocol: one JSON line each way ([`Request`], [`Reply`]) on a new
//! connection per attempt.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::client::{Client, Failure, Transport, Verified, Via};
use crate::verify::OtpServer;

/// Where hostd listens and the login check looks first.
pub const DEFAULT_SOCKET: &str = "/run/gatepass/hostd.sock";
/// The longest line either side reads; a transport with its CA files is a
/// few kilobytes.
pub const MAX_LINE: u64 = 1024 * 1024;
/// How much longer than the budget the caller waits for hostd's answer:
/// hostd's own bound ends at the budget, its answer takes a moment more.
const ANSWER_SLACK: Duration = Duration::from_millis(250);
/// How long the caller keeps trying while hostd's listen queue is full.
/// A full queue (thousands of connections) means hostd has not accepted
/// for a while, hung or stopped: waiting longer would only take time from
/// asking the servers directly.
const CONNECT_PATIENCE: Duration = Duration::from_millis(100);
/// The pause between those tries.
const CONNECT_RETRY: Duration = Duration::from_millis(10);

/// What the login check asks hostd.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub transport: Transport,
    pub otp: String,
    /// How long hostd may take, all servers together.
    pub budget_ms: u64,
}

/// hostd's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// It asked the servers: what they said.
    Verified(Verified),
    /// It did not ask them (a request it cannot read, a peer that is not
    /// root, a transport it cannot build); the OTP was not sent anywhere.
    NotAsked(String),
}

/// How asking hostd went.
#[derive(Debug)]
pub enum Reach {
    /// hostd asked the servers.
    Answered(Verified),
    /// The request never reached a server through hostd: ask directly.
    NotAsked(String),
    /// hostd took the request and no answer came back: a server may have
    /// used the OTP.
    Lost(String),
}

/// Sends `otp` to hostd at `socket` and waits for its answer until
/// `deadline` (plus a little), running `meanwhile` once the question is
/// sent (not at all when it was not).
pub fn ask(
    socket: &Path,
    transport: &Transport,
    otp: &str,
    deadline: Instant,
    meanwhile: &mut dyn FnMut(),
) -> Reach {
    let at = socket.display();
    let stream = match connect_by(socket, deadline) {
        Ok(s) => s,
        Err(e) => return Reach::NotAsked(format!("{at}: {e}")),
    };
    // The OTP goes only to root's hostd, never to whoever managed to
    // listen there.
    match peer_uid(&stream) {
        Ok(0) => {}
        Ok(uid) => return Reach::NotAsked(format!("{at}: served by uid {uid}, not root")),
        Err(e) => return Reach::NotAsked(format!("{at}: {e}")),
    }
    let budget = deadline.saturating_duration_since(Instant::now());
    if budget.is_zero() {
        return Reach::NotAsked(format!("{at}: no time left"));
    }
    let request = Request {
        transport: transport.clone(),
        otp: otp.to_string(),
        budget_ms: u64::try_from(budget.as_millis()).unwrap_or(u64::MAX),
    };
    let line = match serde_json::to_vec(&request) {
        Ok(mut l) => {
            l.push(b'\n');
            Zeroizing::new(l)
        }
        Err(e) => return Reach::NotAsked(format!("{at}: request: {e}")),
    };
    drop(request);
    // A write that does not complete may still have handed hostd the OTP.
    if let Err(e) = send_all(&stream, &line, deadline) {
        return Reach::Lost(format!("{at}: sending: {e}"));
    }
    meanwhile();
    // The whole exchange ends by the deadline (and the slack), however
    // hostd dribbles its answer: a timeout per read alone would restart
    // with every byte.
    let answer = match read_line_by(&stream, deadline + ANSWER_SLACK) {
        Ok(a) if a.ends_with(b"\n") => a,
        Ok(_) => {
            return Reach::Lost(format!(
                "{at}: hostd closed the connection without an answer"
            ))
        }
        Err(e) if is_timeout(&e) => {
            return Reach::Lost(format!(
                "{at}: no answer from hostd within {:.1}s",
                (budget + ANSWER_SLACK).as_secs_f64()
            ))
        }
        Err(e) => return Reach::Lost(format!("{at}: reading the answer: {e}")),
    };
    match serde_json::from_slice::<Reply>(&answer) {
        Ok(Reply::Verified(v)) => Reach::Answered(v),
        Ok(Reply::NotAsked(why)) => Reach::NotAsked(format!("{at}: {why}")),
        Err(e) => Reach::Lost(format!("{at}: unreadable answer: {e}")),
    }
}

/// Connects to the unix socket at `path` without blocking: a blocking
/// connect() to a listener whose queue is full (hostd hung or stopped, the
/// queue filled by earlier logins) waits until hostd accepts, which may be
/// never, and would hold sshd's process there until LoginGraceTime. A
/// non-blocking one fails at once with EAGAIN instead; it is tried again
/// for a moment ([`CONNECT_PATIENCE`], never past `deadline`), then given
/// up. The stream comes back blocking, for reads and writes with timeouts.
fn connect_by(path: &Path, deadline: Instant) -> std::io::Result<UnixStream> {
    use nix::errno::Errno;
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let addr = UnixAddr::new(path)?;
    let give_up = deadline.min(Instant::now() + CONNECT_PATIENCE);
    loop {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                let stream = UnixStream::from(fd);
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            // The queue is full (or a signal came): a fresh socket next
            // time, rather than relying on what a failed connect leaves.
            Err(Errno::EAGAIN | Errno::EINTR) => {
                if Instant::now() + CONNECT_RETRY >= give_up {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::WouldBlock,
                        "hostd is not accepting connections (its queue is full)",
                    ));
                }
                std::thread::sleep(CONNECT_RETRY);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What is left until `until`, or a timeout error when nothing is (std
/// refuses a zero socket timeout, which to the kernel means none).
fn left(until: Instant) -> std::io::Result<Duration> {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(std::io::ErrorKind::TimedOut.into())
    } else {
        Ok(left)
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// Reads one line (up to [`MAX_LINE`] bytes; without its newline when the
/// peer closed first) by `until`: each read waits only for what is left.
/// (hostd reads its requests with it too.)
pub fn read_line_by(stream: &UnixStream, until: Instant) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        stream.set_read_timeout(Some(left(until)?))?;
        let n = match (&*stream).read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let got = chunk.get(..n).unwrap_or_default();
        if n == 0 {
            return Ok(line);
        }
        if let Some(end) = got.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(got.get(..=end).unwrap_or_default());
            return Ok(line);
        }
        line.extend_from_slice(got);
        if line.len() as u64 >= MAX_LINE {
            return Ok(line);
        }
    }
}

/// Writes all of `buf` by `until` with MSG_NOSIGNAL: inside sshd or
/// pamtester a write to a socket hostd closed must not raise SIGPIPE,
/// whose default action ends the process. (hostd answers with it too.)
pub fn send_all(stream: &UnixStream, mut buf: &[u8], until: Instant) -> std::io::Result<()> {
    use nix::sys::socket::{send, MsgFlags};
    while !buf.is_empty() {
        stream.set_write_timeout(Some(left(until)?))?;
        match send(stream.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The uid of the process at the other end of a unix socket.
pub fn peer_uid(stream: &UnixStream) -> Result<u32, String> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    getsockopt(stream, PeerCredentials)
        .map(|c| c.uid())
        .map_err(|e| format!("SO_PEERCRED: {e}"))
}

/// The way to the servers when hostd does not answer: after hostd's
/// `failures` (`maybe_used`: hostd may have used the OTP), ask every server
/// by `deadline`.
pub trait DirectWay {
    fn verify_after(
        &self,
        transport: &Transport,
        otp: &str,
        deadline: Instant,
        failures: Vec<Failure>,
        maybe_used: Option<String>,
    ) -> Verified;
}

/// The TLS client in this process: `gatepass-helper`'s way (and what
/// `gatepass-helper __direct` runs for the PAM module).
pub struct InProcess;

impl DirectWay for InProcess {
    fn verify_after(
        &self,
        transport: &Transport,
        otp: &str,
        deadline: Instant,
        failures: Vec<Failure>,
        maybe_used: Option<String>,
    ) -> Verified {
        // Built only now: with hostd answering, no TLS state is made here.
        match Client::new(transport.clone()) {
            Ok(c) => c.verify_after(otp, deadline, failures, maybe_used),
            Err(e) => {
                let mut failures = failures;
                failures.push(Failure {
                    server: transport.servers.join(", "),
                    error: e.0,
                });
                Verified::Unreachable(failures)
            }
        }
    }
}

/// The PAM module's direct way: the same question in a
/// `gatepass-helper __direct` process ([`serve_direct`]). The module is
/// loaded into every new sshd process; keeping the TLS stack and the HTTP
/// client out of it (the linker drops what the module never calls) makes
/// the library a fraction of the size and its loading, which every login
/// pays, a fraction of the time. Only a login while hostd is down pays for
/// starting the helper.
pub struct ExecHelper {
    /// The `gatepass-helper` binary.
    pub path: PathBuf,
}

/// What [`ExecHelper`] sends `gatepass-helper __direct` on its stdin.
#[derive(Debug, Serialize, Deserialize)]
pub struct DirectRequest {
    pub transport: Transport,
    pub otp: String,
    pub budget_ms: u64,
    pub failures: Vec<Failure>,
    pub maybe_used: Option<String>,
}

impl DirectWay for ExecHelper {
    fn verify_after(
        &self,
        transport: &Transport,
        otp: &str,
        deadline: Instant,
        failures: Vec<Failure>,
        maybe_used: Option<String>,
    ) -> Verified {
        let budget = deadline.saturating_duration_since(Instant::now());
        let request = DirectRequest {
            transport: transport.clone(),
            otp: otp.to_string(),
            budget_ms: u64::try_from(budget.as_millis()).unwrap_or(u64::MAX),
            failures: failures.clone(),
            maybe_used,
        };
        match run_helper(&self.path, &request, budget) {
            Ok(v) => v,
            Err(error) => {
                let mut failures = failures;
                failures.push(Failure {
                    server: self.path.display().to_string(),
                    error,
                });
                Verified::Unreachable(failures)
            }
        }
    }
}

/// Runs `helper __direct` with `request` and reads its answer within
/// `budget` (plus a little). Its stdin and stdout are one end of a socket
/// pair rather than pipes: writing to a helper that died must fail with
/// EPIPE (MSG_NOSIGNAL), not raise SIGPIPE in sshd.
fn run_helper(
    helper: &Path,
    request: &DirectRequest,
    budget: Duration,
) -> Result<Verified, String> {
    use std::process::{Command, Stdio};
    let line = serde_json::to_vec(request)
        .map(|mut l| {
            l.push(b'\n');
            Zeroizing::new(l)
        })
        .map_err(|e| format!("request: {e}"))?;
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let theirs_out = theirs.try_clone().map_err(|e| format!("socketpair: {e}"))?;
    let mut child = Command::new(helper)
        .arg("__direct")
        .env_clear()
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs_out)))
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting it: {e}"))?;
    let answer = exchange(&ours, &line, budget + ANSWER_SLACK);
    drop(ours);
    if answer.is_err() {
        // Past its time: it must not go on with the OTP.
        let _ = child.kill();
    }
    let _ = child.wait();
    let answer = answer?;
    serde_json::from_slice::<Verified>(&answer).map_err(|e| format!("unreadable answer: {e}"))
}

/// Sends `line` and reads one line back, all within `wait`.
fn exchange(stream: &UnixStream, line: &[u8], wait: Duration) -> Result<Vec<u8>, String> {
    let until = Instant::now() + wait;
    send_all(stream, line, until).map_err(|e| format!("sending: {e}"))?;
    match read_line_by(stream, until) {
        Ok(answer) if answer.ends_with(b"\n") => Ok(answer),
        Ok(_) => Err("closed without an answer".into()),
        Err(e) if is_timeout(&e) => Err(format!("no answer within {:.1}s", wait.as_secs_f64())),
        Err(e) => Err(format!("reading the answer: {e}")),
    }
}

/// `gatepass-helper __direct`: reads a [`DirectRequest`] line from `input`,
/// asks the servers in this process and writes the [`Verified`] line to
/// `output`.
pub fn serve_direct(input: impl Read, mut output: impl std::io::Write) -> Result<(), String> {
    let mut line = Zeroizing::new(Vec::new());
    BufReader::new(input)
        .take(MAX_LINE)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("reading the request: {e}"))?;
    let req: DirectRequest =
        serde_json::from_slice(&line).map_err(|e| format!("unreadable request: {e}"))?;
    let otp = Zeroizing::new(req.otp);
    let deadline = Instant::now() + Duration::from_millis(req.budget_ms);
    let v = InProcess.verify_after(&req.transport, &otp, deadline, req.failures, req.maybe_used);
    let mut out = serde_json::to_vec(&v).map_err(|e| format!("answer: {e}"))?;
    out.push(b'\n');
    output
        .write_all(&out)
        .and_then(|()| output.flush())
        .map_err(|e| format!("writing the answer: {e}"))
}

/// The login check's [`OtpServer`]: hostd first when a socket is
/// configured, the servers directly ([`DirectWay`]) when hostd is not there.
pub struct LoginVerifier<D: DirectWay = InProcess> {
    pub transport: Transport,
    pub timeout: Duration,
    /// hostd's socket; `None`: always ask directly.
    pub socket: Option<PathBuf>,
    pub direct: D,
}

impl<D: DirectWay> LoginVerifier<D> {
    fn direct(
        &self,
        otp: &str,
        deadline: Instant,
        failures: Vec<Failure>,
        maybe_used: Option<String>,
    ) -> Verified {
        self.direct
            .verify_after(&self.transport, otp, deadline, failures, maybe_used)
    }
}

impl<D: DirectWay> OtpServer for LoginVerifier<D> {
    fn verify(&self, otp: &str) -> Verified {
        self.verify_overlapped(otp, &mut || {})
    }

    fn verify_overlapped(&self, otp: &str, meanwhile: &mut dyn FnMut()) -> Verified {
        let deadline = Instant::now() + self.timeout;
        let mut ran = false;
        let mut once = || {
            if !std::mem::replace(&mut ran, true) {
                meanwhile();
            }
        };
        let Some(socket) = &self.socket else {
            once();
            return self.direct(otp, deadline, Vec::new(), None);
        };
        let reach = ask(socket, &self.transport, otp, deadline, &mut once);
        once();
        match reach {
            Reach::Answered(Verified::Answer { server, answer, .. }) => Verified::Answer {
                server,
                answer,
                via: Via::Hostd,
            },
            // hostd tried every server within the budget: nothing is left.
            Reach::Answered(unreachable) => unreachable,
            Reach::NotAsked(_) => self.direct(otp, deadline, Vec::new(), None),
            Reach::Lost(error) => {
                let f = Failure {
                    server: "hostd".into(),
                    error,
                };
                let maybe_used = Some(f.to_string());
                self.direct(otp, deadline, vec![f], maybe_used)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Answer, OtpInfo, Trust};
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    fn transport(servers: &[&str]) -> Transport {
        Transport {
            servers: servers.iter().map(|s| s.to_string()).collect(),
            mount: "ssh".into(),
            namespace: None,
            trust: Trust::AnyCertificate,
            tls_server_name: None,
            token: None,
        }
    }

    /// A verifier whose hostd socket (in `dir`) does not exist and whose
    /// one server refuses connections.
    fn without_hostd(dir: &Path) -> LoginVerifier<InProcess> {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("https://{}", closed.local_addr().unwrap());
        drop(closed);
        LoginVerifier {
            transport: transport(&[&addr]),
            timeout: Duration::from_secs(2),
            socket: Some(dir.join("missing.sock")),
            direct: InProcess,
        }
    }

    /// A stand-in for hostd that answers one connection with `reply` (none:
    /// closes without a word) and hands back what it was asked.
    fn fake_hostd(path: &Path, reply: Option<Reply>) -> std::thread::JoinHandle<Option<Request>> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = Vec::new();
            BufReader::new(&s).read_until(b'\n', &mut line).unwrap();
            let req = serde_json::from_slice(&line).ok();
            if let Some(r) = reply {
                let mut out = serde_json::to_vec(&r).unwrap();
                out.push(b'\n');
                (&s).write_all(&out).unwrap();
            }
            req
        })
    }

    #[test]
    fn hostd_answers_and_the_answer_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("hostd.sock");
        let info = OtpInfo {
            username: "root".into(),
            ip: "127.0.0.1".into(),
            role_name: "otp".into(),
        };
        let h = fake_hostd(
            &sock,
            Some(Reply::Verified(Verified::Answer {
                server: "https://a".into(),
                answer: Answer::Valid(info.clone()),
                via: Via::Direct,
            })),
        );
        let v = LoginVerifier {
            transport: transport(&["https://a"]),
            timeout: Duration::from_secs(2),
            socket: Some(sock),
            direct: InProcess,
        };
        let got = v.verify("otp-1");
        assert_eq!(
            got,
            Verified::Answer {
                server: "https://a".into(),
                answer: Answer::Valid(info),
                via: Via::Hostd
            }
        );
        let req = h.join().unwrap().unwrap();
        assert_eq!(req.otp, "otp-1");
        assert_eq!(req.transport, transport(&["https://a"]));
        assert!(
            req.budget_ms > 1000 && req.budget_ms <= 2000,
            "{}",
            req.budget_ms
        );
    }

    #[test]
    fn the_callers_work_runs_while_hostd_asks() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("hostd.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let (ran_tx, ran_rx) = std::sync::mpsc::channel::<()>();
        // This hostd has the question and answers only once the caller's
        // work ran: had that work waited for the answer, none would come.
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = Vec::new();
            BufReader::new(&s).read_until(b'\n', &mut line).unwrap();
            let ran = ran_rx.recv_timeout(Duration::from_secs(5)).is_ok();
            let reply = Reply::Verified(Verified::Answer {
                server: "https://a".into(),
                answer: Answer::Refused("400 OTP not found".into()),
                via: Via::Direct,
            });
            let mut out = serde_json::to_vec(&reply).unwrap();
            out.push(b'\n');
            (&s).write_all(&out).unwrap();
            ran
        });
        let v = LoginVerifier {
            transport: transport(&["https://a"]),
            timeout: Duration::from_secs(2),
            socket: Some(sock),
            direct: InProcess,
        };
        let mut runs = 0;
        let got = v.verify_overlapped("otp-1", &mut || {
            runs += 1;
            let _ = ran_tx.send(());
        });
        assert!(h.join().unwrap(), "the work ran only after the answer");
        assert_eq!(runs, 1);
        assert!(
            matches!(
                got,
                Verified::Answer {
                    via: Via::Hostd,
                    ..
                }
            ),
            "{got:?}"
        );

        // Without hostd the work runs once too, before the direct way.
        let v = without_hostd(dir.path());
        let mut runs = 0;
        let got = v.verify_overlapped("otp-1", &mut || runs += 1);
        assert_eq!(runs, 1);
        assert!(matches!(got, Verified::Unreachable(_)), "{got:?}");
    }

    #[test]
    fn a_hostd_that_stopped_accepting_does_not_hold_the_login() {
        use nix::errno::Errno;
        use nix::sys::socket::{
            bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
        };
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("hostd.sock");
        let addr = UnixAddr::new(&sock).unwrap();
        let new = |flags| socket(AddressFamily::Unix, SockType::Stream, flags, None).unwrap();
        // A hostd that never accepts, with its queue filled as thousands
        // of earlier logins would fill a real one's.
        let listener = new(SockFlag::SOCK_CLOEXEC);
        bind(listener.as_raw_fd(), &addr).unwrap();
        listen(&listener, Backlog::new(1).unwrap()).unwrap();
        let mut queued = Vec::new();
        loop {
            let fd = new(SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC);
            match connect(fd.as_raw_fd(), &addr) {
                Ok(()) => queued.push(fd),
                Err(Errno::EAGAIN) => break,
                Err(e) => panic!("filling the queue: {e}"),
            }
            assert!(queued.len() < 64, "the listen queue never filled");
        }

        // On a thread: a connect that blocks must fail the test, not hang it.
        let (tx, rx) = std::sync::mpsc::channel();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = format!("https://{}", closed.local_addr().unwrap());
        drop(closed);
        let t = transport(&[&server]);
        std::thread::spawn(move || {
            let started = Instant::now();
            let deadline = started + Duration::from_millis(500);
            let reach = ask(&sock, &t, "otp", deadline, &mut || {});
            let asked = started.elapsed();
            let v = LoginVerifier {
                transport: t,
                timeout: Duration::from_secs(1),
                socket: Some(sock),
                direct: InProcess,
            };
            let started = Instant::now();
            let verified = v.verify("otp");
            let _ = tx.send((reach, asked, verified, started.elapsed()));
        });
        let (reach, asked, verified, took) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("still connecting to a hostd that never accepts");
        assert!(matches!(reach, Reach::NotAsked(_)), "{reach:?}");
        assert!(asked < Duration::from_millis(500), "{asked:?}");
        // Not there: the servers are asked directly, within the limit.
        let Verified::Unreachable(f) = verified else {
            panic!("{verified:?}")
        };
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].server, server);
        assert!(took < Duration::from_millis(1500), "{took:?}");
        drop(queued);
    }

    #[test]
    fn no_hostd_means_the_servers_are_asked_directly() {
        let dir = tempfile::tempdir().unwrap();
        let v = without_hostd(dir.path());
        let addr = v.transport.servers[0].clone();
        let Verified::Unreachable(f) = v.verify("otp") else {
            panic!()
        };
        // Only the server: a missing hostd is no failure of its own.
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].server, addr);
    }

    #[test]
    fn a_lost_answer_from_hostd_is_reported_and_the_servers_still_asked() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("hostd.sock");
        let h = fake_hostd(&sock, None);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("https://{}", closed.local_addr().unwrap());
        drop(closed);
        let v = LoginVerifier {
            transport: transport(&[&addr]),
            timeout: Duration::from_secs(2),
            socket: Some(sock),
            direct: InProcess,
        };
        let Verified::Unreachable(f) = v.verify("otp") else {
            panic!()
        };
        assert!(h.join().unwrap().is_some());
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].server, "hostd");
        assert!(f[0].error.contains("without an answer"), "{}", f[0]);
        assert_eq!(f[1].server, addr);
    }

    #[test]
    fn not_asked_falls_back_without_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("hostd.sock");
        let h = fake_hostd(&sock, Some(Reply::NotAsked("cannot read it".into())));
        let v = LoginVerifier {
            transport: transport(&["https://127.0.0.1:1"]),
            timeout: Duration::from_secs(2),
            socket: Some(sock),
            direct: InProcess,
        };
        let Verified::Unreachable(f) = v.verify("otp") else {
            panic!()
        };
        assert!(h.join().unwrap().is_some());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].server, "https://127.0.0.1:1");
    }

    #[test]
    fn the_module_s_direct_way_names_a_helper_it_cannot_start() {
        let v = LoginVerifier {
            transport: transport(&["https://127.0.0.1:1"]),
            timeout: Duration::from_secs(2),
            socket: None,
            direct: ExecHelper {
                path: "/nonexistent/gatepass-helper".into(),
            },
        };
        let Verified::Unreachable(f) = v.verify("otp") else {
            panic!()
        };
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].server, "/nonexistent/gatepass-helper");
        assert!(f[0].error.contains("starting it"), "{}", f[0]);
    }

    #[test]
    fn the_helper_s_direct_mode_answers_one_request_after_hostd_s_failures() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("https://{}", closed.local_addr().unwrap());
        drop(closed);
        let lost = Failure {
            server: "hostd".into(),
            error: "no answer".into(),
        };
        let req = DirectRequest {
            transport: transport(&[&addr]),
            otp: "otp".into(),
            budget_ms: 2000,
            failures: vec![lost.clone()],
            maybe_used: Some(lost.to_string()),
        };
        let mut line = serde_json::to_vec(&req).unwrap();
        line.push(b'\n');
        let mut out = Vec::new();
        serve_direct(&line[..], &mut out).unwrap();
        assert!(out.ends_with(b"\n"));
        let Verified::Unreachable(f) = serde_json::from_slice(&out).unwrap() else {
            panic!()
        };
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0], lost);
        assert_eq!(f[1].server, addr);
    }
}
