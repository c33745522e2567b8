//! The lines gatepass adds to sshd's configuration, where they go, and how
//! they are installed (checked with `sshd -t`, rolled back on failure) and
//! removed again.
//!
//! Placement: sshd keeps the first value it reads for most keywords, and
//! everything after a `Match` line belongs to that block. hostd's service
//! may write only its managed folder and the drop-in folder (see
//! systemd/gatepass-hostd.service), never the main file, so every line that
//! can change later lives in a file of one of those:
//! - when the main file `Include`s the drop-in folder before its first
//!   `Match` and the folder is writable, the lines go to
//!   `<sshd_config.d>/50-gatepass.conf` ([`Placement::DropIn`]);
//! - otherwise they go to gatepass's own file in the managed folder
//!   (`<managed>/sshd_config.conf`), and the main file gets, once, a marked
//!   block holding only `Include <that file>`, right before the first
//!   `Match` (or at the end) ([`Placement::Included`]). An `Include` of that
//!   file the admin wrote before the first `Match` does as well.
//! - [`Placement::Block`], the directives themselves in the marked block,
//!   is what older versions wrote. It is kept only while the main file is
//!   read-only to hostd (under its unit) and the block needs no change;
//!   the next `setup` turns it into the `Include`.
//!
//! Conflicts: a line of the main file's global section that sets a keyword
//! gatepass manages and would be read before gatepass's own is commented out
//! with the marker [`DISABLED`] (and a note is reported); `uninstall`
//! restores it byte for byte. Such lines that come after gatepass's are left
//! alone, with a note that they have no effect. An `AuthorizedKeysFile`
//! keeps its files: gatepass's value is sshd's effective list (from
//! `sshd -T`) followed by gatepass's per-user file. A conflicting setting in
//! some other included file is not edited: the install fails, is rolled
//! back, and says which keyword sshd resolved elsewhere.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files::{self, Change, FsError};
use crate::sshd::{Effective, Sshd, SshdError};

pub const BEGIN: &str = "# BEGIN gatepass-hostd (managed, do not edit)";
pub const END: &str = "# END gatepass-hostd";
/// Prefix of a main-file line gatepass commented out; uninstall removes it.
pub const DISABLED: &str = "#gatepass-hostd-disabled# ";
pub const DROPIN_NAME: &str = "50-gatepass.conf";
/// gatepass's own sshd config file in the managed folder, Included from the
/// main file when the drop-in folder is not usable.
pub const INCLUDED_NAME: &str = "sshd_config.conf";
const OWN_FILE_HEADER: &str =
    "# Managed by gatepass-hostd: do not edit. `gatepass-hostd uninstall` removes this file.";
/// Relative `Include` patterns are relative to this folder (sshd's SSHDIR).
const SSHDIR: &str = "/etc/ssh";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{}: {what}", path.display())]
    Malformed { path: PathBuf, what: String },
    #[error("sshd does not accept the current configuration (fix it first): {0}")]
    CurrentInvalid(#[source] SshdError),
    #[error("sshd rejected the new configuration; the previous files were restored: {0}")]
    Rejected(String),
    #[error("cannot write sshd's configuration; the previous files were kept: {0}")]
    WriteFailed(String),
    #[error("sshd rejected the new configuration and restoring the previous files failed ({restore}): {reason}")]
    RollbackFailed { reason: String, restore: String },
    #[error(
        "{} needs rewriting for this change, but gatepass-hostd may not write it here \
         (read-only, as under its systemd unit); nothing was changed. Run `gatepass-hostd setup` \
         once as root: it makes {} Include {}, which the service may write",
        main.display(), main.display(), included.display()
    )]
    MainReadOnly { main: PathBuf, included: PathBuf },
    #[error("{0}")]
    BadPath(String),
}

/// Where sshd's configuration lives.
#[derive(Clone, Debug)]
pub struct SshdPaths {
    pub sshd_config: PathBuf,
    pub sshd_config_dir: PathBuf,
    pub sshd: PathBuf,
    /// gatepass's own file, `<managed>/`[`INCLUDED_NAME`].
    pub included: PathBuf,
}

impl SshdPaths {
    pub fn dropin(&self) -> PathBuf {
        self.sshd_config_dir.join(DROPIN_NAME)
    }

    pub fn sshd(&self) -> Sshd {
        Sshd::new(&self.sshd, &self.sshd_config)
    }
}

/// What gatepass sets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directives {
    pub trusted_user_ca_keys: PathBuf,
    pub revoked_keys: PathBuf,
    /// Mapped principals mode only.
    pub authorized_principals_file: Option<String>,
    /// gatepass's own file, added after the files sshd already reads.
    pub authorized_keys_file: String,
    pub host_certificates: Vec<PathBuf>,
}

