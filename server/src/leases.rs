//! Leases (`sys/leases/*`): every OTP and dynamic key is handed out with a
//! lease in Vault's form (`<mount>/creds/<role>/<uuid>`). Revoking or
//! expiring a lease destroys what it stands for: an unused OTP, or a dynamic
//! key in its host's desired state. Expiry is indexed by time so the sweeper
//! reads only what is due.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::state::Core;
use crate::storage::Change;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    /// Storage key of the secret the lease stands for; deleted on revoke.
    pub secret_key: String,
    pub issue_time: i64,
    pub expire_time: i64,
    pub last_renewal: Option<i64>,
    pub renewable: bool,
    /// The latest a renewal may reach.
    pub max_expire: i64,
    /// The accessor of the token that created it: revoking that token (or
    /// a parent of it) revokes the lease, as Vault does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

fn key(id: &str) -> String {
    format!("lease/{id}")
}

fn exp_key(expire: i64, id: &str) -> String {
    format!("lease-exp/{:016x}/{id}", expire.max(0))
}

/// The index of a token's leases: `lease-tok/<accessor>/<lease id>`.
fn token_key(accessor: &str, id: &str) -> String {
    format!("lease-tok/{accessor}/{id}")
}

/// Lease IDs contain `/` but never `..`, spaces or control characters.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 512
        && !id.split('/').any(|s| s.is_empty() || s == "." || s == "..")
        && id.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("invalid lease_id"))
    }
}

impl Lease {
    /// A lease issued at `now` for `ttl` seconds, renewable up to `max`
    /// seconds after `now`, standing for the secret stored at `secret_key`.
    pub fn new(
        id: String,
        secret_key: String,
        now: i64,
        ttl: i64,
        renewable: bool,
        max: i64,
    ) -> Lease {
        Lease {
            id,
            secret_key,
            issue_time: now,
            expire_time: now + ttl,
            last_renewal: None,
            renewable,
            max_expire: now + max,
            token: None,
        }
    }

    /// The lease as created by the token with this accessor.
    pub fn of_token(mut self, accessor: Option<String>) -> Lease {
        self.token = accessor;
        self
    }
}

/// Stores a new secret (at the lease's `secret_key`, which must be free)
/// and its lease in one transaction: both or neither, so that no secret
/// is ever without the lease that expires it. False when the key is taken.
pub async fn create_with_secret<T: Serialize>(
    core: &Core,
    lease: &Lease,
    secret: &T,
) -> Result<bool> {
    let mut items = vec![(
        lease.secret_key.clone(),
        serde_json::to_value(secret).map_err(|e| Error::internal(e.to_string()))?,
    )];
    items.extend(records(lease)?);
    core.storage.put_many(&items, true).await
}

/// Stores a lease without a secret of its own. A lease of a token is
/// then checked against its token (`auth::token::keep_lease`).
pub async fn create(core: &Core, lease: &Lease) -> Result<()> {
    core.storage.put_many(&records(lease)?, false).await?;
    Ok(())
}

/// The storage entries of a lease: the lease, its expiry index and its
/// token's index.
pub fn records(lease: &Lease) -> Result<Vec<(String, Value)>> {
    let mut out = vec![
        (
            key(&lease.id),
            serde_json::to_value(lease).map_err(|e| Error::internal(e.to_string()))?,
        ),
        (exp_key(lease.expire_time, &lease.id), json!({})),
    ];
    if let Some(t) = &lease.token {
        out.push((token_key(t, &lease.id), json!({})));
    }
    Ok(out)
}

/// The storage keys of a lease whose expiry and token are known (to delete
/// them together with what the lease stands for: a used OTP).
pub fn keys_of(id: &str, expire_time: i64, token: Option<&str>) -> Vec<String> {
    let mut keys = vec![key(id), exp_key(expire_time, id)];
    if let Some(t) = token {
        keys.push(token_key(t, id));
    }
    keys
}

/// The keys that go with a lease record besides itself.
fn index_keys(l: &Lease) -> Vec<String> {
    let mut keys = vec![exp_key(l.expire_time, &l.id)];
    if let Some(t) = &l.token {
        keys.push(token_key(t, &l.id));
    }
    keys
}

/// Revokes every lease the token with this accessor created (its token
/// was revoked); returns how many.
pub async fn revoke_for_token(core: &Core, accessor: &str) -> Result<usize> {
    let prefix = format!("lease-tok/{accessor}/");
    let mut n = 0;
    for k in core.storage.keys_with_prefix(&prefix).await? {
        let id = &k[prefix.len()..];
        if check_id(id).is_ok() && revoke(core, id).await? {
            n += 1;
        }
        // Gone with its lease, or left by one used or swept meanwhile.
        core.storage.delete(&k).await?;
    }
    Ok(n)
}

pub async fn get(core: &Core, id: &str) -> Result<Option<Lease>> {
    check_id(id)?;
    core.storage.get(&key(id)).await
}

/// Revokes a lease and destroys its secret; false when there was no lease.
/// The lease, its secret and its index entries go in one transaction: a
/// failure between two writes must not leave a secret (a dynamic key its
/// hosts keep installed) with no lease left to find it by.
pub async fn revoke(core: &Core, id: &str) -> Result<bool> {
    check_id(id)?;
    let taken = core
        .storage
        .take_with(&key(id), |l: Lease| {
            let mut keys = index_keys(&l);
            keys.push(l.secret_key);
            keys
        })
        .await?;
    Ok(taken.is_some())
}

