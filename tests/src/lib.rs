//! The harness the end-to-end tests share: it finds the built binaries,
//! starts real servers (dev mode or `serve` with a config), a private
//! PostgreSQL cluster, and cleans up after itself.

pub mod browser;
pub mod inproc;
pub mod oidc;
pub mod openbao;
pub mod pg;
pub mod ssh;
pub mod sshd;
pub mod targets;
pub mod tmpfs;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Folder holding the workspace's binaries (target/debug), found from the
/// test executable's own path (target/debug/deps/…).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("GATEPASS_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps folder");
    deps.parent().expect("target profile folder").to_path_buf()
}

/// Environment that would change what the `gatepass` CLI or ssh does;
/// CLI tests remove it so they do not depend on the developer's shell (or
/// their agent).
pub const CLI_AMBIENT_ENV: &[&str] = &[
    "GATEPASS_ADDR",
    "GATEPASS_TOKEN",
    "GATEPASS_CACERT",
    "GATEPASS_FORMAT",
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "VAULT_CACERT",
    "VAULT_FORMAT",
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "SSH_ASKPASS",
    "SSH_ASKPASS_REQUIRE",
    "DISPLAY",
    "XDG_RUNTIME_DIR",
];

/// Path of a workspace binary; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`, as tests/run does)",
        p.display()
    );
    p
}

/// A running `gatepass-server dev`, stopped (SIGTERM) on drop.
pub struct DevServer {
    pub child: Child,
    pub addr: String,
    pub token: String,
    pub cacert: PathBuf,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl DevServer {
    /// A dev server on a free loopback port in a fresh data folder.
    pub fn start() -> DevServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut s = Self::start_in(&dir, "gatepass-test-root-token");
        s._tmp = Some(tmp);
        s
    }

    /// A dev server on a given data folder (kept), with a fixed root token.
    pub fn start_in(data_dir: &Path, root_token: &str) -> DevServer {
        Self::launch(data_dir, root_token, &[], &[])
    }

    /// A dev server in a fresh data folder with more `dev` flags, run
    /// through `wrapper` (a command and its arguments, e.g. `prlimit …
    /// --`) when that is not empty.
    pub fn start_with(extra_args: &[&str], wrapper: &[&str]) -> DevServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut s = Self::launch(&dir, "gatepass-test-root-token", extra_args, wrapper);
        s._tmp = Some(tmp);
        s
    }

    fn launch(
        data_dir: &Path,
        root_token: &str,
        extra_args: &[&str],
        wrapper: &[&str],
    ) -> DevServer {
        Self::launch_on(data_dir, root_token, extra_args, wrapper, "127.0.0.1:0")
    }

    fn launch_on(
        data_dir: &Path,
        root_token: &str,
        extra_args: &[&str],
        wrapper: &[&str],
        listen: &str,
    ) -> DevServer {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin("gatepass-server"));
                c
            }
            None => Command::new(bin("gatepass-server")),
        };
        let mut child = cmd
            .arg("dev")
            .args(extra_args)
            .args(["--listen", listen, "--root-token", root_token, "--data-dir"])
            .arg(data_dir)
            .env("GATEPASS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file(data_dir)))
            .spawn()
            .expect("start gatepass-server dev");
        let stdout = child.stdout.take().expect("stdout");
        let mut vars = std::collections::HashMap::new();
        for line in BufReader::new(stdout).lines().take(3) {
            let line = line.expect("read server stdout");
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                vars.insert(k.to_string(), v.trim_matches('\'').to_string());
            }
        }
        let addr = vars.get("GATEPASS_ADDR").cloned().unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "dev server printed no address; see {}/server.log",
                data_dir.display()
            )
        });
        DevServer {
            child,
            addr,
            token: vars.get("GATEPASS_TOKEN").cloned().unwrap_or_default(),
            cacert: PathBuf::from(vars.get("GATEPASS_CACERT").cloned().unwrap_or_default()),
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
        }
    }

    /// API client settings for this server with the given token.
    pub fn settings(&self, token: Option<&str>) -> gatepass_api::Settings {
        gatepass_api::Settings {
            addr: self.addr.clone(),
            token: token.map(String::from),
            ca_cert: Some(self.cacert.clone()),
            timeout: Some(Duration::from_secs(30)),
        }
    }

    pub fn client(&self) -> gatepass_api::Client {
        gatepass_api::Client::new(&self.settings(Some(&self.token))).expect("client")
    }

    /// Environment for running the `gatepass` CLI against this server.
    pub fn cli_env(&self) -> Vec<(String, String)> {
        vec![
            ("GATEPASS_ADDR".into(), self.addr.clone()),
            ("GATEPASS_TOKEN".into(), self.token.clone()),
            ("GATEPASS_CACERT".into(), self.cacert.display().to_string()),
        ]
    }

    /// Stops the server and starts it again on the same address and data
    /// folder, as after a restart of the service.
    pub fn restart(&mut self) {
        stop_child(&mut self.child);
        let tmp = self._tmp.take();
        let listen = self
            .addr
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_string();
        let token = self.token.clone();
        let mut again = Self::launch_on(&self.data_dir, &token, &[], &[], &listen);
        again._tmp = tmp;
        *self = again;
    }

    /// Kills the server (SIGKILL: nothing of its own stop runs) and starts
    /// it again on the same address and data folder, as after a crash.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.restart();
    }

    /// Stops the server and waits for it to exit.
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// The server's stderr goes to DATA_DIR/server.log (appended across restarts).
fn log_file(dir: &Path) -> std::fs::File {
    std::fs::create_dir_all(dir).expect("create data dir");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("open server log")
}

