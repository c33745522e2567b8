//! Resources: servers reached through a gateway, with how their host key is
//! trusted (an ssh mount's host CA, or pinned keys; never unchecked).

use std::net::IpAddr;

use gatepass_api::pam::{ResourceInfo, ResourceSpec};
use serde::{Deserialize, Serialize};

use super::{gateways, Name};
use crate::error::{Error, Result};
use crate::mounts;
use crate::ssh::sign;
use crate::state::Core;

/// Where the gateway dials: an IP address or a host name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TargetHost(String);

impl TargetHost {
    pub fn parse(s: &str) -> Result<TargetHost> {
        let t = s.trim();
        let bare = t
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(t);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(TargetHost(ip.to_string()));
        }
        let ok = !t.is_empty()
            && t.len() <= 253
            && t.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if ok {
            Ok(TargetHost(t.to_ascii_lowercase()))
        } else {
            Err(Error::invalid(format!(
                "host {s:?} is not a host name or IP address"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How the gateway trusts the target's host key: exactly one way, and there
/// is no "don't check".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// Host certificates signed by this ssh mount's CA.
    HostCa(String),
    /// One of these keys (OpenSSH public key lines, without comments).
    Pinned(Vec<String>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Resource {
    pub name: Name,
    pub host: TargetHost,
    pub port: u16,
    pub gateway: Name,
    pub trust: Trust,
}

fn resource_key(name: &str) -> String {
    format!("pam/resource/{name}")
}

/// The keys of pinned known_hosts entries: OpenSSH public key lines, or
/// known_hosts lines (`host[,host] key-type base64 [comment]`) whose key is
/// taken. Blank and `#` lines are skipped.
pub fn parse_known_hosts(lines: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for line in lines.iter().flat_map(|l| l.lines()) {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.starts_with('@') {
            return Err(Error::invalid(format!(
                "known_hosts: markers such as {:?} are not taken here; for a host CA set host_ca_mount instead",
                l.split_whitespace().next().unwrap_or("")
            )));
        }
        let key = sign::parse_public_key(l).or_else(|_| {
            let rest = l
                .split_once(char::is_whitespace)
                .map(|(_, r)| r)
                .unwrap_or("");
            sign::parse_public_key(rest)
        });
        let mut key = key.map_err(|_| {
            Error::invalid(format!(
                "known_hosts: {l:?} is neither an OpenSSH public key nor a known_hosts line"
            ))
        })?;
        key.set_comment("");
        let text = key
            .to_openssh()
            .map_err(|e| Error::invalid(e.to_string()))?
            .trim()
            .to_string();
        if !out.contains(&text) {
            out.push(text);
        }
    }
    if out.len() > 64 {
        return Err(Error::invalid("known_hosts: too many keys (at most 64)"));
    }
    Ok(out)
}

/// Checks a resource spec against what exists (the gateway, the ssh mount)
/// and makes the resource.
pub async fn validate(core: &Core, name: &Name, spec: ResourceSpec) -> Result<Resource> {
    match spec.kind.as_deref() {
        None | Some("") | Some("ssh") => {}
        Some(other) => {
            return Err(Error::invalid(format!(
                "type {other:?} is not supported; the only resource type is \"ssh\""
            )))
        }
    }
    let host = TargetHost::parse(&spec.host)?;
    let port = match spec.port {
        None => 22,
        Some(p) => u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Error::invalid(format!("port {p} is not in 1..65535")))?,
    };
    let gateway = gateways::gateway_name(&spec.gateway)?;
    if gateways::find(core, &gateway).await?.is_none() {
        return Err(Error::invalid(format!(
            "gateway {gateway:?} is not enrolled (LIST pam/gateways shows the enrolled ones)"
        )));
    }
    let ca_mount = spec.host_ca_mount.filter(|m| !m.trim().is_empty());
    let trust = match (ca_mount, spec.known_hosts.is_empty()) {
        (Some(_), false) => {
            return Err(Error::invalid(
                "set either host_ca_mount or known_hosts, not both",
            ))
        }
        (None, true) => {
            return Err(Error::invalid(
                "the target's host key must be trusted somehow: set host_ca_mount (an ssh mount whose CA signs host keys) or known_hosts (pinned keys)",
            ))
        }
        (Some(m), true) => {
            let m = m.trim().trim_matches('/').to_string();
            if mounts::get(core, &m).await?.is_none() {
                return Err(Error::invalid(format!(
                    "host_ca_mount: no ssh mount at {m:?}"
                )));
            }
            Trust::HostCa(m)
        }
        (None, false) => {
            let keys = parse_known_hosts(&spec.known_hosts)?;
            if keys.is_empty() {
                return Err(Error::invalid("known_hosts holds no key"));
            }
            Trust::Pinned(keys)
        }
    };
    Ok(Resource {
        name: name.clone(),
        host,
        port,
        gateway,
        trust,
    })
}

pub async fn write(core: &Core, r: &Resource) -> Result<()> {
    core.storage.put(&resource_key(r.name.as_str()), r).await
}

pub async fn get(core: &Core, name: &Name) -> Result<Option<Resource>> {
    core.storage.get(&resource_key(name.as_str())).await
}

/// The resource, or the server's 404.
pub async fn require(core: &Core, name: &Name) -> Result<Resource> {
    get(core, name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no resource named {name:?}")))
}

pub async fn list(core: &Core) -> Result<Vec<String>> {
    core.storage.list("pam/resource/").await
}

/// Deletes a resource and its accounts (sessions stay on record).
pub async fn delete(core: &Core, name: &Name) -> Result<()> {
    super::accounts::delete_all(core, name).await?;
    core.storage.delete(&resource_key(name.as_str())).await?;
    Ok(())
}

pub fn info(r: &Resource) -> ResourceInfo {
    let (host_ca_mount, known_hosts) = match &r.trust {
        Trust::HostCa(m) => (Some(m.clone()), Vec::new()),
        Trust::Pinned(k) => (None, k.clone()),
    };
    ResourceInfo {
        name: r.name.to_string(),
        kind: "ssh".into(),
        host: r.host.as_str().to_string(),
        port: r.port,
        gateway: r.gateway.to_string(),
        host_ca_mount,
        known_hosts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIH9RFO5i4zzKpHlMOBjI/0THxKrw6OrUX0RqSF9Pt2fU";

    #[test]
    fn target_hosts() {
        assert_eq!(
            TargetHost::parse("Web1.Example.com").unwrap().as_str(),
            "web1.example.com"
        );
        assert_eq!(TargetHost::parse("10.0.0.7").unwrap().as_str(), "10.0.0.7");
        assert_eq!(TargetHost::parse("[fd00::7]").unwrap().as_str(), "fd00::7");
        for bad in ["", "a..b", "-a", "a_b", "a b", "host:22"] {
            assert!(TargetHost::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn known_hosts_lines_give_their_keys() {
        let lines = vec![
            format!("ssh-ed25519 {KEY} root@web"),
            format!("web1,10.0.0.7 ssh-ed25519 {KEY}"),
            "# a comment".into(),
            String::new(),
        ];
        assert_eq!(
            parse_known_hosts(&lines).unwrap(),
            vec![format!("ssh-ed25519 {KEY}")]
        );
        assert!(parse_known_hosts(&["not a key".into()]).is_err());
        assert!(parse_known_hosts(&[format!("@cert-authority * ssh-ed25519 {KEY}")]).is_err());
        assert!(parse_known_hosts(&[format!("@revoked * ssh-ed25519 {KEY}")]).is_err());
    }
}
