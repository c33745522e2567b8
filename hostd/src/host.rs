//! One host's sshd, brought to a desired state: the managed files, the host
//! certificates, then sshd's config (checked and rolled back on failure),
//! then a reload only when sshd's config or a host certificate changed.

use std::path::PathBuf;

use gatepass_api::hosts::HostState;

use crate::apply::{self, Layout, Rendered, FILES_INDEX};
use crate::config::Paths;
use crate::files::{self, Change};
use crate::hostcerts::{self, CertInfo, HostKey};
use crate::sshd::{Effective, Reload, Reloaded, Sshd};
use crate::sshd_config::{self, ConfigPlan, Directives, Placement, SshdPaths};
use crate::Error;

/// A certificate the server just signed for one of the host keys.
#[derive(Clone, Debug)]
pub struct NewCert {
    pub key: HostKey,
    pub text: String,
}

#[derive(Clone, Debug)]
pub struct Host {
    pub layout: Layout,
    pub sshd_paths: SshdPaths,
    pub reload: Reload,
    /// How this sshd reads the times of dynamic keys (by its version).
    pub time_form: apply::TimeForm,
    /// The host's own `TrustedUserCAKeys` and `RevokedKeys` files, merged
    /// into gatepass's (see `config::Paths`).
    pub own_user_ca_keys: Option<PathBuf>,
    pub own_revoked_keys: Option<PathBuf>,
    /// hostd's state folder: the last good copies of those files.
    pub state_dir: PathBuf,
}

/// What one convergence did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub rendered: Rendered,
    /// Every file written or removed.
    pub changes: Vec<Change>,
    pub config_changed: bool,
    pub certs_changed: bool,
    pub reloaded: Option<Reloaded>,
    pub placement: Option<Placement>,
    pub notes: Vec<String>,
    pub host_certs: Vec<CertInfo>,
}

/// What a convergence would do, for `--dry-run`.
#[derive(Clone, Debug)]
pub struct Preview {
    pub changes: Vec<Change>,
    pub config: ConfigPlan,
    pub rendered: Rendered,
    /// Host keys that would get a certificate requested.
    pub to_sign: Vec<PathBuf>,
}

/// The marker of a reload sshd is owed, in gatepass's folder.
const RELOAD_PENDING: &str = ".reload-pending";

impl Host {
    pub fn new(paths: &Paths) -> Host {
        let sshd_paths = sshd_paths(paths);
        let time_form = apply::TimeForm::for_version(sshd_paths.sshd().version());
        Host {
            layout: Layout::new(&paths.managed_dir),
            sshd_paths,
            reload: Reload::from_config(paths.reload_command.as_deref()),
            time_form,
            own_user_ca_keys: own_path(paths.host_user_ca_keys.as_deref()),
            own_revoked_keys: own_path(paths.host_revoked_keys.as_deref()),
            state_dir: paths.state_dir.clone(),
        }
    }

