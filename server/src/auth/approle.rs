//! AppRole (`auth/approle/*`): machines log in with a role ID and a secret
//! ID. Secret IDs are stored only under their keyed hash.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::token;
use super::TokenSettings;
use crate::error::{Error, Result};
use crate::request::Fields;
use crate::state::Core;
use crate::storage::Change;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    pub role_id: String,
    pub bind_secret_id: bool,
    pub secret_id_bound_cidrs: Vec<ipnet::IpNet>,
    pub secret_id_num_uses: i64,
    pub secret_id_ttl: i64,
    #[serde(flatten)]
    pub token: TokenSettings,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SecretId {
    accessor: String,
    creation_time: i64,
    expire_time: Option<i64>,
    /// Uses left; 0 means unlimited.
    num_uses: i64,
    cidr_list: Vec<ipnet::IpNet>,
    metadata: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct Pointer {
    target: String,
}

fn role_key(name: &str) -> String {
    format!("approle/role/{name}")
}
fn role_id_key(role_id: &str) -> String {
    format!("approle/role-id/{}", hex_of(role_id))
}
fn secret_key(role: &str, hash: &str) -> String {
    format!("approle/secret-id/{role}/{hash}")
}
fn secret_accessor_key(role: &str, accessor: &str) -> String {
    format!("approle/secret-accessor/{role}/{accessor}")
}
/// Role IDs are chosen by operators and may hold any text; keys stay clean.
fn hex_of(s: &str) -> String {
    hex::encode(s.as_bytes())
}

pub fn validate_role_name(name: &str) -> Result<String> {
    super::validate_login_name("role name", name)
}

pub async fn read_role(core: &Core, name: &str) -> Result<Option<Role>> {
    core.storage
        .get(&role_key(&validate_role_name(name)?))
        .await
}

pub async fn list_roles(core: &Core) -> Result<Vec<String>> {
    core.storage.list("approle/role/").await
}

pub async fn write_role(core: &Core, name: &str, f: &Fields) -> Result<()> {
    let name = validate_role_name(name)?;
    let existing: Option<Role> = core.storage.get(&role_key(&name)).await?;
    let mut role = existing.clone().unwrap_or_else(|| Role {
        name: name.clone(),
        role_id: uuid::Uuid::new_v4().to_string(),
        bind_secret_id: true,
        secret_id_bound_cidrs: Vec::new(),
        secret_id_num_uses: 0,
        secret_id_ttl: 0,
        token: TokenSettings::default(),
    });
    if let Some(b) = f.bool("bind_secret_id")? {
        role.bind_secret_id = b;
    }
    if let Some(c) = f.cidr_list("secret_id_bound_cidrs")? {
        role.secret_id_bound_cidrs = c;
    }
    if let Some(n) = f.non_negative("secret_id_num_uses")? {
        role.secret_id_num_uses = n;
    }
    if let Some(t) = f.duration("secret_id_ttl")? {
        role.secret_id_ttl = t;
    }
    role.token.update_from(f)?;
    if !role.bind_secret_id
        && role.secret_id_bound_cidrs.is_empty()
        && role.token.token_bound_cidrs.is_empty()
    {
        return Err(Error::invalid(
            "at least one constraint should be enabled on the role (bind_secret_id, secret_id_bound_cidrs or token_bound_cidrs)",
        ));
    }
    let new_role_id = f.str("role_id")?;
    if let Some(id) = new_role_id.filter(|s| !s.is_empty()) {
        role.role_id = id;
    }
    if existing.as_ref().map(|r| &r.role_id) != Some(&role.role_id) {
        let claimed = core
            .storage
            .put_if_absent(
                &role_id_key(&role.role_id),
                &Pointer {
                    target: name.clone(),
                },
            )
            .await?;
        if !claimed {
            return Err(Error::invalid("role_id already in use"));
        }
        if let Some(old) = &existing {
            core.storage.delete(&role_id_key(&old.role_id)).await?;
        }
    }
    core.storage.put(&role_key(&name), &role).await
}

pub fn role_json(role: &Role) -> Value {
    let mut m = Map::new();
    m.insert("bind_secret_id".into(), json!(role.bind_secret_id));
    m.insert(
        "secret_id_bound_cidrs".into(),
        json!(role
            .secret_id_bound_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()),
    );
    m.insert("secret_id_num_uses".into(), json!(role.secret_id_num_uses));
    m.insert("secret_id_ttl".into(), json!(role.secret_id_ttl));
    role.token.to_json(&mut m);
    Value::Object(m)
}

pub async fn delete_role(core: &Core, name: &str) -> Result<()> {
    let name = validate_role_name(name)?;
    if let Some(role) = core.storage.take::<Role>(&role_key(&name)).await? {
        core.storage.delete(&role_id_key(&role.role_id)).await?;
        for k in core
            .storage
            .keys_with_prefix(&format!("approle/secret-id/{name}/"))
            .await?
        {
            core.storage.delete(&k).await?;
        }
        for k in core
            .storage
            .keys_with_prefix(&format!("approle/secret-accessor/{name}/"))
            .await?
        {
            core.storage.delete(&k).await?;
        }
    }
    Ok(())
}

async fn existing_role(core: &Core, name: &str) -> Result<Role> {
    read_role(core, name)
        .await?
        .ok_or_else(|| Error::invalid(format!("role {name:?} does not exist")))
}

pub async fn role_id(core: &Core, name: &str) -> Result<Value> {
    let role = existing_role(core, name).await?;
    Ok(json!({ "role_id": role.role_id }))
}

pub async fn set_role_id(core: &Core, name: &str, f: &Fields) -> Result<()> {
    existing_role(core, name).await?;
    f.required_str("role_id")?;
    write_role(core, name, f).await
}

/// Generates (or, with `custom`, accepts) a secret ID for a role.
pub async fn new_secret_id(
    core: &Core,
    name: &str,
    f: &Fields,
    custom: bool,
    now: i64,
) -> Result<Value> {
    let role = existing_role(core, name).await?;
    let secret = if custom {
        let s = f.required_str("secret_id")?;
        if s.len() < 16 {
            return Err(Error::invalid("secret_id must be at least 16 characters"));
        }
        s
    } else {
        uuid::Uuid::new_v4().to_string()
    };
    let cidrs = f.cidr_list("cidr_list")?.unwrap_or_default();
    // A secret ID may narrow the role's address limits, never widen them.
    if !role.secret_id_bound_cidrs.is_empty()
        && !cidrs
            .iter()
            .all(|c| role.secret_id_bound_cidrs.iter().any(|r| r.contains(c)))
    {
        return Err(Error::invalid(
            "cidr_list must be a subset of the role's secret_id_bound_cidrs",
        ));
    }
    let ttl = match f.duration("ttl")? {
        Some(t) if role.secret_id_ttl > 0 && t > role.secret_id_ttl => {
            return Err(Error::invalid(
                "ttl must not be greater than the role's secret_id_ttl",
            ))
        }
        Some(t) if t > 0 => t,
        _ => role.secret_id_ttl,
    };
    let num_uses = match f.non_negative("num_uses")? {
        Some(n) if role.secret_id_num_uses > 0 && (n == 0 || n > role.secret_id_num_uses) => {
            return Err(Error::invalid(
                "num_uses must not be greater than the role's secret_id_num_uses",
            ))
        }
        Some(n) => n,
        None => role.secret_id_num_uses,
    };
    let entry = SecretId {
        accessor: uuid::Uuid::new_v4().to_string(),
        creation_time: now,
        expire_time: (ttl > 0).then_some(now + ttl),
        num_uses,
        cidr_list: cidrs,
        metadata: f.str_map("metadata")?.unwrap_or_default(),
    };
    let hash = core.hasher.hash(&secret);
    if !core
        .storage
        .put_if_absent(&secret_key(&role.name, &hash), &entry)
        .await?
    {
        return Err(Error::invalid("secret_id already exists"));
    }
    core.storage
        .put(
            &secret_accessor_key(&role.name, &entry.accessor),
            &Pointer { target: hash },
        )
        .await?;
    Ok(json!({
        "secret_id": secret,
        "secret_id_accessor": entry.accessor,
        "secret_id_ttl": ttl,
        "secret_id_num_uses": num_uses,
    }))
}

pub async fn list_secret_accessors(core: &Core, name: &str) -> Result<Vec<String>> {
    let role = existing_role(core, name).await?;
    core.storage
        .list(&format!("approle/secret-accessor/{}/", role.name))
        .await
}

fn secret_json(s: &SecretId) -> Value {
    json!({
        "secret_id_accessor": s.accessor,
        "creation_time": crate::clock::rfc3339(s.creation_time),
        "expiration_time": s.expire_time.map(crate::clock::rfc3339),
        "secret_id_num_uses": s.num_uses,
        "cidr_list": s.cidr_list.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        "metadata": s.metadata,
        "last_updated_time": crate::clock::rfc3339(s.creation_time),
        "secret_id_ttl": s.expire_time.map(|e| e - s.creation_time).unwrap_or(0),
        "token_bound_cidrs": [],
    })
}

pub async fn lookup_secret(core: &Core, name: &str, f: &Fields, now: i64) -> Result<Option<Value>> {
    let role = existing_role(core, name).await?;
    let secret = f.required_str("secret_id")?;
    let key = secret_key(&role.name, &core.hasher.hash(&secret));
    Ok(core
        .storage
        .get::<SecretId>(&key)
        .await?
        .filter(|s| s.expire_time.is_none_or(|e| e > now))
        .map(|s| secret_json(&s)))
}

/// `secret-id-accessor/lookup`: a secret ID's details by its accessor.
pub async fn lookup_secret_accessor(
    core: &Core,
    name: &str,
    f: &Fields,
    now: i64,
) -> Result<Option<Value>> {
    let role = existing_role(core, name).await?;
    let acc = f.required_str("secret_id_accessor")?;
    let Some(p) = core
        .storage
        .get::<Pointer>(&secret_accessor_key(&role.name, &acc))
        .await?
    else {
        return Ok(None);
    };
    Ok(core
        .storage
        .get::<SecretId>(&secret_key(&role.name, &p.target))
        .await?
        .filter(|s| s.expire_time.is_none_or(|e| e > now))
        .map(|s| secret_json(&s)))
}

pub async fn destroy_secret(core: &Core, name: &str, f: &Fields, by_accessor: bool) -> Result<()> {
    let role = existing_role(core, name).await?;
    let hash = if by_accessor {
        let acc = f.required_str("secret_id_accessor")?;
        match core
            .storage
            .take::<Pointer>(&secret_accessor_key(&role.name, &acc))
            .await?
        {
            Some(p) => p.target,
            None => return Ok(()),
        }
    } else {
        core.hasher.hash(&f.required_str("secret_id")?)
    };
    if let Some(s) = core
        .storage
        .take::<SecretId>(&secret_key(&role.name, &hash))
        .await?
    {
        core.storage
            .delete(&secret_accessor_key(&role.name, &s.accessor))
            .await?;
    }
    Ok(())
}

fn ip_allowed(cidrs: &[ipnet::IpNet], ip: Option<IpAddr>) -> bool {
    cidrs.is_empty() || ip.is_some_and(|ip| cidrs.iter().any(|c| c.contains(&ip)))
}

/// `auth/approle/login`: checks the role ID and secret ID, spends one use of
/// the secret ID and issues a token.
pub async fn login(
    core: &Core,
    role_id: &str,
    secret: &str,
    client_ip: Option<IpAddr>,
    now: i64,
) -> Result<token::Issued> {
    let invalid = || Error::invalid("invalid role or secret ID");
    let ptr: Pointer = core
        .storage
        .get(&role_id_key(role_id))
        .await?
        .ok_or_else(invalid)?;
    let role: Role = core
        .storage
        .get(&role_key(&ptr.target))
        .await?
        .ok_or_else(invalid)?;
    if !ip_allowed(&role.secret_id_bound_cidrs, client_ip) {
        return Err(Error::invalid("source address not allowed by the role"));
    }
    if role.bind_secret_id {
        if secret.is_empty() {
            return Err(Error::invalid("missing secret_id"));
        }
        let key = secret_key(&role.name, &core.hasher.hash(secret));
        let s: SecretId = core.storage.get(&key).await?.ok_or_else(invalid)?;
        if s.expire_time.is_some_and(|e| e <= now) {
            core.storage.delete(&key).await?;
            core.storage
                .delete(&secret_accessor_key(&role.name, &s.accessor))
                .await?;
            return Err(invalid());
        }
        if !ip_allowed(&s.cidr_list, client_ip) {
            return Err(Error::invalid(
                "source address not allowed by the secret ID",
            ));
        }
        if s.num_uses > 0 {
            // Spent in storage, not on the copy read above: of any number of
            // concurrent logins, on any server, exactly num_uses succeed.
            let last = core
                .storage
                .update(&key, |mut s: SecretId| {
                    Ok(match s.num_uses {
                        0 => (Change::Keep, false),
                        1 => (Change::Delete, true),
                        n => {
                            s.num_uses = n - 1;
                            (Change::Put(s), false)
                        }
                    })
                })
                .await?
                .ok_or_else(invalid)?;
            if last {
                core.storage
                    .delete(&secret_accessor_key(&role.name, &s.accessor))
                    .await?;
            }
        }
    }
    let spec = role.token.new_token(
        "approle".into(),
        ("role_name", &role.name),
        "auth/approle/login".into(),
        super::methods::limits(core, super::methods::Method::Approle).await?,
    );
    token::create_for_login(core, spec, now).await
}
