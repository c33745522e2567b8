//! OpenSSH Key Revocation Lists (KRLs): writing them, and reading them back.
//!
//! A KRL is the binary revocation file that `sshd` loads through
//! `RevokedKeys` and that `ssh-keygen -Q` checks keys against. Its format is
//! OpenSSH's `PROTOCOL.krl`. No Rust crate writes KRLs (`ssh-key` reads and
//! writes keys and certificates, not revocation lists), so this module is a
//! hand-written encoder and decoder for that format:
//!
//! ```text
//! uint64 KRL_MAGIC 0x5353484b524c0a00 ("SSHKRL\n\0")
//! uint32 format version (1)
//! uint64 krl_version, uint64 generated_date, uint64 flags (0)
//! string reserved, string comment
//! then sections: byte type, string data
//!   1 certificates: string ca_key (empty = any CA), string reserved,
//!     then sub-sections: byte type, string data
//!       0x20 serial list (uint64…), 0x21 serial range (uint64 min, max),
//!       0x22 serial bitmap (uint64 offset, mpint bits), 0x23 key IDs (string…)
//!   2 explicit keys (string public key blob…)
//!   3 / 5 SHA1 / SHA256 fingerprints (string hash…)
//! ```
//!
//! "string" is a big-endian uint32 length followed by that many bytes.
//!
//! The writer lays the file out the way OpenSSH's `ssh_krl_to_blob` does:
//! one certificates section per CA, serials in ascending order (runs of
//! consecutive serials as range sub-sections, the rest in list
//! sub-sections), key IDs sorted, explicit keys sorted by blob, everything
//! de-duplicated. It never writes what OpenSSH would refuse to load (serial
//! 0, NUL bytes in C strings), because `sshd` treats a KRL it cannot load as
//! "every key is revoked".

use std::collections::{BTreeSet, HashMap};
use std::ops::RangeInclusive;

use sha2::{Digest, Sha256};
use ssh_key::public::KeyData;
use ssh_key::{Certificate, PublicKey};

use crate::error::{Error, Result};

const KRL_MAGIC: &[u8; 8] = b"SSHKRL\n\0";
const KRL_FORMAT_VERSION: u32 = 1;

const SECTION_CERTIFICATES: u8 = 1;
const SECTION_EXPLICIT_KEY: u8 = 2;
const SECTION_FINGERPRINT_SHA1: u8 = 3;
const SECTION_SIGNATURE: u8 = 4;
const SECTION_FINGERPRINT_SHA256: u8 = 5;
const SECTION_EXTENSION: u8 = 255;

const CERT_SERIAL_LIST: u8 = 0x20;
const CERT_SERIAL_RANGE: u8 = 0x21;
const CERT_SERIAL_BITMAP: u8 = 0x22;
const CERT_KEY_ID: u8 = 0x23;
const CERT_EXTENSION: u8 = 0x39;

/// A run of at least this many consecutive serials is written as a range
/// sub-section (21 bytes) rather than as list entries (8 bytes each): from
/// three serials on, the range is the smaller of the two.
const MIN_RANGE_RUN: u64 = 3;

/// OpenSSH's limit on an mpint (`SSHBUF_MAX_BIGNUM`), which bounds a serial
/// bitmap to 16384 bits.
const MAX_BITMAP_BYTES: usize = 16384 / 8;

/// Everything revoked under one CA.
#[derive(Default, Clone, Debug)]
pub struct CaRevocations {
    /// Certificate serial numbers. Serial 0 means "no serial" to OpenSSH,
    /// which never matches it and refuses KRLs that list it, so it is left
    /// out of the file.
    pub serials: Vec<u64>,
    /// Certificate key IDs (`ssh-keygen -I`).
    pub key_ids: Vec<String>,
}

impl CaRevocations {
    /// Whether nothing is revoked (no section is written for such a CA).
    pub fn is_empty(&self) -> bool {
        self.serials.iter().all(|&s| s == 0) && self.key_ids.is_empty()
    }
}

/// A KRL to write with [`Krl::to_bytes`].
#[derive(Default, Clone, Debug)]
pub struct Krl {
    /// `krl_version`: increases with each change.
    pub version: u64,
    /// `generated_date` in Unix seconds; the caller passes it (this module
    /// reads no clock).
    pub generated: u64,
    pub comment: String,
    /// Per CA public key. The same CA may appear more than once; its entries
    /// are merged.
    pub certs: Vec<(PublicKey, CaRevocations)>,
    /// Keys (plain public keys, or the key inside a certificate) revoked
    /// outright.
    pub keys: Vec<PublicKey>,
}

impl Krl {
    /// Encodes the KRL in OpenSSH's binary format.
    ///
    /// Fails with [`Error::InvalidRequest`] when a comment or key ID holds a
    /// NUL byte (OpenSSH reads them as C strings and would reject the file),
    /// or when a section would exceed the format's 4 GiB string limit.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        out.extend_from_slice(KRL_MAGIC);
        put_u32(&mut out, KRL_FORMAT_VERSION);
        put_u64(&mut out, self.version);
        put_u64(&mut out, self.generated);
        put_u64(&mut out, 0); // flags: none defined
        put_string(&mut out, b"")?; // reserved
        put_string(&mut out, c_string(&self.comment, "KRL comment")?)?;

        for ca in self.merged_cas()? {
            if ca.serials.is_empty() && ca.key_ids.is_empty() {
                continue;
            }
            let section = cert_section(&ca)?;
            out.push(SECTION_CERTIFICATES);
            put_string(&mut out, &section)?;
        }

