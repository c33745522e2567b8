//! The ssh secrets engine: one mount is one certificate authority (with one
//! or more issuers) and its roles. Vault's API shapes; see `routes` below
//! for the paths.

pub mod certs;
pub mod creds;
pub mod issuers;
pub mod krl;
pub mod principal;
pub mod roles;
pub mod sign;

use axum::http::StatusCode;
use serde_json::{json, Map};
use ssh_key::LineEnding;

use crate::auth::token::TokenEntry;
use crate::error::{Error, Result};
use crate::http::{no_route, Reply};
use crate::mounts::Mount;
use crate::request::{Operation, Request};
use crate::state::Core;
use roles::KeyType;

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

pub async fn dispatch(
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
            Some(i) => Ok(Reply::Data(json!({ "public_key": i.public_key }))),
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
                json!({ "public_key": i.public_key, "issuer_id": i.id }),
            ))
        }
        (["config", "ca"], Delete) => {
            issuers::delete_all(core, m).await?;
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
            Ok(Reply::Data(i.to_json(default.as_deref() == Some(&i.id))))
        }
        (["issuer", r], Read) => {
            let default = issuers::default_id(core, m).await?;
            match issuers::resolve(core, m, r).await? {
                Some(i) => Ok(Reply::Data(i.to_json(default.as_deref() == Some(&i.id)))),
                None => Ok(Reply::NotFound),
            }
        }
        (["issuer", r], Write) => {
            let name = f.required_str("issuer_name")?;
            let i = issuers::rename(core, m, r, &name).await?;
            let default = issuers::default_id(core, m).await?;
            Ok(Reply::Data(i.to_json(default.as_deref() == Some(&i.id))))
        }
        (["issuer", r], Delete) => {
            issuers::delete(core, m, r).await?;
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
        (["roles"], List) => Ok(Reply::List(roles::list(core, m).await?)),
        (["roles", name], Read) => Ok(match roles::read(core, m, name).await? {
            Some(r) => Reply::Data(roles::to_json(&r)),
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
            Ok(Reply::Data(json!({
                "serial_number": certs::serial_hex(rec.serial),
                "signed_key": format!("{}\n", cert.to_openssh().map_err(|e| Error::internal(e.to_string()))?),
            })))
        }
        (["issue", role], Write) => {
            let key_type = f.str("key_type")?.unwrap_or_default();
            let bits = f.non_negative("key_bits")?.unwrap_or(0);
            // Check the role before spending time on a key pair.
            ca_role(core, m, role).await?;
            let private = sign::generate_user_key(&key_type, bits)?;
            let (rec, cert) =
                issue_cert(core, m, role, req, caller, private.public_key().clone()).await?;
            Ok(Reply::Data(json!({
                "serial_number": certs::serial_hex(rec.serial),
                "signed_key": format!("{}\n", cert.to_openssh().map_err(|e| Error::internal(e.to_string()))?),
                "private_key": private.to_openssh(LineEnding::LF).map_err(|e| Error::internal(e.to_string()))?.to_string(),
                "private_key_type": sign::private_key_type(&private),
            })))
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
            Ok(Reply::Data(json!({ "revoked": serials })))
        }
        (["creds", role], Write) => {
            let r = roles::read(core, m, role)
                .await?
                .ok_or_else(|| Error::invalid(format!("unknown role: {role}")))?;
            let wait = f.duration("wait")?.unwrap_or(0).min(60);
            let mut issued = creds::create(core, m, &r, req).await?;
            // gatepass: `wait` holds the answer until a host's hostd reports
            // the dynamic key installed (or the time is up).
            if r.key_type == KeyType::Dynamic && wait > 0 {
                let deadline =
                    tokio::time::Instant::now() + std::time::Duration::from_secs(wait as u64);
                let mut done = crate::hosts::installed(core, &issued.lease_id).await?;
                while !done && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    done = crate::hosts::installed(core, &issued.lease_id).await?;
                }
                issued.data["installed"] = serde_json::json!(done);
            }
            Ok(Reply::Lease {
                data: issued.data,
                lease_id: issued.lease_id,
                lease_duration: issued.lease_duration,
                renewable: issued.renewable,
            })
        }
        (["verify"], Write) => {
            let otp = f.required_str("otp")?;
            // A host's helper may present its host token (gatepass); only
            // enrollment binds a token to a host.
            let host = match req.token.as_deref().filter(|t| !t.is_empty()) {
                Some(t) => match crate::auth::token::lookup(core, t, req.now).await? {
                    Some(e) => e.host_id,
                    None => return Err(Error::PermissionDenied),
                },
                None => None,
            };
            // The OTP is looked at first: a right one is never refused
            // because others guessed wrong from the same address (hosts
            // behind one NAT share it); only failures count and get 429.
            match creds::verify(core, m, otp.trim(), host.as_deref(), req.now).await? {
                Some(d) => Ok(Reply::Data(d)),
                None => {
                    core.verify_limiter.failure(req.client_ip, req.now)?;
                    Err(Error::invalid("OTP not found"))
                }
            }
        }
        (["lookup"], Write) => {
            let roles = creds::lookup(core, m, &f.required_str("ip")?).await?;
            Ok(Reply::Data(json!({ "roles": roles })))
        }
        (["config", "zeroaddress"], Read) => {
            let roles = creds::zero_address_roles(core, m).await?;
            if roles.is_empty() {
                return Ok(Reply::NotFound);
            }
            Ok(Reply::Data(json!({ "roles": roles })))
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
        (["certs"], List) => Ok(Reply::List(certs::list(core, m).await?)),
        (["certs", serial], Read) => Ok(
            match certs::get(core, m, certs::parse_serial(serial)?).await? {
                Some(r) => Reply::Data(r.to_json()),
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
            | ["revoke"]
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

pub async fn ca_role(core: &Core, m: &Mount, name: &str) -> Result<std::sync::Arc<roles::Role>> {
    let role = roles::read_shared(core, m, name)
        .await?
        .ok_or_else(|| Error::invalid(format!("unknown role: {name}")))?;
    if role.key_type != KeyType::Ca {
        return Err(Error::invalid(format!(
            "role {name} has key_type {}; sign and issue need a role with key_type=ca",
            role.key_type.as_str()
        )));
    }
    Ok(role)
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
    };
    issue_with(core, m, role_name, &input, &who, req.now).await
}

/// Signs under a role and records the certificate in the inventory.
pub async fn issue_with(
    core: &Core,
    m: &Mount,
    role_name: &str,
    input: &sign::SignInput,
    who: &sign::Requester,
    now: i64,
) -> Result<(certs::CertRecord, ssh_key::Certificate)> {
    let role = ca_role(core, m, role_name).await?;
    let issuer = issuers::resolve(core, m, &role.issuer_ref)
        .await?
        .ok_or_else(|| {
            Error::invalid(format!(
                "issuer {:?} of role {role_name} does not exist (configure the CA with config/ca)",
                role.issuer_ref
            ))
        })?;
    // The inventory insert makes the serial unique in the mount; a
    // collision just means signing again with the next one.
    for _ in 0..4 {
        let serial = next_serial(now);
        let cert = sign::sign(&role, &issuer, input, who, now, serial)?;
        let rec = certs::CertRecord::new(&cert, &issuer, role_name, &who.display_name);
        if certs::record(core, m, &rec).await? {
            return Ok((rec, cert));
        }
    }
    Err(Error::internal("could not find a free serial number"))
}

/// A certificate serial number: the signing second in the high bits and a
/// counter in the low 30. The inventory rows signed in one second then sit
/// side by side in the database's index, so a batch of inserts rewrites a
/// page or two instead of one random page each (which is most of what a
/// commit writes). The counter starts at a random value, so servers sharing
/// a database rarely meet. Serials need to be unique, not unpredictable:
/// the certificate's random nonce is what defeats chosen-prefix attacks.
fn next_serial(now: i64) -> u64 {
    static COUNTER: std::sync::LazyLock<std::sync::atomic::AtomicU64> =
        std::sync::LazyLock::new(|| std::sync::atomic::AtomicU64::new(rand::random()));
    let low = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & ((1 << 30) - 1);
    (now.max(1) as u64) << 30 | low
}

#[cfg(test)]
mod tests {
    use super::next_serial;

    #[test]
    fn serials_are_unique_and_ordered_by_the_signing_second() {
        let now = 1_767_225_600;
        let a: Vec<u64> = (0..1000).map(|_| next_serial(now)).collect();
        let later = next_serial(now + 1);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), a.len(), "a serial repeated");
        assert!(a.iter().all(|s| s >> 30 == now as u64));
        assert!(a.iter().all(|s| *s < later), "a later second sorts after");
    }
}
