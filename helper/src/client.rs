//! Asking the server about an OTP: `POST /v1/<mount>/verify {"otp": …}` over
//! TLS with the server's CA pinned, to each configured server in turn until
//! one gives an answer, all within one time budget.
//!
//! Only a server that cannot be reached (connection, TLS, timeout) or that
//! fails (5xx) makes the helper try the next one; a server's "no" (4xx) is
//! final. The OTP is consumed by the first server that takes it (servers
//! share one database and the take is atomic), so a retry elsewhere can
//! never log in twice: trying the next server is always safe. It is also
//! sure to find the OTP untouched when the first server never got the
//! request (no connection, no TLS) or answered 503, which gatepass answers
//! only before it acts (its audit file cannot be written). After any other
//! failure (no answer in time once sent, another 5xx) the first server may
//! have taken the OTP and lost the answer: the next server is still asked
//! (the failure may well have come before the take), and if it does not
//! know the OTP, the refusal says the first one may have used it.
//!
//! The client is blocking (ureq over std sockets with rustls): a login
//! attempt runs in a process of its own (sshd's, pamtester's, the
//! helper's), where starting an async runtime and its threads cost more
//! than the request. [`Transport`] is everything that decides where the
//! request goes and whom it trusts (servers, mount, pinned CAs, token); it
//! is what the PAM module hands to hostd ([`crate::hostd`]), which keeps a
//! [`Client`] per transport with its connections open.

use std::cell::Cell;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatepass_api::ssh::{Verified as VerifyData, VerifyRequest};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::config::{Config, ConfigError};

/// What vault-ssh-helper's `-verify-only` sends instead of an OTP, and
/// what the server answers to it; what an OTP was issued for.
pub use gatepass_api::ssh::{OtpInfo, VERIFY_ECHO_REQUEST, VERIFY_ECHO_RESPONSE};

/// Answers larger than this are not an answer to `verify`.
const MAX_BODY: usize = 64 * 1024;

/// A server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// The OTP was valid (and is now used up).
    Valid(OtpInfo),
    /// The answer to [`VERIFY_ECHO_REQUEST`].
    Echo(String),
    /// The server refused (unknown, used or expired OTP; rate limited; …).
    Refused(String),
}

/// One server that gave no answer, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub server: String,
    pub error: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.server, self.error)
    }
}

/// Which way the question went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// This process asked the servers itself.
    #[default]
    Direct,
    /// hostd asked them, on its open connections.
    Hostd,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Hostd => "hostd",
        }
    }
}

/// The result of asking the configured servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verified {
    /// A server answered.
    Answer {
        server: String,
        answer: Answer,
        #[serde(default)]
        via: Via,
    },
    /// No server answered in time; each tried one and why.
    Unreachable(Vec<Failure>),
}

/// A host token; never printed, wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Zeroizing<String>);

impl std::hash::Hash for Token {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

impl Serialize for Token {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Token, D::Error> {
        String::deserialize(d).map(|t| Token(Zeroizing::new(t)))
    }
}

impl Token {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

/// Which server certificates are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// Only certificates that chain to these CAs (the PEM text of each
    /// file read from `ca_cert` and `ca_path`, each holding at least one).
    Pinned(Vec<String>),
    /// The system's trusted CAs (dev mode without `ca_cert`/`ca_path`).
    System,
    /// Any certificate, though the handshake signature is still checked
    /// (dev mode's `tls_skip_verify`).
    AnyCertificate,
}

/// Where the question goes and whom it trusts: the part of the
/// configuration that decides the request, with the files it names read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transport {
    /// Base URLs, tried in turn.
    pub servers: Vec<String>,
    pub mount: String,
    pub namespace: Option<String>,
    pub trust: Trust,
    /// Checks the certificate for this name instead of the address's host.
    pub tls_server_name: Option<String>,
    /// Sent as `X-Vault-Token`, which ureq's `log` records show at debug
    /// with the rest of the request's head (it hides only Authorization
    /// and Cookie): a binary that passes `log` records on must keep the
    /// `ureq` target at info or less, as hostd's `logging` does.
    pub token: Option<Token>,
}

