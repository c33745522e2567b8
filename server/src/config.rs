//! `server.toml`, the production configuration for `gatepass-server serve`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// 64 hex characters; made by `gatepass-server init`.
    #[serde(default = "default_seal_key")]
    pub seal_key_file: PathBuf,
    /// Hash-chained JSON lines; the database keeps a copy as well.
    #[serde(default = "default_audit")]
    pub audit_log: Option<PathBuf>,
    /// TLS certificate and key. Without it the server only listens on
    /// loopback (for a local reverse proxy).
    pub tls: Option<TlsConfig>,
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
    }

    #[test]
    fn refuses_plain_http_off_loopback_and_unknown_keys() {
        assert!(ServerConfig::parse("listen = \"0.0.0.0:8200\"").is_err());
        assert!(ServerConfig::parse("listen = \"127.0.0.1:8200\"").is_ok());
        assert!(ServerConfig::parse("lisen = \"127.0.0.1:8200\"").is_err());
    }
}
