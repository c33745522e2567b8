//! Vault's generic commands: read, write, list and delete any API path.

use serde_json::Value;

use super::{api_path, Ctx};
use crate::error::{Error, Result};
use crate::input::parse_pairs;
use crate::output;

pub const READ_EXAMPLES: &str = "\
Examples:
  gatepass read sys/mounts
  gatepass read auth/token/lookup-self --format json
  gatepass read --field policy sys/policies/acl/dev";

pub const WRITE_EXAMPLES: &str = "\
Examples:
  gatepass write sys/policies/acl/dev policy=@dev.hcl
  gatepass write auth/userpass/users/alice password=- token_policies=dev < password.txt
  gatepass write auth/approle/role/ci token_policies=deploy token_ttl=20m
  gatepass write --field secret_id auth/approle/role/ci/secret-id";

#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// API path below /v1/, e.g. sys/mounts
    pub path: String,
    /// Query parameters (KEY=VALUE)
    #[arg(value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Print only this field of the answer, raw
    #[arg(long, value_name = "NAME")]
    pub field: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct WriteArgs {
    /// API path below /v1/, e.g. sys/policies/acl/dev
    pub path: String,
    /// Data to send. KEY=@FILE reads the value from a file and KEY=- from
    /// standard input; a repeated KEY makes a list. A lone `-` or @FILE
    /// (without KEY=) sends a JSON object from standard input or a file.
    #[arg(value_name = "KEY=VALUE")]
    pub pairs: Vec<String>,
    /// Print only this field of the answer, raw
    #[arg(long, value_name = "NAME")]
    pub field: Option<String>,
    /// Accepted for scripts written for Vault, whose CLI wants it to write
    /// no data; gatepass allows that anyway
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// API path below /v1/, e.g. auth/userpass/users
    pub path: String,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// API path below /v1/, e.g. auth/userpass/users/alice
    pub path: String,
}

pub async fn read(ctx: &Ctx, args: ReadArgs) -> Result<()> {
    let path = api_path(&args.path)?;
    let mut url = path.clone();
    if !args.params.is_empty() {
        let query: Vec<(String, String)> = parse_pairs(&args.params)?
            .into_iter()
            .flat_map(|(k, v)| match v {
                Value::Array(items) => items.into_iter().map(|i| (k.clone(), text(i))).collect(),
                other => vec![(k, text(other))],
            })
            .collect();
        let query = serde_urlencoded::to_string(query)
            .map_err(|e| Error::Usage(format!("cannot encode the query parameters: {e}")))?;
        url = format!("{path}?{query}");
    }
    let resp = ctx
        .call("GET", &url, None, &format!("reading {path}"))
        .await?
        .ok_or_else(|| Error::NotFound(path.clone()))?;
    output::print_response(&resp, ctx.format, args.field.as_deref(), true)
}

fn text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

pub async fn write(ctx: &Ctx, args: WriteArgs) -> Result<()> {
    let path = api_path(&args.path)?;
    let body = parse_pairs(&args.pairs)?;
    let resp = ctx
        .call("POST", &path, Some(&body), &format!("writing to {path}"))
        .await?;
    match resp {
        Some(r) if has_content(&r) || args.field.is_some() => {
            output::print_response(&r, ctx.format, args.field.as_deref(), true)
        }
        other => {
            if let Some(r) = &other {
                output::print_warnings(r);
            }
            outln!("Success! Data written to: {path}");
            Ok(())
        }
    }
}

fn has_content(resp: &Value) -> bool {
    let present = |k| resp.get(k).is_some_and(|v: &Value| !v.is_null());
    present("data") || present("auth") || present("wrap_info")
}

pub async fn list(ctx: &Ctx, args: ListArgs) -> Result<()> {
    let path = api_path(&args.path)?;
    let keys = ctx
        .client
        .list(&path)
        .await
        .map_err(|e| ctx.api_error(e, &format!("listing {path}")))?;
    // The server answers an empty or missing folder alike; Vault's CLI then
    // says "No value found" and exits 2.
    if keys.is_empty() {
        return Err(Error::NotFound(path));
    }
    output::print_keys(&keys, ctx.format);
    Ok(())
}

pub async fn delete(ctx: &Ctx, args: DeleteArgs) -> Result<()> {
    let path = api_path(&args.path)?;
    ctx.call("DELETE", &path, None, &format!("deleting {path}"))
        .await?;
    outln!("Success! Data deleted (if it existed) at: {path}");
    Ok(())
}
