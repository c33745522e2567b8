//! gatepass-hostd: makes sshd trust the gatepass CA and keeps the files
//! sshd reads (CA keys, KRL, principals, dynamic keys, host certificates)
//! in step with the server. The binary's CLI is in `main.rs`; everything
//! else is here so it can be tested without it.

pub mod apply;
pub mod clock;
pub mod config;
pub mod enroll;
pub mod files;
pub mod host;
pub mod hostcerts;
pub mod logging;
pub mod login;
pub mod remote;
pub mod service;
pub mod sshd;
pub mod sshd_config;
pub mod state;
pub mod sync;

/// Anything hostd can fail at, by layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    #[error(transparent)]
    Config(#[from] sshd_config::ConfigError),
    #[error(transparent)]
    Fs(#[from] files::FsError),
    #[error(transparent)]
    Sshd(#[from] sshd::SshdError),
    #[error(transparent)]
    Api(#[from] gatepass_api::Error),
    #[error(transparent)]
    ConfigFile(#[from] config::ConfigFileError),
    #[error("{0}")]
    Other(String),
}
