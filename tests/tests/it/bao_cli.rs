//! OpenBao's own CLI, `bao` 2.7.2, against a gatepass dev server, as a
//! Vault user runs it: status, logins, wrapping, secrets engines and auth
//! methods tuned and moved, periodic tokens and token roles, policies with
//! parameter constraints, leases, and `bao ssh` in CA and OTP mode into a
//! real sshd. Each test asserts what the user sees: the exit status and the
//! output. The tests fail, not skip, without `bao` (tests/run installs it).

use std::path::PathBuf;
use std::process::Command;

use gatepass_tests::openbao::bao_command;
use gatepass_tests::ssh::keypair;
use gatepass_tests::sshd::{PamSetup, Sshd, SshdOptions};
use gatepass_tests::{bin, run, DevServer};
use serde_json::Value;

struct Session {
    server: DevServer,
    home: tempfile::TempDir,
}

impl Session {
    fn start() -> Session {
        Session {
            server: DevServer::start(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// `bao ARGS…` with the server's address and CA, and no token: what a
    /// user has before logging in (a login stores its token in
    /// ~/.vault-token, which later commands read).
    fn user(&self, args: &[&str]) -> Command {
        let mut c = bao_command(self.home.path());
        c.env("BAO_ADDR", &self.server.addr)
            .env("BAO_CACERT", &self.server.cacert)
            .env("SSH_AUTH_SOCK", "")
            .args(args);
        c
    }

    /// `bao ARGS…` as the root token.
    fn root(&self, args: &[&str]) -> Command {
        let mut c = self.user(args);
        c.env("BAO_TOKEN", &self.server.token);
        c
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }
}

/// Runs; expects exit 0; stdout.
fn ok(mut c: Command) -> String {
    let (code, out, err) = run(&mut c);
    assert_eq!(code, 0, "{c:?}\nstdout: {out}\nstderr: {err}");
    out
}

/// Runs; expects a failure; (exit status, stderr).
fn fails(mut c: Command) -> (i32, String) {
    let (code, out, err) = run(&mut c);
    assert_ne!(code, 0, "{c:?} succeeded: {out}");
    (code, err)
}

/// An OTP role on `mount` and the lease of an OTP made with it.
fn otp_lease(s: &Session, mount: &str) -> String {
    otp_creds(s, mount)["lease_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// An OTP role on `mount` and `bao write -format=json MOUNT/creds/otp`'s
/// answer.
fn otp_creds(s: &Session, mount: &str) -> Value {
    ok(s.root(&[
        "write",
        &format!("{mount}/roles/otp"),
        "key_type=otp",
        "default_user=root",
        "cidr_list=127.0.0.0/8",
    ]));
    json(&ok(s.root(&[
        "write",
        "-format=json",
        &format!("{mount}/creds/otp"),
        "ip=127.0.0.1",
    ])))
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The value of a row of bao's table output (`key    value`).
fn row<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim())
    })
}

/// A policy file in the session's HOME; its path.
fn policy_file(s: &Session, name: &str, text: &str) -> String {
    let p = s.path(&format!("{name}.hcl"));
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const DEV_POLICY: &str = r#"path "auth/token/lookup-self" { capabilities = ["read"] }
path "ssh/roles/*" { capabilities = ["read", "list"] }
"#;

#[test]
fn status_and_logins_with_userpass_approle_and_a_token() {
    let s = Session::start();
    // $ bao status
    let out = ok(s.user(&["status"]));
    assert_eq!(row(&out, "Sealed"), Some("false"), "{out}");
    assert_eq!(row(&out, "Initialized"), Some("true"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("HA Enabled") && l.trim_end().ends_with("false")),
        "{out}"
    );
    let v = json(&ok(s.user(&["status", "-format=json"])));
    assert_eq!(v["sealed"], false, "{v}");

    ok(s.root(&[
        "policy",
        "write",
        "dev",
        &policy_file(&s, "dev", DEV_POLICY),
    ]));
    // $ bao auth enable userpass (always enabled here: a no-op that succeeds)
    ok(s.root(&["auth", "enable", "userpass"]));
    ok(s.root(&[
        "write",
        "auth/userpass/users/alice",
        "password=correct horse",
        "token_policies=dev",
    ]));
    // $ bao login -method=userpass username=alice password=…
    let out = ok(s.user(&[
        "login",
        "-method=userpass",
        "username=alice",
        "password=correct horse",
    ]));
    assert!(out.contains("Success! You are now authenticated."), "{out}");
    assert!(
        row(&out, "token_policies").unwrap().contains("dev"),
        "{out}"
    );
    // The stored token is the one later commands use.
    let out = ok(s.user(&["token", "lookup"]));
    assert_eq!(
        row(&out, "path"),
        Some("auth/userpass/login/alice"),
        "{out}"
    );
    assert_eq!(row(&out, "display_name"), Some("userpass-alice"), "{out}");
    let (code, err) = fails(s.user(&[
        "login",
        "-method=userpass",
        "username=alice",
        "password=wrong",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid username or password"), "{err}");

    // AppRole, the documented way: write -f for the secret ID.
    ok(s.root(&["auth", "enable", "approle"]));
    ok(s.root(&["write", "auth/approle/role/ci", "token_policies=dev"]));
    let role_id = ok(s.root(&["read", "-field=role_id", "auth/approle/role/ci/role-id"]));
    let secret_id = ok(s.root(&[
        "write",
        "-f",
        "-field=secret_id",
        "auth/approle/role/ci/secret-id",
    ]));
    assert!(
        !secret_id.is_empty() && !secret_id.contains('\n'),
        "{secret_id:?}"
    );
    let v = json(&ok(s.user(&[
        "write",
        "-format=json",
        "auth/approle/login",
        &format!("role_id={role_id}"),
        &format!("secret_id={secret_id}"),
    ])));
    let token = v["auth"]["client_token"].as_str().unwrap().to_string();
    assert_eq!(v["auth"]["metadata"]["role_name"], "ci", "{v}");

    // $ bao login TOKEN
    let out = ok(s.user(&["login", &token]));
    assert!(out.contains("Success! You are now authenticated."), "{out}");
    let out = ok(s.user(&["token", "lookup"]));
    assert_eq!(row(&out, "path"), Some("auth/approle/login"), "{out}");
    // What the dev policy does not grant is refused.
    let (code, err) = fails(s.user(&["secrets", "list"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("permission denied"), "{err}");
}

/// Password guessing from one address: after ten wrong passwords in five
/// minutes, every login from it is refused untried, the right one too.
#[test]
fn password_guessing_is_refused_after_ten_failures() {
    let s = Session::start();
    ok(s.root(&[
        "write",
        "auth/userpass/users/alice",
        "password=correct horse",
    ]));
    let login = |password: &str| {
        let mut c = s.user(&[
            "login",
            "-method=userpass",
            "username=alice",
            &format!("password={password}"),
        ]);
        run(&mut c)
    };
    for i in 0..10 {
        let (code, _, err) = login(&format!("guess {i}"));
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("invalid username or password"), "{err}");
    }
    let (code, _, err) = login("correct horse");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("429"), "{err}");
    assert!(err.contains("too many failed attempts"), "{err}");
}

#[test]
fn a_wrapped_secret_id_unwraps_once() {
    let s = Session::start();
    ok(s.root(&["write", "auth/approle/role/ci", "token_policies=default"]));
    // $ bao write -wrap-ttl=2m -f auth/approle/role/ci/secret-id
    let out = ok(s.root(&[
        "write",
        "-wrap-ttl=2m",
        "-f",
        "auth/approle/role/ci/secret-id",
    ]));
    let wrapping_token = row(&out, "wrapping_token:").unwrap_or_default().to_string();
    assert!(!wrapping_token.is_empty(), "{out}");
    assert_eq!(row(&out, "wrapping_token_ttl:"), Some("2m"), "{out}");
    assert_eq!(
        row(&out, "wrapping_token_creation_path:"),
        Some("auth/approle/role/ci/secret-id"),
        "{out}"
    );
    assert!(
        !out.contains("secret_id "),
        "the secret ID is in clear: {out}"
    );
    // $ bao unwrap TOKEN
    let out = ok(s.user(&["unwrap", "-field=secret_id", &wrapping_token]));
    assert!(!out.trim().is_empty(), "{out}");
    let (code, err) = fails(s.user(&["unwrap", &wrapping_token]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("wrapping token is not valid or does not exist"),
        "{err}"
    );
}

#[test]
fn secrets_engines_and_auth_methods_are_tuned_moved_and_disabled() {
    let s = Session::start();
    // $ bao secrets enable -path=team-ssh ssh
    let out = ok(s.root(&["secrets", "enable", "-path=team-ssh", "ssh"]));
    assert!(
        out.contains("Success! Enabled the ssh secrets engine at: team-ssh/"),
        "{out}"
    );
    let out = ok(s.root(&[
        "secrets",
        "tune",
        "-default-lease-ttl=1h",
        "-max-lease-ttl=2h",
        "-description=team CA",
        "team-ssh",
    ]));
    assert!(
        out.contains("Success! Tuned the secrets engine at: team-ssh/"),
        "{out}"
    );
    let out = ok(s.root(&["read", "sys/mounts/team-ssh/tune"]));
    assert_eq!(row(&out, "default_lease_ttl"), Some("1h"), "{out}");
    assert_eq!(row(&out, "max_lease_ttl"), Some("2h"), "{out}");
    // TTLs given when enabling are set as a tune sets them.
    ok(s.root(&[
        "secrets",
        "enable",
        "-path=capped",
        "-max-lease-ttl=1h",
        "ssh",
    ]));
    let out = ok(s.root(&["read", "sys/mounts/capped/tune"]));
    assert_eq!(row(&out, "max_lease_ttl"), Some("1h"), "{out}");
    ok(s.root(&["auth", "enable", "-max-lease-ttl=3h", "userpass"]));
    let out = ok(s.root(&["read", "sys/auth/userpass/tune"]));
    assert_eq!(row(&out, "max_lease_ttl"), Some("3h"), "{out}");
    // $ bao patch: no endpoint here merges a partial change, so it is
    // refused (as OpenBao refuses it on its SSH engine), and the role
    // stays whole.
    ok(s.root(&[
        "write",
        "capped/roles/ops",
        "key_type=ca",
        "allow_user_certificates=true",
        "ttl=30m",
    ]));
    let (code, err) = fails(s.root(&["patch", "capped/roles/ops", "allowed_users=alice"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("405") && err.contains("unsupported operation"),
        "{err}"
    );
    let out = ok(s.root(&["read", "capped/roles/ops"]));
    assert_eq!(row(&out, "allow_user_certificates"), Some("true"), "{out}");
    assert_eq!(row(&out, "ttl"), Some("30m"), "{out}");
    // An OTP lease on the mount, which the move revokes, as Vault's does.
    let before_move = otp_lease(&s, "team-ssh");
    ok(s.root(&["lease", "lookup", &before_move]));
    // $ bao secrets move team-ssh ops-ssh
    let out = ok(s.root(&["secrets", "move", "team-ssh", "ops-ssh"]));
    let (code, err) = fails(s.root(&["lease", "lookup", &before_move]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid lease"), "{err}");
    assert!(
        out.contains("Success! Finished moving secrets engine team-ssh/ to ops-ssh/"),
        "{out}"
    );
    let out = ok(s.root(&["secrets", "list"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("ops-ssh/") && l.contains("team CA")),
        "{out}"
    );
    assert!(!out.contains("team-ssh/"), "{out}");
    // An OTP lease on the mount, which goes with it.
    let lease = otp_lease(&s, "ops-ssh");
    ok(s.root(&["lease", "lookup", &lease]));
    let out = ok(s.root(&["secrets", "disable", "ops-ssh"]));
    assert!(
        out.contains("Success! Disabled the secrets engine (if it existed) at: ops-ssh/"),
        "{out}"
    );
    assert!(!ok(s.root(&["secrets", "list"])).contains("ops-ssh/"));
    let (code, err) = fails(s.root(&["lease", "lookup", &lease]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid lease"), "{err}");
    let (code, out) = fails(s.root(&["list", "sys/leases/lookup/ops-ssh/creds/otp"]));
    assert_eq!(code, 2, "{out}");

    // $ bao auth tune -default-lease-ttl=30m -max-lease-ttl=1h approle
    let out = ok(s.root(&[
        "auth",
        "tune",
        "-default-lease-ttl=30m",
        "-max-lease-ttl=1h",
        "approle",
    ]));
    assert!(
        out.contains("Success! Tuned the auth method at: approle/"),
        "{out}"
    );
    let out = ok(s.root(&["read", "sys/auth/approle/tune"]));
    assert_eq!(row(&out, "default_lease_ttl"), Some("30m"), "{out}");
    assert_eq!(row(&out, "max_lease_ttl"), Some("1h"), "{out}");
    let out = ok(s.root(&["auth", "list", "-detailed"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("approle/") && l.contains(" 1800 ") && l.contains(" 3600 ")),
        "{out}"
    );
    // The logins' tokens follow: 30m by default, 1h at most.
    ok(s.root(&["write", "auth/approle/role/ci", "token_ttl=3h"]));
    ok(s.root(&["write", "-f", "auth/approle/role/short"]));
    for (role, want) in [("ci", "1h"), ("short", "30m")] {
        let role_id = ok(s.root(&[
            "read",
            "-field=role_id",
            &format!("auth/approle/role/{role}/role-id"),
        ]));
        let secret_id = ok(s.root(&[
            "write",
            "-f",
            "-field=secret_id",
            &format!("auth/approle/role/{role}/secret-id"),
        ]));
        let out = ok(s.user(&[
            "write",
            "auth/approle/login",
            &format!("role_id={role_id}"),
            &format!("secret_id={secret_id}"),
        ]));
        assert_eq!(row(&out, "token_duration"), Some(want), "{role}: {out}");
    }
}

#[test]
fn periodic_tokens_roles_and_policies_with_parameter_constraints() {
    let s = Session::start();
    // $ bao token create -period=1h -policy=default
    let v = json(&ok(s.root(&[
        "token",
        "create",
        "-format=json",
        "-period=1h",
        "-policy=default",
    ])));
    let periodic = v["auth"]["client_token"].as_str().unwrap().to_string();
    assert_eq!(v["auth"]["lease_duration"], 3600, "{v}");
    let out = ok(s.root(&["token", "lookup", &periodic]));
    assert_eq!(row(&out, "period"), Some("1h"), "{out}");
    let out = ok(s.root(&["token", "renew", "-increment=5h", &periodic]));
    assert_eq!(row(&out, "token_duration"), Some("1h"), "{out}");

    // $ bao write auth/token/roles/ci …; bao token create -role=ci
    ok(s.root(&[
        "write",
        "auth/token/roles/ci",
        "allowed_policies=signer",
        "orphan=true",
        "token_period=2h",
    ]));
    ok(s.root(&[
        "policy",
        "write",
        "signer",
        &policy_file(
            &s,
            "signer",
            r#"path "ssh/sign/dev" {
  capabilities = ["update"]
  allowed_parameters = {
    "valid_principals" = ["alice"]
    "public_key" = []
  }
}
"#,
        ),
    ]));
    let out = ok(s.root(&["policy", "read", "signer"]));
    assert!(out.contains("allowed_parameters"), "{out}");
    let v = json(&ok(s.root(&[
        "token",
        "create",
        "-format=json",
        "-role=ci",
        "-policy=signer",
    ])));
    let signer = v["auth"]["client_token"].as_str().unwrap().to_string();
    assert_eq!(v["auth"]["orphan"], true, "{v}");
    assert_eq!(v["auth"]["lease_duration"], 7200, "{v}");
    let out = ok(s.root(&["token", "lookup", &signer]));
    assert_eq!(row(&out, "path"), Some("auth/token/create/ci"), "{out}");
    let (code, err) = fails(s.root(&["token", "create", "-role=ci", "-policy=root"]));
    assert_eq!(code, 2, "{err}");

    ok(s.root(&["write", "ssh/config/ca", "key_type=ssh-ed25519"]));
    ok(s.root(&[
        "write",
        "ssh/roles/dev",
        "key_type=ca",
        "allow_user_certificates=true",
        "allowed_users=*",
        "default_user=alice",
    ]));
    let (_, public) = keypair(s.home.path(), "id_ed25519", "ed25519", None);
    let public_arg = format!("public_key={}", public.trim());
    let as_signer = |principal: &str| {
        let mut c = s.user(&[
            "write",
            "-field=signed_key",
            "ssh/sign/dev",
            &public_arg,
            &format!("valid_principals={principal}"),
        ]);
        c.env("BAO_TOKEN", &signer);
        c
    };
    let (code, err) = fails(as_signer("root"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("permission denied"), "{err}");
    let cert = ok(as_signer("alice"));
    assert!(
        cert.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{cert}"
    );
}

#[test]
fn leases_are_looked_up_renewed_and_revoked() {
    let s = Session::start();
    let v = otp_creds(&s, "ssh");
    let lease = v["lease_id"].as_str().unwrap().to_string();
    assert!(lease.starts_with("ssh/creds/otp/"), "{v}");
    // $ bao lease lookup ID
    let out = ok(s.root(&["lease", "lookup", &lease]));
    assert_eq!(row(&out, "id"), Some(lease.as_str()), "{out}");
    assert_eq!(row(&out, "renewable"), Some("false"), "{out}");
    // An OTP's lease is not renewable, in Vault as here.
    let (code, err) = fails(s.root(&["lease", "renew", &lease]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not renewable"), "{err}");
    // $ bao lease revoke ID
    let out = ok(s.root(&["lease", "revoke", &lease]));
    assert!(
        out.contains("All revocation operations queued successfully!"),
        "{out}"
    );
    let (code, err) = fails(s.root(&["lease", "lookup", &lease]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid lease"), "{err}");
    // The OTP went with its lease.
    let otp = v["data"]["key"].as_str().unwrap();
    let (code, err) = fails(s.user(&["write", "ssh/verify", &format!("otp={otp}")]));
    assert_eq!(code, 2, "{err}");

    // Every session of one user ended at once, as in Vault: tokens are
    // leases under the path that made them.
    let maker = r#"path "auth/token/create" { capabilities = ["update"] }"#;
    ok(s.root(&["policy", "write", "maker", &policy_file(&s, "maker", maker)]));
    for user in ["alice", "alicia"] {
        ok(s.root(&[
            "write",
            &format!("auth/userpass/users/{user}"),
            "password=correct horse",
            "token_policies=maker",
        ]));
    }
    let login = |user: &str| {
        ok(s.user(&[
            "write",
            "-field=token",
            &format!("auth/userpass/login/{user}"),
            "password=correct horse",
        ]))
    };
    let (alice1, alice2, alicia) = (login("alice"), login("alice"), login("alicia"));
    let mut create = s.user(&["write", "-field=token", "-f", "auth/token/create"]);
    create.env("BAO_TOKEN", &alice1);
    let child = ok(create);
    let works = |token: &str| {
        let mut c = s.user(&["token", "lookup"]);
        c.env("BAO_TOKEN", token);
        run(&mut c).0 == 0
    };
    assert!(works(&child));
    // $ bao lease revoke -prefix auth/userpass/login/alice
    let out = ok(s.root(&["lease", "revoke", "-prefix", "auth/userpass/login/alice"]));
    assert!(
        out.contains("All revocation operations queued successfully!"),
        "{out}"
    );
    assert!(!works(&alice1) && !works(&alice2), "alice's sessions ended");
    assert!(!works(&child), "with the tokens they made");
    assert!(works(&alicia), "whole path segments only");
}

#[test]
fn bao_ssh_logs_in_with_a_certificate_and_with_an_otp() {
    let s = Session::start();
    let ca = ok(s.root(&[
        "write",
        "-field=public_key",
        "ssh/config/ca",
        "key_type=ssh-ed25519",
    ]));
    ok(s.root(&[
        "write",
        "ssh/roles/dev",
        "key_type=ca",
        "allow_user_certificates=true",
        "allowed_users=root",
        "default_user=root",
        // What bao ssh asks for in every certificate.
        "allowed_extensions=permit-pty,permit-X11-forwarding,permit-agent-forwarding,permit-port-forwarding,permit-user-rc",
    ]));
    ok(s.root(&[
        "write",
        "ssh/roles/otp",
        "key_type=otp",
        "default_user=root",
        "cidr_list=127.0.0.0/8",
    ]));
    // One sshd: certificates from the CA, and passwords checked by
    // gatepass-helper (vault-ssh-helper's configuration and PAM lines).
    let helper_conf = s.path("helper.hcl");
    std::fs::write(
        &helper_conf,
        format!(
            "vault_addr = \"{}\"\nca_cert = \"{}\"\nssh_mount_point = \"ssh\"\nallowed_roles = \"*\"\n",
            s.server.addr,
            s.server.cacert.display()
        ),
    )
    .unwrap();
    let mut sshd = Sshd::new(SshdOptions::default());
    let ca_file = sshd.write_file("user_ca.pub", &ca);
    sshd.options
        .extra_config
        .push(format!("TrustedUserCAKeys {}", ca_file.display()));
    sshd.options.pam = Some(PamSetup {
        service: format!("bao-cli-{}", std::process::id()),
        pam_config: format!(
            "auth requisite pam_exec.so quiet expose_authtok {} -config={}\n\
             auth optional pam_unix.so not_set_pass use_first_pass nodelay\n\
             account required pam_unix.so\n\
             session required pam_unix.so\n",
            bin("gatepass-helper").display(),
            helper_conf.display()
        ),
    });
    sshd.launch();
    let port = sshd.port.to_string();
    let ssh_options = |c: &mut Command| {
        c.args([
            "-strict-host-key-checking=no",
            "-user-known-hosts-file=/dev/null",
            "root@127.0.0.1",
            "-p",
            &port,
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=no",
            "-F",
            "/dev/null",
        ]);
    };

    // $ bao ssh -mode=ca -role=dev root@HOST echo …
    let (key, _) = keypair(s.home.path(), "id_ed25519", "ed25519", None);
    let mut c = s.root(&[
        "ssh",
        "-mode=ca",
        "-role=dev",
        &format!("-private-key-path={}", key.display()),
        &format!("-public-key-path={}.pub", key.display()),
    ]);
    ssh_options(&mut c);
    c.arg("echo signed in");
    let out = ok(c);
    assert_eq!(out, "signed in\n");

    // $ bao ssh -mode=otp -role=otp root@HOST echo … (sshpass types the OTP)
    let mut c = s.root(&["ssh", "-mode=otp", "-role=otp"]);
    ssh_options(&mut c);
    c.args([
        "-o",
        "PreferredAuthentications=password,keyboard-interactive",
    ]);
    c.arg("echo otp in");
    let (code, out, err) = run(&mut c);
    assert_eq!(code, 0, "{out}{err}\nsshd: {}", sshd.log());
    assert_eq!(out, "otp in\n");
}

/// Output with the values that differ between two requests (request IDs,
/// tokens, accessors) masked.
fn masked(out: &str) -> String {
    out.lines()
        .map(|l| {
            let key = l.trim_start().split(':').next().unwrap_or_default();
            if ["request_id", "client_token", "accessor"].contains(&key) {
                format!("{}: …", l.split(':').next().unwrap_or_default())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn gatepass_prints_yaml_as_bao_does() {
    let s = Session::start();
    let gatepass = |args: &[&str]| {
        let mut c = Command::new(bin("gatepass"));
        for v in gatepass_tests::CLI_AMBIENT_ENV {
            c.env_remove(v);
        }
        c.env("HOME", s.home.path())
            .envs(s.server.cli_env())
            .args(args);
        c
    };
    ok(s.root(&[
        "policy",
        "write",
        "dev",
        &policy_file(&s, "dev", DEV_POLICY),
    ]));
    ok(s.root(&[
        "write",
        "auth/userpass/users/alice",
        "password=pw",
        "token_policies=dev",
    ]));
    for args in [
        &["read", "sys/auth/token/tune"][..],
        &["read", "sys/policies/acl/dev"],
        &["read", "auth/userpass/users/alice"],
        &["list", "sys/policies/acl"],
        &["write", "auth/token/create", "policies=dev", "ttl=1h"],
        &["write", "auth/userpass/login/alice", "password=pw"],
    ] {
        let mut with_format = vec!["-format=yaml"];
        with_format.splice(0..0, args[..1].iter().copied());
        with_format.extend_from_slice(&args[1..]);
        let theirs = ok(s.root(&with_format));
        let ours = ok(gatepass(&with_format));
        assert_eq!(masked(&ours), masked(&theirs), "{args:?}");
    }
}