impl Directives {
    fn keywords(&self) -> Vec<&'static str> {
        let mut k = vec!["trustedusercakeys", "revokedkeys", "authorizedkeysfile"];
        if self.authorized_principals_file.is_some() {
            k.push("authorizedprincipalsfile");
        }
        k
    }

    /// The directive lines, with `prior` (the AuthorizedKeysFile list sshd
    /// had without gatepass) kept first.
    pub fn lines(&self, prior: &[String]) -> Vec<String> {
        let mut out = vec![
            format!("TrustedUserCAKeys {}", self.trusted_user_ca_keys.display()),
            format!("RevokedKeys {}", self.revoked_keys.display()),
        ];
        if let Some(p) = &self.authorized_principals_file {
            out.push(format!("AuthorizedPrincipalsFile {p}"));
        }
        let mut akf: Vec<&str> = prior.iter().map(String::as_str).collect();
        akf.push(&self.authorized_keys_file);
        out.push(format!("AuthorizedKeysFile {}", akf.join(" ")));
        for c in &self.host_certificates {
            out.push(format!("HostCertificate {}", c.display()));
        }
        out
    }

    /// Paths go into sshd_config unquoted: no whitespace, quotes or `#`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut all: Vec<String> = vec![
            self.trusted_user_ca_keys.display().to_string(),
            self.revoked_keys.display().to_string(),
            self.authorized_keys_file.clone(),
        ];
        all.extend(self.authorized_principals_file.clone());
        all.extend(
            self.host_certificates
                .iter()
                .map(|p| p.display().to_string()),
        );
        all.iter().try_for_each(|p| check_path(p))
    }
}

/// Paths go into sshd_config unquoted: absolute, no whitespace, quotes or `#`.
fn check_path(p: &str) -> Result<(), ConfigError> {
    if !p.starts_with('/')
        || p.chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '#'))
    {
        return Err(ConfigError::BadPath(format!(
            "{p:?}: paths in sshd_config must be absolute, without whitespace, quotes or '#'"
        )));
    }
    Ok(())
}

/// Where the lines ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// `<sshd_config.d>/50-gatepass.conf`, Included by the main file.
    DropIn,
    /// gatepass's own file in the managed folder, Included by the main file
    /// (from a marked block holding only that `Include`, or the admin's own).
    Included,
    /// The directives themselves in a marked block of the main file: what
    /// older versions wrote, kept while hostd may not rewrite the main file.
    Block,
}

struct Line<'a> {
    text: &'a str,
    ending: &'a str,
}

fn split_lines(s: &str) -> Vec<Line<'_>> {
    s.split_inclusive('\n')
        .map(|l| {
            let body = l.strip_suffix('\n').unwrap_or(l);
            let text = body.strip_suffix('\r').unwrap_or(body);
            Line {
                text,
                ending: &l[text.len()..],
            }
        })
        .collect()
}

/// A config line's keyword (lower case) and arguments, as sshd splits them
/// (`Keyword value`, `Keyword=value`, `Keyword = value`).
fn keyword(text: &str) -> Option<(String, &str)> {
    let t = text.trim_start_matches([' ', '\t']);
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let end = t.find([' ', '\t', '=']).unwrap_or(t.len());
    let mut rest = t[end..].trim_start_matches([' ', '\t']);
    if let Some(r) = rest.strip_prefix('=') {
        rest = r.trim_start_matches([' ', '\t']);
    }
    Some((t[..end].to_ascii_lowercase(), rest.trim_end()))
}

/// The value of `keyword` (lower case) on the first line of the main
/// file's global section that sets it, once gatepass's lines are taken
/// out (its block, its markers): what sshd read there before gatepass.
pub fn main_file_value(paths: &SshdPaths, keyword_lc: &str) -> Result<Option<String>, ConfigError> {
    let current = read_main(&paths.sshd_config)?;
    let base = strip(&paths.sshd_config, &current)?;
    for line in split_lines(&base) {
        match keyword(line.text) {
            Some((kw, _)) if kw == "match" => break,
            Some((kw, args)) if kw == keyword_lc => return Ok(Some(first_arg(args))),
            _ => {}
        }
    }
    Ok(None)
}

/// The first argument of a config line, as sshd splits it (OpenSSH's
/// `argv_split`): quotes (`"` or `'`) hold spaces and are dropped, and a
/// backslash makes the quote, backslash or (outside quotes) space after it
/// an ordinary character.
fn first_arg(args: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut chars = args.trim_start_matches([' ', '\t']).chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\\', _) => match chars.peek() {
                Some(&n) if n == '\'' || n == '"' || n == '\\' || (quote.is_none() && n == ' ') => {
                    out.push(n);
                    chars.next();
                }
                _ => out.push(c),
            },
            (' ' | '\t', None) => break,
            ('"' | '\'', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            (c, _) => out.push(c),
        }
    }
    out
}

