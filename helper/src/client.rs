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

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatepass_api::ssh::{Verified as VerifyData, VerifyRequest};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::config::{Config, ConfigError};

/// What vault-ssh-helper's `-verify-only` sends instead of an OTP, and
/// what the server answers to it; what an OTP was issued for.
pub use gatepass_api::ssh::{OtpInfo, VERIFY_ECHO_REQUEST, VERIFY_ECHO_RESPONSE};

/// Answers larger than this are not an answer to `verify`.
const MAX_BODY: usize = 64 * 1024;

/// A server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The OTP was valid (and is now used up).
    Valid(OtpInfo),
    /// The answer to [`VERIFY_ECHO_REQUEST`].
    Echo(String),
    /// The server refused (unknown, used or expired OTP; rate limited; …).
    Refused(String),
}

/// One server that gave no answer, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub server: String,
    pub error: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.server, self.error)
    }
}

/// The result of asking the configured servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// A server answered.
    Answer { server: String, answer: Answer },
    /// No server answered in time; each tried one and why.
    Unreachable(Vec<Failure>),
}

/// An HTTPS client for the configured servers.
pub struct Client {
    http: reqwest::Client,
    servers: Vec<String>,
    mount: String,
    namespace: Option<String>,
    token: Option<Zeroizing<String>>,
}

