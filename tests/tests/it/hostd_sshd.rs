//! gatepass-hostd against a real sshd, without a server: desired states
//! from JSON files (`gatepass-hostd __apply-state`) go through hostd's real
//! apply, sshd_config and reload code, and the real `ssh` client logs in or
//! is refused.
//!
//! The harness's sshd Includes `<its folder>/sshd_config.d/*.conf` first,
//! so hostd manages a drop-in there; the managed folder is
//! `<its folder>/gatepass`; reloads are `kill -HUP <sshd pid>`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gatepass_tests::sshd::{keygen, pub_path, sign_user_key, ssh_keygen, Sshd, SshdOptions, SSHD};
use gatepass_tests::{bin, run};
use serde_json::{json, Value};

#[allow(clippy::disallowed_methods)]
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct Rig {
    sshd: Sshd,
    keys: tempfile::TempDir,
}

impl Rig {
    fn start() -> Rig {
        let mut sshd = Sshd::new(SshdOptions::default());
        let dropins = sshd.dir.join("sshd_config.d");
        std::fs::create_dir(&dropins).unwrap();
        sshd.options
            .extra_config
            .push(format!("Include {}/*.conf", dropins.display()));
        sshd.launch();
        Rig {
            sshd,
            keys: tempfile::tempdir().unwrap(),
        }
    }

    fn hostd(&self, args: &[&str]) -> (i32, String, String) {
        let pid = self.sshd.pid().unwrap();
        self.hostd_reloading_with(args, &format!("kill -HUP {pid}"))
    }

    /// [`Rig::hostd`] with another reload command.
    fn hostd_reloading_with(&self, args: &[&str], reload: &str) -> (i32, String, String) {
        let d = &self.sshd.dir;
        let mut cmd = Command::new(bin("gatepass-hostd"));
        cmd.args(args)
            .arg("--config")
            .arg(d.join("no-such-hostd.toml"))
            .arg("--sshd-config")
            .arg(&self.sshd.config)
            .arg("--sshd-config-dir")
            .arg(d.join("sshd_config.d"))
            .arg("--managed-dir")
            .arg(d.join("gatepass"))
            .arg("--state-dir")
            .arg(d.join("state"))
            .args(["--reload-command", reload]);
        run(&mut cmd)
    }

    /// Applies a state; waits for sshd to listen again when it reloaded.
    fn apply(&self, state: &Value) -> String {
        let file = self.keys.path().join("state.json");
        std::fs::write(&file, state.to_string()).unwrap();
        let before = self.listening();
        let (st, out, err) = self.hostd(&["__apply-state", file.to_str().unwrap()]);
        assert_eq!(st, 0, "apply-state failed: {out}{err}");
        if err.contains("reloaded sshd") {
            self.wait_listening(before);
        }
        out
    }

    fn listening(&self) -> usize {
        self.sshd.log().matches("Server listening on").count()
    }

