//! The UI's pages and forms. Each reads and acts through the signed-in
//! user's [`Caller`] (the API's pipeline: audit, ACL, domain function); a
//! template in `server/templates/` renders what it got.

use askama::Template;
use axum::extract::{Path, Query, State as AxState};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use gatepass_api::hosts::HostInfo;
use gatepass_api::pam::{SessionInfo, SessionList};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{allowed, check_form, same_origin, Caller, PageError};
use crate::auth::token::{self, NewToken};
use crate::error::Error;
use crate::http::Operation;
use crate::state::{Core, State};

pub(super) type Page = std::result::Result<Response, PageError>;

/// The longest a UI session lasts, whatever the token signed in with
/// allows: a browser left open should not keep a session for a month.
pub const SESSION_MAX_TTL: i64 = 8 * 3600;

/// Certificates shown per page of the inventory.
const CERTS_PER_PAGE: usize = 25;
/// Audit events shown per page.
const AUDIT_PER_PAGE: i64 = 100;

/// What the layout (`base.html`) shows around every signed-in page.
pub struct Nav {
    pub user: String,
    pub csrf: String,
    pub version: &'static str,
    pub here: &'static str,
}

pub(super) fn nav(c: &Caller, here: &'static str) -> Nav {
    Nav {
        user: c.entry.display_name.clone(),
        csrf: c.csrf.clone(),
        version: env!("CARGO_PKG_VERSION"),
        here,
    }
}

pub(super) fn render<T: Template>(t: &T) -> Page {
    render_status(StatusCode::OK, t)
}

fn render_status<T: Template>(status: StatusCode, t: &T) -> Page {
    let html = t
        .render()
        .map_err(|e| Error::internal(format!("template: {e}")))?;
    Ok((status, Html(html)).into_response())
}

/// The signed-in user, or a redirect to the sign-in page.
pub(super) async fn signed_in(core: &Core, parts: &Parts) -> std::result::Result<Caller, Response> {
    match Caller::of(core, parts).await {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(Redirect::to("/ui/login").into_response()),
        Err(e) => Err(PageError::from(e).into_response()),
    }
}

/// Who posted a form: signed in (else the sign-in page) and the form this
/// server's own, made for this session (else 403).
pub(super) async fn signed_in_form(
    core: &Core,
    parts: &Parts,
    csrf: &str,
) -> std::result::Result<Caller, Response> {
    let c = signed_in(core, parts).await?;
    check_form(core, parts, &c, csrf).map_err(IntoResponse::into_response)?;
    Ok(c)
}

/// 303 to a page after a form did its work.
pub(super) fn see(to: String) -> Response {
    Redirect::to(&to).into_response()
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
    version: &'static str,
}

pub fn error_page(status: StatusCode, message: &str) -> Response {
    let page = ErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or(""),
        message,
        version: env!("CARGO_PKG_VERSION"),
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(_) => (status, message.to_string()).into_response(),
    }
}

// ---- sign-in and sign-out ------------------------------------------------

#[derive(Template)]
#[template(path = "login.html")]
struct Login {
    error: Option<String>,
    username: String,
    /// The `oidc` login mounts, each offered as single sign-on.
    oidc: Vec<String>,
    version: &'static str,
}

async fn login_page(
    core: &Core,
    status: StatusCode,
    error: Option<String>,
    username: String,
) -> Page {
    render_status(
        status,
        &Login {
            error,
            username,
            oidc: oidc_mounts(core).await?,
            version: env!("CARGO_PKG_VERSION"),
        },
    )
}

pub async fn login_form(AxState(core): AxState<State>) -> Page {
    login_page(&core, StatusCode::OK, None, String::new()).await
}

#[derive(Deserialize)]
pub struct LoginForm {
    method: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// Signs in with a token (the session gets a child of it: same policies,
/// at most [`SESSION_MAX_TTL`], revoked at sign-out or with its parent) or
/// with userpass (the session gets the login's token, held to
/// [`SESSION_MAX_TTL`] as well).
pub async fn login(AxState(core): AxState<State>, parts: Parts, Form(f): Form<LoginForm>) -> Page {
    if !same_origin(&parts) {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "cross-site request refused: sign in from this server's sign-in page \
             (behind a reverse proxy: it must pass the Host header on as the browser sent it)",
        ));
    }
    let now = core.clock.now();
    let made = match f.method.as_str() {
        "token" => session_from_token(&core, &parts, f.token.trim(), now).await,
        "userpass" => session_from_userpass(&core, &parts, &f.username, &f.password, now).await,
        _ => Err(Error::invalid("choose how to sign in: token or userpass")),
    };
    match made {
        Ok((text, ttl)) => {
            // The session this browser had ends, as at sign-out: signing in
            // as someone else must not leave the old cookie's token alive
            // for whoever kept a copy of it.
            if let Ok(Some(old)) = Caller::of(&core, &parts).await {
                end_session(&core, &parts, &old).await?;
            }
            Ok((
                StatusCode::SEE_OTHER,
                [
                    (header::SET_COOKIE, super::session_cookie(&core, &text, ttl)),
                    (header::LOCATION, "/ui/".to_string()),
                ],
            )
                .into_response())
        }
        Err(e) => {
            core.metrics.auth_failures.inc();
            let msg = match e {
                Error::PermissionDenied => "sign-in failed: the token is not valid".to_string(),
                other if crate::http::status_of(&other).is_server_error() => {
                    return Err(other.into())
                }
                other => format!("sign-in failed: {}", other.public_message()),
            };
            // The username is given back to the form; the password and
            // token never are.
            login_page(&core, StatusCode::UNAUTHORIZED, Some(msg), f.username).await
        }
    }
}

/// The session token for a token given at sign-in, on the audit record
/// as `ui/login/token` (the given token HMAC'd, as any request's).
async fn session_from_token(
    core: &Core,
    parts: &Parts,
    text: &str,
    now: i64,
) -> crate::Result<(String, i64)> {
    let req = ui_request(token::UI_SESSION_PATH, Some(text), parts, now)?;
    let act = async {
        match child_session(core, parts, text, now).await {
            Ok((child, entry, parent)) => (
                Some(parent),
                Ok(crate::http::Reply::Auth {
                    auth: serde_json::to_value(token::auth(&child, &entry, now))
                        .unwrap_or_default(),
                    warnings: vec![],
                }),
            ),
            Err(e) => (None, Err(e)),
        }
    };
    match crate::http::audited(core, &req, act).await? {
        crate::http::Reply::Auth { auth, .. } => token_of(&auth),
        _ => Err(Error::internal("sign-in made no session token")),
    }
}

/// A request on the audit record for what the UI does itself.
fn ui_request(
    path: &str,
    token: Option<&str>,
    parts: &Parts,
    now: i64,
) -> crate::Result<crate::http::Request> {
    Ok(crate::http::Request {
        op: Operation::Write,
        path: crate::path::ApiPath::parse(&format!("/v1/{path}"))
            .map_err(|e| Error::internal(e.to_string()))?,
        fields: crate::request::Fields::default(),
        client_ip: super::client_ip(parts),
        token: token.map(str::to_string),
        wrap_ttl: None,
        now,
        upgrade: false,
    })
}

/// The text and TTL of a login's token.
fn token_of(auth: &Value) -> crate::Result<(String, i64)> {
    let text = auth["client_token"]
        .as_str()
        .ok_or_else(|| Error::internal("sign-in made no session token"))?
        .to_string();
    Ok((text, auth["lease_duration"].as_i64().unwrap_or(0)))
}

/// A child of the token given at sign-in (its text and entry) and the
/// parent's entry.
async fn child_session(
    core: &Core,
    parts: &Parts,
    text: &str,
    now: i64,
) -> crate::Result<(String, token::TokenEntry, std::sync::Arc<token::TokenEntry>)> {
    let parent = token::lookup_shared(core, text, now)
        .await?
        .ok_or(Error::PermissionDenied)?;
    if parent.num_uses != 0 {
        // A session makes many requests: it would turn a token limited to
        // a few uses into one without a limit.
        return Err(Error::invalid(
            "a token limited to a number of uses cannot start a session",
        ));
    }
    // The address check and the rest of what the API checks of a token.
    let parent = token::authenticate(core, Some(text), super::client_ip(parts), now).await?;
    let ttl = match parent.expire_time {
        Some(e) => (e - now).clamp(0, SESSION_MAX_TTL),
        None => SESSION_MAX_TTL,
    };
    let token::Issued {
        text: child, entry, ..
    } = token::create(
        core,
        NewToken {
            policies: parent.policies.clone(),
            no_default_policy: true,
            ttl: Some(ttl),
            display_name: parent.display_name.clone(),
            meta: parent.meta.clone(),
            bound_cidrs: parent.bound_cidrs.clone(),
            path: token::UI_SESSION_PATH.into(),
            parent: Some(token::TokenEntry::clone(&parent)),
            ..Default::default()
        },
        now,
    )
    .await?;
    Ok((child, entry, parent))
}

