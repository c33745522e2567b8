//! Session recordings: the events the gateway records, the sealed and
//! hash-chained chunks they travel and rest in, the gateway's signed end,
//! and the check that tells a whole recording from an edited, shortened or
//! reordered one. The gateway seals ([`seal`]); the server opens and checks
//! ([`check`]); both use this one definition so they cannot drift apart.
//!
//! A recording is one user connection through the gateway. Its plain text
//! is JSON lines, one [`Event`] each, cut into chunks (a size or a time,
//! whichever comes first). Chunk `i` is sealed with AES-256-GCM under the
//! recording's key (32 random bytes the server makes when the gateway opens
//! the connection, hands to the gateway, and keeps sealed at rest), and its
//! associated data binds the session ID, the recording ID, `i` and the
//! previous chunk's digest; its own digest is SHA-256 over the same and
//! the sealed bytes. So a chunk cannot be edited, moved to another index or
//! another recording, or follow another chunk than the one it was sealed
//! after. At the end the gateway signs (ed25519, its own key registered at
//! enrollment) the number of chunks and the last digest: without that
//! signed end, a recording's tail may have been cut, and the check says so.
//!
//! The gateway compresses a chunk's text ([`Packer`], zstd) before it seals
//! it: terminal output compresses several times over, and everything after
//! the seal (hashing, base64, the spool, the upload, the server's seal at
//! rest and its database) then handles that much less. Compressed text
//! begins with zstd's frame magic, which JSON lines never do, and it is
//! inside the seal, so [`check`] opens chunks of either kind and the
//! choice cannot be changed unseen.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A chunk's digest.
pub type Digest = [u8; 32];

/// What a compressed chunk's text begins with (zstd's frame magic number).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The most text one chunk may open to: a gateway's chunks are far
/// smaller (4 MiB at most); a chunk that claims more is not opened, so a
/// few bytes sealed by a faulty gateway cannot take the server's memory.
pub const MAX_CHUNK_PLAIN: usize = 16 << 20;

/// zstd's fastest level: a busy session's text compresses at several
/// hundred MB/s a core, and terminal output still shrinks several times.
const ZSTD_LEVEL: i32 = 1;

/// The digest the first chunk follows.
pub const GENESIS: Digest = [0; 32];

/// One thing that happened on a channel of the connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the recording began.
    pub t: f64,
    /// The user's channel number.
    pub ch: u32,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Data is text: bytes that are not UTF-8 are replaced by
/// U+FFFD, but a character split between SSH packets is kept whole. Data
/// that is not text at all ([`Utf8Carry::decode`]) is recorded as its
/// size ([`EventKind::Binary`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The channel asked for a shell.
    Shell,
    /// The channel runs a command.
    Exec { command: String },
    /// The channel asked for a subsystem (`sftp`).
    Subsystem { name: String },
    /// Output of the target (stdout and stderr), as asciicast's `o`.
    Output { data: String },
    /// What the user typed or sent, as asciicast's `i`.
    Input { data: String },
    /// The terminal's size (pty request or window change), as asciicast's `r`.
    Resize { cols: u32, rows: u32 },
    /// The command or shell exited.
    Exit {
        status: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command: Option<String>,
    },
    /// A file operation of the sftp subsystem. `bytes`: for `read` and
    /// `write`, the bytes moved through the handle until it closed.
    Sftp {
        op: SftpOp,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<u64>,
        /// For `setstat`, what was set: `mode=4755 uid=0 gid=0 size=0
        /// atime=… mtime=…` (those the request carried).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attrs: Option<String>,
    },
    /// Data that is not text (a file piped through `ssh host 'cat > f'`,
    /// `cat` of a binary): recorded as its size and the strings in it, not
    /// its bytes, which no terminal replays and search cannot match.
    /// Consecutive binary data of one stream of a channel with no strings
    /// is one event, `t` when it began, `bytes` all of it (within one
    /// chunk of the recording).
    Binary {
        stream: Stream,
        bytes: u64,
        /// The runs of text in it ([`strings_of`]), one a line; none
        /// (left out) for most binary data.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        strings: String,
    },
    /// A `direct-tcpip` channel (`ssh -L`) opened.
    ForwardOpen { host: String, port: u32 },
    /// It closed.
    ForwardClose { host: String, port: u32 },
}

/// Which way data went on a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// From the target: [`EventKind::Output`]'s stream.
    Output,
    /// From the user: [`EventKind::Input`]'s stream.
    Input,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SftpOp {
    /// A file opened for reading (a download), closed.
    Read,
    /// A file opened for writing (an upload), closed.
    Write,
    Remove,
    /// `path` renamed to `to` (`rename`, and OpenSSH's
    /// `posix-rename@openssh.com`, which its `sftp` sends).
    Rename,
    Mkdir,
    Rmdir,
    /// Attributes set on `path` (`chmod`, `chown`, times, a size): `attrs`.
    Setstat,
    /// A symbolic link `to` made, pointing at `path` (as `ln -s path to`).
    Symlink,
    /// A hard link `to` made to `path` (`hardlink@openssh.com`).
    Link,
    /// Another extension's request, by its name in `path`.
    Extended,
}

/// Given to the gateway with the session when it opens a connection.
#[derive(Clone, Serialize, Deserialize)]
pub struct RecordingGrant {
    pub recording_id: String,
    /// Base64 of the 32-byte AES-256-GCM key.
    pub key: String,
    /// Whether what the user types is recorded (the account's
    /// `record_input`, on by default).
    pub record_input: bool,
}

