//! `gatepass ssh …`: get certificates from the CA of an ssh mount and put
//! them where OpenSSH looks for them (next to the key, in the agent, in
//! known_hosts); one-time passwords and dynamic keys (`creds.rs`); logging
//! in with the system `ssh` in every mode (`connect.rs`) and through
//! `~/.ssh/config` (`sshconfig.rs`).

use std::fs;
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{json, Map, Value};
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, LineEnding, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use super::{connect, creds, sshconfig, Ctx, GlobalArgs};
use crate::error::{Error, Result};
use crate::output::{self, Format, Row};

pub const SIGN_EXAMPLES: &str = "\
Examples:
  # Sign ~/.ssh/id_ed25519.pub; ssh then finds ~/.ssh/id_ed25519-cert.pub:
  gatepass ssh sign --role dev --principals alice
  ssh alice@host

  gatepass ssh sign --mount ssh-prod --role ops --public-key ~/.ssh/work.pub \\
      --principals alice,deploy --ttl 30m --extension permit-pty
  gatepass ssh sign --role hosts --cert-type host --principals web1.example.com \\
      --public-key /etc/ssh/ssh_host_ed25519_key.pub";

pub const ISSUE_EXAMPLES: &str = "\
Examples:
  # A fresh key and certificate straight into the running ssh-agent:
  gatepass ssh issue-credentials --role dev --principals alice --ttl 1h --add-to-agent
  ssh alice@host

  # Or as files (./gatepass_dev and ./gatepass_dev-cert.pub):
  gatepass ssh issue-credentials --role dev --key-type ec
  ssh -i ./gatepass_dev alice@host";

pub const TRUST_EXAMPLES: &str = "\
Examples:
  gatepass ssh trust-hosts                        # trust the CA for every host
  gatepass ssh trust-hosts --domain '*.example.com'
  gatepass ssh trust-hosts --mount ssh-hosts --known-hosts /etc/ssh/ssh_known_hosts";

/// Public keys `sign` tries when none is given, in ssh's own order of preference.
const DEFAULT_KEYS: [&str; 3] = ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"];

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Have the CA sign your SSH public key
    ///
    /// Sends the public key to <mount>/sign/<role> and writes the
    /// certificate next to it as <key>-cert.pub (for ~/.ssh/id_ed25519.pub:
    /// ~/.ssh/id_ed25519-cert.pub), where ssh and ssh-add look for it. The
    /// private key never leaves this machine.
    #[command(after_long_help = SIGN_EXAMPLES)]
    Sign(SignArgs),

    /// Get a new key pair and certificate from the CA
    ///
    /// The server generates the key pair (<mount>/issue/<role>). With
    /// --add-to-agent the key and its certificate go into the running
    /// ssh-agent for as long as the certificate is valid: they are written
    /// to a private temporary folder (0700, in $XDG_RUNTIME_DIR when set,
    /// else $TMPDIR), loaded with `ssh-add -t SECONDS KEY` (which picks up
    /// KEY-cert.pub by itself; `ssh-add -` could not) and removed right
    /// after, also on errors and on Ctrl-C. Otherwise they are saved as
    /// <dir>/gatepass_<role> (0600) and <dir>/gatepass_<role>-cert.pub.
    #[command(after_long_help = ISSUE_EXAMPLES)]
    IssueCredentials(IssueArgs),

    /// Trust host certificates signed by the CA (adds it to known_hosts)
    ///
    /// Reads the CA's public keys from <mount>/public_key (no token needed)
    /// and appends one `@cert-authority PATTERN KEY` line per key to
    /// known_hosts, so that ssh accepts the hosts whose host certificate the
    /// CA signed without asking. Lines already there are not added again.
    #[command(after_long_help = TRUST_EXAMPLES)]
    TrustHosts(TrustArgs),

    /// Get a one-time password for a host (OTP roles)
    ///
    /// Resolves HOST to an IP address (as `vault ssh` does: an address is
    /// used as it is, a name is looked up, IPv4 preferred) and asks
    /// <mount>/creds/<role> for a one-time password for USER there (the
    /// role's default_user when no USER@ is given). The host's PAM helper
    /// checks it against the server at login; it works once.
    #[command(after_long_help = creds::OTP_EXAMPLES)]
    Otp(creds::OtpArgs),

    /// Get a short-lived private key for a host (dynamic roles)
    ///
    /// Asks <mount>/creds/<role> for a fresh key pair for USER at HOST (an
    /// IP address, or a name resolved as for `otp`). The server keeps the
    /// public key for the host's gatepass-hostd to install; the private key
    /// is written to a new file (mode 0600) and never printed.
    #[command(after_long_help = creds::CREDS_EXAMPLES)]
    Creds(creds::CredsArgs),

    /// Log in to a host with the system ssh, in any mode of the role
    ///
    /// Picks the mode from the role's key_type (reading <mount>/roles/<role>)
    /// unless --mode says it, gets a credential and runs `ssh` with it:
    ///
    /// ca: a new ed25519 key made in memory is signed for USER and handed to
    /// the running ssh-agent (SSH_AUTH_SOCK) for as long as the certificate
    /// is valid, through a private folder that is removed right after
    /// `ssh-add`; without an agent, key and certificate are files in a
    /// private temporary folder (0700, key 0600) removed when ssh exits.
    ///
    /// otp: the one-time password goes to ssh through SSH_ASKPASS (this
    /// program in its askpass role, with SSH_ASKPASS_REQUIRE=force) and a
    /// named pipe in a private temporary folder: it is never on a command
    /// line, in an environment variable or in a file, and it is given out
    /// once (the pipe is removed as soon as it was opened).
    ///
    /// dynamic: the private key is a file (0600) in a private temporary
    /// folder, removed when ssh exits; the request waits (--wait) until the
    /// host's gatepass-hostd reports the key installed.
    ///
    /// The temporary folder is $XDG_RUNTIME_DIR/gatepass-connect-* (or
    /// $TMPDIR/…) and is removed however ssh ends, also when it is killed;
    /// SIGINT, SIGTERM, SIGHUP and SIGQUIT are passed on to ssh. The exit
    /// status is ssh's (128+N when ssh died of signal N).
    ///
    /// Host keys: with --host-ca-mount or --host-ca, only hosts presenting a
    /// host certificate from that CA are accepted (a temporary known_hosts
    /// with `@cert-authority *` lines, StrictHostKeyChecking=yes);
    /// otherwise ssh checks host keys as it always does.
    ///
    /// The command run is `ssh [-F FILE] [-p PORT] -l USER OPTIONS -- HOST [COMMAND…]`:
    /// everything after `--` comes after the host, so `-- echo hello` runs
    /// `echo hello` there. ssh options go in with -o/--ssh-option; gatepass's
    /// own come first and win (ssh keeps the first value of an option).
    #[command(after_long_help = connect::EXAMPLES)]
    Connect(connect::ConnectArgs),

    /// Print (or add to ~/.ssh/config) a block so that plain `ssh HOST`
    /// logs in through gatepass (ca roles)
    ///
    /// The block is `Host PATTERN…` with `ProxyCommand gatepass ssh proxy …`:
    /// before ssh talks to the host, `gatepass ssh proxy` makes sure the
    /// ssh-agent holds a valid certificate for the login user from the role
    /// (signing a new in-memory key when not), then relays the connection.
    /// ssh then logs in with the agent's certificate. This needs a running
    /// ssh-agent, and works for ca roles only (for otp and dynamic roles
    /// use `gatepass ssh connect`). With --host-ca-mount the block also has
    /// `KnownHostsCommand gatepass ssh known-hosts …` (OpenSSH 8.5 or
    /// newer), so host certificates from that CA are trusted.
    ///
    /// With --write the block is added to the file (~/.ssh/config unless
    /// --file says otherwise) between marker lines; running it again
    /// replaces that block instead of adding another. ssh uses the first
    /// value it finds for an option, so keep the block above a `Host *`
    /// section that sets ProxyCommand.
    #[command(after_long_help = sshconfig::CONFIG_EXAMPLES)]
    Config(sshconfig::ConfigArgs),

    /// Relay for ssh's ProxyCommand: certificate into the agent, then
    /// connect stdin/stdout to HOST PORT (what `gatepass ssh config` writes)
    Proxy(sshconfig::ProxyArgs),

    /// Print known_hosts lines trusting the host certificates of a CA
    ///
    /// `@cert-authority PATTERN KEY` for each of the mount's CA keys (no
    /// token needed), for ssh's KnownHostsCommand or to add to a file.
    KnownHosts(sshconfig::KnownHostsArgs),
}

