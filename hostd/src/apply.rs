//! The server's [`HostState`] turned into the files sshd reads, every piece
//! of text checked so that nothing from the server can add a line or an
//! option sshd would obey.
//!
//! sshd re-reads the CA keys, the KRL, the principals and authorized_keys
//! files at every login, so writing them needs no reload.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine;
use gatepass_api::hosts::{DynamicKey, HostState};

use crate::files::{self, Change, FsError};
use crate::sshd_config::Directives;

/// gatepass's CA keys and KRL, in the managed folder.
pub const USER_CA_FILE: &str = "user_ca.pub";
pub const KRL_FILE: &str = "revoked.krl";

/// An OpenSSH KRL that revokes nothing (PROTOCOL.krl): magic
/// "SSHKRL\n\0", format version 1, KRL version 0, generated 0, flags 0, an
/// empty reserved string and an empty comment. sshd refuses every key when
/// the RevokedKeys file is missing, so this is written before the directive
/// exists whenever the server has no KRL yet.
pub const EMPTY_KRL: [u8; 44] = [
    b'S', b'S', b'H', b'K', b'R', b'L', b'\n', 0, // magic
    0, 0, 0, 1, // format version
    0, 0, 0, 0, 0, 0, 0, 0, // krl version
    0, 0, 0, 0, 0, 0, 0, 0, // generated date
    0, 0, 0, 0, 0, 0, 0, 0, // flags
    0, 0, 0, 0, // reserved (empty string)
    0, 0, 0, 0, // comment (empty string)
];

/// Options a dynamic key may carry (OpenSSH's authorized_keys options,
/// minus `cert-authority`/`principals`, which would turn the key into a CA,
/// and `expiry-time`, which hostd sets itself).
const ALLOWED_OPTIONS: &[&str] = &[
    "agent-forwarding",
    "command",
    "environment",
    "from",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-touch-required",
    "no-user-rc",
    "no-x11-forwarding",
    "permitlisten",
    "permitopen",
    "port-forwarding",
    "pty",
    "restrict",
    "tunnel",
    "user-rc",
    "verify-required",
    "x11-forwarding",
];

/// Where gatepass's files live: the managed folder (`/etc/ssh/gatepass`).
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
        }
    }
    pub fn user_ca(&self) -> PathBuf {
        self.dir.join(USER_CA_FILE)
    }
    pub fn krl(&self) -> PathBuf {
        self.dir.join(KRL_FILE)
    }
    pub fn principals_dir(&self) -> PathBuf {
        self.dir.join("principals")
    }
    pub fn authorized_keys_dir(&self) -> PathBuf {
        self.dir.join("authorized_keys")
    }
    /// The certificate of a host key: `<dir>/<key file name>-cert.pub`.
    pub fn host_cert(&self, host_key: &Path) -> PathBuf {
        let name = host_key
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "host_key".into());
        self.dir.join(format!("{name}-cert.pub"))
    }

    /// The sshd directives for this layout.
    pub fn directives(&self, mapped: bool, host_certs: Vec<PathBuf>) -> Directives {
        Directives {
            trusted_user_ca_keys: self.user_ca(),
            revoked_keys: self.krl(),
            authorized_principals_file: mapped
                .then(|| format!("{}/%u", self.principals_dir().display())),
            authorized_keys_file: format!("{}/%u", self.authorized_keys_dir().display()),
            host_certificates: host_certs,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("bad state from the server: {0}")]
    BadState(String),
    #[error("the host's own {0}")]
    OwnFile(String),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// The files' contents, ready to write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    pub user_ca: String,
    pub krl: Vec<u8>,
    /// Mapped mode: user → principals file. None: default mode.
    pub principals: Option<BTreeMap<String, String>>,
    /// user → authorized_keys file.
    pub authorized_keys: BTreeMap<String, String>,
    /// Leases of the keys written (what the ack reports).
    pub installed: Vec<String>,
    /// Entries left out, with why.
    pub rejected: Vec<String>,
    /// The earliest expiry among the keys written: when to look again.
    pub next_expiry: Option<i64>,
    /// The form of the keys' expiry times.
    pub form: TimeForm,
    /// [`OwnFiles::digest`] of the host's own files merged in.
    pub own_digest: Option<String>,
}

/// The largest own file hostd reads (sshd's own limit on a key line is
/// 16 KiB; a revocation list of this size holds about 200,000 keys).
const MAX_OWN_FILE: u64 = 16 << 20;

/// Which of the host's own files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnKind {
    UserCaKeys,
    RevokedKeys,
}

impl OwnKind {
    pub fn keyword(self) -> &'static str {
        match self {
            OwnKind::UserCaKeys => "TrustedUserCAKeys",
            OwnKind::RevokedKeys => "RevokedKeys",
        }
    }

    /// Its key under `[paths]` in hostd's config, which is also the name of
    /// hostd's copy of the last version it could read (in its state folder).
    pub fn config_key(self) -> &'static str {
        match self {
            OwnKind::UserCaKeys => "host_user_ca_keys",
            OwnKind::RevokedKeys => "host_revoked_keys",
        }
    }
}

/// A host file's bytes, at most [`MAX_OWN_FILE`] of them (more is an
/// `InvalidData` error: a path naming `/dev/zero` is not read for ever).
pub fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_OWN_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_OWN_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than the most hostd reads",
        ));
    }
    Ok(bytes)
}

/// One of the host's own files, read and checked as sshd reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnFile {
    pub kind: OwnKind,
    pub path: PathBuf,
    /// What it holds (nothing for a missing `TrustedUserCAKeys` file,
    /// which sshd reads as trusting no CA).
    pub bytes: Vec<u8>,
    /// A `TrustedUserCAKeys` file that is not there.
    pub missing: bool,
    /// Keys revoked besides what `bytes` holds: the lines of a broken
    /// `RevokedKeys` file that can be read, merged with its last good
    /// version.
    pub also: Vec<ssh_key::PublicKey>,
}