impl Transport {
    /// Reads the CA files and the token file the configuration names and
    /// checks them; a file that is missing or holds no certificate (or no
    /// token) is a configuration error. Call [`Config::check_transport`]
    /// first.
    pub fn load(cfg: &Config) -> Result<Transport, ConfigError> {
        let trust = if cfg.tls_skip_verify {
            Trust::AnyCertificate
        } else {
            let pems = read_cas(cfg)?;
            if pems.is_empty() {
                if cfg.tls_server_name.is_some() {
                    return Err(ConfigError(
                        "tls_server_name needs ca_cert or ca_path".into(),
                    ));
                }
                Trust::System
            } else {
                Trust::Pinned(pems)
            }
        };
        let token = match &cfg.host_token_file {
            Some(p) => Some(read_token(p)?),
            None => None,
        };
        Ok(Transport {
            servers: cfg.servers.clone(),
            mount: cfg.mount.clone(),
            namespace: cfg.namespace.clone(),
            trust,
            tls_server_name: cfg.tls_server_name.clone(),
            token,
        })
    }
}

/// A blocking HTTPS client for one [`Transport`]. Connections it opened
/// stay open for the next request (hostd's warm connections); rustls keeps
/// the TLS sessions, so a new connection resumes rather than repeats the
/// full handshake.
pub struct Client {
    transport: Transport,
    tls: Arc<rustls::ClientConfig>,
    agent: ureq::Agent,
}

impl Client {
    /// Builds the client for the configuration (reads its files).
    pub fn from_config(cfg: &Config) -> Result<Client, ConfigError> {
        Client::new(Transport::load(cfg)?)
    }

    /// Builds the client: TLS with only the transport's CAs trusted, no
    /// proxies, no redirects. Opens no connection.
    pub fn new(transport: Transport) -> Result<Client, ConfigError> {
        let tls = Arc::new(tls_config(&transport)?);
        let agent = agent(&tls);
        Ok(Client {
            transport,
            tls,
            agent,
        })
    }

    /// The same client without its open connections (the TLS sessions are
    /// kept): for a connection the server may be about to close as idle.
    pub fn without_connections(&self) -> Client {
        Client {
            transport: self.transport.clone(),
            tls: self.tls.clone(),
            agent: agent(&self.tls),
        }
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    pub fn servers(&self) -> &[String] {
        &self.transport.servers
    }

    /// Asks the servers in turn about `otp` until one answers; each gets an
    /// even share of what is left of `budget`, so a hanging first server
    /// still leaves time for the next.
    pub fn verify(&self, otp: &str, budget: Duration) -> Verified {
        self.verify_after(otp, Instant::now() + budget, Vec::new(), None)
    }

    /// [`Client::verify`] until `deadline`, after earlier failures (hostd's,
    /// say); `maybe_used` names the first of them after which the OTP may
    /// have been taken.
    pub fn verify_after(
        &self,
        otp: &str,
        deadline: Instant,
        mut failures: Vec<Failure>,
        mut maybe_used: Option<String>,
    ) -> Verified {
        let servers = &self.transport.servers;
        for (i, server) in servers.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                failures.push(Failure {
                    server: server.clone(),
                    error: "not tried: no time left".into(),
                });
                continue;
            }
            let share = left / u32::try_from(servers.len() - i).unwrap_or(1);
            let miss = match self.ask(server, otp, share) {
                Ok(answer) => {
                    return Verified::Answer {
                        server: server.clone(),
                        answer: after_failures(answer, maybe_used.as_deref()),
                        via: Via::Direct,
                    };
                }
                Err(miss) => miss,
            };
            let failure = Failure {
                server: server.clone(),
                error: miss.error,
            };
            if !miss.untouched && maybe_used.is_none() {
                maybe_used = Some(failure.to_string());
            }
            failures.push(failure);
        }
        Verified::Unreachable(failures)
    }

    /// `-verify-only`: asks every server for the echo, each with the whole
    /// `budget`; one line per server.
    pub fn echo_all(&self, budget: Duration) -> Vec<(String, Result<(), String>)> {
        let mut out = Vec::new();
        for server in &self.transport.servers {
            let r = match self.ask(server, VERIFY_ECHO_REQUEST, budget) {
                Ok(Answer::Echo(m)) if m == VERIFY_ECHO_RESPONSE => Ok(()),
                Ok(Answer::Echo(m)) => Err(format!("invalid echo response {m:?}")),
                Ok(Answer::Valid(_)) => Err("answered the echo request as an OTP".into()),
                Ok(Answer::Refused(why)) => Err(format!("refused: {why}")),
                Err(miss) => Err(miss.error),
            };
            out.push((server.clone(), r));
        }
        out
    }

    /// One request to one server within `within`. `Err` means "no answer:
    /// try the next".
    fn ask(&self, server: &str, otp: &str, within: Duration) -> Result<Answer, Miss> {
        let url = format!("{server}/v1/{}/verify", self.transport.mount);
        let body = serde_json::to_vec(&VerifyRequest {
            otp: otp.to_string(),
        })
        .map_err(|e| Miss {
            error: format!("request: {e}"),
            untouched: true,
        })?;
        let body = Zeroizing::new(body);
        let mut req = self
            .agent
            .post(&url)
            .timeout(within)
            .set("Content-Type", "application/json");
        if let Some(ns) = &self.transport.namespace {
            req = req.set("X-Vault-Namespace", ns);
        }
        if let Some(t) = &self.transport.token {
            req = req.set("X-Vault-Token", t.as_str());
        }
        RESOLVE_BY.with(|by| by.set(Some(Instant::now() + within)));
        let sent = req.send_bytes(&body);
        RESOLVE_BY.with(|by| by.set(None));
        let resp = match sent {
            Ok(r) => r,
            // ureq answers 4xx and 5xx as errors; they are answers here.
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                // Name, connection and TLS failures come before the request
                // is written: the server cannot have taken the OTP.
                let untouched = matches!(
                    t.kind(),
                    ureq::ErrorKind::Dns
                        | ureq::ErrorKind::ConnectionFailed
                        | ureq::ErrorKind::InvalidUrl
                        | ureq::ErrorKind::UnknownScheme
                );
                let error = if timed_out(&t) {
                    format!("no answer within {}", secs(within))
                } else {
                    chain(&t)
                };
                return Err(Miss { error, untouched });
            }
        };
        let status = resp.status();
        let lost = |error: String| Miss {
            error,
            untouched: status == 503,
        };
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| {
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) {
                    lost(format!("no answer within {}", secs(within)))
                } else {
                    lost(format!("reading the answer: {e}"))
                }
            })?;
        if body.len() > MAX_BODY {
            return Err(lost(format!("answer larger than {MAX_BODY} bytes")));
        }
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        match status {
            200 => Ok(parse_answer(json)),
            400..=499 => Ok(Answer::Refused(errors_text(status, json.as_ref()))),
            _ => Err(lost(format!("HTTP {}", errors_text(status, json.as_ref())))),
        }
    }
}

