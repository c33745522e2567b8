//! `gatepass ssh connect`: one command that logs in with the system `ssh` in
//! every mode of a role (ca, otp, dynamic).
//!
//! Everything secret stays off command lines and out of environments:
//! - ca: the key is made in memory and goes to the ssh-agent (through a
//!   0700 folder that exists only while `ssh-add` runs), or, without an
//!   agent, to a 0600 file in a 0700 folder removed when ssh exits;
//! - otp: ssh asks `SSH_ASKPASS`, which is this same binary under the name
//!   `gatepass-askpass` (see `askpass.rs`); it reads the OTP from a named
//!   pipe in the 0700 folder. The pipe holds no data until the askpass opens
//!   it, so the OTP never touches a disk, and it is removed the moment it is
//!   opened, so it is answered once;
//! - dynamic: the private key is a 0600 file in the 0700 folder.
//!
//! The folder is removed on every path out: ssh's exit, however it ends
//! (also SIGKILL), errors, and SIGINT/SIGTERM/SIGHUP/SIGQUIT to us (passed
//! on to ssh while it runs).

use std::ffi::OsString;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use ssh_key::PrivateKey;
use zeroize::Zeroizing;

use super::agent::{agent_lifetime, check_agent, load_into_agent};
use super::creds::{expect_kind, request_creds, resolve, revoke_quietly, Destination};
use super::engine::{
    engine_path, mount_path, parse_ca_keys, sign_ephemeral, unwrap_json_errors, Ephemeral,
};
use super::signals::{interruptible, Signals};
use super::sshfiles::{check_ssh_option, write_new};
use super::{Ctx, GlobalArgs};
use crate::askpass;
use crate::clock::now;
use crate::error::{Error, Result};

pub const EXAMPLES: &str = "\
Examples:
  gatepass ssh connect --role ops root@10.1.2.3                  # mode from the role
  gatepass ssh connect --role ops --host-ca-mount ssh-hosts web1.example.com
  gatepass ssh connect --role otp --port 2222 ubuntu@10.1.2.3 -- uptime
  gatepass ssh connect --role dyn -o ServerAliveInterval=30 app@10.1.2.3 -- -t top";

/// What kind of credential logs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A certificate for an ephemeral key (role key_type=ca)
    Ca,
    /// A one-time password (role key_type=otp)
    Otp,
    /// A short-lived key pair installed on the host (role key_type=dynamic)
    Dynamic,
}

