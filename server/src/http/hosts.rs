//! Routes under `hosts/`: each arm reads the request into
//! `gatepass_api::hosts`' types, calls `crate::hosts`, and picks the reply
//! shape.

use gatepass_api::hosts::{Ack, EnrollRequest, Mapping, NewJoinToken, SignHostKey};
use serde_json::json;

use super::request::{Operation, Request};
use super::{data, no_route, Reply};
use crate::auth::token::TokenEntry;
use crate::error::{Error, Result};
use crate::hosts;
use crate::state::Core;

/// Enrollment needs no token: the join token is in the body.
pub fn is_unauthenticated(req: &Request) -> bool {
    req.path.as_str() == "hosts/enroll" && req.op == Operation::Write
}

/// The fields of `GET hosts/self/state`: numbers that say where a host
/// is, never secrets, so kept readable in the audit log.
pub const POLL_FIELDS: &[&str] = &["index", "wait", "applied"];

/// A number, or a duration in hostd's form (`30s`, `1m30s`): what those
/// fields hold when hostd sends them.
pub fn is_plain_poll_value(s: &str) -> bool {
    s.len() <= 20
        && s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, 's' | 'm' | 'h' | '.'))
}

/// `GET hosts/self/state`, the long-poll: awaited by `dispatch` on its
/// own, so that what a waiting poll holds is this future, not the largest
/// of every route's.
pub async fn self_state(core: &Core, req: &Request, caller: Option<&TokenEntry>) -> Result<Reply> {
    let f = &req.fields;
    let host = hosts::own_host(core, caller).await?;
    // Every field is read before anything is stored: a poll refused for a
    // bad field acknowledges nothing.
    let applied = f
        .int("applied")?
        .map(|a| u64::try_from(a).map_err(|_| Error::invalid("applied must not be negative")))
        .transpose()?;
    let index = f.int("index")?.unwrap_or(0).max(0) as u64;
    let wait = f.duration("wait")?.unwrap_or(0);
    hosts::seen(core, &host, req.now);
    // hostd's poll after an apply acknowledges it (see `Ack`): noted, and
    // written with the others by the next flush.
    if let Some(applied) = applied {
        hosts::applied::note(core, &host, applied, req.now);
    }
    let answer = hosts::poll_state(core, &host, index, wait).await?;
    Ok(Reply::Rendered(answer.rendered()?))
}

pub async fn route(core: &Core, req: &Request, caller: Option<&TokenEntry>) -> Result<Reply> {
    use Operation::*;
    let segs: Vec<&str> = req.path.split('/').collect();
    let f = &req.fields;
    match (&segs[1..], req.op) {
        (["join-tokens"], Write) => {
            let spec: NewJoinToken = f.parse()?;
            data(&hosts::new_join_token(core, spec, req.now).await?)
        }
        (["join-tokens"], List) => {
            let list = hosts::join_tokens(core, req.now).await?;
            // Vault's LIST answers no keys with 404.
            if list.keys.is_empty() {
                return Ok(Reply::NotFound);
            }
            data(&list)
        }
        (["join-tokens", accessor], Delete) => {
            hosts::revoke_join_token(core, accessor).await?;
            Ok(Reply::NoContent)
        }
        (["enroll"], Write) => {
            let r: EnrollRequest = f.parse()?;
            data(&hosts::enroll(core, r, req.now).await?)
        }
        (["self", "state"], Read) => self_state(core, req, caller).await,
        (["self", "sign-host-key"], Write) => {
            let host = hosts::own_host(core, caller).await?;
            let r: SignHostKey = f.parse()?;
            data(&hosts::sign_host_key(core, &host, &r, req.now).await?)
        }
        (["self", "ack"], Write) => {
            let host = hosts::own_host(core, caller).await?;
            let ack: Ack = f.parse()?;
            hosts::ack(core, &host, &ack, req.now).await?;
            Ok(Reply::NoContent)
        }
        (["self", "unenroll"], Write) => {
            let host = hosts::own_host(core, caller).await?;
            hosts::unenroll(core, &host, req.now).await?;
            Ok(Reply::NoContent)
        }
        (["self"], Read) => {
            let host = hosts::own_host(core, caller).await?;
            data(&hosts::host_detail(core, &host, req.now).await?)
        }
        ([], List) => Ok(Reply::List(hosts::list(core).await?)),
        (["mappings"], List) => Ok(Reply::List(
            hosts::mappings(core).await?.into_keys().collect(),
        )),
        (["mappings", user], Read) => Ok(match hosts::mapping(core, user).await? {
            Some(m) => Reply::Data(json!({ "principals": m.principals })),
            None => Reply::NotFound,
        }),
        (["mappings", user], Write) => {
            // The user is checked before the body, as it names the path.
            hosts::validate_local_user(user)?;
            let mapping: Mapping = f.parse()?;
            hosts::set_mapping(core, user, &mapping).await?;
            Ok(Reply::NoContent)
        }
        (["mappings", user], Delete) => {
            hosts::delete_mapping(core, user).await?;
            Ok(Reply::NoContent)
        }
        (
            ["join-tokens" | "enroll" | "mappings"]
            | ["self", ..]
            | ["mappings", _]
            | ["join-tokens", _],
            _,
        ) => Err(Error::UnsupportedOperation),
        ([id], Read) if hosts::is_host_ref(id) => Ok(match hosts::find(core, id).await? {
            Some(h) => data(&hosts::host_detail(core, &h, req.now).await?)?,
            None => Reply::NotFound,
        }),
        ([id], Delete) if hosts::is_host_ref(id) => {
            if let Some(h) = hosts::find(core, id).await? {
                hosts::unenroll(core, &h, req.now).await?;
            }
            Ok(Reply::NoContent)
        }
        _ => Err(no_route(&req.path)),
    }
}
