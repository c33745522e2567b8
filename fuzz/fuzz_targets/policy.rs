//! The policy parser (HCL and JSON): never panics on any text, and a parsed
//! policy answers capability questions for any path without panicking.
#![no_main]

use gatepass_server::policy::{Acl, Capability, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    let (text, path) = input;
    let Ok(policy) = Policy::parse("fuzz", text) else {
        return;
    };
    let acl = Acl::new([&policy]);
    let _ = acl.capabilities(path);
    let _ = acl.allows(path, Capability::Read);
    let _ = acl.allows(&format!("{path}/"), Capability::List);
});
