//! The one canonical form of a request path. Every request's path is parsed
//! here exactly once, before authorization and routing, so that the ACL
//! checks the very string the router dispatches on: a path that could be
//! read two ways (`ssh//sign/admin`, `ssh/x/../sign/admin`,
//! `ssh/sign%2Fadmin`) is refused instead of being guessed at.
//!
//! The rules, applied to the raw path of the request URI:
//!
//! 1. It starts with `/v1/`, which is dropped.
//! 2. It is percent-decoded once, as Go's net/http decodes paths for Vault
//!    (so `%61dmin` is `admin`). Escapes of `/`, `.` and `%` (`%2F`, `%2E`,
//!    `%25`, any case) are refused: each would turn into a separator, a dot
//!    segment or a second round of decoding. A malformed escape is refused.
//! 3. The decoded text must be UTF-8 without control characters.
//! 4. One trailing `/` is dropped (Vault clients send `LIST …/roles/`).
//! 5. Every `/`-separated segment must be non-empty and not `.` or `..`.
//!
//! No HTTP types are used here, so the parser can be tested (and fuzzed) as
//! a plain function.

use std::fmt;

/// Why a path was refused; shown to the client with status 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("invalid request path: paths start with /v1/")]
    NoPrefix,
    #[error("invalid request path: malformed percent-escape {0:?}")]
    BadEscape(String),
    #[error("invalid request path: the escape {0:?} is not allowed in a path (it encodes '/', '.' or '%')")]
    EncodedSeparator(String),
    #[error("invalid request path: not valid UTF-8 after percent-decoding")]
    NotUtf8,
    #[error("invalid request path: control characters are not allowed")]
    Control,
    #[error("invalid request path: empty segment ('//') is not allowed")]
    EmptySegment,
    #[error("invalid request path: '.' and '..' segments are not allowed")]
    DotSegment,
}

impl From<PathError> for crate::error::Error {
    fn from(e: PathError) -> Self {
        crate::error::Error::InvalidRequest(e.to_string())
    }
}

/// A request path in canonical form, below `/v1/`: no leading or trailing
/// `/`, no empty, `.` or `..` segment, decoded. The empty path (`/v1/`) has
/// no segments. Only [`ApiPath::parse`] makes one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ApiPath(String);

