//! Session recordings on the server: one per connection the gateway opens.
//!
//! At `open` the server makes the recording's key (32 random bytes) and
//! hands it to the gateway with the session; it keeps it in the
//! recording's record, which the storage seals at rest like every value.
//! The gateway sends the recording's chunks, already sealed and
//! hash-chained under that key (`gatepass_api::recording`), as the session
//! runs, and at its end the final digest signed with its own key; the
//! server records that digest in the audit log. The stored chunks are
//! sealed again at rest by the storage.
//!
//! Reading a recording (`GET pam/sessions/<id>/recording`) opens and checks
//! every chunk here, against the key and the gateway's registered signing
//! key: the answer says whether it is whole, cut (no signed end), or names
//! the first edited, dropped, reordered or missing chunk.
//!
//! Storage keys: `pam/rec/<session>/<recording>` the record,
//! `pam/rec-chunk/<session>/<recording>/<index, 12 digits>` each chunk.

use gatepass_api::pam::{RecordingInfo, SessionRecordings};
use gatepass_api::recording::{self, RecordingEnd, RecordingGrant, SealedChunk};
use serde::{Deserialize, Serialize};

use super::events::{self, Kind};
use super::gateways::{self, Gateway};
use super::sessions::{self, Session};
use super::Secret;
use crate::error::{Error, Result};
use crate::state::Core;
use crate::storage::Change;

/// The largest chunk the server takes (base64 text): gateways cut chunks
/// far smaller.
const MAX_CHUNK_TEXT: usize = 1 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Recording {
    pub id: String,
    pub session_id: String,
    pub started_at: i64,
    /// Base64 AES-256-GCM key.
    pub key: Secret,
    pub record_input: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<RecordingEnd>,
    /// The gateway's recording key (its public half) when the recording
    /// began: the key its end must be signed with. Kept here, not read from
    /// the gateway at check time, so that a gateway enrolled again with a
    /// new key (`setup --replace`), or deleted, leaves the recordings it
    /// made as whole as they were. Empty for a gateway without a key; None
    /// for recordings stored before this was kept (checked against the
    /// gateway's key of now, as then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

fn record_key(session: &str, recording: &str) -> String {
    format!("pam/rec/{session}/{recording}")
}

fn chunk_prefix(session: &str, recording: &str) -> String {
    format!("pam/rec-chunk/{session}/{recording}/")
}

fn chunk_key(session: &str, recording: &str, index: u64) -> String {
    format!("{}{index:012}", chunk_prefix(session, recording))
}

/// A new recording for a connection of `s`.
pub async fn begin(
    core: &Core,
    s: &Session,
    record_input: bool,
    now: i64,
) -> Result<RecordingGrant> {
    // Empty when the gateway has no key: its recordings end unsigned,
    // whatever key it has later.
    let signer = Some(
        gateways::find(core, &s.gateway)
            .await?
            .and_then(|g| g.recording_key)
            .unwrap_or_default(),
    );
    let r = Recording {
        id: uuid::Uuid::new_v4().to_string(),
        session_id: s.id.clone(),
        started_at: now,
        key: Secret::new(recording::new_key()),
        record_input,
        end: None,
        signer,
    };
    core.storage.put(&record_key(&s.id, &r.id), &r).await?;
    Ok(RecordingGrant {
        recording_id: r.id.clone(),
        key: r.key.expose().to_string(),
        record_input,
    })
}

/// The gateway's own recording of its own session.
async fn own(core: &Core, gw: &Gateway, session: &str, recording: &str) -> Result<Recording> {
    let s = sessions::get(core, session)
        .await?
        .filter(|s| s.gateway == gw.name)
        .ok_or_else(|| Error::NotFound(format!("no session {session:?}")))?;
    if uuid::Uuid::parse_str(recording).is_err() {
        return Err(Error::NotFound(format!("no recording {recording:?}")));
    }
    core.storage
        .get(&record_key(&s.id, recording))
        .await?
        .ok_or_else(|| Error::NotFound(format!("no recording {recording:?} of session {session}")))
}

/// Stores one chunk. The same chunk again is harmless (a gateway resends
/// what it is not sure arrived); another one under a stored index is
/// refused.
pub async fn put_chunk(
    core: &Core,
    gw: &Gateway,
    session: &str,
    recording: &str,
    index: &str,
    chunk: SealedChunk,
) -> Result<()> {
    let r = own(core, gw, session, recording).await?;
    let index: u64 = index
        .parse()
        .map_err(|_| Error::invalid(format!("chunk index {index:?} is not a number")))?;
    if chunk.index != index {
        return Err(Error::invalid(format!(
            "the chunk says it is chunk {}, sent as chunk {index}",
            chunk.index
        )));
    }
    if chunk.data.len() > MAX_CHUNK_TEXT {
        return Err(Error::invalid("the chunk is larger than 1 MiB"));
    }
    let key = chunk_key(session, recording, index);
    if r.end.is_some() {
        // A resend of a chunk it has is harmless even after the end.
        let stored: Option<SealedChunk> = core.storage.get(&key).await?;
        if stored.as_ref() == Some(&chunk) {
            return Ok(());
        }
        return Err(Error::invalid(format!(
            "recording {recording} has ended: no chunk is added after its end"
        )));
    }
    if !core.storage.put_if_absent(&key, &chunk).await? {
        let stored: Option<SealedChunk> = core.storage.get(&key).await?;
        if stored.as_ref() != Some(&chunk) {
            return Err(Error::invalid(format!(
                "chunk {index} of recording {recording} is stored already with other content"
            )));
        }
    }
    Ok(())
}

/// Takes the gateway's signed end, once, and puts the final digest on the
/// audit record.
pub async fn put_end(
    core: &Core,
    gw: &Gateway,
    session: &str,
    recording: &str,
    end: RecordingEnd,
    now: i64,
) -> Result<()> {
    let r = own(core, gw, session, recording).await?;
    if let Some(stored) = &r.end {
        return if *stored == end {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "recording {recording} has ended already with another end"
            )))
        };
    }
    let s = sessions::get(core, session)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no session {session:?}")))?;
    let detail = format!(
        "recording {recording}: {} chunks, final digest sha256:{}, {}",
        end.chunks,
        end.digest,
        if end.signature.is_some() {
            "signed by the gateway"
        } else {
            "unsigned (the gateway has no recording key)"
        }
    );
    // On record before it is stored: an end the audit log lacks was never
    // taken.
    events::record(
        core,
        Kind::RecordingEnded,
        &s.subject(),
        None,
        Some(&detail),
        now,
    )
    .await?;
    let rk = record_key(session, recording);
    core.storage
        .update(&rk, |mut cur: Recording| {
            if cur.end.is_some() {
                return Ok((Change::Keep, ()));
            }
            cur.end = Some(end.clone());
            Ok((Change::Put(cur), ()))
        })
        .await?;
    Ok(())
}

