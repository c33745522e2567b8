//! The tokens and leases page: the user's own session token always (its
//! `auth/token/lookup-self`, which every token may read), the tokens
//! behind `auth/token/accessors` and the leases under
//! `sys/leases/lookup/` where the user's policies allow listing them, and
//! revoke buttons where they allow revoking. Tokens are shown by accessor
//! only: a token's text is never read into a page.

use askama::Template;
use axum::extract::{Query, State as AxState};
use axum::http::request::Parts;
use axum::Form;
use serde::Deserialize;
use serde_json::{json, Value};

use super::pages::{
    keys_of, nav, render, see, signed_in, signed_in_form, text_of, urlencode, Nav, Page,
};
use super::{allowed, Caller};
use crate::http::Operation;
use crate::state::{Core, State};

/// Tokens listed at most (the accessor list is not paged by the API).
const MAX_TOKENS: usize = 200;
/// Leases listed at most under one prefix.
const MAX_LEASES: usize = 200;

/// A token as `lookup-self` / `lookup-accessor` describe it, without its
/// `id` (the token itself).
pub struct TokenRow {
    pub accessor: String,
    pub display_name: String,
    pub policies: String,
    pub path: String,
    pub ttl: String,
    pub expire_time: String,
}

fn token_row(v: &Value) -> TokenRow {
    let policies = v["policies"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    TokenRow {
        accessor: text_of(&v["accessor"]),
        display_name: text_of(&v["display_name"]),
        policies,
        path: text_of(&v["path"]),
        ttl: text_of(&v["ttl"]),
        expire_time: text_of(&v["expire_time"]),
    }
}

/// One entry of a lease listing: a folder to open, or a lease.
pub struct LeaseRow {
    /// The prefix (for a folder) or lease ID, whole.
    pub id: String,
    pub folder: bool,
    /// For a lease: its time left, if it could be read.
    pub ttl: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct Tokens {
    nav: Nav,
    own: TokenRow,
    /// None: the policies do not allow listing accessors.
    tokens: Option<Vec<TokenRow>>,
    more_tokens: bool,
    can_revoke_token: bool,
    prefix: String,
    /// The prefix one folder up, for a link back.
    parent: Option<String>,
    /// None: the policies do not allow listing leases here.
    leases: Option<Vec<LeaseRow>>,
    can_revoke_lease: bool,
}

#[derive(Deserialize, Default)]
pub struct TokensQuery {
    /// The lease folder shown, e.g. `ssh/creds/otp/`.
    #[serde(default)]
    prefix: String,
}

/// A lease prefix as the listing names them: path segments, each ending
/// in `/`, with nothing that could leave `sys/leases/lookup/`.
fn lease_prefix(p: &str) -> String {
    let p = p.trim().trim_start_matches('/');
    if p.split('/').any(|s| s == ".." || s == ".") {
        return String::new();
    }
    p.to_string()
}

pub async fn tokens(
    AxState(core): AxState<State>,
    parts: Parts,
    Query(q): Query<TokensQuery>,
) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    // A token whose policies leave out `default` may not read itself; the
    // session's own entry (already authenticated) says the same then.
    let own = match allowed(
        c.read(&core, Operation::Read, "auth/token/lookup-self", json!({}))
            .await,
    )? {
        Some(v) => token_row(&v),
        None => TokenRow {
            accessor: c.entry.accessor.clone(),
            display_name: c.entry.display_name.clone(),
            policies: c.entry.policies.join(", "),
            path: c.entry.path.clone(),
            ttl: c
                .entry
                .expire_time
                .map(|e| (e - core.clock.now()).max(0).to_string())
                .unwrap_or_else(|| "0".into()),
            expire_time: c
                .entry
                .expire_time
                .map(crate::clock::rfc3339)
                .unwrap_or_default(),
        },
    };
    let (tokens, more_tokens) = other_tokens(&core, &c, &own.accessor).await?;
    let prefix = lease_prefix(&q.prefix);
    let leases = leases(&core, &c, &prefix).await?;
    let parent = (!prefix.is_empty()).then(|| {
        let trimmed = prefix.trim_end_matches('/');
        match trimmed.rsplit_once('/') {
            Some((up, _)) => format!("{up}/"),
            None => String::new(),
        }
    });
    render(&Tokens {
        nav: nav(&c, "tokens"),
        can_revoke_token: c
            .may(&core, Operation::Write, "auth/token/revoke-accessor")
            .await,
        can_revoke_lease: c.may(&core, Operation::Write, "sys/leases/revoke").await,
        own,
        tokens,
        more_tokens,
        prefix,
        parent,
        leases,
    })
}

/// The tokens behind the accessors the user may list (their own is shown
/// apart), each looked up through `auth/token/lookup-accessor`.
async fn other_tokens(
    core: &Core,
    c: &Caller,
    own: &str,
) -> crate::Result<(Option<Vec<TokenRow>>, bool)> {
    let Some(v) = allowed(
        c.read(core, Operation::List, "auth/token/accessors", json!({}))
            .await,
    )?
    else {
        return Ok((None, false));
    };
    let accessors = keys_of(&v);
    let mut rows = Vec::new();
    for a in accessors.iter().filter(|a| *a != own).take(MAX_TOKENS) {
        // A token that expired between the list and the lookup is gone.
        match c
            .read(
                core,
                Operation::Write,
                "auth/token/lookup-accessor",
                json!({ "accessor": a }),
            )
            .await
        {
            Ok(t) => rows.push(token_row(&t)),
            Err(e) if crate::http::status_of(&e).is_client_error() => {}
            Err(e) => return Err(e),
        }
    }
    Ok((Some(rows), accessors.len() > MAX_TOKENS + 1))
}

async fn leases(core: &Core, c: &Caller, prefix: &str) -> crate::Result<Option<Vec<LeaseRow>>> {
    let listed = match c
        .read(
            core,
            Operation::List,
            &format!("sys/leases/lookup/{prefix}"),
            json!({}),
        )
        .await
    {
        Ok(v) => v,
        Err(crate::error::Error::PermissionDenied) => return Ok(None),
        // Nothing under this prefix (Vault's LIST answers that with 404).
        Err(e) if crate::http::status_of(&e).is_client_error() => return Ok(Some(Vec::new())),
        Err(e) => return Err(e),
    };
    let mut rows = Vec::new();
    for k in keys_of(&listed).into_iter().take(MAX_LEASES) {
        let id = format!("{prefix}{k}");
        let folder = k.ends_with('/');
        let ttl = if folder {
            String::new()
        } else {
            allowed(
                c.read(
                    core,
                    Operation::Write,
                    "sys/leases/lookup",
                    json!({ "lease_id": id }),
                )
                .await,
            )
            .ok()
            .flatten()
            .map(|v| text_of(&v["ttl"]))
            .unwrap_or_default()
        };
        rows.push(LeaseRow { id, folder, ttl });
    }
    Ok(Some(rows))
}

#[derive(Deserialize)]
pub struct RevokeTokenForm {
    #[serde(default)]
    csrf: String,
    accessor: String,
}

/// `auth/token/revoke-accessor`: the token and its children are revoked.
pub async fn revoke_token(
    AxState(core): AxState<State>,
    parts: Parts,
    Form(f): Form<RevokeTokenForm>,
) -> Page {
    let c = match signed_in_form(&core, &parts, &f.csrf).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    c.call(
        &core,
        Operation::Write,
        "auth/token/revoke-accessor",
        json!({ "accessor": f.accessor.trim() }),
    )
    .await?;
    Ok(see("/ui/tokens".to_string()))
}

#[derive(Deserialize)]
pub struct RevokeLeaseForm {
    #[serde(default)]
    csrf: String,
    lease_id: String,
}

/// `sys/leases/revoke`: what the lease holds (an OTP, a dynamic key) is
/// taken back at once.
pub async fn revoke_lease(
    AxState(core): AxState<State>,
    parts: Parts,
    Form(f): Form<RevokeLeaseForm>,
) -> Page {
    let c = match signed_in_form(&core, &parts, &f.csrf).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let id = f.lease_id.trim();
    c.call(
        &core,
        Operation::Write,
        "sys/leases/revoke",
        json!({ "lease_id": id }),
    )
    .await?;
    let folder = id.rsplit_once('/').map(|(p, _)| format!("{p}/"));
    Ok(see(format!(
        "/ui/tokens?prefix={}#leases-h",
        urlencode(&folder.unwrap_or_default())
    )))
}
