//! gatepass-hostd on a host whose sshd_config has no `Include` (RHEL 8,
//! older Debian, hand-made configs), with the write permissions of its
//! systemd unit: `setup` (root) makes sshd_config Include gatepass's own
//! file once; from then on `gatepass-hostd run` changes only files of the
//! managed folder. The unit's read-only sshd_config is reproduced with a
//! read-only bind mount over the file, undone on drop.
//!
//! Covers: a first host certificate signed after setup is installed by the
//! daemon while sshd_config is read-only, and the private sshd presents it;
//! a change `sshd -t` refuses is rolled back and shows in `status`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatepass_tests::sshd::{Sshd, SshdOptions, SSHD};
use gatepass_tests::{bin, run, stop_child, DevServer};
use serde_json::{json, Value};

/// A read-only bind mount over one file; unmounted on drop.
struct ReadOnly(PathBuf);
impl ReadOnly {
    fn file(path: &Path) -> ReadOnly {
        let mount = |args: &[&str]| {
            Command::new("mount")
                .args(args)
                .arg(path)
                .arg(path)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        assert!(mount(&["--bind"]), "bind mount (the tests run as root)");
        let guard = ReadOnly(path.to_path_buf());
        let ok = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "remount read-only");
        assert!(std::fs::OpenOptions::new().append(true).open(path).is_err());
        guard
    }
}
impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// `gatepass-hostd run`, stopped with SIGTERM on drop.
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

struct Rig {
    server: DevServer,
    client: gatepass_api::Client,
    rt: tokio::runtime::Runtime,
    sshd: Sshd,
    tmp: tempfile::TempDir,
    config: PathBuf,
}

impl Rig {
    /// A dev server with a host role (which stops signing for `setup`, see
    /// [`Rig::setup`]), and a private sshd without any `Include`, with a
    /// `Match` block at its end.
    fn start() -> Rig {
        let server = DevServer::start();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = server.client();
        let mut sshd = Sshd::new(SshdOptions::default());
        sshd.options.extra_config.extend([
            "Match User nobody".to_string(),
            "  X11Forwarding no".to_string(),
        ]);
        sshd.launch();
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("etc/hostd.toml");
        let rig = Rig {
            server,
            client,
            rt,
            sshd,
            tmp,
            config,
        };
        rig.write("ssh/config/ca", json!({}));
        rig.host_role(true);
        rig
    }

    /// The host role; one that does not sign host keys signs user keys
    /// only (a CA role must sign one of them).
    fn host_role(&self, signs: bool) {
        self.write(
            "ssh/roles/hosts",
            json!({"key_type": "ca", "allow_host_certificates": signs, "allow_user_certificates": !signs,
                   "allowed_users": "nobody", "allowed_domains": "127.0.0.1", "allow_bare_domains": true, "ttl": "1h"}),
        );
    }

    fn write(&self, path: &str, body: Value) -> Value {
        let Value::Object(m) = body else {
            panic!("body")
        };
        let env = self
            .rt
            .block_on(self.client.write(path, &m))
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        env.map(|e| serde_json::to_value(e).unwrap())
            .unwrap_or(Value::Null)
    }