async fn session_from_userpass(
    core: &Core,
    parts: &Parts,
    username: &str,
    password: &str,
    now: i64,
) -> crate::Result<(String, i64)> {
    let path = crate::path::ApiPath::parse(&format!("/v1/auth/userpass/login/{}", username.trim()))
        .map_err(|_| Error::invalid("invalid username or password"))?;
    let req = crate::http::Request {
        op: Operation::Write,
        path,
        fields: crate::request::Fields::new(
            json!({ "password": password })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
        client_ip: super::client_ip(parts),
        token: None,
        wrap_ttl: None,
        now,
        upgrade: false,
    };
    match crate::http::execute(core, &req).await? {
        crate::http::Reply::Auth { auth, .. } => {
            session_from_login(core, token_of(&auth)?.0, now).await
        }
        _ => Err(Error::internal("userpass login gave no token")),
    }
}

/// A login's token (userpass, single sign-on) made a session: held to
/// [`SESSION_MAX_TTL`], as a session from a token is, and refused if it is
/// limited to a number of uses. The login's own TTL (32 days unless its
/// method is tuned) is for a CLI that renews and revokes its token; a
/// browser cookie left signed in on a shared machine should not outlive a
/// working day. Nobody else holds this token's text, so shortening it
/// takes nothing from anyone.
async fn session_from_login(core: &Core, text: String, now: i64) -> crate::Result<(String, i64)> {
    let entry = token::lookup(core, &text, now)
        .await?
        .ok_or(Error::PermissionDenied)?;
    if entry.num_uses != 0 {
        token::revoke(core, &entry, false).await?;
        return Err(Error::invalid(
            "this login's tokens are limited to a number of uses (token_num_uses), which cannot carry a session: sign in with the CLI",
        ));
    }
    let held = token::expire_by(core, &entry.hash, now + SESSION_MAX_TTL)
        .await?
        .ok_or(Error::PermissionDenied)?;
    Ok((text, held.ttl(now)))
}

// ---- single sign-on (OIDC) ---------------------------------------------------

/// The cookie that remembers, from the sign-in page to the provider's
/// redirect back, which `oidc` mount the sign-in started at and its
/// `state`: the callback takes only the state this browser was given, so
/// nobody can sign another person's browser in with a code of their own.
/// SameSite=Lax, not Strict: the redirect back is a navigation from the
/// provider's site, on which a Strict cookie is not sent.
/// The sign-on in progress in this browser (mount and state), which the
/// callback must find: `__Host-` so that no other site can plant its own
/// and have this browser finish the planter's sign-on (see
/// [`super::session::COOKIE`]).
const OIDC_COOKIE: &str = "__Host-gatepass_oidc";

/// The paths of the `oidc` login mounts.
async fn oidc_mounts(core: &Core) -> crate::Result<Vec<String>> {
    Ok(crate::auth::mounts::all(core)
        .await?
        .into_iter()
        .filter(|m| m.kind == "oidc")
        .map(|m| m.path)
        .collect())
}

/// The UI's redirect URI on this server, as the browser reached it: the
/// role's `allowed_redirect_uris` must list it.
fn oidc_redirect_uri(parts: &Parts) -> crate::Result<String> {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .ok_or_else(|| Error::invalid("the request names no host"))?;
    Ok(format!("https://{host}/ui/oidc/callback"))
}

#[derive(Deserialize)]
pub struct OidcForm {
    mount: String,
}

/// Starts a single sign-on: the API's `auth/<mount>/oidc/auth_url` with
/// the UI's redirect URI (the mount's default role), then the browser goes
/// to the provider. A link (GET), not a form: the page's CSP allows forms
/// to post only here, and browsers apply that to the redirect after the
/// post as well. The request makes no session, and the flow it starts is
/// bound to this browser by the state cookie.
pub async fn oidc_start(
    AxState(core): AxState<State>,
    parts: Parts,
    Query(f): Query<OidcForm>,
) -> Page {
    if !same_origin(&parts) {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "cross-site request refused: sign in from this server's sign-in page",
        ));
    }
    let now = core.clock.now();
    let started = async {
        let mount = f.mount.trim().trim_matches('/');
        if !oidc_mounts(&core).await?.iter().any(|m| m == mount) {
            return Err(Error::invalid(format!("no single sign-on at {mount:?}")));
        }
        let req = crate::http::Request {
            op: Operation::Write,
            path: crate::path::ApiPath::parse(&format!("/v1/auth/{mount}/oidc/auth_url"))
                .map_err(|e| Error::invalid(e.to_string()))?,
            fields: crate::request::Fields::new(
                json!({ "redirect_uri": oidc_redirect_uri(&parts)? })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
            client_ip: super::client_ip(&parts),
            token: None,
            wrap_ttl: None,
            now,
            upgrade: false,
        };
        let url = match crate::http::execute(&core, &req).await? {
            crate::http::Reply::Data(v) => v["auth_url"].as_str().unwrap_or_default().to_string(),
            _ => String::new(),
        };
        let state = reqwest::Url::parse(&url)
            .ok()
            .and_then(|u| {
                u.query_pairs()
                    .find(|(k, _)| k == "state")
                    .map(|(_, v)| v.into_owned())
            })
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)))
            .ok_or_else(|| {
                Error::invalid(
                    "the provider gave no sign-in URL: is this page's address in the role's allowed_redirect_uris?",
                )
            })?;
        Ok((mount.to_string(), url, state))
    };
    match started.await {
        Ok((mount, url, state)) => Ok((
            StatusCode::SEE_OTHER,
            [
                (
                    header::SET_COOKIE,
                    format!(
                        "{OIDC_COOKIE}={mount}|{state}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=600"
                    ),
                ),
                (header::LOCATION, url),
            ],
        )
            .into_response()),
        Err(e) if crate::http::status_of(&e).is_server_error() => Err(e.into()),
        Err(e) => {
            login_page(
                &core,
                StatusCode::BAD_REQUEST,
                Some(format!("single sign-on failed: {}", e.public_message())),
                String::new(),
            )
            .await
        }
    }
}

#[derive(Template)]
#[template(path = "signed_in.html")]
struct SignedIn {
    version: &'static str,
}

/// The provider's redirect back: `auth/<mount>/oidc/callback` with its
/// `state` and `code` makes the login's token, and the session cookie is
/// made from it as for the other sign-ins.
///
/// The answer is a page that moves on to the overview rather than a
/// redirect: this request is a navigation from the provider's site, and a
/// redirect from it would still be cross-site, so the browser would not
/// send the new SameSite=Strict cookie with it.
pub async fn oidc_callback(
    AxState(core): AxState<State>,
    parts: Parts,
    Query(q): Query<std::collections::BTreeMap<String, String>>,
) -> Page {
    let now = core.clock.now();
    let done = async {
        let mounts = oidc_mounts(&core).await?;
        let remembered = super::cookie(&parts.headers, OIDC_COOKIE).unwrap_or_default();
        let (mount, state) = remembered.split_once('|').unwrap_or_default();
        let given = q.get("state").map(String::as_str).unwrap_or_default();
        if !mounts.iter().any(|m| m == mount) || state.is_empty() || state != given {
            return Err(Error::invalid(
                "the sign-in was not started in this browser or took too long: start it again",
            ));
        }
        // Only what the callback reads, nothing else the URL may carry.
        let fields: serde_json::Map<String, Value> = q
            .into_iter()
            .filter(|(k, _)| matches!(k.as_str(), "state" | "code" | "error" | "error_description"))
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        let req = crate::http::Request {
            op: Operation::Read,
            path: crate::path::ApiPath::parse(&format!("/v1/auth/{mount}/oidc/callback"))
                .map_err(|e| Error::invalid(e.to_string()))?,
            fields: crate::request::Fields::new(fields),
            client_ip: super::client_ip(&parts),
            token: None,
            wrap_ttl: None,
            now,
            upgrade: false,
        };
        match crate::http::execute(&core, &req).await? {
            crate::http::Reply::Auth { auth, .. } => {
                session_from_login(&core, token_of(&auth)?.0, now).await
            }
            _ => Err(Error::internal("the OIDC callback gave no token")),
        }
    };
    match done.await {
        Ok((text, ttl)) => {
            let page = SignedIn {
                version: env!("CARGO_PKG_VERSION"),
            }
            .render()
            .map_err(|e| Error::internal(format!("template: {e}")))?;
            let mut resp = (StatusCode::OK, Html(page)).into_response();
            let h = resp.headers_mut();
            for c in [
                super::session_cookie(&core, &text, ttl),
                format!("{OIDC_COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0"),
            ] {
                if let Ok(v) = header::HeaderValue::from_str(&c) {
                    h.append(header::SET_COOKIE, v);
                }
            }
            Ok(resp)
        }
        Err(e) if crate::http::status_of(&e).is_server_error() => Err(e.into()),
        Err(e) => {
            core.metrics.auth_failures.inc();
            login_page(
                &core,
                StatusCode::UNAUTHORIZED,
                Some(format!("single sign-on failed: {}", e.public_message())),
                String::new(),
            )
            .await
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    pub(super) csrf: String,
}

/// Revokes the session's token and drops the cookie.
/// Revokes a session's token, on the audit record as `ui/logout`.
async fn end_session(core: &Core, parts: &Parts, c: &Caller) -> crate::error::Result<()> {
    let req = ui_request("ui/logout", Some(&c.token), parts, core.clock.now())?;
    let act = async {
        let done = token::revoke(core, &c.entry, false).await;
        (
            Some(std::sync::Arc::new(c.entry.clone())),
            done.map(|_| crate::http::Reply::NoContent),
        )
    };
    crate::http::audited(core, &req, act).await?;
    Ok(())
}

pub async fn logout(AxState(core): AxState<State>, parts: Parts, Form(f): Form<CsrfOnly>) -> Page {
    let c = match signed_in_form(&core, &parts, &f.csrf).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    end_session(&core, &parts, &c).await?;
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, super::clear_cookie()),
            (header::LOCATION, "/ui/login".to_string()),
        ],
    )
        .into_response())
}

