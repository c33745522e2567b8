//! The HTTP face of the server: one route, `/v1/*`, that turns an HTTP
//! request into a [`Request`], authenticates and authorizes it, hands it to
//! the routes of its area (`routes` picks one of `sys`, `auth`, `hosts` and
//! `ssh`, which call the domain), audits it, and shapes Vault's response
//! envelope or `{"errors":[…]}`. Nothing outside this module knows HTTP:
//! [`status_of`] is where the domain's error becomes a status.

mod auth;
mod deadline;
mod hosts;
mod identity;
mod pam;
pub mod proxies;
mod request;
mod routes;
mod ssh;
mod sys;

pub use deadline::Deadline;
pub use request::{Operation, Request};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State as AxState};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::{json, Map, Value};

use crate::audit;
use crate::auth::token::{self, TokenEntry};
use crate::auth::wrapping::{self, WrapInfo, WrapTtl};
use crate::error::{Error, Result};
use crate::metrics::RequestLabels;
use crate::path::ApiPath;
use crate::policies;
use crate::policy::{Capability, Identity};

use crate::request::Fields;
use crate::state::{Core, State};

/// Request bodies above this are refused with 413 before they are parsed.
pub const MAX_BODY: usize = 1024 * 1024;

/// What a domain handler answers.
pub enum Reply {
    /// 200 with the envelope's `data`.
    Data(Value),
    /// 200 with the envelope's `data` rendered once for many answers (a
    /// long-poll's state shared by many hosts): its JSON goes into the
    /// envelope as it is, and its audit form is made once.
    Rendered(std::sync::Arc<crate::longpoll::Rendered>),
    /// 200 with the envelope's `auth` (logins, token creation and
    /// renewal), and Vault's warnings of what was cut to the limits.
    Auth { auth: Value, warnings: Vec<String> },
    /// 200 with `data` and the envelope's lease fields (creds, renewals).
    Lease {
        data: Value,
        lease_id: String,
        lease_duration: i64,
        renewable: bool,
    },
    /// 200 with `data.keys`; Vault answers an empty list with 404.
    List(Vec<String>),
    /// 204, no body.
    NoContent,
    /// 404 with `{"errors":[]}`: nothing at this path.
    NotFound,
    /// 200 with the envelope's `wrap_info` only: the response is kept
    /// under the wrapping token (`X-Vault-Wrap-TTL`, `sys/wrapping/*`).
    Wrapped(WrapInfo),
    /// 200 with an envelope given whole: a wrapped response, unwrapped.
    Unwrapped(Value),
    /// A body that is not an envelope (sys/health, sys/metrics).
    Raw {
        status: StatusCode,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// 101: the user's relayed connection, paired with its gateway's; the
    /// upgraded connection goes to the gateway's side.
    RelayUser(crate::pam::relay::UserEnd),
    /// 101: the gateway dialed in for a relayed connection; its upgraded
    /// connection is spliced to the user's.
    RelayGateway(crate::pam::relay::GatewayEnd),
}

pub fn app(core: State) -> Router {
    Router::new()
        .route("/v1/{*path}", any(handle))
        .route("/v1/", any(handle))
        .fallback(|| async {
            error_body(
                StatusCode::NOT_FOUND,
                "no handler for route: paths start with /v1/",
            )
        })
        .with_state(core)
}

/// 404 for a path no route serves, in Vault's words.
pub fn no_route(path: &str) -> Error {
    Error::NotFound(format!(
        "no handler for route {path:?}. route entry not found."
    ))
}

/// A typed response as the envelope's `data`.
fn data<T: serde::Serialize>(v: &T) -> Result<Reply> {
    Ok(Reply::Data(
        serde_json::to_value(v).map_err(|e| Error::internal(e.to_string()))?,
    ))
}

/// The one place where the domain's error becomes an HTTP status.
pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::InvalidRequest(_) => StatusCode::BAD_REQUEST,
        Error::PermissionDenied => StatusCode::FORBIDDEN,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::UnsupportedOperation => StatusCode::METHOD_NOT_ALLOWED,
        Error::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::Unavailable(_) | Error::StorageUnavailable(_) | Error::AuditUnconfirmed { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Error::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        Error::Storage(_)
        | Error::Sqlite(_)
        | Error::Migrate(_)
        | Error::Io(_)
        | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(crate) fn error_body(status: StatusCode, msg: &str) -> Response {
    let errors: Vec<&str> = if msg.is_empty() { vec![] } else { vec![msg] };
    (status, axum::Json(json!({ "errors": errors }))).into_response()
}

fn token_from(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers.get("x-vault-token").and_then(|v| v.to_str().ok()) {
        return Some(t.trim().to_string());
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string())
}

/// Whether the request asks to switch to the relay protocol.
fn wants_relay(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, word: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(word))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, gatepass_api::pam::RELAY_PROTOCOL)
}

/// Answers 101 and hands the upgraded connection to `then` once the
/// client has it.
fn switch<F, Fut>(on_upgrade: Option<hyper::upgrade::OnUpgrade>, then: F) -> Response
where
    F: FnOnce(crate::pam::relay::Stream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(on_upgrade) = on_upgrade else {
        return error_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the connection cannot switch protocols",
        );
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => then(Box::new(hyper_util::rt::TokioIo::new(upgraded))).await,
            Err(e) => tracing::debug!(error = %e, "relayed connection not upgraded"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "upgrade"),
            (header::UPGRADE, gatepass_api::pam::RELAY_PROTOCOL),
        ],
    )
        .into_response()
}

