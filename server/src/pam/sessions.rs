//! Sessions: granted by `access` (a session record and a user certificate
//! of the gateway session CA), followed by the gateway (its open sessions
//! by long-poll), opened once by it (the credential hand-out; the session
//! becomes active), and ended by it, by an administrator's terminate, by a
//! gateway restart, or by time.
//!
//! A session's stored stage is pending, active or ended; one past its end
//! time reads as ended (reason `expired`) whatever is stored, so expiry
//! needs no writer. Ended sessions are kept as the audit trail.

use std::time::Duration;

use gatepass_api::pam::{
    Access, AccessRequest, EndReason, EndSession, GatewaySession, GatewaySessions, GatewayStarted,
    HostKeyTrust, OpenSession, OpenSessionSummary, SessionCredential, SessionInfo, SessionList,
    SessionState,
};
use serde::{Deserialize, Serialize};

use super::accounts::{self, Account, Login};
use super::events::{self, Kind, Subject};
use super::gateways::{self, Gateway};
use super::resources::{self, Resource, Trust};
use super::{session_ca, Name};
use crate::auth::token::TokenEntry;
use crate::error::{Error, Result};
use crate::policy::Capability;
use crate::ssh::{issuers, principal::Principal, sign};
use crate::state::Core;
use crate::storage::Change;
use crate::{mounts, ssh};

/// Longest a gateway's sessions request is held open.
const MAX_WAIT: i64 = 60;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    Pending,
    Active {
        started_at: i64,
    },
    Ended {
        started_at: Option<i64>,
        ended_at: i64,
        reason: EndReason,
        detail: Option<String>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub resource: Name,
    pub account: Name,
    pub username: String,
    pub gateway: Name,
    /// The display name of the token that asked.
    pub user: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub stage: Stage,
    /// Serves any number of connections until its end; otherwise one, and
    /// it ends when that one closes.
    #[serde(default)]
    pub reusable: bool,
    /// A keyed hash of the asking token's accessor
    /// ([`creator_of`]): only that token may relay
    /// connections to the session. None for sessions granted before it
    /// was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<String>,
    /// [`person_of`] the token that asked, when it tells: any token of
    /// that person may relay too. A session granted from the web UI is
    /// asked for with the session's token, which stays in the browser; the
    /// person's CLI relays with a token of its own login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator_person: Option<String>,
}

impl Session {
    /// The stage as of `now`: an open session past its end has ended.
    pub fn stage_at(&self, now: i64) -> Stage {
        match &self.stage {
            Stage::Pending | Stage::Active { .. } if now >= self.expires_at => Stage::Ended {
                started_at: self.started_at(),
                ended_at: self.expires_at,
                reason: EndReason::Expired,
                detail: None,
            },
            s => s.clone(),
        }
    }

    fn started_at(&self) -> Option<i64> {
        match &self.stage {
            Stage::Pending => None,
            Stage::Active { started_at } => Some(*started_at),
            Stage::Ended { started_at, .. } => *started_at,
        }
    }

    pub fn is_open_at(&self, now: i64) -> bool {
        !matches!(self.stage_at(now), Stage::Ended { .. })
    }

    pub(super) fn subject(&self) -> Subject {
        Subject {
            session_id: Some(self.id.clone()),
            resource: Some(self.resource.to_string()),
            account: Some(self.account.to_string()),
            user: Some(self.user.clone()),
            gateway: Some(self.gateway.to_string()),
        }
    }
}

fn session_key(id: &str) -> String {
    format!("pam/session/{id}")
}
fn open_key(gateway: &Name, id: &str) -> String {
    format!("pam/open/{gateway}/{id}")
}

/// The session list's indexes, written with each session (which is never
/// changed in what they hold): `pam/sessions-by/time/<created>/<id>`,
/// `…/user/<user>/<created>/<id>` and `…/resource/<resource>/<created>/<id>`,
/// names in hex (any byte may be in a display name) and the creation time
/// in fixed-width hex, so each sorts oldest first and a page newest first
/// is a range read backwards. The `<created>/<id>` end is the cursor.
const BY: &str = "pam/sessions-by/";

fn cursor_of(s: &Session) -> String {
    format!("{:016x}/{}", s.created_at.max(0), s.id)
}

fn index_keys(s: &Session) -> Vec<String> {
    let c = cursor_of(s);
    vec![
        format!("{BY}time/{c}"),
        format!("{BY}user/{}/{c}", hex::encode(&s.user)),
        format!("{BY}resource/{}/{c}", hex::encode(s.resource.as_str())),
    ]
}

fn state_of(stage: &Stage) -> SessionState {
    match stage {
        Stage::Pending => SessionState::Pending,
        Stage::Active { .. } => SessionState::Active,
        Stage::Ended { .. } => SessionState::Ended,
    }
}

