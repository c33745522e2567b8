//! `gatepass login --method oidc`: sign in through the identity provider
//! in a browser, as `vault login -method=oidc` does.
//!
//! A listener on the loopback interface (localhost:8250 by default, the
//! port Vault's CLI uses, so a role's `allowed_redirect_uris` written for
//! Vault fits) receives the provider's redirect. The server is asked for
//! the provider's authorization URL for that redirect and a client nonce
//! of this process's own; the browser is opened on it (or the URL printed);
//! the code and state the redirect brings are handed to the server's
//! callback with the same nonce, which answers with the token. The nonce
//! binds the login to this process: a redirect replayed into another
//! client's listener does not complete there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Query, State};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::Ctx;
use crate::error::{Error, Result};
use crate::input::{parse_pairs, take_string};

/// How long the login waits for the browser to come back.
const WAIT: Duration = Duration::from_secs(300);

/// What the user may set, with Vault's names and defaults.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    mount: String,
    role: Option<String>,
    listen_address: String,
    port: u16,
    callback_method: String,
    callback_host: String,
    callback_port: u16,
    skip_browser: bool,
    /// The device authorization grant (RFC 8628) instead of a browser
    /// here: for machines without one.
    device: bool,
}

fn options(args: &[String]) -> Result<Options> {
    let mut pairs = parse_pairs(args)?;
    let mut text = |k: &str| take_string(&mut pairs, k);
    let port = |v: Option<String>, name: &str, default: u16| -> Result<u16> {
        match v {
            None => Ok(default),
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| Error::Usage(format!("{name}={p} is not a port number"))),
        }
    };
    let mount = text("mount")?.unwrap_or_else(|| "oidc".into());
    let role = text("role")?;
    let listen_address = text("listenaddress")?.unwrap_or_else(|| "localhost".into());
    let listen_port = port(text("port")?, "port", 8250)?;
    let callback_method = text("callbackmethod")?.unwrap_or_else(|| "http".into());
    let callback_host = text("callbackhost")?.unwrap_or_else(|| "localhost".into());
    let callback_port = port(text("callbackport")?, "callbackport", listen_port)?;
    let flag = |v: Option<String>, name: &str| match v.as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(v) => Err(Error::Usage(format!("{name}={v}: use true or false"))),
    };
    let skip_browser = flag(text("skip_browser")?, "skip_browser")?;
    let device = flag(text("device")?, "device")?;
    if let Some(k) = pairs.keys().next() {
        return Err(Error::Usage(format!(
            "the oidc method does not take {k}=; it takes mount, role, listenaddress, port, \
             callbackmethod, callbackhost, callbackport, skip_browser and device"
        )));
    }
    // The mount becomes path segments and the role a body field: keep the
    // mount from reaching another path.
    if mount.is_empty()
        || mount
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        || mount.contains(['?', '#', '%'])
    {
        return Err(Error::Usage(format!("mount={mount:?} is not a mount path")));
    }
    if !matches!(callback_method.as_str(), "http" | "https") {
        return Err(Error::Usage(format!(
            "callbackmethod={callback_method}: use http or https"
        )));
    }
    Ok(Options {
        mount,
        role,
        listen_address,
        port: listen_port,
        callback_method,
        callback_host,
        callback_port,
        skip_browser,
        device,
    })
}

/// The provider's redirect: its query (or form) parameters, and where to
/// say how the login ended.
type Arrival = (
    HashMap<String, String>,
    oneshot::Sender<std::result::Result<(), String>>,
);

async fn arrived(
    State(tx): State<Arc<Mutex<Option<mpsc::Sender<Arrival>>>>>,
    params: HashMap<String, String>,
) -> axum::response::Response {
    let sender = tx.lock().ok().and_then(|g| g.clone());
    let Some(sender) = sender else {
        return page(Err("this login has already ended".into())).into_response();
    };
    let (done_tx, done_rx) = oneshot::channel();
    if sender.send((params, done_tx)).await.is_err() {
        return page(Err("this login has already ended".into())).into_response();
    }
    let outcome = done_rx
        .await
        .unwrap_or_else(|_| Err("the login was interrupted".into()));
    page(outcome).into_response()
}

async fn arrived_get(
    state: State<Arc<Mutex<Option<mpsc::Sender<Arrival>>>>>,
    Query(params): Query<HashMap<String, String>>,
) -> axum::response::Response {
    arrived(state, params).await
}

/// Providers configured for `response_mode=form_post` send the code in a
/// form.
async fn arrived_post(
    state: State<Arc<Mutex<Option<mpsc::Sender<Arrival>>>>>,
    Form(params): Form<HashMap<String, String>>,
) -> axum::response::Response {
    arrived(state, params).await
}

