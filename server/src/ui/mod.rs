//! The web UI: server-rendered pages under `/ui/` (askama templates in
//! `server/templates/`, htmx vendored in `server/assets/`), on the same
//! listener as the API.
//!
//! The UI has no authority of its own. Every page reads, and every form
//! acts, through [`crate::http::execute`] with the signed-in user's
//! token: the request is audited, authenticated, checked against the ACL
//! and routed to the same domain function as the API request with that
//! path would be. Whether to offer an action at all is asked of
//! [`crate::http::may`], the same ACL decision; a form posted anyway is
//! decided again by `execute`, and a denial is a 403 page.
//!
//! Browser protections: the session cookie (`session`) is HttpOnly,
//! Secure, SameSite=Strict and scoped to `/ui`; every state-changing form
//! carries the session's CSRF token and a POST from another origin is
//! refused; every response carries a Content-Security-Policy that allows
//! no inline script, and no page ever renders a token, OTP, private key or
//! password.

mod join;
mod live;
mod pages;
pub mod session;
mod tokens;

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::auth::token::{self, TokenEntry};
use crate::error::{Error, Result};
use crate::http::{Operation, Reply, Request};
use crate::path::ApiPath;
use crate::request::Fields;
use crate::state::{Core, State};

/// Every UI response's Content-Security-Policy: scripts and styles only
/// from this server's files (no inline script or style), no framing, forms
/// posting only here.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The replay page's policy: the same, and WebAssembly compiled from the
/// player's own script (asciinema-player's terminal is WebAssembly, which
/// Chromium compiles only under `'wasm-unsafe-eval'`; this allows no
/// `eval` of JavaScript and no inline script).
pub const PLAYER_CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Vendored asciinema-player and the script of ours that starts it.
const PLAYER_JS: &[u8] = include_bytes!("../../assets/asciinema-player.min.js");
const PLAYER_CSS: &[u8] = include_bytes!("../../assets/asciinema-player.css");
const UI_PLAYER_JS: &[u8] = include_bytes!("../../assets/ui-player.js");

/// Vendored htmx (see `server/assets/README.md` for its version and licence).
const HTMX: &[u8] = include_bytes!("../../assets/htmx.min.js");
const CSS: &[u8] = include_bytes!("../../assets/ui.css");

/// The UI's routes, to merge into the server's router.
pub fn routes() -> Router<State> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::overview))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/login/oidc", get(pages::oidc_start))
        .route("/ui/oidc/callback", get(pages::oidc_callback))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/ssh", get(pages::ssh))
        .route(
            "/ui/ssh/{mount}/roles/{name}",
            get(pages::role).post(pages::save_role),
        )
        .route("/ui/certs", get(pages::certs))
        .route("/ui/certs/revoke", post(pages::revoke))
        .route("/ui/sessions", get(pages::sessions))
        .route("/ui/sessions/terminate", post(pages::terminate))
        .route("/ui/sessions/{id}", get(pages::session))
        .route("/ui/sessions/{id}/cast", get(pages::session_cast))
        .route("/ui/sessions/{id}/live", get(live::session_live))
        .route("/ui/pam", get(pages::pam))
        .route("/ui/pam/resources", post(pages::save_resource))
        .route("/ui/pam/resources/{r}", get(pages::pam_resource))
        .route("/ui/pam/resources/{r}/delete", post(pages::delete_resource))
        .route("/ui/pam/accounts", post(pages::save_account))
        .route(
            "/ui/pam/resources/{r}/accounts/{a}",
            get(pages::pam_account),
        )
        .route(
            "/ui/pam/resources/{r}/accounts/{a}/delete",
            post(pages::delete_account),
        )
        .route(
            "/ui/pam/resources/{r}/accounts/{a}/access",
            post(pages::pam_access),
        )
        .route("/ui/hosts", get(pages::hosts))
        .route("/ui/hosts/join-tokens", post(join::create))
        .route("/ui/hosts/join-tokens/revoke", post(join::revoke))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/tokens", get(tokens::tokens))
        .route("/ui/tokens/revoke", post(tokens::revoke_token))
        .route("/ui/leases/revoke", post(tokens::revoke_lease))
        .route("/ui/policies", get(pages::policies))
        .route(
            "/ui/policies/{name}",
            get(pages::policy).post(pages::save_policy),
        )
        .route("/ui/assets/{file}", get(asset))
        .route(
            "/ui/{*rest}",
            get(|| async { pages::error_page(StatusCode::NOT_FOUND, "no such page") }),
        )
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    // A page that needs another policy (the replay page) sets its own.
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: under `no-referrer` browsers send
    // `Origin: null` on form posts, and the origin check needs the real one.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    // Pages show what one user may see: no cache keeps them.
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// The vendored files. Pages link them with the server's version in the
/// query, so a long cache lifetime never serves an old file after an
/// upgrade.
async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "ui.css" => (CSS, "text/css; charset=utf-8"),
        "asciinema-player.min.js" => (PLAYER_JS, "text/javascript; charset=utf-8"),
        "asciinema-player.css" => (PLAYER_CSS, "text/css; charset=utf-8"),
        "ui-player.js" => (UI_PLAYER_JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

/// A signed-in user, from the session cookie.
pub struct Caller {
    token: Zeroizing<String>,
    pub entry: TokenEntry,
    /// The session's CSRF token, put in every form.
    pub csrf: String,
    client_ip: Option<IpAddr>,
}

impl Caller {
    /// The signed-in user of a request; None without a live session.
    async fn of(core: &Core, parts: &Parts) -> Result<Option<Caller>> {
        let Some(cookie) = cookie(&parts.headers, session::COOKIE) else {
            return Ok(None);
        };
        let Some(token) = core.ui_key.open(&cookie) else {
            return Ok(None);
        };
        let Some(entry) = token::lookup(core, &token, core.clock.now()).await? else {
            return Ok(None);
        };
        Ok(Some(Caller {
            csrf: core.ui_key.csrf(&entry.accessor),
            token,
            entry,
            client_ip: client_ip(parts),
        }))
    }

    /// The API request at `path`, made with the session's token.
    async fn call(&self, core: &Core, op: Operation, path: &str, fields: Value) -> Result<Reply> {
        let path = ApiPath::parse(&format!("/v1/{path}"))
            .map_err(|e| Error::invalid(format!("{path:?}: {e}")))?;
        let fields = match fields {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let req = Request {
            op,
            path,
            fields: Fields::new(fields),
            client_ip: self.client_ip,
            token: Some(self.token.to_string()),
            wrap_ttl: None,
            now: core.clock.now(),
            upgrade: false,
        };
        crate::http::execute(core, &req).await
    }

    /// [`Caller::call`]'s answer as JSON: the envelope's data, a list's
    /// keys as `{"keys": […]}`, text as a string; Null for nothing there.
    async fn read(&self, core: &Core, op: Operation, path: &str, fields: Value) -> Result<Value> {
        Ok(match self.call(core, op, path, fields).await? {
            Reply::Data(v) | Reply::Auth { auth: v, .. } => v,
            Reply::Rendered(r) => r.value().clone(),
            Reply::Lease { data, .. } => data,
            Reply::List(keys) => serde_json::json!({ "keys": keys }),
            Reply::Raw { body, .. } => Value::String(String::from_utf8_lossy(&body).into_owned()),
            _ => Value::Null,
        })
    }

    /// Whether the user's policies allow `op` on `path`.
    async fn may(&self, core: &Core, op: Operation, path: &str) -> bool {
        crate::http::may(core, &self.entry, op, path)
            .await
            .unwrap_or(false)
    }
}

/// A read the user may not be allowed: None when the ACL denies it (the
/// page then says so in place), the error otherwise.
fn allowed<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::PermissionDenied) => Ok(None),
        Err(e) => Err(e),
    }
}

