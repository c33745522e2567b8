//! The audit log: JSON lines in a file, hash-chained so that an edited,
//! deleted or reordered line is detected, with secrets only present as HMACs.
//!
//! Each line is the event object plus `seq` (1-based, continuing), `prev`
//! (the previous line's `mac`, or 64 zeros at the very start) and `mac`
//! (HMAC-SHA256 of the line's serialization without `mac`). The writer puts
//! `mac` last, so the verifier can MAC the exact bytes that were written
//! instead of re-serializing a parsed value (which could differ, e.g. in how
//! a float is printed). Deleting lines at the end of the file cannot be seen
//! from the file alone; that is why the caller also stores every line in the
//! database.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde_json::{Map, Value};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// `prev` of the first line of a new chain.
const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Key material for the audit device. The 32 bytes given by the caller are
/// only used to derive two subkeys: one for secrets and one for the chain.
/// Secret HMACs are computed on client-chosen strings and then written to the
/// log; with a single key, a client could submit a forged line body as a
/// "secret" and get its valid chain MAC printed for it.
#[cfg_attr(test, derive(Clone))]
pub struct AuditKey {
    /// The two subkeys' HMAC states, keyed once: keying hashes a block for
    /// each of the inner and outer pads, as much work as the HMAC of a
    /// short string itself, and a request writes half a dozen of them. A
    /// keyed state is as secret as its key; both live as long as the
    /// server.
    secret: HmacSha256,
    chain: HmacSha256,
}

impl AuditKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        let root = Zeroizing::new(bytes);
        AuditKey {
            secret: hmac_sha256(&derive(&root, b"gatepass audit v1 secret hmac")),
            chain: hmac_sha256(&derive(&root, b"gatepass audit v1 chain mac")),
        }
    }

    /// `"hmac-sha256:<hex>"` of a secret string, as Vault's audit devices
    /// write it.
    pub fn hmac(&self, s: &str) -> String {
        let mut m = self.secret.clone();
        m.update(s.as_bytes());
        let mut out = String::with_capacity(12 + 64);
        out.push_str("hmac-sha256:");
        push_hex(&mut out, &m.finalize().into_bytes());
        out
    }

    fn chain_mac(&self, body: &[u8]) -> String {
        let mut m = self.chain.clone();
        m.update(body);
        let mut out = String::with_capacity(64);
        push_hex(&mut out, &m.finalize().into_bytes());
        out
    }

    /// Constant-time check of a chain MAC given as 64 hex digits.
    fn chain_verify(&self, body: &[u8], mac_hex: &str) -> bool {
        let Ok(expected) = hex::decode(mac_hex) else {
            return false;
        };
        let mut m = self.chain.clone();
        m.update(body);
        m.verify_slice(&expected).is_ok()
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

/// Appends the lowercase hex of `bytes`. `hex::encode` collects its digits
/// one `char` at a time, which was a visible share of a request's time
/// (each request writes half a dozen HMACs).
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(32) {
        for (d, b) in buf.chunks_exact_mut(2).zip(chunk) {
            d[0] = DIGITS[usize::from(b >> 4)];
            d[1] = DIGITS[usize::from(b & 0x0f)];
        }
        let digits = buf.get(..chunk.len() * 2).unwrap_or_default();
        // Only ASCII digits were written.
        out.push_str(std::str::from_utf8(digits).unwrap_or_default());
    }
}

fn derive(root: &[u8; 32], label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut m = hmac_sha256(root);
    m.update(label);
    let mut out = Zeroizing::new([0u8; 32]);
    for (d, s) in out.iter_mut().zip(m.finalize().into_bytes()) {
        *d = s;
    }
    out
}

/// HMAC-SHA256 keyed with 32 bytes, without a fallible constructor: HMAC pads
/// short keys with zeros to the 64-byte block, so passing the padded block is
/// the same function and `KeyInit::new` cannot fail.
fn hmac_sha256(key: &[u8; 32]) -> HmacSha256 {
    let mut block = hmac::digest::Key::<HmacSha256>::default();
    for (d, s) in block.iter_mut().zip(key.iter()) {
        *d = *s;
    }
    let m = <HmacSha256 as KeyInit>::new(&block);
    block.as_mut_slice().zeroize();
    m
}

/// Replaces every string leaf of `value` by its HMAC, except inside the
/// values of keys named in `keep` (at any depth). Object keys, numbers,
/// bools and null are kept.
pub fn redact(value: &Value, key: &AuditKey, keep: &[&str]) -> Value {
    // Recursion depth is that of the value; values parsed by serde_json are
    // limited to 128 levels.
    match value {
        Value::String(s) => Value::String(key.hmac(s)),
        Value::Array(items) => Value::Array(items.iter().map(|v| redact(v, key, keep)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if keep.contains(&k.as_str()) {
                        v.clone()
                    } else {
                        redact(v, key, keep)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Null | Value::Bool(_) | Value::Number(_) => value.clone(),
    }
}

/// A time window over the audit events, both ends included (Unix seconds,
/// the resolution of the stored copy's `at`). Built only by
/// [`TimeRange::parse`], so `since` is never after `until`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    since: Option<i64>,
    until: Option<i64>,
}

impl TimeRange {
    /// Every event.
    pub const ALL: TimeRange = TimeRange {
        since: None,
        until: None,
    };

    /// A window from two optional texts (empty: open at that end), each
    /// RFC 3339, a browser's `datetime-local` value (`2026-01-31T09:00`,
    /// taken as UTC, the zone every page shows) or Unix seconds.
    pub fn parse(since: &str, until: &str) -> Result<TimeRange> {
        let since = parse_time("since", since)?;
        let until = parse_time("until", until)?;
        if let (Some(s), Some(u)) = (since, until) {
            if s > u {
                return Err(Error::invalid(format!(
                    "since ({}) is after until ({})",
                    crate::clock::rfc3339(s),
                    crate::clock::rfc3339(u)
                )));
            }
        }
        Ok(TimeRange { since, until })
    }

    /// The first second in the window, or the earliest representable.
    pub fn start(&self) -> i64 {
        self.since.unwrap_or(i64::MIN)
    }

    /// The last second in the window, or the latest representable.
    pub fn end(&self) -> i64 {
        self.until.unwrap_or(i64::MAX)
    }
}

/// One end of a [`TimeRange`]; `field` names it in the error.
fn parse_time(field: &str, text: &str) -> Result<Option<i64>> {
    use time::format_description::well_known::Rfc3339;
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if let Ok(n) = t.parse::<i64>() {
        return Ok(Some(n));
    }
    if let Ok(d) = time::OffsetDateTime::parse(t, &Rfc3339) {
        return Ok(Some(d.unix_timestamp()));
    }
    // A browser's datetime-local value, with or without seconds.
    let local = [
        "[year]-[month]-[day]T[hour]:[minute]:[second]",
        "[year]-[month]-[day]T[hour]:[minute]",
    ]
    .iter()
    .filter_map(|f| time::format_description::parse_borrowed::<2>(f).ok())
    .find_map(|f| time::PrimitiveDateTime::parse(t, &f).ok());
    match local {
        Some(d) => Ok(Some(d.assume_utc().unix_timestamp())),
        None => Err(Error::invalid(format!(
            "{field}: {t:?} is not a time; use RFC 3339 (2026-01-31T09:00:00Z), \
             2026-01-31T09:00 (UTC) or Unix seconds"
        ))),
    }
}

/// The chain fields of a line whose MAC verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    pub seq: u64,
    pub prev: String,
    pub mac: String,
}

/// How a line breaks the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Not JSON, not an object, or `seq`/`prev`/`mac` missing or ill-formed.
    Malformed,
    /// The MAC does not match the line (content changed, or wrong key).
    Edited,
    /// The line's predecessor is missing.
    Removed,
    /// Lines are out of order or repeated.
    Reordered,
}

