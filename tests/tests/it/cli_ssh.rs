//! `gatepass ssh …` as a user runs it: an admin sets up the CA and a role
//! with the CLI, the user signs a key, gets credentials into an ssh-agent
//! and trusts the CA for hosts, and the real `ssh` to a private sshd judges
//! the result. Every test has its own HOME, working folder and TMPDIR, so
//! the real ~/.ssh is never touched. Run as root (sshd needs it).

use std::borrow::BorrowMut;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gatepass_tests::ssh::{describe_cert, keypair};
use gatepass_tests::sshd::{Agent, Sshd, SshdOptions};
use gatepass_tests::{bin, run, DevServer};
use serde_json::Value;

/// One person's shell: a server, a private HOME, a working folder and a
/// TMPDIR whose emptiness shows that no key was left behind.
struct Session {
    server: DevServer,
    home: tempfile::TempDir,
    cwd: tempfile::TempDir,
    tmp: tempfile::TempDir,
    /// The CA's public key, as `config/ca` returned it.
    ca_pub: String,
}

impl Session {
    /// A dev server whose `ssh` mount has a CA and the role `dev`: user
    /// certificates for root or alice, root by default, 1h.
    fn start() -> Session {
        let s = Session {
            server: DevServer::start(),
            home: tempfile::tempdir().expect("home"),
            cwd: tempfile::tempdir().expect("cwd"),
            tmp: tempfile::tempdir().expect("tmp"),
            ca_pub: String::new(),
        };
        // $ gatepass write --field public_key ssh/config/ca key_type=ssh-ed25519
        let ca_pub = ok(s.gatepass(&[
            "write",
            "--field",
            "public_key",
            "ssh/config/ca",
            "key_type=ssh-ed25519",
        ]));
        assert!(ca_pub.starts_with("ssh-ed25519 "), "{ca_pub}");
        ok(s.gatepass(&[
            "write",
            "ssh/roles/dev",
            "key_type=ca",
            "allow_user_certificates=true",
            "allowed_users=root,alice",
            "default_user=root",
            "ttl=1h",
            "allowed_extensions=permit-pty,permit-agent-forwarding",
        ]));
        Session { ca_pub, ..s }
    }

    /// `gatepass ARGS…` in the working folder with HOME, TMPDIR and the
    /// server's address, CA and root token.
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

    fn ssh_dir(&self) -> PathBuf {
        self.home.path().join(".ssh")
    }

    /// An sshd that trusts the session's CA for user certificates.
    fn sshd(&self) -> Sshd {
        let mut sshd = Sshd::new(SshdOptions::default());
        let ca = sshd.write_file("user_ca.pub", &self.ca_pub);
        sshd.options
            .extra_config
            .push(format!("TrustedUserCAKeys {}", ca.display()));
        sshd.launch();
        sshd
    }

    /// Serial numbers of every certificate the mount has issued.
    fn issued(&self) -> Vec<String> {
        let (code, out, err) = run(&mut self.gatepass(&["list", "--format", "json", "ssh/certs"]));
        match code {
            0 => serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")),
            2 if err.contains("no value found") => vec![],
            _ => panic!("list ssh/certs: {code} {out}{err}"),
        }
    }
}

/// Runs and expects success; returns stdout.
fn ok(mut cmd: impl BorrowMut<Command>) -> String {
    let cmd = cmd.borrow_mut();
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "{cmd:?} failed\nstdout: {out}\nstderr: {err}");
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// File names in a folder, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The `Value` column of a Key/Value table row.
fn row<'a>(table: &'a str, key: &str) -> Option<&'a str> {
    table.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim())
    })
}