#[derive(Debug, clap::Args)]
pub struct Target {
    /// Where the ssh secrets engine is mounted
    #[arg(long, default_value = "ssh", value_name = "PATH")]
    pub mount: String,

    /// The role to sign with (a role with key_type=ca)
    #[arg(long, value_name = "NAME")]
    pub role: String,
}

/// What a certificate should say; the role decides what is allowed.
#[derive(Debug, clap::Args)]
pub struct CertArgs {
    /// The names the certificate is valid for (users, or host names);
    /// repeat or separate with commas [default: the role's default_user]
    #[arg(
        long,
        alias = "principal",
        value_name = "NAME,…",
        value_delimiter = ','
    )]
    pub principals: Vec<String>,

    /// How long the certificate is valid, e.g. 30m or 8h [default: the role's ttl]
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,

    /// The certificate's key ID (if the role allows user key IDs)
    #[arg(long, value_name = "ID")]
    pub key_id: Option<String>,

    /// An extension, e.g. permit-pty or permit-port-forwarding; repeat
    /// for more [default: the role's default_extensions]
    #[arg(long = "extension", value_name = "NAME[=VALUE]")]
    pub extensions: Vec<String>,

    /// A critical option, e.g. source-address=10.0.0.0/8 or
    /// force-command=/usr/bin/backup; repeat for more
    #[arg(long = "critical-option", value_name = "NAME=VALUE")]
    pub critical_options: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    #[command(flatten)]
    pub target: Target,

    /// The public key to sign [default: the first of ~/.ssh/id_ed25519.pub,
    /// id_ecdsa.pub, id_rsa.pub]
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,

    /// Where to write the certificate [default: <key>-cert.pub beside the key]
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// A user certificate (to log in) or a host certificate (for a server)
    #[arg(long, value_enum, value_name = "TYPE")]
    pub cert_type: Option<CertKind>,

    #[command(flatten)]
    pub cert: CertArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CertKind {
    User,
    Host,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    Ed25519,
    /// ECDSA (P-256, or P-384 with --key-bits 384)
    Ec,
    /// RSA (2048 bits unless --key-bits says otherwise)
    Rsa,
}