    /// The host's own files as they are now, each checked as sshd reads
    /// it. hostd keeps a copy of the last good version of each in its state
    /// folder (naming its file, for that file only).
    ///
    /// A file that cannot be read as it is (sshd could not either) is
    /// listed in `problems`, and what is sure of it stands in ([`sure`]):
    /// of CA keys, those of the copy that the file still holds on a line
    /// that can be read; of revocations, the copy's and those of every line
    /// that can be read. So a broken file of the host's never holds up the
    /// server's revocations, nothing of it that hostd could read is let in,
    /// and no CA it dropped is trusted.
    ///
    /// A file that changed within the second around now may be half
    /// written (`ssh-keygen -k -u` and `cat >` write in place): what is
    /// sure of it stands in the same way, unlisted, and the next check
    /// takes it whole. A missing `TrustedUserCAKeys` file is listed too,
    /// and trusts no CA (as in sshd). `keep`: note a good version as the
    /// last one (an apply; not a preview or a drift check).
    fn own_files(&self, keep: bool) -> apply::OwnFiles {
        use apply::{OwnFile, OwnKind};
        let mut own = apply::OwnFiles::default();
        let ours = [self.layout.user_ca(), self.layout.krl()];
        for (kind, path) in [
            (OwnKind::UserCaKeys, &self.own_user_ca_keys),
            (OwnKind::RevokedKeys, &self.own_revoked_keys),
        ] {
            let Some(path) = path else { continue };
            let kept = self.state_dir.join(kind.config_key());
            let gatepass_s = is_gatepass_file(path, &ours);
            let read = if gatepass_s {
                Err("is one of gatepass's own files: it is not merged into itself".to_string())
            } else {
                OwnFile::read(kind, path)
            };
            // The keys of the lines that can be read now (none of a file of
            // gatepass's own, which holds what hostd merged).
            let readable = || {
                if gatepass_s {
                    return Vec::new();
                }
                apply::read_capped(path)
                    .ok()
                    .map(|b| OwnFile::of_bytes(kind, path, b).readable_keys())
                    .unwrap_or_default()
            };
            let file = match read {
                Ok(f) if f.missing => {
                    own.problems.push(format!(
                        "the host's own {} file {} is missing (or hidden from hostd's service): \
                         no CA of it is trusted",
                        kind.keyword(),
                        path.display()
                    ));
                    None
                }
                Ok(f) => match kept_copy(&kept, kind, path) {
                    Some(last) if last.bytes != f.bytes && changed_just_now(path) => {
                        tracing::debug!(path = %path.display(), "changed just now: what is sure of it is merged, the rest at the next check");
                        sure(kind, path, Some(last), f.readable_keys())
                    }
                    _ => {
                        if keep {
                            keep_copy(&kept, &f);
                        }
                        Some(f)
                    }
                },
                Err(why) => {
                    let last = kept_copy(&kept, kind, path);
                    let had_copy = last.is_some();
                    let file = sure(kind, path, last, readable());
                    let instead = match kind {
                        OwnKind::UserCaKeys if file.is_none() => {
                            "no CA of it is trusted until it is fixed"
                        }
                        OwnKind::UserCaKeys => {
                            "of the last version hostd could read, the CA keys it still holds on a line that can be read are trusted until it is fixed"
                        }
                        OwnKind::RevokedKeys if had_copy => {
                            "the last version hostd could read, and the keys of its lines that can be read, are revoked until it is fixed"
                        }
                        OwnKind::RevokedKeys => {
                            "the keys of its lines that can be read are revoked until it is fixed"
                        }
                    };
                    own.problems.push(format!(
                        "the host's own {} file {} {why}; {instead}",
                        kind.keyword(),
                        path.display()
                    ));
                    file
                }
            };
            match kind {
                OwnKind::UserCaKeys => own.user_ca_keys = file,
                OwnKind::RevokedKeys => own.revoked_keys = file,
            }
        }
        own
    }

    /// Takes the host's own file settings from `paths` (hostd's config,
    /// read again).
    pub fn set_own_files(&mut self, paths: &Paths) {
        self.own_user_ca_keys = own_path(paths.host_user_ca_keys.as_deref());
        self.own_revoked_keys = own_path(paths.host_revoked_keys.as_deref());
    }

    /// `state` rendered at `now` in `form`, with the host's own files.
    fn render(
        &self,
        state: &HostState,
        now: i64,
        form: apply::TimeForm,
        keep: bool,
    ) -> Result<Rendered, Error> {
        Ok(apply::render_with(state, now, form, &self.own_files(keep))?)
    }

    pub fn sshd(&self) -> Sshd {
        self.sshd_paths.sshd()
    }

    /// sshd's effective config now (fails when sshd rejects it).
    pub fn effective(&self) -> Result<Effective, Error> {
        Ok(sshd_config::current_effective(&self.sshd_paths)?)
    }

    pub fn host_keys(&self, eff: &Effective) -> Vec<HostKey> {
        hostcerts::discover(eff, &self.layout)
    }

    fn directives(&self, mapped: bool, keys: &[HostKey], new: &[NewCert]) -> Directives {
        let certs = keys
            .iter()
            .filter(|k| {
                new.iter().any(|n| n.key.cert == k.cert) || hostcerts::installed(k).is_some()
            })
            .map(|k| k.cert.clone())
            .collect();
        self.layout.directives(mapped, certs)
    }

    fn cert_changes(new: &[NewCert]) -> Result<Vec<Change>, Error> {
        let mut out = Vec::new();
        for c in new {
            hostcerts::parse_for(&c.text, &c.key.public, &c.key.cert).map_err(|e| {
                Error::Other(format!(
                    "certificate from the server for {}: {e}",
                    c.key.private.display()
                ))
            })?;
            let mut text = c.text.trim().to_string();
            text.push('\n');
            out.extend(Change::compute(
                &c.key.cert,
                Some(text.into_bytes()),
                files::PUBLIC_FILE,
            )?);
        }
        Ok(out)
    }