// ---- overview ------------------------------------------------------------

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    nav: Nav,
    /// None where the user's policies do not allow the read.
    active_sessions: Option<usize>,
    ssh_mounts: Option<Vec<MountCount>>,
    hosts: Option<usize>,
    /// Hosts that have not asked for their state within
    /// [`crate::hosts::SYNC_GRACE_SECS`], by name.
    out_of_sync: Option<Vec<String>>,
    /// Refused sign-ins and requests since the server started, for users
    /// who may read the server's metrics.
    failures: Option<u64>,
    audit: Option<ChainStatus>,
}

struct MountCount {
    path: String,
    /// Certificates signed since midnight UTC: the count and whether it
    /// reached the count's limit.
    issued_today: Option<(u64, bool)>,
}

pub(super) fn keys_of(v: &Value) -> Vec<String> {
    v["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The ssh mounts' paths (without the trailing slash), if the user may
/// read the mount table.
/// A mount named in a link or form must be one of the ssh mounts, where
/// the user may read the mount table: a crafted link cannot make the
/// certificate pages act on another path.
fn known_mount(mounts: Option<&[String]>, mount: &str) -> std::result::Result<(), PageError> {
    match mounts {
        Some(known) if !mount.is_empty() && !known.iter().any(|m| m == mount) => {
            Err(PageError::new(StatusCode::NOT_FOUND, "no such ssh mount"))
        }
        _ => Ok(()),
    }
}

async fn ssh_mounts(core: &Core, c: &Caller) -> crate::Result<Option<Vec<String>>> {
    let Some(mounts) = allowed(c.read(core, Operation::Read, "sys/mounts", json!({})).await)?
    else {
        return Ok(None);
    };
    let mut paths: Vec<String> = mounts
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v["type"] == "ssh")
                .map(|(k, _)| k.trim_end_matches('/').to_string())
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    Ok(Some(paths))
}

pub async fn overview(AxState(core): AxState<State>, parts: Parts) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let active_sessions = allowed(
        c.read(
            &core,
            Operation::List,
            "pam/sessions",
            json!({ "state": "active" }),
        )
        .await,
    )?
    .map(|v| keys_of(&v).len());
    let ssh = match ssh_mounts(&core, &c).await? {
        Some(paths) => {
            let mut out = Vec::new();
            for p in paths {
                // The mount's count of today's serials, not its whole
                // inventory: the overview reads no certificate.
                let issued_today = allowed(
                    c.read(&core, Operation::Read, &format!("{p}/issued"), json!({}))
                        .await,
                )?
                .map(|v| (v["count"].as_u64().unwrap_or(0), v["more"] == true));
                out.push(MountCount {
                    path: p,
                    issued_today,
                });
            }
            Some(out)
        }
        None => None,
    };
    let host_infos = host_infos(&core, &c).await?;
    let hosts = host_infos.as_ref().map(Vec::len);
    let now = core.clock.now();
    let out_of_sync = host_infos.map(|hs| {
        hs.iter()
            .filter(|h| host_out_of_sync(h, now))
            .map(|h| h.hostname.clone())
            .collect()
    });
    // The last hour's lines: what is recent is what matters here (the
    // oldest kept can be a month old), and the audit page checks the rest.
    let audit = allowed(
        c.read(
            &core,
            Operation::Read,
            "sys/audit-log",
            json!({ "after": 0, "limit": 1000, "since": now - 3600 }),
        )
        .await,
    )?
    .map(|v| chain_status(&core, &v, "of the last hour"));
    let failures = if c.may(&core, Operation::Read, "sys/metrics").await {
        Some(core.metrics.auth_failures.get())
    } else {
        None
    };
    render(&Overview {
        nav: nav(&c, "overview"),
        active_sessions,
        ssh_mounts: ssh,
        hosts,
        out_of_sync,
        failures,
        audit,
    })
}

/// What the audit lines read back say of the hash chain.
pub struct ChainStatus {
    pub checked: usize,
    /// The first line that does not verify or does not follow its
    /// predecessor: its database ID and why.
    pub broken: Option<(i64, String)>,
    /// No line carries a chain (the server writes no audit file).
    pub unchained: bool,
    /// Which lines were checked, as the page says it ("of the last hour").
    pub scope: &'static str,
}

/// Each line is verified, and must follow a line read before it: servers
/// sharing a database each keep their own chain, whose lines the copy
/// interleaves, so a line follows when any line read with the `seq`
/// before its own has the MAC its `prev` names.
fn chain_status(core: &Core, v: &Value, scope: &'static str) -> ChainStatus {
    let mut status = ChainStatus {
        checked: 0,
        broken: None,
        unchained: false,
        scope,
    };
    let mut macs: std::collections::HashMap<u64, Vec<String>> = Default::default();
    let events = v["events"].as_array().cloned().unwrap_or_default();
    let mut any_chained = false;
    for e in &events {
        let id = e["id"].as_i64().unwrap_or(0);
        let line = e["line"].as_str().unwrap_or("");
        let has_chain = serde_json::from_str::<Value>(line)
            .map(|l| l.get("mac").is_some())
            .unwrap_or(false);
        if !has_chain {
            continue;
        }
        any_chained = true;
        status.checked += 1;
        match crate::audit::verify_line(line, &core.audit_key) {
            Ok(link) => {
                let before = link.seq.checked_sub(1).and_then(|s| macs.get(&s));
                if before.is_some_and(|b| !b.contains(&link.prev)) {
                    status.broken = Some((id, "does not follow the line before it".to_string()));
                    break;
                }
                macs.entry(link.seq).or_default().push(link.mac);
            }
            Err((_, why)) => {
                status.broken = Some((id, why));
                break;
            }
        }
    }
    status.unchained = !any_chained;
    status
}

// ---- SSH CAs ---------------------------------------------------------------

#[derive(Template)]
#[template(path = "ssh.html")]
struct Ssh {
    nav: Nav,
    mounts: Option<Vec<SshMount>>,
}

struct SshMount {
    path: String,
    public_keys: Vec<String>,
    roles: Option<Vec<RoleView>>,
    /// None: no KRL to read (no CA key yet, or not allowed).
    krl: Option<KrlState>,
}

/// What the mount's KRL (the one hosts fetch) holds now.
struct KrlState {
    version: u64,
    /// When the list last changed (the KRL's date), RFC 3339.
    updated: String,
    /// Revoked serials, counting each in a range.
    serials: u64,
    key_ids: usize,
    keys: usize,
}

