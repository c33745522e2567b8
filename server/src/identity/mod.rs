//! Identity (`identity/*`): an entity per person, with an alias per login
//! mount they logged in through, and external groups whose aliases name a
//! group of the identity provider (a `groups_claim` value) and carry
//! policies. A subset of Vault's identity store: see README "Identity".

pub mod entity;
pub mod template;

pub use entity::{Alias, Entity};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::request::Fields;
use crate::state::Core;
use crate::storage::Change;

fn entity_key(id: &str) -> String {
    format!("identity/entity/id/{id}")
}
/// Names come from identity providers' claims: hex, so that any text
/// makes one key.
fn entity_name_key(name: &str) -> String {
    format!("identity/entity/name/{}", hex::encode(name))
}
fn alias_key(accessor: &str, name: &str) -> String {
    format!("identity/entity-alias/{accessor}/{}", hex::encode(name))
}

/// The login mount an alias belongs to.
#[derive(Clone, Copy, Debug)]
pub struct LoginMount<'a> {
    pub accessor: &'a str,
    pub path: &'a str,
    pub kind: &'a str,
}

/// The entity of whoever logged in as `name` at `mount`: found by its
/// alias, or created on the first login (named by [`new_entity_name`]).
/// The alias's metadata is brought up to date from this login.
pub async fn entity_for_login(
    core: &Core,
    mount: LoginMount<'_>,
    name: &str,
    metadata: &BTreeMap<String, String>,
    now: i64,
) -> Result<Entity> {
    let akey = alias_key(mount.accessor, name);
    let fresh_id = uuid::Uuid::new_v4().to_string();
    // Two first logins at once agree on one entity: the alias is claimed
    // first, and the loser uses the winner's.
    let claimed = core.storage.put_if_absent(&akey, &fresh_id).await?;
    let id: String = if claimed {
        fresh_id.clone()
    } else {
        core.storage
            .get(&akey)
            .await?
            .ok_or_else(|| Error::internal("entity alias vanished"))?
    };
    if claimed {
        let entity_name = new_entity_name(core, &id).await?;
        let entity = Entity {
            id: id.clone(),
            name: entity_name,
            metadata: BTreeMap::new(),
            aliases: vec![Alias {
                id: uuid::Uuid::new_v4().to_string(),
                mount_accessor: mount.accessor.to_string(),
                mount_path: mount.path.to_string(),
                mount_type: mount.kind.to_string(),
                name: name.to_string(),
                metadata: metadata.clone(),
                creation_time: now,
            }],
            policies: vec![],
            creation_time: now,
            last_update_time: now,
        };
        core.storage.put(&entity_key(&id), &entity).await?;
        return Ok(entity);
    }
    let updated = core
        .storage
        .update(&entity_key(&id), |mut e: Entity| {
            match e
                .aliases
                .iter_mut()
                .find(|a| a.mount_accessor == mount.accessor)
            {
                Some(a) if a.metadata == *metadata => return Ok((Change::Keep, e)),
                Some(a) => a.metadata = metadata.clone(),
                None => e.aliases.push(Alias {
                    id: uuid::Uuid::new_v4().to_string(),
                    mount_accessor: mount.accessor.to_string(),
                    mount_path: mount.path.to_string(),
                    mount_type: mount.kind.to_string(),
                    name: name.to_string(),
                    metadata: metadata.clone(),
                    creation_time: now,
                }),
            }
            e.last_update_time = now;
            Ok((Change::Put(e.clone()), e))
        })
        .await?;
    updated.ok_or_else(|| {
        Error::internal(format!(
            "the entity of {name:?} at {} is missing",
            mount.path
        ))
    })
}

/// A new entity's name: `entity_<the first 8 hex digits of its id>`, as
/// Vault names the entities it makes (the whole id in the rare case that
/// is taken). Never the login name: the users of every login mount choose
/// theirs (a CI job's `actor`, a second provider's claim), so a name taken
/// by whoever logged in first would make their certificates someone else's
/// through `{{identity.entity.name}}`. An administrator names an entity by
/// writing `name` to `identity/entity/id/<id>`.
async fn new_entity_name(core: &Core, id: &str) -> Result<String> {
    let short = format!("entity_{}", id.get(..8).unwrap_or(id));
    if core
        .storage
        .put_if_absent(&entity_name_key(&short), &id)
        .await?
    {
        return Ok(short);
    }
    let long = format!("entity_{id}");
    if core
        .storage
        .put_if_absent(&entity_name_key(&long), &id)
        .await?
    {
        return Ok(long);
    }
    Err(Error::internal("the new entity's name is taken"))
}

