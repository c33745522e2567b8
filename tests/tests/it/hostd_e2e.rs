//! End to end: `gatepass-server dev`, `gatepass-hostd setup` and
//! `gatepass-hostd run` against a private sshd (the harness's, which
//! Includes a drop-in folder of its own), and the real `ssh` client.
//!
//! Covers: a certificate from the server logs in after setup; the host
//! certificate is trusted through `@cert-authority`; setup twice changes
//! nothing; a dynamic key from `creds` logs in within 2 s and is refused
//! within 2 s of its lease being revoked; a revoked certificate is refused
//! within 2 s (the KRL is pushed); a dynamic key is removed by hostd on its
//! own when it expires while the server is down; uninstall leaves a config
//! `sshd -t` accepts; in mapped mode the login mappings admit exactly the
//! mapped principals, and a change reaches sshd within 2 s.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatepass_tests::sshd::{keygen, pub_path, Sshd, SshdOptions, SSHD};
use gatepass_tests::{bin, run, stop_child, DevServer};
use serde_json::{json, Value};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

struct Api {
    client: gatepass_api::Client,
    rt: tokio::runtime::Runtime,
}

impl Api {
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
    fn delete(&self, path: &str) {
        self.rt.block_on(self.client.delete(path)).unwrap();
    }
    fn text(&self, path: &str) -> String {
        self.rt.block_on(self.client.get_text(path)).unwrap()
    }
}

/// A dev server with a user CA on its `ssh` mount, and a client of it.
fn server_with_ca() -> (DevServer, Api) {
    let server = DevServer::start();
    let api = Api {
        client: server.client(),
        rt: rt(),
    };
    api.write("ssh/config/ca", json!({}));
    (server, api)
}

struct Rig {
    sshd: Sshd,
    tmp: tempfile::TempDir,
    config: PathBuf,
}

impl Rig {
    fn start() -> Rig {
        Rig::start_with(|_| Vec::new())
    }

    /// A rig whose sshd config has, after the drop-in folder's Include,
    /// the lines `extra` gives for the sshd's folder (made before they are
    /// asked for).
    fn start_with(extra: impl FnOnce(&Path) -> Vec<String>) -> Rig {
        let mut sshd = Sshd::new(SshdOptions::default());
        let dropins = sshd.dir.join("sshd_config.d");
        std::fs::create_dir(&dropins).unwrap();
        sshd.options
            .extra_config
            .push(format!("Include {}/*.conf", dropins.display()));
        let lines = extra(&sshd.dir);
        sshd.options.extra_config.extend(lines);
        sshd.launch();
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("etc/hostd.toml");
        Rig { sshd, tmp, config }
    }

