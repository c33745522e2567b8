//! Certificate issuance: every check a role asks for, then the signature.
//! Vault's rules for principals, TTLs, extensions, critical options and key
//! IDs, plus gatepass's constraints on critical option values.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use ssh_key::certificate::{Builder, CertType};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, Certificate, EcdsaCurve, HashAlg, PrivateKey, PublicKey, Signature};

use super::issuers::Issuer;
use super::principal::{
    self, check_key_id, check_option, critical_option_signable, unknown_critical_option,
    OptionKind, Principal,
};
use super::roles::{normalize_key_type, Role};
use crate::error::{Error, Result};
use crate::identity::template::Identity;
use crate::mounts::TtlLimits;
use crate::request::Fields;

/// Who asked, for identity and key ID templates and the inventory.
#[derive(Clone, Debug, Default)]
pub struct Requester {
    pub display_name: String,
    pub meta: BTreeMap<String, String>,
    /// The person's identity entity, for tokens from an OIDC or JWT login.
    pub entity: Option<std::sync::Arc<crate::identity::entity::Entity>>,
}

/// What the client asked for (`sign` and `issue` share it).
pub struct SignInput {
    pub public_key: PublicKey,
    pub cert_type: CertType,
    pub valid_principals: Vec<Principal>,
    pub ttl: Option<i64>,
    pub key_id: Option<String>,
    pub critical_options: BTreeMap<String, String>,
    pub extensions: BTreeMap<String, String>,
}

pub fn parse_public_key(text: &str) -> Result<PublicKey> {
    let t = text.trim();
    if t.contains("-cert-v01@openssh.com") {
        return Err(Error::invalid(
            "public_key is a certificate; send the plain public key",
        ));
    }
    PublicKey::from_openssh(t).map_err(|_| {
        Error::invalid(
            "failed to parse public_key as an OpenSSH public key (\"ssh-ed25519 AAAA… comment\")",
        )
    })
}

fn option_map(f: &Fields, field: &str, kind: OptionKind) -> Result<BTreeMap<String, String>> {
    let m = f.str_map(field)?.unwrap_or_default();
    for (k, v) in &m {
        check_option(kind, field, k, v)?;
    }
    Ok(m)
}

/// Reads Vault's sign/issue fields (the key itself is passed in).
pub fn input_from_fields(f: &Fields, public_key: PublicKey) -> Result<SignInput> {
    let cert_type = f
        .choice(
            "cert_type",
            &[("user", CertType::User), ("host", CertType::Host)],
        )?
        .unwrap_or(CertType::User);
    let key_id = f.str("key_id")?.filter(|s| !s.is_empty());
    if let Some(k) = &key_id {
        check_key_id(k)?;
    }
    Ok(SignInput {
        public_key,
        cert_type,
        valid_principals: principal::parse_list(&f.str("valid_principals")?.unwrap_or_default())?,
        ttl: f.duration("ttl")?.filter(|t| *t > 0),
        key_id,
        critical_options: option_map(f, "critical_options", OptionKind::Critical)?,
        extensions: option_map(f, "extensions", OptionKind::Extension)?,
    })
}

/// Fills in a role's identity templates for the requester; None when one
/// cannot be filled in (the entry then allows nothing).
fn expand(template: &str, who: &Requester) -> Option<String> {
    let id = Identity::of_token(&who.display_name, &who.meta).with_entity(who.entity.as_deref());
    crate::identity::template::expand(template, &id)
}

/// Whether a role may sign a host certificate for this name.
pub fn host_principal_allowed(role: &Role, p: &str) -> bool {
    host_allowed(role, &role.allowed_domains, p)
}

fn host_allowed(role: &Role, allowed: &[String], p: &str) -> bool {
    allowed.iter().any(|d| {
        if d == "*" {
            return true;
        }
        if let Some(base) = d.strip_prefix("*.") {
            return p.len() > base.len() + 1 && p.ends_with(&format!(".{base}"));
        }
        (role.allow_bare_domains && p == d)
            || (role.allow_subdomains && p.ends_with(&format!(".{d}")))
    })
}