        // BTreeSet: sorted by blob bytes (OpenSSH's `blob_cmp` order) and
        // free of duplicates.
        let mut blobs = BTreeSet::new();
        for key in &self.keys {
            blobs.insert(key_blob(key.key_data())?);
        }
        if !blobs.is_empty() {
            let mut section = Vec::new();
            for blob in &blobs {
                put_string(&mut section, blob)?;
            }
            out.push(SECTION_EXPLICIT_KEY);
            put_string(&mut out, &section)?;
        }
        Ok(out)
    }

    /// Groups the revocations by CA key blob, in order of first appearance
    /// (as OpenSSH keeps its CAs), sorting and de-duplicating each group.
    fn merged_cas(&self) -> Result<Vec<MergedCa>> {
        let mut merged: Vec<MergedCa> = Vec::new();
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        for (ca, revs) in &self.certs {
            let blob = key_blob(ca.key_data())?;
            let i = *index.entry(blob.clone()).or_insert_with(|| {
                merged.push(MergedCa {
                    ca_blob: blob,
                    serials: BTreeSet::new(),
                    key_ids: BTreeSet::new(),
                });
                merged.len() - 1
            });
            let entry = &mut merged[i];
            entry
                .serials
                .extend(revs.serials.iter().copied().filter(|&s| s != 0));
            for id in &revs.key_ids {
                c_string(id, "certificate key ID")?;
                entry.key_ids.insert(id.clone());
            }
        }
        Ok(merged)
    }
}

/// One CA's revocations, canonicalised for writing.
struct MergedCa {
    ca_blob: Vec<u8>,
    serials: BTreeSet<u64>,
    key_ids: BTreeSet<String>,
}

/// The body of a certificates section: CA key, reserved, then the serial
/// sub-sections in ascending order and one key-ID sub-section.
fn cert_section(ca: &MergedCa) -> Result<Vec<u8>> {
    let mut section = Vec::new();
    put_string(&mut section, &ca.ca_blob)?;
    put_string(&mut section, b"")?; // reserved

    let mut list = Vec::new();
    for (lo, hi) in runs(&ca.serials) {
        if hi - lo >= MIN_RANGE_RUN - 1 {
            // Close the pending list first so sub-sections stay ascending.
            flush_list(&mut section, &mut list)?;
            let mut range = Vec::with_capacity(16);
            put_u64(&mut range, lo);
            put_u64(&mut range, hi);
            section.push(CERT_SERIAL_RANGE);
            put_string(&mut section, &range)?;
        } else {
            for serial in lo..=hi {
                put_u64(&mut list, serial);
            }
        }
    }
    flush_list(&mut section, &mut list)?;

    if !ca.key_ids.is_empty() {
        let mut ids = Vec::new();
        for id in &ca.key_ids {
            put_string(&mut ids, id.as_bytes())?;
        }
        section.push(CERT_KEY_ID);
        put_string(&mut section, &ids)?;
    }
    Ok(section)
}

fn flush_list(section: &mut Vec<u8>, list: &mut Vec<u8>) -> Result<()> {
    if !list.is_empty() {
        section.push(CERT_SERIAL_LIST);
        put_string(section, list)?;
        list.clear();
    }
    Ok(())
}

/// Maximal runs of consecutive serials, as inclusive `(first, last)` pairs.
fn runs(serials: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in serials {
        match out.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(s) => *hi = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// The SSH wire encoding of a plain public key (what KRLs call a blob).
fn key_blob(key: &KeyData) -> Result<Vec<u8>> {
    PublicKey::new(key.clone(), "")
        .to_bytes()
        .map_err(|e| Error::invalid(format!("cannot encode public key: {e}")))
}

/// OpenSSH reads comments and key IDs as C strings: refuse what it would.
fn c_string<'a>(s: &'a str, what: &str) -> Result<&'a [u8]> {
    if s.as_bytes().contains(&0) {
        return Err(Error::invalid(format!("{what} contains a NUL byte")));
    }
    Ok(s.as_bytes())
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    let len = u32::try_from(data.len())
        .map_err(|_| Error::invalid("KRL section exceeds the 4 GiB format limit"))?;
    put_u32(out, len);
    out.extend_from_slice(data);
    Ok(())
}

/// A KRL as read by [`parse`].
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct ParsedKrl {
    pub version: u64,
    pub generated: u64,
    pub flags: u64,
    /// Non-UTF-8 bytes are replaced (the comment is informational only).
    pub comment: String,
    /// Certificate revocations, one entry per CA (sections naming the same
    /// CA are merged), in order of first appearance.
    pub certs: Vec<ParsedCaRevocations>,
    /// Explicitly revoked public key blobs, sorted and de-duplicated.
    pub keys: Vec<Vec<u8>>,
    /// SHA-1 hashes of revoked key blobs, sorted and de-duplicated.
    pub sha1: Vec<[u8; 20]>,
    /// SHA-256 hashes of revoked key blobs, sorted and de-duplicated.
    pub sha256: Vec<[u8; 32]>,
}

/// Certificate revocations under one CA, as read by [`parse`].
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct ParsedCaRevocations {
    /// The CA public key blob; `None` means the revocations apply to
    /// certificates from any CA.
    pub ca_key: Option<Vec<u8>>,
    /// Serials from list sub-sections and single bits of bitmaps; sorted and
    /// de-duplicated.
    pub serials: Vec<u64>,
    /// Serial ranges, kept as ranges so a huge range costs no memory; runs
    /// of bits in bitmaps land here too. Sorted and de-duplicated.
    pub ranges: Vec<RangeInclusive<u64>>,
    /// Revoked key IDs, sorted and de-duplicated.
    pub key_ids: Vec<String>,
}

impl ParsedCaRevocations {
    /// Decodes the CA key (`None` for the any-CA section).
    pub fn ca_public_key(&self) -> Result<Option<PublicKey>> {
        self.ca_key
            .as_deref()
            .map(|blob| {
                PublicKey::from_bytes(blob)
                    .map_err(|e| Error::invalid(format!("KRL holds an unreadable CA key: {e}")))
            })
            .transpose()
    }

    /// Whether `serial` is revoked by a list entry or a range. Serial 0 never
    /// is, as in OpenSSH.
    pub fn revokes_serial(&self, serial: u64) -> bool {
        serial != 0
            && (self.serials.binary_search(&serial).is_ok()
                || self.ranges.iter().any(|r| r.contains(&serial)))
    }

