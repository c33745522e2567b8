//! `/etc/gatepass/hostd.toml`: where the server is, who this host is, and
//! every path hostd touches (so tests can point it at a private sshd).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG: &str = "/etc/gatepass/hostd.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

/// The whole file. Unknown keys are errors, so a typo does not silently
/// fall back to a default path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The gatepass server, e.g. `https://gatepass.example.com:8200`.
    pub server: String,
    /// PEM CA certificate the server's TLS certificate must chain to; only
    /// it is trusted (pinned).
    pub ca_cert: PathBuf,
    /// File holding the host's own token (mode 0600).
    pub token_file: PathBuf,
    /// This host's id at the server (from enrollment).
    pub host_id: String,
    /// The ssh mount whose CA the host trusts for user certificates.
    #[serde(default = "default_user_mount")]
    pub user_mount: String,
    /// The ssh mount and role that sign this host's keys (none: no host
    /// certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_mount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_role: Option<String>,
    /// "mapped" (AuthorizedPrincipalsFile from the login mappings) or
    /// "default" (a certificate must name the login user).
    #[serde(default = "default_principals")]
    pub principals: String,
    #[serde(default)]
    pub paths: Paths,
    #[serde(default)]
    pub sync: SyncSettings,
}

fn default_user_mount() -> String {
    "ssh".into()
}

fn default_principals() -> String {
    "default".into()
}

/// Every file and program hostd uses on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    /// sshd's main configuration file.
    pub sshd_config: PathBuf,
    /// The drop-in folder; used when the main file Includes it first.
    pub sshd_config_dir: PathBuf,
    /// gatepass's own files: CA keys, KRL, principals, dynamic keys, host
    /// certificates (root, 0755).
    pub managed_dir: PathBuf,
    /// The sshd binary (for `sshd -t` and `sshd -T`).
    pub sshd: PathBuf,
    /// hostd's own state (last sync, what is installed).
    pub state_dir: PathBuf,
    /// How to reload sshd (`sh -c`); unset: SIGHUP to the pid in sshd's PidFile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload_command: Option<String>,
    /// Where `run` answers the OTP login check (pam_gatepass.so,
    /// gatepass-helper) on its open connections to the server; `""`: not
    /// at all.
    pub login_socket: PathBuf,
    /// The host's own `TrustedUserCAKeys` file, which gatepass's line
    /// replaces in sshd's config: its CA keys are added to gatepass's
    /// user_ca.pub (not in mapped mode), so the host keeps trusting them.
    /// `setup` sets it from the file sshd reads when it is unset (on a host
    /// set up by an earlier version, only says how); `""`: none, and
    /// `setup` leaves it so. A change to the file reaches sshd at the next
    /// check (`sync.recheck_seconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_user_ca_keys: Option<PathBuf>,
    /// The host's own `RevokedKeys` file (a KRL or a text file of public
    /// keys), which gatepass's line replaces in sshd's config: what it
    /// revokes is added to gatepass's revoked.krl, so it stays revoked.
    /// Set by `setup` and followed as `host_user_ca_keys` is; `""`: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_revoked_keys: Option<PathBuf>,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            sshd_config: "/etc/ssh/sshd_config".into(),
            sshd_config_dir: "/etc/ssh/sshd_config.d".into(),
            managed_dir: "/etc/ssh/gatepass".into(),
            sshd: "/usr/sbin/sshd".into(),
            state_dir: "/var/lib/gatepass-hostd".into(),
            reload_command: None,
            login_socket: crate::login::DEFAULT_SOCKET.into(),
            host_user_ca_keys: None,
            host_revoked_keys: None,
        }
    }
}

/// The sync loop's timing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    /// How long the server may hold a long-poll (seconds, at most 60).
    pub wait_seconds: u64,
    /// Upper bound of the retry backoff when the server is unreachable.
    pub max_backoff_seconds: u64,
    /// How often the managed files and sshd config lines are checked
    /// against the applied state; what someone else changed is written
    /// back and reported to the server as drift.
    pub recheck_seconds: u64,
}

impl Default for SyncSettings {
    fn default() -> SyncSettings {
        SyncSettings {
            wait_seconds: 30,
            max_backoff_seconds: 60,
            recheck_seconds: 60,
        }
    }
}