/// The main file without anything gatepass put there: the marked block
/// removed and disabled lines restored. `strip(compose(x)) == x`.
pub fn strip(path: &Path, text: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut in_block = false;
    let mut block_eol = "\n";
    for line in split_lines(text) {
        let t = line.text.trim();
        if in_block {
            if t == END {
                in_block = false;
                if line.ending.is_empty() {
                    // A block that ends the file without a line ending was
                    // appended to a last line that had none (see `compose`):
                    // take away the line ending added before it, the one
                    // the block's own lines use.
                    if let Some(kept) = out.strip_suffix(block_eol) {
                        out.truncate(kept.len());
                    }
                }
            }
            continue;
        }
        if t == BEGIN {
            in_block = true;
            block_eol = line.ending;
        } else if t == END {
            return Err(malformed(
                path,
                "an END gatepass-hostd line without its BEGIN line",
            ));
        } else if let Some(orig) = line.text.strip_prefix(DISABLED) {
            out.push_str(orig);
            out.push_str(line.ending);
        } else {
            out.push_str(line.text);
            out.push_str(line.ending);
        }
    }
    if in_block {
        return Err(malformed(
            path,
            "a BEGIN gatepass-hostd line without its END line",
        ));
    }
    Ok(out)
}

fn malformed(path: &Path, what: &str) -> ConfigError {
    ConfigError::Malformed {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// The main file and gatepass's own file gatepass wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Composed {
    pub main: String,
    /// The drop-in's text ([`Placement::DropIn`]).
    pub dropin: Option<String>,
    /// The included file's text ([`Placement::Included`]).
    pub included: Option<String>,
    pub placement: Placement,
    /// For people: lines commented out or without effect, fallbacks.
    pub notes: Vec<String>,
}

/// Builds the main file (from `base`, the main file without gatepass's
/// lines) and gatepass's own file. `dropin_usable`: the drop-in folder
/// exists and is writable. `included`: gatepass's own file to Include when
/// the drop-in is not used; None puts the directives themselves into the
/// main file's block (the layout of older versions). `prior_akf`: the
/// AuthorizedKeysFile list sshd had without gatepass.
pub fn compose(
    base: &str,
    dropin_path: &Path,
    dropin_usable: bool,
    included: Option<&Path>,
    d: &Directives,
    prior_akf: &[String],
) -> Composed {
    let lines = split_lines(base);
    let parsed: Vec<Option<(String, &str)>> = lines.iter().map(|l| keyword(l.text)).collect();
    let first_match = parsed
        .iter()
        .position(|k| matches!(k, Some((kw, _)) if kw == "match"))
        .unwrap_or(lines.len());
    let included_at = |target: &Path| {
        parsed[..first_match].iter().position(
            |k| matches!(k, Some((kw, args)) if kw == "include" && include_covers(args, target)),
        )
    };
    let dropin_include = included_at(dropin_path);
    let own_include = included.and_then(included_at);
    // Where gatepass's lines take effect (index in `lines`), and whether a
    // marked block goes there.
    let (placement, ours_at, block) = match (dropin_include, own_include, included) {
        (Some(i), _, _) if dropin_usable => (Placement::DropIn, i, false),
        (_, Some(i), Some(_)) => (Placement::Included, i, false),
        (_, None, Some(_)) => (Placement::Included, first_match, true),
        (_, _, None) => (Placement::Block, first_match, true),
    };
    let mut notes = Vec::new();
    if dropin_include.is_some() && placement != Placement::DropIn {
        let whither = match included {
            Some(p) => format!("{}, Included from the main file", p.display()),
            None => "a marked block in the main file".into(),
        };
        notes.push(format!(
            "{} is missing or not writable: the gatepass lines go into {whither}",
            dropin_path.parent().unwrap_or(Path::new("")).display()
        ));
    }
    let eol = if base.contains("\r\n") { "\r\n" } else { "\n" };
    let managed = d.keywords();
    let directive_lines = d.lines(prior_akf);
    let block_lines = match (placement, included) {
        (Placement::Included, Some(p)) => vec![format!("Include {}", p.display())],
        _ => directive_lines.clone(),
    };

    let mut main = String::with_capacity(base.len() + 512);
    for (i, line) in lines.iter().enumerate() {
        if i == first_match && block {
            push_block(&mut main, &block_lines, eol);
        }
        match &parsed[i] {
            Some((kw, _)) if i < first_match && managed.contains(&kw.as_str()) => {
                if i < ours_at {
                    notes.push(format!(
                        "line {}: `{}` commented out: it would override gatepass's {kw} (uninstall restores it)",
                        i + 1,
                        line.text.trim()
                    ));
                    main.push_str(DISABLED);
                } else if kw != "authorizedkeysfile" {
                    notes.push(format!(
                        "line {}: `{}` has no effect: gatepass's {kw} is read first",
                        i + 1,
                        line.text.trim()
                    ));
                }
                main.push_str(line.text);
                main.push_str(line.ending);
            }
            _ => {
                main.push_str(line.text);
                main.push_str(line.ending);
            }
        }
    }
    if first_match == lines.len() && block {
        if !main.is_empty() && !main.ends_with('\n') {
            // The file's last line had no line ending: it gets one before
            // the block, and the block's END line goes without one, which
            // tells `strip` to take that line ending away again.
            main.push_str(eol);
            push_block(&mut main, &block_lines, eol);
            main.truncate(main.len() - eol.len());
        } else {
            push_block(&mut main, &block_lines, eol);
        }
    }
    let own_file = || {
        let mut s = format!("{OWN_FILE_HEADER}\n");
        for l in &directive_lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    };
    Composed {
        main,
        dropin: (placement == Placement::DropIn).then(own_file),
        included: (placement == Placement::Included).then(own_file),
        placement,
        notes,
    }
}

fn push_block(out: &mut String, lines: &[String], eol: &str) {
    out.push_str(BEGIN);
    out.push_str(eol);
    for l in lines {
        out.push_str(l);
        out.push_str(eol);
    }
    out.push_str(END);
    out.push_str(eol);
}

/// Whether an `Include` line's patterns cover `target`.
pub fn include_covers(args: &str, target: &Path) -> bool {
    let target = target.to_string_lossy();
    args.split_whitespace()
        .map(|a| a.trim_matches('"'))
        .any(|pat| {
            let full = if pat.starts_with('/') {
                pat.to_string()
            } else {
                format!("{SSHDIR}/{pat}")
            };
            glob_match(full.as_bytes(), target.as_bytes())
        })
}

/// glob(3)-style match of a whole path: `*` and `?` do not cross `/`,
/// `[...]` (with `!` or `^`) is a character class.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(b'*'), _) => {
            glob_match(&p[1..], s) || (!s.is_empty() && s[0] != b'/' && glob_match(p, &s[1..]))
        }
        (Some(_), None) => false,
        (Some(b'?'), Some(&c)) => c != b'/' && glob_match(&p[1..], &s[1..]),
        (Some(b'['), Some(&c)) => match p.iter().skip(2).position(|&b| b == b']') {
            Some(end) => {
                let end = end + 2;
                let mut class = &p[1..end];
                let negate = matches!(class.first(), Some(b'!' | b'^'));
                if negate {
                    class = &class[1..];
                }
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == b'-' {
                        hit |= class[i] <= c && c <= class[i + 2];
                        i += 3;
                    } else {
                        hit |= class[i] == c;
                        i += 1;
                    }
                }
                hit != negate && c != b'/' && glob_match(&p[end + 1..], &s[1..])
            }
            None => c == b'[' && glob_match(&p[1..], &s[1..]),
        },
        (Some(&a), Some(&b)) => a == b && glob_match(&p[1..], &s[1..]),
    }
}

