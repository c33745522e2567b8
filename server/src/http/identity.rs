//! Routes under `identity/`: entities (read; metadata and policies
//! writable) and external groups with their aliases.

use super::request::{Operation, Request};
use super::routes::ok_or_404;
use super::{no_route, Reply};
use crate::error::{Error, Result};
use crate::identity;
use crate::state::Core;

pub async fn route(core: &Core, req: &Request) -> Result<Reply> {
    use Operation::*;
    let segs: Vec<&str> = req.path.split('/').collect();
    match (segs.as_slice(), req.op) {
        (["identity", "entity", "id"], List) => {
            Ok(Reply::List(identity::list_entity_ids(core).await?))
        }
        (["identity", "entity", "id", id], Read) => Ok(ok_or_404(
            identity::entity(core, id).await?.map(|e| e.to_json()),
        )),
        (["identity", "entity", "id", id], Write) => Ok(Reply::Data(
            identity::update_entity(core, id, &req.fields, req.now).await?,
        )),
        (["identity", "entity", "name", name], Read) => Ok(ok_or_404(
            identity::entity_by_name(core, name)
                .await?
                .map(|e| e.to_json()),
        )),
        (["identity", "group"], Write) => Ok(Reply::Data(
            identity::write_group(core, &req.fields, req.now).await?,
        )),
        (["identity", "group", "id", id], Read) => Ok(ok_or_404(
            identity::group(core, id).await?.map(|g| g.to_json()),
        )),
        (["identity", "group", "id", id], Delete) => {
            identity::delete_group(core, id).await?;
            Ok(Reply::NoContent)
        }
        (["identity", "group", "name", name], Read) => Ok(ok_or_404(
            identity::group_by_name(core, name)
                .await?
                .map(|g| g.to_json()),
        )),
        (["identity", "group-alias"], Write) => {
            let accessor = req.fields.required_str("mount_accessor")?;
            if !crate::auth::mounts::accessor_exists(core, &accessor).await? {
                return Err(Error::invalid(format!(
                    "no auth mount with accessor {accessor:?}"
                )));
            }
            Ok(Reply::Data(
                identity::write_group_alias(core, &req.fields).await?,
            ))
        }
        (
            ["identity", "entity", "id" | "name", _]
            | ["identity", "group" | "group-alias"]
            | ["identity", "group", "id" | "name", _],
            _,
        ) => Err(Error::UnsupportedOperation),
        _ => Err(no_route(&req.path)),
    }
}
