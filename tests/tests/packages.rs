//! Packages and systemd units. `packaging/build` runs once (release
//! binaries, man pages, completions, four .debs and four .rpms); then
//! lintian, `rpm -qlp`, `systemd-analyze`, and — on Debian, as root — the
//! .debs are installed on this machine, upgraded, removed and purged.
//!
//! The install test leaves the machine as it found it: it purges the
//! packages even when it fails, and it refuses (fails) where gatepass is
//! already installed or configured (it would purge someone's real setup).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use gatepass_tests::run;

const PACKAGES: [&str; 4] = [
    "gatepass-server",
    "gatepass-hostd",
    "gatepass-gateway",
    "gatepass",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `packaging/build` once for every test of this file; the folder
/// holding the packages.
fn packages() -> &'static Path {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let (code, out, err) =
            run(Command::new(repo().join("packaging/build")).current_dir(repo()));
        if code != 0 {
            return Err(format!("packaging/build failed ({code}):\n{out}\n{err}"));
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_absolute() { t } else { repo().join(t) })
            .unwrap_or_else(|| repo().join("target"));
        Ok(target.join("packages"))
    });
    match built {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn one_file(dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {prefix}…{suffix} in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().unwrap()
}

fn deb(pkg: &str) -> PathBuf {
    one_file(packages(), &format!("{pkg}_"), ".deb")
}

fn rpm(pkg: &str) -> PathBuf {
    // gatepass-0.1.0-1.x86_64.rpm vs gatepass-server-0.1.0-1.x86_64.rpm
    let dir = packages();
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.ends_with(".rpm")
                && n.strip_prefix(&format!("{pkg}-"))
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {pkg} .rpm in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().unwrap()
}

fn ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "{desc} failed:\n{out}\n{err}");
    out
}

fn sh(script: &str) -> String {
    ok(Command::new("/bin/sh").args(["-c", script]))
}

fn multiarch() -> String {
    ok(Command::new("dpkg-architecture").arg("-qDEB_HOST_MULTIARCH"))
        .trim()
        .to_string()
}

// ---- units ----------------------------------------------------------------

fn exposure(unit: &str) -> f64 {
    let path = repo().join("systemd").join(unit);
    let out = ok(Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path));
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line for {unit}:\n{out}"));
    // "→ Overall exposure level for gatepass-server.service: 1.1 OK 🙂"
    let value = line
        .rsplit(": ")
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    value
        .parse()
        .unwrap_or_else(|_| panic!("cannot read the exposure in {line:?}"))
}

fn unit_text(unit: &str) -> String {
    std::fs::read_to_string(repo().join("systemd").join(unit)).unwrap()
}

#[test]
fn units_are_sandboxed_within_their_exposure_budget() {
    let server = exposure("gatepass-server.service");
    let hostd = exposure("gatepass-hostd.service");
    let gateway = exposure("gatepass-gateway.service");
    eprintln!(
        "systemd-analyze security: gatepass-server {server}, gatepass-hostd {hostd}, gatepass-gateway {gateway}"
    );
    assert!(
        server <= 2.5,
        "gatepass-server.service exposure {server} > 2.5"
    );
    assert!(
        hostd <= 4.5,
        "gatepass-hostd.service exposure {hostd} > 4.5"
    );
    assert!(
        gateway <= 2.5,
        "gatepass-gateway.service exposure {gateway} > 2.5"
    );

    let s = unit_text("gatepass-server.service");
    for line in [
        "Type=notify",
        "User=gatepass",
        "StateDirectory=gatepass",
        "LogsDirectory=gatepass",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "NoNewPrivileges=true",
        "UMask=0077",
    ] {
        assert!(s.contains(line), "gatepass-server.service lacks {line:?}");
    }
    assert!(
        !s.lines().any(|l| l.starts_with("ReadWritePaths=")),
        "the server writes only to its StateDirectory and LogsDirectory"
    );

    let h = unit_text("gatepass-hostd.service");
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "ProtectSystem=strict",
        "ReadWritePaths=-/etc/ssh/gatepass -/etc/ssh/sshd_config.d\n",
        "StateDirectory=gatepass-hostd",
        "CapabilityBoundingSet=\n",
        "NoNewPrivileges=true",
    ] {
        assert!(h.contains(line), "gatepass-hostd.service lacks {line:?}");
    }
    assert_eq!(
        h.lines()
            .filter(|l| l.starts_with("ReadWritePaths="))
            .count(),
        1
    );

    let g = unit_text("gatepass-gateway.service");
    for line in [
        "Type=notify",
        "User=gatepass-gateway",
        "StateDirectory=gatepass-gateway",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "NoNewPrivileges=true",
        "ConditionPathExists=/etc/gatepass/gateway.toml",
    ] {
        assert!(g.contains(line), "gatepass-gateway.service lacks {line:?}");
    }
    assert!(
        !g.lines().any(|l| l.starts_with("ReadWritePaths=")),
        "the gateway writes only to its StateDirectory"
    );
}