/// The principals block of `ssh-keygen -L`.
fn principals(described: &str) -> Vec<String> {
    described
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("Principals:"))
        .skip(1)
        .take_while(|l| l.starts_with("\t\t") || l.starts_with("                "))
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn sign_writes_the_certificate_where_ssh_looks_and_it_logs_in() {
    let s = Session::start();
    std::fs::create_dir(s.ssh_dir()).expect("mkdir ~/.ssh");
    // $ ssh-keygen -t ed25519 -f ~/.ssh/id_ed25519 -N ''
    let (key, _) = keypair(&s.ssh_dir(), "id_ed25519", "ed25519", None);

    // $ gatepass ssh sign --role dev --principals root,alice --ttl 30m --extension permit-pty
    let out = ok(s.gatepass(&[
        "ssh",
        "sign",
        "--role",
        "dev",
        "--principals",
        "root,alice",
        "--ttl",
        "30m",
        "--extension",
        "permit-pty",
    ]));
    let cert_file = s.ssh_dir().join("id_ed25519-cert.pub");
    assert!(
        out.contains(&cert_file.display().to_string()),
        "names the file: {out}"
    );
    assert_eq!(mode(&cert_file), 0o644);
    // No temporary file stays beside it.
    assert_eq!(
        names(&s.ssh_dir()),
        ["id_ed25519", "id_ed25519-cert.pub", "id_ed25519.pub"]
    );

    let cert = std::fs::read_to_string(&cert_file).expect("read certificate");
    let described = describe_cert(s.tmp.path(), &cert);
    std::fs::remove_file(s.tmp.path().join("describe-cert.pub")).ok();
    assert_eq!(principals(&described), ["root", "alice"], "{described}");
    assert!(described.contains("user certificate"), "{described}");
    assert!(described.contains("permit-pty"), "{described}");
    let serial = row(&out, "serial_number").expect("serial row");
    assert_eq!(
        u64::from_str_radix(serial, 16)
            .expect("hex serial")
            .to_string(),
        described
            .lines()
            .find_map(|l| l.trim().strip_prefix("Serial: "))
            .expect("Serial line"),
        "{out}\n{described}"
    );
    assert_eq!(row(&out, "valid_principals"), Some("[root alice]"), "{out}");
    assert!(
        row(&out, "valid_before").is_some_and(|v| v.ends_with("(in 30m)")),
        "{out}"
    );
    assert!(s.issued().contains(&serial.to_string()));

    // ssh picks up id_ed25519-cert.pub beside the key by itself.
    let sshd = s.sshd();
    let said = sshd.client().identity(&key).run_ok("echo hello");
    assert_eq!(said, "hello\n");

    // --format json prints the API's answer; the file is what it signed.
    let out = ok(s.gatepass(&["ssh", "sign", "--role", "dev", "--format", "json"]));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let signed = v["data"]["signed_key"].as_str().expect("signed_key");
    assert_eq!(
        std::fs::read_to_string(&cert_file).unwrap().trim(),
        signed.trim()
    );
    let described = describe_cert(s.tmp.path(), signed);
    assert_eq!(
        principals(&described),
        ["root"],
        "role default: {described}"
    );
}

#[test]
fn issued_credentials_go_into_the_agent_only_and_log_in() {
    let s = Session::start();
    let agent = Agent::start();
    let sshd = s.sshd();
    let before = s.issued();

    // $ gatepass ssh issue-credentials --role dev --ttl 10m --add-to-agent
    let out = ok(s
        .gatepass(&[
            "ssh",
            "issue-credentials",
            "--role",
            "dev",
            "--ttl",
            "10m",
            "--add-to-agent",
        ])
        .env("SSH_AUTH_SOCK", &agent.socket));
    assert!(out.contains("added to the ssh-agent"), "{out}");
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    let serial = row(&out, "serial_number").expect("serial row").to_string();
    assert_eq!(s.issued().len(), before.len() + 1);

    // $ ssh-add -l; ssh-add -L
    let listed = agent.list();
    assert!(
        listed.contains("(ED25519)") && listed.contains("(ED25519-CERT)"),
        "key and certificate: {listed}"
    );
    assert!(
        listed.contains(&format!("gatepass:ssh/dev:{serial}")),
        "named after the role, not a temporary path: {listed}"
    );
    let (_, public, _) = agent.ssh_add(["-L"]);
    assert!(
        public
            .lines()
            .any(|l| l.starts_with("ssh-ed25519-cert-v01@openssh.com ")),
        "{public}"
    );

    // Nothing was left on disk: not in TMPDIR, the working folder or HOME.
    assert!(names(s.tmp.path()).is_empty(), "{:?}", names(s.tmp.path()));
    assert!(names(s.cwd.path()).is_empty(), "{:?}", names(s.cwd.path()));
    assert!(!s.ssh_dir().exists());

    // $ ssh root@host echo hello   (the agent is the only source of keys)
    let said = sshd.client().agent(&agent).run_ok("echo hello");
    assert_eq!(said, "hello\n");
}

