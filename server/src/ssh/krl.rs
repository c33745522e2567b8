//! OpenSSH Key Revocation Lists (KRLs): writing them. Reading them is the
//! `gatepass-krl` crate's, which hostd shares.
//!
//! A KRL is the binary revocation file that `sshd` loads through
//! `RevokedKeys` and that `ssh-keygen -Q` checks keys against. Its format is
//! OpenSSH's `PROTOCOL.krl`. No Rust crate writes KRLs (`ssh-key` reads and
//! writes keys and certificates, not revocation lists), so this module is a
//! hand-written encoder for that format:
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

use gatepass_krl::{
    CERT_KEY_ID, CERT_SERIAL_LIST, CERT_SERIAL_RANGE, KRL_FORMAT_VERSION, KRL_MAGIC,
    SECTION_CERTIFICATES, SECTION_EXPLICIT_KEY,
};
use ssh_key::public::KeyData;
use ssh_key::PublicKey;

use crate::error::{Error, Result};

/// A run of at least this many consecutive serials is written as a range
/// sub-section (21 bytes) rather than as list entries (8 bytes each): from
/// three serials on, the range is the smaller of the two.
const MIN_RANGE_RUN: u64 = 3;

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

#[cfg(test)]
mod tests {
    use super::*;
    use gatepass_krl::{parse, ParsedCaRevocations};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use ssh_key::Certificate;
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
                assert!(parse(&bytes[..len]).is_err(), "prefix of {len} bytes");
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