/// The KRL as the API's `<mount>/krl` serves it, read back.
async fn krl_state(core: &Core, c: &Caller, mount: &str) -> crate::Result<Option<KrlState>> {
    let body = match c
        .call(core, Operation::Read, &format!("{mount}/krl"), json!({}))
        .await
    {
        Ok(crate::http::Reply::Raw { body, .. }) => body,
        Ok(_) => return Ok(None),
        Err(e) if crate::http::status_of(&e).is_client_error() => return Ok(None),
        Err(e) => return Err(e),
    };
    let Ok(k) = gatepass_krl::parse(&body) else {
        return Ok(None);
    };
    let serials = k
        .certs
        .iter()
        .map(|c| {
            c.serials.len() as u64
                + c.ranges
                    .iter()
                    .map(|r| r.end().saturating_sub(*r.start()).saturating_add(1))
                    .sum::<u64>()
        })
        .sum();
    Ok(Some(KrlState {
        version: k.version,
        updated: crate::clock::rfc3339(i64::try_from(k.generated).unwrap_or(0)),
        serials,
        key_ids: k.certs.iter().map(|c| c.key_ids.len()).sum(),
        keys: k.keys.len(),
    }))
}

struct RoleView {
    name: String,
    key_type: String,
    allowed_users: String,
    ttl: String,
    max_ttl: String,
}

pub(super) fn text_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub async fn ssh(AxState(core): AxState<State>, parts: Parts) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let mounts = match ssh_mounts(&core, &c).await? {
        None => None,
        Some(paths) => {
            let mut out = Vec::new();
            for p in paths {
                // Public by design (hosts fetch it without a token); a
                // mount with no CA key yet answers 4xx.
                let public_keys = c
                    .read(
                        &core,
                        Operation::Read,
                        &format!("{p}/public_key"),
                        json!({}),
                    )
                    .await
                    .map(|v| {
                        text_of(&v)
                            .lines()
                            .map(str::to_string)
                            .filter(|l| !l.is_empty())
                            .collect()
                    })
                    .unwrap_or_default();
                let roles = match allowed(
                    c.read(&core, Operation::List, &format!("{p}/roles"), json!({}))
                        .await,
                )? {
                    None => None,
                    Some(v) => {
                        let mut roles = Vec::new();
                        for name in keys_of(&v) {
                            let r = allowed(
                                c.read(
                                    &core,
                                    Operation::Read,
                                    &format!("{p}/roles/{name}"),
                                    json!({}),
                                )
                                .await,
                            )?
                            .unwrap_or(Value::Null);
                            roles.push(RoleView {
                                name,
                                key_type: text_of(&r["key_type"]),
                                allowed_users: text_of(&r["allowed_users"]),
                                ttl: text_of(&r["ttl"]),
                                max_ttl: text_of(&r["max_ttl"]),
                            });
                        }
                        Some(roles)
                    }
                };
                let krl = krl_state(&core, &c, &p).await?;
                out.push(SshMount {
                    path: p,
                    public_keys,
                    roles,
                    krl,
                });
            }
            Some(out)
        }
    };
    render(&Ssh {
        nav: nav(&c, "ssh"),
        mounts,
    })
}

// ---- certificate inventory -------------------------------------------------

#[derive(Deserialize)]
pub struct CertQuery {
    #[serde(default)]
    mount: String,
    /// What `q` is: `key_id` (a key ID's beginning, the default),
    /// `principal` or `serial`.
    #[serde(default)]
    by: String,
    #[serde(default)]
    q: String,
    /// The cursor of the page before (the API's `next_after`).
    #[serde(default)]
    after: String,
}

/// The inventory's search fields: (value of `by`, label).
const CERT_SEARCHES: &[(&str, &str)] = &[
    ("key_id", "Key ID starts with"),
    ("principal", "Principal"),
    ("serial", "Serial"),
];

#[derive(Template)]
#[template(path = "certs.html")]
struct Certs {
    nav: Nav,
    mounts: Vec<String>,
    mount: String,
    by: String,
    searches: &'static [(&'static str, &'static str)],
    q: String,
    /// Whether this is a later page (a link back to the first is shown).
    paged: bool,
    next: Option<String>,
    certs: Vec<CertView>,
    can_revoke: bool,
}

struct CertView {
    serial: String,
    key_id: String,
    principals: String,
    cert_type: String,
    valid_after: String,
    valid_before: String,
    role: String,
    requested_by: String,
    revoked: bool,
}

fn cert_view(v: &Value) -> CertView {
    CertView {
        serial: text_of(&v["serial_number"]),
        key_id: text_of(&v["key_id"]),
        principals: v["valid_principals"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        cert_type: text_of(&v["cert_type"]),
        valid_after: text_of(&v["valid_after"]),
        valid_before: text_of(&v["valid_before"]),
        role: text_of(&v["role"]),
        requested_by: text_of(&v["requested_by"]),
        revoked: v["revoked"].as_bool().unwrap_or(false),
    }
}

/// The inventory: a page of the API's `LIST <mount>/certs` with its
/// search fields (key ID, principal) and cursor, read from the
/// inventory's indexes; a serial is one `certs/<serial>` read.
pub async fn certs(
    AxState(core): AxState<State>,
    parts: Parts,
    Query(query): Query<CertQuery>,
) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let readable = ssh_mounts(&core, &c).await?;
    known_mount(readable.as_deref(), &query.mount)?;
    let mounts = readable.unwrap_or_default();
    let mount = if query.mount.is_empty() {
        mounts.first().cloned().unwrap_or_default()
    } else {
        query.mount.clone()
    };
    let by = match query.by.as_str() {
        "" => "key_id",
        b => CERT_SEARCHES
            .iter()
            .map(|(v, _)| *v)
            .find(|v| *v == b)
            .ok_or_else(|| Error::invalid(format!("cannot search certificates by {b:?}")))?,
    };
    let q = query.q.trim();
    let mut views = Vec::new();
    let mut next = None;
    if !mount.is_empty() {
        if by == "serial" && !q.is_empty() {
            let serial = crate::ssh::certs::parse_serial(q)?;
            // Null when no certificate has the serial.
            let found = c
                .read(
                    &core,
                    Operation::Read,
                    &format!("{mount}/certs/{}", crate::ssh::certs::serial_hex(serial)),
                    json!({}),
                )
                .await?;
            if !found.is_null() {
                views.push(cert_view(&found));
            }
        } else {
            let mut ask = json!({ "limit": CERTS_PER_PAGE });
            if !q.is_empty() {
                ask[by] = json!(q);
            }
            if !query.after.is_empty() {
                ask["after"] = json!(query.after);
            }
            // Null when nothing matches (Vault's 404 for an empty list).
            let v = c
                .read(&core, Operation::List, &format!("{mount}/certs"), ask)
                .await?;
            for serial in keys_of(&v) {
                views.push(cert_view(&v["key_info"][serial.as_str()]));
            }
            next = v["next_after"].as_str().map(str::to_string);
        }
    }
    let can_revoke = !mount.is_empty()
        && c.may(&core, Operation::Write, &format!("{mount}/revoke"))
            .await;
    render(&Certs {
        nav: nav(&c, "certs"),
        mounts,
        mount,
        by: by.to_string(),
        searches: CERT_SEARCHES,
        q: query.q.clone(),
        paged: !query.after.is_empty(),
        next,
        certs: views,
        can_revoke,
    })
}

#[derive(Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    csrf: String,
    mount: String,
    serial: String,
}

/// The API's `<mount>/revoke` with the serial number: the certificate is
/// marked revoked and the mount's KRL lists it.
pub async fn revoke(
    AxState(core): AxState<State>,
    parts: Parts,
    Form(f): Form<RevokeForm>,
) -> Page {
    let c = match signed_in_form(&core, &parts, &f.csrf).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    known_mount(ssh_mounts(&core, &c).await?.as_deref(), &f.mount)?;
    c.call(
        &core,
        Operation::Write,
        &format!("{}/revoke", f.mount),
        json!({ "serial_number": f.serial }),
    )
    .await?;
    Ok(see(format!(
        "/ui/certs?mount={}&by=serial&q={}",
        urlencode(&f.mount),
        urlencode(&f.serial)
    )))
}

pub(super) fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|e| e.trim_start_matches('=').to_string())
        .unwrap_or_default()
}

// ---- PAM sessions ------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct SessionQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    user: String,
    /// The cursor of the page before (the API's `next_after`).
    #[serde(default)]
    after: String,
}

/// Sessions shown per page.
const SESSIONS_PER_PAGE: usize = 50;

#[derive(Template)]
#[template(path = "sessions.html")]
struct Sessions {
    nav: Nav,
    filter: SessionQuery,
    states: &'static [&'static str],
    sessions: Option<Vec<SessionRow>>,
    /// The next page's cursor.
    next: Option<String>,
}

struct SessionRow {
    info: SessionInfo,
    state: String,
    can_terminate: bool,
}

