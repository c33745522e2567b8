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