// ---- .deb and .rpm contents -----------------------------------------------

#[test]
fn debs_have_no_lintian_errors() {
    let debs: Vec<PathBuf> = PACKAGES.iter().map(|p| deb(p)).collect();
    let (code, out, err) = run(Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .args(&debs));
    let errors: Vec<&str> = out
        .lines()
        .chain(err.lines())
        .filter(|l| l.starts_with("E: "))
        .collect();
    let hint = if errors
        .iter()
        .any(|e| e.contains("description-starts-with-package-name"))
    {
        "\n(the synopsis is the crate's `description` in Cargo.toml: it must not start with the package name)"
    } else {
        ""
    };
    assert!(
        errors.is_empty(),
        "lintian errors:\n{}{hint}\n(full output:\n{out}\n{err})",
        errors.join("\n")
    );
    // Exit 0 unless there are errors (or lintian itself failed).
    assert!(code == 0, "lintian exited {code}:\n{out}\n{err}");
    eprintln!("lintian:\n{out}");
}

fn deb_files(pkg: &str) -> BTreeSet<String> {
    ok(Command::new("dpkg-deb").arg("-c").arg(deb(pkg)))
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            l.split_whitespace()
                .nth(5)
                .unwrap()
                .trim_start_matches('.')
                .to_string()
        })
        .collect()
}

fn docs(names: &[&str], zsh: &str) -> Vec<String> {
    let mut v = Vec::new();
    for n in names {
        v.push(format!("/usr/share/man/man1/{n}.1.gz"));
        v.push(format!("/usr/share/bash-completion/completions/{n}"));
        v.push(format!("{zsh}/_{n}"));
        v.push(format!("/usr/share/fish/vendor_completions.d/{n}.fish"));
    }
    v
}

fn assert_has(files: &BTreeSet<String>, want: &[String], what: &str) {
    let missing: Vec<&String> = want.iter().filter(|w| !files.contains(*w)).collect();
    assert!(
        missing.is_empty(),
        "{what} lacks {missing:?}; it has {files:#?}"
    );
}

