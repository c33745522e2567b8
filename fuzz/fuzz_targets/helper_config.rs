//! The PAM helper's configuration: vault-ssh-helper's HCL (and gatepass's
//! TOML) never panic the parser, which runs inside sshd's PAM stack.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pam_gatepass::config::{Config, Format};

fuzz_target!(|text: &str| {
    let _ = Config::parse(text, Format::VaultHcl);
    let _ = Config::parse(text, Format::Toml);
    let _ = pam_gatepass::config::parse_timeout(text);
});