/// What reads show of a session, as of `now`.
pub fn info(s: &Session, now: i64) -> SessionInfo {
    let stage = s.stage_at(now);
    let rfc = crate::clock::rfc3339;
    let (ended_at, end_reason, end_detail) = match &stage {
        Stage::Ended {
            ended_at,
            reason,
            detail,
            ..
        } => (Some(rfc(*ended_at)), Some(*reason), detail.clone()),
        _ => (None, None, None),
    };
    SessionInfo {
        session_id: s.id.clone(),
        resource: s.resource.to_string(),
        account: s.account.to_string(),
        username: s.username.clone(),
        gateway: s.gateway.to_string(),
        user: s.user.clone(),
        created_at: rfc(s.created_at),
        expires_at: rfc(s.expires_at),
        started_at: s.started_at().map(rfc),
        ended_at,
        state: state_of(&stage),
        reusable: s.reusable,
        end_reason,
        end_detail,
    }
}

/// A session by ID; a text that is no session ID finds nothing.
pub async fn get(core: &Core, id: &str) -> Result<Option<Session>> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Ok(None);
    }
    core.storage.get(&session_key(id)).await
}

fn no_session(id: &str) -> Error {
    Error::NotFound(format!("no session {id:?}"))
}

/// The requested duration, checked against the account's longest.
pub fn duration_for(account: &Account, requested: Option<&str>) -> Result<i64> {
    // An account stored before max_duration was bounded may hold any
    // positive number: its sessions get the bound, not an end time that
    // overflows or a certificate valid for ever.
    let max = account.max_duration.min(accounts::MAX_SESSION_DURATION);
    let d = match requested.filter(|t| !t.trim().is_empty()) {
        Some(t) => super::positive_duration("duration", t)?,
        None => max,
    };
    if d > max {
        return Err(Error::invalid(format!(
            "duration {} is longer than the account's max_duration of {}",
            crate::duration::text(d),
            crate::duration::text(max)
        )));
    }
    Ok(d)
}

/// When a session granted at `now` for `duration` ends; refused rather
/// than wrapped, or past what RFC 3339 can show (an empty `expires_at`).
fn end_of(now: i64, duration: i64) -> Result<i64> {
    now.checked_add(duration)
        .filter(|end| !crate::clock::rfc3339(*end).is_empty())
        .ok_or_else(|| Error::invalid("the session would end past the year 9999"))
}

/// Grants a session: checks the request, puts the grant on record, stores
/// the session and signs the caller's key. A refusal after the resource
/// and account are known is on record too.
pub async fn access(
    core: &Core,
    resource: &Name,
    account: &Name,
    req: AccessRequest,
    user: &Requester,
    now: i64,
) -> Result<Access> {
    let r = resources::require(core, resource).await?;
    let a = accounts::require(core, resource, account).await?;
    let who = Subject {
        session_id: None,
        resource: Some(resource.to_string()),
        account: Some(account.to_string()),
        user: Some(user.display_name.clone()),
        gateway: Some(r.gateway.to_string()),
    };
    match grant(core, &r, &a, req, user, now).await {
        Ok(access) => Ok(access),
        Err(e @ (Error::InvalidRequest(_) | Error::NotFound(_))) => {
            events::record(
                core,
                Kind::AccessRefused,
                &who,
                None,
                Some(&e.public_message()),
                now,
            )
            .await?;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

async fn grant(
    core: &Core,
    r: &Resource,
    a: &Account,
    req: AccessRequest,
    user: &Requester,
    now: i64,
) -> Result<Access> {
    let duration = duration_for(a, req.duration.as_deref())?;
    let expires_at = end_of(now, duration)?;
    let public_key = sign::parse_public_key(&req.public_key)?;
    let gw = gateways::find(core, &r.gateway).await?.ok_or_else(|| {
        Error::invalid(format!(
            "the resource's gateway {:?} is not enrolled",
            r.gateway.as_str()
        ))
    })?;
    let s = Session {
        id: uuid::Uuid::new_v4().to_string(),
        resource: r.name.clone(),
        account: a.name.clone(),
        username: a.username.clone(),
        gateway: r.gateway.clone(),
        user: user.display_name.clone(),
        created_at: now,
        expires_at,
        stage: Stage::Pending,
        reusable: req.reusable,
        creator: Some(user.creator.clone()),
        creator_person: user.person.clone(),
    };
    let signed_key = session_ca::sign(
        core,
        &session_ca::AccessCert {
            public_key: &public_key,
            session_id: &s.id,
            login: a.name.as_str(),
            expires_at: s.expires_at,
            allow_forwarding: a.allow_forwarding,
        },
        now,
    )
    .await?;
    // On record before it exists: no grant goes unaudited.
    events::record(core, Kind::AccessGranted, &s.subject(), None, None, now).await?;
    store(core, &s).await?;
    Ok(Access {
        session_id: s.id.clone(),
        // A relay gateway has no address: the CLI names it by its name.
        gateway: match &gw.address {
            Some(a) => a.as_str().to_string(),
            None => gw.name.to_string(),
        },
        relay: gw.is_relay(),
        gateway_host_keys: gw.host_keys.clone(),
        login: a.name.to_string(),
        expires_at: crate::clock::rfc3339(s.expires_at),
        expires_at_unix: s.expires_at,
        signed_key,
    })
}

/// Stores a new session with its list index entries and, while it is
/// open, its entry in its gateway's open list, in one transaction.
pub async fn store(core: &Core, s: &Session) -> Result<()> {
    let mut items = vec![(
        session_key(&s.id),
        serde_json::to_value(s).map_err(|e| Error::internal(e.to_string()))?,
    )];
    items.extend(
        index_keys(s)
            .into_iter()
            .map(|k| (k, serde_json::json!({}))),
    );
    if !matches!(s.stage, Stage::Ended { .. }) {
        items.push((open_key(&s.gateway, &s.id), serde_json::json!(s.expires_at)));
    }
    core.storage.put_many(&items, false).await?;
    Ok(())
}

/// Who asks for a session.
#[derive(Clone, Debug)]
pub struct Requester {
    /// The token's display name, shown as the session's user.
    pub display_name: String,
    /// [`creator_of`] the token.
    pub creator: String,
    /// [`person_of`] the token.
    pub person: Option<String>,
}

/// `LIST pam/sessions` filters.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub resource: Option<String>,
    pub account: Option<String>,
    pub user: Option<String>,
    pub state: Option<SessionState>,
}

pub fn parse_state(s: &str) -> Result<SessionState> {
    match s {
        "pending" => Ok(SessionState::Pending),
        "active" => Ok(SessionState::Active),
        "ended" => Ok(SessionState::Ended),
        other => Err(Error::invalid(format!(
            "state {other:?} is not one of pending, active, ended"
        ))),
    }
}

/// Sessions matching the filter, newest first.
pub async fn list(core: &Core, f: &Filter, now: i64) -> Result<SessionList> {
    let mut found = Vec::new();
    // An open session is on its gateway's open list: those few are read
    // instead of every session kept.
    let open_only = matches!(f.state, Some(SessionState::Pending | SessionState::Active));
    let keys = if open_only {
        core.storage
            .keys_with_prefix("pam/open/")
            .await?
            .iter()
            .filter_map(|k| k.rsplit('/').next().map(session_key))
            .collect()
    } else {
        core.storage.keys_with_prefix("pam/session/").await?
    };
    for k in keys {
        let Some(s) = core.storage.get::<Session>(&k).await? else {
            continue;
        };
        let i = info(&s, now);
        let keep = f.resource.as_deref().is_none_or(|r| r == i.resource)
            && f.account.as_deref().is_none_or(|a| a == i.account)
            && f.user.as_deref().is_none_or(|u| u == i.user)
            && f.state.is_none_or(|st| st == i.state);
        if keep {
            found.push((s.created_at, i));
        }
    }
    found.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| a.1.session_id.cmp(&b.1.session_id))
    });
    let mut out = SessionList::default();
    for (_, i) in found {
        out.keys.push(i.session_id.clone());
        out.key_info.insert(i.session_id.clone(), i);
    }
    Ok(out)
}

