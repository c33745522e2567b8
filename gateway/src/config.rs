//! `/etc/gatepass/gateway.toml`: where the server is, who this gateway is,
//! where it listens and how long an idle session may stay open.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const DEFAULT_CONFIG: &str = "/etc/gatepass/gateway.toml";
pub const DEFAULT_HOST_KEY: &str = "/var/lib/gatepass-gateway/ssh_host_ed25519_key";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gatepass-gateway";

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read the gateway's config {}: {source} (run `gatepass-gateway setup` first)", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

/// The whole file. Unknown keys are errors, so a typo does not silently
/// fall back to a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The gatepass server, e.g. `https://gatepass.example.com:8200`.
    pub server: String,
    /// PEM CA certificate the server's TLS certificate must chain to; only
    /// it is trusted (pinned).
    pub ca_cert: PathBuf,
    /// File holding the gateway's own token (mode 0600).
    pub token_file: PathBuf,
    /// The name the gateway enrolled under; resources name it.
    pub name: String,
    /// How users' connections reach the gateway: on its own port
    /// (`direct`, the default) or relayed by the server (`relay`: no
    /// inbound port).
    #[serde(default, skip_serializing_if = "Mode::is_direct")]
    pub mode: Mode,
    /// Where the SSH server listens (direct mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `host:port` users' ssh dials (given at enrollment; direct mode only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// The gateway's SSH host key (OpenSSH private key, mode 0600).
    #[serde(default = "default_host_key")]
    pub host_key: PathBuf,
    /// Close a session after this long without data either way: "30m",
    /// "1h", "90s" or seconds; "off" (or 0) for never.
    #[serde(
        default = "default_idle_timeout",
        serialize_with = "write_idle",
        deserialize_with = "read_idle"
    )]
    pub idle_timeout: Option<Duration>,
    #[serde(default)]
    pub sync: SyncSettings,
    /// Where the gateway keeps what must outlive a restart: the recording
    /// spool (`recording-spool/`, chunks not yet delivered to the server).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The key that signs the end of each session recording (ed25519, made
    /// by `setup`, its public half registered at enrollment). Without it
    /// recordings end unsigned (`setup --replace` makes and registers one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_key: Option<PathBuf>,
    #[serde(default)]
    pub recording: RecordingConfig,
}

fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}

/// How recordings are cut into chunks: a chunk is sealed, fsync'd to the
/// spool and sent once it holds `chunk_kib` KiB of events, or
/// `chunk_seconds` after its first event, whichever comes first; a chunk
/// that fills within 100 ms grows up to 4 MiB while the text compresses
/// eightfold, 512 KiB otherwise (`recording::GROW_WINDOW`,
/// `MAX_CHUNK_BYTES`, `MAX_SEALED_BYTES`). A gateway killed mid-session loses at most the chunk being gathered (and what
/// was queued for the spool during its last fsync, milliseconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Record sessions (the default). `false` records nothing: the gateway
    /// warns at start, and tells the server at each session's open, which
    /// then puts a `session_not_recorded` event on record instead of a
    /// recording.
    #[serde(skip_serializing_if = "is_true")]
    pub enabled: bool,
    pub chunk_kib: u64,
    pub chunk_seconds: u64,
    /// The most the recording spool may hold of recordings the server has
    /// not taken yet, in MiB. Past it (the server away for long), and
    /// while the spool cannot be written at all (a full disk), sessions
    /// being recorded end and new ones are refused: none runs unrecorded.
    pub spool_max_mib: u64,
    /// Masking rules (regular expressions): what they match in a session's
    /// output or input is recorded as `*`s, never sealed or stored. A
    /// match lies within one line of at most 4 KiB (see
    /// `recording::Masking`). None by default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mask: Vec<String>,
}

impl Default for RecordingConfig {
    fn default() -> RecordingConfig {
        RecordingConfig {
            enabled: true,
            chunk_kib: 64,
            chunk_seconds: 2,
            spool_max_mib: 1024,
            mask: Vec::new(),
        }
    }
}

fn is_true(b: &bool) -> bool {
    *b
}

/// How users' connections reach the gateway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// On the gateway's own port (`listen`).
    #[default]
    Direct,
    /// Relayed by the server: the gateway dials out for each connection
    /// and listens on no port.
    Relay,
}

impl Mode {
    fn is_direct(&self) -> bool {
        *self == Mode::Direct
    }
}

fn default_host_key() -> PathBuf {
    DEFAULT_HOST_KEY.into()
}

fn default_idle_timeout() -> Option<Duration> {
    Some(Duration::from_secs(30 * 60))
}

