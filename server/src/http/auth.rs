//! Routes under `auth/`: tokens, AppRole and userpass. Each arm reads the
//! path and fields, calls the auth module, and picks the reply shape.

use super::request::{Operation, Request};
use super::routes::{caller_of, ok_or_404};
use super::{data, no_route, Reply};
use crate::auth::mounts::{self, AuthMount};
use crate::auth::token::{self, TokenEntry};
use crate::auth::{approle, jwt, token_roles, userpass};
use crate::error::{Error, Result};
use crate::policies;
use crate::state::Core;

pub async fn route(core: &Core, req: &Request, caller: Option<&TokenEntry>) -> Result<Reply> {
    use Operation::*;
    let segs: Vec<&str> = req.path.split('/').collect();
    let now = req.now;
    if segs.len() > 1 && !mounts::BUILT_IN.contains(&segs[1]) {
        let under = req.path.strip_prefix("auth/").unwrap_or_default();
        if let Some((m, rest)) = mounts::find(core, under).await? {
            return mount_route(core, &m, &rest, req).await;
        }
    }
    match (segs.as_slice(), req.op) {
        // ---- auth/token --------------------------------------------------
        (["auth", "token", "create"], Write) => {
            let c = caller_of(caller)?;
            issued(
                token::handle_create(core, &req.fields, &req.path, c, false, None, now).await?,
                now,
            )
        }
        (["auth", "token", "create-orphan"], Write) => {
            let c = caller_of(caller)?;
            issued(
                token::handle_create(core, &req.fields, &req.path, c, true, None, now).await?,
                now,
            )
        }
        (["auth", "token", "create", role], Write) => {
            let c = caller_of(caller)?;
            let r = token_roles::read(core, role)
                .await?
                .ok_or_else(|| Error::invalid(format!("unknown role {role}")))?;
            // Sudo is looked for where the ACL looked: at the role's name
            // as the handler takes it (`create/CI` is `create/ci`).
            let path = super::routes::canonical_names(core, &req.path).await?;
            issued(
                token::handle_create(core, &req.fields, &path, c, false, Some(&r), now).await?,
                now,
            )
        }
        (["auth", "token", "roles"], List) => Ok(Reply::List(token_roles::list(core).await?)),
        (["auth", "token", "roles", name], Read) => Ok(ok_or_404(
            token_roles::read(core, name)
                .await?
                .map(|r| token_roles::json(&r)),
        )),
        (["auth", "token", "roles", name], Write) => {
            token_roles::write(core, name, &req.fields).await?;
            Ok(Reply::NoContent)
        }
        (["auth", "token", "roles", name], Delete) => {
            token_roles::delete(core, name).await?;
            Ok(Reply::NoContent)
        }
        (["auth", "token", "lookup-self"], Read | Write) => {
            let c = caller_of(caller)?;
            data(&token::info(req.token.as_deref().unwrap_or(""), c, now))
        }
        (["auth", "token", "lookup"], Write | Read)
            if req.fields.str("token")?.is_none_or(|t| t.is_empty()) =>
        {
            let c = caller_of(caller)?;
            data(&token::info(req.token.as_deref().unwrap_or(""), c, now))
        }
        (["auth", "token", "lookup"], Write | Read) => {
            // An unknown token is a 403 here, as Vault answers it.
            let (text, e) = match token_in_field(core, req).await {
                Err(Error::InvalidRequest(_)) if req.fields.str("token")?.is_some() => {
                    return Err(Error::PermissionDenied)
                }
                other => other?,
            };
            data(&token::info(&text, &e, now))
        }
        (["auth", "token", "lookup-accessor"], Write) => {
            let e = token_of_accessor_field(core, req).await?;
            data(&token::info("", &e, now))
        }
        (["auth", "token", "renew-self"], Write) => {
            let c = caller_of(caller)?.clone();
            let inc = req.fields.duration("increment")?;
            let (e, warnings) = token::renew(core, c, inc, now).await?;
            auth(
                &token::auth(req.token.as_deref().unwrap_or(""), &e, now),
                warnings,
            )
        }
        (["auth", "token", "renew"], Write) => {
            let (text, e) = token_in_field(core, req).await?;
            let inc = req.fields.duration("increment")?;
            let (e, warnings) = token::renew(core, e, inc, now).await?;
            auth(&token::auth(&text, &e, now), warnings)
        }
        (["auth", "token", "renew-accessor"], Write) => {
            let e = token_of_accessor_field(core, req).await?;
            let inc = req.fields.duration("increment")?;
            let (e, warnings) = token::renew(core, e, inc, now).await?;
            auth(&token::auth("", &e, now), warnings)
        }
        (["auth", "token", "revoke-self"], Write) => {
            token::revoke(core, caller_of(caller)?, false).await?;
            Ok(Reply::NoContent)
        }
        // A token already gone (revoked, expired, never made) is revoked
        // too: 204, as in Vault ("Revoked token (if it existed)"), so that
        // a cleanup run twice succeeds twice.
        (["auth", "token", "revoke"], Write) => {
            let text = req.fields.required_str("token")?;
            if let Some(e) = token::lookup(core, &text, req.now).await? {
                token::revoke(core, &e, false).await?;
            }
            Ok(Reply::NoContent)
        }
        (["auth", "token", "revoke-orphan"], Write) => {
            let c = caller_of(caller)?;
            if !policies::has_sudo(core, &c.policies, &req.path).await? {
                return Err(Error::PermissionDenied);
            }
            let (_, e) = token_in_field(core, req).await?;
            token::revoke(core, &e, true).await?;
            Ok(Reply::NoContent)
        }
        (["auth", "token", "revoke-accessor"], Write) => {
            let acc = req.fields.required_str("accessor")?;
            if let Some(e) = token::lookup_accessor(core, &acc, req.now).await? {
                token::revoke(core, &e, false).await?;
            }
            Ok(Reply::NoContent)
        }
        (["auth", "token", "accessors"], List) => Ok(Reply::List(token::accessors(core).await?)),

        // ---- auth/approle ------------------------------------------------
        (["auth", "approle", "login"], Write) => {
            let role_id = req.fields.required_str("role_id")?;
            let secret_id = req.fields.str("secret_id")?.unwrap_or_default();
            issued(
                approle::login(core, &role_id, &secret_id, req.client_ip, now).await?,
                now,
            )
        }
        (["auth", "approle", "role"], List) => Ok(Reply::List(approle::list_roles(core).await?)),
        (["auth", "approle", "role", name], Read) => Ok(ok_or_404(
            approle::read_role(core, name)
                .await?
                .map(|r| approle::role_json(&r)),
        )),
        (["auth", "approle", "role", name], Write) => {
            approle::write_role(core, name, &req.fields).await?;
            Ok(Reply::NoContent)
        }
        (["auth", "approle", "role", name], Delete) => {
            approle::delete_role(core, name).await?;
            Ok(Reply::NoContent)
        }
        (["auth", "approle", "role", name, "role-id"], Read) => {
            Ok(Reply::Data(approle::role_id(core, name).await?))
        }
        (["auth", "approle", "role", name, "role-id"], Write) => {
            approle::set_role_id(core, name, &req.fields).await?;
            Ok(Reply::NoContent)
        }
        (["auth", "approle", "role", name, "secret-id"], Write) => Ok(Reply::Data(
            approle::new_secret_id(core, name, &req.fields, false, now).await?,
        )),
        (["auth", "approle", "role", name, "custom-secret-id"], Write) => Ok(Reply::Data(
            approle::new_secret_id(core, name, &req.fields, true, now).await?,
        )),
        (["auth", "approle", "role", name, "secret-id"], List) => Ok(Reply::List(
            approle::list_secret_accessors(core, name).await?,
        )),
        (["auth", "approle", "role", name, "secret-id", "lookup"], Write) => Ok(ok_or_404(
            approle::lookup_secret(core, name, &req.fields, now).await?,
        )),
        (["auth", "approle", "role", name, "secret-id-accessor", "lookup"], Write) => Ok(
            ok_or_404(approle::lookup_secret_accessor(core, name, &req.fields, now).await?),
        ),
        (["auth", "approle", "role", name, "secret-id", "destroy"], Write | Delete) => {
            approle::destroy_secret(core, name, &req.fields, false).await?;
            Ok(Reply::NoContent)
        }
        (["auth", "approle", "role", name, "secret-id-accessor", "destroy"], Write | Delete) => {
            approle::destroy_secret(core, name, &req.fields, true).await?;
            Ok(Reply::NoContent)
        }

        // ---- auth/userpass -----------------------------------------------
        // Guessing is slowed per client address: past its failures, every
        // attempt is refused untried for a while (the UI's sign-in comes
        // through here too).
        (["auth", "userpass", "login", name], Write) => {
            let attempt = core.login_limiter.attempt(req.client_ip, now)?;
            match userpass::login(core, name, &req.fields, now).await {
                Ok(i) => {
                    attempt.done();
                    issued(i, now)
                }
                Err(e @ Error::InvalidRequest(_)) => {
                    attempt.failed(now);
                    Err(e)
                }
                Err(e) => {
                    attempt.done();
                    Err(e)
                }
            }
        }
        (["auth", "userpass", "users"], List) => Ok(Reply::List(userpass::list_users(core).await?)),
        (["auth", "userpass", "users", name], Read) => {
            Ok(ok_or_404(userpass::read_user(core, name).await?))
        }
        (["auth", "userpass", "users", name], Write) => {
            userpass::write_user(core, name, &req.fields).await?;
            Ok(Reply::NoContent)
        }
        (["auth", "userpass", "users", name], Delete) => {
            userpass::delete_user(core, name).await?;
            Ok(Reply::NoContent)
        }
        (["auth", "userpass", "users", name, "password"], Write) => {
            userpass::set_password(core, name, &req.fields).await?;
            Ok(Reply::NoContent)
        }
        (["auth", "userpass", "users", name, "policies"], Write) => {
            userpass::set_policies(core, name, &req.fields).await?;
            Ok(Reply::NoContent)
        }

        (["auth", "token" | "approle" | "userpass", ..], _) if known_path(&segs) => {
            Err(Error::UnsupportedOperation)
        }
        _ => Err(no_route(&req.path)),
    }
}