#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Where the ssh secrets engine is mounted
    #[arg(long, default_value = "ssh", value_name = "PATH")]
    pub mount: String,

    /// The role to get the credential from
    #[arg(long, value_name = "NAME")]
    pub role: String,

    /// How to log in [default: the role's key_type, read from
    /// <mount>/roles/<role>, which needs read access to it]
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,

    /// Trust only host certificates signed by the CA of this mount (its
    /// public_key, read without a token), with strict host key checking
    #[arg(long, value_name = "PATH", conflicts_with = "host_ca")]
    pub host_ca_mount: Option<String>,

    /// Like --host-ca-mount, with the CA's public key(s) from a file
    #[arg(long, value_name = "FILE")]
    pub host_ca: Option<PathBuf>,

    /// The host's SSH port [default: the role's port for otp and dynamic
    /// roles, ssh's own default for ca]
    #[arg(short, long, value_name = "PORT")]
    pub port: Option<u16>,

    /// ca: how long the certificate is valid, e.g. 5m [default: the role's ttl]
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,

    /// dynamic: how long the server waits for the host's gatepass-hostd to
    /// install the key ("0" not to wait)
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub wait: String,

    /// An ssh option (as ssh's -o), e.g. ServerAliveInterval=30; repeat
    /// for more
    #[arg(short = 'o', long = "ssh-option", value_name = "KEY=VALUE")]
    pub ssh_options: Vec<String>,

    /// ssh's configuration file (ssh -F) [default: ssh's own,
    /// ~/.ssh/config and /etc/ssh/ssh_config]
    #[arg(short = 'F', long, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,

    /// [USER@]HOST to log in to [default user: the role's default_user, or
    /// your local user name for a ca role without one]
    #[arg(value_name = "[USER@]HOST")]
    pub destination: String,

    /// After `--`: the remote command and its arguments, put after the
    /// host on ssh's command line
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// How ssh is to be run, with what each mode prepared.
struct Plan {
    user: String,
    port: Option<u16>,
    /// `-i` for a key file.
    identity: Option<PathBuf>,
    /// `-o` options, before the user's own.
    options: Vec<String>,
    env: Vec<(&'static str, OsString)>,
    /// otp: the pipe the askpass reads, and what it gets.
    otp: Option<(PathBuf, Zeroizing<String>)>,
    /// The creds answer, to give the lease back afterwards.
    creds: Option<Value>,
    /// What to tell the user when ssh fails to log in (exit 255).
    hint: String,
}

pub async fn connect(global: &GlobalArgs, args: ConnectArgs) -> Result<u8> {
    let ctx = Ctx::new(global)?;
    let dest = Destination::parse(&args.destination)?;
    let mount = mount_path(&args.mount)?;
    engine_path(&mount, "creds", &args.role)?;
    for o in &args.ssh_options {
        check_ssh_option(o)?;
    }
    if let Some(m) = &args.host_ca_mount {
        mount_path(m)?;
    }
    // From here on, a signal ends the command through the cleanup below.
    let mut signals = Signals::new()?;

    let (mode, role) = match args.mode {
        Some(m) => {
            // Only for a ca role's default user; a token may lack read on it.
            let role = match (m, &dest.user) {
                (Mode::Ca, None) => read_role(&ctx, &mount, &args.role).await.ok(),
                _ => None,
            };
            (m, role)
        }
        None => {
            let role = interruptible(&mut signals, read_role(&ctx, &mount, &args.role)).await?;
            (mode_of(&role, &mount, &args.role)?, Some(role))
        }
    };

    // Local and unauthenticated preparations first, so that a failure there
    // does not cost a credential.
    let dir = super::sshfiles::private_dir("gatepass-connect-")?;
    let known_hosts = match host_ca_keys(global, &args, &mut signals).await? {
        Some((keys, from)) => {
            let text: String = keys
                .iter()
                .map(|k| format!("@cert-authority * {k}\n"))
                .collect();
            let path = dir.path().join("known_hosts");
            write_new(&path, text.as_bytes(), 0o644)?;
            Some((path, from))
        }
        None => None,
    };

    let plan = match mode {
        Mode::Ca => {
            let user = match &dest.user {
                Some(u) => u.clone(),
                None => default_user(role.as_ref())?,
            };
            prepare_ca(
                &ctx,
                &mount,
                &args.role,
                &user,
                args.ttl.as_deref(),
                dir.path(),
                &mut signals,
            )
            .await?
        }
        Mode::Otp | Mode::Dynamic => {
            let ip = resolve(&dest.host).await?;
            let wait =
                (mode == Mode::Dynamic && !is_zero(&args.wait)).then_some(args.wait.as_str());
            let resp = interruptible(
                &mut signals,
                request_creds(&ctx, &mount, &args.role, dest.user.as_deref(), ip, wait),
            )
            .await?;
            // Only the lease's name, to give it back if the rest fails.
            let lease = json!({ "lease_id": resp.get("lease_id").cloned() });
            let prepared = if mode == Mode::Otp {
                prepare_otp(&ctx, resp, &args.role, dir.path()).await
            } else {
                prepare_dynamic(&ctx, resp, &args.role, dir.path(), &args.wait).await
            };
            if prepared.is_err() {
                revoke_quietly(&ctx, &lease).await;
            }
            prepared?
        }
    };

    let mut plan = plan;
    let mut host_hint = None;
    if let Some((path, from)) = &known_hosts {
        plan.options
            .push(format!("UserKnownHostsFile={}", path.display()));
        plan.options.push("StrictHostKeyChecking=yes".into());
        host_hint = Some(format!(
            "host keys were checked against the CA of {from} only: the host must present \
             a host certificate signed by it that names {:?}.",
            dest.host
        ));
    }
    let port = args.port.or(plan.port);
    let argv = ssh_command(
        &plan,
        port,
        args.ssh_config.as_deref(),
        &args.ssh_options,
        &dest.host,
        &args.command,
    );

    // The OTP goes only to the prompt of the login it is for, as ssh will
    // name it: not to a ProxyJump host's, whose ssh asks the same askpass.
    if plan.otp.is_some() {
        match login_named_by_ssh(&argv).await {
            Ok(login) => plan.env.push((askpass::LOGIN_VAR, login.into())),
            Err(e) => {
                if let Some(creds) = &plan.creds {
                    revoke_quietly(&ctx, creds).await;
                }
                return Err(e);
            }
        }
    }

    let outcome = run_ssh(&argv, &plan, &mut signals).await;
    // Given back when it can no longer be used: an OTP ssh never asked
    // for, a dynamic key whose file is about to go.
    if let Some(creds) = &plan.creds {
        let used_otp = plan.otp.is_some() && outcome.as_ref().is_ok_and(|o| o.otp_given);
        if !used_otp {
            revoke_quietly(&ctx, creds).await;
        }
    }
    let shown = dir.path().display().to_string();
    let cleaned = dir.close();
    let Ended {
        code,
        forwarded,
        otp_given,
    } = outcome?;
    if let Err(e) = cleaned {
        return Err(Error::Local(format!(
            "could not remove the temporary folder {shown}, which may hold a key: {e}; \
             delete it now"
        )));
    }
    if let Some(sig) = forwarded {
        eoutln!(
            "gatepass: ssh ended after {} was passed on to it",
            sig.as_str()
        );
    } else if code == 255 {
        let login = match (&plan.otp, otp_given) {
            (None, _) => plan.hint.clone(),
            (Some(_), true) => format!(
                "the one-time password was typed once; the host must check it against \
                 this server with gatepass-helper (pam_exec) and let {:?} in with role {}.",
                plan.user, args.role
            ),
            (Some(_), false) => "ssh never asked for the password: the host must allow \
                 keyboard-interactive or password logins through PAM (UsePAM yes)."
                .to_string(),
        };
        eoutln!(
            "Error: ssh could not connect or log in (exit status 255; ssh's own message is \
             above).\nHint: if the login was refused (\"Permission denied\"): {login}"
        );
        if let Some(h) = host_hint {
            eoutln!("Hint: if the host key was refused: {h}");
        }
    }
    Ok(code)
}

/// `GET <mount>/roles/<role>`: the role's settings.
async fn read_role(ctx: &Ctx, mount: &str, role: &str) -> Result<Value> {
    let path = engine_path(mount, "roles", role)?;
    let action = format!("reading the role {path}");
    match ctx.call("GET", &path, None, &action).await? {
        Some(v) => Ok(v.get("data").cloned().unwrap_or(Value::Null)),
        None => Err(Error::Api {
            action,
            status: 404,
            errors: vec![format!(
                "unknown role: {role} (no such role on the mount {mount})"
            )],
            hint: None,
        }),
    }
}

fn mode_of(role: &Value, mount: &str, name: &str) -> Result<Mode> {
    match role.get("key_type").and_then(Value::as_str) {
        Some("ca") => Ok(Mode::Ca),
        Some("otp") => Ok(Mode::Otp),
        Some("dynamic") => Ok(Mode::Dynamic),
        other => Err(Error::Local(format!(
            "the role {mount}/roles/{name} has key_type {other:?}; pass --mode ca|otp|dynamic"
        ))),
    }
}

/// ca without USER@: the role's default_user, else the local user name.
fn default_user(role: Option<&Value>) -> Result<String> {
    if let Some(u) = role
        .and_then(|r| r.get("default_user"))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty() && !u.contains('{'))
    {
        super::pam::check_login(u, "the role's default_user")?;
        return Ok(u.to_string());
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .ok_or_else(|| Error::Usage("no user given: use USER@HOST".into()))
}

fn is_zero(d: &str) -> bool {
    d.trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse::<u64>()
        .is_ok_and(|n| n == 0)
}

/// The host CA's keys and where they came from, if host certificates are
/// to be checked.
async fn host_ca_keys(
    global: &GlobalArgs,
    args: &ConnectArgs,
    signals: &mut Signals,
) -> Result<Option<(Vec<String>, String)>> {
    if let Some(m) = &args.host_ca_mount {
        // No token: the CA's public key is public, and a stale token in the
        // environment must not get in the way.
        let anon = Ctx::anonymous(global)?;
        let path = format!("{}/public_key", mount_path(m)?);
        let action = format!("reading the host CA's public key from {path}");
        let text = interruptible(signals, async {
            anon.client
                .get_text(&path)
                .await
                .map_err(|e| anon.api_error(unwrap_json_errors(e), &action))
        })
        .await?;
        return Ok(Some((
            parse_ca_keys(&text, &action)?,
            format!("the mount {m}"),
        )));
    }
    if let Some(f) = &args.host_ca {
        let text = fs::read_to_string(f).map_err(|e| {
            Error::Local(format!("cannot read the host CA key {}: {e}", f.display()))
        })?;
        let action = format!("reading the host CA key {}", f.display());
        return Ok(Some((
            parse_ca_keys(&text, &action)?,
            f.display().to_string(),
        )));
    }
    Ok(None)
}

// ------------------------------------------------------------------ ca

async fn prepare_ca(
    ctx: &Ctx,
    mount: &str,
    role: &str,
    user: &str,
    ttl: Option<&str>,
    dir: &Path,
    signals: &mut Signals,
) -> Result<Plan> {
    let path = engine_path(mount, "sign", role)?;
    let Ephemeral {
        pem,
        cert,
        cert_text,
    } = sign_ephemeral(ctx, mount, role, user, ttl, Some(signals)).await?;
    let cert_file = dir.join("id-cert.pub");
    let hint = format!(
        "the certificate from {path} names the user {user:?}; the host must trust the CA \
         of {mount} (TrustedUserCAKeys, as gatepass-hostd sets up) and let {user:?} log in \
         with it."
    );

    let mut plan = Plan {
        user: user.to_string(),
        port: None,
        identity: None,
        options: vec![],
        env: vec![],
        otp: None,
        creds: None,
        hint,
    };
    if check_agent().await.is_ok() {
        // Through a folder of its own, gone as soon as ssh-add has read it.
        let lifetime = agent_lifetime(&cert, now())?;
        let sub = dir.join("agent");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&sub)
            .map_err(|e| Error::Local(format!("cannot create {}: {e}", sub.display())))?;
        let added = load_into_agent(&sub, "id", &pem, &cert_text, lifetime, signals).await;
        drop(pem);
        fs::remove_dir_all(&sub).map_err(|e| {
            Error::Local(format!(
                "could not remove {}, which holds the private key: {e}; delete it now",
                sub.display()
            ))
        })?;
        added?;
        // Only the certificate's public text stays, so that ssh offers
        // exactly this identity of the agent.
        write_new(&cert_file, cert_text.as_bytes(), 0o644)?;
        plan.options
            .push(format!("IdentityFile={}", cert_file.display()));
    } else {
        let key_file = dir.join("id");
        write_new(&key_file, pem.as_bytes(), 0o600)?;
        drop(pem);
        write_new(&cert_file, cert_text.as_bytes(), 0o644)?;
        plan.identity = Some(key_file);
        plan.options
            .push(format!("CertificateFile={}", cert_file.display()));
    }
    plan.options.push("IdentitiesOnly=yes".into());
    Ok(plan)
}

