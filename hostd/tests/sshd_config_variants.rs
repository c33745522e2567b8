//! sshd_config variants, each installed, checked with the real `sshd -t`
//! and `sshd -T`, applied again (nothing changes), and uninstalled (the
//! main file comes back byte for byte and `sshd -t` still passes).

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
fn no_include_gets_a_block_at_the_end() {
    let fx = Fx::new();
    let original = fx.write_main("HostKey {hostkey}\nPasswordAuthentication no\n");
    let installed = round_trip(
        &fx,
        &original,
        Placement::Block,
        false,
        ".ssh/authorized_keys .ssh/authorized_keys2",
    );
    assert!(installed.starts_with(&original));
    assert!(installed.contains("# BEGIN gatepass-hostd"));
}

#[test]
fn trailing_match_block_stays_last() {
    let fx = Fx::new();
    let original =
        fx.write_main("HostKey {hostkey}\nX11Forwarding yes\nMatch User git\n\tX11Forwarding no\n");
    let installed = round_trip(
        &fx,
        &original,
        Placement::Block,
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
    let installed = round_trip(&fx, &original, Placement::Block, false, ".ssh/my_keys");
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
fn missing_dropin_folder_falls_back_to_a_block() {
    let fx = Fx::new();
    std::fs::remove_dir(&fx.paths.sshd_config_dir).unwrap();
    let original = fx.write_main(DEBIAN);
    let installed = round_trip(
        &fx,
        &original,
        Placement::Block,
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
fn read_only_dropin_folder_falls_back_to_a_block() {
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
    assert_eq!(out.placement, Some(Placement::Block));
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
    assert_eq!(p.config.changes.len(), 1);
    let diff = p.config.changes[0].unified_diff();
    assert!(diff.contains("+TrustedUserCAKeys"), "{diff}");
    assert_eq!(p.to_sign.len(), 1);
    assert_eq!(fx.main(), original);
    assert!(!fx.paths.managed_dir.exists());
}
