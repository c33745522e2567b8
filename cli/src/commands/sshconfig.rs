//! Plain `ssh HOST` through gatepass: `gatepass ssh config` writes a
//! `Host` block whose ProxyCommand is `gatepass ssh proxy`, which puts a
//! certificate into the ssh-agent and then relays the connection; and
//! `gatepass ssh known-hosts`, the block's KnownHostsCommand for host
//! certificates.

use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ssh_key::certificate::CertType;
use ssh_key::Certificate;

use super::agent::{add_to_agent, check_agent, ssh_add_missing};
use super::engine::{ca_public_keys, engine_path, mount_path, sign_ephemeral};
use super::sshfiles::{check_pattern, home, write_user_file};
use super::{Ctx, GlobalArgs};
use crate::clock::now;
use crate::error::{Error, Result};

pub const CONFIG_EXAMPLES: &str = "\
Examples:
  gatepass ssh config --role ops '*.prod.example.com' 10.1.2.3
  gatepass ssh config --role ops --host-ca-mount ssh-hosts '*.prod.example.com' --write
  eval $(ssh-agent); ssh root@web1.prod.example.com";

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Where the ssh secrets engine is mounted
    #[arg(long, default_value = "ssh", value_name = "PATH")]
    pub mount: String,

    /// The role certificates come from (a role with key_type=ca)
    #[arg(long, value_name = "NAME")]
    pub role: String,

    /// Also trust host certificates from the CA of this mount
    /// (KnownHostsCommand; OpenSSH 8.5 or newer)
    #[arg(long, value_name = "PATH")]
    pub host_ca_mount: Option<String>,

    /// How long each certificate is valid, e.g. 1h [default: the role's ttl]
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,

    /// Add the block to the file (replacing the block this command wrote
    /// before for the same mount, role and patterns) instead of printing it
    #[arg(long)]
    pub write: bool,

    /// The file for --write [default: ~/.ssh/config]
    #[arg(long, value_name = "FILE", requires = "write")]
    pub file: Option<PathBuf>,

    /// Host patterns as in ssh_config's `Host`, e.g. *.example.com
    #[arg(value_name = "HOST_PATTERN", required = true)]
    pub patterns: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Where the ssh secrets engine is mounted
    #[arg(long, default_value = "ssh", value_name = "PATH")]
    pub mount: String,

    /// The role certificates come from (a role with key_type=ca)
    #[arg(long, value_name = "NAME")]
    pub role: String,

    /// The user logging in (ssh's %r): the certificate's principal
    #[arg(long, value_name = "USER")]
    pub user: String,

    /// How long the certificate is valid [default: the role's ttl]
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,

    /// The host to connect to (ssh's %h)
    #[arg(value_name = "HOST")]
    pub host: String,

    /// Its port (ssh's %p)
    #[arg(value_name = "PORT")]
    pub port: u16,
}

#[derive(Debug, clap::Args)]
pub struct KnownHostsArgs {
    /// Where the ssh secrets engine is mounted
    #[arg(long, default_value = "ssh", value_name = "PATH")]
    pub mount: String,

    /// The hosts the CA vouches for (a known_hosts pattern)
    #[arg(long, default_value = "*", value_name = "PATTERN")]
    pub domain: String,
}

// -------------------------------------------------------------- config

/// Quotes a word for the shell ssh runs ProxyCommand with.
fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Quotes a word for KnownHostsCommand, which ssh splits itself.
fn argv_quote(s: &str) -> String {
    if !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || "\"'\\".contains(c)) {
        return s.to_string();
    }
    format!("\"{}\"", s.replace('\\', r"\\").replace('"', "\\\""))
}

/// The marker lines around a block: one block per mount, role and patterns.
fn markers(mount: &str, role: &str, patterns: &[String]) -> (String, String) {
    let id = format!("{mount}/{role} {}", patterns.join(" "));
    (
        format!("# BEGIN gatepass {id}"),
        format!("# END gatepass {id}"),
    )
}