/// The AuthorizedKeysFile list sshd uses without gatepass: its effective
/// value minus gatepass's own entry (and `none`).
pub fn prior_authorized_keys(effective: Option<&str>, ours: &str) -> Vec<String> {
    effective
        .unwrap_or(".ssh/authorized_keys .ssh/authorized_keys2")
        .split_whitespace()
        .filter(|f| *f != ours && !f.eq_ignore_ascii_case("none"))
        .map(String::from)
        .collect()
}

/// The changes to sshd's files, computed but not yet made.
#[derive(Clone, Debug)]
pub struct ConfigPlan {
    /// Main file and/or drop-in; empty when nothing changes.
    pub changes: Vec<Change>,
    /// None for an uninstall.
    pub placement: Option<Placement>,
    pub notes: Vec<String>,
    /// What `sshd -T` must show afterwards (None for an uninstall).
    pub expect: Option<(Directives, Vec<String>)>,
}

impl ConfigPlan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

fn main_change(path: &Path, old: &[u8], new: String) -> Result<Option<Change>, ConfigError> {
    if old == new.as_bytes() {
        return Ok(None);
    }
    // Keep the main file's own mode.
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(path)
        .map(|m| m.mode() & 0o7777)
        .unwrap_or(files::PUBLIC_FILE);
    Ok(Some(Change {
        path: path.to_path_buf(),
        old: Some(old.to_vec()),
        new: Some(new.into_bytes()),
        mode,
    }))
}

fn read_main(path: &Path) -> Result<String, ConfigError> {
    let bytes =
        files::read_optional(path)?.ok_or_else(|| malformed(path, "sshd_config does not exist"))?;
    String::from_utf8(bytes).map_err(|_| malformed(path, "not UTF-8 text"))
}

