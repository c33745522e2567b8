//! Userpass (`auth/userpass/*`): people log in with a name and a password,
//! kept as an Argon2id hash.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::token;
use super::TokenSettings;
use crate::error::{Error, Result};
use crate::request::Fields;
use crate::state::Core;
use crate::storage::Change;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// Made when the user is created (a random UUID) and kept by updates:
    /// a user deleted and made again under the same name has another.
    /// Empty for users made before it was kept.
    #[serde(default)]
    pub id: String,
    pub password_hash: String,
    #[serde(flatten)]
    pub token: TokenSettings,
}

fn key(name: &str) -> String {
    format!("userpass/user/{name}")
}

/// Usernames are case-insensitive, as in Vault.
pub fn validate_username(name: &str) -> Result<String> {
    super::validate_login_name("username", name)
}

async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::thread_rng());
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::internal(format!("password hashing failed: {e}")))
    })
    .await
    .map_err(|e| Error::internal(e.to_string()))?
}

async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

fn check_password(p: &str) -> Result<()> {
    if p.is_empty() {
        return Err(Error::invalid("missing password"));
    }
    if p.len() > 1024 {
        return Err(Error::invalid("password is longer than 1024 bytes"));
    }
    Ok(())
}

pub async fn write_user(core: &Core, name: &str, f: &Fields) -> Result<()> {
    let name = validate_username(name)?;
    let password = f.str("password")?;
    let existing = core.storage.get::<User>(&key(&name)).await?;
    let fresh = || User {
        name: name.clone(),
        id: uuid::Uuid::new_v4().to_string(),
        password_hash: String::new(),
        token: TokenSettings::default(),
    };
    // Check every field before the (slow) password hash.
    let mut checked = match (&existing, &password) {
        (Some(u), _) => u.clone(),
        (None, Some(_)) => fresh(),
        (None, None) => return Err(Error::invalid("missing password")),
    };
    checked.token.update_from(f)?;
    let hash = match password {
        Some(p) => {
            check_password(&p)?;
            Some(hash_password(p).await?)
        }
        None => None,
    };
    if existing.is_some() {
        // An update: changed in storage, so that a user deleted meanwhile
        // is not brought back by a write that only meant to change it.
        let updated = core
            .storage
            .update(&key(&name), |mut u: User| {
                u.token.update_from(f)?;
                if let Some(h) = &hash {
                    u.password_hash = h.clone();
                }
                Ok((Change::Put(u), ()))
            })
            .await?;
        if updated.is_some() {
            return Ok(());
        }
        if hash.is_none() {
            return Err(Error::invalid(format!("user {name:?} does not exist")));
        }
    }
    // A new user (or one deleted meanwhile, written again with a password:
    // a create, as it would have been a moment later).
    let mut user = fresh();
    user.token.update_from(f)?;
    user.password_hash = hash.unwrap_or_default();
    core.storage.put(&key(&name), &user).await
}

async fn existing_user(core: &Core, name: &str) -> Result<String> {
    let name = validate_username(name)?;
    if core.storage.get::<User>(&key(&name)).await?.is_none() {
        return Err(no_user(&name));
    }
    Ok(name)
}

fn no_user(name: &str) -> Error {
    Error::invalid(format!("user {name:?} does not exist"))
}

/// Changes an existing user in storage; a user deleted meanwhile stays
/// deleted (the change fails) rather than being written back.
async fn change_user(
    core: &Core,
    name: &str,
    mut change: impl FnMut(&mut User) -> Result<()>,
) -> Result<()> {
    core.storage
        .update(&key(name), |mut u: User| {
            change(&mut u)?;
            Ok((Change::Put(u), ()))
        })
        .await?
        .ok_or_else(|| no_user(name))
}

pub async fn set_password(core: &Core, name: &str, f: &Fields) -> Result<()> {
    let name = existing_user(core, name).await?;
    let p = f.required_str("password")?;
    check_password(&p)?;
    let hash = hash_password(p).await?;
    change_user(core, &name, |u| {
        u.password_hash = hash.clone();
        Ok(())
    })
    .await
}

pub async fn set_policies(core: &Core, name: &str, f: &Fields) -> Result<()> {
    let name = existing_user(core, name).await?;
    change_user(core, &name, |u| u.token.update_from(f)).await
}

pub async fn read_user(core: &Core, name: &str) -> Result<Option<Value>> {
    let name = validate_username(name)?;
    Ok(core.storage.get::<User>(&key(&name)).await?.map(|u| {
        let mut m = Map::new();
        u.token.to_json(&mut m);
        Value::Object(m)
    }))
}

pub async fn delete_user(core: &Core, name: &str) -> Result<()> {
    core.storage.delete(&key(&validate_username(name)?)).await?;
    Ok(())
}

pub async fn list_users(core: &Core) -> Result<Vec<String>> {
    core.storage.list("userpass/user/").await
}

/// `auth/userpass/login/<name>`.
pub async fn login(core: &Core, name: &str, f: &Fields, now: i64) -> Result<token::Issued> {
    let invalid = || Error::invalid("invalid username or password");
    let name = validate_username(name).map_err(|_| invalid())?;
    let password = f.required_str("password")?;
    let user: Option<User> = core.storage.get(&key(&name)).await?;
    // Unknown users cost the same work as known ones, so timing does not
    // tell which names exist.
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(dummy_hash);
    let ok = verify_password(password, hash).await;
    let user = match (ok, user) {
        (true, Some(u)) => u,
        _ => return Err(invalid()),
    };
    let mut spec = user.token.new_token(
        format!("userpass-{}", user.name),
        ("username", &user.name),
        format!("auth/userpass/login/{}", user.name),
        super::methods::limits(core, super::methods::Method::Userpass).await?,
    );
    let id = match user.id.as_str() {
        "" => assign_id(core, &user.name).await?,
        id => id.to_string(),
    };
    spec.login_user = Some(format!("{}/{id}", user.name));
    token::create_for_login(core, spec, now).await
}

/// Gives a user made before users had an id one, at their first login
/// since; two logins at once agree on the first written.
async fn assign_id(core: &Core, name: &str) -> Result<String> {
    core.storage
        .update(&key(name), |mut u: User| {
            if !u.id.is_empty() {
                return Ok((Change::Keep, u.id));
            }
            u.id = uuid::Uuid::new_v4().to_string();
            let id = u.id.clone();
            Ok((Change::Put(u), id))
        })
        .await?
        .ok_or_else(|| Error::invalid("invalid username or password"))
}

/// An Argon2id hash of a random string nobody knows, made once.
fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let salt = SaltString::generate(&mut rand::thread_rng());
            Argon2::default()
                .hash_password(super::random_text(32).as_bytes(), &salt)
                .map(|h| h.to_string())
                .unwrap_or_default()
        })
        .clone()
}
