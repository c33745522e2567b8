//! The `gatepass` command line against a real dev server, as a user would
//! run it: an admin with the root token sets things up, a user logs in and
//! the token saved in their config folder is used by later commands.

use std::borrow::BorrowMut;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gatepass_tests::{bin, run, DevServer};
use serde_json::Value;

/// One person's shell: a server and a private HOME.
struct Session {
    server: DevServer,
    home: tempfile::TempDir,
}

impl Session {
    fn start() -> Session {
        Session {
            server: DevServer::start(),
            home: tempfile::tempdir().expect("home"),
        }
    }

    fn token_file(&self) -> PathBuf {
        self.home.path().join("config/gatepass/token")
    }

    /// `gatepass` with only HOME and XDG_CONFIG_HOME set.
    fn bare(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("gatepass"));
        for v in gatepass_tests::CLI_AMBIENT_ENV {
            c.env_remove(v);
        }
        c.env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .args(args);
        c
    }

    /// As a user: the server's address and CA, no token in the environment.
    fn user(&self, args: &[&str]) -> Command {
        let mut c = self.bare(args);
        c.env("GATEPASS_ADDR", &self.server.addr)
            .env("GATEPASS_CACERT", &self.server.cacert);
        c
    }

    /// As the admin, with the root token in GATEPASS_TOKEN.
    fn admin(&self, args: &[&str]) -> Command {
        let mut c = self.bare(args);
        c.envs(self.server.cli_env());
        c
    }

    fn file(&self, name: &str, contents: &str) -> String {
        let p = self.home.path().join(name);
        std::fs::write(&p, contents).expect("write file");
        p.display().to_string()
    }
}

/// Runs and expects success; returns stdout.
fn ok(mut cmd: impl BorrowMut<Command>) -> String {
    let cmd = cmd.borrow_mut();
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "{cmd:?} failed\nstdout: {out}\nstderr: {err}");
    out
}

/// Runs with `input` on stdin.
fn run_with_stdin(mut cmd: impl BorrowMut<Command>, input: &str) -> (i32, String, String) {
    let mut child = cmd
        .borrow_mut()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gatepass");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait for gatepass");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// The `Value` column of a Key/Value table row.
fn row<'a>(table: &'a str, key: &str) -> Option<&'a str> {
    table.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim())
    })
}