impl std::fmt::Debug for RecordingGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingGrant")
            .field("recording_id", &self.recording_id)
            .field("record_input", &self.record_input)
            .finish()
    }
}

/// A sealed chunk, as the gateway sends it and the server stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedChunk {
    pub index: u64,
    /// Hex of the previous chunk's digest (zeros for the first).
    pub prev: String,
    /// Base64 of the 12-byte nonce followed by the ciphertext and tag.
    pub data: String,
}

/// The gateway's signed end of a recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingEnd {
    /// How many chunks the recording has.
    pub chunks: u64,
    /// Hex of the last chunk's digest ([`GENESIS`] for none).
    pub digest: String,
    /// Base64 ed25519 signature of [`end_message`] by the gateway's
    /// recording key; None from a gateway that has no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("the recording key is not 32 bytes of base64")]
    BadKey,
    #[error("cannot seal the chunk")]
    Seal,
    #[error("cannot compress the chunk: {0}")]
    Compress(String),
}

/// Compresses chunks' text before they are sealed; one per recording, so
/// its zstd context (and its memory) is made once.
pub struct Packer(zstd::bulk::Compressor<'static>);

impl Packer {
    pub fn new() -> Result<Packer, RecordingError> {
        zstd::bulk::Compressor::new(ZSTD_LEVEL)
            .map(Packer)
            .map_err(|e| RecordingError::Compress(e.to_string()))
    }

    /// `text` compressed, as [`seal`] takes it and [`check`] opens it.
    pub fn pack(&mut self, text: &[u8]) -> Result<Vec<u8>, RecordingError> {
        self.0
            .compress(text)
            .map_err(|e| RecordingError::Compress(e.to_string()))
    }
}

/// The text of an opened chunk: decompressed when the gateway compressed
/// it, as is otherwise (chunks of gateways from before compression).
fn unpack(opened: Vec<u8>) -> Option<Vec<u8>> {
    if opened.starts_with(&ZSTD_MAGIC) {
        zstd::bulk::decompress(&opened, MAX_CHUNK_PLAIN).ok()
    } else {
        Some(opened)
    }
}

fn aad(session: &str, recording: &str, index: u64, prev: &Digest) -> Vec<u8> {
    let mut a = Vec::with_capacity(64 + session.len() + recording.len());
    a.extend_from_slice(b"gatepass-recording-chunk-v1\0");
    a.extend_from_slice(session.as_bytes());
    a.push(0);
    a.extend_from_slice(recording.as_bytes());
    a.push(0);
    a.extend_from_slice(&index.to_be_bytes());
    a.extend_from_slice(prev);
    a
}

fn digest_of(aad: &[u8], sealed: &[u8]) -> Digest {
    let mut h = Sha256::new();
    h.update(aad);
    h.update(sealed);
    h.finalize().into()
}

/// The recording key from its base64 text.
pub fn parse_key(b64: &str) -> Result<[u8; 32], RecordingError> {
    B64.decode(b64.trim())
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
        .ok_or(RecordingError::BadKey)
}

/// A new random recording key, base64.
pub fn new_key() -> String {
    use rand::RngCore;
    let mut k = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut k);
    B64.encode(k)
}

/// Seals chunk `index` of a recording; returns it and its digest.
pub fn seal(
    key: &[u8; 32],
    session: &str,
    recording: &str,
    index: u64,
    prev: &Digest,
    plain: &[u8],
) -> Result<(SealedChunk, Digest), RecordingError> {
    use rand::RngCore;
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let a = aad(session, recording, index, prev);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: &a,
            },
        )
        .map_err(|_| RecordingError::Seal)?;
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&ct);
    let digest = digest_of(&a, &sealed);
    Ok((
        SealedChunk {
            index,
            prev: hex::encode(prev),
            data: B64.encode(&sealed),
        },
        digest,
    ))
}

/// What the end's signature covers.
pub fn end_message(session: &str, recording: &str, chunks: u64, digest: &Digest) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(b"gatepass-recording-end-v1\0");
    m.extend_from_slice(session.as_bytes());
    m.push(0);
    m.extend_from_slice(recording.as_bytes());
    m.push(0);
    m.extend_from_slice(&chunks.to_be_bytes());
    m.extend_from_slice(digest);
    m
}

/// The signed end after `chunks` chunks, the last with `digest`.
pub fn sign_end(
    signer: Option<&SigningKey>,
    session: &str,
    recording: &str,
    chunks: u64,
    digest: &Digest,
) -> RecordingEnd {
    RecordingEnd {
        chunks,
        digest: hex::encode(digest),
        signature: signer.map(|k| {
            B64.encode(
                k.sign(&end_message(session, recording, chunks, digest))
                    .to_bytes(),
            )
        }),
    }
}

/// The public half of a gateway's recording key, as enrollment sends it.
pub fn public_key_text(k: &SigningKey) -> String {
    B64.encode(k.verifying_key().to_bytes())
}

pub fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    let bytes = B64.decode(text.trim()).ok()?;
    VerifyingKey::from_bytes(&<[u8; 32]>::try_from(bytes.as_slice()).ok()?).ok()
}