/// A request's ID, a version 4 UUID: not a secret, so from the thread's
/// random generator rather than a `getrandom` call per request.
fn request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

async fn handle(core: AxState<State>, req: axum::extract::Request) -> Response {
    let mut resp = answer(core, req).await;
    // Answers carry tokens, OTPs, keys and what one caller may see: no
    // cache (a proxy's, the client's) keeps them, as Vault says.
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// A form-encoded body, as Vault takes one: sent as
/// `application/x-www-form-urlencoded` (what `curl -d` sends) and not
/// JSON, which `curl -d '{…}'` sends under the same type (a JSON list or
/// `null` is read as JSON too, and refused or taken as no fields as such).
fn is_form(headers: &HeaderMap, body: &[u8]) -> bool {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    form && first.is_some_and(|b| *b != b'{' && *b != b'[' && !body.trim_ascii().eq(b"null"))
}

/// A form body's fields, each a string; a field given more than once is
/// its values joined with commas, as Vault joins them (every list field
/// takes comma-separated text).
///
/// A `%` not followed by two hex digits, or a `;` (which older parsers
/// took as a separator), is refused as Vault's parser (Go's
/// `url.ParseQuery`) refuses it; the lenient decoder below would keep such
/// text as it is and store something other than what the client meant.
fn form_fields(body: &[u8]) -> std::result::Result<Map<String, Value>, String> {
    let mut i = 0;
    while let Some(b) = body.get(i) {
        match b {
            b';' => return Err("error parsing form data: a ';' separator".into()),
            b'%' => {
                let escape = body.get(i + 1..i + 3);
                if !escape.is_some_and(|e| e.iter().all(u8::is_ascii_hexdigit)) {
                    let end = (i + 3).min(body.len());
                    let shown = String::from_utf8_lossy(body.get(i..end).unwrap_or_default());
                    return Err(format!(
                        "error parsing form data: an invalid escape {shown:?}"
                    ));
                }
                i += 3;
            }
            _ => i += 1,
        }
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|e| format!("failed to parse form input: {e}"))?;
    let mut out = Map::new();
    for (k, v) in pairs {
        match out.get_mut(&k) {
            Some(Value::String(joined)) => {
                joined.push(',');
                joined.push_str(&v);
            }
            _ => {
                out.insert(k, Value::String(v));
            }
        }
    }
    Ok(out)
}

async fn answer(AxState(core): AxState<State>, req: axum::extract::Request) -> Response {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    // Only HTTP/1.1 connections can be taken over; the relay paths refuse
    // a request without it.
    let on_upgrade = if wants_relay(&parts.headers) {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let client_ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let path = match ApiPath::parse(parts.uri.path()) {
        Ok(p) => p,
        Err(e) => return error_body(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(parts.uri.query().unwrap_or("")).unwrap_or_default();
    let list_flag = query
        .iter()
        .any(|(k, v)| k == "list" && matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "t"));
    let op = match parts.method.as_str() {
        "GET" | "HEAD" if list_flag => Operation::List,
        "GET" | "HEAD" => Operation::Read,
        "LIST" => Operation::List,
        "POST" | "PUT" => Operation::Write,
        "DELETE" => Operation::Delete,
        // PATCH too: no endpoint merges a partial change (Vault's PATCH is
        // for a few engines this server does not have), and taken as a
        // write it would replace the whole object with the fields given.
        _ => return error_body(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation"),
    };
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return match deadline::body_failure(&e) {
                deadline::BodyFailure::TooLarge => error_body(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("request body too large: the limit is {MAX_BODY} bytes"),
                ),
                deadline::BodyFailure::TimedOut(why) => {
                    tracing::debug!(%why, "request body not received in time");
                    error_body(StatusCode::REQUEST_TIMEOUT, &why)
                }
                deadline::BodyFailure::Broken => error_body(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                ),
            }
        }
    };
    let mut data = Map::new();
    if is_form(&parts.headers, &bytes) {
        match form_fields(&bytes) {
            Ok(m) => data = m,
            Err(why) => return error_body(StatusCode::BAD_REQUEST, &why),
        }
    } else if !bytes.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => data = m,
            // `vault write -f` sends `null`: no fields, as Vault takes it.
            Ok(Value::Null) => {}
            Ok(_) => {
                return error_body(
                    StatusCode::BAD_REQUEST,
                    "failed to parse JSON input: the body must be a JSON object",
                )
            }
            Err(e) => {
                return error_body(
                    StatusCode::BAD_REQUEST,
                    &format!("failed to parse JSON input: {e}"),
                )
            }
        }
    }
    if matches!(op, Operation::Read | Operation::List) || parts.method == Method::DELETE {
        for (k, v) in query {
            if k != "list" {
                data.entry(k).or_insert(Value::String(v));
            }
        }
    }
    // Namespaces are Vault Enterprise's (and OpenBao's); gatepass has only
    // the root one, and answering another namespace's request from the
    // root would hand over the wrong data.
    if let Some(ns) = parts
        .headers
        .get("x-vault-namespace")
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .trim()
                .trim_matches('/')
                .to_string()
        })
        .filter(|ns| !ns.is_empty() && ns != "root")
    {
        return error_body(
            StatusCode::BAD_REQUEST,
            &format!(
                "namespace {ns:?} does not exist: gatepass has only the root namespace \
                 (send no X-Vault-Namespace header, or -namespace=\"\")"
            ),
        );
    }
    let wrap_ttl = match wrap_ttl_from(&parts.headers) {
        Ok(t) => t,
        Err(e) => return error_body(StatusCode::BAD_REQUEST, &e.public_message()),
    };
    let request = Request {
        op,
        path,
        fields: Fields::new(data),
        client_ip,
        token: token_from(&parts.headers),
        wrap_ttl,
        now: core.clock.now(),
        upgrade: on_upgrade.is_some(),
    };
    // Not held through the request: a long-poll waits for up to minutes,
    // and its headers and body would wait with it.
    drop(parts);
    drop(bytes);

    // Vault's order: the request is on record before anything is done for
    // it, and a request that cannot be put on record is refused unchanged.
    let request_id = request_id();
    let mut on_record = None;
    if is_audited(&request) {
        match Box::pin(audit_request(&core, &request, &request_id)).await {
            Ok(entry) => on_record = Some(entry),
            Err(e) => {
                tracing::error!(error = %e, path = %request.path, "audit log unavailable: request refused");
                return error_body(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit log unavailable: the request was refused before anything was done",
                );
            }
        }
    }
    // The audit entries, wrapping and authentication are awaited from their
    // own allocations, as the routes are (see `routes::dispatch`): a waiting
    // long-poll holds this future, sized by the largest it awaits.
    let mut caller = None;
    let result = process(&core, &request, &mut caller).await;
    let warnings: Vec<String> = {
        let unused = request.fields.unused();
        if unused.is_empty() || result.is_err() {
            vec![]
        } else {
            vec![format!(
                "Endpoint ignored these unrecognized parameters: {unused:?}"
            )]
        }
    };
    let mount_type = match &result {
        Ok(_) => Box::pin(mount_type_of(&core, &request.path)).await,
        Err(_) => String::new(),
    };
    let answering = Answering {
        request_id: &request_id,
        mount_type: &mount_type,
    };
    // Wrapped before the response is audited, so that the audit log holds
    // the wrapping token's (HMAC'd) details and never the wrapped secret.
    let result = match (result, request.wrap_ttl) {
        (Ok(reply), Some(ttl)) => {
            Box::pin(wrap_reply(
                &core, &request, reply, ttl, &warnings, &answering,
            ))
            .await
        }
        (other, _) => other,
    };
    let status = match &result {
        Ok(r) => reply_status(r),
        Err(e) => status_of(e),
    };
    if let Err(Error::PermissionDenied) = &result {
        core.metrics.auth_failures.inc();
    }
    if let Some(entry) = on_record {
        // What the request did is done: its answer is given even if the
        // response entry has to wait for the audit file (it is kept and
        // written first thing once the file can be written).
        Box::pin(audit_response(
            &core,
            &request,
            entry,
            caller.as_deref(),
            &result,
            status,
        ))
        .await;
    }
    core.metrics
        .requests
        .get_or_create(&RequestLabels {
            operation: request.op.as_str().to_string(),
            status: status.as_u16(),
        })
        .inc();
    core.metrics
        .request_seconds
        .observe(started.elapsed().as_secs_f64());
    // At DEBUG: at INFO this line cost every request a formatted write to
    // the log, a few per cent of the server's CPU under load, and the
    // audit log already records each request.
    tracing::debug!(
        op = request.op.as_str(),
        path = %request.path,
        status = status.as_u16(),
        client = ?request.client_ip,
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    match result {
        Ok(Reply::RelayUser(end)) => switch(on_upgrade, move |s| async move { end.deliver(s) }),
        Ok(Reply::RelayGateway(end)) => switch(on_upgrade, move |s| end.splice(s)),
        Ok(reply) => shape(reply, warnings, &answering),
        Err(e) => {
            let status = status_of(&e);
            if status.is_server_error() {
                tracing::error!(path = %request.path, error = %e, "request failed");
            }
            error_body(status, &e.public_message())
        }
    }
}

