//! Routes under `sys/`: status, mounts, policies, capabilities, audit and
//! leases. Each arm reads the path and fields, calls the module that owns
//! the concept, and picks the reply shape.

use axum::http::StatusCode;
use serde_json::{json, Map, Value};

use super::request::{Operation, Request};
use super::routes::{caller_of, ok_or_404};
use super::{no_route, Reply};
use crate::auth::token::TokenEntry;
use crate::auth::{methods, wrapping};
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::leases::Lease;
use crate::mounts::Mount;
use crate::policy::Acl;
use crate::request::Fields;
use crate::state::Core;
use crate::{leases, mounts, policies, ssh};

/// A status code given in a `sys/health` query parameter, or `default`.
fn health_code(req: &Request, key: &str, default: StatusCode) -> Result<StatusCode> {
    match req.fields.int(key)? {
        None => Ok(default),
        Some(n) => u16::try_from(n)
            .ok()
            .and_then(|n| StatusCode::from_u16(n).ok())
            .ok_or_else(|| Error::invalid(format!("{key}: {n} is not an HTTP status code"))),
    }
}

/// Vault's `sys/health`, for load balancers: the status code says whether
/// this server can serve. gatepass servers are never sealed nor standby
/// (every one serves, on its own SQLite or beside others on one
/// PostgreSQL); what can stop one serving is its storage, which it then
/// reports as Vault reports a sealed node, `sealedcode` (503 unless given).
/// `activecode` (200) and `uninitcode` (501) are Vault's too; `standbyok`,
/// `perfstandbyok`, `standbycode`, `performancestandbycode`,
/// `drsecondarycode`, `haunhealthycode` and `removedcode` are accepted and
/// change nothing, there being no such state here.
async fn health(core: &Core, req: &Request) -> Result<Reply> {
    let active = health_code(req, "activecode", StatusCode::OK)?;
    let uninit = health_code(req, "uninitcode", StatusCode::NOT_IMPLEMENTED)?;
    let unavailable = health_code(req, "sealedcode", StatusCode::SERVICE_UNAVAILABLE)?;
    for k in ["standbyok", "perfstandbyok"] {
        req.fields.bool(k)?;
    }
    for k in [
        "standbycode",
        "performancestandbycode",
        "drsecondarycode",
        "haunhealthycode",
        "removedcode",
    ] {
        health_code(req, k, StatusCode::OK)?;
    }
    let storage_type = match core.storage.backend() {
        crate::storage::Backend::Sqlite => "sqlite",
        crate::storage::Backend::Postgres => "postgresql",
    };
    // The probe's answer is at most a few hundred ms old and comes within
    // about a second even from a database that does not answer at all.
    let checked = match core.storage.health().await {
        // The probe's answer may be a few hundred ms old: this read is
        // bounded as well, so that a database gone since answers promptly.
        Ok(()) => {
            match tokio::time::timeout(crate::storage::PROBE_TIMEOUT, core.is_initialized()).await {
                Ok(Ok(init)) => Ok(init),
                Ok(Err(Error::StorageUnavailable(msg))) => Err(msg),
                Ok(Err(e)) => return Err(e),
                Err(_) => Err(format!(
                    "storage unavailable: {}: no answer within {} ms",
                    core.storage.target(),
                    crate::storage::PROBE_TIMEOUT.as_millis()
                )),
            }
        }
        Err(msg) => Err(msg),
    };
    let (mut status, initialized, problem) = match checked {
        Ok(true) => (active, json!(true), None),
        Ok(false) => (uninit, json!(false), None),
        // Whether it is initialized is in the storage that cannot be read.
        Err(msg) => (unavailable, Value::Null, Some(msg)),
    };
    // An audit file that cannot be written refuses every request as surely
    // as a storage that cannot be read: a load balancer must hear of it.
    let audit_trouble = core.audit.as_ref().and_then(|a| a.trouble());
    if audit_trouble.is_some() {
        status = unavailable;
    }
    let mut body = json!({
        "initialized": initialized,
        "sealed": false,
        "standby": false,
        "performance_standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": req.now,
        "version": env!("CARGO_PKG_VERSION"),
        "cluster_name": "gatepass",
        "storage": {
            "type": storage_type,
            "target": core.storage.target(),
            "available": problem.is_none(),
        },
    });
    body["audit"] = json!({ "available": audit_trouble.is_none() });
    if let Some(msg) = &audit_trouble {
        body["audit"]["error"] = json!(msg);
        body["errors"] = json!([msg]);
    }
    if let Some(msg) = problem {
        body["storage"]["error"] = json!(msg);
        body["errors"] = json!([msg]);
    }
    Ok(Reply::Raw {
        status,
        content_type: "application/json",
        body: body.to_string().into_bytes(),
    })
}

