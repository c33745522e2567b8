//! The CLI's error type. Its variant decides the exit code, so that scripts
//! can tell "the server said no" (2) from "we never got an answer" (1).

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the request.
    #[error("{}", ApiMessage { action, status: *status, errors })]
    Api {
        /// What we were doing, e.g. "reading sys/mounts".
        action: String,
        status: u16,
        errors: Vec<String>,
        hint: Option<String>,
    },
    /// Nothing at the path (Vault's "No value found").
    #[error("no value found at {0}")]
    NotFound(String),
    /// Arguments clap could not check.
    #[error("{0}")]
    Usage(String),
    /// Configuration, files, the terminal or the network.
    #[error("{0}")]
    Local(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Api { .. } | Error::NotFound(_) | Error::Usage(_) => 2,
            Error::Local(_) => 1,
        }
    }

    pub fn hint(&self) -> Option<&str> {
        match self {
            Error::Api { hint, .. } => hint.as_deref(),
            _ => None,
        }
    }

    /// Wraps an error of the API client. `has_token` says whether a token
    /// was sent: a refusal without one most likely means "log in first".
    pub fn from_api(e: gatepass_api::Error, action: &str, has_token: bool) -> Error {
        use gatepass_api::Error as E;
        match e {
            E::Config(msg) => Error::Local(msg),
            E::Transport { addr, source } => {
                let cause = root_cause(&source);
                let mut msg = format!("{action}: cannot reach the server at {addr}: {cause}");
                if cause.contains("certificate") || cause.contains("Certificate") {
                    msg.push_str(
                        "\nHint: set GATEPASS_CACERT (or --ca-cert) to the server's CA certificate",
                    );
                }
                Error::Local(msg)
            }
            E::Api { status, errors } => Error::Api {
                action: action.to_string(),
                status,
                errors,
                hint: (status == 403 && !has_token).then(|| {
                    "no token is set: run `gatepass login`, or set GATEPASS_TOKEN".to_string()
                }),
            },
            E::Decode(msg) => Error::Local(format!(
                "{action}: unexpected answer from the server: {msg}"
            )),
        }
    }
}

/// reqwest's own message is only "error sending request for url (…)"; the
/// useful part ("Connection refused", "invalid peer certificate") is the
/// innermost source.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

struct ApiMessage<'a> {
    action: &'a str,
    status: u16,
    errors: &'a [String],
}

impl fmt::Display for ApiMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors {
            [] => write!(
                f,
                "{}: the server answered {} with no details",
                self.action, self.status
            ),
            [one] => write!(f, "{}: {one} (HTTP {})", self.action, self.status),
            many => {
                write!(f, "{} (HTTP {}):", self.action, self.status)?;
                for e in many {
                    write!(f, "\n  * {e}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_messages() {
        let e = |errors: &[&str]| Error::Api {
            action: "reading x".into(),
            status: 403,
            errors: errors.iter().map(|s| s.to_string()).collect(),
            hint: None,
        };
        assert_eq!(
            e(&["permission denied"]).to_string(),
            "reading x: permission denied (HTTP 403)"
        );
        assert_eq!(
            e(&["a", "b"]).to_string(),
            "reading x (HTTP 403):\n  * a\n  * b"
        );
        assert_eq!(
            e(&[]).to_string(),
            "reading x: the server answered 403 with no details"
        );
        assert_eq!(e(&[]).exit_code(), 2);
        assert_eq!(Error::Local("x".into()).exit_code(), 1);
    }

    #[test]
    fn login_hint_only_without_token() {
        let api = || gatepass_api::Error::Api {
            status: 403,
            errors: vec!["permission denied".into()],
        };
        assert!(Error::from_api(api(), "reading x", false).hint().is_some());
        assert!(Error::from_api(api(), "reading x", true).hint().is_none());
    }
}
