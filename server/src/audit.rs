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

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
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
pub struct AuditKey {
    secret: Zeroizing<[u8; 32]>,
    chain: Zeroizing<[u8; 32]>,
}

impl AuditKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        let root = Zeroizing::new(bytes);
        AuditKey {
            secret: derive(&root, b"gatepass audit v1 secret hmac"),
            chain: derive(&root, b"gatepass audit v1 chain mac"),
        }
    }

    /// `"hmac-sha256:<hex>"` of a secret string, as Vault's audit devices
    /// write it.
    pub fn hmac(&self, s: &str) -> String {
        let mut m = hmac_sha256(&self.secret);
        m.update(s.as_bytes());
        format!("hmac-sha256:{}", hex::encode(m.finalize().into_bytes()))
    }

    fn chain_mac(&self, body: &[u8]) -> String {
        let mut m = hmac_sha256(&self.chain);
        m.update(body);
        hex::encode(m.finalize().into_bytes())
    }

    /// Constant-time check of a chain MAC given as 64 hex digits.
    fn chain_verify(&self, body: &[u8], mac_hex: &str) -> bool {
        let Ok(expected) = hex::decode(mac_hex) else {
            return false;
        };
        let mut m = hmac_sha256(&self.chain);
        m.update(body);
        m.verify_slice(&expected).is_ok()
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(..)")
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
    /// Not JSON, not an object, or `seq`/`prev`/`mac` missing or ill-formed;
    /// also a last line without its newline (a truncated write).
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

struct Inner {
    file: File,
    /// Last line written (or found at open); `None` for a new chain.
    head: Option<(u64, String)>,
    /// Set after a partial write: the file now ends in a broken line, and
    /// appending more would only bury it.
    broken: Option<String>,
}

/// An open audit file. Appends are serialized by an internal mutex.
pub struct AuditLog {
    inner: Mutex<Inner>,
    key: AuditKey,
    /// fsync after each line (the data reaches the OS in any case).
    sync: bool,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("sync", &self.sync)
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

impl AuditLog {
    /// Opens (creating with mode 0600) an audit file and continues its chain
    /// from the last line. A last line that is incomplete, not a chained line
    /// or not verifiable with `key` is an error: continuing would hide it.
    pub fn open(path: &Path, key: AuditKey) -> Result<AuditLog> {
        if let Some(dir) = path.parent().filter(|d| !d.exists()) {
            crate::private::create_dir(dir)
                .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut file = open_options().create(true).open(path).map_err(|e| {
            Error::internal(format!("cannot open audit file {}: {e}", path.display()))
        })?;
        let head = match read_last_line(&mut file, path)? {
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
        Ok(AuditLog {
            inner: Mutex::new(Inner {
                file,
                head,
                broken: None,
            }),
            key,
            sync: false,
        })
    }

    /// Whether to fsync each line; off by default.
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    pub fn key(&self) -> &AuditKey {
        &self.key
    }

    /// `seq` and `mac` of the last line, e.g. to anchor the chain elsewhere
    /// (truncation at the end of the file is otherwise invisible).
    pub fn head(&self) -> Result<Option<(u64, String)>> {
        Ok(self.lock()?.head.clone())
    }

    /// Adds `seq`, `prev` and `mac` to the event (replacing any fields of
    /// those names), appends it as one line with one write call and returns
    /// the line without its '\n'.
    pub fn append(&self, mut event: Map<String, Value>) -> Result<String> {
        let mut inner = self.lock()?;
        if let Some(why) = &inner.broken {
            return Err(Error::internal(format!("audit log unusable: {why}")));
        }
        let (seq, prev) = match &inner.head {
            None => (1, GENESIS_PREV.to_string()),
            Some((s, mac)) => (
                s.checked_add(1)
                    .ok_or_else(|| Error::internal("audit sequence number overflow"))?,
                mac.clone(),
            ),
        };
        event.remove("mac");
        event.insert("seq".to_string(), Value::from(seq));
        event.insert("prev".to_string(), Value::from(prev));
        // Canonical form: without serde_json's `preserve_order` feature `Map`
        // is a BTreeMap, so keys come out sorted. The verifier MACs the
        // written bytes, so it does not depend on this.
        let body = serde_json::to_string(&event)
            .map_err(|e| Error::internal(format!("cannot serialize audit event: {e}")))?;
        let mac = self.key.chain_mac(body.as_bytes());
        let head = body
            .strip_suffix('}')
            .ok_or_else(|| Error::internal("audit event did not serialize to an object"))?;
        let line = format!("{head},\"mac\":\"{mac}\"}}");
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');

        // One write call, so the line is never interleaved with other writers.
        let written = loop {
            match inner.file.write(&buf) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other,
            }
        }?;
        if written != buf.len() {
            let why = format!(
                "short write to audit file ({written} of {} bytes)",
                buf.len()
            );
            inner.broken = Some(why.clone());
            return Err(Error::internal(why));
        }
        // The line is in the file now, so the chain moves on even if the
        // flush or fsync below fails.
        inner.head = Some((seq, mac));
        inner.file.flush()?;
        if self.sync {
            inner.file.sync_data()?;
        }
        Ok(line)
    }

    /// Continues the chain in a new file (which must not exist yet); its
    /// first line carries on `seq` and `prev` from the current file.
    pub fn rotate_to(&self, path: &Path) -> Result<()> {
        let mut inner = self.lock()?;
        let file = open_options().create_new(true).open(path).map_err(|e| {
            Error::internal(format!("cannot create audit file {}: {e}", path.display()))
        })?;
        if self.sync {
            inner.file.sync_data()?;
        }
        inner.file = file;
        inner.broken = None;
        Ok(())
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::internal("audit log lock poisoned"))
    }
}

/// The last line of the file without its '\n', read backwards from the end
/// so that opening a large file stays cheap. `None` for an empty file.
fn read_last_line(file: &mut File, path: &Path) -> Result<Option<Vec<u8>>> {
    const CHUNK: u64 = 8192;
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(None);
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] != b'\n' {
        return Err(Error::internal(format!(
            "audit file {}: last line is incomplete (no trailing newline; truncated write?); \
             refusing to continue the chain, rotate or inspect the file",
            path.display()
        )));
    }
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut end = len - 1;
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let size = usize::try_from(end - start)
            .map_err(|_| Error::internal("audit file chunk size overflow"))?;
        let mut chunk = vec![0u8; size];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        if let Some(pos) = chunk.iter().rposition(|&b| b == b'\n') {
            chunks.push(chunk.split_off(pos + 1));
            break;
        }
        chunks.push(chunk);
        end = start;
    }
    Ok(Some(chunks.into_iter().rev().flatten().collect()))
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
        let complete = buf.last() == Some(&b'\n');
        if complete {
            buf.pop();
        }
        let Ok(text) = std::str::from_utf8(&buf) else {
            return Ok(bad(line_no, Tamper::Malformed, "not UTF-8".to_string()));
        };
        let link = match verify_line(text, key) {
            Ok(link) => link,
            Err((kind, detail)) => return Ok(bad(line_no, kind, detail)),
        };
        if !complete {
            return Ok(bad(
                line_no,
                Tamper::Malformed,
                "last line has no trailing newline (truncated write?)".to_string(),
            ));
        }
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

    fn key() -> AuditKey {
        AuditKey::new([7u8; 32])
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

    fn dir_and_path() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        (dir, path)
    }

    fn write_chain(path: &Path, n: u64) {
        let log = AuditLog::open(path, key()).unwrap();
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
        let log = AuditLog::open(&path, key()).unwrap();
        let a = log.append(event(1)).unwrap();
        let b = log.append(event(2)).unwrap();
        assert_eq!(read_lines(&path), vec![a.clone(), b]);
        let link = verify_line(&a, &key()).unwrap();
        assert_eq!(link.seq, 1);
        assert_eq!(log.head().unwrap().map(|h| h.0), Some(2));
    }

    #[test]
    fn body_is_sorted_keys() {
        // Guards the canonical form: fails if `preserve_order` gets enabled.
        let (_d, path) = dir_and_path();
        let log = AuditLog::open(&path, key()).unwrap();
        let mut m = Map::new();
        m.insert("zeta".into(), json!(1));
        m.insert("alpha".into(), json!({"y": 1, "b": 2}));
        let line = log.append(m).unwrap();
        assert!(line.starts_with(r#"{"alpha":{"b":2,"y":1},"prev":""#));
        assert!(line.contains(r#","seq":1,"zeta":1,"mac":""#));
    }

    #[test]
    fn chain_fields_in_the_event_are_replaced() {
        let (_d, path) = dir_and_path();
        let log = AuditLog::open(&path, key()).unwrap();
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
        let mut log = AuditLog::open(&path, key()).unwrap();
        log.set_sync(true);
        let line = log.append(event(4)).unwrap();
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
        let log = AuditLog::open(&path, key()).unwrap();
        log.append(event(1)).unwrap();
        let mut big = event(2);
        big.insert("blob".into(), json!("x".repeat(30_000)));
        log.append(big).unwrap();
        drop(log);
        let log = AuditLog::open(&path, key()).unwrap();
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
        let err = AuditLog::open(&path, key()).unwrap_err();
        assert!(err.to_string().contains("refusing"), "{err}");

        write_chain(&path.with_extension("2"), 2);
        assert!(AuditLog::open(&path.with_extension("2"), AuditKey::new([8u8; 32])).is_err());

        std::fs::write(&path, "{\"seq\":1}\n").unwrap();
        assert!(AuditLog::open(&path, key()).is_err());
        std::fs::write(&path, "garbage").unwrap();
        assert!(AuditLog::open(&path, key()).is_err());
        std::fs::write(&path, "\n").unwrap();
        assert!(AuditLog::open(&path, key()).is_err());
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
    fn truncated_last_line_is_malformed() {
        let (_d, path) = dir_and_path();
        write_chain(&path, 5);
        let text = std::fs::read_to_string(&path).unwrap();
        let cut = text.len() - 40;
        std::fs::write(&path, &text[..cut]).unwrap();
        assert_bad(&path, &key(), 5, Tamper::Malformed);
        // Only the newline missing: still a truncated write.
        std::fs::write(&path, text.trim_end()).unwrap();
        assert_bad(&path, &key(), 5, Tamper::Malformed);
        assert!(AuditLog::open(&path, key()).is_err());
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
        let next = path.with_extension("1");
        let log = AuditLog::open(&path, key()).unwrap();
        log.append(event(1)).unwrap();
        log.append(event(2)).unwrap();
        log.rotate_to(&next).unwrap();
        let line = log.append(event(3)).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["seq"], 3);
        assert!(log.rotate_to(&next).is_err());
        assert_eq!(
            verify_file(&path, &key()).unwrap(),
            VerifyOutcome::Ok { lines: 2 }
        );
        assert_eq!(
            verify_file(&next, &key()).unwrap(),
            VerifyOutcome::Ok { lines: 1 }
        );
    }

    #[test]
    fn empty_file_verifies() {
        let (_d, path) = dir_and_path();
        drop(AuditLog::open(&path, key()).unwrap());
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
        drop(AuditLog::open(&path, key()).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn hmac_format_and_padded_key_matches() {
        let k = key();
        let h = k.hmac("s3cret");
        assert!(h.starts_with("hmac-sha256:"));
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
        let log = AuditLog::open(&path, key()).unwrap();
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
        let log = std::sync::Arc::new(AuditLog::open(&path, key()).unwrap());
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
}
