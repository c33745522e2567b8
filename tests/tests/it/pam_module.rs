//! `pam_gatepass.so`, the native PAM module, against a real dev server over
//! TLS: logins into a real sshd (password and keyboard-interactive, with the
//! module alone in the auth stack), and pamtester driving the module
//! directly for the same cases, the PAM_AUTHTOK path, module arguments and
//! the time bound. Run as root (sshd, /etc/pam.d).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::pam_common::*;
use gatepass_tests::bin;
use gatepass_tests::sshd::{PamSetup, Sshd, SshdOptions};

/// The module as a PAM line names it: its path and the `gatepass-helper`
/// it runs for the direct way (hostd not answering).
fn module() -> String {
    format!(
        "{} helper={}",
        bin("libpam_gatepass.so").display(),
        bin("gatepass-helper").display()
    )
}

#[test]
fn module_in_sshd_logs_in_with_password_and_keyboard_interactive_and_refuses_the_rest() {
    let env = Env::start();
    let expired = env.otp(SHORT_ROLE, "root", "127.0.0.1");
    let made = Instant::now();
    let config = env.dir.path().join("helper.toml");
    let use_config = |p: &Path| std::fs::copy(p, &config).map(|_| ()).unwrap();
    use_config(&env.toml_config("good.toml", &[], None, ""));

    // The module alone decides auth; its setcred succeeds, which sshd needs
    // after keyboard-interactive, so no pam_unix line is needed.
    let mut sshd = Sshd::new(SshdOptions::default());
    sshd.options.pam = Some(PamSetup {
        service: service("module-sshd"),
        pam_config: format!(
            "auth required {m} config={c}\naccount required {m}\nsession required pam_unix.so\n",
            m = module(),
            c = config.display()
        ),
    });
    sshd.launch();

    let otp = env.otp(ROLE, "root", "127.0.0.1");
    assert_eq!(sshd.client().password(&otp).run_ok("id -un"), "root\n");
    let line = env.assert_one_line("password", "granted", "OTP accepted", &otp);
    assert!(
        line.contains("]: pam_gatepass(gatepass-test-module-sshd-")
            && line.contains("rhost=127.0.0.1"),
        "{line}"
    );

    assert_refused(
        &sshd,
        sshd.client().keyboard_interactive(&otp).run("true"),
        "replayed OTP",
    );
    env.assert_one_line("replayed", "denied", "OTP not found", &otp);

    let otp = env.otp(ROLE, "root", "127.0.0.1");
    assert_eq!(
        sshd.client().keyboard_interactive(&otp).run_ok("echo kbd"),
        "kbd\n"
    );
    env.assert_one_line("keyboard-interactive", "granted", "OTP accepted", &otp);

    let otp = env.otp(ROLE, "alice", "127.0.0.1");
    assert_refused(
        &sshd,
        sshd.client().password(&otp).run("true"),
        "OTP for alice",
    );
    env.assert_one_line("other user", "denied", "username mismatch", &otp);

    let otp = env.otp(ROLE, "root", OTHER_IP);
    assert_refused(
        &sshd,
        sshd.client().password(&otp).run("true"),
        "OTP for another IP",
    );
    env.assert_one_line("other IP", "denied", "not an address of this host", &otp);

    let otp = env.otp(ROLE, "root", "127.0.0.1");
    use_config(&env.toml_config("foreign.toml", &[], Some(&foreign_ca(env.dir.path())), ""));
    assert_refused(
        &sshd,
        sshd.client().keyboard_interactive(&otp).run("true"),
        "foreign CA",
    );
    env.assert_one_line("foreign CA", "failed", "certificate", &otp);

    use_config(&env.toml_config("down.toml", &[&closed_server()], None, ""));
    assert_refused(
        &sshd,
        sshd.client().password(&otp).run("true"),
        "server down",
    );
    env.assert_one_line("down", "failed", "no server answered", &otp);

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
        "{:?}",
        start.elapsed()
    );
    env.assert_one_line("hanging", "failed", "no answer within", &otp);

    sleep_until(made, Duration::from_secs(3));
    use_config(&env.toml_config("good.toml", &[], None, ""));
    assert_refused(
        &sshd,
        sshd.client().password(&expired).run("true"),
        "expired OTP",
    );
    env.assert_one_line("expired", "denied", "OTP not found", &expired);
}