impl KeyType {
    fn as_str(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::Ec => "ec",
            KeyType::Rsa => "rsa",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    #[command(flatten)]
    pub target: Target,

    /// The kind of key pair the server generates
    #[arg(long, value_enum, default_value_t = KeyType::Ed25519)]
    pub key_type: KeyType,

    /// Key size: 2048, 3072 or 4096 for rsa; 256 or 384 for ec
    #[arg(long, value_name = "BITS")]
    pub key_bits: Option<u32>,

    #[command(flatten)]
    pub cert: CertArgs,

    /// Load the key and certificate into the ssh-agent at $SSH_AUTH_SOCK
    /// (for the certificate's lifetime) instead of saving them
    #[arg(long, conflicts_with_all = ["output_dir", "force"])]
    pub add_to_agent: bool,

    /// Folder for the key and certificate files [default: the current folder]
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// Replace existing key and certificate files
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct TrustArgs {
    /// Where the ssh secrets engine is mounted
    #[arg(long, default_value = "ssh", value_name = "PATH")]
    pub mount: String,

    /// Which hosts the CA vouches for: a known_hosts pattern such as
    /// *.example.com, or several separated by commas
    #[arg(long, default_value = "*", value_name = "PATTERN")]
    pub domain: String,

    /// The known_hosts file to add to [default: ~/.ssh/known_hosts]
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
}

/// Runs an ssh command; the exit status is 0 except for `connect`, which
/// ends with ssh's.
pub async fn run(global: &GlobalArgs, cmd: Command) -> Result<u8> {
    match cmd {
        Command::Sign(a) => sign(&Ctx::new(global)?, a).await?,
        Command::IssueCredentials(a) => issue(&Ctx::new(global)?, a).await?,
        // The CA's public key is served without a token; a stale one in
        // the environment must not get in the way.
        Command::TrustHosts(a) => trust_hosts(&Ctx::anonymous(global)?, a).await?,
        Command::Otp(a) => creds::otp(&Ctx::new(global)?, a).await?,
        Command::Creds(a) => creds::creds(&Ctx::new(global)?, a).await?,
        Command::Connect(a) => return connect::connect(global, a).await,
        Command::Config(a) => sshconfig::config(global, a)?,
        Command::Proxy(a) => sshconfig::proxy(&Ctx::new(global)?, a).await?,
        Command::KnownHosts(a) => sshconfig::known_hosts(&Ctx::anonymous(global)?, a).await?,
    }
    Ok(0)
}

/// The wall clock, read once per command; everything below takes `now`.
#[allow(clippy::disallowed_methods)]
pub(super) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- sign

async fn sign(ctx: &Ctx, args: SignArgs) -> Result<()> {
    let key_path = match &args.public_key {
        Some(p) => p.clone(),
        None => default_public_key()?,
    };
    let (key_path, public) = read_public_key(&key_path)?;
    let out_path = args.output.clone().unwrap_or_else(|| cert_path(&key_path));

    let path = engine_path(&args.target.mount, "sign", &args.target.role)?;
    let mut body = cert_body(&args.cert)?;
    let openssh = public
        .to_openssh()
        .map_err(|e| Error::Local(format!("cannot encode the public key: {e}")))?;
    body.insert("public_key".into(), json!(openssh));
    if let Some(t) = args.cert_type {
        let t = match t {
            CertKind::User => "user",
            CertKind::Host => "host",
        };
        body.insert("cert_type".into(), json!(t));
    }
    let action = format!("signing {} with {path}", key_path.display());
    let resp = ctx
        .call("POST", &path, Some(&body), &action)
        .await?
        .ok_or_else(|| Error::Local(format!("{action}: empty answer from the server")))?;
    let signed = &signed_key(&resp, &action)?;
    let cert = parse_cert(signed, &action)?;
    if cert.public_key() != public.key_data() {
        return Err(Error::Local(format!(
            "{action}: the server returned a certificate for another key"
        )));
    }

    write_atomic(&out_path, ensure_newline(signed).as_bytes(), 0o644, true).map_err(|e| {
        Error::Local(format!(
            "cannot write the certificate to {}: {e}",
            out_path.display()
        ))
    })?;

    if ctx.format == Format::Json {
        output::print_json(&resp);
        return Ok(());
    }
    output::print_warnings(&resp);
    println!("Success! Certificate written to {}\n", out_path.display());
    output::print_table(&cert_rows(&cert, &serial(&resp, &cert), now()));
    Ok(())
}

/// The first of ssh's usual public keys that exists.
fn default_public_key() -> Result<PathBuf> {
    let ssh_dir = home()?.join(".ssh");
    DEFAULT_KEYS
        .iter()
        .map(|k| ssh_dir.join(k))
        .find(|p| p.exists())
        .ok_or_else(|| {
            Error::Local(format!(
                "no SSH public key found (looked for {} in {}): pass --public-key FILE, \
                 or create a key with `ssh-keygen -t ed25519`",
                DEFAULT_KEYS.join(", "),
                ssh_dir.display()
            ))
        })
}

pub(super) fn home() -> Result<PathBuf> {
    dirs::home_dir().ok_or_else(|| Error::Local("cannot find the home folder: set HOME".into()))
}

/// Reads a public key file. Given the private key by mistake, it uses the
/// `.pub` beside it, as ssh-keygen does.
fn read_public_key(path: &Path) -> Result<(PathBuf, PublicKey)> {
    let text = fs::read_to_string(path).map_err(|e| {
        Error::Local(format!(
            "cannot read the public key {}: {}",
            path.display(),
            io_reason(&e)
        ))
    })?;
    if text.contains("PRIVATE KEY-----") {
        let public = with_suffix(path, ".pub");
        if public.exists() {
            return read_public_key(&public);
        }
        return Err(Error::Local(format!(
            "{} is a private key; pass its public key (.pub) instead",
            path.display()
        )));
    }
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    if line.contains("-cert-v01@openssh.com") {
        return Err(Error::Local(format!(
            "{} is a certificate; pass the public key it was made for",
            path.display()
        )));
    }
    let key = PublicKey::from_openssh(line).map_err(|_| {
        Error::Local(format!(
            "{} is not an OpenSSH public key (\"ssh-ed25519 AAAA… comment\")",
            path.display()
        ))
    })?;
    Ok((path.to_path_buf(), key))
}

/// `dir/id_ed25519.pub` → `dir/id_ed25519-cert.pub`, where ssh looks for it.
fn cert_path(key: &Path) -> PathBuf {
    let s = key.as_os_str().to_string_lossy();
    let stem = s.strip_suffix(".pub").unwrap_or(&s);
    PathBuf::from(format!("{stem}-cert.pub"))
}

pub(super) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

pub(super) fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        ErrorKind::NotFound => "no such file".into(),
        ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

// ---------------------------------------------------------------- issue

async fn issue(ctx: &Ctx, args: IssueArgs) -> Result<()> {
    let path = engine_path(&args.target.mount, "issue", &args.target.role)?;
    let name = format!("gatepass_{}", args.target.role);

    // Everything that can fail locally is checked before the server makes
    // a credential that would then go nowhere.
    let files = if args.add_to_agent {
        check_agent().await?;
        None
    } else {
        let dir = args
            .output_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("."));
        let key = dir.join(&name);
        let cert = with_suffix(&key, "-cert.pub");
        if !args.force {
            for p in [&key, &cert] {
                if p.symlink_metadata().is_ok() {
                    return Err(Error::Local(format!(
                        "{} already exists; pass --force to replace it, or --output-dir",
                        p.display()
                    )));
                }
            }
        }
        Some((key, cert))
    };

    let mut body = cert_body(&args.cert)?;
    body.insert("key_type".into(), json!(args.key_type.as_str()));
    if let Some(bits) = args.key_bits {
        body.insert("key_bits".into(), json!(bits));
    }
    let action = format!("issuing credentials with {path}");
    let mut resp = ctx
        .call("POST", &path, Some(&body), &action)
        .await?
        .ok_or_else(|| Error::Local(format!("{action}: empty answer from the server")))?;
    // Out of the answer at once, so that no later print can show it.
    let private_text = match resp.pointer_mut("/data/private_key").map(Value::take) {
        Some(Value::String(s)) => Zeroizing::new(s),
        _ => {
            return Err(Error::Local(format!(
                "{action}: the server's answer holds no private_key"
            )))
        }
    };
    let signed = signed_key(&resp, &action)?;
    let cert = parse_cert(&signed, &action)?;
    let mut private = PrivateKey::from_openssh(private_text.trim()).map_err(|e| {
        Error::Local(format!(
            "{action}: the server's private_key is not an OpenSSH key: {e}"
        ))
    })?;
    drop(private_text);
    if cert.public_key() != private.public_key().key_data() {
        return Err(Error::Local(format!(
            "{action}: the certificate is not for the key issued with it"
        )));
    }
    let serial = serial(&resp, &cert);
    // What `ssh-add -l` shows, instead of a temporary path.
    let comment = format!(
        "gatepass:{}/{}:{serial}",
        args.target.mount.trim_matches('/'),
        args.target.role
    );
    private.set_comment(comment.clone());
    let private_pem = private
        .to_openssh(LineEnding::LF)
        .map_err(|e| Error::Local(format!("cannot encode the private key: {e}")))?;
    let cert_text = with_comment(&signed, &comment);
    let now = now();

    let done = match files {
        None => Done::Agent(add_to_agent(&name, &private_pem, &cert_text, &cert, now).await?),
        Some((key, cert_file)) => {
            save_credentials(&key, &cert_file, &private_pem, &cert_text, args.force)?;
            Done::Files(key, cert_file)
        }
    };
    drop(private_pem);

    if ctx.format == Format::Json {
        if let Some(Value::Object(data)) = resp.get_mut("data") {
            data.remove("private_key");
        }
        output::print_json(&resp);
        return Ok(());
    }
    output::print_warnings(&resp);
    let kind = resp
        .pointer("/data/private_key_type")
        .and_then(Value::as_str)
        .unwrap_or(args.key_type.as_str())
        .to_string();
    match done {
        Done::Agent(lifetime) => {
            let socket = std::env::var("SSH_AUTH_SOCK").unwrap_or_default();
            let how_long = match lifetime {
                Some(secs) => format!("for {}", output::format_duration(secs as i64, false)),
                None => "without a time limit".into(),
            };
            println!(
                "Success! A new {kind} key and its certificate were added to the ssh-agent \
                 ({socket}) {how_long}.\nThe private key was not kept on disk.\n"
            );
        }
        Done::Files(key, cert_file) => println!(
            "Success! A new {kind} key and its certificate were saved:\n  \
             private key:  {} (mode 0600)\n  certificate:  {}\n\
             Use them with: ssh -i {} USER@HOST\n",
            key.display(),
            cert_file.display(),
            key.display()
        ),
    }
    output::print_table(&cert_rows(&cert, &serial, now));
    Ok(())
}

enum Done {
    /// Added to the agent, with this lifetime (None: no limit).
    Agent(Option<u64>),
    Files(PathBuf, PathBuf),
}

/// The key beside its certificate: the certificate first, so that a key
/// file never exists without it.
fn save_credentials(
    key: &Path,
    cert_file: &Path,
    private_pem: &str,
    cert_text: &str,
    force: bool,
) -> Result<()> {
    if let Some(dir) = key.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::Local(format!("cannot create {}: {e}", dir.display())))?;
    }
    let write = |p: &Path, text: &str, mode| {
        write_atomic(p, text.as_bytes(), mode, force).map_err(|e| {
            let why = if e.kind() == ErrorKind::AlreadyExists {
                "it already exists (pass --force to replace it)".to_string()
            } else {
                e.to_string()
            };
            Error::Local(format!("cannot write {}: {why}", p.display()))
        })
    };
    write(cert_file, cert_text, 0o644)?;
    write(key, private_pem, 0o600)
}

