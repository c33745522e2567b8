//! `gatepass-helper`, the pam_exec helper (a drop-in for vault-ssh-helper),
//! against a real dev server over TLS: logins into a real sshd through
//! `pam_exec.so expose_authtok` with password and keyboard-interactive
//! authentication, every refusal, vault-ssh-helper's HCL configuration and
//! flags unchanged, and the time bound measured on the binary itself.
//! Run as root (sshd, /etc/pam.d).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::pam_common::*;
use gatepass_tests::bin;
use gatepass_tests::sshd::{PamSetup, Sshd, SshdOptions};

/// vault-ssh-helper's documented configuration, only the address and CA
/// path filled in.
fn vault_doc_config(addr: &str, ca: &Path) -> String {
    format!(
        "vault_addr = \"{addr}\"\ntls_skip_verify = false\nca_cert = \"{}\"\nssh_mount_point = \"ssh\"\nallowed_roles = \"*\"\n",
        ca.display()
    )
}

/// Runs the helper as pam_exec does: a clean environment with the PAM
/// variables, the token on stdin ending in a NUL.
fn helper(args: &[&str], user: Option<&str>, token: &str) -> Ran {
    let mut cmd = Command::new(bin("gatepass-helper"));
    cmd.args(args)
        .env_clear()
        .env("PAM_RHOST", "192.0.2.10")
        .env("PAM_SERVICE", "sshd")
        .env("PAM_TYPE", "auth");
    if let Some(u) = user {
        cmd.env("PAM_USER", u);
    }
    let mut input = token.as_bytes().to_vec();
    input.push(0);
    run_with_stdin(&mut cmd, &input, Duration::from_secs(TIMEOUT_SECS + 10))
}

#[test]
fn pam_exec_helper_logs_in_with_password_and_keyboard_interactive_and_refuses_the_rest() {
    let env = Env::start();
    // Made first, used last: by then its 2 s TTL is over.
    let expired = env.otp(SHORT_ROLE, "root", "127.0.0.1");
    let made = Instant::now();

    // The config file the PAM line names; each case puts its own text there
    // (the helper reads it at every login). No extension: the helper tells
    // HCL from TOML by the text.
    let config = env.dir.path().join("helper.conf");
    let pam_log = env.dir.path().join("pam_exec.log");
    let mut sshd = Sshd::new(SshdOptions::default());
    // vault-ssh-helper's PAM lines with only the helper's path changed.
    sshd.options.pam = Some(PamSetup {
        service: service("helper-sshd"),
        pam_config: format!(
            "auth requisite pam_exec.so quiet expose_authtok log={log} {helper} -config={config}\n\
             auth optional pam_unix.so not_set_pass use_first_pass nodelay\n\
             account required pam_unix.so\n\
             session required pam_unix.so\n",
            log = pam_log.display(),
            helper = bin("gatepass-helper").display(),
            config = config.display(),
        ),
    });
    sshd.launch();
    let use_config = |p: &Path| std::fs::copy(p, &config).map(|_| ()).unwrap();

    // 1. vault-ssh-helper's own configuration, unchanged: password login.
    std::fs::write(
        &config,
        vault_doc_config(&env.server.addr, &env.server.cacert),
    )
    .unwrap();
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    assert_eq!(sshd.client().password(&otp).run_ok("id -un"), "root\n");
    let log = std::fs::read_to_string(&pam_log).unwrap();
    assert!(log.contains("OTP login granted"), "{log}");
    assert!(!log.contains(&otp), "the OTP is in the log: {log}");

    // From here on gatepass's TOML, whose syslog socket the test reads.
    use_config(&env.toml_config("good.toml", &[], None, ""));
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    assert_eq!(sshd.client().password(&otp).run_ok("echo hello"), "hello\n");
    let line = env.assert_one_line("password", "granted", "OTP accepted", &otp);
    assert!(
        line.contains("gatepass-helper[") && line.contains("user=root rhost=127.0.0.1"),
        "{line}"
    );

    // 2. The same OTP again: the server consumed it.
    assert_refused(
        &sshd,
        sshd.client().password(&otp).run("true"),
        "replayed OTP",
    );
    env.assert_one_line("replayed", "denied", "OTP not found", &otp);

    // 3. Keyboard-interactive (the PAM conversation's prompt).
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    assert_eq!(
        sshd.client().keyboard_interactive(&otp).run_ok("echo kbd"),
        "kbd\n"
    );
    env.assert_one_line("keyboard-interactive", "granted", "OTP accepted", &otp);

    // 4. An OTP for another user.
    let otp = env.otp(ROLE, "alice", "127.0.0.1");
    assert_refused(
        &sshd,
        sshd.client().password(&otp).run("true"),
        "OTP for alice",
    );
    env.assert_one_line("other user", "denied", "username mismatch", &otp);

    // 5. An OTP for another host's IP.
    let otp = env.otp(ROLE, "root", OTHER_IP);
    assert_refused(
        &sshd,
        sshd.client().keyboard_interactive(&otp).run("true"),
        "OTP for another IP",
    );
    env.assert_one_line("other IP", "denied", "not an address of this host", &otp);

    // 6. A server whose certificate does not chain to the pinned CA.
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    use_config(&env.toml_config("foreign.toml", &[], Some(&foreign_ca(env.dir.path())), ""));
    assert_refused(
        &sshd,
        sshd.client().password(&otp).run("true"),
        "foreign CA",
    );
    let line = env.assert_one_line("foreign CA", "failed", "certificate", &otp);
    assert!(
        line.contains("UnknownIssuer") || line.contains("invalid peer certificate"),
        "{line}"
    );

    // 7. A server that is down.
    use_config(&env.toml_config("down.toml", &[&closed_server()], None, ""));
    assert_refused(
        &sshd,
        sshd.client().password(&otp).run("true"),
        "server down",
    );
    env.assert_one_line("down", "failed", "no server answered", &otp);

    // 8. A server that accepts and never answers: refused within the bound.
    let hanging = Hanging::start();
    use_config(&env.toml_config("hanging.toml", &[&hanging.url], None, ""));
    let start = Instant::now();
    assert_refused(
        &sshd,
        sshd.client().password(&otp).run("true"),
        "hanging server",
    );
    assert!(
        start.elapsed() < Duration::from_secs(TIMEOUT_SECS + 8),
        "the login took {:?}",
        start.elapsed()
    );
    env.assert_one_line("hanging", "failed", "no answer within", &otp);

    // The OTP that failed against the wrong servers still works on the right one.
    use_config(&env.toml_config("good.toml", &[], None, ""));
    assert_eq!(sshd.client().password(&otp).run_ok("echo again"), "again\n");
    env.assert_one_line("after the failures", "granted", "OTP accepted", &otp);

    // 9. An expired OTP.
    sleep_until(made, Duration::from_secs(3));
    assert_refused(
        &sshd,
        sshd.client().password(&expired).run("true"),
        "expired OTP",
    );
    env.assert_one_line("expired", "denied", "OTP not found", &expired);
}