/// Most sessions one page holds.
pub const MAX_PAGE: usize = 1000;

/// A page of the sessions matching the filter, newest first, after the
/// cursor `after` of the page before (`next_after` of its answer). Open
/// sessions (pending, active) are found from the gateways' open lists;
/// others through the user's, the resource's or the time index, reading
/// the records of the range until the page is full, not every session.
pub async fn list_page(
    core: &Core,
    f: &Filter,
    after: Option<&str>,
    limit: usize,
    now: i64,
) -> Result<SessionList> {
    let limit = limit.clamp(1, MAX_PAGE);
    if let Some(c) = after {
        if c.is_empty()
            || !c
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'/' || b == b'-')
        {
            return Err(Error::invalid(format!(
                "after {c:?} is not a cursor this list gave"
            )));
        }
    }
    let keep = |i: &SessionInfo| {
        f.resource.as_deref().is_none_or(|r| r == i.resource)
            && f.account.as_deref().is_none_or(|a| a == i.account)
            && f.user.as_deref().is_none_or(|u| u == i.user)
            && f.state.is_none_or(|st| st == i.state)
    };
    // (cursor, info), newest first.
    let mut found: Vec<(String, SessionInfo)> = Vec::new();
    let mut more = false;
    if matches!(f.state, Some(SessionState::Pending | SessionState::Active)) {
        for k in core.storage.keys_with_prefix("pam/open/").await? {
            let Some(id) = k.rsplit('/').next() else {
                continue;
            };
            let Some(s) = get(core, id).await? else {
                continue;
            };
            let i = info(&s, now);
            let c = cursor_of(&s);
            if keep(&i) && after.is_none_or(|a| c.as_str() < a) {
                found.push((c, i));
            }
        }
        found.sort_by(|a, b| b.0.cmp(&a.0));
        more = found.len() > limit;
        found.truncate(limit);
    } else {
        let base = match (&f.user, &f.resource) {
            (Some(u), _) => format!("{BY}user/{}/", hex::encode(u)),
            (None, Some(r)) => format!("{BY}resource/{}/", hex::encode(r)),
            (None, None) => format!("{BY}time/"),
        };
        // `0` follows `/`: the end of the range under `base`.
        let end = format!("{}0", base.trim_end_matches('/'));
        let mut to = match after {
            Some(a) => std::cmp::min(end, format!("{base}{a}")),
            None => end,
        };
        let step = (limit + 1) as i64;
        'scan: loop {
            let keys = core.storage.keys_between_desc(&base, &to, step).await?;
            for k in &keys {
                let Some(id) = k.rsplit('/').next() else {
                    continue;
                };
                let Some(s) = get(core, id).await? else {
                    continue;
                };
                let i = info(&s, now);
                if keep(&i) {
                    if found.len() == limit {
                        more = true;
                        break 'scan;
                    }
                    found.push((cursor_of(&s), i));
                }
            }
            match keys.last() {
                Some(last) if keys.len() as i64 == step => to = last.clone(),
                _ => break,
            }
        }
    }
    let mut out = SessionList::default();
    if more {
        out.next_after = found.last().map(|(c, _)| c.clone());
    }
    for (_, i) in found {
        out.keys.push(i.session_id.clone());
        out.key_info.insert(i.session_id.clone(), i);
    }
    Ok(out)
}