/// How a recording checked out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Every chunk is there, unedited and in order, and the gateway's
    /// signature covers the last one.
    Whole { chunks: u64 },
    /// The recording is still being written (the session is open).
    Recording { chunks: u64 },
    /// The chunks there verify, but the recording has no end: the gateway
    /// stopped without closing it (killed, or crashed).
    Cut { chunks: u64 },
    /// Chunk `index` was changed.
    Edited { index: u64 },
    /// Chunk `index` is missing (later ones are there).
    Dropped { index: u64 },
    /// At `index` is a chunk sealed as chunk `holds`.
    Reordered { index: u64, holds: u64 },
    /// The end says `expected` chunks; only the first `have` are there.
    Truncated { have: u64, expected: u64 },
    /// The end is not signed by the gateway's registered key (or changed).
    BadSignature { chunks: u64 },
    /// The chunks verify up to the end, but the gateway that recorded it has
    /// no registered recording key (enrolled before recordings were signed).
    Unsigned { chunks: u64 },
}

impl Verdict {
    /// Whole: nothing is missing or changed.
    pub fn is_whole(&self) -> bool {
        matches!(self, Verdict::Whole { .. })
    }

    /// In the words a person reads.
    pub fn message(&self) -> String {
        match self {
            Verdict::Whole { chunks } => {
                format!("whole: {chunks} chunks, signed by the gateway")
            }
            Verdict::Recording { chunks } => {
                format!("still recording: {chunks} chunks so far verify")
            }
            Verdict::Cut { chunks } => format!(
                "cut: the recording has no signed end; its {chunks} chunks verify up to the cut"
            ),
            Verdict::Edited { index } => format!("chunk {index} was edited"),
            Verdict::Dropped { index } => format!("chunk {index} was dropped"),
            Verdict::Reordered { index, holds } => {
                format!("chunks reordered: chunk {holds} is stored in place of chunk {index}")
            }
            Verdict::Truncated { have, expected } => format!(
                "truncated: the recording ends after chunk {}, but the gateway signed {expected} chunks",
                have.saturating_sub(1)
            ),
            Verdict::BadSignature { chunks } => format!(
                "the end of the recording ({chunks} chunks) does not carry the gateway's signature"
            ),
            Verdict::Unsigned { chunks } => format!(
                "its {chunks} chunks verify, but the gateway has no registered recording key to check its end (enroll it again with `gatepass-gateway setup --replace`)"
            ),
        }
    }
}

/// Opens and checks a recording's stored chunks, given as (the index they
/// are stored under, the chunk) in stored order. Returns the verdict and
/// the plain text of the chunks that verified, in order (everything before
/// the first fault).
pub fn check(
    key: &[u8; 32],
    session: &str,
    recording: &str,
    stored: &[(u64, SealedChunk)],
    end: Option<&RecordingEnd>,
    signer: Option<&VerifyingKey>,
    open: bool,
) -> (Verdict, Vec<Vec<u8>>) {
    let cipher = Aes256Gcm::new(key.into());
    let mut prev = GENESIS;
    let mut plain = Vec::new();
    let mut expected = 0u64;
    for (at, chunk) in stored {
        if *at != expected {
            return (Verdict::Dropped { index: expected }, plain);
        }
        if chunk.index != expected {
            return (
                Verdict::Reordered {
                    index: expected,
                    holds: chunk.index,
                },
                plain,
            );
        }
        let a = aad(session, recording, expected, &prev);
        let Ok(sealed) = B64.decode(&chunk.data) else {
            return (Verdict::Edited { index: expected }, plain);
        };
        if sealed.len() < 12 || chunk.prev != hex::encode(prev) {
            return (Verdict::Edited { index: expected }, plain);
        }
        let (nonce, ct) = sealed.split_at(12);
        // A chunk that opens but does not decompress was sealed so by the
        // gateway: it is not what a gateway records, named like an edit.
        match cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &a })
            .ok()
            .and_then(unpack)
        {
            Some(p) => plain.push(p),
            None => return (Verdict::Edited { index: expected }, plain),
        }
        prev = digest_of(&a, &sealed);
        expected += 1;
    }
    let Some(end) = end else {
        return if open {
            (Verdict::Recording { chunks: expected }, plain)
        } else {
            (Verdict::Cut { chunks: expected }, plain)
        };
    };
    if end.chunks > expected {
        return (
            Verdict::Truncated {
                have: expected,
                expected: end.chunks,
            },
            plain,
        );
    }
    if end.chunks < expected || end.digest != hex::encode(prev) {
        // More chunks than the gateway signed, or a last digest it did not
        // sign: the last chunk is not the one it sealed.
        return (
            Verdict::Edited {
                index: expected.saturating_sub(1),
            },
            plain,
        );
    }
    let Some(signer) = signer else {
        return (Verdict::Unsigned { chunks: expected }, plain);
    };
    let good = end
        .signature
        .as_deref()
        .and_then(|s| B64.decode(s).ok())
        .and_then(|s| Signature::from_slice(&s).ok())
        .is_some_and(|sig| {
            signer
                .verify(&end_message(session, recording, expected, &prev), &sig)
                .is_ok()
        });
    if good {
        (Verdict::Whole { chunks: expected }, plain)
    } else {
        (Verdict::BadSignature { chunks: expected }, plain)
    }
}

/// Carries an incomplete UTF-8 sequence at the end of one packet over to
/// the next, so that a character split between SSH packets comes out
/// whole. Bytes that can never be UTF-8 become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    tail: Vec<u8>,
}

/// One packet of channel data, as [`Utf8Carry::decode`] reads it.
#[derive(Debug, PartialEq)]
pub enum Data<'a> {
    Text(std::borrow::Cow<'a, str>),
    /// Text, then from where binary data begins, this many bytes of it.
    /// `text` ends with the run of text the binary data begins with,
    /// whatever its length (it goes on the text's last line, which masking
    /// must see whole); `strings`, the runs of text in the rest
    /// ([`strings_of`]).
    Binary {
        text: std::borrow::Cow<'a, str>,
        strings: String,
        bytes: u64,
    },
}

