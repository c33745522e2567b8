//! Roles of an ssh mount, with Vault's fields. A role says what kind of
//! credential it gives (`key_type`: `ca`, `otp`, `dynamic`) and its limits.
//! Writing a role replaces it whole, as in Vault.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::principal::{
    check_option, check_option_name, check_option_value, critical_option_signable,
    unknown_critical_option, OptionKind, Principal,
};
use crate::error::{Error, Result};
use crate::mounts::Mount;
use crate::request::Fields;
use crate::state::Core;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Ca,
    Otp,
    Dynamic,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ca => "ca",
            KeyType::Otp => "otp",
            KeyType::Dynamic => "dynamic",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    pub key_type: KeyType,
    pub default_user: String,
    pub default_user_template: bool,
    pub allowed_users: Vec<String>,
    pub allowed_users_template: bool,
    pub allowed_domains: Vec<String>,
    pub allow_bare_domains: bool,
    pub allow_subdomains: bool,
    pub ttl: i64,
    pub max_ttl: i64,
    pub not_before_duration: i64,
    pub allowed_extensions: Vec<String>,
    pub default_extensions: BTreeMap<String, String>,
    pub allowed_critical_options: Vec<String>,
    pub default_critical_options: BTreeMap<String, String>,
    pub allow_user_certificates: bool,
    pub allow_host_certificates: bool,
    pub allow_user_key_ids: bool,
    pub key_id_format: String,
    /// Key type → allowed sizes (one value for RSA is a minimum, as in Vault).
    pub allowed_user_key_lengths: BTreeMap<String, Vec<u32>>,
    pub algorithm_signer: String,
    pub allow_empty_principals: bool,
    pub issuer_ref: String,
    /// gatepass: CIDRs a `source-address` critical option must stay inside.
    pub allowed_source_addresses: Vec<ipnet::IpNet>,
    /// gatepass: the only values a `force-command` critical option may take.
    pub allowed_force_commands: Vec<String>,
    // OTP and dynamic roles.
    pub cidr_list: Vec<ipnet::IpNet>,
    pub exclude_cidr_list: Vec<ipnet::IpNet>,
    pub port: u16,
    pub key_bits: i64,
    pub key_option_specs: String,
    /// Accepted for compatibility with Vault, unused: hostd installs keys.
    pub admin_user: String,
    pub key: String,
    pub install_script: String,
}

fn key(m: &Mount, name: &str) -> String {
    format!("{}role/{name}", m.data_prefix())
}

pub fn validate_name(name: &str) -> Result<()> {
    crate::path::validate_name("role name", name)
}

/// The issuer a role signs with: a name, an ID or `default` (when empty).
/// Names are path segments (`issuer/<ref>`), so `.` and `..` cannot name one.
fn issuer_ref(f: &Fields) -> Result<String> {
    match f.str("issuer_ref")?.filter(|s| !s.is_empty()) {
        None => Ok("default".into()),
        Some(r) if crate::path::is_dot_or_empty(&r) => Err(Error::invalid(format!(
            "issuer_ref {r:?} cannot name an issuer"
        ))),
        Some(r) => Ok(r),
    }
}

/// A user or host name list entry: a principal, `*`, or (hosts) `*.domain`.
fn check_pattern(field: &str, s: &str) -> Result<()> {
    if s == "*" || s.contains("{{") {
        return Ok(());
    }
    let body = s.strip_prefix("*.").unwrap_or(s);
    Principal::new(body)
        .map(|_| ())
        .map_err(|e| Error::invalid(format!("{field}: {e}")))
}

fn option_map(f: &Fields, field: &str, kind: OptionKind) -> Result<BTreeMap<String, String>> {
    let m = f.str_map(field)?.unwrap_or_default();
    for (k, v) in &m {
        check_option(kind, field, k, v)?;
    }
    Ok(m)
}

