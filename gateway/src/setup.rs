//! `gatepass-gateway setup`: make the host key, enroll once, write the
//! token and the config.

use std::fs::{self, OpenOptions, Permissions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatepass_api::pam::{GatewayEnroll, GatewayEnrolled};
use russh::keys::PrivateKey;

use crate::config::{Config, Mode, SyncSettings};
use crate::server_source;

/// The system user the packaged service runs as.
pub const SERVICE_USER: &str = "gatepass-gateway";

/// Hands `paths` to the service user when setup runs as root and that user
/// exists (the package makes it): the service reads its token and host key
/// as that user. Otherwise (a run by hand, a test) they stay the caller's.
fn hand_to_service_user(paths: &[&Path]) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let Ok(Some(user)) = nix::unistd::User::from_name(SERVICE_USER) else {
        return Ok(());
    };
    for p in paths {
        std::os::unix::fs::chown(p, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .map_err(|e| format!("cannot hand {} to {SERVICE_USER}: {e}", p.display()))?;
    }
    Ok(())
}

/// What `setup` is given.
#[derive(Clone, Debug)]
pub struct SetupOptions {
    pub config_path: PathBuf,
    pub server: String,
    pub join_token: String,
    pub ca_cert: PathBuf,
    pub reach: Reach,
    pub name: String,
    /// Default: `gateway.token` next to the config.
    pub token_file: Option<PathBuf>,
    pub host_key: PathBuf,
    /// Enroll again over an existing config and token, taking the place of
    /// a gateway enrolled under the same name.
    pub replace: bool,
}

/// How users' connections are to reach the gateway.
#[derive(Clone, Debug)]
pub enum Reach {
    /// On its own port.
    Direct {
        listen: SocketAddr,
        /// `host:port` users dial. Default: the listen address.
        address: Option<String>,
    },
    /// Relayed by the server; no inbound port.
    Relay,
}

/// What `setup` did.
#[derive(Debug)]
pub struct SetupReport {
    pub config: Config,
    /// Whether the host key was made now.
    pub made_host_key: bool,
    pub host_key_public: String,
}

fn dir_of(p: &Path) -> PathBuf {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ".".into())
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Writes `content` to `path` with `mode` through a temporary file in the
/// same folder, so a reader never sees half a file.
pub fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), String> {
    let dir = dir_of(path);
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".gatepass-")
        .tempfile_in(&dir)
        .map_err(fail)?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(fail)?;
    tmp.write_all(content).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

fn ensure_dir(dir: &Path, mode: u32) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| format!("cannot make {}: {e}", dir.display()))
}

