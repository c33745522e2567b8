//! Text that ends up inside a certificate or an sshd file: principals, key
//! IDs, option names and values. These types and checks make sure none of it
//! can carry a newline, a comma (which sshd reads as a list separator in
//! principals files and `source-address`), or other control characters.

use std::fmt;

use crate::error::{Error, Result};

/// A certificate principal: a user or host name. Non-empty, at most 256
/// bytes, printable, no whitespace, no comma.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal(String);

impl Principal {
    pub fn new(s: &str) -> Result<Principal> {
        if s.is_empty() {
            return Err(Error::invalid("a principal may not be empty"));
        }
        if s.len() > 256 {
            return Err(Error::invalid(
                "a principal may not be longer than 256 bytes",
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == ',')
        {
            return Err(Error::invalid(format!(
                "principal {:?} contains {:?}: spaces, commas and control characters are not allowed",
                s, c
            )));
        }
        Ok(Principal(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most principals a certificate may carry: OpenSSH refuses to load a
/// certificate with more (`SSHKEY_CERT_MAX_PRINCIPALS`).
pub const MAX_PRINCIPALS: usize = 256;

/// Splits Vault's comma-separated `valid_principals` into checked principals,
/// dropping duplicates and keeping the order; at most [`MAX_PRINCIPALS`].
pub fn parse_list(text: &str) -> Result<Vec<Principal>> {
    let mut out: Vec<Principal> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() || seen.contains(part) {
            continue;
        }
        let p = Principal::new(part)?;
        seen.insert(part);
        out.push(p);
        if out.len() > MAX_PRINCIPALS {
            return Err(Error::invalid(format!(
                "valid_principals: more than {MAX_PRINCIPALS}, which OpenSSH does not accept"
            )));
        }
    }
    Ok(out)
}

/// A certificate key ID: printable, no control characters, at most 256 bytes.
pub fn check_key_id(s: &str) -> Result<()> {
    if s.len() > 256 {
        return Err(Error::invalid("key_id may not be longer than 256 bytes"));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(Error::invalid("key_id may not contain control characters"));
    }
    Ok(())
}

/// Critical option and extension names: `permit-pty`, `source-address`,
/// `name@domain` — letters, digits and `-_.@`.
pub fn check_option_name(field: &str, name: &str) -> Result<()> {
    if crate::path::is_name_text(name) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{field}: {name:?} is not a valid option name"
        )))
    }
}

/// Option values: no control characters; `source-address` must be a list of
/// addresses or CIDR blocks.
pub fn check_option_value(field: &str, name: &str, value: &str) -> Result<()> {
    if value.len() > 4096 || value.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(format!(
            "{field}: the value of {name} has control characters or is too long"
        )));
    }
    if name == "source-address" {
        source_addresses(value).map_err(|e| Error::invalid(format!("{field}: {e}")))?;
    }
    Ok(())
}

/// Which of a certificate's two option lists an option belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionKind {
    Critical,
    Extension,
}

/// Extensions OpenSSH reads as flags. sshd rejects a certificate whose flag
/// carries data as corrupt, so their value must be empty.
pub const FLAG_EXTENSIONS: [&str; 6] = [
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
    "no-touch-required",
];

/// The critical options OpenSSH knows. sshd refuses a certificate with any
/// other, so others are only signed when a role names them explicitly.
pub const KNOWN_CRITICAL_OPTIONS: [&str; 3] =
    ["force-command", "source-address", "verify-required"];

/// One certificate option: a valid name and value, and the value OpenSSH
/// can parse for the options it knows (flags empty, commands non-empty).
pub fn check_option(kind: OptionKind, field: &str, name: &str, value: &str) -> Result<()> {
    check_option_name(field, name)?;
    check_option_value(field, name, value)?;
    let flag = match kind {
        OptionKind::Extension => FLAG_EXTENSIONS.contains(&name),
        OptionKind::Critical => name == "verify-required",
    };
    if flag && !value.is_empty() {
        return Err(Error::invalid(format!(
            "{field}: {name} is a flag and takes an empty value (got {value:?})"
        )));
    }
    if kind == OptionKind::Critical && name == "force-command" && value.is_empty() {
        return Err(Error::invalid(format!(
            "{field}: force-command needs a command"
        )));
    }
    Ok(())
}

/// Whether a critical option may go onto a certificate at all: one OpenSSH
/// knows, or one the role's `allowed_critical_options` names itself ("*"
/// or an empty list only ever stand for the known ones).
pub fn critical_option_signable(allowed: &[String], name: &str) -> bool {
    KNOWN_CRITICAL_OPTIONS.contains(&name) || allowed.iter().any(|a| a == name)
}

/// The error for a critical option [`critical_option_signable`] refuses.
pub fn unknown_critical_option(field: &str, name: &str) -> Error {
    Error::invalid(format!(
        "{field}: {name:?} is not a critical option OpenSSH knows ({}), and sshd refuses certificates with unknown ones; name it in the role's allowed_critical_options to sign it anyway",
        KNOWN_CRITICAL_OPTIONS.join(", ")
    ))
}

/// Parses a `source-address` value.
pub fn source_addresses(value: &str) -> Result<Vec<ipnet::IpNet>> {
    let nets: Vec<ipnet::IpNet> = value
        .split(',')
        .map(|s| crate::request::parse_cidr("source-address", s.trim()))
        .collect::<Result<_>>()?;
    if nets.is_empty() {
        return Err(Error::invalid("source-address may not be empty"));
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_reject_injection() {
        assert!(Principal::new("alice").is_ok());
        assert!(Principal::new("web-01.example.com").is_ok());
        for bad in ["", "a,b", "a b", "a\nb", "a\tb", "a\u{0}", &"x".repeat(300)] {
            assert!(Principal::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_list("a, b,a,,c").unwrap().len(), 3);
        assert!(parse_list("a,b c").is_err());
    }

    #[test]
    fn options() {
        assert!(check_option_value("x", "source-address", "10.0.0.0/8,192.168.1.1").is_ok());
        assert!(check_option_value("x", "source-address", "10.0.0.0/8,nope").is_err());
        assert!(check_option_value("x", "force-command", "echo\nhi").is_err());
        assert!(check_option_name("x", "permit-pty").is_ok());
        assert!(check_option_name("x", "bad name").is_err());
        assert!(check_key_id("id\n").is_err());
    }
}