// ----------------------------------------------------------------- otp

async fn prepare_otp(ctx: &Ctx, mut resp: Value, role: &str, dir: &Path) -> Result<Plan> {
    expect_kind(ctx, &resp, "otp", role).await?;
    let otp = match resp.pointer_mut("/data/key").map(Value::take) {
        Some(Value::String(s)) if !s.is_empty() => Zeroizing::new(s),
        _ => {
            return Err(Error::Local(
                "the server's answer holds no one-time password".into(),
            ))
        }
    };
    let (user, port) = user_and_port(&resp)?;
    let fifo = dir.join("otp");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| Error::Local(format!("cannot create the pipe {}: {e}", fifo.display())))?;
    let askpass = askpass::install(dir)?;
    Ok(Plan {
        user,
        port,
        identity: None,
        options: vec![
            "PreferredAuthentications=keyboard-interactive,password".into(),
            "PubkeyAuthentication=no".into(),
            "NumberOfPasswordPrompts=1".into(),
            "BatchMode=no".into(),
        ],
        env: vec![
            ("SSH_ASKPASS", askpass.into_os_string()),
            ("SSH_ASKPASS_REQUIRE", "force".into()),
            (askpass::FIFO_VAR, fifo.clone().into_os_string()),
        ],
        otp: Some((fifo, otp)),
        creds: Some(resp),
        hint: String::new(),
    })
}