    fn hostd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("gatepass-hostd"));
        cmd.args(args).arg("--config").arg(&self.config);
        cmd
    }

    fn setup(&self, sshd_binary: &Path) {
        let join = self.write(
            "hosts/join-tokens",
            json!({"host_mount": "ssh", "host_role": "hosts"}),
        )["data"]["join_token"]
            .as_str()
            .unwrap()
            .to_string();
        // The join token names the role; the role stops signing until the
        // test turns it back on.
        self.host_role(false);
        let d = &self.sshd.dir;
        let pid = self.sshd.pid().unwrap();
        let listening = self.listening();
        let mut cmd = self.hostd(&["setup"]);
        cmd.args(["--server", &self.server.addr, "--join-token", &join])
            .arg("--ca-cert")
            .arg(&self.server.cacert)
            .args(["--include-loopback", "--hostname", "gp-noinclude.example"])
            .arg("--sshd-config")
            .arg(&self.sshd.config)
            .arg("--sshd-config-dir")
            .arg(d.join("sshd_config.d"))
            .arg("--managed-dir")
            .arg(d.join("gatepass"))
            .arg("--sshd")
            .arg(sshd_binary)
            .arg("--state-dir")
            .arg(self.tmp.path().join("state"))
            .args(["--reload-command", &format!("kill -HUP {pid}")])
            // `run` answers the login check here, not in /run/gatepass.
            .arg("--login-socket")
            .arg(self.tmp.path().join("hostd.sock"));
        let (st, out, err) = run(&mut cmd);
        assert_eq!(st, 0, "setup failed:\n{out}{err}");
        // sshd logs its reload a moment after the signal: a test that
        // counts reloads starts from the one setup made.
        let started = Instant::now();
        while self.listening() == listening {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "sshd was not reloaded:\n{out}{err}\n--- sshd ---\n{}",
                self.sshd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !self.cert_file().exists(),
            "the role signs no host certificates yet:\n{out}{err}"
        );
        // The one edit of sshd_config: an Include of gatepass's file,
        // before the Match block.
        let main = std::fs::read_to_string(&self.sshd.config).unwrap();
        let include = format!("Include {}\n", self.included().display());
        assert!(
            main.find(&include).unwrap() < main.find("Match User nobody").unwrap(),
            "{main}"
        );
        assert!(!main.contains("\nTrustedUserCAKeys"), "{main}");
        assert!(std::fs::read_to_string(self.included())
            .unwrap()
            .contains("TrustedUserCAKeys"));
    }

    fn included(&self) -> PathBuf {
        self.sshd.dir.join("gatepass/sshd_config.conf")
    }

    fn cert_file(&self) -> PathBuf {
        self.sshd.dir.join("gatepass/host_key-cert.pub")
    }

    fn daemon(&self) -> Daemon {
        let log = self.tmp.path().join("hostd.log");
        let child = self
            .hostd(&["run"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon(child, log)
    }

    fn status(&self) -> String {
        let (st, out, err) = run(&mut self.hostd(&["status"]));
        assert_eq!(st, 0, "{out}{err}");
        out
    }

    fn listening(&self) -> usize {
        self.sshd.log().matches("Server listening on").count()
    }
}

#[test]
fn a_first_host_certificate_after_setup_with_sshd_config_read_only() {
    let rig = Rig::start();
    rig.setup(Path::new(SSHD));
    let main = std::fs::read_to_string(&rig.sshd.config).unwrap();

    // The service's view: sshd_config read-only. The host role starts signing;
    // the daemon asks for the first certificate at once.
    let _ro = ReadOnly::file(&rig.sshd.config);
    rig.host_role(true);
    let listening = rig.listening();
    let daemon = rig.daemon();
    let started = Instant::now();
    while rig.listening() <= listening {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no host certificate installed\n--- hostd ---\n{}\n--- status ---\n{}",
            daemon.log(),
            rig.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rig.cert_file().exists(), "{}", daemon.log());
    assert!(std::fs::read_to_string(rig.included())
        .unwrap()
        .contains(&format!("HostCertificate {}\n", rig.cert_file().display())));
    assert_eq!(std::fs::read_to_string(&rig.sshd.config).unwrap(), main);

    // sshd presents it: the client trusts the host CA alone.
    let kh = rig.tmp.path().join("known_hosts");
    let ca = rig
        .rt
        .block_on(rig.client.get_text("ssh/public_key"))
        .unwrap();
    std::fs::write(
        &kh,
        format!(
            "@cert-authority {} {}\n",
            rig.sshd.host_pattern(),
            ca.trim()
        ),
    )
    .unwrap();
    let (_, out, err) = rig
        .sshd
        .client()
        .known_hosts(&kh)
        .option("LogLevel=DEBUG1")
        .run("true");
    assert!(
        err.contains("Server host certificate") && !err.contains("Host key verification failed"),
        "sshd does not present the host certificate:\n{out}{err}\n--- sshd ---\n{}",
        rig.sshd.log()
    );

    let status = rig.status();
    assert!(
        status.contains("Included from")
            && status.contains("host cert:")
            && !status.contains("last error"),
        "{status}"
    );
}

#[test]
fn a_change_sshd_refuses_is_rolled_back_and_shown_in_status() {
    let rig = Rig::start();
    // An sshd whose -t refuses a HostCertificate in gatepass's file.
    let fake = rig.tmp.path().join("fake-sshd");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -t ] && grep -qs HostCertificate {}; then echo 'fake sshd: no host certificates here' >&2; exit 255; fi\nexec {SSHD} \"$@\"\n",
            rig.included().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    rig.setup(&fake);
    let main = std::fs::read(&rig.sshd.config).unwrap();
    let own = std::fs::read(rig.included()).unwrap();

    let _ro = ReadOnly::file(&rig.sshd.config);
    rig.host_role(true);
    let listening = rig.listening();
    let daemon = rig.daemon();
    let started = Instant::now();
    let status = loop {
        let status = rig.status();
        if status.contains("last error") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no error shown\n{status}\n--- hostd ---\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.contains("no host certificates here") && status.contains("restored"),
        "{status}"
    );
    assert!(
        daemon.log().contains("no host certificates here"),
        "the journal says it too:\n{}",
        daemon.log()
    );
    // Old files, not a mix; no reload.
    assert_eq!(std::fs::read(&rig.sshd.config).unwrap(), main);
    assert_eq!(std::fs::read(rig.included()).unwrap(), own);
    assert!(!rig.cert_file().exists(), "the certificate is taken back");
    assert_eq!(rig.listening(), listening);
}
