//! `gatepass-hostd run` given a KRL sshd could not load: a private sshd
//! (its config Includes a drop-in folder, as the harness's does), and a
//! small stand-in for the server that answers `hosts/self/state` with
//! whatever desired state the test sets, so that the KRL can be one the
//! real server would never write.
//!
//! Covers: a KRL that does not parse (right magic, then a section type
//! OpenSSH does not know) is not installed; the KRL in place stays; the
//! failure shows in `gatepass-hostd status` and in the daemon's log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatepass_tests::sshd::{keygen, pub_path, ssh_keygen, Sshd, SshdOptions};
use gatepass_tests::{bin, run, stop_child};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves the desired state over HTTPS (a dev CA the hostd config pins):
/// `GET /v1/hosts/self/state` answers with it at once, any other call
/// (acks, token renewals) with 204.
struct FakeServer {
    rt: tokio::runtime::Runtime,
    addr: String,
    ca: PathBuf,
    state: Arc<Mutex<Value>>,
}

impl FakeServer {
    fn start(dir: &Path, state: Value) -> FakeServer {
        gatepass_server::tls::install_crypto_provider();
        let tls = gatepass_server::tls::dev_certificates(dir).unwrap();
        let certs = rustls_pemfile::certs(&mut &*std::fs::read(&tls.cert).unwrap())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut &*std::fs::read(&tls.key).unwrap())
            .unwrap()
            .unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        answer(tls, &state).await;
                    }
                });
            }
        });
        FakeServer {
            rt,
            addr,
            ca: tls.ca,
            state,
        }
    }

    fn set_state(&self, state: Value) {
        *self.state.lock().unwrap() = state;
    }
}

/// One HTTP/1.1 request and its answer; the connection then closes.
async fn answer<S: AsyncReadExt + AsyncWriteExt + Unpin>(mut s: S, state: &Mutex<Value>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let response = if path.starts_with("/v1/hosts/self/state") {
        let body = json!({ "data": state.lock().unwrap().clone() }).to_string();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    let _ = s.write_all(response.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// `gatepass-hostd run`, stopped on drop.
struct Daemon(Child, PathBuf);

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop_child(&mut self.0);
    }
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < timeout,
            "{what} within {timeout:?}\n--- hostd ---\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_krl_sshd_could_not_load_is_not_installed_and_shows_in_status() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut sshd = Sshd::new(SshdOptions::default());
    let dropins = sshd.dir.join("sshd_config.d");
    std::fs::create_dir(&dropins).unwrap();
    sshd.options
        .extra_config
        .push(format!("Include {}/*.conf", dropins.display()));
    sshd.launch();

    // A real KRL from ssh-keygen, revoking serial 5 of the user CA.
    let ca = keygen(t, "ca", "ed25519", None);
    std::fs::write(t.join("spec"), "serial: 5\n").unwrap();
    let good_krl = t.join("good.krl");
    ssh_keygen([
        "-k",
        "-f",
        good_krl.to_str().unwrap(),
        "-s",
        pub_path(&ca).to_str().unwrap(),
        t.join("spec").to_str().unwrap(),
    ]);
    let good = std::fs::read(&good_krl).unwrap();
    let state = |index: u64, krl: &[u8]| {
        json!({
            "index": index,
            "user_ca_keys": std::fs::read_to_string(pub_path(&ca)).unwrap(),
            "krl": base64(krl),
            "dynamic_keys": [],
        })
    };
    let server = FakeServer::start(&t.join("tls"), state(1, &good));

    // An enrolled host's config and token, as `setup` leaves them.
    let token = t.join("hostd.token");
    std::fs::write(&token, "h-token\n").unwrap();
    let config = t.join("hostd.toml");
    let managed = sshd.dir.join("gatepass");
    std::fs::write(
        &config,
        format!(
            "server = {:?}\nca_cert = {:?}\ntoken_file = {:?}\nhost_id = \"h-krl\"\n\n\
             [paths]\nsshd_config = {:?}\nsshd_config_dir = {:?}\nmanaged_dir = {:?}\n\
             state_dir = {:?}\nreload_command = \"kill -HUP {}\"\nlogin_socket = \"\"\n\n\
             [sync]\nwait_seconds = 1\nmax_backoff_seconds = 1\n",
            server.addr,
            server.ca,
            token,
            sshd.config,
            dropins,
            managed,
            t.join("state"),
            sshd.pid().unwrap()
        ),
    )
    .unwrap();
    let hostd = |args: &[&str]| {
        let mut cmd = Command::new(bin("gatepass-hostd"));
        cmd.args(args).arg("--config").arg(&config);
        cmd
    };
    let status = || {
        let (st, out, err) = run(&mut hostd(&["status"]));
        assert_eq!(st, 0, "{out}{err}");
        out
    };

    let log = t.join("hostd.log");
    let daemon = Daemon(
        hostd(&["run"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log,
    );
    let krl_file = managed.join("revoked.krl");
    wait_for(
        "the good KRL installed",
        Duration::from_secs(20),
        || std::fs::read(&krl_file).ok().as_deref() == Some(&good[..]),
        || daemon.log(),
    );
    assert!(!status().contains("last error"), "{}", status());

    // The same KRL with a section OpenSSH does not know after it: the
    // magic and header are right, but sshd would refuse to load the file.
    let mut bad = good.clone();
    bad.extend_from_slice(&[9, 0, 0, 0, 0]);
    server.set_state(state(2, &bad));
    let mut shown = String::new();
    wait_for(
        "the refused KRL shown in status",
        Duration::from_secs(20),
        || {
            shown = status();
            shown.contains("last error")
        },
        || daemon.log(),
    );
    assert!(
        shown.contains("the KRL cannot be read: unsupported KRL section type 9"),
        "{shown}"
    );
    assert!(
        daemon.log().contains("unsupported KRL section type 9"),
        "the log says it too:\n{}",
        daemon.log()
    );
    assert_eq!(
        std::fs::read(&krl_file).unwrap(),
        good,
        "the KRL in place stays"
    );
    drop(daemon);
    drop(server.rt);
}
