//! A host's desired state, served by long-poll: computed from what it
//! depends on (its user CA's keys and KRL, the login mappings, dynamic keys
//! for its addresses), the host-independent part cached and shared by all
//! waiting hosts.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use gatepass_api::hosts::{DynamicKey, HostState};

use super::cache::{Shared, SharedView};
use super::{mappings, Host};
use crate::error::{Error, Result};
use crate::mounts;
use crate::ssh::{certs, creds, issuers};
use crate::state::Core;

/// Longest a state request is held open.
const MAX_WAIT: i64 = 60;

async fn shared(core: &Core, now: i64) -> Result<std::sync::Arc<SharedView>> {
    let mut guard = core.hosts_cache.inner.lock().await;
    let change = core.storage.change_count();
    let fresh = guard.as_ref().is_some_and(|s| {
        // Other servers' changes wake the polls (their announcements bump
        // the change count); the state also depends on the time.
        s.change == change && s.now == now && s.built.elapsed() < Duration::from_secs(1)
    });
    if !fresh {
        let mut mounts_parts = BTreeMap::new();
        let mut dynamic = Vec::new();
        for m in mounts::all(core).await? {
            let keys = issuers::public_keys_text(core, &m)
                .await?
                .unwrap_or_default();
            let krl =
                base64::engine::general_purpose::STANDARD.encode(certs::krl(core, &m, now).await?);
            mounts_parts.insert(m.path.clone(), (keys, krl));
            for k in creds::dynamic_keys(core, &m, now).await? {
                dynamic.push((
                    k.ip.parse().ok(),
                    DynamicKey {
                        user: k.username,
                        public_key: k.public_key,
                        options: k.key_option_specs,
                        expires: k.expire_time,
                        lease_id: k.lease_id,
                    },
                ));
            }
        }
        dynamic.sort_by(|a, b| a.1.lease_id.cmp(&b.1.lease_id));
        *guard = Some(Shared {
            change,
            now,
            built: tokio::time::Instant::now(),
            view: std::sync::Arc::new(SharedView {
                mounts: mounts_parts,
                mappings: mappings(core).await?,
                dynamic,
            }),
        });
    }
    let s = guard
        .as_ref()
        .ok_or_else(|| Error::internal("host state cache empty"))?;
    Ok(s.view.clone())
}

/// Computes a host's desired state; `index` hashes its content.
pub async fn state(core: &Core, host: &Host, now: i64) -> Result<HostState> {
    let sh = shared(core, now).await?;
    let mut st = HostState::default();
    if let Some((keys, krl)) = sh.mounts.get(&host.config.user_mount) {
        st.user_ca_keys = keys.clone();
        st.krl = krl.clone();
    }
    if host.config.principals == "mapped" {
        st.principals = Some(sh.mappings.clone());
    }
    st.dynamic_keys = sh
        .dynamic
        .iter()
        .filter(|(ip, _)| ip.is_some_and(|ip| host.addresses.contains(&ip)))
        .map(|(_, k)| k.clone())
        .collect();
    st.index = crate::longpoll::content_index(&st)?;
    Ok(st)
}

/// Long-poll: answers at once if the state differs from `index`, otherwise
/// when it changes or after `wait`.
pub async fn poll_state(core: &Core, host: &Host, index: u64, wait: i64) -> Result<HostState> {
    let mut changes = core.storage.subscribe();
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(wait.clamp(0, MAX_WAIT) as u64);
    loop {
        let st = state(core, host, core.clock.now()).await?;
        if st.index != index || tokio::time::Instant::now() >= deadline {
            return Ok(st);
        }
        // Changes, this server's or announced by another, wake us at once;
        // the state is looked at again every second all the same (keys
        // expire, an announcement can be missed).
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}