impl OwnFile {
    /// Reads `path` and checks it as sshd would read a file of `kind`;
    /// the error says what sshd could not read. A missing `RevokedKeys`
    /// file is such an error: sshd refuses every key while it is missing.
    pub fn read(kind: OwnKind, path: &Path) -> Result<OwnFile, String> {
        let mut missing = false;
        let bytes = match read_capped(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(format!("is larger than {} MiB", MAX_OWN_FILE >> 20))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match kind {
                OwnKind::UserCaKeys => {
                    missing = true;
                    Vec::new()
                }
                OwnKind::RevokedKeys => {
                    return Err("is missing (sshd refuses every key while it is)".into())
                }
            },
            Err(e) => return Err(format!("cannot be read: {e}")),
        };
        let mut f = OwnFile::checked(kind, path, bytes)?;
        f.missing = missing;
        Ok(f)
    }

    /// `bytes` as the file of `kind` at `path`, checked.
    pub fn checked(kind: OwnKind, path: &Path, bytes: Vec<u8>) -> Result<OwnFile, String> {
        let f = OwnFile::of_bytes(kind, path, bytes);
        if f.is_krl() {
            gatepass_krl::parse(&f.bytes)
                .map_err(|e| format!("is a KRL hostd cannot merge: {e}"))?;
        } else {
            f.keys()?;
        }
        Ok(f)
    }

    fn is_krl(&self) -> bool {
        self.kind == OwnKind::RevokedKeys && self.bytes.starts_with(gatepass_krl::KRL_MAGIC)
    }

    /// `bytes` as the file of `kind` at `path`, unchecked.
    pub fn of_bytes(kind: OwnKind, path: &Path, bytes: Vec<u8>) -> OwnFile {
        OwnFile {
            kind,
            path: path.to_path_buf(),
            bytes,
            missing: false,
            also: Vec::new(),
        }
    }

    /// A text file of `kind` at `path` holding just `keys`, one per line.
    pub fn of_keys(kind: OwnKind, path: &Path, keys: &[ssh_key::PublicKey]) -> OwnFile {
        let mut bytes = Vec::new();
        for k in keys {
            if let Ok(line) = openssh_line(k) {
                bytes.extend_from_slice(line.as_bytes());
                bytes.push(b'\n');
            }
        }
        OwnFile::of_bytes(kind, path, bytes)
    }

    /// The public keys of a text file of keys, one per line (type, base64,
    /// an optional comment, split on any whitespace), `#` comments and
    /// blank lines skipped, as sshd reads it. A certificate's line revokes
    /// its key, and trusts nothing as a CA (sshd wants the key's own type
    /// there). A line that is not a key is an error: sshd fails on it too.
    fn keys(&self) -> Result<Vec<ssh_key::PublicKey>, String> {
        let (keys, bad) = self.scan();
        match bad {
            Some(why) => Err(why),
            None => Ok(keys),
        }
    }

    /// The keys of the lines of a text file that can be read (those of a
    /// KRL: none).
    pub fn readable_keys(&self) -> Vec<ssh_key::PublicKey> {
        if self.is_krl() {
            return Vec::new();
        }
        self.scan().0
    }

    /// The keys of the lines that can be read, and what is wrong with the
    /// first that cannot. Each line is decoded on its own: a comment in
    /// another encoding is as harmless as it is to sshd.
    fn scan(&self) -> (Vec<ssh_key::PublicKey>, Option<String>) {
        let mut out = Vec::new();
        let mut bad = None;
        for (i, raw) in self.bytes.split(|b| *b == b'\n').enumerate() {
            let line = String::from_utf8_lossy(raw);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().take(2).collect();
            let line = fields.join(" ");
            match ssh_key::PublicKey::from_openssh(&line) {
                Ok(k) => out.push(k),
                Err(e) => match ssh_key::Certificate::from_openssh(&line) {
                    Ok(c) if self.kind == OwnKind::RevokedKeys => {
                        out.push(ssh_key::PublicKey::new(c.public_key().clone(), ""))
                    }
                    Ok(_) => {}
                    Err(_) => {
                        bad.get_or_insert_with(|| {
                            format!("has a line that is not a public key, line {} ({e})", i + 1)
                        });
                    }
                },
            }
        }
        (out, bad)
    }
}

/// The host's own `TrustedUserCAKeys` and `RevokedKeys` files, which
/// gatepass's lines replace in sshd's config (`config::Paths`): their keys
/// are merged into user_ca.pub and revoked.krl, so that what the host
/// trusted and revoked before gatepass stays so.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnFiles {
    pub user_ca_keys: Option<OwnFile>,
    pub revoked_keys: Option<OwnFile>,
    /// What could not be read as it is now, and what is merged instead
    /// (listed with the entries left out of the apply).
    pub problems: Vec<String>,
}

