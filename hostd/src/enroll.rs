//! `gatepass-hostd setup`: enroll once, then install everything.
//!
//! Idempotent: when the config and token files exist the host is enrolled
//! already; setup then only brings the files in line (and writes nothing
//! whose content is already right).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatepass_api::hosts::{Ack, EnrollRequest, HostState};

use crate::apply::{Layout, OwnKind};
use crate::clock;
use crate::config::{Config, Paths, SyncSettings};
use crate::files::{self, Change};
use crate::host::{is_gatepass_file, Host, Outcome, Preview};
use crate::hostcerts;
use crate::remote;
use crate::sshd::Effective;
use crate::state::LocalState;
use crate::sync;
use crate::Error;

/// Path settings given on the command line (None: keep / default).
#[derive(Clone, Debug, Default)]
pub struct PathOverrides {
    pub sshd_config: Option<PathBuf>,
    pub sshd_config_dir: Option<PathBuf>,
    pub managed_dir: Option<PathBuf>,
    pub sshd: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub reload_command: Option<String>,
    pub login_socket: Option<PathBuf>,
}

impl PathOverrides {
    pub fn apply(&self, p: &mut Paths) {
        let set = |dst: &mut PathBuf, src: &Option<PathBuf>| {
            if let Some(s) = src {
                dst.clone_from(s);
            }
        };
        set(&mut p.sshd_config, &self.sshd_config);
        set(&mut p.sshd_config_dir, &self.sshd_config_dir);
        set(&mut p.managed_dir, &self.managed_dir);
        set(&mut p.sshd, &self.sshd);
        set(&mut p.state_dir, &self.state_dir);
        set(&mut p.login_socket, &self.login_socket);
        if let Some(r) = &self.reload_command {
            p.reload_command = Some(r.clone()).filter(|r| !r.trim().is_empty());
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SetupOptions {
    pub config_path: PathBuf,
    pub server: Option<String>,
    pub join_token: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub paths: PathOverrides,
    /// Added to the detected addresses.
    pub addresses: Vec<String>,
    /// Also report loopback addresses (tests on 127.0.0.1).
    pub include_loopback: bool,
    pub hostname: Option<String>,
    /// Take the place of an enrolled host of the same name.
    pub replace: bool,
    pub dry_run: bool,
}

/// What setup did (or, with `--dry-run`, would do).
#[derive(Debug, Default)]
pub struct SetupReport {
    pub enrolled_now: bool,
    pub host_id: String,
    /// Everything written or removed (or, dry run, to be).
    pub changes: Vec<Change>,
    pub notes: Vec<String>,
    pub outcome: Option<Outcome>,
    /// Dry run: what would happen besides file changes.
    pub plan: Vec<String>,
}

/// The host's own addresses: every interface address except link-local
/// IPv6 and, unless asked, loopback.
pub fn local_addresses(include_loopback: bool) -> Vec<String> {
    let mut out = BTreeSet::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sa) = a.address else { continue };
            let ip: IpAddr = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
            if link_local || (ip.is_loopback() && !include_loopback) {
                continue;
            }
            out.insert(ip.to_string());
        }
    }
    out.into_iter().collect()
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

fn dir_of(p: &Path) -> PathBuf {
    p.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ".".into())
}

/// The config when setup already ran here (config and token both
/// present); a config that does not parse is an error, not "not enrolled".
pub fn enrolled(config_path: &Path) -> Result<Option<Config>, Error> {
    if !config_path.exists() {
        return Ok(None);
    }
    let cfg = Config::load(config_path)?;
    Ok(cfg.token_file.exists().then_some(cfg))
}