    fn wait_listening(&self, before: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.listening() <= before {
            assert!(
                Instant::now() < deadline,
                "sshd did not come back:\n{}",
                self.sshd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    fn login(&self, key: &Path, cert: Option<&Path>) -> bool {
        let mut c = self.sshd.client().identity(key);
        if let Some(cert) = cert {
            c = c.certificate(cert);
        }
        c.run("true").0 == 0
    }

    fn managed(&self, rel: &str) -> PathBuf {
        self.sshd.dir.join("gatepass").join(rel)
    }
}

fn base_state(ca_pub: &Path) -> Value {
    json!({
        "index": 1,
        "user_ca_keys": std::fs::read_to_string(ca_pub).unwrap(),
        "krl": "",
        "dynamic_keys": [],
    })
}

/// A copy of a key without its certificate beside it (ssh would pick it up).
fn bare_key(dir: &Path, name: &str) -> PathBuf {
    let sub = dir.join(format!("bare-{name}"));
    std::fs::create_dir_all(&sub).unwrap();
    keygen(&sub, name, "ed25519", None)
}

#[test]
fn certificates_krl_principals_and_dynamic_keys() {
    let rig = Rig::start();
    let k = rig.keys.path();
    let ca = keygen(k, "ca", "ed25519", None);
    let user = keygen(k, "user", "ed25519", None);
    let cert = sign_user_key(&ca, &pub_path(&user), "user-1", &["root"], "-1m:+10m");
    let config_before = std::fs::read_to_string(&rig.sshd.config).unwrap();
    assert!(!rig.login(&user, Some(&cert)), "not trusted before hostd");

    // CA trust: the drop-in appears, sshd reloads, the certificate logs in.
    let mut state = base_state(&pub_path(&ca));
    rig.apply(&state);
    let dropin = rig.sshd.dir.join("sshd_config.d/50-gatepass.conf");
    assert!(dropin.exists());
    assert_eq!(
        std::fs::read_to_string(&rig.sshd.config).unwrap(),
        config_before
    );
    assert!(rig.login(&user, Some(&cert)), "{}", rig.sshd.log());

    // A dynamic key: written with expiry-time, no reload needed.
    let dynk = bare_key(k, "dyn");
    let expires = now() + 5;
    state["index"] = json!(2);
    state["dynamic_keys"] = json!([{
        "user": "root",
        "public_key": std::fs::read_to_string(pub_path(&dynk)).unwrap().trim(),
        "options": "no-agent-forwarding",
        "expires": expires,
        "lease_id": "ssh/creds/dyn/lease-1",
    }]);
    let reloads = rig.listening();
    rig.apply(&state);
    assert_eq!(
        rig.listening(),
        reloads,
        "a key file change does not reload sshd"
    );
    let line = std::fs::read_to_string(rig.managed("authorized_keys/root")).unwrap();
    assert!(
        line.starts_with("expiry-time=\"") && line.trim_end().ends_with("ssh/creds/dyn/lease-1"),
        "{line}"
    );
    assert!(rig.login(&dynk, None), "{}", rig.sshd.log());
    // sshd itself enforces the (UTC, `Z`) expiry, even with the line still there.
    while now() <= expires {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(rig.managed("authorized_keys/root").exists());
    assert!(!rig.login(&dynk, None), "expired key still logs in");
    // Re-applying the same state removes the expired key's file.
    rig.apply(&state);
    assert!(!rig.managed("authorized_keys/root").exists());

    // Revocation: a KRL naming the certificate's key id.
    let spec = k.join("krl.spec");
    std::fs::write(&spec, "id: user-1\n").unwrap();
    let krl = k.join("revoked.krl");
    ssh_keygen([
        "-k".as_ref(),
        "-f".as_ref(),
        krl.as_os_str(),
        "-s".as_ref(),
        pub_path(&ca).as_os_str(),
        spec.as_os_str(),
    ]);
    state["index"] = json!(3);
    state["krl"] = json!(base64_encode(&std::fs::read(&krl).unwrap()));
    rig.apply(&state);
    assert!(
        !rig.login(&user, Some(&cert)),
        "a revoked certificate logs in"
    );

    // Mapped principals: root admits certificates for "ops" only.
    let user2 = keygen(k, "user2", "ed25519", None);
    let ops = sign_user_key(&ca, &pub_path(&user2), "user-2", &["ops"], "-1m:+10m");
    let user3 = keygen(k, "user3", "ed25519", None);
    let rootcert = sign_user_key(&ca, &pub_path(&user3), "user-3", &["root"], "-1m:+10m");
    assert!(!rig.login(&user2, Some(&ops)));
    assert!(rig.login(&user3, Some(&rootcert)));
    state["index"] = json!(4);
    state["principals"] = json!({"root": ["ops"]});
    rig.apply(&state);
    assert!(rig.login(&user2, Some(&ops)), "{}", rig.sshd.log());
    assert!(
        !rig.login(&user3, Some(&rootcert)),
        "a certificate for an unmapped principal"
    );
    assert_eq!(
        std::fs::read_to_string(rig.managed("principals/root")).unwrap(),
        "ops\n"
    );

    // Uninstall: drop-in and files gone, config valid, certificates refused.
    let before = rig.listening();
    let (st, out, err) = rig.hostd(&["uninstall"]);
    assert_eq!(st, 0, "{out}{err}");
    rig.wait_listening(before);
    assert!(!dropin.exists());
    assert!(!rig.sshd.dir.join("gatepass").exists());
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
    assert!(!rig.login(&user2, Some(&ops)));
}

#[test]
fn uninstall_dry_run_and_bad_state() {
    let rig = Rig::start();
    let k = rig.keys.path();
    let ca = keygen(k, "ca", "ed25519", None);
    let mut state = base_state(&pub_path(&ca));
    rig.apply(&state);
    // A state with a bad CA key changes nothing and fails loudly.
    state["user_ca_keys"] = json!("ssh-ed25519 notbase64!!\n");
    let file = k.join("bad.json");
    std::fs::write(&file, state.to_string()).unwrap();
    let before = std::fs::read(rig.managed("user_ca.pub")).unwrap();
    let (st, _, err) = rig.hostd(&["__apply-state", file.to_str().unwrap()]);
    assert_ne!(st, 0);
    assert!(err.contains("bad state"), "{err}");
    assert_eq!(std::fs::read(rig.managed("user_ca.pub")).unwrap(), before);
    // uninstall --dry-run shows the removals and removes nothing.
    let (st, out, err) = rig.hostd(&["uninstall", "--dry-run"]);
    assert_eq!(st, 0, "{err}");
    assert!(
        out.contains("50-gatepass.conf") && out.contains("-TrustedUserCAKeys"),
        "{out}"
    );
    // Every file it would remove, gatepass's note of the state it wrote too.
    for file in ["user_ca.pub", "revoked.krl", ".index"] {
        assert!(
            out.contains(&rig.managed(file).display().to_string()),
            "{file}: {out}"
        );
    }
    assert!(rig.managed("user_ca.pub").exists());
    assert!(rig.managed(".index").exists());
}

fn base64_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
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

#[test]
fn a_failed_reload_is_owed_until_made_and_uninstall_keeps_the_files_meanwhile() {
    let rig = Rig::start();
    let k = rig.keys.path();
    let ca = keygen(k, "ca", "ed25519", None);
    let state = base_state(&pub_path(&ca));
    rig.apply(&state);
    let krl = rig.managed("revoked.krl");
    assert!(krl.exists());
    // The config is stripped, the reload fails: the files stay, since the
    // running sshd's config still names them.
    let (st, out, err) = rig.hostd_reloading_with(&["uninstall"], "false");
    assert_ne!(st, 0, "{out}{err}");
    assert!(krl.exists());
    // Run again, the config has nothing more to change; the reload is
    // still owed, fails again, and the files still stay.
    let (st, out, err) = rig.hostd_reloading_with(&["uninstall"], "false");
    assert_ne!(st, 0, "a second run skipped the owed reload: {out}{err}");
    assert!(krl.exists(), "the KRL the running sshd reads was removed");
    // Once sshd reloads, the files go.
    let before = rig.listening();
    let (st, out, err) = rig.hostd(&["uninstall"]);
    assert_eq!(st, 0, "{out}{err}");
    rig.wait_listening(before);
    assert!(!rig.sshd.dir.join("gatepass").exists());
}

/// The time zone of the two whose summer time is on now (one of them
/// always is): Sydney's runs from October to April, Berlin's from March
/// to October. `date` says the offset now; the standard ones are fixed.
fn a_zone_in_summer_time() -> &'static str {
    for (zone, standard) in [("Australia/Sydney", "+1000"), ("Europe/Berlin", "+0100")] {
        let (code, now, err) = run(Command::new("date").env("TZ", zone).arg("+%z"));
        assert_eq!(code, 0, "{err}");
        if now.trim() != standard {
            return zone;
        }
    }
    panic!("neither Sydney nor Berlin is on summer time now")
}

/// sshd before OpenSSH 9.1 reads an `expiry-time` without `Z` only, as
/// local standard time. The lines hostd writes for such an sshd, checked
/// against the real sshd (9.2 reads that form the same way): in a zone on
/// summer time now, a key that expired 20 minutes ago is refused (written
/// as summer time it would still let in for 40 minutes) and one that
/// expires in 20 minutes logs in.
#[test]
fn expiry_in_local_time_is_read_by_sshd_as_hostd_meant_it() {
    let zone = a_zone_in_summer_time();
    let keys = tempfile::tempdir().unwrap();
    let mut sshd = Sshd::new(SshdOptions {
        env: vec![("TZ".into(), zone.into())],
        ..SshdOptions::default()
    });
    let authorized = sshd.dir.join("authorized_keys");
    sshd.options
        .extra_config
        .push(format!("AuthorizedKeysFile {}/%u", authorized.display()));
    std::fs::create_dir(&authorized).unwrap();
    sshd.launch();
    let line = |key: &Path, expires: i64| {
        let public = std::fs::read_to_string(pub_path(key)).unwrap();
        let (code, out, err) = run(Command::new(bin("gatepass-hostd-testkit"))
            .env("TZ", zone)
            .args(["key-line-local", "--user", "root", "--key", public.trim()])
            .arg(format!("--expires={expires}")));
        assert_eq!(code, 0, "{err}");
        assert!(
            out.starts_with("expiry-time=\"2") && !out.contains("Z\""),
            "{out}"
        );
        out
    };
    let fresh = keygen(keys.path(), "fresh", "ed25519", None);
    let stale = keygen(keys.path(), "stale", "ed25519", None);
    let now = now();
    let text = line(&fresh, now + 1200) + &line(&stale, now - 1200);
    std::fs::write(authorized.join("root"), &text).unwrap();
    let login = |key: &Path| sshd.client().identity(key).run("true").0 == 0;
    assert!(login(&fresh), "{zone}:\n{text}\n{}", sshd.log());
    assert!(!login(&stale), "{zone}:\n{text}\n{}", sshd.log());
}