impl OwnFiles {
    /// A digest of what is merged (kinds, paths and contents): when it
    /// differs from the one of the last apply, a change of gatepass's two
    /// files is the host's own doing, not drift. None when nothing is.
    pub fn digest(&self) -> Option<String> {
        use sha2::{Digest, Sha256};
        if self.user_ca_keys.is_none() && self.revoked_keys.is_none() {
            return None;
        }
        let mut h = Sha256::new();
        for f in [&self.user_ca_keys, &self.revoked_keys] {
            match f {
                None => h.update([0]),
                Some(f) => {
                    h.update([1]);
                    let path = f.path.as_os_str().as_encoded_bytes();
                    h.update((path.len() as u64).to_be_bytes());
                    h.update(path);
                    h.update((f.bytes.len() as u64).to_be_bytes());
                    h.update(&f.bytes);
                    for k in &f.also {
                        h.update(k.to_bytes().unwrap_or_default());
                    }
                }
            }
        }
        Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Adds the host's own CA keys to `r.user_ca` (after the server's,
    /// each key once). Not in mapped mode: there gatepass's principal
    /// mappings decide which accounts a certificate of any trusted CA logs
    /// in to, so the host's CA would gain the mappings' accounts.
    fn merge_user_ca(&self, r: &mut Rendered, mapped: bool) -> Result<(), ApplyError> {
        let Some(own) = &self.user_ca_keys else {
            return Ok(());
        };
        if mapped {
            r.rejected.push(format!(
                "the host's own TrustedUserCAKeys file {} is not merged in mapped mode: \
                 gatepass's principal mappings would decide which accounts its certificates log in to",
                own.path.display()
            ));
            return Ok(());
        }
        let mut seen: BTreeSet<String> = r.user_ca.lines().map(String::from).collect();
        for key in own.keys().map_err(ApplyError::OwnFile)? {
            let line = openssh_line(&key)?;
            if seen.insert(line.clone()) {
                r.user_ca.push_str(&line);
                r.user_ca.push('\n');
            }
        }
        Ok(())
    }

    /// Adds the host's own revocations to `r.krl`: a KRL's sections, or a
    /// text file's keys as an explicit-keys section.
    fn merge_krl(&self, r: &mut Rendered) -> Result<(), ApplyError> {
        let Some(own) = &self.revoked_keys else {
            return Ok(());
        };
        let cannot = |e: gatepass_krl::ParseError| {
            ApplyError::OwnFile(format!(
                "RevokedKeys file {} cannot be merged: {e}",
                own.path.display()
            ))
        };
        let mut keys = own.also.clone();
        if own.is_krl() {
            r.krl = gatepass_krl::merge(&r.krl, &gatepass_krl::Extra::Krl(&own.bytes))
                .map_err(cannot)?;
        } else {
            keys.extend(own.keys().map_err(ApplyError::OwnFile)?);
        }
        let mut blobs = Vec::new();
        for key in keys {
            blobs.push(
                key.to_bytes().map_err(|e| {
                    ApplyError::OwnFile(format!("revoked key cannot be encoded: {e}"))
                })?,
            );
        }
        blobs.sort();
        blobs.dedup();
        let merged = gatepass_krl::merge(&r.krl, &gatepass_krl::Extra::Keys(&blobs));
        r.krl = merged.map_err(|e| {
            ApplyError::OwnFile(format!(
                "RevokedKeys file {} cannot be merged: {e}",
                own.path.display()
            ))
        })?;
        Ok(())
    }
}

/// Checks and formats a state. Bad entries (a user name, principal, key or
/// option that could break out of its place) are left out and listed in
/// `rejected`; a bad CA key or KRL rejects the whole state, since applying
/// half of it could lock everybody out or let revoked keys in.
pub fn render(state: &HostState, now: i64, form: TimeForm) -> Result<Rendered, ApplyError> {
    render_with(state, now, form, &OwnFiles::default())
}

/// [`render`], with the host's own files merged into the CA keys and the
/// KRL.
pub fn render_with(
    state: &HostState,
    now: i64,
    form: TimeForm,
    own: &OwnFiles,
) -> Result<Rendered, ApplyError> {
    let mut r = Rendered {
        form,
        own_digest: own.digest(),
        ..Rendered::default()
    };
    for line in state.user_ca_keys.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = ssh_key::PublicKey::from_openssh(line)
            .map_err(|e| ApplyError::BadState(format!("user CA key {line:?}: {e}")))?;
        r.user_ca.push_str(&openssh_line(&key)?);
        r.user_ca.push('\n');
    }
    r.krl = if state.krl.trim().is_empty() {
        EMPTY_KRL.to_vec()
    } else {
        let krl = base64::engine::general_purpose::STANDARD
            .decode(state.krl.trim())
            .map_err(|e| ApplyError::BadState(format!("KRL is not base64: {e}")))?;
        // Read whole, as sshd will: a KRL sshd cannot load makes it refuse
        // every certificate (or fail at reload), so such a KRL is never
        // installed and the one in place stays.
        gatepass_krl::parse(&krl)
            .map_err(|e| ApplyError::BadState(format!("the KRL cannot be read: {e}")))?;
        krl
    };
    r.rejected.extend(own.problems.iter().cloned());
    own.merge_user_ca(&mut r, state.principals.is_some())?;
    own.merge_krl(&mut r)?;
    if let Some(map) = &state.principals {
        let mut files = BTreeMap::new();
        for (user, principals) in map {
            if let Err(e) = check_user(user) {
                r.rejected.push(e);
                continue;
            }
            let mut seen = BTreeSet::new();
            let mut text = String::new();
            for p in principals {
                match check_principal(p) {
                    Err(e) => r.rejected.push(format!("user {user}: {e}")),
                    Ok(()) if seen.insert(p.as_str()) => {
                        text.push_str(p);
                        text.push('\n');
                    }
                    Ok(()) => {}
                }
            }
            if !text.is_empty() {
                files.insert(user.clone(), text);
            }
        }
        r.principals = Some(files);
    }
    let mut keys: Vec<&DynamicKey> = state.dynamic_keys.iter().collect();
    keys.sort_by(|a, b| (&a.user, &a.lease_id).cmp(&(&b.user, &b.lease_id)));
    let mut leases = BTreeSet::new();
    for k in keys {
        if k.expires <= now {
            continue;
        }
        let line = match key_line(k, form) {
            Ok(l) => l,
            Err(e) => {
                r.rejected.push(format!("lease {:?}: {e}", k.lease_id));
                continue;
            }
        };
        if !leases.insert(k.lease_id.clone()) {
            r.rejected
                .push(format!("lease {:?}: listed twice", k.lease_id));
            continue;
        }
        let file = r.authorized_keys.entry(k.user.clone()).or_default();
        file.push_str(&line);
        file.push('\n');
        r.installed.push(k.lease_id.clone());
        r.next_expiry = Some(r.next_expiry.map_or(k.expires, |n| n.min(k.expires)));
    }
    Ok(r)
}

