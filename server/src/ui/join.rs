//! Join tokens on the hosts page: the ones not yet spent (by accessor),
//! a form that makes one, and revoke buttons, each through the API's
//! `hosts/join-tokens` paths and ACL. A new token is shown once, on the
//! answer to the form (as the CLI prints it once); no page reads it again,
//! since the server keeps only its hash.

use askama::Template;
use axum::extract::State as AxState;
use axum::http::request::Parts;
use axum::Form;
use gatepass_api::hosts::{JoinToken, JoinTokenInfo, JoinTokenList};
use serde::Deserialize;
use serde_json::json;

use super::pages::{nav, render, see, signed_in_form, Nav, Page};
use super::{allowed, Caller};
use crate::error::Error;
use crate::http::Operation;
use crate::state::Core;
use crate::state::State;

/// What the hosts page shows of join tokens.
pub struct JoinTokens {
    /// None: the policies do not allow listing them. Each with its expiry
    /// as RFC 3339.
    pub list: Option<Vec<(JoinTokenInfo, String)>>,
    pub can_create: bool,
    pub can_revoke: bool,
}

pub async fn join_tokens(core: &Core, c: &Caller) -> crate::Result<JoinTokens> {
    let list = allowed(
        c.read(core, Operation::List, "hosts/join-tokens", json!({}))
            .await,
    )?
    // No token (a 404 LIST) reads as Null.
    .map(|v| {
        let l: JoinTokenList = serde_json::from_value(v).unwrap_or_default();
        l.keys
            .iter()
            .filter_map(|a| l.key_info.get(a))
            .map(|t| (t.clone(), crate::clock::rfc3339(t.expire_time)))
            .collect()
    });
    Ok(JoinTokens {
        list,
        can_create: c.may(core, Operation::Write, "hosts/join-tokens").await,
        can_revoke: c.may(core, Operation::Delete, "hosts/join-tokens/x").await,
    })
}

#[derive(Deserialize)]
pub struct NewJoinForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    ttl: String,
    #[serde(default)]
    num_uses: String,
    #[serde(default)]
    user_mount: String,
    #[serde(default)]
    principals: String,
}

#[derive(Template)]
#[template(path = "join_token.html")]
struct Made {
    nav: Nav,
    token: JoinToken,
    expires: String,
}

/// `hosts/join-tokens`: makes a join token and shows it, this once.
pub async fn create(
    AxState(core): AxState<State>,
    parts: Parts,
    Form(f): Form<NewJoinForm>,
) -> Page {
    let c = match signed_in_form(&core, &parts, &f.csrf).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let mut body = json!({});
    for (k, v) in [
        ("ttl", &f.ttl),
        ("num_uses", &f.num_uses),
        ("user_mount", &f.user_mount),
        ("principals", &f.principals),
    ] {
        if !v.trim().is_empty() {
            body[k] = json!(v.trim());
        }
    }
    let v = c
        .read(&core, Operation::Write, "hosts/join-tokens", body)
        .await?;
    let token: JoinToken =
        serde_json::from_value(v).map_err(|e| Error::internal(format!("join token: {e}")))?;
    render(&Made {
        nav: nav(&c, "hosts"),
        expires: crate::clock::rfc3339(token.expire_time),
        token,
    })
}

#[derive(Deserialize)]
pub struct RevokeJoinForm {
    #[serde(default)]
    csrf: String,
    accessor: String,
}

/// `DELETE hosts/join-tokens/<accessor>`.
pub async fn revoke(
    AxState(core): AxState<State>,
    parts: Parts,
    Form(f): Form<RevokeJoinForm>,
) -> Page {
    let c = match signed_in_form(&core, &parts, &f.csrf).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let a = f.accessor.trim();
    if a.is_empty() || !a.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::invalid("not a join token's accessor").into());
    }
    c.call(
        &core,
        Operation::Delete,
        &format!("hosts/join-tokens/{a}"),
        json!({}),
    )
    .await?;
    Ok(see("/ui/hosts#join-h".to_string()))
}
