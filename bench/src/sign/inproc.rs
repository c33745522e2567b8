//! In-process signing: the server's own `ssh::sign::sign`, with no HTTP,
//! storage or audit around it.

use anyhow::Context;
use gatepass_server::request::Fields;
use gatepass_server::ssh::issuers::Issuer;
use gatepass_server::ssh::roles::{self, Role};
use gatepass_server::ssh::sign::{self, Requester};
use serde_json::{json, Map, Value};
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey};

use crate::measure::{self, Budget, Sample};

fn fields(v: Value) -> Fields {
    match v {
        Value::Object(m) => Fields::new(m),
        _ => Fields::new(Map::new()),
    }
}

/// The role the HTTPS measurement writes, built the same way.
pub fn role_fields() -> Value {
    json!({
        "key_type": "ca",
        "allow_user_certificates": true,
        "allowed_users": "*",
        "default_user": "bench",
    })
}

pub fn role(name: &str) -> anyhow::Result<Role> {
    Ok(roles::from_fields(name, &fields(role_fields()))?)
}

/// A fresh issuer ID, a random UUID as the server makes them. The server
/// may keep parsed CA keys by issuer ID (IDs are never reused), so every
/// issuer here needs its own.
fn issuer_id() -> String {
    let h = format!("{:032x}", rand::random::<u128>());
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// An issuer as storage would hold it.
pub fn issuer(key: &PrivateKey, now: i64) -> anyhow::Result<Issuer> {
    Ok(Issuer {
        id: issuer_id(),
        name: "bench".into(),
        public_key: key.public_key().to_openssh()?,
        private_key: key.to_openssh(LineEnding::LF)?.to_string(),
        created: now,
    })
}

/// Signs `user` until the budget is spent, one certificate at a time, after
/// checking that a certificate from this loop verifies against the CA.
pub fn measure(
    role: &Role,
    issuer: &Issuer,
    user: &PublicKey,
    budget: Budget,
    now: i64,
) -> anyhow::Result<Sample> {
    let input = sign::input_from_fields(&fields(json!({})), user.clone())?;
    let who = Requester::default();
    let first = sign::sign(role, issuer, &input, &who, Default::default(), now, 1)?;
    let fp = issuer.public()?.fingerprint(HashAlg::Sha256);
    first
        .validate_at(u64::try_from(now)?, [&fp])
        .context("the in-process certificate does not verify")?;
    let mut serial = 1u64;
    Ok(measure::serial(budget, || {
        serial += 1;
        sign::sign(role, issuer, &input, &who, Default::default(), now, serial)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn issuer_ids_are_uuids_and_differ() {
        let (a, b) = (super::issuer_id(), super::issuer_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }
}