impl fmt::Display for Tamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tamper::Malformed => "malformed",
            Tamper::Edited => "edited",
            Tamper::Removed => "removed",
            Tamper::Reordered => "reordered",
        })
    }
}

/// Result of checking a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyOutcome {
    Ok {
        lines: u64,
    },
    /// Every whole line is intact, but the file ends in an incomplete line
    /// (a write that did not finish: a full disk, a crash). Such a file is
    /// what the server sets aside when it finds one at start.
    TornTail {
        /// Whole lines, all intact.
        lines: u64,
        /// Length of the incomplete last line.
        bytes: u64,
    },
    /// The first bad line, numbered from 1 as lines sit in the file.
    Bad {
        line: u64,
        kind: Tamper,
        detail: String,
    },
}

fn is_mac_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks one line on its own (format and MAC, not its place in the chain),
/// e.g. a line read back from the database.
pub fn verify_line(line: &str, key: &AuditKey) -> std::result::Result<ChainLink, (Tamper, String)> {
    let malformed = |d: &str| (Tamper::Malformed, d.to_string());
    let value: Value =
        serde_json::from_str(line).map_err(|e| (Tamper::Malformed, format!("not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| malformed("not a JSON object"))?;
    let seq = obj
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| malformed("missing or invalid \"seq\""))?;
    let hex_field = |name: &str| {
        obj.get(name)
            .and_then(Value::as_str)
            .filter(|s| is_mac_hex(s))
            .map(str::to_string)
            .ok_or_else(|| (Tamper::Malformed, format!("missing or invalid \"{name}\"")))
    };
    let prev = hex_field("prev")?;
    let mac = hex_field("mac")?;
    // The MAC covers the exact bytes before the trailing `mac` field.
    let suffix = format!(",\"mac\":\"{mac}\"}}");
    let Some(head) = line.strip_suffix(&suffix) else {
        return Err((
            Tamper::Edited,
            "\"mac\" is not the last field as written (line re-serialized or edited)".to_string(),
        ));
    };
    let mut body = String::with_capacity(head.len() + 1);
    body.push_str(head);
    body.push('}');
    if !key.chain_verify(body.as_bytes(), &mac) {
        return Err((
            Tamper::Edited,
            "MAC mismatch (line changed, or wrong key)".to_string(),
        ));
    }
    Ok(ChainLink { seq, prev, mac })
}

/// The open audit file and what identifies it on disk.
struct OpenFile {
    /// Locked for as long as it is open.
    file: Flock<File>,
    /// `(dev, inode)`: the path names another file (or none) once the file
    /// was moved aside, e.g. by logrotate or `audit rotate`.
    id: (u64, u64),
}

/// A part of an audit event already in JSON, written into its line as it
/// is: what several lines share is serialized once. A response entry
/// repeats its request entry's `request` object, and the answers that
/// hand out one shared state (a change reaching a fleet of hosts) have one
/// audit form; built and serialized again for each line, those were a
/// visible share of what a host's poll cost the server, and a waiting
/// poll kept its request as a tree of small allocations.
#[derive(Clone, Debug)]
pub struct RawJson(std::sync::Arc<serde_json::value::RawValue>);

impl RawJson {
    pub fn of(value: &Value) -> Result<RawJson> {
        serde_json::value::to_raw_value(value)
            .map(|raw| RawJson(raw.into()))
            .map_err(|e| Error::internal(format!("cannot serialize audit event part: {e}")))
    }
}

/// An audit event: its fields, and the parts of it already in JSON. The
/// line holds both, keys in order (a part replaces a field of its name).
#[derive(Debug, Default)]
pub struct Event {
    pub fields: Map<String, Value>,
    parts: std::collections::BTreeMap<&'static str, RawJson>,
}

impl Event {
    /// Adds a part already in JSON under `key`.
    pub fn with_part(mut self, key: &'static str, part: RawJson) -> Event {
        self.parts.insert(key, part);
        self
    }
}

impl From<Map<String, Value>> for Event {
    fn from(fields: Map<String, Value>) -> Event {
        Event {
            fields,
            parts: Default::default(),
        }
    }
}

impl serde::Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let fields = self
            .fields
            .iter()
            .filter(|(k, _)| !self.parts.contains_key(k.as_str()));
        let mut map = s.serialize_map(None)?;
        let mut parts = self.parts.iter().peekable();
        for (k, v) in fields {
            while let Some((pk, part)) = parts.next_if(|(pk, _)| **pk < k.as_str()) {
                map.serialize_entry(pk, &*part.0)?;
            }
            map.serialize_entry(k, v)?;
        }
        for (pk, part) in parts {
            map.serialize_entry(pk, &*part.0)?;
        }
        map.end()
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(text) => f.write_str(&text),
            Err(e) => write!(f, "(audit event not serializable: {e})"),
        }
    }
}

struct Inner {
    /// `None` only while a replacement could not be opened.
    file: Option<OpenFile>,
    /// Last line written (or found at open); `None` for a new chain.
    head: Option<(u64, String)>,
    /// Events that could not be written when they happened and are written,
    /// in order, before any later line. Only events whose request already
    /// went ahead land here (response entries, file events): a request
    /// entry that cannot be written refuses its request instead. So the
    /// queue holds at most the requests in flight when the device failed.
    pending: VecDeque<Event>,
    /// A failed write left part of a line at the end of the file and
    /// cutting it off failed too: its length, cut off before anything else
    /// is written.
    unfinished: Option<u64>,
    /// Lines written since the audit path was last compared with the open
    /// file (see [`FOLLOW_EVERY`]).
    unchecked: u32,
    /// Why the last write failed, until one succeeds: while set, requests
    /// are refused (their entries cannot be written) and `sys/health`
    /// says so.
    trouble: Option<String>,
}

/// Lines written between two looks at whether the audit path still names
/// the open file. A look (a `stat` of the path) at every line was a few
/// per cent of the server's CPU under load; a moved file is noticed within
/// this many lines, within a second by [`AuditLog::flush`] (which always
/// looks), or at once on SIGHUP. Lines written to the moved file meanwhile
/// are in the chain as any other: the new file continues from the last.
/// (A file deleted rather than moved takes those lines with it, as it
/// takes every line before them; the database's copy keeps them all.)
const FOLLOW_EVERY: u32 = 64;

/// An open audit file. Appends are serialized by an internal mutex.
///
/// A write that fails (disk full, I/O error) leaves no partial line: the
/// file is cut back to its last whole line and the chain does not move, so
/// the next write that works simply continues it. Nothing about a failure
/// is sticky.
pub struct AuditLog {
    inner: Mutex<Inner>,
    key: AuditKey,
    path: PathBuf,
    /// fsync after each line (the data reaches the OS in any case).
    sync: AtomicBool,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn open_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// Opens (creating) an audit file and takes its lock: two writers on one
/// file would fork the chain, and `audit rotate` tells from the lock
/// whether a server is writing the file.
fn open_locked(path: &Path, create_new: bool) -> Result<OpenFile> {
    let mut o = open_options();
    if create_new {
        o.create_new(true);
    } else {
        o.create(true);
    }
    let file = o.open(path).map_err(|e| {
        Error::Unavailable(format!("cannot open audit file {}: {e}", path.display()))
    })?;
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(f) => f,
        Err((_, Errno::EWOULDBLOCK)) => {
            return Err(Error::internal(format!(
                "audit file {} is in use by another process (another gatepass-server?)",
                path.display()
            )))
        }
        Err((_, e)) => {
            return Err(Error::internal(format!(
                "cannot lock audit file {}: {e}",
                path.display()
            )))
        }
    };
    let id = identity(&file.metadata()?);
    Ok(OpenFile { file, id })
}

