//! Identity templates: the one place where `{{identity.…}}` text is read
//! and filled in for a caller, for policies' parameter constraints and SSH
//! roles' `allowed_users_template` / `default_user_template`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::entity::Entity;

/// Text with identity templates:
/// - `{{identity.entity.id}}`, `{{identity.entity.name}}`,
///   `{{identity.entity.metadata.<key>}}`: the caller's entity (people who
///   logged in through an OIDC or JWT mount);
/// - `{{identity.entity.aliases.<mount accessor>.name}}`: the entity's name
///   at that login mount (its `user_claim` value);
/// - `{{token_display_name}}`: the token's display name.
///
/// Tokens without an entity (userpass, AppRole) fill the entity's name and
/// alias names with their login name (the userpass user, the AppRole role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    EntityName,
    EntityId,
    /// The alias at the login mount with this accessor.
    AliasName(String),
    Metadata(String),
    DisplayName,
}

impl Template {
    /// Plain text, without templates.
    pub fn text(text: String) -> Template {
        Template(vec![Piece::Text(text)])
    }

    pub fn parse(text: &str) -> std::result::Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let end = rest[start..]
                .find("}}")
                .map(|i| start + i)
                .ok_or_else(|| format!("{text:?}: unclosed \"{{{{\""))?;
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_owned()));
            }
            let name = rest[start + 2..end].trim();
            let alias = name
                .strip_prefix("identity.entity.aliases.")
                .and_then(|n| n.strip_suffix(".name"))
                .filter(|accessor| !accessor.is_empty() && !accessor.contains('.'));
            let metadata = name
                .strip_prefix("identity.entity.metadata.")
                .filter(|k| !k.is_empty());
            pieces.push(match (name, alias, metadata) {
                ("identity.entity.name", _, _) => Piece::EntityName,
                ("identity.entity.id", _, _) => Piece::EntityId,
                ("token_display_name", _, _) => Piece::DisplayName,
                (_, Some(accessor), _) => Piece::AliasName(accessor.to_owned()),
                (_, _, Some(key)) => Piece::Metadata(key.to_owned()),
                _ => {
                    return Err(format!(
                        "{text:?}: unsupported template {{{{{name}}}}} (gatepass knows \
                         identity.entity.id, identity.entity.name, \
                         identity.entity.metadata.<key>, \
                         identity.entity.aliases.<mount accessor>.name and token_display_name)"
                    ))
                }
            });
            rest = &rest[end + 2..];
        }
        if !rest.is_empty() || pieces.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Template(pieces))
    }

    /// The text for this caller; None when a template names something the
    /// caller does not have (a token not from a login has no login name, a
    /// person has no alias at another mount), or fills in as empty.
    pub fn fill(&self, who: &Identity) -> Option<Cow<'_, str>> {
        if let [Piece::Text(t)] = self.0.as_slice() {
            return Some(Cow::Borrowed(t));
        }
        let mut out = String::new();
        for piece in &self.0 {
            let part: Option<&str> = match piece {
                Piece::Text(t) => Some(t),
                Piece::DisplayName => Some(who.display_name),
                Piece::EntityName => match who.entity {
                    Some(e) => Some(&e.name),
                    None => who.login,
                },
                Piece::EntityId => who.entity.map(|e| e.id.as_str()),
                Piece::AliasName(accessor) => match who.entity {
                    Some(e) => e.alias_name(accessor),
                    None => who.login,
                },
                Piece::Metadata(key) => who
                    .entity
                    .and_then(|e| e.metadata.get(key))
                    .map(String::as_str),
            };
            match (piece, part) {
                (Piece::Text(_), Some(t)) => out.push_str(t),
                (_, Some(t)) if !t.is_empty() => out.push_str(t),
                _ => return None,
            }
        }
        Some(Cow::Owned(out))
    }
}

/// Fills in `text` for this caller in one step; None when it has an
/// unknown template, or one the caller cannot fill (the entry then allows
/// nothing), or fills in as empty.
pub fn expand(text: &str, who: &Identity) -> Option<String> {
    let t = Template::parse(text).ok()?;
    let out = t.fill(who)?.into_owned();
    (!out.is_empty()).then_some(out)
}

/// Who is asking, for identity templates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity<'a> {
    pub display_name: &'a str,
    /// The login name: the userpass user or AppRole role the token was
    /// issued for (the server sets these token metadata at login; a token
    /// creator cannot).
    pub login: Option<&'a str>,
    /// The person's entity, for tokens from a login that has one.
    pub entity: Option<&'a Entity>,
}

impl<'a> Identity<'a> {
    /// From a token's display name and metadata, by the rule the SSH
    /// engine's templates use.
    pub fn of_token(display_name: &'a str, meta: &'a BTreeMap<String, String>) -> Identity<'a> {
        Identity {
            display_name,
            login: meta
                .get("username")
                .or_else(|| meta.get("role_name"))
                .map(String::as_str),
            entity: None,
        }
    }

    pub fn with_entity(self, entity: Option<&'a Entity>) -> Identity<'a> {
        Identity { entity, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_templates() {
        let alice = Entity {
            id: "e-1".into(),
            name: "alice".into(),
            metadata: BTreeMap::from([("team".to_string(), "ops".to_string())]),
            aliases: vec![super::super::entity::Alias {
                id: "a-1".into(),
                mount_accessor: "auth_oidc_1".into(),
                mount_path: "oidc".into(),
                mount_type: "oidc".into(),
                name: "alice@example.com".into(),
                metadata: BTreeMap::new(),
                creation_time: 0,
            }],
            ..Entity::default()
        };
        let meta = BTreeMap::new();
        let who = Identity::of_token("oidc-alice", &meta).with_entity(Some(&alice));
        let e = |t: &str| expand(t, &who);
        assert_eq!(e("{{identity.entity.name}}").as_deref(), Some("alice"));
        assert_eq!(e("{{identity.entity.id}}").as_deref(), Some("e-1"));
        assert_eq!(
            e("u-{{identity.entity.metadata.team}}").as_deref(),
            Some("u-ops")
        );
        assert_eq!(
            e("{{identity.entity.aliases.auth_oidc_1.name}}").as_deref(),
            Some("alice@example.com")
        );
        // No alias at another mount, no such metadata: nothing.
        assert_eq!(e("{{identity.entity.aliases.auth_oidc_2.name}}"), None);
        assert_eq!(e("{{identity.entity.metadata.nope}}"), None);
        assert_eq!(e("{{unknown}}"), None);
        // A token without an entity has no entity id.
        let plain = Identity::of_token("token", &meta);
        assert_eq!(expand("{{identity.entity.id}}", &plain), None);
    }
}
