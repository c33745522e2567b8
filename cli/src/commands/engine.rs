//! The ssh secrets engine as the commands use it: its paths (`<mount>/<op>/
//! <role>`), reading its answers (certificates, CA keys, refusals), and the
//! one flow of signing a key made in memory for a login.

use serde_json::{json, Value};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, Certificate, LineEnding, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use super::signals::{interruptible, Signals};
use super::Ctx;
use crate::error::{Error, Result};

/// `<mount>/<op>/<role>`, refusing names that would reach another path.
pub(super) fn engine_path(mount: &str, op: &str, role: &str) -> Result<String> {
    let mount = mount_path(mount)?;
    if role.is_empty()
        || role.starts_with('.')
        || role
            .chars()
            .any(|c| matches!(c, '/' | '?' | '#' | '%') || c.is_whitespace())
    {
        return Err(Error::Usage(format!("{role:?} is not a valid role name")));
    }
    Ok(format!("{mount}/{op}/{role}"))
}

pub(super) fn mount_path(mount: &str) -> Result<String> {
    let m = mount.trim_matches('/');
    let bad = m.is_empty()
        || m.split('/').any(|s| s.is_empty() || s == "." || s == "..")
        || m.chars()
            .any(|c| matches!(c, '?' | '#' | '%') || c.is_whitespace());
    if bad {
        return Err(Error::Usage(format!("{mount:?} is not a valid mount path")));
    }
    Ok(m.to_string())
}

/// The certificate in a `sign` or `issue` answer.
pub(super) fn signed_key(resp: &Value, action: &str) -> Result<String> {
    gatepass_api::data_of::<gatepass_api::ssh::SignedKey>(resp)
        .map(|d| d.signed_key)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| Error::Local(format!("{action}: the server's answer holds no signed_key")))
}

pub(super) fn parse_cert(text: &str, action: &str) -> Result<Certificate> {
    Certificate::from_openssh(text.trim()).map_err(|e| {
        Error::Local(format!(
            "{action}: the server's certificate cannot be read: {e}"
        ))
    })
}

/// The certificate of a sign answer, checked to be for `key`: a server
/// that signed another key must not get that certificate used (or put
/// into the agent) for this one.
pub(super) fn signed_cert(
    resp: &Value,
    action: &str,
    key: &KeyData,
) -> Result<(String, Certificate)> {
    let signed = signed_key(resp, action)?;
    let cert = parse_cert(&signed, action)?;
    if cert.public_key() != key {
        return Err(Error::Local(format!(
            "{action}: the server returned a certificate for another key"
        )));
    }
    Ok((signed, cert))
}

/// A key made in memory for one login, and its certificate.
pub(super) struct Ephemeral {
    /// The private key in OpenSSH form.
    pub pem: Zeroizing<String>,
    pub cert: Certificate,
    /// The certificate line, with the key's comment.
    pub cert_text: String,
}

/// Makes a new ed25519 key in memory and has `<mount>/sign/<role>` sign it
/// as a user certificate for `user` (`connect` in ca mode, `proxy`). Key
/// and certificate carry the comment `gatepass:<mount>/<role>:<serial>`,
/// which `ssh-add -l` shows and `proxy` looks for; `mount` is as
/// [`mount_path`] gives it. With `signals`, a signal interrupts the request.
pub(super) async fn sign_ephemeral(
    ctx: &Ctx,
    mount: &str,
    role: &str,
    user: &str,
    ttl: Option<&str>,
    signals: Option<&mut Signals>,
) -> Result<Ephemeral> {
    let mut key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
        .map_err(|e| Error::Local(format!("cannot generate a key: {e}")))?;
    let path = engine_path(mount, "sign", role)?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| Error::Local(format!("cannot encode the public key: {e}")))?;
    let mut body = serde_json::Map::new();
    body.insert("public_key".into(), json!(public));
    body.insert("valid_principals".into(), json!(user));
    body.insert("cert_type".into(), json!("user"));
    if let Some(t) = ttl {
        body.insert("ttl".into(), json!(t));
    }
    let action = format!("signing a new key for {user} with {path}");
    let call = ctx.call("POST", &path, Some(&body), &action);
    let resp = match signals {
        Some(signals) => interruptible(signals, call).await?,
        None => call.await?,
    }
    .ok_or_else(|| Error::Local(format!("{action}: empty answer from the server")))?;
    let (signed, cert) = signed_cert(&resp, &action, key.public_key().key_data())?;
    let comment = format!("gatepass:{mount}/{role}:{}", serial(&resp, &cert));
    key.set_comment(comment.clone());
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| Error::Local(format!("cannot encode the private key: {e}")))?;
    Ok(Ephemeral {
        pem,
        cert_text: with_comment(&signed, &comment),
        cert,
    })
}

/// The serial as the server wrote it (hex), else from the certificate.
pub(super) fn serial(resp: &Value, cert: &Certificate) -> String {
    match resp.pointer("/data/serial_number").and_then(Value::as_str) {
        Some(s) => s.to_string(),
        None => format!("{:016x}", cert.serial()),
    }
}

