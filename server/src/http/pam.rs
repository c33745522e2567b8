//! Routes under `pam/`: each arm reads the request into
//! `gatepass_api::pam`'s types, calls `crate::pam`, and picks the reply
//! shape. Gateways are identified by their token, never by the body.

use gatepass_api::pam::{
    AccessRequest, AccountSpec, EndSession, GatewayEnroll, GatewayStarted, NewGatewayJoinToken,
    OpenSession, ResourceSpec, SessionList,
};

use super::request::{Operation, Request};
use super::{data, no_route, Reply};
use crate::auth::token::TokenEntry;
use crate::error::{Error, Result};
use crate::pam::{accounts, gateways, recordings, resources, sessions, Name};
use crate::policy::Capability;
use crate::state::Core;

/// Enrollment needs no token: the join token is in the body.
pub fn is_unauthenticated(req: &Request) -> bool {
    req.path.as_str() == "pam/gateways/enroll" && req.op == Operation::Write
}

/// Paths any token may call, because the handler lets only the owner
/// through: relaying a connection to a session is for the token that asked
/// for the session or its person, while their policies grant the account's
/// `access` path (`sessions::authorize_relay`); no path rule alone could
/// say "the session's owner".
pub fn is_owner_checked(req: &Request) -> bool {
    let segs: Vec<&str> = req.path.split('/').collect();
    matches!(segs.as_slice(), ["pam", "sessions", _, "relay"]) && req.op == Operation::Write
}

/// A relayed connection must ask to switch protocols.
fn require_upgrade(req: &Request) -> Result<()> {
    if req.upgrade {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "this path relays a connection: send it with \"Connection: Upgrade\" and \"Upgrade: {}\" over HTTP/1.1",
            gatepass_api::pam::RELAY_PROTOCOL
        )))
    }
}

/// The sessions of `found` (newest first) whose recordings contain
/// `text`, among the first [`recordings::SEARCH_LIMIT`] whose recording
/// path the caller may read: a recording the token may not read is
/// neither searched nor counted.
async fn search(
    core: &Core,
    req: &Request,
    caller: Option<&TokenEntry>,
    found: SessionList,
    text: &str,
    now: i64,
) -> Result<SessionList> {
    let caller = super::routes::caller_of(caller)?;
    let acl = if caller.is_root() {
        None
    } else {
        Some(crate::policies::acl_for(core, &caller.policies).await?)
    };
    let mount = req.path.split('/').next().unwrap_or("pam");
    let mut out = SessionList::default();
    let mut searched = 0;
    for id in found.keys {
        if searched == recordings::SEARCH_LIMIT {
            break;
        }
        let path = format!("{mount}/sessions/{id}/recording");
        if acl
            .as_ref()
            .is_some_and(|a| !a.allows(&path, Capability::Read))
        {
            continue;
        }
        searched += 1;
        if recordings::contains(core, &id, text, now).await? {
            if let Some(i) = found.key_info.get(&id) {
                out.key_info.insert(id.clone(), i.clone());
            }
            out.keys.push(id);
        }
    }
    Ok(out)
}

fn list(keys: Vec<String>) -> Result<Reply> {
    Ok(Reply::List(keys))
}