const DEV_POLICY: &str = r#"
path "sys/mounts" { capabilities = ["read"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
"#;

/// Admin sets up a policy and a user; the user logs in with a password and
/// works with the saved token.
#[test]
fn userpass_login_saves_token_for_later_commands() {
    let s = Session::start();
    let policy = s.file("dev.hcl", DEV_POLICY);
    let out = ok(s.admin(&[
        "write",
        "sys/policies/acl/dev",
        &format!("policy=@{policy}"),
    ]));
    assert_eq!(out.trim(), "Success! Data written to: sys/policies/acl/dev");
    ok(s.admin(&[
        "write",
        "auth/userpass/users/alice",
        "password=correct horse",
        "token_policies=dev",
    ]));

    // The password comes from stdin (KEY=-), as a script would pass it.
    let (code, out, err) = run_with_stdin(
        s.user(&[
            "login",
            "--method",
            "userpass",
            "username=alice",
            "password=-",
        ]),
        "correct horse\n",
    );
    assert_eq!(code, 0, "login failed: {out}{err}");
    assert!(out.contains("Success! You are now authenticated"), "{out}");
    assert!(
        row(&out, "policies").is_some_and(|p| p.contains("dev")),
        "{out}"
    );

    // Saved privately, and not shown.
    let file = s.token_file();
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    let token = std::fs::read_to_string(&file).unwrap();
    assert!(token.starts_with("gps."), "{token}");
    assert!(
        !out.contains(&token) && !err.contains(&token),
        "the token was printed: {out}{err}"
    );

    // Later commands use it.
    let out = ok(s.user(&["token", "lookup"]));
    assert!(
        row(&out, "policies").is_some_and(|p| p.contains("dev")),
        "{out}"
    );
    assert_eq!(row(&out, "display_name"), Some("userpass-alice"), "{out}");
    assert!(!out.contains(&token), "lookup printed the token: {out}");
    let out = ok(s.user(&["read", "sys/mounts"]));
    assert!(row(&out, "ssh/").is_some(), "{out}");

    // What the policy does not grant is refused by the server: exit 2.
    let (code, out, err) = run(&mut s.user(&["read", "sys/policies/acl/dev"]));
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.starts_with("Error: ") && err.contains("permission denied"),
        "{err}"
    );
    assert!(!err.contains(&token), "{err}");

    // A wrong password is refused, and the saved token is left alone.
    let (code, _, err) = run(&mut s.user(&[
        "login",
        "--method=userpass",
        "username=alice",
        "password=wrong",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid username or password"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), token);
}

/// Read, write, list and delete with the root token, in both formats.
#[test]
fn generic_commands_read_write_list_delete() {
    let s = Session::start();
    let policy = s.file("ops.hcl", DEV_POLICY);
    ok(s.admin(&[
        "write",
        "sys/policies/acl/ops",
        &format!("policy=@{policy}"),
    ]));

    let out = ok(s.admin(&["list", "sys/policies/acl"]));
    let mut lines = out.lines();
    assert_eq!(
        (lines.next(), lines.next()),
        (Some("Keys"), Some("----")),
        "{out}"
    );
    assert!(lines.any(|l| l == "ops"), "{out}");
    let keys = json(&ok(s.admin(&[
        "list",
        "sys/policies/acl",
        "--format",
        "json",
    ])));
    assert!(
        keys.as_array().unwrap().iter().any(|k| k == "ops"),
        "{keys}"
    );

    let out = ok(s.admin(&["read", "sys/policies/acl/ops"]));
    assert_eq!(row(&out, "name"), Some("ops"), "{out}");
    let env = json(&ok(s.admin(&[
        "read",
        "sys/policies/acl/ops",
        "--format=json",
    ])));
    assert_eq!(env["data"]["name"], "ops", "{env}");
    assert!(env["request_id"].is_string(), "the whole envelope: {env}");
    // --field prints the value alone, raw.
    let out = ok(s.admin(&["read", "--field", "policy", "sys/policies/acl/ops"]));
    assert_eq!(out.trim(), DEV_POLICY.trim());
    // Vault's one-dash spelling works too.
    let env = json(&ok(s.admin(&[
        "read",
        "-format=json",
        "sys/policies/acl/ops",
    ])));
    assert_eq!(env["data"]["name"], "ops");

    let out = ok(s.admin(&["delete", "sys/policies/acl/ops"]));
    assert_eq!(
        out.trim(),
        "Success! Data deleted (if it existed) at: sys/policies/acl/ops"
    );
    let (code, _, err) = run(&mut s.admin(&["read", "sys/policies/acl/ops"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no value found at sys/policies/acl/ops"),
        "{err}"
    );
    let (code, _, err) = run(&mut s.admin(&["list", "auth/userpass/users"]));
    assert_eq!(code, 2, "an empty list: {err}");

    // The server's own errors come through with exit 2.
    let (code, _, err) = run(&mut s.admin(&[
        "write",
        "sys/policies/acl/bad",
        r#"policy=path "x" { capabilities = ["fly"] }"#,
    ]));
    assert_eq!(code, 2);
    assert!(err.contains("invalid capability"), "{err}");
}

/// `gatepass … | head -1`: once the reader has gone the command ends
/// quietly, with the status a shell shows for SIGPIPE, as Vault's does.
/// A standard error no one reads changes nothing of the command's status.
#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    let s = Session::start();
    for args in [
        &["list", "sys/policies/acl"][..],
        &["read", "sys/mounts", "--format=json"],
        &["read", "sys/mounts", "--format=yaml"],
    ] {
        let mut child = s
            .admin(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gatepass");
        // The only read end closes before gatepass has an answer to write.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait for gatepass");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert_eq!(err, "", "{args:?}: nothing said, no panic");
    }
    // Output that cannot be written for another reason is an error.
    let (code, _, err) = run(s.admin(&["list", "sys/policies/acl"]).stdout(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full"),
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot write to standard output"), "{err}");
    // A message to a standard error no one reads is dropped: the command
    // ends with the status it would have had, not a panic's 101.
    let failing = ["read", "sys/nothing-here"];
    let (code, _, err) = run(&mut s.admin(&failing));
    assert!(code != 0 && err.contains("Error"), "{code}: {err}");
    let mut child = s
        .admin(&failing)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gatepass");
    drop(child.stderr.take());
    let status = child.wait().expect("wait for gatepass");
    assert_eq!(
        status.code(),
        Some(code),
        "the same status with no one reading"
    );
}

/// Vault's variable names work when gatepass's are not set, and the
/// environment wins over the saved token.
#[test]
fn vault_variables_and_token_precedence() {
    let s = Session::start();
    let vault_env = |args: &[&str]| {
        let mut c = s.bare(args);
        c.env("VAULT_ADDR", &s.server.addr)
            .env("VAULT_CACERT", &s.server.cacert)
            .env("VAULT_TOKEN", &s.server.token);
        c
    };
    let out = ok(&mut vault_env(&["token", "lookup", "--format", "json"]));
    assert_eq!(json(&out)["data"]["policies"], serde_json::json!(["root"]));

    // A user token saved by login; VAULT_TOKEN still takes precedence.
    ok(s.admin(&["write", "auth/userpass/users/bob", "password=pw-of-bob"]));
    let (code, out, err) = run(&mut vault_env(&[
        "login",
        "--method",
        "userpass",
        "username=bob",
        "password=pw-of-bob",
    ]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("VAULT_TOKEN is set"), "a warning: {err}");
    let out = ok(&mut vault_env(&[
        "token",
        "lookup",
        "--field",
        "display_name",
    ]));
    assert_eq!(out.trim(), "root");
    // Without the variable, the saved token is used.
    let out = ok(&mut s.user(&["token", "lookup", "--field", "display_name"]));
    assert_eq!(out.trim(), "userpass-bob");
}

const DEPLOY_POLICY: &str = r#"
path "auth/token/create" { capabilities = ["update"] }
"#;

/// A machine logs in with AppRole without saving anything, and creates a
/// restricted token.
#[test]
fn approle_login_and_token_create() {
    let s = Session::start();
    let policy = s.file("deploy.hcl", DEPLOY_POLICY);
    ok(s.admin(&[
        "write",
        "sys/policies/acl/deploy",
        &format!("policy=@{policy}"),
    ]));
    ok(s.admin(&["write", "auth/approle/role/ci", "token_policies=deploy"]));
    let role_id = ok(s.admin(&["read", "--field", "role_id", "auth/approle/role/ci/role-id"]));
    let secret_id = ok(s.admin(&[
        "write",
        "--field",
        "secret_id",
        "auth/approle/role/ci/secret-id",
    ]));

    let out = ok(s.user(&[
        "login",
        "--method",
        "approle",
        &format!("role_id={}", role_id.trim()),
        &format!("secret_id={}", secret_id.trim()),
        "--no-store",
        "--field",
        "token",
    ]));
    let token = out.trim().to_string();
    assert!(token.starts_with("gps."), "{out}");
    assert!(!s.token_file().exists(), "--no-store saved the token");

    // Looking up another token, given on stdin so it stays out of `ps`.
    let (code, out, err) = run_with_stdin(&mut s.admin(&["token", "lookup", "-"]), &token);
    assert_eq!(code, 0, "{err}");
    assert!(
        row(&out, "policies").is_some_and(|p| p.contains("deploy")),
        "{out}"
    );
    assert!(!out.contains(&token), "{out}");

    // That token creates a child with fewer uses and a shorter life.
    let mut create = s.user(&[
        "token",
        "create",
        "--policy",
        "deploy",
        "--ttl",
        "10m",
        "--num-uses",
        "2",
    ]);
    create
        .arg("--format")
        .arg("json")
        .env("GATEPASS_TOKEN", &token);
    let env = json(&ok(&mut create));
    let child = env["auth"]["client_token"].as_str().expect("a token");
    assert_eq!(env["auth"]["lease_duration"], 600, "{env}");
    let out = ok(s.admin(&["token", "lookup", child, "--format", "json"]));
    let data = &json(&out)["data"];
    assert_eq!(data["num_uses"], 2, "{data}");
    assert_eq!(data["orphan"], false, "{data}");
    // A policy the parent lacks is refused.
    let (code, _, err) = run(s
        .user(&["token", "create", "--policy", "root"])
        .env("GATEPASS_TOKEN", &token));
    assert_eq!(code, 2, "{err}");
}

/// A token given to `login` is checked and saved; `--print-token` shows it.
#[test]
fn token_login_from_stdin() {
    let s = Session::start();
    let (code, out, err) = run_with_stdin(
        &mut s.user(&["login", "-"]),
        &format!("{}\n", s.server.token),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains(&s.server.token), "{out}");
    assert_eq!(row(&out, "policies"), Some("[root]"), "{out}");
    assert_eq!(
        std::fs::read_to_string(s.token_file()).unwrap(),
        s.server.token
    );

    let out = ok(s.user(&["login", "--print-token", &s.server.token]));
    assert_eq!(row(&out, "token"), Some(s.server.token.as_str()), "{out}");

    let (code, _, err) = run(&mut s.user(&["login", "no-such-token"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("permission denied") && !err.contains("no-such-token"),
        "{err}"
    );
}

/// Failures say what went wrong, with the exit status telling whose fault.
#[test]
fn errors_are_clear() {
    let s = Session::start();

    // Nothing listens there: a local problem, exit 1.
    let (code, _, err) =
        run(&mut s.admin(&["read", "sys/mounts", "--address", "https://127.0.0.1:1"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot reach the server at https://127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains(&s.server.token), "{err}");

    // Without the CA the server is not trusted.
    let (code, _, err) = run(s
        .admin(&["read", "sys/mounts"])
        .env_remove("GATEPASS_CACERT"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("certificate"), "{err}");
    // --ca-cert names it.
    let cacert = s.server.cacert.display().to_string();
    let out = ok(s
        .admin(&["read", "sys/mounts", "--ca-cert", &cacert])
        .env_remove("GATEPASS_CACERT"));
    assert!(row(&out, "ssh/").is_some(), "{out}");

    // No token at all: the server refuses, and we say how to get one.
    let (code, _, err) = run(&mut s.user(&["read", "sys/mounts"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("permission denied") && err.contains("gatepass login"),
        "{err}"
    );

    // Usage errors: exit 2, and an argument that may be a secret is not echoed.
    let (code, _, err) = run(&mut s.admin(&["write", "auth/userpass/users/x", "hunter2"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("KEY=VALUE") && !err.contains("hunter2"),
        "{err}"
    );
    let (code, _, _) = run(&mut s.admin(&["read", "sys/mounts", "--format", "xml"]));
    assert_eq!(code, 2);

    // A file that is not there is a local error.
    let (code, _, err) =
        run(&mut s.admin(&["write", "sys/policies/acl/x", "policy=@/nonexistent/p.hcl"]));
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/p.hcl"), "{err}");
}
