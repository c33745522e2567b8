//! Reading OpenSSH Key Revocation Lists (KRLs), shared by the server
//! (which writes them, and reads them back in its tests) and hostd (which
//! installs them for sshd's `RevokedKeys`).
//!
//! A KRL is the binary revocation file that `sshd` loads through
//! `RevokedKeys` and that `ssh-keygen -Q` checks keys against. Its format is
//! OpenSSH's `PROTOCOL.krl`; no Rust crate reads it (`ssh-key` reads keys
//! and certificates, not revocation lists), so this is a hand-written
//! decoder:
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
//! [`parse`] refuses what OpenSSH refuses to load. That matters: `sshd`
//! treats a KRL it cannot load as "every key is revoked", so a KRL that
//! does not parse must never be installed.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use sha2::{Digest, Sha256};
use ssh_key::public::KeyData;
use ssh_key::{Certificate, PublicKey};

pub const KRL_MAGIC: &[u8; 8] = b"SSHKRL\n\0";
pub const KRL_FORMAT_VERSION: u32 = 1;

pub const SECTION_CERTIFICATES: u8 = 1;
pub const SECTION_EXPLICIT_KEY: u8 = 2;
pub const SECTION_FINGERPRINT_SHA1: u8 = 3;
pub const SECTION_SIGNATURE: u8 = 4;
pub const SECTION_FINGERPRINT_SHA256: u8 = 5;
pub const SECTION_EXTENSION: u8 = 255;

pub const CERT_SERIAL_LIST: u8 = 0x20;
pub const CERT_SERIAL_RANGE: u8 = 0x21;
pub const CERT_SERIAL_BITMAP: u8 = 0x22;
pub const CERT_KEY_ID: u8 = 0x23;
pub const CERT_EXTENSION: u8 = 0x39;

/// OpenSSH's limit on an mpint (`SSHBUF_MAX_BIGNUM`), which bounds a serial
/// bitmap to 16384 bits.
const MAX_BITMAP_BYTES: usize = 16384 / 8;

/// Why a KRL cannot be read (what OpenSSH would refuse in it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

type Result<T> = std::result::Result<T, ParseError>;

fn invalid(message: impl Into<String>) -> ParseError {
    ParseError(message.into())
}

