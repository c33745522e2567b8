//! `gatepass login`: get a token (or check a given one) and save it for the
//! commands that follow.

use serde_json::{json, Map, Value};

use super::{Ctx, GlobalArgs};
use crate::config;
use crate::error::{Error, Result};
use crate::input::{parse_pairs, prompt_secret, read_stdin, take_string};
use crate::output::{self, Format};

pub const EXAMPLES: &str = "\
Examples:
  gatepass login                                    # asks for a token
  gatepass login gps.XXXXXXXX
  gatepass login - < token.txt
  gatepass login --method userpass username=alice   # asks for the password
  gatepass login --method approle role_id=$ROLE_ID secret_id=- < secret_id.txt
  gatepass login --method oidc role=dev             # signs in in the browser
  gatepass login --method oidc mount=sso skip_browser=true port=18250
  gatepass login --method oidc device=true          # no browser here: a code

  # A token for one script, not saved:
  export GATEPASS_TOKEN=$(gatepass login --no-store --field token \\
      --method approle role_id=$ROLE_ID secret_id=$SECRET_ID)";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// An existing token (from an administrator or `gatepass token create`)
    Token,
    /// A machine's role_id and secret_id
    Approle,
    /// A person's username and password
    Userpass,
    /// A person's sign-in at the identity provider, in a browser (OIDC):
    /// a listener on localhost:8250 receives its redirect
    Oidc,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How to authenticate
    #[arg(short, long, value_enum, default_value_t = Method::Token)]
    pub method: Method,

    /// For the token method, the token (`-` reads it from standard input;
    /// without it, it is asked for). For the others, KEY=VALUE credentials:
    /// userpass takes username= and password= (asked for when missing),
    /// approle takes role_id= and secret_id=, oidc takes (all optional, as
    /// Vault's CLI) role=, mount= (default oidc), listenaddress=
    /// (localhost), port= (8250), callbackmethod=, callbackhost=,
    /// callbackport= (where the redirect reaches this machine) and
    /// skip_browser=true (print the URL only), or device=true (no browser
    /// on this machine: open a URL on any device and enter the code
    /// printed, through the provider's device authorization grant). KEY=- reads a value from
    /// standard input and KEY=@FILE from a file.
    #[arg(value_name = "TOKEN | KEY=VALUE")]
    pub args: Vec<String>,

    /// Do not save the token; print it instead
    #[arg(long)]
    pub no_store: bool,

    /// Also print the token in the table
    #[arg(long)]
    pub print_token: bool,

    /// Print only this field of the answer, raw (e.g. token, token_accessor)
    #[arg(long, value_name = "NAME")]
    pub field: Option<String>,
}

pub async fn run(global: &GlobalArgs, args: Args) -> Result<()> {
    let mut ctx = Ctx::anonymous(global)?;
    let resp = match args.method {
        Method::Token => token_login(&mut ctx, &args.args).await?,
        Method::Userpass => userpass_login(&ctx, &args.args).await?,
        Method::Oidc => super::oidc::login(&ctx, &args.args).await?,
        Method::Approle => {
            let body = parse_pairs(&args.args)?;
            if !body.contains_key("role_id") {
                return Err(Error::Usage(
                    "approle login needs role_id=… (and usually secret_id=…)".into(),
                ));
            }
            ctx.call(
                "POST",
                "auth/approle/login",
                Some(&body),
                "logging in with AppRole",
            )
            .await?
            .unwrap_or_default()
        }
    };
    let token = resp
        .pointer("/auth/client_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Local("logging in: the server's answer holds no token".into()))?;
    config::check_token(token, "the server")?;

    let saved = if args.no_store {
        None
    } else {
        Some(config::save_token(token)?)
    };
    if saved.is_some() {
        if let Some(var) = config::token_var() {
            eoutln!(
                "WARNING! {var} is set and takes precedence over the saved token; \
                 unset it to use the token from this login."
            );
        }
    }

    if args.field.is_some() || ctx.format.is_structured() {
        return output::print_response(&resp, ctx.format, args.field.as_deref(), true);
    }
    match &saved {
        Some(path) => outln!(
            "Success! You are now authenticated. The token is saved in {}\n\
             and later gatepass commands use it until it expires.\n",
            path.display()
        ),
        None => outln!(
            "Success! You are now authenticated. The token was not saved (--no-store);\n\
             pass it to later commands in GATEPASS_TOKEN.\n"
        ),
    }
    output::print_response(
        &resp,
        Format::Table,
        None,
        args.print_token || saved.is_none(),
    )
}

/// Checks a token with lookup-self and answers like a login would, with an
/// `auth` block, so that all methods print alike (as Vault's CLI does).
async fn token_login(ctx: &mut Ctx, args: &[String]) -> Result<Value> {
    let token = match args {
        [] => prompt_secret("Token (will be hidden): ", "token")?,
        [t] if t == "-" => read_stdin("token")?.trim().to_string(),
        [t] if t.starts_with("token=") => {
            let mut pairs = parse_pairs(args)?;
            let token = take_string(&mut pairs, "token")?;
            match (token, pairs.is_empty()) {
                (Some(t), true) => t,
                _ => return Err(Error::Usage("the token method takes only token=…".into())),
            }
        }
        [t] if !t.contains('=') => t.clone(),
        _ => {
            return Err(Error::Usage(
                "the token method takes one token; for a username and password use \
                 --method userpass, for a role_id and secret_id --method approle"
                    .into(),
            ))
        }
    };
    config::check_token(&token, "the command line")?;
    ctx.set_token(token.clone());
    let mut resp = match ctx
        .call("GET", "auth/token/lookup-self", None, "checking the token")
        .await
    {
        Err(Error::Api {
            action,
            status: 403,
            errors,
            ..
        }) => {
            return Err(Error::Api {
                action,
                status: 403,
                errors,
                hint: Some("the token is unknown, expired or revoked".into()),
            })
        }
        other => other?,
    }
    .ok_or_else(|| Error::Local("checking the token: empty answer from the server".into()))?;
    let data = resp.get("data").cloned().unwrap_or_default();
    let get = |k: &str| data.get(k).cloned().unwrap_or(Value::Null);
    let auth = json!({
        "client_token": token,
        "accessor": get("accessor"),
        "policies": get("policies"),
        "token_policies": get("policies"),
        "identity_policies": null,
        "metadata": get("meta"),
        "lease_duration": get("ttl"),
        "renewable": get("renewable"),
    });
    if let Some(m) = resp.as_object_mut() {
        m.insert("data".into(), Value::Null);
        m.insert("auth".into(), auth);
    }
    Ok(resp)
}

async fn userpass_login(ctx: &Ctx, args: &[String]) -> Result<Value> {
    let mut body: Map<String, Value> = parse_pairs(args)?;
    let username = take_string(&mut body, "username")?
        .ok_or_else(|| Error::Usage("userpass login needs username=NAME".into()))?;
    // The name becomes a path segment: keep it from reaching another path.
    if username.is_empty() || username.contains(['/', '?', '#', '%']) || username.starts_with('.') {
        return Err(Error::Usage(format!(
            "{username:?} is not a valid username"
        )));
    }
    if !body.contains_key("password") {
        let password = prompt_secret("Password (will be hidden): ", "password")?;
        body.insert("password".into(), Value::String(password));
    }
    Ok(ctx
        .call(
            "POST",
            &format!("auth/userpass/login/{username}"),
            Some(&body),
            &format!("logging in as {username}"),
        )
        .await?
        .unwrap_or_default())
}