fn reply_status(r: &Reply) -> StatusCode {
    match r {
        Reply::NoContent => StatusCode::NO_CONTENT,
        Reply::NotFound => StatusCode::NOT_FOUND,
        Reply::List(keys) if keys.is_empty() => StatusCode::NOT_FOUND,
        Reply::Raw { status, .. } => *status,
        Reply::RelayUser(_) | Reply::RelayGateway(_) => StatusCode::SWITCHING_PROTOCOLS,
        _ => StatusCode::OK,
    }
}

/// `X-Vault-Wrap-TTL` (and `X-Vault-Wrap-Format`, of which only Vault's
/// default, an opaque token, is offered).
fn wrap_ttl_from(headers: &HeaderMap) -> Result<Option<WrapTtl>> {
    let Some(v) = headers.get("x-vault-wrap-ttl") else {
        return Ok(None);
    };
    let text = v
        .to_str()
        .map_err(|_| Error::invalid("error parsing X-Vault-Wrap-TTL header: not text"))?;
    let ttl = WrapTtl::from_header(text)?;
    if ttl.is_some()
        && headers
            .get("x-vault-wrap-format")
            .is_some_and(|f| f.as_bytes().eq_ignore_ascii_case(b"jwt"))
    {
        return Err(Error::invalid(
            "X-Vault-Wrap-Format \"jwt\" is not supported: wrapping tokens are opaque tokens",
        ));
    }
    Ok(ttl)
}

