//! `gatepass ssh otp` and `gatepass ssh creds`: Vault's `<mount>/creds/<role>`
//! for one-time-password and dynamic-key roles, and what `connect` shares
//! with them (the `[user@]host` argument, resolving the host to an IP,
//! asking for credentials).

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::{json, Map, Value};
use ssh_key::PrivateKey;
use zeroize::Zeroizing;

use super::engine::engine_path;
use super::sshfiles::{io_reason, write_atomic};
use super::Ctx;
use crate::clock::now;
use crate::error::{Error, Result};
use crate::output::{self, Row};

pub const OTP_EXAMPLES: &str = "\
Examples:
  gatepass ssh otp --role otp ubuntu@10.1.2.3
  gatepass ssh otp --role otp web1.example.com          # the role's default_user
  OTP=$(gatepass ssh otp --role otp --field key root@10.1.2.3)
  gatepass ssh connect --role otp root@10.1.2.3         # or let gatepass type it";

pub const CREDS_EXAMPLES: &str = "\
Examples:
  gatepass ssh creds --role dyn app@10.1.2.3            # ./gatepass_dyn_10.1.2.3
  ssh -i ./gatepass_dyn_10.1.2.3 app@10.1.2.3
  gatepass ssh creds --role dyn --output ~/.ssh/web1 --force --wait 10s app@web1";

/// `[user@]host` as typed: the host as given (brackets of `[::1]` removed)
/// and the user if one was named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub user: Option<String>,
    pub host: String,
}

impl Destination {
    pub fn parse(s: &str) -> Result<Destination> {
        let (user, host) = match s.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, s),
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let bad = |t: &str| {
            t.is_empty()
                || t.starts_with('-')
                || t.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "'\"`$;&|<>\\".contains(c))
        };
        if bad(host) || host.contains('/') {
            return Err(Error::Usage(format!(
                "{s:?} is not a destination: expected HOST or USER@HOST"
            )));
        }
        if let Some(u) = user {
            if bad(u) || u.contains('@') {
                return Err(Error::Usage(format!("{u:?} is not a user name")));
            }
        }
        Ok(Destination {
            user: user.map(String::from),
            host: host.to_string(),
        })
    }
}

/// The IP address credentials are made for, as `vault ssh` finds it: an
/// address is taken as it is, a name is looked up (IPv4 preferred).
pub async fn resolve(host: &str) -> Result<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let addrs: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| Error::Local(format!("cannot resolve the host {host:?}: {e}")))?
        .map(|a| a.ip())
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| Error::Local(format!("the host {host:?} has no address")))
}

/// `POST <mount>/creds/<role> {ip, username?, wait?}`.
pub async fn request_creds(
    ctx: &Ctx,
    mount: &str,
    role: &str,
    user: Option<&str>,
    ip: IpAddr,
    wait: Option<&str>,
) -> Result<Value> {
    let path = engine_path(mount, "creds", role)?;
    let mut body = Map::new();
    body.insert("ip".into(), json!(ip.to_string()));
    if let Some(u) = user {
        body.insert("username".into(), json!(u));
    }
    if let Some(w) = wait {
        body.insert("wait".into(), json!(w));
    }
    let action = format!("requesting credentials for {ip} from {path}");
    ctx.call("POST", &path, Some(&body), &action)
        .await?
        .ok_or_else(|| Error::Local(format!("{action}: empty answer from the server")))
}

/// The credential's kind must be what the command handles; otherwise the
/// credential is of no use and its lease is given back.
pub async fn expect_kind(ctx: &Ctx, resp: &Value, want: &str, role: &str) -> Result<()> {
    let got = resp
        .pointer("/data/key_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    if got == want {
        return Ok(());
    }
    revoke_quietly(ctx, resp).await;
    let what = match got {
        "otp" => "a one-time password role: use `gatepass ssh otp` or `gatepass ssh connect`",
        "dynamic" => "a dynamic-key role: use `gatepass ssh creds` or `gatepass ssh connect`",
        _ => "not an OTP or dynamic-key role",
    };
    Err(Error::Usage(format!("role {role} is {what}")))
}