impl ApiPath {
    /// Parses the raw (still percent-encoded) path of a request URI, such
    /// as `/v1/ssh/sign/admin`, by the rules in the module documentation.
    pub fn parse(raw: &str) -> Result<ApiPath, PathError> {
        let rest = raw.strip_prefix("/v1/").ok_or(PathError::NoPrefix)?;
        let decoded = String::from_utf8(decode(rest)?).map_err(|_| PathError::NotUtf8)?;
        if decoded.chars().any(char::is_control) {
            return Err(PathError::Control);
        }
        let path = match decoded.strip_suffix('/') {
            // `/v1//`: the one trailing slash is all there is after `/v1/`.
            Some("") => return Err(PathError::EmptySegment),
            Some(p) => p,
            None => &decoded,
        };
        if !path.is_empty() {
            for seg in path.split('/') {
                check_segment(seg)?;
            }
        }
        Ok(ApiPath(path.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated segments; none for the empty path.
    pub fn segments(&self) -> Vec<&str> {
        if self.0.is_empty() {
            Vec::new()
        } else {
            self.0.split('/').collect()
        }
    }
}

impl std::ops::Deref for ApiPath {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ApiPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for ApiPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

fn check_segment(seg: &str) -> Result<(), PathError> {
    match seg {
        "" => Err(PathError::EmptySegment),
        "." | ".." => Err(PathError::DotSegment),
        _ => Ok(()),
    }
}

/// Percent-decodes once. Hand-written rather than a lenient decoder because
/// each escape must be inspected: malformed ones and those that encode a
/// separator are errors, not text.
fn decode(s: &str) -> Result<Vec<u8>, PathError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let escape = s.get(i..(i + 3).min(s.len())).unwrap_or("%");
        let value = match (bytes.get(i + 1), bytes.get(i + 2)) {
            (Some(h), Some(l)) => hex(*h).zip(hex(*l)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match value {
            None => return Err(PathError::BadEscape(escape.to_owned())),
            Some(b'/' | b'.' | b'%') => return Err(PathError::EncodedSeparator(escape.to_owned())),
            Some(b) => out.push(b),
        }
        i += 3;
    }
    Ok(out)
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// True for a name that cannot be one path segment: empty, `.` or `..`.
/// Every validator of names that end up in paths (roles, users, AppRole
/// roles, issuers, policies, mounts) refuses these, whether the name came in
/// the path or in a body field.
pub fn is_dot_or_empty(name: &str) -> bool {
    check_segment(name).is_err()
}

/// A mount path (secrets engine or auth method) without slashes at its
/// ends: `oidc`, `/oidc/`, `team/oidc` → `oidc`, `oidc`, `team/oidc`;
/// refused unless 1-128 characters of '/'-separated parts of letters, digits,
/// '-', '_' or '.', none of them `.`, `..` or empty. `what` names it in the
/// error ("mount", "auth").
pub fn mount_path(path: &str, what: &str) -> crate::error::Result<String> {
    let p = path.trim_matches('/');
    let ok = !p.is_empty()
        && p.len() <= 128
        && p.split('/').all(|seg| {
            !is_dot_or_empty(seg)
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if !ok {
        return Err(crate::error::Error::invalid(format!(
            "invalid {what} path {path:?}: use letters, digits, '-', '_' or '.' in '/'-separated parts"
        )));
    }
    Ok(p.to_string())
}

/// The first of `taken` that `path` equals, lies under or holds: mounts may
/// not nest, since requests are routed by the longest mount prefix.
pub fn overlapping<'a>(path: &str, taken: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    taken.into_iter().find(|m| {
        *m == path || path.starts_with(&format!("{m}/")) || m.starts_with(&format!("{path}/"))
    })
}

/// 1-128 letters, digits, '-', '_', '.' or '@': the text of names that
/// end up in paths, storage keys and certificates.
pub fn is_name_text(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

/// Checks a name that becomes one path segment and a storage key part (ssh
/// roles, AppRole roles, userpass users): 1-128 letters, digits, '-', '_',
/// '.' or '@', and not `.` or `..`.
pub fn validate_name(what: &str, name: &str) -> crate::error::Result<()> {
    let ok = !is_dot_or_empty(name) && is_name_text(name);
    if ok {
        Ok(())
    } else {
        Err(crate::error::Error::invalid(format!(
            "{what} must be 1-128 letters, digits, '-', '_', '.' or '@', and not '.' or '..'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_canonical_and_may_not_nest() {
        assert_eq!(mount_path("/team/ssh/", "mount").unwrap(), "team/ssh");
        for bad in ["", "/", "a//b", "a/../b", "a b", "ä"] {
            assert!(mount_path(bad, "mount").is_err(), "{bad:?}");
        }
        let taken = ["ssh", "team/ca"];
        assert_eq!(overlapping("ssh", taken), Some("ssh"));
        assert_eq!(overlapping("ssh/inner", taken), Some("ssh"));
        assert_eq!(overlapping("team", taken), Some("team/ca"));
        assert_eq!(overlapping("sshx", taken), None);
        assert_eq!(overlapping("team/cb", taken), None);
    }

    fn ok(raw: &str) -> String {
        match ApiPath::parse(raw) {
            Ok(p) => p.as_str().to_owned(),
            Err(e) => panic!("{raw:?}: {e}"),
        }
    }

    #[test]
    fn canonical_paths() {
        for (raw, want) in [
            ("/v1/ssh/sign/admin", "ssh/sign/admin"),
            ("/v1/ssh/sign/admin/", "ssh/sign/admin"),
            ("/v1/ssh/roles/", "ssh/roles"),
            ("/v1/ssh/sign/%61dmin", "ssh/sign/admin"),
            ("/v1/ssh/sign/%61DMIN", "ssh/sign/aDMIN"),
            ("/v1/a+b/c d/%20x", "a+b/c d/ x"),
            ("/v1/ssh/roles/a.b/..c/...", "ssh/roles/a.b/..c/..."),
            ("/v1/caf%C3%A9", "café"),
            ("/v1/", ""),
        ] {
            assert_eq!(ok(raw), want, "{raw}");
        }
        assert!(ApiPath::parse("/v1/").unwrap().segments().is_empty());
        assert_eq!(
            ApiPath::parse("/v1/a/b").unwrap().segments(),
            vec!["a", "b"]
        );
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        use PathError::*;
        for (raw, want) in [
            ("/ssh/sign/admin", NoPrefix),
            ("/v1", NoPrefix),
            ("/v1//", EmptySegment),
            ("/v1//ssh", EmptySegment),
            ("/v1/ssh//sign/admin", EmptySegment),
            ("/v1/ssh/sign/admin//", EmptySegment),
            ("/v1/ssh/./sign/admin", DotSegment),
            ("/v1/ssh/sign/.", DotSegment),
            ("/v1/ssh/sign/./", DotSegment),
            ("/v1/ssh/x/../sign/admin", DotSegment),
            ("/v1/..", DotSegment),
            ("/v1/ssh%2Fsign%2Fadmin", EncodedSeparator("%2F".into())),
            ("/v1/ssh/sign%2fadmin", EncodedSeparator("%2f".into())),
            (
                "/v1/ssh/%2e%2e/ssh/sign/admin",
                EncodedSeparator("%2e".into()),
            ),
            ("/v1/ssh/%2E", EncodedSeparator("%2E".into())),
            ("/v1/ssh/%252F", EncodedSeparator("%25".into())),
            ("/v1/ssh/%", BadEscape("%".into())),
            ("/v1/ssh/%6", BadEscape("%6".into())),
            ("/v1/ssh/%zz", BadEscape("%zz".into())),
            ("/v1/ssh/%+1", BadEscape("%+1".into())),
            ("/v1/ssh/%ff", NotUtf8),
            ("/v1/ssh/%00", Control),
            ("/v1/ssh/a%0Ab", Control),
            ("/v1/ssh/a%7Fb", Control),
            ("/v1/ssh/a%C2%85b", Control),
        ] {
            assert_eq!(ApiPath::parse(raw), Err(want), "{raw}");
        }
    }

    /// Whatever the input, the parse either fails or gives a path that parses
    /// again to itself: nothing accepted has a second reading.
    #[test]
    fn parse_is_idempotent_on_random_input() {
        let alphabet: &[&str] = &[
            "a", "b", "/", ".", "%", "2", "e", "E", "f", "F", "%2F", "%2e", "%61", "%25", "%00",
            "%C3", "%A9", "+", "~", " ",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 12) as usize;
            let mut raw = String::from("/v1/");
            for _ in 0..len {
                raw.push_str(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            if let Ok(p) = ApiPath::parse(&raw) {
                assert!(!p.starts_with('/') && !p.ends_with('/'), "{raw:?} → {p}");
                assert!(p.segments().iter().all(|s| !is_dot_or_empty(s)), "{raw:?}");
                if !p.contains('%') {
                    let again = ApiPath::parse(&format!("/v1/{p}"));
                    assert_eq!(again.as_ref(), Ok(&p), "{raw:?}");
                }
            }
        }
    }

    #[test]
    fn dot_names() {
        for bad in ["", ".", ".."] {
            assert!(is_dot_or_empty(bad));
        }
        for good in ["a", ".a", "..a", "...", "a.", "a..b"] {
            assert!(!is_dot_or_empty(good));
            validate_name("role name", good).unwrap();
        }
        let long = "a".repeat(129);
        for bad in ["", ".", "..", "a/b", "a b", "é", long.as_str()] {
            assert!(validate_name("role name", bad).is_err(), "{bad:?}");
        }
    }
}