/// An entity name an administrator gives: text a person can read and a
/// principal can hold.
fn checked_entity_name(name: &str) -> Result<&str> {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "entity name {name:?} must be 1 to 256 characters without control characters"
        )));
    }
    Ok(name)
}

pub async fn entity(core: &Core, id: &str) -> Result<Option<Entity>> {
    core.storage.get(&entity_key(id)).await
}

pub async fn entity_by_name(core: &Core, name: &str) -> Result<Option<Entity>> {
    match core.storage.get::<String>(&entity_name_key(name)).await? {
        Some(id) => entity(core, &id).await,
        None => Ok(None),
    }
}

/// `identity/entity/id/<id>` (write): the entity's `name`, `metadata` and
/// `policies` (what the identity templates and an admin use). A name is
/// the entity's only once no other entity has it: claimed first, then the
/// old one let go.
pub async fn update_entity(core: &Core, id: &str, f: &Fields, now: i64) -> Result<Value> {
    let metadata = f.str_map("metadata")?;
    let policies = match f.str_list("policies")? {
        Some(p) => Some(crate::policies::normalize_login_names(p)?),
        None => None,
    };
    let name = match f.str("name")? {
        Some(n) => Some(checked_entity_name(&n)?.to_string()),
        None => None,
    };
    let Some(before) = entity(core, id).await? else {
        return Err(Error::NotFound(format!("no entity {id:?}")));
    };
    let rename = name.filter(|n| *n != before.name);
    if let Some(n) = &rename {
        if !core.storage.put_if_absent(&entity_name_key(n), &id).await? {
            return Err(Error::invalid(format!(
                "entity name {n:?} is another entity's"
            )));
        }
    }
    let updated = core
        .storage
        .update(&entity_key(id), |mut e: Entity| {
            let old = rename
                .as_ref()
                .map(|n| std::mem::replace(&mut e.name, n.clone()));
            if let Some(m) = &metadata {
                e.metadata = m.clone();
            }
            if let Some(p) = &policies {
                e.policies = p.clone();
            }
            e.last_update_time = now;
            Ok((Change::Put(e.clone()), (e, old)))
        })
        .await;
    let released = match &updated {
        // The entity went meanwhile, or the write failed: the new name
        // is let go again.
        Ok(None) | Err(_) => rename.clone(),
        Ok(Some((_, old))) => old.clone(),
    };
    if let Some(n) = released {
        if core
            .storage
            .get::<String>(&entity_name_key(&n))
            .await?
            .as_deref()
            == Some(id)
        {
            core.storage.delete(&entity_name_key(&n)).await?;
        }
    }
    updated?
        .map(|(e, _)| json!({ "id": e.id, "name": e.name }))
        .ok_or_else(|| Error::NotFound(format!("no entity with id {id:?}")))
}

pub async fn list_entity_ids(core: &Core) -> Result<Vec<String>> {
    core.storage.list("identity/entity/id/").await
}

// ---- external groups ------------------------------------------------------

/// An external group: its members are whoever the identity provider says
/// is in the group its alias names, at each login.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub policies: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub alias: Option<GroupAlias>,
    #[serde(default)]
    pub creation_time: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GroupAlias {
    pub id: String,
    pub name: String,
    pub mount_accessor: String,
}

impl Group {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "type": "external",
            "policies": self.policies,
            "metadata": self.metadata,
            "member_entity_ids": [],
            "member_group_ids": [],
            "creation_time": crate::clock::rfc3339(self.creation_time),
            "alias": match &self.alias {
                Some(a) => json!({
                    "id": a.id,
                    "name": a.name,
                    "mount_accessor": a.mount_accessor,
                    "canonical_id": self.id,
                }),
                None => json!({}),
            },
        })
    }
}

fn group_key(id: &str) -> String {
    format!("identity/group/id/{id}")
}
fn group_name_key(name: &str) -> String {
    format!("identity/group/name/{name}")
}
fn group_alias_key(accessor: &str, name: &str) -> String {
    format!("identity/group-alias/{accessor}/{}", hex::encode(name))
}
fn group_alias_id_key(id: &str) -> String {
    format!("identity/group-alias/id/{id}")
}