/// Set once every session stored before the list's indexes existed has
/// its entries.
const INDEX_DONE: &str = "pam/migrated/session-index";

/// Gives the sessions stored before the list's indexes existed their
/// entries, once per database (at start, before the server serves).
pub async fn index_for_search(core: &Core) -> Result<u64> {
    if core
        .storage
        .get::<serde_json::Value>(INDEX_DONE)
        .await?
        .is_some()
    {
        return Ok(0);
    }
    let mut indexed = 0;
    let mut batch = Vec::new();
    for k in core.storage.keys_with_prefix("pam/session/").await? {
        if let Some(s) = core.storage.get::<Session>(&k).await? {
            indexed += 1;
            batch.extend(
                index_keys(&s)
                    .into_iter()
                    .map(|k| (k, serde_json::json!({}))),
            );
        }
        if batch.len() >= 3000 {
            core.storage.put_many(&batch, false).await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        core.storage.put_many(&batch, false).await?;
    }
    core.storage.put(INDEX_DONE, &serde_json::json!({})).await?;
    Ok(indexed)
}

/// Ends a stored open session with `reason`, in storage (so of concurrent
/// enders exactly one does it), and drops it from its gateway's list.
/// Returns the ended session, or None when it had ended already.
async fn finish(
    core: &Core,
    s: &Session,
    reason: EndReason,
    detail: Option<String>,
    now: i64,
) -> Result<Option<Session>> {
    let ended = core
        .storage
        .update(&session_key(&s.id), |mut cur: Session| {
            if matches!(cur.stage, Stage::Ended { .. }) {
                return Ok((Change::Keep, None));
            }
            // Time up first: a session past its end ended then, whatever
            // is reported later.
            let (reason, detail, ended_at) = if now >= cur.expires_at {
                (EndReason::Expired, None, cur.expires_at)
            } else {
                (reason, detail.clone(), now)
            };
            cur.stage = Stage::Ended {
                started_at: cur.started_at(),
                ended_at,
                reason,
                detail,
            };
            Ok((Change::Put(cur.clone()), Some(cur)))
        })
        .await?
        .flatten();
    core.storage.delete(&open_key(&s.gateway, &s.id)).await?;
    Ok(ended)
}

/// Ends, in storage, the sessions on the gateways' open lists that are past
/// their end: ones never used (the gateway reports only the sessions it
/// opened), and ones whose end the gateway never got to report. They read
/// as ended already, but their entries stayed on the lists, read on every
/// poll of their gateway until it restarted. Returns how many were taken
/// off. Run by retention.
pub async fn close_expired(core: &Core, now: i64) -> Result<u64> {
    let mut closed = 0;
    for k in core.storage.keys_with_prefix("pam/open/").await? {
        let Some(id) = k.rsplit('/').next() else {
            continue;
        };
        let s = match get(core, id).await? {
            Some(s) if s.is_open_at(now) => continue,
            Some(s) => s,
            None => {
                core.storage.delete(&k).await?;
                closed += 1;
                continue;
            }
        };
        finish_on_record(core, &s, EndReason::Expired, now).await?;
        if k != open_key(&s.gateway, &s.id) {
            core.storage.delete(&k).await?;
        }
        closed += 1;
    }
    Ok(closed)
}

/// [`finish`], and the end on record (`session_ended`) when this was it.
async fn finish_on_record(core: &Core, s: &Session, reason: EndReason, now: i64) -> Result<()> {
    if let Some(ended) = finish(core, s, reason, None, now).await? {
        let (reason, detail) = end_detail(&ended);
        events::record(
            core,
            Kind::SessionEnded,
            &ended.subject(),
            reason,
            detail.as_deref(),
            now,
        )
        .await?;
    }
    Ok(())
}

fn end_detail(s: &Session) -> (Option<&'static str>, Option<String>) {
    match &s.stage {
        Stage::Ended { reason, detail, .. } => (Some(events::reason_str(*reason)), detail.clone()),
        _ => (None, None),
    }
}

/// An administrator ends an open session; the gateway's long-poll answers
/// at once without it, and the gateway closes the connection. A session
/// that has ended already (or expired) is refused with 400: there is
/// nothing to terminate, and its end reason stays what it was.
pub async fn terminate(core: &Core, id: &str, by: &str, now: i64) -> Result<SessionInfo> {
    let s = get(core, id).await?.ok_or_else(|| no_session(id))?;
    if !s.is_open_at(now) {
        return Err(Error::invalid(format!("session {id} has already ended")));
    }
    let Some(ended) = finish(core, &s, EndReason::Terminated, None, now).await? else {
        return Err(Error::invalid(format!("session {id} has already ended")));
    };
    let (reason, _) = end_detail(&ended);
    events::record(
        core,
        Kind::SessionTerminated,
        &ended.subject(),
        reason,
        Some(&format!("terminated by {by}")),
        now,
    )
    .await?;
    Ok(info(&ended, now))
}

/// The gateway's open sessions now, with an index that changes whenever
/// they or the session CA's keys do.
pub async fn gateway_sessions(core: &Core, gw: &Gateway, now: i64) -> Result<GatewaySessions> {
    let prefix = format!("pam/open/{}/", gw.name);
    let mut sessions = Vec::new();
    for id in core.storage.list(&prefix).await? {
        let Some(s) = get(core, &id).await? else {
            continue;
        };
        let stage = s.stage_at(now);
        if s.gateway == gw.name && !matches!(stage, Stage::Ended { .. }) {
            sessions.push(OpenSessionSummary {
                session_id: s.id.clone(),
                expires_at: s.expires_at,
                state: state_of(&stage),
            });
        }
    }
    let mut out = GatewaySessions {
        index: 0,
        sessions,
        session_ca_keys: session_ca::public_keys(core, now).await?,
        relay_requests: core.relays.waiting_for(&gw.name),
    };
    out.index = crate::longpoll::content_index(&out)?;
    Ok(out)
}

/// Long-poll: answers at once if the list differs from `index`, otherwise
/// when it changes (a grant, terminate or end, on this server or announced
/// by another, wakes it at once; expiries are seen within a second) or
/// after `wait`.
pub async fn poll(core: &Core, gw: &Gateway, index: u64, wait: i64) -> Result<GatewaySessions> {
    let mut changes = core.storage.subscribe();
    let mut relays = core.relays.subscribe();
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(wait.clamp(0, MAX_WAIT) as u64);
    loop {
        let st = gateway_sessions(core, gw, core.clock.now()).await?;
        if st.index != index || tokio::time::Instant::now() >= deadline {
            return Ok(st);
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = relays.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// How the gateway is to trust the target's host key, from the resource.
async fn host_key_trust(core: &Core, r: &Resource) -> Result<HostKeyTrust> {
    Ok(match &r.trust {
        Trust::Pinned(keys) => HostKeyTrust::Pinned { keys: keys.clone() },
        Trust::HostCa(mount) => {
            let m = mounts::get(core, mount).await?.ok_or_else(|| {
                Error::invalid(format!(
                    "the resource's host_ca_mount {mount:?} no longer exists"
                ))
            })?;
            let text = issuers::public_keys_text(core, &m).await?.ok_or_else(|| {
                Error::invalid(format!(
                    "the resource's host_ca_mount {mount:?} has no CA key"
                ))
            })?;
            HostKeyTrust::HostCa {
                ca_keys: text
                    .lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect(),
            }
        }
    })
}

/// Signs the gateway's per-session key with the account's CA role: the
/// one principal is the target user name, valid until the session's end.
async fn session_certificate(
    core: &Core,
    s: &Session,
    ca_mount: &str,
    ca_role: &str,
    public_key: &str,
    now: i64,
) -> Result<String> {
    let key = sign::parse_public_key(public_key)?;
    let m = mounts::get(core, ca_mount).await?.ok_or_else(|| {
        Error::invalid(format!(
            "the account's ca_mount {ca_mount:?} no longer exists"
        ))
    })?;
    let input = sign::SignInput {
        public_key: key,
        cert_type: ssh_key::certificate::CertType::User,
        valid_principals: vec![Principal::new(&s.username)?],
        ttl: Some((s.expires_at - now).max(1)),
        key_id: None,
        critical_options: Default::default(),
        extensions: Default::default(),
    };
    let who = sign::Requester {
        display_name: format!("pam-session-{}", s.id),
        meta: Default::default(),
        entity: None,
    };
    let (_, cert) = ssh::issue_with(core, &m, ca_role, &input, &who, now).await?;
    cert.to_openssh()
        .map_err(|e| Error::internal(e.to_string()))
}

/// The gateway opens a pending session: the session becomes active and the
/// gateway gets what it needs to log in. Only the gateway the session and
/// its resource name, only once, only before the end.
pub async fn open(
    core: &Core,
    gw: &Gateway,
    id: &str,
    req: OpenSession,
    now: i64,
) -> Result<GatewaySession> {
    // Another gateway's session is as good as absent to this one.
    let s = get(core, id)
        .await?
        .filter(|s| s.gateway == gw.name)
        .ok_or_else(|| no_session(id))?;
    match s.stage_at(now) {
        Stage::Pending => {}
        Stage::Active { .. } if s.reusable => {}
        Stage::Active { .. } => {
            return Err(Error::invalid(format!(
                "session {id} is already open: a session is opened once"
            )))
        }
        Stage::Ended { reason, .. } => {
            return Err(Error::invalid(format!(
                "session {id} has ended ({})",
                events::reason_str(reason)
            )))
        }
    }
    let r = resources::get(core, &s.resource).await?.ok_or_else(|| {
        Error::invalid(format!(
            "resource {:?} no longer exists",
            s.resource.as_str()
        ))
    })?;
    if r.gateway != gw.name {
        return Err(Error::PermissionDenied);
    }
    let a = accounts::get(core, &s.resource, &s.account)
        .await?
        .ok_or_else(|| {
            Error::invalid(format!(
                "account {:?} of resource {:?} no longer exists",
                s.account.as_str(),
                s.resource.as_str()
            ))
        })?;
    if matches!(a.login, Login::Certificate { .. }) && req.public_key.is_none() {
        return Err(Error::invalid(
            "public_key is required: this account logs in with a certificate for a key the gateway makes",
        ));
    }
    let host_key_trust = host_key_trust(core, &r).await?;
    // Claimed in storage: of concurrent opens, on any server, one wins
    // (a reusable session admits the later ones too).
    let claimed = core
        .storage
        .update(&session_key(id), |mut cur: Session| {
            if now >= cur.expires_at {
                return Ok((Change::Keep, None));
            }
            match cur.stage {
                Stage::Pending => {
                    cur.stage = Stage::Active { started_at: now };
                    Ok((Change::Put(cur), Some(true)))
                }
                Stage::Active { .. } if cur.reusable => Ok((Change::Keep, Some(false))),
                _ => Ok((Change::Keep, None)),
            }
        })
        .await?
        .flatten();
    let Some(first) = claimed else {
        return Err(Error::invalid(format!("session {id} is no longer pending")));
    };
    let credential = match &a.login {
        Login::Password { password } => SessionCredential::Password {
            password: password.expose().to_string(),
        },
        Login::Key { private_key } => SessionCredential::Key {
            private_key: private_key.expose().to_string(),
        },
        Login::Certificate { ca_mount, ca_role } => SessionCredential::Certificate {
            signed_key: session_certificate(
                core,
                &s,
                ca_mount,
                ca_role,
                req.public_key.as_deref().unwrap_or_default(),
                now,
            )
            .await?,
        },
    };
    let method = match &a.login {
        Login::Password { .. } => "password",
        Login::Key { .. } => "key",
        Login::Certificate { .. } => "certificate",
    };
    // On record before the credential leaves the server.
    events::record(
        core,
        Kind::CredentialFetched,
        &s.subject(),
        None,
        Some(&format!("auth_method {method}")),
        now,
    )
    .await?;
    if first {
        events::record(core, Kind::SessionStarted, &s.subject(), None, None, now).await?;
    }
    // Each connection is recorded on its own: a reusable session's
    // connections may overlap, and each chain is the gateway's alone.
    let recording = if req.unrecorded {
        events::record(
            core,
            Kind::SessionNotRecorded,
            &s.subject(),
            None,
            Some("the gateway's recording is off ([recording] enabled = false)"),
            now,
        )
        .await?;
        None
    } else {
        Some(super::recordings::begin(core, &s, a.record_input, now).await?)
    };
    Ok(GatewaySession {
        session_id: s.id.clone(),
        expires_at: s.expires_at,
        host: r.host.as_str().to_string(),
        port: r.port,
        username: a.username.clone(),
        credential,
        host_key_trust,
        allow_forwarding: a.allow_forwarding,
        recording,
    })
}

/// The gateway reports a session's end (or that it could not log in:
/// reason `failed`, which is also on record as a refused access). A session
/// that has ended already keeps its first end.
pub async fn end(core: &Core, gw: &Gateway, id: &str, req: EndSession, now: i64) -> Result<()> {
    let s = get(core, id)
        .await?
        .filter(|s| s.gateway == gw.name)
        .ok_or_else(|| no_session(id))?;
    let detail = req
        .detail
        .map(|d| d.chars().take(1000).collect::<String>())
        .filter(|d| !d.trim().is_empty());
    // One connection of a reusable session closed, or failed (the target
    // refused that login, or that connection to it broke): the session
    // goes on, for its other connections and later ones. Ending it would
    // cut them off, and tell them an administrator had.
    if s.reusable
        && s.is_open_at(now)
        && matches!(
            req.reason,
            EndReason::Closed | EndReason::Idle | EndReason::Failed
        )
    {
        // A login the gateway could not make (a host key that did not
        // match, say) is a refused access, as for any session.
        if req.reason == EndReason::Failed {
            events::record(
                core,
                Kind::AccessRefused,
                &s.subject(),
                Some(events::reason_str(req.reason)),
                detail.as_deref(),
                now,
            )
            .await?;
        }
        return events::record(
            core,
            Kind::ConnectionClosed,
            &s.subject(),
            Some(events::reason_str(req.reason)),
            detail.as_deref(),
            now,
        )
        .await;
    }
    let Some(ended) = finish(core, &s, req.reason, detail, now).await? else {
        return Ok(());
    };
    let (reason, detail) = end_detail(&ended);
    if matches!(
        ended.stage,
        Stage::Ended {
            reason: EndReason::Failed,
            ..
        }
    ) {
        events::record(
            core,
            Kind::AccessRefused,
            &ended.subject(),
            reason,
            detail.as_deref(),
            now,
        )
        .await?;
    }
    events::record(
        core,
        Kind::SessionEnded,
        &ended.subject(),
        reason,
        detail.as_deref(),
        now,
    )
    .await
}

/// A gateway (re)started: the sessions its previous run had active are
/// gone with it (ended, reason `gateway_lost`); pending ones stay open for
/// their users to connect. Its host keys are updated if it sent them.
pub async fn started(
    core: &Core,
    gw: &Gateway,
    req: GatewayStarted,
    now: i64,
) -> Result<GatewaySessions> {
    gateways::set_host_keys(core, gw, &req.host_keys).await?;
    let prefix = format!("pam/open/{}/", gw.name);
    for id in core.storage.list(&prefix).await? {
        let Some(s) = get(core, &id).await? else {
            core.storage.delete(&format!("{prefix}{id}")).await?;
            continue;
        };
        let lost = matches!(s.stage, Stage::Active { .. });
        if lost || !s.is_open_at(now) {
            finish_on_record(core, &s, EndReason::GatewayLost, now).await?;
        }
    }
    gateway_sessions(core, gw, now).await
}

/// A gateway was deleted: the sessions it had active end on record
/// (`gateway_lost`). Its token is revoked, so it can neither report their
/// ends nor follow a terminate; it ends them itself when its next poll is
/// refused. Pending ones stay open for a gateway enrolled under the name.
pub async fn gateway_deleted(core: &Core, name: &Name, now: i64) -> Result<()> {
    let prefix = format!("pam/open/{name}/");
    for id in core.storage.list(&prefix).await? {
        if let Some(s) = get(core, &id).await? {
            if matches!(s.stage, Stage::Active { .. }) {
                finish_on_record(core, &s, EndReason::GatewayLost, now).await?;
            }
        }
    }
    Ok(())
}

/// Who may relay a connection to a session: the token that asked for the
/// session or any token of the same person ([`person_of`]), if its own
/// policies let it ask for access to that account ([`may_ask_for`]), while
/// the session is open, and only if its gateway takes relayed connections.
pub async fn authorize_relay(
    core: &Core,
    id: &str,
    caller: &TokenEntry,
    now: i64,
) -> Result<Session> {
    let s = get(core, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no session {id:?}")))?;
    let same_token = s.creator.as_deref() == Some(creator_of(core, caller).as_str());
    let same_person = s.creator_person.is_some() && s.creator_person == person_of(caller);
    if !(same_token || same_person) || !may_ask_for(core, caller, &s).await? {
        return Err(Error::PermissionDenied);
    }
    if !s.is_open_at(now) {
        return Err(Error::invalid(format!("session {id} has ended")));
    }
    let gw: Option<Gateway> = gateways::find(core, &s.gateway).await?;
    match gw {
        None => Err(Error::invalid(format!(
            "the session's gateway {} is no longer enrolled",
            s.gateway
        ))),
        Some(g) if !g.is_relay() => Err(Error::invalid(format!(
            "gateway {} takes direct connections: ssh to it at {}",
            g.name,
            g.address.as_ref().map(|a| a.as_str()).unwrap_or("")
        ))),
        Some(_) => Ok(s),
    }
}

/// Whether the caller's own policies still let it ask for access to the
/// session's account. Being the same person is not enough: a token someone
/// made from theirs for a script, with narrower policies, carries their
/// entity, and must not reach into the sessions they opened; nor may a
/// token whose access was taken away since it asked.
async fn may_ask_for(core: &Core, caller: &TokenEntry, s: &Session) -> Result<bool> {
    if caller.is_root() {
        return Ok(true);
    }
    let acl = crate::policies::acl_for(core, &caller.policies).await?;
    let path = format!(
        "pam/resources/{}/accounts/{}/access",
        s.resource.as_str(),
        s.account.as_str()
    );
    Ok(acl.allows(&path, Capability::Update))
}

/// What a session keeps of the token that asked for it: a keyed hash of
/// its accessor (the accessor itself stays in the token store). A web UI
/// session signed in with a token is a child the person never holds, so
/// for it the token they signed in with counts: the one their CLI uses.
pub fn creator_of(core: &Core, caller: &TokenEntry) -> String {
    let held = match &caller.parent {
        Some(parent) if caller.path == crate::auth::token::UI_SESSION_PATH => parent,
        _ => &caller.accessor,
    };
    core.hasher.hash(held)
}

/// The person a token was issued to, where the server itself bound it:
/// their identity entity (an OIDC or JWT login, and the tokens made from
/// it), or the userpass user whose login made it (by name and the id the
/// user was created with). None for other tokens: an AppRole or OIDC login
/// path is shared by everyone who logs in there, and a token's display
/// name and metadata are its creator's free text.
pub fn person_of(caller: &TokenEntry) -> Option<String> {
    if let Some(entity) = &caller.entity_id {
        return Some(format!("entity/{entity}"));
    }
    caller
        .login_user
        .as_ref()
        .map(|user| format!("userpass/{user}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(stage: Stage) -> Session {
        Session {
            id: "00000000-0000-4000-8000-000000000000".into(),
            resource: Name::parse("r", "web").unwrap(),
            account: Name::parse("a", "root").unwrap(),
            username: "root".into(),
            gateway: Name::parse("g", "gw").unwrap(),
            user: "alice".into(),
            created_at: 100,
            expires_at: 200,
            stage,
            reusable: false,
            creator: None,
            creator_person: None,
        }
    }

    #[test]
    fn an_open_session_past_its_end_reads_as_expired() {
        for stage in [Stage::Pending, Stage::Active { started_at: 150 }] {
            let s = session(stage);
            assert!(s.is_open_at(199));
            let i = info(&s, 200);
            assert_eq!(i.state, SessionState::Ended);
            assert_eq!(i.end_reason, Some(EndReason::Expired));
            assert_eq!(
                i.ended_at.as_deref(),
                Some(crate::clock::rfc3339(200).as_str())
            );
        }
        let s = session(Stage::Ended {
            started_at: None,
            ended_at: 120,
            reason: EndReason::Terminated,
            detail: None,
        });
        assert_eq!(info(&s, 300).end_reason, Some(EndReason::Terminated));
    }

    /// A token of the person who asked for a session relays it only while
    /// its own policies grant the account's access path: a token made from
    /// theirs for a script with narrower policies carries their entity and
    /// is still refused.
    #[tokio::test]
    async fn a_narrower_token_of_the_same_person_does_not_relay_their_session() {
        let dir = tempfile::tempdir().unwrap();
        let core = Core::for_test(&dir, 150).await;
        crate::policies::write(
            &core,
            "person",
            r#"path "pam/resources/+/accounts/+/access" { capabilities = ["update"] }"#,
        )
        .await
        .unwrap();
        let mut s = session(Stage::Pending);
        s.creator = Some(core.hasher.hash("accessor-of-the-asker"));
        s.creator_person = Some("entity/e-1".into());
        core.storage.put(&session_key(&s.id), &s).await.unwrap();
        let token = |accessor: &str, policies: &[&str]| -> TokenEntry {
            serde_json::from_value(serde_json::json!({
                "hash": "h", "accessor": accessor, "policies": policies,
                "parent": null, "display_name": "alice", "meta": {},
                "creation_time": 100, "creation_ttl": 3600, "expire_time": 3700,
                "explicit_max_ttl": 0, "max_expire": null, "num_uses": 0,
                "renewable": true, "path": "auth/oidc/login", "bound_cidrs": [],
                "orphan": false, "entity_id": "e-1",
            }))
            .unwrap()
        };
        // The person's tokens that may ask for access get past the owner
        // check (and find the test's gateway missing).
        for t in [
            token("accessor-of-the-asker", &["default", "person"]),
            token("another-of-hers", &["person"]),
        ] {
            let e = authorize_relay(&core, &s.id, &t, 150).await.unwrap_err();
            assert!(e.to_string().contains("no longer enrolled"), "{e}");
        }
        // Her entity, narrower policies: the script's token, and the asking
        // token itself once its policy no longer grants the access path.
        let e = authorize_relay(&core, &s.id, &token("script", &["default"]), 150)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::PermissionDenied), "{e}");
        crate::policies::write(
            &core,
            "person",
            r#"path "pam/sessions" { capabilities = ["list"] }"#,
        )
        .await
        .unwrap();
        let asker = token("accessor-of-the-asker", &["person"]);
        let e = authorize_relay(&core, &s.id, &asker, 150)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::PermissionDenied), "{e}");
    }

    /// A certificate account whose sessions last at most `max_duration`.
    fn cert_account(max_duration: i64) -> Account {
        Account {
            resource: Name::parse("r", "web").unwrap(),
            name: Name::parse("a", "root").unwrap(),
            username: "root".into(),
            login: Login::Certificate {
                ca_mount: "ssh".into(),
                ca_role: "r".into(),
            },
            max_duration,
            allow_forwarding: false,
            record_input: true,
        }
    }

    #[test]
    fn durations_are_bounded_by_the_account() {
        let a = cert_account(3600);
        assert_eq!(duration_for(&a, None).unwrap(), 3600);
        assert_eq!(duration_for(&a, Some("10m")).unwrap(), 600);
        let e = duration_for(&a, Some("2h")).unwrap_err().to_string();
        assert!(
            e.contains("longer than the account's max_duration of 1h"),
            "{e}"
        );
        assert!(duration_for(&a, Some("0")).is_err());
    }

    /// An account stored before max_duration was bounded: its sessions
    /// are held to the bound, and no end time overflows or goes past what
    /// RFC 3339 can show.
    #[test]
    fn an_unbounded_stored_account_gets_bounded_sessions() {
        let now = 1_700_000_000;
        for stored in [i64::MAX, 100_000_000 * 3600] {
            let a = cert_account(stored);
            let d = duration_for(&a, None).unwrap();
            assert_eq!(d, accounts::MAX_SESSION_DURATION);
            let end = end_of(now, d).unwrap();
            assert_eq!(end, now + 768 * 3600);
            assert!(!crate::clock::rfc3339(end).is_empty());
            let e = duration_for(&a, Some("100000000h")).unwrap_err();
            assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
            assert!(e.to_string().contains("max_duration of 768h"), "{e}");
            assert!(duration_for(&a, Some("9223372036854775807")).is_err());
        }
        assert!(matches!(
            end_of(i64::MAX - 10, 3600),
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            end_of(253_402_300_000, 3600),
            Err(Error::InvalidRequest(_))
        ));
    }
}