/// Vault's principal rules: the requested principals, else the default user,
/// else none only when the role allows empty principals (CVE-2024-7594).
fn principals(role: &Role, input: &SignInput, who: &Requester) -> Result<Vec<Principal>> {
    let user = input.cert_type == CertType::User;
    let default = if user {
        if role.default_user_template {
            expand(&role.default_user, who).unwrap_or_default()
        } else {
            role.default_user.clone()
        }
    } else {
        String::new()
    };
    let allowed: Vec<String> = if user {
        role.allowed_users
            .iter()
            .filter_map(|u| {
                if role.allowed_users_template {
                    expand(u, who)
                } else {
                    Some(u.clone())
                }
            })
            .collect()
    } else {
        role.allowed_domains.clone()
    };
    // The default user is asked for as if the caller had: it passes the
    // same checks (Vault: it "must also be in allowed_users").
    let requested = if input.valid_principals.is_empty() && !default.is_empty() {
        vec![Principal::new(&default)?]
    } else {
        input.valid_principals.clone()
    };
    if requested.is_empty() {
        if role.allow_empty_principals {
            return Ok(vec![]);
        }
        return Err(Error::invalid("empty valid principals not allowed by role"));
    }
    if allowed.is_empty() {
        return Err(Error::invalid(
            "role is not configured to allow any principals",
        ));
    }
    // Any user only for a `*` the role holds as written: one a template
    // expanded to (from a login's metadata or claims) is a name like others.
    let any_user = user && role.allowed_users.iter().any(|u| u == "*");
    for p in &requested {
        let ok = if user {
            any_user || allowed.iter().any(|a| a != "*" && a == p.as_str())
        } else {
            host_allowed(role, &allowed, p.as_str())
        };
        if !ok {
            return Err(Error::invalid(format!(
                "{p} is not a valid value for valid_principals"
            )));
        }
    }
    Ok(requested)
}

/// The role's TTLs, and where it sets none its mount's (`limits`), as
/// Vault's ssh engine takes them.
fn ttl(role: &Role, input: &SignInput, limits: TtlLimits) -> Result<i64> {
    let max = if role.max_ttl > 0 {
        role.max_ttl
    } else {
        limits.max
    };
    match input.ttl {
        Some(t) if t > max => Err(Error::invalid(format!(
            "ttl is larger than maximum allowed {max}"
        ))),
        Some(t) => Ok(t),
        None => Ok(if role.ttl > 0 {
            role.ttl.min(max)
        } else {
            limits.default.min(max)
        }),
    }
}

fn key_bits(k: &KeyData) -> u32 {
    match k {
        KeyData::Rsa(r) => {
            let n = r.n.as_positive_bytes().unwrap_or(&[]);
            let lead = n.first().map(|b| 8 - b.leading_zeros()).unwrap_or(0);
            (n.len().saturating_sub(1) as u32) * 8 + lead
        }
        KeyData::Ecdsa(e) => match e.curve() {
            EcdsaCurve::NistP256 => 256,
            EcdsaCurve::NistP384 => 384,
            EcdsaCurve::NistP521 => 521,
        },
        _ => 256,
    }
}

fn check_key(role: &Role, key: &PublicKey) -> Result<()> {
    let alg = key.algorithm();
    let kt = normalize_key_type(alg.as_str())
        .ok_or_else(|| Error::invalid(format!("key type {} is not supported", alg.as_str())))?;
    let bits = key_bits(key.key_data());
    if kt == "rsa" && bits < 2048 {
        return Err(Error::invalid(format!(
            "RSA keys must have at least 2048 bits; this one has {bits}"
        )));
    }
    if role.allowed_user_key_lengths.is_empty() {
        return Ok(());
    }
    let sizes = role.allowed_user_key_lengths.get(kt).ok_or_else(|| {
        Error::invalid(format!("key type {} is not allowed by role", alg.as_str()))
    })?;
    let ok = match sizes.as_slice() {
        [] | [0] => true,
        [min] if kt == "rsa" => bits >= *min,
        list => list.contains(&bits),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "key is of an invalid size: {bits} bits"
        )))
    }
}

fn options(
    what: &str,
    requested: &BTreeMap<String, String>,
    allowed: &[String],
    defaults: &BTreeMap<String, String>,
    empty_allows_any: bool,
) -> Result<BTreeMap<String, String>> {
    if requested.is_empty() {
        return Ok(defaults.clone());
    }
    let any = allowed.iter().any(|a| a == "*") || (empty_allows_any && allowed.is_empty());
    if !any {
        let bad: Vec<&String> = requested.keys().filter(|k| !allowed.contains(k)).collect();
        if !bad.is_empty() {
            return Err(Error::invalid(format!(
                "{what} not on allowed list: {bad:?}"
            )));
        }
    }
    Ok(requested.clone())
}