/// The wrapping token a `sys/wrapping/*` request is about: the `token`
/// field, else the request's own token (Vault's order; with neither, a 403
/// as in Vault).
fn wrapping_token(req: &Request) -> Result<String> {
    match req.fields.str("token")?.filter(|t| !t.is_empty()) {
        Some(t) => Ok(t),
        None => req
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or(Error::PermissionDenied),
    }
}

pub async fn route(core: &Core, req: &Request, caller: Option<&TokenEntry>) -> Result<Reply> {
    use Operation::*;
    let segs: Vec<&str> = req.path.split('/').collect();
    let now = req.now;
    match (segs.as_slice(), req.op) {
        // ---- sys ---------------------------------------------------------
        (["sys", "health"], Read) => health(core, req).await,
        (["sys", "seal-status"], Read) => Ok(Reply::Raw {
            status: StatusCode::OK,
            content_type: "application/json",
            body: json!({
                "type": "shamir", "initialized": core.is_initialized().await?, "sealed": false,
                "t": 1, "n": 1, "progress": 0, "nonce": "", "version": env!("CARGO_PKG_VERSION"),
                "storage_type": match core.storage.backend() {
                    crate::storage::Backend::Sqlite => "sqlite",
                    crate::storage::Backend::Postgres => "postgresql",
                },
            })
            .to_string()
            .into_bytes(),
        }),
        // What `vault status` / `bao status` and hvac's `read_leader_status`
        // read. Every gatepass server is active on its own (several sharing
        // PostgreSQL need no leader), so the answer is Vault's for a node
        // without HA.
        (["sys", "leader"], Read) => Ok(Reply::Raw {
            status: StatusCode::OK,
            content_type: "application/json",
            body: json!({
                "ha_enabled": false, "is_self": false,
                "active_time": "0001-01-01T00:00:00Z",
                "leader_address": "", "leader_cluster_address": "",
                "performance_standby": false, "performance_standby_last_remote_wal": 0,
                "raft_committed_index": 0, "raft_applied_index": 0,
            })
            .to_string()
            .into_bytes(),
        }),
        (["sys", "init"], Read) => Ok(Reply::Raw {
            status: StatusCode::OK,
            content_type: "application/json",
            body: json!({ "initialized": core.is_initialized().await? })
                .to_string()
                .into_bytes(),
        }),
        (["sys", "metrics"], Read) => {
            let format = req
                .fields
                .str("format")?
                .unwrap_or_else(|| "prometheus".into());
            if format != "prometheus" {
                return Err(Error::invalid("format: only \"prometheus\" is supported"));
            }
            crate::retention::refresh_size_metrics(core).await;
            Ok(Reply::Raw {
                status: StatusCode::OK,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: core.metrics.render().into_bytes(),
            })
        }
        (["sys", "mounts"], Read) => Ok(Reply::Data(mounts_json(core).await?)),
        // The auth methods' own mounts: the TTLs of the tokens each issues.
        // `bao auth tune` / `vault auth tune` use sys/mounts/auth/<path>.
        (["sys", "auth" | "mounts", ..], Read) if auth_tune_path(&segs).is_some() => {
            let m = methods::Method::at(&auth_tune_path(&segs).unwrap_or_default())?;
            let s = methods::settings(core, m).await?;
            let mut v = tune_fields(&s.tune, &s.description(m));
            // Tokens are of one type, Vault's default (service tokens).
            v["token_type"] = json!("default-service");
            Ok(Reply::Data(v))
        }
        (["sys", "auth" | "mounts", ..], Write) if auth_tune_path(&segs).is_some() => {
            let m = methods::Method::at(&auth_tune_path(&segs).unwrap_or_default())?;
            methods::tune(core, m, &tune_input(req)?).await?;
            Ok(Reply::NoContent)
        }
        (["sys", "mounts", path @ .., "tune"], Read) if !path.is_empty() => Ok(Reply::Data(
            tune_json(&existing_mount(core, &path.join("/")).await?),
        )),
        (["sys", "mounts", path @ .., "tune"], Write) if !path.is_empty() => {
            mounts::tune(core, &path.join("/"), tune_input(req)?).await?;
            Ok(Reply::NoContent)
        }
        (["sys", "remount"], Write) => {
            let from = req.fields.required_str("from")?;
            let to = req.fields.required_str("to")?;
            if from.trim_matches('/').starts_with("auth/")
                || to.trim_matches('/').starts_with("auth/")
            {
                return Err(Error::invalid(
                    "auth methods cannot be moved: gatepass's are always at token/, approle/ and userpass/",
                ));
            }
            let moved = mounts::remount(core, &from, &to).await?;
            let id = remount_record(core, &from, &moved.path, now).await?;
            Ok(Reply::Data(json!({ "migration_id": id })))
        }
        (["sys", "remount", "status", id], Read) => Ok(ok_or_404(
            core.storage.get::<Value>(&format!("remount/{id}")).await?,
        )),
        (["sys", "mounts", path @ ..], Write) if !path.is_empty() => {
            let kind = req.fields.required_str("type")?;
            let desc = req.fields.str("description")?.unwrap_or_default();
            // Checked whole before the mount is made.
            let mut tune = crate::tune::Tune::default();
            tune.apply(&enable_config(req)?)?;
            // Vault's `options`, `local`, `seal_wrap` are accepted and
            // ignored, without an "unrecognized parameter" warning.
            for k in ["options", "local", "seal_wrap"] {
                req.fields.value(k);
            }
            mounts::enable(core, &path.join("/"), &kind, &desc, tune, now).await?;
            Ok(Reply::NoContent)
        }
        (["sys", "mounts", path @ ..], Read) if !path.is_empty() => Ok(Reply::Data(mount_json(
            &existing_mount(core, &path.join("/")).await?,
        ))),
        (["sys", "mounts", path @ ..], Delete) if !path.is_empty() => {
            mounts::disable(core, &path.join("/")).await?;
            Ok(Reply::NoContent)
        }
        (["sys", "auth"], Read) => Ok(Reply::Data(auth_methods(core).await?)),
        (["sys", "auth", path @ ..], Write) if !path.is_empty() => {
            let path = path.join("/");
            let kind = req.fields.str("type")?.unwrap_or_else(|| path.clone());
            let desc = req.fields.str("description")?.unwrap_or_default();
            let config = enable_config(req)?;
            for k in ["options", "local", "seal_wrap"] {
                req.fields.value(k);
            }
            // The built-in methods are always enabled; enabling one again is
            // a no-op so that scripts written for Vault run unchanged, but
            // for the TTLs it sets.
            if crate::auth::mounts::BUILT_IN.contains(&kind.as_str()) && kind == path {
                if !config.is_empty() {
                    methods::tune(core, methods::Method::at(&path)?, &config).await?;
                }
                return Ok(Reply::NoContent);
            }
            if !config.is_empty() {
                return Err(Error::invalid(format!(
                    "config: a {kind} auth method's tokens take their TTLs from its roles \
                     (token_ttl, token_max_ttl); the method itself cannot be tuned"
                )));
            }
            crate::auth::mounts::enable(core, &path, &kind, &desc, now).await?;
            Ok(Reply::NoContent)
        }
        (["sys", "auth", path @ ..], Delete) if !path.is_empty() => {
            let path = path.join("/");
            if crate::auth::mounts::BUILT_IN.contains(&path.as_str()) {
                return Err(Error::invalid(format!(
                    "{path}/ is built in and cannot be disabled"
                )));
            }
            crate::auth::mounts::disable(core, &path, now).await?;
            Ok(Reply::NoContent)
        }
        (["sys", "policies", "acl"], List) | (["sys", "policy"], List) => {
            Ok(Reply::List(policies::list(core).await?))
        }
        (["sys", "policy"], Read) => {
            let names = policies::list(core).await?;
            Ok(Reply::Data(json!({ "keys": names, "policies": names })))
        }
        // The text is `policy` on the current path, `rules` on the old one,
        // as Vault names it.
        (["sys", "policies", "acl", name], Read) => Ok(ok_or_404(
            policies::read(core, name)
                .await?
                .map(|p| json!({ "name": p.name, "policy": p.text })),
        )),
        (["sys", "policy", name], Read) => Ok(ok_or_404(
            policies::read(core, name)
                .await?
                .map(|p| json!({ "name": p.name, "rules": p.text })),
        )),
        (["sys", "policies", "acl", name], Write) | (["sys", "policy", name], Write) => {
            let text = match req.fields.str("policy")? {
                Some(t) => t,
                None => req.fields.str("rules")?.unwrap_or_default(),
            };
            policies::write(core, name, &unbase64(text)).await?;
            Ok(Reply::NoContent)
        }
        (["sys", "policies", "acl", name], Delete) | (["sys", "policy", name], Delete) => {
            policies::delete(core, name).await?;
            Ok(Reply::NoContent)
        }
        (["sys", "capabilities-self"], Write) => {
            let c = caller_of(caller)?;
            capabilities(core, c, req).await
        }
        (["sys", "capabilities"], Write) => {
            let (_, target) = super::auth::token_in_field(core, req).await?;
            capabilities(core, &target, req).await
        }
        // A token's capabilities by its accessor, as an operator who holds
        // only that (from the audit log, a token listing) asks them.
        (["sys", "capabilities-accessor"], Write) => {
            let accessor = req
                .fields
                .str("accessor")?
                .filter(|a| !a.is_empty())
                .ok_or_else(|| Error::invalid("missing accessor"))?;
            let target = crate::auth::token::lookup_accessor(core, &accessor, req.now)
                .await?
                .ok_or_else(|| Error::invalid("invalid accessor"))?;
            capabilities(core, &target, req).await
        }
        (["sys", "audit"], Read) => Ok(Reply::Data(match &core.audit {
            Some(_) => {
                json!({ "file/": { "type": "file", "path": "file/", "description": "hash-chained JSON lines", "options": {} } })
            }
            None => json!({}),
        })),
        (["sys", "audit-log"], Read) => {
            let after = req.fields.int("after")?.unwrap_or(0);
            let limit = req.fields.int("limit")?.unwrap_or(100).clamp(1, 1000);
            let range = crate::audit::TimeRange::parse(
                req.fields.str("since")?.unwrap_or_default().as_str(),
                req.fields.str("until")?.unwrap_or_default().as_str(),
            )?;
            let rows = core.storage.audit_events_in(after, limit, &range).await?;
            let events: Vec<Value> = rows
                .into_iter()
                .map(|(id, line)| json!({ "id": id, "line": line }))
                .collect();
            Ok(Reply::Data(json!({ "events": events })))
        }

        // ---- sys/wrapping ------------------------------------------------
        (["sys", "wrapping", "wrap"], Write) => {
            if req.wrap_ttl.is_none() {
                return Err(Error::invalid(
                    "endpoint requires response wrapping to be used",
                ));
            }
            // Every field is the data to wrap (the HTTP layer wraps it).
            let data: Map<String, Value> = req
                .fields
                .raw()
                .keys()
                .filter_map(|k| req.fields.value(k).map(|v| (k.clone(), v)))
                .collect();
            Ok(Reply::Data(Value::Object(data)))
        }
        (["sys", "wrapping", "unwrap"], Write) => {
            let token = wrapping_token(req)?;
            let response = wrapping::unwrap(core, &token, now).await?;
            let envelope = serde_json::from_str(&response)
                .map_err(|e| Error::internal(format!("wrapped response unreadable: {e}")))?;
            Ok(Reply::Unwrapped(envelope))
        }
        (["sys", "wrapping", "lookup"], Read | Write) => {
            let token = wrapping_token(req)?;
            super::data(&wrapping::lookup(core, &token, now).await?)
        }
        (["sys", "wrapping", "rewrap"], Write) => {
            let token = wrapping_token(req)?;
            Ok(Reply::Wrapped(wrapping::rewrap(core, &token, now).await?))
        }

        // ---- sys/leases --------------------------------------------------
        (["sys", "leases", "lookup"], Write) => {
            let id = req.fields.required_str("lease_id")?;
            match leases::get(core, &id)
                .await?
                .filter(|l| l.expire_time > now)
            {
                Some(l) => Ok(Reply::Data(lease_json(&l, now))),
                None => Err(Error::invalid("invalid lease")),
            }
        }
        (["sys", "leases", "lookup", prefix @ ..], List) => {
            Ok(Reply::List(leases::list(core, &prefix.join("/")).await?))
        }
        (["sys", "leases", "renew", id @ ..], Write) => {
            let id = if id.is_empty() {
                req.fields.required_str("lease_id")?
            } else {
                id.join("/")
            };
            let l = leases::renew(core, &id, req.fields.duration("increment")?, now).await?;
            ssh::creds::renewed(core, &l).await?;
            Ok(Reply::Lease {
                data: Value::Null,
                lease_id: l.id.clone(),
                lease_duration: l.expire_time - now,
                renewable: l.renewable,
            })
        }
        (["sys", "leases", "revoke", id @ ..], Write) => {
            let id = if id.is_empty() {
                req.fields.required_str("lease_id")?
            } else {
                id.join("/")
            };
            leases::revoke(core, &id).await?;
            Ok(Reply::NoContent)
        }
        (["sys", "leases", "revoke-prefix", prefix @ ..], Write) if !prefix.is_empty() => {
            let prefix = prefix.join("/");
            leases::revoke_prefix(core, &prefix).await?;
            // Tokens are leases in Vault, under the path that made them
            // (`auth/userpass/login/alice`): revoked here too.
            if prefix == "auth" || prefix.starts_with("auth/") {
                crate::auth::token::revoke_by_path(core, &prefix, req.now).await?;
            }
            Ok(Reply::NoContent)
        }

        _ if known_path(&segs) => Err(Error::UnsupportedOperation),
        _ => Err(no_route(&req.path)),
    }
}