pub async fn sessions(
    AxState(core): AxState<State>,
    parts: Parts,
    Query(filter): Query<SessionQuery>,
) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let listed = allowed(
        c.read(
            &core,
            Operation::List,
            "pam/sessions",
            json!({
                "state": filter.state,
                "resource": filter.resource,
                "user": filter.user,
                "after": filter.after,
                "limit": SESSIONS_PER_PAGE,
            }),
        )
        .await,
    )?;
    let mut next = None;
    let sessions = match listed {
        None => None,
        Some(v) => {
            let list: SessionList = serde_json::from_value(v).unwrap_or_default();
            next = list.next_after.clone();
            let mut rows = Vec::new();
            for id in &list.keys {
                let Some(info) = list.key_info.get(id) else {
                    continue;
                };
                let state = serde_json::to_value(info.state)
                    .map(|v| text_of(&v))
                    .unwrap_or_default();
                let open = matches!(state.as_str(), "pending" | "active");
                let can_terminate = open
                    && c.may(
                        &core,
                        Operation::Write,
                        &format!("pam/sessions/{id}/terminate"),
                    )
                    .await;
                rows.push(SessionRow {
                    info: info.clone(),
                    state,
                    can_terminate,
                });
            }
            Some(rows)
        }
    };
    render(&Sessions {
        nav: nav(&c, "sessions"),
        filter,
        states: &["", "pending", "active", "ended"],
        sessions,
        next,
    })
}

#[derive(Deserialize)]
pub struct TerminateForm {
    #[serde(default)]
    csrf: String,
    id: String,
}

/// The API's `pam/sessions/<id>/terminate`: the gateway closes the
/// session's connections.
pub async fn terminate(
    AxState(core): AxState<State>,
    parts: Parts,
    Form(f): Form<TerminateForm>,
) -> Page {
    let c = match signed_in_form(&core, &parts, &f.csrf).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    c.call(
        &core,
        Operation::Write,
        &format!("pam/sessions/{}/terminate", f.id),
        json!({}),
    )
    .await?;
    Ok(see("/ui/sessions".to_string()))
}

/// A session ID as the server makes them: letters, digits, `-` and `_`.
/// Anything else is refused before it becomes part of an API path.
pub(super) fn session_id(id: &str) -> std::result::Result<&str, PageError> {
    if !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(id)
    } else {
        Err(PageError::new(StatusCode::NOT_FOUND, "no such session"))
    }
}

/// The replay speeds offered (and the only ones accepted).
const SPEEDS: &[&str] = &["0.5", "1", "2", "4"];

#[derive(Deserialize, Default)]
pub struct ReplayQuery {
    #[serde(default)]
    speed: String,
}

/// One thing the session did beside its terminal output.
pub struct EventRow {
    /// Seconds since the session's first connection began.
    pub at: String,
    pub what: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "session.html")]
struct SessionPage {
    nav: Nav,
    id: String,
    info: Option<SessionInfo>,
    state: String,
    /// None: the policies do not allow reading the recording.
    recording: Option<RecordingView>,
    speed: &'static str,
    speeds: &'static [&'static str],
}

struct RecordingView {
    whole: bool,
    verdicts: Vec<String>,
    events: Vec<EventRow>,
    live: bool,
}

/// The events of a session's recordings beside the terminal: commands and
/// their exit status, sftp operations, forwards, on the time line of the
/// cast (seconds since the first connection began).
fn event_rows(recs: &gatepass_api::pam::SessionRecordings) -> Vec<EventRow> {
    use gatepass_api::recording::{EventKind, Stream};
    let base = recs
        .recordings
        .iter()
        .map(|r| r.started_at_ms)
        .min()
        .unwrap_or(0);
    let mut rows: Vec<(f64, EventRow)> = Vec::new();
    for r in &recs.recordings {
        let offset = (r.started_at_ms - base) as f64 / 1000.0;
        // Binary data comes as an event per packet or chunk: one row for
        // each run of it on a channel, with its bytes added up.
        let mut binary_run: Option<(u32, Stream, usize, u64)> = None;
        for e in &r.events {
            if let EventKind::Binary { stream, bytes, .. } = e.kind {
                match &mut binary_run {
                    Some((ch, s, row, total)) if *ch == e.ch && *s == stream => {
                        *total += bytes;
                        if let Some((_, r)) = rows.get_mut(*row) {
                            r.detail = format!("{total} bytes");
                        }
                        continue;
                    }
                    _ => binary_run = Some((e.ch, stream, rows.len(), bytes)),
                }
            } else if !matches!(
                e.kind,
                EventKind::Output { .. } | EventKind::Input { .. } | EventKind::Resize { .. }
            ) {
                binary_run = None;
            }
            let (what, detail) = match &e.kind {
                EventKind::Shell => ("shell".to_string(), String::new()),
                EventKind::Exec { command } => ("exec".to_string(), command.clone()),
                EventKind::Subsystem { name } => ("subsystem".to_string(), name.clone()),
                EventKind::Exit { status, command } => (
                    format!("exit {status}"),
                    command.clone().unwrap_or_default(),
                ),
                EventKind::Sftp {
                    op,
                    path,
                    to,
                    bytes,
                    attrs,
                } => {
                    let op = serde_json::to_value(op)
                        .map(|v| text_of(&v))
                        .unwrap_or_default();
                    let mut d = path.clone();
                    if let Some(to) = to {
                        d.push_str(&format!(" → {to}"));
                    }
                    if let Some(b) = bytes {
                        d.push_str(&format!(" ({b} bytes)"));
                    }
                    if let Some(a) = attrs {
                        d.push_str(&format!(": {a}"));
                    }
                    (format!("sftp {op}"), d)
                }
                EventKind::Binary { stream, bytes, .. } => {
                    let stream = match stream {
                        Stream::Output => "output",
                        Stream::Input => "input",
                    };
                    (format!("binary {stream}"), format!("{bytes} bytes"))
                }
                EventKind::ForwardOpen { host, port } => {
                    ("forward open".to_string(), format!("{host}:{port}"))
                }
                EventKind::ForwardClose { host, port } => {
                    ("forward close".to_string(), format!("{host}:{port}"))
                }
                EventKind::Output { .. } | EventKind::Input { .. } | EventKind::Resize { .. } => {
                    continue
                }
            };
            let t = e.t + offset;
            rows.push((
                t,
                EventRow {
                    at: format!("{t:.1}s"),
                    what,
                    detail,
                },
            ));
        }
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    rows.into_iter().map(|(_, r)| r).collect()
}

/// A session: what it is, its recording replayed with asciinema-player
/// (the cast from [`session_cast`]), and its events beside it.
pub async fn session(
    AxState(core): AxState<State>,
    parts: Parts,
    Path(id): Path<String>,
    Query(q): Query<ReplayQuery>,
) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let id = session_id(&id)?.to_string();
    let info: Option<SessionInfo> = allowed(
        c.read(
            &core,
            Operation::Read,
            &format!("pam/sessions/{id}"),
            json!({}),
        )
        .await,
    )?
    .and_then(|v| serde_json::from_value(v).ok());
    let state = info
        .as_ref()
        .and_then(|i| serde_json::to_value(i.state).ok())
        .map(|v| text_of(&v))
        .unwrap_or_default();
    let recording = allowed(
        c.read(
            &core,
            Operation::Read,
            &format!("pam/sessions/{id}/recording"),
            json!({}),
        )
        .await,
    )?
    .map(|v| {
        let recs: gatepass_api::pam::SessionRecordings =
            serde_json::from_value(v).unwrap_or_else(|_| gatepass_api::pam::SessionRecordings {
                session_id: id.clone(),
                whole: false,
                recordings: Vec::new(),
            });
        RecordingView {
            whole: recs.whole,
            verdicts: recs
                .recordings
                .iter()
                .map(|r| format!("{}: {}", r.recording_id, r.message))
                .collect(),
            events: event_rows(&recs),
            live: matches!(state.as_str(), "pending" | "active"),
        }
    });
    let speed = SPEEDS
        .iter()
        .find(|s| **s == q.speed)
        .copied()
        .unwrap_or("1");
    let mut resp = render(&SessionPage {
        nav: nav(&c, "sessions"),
        id,
        info,
        state,
        recording,
        speed,
        speeds: SPEEDS,
    })?;
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(super::PLAYER_CSP),
    );
    Ok(resp)
}

/// The session's recording as asciicast v2, the same text the CLI's
/// `pam sessions export` writes, read through the API's
/// `pam/sessions/<id>/recording` (its ACL and audit).
pub async fn session_cast(
    AxState(core): AxState<State>,
    parts: Parts,
    Path(id): Path<String>,
) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let id = session_id(&id)?;
    let v = c
        .read(
            &core,
            Operation::Read,
            &format!("pam/sessions/{id}/recording"),
            json!({}),
        )
        .await?;
    let recs: gatepass_api::pam::SessionRecordings = serde_json::from_value(v)
        .map_err(|e| Error::internal(format!("recording of {id}: {e}")))?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-asciicast")],
        gatepass_api::recording::cast_of(&recs),
    )
        .into_response())
}

