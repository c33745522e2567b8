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
    let r = Recording {
        id: uuid::Uuid::new_v4().to_string(),
        session_id: s.id.clone(),
        started_at: now,
        key: Secret::new(recording::new_key()),
        record_input,
        end: None,
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
    let s = sessions::get(core, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no session {id:?}")))?;
    let signer = gateways::find(core, &s.gateway)
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
        recordings.push(check_one(core, &s, &r, signer.as_ref(), open).await?);
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
    let events = plain.iter().flat_map(|p| recording::events_of(p)).collect();
    Ok(RecordingInfo {
        recording_id: r.id.clone(),
        started_at_ms: r.started_at.saturating_mul(1000),
        chunks: stored.len() as u64,
        complete: r.end.is_some(),
        message: verdict.message(),
        verdict,
        events,
    })
}
