//! `gatepass ssh …`: get certificates from the CA of an ssh mount and put
//! them where OpenSSH looks for them (next to the key, in the agent, in
//! known_hosts); one-time passwords and dynamic keys (`creds.rs`); logging
//! in with the system `ssh` in every mode (`connect.rs`) and through
//! `~/.ssh/config` (`sshconfig.rs`). What these share is in `engine.rs`
//! (paths, answers, signing a key made in memory), `agent.rs`,
//! `sshfiles.rs` (the user's key, certificate, known_hosts and config
//! files) and `signals.rs`.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, LineEnding, PrivateKey};
use zeroize::Zeroizing;

use super::agent::{add_to_agent, check_agent};
use super::engine::{
    ca_public_keys, engine_path, ensure_newline, parse_cert, serial, signed_cert, signed_key,
    with_comment,
};
use super::sshfiles::{
    cert_path, check_pattern, contains_line, default_public_key, home, read_public_key,
    with_suffix, write_atomic, write_known_hosts,
};
use super::{connect, creds, sshconfig, Ctx, GlobalArgs};
use crate::clock::now;
use crate::error::{Error, Result};
use crate::output::{self, date, Row};

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
    /// once (the pipe is removed as soon as it was opened), to the prompt
    /// of USER@HOST only (as `ssh -G` resolves them): a ProxyJump host's
    /// password prompt is asked at the terminal.
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
    let (signed, cert) = signed_cert(&resp, &action, public.key_data())?;

    write_atomic(&out_path, ensure_newline(&signed).as_bytes(), 0o644, true).map_err(|e| {
        Error::Local(format!(
            "cannot write the certificate to {}: {e}",
            out_path.display()
        ))
    })?;

    if ctx.format.is_structured() {
        output::print_structured(&resp, ctx.format);
        return Ok(());
    }
    output::print_warnings(&resp);
    outln!("Success! Certificate written to {}\n", out_path.display());
    output::print_table(&cert_rows(&cert, &serial(&resp, &cert), now()));
    Ok(())
}

// ---------------------------------------------------------------- issue

/// The private key of an `ssh/issue` answer: in OpenSSH's form, or in the
/// PEM forms Vault gives RSA keys (PKCS#1) and ECDSA keys (SEC1), which
/// gatepass's server gives too.
fn issued_private_key(text: &str) -> std::result::Result<PrivateKey, String> {
    use ssh_key::private::{EcdsaKeypair, KeypairData, RsaKeypair};
    let pem = |label: &str| text.starts_with(&format!("-----BEGIN {label}-----"));
    if pem("RSA PRIVATE KEY") {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        let key = rsa::RsaPrivateKey::from_pkcs1_pem(text).map_err(|e| e.to_string())?;
        let pair = RsaKeypair::try_from(&key).map_err(|e| e.to_string())?;
        PrivateKey::new(KeypairData::Rsa(pair), "").map_err(|e| e.to_string())
    } else if pem("EC PRIVATE KEY") {
        // The curve by the key's size and the name the PEM holds (each
        // crate refuses the other's).
        let pair = if let Ok(k) = p256::SecretKey::from_sec1_pem(text) {
            EcdsaKeypair::NistP256 {
                public: k.public_key().into(),
                private: k.into(),
            }
        } else {
            let k = p384::SecretKey::from_sec1_pem(text)
                .map_err(|_| "an EC key on a curve other than P-256 or P-384".to_string())?;
            EcdsaKeypair::NistP384 {
                public: k.public_key().into(),
                private: k.into(),
            }
        };
        PrivateKey::new(KeypairData::Ecdsa(pair), "").map_err(|e| e.to_string())
    } else {
        PrivateKey::from_openssh(text).map_err(|e| e.to_string())
    }
}

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
    let mut private = issued_private_key(private_text.trim()).map_err(|e| {
        Error::Local(format!(
            "{action}: the server's private_key cannot be read: {e}"
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

    if ctx.format.is_structured() {
        if let Some(Value::Object(data)) = resp.get_mut("data") {
            data.remove("private_key");
        }
        output::print_structured(&resp, ctx.format);
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
            outln!(
                "Success! A new {kind} key and its certificate were added to the ssh-agent \
                 ({socket}) {how_long}.\nThe private key was not kept on disk.\n"
            );
        }
        Done::Files(key, cert_file) => outln!(
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

// ---------------------------------------------------------- trust-hosts

async fn trust_hosts(ctx: &Ctx, args: TrustArgs) -> Result<()> {
    check_pattern(&args.domain)?;
    let known_hosts = match args.known_hosts {
        Some(p) => p,
        None => home()?.join(".ssh").join("known_hosts"),
    };
    let keys = ca_public_keys(ctx, &args.mount).await?;
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

    if ctx.format.is_structured() {
        output::print_structured(
            &json!({
                "known_hosts": known_hosts.display().to_string(),
                "added": added,
                "already_present": present,
            }),
            ctx.format,
        );
        return Ok(());
    }
    let shown = known_hosts.display();
    if !added.is_empty() {
        outln!("Added to {shown}:");
        for l in &added {
            outln!("  {l}");
        }
    }
    if !present.is_empty() {
        outln!("Already trusted in {shown}:");
        for l in &present {
            outln!("  {l}");
        }
    }
    Ok(())
}

// ------------------------------------------------------ sign and issue

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
        Some(s) if s > 0 => format!(" (in {})", output::format_remaining(s as i64)),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys as Vault's ssh/issue gives them (ssh-keygen's `-m PEM`
    /// writes the same PKCS#1 and SEC1 forms) are read as the same key
    /// ssh-keygen derives from them.
    #[test]
    fn an_issued_key_is_read_in_vaults_pem_forms_and_openssh() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, bits, form, begins) in [
            ("rsa", "2048", "PEM", "-----BEGIN RSA PRIVATE KEY-----"),
            ("ecdsa", "256", "PEM", "-----BEGIN EC PRIVATE KEY-----"),
            ("ecdsa", "384", "PEM", "-----BEGIN EC PRIVATE KEY-----"),
            (
                "ed25519",
                "256",
                "RFC4716",
                "-----BEGIN OPENSSH PRIVATE KEY-----",
            ),
        ] {
            let file = dir.path().join(format!("{kind}{bits}"));
            let made = std::process::Command::new("ssh-keygen")
                .args(["-q", "-N", "", "-t", kind, "-b", bits, "-m", form, "-f"])
                .arg(&file)
                .status()
                .unwrap();
            assert!(made.success());
            let text = fs::read_to_string(&file).unwrap();
            assert!(text.starts_with(begins), "{kind}: {text}");
            let key =
                issued_private_key(text.trim()).unwrap_or_else(|e| panic!("{kind}{bits}: {e}"));
            let public = fs::read_to_string(file.with_extension("pub")).unwrap();
            assert_eq!(
                key.public_key()
                    .to_openssh()
                    .unwrap()
                    .split_whitespace()
                    .nth(1),
                public.split_whitespace().nth(1),
                "{kind}{bits}"
            );
        }
        assert!(issued_private_key(
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----"
        )
        .is_err());
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
}