// ---- SSH roles -----------------------------------------------------------------

#[derive(Template)]
#[template(path = "role.html")]
struct RolePage {
    nav: Nav,
    mount: String,
    name: String,
    text: String,
    can_edit: bool,
    error: Option<String>,
    saved: bool,
}

/// The ssh mount and role of a role page, checked before they become an
/// API path: the mount one of the user's ssh mounts, the role a plain name.
async fn role_path(
    core: &Core,
    c: &Caller,
    mount: &str,
    name: &str,
) -> std::result::Result<String, PageError> {
    let known = ssh_mounts(core, c).await?.unwrap_or_default();
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !known.iter().any(|m| m == mount) || !plain {
        return Err(PageError::new(StatusCode::NOT_FOUND, "no such role"));
    }
    Ok(format!("{mount}/roles/{name}"))
}

/// A role's settings as JSON, editable by a user whose policies allow it.
pub async fn role(
    AxState(core): AxState<State>,
    parts: Parts,
    Path((mount, name)): Path<(String, String)>,
    Query(saved): Query<Saved>,
) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let path = role_path(&core, &c, &mount, &name).await?;
    let v = c.read(&core, Operation::Read, &path, json!({})).await?;
    if v.is_null() {
        return Err(PageError::new(StatusCode::NOT_FOUND, "no such role"));
    }
    render(&RolePage {
        nav: nav(&c, "ssh"),
        can_edit: c.may(&core, Operation::Write, &path).await,
        text: serde_json::to_string_pretty(&v).unwrap_or_default(),
        mount,
        name,
        error: None,
        saved: saved.saved,
    })
}

#[derive(Deserialize)]
pub struct RoleForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    role: String,
}

/// Saves a role through the API's `<mount>/roles/<name>`; what the API
/// refuses comes back on the page with its message and the text kept.
pub async fn save_role(
    AxState(core): AxState<State>,
    parts: Parts,
    Path((mount, name)): Path<(String, String)>,
    Form(f): Form<RoleForm>,
) -> Page {
    let c = match signed_in_form(&core, &parts, &f.csrf).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let path = role_path(&core, &c, &mount, &name).await?;
    let written = match serde_json::from_str::<Value>(&f.role) {
        Ok(v @ Value::Object(_)) => c.call(&core, Operation::Write, &path, v).await.map(|_| ()),
        Ok(_) => Err(Error::invalid("the role must be a JSON object")),
        Err(e) => Err(Error::invalid(format!("not JSON: {e}"))),
    };
    match written {
        Ok(()) => Ok(see(format!("/ui/ssh/{mount}/roles/{name}?saved=true"))),
        Err(e)
            if crate::http::status_of(&e).is_client_error()
                && !matches!(e, Error::PermissionDenied) =>
        {
            render_status(
                StatusCode::BAD_REQUEST,
                &RolePage {
                    nav: nav(&c, "ssh"),
                    can_edit: true,
                    text: f.role,
                    mount,
                    name,
                    error: Some(e.public_message()),
                    saved: false,
                },
            )
        }
        Err(e) => Err(e.into()),
    }
}

// ---- PAM resources and accounts ----------------------------------------------

/// A resource or account name from a URL or a form, before it becomes a
/// segment of an API path: the API's own rule for these names (lower-case
/// letters, digits, `-`, `_`, `.`), so no name can reach another path.
fn pam_name<'a>(what: &str, s: &'a str) -> std::result::Result<&'a str, PageError> {
    crate::pam::Name::parse(what, s)?;
    Ok(s)
}

#[derive(Template)]
#[template(path = "pam.html")]
struct PamPage {
    nav: Nav,
    /// None: the policies do not allow listing resources.
    resources: Option<Vec<ResourceRow>>,
    can_create: bool,
}

struct ResourceRow {
    info: gatepass_api::pam::ResourceInfo,
    accounts: Vec<String>,
}

/// Resources and their accounts, with a form for a new resource.
pub async fn pam(AxState(core): AxState<State>, parts: Parts) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let listed = allowed(
        c.read(&core, Operation::List, "pam/resources", json!({}))
            .await,
    )?;
    let resources = match listed {
        None => None,
        Some(v) => {
            let mut rows = Vec::new();
            for name in keys_of(&v) {
                let Some(info) = allowed(
                    c.read(
                        &core,
                        Operation::Read,
                        &format!("pam/resources/{name}"),
                        json!({}),
                    )
                    .await,
                )?
                .and_then(|v| serde_json::from_value(v).ok()) else {
                    continue;
                };
                let accounts = allowed(
                    c.read(
                        &core,
                        Operation::List,
                        &format!("pam/resources/{name}/accounts"),
                        json!({}),
                    )
                    .await,
                )?
                .map(|v| keys_of(&v))
                .unwrap_or_default();
                rows.push(ResourceRow { info, accounts });
            }
            Some(rows)
        }
    };
    let can_create = c
        .may(&core, Operation::Write, "pam/resources/new-resource")
        .await;
    render(&PamPage {
        nav: nav(&c, "pam"),
        resources,
        can_create,
    })
}

#[derive(Template)]
#[template(path = "pam_resource.html")]
struct ResourcePage {
    nav: Nav,
    name: String,
    info: Option<gatepass_api::pam::ResourceInfo>,
    accounts: Vec<AccountRow>,
    can_edit: bool,
    can_delete: bool,
    can_add_account: bool,
}

/// One resource: its settings (editable), its accounts, a form for a new
/// account, and each account's "access" form.
pub async fn pam_resource(
    AxState(core): AxState<State>,
    parts: Parts,
    Path(r): Path<String>,
) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(resp) => return Ok(resp),
    };
    let r = pam_name("resource", &r)?.to_string();
    let info = c
        .read(
            &core,
            Operation::Read,
            &format!("pam/resources/{r}"),
            json!({}),
        )
        .await?;
    if info.is_null() {
        return Err(PageError::new(StatusCode::NOT_FOUND, "no such resource"));
    }
    let info: Option<gatepass_api::pam::ResourceInfo> = serde_json::from_value(info).ok();
    let mut accounts = Vec::new();
    let names = allowed(
        c.read(
            &core,
            Operation::List,
            &format!("pam/resources/{r}/accounts"),
            json!({}),
        )
        .await,
    )?
    .map(|v| keys_of(&v))
    .unwrap_or_default();
    for a in names {
        if let Some(acc) = allowed(
            c.read(
                &core,
                Operation::Read,
                &format!("pam/resources/{r}/accounts/{a}"),
                json!({}),
            )
            .await,
        )?
        .and_then(|v| serde_json::from_value::<gatepass_api::pam::AccountInfo>(v).ok())
        {
            accounts.push(AccountRow {
                method: method_of(acc.auth_method),
                info: acc,
            });
        }
    }
    let path = format!("pam/resources/{r}");
    render(&ResourcePage {
        nav: nav(&c, "pam"),
        can_edit: c.may(&core, Operation::Write, &path).await,
        can_delete: c.may(&core, Operation::Delete, &path).await,
        can_add_account: c
            .may(
                &core,
                Operation::Write,
                &format!("{path}/accounts/new-account"),
            )
            .await,
        name: r,
        info,
        accounts,
    })
}

#[derive(Deserialize)]
pub struct ResourceForm {
    #[serde(default)]
    csrf: String,
    name: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: String,
    #[serde(default)]
    gateway: String,
    #[serde(default)]
    host_ca_mount: String,
    #[serde(default)]
    known_hosts: String,
}

/// Creates or rewrites a resource (`POST pam/resources/<name>`); the API's
/// validation message is the page's answer when it refuses.
pub async fn save_resource(
    AxState(core): AxState<State>,
    parts: Parts,
    Form(f): Form<ResourceForm>,
) -> Page {
    let c = match signed_in_form(&core, &parts, &f.csrf).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let name = pam_name("resource", f.name.trim())?;
    let mut body = json!({ "host": f.host.trim(), "gateway": f.gateway.trim() });
    if !f.port.trim().is_empty() {
        body["port"] = json!(f.port.trim());
    }
    if !f.host_ca_mount.trim().is_empty() {
        body["host_ca_mount"] = json!(f.host_ca_mount.trim());
    }
    if !f.known_hosts.trim().is_empty() {
        body["known_hosts"] = json!(f.known_hosts);
    }
    c.call(
        &core,
        Operation::Write,
        &format!("pam/resources/{name}"),
        body,
    )
    .await?;
    Ok(see(format!("/ui/pam/resources/{name}")))
}