/// An agent on `tls`: no proxy, no redirect, names resolved within the
/// request's time.
fn agent(tls: &Arc<rustls::ClientConfig>) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .tls_config(tls.clone())
        .resolver(BoundedResolver)
        .redirects(0)
        .try_proxy_from_env(false)
        .max_idle_connections_per_host(4)
        .user_agent(concat!("gatepass-helper/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Whether a transport error was a timeout.
fn timed_out(e: &ureq::Transport) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) {
                return true;
            }
        }
        cur = c.source();
    }
    false
}

thread_local! {
    /// When the name lookup of the request this thread is sending must be
    /// over.
    static RESOLVE_BY: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Addresses for `host:port`: an IP address as it is; a name through
/// getaddrinfo(3) on a thread of its own, waited for only until the
/// request's time is up (getaddrinfo has no timeout of its own, and a
/// hanging resolver must not hold a login past its bound).
struct BoundedResolver;

impl ureq::Resolver for BoundedResolver {
    fn resolve(&self, netloc: &str) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(addr) = netloc.parse::<SocketAddr>() {
            return Ok(vec![addr]);
        }
        let by = RESOLVE_BY
            .with(Cell::get)
            .unwrap_or_else(|| Instant::now() + crate::config::DEFAULT_TIMEOUT);
        let (tx, rx) = std::sync::mpsc::channel();
        let name = netloc.to_string();
        std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || {
                let _ = tx.send(name.to_socket_addrs().map(Iterator::collect::<Vec<_>>));
            })?;
        match rx.recv_timeout(by.saturating_duration_since(Instant::now())) {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no address for {netloc} in time"),
            )),
        }
    }
}

/// A server that gave no answer.
struct Miss {
    error: String,
    /// Sure not to have taken the OTP: the request never reached it, or it
    /// answered 503 (gatepass refuses with 503 before acting).
    untouched: bool,
}

/// A refusal that follows a failure after which the OTP may have been
/// taken says so: "OTP not found" is then no sign of a wrong OTP.
fn after_failures(answer: Answer, maybe_used: Option<&str>) -> Answer {
    match (answer, maybe_used) {
        (Answer::Refused(why), Some(earlier)) => Answer::Refused(format!(
            "{why} (after {earlier}; that server may have used the OTP \
             before its answer was lost)"
        )),
        (answer, _) => answer,
    }
}