/// What the browser shows at the end; the error text is escaped.
fn page(outcome: std::result::Result<(), String>) -> Html<String> {
    let (title, text) = match outcome {
        Ok(()) => (
            "Signed in",
            "gatepass has your token. You can close this window and go back to the terminal."
                .to_string(),
        ),
        Err(e) => (
            "Sign-in failed",
            e.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;"),
        ),
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>gatepass: {title}</title></head>\
         <body><h1>{title}</h1><p>{text}</p></body></html>"
    ))
}

fn client_nonce() -> String {
    let bytes: [u8; 20] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens the URL in the user's browser, without waiting for it; false when
/// no opener could be started (the URL is printed in any case).
fn open_browser(url: &str) -> bool {
    std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

pub async fn login(ctx: &Ctx, args: &[String]) -> Result<Value> {
    let o = options(args)?;
    if o.device {
        return device_login(ctx, &o).await;
    }
    let listener = tokio::net::TcpListener::bind((o.listen_address.as_str(), o.port))
        .await
        .map_err(|e| {
            Error::Local(format!(
                "cannot listen on {}:{} for the identity provider's redirect: {e} \
                 (another login may be waiting there; pass port=N, and callbackport=N if the \
                 redirect reaches this machine on another port)",
                o.listen_address, o.port
            ))
        })?;
    let redirect_uri = format!(
        "{}://{}:{}/oidc/callback",
        o.callback_method, o.callback_host, o.callback_port
    );
    let nonce = client_nonce();
    let mut body = Map::new();
    if let Some(r) = &o.role {
        body.insert("role".into(), Value::String(r.clone()));
    }
    body.insert("redirect_uri".into(), Value::String(redirect_uri.clone()));
    body.insert("client_nonce".into(), Value::String(nonce.clone()));
    let answer = ctx
        .call(
            "POST",
            &format!("auth/{}/oidc/auth_url", o.mount),
            Some(&body),
            "asking for the identity provider's sign-in URL",
        )
        .await?
        .unwrap_or_default();
    let auth_url = answer
        .pointer("/data/auth_url")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Error::Local(format!(
                "the server gave no sign-in URL for role {} on auth/{}: is {redirect_uri} \
                 among the role's allowed_redirect_uris?",
                o.role.as_deref().unwrap_or("(the default role)"),
                o.mount
            ))
        })?
        .to_string();

    let (tx, mut rx) = mpsc::channel::<Arrival>(4);
    let shared = Arc::new(Mutex::new(Some(tx)));
    let app = Router::new()
        .route("/oidc/callback", get(arrived_get).post(arrived_post))
        .with_state(shared.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await;
    });

    if !o.skip_browser && open_browser(&auth_url) {
        eoutln!(
            "Complete the login via your OIDC provider. Launching browser to:\n\n    {auth_url}\n"
        );
    } else {
        eoutln!("Complete the login via your OIDC provider. Open this URL in a browser:\n\n    {auth_url}\n");
    }
    eoutln!("Waiting for OIDC authentication to complete...");

    let outcome = async {
        loop {
            let Some((params, done)) = rx.recv().await else {
                return Err(Error::Local("the redirect listener stopped".into()));
            };
            if let Some(err) = params.get("error") {
                let text = match params.get("error_description") {
                    Some(d) => format!("the identity provider refused the sign-in: {err}: {d}"),
                    None => format!("the identity provider refused the sign-in: {err}"),
                };
                let _ = done.send(Err(text.clone()));
                return Err(Error::Local(text));
            }
            let (Some(state), Some(code)) = (params.get("state"), params.get("code")) else {
                // Not the provider's redirect (a stray request): keep waiting.
                let _ = done.send(Err("no code and state in this request".into()));
                continue;
            };
            let mut query = vec![
                ("state", state.as_str()),
                ("code", code.as_str()),
                ("client_nonce", nonce.as_str()),
            ];
            if let Some(t) = params.get("id_token") {
                query.push(("id_token", t.as_str()));
            }
            let query = serde_urlencoded::to_string(&query)
                .map_err(|e| Error::Local(format!("encoding the callback: {e}")))?;
            let r = ctx
                .call(
                    "GET",
                    &format!("auth/{}/oidc/callback?{query}", o.mount),
                    None,
                    "completing the sign-in",
                )
                .await;
            let _ = done.send(match &r {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            });
            return r.map(Option::unwrap_or_default);
        }
    };
    let result = match tokio::time::timeout(WAIT, outcome).await {
        Ok(r) => r,
        Err(_) => Err(Error::Local(format!(
            "no sign-in came back from the browser within {} minutes",
            WAIT.as_secs() / 60
        ))),
    };
    // Later redirects get "already ended"; the page of this one is sent
    // before the listener stops.
    if let Ok(mut g) = shared.lock() {
        *g = None;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    result
}

