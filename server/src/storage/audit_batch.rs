//! The database's copy of the audit log, a batch per row: the lines the
//! copier gathers in one window (`Storage::append_audit`), each with its
//! time, compressed together with zstd. Both backends store it so
//! (`audit_batches`); what is here is what they share.
//!
//! Why: a fleet's revocation writes two audit lines per host reached, and
//! a row per line (about 800 bytes each) made the copy most of what
//! PostgreSQL did: 100,000 hosts over two servers took 9.95 s with the
//! copy and 5.59 s without it, PostgreSQL's CPU per host 69 µs against 20.
//! Lines of one window repeat each other (a response line repeats its
//! request, polls repeat their fields and HMACs), so a batch compresses to
//! about a seventh; and one row replaces hundreds.
//!
//! A batch is a zstd frame holding, per line, its place in the batch
//! (big-endian 4 bytes), its time (big-endian 8 bytes), its length
//! (big-endian 4 bytes) and its bytes. A line's id is the row's `base_id`
//! plus its place; the ids go on from the old table's, so the lines
//! stored a row each before stay readable before them. The batch is made
//! before its ids are known (by the copier, off the storage writer), and
//! keeps them when retention takes its oldest lines out.

use super::writer::AuditLine;
use crate::error::{Error, Result};

/// One line of the copy as the readers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub id: i64,
    pub at: i64,
    pub line: String,
}

/// A batch ready to store: how many lines, their earliest and latest
/// time, and the compressed body.
pub struct Batch {
    pub lines: i64,
    pub first_at: i64,
    pub last_at: i64,
    pub body: Vec<u8>,
}

/// zstd's level 1: the fastest of its standard levels, compressing a
/// window of poll lines about sevenfold at some 500 MB/s on one core.
const LEVEL: i32 = 1;

const HEADER: usize = 4 + 8 + 4;

impl Batch {
    /// The batch of `lines`; None when there are none.
    pub fn of(lines: &[AuditLine]) -> Result<Option<Batch>> {
        let (Some(first_at), Some(last_at)) = (
            lines.iter().map(|l| l.at).min(),
            lines.iter().map(|l| l.at).max(),
        ) else {
            return Ok(None);
        };
        let mut raw = Vec::with_capacity(lines.iter().map(|l| HEADER + l.line.len()).sum());
        for (place, l) in lines.iter().enumerate() {
            push(&mut raw, place, l.at, &l.line)?;
        }
        Ok(Some(Batch {
            lines: lines.len() as i64,
            first_at,
            last_at,
            body: compress(&raw)?,
        }))
    }
}

fn push(raw: &mut Vec<u8>, place: usize, at: i64, line: &str) -> Result<()> {
    let too_big = || Error::internal("audit batch too large for the database's copy");
    let place = u32::try_from(place).map_err(|_| too_big())?;
    let len = u32::try_from(line.len()).map_err(|_| too_big())?;
    raw.extend_from_slice(&place.to_be_bytes());
    raw.extend_from_slice(&at.to_be_bytes());
    raw.extend_from_slice(&len.to_be_bytes());
    raw.extend_from_slice(line.as_bytes());
    Ok(())
}

fn compress(raw: &[u8]) -> Result<Vec<u8>> {
    zstd::bulk::compress(raw, LEVEL)
        .map_err(|e| Error::internal(format!("cannot compress audit lines: {e}")))
}

/// Adds to `out`, until it holds `want`, the lines of a stored batch
/// after id `after` whose time is within `since..=until`.
pub fn read_into(
    base_id: i64,
    body: &[u8],
    after: i64,
    (since, until): (i64, i64),
    want: usize,
    out: &mut Vec<(i64, String)>,
) -> Result<()> {
    for l in decode(base_id, body)? {
        if out.len() >= want {
            break;
        }
        if l.id > after && l.at >= since && l.at <= until {
            out.push((l.id, l.line));
        }
    }
    Ok(())
}

/// A batch with its lines older than `before` taken out (retention), the
/// others keeping their ids.
pub struct Rewritten {
    pub lines: i64,
    pub first_at: i64,
    pub body: Vec<u8>,
    /// Lines taken out.
    pub gone: u64,
}

