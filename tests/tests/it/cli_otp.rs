//! `gatepass ssh otp` and `gatepass ssh creds` as a user runs them against a
//! real dev server: the OTP printed verifies exactly once, the dynamic key
//! lands in a 0600 file and is never printed, and refusals exit 2 with the
//! server's message. Every test has its own HOME, working folder and TMPDIR.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use gatepass_tests::{bin, run, DevServer};
use serde_json::{json, Value};

struct Session {
    server: DevServer,
    home: tempfile::TempDir,
    cwd: tempfile::TempDir,
    tmp: tempfile::TempDir,
}

impl Session {
    /// A dev server with the roles `otp` (root by default, alice allowed,
    /// 127.0.0.0/8 but not 127.0.0.9) and `dyn` (app, 127.0.0.0/8).
    fn start() -> Session {
        let s = Session {
            server: DevServer::start(),
            home: tempfile::tempdir().expect("home"),
            cwd: tempfile::tempdir().expect("cwd"),
            tmp: tempfile::tempdir().expect("tmp"),
        };
        ok(&mut s.gatepass(&[
            "write",
            "ssh/roles/otp",
            "key_type=otp",
            "default_user=root",
            "allowed_users=alice",
            "cidr_list=127.0.0.0/8",
            "exclude_cidr_list=127.0.0.9/32",
            "port=2222",
            "ttl=5m",
        ]));
        ok(&mut s.gatepass(&[
            "write",
            "ssh/roles/dyn",
            "key_type=dynamic",
            "default_user=app",
            "cidr_list=127.0.0.0/8",
            "ttl=10m",
        ]));
        s
    }

    fn gatepass(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("gatepass"));
        for v in gatepass_tests::CLI_AMBIENT_ENV {
            c.env_remove(v);
        }
        c.env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join(".config"))
            .env("TMPDIR", self.tmp.path())
            .envs(self.server.cli_env())
            .current_dir(self.cwd.path())
            .args(args);
        c
    }

    /// `POST ssh/verify {otp}` as a host's helper sends it (no token).
    fn verify(&self, otp: &str) -> (u16, Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = gatepass_api::Client::new(&self.server.settings(None)).unwrap();
        let body = json!({ "otp": otp }).as_object().unwrap().clone();
        match rt.block_on(client.request("POST", "ssh/verify", Some(&body))) {
            Ok(v) => (200, v.unwrap_or(Value::Null)),
            Err(gatepass_api::Error::Api { status, errors }) => (status, json!(errors)),
            Err(e) => panic!("verify: {e}"),
        }
    }

    /// Leases under ssh/creds/<role>/.
    fn leases(&self, role: &str) -> Vec<String> {
        let (code, out, err) = run(&mut self.gatepass(&[
            "list",
            "--format",
            "json",
            &format!("sys/leases/lookup/ssh/creds/{role}/"),
        ]));
        match code {
            0 => serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")),
            2 if err.contains("no value found") => vec![],
            _ => panic!("list leases: {code} {out}{err}"),
        }
    }
}

fn ok(cmd: &mut Command) -> String {
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "{cmd:?} failed\nstdout: {out}\nstderr: {err}");
    out
}

fn row<'a>(table: &'a str, key: &str) -> Option<&'a str> {
    table.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim())
    })
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn otp_prints_a_password_the_server_verifies_once() {
    let s = Session::start();

    // $ gatepass ssh otp --role otp root@127.0.0.1
    let out = ok(&mut s.gatepass(&["ssh", "otp", "--role", "otp", "root@127.0.0.1"]));
    let otp = row(&out, "key").expect("key row").to_string();
    assert!(is_uuid(&otp), "{out}");
    assert_eq!(row(&out, "username"), Some("root"), "{out}");
    assert_eq!(row(&out, "ip"), Some("127.0.0.1"), "{out}");
    assert_eq!(row(&out, "port"), Some("2222"), "{out}");
    assert_eq!(row(&out, "lease_duration"), Some("5m"), "{out}");
    assert!(
        row(&out, "lease_id").is_some_and(|l| l.starts_with("ssh/creds/otp/")),
        "{out}"
    );

    // What the host's helper does at login: accepted once, then never again.
    let (status, v) = s.verify(&otp);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["data"],
        json!({"username": "root", "ip": "127.0.0.1", "role_name": "otp"})
    );
    let (status, v) = s.verify(&otp);
    assert_eq!(status, 400, "second use: {v}");

    // --field key: just the OTP, for scripts. No user@: the role's default
    // user; a name is resolved to its IPv4 address.
    let out = ok(&mut s.gatepass(&["ssh", "otp", "--role", "otp", "--field", "key", "localhost"]));
    // As Vault's CLI prints a field into a pipe: the value, nothing added.
    let otp = out.as_str();
    assert!(is_uuid(otp), "{out:?}");
    let (status, v) = s.verify(otp);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["username"], "root");
    assert_eq!(v["data"]["ip"], "127.0.0.1");

    // --format json: the server's answer.
    let out = ok(&mut s.gatepass(&[
        "ssh",
        "otp",
        "--role",
        "otp",
        "--format",
        "json",
        "alice@127.0.0.2",
    ]));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["data"]["username"], "alice");
    assert_eq!(v["data"]["ip"], "127.0.0.2");
    assert_eq!(v["data"]["key_type"], "otp");
    let otp = v["data"]["key"].as_str().unwrap();
    assert_eq!(s.verify(otp).0, 200);

    // Nothing was written anywhere.
    assert!(names(s.cwd.path()).is_empty());
    assert!(names(s.tmp.path()).is_empty());
}