/// Hands the OTP over through the pipe: waits (without blocking) for a
/// reader, removes the pipe as soon as it is open so nobody else can get
/// it, writes, closes. True once delivered.
async fn feed_otp(fifo: &Path, otp: &str) -> bool {
    loop {
        match fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(fifo)
        {
            Ok(mut f) => {
                let _ = fs::remove_file(fifo);
                let msg = Zeroizing::new(format!("{otp}\n"));
                return f.write_all(msg.as_bytes()).is_ok();
            }
            // No reader yet.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(_) => return false,
        }
    }
}

// ------------------------------------------------------------- dynamic

async fn prepare_dynamic(
    ctx: &Ctx,
    mut resp: Value,
    role: &str,
    dir: &Path,
    wait: &str,
) -> Result<Plan> {
    expect_kind(ctx, &resp, "dynamic", role).await?;
    let key = match resp.pointer_mut("/data/key").map(Value::take) {
        Some(Value::String(s)) => Zeroizing::new(s),
        _ => {
            return Err(Error::Local(
                "the server's answer holds no private key".into(),
            ))
        }
    };
    if let Err(e) = PrivateKey::from_openssh(key.trim()) {
        return Err(Error::Local(format!(
            "the server's private key is not an OpenSSH key: {e}"
        )));
    }
    let (user, port) = user_and_port(&resp)?;
    let key_file = dir.join("id");
    write_new(
        &key_file,
        Zeroizing::new(format!("{}\n", key.trim_end())).as_bytes(),
        0o600,
    )?;
    drop(key);
    let installed = resp.pointer("/data/installed").and_then(Value::as_bool);
    let hint = match installed {
        Some(true) => "the host's gatepass-hostd reported the key installed; see the \
                       host's sshd log."
            .to_string(),
        Some(false) => format!(
            "the host did not report the key installed within {wait}: is gatepass-hostd \
             running there and enrolled with this address?"
        ),
        None => "the key must be installed on the host by its gatepass-hostd first \
                 (use --wait to wait for it)."
            .to_string(),
    };
    if installed == Some(false) {
        eoutln!(
            "WARNING! The host has not reported the key installed within {wait}; trying anyway."
        );
    }
    Ok(Plan {
        user,
        port,
        identity: Some(key_file),
        options: vec!["IdentitiesOnly=yes".into()],
        env: vec![],
        otp: None,
        creds: Some(resp),
        hint,
    })
}