/// Removes the lease record only (its secret was consumed, e.g. a verified
/// OTP), with its index entries in the same transaction.
pub async fn forget(core: &Core, id: &str) -> Result<()> {
    core.storage
        .take_with(&key(id), |l: Lease| index_keys(&l))
        .await?;
    Ok(())
}

pub async fn revoke_prefix(core: &Core, prefix: &str) -> Result<usize> {
    let prefix = prefix.trim_matches('/');
    check_id(prefix)?;
    let mut n = 0;
    for k in core
        .storage
        .keys_with_prefix(&format!("lease/{prefix}"))
        .await?
    {
        let id = &k["lease/".len()..];
        // Whole segments only: `ssh/creds/a` must not take `ssh/creds/ab`.
        if (id == prefix || id.starts_with(&format!("{prefix}/"))) && revoke(core, id).await? {
            n += 1;
        }
    }
    Ok(n)
}

/// Renews a lease in place. The record is changed with a compare-and-swap
/// (`Storage::update`), never written back from a copy: a revoke or the
/// sweeper deleting the lease while a renewal is under way wins, and the
/// renewal fails instead of bringing the lease back without its secret.
pub async fn renew(core: &Core, id: &str, increment: Option<i64>, now: i64) -> Result<Lease> {
    check_id(id)?;
    let not_found = || Error::invalid("lease not found or lease is not renewable");
    let current = core
        .storage
        .get::<Lease>(&key(id))
        .await?
        .filter(|l| l.expire_time > now)
        .ok_or_else(not_found)?;
    if !current.renewable {
        return Err(Error::invalid("lease is not renewable"));
    }
    let inc = increment
        .filter(|i| *i > 0)
        .unwrap_or(current.expire_time - current.issue_time);
    let new_exp = (now + inc).min(current.max_expire);
    // The expiry entry for the new time goes in first, so that a renewed
    // lease is never without one. The old entry stays: the sweeper drops an
    // entry whose lease expires later (or is gone) when its time comes, and
    // deleting it here could take the entry a concurrent renewal just made.
    core.storage.put(&exp_key(new_exp, id), &json!({})).await?;
    let renewed = core
        .storage
        .update(&key(id), |mut l: Lease| {
            if l.expire_time <= now {
                return Ok((Change::Keep, Err(not_found())));
            }
            if !l.renewable {
                return Ok((Change::Keep, Err(Error::invalid("lease is not renewable"))));
            }
            l.expire_time = new_exp;
            l.last_renewal = Some(now);
            Ok((Change::Put(l.clone()), Ok(l)))
        })
        .await?;
    match renewed {
        Some(Ok(l)) => Ok(l),
        failed => {
            // Revoked, swept or expired meanwhile: the entry put above
            // stands for nothing.
            core.storage.delete(&exp_key(new_exp, id)).await?;
            Err(match failed {
                Some(Err(e)) => e,
                _ => not_found(),
            })
        }
    }
}

/// Revokes up to `limit` leases that expired by `now`; returns how many.
/// The due leases are read first and then deleted together with their
/// secrets and expiry entries in one transaction: one at a time, a sweep
/// could not keep up with leases issued under load.
pub async fn sweep(core: &Core, now: i64, limit: i64) -> Result<usize> {
    Ok(sweep_due(core, now, limit).await?.0)
}

/// [`sweep`]: (leases revoked, expiry entries handled); the second tells
/// whether more may be due (stale entries count there, not in the first).
async fn sweep_due(core: &Core, now: i64, limit: i64) -> Result<(usize, usize)> {
    let due = core
        .storage
        .keys_between(
            "lease-exp/",
            &format!("lease-exp/{:016x}/", now.max(0) + 1),
            limit,
        )
        .await?;
    let handled = due.len();
    let mut doomed: Vec<String> = Vec::with_capacity(due.len() * 3);
    let mut seen = std::collections::HashSet::new();
    let mut n = 0;
    for k in due {
        // lease-exp/<16 hex>/<id>
        let id = k.get("lease-exp/".len() + 17..).unwrap_or_default();
        if !id.is_empty() && seen.insert(id.to_string()) {
            // A renewed lease has a later expiry entry of its own: only
            // this stale entry goes.
            if let Some(l) = core.storage.get::<Lease>(&key(id)).await? {
                if l.expire_time <= now {
                    doomed.push(key(&l.id));
                    if let Some(t) = &l.token {
                        doomed.push(token_key(t, &l.id));
                    }
                    doomed.push(l.secret_key);
                    n += 1;
                }
            }
        }
        doomed.push(k);
    }
    if !doomed.is_empty() {
        core.storage.delete_many(&doomed).await?;
    }
    Ok((n, handled))
}

/// Runs the sweeper for the life of the server.
pub async fn sweeper(core: crate::state::State) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        loop {
            match sweep_due(&core, core.clock.now(), 1000).await {
                Ok((_, 1000)) => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "lease sweep failed");
                    break;
                }
            }
        }
    }
}

/// `LIST sys/leases/lookup/<prefix>`: the next path level under a prefix.
pub async fn list(core: &Core, prefix: &str) -> Result<Vec<String>> {
    let p = prefix.trim_matches('/');
    let full = if p.is_empty() {
        "lease/".to_string()
    } else {
        format!("lease/{p}/")
    };
    core.storage.list(&full).await
}