fn key_lengths(f: &Fields) -> Result<BTreeMap<String, Vec<u32>>> {
    let raw = match f.value("allowed_user_key_lengths") {
        None => return Ok(BTreeMap::new()),
        Some(Value::String(s)) if s.is_empty() => return Ok(BTreeMap::new()),
        Some(Value::String(s)) => serde_json::from_str::<Value>(&s).map_err(|_| {
            Error::invalid("allowed_user_key_lengths: expected a map of key type to sizes")
        })?,
        Some(v) => v.clone(),
    };
    let obj = raw.as_object().ok_or_else(|| {
        Error::invalid("allowed_user_key_lengths: expected a map of key type to sizes")
    })?;
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let kt = normalize_key_type(k).ok_or_else(|| {
            Error::invalid(format!("allowed_user_key_lengths: unknown key type {k:?}"))
        })?;
        let sizes: Vec<u32> = match v {
            Value::Number(n) => vec![n.as_u64().unwrap_or(0) as u32],
            Value::String(s) => vec![s.parse().map_err(|_| {
                Error::invalid(format!("allowed_user_key_lengths: {s:?} is not a size"))
            })?],
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_u64().map(|n| n as u32).ok_or_else(|| {
                        Error::invalid("allowed_user_key_lengths: sizes must be numbers")
                    })
                })
                .collect::<Result<_>>()?,
            _ => {
                return Err(Error::invalid(
                    "allowed_user_key_lengths: sizes must be numbers",
                ))
            }
        };
        out.insert(kt.to_string(), sizes);
    }
    Ok(out)
}

/// Vault accepts both short names and OpenSSH algorithm names for key types.
pub fn normalize_key_type(k: &str) -> Option<&'static str> {
    Some(match k {
        "rsa" | "ssh-rsa" => "rsa",
        "ed25519" | "ssh-ed25519" => "ed25519",
        "ec" | "ecdsa" | "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" => {
            "ec"
        }
        "sk-ssh-ed25519@openssh.com" => "sk-ed25519",
        "sk-ecdsa-sha2-nistp256@openssh.com" => "sk-ec",
        _ => return None,
    })
}

