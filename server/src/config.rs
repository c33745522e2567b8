//! `server.toml`, the production configuration for `gatepass-server serve`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port for the HTTPS API.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `sqlite:///var/lib/gatepass/gatepass.db` or `postgres://user@host/db`.
    #[serde(default = "default_storage")]
    pub storage: String,
    /// How long `serve` waits at start for a storage it cannot reach (a
    /// database still starting, or restarting), trying again every second,
    /// before it gives up.
    #[serde(default = "default_storage_wait", deserialize_with = "duration")]
    pub storage_wait: Duration,
    /// Connections to PostgreSQL at most, all told: requests queue for
    /// them (see `storage::PoolSize`). Servers sharing one database must
    /// together stay under its `max_connections`.
    #[serde(default)]
    pub storage_connections: crate::storage::PoolSize,
    /// 64 hex characters; made by `gatepass-server init`.
    #[serde(default = "default_seal_key")]
    pub seal_key_file: PathBuf,
    /// Hash-chained JSON lines; the database keeps a copy as well.
    #[serde(default = "default_audit")]
    pub audit_log: Option<PathBuf>,
    /// TLS certificate and key. Without it the server only listens on
    /// loopback (for a local reverse proxy).
    pub tls: Option<TlsConfig>,
    /// Connection limits of the listener.
    #[serde(default)]
    pub limits: Limits,
    /// Reverse proxies (addresses or blocks) whose `X-Forwarded-For` names
    /// the client (see `http::proxies`); none by default, when the client is the
    /// connection's peer. Read in their one form, as peers are: an address
    /// alone is its block of one, an IPv4 block written as IPv6
    /// (`::ffff:127.0.0.1/128`) the IPv4 block.
    #[serde(default, deserialize_with = "cidrs")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long records that are no longer needed stay in storage.
    #[serde(default)]
    pub retention: Retention,
}

/// What the storage keeps once it is no longer needed, and for how long;
/// the `[retention]` table. Used OTPs and expired leases go at once (the
/// lease sweeper), so these cover only what is still worth keeping a while.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Lines of the database's copy of the audit log older than this are
    /// deleted. The audit file is the record (rotated by logrotate); the
    /// copy serves `sys/audit-log`.
    #[serde(deserialize_with = "duration")]
    pub audit_copy: Duration,
    /// Certificates stay in the inventory (`ssh/certs`) and revoked ones in
    /// the revocation list this long after they expire, for lookups after
    /// the fact. The KRL is made from the revocation list and leaves out
    /// what has expired already, so removing them never changes it.
    #[serde(deserialize_with = "duration")]
    pub expired_certificates: Duration,
    /// How often the clean-up runs (and gives freed space back to the file
    /// system, on SQLite).
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Session recordings (their chunks, ends and keys) are deleted this
    /// long after they began, once their session has ended; each deletion
    /// is an audit event. Unset (the default): recordings are kept until
    /// removed by hand, since they are evidence and how long to keep it is
    /// the operator's decision, not a default's.
    #[serde(deserialize_with = "optional_duration")]
    pub recordings: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            audit_copy: Duration::from_secs(30 * 86_400),
            expired_certificates: Duration::from_secs(86_400),
            interval: Duration::from_secs(600),
            recordings: None,
        }
    }
}

/// Bounds on what one client connection may hold; the `[limits]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections at most; 0: as many as the open-file limit allows
    /// (less a reserve for the server's own files). A configured number is
    /// capped the same way.
    pub max_connections: usize,
    /// Open connections from one client address at most; 0: no limit.
    /// Clients behind one NAT or proxy share an address, so set it only
    /// where that is not the case.
    pub max_connections_per_address: usize,
    /// Time for a client to finish the TLS handshake.
    #[serde(deserialize_with = "duration")]
    pub tls_handshake_timeout: Duration,
    /// Time for a client to send a whole request header (HTTP/1.1), from
    /// its first byte; a kept-alive connection waiting for its next request
    /// is the idle timeout's.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Time for a client to send a whole request body, from the moment its
    /// header has come (Vault's `http_read_timeout`, 30 s, bounds the same);
    /// over it the request is answered 408 and the connection closed.
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// A connection with no byte moved and no request in flight for this
    /// long is closed; so is one whose client has taken nothing of what
    /// the server writes for this long.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 0,
            max_connections_per_address: 0,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// A duration in the API's notation (`10s`, `2m`, `1h`; a bare number is
/// seconds), above zero.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    match crate::duration::parse(text) {
        Some(s) if s > 0 => Ok(Duration::from_secs(s as u64)),
        _ => Err(format!(
            "{text:?} is not a duration above zero (like 10s, 2m or 1h)"
        )),
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn cidrs<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            crate::request::cidr(s).ok_or_else(|| {
                serde::de::Error::custom(format!("{s:?} is not an IP address or CIDR block"))
            })
        })
        .collect()
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8200))
}
fn default_storage() -> String {
    "sqlite:///var/lib/gatepass/gatepass.db".into()
}
fn default_storage_wait() -> Duration {
    Duration::from_secs(60)
}
fn default_seal_key() -> PathBuf {
    PathBuf::from("/etc/gatepass/seal.key")
}
fn default_audit() -> Option<PathBuf> {
    Some(PathBuf::from("/var/log/gatepass/audit.log"))
}