fn openssh_line(key: &ssh_key::PublicKey) -> Result<String, ApplyError> {
    let mut key = key.clone();
    key.set_comment("");
    key.to_openssh()
        .map(|s| s.trim().to_string())
        .map_err(|e| ApplyError::BadState(format!("cannot encode key: {e}")))
}

/// How sshd reads the times hostd writes (`expiry-time`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeForm {
    /// `YYYYMMDDHHMMSSZ`, UTC: OpenSSH 9.1 and later, and what every hostd
    /// wrote before it asked sshd its version.
    #[default]
    Utc,
    /// `YYYYMMDDHHMMSS` in the host's time zone: every OpenSSH. Before 9.1
    /// sshd has no other form, and it ignores a line whose time has a `Z`
    /// (the key then never works).
    Local,
}

impl TimeForm {
    /// The form for an sshd of this OpenSSH version; local time when the
    /// version is not known, since every sshd reads that.
    pub fn for_version(version: Option<(u32, u32)>) -> TimeForm {
        match version {
            Some(v) if v >= (9, 1) => TimeForm::Utc,
            _ => TimeForm::Local,
        }
    }
}

/// `expiry-time="…"[,options] <key> <lease>`, the time in `form`.
pub fn key_line(k: &DynamicKey, form: TimeForm) -> Result<String, String> {
    check_user(&k.user)?;
    check_word("lease id", &k.lease_id)?;
    let key = ssh_key::PublicKey::from_openssh(k.public_key.trim())
        .map_err(|e| format!("public key: {e}"))?;
    let key = openssh_line(&key).map_err(|e| e.to_string())?;
    let opts = k.options.trim();
    check_options(opts)?;
    let time = match form {
        TimeForm::Utc => expiry_time(k.expires),
        TimeForm::Local => expiry_local(k.expires, local_offset),
    };
    let mut line = format!("expiry-time=\"{time}\"");
    if !opts.is_empty() {
        line.push(',');
        line.push_str(opts);
    }
    Ok(format!("{line} {key} {}", k.lease_id))
}

/// `YYYYMMDDHHMMSSZ` in UTC.
pub fn expiry_time(unix: i64) -> String {
    let mut t = civil(unix);
    t.push('Z');
    t
}

/// The zone's offsets are looked at every 15 days over the year around a
/// time: every stretch of standard time, and of summer time, is longer.
const STEP: i64 = 15 * 86_400;
const STEPS: i64 = 12;

/// `YYYYMMDDHHMMSS` that sshd before OpenSSH 9.1 reads as `unix` or a
/// little before it, never after. That sshd reads a time with `mktime` as
/// standard time (its `tm_isdst` is 0), so in summer a time written in
/// summer time would expire an hour late. The time is written with the
/// smallest offset the zone has in the year around it, its standard
/// offset in zones with summer time: exact there, early by the difference
/// in the few zones whose standard time is their summer one. hostd also
/// removes the line at the lease's end itself.
/// `offset_at`: seconds east of UTC in the host's zone at a Unix time.
pub fn expiry_local(unix: i64, offset_at: impl Fn(i64) -> i64) -> String {
    let offset = (-STEPS..=STEPS)
        .map(|k| offset_at(unix.saturating_add(k * STEP)))
        .min()
        .unwrap_or(0);
    civil(unix.saturating_add(offset))
}

/// Seconds east of UTC in the host's time zone (TZ, else /etc/localtime,
/// as sshd's libc reads it) at `unix`; 0 when it cannot be told.
fn local_offset(unix: i64) -> i64 {
    use chrono::{Offset, TimeZone};
    match chrono::Local.timestamp_opt(unix, 0) {
        chrono::LocalResult::Single(t) => i64::from(t.offset().fix().local_minus_utc()),
        _ => 0,
    }
}

/// `YYYYMMDDHHMMSS` of a Unix time, read as UTC.
fn civil(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) if unix > 0 => "99991231235959".into(),
        Err(_) => "19700101000000".into(),
    }
}

fn bad_char(c: char) -> bool {
    c.is_control() || c.is_whitespace()
}

/// Longest local user name taken: Linux's (`useradd`, utmp) 32 bytes.
/// The name is a file name here, and its file is written through a
/// temporary one whose name is longer: a name the file system refuses
/// would fail the whole apply, KRL and all, rather than this one entry.
pub const MAX_USER: usize = 32;

/// A local user name, used as a file name and matched by sshd's `%u`.
pub fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() || user.len() > MAX_USER {
        return Err(format!(
            "user name {user:?}: empty or longer than {MAX_USER} bytes"
        ));
    }
    if user.starts_with('.') || user.chars().any(|c| bad_char(c) || matches!(c, '/' | ',')) {
        return Err(format!(
            "user name {user:?}: no whitespace, control characters, '/', ',' or leading '.'"
        ));
    }
    Ok(())
}

/// A line of an AuthorizedPrincipalsFile: with no whitespace it cannot
/// carry options; '#' would make it a comment.
pub fn check_principal(p: &str) -> Result<(), String> {
    if p.is_empty()
        || p.len() > 256
        || p.starts_with('.')
        || p.starts_with('#')
        || p.chars()
            .any(|c| bad_char(c) || matches!(c, '/' | ',' | '"'))
    {
        return Err(format!(
            "principal {p:?}: empty, too long, or has whitespace, control characters, '/', ',', '\"' or a leading '.' or '#'"
        ));
    }
    Ok(())
}

fn check_word(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 256 || s.chars().any(bad_char) {
        return Err(format!("{what} {s:?}: empty, too long or has whitespace"));
    }
    Ok(())
}