/// The longest a device login waits, whatever the provider allows.
const DEVICE_WAIT: Duration = Duration::from_secs(900);

/// `device=true`: the server starts the provider's device authorization
/// grant (gatepass's `oidc/device_code`); the person opens the URL on any
/// device and enters the code; this polls `oidc/device_poll` at the
/// interval asked for (5 s longer after each `slow_down`) until they have
/// approved, denied, or the code expired.
async fn device_login(ctx: &Ctx, o: &Options) -> Result<Value> {
    let mut body = Map::new();
    if let Some(r) = &o.role {
        body.insert("role".into(), Value::String(r.clone()));
    }
    let answer = ctx
        .call(
            "POST",
            &format!("auth/{}/oidc/device_code", o.mount),
            Some(&body),
            "starting a device login",
        )
        .await?
        .unwrap_or_default();
    let data = |k: &str| answer.pointer(&format!("/data/{k}")).cloned();
    let text = |k: &str| data(k).and_then(|v| v.as_str().map(String::from));
    let (Some(handle), Some(user_code), Some(uri)) = (
        text("device_code"),
        text("user_code"),
        text("verification_uri"),
    ) else {
        return Err(Error::Local(format!(
            "the server's answer to auth/{}/oidc/device_code has no device_code, user_code \
             and verification_uri",
            o.mount
        )));
    };
    let mut interval = data("interval")
        .and_then(|v| v.as_u64())
        .unwrap_or(5)
        .clamp(1, 60);
    let expires_in = data("expires_in").and_then(|v| v.as_u64()).unwrap_or(600);
    eoutln!(
        "Complete the login via your OIDC provider. On any device, open\n\n    {uri}\n\n\
         and enter the code\n\n    {user_code}\n"
    );
    if let Some(full) = text("verification_uri_complete") {
        eoutln!("(or open {full}, which has the code in it)\n");
    }
    eoutln!("Waiting for OIDC authentication to complete...");
    let mut poll = Map::new();
    poll.insert("device_code".into(), Value::String(handle));
    let wait = Duration::from_secs(expires_in).min(DEVICE_WAIT);
    let outcome = async {
        loop {
            tokio::time::sleep(Duration::from_secs(interval)).await;
            let r = ctx
                .call(
                    "POST",
                    &format!("auth/{}/oidc/device_poll", o.mount),
                    Some(&poll),
                    "completing the device login",
                )
                .await;
            match r {
                Err(Error::Api {
                    status: 400,
                    ref errors,
                    ..
                }) if errors
                    .iter()
                    .any(|e| e.starts_with("authorization_pending")) => {}
                Err(Error::Api {
                    status: 400,
                    ref errors,
                    ..
                }) if errors.iter().any(|e| e.starts_with("slow_down")) => {
                    interval += 5;
                }
                other => return other.map(Option::unwrap_or_default),
            }
        }
    };
    match tokio::time::timeout(wait, outcome).await {
        Ok(r) => r,
        Err(_) => Err(Error::Local(format!(
            "the device login was not approved within {} minutes",
            wait.as_secs().div_ceil(60)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn vaults_names_and_defaults() {
        let o = options(&[]).unwrap();
        assert_eq!(o.mount, "oidc");
        assert_eq!((o.listen_address.as_str(), o.port), ("localhost", 8250));
        assert_eq!(o.callback_port, 8250);
        let o = options(&args(&[
            "role=dev",
            "mount=sso/okta",
            "port=18250",
            "skip_browser=true",
            "device=true",
        ]))
        .unwrap();
        assert_eq!(o.role.as_deref(), Some("dev"));
        assert_eq!(o.mount, "sso/okta");
        assert_eq!((o.port, o.callback_port), (18250, 18250));
        assert!(o.skip_browser && o.device);
        assert!(!options(&[]).unwrap().device);
    }

    #[test]
    fn bad_options_are_refused() {
        for bad in [
            "port=0",
            "port=http",
            "mount=../token",
            "mount=a//b",
            "callbackmethod=ftp",
            "skip_browser=maybe",
            "device=yes",
            "username=alice",
        ] {
            assert!(options(&args(&[bad])).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_page_escapes_the_error() {
        let Html(p) = page(Err("<script>x</script>".into()));
        assert!(!p.contains("<script>x"));
        assert!(p.contains("&lt;script&gt;"));
    }
}
