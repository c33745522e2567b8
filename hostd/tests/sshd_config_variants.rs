//! sshd_config variants, each installed, checked with the real `sshd -t`
//! and `sshd -T`, applied again (nothing changes), and uninstalled (the
//! main file comes back byte for byte and `sshd -t` still passes).

// A test file: its helpers fail the test by unwrapping, as the tests do
// (the workspace denies these lints in shipped code only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use gatepass_api::hosts::HostState;
use gatepass_hostd::config::Paths;
use gatepass_hostd::host::{Host, NewCert};
use gatepass_hostd::sshd::Sshd;
use gatepass_hostd::sshd_config::{Placement, DISABLED};
use gatepass_hostd::{clock, hostcerts, Error};

const SSHD: &str = "/usr/sbin/sshd";
const CA: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB8ht8Z3j6yDWPBHQtOp/R9rjWvfU4uWgMImASHkoP1A";

struct Fx {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    paths: Paths,
    host_key: PathBuf,
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen");
}

impl Fx {
    fn new() -> Fx {
        // `sshd -t` and `-T` refuse to run without sshd's privilege
        // separation folder, which its service makes when it starts: a
        // machine whose sshd never ran has none.
        if !Path::new("/run/sshd").exists() {
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let host_key = dir.join("ssh_host_ed25519_key");
        keygen(&host_key);
        std::fs::create_dir(dir.join("sshd_config.d")).unwrap();
        let paths = Paths {
            sshd_config: dir.join("sshd_config"),
            sshd_config_dir: dir.join("sshd_config.d"),
            managed_dir: dir.join("gatepass"),
            sshd: SSHD.into(),
            state_dir: dir.join("state"),
            reload_command: Some(format!("echo reload >> {}/reloads", dir.display())),
            login_socket: "".into(),
            host_user_ca_keys: None,
            host_revoked_keys: None,
        };
        Fx {
            _tmp: tmp,
            dir,
            paths,
            host_key,
        }
    }

    /// `{dir}` and `{hostkey}` in `text` are replaced.
    fn write_main(&self, text: &str) -> String {
        let text = text
            .replace("{dir}", &self.dir.display().to_string())
            .replace("{hostkey}", &self.host_key.display().to_string());
        std::fs::write(&self.paths.sshd_config, &text).unwrap();
        text
    }

    fn main(&self) -> String {
        std::fs::read_to_string(&self.paths.sshd_config).unwrap()
    }

    fn host(&self) -> Host {
        Host::new(&self.paths)
    }

    fn reloads(&self) -> usize {
        std::fs::read_to_string(self.dir.join("reloads"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn sshd_t(&self) {
        let out = Command::new(SSHD)
            .arg("-t")
            .arg("-f")
            .arg(&self.paths.sshd_config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sshd -t: {}\n--- config ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.main()
        );
    }

    fn effective(&self, key: &str) -> String {
        Sshd::new(Path::new(SSHD), &self.paths.sshd_config)
            .effective()
            .unwrap()
            .get(key)
            .unwrap_or("")
            .to_string()
    }

    fn managed(&self, rel: &str) -> String {
        self.paths.managed_dir.join(rel).display().to_string()
    }

    fn dropin(&self) -> PathBuf {
        self.paths.sshd_config_dir.join("50-gatepass.conf")
    }

    fn included(&self) -> PathBuf {
        self.paths.managed_dir.join("sshd_config.conf")
    }
}

fn state(mapped: bool) -> HostState {
    HostState {
        index: 7,
        user_ca_keys: format!("{CA}\n"),
        krl: String::new(),
        principals: mapped.then(|| {
            std::collections::BTreeMap::from([("root".to_string(), vec!["ops".to_string()])])
        }),
        dynamic_keys: vec![],
    }
}

/// Install, check, re-apply, uninstall; returns the installed main file.
fn round_trip(
    fx: &Fx,
    original: &str,
    placement: Placement,
    mapped: bool,
    prior_akf: &str,
) -> String {
    let host = fx.host();
    let out = host.converge(&state(mapped), clock::now(), &[]).unwrap();
    assert!(out.config_changed);
    assert_eq!(out.placement, Some(placement), "notes: {:?}", out.notes);
    assert!(out.reloaded.is_some());
    assert_eq!(fx.reloads(), 1);
    fx.sshd_t();
    assert_eq!(fx.effective("trustedusercakeys"), fx.managed("user_ca.pub"));
    assert_eq!(fx.effective("revokedkeys"), fx.managed("revoked.krl"));
    let ours = fx.managed("authorized_keys/%u");
    let akf = if prior_akf.is_empty() {
        ours
    } else {
        format!("{prior_akf} {ours}")
    };
    assert_eq!(fx.effective("authorizedkeysfile"), akf);
    if mapped {
        assert_eq!(
            fx.effective("authorizedprincipalsfile"),
            fx.managed("principals/%u")
        );
    } else {
        assert_eq!(fx.effective("authorizedprincipalsfile"), "none");
    }
    // The KRL exists and is one ssh-keygen accepts.
    let krl = Command::new("ssh-keygen")
        .args(["-Q", "-l", "-f"])
        .arg(fx.managed("revoked.krl"))
        .output()
        .unwrap();
    assert!(
        krl.status.success(),
        "{}",
        String::from_utf8_lossy(&krl.stderr)
    );
    assert_eq!(fx.dropin().exists(), placement == Placement::DropIn);
    assert_eq!(fx.included().exists(), placement == Placement::Included);
    let installed = fx.main();

    // Again: nothing changes, no reload.
    let again = host.converge(&state(mapped), clock::now(), &[]).unwrap();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert!(!again.config_changed && again.reloaded.is_none());
    assert_eq!(fx.reloads(), 1);

    let (removed, reloaded) = host.uninstall().unwrap();
    assert!(!removed.is_empty());
    assert!(reloaded.is_some());
    assert_eq!(
        fx.main(),
        original,
        "uninstall restores the main file exactly"
    );
    assert!(!fx.dropin().exists());
    assert!(!fx.paths.managed_dir.exists());
    fx.sshd_t();
    // Uninstalling twice is fine and changes nothing.
    let (removed, reloaded) = host.uninstall().unwrap();
    assert!(removed.is_empty() && reloaded.is_none());
    installed
}

const DEBIAN: &str = "\
# This is the sshd server system-wide configuration file.  See
# sshd_config(5) for more information.

Include {dir}/sshd_config.d/*.conf

#Port 22
HostKey {hostkey}

#PubkeyAuthentication yes

# Expect .ssh/authorized_keys2 to be disregarded by default in future.
#AuthorizedKeysFile	.ssh/authorized_keys .ssh/authorized_keys2

KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no

# Allow client to pass locale environment variables
AcceptEnv LANG LC_*

# override default of no subsystems
Subsystem	sftp	/usr/lib/openssh/sftp-server

# Example of overriding settings on a per-user basis
#Match User anoncvs
#	X11Forwarding no
";

#[test]
fn debian_default_gets_a_dropin() {
    let fx = Fx::new();
    let original = fx.write_main(DEBIAN);
    let installed = round_trip(
        &fx,
        &original,
        Placement::DropIn,
        true,
        ".ssh/authorized_keys .ssh/authorized_keys2",
    );
    assert_eq!(installed, original, "the main file is not touched");
}

#[test]
fn no_include_gets_an_include_of_gatepass_file_at_the_end() {
    let fx = Fx::new();
    let original = fx.write_main("HostKey {hostkey}\nPasswordAuthentication no\n");
    let installed = round_trip(
        &fx,
        &original,
        Placement::Included,
        false,
        ".ssh/authorized_keys .ssh/authorized_keys2",
    );
    assert_eq!(
        installed,
        format!(
            "{original}# BEGIN gatepass-hostd (managed, do not edit)\nInclude {}\n# END gatepass-hostd\n",
            fx.included().display()
        )
    );
}

#[test]
fn trailing_match_block_stays_last() {
    let fx = Fx::new();
    let original =
        fx.write_main("HostKey {hostkey}\nX11Forwarding yes\nMatch User git\n\tX11Forwarding no\n");
    let installed = round_trip(
        &fx,
        &original,
        Placement::Included,
        true,
        ".ssh/authorized_keys .ssh/authorized_keys2",
    );
    let block = installed.find("# BEGIN gatepass-hostd").unwrap();
    let end = installed.find("# END gatepass-hostd").unwrap();
    let m = installed.find("Match User git").unwrap();
    assert!(block < m && end < m, "{installed}");
}

#[test]
fn crlf_odd_case_and_an_existing_trusted_ca_line() {
    let fx = Fx::new();
    let original = fx.write_main(
        "HostKey {hostkey}\r\n\ttrustedusercakeys=/etc/ssh/old_ca.pub \r\n  AUTHORIZEDKEYSFILE\t.ssh/my_keys\r\nrevokedkeys   none\r\nMatch Address 10.0.0.0/8\r\n  PasswordAuthentication no\r\n",
    );
    let installed = round_trip(&fx, &original, Placement::Included, false, ".ssh/my_keys");
    assert!(installed.contains(&format!(
        "{DISABLED}\ttrustedusercakeys=/etc/ssh/old_ca.pub \r\n"
    )));
    assert!(installed.contains(&format!("{DISABLED}revokedkeys   none\r\n")));
    assert!(
        !installed.replace("\r\n", "").contains('\n'),
        "CRLF kept throughout"
    );
}

#[test]
fn a_line_before_the_include_is_commented_out_and_restored() {
    let fx = Fx::new();
    let original = fx.write_main(&format!("TrustedUserCAKeys /etc/ssh/old_ca.pub\n{DEBIAN}"));
    let host = fx.host();
    let out = host.converge(&state(false), clock::now(), &[]).unwrap();
    assert_eq!(out.placement, Some(Placement::DropIn));
    assert!(
        out.notes.iter().any(|n| n.contains("old_ca.pub")),
        "{:?}",
        out.notes
    );
    assert_eq!(fx.effective("trustedusercakeys"), fx.managed("user_ca.pub"));
    assert!(fx.main().starts_with(&format!(
        "{DISABLED}TrustedUserCAKeys /etc/ssh/old_ca.pub\n"
    )));
    host.uninstall().unwrap();
    assert_eq!(fx.main(), original);
    fx.sshd_t();
}

#[test]
fn missing_dropin_folder_falls_back_to_gatepass_file() {
    let fx = Fx::new();
    std::fs::remove_dir(&fx.paths.sshd_config_dir).unwrap();
    let original = fx.write_main(DEBIAN);
    let installed = round_trip(
        &fx,
        &original,
        Placement::Included,
        false,
        ".ssh/authorized_keys .ssh/authorized_keys2",
    );
    assert!(!fx.paths.sshd_config_dir.exists(), "not created");
    assert!(installed.contains("# BEGIN gatepass-hostd"));
}

/// Unmounts on drop.
struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn read_only_dropin_folder_falls_back_to_gatepass_file() {
    let fx = Fx::new();
    let ro = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"])
        .arg(&fx.paths.sshd_config_dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ro,
        "cannot mount a read-only tmpfs on the drop-in folder (the tests run as root)"
    );
    let _mount = Mount(fx.paths.sshd_config_dir.clone());
    let original = fx.write_main(DEBIAN);
    let out = fx
        .host()
        .converge(&state(false), clock::now(), &[])
        .unwrap();
    assert_eq!(out.placement, Some(Placement::Included));
    assert!(
        out.notes.iter().any(|n| n.contains("not writable")),
        "{:?}",
        out.notes
    );
    fx.sshd_t();
    assert_eq!(fx.effective("trustedusercakeys"), fx.managed("user_ca.pub"));
    fx.host().uninstall().unwrap();
    assert_eq!(fx.main(), original);
}

#[test]
fn a_config_sshd_rejects_is_rolled_back() {
    let fx = Fx::new();
    // An sshd whose -t refuses any config with gatepass's block in it.
    let fake = fx.dir.join("fake-sshd");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -t ] && grep -q 'BEGIN gatepass' \"$3\"; then echo 'fake sshd: no thanks' >&2; exit 255; fi\nexec {SSHD} \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut paths = fx.paths.clone();
    paths.sshd = fake;
    let original = fx.write_main("HostKey {hostkey}\nTrustedUserCAKeys /etc/ssh/old_ca.pub\n");
    let err = Host::new(&paths)
        .converge(&state(false), clock::now(), &[])
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("fake sshd: no thanks") && msg.contains("restored"),
        "{msg}"
    );
    assert_eq!(fx.main(), original, "rolled back exactly");
    assert!(!fx.included().exists(), "gatepass's file removed again");
    assert_eq!(fx.reloads(), 0, "no reload after a rollback");
}

#[test]
fn a_conflict_in_another_dropin_is_reported_and_rolled_back() {
    let fx = Fx::new();
    std::fs::write(
        fx.paths.sshd_config_dir.join("10-other.conf"),
        "TrustedUserCAKeys /etc/ssh/other_ca.pub\n",
    )
    .unwrap();
    let original = fx.write_main(DEBIAN);
    let err = fx
        .host()
        .converge(&state(false), clock::now(), &[])
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("trustedusercakeys") && msg.contains("other_ca.pub"),
        "{msg}"
    );
    assert!(!fx.dropin().exists());
    assert_eq!(fx.main(), original);
    fx.sshd_t();
}

#[test]
fn harness_style_none_authorized_keys_file() {
    let fx = Fx::new();
    let original = fx.write_main(
        "Include {dir}/sshd_config.d/*.conf\nHostKey {hostkey}\nAuthorizedKeysFile none\n",
    );
    round_trip(&fx, &original, Placement::DropIn, false, "");
}

#[test]
fn host_certificate_directive_and_reload() {
    let fx = Fx::new();
    let original = fx.write_main(DEBIAN);
    let ca = fx.dir.join("host_ca");
    keygen(&ca);
    let host = fx.host();
    let eff = host.effective().unwrap();
    let keys = host.host_keys(&eff);
    assert_eq!(keys.len(), 1);
    let pubkey = fx.dir.join("ssh_host_ed25519_key.pub");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&ca)
        .args(["-h", "-I", "host", "-n", "localhost", "-V", "-5m:+1h"])
        .arg(&pubkey)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let text = std::fs::read_to_string(fx.dir.join("ssh_host_ed25519_key-cert.pub")).unwrap();
    let cert = NewCert {
        key: keys[0].clone(),
        text,
    };
    let out = host
        .converge(&state(false), clock::now(), std::slice::from_ref(&cert))
        .unwrap();
    assert!(out.certs_changed && out.config_changed && out.reloaded.is_some());
    let cert_path = fx.managed("ssh_host_ed25519_key-cert.pub");
    assert!(std::fs::read_to_string(fx.dropin())
        .unwrap()
        .contains(&format!("HostCertificate {cert_path}\n")));
    assert_eq!(out.host_certs.len(), 1);
    assert!(!hostcerts::needs_signing(&keys[0], clock::now()));
    assert!(hostcerts::needs_signing(&keys[0], clock::now() + 3000));
    fx.sshd_t();
    // The same certificate again: nothing to do.
    let again = host.converge(&state(false), clock::now(), &[cert]).unwrap();
    assert!(again.changes.is_empty() && again.reloaded.is_none());
    host.uninstall().unwrap();
    assert!(!Path::new(&cert_path).exists());
    assert_eq!(fx.main(), original);
}

#[test]
fn preview_changes_nothing() {
    let fx = Fx::new();
    let original = fx.write_main("HostKey {hostkey}\n");
    let p = fx.host().preview(&state(true), clock::now(), true).unwrap();
    assert!(p.changes.len() >= 2, "{:?}", p.changes);
    // gatepass's own file, then the main file that Includes it.
    assert_eq!(p.config.changes.len(), 2);
    let diff = p.config.changes[0].unified_diff();
    assert!(diff.contains("+TrustedUserCAKeys"), "{diff}");
    assert_eq!(p.to_sign.len(), 1);
    assert_eq!(fx.main(), original);
    assert!(!fx.paths.managed_dir.exists());
}

/// A read-only bind mount over one file, as the unit's `ProtectSystem=strict`
/// makes sshd_config for hostd; undone on drop, also when the test fails.
struct ReadOnly(PathBuf);
impl ReadOnly {
    fn file(path: &Path) -> ReadOnly {
        let ok = Command::new("mount")
            .args(["--bind"])
            .arg(path)
            .arg(path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "cannot bind-mount {} (the tests run as root)",
            path.display()
        );
        let guard = ReadOnly(path.to_path_buf());
        let ok = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "cannot make {} read-only", path.display());
        assert!(
            std::fs::OpenOptions::new().append(true).open(path).is_err(),
            "{} is still writable",
            path.display()
        );
        guard
    }
}
impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A host certificate for the fixture's host key, signed by a CA of its own.
fn signed_host_cert(fx: &Fx, host: &Host) -> NewCert {
    let ca = fx.dir.join("host_ca");
    if !ca.exists() {
        keygen(&ca);
    }
    let keys = host.host_keys(&host.effective().unwrap());
    assert_eq!(keys.len(), 1);
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&ca)
        .args(["-h", "-I", "host", "-n", "localhost", "-V", "-5m:+1h"])
        .arg(fx.dir.join("ssh_host_ed25519_key.pub"))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    NewCert {
        key: keys[0].clone(),
        text: std::fs::read_to_string(fx.dir.join("ssh_host_ed25519_key-cert.pub")).unwrap(),
    }
}

#[test]
fn without_include_a_read_only_main_file_still_takes_a_first_host_certificate() {
    let fx = Fx::new();
    let original = fx.write_main(
        "HostKey {hostkey}\nPasswordAuthentication no\nMatch User git\n\tX11Forwarding no\n",
    );
    let host = fx.host();
    // `setup`, as root: the main file gets the Include, once.
    let out = host.converge(&state(false), clock::now(), &[]).unwrap();
    assert_eq!(out.placement, Some(Placement::Included));
    let installed = fx.main();
    let include = format!("Include {}\n", fx.included().display());
    assert!(
        installed.find(&include).unwrap() < installed.find("Match User git").unwrap(),
        "{installed}"
    );

    // The service: sshd_config is read-only to it.
    let ro = ReadOnly::file(&fx.paths.sshd_config);
    let cert = signed_host_cert(&fx, &host);
    let out = host
        .converge(&state(false), clock::now(), std::slice::from_ref(&cert))
        .unwrap();
    assert!(out.certs_changed && out.config_changed && out.reloaded.is_some());
    assert_eq!(out.placement, Some(Placement::Included));
    let cert_path = fx.managed("ssh_host_ed25519_key-cert.pub");
    assert!(std::fs::read_to_string(fx.included())
        .unwrap()
        .contains(&format!("HostCertificate {cert_path}\n")));
    assert_eq!(fx.main(), installed, "the main file is not touched");
    fx.sshd_t();
    assert_eq!(fx.effective("hostcertificate"), cert_path);
    assert_eq!(out.host_certs.len(), 1);
    // The service switching modes needs no main-file edit either.
    let out = host.converge(&state(true), clock::now(), &[]).unwrap();
    assert!(out.config_changed);
    assert_eq!(
        fx.effective("authorizedprincipalsfile"),
        fx.managed("principals/%u")
    );
    drop(ro);

    host.uninstall().unwrap();
    assert_eq!(fx.main(), original);
    assert!(!fx.paths.managed_dir.exists());
}

#[test]
fn an_old_block_keeps_working_read_only_and_setup_moves_it_into_gatepass_file() {
    use gatepass_hostd::sshd_config::{compose, prior_authorized_keys};
    let fx = Fx::new();
    let original = fx.write_main("HostKey {hostkey}\nPasswordAuthentication no\n");
    let host = fx.host();
    // What older versions wrote: the directives in a marked block.
    let d = host.layout.directives(false, vec![]);
    let prior = prior_authorized_keys(
        Some(".ssh/authorized_keys .ssh/authorized_keys2"),
        &d.authorized_keys_file,
    );
    let old = compose(&original, &fx.dropin(), false, None, &d, &prior);
    assert_eq!(old.placement, Placement::Block);
    std::fs::write(&fx.paths.sshd_config, &old.main).unwrap();

    let ro = ReadOnly::file(&fx.paths.sshd_config);
    // Nothing in the block needs to change: it keeps working, and says so.
    let out = host.converge(&state(false), clock::now(), &[]).unwrap();
    assert_eq!(out.placement, Some(Placement::Block));
    assert!(
        out.notes.iter().any(|n| n.contains("gatepass-hostd setup")),
        "{:?}",
        out.notes
    );
    assert!(!out.config_changed);
    assert!(fx.paths.managed_dir.join("user_ca.pub").exists());
    // A first host certificate needs the block rewritten: refused, clearly,
    // and nothing is left half done.
    let cert = signed_host_cert(&fx, &host);
    let err = host
        .converge(&state(false), clock::now(), std::slice::from_ref(&cert))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("gatepass-hostd setup") && msg.contains("nothing was changed"),
        "{msg}"
    );
    assert_eq!(fx.main(), old.main);
    assert!(!fx.included().exists());
    assert!(
        !Path::new(&fx.managed("ssh_host_ed25519_key-cert.pub")).exists(),
        "the new certificate is taken back"
    );
    assert_eq!(fx.reloads(), 0);
    drop(ro);

    // `setup`, as root: the block becomes the Include, the certificate goes in.
    let out = host
        .converge(&state(false), clock::now(), std::slice::from_ref(&cert))
        .unwrap();
    assert_eq!(out.placement, Some(Placement::Included));
    assert!(fx
        .main()
        .contains(&format!("Include {}\n", fx.included().display())));
    assert!(!fx.main().contains("TrustedUserCAKeys"));
    fx.sshd_t();
    assert_eq!(
        fx.effective("hostcertificate"),
        fx.managed("ssh_host_ed25519_key-cert.pub")
    );
    host.uninstall().unwrap();
    assert_eq!(fx.main(), original, "byte for byte");
}

#[test]
fn a_host_certificate_sshd_refuses_is_rolled_back() {
    let fx = Fx::new();
    // An sshd whose -t refuses any HostCertificate in gatepass's file.
    let fake = fx.dir.join("fake-sshd");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -t ] && grep -qs HostCertificate {}; then echo 'fake sshd: no host certificates' >&2; exit 255; fi\nexec {SSHD} \"$@\"\n",
            fx.included().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut paths = fx.paths.clone();
    paths.sshd = fake;
    let host = Host::new(&paths);
    fx.write_main("HostKey {hostkey}\n");
    host.converge(&state(false), clock::now(), &[]).unwrap();
    let (main, own) = (fx.main(), std::fs::read(fx.included()).unwrap());
    let _ro = ReadOnly::file(&fx.paths.sshd_config);
    let cert = signed_host_cert(&fx, &host);
    let err = host
        .converge(&state(false), clock::now(), std::slice::from_ref(&cert))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("no host certificates") && msg.contains("restored"),
        "{msg}"
    );
    assert_eq!(fx.main(), main);
    assert_eq!(std::fs::read(fx.included()).unwrap(), own, "old, not a mix");
    assert!(!Path::new(&fx.managed("ssh_host_ed25519_key-cert.pub")).exists());
    assert_eq!(fx.reloads(), 1, "only the first install reloaded");
}

#[test]
fn an_sshd_without_include_support_gets_the_directives_in_the_block() {
    let fx = Fx::new();
    // OpenSSH before 8.2 fails on any Include line.
    let fake = fx.dir.join("old-sshd");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nif grep -qi '^include' \"$3\"; then echo \"$3: line 1: Bad configuration option: Include\" >&2; exit 255; fi\nexec {SSHD} \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut paths = fx.paths.clone();
    paths.sshd = fake;
    let host = Host::new(&paths);
    let original = fx.write_main("HostKey {hostkey}\nPasswordAuthentication no\n");
    let out = host.converge(&state(false), clock::now(), &[]).unwrap();
    assert_eq!(out.placement, Some(Placement::Block));
    assert!(
        out.notes
            .iter()
            .any(|n| n.contains("does not know `Include`")),
        "{:?}",
        out.notes
    );
    assert!(!fx.main().to_ascii_lowercase().contains("\ninclude"));
    assert!(!fx.included().exists());
    assert_eq!(fx.effective("trustedusercakeys"), fx.managed("user_ca.pub"));
    let again = host.converge(&state(false), clock::now(), &[]).unwrap();
    assert!(again.changes.is_empty());
    host.uninstall().unwrap();
    assert_eq!(fx.main(), original);
}