/// The fewest characters a run of printable ones inside binary data must
/// have to be recorded, as `strings` shows such runs (its default is 4;
/// runs of 4 come every hundred bytes of random data, of 8 every 5 KB).
pub const MIN_STRING: usize = 8;

/// Printable ASCII, tab and line ends: what [`strings_of`] keeps.
const fn printable_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = 1;
        b += 1;
    }
    t[b'\t' as usize] = 1;
    t[b'\n' as usize] = 1;
    t[b'\r' as usize] = 1;
    t
}
const PRINTABLE: [u8; 256] = printable_table();

/// The runs of printable characters in binary data, as `strings` finds
/// them: the run it begins with, whatever its length, appended to `first`;
/// then each run of at least [`MIN_STRING`] appended to `rest`, a line
/// each. Text mixed into binary data (`printf '\0\377\n'; cat script`) is
/// recorded so, and cannot be hidden in a packet by a few bytes that are
/// not text; the rest of the data is only counted.
///
/// Written for speed, eight bytes at a time ([`printable_bits`]): a run of
/// eight or more either fills a word or crosses a word's end, so within a
/// word only the printable bytes at its two ends matter. A loop over the
/// bytes took 1.1 ns a byte of random data (a printable byte in every
/// three), a second a GiB of a session's binary data.
pub fn strings_of(bytes: &[u8], first: &mut String, rest: &mut String) {
    let start = bytes
        .iter()
        .position(|&b| PRINTABLE[usize::from(b)] == 0)
        .unwrap_or(bytes.len());
    push_ascii(first, &bytes[..start]);
    let mut line = |run: &[u8]| {
        if !rest.is_empty() {
            rest.push('\n');
        }
        push_ascii(rest, run);
    };
    // Printable bytes just before `at`.
    let mut run = 0usize;
    let mut at = start;
    let mut words = bytes[start..].chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let bits = printable_bits(u64::from_le_bytes(w));
        if bits == 0xff {
            run += 8;
        } else {
            let head = bits.trailing_ones() as usize;
            if run + head >= MIN_STRING {
                line(&bytes[at + head - (run + head)..at + head]);
            }
            // A run inside the word is shorter than eight.
            run = bits.leading_ones() as usize;
        }
        at += 8;
    }
    for &b in words.remainder() {
        if PRINTABLE[usize::from(b)] == 1 {
            run += 1;
        } else {
            if run >= MIN_STRING {
                line(&bytes[at - run..at]);
            }
            run = 0;
        }
        at += 1;
    }
    if run >= MIN_STRING {
        line(&bytes[at - run..at]);
    }
}

/// How the strings of binary data are found: [`strings_of`] or
/// [`input_strings_of`].
type StringsOf = fn(&[u8], &mut String, &mut String);

/// The fewest characters a run of printable ones in binary data a user
/// sends must have to be recorded: a command can be as short as `sh x`.
pub const MIN_INPUT_STRING: usize = 4;

/// As [`strings_of`], for binary data a user sends: NUL bytes are left
/// out first, since a shell drops them from what it reads and they would
/// otherwise split a command (`cur\0l -s\0 …`) into runs too short to be
/// recorded; and runs of [`MIN_INPUT_STRING`] are kept. A byte by byte
/// loop: what users send is small next to what they are sent.
pub fn input_strings_of(bytes: &[u8], first: &mut String, rest: &mut String) {
    let kept: Vec<u8> = bytes.iter().copied().filter(|&b| b != 0).collect();
    let printable = |b: &u8| PRINTABLE[usize::from(*b)] == 1;
    let start = kept
        .iter()
        .position(|b| !printable(b))
        .unwrap_or(kept.len());
    push_ascii(first, &kept[..start]);
    for run in kept[start..].split(|b| !printable(b)) {
        if run.len() >= MIN_INPUT_STRING {
            if !rest.is_empty() {
                rest.push('\n');
            }
            push_ascii(rest, run);
        }
    }
}

/// Which of the eight bytes of `w` (little-endian) are printable as
/// [`PRINTABLE`] says: bit k for byte k. Each test is made within each
/// byte (no carry or borrow reaches the next), so every bit is exact.
fn printable_bits(w: u64) -> u8 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let low = w & LOW7;
    // 0x20 to 0x7e: at least 0x20, not 0x7f, high bit clear.
    let at_least_space = (low + 0x60 * ONES) & HIGH;
    let del = (low + ONES) & HIGH;
    let visible = at_least_space & !del & !(w & HIGH);
    let equal = |c: u8| {
        let x = w ^ (u64::from(c) * ONES);
        !(((x & LOW7) + LOW7) | x) & HIGH
    };
    let flags = (visible | equal(b'\t') | equal(b'\n') | equal(b'\r')) >> 7;
    // Gathers the flag at the bottom of each byte into one byte, byte k's
    // as bit k.
    (flags.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
}

/// Appends bytes that are all printable ASCII (so UTF-8).
fn push_ascii(out: &mut String, ascii: &[u8]) {
    if let Ok(s) = std::str::from_utf8(ascii) {
        out.push_str(s);
    }
}