/// Paths under `sys/` that exist for some operation: another operation
/// gets 405, not 404.
fn known_path(segs: &[&str]) -> bool {
    matches!(
        segs,
        [
            "sys",
            "health"
                | "seal-status"
                | "leader"
                | "init"
                | "metrics"
                | "mounts"
                | "auth"
                | "policy"
                | "capabilities-self"
                | "capabilities"
                | "capabilities-accessor"
                | "audit"
                | "audit-log"
                | "remount"
        ] | ["sys", "mounts" | "auth" | "policy", _]
            | ["sys", "mounts" | "auth", .., "tune"]
            | ["sys", "policies", "acl"]
            | [
                "sys",
                "leases",
                "lookup" | "renew" | "revoke" | "revoke-prefix",
                ..
            ]
            | ["sys", "policies", "acl", _]
    )
}

/// `GET sys/auth`: the three built-in methods, with their tuned settings,
/// and the OIDC / JWT mounts enabled.
async fn auth_methods(core: &Core) -> Result<Value> {
    let mut out = Map::new();
    for m in methods::Method::ALL {
        let s = methods::settings(core, m).await?;
        out.insert(
            format!("{}/", m.name()),
            json!({
                "type": m.name(), "description": s.description(m),
                "accessor": format!("auth_{}_gatepass", m.name()),
                "config": {
                    "default_lease_ttl": s.tune.default_lease_ttl,
                    "max_lease_ttl": s.tune.max_lease_ttl,
                    "force_no_cache": false,
                    "listing_visibility": s.tune.listing_visibility,
                },
                "local": false, "seal_wrap": false, "options": null,
            }),
        );
    }
    for m in crate::auth::mounts::all(core).await? {
        out.insert(
            format!("{}/", m.path),
            json!({ "type": m.kind, "description": m.description, "accessor": m.accessor,
                    "config": {"default_lease_ttl": 0, "max_lease_ttl": 0}, "local": false,
                    "seal_wrap": false, "options": null }),
        );
    }
    Ok(Value::Object(out))
}

