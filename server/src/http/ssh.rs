//! Routes of an ssh secrets engine mount (`<mount>/…`): each arm reads the
//! request's fields into the domain's inputs, calls `crate::ssh`, and picks
//! the reply shape. The response types are `gatepass_api::ssh`'s.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::StatusCode;
use gatepass_api::ssh::{IssuedKey, Lifted, Revoked, RoleNames, SignedKey};
use serde_json::{json, Map, Value};

use super::request::{Operation, Request};
use super::{data, no_route, Reply};
use crate::auth::token::{self, TokenEntry};
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::hosts;
use crate::mounts::Mount;
use crate::request::Fields;
use crate::ssh::roles::{self, KeyType, Role};
use crate::ssh::{self, certs, creds, issuers, sign};
use crate::state::Core;

/// Longest `creds … wait=` holds its answer, in seconds.
const MAX_CREDS_WAIT: i64 = 60;

/// Paths hosts and users read without a token: CA public keys and the KRL.
pub fn is_unauthenticated(rest: &str, op: Operation) -> bool {
    // `verify` is called by hosts' PAM helpers with only the OTP, as in Vault.
    (op == Operation::Write && rest == "verify")
        || op == Operation::Read
            && (rest == "public_key"
                || rest == "krl"
                || (rest.starts_with("issuer/") && rest.ends_with("/public_key")))
}

fn text(body: String) -> Reply {
    Reply::Raw {
        status: StatusCode::OK,
        content_type: "text/plain; charset=utf-8",
        body: body.into_bytes(),
    }
}

fn openssh(cert: &ssh_key::Certificate) -> Result<String> {
    Ok(format!(
        "{}\n",
        cert.to_openssh()
            .map_err(|e| Error::internal(e.to_string()))?
    ))
}