    /// What [`Host::converge`] would change; `sign` says whether host
    /// certificates would be requested.
    pub fn preview(&self, state: &HostState, now: i64, sign: bool) -> Result<Preview, Error> {
        let rendered = self.render(state, now, self.time_form, false)?;
        let changes = apply::plan(&self.layout, &rendered)?;
        let eff = self.effective()?;
        let keys = self.host_keys(&eff);
        let to_sign: Vec<PathBuf> = if sign {
            keys.iter()
                .filter(|k| hostcerts::needs_signing(k, now))
                .map(|k| k.private.clone())
                .collect()
        } else {
            Vec::new()
        };
        let d = self.directives(state.principals.is_some(), &keys, &[]);
        let config = sshd_config::plan_install(&self.sshd_paths, &d, &eff)?;
        Ok(Preview {
            changes,
            config,
            rendered,
            to_sign,
        })
    }

    /// The managed files and sshd config files that no longer hold what
    /// applying `state` at `applied_at` wrote there: changed on disk by
    /// someone else since. Rendering at the time of that apply (not now)
    /// keeps keys that merely expired since from counting as drift, and
    /// rendering in the time form of that apply (`form`) keeps a change of
    /// sshd's version from it. When the host's own files changed since
    /// (`own_digest` is that apply's), the CA keys and the KRL that merge
    /// them are the host's change, not drift.
    pub fn drifted(
        &self,
        state: &HostState,
        applied_at: i64,
        form: apply::TimeForm,
        own_digest: Option<&str>,
    ) -> Result<Vec<PathBuf>, Error> {
        let rendered = self.render(state, applied_at, form, false)?;
        let own_changed = rendered.own_digest.as_deref() != own_digest;
        let merged = [self.layout.user_ca(), self.layout.krl()];
        let mut paths: Vec<PathBuf> = apply::plan(&self.layout, &rendered)?
            .into_iter()
            .map(|c| c.path)
            .filter(|p| !(own_changed && merged.contains(p)))
            .collect();
        let eff = self.effective()?;
        let keys = self.host_keys(&eff);
        let d = self.directives(state.principals.is_some(), &keys, &[]);
        let config = sshd_config::plan_install(&self.sshd_paths, &d, &eff)?;
        paths.extend(config.changes.into_iter().map(|c| c.path));
        Ok(paths)
    }

    /// Writes the managed files for `state` (keys expired at `now` left
    /// out), installs `new_certs`, brings sshd's config in line, and
    /// reloads sshd if its config or a host certificate in use changed.
    pub fn converge(
        &self,
        state: &HostState,
        now: i64,
        new_certs: &[NewCert],
    ) -> Result<Outcome, Error> {
        let rendered = self.render(state, now, self.time_form, true)?;
        apply::ensure_dirs(&self.layout)?;
        self.note_files_index(state.index);
        let mut out = Outcome {
            changes: apply::apply(&self.layout, &rendered)?,
            ..Default::default()
        };
        let eff = self.effective()?;
        let keys = self.host_keys(&eff);
        let certs = Self::cert_changes(new_certs)?;
        let mut written = Vec::new();
        for c in &certs {
            if let Err(e) = c.apply() {
                undo(&written);
                return Err(e.into());
            }
            written.push(c.clone());
        }
        let d = self.directives(state.principals.is_some(), &keys, new_certs);
        // A config change that cannot be made takes the new certificates
        // back with it: sshd keeps what it had, nothing half done.
        let committed = sshd_config::plan_install(&self.sshd_paths, &d, &eff)
            .and_then(|plan| Ok((sshd_config::commit(&self.sshd_paths, &plan)?, plan)));
        let (config_changed, plan) = match committed {
            Ok(x) => x,
            Err(e) => {
                undo(&written);
                return Err(e.into());
            }
        };
        out.certs_changed = certs.iter().any(|c| d.host_certificates.contains(&c.path));
        out.changes.extend(certs);
        out.config_changed = config_changed;
        out.placement = plan.placement;
        out.notes = plan.notes.clone();
        if out.config_changed {
            out.changes.extend(plan.changes);
        }
        out.host_certs = keys.iter().filter_map(hostcerts::installed).collect();
        if out.config_changed || out.certs_changed || self.reload_pending() {
            out.reloaded = Some(self.reload_marked()?);
        }
        out.rendered = rendered;
        Ok(out)
    }

