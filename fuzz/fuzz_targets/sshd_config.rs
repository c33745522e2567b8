//! hostd's sshd_config reader and writer: on any main file without
//! gatepass's own lines, composing gatepass's directives into it and
//! stripping them again gives the file back byte for byte; neither panics
//! on any text.
#![no_main]

use std::path::{Path, PathBuf};

use gatepass_hostd::sshd_config::{compose, include_covers, prior_authorized_keys, strip, Directives};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, bool, bool, bool)| {
    let (text, dropin_usable, mapped, own_file) = input;
    let path = Path::new("/etc/ssh/sshd_config");
    let dropin = Path::new("/etc/ssh/sshd_config.d/50-gatepass.conf");
    let _ = include_covers(text, dropin);
    let prior = prior_authorized_keys(Some(text), "/etc/ssh/gatepass/authorized_keys/%u");
    let Ok(base) = strip(path, text) else { return };
    if base != text {
        return;
    }
    let d = Directives {
        trusted_user_ca_keys: PathBuf::from("/etc/ssh/gatepass/user_ca.pub"),
        revoked_keys: PathBuf::from("/etc/ssh/gatepass/revoked.krl"),
        authorized_principals_file: mapped.then(|| "/etc/ssh/gatepass/principals/%u".to_string()),
        authorized_keys_file: "/etc/ssh/gatepass/authorized_keys/%u".into(),
        host_certificates: vec![],
    };
    let included = own_file.then_some(Path::new("/etc/ssh/gatepass/sshd_config.conf"));
    let composed = compose(&base, dropin, dropin_usable, included, &d, &prior);
    let back = strip(path, &composed.main).expect("gatepass's own file strips");
    assert_eq!(back, base, "strip(compose(x)) != x");
});