/// The auth method path of `sys/auth/<path>/tune` or, as Vault's CLI
/// sends it, `sys/mounts/auth/<path>/tune`.
fn auth_tune_path(segs: &[&str]) -> Option<String> {
    match segs {
        ["sys", "auth", path @ .., "tune"] | ["sys", "mounts", "auth", path @ .., "tune"]
            if !path.is_empty() =>
        {
            Some(path.join("/"))
        }
        _ => None,
    }
}

/// A `tune` write's fields, for a secrets engine or an auth method alike.
fn tune_input(req: &Request) -> Result<mounts::TuneInput> {
    tune_from(&req.fields)
}

/// What a `tune` write, or the `config` of an enabling, sets.
fn tune_from(f: &Fields) -> Result<mounts::TuneInput> {
    let ttl = |k: &str| -> Result<Option<i64>> {
        // Vault's "system" puts the system's value back.
        match f.str(k)? {
            Some(t) if t == "system" => Ok(Some(0)),
            _ => f.duration(k),
        }
    };
    // gatepass HMACs every value in the audit log; a key asked to stay
    // readable would silently not be, so it is refused.
    for k in [
        "audit_non_hmac_request_keys",
        "audit_non_hmac_response_keys",
    ] {
        if f.str_list(k)?.is_some_and(|v| !v.is_empty()) {
            return Err(Error::invalid(format!(
                "{k} is not supported: gatepass HMACs every value in the audit log"
            )));
        }
    }
    Ok(mounts::TuneInput {
        default_lease_ttl: ttl("default_lease_ttl")?,
        max_lease_ttl: ttl("max_lease_ttl")?,
        description: f.str("description")?,
        listing_visibility: f.str("listing_visibility")?,
    })
}

