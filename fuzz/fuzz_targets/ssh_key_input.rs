//! SSH public key and certificate text as callers send it: the server's
//! public key reader and OpenSSH certificate parsing never panic, and what
//! they accept encodes back to text that parses to the same key.
#![no_main]

use gatepass_server::ssh::sign::parse_public_key;
use libfuzzer_sys::fuzz_target;
use ssh_key::{Certificate, PublicKey};

fuzz_target!(|text: &str| {
    if let Ok(key) = parse_public_key(text) {
        let again = key.to_openssh().expect("an accepted key encodes");
        let back = PublicKey::from_openssh(&again).expect("its encoding parses");
        assert_eq!(back.key_data(), key.key_data());
    }
    if let Ok(cert) = Certificate::from_openssh(text) {
        let _ = cert.valid_principals();
        let _ = cert.key_id();
        let _ = cert.to_openssh();
    }
    let _ = gatepass_server::ssh::principal::parse_list(text);
});