fn dropin_usable(dir: &Path) -> bool {
    dir.is_dir() && nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// Whether hostd may replace this file: the file and its folder writable
/// (a write goes to a temp file beside it, renamed over it). Under the
/// unit's `ProtectSystem=strict` the main file is not.
fn replaceable(path: &Path) -> bool {
    use nix::unistd::{access, AccessFlags};
    access(path, AccessFlags::W_OK).is_ok()
        && access(path.parent().unwrap_or(Path::new("/")), AccessFlags::W_OK).is_ok()
}

/// `sshd -T` of the config as it is now; an error means sshd would not
/// start with it, so nothing is changed.
pub fn current_effective(paths: &SshdPaths) -> Result<Effective, ConfigError> {
    paths
        .sshd()
        .effective()
        .map_err(ConfigError::CurrentInvalid)
}

/// The change of one of gatepass's own files (drop-in, included file); a
/// file that is not wanted and not there (or whose folder is missing) is
/// no change.
fn own_file_change(path: &Path, new: Option<String>) -> Result<Option<Change>, ConfigError> {
    if new.is_none() && !path.exists() {
        return Ok(None);
    }
    Ok(Change::compute(
        path,
        new.map(String::into_bytes),
        files::PUBLIC_FILE,
    )?)
}

/// What installing `d` would change. The AuthorizedKeysFile list to keep
/// comes from sshd's effective config.
/// `eff`: `sshd -T` of the current config (see [`current_effective`]).
///
/// When the main file would have to change but hostd may not write it (its
/// unit), an old-style block that already holds exactly these directives
/// is kept (with a note); any other change is refused with
/// [`ConfigError::MainReadOnly`] before anything is written.
pub fn plan_install(
    paths: &SshdPaths,
    d: &Directives,
    eff: &Effective,
) -> Result<ConfigPlan, ConfigError> {
    d.validate()?;
    check_path(&paths.included.display().to_string())?;
    let current = read_main(&paths.sshd_config)?;
    let base = strip(&paths.sshd_config, &current)?;
    let prior = prior_authorized_keys(eff.get("authorizedkeysfile"), &d.authorized_keys_file);
    let dropin_path = paths.dropin();
    let usable = dropin_usable(&paths.sshd_config_dir);
    let mut composed = compose(
        &base,
        &dropin_path,
        usable,
        Some(&paths.included),
        d,
        &prior,
    );
    if composed.placement == Placement::Included
        && composed.main != current
        && !paths.sshd().supports_include()
    {
        composed = compose(&base, &dropin_path, usable, None, d, &prior);
        composed.notes.push(format!(
            "{} does not know `Include` (OpenSSH before 8.2): gatepass's lines go into a marked \
             block of {}, which gatepass-hostd's service may not rewrite; changes that need it \
             (a new host certificate, another mode) take `gatepass-hostd setup` as root",
            paths.sshd.display(),
            paths.sshd_config.display()
        ));
    }
    composed.notes.extend(principals_of_the_hosts_own(d, eff));
    if composed.main != current && !replaceable(&paths.sshd_config) {
        let legacy = compose(&base, &dropin_path, usable, None, d, &prior);
        if legacy.main != current {
            return Err(ConfigError::MainReadOnly {
                main: paths.sshd_config.clone(),
                included: paths.included.clone(),
            });
        }
        let note = format!(
            "gatepass's lines are still in a marked block of {}, which gatepass-hostd may not \
             rewrite here: changes that need it (a new host certificate, another mode) fail \
             until `gatepass-hostd setup` is run once as root, which moves them into {}",
            paths.sshd_config.display(),
            paths.included.display()
        );
        tracing::warn!("{note}");
        composed = legacy;
        composed.notes.push(note);
    }
    // New files before the main file that Includes them, removals after
    // it: sshd never reads a config that names a missing file.
    let own = [
        own_file_change(&dropin_path, composed.dropin)?,
        own_file_change(&paths.included, composed.included)?,
    ];
    let (writes, removals): (Vec<Change>, Vec<Change>) =
        own.into_iter().flatten().partition(|c| c.new.is_some());
    let mut changes = writes;
    changes.extend(main_change(
        &paths.sshd_config,
        current.as_bytes(),
        composed.main,
    )?);
    changes.extend(removals);
    Ok(ConfigPlan {
        changes,
        placement: Some(composed.placement),
        notes: composed.notes,
        expect: Some((d.clone(), prior)),
    })
}

/// What removing every gatepass line would change.
pub fn plan_uninstall(paths: &SshdPaths) -> Result<ConfigPlan, ConfigError> {
    let current = read_main(&paths.sshd_config)?;
    let base = strip(&paths.sshd_config, &current)?;
    let mut changes = Vec::new();
    changes.extend(main_change(&paths.sshd_config, current.as_bytes(), base)?);
    changes.extend(own_file_change(&paths.dropin(), None)?);
    changes.extend(own_file_change(&paths.included, None)?);
    Ok(ConfigPlan {
        changes,
        placement: None,
        notes: Vec::new(),
        expect: None,
    })
}

/// Where gatepass's lines are now, from the files (for `status`).
pub fn installed_placement(paths: &SshdPaths) -> Option<Placement> {
    if paths.dropin().exists() {
        return Some(Placement::DropIn);
    }
    let main = std::fs::read_to_string(&paths.sshd_config).unwrap_or_default();
    let (mut in_block, mut block, mut directives) = (false, false, false);
    for line in main.lines() {
        let t = line.trim();
        if t == BEGIN {
            (in_block, block) = (true, true);
        } else if t == END {
            in_block = false;
        } else if in_block && keyword(t).is_some_and(|(kw, _)| kw != "include") {
            directives = true;
        }
    }
    if directives {
        Some(Placement::Block)
    } else if block || paths.included.exists() {
        Some(Placement::Included)
    } else {
        None
    }
}

/// Makes the planned changes, then checks them with `sshd -t` (and, for an
/// install, that `sshd -T` resolves every keyword to gatepass's value). On
/// any failure (a write refused, sshd rejecting the result) the previous
/// files are restored exactly. Returns whether anything changed.
pub fn commit(paths: &SshdPaths, plan: &ConfigPlan) -> Result<bool, ConfigError> {
    if plan.changes.is_empty() {
        return Ok(false);
    }
    // Leftovers of a writer killed mid-write; sshd never reads them.
    for dir in [
        paths.sshd_config_dir.as_path(),
        paths.included.parent().unwrap_or(Path::new("/")),
        paths.sshd_config.parent().unwrap_or(Path::new("/")),
    ] {
        if let Err(e) = files::clean_temp_files(dir) {
            tracing::debug!("cannot clean temp files: {e}");
        }
    }
    let mut done: Vec<&Change> = Vec::new();
    let mut write_failure: Option<String> = None;
    for c in &plan.changes {
        if let Err(e) = c.apply() {
            write_failure = Some(e.to_string());
            break;
        }
        done.push(c);
    }
    let failure = match write_failure {
        Some(e) => Some(ConfigError::WriteFailed(e)),
        None => {
            let sshd = paths.sshd();
            let reason = match sshd.test() {
                Err(e) => Some(e.to_string()),
                Ok(()) => match &plan.expect {
                    None => None,
                    Some((d, prior)) => match sshd.effective() {
                        Err(e) => Some(e.to_string()),
                        Ok(eff) => check_effective(&eff, d, prior).err(),
                    },
                },
            };
            reason.map(ConfigError::Rejected)
        }
    };
    let Some(failure) = failure else {
        return Ok(true);
    };
    let mut restore_errors = Vec::new();
    for c in done.iter().rev() {
        let back = c.reversed();
        if let Err(e) = back.apply() {
            restore_errors.push(e.to_string());
        }
    }
    if restore_errors.is_empty() {
        Err(failure)
    } else {
        let reason = match failure {
            ConfigError::WriteFailed(r) | ConfigError::Rejected(r) => r,
            other => other.to_string(),
        };
        Err(ConfigError::RollbackFailed {
            reason,
            restore: restore_errors.join("; "),
        })
    }
}

/// In default mode a certificate logs in as the users it names, unless
/// sshd reads an `AuthorizedPrincipalsFile` or `AuthorizedPrincipalsCommand`
/// of the host's own: sshd then takes the principals listed there for every
/// trusted CA, gatepass's too, so a gatepass certificate naming `ops` logs
/// in as whoever's file lists `ops`. Not changed (the host's own CA may
/// need it), but said.
fn principals_of_the_hosts_own(d: &Directives, eff: &Effective) -> Vec<String> {
    if d.authorized_principals_file.is_some() {
        return Vec::new();
    }
    ["AuthorizedPrincipalsFile", "AuthorizedPrincipalsCommand"]
        .iter()
        .filter_map(|kw| {
            let v = eff.get(&kw.to_ascii_lowercase())?;
            (!v.eq_ignore_ascii_case("none")).then(|| {
                format!(
                    "sshd reads {kw} {v}: in default mode gatepass certificates are matched                      against it too, so they log in as the users it lists their principals for,                      not as the users they name; remove it, or use principals = \"mapped\""
                )
            })
        })
        .collect()
}

/// Whether sshd ended up with gatepass's values; the error names the
/// keyword that another file sets first.
pub fn check_effective(eff: &Effective, d: &Directives, prior: &[String]) -> Result<(), String> {
    let mut wrong = Vec::new();
    let mut want = |kw: &str, value: &str| {
        let got = eff.get(kw).unwrap_or("");
        if got != value {
            wrong.push(format!("{kw} is {got:?}, not {value:?}"));
        }
    };
    want(
        "trustedusercakeys",
        &d.trusted_user_ca_keys.display().to_string(),
    );
    want("revokedkeys", &d.revoked_keys.display().to_string());
    if let Some(p) = &d.authorized_principals_file {
        want("authorizedprincipalsfile", p);
    }
    let mut akf: Vec<&str> = prior.iter().map(String::as_str).collect();
    akf.push(&d.authorized_keys_file);
    want("authorizedkeysfile", &akf.join(" "));
    for c in &d.host_certificates {
        let c = c.display().to_string();
        if !eff.all("hostcertificate").contains(&c) {
            wrong.push(format!("hostcertificate {c} is missing"));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "sshd reads another value first (set in a file included before gatepass's lines?): {}",
            wrong.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(mapped: bool) -> Directives {
        Directives {
            trusted_user_ca_keys: "/g/user_ca.pub".into(),
            revoked_keys: "/g/revoked.krl".into(),
            authorized_principals_file: mapped.then(|| "/g/principals/%u".to_string()),
            authorized_keys_file: "/g/authorized_keys/%u".into(),
            host_certificates: vec![],
        }
    }

    fn prior() -> Vec<String> {
        vec![".ssh/authorized_keys".into()]
    }

    /// Default mode beside a principals file or command of the host's own:
    /// said, as sshd matches gatepass certificates against it too.
    #[test]
    fn the_hosts_own_principals_file_is_named_in_default_mode() {
        let own = Effective::parse(
            "authorizedprincipalsfile /etc/ssh/principals/%u\nauthorizedprincipalscommand none\n",
        );
        let notes = principals_of_the_hosts_own(&d(false), &own);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("AuthorizedPrincipalsFile /etc/ssh/principals/%u"));
        let none =
            Effective::parse("authorizedprincipalsfile none\nauthorizedprincipalscommand none\n");
        assert!(principals_of_the_hosts_own(&d(false), &none).is_empty());
        // Mapped mode sets its own file (checked to be in force).
        assert!(principals_of_the_hosts_own(&d(true), &own).is_empty());
    }

    #[test]
    fn debian_default_uses_dropin() {
        let base = "Include /etc/ssh/sshd_config.d/*.conf\n\nKbdInteractiveAuthentication no\nUsePAM yes\n";
        let c = compose(
            base,
            Path::new("/etc/ssh/sshd_config.d/50-gatepass.conf"),
            true,
            None,
            &d(false),
            &prior(),
        );
        assert_eq!(c.placement, Placement::DropIn);
        assert_eq!(c.main, base);
        let dropin = c.dropin.unwrap();
        assert!(dropin.contains("TrustedUserCAKeys /g/user_ca.pub\n"));
        assert!(dropin.contains("AuthorizedKeysFile .ssh/authorized_keys /g/authorized_keys/%u\n"));
        assert!(!dropin.contains("AuthorizedPrincipalsFile"));
    }

    #[test]
    fn relative_include_and_unusable_folder() {
        let base = "include sshd_config.d/*.conf\nPort 22\n";
        let p = Path::new("/etc/ssh/sshd_config.d/50-gatepass.conf");
        assert_eq!(
            compose(base, p, true, None, &d(false), &[]).placement,
            Placement::DropIn
        );
        let c = compose(base, p, false, None, &d(false), &[]);
        assert_eq!(c.placement, Placement::Block);
        assert!(c
            .main
            .starts_with("include sshd_config.d/*.conf\nPort 22\n# BEGIN"));
        assert!(!c.notes.is_empty());
    }

    #[test]
    fn a_last_line_without_line_ending_strips_back_byte_for_byte() {
        // Found by the sshd_config fuzz target: the line ending added
        // before an appended block stayed behind after uninstall.
        for base in [
            "Port 22\nTr",
            "Port 22\r\nUsePAM yes",
            "Port 22",
            "Port 22\n\n\r",
        ] {
            let c = compose(
                base,
                Path::new("/x/50-gatepass.conf"),
                false,
                None,
                &d(false),
                &[],
            );
            assert_eq!(c.placement, Placement::Block);
            assert!(c.main.contains("TrustedUserCAKeys /g/user_ca.pub"));
            assert_eq!(strip(Path::new("x"), &c.main).unwrap(), base, "{base:?}");
        }
    }

    #[test]
    fn block_goes_before_first_match_and_strips_back() {
        let base = "Port 22\nMatch User git\n  X11Forwarding no\n";
        let c = compose(
            base,
            Path::new("/x/50-gatepass.conf"),
            true,
            None,
            &d(true),
            &prior(),
        );
        assert_eq!(c.placement, Placement::Block);
        let block_at = c.main.find(BEGIN).unwrap();
        assert!(block_at < c.main.find("Match User").unwrap());
        assert!(c
            .main
            .contains("AuthorizedPrincipalsFile /g/principals/%u\n"));
        assert_eq!(strip(Path::new("x"), &c.main).unwrap(), base);
    }

    #[test]
    fn crlf_odd_case_and_conflicts() {
        let base = "HostKey /k\r\n\ttrustedusercakeys=/old/ca.pub \r\nAUTHORIZEDKEYSFILE  .ssh/ak\r\nMatch all\r\n  TrustedUserCAKeys /m\r\n";
        let c = compose(
            base,
            Path::new("/x/50-gatepass.conf"),
            true,
            None,
            &d(false),
            &[".ssh/ak".into()],
        );
        assert!(c
            .main
            .contains(&format!("{DISABLED}\ttrustedusercakeys=/old/ca.pub \r\n")));
        assert!(c
            .main
            .contains(&format!("{DISABLED}AUTHORIZEDKEYSFILE  .ssh/ak\r\n")));
        assert!(c
            .main
            .contains("AuthorizedKeysFile .ssh/ak /g/authorized_keys/%u\r\n"));
        // A Match block's own setting is the admin's business.
        assert!(c.main.contains("\r\n  TrustedUserCAKeys /m\r\n"));
        assert!(
            !c.main.replace("\r\n", "").contains('\n'),
            "only CRLF endings"
        );
        assert_eq!(strip(Path::new("x"), &c.main).unwrap(), base);
        assert_eq!(c.notes.len(), 2, "{:?}", c.notes);
    }

    #[test]
    fn lines_after_the_include_are_left_alone() {
        let base = "Include /etc/ssh/sshd_config.d/*.conf\nTrustedUserCAKeys /old\n";
        let c = compose(
            base,
            Path::new("/etc/ssh/sshd_config.d/50-gatepass.conf"),
            true,
            None,
            &d(false),
            &[],
        );
        assert_eq!(c.main, base);
        assert!(c.notes[0].contains("no effect"), "{:?}", c.notes);
    }

    const OWN: &str = "/etc/ssh/gatepass/sshd_config.conf";
    const DROPIN: &str = "/etc/ssh/sshd_config.d/50-gatepass.conf";

    #[test]
    fn without_an_include_the_main_file_gets_only_an_include_of_gatepass_file() {
        let base = "Port 22\nTrustedUserCAKeys /old\nMatch User git\n  X11Forwarding no\n";
        let c = compose(
            base,
            Path::new(DROPIN),
            true,
            Some(Path::new(OWN)),
            &d(false),
            &prior(),
        );
        assert_eq!(c.placement, Placement::Included);
        assert_eq!(
            c.main,
            format!("Port 22\n{DISABLED}TrustedUserCAKeys /old\n{BEGIN}\nInclude {OWN}\n{END}\nMatch User git\n  X11Forwarding no\n")
        );
        let own = c.included.unwrap();
        assert!(own.contains("TrustedUserCAKeys /g/user_ca.pub\n"), "{own}");
        assert!(c.dropin.is_none());
        assert_eq!(strip(Path::new("x"), &c.main).unwrap(), base);
    }

    #[test]
    fn an_unusable_dropin_folder_or_the_admins_own_include() {
        let base = "Include /etc/ssh/sshd_config.d/*.conf\nPort 22";
        let c = compose(
            base,
            Path::new(DROPIN),
            false,
            Some(Path::new(OWN)),
            &d(false),
            &[],
        );
        assert_eq!(c.placement, Placement::Included);
        assert!(c.main.contains(&format!("Include {OWN}")));
        assert!(c.notes[0].contains(OWN), "{:?}", c.notes);
        assert_eq!(strip(Path::new("x"), &c.main).unwrap(), base);
        // An Include of gatepass's file written by the admin needs no block.
        let base = "Include /etc/ssh/gatepass/*.conf\nPort 22\n";
        let c = compose(
            base,
            Path::new(DROPIN),
            false,
            Some(Path::new(OWN)),
            &d(false),
            &[],
        );
        assert_eq!(c.placement, Placement::Included);
        assert_eq!(c.main, base);
        assert!(c.included.is_some());
    }

    #[test]
    fn no_trailing_newline() {
        let c = compose(
            "Port 22",
            Path::new("/x/y.conf"),
            true,
            None,
            &d(false),
            &[],
        );
        assert!(c.main.starts_with(&format!("Port 22\n{BEGIN}\n")));
        assert!(c.main.ends_with(END));
        assert_eq!(strip(Path::new("x"), &c.main).unwrap(), "Port 22");
    }

    #[test]
    fn strip_rejects_broken_markers() {
        assert!(strip(Path::new("x"), &format!("{BEGIN}\nPort 1\n")).is_err());
        assert!(strip(Path::new("x"), &format!("Port 1\n{END}\n")).is_err());
    }

    #[test]
    fn a_first_argument_is_split_as_sshd_splits_it() {
        assert_eq!(first_arg("/etc/ssh/ca.pub more"), "/etc/ssh/ca.pub");
        assert_eq!(
            first_arg("\"/etc/ssh/my cas.pub\" x"),
            "/etc/ssh/my cas.pub"
        );
        assert_eq!(first_arg("'/x/y z'"), "/x/y z");
        assert_eq!(first_arg("/x/a\\ b"), "/x/a b");
        assert_eq!(first_arg("/x/\\\"q"), "/x/\"q");
        assert_eq!(first_arg("/x/\\n"), "/x/\\n");
    }

    #[test]
    fn globs() {
        let t = Path::new("/etc/ssh/sshd_config.d/50-gatepass.conf");
        assert!(include_covers("/etc/ssh/sshd_config.d/*.conf", t));
        assert!(include_covers("\"/etc/ssh/sshd_config.d/*\"", t));
        assert!(include_covers("/a /etc/ssh/sshd_config.d/[0-9]?-*.conf", t));
        assert!(!include_covers("/etc/ssh/sshd_config.d/*.cfg", t));
        assert!(!include_covers("/etc/ssh/*", t), "* does not cross /");
        assert!(!include_covers("/etc/ssh/sshd_config.d/[!5]*", t));
    }

    #[test]
    fn prior_akf() {
        assert_eq!(
            prior_authorized_keys(Some("none"), "/g/a/%u"),
            Vec::<String>::new()
        );
        assert_eq!(
            prior_authorized_keys(Some(".ssh/authorized_keys /g/a/%u"), "/g/a/%u"),
            vec![".ssh/authorized_keys".to_string()]
        );
    }

    #[test]
    fn paths_are_checked() {
        let mut x = d(false);
        x.trusted_user_ca_keys = "/a b/ca".into();
        assert!(x.validate().is_err());
        assert!(d(true).validate().is_ok());
    }
}