/// Whether another process holds the lock of the audit file at `path`
/// (i.e. a server is writing it). `None` if there is no such file.
pub fn in_use(path: &Path) -> Result<Option<bool>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot open audit file {}: {e}",
                path.display()
            )))
        }
    };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => Ok(Some(false)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(Some(true)),
        Err((_, e)) => Err(Error::internal(format!(
            "cannot lock audit file {}: {e}",
            path.display()
        ))),
    }
}

/// A free name beside `path` for a file set aside at `now`:
/// `audit.log.20240102T030405Z` (with `-tag` if given, and `.1`, `.2` …
/// if that exists already).
pub fn aside_path(path: &Path, now: i64, tag: &str) -> PathBuf {
    let stamp: String = crate::clock::rfc3339(now)
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let mut base = path.as_os_str().to_os_string();
    base.push(".");
    base.push(&stamp);
    if !tag.is_empty() {
        base.push("-");
        base.push(tag);
    }
    let mut candidate = PathBuf::from(&base);
    let mut n = 0u32;
    while candidate.symlink_metadata().is_ok() {
        n = n.saturating_add(1);
        let mut b = base.clone();
        b.push(format!(".{n}"));
        candidate = PathBuf::from(b);
    }
    candidate
}

fn event_at(now_text: Value, kind: &str, fields: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("time".into(), now_text);
    m.insert("type".into(), Value::from(kind));
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    m
}