#[test]
fn vault_ssh_helper_hcl_config_and_flags_work_unchanged() {
    let env = Env::start();
    let hcl = env.dir.path().join("config.hcl");
    std::fs::write(&hcl, vault_doc_config(&env.server.addr, &env.server.cacert)).unwrap();
    let cfg_eq = format!("-config={}", hcl.display());
    let cfg = hcl.display().to_string();

    // $ vault-ssh-helper -verify-only -config=/etc/vault-ssh-helper.d/config.hcl
    for args in [
        vec!["-verify-only", cfg_eq.as_str()],
        vec!["--verify-only", "--config", cfg.as_str()],
    ] {
        let r = helper(&args, None, "");
        assert_eq!(r.status, 0, "{args:?}: {r:?}");
        assert!(r.stderr.contains("verification successful"), "{r:?}");
    }

    // pam_exec's call, with -config=FILE, -config FILE and --config=FILE.
    for args in [
        vec![cfg_eq.clone()],
        vec!["-config".to_string(), cfg.clone()],
        vec![
            format!("--config={cfg}"),
            "-log-level".into(),
            "debug".into(),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let otp = env.otp(ROLE, "root", "127.0.0.1");
        let r = helper(&args, Some("root"), &otp);
        assert_eq!(r.status, 0, "{args:?}: {r:?}");
        assert!(r.stderr.contains("OTP login granted"), "{r:?}");
        assert!(!r.stderr.contains(&otp), "{r:?}");
        let r = helper(&args, Some("root"), &otp);
        assert_eq!(r.status, 1, "replayed: {r:?}");
        assert!(r.stderr.contains("OTP not found"), "{r:?}");
    }

    // vault-ssh-helper's rules: no CA file without -dev; an unknown key.
    let no_ca = env.dir.path().join("no-ca.hcl");
    std::fs::write(
        &no_ca,
        format!(
            "vault_addr = \"{}\"\nallowed_roles = \"*\"\n",
            env.server.addr
        ),
    )
    .unwrap();
    let r = helper(
        &[&format!("-config={}", no_ca.display()), "-verify-only"],
        None,
        "",
    );
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.contains("ca_cert or ca_path"), "{r:?}");
    let bad = env.dir.path().join("bad.hcl");
    std::fs::write(
        &bad,
        format!(
            "{}\nvault_token = \"x\"\n",
            vault_doc_config(&env.server.addr, &env.server.cacert)
        ),
    )
    .unwrap();
    let r = helper(
        &[&format!("-config={}", bad.display()), "-verify-only"],
        None,
        "",
    );
    assert_eq!(r.status, 1, "{r:?}");

    // tls_server_name: the certificate is checked for that name.
    let named = |name: &str| {
        let p = env.dir.path().join(format!("named-{name}.hcl"));
        std::fs::write(
            &p,
            format!(
                "{}tls_server_name = \"{name}\"\n",
                vault_doc_config(&env.server.addr, &env.server.cacert)
            ),
        )
        .unwrap();
        format!("-config={}", p.display())
    };
    assert_eq!(
        helper(&[&named("localhost"), "-verify-only"], None, "").status,
        0
    );
    let r = helper(&[&named("elsewhere.example"), "-verify-only"], None, "");
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.contains("certificate"), "{r:?}");

    // -dev allows http:// (and warns); without -dev it is refused outright.
    let http = env.dir.path().join("http.hcl");
    std::fs::write(
        &http,
        "vault_addr = \"http://127.0.0.1:9\"\nallowed_roles = \"*\"\n",
    )
    .unwrap();
    let http = format!("-config={}", http.display());
    let r = helper(&[&http, "-verify-only"], None, "");
    assert!(r.status == 1 && r.stderr.contains("http://"), "{r:?}");
    let r = helper(&[&http, "-verify-only", "-dev"], None, "");
    assert!(
        r.status == 1 && r.stderr.contains("Dev mode is enabled"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("127.0.0.1:9"),
        "it tried the server: {r:?}"
    );
}

