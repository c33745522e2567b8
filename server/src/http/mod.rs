//! The HTTP face of the server: one route, `/v1/*`, that turns an HTTP
//! request into a [`Request`], authenticates and authorizes it, hands it to
//! the domain module for its path (`routes`), audits it, and shapes Vault's
//! response envelope or `{"errors":[…]}`.

mod routes;

pub use routes::no_route;

use std::net::SocketAddr;
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
use crate::error::{Error, Result};
use crate::metrics::RequestLabels;
use crate::path::ApiPath;
use crate::policies;
use crate::policy::Capability;
use crate::request::{Fields, Operation, Request};
use crate::state::{Core, State};

/// Request bodies above this are refused with 413 before they are parsed.
pub const MAX_BODY: usize = 1024 * 1024;

/// What a domain handler answers.
pub enum Reply {
    /// 200 with the envelope's `data`.
    Data(Value),
    /// 200 with the envelope's `auth` (logins, token creation).
    Auth(Value),
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
    /// A body that is not an envelope (sys/health, sys/metrics).
    Raw {
        status: StatusCode,
        content_type: &'static str,
        body: Vec<u8>,
    },
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

fn error_body(status: StatusCode, msg: &str) -> Response {
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

async fn handle(AxState(core): AxState<State>, req: axum::extract::Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
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
        "POST" | "PUT" | "PATCH" => Operation::Write,
        "DELETE" => Operation::Delete,
        _ => return error_body(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation"),
    };
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error_body(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body too large: the limit is {MAX_BODY} bytes"),
            )
        }
    };
    let mut data = Map::new();
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => data = m,
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
    let request = Request {
        op,
        path,
        fields: Fields::new(data),
        client_ip,
        token: token_from(&parts.headers),
        now: core.clock.now(),
    };

    let mut caller = None;
    let result = process(&core, &request, &mut caller).await;
    let status = match &result {
        Ok(r) => reply_status(r),
        Err(e) => e.status(),
    };
    if let Err(Error::PermissionDenied) = &result {
        core.metrics.auth_failures.inc();
    }
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
    if let Err(e) = write_audit(&core, &request, caller.as_ref(), &result, status).await {
        // Fail closed: a request that cannot be audited is not answered.
        tracing::error!(error = %e, "cannot write audit event");
        return error_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: audit log unavailable",
        );
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
    tracing::info!(
        op = request.op.as_str(),
        path = %request.path,
        status = status.as_u16(),
        client = ?request.client_ip,
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    match result {
        Ok(reply) => shape(reply, warnings),
        Err(e) => {
            if e.status().is_server_error() {
                tracing::error!(path = %request.path, error = %e, "request failed");
            }
            error_body(e.status(), &e.public_message())
        }
    }
}

fn reply_status(r: &Reply) -> StatusCode {
    match r {
        Reply::NoContent => StatusCode::NO_CONTENT,
        Reply::NotFound => StatusCode::NOT_FOUND,
        Reply::List(keys) if keys.is_empty() => StatusCode::NOT_FOUND,
        Reply::Raw { status, .. } => *status,
        _ => StatusCode::OK,
    }
}

fn envelope(data: Value, auth: Value, warnings: Vec<String>) -> Value {
    json!({
        "request_id": uuid::Uuid::new_v4().to_string(),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": if warnings.is_empty() { Value::Null } else { json!(warnings) },
        "auth": auth,
        "mount_type": "",
    })
}

fn shape(reply: Reply, warnings: Vec<String>) -> Response {
    match reply {
        Reply::Data(d) => axum::Json(envelope(d, Value::Null, warnings)).into_response(),
        Reply::Auth(a) => axum::Json(envelope(Value::Null, a, warnings)).into_response(),
        Reply::Lease {
            data,
            lease_id,
            lease_duration,
            renewable,
        } => {
            let mut e = envelope(data, Value::Null, warnings);
            e["lease_id"] = json!(lease_id);
            e["lease_duration"] = json!(lease_duration);
            e["renewable"] = json!(renewable);
            axum::Json(e).into_response()
        }
        Reply::List(keys) if keys.is_empty() => error_body(StatusCode::NOT_FOUND, ""),
        Reply::List(keys) => {
            axum::Json(envelope(json!({ "keys": keys }), Value::Null, warnings)).into_response()
        }
        Reply::NoContent => StatusCode::NO_CONTENT.into_response(),
        Reply::NotFound => error_body(StatusCode::NOT_FOUND, ""),
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
    }
}

/// Authentication and authorization, then the handler.
async fn process(core: &Core, req: &Request, caller: &mut Option<TokenEntry>) -> Result<Reply> {
    if routes::is_unauthenticated(core, req).await? {
        return routes::dispatch(core, req, None).await;
    }
    let entry = token::authenticate(core, req.token.as_deref(), req.client_ip, req.now).await?;
    *caller = Some(entry.clone());
    if !entry.is_root() {
        let acl = policies::acl_for(core, &entry).await?;
        let can = |c| acl.allows(&req.path, c);
        let allowed = match req.op {
            Operation::Read => can(Capability::Read),
            // Vault checks a LIST against the path with a trailing slash, so
            // that `foo/*` grants listing `foo`.
            Operation::List => acl.allows(&format!("{}/", req.path), Capability::List),
            // Vault's paths without an existence check treat every write as
            // update; accepting create as well keeps simple policies working.
            Operation::Write => can(Capability::Update) || can(Capability::Create),
            Operation::Delete => can(Capability::Delete),
        };
        if !allowed || (routes::needs_sudo(&req.path, req.op) && !can(Capability::Sudo)) {
            return Err(Error::PermissionDenied);
        }
    }
    routes::dispatch(core, req, Some(&entry)).await
}

/// Keys whose values are not secret and stay readable in the audit log.
const AUDIT_KEEP: &[&str] = &["policies", "token_policies", "lease_duration", "renewable"];

async fn write_audit(
    core: &Core,
    req: &Request,
    caller: Option<&TokenEntry>,
    result: &Result<Reply>,
    status: StatusCode,
) -> Result<()> {
    let key = &core.audit_key;
    let mut event = Map::new();
    event.insert("time".into(), json!(crate::clock::rfc3339(req.now)));
    event.insert("type".into(), json!("response"));
    event.insert(
        "request".into(),
        json!({
            "operation": req.op.as_str(),
            "path": req.path,
            "remote_address": req.client_ip.map(|i| i.to_string()),
            "data": audit::redact(&Value::Object(req.fields.raw().clone()), key, &[]),
        }),
    );
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
    let response = match result {
        Ok(Reply::Data(d)) => json!({ "data": audit::redact(d, key, AUDIT_KEEP) }),
        Ok(Reply::Lease { data, lease_id, .. }) => json!({
            "data": audit::redact(data, key, AUDIT_KEEP),
            "lease_id": lease_id,
        }),
        Ok(Reply::Auth(a)) => json!({ "auth": audit::redact(a, key, AUDIT_KEEP) }),
        Ok(Reply::List(keys)) => {
            json!({ "data": audit::redact(&json!({ "keys": keys }), key, &[]) })
        }
        _ => json!({}),
    };
    event.insert("response".into(), response);
    event.insert("status".into(), json!(status.as_u16()));
    if let Err(e) = result {
        event.insert("error".into(), json!(e.public_message()));
    }
    let line = match &core.audit {
        Some(log) => log.append(event)?,
        None => serde_json::to_string(&Value::Object(event))
            .map_err(|e| Error::internal(e.to_string()))?,
    };
    core.storage.append_audit(&line).await
}