/// authorized_keys options: comma-separated `name` or `name="value"`, names
/// from [`ALLOWED_OPTIONS`], quotes balanced, no control characters anywhere
/// and no whitespace or backslash outside quotes. Quotes are read as sshd
/// reads them (`opt_dequote`, `sshkey_advance_past_options`): a backslash
/// followed by `"` is an escaped quote, and any other backslash is itself,
/// so `\\"` is a backslash and an escaped quote, not an escaped backslash
/// and the end of the value. Reading it any other way would let a value
/// end, for sshd, where this check thinks it goes on, and options this
/// check never saw (`cert-authority`) follow.
pub fn check_options(opts: &str) -> Result<(), String> {
    if opts.is_empty() {
        return Ok(());
    }
    if opts.chars().any(char::is_control) {
        return Err("options: control characters".into());
    }
    let bytes = opts.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if !quoted => {
                return Err(format!("options {opts:?}: a backslash outside quotes"))
            }
            // sshd's one escape: skip both.
            b'\\' if bytes.get(i + 1) == Some(&b'"') => i += 1,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                parts.push(&opts[start..i]);
                start = i + 1;
            }
            b if b.is_ascii_whitespace() && !quoted => {
                return Err(format!("options {opts:?}: whitespace outside quotes"))
            }
            _ => {}
        }
        i += 1;
    }
    if quoted {
        return Err(format!("options {opts:?}: unbalanced quotes"));
    }
    parts.push(&opts[start..]);
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (part, None),
        };
        if !ALLOWED_OPTIONS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!("option {name:?} is not allowed"));
        }
        if let Some(v) = value {
            let inner = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .ok_or_else(|| format!("option {name}: the value must be in double quotes"))?;
            // Any quote inside must be escaped, as sshd reads an escape:
            // the character before it is a backslash.
            let mut prev = '\0';
            for c in inner.chars() {
                if c == '"' && prev != '\\' {
                    return Err(format!("option {name}: stray quote in the value"));
                }
                prev = c;
            }
            // A value ending in a backslash would escape its closing quote.
            if inner.ends_with('\\') {
                return Err(format!("option {name}: the value ends in a backslash"));
            }
        }
    }
    Ok(())
}

/// Every file change that applying `r` makes, CA and KRL first.
pub fn plan(layout: &Layout, r: &Rendered) -> Result<Vec<Change>, FsError> {
    let mode = files::PUBLIC_FILE;
    let mut out = Vec::new();
    out.extend(Change::compute(&layout.krl(), Some(r.krl.clone()), mode)?);
    out.extend(Change::compute(
        &layout.user_ca(),
        Some(r.user_ca.clone().into_bytes()),
        mode,
    )?);
    let empty = BTreeMap::new();
    let principals = r.principals.as_ref().unwrap_or(&empty);
    for (dir, wanted) in [
        (layout.principals_dir(), principals),
        (layout.authorized_keys_dir(), &r.authorized_keys),
    ] {
        for (user, text) in wanted {
            out.extend(Change::compute(
                &dir.join(user),
                Some(text.clone().into_bytes()),
                mode,
            )?);
        }
        for name in files::list_files(&dir)? {
            if !wanted.contains_key(&name) {
                out.extend(Change::compute(&dir.join(&name), None, mode)?);
            }
        }
    }
    Ok(out)
}

/// Makes the managed folders and writes `r`; returns the changes made.
pub fn apply(layout: &Layout, r: &Rendered) -> Result<Vec<Change>, FsError> {
    ensure_dirs(layout)?;
    let changes = plan(layout, r)?;
    files::apply_all(&changes)?;
    Ok(changes)
}

/// The managed folder and its subfolders, 0755, without leftover temp files.
pub fn ensure_dirs(layout: &Layout) -> Result<(), FsError> {
    for d in [
        layout.dir.clone(),
        layout.principals_dir(),
        layout.authorized_keys_dir(),
    ] {
        files::ensure_dir(&d, files::DIR)?;
        files::clean_temp_files(&d)?;
    }
    Ok(())
}

/// The removal of every file gatepass wrote into the managed folder.
/// The index of the desired state last written into gatepass's folder
/// (noted before its files are written), in that folder.
pub const FILES_INDEX: &str = ".index";

pub fn removal_plan(layout: &Layout) -> Result<Vec<Change>, FsError> {
    let mut out = Vec::new();
    for dir in [layout.principals_dir(), layout.authorized_keys_dir()] {
        for name in files::list_files(&dir)? {
            out.extend(Change::compute(&dir.join(name), None, files::PUBLIC_FILE)?);
        }
    }
    for name in files::list_files(&layout.dir)? {
        if name == "user_ca.pub"
            || name == "revoked.krl"
            || name == FILES_INDEX
            || name.ends_with("-cert.pub")
        {
            out.extend(Change::compute(
                &layout.dir.join(name),
                None,
                files::PUBLIC_FILE,
            )?);
        }
    }
    Ok(out)
}