/// Appends `buf` to the file; on failure cuts the file back to where it
/// was, so that a partial line never stays in the middle of the file.
///
/// The file's length is read only when a write fails (the file is opened
/// for appending and locked, so it ended `written` bytes earlier): an
/// `fstat` before every line was two of the 27 or so system calls a
/// certificate's signing request made.
fn write_all_or_cut(inner: &mut Inner, buf: &[u8], sync: bool) -> std::io::Result<()> {
    let Some(of) = inner.file.as_mut() else {
        return Err(std::io::Error::other("no audit file is open"));
    };
    if let Some(unfinished) = inner.unfinished {
        let len = of.file.metadata()?.len();
        of.file.set_len(len.saturating_sub(unfinished))?;
        inner.unfinished = None;
    }
    let mut written = 0;
    let result = loop {
        if written == buf.len() {
            break if sync { of.file.sync_data() } else { Ok(()) };
        }
        match of.file.write(&buf[written..]) {
            Ok(0) => break Err(ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    if result.is_err() && written > 0 {
        // Truncating frees space, so it works on a full disk; if it does
        // not, it is tried again before the next write.
        let cut = of
            .file
            .metadata()
            .and_then(|m| of.file.set_len(m.len().saturating_sub(written as u64)));
        if cut.is_err() {
            inner.unfinished = Some(written as u64);
        }
    }
    result
}

impl AuditLog {
    /// Opens (creating with mode 0600) an audit file and continues its chain
    /// from the last line. A last whole line that is not a chained line or
    /// not verifiable with `key` is an error: continuing would hide it. An
    /// incomplete last line (a write that did not finish, e.g. on a full
    /// disk, by an older version or at a crash) is set aside: the file is
    /// renamed to `<path>.<time>-torn`, kept as it is, and a new file at
    /// `path` continues the chain from the last whole line with an
    /// `audit_log_recovered` event naming the set-aside file.
    pub fn open(path: &Path, key: AuditKey, now: i64) -> Result<AuditLog> {
        if let Some(dir) = path.parent().filter(|d| !d.exists()) {
            crate::private::create_dir(dir)
                .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut of = open_locked(path, false)?;
        let (last, torn) = read_end(&mut of.file, path)?;
        let head = match last {
            None => None,
            Some(bytes) => {
                let refuse = |detail: &str| {
                    Error::internal(format!(
                        "audit file {}: last line is not a valid audit chain line ({detail}); \
                         refusing to continue the chain, rotate or inspect the file",
                        path.display()
                    ))
                };
                let text = std::str::from_utf8(&bytes).map_err(|_| refuse("not UTF-8"))?;
                let link =
                    verify_line(text, &key).map_err(|(kind, d)| refuse(&format!("{kind}: {d}")))?;
                Some((link.seq, link.mac))
            }
        };
        let log = AuditLog {
            inner: Mutex::new(Inner {
                file: Some(of),
                head,
                pending: VecDeque::new(),
                unfinished: None,
                unchecked: 0,
                trouble: None,
            }),
            key,
            path: path.to_path_buf(),
            sync: AtomicBool::new(false),
        };
        if let Some(bytes) = torn {
            log.set_aside_torn(now, bytes)?;
        }
        Ok(log)
    }

    /// The continued file is made whole first and only then swapped in, so
    /// a failure on the way leaves the torn file where it was.
    fn set_aside_torn(&self, now: i64, torn_bytes: u64) -> Result<()> {
        let aside = aside_path(&self.path, now, "torn");
        let mut tmp = self.path.as_os_str().to_os_string();
        tmp.push(".recovering");
        let tmp = PathBuf::from(tmp);
        let mut inner = self.lock()?;
        // Left over from an attempt that failed before the renames.
        let _ = std::fs::remove_file(&tmp);
        let new = open_locked(&tmp, true)?;
        let old = inner.file.replace(new);
        let event = event_at(
            Value::from(crate::clock::rfc3339(now)),
            "audit_log_recovered",
            serde_json::json!({
                "reason": "the last line of the audit file was incomplete \
                           (a write that did not finish); the file was set aside \
                           and the chain continues from its last whole line",
                "set_aside": aside.display().to_string(),
                "torn_bytes": torn_bytes,
            }),
        );
        let mut event = Event::from(event);
        let written = self
            .write_event(&mut inner, &mut event)
            .and_then(|_| std::fs::rename(&self.path, &aside).map_err(Error::from));
        if let Err(e) = written {
            inner.file = old;
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::internal(format!(
                "audit file {}: cannot set aside its incomplete last line: {e}",
                self.path.display()
            )));
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            Error::internal(format!(
                "audit file {}: set aside as {}, but cannot move {} in its place: {e}",
                self.path.display(),
                aside.display(),
                tmp.display()
            ))
        })?;
        tracing::warn!(
            file = %self.path.display(),
            set_aside = %aside.display(),
            torn_bytes,
            "the audit file ended in an incomplete line: set it aside, the chain continues in a new file"
        );
        Ok(())
    }

    /// Whether to fsync each line; off by default.
    pub fn set_sync(&self, sync: bool) {
        self.sync.store(sync, Ordering::Relaxed);
    }

    pub fn key(&self) -> &AuditKey {
        &self.key
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `seq` and `mac` of the last line, e.g. to anchor the chain elsewhere
    /// (truncation at the end of the file is otherwise invisible).
    pub fn head(&self) -> Result<Option<(u64, String)>> {
        Ok(self.lock()?.head.clone())
    }

    /// At start, with an audit file that holds no line (emptied or removed
    /// while the server was stopped, or a new path): when `copy_last`, the
    /// last line of the database's copy of this server's chain, verifies,
    /// the chain goes on from it, so that the file's lines missing are
    /// seen, not hidden behind a chain started over at 1. Either way the
    /// first line says what was found. Returns the lines written.
    pub fn continue_from_copy(&self, copy_last: &str, now: i64) -> Result<Vec<String>> {
        let mut inner = self.lock()?;
        if inner.head.is_some() {
            return Ok(vec![]);
        }
        let fields = match verify_line(copy_last, &self.key) {
            Ok(link) => {
                inner.head = Some((link.seq, link.mac));
                serde_json::json!({
                    "reason": "the audit file held no line at start, while the database's copy \
                               holds this server's chain: it goes on from the copy's last line",
                    "copy_seq": link.seq,
                })
            }
            Err((kind, detail)) => serde_json::json!({
                "reason": format!(
                    "the audit file held no line at start, and the last line of the database's \
                     copy does not verify ({kind}: {detail}): a new chain starts"
                ),
            }),
        };
        tracing::warn!(file = %self.path.display(), "{}", fields["reason"]);
        let mut event = Event::from(event_at(
            Value::from(crate::clock::rfc3339(now)),
            "audit_file_empty_at_start",
            fields,
        ));
        Ok(vec![self.write_event(&mut inner, &mut event)?])
    }

    /// Why the audit file cannot be written now (its last write failed and
    /// none has succeeded since); None while it can.
    pub fn trouble(&self) -> Option<String> {
        self.lock().ok().and_then(|i| i.trouble.clone())
    }

    /// While [`AuditLog::trouble`] says the file cannot be written and no
    /// kept event would show otherwise, tries to write one line saying it
    /// can again; its lines if it could. What else would write (requests)
    /// may not come: a load balancer that believes `sys/health` sends none.
    pub fn check_writable(&self, now: i64) -> Result<Vec<String>> {
        let mut inner = self.lock()?;
        let Some(why) = inner.trouble.clone() else {
            return Ok(vec![]);
        };
        if !inner.pending.is_empty() {
            return Ok(vec![]);
        }
        let mut event = Event::from(event_at(
            Value::from(crate::clock::rfc3339(now)),
            "audit_log_writable_again",
            serde_json::json!({ "after": why }),
        ));
        Ok(vec![self.write_event(&mut inner, &mut event)?])
    }

    /// Events kept for writing later (see [`AuditLog::append_or_keep`]).
    pub fn pending(&self) -> usize {
        self.lock().map(|i| i.pending.len()).unwrap_or(0)
    }

    /// Writes `event`, after any events kept from earlier, or fails with
    /// [`Error::Unavailable`] having written nothing of it: use it for what
    /// must be on record before the request goes on. Adds `seq`, `prev` and
    /// `mac` to the event (replacing any fields of those names). Returns
    /// every line written, oldest first, the event's own line last, each
    /// without its '\n'.
    pub fn append(&self, event: impl Into<Event>) -> Result<Vec<String>> {
        let mut event = event.into();
        let mut inner = self.lock()?;
        self.follow_path_now_and_then(&mut inner, &event);
        let mut out = self.write_pending(&mut inner)?;
        out.push(self.write_event(&mut inner, &mut event)?);
        Ok(out)
    }

    /// Writes `event` like [`AuditLog::append`], but when that fails keeps
    /// it and writes it, in order, as soon as the file can be written again
    /// (the next request, or [`AuditLog::flush`]): for what already
    /// happened, such as a response whose effect is done. Returns the lines
    /// written now.
    pub fn append_or_keep(&self, event: impl Into<Event>) -> Vec<String> {
        let event = event.into();
        let mut inner = match self.lock() {
            Ok(i) => i,
            Err(e) => {
                // Never silently dropped: the server's log gets it.
                tracing::error!(error = %e, %event, "audit event not written");
                return vec![];
            }
        };
        self.follow_path_now_and_then(&mut inner, &event);
        inner.pending.push_back(event);
        match self.write_pending(&mut inner) {
            Ok(lines) => lines,
            Err(e) => {
                tracing::error!(
                    error = %e,
                    kept = inner.pending.len(),
                    "audit event kept in memory until the audit file can be written"
                );
                vec![]
            }
        }
    }

    /// Writes the events kept from earlier, and moves to a new file at the
    /// audit path if the open one was moved away. Returns the lines written.
    pub fn flush(&self, now: i64) -> Result<Vec<String>> {
        let mut inner = self.lock()?;
        self.follow_path(&mut inner, &Value::from(crate::clock::rfc3339(now)));
        self.write_pending(&mut inner)
    }

    /// Takes the events kept for writing later (at stop, when they cannot
    /// be written: the caller prints them to the server's log).
    pub fn take_pending(&self) -> Vec<Event> {
        self.lock()
            .map(|mut i| i.pending.drain(..).collect())
            .unwrap_or_default()
    }

    /// Opens the audit path again (SIGHUP): after the file was moved aside
    /// (logrotate), new lines go to a new file there, continuing the chain;
    /// the first is an `audit_file_reopened` event. Returns the lines
    /// written.
    pub fn reopen(&self, now: i64, reason: &str) -> Result<Vec<String>> {
        let mut inner = self.lock()?;
        self.reopen_locked(&mut inner, &Value::from(crate::clock::rfc3339(now)), reason);
        Ok(self.write_pending(&mut inner).unwrap_or_default())
    }

    /// Moves the file to `aside` and continues the chain in a new file at
    /// the audit path, whose first line is an `audit_file_rotated` event.
    /// Returns the lines written.
    pub fn rotate(&self, aside: &Path, now: i64) -> Result<Vec<String>> {
        let mut inner = self.lock()?;
        std::fs::rename(&self.path, aside).map_err(|e| {
            Error::internal(format!(
                "cannot move {} to {}: {e}",
                self.path.display(),
                aside.display()
            ))
        })?;
        let new = open_locked(&self.path, true)?;
        inner.file = Some(new);
        inner.pending.push_back(
            event_at(
                Value::from(crate::clock::rfc3339(now)),
                "audit_file_rotated",
                serde_json::json!({ "previous_file": aside.display().to_string() }),
            )
            .into(),
        );
        self.write_pending(&mut inner)
    }

    /// [`AuditLog::follow_path`] once every [`FOLLOW_EVERY`] lines, and at
    /// every line while no file is open.
    fn follow_path_now_and_then(&self, inner: &mut Inner, event: &Event) {
        if inner.unchecked >= FOLLOW_EVERY || inner.file.is_none() {
            let time = event.fields.get("time").cloned().unwrap_or(Value::Null);
            self.follow_path(inner, &time);
        }
    }

    /// Moves to a new file when the audit path no longer names the open
    /// file (moved aside by hand, by logrotate without a signal, or by
    /// `audit rotate` while the server runs).
    fn follow_path(&self, inner: &mut Inner, time: &Value) {
        inner.unchecked = 0;
        let current = inner.file.as_ref().map(|f| f.id);
        match std::fs::metadata(&self.path) {
            Ok(m) if Some(identity(&m)) == current => {}
            Ok(_) => self.reopen_locked(inner, time, "the audit path names another file"),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.reopen_locked(inner, time, "the audit file was moved or removed")
            }
            Err(_) => {}
        }
    }

    fn reopen_locked(&self, inner: &mut Inner, time: &Value, reason: &str) {
        match open_locked(&self.path, false) {
            Ok(of) => {
                if inner.file.as_ref().map(|f| f.id) == Some(of.id) {
                    return;
                }
                inner.file = Some(of);
                inner.unfinished = None;
                inner.pending.push_back(
                    event_at(
                        time.clone(),
                        "audit_file_reopened",
                        serde_json::json!({ "reason": reason }),
                    )
                    .into(),
                );
            }
            Err(e) => {
                // The open file stays in use until the path can be opened.
                tracing::warn!(error = %e, "cannot reopen the audit file");
            }
        }
    }

    fn write_pending(&self, inner: &mut Inner) -> Result<Vec<String>> {
        let mut out = Vec::new();
        while let Some(mut event) = inner.pending.pop_front() {
            match self.write_event(inner, &mut event) {
                Ok(line) => out.push(line),
                Err(e) => {
                    // Kept, first in line, for the next try.
                    inner.pending.push_front(event);
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Chains, writes and returns one line (without its '\n'); on failure
    /// nothing of it stays in the file and the chain does not move. The
    /// event gets its chain fields in place (replaced at each try), rather
    /// than on a copy: two copies of each response entry were a visible
    /// share of a request's time.
    fn write_event(&self, inner: &mut Inner, event: &mut Event) -> Result<String> {
        let (seq, prev) = match &inner.head {
            None => (1, GENESIS_PREV.to_string()),
            Some((s, mac)) => (
                s.checked_add(1)
                    .ok_or_else(|| Error::internal("audit sequence number overflow"))?,
                mac.clone(),
            ),
        };
        event.fields.remove("mac");
        event.fields.insert("seq".to_string(), Value::from(seq));
        event.fields.insert("prev".to_string(), Value::from(prev));
        // Canonical form: without serde_json's `preserve_order` feature `Map`
        // is a BTreeMap, so keys come out sorted, and `Event` puts its
        // parts in their places among them. The verifier MACs the
        // written bytes, so it does not depend on this.
        // The line is made in one buffer: the body, then `mac` in place of
        // its closing brace, and the newline.
        let mut buf = Vec::with_capacity(1024);
        serde_json::to_writer(&mut buf, &*event)
            .map_err(|e| Error::internal(format!("cannot serialize audit event: {e}")))?;
        let mac = self.key.chain_mac(&buf);
        if buf.pop() != Some(b'}') {
            return Err(Error::internal(
                "audit event did not serialize to an object",
            ));
        }
        let mut line = String::from_utf8(buf)
            .map_err(|e| Error::internal(format!("audit event not UTF-8: {e}")))?;
        for part in [",\"mac\":\"", mac.as_str(), "\"}\n"] {
            line.push_str(part);
        }
        if let Err(e) = write_all_or_cut(inner, line.as_bytes(), self.sync.load(Ordering::Relaxed))
        {
            let why = format!("cannot write audit file {}: {e}", self.path.display());
            inner.trouble = Some(why.clone());
            return Err(Error::Unavailable(why));
        }
        inner.trouble = None;
        inner.head = Some((seq, mac));
        inner.unchecked = inner.unchecked.saturating_add(1);
        line.pop();
        Ok(line)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::internal("audit log lock poisoned"))
    }
}

/// The last whole line of the file (without its '\n'; `None` if there is
/// none) and the length of an incomplete line after it (`None` if the file
/// ends with '\n'), read backwards from the end so that opening a large
/// file stays cheap.
fn read_end(file: &mut File, path: &Path) -> Result<(Option<Vec<u8>>, Option<u64>)> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((None, None));
    }
    let newline = last_newline_before(file, len)?;
    let (end, torn) = match newline {
        Some(p) if p + 1 == len => (p, None),
        Some(p) => (p, Some(len - p - 1)),
        None => return Ok((None, Some(len))),
    };
    let start = last_newline_before(file, end)?.map_or(0, |p| p + 1);
    let size = usize::try_from(end - start)
        .map_err(|_| Error::internal(format!("audit file {}: line too long", path.display())))?;
    let mut line = vec![0u8; size];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut line)?;
    Ok((Some(line), torn))
}

/// Position of the last '\n' before `end`.
fn last_newline_before(file: &mut File, end: u64) -> Result<Option<u64>> {
    const CHUNK: u64 = 8192;
    let mut end = end;
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let size = usize::try_from(end - start)
            .map_err(|_| Error::internal("audit file chunk size overflow"))?;
        let mut chunk = vec![0u8; size];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        if let Some(pos) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + pos as u64));
        }
        end = start;
    }
    Ok(None)
}