/// Replaces a reply by its wrapped form, as Vault does: errors and replies
/// without a body (204, 404, an empty list) are not wrapped, nor are
/// replies that are not envelopes (sys/health) or already a wrapping.
async fn wrap_reply(
    core: &Core,
    req: &Request,
    reply: Reply,
    ttl: WrapTtl,
    warnings: &[String],
    id: &Answering<'_>,
) -> Result<Reply> {
    if matches!(reply, Reply::Wrapped(_)) {
        return Ok(reply);
    }
    let Some(envelope) = envelope_of(&reply, warnings.to_vec(), id) else {
        return Ok(reply);
    };
    // What was wrapped can be revoked by its accessor without unwrapping
    // it: a token's, or an AppRole secret ID's.
    let wrapped_accessor = match &reply {
        Reply::Auth { auth, .. } => auth.get("accessor").and_then(Value::as_str),
        Reply::Data(d) if req.path.starts_with("auth/approle/") => {
            d.get("secret_id_accessor").and_then(Value::as_str)
        }
        _ => None,
    }
    .map(str::to_string);
    // Vault names a listing's path with its trailing slash.
    let creation_path = match req.op {
        Operation::List => format!("{}/", req.path),
        _ => req.path.to_string(),
    };
    let info = wrapping::wrap(
        core,
        envelope.to_string(),
        &creation_path,
        ttl,
        wrapped_accessor,
        req.now,
    )
    .await?;
    Ok(Reply::Wrapped(info))
}

/// The envelope of a reply that has one; None for the others.
fn envelope_of(reply: &Reply, warnings: Vec<String>, id: &Answering) -> Option<Value> {
    Some(match reply {
        Reply::Data(d) => envelope(d.clone(), Value::Null, warnings, id),
        Reply::Rendered(r) => envelope(r.value().clone(), Value::Null, warnings, id),
        Reply::Auth {
            auth,
            warnings: cut,
        } => envelope(
            Value::Null,
            auth.clone(),
            cut.iter().cloned().chain(warnings).collect(),
            id,
        ),
        Reply::Lease {
            data,
            lease_id,
            lease_duration,
            renewable,
        } => {
            let mut e = envelope(data.clone(), Value::Null, warnings, id);
            e["lease_id"] = json!(lease_id);
            e["lease_duration"] = json!(lease_duration);
            e["renewable"] = json!(renewable);
            e
        }
        Reply::List(keys) if !keys.is_empty() => {
            envelope(json!({ "keys": keys }), Value::Null, warnings, id)
        }
        Reply::Wrapped(info) => {
            // Vault's wrapped answer has no request ID of its own (the
            // wrapped one keeps the request's).
            let mut e = envelope(
                Value::Null,
                Value::Null,
                warnings,
                &Answering {
                    request_id: "",
                    ..*id
                },
            );
            e["wrap_info"] = info.to_json();
            e
        }
        _ => return None,
    })
}

fn envelope(data: Value, auth: Value, warnings: Vec<String>, id: &Answering) -> Value {
    json!({
        "request_id": id.request_id,
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": if warnings.is_empty() { Value::Null } else { json!(warnings) },
        "auth": auth,
        "mount_type": id.mount_type,
    })
}

/// What an answer's envelope says of the request besides its data: its
/// `request_id`, and Vault's `mount_type`, the type of the mount that
/// answered (`system`, `token`, `ssh`, …; empty for gatepass's own
/// `hosts/` and `pam/`).
pub(crate) struct Answering<'a> {
    pub request_id: &'a str,
    pub mount_type: &'a str,
}

/// The type of the mount a path is served by, as Vault names it.
async fn mount_type_of(core: &Core, path: &ApiPath) -> String {
    let p = path.as_str();
    let first = p.split('/').next().unwrap_or_default();
    match first {
        "sys" => "system".into(),
        "identity" => "identity".into(),
        "hosts" | "pam" => String::new(),
        "auth" => {
            let under = p.strip_prefix("auth/").unwrap_or_default();
            match under.split('/').next().unwrap_or_default() {
                m @ ("token" | "userpass" | "approle") => m.into(),
                _ => match crate::auth::mounts::find(core, under).await {
                    Ok(Some((m, _))) => m.kind,
                    _ => String::new(),
                },
            }
        }
        _ => match crate::mounts::find(core, p).await {
            Ok(Some((m, _))) => m.kind,
            _ => String::new(),
        },
    }
}

/// The text of [`envelope`] with no `auth` around `data` given as JSON text,
/// written without building the envelope as a value: the same bytes
/// (`serde_json` writes an object's keys sorted), made in one allocation.
fn envelope_text(data: &str, warnings: &[String], answering: &Answering) -> Result<String> {
    let json = |t: &str| serde_json::to_string(t).map_err(|e| Error::internal(e.to_string()));
    let (id, mount_type) = (json(answering.request_id)?, json(answering.mount_type)?);
    let warnings = if warnings.is_empty() {
        "null".to_string()
    } else {
        serde_json::to_string(warnings).map_err(|e| Error::internal(e.to_string()))?
    };
    Ok(format!(
        "{{\"auth\":null,\"data\":{data},\"lease_duration\":0,\"lease_id\":\"\",\
         \"mount_type\":{mount_type},\"renewable\":false,\"request_id\":{id},\
         \"warnings\":{warnings},\"wrap_info\":null}}"
    ))
}

