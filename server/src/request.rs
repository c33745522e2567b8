//! A request's input fields as the domain modules see them, with Vault's
//! lenient typing (a number may come as a string, a list as comma-separated
//! text) and strict rejection of anything else. The request itself (path,
//! operation, caller) is the HTTP layer's (`crate::http::Request`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;

use gatepass_api::lenient;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::duration;
use crate::error::{Error, Result};

/// Input fields of one request. Records which fields a handler read so that
/// the rest can be reported back as warnings, as Vault does.
#[derive(Debug, Default)]
pub struct Fields {
    map: Map<String, Value>,
    used: Mutex<BTreeSet<String>>,
}

impl Fields {
    pub fn new(map: Map<String, Value>) -> Self {
        Fields {
            map,
            used: Mutex::default(),
        }
    }

    pub fn raw(&self) -> &Map<String, Value> {
        &self.map
    }

    /// The whole body as a typed request. The type's typed fields read
    /// string forms through `gatepass_api::lenient`, as `Fields`' own getters
    /// do; a wrong value is a 400 that names the field. Null counts as
    /// absent, as everywhere else. The fields the type knows count as used
    /// (they are the ones it serializes back); the rest become warnings.
    pub fn parse<T: DeserializeOwned + Serialize>(&self) -> Result<T> {
        let present: Map<String, Value> = self
            .map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let parsed: T = serde_path_to_error::deserialize(Value::Object(present)).map_err(|e| {
            let path = e.path().to_string();
            if path.is_empty() || path == "." {
                Error::invalid(e.into_inner().to_string())
            } else {
                Error::invalid(format!("{path}: {}", e.into_inner()))
            }
        })?;
        let known = serde_json::to_value(&parsed).map_err(|e| Error::internal(e.to_string()))?;
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in &self.map {
            if v.is_null() || known.get(k).is_some() {
                used.insert(k.clone());
            }
        }
        Ok(parsed)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string());
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A field's raw JSON (null counts as absent).
    pub fn value(&self, key: &str) -> Option<Value> {
        self.get(key).cloned()
    }

    /// Fields that no handler looked at.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        self.map
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect()
    }

    pub fn str(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(v) => Err(wrong_type(key, "a string", v)),
        }
    }

    /// One of a fixed set of words, as the value it stands for; absent or
    /// empty is `None`. The error lists the words.
    pub fn choice<T: Copy>(&self, key: &str, options: &[(&str, T)]) -> Result<Option<T>> {
        let Some(word) = self.str(key)?.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        match options.iter().find(|(w, _)| *w == word) {
            Some((_, v)) => Ok(Some(*v)),
            None => {
                let words: Vec<&str> = options.iter().map(|(w, _)| *w).collect();
                Err(Error::invalid(format!(
                    "{key} {word:?} is not valid: use {}",
                    words.join(" or ")
                )))
            }
        }
    }

    pub fn required_str(&self, key: &str) -> Result<String> {
        match self.str(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(Error::invalid(format!("missing {key}"))),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => match lenient::parse_bool(s) {
                Some(b) => Ok(Some(b)),
                None => Err(Error::invalid(format!("{key}: {s:?} is not a boolean"))),
            },
            Some(Value::Number(n)) if n.as_i64() == Some(0) => Ok(Some(false)),
            Some(Value::Number(n)) if n.as_i64() == Some(1) => Ok(Some(true)),
            Some(v) => Err(wrong_type(key, "a boolean", v)),
        }
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| Error::invalid(format!("{key}: must be a whole number"))),
            Some(Value::String(s)) => s
                .trim()
                .parse::<i64>()
                .map(Some)
                .map_err(|_| Error::invalid(format!("{key}: {s:?} is not a whole number"))),
            Some(v) => Err(wrong_type(key, "a whole number", v)),
        }
    }

    pub fn non_negative(&self, key: &str) -> Result<Option<i64>> {
        match self.int(key)? {
            Some(n) if n < 0 => Err(Error::invalid(format!("{key}: must not be negative"))),
            other => Ok(other),
        }
    }

    /// A duration in seconds.
    pub fn duration(&self, key: &str) -> Result<Option<i64>> {
        self.get(key)
            .map(|v| duration::parse_value(key, v))
            .transpose()
    }

    /// A list of strings: a JSON list, or comma-separated text.
    pub fn str_list(&self, key: &str) -> Result<Option<Vec<String>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(lenient::split_list(s))),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.trim().to_string()),
                    other => Err(wrong_type(key, "a list of strings", other)),
                })
                .collect::<Result<Vec<_>>>()
                .map(|v| Some(v.into_iter().filter(|s| !s.is_empty()).collect())),
            Some(v) => Err(wrong_type(key, "a list of strings", v)),
        }
    }

    /// A map of strings (Vault's `meta`/`metadata`).
    pub fn str_map(&self, key: &str) -> Result<Option<BTreeMap<String, String>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(wrong_type(key, "a map of strings", other)),
                })
                .collect::<Result<BTreeMap<_, _>>>()
                .map(Some),
            Some(Value::String(s)) if s.is_empty() => Ok(Some(BTreeMap::new())),
            Some(Value::String(s)) => serde_json::from_str::<BTreeMap<String, String>>(s)
                .map(Some)
                .map_err(|_| Error::invalid(format!("{key}: expected a JSON map of strings"))),
            Some(v) => Err(wrong_type(key, "a map of strings", v)),
        }
    }

    /// CIDR blocks (an address alone means that one address).
    pub fn cidr_list(&self, key: &str) -> Result<Option<Vec<ipnet::IpNet>>> {
        self.str_list(key)?
            .map(|items| items.iter().map(|s| parse_cidr(key, s)).collect())
            .transpose()
    }
}

