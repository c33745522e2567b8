//! hostd's own record of what it installed and when it last synced
//! (`<state_dir>/state.json`, 0600). It also keeps the last desired state,
//! so expired dynamic keys are removed while the server is unreachable.

use std::path::{Path, PathBuf};

use gatepass_api::hosts::HostState;
use serde::{Deserialize, Serialize};

use crate::apply;
use crate::files::{self, FsError};
use crate::hostcerts::CertInfo;
use crate::sshd_config::Placement;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalState {
    /// Index of the last state applied.
    pub index: u64,
    /// When a state from the server was last applied (Unix time).
    pub last_sync: Option<i64>,
    /// When the files were last checked against the desired state.
    pub last_apply: Option<i64>,
    pub last_error: Option<String>,
    pub placement: Option<Placement>,
    pub notes: Vec<String>,
    /// Leases of the dynamic keys installed.
    pub installed: Vec<String>,
    /// Entries of the desired state that were refused.
    pub rejected: Vec<String>,
    pub host_certs: Vec<CertInfo>,
    /// The last desired state from the server.
    pub desired: Option<HostState>,
    /// The form of the expiry times in the files of that apply. Missing in
    /// a state saved by a hostd that wrote only UTC, whose form it is.
    pub time_form: apply::TimeForm,
    /// The digest of the host's own files merged into that apply
    /// (`apply::OwnFiles::digest`).
    pub own_digest: Option<String>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("state.json")
}

impl LocalState {
    /// The saved state, or an empty one (missing or unreadable file: a
    /// fresh start is always safe, the server has the truth).
    pub fn load(state_dir: &Path) -> LocalState {
        std::fs::read(path(state_dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, state_dir: &Path) -> Result<(), FsError> {
        files::ensure_dir(state_dir, 0o700)?;
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        files::sync_file(&path(state_dir), &json, files::SECRET_FILE).map(|_| ())
    }
}