fn shape(reply: Reply, warnings: Vec<String>, id: &Answering) -> Response {
    match reply {
        Reply::Unwrapped(e) => axum::Json(e).into_response(),
        Reply::NoContent => StatusCode::NO_CONTENT.into_response(),
        Reply::NotFound => error_body(StatusCode::NOT_FOUND, ""),
        // Answered by `switch` in `handle`, which holds the connection.
        Reply::RelayUser(_) | Reply::RelayGateway(_) => error_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the connection cannot switch protocols",
        ),
        Reply::Raw {
            status,
            content_type,
            body,
        } => (
            status,
            [(header::CONTENT_TYPE, content_type)],
            Body::from(body),
        )
            .into_response(),
        Reply::Rendered(r) => match envelope_text(r.json(), &warnings, id) {
            Ok(body) => (
                [(header::CONTENT_TYPE, "application/json")],
                Body::from(body),
            )
                .into_response(),
            Err(e) => error_body(StatusCode::INTERNAL_SERVER_ERROR, &e.public_message()),
        },
        other => match envelope_of(&other, warnings, id) {
            Some(e) => axum::Json(e).into_response(),
            // An empty list: Vault answers 404.
            None => error_body(StatusCode::NOT_FOUND, ""),
        },
    }
}

/// Authentication and authorization, then the handler.
async fn process(
    core: &Core,
    req: &Request,
    caller: &mut Option<Arc<TokenEntry>>,
) -> Result<Reply> {
    if routes::is_unauthenticated(core, req).await? {
        return routes::dispatch(core, req, None).await;
    }
    let entry = Box::pin(token::authenticate(
        core,
        req.token.as_deref(),
        req.client_ip,
        req.now,
    ))
    .await?;
    *caller = Some(entry.clone());
    if !entry.is_root() && !routes::is_owner_checked(req) {
        let acl = Box::pin(policies::acl_for(core, &entry.policies)).await?;
        // The path as the handler will take it (names in lower case), so
        // that `users/ADMIN` meets the rules written for `users/admin`.
        let path = routes::canonical_names(core, &req.path).await?;
        let path = path.as_str();
        let allowed = op_allowed(core, &acl, req.op, path).await?;
        // The wrapping paths Vault's default policy grants carry no
        // parameter constraints; what the ACL grants is checked for them.
        let by_default = !allowed
            && routes::granted_by_default_policy(&entry.policies, req)
            && !acl.denies_exactly(path);
        if !(allowed || by_default)
            || (routes::needs_sudo(path, req.op) && !has_sudo(&acl, req.op, path))
        {
            return Err(Error::PermissionDenied);
        }
        // A path whose rule sets wrapping TTLs must be asked for wrapped,
        // within them, whatever the operation (Vault's AllowOperation).
        if allowed {
            let list = req.op == Operation::List;
            let path = if list {
                format!("{path}/")
            } else {
                path.to_string()
            };
            acl.check_wrapping(&path, list, req.wrap_ttl.map(|w| w.secs()))?;
        }
        // Vault checks parameter constraints on reads and writes only.
        if allowed && matches!(req.op, Operation::Read | Operation::Write) {
            let entity = match &entry.entity_id {
                Some(id) => crate::identity::entity(core, id).await?,
                None => None,
            };
            let who =
                Identity::of_token(&entry.display_name, &entry.meta).with_entity(entity.as_ref());
            acl.check_parameters(path, req.fields.raw(), &who)?;
        }
    }
    routes::dispatch(core, req, Some(entry.as_ref())).await
}

/// Whether an ACL grants sudo for an operation on a path: a LIST's from the
/// rule that grants it `list`, at the path with a trailing slash (Vault's).
fn has_sudo(acl: &crate::policy::Acl, op: Operation, path: &str) -> bool {
    if op == Operation::List {
        acl.allows(&format!("{path}/"), Capability::Sudo)
    } else {
        acl.allows(path, Capability::Sudo)
    }
}

/// Whether an ACL grants an operation on a path, as [`process`] decides it
/// (sudo and parameter constraints aside).
async fn op_allowed(
    core: &Core,
    acl: &crate::policy::Acl,
    op: Operation,
    path: &str,
) -> Result<bool> {
    let can = |c| acl.allows(path, c);
    Ok(match op {
        Operation::Read => can(Capability::Read),
        // Vault checks a LIST against the path with a trailing slash, so
        // that `foo/*` grants listing `foo`.
        Operation::List => acl.allows(&format!("{path}/"), Capability::List),
        // A write is an update, as in Vault; `create` is enough only to
        // make what does not exist yet on a path with an existence check,
        // so that a policy meant for adding users cannot reset one.
        Operation::Write => {
            can(Capability::Update)
                || (can(Capability::Create) && routes::exists(core, path).await? == Some(false))
        }
        Operation::Delete => can(Capability::Delete),
    })
}