/// SIGTERM, then SIGKILL if it has not exited within 10 s.
pub fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    unsafe_free_sigterm(child.id());
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn unsafe_free_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// Runs a command with extra environment, returning (status, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `gatepass-server serve` process, stopped on drop; `settings` carry
/// the root token.
pub struct ServeProcess {
    pub child: Child,
    pub settings: gatepass_api::Settings,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

impl ServeProcess {
    /// Waits (up to 10 s) until it answers `sys/health`.
    pub async fn wait_up(&self) {
        let c = gatepass_api::Client::new(&self.settings).expect("client");
        for _ in 0..100 {
            if c.read("sys/health").await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("server {} did not start", c.addr());
    }
}

/// A loopback port free now, for a process started later to listen on.
/// Taken below the kernel's range of ephemeral ports: `bind(0)` hands out
/// ports from that very range, where any client connection made meanwhile
/// (the suite makes thousands) may take it as its own local port before
/// the process binds it, and the process then fails with "Address already
/// in use".
pub fn free_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const FROM: u16 = 10_000;
    if ephemeral_low > FROM + 1000 {
        for _ in 0..100 {
            let r = *uuid::Uuid::new_v4().as_bytes();
            let port = FROM + u16::from_le_bytes([r[0], r[1]]) % (ephemeral_low - FROM);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

/// Two `gatepass-server serve` processes sharing one new PostgreSQL
/// database (named after `db`) and one seal key, with their files in `dir`
/// (configs, logs `a.log` and `b.log`); both answering when this returns.
pub async fn serve_pair_on_postgres(dir: &Path, db: &str) -> (ServeProcess, ServeProcess) {
    let audit = (dir.join("a-audit.log"), dir.join("b-audit.log"));
    serve_pair_on_postgres_with(dir, db, &audit.0, &audit.1).await
}

/// [`serve_pair_on_postgres`] with each server's audit file where given.
pub async fn serve_pair_on_postgres_with(
    dir: &Path,
    db: &str,
    audit_a: &Path,
    audit_b: &Path,
) -> (ServeProcess, ServeProcess) {
    let tls = gatepass_server::tls::dev_certificates(&dir.join("tls")).expect("certificates");
    let url = pg::shared().new_database(db);
    let config = |name: &str, port: u16, audit: &Path| {
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "listen = \"127.0.0.1:{port}\"\nstorage = \"{url}\"\nseal_key_file = \"{seal}\"\naudit_log = \"{audit}\"\n[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n",
                seal = dir.join("seal.key").display(),
                audit = audit.display(),
                cert = tls.cert.display(),
                key = tls.key.display(),
            ),
        )
        .expect("write config");
        p
    };
    let (pa, pb) = (free_port(), free_port());
    let (ca, cb) = (config("a", pa, audit_a), config("b", pb, audit_b));
    let (code, root, err) = run(Command::new(bin("gatepass-server"))
        .args(["init", "--config"])
        .arg(&ca));
    assert_eq!(code, 0, "init failed: {err}");
    let start = |cfg: &Path, port: u16, name: &str| ServeProcess {
        child: Command::new(bin("gatepass-server"))
            .args(["serve", "--config"])
            .arg(cfg)
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file"))
            .spawn()
            .expect("start gatepass-server serve"),
        settings: gatepass_api::Settings {
            addr: format!("https://127.0.0.1:{port}"),
            token: Some(root.trim().to_string()),
            ca_cert: Some(tls.ca.clone()),
            timeout: Some(Duration::from_secs(20)),
        },
    };
    let (a, b) = (start(&ca, pa, "a"), start(&cb, pb, "b"));
    a.wait_up().await;
    b.wait_up().await;
    (a, b)
}

/// A `gatepass-server serve` configuration, `DIR/NAME.toml`, on `storage`
/// with a free loopback port, the seal key `DIR/seal.key`, certificates in
/// `DIR/tls` and `extra` top-level lines; with settings for a client of it
/// (no token yet).
pub fn serve_config(
    dir: &Path,
    name: &str,
    storage: &str,
    extra: &str,
) -> (PathBuf, gatepass_api::Settings) {
    let tls = gatepass_server::tls::dev_certificates(&dir.join("tls")).expect("certificates");
    let port = free_port();
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstorage = \"{storage}\"\nseal_key_file = \"{seal}\"\naudit_log = \"{audit}\"\n{extra}\n[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n",
            seal = dir.join("seal.key").display(),
            audit = dir.join(format!("{name}-audit.log")).display(),
            cert = tls.cert.display(),
            key = tls.key.display(),
        ),
    )
    .expect("write config");
    let settings = gatepass_api::Settings {
        addr: format!("https://127.0.0.1:{port}"),
        token: None,
        ca_cert: Some(tls.ca.clone()),
        timeout: Some(Duration::from_secs(20)),
    };
    (p, settings)
}

/// `gatepass-server init` on a configuration; the root token.
pub fn init_server(config: &Path) -> String {
    let (code, root, err) = run(Command::new(bin("gatepass-server"))
        .args(["init", "--config"])
        .arg(config));
    assert_eq!(code, 0, "init failed: {err}");
    root.trim().to_string()
}

/// Starts `gatepass-server serve --config CONFIG`, its log in `log`
/// (without waiting for it to answer).
pub fn start_serve(config: &Path, log: &Path, settings: gatepass_api::Settings) -> ServeProcess {
    ServeProcess {
        child: Command::new(bin("gatepass-server"))
            .args(["serve", "--config"])
            .arg(config)
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("start gatepass-server serve"),
        settings,
    }
}