/// A certificate line with our comment in place of the server's (none).
pub(super) fn with_comment(signed: &str, comment: &str) -> String {
    let mut fields = signed.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(alg), Some(blob)) => format!("{alg} {blob} {comment}\n"),
        _ => ensure_newline(signed),
    }
}

pub(super) fn ensure_newline(s: &str) -> String {
    format!("{}\n", s.trim_end())
}

/// `get_text` hands back a refusal's raw body, which is Vault's
/// `{"errors": […]}`; unwrapped so the message reads like the others.
pub(super) fn unwrap_json_errors(e: gatepass_api::Error) -> gatepass_api::Error {
    match e {
        gatepass_api::Error::Api { status, errors } => {
            let errors = match errors.as_slice() {
                [one] => serde_json::from_str::<Value>(one)
                    .ok()
                    .and_then(|v| v.get("errors").cloned())
                    .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
                    .unwrap_or(errors),
                _ => errors,
            };
            gatepass_api::Error::Api { status, errors }
        }
        other => other,
    }
}

/// The CA keys, one per line, each checked to be an OpenSSH public key and
/// written back as `type base64 [comment]`.
/// The CA public keys a mount serves (`<mount>/public_key`, every issuer),
/// as `ssh-… AAAA…` lines.
pub(super) async fn ca_public_keys(ctx: &Ctx, mount: &str) -> Result<Vec<String>> {
    let path = format!("{}/public_key", mount_path(mount)?);
    let action = format!("reading the CA's public key from {path}");
    let text = ctx
        .client
        .get_text(&path)
        .await
        .map_err(|e| ctx.api_error(unwrap_json_errors(e), &action))?;
    parse_ca_keys(&text, &action)
}

pub(super) fn parse_ca_keys(text: &str, action: &str) -> Result<Vec<String>> {
    let keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            PublicKey::from_openssh(l)
                .and_then(|k| k.to_openssh())
                .map_err(|_| {
                    Error::Local(format!(
                        "{action}: the server sent something that is not an SSH public key"
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    if keys.is_empty() {
        return Err(Error::Local(format!("{action}: the server sent no key")));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_in_the_mount() {
        assert_eq!(engine_path("/ssh/", "sign", "dev").unwrap(), "ssh/sign/dev");
        assert_eq!(
            engine_path("team/ssh", "issue", "r").unwrap(),
            "team/ssh/issue/r"
        );
        for (m, r) in [
            ("ssh", "a/b"),
            ("ssh", ""),
            ("ssh", ".."),
            ("ssh", "a?b"),
            ("", "r"),
            ("a/../b", "r"),
            ("a b", "r"),
        ] {
            assert!(engine_path(m, "sign", r).is_err(), "{m} {r}");
        }
    }

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn ca_keys_one_per_line() {
        let keys = parse_ca_keys(&format!("{KEY}\n\n{KEY} c\n"), "x").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(parse_ca_keys("", "x").is_err());
        assert!(parse_ca_keys("not a key\n", "x").is_err());
    }

    #[test]
    fn json_errors_unwrapped() {
        let e = gatepass_api::Error::Api {
            status: 404,
            errors: vec![r#"{"errors":["no CA key configured on this mount"]}"#.into()],
        };
        match unwrap_json_errors(e) {
            gatepass_api::Error::Api { errors, .. } => {
                assert_eq!(errors, vec!["no CA key configured on this mount"])
            }
            other => panic!("{other:?}"),
        }
    }

    /// A certificate signed by a throwaway CA for `key`, as a sign answer.
    fn answer_for(key: &PublicKey) -> Value {
        let mut rng = rand::rngs::OsRng;
        let ca = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();
        let mut b =
            ssh_key::certificate::Builder::new_with_random_nonce(&mut rng, key, 0, 4_000_000_000)
                .unwrap();
        b.serial(7).unwrap();
        b.valid_principal("alice").unwrap();
        let cert = b.sign(&ca).unwrap();
        json!({"data": {"serial_number": "7", "signed_key": cert.to_openssh().unwrap()}})
    }

    #[test]
    fn a_certificate_for_another_key_is_refused() {
        let mut rng = rand::rngs::OsRng;
        let mine = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();
        let other = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();
        let resp = answer_for(mine.public_key());
        let (text, cert) = signed_cert(&resp, "signing", mine.public_key().key_data()).unwrap();
        assert!(text.starts_with("ssh-ed25519-cert-v01@openssh.com "));
        assert_eq!(cert.serial(), 7);
        let e = signed_cert(&resp, "signing", other.public_key().key_data()).unwrap_err();
        assert!(
            e.to_string()
                .contains("signing: the server returned a certificate for another key"),
            "{e}"
        );
        assert!(signed_cert(
            &json!({"data": {}}),
            "signing",
            mine.public_key().key_data()
        )
        .is_err());
    }
}