/// How the gateway follows its sessions at the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    /// How long the server may hold a long-poll (seconds, 1 to 60).
    pub wait_seconds: u64,
    /// Upper bound of the retry backoff while the server is unreachable.
    pub max_backoff_seconds: u64,
}

impl Default for SyncSettings {
    fn default() -> SyncSettings {
        SyncSettings {
            wait_seconds: 30,
            max_backoff_seconds: 30,
        }
    }
}

/// "30m", "2h", "90s", "1d" or a bare number of seconds; "off" or 0 is
/// None (no idle timeout).
pub fn parse_idle(text: &str) -> Result<Option<Duration>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let bad =
        || format!("idle_timeout {text:?} is not a duration like 30m, 1h or 90s, nor \"off\"");
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(scale).ok_or_else(bad)?;
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

fn read_idle<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Seconds(u64),
        Text(String),
    }
    match Text::deserialize(d)? {
        Text::Seconds(0) => Ok(None),
        Text::Seconds(s) => Ok(Some(Duration::from_secs(s))),
        Text::Text(t) => parse_idle(&t).map_err(serde::de::Error::custom),
    }
}

fn write_idle<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        None => s.serialize_str("off"),
        Some(d) => s.serialize_str(&format!("{}s", d.as_secs())),
    }
}

impl Config {
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigFileError> {
        let fail = |message: String| ConfigFileError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let cfg: Config = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        cfg.check().map_err(fail)?;
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
        if !(self.server.starts_with("https://") || self.server.starts_with("http://")) {
            return Err(format!("server {:?} must be an https:// URL", self.server));
        }
        if self.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        match (self.mode, self.listen) {
            (Mode::Direct, None) => return Err(
                "listen is required (or mode = \"relay\" for a gateway without an inbound port)"
                    .into(),
            ),
            (Mode::Relay, Some(_)) => {
                return Err(
                    "a relay gateway (mode = \"relay\") listens on no port: remove listen".into(),
                )
            }
            _ => {}
        }
        if !(1..=60).contains(&self.sync.wait_seconds) {
            return Err("sync.wait_seconds must be between 1 and 60".into());
        }
        if !(1..=512).contains(&self.recording.chunk_kib) {
            return Err("recording.chunk_kib must be between 1 and 512".into());
        }
        if !(1..=300).contains(&self.recording.chunk_seconds) {
            return Err("recording.chunk_seconds must be between 1 and 300".into());
        }
        // Above what may wait in memory for the spool's writer (16 MiB).
        if !(64..=1 << 20).contains(&self.recording.spool_max_mib) {
            return Err("recording.spool_max_mib must be between 64 and 1048576".into());
        }
        crate::recording::Masking::new(&self.recording.mask)?;
        if self.sync.max_backoff_seconds == 0 {
            return Err("sync.max_backoff_seconds must be at least 1".into());
        }
        for (name, path) in [
            ("ca_cert", &self.ca_cert),
            ("token_file", &self.token_file),
            ("host_key", &self.host_key),
        ] {
            if !path.is_absolute() {
                return Err(format!("{name} must be an absolute path"));
            }
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# gatepass-gateway configuration, written by `gatepass-gateway setup`.\n\
             # See `gatepass-gateway --help` and /usr/share/doc/gatepass-gateway/gateway.toml.\n\n{body}"
        )
    }

    /// Reads the gateway token (first line of the token file).
    pub fn read_token(&self) -> Result<String, String> {
        let text = std::fs::read_to_string(&self.token_file).map_err(|e| {
            format!(
                "cannot read the gateway token {}: {e}",
                self.token_file.display()
            )
        })?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            return Err(format!("{} is empty", self.token_file.display()));
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> &'static str {
        "server = \"https://gp:8200\"\nca_cert = \"/etc/gatepass/server-ca.pem\"\n\
         token_file = \"/etc/gatepass/gateway.token\"\nname = \"gw1\"\n\
         listen = \"0.0.0.0:2222\"\naddress = \"gw1.example:2222\"\n"
    }