/// Every recording of session `id`, checked, with its events.
pub async fn read(core: &Core, id: &str, now: i64) -> Result<SessionRecordings> {
    read_after(core, id, &Default::default(), now).await
}

/// Parses `GET pam/sessions/<id>/recording?after=RID:N,RID:N`: for each
/// recording named, only the events of its chunks from index N on are
/// sent (the whole chain is still checked). This is how `watch` follows a
/// live session without reading what it has shown again.
pub fn parse_after(text: &str) -> Result<std::collections::HashMap<String, u64>> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (rec, n) = p.rsplit_once(':').ok_or_else(|| {
                Error::invalid(format!("after {p:?} is not RECORDING_ID:CHUNK_INDEX"))
            })?;
            let n = n
                .parse()
                .map_err(|_| Error::invalid(format!("after {p:?}: {n:?} is not a number")))?;
            Ok((rec.to_string(), n))
        })
        .collect()
}

/// [`read`], with the events of each recording named in `after` only from
/// that chunk on.
pub async fn read_after(
    core: &Core,
    id: &str,
    after: &std::collections::HashMap<String, u64>,
    now: i64,
) -> Result<SessionRecordings> {
    let s = sessions::get(core, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no session {id:?}")))?;
    // Only for recordings stored before each kept its own signer.
    let signer_now = gateways::find(core, &s.gateway)
        .await?
        .and_then(|g| g.recording_key)
        .and_then(|k| recording::parse_public_key(&k));
    let open = s.is_open_at(now);
    let mut recordings = Vec::new();
    for key in core
        .storage
        .keys_with_prefix(&format!("pam/rec/{id}/"))
        .await?
    {
        let Some(r) = core.storage.get::<Recording>(&key).await? else {
            continue;
        };
        let from = after.get(&r.id).copied().unwrap_or(0);
        let signer = match &r.signer {
            Some(k) => recording::parse_public_key(k),
            None => signer_now,
        };
        recordings.push(check_one(core, &s, &r, signer.as_ref(), open, from).await?);
    }
    recordings.sort_by(|a, b| {
        a.started_at_ms
            .cmp(&b.started_at_ms)
            .then(a.recording_id.cmp(&b.recording_id))
    });
    Ok(SessionRecordings {
        session_id: s.id.clone(),
        whole: recordings.iter().all(|r| r.verdict.is_whole()),
        recordings,
    })
}

async fn check_one(
    core: &Core,
    s: &Session,
    r: &Recording,
    signer: Option<&ed25519_dalek::VerifyingKey>,
    open: bool,
    from: u64,
) -> Result<RecordingInfo> {
    let prefix = chunk_prefix(&s.id, &r.id);
    let mut stored = Vec::new();
    for key in core.storage.keys_with_prefix(&prefix).await? {
        let Ok(at) = key[prefix.len()..].parse::<u64>() else {
            continue;
        };
        if let Some(c) = core.storage.get::<SealedChunk>(&key).await? {
            stored.push((at, c));
        }
    }
    let key = recording::parse_key(r.key.expose())
        .map_err(|e| Error::internal(format!("recording {}: {e}", r.id)))?;
    let (verdict, plain) = recording::check(
        &key,
        &s.id,
        &r.id,
        &stored,
        r.end.as_ref(),
        signer,
        open && r.end.is_none(),
    );
    let skip = usize::try_from(from).unwrap_or(usize::MAX);
    let events = plain
        .iter()
        .skip(skip)
        .flat_map(|p| recording::events_of(p))
        .collect();
    Ok(RecordingInfo {
        recording_id: r.id.clone(),
        started_at_ms: r.started_at.saturating_mul(1000),
        chunks: stored.len() as u64,
        complete: r.end.is_some(),
        message: verdict.message(),
        verdict,
        events,
        opened_chunks: plain.len() as u64,
    })
}

/// How many sessions one search reads at most: the newest of those the
/// other filters and the ACL leave. Each is opened and read whole, so the
/// bound keeps a search's cost that of reading 200 sessions.
pub const SEARCH_LIMIT: usize = 200;

/// Whether the recorded output, input (each channel's as one text, so a
/// match split across events is found) or exec commands of session `id`
/// contain `text`. The recordings are opened here and nothing is kept: no
/// index of the text exists outside the sealed chunks.
pub async fn contains(core: &Core, id: &str, text: &str, now: i64) -> Result<bool> {
    use gatepass_api::recording::EventKind;
    use std::collections::HashMap;
    let recs = read(core, id, now).await?;
    for r in &recs.recordings {
        let mut streams: HashMap<(u32, bool), String> = HashMap::new();
        for e in &r.events {
            match &e.kind {
                EventKind::Output { data } => {
                    streams.entry((e.ch, true)).or_default().push_str(data)
                }
                EventKind::Input { data } => {
                    streams.entry((e.ch, false)).or_default().push_str(data)
                }
                // The strings found in binary data are searched too.
                EventKind::Binary { strings, .. } if strings.contains(text) => return Ok(true),
                EventKind::Exec { command } if command.contains(text) => return Ok(true),
                _ => {}
            }
        }
        if streams.values().any(|s| s.contains(text)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Chunk keys deleted per write: a long recording's thousands of chunks go
/// in several short transactions rather than one that holds the writer.
const DELETE_BATCH: usize = 256;

/// Retention: deletes every recording that began before `before` and whose
/// session has ended at `now` (a session still running keeps its
/// recordings whatever their age), with its chunks, end and key; each
/// deletion is a `recording_deleted` audit event, put on record first. The
/// record goes last, so a run cut short leaves it to be found and finished
/// by the next one. Returns how many recordings were deleted.
pub async fn expire(core: &Core, before: i64, now: i64) -> Result<u64> {
    let mut deleted = 0;
    for key in core.storage.keys_with_prefix("pam/rec/").await? {
        let Some(r) = core.storage.get::<Recording>(&key).await? else {
            continue;
        };
        if r.started_at >= before {
            continue;
        }
        let session = sessions::get(core, &r.session_id).await?;
        if session.as_ref().is_some_and(|s| s.is_open_at(now)) {
            continue;
        }
        let who = session
            .map(|s| s.subject())
            .unwrap_or_else(|| events::Subject {
                session_id: Some(r.session_id.clone()),
                ..Default::default()
            });
        let chunks = core
            .storage
            .keys_with_prefix(&chunk_prefix(&r.session_id, &r.id))
            .await?;
        let detail = format!(
            "recording {}: {} chunks, begun {}, deleted by retention",
            r.id,
            chunks.len(),
            crate::clock::rfc3339(r.started_at)
        );
        events::record(core, Kind::RecordingDeleted, &who, None, Some(&detail), now).await?;
        for batch in chunks.chunks(DELETE_BATCH) {
            core.storage.delete_many(batch).await?;
        }
        core.storage.delete(&key).await?;
        deleted += 1;
    }
    Ok(deleted)
}