impl Client {
    /// Builds the client: TLS with only the configured CA(s) trusted (or, in
    /// dev mode, what the configuration allows), no proxies, no redirects.
    /// Call [`Config::check_transport`] first.
    pub fn new(cfg: &Config) -> Result<Client, ConfigError> {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("gatepass-helper/", env!("CARGO_PKG_VERSION")));
        match tls_config(cfg)? {
            Some(tls) => b = b.use_preconfigured_tls(tls),
            None => {
                // Dev mode without a CA: the system's trusted CAs.
                let _ = rustls::crypto::ring::default_provider().install_default();
                b = b.use_rustls_tls();
            }
        }
        let http = b
            .build()
            .map_err(|e| ConfigError(format!("HTTPS client: {}", chain(&e))))?;
        let token = match &cfg.host_token_file {
            Some(p) => Some(read_token(p)?),
            None => None,
        };
        Ok(Client {
            http,
            servers: cfg.servers.clone(),
            mount: cfg.mount.clone(),
            namespace: cfg.namespace.clone(),
            token,
        })
    }

    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// Asks the servers in turn about `otp` until one answers; each gets an
    /// even share of what is left of `budget`, so a hanging first server
    /// still leaves time for the next.
    pub async fn verify(&self, otp: &str, budget: Duration) -> Verified {
        let deadline = Instant::now() + budget;
        let mut failures = Vec::new();
        // The first failure after which the OTP may have been taken.
        let mut maybe_used: Option<String> = None;
        for (i, server) in self.servers.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                failures.push(Failure {
                    server: server.clone(),
                    error: "not tried: no time left".into(),
                });
                continue;
            }
            let share = left / u32::try_from(self.servers.len() - i).unwrap_or(1);
            let miss = match tokio::time::timeout(share, self.ask(server, otp)).await {
                Ok(Ok(answer)) => {
                    return Verified::Answer {
                        server: server.clone(),
                        answer: after_failures(answer, maybe_used.as_deref()),
                    };
                }
                Ok(Err(miss)) => miss,
                // Whether the request got out is not known.
                Err(_) => Miss {
                    error: format!("no answer within {}", secs(share)),
                    untouched: false,
                },
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
    pub async fn echo_all(&self, budget: Duration) -> Vec<(String, Result<(), String>)> {
        let mut out = Vec::new();
        for server in &self.servers {
            let r = match tokio::time::timeout(budget, self.ask(server, VERIFY_ECHO_REQUEST)).await
            {
                Ok(Ok(Answer::Echo(m))) if m == VERIFY_ECHO_RESPONSE => Ok(()),
                Ok(Ok(Answer::Echo(m))) => Err(format!("invalid echo response {m:?}")),
                Ok(Ok(Answer::Valid(_))) => Err("answered the echo request as an OTP".into()),
                Ok(Ok(Answer::Refused(why))) => Err(format!("refused: {why}")),
                Ok(Err(miss)) => Err(miss.error),
                Err(_) => Err(format!("no answer within {}", secs(budget))),
            };
            out.push((server.clone(), r));
        }
        out
    }

    /// One request to one server. `Err` means "no answer: try the next".
    /// The callers bound it in time.
    async fn ask(&self, server: &str, otp: &str) -> Result<Answer, Miss> {
        let url = format!("{server}/v1/{}/verify", self.mount);
        let mut rb = self.http.post(url).json(&VerifyRequest {
            otp: otp.to_string(),
        });
        if let Some(ns) = &self.namespace {
            rb = rb.header("X-Vault-Namespace", ns.as_str());
        }
        if let Some(t) = &self.token {
            rb = rb.header("X-Vault-Token", t.as_str());
        }
        // A connection or TLS failure means the request never left.
        let mut resp = rb.send().await.map_err(|e| Miss {
            error: chain(&e),
            untouched: e.is_connect(),
        })?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        let lost = |error: String| Miss {
            error,
            untouched: status == 503,
        };
        while let Some(chunk) = resp.chunk().await.map_err(|e| lost(chain(&e)))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(lost(format!("answer larger than {MAX_BODY} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        match status {
            200 => Ok(parse_answer(json)),
            400..=499 => Ok(Answer::Refused(errors_text(status, json.as_ref()))),
            _ => Err(lost(format!("HTTP {}", errors_text(status, json.as_ref())))),
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

fn read_token(path: &Path) -> Result<Zeroizing<String>, ConfigError> {
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
    Ok(t)
}

/// The rustls configuration, or `None` for "the system's CAs" (dev mode
/// without ca_cert/ca_path).
fn tls_config(cfg: &Config) -> Result<Option<rustls::ClientConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = if cfg.tls_skip_verify {
        Arc::new(AcceptAnyCertificate(provider.clone()))
    } else {
        let roots = load_roots(cfg)?;
        if roots.is_empty() {
            if cfg.tls_server_name.is_some() {
                return Err(ConfigError(
                    "tls_server_name needs ca_cert or ca_path".into(),
                ));
            }
            return Ok(None);
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| ConfigError(format!("TLS verifier: {e}")))?;
        match &cfg.tls_server_name {
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
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tls))
}

/// The CAs from `ca_cert` (a PEM file) and `ca_path` (a folder of PEM
/// files), as vault-ssh-helper reads them.
fn load_roots(cfg: &Config) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    if let Some(file) = &cfg.ca_cert {
        let n = add_pem(&mut roots, file)?;
        if n == 0 {
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
            n += add_pem(&mut roots, p)?;
        }
        if n == 0 {
            return Err(ConfigError(format!(
                "ca_path {}: no certificate found",
                dir.display()
            )));
        }
    }
    Ok(roots)
}

fn add_pem(roots: &mut RootCertStore, path: &Path) -> Result<usize, ConfigError> {
    let pem = std::fs::read(path).map_err(|e| {
        ConfigError(format!(
            "cannot read CA certificate {}: {e}",
            path.display()
        ))
    })?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| ConfigError(format!("{}: not a PEM certificate: {e}", path.display())))?;
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    Ok(added)
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

/// Asks the servers from a blocking caller (the PAM module, the helper
/// binary): a private single-threaded runtime, bounded by the configured
/// timeout, shut down without waiting for anything left running.
pub struct BlockingVerifier {
    pub client: Client,
    pub timeout: Duration,
}

impl BlockingVerifier {
    fn run<T>(&self, fut: impl std::future::Future<Output = T>) -> Result<T, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
        let out = rt.block_on(async { tokio::time::timeout(self.timeout, fut).await });
        rt.shutdown_background();
        out.map_err(|_| format!("no answer within {}", secs(self.timeout)))
    }

    /// `-verify-only`.
    pub fn echo_all(&self) -> Vec<(String, Result<(), String>)> {
        let budget = self.timeout;
        let servers = self.client.servers().to_vec();
        // Each server gets the whole timeout here, so the bound is n × timeout.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        match rt {
            Ok(rt) => {
                let out = rt.block_on(self.client.echo_all(budget));
                rt.shutdown_background();
                out
            }
            Err(e) => servers
                .into_iter()
                .map(|s| (s, Err(format!("cannot start the I/O runtime: {e}"))))
                .collect(),
        }
    }
}

impl crate::verify::OtpServer for BlockingVerifier {
    fn verify(&self, otp: &str) -> Verified {
        match self.run(self.client.verify(otp, self.timeout)) {
            Ok(v) => v,
            Err(error) => Verified::Unreachable(vec![Failure {
                server: self.client.servers().join(", "),
                error,
            }]),
        }
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
        let v = BlockingVerifier {
            client: Client::new(&c).unwrap(),
            timeout: c.timeout,
        };
        let start = Instant::now();
        let r = crate::verify::OtpServer::verify(&v, "00000000-0000-0000-0000-000000000000");
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
        c.ca_cert = Some(p);
        assert!(Client::new(&c).is_err());
        c.ca_cert = Some(dir.path().join("missing.pem"));
        assert!(Client::new(&c).is_err());
        c.ca_cert = None;
        c.host_token_file = Some(dir.path().join("missing.token"));
        assert!(Client::new(&c).is_err());
    }
}