/// A token's `auth` block as the envelope's `auth`.
fn auth(a: &gatepass_api::Auth, warnings: Vec<String>) -> Result<Reply> {
    Ok(Reply::Auth {
        auth: serde_json::to_value(a).map_err(|e| Error::internal(e.to_string()))?,
        warnings,
    })
}

/// The answer to a request that made a token.
fn issued(i: token::Issued, now: i64) -> Result<Reply> {
    auth(&token::auth(&i.text, &i.entry, now), i.warnings)
}

/// Counts a single sign-on started from the request's address; 429 past
/// [`crate::state::SSO_STARTS`] in the window.
fn sso_started(core: &Core, req: &Request) -> Result<()> {
    core.sso_start_limiter
        .failure(req.client_ip, req.now)
        .map_err(|_| {
            Error::RateLimited(
                "too many single sign-on logins started from this address; try again in a few minutes"
                    .into(),
            )
        })
}

/// The token named in the `token` field, and its text.
pub(super) async fn token_in_field(core: &Core, req: &Request) -> Result<(String, TokenEntry)> {
    let text = req.fields.required_str("token")?;
    let e = token::lookup(core, &text, req.now)
        .await?
        .ok_or_else(|| Error::invalid("bad token"))?;
    Ok((text, e))
}

/// The token whose accessor is in the `accessor` field.
async fn token_of_accessor_field(core: &Core, req: &Request) -> Result<TokenEntry> {
    let acc = req.fields.required_str("accessor")?;
    token::lookup_accessor(core, &acc, req.now)
        .await?
        .ok_or_else(|| Error::invalid("invalid accessor"))
}

