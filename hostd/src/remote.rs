//! The hosts protocol calls (see `gatepass_api::hosts`).

use gatepass_api::hosts::{Ack, EnrollRequest, Enrolled, HostState, SignHostKey, SignedHostKey};
use gatepass_api::{Client, Error};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

fn body<T: Serialize>(v: &T) -> Result<Map<String, Value>, Error> {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::Decode("request is not an object".into())),
        Err(e) => Err(Error::Decode(e.to_string())),
    }
}

fn data<T: DeserializeOwned>(env: Option<gatepass_api::Envelope>, what: &str) -> Result<T, Error> {
    let data = env
        .and_then(|e| e.data)
        .ok_or_else(|| Error::Decode(format!("{what}: the answer has no data")))?;
    serde_json::from_value(data).map_err(|e| Error::Decode(format!("{what}: {e}")))
}

/// `POST hosts/enroll` (no token needed; the join token is in the body).
pub async fn enroll(client: &Client, req: &EnrollRequest) -> Result<Enrolled, Error> {
    data(client.write("hosts/enroll", &body(req)?).await?, "enroll")
}

/// `GET hosts/self/state`; with `wait`, a long-poll that returns when the
/// state's index differs from `index` or the wait is over. `applied`
/// acknowledges the state of that index as applied, with nothing else to
/// report (see [`Ack`]): the poll that follows an apply carries its
/// acknowledgement, rather than a request of its own.
pub async fn state(
    client: &Client,
    index: u64,
    wait: Option<u64>,
    applied: Option<u64>,
) -> Result<HostState, Error> {
    let mut query = Vec::new();
    if let Some(w) = wait {
        query.push(format!("index={index}&wait={w}s"));
    }
    if let Some(a) = applied {
        query.push(format!("applied={a}"));
    }
    let path = match query.is_empty() {
        true => "hosts/self/state".to_string(),
        false => format!("hosts/self/state?{}", query.join("&")),
    };
    data(client.read(&path).await?, "host state")
}

/// `POST hosts/self/sign-host-key`.
pub async fn sign_host_key(client: &Client, public_key: &str) -> Result<SignedHostKey, Error> {
    let req = SignHostKey {
        public_key: public_key.to_string(),
    };
    data(
        client
            .write("hosts/self/sign-host-key", &body(&req)?)
            .await?,
        "sign-host-key",
    )
}

/// `POST hosts/self/ack`.
pub async fn ack(client: &Client, ack: &Ack) -> Result<(), Error> {
    client
        .write("hosts/self/ack", &body(ack)?)
        .await
        .map(|_| ())
}

/// `POST hosts/self/unenroll`.
pub async fn unenroll(client: &Client) -> Result<(), Error> {
    client
        .write("hosts/self/unenroll", &Map::new())
        .await
        .map(|_| ())
}

/// `POST auth/token/renew-self`: host tokens are periodic and lapse unless
/// renewed; returns the new lease duration in seconds.
pub async fn renew_token(client: &Client) -> Result<i64, Error> {
    let env = client.write("auth/token/renew-self", &Map::new()).await?;
    Ok(env
        .and_then(|e| e.auth)
        .map(|a| a.lease_duration)
        .unwrap_or(0))
}