pub fn config_block(
    exe: &str,
    global: &GlobalArgs,
    args: &ConfigArgs,
    mount: &str,
) -> Result<String> {
    for p in &args.patterns {
        check_host_pattern(p)?;
    }
    let mut common = vec![sh_quote(exe)];
    if let Some(a) = &global.address {
        common.push(format!("--address={}", sh_quote(a)));
    }
    if let Some(c) = &global.ca_cert {
        let c = fs::canonicalize(c).unwrap_or_else(|_| c.clone());
        common.push(format!("--ca-cert={}", sh_quote(&c.display().to_string())));
    }
    let mut proxy = common.clone();
    proxy.extend([
        "ssh".into(),
        "proxy".into(),
        format!("--mount={}", sh_quote(mount)),
        format!("--role={}", sh_quote(&args.role)),
    ]);
    if let Some(t) = &args.ttl {
        proxy.push(format!("--ttl={}", sh_quote(t)));
    }
    proxy.extend(["--user='%r'".into(), "'%h'".into(), "'%p'".into()]);

    let (begin, end) = markers(mount, &args.role, &args.patterns);
    let mut b = format!(
        "{begin}\n\
         # Written by `gatepass ssh config`: ssh gets a short-lived certificate from\n\
         # {mount}/sign/{} through the ssh-agent for these hosts.\n\
         Host {}\n    ProxyCommand {}\n",
        args.role,
        args.patterns.join(" "),
        proxy.join(" ")
    );
    if let Some(m) = &args.host_ca_mount {
        let m = mount_path(m)?;
        let mut kh: Vec<String> = common.iter().map(|w| argv_quote(&unquote(w))).collect();
        kh.extend([
            "ssh".into(),
            "known-hosts".into(),
            format!("--mount={}", argv_quote(&m)),
        ]);
        b.push_str(&format!("    KnownHostsCommand {}\n", kh.join(" ")));
    }
    b.push_str(&end);
    b.push('\n');
    Ok(b)
}

/// Undoes [`sh_quote`] for words that are then quoted the other way.
fn unquote(w: &str) -> String {
    match w.split_once('=') {
        Some((k, v)) if k.starts_with("--") => format!("{k}={}", unquote(v)),
        _ => match w.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
            Some(inner) => inner.replace(r"'\''", "'"),
            None => w.to_string(),
        },
    }
}

/// Host patterns go on one config line: no spaces, quotes or comments.
fn check_host_pattern(p: &str) -> Result<()> {
    let ok = !p.is_empty()
        && !p
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"'#\\".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{p:?} is not a Host pattern (e.g. web1 or *.example.com)"
        )))
    }
}

/// The file's text with the block put in: in place of the block with the
/// same markers, else at the end.
fn with_block(existing: &str, block: &str) -> (String, bool) {
    let begin = block.lines().next().unwrap_or("");
    let end = begin.replacen("# BEGIN ", "# END ", 1);
    let lines: Vec<&str> = existing.lines().collect();
    if let Some(start) = lines.iter().position(|l| l.trim_end() == begin) {
        if let Some(len) = lines[start..].iter().position(|l| l.trim_end() == end) {
            let mut out = String::new();
            for l in &lines[..start] {
                out.push_str(l);
                out.push('\n');
            }
            out.push_str(block);
            for l in &lines[start + len + 1..] {
                out.push_str(l);
                out.push('\n');
            }
            return (out, true);
        }
    }
    let mut out = existing.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(block);
    (out, false)
}

pub fn config(global: &GlobalArgs, args: ConfigArgs) -> Result<()> {
    let mount = mount_path(&args.mount)?;
    engine_path(&mount, "sign", &args.role)?;
    let exe = std::env::current_exe()
        .and_then(fs::canonicalize)
        .map_err(|e| Error::Local(format!("cannot find this program's own path: {e}")))?;
    let block = config_block(&exe.display().to_string(), global, &args, &mount)?;
    if !args.write {
        out!("{block}");
        return Ok(());
    }
    let file = match &args.file {
        Some(f) => f.clone(),
        None => home()?.join(".ssh").join("config"),
    };
    let existing = match fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::Local(format!("cannot read {}: {e}", file.display()))),
    };
    let (text, replaced) = with_block(&existing, &block);
    if text == existing {
        outln!("{} already has this block.", file.display());
        return Ok(());
    }
    write_user_file(&file, &text, 0o600)
        .map_err(|e| Error::Local(format!("cannot update {}: {e}", file.display())))?;
    let how = if replaced { "Updated in" } else { "Added to" };
    outln!("{how} {}:\n{block}", file.display());
    Ok(())
}

