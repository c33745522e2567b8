//! The ssh secrets engine: one mount is one certificate authority (with one
//! or more issuers) and its roles. Its routes are `crate::http::ssh`.

pub mod certs;
pub mod creds;
pub mod issuers;
pub mod krl;
pub mod principal;
pub mod roles;
pub mod sign;

use crate::error::{Error, Result};
use crate::mounts::Mount;
use crate::state::Core;
use roles::KeyType;

pub async fn ca_role(core: &Core, m: &Mount, name: &str) -> Result<std::sync::Arc<roles::Role>> {
    let role = roles::read_shared(core, m, name)
        .await?
        .ok_or_else(|| Error::invalid(format!("unknown role: {name}")))?;
    if role.key_type != KeyType::Ca {
        return Err(Error::invalid(format!(
            "role {name} has key_type {}; sign and issue need a role with key_type=ca",
            role.key_type.as_str()
        )));
    }
    Ok(role)
}

/// Signs under a role and records the certificate in the inventory.
pub async fn issue_with(
    core: &Core,
    m: &Mount,
    role_name: &str,
    input: &sign::SignInput,
    who: &sign::Requester,
    now: i64,
) -> Result<(certs::CertRecord, ssh_key::Certificate)> {
    let role = ca_role(core, m, role_name).await?;
    let issuer = issuers::resolve(core, m, &role.issuer_ref)
        .await?
        .ok_or_else(|| {
            Error::invalid(format!(
                "issuer {:?} of role {role_name} does not exist (configure the CA with config/ca)",
                role.issuer_ref
            ))
        })?;
    // The inventory insert makes the serial unique in the mount; a
    // collision just means signing again with the next one.
    for _ in 0..4 {
        let serial = next_serial(now);
        let cert = sign::sign(&role, &issuer, input, who, m.ttl_limits(), now, serial)?;
        certs::refuse_revoked(core, m, cert.key_id(), &input.public_key).await?;
        let rec = certs::CertRecord::new(&cert, &issuer, role_name, &who.display_name);
        if certs::record(core, m, &rec).await? {
            return Ok((rec, cert));
        }
    }
    Err(Error::internal("could not find a free serial number"))
}

/// A certificate serial number: the signing second in the high bits and a
/// counter in the low 30. The inventory rows signed in one second then sit
/// side by side in the database's index, so a batch of inserts rewrites a
/// page or two instead of one random page each (which is most of what a
/// commit writes). The counter starts at a random value, so servers sharing
/// a database rarely meet. Serials need to be unique, not unpredictable:
/// the certificate's random nonce is what defeats chosen-prefix attacks.
fn next_serial(now: i64) -> u64 {
    static COUNTER: std::sync::LazyLock<std::sync::atomic::AtomicU64> =
        std::sync::LazyLock::new(|| std::sync::atomic::AtomicU64::new(rand::random()));
    let low = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & ((1 << 30) - 1);
    (now.max(1) as u64) << 30 | low
}

#[cfg(test)]
mod tests {
    use super::next_serial;

    #[test]
    fn serials_are_unique_and_ordered_by_the_signing_second() {
        let now = 1_767_225_600;
        let a: Vec<u64> = (0..1000).map(|_| next_serial(now)).collect();
        let later = next_serial(now + 1);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), a.len(), "a serial repeated");
        assert!(a.iter().all(|s| s >> 30 == now as u64));
        assert!(a.iter().all(|s| *s < later), "a later second sorts after");
    }
}
