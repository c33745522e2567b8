//! The helper's configuration, from one of two files:
//!
//! - **vault-ssh-helper's HCL file, read unchanged**: `vault_addr`,
//!   `ssh_mount_point`, `namespace`, `ca_cert`, `ca_path`, `tls_skip_verify`,
//!   `tls_server_name`, `allowed_roles`, `allowed_cidr_list`, with Vault's
//!   defaults (mount `ssh`) and Vault's strictness (an unknown key is an
//!   error). vault-ssh-helper has no timeout setting; here it is 5 s.
//! - **gatepass's own TOML file** (`deny_unknown_fields`): `servers` (tried in
//!   turn), `mount`, `ca_cert`, `timeout`, `allowed_roles`,
//!   `allowed_cidr_list`, `host_token_file`, `syslog_socket`, `hostd_socket`.
//!
//! Either way the check asks hostd first, on its socket
//! ([`crate::hostd::DEFAULT_SOCKET`], or `hostd_socket`; `""` never asks
//! it), and the servers directly when hostd is not there.
//!
//! A file whose name ends in `.hcl` is read as HCL, `.toml` as TOML; any other
//! name is HCL when it sets `vault_addr` and TOML otherwise.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// Where the helper and the PAM module look when told nothing else.
pub const DEFAULT_CONFIG: &str = "/etc/gatepass/helper.toml";
/// Vault's default mount point of the SSH secrets engine.
pub const DEFAULT_MOUNT: &str = "ssh";
/// The bound on one whole check (all servers together).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// sshd's LoginGraceTime defaults to 120 s; a longer check makes no sense.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

/// A configuration that cannot be used; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Which file format a configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// vault-ssh-helper's HCL.
    VaultHcl,
    /// gatepass's TOML.
    Toml,
}

/// The settings both the helper binary and the PAM module run with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub format: Format,
    /// Base URLs (`https://host:port`, no trailing slash), tried in turn.
    pub servers: Vec<String>,
    /// Mount point of the SSH engine (`ssh`): the helper calls
    /// `POST /v1/<mount>/verify`.
    pub mount: String,
    /// Vault Enterprise namespace, sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// PEM file of the CA(s) the server's certificate must chain to.
    pub ca_cert: Option<PathBuf>,
    /// Folder of PEM files of CAs (each file may hold several).
    pub ca_path: Option<PathBuf>,
    /// Accept any server certificate (only with `-dev`).
    pub tls_skip_verify: bool,
    /// Name to check the server's certificate against instead of the
    /// address's host.
    pub tls_server_name: Option<String>,
    /// Roles whose OTPs log in here; `*` is any role; empty refuses all
    /// (vault-ssh-helper's "missing allowed_roles").
    pub allowed_roles: Vec<String>,
    /// Addresses other than this host's own that an OTP may be bound to.
    pub allowed_cidr_list: Vec<IpNet>,
    /// Bound on the whole check.
    pub timeout: Duration,
    /// The host's own token (written by hostd once enrolled), sent as
    /// `X-Vault-Token` so that the server can bind the OTP to this host.
    pub host_token_file: Option<PathBuf>,
    /// The syslog socket (default: the system's, `/dev/log`).
    pub syslog_socket: Option<PathBuf>,
    /// hostd's login socket, asked before the servers; `None`: never.
    pub hostd_socket: Option<PathBuf>,
}

/// vault-ssh-helper's configuration file, key for key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultHcl {
    vault_addr: Option<String>,
    ssh_mount_point: Option<String>,
    namespace: Option<String>,
    ca_cert: Option<String>,
    ca_path: Option<String>,
    tls_skip_verify: Option<Flag>,
    tls_server_name: Option<String>,
    allowed_roles: Option<Strings>,
    allowed_cidr_list: Option<Strings>,
}

/// gatepass's own configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatepassToml {
    servers: Strings,
    mount: Option<String>,
    ca_cert: Option<PathBuf>,
    timeout: Option<Timeout>,
    allowed_roles: Option<Strings>,
    allowed_cidr_list: Option<Strings>,
    host_token_file: Option<PathBuf>,
    syslog_socket: Option<PathBuf>,
    hostd_socket: Option<PathBuf>,
}

/// Vault writes lists as comma-separated strings; a list is accepted too.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Strings {
    One(String),
    Many(Vec<String>),
}