/// `pamtester -v [-I rhost=…] SERVICE USER OPS…` with `input` on stdin (the
/// conversation's answers, one a line).
fn pamtester(service: &str, user: &str, ops: &[&str], rhost: Option<&str>, input: &str) -> Ran {
    let mut cmd = Command::new("pamtester");
    cmd.arg("-v");
    if let Some(h) = rhost {
        cmd.args(["-I", &format!("rhost={h}")]);
    }
    cmd.args([service, user]).args(ops);
    run_with_stdin(
        &mut cmd,
        input.as_bytes(),
        Duration::from_secs(TIMEOUT_SECS + 10),
    )
}

fn assert_pamtester(r: &Ran, ok: bool, what: &str) {
    let said = format!("{}{}", r.stdout, r.stderr);
    if ok {
        assert!(
            r.status == 0 && said.contains("successfully"),
            "{what}: {r:?}"
        );
    } else {
        assert!(
            r.status != 0 && !said.contains("successfully authenticated"),
            "{what}: {r:?}"
        );
    }
}

#[test]
fn pamtester_drives_the_module_through_every_case() {
    let env = Env::start();
    let expired = env.otp(SHORT_ROLE, "root", "127.0.0.1");
    let made = Instant::now();
    let config = env.dir.path().join("helper.toml");
    let use_config = |p: &Path| std::fs::copy(p, &config).map(|_| ()).unwrap();
    use_config(&env.toml_config("good.toml", &[], None, ""));
    let m = module();
    let pam = PamFile::write(
        &service("pamtester"),
        &format!(
            "auth required {m} config={c}\naccount required {m}\n",
            c = config.display()
        ),
    );
    let run = |otp: &str| {
        pamtester(
            &pam.service,
            "root",
            &["authenticate"],
            Some("203.0.113.9"),
            &format!("{otp}\n"),
        )
    };

    // The OTP through the conversation (pamtester has no PAM_AUTHTOK), then
    // the account hook.
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    let r = pamtester(
        &pam.service,
        "root",
        &["authenticate", "acct_mgmt"],
        Some("203.0.113.9"),
        &format!("{otp}\n"),
    );
    assert_pamtester(&r, true, "valid OTP");
    assert!(
        r.stdout.contains("account management done")
            || r.stderr.contains("account management done"),
        "{r:?}"
    );
    let line = env.assert_one_line("valid", "granted", "OTP accepted", &otp);
    assert!(
        line.contains("pamtester[") && line.contains("rhost=203.0.113.9"),
        "{line}"
    );

    assert_pamtester(&run(&otp), false, "replayed");
    env.assert_one_line("replayed", "denied", "OTP not found", &otp);

    let otp = env.otp(ROLE, "alice", "127.0.0.1");
    assert_pamtester(&run(&otp), false, "other user");
    env.assert_one_line("other user", "denied", "username mismatch", &otp);

    let otp = env.otp(ROLE, "root", OTHER_IP);
    assert_pamtester(&run(&otp), false, "other IP");
    env.assert_one_line("other IP", "denied", "not an address of this host", &otp);

    let otp = env.otp(OTHER_ROLE, "root", "127.0.0.1");
    assert_pamtester(&run(&otp), false, "role not allowed");
    env.assert_one_line("role", "denied", "is not in allowed_roles", &otp);

    assert_pamtester(&run("hunter2"), false, "a password");
    env.assert_one_line("a password", "denied", "not an OTP", "hunter2");

    let otp = env.otp(ROLE, "root", "127.0.0.1");
    use_config(&env.toml_config("foreign.toml", &[], Some(&foreign_ca(env.dir.path())), ""));
    assert_pamtester(&run(&otp), false, "foreign CA");
    env.assert_one_line("foreign CA", "failed", "certificate", &otp);

    use_config(&env.toml_config("down.toml", &[&closed_server()], None, ""));
    assert_pamtester(&run(&otp), false, "server down");
    env.assert_one_line("down", "failed", "no server answered", &otp);

    // A hanging server: pamtester returns within the bound.
    let hanging = Hanging::start();
    use_config(&env.toml_config("hanging.toml", &[&hanging.url], None, ""));
    let r = run(&otp);
    assert_pamtester(&r, false, "hanging");
    assert!(
        r.elapsed < Duration::from_secs(TIMEOUT_SECS + 2),
        "took {:?}",
        r.elapsed
    );
    env.assert_one_line("hanging", "failed", "no answer within 2.0s", &otp);

    // timeout= on the PAM line overrides the file.
    let quick = PamFile::write(
        &service("pamtester-quick"),
        &format!(
            "auth required {} config={} timeout=500ms\n",
            m,
            config.display()
        ),
    );
    let r = pamtester(
        &quick.service,
        "root",
        &["authenticate"],
        None,
        &format!("{otp}\n"),
    );
    assert_pamtester(&r, false, "hanging, timeout=500ms");
    assert!(
        r.elapsed < Duration::from_millis(1500),
        "took {:?}",
        r.elapsed
    );
    env.assert_one_line("hanging, 500ms", "failed", "no answer within 0.5s", &otp);

    // The OTP that met the wrong servers still works on the right one.
    use_config(&env.toml_config("good.toml", &[], None, ""));
    assert_pamtester(&run(&otp), true, "after the failures");
    env.assert_one_line("after the failures", "granted", "OTP accepted", &otp);

    sleep_until(made, Duration::from_secs(3));
    assert_pamtester(&run(&expired), false, "expired");
    env.assert_one_line("expired", "denied", "OTP not found", &expired);
}