/// gatepass's constraints on critical option values, beyond Vault's names.
/// A role that limits an option's values requires the option on every
/// user certificate: one without it would be free of the limit (a shell
/// where only a command was allowed).
fn check_option_values(
    role: &Role,
    cert_type: CertType,
    opts: &BTreeMap<String, String>,
) -> Result<()> {
    if cert_type == CertType::User {
        for (name, limited) in [
            ("source-address", !role.allowed_source_addresses.is_empty()),
            ("force-command", !role.allowed_force_commands.is_empty()),
        ] {
            if limited && !opts.contains_key(name) {
                return Err(Error::invalid(format!(
                    "the role limits {name}, so a certificate must carry it: set it in \
                     critical_options (or the role's default_critical_options)"
                )));
            }
        }
    }
    if let Some(v) = opts.get("source-address") {
        if !role.allowed_source_addresses.is_empty() {
            for net in principal::source_addresses(v)? {
                if !role
                    .allowed_source_addresses
                    .iter()
                    .any(|a| a.contains(&net))
                {
                    return Err(Error::invalid(format!(
                        "source-address {net} is outside the role's allowed_source_addresses"
                    )));
                }
            }
        }
    }
    if let Some(v) = opts.get("force-command") {
        if !role.allowed_force_commands.is_empty() && !role.allowed_force_commands.contains(v) {
            return Err(Error::invalid(
                "force-command is not one of the role's allowed_force_commands",
            ));
        }
    }
    Ok(())
}

pub fn public_key_hash(key: &PublicKey) -> String {
    hex::encode(Sha256::digest(key.to_bytes().unwrap_or_default()))
}

fn key_id(role: &Role, input: &SignInput, who: &Requester) -> Result<String> {
    if let Some(k) = &input.key_id {
        if !role.allow_user_key_ids {
            return Err(Error::invalid("setting key_id is not allowed by role"));
        }
        return Ok(k.clone());
    }
    let format = if role.key_id_format.is_empty() {
        "gatepass-{{token_display_name}}-{{public_key_hash}}"
    } else {
        role.key_id_format.as_str()
    };
    let id = format
        .replace("{{role_name}}", &role.name)
        .replace("{{token_display_name}}", &who.display_name)
        .replace("{{public_key_hash}}", &public_key_hash(&input.public_key));
    check_key_id(&id)?;
    Ok(id)
}

/// Checks the request against the role and signs. `serial` comes from the
/// caller, which makes sure it is unique in the mount.
pub fn sign(
    role: &Role,
    issuer: &Issuer,
    input: &SignInput,
    who: &Requester,
    limits: TtlLimits,
    now: i64,
    serial: u64,
) -> Result<Certificate> {
    match input.cert_type {
        CertType::User if !role.allow_user_certificates => {
            return Err(Error::invalid("cert_type 'user' is not allowed by role"))
        }
        CertType::Host if !role.allow_host_certificates => {
            return Err(Error::invalid("cert_type 'host' is not allowed by role"))
        }
        _ => {}
    }
    check_key(role, &input.public_key)?;
    let principals = principals(role, input, who)?;
    let ttl = ttl(role, input, limits)?;
    let key_id = key_id(role, input, who)?;
    let critical = options(
        "critical options",
        &input.critical_options,
        &role.allowed_critical_options,
        &role.default_critical_options,
        true,
    )?;
    check_option_values(role, input.cert_type, &critical)?;
    // Role defaults pass the same checks at role write; roles stored before
    // those checks existed are held to them here.
    for (k, v) in &critical {
        if !critical_option_signable(&role.allowed_critical_options, k) {
            return Err(unknown_critical_option("critical_options", k));
        }
        check_option(OptionKind::Critical, "critical_options", k, v)?;
    }
    let extensions = match input.cert_type {
        CertType::User => options(
            "extensions",
            &input.extensions,
            &role.allowed_extensions,
            &role.default_extensions,
            false,
        )?,
        CertType::Host if !input.extensions.is_empty() => {
            return Err(Error::invalid("host certificates carry no extensions"))
        }
        CertType::Host => BTreeMap::new(),
    };
    for (k, v) in &extensions {
        check_option(OptionKind::Extension, "extensions", k, v)?;
    }

    let valid_after = (now - role.not_before_duration).max(0) as u64;
    let valid_before = (now + ttl) as u64;
    let ssh = |e: ssh_key::Error| Error::invalid(format!("cannot build certificate: {e}"));
    // The nonce keeps the signed bytes unpredictable; the thread's
    // generator (a CSPRNG seeded from the OS) saves a `getrandom` call per
    // certificate.
    let mut b = Builder::new_with_random_nonce(
        &mut rand::thread_rng(),
        input.public_key.key_data().clone(),
        valid_after,
        valid_before,
    )
    .map_err(ssh)?;
    b.serial(serial).map_err(ssh)?;
    b.cert_type(input.cert_type).map_err(ssh)?;
    b.key_id(key_id).map_err(ssh)?;
    if principals.is_empty() {
        b.all_principals_valid().map_err(ssh)?;
    }
    for p in &principals {
        b.valid_principal(p.as_str()).map_err(ssh)?;
    }
    for (k, v) in &critical {
        b.critical_option(k.as_str(), v.as_str()).map_err(ssh)?;
    }
    for (k, v) in &extensions {
        b.extension(k.as_str(), v.as_str()).map_err(ssh)?;
    }
    let signed = match &*signer(issuer)? {
        CaSigner::Rsa(ca) => {
            let hash = if role.algorithm_signer == "rsa-sha2-512" {
                HashAlg::Sha512
            } else {
                HashAlg::Sha256
            };
            b.sign(&RsaCa { hash, ..ca.clone() })
        }
        CaSigner::Ed25519(ca) => b.sign(ca),
        CaSigner::Plain(ca) => b.sign(ca),
    };
    signed.map_err(|e| Error::internal(format!("signing failed: {e}")))
}

