//! The wall clock: clippy.toml bans `SystemTime::now`, and this is the one
//! place of the CLI that reads it.

/// The wall clock, read once per command; everything below takes `now`.
#[allow(clippy::disallowed_methods)]
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