    /// Every revoked serial, lists and ranges expanded, sorted; `None` if
    /// there are more than `max` (so a range such as 1..=2^64-1 cannot
    /// exhaust memory).
    pub fn expanded_serials(&self, max: usize) -> Option<Vec<u64>> {
        let mut all: BTreeSet<u64> = self.serials.iter().copied().collect();
        for r in &self.ranges {
            // Bound each range before expanding it, then the union.
            let len = r.end().checked_sub(*r.start())?.checked_add(1)?;
            if len > max as u64 {
                return None;
            }
            all.extend(r.clone());
            if all.len() > max {
                return None;
            }
        }
        if all.len() > max {
            return None;
        }
        Some(all.into_iter().collect())
    }

    fn revokes_cert(&self, cert: &Certificate) -> bool {
        self.key_ids
            .binary_search_by(|id| id.as_str().cmp(cert.key_id()))
            .is_ok()
            || self.revokes_serial(cert.serial())
    }
}

impl ParsedKrl {
    /// Whether a plain key is revoked by an explicit key or SHA-256
    /// fingerprint entry. SHA-1 entries are not consulted (no SHA-1
    /// implementation is linked in); `ssh-keygen` writes SHA-256 ones.
    pub fn revokes_key(&self, key: &KeyData) -> bool {
        let Ok(blob) = key_blob(key) else {
            return false;
        };
        let hash: [u8; 32] = Sha256::digest(&blob).into();
        self.keys.binary_search(&blob).is_ok() || self.sha256.binary_search(&hash).is_ok()
    }

    /// Whether a certificate is revoked: its key outright, or its serial or
    /// key ID under its CA or under the any-CA section (OpenSSH's checks,
    /// without verifying the certificate's signature).
    pub fn revokes_cert(&self, cert: &Certificate) -> bool {
        if self.revokes_key(cert.public_key()) {
            return true;
        }
        let Ok(ca_blob) = key_blob(cert.signature_key()) else {
            return false;
        };
        self.certs.iter().any(|section| {
            let applies = match &section.ca_key {
                None => true,
                Some(blob) => *blob == ca_blob,
            };
            applies && section.revokes_cert(cert)
        })
    }
}

/// Parses a KRL written by [`Krl::to_bytes`] or by `ssh-keygen -k`.
///
/// Rejects with [`Error::InvalidRequest`] what OpenSSH rejects: bad magic or
/// format version, truncated or trailing data in any section, serial 0 or
/// inverted ranges, unknown section types, critical extensions, and signed
/// KRLs (refused since OpenSSH 9.4). Every length is bounds-checked, so
/// arbitrary input never panics.
pub fn parse(bytes: &[u8]) -> Result<ParsedKrl> {
    let mut r = Reader::new(bytes);
    if r.take(KRL_MAGIC.len())? != KRL_MAGIC {
        return Err(Error::invalid("not a KRL: bad magic"));
    }
    let format = r.u32()?;
    if format != KRL_FORMAT_VERSION {
        return Err(Error::invalid(format!(
            "unsupported KRL format version {format}"
        )));
    }
    let mut krl = ParsedKrl {
        version: r.u64()?,
        generated: r.u64()?,
        flags: r.u64()?,
        ..ParsedKrl::default()
    };
    r.string()?; // reserved
    krl.comment = String::from_utf8_lossy(c_str(r.string()?, "comment")?).into_owned();

    while !r.is_empty() {
        let kind = r.u8()?;
        if kind == SECTION_SIGNATURE {
            return Err(Error::invalid("signed KRLs are not supported"));
        }
        let mut s = Reader::new(r.string()?);
        match kind {
            SECTION_CERTIFICATES => parse_cert_section(&mut s, &mut krl.certs)?,
            SECTION_EXPLICIT_KEY => {
                while !s.is_empty() {
                    krl.keys.push(s.string()?.to_vec());
                }
            }
            SECTION_FINGERPRINT_SHA1 => {
                while !s.is_empty() {
                    krl.sha1.push(fixed(s.string()?, "SHA1 fingerprint")?);
                }
            }
            SECTION_FINGERPRINT_SHA256 => {
                while !s.is_empty() {
                    krl.sha256.push(fixed(s.string()?, "SHA256 fingerprint")?);
                }
            }
            SECTION_EXTENSION => extension(&mut s)?,
            other => {
                return Err(Error::invalid(format!(
                    "unsupported KRL section type {other}"
                )))
            }
        }
        s.finish("section")?;
    }

    sort_dedup(&mut krl.keys);
    sort_dedup(&mut krl.sha1);
    sort_dedup(&mut krl.sha256);
    for ca in &mut krl.certs {
        sort_dedup(&mut ca.serials);
        ca.ranges
            .sort_by_key(|range| (*range.start(), *range.end()));
        ca.ranges.dedup();
        sort_dedup(&mut ca.key_ids);
    }
    Ok(krl)
}

/// One certificates section, merged into the entry for its CA.
fn parse_cert_section(s: &mut Reader<'_>, certs: &mut Vec<ParsedCaRevocations>) -> Result<()> {
    let ca_blob = s.string()?;
    s.string()?; // reserved
    let ca_key = (!ca_blob.is_empty()).then(|| ca_blob.to_vec());
    let i = match certs.iter().position(|c| c.ca_key == ca_key) {
        Some(i) => i,
        None => {
            certs.push(ParsedCaRevocations {
                ca_key,
                ..ParsedCaRevocations::default()
            });
            certs.len() - 1
        }
    };
    let ca = &mut certs[i];

    while !s.is_empty() {
        let kind = s.u8()?;
        let mut sub = Reader::new(s.string()?);
        match kind {
            CERT_SERIAL_LIST => {
                while !sub.is_empty() {
                    let serial = sub.u64()?;
                    if serial == 0 {
                        return Err(Error::invalid("KRL revokes serial 0"));
                    }
                    ca.serials.push(serial);
                }
            }
            CERT_SERIAL_RANGE => {
                let (lo, hi) = (sub.u64()?, sub.u64()?);
                if lo == 0 || lo > hi {
                    return Err(Error::invalid(format!(
                        "KRL has an invalid serial range {lo}-{hi}"
                    )));
                }
                ca.ranges.push(lo..=hi);
            }
            CERT_SERIAL_BITMAP => {
                let offset = sub.u64()?;
                let bits = mpint(sub.string()?)?;
                for (first, last) in bitmap_runs(bits) {
                    let lo = offset.checked_add(first);
                    let hi = offset.checked_add(last);
                    match (lo, hi) {
                        (Some(lo), Some(hi)) if lo != 0 => {
                            if lo == hi {
                                ca.serials.push(lo);
                            } else {
                                ca.ranges.push(lo..=hi);
                            }
                        }
                        _ => return Err(Error::invalid("KRL serial bitmap is out of range")),
                    }
                }
            }
            CERT_KEY_ID => {
                while !sub.is_empty() {
                    let id = c_str(sub.string()?, "key ID")?;
                    let id = std::str::from_utf8(id)
                        .map_err(|_| Error::invalid("KRL key ID is not UTF-8"))?;
                    ca.key_ids.push(id.to_string());
                }
            }
            CERT_EXTENSION => extension(&mut sub)?,
            other => {
                return Err(Error::invalid(format!(
                    "unsupported KRL certificate section type {other:#04x}"
                )))
            }
        }
        sub.finish("certificate section")?;
    }
    Ok(())
}