/// The `config` of a `sys/mounts/<path>` or `sys/auth/<path>` write:
/// Vault applies its TTLs and listing visibility as a tune would (`bao
/// secrets enable -max-lease-ttl=1h`). Its other settings are accepted
/// and ignored, as before.
fn enable_config(req: &Request) -> Result<mounts::TuneInput> {
    match req.fields.value("config") {
        None | Some(Value::Null) => Ok(mounts::TuneInput::default()),
        Some(Value::Object(map)) => {
            let mut t = tune_from(&Fields::new(map))?;
            // The description is the request's own field, not config's.
            t.description = None;
            Ok(t)
        }
        Some(_) => Err(Error::invalid("config must be an object")),
    }
}

/// A policy sent base64-encoded (Vault takes it so, "to avoid string
/// escaping", as Terraform's provider and some scripts send it) is its
/// decoded text. HCL or JSON policy text is never valid base64, even with
/// its spaces left out: it has quotes or braces.
fn unbase64(text: String) -> String {
    use base64::Engine;
    // `base64` wraps its output at 76 columns; Go's decoder, Vault's,
    // skips the line breaks.
    let packed: String = text.split_ascii_whitespace().collect();
    match base64::engine::general_purpose::STANDARD.decode(packed) {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8(bytes).unwrap_or(text),
        _ => text,
    }
}

