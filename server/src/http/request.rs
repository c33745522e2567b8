//! A parsed API request as the routes see it: operation, canonical path,
//! the caller's address and token, the input fields and the time.

use std::net::IpAddr;

use crate::auth::wrapping::WrapTtl;
use crate::path::ApiPath;
use crate::request::Fields;

/// Vault's operation, from the HTTP method (and `?list=true`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Read,
    List,
    Write,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::List => "list",
            Operation::Write => "update",
            Operation::Delete => "delete",
        }
    }
}

/// What a handler gets.
#[derive(Debug)]
pub struct Request {
    pub op: Operation,
    /// Path below `/v1/`, canonical (see [`crate::path`]): the ACL checks
    /// and the router dispatches on exactly this.
    pub path: ApiPath,
    pub fields: Fields,
    pub client_ip: Option<IpAddr>,
    /// The token the client presented, if any (never logged).
    pub token: Option<String>,
    /// `X-Vault-Wrap-TTL`: the response is to be wrapped for this long.
    pub wrap_ttl: Option<WrapTtl>,
    pub now: i64,
    /// The client asked to switch to the relay protocol (`Connection:
    /// Upgrade`, `Upgrade: gatepass-relay`) and the connection can.
    pub upgrade: bool,
}
