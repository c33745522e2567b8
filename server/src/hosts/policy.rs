//! The policy every host token carries, and its earlier texts (brought up
//! to date at start when an admin never edited them).

/// The policy every host token carries.
pub const HOST_POLICY: &str = "gatepass-host";
pub const HOST_POLICY_TEXT: &str = r#"# What a host's own token may do: read its own record and its state,
# report, get its host keys signed, and renew itself.
path "hosts/self" {
  capabilities = ["read"]
}
path "hosts/self/*" {
  capabilities = ["read", "update"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
"#;

/// Earlier texts of [`HOST_POLICY_TEXT`]. A stored host policy still equal
/// to one of them was never edited by an admin and is brought up to date at
/// start; an edited one is left alone.
pub const HOST_POLICY_FORMER_TEXTS: &[&str] = &[
    // Lacked `hosts/self`: a host could not read its own record.
    r#"# What a host's own token may do: read its state, report, get its host
# keys signed, and renew itself.
path "hosts/self/*" {
  capabilities = ["read", "update"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
"#,
];
