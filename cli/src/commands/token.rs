//! `gatepass token …`: look tokens up and create them.

use serde_json::{json, Map, Value};

use super::Ctx;
use crate::error::{Error, Result};
use crate::input::read_stdin;
use crate::output::{self, Format};

pub const CREATE_EXAMPLES: &str = "\
Examples:
  gatepass token create --policy dev --ttl 8h
  gatepass token create --policy deploy --num-uses 3 --field token";

pub const LOOKUP_EXAMPLES: &str = "\
Examples:
  gatepass token lookup                 # the token in use
  gatepass token lookup - < other-token.txt
  gatepass token lookup --accessor 5DuN7…";

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show a token's policies, time to live and uses left
    ///
    /// Without TOKEN, shows the token in use (GATEPASS_TOKEN, VAULT_TOKEN or
    /// the one `gatepass login` saved). The token itself is shown only with
    /// --print-token, --field id or --format json.
    #[command(after_long_help = LOOKUP_EXAMPLES)]
    Lookup(LookupArgs),

    /// Create a token
    ///
    /// The new token is a child of the token in use: it is revoked with it
    /// and may only have a subset of its policies, unless the token in use
    /// is privileged (root or sudo) and --orphan is given.
    #[command(after_long_help = CREATE_EXAMPLES)]
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
pub struct LookupArgs {
    /// The token to look up (`-` reads it from standard input); with
    /// --accessor, its accessor
    #[arg(value_name = "TOKEN")]
    pub token: Option<String>,

    /// TOKEN is an accessor, not the token itself
    #[arg(long, requires = "token")]
    pub accessor: bool,

    /// Also print the token (the `id` row) in the table
    #[arg(long)]
    pub print_token: bool,

    /// Print only this field of the answer, raw
    #[arg(long, value_name = "NAME")]
    pub field: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// A policy for the token; repeat, or separate with commas [default:
    /// the policies of the token in use]
    #[arg(long = "policy", value_name = "NAME", value_delimiter = ',')]
    pub policies: Vec<String>,

    /// Time to live, e.g. 30m or 8h [default: the server's, 768h]
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,

    /// How many requests the token may make; 0 is unlimited
    #[arg(long, value_name = "N")]
    pub num_uses: Option<u64>,

    /// A token without parent, which outlives the token in use (needs root
    /// or sudo)
    #[arg(long)]
    pub orphan: bool,

    /// A name shown in lookups and the audit log
    #[arg(long, value_name = "NAME")]
    pub display_name: Option<String>,

    /// Print only this field of the answer, raw (e.g. token)
    #[arg(long, value_name = "NAME")]
    pub field: Option<String>,
}

pub async fn run(ctx: &Ctx, cmd: Command) -> Result<()> {
    match cmd {
        Command::Lookup(a) => lookup(ctx, a).await,
        Command::Create(a) => create(ctx, a).await,
    }
}

async fn lookup(ctx: &Ctx, args: LookupArgs) -> Result<()> {
    let resp = match args.token {
        None => {
            ctx.call(
                "GET",
                "auth/token/lookup-self",
                None,
                "looking up the token",
            )
            .await?
        }
        Some(t) => {
            let value = if t == "-" {
                read_stdin("token")?.trim().to_string()
            } else {
                t
            };
            let (path, key) = if args.accessor {
                ("auth/token/lookup-accessor", "accessor")
            } else {
                ("auth/token/lookup", "token")
            };
            // In the body, not the URL, so that it stays out of access logs.
            let body: Map<String, Value> = [(key.to_string(), Value::String(value))]
                .into_iter()
                .collect();
            ctx.call("POST", path, Some(&body), "looking up the token")
                .await?
        }
    };
    let mut resp = resp.ok_or_else(|| Error::Local("looking up the token: empty answer".into()))?;
    if args.field.is_some() || ctx.format.is_structured() {
        return output::print_response(&resp, ctx.format, args.field.as_deref(), true);
    }
    if let Some(Value::Object(data)) = resp.get_mut("data") {
        if !args.print_token {
            data.remove("id");
        }
        // Vault shows these as durations.
        for k in ["ttl", "creation_ttl", "explicit_max_ttl"] {
            if let Some(secs) = data.get(k).and_then(Value::as_i64) {
                data.insert(k.into(), json!(output::format_duration(secs, false)));
            }
        }
    }
    output::print_response(&resp, Format::Table, None, true)
}

async fn create(ctx: &Ctx, args: CreateArgs) -> Result<()> {
    let mut body = Map::new();
    if !args.policies.is_empty() {
        body.insert("policies".into(), json!(args.policies));
    }
    if let Some(ttl) = args.ttl {
        body.insert("ttl".into(), json!(ttl));
    }
    if let Some(n) = args.num_uses {
        body.insert("num_uses".into(), json!(n));
    }
    if args.orphan {
        body.insert("no_parent".into(), json!(true));
    }
    if let Some(name) = args.display_name {
        body.insert("display_name".into(), json!(name));
    }
    let resp = ctx
        .call("POST", "auth/token/create", Some(&body), "creating a token")
        .await?
        .ok_or_else(|| Error::Local("creating a token: empty answer".into()))?;
    output::print_response(&resp, ctx.format, args.field.as_deref(), true)
}