enum CaSigner {
    Plain(PrivateKey),
    Ed25519(Ed25519Ca),
    Rsa(RsaCa),
}

/// ssh-key 0.6 rebuilds the ed25519 signing key (a SHA-512 and a scalar
/// multiplication) on every signature, as much work as the signature
/// itself; this keeps it built, in AWS-LC, whose signature takes about
/// 60% of ed25519-dalek's time (the signature is deterministic: the same
/// key and message give the same bytes either way).
struct Ed25519Ca {
    key: aws_lc_rs::signature::Ed25519KeyPair,
    public: KeyData,
}

impl signature::Signer<Signature> for Ed25519Ca {
    fn try_sign(&self, msg: &[u8]) -> signature::Result<Signature> {
        Signature::new(Algorithm::Ed25519, self.key.sign(msg).as_ref().to_vec())
            .map_err(|_| signature::Error::new())
    }
}

impl From<&Ed25519Ca> for KeyData {
    fn from(ca: &Ed25519Ca) -> KeyData {
        ca.public.clone()
    }
}

/// Parsed CA keys by issuer ID (IDs are never reused and an issuer's key
/// never changes), so that signing does not parse the key every time.
fn signer(issuer: &Issuer) -> Result<std::sync::Arc<CaSigner>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static SIGNERS: OnceLock<Mutex<HashMap<String, Arc<CaSigner>>>> = OnceLock::new();
    let map = SIGNERS.get_or_init(Default::default);
    if let Some(s) = map
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&issuer.id)
    {
        return Ok(s.clone());
    }
    let key = issuer.signing_key()?;
    let s = Arc::new(match key.key_data() {
        ssh_key::private::KeypairData::Rsa(kp) => CaSigner::Rsa(RsaCa::new(kp, HashAlg::Sha256)?),
        ssh_key::private::KeypairData::Ed25519(kp) => CaSigner::Ed25519(Ed25519Ca {
            key: aws_lc_rs::signature::Ed25519KeyPair::from_seed_and_public_key(
                kp.private.as_ref(),
                kp.public.as_ref(),
            )
            .map_err(|e| Error::internal(format!("ed25519 CA key invalid: {e}")))?,
            public: KeyData::Ed25519(kp.public),
        }),
        _ => CaSigner::Plain(key),
    });
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    if m.len() > 1024 {
        m.clear();
    }
    m.insert(issuer.id.clone(), s.clone());
    Ok(s)
}

/// RSA CA signing done here rather than by ssh-key 0.6, whose RSA signer
/// builds the private key from the wrong primes (fails with rsa ≥ 0.9.10)
/// and only offers rsa-sha2-512; this one also honours `algorithm_signer`.
#[derive(Clone)]
struct RsaCa {
    key: rsa::RsaPrivateKey,
    public: KeyData,
    hash: HashAlg,
}