#[test]
fn creds_writes_the_private_key_to_a_private_file_and_never_prints_it() {
    let s = Session::start();

    // $ gatepass ssh creds --role dyn app@127.0.0.1
    let out = ok(&mut s.gatepass(&["ssh", "creds", "--role", "dyn", "app@127.0.0.1"]));
    let key = s.cwd.path().join("gatepass_dyn_127.0.0.1");
    assert_eq!(names(s.cwd.path()), ["gatepass_dyn_127.0.0.1"]);
    assert_eq!(mode(&key), 0o600);
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(
        text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
        "{text}"
    );
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    for line in text.lines().filter(|l| l.len() > 20) {
        assert!(!out.contains(line), "the key is printed: {out}");
    }
    assert!(
        out.contains(&key.file_name().unwrap().to_string_lossy().to_string()),
        "{out}"
    );
    assert!(
        out.contains("ssh -i ./gatepass_dyn_127.0.0.1 app@127.0.0.1"),
        "{out}"
    );
    let lease = row(&out, "lease_id").expect("lease_id row").to_string();
    assert!(lease.starts_with("ssh/creds/dyn/"), "{out}");
    assert!(
        row(&out, "expires").is_some_and(|e| e.ends_with('Z')),
        "{out}"
    );
    assert_eq!(row(&out, "username"), Some("app"), "{out}");
    assert_eq!(s.leases("dyn").len(), 1);

    // OpenSSH reads it.
    let (code, public, err) = run(Command::new("ssh-keygen").arg("-y").arg("-f").arg(&key));
    assert_eq!(code, 0, "{err}");
    assert!(public.starts_with("ssh-ed25519 "), "{public}");

    // Not overwritten, and no credential is made for nothing.
    let (code, _, err) = run(&mut s.gatepass(&["ssh", "creds", "--role", "dyn", "app@127.0.0.1"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text);
    assert_eq!(s.leases("dyn").len(), 1);

    // --force replaces it; --output writes elsewhere; json has no key.
    ok(&mut s.gatepass(&["ssh", "creds", "--role", "dyn", "--force", "app@127.0.0.1"]));
    assert_ne!(std::fs::read_to_string(&key).unwrap(), text);
    let other = s.tmp.path().join("keys").join("web");
    std::fs::create_dir(s.tmp.path().join("keys")).unwrap();
    let out = ok(&mut s.gatepass(&[
        "ssh",
        "creds",
        "--role",
        "dyn",
        "--format",
        "json",
        "--output",
        other.to_str().unwrap(),
        "127.0.0.1",
    ]));
    assert_eq!(mode(&other), 0o600);
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(v["data"].get("key").is_none(), "{v}");
    assert_eq!(v["data"]["key_file"], other.display().to_string());
    assert_eq!(v["data"]["username"], "app");
    assert_eq!(s.leases("dyn").len(), 3);
}

#[test]
fn refusals_exit_2_with_the_servers_message_and_store_nothing() {
    let s = Session::start();
    let fails = |args: &[&str], code: i32, says: &str| {
        let (c, out, err) = run(&mut s.gatepass(args));
        assert_eq!(c, code, "{args:?}: {out}{err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !out.contains("PRIVATE KEY") && out.trim().is_empty(),
            "{out}"
        );
        err
    };
    // Unknown role.
    fails(
        &["ssh", "otp", "--role", "nope", "root@127.0.0.1"],
        2,
        "unknown role: nope",
    );
    fails(
        &["ssh", "creds", "--role", "nope", "root@127.0.0.1"],
        2,
        "unknown role: nope",
    );
    // An IP outside the role's CIDRs, and one in its excluded range.
    fails(
        &["ssh", "otp", "--role", "otp", "root@10.9.9.9"],
        2,
        "does not belong to role otp",
    );
    fails(
        &["ssh", "otp", "--role", "otp", "root@127.0.0.9"],
        2,
        "exclude_cidr_list",
    );
    fails(
        &["ssh", "creds", "--role", "dyn", "app@192.0.2.1"],
        2,
        "does not belong to role dyn",
    );
    // A user the role does not allow.
    fails(
        &["ssh", "otp", "--role", "otp", "mallory@127.0.0.1"],
        2,
        "allowed_users",
    );
    // The wrong command for the role: the credential made is given back.
    fails(
        &["ssh", "otp", "--role", "dyn", "127.0.0.1"],
        2,
        "dynamic-key role",
    );
    fails(
        &["ssh", "creds", "--role", "otp", "127.0.0.1"],
        2,
        "one-time password role",
    );
    assert!(s.leases("dyn").is_empty(), "{:?}", s.leases("dyn"));
    assert!(s.leases("otp").is_empty(), "{:?}", s.leases("otp"));
    // A CA role has no creds.
    ok(&mut s.gatepass(&["write", "ssh/config/ca", "key_type=ssh-ed25519"]));
    ok(&mut s.gatepass(&[
        "write",
        "ssh/roles/ca",
        "key_type=ca",
        "allow_user_certificates=true",
        "allowed_users=*",
    ]));
    fails(
        &["ssh", "otp", "--role", "ca", "root@127.0.0.1"],
        2,
        "role ca",
    );
    // Bad destinations never reach the server; unknown names do not resolve.
    fails(
        &["ssh", "otp", "--role", "otp", "root@"],
        2,
        "not a destination",
    );
    fails(&["ssh", "otp", "--role", "otp", "-oProxyCommand=x"], 2, "");
    fails(
        &["ssh", "otp", "--role", "otp", "root@no-such-host.invalid"],
        1,
        "cannot resolve",
    );
    // No token: the server says no, and the hint says why.
    let (code, _, err) = run(s
        .gatepass(&["ssh", "otp", "--role", "otp", "root@127.0.0.1"])
        .env_remove("GATEPASS_TOKEN"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("gatepass login"), "{err}");
    assert!(names(s.cwd.path()).is_empty());
}