impl Strings {
    fn items(self) -> Vec<String> {
        let all = match self {
            Strings::One(s) => s.split(',').map(str::to_string).collect(),
            Strings::Many(v) => v,
        };
        all.into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// HCL 1 (Vault's parser) also reads `"true"` as a boolean.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Text(String),
}

impl Flag {
    fn value(&self) -> Result<bool, ConfigError> {
        match self {
            Flag::Bool(b) => Ok(*b),
            Flag::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "t" => Ok(true),
                "false" | "0" | "f" | "" => Ok(false),
                _ => err(format!("tls_skip_verify: {t:?} is not a boolean")),
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Timeout {
    Seconds(u64),
    Text(String),
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// Reads the format from the file name, else from the text.
pub fn detect_format(path: &Path, text: &str) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some("hcl") => Format::VaultHcl,
        Some("toml") => Format::Toml,
        _ => {
            let sets_vault_addr = text.lines().any(|l| {
                l.trim_start()
                    .strip_prefix("vault_addr")
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            });
            if sets_vault_addr {
                Format::VaultHcl
            } else {
                Format::Toml
            }
        }
    }
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text, detect_format(path, &text))
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Parses a configuration's text in the given format.
    pub fn parse(text: &str, format: Format) -> Result<Config, ConfigError> {
        match format {
            Format::VaultHcl => Config::from_hcl(text),
            Format::Toml => Config::from_toml(text),
        }
    }

    fn from_hcl(text: &str) -> Result<Config, ConfigError> {
        let v: VaultHcl =
            hcl::from_str(text).map_err(|e| ConfigError(format!("invalid HCL: {e}")))?;
        let Some(addr) = non_empty(v.vault_addr) else {
            return err("missing config 'vault_addr'");
        };
        Ok(Config {
            format: Format::VaultHcl,
            servers: vec![server_url(&addr)?],
            mount: mount_point(
                non_empty(v.ssh_mount_point)
                    .as_deref()
                    .unwrap_or(DEFAULT_MOUNT),
            )?,
            namespace: non_empty(v.namespace),
            ca_cert: non_empty(v.ca_cert).map(PathBuf::from),
            ca_path: non_empty(v.ca_path).map(PathBuf::from),
            tls_skip_verify: v
                .tls_skip_verify
                .map(|f| f.value())
                .transpose()?
                .unwrap_or(false),
            tls_server_name: non_empty(v.tls_server_name),
            allowed_roles: v.allowed_roles.map(Strings::items).unwrap_or_default(),
            allowed_cidr_list: cidrs(v.allowed_cidr_list)?,
            timeout: DEFAULT_TIMEOUT,
            host_token_file: None,
            syslog_socket: None,
            hostd_socket: Some(PathBuf::from(crate::hostd::DEFAULT_SOCKET)),
        })
    }

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let v: GatepassToml = toml::from_str(text)
            .map_err(|e| ConfigError(format!("invalid TOML: {}", e.message())))?;
        let servers = v
            .servers
            .items()
            .iter()
            .map(|s| server_url(s))
            .collect::<Result<Vec<_>, _>>()?;
        if servers.is_empty() {
            return err("servers: at least one server address is needed");
        }
        let timeout = match v.timeout {
            None => DEFAULT_TIMEOUT,
            Some(Timeout::Seconds(s)) => check_timeout(Duration::from_secs(s))?,
            Some(Timeout::Text(t)) => parse_timeout(&t)?,
        };
        Ok(Config {
            format: Format::Toml,
            servers,
            mount: mount_point(v.mount.as_deref().unwrap_or(DEFAULT_MOUNT))?,
            namespace: None,
            ca_cert: v.ca_cert,
            ca_path: None,
            tls_skip_verify: false,
            tls_server_name: None,
            allowed_roles: v
                .allowed_roles
                .map(Strings::items)
                .unwrap_or_else(|| vec!["*".to_string()]),
            allowed_cidr_list: cidrs(v.allowed_cidr_list)?,
            timeout,
            host_token_file: v.host_token_file,
            syslog_socket: v.syslog_socket,
            // An empty path turns hostd off.
            hostd_socket: match v.hostd_socket {
                None => Some(PathBuf::from(crate::hostd::DEFAULT_SOCKET)),
                Some(p) if p.as_os_str().is_empty() => None,
                Some(p) => Some(p),
            },
        })
    }

    /// Overrides the mount point (the PAM module's `mount=`).
    pub fn set_mount(&mut self, mount: &str) -> Result<(), ConfigError> {
        self.mount = mount_point(mount)?;
        Ok(())
    }