#[test]
fn debs_hold_binaries_units_pam_module_docs_and_completions() {
    let zsh = "/usr/share/zsh/vendor-completions";
    let server = deb_files("gatepass-server");
    let mut want = vec![
        "/usr/bin/gatepass-server".to_string(),
        "/etc/gatepass/server.toml".into(),
        "/etc/logrotate.d/gatepass-server".into(),
        "/usr/lib/systemd/system/gatepass-server.service".into(),
        "/usr/share/doc/gatepass-server/copyright".into(),
        "/usr/share/doc/gatepass-server/changelog.Debian.gz".into(),
    ];
    want.extend(docs(&["gatepass-server"], zsh));
    assert_has(&server, &want, "gatepass-server.deb");

    let hostd = deb_files("gatepass-hostd");
    let mut want = vec![
        "/usr/bin/gatepass-hostd".to_string(),
        "/usr/bin/gatepass-helper".into(),
        format!("/usr/lib/{}/security/pam_gatepass.so", multiarch()),
        "/usr/lib/systemd/system/gatepass-hostd.service".into(),
        "/usr/share/doc/gatepass-hostd/hostd.toml".into(),
    ];
    want.extend(docs(&["gatepass-hostd", "gatepass-helper"], zsh));
    assert_has(&hostd, &want, "gatepass-hostd.deb");
    // Nothing that would change sshd or PAM on install.
    assert!(
        hostd.iter().all(|f| !f.starts_with("/etc/")),
        "gatepass-hostd.deb must not ship files in /etc: {hostd:?}"
    );
    // The testkit binary (crash-safety test, benchmark) is not packaged.
    assert!(hostd.iter().all(|f| !f.contains("testkit")), "{hostd:?}");

    let gateway = deb_files("gatepass-gateway");
    let mut want = vec![
        "/usr/bin/gatepass-gateway".to_string(),
        "/usr/lib/systemd/system/gatepass-gateway.service".into(),
        "/usr/share/doc/gatepass-gateway/gateway.toml".into(),
        "/usr/share/doc/gatepass-gateway/copyright".into(),
        "/usr/share/doc/gatepass-gateway/changelog.Debian.gz".into(),
    ];
    want.extend(docs(&["gatepass-gateway"], zsh));
    assert_has(&gateway, &want, "gatepass-gateway.deb");
    // Enrolling writes the config and token: the package ships none.
    assert!(
        gateway.iter().all(|f| !f.starts_with("/etc/")),
        "gatepass-gateway.deb must not ship files in /etc: {gateway:?}"
    );
    assert!(
        gateway.iter().all(|f| !f.contains("testkit")),
        "{gateway:?}"
    );

    let cli = deb_files("gatepass");
    let mut want = vec!["/usr/bin/gatepass".to_string()];
    want.extend(docs(&["gatepass"], zsh));
    assert_has(&cli, &want, "gatepass.deb");

    let conffiles = ok(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --ctrl-tarfile '{}' | tar -xO ./conffiles",
        deb("gatepass-server").display()
    )));
    assert_eq!(
        conffiles.trim(),
        "/etc/gatepass/server.toml\n/etc/logrotate.d/gatepass-server"
    );
}

fn rpm_files(pkg: &str) -> BTreeSet<String> {
    ok(Command::new("rpm").arg("-qlp").arg(rpm(pkg)))
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn rpms_list_the_expected_files() {
    let zsh = "/usr/share/zsh/site-functions";
    let server = rpm_files("gatepass-server");
    let mut want = vec![
        "/usr/bin/gatepass-server".to_string(),
        "/etc/gatepass/server.toml".into(),
        "/etc/logrotate.d/gatepass-server".into(),
        "/usr/lib/systemd/system/gatepass-server.service".into(),
    ];
    want.extend(docs(&["gatepass-server"], zsh));
    assert_has(&server, &want, "gatepass-server.rpm");

    let hostd = rpm_files("gatepass-hostd");
    let mut want = vec![
        "/usr/bin/gatepass-hostd".to_string(),
        "/usr/bin/gatepass-helper".into(),
        "/usr/lib64/security/pam_gatepass.so".into(),
        "/usr/lib/systemd/system/gatepass-hostd.service".into(),
        "/usr/share/doc/gatepass-hostd/hostd.toml".into(),
    ];
    want.extend(docs(&["gatepass-hostd", "gatepass-helper"], zsh));
    assert_has(&hostd, &want, "gatepass-hostd.rpm");
    assert!(hostd.iter().all(|f| !f.starts_with("/etc/")), "{hostd:?}");
    assert!(hostd.iter().all(|f| !f.contains("testkit")), "{hostd:?}");

    let gateway = rpm_files("gatepass-gateway");
    let mut want = vec![
        "/usr/bin/gatepass-gateway".to_string(),
        "/usr/lib/systemd/system/gatepass-gateway.service".into(),
        "/usr/share/doc/gatepass-gateway/gateway.toml".into(),
    ];
    want.extend(docs(&["gatepass-gateway"], zsh));
    assert_has(&gateway, &want, "gatepass-gateway.rpm");
    assert!(
        gateway.iter().all(|f| !f.starts_with("/etc/")),
        "{gateway:?}"
    );
    assert!(
        gateway.iter().all(|f| !f.contains("testkit")),
        "{gateway:?}"
    );

    let cli = rpm_files("gatepass");
    let mut want = vec!["/usr/bin/gatepass".to_string()];
    want.extend(docs(&["gatepass"], zsh));
    assert_has(&cli, &want, "gatepass.rpm");

    // Every file is where the distribution looks for it.
    for f in server.iter().chain(&hostd).chain(&gateway).chain(&cli) {
        assert!(
            [
                "/usr/bin/",
                "/usr/share/",
                "/usr/lib/systemd/system/",
                "/usr/lib64/security/",
                "/etc/gatepass/",
                "/etc/logrotate.d/"
            ]
            .iter()
            .any(|p| f.starts_with(p)),
            "unexpected path {f}"
        );
    }

    let config = ok(Command::new("rpm").arg("-qcp").arg(rpm("gatepass-server")));
    let mut config: Vec<&str> = config.lines().collect();
    config.sort();
    assert_eq!(
        config,
        [
            "/etc/gatepass/server.toml",
            "/etc/logrotate.d/gatepass-server"
        ]
    );
    // The scriptlets are the files in packaging/rpm (cargo-generate-rpm takes
    // a path it cannot find as the script text itself).
    let scripts = ok(Command::new("rpm")
        .arg("-qp")
        .arg("--scripts")
        .arg(rpm("gatepass-server")));
    assert!(scripts.contains("useradd -r -g gatepass"), "{scripts}");
    assert!(
        scripts.contains("systemctl --no-reload disable --now gatepass-server.service"),
        "{scripts}"
    );
    let scripts = ok(Command::new("rpm")
        .arg("-qp")
        .arg("--scripts")
        .arg(rpm("gatepass-hostd")));
    assert!(
        scripts.contains("/usr/bin/gatepass-hostd uninstall"),
        "{scripts}"
    );
    let scripts = ok(Command::new("rpm")
        .arg("-qp")
        .arg("--scripts")
        .arg(rpm("gatepass-gateway")));
    assert!(
        scripts.contains("useradd -r -g gatepass-gateway"),
        "{scripts}"
    );
    assert!(
        scripts.contains("systemctl --no-reload disable --now gatepass-gateway.service"),
        "{scripts}"
    );
}

// ---- install, upgrade, remove, purge ----------------------------------------

/// Purges the packages when dropped, also when the test fails.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").arg("--purge").args(PACKAGES).output();
    }
}