#[test]
fn helper_binary_checks_and_bounds() {
    let env = Env::start();
    let good = env.toml_config("good.toml", &[], None, "");
    let good_arg = format!("-config={}", good.display());

    // Token with a trailing newline, no NUL (a person at a shell).
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    let mut cmd = Command::new(bin("gatepass-helper"));
    cmd.arg(&good_arg).env_clear().env("PAM_USER", "root");
    let r = run_with_stdin(
        &mut cmd,
        format!("{otp}\n").as_bytes(),
        Duration::from_secs(10),
    );
    assert_eq!(r.status, 0, "{r:?}");
    env.assert_one_line("newline", "granted", "OTP accepted", &otp);

    // No PAM_USER; not an OTP (never sent to the server); a role this host
    // does not allow.
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    assert_eq!(helper(&[&good_arg], None, &otp).status, 1);
    env.assert_one_line("no user", "denied", "no PAM user", &otp);
    assert_eq!(helper(&[&good_arg], Some("root"), "hunter2").status, 1);
    env.assert_one_line("a password", "denied", "not an OTP", "hunter2");
    let other = env.otp(OTHER_ROLE, "root", "127.0.0.1");
    assert_eq!(helper(&[&good_arg], Some("root"), &other).status, 1);
    env.assert_one_line("role", "denied", "is not in allowed_roles", &other);
    // The OTP refused for a missing user was not sent: it still works.
    assert_eq!(helper(&[&good_arg], Some("root"), &otp).status, 0);
    env.assert_one_line("unused OTP", "granted", "OTP accepted", &otp);

    // Several servers, tried in turn: down, then the real one.
    let two = env.toml_config("two.toml", &[&closed_server(), &env.server.addr], None, "");
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    let r = helper(&[&format!("-config={}", two.display())], Some("root"), &otp);
    assert_eq!(r.status, 0, "{r:?}");
    env.assert_one_line("second server", "granted", &env.server.addr, &otp);

    // A hanging server: the helper itself returns within timeout + 2 s,
    // refusing. Timed on the binary, not through ssh.
    let hanging = Hanging::start();
    let hang = env.toml_config("hang.toml", &[&hanging.url], None, "");
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    let r = helper(
        &[&format!("-config={}", hang.display())],
        Some("root"),
        &otp,
    );
    assert_eq!(r.status, 1, "{r:?}");
    assert!(
        r.elapsed < Duration::from_secs(TIMEOUT_SECS + 2),
        "the helper took {:?} with a {TIMEOUT_SECS}s timeout",
        r.elapsed
    );
    assert!(
        r.elapsed >= Duration::from_secs(TIMEOUT_SECS) - Duration::from_millis(100),
        "{:?}",
        r.elapsed
    );
    env.assert_one_line("hanging", "failed", "no answer within", &otp);
    // And the hanging server before a good one still leaves it time.
    let both = env.toml_config("both.toml", &[&hanging.url, &env.server.addr], None, "");
    let r = helper(
        &[&format!("-config={}", both.display())],
        Some("root"),
        &otp,
    );
    assert_eq!(r.status, 0, "{r:?}");
    assert!(
        r.elapsed < Duration::from_secs(TIMEOUT_SECS + 2),
        "{:?}",
        r.elapsed
    );
    env.assert_one_line("hanging, then good", "granted", "OTP accepted", &otp);

    // -verify-only: every server must answer the echo.
    let r = helper(&[&good_arg, "-verify-only"], None, "");
    assert_eq!(r.status, 0, "{r:?}");
    let r = helper(
        &[&format!("-config={}", two.display()), "-verify-only"],
        None,
        "",
    );
    assert_eq!(r.status, 1, "{r:?}");
    assert!(
        r.stderr.contains("verification successful") && r.stderr.contains("refused"),
        "{r:?}"
    );

    // A TOML key gatepass does not know is refused (deny_unknown_fields).
    let typo = env.toml_config("typo.toml", &[], None, "alowed_roles = [\"*\"]\n");
    let r = helper(
        &[&format!("-config={}", typo.display()), "-verify-only"],
        None,
        "",
    );
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.contains("alowed_roles"), "{r:?}");
}