/// An extension (section or certificate sub-section): name, critical flag,
/// contents. None are defined, so a critical one makes the KRL unusable.
fn extension(s: &mut Reader<'_>) -> Result<()> {
    let name = String::from_utf8_lossy(s.string()?).into_owned();
    let critical = s.u8()?;
    s.string()?;
    if critical != 0 {
        return Err(Error::invalid(format!(
            "KRL has an unsupported critical extension {name:?}"
        )));
    }
    Ok(())
}

/// The magnitude bytes of a non-negative mpint, under OpenSSH's size limit.
fn mpint(raw: &[u8]) -> Result<&[u8]> {
    if raw.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(Error::invalid("KRL serial bitmap is negative"));
    }
    let digits = match raw.iter().position(|&b| b != 0) {
        Some(first) => &raw[first..],
        None => &[],
    };
    if digits.len() > MAX_BITMAP_BYTES {
        return Err(Error::invalid("KRL serial bitmap is too large"));
    }
    Ok(digits)
}

/// Runs of set bits in a big-endian bitmap (bit 0 is the lowest bit of the
/// last byte), as inclusive `(first, last)` bit indexes.
fn bitmap_runs(bits: &[u8]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, byte) in bits.iter().rev().enumerate() {
        for b in 0..8u64 {
            if byte & (1 << b) == 0 {
                continue;
            }
            let index = i as u64 * 8 + b;
            match out.last_mut() {
                Some((_, last)) if *last + 1 == index => *last = index,
                _ => out.push((index, index)),
            }
        }
    }
    out
}

/// A C string as OpenSSH's `sshbuf_get_cstring` accepts it: one trailing NUL
/// at most, none inside.
fn c_str<'a>(raw: &'a [u8], what: &str) -> Result<&'a [u8]> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.contains(&0) {
        return Err(Error::invalid(format!("KRL {what} contains a NUL byte")));
    }
    Ok(raw)
}

fn fixed<const N: usize>(raw: &[u8], what: &str) -> Result<[u8; N]> {
    raw.try_into()
        .map_err(|_| Error::invalid(format!("KRL {what} has length {}, not {N}", raw.len())))
}

fn sort_dedup<T: Ord>(v: &mut Vec<T>) {
    v.sort();
    v.dedup();
}

