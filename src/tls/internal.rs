//! The internal issuer (`issuer = "internal"`): a local certificate
//! authority, created once in a data directory (its key mode 0600, the
//! directory 0700), that issues short-lived certificates for the configured
//! names with `rcgen` and renews them before they expire. Its certificate's
//! path is logged at start, so that a user can choose to trust it; nothing
//! here touches the system's trust store.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::certs::CertError;

/// How long an issued certificate is valid, and how long before its end
/// it is renewed.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 86_400);
pub const RENEW_BEFORE: Duration = Duration::from_secs(3 * 86_400);
/// How often the certificates are looked at for renewal.
pub const RENEW_CHECK_EVERY: Duration = Duration::from_secs(300);
/// How long the CA itself is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
const CA_NAME: &str = "Gatehouse local CA";

pub struct InternalCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> CertError {
    CertError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The CA's parameters: the same every time, so that a key read back from
/// disk makes the same issuer as the one that signed the CA certificate.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "Gatehouse");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that
/// a reader sees the old file or the new one; `mode` for a new file.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| file_err(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

impl InternalCa {
    /// The CA kept in `dir`, created there (and logged) if it is not yet.
    pub fn open(dir: &Path) -> Result<InternalCa, CertError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| file_err(dir, e))?;
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => KeyPair::from_pem(&pem).map_err(|e| file_err(&key_path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate().map_err(|e| CertError::Parse(e.to_string()))?;
                let mut params = ca_params();
                let now = time::OffsetDateTime::now_utc();
                params.not_before = now - time::Duration::days(1);
                params.not_after = now + CA_VALIDITY;
                let cert = params
                    .self_signed(&key)
                    .map_err(|e| CertError::Parse(e.to_string()))?;
                write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
                write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
                tracing::info!(ca = %cert_path.display(), "internal CA created");
                key
            }
            Err(e) => return Err(file_err(&key_path, e)),
        };
        if !cert_path.exists() {
            return Err(file_err(&cert_path, "missing (its key is there)"));
        }
        tracing::info!(
            ca = %cert_path.display(),
            "internal CA: certificates for issuer = \"internal\" are signed by it; trust this file to trust them"
        );
        Ok(InternalCa {
            dir: dir.to_owned(),
            issuer: Issuer::new(ca_params(), key),
        })
    }

    /// Where the certificate for `label` and its key are kept.
    pub fn paths(dir: &Path, label: &str) -> (PathBuf, PathBuf) {
        super::certs::acme_paths(dir, label)
    }

    /// Issues a certificate for `hosts`, valid `LEAF_VALIDITY`, into the
    /// files of `label`.
    pub fn issue(&self, label: &str, hosts: &[String]) -> Result<(PathBuf, PathBuf), CertError> {
        let mut params =
            CertificateParams::new(hosts.to_vec()).map_err(|e| CertError::Parse(e.to_string()))?;
        params
            .distinguished_name
            .push(DnType::CommonName, hosts.first().map_or("localhost", |h| h));
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + LEAF_VALIDITY;
        let key = KeyPair::generate().map_err(|e| CertError::Parse(e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CertError::Parse(e.to_string()))?;
        let (cert_path, key_path) = Self::paths(&self.dir, label);
        write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
        tracing::info!(certificate = label, hosts = ?hosts, "internal CA issued a certificate");
        Ok((cert_path, key_path))
    }
}

/// A certificate expiring at `not_after` (Unix seconds) is due for renewal.
pub fn due(not_after: i64) -> bool {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    not_after - now < RENEW_BEFORE.as_secs() as i64
}