/// The batch without its lines older than `before`; None when none is
/// left (the batch goes as a whole) or none was older.
pub fn without_older(base_id: i64, body: &[u8], before: i64) -> Result<Option<Rewritten>> {
    let all = decode(base_id, body)?;
    let kept: Vec<&Line> = all.iter().filter(|l| l.at >= before).collect();
    let Some(first_at) = kept.iter().map(|l| l.at).min() else {
        return Ok(None);
    };
    if kept.len() == all.len() {
        return Ok(None);
    }
    let mut raw = Vec::new();
    for l in &kept {
        let place = usize::try_from(l.id - base_id)
            .map_err(|_| Error::internal("stored audit batch unreadable: a line's place"))?;
        push(&mut raw, place, l.at, &l.line)?;
    }
    Ok(Some(Rewritten {
        lines: kept.len() as i64,
        first_at,
        body: compress(&raw)?,
        gone: (all.len() - kept.len()) as u64,
    }))
}

/// The lines of a stored batch whose first line has id `base_id`, in id
/// order.
pub fn decode(base_id: i64, body: &[u8]) -> Result<Vec<Line>> {
    let bad = |why: &str| Error::internal(format!("stored audit batch unreadable: {why}"));
    let raw = zstd::stream::decode_all(body).map_err(|e| bad(&e.to_string()))?;
    let mut out = Vec::new();
    let mut rest = raw.as_slice();
    while !rest.is_empty() {
        let (head, tail) = rest
            .split_at_checked(HEADER)
            .ok_or_else(|| bad("truncated line header"))?;
        let (place, head) = head.split_at(4);
        let (at, len) = head.split_at(8);
        let place = u32::from_be_bytes(place.try_into().map_err(|_| bad("place"))?);
        let at = i64::from_be_bytes(at.try_into().map_err(|_| bad("time"))?);
        let len = u32::from_be_bytes(len.try_into().map_err(|_| bad("length"))?) as usize;
        let (text, tail) = tail
            .split_at_checked(len)
            .ok_or_else(|| bad("truncated line"))?;
        let line = String::from_utf8(text.to_vec()).map_err(|_| bad("a line is not UTF-8"))?;
        out.push(Line {
            id: base_id + i64::from(place),
            at,
            line,
        });
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
        let batch = Batch::of(&input).unwrap().unwrap();
        assert_eq!(batch.lines, 300);
        assert_eq!(
            (batch.first_at, batch.last_at),
            (input[0].at, input[299].at)
        );
        let out = decode(41, &batch.body).unwrap();
        assert_eq!(out.len(), 300);
        for (i, (l, want)) in out.iter().zip(&input).enumerate() {
            assert_eq!(l.id, 41 + i as i64);
            assert_eq!(l.at, want.at);
            assert_eq!(l.line, want.line);
        }
        let raw: usize = input.iter().map(|l| l.line.len()).sum();
        assert!(
            batch.body.len() * 4 < raw,
            "{} bytes for {raw}",
            batch.body.len()
        );
        assert!(Batch::of(&[]).unwrap().is_none());

        // What is left after the oldest go keeps its ids.
        let cut = input[100].at;
        let left = without_older(41, &batch.body, cut).unwrap().unwrap();
        let kept: Vec<_> = out.iter().filter(|l| l.at >= cut).cloned().collect();
        assert_eq!(decode(41, &left.body).unwrap(), kept);
        assert_eq!((left.lines, left.first_at), (kept.len() as i64, cut));
        assert_eq!(left.gone as usize, 300 - kept.len());
        let none_older = without_older(41, &batch.body, input[0].at).unwrap();
        assert!(none_older.is_none());
        assert!(without_older(41, &batch.body, i64::MAX).unwrap().is_none());

        // A page: after an id, within times, up to a count.
        let mut page = Vec::new();
        let times = (input[20].at, input[39].at);
        read_into(41, &batch.body, 41 + 9, times, 15, &mut page).unwrap();
        let ids: Vec<i64> = page.iter().map(|p| p.0).collect();
        assert_eq!(ids, (61..76).collect::<Vec<_>>());
    }

    #[test]
    fn a_damaged_batch_is_an_error_not_a_panic() {
        let body = Batch::of(&lines(3)).unwrap().unwrap().body;
        assert!(decode(1, &body[..body.len() / 2]).is_err());
        assert!(decode(1, b"not zstd").is_err());
        // A frame whose content ends inside a line's header, or its text.
        let cut = zstd::bulk::compress(&[0u8; HEADER - 3], 1).unwrap();
        assert!(decode(1, &cut).is_err());
        let mut long = Vec::new();
        push(&mut long, 0, 1, "abc").unwrap();
        long.truncate(long.len() - 1);
        assert!(decode(1, &zstd::bulk::compress(&long, 1).unwrap()).is_err());
    }
}