/// Whether a token's policies let it do `op` on `path`: what the web UI
/// asks before it offers an action (the action itself still goes through
/// [`execute`], which decides again).
pub async fn may(core: &Core, caller: &TokenEntry, op: Operation, path: &str) -> Result<bool> {
    if caller.is_root() {
        return Ok(true);
    }
    let acl = policies::acl_for(core, &caller.policies).await?;
    Ok(op_allowed(core, &acl, op, path).await?
        && (!routes::needs_sudo(path, op) || has_sudo(&acl, op, path)))
}

/// One request made on a caller's behalf by another face of the server (the
/// web UI): audited, authenticated, authorized and routed exactly as an
/// API request is, with no response wrapping.
pub async fn execute(core: &Core, request: &Request) -> Result<Reply> {
    audited(core, request, async {
        let mut caller = None;
        let result = process(core, request, &mut caller).await;
        if let Err(Error::PermissionDenied) = &result {
            core.metrics.auth_failures.inc();
        }
        (caller, result)
    })
    .await
}

/// Puts on record something another face of the server does itself rather
/// than through [`execute`] (the web UI's sign-in with a token and its
/// sign-out): a request entry before `act` runs, refusing it if that
/// cannot be written, and a response entry with what `act` answered and
/// for whom, as for an API request.
pub async fn audited(
    core: &Core,
    request: &Request,
    act: impl std::future::Future<Output = (Option<Arc<TokenEntry>>, Result<Reply>)>,
) -> Result<Reply> {
    let entry = audit_request_or_refuse(core, request).await?;
    let (caller, result) = act.await;
    let status = match &result {
        Ok(r) => reply_status(r),
        Err(e) => status_of(e),
    };
    audit_response(core, request, entry, caller.as_deref(), &result, status).await;
    result
}

/// Keys whose values are not secret and stay readable in the audit log.
/// A certificate's serial number is public (it is in the certificate and the
/// inventory), and readable it ties an inventory entry to its request.
const AUDIT_KEEP: &[&str] = &[
    "policies",
    "token_policies",
    "lease_duration",
    "renewable",
    "serial_number",
];

/// Status reads that change nothing and need no token are not audited, as
/// Vault does not audit them: a load balancer's health checks would fill
/// the log, and they must keep answering while the audit file cannot be
/// written (that is when they are needed).
fn is_audited(req: &Request) -> bool {
    !(req.op == Operation::Read
        && matches!(
            req.path.as_str(),
            "sys/health" | "sys/seal-status" | "sys/init" | "sys/leader"
        ))
}

/// Request fields that are not secret and stay readable in the audit log,
/// by route. hostd's poll says which state the host has (`index`), which
/// it applied (`applied`) and how long it waits: readable, the log shows
/// which state each host acknowledged and when, and a poll's request
/// entry is about half the size (a change reaching a fleet writes one per
/// host). Every other request's fields are HMAC'd, as Vault does.
///
/// A value of one of those fields that is not a number or a duration
/// (`30s`) is HMAC'd all the same: what a client put there by mistake may
/// be a secret.
fn request_keep(req: &Request) -> &'static [&'static str] {
    match (req.op, req.path.as_str()) {
        (Operation::Read, "hosts/self/state") => hosts::POLL_FIELDS,
        _ => &[],
    }
}

fn request_data(key: &audit::AuditKey, req: &Request) -> Value {
    let fields = req.fields.raw();
    let keep = request_keep(req);
    let mut data = audit::redact(&Value::Object(fields.clone()), key, keep);
    for name in keep {
        let (Some(value), Some(slot)) = (fields.get(*name), data.get_mut(*name)) else {
            continue;
        };
        if !matches!(value, Value::String(s) if hosts::is_plain_poll_value(s)) {
            *slot = audit::redact(value, key, &[]);
        }
    }
    data
}

fn request_json(key: &audit::AuditKey, req: &Request, request_id: &str) -> Value {
    json!({
        "id": request_id,
        "operation": req.op.as_str(),
        "path": req.path,
        "remote_address": req.client_ip.map(|i| i.to_string()),
        "data": request_data(key, req),
    })
}

/// The request entry of a request made on a caller's behalf, under a new
/// request id, or the error that refuses the request when it cannot be
/// put on record.
async fn audit_request_or_refuse(core: &Core, request: &Request) -> Result<audit::RawJson> {
    let request_id = request_id();
    audit_request(core, request, &request_id).await.map_err(|e| {
        tracing::error!(error = %e, path = %request.path, "audit log unavailable: request refused");
        Error::Unavailable(
            "audit log unavailable: the request was refused before anything was done".into(),
        )
    })
}

/// The request entry, written before the request is acted on; an error
/// means it is not on record (and the request must be refused). Answers
/// the entry's `request` part, which the response entry repeats: its
/// fields are HMAC'd, and it is serialized, once for both.
async fn audit_request(core: &Core, req: &Request, request_id: &str) -> Result<audit::RawJson> {
    let key = &core.audit_key;
    let request = audit::RawJson::of(&request_json(key, req, request_id))?;
    let mut event = Map::new();
    event.insert("time".into(), json!(crate::clock::rfc3339(req.now)));
    event.insert("type".into(), json!("request"));
    event.insert(
        "auth".into(),
        match req.token.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => json!({ "client_token": key.hmac(t) }),
            None => Value::Null,
        },
    );
    let event = audit::Event::from(event).with_part("request", request.clone());
    let lines = match &core.audit {
        Some(log) => log.append(event)?,
        None => vec![event.to_string()],
    };
    for line in lines {
        core.storage.append_audit(line, req.now).await?;
    }
    Ok(request)
}