    /// The index of the desired state whose files were last written (or
    /// begun to be) into gatepass's folder; None before the first, or
    /// from a hostd that did not note it.
    pub fn files_index(&self) -> Option<u64> {
        std::fs::read_to_string(self.layout.dir.join(FILES_INDEX))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Notes `index` as the state the files are about to hold, before they
    /// are written: a saved state (`state.json`) with another index does
    /// not describe them, and is not applied again at start (a KRL newer
    /// than it would be rolled back). Written beside the files, so it is
    /// kept when the state folder cannot be written. The files are written
    /// even when this fails: a revocation must not wait on a note.
    fn note_files_index(&self, index: u64) {
        let path = self.layout.dir.join(FILES_INDEX);
        if let Err(e) = files::sync_file(&path, format!("{index}\n").as_bytes(), files::PUBLIC_FILE)
        {
            tracing::warn!("cannot note the state index in {}: {e}", path.display());
        }
    }

    /// Where a reload that sshd is owed is noted: the files changed, the
    /// reload failed, and a run that finds nothing more to change must
    /// still make it (or, uninstalling, must not remove the files the
    /// running sshd's config still names).
    fn reload_marker(&self) -> PathBuf {
        self.layout.dir.join(RELOAD_PENDING)
    }

    fn reload_pending(&self) -> bool {
        self.reload_marker().exists()
    }

    /// Reloads sshd, owing it (the marker) until it succeeds.
    fn reload_marked(&self) -> Result<Reloaded, Error> {
        let marker = self.reload_marker();
        if let Err(e) = std::fs::write(&marker, b"") {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(
                    "cannot note the reload owed to sshd in {}: {e}",
                    marker.display()
                );
            }
        }
        let reloaded = self.reload.run(&self.sshd())?;
        if let Err(e) = std::fs::remove_file(&marker) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", marker.display());
            }
        }
        Ok(reloaded)
    }

    /// What uninstalling would change.
    pub fn uninstall_preview(&self) -> Result<Vec<Change>, Error> {
        let mut changes = sshd_config::plan_uninstall(&self.sshd_paths)?.changes;
        changes.extend(apply::removal_plan(&self.layout)?);
        Ok(changes)
    }

    /// Removes gatepass's lines (checked with `sshd -t`), reloads sshd, and
    /// only then removes the files the lines pointed to: sshd refuses every
    /// key while a RevokedKeys file it is told to read is missing.
    pub fn uninstall(&self) -> Result<(Vec<Change>, Option<Reloaded>), Error> {
        let plan = sshd_config::plan_uninstall(&self.sshd_paths)?;
        let changed = sshd_config::commit(&self.sshd_paths, &plan)?;
        // A reload that failed on an earlier run is still owed: until it is
        // made, sshd reads the old config, which names the files below.
        let reloaded = if changed || self.reload_pending() {
            Some(self.reload_marked()?)
        } else {
            None
        };
        let mut changes = if changed { plan.changes } else { Vec::new() };
        changes.extend(apply::remove_all(&self.layout)?);
        Ok((changes, reloaded))
    }
}

/// Where sshd's configuration lives, from hostd's config.
pub fn sshd_paths(paths: &Paths) -> SshdPaths {
    SshdPaths {
        sshd_config: paths.sshd_config.clone(),
        sshd_config_dir: paths.sshd_config_dir.clone(),
        sshd: paths.sshd.clone(),
        included: paths.managed_dir.join(sshd_config::INCLUDED_NAME),
    }
}

/// A host file setting of the config: `""` is none.
fn own_path(p: Option<&std::path::Path>) -> Option<PathBuf> {
    p.filter(|p| !p.as_os_str().is_empty()).map(PathBuf::from)
}

/// Whether `path` was changed within the second around now (its
/// modification time, in whole seconds): it may still be being written.
/// A time further off, in the past or (a copied file, a clock set back)
/// in the future, is taken as settled.
fn changed_just_now(path: &std::path::Path) -> bool {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    (modified - crate::clock::now()).abs() <= 1
}

