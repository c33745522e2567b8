//! The policy every gateway token carries: the gateway's own paths and the
//! renewal of its token, nothing else.

pub use gatepass_api::pam::GATEWAY_POLICY;

pub const GATEWAY_POLICY_TEXT: &str = r#"# What a gateway's own token may do: follow its sessions, open and end
# them, report its start, and renew itself.
path "pam/gateway/self/*" {
  capabilities = ["read", "update"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
"#;