    /// Checks the transport settings: https with a pinned CA unless `dev`,
    /// where http, no CA and `tls_skip_verify` are allowed as in
    /// vault-ssh-helper's dev mode. Returns the warnings to show in dev mode.
    pub fn check_transport(&self, dev: bool) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        for s in &self.servers {
            if s.starts_with("http://") {
                if !dev {
                    return err(format!(
                        "{s}: plain http:// sends OTPs in the clear; use https:// (or -dev for testing)"
                    ));
                }
                warnings.push(format!("{s}: plain http://, OTPs travel in the clear"));
            }
        }
        if self.tls_skip_verify {
            if !dev {
                return err(
                    "tls_skip_verify = true would accept any server; it is only honoured with -dev",
                );
            }
            warnings.push("tls_skip_verify: the server's certificate is not checked".to_string());
        }
        if self.ca_cert.is_none() && self.ca_path.is_none() {
            if !dev {
                return err(
                    "certification information needs to be provided using ca_cert or ca_path option \
                     (the server's CA is pinned)",
                );
            }
            warnings.push("no ca_cert/ca_path: the system's trusted CAs are used".to_string());
        }
        Ok(warnings)
    }
}

/// `https://host:port` without a trailing slash; refuses anything else.
fn server_url(addr: &str) -> Result<String, ConfigError> {
    let trimmed = addr.trim().trim_end_matches('/');
    let url = url::Url::parse(trimmed)
        .map_err(|e| ConfigError(format!("server address {addr:?}: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return err(format!(
            "server address {addr:?} must be https://HOST[:PORT]"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return err(format!(
            "server address {addr:?} must be https://HOST[:PORT]"
        ));
    }
    Ok(trimmed.to_string())
}

/// A mount path: segments of `[A-Za-z0-9._-]`, no `..`.
fn mount_point(m: &str) -> Result<String, ConfigError> {
    let m = m.trim().trim_matches('/');
    let ok = !m.is_empty()
        && m.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        });
    if !ok {
        return err(format!("mount point {m:?} is not a valid path"));
    }
    Ok(m.to_string())
}

fn cidrs(list: Option<Strings>) -> Result<Vec<IpNet>, ConfigError> {
    list.map(Strings::items)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| ConfigError(format!("allowed_cidr_list: {c:?} is not a CIDR block")))
        })
        .collect()
}

fn check_timeout(t: Duration) -> Result<Duration, ConfigError> {
    if t.is_zero() || t > MAX_TIMEOUT {
        return err(format!(
            "timeout must be more than 0 and at most {}s",
            MAX_TIMEOUT.as_secs()
        ));
    }
    Ok(t)
}