pub async fn route(
    core: &Core,
    m: &Mount,
    rest: &str,
    req: &Request,
    caller: Option<&TokenEntry>,
) -> Result<Reply> {
    use Operation::*;
    let segs: Vec<&str> = rest.split('/').collect();
    let f = &req.fields;
    match (segs.as_slice(), req.op) {
        (["config", "ca"], Read) => match issuers::resolve(core, m, "default").await? {
            Some(i) => Ok(Reply::Data(
                json!({ "public_key": i.public_key, "issuer_id": i.id, "issuer_name": i.name }),
            )),
            None => Err(Error::invalid("keys haven't been configured yet")),
        },
        (["config", "ca"], Write) => {
            if issuers::default_id(core, m).await?.is_some() {
                return Err(Error::invalid(
                    "keys are already configured; delete them before reconfiguring, or add an issuer (issuers/import/<name>)",
                ));
            }
            let i = new_issuer(core, m, req, None, true).await?;
            Ok(Reply::Data(
                json!({ "public_key": i.public_key, "issuer_id": i.id, "issuer_name": i.name }),
            ))
        }
        (["config", "ca"], Delete) => {
            issuers::delete_all(core, m, req.now).await?;
            Ok(Reply::NoContent)
        }
        (["public_key"], Read) => match issuers::public_keys_text(core, m).await? {
            Some(t) => Ok(text(t)),
            None => Err(Error::NotFound("no CA key configured on this mount".into())),
        },
        (["issuers"], List) => {
            let all = issuers::all(core, m).await?;
            let default = issuers::default_id(core, m).await?;
            let mut info = Map::new();
            for i in &all {
                info.insert(
                    i.id.clone(),
                    json!({ "issuer_name": i.name, "is_default": Some(&i.id) == default.as_ref() }),
                );
            }
            if all.is_empty() {
                return Ok(Reply::List(vec![]));
            }
            Ok(Reply::Data(
                json!({ "keys": all.iter().map(|i| i.id.clone()).collect::<Vec<_>>(), "key_info": info }),
            ))
        }
        (["issuers", "import" | "generate", name], Write) => {
            let make_default = f.bool("set_default")?.unwrap_or(false);
            let i = new_issuer(core, m, req, Some(name.to_string()), make_default).await?;
            let default = issuers::default_id(core, m).await?;
            Ok(Reply::Data(issuer_json(
                &i,
                default.as_deref() == Some(&i.id),
            )))
        }
        (["issuer", r], Read) => {
            let default = issuers::default_id(core, m).await?;
            match issuers::resolve(core, m, r).await? {
                Some(i) => Ok(Reply::Data(issuer_json(
                    &i,
                    default.as_deref() == Some(&i.id),
                ))),
                None => Ok(Reply::NotFound),
            }
        }
        (["issuer", r], Write) => {
            let name = f.required_str("issuer_name")?;
            let i = issuers::rename(core, m, r, &name).await?;
            let default = issuers::default_id(core, m).await?;
            Ok(Reply::Data(issuer_json(
                &i,
                default.as_deref() == Some(&i.id),
            )))
        }
        (["issuer", r], Delete) => {
            issuers::delete(core, m, r, req.now).await?;
            Ok(Reply::NoContent)
        }
        (["issuer", r, "public_key"], Read) => match issuers::resolve(core, m, r).await? {
            Some(i) => Ok(text(format!("{}\n", i.public_key.trim()))),
            None => Err(Error::NotFound(format!("issuer {r:?} does not exist"))),
        },
        (["config", "issuers"], Read) => {
            let d = issuers::resolve(core, m, "default").await?;
            Ok(Reply::Data(json!({
                "default": d.as_ref().map(|i| i.id.clone()).unwrap_or_default(),
                "default_issuer_name": d.map(|i| i.name.clone()).unwrap_or_default(),
            })))
        }
        (["config", "issuers"], Write) => {
            let i = issuers::set_default(core, m, &f.required_str("default")?).await?;
            Ok(Reply::Data(
                json!({ "default": i.id, "default_issuer_name": i.name }),
            ))
        }
        // With Vault's key_info: each role's key type (and issuer for CA
        // roles), so a listing tells the roles apart without reading each.
        (["roles"], List) => {
            let names = roles::list(core, m).await?;
            if names.is_empty() {
                return Ok(Reply::List(names));
            }
            let mut info = Map::new();
            for name in &names {
                if let Some(r) = roles::read_shared(core, m, name).await? {
                    let mut v = json!({ "key_type": r.key_type.as_str() });
                    if r.key_type == KeyType::Ca {
                        v["issuer_ref"] = json!(r.issuer_ref);
                    }
                    info.insert(name.clone(), v);
                }
            }
            Ok(Reply::Data(json!({ "keys": names, "key_info": info })))
        }
        (["roles", name], Read) => Ok(match roles::read(core, m, name).await? {
            Some(r) => Reply::Data(role_json(&r)),
            None => Reply::NotFound,
        }),
        (["roles", name], Write) => {
            let role = roles::from_fields(name, f)?;
            roles::write(core, m, &role).await?;
            Ok(Reply::NoContent)
        }
        (["roles", name], Delete) => {
            roles::delete(core, m, name).await?;
            Ok(Reply::NoContent)
        }
        (["sign", role], Write) => {
            let key = sign::parse_public_key(&f.required_str("public_key")?)?;
            let (rec, cert) = issue_cert(core, m, role, req, caller, key).await?;
            data(&SignedKey {
                serial_number: certs::serial_hex(rec.serial),
                signed_key: openssh(&cert)?,
                issuer_id: rec.issuer_id.clone(),
            })
        }
        (["issue", role], Write) => {
            let key_type = f.str("key_type")?.unwrap_or_default();
            let bits = f.non_negative("key_bits")?.unwrap_or(0);
            // Check the role before spending time on a key pair.
            ssh::ca_role(core, m, role).await?;
            // An RSA key pair can take a second or more: off the runtime's
            // threads, which serve every other request meanwhile.
            let private =
                tokio::task::spawn_blocking(move || sign::generate_user_key(&key_type, bits))
                    .await
                    .map_err(|e| Error::internal(e.to_string()))??;
            let (rec, cert) =
                issue_cert(core, m, role, req, caller, private.public_key().clone()).await?;
            data(&IssuedKey {
                serial_number: certs::serial_hex(rec.serial),
                signed_key: openssh(&cert)?,
                private_key: sign::vault_private_key_pem(&private)?,
                private_key_type: sign::private_key_type(&private).to_string(),
                issuer_id: rec.issuer_id.clone(),
            })
        }
        (["revoke"], Write) => {
            let serials = certs::revoke(
                core,
                m,
                f.str("serial_number")?,
                f.str("key_id")?,
                f.str("public_key")?,
                req.now,
            )
            .await?;
            data(&Revoked { revoked: serials })
        }
        (["lift"], Write) => {
            let serials =
                certs::lift(core, m, f.str("key_id")?, f.str("public_key")?, req.now).await?;
            data(&Lifted {
                still_revoked: serials,
            })
        }
        (["creds", role], Write) => {
            let r = roles::read(core, m, role)
                .await?
                .ok_or_else(|| Error::invalid(format!("unknown role: {role}")))?;
            let wait = f.duration("wait")?.unwrap_or(0).min(MAX_CREDS_WAIT);
            let input = creds_input(core, m, &r, f, caller).await?;
            let mut issued = creds::create(core, m, &r, input, req.now).await?;
            // gatepass: `wait` holds the answer until a host's hostd reports
            // the dynamic key installed (or the time is up).
            if r.key_type == KeyType::Dynamic && wait > 0 {
                issued.data.installed = Some(wait_installed(core, &issued.lease_id, wait).await?);
            }
            Ok(Reply::Lease {
                data: serde_json::to_value(&issued.data)
                    .map_err(|e| Error::internal(e.to_string()))?,
                lease_id: issued.lease_id,
                lease_duration: issued.lease_duration,
                renewable: issued.renewable,
            })
        }
        (["verify"], Write) => {
            let otp = f.required_str("otp")?;
            // A host's helper may present its host token (gatepass); only
            // enrollment binds a token to a host. Any other token, unknown
            // or stale ones too, is ignored as Vault ignores tokens on
            // unauthenticated paths (hvac sends ~/.vault-token on its own,
            // vault-ssh-helper VAULT_TOKEN): it binds no host, so it can
            // reach only OTPs that are bound to none.
            let host = match req.token.as_deref().filter(|t| !t.is_empty()) {
                Some(t) => token::lookup_shared(core, t, req.now)
                    .await?
                    .and_then(|e| e.host_id.clone()),
                None => None,
            };
            // The OTP is looked at first: a right one is never refused
            // because others guessed wrong from the same address (hosts
            // behind one NAT share it); only failures count and get 429.
            match creds::verify(core, m, otp.trim(), host.as_deref(), req.now).await? {
                Some(d) => data(&d),
                None => {
                    core.verify_limiter.failure(req.client_ip, req.now)?;
                    Err(Error::invalid("OTP not found"))
                }
            }
        }
        (["lookup"], Write) => {
            let roles = creds::lookup(core, m, &f.required_str("ip")?).await?;
            data(&RoleNames { roles })
        }
        (["config", "zeroaddress"], Read) => {
            let roles = creds::zero_address_roles(core, m).await?;
            if roles.is_empty() {
                return Ok(Reply::NotFound);
            }
            data(&RoleNames { roles })
        }
        (["config", "zeroaddress"], Write) => {
            let roles = f
                .str_list("roles")?
                .ok_or_else(|| Error::invalid("missing roles"))?;
            creds::set_zero_address_roles(core, m, roles).await?;
            Ok(Reply::NoContent)
        }
        (["config", "zeroaddress"], Delete) => {
            creds::delete_zero_address(core, m).await?;
            Ok(Reply::NoContent)
        }
        (["krl"], Read) => Ok(Reply::Raw {
            status: StatusCode::OK,
            content_type: "application/octet-stream",
            body: certs::krl(core, m, req.now).await?,
        }),
        // gatepass: how many certificates were signed since a time
        // (default: the start of today, UTC), for the web UI's overview.
        (["issued"], Read) => {
            let since = match f.int("since")? {
                Some(s) => s,
                None => req.now - req.now.rem_euclid(86_400),
            };
            let (count, more) = certs::issued_since(core, m, since).await?;
            Ok(Reply::Data(
                json!({ "since": since, "count": count, "more": more }),
            ))
        }
        (["certs"], List) => {
            let text =
                |k: &str| -> Result<Option<String>> { Ok(f.str(k)?.filter(|v| !v.is_empty())) };
            let (key_id, principal) = (text("key_id")?, text("principal")?);
            let (after, limit) = (text("after")?, f.int("limit")?);
            if key_id.is_none() && principal.is_none() && after.is_none() && limit.is_none() {
                return Ok(Reply::List(certs::list(core, m).await?));
            }
            // A search or a page: from the inventory's indexes, newest
            // first, with each certificate's entry and where the next
            // page starts.
            let search = match (key_id, principal) {
                (Some(_), Some(_)) => {
                    return Err(Error::invalid("give key_id or principal, not both"))
                }
                (Some(k), None) => certs::Search::KeyIdPrefix(k),
                (None, Some(p)) => certs::Search::Principal(p),
                (None, None) => certs::Search::All,
            };
            let limit = match limit {
                None => certs::MAX_PAGE,
                Some(n) if n >= 1 && n as usize <= certs::MAX_PAGE => n as usize,
                Some(n) => {
                    return Err(Error::invalid(format!(
                        "limit {n} is not between 1 and {}",
                        certs::MAX_PAGE
                    )))
                }
            };
            let whole = search == certs::Search::All;
            let page = certs::search(core, m, &search, after.as_deref(), limit).await?;
            if page.certs.is_empty() {
                return Ok(Reply::NotFound);
            }
            let keys: Vec<String> = page
                .certs
                .iter()
                .map(|c| certs::serial_hex(c.serial))
                .collect();
            let key_info: Map<String, Value> = page
                .certs
                .iter()
                .map(|c| (certs::serial_hex(c.serial), cert_json(c)))
                .collect();
            let mut out = json!({ "keys": keys, "key_info": key_info });
            if let Some(n) = page.next {
                out["next_after"] = json!(n);
            }
            // The whole inventory's size, counted by the database.
            if whole {
                out["total"] = json!(certs::count(core, m).await?);
            }
            Ok(Reply::Data(out))
        }
        (["certs", serial], Read) => Ok(
            match certs::get(core, m, certs::parse_serial(serial)?).await? {
                Some(r) => Reply::Data(cert_json(&r)),
                None => Reply::NotFound,
            },
        ),
        (
            ["config", "ca" | "zeroaddress" | "issuers"]
            | ["public_key"]
            | ["issuers"]
            | ["roles"]
            | ["krl"]
            | ["certs"]
            | ["issued"]
            | ["revoke"]
            | ["lift"]
            | ["verify"]
            | ["lookup"],
            _,
        )
        | (["roles" | "sign" | "issue" | "issuer" | "certs" | "creds", _], _) => {
            Err(Error::UnsupportedOperation)
        }
        _ => Err(no_route(&req.path)),
    }
}

