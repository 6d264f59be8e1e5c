//! TLS on both sides of the proxy: reading a ClientHello without consuming
//! it (`hello`), the certificate store that serves a certificate per SNI and
//! reloads it from disk (`certs`), the listener's rustls server settings and
//! the verified client settings towards upstreams (`settings`), ACME
//! (`acme`) and the local CA of `issuer = "internal"` (`internal`).

pub mod acme;
pub mod certs;
pub mod hello;
pub mod internal;
pub mod settings;

use std::sync::Arc;

use rustls::{ClientConfig, ServerConfig};

use crate::config::{Config, UpstreamProtocol};
use certs::CertStore;
pub use settings::SettingsError;

/// The TLS part of the runtime, built once at start-up.
pub struct TlsRt {
    pub certs: Arc<CertStore>,
    /// Server settings per listener (`None` for listeners without TLS).
    pub servers: Vec<Option<Arc<ServerConfig>>>,
    /// Client settings per route towards its targets (`None`: plaintext).
    pub upstreams: Vec<Option<Arc<ClientConfig>>>,
    /// Present when some certificate is obtained through ACME.
    pub acme: Option<Arc<acme::AcmeManager>>,
}

impl TlsRt {
    /// Loads certificates and builds every listener's and route's settings;
    /// fails on a certificate, key or CA file that cannot be used.
    pub fn build(config: &Config) -> Result<TlsRt, SettingsError> {
        let certs = Arc::new(CertStore::load(
            &config.certificates,
            config.acme.as_ref().map(|a| a.storage.as_path()),
            &config.internal_ca,
        )?);
        let wants_acme = config
            .certificates
            .iter()
            .any(|c| matches!(c.source, crate::config::CertSource::Acme));
        let acme = config
            .acme
            .clone()
            .filter(|_| wants_acme)
            .map(|a| acme::AcmeManager::new(a, certs.clone()));
        Self::build_with(config, certs, acme)
    }

    /// Every listener's and route's settings around a certificate store
    /// (and ACME manager) already made: a reload that leaves the
    /// certificates' settings as they were keeps them.
    pub fn build_with(
        config: &Config,
        certs: Arc<CertStore>,
        acme: Option<Arc<acme::AcmeManager>>,
    ) -> Result<TlsRt, SettingsError> {
        let servers = config
            .listeners
            .iter()
            .map(|l| {
                l.tls
                    .as_ref()
                    .map(|t| settings::server_config(t, &certs))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let upstreams = config
            .routes
            .iter()
            .map(|r| {
                let alpn: &[&[u8]] = match (config.route_serves_http(r), r.upstream.protocol) {
                    (false, _) => &[],
                    (true, UpstreamProtocol::Http1) => &[b"http/1.1"],
                    (true, UpstreamProtocol::Http2) => &[b"h2"],
                };
                r.upstream
                    .tls
                    .as_ref()
                    .map(|t| settings::client_config(t, alpn))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        Ok(TlsRt {
            certs,
            servers,
            upstreams,
            acme,
        })
    }
}

pub type ClientTls = tokio_rustls::server::TlsStream<crate::io::Prefixed<tokio::net::TcpStream>>;
