//! The host-independent part of hosts' desired states, kept between
//! requests (the server's state holds one [`StateCache`]; `state` fills it).

use std::collections::BTreeMap;
use std::net::IpAddr;

use gatepass_api::hosts::DynamicKey;

/// The parts of every host's state that do not depend on the host: CA keys
/// and KRL per user mount, mappings, every live dynamic key. Built once per
/// change and shared by all waiting hosts, so a change reaching thousands of
/// long-polls costs one rebuild, not one per host.
#[derive(Default)]
pub struct StateCache {
    pub(super) inner: tokio::sync::Mutex<Option<Shared>>,
}

pub(super) struct Shared {
    /// Storage change count and second it was built at.
    pub(super) change: u64,
    pub(super) now: i64,
    pub(super) built: tokio::time::Instant,
    pub(super) view: std::sync::Arc<SharedView>,
}

/// user mount → (CA keys text, KRL base64); mappings; live dynamic keys.
pub(super) struct SharedView {
    pub(super) mounts: BTreeMap<String, (String, String)>,
    pub(super) mappings: BTreeMap<String, Vec<String>>,
    pub(super) dynamic: Vec<(Option<IpAddr>, DynamicKey)>,
}