// --------------------------------------------------------- known-hosts

pub async fn known_hosts(ctx: &Ctx, args: KnownHostsArgs) -> Result<()> {
    check_pattern(&args.domain)?;
    for k in ca_public_keys(ctx, &args.mount).await? {
        outln!("@cert-authority {} {k}", args.domain);
    }
    Ok(())
}

// --------------------------------------------------------------- proxy

pub async fn proxy(ctx: &Ctx, args: ProxyArgs) -> Result<()> {
    // Our stdout is ssh's connection: everything we say goes to stderr.
    let mount = mount_path(&args.mount)?;
    // A bad role name is refused before the agent is looked at.
    engine_path(&mount, "sign", &args.role)?;
    if std::env::var_os("SSH_AUTH_SOCK").is_none_or(|s| s.is_empty()) {
        return Err(Error::Local(
            "gatepass ssh proxy hands the certificate to ssh through the ssh-agent, but \
             SSH_AUTH_SOCK is not set: start one with `eval $(ssh-agent)`, or use \
             `gatepass ssh connect`"
                .into(),
        ));
    }
    check_agent().await?;
    let prefix = format!("gatepass:{mount}/{}:", args.role);
    if !agent_has_cert(&prefix, &args.user, now()).await? {
        let signed = sign_ephemeral(
            ctx,
            &mount,
            &args.role,
            &args.user,
            args.ttl.as_deref(),
            None,
        )
        .await?;
        let name = format!("gatepass_{}", args.role);
        add_to_agent(&name, &signed.pem, &signed.cert_text, &signed.cert, now()).await?;
    }
    relay(&args.host, args.port)
}

/// Whether the agent holds a certificate of ours for the user that stays
/// valid for at least another minute (so that ssh can log in with it).
async fn agent_has_cert(prefix: &str, user: &str, now: u64) -> Result<bool> {
    let out = tokio::process::Command::new("ssh-add")
        .arg("-L")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .map_err(ssh_add_missing)?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (Some(kind), Some(_), Some(comment)) = (f.next(), f.next(), f.next()) else {
            return false;
        };
        if !kind.ends_with("-cert-v01@openssh.com") || !comment.starts_with(prefix) {
            return false;
        }
        Certificate::from_openssh(l).is_ok_and(|c| {
            c.cert_type() == CertType::User
                && c.valid_principals().iter().any(|p| p == user)
                && c.valid_after() <= now
                && c.valid_before() > now + 60
        })
    }))
}