/// Removes every file gatepass wrote into the managed folder, and the
/// folders when they end up empty (someone else's files stay).
pub fn remove_all(layout: &Layout) -> Result<Vec<Change>, FsError> {
    let plan = removal_plan(layout)?;
    for c in &plan {
        c.apply()?;
    }
    for dir in [
        layout.principals_dir(),
        layout.authorized_keys_dir(),
        layout.dir.clone(),
    ] {
        files::clean_temp_files(&dir)?;
        files::remove_empty_dir(&dir)?;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB8ht8Z3j6yDWPBHQtOp/R9rjWvfU4uWgMImASHkoP1A";

    fn dk(user: &str, lease: &str, expires: i64, options: &str) -> DynamicKey {
        DynamicKey {
            user: user.into(),
            public_key: format!("{KEY} some comment"),
            options: options.into(),
            expires,
            lease_id: lease.into(),
        }
    }

    #[test]
    fn empty_krl_is_what_the_protocol_says() {
        assert_eq!(&EMPTY_KRL[..8], gatepass_krl::KRL_MAGIC);
        assert_eq!(EMPTY_KRL.len(), 8 + 4 + 8 + 8 + 8 + 4 + 4);
        let parsed = gatepass_krl::parse(&EMPTY_KRL).unwrap();
        assert!(parsed.certs.is_empty() && parsed.keys.is_empty());
    }

    #[test]
    fn expiry_is_utc_with_z() {
        assert_eq!(expiry_time(0), "19700101000000Z");
        assert_eq!(expiry_time(1_700_000_000), "20231114221320Z");
    }

    #[test]
    fn before_openssh_9_1_expiry_is_local_standard_time() {
        assert_eq!(TimeForm::for_version(Some((9, 2))), TimeForm::Utc);
        assert_eq!(TimeForm::for_version(Some((9, 1))), TimeForm::Utc);
        assert_eq!(TimeForm::for_version(Some((10, 0))), TimeForm::Utc);
        assert_eq!(TimeForm::for_version(Some((9, 0))), TimeForm::Local);
        assert_eq!(TimeForm::for_version(Some((8, 9))), TimeForm::Local);
        assert_eq!(TimeForm::for_version(None), TimeForm::Local);
        // A host on UTC: the same time, without the Z.
        assert_eq!(expiry_local(1_700_000_000, |_| 0), "20231114221320");
        // Central Europe: +1 h in winter, +2 h in summer (from the last
        // Sunday of March to the last of October, roughly).
        let cet = |t: i64| {
            let day_of_year = t.rem_euclid(365 * 86_400) / 86_400;
            if (88..300).contains(&day_of_year) {
                7_200
            } else {
                3_600
            }
        };
        // 2023-11-14 22:13:20 UTC, winter: 23:13:20 local.
        assert_eq!(expiry_local(1_700_000_000, cet), "20231114231320");
        // 2023-07-01 12:00:00 UTC, summer: written as standard time,
        // 13:00:00, which sshd's mktime (not summer time) reads back as
        // 12:00 UTC. Summer time, 14:00, would expire an hour late.
        assert_eq!(expiry_local(1_688_212_800, cet), "20230701130000");
        // 2027-04-12 12:00 UTC: summer time then, and half a year before
        // and after it too (summer time is seven months long); still
        // standard time, 13:00.
        let berlin = |t: i64| {
            // Summer time from 2026-03-29 to 2026-10-25, from 2027-03-28
            // to 2027-10-31 (UTC days).
            let summer = [
                (1_774_742_400, 1_792_886_400),
                (1_806_192_000, 1_824_940_800),
            ];
            if summer.iter().any(|&(a, b)| (a..b).contains(&t)) {
                7_200
            } else {
                3_600
            }
        };
        assert_eq!(berlin(1_807_531_200 - 182 * 86_400), 7_200);
        assert_eq!(berlin(1_807_531_200 + 182 * 86_400), 7_200);
        assert_eq!(expiry_local(1_807_531_200, berlin), "20270412130000");
        // Where standard time is the summer one (Irish time, +1 h, and
        // GMT in winter as its exception), the line expires early, never
        // late.
        let dublin = |t: i64| if cet(t) == 7_200 { 3_600 } else { 0 };
        assert_eq!(expiry_local(1_688_212_800, dublin), "20230701120000");
        // A line for an older sshd.
        let k = dk("bob", "ssh/creds/b/1", 1_700_000_000, "no-pty");
        let line = key_line(&k, TimeForm::Local).unwrap();
        assert!(line.starts_with("expiry-time=\"2023111"), "{line}");
        assert!(!line.contains("Z\""), "{line}");
    }

    #[test]
    fn renders_keys_sorted_with_expiry_and_comment() {
        let state = HostState {
            index: 3,
            user_ca_keys: format!("{KEY} ca\n\n"),
            krl: String::new(),
            principals: None,
            dynamic_keys: vec![
                dk(
                    "bob",
                    "ssh/creds/b/2",
                    2_000,
                    "no-pty,command=\"echo a, b\"",
                ),
                dk("bob", "ssh/creds/b/1", 3_000, ""),
                dk("old", "ssh/creds/o/1", 500, ""),
            ],
        };
        let r = render(&state, 1_000, TimeForm::Utc).unwrap();
        assert_eq!(r.krl, EMPTY_KRL);
        assert_eq!(r.user_ca, format!("{KEY}\n"));
        let bob = &r.authorized_keys["bob"];
        let lines: Vec<&str> = bob.lines().collect();
        assert_eq!(
            lines[0],
            format!("expiry-time=\"19700101005000Z\" {KEY} ssh/creds/b/1")
        );
        assert_eq!(
            lines[1],
            format!(
                "expiry-time=\"19700101003320Z\",no-pty,command=\"echo a, b\" {KEY} ssh/creds/b/2"
            )
        );
        assert!(
            !r.authorized_keys.contains_key("old"),
            "expired keys are dropped"
        );
        assert_eq!(r.next_expiry, Some(2_000));
        assert_eq!(r.installed.len(), 2);
    }

    #[test]
    fn injection_is_rejected() {
        let bad = [
            dk("ro\not", "l1", 9_999, ""),
            dk("../etc", "l2", 9_999, ""),
            dk(".hidden", "l3", 9_999, ""),
            dk("a,b", "l4", 9_999, ""),
            dk("root", "l5 x", 9_999, ""),
            dk("root", "l6", 9_999, "cert-authority"),
            dk("root", "l7", 9_999, "command=\"x\nssh-rsa AAAA\""),
            dk("root", "l8", 9_999, "command=\"unbalanced"),
            dk("root", "l9", 9_999, "no-pty command=\"x\""),
            dk("root", "l10", 9_999, "expiry-time=\"99990101\""),
            dk("root", "l11", 9_999, "command=\"a\"b\""),
            DynamicKey {
                public_key: "ssh-ed25519 AAAA-not-base64".into(),
                ..dk("root", "l12", 9_999, "")
            },
        ];
        let state = HostState {
            dynamic_keys: bad.to_vec(),
            ..Default::default()
        };
        let r = render(&state, 0, TimeForm::Utc).unwrap();
        assert!(r.authorized_keys.is_empty(), "{:?}", r.authorized_keys);
        assert_eq!(r.rejected.len(), bad.len(), "{:?}", r.rejected);
        assert!(check_options("from=\"10.0.0.0/8\",command=\"echo \\\"hi\\\"\"").is_ok());
        // sshd reads `\\"` as a backslash and an escaped quote: the value
        // goes on to the last quote, and `cert-authority` after it is an
        // option of its own, which is not allowed.
        let smuggled = r#"environment="A=\\",no-pty,command=",cert-authority"#;
        let err = check_options(smuggled).unwrap_err();
        assert!(err.contains("cert-authority"), "{err}");
        // A backslash that escapes nothing is itself, inside quotes.
        assert!(check_options(r#"command="printf a\\tb""#).is_ok());
        assert!(check_options(r#"no-pty\",cert-authority"#).is_err());
        assert!(check_options(r#"command="a\""#).is_err());
    }

    #[test]
    fn principals_are_checked() {
        let mut map = BTreeMap::new();
        map.insert(
            "alice".to_string(),
            vec![
                "alice".into(),
                "ops team".into(),
                "#x".into(),
                "alice".into(),
            ],
        );
        map.insert("bad/user".to_string(), vec!["x".into()]);
        let state = HostState {
            principals: Some(map),
            ..Default::default()
        };
        let r = render(&state, 0, TimeForm::Utc).unwrap();
        let p = r.principals.unwrap();
        assert_eq!(p["alice"], "alice\n");
        assert_eq!(p.len(), 1);
        assert_eq!(r.rejected.len(), 3, "{:?}", r.rejected);
    }

    #[test]
    fn bad_ca_or_krl_rejects_the_state() {
        let s = HostState {
            user_ca_keys: "not a key".into(),
            ..Default::default()
        };
        assert!(render(&s, 0, TimeForm::Utc).is_err());
        let s = HostState {
            krl: "!!!".into(),
            ..Default::default()
        };
        assert!(render(&s, 0, TimeForm::Utc).is_err());
        let s = HostState {
            krl: base64::engine::general_purpose::STANDARD
                .encode(b"not a krl at all, but long enough to pass len"),
            ..Default::default()
        };
        assert!(render(&s, 0, TimeForm::Utc).is_err());
        // The right magic and header, then a section OpenSSH does not know:
        // sshd would refuse to load it.
        let mut krl = EMPTY_KRL.to_vec();
        krl.extend_from_slice(&[9, 0, 0, 0, 0]);
        let s = HostState {
            krl: base64::engine::general_purpose::STANDARD.encode(&krl),
            ..Default::default()
        };
        match render(&s, 0, TimeForm::Utc) {
            Err(ApplyError::BadState(e)) => assert!(
                e.contains("the KRL cannot be read: unsupported KRL section type 9"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        // A truncated one neither.
        let s = HostState {
            krl: base64::engine::general_purpose::STANDARD.encode(&EMPTY_KRL[..43]),
            ..Default::default()
        };
        assert!(render(&s, 0, TimeForm::Utc).is_err());
    }

    /// The host's own files in `dir`: `ca` as its TrustedUserCAKeys and
    /// `revoked` as its RevokedKeys (None: no such file), read and checked.
    fn own(
        dir: &Path,
        ca: Option<&[u8]>,
        revoked: Option<&[u8]>,
    ) -> (Result<OwnFile, String>, Result<OwnFile, String>) {
        let (ca_path, revoked_path) = (dir.join("ca.pub"), dir.join("revoked"));
        for (p, b) in [(&ca_path, ca), (&revoked_path, revoked)] {
            let _ = std::fs::remove_file(p);
            if let Some(b) = b {
                std::fs::write(p, b).unwrap();
            }
        }
        (
            OwnFile::read(OwnKind::UserCaKeys, &ca_path),
            OwnFile::read(OwnKind::RevokedKeys, &revoked_path),
        )
    }

    fn both(files: (Result<OwnFile, String>, Result<OwnFile, String>)) -> OwnFiles {
        OwnFiles {
            user_ca_keys: Some(files.0.unwrap()),
            revoked_keys: Some(files.1.unwrap()),
            problems: Vec::new(),
        }
    }

    #[test]
    fn the_hosts_own_files_are_merged_as_sshd_reads_them() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let other =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE6UKKpDN5zr5Blb1uUhH6XDr6XlaOR1VBhLMpUSH7FS";
        let state = HostState {
            user_ca_keys: format!("{KEY}\n"),
            ..Default::default()
        };
        let plain = render(&state, 0, TimeForm::Utc).unwrap();
        assert_eq!(plain.own_digest, None);

        // CA keys: the server's first, then the host's, each once; fields
        // split by tabs or runs of spaces, as sshd splits them.
        let key_only = |l: &str| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        let ca_text = format!(
            "# the host's CAs\n{KEY} dup\n\n{}\n",
            other.replacen(' ', "\t  ", 1)
        );
        let files = both(own(
            d,
            Some(ca_text.as_bytes()),
            Some(b"# nothing revoked\n"),
        ));
        let r = render_with(&state, 0, TimeForm::Utc, &files).unwrap();
        assert_eq!(r.user_ca, format!("{}\n{other}\n", key_only(KEY)));
        assert_eq!(r.krl, EMPTY_KRL.to_vec(), "an empty list adds no section");
        assert!(r.own_digest.is_some());

        // In mapped mode the host's CA is left out, and that is said:
        // gatepass's mappings would decide its certificates' accounts.
        let mapped = HostState {
            principals: Some(BTreeMap::new()),
            ..state.clone()
        };
        let r = render_with(&mapped, 0, TimeForm::Utc, &files).unwrap();
        assert_eq!(r.user_ca, format!("{}\n", key_only(KEY)));
        assert!(
            r.rejected
                .iter()
                .any(|e| e.contains("not merged in mapped mode")),
            "{:?}",
            r.rejected
        );

        // A text list of keys becomes an explicit-keys section.
        let files = both(own(d, None, Some(format!("{other} comment\n").as_bytes())));
        let r = render_with(&state, 0, TimeForm::Utc, &files).unwrap();
        let parsed = gatepass_krl::parse(&r.krl).unwrap();
        let other_key = ssh_key::PublicKey::from_openssh(other).unwrap();
        assert!(parsed.revokes_key(other_key.key_data()));
        assert!(!parsed.revokes_key(ssh_key::PublicKey::from_openssh(KEY).unwrap().key_data()));
        assert_eq!(
            r.user_ca,
            format!("{}\n", key_only(KEY)),
            "a missing CA file adds nothing"
        );

        // A KRL's sections follow the server's.
        let files = both(own(d, None, Some(&r.krl)));
        let again = render_with(&state, 0, TimeForm::Utc, &files).unwrap();
        assert!(gatepass_krl::parse(&again.krl)
            .unwrap()
            .revokes_key(other_key.key_data()));
        assert_ne!(
            again.own_digest, r.own_digest,
            "the digest follows the contents"
        );

        // A comment in another encoding is harmless, as to sshd.
        let files = both(own(
            d,
            None,
            Some(&[&b"# caf\xe9\n"[..], other.as_bytes(), b"\n"].concat()),
        ));
        let r = render_with(&state, 0, TimeForm::Utc, &files).unwrap();
        assert!(gatepass_krl::parse(&r.krl)
            .unwrap()
            .revokes_key(other_key.key_data()));

        // Keys besides the file's (`also`, the readable lines of a broken
        // list) are revoked with it.
        let mut files = both(own(d, None, Some(b"# nothing\n")));
        if let Some(f) = files.revoked_keys.as_mut() {
            f.also = vec![other_key.clone()];
        }
        let r = render_with(&state, 0, TimeForm::Utc, &files).unwrap();
        assert!(gatepass_krl::parse(&r.krl)
            .unwrap()
            .revokes_key(other_key.key_data()));
        assert_ne!(
            files.digest(),
            both(own(d, None, Some(b"# nothing\n"))).digest()
        );

        // What sshd cannot read either is refused, saying where.
        for (ca, revoked, says) in [
            (
                Some(&b"garbage\n"[..]),
                Some(&b""[..]),
                "not a public key, line 1",
            ),
            (
                None,
                Some(&b"# one\ngarbage\n"[..]),
                "not a public key, line 2",
            ),
            (None, Some(&EMPTY_KRL[..43]), "is a KRL hostd cannot merge"),
            (
                None,
                None,
                "is missing (sshd refuses every key while it is)",
            ),
        ] {
            let (c, r) = own(d, ca, revoked);
            let e = c.and(r).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn a_user_name_too_long_for_a_file_is_rejected_alone_and_the_rest_applied() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(&tmp.path().join("gatepass"));
        let long = "a".repeat(256);
        let state = HostState {
            user_ca_keys: format!("{KEY}\n"),
            dynamic_keys: vec![
                dk(&long, "l1", 9_999, ""),
                dk(&"b".repeat(240), "l2", 9_999, ""),
                dk("bob", "l3", 9_999, ""),
            ],
            principals: Some(BTreeMap::from([(long, vec!["x".to_string()])])),
            ..Default::default()
        };
        let r = render(&state, 0, TimeForm::Utc).unwrap();
        assert_eq!(r.rejected.len(), 3, "{:?}", r.rejected);
        apply(&layout, &r).unwrap();
        assert!(layout.krl().exists());
        assert!(layout.authorized_keys_dir().join("bob").exists());
    }

    #[test]
    fn apply_writes_and_removes() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(&tmp.path().join("gatepass"));
        let mut state = HostState {
            user_ca_keys: format!("{KEY}\n"),
            dynamic_keys: vec![dk("bob", "l1", 9_999, ""), dk("carol", "l2", 9_999, "")],
            principals: Some(BTreeMap::from([(
                "bob".to_string(),
                vec!["bob".to_string()],
            )])),
            ..Default::default()
        };
        let r = render(&state, 0, TimeForm::Utc).unwrap();
        let first = apply(&layout, &r).unwrap();
        assert_eq!(first.len(), 5, "{first:?}");
        assert!(
            apply(&layout, &r).unwrap().is_empty(),
            "second apply writes nothing"
        );
        state.dynamic_keys.pop();
        state.principals = None;
        let changes = apply(&layout, &render(&state, 0, TimeForm::Utc).unwrap()).unwrap();
        let removed: Vec<_> = changes.iter().filter(|c| c.new.is_none()).collect();
        assert_eq!(removed.len(), 2, "{changes:?}");
        assert!(!layout.authorized_keys_dir().join("carol").exists());
        assert!(!layout.principals_dir().join("bob").exists());
        // Expiry alone removes bob's key.
        let changes = apply(&layout, &render(&state, 10_000, TimeForm::Utc).unwrap()).unwrap();
        assert_eq!(changes.len(), 1);
        assert!(!layout.authorized_keys_dir().join("bob").exists());
        let removed = remove_all(&layout).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!layout.dir.exists());
    }
}
