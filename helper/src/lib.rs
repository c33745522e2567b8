//! gatepass's OTP check at SSH login, shared by the two ways a host runs it:
//!
//! - `gatepass-helper`, run by `pam_exec.so expose_authtok`, a drop-in for
//!   HashiCorp's vault-ssh-helper (same flags, same HCL configuration);
//! - `pam_gatepass.so`, a native PAM module ([`pam_module`]), built from this
//!   library as a cdylib (`target/<profile>/libpam_gatepass.so`).
//!
//! Modules by concept: [`config`] (the HCL and TOML files), [`client`]
//! (HTTPS to the servers with the CA pinned, within the time bound, and this
//! host's addresses), [`hostd`] (the same question through hostd's socket,
//! on its open connections, with the direct way as the fallback), [`verify`] (the check, against small traits so that it
//! is unit-tested without libpam or a network), [`logging`] (the one syslog
//! line per attempt).
//!
//! Code here runs inside sshd: it must not panic, so `unwrap`, `expect` and
//! `panic!` are denied outside tests (as in every crate of the workspace:
//! root Cargo.toml, `[workspace.lints]`).

pub mod client;
pub mod config;
pub mod hostd;
pub mod logging;
pub mod pam_module;
pub mod verify;
