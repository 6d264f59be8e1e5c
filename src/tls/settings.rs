//! rustls settings built once from the config: per TLS listener the server
//! side (versions, ALPN, client-certificate verification, certificates from
//! the store), per route the client side towards its targets (roots,
//! client certificate, ALPN), and how TLS failures become end reasons.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::certs::{self, ACME_TLS_ALPN, CertError, CertStore, SniResolver};
use crate::config::{TlsListener, TlsVersion, UpstreamTls};

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("{0}: {1}")]
    Tls(String, rustls::Error),
    #[error("{0}: no usable CA certificate")]
    NoRoots(String),
}

fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static BOTH: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static ONLY_13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::V12 => &BOTH,
        TlsVersion::V13 => &ONLY_13,
    }
}

fn roots_from(path: &Path) -> Result<RootCertStore, SettingsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs::read_chain(path)? {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(SettingsError::NoRoots(path.display().to_string()));
    }
    Ok(roots)
}

fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    roots
}

/// The server side of a TLS listener.
pub fn server_config(
    listener: &TlsListener,
    store: &Arc<CertStore>,
) -> Result<Arc<ServerConfig>, SettingsError> {
    let provider = store.provider().clone();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(listener.min_version))
        .map_err(|e| SettingsError::Tls("protocol versions".into(), e))?;
    let builder = match &listener.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let roots = Arc::new(roots_from(&auth.ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| {
                SettingsError::Tls(
                    auth.ca.display().to_string(),
                    rustls::Error::General(e.to_string()),
                )
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver(store.clone())));
    config.alpn_protocols = listener.alpn.clone();
    config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    if !listener.session_resumption {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// The admin listener's TLS (`admin.tls`): its certificate, and with
/// `client_ca` a client certificate required of every connection (mTLS).
pub fn admin_server_config(
    t: &crate::config::AdminTls,
) -> Result<Arc<ServerConfig>, SettingsError> {
    let provider = certs::provider();
    let tls_err = |what: &std::path::Path, e: rustls::Error| {
        SettingsError::Tls(what.display().to_string(), e)
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| SettingsError::Tls("protocol versions".into(), e))?;
    let builder = match &t.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(roots_from(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| tls_err(ca, rustls::Error::General(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let chain = certs::read_chain(&t.cert)
        .map_err(|e| tls_err(&t.cert, rustls::Error::General(e.to_string())))?;
    let key = certs::read_key(&t.key)
        .map_err(|e| tls_err(&t.key, rustls::Error::General(e.to_string())))?;
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| tls_err(&t.cert, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client side towards a route's targets.
pub fn client_config(up: &UpstreamTls, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, SettingsError> {
    let provider = certs::provider();
    let roots = match &up.ca {
        Some(ca) => roots_from(ca)?,
        None => system_roots(),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(TlsVersion::V12))
        .map_err(|e| SettingsError::Tls("protocol versions".into(), e))?
        .with_root_certificates(roots);
    let mut config = match &up.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certs::read_chain(cert)?;
            let key_der = certs::read_key(key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| SettingsError::Tls(cert.display().to_string(), e))?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name to send as SNI and verify: the configured one, else the target's host.
pub fn server_name(up: &UpstreamTls, target: &str) -> rustls_pki_types::ServerName<'static> {
    let host = up.server_name.clone().unwrap_or_else(|| {
        let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    });
    // Validation accepts only DNS names and IP addresses here; anything
    // else would fail verification against the unspecified address.
    rustls_pki_types::ServerName::try_from(host).unwrap_or(rustls_pki_types::ServerName::IpAddress(
        std::net::Ipv4Addr::UNSPECIFIED.into(),
    ))
}

/// How a TLS handshake with an upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTlsFailure {
    /// The upstream's certificate did not verify.
    Verify,
    /// Anything else: protocol error, alert, connection lost.
    Handshake,
}

pub fn classify_upstream(e: &std::io::Error) -> UpstreamTlsFailure {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => UpstreamTlsFailure::Verify,
        _ => UpstreamTlsFailure::Handshake,
    }
}

/// Why an upstream TLS handshake failed, in words an operator can act on
/// (the verifier's reason when the certificate was refused).
pub fn describe_upstream(e: &std::io::Error) -> String {
    use rustls::CertificateError as C;
    let Some(err) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return e.to_string();
    };
    let rustls::Error::InvalidCertificate(cert) = err else {
        return err.to_string();
    };
    let why = match cert {
        C::Expired | C::ExpiredContext { .. } => "the certificate has expired".to_owned(),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "the certificate is not valid yet".to_owned()
        }
        C::UnknownIssuer => {
            "unknown issuer: not signed by a CA the route trusts (upstream.ca)".to_owned()
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => format!(
            "name mismatch: the certificate is not for the name asked (upstream.server_name, else the target's host){}",
            match cert {
                C::NotValidForNameContext {
                    expected,
                    presented,
                } => {
                    format!(": expected {expected:?}, presented {presented:?}")
                }
                _ => String::new(),
            }
        ),
        C::BadSignature => "bad signature".to_owned(),
        C::Revoked => "the certificate is revoked".to_owned(),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "the certificate is not for TLS servers (extended key usage)".to_owned()
        }
        other => {
            let text = format!("{other:?}");
            if text.contains("CaUsedAsEndEntity") {
                "a CA certificate (CA:TRUE) was presented as the server's own: the server needs a leaf certificate signed by that CA".to_owned()
            } else {
                format!("invalid certificate: {text}")
            }
        }
    };
    format!("certificate refused: {why}")
}

/// The identity of a verified client certificate: its first DNS name, else
/// its subject's common name.
pub fn client_identity(der: &rustls_pki_types::CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => return Some(d.to_string()),
                x509_parser::extensions::GeneralName::URI(u) => return Some(u.to_string()),
                _ => {}
            }
        }
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}
