//! The audit copy on PostgreSQL, a batch per row: the lines the copier
//! gathers in one window (`Storage::append_audit`), each with its id and
//! time, compressed together with zstd.
//!
//! Why: a fleet's revocation writes two audit lines per host reached, and
//! a row per line (about 800 bytes each) made the copy most of what
//! PostgreSQL did: 100,000 hosts over two servers took 9.95 s with the
//! copy and 5.59 s without it, PostgreSQL's CPU per host 69 µs against 20.
//! Lines of one window repeat each other (a response line repeats its
//! request, polls repeat their fields and HMACs), so a batch compresses to
//! about a seventh; and one row replaces hundreds.
//!
//! A batch is a zstd frame holding, per line, its id and time (each a
//! big-endian 8-byte integer), its length (big-endian 4 bytes) and its
//! bytes, in id order. Ids come from the old table's sequence, so they go
//! on from the lines stored a row each before (which stay readable).

use super::writer::AuditLine;
use crate::error::{Error, Result};

/// One line of the copy as the readers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub id: i64,
    pub at: i64,
    pub line: String,
}

/// zstd's level 1: the fastest of its standard levels, compressing a
/// window of poll lines about sevenfold at some 500 MB/s on one core.
const LEVEL: i32 = 1;

const HEADER: usize = 8 + 8 + 4;

/// The batch of `lines`, numbered from `first_id`.
pub fn encode(first_id: i64, lines: &[AuditLine]) -> Result<Vec<u8>> {
    let mut raw = Vec::with_capacity(lines.iter().map(|l| HEADER + l.line.len()).sum());
    for (i, l) in lines.iter().enumerate() {
        push(&mut raw, first_id + i as i64, l.at, &l.line)?;
    }
    compress(&raw)
}

/// The batch of lines already numbered (what is left of a batch after
/// retention took its oldest lines).
pub fn encode_lines(lines: &[Line]) -> Result<Vec<u8>> {
    let mut raw = Vec::with_capacity(lines.iter().map(|l| HEADER + l.line.len()).sum());
    for l in lines {
        push(&mut raw, l.id, l.at, &l.line)?;
    }
    compress(&raw)
}

fn push(raw: &mut Vec<u8>, id: i64, at: i64, line: &str) -> Result<()> {
    let len = u32::try_from(line.len())
        .map_err(|_| Error::internal("audit line too long for the database's copy"))?;
    raw.extend_from_slice(&id.to_be_bytes());
    raw.extend_from_slice(&at.to_be_bytes());
    raw.extend_from_slice(&len.to_be_bytes());
    raw.extend_from_slice(line.as_bytes());
    Ok(())
}

fn compress(raw: &[u8]) -> Result<Vec<u8>> {
    zstd::bulk::compress(raw, LEVEL)
        .map_err(|e| Error::internal(format!("cannot compress audit lines: {e}")))
}

/// The lines of a stored batch, in id order.
pub fn decode(body: &[u8]) -> Result<Vec<Line>> {
    let bad = |why: &str| Error::internal(format!("stored audit batch unreadable: {why}"));
    let raw = zstd::stream::decode_all(body).map_err(|e| bad(&e.to_string()))?;
    let mut out = Vec::new();
    let mut rest = raw.as_slice();
    while !rest.is_empty() {
        let (head, tail) = rest
            .split_at_checked(HEADER)
            .ok_or_else(|| bad("truncated line header"))?;
        let word = |r: std::ops::Range<usize>| head.get(r).unwrap_or_default();
        let id = i64::from_be_bytes(word(0..8).try_into().map_err(|_| bad("id"))?);
        let at = i64::from_be_bytes(word(8..16).try_into().map_err(|_| bad("time"))?);
        let len = u32::from_be_bytes(word(16..20).try_into().map_err(|_| bad("length"))?) as usize;
        let (text, tail) = tail
            .split_at_checked(len)
            .ok_or_else(|| bad("truncated line"))?;
        let line = String::from_utf8(text.to_vec()).map_err(|_| bad("a line is not UTF-8"))?;
        out.push(Line { id, at, line });
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize) -> Vec<AuditLine> {
        (0..n)
            .map(|i| AuditLine {
                line: format!(
                    r#"{{"type":"request","request":{{"path":"hosts/self/state","id":"{i:08}"}}}}"#
                ),
                at: 1_767_225_600 + i as i64 / 10,
            })
            .collect()
    }

    #[test]
    fn a_batch_gives_back_its_lines_numbered_in_order() {
        let input = lines(300);
        let body = encode(41, &input).unwrap();
        let out = decode(&body).unwrap();
        assert_eq!(out.len(), 300);
        for (i, (l, want)) in out.iter().zip(&input).enumerate() {
            assert_eq!(l.id, 41 + i as i64);
            assert_eq!(l.at, want.at);
            assert_eq!(l.line, want.line);
        }
        let raw: usize = input.iter().map(|l| l.line.len()).sum();
        assert!(body.len() * 4 < raw, "{} bytes for {raw}", body.len());
        // What is left after the oldest go keeps its ids.
        assert_eq!(
            decode(&encode_lines(&out[100..]).unwrap()).unwrap(),
            out[100..]
        );
    }

    #[test]
    fn a_damaged_batch_is_an_error_not_a_panic() {
        let body = encode(1, &lines(3)).unwrap();
        assert!(decode(&body[..body.len() / 2]).is_err());
        assert!(decode(b"not zstd").is_err());
        // A frame whose content ends inside a line.
        let cut = zstd::bulk::compress(&[0u8; HEADER + 1][..HEADER - 3], 1).unwrap();
        assert!(decode(&cut).is_err());
        let mut long = Vec::new();
        push(&mut long, 1, 1, "abc").unwrap();
        long.truncate(long.len() - 1);
        assert!(decode(&zstd::bulk::compress(&long, 1).unwrap()).is_err());
    }
}