pub async fn route(core: &Core, req: &Request, caller: Option<&TokenEntry>) -> Result<Reply> {
    use Operation::*;
    let segs: Vec<&str> = req.path.split('/').collect();
    let f = &req.fields;
    let now = req.now;
    match (&segs[1..], req.op) {
        // Gateways, as administrators see them.
        (["gateways", "join-tokens"], Write) => {
            let spec: NewGatewayJoinToken = f.parse()?;
            data(&gateways::new_join_token(core, spec, now).await?)
        }
        (["gateways", "enroll"], Write) => {
            let r: GatewayEnroll = f.parse()?;
            let replaced = r
                .replace
                .then(|| gateways::gateway_name(&r.name))
                .transpose()?;
            let enrolled = gateways::enroll(core, r, now).await?;
            // The gateway it replaced (if any) lost its token: what it ran
            // ends on record as when it is deleted. The new one has opened
            // nothing yet.
            if let Some(name) = replaced {
                sessions::gateway_deleted(core, &name, now).await?;
            }
            data(&enrolled)
        }
        (["gateways", "join-tokens" | "enroll"], _) => Err(Error::UnsupportedOperation),
        (["gateways"], List) => list(gateways::list(core).await?),
        (["gateways", name], Read) => {
            let name = gateways::gateway_name(name)?;
            Ok(match gateways::find(core, &name).await? {
                Some(g) => data(&gateways::info(&g))?,
                None => Reply::NotFound,
            })
        }
        (["gateways", name], Delete) => {
            let name = gateways::gateway_name(name)?;
            gateways::delete(core, &name, now).await?;
            sessions::gateway_deleted(core, &name, now).await?;
            Ok(Reply::NoContent)
        }

        // Resources and accounts.
        (["resources"], List) => list(resources::list(core).await?),
        (["resources", r], Write) => {
            let name = Name::parse("resource", r)?;
            let spec: ResourceSpec = f.parse()?;
            let res = resources::validate(core, &name, spec).await?;
            resources::write(core, &res).await?;
            data(&resources::info(&res))
        }
        (["resources", r], Read) => {
            let name = Name::parse("resource", r)?;
            Ok(match resources::get(core, &name).await? {
                Some(res) => data(&resources::info(&res))?,
                None => Reply::NotFound,
            })
        }
        (["resources", r], Delete) => {
            resources::delete(core, &Name::parse("resource", r)?).await?;
            Ok(Reply::NoContent)
        }
        (["resources", r, "accounts"], List) => {
            let r = Name::parse("resource", r)?;
            resources::require(core, &r).await?;
            list(accounts::list(core, &r).await?)
        }
        (["resources", r, "accounts", a], Write) => {
            let r = Name::parse("resource", r)?;
            let a = Name::parse("account", a)?;
            resources::require(core, &r).await?;
            let spec: AccountSpec = f.parse()?;
            let old = accounts::get(core, &r, &a).await?;
            let acc = accounts::validate(core, &r, &a, spec, old.as_ref()).await?;
            accounts::write(core, &acc).await?;
            data(&accounts::info(&acc))
        }
        (["resources", r, "accounts", a], Read) => {
            let r = Name::parse("resource", r)?;
            let a = Name::parse("account", a)?;
            Ok(match accounts::get(core, &r, &a).await? {
                Some(acc) => data(&accounts::info(&acc))?,
                None => Reply::NotFound,
            })
        }
        (["resources", r, "accounts", a], Delete) => {
            let r = Name::parse("resource", r)?;
            accounts::delete(core, &r, &Name::parse("account", a)?).await?;
            Ok(Reply::NoContent)
        }
        (["resources", r, "accounts", a, "access"], Write) => {
            let caller = super::routes::caller_of(caller)?;
            let r = Name::parse("resource", r)?;
            let a = Name::parse("account", a)?;
            let ask: AccessRequest = f.parse()?;
            let who = sessions::Requester {
                display_name: caller.display_name.clone(),
                creator: sessions::creator_of(core, caller),
                person: sessions::person_of(caller),
            };
            data(&sessions::access(core, &r, &a, ask, &who, now).await?)
        }

        // Sessions.
        (["sessions"], List) => {
            let text =
                |k: &str| -> Result<Option<String>> { Ok(f.str(k)?.filter(|v| !v.is_empty())) };
            let filter = sessions::Filter {
                resource: text("resource")?,
                account: text("account")?,
                user: text("user")?,
                state: text("state")?
                    .map(|s| sessions::parse_state(&s))
                    .transpose()?,
            };
            let (after, limit) = (text("after")?, f.int("limit")?);
            let grep = text("grep")?;
            if grep.is_none() && (after.is_some() || limit.is_some()) {
                let limit = match limit {
                    None => sessions::MAX_PAGE,
                    Some(n) if n >= 1 && n as usize <= sessions::MAX_PAGE => n as usize,
                    Some(n) => {
                        return Err(Error::invalid(format!(
                            "limit {n} is not between 1 and {}",
                            sessions::MAX_PAGE
                        )))
                    }
                };
                let page = sessions::list_page(core, &filter, after.as_deref(), limit, now).await?;
                if page.keys.is_empty() {
                    return Ok(Reply::NotFound);
                }
                return data(&page);
            }
            let mut found = sessions::list(core, &filter, now).await?;
            if let Some(grep) = grep {
                found = search(core, req, caller, found, &grep, now).await?;
            }
            // Vault's LIST answers no keys with 404.
            if found.keys.is_empty() {
                return Ok(Reply::NotFound);
            }
            data(&found)
        }
        (["sessions", id], Read) => Ok(match sessions::get(core, id).await? {
            Some(s) => data(&sessions::info(&s, now))?,
            None => Reply::NotFound,
        }),
        (["sessions", id, "recording"], Read) => {
            let after = match f.str("after")? {
                Some(a) => recordings::parse_after(&a)?,
                None => Default::default(),
            };
            data(&recordings::read_after(core, id, &after, now).await?)
        }
        (["sessions", id, "terminate"], Write) => {
            let caller = super::routes::caller_of(caller)?;
            data(&sessions::terminate(core, id, &caller.display_name, now).await?)
        }
        (["sessions", id, "relay"], Write) => {
            let caller = super::routes::caller_of(caller)?;
            require_upgrade(req)?;
            let s = sessions::authorize_relay(core, id, caller, now).await?;
            let end = core.relays.request(&s.gateway, &s.id).await?;
            Ok(Reply::RelayUser(end))
        }

        // The gateway's own paths.
        (["gateway", "self", "started"], Write) => {
            let gw = gateways::own_gateway(core, caller).await?;
            let r: GatewayStarted = f.parse()?;
            data(&sessions::started(core, &gw, r, now).await?)
        }
        (["gateway", "self", "sessions"], Read) => {
            let gw = gateways::own_gateway(core, caller).await?;
            gateways::seen(core, &gw, now).await?;
            let index = f.int("index")?.unwrap_or(0).max(0) as u64;
            let wait = f.duration("wait")?.unwrap_or(0);
            data(&sessions::poll(core, &gw, index, wait).await?)
        }
        (["gateway", "self", "sessions", id, "open"], Write) => {
            let gw = gateways::own_gateway(core, caller).await?;
            let r: OpenSession = f.parse()?;
            data(&sessions::open(core, &gw, id, r, now).await?)
        }
        (["gateway", "self", "relay", conn_id], Write) => {
            let gw = gateways::own_gateway(core, caller).await?;
            require_upgrade(req)?;
            Ok(Reply::RelayGateway(core.relays.claim(&gw.name, conn_id)?))
        }
        (["gateway", "self", "sessions", id, "recordings", rec, "chunks", index], Write) => {
            let gw = gateways::own_gateway(core, caller).await?;
            let chunk: gatepass_api::recording::SealedChunk = f.parse()?;
            recordings::put_chunk(core, &gw, id, rec, index, chunk).await?;
            Ok(Reply::NoContent)
        }
        (["gateway", "self", "sessions", id, "recordings", rec, "end"], Write) => {
            let gw = gateways::own_gateway(core, caller).await?;
            let end: gatepass_api::recording::RecordingEnd = f.parse()?;
            recordings::put_end(core, &gw, id, rec, end, now).await?;
            Ok(Reply::NoContent)
        }
        (["gateway", "self", "sessions", id, "end"], Write) => {
            let gw = gateways::own_gateway(core, caller).await?;
            let r: EndSession = f.parse()?;
            sessions::end(core, &gw, id, r, now).await?;
            Ok(Reply::NoContent)
        }
        (
            ["gateways" | "resources" | "sessions"]
            | ["gateways", _]
            | ["resources", _]
            | ["resources", _, "accounts"]
            | ["resources", _, "accounts", _]
            | ["resources", _, "accounts", _, "access"]
            | ["sessions", _]
            | ["sessions", _, "terminate" | "relay" | "recording"]
            | ["gateway", "self", "sessions", _, "recordings", _, "chunks", _]
            | ["gateway", "self", "sessions", _, "recordings", _, "end"]
            | ["gateway", "self", "relay", _]
            | ["gateway", "self", "started" | "sessions"]
            | ["gateway", "self", "sessions", _, "open" | "end"],
            _,
        ) => Err(Error::UnsupportedOperation),
        _ => Err(no_route(&req.path)),
    }
}