/// `creds`' target and user. gatepass: `host` names an enrolled host (its
/// ID or hostname) instead of an IP; the credential is then bound to that
/// host, at the address given in `ip` or else the first one the role serves.
async fn creds_input(
    core: &Core,
    m: &Mount,
    role: &Role,
    f: &Fields,
    caller: Option<&TokenEntry>,
) -> Result<creds::CredsInput> {
    let (ip, host_id) = match f.str("host")?.filter(|h| !h.is_empty()) {
        Some(h) => {
            let host = hosts::find(core, &h)
                .await?
                .ok_or_else(|| Error::invalid(format!("no enrolled host {h:?}")))?;
            let ip = match f.str("ip")?.filter(|s| !s.is_empty()) {
                Some(t) => Some(parse_ip(&t)?),
                None => None,
            };
            let target = creds::HostTarget {
                hostname: &host.hostname,
                addresses: &host.addresses,
            };
            (
                creds::host_address(core, m, role, &target, ip).await?,
                Some(host.id),
            )
        }
        None => (parse_ip(&f.required_str("ip")?)?, None),
    };
    Ok(creds::CredsInput {
        ip,
        host_id,
        username: f.str("username")?,
        token: caller.map(|c| c.accessor.clone()),
    })
}

fn parse_ip(text: &str) -> Result<IpAddr> {
    crate::request::parse_ip(text)
        .map_err(|_| Error::invalid(format!("ip {text:?} is not an IPv4 or IPv6 address")))
}

