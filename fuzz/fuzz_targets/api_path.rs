//! The request path canonicalizer: never panics, and what it accepts is a
//! fixed point (canonical text parses to itself) with no empty, `.` or `..`
//! segment, so the ACL and the router can only ever see one form.
#![no_main]

use gatepass_server::path::ApiPath;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    let Ok(p) = ApiPath::parse(raw) else { return };
    let text = p.as_str();
    for seg in text.split('/') {
        assert!(!seg.is_empty() || text.is_empty(), "empty segment in {text:?}");
        assert!(seg != "." && seg != "..", "dot segment in {text:?}");
    }
    let again = ApiPath::parse(&format!("/v1/{text}")).expect("canonical path parses again");
    assert_eq!(again.as_str(), text);
});