/// What is sure of a host file whose present contents cannot be taken
/// whole, from its last good copy `last` and the keys of the lines that
/// can be read now: of CA keys, those of the copy still there (None when
/// none is: no CA is trusted); of revocations, both.
fn sure(
    kind: apply::OwnKind,
    path: &std::path::Path,
    last: Option<apply::OwnFile>,
    readable: Vec<ssh_key::PublicKey>,
) -> Option<apply::OwnFile> {
    match kind {
        apply::OwnKind::UserCaKeys => {
            let both: Vec<_> = last
                .map(|l| l.readable_keys())
                .unwrap_or_default()
                .into_iter()
                .filter(|k| readable.iter().any(|n| n.key_data() == k.key_data()))
                .collect();
            (!both.is_empty()).then(|| apply::OwnFile::of_keys(kind, path, &both))
        }
        apply::OwnKind::RevokedKeys => {
            let mut f = last.unwrap_or_else(|| apply::OwnFile::of_keys(kind, path, &[]));
            f.also = readable;
            Some(f)
        }
    }
}

/// Whether `path` is one of gatepass's own files: the same file as one of
/// `ours`, or gatepass's CA keys or KRL in another managed folder (one
/// holding hostd's `.index` note), such as the one before a new
/// `--managed-dir`.
pub fn is_gatepass_file(path: &std::path::Path, ours: &[PathBuf]) -> bool {
    let canonical = |p: &std::path::Path| std::fs::canonicalize(p).ok();
    let target = canonical(path);
    if ours.iter().any(|o| o == path)
        || (target.is_some() && ours.iter().any(|o| canonical(o) == target))
    {
        return true;
    }
    let real = target.unwrap_or_else(|| path.to_path_buf());
    let name = real.file_name().and_then(|n| n.to_str());
    matches!(name, Some(apply::USER_CA_FILE | apply::KRL_FILE))
        && real
            .parent()
            .is_some_and(|dir| dir.join(FILES_INDEX).exists())
}

/// hostd's copy of the last good version of a host file: the file's path,
/// a NUL, then its contents. Written only when it changed.
fn keep_copy(kept: &std::path::Path, f: &apply::OwnFile) {
    let mut bytes = f.path.as_os_str().as_encoded_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(&f.bytes);
    if std::fs::read(kept).ok().as_deref() == Some(&bytes[..]) {
        return;
    }
    let dir = kept.parent().unwrap_or(std::path::Path::new("/"));
    if let Err(e) = files::ensure_dir(dir, 0o700)
        .and_then(|_| files::sync_file(kept, &bytes, files::SECRET_FILE))
    {
        tracing::warn!("cannot keep a copy of {}: {e}", f.path.display());
    }
}

/// The kept copy of the file of `kind` at `path`: only one made of that
/// very path, and only if it still reads as sshd would read it.
fn kept_copy(
    kept: &std::path::Path,
    kind: apply::OwnKind,
    path: &std::path::Path,
) -> Option<apply::OwnFile> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = std::fs::read(kept).ok()?;
    let at = bytes.iter().position(|b| *b == 0)?;
    if std::path::Path::new(std::ffi::OsStr::from_bytes(&bytes[..at])) != path {
        return None;
    }
    apply::OwnFile::checked(kind, path, bytes[at + 1..].to_vec()).ok()
}

/// Removes hostd's copies of the host's own files (uninstall); the paths
/// removed.
pub fn remove_kept_copies(state_dir: &std::path::Path) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for kind in [apply::OwnKind::UserCaKeys, apply::OwnKind::RevokedKeys] {
        let p = state_dir.join(kind.config_key());
        if files::remove_file(&p)? {
            out.push(p);
        }
    }
    Ok(out)
}

