//! The built-in auth methods as mounts (`sys/auth`, `sys/auth/<path>/tune`).
//! token/, approle/ and userpass/ are always enabled at fixed paths, so
//! only their tunable settings are stored: the TTLs of the tokens each
//! issues, its description and its listing hint. (OIDC and JWT methods
//! enabled at other paths are `auth::mounts`; they are not tuned.)

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::Core;
use crate::storage::Change;
use crate::tune::{TtlLimits, Tune, TuneInput};

/// One of the auth methods gatepass has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Token,
    Approle,
    Userpass,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::Token, Method::Approle, Method::Userpass];

    /// The method mounted at `path` (`approle`, `approle/`, `/approle/`).
    pub fn at(path: &str) -> Result<Method> {
        match path.trim_matches('/') {
            "token" => Ok(Method::Token),
            "approle" => Ok(Method::Approle),
            "userpass" => Ok(Method::Userpass),
            other => Err(Error::invalid(format!(
                "cannot tune the auth method at {other:?}: tuning is for the built-in token/, approle/ and userpass/"
            ))),
        }
    }

    /// Its mount path, without the trailing slash; also its type.
    pub fn name(self) -> &'static str {
        match self {
            Method::Token => "token",
            Method::Approle => "approle",
            Method::Userpass => "userpass",
        }
    }

    fn default_description(self) -> &'static str {
        match self {
            Method::Token => "token based credentials",
            Method::Approle => "machine login with role ID and secret ID",
            Method::Userpass => "login with username and password",
        }
    }

    fn key(self) -> String {
        format!("auth-tune/{}", self.name())
    }
}

/// A method's stored settings; absent means untuned.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Settings {
    #[serde(default)]
    pub tune: Tune,
    /// Set by a tune; else the method's own.
    #[serde(default)]
    pub description: Option<String>,
}

impl Settings {
    pub fn description(&self, m: Method) -> String {
        self.description
            .clone()
            .unwrap_or_else(|| m.default_description().to_string())
    }
}

pub async fn settings(core: &Core, m: Method) -> Result<Settings> {
    Ok(core.storage.get(&m.key()).await?.unwrap_or_default())
}

/// The TTLs the tokens a method issues fall back on and are capped by.
pub async fn limits(core: &Core, m: Method) -> Result<TtlLimits> {
    Ok(settings(core, m).await?.tune.limits())
}

/// `sys/auth/<path>/tune` (write): what is given changes, the rest stays.
pub async fn tune(core: &Core, m: Method, t: &TuneInput) -> Result<Settings> {
    // Created empty first, then changed in place: two tunes at once on
    // different servers each keep what the other set.
    core.storage
        .put_if_absent(&m.key(), &Settings::default())
        .await?;
    core.storage
        .update(&m.key(), |mut s: Settings| {
            if let Err(e) = s.tune.apply(t) {
                return Ok((Change::Keep, Err(e)));
            }
            if let Some(d) = &t.description {
                s.description = Some(d.clone());
            }
            Ok((Change::Put(s.clone()), Ok(s)))
        })
        .await?
        .ok_or_else(|| Error::internal("auth method settings vanished while tuned"))?
}
