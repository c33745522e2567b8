//! gatepass-server: an SSH certificate authority and OTP issuer behind a
//! Vault-compatible HTTPS API.

pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod duration;
pub mod error;
pub mod hosts;
pub mod http;
pub mod identity;
pub mod leases;
pub mod longpoll;
pub mod metrics;
pub mod mounts;
pub mod pam;
pub mod path;
pub mod policies;
pub mod policy;
pub mod private;
pub mod ratelimit;
pub mod request;
pub mod retention;
pub mod seal;
pub mod serve;
pub mod ssh;
pub mod state;
pub mod storage;
pub mod tls;
pub mod tune;
pub mod ui;

pub use error::{Error, Result};
pub use http::app;
pub use state::{Core, Options, State};
