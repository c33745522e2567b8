//! TLS: the dev server's self-signed CA and certificate, and loading the
//! operator's certificate for `serve`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::error::{Error, Result};

pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// rustls needs one process-wide crypto provider; ring builds everywhere
/// without extra tools.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn rc(e: rcgen::Error) -> Error {
    Error::internal(format!("certificate generation failed: {e}"))
}

/// Makes (or reuses) `<dir>/ca.pem`, `server.pem`, `server.key`: a CA and a
/// server certificate for localhost, 127.0.0.1 and ::1 signed by it, so that
/// clients can pin `ca.pem`.
pub fn dev_certificates(dir: &Path) -> Result<TlsFiles> {
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    if files.ca.exists() && files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    crate::private::create_dir(dir)?;
    let ca_key = KeyPair::generate().map_err(rc)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "gatepass dev CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(rc)?;

    let leaf_key = KeyPair::generate().map_err(rc)?;
    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(rc)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "gatepass dev server");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf = params.signed_by(&leaf_key, &ca_cert, &ca_key).map_err(rc)?;

    write_file(&files.key, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(
        &files.cert,
        format!("{}{}", leaf.pem(), ca_cert.pem()).as_bytes(),
        0o644,
    )?;
    write_file(&files.ca, ca_cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

/// Writes a whole file through a temp file and rename, so a crash never
/// leaves half a key behind.
pub fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .ok_or_else(|| Error::internal(format!("{} has no parent folder", path.display())))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.write_all(content)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| Error::Io(e.error))?;
    Ok(())
}

pub async fn rustls_config(
    cert: &Path,
    key: &Path,
) -> Result<axum_server::tls_rustls::RustlsConfig> {
    install_crypto_provider();
    check_pem_files(cert, key)?;
    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|e| {
            Error::internal(format!(
                "cannot load TLS certificate {} / key {}: {e}",
                cert.display(),
                key.display()
            ))
        })
}

/// Says which file is wrong, and how, where rustls's own errors would not:
/// an empty certificate file reads "peer sent no certificates", and a
/// certificate given as the key "private key format not supported".
fn check_pem_files(cert: &Path, key: &Path) -> Result<()> {
    use rustls::pki_types::pem::{self, PemObject};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let unreadable = |path: &Path, e: pem::Error| match e {
        pem::Error::Io(e) => Error::internal(format!("cannot read {}: {e}", path.display())),
        other => Error::internal(format!("{} is not PEM: {other}", path.display())),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| unreadable(cert, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| unreadable(cert, e))?;
    if certs.is_empty() {
        return Err(Error::internal(format!(
            "the TLS certificate file {} holds no certificate (a PEM \"BEGIN CERTIFICATE\" block)",
            cert.display()
        )));
    }
    let encrypted = std::fs::read_to_string(key)
        .is_ok_and(|t| t.contains("ENCRYPTED PRIVATE KEY") || t.contains("Proc-Type: 4,ENCRYPTED"));
    if encrypted {
        return Err(Error::internal(format!(
            "the TLS key file {} is encrypted: the server needs it unencrypted (openssl pkey -in KEY -out KEY.plain), readable by the server's user only",
            key.display()
        )));
    }
    match PrivateKeyDer::from_pem_file(key) {
        Ok(_) => Ok(()),
        Err(pem::Error::NoItemsFound) => Err(Error::internal(format!(
            "the TLS key file {} holds no private key (a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)",
            key.display()
        ))),
        Err(e) => Err(unreadable(key, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each wrong file is named, with what it lacks.
    #[tokio::test]
    async fn a_certificate_or_key_file_without_one_is_named() {
        let d = tempfile::tempdir().unwrap();
        let (cert, key, empty) = (
            d.path().join("c.pem"),
            d.path().join("k.pem"),
            d.path().join("e.pem"),
        );
        let made = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "ed25519", "-nodes", "-subj", "/CN=t", "-days", "1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        std::fs::write(&empty, "").unwrap();
        let encrypted = d.path().join("enc.pem");
        let made = std::process::Command::new("openssl")
            .args(["pkey", "-aes256", "-passout", "pass:secret", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&encrypted)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        assert!(rustls_config(&cert, &key).await.is_ok());
        for (c, k, says) in [
            (&empty, &key, "e.pem holds no certificate"),
            (&cert, &empty, "e.pem holds no private key"),
            (&key, &cert, "k.pem holds no certificate"),
            (&cert, &d.path().join("missing.pem"), "cannot read"),
            (&cert, &encrypted, "is encrypted"),
        ] {
            let e = rustls_config(c, k).await.err().unwrap();
            assert!(e.to_string().contains(says), "{e:?}");
        }
    }
}
