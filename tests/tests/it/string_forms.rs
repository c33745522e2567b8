//! Typed fields in their string forms, as `gatepass write` and `vault write`
//! send every `key=value`: `"10"` for a number, `"true"` for a boolean,
//! `"1h"` for a duration, `"a,b"` for a list. Vault's API takes them on every
//! endpoint, and so must gatepass's, including the hosts protocol. Also runs
//! the README's `gatepass write`/`read` commands as written.

use std::path::{Path, PathBuf};
use std::process::Command;

use axum::http::StatusCode;
use gatepass_tests::inproc::{Backend, Server};
use gatepass_tests::ssh::keypair;
use gatepass_tests::{bin, bin_dir, run, DevServer, CLI_AMBIENT_ENV};
use serde_json::{json, Value};

/// `gatepass` as the admin (root token in the environment), HOME private.
fn gatepass(server: &DevServer, home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin("gatepass"));
    for v in CLI_AMBIENT_ENV {
        c.env_remove(v);
    }
    c.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .envs(server.cli_env())
        .args(args);
    c
}

#[test]
fn cli_join_token_with_num_uses_enrolls_that_many_hosts() {
    let server = DevServer::start();
    let home = tempfile::tempdir().expect("home");
    let (code, out, err) = run(&mut gatepass(
        &server,
        home.path(),
        &[
            "write",
            "--format",
            "json",
            "hosts/join-tokens",
            "ttl=1h",
            "num_uses=10",
        ],
    ));
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let v: Value = serde_json::from_str(&out).expect("JSON answer");
    assert_eq!(v["data"]["num_uses"], 10, "{v}");
    let join = v["data"]["join_token"].as_str().expect("join token");
    // Ten hosts enroll with it (lists as comma-separated text), the
    // eleventh is refused.
    for i in 0..11 {
        let (code, out, err) = run(&mut gatepass(
            &server,
            home.path(),
            &[
                "write",
                "hosts/enroll",
                &format!("join_token={join}"),
                &format!("hostname=web{i}"),
                &format!("addresses=10.0.0.{i},fd00::{i}"),
            ],
        ));
        if i < 10 {
            assert_eq!(code, 0, "host {i}: stdout: {out}\nstderr: {err}");
        } else {
            assert_ne!(code, 0, "an eleventh host enrolled: {out}");
            assert!(err.contains("invalid or expired join token"), "{err}");
        }
    }
}