/// Checks the whole file and reports the first bad line.
///
/// A chain break where `seq` goes forward is `Removed`, unless the missing
/// successor turns up later in the file: then it was moved, and the break is
/// `Reordered` (so swapping two lines reports `Reordered` at the first of
/// them). `seq` going backwards or repeating is `Reordered`. The first line
/// may start anywhere (after a rotation) but its MAC must verify.
pub fn verify_file(path: &Path, key: &AuditKey) -> Result<VerifyOutcome> {
    let file = File::open(path)
        .map_err(|e| Error::internal(format!("cannot open audit file {}: {e}", path.display())))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut line_no: u64 = 0;
    let mut last: Option<ChainLink> = None;
    let bad = |line: u64, kind: Tamper, detail: String| VerifyOutcome::Bad { line, kind, detail };
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        line_no = line_no.saturating_add(1);
        if buf.last() != Some(&b'\n') {
            return Ok(VerifyOutcome::TornTail {
                lines: line_no - 1,
                bytes: buf.len() as u64,
            });
        }
        buf.pop();
        let Ok(text) = std::str::from_utf8(&buf) else {
            return Ok(bad(line_no, Tamper::Malformed, "not UTF-8".to_string()));
        };
        let link = match verify_line(text, key) {
            Ok(link) => link,
            Err((kind, detail)) => return Ok(bad(line_no, kind, detail)),
        };
        if let Some(before) = &last {
            let expected = before.seq.saturating_add(1);
            if link.seq != expected || link.prev != before.mac {
                let (kind, detail) = if link.seq <= before.seq {
                    (
                        Tamper::Reordered,
                        format!("seq {} does not follow seq {}", link.seq, before.seq),
                    )
                } else if successor_later(&mut reader, key, expected, &before.mac)? {
                    (
                        Tamper::Reordered,
                        format!(
                            "seq {} follows seq {}; seq {expected} appears later in the file",
                            link.seq, before.seq
                        ),
                    )
                } else if link.seq == expected {
                    (
                        Tamper::Removed,
                        format!(
                            "seq {} does not chain to the previous line (line from another chain?)",
                            link.seq
                        ),
                    )
                } else {
                    (
                        Tamper::Removed,
                        format!("seq {} follows seq {}", link.seq, before.seq),
                    )
                };
                return Ok(bad(line_no, kind, detail));
            }
        }
        last = Some(link);
    }
    Ok(VerifyOutcome::Ok { lines: line_no })
}

