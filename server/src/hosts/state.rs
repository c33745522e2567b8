//! A host's desired state, served by long-poll: computed from what it
//! depends on (its user CA's keys and KRL, the login mappings, dynamic keys
//! for its addresses), the host-independent part cached and shared by all
//! waiting hosts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use base64::Engine;
use gatepass_api::hosts::{DynamicKey, HostState};

use super::cache::{HostAnswer, Meant, Shared, SharedView};
use super::{mappings, Host};
use crate::error::{Error, Result};
use crate::mounts;
use crate::ssh::{certs, creds, issuers};
use crate::state::Core;

/// Longest a state request is held open.
const MAX_WAIT: i64 = 60;

/// How long a waiting poll trusts the change notifications (this server's
/// own changes, and on PostgreSQL the other servers' announcements) before
/// looking at its state anyway, give or take a fifth so that a fleet's
/// polls do not look all in the same second: a safety net only, since
/// every change that can alter a state is announced. While the listener
/// for announcements is down, polls look every second instead.
const RECHECK: Duration = Duration::from_secs(30);

async fn shared(core: &Core, now: i64) -> Result<Arc<SharedView>> {
    let mut guard = core.hosts_cache.inner.lock().await;
    let change = core.storage.change_count();
    let fresh = guard.as_ref().is_some_and(|s| {
        // Changes, this server's or announced by another, move the change
        // count; time alone changes the view only at `until`. What was
        // built while announcements could be missed is kept a second.
        s.change == change
            && now < s.view.until
            && (s.heard_all || s.built.elapsed() < Duration::from_secs(1))
    });
    if !fresh {
        let heard_all = core.storage.hears_every_change();
        let mut mounts_parts = BTreeMap::new();
        let mut dynamic = Vec::new();
        let mut until = i64::MAX;
        for m in mounts::all(core).await? {
            let keys = issuers::public_keys_text(core, &m)
                .await?
                .unwrap_or_default();
            let (krl, krl_until) = certs::krl_until(core, &m, now).await?;
            until = until.min(krl_until);
            let krl = base64::engine::general_purpose::STANDARD.encode(krl);
            mounts_parts.insert(m.path.clone(), (keys, krl));
            for k in creds::dynamic_keys(core, &m, now).await? {
                until = until.min(k.expire_time);
                dynamic.push((
                    Meant::new(k.host_id.clone(), &k.ip),
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
            heard_all,
            built: tokio::time::Instant::now(),
            view: Arc::new(SharedView {
                mounts: mounts_parts,
                mappings: mappings(core).await?,
                dynamic,
                until,
                rendered: Default::default(),
            }),
        });
        core.metrics.host_state("view");
    }
    let s = guard
        .as_ref()
        .ok_or_else(|| Error::internal("host state cache empty"))?;
    Ok(s.view.clone())
}

/// Computes a host's desired state; `index` hashes its content.
pub async fn state(core: &Core, host: &Host, now: i64) -> Result<Arc<HostAnswer>> {
    Ok(state_until(core, host, now).await?.0)
}

/// A host's state and the first second at which it may change by itself.
/// Hosts that get no dynamic key share their state with every host of the
/// same user mount and principals setting: computed once per view.
async fn state_until(core: &Core, host: &Host, now: i64) -> Result<(Arc<HostAnswer>, i64)> {
    let sh = shared(core, now).await?;
    let dynamic_keys: Vec<DynamicKey> = sh
        .dynamic
        .iter()
        .filter(|(meant, _)| meant.is_for(&host.id, &host.addresses))
        .map(|(_, k)| k.clone())
        .collect();
    let mapped = usize::from(host.config.principals == "mapped");
    let render = |dynamic_keys: Vec<DynamicKey>| -> Result<Arc<HostAnswer>> {
        let mut st = HostState::default();
        if let Some((keys, krl)) = sh.mounts.get(&host.config.user_mount) {
            st.user_ca_keys = keys.clone();
            st.krl = krl.clone();
        }
        if mapped == 1 {
            st.principals = Some(sh.mappings.clone());
        }
        st.dynamic_keys = dynamic_keys;
        st.index = crate::longpoll::content_index(&st)?;
        core.metrics.host_state("computed");
        Ok(Arc::new(HostAnswer::new(st)))
    };
    if !dynamic_keys.is_empty() {
        return Ok((render(dynamic_keys)?, sh.until));
    }
    // Rendered under the lock: polls woken together on two threads would
    // otherwise both find it missing and both compute it.
    let mut rendered = sh.rendered.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(st) = rendered
        .get(&host.config.user_mount)
        .and_then(|by_principals| by_principals[mapped].clone())
    {
        core.metrics.host_state("reused");
        return Ok((st, sh.until));
    }
    let st = render(Vec::new())?;
    rendered.entry(host.config.user_mount.clone()).or_default()[mapped] = Some(st.clone());
    Ok((st, sh.until))
}

/// Long-poll: answers at once if the state differs from `index`, otherwise
/// when it changes or after `wait`. A waiting poll looks at its state again
/// only when a change is announced (and then, most often, finds the state
/// another poll already computed), when time alone changes it (an expiry),
/// or after [`RECHECK`]; a woken poll whose state did not change waits on.
pub async fn poll_state(
    core: &Core,
    host: &Host,
    index: u64,
    wait: i64,
) -> Result<Arc<HostAnswer>> {
    let mut changes = core.storage.subscribe();
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(wait.clamp(0, MAX_WAIT) as u64);
    loop {
        // Seen before computing: a change made meanwhile wakes us again.
        changes.borrow_and_update();
        let now = core.clock.now();
        let (st, until) = state_until(core, host, now).await?;
        if st.state.index != index || tokio::time::Instant::now() >= deadline {
            return Ok(st);
        }
        drop(st);
        let recheck = if core.storage.hears_every_change() {
            RECHECK.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
        } else {
            Duration::from_secs(1)
        };
        let by_time = u64::try_from(until.saturating_sub(now))
            .map_or(Duration::from_secs(1), Duration::from_secs)
            .max(Duration::from_secs(1));
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(recheck.min(by_time)) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}