fn user_and_port(resp: &Value) -> Result<(String, Option<u16>)> {
    let user = resp
        .pointer("/data/username")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Error::Local("the server's answer names no username".into()))?
        .to_string();
    super::pam::check_login(&user, "connecting")?;
    let port = resp
        .pointer("/data/port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0);
    Ok((user, port))
}

// ------------------------------------------------------------- run ssh

/// `ssh [-F CONFIG] [-p PORT] -l USER [-i KEY] -o OURS… -o THEIRS… -- HOST [COMMAND…]`.
fn ssh_command(
    plan: &Plan,
    port: Option<u16>,
    config: Option<&Path>,
    extra_options: &[String],
    host: &str,
    command: &[String],
) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec!["ssh".into()];
    if let Some(c) = config {
        argv.push("-F".into());
        argv.push(c.into());
    }
    if let Some(p) = port {
        argv.push("-p".into());
        argv.push(p.to_string().into());
    }
    argv.push("-l".into());
    argv.push(plan.user.clone().into());
    if let Some(k) = &plan.identity {
        argv.push("-i".into());
        argv.push(k.clone().into());
    }
    for o in plan.options.iter().chain(extra_options) {
        argv.push("-o".into());
        argv.push(o.into());
    }
    argv.push("--".into());
    argv.push(host.into());
    argv.extend(command.iter().map(OsString::from));
    argv
}