/// A certificate line with our comment in place of the server's (none).
pub(super) fn with_comment(signed: &str, comment: &str) -> String {
    let mut fields = signed.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(alg), Some(blob)) => format!("{alg} {blob} {comment}\n"),
        _ => ensure_newline(signed),
    }
}

/// Fails early, before a credential is issued, when there is no agent to
/// take it.
pub(super) async fn check_agent() -> Result<()> {
    let sock = std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty());
    if sock.is_none() {
        return Err(Error::Local(
            "--add-to-agent needs a running ssh-agent, but SSH_AUTH_SOCK is not set: \
             start one with `eval $(ssh-agent)`, or leave out --add-to-agent to save files"
                .into(),
        ));
    }
    // `ssh-add -l`: 0 = keys, 1 = no keys, 2 = no agent there.
    let out = tokio::process::Command::new("ssh-add")
        .arg("-l")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(ssh_add_missing)?;
    if out.status.code() == Some(0) || out.status.code() == Some(1) {
        return Ok(());
    }
    Err(Error::Local(format!(
        "cannot reach the ssh-agent at SSH_AUTH_SOCK={}: {}",
        sock.unwrap_or_default().to_string_lossy(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

pub(super) fn ssh_add_missing(e: io::Error) -> Error {
    if e.kind() == ErrorKind::NotFound {
        Error::Local("ssh-add was not found: install the OpenSSH client".into())
    } else {
        Error::Local(format!("cannot run ssh-add: {e}"))
    }
}

/// How long the agent may keep the key: what is left of the certificate's
/// validity. None for a certificate that never expires.
pub(super) fn agent_lifetime(cert: &Certificate, now: u64) -> Result<Option<u64>> {
    let before = cert.valid_before();
    if before == u64::MAX {
        return Ok(None);
    }
    match before.checked_sub(now) {
        Some(left) if left > 0 => Ok(Some(left)),
        _ => Err(Error::Local(format!(
            "the certificate has already expired ({}); is this machine's clock right?",
            date(before)
        ))),
    }
}

/// Loads key and certificate into the agent. ssh-add reads the certificate
/// only from `<key>-cert.pub` beside a key file (`ssh-add -` takes the key
/// alone), so both go to a private temporary folder for the moment
/// ssh-add needs them; the folder is removed whatever happens.
pub(super) async fn add_to_agent(
    name: &str,
    private_pem: &str,
    cert_text: &str,
    cert: &Certificate,
    now: u64,
) -> Result<Option<u64>> {
    let lifetime = agent_lifetime(cert, now)?;
    // Signals are caught from here on, so Ctrl-C cannot leave the key behind.
    let signals = Signals::new()?;
    // A tmpfs such as /run/user/UID keeps the key off the disk entirely.
    let base = dirs::runtime_dir()
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("gatepass-agent-")
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(&base)
        .map_err(|e| {
            Error::Local(format!(
                "cannot create a private folder in {}: {e}",
                base.display()
            ))
        })?;
    let mut signals = signals;
    let result = load_into_agent(
        dir.path(),
        name,
        private_pem,
        cert_text,
        lifetime,
        &mut signals,
    )
    .await;
    let shown = dir.path().display().to_string();
    let cleaned = dir.close();
    match (result, cleaned) {
        (Ok(()), Ok(())) => Ok(lifetime),
        (Err(e), Ok(())) => Err(e),
        (result, Err(e)) => {
            let mut msg = format!(
                "could not remove the temporary folder {shown}, which holds the private key: \
                 {e}; delete it now"
            );
            if let Err(first) = result {
                msg = format!("{first}\n{msg}");
            }
            Err(Error::Local(msg))
        }
    }
}

pub(super) async fn load_into_agent(
    dir: &Path,
    name: &str,
    private_pem: &str,
    cert_text: &str,
    lifetime: Option<u64>,
    signals: &mut Signals,
) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::Local(format!("cannot make {} private: {e}", dir.display())))?;
    let key = dir.join(name);
    let write_new = |p: &Path, text: &str, mode: u32| -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)?;
        f.write_all(text.as_bytes())
    };
    write_new(&key, private_pem, 0o600)
        .and_then(|()| write_new(&with_suffix(&key, "-cert.pub"), cert_text, 0o644))
        .map_err(|e| Error::Local(format!("cannot write to {}: {e}", dir.display())))?;

    let mut cmd = tokio::process::Command::new("ssh-add");
    if let Some(secs) = lifetime {
        cmd.arg("-t").arg(secs.to_string());
    }
    cmd.arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(ssh_add_missing)?;
    let out = tokio::select! {
        out = child.wait_with_output() => {
            out.map_err(|e| Error::Local(format!("ssh-add failed: {e}")))?
        }
        sig = signals.any() => {
            return Err(Error::Local(format!("interrupted by {sig}; nothing was kept on disk")));
        }
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(Error::Local(format!(
            "ssh-add could not add the key to the agent: {}",
            said.trim()
        )));
    }
    if !said.contains("Certificate added") {
        eprintln!(
            "WARNING! ssh-add added the key but did not say it added the certificate: {}",
            said.trim()
        );
    }
    Ok(())
}