/// Notes in `paths` the host's own `TrustedUserCAKeys` and `RevokedKeys`
/// files, which gatepass's lines replace, so that hostd merges them into
/// its own: the host keeps trusting its CAs, and what it revoked stays
/// revoked. A setting the config already has (a path, or `""` for none) is
/// left as it is.
///
/// Before gatepass's lines are in place the files are what sshd reads now
/// (`eff`, its `sshd -T`). Once they are (a host set up by a version that
/// did not merge them), the main file's own line for them, commented out or
/// shadowed by gatepass's, names them: its revocations are taken up again,
/// but its CAs, which sshd has not trusted since, only with a note saying
/// how. `former`: the managed folder before this setup changed it, whose
/// files are gatepass's too. Returns what to tell the admin.
pub fn adopt_own_files(paths: &mut Paths, eff: &Effective, former: Option<&Path>) -> Vec<String> {
    let mut ours = Vec::new();
    for dir in std::iter::once(paths.managed_dir.as_path()).chain(former) {
        let layout = Layout::new(dir);
        ours.extend([layout.user_ca(), layout.krl()]);
    }
    let sshd_paths = crate::host::sshd_paths(paths);
    let mut notes = Vec::new();
    for (kind, slot) in [
        (OwnKind::UserCaKeys, &mut paths.host_user_ca_keys),
        (OwnKind::RevokedKeys, &mut paths.host_revoked_keys),
    ] {
        let keyword = kind.keyword();
        let lc = keyword.to_ascii_lowercase();
        let key = kind.config_key();
        if let Some(set) = slot.as_ref() {
            // A setting stays; but sshd reading another file of the host's
            // now (gatepass's lines not in place) than one it names is
            // worth a word.
            if let Some(v) = eff.get(&lc).filter(|v| {
                !set.as_os_str().is_empty()
                    && !v.eq_ignore_ascii_case("none")
                    && !is_gatepass_file(Path::new(v), &ours)
                    && Path::new(v) != set.as_path()
            }) {
                notes.push(format!(
                    "sshd reads {keyword} {v}, but hostd's config names {:?} for it \
                     (paths.{key}), which hostd keeps merging: set it to the file sshd reads, \
                     or \"\" for none",
                    set.display().to_string()
                ));
            }
            continue;
        }
        let (value, in_force) = match eff.get(&lc) {
            Some(v) if !is_gatepass_file(Path::new(v), &ours) => (Some(v.to_string()), true),
            _ => (
                crate::sshd_config::main_file_value(&sshd_paths, &lc)
                    .ok()
                    .flatten(),
                false,
            ),
        };
        let Some(value) = value.filter(|v| !v.eq_ignore_ascii_case("none")) else {
            continue;
        };
        let path = PathBuf::from(&value);
        if is_gatepass_file(&path, &ours) {
            continue;
        }
        if !path.is_absolute() {
            notes.push(format!(
                "sshd_config's {keyword} {value} is replaced by gatepass's and not merged into it: \
                 to merge it, set paths.{key} in hostd's config to the file's absolute path"
            ));
            continue;
        }
        if !in_force && kind == OwnKind::UserCaKeys {
            notes.push(format!(
                "sshd_config's {keyword} {value} has not been in force since gatepass's line \
                 replaced it; to trust its CAs again, set paths.{key} = \"{value}\" in hostd's \
                 config (\"\" to stop this note)"
            ));
            continue;
        }
        *slot = Some(path);
        let what = match kind {
            OwnKind::UserCaKeys => "its CA keys are added to gatepass's (not in mapped mode)",
            OwnKind::RevokedKeys => "what it revokes is added to gatepass's",
        };
        notes.push(format!(
            "the host's own {keyword} file {value}: {what}; hostd reads it again at every \
             check (paths.{key} in hostd's config, \"\" for none)"
        ));
    }
    notes
}

