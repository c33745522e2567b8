//! A running session's live view: the session page holds a `<pre>` whose
//! last element asks (htmx, `hx-trigger="load delay:2s"`) for the output
//! recorded since the previous answer; each answer appends that text and a
//! new such element naming where it stopped. Once the session has ended
//! and its recordings are complete (or the gateway has had a few polls to
//! deliver their last chunks), the answer carries no next element, so the
//! page stops asking by itself.
//!
//! The output is read as the CLI's `pam sessions watch` reads it: the
//! API's `pam/sessions/<id>/recording` with `after`, through the ACL and
//! the audit trail like every page.

use askama::Template;
use axum::extract::{Path, Query, State as AxState};
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse};
use gatepass_api::pam::{SessionInfo, SessionRecordings};
use gatepass_api::recording::EventKind;
use serde::Deserialize;
use serde_json::json;

use super::pages::{session_id, signed_in, text_of, Page};
use crate::error::Error;
use crate::http::Operation;
use crate::state::State;

/// Polls the page makes after seeing the session ended, for the gateway's
/// last chunks and its signed end to arrive (as `watch` does, at the page's
/// slower pace).
const GRACE_POLLS: u32 = 5;

/// The most output one answer carries: a session joined late shows its
/// recent output, not megabytes of it.
const MAX_TEXT: usize = 64 * 1024;

#[derive(Deserialize, Default)]
pub struct LiveQuery {
    /// Where the last answer stopped: `RECORDING_ID:CHUNKS,…`, as the API's
    /// `after`.
    #[serde(default)]
    after: String,
    /// Polls left after the session was seen ended.
    #[serde(default)]
    grace: Option<u32>,
}

#[derive(Template)]
#[template(path = "session_live.html")]
struct Live {
    text: String,
    /// The next poll's URL; None once the session is over.
    next: Option<String>,
}

/// The output recorded since `after`, and the element that asks for more.
pub async fn session_live(
    AxState(core): AxState<State>,
    parts: Parts,
    Path(id): Path<String>,
    Query(q): Query<LiveQuery>,
) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let id = session_id(&id)?;
    // The session's state first: an end seen here means the read after it
    // sees what was delivered before it.
    let info: SessionInfo = serde_json::from_value(
        c.read(
            &core,
            Operation::Read,
            &format!("pam/sessions/{id}"),
            json!({}),
        )
        .await?,
    )
    .map_err(|_| Error::invalid("no such session"))?;
    let ended = serde_json::to_value(info.state)
        .map(|v| text_of(&v) == "ended")
        .unwrap_or(false);
    // The API checks `after` (a malformed one is its 400).
    let after = q.after.trim();
    let v = c
        .read(
            &core,
            Operation::Read,
            &format!("pam/sessions/{id}/recording"),
            if after.is_empty() {
                json!({})
            } else {
                json!({ "after": after })
            },
        )
        .await?;
    let recs: SessionRecordings = serde_json::from_value(v)
        .map_err(|e| Error::internal(format!("recording of {id}: {e}")))?;

    // Where each recording stopped: the ones named before and not in this
    // answer keep their place.
    let mut cursor: std::collections::BTreeMap<String, u64> = after
        .split(',')
        .filter_map(|p| p.rsplit_once(':'))
        .filter_map(|(r, n)| Some((r.to_string(), n.parse().ok()?)))
        .collect();
    let mut raw = String::new();
    for r in &recs.recordings {
        for e in &r.events {
            if let EventKind::Output { data } = &e.kind {
                raw.push_str(data);
            }
        }
        cursor.insert(r.recording_id.clone(), r.opened_chunks);
    }
    let text = terminal_text(&raw);

    let complete = !recs.recordings.is_empty() && recs.recordings.iter().all(|r| r.complete);
    let grace = match (ended, q.grace) {
        (false, _) => None,
        (true, None) => Some(GRACE_POLLS),
        (true, Some(n)) => Some(n.saturating_sub(1)),
    };
    let over = complete || grace == Some(0);
    let next = (!over).then(|| {
        let after: Vec<String> = cursor.iter().map(|(r, n)| format!("{r}:{n}")).collect();
        let mut url = format!(
            "/ui/sessions/{id}/live?after={}",
            super::pages::urlencode(&after.join(","))
        );
        if let Some(g) = grace {
            url.push_str(&format!("&grace={g}"));
        }
        url
    });
    let html = Live { text, next }
        .render()
        .map_err(|e| Error::internal(format!("template: {e}")))?;
    Ok(Html(html).into_response())
}

/// Terminal output as plain text: escape sequences (colours, cursor moves)
/// dropped, line ends as `\n`, at most the last [`MAX_TEXT`] bytes.
fn terminal_text(raw: &str) -> String {
    let plain = String::from_utf8_lossy(&strip_ansi_escapes::strip(raw.as_bytes()))
        .replace("\r\n", "\n")
        .replace('\r', "");
    if plain.len() <= MAX_TEXT {
        return plain;
    }
    let mut start = plain.len() - MAX_TEXT;
    while !plain.is_char_boundary(start) {
        start += 1;
    }
    plain[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::terminal_text;

    #[test]
    fn terminal_text_drops_escapes_and_keeps_the_tail() {
        assert_eq!(
            terminal_text("\x1b[1;32mok\x1b[0m\r\nnext\r\n"),
            "ok\nnext\n"
        );
        let long = "é".repeat(40_000);
        let t = terminal_text(&long);
        assert!(t.len() <= super::MAX_TEXT && t.chars().all(|c| c == 'é'));
    }
}