/// SIGINT, SIGTERM, SIGHUP and SIGQUIT, caught instead of ending the
/// process (so that temporary files are removed first).
pub(super) struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn new() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let s =
            |k| signal(k).map_err(|e| Error::Local(format!("cannot set up signal handling: {e}")));
        Ok(Signals {
            int: s(SignalKind::interrupt())?,
            term: s(SignalKind::terminate())?,
            hup: s(SignalKind::hangup())?,
            quit: s(SignalKind::quit())?,
        })
    }

    /// The next signal to arrive.
    pub(super) async fn next(&mut self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal;
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.hup.recv() => Signal::SIGHUP,
            _ = self.quit.recv() => Signal::SIGQUIT,
        }
    }

    pub(super) async fn any(&mut self) -> &'static str {
        self.next().await.as_str()
    }
}

// ---------------------------------------------------------- trust-hosts

async fn trust_hosts(ctx: &Ctx, args: TrustArgs) -> Result<()> {
    check_pattern(&args.domain)?;
    let known_hosts = match args.known_hosts {
        Some(p) => p,
        None => home()?.join(".ssh").join("known_hosts"),
    };
    let mount = mount_path(&args.mount)?;
    let path = format!("{mount}/public_key");
    let action = format!("reading the CA's public key from {path}");
    let text = ctx
        .client
        .get_text(&path)
        .await
        .map_err(|e| ctx.api_error(unwrap_json_errors(e), &action))?;
    let keys = parse_ca_keys(&text, &action)?;
    let wanted: Vec<String> = keys
        .iter()
        .map(|k| format!("@cert-authority {} {k}", args.domain))
        .collect();

    let existing = match fs::read_to_string(&known_hosts) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(Error::Local(format!(
                "cannot read {}: {e}",
                known_hosts.display()
            )))
        }
    };
    let (added, present): (Vec<&String>, Vec<&String>) =
        wanted.iter().partition(|l| !contains_line(&existing, l));
    if !added.is_empty() {
        let mut text = existing.clone();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for l in &added {
            text.push_str(l);
            text.push('\n');
        }
        write_known_hosts(&known_hosts, &text)
            .map_err(|e| Error::Local(format!("cannot update {}: {e}", known_hosts.display())))?;
    }

    if ctx.format == Format::Json {
        output::print_json(&json!({
            "known_hosts": known_hosts.display().to_string(),
            "added": added,
            "already_present": present,
        }));
        return Ok(());
    }
    let shown = known_hosts.display();
    if !added.is_empty() {
        println!("Added to {shown}:");
        for l in &added {
            println!("  {l}");
        }
    }
    if !present.is_empty() {
        println!("Already trusted in {shown}:");
        for l in &present {
            println!("  {l}");
        }
    }
    Ok(())
}