#[test]
fn the_agent_drops_the_key_when_the_certificate_expires() {
    let s = Session::start();
    let agent = Agent::start();
    let out = ok(s
        .gatepass(&[
            "ssh",
            "issue-credentials",
            "--role",
            "dev",
            "--ttl",
            "3s",
            "--add-to-agent",
        ])
        .env("SSH_AUTH_SOCK", &agent.socket));
    assert!(out.contains("for 3s") || out.contains("for 2s"), "{out}");
    assert!(agent.list().contains("ED25519-CERT"));
    // ssh-add -t: the agent forgets both once the certificate is over.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.list().contains("no identities") {
        assert!(Instant::now() < deadline, "still held: {}", agent.list());
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn issued_credentials_as_files_log_in_and_are_not_overwritten() {
    let s = Session::start();
    // $ gatepass ssh issue-credentials --role dev --principals root
    let out = ok(s.gatepass(&[
        "ssh",
        "issue-credentials",
        "--role",
        "dev",
        "--principals",
        "root",
    ]));
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    let key = s.cwd.path().join("gatepass_dev");
    let cert = s.cwd.path().join("gatepass_dev-cert.pub");
    assert_eq!(
        names(s.cwd.path()),
        ["gatepass_dev", "gatepass_dev-cert.pub"]
    );
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cert), 0o644);
    let key_text = std::fs::read_to_string(&key).unwrap();
    assert!(key_text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));

    // $ ssh -i ./gatepass_dev root@host echo hello
    let sshd = s.sshd();
    assert_eq!(sshd.client().identity(&key).run_ok("echo hello"), "hello\n");

    // A second run refuses to replace them, before asking the server.
    let before = s.issued();
    let (code, out, err) = run(&mut s.gatepass(&["ssh", "issue-credentials", "--role", "dev"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&key).unwrap(), key_text);
    assert_eq!(s.issued(), before, "no certificate was issued for nothing");

    // --force replaces both; --output-dir puts them elsewhere.
    ok(s.gatepass(&["ssh", "issue-credentials", "--role", "dev", "--force"]));
    assert_ne!(std::fs::read_to_string(&key).unwrap(), key_text);
    let elsewhere = s.tmp.path().join("keys");
    ok(s.gatepass(&[
        "ssh",
        "issue-credentials",
        "--role",
        "dev",
        "--key-type",
        "ec",
        "--output-dir",
        elsewhere.to_str().unwrap(),
    ]));
    assert_eq!(names(&elsewhere), ["gatepass_dev", "gatepass_dev-cert.pub"]);
    let described = describe_cert(
        s.tmp.path(),
        &std::fs::read_to_string(elsewhere.join("gatepass_dev-cert.pub")).unwrap(),
    );
    assert!(
        described.contains("ecdsa-sha2-nistp256-cert-v01"),
        "{described}"
    );
}