#[test]
fn module_uses_pam_authtok_and_fails_closed_on_bad_arguments() {
    let env = Env::start();
    let config = env.toml_config("good.toml", &[], None, "");
    let m = module();

    // pam_unix asks first and leaves the answer in PAM_AUTHTOK (and fails:
    // it is not root's password); with use_first_pass the module takes it
    // from there and never asks. One line of input: a second prompt would
    // find EOF and fail.
    let stacked = PamFile::write(
        &service("pamtester-authtok"),
        &format!(
            "auth optional pam_unix.so nodelay\nauth required {} use_first_pass config={}\n",
            m,
            config.display()
        ),
    );
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    assert_pamtester(
        &pamtester(
            &stacked.service,
            "root",
            &["authenticate"],
            None,
            &format!("{otp}\n"),
        ),
        true,
        "OTP from PAM_AUTHTOK",
    );
    env.assert_one_line("authtok", "granted", "OTP accepted", &otp);
    // use_first_pass with nothing in PAM_AUTHTOK: refused, nothing asked.
    let alone = PamFile::write(
        &service("pamtester-first-pass"),
        &format!(
            "auth required {} use_first_pass config={}\n",
            m,
            config.display()
        ),
    );
    let otp = env.otp(ROLE, "root", "127.0.0.1");
    assert_pamtester(
        &pamtester(
            &alone.service,
            "root",
            &["authenticate"],
            None,
            &format!("{otp}\n"),
        ),
        false,
        "use_first_pass without a token",
    );
    env.assert_one_line("no token", "denied", "no OTP given", &otp);

    // A misspelt argument, a missing file, a mount override that does not
    // exist, a helper that is not there for the direct way (no hostd here),
    // a helper named without its path: each refuses (fails closed) with a
    // line saying why.
    for (args, reason) in [
        (
            format!("confg={}", config.display()),
            "unknown module argument",
        ),
        (
            "config=/nonexistent/helper.toml".to_string(),
            "cannot read /nonexistent/helper.toml",
        ),
        (
            format!("config={} mount=nope", config.display()),
            "server refused the OTP",
        ),
        (
            format!(
                "config={} helper=/nonexistent/gatepass-helper",
                config.display()
            ),
            "/nonexistent/gatepass-helper: starting it",
        ),
        (
            format!("config={} helper=gatepass-helper", config.display()),
            // The log line escapes the quotes.
            r#"unknown module argument \"helper=gatepass-helper\""#,
        ),
    ] {
        let f = PamFile::write(
            &service("pamtester-args"),
            &format!("auth required {} stderr {args}\n", m),
        );
        let r = pamtester(
            &f.service,
            "root",
            &["authenticate"],
            None,
            &format!("{otp}\n"),
        );
        assert_pamtester(&r, false, &args);
        let lines = env.syslog_lines(Duration::from_millis(500));
        // Once the config is read, its syslog_socket has the line.
        if reason.starts_with("server") || reason.starts_with("/nonexistent/gatepass-helper") {
            let line = lines
                .iter()
                .find(|l| l.contains("OTP login"))
                .unwrap_or_else(|| panic!("{args}: {lines:?}"));
            assert!(line.contains(reason) && !line.contains(&otp), "{line}");
        } else {
            // Before the config is read there is no syslog_socket; `stderr`
            // shows the line.
            assert!(
                r.stderr.contains("OTP login failed") && r.stderr.contains(reason),
                "{args}: {r:?}"
            );
            assert!(!r.stderr.contains(&otp), "{r:?}");
        }
    }
    // The OTP offered to the misconfigured stacks was never consumed by the
    // failures that stopped before the server.
    let ok = PamFile::write(
        &service("pamtester-ok"),
        &format!("auth required {} config={}\n", m, config.display()),
    );
    let r = pamtester(
        &ok.service,
        "root",
        &["authenticate"],
        None,
        &format!("{otp}\n"),
    );
    // mount=nope asked the server under another mount; the OTP lives on.
    assert_pamtester(&r, true, "unused OTP");
}