/// Whether a valid line with `seq` chained to `prev` follows in the rest of
/// the file.
fn successor_later(
    reader: &mut BufReader<File>,
    key: &AuditKey,
    seq: u64,
    prev: &str,
) -> Result<bool> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(false);
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let Ok(text) = std::str::from_utf8(&buf) else {
            continue;
        };
        if let Ok(link) = verify_line(text, key) {
            if link.seq == seq && link.prev == prev {
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    /// 2024-01-01T00:00:00Z.
    const T0: i64 = 1_704_067_200;

    fn last(mut lines: Vec<String>) -> String {
        lines.pop().unwrap()
    }

    fn key() -> AuditKey {
        AuditKey::new([7u8; 32])
    }

    /// The keyed states give what keying afresh gives: HMAC-SHA256 under
    /// each subkey, the subkeys HMACs of their labels under the root.
    #[test]
    fn hmacs_are_under_the_derived_subkeys() {
        let mac = |k: &[u8], m: &[u8]| {
            let mut h = <HmacSha256 as KeyInit>::new_from_slice(k).unwrap();
            h.update(m);
            hex::encode(h.finalize().into_bytes())
        };
        let root = [7u8; 32];
        let secret = hex::decode(mac(&root, b"gatepass audit v1 secret hmac")).unwrap();
        let chain = hex::decode(mac(&root, b"gatepass audit v1 chain mac")).unwrap();
        let k = key();
        for text in ["", "s.abc", &"x".repeat(200)] {
            assert_eq!(
                k.hmac(text),
                format!("hmac-sha256:{}", mac(&secret, text.as_bytes()))
            );
            assert_eq!(
                k.hmac(text),
                k.hmac(text),
                "a keyed state is used afresh each time"
            );
            let body = format!("{{\"line\":{text:?}}}");
            assert_eq!(k.chain_mac(body.as_bytes()), mac(&chain, body.as_bytes()));
            assert!(k.chain_verify(body.as_bytes(), &mac(&chain, body.as_bytes())));
        }
    }

    fn event(i: u64) -> Map<String, Value> {
        let Value::Object(m) = json!({
            "time": format!("2024-01-01T00:00:{i:02}Z"),
            "type": "request",
            "request": {"path": "secret/data/x", "operation": "read", "n": i},
        }) else {
            unreachable!()
        };
        m
    }

    /// Parts already in JSON land in the line where the same values would,
    /// byte for byte: a reader, and the chain, cannot tell them apart. A
    /// part takes the place of a field of its name.
    #[test]
    fn an_event_with_parts_already_in_json_is_the_line_of_the_same_values() {
        let request = json!({"path": "hosts/self/state", "data": {"index": "7"}, "id": "r-1"});
        let response = json!({"data": {"krl": "hmac-sha256:ab", "index": 7}});
        let Value::Object(whole) = json!({
            "auth": {"client_token": "hmac-sha256:cd"},
            "request": request,
            "response": response,
            "status": 200,
            "time": "2024-01-01T00:00:01Z",
            "type": "response",
        }) else {
            unreachable!()
        };
        let mut fields = whole.clone();
        fields.remove("request");
        // A field of a part's name gives way to the part.
        fields.insert("response".into(), Value::Null);
        let event = Event::from(fields)
            .with_part("request", RawJson::of(&request).unwrap())
            .with_part("response", RawJson::of(&response).unwrap());
        assert_eq!(event.to_string(), Value::Object(whole.clone()).to_string());

        let (_dir, path) = dir_and_path();
        let (_dir2, path2) = dir_and_path();
        let a = AuditLog::open(&path, key(), T0).unwrap();
        let b = AuditLog::open(&path2, key(), T0).unwrap();
        assert_eq!(a.append(event).unwrap(), b.append(whole).unwrap());
        assert!(matches!(
            verify_file(&path, &key()).unwrap(),
            VerifyOutcome::Ok { .. }
        ));
    }

    fn dir_and_path() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        (dir, path)
    }

    fn write_chain(path: &Path, n: u64) {
        let log = AuditLog::open(path, key(), T0).unwrap();
        for i in 1..=n {
            log.append(event(i)).unwrap();
        }
    }

    fn read_lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).unwrap();
    }

    fn assert_bad(path: &Path, k: &AuditKey, line: u64, kind: Tamper) {
        match verify_file(path, k).unwrap() {
            VerifyOutcome::Bad {
                line: l, kind: got, ..
            } => assert_eq!((l, got), (line, kind)),
            other => panic!("expected {kind} at line {line}, got {other:?}"),
        }
    }

    #[test]
    fn chain_verifies() {
        let (_d, path) = dir_and_path();
        write_chain(&path, 5);
        assert_eq!(
            verify_file(&path, &key()).unwrap(),
            VerifyOutcome::Ok { lines: 5 }
        );
        let lines = read_lines(&path);
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["seq"], 1);
        assert_eq!(first["prev"], GENESIS_PREV);
        assert_eq!(first["type"], "request");
        assert_eq!(first["request"]["operation"], "read");
        let second: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(second["prev"], first["mac"]);
    }

    #[test]
    fn append_returns_the_written_line() {
        let (_d, path) = dir_and_path();
        let log = AuditLog::open(&path, key(), T0).unwrap();
        let a = last(log.append(event(1)).unwrap());
        let b = last(log.append(event(2)).unwrap());
        assert_eq!(read_lines(&path), vec![a.clone(), b]);
        let link = verify_line(&a, &key()).unwrap();
        assert_eq!(link.seq, 1);
        assert_eq!(log.head().unwrap().map(|h| h.0), Some(2));
    }

    #[test]
    fn body_is_sorted_keys() {
        // Guards the canonical form: fails if `preserve_order` gets enabled.
        let (_d, path) = dir_and_path();
        let log = AuditLog::open(&path, key(), T0).unwrap();
        let mut m = Map::new();
        m.insert("zeta".into(), json!(1));
        m.insert("alpha".into(), json!({"y": 1, "b": 2}));
        let line = last(log.append(m).unwrap());
        assert!(line.starts_with(r#"{"alpha":{"b":2,"y":1},"prev":""#));
        assert!(line.contains(r#","seq":1,"zeta":1,"mac":""#));
    }

    #[test]
    fn chain_fields_in_the_event_are_replaced() {
        let (_d, path) = dir_and_path();
        let log = AuditLog::open(&path, key(), T0).unwrap();
        let mut m = event(1);
        m.insert("seq".into(), json!(99));
        m.insert("mac".into(), json!("x"));
        m.insert("prev".into(), json!("y"));
        log.append(m).unwrap();
        assert_eq!(
            verify_file(&path, &key()).unwrap(),
            VerifyOutcome::Ok { lines: 1 }
        );
    }

    #[test]
    fn reopen_continues_the_chain() {
        let (_d, path) = dir_and_path();
        write_chain(&path, 3);
        let log = AuditLog::open(&path, key(), T0).unwrap();
        log.set_sync(true);
        let line = last(log.append(event(4)).unwrap());
        log.append(event(5)).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["seq"], 4);
        assert_eq!(
            verify_file(&path, &key()).unwrap(),
            VerifyOutcome::Ok { lines: 5 }
        );
    }

    #[test]
    fn reopen_with_long_last_line() {
        let (_d, path) = dir_and_path();
        let log = AuditLog::open(&path, key(), T0).unwrap();
        log.append(event(1)).unwrap();
        let mut big = event(2);
        big.insert("blob".into(), json!("x".repeat(30_000)));
        log.append(big).unwrap();
        drop(log);
        let log = AuditLog::open(&path, key(), T0).unwrap();
        assert_eq!(log.head().unwrap().map(|h| h.0), Some(2));
        log.append(event(3)).unwrap();
        assert_eq!(
            verify_file(&path, &key()).unwrap(),
            VerifyOutcome::Ok { lines: 3 }
        );
    }

    #[test]
    fn open_refuses_bad_last_line() {
        let (_d, path) = dir_and_path();
        write_chain(&path, 3);
        let mut lines = read_lines(&path);
        lines[2] = lines[2].replace("\"request\",", "\"response\",");
        write_lines(&path, &lines);
        let err = AuditLog::open(&path, key(), T0).unwrap_err();
        assert!(err.to_string().contains("refusing"), "{err}");

        write_chain(&path.with_extension("2"), 2);
        assert!(AuditLog::open(&path.with_extension("2"), AuditKey::new([8u8; 32]), T0).is_err());

        std::fs::write(&path, "{\"seq\":1}\n").unwrap();
        assert!(AuditLog::open(&path, key(), T0).is_err());
        std::fs::write(&path, "\n").unwrap();
        assert!(AuditLog::open(&path, key(), T0).is_err());
    }

    #[test]
    fn edited_line_is_detected() {
        let (_d, path) = dir_and_path();
        write_chain(&path, 5);
        let mut lines = read_lines(&path);
        assert!(lines[2].contains("\"n\":3"));
        lines[2] = lines[2].replace("\"n\":3", "\"n\":33");
        write_lines(&path, &lines);
        assert_bad(&path, &key(), 3, Tamper::Edited);
    }

    #[test]
    fn deleted_line_is_detected() {
        let (_d, path) = dir_and_path();
        write_chain(&path, 5);
        let mut lines = read_lines(&path);
        lines.remove(1);
        write_lines(&path, &lines);
        assert_bad(&path, &key(), 2, Tamper::Removed);
    }

    #[test]
    fn swapped_lines_are_detected() {
        // Line 2 now holds seq 3, a forward jump; seq 2 still follows later,
        // so this is a reordering, not a deletion.
        let (_d, path) = dir_and_path();
        write_chain(&path, 5);
        let mut lines = read_lines(&path);
        lines.swap(1, 2);
        write_lines(&path, &lines);
        assert_bad(&path, &key(), 2, Tamper::Reordered);
    }

    #[test]
    fn repeated_line_is_reordered() {
        let (_d, path) = dir_and_path();
        write_chain(&path, 3);
        let mut lines = read_lines(&path);
        let dup = lines[1].clone();
        lines.insert(2, dup);
        write_lines(&path, &lines);
        assert_bad(&path, &key(), 3, Tamper::Reordered);
    }

    #[test]
    fn truncated_last_line_is_a_torn_tail() {
        let (_d, path) = dir_and_path();
        write_chain(&path, 5);
        let text = std::fs::read_to_string(&path).unwrap();
        let cut = text.len() - 40;
        std::fs::write(&path, &text[..cut]).unwrap();
        let whole = text[..cut].rfind('\n').unwrap() + 1;
        assert_eq!(
            verify_file(&path, &key()).unwrap(),
            VerifyOutcome::TornTail {
                lines: 4,
                bytes: (cut - whole) as u64
            }
        );
        // Only the newline missing: still a write that did not finish.
        std::fs::write(&path, text.trim_end()).unwrap();
        assert!(matches!(
            verify_file(&path, &key()).unwrap(),
            VerifyOutcome::TornTail { lines: 4, .. }
        ));
    }

    #[test]
    fn a_torn_tail_found_at_open_is_set_aside_and_the_chain_continues() {
        let (dir, path) = dir_and_path();
        write_chain(&path, 3);
        let whole = std::fs::read(&path).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(b"{\"seq\":4,\"type\":\"resp");
        std::fs::write(&path, &torn).unwrap();

        let log = AuditLog::open(&path, key(), T0).unwrap();
        assert_eq!(log.head().unwrap().map(|h| h.0), Some(4));
        let line = last(log.append(event(5)).unwrap());
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["seq"], 5);
        drop(log);

        // The torn file is kept byte for byte beside the new one.
        let aside = dir.path().join("audit.log.20240101T000000Z-torn");
        assert_eq!(std::fs::read(&aside).unwrap(), torn);
        assert!(matches!(
            verify_file(&aside, &key()).unwrap(),
            VerifyOutcome::TornTail {
                lines: 3,
                bytes: 21
            }
        ));
        // The new file starts with the event that says what happened, chained
        // to the last whole line.
        assert_eq!(
            verify_file(&path, &key()).unwrap(),
            VerifyOutcome::Ok { lines: 2 }
        );
        let lines = read_lines(&path);
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["type"], "audit_log_recovered");
        assert_eq!(first["seq"], 4);
        assert_eq!(first["torn_bytes"], 21);
        assert_eq!(first["set_aside"], aside.display().to_string());
        let last_whole: Value =
            serde_json::from_str(std::str::from_utf8(&whole).unwrap().lines().last().unwrap())
                .unwrap();
        assert_eq!(first["prev"], last_whole["mac"]);
        assert!(!dir.path().join("audit.log.recovering").exists());
    }

    #[test]
    fn a_file_of_only_a_torn_line_starts_a_new_chain() {
        let (dir, path) = dir_and_path();
        std::fs::write(&path, "garbage").unwrap();
        let log = AuditLog::open(&path, key(), T0).unwrap();
        assert_eq!(log.head().unwrap().map(|h| h.0), Some(1));
        drop(log);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("audit.log.20240101T000000Z-torn")).unwrap(),
            "garbage"
        );
        assert_eq!(
            verify_file(&path, &key()).unwrap(),
            VerifyOutcome::Ok { lines: 1 }
        );
    }

    #[test]
    fn a_second_writer_on_one_file_is_refused() {
        let (_d, path) = dir_and_path();
        let log = AuditLog::open(&path, key(), T0).unwrap();
        let err = AuditLog::open(&path, key(), T0).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        assert_eq!(in_use(&path).unwrap(), Some(true));
        drop(log);
        assert_eq!(in_use(&path).unwrap(), Some(false));
        assert_eq!(in_use(&path.with_extension("none")).unwrap(), None);
    }

    #[test]
    fn a_file_moved_aside_is_followed_by_a_new_one_continuing_the_chain() {
        let (dir, path) = dir_and_path();
        let log = AuditLog::open(&path, key(), T0).unwrap();
        log.append(event(1)).unwrap();
        let moved = dir.path().join("audit.log.1");
        std::fs::rename(&path, &moved).unwrap();
        // Under way, the move is noticed within FOLLOW_EVERY lines; those
        // written meanwhile go on in the moved file's chain.
        let mut in_moved = 1;
        let lines = loop {
            let lines = log.append(event(2)).unwrap();
            if lines.len() > 1 {
                break lines;
            }
            in_moved += 1;
            assert!(in_moved <= FOLLOW_EVERY, "the move was not noticed");
        };
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("audit_file_reopened"), "{}", lines[0]);
        assert_eq!(read_lines(&path).len(), 2);
        // The keeper's flush notices a move at once.
        let flushed = dir.path().join("audit.log.flushed");
        std::fs::rename(&path, &flushed).unwrap();
        let lines = log.flush(T0).unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("audit_file_reopened"), "{}", lines[0]);
        // SIGHUP after logrotate moved the file: a new file at once.
        std::fs::rename(&path, dir.path().join("audit.log.2")).unwrap();
        let lines = log.reopen(T0, "SIGHUP").unwrap();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("SIGHUP"));
        // Nothing moved: nothing to do.
        assert!(log.reopen(T0, "SIGHUP").unwrap().is_empty());
        log.append(event(3)).unwrap();
        for (p, n) in [
            (&moved, in_moved),
            (&flushed, 2),
            (&dir.path().join("audit.log.2"), 1),
            (&path, 2),
        ] {
            assert_eq!(
                verify_file(p, &key()).unwrap(),
                VerifyOutcome::Ok { lines: n.into() }
            );
        }
        assert_eq!(
            log.head().unwrap().map(|h| h.0),
            Some(u64::from(in_moved) + 5)
        );
    }

    #[test]
    fn malformed_lines() {
        let (_d, path) = dir_and_path();
        write_chain(&path, 2);
        let mut lines = read_lines(&path);
        lines.insert(1, "{\"seq\":2,\"prev\":\"00\"}".to_string());
        write_lines(&path, &lines);
        assert_bad(&path, &key(), 2, Tamper::Malformed);
        std::fs::write(&path, b"\xff\xfe\n").unwrap();
        assert_bad(&path, &key(), 1, Tamper::Malformed);
        std::fs::write(&path, b"[1,2]\n").unwrap();
        assert_bad(&path, &key(), 1, Tamper::Malformed);
    }

    #[test]
    fn reserialized_line_is_edited() {
        let (_d, path) = dir_and_path();
        write_chain(&path, 2);
        let mut lines = read_lines(&path);
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        lines[0] = serde_json::to_string(&v).unwrap();
        write_lines(&path, &lines);
        assert_bad(&path, &key(), 1, Tamper::Edited);
    }

    #[test]
    fn wrong_key_is_edited_at_line_1() {
        let (_d, path) = dir_and_path();
        write_chain(&path, 3);
        assert_bad(&path, &AuditKey::new([9u8; 32]), 1, Tamper::Edited);
    }

    #[test]
    fn rotation_continues_the_chain() {
        let (_d, path) = dir_and_path();
        let aside = aside_path(&path, T0, "");
        let log = AuditLog::open(&path, key(), T0).unwrap();
        log.append(event(1)).unwrap();
        log.append(event(2)).unwrap();
        let lines = log.rotate(&aside, T0).unwrap();
        assert!(lines[0].contains("audit_file_rotated"));
        let line = last(log.append(event(3)).unwrap());
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["seq"], 4);
        assert!(aside
            .display()
            .to_string()
            .ends_with("audit.log.20240101T000000Z"));
        assert_ne!(aside_path(&path, T0, ""), aside);
        assert_eq!(
            verify_file(&aside, &key()).unwrap(),
            VerifyOutcome::Ok { lines: 2 }
        );
        assert_eq!(
            verify_file(&path, &key()).unwrap(),
            VerifyOutcome::Ok { lines: 2 }
        );
    }

    #[test]
    fn empty_file_verifies() {
        let (_d, path) = dir_and_path();
        drop(AuditLog::open(&path, key(), T0).unwrap());
        assert_eq!(
            verify_file(&path, &key()).unwrap(),
            VerifyOutcome::Ok { lines: 0 }
        );
    }

    #[cfg(unix)]
    #[test]
    fn created_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, path) = dir_and_path();
        drop(AuditLog::open(&path, key(), T0).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn hmac_format_and_padded_key_matches() {
        let k = key();
        let h = k.hmac("s3cret");
        assert!(h.starts_with("hmac-sha256:"));
        let bytes: Vec<u8> = (0..=255).collect();
        let mut digits = String::new();
        push_hex(&mut digits, &bytes);
        assert_eq!(digits, hex::encode(&bytes));
        assert_eq!(h.len(), "hmac-sha256:".len() + 64);
        assert_eq!(h, k.hmac("s3cret"));
        assert_ne!(h, k.hmac("s3cret2"));
        // The infallible constructor computes standard HMAC-SHA256.
        let raw = [3u8; 32];
        let mut a = hmac_sha256(&raw);
        a.update(b"msg");
        let mut b = <HmacSha256 as Mac>::new_from_slice(&raw).unwrap();
        b.update(b"msg");
        assert_eq!(a.finalize().into_bytes(), b.finalize().into_bytes());
    }

    #[test]
    fn redact_replaces_nested_strings_and_keeps_listed_keys() {
        let k = key();
        let v = json!({
            "path": "secret/data/x",
            "n": 5,
            "ok": true,
            "none": null,
            "data": {"password": "hunter2", "list": ["a", {"deep": "b"}, 3]},
            "auth": {"policies": ["default", "admin"], "token": "hvs.abc"},
        });
        let r = redact(&v, &k, &["path", "policies"]);
        assert_eq!(r["path"], "secret/data/x");
        assert_eq!(r["n"], 5);
        assert_eq!(r["ok"], true);
        assert_eq!(r["none"], Value::Null);
        assert_eq!(r["data"]["password"], k.hmac("hunter2"));
        assert_eq!(r["data"]["list"][0], k.hmac("a"));
        assert_eq!(r["data"]["list"][1]["deep"], k.hmac("b"));
        assert_eq!(r["data"]["list"][2], 3);
        assert_eq!(r["auth"]["policies"], json!(["default", "admin"]));
        assert_eq!(r["auth"]["token"], k.hmac("hvs.abc"));
    }

    #[test]
    fn secrets_never_reach_the_file() {
        let (_d, path) = dir_and_path();
        let log = AuditLog::open(&path, key(), T0).unwrap();
        let raw = json!({
            "time": "2024-01-01T00:00:00Z",
            "type": "request",
            "request": {"path": "auth/userpass/login/bob", "data": {"password": "correct-horse-battery"}},
        });
        let Value::Object(m) = redact(&raw, log.key(), &["time", "type", "path"]) else {
            unreachable!()
        };
        log.append(m).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("correct-horse-battery"));
        assert!(text.contains(&log.key().hmac("correct-horse-battery")));
        assert!(text.contains("auth/userpass/login/bob"));
    }

    #[test]
    fn concurrent_appends_keep_the_chain() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<AuditLog>();
        let (_d, path) = dir_and_path();
        let log = std::sync::Arc::new(AuditLog::open(&path, key(), T0).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        log.append(event(t * 100 + i)).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(
            verify_file(&path, &key()).unwrap(),
            VerifyOutcome::Ok { lines: 100 }
        );
    }

    #[test]
    fn time_ranges_read_rfc3339_datetime_local_and_unix_seconds() {
        let t = 1_767_225_600; // 2026-01-01T00:00:00Z
        let r = TimeRange::parse("2026-01-01T00:00:00Z", "2026-01-01T01:00").unwrap();
        assert_eq!((r.start(), r.end()), (t, t + 3600));
        let r = TimeRange::parse("2026-01-01T02:00:00+02:00", "2026-01-01T00:00:30").unwrap();
        assert_eq!((r.start(), r.end()), (t, t + 30));
        let r = TimeRange::parse(&t.to_string(), " ").unwrap();
        assert_eq!((r.start(), r.end()), (t, i64::MAX));
        assert_eq!(TimeRange::parse("", "").unwrap(), TimeRange::ALL);
        let e = TimeRange::parse("", "tomorrow").unwrap_err().to_string();
        assert!(e.starts_with("until: \"tomorrow\" is not a time"), "{e}");
        let e = TimeRange::parse("2026-01-02T00:00", "2026-01-01T00:00").unwrap_err();
        assert!(e.to_string().contains("is after until"), "{e}");
    }
}