fn client_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The session cookie for a token living `ttl` seconds (0: until the
/// browser closes).
fn session_cookie(core: &Core, token: &str, ttl: i64) -> String {
    let max_age = if ttl > 0 {
        format!("; Max-Age={ttl}")
    } else {
        String::new()
    };
    format!(
        "{}={}; Path=/; HttpOnly; Secure; SameSite=Strict{max_age}",
        session::COOKIE,
        core.ui_key.seal(token)
    )
}

fn clear_cookie() -> String {
    format!(
        "{}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        session::COOKIE
    )
}

/// Whether a state-changing request comes from a page of this server: its
/// `Origin` (which browsers send on every POST) names this host, and
/// failing that, Fetch Metadata does not call it cross-site. Beside the
/// CSRF token and the SameSite cookie, a third, independent check.
fn same_origin(parts: &Parts) -> bool {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    if let Some(origin) = parts.headers.get(header::ORIGIN) {
        let Some(host) = host else {
            return false;
        };
        return origin.to_str().ok() == Some(format!("https://{host}").as_str());
    }
    match parts
        .headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
    {
        Some(site) => matches!(site, "same-origin" | "none"),
        None => true,
    }
}

/// Checks a state-changing form: same origin and the session's CSRF token.
fn check_form(
    core: &Core,
    parts: &Parts,
    caller: &Caller,
    csrf: &str,
) -> std::result::Result<(), PageError> {
    if !same_origin(parts) {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "cross-site request refused: the form was not posted from this server's pages \
             (behind a reverse proxy: it must pass the Host header on as the browser sent it)",
        ));
    }
    if !core.ui_key.csrf_ok(&caller.entry.accessor, csrf) {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or not this session's: reload the page and try again",
        ));
    }
    Ok(())
}

/// A page that could not be served: its status and what to tell the user.
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError {
            status,
            message: message.into(),
        }
    }
}

impl From<Error> for PageError {
    fn from(e: Error) -> PageError {
        let status = crate::http::status_of(&e);
        if status.is_server_error() {
            tracing::error!(error = %e, "web UI page failed");
        }
        let message = match e {
            Error::PermissionDenied => {
                "permission denied: your policies do not allow this".to_string()
            }
            other => other.public_message(),
        };
        PageError { status, message }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        pages::error_page(self.status, &self.message)
    }
}