    fn hostd_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("gatepass-hostd"));
        cmd.args(args).arg("--config").arg(&self.config);
        cmd
    }

    /// `gatepass-hostd run`, its log (at `level`) in the test's folder.
    fn run(&self, level: &str, log: &str) -> Daemon {
        let log = self.tmp.path().join(log);
        let child = self
            .hostd_cmd(&["run"])
            .env("GATEPASS_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon(child, log)
    }

    fn setup(&self, server: &DevServer, join: &str, extra: &[&str]) -> (i32, String, String) {
        let d = &self.sshd.dir;
        let pid = self.sshd.pid().unwrap();
        let mut cmd = self.hostd_cmd(&["setup"]);
        cmd.args(["--server", &server.addr, "--join-token", join, "--ca-cert"])
            .arg(&server.cacert)
            .args(["--include-loopback", "--hostname", "gp-test.example"])
            .arg("--sshd-config")
            .arg(&self.sshd.config)
            .arg("--sshd-config-dir")
            .arg(d.join("sshd_config.d"))
            .arg("--managed-dir")
            .arg(d.join("gatepass"))
            .arg("--state-dir")
            .arg(self.tmp.path().join("state"))
            .args(["--reload-command", &format!("kill -HUP {pid}")])
            // `run` answers the login check here, not in /run/gatepass.
            .arg("--login-socket")
            .arg(self.tmp.path().join("hostd.sock"))
            .args(extra);
        run(&mut cmd)
    }

    fn managed(&self, rel: &str) -> PathBuf {
        self.sshd.dir.join("gatepass").join(rel)
    }

    fn login(&self, key: &Path, cert: Option<&Path>) -> bool {
        let mut c = self.sshd.client().identity(key);
        if let Some(cert) = cert {
            c = c.certificate(cert);
        }
        c.run("true").0 == 0
    }

    /// Polls until the login's outcome is `want` or `within` has passed.
    fn login_becomes(
        &self,
        key: &Path,
        cert: Option<&Path>,
        want: bool,
        within: Duration,
    ) -> Duration {
        let started = Instant::now();
        loop {
            if self.login(key, cert) == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "login did not become {want} within {within:?}\n--- sshd log ---\n{}",
                self.sshd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
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

fn write_key(dir: &Path, name: &str, private: &str) -> PathBuf {
    let sub = dir.join(format!("dyn-{name}"));
    std::fs::create_dir_all(&sub).unwrap();
    let p = sub.join("id");
    std::fs::write(&p, private).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p
}

#[allow(clippy::disallowed_methods)]
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn mtimes(dir: &Path) -> Vec<(PathBuf, i64, i64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else {
                out.push((p, m.mtime(), m.mtime_nsec()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn setup_run_and_logins_with_the_server() {
    let (mut server, api) = server_with_ca();
    api.write("sys/mounts/ssh-host", json!({"type": "ssh"}));
    api.write("ssh-host/config/ca", json!({}));
    api.write(
        "ssh-host/roles/hosts",
        json!({"key_type": "ca", "allow_host_certificates": true, "allowed_domains": "127.0.0.1", "allow_bare_domains": true, "ttl": "1h"}),
    );
    api.write(
        "ssh/roles/u",
        json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "root", "default_extensions": {"permit-pty": ""}, "ttl": "10m"}),
    );
    api.write(
        "ssh/roles/dyn",
        json!({"key_type": "dynamic", "default_user": "root", "cidr_list": "127.0.0.0/8", "ttl": "10m", "key_option_specs": "no-port-forwarding"}),
    );
    api.write(
        "ssh/roles/short",
        json!({"key_type": "dynamic", "default_user": "root", "cidr_list": "127.0.0.0/8", "ttl": "8s"}),
    );
    let join = api.write(
        "hosts/join-tokens",
        json!({"ttl": "10m", "num_uses": 1, "host_mount": "ssh-host", "host_role": "hosts"}),
    )["data"]["join_token"]
        .as_str()
        .unwrap()
        .to_string();

    let rig = Rig::start();
    let keys = rig.tmp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let config_before = std::fs::read_to_string(&rig.sshd.config).unwrap();

    // Dry run before enrollment: says what it would do, changes nothing.
    let (st, out, err) = rig.setup(&server, &join, &["--dry-run"]);
    assert_eq!(st, 0, "{out}{err}");
    assert!(
        out.contains("would enroll") && out.contains("+TrustedUserCAKeys"),
        "{out}"
    );
    assert!(!rig.config.exists() && !rig.sshd.dir.join("gatepass").exists());

    // Setup: enrolls, installs, gets a host certificate, reloads sshd.
    let before = rig.sshd.log().matches("Server listening on").count();
    let (st, out, err) = rig.setup(&server, &join, &[]);
    assert_eq!(
        st,
        0,
        "setup failed:\n{out}{err}\n--- server ---\n{}",
        server.log()
    );
    assert!(out.contains("enrolled as host"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rig.sshd.log().matches("Server listening on").count() <= before {
        assert!(
            Instant::now() < deadline,
            "sshd was not reloaded:\n{out}{err}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let token_mode = std::fs::metadata(rig.tmp.path().join("etc/hostd.token"))
        .unwrap()
        .mode();
    assert_eq!(token_mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&rig.sshd.config).unwrap(),
        config_before
    );
    let cert_file = rig.managed("host_key-cert.pub");
    assert!(cert_file.exists(), "no host certificate:\n{out}{err}");

    // A certificate from the server logs in, with the host certificate
    // trusted through @cert-authority.
    let user = keygen(&keys, "user", "ed25519", None);
    let signed = api.write(
        "ssh/sign/u",
        json!({"public_key": std::fs::read_to_string(pub_path(&user)).unwrap(), "valid_principals": "root"}),
    );
    let cert = keys.join("user-cert.pub");
    std::fs::write(&cert, signed["data"]["signed_key"].as_str().unwrap()).unwrap();
    let serial = signed["data"]["serial_number"]
        .as_str()
        .unwrap()
        .to_string();
    let host_ca = api.text("ssh-host/public_key");
    let kh = keys.join("known_hosts");
    std::fs::write(
        &kh,
        format!(
            "@cert-authority {} {}\n",
            rig.sshd.host_pattern(),
            host_ca.trim()
        ),
    )
    .unwrap();
    rig.login_becomes(&user, Some(&cert), true, Duration::from_secs(5));
    let out = rig
        .sshd
        .client()
        .identity(&user)
        .certificate(&cert)
        .known_hosts(&kh)
        .run_ok("echo via-host-cert");
    assert_eq!(out, "via-host-cert\n");

    // Setup again: already enrolled, nothing rewritten.
    let files_before = mtimes(&rig.sshd.dir.join("gatepass"));
    let dropin = rig.sshd.dir.join("sshd_config.d/50-gatepass.conf");
    let dropin_before = std::fs::metadata(&dropin).unwrap().mtime_nsec();
    let (st, out, err) = rig.setup(&server, "spent-join-token", &[]);
    assert_eq!(st, 0, "{out}{err}");
    assert!(
        out.contains("already enrolled") && out.contains("no changes"),
        "{out}"
    );
    assert!(out.contains("sshd needs no reload"), "{out}");
    assert_eq!(mtimes(&rig.sshd.dir.join("gatepass")), files_before);
    assert_eq!(
        std::fs::metadata(&dropin).unwrap().mtime_nsec(),
        dropin_before
    );
    let (st, out, _) = rig.setup(&server, "x", &["--dry-run"]);
    assert_eq!(st, 0);
    assert!(out.contains("no changes"), "{out}");

    // The daemon.
    let daemon = rig.run("debug", "hostd.log");

    // A dynamic key logs in within 2 s of issue; `wait` returns once hostd
    // has acknowledged it.
    let issued = Instant::now();
    let creds = api.write("ssh/creds/dyn", json!({"ip": "127.0.0.1", "wait": "10s"}));
    let lease = creds["lease_id"].as_str().unwrap().to_string();
    assert_eq!(
        creds["data"]["installed"],
        true,
        "{creds}\n--- hostd ---\n{}",
        daemon.log()
    );
    let dynk = write_key(&keys, "a", creds["data"]["key"].as_str().unwrap());
    rig.login_becomes(
        &dynk,
        None,
        true,
        Duration::from_secs(2)
            .saturating_sub(issued.elapsed())
            .max(Duration::from_millis(500)),
    );
    assert!(
        issued.elapsed() < Duration::from_secs(2),
        "took {:?}",
        issued.elapsed()
    );
    let line = std::fs::read_to_string(rig.managed("authorized_keys/root")).unwrap();
    assert!(
        line.contains(&lease) && line.contains("no-port-forwarding"),
        "{line}"
    );

    // What hostd saved while the lease and the certificate were good: all
    // a full state folder would leave it after the revocations below.
    let saved = rig.tmp.path().join("state/state.json");
    let saved_before = std::fs::read(&saved).unwrap();

    // Revoking the lease: refused within 2 s.
    api.write("sys/leases/revoke", json!({"lease_id": lease}));
    let took = rig.login_becomes(&dynk, None, false, Duration::from_secs(2));
    eprintln!("lease revocation took effect after {took:?}");

    // Revoking the certificate: the KRL reaches sshd within 2 s.
    assert!(rig.login(&user, Some(&cert)));
    api.write("ssh/revoke", json!({"serial_number": serial}));
    let took = rig.login_becomes(&user, Some(&cert), false, Duration::from_secs(2));
    eprintln!("certificate revocation took effect after {took:?}");

    // Status shows the sync.
    let (st, out, _) = run(&mut rig.hostd_cmd(&["status"]));
    assert_eq!(st, 0);
    assert!(
        out.contains("last sync:")
            && out.contains("50-gatepass.conf")
            && out.contains("host cert:"),
        "{out}"
    );

    // A short lease, then the server goes away: hostd removes the key on
    // its own when it expires.
    let creds = api.write("ssh/creds/short", json!({"ip": "127.0.0.1", "wait": "10s"}));
    assert_eq!(creds["data"]["installed"], true);
    let short_lease = creds["lease_id"].as_str().unwrap().to_string();
    let shortk = write_key(&keys, "b", creds["data"]["key"].as_str().unwrap());
    rig.login_becomes(&shortk, None, true, Duration::from_secs(2));
    let state: Value =
        serde_json::from_slice(&std::fs::read(rig.tmp.path().join("state/state.json")).unwrap())
            .unwrap();
    let expires = state["desired"]["dynamic_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["lease_id"] == short_lease.as_str())
        .map(|k| k["expires"].as_i64().unwrap())
        .expect("the short lease is in the saved state");
    server.stop();
    while now() < expires {
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone = Instant::now();
    loop {
        let text = std::fs::read_to_string(rig.managed("authorized_keys/root")).unwrap_or_default();
        if !text.contains(&short_lease) {
            break;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(3),
            "expired key still in the file:\n{text}\n--- hostd ---\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!rig.login(&shortk, None));
    drop(daemon);

    // hostd restarts, the server still away, with its saved state from
    // before the revocations (its last saves failed): it does not write
    // that state back over the newer files, so the revoked lease's key and
    // the revoked certificate stay refused.
    std::fs::write(&saved, &saved_before).unwrap();
    let daemon = rig.run("info", "hostd-restarted.log");
    let waiting = Instant::now();
    while !daemon.log().contains("until the server answers") {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(!rig.login(&user, Some(&cert)), "{}", daemon.log());
    assert!(!rig.login(&dynk, None), "{}", daemon.log());
    // Uninstall while the service runs is refused: its next pass would
    // put everything back.
    let (st, out, err) = run(&mut rig.hostd_cmd(&["uninstall"]));
    assert_ne!(st, 0, "{out}{err}");
    assert!(err.contains("service is running"), "{out}{err}");
    assert!(dropin.exists());
    drop(daemon);

    // Uninstall: sshd_config valid and as before, files gone.
    let (st, out, err) = run(&mut rig.hostd_cmd(&["uninstall"]));
    assert_eq!(st, 0, "{out}{err}");
    assert!(!dropin.exists() && !rig.sshd.dir.join("gatepass").exists());
    assert_eq!(
        std::fs::read_to_string(&rig.sshd.config).unwrap(),
        config_before
    );
    let t = Command::new(SSHD)
        .arg("-t")
        .arg("-f")
        .arg(&rig.sshd.config)
        .status()
        .unwrap();
    assert!(t.success());
}

#[test]
fn mapped_principals_follow_the_mappings() {
    let (server, api) = server_with_ca();
    api.write(
        "ssh/roles/u",
        json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "root,ops", "default_extensions": {"permit-pty": ""}, "ttl": "10m"}),
    );
    api.write("hosts/mappings/root", json!({"principals": "ops"}));
    let join = api.write("hosts/join-tokens", json!({"principals": "mapped"}))["data"]
        ["join_token"]
        .as_str()
        .unwrap()
        .to_string();
    let rig = Rig::start();
    let keys = rig.tmp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let (st, out, err) = rig.setup(&server, &join, &[]);
    assert_eq!(st, 0, "{out}{err}");
    assert!(
        !rig.managed("host_key-cert.pub").exists(),
        "no host mount, no host certificate"
    );
    let cert_for = |name: &str, principal: &str| {
        let key = keygen(&keys, name, "ed25519", None);
        let v = api.write(
            "ssh/sign/u",
            json!({"public_key": std::fs::read_to_string(pub_path(&key)).unwrap(), "valid_principals": principal}),
        );
        let cert = keys.join(format!("{name}-cert.pub"));
        std::fs::write(&cert, v["data"]["signed_key"].as_str().unwrap()).unwrap();
        (key, cert)
    };
    let (ops_key, ops_cert) = cert_for("ops", "ops");
    let (root_key, root_cert) = cert_for("rootp", "root");
    rig.login_becomes(&ops_key, Some(&ops_cert), true, Duration::from_secs(5));
    assert!(
        !rig.login(&root_key, Some(&root_cert)),
        "root is not a mapped principal"
    );
    assert_eq!(
        std::fs::read_to_string(rig.managed("principals/root")).unwrap(),
        "ops\n"
    );

    let _daemon = rig.run("info", "hostd.log");
    api.write("hosts/mappings/root", json!({"principals": "root"}));
    rig.login_becomes(&ops_key, Some(&ops_cert), false, Duration::from_secs(2));
    rig.login_becomes(&root_key, Some(&root_cert), true, Duration::from_secs(2));
    api.delete("hosts/mappings/root");
    rig.login_becomes(&root_key, Some(&root_cert), false, Duration::from_secs(2));
    assert!(!rig.managed("principals/root").exists());
}

#[test]
fn host_certificate_is_renewed_at_two_thirds() {
    let (server, api) = server_with_ca();
    api.write(
        "ssh/roles/hosts",
        json!({"key_type": "ca", "allow_host_certificates": true, "allowed_domains": "127.0.0.1", "allow_bare_domains": true, "ttl": "12s", "not_before_duration": "0s"}),
    );
    let join = api.write(
        "hosts/join-tokens",
        json!({"host_mount": "ssh", "host_role": "hosts"}),
    )["data"]["join_token"]
        .as_str()
        .unwrap()
        .to_string();
    let rig = Rig::start();
    let (st, out, err) = rig.setup(&server, &join, &[]);
    assert_eq!(st, 0, "{out}{err}");
    let cert_file = rig.managed("host_key-cert.pub");
    let first = std::fs::read_to_string(&cert_file).unwrap();
    let issued = Instant::now();
    let daemon = rig.run("info", "hostd.log");
    let listening = rig.sshd.log().matches("Server listening on").count();
    let renewed = loop {
        let now_text = std::fs::read_to_string(&cert_file).unwrap_or_default();
        if !now_text.is_empty() && now_text != first {
            break issued.elapsed();
        }
        assert!(
            issued.elapsed() < Duration::from_secs(15),
            "not renewed\n--- hostd ---\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // 2/3 of 12 s is 8 s after issue (give or take a second of rounding).
    assert!(
        renewed >= Duration::from_secs(6),
        "renewed too early: {renewed:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig.sshd.log().matches("Server listening on").count() <= listening {
        assert!(
            Instant::now() < deadline,
            "sshd was not reloaded for the new certificate"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The new certificate is the one sshd shows.
    let keys = rig.tmp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let kh = keys.join("known_hosts");
    let ca = api.text("ssh/public_key");
    std::fs::write(
        &kh,
        format!(
            "@cert-authority {} {}\n",
            rig.sshd.host_pattern(),
            ca.trim()
        ),
    )
    .unwrap();
    // sshd re-executes on SIGHUP and takes no connection meanwhile; a
    // connection refused in such a moment (seen once on a loaded machine,
    // right after the listening line waited for) is tried again for a few
    // seconds rather than taken for sshd showing an old certificate.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (out, err) = loop {
        let (_, out, err) = rig
            .sshd
            .client()
            .known_hosts(&kh)
            .option("LogLevel=DEBUG1")
            .run("true");
        if !err.contains("Connection refused") || Instant::now() > deadline {
            break (out, err);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let described = gatepass_tests::ssh::describe_cert(
        &keys,
        std::fs::read_to_string(&cert_file).unwrap().trim(),
    );
    let serial = described
        .lines()
        .find_map(|l| l.trim().strip_prefix("Serial: "))
        .unwrap()
        .to_string();
    assert!(
        err.contains("Server host certificate") && err.contains(&format!("serial {serial} ")),
        "sshd does not show the renewed certificate (serial {serial}):\n{out}{err}"
    );
}

/// The `host_id = "…"` line of a hostd config.
fn host_id_of(config: &Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("host_id = "))
        .unwrap_or_else(|| panic!("no host_id in {text}"))
        .trim_matches('"')
        .to_string()
}

#[test]
fn setup_under_a_taken_name_is_refused_until_replace() {
    let (server, api) = server_with_ca();
    let join = api.write("hosts/join-tokens", json!({"num_uses": 0}))["data"]["join_token"]
        .as_str()
        .unwrap()
        .to_string();
    let rig = Rig::start();
    let (st, out, err) = rig.setup(&server, &join, &[]);
    assert_eq!(st, 0, "{out}{err}");
    let first = host_id_of(&rig.config);
    // The machine is rebuilt: its hostd config is gone, its name is not.
    std::fs::remove_file(&rig.config).unwrap();
    let (st, out, err) = rig.setup(&server, &join, &[]);
    assert_ne!(st, 0, "{out}{err}");
    assert!(
        err.contains("already enrolled") && err.contains("--replace"),
        "the server's reason and the way out: {out}{err}"
    );
    assert!(!rig.config.exists());
    let (st, out, err) = rig.setup(&server, &join, &["--replace"]);
    assert_eq!(st, 0, "{out}{err}");
    let second = host_id_of(&rig.config);
    assert_ne!(first, second);
    let held = api
        .rt
        .block_on(api.client.read("hosts/gp-test.example"))
        .unwrap()
        .and_then(|e| e.data)
        .unwrap();
    assert_eq!(held["host_id"], second.as_str());
}

impl Api {
    fn read(&self, path: &str) -> Value {
        self.rt
            .block_on(self.client.read(path))
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .and_then(|e| e.data)
            .unwrap_or(Value::Null)
    }

    /// Reads `path` until `done` holds for it, at most `within`.
    fn read_until(&self, path: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let v = self.read(path);
            if done(&v) {
                return v;
            }
            assert!(started.elapsed() < within, "GET {path} stayed {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A server with a CA and `root` mapped to `ops`, and a host set up in
/// mapped mode (hostd not running yet); the host's `hosts/<id>` path.
fn mapped_host() -> (DevServer, Api, Rig, String) {
    let (server, api) = server_with_ca();
    api.write("hosts/mappings/root", json!({"principals": "ops"}));
    let join = api.write("hosts/join-tokens", json!({"principals": "mapped"}))["data"]
        ["join_token"]
        .as_str()
        .unwrap()
        .to_string();
    let rig = Rig::start();
    let (st, out, err) = rig.setup(&server, &join, &[]);
    assert_eq!(st, 0, "{out}{err}");
    let host = format!("hosts/{}", host_id_of(&rig.config));
    (server, api, rig, host)
}

#[test]
fn the_server_shows_the_applied_state_and_the_files_hostd_repaired() {
    let (_server, api, rig, host) = mapped_host();
    // Setup applied the state and said so: the host is current, with no
    // drift seen.
    let v = api.read(&host);
    let first = v["applied_index"].as_u64().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(v["state_index"].as_u64(), Some(first), "{v}");
    assert!(v.get("drift").is_none(), "{v}");

    // The files are looked at every second here (60 by default).
    let text = std::fs::read_to_string(&rig.config).unwrap();
    assert!(text.contains("recheck_seconds = 60"), "{text}");
    std::fs::write(
        &rig.config,
        text.replace("recheck_seconds = 60", "recheck_seconds = 1"),
    )
    .unwrap();
    let daemon = rig.run("info", "hostd.log");

    // A change of state: the host applies it and the server shows the new
    // index as applied. The poll after the apply said so: no request of
    // its own (setup's was the only one).
    api.write("hosts/mappings/root", json!({"principals": "root"}));
    let v = api.read_until(&host, Duration::from_secs(10), |v| {
        v["applied_index"].as_u64().is_some_and(|a| a != first)
            && v["applied_index"] == v["state_index"]
    });
    assert!(v.get("drift").is_none(), "a new state is not drift: {v}");
    assert_eq!(audited_requests(&api, "hosts/self/ack").len(), 1);
    // The audit log says which state the poll acknowledged: a poll's
    // numbers are not HMAC'd.
    let applied = v["applied_index"].to_string();
    let acknowledging_polls = audited_requests(&api, "hosts/self/state")
        .into_iter()
        .filter(|e| e["request"]["data"]["applied"] == json!(applied))
        .count();
    assert!(acknowledging_polls >= 1, "{}", daemon.log());
    assert_eq!(
        std::fs::read_to_string(rig.managed("principals/root")).unwrap(),
        "root\n"
    );

    // Someone edits a principals file by hand while hostd runs: the next
    // check writes it back and the server shows which file.
    let principals = rig.managed("principals/root");
    std::fs::write(&principals, "root\nintruder\n").unwrap();
    let v = api.read_until(&host, Duration::from_secs(10), |v| v.get("drift").is_some());
    assert_eq!(
        v["drift"]["paths"],
        json!([principals.display().to_string()]),
        "{}",
        daemon.log()
    );
    assert!(v["drift"]["time"].as_str().is_some(), "{v}");
    assert_eq!(std::fs::read_to_string(&principals).unwrap(), "root\n");
    assert!(daemon.log().contains("repaired"), "{}", daemon.log());

    // The CA keys and gatepass's sshd_config lines are changed while hostd
    // is stopped: it repairs both as it starts, and reports both at once.
    drop(daemon);
    let ca = rig.managed("user_ca.pub");
    let dropin = rig.sshd.dir.join("sshd_config.d/50-gatepass.conf");
    let (ca_text, dropin_text) = (
        std::fs::read_to_string(&ca).unwrap(),
        std::fs::read_to_string(&dropin).unwrap(),
    );
    std::fs::write(
        &ca,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHandEdited hand\n",
    )
    .unwrap();
    std::fs::write(&dropin, "# emptied by hand\n").unwrap();
    let daemon = rig.run("info", "hostd2.log");
    let mut want = vec![ca.display().to_string(), dropin.display().to_string()];
    want.sort();
    let v = api.read_until(&host, Duration::from_secs(10), |v| {
        v["drift"]["paths"] != json!([principals.display().to_string()])
    });
    assert_eq!(v["drift"]["paths"], json!(want), "{}", daemon.log());
    assert_eq!(std::fs::read_to_string(&ca).unwrap(), ca_text);
    assert_eq!(std::fs::read_to_string(&dropin).unwrap(), dropin_text);

    // The report is on the audit record: the host's ack, with its drift.
    let acks_with_drift = audited_requests(&api, "hosts/self/ack")
        .iter()
        .filter(|e| e["request"]["data"]["drift"].is_array())
        .count();
    assert!(acks_with_drift >= 1);
}

/// The host trusted a CA of its own and revoked keys of its own before
/// gatepass: after setup, gatepass's lines replace those two settings, and
/// hostd merges the host's files into its own, so that both stay in force,
/// and a later change of the host's revocations reaches sshd at the next
/// check without being reported as drift.
#[test]
fn the_hosts_own_trusted_cas_and_revoked_keys_stay_in_force() {
    let (server, api) = server_with_ca();
    api.write(
        "ssh/roles/u",
        json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "root", "ttl": "10m"}),
    );
    let join = api.write("hosts/join-tokens", json!({"ttl": "10m"}))["data"]["join_token"]
        .as_str()
        .unwrap()
        .to_string();
    let own = std::cell::RefCell::new(PathBuf::new());
    let rig = Rig::start_with(|dir| {
        let d = dir.join("own");
        std::fs::create_dir(&d).unwrap();
        let ca = keygen(&d, "own_ca", "ed25519", None);
        std::fs::write(d.join("revoked_keys"), "# keys this host refuses\n").unwrap();
        *own.borrow_mut() = d.clone();
        vec![
            format!("TrustedUserCAKeys {}", pub_path(&ca).display()),
            format!("RevokedKeys {}", d.join("revoked_keys").display()),
        ]
    });
    let own = own.into_inner();
    let revoked_keys = own.join("revoked_keys");
    // alice holds a certificate of the host's own CA; mallory and bob hold
    // gatepass's, and the host's own list revokes mallory's key.
    let alice = keygen(&own, "alice", "ed25519", None);
    let signed = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(own.join("own_ca"))
        .args(["-I", "alice", "-n", "root"])
        .arg(pub_path(&alice))
        .output()
        .unwrap();
    assert!(signed.status.success(), "{signed:?}");
    let alice_cert = own.join("alice-cert.pub");
    let gatepass_cert = |name: &str| {
        let key = keygen(&own, name, "ed25519", None);
        let v = api.write(
            "ssh/sign/u",
            json!({"public_key": std::fs::read_to_string(pub_path(&key)).unwrap(), "valid_principals": "root"}),
        );
        let cert = own.join(format!("{name}-cert.pub"));
        std::fs::write(&cert, v["data"]["signed_key"].as_str().unwrap()).unwrap();
        let serial = v["data"]["serial_number"].as_str().unwrap().to_string();
        (key, cert, serial)
    };
    let (mallory, mallory_cert, _) = gatepass_cert("mallory");
    let (bob, bob_cert, _) = gatepass_cert("bob");
    let (carol, carol_cert, carol_serial) = gatepass_cert("carol");
    // The list is replaced as editors do (a new file renamed over it), so
    // that hostd never reads it half written.
    let replace = |text: &str| {
        let tmp = own.join("revoked_keys.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &revoked_keys).unwrap();
    };
    let mut list = std::fs::read_to_string(&revoked_keys).unwrap();
    list.push_str(&std::fs::read_to_string(pub_path(&mallory)).unwrap());
    replace(&list);
    assert!(rig.login(&alice, Some(&alice_cert)), "{}", rig.sshd.log());

    let (st, out, err) = rig.setup(&server, &join, &[]);
    assert_eq!(st, 0, "{out}{err}");
    for (keyword, file) in [
        ("TrustedUserCAKeys", pub_path(&own.join("own_ca"))),
        ("RevokedKeys", revoked_keys.clone()),
    ] {
        assert!(
            out.contains(&format!("the host's own {keyword} file {}", file.display())),
            "{out}"
        );
    }
    let config = std::fs::read_to_string(&rig.config).unwrap();
    assert!(
        config.contains(&format!(
            "host_revoked_keys = \"{}\"",
            revoked_keys.display()
        )),
        "{config}"
    );
    // sshd now reads gatepass's files, which hold the host's own as well.
    let within = Duration::from_secs(10);
    rig.login_becomes(&bob, Some(&bob_cert), true, within);
    assert!(
        rig.login(&alice, Some(&alice_cert)),
        "the host's own CA is still trusted"
    );
    assert!(
        !rig.login(&mallory, Some(&mallory_cert)),
        "a key the host revoked stays revoked, whoever signed its certificate"
    );

    // A host set up before hostd merged its files (the config without
    // them) gets them at the next setup, from the lines gatepass's replace.
    let text = std::fs::read_to_string(&rig.config).unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("host_user_ca_keys") && !l.starts_with("host_revoked_keys"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&rig.config, &without).unwrap();
    let (st, out, err) = rig.setup(&server, &join, &[]);
    assert_eq!(st, 0, "{out}{err}");
    // Its revocations are taken up again; its CAs, out of force since
    // gatepass's line replaced them, only with a note saying how.
    assert!(out.contains("the host's own RevokedKeys file"), "{out}");
    assert!(out.contains("has not been in force"), "{out}");
    let adopted = std::fs::read_to_string(&rig.config).unwrap();
    assert!(adopted.contains("host_revoked_keys"), "{adopted}");
    assert!(!adopted.contains("host_user_ca_keys"), "{adopted}");

    // The host revokes bob's key too while hostd runs: sshd refuses it
    // after the next check, and that is the host's change, not drift.
    std::fs::write(
        &rig.config,
        text.replace("recheck_seconds = 60", "recheck_seconds = 1"),
    )
    .unwrap();
    let daemon = rig.run("info", "hostd.log");
    list.push_str(&std::fs::read_to_string(pub_path(&bob)).unwrap());
    replace(&list);
    rig.login_becomes(&bob, Some(&bob_cert), false, within);
    assert!(rig.login(&alice, Some(&alice_cert)));
    // Past the pass that wrote it and the acknowledgement it sent.
    std::thread::sleep(Duration::from_secs(2));
    let host = format!("hosts/{}", host_id_of(&rig.config));
    assert!(api.read(&host).get("drift").is_none(), "{}", daemon.log());
    assert!(!daemon.log().contains("repaired"), "{}", daemon.log());

    // A line sshd could not read (it would refuse every key): hostd says
    // which, and merges the last version it could read meanwhile, while
    // the server's revocations still reach sshd.
    replace(&format!("{list}not a key at all\n"));
    let said = "not a public key, line 4";
    let deadline = Instant::now() + within;
    while !daemon.log().contains(said) {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        daemon
            .log()
            .contains("the last version hostd could read, and the keys of its lines"),
        "{}",
        daemon.log()
    );
    assert!(rig.login(&carol, Some(&carol_cert)));
    api.write("ssh/revoke", json!({"serial_number": carol_serial}));
    rig.login_becomes(&carol, Some(&carol_cert), false, within);
    assert!(
        !rig.login(&bob, Some(&bob_cert)),
        "the host's revocations stay"
    );
    assert!(!rig.login(&mallory, Some(&mallory_cert)));
    assert!(rig.login(&alice, Some(&alice_cert)));
    // Checked every second since, and applied again for the revocation:
    // the journal was told once, not at every check.
    assert_eq!(daemon.log().matches(said).count(), 1, "{}", daemon.log());

    // The admin stops merging the host's CA file while hostd runs
    // (`""`: none): the running daemon follows its config at the next check.
    replace(&list);
    let deadline = Instant::now() + within;
    while !daemon.log().contains("no longer left out") {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let config = std::fs::read_to_string(&rig.config).unwrap();
    let ca_line = config
        .lines()
        .find(|l| l.starts_with("host_user_ca_keys"))
        .unwrap()
        .to_string();
    std::fs::write(
        &rig.config,
        config.replace(&ca_line, "host_user_ca_keys = \"\""),
    )
    .unwrap();
    rig.login_becomes(&alice, Some(&alice_cert), false, within);
    assert!(!rig.login(&bob, Some(&bob_cert)));
    assert!(
        !daemon.log().contains("TrustedUserCAKeys file  is missing"),
        "\"\" is none, not a missing file: {}",
        daemon.log()
    );

    // Uninstall gives sshd the host's own lines back.
    drop(daemon);
    let (st, out, err) = run(&mut rig.hostd_cmd(&["uninstall"]));
    assert_eq!(st, 0, "{out}{err}");
    rig.login_becomes(&alice, Some(&alice_cert), true, within);
}

/// sshd's version changes under hostd (here to one before OpenSSH 9.1,
/// which reads dynamic keys' expiry times in local time only): hostd
/// rewrites the keys' times in the form that sshd reads, and that is not
/// reported as drift, since nobody changed the files.
#[test]
fn a_changed_sshd_version_rewrites_key_times_without_reporting_drift() {
    let (_server, api, rig, host) = mapped_host();
    api.write(
        "ssh/roles/dyn",
        json!({"key_type": "dynamic", "default_user": "root", "cidr_list": "127.0.0.0/8", "ttl": "10m"}),
    );
    let daemon = rig.run("info", "hostd.log");
    let creds = api.write("ssh/creds/dyn", json!({"ip": "127.0.0.1", "wait": "10s"}));
    assert_eq!(
        creds["data"]["installed"],
        true,
        "{creds}\n{}",
        daemon.log()
    );
    let keys = rig.managed("authorized_keys/root");
    let utc = std::fs::read_to_string(&keys).unwrap();
    assert!(utc.contains("Z\""), "OpenSSH 9.2 reads UTC: {utc}");
    drop(daemon);

    // The same host, its sshd now saying it is OpenSSH 8.9.
    let old = rig.tmp.path().join("sshd-8.9");
    std::fs::write(
        &old,
        format!(
            "#!/bin/sh\n[ \"$1\" = -V ] && {{ echo 'OpenSSH_8.9p1, OpenSSL 3.0.2 15 Mar 2022' >&2; exit 0; }}\nexec {SSHD} \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&rig.config).unwrap();
    assert!(text.contains(&format!("sshd = \"{SSHD}\"")), "{text}");
    std::fs::write(
        &rig.config,
        text.replace(
            &format!("sshd = \"{SSHD}\""),
            &format!("sshd = {:?}", old.display().to_string()),
        ),
    )
    .unwrap();
    let daemon = rig.run("info", "hostd-8.9.log");
    let started = Instant::now();
    let local = loop {
        let text = std::fs::read_to_string(&keys).unwrap_or_default();
        if text.contains("expiry-time") && !text.contains("Z\"") {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the key's time was not rewritten: {text}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        local.contains(creds["lease_id"].as_str().unwrap()),
        "{local}"
    );
    // The host acknowledged that apply (its installed keys) by now.
    std::thread::sleep(Duration::from_secs(2));
    let v = api.read(&host);
    assert!(v.get("drift").is_none(), "{v}\n{}", daemon.log());
    assert!(!daemon.log().contains("repaired"), "{}", daemon.log());
}

/// The request entries of the audit log for `path`, oldest first.
/// A server keeps a poll's acknowledgement in memory for up to a second
/// before it writes it. When the server crashes, the poll hostd had
/// waiting on it fails, and hostd's next poll says again which state it
/// applied, so that nothing a crash lost stays lost: also when the poll
/// that carried the acknowledgement was answered long before (here polls
/// wait a second, so the crash comes polls after it).
#[test]
fn after_the_server_crashes_hostd_acknowledges_its_state_again() {
    let (mut server, api, rig, host) = mapped_host();
    let first = api.read(&host)["state_index"].clone();
    let text = std::fs::read_to_string(&rig.config).unwrap();
    assert!(text.contains("wait_seconds = 30"), "{text}");
    std::fs::write(
        &rig.config,
        text.replace("wait_seconds = 30", "wait_seconds = 1"),
    )
    .unwrap();
    let daemon = rig.run("info", "hostd.log");
    let acknowledging_polls = |api: &Api| {
        audited_requests(api, "hosts/self/state")
            .into_iter()
            .filter(|e| e["request"]["data"].get("applied").is_some())
            .count()
    };
    // A new state, applied and acknowledged by the poll after it; then
    // time enough for that poll to end and the next to wait without an
    // acknowledgement, and for the audit log's copy to have them.
    api.write("hosts/mappings/root", json!({"principals": "root"}));
    api.read_until(&host, Duration::from_secs(10), |v| {
        v["applied_index"] != first && v["applied_index"] == v["state_index"]
    });
    std::thread::sleep(Duration::from_millis(1500));
    let before = acknowledging_polls(&api);
    assert!(before >= 1, "{}", daemon.log());

    server.crash_and_restart();
    let api = Api {
        client: server.client(),
        rt: rt(),
    };
    let started = Instant::now();
    while acknowledging_polls(&api) <= before {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no poll acknowledged the state again after the crash: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = api.read(&host);
    assert!(v["applied_index"].is_u64(), "{v}");
    assert_eq!(v["applied_index"], v["state_index"], "{v}");
}

fn audited_requests(api: &Api, path: &str) -> Vec<Value> {
    let log = api
        .rt
        .block_on(api.client.request("GET", "sys/audit-log?limit=1000", None))
        .unwrap()
        .unwrap();
    log["data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e["line"].as_str()?).ok())
        .filter(|e| e["type"] == "request" && e["request"]["path"] == path)
        .collect()
}