pub async fn setup(opts: &SetupOptions) -> Result<SetupReport, Error> {
    let mut report = SetupReport::default();
    let (cfg, token) = match enrolled(&opts.config_path)? {
        Some(mut cfg) => {
            report.host_id = cfg.host_id.clone();
            let before = cfg.clone();
            opts.paths.apply(&mut cfg.paths);
            let eff = Host::new(&cfg.paths).effective()?;
            report.notes.extend(adopt_own_files(
                &mut cfg.paths,
                &eff,
                Some(&before.paths.managed_dir),
            ));
            if cfg != before {
                let c = Change::compute(
                    &opts.config_path,
                    Some(cfg.to_toml().into_bytes()),
                    files::PUBLIC_FILE,
                )?;
                if opts.dry_run {
                    report.changes.extend(c);
                } else if let Some(c) = c {
                    c.apply()?;
                    report.changes.push(c);
                }
            }
            let token = sync::read_token(&cfg)?;
            (cfg, Some(token))
        }
        None => {
            let cfg = enroll(opts, &mut report).await?;
            if opts.dry_run {
                let host = Host::new(&cfg.paths);
                let preview = host.preview(&HostState::default(), clock::now(), false)?;
                report.plan.push(
                    "the contents of user_ca.pub, revoked.krl and the per-user files come from the server after enrollment"
                        .into(),
                );
                push_preview(&mut report, preview);
                return Ok(report);
            }
            let token = sync::read_token(&cfg)?;
            (cfg, Some(token))
        }
    };
    let client = sync::client(&cfg, token, Duration::from_secs(60))?;
    let state = remote::state(&client, 0, None, None).await?;
    let host = Host::new(&cfg.paths);
    let now = clock::now();
    let sign = cfg.host_mount.is_some();
    if opts.dry_run {
        let preview = host.preview(&state, now, sign)?;
        push_preview(&mut report, preview);
        return Ok(report);
    }
    let new_certs = if sign {
        let eff = host.effective()?;
        let due: Vec<_> = host
            .host_keys(&eff)
            .into_iter()
            .filter(|k| hostcerts::needs_signing(k, now))
            .collect();
        let (certs, failed) = sync::sign_all(&client, &due).await;
        // The CA trust is worth installing even when a host key is refused.
        report.notes.extend(failed);
        certs
    } else {
        Vec::new()
    };
    let out = host.converge(&state, now, &new_certs)?;
    let mut local = LocalState::load(&cfg.paths.state_dir);
    sync::record(&mut local, &state, &out, now, true);
    local.save(&cfg.paths.state_dir)?;
    let ack = Ack {
        index: state.index,
        installed: out.rendered.installed.clone(),
        ..Ack::default()
    };
    if let Err(e) = remote::ack(&client, &ack).await {
        tracing::warn!("ack failed (the daemon will send it again): {e}");
    }
    report.changes.extend(out.changes.iter().cloned());
    report.notes.extend(out.notes.iter().cloned());
    report.outcome = Some(out);
    Ok(report)
}

fn push_preview(report: &mut SetupReport, p: Preview) {
    report.changes.extend(p.changes);
    report.changes.extend(p.config.changes);
    report.notes.extend(p.config.notes);
    report
        .notes
        .extend(p.rendered.rejected.iter().map(|r| format!("refused: {r}")));
    for k in p.to_sign {
        report
            .plan
            .push(format!("request a host certificate for {}", k.display()));
    }
}

