//! The wall clock, read once per command; everything below takes `now`
//! (clippy.toml allows `SystemTime::now` only in a clock module).

/// The wall clock, read once per command; everything below takes `now`.
#[allow(clippy::disallowed_methods)]
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
