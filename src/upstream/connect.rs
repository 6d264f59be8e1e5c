//! The one connector: TCP to an endpoint's address, and TLS on top when
//! the route re-encrypts (verified, with the SNI its settings give). L4
//! routes, TLS re-encryption and the HTTP pools all connect through here,
//! so a connect fails the same way, with the same words, on every path.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::error::UpstreamError;
use crate::tls::settings::{self, UpstreamTlsFailure};

/// A TCP connection to `addr` (Nagle off). The caller bounds it in time.
pub async fn tcp(addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
    match TcpStream::connect(addr).await {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Err(e) => {
            tracing::debug!(%addr, error = %e, "upstream connect failed");
            Err(UpstreamError::from_connect(&e))
        }
    }
}

/// A failed TLS handshake: its kind and the verifier's or peer's words.
#[derive(Debug)]
pub struct TlsFailure {
    pub error: UpstreamError,
    pub detail: Arc<str>,
}

/// TLS to the upstream on a connected stream, verifying its certificate
/// for the name `tls` settings give (`target`'s host by default). The
/// caller bounds it in time.
pub async fn tls<S>(
    stream: S,
    config: Arc<rustls::ClientConfig>,
    tls: &crate::config::UpstreamTls,
    target: &str,
) -> Result<tokio_rustls::client::TlsStream<S>, TlsFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = settings::server_name(tls, target);
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| {
            let detail: Arc<str> = settings::describe_upstream(&e).into();
            tracing::info!(target, error = %detail, "upstream TLS handshake failed");
            let error = match settings::classify_upstream(&e) {
                UpstreamTlsFailure::Verify => UpstreamError::TlsVerifyFailed,
                UpstreamTlsFailure::Handshake => UpstreamError::TlsHandshakeFailed,
            };
            TlsFailure { error, detail }
        })
}