/// The host key at `path`, made (ed25519, 0600) when missing. Returns its
/// public line and whether it was made now.
pub fn host_key(path: &Path) -> Result<(String, bool), String> {
    if path.exists() {
        let key = PrivateKey::read_openssh_file(path)
            .map_err(|e| format!("cannot read the host key {}: {e}", path.display()))?;
        let public = key
            .public_key()
            .to_openssh()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok((public, false));
    }
    ensure_dir(&dir_of(path), 0o700)?;
    let (private, public) = server_source::new_host_key()?;
    // create_new: never over a key that appeared meanwhile.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write the host key {}: {e}", path.display()))?;
    f.write_all(private.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write the host key {}: {e}", path.display()))?;
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    write_file(
        Path::new(&pub_path),
        format!("{public}\n").as_bytes(),
        0o644,
    )?;
    Ok((public, true))
}

/// The recording signing key at `path` (base64 ed25519 seed, 0600), made
/// when missing; its public half (base64).
pub fn recording_key(path: &Path) -> Result<String, String> {
    if let Some(key) = load_recording_key(path)? {
        return Ok(gatepass_api::recording::public_key_text(&key));
    }
    let key = gatepass_api::recording::new_signing_key();
    let text = zeroize::Zeroizing::new(gatepass_api::recording::signing_key_text(&key));
    write_file(path, text.as_bytes(), 0o600)?;
    Ok(gatepass_api::recording::public_key_text(&key))
}

/// The recording signing key at `path`, None when there is no file.
pub fn load_recording_key(path: &Path) -> Result<Option<ed25519_dalek::SigningKey>, String> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let text = zeroize::Zeroizing::new(text);
            gatepass_api::recording::parse_signing_key(&text)
                .map(Some)
                .ok_or_else(|| format!("{} is not a recording key", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

pub async fn setup(opts: &SetupOptions) -> Result<SetupReport, String> {
    let config_path = absolute(&opts.config_path)?;
    let conf_dir = dir_of(&config_path);
    let token_file = match &opts.token_file {
        Some(t) => absolute(t)?,
        None => conf_dir.join("gateway.token"),
    };
    if !opts.replace {
        for existing in [&config_path, &token_file] {
            if existing.exists() {
                return Err(format!(
                    "{} exists: this gateway is enrolled already (to enroll again, and take the \
                     place of the gateway enrolled under the same name, add --replace)",
                    existing.display()
                ));
            }
        }
    }
    if opts.server.trim().is_empty() {
        return Err("--server is required".into());
    }
    if opts.join_token.trim().is_empty() {
        return Err("--join-token is required".into());
    }
    let ca_pem = fs::read(&opts.ca_cert)
        .map_err(|e| format!("cannot read --ca-cert {}: {e}", opts.ca_cert.display()))?;
    let host_key_path = absolute(&opts.host_key)?;
    let (host_key_public, made_host_key) = host_key(&host_key_path)?;
    // The recording key and the spool live beside the host key (by default
    // the service's state directory).
    let state_dir = dir_of(&host_key_path);
    let recording_key_path = state_dir.join("recording_ed25519_key");
    let recording_public = recording_key(&recording_key_path)?;
    let (mode, listen, address) = match &opts.reach {
        Reach::Direct { listen, address } => (
            Mode::Direct,
            Some(*listen),
            address.clone().unwrap_or_else(|| listen.to_string()),
        ),
        Reach::Relay => (Mode::Relay, None, String::new()),
    };
    let server = opts.server.trim().trim_end_matches('/').to_string();
    let client = server_source::client(&server, &opts.ca_cert, None, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let req = GatewayEnroll {
        join_token: opts.join_token.trim().to_string(),
        name: opts.name.clone(),
        address: address.clone(),
        host_keys: vec![host_key_public.clone()],
        replace: opts.replace,
        relay: mode == Mode::Relay,
        recording_key: Some(recording_public),
    };
    let enrolled: GatewayEnrolled = enroll(&client, &req).await?;
    // What the operator set beyond the enrollment (the idle timeout, the
    // server sync, recording and its masking rules) is kept when a gateway
    // enrolls again: `--replace` must not start recording in clear what
    // was masked. A config that does not parse is replaced whole.
    let kept = if config_path.exists() {
        Config::load(&config_path).ok()
    } else {
        None
    };
    let cfg = Config {
        server,
        ca_cert: conf_dir.join("gateway-server-ca.pem"),
        token_file,
        name: enrolled.name.clone(),
        mode,
        listen,
        address,
        host_key: host_key_path,
        idle_timeout: kept
            .as_ref()
            .map_or(Some(Duration::from_secs(30 * 60)), |k| k.idle_timeout),
        sync: kept
            .as_ref()
            .map_or_else(SyncSettings::default, |k| k.sync.clone()),
        state_dir,
        recording_key: Some(recording_key_path),
        recording: kept.map(|k| k.recording).unwrap_or_default(),
    };
    // Token first: a config file means the token is there too.
    ensure_dir(&conf_dir, 0o755)?;
    ensure_dir(&dir_of(&cfg.token_file), 0o755)?;
    let token = format!("{}\n", enrolled.gateway_token);
    write_file(&cfg.token_file, token.as_bytes(), 0o600)?;
    if absolute(&opts.ca_cert)? != cfg.ca_cert {
        write_file(&cfg.ca_cert, &ca_pem, 0o644)?;
    }
    // The host key's folder (by default the service's StateDirectory=) is
    // handed over by systemd at start.
    let mut owned: Vec<&Path> = vec![&cfg.token_file, &cfg.host_key];
    if let Some(k) = &cfg.recording_key {
        owned.push(k);
    }
    hand_to_service_user(&owned)?;
    write_file(&config_path, cfg.to_toml().as_bytes(), 0o644)?;
    Ok(SetupReport {
        config: cfg,
        made_host_key,
        host_key_public,
    })
}

async fn enroll(
    client: &gatepass_api::Client,
    req: &GatewayEnroll,
) -> Result<GatewayEnrolled, String> {
    let body = match serde_json::to_value(req) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => return Err("cannot encode the enrollment".into()),
    };
    match client.write("pam/gateways/enroll", &body).await {
        Ok(env) => env
            .and_then(|e| e.data)
            .and_then(|d| serde_json::from_value(d).ok())
            .ok_or_else(|| "unexpected answer from the server to the enrollment".to_string()),
        Err(e @ gatepass_api::Error::Api { .. }) => {
            let text = e.to_string();
            let hint = if text.contains("already") && !req.replace {
                "\n(to take that gateway's place, revoking its token, run setup again with --replace)"
            } else {
                ""
            };
            Err(format!("enrollment refused: {text}{hint}"))
        }
        Err(e @ gatepass_api::Error::Transport { .. }) => Err(format!(
            "the gatepass server cannot be reached: {}",
            server_source::with_causes(&e)
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_key_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/ssh_host_ed25519_key");
        let (public, made) = host_key(&path).unwrap();
        assert!(made);
        assert!(public.starts_with("ssh-ed25519 "), "{public}");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let pub_file =
            fs::read_to_string(dir.path().join("keys/ssh_host_ed25519_key.pub")).unwrap();
        assert_eq!(pub_file.trim(), public);
        let (again, made) = host_key(&path).unwrap();
        assert!(!made);
        assert_eq!(again, public);
    }

    #[tokio::test]
    async fn an_enrolled_gateway_is_not_enrolled_again_without_replace() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("gateway.toml");
        fs::write(&config_path, "").unwrap();
        let opts = SetupOptions {
            config_path,
            server: "https://127.0.0.1:1".into(),
            join_token: "t".into(),
            ca_cert: dir.path().join("ca.pem"),
            reach: Reach::Direct {
                listen: "127.0.0.1:2222".parse().unwrap(),
                address: None,
            },
            name: "gw1".into(),
            token_file: None,
            host_key: dir.path().join("key"),
            replace: false,
        };
        let e = setup(&opts).await.unwrap_err();
        assert!(e.contains("--replace"), "{e}");
        // Nothing was made.
        assert!(!dir.path().join("key").exists());
    }

    #[tokio::test]
    async fn enrolling_again_keeps_what_the_operator_set() {
        use axum::response::IntoResponse;
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("gateway.toml");
        let token_file = dir.path().join("gateway.token");
        fs::write(
            &config_path,
            format!(
                "server = \"https://old.example:8200\"\nca_cert = \"/x/ca.pem\"\n\
                 token_file = {:?}\nname = \"gw1\"\nlisten = \"127.0.0.1:2222\"\n\
                 idle_timeout = \"5m\"\n\n[recording]\nmask = [\"secret-[0-9]+\"]\n",
                token_file
            ),
        )
        .unwrap();
        fs::write(&token_file, "old-token\n").unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let ca_path = dir.path().join("ca.pem");
        fs::write(&ca_path, ca.cert.pem()).unwrap();
        // The server's side of an enrollment, on loopback.
        let app = axum::Router::new().fallback(|| async {
            axum::Json(serde_json::json!({"data": {
                "name": "gw1", "gateway_token": "new-token", "session_ca_keys": []
            }}))
            .into_response()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let opts = SetupOptions {
            config_path: config_path.clone(),
            server,
            join_token: "t".into(),
            ca_cert: ca_path,
            reach: Reach::Direct {
                listen: "127.0.0.1:2223".parse().unwrap(),
                address: None,
            },
            name: "gw1".into(),
            token_file: Some(token_file.clone()),
            host_key: dir.path().join("key"),
            replace: true,
        };
        setup(&opts).await.unwrap();
        let cfg = Config::load(&config_path).unwrap();
        assert_eq!(cfg.recording.mask, vec!["secret-[0-9]+".to_string()]);
        assert_eq!(cfg.idle_timeout, Some(Duration::from_secs(300)));
        // The enrollment's own fields are the new ones.
        assert_eq!(cfg.listen, Some("127.0.0.1:2223".parse().unwrap()));
        assert_eq!(fs::read_to_string(&token_file).unwrap().trim(), "new-token");
    }
}