/// Puts back what `changes` replaced, last first; failures are logged (the
/// caller is already reporting an error).
fn undo(changes: &[Change]) {
    for c in changes.iter().rev() {
        let back = c.reversed();
        if let Err(e) = back.apply() {
            tracing::error!("cannot restore {}: {e}", c.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE6UKKpDN5zr5Blb1uUhH6XDr6XlaOR1VBhLMpUSH7FS";
    const OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB8ht8Z3j6yDWPBHQtOp/R9rjWvfU4uWgMImASHkoP1A";

    #[test]
    fn a_broken_host_file_is_stood_in_for_by_its_own_last_good_version_only() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let (a, b) = (d.join("revoked_a"), d.join("revoked_b"));
        std::fs::write(&a, format!("{KEY}\n")).unwrap();
        let mut paths = Paths {
            managed_dir: d.join("gatepass"),
            state_dir: d.join("state"),
            host_revoked_keys: Some(a.clone()),
            host_user_ca_keys: Some(d.join("no_such_ca.pub")),
            ..Paths::default()
        };
        let host = Host::new(&paths);
        let good = host.own_files(true);
        assert_eq!(
            good.revoked_keys.as_ref().unwrap().bytes,
            format!("{KEY}\n").into_bytes()
        );
        assert_eq!(good.user_ca_keys, None);
        assert_eq!(good.problems.len(), 1, "{:?}", good.problems);
        assert!(
            good.problems[0].contains("is missing"),
            "{:?}",
            good.problems
        );

        // Broken: the last good version stands in, and that is said.
        std::fs::write(&a, "garbage\n").unwrap();
        let broken = host.own_files(true);
        assert_eq!(broken.revoked_keys, good.revoked_keys);
        assert!(
            broken
                .problems
                .iter()
                .any(|p| p.contains("not a public key, line 1")
                    && p.contains("the last version hostd could read, and the keys of its lines")),
            "{:?}",
            broken.problems
        );
        assert_eq!(broken.digest(), good.digest(), "not the host's change");

        // Another file, broken: the copy of the first one does not stand
        // in for it.
        std::fs::write(&b, "garbage\n").unwrap();
        paths.host_revoked_keys = Some(b);
        let other = Host::new(&paths).own_files(true);
        let stood_in = other.revoked_keys.unwrap();
        assert!(stood_in.bytes.is_empty() && stood_in.also.is_empty());
        assert!(
            other
                .problems
                .iter()
                .any(|p| p.contains("the keys of its lines that can be read are revoked")),
            "{:?}",
            other.problems
        );

        // A broken CA file: of its last good version, only the CA keys it
        // still holds on a line that can be read are trusted; a CA dropped
        // in the same edit is not.
        let ca = d.join("ca.pub");
        std::fs::write(&ca, format!("{KEY}\n{OTHER}\n")).unwrap();
        paths.host_user_ca_keys = Some(ca.clone());
        let host = Host::new(&paths);
        host.own_files(true);
        std::fs::write(&ca, format!("{OTHER}\nnot a key\n")).unwrap();
        let cas = host.own_files(true);
        let stood_in = cas.user_ca_keys.unwrap();
        assert_eq!(
            String::from_utf8(stood_in.bytes).unwrap(),
            format!("{OTHER}\n")
        );
        assert!(
            cas.problems
                .iter()
                .any(|p| p.contains("not a public key, line 2")
                    && p.contains("the CA keys it still holds")),
            "{:?}",
            cas.problems
        );

        // A change within the second around a check may be half written:
        // what is sure of it stands in until the next. A CA dropped goes at
        // once (one added waits); a key revoked is revoked at once (one
        // taken off the list stays revoked until then).
        std::fs::write(&ca, format!("{OTHER}\n")).unwrap();
        let fresh = host.own_files(true);
        assert_eq!(
            String::from_utf8(fresh.user_ca_keys.unwrap().bytes).unwrap(),
            format!("{OTHER}\n")
        );
        assert!(
            !fresh
                .problems
                .iter()
                .any(|p| p.contains("TrustedUserCAKeys")),
            "{:?}",
            fresh.problems
        );
        paths.host_revoked_keys = Some(a.clone());
        let host = Host::new(&paths);
        std::fs::write(&a, format!("{OTHER}\n")).unwrap();
        let fresh = host.own_files(true);
        let revoked = fresh.revoked_keys.unwrap();
        assert_eq!(revoked.bytes, format!("{KEY}\n").into_bytes(), "the copy");
        assert_eq!(revoked.also.len(), 1);
        assert_eq!(revoked.also[0].to_openssh().unwrap(), OTHER);

        // "" is none.
        paths.host_revoked_keys = Some("".into());
        paths.host_user_ca_keys = None;
        assert_eq!(
            Host::new(&paths).own_files(true),
            apply::OwnFiles::default()
        );
    }
}