/// Builds a role from a write request (replacing any previous one).
pub fn from_fields(name: &str, f: &Fields) -> Result<Role> {
    validate_name(name)?;
    let key_type = match f.str("key_type")?.as_deref() {
        Some("ca") => KeyType::Ca,
        Some("otp") => KeyType::Otp,
        Some("dynamic") => KeyType::Dynamic,
        Some(other) => {
            return Err(Error::invalid(format!(
                "key_type {other:?} is not valid: use ca, otp or dynamic"
            )))
        }
        None => return Err(Error::invalid("missing key_type (ca, otp or dynamic)")),
    };
    let list = |field: &str| -> Result<Vec<String>> { Ok(f.str_list(field)?.unwrap_or_default()) };
    let default_user = f.str("default_user")?.unwrap_or_default();
    let default_user_template = f.bool("default_user_template")?.unwrap_or(false);
    if !default_user.is_empty() && !default_user_template {
        Principal::new(&default_user).map_err(|e| Error::invalid(format!("default_user: {e}")))?;
    }
    let allowed_users = list("allowed_users")?;
    for u in &allowed_users {
        check_pattern("allowed_users", u)?;
    }
    let allowed_domains = list("allowed_domains")?;
    for d in &allowed_domains {
        check_pattern("allowed_domains", d)?;
    }
    let ttl = f.duration("ttl")?.unwrap_or(0);
    let max_ttl = f.duration("max_ttl")?.unwrap_or(0);
    if max_ttl > 0 && ttl > max_ttl {
        return Err(Error::invalid("ttl cannot be greater than max_ttl"));
    }
    let allowed_extensions = list("allowed_extensions")?;
    let allowed_critical_options = list("allowed_critical_options")?;
    for o in allowed_extensions.iter().chain(&allowed_critical_options) {
        if o != "*" {
            check_option_name("allowed options", o)?;
        }
    }
    let default_critical_options = option_map(f, "default_critical_options", OptionKind::Critical)?;
    if let Some(k) = default_critical_options
        .keys()
        .find(|k| !critical_option_signable(&allowed_critical_options, k))
    {
        return Err(unknown_critical_option("default_critical_options", k));
    }
    let algorithm_signer = f
        .str("algorithm_signer")?
        .unwrap_or_else(|| "default".into());
    match algorithm_signer.as_str() {
        "" | "default" | "rsa-sha2-256" | "rsa-sha2-512" => {}
        "ssh-rsa" => {
            return Err(Error::invalid(
                "algorithm_signer ssh-rsa (SHA-1) is refused by OpenSSH 8.8 and later; use rsa-sha2-256 or rsa-sha2-512",
            ))
        }
        other => return Err(Error::invalid(format!("algorithm_signer {other:?} is not valid: use default, rsa-sha2-256 or rsa-sha2-512"))),
    }
    let port = match f.int("port")? {
        None => 22,
        Some(p) if (1..=65535).contains(&p) => p as u16,
        Some(p) => return Err(Error::invalid(format!("port {p} is not a valid TCP port"))),
    };
    let key_bits = f.non_negative("key_bits")?.unwrap_or(0);
    let key_option_specs = f.str("key_option_specs")?.unwrap_or_default();
    // These options go into authorized_keys lines on hosts: one line, no
    // control characters, so they can never add a second key or line.
    if key_option_specs.len() > 1024 || key_option_specs.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            "key_option_specs may not contain newlines or control characters",
        ));
    }
    let allowed_force_commands = list("allowed_force_commands")?;
    for c in &allowed_force_commands {
        check_option_value("allowed_force_commands", "force-command", c)?;
    }
    let role = Role {
        name: name.to_string(),
        key_type,
        default_user,
        default_user_template,
        allowed_users,
        allowed_users_template: f.bool("allowed_users_template")?.unwrap_or(false),
        allowed_domains,
        allow_bare_domains: f.bool("allow_bare_domains")?.unwrap_or(false),
        allow_subdomains: f.bool("allow_subdomains")?.unwrap_or(false),
        ttl,
        max_ttl,
        not_before_duration: f.duration("not_before_duration")?.unwrap_or(30),
        allowed_extensions,
        default_extensions: option_map(f, "default_extensions", OptionKind::Extension)?,
        allowed_critical_options,
        default_critical_options,
        allow_user_certificates: f.bool("allow_user_certificates")?.unwrap_or(false),
        allow_host_certificates: f.bool("allow_host_certificates")?.unwrap_or(false),
        allow_user_key_ids: f.bool("allow_user_key_ids")?.unwrap_or(false),
        key_id_format: f.str("key_id_format")?.unwrap_or_default(),
        allowed_user_key_lengths: key_lengths(f)?,
        algorithm_signer,
        allow_empty_principals: f.bool("allow_empty_principals")?.unwrap_or(false),
        issuer_ref: issuer_ref(f)?,
        allowed_source_addresses: f.cidr_list("allowed_source_addresses")?.unwrap_or_default(),
        allowed_force_commands,
        cidr_list: f.cidr_list("cidr_list")?.unwrap_or_default(),
        exclude_cidr_list: f.cidr_list("exclude_cidr_list")?.unwrap_or_default(),
        port,
        key_bits,
        key_option_specs,
        admin_user: f.str("admin_user")?.unwrap_or_default(),
        key: f.str("key")?.unwrap_or_default(),
        install_script: f.str("install_script")?.unwrap_or_default(),
    };
    if role.key_type != KeyType::Ca && role.default_user.is_empty() {
        return Err(Error::invalid("missing default_user"));
    }
    // As Vault: a CA role that may sign neither would refuse every request.
    if role.key_type == KeyType::Ca
        && !role.allow_user_certificates
        && !role.allow_host_certificates
    {
        return Err(Error::invalid(
            "Either 'allow_user_certificates' or 'allow_host_certificates' must be set to 'true'",
        ));
    }
    Ok(role)
}

pub async fn read(core: &Core, m: &Mount, name: &str) -> Result<Option<Role>> {
    validate_name(name)?;
    core.storage.get(&key(m, name)).await
}

/// [`read`], shared with other requests (no JSON parse while cached).
pub async fn read_shared(
    core: &Core,
    m: &Mount,
    name: &str,
) -> Result<Option<std::sync::Arc<Role>>> {
    validate_name(name)?;
    core.storage.get_shared(&key(m, name)).await
}

pub async fn write(core: &Core, m: &Mount, role: &Role) -> Result<()> {
    core.storage.put(&key(m, &role.name), role).await
}

pub async fn delete(core: &Core, m: &Mount, name: &str) -> Result<()> {
    validate_name(name)?;
    core.storage.delete(&key(m, name)).await?;
    Ok(())
}

pub async fn list(core: &Core, m: &Mount) -> Result<Vec<String>> {
    core.storage
        .list(&format!("{}role/", m.data_prefix()))
        .await
}
