//! The web UI (`/ui/`) of a real `gatepass-server dev`, driven by a real
//! browser (headless Chromium through chromedriver, `gatepass_tests::browser`)
//! and by a plain HTTP client where the test is about what goes over the
//! wire: headers, cookie flags, CSRF and origin checks, secrets in pages.
//!
//! Every run saves a screenshot of each main page into
//! `target/ui-screenshots/` (README, "Web UI").

use std::time::Duration;

use gatepass_tests::browser::{self, Browser};
use gatepass_tests::ssh::{keypair, krl_revokes, write};
use gatepass_tests::DevServer;
use reqwest::header::{HeaderMap, ORIGIN, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

const USER_PASSWORD: &str = "correct-horse-ui-password-7";

/// A policy that can browse the inventory but not revoke.
const AUDITOR_POLICY: &str = r#"
path "sys/mounts" { capabilities = ["read"] }
path "ssh/certs" { capabilities = ["list"] }
path "ssh/certs/*" { capabilities = ["read"] }
path "ssh/roles" { capabilities = ["list"] }
path "ssh/revoke" { capabilities = ["deny"] }
"#;

/// The pages of the UI, by name (for screenshots) and path.
const PAGES: &[(&str, &str)] = &[
    ("overview", "/ui/"),
    ("ssh-cas", "/ui/ssh"),
    ("certificates", "/ui/certs?mount=ssh"),
    ("sessions", "/ui/sessions"),
    ("pam", "/ui/pam"),
    ("hosts", "/ui/hosts"),
    ("audit", "/ui/audit"),
    ("tokens", "/ui/tokens"),
    ("policies", "/ui/policies"),
    ("policy", "/ui/policies/auditor"),
];

struct Ui {
    dev: DevServer,
    http: reqwest::Client,
    /// `https://127.0.0.1:PORT`
    base: String,
    dir: tempfile::TempDir,
    /// Secrets of the enrolled host `web1`: its join token and host token.
    host_secrets: [String; 2],
}

/// A signed-in session as a plain client holds it.
struct Session {
    cookie: String,
    csrf: String,
}

impl Ui {
    /// A dev server with an SSH CA, a role, one signed certificate, a
    /// userpass user with the auditor policy.
    async fn start() -> (Ui, String) {
        let dev = DevServer::start();
        let pem = std::fs::read(&dev.cacert).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut ui = Ui {
            base: dev.addr.trim_end_matches('/').to_string(),
            dev,
            http,
            dir: tempfile::tempdir().unwrap(),
            host_secrets: Default::default(),
        };
        ui.root("POST", "ssh/config/ca", json!({})).await;
        ui.root(
            "POST",
            "ssh/roles/ops",
            json!({"key_type": "ca", "allow_user_certificates": true, "allow_user_key_ids": true, "allowed_users": "*", "ttl": "1h"}),
        )
        .await;
        ui.root(
            "POST",
            "sys/policies/acl/auditor",
            json!({ "policy": AUDITOR_POLICY }),
        )
        .await;
        ui.root(
            "POST",
            "auth/userpass/users/alice",
            json!({ "password": USER_PASSWORD, "token_policies": "auditor" }),
        )
        .await;
        let cert = ui.sign("deploy-key").await;
        // One enrolled host, for the hosts page.
        let join = ui.root("POST", "hosts/join-tokens", json!({})).await["data"]["join_token"]
            .as_str()
            .unwrap()
            .to_string();
        let (_, host_key) = keypair(ui.dir.path(), "web1_host", "ed25519", None);
        let (st, enrolled) = ui
            .api(
                "",
                "POST",
                "hosts/enroll",
                json!({ "join_token": join, "hostname": "web1", "addresses": "10.0.0.5", "host_keys": [host_key.trim()] }),
            )
            .await;
        assert!(st.is_success(), "enroll: {enrolled}");
        let host_token = enrolled["data"]["host_token"].as_str().unwrap().to_string();
        ui.host_secrets = [join, host_token];
        (ui, cert)
    }

    async fn api(&self, token: &str, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let url = format!("{}/v1/{path}", self.base);
        let r = self
            .http
            .request(method.parse().unwrap(), url)
            .header("x-vault-token", token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let st = r.status();
        let text = r.text().await.unwrap();
        (
            st,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Posts the session's sign-out form, as its page would.
    async fn sign_out(&self, s: &Session) -> (StatusCode, String) {
        self.post(
            &s.cookie,
            Some(&self.base),
            "/ui/logout",
            &[("csrf", &s.csrf)],
        )
        .await
    }

    /// The live tokens made at `path`: their TTLs and accessors.
    async fn tokens_made_at(&self, path: &str) -> Vec<(i64, Value)> {
        let mut out = vec![];
        let accessors = self.root("LIST", "auth/token/accessors", json!({})).await;
        for a in accessors["data"]["keys"].as_array().unwrap() {
            let e = self
                .root(
                    "POST",
                    "auth/token/lookup-accessor",
                    json!({ "accessor": a }),
                )
                .await;
            if e["data"]["path"] == path {
                out.push((e["data"]["ttl"].as_i64().unwrap(), a.clone()));
            }
        }
        out
    }

    async fn root(&self, method: &str, path: &str, body: Value) -> Value {
        let (st, v) = self.api(&self.dev.token, method, path, body).await;
        assert!(st.is_success(), "{method} {path}: {st} {v}");
        v
    }

    /// A certificate for a new key with this key ID; its OpenSSH text.
    async fn sign(&self, key_id: &str) -> String {
        let (_, public) = keypair(self.dir.path(), key_id, "ed25519", None);
        let v = self
            .root(
                "POST",
                "ssh/sign/ops",
                json!({ "public_key": public, "key_id": key_id, "valid_principals": "deploy" }),
            )
            .await;
        v["data"]["signed_key"].as_str().unwrap().to_string()
    }

    fn serial_of(&self, cert: &str) -> String {
        let path = write(self.dir.path(), "c-cert.pub", cert, 0o644);
        let out = std::process::Command::new("ssh-keygen")
            .arg("-Lf")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let serial: u64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Serial: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        format!("{serial:016x}")
    }

    async fn krl(&self) -> Vec<u8> {
        self.http
            .get(format!("{}/v1/ssh/krl", self.base))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Signs in over plain HTTP with a form, as the browser would post it.
    async fn sign_in(&self, form: &[(&str, &str)]) -> (Session, HeaderMap) {
        let r = self
            .http
            .post(self.url("/ui/login"))
            .header(ORIGIN, &self.base)
            .form(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "sign-in answered");
        let headers = r.headers().clone();
        let set = headers
            .get(SET_COOKIE)
            .expect("a session cookie")
            .to_str()
            .unwrap()
            .to_string();
        let cookie = set.split(';').next().unwrap().to_string();
        let page = self.get(&cookie, "/ui/").await.2;
        let csrf = csrf_of(&page);
        (Session { cookie, csrf }, headers)
    }

    async fn get(&self, cookie: &str, path: &str) -> (StatusCode, HeaderMap, String) {
        let r = self
            .http
            .get(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        let (st, h) = (r.status(), r.headers().clone());
        (st, h, r.text().await.unwrap())
    }

    async fn post(
        &self,
        cookie: &str,
        origin: Option<&str>,
        path: &str,
        form: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let mut rb = self
            .http
            .post(self.url(path))
            .header("cookie", cookie)
            .form(form);
        if let Some(o) = origin {
            rb = rb.header(ORIGIN, o);
        }
        let r = rb.send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn revoked(&self, serial: &str) -> bool {
        self.root("GET", &format!("ssh/certs/{serial}"), json!({}))
            .await["data"]["revoked"]
            .as_bool()
            .unwrap()
    }
}

/// Another site (plain HTTP on another port) with a form that posts to
/// the UI: what a cross-site request forgery would send. Its URL.
async fn evil_site(target: &str, serial: &str) -> String {
    let page = format!(
        "<!DOCTYPE html><html><body><form method=\"post\" action=\"{target}\">\
         <input type=\"hidden\" name=\"mount\" value=\"ssh\">\
         <input type=\"hidden\" name=\"serial\" value=\"{serial}\">\
         <button id=\"go\" type=\"submit\">Win a prize</button></form></body></html>"
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::response::Html(page) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/")
}

fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a CSRF field in the page");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

async fn browser_sign_in_with_token(b: &Browser, ui: &Ui, token: &str) {
    b.goto(&ui.url("/ui/")).await;
    // Not signed in: the sign-in page.
    assert!(b.exists("#token-form").await, "{}", b.source().await);
    b.screenshot("sign-in").await;
    b.fill("#token", token).await;
    b.click("#token-submit").await;
    assert!(
        b.text("#signed-in-as").await.contains("root"),
        "{}",
        b.source().await
    );
}

#[tokio::test]
async fn an_admin_signs_in_sees_every_page_and_revokes_a_certificate_the_krl_then_lists() {
    browser::require();
    let (ui, cert) = Ui::start().await;
    let serial = ui.serial_of(&cert);
    let b = Browser::start().await;
    browser_sign_in_with_token(&b, &ui, &ui.dev.token).await;

    // Every main page renders for the admin, and is saved for readers.
    for (name, path) in PAGES {
        b.goto(&ui.url(path)).await;
        let html = b.source().await;
        assert!(
            html.contains("Signed in as"),
            "{path} did not render: {html}"
        );
        b.screenshot(name).await;
    }

    // At 200% zoom a page has half the CSS pixels across: 700 of the
    // window's 1400. Each main page is still read without scrolling
    // sideways (tables wrap, long keys break).
    b.client.set_window_size(700, 1000).await.unwrap();
    for (name, path) in PAGES {
        b.goto(&ui.url(path)).await;
        let widths = b
            .client
            .execute(
                "return [document.documentElement.scrollWidth, window.innerWidth];",
                vec![],
            )
            .await
            .unwrap();
        let (page, window) = (widths[0].as_u64().unwrap(), widths[1].as_u64().unwrap());
        assert!(
            window <= 720 && page <= window,
            "{name} at 200% zoom is {page} px wide in a {window} px window"
        );
    }
    b.client.set_window_size(1400, 1000).await.unwrap();

    // A page of another site, open in the same browser, posts the revoke
    // form: the browser sends no session cookie with it (SameSite=Strict)
    // and the server would refuse its origin anyway.
    let evil = evil_site(&ui.url("/ui/certs/revoke"), &serial).await;
    b.goto(&evil).await;
    b.click("#go").await;
    assert!(
        b.exists("#token-form").await || b.exists("#error-message").await,
        "{}",
        b.source().await
    );
    assert!(!ui.revoked(&serial).await, "a cross-site post revoked it");

    b.goto(&ui.url("/ui/ssh")).await;
    let krl = b.text("#krl-ssh").await;
    assert!(krl.contains(": 0 revoked serial(s)"), "{krl}");

    // The vendored htmx loads under the CSP (the sessions page refreshes
    // its table with it).
    b.goto(&ui.url("/ui/sessions")).await;
    let kind = b
        .client
        .execute("return typeof window.htmx;", vec![])
        .await
        .unwrap();
    assert_eq!(kind, json!("object"), "htmx did not load");

    // The inventory finds the certificate by key ID, and revokes it.
    b.goto(&ui.url("/ui/certs?mount=ssh")).await;
    b.fill("#q", "deploy-key").await;
    b.click("form.filters button").await;
    assert!(b.text("#cert-count").await.starts_with("1 certificate"));
    assert!(!krl_revokes(ui.dir.path(), &ui.krl().await, &cert));
    b.click(&format!("#revoke-{serial}")).await;
    assert_eq!(b.text(&format!("#cert-{serial} .revoked")).await, "revoked");
    b.screenshot("certificate-revoked").await;
    assert!(ui.revoked(&serial).await);
    assert!(
        krl_revokes(ui.dir.path(), &ui.krl().await, &cert),
        "ssh-keygen -Q does not find the revoked certificate in the KRL"
    );
    // The SSH CAs page tells the KRL's state: the one revoked serial.
    b.goto(&ui.url("/ui/ssh")).await;
    let krl = b.text("#krl-ssh").await;
    assert!(krl.contains(": 1 revoked serial(s)"), "{krl}");
    assert!(krl.contains("Version 1,"), "{krl}");

    // Sign-out revokes the session: the sign-in page again, and the audit
    // trail has the revocation under the admin's name.
    b.click(".signout button").await;
    assert!(b.exists("#token-form").await);
    b.goto(&ui.url("/ui/audit?path=ssh/revoke")).await;
    assert!(
        b.exists("#token-form").await,
        "still signed in after sign-out"
    );
    b.close().await;
}

#[tokio::test]
async fn a_user_whose_policy_denies_revoking_gets_no_revoke_button_and_a_403_for_the_post() {
    browser::require();
    let (ui, cert) = Ui::start().await;
    let serial = ui.serial_of(&cert);
    let b = Browser::start().await;
    b.goto(&ui.url("/ui/login")).await;
    b.fill("#username", "alice").await;
    b.fill("#password", USER_PASSWORD).await;
    b.click("#userpass-submit").await;
    assert!(b.text("#signed-in-as").await.contains("alice"));
    b.goto(&ui.url("/ui/certs?mount=ssh")).await;
    // Alice sees the certificate but is offered no revoke.
    assert!(b.exists(&format!("#cert-{serial}")).await);
    assert!(!b.exists(&format!("#revoke-{serial}")).await);
    assert!(!b.exists("button.danger").await);
    b.screenshot("certificates-read-only").await;
    // What her policies deny elsewhere is said in place.
    b.goto(&ui.url("/ui/hosts")).await;
    assert!(b.text("p.denied").await.contains("do not allow"));
    b.close().await;

    // The form posted anyway, with her session and its valid CSRF token:
    // 403, and the certificate stays valid.
    let (s, _) = ui
        .sign_in(&[
            ("method", "userpass"),
            ("username", "alice"),
            ("password", USER_PASSWORD),
        ])
        .await;
    let (st, page) = ui
        .post(
            &s.cookie,
            Some(&ui.base),
            "/ui/certs/revoke",
            &[("csrf", &s.csrf), ("mount", "ssh"), ("serial", &serial)],
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{page}");
    assert!(page.contains("permission denied"), "{page}");
    assert!(!ui.revoked(&serial).await);
}

#[tokio::test]
async fn forged_cross_site_form_posts_are_refused() {
    let (ui, cert) = Ui::start().await;
    let serial = ui.serial_of(&cert);
    let (s, _) = ui
        .sign_in(&[("method", "token"), ("token", &ui.dev.token)])
        .await;
    // No CSRF token, a wrong one, and the right one from a foreign origin.
    let base = ui.base.clone();
    for (origin, csrf) in [
        (Some(base.as_str()), ""),
        (Some(base.as_str()), "00ff"),
        (Some("https://evil.example"), s.csrf.as_str()),
        (None, "deadbeef"),
    ] {
        let f = [
            ("csrf", csrf),
            ("mount", "ssh"),
            ("serial", serial.as_str()),
        ];
        let (st, page) = ui.post(&s.cookie, origin, "/ui/certs/revoke", &f).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{origin:?} {csrf:?}: {page}");
        assert!(!ui.revoked(&serial).await, "{origin:?} {csrf:?} revoked it");
    }
    // Sign-in from another site is refused too.
    let r = ui
        .http
        .post(ui.url("/ui/login"))
        .header(ORIGIN, "https://evil.example")
        .form(&[("method", "token"), ("token", ui.dev.token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get(SET_COOKIE).is_none());
    // The same form from this server's page works.
    let (st, _) = ui
        .post(
            &s.cookie,
            Some(&ui.base),
            "/ui/certs/revoke",
            &[("csrf", &s.csrf), ("mount", "ssh"), ("serial", &serial)],
        )
        .await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert!(ui.revoked(&serial).await);
}

#[tokio::test]
async fn every_page_has_the_csp_and_safe_cookie_and_shows_no_secret() {
    let (ui, _) = Ui::start().await;
    // Secrets of the setup: a user's token, an OTP, a private key.
    let user_token = ui
        .root(
            "POST",
            "auth/token/create",
            json!({ "policies": "auditor", "display_name": "bob" }),
        )
        .await["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    ui.root(
        "POST",
        "ssh/roles/otp",
        json!({"key_type": "otp", "default_user": "deploy", "cidr_list": "10.0.0.0/8"}),
    )
    .await;
    let otp = ui
        .root("POST", "ssh/creds/otp", json!({ "ip": "10.1.2.3" }))
        .await["data"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let issued = ui
        .root(
            "POST",
            "ssh/issue/ops",
            json!({ "valid_principals": "deploy" }),
        )
        .await;
    let private_key = issued["data"]["private_key"].as_str().unwrap().to_string();
    let private_body: String = private_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();

    // The vendored files are cached for long (their links carry the
    // version); an unknown page is a 404 page with the same headers.
    let r = ui
        .http
        .get(ui.url("/ui/assets/htmx.min.js?v=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age=31536000"));
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let r = ui.http.get(ui.url("/ui/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.headers().contains_key("content-security-policy"));
    // The API's answers (a new token here, an error) are kept by no cache
    // either, as Vault's are not.
    for (path, status) in [
        ("/v1/auth/token/create", StatusCode::OK),
        ("/v1/nowhere", StatusCode::NOT_FOUND),
    ] {
        let r = ui
            .http
            .post(ui.url(path))
            .header("x-vault-token", &ui.dev.token)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
    }

    for (who, form) in [
        (
            "root",
            vec![("method", "token"), ("token", ui.dev.token.as_str())],
        ),
        (
            "bob",
            vec![("method", "token"), ("token", user_token.as_str())],
        ),
        (
            "alice",
            vec![
                ("method", "userpass"),
                ("username", "alice"),
                ("password", USER_PASSWORD),
            ],
        ),
    ] {
        let (s, headers) = ui.sign_in(&form).await;
        let set = headers.get(SET_COOKIE).unwrap().to_str().unwrap();
        for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/;"] {
            assert!(set.contains(flag), "{who}'s cookie lacks {flag}: {set}");
        }
        // Named so that a browser takes it only from this host, never
        // planted by another site (a sibling subdomain's `Domain=`).
        assert!(set.starts_with("__Host-gatepass_session="), "{set}");
        assert!(!set.contains("Domain"), "{set}");
        // The cookie holds no token in clear.
        for secret in [ui.dev.token.as_str(), user_token.as_str()] {
            assert!(!set.contains(secret), "{who}'s cookie holds a token");
        }
        for (_, path) in PAGES.iter().chain(&[("login", "/ui/login")]) {
            let (st, h, html) = ui.get(&s.cookie, path).await;
            // Bob's and Alice's policy does not let them read a policy: a
            // 403 page, which must be as safe as the others.
            let denied = who != "root" && path.starts_with("/ui/policies/");
            let want = if denied {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::OK
            };
            assert_eq!(st, want, "{who} {path}: {html}");
            assert_eq!(
                h["content-security-policy"],
                "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
                "{path}"
            );
            assert_eq!(h["x-frame-options"], "DENY", "{path}");
            assert!(!html.contains("<script>"), "inline script on {path}");
            assert!(!html.contains(" style="), "inline style on {path}");
            for (what, secret) in [
                ("the root token", ui.dev.token.as_str()),
                ("the user's token", user_token.as_str()),
                ("an OTP", otp.as_str()),
                ("a private key", &private_body[..40]),
                ("the user's password", USER_PASSWORD),
                ("a host's join token", ui.host_secrets[0].as_str()),
                ("a host's token", ui.host_secrets[1].as_str()),
            ] {
                assert!(!html.contains(secret), "{who} sees {what} on {path}");
            }
        }
        // The answer to the join-token form shows the new token, once, and
        // nothing else secret.
        if who == "root" {
            let (st, html) = ui
                .post(
                    &s.cookie,
                    Some(&ui.base),
                    "/ui/hosts/join-tokens",
                    &[("csrf", s.csrf.as_str())],
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{html}");
            assert!(html.contains("id=\"join-token\""), "{html}");
            for (what, secret) in [
                ("the root token", ui.dev.token.as_str()),
                ("the user's token", user_token.as_str()),
                ("an OTP", otp.as_str()),
                ("another join token", ui.host_secrets[0].as_str()),
                ("a host's token", ui.host_secrets[1].as_str()),
            ] {
                assert!(!html.contains(secret), "the join-token page shows {what}");
            }
        }
    }
}

#[tokio::test]
async fn sign_out_revokes_the_session_token_and_leaves_the_users_own_token() {
    let (ui, _) = Ui::start().await;
    let own = ui
        .root(
            "POST",
            "auth/token/create",
            json!({ "policies": "auditor", "ttl": "1h" }),
        )
        .await["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, headers) = ui.sign_in(&[("method", "token"), ("token", &own)]).await;
    // The session lives no longer than the token it was made from.
    let max_age = cookie_max_age(&headers);
    assert!(max_age > 3500 && max_age <= 3600, "{max_age}");
    let (st, _, _) = ui.get(&s.cookie, "/ui/certs").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = ui.sign_out(&s).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    // The old cookie, replayed, signs no one in any more.
    let (st, h, _) = ui.get(&s.cookie, "/ui/certs").await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/ui/login");
    // Sign-in and sign-out are on the audit record, by whom, and the
    // token given at sign-in is there only as an HMAC.
    let log = ui
        .root("GET", "sys/audit-log", json!({ "limit": 1000 }))
        .await
        .to_string();
    assert!(log.contains("ui/login/token"), "sign-in not audited");
    assert!(log.contains("ui/logout"), "sign-out not audited");
    // Signing in again, as someone else, from a browser that has a session
    // ends that session: a copy of its cookie signs no one in any more.
    let (first, _) = ui.sign_in(&[("method", "token"), ("token", &own)]).await;
    let r = ui
        .http
        .post(ui.url("/ui/login"))
        .header(ORIGIN, &ui.base)
        .header("cookie", &first.cookie)
        .form(&[
            ("method", "userpass"),
            ("username", "alice"),
            ("password", USER_PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers().get(SET_COOKIE).is_some());
    let (st, h, _) = ui.get(&first.cookie, "/ui/certs").await;
    assert_eq!(st, StatusCode::SEE_OTHER, "the first session lives on");
    assert_eq!(h["location"], "/ui/login");
    assert!(
        !log.contains(&own),
        "the token is in the audit log in clear"
    );
    // The token the user signed in with still works.
    let (st, v) = ui
        .api(&own, "GET", "auth/token/lookup-self", json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // A wrong token or password is told so, on the sign-in page.
    for form in [
        vec![("method", "token"), ("token", "gps.not-a-token")],
        vec![
            ("method", "userpass"),
            ("username", "alice"),
            ("password", "wrong"),
        ],
    ] {
        let r = ui
            .http
            .post(ui.url("/ui/login"))
            .header(ORIGIN, &ui.base)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().get(SET_COOKIE).is_none());
        let page = r.text().await.unwrap();
        assert!(page.contains("sign-in failed"), "{page}");
        assert!(!page.contains("gps.not-a-token") && !page.contains("value=\"wrong\""));
    }
}

/// The Max-Age of a sign-in's session cookie.
fn cookie_max_age(headers: &HeaderMap) -> i64 {
    let set = headers[SET_COOKIE].to_str().unwrap();
    set.split("; ")
        .find_map(|kv| kv.strip_prefix("Max-Age="))
        .unwrap_or_else(|| panic!("no Max-Age: {set}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_password_sign_in_lasts_a_working_day_not_the_logins_32_days() {
    let (ui, _) = Ui::start().await;
    // The API's login gives the method's TTL: 32 days.
    let (st, v) = ui
        .api(
            "",
            "POST",
            "auth/userpass/login/alice",
            json!({ "password": USER_PASSWORD }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["auth"]["lease_duration"], 768 * 3600, "{v}");
    // The browser's session from the same password: 8 hours at most, the
    // cookie and the token behind it alike.
    let (s, headers) = ui
        .sign_in(&[
            ("method", "userpass"),
            ("username", "alice"),
            ("password", USER_PASSWORD),
        ])
        .await;
    let max_age = cookie_max_age(&headers);
    assert!(max_age > 8 * 3600 - 60 && max_age <= 8 * 3600, "{max_age}");
    let (st, _, _) = ui.get(&s.cookie, "/ui/certs").await;
    assert_eq!(st, StatusCode::OK);
    let mut ttls = ui.tokens_made_at("auth/userpass/login/alice").await;
    ttls.sort_by_key(|(t, _)| *t);
    assert_eq!(ttls.len(), 2, "{ttls:?}");
    assert!(ttls[0].0 <= 8 * 3600 && ttls[1].0 > 700 * 3600, "{ttls:?}");
    // Nor can the session's token be renewed past that.
    let renewed = ui
        .root(
            "POST",
            "auth/token/renew-accessor",
            json!({ "accessor": ttls[0].1, "increment": "720h" }),
        )
        .await;
    assert!(
        renewed["auth"]["lease_duration"].as_i64().unwrap() <= 8 * 3600,
        "{renewed}"
    );
    let (st, page) = ui.sign_out(&s).await;
    assert_eq!(st, StatusCode::SEE_OTHER, "{page}");

    // A login whose tokens are limited to a number of uses cannot make a
    // session: it would run out in a few pages. The sign-in says so, and
    // its token is not left behind.
    ui.root(
        "POST",
        "auth/userpass/users/counted",
        json!({ "password": USER_PASSWORD, "token_policies": "auditor", "token_num_uses": 3 }),
    )
    .await;
    let r = ui
        .http
        .post(ui.url("/ui/login"))
        .header(ORIGIN, &ui.base)
        .form(&[
            ("method", "userpass"),
            ("username", "counted"),
            ("password", USER_PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get(SET_COOKIE).is_none());
    let page = r.text().await.unwrap();
    assert!(page.contains("limited to a number of uses"), "{page}");
    assert_eq!(
        ui.tokens_made_at("auth/userpass/login/counted").await,
        vec![]
    );
}

#[tokio::test]
async fn a_policy_is_saved_only_once_it_parses_and_the_audit_trail_filters_by_path() {
    let (ui, _) = Ui::start().await;
    let (s, _) = ui
        .sign_in(&[("method", "token"), ("token", &ui.dev.token)])
        .await;
    // A policy that does not parse: shown again with the parser's message,
    // and the stored one is unchanged.
    let (st, page) = ui
        .post(
            &s.cookie,
            Some(&ui.base),
            "/ui/policies/auditor",
            &[
                ("csrf", &s.csrf),
                ("policy", "path \"ssh/*\" { capabilities = "),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{page}");
    assert!(page.contains("id=\"policy-error\""), "{page}");
    let stored = ui.root("GET", "sys/policies/acl/auditor", json!({})).await;
    assert_eq!(stored["data"]["policy"], AUDITOR_POLICY);
    // A good one is saved.
    let good = "path \"ssh/certs\" { capabilities = [\"list\"] }\n";
    let (st, _) = ui
        .post(
            &s.cookie,
            Some(&ui.base),
            "/ui/policies/auditor",
            &[("csrf", &s.csrf), ("policy", good)],
        )
        .await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let stored = ui.root("GET", "sys/policies/acl/auditor", json!({})).await;
    assert_eq!(stored["data"]["policy"], good);
    // The audit trail shows the write, filtered by its path, with the
    // chain verified; other paths are filtered out.
    let (st, _, page) = ui
        .get(&s.cookie, "/ui/audit?path=sys/policies/acl/auditor")
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        page.contains("<code>sys/policies/acl/auditor</code>"),
        "{page}"
    );
    assert!(!page.contains("<code>ssh/sign/ops</code>"), "{page}");
    assert!(page.contains("Intact"), "{page}");
}

#[tokio::test]
async fn the_inventory_is_paged_and_found_by_serial_key_id_or_principal() {
    let (ui, first) = Ui::start().await;
    let first_serial = ui.serial_of(&first);
    for i in 0..27 {
        ui.sign(&format!("batch-{i:02}")).await;
    }
    let (s, _) = ui
        .sign_in(&[("method", "token"), ("token", &ui.dev.token)])
        .await;
    let rows = |page: &str| page.matches("<tr id=\"cert-").count();
    let next_of = |page: &str| {
        page.split("id=\"next-page\" href=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(|l| l.replace("&amp;", "&"))
    };
    // 28 certificates: 25 on the first page, newest (highest serial)
    // first, 3 on the next, which its "Older" link leads to.
    let (_, _, p1) = ui.get(&s.cookie, "/ui/certs?mount=ssh").await;
    assert_eq!(rows(&p1), 25);
    assert!(p1.contains("batch-26") && !p1.contains("deploy-key"));
    let next = next_of(&p1).expect("a link to the next page");
    let (_, _, p2) = ui.get(&s.cookie, &next).await;
    assert_eq!(rows(&p2), 3);
    assert!(p2.contains("deploy-key") && !p2.contains("batch-26"));
    assert_eq!(next_of(&p2), None, "the last page links to no next one");
    // By serial, by the beginning of a key ID, by principal.
    let (_, _, by_serial) = ui
        .get(
            &s.cookie,
            &format!("/ui/certs?mount=ssh&by=serial&q={first_serial}"),
        )
        .await;
    assert_eq!(rows(&by_serial), 1);
    assert!(by_serial.contains("deploy-key"));
    let (_, _, by_key_id) = ui
        .get(&s.cookie, "/ui/certs?mount=ssh&by=key_id&q=batch-1")
        .await;
    assert_eq!(rows(&by_key_id), 10, "batch-10 to batch-19");
    let (_, _, by_principal) = ui
        .get(&s.cookie, "/ui/certs?mount=ssh&by=principal&q=deploy")
        .await;
    assert_eq!(rows(&by_principal), 25, "{by_principal}");
    let (_, _, rest) = ui
        .get(&s.cookie, &next_of(&by_principal).expect("a next page"))
        .await;
    assert_eq!(rows(&rest), 3);
    let (_, _, none) = ui
        .get(&s.cookie, "/ui/certs?mount=ssh&by=principal&q=nobody")
        .await;
    assert_eq!(rows(&none), 0);
    // A link naming another path than an ssh mount shows no page of it,
    // and a revoke posted for one is refused before it is tried.
    let (st, _, page) = ui
        .get(&s.cookie, "/ui/certs?mount=sys/policies&by=serial&q=1")
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{page}");
    assert!(page.contains("no such ssh mount"), "{page}");
    let (st, page) = ui
        .post(
            &s.cookie,
            Some(&ui.base),
            "/ui/certs/revoke",
            &[("csrf", &s.csrf), ("mount", "ssh/roles"), ("serial", "1")],
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{page}");
    // The overview counts them, all signed today (from the serials' range
    // of keys, no certificate read).
    let (_, _, overview) = ui.get(&s.cookie, "/ui/").await;
    assert!(
        overview.contains(r#"id="issued-ssh">28</td>"#),
        "{overview}"
    );
}

/// The sessions page shows 50 sessions a page, newest first, with a link
/// to the next page; a state filter keeps only the sessions in it.
#[tokio::test]
async fn the_session_list_is_paged_and_filtered_by_state() {
    let (ui, _) = Ui::start().await;
    let join = ui
        .root("POST", "pam/gateways/join-tokens", json!({"ttl": "10m"}))
        .await["data"]["join_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, gw_key) = keypair(ui.dir.path(), "gw_host", "ed25519", None);
    let (st, v) = ui
        .api(
            "",
            "POST",
            "pam/gateways/enroll",
            json!({"join_token": join, "name": "gw1", "address": "127.0.0.1:2222", "host_keys": [gw_key.trim()]}),
        )
        .await;
    assert!(st.is_success(), "enroll: {v}");
    let (_, target_key) = keypair(ui.dir.path(), "target_host", "ed25519", None);
    ui.root(
        "POST",
        "pam/resources/web",
        json!({"host": "10.0.0.7", "gateway": "gw1", "known_hosts": [format!("10.0.0.7 {}", target_key.trim())]}),
    )
    .await;
    let (account_key, user_pub) = keypair(ui.dir.path(), "account_key", "ed25519", None);
    ui.root(
        "POST",
        "pam/resources/web/accounts/deploy",
        json!({"auth_method": "key", "username": "deploy", "private_key": std::fs::read_to_string(account_key).unwrap()}),
    )
    .await;
    // 52 sessions; the first three terminated.
    let mut ids = Vec::new();
    for _ in 0..52 {
        let v = ui
            .root(
                "POST",
                "pam/resources/web/accounts/deploy/access",
                json!({"duration": "10m", "public_key": user_pub}),
            )
            .await;
        ids.push(v["data"]["session_id"].as_str().unwrap().to_string());
    }
    for id in &ids[..3] {
        ui.root("POST", &format!("pam/sessions/{id}/terminate"), json!({}))
            .await;
    }
    let (s, _) = ui
        .sign_in(&[("method", "token"), ("token", &ui.dev.token)])
        .await;
    let rows = |page: &str| page.matches("<tr id=\"session-").count();
    let next_of = |page: &str| {
        page.split("id=\"next-page\" href=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(|l| l.replace("&amp;", "&"))
    };
    let (st, _, p1) = ui.get(&s.cookie, "/ui/sessions").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(rows(&p1), 50);
    let (_, _, p2) = ui
        .get(&s.cookie, &next_of(&p1).expect("a link to the next page"))
        .await;
    assert_eq!(rows(&p2), 2);
    assert_eq!(next_of(&p2), None);
    let shown: Vec<&String> = ids
        .iter()
        .filter(|id| p1.contains(id.as_str()) || p2.contains(id.as_str()))
        .collect();
    assert_eq!(shown.len(), 52, "every session on one of the two pages");
    let (_, _, ended) = ui.get(&s.cookie, "/ui/sessions?state=ended").await;
    assert_eq!(rows(&ended), 3);
    assert!(ids[..3].iter().all(|id| ended.contains(id.as_str())));
    assert_eq!(next_of(&ended), None);
}

/// A finished gateway session's page replays its recording with
/// asciinema-player (from the UI's own cast route, the CLI's asciicast):
/// the marker the session printed appears on the player's terminal, and
/// the command with its exit status is listed beside it, and the binary
/// output after the marker as its size.
#[test]
fn the_replay_page_shows_a_marker_the_session_printed() {
    use crate::pam_recording::verify_until;
    use crate::pam_sessions::{key_account, session_id_in, Pam};
    browser::require();
    let pam = Pam::start();
    let _sshd = key_account(&pam);
    // $ gatepass pam ssh access --resource keys --account root -- echo …
    let out = pam
        .access(
            "keys",
            "root",
            "5m",
            // Then binary output, which is listed as its size. It holds no
            // text: a program's text (its symbol names, say) is played as a
            // terminal would show it, and would scroll the marker away.
            &[
                "echo",
                "REPLAY-MARKER-4711;",
                "perl",
                "-e",
                r#"'print "\0\377" x 32768'"#,
            ],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let id = session_id_in(&String::from_utf8_lossy(&out.stderr));
    // The gateway delivers the recording's end after the connection closes.
    verify_until(&pam, &id, |code, _| code == 0);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let base = &pam.server.addr;
        // The cast the page plays is the CLI's export.
        let cast = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let anonymous = cast
            .get(format!("{base}/ui/sessions/{id}/cast"))
            .send()
            .await
            .unwrap();
        assert!(
            !anonymous.text().await.unwrap().contains("REPLAY-MARKER"),
            "the cast is served without a session"
        );

        let b = Browser::start().await;
        b.goto(&format!("{base}/ui/login")).await;
        b.fill("#token", &pam.server.token).await;
        b.click("#token-submit").await;
        b.goto(&format!("{base}/ui/sessions")).await;
        b.click(&format!("a[href='/ui/sessions/{id}']")).await;
        // The player renders the terminal's text into the DOM as it plays.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let shown = match b
                .client
                .find(fantoccini::Locator::Css("#player .ap-term"))
                .await
            {
                Ok(term) => term.html(true).await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if shown.contains("REPLAY-MARKER-4711") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the player never showed the marker:\n{shown}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let events = b.text("#events").await;
        assert!(events.contains("exec"), "{events}");
        assert!(events.contains("echo REPLAY-MARKER-4711"), "{events}");
        assert!(events.contains("exit 0"), "{events}");
        assert!(events.contains("binary output"), "{events}");
        assert!(events.contains(" bytes"), "{events}");
        b.screenshot("session-replay").await;
        // A speed other than the offered ones is not taken.
        b.goto(&format!("{base}/ui/sessions/{id}?speed=1000")).await;
        let speed = b.source().await;
        assert!(speed.contains(r#"data-speed="1""#), "{speed}");
        b.goto(&format!("{base}/ui/sessions/{id}?speed=2")).await;
        assert!(b.source().await.contains(r#"data-speed="2""#));
        b.close().await;
    });
}

/// Single sign-on from the sign-in page, in a real browser against a real
/// OpenID provider: the page offers the `oidc` mount, the person signs in
/// on the provider's own pages and comes back signed in, with the
/// policies of their group at the provider (alice is in `ops`).
#[tokio::test]
async fn a_person_signs_in_with_single_sign_on_and_gets_the_policies_of_their_group() {
    use gatepass_tests::oidc::{Provider, CLIENT_ID, CLIENT_SECRET};
    browser::require();
    let dev = DevServer::start();
    // The UI's own redirect URI, allowed by the provider and the role.
    let redirect = format!("{}/ui/oidc/callback", dev.addr);
    let p = Provider::start_with(&[&redirect]);
    let admin = dev.client();
    let call = |method: &'static str, path: &'static str, body: Value| {
        let admin = &admin;
        async move {
            let body = body.as_object().cloned();
            admin
                .request(method, path, body.as_ref())
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
                .unwrap_or_default()
        }
    };
    call("POST", "sys/auth/oidc", json!({"type": "oidc"})).await;
    let auths = call("GET", "sys/auth", Value::Null).await;
    let accessor = auths["data"]["oidc/"]["accessor"]
        .as_str()
        .unwrap()
        .to_string();
    call(
        "POST",
        "auth/oidc/config",
        json!({"oidc_discovery_url": p.issuer, "oidc_client_id": CLIENT_ID,
               "oidc_client_secret": CLIENT_SECRET, "default_role": "person"}),
    )
    .await;
    call(
        "POST",
        "auth/oidc/role/person",
        json!({"role_type": "oidc", "allowed_redirect_uris": [redirect],
               "user_claim": "preferred_username", "groups_claim": "groups",
               "oidc_scopes": ["profile", "groups"], "token_ttl": "1h"}),
    )
    .await;
    // The provider's group `ops` gives the policy that lists policies.
    call(
        "POST",
        "sys/policies/acl/ops-ui",
        json!({"policy": r#"path "sys/policies/acl" { capabilities = ["list"] }"#}),
    )
    .await;
    let g = call(
        "POST",
        "identity/group",
        json!({"name": "ops-team", "type": "external", "policies": ["ops-ui"]}),
    )
    .await;
    call(
        "POST",
        "identity/group-alias",
        json!({"name": "ops", "mount_accessor": accessor, "canonical_id": g["data"]["id"]}),
    )
    .await;

    let b = Browser::start().await;
    b.goto(&format!("{}/ui/login", dev.addr)).await;
    b.screenshot("login-sso").await;
    b.click("#oidc-submit-oidc").await;
    // The provider's login and consent pages.
    b.fill("input[name=login]", "alice").await;
    b.fill("input[name=password]", "any").await;
    b.click("button[type=submit]").await;
    b.click("button[type=submit]").await;
    // Back at gatepass, signed in as alice.
    let who = b.text("#signed-in-as").await;
    assert!(who.contains("alice"), "{who}\n{}", b.source().await);
    b.goto(&format!("{}/ui/policies", dev.addr)).await;
    let listed = b.text("#policies").await;
    assert!(listed.contains("ops-ui"), "{listed}");
    b.close().await;

    // A callback this browser did not start (someone else's code and
    // state) signs nobody in.
    let other = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let forged = other
        .get(format!(
            "{}/ui/oidc/callback?state=someone-elses&code=theirs",
            dev.addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    assert!(forged.headers().get(SET_COOKIE).is_none());
}

/// The PAM pages: an administrator creates, edits and deletes a resource
/// and an account in the browser; the account's password is write-only
/// (never in any page); the "access" button grants a session and shows
/// the `ssh` command, which connects through the gateway.
#[test]
fn an_admin_manages_pam_resources_and_accounts_and_gets_access_from_the_web_ui() {
    use crate::pam_sessions::{key_account, Pam};
    use fantoccini::Locator;
    browser::require();
    const ACCOUNT_PASSWORD: &str = "ui-account-password-31337";
    let pam = Pam::start();
    let sshd = key_account(&pam);
    let account_key = std::fs::read_to_string(pam.admin.path().join("account_key")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (user_key, user_pub) = keypair(dir.path(), "user_key", "ed25519", None);
    let base = pam.server.addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let command = rt.block_on(async {
        let b = Browser::start().await;
        let replace = |css: &'static str, value: String| {
            let b = &b;
            async move {
                let e = b.client.find(Locator::Css(css)).await.unwrap();
                e.clear().await.unwrap();
                e.send_keys(&value).await.unwrap();
            }
        };
        b.goto(&format!("{base}/ui/login")).await;
        b.fill("#token", &pam.server.token).await;
        b.click("#token-submit").await;
        b.goto(&format!("{base}/ui/pam")).await;
        assert!(b.text("#resource-keys").await.contains("root"));

        // A new resource, pinned to the target's host key.
        b.fill("#r-name", "web").await;
        b.fill("#r-host", "127.0.0.1").await;
        b.fill("#r-port", &sshd.port.to_string()).await;
        b.fill("#r-gateway", "gw1").await;
        b.fill("#r-kh", sshd.host_public_key().trim()).await;
        b.screenshot("pam").await;
        b.click("#resource-save").await;
        assert!(b.text("h1").await.contains("Resource web"));
        // Edited: a port that is not one is refused with the API's message.
        replace("#r-port", "notaport".into()).await;
        b.click("#resource-save").await;
        let refused = b.source().await;
        assert!(refused.contains("port"), "{refused}");
        b.goto(&format!("{base}/ui/pam/resources/web")).await;
        replace("#r-port", "2222".into()).await;
        b.click("#resource-save").await;
        assert_eq!(
            b.client
                .find(Locator::Css("#r-port"))
                .await
                .unwrap()
                .prop("value")
                .await
                .unwrap()
                .as_deref(),
            Some("2222")
        );

        // An account with a password: stored, never shown.
        b.fill("#a-name", "ops").await;
        b.fill("#a-user", "operator").await;
        b.fill("#a-password", ACCOUNT_PASSWORD).await;
        b.click("#account-save").await;
        let row = b.text("#account-ops").await;
        assert!(row.contains("stored (write-only)"), "{row}");
        assert!(!b.source().await.contains(ACCOUNT_PASSWORD));
        b.click("a[href='/ui/pam/resources/web/accounts/ops']")
            .await;
        assert!(!b.source().await.contains(ACCOUNT_PASSWORD));
        // Edited without a new password: the stored one is kept.
        replace("#a-user", "operator2".into()).await;
        b.click("#account-save").await;
        let row = b.text("#account-ops").await;
        assert!(row.contains("operator2"), "{row}");
        assert!(row.contains("stored (write-only)"), "{row}");
        b.screenshot("pam-resource").await;

        // Deleted: the account, then the resource.
        b.goto(&format!("{base}/ui/pam/resources/web/accounts/ops"))
            .await;
        b.click("#account-delete").await;
        assert!(!b.exists("#account-ops").await);
        b.click("#resource-delete").await;
        assert!(!b.exists("#resource-web").await, "{}", b.source().await);

        // Access to the key account: a session and the ssh command.
        b.goto(&format!("{base}/ui/pam/resources/keys")).await;
        b.fill("#pk-root", user_pub.trim()).await;
        b.fill("#dur-root", "5m").await;
        b.click("#access-submit-root").await;
        let page = b.source().await;
        assert!(
            !page.contains(account_key.trim()),
            "the account's key was shown"
        );
        for marker in account_key.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!page.contains(marker), "the account's key was shown");
        }
        let cert = b.text("#cert").await;
        let cert = if cert.is_empty() {
            b.client
                .find(Locator::Css("#cert"))
                .await
                .unwrap()
                .prop("value")
                .await
                .unwrap()
                .unwrap_or_default()
        } else {
            cert
        };
        assert!(cert.contains("-cert-v01@openssh.com"), "{cert}");
        let known = b
            .client
            .find(Locator::Css("#kh"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .unwrap_or_default();
        let id = b.text("#granted-session").await;
        let command = b.text("#ssh-command").await;
        b.screenshot("pam-access").await;
        b.close().await;
        write(dir.path(), &format!("gatepass-{id}-cert.pub"), &cert, 0o644);
        write(
            dir.path(),
            &format!("gatepass-{id}-known_hosts"),
            &known,
            0o644,
        );
        command
    });
    // The command the page showed, with this test's key, connects.
    assert!(command.starts_with("ssh "), "{command}");
    assert!(command.contains("root@"), "{command}");
    let command = command.replacen(
        "ssh -i ~/.ssh/id_ed25519",
        &format!("ssh -o BatchMode=yes -i {}", user_key.display()),
        1,
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{command} echo UI-ACCESS-OK"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("UI-ACCESS-OK"),
        "{command}: {out:?}\n{}",
        pam.gateway_log()
    );
}

/// A role is edited on its page: a setting the API refuses comes back with
/// the API's own message and the text kept; a valid change is saved.
#[tokio::test]
async fn a_role_is_edited_with_the_apis_validation_messages() {
    use fantoccini::Locator;
    browser::require();
    let (ui, _cert) = Ui::start().await;
    let b = Browser::start().await;
    browser_sign_in_with_token(&b, &ui, &ui.dev.token).await;
    b.goto(&ui.url("/ui/ssh")).await;
    b.click("a[href='/ui/ssh/ssh/roles/ops']").await;
    let set = |text: String| {
        let b = &b;
        async move {
            let e = b.client.find(Locator::Css("#role")).await.unwrap();
            e.clear().await.unwrap();
            e.send_keys(&text).await.unwrap();
        }
    };
    set(r#"{"key_type": "ca", "allow_user_certificates": true, "ttl": "not-a-duration"}"#.into())
        .await;
    b.click("#role-save").await;
    let error = b.text("#role-error").await;
    assert!(error.contains("ttl"), "{error}");
    set(
        r#"{"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*", "ttl": "2h"}"#
            .into(),
    )
    .await;
    b.click("#role-save").await;
    assert!(b.exists("#role-saved").await, "{}", b.source().await);
    let role = ui.root("GET", "ssh/roles/ops", Value::Null).await;
    assert_eq!(role["data"]["ttl"], json!(7200), "{role}");
    b.screenshot("role").await;
    b.close().await;
}

// ---- overview counts, join tokens, tokens and leases, keyboard, live view ----

/// One request to the UI of an in-process server (manual clock): status,
/// headers, body.
async fn inproc_ui(
    s: &gatepass_tests::inproc::Server,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut b = axum::http::Request::builder().method(method).uri(path);
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    let body = if method == "POST" {
        b = b.header("content-type", "application/x-www-form-urlencoded");
        reqwest::Url::parse_with_params("http://form/", form)
            .unwrap()
            .query()
            .unwrap_or_default()
            .to_string()
    } else {
        String::new()
    };
    let mut req = b.body(axum::body::Body::from(body)).unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(s.client));
    let resp = gatepass_server::ui::routes()
        .with_state(s.core.clone())
        .oneshot(req)
        .await
        .unwrap();
    let (st, h) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (st, h, String::from_utf8_lossy(&bytes).into_owned())
}

/// The text of the element with this id in a page (its first text run).
pub(crate) fn element_text(html: &str, id: &str) -> String {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in:\n{html}"));
    let tag_at = html[..at].rfind('<').unwrap();
    let tag: String = html[tag_at + 1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let rest = &html[at..];
    let open = rest.find('>').unwrap() + 1;
    let inner = &rest[open..];
    // Tags dropped, up to the element's end (no element of the same kind
    // inside it).
    let end = inner.find(&format!("</{tag}>")).unwrap_or(inner.len());
    let mut text = String::new();
    let mut in_tag = false;
    for ch in inner[..end].chars() {
        match ch {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.trim().to_string()
}

/// The overview counts the certificates issued today (from their serials,
/// reading no certificate) and names the hosts that stopped asking for
/// their state, on a server whose clock the test moves: a day later the
/// count is back to 0, and a host silent for six minutes is out of sync
/// until it asks again.
#[tokio::test]
async fn the_overview_counts_todays_certificates_and_names_hosts_out_of_sync() {
    use gatepass_tests::inproc::{Backend, Server, ROOT};
    let server = Server::start(Backend::Sqlite).await;
    let s = &server;
    let dir = tempfile::tempdir().unwrap();
    for (path, body) in [
        ("ssh/config/ca", json!({})),
        (
            "ssh/roles/ops",
            json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*", "ttl": "1h"}),
        ),
    ] {
        let (st, v) = s.root("POST", path, Some(body)).await;
        assert!(st.is_success(), "{path}: {v}");
    }
    let sign = |name: &'static str| {
        let (_, public) = keypair(dir.path(), name, "ed25519", None);
        json!({ "public_key": public, "valid_principals": "deploy" })
    };
    for name in ["a", "b"] {
        let (st, v) = s.root("POST", "ssh/sign/ops", Some(sign(name))).await;
        assert!(st.is_success(), "{v}");
    }
    let host_token = enroll_db1(s, dir.path(), json!({})).await;

    // Signed in as root (again after a day: a session lasts 8 hours).
    let sign_in = move || async move {
        let (st, h, _) = inproc_ui(
            s,
            "POST",
            "/ui/login",
            None,
            &[("method", "token"), ("token", ROOT)],
        )
        .await;
        assert_eq!(st, StatusCode::SEE_OTHER);
        h["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };
    let cookie = sign_in().await;
    let overview =
        |cookie: String| async move { inproc_ui(s, "GET", "/ui/", Some(&cookie), &[]).await.2 };

    let page = overview(cookie.clone()).await;
    assert_eq!(element_text(&page, "issued-ssh"), "2", "{page}");
    assert_eq!(element_text(&page, "hosts-out-of-sync"), "0");

    // Six minutes without a word from db1: out of sync, by name, and so
    // on the hosts page.
    s.clock.advance(6 * 60);
    let page = overview(cookie.clone()).await;
    assert_eq!(element_text(&page, "hosts-out-of-sync"), "1: db1", "{page}");
    let hosts = inproc_ui(s, "GET", "/ui/hosts", Some(&cookie), &[]).await.2;
    assert!(hosts.contains("out of sync"), "{hosts}");
    // It asks for its state: following again.
    let (st, _) = s
        .call("GET", "hosts/self/state", Some(&host_token), None)
        .await;
    assert!(st.is_success());
    let page = overview(cookie.clone()).await;
    assert_eq!(element_text(&page, "hosts-out-of-sync"), "0");

    // The next day: nothing issued yet; one more certificate counts.
    s.clock.advance(24 * 3600);
    let cookie = sign_in().await;
    let page = overview(cookie.clone()).await;
    assert_eq!(element_text(&page, "issued-ssh"), "0", "{page}");
    let (st, _) = s.root("POST", "ssh/sign/ops", Some(sign("c"))).await;
    assert!(st.is_success());
    assert_eq!(
        element_text(&overview(cookie.clone()).await, "issued-ssh"),
        "1"
    );
}

/// The WebDriver key codes of Tab and Enter.
const TAB: char = '\u{e004}';
const ENTER: char = '\u{e007}';

/// Presses one key, as a person at the keyboard would: to whatever has the
/// focus.
async fn press(b: &Browser, key: char) {
    use fantoccini::actions::{InputSource, KeyAction, KeyActions};
    let keys = KeyActions::new("keyboard".into())
        .then(KeyAction::Down { value: key })
        .then(KeyAction::Up { value: key });
    b.client.perform_actions(keys).await.unwrap();
}

/// The id of the element that has the focus.
async fn focused(b: &Browser) -> String {
    b.client
        .active_element()
        .await
        .unwrap()
        .attr("id")
        .await
        .unwrap()
        .unwrap_or_default()
}

/// Signing in with the keyboard alone: Tab walks the sign-in page's fields
/// in order (each labelled), typing fills the focused one and Enter
/// submits.
#[tokio::test]
async fn a_person_signs_in_with_the_keyboard_alone() {
    browser::require();
    let (ui, _) = Ui::start().await;
    let b = Browser::start().await;
    b.goto(&ui.url("/ui/login")).await;
    // Every field has its label.
    for id in ["token", "username", "password"] {
        assert!(
            b.exists(&format!("label[for='{id}']")).await,
            "{id} has no label"
        );
    }
    let mut order = Vec::new();
    for _ in 0..5 {
        press(&b, TAB).await;
        order.push(focused(&b).await);
    }
    assert_eq!(
        order,
        [
            "token",
            "token-submit",
            "username",
            "password",
            "userpass-submit"
        ]
    );
    // From the top again: three Tabs to the user name, typed in, then the
    // password, and Enter.
    b.goto(&ui.url("/ui/login")).await;
    for _ in 0..3 {
        press(&b, TAB).await;
    }
    assert_eq!(focused(&b).await, "username");
    let typed = |text: &'static str| {
        let b = &b;
        async move {
            b.client
                .active_element()
                .await
                .unwrap()
                .send_keys(text)
                .await
                .unwrap();
        }
    };
    typed("alice").await;
    press(&b, TAB).await;
    assert_eq!(focused(&b).await, "password");
    typed(USER_PASSWORD).await;
    press(&b, ENTER).await;
    assert!(
        b.text("#signed-in-as").await.contains("alice"),
        "{}",
        b.source().await
    );
    // On a signed-in page the first Tab reaches the skip link, which
    // moves the focus past the navigation.
    press(&b, TAB).await;
    let skip = b.client.active_element().await.unwrap();
    assert_eq!(skip.attr("class").await.unwrap().as_deref(), Some("skip"));
    b.close().await;
}

/// The admin's side of the hosts and tokens pages in a browser: a join
/// token made on the hosts page is shown once, enrolls a host, is listed by
/// accessor only and revoked; the tokens page lists another user's token
/// and an OTP's lease, each revoked with its button.
#[tokio::test]
async fn an_admin_makes_and_revokes_a_join_token_and_revokes_a_token_and_a_lease() {
    browser::require();
    let (ui, _) = Ui::start().await;
    let b = Browser::start().await;
    browser_sign_in_with_token(&b, &ui, &ui.dev.token).await;

    // The overview: the one certificate Ui::start signed, web1 in sync.
    b.goto(&ui.url("/ui/")).await;
    assert_eq!(b.text("#issued-ssh").await, "1");
    assert_eq!(b.text("#hosts-out-of-sync").await, "0");

    // A join token for two hosts, from the hosts page's form.
    b.goto(&ui.url("/ui/hosts")).await;
    b.fill("#join-ttl", "30m").await;
    b.fill("#join-uses", "2").await;
    b.click("#join-submit").await;
    let token = b.text("#join-token").await;
    let accessor = b.text("#join-accessor").await;
    assert!(token.starts_with("gpj."), "{token}");
    b.screenshot("join-token").await;
    // It enrolls a host.
    let (_, host_key) = keypair(ui.dir.path(), "web2_host", "ed25519", None);
    let (st, v) = ui
        .api(
            "",
            "POST",
            "hosts/enroll",
            json!({ "join_token": token, "hostname": "web2", "host_keys": [host_key.trim()] }),
        )
        .await;
    assert!(st.is_success(), "{v}");
    // Listed by accessor with one enrollment left; the token itself is on
    // no page any more.
    b.goto(&ui.url("/ui/hosts")).await;
    let left = b.text(&format!("#join-{accessor} td:nth-child(3)")).await;
    assert_eq!(left, "1");
    assert!(
        !b.source().await.contains(&token),
        "the join token shown again"
    );
    b.click(&format!("#revoke-join-{accessor}")).await;
    assert!(!b.exists(&format!("#join-{accessor}")).await);
    let (st, v) = ui
        .api(
            "",
            "POST",
            "hosts/enroll",
            json!({ "join_token": token, "hostname": "web3", "host_keys": [host_key.trim()] }),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "enrolled with a revoked join token: {v}"
    );

    // Another user's token and an OTP's lease, on the tokens page.
    let bob = ui
        .root(
            "POST",
            "auth/token/create",
            json!({ "policies": "auditor", "display_name": "bob" }),
        )
        .await;
    let bob_token = bob["auth"]["client_token"].as_str().unwrap().to_string();
    let bob_accessor = bob["auth"]["accessor"].as_str().unwrap().to_string();
    ui.root(
        "POST",
        "ssh/roles/otp",
        json!({"key_type": "otp", "default_user": "deploy", "cidr_list": "10.0.0.0/8"}),
    )
    .await;
    let otp = ui
        .root("POST", "ssh/creds/otp", json!({ "ip": "10.1.2.3" }))
        .await;
    let lease = otp["lease_id"].as_str().unwrap().to_string();
    b.goto(&ui.url("/ui/tokens")).await;
    assert!(b.text("#own-token").await.contains("root"));
    let row = b.text(&format!("#token-{bob_accessor}")).await;
    assert!(row.contains("auditor"), "{row}");
    assert!(!b.source().await.contains(&bob_token));
    b.screenshot("tokens").await;
    b.click(&format!("#revoke-token-{bob_accessor}")).await;
    assert!(!b.exists(&format!("#token-{bob_accessor}")).await);
    let (st, _) = ui
        .api(&bob_token, "GET", "auth/token/lookup-self", json!({}))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "bob's token still works");

    // The lease, found folder by folder.
    let folder = lease.rsplit_once('/').unwrap().0;
    b.goto(&ui.url(&format!("/ui/tokens?prefix={folder}/")))
        .await;
    let leases = b.text("#leases").await;
    assert!(leases.contains(&lease), "{leases}");
    b.click(&format!(
        "#leases button[aria-label='Revoke the lease {lease}']"
    ))
    .await;
    let (st, v) = ui
        .api(
            &ui.dev.token,
            "PUT",
            "sys/leases/lookup",
            json!({ "lease_id": lease }),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "the lease is still there: {v}");
    b.close().await;
}

/// A user whose policy allows none of it sees their own session's token
/// (by accessor), no other token, no lease, no join-token form and no
/// revoke button; posting those forms anyway is a 403, as from the API.
#[tokio::test]
async fn a_user_sees_their_own_token_and_is_refused_what_their_policy_denies() {
    let (ui, _) = Ui::start().await;
    let root_accessor = ui.root("GET", "auth/token/lookup-self", json!({})).await["data"]
        ["accessor"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = ui
        .sign_in(&[
            ("method", "userpass"),
            ("username", "alice"),
            ("password", USER_PASSWORD),
        ])
        .await;
    let (st, _, page) = ui.get(&s.cookie, "/ui/tokens").await;
    assert_eq!(st, StatusCode::OK, "{page}");
    assert!(element_text(&page, "own-token").contains("alice"), "{page}");
    assert!(page.contains("do not allow listing other tokens"), "{page}");
    assert!(page.contains("do not allow listing leases"), "{page}");
    assert!(!page.contains(&root_accessor));
    assert!(!page.contains("/ui/tokens/revoke"));
    let (_, _, hosts) = ui.get(&s.cookie, "/ui/hosts").await;
    assert!(!hosts.contains("join-form"), "{hosts}");
    assert!(
        hosts.contains("do not allow listing join tokens"),
        "{hosts}"
    );

    for (path, form) in [
        (
            "/ui/tokens/revoke",
            vec![
                ("csrf", s.csrf.as_str()),
                ("accessor", root_accessor.as_str()),
            ],
        ),
        ("/ui/hosts/join-tokens", vec![("csrf", s.csrf.as_str())]),
        (
            "/ui/leases/revoke",
            vec![("csrf", s.csrf.as_str()), ("lease_id", "ssh/creds/otp/x")],
        ),
    ] {
        let (st, body) = ui.post(&s.cookie, Some(&ui.base), path, &form).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(body.contains("permission denied"), "{path}: {body}");
    }
    // Root's token still works.
    ui.root("GET", "auth/token/lookup-self", json!({})).await;
}

/// A running session's page follows it: output the session prints while
/// the page is open appears without a reload (htmx asks every 2 s for what
/// was recorded since), and once the connection has closed the page says
/// the recording ended and stops asking.
#[test]
fn a_live_sessions_page_shows_its_new_output_without_a_reload() {
    use crate::pam_sessions::{key_account, wait_exit, wait_for_active, Pam};
    use std::process::Stdio;
    browser::require();
    let pam = Pam::start();
    let _sshd = key_account(&pam);
    let flags = tempfile::tempdir().unwrap();
    let go = flags.path().join("go");
    let done = flags.path().join("done");
    // The marker is printed only once the test says so, and is made by the
    // shell, so that the command's own text does not hold it.
    let script = format!(
        "sh -c 'while [ ! -e {go} ]; do sleep 0.2; done; printf \"LIVE-%s\\n\" 4711; while [ ! -e {done} ]; do sleep 0.2; done'",
        go = go.display(),
        done = done.display()
    );
    let mut live = pam
        .access("keys", "root", "5m", &[&script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = wait_for_active(&pam);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let base = &pam.server.addr;
        let b = Browser::start().await;
        b.goto(&format!("{base}/ui/login")).await;
        b.fill("#token", &pam.server.token).await;
        b.click("#token-submit").await;
        // To the session from the list with the keyboard: the list
        // refreshes itself every 5 s, and the focus stays on the link
        // through a refresh (htmx puts it back on the element of the same
        // id).
        b.goto(&format!("{base}/ui/sessions")).await;
        let link = format!("/ui/sessions/{id}");
        let focused_link = || async {
            b.client
                .active_element()
                .await
                .unwrap()
                .attr("href")
                .await
                .unwrap()
                .unwrap_or_default()
        };
        for _ in 0..40 {
            if focused_link().await == link {
                break;
            }
            press(&b, TAB).await;
        }
        assert_eq!(focused_link().await, link, "Tab never reached the session");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(focused_link().await, link, "a refresh lost the focus");
        press(&b, ENTER).await;
        b.text("#live-output").await;
        let shown = || async {
            b.client
                .find(fantoccini::Locator::Css("#live-output"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap_or_default()
        };
        // The page keeps asking while nothing is printed.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!shown().await.contains("LIVE-4711"));
        assert!(b.exists("#live-next").await, "{}", b.source().await);

        std::fs::write(&go, "").unwrap();
        let asked = std::time::Instant::now();
        while !shown().await.contains("LIVE-4711") {
            assert!(
                asked.elapsed() < Duration::from_secs(10),
                "the page never showed the marker: {}",
                b.source().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        b.client
            .execute(
                "document.getElementById('live-h').scrollIntoView();",
                vec![],
            )
            .await
            .unwrap();
        b.screenshot("session-live").await;

        // The session's command ends: the page says so and stops asking.
        std::fs::write(&done, "").unwrap();
        let ended = std::time::Instant::now();
        while !b.exists("#live-ended").await {
            assert!(
                ended.elapsed() < Duration::from_secs(20),
                "the page did not see the end: {}",
                b.source().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(!b.exists("#live-next").await);
        assert!(shown().await.contains("LIVE-4711"));
        b.close().await;
    });
    let status = wait_exit(&mut live, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

/// Signs in to an in-process server's UI as root; the session cookie.
async fn inproc_root_cookie(s: &gatepass_tests::inproc::Server) -> String {
    let (st, h, _) = inproc_ui(
        s,
        "POST",
        "/ui/login",
        None,
        &[("method", "token"), ("token", gatepass_tests::inproc::ROOT)],
    )
    .await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    h["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// The hosts page shows the state each host applied beside the one it
/// would be handed now, and the files it last repaired: a host that has
/// not acknowledged a state, one that is current, one left behind by a
/// mapping change, and one that reports drift (also in `GET hosts/<name>`).
#[tokio::test]
async fn the_hosts_page_shows_the_state_a_host_applied_and_what_it_repaired() {
    use gatepass_tests::inproc::{Backend, Server};
    let s = &Server::start(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let (st, v) = s.root("POST", "ssh/config/ca", Some(json!({}))).await;
    assert!(st.is_success(), "{v}");
    let host = enroll_db1(s, dir.path(), json!({ "principals": "mapped" })).await;
    let cookie = inproc_root_cookie(s).await;
    let (cookie, host) = (cookie.as_str(), host.as_str());
    let state_cell = move || async move {
        let page = inproc_ui(s, "GET", "/ui/hosts", Some(cookie), &[]).await.2;
        let row = page
            .split("<tr>")
            .find(|r| r.contains("<td>db1</td>"))
            .unwrap_or_else(|| panic!("no db1 row in {page}"))
            .to_string();
        row
    };
    assert!(state_cell().await.contains("no state applied yet"));

    // The host fetches its state and acknowledges it: current.
    let state_index = move || async move {
        let (st, v) = s.call("GET", "hosts/self/state", Some(host), None).await;
        assert!(st.is_success(), "{v}");
        v["data"]["index"].as_u64().unwrap()
    };
    let ack = move |body: Value| async move {
        s.call("POST", "hosts/self/ack", Some(host), Some(body))
            .await
    };
    let first = state_index().await;
    let (st, v) = ack(json!({ "index": first, "installed": [] })).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let row = state_cell().await;
    assert!(
        row.contains(&format!("applied state {first} (current)")),
        "{row}"
    );
    assert!(row.contains("none seen"), "{row}");

    // A login mapping changes the host's state: it is behind until it
    // acknowledges the new one.
    let (st, v) = s
        .root(
            "POST",
            "hosts/mappings/root",
            Some(json!({ "principals": "ops" })),
        )
        .await;
    assert!(st.is_success(), "{v}");
    let second = state_index().await;
    assert_ne!(first, second);
    let row = state_cell().await;
    assert!(
        row.contains(&format!(
            "applied state {first}, behind: the server has state {second}"
        )),
        "{row}"
    );

    // It applies the new state and reports a file it found edited by
    // someone else and wrote back.
    let repaired = "/etc/ssh/gatepass/principals/root";
    let (st, v) = ack(json!({ "index": second, "installed": [], "drift": [repaired] })).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let row = state_cell().await;
    assert!(
        row.contains(&format!("applied state {second} (current)")),
        "{row}"
    );
    let when = gatepass_server::clock::rfc3339(s.clock.now());
    assert!(
        row.contains(&format!("repaired at {when}: <code>{repaired}</code>")),
        "{row}"
    );
    let (_, v) = s.root("GET", "hosts/db1", None).await;
    assert_eq!(v["data"]["applied_index"], json!(second), "{v}");
    assert_eq!(v["data"]["state_index"], json!(second), "{v}");
    assert_eq!(
        v["data"]["drift"],
        json!({ "paths": [repaired], "time": when })
    );

    // An acknowledgement without drift (as older hostd sends) keeps the
    // last drift; a path that is not one is refused.
    s.clock.advance(60);
    let (st, _) = ack(json!({ "index": second })).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, v) = s.root("GET", "hosts/db1", None).await;
    assert_eq!(v["data"]["drift"]["time"], json!(when), "{v}");
    let (st, v) = ack(json!({ "index": second, "drift": ["relative/path"] })).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap()
            .contains("not an absolute path"),
        "{v}"
    );
}

/// The audit trail filters by time, through `sys/audit-log`'s since and
/// until: RFC 3339 or a browser's datetime-local value (UTC); a bad time
/// or a window that ends before it starts is a 400 that says why, shown
/// beside the form.
#[tokio::test]
async fn the_audit_trail_filters_by_time_and_says_what_is_wrong_with_a_bad_time() {
    audit_time_filter(gatepass_tests::inproc::Backend::Sqlite).await;
}

/// The window is a query on the stored copy: on PostgreSQL too.
#[tokio::test]
async fn the_audit_trail_filters_by_time_on_postgres() {
    audit_time_filter(gatepass_tests::inproc::Backend::Postgres).await;
}

async fn audit_time_filter(backend: gatepass_tests::inproc::Backend) {
    let s = &gatepass_tests::inproc::Server::start(backend).await;
    let write = |name: &'static str| async move {
        let (st, v) = s
            .root(
                "POST",
                &format!("sys/policies/acl/{name}"),
                Some(json!({ "policy": "path \"ssh/certs\" { capabilities = [\"list\"] }\n" })),
            )
            .await;
        assert!(st.is_success(), "{v}");
    };
    let t0 = s.clock.now();
    write("early").await;
    s.clock.advance(2 * 3600);
    write("late").await;
    let cookie = inproc_root_cookie(s).await;
    let cookie = cookie.as_str();
    let audit = move |query: String| async move {
        let (st, _, page) =
            inproc_ui(s, "GET", &format!("/ui/audit?{query}"), Some(cookie), &[]).await;
        (st, page)
    };
    let (early, late) = (
        "<code>sys/policies/acl/early</code>",
        "<code>sys/policies/acl/late</code>",
    );
    let hour_in = gatepass_server::clock::rfc3339(t0 + 3600);
    // A datetime-local value: minutes, no zone (UTC).
    let local = &hour_in[..16];
    let (st, page) = audit(format!("since={local}")).await;
    assert_eq!(st, StatusCode::OK, "{page}");
    assert!(page.contains(late) && !page.contains(early), "{page}");
    assert!(page.contains(&format!("value=\"{local}\"")), "{page}");
    let (st, page) = audit(format!("until={hour_in}&path=sys/policies")).await;
    assert_eq!(st, StatusCode::OK, "{page}");
    assert!(page.contains(early) && !page.contains(late), "{page}");
    let (_, page) = audit(String::new()).await;
    assert!(page.contains(early) && page.contains(late), "{page}");

    // Bad values: said beside the form, which keeps them for fixing.
    let (st, page) = audit("since=yesterday".into()).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{page}");
    let error = element_text(&page, "filter-error");
    assert!(
        error.contains("since") && error.contains("yesterday") && error.contains("RFC 3339"),
        "{error}"
    );
    assert!(page.contains("value=\"yesterday\""), "{page}");
    assert!(!page.contains(early), "{page}");
    let (st, page) = audit(format!(
        "since={}&until={}",
        gatepass_server::clock::rfc3339(t0 + 60),
        gatepass_server::clock::rfc3339(t0)
    ))
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{page}");
    assert!(
        element_text(&page, "filter-error").contains("is after until"),
        "{page}"
    );

    // The same filter and the same error through the API.
    let (st, v) = s
        .root("GET", &format!("sys/audit-log?since={}", t0 + 3600), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let lines: Vec<&str> = v["data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["line"].as_str())
        .collect();
    assert!(lines.iter().any(|l| l.contains("sys/policies/acl/late")));
    assert!(!lines.iter().any(|l| l.contains("sys/policies/acl/early")));
    let (st, v) = s.root("GET", "sys/audit-log?until=soon", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["errors"][0].as_str().unwrap().contains("until"), "{v}");
}

/// Enrolls host `db1` with a join token made from `join` (its settings);
/// the host's token.
async fn enroll_db1(
    s: &gatepass_tests::inproc::Server,
    dir: &std::path::Path,
    join: Value,
) -> String {
    let (_, join) = s.root("POST", "hosts/join-tokens", Some(join)).await;
    let (_, host_key) = keypair(dir, "h", "ed25519", None);
    let (st, enrolled) = s
        .call(
            "POST",
            "hosts/enroll",
            None,
            Some(json!({ "join_token": join["data"]["join_token"], "hostname": "db1", "host_keys": [host_key.trim()] })),
        )
        .await;
    assert!(st.is_success(), "{enrolled}");
    enrolled["data"]["host_token"].as_str().unwrap().to_string()
}