/// `USER@HOST` as ssh's prompts for the login `argv` makes will name it:
/// the user and, as `ssh -G` resolves them through the ssh configuration,
/// the host key alias or else the host name.
async fn login_named_by_ssh(argv: &[OsString]) -> Result<String> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.arg("-G")
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .map_err(|_| Error::Local("`ssh -G` did not answer within 10 s".into()))?
        .map_err(|e| Error::Local(format!("cannot run `ssh -G`: {e}")))?;
    if !out.status.success() {
        return Err(Error::Local(format!(
            "`ssh -G` could not read the ssh configuration: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    login_in_ssh_config(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| Error::Local("`ssh -G` printed no user or host name for the login".into()))
}

/// `USER@HOST` from `ssh -G`'s output (`KEYWORD VALUE` lines).
fn login_in_ssh_config(text: &str) -> Option<String> {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let host = value("hostkeyalias").or_else(|| value("hostname"))?;
    Some(format!("{}@{host}", value("user")?))
}

/// How ssh ended.
struct Ended {
    /// Its exit status, 128+N when signal N killed it.
    code: u8,
    /// Whether the OTP was handed to the askpass.
    otp_given: bool,
    /// The last signal we passed on to it.
    forwarded: Option<Signal>,
}

/// Runs ssh to the end, passing our signals on to it.
async fn run_ssh(argv: &[OsString], plan: &Plan, signals: &mut Signals) -> Result<Ended> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(plan.env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::Local("ssh was not found: install the OpenSSH client".into())
        } else {
            Error::Local(format!("cannot run ssh: {e}"))
        }
    })?;
    let pid = child.id().map(|p| Pid::from_raw(p as i32));
    let feed = async {
        match &plan.otp {
            Some((fifo, otp)) => feed_otp(fifo, otp).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(feed);
    let mut fed = false;
    let mut feeding = plan.otp.is_some();
    let mut forwarded = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            ok = &mut feed, if feeding => {
                feeding = false;
                fed = ok;
            }
            sig = signals.next() => {
                if let Some(pid) = pid {
                    let _ = kill(pid, sig);
                    forwarded = Some(sig);
                }
            }
        }
    };
    let status = status.map_err(|e| Error::Local(format!("waiting for ssh: {e}")))?;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => 128u8.saturating_add(s as u8),
        _ => 255,
    };
    if let (Some(sig), false) = (status.signal(), status.code().is_some()) {
        let name = Signal::try_from(sig)
            .map(|s| s.as_str())
            .unwrap_or("a signal");
        eoutln!("Error: ssh was killed by {name}");
    }
    Ok(Ended {
        code,
        otp_given: fed,
        forwarded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_is_named_as_ssh_will_name_it_in_its_prompts() {
        let g = "user root\nhostname 10.0.0.5\nport 22\nproxyjump jump@bastion\n";
        assert_eq!(login_in_ssh_config(g).as_deref(), Some("root@10.0.0.5"));
        let g = "user root\nhostname 10.0.0.5\nhostkeyalias web-1\n";
        assert_eq!(login_in_ssh_config(g).as_deref(), Some("root@web-1"));
        assert_eq!(login_in_ssh_config("hostname 10.0.0.5\n"), None);
    }

    #[test]
    fn a_username_from_the_server_that_ssh_could_read_otherwise_is_refused() {
        let with = |u: &str| json!({"data": {"username": u, "port": 22}});
        assert_eq!(user_and_port(&with("app")).unwrap().0, "app");
        for bad in ["x'$(id)'", "-oProxyCommand=x", "a b", "a%r"] {
            assert!(user_and_port(&with(bad)).is_err(), "{bad}");
        }
        let role = json!({"default_user": "x'$(id)'"});
        assert!(default_user(Some(&role)).is_err());
    }

    fn plan() -> Plan {
        Plan {
            user: "root".into(),
            port: Some(22),
            identity: Some("/t/id".into()),
            options: vec!["IdentitiesOnly=yes".into()],
            env: vec![],
            otp: None,
            creds: None,
            hint: String::new(),
        }
    }

    #[test]
    fn command_line_order() {
        let argv = ssh_command(
            &plan(),
            Some(2222),
            Some(Path::new("/dev/null")),
            &["ServerAliveInterval=5".into()],
            "10.0.0.1",
            &["echo".into(), "hello".into()],
        );
        let s: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            s,
            [
                "ssh",
                "-F",
                "/dev/null",
                "-p",
                "2222",
                "-l",
                "root",
                "-i",
                "/t/id",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ServerAliveInterval=5",
                "--",
                "10.0.0.1",
                "echo",
                "hello"
            ]
        );
    }

    #[test]
    fn modes_from_roles() {
        assert_eq!(
            mode_of(&json!({"key_type": "otp"}), "ssh", "r").unwrap(),
            Mode::Otp
        );
        assert_eq!(
            mode_of(&json!({"key_type": "ca"}), "ssh", "r").unwrap(),
            Mode::Ca
        );
        assert_eq!(
            mode_of(&json!({"key_type": "dynamic"}), "ssh", "r").unwrap(),
            Mode::Dynamic
        );
        assert!(mode_of(&json!({}), "ssh", "r").is_err());
    }

    #[test]
    fn zero_waits() {
        assert!(is_zero("0"));
        assert!(is_zero("0s"));
        assert!(!is_zero("10s"));
    }

    #[tokio::test]
    async fn the_otp_goes_to_one_reader_only() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("otp");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || fs::read_to_string(fifo).unwrap())
        };
        assert!(feed_otp(&fifo, "secret").await);
        assert_eq!(reader.join().unwrap(), "secret\n");
        assert!(!fifo.exists(), "the pipe is gone once opened");
    }
}