/// `identity/group` (write): creates the group, or updates the one with
/// this name. Only `type=external` groups are kept: gatepass has no
/// internal (member list) groups.
pub async fn write_group(core: &Core, f: &Fields, now: i64) -> Result<Value> {
    let name = f.required_str("name")?;
    crate::path::validate_name("group name", &name)?;
    match f.str("type")?.as_deref() {
        Some("external") => {}
        None | Some("") | Some("internal") => {
            return Err(Error::invalid(
                "only external groups are supported (type=external): their members come \
                 from the identity provider's groups through a group alias",
            ))
        }
        Some(other) => {
            return Err(Error::invalid(format!(
                "group type {other:?} is not valid: use external"
            )))
        }
    }
    let policies =
        crate::policies::normalize_login_names(f.str_list("policies")?.unwrap_or_default())?;
    let metadata = f.str_map("metadata")?.unwrap_or_default();
    let id = uuid::Uuid::new_v4().to_string();
    if core
        .storage
        .put_if_absent(&group_name_key(&name), &id)
        .await?
    {
        let g = Group {
            id: id.clone(),
            name: name.clone(),
            policies,
            metadata,
            alias: None,
            creation_time: now,
        };
        core.storage.put(&group_key(&id), &g).await?;
        return Ok(json!({ "id": id, "name": name }));
    }
    let id: String = core
        .storage
        .get(&group_name_key(&name))
        .await?
        .ok_or_else(|| Error::internal("group name vanished"))?;
    core.storage
        .update(&group_key(&id), |mut g: Group| {
            g.policies = policies.clone();
            g.metadata = metadata.clone();
            Ok((Change::Put(g), ()))
        })
        .await?;
    Ok(json!({ "id": id, "name": name }))
}

pub async fn group(core: &Core, id: &str) -> Result<Option<Group>> {
    core.storage.get(&group_key(id)).await
}

pub async fn group_by_name(core: &Core, name: &str) -> Result<Option<Group>> {
    match core.storage.get::<String>(&group_name_key(name)).await? {
        Some(id) => group(core, &id).await,
        None => Ok(None),
    }
}

pub async fn delete_group(core: &Core, id: &str) -> Result<()> {
    if let Some(g) = core.storage.take::<Group>(&group_key(id)).await? {
        core.storage.delete(&group_name_key(&g.name)).await?;
        if let Some(a) = g.alias {
            core.storage
                .delete(&group_alias_key(&a.mount_accessor, &a.name))
                .await?;
            core.storage.delete(&group_alias_id_key(&a.id)).await?;
        }
    }
    Ok(())
}

/// `identity/group-alias` (write): ties an external group to the group of
/// that name in the logins of the mount with `mount_accessor` (which the
/// caller checked exists).
pub async fn write_group_alias(core: &Core, f: &Fields) -> Result<Value> {
    let name = f.required_str("name")?;
    let accessor = f.required_str("mount_accessor")?;
    let group_id = f.required_str("canonical_id")?;
    let id = uuid::Uuid::new_v4().to_string();
    if !core
        .storage
        .put_if_absent(&group_alias_key(&accessor, &name), &group_id)
        .await?
    {
        return Err(Error::invalid(format!(
            "group alias {name:?} at {accessor:?} already exists"
        )));
    }
    let alias = GroupAlias {
        id: id.clone(),
        name,
        mount_accessor: accessor,
    };
    let set = core
        .storage
        .update(&group_key(&group_id), |mut g: Group| {
            let old = g.alias.replace(alias.clone());
            Ok((Change::Put(g), old))
        })
        .await?;
    let Some(old) = set else {
        core.storage
            .delete(&group_alias_key(&alias.mount_accessor, &alias.name))
            .await?;
        return Err(Error::invalid(format!("no group with id {group_id:?}")));
    };
    if let Some(old) = old {
        core.storage
            .delete(&group_alias_key(&old.mount_accessor, &old.name))
            .await?;
        core.storage.delete(&group_alias_id_key(&old.id)).await?;
    }
    core.storage
        .put(&group_alias_id_key(&id), &group_id)
        .await?;
    Ok(json!({ "id": id, "canonical_id": group_id }))
}

/// The policies of the external groups that the identity provider's
/// `groups` (at the mount with `accessor`) are aliased to.
pub async fn group_policies(core: &Core, accessor: &str, groups: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for g in groups {
        let Some(id) = core
            .storage
            .get::<String>(&group_alias_key(accessor, g))
            .await?
        else {
            continue;
        };
        if let Some(group) = group(core, &id).await? {
            out.extend(group.policies);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}
