//! The entity of a person: what identity templates are filled from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Entity {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub aliases: Vec<Alias>,
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub creation_time: i64,
    #[serde(default)]
    pub last_update_time: i64,
}

/// The person's name at one login mount.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Alias {
    pub id: String,
    pub mount_accessor: String,
    pub mount_path: String,
    pub mount_type: String,
    pub name: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub creation_time: i64,
}

impl Entity {
    pub fn alias_name(&self, accessor: &str) -> Option<&str> {
        self.aliases
            .iter()
            .find(|a| a.mount_accessor == accessor)
            .map(|a| a.name.as_str())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "metadata": self.metadata,
            "policies": self.policies,
            "disabled": false,
            "creation_time": crate::clock::rfc3339(self.creation_time),
            "last_update_time": crate::clock::rfc3339(self.last_update_time),
            "aliases": self.aliases.iter().map(|a| json!({
                "id": a.id,
                "canonical_id": self.id,
                "mount_accessor": a.mount_accessor,
                "mount_path": format!("auth/{}/", a.mount_path),
                "mount_type": a.mount_type,
                "name": a.name,
                "metadata": a.metadata,
                "creation_time": crate::clock::rfc3339(a.creation_time),
            })).collect::<Vec<_>>(),
        })
    }
}