/// `5s`, `1500ms`, `1m`, or a number of seconds.
pub fn parse_timeout(text: &str) -> Result<Duration, ConfigError> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| ConfigError(format!("timeout {text:?}: expected e.g. 5s, 1500ms or 1m")))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return err(format!("timeout {text:?}: expected e.g. 5s, 1500ms or 1m")),
    };
    check_timeout(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vault-ssh-helper's documented example, as operators have it.
    const VAULT_DOC: &str = r#"
vault_addr = "https://vault.example.com:8200"
tls_skip_verify = false
ca_cert = "/etc/vault-ssh-helper.d/vault.crt"
ssh_mount_point = "ssh"
namespace = "my_namespace"
allowed_roles = "*"
"#;

    #[test]
    fn vault_ssh_helper_config_reads_unchanged() {
        let c = Config::parse(VAULT_DOC, Format::VaultHcl).unwrap();
        assert_eq!(c.servers, ["https://vault.example.com:8200"]);
        assert_eq!(c.mount, "ssh");
        assert_eq!(c.namespace.as_deref(), Some("my_namespace"));
        assert_eq!(
            c.ca_cert,
            Some(PathBuf::from("/etc/vault-ssh-helper.d/vault.crt"))
        );
        assert_eq!(c.allowed_roles, ["*"]);
        assert!(!c.tls_skip_verify);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.check_transport(false).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn hcl_defaults_lists_and_strictness() {
        let c = Config::parse(
            "vault_addr = \"https://10.0.0.1:8200/\"\n# comment\nallowed_cidr_list = \"10.0.0.0/8, 192.168.1.5\"\n\
             allowed_roles = \"otp, ops\"\ntls_skip_verify = \"true\"\nca_path = \"/etc/ca\"\n",
            Format::VaultHcl,
        )
        .unwrap();
        assert_eq!(c.servers, ["https://10.0.0.1:8200"]);
        assert_eq!(c.mount, DEFAULT_MOUNT);
        assert_eq!(c.allowed_roles, ["otp", "ops"]);
        assert_eq!(
            c.allowed_cidr_list,
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.168.1.5/32".parse().unwrap()
            ]
        );
        assert!(c.tls_skip_verify);
        // No allowed_roles: parsed, and every OTP is refused later.
        let c = Config::parse("vault_addr = \"https://v:8200\"", Format::VaultHcl).unwrap();
        assert!(c.allowed_roles.is_empty());
        for bad in [
            "ssh_mount_point = \"ssh\"",
            "vault_addr = \"https://v\"\nunknown_key = 1",
            "vault_addr = \"ftp://v\"",
            "vault_addr = \"https://v\"\nallowed_cidr_list = \"10.0.0.0/33\"",
            "vault_addr = \"https://v\"\nssh_mount_point = \"../sys\"",
            "vault_addr = \"https://v\"\ntls_skip_verify = \"maybe\"",
            "vault_addr = ",
        ] {
            assert!(Config::parse(bad, Format::VaultHcl).is_err(), "{bad}");
        }
    }

    #[test]
    fn toml_config() {
        let c = Config::parse(
            "servers = [\"https://a:8200\", \"https://b:8200/\"]\nmount = \"ssh-prod\"\nca_cert = \"/etc/gatepass/ca.pem\"\n\
             timeout = \"1500ms\"\nallowed_cidr_list = [\"10.1.0.0/16\"]\nhost_token_file = \"/etc/gatepass/host.token\"\n",
            Format::Toml,
        )
        .unwrap();
        assert_eq!(c.servers, ["https://a:8200", "https://b:8200"]);
        assert_eq!(c.mount, "ssh-prod");
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert_eq!(c.allowed_roles, ["*"], "any role by default");
        assert_eq!(
            c.host_token_file,
            Some(PathBuf::from("/etc/gatepass/host.token"))
        );
        assert_eq!(
            c.hostd_socket,
            Some(PathBuf::from(crate::hostd::DEFAULT_SOCKET)),
            "hostd is asked first by default"
        );
        let c = Config::parse(
            "servers = \"https://a\"\nhostd_socket = \"/tmp/h.sock\"",
            Format::Toml,
        )
        .unwrap();
        assert_eq!(c.hostd_socket, Some(PathBuf::from("/tmp/h.sock")));
        let c =
            Config::parse("servers = \"https://a\"\nhostd_socket = \"\"", Format::Toml).unwrap();
        assert_eq!(c.hostd_socket, None, "an empty path turns hostd off");
        let c = Config::parse(
            "servers = \"https://a\"\ntimeout = 3\nallowed_roles = []",
            Format::Toml,
        )
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert!(c.allowed_roles.is_empty());
        for bad in [
            "servers = []",
            "servers = [\"https://a\"]\nvault_addr = \"https://a\"",
            "servers = [\"https://a\"]\ntimeout = \"0s\"",
            "servers = [\"https://a\"]\ntimeout = \"1h\"",
            "servers = [\"https://a\"]\ntimeout = \"soon\"",
            "mount = \"ssh\"",
        ] {
            assert!(Config::parse(bad, Format::Toml).is_err(), "{bad}");
        }
    }

    #[test]
    fn format_from_name_or_text() {
        assert_eq!(
            detect_format(Path::new("/x/config.hcl"), ""),
            Format::VaultHcl
        );
        assert_eq!(
            detect_format(Path::new("/x/helper.toml"), "vault_addr = 1"),
            Format::Toml
        );
        assert_eq!(
            detect_format(Path::new("/x/config"), "  vault_addr = \"https://v\""),
            Format::VaultHcl
        );
        assert_eq!(
            detect_format(Path::new("/x/config"), "servers = [\"https://v\"]"),
            Format::Toml
        );
    }

    #[test]
    fn transport_needs_https_and_a_pinned_ca_unless_dev() {
        let base = "servers = [\"https://a\"]\nca_cert = \"/ca.pem\"\n";
        assert!(Config::parse(base, Format::Toml)
            .unwrap()
            .check_transport(false)
            .is_ok());
        let http = Config::parse(
            "servers = [\"http://a\"]\nca_cert = \"/ca.pem\"",
            Format::Toml,
        )
        .unwrap();
        assert!(http.check_transport(false).is_err());
        assert_eq!(http.check_transport(true).unwrap().len(), 1);
        let no_ca = Config::parse("servers = [\"https://a\"]", Format::Toml).unwrap();
        assert!(no_ca
            .check_transport(false)
            .unwrap_err()
            .0
            .contains("ca_cert or ca_path"));
        assert!(no_ca.check_transport(true).is_ok());
        let skip = Config::parse(
            "vault_addr = \"https://a\"\nca_cert = \"/ca.pem\"\ntls_skip_verify = true",
            Format::VaultHcl,
        )
        .unwrap();
        assert!(skip.check_transport(false).unwrap_err().0.contains("-dev"));
        assert!(skip.check_transport(true).is_ok());
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_timeout("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_timeout("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_timeout("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "0", "-1s", "5h", "3m", "1.5s"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }
}