fn parse_answer(json: Option<Value>) -> Answer {
    let Some(env) = json.and_then(|v| serde_json::from_value::<gatepass_api::Envelope>(v).ok())
    else {
        return Answer::Refused("answer is not Vault's JSON envelope".into());
    };
    match env
        .data
        .and_then(|d| serde_json::from_value::<VerifyData>(d).ok())
    {
        Some(VerifyData::Otp(info)) if !info.username.is_empty() && !info.ip.is_empty() => {
            Answer::Valid(info)
        }
        Some(VerifyData::Echo { message }) if !message.is_empty() => Answer::Echo(message),
        _ => Answer::Refused("answer has no username and IP".into()),
    }
}

fn errors_text(status: u16, json: Option<&Value>) -> String {
    let errors: Vec<String> = json
        .and_then(|v| v.get("errors"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if errors.is_empty() {
        format!("{status}")
    } else {
        format!("{status} {}", errors.join("; "))
    }
}

/// An error and its causes on one line ("error sending request: …: invalid
/// peer certificate: UnknownIssuer").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn read_token(path: &Path) -> Result<Token, ConfigError> {
    let t = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("host_token_file {}: {e}", path.display())))?,
    );
    let t = Zeroizing::new(t.trim().to_string());
    if t.is_empty() || t.chars().any(|c| c.is_control() || c == ' ') {
        return Err(ConfigError(format!(
            "host_token_file {}: not a token",
            path.display()
        )));
    }
    Ok(Token(t))
}

/// The rustls configuration for a transport.
fn tls_config(t: &Transport) -> Result<rustls::ClientConfig, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = |pems: &[String]| -> Result<RootCertStore, ConfigError> {
        let mut roots = RootCertStore::empty();
        for pem in pems {
            let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| ConfigError(format!("not a PEM certificate: {e}")))?;
            roots.add_parsable_certificates(certs);
        }
        Ok(roots)
    };
    let verifier: Arc<dyn ServerCertVerifier> = match &t.trust {
        Trust::AnyCertificate => Arc::new(AcceptAnyCertificate(provider.clone())),
        trust => {
            let roots = match trust {
                Trust::Pinned(pems) => roots(pems)?,
                _ => {
                    let found = rustls_native_certs::load_native_certs();
                    let mut roots = RootCertStore::empty();
                    roots.add_parsable_certificates(found.certs);
                    roots
                }
            };
            if roots.is_empty() {
                return Err(ConfigError("no CA certificate to trust".into()));
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| ConfigError(format!("TLS verifier: {e}")))?;
            match &t.tls_server_name {
                Some(name) => {
                    let name = ServerName::try_from(name.clone()).map_err(|_| {
                        ConfigError(format!("tls_server_name {name:?} is not a host name"))
                    })?;
                    Arc::new(CheckAs {
                        inner: webpki,
                        name,
                    })
                }
                None => webpki,
            }
        }
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// The PEM text of `ca_cert` and of each file in `ca_path` (as
/// vault-ssh-helper reads them), each checked to hold a certificate.
fn read_cas(cfg: &Config) -> Result<Vec<String>, ConfigError> {
    let mut pems = Vec::new();
    if let Some(file) = &cfg.ca_cert {
        if read_pem(file, &mut pems)? == 0 {
            return Err(ConfigError(format!(
                "ca_cert {}: no certificate in file",
                file.display()
            )));
        }
    }
    if let Some(dir) = &cfg.ca_path {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| ConfigError(format!("ca_path {}: {e}", dir.display())))?;
        let mut n = 0;
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths.iter().filter(|p| p.is_file()) {
            n += read_pem(p, &mut pems)?;
        }
        if n == 0 {
            return Err(ConfigError(format!(
                "ca_path {}: no certificate found",
                dir.display()
            )));
        }
    }
    Ok(pems)
}

/// Adds the file's text to `pems` when it holds certificates; how many.
fn read_pem(path: &Path, pems: &mut Vec<String>) -> Result<usize, ConfigError> {
    let pem = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "cannot read CA certificate {}: {e}",
            path.display()
        ))
    })?;
    let mut n = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
        let cert = cert
            .map_err(|e| ConfigError(format!("{}: not a PEM certificate: {e}", path.display())))?;
        // What rustls would refuse to add is no certificate to trust.
        let mut probe = RootCertStore::empty();
        if probe.add(cert).is_ok() {
            n += 1;
        }
    }
    if n > 0 {
        pems.push(pem);
    }
    Ok(n)
}