fn installed(pkg: &str) -> bool {
    let (code, out, _) =
        run(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", pkg]));
    code == 0 && out.trim() != "not-installed" && !out.trim().is_empty()
}

fn user_exists(name: &str) -> bool {
    run(Command::new("getent").args(["passwd", name])).0 == 0
}

fn group_exists(name: &str) -> bool {
    run(Command::new("getent").args(["group", name])).0 == 0
}

/// Every path under the system folders whose name mentions gatepass.
fn gatepass_paths() -> BTreeSet<String> {
    let (_, out, _) = run(Command::new("find").args([
        "/etc",
        "/usr",
        "/var",
        "/opt",
        "-xdev",
        "-path",
        "*gatepass*",
    ]));
    // man-db caches pages it formats (`systemd-analyze verify` reads the
    // units' Documentation= pages) under /var/cache/man; those files are
    // man-db's, not the packages', and its own cron job expires them.
    out.lines()
        .filter(|p| !p.starts_with("/var/cache/man/"))
        .map(str::to_string)
        .collect()
}

fn running_from_usr_bin() -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(exe) = std::fs::read_link(e.path().join("exe")) {
            let exe = exe.to_string_lossy().into_owned();
            if exe.starts_with("/usr/bin/gatepass") {
                found.push(format!("{} {exe}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

fn owner_mode(path: &str) -> (String, String, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let user = sh(&format!("stat -c %U {path}")).trim().to_string();
    let group = sh(&format!("stat -c %G {path}")).trim().to_string();
    (user, group, m.mode() & 0o7777)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn debs_install_upgrade_remove_and_purge_cleanly() {
    if !is_root() || !Path::new("/usr/bin/dpkg").exists() {
        eprintln!("SKIPPED: installing the .debs needs root on Debian");
        return;
    }
    let taken: Vec<&str> = [
        "/etc/gatepass",
        "/var/lib/gatepass",
        "/var/log/gatepass",
        "/var/lib/gatepass-hostd",
        "/var/lib/gatepass-gateway",
        "/etc/ssh/gatepass",
        "/etc/ssh/sshd_config.d/50-gatepass.conf",
    ]
    .into_iter()
    .filter(|p| Path::new(p).exists())
    .collect();
    if PACKAGES.iter().any(|p| installed(p))
        || user_exists("gatepass")
        || user_exists("gatepass-gateway")
        || !taken.is_empty()
    {
        // Fail rather than pass without testing: the install test would
        // purge someone's real setup.
        panic!("gatepass is already installed or configured on this machine ({taken:?}); not touching it: run this test on a machine without gatepass");
    }
    let debs: Vec<PathBuf> = PACKAGES.iter().map(|p| deb(p)).collect();
    let before = gatepass_paths();
    let sshd_config_before =
        sh("cat /etc/ssh/sshd_config /etc/ssh/sshd_config.d/* /etc/pam.d/* 2>/dev/null || true");
    let _purge = PurgeOnDrop;

    // Install. There is no systemd here: the maintainer scripts must cope,
    // and nothing is started.
    ok(Command::new("dpkg").arg("-i").args(&debs));
    assert!(
        running_from_usr_bin().is_empty(),
        "installing started {:?}",
        running_from_usr_bin()
    );
    assert_eq!(
        sh("cat /etc/ssh/sshd_config /etc/ssh/sshd_config.d/* /etc/pam.d/* 2>/dev/null || true"),
        sshd_config_before,
        "installing changed sshd's or PAM's configuration"
    );

    // What the maintainer scripts made.
    assert!(user_exists("gatepass") && group_exists("gatepass"));
    assert_eq!(
        owner_mode("/etc/gatepass"),
        ("root".into(), "gatepass".into(), 0o750)
    );
    assert_eq!(
        owner_mode("/etc/gatepass/server.toml"),
        ("root".into(), "gatepass".into(), 0o640)
    );
    assert_eq!(
        owner_mode("/var/lib/gatepass"),
        ("gatepass".into(), "gatepass".into(), 0o700)
    );
    assert_eq!(
        owner_mode("/var/log/gatepass"),
        ("gatepass".into(), "gatepass".into(), 0o700)
    );
    assert_eq!(
        owner_mode("/var/lib/gatepass-hostd"),
        ("root".into(), "root".into(), 0o700)
    );
    assert!(user_exists("gatepass-gateway") && group_exists("gatepass-gateway"));
    assert_eq!(
        owner_mode("/var/lib/gatepass-gateway"),
        ("gatepass-gateway".into(), "gatepass-gateway".into(), 0o700)
    );
    assert!(!Path::new("/etc/gatepass/gateway.toml").exists());
    assert!(!Path::new("/etc/ssh/gatepass").exists());

    // The installed programs run from their installed paths.
    let out = ok(Command::new("/usr/bin/gatepass-hostd").arg("--version"));
    assert!(out.starts_with("gatepass-hostd "), "{out}");
    let out = ok(Command::new("/usr/bin/gatepass").arg("--help"));
    assert!(out.contains("Usage: gatepass"), "{out}");
    ok(Command::new("/usr/bin/gatepass-server").arg("--version"));
    ok(Command::new("/usr/bin/gatepass-helper").arg("--help"));
    let out = ok(Command::new("/usr/bin/gatepass-gateway").arg("--version"));
    assert!(out.starts_with("gatepass-gateway "), "{out}");
    let out = ok(Command::new("/usr/bin/gatepass-gateway").arg("--help"));
    assert!(out.contains("setup") && out.contains("run"), "{out}");
    let pam = format!("/usr/lib/{}/security/pam_gatepass.so", multiarch());
    assert!(Path::new(&pam).is_file(), "{pam} missing");
    for f in [
        "/usr/share/man/man1/gatepass.1.gz",
        "/usr/share/man/man1/gatepass-server.1.gz",
        "/usr/share/man/man1/gatepass-hostd.1.gz",
        "/usr/share/man/man1/gatepass-gateway.1.gz",
        "/usr/share/bash-completion/completions/gatepass",
        "/usr/share/zsh/vendor-completions/_gatepass",
        "/usr/share/fish/vendor_completions.d/gatepass.fish",
    ] {
        assert!(Path::new(f).is_file(), "{f} missing");
    }

    // The installed units, with their binaries (and man pages) in place.
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify");
    if Command::new("man").arg("--version").output().is_err() {
        verify.arg("--man=no");
    }
    ok(verify.args([
        "/usr/lib/systemd/system/gatepass-server.service",
        "/usr/lib/systemd/system/gatepass-hostd.service",
        "/usr/lib/systemd/system/gatepass-gateway.service",
    ]));

    let mut listed = BTreeSet::new();
    for p in PACKAGES {
        listed.extend(
            ok(Command::new("dpkg").arg("-L").arg(p))
                .lines()
                .map(str::to_string),
        );
    }

    // Upgrade (reinstalling runs the same scripts): configuration and state
    // stay as they are.
    let local_config = format!("{}# changed here\n", read("/etc/gatepass/server.toml"));
    std::fs::write("/etc/gatepass/server.toml", &local_config).unwrap();
    std::fs::write("/etc/gatepass/seal.key", "00\n").unwrap();
    std::fs::write("/var/lib/gatepass/gatepass.db", "state").unwrap();
    std::fs::write("/var/log/gatepass/audit.log", "{}\n").unwrap();
    sh("chown gatepass:gatepass /var/lib/gatepass/gatepass.db /var/log/gatepass/audit.log");
    ok(Command::new("dpkg").arg("-i").arg(deb("gatepass-server")));
    assert_eq!(read("/etc/gatepass/server.toml"), local_config);
    assert_eq!(read("/etc/gatepass/seal.key"), "00\n");
    assert_eq!(read("/var/lib/gatepass/gatepass.db"), "state");
    assert_eq!(read("/var/log/gatepass/audit.log"), "{}\n");
    assert_eq!(owner_mode("/var/lib/gatepass/gatepass.db").0, "gatepass");
    assert_eq!(
        owner_mode("/etc/gatepass"),
        ("root".into(), "gatepass".into(), 0o750)
    );
    // A configuration the admin deleted stays deleted, and the upgrade
    // goes through.
    std::fs::remove_file("/etc/gatepass/server.toml").unwrap();
    ok(Command::new("dpkg").arg("-i").arg(deb("gatepass-server")));
    assert!(!Path::new("/etc/gatepass/server.toml").exists());
    std::fs::write("/etc/gatepass/server.toml", &local_config).unwrap();

    // Remove keeps configuration, state and the user; purge takes them.
    ok(Command::new("dpkg").arg("-r").arg("gatepass-server"));
    assert!(!Path::new("/usr/bin/gatepass-server").exists());
    assert_eq!(read("/etc/gatepass/server.toml"), local_config);
    assert!(Path::new("/var/lib/gatepass/gatepass.db").exists());
    assert!(user_exists("gatepass"));

    ok(Command::new("dpkg").arg("--purge").args(PACKAGES));
    for p in PACKAGES {
        assert!(!installed(p), "{p} still installed");
    }
    let left: Vec<&String> = listed
        .iter()
        .filter(|p| Path::new(p).exists() && (!Path::new(p).is_dir() || p.contains("gatepass")))
        .collect();
    assert!(left.is_empty(), "purge left {left:?}");
    let after = gatepass_paths();
    let new: Vec<&String> = after.difference(&before).collect();
    assert!(new.is_empty(), "purge left {new:?}");
    for p in [
        "/etc/gatepass",
        "/var/lib/gatepass",
        "/var/log/gatepass",
        "/var/lib/gatepass-hostd",
        "/var/lib/gatepass-gateway",
    ] {
        assert!(!Path::new(p).exists(), "purge left {p}");
    }
    assert!(!user_exists("gatepass"), "purge left the user gatepass");
    assert!(
        !user_exists("gatepass-gateway"),
        "purge left the user gatepass-gateway"
    );
    assert!(
        !group_exists("gatepass-gateway"),
        "purge left the group gatepass-gateway"
    );
    assert!(!group_exists("gatepass"), "purge left the group gatepass");
}

fn is_root() -> bool {
    sh("id -u").trim() == "0"
}
