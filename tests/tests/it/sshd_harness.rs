//! The sshd harness itself: a private sshd that trusts a user CA, the real
//! `ssh` client with keys, certificates, known_hosts, an agent and PAM
//! passwords. Each test reads like a session at a terminal. Run as root.

use std::path::{Path, PathBuf};

use gatepass_tests::sshd::{
    keygen, pub_path, sign_host_key, sign_user_key, Agent, PamSetup, Sshd, SshdOptions,
};

/// A user CA and a user key in a fresh folder of the client's.
struct UserKeys {
    dir: tempfile::TempDir,
    ca: PathBuf,
    key: PathBuf,
}

fn user_keys() -> UserKeys {
    let dir = tempfile::tempdir().expect("tempdir");
    // $ ssh-keygen -t ed25519 -f ca -N ''; ssh-keygen -t ed25519 -f user -N ''
    let ca = keygen(dir.path(), "ca", "ed25519", None);
    let key = keygen(dir.path(), "user", "ed25519", None);
    UserKeys { dir, ca, key }
}

fn assert_denied(sshd: &Sshd, (status, out, err): (i32, String, String), what: &str) {
    assert!(
        status != 0 && err.contains("Permission denied"),
        "{what}: expected a refusal, got status {status}\nstdout: {out}\nstderr: {err}\n--- sshd log ---\n{}",
        sshd.log()
    );
}

#[test]
fn certificate_for_root_logs_in_and_the_bare_key_is_refused() {
    let k = user_keys();
    // $ ssh-keygen -s ca -I id -n root -V +5m user.pub
    let cert = sign_user_key(&k.ca, &pub_path(&k.key), "id", &["root"], "+5m");
    // sshd_config: TrustedUserCAKeys ca.pub
    let sshd = Sshd::start(SshdOptions::trusting_user_ca(&pub_path(&k.ca)));

    // $ ssh -i user -o CertificateFile=user-cert.pub root@127.0.0.1 echo hello
    let out = sshd
        .client()
        .identity(&k.key)
        .certificate(&cert)
        .run_ok("echo hello");
    assert_eq!(out, "hello\n");
    assert!(
        sshd.log().contains("Accepted publickey for root"),
        "{}",
        sshd.log()
    );

    // ssh loads user-cert.pub next to `user` by itself, so the bare key is
    // a copy of the private key somewhere without a certificate.
    let bare_dir = tempfile::tempdir().expect("tempdir");
    let bare = bare_dir.path().join("bare");
    std::fs::copy(&k.key, &bare).expect("copy key");
    let refused = sshd.client().identity(&bare).run("echo hello");
    assert_denied(&sshd, refused, "key without certificate");
}

#[test]
fn certificate_for_another_principal_is_refused_for_root() {
    let k = user_keys();
    let cert = sign_user_key(&k.ca, &pub_path(&k.key), "alice-id", &["alice"], "+5m");
    let sshd = Sshd::start(SshdOptions::trusting_user_ca(&pub_path(&k.ca)));

    let refused = sshd
        .client()
        .user("root")
        .identity(&k.key)
        .certificate(&cert)
        .run("echo hello");
    assert_denied(&sshd, refused, "certificate for alice, login as root");
    assert!(
        sshd.log().contains("not in the list of valid principals")
            || sshd.log().contains("name is not a listed principal"),
        "sshd should say why: {}",
        sshd.log()
    );
}

#[test]
fn host_certificate_is_checked_against_a_known_hosts_cert_authority() {
    let k = user_keys();
    let cert = sign_user_key(&k.ca, &pub_path(&k.key), "id", &["root"], "+5m");
    let host_ca = keygen(k.dir.path(), "host_ca", "ed25519", None);

    let mut sshd = Sshd::new(SshdOptions::trusting_user_ca(&pub_path(&k.ca)));
    // $ ssh-keygen -s host_ca -h -I host -n 127.0.0.1 -V +5m host_key.pub
    let host_cert = sign_host_key(
        &host_ca,
        &sshd.host_key_pub,
        "test-host",
        &["127.0.0.1"],
        "+5m",
    );
    sshd.options
        .extra_config
        .push(format!("HostCertificate {}", host_cert.display()));
    sshd.launch();

    // known_hosts: @cert-authority [127.0.0.1]:PORT <host CA public key>
    let host_ca_pub = std::fs::read_to_string(pub_path(&host_ca)).expect("host CA pub");
    let trusting = k.dir.path().join("known_hosts");
    std::fs::write(
        &trusting,
        format!("@cert-authority {} {host_ca_pub}", sshd.host_pattern()),
    )
    .expect("write");
    let client = || sshd.client().identity(&k.key).certificate(&cert);

    let out = client().known_hosts(&trusting).run_ok("echo hello");
    assert_eq!(out, "hello\n");

    let empty = k.dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").expect("write");
    let (status, _, err) = client().known_hosts(&empty).run("echo hello");
    assert!(
        status != 0 && err.contains("Host key verification failed"),
        "status {status}: {err}"
    );

    // A CA trusted for another name does not vouch for this one.
    let elsewhere = k.dir.path().join("known_hosts_elsewhere");
    std::fs::write(
        &elsewhere,
        format!("@cert-authority other.example {host_ca_pub}"),
    )
    .expect("write");
    let (status, _, err) = client().known_hosts(&elsewhere).run("echo hello");
    assert!(
        status != 0 && err.contains("Host key verification failed"),
        "status {status}: {err}"
    );
    // known_hosts was not rewritten by ssh (UpdateHostKeys=no).
    assert_eq!(std::fs::read_to_string(&empty).expect("read"), "");
}

