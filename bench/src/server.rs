//! The real `gatepass-server dev`, started as a child process on a free
//! loopback port with its data in a temporary folder, and HTTPS clients that
//! trust only its dev CA.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// How long the server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to stop after SIGTERM (it drains for up to 10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct DevServer {
    child: Child,
    running: bool,
    /// `https://127.0.0.1:PORT`.
    pub addr: String,
    pub token: String,
    /// Its data folder (`gatepass.db` in it).
    pub data_dir: PathBuf,
    ca_pem: Vec<u8>,
    log: PathBuf,
    /// Removed when the server is dropped, after the process has ended.
    _dir: tempfile::TempDir,
}

/// Strips `export NAME='value'` to `value` when the name matches.
fn export_value(line: &str, name: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("export ")?.strip_prefix(name)?;
    let v = rest.strip_prefix('=')?;
    Some(v.trim_matches('\'').to_string())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl DevServer {
    /// Starts `bin dev` and waits until it has printed where it listens.
    pub fn start(bin: &Path) -> anyhow::Result<DevServer> {
        DevServer::start_with(bin, None, &[])
    }

    /// [`DevServer::start`] with more arguments for `dev`, and with its data
    /// in `data` (kept by the caller, and with the root token `token`, so
    /// that a later server can start on it) instead of a temporary folder.
    pub fn start_with(
        bin: &Path,
        data: Option<(&Path, &str)>,
        extra: &[&str],
    ) -> anyhow::Result<DevServer> {
        if !bin.is_file() {
            bail!(
                "{} not found: build it with `cargo build --release -p gatepass-server`, or pass --server-bin",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("gatepass-bench-")
            .tempdir()?;
        let log = dir.path().join("server.log");
        let (data_dir, token) = match data {
            Some((d, t)) => (d.to_path_buf(), t.to_string()),
            None => (
                dir.path().join("data"),
                format!("bench-{:032x}", rand::random::<u128>()),
            ),
        };
        let mut child = Command::new(bin)
            .arg("dev")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(["--root-token", &token])
            .args(extra)
            .env_remove("GATEPASS_DEV_ROOT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take();
        let mut server = DevServer {
            child,
            running: true,
            addr: String::new(),
            token,
            data_dir: data_dir.clone(),
            ca_pem: Vec::new(),
            log,
            _dir: dir,
        };
        let Some(stdout) = stdout else {
            bail!("no stdout from the server");
        };
        // A thread reads stdout to its end, so the server never blocks on it.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            // Nobody listens any more; keep draining.
                            continue;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut ca_path = None;
        while server.addr.is_empty() || ca_path.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = export_value(&line, "GATEPASS_ADDR") {
                        server.addr = v;
                    } else if let Some(v) = export_value(&line, "GATEPASS_CACERT") {
                        ca_path = Some(PathBuf::from(v));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "the server printed no address within {START_TIMEOUT:?}; its log:\n{}",
                        server.log_tail()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!(
                        "the server exited while starting; its log:\n{}",
                        server.log_tail()
                    )
                }
            }
        }
        // Only loopback: the benchmark sends nothing anywhere else.
        if !server.addr.starts_with("https://127.0.0.1:") {
            bail!("the server listens on {}, not on 127.0.0.1", server.addr);
        }
        let ca_path = ca_path.unwrap_or_default();
        server.ca_pem =
            std::fs::read(&ca_path).with_context(|| format!("reading {}", ca_path.display()))?;
        Ok(server)
    }

    /// Starts the server, hands it to `f` with a multi-thread runtime, and
    /// stops it again, also when `f` fails (whose error then carries the
    /// server's log).
    pub fn around<R>(
        bin: &Path,
        f: impl FnOnce(&DevServer, &tokio::runtime::Runtime) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let server = DevServer::start(bin)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        DevServer::around_all(vec![server], rt, |servers, rt| f(&servers[0], rt))
    }

    /// [`DevServer::around`] for servers already started, on the runtime
    /// given (a suite whose client must stay on one thread gives a
    /// current-thread one).
    pub fn around_all<R>(
        mut servers: Vec<DevServer>,
        rt: tokio::runtime::Runtime,
        f: impl FnOnce(&[DevServer], &tokio::runtime::Runtime) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let outcome = f(&servers, &rt);
        drop(rt);
        let stopped: Vec<_> = servers.iter_mut().map(|s| s.stop()).collect();
        let out = outcome.map_err(|e| {
            let logs: Vec<String> = servers.iter().map(|s| s.log_tail()).collect();
            anyhow::anyhow!("{e:#}\nserver log:\n{}", logs.join("\n---\n"))
        })?;
        for status in stopped {
            let status = status?;
            if !status.success() {
                eprintln!("note: a server exited with {status} after SIGTERM");
            }
        }
        Ok(out)
    }

    /// `count` `gatepass-server serve` processes sharing the database at
    /// `storage` (PostgreSQL) and one seal key, as servers behind a load
    /// balancer run: initialized through the first, each on a free
    /// loopback port, answering when this returns.
    pub fn serve_sharing(
        bin: &Path,
        storage: &str,
        count: usize,
    ) -> anyhow::Result<Vec<DevServer>> {
        let shared = tempfile::Builder::new()
            .prefix("gatepass-bench-shared-")
            .tempdir()?;
        let tls = gatepass_server::tls::dev_certificates(&shared.path().join("tls"))?;
        let ca_pem = std::fs::read(&tls.ca)?;
        // The first server's files go in the shared folder, which it keeps
        // until it goes (the seal key and certificates live there).
        let mut shared = Some(shared);
        let mut configs = Vec::new();
        for i in 0..count {
            let dir = match shared.take() {
                Some(d) => d,
                None => tempfile::Builder::new()
                    .prefix("gatepass-bench-")
                    .tempdir()?,
            };
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let config = dir.path().join("server.toml");
            std::fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:{port}\"\nstorage = \"{storage}\"\nseal_key_file = \"{seal}\"\naudit_log = \"{audit}\"\n[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n",
                    seal = tls.ca.with_file_name("seal.key").display(),
                    audit = dir.path().join("audit.log").display(),
                    cert = tls.cert.display(),
                    key = tls.key.display(),
                ),
            )?;
            configs.push((i, dir, port, config));
        }
        let Some((_, _, _, first)) = configs.first() else {
            bail!("no servers asked for");
        };
        let init = Command::new(bin)
            .args(["init", "--config"])
            .arg(first)
            .output()
            .with_context(|| format!("running {} init", bin.display()))?;
        if !init.status.success() {
            bail!(
                "gatepass-server init failed: {}",
                String::from_utf8_lossy(&init.stderr)
            );
        }
        let token = String::from_utf8_lossy(&init.stdout).trim().to_string();
        let mut servers = Vec::new();
        for (_, dir, port, config) in configs {
            let log = dir.path().join("server.log");
            let child = Command::new(bin)
                .args(["serve", "--config"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .with_context(|| format!("starting {} serve", bin.display()))?;
            servers.push(DevServer {
                child,
                running: true,
                addr: format!("https://127.0.0.1:{port}"),
                token: token.clone(),
                data_dir: dir.path().to_path_buf(),
                ca_pem: ca_pem.clone(),
                log,
                _dir: dir,
            });
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        for s in &servers {
            let c = s.client()?;
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                let up = rt.block_on(async {
                    c.get(s.url("sys/health"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                });
                if up {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} did not answer within {START_TIMEOUT:?}; its log:\n{}",
                        s.addr,
                        s.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(servers)
    }

    /// The server's whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The dev server's TLS CA, PEM.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// A client with its own connection pool that trusts only the dev CA
    /// and never uses a proxy (HTTP/2, which ALPN picks).
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        self.client_for(false)
    }

    /// [`DevServer::client`], speaking HTTP/1.1 when `http1` (keep-alive, as
    /// most Vault clients and wrk do).
    pub fn client_for(&self, http1: bool) -> anyhow::Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(&self.ca_pem)?;
        let builder = reqwest::Client::builder();
        let builder = if http1 { builder.http1_only() } else { builder };
        Ok(builder
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .no_proxy()
            .pool_max_idle_per_host(1)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()?)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/v1/{}", self.addr, path.trim_start_matches('/'))
    }

    /// An ed25519 CA on the `ssh` mount and a role `role` that signs user
    /// certificates for anyone (default user `bench`, one hour).
    pub async fn ca_and_user_role(
        &self,
        client: &reqwest::Client,
        role: &str,
    ) -> anyhow::Result<()> {
        self.write(
            client,
            "ssh/config/ca",
            &json!({ "key_type": "ssh-ed25519" }),
        )
        .await?;
        self.write(
            client,
            &format!("ssh/roles/{role}"),
            &json!({"key_type": "ca", "allow_user_certificates": true,
                    "allowed_users": "*", "default_user": "bench", "ttl": "1h"}),
        )
        .await?;
        Ok(())
    }

    /// A host join token (`num_uses` 0: unlimited) valid for an hour.
    pub async fn join_token(
        &self,
        client: &reqwest::Client,
        num_uses: u32,
    ) -> anyhow::Result<String> {
        let jt = self
            .write(
                client,
                "hosts/join-tokens",
                &json!({"ttl": "1h", "num_uses": num_uses}),
            )
            .await?;
        Ok(jt
            .pointer("/data/join_token")
            .and_then(Value::as_str)
            .context("join-tokens returned no join_token")?
            .to_string())
    }

    /// POSTs JSON with the root token; the answer's JSON (Null for 204).
    pub async fn write(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Value> {
        let r = client
            .post(self.url(path))
            .header("X-Vault-Token", &self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = r.status();
        let text = r.text().await?;
        if !status.is_success() {
            bail!("POST {path}: {status}: {text}");
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// SIGTERM, then waits (SIGKILL after [`STOP_TIMEOUT`]).
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if let Some(status) = self.child.try_wait()? {
            self.running = false;
            return Ok(status);
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id())?);
        kill(pid, Signal::SIGTERM)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                self.running = false;
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        let status = self.child.wait()?;
        self.running = false;
        bail!("the server did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed ({status})")
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        if self.running {
            if let Err(e) = self.stop() {
                eprintln!("stopping the server: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_lines() {
        assert_eq!(
            export_value(
                "export GATEPASS_ADDR='https://127.0.0.1:1234'",
                "GATEPASS_ADDR"
            )
            .as_deref(),
            Some("https://127.0.0.1:1234")
        );
        assert_eq!(
            export_value("export GATEPASS_ADDRX='x'", "GATEPASS_ADDR"),
            None
        );
        assert_eq!(
            export_value("export GATEPASS_TOKEN='t'", "GATEPASS_ADDR"),
            None
        );
    }
}