/// A known_hosts pattern list is one field: no spaces, no line breaks.
pub(super) fn check_pattern(p: &str) -> Result<()> {
    if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()) || p.starts_with('@')
    {
        return Err(Error::Usage(format!(
            "--domain {p:?} is not a known_hosts pattern (e.g. * or *.example.com)"
        )));
    }
    Ok(())
}

/// The CA keys, one per line, each checked to be an OpenSSH public key and
/// written back as `type base64 [comment]`.
pub(super) fn parse_ca_keys(text: &str, action: &str) -> Result<Vec<String>> {
    let keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            PublicKey::from_openssh(l)
                .and_then(|k| k.to_openssh())
                .map_err(|_| {
                    Error::Local(format!(
                        "{action}: the server sent something that is not an SSH public key"
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    if keys.is_empty() {
        return Err(Error::Local(format!("{action}: the server sent no key")));
    }
    Ok(keys)
}

/// Whether known_hosts already has this line: same marker, patterns and
/// key, whatever the spacing or comment.
fn contains_line(known_hosts: &str, line: &str) -> bool {
    let norm = |l: &str| -> Option<(String, String, String, String)> {
        let mut f = l.split_whitespace();
        Some((
            f.next()?.to_ascii_lowercase(),
            f.next()?.to_string(),
            f.next()?.to_string(),
            f.next()?.to_string(),
        ))
    };
    let want = norm(line);
    want.is_some() && known_hosts.lines().any(|l| norm(l) == want)
}

/// Rewrites known_hosts through a temporary file and a rename: creating
/// ~/.ssh (0700) and the file (0644) when missing, keeping an existing
/// file's mode, and writing through a symlink to its target.
fn write_known_hosts(path: &Path, text: &str) -> io::Result<()> {
    write_user_file(path, text, 0o644)
}

/// Rewrites a file of the user's ssh setup (known_hosts, config) the way
/// [`write_known_hosts`] does; a new file gets `new_mode`.
pub(super) fn write_user_file(path: &Path, text: &str, new_mode: u32) -> io::Result<()> {
    let (target, mode) = match fs::metadata(path) {
        Ok(m) => (fs::canonicalize(path)?, m.permissions().mode() & 0o7777),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
            (path.to_path_buf(), new_mode)
        }
        Err(e) => return Err(e),
    };
    write_atomic(&target, text.as_bytes(), mode, true)
}

// --------------------------------------------------------------- shared

/// `<mount>/<op>/<role>`, refusing names that would reach another path.
pub(super) fn engine_path(mount: &str, op: &str, role: &str) -> Result<String> {
    let mount = mount_path(mount)?;
    if role.is_empty()
        || role.starts_with('.')
        || role
            .chars()
            .any(|c| matches!(c, '/' | '?' | '#' | '%') || c.is_whitespace())
    {
        return Err(Error::Usage(format!("{role:?} is not a valid role name")));
    }
    Ok(format!("{mount}/{op}/{role}"))
}

pub(super) fn mount_path(mount: &str) -> Result<String> {
    let m = mount.trim_matches('/');
    let bad = m.is_empty()
        || m.split('/').any(|s| s.is_empty() || s == "." || s == "..")
        || m.chars()
            .any(|c| matches!(c, '?' | '#' | '%') || c.is_whitespace());
    if bad {
        return Err(Error::Usage(format!("{mount:?} is not a valid mount path")));
    }
    Ok(m.to_string())
}

/// The request fields `sign` and `issue` share.
fn cert_body(c: &CertArgs) -> Result<Map<String, Value>> {
    let mut body = Map::new();
    let principals: Vec<&str> = c
        .principals
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect();
    if !principals.is_empty() {
        body.insert("valid_principals".into(), json!(principals.join(",")));
    }
    if let Some(ttl) = &c.ttl {
        body.insert("ttl".into(), json!(ttl));
    }
    if let Some(id) = &c.key_id {
        body.insert("key_id".into(), json!(id));
    }
    if !c.extensions.is_empty() {
        let m = option_map(&c.extensions, "--extension", true)?;
        body.insert("extensions".into(), Value::Object(m));
    }
    if !c.critical_options.is_empty() {
        let m = option_map(&c.critical_options, "--critical-option", false)?;
        body.insert("critical_options".into(), Value::Object(m));
    }
    Ok(body)
}

/// NAME=VALUE items as a map. Extensions usually have no value, so there
/// a bare NAME means NAME="".
fn option_map(items: &[String], flag: &str, bare_ok: bool) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for item in items {
        let (k, v) = match item.split_once('=') {
            Some((k, v)) => (k, v),
            None if bare_ok => (item.as_str(), ""),
            None => {
                return Err(Error::Usage(format!(
                    "{flag} {item:?}: expected NAME=VALUE"
                )))
            }
        };
        if k.is_empty() {
            return Err(Error::Usage(format!("{flag} {item:?}: the name is empty")));
        }
        if m.insert(k.to_string(), json!(v)).is_some() {
            return Err(Error::Usage(format!("{flag} {k} is given twice")));
        }
    }
    Ok(m)
}

/// The certificate in a `sign` or `issue` answer.
pub(super) fn signed_key(resp: &Value, action: &str) -> Result<String> {
    gatepass_api::data_of::<gatepass_api::ssh::SignedKey>(resp)
        .map(|d| d.signed_key)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| Error::Local(format!("{action}: the server's answer holds no signed_key")))
}

pub(super) fn parse_cert(text: &str, action: &str) -> Result<Certificate> {
    Certificate::from_openssh(text.trim()).map_err(|e| {
        Error::Local(format!(
            "{action}: the server's certificate cannot be read: {e}"
        ))
    })
}

/// The serial as the server wrote it (hex), else from the certificate.
pub(super) fn serial(resp: &Value, cert: &Certificate) -> String {
    match resp.pointer("/data/serial_number").and_then(Value::as_str) {
        Some(s) => s.to_string(),
        None => format!("{:016x}", cert.serial()),
    }
}

/// What a person wants to know about a new certificate.
fn cert_rows(cert: &Certificate, serial: &str, now: u64) -> Vec<Row> {
    let principals = if cert.valid_principals().is_empty() {
        json!("(any)")
    } else {
        json!(cert.valid_principals())
    };
    let before = cert.valid_before();
    let left = match before.checked_sub(now) {
        _ if before == u64::MAX => String::new(),
        Some(s) if s > 0 => format!(" (in {})", output::format_duration(s as i64, false)),
        _ => " (expired)".into(),
    };
    let mut rows: Vec<Row> = vec![
        ("serial_number".into(), json!(serial)),
        ("key_id".into(), json!(cert.key_id())),
        (
            "cert_type".into(),
            json!(match cert.cert_type() {
                CertType::User => "user",
                CertType::Host => "host",
            }),
        ),
        ("valid_principals".into(), principals),
        ("valid_after".into(), json!(date(cert.valid_after()))),
        (
            "valid_before".into(),
            json!(format!("{}{left}", date(before))),
        ),
    ];
    let names = |m: &ssh_key::certificate::OptionsMap| -> Value {
        json!(m
            .iter()
            .map(|(k, v)| if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            })
            .collect::<Vec<_>>())
    };
    if !cert.critical_options().is_empty() {
        rows.push(("critical_options".into(), names(cert.critical_options())));
    }
    if !cert.extensions().is_empty() {
        rows.push(("extensions".into(), names(cert.extensions())));
    }
    rows
}

