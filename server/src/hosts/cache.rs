//! The host-independent part of hosts' desired states, kept between
//! requests (the server's state holds one [`StateCache`]; `state` fills it).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use gatepass_api::hosts::{DynamicKey, HostState};

use crate::longpoll::Rendered;

/// The parts of every host's state that do not depend on the host: CA keys
/// and KRL per user mount, mappings, every live dynamic key. Built once per
/// change and shared by all waiting hosts, so a change reaching thousands of
/// long-polls costs one rebuild, not one per host.
#[derive(Default)]
pub struct StateCache {
    pub(super) inner: tokio::sync::Mutex<Option<Shared>>,
}

pub(super) struct Shared {
    /// Storage change count it was built at.
    pub(super) change: u64,
    /// Whether this server heard of every change when it was built (see
    /// `Storage::hears_every_change`); if not, it is kept a second at most.
    pub(super) heard_all: bool,
    pub(super) built: tokio::time::Instant,
    pub(super) view: Arc<SharedView>,
}

/// A host's state with its answer, rendered once however many hosts it
/// is handed to, and only when one is answered with it: a poll whose state
/// did not change looks at it and waits on.
pub struct HostAnswer {
    pub state: HostState,
    rendered: std::sync::OnceLock<Arc<Rendered>>,
}

impl HostAnswer {
    pub fn new(state: HostState) -> HostAnswer {
        HostAnswer {
            state,
            rendered: std::sync::OnceLock::new(),
        }
    }

    /// The answer's data, rendered by the first answer that needs it.
    pub fn rendered(&self) -> crate::error::Result<Arc<Rendered>> {
        if let Some(r) = self.rendered.get() {
            return Ok(r.clone());
        }
        let r = Arc::new(Rendered::of(&self.state)?);
        Ok(self.rendered.get_or_init(|| r).clone())
    }
}

/// Which host a dynamic key is for: the one it was asked for by name, or
/// else every host with its address.
pub(super) struct Meant {
    pub(super) host_id: Option<String>,
    pub(super) ip: Option<IpAddr>,
}

impl Meant {
    /// A key asked for host `host_id` (by name), or else for address `ip`.
    pub(super) fn new(host_id: Option<String>, ip: &str) -> Meant {
        Meant {
            host_id,
            ip: ip.parse().ok(),
        }
    }

    /// Whether it is for the host with this ID and these addresses.
    pub(super) fn is_for(&self, host_id: &str, addresses: &[IpAddr]) -> bool {
        match &self.host_id {
            Some(id) => id == host_id,
            None => self.ip.is_some_and(|ip| addresses.contains(&ip)),
        }
    }
}

/// user mount → (CA keys text, KRL base64); mappings; live dynamic keys.
pub(super) struct SharedView {
    pub(super) mounts: BTreeMap<String, (String, String)>,
    pub(super) mappings: BTreeMap<String, Vec<String>>,
    pub(super) dynamic: Vec<(Meant, DynamicKey)>,
    /// The first second at which the view changes by itself (a revoked
    /// certificate or a dynamic key expires): `i64::MAX` when nothing will.
    pub(super) until: i64,
    /// Whole states, index included, of the hosts that get no dynamic key:
    /// these differ only by user mount and by whether the host maps
    /// principals, so 100,000 such hosts share a handful, each computed
    /// (serialized, hashed, and redacted for the audit log) once per view.
    /// By user mount, then `[own principals, mapped]`.
    pub(super) rendered: std::sync::Mutex<HashMap<String, [Option<Arc<HostAnswer>>; 2]>>,
}
