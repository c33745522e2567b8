//! What hosts' and gateways' long-polls share: the index of a state.
//!
//! A state's `index` is a hash of its content, so any server sharing the
//! database gives the same index for the same state with no counter to
//! keep, and a client sends back the index it holds to wait for a change.

use std::sync::OnceLock;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::audit::RawJson;
use crate::error::{Error, Result};

/// The index of `state` as serialized with its index field at 0: 53 bits
/// of its SHA-256 (exact as a JSON number in any client, and as an i64 in
/// a query string), never 0, which a fresh client sends to mean
/// "anything".
pub fn content_index<T: Serialize>(state: &T) -> Result<u64> {
    let bytes = serde_json::to_vec(state).map_err(|e| Error::internal(e.to_string()))?;
    let digest = Sha256::digest(&bytes);
    let mut idx = [0u8; 8];
    idx.copy_from_slice(&digest[..8]);
    Ok((u64::from_be_bytes(idx) & ((1 << 53) - 1)).max(1))
}

/// A state as the answers of many polls hand it out: its JSON (the
/// answer's `data`), serialized once, and its audit form, made once by the
/// first answer that is audited. A revocation reaching 100,000 hosts hands
/// out a handful of states; serializing and redacting each per answer was
/// most of what an answer cost beside the connection's own work.
pub struct Rendered {
    value: Value,
    json: String,
    audit: OnceLock<Result<RawJson>>,
}

impl Rendered {
    pub fn of<T: Serialize>(state: &T) -> Result<Rendered> {
        let value = serde_json::to_value(state).map_err(|e| Error::internal(e.to_string()))?;
        let json = serde_json::to_string(&value).map_err(|e| Error::internal(e.to_string()))?;
        Ok(Rendered {
            value,
            json,
            audit: OnceLock::new(),
        })
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The value serialized, as `serde_json` writes `value()`.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The response's audit form, made by `audit` from `value()` the
    /// first time it is asked for (concurrent first askers wait for that
    /// one).
    pub fn audit_form(&self, audit: impl FnOnce(&Value) -> Result<RawJson>) -> &Result<RawJson> {
        self.audit.get_or_init(|| audit(&self.value))
    }
}

#[cfg(test)]
mod tests {
    use super::content_index;

    #[test]
    fn same_content_same_index_never_zero() {
        let a = content_index(&("x", 1)).unwrap();
        assert_eq!(a, content_index(&("x", 1)).unwrap());
        assert_ne!(a, content_index(&("x", 2)).unwrap());
        assert!(a > 0 && a < (1 << 53));
    }
}