/// A bounds-checked cursor over SSH wire data.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(Error::invalid("truncated KRL"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn string(&mut self) -> Result<&'a [u8]> {
        let len = usize::try_from(self.u32()?).map_err(|_| Error::invalid("truncated KRL"))?;
        self.take(len)
    }

    /// OpenSSH refuses sections with bytes left over after their contents.
    fn finish(&self, what: &str) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(format!("KRL {what} has trailing data")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A scratch directory with ssh-keygen-made keys and certificates.
    struct Lab {
        dir: tempfile::TempDir,
    }

    impl Lab {
        fn new() -> Self {
            Lab {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// `ssh-keygen -t <args>` into `name`; returns the public key.
        fn keygen(&self, name: &str, args: &[&str]) -> PublicKey {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-N", "", "-C", name, "-f"])
                .arg(self.path(name))
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            PublicKey::read_openssh_file(&self.path(&format!("{name}.pub"))).unwrap()
        }

        fn ed25519(&self, name: &str) -> PublicKey {
            self.keygen(name, &["-t", "ed25519"])
        }

        /// Signs `user`'s public key with CA `ca` as certificate `name`.
        fn sign(&self, ca: &str, user: &str, name: &str, id: &str, serial: u64) -> PathBuf {
            // ssh-keygen names the certificate after the key file, so sign a
            // copy named after the certificate.
            let copy = self.path(&format!("{name}.pub"));
            std::fs::copy(self.path(&format!("{user}.pub")), &copy).unwrap();
            let out = Command::new("ssh-keygen")
                .arg("-q")
                .arg("-s")
                .arg(self.path(ca))
                .args(["-I", id, "-n", "user", "-z", &serial.to_string()])
                // A bounded validity: ssh-key refuses "forever" (u64::MAX).
                .args(["-V", "20200101:20991231"])
                .arg(&copy)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            self.path(&format!("{name}-cert.pub"))
        }

        fn write_krl(&self, name: &str, krl: &Krl) -> PathBuf {
            let path = self.path(name);
            std::fs::write(&path, krl.to_bytes().unwrap()).unwrap();
            path
        }
    }

    /// `ssh-keygen -Q`: Some(true) revoked, Some(false) ok, None if it could
    /// not load the KRL.
    fn query(krl: &Path, key: &Path) -> Option<bool> {
        let out = Command::new("ssh-keygen")
            .arg("-Q")
            .arg("-f")
            .arg(krl)
            .arg(key)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        match out.status.code() {
            Some(1) if stdout.contains("REVOKED") => Some(true),
            Some(0) if stdout.trim_end().ends_with("ok") => Some(false),
            _ => None,
        }
    }

    fn cert(path: &Path) -> Certificate {
        Certificate::read_file(path).unwrap()
    }

    fn ca_revs(serials: &[u64], key_ids: &[&str]) -> CaRevocations {
        CaRevocations {
            serials: serials.to_vec(),
            key_ids: key_ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn empty_krl_has_the_openssh_header_and_revokes_nothing() {
        let lab = Lab::new();
        let krl = Krl {
            version: 3,
            generated: 1_700_000_000,
            comment: "gatepass".into(),
            ..Krl::default()
        };
        let bytes = krl.to_bytes().unwrap();
        let mut want = b"SSHKRL\n\0".to_vec();
        want.extend_from_slice(&1u32.to_be_bytes());
        want.extend_from_slice(&3u64.to_be_bytes());
        want.extend_from_slice(&1_700_000_000u64.to_be_bytes());
        want.extend_from_slice(&0u64.to_be_bytes());
        want.extend_from_slice(&0u32.to_be_bytes());
        want.extend_from_slice(&8u32.to_be_bytes());
        want.extend_from_slice(b"gatepass");
        assert_eq!(bytes, want);
        assert_eq!(&bytes[..8], &0x5353_484b_524c_0a00u64.to_be_bytes());

        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.version, 3);
        assert_eq!(parsed.generated, 1_700_000_000);
        assert_eq!(parsed.comment, "gatepass");
        assert!(parsed.certs.is_empty() && parsed.keys.is_empty());

        lab.ed25519("ca");
        lab.ed25519("user");
        let path = lab.write_krl("empty.krl", &krl);
        let c = lab.sign("ca", "user", "c1", "alice", 1);
        assert_eq!(query(&path, &c), Some(false));
        assert_eq!(query(&path, &lab.path("user.pub")), Some(false));
        // CA entries with nothing revoked write no section at all.
        let ca = PublicKey::read_openssh_file(&lab.path("ca.pub")).unwrap();
        let hollow = Krl {
            certs: vec![(ca, ca_revs(&[0], &[]))],
            ..krl.clone()
        };
        assert_eq!(hollow.to_bytes().unwrap(), bytes);
    }

    #[test]
    fn ssh_keygen_sees_revoked_serials_key_ids_and_keys() {
        let lab = Lab::new();
        let ca = lab.ed25519("ca");
        lab.ed25519("other_ca");
        lab.ed25519("user");
        let bad_user = lab.ed25519("bad_user");

        let by_serial = lab.sign("ca", "user", "by_serial", "alice", 42);
        let by_id = lab.sign("ca", "user", "by_id", "mallory", 1000);
        let fine = lab.sign("ca", "user", "fine", "alice", 43);
        let other = lab.sign("other_ca", "user", "other", "mallory", 42);
        let by_key = lab.sign("ca", "bad_user", "by_key", "bob", 7);

        let krl = Krl {
            version: 1,
            generated: 1_700_000_000,
            comment: String::new(),
            certs: vec![(ca, ca_revs(&[42], &["mallory"]))],
            keys: vec![bad_user],
        };
        let path = lab.write_krl("test.krl", &krl);
        assert_eq!(query(&path, &by_serial), Some(true), "revoked serial");
        assert_eq!(query(&path, &by_id), Some(true), "revoked key ID");
        assert_eq!(query(&path, &by_key), Some(true), "revoked key in a cert");
        assert_eq!(query(&path, &lab.path("bad_user.pub")), Some(true));
        assert_eq!(query(&path, &fine), Some(false), "other serial");
        assert_eq!(query(&path, &other), Some(false), "other CA");
        assert_eq!(query(&path, &lab.path("user.pub")), Some(false));
        assert_eq!(query(&path, &lab.path("other_ca.pub")), Some(false));

        // The parser agrees with ssh-keygen.
        let parsed = parse(&std::fs::read(&path).unwrap()).unwrap();
        assert!(parsed.revokes_cert(&cert(&by_serial)));
        assert!(parsed.revokes_cert(&cert(&by_id)));
        assert!(parsed.revokes_cert(&cert(&by_key)));
        assert!(!parsed.revokes_cert(&cert(&fine)));
        assert!(!parsed.revokes_cert(&cert(&other)));
        assert!(parsed.revokes_key(cert(&by_key).public_key()));
        assert!(!parsed.revokes_key(cert(&fine).public_key()));
    }

    #[test]
    fn consecutive_serials_become_ranges_and_both_kinds_revoke() {
        let lab = Lab::new();
        let ca = lab.ed25519("ca");
        lab.ed25519("user");
        let krl = Krl {
            version: 2,
            generated: 1,
            certs: vec![(ca.clone(), ca_revs(&[8, 20, 5, 7, 6, 42, 43, 6], &[]))],
            ..Krl::default()
        };
        let bytes = krl.to_bytes().unwrap();
        let parsed = parse(&bytes).unwrap();
        let section = &parsed.certs[0];
        assert_eq!(section.ca_key.as_deref(), Some(&ca.to_bytes().unwrap()[..]));
        assert_eq!(section.ranges, vec![5..=8]);
        // A pair costs less as two list entries than as a range.
        assert_eq!(section.serials, vec![20, 42, 43]);

        // Sub-section layout: range 5-8, then one list 20, 42, 43.
        let mut want = Vec::new();
        put_string(&mut want, &ca.to_bytes().unwrap()).unwrap();
        put_string(&mut want, b"").unwrap();
        want.push(CERT_SERIAL_RANGE);
        want.extend_from_slice(&16u32.to_be_bytes());
        want.extend_from_slice(&5u64.to_be_bytes());
        want.extend_from_slice(&8u64.to_be_bytes());
        want.push(CERT_SERIAL_LIST);
        want.extend_from_slice(&24u32.to_be_bytes());
        for s in [20u64, 42, 43] {
            want.extend_from_slice(&s.to_be_bytes());
        }
        let header = Krl {
            version: 2,
            generated: 1,
            ..Krl::default()
        }
        .to_bytes()
        .unwrap();
        assert_eq!(bytes[header.len()], SECTION_CERTIFICATES);
        assert_eq!(&bytes[header.len() + 5..], &want[..]);

        let path = lab.write_krl("ranges.krl", &krl);
        for (serial, revoked) in [
            (4, false),
            (5, true),
            (6, true),
            (8, true),
            (9, false),
            (20, true),
            (21, false),
            (43, true),
        ] {
            let c = lab.sign("ca", "user", &format!("s{serial}"), "id", serial);
            assert_eq!(query(&path, &c), Some(revoked), "serial {serial}");
        }
    }

    #[test]
    fn ranges_and_lists_interleave_in_ascending_order() {
        let ca = PublicKey::from_openssh(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnu9ixO5QRgwyHcRf3dzBK5Xmr6sn2ehU+G5rKUmDmF",
        )
        .unwrap();
        let serials = [1, 3, 4, 5, 9, u64::MAX - 1, u64::MAX, u64::MAX - 2, 11];
        let krl = Krl {
            certs: vec![(ca, ca_revs(&serials, &[]))],
            ..Krl::default()
        };
        let parsed = parse(&krl.to_bytes().unwrap()).unwrap();
        assert_eq!(parsed.certs[0].serials, vec![1, 9, 11]);
        assert_eq!(parsed.certs[0].ranges, vec![3..=5, u64::MAX - 2..=u64::MAX]);
    }

    #[test]
    fn round_trip_merges_sorts_and_deduplicates() {
        let lab = Lab::new();
        let ca1 = lab.ed25519("ca1");
        let ca2 = lab.ed25519("ca2");
        let k1 = lab.ed25519("k1");
        let k2 = lab.ed25519("k2");
        let mut ca1_again = ca1.clone();
        ca1_again.set_comment("same key, other comment");
        let krl = Krl {
            version: 9,
            generated: 1_234,
            comment: "round trip".into(),
            certs: vec![
                (ca2.clone(), ca_revs(&[3, 0], &["zed", "amy", "zed"])),
                (ca1.clone(), ca_revs(&[100, 101, 102, 7], &[])),
                (ca1_again, ca_revs(&[7, 50], &["bob"])),
            ],
            keys: vec![k2.clone(), k1.clone(), k2.clone()],
        };
        let bytes = krl.to_bytes().unwrap();
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.version, 9);
        assert_eq!(parsed.generated, 1_234);
        assert_eq!(parsed.flags, 0);
        assert_eq!(parsed.comment, "round trip");
        assert_eq!(
            parsed.certs,
            vec![
                ParsedCaRevocations {
                    ca_key: Some(ca2.to_bytes().unwrap()),
                    serials: vec![3],
                    ranges: vec![],
                    key_ids: vec!["amy".into(), "zed".into()],
                },
                ParsedCaRevocations {
                    ca_key: Some(ca1.to_bytes().unwrap()),
                    serials: vec![7, 50],
                    ranges: vec![100..=102],
                    key_ids: vec!["bob".into()],
                },
            ]
        );
        let decoded = parsed.certs[1].ca_public_key().unwrap().unwrap();
        assert_eq!(decoded.key_data(), ca1.key_data());
        let mut blobs = vec![k1.to_bytes().unwrap(), k2.to_bytes().unwrap()];
        blobs.sort();
        assert_eq!(parsed.keys, blobs);
        assert!(parsed.sha1.is_empty() && parsed.sha256.is_empty());
        assert_eq!(
            parsed.certs[1].expanded_serials(10),
            Some(vec![7, 50, 100, 101, 102])
        );
        assert_eq!(parsed.certs[1].expanded_serials(4), None);

        // Input order does not change the output.
        let mut shuffled = krl.clone();
        shuffled.keys.reverse();
        shuffled.certs[0].1.serials.reverse();
        shuffled.certs[0].1.key_ids.reverse();
        assert_eq!(shuffled.to_bytes().unwrap(), bytes);

        let path = lab.write_krl("rt.krl", &krl);
        let listed = Command::new("ssh-keygen")
            .args(["-Q", "-l", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(listed.status.success(), "{listed:?}");
        let text = String::from_utf8_lossy(&listed.stdout);
        assert!(text.contains("# KRL version 9"), "{text}");
        assert!(text.contains("serial: 100-102"), "{text}");
        assert!(text.contains("id: bob"), "{text}");
    }

    #[test]
    fn ecdsa_and_rsa_ca_keys() {
        let lab = Lab::new();
        let p256 = lab.keygen("p256", &["-t", "ecdsa", "-b", "256"]);
        let p384 = lab.keygen("p384", &["-t", "ecdsa", "-b", "384"]);
        let rsa = lab.keygen("rsa", &["-t", "rsa", "-b", "2048"]);
        lab.ed25519("user");
        let krl = Krl {
            version: 1,
            generated: 1,
            certs: vec![
                (p256.clone(), ca_revs(&[10], &[])),
                (p384.clone(), ca_revs(&[], &["eve"])),
                (rsa.clone(), ca_revs(&[30, 31, 32], &[])),
            ],
            ..Krl::default()
        };
        let path = lab.write_krl("cas.krl", &krl);
        let cases = [
            ("p256", "ann", 10, true),
            ("p256", "ann", 11, false),
            ("p384", "eve", 10, true),
            ("p384", "ann", 10, false),
            ("rsa", "ann", 31, true),
            ("rsa", "ann", 10, false),
        ];
        for (ca, id, serial, revoked) in cases {
            let c = lab.sign(ca, "user", &format!("{ca}-{id}-{serial}"), id, serial);
            assert_eq!(query(&path, &c), Some(revoked), "{ca} {id} {serial}");
            assert_eq!(
                parse(&std::fs::read(&path).unwrap())
                    .unwrap()
                    .revokes_cert(&cert(&c)),
                revoked
            );
        }
        let parsed = parse(&std::fs::read(&path).unwrap()).unwrap();
        let cas: Vec<_> = parsed
            .certs
            .iter()
            .map(|c| c.ca_public_key().unwrap().unwrap().key_data().clone())
            .collect();
        assert_eq!(
            cas,
            vec![
                p256.key_data().clone(),
                p384.key_data().clone(),
                rsa.key_data().clone()
            ]
        );
    }

    #[test]
    fn parses_a_krl_made_by_ssh_keygen() {
        let lab = Lab::new();
        let ca = lab.ed25519("ca");
        let key = lab.ed25519("key");
        let hashed = lab.ed25519("hashed");
        let fp = hashed.fingerprint(ssh_key::HashAlg::Sha256).to_string();
        let spec = format!(
            "serial: 1-3\nserial: 10\nid: foo\nkey: {}\nhash: {fp}\n",
            key.to_openssh().unwrap()
        );
        std::fs::write(lab.path("spec"), spec).unwrap();
        let out = Command::new("ssh-keygen")
            .args(["-k", "-z", "7", "-f"])
            .arg(lab.path("ref.krl"))
            .arg("-s")
            .arg(lab.path("ca.pub"))
            .arg(lab.path("spec"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");

        let parsed = parse(&std::fs::read(lab.path("ref.krl")).unwrap()).unwrap();
        assert_eq!(parsed.version, 7);
        assert_eq!(parsed.certs.len(), 1);
        let section = &parsed.certs[0];
        assert_eq!(section.ca_key, Some(ca.to_bytes().unwrap()));
        assert_eq!(section.key_ids, vec!["foo".to_string()]);
        assert_eq!(section.expanded_serials(100), Some(vec![1, 2, 3, 10]));
        assert!(section.revokes_serial(2) && !section.revokes_serial(4));
        assert_eq!(parsed.keys, vec![key.to_bytes().unwrap()]);
        let hash: [u8; 32] = Sha256::digest(hashed.to_bytes().unwrap()).into();
        assert_eq!(parsed.sha256, vec![hash]);
        assert!(parsed.revokes_key(hashed.key_data()));
        assert!(parsed.revokes_key(key.key_data()));
        assert!(!parsed.revokes_key(ca.key_data()));
    }

    #[test]
    fn matches_ssh_keygen_byte_for_byte() {
        // Without serials (where ssh-keygen may pick bitmaps), both writers
        // lay out the same file.
        let lab = Lab::new();
        let ca = lab.ed25519("ca");
        let k1 = lab.ed25519("k1");
        let k2 = lab.keygen("k2", &["-t", "ecdsa"]);
        let spec = format!(
            "id: zed\nid: amy\nkey: {}\nkey: {}\nid: amy\n",
            k2.to_openssh().unwrap(),
            k1.to_openssh().unwrap()
        );
        std::fs::write(lab.path("spec"), spec).unwrap();
        let out = Command::new("ssh-keygen")
            .args(["-k", "-z", "5", "-f"])
            .arg(lab.path("ref.krl"))
            .arg("-s")
            .arg(lab.path("ca.pub"))
            .arg(lab.path("spec"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let reference = std::fs::read(lab.path("ref.krl")).unwrap();
        let generated = parse(&reference).unwrap().generated;
        let ours = Krl {
            version: 5,
            generated,
            comment: String::new(),
            certs: vec![(ca, ca_revs(&[], &["amy", "zed"]))],
            keys: vec![k1, k2],
        };
        assert_eq!(ours.to_bytes().unwrap(), reference);
    }

    #[test]
    fn random_serial_sets_survive_the_round_trip() {
        let lab = Lab::new();
        let ca = lab.ed25519("ca");
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..20 {
            let mut serials = Vec::new();
            for _ in 0..rng.gen_range(1..40) {
                let start = rng.gen_range(0..500u64);
                for s in start..start + rng.gen_range(1..6) {
                    serials.push(s);
                }
            }
            let krl = Krl {
                version: round,
                certs: vec![(ca.clone(), ca_revs(&serials, &[]))],
                ..Krl::default()
            };
            let parsed = parse(&krl.to_bytes().unwrap()).unwrap();
            let mut want: Vec<u64> = serials.into_iter().filter(|&s| s != 0).collect();
            want.sort();
            want.dedup();
            assert_eq!(parsed.certs[0].expanded_serials(10_000), Some(want.clone()));
            // Ranges hold at least three serials; no two pieces touch.
            let section = &parsed.certs[0];
            assert!(section.ranges.iter().all(|r| r.end() - r.start() >= 2));
            if round < 3 {
                let path = lab.write_krl(&format!("r{round}.krl"), &krl);
                let listed = Command::new("ssh-keygen")
                    .args(["-Q", "-l", "-f"])
                    .arg(&path)
                    .output()
                    .unwrap();
                assert!(listed.status.success(), "{listed:?}");
            }
        }
    }

    #[test]
    fn refuses_what_openssh_cannot_read() {
        let ca = PublicKey::from_openssh(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnu9ixO5QRgwyHcRf3dzBK5Xmr6sn2ehU+G5rKUmDmF",
        )
        .unwrap();
        let with_nul = Krl {
            certs: vec![(ca, ca_revs(&[], &["a\0b"]))],
            ..Krl::default()
        };
        assert!(matches!(with_nul.to_bytes(), Err(Error::InvalidRequest(_))));
        let comment = Krl {
            comment: "x\0".into(),
            ..Krl::default()
        };
        assert!(matches!(comment.to_bytes(), Err(Error::InvalidRequest(_))));
    }

    /// A header followed by the given raw sections.
    fn with_sections(sections: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = Krl::default().to_bytes().unwrap();
        for (kind, data) in sections {
            out.push(*kind);
            put_string(&mut out, data).unwrap();
        }
        out
    }

    fn cert_sub(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        put_string(&mut s, b"").unwrap(); // any CA
        put_string(&mut s, b"").unwrap();
        s.push(kind);
        put_string(&mut s, data).unwrap();
        s
    }

    fn is_invalid(bytes: &[u8]) -> bool {
        matches!(parse(bytes), Err(Error::InvalidRequest(_)))
    }

    #[test]
    fn rejects_malformed_input() {
        let good = with_sections(&[(
            SECTION_CERTIFICATES,
            cert_sub(CERT_SERIAL_LIST, &[0, 0, 0, 0, 0, 0, 0, 9]),
        )]);
        assert_eq!(parse(&good).unwrap().certs[0].serials, vec![9]);
        assert_eq!(parse(&good).unwrap().certs[0].ca_key, None);

        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(is_invalid(&bad_magic));
        let mut bad_format = good.clone();
        bad_format[11] = 2;
        assert!(is_invalid(&bad_format));
        let mut trailing = good.clone();
        trailing.push(SECTION_EXPLICIT_KEY);
        assert!(is_invalid(&trailing));

        let range = |lo: u64, hi: u64| {
            let mut d = lo.to_be_bytes().to_vec();
            d.extend_from_slice(&hi.to_be_bytes());
            d
        };
        for bad in [
            cert_sub(CERT_SERIAL_LIST, &0u64.to_be_bytes()),
            cert_sub(CERT_SERIAL_LIST, &[0, 0, 0, 1]),
            cert_sub(CERT_SERIAL_RANGE, &range(0, 4)),
            cert_sub(CERT_SERIAL_RANGE, &range(5, 4)),
            cert_sub(CERT_SERIAL_RANGE, &[range(1, 4), vec![0]].concat()),
            cert_sub(CERT_KEY_ID, &[0, 0, 0, 3, b'a', 0, b'b']),
            cert_sub(CERT_KEY_ID, &[0, 0, 0, 1, 0xff]),
            cert_sub(0x30, &[]),
            cert_sub(CERT_EXTENSION, &[0, 0, 0, 1, b'x', 1, 0, 0, 0, 0]),
            // Bitmaps: negative, too large, bit 0 at offset 0, wrapping u64.
            cert_sub(
                CERT_SERIAL_BITMAP,
                &[&5u64.to_be_bytes()[..], &[0, 0, 0, 1, 0x80]].concat(),
            ),
            cert_sub(
                CERT_SERIAL_BITMAP,
                &[
                    &5u64.to_be_bytes()[..],
                    &(2050u32.to_be_bytes()),
                    &[1u8; 2050],
                ]
                .concat(),
            ),
            cert_sub(
                CERT_SERIAL_BITMAP,
                &[&0u64.to_be_bytes()[..], &[0, 0, 0, 1, 1]].concat(),
            ),
            cert_sub(
                CERT_SERIAL_BITMAP,
                &[&u64::MAX.to_be_bytes()[..], &[0, 0, 0, 1, 3]].concat(),
            ),
        ] {
            assert!(
                is_invalid(&with_sections(&[(SECTION_CERTIFICATES, bad.clone())])),
                "{bad:?}"
            );
        }
        assert!(is_invalid(&with_sections(&[(
            SECTION_FINGERPRINT_SHA256,
            vec![0, 0, 0, 1, 1]
        )])));
        assert!(is_invalid(&with_sections(&[(
            SECTION_FINGERPRINT_SHA1,
            vec![0, 0, 0, 1, 1]
        )])));
        assert!(is_invalid(&with_sections(&[(SECTION_SIGNATURE, vec![])])));
        assert!(is_invalid(&with_sections(&[(9, vec![])])));
        assert!(is_invalid(&with_sections(&[(
            SECTION_EXTENSION,
            vec![0, 0, 0, 1, b'x', 1, 0, 0, 0, 0]
        )])));
        // A non-critical extension is skipped, as OpenSSH does.
        let ok = with_sections(&[(SECTION_EXTENSION, vec![0, 0, 0, 1, b'x', 0, 0, 0, 0, 0])]);
        assert!(parse(&ok).is_ok());
        // So is a non-critical certificate extension.
        let ok = with_sections(&[(
            SECTION_CERTIFICATES,
            cert_sub(CERT_EXTENSION, &[0, 0, 0, 1, b'x', 0, 0, 0, 0, 0]),
        )]);
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn bitmaps_decode_into_serials_and_ranges() {
        // Offset 100, bits 0, 2, 3, 4 and 9: serials 100 and 109, range 102-104.
        let data = [&100u64.to_be_bytes()[..], &[0, 0, 0, 3, 0, 0x02, 0x1d]].concat();
        let parsed = parse(&with_sections(&[(
            SECTION_CERTIFICATES,
            cert_sub(CERT_SERIAL_BITMAP, &data),
        )]))
        .unwrap();
        assert_eq!(parsed.certs[0].serials, vec![100, 109]);
        assert_eq!(parsed.certs[0].ranges, vec![102..=104]);
        // The widest bitmap OpenSSH accepts, all set, stays one range.
        let data = [
            &1u64.to_be_bytes()[..],
            &2049u32.to_be_bytes(),
            &[0u8],
            &[0x7f],
            &[0xff; 2047],
        ]
        .concat();
        let parsed = parse(&with_sections(&[(
            SECTION_CERTIFICATES,
            cert_sub(CERT_SERIAL_BITMAP, &data),
        )]))
        .unwrap();
        assert_eq!(parsed.certs[0].ranges, vec![1..=16383]);
    }

    #[test]
    fn truncated_or_mangled_input_never_panics() {
        let lab = Lab::new();
        let ca = lab.ed25519("ca");
        let key = lab.ed25519("key");
        let krl = Krl {
            version: 1,
            generated: 2,
            comment: "c".into(),
            certs: vec![(ca, ca_revs(&[1, 2, 3, 9], &["id"]))],
            keys: vec![key],
        };
        let bytes = krl.to_bytes().unwrap();
        // Cutting between sections leaves a valid, shorter KRL; cutting
        // anywhere else must be refused.
        let header = Krl {
            comment: "c".into(),
            ..Krl::default()
        }
        .to_bytes()
        .unwrap()
        .len();
        let mut first = [0u8; 4];
        first.copy_from_slice(&bytes[header + 1..header + 5]);
        let boundaries = [header, header + 5 + u32::from_be_bytes(first) as usize];
        for len in 0..bytes.len() {
            if boundaries.contains(&len) {
                assert!(parse(&bytes[..len]).is_ok(), "prefix of {len} bytes");
            } else {
                assert!(is_invalid(&bytes[..len]), "prefix of {len} bytes");
            }
        }
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..5_000 {
            let mut m = bytes.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..m.len());
                m[i] = rng.gen();
            }
            let _ = parse(&m);
        }
        for _ in 0..1_000 {
            let noise: Vec<u8> = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect();
            let _ = parse(&[&bytes[..44], &noise].concat());
        }
    }
}
