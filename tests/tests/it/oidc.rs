//! Single sign-on against a real OpenID provider (node's oidc-provider on
//! loopback, tests/oidc/): the browser login (authorization code flow with
//! PKCE) gets a person a token with their group's policies and
//! certificates for their own name only; CI logs in with the provider's
//! JWTs; key rotation; and every bad input refused with nothing issued.

use axum::http::StatusCode;
use gatepass_tests::inproc::{Backend, Server};
use gatepass_tests::oidc::{Provider, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI};
use gatepass_tests::ssh::keypair;
use serde_json::{json, Value};

/// The provider signs with the real time: the server's manual clock is
/// moved from its fixed start to now.
fn to_real_time(s: &Server) {
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    s.clock.advance(now - s.clock.now());
}

async fn ok(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (st, v) = s.root(method, path, Some(body)).await;
    assert!(st.is_success(), "{method} {path}: {st} {v}");
    v
}

async fn issued_tokens(s: &Server) -> usize {
    let (_, v) = s.root("LIST", "auth/token/accessors", None).await;
    v["data"]["keys"].as_array().map_or(0, |k| k.len())
}

/// An `oidc` mount at `oidc/` for the provider, with a role for people
/// and the groups `ops` (may sign for themselves) and `dev` (may not).
/// Returns the mount's accessor.
async fn setup_oidc(s: &Server, p: &Provider) -> String {
    ok(s, "POST", "sys/auth/oidc", json!({"type": "oidc"})).await;
    let auths = ok(s, "GET", "sys/auth", json!(null)).await;
    let accessor = auths["data"]["oidc/"]["accessor"]
        .as_str()
        .unwrap()
        .to_string();
    ok(
        s,
        "POST",
        "auth/oidc/config",
        json!({
            "oidc_discovery_url": p.issuer,
            "oidc_client_id": CLIENT_ID,
            "oidc_client_secret": CLIENT_SECRET,
            "default_role": "person",
        }),
    )
    .await;
    ok(
        s,
        "POST",
        "auth/oidc/role/person",
        json!({
            "role_type": "oidc",
            "allowed_redirect_uris": [REDIRECT_URI],
            "user_claim": "preferred_username",
            "groups_claim": "groups",
            "oidc_scopes": ["profile", "email", "groups"],
            "claim_mappings": {"email": "email"},
            "token_policies": ["people"],
            "token_ttl": "1h",
        }),
    )
    .await;
    // The SSH side: a CA; a role whose users are the signer's own name;
    // a role with no such limit, which the policy's template guards.
    ok(s, "POST", "ssh/config/ca", json!({})).await;
    let own = format!("{{{{identity.entity.aliases.{accessor}.name}}}}");
    ok(
        s,
        "POST",
        "ssh/roles/own",
        json!({"key_type": "ca", "allow_user_certificates": true,
               "allowed_users": own, "allowed_users_template": true,
               "default_user": own, "default_user_template": true}),
    )
    .await;
    ok(
        s,
        "POST",
        "ssh/roles/any",
        json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*"}),
    )
    .await;
    let policy = format!(
        r#"
path "ssh/sign/own" {{ capabilities = ["update"] }}
path "ssh/sign/any" {{
  capabilities = ["update"]
  allowed_parameters = {{
    "valid_principals" = ["{own}"]
    "*" = []
  }}
}}"#
    );
    ok(
        s,
        "POST",
        "sys/policies/acl/ssh-ops",
        json!({ "policy": policy }),
    )
    .await;
    ok(
        s,
        "POST",
        "sys/policies/acl/dev-read",
        json!({"policy": r#"path "ssh/roles" { capabilities = ["list"] }"#}),
    )
    .await;
    for (group, idp_group, policy) in [
        ("ops-team", "ops", "ssh-ops"),
        ("dev-team", "dev", "dev-read"),
    ] {
        let g = ok(
            s,
            "POST",
            "identity/group",
            json!({"name": group, "type": "external", "policies": [policy]}),
        )
        .await;
        ok(
            s,
            "POST",
            "identity/group-alias",
            json!({"name": idp_group, "mount_accessor": accessor, "canonical_id": g["data"]["id"]}),
        )
        .await;
    }
    accessor
}

async fn auth_url(s: &Server, redirect_uri: &str) -> (StatusCode, Value) {
    s.call(
        "POST",
        "auth/oidc/oidc/auth_url",
        None,
        Some(json!({"role": "person", "redirect_uri": redirect_uri})),
    )
    .await
}

/// The query the CLI's listener passes on to the callback.
fn callback_query(back: &reqwest::Url) -> String {
    back.query_pairs()
        .filter(|(k, _)| k == "state" || k == "code")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A person's browser login, to the redirect back from the provider.
async fn browser(s: &Server, p: &Provider, who: &str) -> reqwest::Url {
    let (st, v) = auth_url(s, REDIRECT_URI).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let url = v["data"]["auth_url"].as_str().unwrap();
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    assert!(url.contains("nonce="), "{url}");
    p.browser_login(url, who).await
}

async fn callback(s: &Server, query: &str) -> (StatusCode, Value) {
    s.call(
        "GET",
        &format!("auth/oidc/oidc/callback?{query}"),
        None,
        None,
    )
    .await
}

async fn sign(
    s: &Server,
    token: &str,
    role: &str,
    principals: Option<&str>,
) -> (StatusCode, Value) {
    let (_, pk) = keypair(
        s.dir.path(),
        &format!("k-{}", uuid::Uuid::new_v4()),
        "ed25519",
        None,
    );
    let mut body = json!({ "public_key": pk });
    if let Some(p) = principals {
        body["valid_principals"] = json!(p);
    }
    s.call("POST", &format!("ssh/sign/{role}"), Some(token), Some(body))
        .await
}

fn principals_of(v: &Value) -> Vec<String> {
    let cert =
        ssh_key::Certificate::from_openssh(v["data"]["signed_key"].as_str().unwrap()).unwrap();
    cert.valid_principals().to_vec()
}

#[tokio::test]
async fn browser_login_signs_certificates_for_the_persons_own_name_only() {
    let p = Provider::start();
    let s = Server::start(Backend::Sqlite).await;
    to_real_time(&s);
    let accessor = setup_oidc(&s, &p).await;

    // Alice signs in at the provider; the callback gets her a token.
    let back = browser(&s, &p, "alice").await;
    let (st, v) = callback(&s, &callback_query(&back)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let auth = &v["auth"];
    let alice = auth["client_token"].as_str().unwrap().to_string();
    let policies: Vec<&str> = auth["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(policies.contains(&"people"), "{policies:?}");
    assert!(
        policies.contains(&"ssh-ops"),
        "her group's policy: {policies:?}"
    );
    assert!(!policies.contains(&"dev-read"), "{policies:?}");
    assert_eq!(auth["metadata"]["email"], "alice@example.com");
    let entity_id = auth["entity_id"].as_str().unwrap().to_string();
    assert!(!entity_id.is_empty());

    // Her entity, with her alias at this mount.
    let (st, e) = s
        .root("GET", &format!("identity/entity/id/{entity_id}"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{e}");
    assert_eq!(e["data"]["aliases"][0]["mount_accessor"], accessor.as_str());
    assert_eq!(e["data"]["aliases"][0]["name"], "alice");
    // Named as Vault names the entities it makes, not after her login
    // name: any login mount's users choose theirs, and the first to log
    // in as "alice" anywhere would otherwise be `{{identity.entity.name}}`
    // "alice".
    let made_name = format!("entity_{}", &entity_id[..8]);
    assert_eq!(e["data"]["name"], made_name.as_str(), "{e}");
    let (st, _) = s.root("GET", "identity/entity/name/alice", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, by_name) = s
        .root("GET", &format!("identity/entity/name/{made_name}"), None)
        .await;
    assert_eq!(by_name["data"]["id"], entity_id.as_str());
    // The administrator names her.
    ok(
        &s,
        "POST",
        &format!("identity/entity/id/{entity_id}"),
        json!({"name": "alice"}),
    )
    .await;
    let (_, by_name) = s.root("GET", "identity/entity/name/alice", None).await;
    assert_eq!(by_name["data"]["id"], entity_id.as_str());
    assert_eq!(by_name["data"]["name"], "alice");
    let (st, _) = s
        .root("GET", &format!("identity/entity/name/{made_name}"), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "the old name is let go");
    let (_, looked) = s
        .call("GET", "auth/token/lookup-self", Some(&alice), None)
        .await;
    assert_eq!(looked["data"]["entity_id"], entity_id.as_str());

    // Her own name: as the role's default user and when asked for.
    let (st, v) = sign(&s, &alice, "own", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(principals_of(&v), ["alice"]);
    let (st, v) = sign(&s, &alice, "any", Some("alice")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(principals_of(&v), ["alice"]);
    // Bob's name: refused by the policy's template, and by the role's.
    let (st, v) = sign(&s, &alice, "any", Some("bob")).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, v) = sign(&s, &alice, "own", Some("bob")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["errors"][0].as_str().unwrap().contains("bob"), "{v}");

    // Bob is in the dev group: his token has its policy and cannot sign.
    // (His callback comes as a POST, which Vault's callback takes too.)
    let back = browser(&s, &p, "bob").await;
    let param = |name: &str| {
        back.query_pairs()
            .find(|(k, _)| k == name)
            .unwrap()
            .1
            .to_string()
    };
    let (st, v) = s
        .call(
            "POST",
            "auth/oidc/oidc/callback",
            None,
            Some(json!({"state": param("state"), "code": param("code")})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let bob = v["auth"]["client_token"].as_str().unwrap().to_string();
    let policies = v["auth"]["policies"].to_string();
    assert!(
        policies.contains("dev-read") && !policies.contains("ssh-ops"),
        "{policies}"
    );
    assert_ne!(v["auth"]["entity_id"], entity_id.as_str());
    assert_eq!(sign(&s, &bob, "own", None).await.0, StatusCode::FORBIDDEN);
    // Her name is hers: bob's entity cannot be given it.
    let bob_entity = v["auth"]["entity_id"].as_str().unwrap();
    let (st, e) = s
        .root(
            "POST",
            &format!("identity/entity/id/{bob_entity}"),
            Some(json!({"name": "alice"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    let (_, by_name) = s.root("GET", "identity/entity/name/alice", None).await;
    assert_eq!(by_name["data"]["id"], entity_id.as_str());

    // Alice again: the same entity.
    let back = browser(&s, &p, "alice").await;
    let (st, v) = callback(&s, &callback_query(&back)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["auth"]["entity_id"], entity_id.as_str());

    // The client secret is never shown.
    let (_, cfg) = s.root("GET", "auth/oidc/config", None).await;
    assert_eq!(cfg["data"]["oidc_client_id"], CLIENT_ID);
    assert!(!cfg.to_string().contains(CLIENT_SECRET), "{cfg}");
}

/// A `jwt` mount at `jwt/` trusting the provider, with a role for CI
/// jobs of the `infra/` projects' main branch.
/// Anyone may start a browser login, and each is kept until it ends: one
/// address starting them by the hundred is refused past 30 in ten
/// minutes, and the others still sign in (the mount's room for logins in
/// progress is not filled by one client).
#[tokio::test]
async fn one_address_cannot_fill_the_logins_in_progress() {
    let p = Provider::start();
    let s = Server::start(Backend::Sqlite).await;
    to_real_time(&s);
    setup_oidc(&s, &p).await;
    for _ in 0..30 {
        let (st, v) = auth_url(&s, REDIRECT_URI).await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let (st, v) = auth_url(&s, REDIRECT_URI).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(
        error_of(&v).contains("too many single sign-on logins started from this address"),
        "{v}"
    );
    // Someone else, at another address, signs in.
    let body = json!({"role": "person", "redirect_uri": REDIRECT_URI}).to_string();
    let elsewhere = "192.0.2.7:40000".parse().unwrap();
    let (st, v) = s
        .call_from(
            elsewhere,
            "POST",
            "auth/oidc/oidc/auth_url",
            None,
            body.into_bytes(),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let back = p
        .browser_login(v["data"]["auth_url"].as_str().unwrap(), "alice")
        .await;
    let (st, v) = callback(&s, &callback_query(&back)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

async fn setup_jwt(s: &Server, p: &Provider) {
    ok(s, "POST", "sys/auth/jwt", json!({"type": "jwt"})).await;
    ok(
        s,
        "POST",
        "auth/jwt/config",
        json!({"oidc_discovery_url": p.issuer, "default_role": "ci"}),
    )
    .await;
    ok(
        s,
        "POST",
        "auth/jwt/role/ci",
        json!({
            "role_type": "jwt",
            "bound_audiences": ["gatepass"],
            "user_claim": "sub",
            "bound_claims_type": "glob",
            "bound_claims": {"project_path": "infra/*", "ref": ["refs/heads/main", "refs/tags/v*"]},
            "claim_mappings": {"project_path": "project"},
            "token_policies": ["ci"],
        }),
    )
    .await;
}

async fn jwt_login(s: &Server, jwt: &str) -> (StatusCode, Value) {
    s.call(
        "POST",
        "auth/jwt/login",
        None,
        Some(json!({"role": "ci", "jwt": jwt})),
    )
    .await
}

#[tokio::test]
async fn ci_logs_in_with_the_providers_jwt_and_bound_claims_are_checked() {
    let p = Provider::start();
    let s = Server::start(Backend::Sqlite).await;
    to_real_time(&s);
    setup_jwt(&s, &p).await;

    let jwt = p.client_credentials("ci-main", None).await;
    let (st, v) = jwt_login(&s, &jwt).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["auth"]["policies"].to_string().contains("\"ci\""), "{v}");
    assert_eq!(v["auth"]["metadata"]["project"], "infra/deploy");
    assert_eq!(v["auth"]["metadata"]["role"], "ci");

    // Another project's job does not match the bound claims.
    let before = issued_tokens(&s).await;
    let jwt = p.client_credentials("ci-fork", None).await;
    let (st, v) = jwt_login(&s, &jwt).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["errors"][0].as_str().unwrap().contains("project_path"),
        "{v}"
    );
    assert_eq!(issued_tokens(&s).await, before);

    // A second mount at another path, trusting the key set by its URL and
    // the issuer by name, with the role bound to one subject.
    ok(&s, "POST", "sys/auth/ci/jwks", json!({"type": "jwt"})).await;
    let config =
        |issuer: String| json!({"jwks_url": format!("{}/jwks", p.issuer), "bound_issuer": issuer});
    ok(&s, "POST", "auth/ci/jwks/config", config(p.issuer.clone())).await;
    ok(
        &s,
        "POST",
        "auth/ci/jwks/role/main",
        json!({"role_type": "jwt", "bound_audiences": "gatepass", "bound_subject": "ci-main", "token_policies": "ci"}),
    )
    .await;
    let login = |jwt: String| {
        let s = &s;
        async move {
            s.call(
                "POST",
                "auth/ci/jwks/login",
                None,
                Some(json!({"role": "main", "jwt": jwt})),
            )
            .await
        }
    };
    let (st, v) = login(p.client_credentials("ci-main", None).await).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["auth"]["metadata"]["role"], "main");
    let from_second = v["auth"]["client_token"].as_str().unwrap().to_string();
    let (st, v) = jwt_login(&s, &p.client_credentials("ci-main", None).await).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let from_first = v["auth"]["client_token"].as_str().unwrap().to_string();
    let (st, v) = login(p.client_credentials("ci-fork", None).await).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["errors"][0].as_str().unwrap().contains("bound_subject"),
        "{v}"
    );
    // A bound claim's string is one value, commas and all (as in Vault):
    // "infra/deploy, infra/docs" is not a list that "infra/deploy" is in.
    ok(
        &s,
        "POST",
        "auth/ci/jwks/role/literal",
        json!({"role_type": "jwt", "bound_audiences": "gatepass", "token_policies": "ci",
               "bound_claims": {"project_path": "infra/deploy, infra/docs"}}),
    )
    .await;
    let (_, v) = s.root("GET", "auth/ci/jwks/role/literal", None).await;
    assert_eq!(
        v["data"]["bound_claims"]["project_path"],
        json!(["infra/deploy, infra/docs"]),
        "{v}"
    );
    let (st, v) = s
        .call(
            "POST",
            "auth/ci/jwks/login",
            None,
            Some(json!({"role": "literal", "jwt": p.client_credentials("ci-main", None).await})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    // Tokens from an issuer other than the one bound are refused.
    ok(
        &s,
        "POST",
        "auth/ci/jwks/config",
        config("https://elsewhere.example".into()),
    )
    .await;
    let (st, v) = login(p.client_credentials("ci-main", None).await).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["errors"][0].as_str().unwrap().contains("issuer"), "{v}");

    // The method disabled: the tokens its logins gave stop working, as in
    // Vault, and the other mount's do not.
    let (st, _) = s
        .call("GET", "auth/token/lookup-self", Some(&from_second), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = s.root("DELETE", "sys/auth/ci/jwks", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let (st, v) = s
        .call("GET", "auth/token/lookup-self", Some(&from_second), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, v) = s
        .call("GET", "auth/token/lookup-self", Some(&from_first), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn a_jwt_roles_token_max_ttl_bounds_the_token_and_its_renewals() {
    let p = Provider::start();
    let s = Server::start(Backend::Sqlite).await;
    to_real_time(&s);
    setup_jwt(&s, &p).await;
    let role = |ttl: Value| {
        let mut r = json!({
            "role_type": "jwt",
            "bound_audiences": ["gatepass"],
            "user_claim": "sub",
            "token_policies": ["ci"],
            "token_max_ttl": "1h",
        });
        if !ttl.is_null() {
            r["token_ttl"] = ttl;
        }
        r
    };
    // Without a token_ttl the token gets the maximum, not the server's
    // default of 32 days.
    ok(&s, "POST", "auth/jwt/role/ci", role(Value::Null)).await;
    let jwt = p.client_credentials("ci-main", None).await;
    let (st, v) = jwt_login(&s, &jwt).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["auth"]["lease_duration"], 3600, "{v}");
    // With one, renewals stop at the maximum too.
    ok(&s, "POST", "auth/jwt/role/ci", role(json!("30m"))).await;
    let (st, v) = jwt_login(&s, &jwt).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["auth"]["lease_duration"], 1800, "{v}");
    let token = v["auth"]["client_token"].as_str().unwrap().to_string();
    let (st, v) = s
        .call(
            "POST",
            "auth/token/renew-self",
            Some(&token),
            Some(json!({"increment": "10h"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let ttl = v["auth"]["lease_duration"].as_i64().unwrap();
    assert!(ttl <= 3600, "renewed to {ttl} s: {v}");
}

#[tokio::test]
async fn logins_keep_working_when_the_provider_rotates_its_key() {
    // A CLI listener on another loopback port than the role names.
    let other_port = "http://127.0.0.1:18250/oidc/callback";
    let p = Provider::start_with(&[other_port]);
    let s = Server::start(Backend::Sqlite).await;
    to_real_time(&s);
    setup_jwt(&s, &p).await;
    setup_oidc(&s, &p).await;

    let (st, v) = jwt_login(&s, &p.client_credentials("ci-main", None).await).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let back = browser(&s, &p, "alice").await;
    assert_eq!(callback(&s, &callback_query(&back)).await.0, StatusCode::OK);

    let kid = p.rotate().await;
    s.clock.advance(5);
    let jwt = p.client_credentials("ci-main", None).await;
    let header = jsonwebtoken_header_kid(&jwt);
    assert_eq!(header, kid, "the new key signs");
    let (st, v) = jwt_login(&s, &jwt).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let back = browser(&s, &p, "alice").await;
    let (st, v) = callback(&s, &callback_query(&back)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // The role allows its loopback redirect URI on any port (RFC 8252).
    let (st, v) = auth_url(&s, other_port).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let back = p
        .browser_login(v["data"]["auth_url"].as_str().unwrap(), "bob")
        .await;
    assert!(back.as_str().starts_with(other_port), "{back}");
    let (st, v) = callback(&s, &callback_query(&back)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

/// A `jwt` mount that trusts PEM keys given in its config, without asking
/// the provider: a token signed by the key is accepted, one signed by a
/// key not in the list (after the provider's rotation) is refused.
#[tokio::test]
async fn jwt_validation_pubkeys_trusts_the_pem_keys_given_and_no_other() {
    let p = Provider::start();
    let s = Server::start(Backend::Sqlite).await;
    to_real_time(&s);
    let pem = p.signing_key_pem().await;
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    ok(&s, "POST", "sys/auth/jwt", json!({"type": "jwt"})).await;
    ok(
        &s,
        "POST",
        "auth/jwt/config",
        json!({"jwt_validation_pubkeys": [pem], "bound_issuer": p.issuer}),
    )
    .await;
    ok(
        &s,
        "POST",
        "auth/jwt/role/ci",
        json!({"role_type": "jwt", "bound_audiences": ["gatepass"], "user_claim": "sub",
               "bound_claims": {"ref": "refs/heads/main"}, "token_policies": ["ci"]}),
    )
    .await;
    let (st, v) = jwt_login(&s, &p.client_credentials("ci-main", None).await).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["auth"]["policies"].to_string().contains("\"ci\""), "{v}");

    let before = issued_tokens(&s).await;
    p.rotate().await;
    let (st, v) = jwt_login(&s, &p.client_credentials("ci-main", None).await).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("signature"), "{v}");
    assert_eq!(issued_tokens(&s).await, before);

    // Something that is not a PEM public key is refused at configuration.
    let (st, v) = s
        .root(
            "POST",
            "auth/jwt/config",
            Some(json!({"jwt_validation_pubkeys": ["not a key"]})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}

fn jsonwebtoken_header_kid(jwt: &str) -> String {
    use base64::Engine;
    let head = jwt.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["kid"].as_str().unwrap().to_string()
}

fn error_of(v: &Value) -> String {
    v["errors"][0].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_issued_on_sqlite() {
    bad_input_is_refused_and_nothing_is_issued(Backend::Sqlite).await;
}

/// The state's one use is a storage operation: on PostgreSQL too.
#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_issued_on_postgres() {
    bad_input_is_refused_and_nothing_is_issued(Backend::Postgres).await;
}

async fn bad_input_is_refused_and_nothing_is_issued(backend: Backend) {
    let p = Provider::start();
    let s = Server::start(backend).await;
    setup_jwt(&s, &p).await;
    setup_oidc(&s, &p).await;
    let before = issued_tokens(&s).await;
    let refused = |st: StatusCode, v: &Value, words: &str| {
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        assert!(error_of(v).contains(words), "want {words:?}: {v}");
    };

    // Not valid yet: the server's clock is still before the token's iat.
    let jwt = p.client_credentials("ci-main", None).await;
    let (st, v) = jwt_login(&s, &jwt).await;
    refused(st, &v, "issued in the future");
    to_real_time(&s);

    // Not valid yet by its nbf, an hour ahead (beyond the leeways).
    let later = p.client_credentials("ci-later", None).await;
    let (st, v) = jwt_login(&s, &later).await;
    refused(st, &v, "not valid yet (nbf claim)");

    // Wrong audience.
    let other = p.client_credentials("ci-main", Some("urn:other")).await;
    let (st, v) = jwt_login(&s, &other).await;
    refused(st, &v, "audience");

    // Bad signatures: one changed, and claims changed under a good one.
    let (head, rest) = jwt.split_once('.').unwrap();
    let (body, sig) = rest.split_once('.').unwrap();
    let mut changed: Vec<char> = sig.chars().collect();
    changed[10] = if changed[10] == 'A' { 'B' } else { 'A' };
    let flipped = format!("{head}.{body}.{}", changed.into_iter().collect::<String>());
    let (st, v) = jwt_login(&s, &flipped).await;
    refused(st, &v, "signature");
    let fork = p.client_credentials("ci-fork", None).await;
    let fork_body = fork.split('.').nth(1).unwrap();
    let (st, v) = jwt_login(&s, &format!("{head}.{fork_body}.{sig}")).await;
    refused(st, &v, "signature");
    let (st, v) = jwt_login(&s, "not-a-jwt").await;
    refused(st, &v, "not a valid JWT");

    // Claims not matching bound_claims.
    let (st, v) = jwt_login(&s, &fork).await;
    refused(st, &v, "bound claim");

    // Redirect URI not allowed.
    let (st, v) = auth_url(&s, "http://evil.example/oidc/callback").await;
    refused(st, &v, "unauthorized redirect_uri");
    let (st, v) = auth_url(&s, "http://127.0.0.1:8250/elsewhere").await;
    refused(st, &v, "unauthorized redirect_uri");

    // Missing state, made-up state.
    let back = browser(&s, &p, "alice").await;
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .to_string();
    let (st, v) = callback(&s, &format!("code={code}")).await;
    refused(st, &v, "state");
    let (st, v) = callback(&s, &format!("state=made-up&code={code}")).await;
    refused(st, &v, "state");
    // Reused state: the first callback logs in, the second is refused.
    let (st, v) = callback(&s, &callback_query(&back)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let after_good = issued_tokens(&s).await;
    assert_eq!(after_good, before + 1);
    let (st, v) = callback(&s, &callback_query(&back)).await;
    refused(st, &v, "state");

    // A nonce other than the login's (the auth URL tampered with).
    let (_, v) = auth_url(&s, REDIRECT_URI).await;
    let url = reqwest::Url::parse(v["data"]["auth_url"].as_str().unwrap()).unwrap();
    let mut tampered = url.clone();
    tampered
        .query_pairs_mut()
        .clear()
        .extend_pairs(url.query_pairs().map(|(k, v)| {
            if k == "nonce" {
                (k, "evil-nonce".into())
            } else {
                (k, v)
            }
        }));
    let back = p.browser_login(tampered.as_str(), "alice").await;
    let (st, v) = callback(&s, &callback_query(&back)).await;
    refused(st, &v, "nonce");

    // A state older than its lifetime.
    let back = browser(&s, &p, "alice").await;
    s.clock.advance(601);
    let (st, v) = callback(&s, &callback_query(&back)).await;
    refused(st, &v, "state");

    // Expired: the token's exp (and the leeways) passed.
    let (st, v) = jwt_login(&s, &jwt).await;
    refused(st, &v, "expired");

    assert_eq!(
        issued_tokens(&s).await,
        after_good,
        "nothing else was issued"
    );

    // A discovery document that names another issuer is refused at
    // configuration (the same provider, reached by another name).
    let (st, v) = s
        .root(
            "POST",
            "auth/oidc/config",
            Some(json!({"oidc_discovery_url": p.issuer.replace("127.0.0.1", "localhost")})),
        )
        .await;
    refused(st, &v, "another issuer");
}

/// `gatepass login --method oidc` against a real `gatepass-server dev`: the
/// CLI listens on loopback, prints the provider's URL (skip_browser), the
/// person signs in there, the provider's redirect reaches the CLI, which
/// completes the login and saves a token with the person's policies.
#[tokio::test]
async fn gatepass_login_method_oidc_completes_through_the_browser() {
    use gatepass_tests::bin;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redirect = format!("http://127.0.0.1:{port}/oidc/callback");
    let p = Provider::start_with(&[&redirect]);
    // The role also maps the groups claim; this login does not use it.
    let server = dev_server_with_oidc(&p, &redirect).await;

    let home = tempfile::tempdir().unwrap();
    let mut cli = Command::new(bin("gatepass"));
    for v in gatepass_tests::CLI_AMBIENT_ENV {
        cli.env_remove(v);
    }
    let port_arg = format!("port={port}");
    let mut child = cli
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("GATEPASS_ADDR", &server.addr)
        .env("GATEPASS_CACERT", &server.cacert)
        .args(["login", "--method", "oidc", "listenaddress=127.0.0.1"])
        .args(["callbackhost=127.0.0.1", &port_arg, "skip_browser=true"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The URL it prints, indented on a line of its own.
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut printed = String::new();
    let auth_url = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the CLI printed no URL: {printed}"))
            .unwrap();
        printed += &line;
        printed.push('\n');
        if let Some(u) = line.trim().strip_prefix(&p.issuer) {
            break format!("{}{u}", p.issuer);
        }
    };
    assert!(
        printed.contains("Complete the login via your OIDC provider"),
        "{printed}"
    );

    // The person signs in; the provider sends the browser back to the CLI.
    let back = p.browser_login(&auth_url, "alice").await;
    assert!(back.as_str().starts_with(&redirect), "{back}");
    let page = reqwest::get(back).await.unwrap();
    assert!(page.status().is_success());
    assert!(page.text().await.unwrap().contains("Signed in"));

    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("Success! You are now authenticated"),
        "{stdout}"
    );
    assert!(stdout.contains("people"), "{stdout}");

    // The saved token is alice's: lookup-self through the CLI names her.
    let looked = Command::new(bin("gatepass"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("GATEPASS_ADDR", &server.addr)
        .env("GATEPASS_CACERT", &server.cacert)
        .args(["token", "lookup", "--format", "json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&looked.stdout).unwrap_or_else(|_| {
        panic!(
            "token lookup: {}{}",
            String::from_utf8_lossy(&looked.stdout),
            String::from_utf8_lossy(&looked.stderr)
        )
    });
    assert_eq!(v["data"]["meta"]["role"], "person", "{v}");
    assert!(
        v["data"]["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "people"),
        "{v}"
    );
    assert!(
        !v["data"]["entity_id"].as_str().unwrap_or("").is_empty(),
        "{v}"
    );
}

/// A person's loopback listener (as a CLI's): answers the provider's
/// redirect with a page and hands the test the query it came with.
async fn loopback_listener() -> (String, tokio::sync::oneshot::Receiver<reqwest::Url>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let origin = base.clone();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut chunk = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head).to_string();
            let target = text.split_whitespace().nth(1).unwrap_or("/").to_string();
            let page = "<html><body><h1 id=\"done\">Signed in</h1></body></html>";
            let _ = conn
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                        page.len()
                    )
                    .as_bytes(),
                )
                .await;
            if target.starts_with("/oidc/callback?") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(reqwest::Url::parse(&format!("{origin}{target}")).unwrap());
                }
            }
        }
    });
    (format!("{base}/oidc/callback"), rx)
}

/// Headless Chromium on the provider's own login and consent pages: the
/// person types their name and password, clicks, consents, and lands on
/// their loopback listener.
async fn chromium_login(b: &gatepass_tests::browser::Browser, auth_url: &str, who: &str) -> String {
    b.goto(auth_url).await;
    b.text("button[type=submit]").await;
    b.fill("input[name=login]", who).await;
    b.fill("input[name=password]", "correct horse").await;
    b.click("button[type=submit]").await;
    // The consent page: what the client asks for, and Continue.
    let consent = b.text("button[type=submit]").await;
    assert_eq!(consent, "Continue", "{}", b.source().await);
    b.click("button[type=submit]").await;
    b.text("#done").await
}

#[tokio::test]
async fn headless_chromium_signs_in_at_the_provider_and_the_person_signs_for_their_own_name() {
    use gatepass_tests::browser::{self, Browser};
    browser::require();
    let (redirect, back) = loopback_listener().await;
    let p = Provider::start_with(&[&redirect]);
    let s = Server::start(Backend::Sqlite).await;
    to_real_time(&s);
    setup_oidc(&s, &p).await;
    let before = issued_tokens(&s).await;

    // Alice asks for the provider's URL, her browser opens it.
    let (st, v) = auth_url(&s, &redirect).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let url = v["data"]["auth_url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&p.issuer), "{url}");
    let b = Browser::start().await;
    let shown = chromium_login(&b, &url, "alice").await;
    assert_eq!(shown, "Signed in");
    let back = back.await.unwrap();
    b.close().await;

    // Her listener passes code and state on: she has a token with her
    // group's policies.
    let (st, v) = callback(&s, &callback_query(&back)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(issued_tokens(&s).await, before + 1);
    let alice = v["auth"]["client_token"].as_str().unwrap().to_string();
    let policies = v["auth"]["policies"].to_string();
    assert!(
        policies.contains("\"ssh-ops\"") && policies.contains("\"people\""),
        "{policies}"
    );
    assert!(!policies.contains("dev-read"), "{policies}");
    assert_eq!(v["auth"]["metadata"]["email"], "alice@example.com");

    // Certificates for her own name; bob's is refused.
    let (st, v) = sign(&s, &alice, "own", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(principals_of(&v), ["alice"]);
    let (st, v) = sign(&s, &alice, "any", Some("alice")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(principals_of(&v), ["alice"]);
    let (st, v) = sign(&s, &alice, "any", Some("bob")).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, v) = sign(&s, &alice, "own", Some("bob")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}

/// `bao login -method=oidc` (OpenBao's own CLI, unchanged) against a real
/// `gatepass-server dev`: bao listens on loopback, prints the provider's
/// URL, the person signs in there, and bao saves a token whose lookup
/// shows the person's policies.
#[tokio::test]
async fn bao_login_method_oidc_works_against_gatepass_unchanged() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let bao = std::path::Path::new("/usr/local/bin/bao");
    assert!(bao.exists(), "bao is needed (tests/run installs it)");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // bao's listener and callback host default to localhost.
    let redirect = format!("http://localhost:{port}/oidc/callback");
    let p = Provider::start_with(&[&redirect]);
    let server = dev_server_with_oidc(&p, &redirect).await;

    let home = tempfile::tempdir().unwrap();
    let bao_cmd = || {
        let mut c = Command::new(bao);
        for v in gatepass_tests::CLI_AMBIENT_ENV {
            c.env_remove(v);
        }
        c.env("HOME", home.path())
            .env("VAULT_ADDR", &server.addr)
            .env("VAULT_CACERT", &server.cacert)
            .env("BAO_ADDR", &server.addr)
            .env("BAO_CACERT", &server.cacert);
        c
    };
    let mut child = bao_cmd()
        .args(["login", "-method=oidc", &format!("port={port}")])
        .arg("skip_browser=true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut printed = String::new();
    let auth_url = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "bao printed no URL: {printed}{}",
                String::from_utf8_lossy(&out.stdout)
            );
        };
        printed += &line;
        printed.push('\n');
        if let Some(u) = line.trim().strip_prefix(&p.issuer) {
            break format!("{}{u}", p.issuer);
        }
    };

    // The person signs in; the provider sends the browser back to bao.
    let back = p.browser_login(&auth_url, "alice").await;
    assert!(back.as_str().starts_with(&redirect), "{back}");
    let page = reqwest::get(back).await.unwrap();
    assert!(page.status().is_success(), "{page:?}");

    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}{stdout}");
    assert!(
        stdout.contains("Success! You are now authenticated"),
        "{stdout}"
    );

    // bao saved alice's token: its lookup shows her policies.
    let looked = bao_cmd()
        .args(["token", "lookup", "-format=json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&looked.stdout).unwrap_or_else(|_| {
        panic!(
            "bao token lookup: {}{}",
            String::from_utf8_lossy(&looked.stdout),
            String::from_utf8_lossy(&looked.stderr)
        )
    });
    assert!(
        v["data"]["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "people"),
        "{v}"
    );
    assert_eq!(v["data"]["meta"]["role"], "person", "{v}");
    assert!(
        !v["data"]["entity_id"].as_str().unwrap_or("").is_empty(),
        "{v}"
    );
}

/// A `gatepass-server dev` with an `oidc` mount for the provider whose
/// role `person` (the default) allows `redirect` and gives `people`.
async fn dev_server_with_oidc(p: &Provider, redirect: &str) -> gatepass_tests::DevServer {
    let server = gatepass_tests::DevServer::start();
    let admin = server.client();
    let call = |method: &'static str, path: &'static str, body: Value| {
        let admin = &admin;
        async move {
            let body = body.as_object().cloned();
            admin
                .request(method, path, body.as_ref())
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
        }
    };
    call("POST", "sys/auth/oidc", json!({"type": "oidc"})).await;
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
               "oidc_scopes": ["profile", "groups"],
               "token_policies": ["people"], "token_ttl": "1h"}),
    )
    .await;
    server
}

/// Headless Chromium approves (or aborts) a device login at the
/// provider's /device pages: the code is in the URL; the person confirms
/// it, signs in and consents.
async fn chromium_device_approval(
    b: &gatepass_tests::browser::Browser,
    url: &str,
    who: &str,
    approve: bool,
) -> String {
    b.goto(url).await;
    // The page posts the code by itself, then asks to confirm it.
    b.text("button[name=abort]").await;
    if !approve {
        b.click("button[name=abort]").await;
        return b.text("body").await;
    }
    b.click("button[autofocus]").await;
    b.text("input[name=login]").await;
    b.fill("input[name=login]", who).await;
    b.fill("input[name=password]", "correct horse").await;
    b.click("button[type=submit]").await;
    assert_eq!(b.text("button[type=submit]").await, "Continue");
    b.click("button[type=submit]").await;
    b.text("body").await
}

async fn device_poll(s: &Server, handle: &str) -> (StatusCode, Value) {
    s.call(
        "POST",
        "auth/oidc/oidc/device_poll",
        None,
        Some(json!({ "device_code": handle })),
    )
    .await
}

#[tokio::test]
async fn device_flow_logs_in_without_a_browser_and_denied_or_expired_codes_issue_nothing() {
    use gatepass_tests::browser::{self, Browser};
    browser::require();
    let p = Provider::start();
    let s = Server::start(Backend::Sqlite).await;
    to_real_time(&s);
    setup_oidc(&s, &p).await;
    let before = issued_tokens(&s).await;
    let refused = |st: StatusCode, v: &Value, words: &str| {
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        assert!(error_of(v).contains(words), "want {words:?}: {v}");
    };

    // The machine asks for a code (no token needed, the default role).
    let (st, v) = s
        .call("POST", "auth/oidc/oidc/device_code", None, Some(json!({})))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let d = &v["data"];
    let handle = d["device_code"].as_str().unwrap().to_string();
    let user_code = d["user_code"].as_str().unwrap().to_string();
    assert_eq!(d["verification_uri"], format!("{}/device", p.issuer));
    assert!(d["interval"].as_i64().unwrap() >= 1, "{v}");
    let complete = d["verification_uri_complete"].as_str().unwrap().to_string();
    assert!(complete.contains(&user_code), "{complete}");

    // Not approved yet; polling before the interval is told to slow down,
    // which adds 5 s to it.
    let interval = d["interval"].as_i64().unwrap();
    let (st, v) = device_poll(&s, &handle).await;
    refused(st, &v, "authorization_pending");
    let (st, v) = device_poll(&s, &handle).await;
    refused(st, &v, "slow_down");
    s.clock.advance(interval);
    let (st, v) = device_poll(&s, &handle).await;
    refused(st, &v, "slow_down");
    s.clock.advance(interval + 10);
    let (st, v) = device_poll(&s, &handle).await;
    refused(st, &v, "authorization_pending");
    assert_eq!(issued_tokens(&s).await, before);
    s.clock.advance(interval + 10);

    // Alice approves on her phone (here: Chromium); the next poll logs in.
    let b = Browser::start().await;
    let done = chromium_device_approval(&b, &complete, "alice", true).await;
    assert!(done.contains("Sign-in Success"), "{done}");
    let (st, v) = device_poll(&s, &handle).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(issued_tokens(&s).await, before + 1);
    let alice = v["auth"]["client_token"].as_str().unwrap().to_string();
    let policies = v["auth"]["policies"].to_string();
    assert!(policies.contains("\"ssh-ops\""), "{policies}");
    let (st, v) = sign(&s, &alice, "own", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(principals_of(&v), ["alice"]);
    // One login per code.
    let (st, v) = device_poll(&s, &handle).await;
    refused(st, &v, "expired or unknown device code");

    // Denied: the person aborts at the provider.
    let (_, v) = s
        .call(
            "POST",
            "auth/oidc/oidc/device_code",
            None,
            Some(json!({"role": "person"})),
        )
        .await;
    let handle = v["data"]["device_code"].as_str().unwrap().to_string();
    let complete = v["data"]["verification_uri_complete"]
        .as_str()
        .unwrap()
        .to_string();
    chromium_device_approval(&b, &complete, "bob", false).await;
    b.close().await;
    let (st, v) = device_poll(&s, &handle).await;
    refused(st, &v, "denied");
    let (st, v) = device_poll(&s, &handle).await;
    refused(st, &v, "expired or unknown device code");

    // Expired: the code's lifetime passed.
    let (_, v) = s
        .call("POST", "auth/oidc/oidc/device_code", None, Some(json!({})))
        .await;
    let handle = v["data"]["device_code"].as_str().unwrap().to_string();
    s.clock
        .advance(v["data"]["expires_in"].as_i64().unwrap() + 1);
    let (st, v) = device_poll(&s, &handle).await;
    refused(st, &v, "expired or unknown device code");
    // Made-up and missing handles.
    let (st, v) = device_poll(&s, "made-up").await;
    refused(st, &v, "expired or unknown device code");
    let (st, v) = s
        .call("POST", "auth/oidc/oidc/device_poll", None, Some(json!({})))
        .await;
    refused(st, &v, "expired or unknown device code");

    assert_eq!(
        issued_tokens(&s).await,
        before + 1,
        "nothing else was issued"
    );
}

/// `gatepass login --method oidc device=true` on a machine without a
/// browser: it prints the URL and the code, the person approves elsewhere,
/// and the CLI's polling ends with the token saved.
#[tokio::test]
async fn gatepass_login_device_true_completes_when_the_person_approves_elsewhere() {
    use gatepass_tests::bin;
    use gatepass_tests::browser::{self, Browser};
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    browser::require();
    let p = Provider::start();
    let server = dev_server_with_oidc(&p, REDIRECT_URI).await;
    let home = tempfile::tempdir().unwrap();
    let cli = || {
        let mut c = Command::new(bin("gatepass"));
        for v in gatepass_tests::CLI_AMBIENT_ENV {
            c.env_remove(v);
        }
        c.env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("GATEPASS_ADDR", &server.addr)
            .env("GATEPASS_CACERT", &server.cacert);
        c
    };
    let mut child = cli()
        .args(["login", "--method", "oidc", "device=true"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut printed = String::new();
    let (mut uri, mut code) = (None, None);
    while uri.is_none() || code.is_none() {
        let Some(Ok(line)) = lines.next() else {
            panic!("the CLI printed no URL and code: {printed}");
        };
        printed += &line;
        printed.push('\n');
        let t = line.trim();
        if t == format!("{}/device", p.issuer) {
            uri = Some(t.to_string());
        } else if uri.is_some() && !t.is_empty() && !t.contains(' ') {
            code = Some(t.to_string());
        }
    }
    let (uri, code) = (uri.unwrap(), code.unwrap());
    assert!(printed.contains("enter the code"), "{printed}");

    // The person types the code at the URL on another device.
    let b = Browser::start().await;
    b.goto(&uri).await;
    b.fill("input[name=user_code]", &code).await;
    b.click("button[type=submit]").await;
    b.text("button[name=abort]").await;
    b.click("button[autofocus]").await;
    b.fill("input[name=login]", "alice").await;
    b.fill("input[name=password]", "correct horse").await;
    b.click("button[type=submit]").await;
    b.click("button[type=submit]").await;
    assert!(b.text("body").await.contains("Sign-in Success"));
    b.close().await;

    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}{stdout}");
    assert!(
        stdout.contains("Success! You are now authenticated"),
        "{stdout}"
    );
    let looked = cli()
        .args(["token", "lookup", "--format", "json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&looked.stdout).unwrap();
    assert_eq!(v["data"]["meta"]["role"], "person", "{v}");
    assert_eq!(v["data"]["display_name"], "oidc-alice", "{v}");
}