/// Where the binary data of `bytes`, whose first `valid` bytes are UTF-8
/// and the rest not, begins; None when it holds no NUL byte (text in some
/// other encoding, see [`Utf8Carry::decode`]). It begins at the line of
/// the first NUL or non-UTF-8 byte: a binary file often opens with bytes
/// that read as text (ELF's `\x7fELF`), a line of text ends in a line end.
fn binary_start(bytes: &[u8], valid: usize) -> Option<usize> {
    if !bytes.contains(&0) {
        return None;
    }
    let first = bytes
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(valid)
        .min(valid);
    Some(
        bytes[..first]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1),
    )
}

impl Utf8Carry {
    /// The text of `bytes` after what was carried; an incomplete sequence
    /// at the end is kept for the next call.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        let mut buf = std::mem::take(&mut self.tail);
        buf.extend_from_slice(bytes);
        let cut = complete_len(&buf);
        let mut out = String::with_capacity(buf.len());
        // One pass: each valid run, then one U+FFFD per invalid sequence,
        // as `String::from_utf8_lossy` replaces them.
        for chunk in buf[..cut].utf8_chunks() {
            out.push_str(chunk.valid());
            if !chunk.invalid().is_empty() {
                out.push(char::REPLACEMENT_CHARACTER);
            }
        }
        self.tail = buf[cut..].to_vec();
        out
    }

    /// As [`Utf8Carry::push`], borrowing `bytes` when they are the text
    /// (nothing carried, nothing replaced): the common case of a busy
    /// session, which then costs one validation pass and no copy, also
    /// when the message ends in the middle of a character (the split is
    /// found from the last bytes alone, so the text is validated once).
    ///
    /// Unless the packet holds binary data: it is not UTF-8 and holds a
    /// NUL byte, as git tells a binary file from text (a NUL is in every
    /// few hundred bytes of compressed or random data and in no text a
    /// terminal shows, while text in a legacy encoding such as Latin-1 is
    /// not UTF-8 either and is still recorded, its odd bytes replaced).
    /// Recording binary data as text cost more than the session itself
    /// (every invalid byte three bytes of U+FFFD, every control byte six
    /// of escape, then compressed, sealed, spooled and stored) for a text
    /// no one can read: its size is what is recorded instead, and the
    /// strings in it ([`strings_of`]), so that text mixed into it is not
    /// lost. The text before it in the packet (`echo sending; cat file`
    /// writes both at once) is kept, up to its last line end
    /// ([`binary_start`]); what follows it in the packet counts as binary.
    pub fn decode<'a>(&mut self, bytes: &'a [u8]) -> Data<'a> {
        self.decode_by(bytes, strings_of)
    }

    /// [`Self::decode`] for what a user sends: its binary data's strings
    /// are found by [`input_strings_of`].
    pub fn decode_input<'a>(&mut self, bytes: &'a [u8]) -> Data<'a> {
        self.decode_by(bytes, input_strings_of)
    }

    fn decode_by<'a>(&mut self, bytes: &'a [u8], strings_of: StringsOf) -> Data<'a> {
        if self.tail.is_empty() {
            let (text, tail) = bytes.split_at(complete_len(bytes));
            match std::str::from_utf8(text) {
                Ok(s) => {
                    self.tail = tail.to_vec();
                    return Data::Text(s.into());
                }
                Err(e) => {
                    if let Some(at) = binary_start(bytes, e.valid_up_to()) {
                        // Up to `valid_up_to`: UTF-8.
                        let mut text = std::str::from_utf8(&bytes[..at])
                            .unwrap_or_default()
                            .to_owned();
                        let mut strings = String::new();
                        strings_of(&bytes[at..], &mut text, &mut strings);
                        return Data::Binary {
                            text: text.into(),
                            strings,
                            bytes: (bytes.len() - at) as u64,
                        };
                    }
                }
            }
            return Data::Text(self.push(bytes).into());
        }
        // A character was carried over (rare): the same, on both together.
        let mut joined = std::mem::take(&mut self.tail);
        joined.extend_from_slice(bytes);
        // As above, an incomplete character at the end is not invalid.
        if let Err(e) = std::str::from_utf8(&joined[..complete_len(&joined)]) {
            if let Some(at) = binary_start(&joined, e.valid_up_to()) {
                let mut text = String::from_utf8_lossy(&joined[..at]).into_owned();
                let mut strings = String::new();
                strings_of(&joined[at..], &mut text, &mut strings);
                return Data::Binary {
                    text: text.into(),
                    strings,
                    bytes: (joined.len() - at) as u64,
                };
            }
        }
        Data::Text(self.push(&joined).into())
    }

    /// What is left at the end of the stream (an incomplete sequence can
    /// never complete now).
    pub fn finish(&mut self) -> String {
        let tail = std::mem::take(&mut self.tail);
        String::from_utf8_lossy(&tail).into_owned()
    }
}

/// How much of `bytes` to decode now: all of it, or all but an incomplete
/// UTF-8 sequence at its very end (at most 3 bytes, which a next packet
/// may complete). Only the last bytes are looked at.
fn complete_len(bytes: &[u8]) -> usize {
    let n = bytes.len();
    for back in 1..=n.min(3) {
        let b = bytes[n - back];
        if b & 0xC0 == 0x80 {
            // A continuation byte: its sequence began further back.
            continue;
        }
        let need = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 1,
        };
        // Held back only when it can still become a character (what the
        // validator calls an unexpected end); anything else is decoded
        // (replaced) now, as before.
        let incomplete = need > back
            && std::str::from_utf8(&bytes[n - back..]).is_err_and(|e| e.error_len().is_none());
        return if incomplete { n - back } else { n };
    }
    n
}