/// RFC 3339 in UTC, as the server and Vault print times.
pub(super) fn date(secs: u64) -> String {
    if secs == u64::MAX {
        return "forever".into();
    }
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

pub(super) fn ensure_newline(s: &str) -> String {
    format!("{}\n", s.trim_end())
}

/// `get_text` hands back a refusal's raw body, which is Vault's
/// `{"errors": […]}`; unwrapped so the message reads like the others.
pub(super) fn unwrap_json_errors(e: gatepass_api::Error) -> gatepass_api::Error {
    match e {
        gatepass_api::Error::Api { status, errors } => {
            let errors = match errors.as_slice() {
                [one] => serde_json::from_str::<Value>(one)
                    .ok()
                    .and_then(|v| v.get("errors").cloned())
                    .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
                    .unwrap_or(errors),
                _ => errors,
            };
            gatepass_api::Error::Api { status, errors }
        }
        other => other,
    }
}

/// Writes through a temporary file in the same folder and a rename, so a
/// reader sees the old file or the new one, never half of one. The mode is
/// set on the open file (not subject to the umask). Without `replace`, an
/// existing file is an `AlreadyExists` error.
pub(super) fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    replace: bool,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".gatepass-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    if replace {
        tmp.persist(path).map_err(|e| e.error)?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_paths_follow_ssh() {
        assert_eq!(
            cert_path(Path::new("/h/.ssh/id_ed25519.pub")),
            PathBuf::from("/h/.ssh/id_ed25519-cert.pub")
        );
        assert_eq!(
            cert_path(Path::new("key.txt")),
            PathBuf::from("key.txt-cert.pub")
        );
    }

    #[test]
    fn paths_stay_in_the_mount() {
        assert_eq!(engine_path("/ssh/", "sign", "dev").unwrap(), "ssh/sign/dev");
        assert_eq!(
            engine_path("team/ssh", "issue", "r").unwrap(),
            "team/ssh/issue/r"
        );
        for (m, r) in [
            ("ssh", "a/b"),
            ("ssh", ""),
            ("ssh", ".."),
            ("ssh", "a?b"),
            ("", "r"),
            ("a/../b", "r"),
            ("a b", "r"),
        ] {
            assert!(engine_path(m, "sign", r).is_err(), "{m} {r}");
        }
    }

    #[test]
    fn options_parse() {
        let s = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let m = option_map(&s(&["permit-pty", "x=a=b"]), "--extension", true).unwrap();
        assert_eq!(Value::Object(m), json!({"permit-pty": "", "x": "a=b"}));
        assert!(option_map(&s(&["force-command"]), "--critical-option", false).is_err());
        assert!(option_map(&s(&["a=1", "a=2"]), "--extension", true).is_err());
        assert!(option_map(&s(&["=1"]), "--extension", true).is_err());
    }

    #[test]
    fn body_fields() {
        let c = CertArgs {
            principals: vec!["alice".into(), " ".into(), "ops".into()],
            ttl: Some("1h".into()),
            key_id: None,
            extensions: vec!["permit-pty".into()],
            critical_options: vec![],
        };
        assert_eq!(
            Value::Object(cert_body(&c).unwrap()),
            json!({"valid_principals": "alice,ops", "ttl": "1h", "extensions": {"permit-pty": ""}})
        );
    }

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn known_hosts_lines_compare_by_content() {
        let line = format!("@cert-authority * {KEY}");
        let kh = format!("host1 {KEY}\n@cert-authority   *   {KEY} some comment\n");
        assert!(contains_line(&kh, &line));
        assert!(!contains_line(
            &format!("@cert-authority *.example.com {KEY}\n"),
            &line
        ));
        assert!(!contains_line(&format!("host1 {KEY}\n"), &line));
        assert!(!contains_line("", &line));
    }

    #[test]
    fn ca_keys_one_per_line() {
        let keys = parse_ca_keys(&format!("{KEY}\n\n{KEY} c\n"), "x").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(parse_ca_keys("", "x").is_err());
        assert!(parse_ca_keys("not a key\n", "x").is_err());
    }

    #[test]
    fn patterns() {
        assert!(check_pattern("*").is_ok());
        assert!(check_pattern("*.example.com,10.0.0.*").is_ok());
        assert!(check_pattern("a b").is_err());
        assert!(check_pattern("a\nb").is_err());
        assert!(check_pattern("").is_err());
    }

    #[test]
    fn json_errors_unwrapped() {
        let e = gatepass_api::Error::Api {
            status: 404,
            errors: vec![r#"{"errors":["no CA key configured on this mount"]}"#.into()],
        };
        match unwrap_json_errors(e) {
            gatepass_api::Error::Api { errors, .. } => {
                assert_eq!(errors, vec!["no CA key configured on this mount"])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn atomic_writes_keep_or_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o644, false).unwrap();
        let e = write_atomic(&p, b"two", 0o644, false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        write_atomic(&p, b"three", 0o600, true).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "three");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn known_hosts_created_private_folder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".ssh").join("known_hosts");
        write_known_hosts(&p, "x\n").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o644);
        assert_eq!(mode(p.parent().unwrap()), 0o700);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        write_known_hosts(&p, "y\n").unwrap();
        assert_eq!(mode(&p), 0o600, "an existing file keeps its mode");
    }

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01T00:00:00Z");
        assert_eq!(date(u64::MAX), "forever");
    }
}