async fn capabilities(core: &Core, token: &TokenEntry, req: &Request) -> Result<Reply> {
    let paths = match req.fields.str_list("paths")? {
        Some(p) if !p.is_empty() => p,
        _ => vec![req.fields.required_str("path")?],
    };
    let acl: Option<std::sync::Arc<Acl>> = if token.is_root() {
        None
    } else {
        Some(policies::acl_for(core, &token.policies).await?)
    };
    let mut out = serde_json::Map::new();
    let mut all = Vec::new();
    for p in &paths {
        let caps: Vec<String> = match &acl {
            None => vec!["root".into()],
            Some(acl) => {
                // The one canonical form a request to that path would have,
                // so that the answer is about a path a request can take
                // (`ssh//sign/x` or `ssh/../sys/y` are refused as they
                // would be in a request line).
                let path = crate::path::ApiPath::parse(&format!("/v1/{}", p.trim_matches('/')))?;
                // And with the names in lower case, as the request's check
                // takes them, and a trailing `/` kept, as a LIST asks.
                let mut path = super::routes::canonical_names(core, &path).await?;
                if p.ends_with('/') && !path.is_empty() {
                    path.push('/');
                }
                let c = acl.capabilities(&path);
                if c.is_empty()
                    && super::routes::default_policy_updates(&token.policies, &path)
                    && !acl.denies_exactly(&path)
                {
                    // What the request's check grants there (see
                    // `granted_by_default_policy`).
                    vec!["update".into()]
                } else if c.is_empty() {
                    vec!["deny".into()]
                } else {
                    // Sorted by name, as Vault lists them.
                    let mut names: Vec<String> = c.names().into_iter().map(String::from).collect();
                    names.sort();
                    names
                }
            }
        };
        all.extend(caps.iter().cloned());
        out.insert(p.clone(), json!(caps));
    }
    if paths.len() == 1 {
        out.insert("capabilities".into(), json!(all));
    }
    Ok(Reply::Data(Value::Object(out)))
}