/// The events of one chunk's plain text (JSON lines); a line that does
/// not parse is left out.
pub fn events_of(plain: &[u8]) -> Vec<Event> {
    plain
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// A new recording signing key (ed25519).
pub fn new_signing_key() -> SigningKey {
    use rand::RngCore;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

/// The signing key from its file text (base64 of the 32-byte seed).
pub fn parse_signing_key(text: &str) -> Option<SigningKey> {
    let bytes = B64.decode(text.trim()).ok()?;
    Some(SigningKey::from_bytes(
        &<[u8; 32]>::try_from(bytes.as_slice()).ok()?,
    ))
}

/// The file text of a signing key.
pub fn signing_key_text(k: &SigningKey) -> String {
    format!("{}\n", B64.encode(k.to_bytes()))
}

// ---- asciicast ----------------------------------------------------------------

use crate::pam::SessionRecordings;

/// One asciicast event: seconds since the first recording began, code,
/// data.
pub type CastEvent = (f64, &'static str, String);

/// The terminal events of every recording on one time line.
pub fn cast_events(recs: &SessionRecordings) -> Vec<CastEvent> {
    let base = recs
        .recordings
        .iter()
        .map(|r| r.started_at_ms)
        .min()
        .unwrap_or(0);
    let mut out = Vec::new();
    for r in &recs.recordings {
        let offset = (r.started_at_ms - base) as f64 / 1000.0;
        for e in &r.events {
            let (code, data) = match &e.kind {
                EventKind::Output { data } => ("o", data.clone()),
                EventKind::Input { data } => ("i", data.clone()),
                // A client without a terminal asks for 0x0: no size to tell.
                EventKind::Resize { cols, rows } if *cols > 0 && *rows > 0 => {
                    ("r", format!("{cols}x{rows}"))
                }
                _ => continue,
            };
            out.push((e.t + offset, code, data));
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// asciicast v2: a header line, then one JSON array per event.
pub fn cast_of(recs: &SessionRecordings) -> String {
    let events = cast_events(recs);
    let (width, height) = events
        .iter()
        .find(|e| e.1 == "r")
        .and_then(|e| e.2.split_once('x'))
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .filter(|(w, h)| *w > 0 && *h > 0)
        .unwrap_or((80, 24));
    let timestamp = recs
        .recordings
        .iter()
        .map(|r| r.started_at_ms / 1000)
        .min()
        .unwrap_or(0);
    let mut out = serde_json::json!({
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": timestamp,
        "title": format!("gatepass session {}", recs.session_id),
    })
    .to_string();
    out.push('\n');
    for (t, code, data) in events {
        let t = (t * 1e6).round() / 1e6;
        out.push_str(&serde_json::json!([t, code, data]).to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_text(d: Data<'_>) -> String {
        match d {
            Data::Text(t) => t.into_owned(),
            Data::Binary { bytes, .. } => panic!("{bytes} bytes read as binary"),
        }
    }

    #[test]
    fn a_character_split_between_packets_comes_out_whole() {
        let text = "héllo ✓ 𝄞 end";
        let bytes = text.as_bytes();
        // Every split point, including inside each multi-byte character.
        for cut in 0..=bytes.len() {
            let mut c = Utf8Carry::default();
            let mut out = c.push(&bytes[..cut]);
            out.push_str(&c.push(&bytes[cut..]));
            out.push_str(&c.finish());
            assert_eq!(out, text, "split at {cut}");
        }
        // One byte at a time.
        let mut c = Utf8Carry::default();
        let out: String = bytes.iter().map(|b| c.push(&[*b])).collect();
        assert_eq!(out, text);
        // The borrowing form, at every split point too.
        for cut in 0..=bytes.len() {
            let mut c = Utf8Carry::default();
            let mut out = as_text(c.decode(&bytes[..cut]));
            out.push_str(&as_text(c.decode(&bytes[cut..])));
            out.push_str(&c.finish());
            assert_eq!(out, text, "split at {cut}");
        }
        let mut c = Utf8Carry::default();
        assert_eq!(as_text(c.decode(b"a\xffb\xe2\x9c")), "a\u{fffd}b");
        assert_eq!(as_text(c.decode(b"\x93!")), "✓!");
    }

    #[test]
    fn compressed_chunks_open_to_their_text_beside_plain_ones() {
        let key = parse_key(&new_key()).unwrap();
        let text = "{\"t\":0.5,\"ch\":0,\"type\":\"output\",\"data\":\"yes\\n\"}\n".repeat(10_000);
        let mut packer = Packer::new().unwrap();
        let packed = packer.pack(text.as_bytes()).unwrap();
        assert!(packed.len() * 20 < text.len(), "{}", packed.len());
        // Chunk 0 compressed, chunk 1 plain (an older gateway's), one chain.
        let (c0, d0) = seal(&key, "s", "r", 0, &GENESIS, &packed).unwrap();
        let (c1, d1) = seal(&key, "s", "r", 1, &d0, text.as_bytes()).unwrap();
        let signer = new_signing_key();
        let end = sign_end(Some(&signer), "s", "r", 2, &d1);
        let stored = [(0, c0), (1, c1)];
        let (verdict, plain) = check(
            &key,
            "s",
            "r",
            &stored,
            Some(&end),
            Some(&signer.verifying_key()),
            false,
        );
        assert_eq!(verdict, Verdict::Whole { chunks: 2 });
        assert_eq!(
            plain,
            vec![text.as_bytes().to_vec(), text.as_bytes().to_vec()]
        );
        assert_eq!(events_of(&plain[0]).len(), 10_000);
        // A frame that claims more than a chunk may hold is not opened.
        let bomb = packer.pack(&vec![b' '; MAX_CHUNK_PLAIN + 1]).unwrap();
        let (c, _) = seal(&key, "s", "r", 0, &GENESIS, &bomb).unwrap();
        assert_eq!(
            check(&key, "s", "r", &[(0, c)], None, None, false).0,
            Verdict::Edited { index: 0 }
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced_and_the_rest_kept() {
        let mut c = Utf8Carry::default();
        assert_eq!(c.push(b"a\xffb\xe2\x9c"), "a\u{fffd}b");
        assert_eq!(c.push(b"\x93!"), "✓!");
        assert_eq!(c.push(b"\xe2"), "");
        assert_eq!(c.finish(), "\u{fffd}");
    }

    fn binary(text: &str, bytes: u64) -> Data<'_> {
        binary_with(text, "", bytes)
    }

    fn binary_with<'a>(text: &'a str, strings: &str, bytes: u64) -> Data<'a> {
        Data::Binary {
            text: text.into(),
            strings: strings.into(),
            bytes,
        }
    }

    #[test]
    fn binary_data_is_told_from_text_in_a_legacy_encoding() {
        let mut c = Utf8Carry::default();
        // Latin-1 text: not UTF-8, but no NUL, so text with its odd bytes
        // replaced.
        assert_eq!(
            as_text(c.decode(b"caf\xe9 cr\xe8me")),
            "caf\u{fffd} cr\u{fffd}me"
        );
        // UTF-8 holding a NUL is text too (escaped when it is written).
        assert_eq!(as_text(c.decode(b"a\0b")), "a\0b");
        // Not UTF-8 and a NUL: binary, with the byte carried before it.
        assert_eq!(as_text(c.decode(b"ok \xe2")), "ok ");
        assert_eq!(c.decode(b"\x00\xff\x10\x00"), binary("", 5));
        // Nothing is left over for what follows.
        assert_eq!(as_text(c.decode(b"\xe2\x9c\x93")), "✓");
        // A character carried into text with a NUL stays text, also when
        // that packet ends in the middle of one too (`find -print0` of
        // names that are not ASCII).
        assert_eq!(as_text(c.decode(b"x\xe2")), "x");
        assert_eq!(as_text(c.decode(b"\x9c\x93\0")), "✓\0");
        assert_eq!(as_text(c.decode(b"a\xc3")), "a");
        assert_eq!(as_text(c.decode(b"\xa9\0b\xc3")), "é\0b");
        assert_eq!(as_text(c.decode(b"\xa9\0")), "é\0");
        // Text before binary in one packet is kept to its last line end;
        // the binary's first line (ELF's header reads as text) is not.
        assert_eq!(
            c.decode(b"sending\nsome.bin\n\x7fELF\x02\x01\x00\x00\xff\xfe"),
            binary("sending\nsome.bin\n", 10)
        );
        assert_eq!(c.decode(b"\x7fELF\x02\x01\x00\x00\xff"), binary("", 9));
        // The strings in the binary data are kept.
        assert_eq!(
            c.decode(b"x\0\xff/usr/lib/ld-linux.so\0"),
            binary_with("x", "/usr/lib/ld-linux.so", 24)
        );
        // The same after a carried character.
        assert_eq!(as_text(c.decode(b"\xe2")), "");
        assert_eq!(c.decode(b"\x9c\x93\n\x00\xff"), binary("✓\n", 2));
        assert_eq!(c.finish(), "");
        // Compressed data, the kind piped through `cat > file`.
        let mut packer = Packer::new().unwrap();
        let zipped = packer.pack(&vec![7u8; 100_000]).unwrap();
        let random: Vec<u8> = (0u32..32_768)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for data in [&zipped[..], &random[..]] {
            match Utf8Carry::default().decode(data) {
                Data::Binary {
                    text,
                    strings,
                    bytes,
                } => {
                    assert_eq!(bytes, data.len() as u64);
                    // Only its strings: zstd's frame begins with `(`.
                    assert!(text.len() <= 1, "{text:?}");
                    assert!(strings.len() <= data.len() / 64, "{strings:?}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn strings_in_binary_data_are_found_as_strings_finds_them() {
        let strings = |b: &[u8]| {
            let (mut first, mut rest) = (String::from("|"), String::new());
            strings_of(b, &mut first, &mut rest);
            (first, rest)
        };
        assert_eq!(strings(b""), ("|".into(), "".into()));
        // The first run whatever its length, then runs of 8 or more.
        assert_eq!(
            strings(b"ab\0cdefghij\xffklmnopq\x01rstuvwxyz"),
            ("|ab".into(), "cdefghij\nrstuvwxyz".into())
        );
        assert_eq!(
            strings(b"\0\x7f1234567\x0012345678"),
            ("|".into(), "12345678".into())
        );
        assert_eq!(
            strings(b"\0line one\nline two\t!\x80"),
            ("|".into(), "line one\nline two\t!".into())
        );
        // Runs across and within words, at every offset: as a byte at a
        // time finds them.
        let by_bytes = |b: &[u8]| {
            let (mut first, mut rest) = (String::new(), String::new());
            let start = b
                .iter()
                .position(|&c| PRINTABLE[usize::from(c)] == 0)
                .unwrap_or(b.len());
            push_ascii(&mut first, &b[..start]);
            for run in b[start..].split(|&c| PRINTABLE[usize::from(c)] == 0) {
                if run.len() >= MIN_STRING {
                    if !rest.is_empty() {
                        rest.push('\n');
                    }
                    push_ascii(&mut rest, run);
                }
            }
            (first, rest)
        };
        let sample: Vec<u8> =
            b"\0run of nine\x7f1234567\x80exactly8\x01\x02tab\there\r\nand more\xff\xfe\0x"
                .to_vec();
        for skip in 0..sample.len() {
            for len in [1, 7, 8, 9, 15, 16, 17, 24, 40] {
                let b = &sample[skip..(skip + len).min(sample.len())];
                let (mut first, mut rest) = (String::new(), String::new());
                strings_of(b, &mut first, &mut rest);
                assert_eq!((first, rest), by_bytes(b), "{b:?}");
            }
        }
        // Every byte value, at every place in a word.
        for v in 0..=255u8 {
            for k in 0..8 {
                let mut w = [b'a'; 8];
                w[k] = v;
                let bits = printable_bits(u64::from_le_bytes(w));
                let want = if PRINTABLE[usize::from(v)] == 1 {
                    0xff
                } else {
                    !(1u8 << k)
                };
                assert_eq!(bits, want, "{v:#x} at {k}");
            }
        }
        // Random bytes: the runs found are few and short.
        let random: Vec<u8> = (0u64..1 << 20)
            .map(|i| (i.wrapping_mul(6_364_136_223_846_793_005).rotate_left(29) >> 56) as u8)
            .collect();
        let (mut first, mut out) = (String::new(), String::new());
        strings_of(&random, &mut first, &mut out);
        assert!(out.len() < 4096, "{}", out.len());
        assert_eq!((first, out), by_bytes(&random));
    }

    #[test]
    fn split_anywhere_the_text_reads_as_the_whole_stream_decoded_at_once() {
        // Valid characters of each length, invalid bytes, an overlong
        // form, a sequence cut short inside the stream, and one at its end.
        let stream: &[u8] =
            b"a\xc3\xa9\xe2\x9c\x93\xf0\x9d\x84\x9e\xff\xe0\x80z\xe2\x9c!\xc0\xf5\xf0\x9d\x84";
        let whole = String::from_utf8_lossy(stream).into_owned();
        for a in 0..=stream.len() {
            for b in a..=stream.len() {
                let mut c = Utf8Carry::default();
                let mut out = as_text(c.decode(&stream[..a]));
                out.push_str(&as_text(c.decode(&stream[a..b])));
                out.push_str(&c.push(&stream[b..]));
                out.push_str(&c.finish());
                assert_eq!(out, whole, "split at {a} and {b}");
            }
        }
    }

    fn recording(n: u64) -> ([u8; 32], Vec<(u64, SealedChunk)>, Digest) {
        let key = parse_key(&new_key()).unwrap();
        let mut prev = GENESIS;
        let mut chunks = Vec::new();
        for i in 0..n {
            let (c, d) = seal(&key, "s", "r", i, &prev, format!("chunk {i}").as_bytes()).unwrap();
            chunks.push((i, c));
            prev = d;
        }
        (key, chunks, prev)
    }

    #[test]
    fn the_check_names_the_first_fault() {
        let signer = new_signing_key();
        let public = signer.verifying_key();
        let (key, chunks, last) = recording(4);
        let end = sign_end(Some(&signer), "s", "r", 4, &last);
        let check_with = |c: &[(u64, SealedChunk)], e: Option<&RecordingEnd>| {
            check(&key, "s", "r", c, e, Some(&public), false).0
        };
        assert_eq!(
            check_with(&chunks, Some(&end)),
            Verdict::Whole { chunks: 4 }
        );
        assert_eq!(check_with(&chunks, None), Verdict::Cut { chunks: 4 });

        let mut edited = chunks.clone();
        let mut raw = B64.decode(&edited[2].1.data).unwrap();
        raw[20] ^= 1;
        edited[2].1.data = B64.encode(raw);
        assert_eq!(
            check_with(&edited, Some(&end)),
            Verdict::Edited { index: 2 }
        );

        let mut dropped = chunks.clone();
        dropped.remove(1);
        assert_eq!(
            check_with(&dropped, Some(&end)),
            Verdict::Dropped { index: 1 }
        );

        let mut swapped = chunks.clone();
        let (a, b) = (swapped[1].1.clone(), swapped[2].1.clone());
        swapped[1].1 = b;
        swapped[2].1 = a;
        assert_eq!(
            check_with(&swapped, Some(&end)),
            Verdict::Reordered { index: 1, holds: 2 }
        );

        let cut = &chunks[..3];
        assert_eq!(
            check_with(cut, Some(&end)),
            Verdict::Truncated {
                have: 3,
                expected: 4
            }
        );

        // A gateway enrolled before it had a recording key: the chunks
        // verify, the end cannot be checked, and the verdict says so.
        assert_eq!(
            check(&key, "s", "r", &chunks, Some(&end), None, false).0,
            Verdict::Unsigned { chunks: 4 }
        );
        // Chunks sealed for another session or recording do not open here.
        assert_eq!(
            check(&key, "s2", "r", &chunks, Some(&end), Some(&public), false).0,
            Verdict::Edited { index: 0 }
        );

        let other = new_signing_key();
        let forged = sign_end(Some(&other), "s", "r", 4, &last);
        assert_eq!(
            check_with(&chunks, Some(&forged)),
            Verdict::BadSignature { chunks: 4 }
        );
    }
}