impl ServerConfig {
    pub fn parse(text: &str) -> Result<ServerConfig> {
        let cfg: ServerConfig = toml::from_str(text)
            .map_err(|e| Error::invalid(format!("invalid configuration: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<ServerConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
    }

    fn validate(&self) -> Result<()> {
        if self.tls.is_none() && !self.listen.ip().is_loopback() {
            return Err(Error::invalid(format!(
                "refusing plain HTTP on {}: add a [tls] section, or listen on 127.0.0.1 behind a TLS proxy",
                self.listen
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../../packaging/server.toml");
        let cfg = ServerConfig::parse(text).unwrap();
        assert!(cfg.tls.is_some());
        assert_eq!(cfg.storage_wait, Duration::from_secs(60));
    }

    #[test]
    fn storage_wait_defaults_to_a_minute_and_parses_durations() {
        let cfg = ServerConfig::parse("listen = \"127.0.0.1:8200\"").unwrap();
        assert_eq!(cfg.storage_wait, Duration::from_secs(60));
        let cfg =
            ServerConfig::parse("listen = \"127.0.0.1:8200\"\nstorage_wait = \"5m\"").unwrap();
        assert_eq!(cfg.storage_wait, Duration::from_secs(300));
        assert!(ServerConfig::parse("storage_wait = \"soon\"").is_err());
    }

    #[test]
    fn storage_connections_default_to_16_and_leave_room_for_the_probe_and_listener() {
        let cfg = ServerConfig::parse("listen = \"127.0.0.1:8200\"").unwrap();
        assert_eq!(cfg.storage_connections.get(), 16);
        let cfg =
            ServerConfig::parse("listen = \"127.0.0.1:8200\"\nstorage_connections = 40").unwrap();
        assert_eq!(cfg.storage_connections.get(), 40);
        let e = ServerConfig::parse("listen = \"127.0.0.1:8200\"\nstorage_connections = 2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 3"), "{e}");
    }

    #[test]
    fn refuses_plain_http_off_loopback_and_unknown_keys() {
        assert!(ServerConfig::parse("listen = \"0.0.0.0:8200\"").is_err());
        assert!(ServerConfig::parse("listen = \"127.0.0.1:8200\"").is_ok());
        assert!(ServerConfig::parse("lisen = \"127.0.0.1:8200\"").is_err());
    }

    #[test]
    fn limits_have_safe_defaults_and_parse_durations() {
        let cfg = ServerConfig::parse("listen = \"127.0.0.1:8200\"").unwrap();
        assert_eq!(cfg.limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(cfg.limits.body_read_timeout, Duration::from_secs(30));
        assert_eq!(cfg.limits.idle_timeout, Duration::from_secs(60));
        let cfg = ServerConfig::parse(
            "listen = \"127.0.0.1:8200\"\n[limits]\nidle_timeout = \"2m\"\nmax_connections_per_address = 64",
        )
        .unwrap();
        assert_eq!(cfg.limits.idle_timeout, Duration::from_secs(120));
        assert_eq!(cfg.limits.max_connections_per_address, 64);
        assert!(ServerConfig::parse("[limits]\nidle_timeout = \"0s\"").is_err());
        assert!(ServerConfig::parse("[limits]\nidle_timout = \"1s\"").is_err());
    }

    #[test]
    fn retention_has_defaults_and_parses_durations() {
        let cfg = ServerConfig::parse("listen = \"127.0.0.1:8200\"").unwrap();
        assert_eq!(cfg.retention, Retention::default());
        assert_eq!(cfg.retention.audit_copy, Duration::from_secs(30 * 86_400));
        let cfg = ServerConfig::parse(
            "[retention]\naudit_copy = \"7d\"\nexpired_certificates = \"2h\"\ninterval = \"1m\"",
        )
        .unwrap();
        assert_eq!(cfg.retention.audit_copy, Duration::from_secs(7 * 86_400));
        assert_eq!(
            cfg.retention.expired_certificates,
            Duration::from_secs(7200)
        );
        assert_eq!(cfg.retention.interval, Duration::from_secs(60));
        assert_eq!(cfg.retention.recordings, None, "kept unless configured");
        let cfg = ServerConfig::parse("[retention]\nrecordings = \"90d\"").unwrap();
        assert_eq!(
            cfg.retention.recordings,
            Some(Duration::from_secs(90 * 86_400))
        );
        assert!(ServerConfig::parse("[retention]\nrecordings = \"0s\"").is_err());
        assert!(ServerConfig::parse("[retention]\naudit_copy = \"0s\"").is_err());
        assert!(ServerConfig::parse("[retention]\nleases = \"1d\"").is_err());
    }

    #[test]
    fn trusted_proxies_are_read_in_their_one_form() {
        let cfg = ServerConfig::parse(
            "trusted_proxies = [\"127.0.0.1\", \"::ffff:10.9.0.0/112\", \"::1/128\", \"10.1.2.3/8\"]",
        )
        .unwrap();
        let nets: Vec<String> = cfg.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            nets,
            ["127.0.0.1/32", "10.9.0.0/16", "::1/128", "10.0.0.0/8"]
        );
        // A peer on an IPv6 socket is read as IPv4, so a block written as
        // IPv6-mapped must match it.
        let peer: std::net::IpAddr = "::ffff:10.9.4.4".parse().unwrap();
        assert!(cfg.trusted_proxies[1].contains(&peer.to_canonical()));
        let e = ServerConfig::parse("trusted_proxies = [\"proxy.local\"]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"proxy.local\" is not an IP address or CIDR block"),
            "{e}"
        );
    }
}
