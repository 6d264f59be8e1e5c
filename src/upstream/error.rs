//! Upstream failures: one type for every way of reaching an upstream (an
//! L4 connection, TLS re-encryption, an HTTP pool's new connection),
//! mapped to a connection's `EndReason` or a request's `RequestEnd` where
//! they end.

use crate::lifecycle::EndReason;

/// Why an upstream failed: it could not be reached (nothing was sent), or
/// the exchange on a connection failed (what was sent decides whether the
/// request may go again: `retry_safe`).
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
    /// The connection closed before the request was written (a reused
    /// connection the upstream closed while it was idle).
    #[error("closed before the request was sent")]
    ClosedBeforeSend,
    /// The connection closed after the request, before any byte of a
    /// response: the upstream may or may not have processed it.
    #[error("closed before a response")]
    ClosedBeforeResponse,
    /// Reset or closed during the response, or failed otherwise after the
    /// request went out.
    #[error("connection reset")]
    Reset,
    /// No response head within the response header timeout.
    #[error("no response in time")]
    ResponseTimeout,
    /// The response is not valid HTTP.
    #[error("invalid response")]
    InvalidResponse,
    /// Every endpoint is unhealthy, ejected or draining.
    #[error("no healthy endpoint")]
    NoHealthy,
    /// The cluster's cap on requests in flight is reached.
    #[error("cluster overloaded")]
    Overloaded,
}

impl UpstreamError {
    /// Whether the request may be sent again, on another connection or
    /// endpoint: when nothing of it reached the upstream, or when nothing
    /// came back and the method is idempotent (RFC 9110 §9.2.2), so that a
    /// request the upstream processed is never processed twice otherwise.
    pub fn retry_safe(self, idempotent: bool) -> bool {
        use UpstreamError as U;
        match self {
            U::Unresolved
            | U::Refused
            | U::ConnectTimeout
            | U::ConnectError
            | U::TlsVerifyFailed
            | U::TlsHandshakeFailed
            | U::ProtocolError
            | U::PoolExhausted
            | U::ClosedBeforeSend => true,
            U::NoHealthy | U::Overloaded => false,
            U::ClosedBeforeResponse => idempotent,
            U::Reset | U::ResponseTimeout | U::InvalidResponse => false,
        }
    }

    /// Whether a request that failed this way may be retried on another
    /// endpoint (`retries`; within its attempts and budget, which the
    /// caller checks). Nothing was sent: always. Something was: only a
    /// request that may be repeated (`repeatable`: idempotent, and no
    /// body taken), and only for what the policy names (`reset`,
    /// `timeout`). The cluster itself refusing (no healthy endpoint,
    /// overload, nothing resolved): never.
    pub fn may_retry(self, repeatable: bool, retries: &crate::config::RetryConfig) -> bool {
        use UpstreamError as U;
        match self {
            U::Refused
            | U::ConnectTimeout
            | U::ConnectError
            | U::TlsVerifyFailed
            | U::TlsHandshakeFailed
            | U::ProtocolError
            | U::PoolExhausted
            | U::ClosedBeforeSend => true,
            U::ClosedBeforeResponse | U::Reset | U::InvalidResponse => {
                repeatable && retries.on_reset
            }
            U::ResponseTimeout => repeatable && retries.on_timeout,
            U::Unresolved | U::NoHealthy | U::Overloaded => false,
        }
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
            // (The exchange's kinds are HTTP's: an L4 connection never has
            // them; the nearest words, should one.)
            U::ClosedBeforeSend | U::ClosedBeforeResponse | U::Reset | U::InvalidResponse => {
                EndReason::UpstreamReset
            }
            U::ResponseTimeout => EndReason::IdleTimeout,
            U::NoHealthy => EndReason::NoHealthyUpstream,
            U::Overloaded => EndReason::UpstreamOverloaded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::UpstreamError as U;

    #[test]
    fn a_request_goes_again_only_if_it_cannot_have_been_processed() {
        for e in [U::Refused, U::ConnectTimeout, U::ClosedBeforeSend] {
            assert!(e.retry_safe(false), "{e:?}");
        }
        assert!(U::ClosedBeforeResponse.retry_safe(true));
        assert!(!U::ClosedBeforeResponse.retry_safe(false));
        for e in [U::Reset, U::ResponseTimeout, U::InvalidResponse] {
            assert!(!e.retry_safe(true), "{e:?}");
        }
    }
}
