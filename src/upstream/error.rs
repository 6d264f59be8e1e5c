//! Upstream failures: one type for every way of reaching an upstream (an
//! L4 connection, TLS re-encryption, an HTTP pool's new connection),
//! mapped to a connection's `EndReason` or a request's `RequestEnd` where
//! they end.

use crate::lifecycle::EndReason;

/// Why an upstream could not be reached. Every kind happens before a
/// byte of the client's request or stream was written to the upstream,
/// so each is safe to try again on another endpoint; what fails after
/// (a reset, a response timeout) is the exchange's to classify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The cluster has no endpoint: its names resolved to no address.
    #[error("no address for the cluster's names")]
    Unresolved,
    #[error("connection refused")]
    Refused,
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connect failed")]
    ConnectError,
    /// The upstream's certificate did not verify.
    #[error("TLS certificate not verified")]
    TlsVerifyFailed,
    /// The TLS handshake failed otherwise.
    #[error("TLS handshake failed")]
    TlsHandshakeFailed,
    /// The HTTP handshake failed (the upstream does not speak it).
    #[error("protocol error in the handshake")]
    ProtocolError,
    /// Every connection slot of the endpoint stayed taken for the pool's
    /// wait timeout (our limit: the proxy's side).
    #[error("pool exhausted")]
    PoolExhausted,
}

impl UpstreamError {
    /// Nothing was sent: another endpoint may be tried (see the type).
    pub fn retry_safe(self) -> bool {
        true
    }

    /// Whose failure it is: the upstream's, or ours (a limit of ours).
    pub fn blames_upstream(self) -> bool {
        self != UpstreamError::PoolExhausted
    }

    /// A connect's I/O error.
    pub fn from_connect(e: &std::io::Error) -> UpstreamError {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => UpstreamError::Refused,
            std::io::ErrorKind::TimedOut => UpstreamError::ConnectTimeout,
            _ => UpstreamError::ConnectError,
        }
    }
}

impl From<UpstreamError> for EndReason {
    fn from(e: UpstreamError) -> EndReason {
        use UpstreamError as U;
        match e {
            U::Unresolved => EndReason::UpstreamUnresolved,
            U::Refused => EndReason::UpstreamRefused,
            U::ConnectTimeout => EndReason::UpstreamConnectTimeout,
            U::ConnectError | U::ProtocolError | U::PoolExhausted => {
                EndReason::UpstreamConnectError
            }
            U::TlsVerifyFailed => EndReason::UpstreamTlsVerifyFailed,
            U::TlsHandshakeFailed => EndReason::UpstreamTlsHandshakeFailed,
        }
    }
}