#[test]
fn agent_holding_key_and_certificate_logs_in_without_identity_file() {
    let k = user_keys();
    sign_user_key(&k.ca, &pub_path(&k.key), "agent-id", &["root"], "+5m");
    let sshd = Sshd::start(SshdOptions::trusting_user_ca(&pub_path(&k.ca)));

    // $ eval $(ssh-agent); ssh-add user   (adds user-cert.pub too)
    let agent = Agent::start();
    let said = agent.add(&k.key);
    assert!(said.contains("Certificate added"), "ssh-add: {said}");
    let listed = agent.list();
    assert!(listed.contains("(ED25519-CERT)"), "ssh-add -l: {listed}");

    // $ ssh root@127.0.0.1 echo hello   (SSH_AUTH_SOCK only, no -i)
    let out = sshd.client().agent(&agent).run_ok("echo hello");
    assert_eq!(out, "hello\n");

    // Without the agent the client has no key at all.
    assert_denied(
        &sshd,
        sshd.client().run("echo hello"),
        "no agent, no identity",
    );
}

#[test]
fn principals_file_in_the_harness_folder_passes_strict_modes() {
    let k = user_keys();
    let cert = sign_user_key(&k.ca, &pub_path(&k.key), "alice-id", &["alice"], "+5m");
    let mut sshd = Sshd::new(SshdOptions::trusting_user_ca(&pub_path(&k.ca)));
    // Mapped mode: the local user root accepts certificates for "alice".
    let principals = sshd.write_file("principals/root", "alice\n");
    assert!(principals.starts_with(&sshd.dir));
    sshd.options.extra_config.push(format!(
        "AuthorizedPrincipalsFile {}/principals/%u",
        sshd.dir.display()
    ));
    sshd.launch();

    let out = sshd
        .client()
        .identity(&k.key)
        .certificate(&cert)
        .run_ok("id -un");
    assert_eq!(out, "root\n");
}

#[test]
fn reload_rereads_the_config() {
    let k = user_keys();
    let cert = sign_user_key(&k.ca, &pub_path(&k.key), "id", &["root"], "+5m");
    let other_ca = keygen(k.dir.path(), "other_ca", "ed25519", None);
    let mut sshd = Sshd::start(SshdOptions::trusting_user_ca(&pub_path(&other_ca)));
    let client = |sshd: &Sshd| {
        sshd.client()
            .identity(&k.key)
            .certificate(&cert)
            .run("echo hello")
    };
    assert_denied(&sshd, client(&sshd), "certificate from an untrusted CA");

    // The test's lines come first, so this TrustedUserCAKeys wins.
    sshd.options.extra_config.insert(
        0,
        format!("TrustedUserCAKeys {}", pub_path(&k.ca).display()),
    );
    let pid = sshd.pid();
    sshd.reload();
    assert_eq!(
        sshd.pid(),
        pid,
        "sshd re-executes itself in place on SIGHUP"
    );
    let (status, out, err) = client(&sshd);
    assert_eq!(
        (status, out.as_str()),
        (0, "hello\n"),
        "{err}\n{}",
        sshd.log()
    );
}

#[test]
fn pam_password_and_keyboard_interactive_through_a_test_service() {
    const SERVICE: &str = "gatepass-test-sshd-harness";
    let pam_file = Path::new("/etc/pam.d").join(SERVICE);
    {
        let mut sshd = Sshd::new(SshdOptions::default());
        // pam_exec with expose_authtok hands the password on stdin,
        // NUL-terminated: vault-ssh-helper's shape. The optional pam_unix
        // line is not decoration: pam_exec ignores pam_setcred, a stack
        // where every module ignores it fails, and sshd treats a failed
        // pam_setcred after keyboard-interactive as fatal.
        let check = sshd.write_file_mode(
            "check-password",
            "#!/bin/sh\npw=$(tr -d '\\000')\n[ \"$pw\" = \"letmein\" ]\n",
            0o755,
        );
        sshd.options.pam = Some(PamSetup {
            service: SERVICE.into(),
            pam_config: format!(
                "auth required pam_exec.so quiet expose_authtok {}\n\
                 auth optional pam_unix.so not_set_pass use_first_pass nodelay\n\
                 account required pam_unix.so\n\
                 session required pam_unix.so\n",
                check.display()
            ),
        });
        sshd.launch();
        assert!(pam_file.exists());

        let out = sshd.client().password("letmein").run_ok("echo hello");
        assert_eq!(out, "hello\n");
        let out = sshd
            .client()
            .keyboard_interactive("letmein")
            .run_ok("echo hello");
        assert_eq!(out, "hello\n");

        assert_denied(
            &sshd,
            sshd.client().password("wrong").run("echo hello"),
            "wrong password",
        );
        assert_denied(
            &sshd,
            sshd.client()
                .keyboard_interactive("wrong")
                .run("echo hello"),
            "wrong kbd-int",
        );
    }
    assert!(
        !pam_file.exists(),
        "{} must be removed on drop",
        pam_file.display()
    );
}
