//! The integration tests: one test binary, a module per topic, so that the
//! server and its dependencies are linked once rather than once per topic.
//! They drive the real binaries (built by `cargo build --workspace`), a
//! private sshd, PostgreSQL and the OpenSSH clients through the harness in
//! `tests/src/`. `cargo test -p gatepass-tests --test it TOPIC::` runs one
//! topic. The package tests (`tests/tests/packages.rs`) are a binary of
//! their own: they install the packages on this machine, which no other
//! test may run beside.

mod api;
mod audit_faults;
mod authority;
mod bao_cli;
mod cli;
mod cli_connect;
mod cli_otp;
mod cli_ssh;
mod connections;
mod gateway_proxy;
mod hostd_e2e;
mod hostd_files;
mod hostd_include;
mod hostd_krl;
mod hostd_sshd;
mod hosts_api;
mod layers;
mod oidc;
mod otp_api;
mod otp_servers;
mod pam_api;
mod pam_cli;
mod pam_common;
mod pam_helper;
mod pam_hostd;
mod pam_module;
mod pam_recording;
mod pam_sessions;
mod policy_parameters;
mod proxies;
mod request_paths;
mod retention;
mod server;
mod snapshot;
mod ssh_ca_api;
mod ssh_ca_login;
mod sshd_harness;
mod storage;
mod storage_down;
mod string_forms;
mod use_counts;
mod vault_compat;
mod vault_diff;
mod web_ui;
mod wrapping;