/// Gives a credential back (`sys/leases/revoke`), when it will not be used.
/// Best effort: the token may not be allowed to, and the lease expires anyway.
pub async fn revoke_quietly(ctx: &Ctx, resp: &Value) {
    if let Some(id) = resp
        .get("lease_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        let body: Map<String, Value> = [("lease_id".to_string(), json!(id))].into_iter().collect();
        let _ = ctx
            .client
            .request("PUT", "sys/leases/revoke", Some(&body))
            .await;
    }
}

// ------------------------------------------------------------------ otp

#[derive(Debug, clap::Args)]
pub struct OtpArgs {
    /// Where the ssh secrets engine is mounted
    #[arg(long, default_value = "ssh", value_name = "PATH")]
    pub mount: String,

    /// The role (a role with key_type=otp)
    #[arg(long, value_name = "NAME")]
    pub role: String,

    /// Print only this field of the answer, e.g. key (the OTP itself)
    #[arg(long, value_name = "NAME")]
    pub field: Option<String>,

    /// [USER@]HOST: the host's IP address or name, and the user to log in
    /// as [default user: the role's default_user]
    #[arg(value_name = "[USER@]HOST")]
    pub destination: String,
}

pub async fn otp(ctx: &Ctx, args: OtpArgs) -> Result<()> {
    let dest = Destination::parse(&args.destination)?;
    let ip = resolve(&dest.host).await?;
    let resp = request_creds(ctx, &args.mount, &args.role, dest.user.as_deref(), ip, None).await?;
    expect_kind(ctx, &resp, "otp", &args.role).await?;
    if let Some(name) = &args.field {
        output::print_warnings(&resp);
        return match name.as_str() {
            "lease_id" | "lease_duration" => {
                outln!("{}", output::plain(&resp[name]));
                Ok(())
            }
            _ => output::print_field(&resp, name),
        };
    }
    if ctx.format.is_structured() {
        output::print_structured(&resp, ctx.format);
        return Ok(());
    }
    output::print_warnings(&resp);
    let d = |k: &str| {
        resp.pointer(&format!("/data/{k}"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    output::print_table(&[
        ("lease_id".into(), resp["lease_id"].clone()),
        ("lease_duration".into(), json!(duration(&resp))),
        ("username".into(), d("username")),
        ("ip".into(), d("ip")),
        ("port".into(), d("port")),
        ("key".into(), d("key")),
    ]);
    Ok(())
}

fn duration(resp: &Value) -> String {
    output::format_duration(
        resp.get("lease_duration")
            .and_then(Value::as_i64)
            .unwrap_or(0),
        false,
    )
}

// ---------------------------------------------------------------- creds

#[derive(Debug, clap::Args)]
pub struct CredsArgs {
    /// Where the ssh secrets engine is mounted
    #[arg(long, default_value = "ssh", value_name = "PATH")]
    pub mount: String,

    /// The role (a role with key_type=dynamic)
    #[arg(long, value_name = "NAME")]
    pub role: String,

    /// Where to write the private key [default: ./gatepass_<role>_<host>]
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Replace the file if it exists
    #[arg(short, long)]
    pub force: bool,

    /// Wait up to this long (at most 60s) for the host's gatepass-hostd to
    /// install the key, e.g. 10s [default: do not wait]
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<String>,

    /// [USER@]HOST: the host's IP address or name, and the user to log in
    /// as [default user: the role's default_user]
    #[arg(value_name = "[USER@]HOST")]
    pub destination: String,
}

/// `gatepass_<role>_<host>` with anything unusual in the host as `_`.
fn default_key_file(role: &str, host: &str) -> PathBuf {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    PathBuf::from(format!("./gatepass_{role}_{host}"))
}

pub async fn creds(ctx: &Ctx, args: CredsArgs) -> Result<()> {
    let dest = Destination::parse(&args.destination)?;
    // Checked before the server makes a key that would go nowhere.
    engine_path(&args.mount, "creds", &args.role)?;
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| default_key_file(&args.role, &dest.host));
    if !args.force && path.symlink_metadata().is_ok() {
        return Err(Error::Local(format!(
            "{} already exists; pass --force to replace it, or --output FILE",
            path.display()
        )));
    }
    let ip = resolve(&dest.host).await?;
    let mut resp = request_creds(
        ctx,
        &args.mount,
        &args.role,
        dest.user.as_deref(),
        ip,
        args.wait.as_deref(),
    )
    .await?;
    expect_kind(ctx, &resp, "dynamic", &args.role).await?;
    // Out of the answer at once, so that nothing printed later can show it.
    let key = match resp.pointer_mut("/data/key").map(Value::take) {
        Some(Value::String(s)) => Zeroizing::new(s),
        _ => {
            return Err(Error::Local(
                "the server's answer holds no private key".into(),
            ))
        }
    };
    PrivateKey::from_openssh(key.trim()).map_err(|e| {
        Error::Local(format!(
            "the server's private key is not an OpenSSH key: {e}"
        ))
    })?;
    let text = Zeroizing::new(format!("{}\n", key.trim_end()));
    drop(key);
    let written = write_atomic(&path, text.as_bytes(), 0o600, args.force);
    drop(text);
    if let Err(e) = written {
        // A key nobody has is of no use: give it back.
        revoke_quietly(ctx, &resp).await;
        let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "it already exists (pass --force to replace it)".to_string()
        } else {
            io_reason(&e)
        };
        return Err(Error::Local(format!(
            "cannot write {}: {why}",
            path.display()
        )));
    }
    if let Some(Value::Object(data)) = resp.get_mut("data") {
        data.remove("key");
        data.insert("key_file".into(), json!(path.display().to_string()));
    }

    if ctx.format.is_structured() {
        output::print_structured(&resp, ctx.format);
        return Ok(());
    }
    output::print_warnings(&resp);
    let d = |k: &str| {
        resp.pointer(&format!("/data/{k}"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let user = d("username");
    let port = d("port").as_u64().unwrap_or(22);
    let port_arg = if port == 22 {
        String::new()
    } else {
        format!(" -p {port}")
    };
    outln!(
        "Success! The private key was written to {} (mode 0600).\n\
         Use it with: ssh -i {}{port_arg} {}@{}\n",
        path.display(),
        path.display(),
        output::plain(&user),
        dest.host,
    );
    let secs = resp
        .get("lease_duration")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let mut rows: Vec<Row> = vec![
        ("key_file".into(), json!(path.display().to_string())),
        ("lease_id".into(), resp["lease_id"].clone()),
        ("lease_duration".into(), json!(duration(&resp))),
        ("expires".into(), json!(output::date(now() + secs))),
        ("username".into(), user),
        ("ip".into(), d("ip")),
        ("port".into(), d("port")),
    ];
    if let Some(i) = resp.pointer("/data/installed") {
        rows.push(("installed".into(), i.clone()));
    }
    output::print_table(&rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        let d = Destination::parse("root@10.0.0.1").unwrap();
        assert_eq!(d.user.as_deref(), Some("root"));
        assert_eq!(d.host, "10.0.0.1");
        let d = Destination::parse("web1.example.com").unwrap();
        assert_eq!(d.user, None);
        let d = Destination::parse("alice@[::1]").unwrap();
        assert_eq!(d.host, "::1");
        for bad in [
            "",
            "@host",
            "root@",
            "-oProxyCommand=x",
            "a b",
            "u@h;x",
            "u@h/x",
            "-u@h",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn addresses_are_used_as_they_are() {
        assert_eq!(
            resolve("10.1.2.3").await.unwrap(),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            resolve("::1").await.unwrap(),
            "::1".parse::<IpAddr>().unwrap()
        );
        assert!(resolve("localhost").await.unwrap().is_loopback());
    }

    #[test]
    fn key_file_names() {
        assert_eq!(
            default_key_file("dyn", "10.0.0.1"),
            PathBuf::from("./gatepass_dyn_10.0.0.1")
        );
        assert_eq!(
            default_key_file("dyn", "fe80::1"),
            PathBuf::from("./gatepass_dyn_fe80__1")
        );
    }
}