#[test]
fn trust_hosts_adds_the_ca_once_and_ssh_then_trusts_host_certificates() {
    let s = Session::start();
    // A role for host certificates of 127.0.0.1.
    ok(s.gatepass(&[
        "write",
        "ssh/roles/hosts",
        "key_type=ca",
        "allow_host_certificates=true",
        "allowed_domains=127.0.0.1",
        "allow_bare_domains=true",
    ]));
    let mut sshd = Sshd::new(SshdOptions::default());
    let ca = sshd.write_file("user_ca.pub", &s.ca_pub);
    // $ gatepass ssh sign --role hosts --cert-type host --principals 127.0.0.1 \
    //       --public-key /etc/ssh/ssh_host_ed25519_key.pub
    ok(s.gatepass(&[
        "ssh",
        "sign",
        "--role",
        "hosts",
        "--cert-type",
        "host",
        "--principals",
        "127.0.0.1",
        "--public-key",
        sshd.host_key_pub.to_str().unwrap(),
    ]));
    let host_cert = sshd.dir.join("host_key-cert.pub");
    assert!(
        describe_cert(s.tmp.path(), &std::fs::read_to_string(&host_cert).unwrap())
            .contains("host certificate")
    );
    sshd.options.extra_config.extend([
        format!("TrustedUserCAKeys {}", ca.display()),
        format!("HostCertificate {}", host_cert.display()),
    ]);
    sshd.launch();

    // The user has no ~/.ssh yet.
    let pattern = sshd.host_pattern();
    let trust = || {
        s.gatepass(&["ssh", "trust-hosts", "--domain", &pattern])
            // No token is needed for the CA's public key.
            .env_remove("GATEPASS_TOKEN")
            .output()
            .expect("run gatepass")
    };
    let first = trust();
    let out = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(
        first.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(out.starts_with("Added to "), "{out}");
    let known_hosts = s.ssh_dir().join("known_hosts");
    assert_eq!(mode(&s.ssh_dir()), 0o700);
    assert_eq!(mode(&known_hosts), 0o644);
    let line = format!("@cert-authority {pattern} {}", s.ca_pub.trim());
    let text = std::fs::read_to_string(&known_hosts).unwrap();
    assert_eq!(text, format!("{line}\n"));

    let second = trust();
    let out = String::from_utf8_lossy(&second.stdout).into_owned();
    assert!(second.status.success(), "{out}");
    assert!(out.contains("Already trusted"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&known_hosts).unwrap(),
        text,
        "added once"
    );
    assert_eq!(
        names(&s.ssh_dir()),
        ["known_hosts"],
        "no temporary file left"
    );

    // ssh now accepts the host by its certificate, with strict checking.
    let (user_key, _) = keypair(s.tmp.path(), "user", "ed25519", None);
    ok(s.gatepass(&[
        "ssh",
        "sign",
        "--role",
        "dev",
        "--public-key",
        &format!("{}.pub", user_key.display()),
    ]));
    let said = sshd
        .client()
        .identity(&user_key)
        .known_hosts(&known_hosts)
        .run_ok("echo hello");
    assert_eq!(said, "hello\n");

    // Another pattern is another line; what was there stays.
    ok(s.gatepass(&["ssh", "trust-hosts", "--domain", "*.example.com"]));
    let text = std::fs::read_to_string(&known_hosts).unwrap();
    assert_eq!(
        text,
        format!(
            "{line}\n@cert-authority *.example.com {}\n",
            s.ca_pub.trim()
        )
    );
}

#[test]
fn errors_say_what_is_wrong_with_the_right_exit_code() {
    let s = Session::start();
    std::fs::create_dir(s.ssh_dir()).expect("mkdir ~/.ssh");

    // No key at all in ~/.ssh: a local problem, exit 1.
    let (code, _, err) = run(&mut s.gatepass(&["ssh", "sign", "--role", "dev"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no SSH public key found") && err.contains("--public-key"),
        "{err}"
    );

    // A named key file that is not there.
    let missing = s.ssh_dir().join("nope.pub");
    let (code, _, err) = run(&mut s.gatepass(&[
        "ssh",
        "sign",
        "--role",
        "dev",
        "--public-key",
        missing.to_str().unwrap(),
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot read the public key") && err.contains(&missing.display().to_string()),
        "{err}"
    );

    // An unknown role: the server says no, exit 2 with its message.
    let (key, _) = keypair(&s.ssh_dir(), "id_ed25519", "ed25519", None);
    let (code, _, err) = run(&mut s.gatepass(&["ssh", "sign", "--role", "nope"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown role: nope"), "{err}");
    assert!(!s.ssh_dir().join("id_ed25519-cert.pub").exists());
    assert!(key.exists());

    // --add-to-agent without an agent fails before anything is issued.
    let before = s.issued();
    let (code, _, err) = run(&mut s.gatepass(&[
        "ssh",
        "issue-credentials",
        "--role",
        "dev",
        "--add-to-agent",
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("SSH_AUTH_SOCK"), "{err}");
    assert_eq!(s.issued(), before);

    // An agent socket where there is none.
    let (code, _, err) = run(s
        .gatepass(&[
            "ssh",
            "issue-credentials",
            "--role",
            "dev",
            "--add-to-agent",
        ])
        .env("SSH_AUTH_SOCK", s.tmp.path().join("no-agent.sock")));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the ssh-agent"), "{err}");
    assert_eq!(s.issued(), before);

    // A mount without a CA: the server's 404, and known_hosts untouched.
    ok(s.gatepass(&["write", "sys/mounts/empty", "type=ssh"]));
    let (code, _, err) = run(&mut s.gatepass(&["ssh", "trust-hosts", "--mount", "empty"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no CA key configured"), "{err}");
    assert!(!s.ssh_dir().join("known_hosts").exists());

    // Bad arguments are refused before any request.
    let (code, _, err) = run(&mut s.gatepass(&[
        "ssh",
        "sign",
        "--role",
        "dev",
        "--critical-option",
        "force-command",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("NAME=VALUE"), "{err}");
}
