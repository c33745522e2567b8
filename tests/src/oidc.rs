//! A real OpenID provider on loopback for the OIDC and JWT login tests:
//! node's `oidc-provider` (tests/oidc/provider.mjs, installed by
//! `npm ci` in tests/oidc, as tests/run does), on a free port, stopped on
//! drop. It also plays the person's browser through its login and consent
//! pages.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The redirect URI of the `gatepass` client (Vault's CLI listener's).
pub const REDIRECT_URI: &str = "http://127.0.0.1:8250/oidc/callback";
pub const CLIENT_ID: &str = "gatepass";
pub const CLIENT_SECRET: &str = "gatepass-secret";

pub struct Provider {
    child: Child,
    /// `http://127.0.0.1:PORT`: the issuer and discovery URL.
    pub issuer: String,
    http: reqwest::Client,
}

fn script_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

impl Provider {
    pub fn start() -> Provider {
        Provider::start_with(&[])
    }

    /// With more redirect URIs for the `gatepass` client (a CLI listener
    /// on a port of the test's choosing).
    pub fn start_with(extra_redirect_uris: &[&str]) -> Provider {
        let dir = script_dir();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "{}/node_modules is missing: run `npm ci` there (tests/run does)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .arg("0")
            .env("EXTRA_REDIRECT_URIS", extra_redirect_uris.join(","))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node (apt-get install nodejs npm)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = tx.send(port.trim().to_string());
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(p) => p,
            Err(_) => {
                crate::stop_child(&mut child);
                panic!("the OpenID provider did not start within 60 s");
            }
        };
        Provider {
            child,
            issuer: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
        }
    }

    /// A JWT access token for a client-credentials client (`ci-main` or
    /// `ci-fork`); `resource` `urn:other` makes its audience `other`.
    pub async fn client_credentials(&self, client: &str, resource: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials"), ("scope", "ci")];
        if let Some(r) = resource {
            form.push(("resource", r));
        }
        let resp = self
            .http
            .post(format!("{}/token", self.issuer))
            .basic_auth(client, Some("ci-secret"))
            .form(&form)
            .send()
            .await
            .expect("token request");
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.expect("token response");
        assert!(status.is_success(), "client credentials: {v}");
        v["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// A new signing key signs from now on (the old one stays published);
    /// returns its key ID.
    pub async fn rotate(&self) -> String {
        let v: serde_json::Value = self
            .http
            .post(format!("{}/admin/rotate", self.issuer))
            .send()
            .await
            .expect("rotate")
            .json()
            .await
            .expect("rotate response");
        v["kid"].as_str().expect("kid").to_string()
    }

    /// The public key that signs now, PEM-encoded (SPKI).
    pub async fn signing_key_pem(&self) -> String {
        self.http
            .get(format!("{}/admin/pem", self.issuer))
            .send()
            .await
            .expect("pem")
            .text()
            .await
            .expect("pem text")
    }

    /// The person's browser: opens `auth_url`, signs in as `login`, gives
    /// consent, and returns where the provider sends the browser back to
    /// (the redirect URI with `code` and `state`).
    pub async fn browser_login(&self, auth_url: &str, login: &str) -> reqwest::Url {
        let mut cookies: BTreeMap<String, String> = BTreeMap::new();
        let mut url = reqwest::Url::parse(auth_url).expect("auth_url");
        let mut form: Option<Vec<(&str, &str)>> = None;
        for _ in 0..20 {
            let req = match form.take() {
                Some(f) => self.http.post(url.clone()).form(&f),
                None => self.http.get(url.clone()),
            };
            let cookie = cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let resp = req
                .header(reqwest::header::COOKIE, cookie)
                .send()
                .await
                .expect("provider request");
            for c in resp.headers().get_all(reqwest::header::SET_COOKIE) {
                let text = c.to_str().unwrap_or_default();
                let pair = text.split(';').next().unwrap_or_default();
                if let Some((k, v)) = pair.split_once('=') {
                    cookies.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
            if resp.status().is_redirection() {
                let loc = resp.headers()[reqwest::header::LOCATION]
                    .to_str()
                    .expect("location")
                    .to_string();
                let next = url.join(&loc).expect("redirect URL");
                if next.as_str().starts_with(REDIRECT_URI) || next.port() != url.port() {
                    return next;
                }
                url = next;
                continue;
            }
            let status = resp.status();
            let body = resp.text().await.expect("page");
            assert!(status.is_success(), "provider page {url}: {status}: {body}");
            let action = body
                .split("action=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_else(|| panic!("no form on the provider's page: {body}"));
            url = url.join(action).expect("form action");
            form = Some(if body.contains(r#"name="prompt" value="login""#) {
                vec![("prompt", "login"), ("login", login), ("password", "any")]
            } else {
                vec![("prompt", "consent")]
            });
        }
        panic!("the provider's login did not come back to the redirect URI");
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        crate::stop_child(&mut self.child);
    }
}