pub async fn delete_resource(
    AxState(core): AxState<State>,
    parts: Parts,
    Path(r): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Page {
    let c = match signed_in_form(&core, &parts, &f.csrf).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let r = pam_name("resource", &r)?;
    c.call(
        &core,
        Operation::Delete,
        &format!("pam/resources/{r}"),
        json!({}),
    )
    .await?;
    Ok(see("/ui/pam".to_string()))
}

struct AccountRow {
    info: gatepass_api::pam::AccountInfo,
    method: String,
}

fn method_of(m: gatepass_api::pam::AuthMethod) -> String {
    serde_json::to_value(m)
        .map(|v| text_of(&v))
        .unwrap_or_default()
}

/// The account methods the forms offer.
const AUTH_METHODS: &[&str] = &["password", "key", "certificate"];

#[derive(Template)]
#[template(path = "pam_account.html")]
struct AccountPage {
    nav: Nav,
    resource: String,
    info: gatepass_api::pam::AccountInfo,
    method: String,
    methods: &'static [&'static str],
    can_edit: bool,
}

/// An account's settings, to edit. The password and private key are
/// write-only: the form has empty fields for new ones, and says only
/// whether one is stored.
pub async fn pam_account(
    AxState(core): AxState<State>,
    parts: Parts,
    Path((r, a)): Path<(String, String)>,
) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(resp) => return Ok(resp),
    };
    let r = pam_name("resource", &r)?.to_string();
    let a = pam_name("account", &a)?;
    let path = format!("pam/resources/{r}/accounts/{a}");
    let v = c.read(&core, Operation::Read, &path, json!({})).await?;
    let info: gatepass_api::pam::AccountInfo = serde_json::from_value(v)
        .map_err(|_| PageError::new(StatusCode::NOT_FOUND, "no such account"))?;
    let method = method_of(info.auth_method);
    render(&AccountPage {
        methods: AUTH_METHODS,
        nav: nav(&c, "pam"),
        can_edit: c.may(&core, Operation::Write, &path).await,
        resource: r,
        info,
        method,
    })
}

#[derive(Deserialize)]
pub struct AccountForm {
    #[serde(default)]
    csrf: String,
    resource: String,
    name: String,
    #[serde(default)]
    auth_method: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    private_key: String,
    #[serde(default)]
    ca_mount: String,
    #[serde(default)]
    ca_role: String,
    #[serde(default)]
    max_duration: String,
    #[serde(default)]
    allow_forwarding: Option<String>,
    #[serde(default)]
    record_input: Option<String>,
}

/// Creates or rewrites an account. An empty password or key field keeps
/// the stored one (the API's rule for a rewrite that leaves them out).
pub async fn save_account(
    AxState(core): AxState<State>,
    parts: Parts,
    Form(f): Form<AccountForm>,
) -> Page {
    let c = match signed_in_form(&core, &parts, &f.csrf).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let r = pam_name("resource", f.resource.trim())?;
    let a = pam_name("account", f.name.trim())?;
    let mut body = json!({
        "auth_method": f.auth_method.trim(),
        "username": f.username.trim(),
        "allow_forwarding": f.allow_forwarding.is_some(),
        "record_input": f.record_input.is_some(),
    });
    for (k, v) in [
        ("password", f.password.as_str()),
        ("private_key", f.private_key.as_str()),
    ] {
        if !v.trim().is_empty() {
            body[k] = json!(v);
        }
    }
    for (k, v) in [
        ("ca_mount", &f.ca_mount),
        ("ca_role", &f.ca_role),
        ("max_duration", &f.max_duration),
    ] {
        if !v.trim().is_empty() {
            body[k] = json!(v.trim());
        }
    }
    c.call(
        &core,
        Operation::Write,
        &format!("pam/resources/{r}/accounts/{a}"),
        body,
    )
    .await?;
    Ok(see(format!("/ui/pam/resources/{r}")))
}

pub async fn delete_account(
    AxState(core): AxState<State>,
    parts: Parts,
    Path((r, a)): Path<(String, String)>,
    Form(f): Form<CsrfOnly>,
) -> Page {
    let c = match signed_in_form(&core, &parts, &f.csrf).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let r = pam_name("resource", &r)?;
    let a = pam_name("account", &a)?;
    c.call(
        &core,
        Operation::Delete,
        &format!("pam/resources/{r}/accounts/{a}"),
        json!({}),
    )
    .await?;
    Ok(see(format!("/ui/pam/resources/{r}")))
}

#[derive(Deserialize)]
pub struct AccessForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    public_key: String,
    #[serde(default)]
    duration: String,
}

#[derive(Template)]
#[template(path = "pam_access.html")]
struct AccessPage {
    nav: Nav,
    access: gatepass_api::pam::Access,
    /// The certificate's file name, in the command.
    cert_file: String,
    known_hosts_file: String,
    /// The known_hosts lines pinning the gateway's host keys.
    known_hosts: Vec<String>,
    command: String,
}

/// The "access" button: the API's `…/access` grants a session and a
/// certificate for the user's public key; the page shows the `ssh`
/// command to use. The certificate and host keys are public; the account's
/// credential stays with the gateway and is never shown.
pub async fn pam_access(
    AxState(core): AxState<State>,
    parts: Parts,
    Path((r, a)): Path<(String, String)>,
    Form(f): Form<AccessForm>,
) -> Page {
    let c = match signed_in_form(&core, &parts, &f.csrf).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let r = pam_name("resource", &r)?;
    let a = pam_name("account", &a)?;
    let mut body = json!({ "public_key": f.public_key.trim() });
    if !f.duration.trim().is_empty() {
        body["duration"] = json!(f.duration.trim());
    }
    let v = c
        .read(
            &core,
            Operation::Write,
            &format!("pam/resources/{r}/accounts/{a}/access"),
            body,
        )
        .await?;
    let access: gatepass_api::pam::Access =
        serde_json::from_value(v).map_err(|e| Error::internal(format!("access answer: {e}")))?;
    let id = &access.session_id;
    let cert_file = format!("gatepass-{id}-cert.pub");
    let known_hosts_file = format!("gatepass-{id}-known_hosts");
    let (host_name, target, port) = if access.relay {
        let alias = format!("gatepass-gateway-{}", access.gateway);
        (alias.clone(), alias, None)
    } else {
        match access.gateway.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
                let h = h.trim_start_matches('[').trim_end_matches(']').to_string();
                let name = if p == "22" {
                    h.clone()
                } else {
                    format!("[{h}]:{p}")
                };
                (name, h, Some(p.to_string()))
            }
            _ => (access.gateway.clone(), access.gateway.clone(), None),
        }
    };
    let known_hosts = access
        .gateway_host_keys
        .iter()
        .map(|k| format!("{host_name} {k}"))
        .collect();
    let mut command = format!(
        "ssh -i ~/.ssh/id_ed25519 -o CertificateFile={cert_file} -o UserKnownHostsFile={known_hosts_file} -o StrictHostKeyChecking=yes"
    );
    if access.relay {
        command.push_str(&format!(
            " -o HostKeyAlias={target} -o ProxyCommand='gatepass pam ssh relay {id}'"
        ));
    }
    if let Some(p) = port {
        command.push_str(&format!(" -p {p}"));
    }
    command.push_str(&format!(" {}@{target}", access.login));
    render(&AccessPage {
        nav: nav(&c, "pam"),
        access,
        cert_file,
        known_hosts_file,
        known_hosts,
        command,
    })
}

// ---- hosts -------------------------------------------------------------------

#[derive(Template)]
#[template(path = "hosts.html")]
struct Hosts {
    nav: Nav,
    hosts: Option<Vec<HostRow>>,
    join: super::join::JoinTokens,
    mappings: Option<Vec<String>>,
}

struct HostRow {
    info: HostInfo,
    /// Not seen within [`crate::hosts::SYNC_GRACE_SECS`].
    stale: bool,
    /// The state it applied against the one it would be handed now.
    applied: Applied,
}

/// Where a host stands on its desired state.
enum Applied {
    /// It has not acknowledged a state yet.
    Never,
    /// It applied the state the server would hand it now.
    Current(u64),
    /// It applied an older state (or the state changed since): the one it
    /// applied, the one it would be handed now.
    Behind(u64, u64),
}

impl Applied {
    fn of(info: &HostInfo) -> Applied {
        match (info.applied_index, info.state_index) {
            (None, _) => Applied::Never,
            (Some(a), Some(now)) if a != now => Applied::Behind(a, now),
            (Some(a), _) => Applied::Current(a),
        }
    }
}

