//! `gatepass unwrap [TOKEN]`, as `vault unwrap`: the answer a wrapping
//! token holds (once; the token is used up).

use serde_json::{json, Map};

use super::Ctx;
use crate::error::Result;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The wrapping token [default: the command's own token, e.g.
    /// GATEPASS_TOKEN or VAULT_TOKEN set to the wrapping token]
    pub token: Option<String>,
    /// Print only this field of the answer, raw
    #[arg(long, value_name = "NAME")]
    pub field: Option<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let mut body = Map::new();
    if let Some(t) = args.token {
        body.insert("token".into(), json!(t));
    }
    let resp = ctx
        .call(
            "POST",
            "sys/wrapping/unwrap",
            Some(&body),
            "unwrapping the wrapping token",
        )
        .await?
        .unwrap_or_default();
    output::print_response(&resp, ctx.format, args.field.as_deref(), true)
}