/// The server's address: https://, or http:// to a server (a TLS proxy's
/// side) on this host's loopback only. Anywhere else plain HTTP would let
/// whoever is on the way hand this host a CA of their own, which sshd
/// would then trust for every login.
pub fn check_server(server: &str) -> Result<(), String> {
    if server.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = server.strip_prefix("http://") else {
        return Err(format!("server {server:?} must be an https:// URL"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(format!(
            "server {server:?}: plain http:// only to this host's loopback (a local TLS proxy); \
             anywhere else use https://, or anyone on the way could give this host a CA of their own"
        ))
    }
}

impl Config {
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigFileError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigFileError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.check().map_err(|message| ConfigFileError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    fn check(&self) -> Result<(), String> {
        check_server(&self.server)?;
        if !matches!(self.principals.as_str(), "default" | "mapped") {
            return Err(format!(
                "principals = {:?}: must be \"default\" or \"mapped\"",
                self.principals
            ));
        }
        if !(1..=60).contains(&self.sync.wait_seconds) {
            return Err("sync.wait_seconds must be between 1 and 60".into());
        }
        if self.sync.max_backoff_seconds == 0 {
            return Err("sync.max_backoff_seconds must be at least 1".into());
        }
        if self.sync.recheck_seconds == 0 {
            return Err("sync.recheck_seconds must be at least 1".into());
        }
        let p = &self.paths;
        for (name, path) in [
            ("paths.sshd_config", &p.sshd_config),
            ("paths.sshd_config_dir", &p.sshd_config_dir),
            ("paths.managed_dir", &p.managed_dir),
            ("paths.sshd", &p.sshd),
            ("paths.state_dir", &p.state_dir),
        ] {
            if !path.is_absolute() {
                return Err(format!("{name} must be an absolute path"));
            }
        }
        if !(p.login_socket.as_os_str().is_empty() || p.login_socket.is_absolute()) {
            return Err("paths.login_socket must be an absolute path (or \"\" for none)".into());
        }
        for (name, path) in [
            ("paths.host_user_ca_keys", &p.host_user_ca_keys),
            ("paths.host_revoked_keys", &p.host_revoked_keys),
        ] {
            if let Some(path) = path.as_ref().filter(|p| !p.as_os_str().is_empty()) {
                if !path.is_absolute() {
                    return Err(format!(
                        "{name} must be an absolute path (or \"\" for none, which setup leaves alone)"
                    ));
                }
            }
        }
        // The managed folder's paths go into sshd_config unquoted.
        let dir = p.managed_dir.to_string_lossy();
        if dir
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '#' | '%'))
        {
            return Err("paths.managed_dir must not contain whitespace, quotes, '#' or '%'".into());
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# gatepass-hostd configuration, written by `gatepass-hostd setup`.\n\
             # See `gatepass-hostd --help` and /usr/share/doc/gatepass-hostd/hostd.toml.\n\n{body}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_this_hosts_loopback() {
        for ok in [
            "https://gp.example.com:8200",
            "http://127.0.0.1:8200",
            "http://[::1]:8200/",
            "http://localhost:8200",
        ] {
            assert!(check_server(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://gp.example.com:8200",
            "http://10.0.0.5:8200",
            "http://127.0.0.1.evil.example:8200",
            "http://localhost.evil.example",
            "ftp://gp",
            "gp.example.com",
        ] {
            assert!(check_server(bad).is_err(), "{bad}");
        }
    }

    fn minimal() -> &'static str {
        "server = \"https://gp:8200\"\nca_cert = \"/etc/gatepass/server-ca.pem\"\n\
         token_file = \"/etc/gatepass/hostd.token\"\nhost_id = \"h1\"\n"
    }

    #[test]
    fn defaults_and_round_trip() {
        let c = Config::parse(Path::new("x"), minimal()).unwrap();
        assert_eq!(c.paths, Paths::default());
        assert_eq!(c.user_mount, "ssh");
        let again = Config::parse(Path::new("x"), &c.to_toml()).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/hostd.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.paths, Paths::default());
        assert_eq!(c.sync, SyncSettings::default());
        assert_eq!(c.host_mount.as_deref(), Some("ssh-host"));
    }

    #[test]
    fn unknown_keys_and_bad_values_fail() {
        let typo = format!("{}[paths]\nsshd_confg = \"/x\"\n", minimal());
        let e = Config::parse(Path::new("x"), &typo).unwrap_err();
        assert!(e.to_string().contains("sshd_confg"), "{e}");
        let bad = format!("{}principals = \"all\"\n", minimal());
        assert!(Config::parse(Path::new("x"), &bad).is_err());
        let bad = format!("{}[paths]\nmanaged_dir = \"/etc/a b\"\n", minimal());
        assert!(Config::parse(Path::new("x"), &bad).is_err());
        let bad = format!("{}[sync]\nrecheck_seconds = 0\n", minimal());
        let e = Config::parse(Path::new("x"), &bad).unwrap_err();
        assert!(e.to_string().contains("recheck_seconds"), "{e}");
    }
}