/// The SSH wire encoding of a plain public key (what KRLs call a blob).
fn key_blob(key: &KeyData) -> Result<Vec<u8>> {
    PublicKey::new(key.clone(), "")
        .to_bytes()
        .map_err(|e| invalid(format!("cannot encode public key: {e}")))
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
                    .map_err(|e| invalid(format!("KRL holds an unreadable CA key: {e}")))
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
/// Rejects with a [`ParseError`] what OpenSSH rejects: bad magic or
/// format version, truncated or trailing data in any section, serial 0 or
/// inverted ranges, unknown section types, critical extensions, and signed
/// KRLs (refused since OpenSSH 9.4). Every length is bounds-checked, so
/// arbitrary input never panics.
pub fn parse(bytes: &[u8]) -> Result<ParsedKrl> {
    let mut r = Reader::new(bytes);
    if r.take(KRL_MAGIC.len())? != KRL_MAGIC {
        return Err(invalid("not a KRL: bad magic"));
    }
    let format = r.u32()?;
    if format != KRL_FORMAT_VERSION {
        return Err(invalid(format!("unsupported KRL format version {format}")));
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
            return Err(invalid("signed KRLs are not supported"));
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
            other => return Err(invalid(format!("unsupported KRL section type {other}"))),
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

/// `extra` appended to the KRL `base`, as one KRL that revokes what either
/// does: `extra` is another KRL, whose sections follow those of `base`
/// (OpenSSH merges sections naming the same CA), or plain public key
/// blobs, which become one explicit-keys section (revoked as a text
/// `RevokedKeys` file revokes them: the key, its certificates, and the
/// certificates it signed as a CA). `base` keeps its header. Both KRLs
/// must [`parse`], and so does the result.
pub fn merge(base: &[u8], extra: &Extra<'_>) -> Result<Vec<u8>> {
    parse(base)?;
    let mut out = base.to_vec();
    match extra {
        Extra::Krl(other) => {
            parse(other)?;
            out.extend_from_slice(sections(other)?);
        }
        Extra::Keys([]) => {}
        Extra::Keys(blobs) => {
            let mut data = Vec::new();
            for b in *blobs {
                put_string(&mut data, b)?;
            }
            out.push(SECTION_EXPLICIT_KEY);
            put_string(&mut out, &data)?;
        }
    }
    parse(&out)?;
    Ok(out)
}

/// What [`merge`] adds to a KRL.
#[derive(Clone, Copy, Debug)]
pub enum Extra<'a> {
    /// Another KRL, whole.
    Krl(&'a [u8]),
    /// Public key blobs (SSH wire encoding).
    Keys(&'a [Vec<u8>]),
}

/// The sections of a KRL: what follows its header.
fn sections(bytes: &[u8]) -> Result<&[u8]> {
    let mut r = Reader::new(bytes);
    r.take(KRL_MAGIC.len())?;
    r.u32()?;
    r.take(24)?; // krl_version, generated_date, flags
    r.string()?; // reserved
    r.string()?; // comment
    Ok(r.buf)
}

fn put_string(out: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    let len = u32::try_from(data.len()).map_err(|_| invalid("KRL section too large"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    Ok(())
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
                        return Err(invalid("KRL revokes serial 0"));
                    }
                    ca.serials.push(serial);
                }
            }
            CERT_SERIAL_RANGE => {
                let (lo, hi) = (sub.u64()?, sub.u64()?);
                if lo == 0 || lo > hi {
                    return Err(invalid(format!(
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
                        _ => return Err(invalid("KRL serial bitmap is out of range")),
                    }
                }
            }
            CERT_KEY_ID => {
                while !sub.is_empty() {
                    let id = c_str(sub.string()?, "key ID")?;
                    let id =
                        std::str::from_utf8(id).map_err(|_| invalid("KRL key ID is not UTF-8"))?;
                    ca.key_ids.push(id.to_string());
                }
            }
            CERT_EXTENSION => extension(&mut sub)?,
            other => {
                return Err(invalid(format!(
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
        return Err(invalid(format!(
            "KRL has an unsupported critical extension {name:?}"
        )));
    }
    Ok(())
}

/// The magnitude bytes of a non-negative mpint, under OpenSSH's size limit.
fn mpint(raw: &[u8]) -> Result<&[u8]> {
    if raw.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(invalid("KRL serial bitmap is negative"));
    }
    let digits = match raw.iter().position(|&b| b != 0) {
        Some(first) => &raw[first..],
        None => &[],
    };
    if digits.len() > MAX_BITMAP_BYTES {
        return Err(invalid("KRL serial bitmap is too large"));
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
        return Err(invalid(format!("KRL {what} contains a NUL byte")));
    }
    Ok(raw)
}

fn fixed<const N: usize>(raw: &[u8], what: &str) -> Result<[u8; N]> {
    raw.try_into()
        .map_err(|_| invalid(format!("KRL {what} has length {}, not {N}", raw.len())))
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
            return Err(invalid("truncated KRL"));
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
        let len = usize::try_from(self.u32()?).map_err(|_| invalid("truncated KRL"))?;
        self.take(len)
    }

    /// OpenSSH refuses sections with bytes left over after their contents.
    fn finish(&self, what: &str) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(invalid(format!("KRL {what} has trailing data")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// A new ed25519 key from `ssh-keygen` as `dir/name`; its public key.
    fn keygen(dir: &Path, name: &str) -> PublicKey {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-t", "ed25519", "-C", name, "-f"])
            .arg(dir.join(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        PublicKey::read_openssh_file(&dir.join(format!("{name}.pub"))).unwrap()
    }

    fn put_string(out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        out.extend_from_slice(data);
    }

    /// An empty KRL's header (versions and date 0, no comment) followed by
    /// the given raw sections.
    fn with_sections(sections: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = KRL_MAGIC.to_vec();
        out.extend_from_slice(&KRL_FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&[0; 24]); // krl_version, generated_date, flags
        put_string(&mut out, b""); // reserved
        put_string(&mut out, b""); // comment
        for (kind, data) in sections {
            out.push(*kind);
            put_string(&mut out, data);
        }
        out
    }

    fn cert_sub(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        put_string(&mut s, b""); // any CA
        put_string(&mut s, b"");
        s.push(kind);
        put_string(&mut s, data);
        s
    }

    fn is_invalid(bytes: &[u8]) -> bool {
        parse(bytes).is_err()
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
    fn parses_a_krl_made_by_ssh_keygen() {
        let dir = tempfile::tempdir().unwrap();
        let ca = keygen(dir.path(), "ca");
        let key = keygen(dir.path(), "key");
        let hashed = keygen(dir.path(), "hashed");
        let fp = hashed.fingerprint(ssh_key::HashAlg::Sha256).to_string();
        let spec = format!(
            "serial: 1-3\nserial: 10\nid: foo\nkey: {}\nhash: {fp}\n",
            key.to_openssh().unwrap()
        );
        std::fs::write(dir.path().join("spec"), spec).unwrap();
        let out = Command::new("ssh-keygen")
            .args(["-k", "-z", "7", "-f"])
            .arg(dir.path().join("ref.krl"))
            .arg("-s")
            .arg(dir.path().join("ca.pub"))
            .arg(dir.path().join("spec"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");

        let parsed = parse(&std::fs::read(dir.path().join("ref.krl")).unwrap()).unwrap();
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

    /// What `ssh-keygen -Q` (OpenSSH's own reader) says of `key` in `krl`:
    /// revoked or not.
    fn ssh_keygen_revokes(dir: &Path, krl: &[u8], key: &str) -> bool {
        std::fs::write(dir.join("check.krl"), krl).unwrap();
        let out = Command::new("ssh-keygen")
            .arg("-Qf")
            .arg(dir.join("check.krl"))
            .arg(dir.join(format!("{key}.pub")))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(said.contains(": ok") || said.contains("REVOKED"), "{out:?}");
        !out.status.success()
    }

    #[test]
    fn a_merged_krl_revokes_what_either_part_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = keygen(d, "ca");
        let by_server = keygen(d, "by_server");
        let by_host_krl = keygen(d, "by_host_krl");
        let by_host_text = keygen(d, "by_host_text");
        keygen(d, "innocent");
        let krl_of = |name: &str, spec: String| {
            std::fs::write(d.join("spec"), spec).unwrap();
            let out = Command::new("ssh-keygen")
                .args(["-k", "-f"])
                .arg(d.join(name))
                .arg("-s")
                .arg(d.join("ca.pub"))
                .arg(d.join("spec"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            std::fs::read(d.join(name)).unwrap()
        };
        let server = krl_of(
            "server.krl",
            format!("serial: 5\nkey: {}\n", by_server.to_openssh().unwrap()),
        );
        let host = krl_of(
            "host.krl",
            format!("serial: 9\nkey: {}\n", by_host_krl.to_openssh().unwrap()),
        );

        let merged = merge(&server, &Extra::Krl(&host)).unwrap();
        let parsed = parse(&merged).unwrap();
        assert_eq!(parsed.version, parse(&server).unwrap().version);
        assert_eq!(parsed.certs.len(), 1, "one CA, its sections merged");
        assert_eq!(parsed.certs[0].ca_key, Some(ca.to_bytes().unwrap()));
        assert_eq!(parsed.certs[0].serials, vec![5, 9]);
        assert!(ssh_keygen_revokes(d, &merged, "by_server"));
        assert!(ssh_keygen_revokes(d, &merged, "by_host_krl"));
        assert!(!ssh_keygen_revokes(d, &merged, "innocent"));

        let blobs = vec![by_host_text.to_bytes().unwrap()];
        let merged = merge(&merged, &Extra::Keys(&blobs)).unwrap();
        assert!(ssh_keygen_revokes(d, &merged, "by_server"));
        assert!(ssh_keygen_revokes(d, &merged, "by_host_krl"));
        assert!(ssh_keygen_revokes(d, &merged, "by_host_text"));
        assert!(!ssh_keygen_revokes(d, &merged, "innocent"));
        assert_eq!(merge(&server, &Extra::Keys(&[])).unwrap(), server);

        // Neither part may be one OpenSSH would refuse to load.
        let mut broken = host.clone();
        broken.push(SECTION_EXPLICIT_KEY);
        assert!(merge(&server, &Extra::Krl(&broken)).is_err());
        assert!(merge(&broken, &Extra::Keys(&blobs)).is_err());
    }
}