    #[test]
    fn defaults_and_round_trip() {
        let c = Config::parse(Path::new("x"), minimal()).unwrap();
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(1800)));
        assert_eq!(c.host_key, PathBuf::from(DEFAULT_HOST_KEY));
        assert_eq!(c.sync, SyncSettings::default());
        let again = Config::parse(Path::new("x"), &c.to_toml()).unwrap();
        assert_eq!(c, again);
        let off = Config {
            idle_timeout: None,
            ..c
        };
        assert_eq!(Config::parse(Path::new("x"), &off.to_toml()).unwrap(), off);
    }

    #[test]
    fn a_relay_gateway_needs_no_listen_address() {
        let text = "server = \"https://gp:8200\"\nca_cert = \"/etc/gatepass/server-ca.pem\"\n\
                    token_file = \"/etc/gatepass/gateway.token\"\nname = \"gw1\"\nmode = \"relay\"\n";
        let c = Config::parse(Path::new("x"), text).unwrap();
        assert_eq!(c.mode, Mode::Relay);
        assert_eq!(c.listen, None);
        let toml = c.to_toml();
        assert!(toml.contains("mode = \"relay\""), "{toml}");
        assert!(!toml.contains("listen"), "{toml}");
        assert_eq!(Config::parse(Path::new("x"), &toml).unwrap(), c);
    }

    #[test]
    fn masking_rules_are_checked_when_the_configuration_is_read() {
        let with = |rules: &str| format!("{}\n[recording]\nmask = {rules}\n", minimal());
        let c = Config::parse(Path::new("x"), &with(r#"["ghp_[A-Za-z0-9]{36}"]"#)).unwrap();
        assert_eq!(c.recording.mask, vec!["ghp_[A-Za-z0-9]{36}".to_string()]);
        assert_eq!(Config::parse(Path::new("x"), &c.to_toml()).unwrap(), c);
        let e = Config::parse(Path::new("x"), &with(r#"["ghp_[A-Z"]"#)).unwrap_err();
        assert!(e.to_string().contains("masking rule"), "{e}");
        assert!(Config::parse(Path::new("x"), minimal())
            .unwrap()
            .recording
            .mask
            .is_empty());
    }

    #[test]
    fn shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/gateway.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.host_key, PathBuf::from(DEFAULT_HOST_KEY));
        assert_eq!(c.sync, SyncSettings::default());
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(1800)));
        assert!(c.recording.enabled);
    }

    #[test]
    fn recording_is_on_unless_turned_off() {
        assert!(
            Config::parse(Path::new("x"), minimal())
                .unwrap()
                .recording
                .enabled
        );
        let off = format!("{}\n[recording]\nenabled = false\n", minimal());
        let c = Config::parse(Path::new("x"), &off).unwrap();
        assert!(!c.recording.enabled);
        assert!(c.to_toml().contains("enabled = false"), "{}", c.to_toml());
        assert_eq!(Config::parse(Path::new("x"), &c.to_toml()).unwrap(), c);
        let typo = format!("{}\n[recording]\nenable = false\n", minimal());
        let e = Config::parse(Path::new("x"), &typo).unwrap_err();
        assert!(e.to_string().contains("enable"), "{e}");
    }

    #[test]
    fn idle_timeout_notations() {
        assert_eq!(parse_idle("30m").unwrap(), Some(Duration::from_secs(1800)));
        assert_eq!(parse_idle("2h").unwrap(), Some(Duration::from_secs(7200)));
        assert_eq!(parse_idle("90").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(parse_idle("off").unwrap(), None);
        assert_eq!(parse_idle("0").unwrap(), None);
        assert!(parse_idle("soon").is_err());
        assert!(parse_idle("5w").is_err());
        let secs = format!("{}idle_timeout = 45\n", minimal());
        let c = Config::parse(Path::new("x"), &secs).unwrap();
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(45)));
    }

    #[test]
    fn unknown_keys_and_bad_values_fail() {
        let typo = format!("{}idle_timout = \"5m\"\n", minimal());
        let e = Config::parse(Path::new("x"), &typo).unwrap_err();
        assert!(e.to_string().contains("idle_timout"), "{e}");
        let bad = format!("{}idle_timeout = \"later\"\n", minimal());
        let e = Config::parse(Path::new("x"), &bad).unwrap_err();
        assert!(e.to_string().contains("30m"), "{e}");
        let bad = minimal().replace("0.0.0.0:2222", "nowhere");
        assert!(Config::parse(Path::new("x"), &bad).is_err());
        let bad = minimal().replace("https://gp:8200", "gp:8200");
        assert!(Config::parse(Path::new("x"), &bad).is_err());
        let bad = format!("{}[sync]\nwait_seconds = 600\n", minimal());
        assert!(Config::parse(Path::new("x"), &bad).is_err());
        let bad = format!("mode = \"relay\"\n{}", minimal());
        let e = Config::parse(Path::new("x"), &bad).unwrap_err();
        assert!(e.to_string().contains("remove listen"), "{e}");
        let bad = minimal().replace("listen = \"0.0.0.0:2222\"\n", "");
        let e = Config::parse(Path::new("x"), &bad).unwrap_err();
        assert!(e.to_string().contains("listen is required"), "{e}");
        let missing = Config::load(Path::new("/nonexistent/gateway.toml")).unwrap_err();
        assert!(
            missing.to_string().contains("gatepass-gateway setup"),
            "{missing}"
        );
    }
}