async fn call(s: &Server, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
    s.call(
        "POST",
        path,
        Some(token.unwrap_or(gatepass_tests::inproc::ROOT)),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn string_forms_of_typed_fields_are_accepted_by_every_endpoint() {
    let s = Server::start(Backend::Sqlite).await;
    let (_, host_pub) = keypair(s.dir.path(), "host", "ed25519", None);
    let setup = [
        ("ssh/config/ca", json!({"key_type": "ed25519"})),
        ("sys/mounts/ssh-host", json!({"type": "ssh"})),
        ("ssh-host/config/ca", json!({})),
        (
            "ssh-host/roles/hosts",
            json!({"key_type": "ca", "allow_host_certificates": "true",
                   "allowed_domains": "example.com,10.0.0.0", "allow_subdomains": "1",
                   "allow_bare_domains": "t", "ttl": "1h", "max_ttl": "3600"}),
        ),
        (
            "ssh/roles/dyn",
            json!({"key_type": "dynamic", "default_user": "app", "cidr_list": "10.0.0.0/8,fd00::/8",
                   "key_bits": "2048", "ttl": "10m"}),
        ),
    ];
    for (path, body) in setup {
        let (st, v) = call(&s, path, None, body.clone()).await;
        assert!(st.is_success(), "{path} {body}: {st} {v}");
    }

    // The hosts protocol, every typed field as a string.
    let (st, v) = call(
        &s,
        "hosts/join-tokens",
        None,
        json!({"ttl": "1h", "num_uses": "2", "host_mount": "ssh-host",
               "host_role": "hosts", "principals": "mapped"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["num_uses"], 2);
    assert_eq!(
        v["data"]["expire_time"],
        gatepass_tests::inproc::T0 + 3600,
        "{v}"
    );
    let join = v["data"]["join_token"].as_str().unwrap().to_string();
    let (st, v) = s
        .call(
            "POST",
            "hosts/enroll",
            None,
            Some(json!({"join_token": join, "hostname": "web1.example.com",
                        "addresses": "10.0.0.7, fd00::7", "host_keys": host_pub})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let host_token = v["data"]["host_token"].as_str().unwrap().to_string();
    let host_id = v["data"]["host_id"].as_str().unwrap().to_string();
    let (_, v) = s.root("GET", &format!("hosts/{host_id}"), None).await;
    assert_eq!(v["data"]["addresses"], json!(["10.0.0.7", "fd00::7"]));
    let (st, v) = call(&s, "ssh/creds/dyn", None, json!({"ip": "10.0.0.7"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let lease = v["lease_id"].as_str().unwrap().to_string();
    let host = Some(host_token.as_str());
    let cases = [
        (
            "hosts/self/ack",
            host,
            json!({"index": "5", "installed": lease.clone()}),
        ),
        (
            "hosts/self/sign-host-key",
            host,
            json!({"public_key": host_pub}),
        ),
        (
            "hosts/mappings/deploy",
            None,
            json!({"principals": "alice,ops"}),
        ),
        // The other endpoints, read through the generic field reader.
        (
            "auth/token/create",
            None,
            json!({"policies": "a,b", "ttl": "1h", "num_uses": "3", "renewable": "false",
                   "no_default_policy": "true"}),
        ),
        (
            "auth/approle/role/ci",
            None,
            json!({"token_policies": "a,b", "token_ttl": "1h", "token_num_uses": "5",
                   "secret_id_num_uses": "2", "secret_id_ttl": "10m", "bind_secret_id": "true"}),
        ),
        (
            "auth/userpass/users/alice",
            None,
            json!({"password": "change-me", "token_policies": "a,b", "token_ttl": "30m"}),
        ),
        (
            "ssh/roles/ops",
            None,
            json!({"key_type": "ca", "allow_user_certificates": "true", "allowed_users": "alice,bob",
                   "ttl": "30m", "max_ttl": "8h", "allow_empty_principals": "false"}),
        ),
        (
            "sys/leases/renew",
            None,
            json!({"lease_id": lease.clone(), "increment": "5m"}),
        ),
    ];
    for (path, token, body) in cases {
        let (st, v) = call(&s, path, token, body.clone()).await;
        assert!(st.is_success(), "{path} {body}: {st} {v}");
    }
    assert!(gatepass_server::hosts::installed(&s.core, &lease)
        .await
        .unwrap());
    let (_, v) = s.root("GET", "hosts/mappings/deploy", None).await;
    assert_eq!(v["data"]["principals"], json!(["alice", "ops"]));

    // Genuinely wrong values: a 400 that names the field and the value.
    let wrong = [
        (
            "hosts/join-tokens",
            None,
            json!({"num_uses": "ten"}),
            "num_uses",
        ),
        (
            "hosts/join-tokens",
            None,
            json!({"num_uses": 1.5}),
            "num_uses",
        ),
        (
            "hosts/join-tokens",
            None,
            json!({"ttl": "forever"}),
            "forever",
        ),
        ("hosts/join-tokens", None, json!({"ttl": true}), "ttl"),
        ("hosts/self/ack", host, json!({"index": "ten"}), "index"),
        (
            "hosts/self/ack",
            host,
            json!({"index": 1, "installed": 5}),
            "installed",
        ),
        (
            "hosts/mappings/deploy",
            None,
            json!({"principals": {"a": 1}}),
            "principals",
        ),
        (
            "auth/token/create",
            None,
            json!({"num_uses": "ten"}),
            "num_uses",
        ),
        (
            "auth/token/create",
            None,
            json!({"renewable": "yes"}),
            "renewable",
        ),
        (
            "ssh/roles/ops",
            None,
            json!({"key_type": "ca", "allow_user_certificates": "yes"}),
            "allow_user_certificates",
        ),
    ];
    for (path, token, body, names) in wrong {
        let (st, v) = call(&s, path, token, body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path} {body}: {v}");
        let msg = v["errors"][0].as_str().unwrap_or_default();
        assert!(
            msg.contains(names),
            "{path} {body}: {msg:?} should name {names}"
        );
    }
    let (st, v) = s
        .call(
            "POST",
            "hosts/enroll",
            None,
            Some(json!({"join_token": join, "hostname": "web2", "addresses": 5})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["errors"][0].as_str().unwrap().contains("addresses"),
        "{v}"
    );
}

/// One runnable thing the README shows: a `gatepass write`/`read` command
/// (with `gatepass login` and `unset GATEPASS_TOKEN`, which set up the
/// commands after them), as it stands in the text.
struct Shown {
    line: usize,
    command: String,
    /// The README says this one is refused.
    refused: bool,
}

/// The README's commands, in order, grouped as they are shown: a code
/// block is one shell session; a command quoted in the prose is its own.
fn readme_commands(text: &str) -> Vec<Vec<Shown>> {
    let mut groups = Vec::new();
    // Inside a fenced block: whether it is a shell block.
    let mut fence: Option<bool> = None;
    let mut cmds = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.starts_with("```") {
            match fence.take() {
                Some(true) => groups.push(std::mem::take(&mut cmds)),
                Some(false) => {}
                None => fence = Some(trimmed == "```sh"),
            }
            continue;
        }
        match fence {
            Some(true) => {
                let (start, mut text) = pending.take().unwrap_or((line, String::new()));
                text.push_str(trimmed);
                if let Some(cont) = text.strip_suffix('\\') {
                    pending = Some((start, format!("{} ", cont.trim_end())));
                    continue;
                }
                if is_runnable(&text) {
                    let refused = comment(&text).is_some_and(|c| c.contains("refused"));
                    cmds.push(Shown {
                        line: start,
                        command: text,
                        refused,
                    });
                }
            }
            Some(false) => {}
            None => {
                for quoted in raw.split('`').skip(1).step_by(2) {
                    if quoted.starts_with("gatepass write ") || quoted.starts_with("gatepass read ")
                    {
                        groups.push(vec![Shown {
                            line,
                            command: quoted.to_string(),
                            refused: false,
                        }]);
                    }
                }
            }
        }
    }
    groups.retain(|g| !g.is_empty());
    groups
}

fn is_runnable(cmd: &str) -> bool {
    [
        "gatepass write ",
        "gatepass read ",
        "gatepass login ",
        "unset GATEPASS_TOKEN",
    ]
    .iter()
    .any(|p| cmd.starts_with(p))
}

/// The shell comment at the end of a command line, outside quotes.
fn comment(cmd: &str) -> Option<&str> {
    let mut quote = None;
    let mut prev_space = false;
    for (i, c) in cmd.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') if prev_space => return Some(&cmd[i + 1..]),
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    None
}

#[test]
fn readme_commands_work_as_written() {
    let readme = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme).expect("README.md");
    let groups = readme_commands(&text);
    let all: Vec<&Shown> = groups.iter().flatten().collect();
    // The parse found what the README shows (a guard against a parser that
    // silently finds nothing).
    for expected in [
        "gatepass write hosts/join-tokens ttl=1h num_uses=10",
        "gatepass write ssh/roles/ops key_type=ca",
        "gatepass write hosts/mappings/deploy principals=alice,ops",
        "gatepass read sys/policies/acl/ops",
    ] {
        assert!(
            all.iter().any(|s| s.command.starts_with(expected)),
            "{expected:?} not found in the README's commands"
        );
    }

    let server = DevServer::start();
    let home = tempfile::tempdir().expect("home");
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // `public_key=@$HOME/.ssh/id_ed25519.pub` needs that key.
    std::fs::create_dir_all(home.path().join(".ssh")).expect("mkdir .ssh");
    keypair(&home.path().join(".ssh"), "id_ed25519", "ed25519", None);
    let mut seen = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for group in &groups {
        // Each group is one shell session: the admin's token in the
        // environment until the README unsets it.
        let mut token_set = true;
        for shown in group {
            // A command shown twice (enabling one mount) runs once.
            if !seen.insert(shown.command.clone()) && shown.command.starts_with("gatepass write") {
                continue;
            }
            if shown.command.starts_with("unset GATEPASS_TOKEN") {
                token_set = false;
                continue;
            }
            let mut c = Command::new("bash");
            for v in CLI_AMBIENT_ENV {
                c.env_remove(v);
            }
            c.env("HOME", home.path())
                .env("XDG_CONFIG_HOME", home.path().join("config"))
                .env("PATH", &path)
                .envs(server.cli_env())
                .args(["-c", &shown.command]);
            if !token_set {
                c.env_remove("GATEPASS_TOKEN");
            }
            let (code, out, err) = run(&mut c);
            eprintln!("README.md:{} {} -> {code}", shown.line, shown.command);
            let ok = if shown.refused {
                code != 0 && err.contains("permission denied")
            } else {
                code == 0
            };
            if !ok {
                failures.push(format!(
                    "README.md:{} `{}` (expected {}): exit {code}\nstdout: {out}\nstderr: {err}",
                    shown.line,
                    shown.command,
                    if shown.refused { "refusal" } else { "success" }
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