impl RsaCa {
    fn new(kp: &ssh_key::private::RsaKeypair, hash: HashAlg) -> Result<RsaCa> {
        let big = |m: &ssh_key::Mpint| {
            m.as_positive_bytes()
                .map(rsa::BigUint::from_bytes_be)
                .ok_or_else(|| Error::internal("RSA CA key has a malformed number"))
        };
        let mut key = rsa::RsaPrivateKey::from_components(
            big(&kp.public.n)?,
            big(&kp.public.e)?,
            big(&kp.private.d)?,
            vec![big(&kp.private.p)?, big(&kp.private.q)?],
        )
        .map_err(|e| Error::internal(format!("RSA CA key invalid: {e}")))?;
        key.precompute()
            .map_err(|e| Error::internal(format!("RSA CA key invalid: {e}")))?;
        Ok(RsaCa {
            key,
            public: KeyData::Rsa(kp.public.clone()),
            hash,
        })
    }
}

impl signature::Signer<Signature> for RsaCa {
    fn try_sign(&self, msg: &[u8]) -> signature::Result<Signature> {
        use rsa::signature::SignatureEncoding;
        let bytes = match self.hash {
            HashAlg::Sha512 => rsa::pkcs1v15::SigningKey::<sha2::Sha512>::new(self.key.clone())
                .try_sign(msg)?
                .to_vec(),
            _ => rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(self.key.clone())
                .try_sign(msg)?
                .to_vec(),
        };
        Signature::new(
            Algorithm::Rsa {
                hash: Some(self.hash),
            },
            bytes,
        )
        .map_err(|_| signature::Error::new())
    }
}

impl From<&RsaCa> for KeyData {
    fn from(ca: &RsaCa) -> KeyData {
        ca.public.clone()
    }
}

/// Generates a key pair for `issue/<role>` (Vault: `key_type` rsa, ec or
/// ed25519; `key_bits`).
pub fn generate_user_key(key_type: &str, key_bits: i64) -> Result<PrivateKey> {
    let kt = match key_type {
        "" => "rsa",
        other => other,
    };
    let bits = match (kt, key_bits) {
        ("rsa" | "ssh-rsa", 0) => 2048,
        (_, b) => b,
    };
    super::issuers::generate_key(kt, bits)
}

/// An issued private key in the PEM form Vault's `ssh/issue` gives: RSA
/// as PKCS#1 (`BEGIN RSA PRIVATE KEY`), ECDSA as SEC1 (`BEGIN EC PRIVATE
/// KEY`), Ed25519 in OpenSSH's own form (which has no other). OpenSSH reads
/// all of them; other tools that take Vault's answer may read only these.
pub fn vault_private_key_pem(k: &PrivateKey) -> Result<String> {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use sec1::der::asn1::ObjectIdentifier;
    use sec1::der::pem::LineEnding as Pem;
    use sec1::der::EncodePem;
    use ssh_key::private::{EcdsaKeypair, KeypairData};
    let bad = |e: &dyn std::fmt::Display| Error::internal(format!("private key encoding: {e}"));
    let ec = |curve: &str, private: &[u8], public: &[u8]| -> Result<String> {
        // SEC1 with the curve's name in it (RFC 5915), as Vault and
        // OpenSSL write it: without it OpenSSH cannot tell the curve.
        let key = sec1::EcPrivateKey {
            private_key: private,
            parameters: Some(sec1::EcParameters::NamedCurve(
                ObjectIdentifier::new(curve).map_err(|e| bad(&e))?,
            )),
            public_key: Some(public),
        };
        key.to_pem(Pem::LF).map_err(|e| bad(&e))
    };
    Ok(match k.key_data() {
        KeypairData::Rsa(kp) => {
            // From the components here: ssh-key 0.6's own conversion takes
            // the prime p twice for q, which rsa refuses.
            let int = |m: &ssh_key::Mpint| -> Result<rsa::BigUint> {
                m.as_positive_bytes()
                    .map(rsa::BigUint::from_bytes_be)
                    .ok_or_else(|| bad(&"a negative RSA component"))
            };
            rsa::RsaPrivateKey::from_components(
                int(&kp.public.n)?,
                int(&kp.public.e)?,
                int(&kp.private.d)?,
                vec![int(&kp.private.p)?, int(&kp.private.q)?],
            )
            .map_err(|e| bad(&e))?
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .map_err(|e| bad(&e))?
            .to_string()
        }
        KeypairData::Ecdsa(EcdsaKeypair::NistP256 { private, public }) => {
            ec("1.2.840.10045.3.1.7", private.as_slice(), public.as_bytes())?
        }
        KeypairData::Ecdsa(EcdsaKeypair::NistP384 { private, public }) => {
            ec("1.3.132.0.34", private.as_slice(), public.as_bytes())?
        }
        _ => k
            .to_openssh(ssh_key::LineEnding::LF)
            .map_err(|e| bad(&e))?
            .to_string(),
    })
}