/// Connects to HOST:PORT and copies stdin to it and it to stdout until it
/// closes the connection.
fn relay(host: &str, port: u16) -> Result<()> {
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::Local(format!("cannot resolve {host}: {e}")))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, Duration::from_secs(10)) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = stream.ok_or_else(|| {
        Error::Local(format!(
            "cannot connect to {host} port {port}: {}",
            last.map(|e| e.to_string())
                .unwrap_or_else(|| "no address".into())
        ))
    })?;
    let _ = stream.set_nodelay(true);
    let io_err = |e: io::Error| Error::Local(format!("relaying to {host}: {e}"));
    // Unbuffered handles on fds 0 and 1: std's Stdout would hold bytes back
    // until a newline.
    let mut stdin = fs::File::from(io::stdin().as_fd().try_clone_to_owned().map_err(io_err)?);
    let mut stdout = fs::File::from(io::stdout().as_fd().try_clone_to_owned().map_err(io_err)?);
    let mut up = stream.try_clone().map_err(io_err)?;
    // A plain thread: it may sit in read(0) when we are done, and must not
    // keep the process alive.
    std::thread::spawn(move || {
        let _ = io::copy(&mut stdin, &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut down = stream;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match down.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        if let Err(e) = stdout.write_all(&buf[..n]) {
            // ssh went away: nothing left to relay.
            return if e.kind() == ErrorKind::BrokenPipe {
                Ok(())
            } else {
                Err(io_err(e))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Format;

    fn global() -> GlobalArgs {
        GlobalArgs {
            address: None,
            format: Format::Table,
            ca_cert: None,
            wrap_ttl: None,
        }
    }

    fn args(patterns: &[&str], host_ca: Option<&str>) -> ConfigArgs {
        ConfigArgs {
            mount: "ssh".into(),
            role: "ops".into(),
            host_ca_mount: host_ca.map(String::from),
            ttl: None,
            write: false,
            file: None,
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn block_text() {
        let b = config_block(
            "/usr/bin/gatepass",
            &global(),
            &args(&["*.ex.com", "web1"], Some("hosts")),
            "ssh",
        )
        .unwrap();
        assert_eq!(
            b,
            "# BEGIN gatepass ssh/ops *.ex.com web1\n\
             # Written by `gatepass ssh config`: ssh gets a short-lived certificate from\n\
             # ssh/sign/ops through the ssh-agent for these hosts.\n\
             Host *.ex.com web1\n    \
             ProxyCommand /usr/bin/gatepass ssh proxy --mount=ssh --role=ops --user='%r' '%h' '%p'\n    \
             KnownHostsCommand /usr/bin/gatepass ssh known-hosts --mount=hosts\n\
             # END gatepass ssh/ops *.ex.com web1\n"
        );
        let mut g = global();
        g.address = Some("https://gp.example.com:8200".into());
        let b = config_block(
            "/opt/my tools/gatepass",
            &g,
            &args(&["h"], Some("hosts")),
            "ssh",
        )
        .unwrap();
        assert!(
            b.contains("ProxyCommand '/opt/my tools/gatepass' --address=https://gp.example.com:8200 ssh proxy"),
            "{b}"
        );
        assert!(
            b.contains("KnownHostsCommand \"/opt/my tools/gatepass\" --address=https://gp.example.com:8200 ssh known-hosts"),
            "{b}"
        );
        assert!(config_block("/g", &global(), &args(&["a b"], None), "ssh").is_err());
        assert!(config_block("/g", &global(), &args(&["a#b"], None), "ssh").is_err());
    }

    #[test]
    fn blocks_are_replaced_not_repeated() {
        let block = config_block("/g", &global(), &args(&["h1"], None), "ssh").unwrap();
        let (once, replaced) = with_block("Host other\n    User bob\n", &block);
        assert!(!replaced);
        assert!(
            once.starts_with("Host other\n    User bob\n\n# BEGIN"),
            "{once}"
        );
        let (twice, replaced) = with_block(&once, &block);
        assert!(replaced);
        assert_eq!(twice, once);
        // A changed block replaces the old one in place.
        let mut a = args(&["h1"], None);
        a.ttl = Some("5m".into());
        let changed = config_block("/g", &global(), &a, "ssh").unwrap();
        let (updated, replaced) = with_block(&format!("{once}Host last\n"), &changed);
        assert!(replaced);
        assert_eq!(updated.matches("# BEGIN gatepass").count(), 1);
        assert!(updated.contains("--ttl=5m"));
        assert!(updated.ends_with("Host last\n"), "{updated}");
        // Another pattern set is another block.
        let other = config_block("/g", &global(), &args(&["h2"], None), "ssh").unwrap();
        let (two, _) = with_block(&once, &other);
        assert_eq!(two.matches("# BEGIN gatepass").count(), 2);
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/usr/bin/gatepass"), "/usr/bin/gatepass");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(unquote(&sh_quote("it's")), "it's");
        assert_eq!(unquote("--address='a b'"), "--address=a b");
        assert_eq!(argv_quote("a b"), "\"a b\"");
    }
}