/// Paths under `auth/` that exist for some operation: another operation
/// gets 405, not 404.
fn known_path(segs: &[&str]) -> bool {
    matches!(
        segs,
        ["auth", "token", _]
            | ["auth", "approle", "login" | "role"]
            | ["auth", "approle", "role", _]
            | [
                "auth",
                "approle",
                "role",
                _,
                "role-id" | "secret-id" | "custom-secret-id"
            ]
            | [
                "auth",
                "approle",
                "role",
                _,
                "secret-id" | "secret-id-accessor",
                _
            ]
            | ["auth", "userpass", "users"]
            | ["auth", "userpass", "users", _]
            | ["auth", "userpass", "users", _, "password" | "policies"]
            | ["auth", "userpass", "login", _]
    )
}

/// Routes of an OIDC / JWT mount (`auth/<path>/…`), Vault's paths.
async fn mount_route(core: &Core, m: &AuthMount, rest: &str, req: &Request) -> Result<Reply> {
    use Operation::*;
    let segs: Vec<&str> = rest.split('/').collect();
    let now = req.now;
    match (segs.as_slice(), req.op) {
        (["config"], Read) => Ok(ok_or_404(jwt::read_config(core, m).await?)),
        (["config"], Write) => {
            jwt::write_config(core, m, &req.fields).await?;
            Ok(Reply::NoContent)
        }
        (["role"], List) => Ok(Reply::List(jwt::list_roles(core, m).await?)),
        (["role", name], Read) => Ok(ok_or_404(jwt::read_role(core, m, name).await?)),
        (["role", name], Write) => {
            jwt::write_role(core, m, name, &req.fields).await?;
            Ok(Reply::NoContent)
        }
        (["role", name], Delete) => {
            jwt::delete_role(core, m, name).await?;
            Ok(Reply::NoContent)
        }
        (["login"], Write) => issued(jwt::login(core, m, &req.fields, now).await?, now),
        (["oidc", "auth_url"], Write) => {
            sso_started(core, req)?;
            Ok(Reply::Data(jwt::auth_url(core, m, &req.fields, now).await?))
        }
        (["oidc", "callback"], Read | Write) => {
            issued(jwt::callback(core, m, &req.fields, now).await?, now)
        }
        (["oidc", "device_code"], Write) => {
            sso_started(core, req)?;
            Ok(Reply::Data(
                jwt::device_code(core, m, &req.fields, now).await?,
            ))
        }
        (["oidc", "device_poll"], Write) => {
            issued(jwt::device_poll(core, m, &req.fields, now).await?, now)
        }
        (
            ["config"]
            | ["role" | "login"]
            | ["role", _]
            | ["oidc", "auth_url" | "callback" | "device_code" | "device_poll"],
            _,
        ) => Err(Error::UnsupportedOperation),
        _ => Err(no_route(&req.path)),
    }
}

/// The paths of OIDC / JWT mounts that need no token: the logins.
pub(super) fn mount_path_is_unauthenticated(rest: &str, op: Operation) -> bool {
    matches!(
        (rest, op),
        (
            "login" | "oidc/auth_url" | "oidc/device_code" | "oidc/device_poll",
            Operation::Write
        ) | ("oidc/callback", Operation::Read | Operation::Write)
    )
}
