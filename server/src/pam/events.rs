//! PAM events in the hash-chained audit log: one line of `"type": "pam"`
//! per grant, refusal, credential hand-out, start, end and terminate, with
//! readable names (session, resource, account, user, gateway, reason) and
//! never a credential. An event that cannot be put on record fails the
//! request, as request entries do: what was not audited did not happen.

use gatepass_api::pam::EndReason;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::state::Core;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    AccessGranted,
    AccessRefused,
    CredentialFetched,
    SessionStarted,
    SessionEnded,
    SessionTerminated,
    /// One connection of a reusable session closed (or failed); the
    /// session goes on.
    ConnectionClosed,
    /// A connection's recording ended with the gateway's signed final
    /// digest (the detail holds it).
    RecordingEnded,
    /// Retention deleted a recording (the detail names it).
    RecordingDeleted,
    /// A connection the gateway did not record (its recording is off).
    SessionNotRecorded,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AccessGranted => "access_granted",
            Kind::AccessRefused => "access_refused",
            Kind::CredentialFetched => "credential_fetched",
            Kind::SessionStarted => "session_started",
            Kind::SessionEnded => "session_ended",
            Kind::SessionTerminated => "session_terminated",
            Kind::ConnectionClosed => "connection_closed",
            Kind::RecordingEnded => "recording_ended",
            Kind::RecordingDeleted => "recording_deleted",
            Kind::SessionNotRecorded => "session_not_recorded",
        }
    }
}

/// What an event names. Only names and reasons: there is no field a
/// credential could go in.
#[derive(Clone, Debug, Default)]
pub struct Subject {
    pub session_id: Option<String>,
    pub resource: Option<String>,
    pub account: Option<String>,
    pub user: Option<String>,
    pub gateway: Option<String>,
}

pub fn reason_str(r: EndReason) -> &'static str {
    match r {
        EndReason::Expired => "expired",
        EndReason::Terminated => "terminated",
        EndReason::Closed => "closed",
        EndReason::GatewayLost => "gateway_lost",
        EndReason::Failed => "failed",
        EndReason::Idle => "idle",
    }
}

/// Appends one event to the audit file (and its database copy).
pub async fn record(
    core: &Core,
    kind: Kind,
    who: &Subject,
    reason: Option<&str>,
    detail: Option<&str>,
    now: i64,
) -> Result<()> {
    let mut event = Map::new();
    event.insert("time".into(), json!(crate::clock::rfc3339(now)));
    event.insert("type".into(), json!("pam"));
    event.insert("event".into(), json!(kind.as_str()));
    for (k, v) in [
        ("session_id", &who.session_id),
        ("resource", &who.resource),
        ("account", &who.account),
        ("user", &who.user),
        ("gateway", &who.gateway),
    ] {
        if let Some(v) = v {
            event.insert(k.into(), json!(v));
        }
    }
    if let Some(r) = reason {
        event.insert("reason".into(), json!(r));
    }
    if let Some(d) = detail {
        // Free text from the gateway or a refusal message; bounded so that
        // one event stays one readable line.
        let d: String = d.chars().take(1000).collect();
        event.insert("detail".into(), json!(d));
    }
    let lines = match &core.audit {
        Some(log) => log.append(event)?,
        None => vec![serde_json::to_string(&Value::Object(event))
            .map_err(|e| Error::internal(e.to_string()))?],
    };
    for line in lines {
        core.storage.append_audit(line, now).await?;
    }
    Ok(())
}