/// Whether a host reports a dynamic key's lease installed within `wait`
/// seconds. An ack taken by this server, or announced by another sharing
/// the database, wakes the wait at once; the wait also looks again every
/// second.
async fn wait_installed(core: &Core, lease_id: &str, wait: i64) -> Result<bool> {
    let mut changes = core.storage.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.max(0) as u64);
    loop {
        if hosts::installed(core, lease_id).await? {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

async fn new_issuer(
    core: &Core,
    m: &Mount,
    req: &Request,
    name: Option<String>,
    make_default: bool,
) -> Result<issuers::Issuer> {
    let f = &req.fields;
    let private = f.str("private_key")?.filter(|s| !s.trim().is_empty());
    let key = match private {
        Some(p) => issuers::import_key(&p, f.str("public_key")?.as_deref())?,
        None => {
            if f.bool("generate_signing_key")? == Some(false) {
                return Err(Error::invalid(
                    "missing private_key (or set generate_signing_key)",
                ));
            }
            let kt = f.str("key_type")?.unwrap_or_else(|| "ssh-ed25519".into());
            let bits = f.non_negative("key_bits")?.unwrap_or(0);
            let kt2 = kt.clone();
            tokio::task::spawn_blocking(move || issuers::generate_key(&kt2, bits))
                .await
                .map_err(|e| Error::internal(e.to_string()))??
        }
    };
    issuers::add(core, m, name, key, make_default, req.now).await
}

async fn issue_cert(
    core: &Core,
    m: &Mount,
    role_name: &str,
    req: &Request,
    caller: Option<&TokenEntry>,
    key: ssh_key::PublicKey,
) -> Result<(certs::CertRecord, ssh_key::Certificate)> {
    let input = sign::input_from_fields(&req.fields, key)?;
    let who = sign::Requester {
        display_name: caller.map(|c| c.display_name.clone()).unwrap_or_default(),
        meta: caller.map(|c| c.meta.clone()).unwrap_or_default(),
        entity: match caller.and_then(|c| c.entity_id.as_deref()) {
            Some(id) => crate::identity::entity(core, id)
                .await?
                .map(std::sync::Arc::new),
            None => None,
        },
    };
    ssh::issue_with(core, m, role_name, &input, &who, req.now).await
}

/// A role as `roles/<name>` shows it: the fields of its key type.
fn role_json(r: &Role) -> Value {
    let cidrs = |v: &Vec<ipnet::IpNet>| {
        v.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut v = json!({
        "key_type": r.key_type.as_str(),
        "default_user": r.default_user,
        "allowed_users": r.allowed_users.join(","),
        "port": r.port,
    });
    let extra = match r.key_type {
        KeyType::Ca => json!({
            "default_user_template": r.default_user_template,
            "allowed_users_template": r.allowed_users_template,
            "allowed_domains": r.allowed_domains.join(","),
            "allow_bare_domains": r.allow_bare_domains,
            "allow_subdomains": r.allow_subdomains,
            "ttl": r.ttl,
            "max_ttl": r.max_ttl,
            "not_before_duration": r.not_before_duration,
            "allowed_extensions": r.allowed_extensions.join(","),
            "default_extensions": r.default_extensions,
            "allowed_critical_options": r.allowed_critical_options.join(","),
            "default_critical_options": r.default_critical_options,
            "allow_user_certificates": r.allow_user_certificates,
            "allow_host_certificates": r.allow_host_certificates,
            "allow_user_key_ids": r.allow_user_key_ids,
            "key_id_format": r.key_id_format,
            "allowed_user_key_lengths": r.allowed_user_key_lengths,
            "algorithm_signer": r.algorithm_signer,
            "allow_empty_principals": r.allow_empty_principals,
            "issuer_ref": r.issuer_ref,
            "allowed_source_addresses": cidrs(&r.allowed_source_addresses),
            "allowed_force_commands": r.allowed_force_commands,
        }),
        // Vault's OTP roles show only what an OTP role has.
        KeyType::Otp => json!({
            "cidr_list": cidrs(&r.cidr_list),
            "exclude_cidr_list": cidrs(&r.exclude_cidr_list),
        }),
        KeyType::Dynamic => json!({
            "default_user_template": r.default_user_template,
            "allowed_users_template": r.allowed_users_template,
            "cidr_list": cidrs(&r.cidr_list),
            "exclude_cidr_list": cidrs(&r.exclude_cidr_list),
            "ttl": r.ttl,
            "max_ttl": r.max_ttl,
            "key_bits": r.key_bits,
            "key_option_specs": r.key_option_specs,
            "admin_user": r.admin_user,
            "key": r.key,
        }),
    };
    if let (Some(a), Some(b)) = (v.as_object_mut(), extra.as_object()) {
        a.extend(b.clone());
    }
    v
}

/// An issuer as `issuer/<ref>` shows it.
fn issuer_json(i: &issuers::Issuer, is_default: bool) -> Value {
    json!({
        "issuer_id": i.id,
        "issuer_name": i.name,
        "public_key": i.public_key,
        "key_type": i.key_type(),
        "is_default": is_default,
        "created": rfc3339(i.created),
    })
}

/// An inventory entry as `certs/<serial>` shows it.
fn cert_json(c: &certs::CertRecord) -> Value {
    json!({
        "serial_number": certs::serial_hex(c.serial),
        "key_id": c.key_id,
        "valid_principals": c.principals,
        "cert_type": c.cert_type,
        "valid_after": rfc3339(c.valid_after as i64),
        "valid_before": rfc3339(c.valid_before as i64),
        "issuer_id": c.issuer_id,
        "role": c.role,
        "requested_by": c.requested_by,
        "public_key_fingerprint": c.fingerprint,
        "revoked": c.revoked_at.is_some(),
        "revocation_time": c.revoked_at.map(rfc3339),
    })
}