/// Checks the certificate for `tls_server_name` instead of the address.
#[derive(Debug)]
struct CheckAs {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for CheckAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `tls_skip_verify` (dev mode only): any certificate, though the handshake
/// signatures are still checked.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// This host's own addresses, from getifaddrs(3).
pub struct InterfaceAddrs;

impl crate::verify::LocalAddrs for InterfaceAddrs {
    fn local_addrs(&self) -> Result<Vec<IpAddr>, String> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))?;
        let mut out: Vec<IpAddr> = addrs
            .filter_map(|a| a.address)
            .filter_map(|s| {
                s.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::LocalAddrs;
    use serde_json::json;

    #[test]
    fn answers_are_read_as_vault_sends_them() {
        let v = json!({"request_id": "r", "data": {"username": "root", "ip": "127.0.0.1", "role_name": "otp"}});
        assert_eq!(
            parse_answer(Some(v)),
            Answer::Valid(OtpInfo {
                username: "root".into(),
                ip: "127.0.0.1".into(),
                role_name: "otp".into()
            })
        );
        let v = json!({"data": {"message": "verify-echo-response"}});
        assert_eq!(
            parse_answer(Some(v)),
            Answer::Echo(VERIFY_ECHO_RESPONSE.into())
        );
        assert!(matches!(
            parse_answer(Some(json!({"data": {}}))),
            Answer::Refused(_)
        ));
        assert!(matches!(parse_answer(Some(json!([1]))), Answer::Refused(_)));
        assert!(matches!(parse_answer(None), Answer::Refused(_)));
        assert_eq!(
            errors_text(400, Some(&json!({"errors": ["OTP not found"]}))),
            "400 OTP not found"
        );
        assert_eq!(errors_text(502, None), "502");
    }

    #[test]
    fn a_refusal_after_an_unsure_failure_says_the_otp_may_be_used() {
        let refused = || Answer::Refused("400 OTP not found".into());
        assert_eq!(after_failures(refused(), None), refused());
        let Answer::Refused(why) =
            after_failures(refused(), Some("https://a: no answer within 2.5s"))
        else {
            panic!()
        };
        assert!(why.starts_with("400 OTP not found (after https://a: no answer"));
        assert!(why.contains("may have used the OTP"));
        let valid = Answer::Echo(VERIFY_ECHO_RESPONSE.into());
        assert_eq!(after_failures(valid.clone(), Some("x")), valid);
    }

    #[test]
    fn loopback_is_one_of_this_hosts_addresses() {
        let addrs = InterfaceAddrs.local_addrs().unwrap();
        assert!(addrs.contains(&"127.0.0.1".parse().unwrap()), "{addrs:?}");
        assert!(
            !addrs.contains(&"10.255.255.1".parse().unwrap()),
            "{addrs:?}"
        );
    }

    fn cfg(servers: &[&str], timeout: Duration) -> Config {
        let mut c =
            Config::parse("servers = [\"https://x\"]", crate::config::Format::Toml).unwrap();
        c.servers = servers.iter().map(|s| s.to_string()).collect();
        c.timeout = timeout;
        // Dev mode's "any certificate": no CA file needed.
        c.tls_skip_verify = true;
        c
    }

    #[test]
    fn closed_and_hanging_servers_are_skipped_within_the_budget() {
        // A port nobody listens on, and one that accepts and never answers.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_addr = format!("https://{}", closed.local_addr().unwrap());
        drop(closed);
        let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let hanging_addr = format!("https://{}", hanging.local_addr().unwrap());
        let c = cfg(&[&closed_addr, &hanging_addr], Duration::from_millis(800));
        let client = Client::from_config(&c).unwrap();
        let start = Instant::now();
        let r = client.verify("00000000-0000-0000-0000-000000000000", c.timeout);
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
        let Verified::Unreachable(f) = r else {
            panic!("{r:?}")
        };
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].server, closed_addr);
        assert!(f[0].error.to_lowercase().contains("refused"), "{}", f[0]);
        assert!(f[1].error.contains("no answer within"), "{}", f[1]);
        drop(hanging);
    }

    #[test]
    fn a_bad_ca_file_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a certificate").unwrap();
        let mut c = cfg(&["https://x"], Duration::from_secs(1));
        c.tls_skip_verify = false;
        c.ca_cert = Some(p);
        assert!(Transport::load(&c).is_err());
        c.ca_cert = Some(dir.path().join("missing.pem"));
        assert!(Transport::load(&c).is_err());
        c.ca_cert = None;
        c.tls_skip_verify = true;
        c.host_token_file = Some(dir.path().join("missing.token"));
        assert!(Transport::load(&c).is_err());
    }
}