pub fn parse_cidr(key: &str, s: &str) -> Result<ipnet::IpNet> {
    cidr(s)
        .ok_or_else(|| Error::invalid(format!("{key}: {s:?} is not an IP address or CIDR block")))
}

/// A CIDR block, or an address alone as its block of one, in its one form.
pub fn cidr(s: &str) -> Option<ipnet::IpNet> {
    if let Ok(net) = s.trim().parse::<ipnet::IpNet>() {
        return Some(canonical_net(net.trunc()));
    }
    parse_ip(s).ok().map(ipnet::IpNet::from)
}

/// An IP address in its one form: an IPv4 address written as IPv6
/// (`::ffff:10.0.0.5`) is the IPv4 address, as hosts and Vault read it. A
/// check made on the other form would miss an IPv4 block (an
/// `exclude_cidr_list`) that the host then matches.
pub fn parse_ip(s: &str) -> std::result::Result<IpAddr, std::net::AddrParseError> {
    s.trim().parse::<IpAddr>().map(|ip| ip.to_canonical())
}

/// A block of IPv4 addresses written as IPv6 (`::ffff:10.0.0.0/104`) is
/// the IPv4 block; other blocks stay as they are.
fn canonical_net(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(ipnet::IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

fn wrong_type(key: &str, want: &str, got: &Value) -> Error {
    Error::invalid(format!(
        "{key}: expected {want}, got {}",
        duration::type_name(got)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(v: Value) -> Fields {
        Fields::new(v.as_object().cloned().unwrap_or_default())
    }

    #[test]
    fn lenient_but_strict_types() {
        let x =
            f(json!({"a": "1,2, 3", "b": ["x"], "c": "true", "d": {"k": 1}, "e": "12", "t": "1h"}));
        assert_eq!(x.str_list("a").unwrap().unwrap(), vec!["1", "2", "3"]);
        assert_eq!(x.str_list("b").unwrap().unwrap(), vec!["x"]);
        assert_eq!(x.bool("c").unwrap(), Some(true));
        assert!(x.str("d").is_err());
        assert!(x.str_map("d").is_err());
        assert_eq!(x.int("e").unwrap(), Some(12));
        assert_eq!(x.duration("t").unwrap(), Some(3600));
        assert!(x.int("c").is_err());
        assert_eq!(x.unused(), Vec::<String>::new());
        let y = f(json!({"zzz": 1}));
        assert_eq!(y.unused(), vec!["zzz".to_string()]);
    }

    #[test]
    fn typed_bodies_read_string_forms_and_name_wrong_fields() {
        use gatepass_api::hosts::NewJoinToken;
        let x = f(json!({"ttl": "1h", "num_uses": "10", "principals": null, "zzz": "1"}));
        let spec: NewJoinToken = x.parse().unwrap();
        assert_eq!((spec.ttl.as_deref(), spec.num_uses), (Some("1h"), Some(10)));
        assert_eq!(x.unused(), vec!["zzz".to_string()]);
        let e = f(json!({"num_uses": "ten"}))
            .parse::<NewJoinToken>()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("num_uses: ") && e.contains("\"ten\""), "{e}");
    }
}
