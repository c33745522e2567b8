//! A lean HTTP/1.1 client over TLS for closed-loop load: one keep-alive
//! connection, one request at a time, its bytes made once.
//!
//! Written here rather than taken from reqwest because the load generator
//! shares the machine's cores with the servers it measures: reqwest's
//! connection pool, URL parsing, header maps and the task that drives each
//! connection cost about 8 µs more per request than `wrk` (28 against 20 on
//! the reference machine), and a server answering three times as many
//! requests pays that three times over. Parsing is `httparse`'s; what is by
//! hand is only the framing of the body (`Content-Length` or chunked).

use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;

/// Where to connect and whom to trust: `https://HOST:PORT` and the PEM of
/// the only CA accepted.
#[derive(Clone)]
pub struct Target {
    host_port: String,
    server_name: rustls::pki_types::ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
}

impl Target {
    pub fn new(addr: &str, ca_pem: &[u8]) -> anyhow::Result<Target> {
        let host_port = addr
            .strip_prefix("https://")
            .with_context(|| format!("{addr}: an https:// address"))?
            .trim_end_matches('/')
            .to_string();
        let host = host_port
            .rsplit_once(':')
            .map_or(host_port.as_str(), |(h, _)| h);
        let server_name = rustls::pki_types::ServerName::try_from(host.to_string())
            .with_context(|| format!("{host}: not a server name"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
            roots.add(c?)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Target {
            host_port,
            server_name,
            tls: Arc::new(tls),
        })
    }

    /// A request's bytes: `path` from the root (`/v1/...`), the headers as
    /// (name, value), and the body (sent as JSON when not empty).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Vec<u8> {
        let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host_port);
        for (name, value) in headers {
            r += &format!("{name}: {value}\r\n");
        }
        if !body.is_empty() || method != "GET" {
            r += &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        r += "\r\n";
        let mut bytes = r.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    pub async fn connect(&self) -> anyhow::Result<Conn> {
        Ok(Conn::over(self.tls_stream(&self.tls).await?))
    }

    /// `HOST:PORT`.
    pub fn host_port(&self) -> &str {
        &self.host_port
    }

    /// A TLS connection that offers HTTP/2 (ALPN `h2`) and nothing else.
    pub async fn connect_h2(&self) -> anyhow::Result<TlsStream<TcpStream>> {
        let mut tls = (*self.tls).clone();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let io = self.tls_stream(&Arc::new(tls)).await?;
        if io.get_ref().1.alpn_protocol() != Some(b"h2") {
            bail!("{}: the server did not agree to HTTP/2", self.host_port);
        }
        Ok(io)
    }

    async fn tls_stream(
        &self,
        tls: &Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(&self.host_port).await?;
        tcp.set_nodelay(true)?;
        Ok(tokio_rustls::TlsConnector::from(tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await?)
    }
}

/// One keep-alive connection (over TLS but in tests).
pub struct Conn<IO = TlsStream<TcpStream>> {
    io: IO,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
}

/// An answer: its status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as text when the status is a success, as
    /// [`crate::load::answer`] gives it.
    pub fn text(self) -> Result<String, String> {
        let text = String::from_utf8(self.body)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        if !(200..300).contains(&self.status) {
            return Err(format!("{}: {}", self.status, text.trim()));
        }
        Ok(text)
    }
}

/// The least free room a read is given.
const READ_ROOM: usize = 16 * 1024;

enum Framing {
    Length(usize),
    Chunked,
    None,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    pub fn over(io: IO) -> Conn<IO> {
        Conn {
            io,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends a request made by [`Target::request`] and reads its whole
    /// answer (as a client must to reuse the connection).
    pub async fn send(&mut self, request: &[u8]) -> anyhow::Result<Answer> {
        self.io.write_all(request).await?;
        self.io.flush().await?;
        let (status, head_len, framing) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = resp.parse(&self.buf)? {
                let status = resp.code.unwrap_or(0);
                let mut framing = Framing::None;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        framing = Framing::Length(std::str::from_utf8(h.value)?.trim().parse()?);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                        && h.value.eq_ignore_ascii_case(b"chunked")
                    {
                        framing = Framing::Chunked;
                    }
                }
                break (status, n, framing);
            }
            self.fill().await?;
        };
        self.buf.drain(..head_len);
        let body = match framing {
            Framing::Length(n) => self.take(n).await?,
            Framing::Chunked => self.chunked().await?,
            Framing::None if status == 204 || status == 304 => Vec::new(),
            Framing::None => bail!("an answer with neither a length nor chunks"),
        };
        Ok(Answer { status, body })
    }

    /// Reads what has come into the buffer's free room: a 16 KiB buffer
    /// zeroed and copied for every read was 4-6% of the load generator's
    /// samples under the sign load.
    async fn fill(&mut self) -> anyhow::Result<()> {
        self.buf.reserve(READ_ROOM);
        if self.io.read_buf(&mut self.buf).await? == 0 {
            bail!("the server closed the connection");
        }
        Ok(())
    }

    async fn take(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// A chunked body: `<hex size>[;ext]\r\n<data>\r\n` until size 0, then
    /// trailers up to an empty line.
    async fn chunked(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size =
                usize::from_str_radix(size, 16).with_context(|| format!("chunk size {size:?}"))?;
            if size == 0 {
                while !self.line().await?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.take(size).await?);
            if !self.line().await?.is_empty() {
                bail!("a chunk longer than its size");
            }
        }
    }

    async fn line(&mut self) -> anyhow::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.fill().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Conn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers each request read from `server` with the next of `answers`,
    /// written in pieces as a slow server would.
    async fn serve(mut server: tokio::io::DuplexStream, answers: Vec<&'static str>) {
        let mut buf = [0u8; 4096];
        for a in answers {
            let _ = server.read(&mut buf).await;
            for piece in a.as_bytes().chunks(7) {
                server.write_all(piece).await.unwrap();
                server.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        }
    }

    #[tokio::test]
    async fn answers_by_length_and_by_chunks_are_read_whole_on_one_connection() {
        let (client, server) = tokio::io::duplex(64);
        let answers = vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{\"a\":\"bc\"}",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\n{\"a\"\r\n7\r\n:\"bcde\"\r\n1\r\n}\r\n0\r\nTrailer: t\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 16\r\n\r\n{\"errors\":[\"x\"]}",
        ];
        tokio::spawn(serve(server, answers));
        let mut c = Conn::over(client);
        let a = c.send(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(a.text().unwrap(), "{\"a\":\"bc\"}");
        let a = c.send(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(a.text().unwrap(), "{\"a\":\"bcde\"}");
        let a = c.send(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!((a.status, a.body.len()), (204, 0));
        let a = c.send(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(a.text().unwrap_err(), "403: {\"errors\":[\"x\"]}");
        assert!(
            c.send(b"GET / HTTP/1.1\r\n\r\n").await.is_err(),
            "the server hung up"
        );
    }

    #[test]
    fn a_request_is_made_once_with_its_length() {
        let t = super::Target::new("https://127.0.0.1:8200", b"").unwrap();
        let r = t.request("POST", "/v1/ssh/verify", &[("X-Vault-Token", "t")], b"{}");
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "POST /v1/ssh/verify HTTP/1.1\r\nHost: 127.0.0.1:8200\r\nX-Vault-Token: t\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
        let r = t.request("GET", "/v1/sys/health", &[], b"");
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "GET /v1/sys/health HTTP/1.1\r\nHost: 127.0.0.1:8200\r\n\r\n"
        );
    }
}