/// `sys/remount`'s answer for `sys/remount/status/<id>`: gatepass moves a
/// mount at once, so its migration has succeeded by the time it is read.
async fn remount_record(core: &Core, from: &str, to: &str, now: i64) -> Result<String> {
    let id = uuid::Uuid::new_v4().to_string();
    let record = json!({
        "migration_id": id,
        "migration_info": {
            "source_mount": format!("{}/", from.trim_matches('/')),
            "target_mount": format!("{to}/"),
            "status": "success",
            "started_at": rfc3339(now),
        },
    });
    core.storage.put(&format!("remount/{id}"), &record).await?;
    Ok(id)
}

/// The mount at `path`; a 400 naming it when there is none, as Vault
/// answers reads of a mount or its tune.
async fn existing_mount(core: &Core, path: &str) -> Result<Mount> {
    mounts::get(core, path).await?.ok_or_else(|| {
        Error::invalid(format!(
            "no secret engine mount at {}/",
            path.trim_matches('/')
        ))
    })
}

/// `sys/mounts/<path>/tune` (read), Vault's fields.
fn tune_json(m: &Mount) -> Value {
    tune_fields(&m.tune, &m.description)
}

/// A tune read's answer (`sys/mounts/…/tune`, `sys/auth/…/tune`) as
/// Vault shows it: the TTLs tuned, else the system's (the default as set,
/// even above the maximum, which caps it where it is used), and the
/// listing hint only when set.
fn tune_fields(t: &mounts::Tune, description: &str) -> Value {
    let sys = mounts::TtlLimits::default();
    let or_sys = |v: i64, s: i64| if v > 0 { v } else { s };
    let mut v = json!({
        "default_lease_ttl": or_sys(t.default_lease_ttl, sys.default),
        "max_lease_ttl": or_sys(t.max_lease_ttl, sys.max),
        "description": description,
        "force_no_cache": false,
    });
    if !t.listing_visibility.is_empty() {
        v["listing_visibility"] = json!(t.listing_visibility);
    }
    v
}

/// A mount as `sys/mounts` shows it.
fn mount_json(m: &Mount) -> Value {
    json!({
        "type": m.kind,
        "description": m.description,
        "accessor": m.accessor,
        "uuid": m.uuid,
        "config": {
            "default_lease_ttl": m.tune.default_lease_ttl,
            "max_lease_ttl": m.tune.max_lease_ttl,
            "force_no_cache": false,
            "listing_visibility": m.tune.listing_visibility,
        },
        "local": false,
        "seal_wrap": false,
        "external_entropy_access": false,
        "options": null,
        "plugin_version": "",
        "running_plugin_version": "",
        "running_sha256": "",
        "deprecation_status": "supported",
    })
}

/// `GET sys/mounts`: every mount keyed by `path/`.
async fn mounts_json(core: &Core) -> Result<Value> {
    let mut map = Map::new();
    for m in mounts::all(core).await? {
        map.insert(format!("{}/", m.path), mount_json(&m));
    }
    Ok(Value::Object(map))
}

/// A lease as `sys/leases/lookup` shows it.
fn lease_json(l: &Lease, now: i64) -> Value {
    json!({
        "id": l.id,
        // The path the lease was issued under (its id without the last
        // part), as Vault shows it.
        "path": l.id.rsplit_once('/').map(|(p, _)| p).unwrap_or_default(),
        "issue_time": rfc3339(l.issue_time),
        "expire_time": rfc3339(l.expire_time),
        "last_renewal": l.last_renewal.map(rfc3339),
        "renewable": l.renewable,
        "ttl": (l.expire_time - now).max(0),
    })
}