/// The enrolled hosts the user may read; None if they may not list them.
async fn host_infos(core: &Core, c: &Caller) -> crate::Result<Option<Vec<HostInfo>>> {
    let Some(v) = allowed(c.read(core, Operation::List, "hosts", json!({})).await)? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for id in keys_of(&v) {
        if let Some(h) = allowed(
            c.read(core, Operation::Read, &format!("hosts/{id}"), json!({}))
                .await,
        )? {
            if let Ok(info) = serde_json::from_value::<HostInfo>(h) {
                out.push(info);
            }
        }
    }
    Ok(Some(out))
}

/// Whether a host has stopped following its state, by the domain's rule on
/// the `last_seen` time the API gives.
fn host_out_of_sync(h: &HostInfo, now: i64) -> bool {
    let seen =
        time::OffsetDateTime::parse(&h.last_seen, &time::format_description::well_known::Rfc3339)
            .map(|t| t.unix_timestamp())
            .unwrap_or(0);
    crate::hosts::out_of_sync(seen, now)
}

pub async fn hosts(AxState(core): AxState<State>, parts: Parts) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let now = core.clock.now();
    let hosts = host_infos(&core, &c).await?.map(|hs| {
        hs.into_iter()
            .map(|info| HostRow {
                stale: host_out_of_sync(&info, now),
                applied: Applied::of(&info),
                info,
            })
            .collect()
    });
    let mappings = allowed(
        c.read(&core, Operation::List, "hosts/mappings", json!({}))
            .await,
    )?
    .map(|v| keys_of(&v));
    let join = super::join::join_tokens(&core, &c).await?;
    render(&Hosts {
        nav: nav(&c, "hosts"),
        hosts,
        join,
        mappings,
    })
}

// ---- audit -------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    path: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    status: String,
    /// The time window, as `sys/audit-log` takes it (RFC 3339, a
    /// `datetime-local` value in UTC, or Unix seconds); empty: open.
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct Audit {
    nav: Nav,
    filter: AuditQuery,
    /// Why the filter could not be used (a bad time), shown by the form.
    error: Option<String>,
    events: Option<Vec<AuditRow>>,
    next: Option<i64>,
    chain: Option<ChainStatus>,
}

struct AuditRow {
    id: i64,
    time: String,
    kind: String,
    operation: String,
    path: String,
    actor: String,
    status: String,
    /// The whole event, pretty-printed (secrets in it are HMACs).
    detail: String,
}

pub async fn audit(
    AxState(core): AxState<State>,
    parts: Parts,
    Query(filter): Query<AuditQuery>,
) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    // The time window goes to the API, which checks it and reads only the
    // events inside it; a bad value is shown by the form, not as a page
    // of its own.
    let read = c
        .read(
            &core,
            Operation::Read,
            "sys/audit-log",
            json!({
                "after": filter.after.max(0),
                "limit": AUDIT_PER_PAGE,
                "since": filter.since.trim(),
                "until": filter.until.trim(),
            }),
        )
        .await;
    let (read, error) = match read {
        Err(Error::InvalidRequest(m)) => (Ok(json!({ "events": [] })), Some(m)),
        other => (other, None),
    };
    let got = allowed(read)?;
    let mut next = None;
    let chain = got.as_ref().map(|v| chain_status(&core, v, "on this page"));
    let events = got.map(|v| {
        let all = v["events"].as_array().cloned().unwrap_or_default();
        if all.len() as i64 == AUDIT_PER_PAGE {
            next = all.last().and_then(|e| e["id"].as_i64());
        }
        all.iter()
            .filter_map(|e| {
                let id = e["id"].as_i64()?;
                let ev: Value = serde_json::from_str(e["line"].as_str()?).ok()?;
                let row = AuditRow {
                    id,
                    time: text_of(&ev["time"]),
                    kind: text_of(&ev["type"]),
                    operation: text_of(&ev["request"]["operation"]),
                    path: text_of(&ev["request"]["path"]),
                    actor: text_of(&ev["auth"]["display_name"]),
                    status: text_of(&ev["status"]),
                    detail: serde_json::to_string_pretty(&ev).unwrap_or_default(),
                };
                let keep = row.path.contains(filter.path.trim())
                    && row.actor.contains(filter.actor.trim())
                    && (filter.status.trim().is_empty() || row.status == filter.status.trim());
                keep.then_some(row)
            })
            .collect()
    });
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    render_status(
        status,
        &Audit {
            nav: nav(&c, "audit"),
            filter,
            error,
            events,
            next,
            chain,
        },
    )
}

// ---- policies ----------------------------------------------------------------

#[derive(Template)]
#[template(path = "policies.html")]
struct Policies {
    nav: Nav,
    names: Option<Vec<String>>,
}

pub async fn policies(AxState(core): AxState<State>, parts: Parts) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let names = allowed(
        c.read(&core, Operation::List, "sys/policies/acl", json!({}))
            .await,
    )?
    .map(|v| keys_of(&v));
    render(&Policies {
        nav: nav(&c, "policies"),
        names,
    })
}

#[derive(Template)]
#[template(path = "policy.html")]
struct PolicyPage {
    nav: Nav,
    name: String,
    text: String,
    can_edit: bool,
    error: Option<String>,
    saved: bool,
}

#[derive(Deserialize, Default)]
pub struct Saved {
    #[serde(default)]
    saved: bool,
}

pub async fn policy(
    AxState(core): AxState<State>,
    parts: Parts,
    Path(name): Path<String>,
    Query(saved): Query<Saved>,
) -> Page {
    let c = match signed_in(&core, &parts).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let path = format!("sys/policies/acl/{name}");
    let v = c.read(&core, Operation::Read, &path, json!({})).await?;
    if v.is_null() {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("no policy named {name:?}"),
        ));
    }
    let can_edit = c.may(&core, Operation::Write, &path).await;
    render(&PolicyPage {
        nav: nav(&c, "policies"),
        text: text_of(&v["policy"]),
        name,
        can_edit,
        error: None,
        saved: saved.saved,
    })
}

#[derive(Deserialize)]
pub struct PolicyForm {
    #[serde(default)]
    csrf: String,
    policy: String,
}

/// Saves a policy through `sys/policies/acl/<name>`, which parses it first:
/// a policy that does not parse is shown again with the parser's message.
pub async fn save_policy(
    AxState(core): AxState<State>,
    parts: Parts,
    Path(name): Path<String>,
    Form(f): Form<PolicyForm>,
) -> Page {
    let c = match signed_in_form(&core, &parts, &f.csrf).await {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    let path = format!("sys/policies/acl/{name}");
    match c
        .call(
            &core,
            Operation::Write,
            &path,
            json!({ "policy": f.policy }),
        )
        .await
    {
        Ok(_) => Ok(see(format!("/ui/policies/{}?saved=true", urlencode(&name)))),
        Err(Error::InvalidRequest(msg)) => render_status(
            StatusCode::BAD_REQUEST,
            &PolicyPage {
                nav: nav(&c, "policies"),
                name,
                text: f.policy,
                can_edit: true,
                error: Some(msg),
                saved: false,
            },
        ),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditLog;

    /// Two servers on one database write two chains that the copy
    /// interleaves: intact. A line missing from one of them is found,
    /// though the other chain has a line with the `seq` it follows.
    #[tokio::test]
    async fn chains_of_servers_sharing_a_database_are_checked_each_on_its_own() {
        let now = 1_700_000_000;
        let dir = tempfile::tempdir().unwrap();
        let core = Core::for_test(&dir, now).await;
        let log = |name: &str| {
            AuditLog::open(&dir.path().join(name), core.audit_key.clone(), now).unwrap()
        };
        let (a, b) = (log("a.log"), log("b.log"));
        let event = |server: &str, n: i64| {
            let mut m = serde_json::Map::new();
            m.insert("type".into(), json!("request"));
            m.insert("server".into(), json!(server));
            m.insert("n".into(), json!(n));
            m
        };
        let mut lines = Vec::new();
        for n in 0..3 {
            lines.extend(a.append(event("a", n)).unwrap());
            lines.extend(b.append(event("b", n)).unwrap());
        }
        let copy = |lines: &[String]| {
            let events: Vec<Value> = lines
                .iter()
                .enumerate()
                .map(|(i, l)| json!({ "id": i + 1, "line": l }))
                .collect();
            json!({ "events": events })
        };
        let status = chain_status(&core, &copy(&lines), "here");
        assert_eq!(status.checked, 6);
        assert_eq!(status.broken, None);

        // A's second line (the third in the copy) gone.
        let mut cut = lines.clone();
        cut.remove(2);
        let status = chain_status(&core, &copy(&cut), "here");
        assert_eq!(
            status.broken,
            Some((4, "does not follow the line before it".to_string()))
        );
    }
}