/// Enrolls with the join token and writes the token, the server's CA
/// certificate and the config (or, dry run, says it would). Returns the
/// config.
async fn enroll(opts: &SetupOptions, report: &mut SetupReport) -> Result<Config, Error> {
    let need = |v: &Option<String>, flag: &str| {
        v.clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::Other(format!("not enrolled yet: {flag} is required")))
    };
    let server = need(&opts.server, "--server")?;
    crate::config::check_server(&server).map_err(Error::Other)?;
    let join_token = need(&opts.join_token, "--join-token")?;
    let ca_src = opts
        .ca_cert
        .clone()
        .ok_or_else(|| Error::Other("not enrolled yet: --ca-cert is required".into()))?;
    let conf_dir = dir_of(&opts.config_path);
    let mut paths = Paths::default();
    opts.paths.apply(&mut paths);
    let host = Host::new(&paths);
    // sshd must accept its config before anything else happens.
    let eff = host.effective()?;
    report.notes.extend(adopt_own_files(&mut paths, &eff, None));
    let keys = host.host_keys(&eff);
    let mut addresses = local_addresses(opts.include_loopback);
    for a in &opts.addresses {
        let ip: IpAddr = a
            .parse()
            .map_err(|_| Error::Other(format!("--address {a:?} is not an IP address")))?;
        if !addresses.contains(&ip.to_string()) {
            addresses.push(ip.to_string());
        }
    }
    let req = EnrollRequest {
        join_token,
        hostname: opts.hostname.clone().unwrap_or_else(hostname),
        addresses,
        host_keys: keys.iter().map(|k| k.public_line.clone()).collect(),
        replace: opts.replace,
    };
    let mut cfg = Config {
        server: server.trim_end_matches('/').to_string(),
        ca_cert: conf_dir.join("server-ca.pem"),
        token_file: conf_dir.join("hostd.token"),
        host_id: String::new(),
        user_mount: "ssh".into(),
        host_mount: None,
        host_role: None,
        principals: "default".into(),
        paths,
        sync: SyncSettings::default(),
    };
    if opts.dry_run {
        report.plan.push(format!(
            "enroll {:?} at {} with addresses [{}] and {} host key(s)",
            req.hostname,
            cfg.server,
            req.addresses.join(", "),
            req.host_keys.len()
        ));
        report.plan.push(format!(
            "write the host token to {} (mode 0600)",
            cfg.token_file.display()
        ));
        cfg.host_id = "(from the server)".into();
        report.changes.extend(Change::compute(
            &opts.config_path,
            Some(cfg.to_toml().into_bytes()),
            files::PUBLIC_FILE,
        )?);
        return Ok(cfg);
    }
    let ca_pem = std::fs::read(&ca_src)
        .map_err(|e| Error::Other(format!("cannot read --ca-cert {}: {e}", ca_src.display())))?;
    let client = sync::client(
        &Config {
            ca_cert: ca_src.clone(),
            ..cfg.clone()
        },
        None,
        Duration::from_secs(60),
    )?;
    let enrolled = remote::enroll(&client, &req).await.map_err(|e| match e {
        // The server's reason, and for a taken name the way out.
        api @ gatepass_api::Error::Api { .. } => {
            let text = api.to_string();
            let hint = if text.contains("already enrolled") && !req.replace {
                "\n(to take that host's place, removing it and revoking its token, run setup again with --replace)"
            } else {
                ""
            };
            Error::Other(format!("enrollment refused: {text}{hint}"))
        }
        other => Error::Api(other),
    })?;
    cfg.host_id = enrolled.host_id.clone();
    cfg.user_mount = enrolled.user_mount.clone();
    cfg.host_mount = enrolled.host_mount.clone();
    cfg.host_role = enrolled.host_role.clone();
    cfg.principals = enrolled.principals.clone();
    // Token first: a config file means the token is there too.
    files::ensure_dir(&conf_dir, files::DIR)?;
    let mut token = enrolled.host_token.clone();
    token.push('\n');
    files::write_atomic(&cfg.token_file, token.as_bytes(), files::SECRET_FILE)?;
    files::sync_file(&cfg.ca_cert, &ca_pem, files::PUBLIC_FILE)?;
    files::write_atomic(
        &opts.config_path,
        cfg.to_toml().as_bytes(),
        files::PUBLIC_FILE,
    )?;
    report.enrolled_now = true;
    report.host_id = cfg.host_id.clone();
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sshd_config::DISABLED;

    fn paths_in(dir: &Path) -> Paths {
        Paths {
            sshd_config: dir.join("sshd_config"),
            sshd_config_dir: dir.join("sshd_config.d"),
            managed_dir: dir.join("gatepass"),
            state_dir: dir.join("state"),
            ..Paths::default()
        }
    }

    #[test]
    fn setup_notes_the_hosts_own_files_once_and_never_gatepass_s() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("sshd_config"), "Port 22\n").unwrap();

        // Before gatepass's lines: the files sshd reads now.
        let eff =
            Effective::parse("trustedusercakeys /etc/ssh/ca.pub\nrevokedkeys /etc/ssh/revoked\n");
        let mut p = paths_in(d);
        let notes = adopt_own_files(&mut p, &eff, None);
        assert_eq!(p.host_user_ca_keys, Some("/etc/ssh/ca.pub".into()));
        assert_eq!(p.host_revoked_keys, Some("/etc/ssh/revoked".into()));
        assert_eq!(notes.len(), 2, "{notes:?}");

        // A setting the config has stays as it is, "" (none) included.
        let mut q = paths_in(d);
        q.host_user_ca_keys = Some("".into());
        q.host_revoked_keys = Some("/etc/ssh/revoked".into());
        let before = q.clone();
        assert!(adopt_own_files(&mut q, &eff, None).is_empty());
        assert_eq!(q, before);
        // One that names another file than sshd reads stays too, said.
        q.host_revoked_keys = Some("/etc/ssh/old".into());
        let notes = adopt_own_files(&mut q, &eff, None);
        assert_eq!(q.host_revoked_keys, Some("/etc/ssh/old".into()));
        assert!(
            notes.len() == 1 && notes[0].contains("sshd reads RevokedKeys /etc/ssh/revoked"),
            "{notes:?}"
        );

        // After gatepass's lines (sshd reads gatepass's files): the main
        // file's own lines, commented out by gatepass, name the host's. Its
        // revocations are taken up again; its CAs, out of force since,
        // only with a note saying how.
        let layout = Layout::new(&d.join("gatepass"));
        let eff = Effective::parse(&format!(
            "trustedusercakeys {}\nrevokedkeys {}\n",
            layout.user_ca().display(),
            layout.krl().display()
        ));
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port 22\r\n{DISABLED}TrustedUserCAKeys \"/etc/ssh/my cas.pub\"\r\n\
                 {DISABLED}RevokedKeys=/etc/ssh/revoked\r\nMatch User x\r\n  RevokedKeys /late\r\n"
            ),
        )
        .unwrap();
        let mut r = paths_in(d);
        let notes = adopt_own_files(&mut r, &eff, None);
        assert_eq!(r.host_revoked_keys, Some("/etc/ssh/revoked".into()));
        assert_eq!(r.host_user_ca_keys, None);
        assert!(
            notes.iter().any(|n| n.contains("has not been in force")
                && n.contains("paths.host_user_ca_keys = \"/etc/ssh/my cas.pub\"")),
            "{notes:?}"
        );

        // gatepass's own files, in another managed folder (marked by its
        // `.index`) or the one before `--managed-dir`, are never the host's.
        std::fs::write(d.join("sshd_config"), "Port 22\n").unwrap();
        let old = d.join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::write(old.join(crate::apply::FILES_INDEX), "3\n").unwrap();
        let former = d.join("former");
        let eff = Effective::parse(&format!(
            "trustedusercakeys {}\nrevokedkeys {}\n",
            old.join("user_ca.pub").display(),
            former.join("revoked.krl").display()
        ));
        let mut s = paths_in(d);
        assert!(adopt_own_files(&mut s, &eff, Some(&former)).is_empty());
        assert_eq!((s.host_user_ca_keys, s.host_revoked_keys), (None, None));
        // A host file beside such a note is the host's all the same.
        let eff = Effective::parse(&format!(
            "revokedkeys {}\n",
            old.join("revoked_keys").display()
        ));
        let mut t = paths_in(d);
        adopt_own_files(&mut t, &eff, None);
        assert_eq!(t.host_revoked_keys, Some(old.join("revoked_keys")));
    }
}