pub fn private_key_type(k: &PrivateKey) -> &'static str {
    match k.algorithm() {
        Algorithm::Rsa { .. } => "rsa",
        Algorithm::Ecdsa { .. } => "ec",
        Algorithm::Ed25519 => "ed25519",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let who = Requester {
            display_name: "userpass-alice".into(),
            meta: BTreeMap::from([("username".to_string(), "alice".to_string())]),
            entity: None,
        };
        assert_eq!(
            expand("{{identity.entity.aliases.auth_userpass_1234.name}}", &who).as_deref(),
            Some("alice")
        );
        assert_eq!(
            expand("{{token_display_name}}", &who).as_deref(),
            Some("userpass-alice")
        );
        assert_eq!(expand("{{unknown}}", &who), None);
    }

    /// A `*` that a template expanded to (a login name or claim of `*`)
    /// allows the user `*` only; a `*` the role holds as written, anyone.
    #[test]
    fn only_a_star_written_in_the_role_allows_any_user() {
        let who = Requester {
            display_name: "userpass-star".into(),
            meta: BTreeMap::from([("username".to_string(), "*".to_string())]),
            entity: None,
        };
        let f = |v: serde_json::Value| Fields::new(v.as_object().unwrap().clone());
        let key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519).unwrap();
        let input = |principals: &str| {
            input_from_fields(
                &f(serde_json::json!({"valid_principals": principals})),
                key.public_key().clone(),
            )
            .unwrap()
        };
        let templated = super::super::roles::from_fields(
            "own",
            &f(serde_json::json!({
                "key_type": "ca", "allow_user_certificates": true,
                "allowed_users": "{{identity.entity.aliases.auth_userpass_1234.name}}",
                "allowed_users_template": true
            })),
        )
        .unwrap();
        assert!(principals(&templated, &input("root"), &who).is_err());
        let star = super::super::roles::from_fields(
            "any",
            &f(serde_json::json!({
                "key_type": "ca", "allow_user_certificates": true,
                "allowed_users": "*"
            })),
        )
        .unwrap();
        let got = principals(&star, &input("root"), &who).unwrap();
        assert_eq!(got[0].as_str(), "root");
    }

    #[test]
    fn an_ed25519_ca_signs_what_ed25519_dalek_would_and_the_certificate_validates() {
        use signature::Signer as _;
        let ca = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519).unwrap();
        let issuer = Issuer {
            id: "issuer-ed25519-test".into(),
            name: "default".into(),
            public_key: ca.public_key().to_openssh().unwrap(),
            private_key: ca.to_openssh(ssh_key::LineEnding::LF).unwrap().to_string(),
            created: 0,
        };
        let f = |v: serde_json::Value| Fields::new(v.as_object().unwrap().clone());
        let role = super::super::roles::from_fields(
            "r",
            &f(serde_json::json!({
                "key_type": "ca", "allow_user_certificates": true,
                "allowed_users": "*", "ttl": "1h"
            })),
        )
        .unwrap();
        let user = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519).unwrap();
        let input = input_from_fields(
            &f(serde_json::json!({"valid_principals": "alice"})),
            user.public_key().clone(),
        )
        .unwrap();
        let now = 1_767_225_600;
        let cert = sign(
            &role,
            &issuer,
            &input,
            &Requester::default(),
            TtlLimits::default(),
            now,
            7,
        )
        .unwrap();

        let fingerprint = ca.public_key().fingerprint(HashAlg::Sha256);
        cert.validate_at(now as u64, [&fingerprint]).unwrap();
        assert_eq!(cert.valid_principals(), ["alice"]);
        // ed25519 is deterministic: the reference implementation gives the
        // same signature over the same signed bytes.
        let ssh_key::private::KeypairData::Ed25519(kp) = ca.key_data() else {
            unreachable!()
        };
        let reference = ed25519_dalek::SigningKey::from_bytes(&kp.private.to_bytes());
        // The signed bytes are the certificate's encoding without its
        // signature field: a string holding the strings "ssh-ed25519" and
        // the 64-byte signature (4 + 4 + 11 + 4 + 64 bytes).
        let encoded = cert.to_bytes().unwrap();
        let signed = &encoded[..encoded.len() - 87];
        assert_eq!(&encoded[encoded.len() - 64..], cert.signature().as_bytes());
        assert_eq!(
            cert.signature().as_bytes(),
            reference.sign(signed).to_bytes().as_slice()
        );
    }
}