/// Writes the audit file's kept events and follows a moved file, about once
/// a second, so that the file catches up without waiting for a request.
pub async fn audit_keeper(core: State) {
    let Some(log) = &core.audit else {
        return;
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = core.clock.now();
        for written in [log.flush(now), log.check_writable(now)] {
            match written {
                Ok(lines) => {
                    for line in lines {
                        if let Err(e) = core.storage.append_audit(line, core.clock.now()).await {
                            tracing::error!(error = %e, "audit line not copied to the database");
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "audit file still cannot be written"),
            }
        }
    }
}

/// At stop: writes the kept audit events, or, if the file still cannot be
/// written, prints them to the server's log so that none is lost silently.
pub async fn audit_at_stop(core: &Core) {
    let Some(log) = &core.audit else {
        return;
    };
    match log.flush(core.clock.now()) {
        Ok(lines) => {
            for line in lines {
                if let Err(e) = core.storage.append_audit(line, core.clock.now()).await {
                    tracing::error!(error = %e, "audit line not copied to the database");
                }
            }
        }
        Err(e) => {
            for event in log.take_pending() {
                tracing::error!(error = %e, %event, "audit event not written to the audit file");
            }
        }
    }
}

/// Reopens the audit file (SIGHUP, after logrotate moved it).
pub async fn reopen_audit(core: &Core, reason: &str) {
    let Some(log) = &core.audit else {
        return;
    };
    match log.reopen(core.clock.now(), reason) {
        Ok(lines) => {
            tracing::info!(file = %log.path().display(), "audit file reopened");
            for line in lines {
                if let Err(e) = core.storage.append_audit(line, core.clock.now()).await {
                    tracing::error!(error = %e, "audit line not copied to the database");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot reopen the audit file"),
    }
}

/// The response entry, written after the request was acted on, with the
/// `request` part its request entry had. It cannot fail the request: if
/// the audit file cannot be written now, the entry is kept and written
/// before anything else once it can.
async fn audit_response(
    core: &Core,
    req: &Request,
    request: audit::RawJson,
    caller: Option<&TokenEntry>,
    result: &Result<Reply>,
    status: StatusCode,
) {
    let key = &core.audit_key;
    let mut event = Map::new();
    event.insert("time".into(), json!(crate::clock::rfc3339(req.now)));
    event.insert("type".into(), json!("response"));
    event.insert(
        "auth".into(),
        match caller {
            Some(c) => json!({
                "accessor": key.hmac(&c.accessor),
                "display_name": c.display_name,
                "policies": c.policies,
            }),
            None => Value::Null,
        },
    );
    let mut response_part = None;
    let response = match result {
        Ok(Reply::Data(d)) => json!({ "data": audit::redact(d, key, AUDIT_KEEP) }),
        // The same entry as for `Data`, its redaction made and serialized
        // once for every answer that hands out this state.
        Ok(Reply::Rendered(r)) => {
            let part = r.audit_form(|d| {
                core.metrics.host_state("redacted");
                audit::RawJson::of(&json!({ "data": audit::redact(d, key, AUDIT_KEEP) }))
            });
            response_part = Some(match part {
                Ok(p) => Ok(p.clone()),
                Err(e) => Err(e.to_string()),
            });
            Value::Null
        }
        Ok(Reply::Lease { data, lease_id, .. }) => json!({
            "data": audit::redact(data, key, AUDIT_KEEP),
            "lease_id": lease_id,
        }),
        Ok(Reply::Auth { auth, .. }) => json!({ "auth": audit::redact(auth, key, AUDIT_KEEP) }),
        Ok(Reply::List(keys)) => {
            json!({ "data": audit::redact(&json!({ "keys": keys }), key, &[]) })
        }
        // The wrapping token and its accessor HMAC'd, as Vault logs them
        // (the token so that its later use can be matched in the log).
        Ok(Reply::Wrapped(info)) => json!({
            "wrap_info": audit::redact(&info.to_json(), key, &["ttl", "creation_time", "creation_path"]),
        }),
        // What the unwrap handed out, HMAC'd as if it were answered now.
        Ok(Reply::Unwrapped(e)) => json!({
            "data": audit::redact(&e["data"], key, AUDIT_KEEP),
            "auth": audit::redact(&e["auth"], key, AUDIT_KEEP),
        }),
        _ => json!({}),
    };
    event.insert("response".into(), response);
    event.insert("status".into(), json!(status.as_u16()));
    if let Err(e) = result {
        event.insert("error".into(), json!(e.public_message()));
    }
    let mut event = audit::Event::from(event).with_part("request", request);
    match response_part {
        Some(Ok(part)) => event = event.with_part("response", part),
        // Not serializable (it always is): the entry says so rather than
        // going unwritten.
        Some(Err(e)) => {
            event
                .fields
                .insert("response".into(), json!({ "error": e }));
        }
        None => {}
    }
    let lines = match &core.audit {
        Some(log) => log.append_or_keep(event),
        None => vec![event.to_string()],
    };
    for line in lines {
        if let Err(e) = core.storage.append_audit(line, core.clock.now()).await {
            tracing::error!(error = %e, "audit line not copied to the database");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared state's answer is written around its JSON text rather
    /// than built as a value: a client must not tell the two apart.
    #[test]
    fn an_envelope_around_rendered_data_is_the_envelope_of_its_value() {
        let state = json!({"index": 7, "krl": "AAAA\"\n", "principals": {"root": ["a", "b"]}});
        let r = crate::longpoll::Rendered::of(&state).unwrap();
        for warnings in [vec![], vec!["ignored \"x\"".to_string()]] {
            let id = Answering {
                request_id: "id-1",
                mount_type: "ssh",
            };
            let whole = envelope(state.clone(), Value::Null, warnings.clone(), &id);
            let text = envelope_text(r.json(), &warnings, &id).unwrap();
            assert_eq!(text, serde_json::to_string(&whole).unwrap());
        }
    }

    /// hostd's poll fields are readable in a request's audit entry while
    /// they hold what hostd sends; anything else in them, and the same
    /// names on other routes, are HMAC'd.
    #[test]
    fn a_poll_audits_its_numbers_readable_and_nothing_else() {
        let key = audit::AuditKey::new([7; 32]);
        let request = |op, path: &str, fields: Value| Request {
            op,
            path: ApiPath::parse(path).unwrap(),
            fields: Fields::new(fields.as_object().unwrap().clone()),
            client_ip: None,
            token: None,
            wrap_ttl: None,
            now: 0,
            upgrade: false,
        };
        let hmac = |s: &str| Value::String(key.hmac(s));
        let poll = json!({"index": "1234", "wait": "30s", "applied": "1200", "other": "5"});
        let r = request(Operation::Read, "/v1/hosts/self/state", poll.clone());
        assert_eq!(
            request_json(&key, &r, "id")["data"],
            json!({"index": "1234", "wait": "30s", "applied": "1200", "other": hmac("5")})
        );
        let odd = json!({"index": "hunter2", "wait": ["30s", "x"], "applied": "12 34"});
        let r = request(Operation::Read, "/v1/hosts/self/state", odd);
        assert_eq!(
            request_json(&key, &r, "id")["data"],
            json!({"index": hmac("hunter2"), "wait": [hmac("30s"), hmac("x")], "applied": hmac("12 34")})
        );
        for (op, path) in [
            (Operation::Write, "/v1/hosts/self/state"),
            (Operation::Read, "/v1/hosts/self"),
        ] {
            let r = request(op, path, poll.clone());
            let data = &request_json(&key, &r, "id")["data"];
            assert_eq!(data["index"], hmac("1234"), "{path}");
        }
    }

    /// A form body is read as Vault reads it: `+` a space, a field given
    /// twice joined with commas, and a broken escape or a `;` refused
    /// rather than stored as written.
    #[test]
    fn a_form_body_with_a_broken_escape_is_refused_not_stored_as_written() {
        let fields = form_fields(b"policy=path+%22a%22+%7B%7D&x=1&x=%e9").unwrap();
        assert_eq!(fields["policy"], json!("path \"a\" {}"));
        assert_eq!(fields["x"], json!("1,\u{fffd}"));
        for bad in [
            &b"policy=path%zz"[..],
            b"x=%4",
            b"x=%",
            b"%g1=1",
            b"policy=a;x=1",
        ] {
            let why = form_fields(bad).unwrap_err();
            assert!(why.starts_with("error parsing form data"), "{why}");
        }
        assert!(form_fields(b"x=%4").unwrap_err().contains("\"%4\""));
    }

    /// A fleet's waiting long-polls each hold their request's future, and
    /// an async function's future is as large as the largest future it
    /// may await: the long-poll's must not be that of every route.
    #[tokio::test]
    async fn a_waiting_long_poll_holds_a_small_future() {
        let dir = tempfile::tempdir().unwrap();
        let core = Core::for_test(&dir, 1_700_000_000).await;
        let req = axum::http::Request::get("/v1/hosts/self/state?index=1&wait=30s")
            .body(Body::empty())
            .unwrap();
        let whole = std::mem::size_of_val(&handle(AxState(core.clone()), req));
        let r = Request {
            op: Operation::Read,
            path: ApiPath::parse("/v1/hosts/self/state").unwrap(),
            fields: Fields::new(Map::new()),
            client_ip: None,
            token: None,
            wrap_ttl: None,
            now: 0,
            upgrade: false,
        };
        let routed = std::mem::size_of_val(&routes::dispatch(&core, &r, None));
        let poll = std::mem::size_of_val(&hosts::self_state(&core, &r, None));
        let others = std::mem::size_of_val(&hosts::route(&core, &r, None));
        // Debug build, where futures are largest: 8,696 bytes for the
        // whole request and 6,896 routed when every route was awaited in
        // place (hosts' own routes alone take 6,824).
        assert!(routed <= poll + 128, "routed {routed}, the poll's {poll}");
        assert!(
            poll * 2 < others,
            "the poll's {poll}, hosts' routes {others}"
        );
        // 4,632 once routes, audit entries and authentication are awaited
        // from their own allocations.
        assert!(whole < 5000, "the whole request's future: {whole} bytes");
    }
}
