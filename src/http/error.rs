//! Why an HTTP request ended, who is to blame, and the one place where a
//! failure becomes the proxy's own response (status, `gatehouse-error`
//! header, short body).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::{Body, full};
pub use crate::lifecycle::RequestEnd;

impl RequestEnd {
    /// The status the proxy answers with when it fails this way itself.
    pub fn status(self) -> StatusCode {
        match self {
            RequestEnd::Ok => StatusCode::OK,
            RequestEnd::NoRoute => StatusCode::NOT_FOUND,
            RequestEnd::BadRequest => StatusCode::BAD_REQUEST,
            RequestEnd::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RequestEnd::UriTooLong => StatusCode::URI_TOO_LONG,
            RequestEnd::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RequestEnd::LengthRequired => StatusCode::LENGTH_REQUIRED,
            RequestEnd::ClientBodyTimeout
            | RequestEnd::ClientAborted
            | RequestEnd::ClientSendTimeout
            | RequestEnd::ClientHeaderTimeout => StatusCode::REQUEST_TIMEOUT,
            RequestEnd::UpstreamRefused
            | RequestEnd::UpstreamConnectError
            | RequestEnd::UpstreamUnresolved
            | RequestEnd::UpstreamReset
            | RequestEnd::UpstreamProtocolError
            | RequestEnd::UpstreamBodyTimeout
            | RequestEnd::UpstreamTlsVerifyFailed
            | RequestEnd::UpstreamTlsHandshakeFailed => StatusCode::BAD_GATEWAY,
            RequestEnd::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            RequestEnd::AuthRequired => StatusCode::UNAUTHORIZED,
            RequestEnd::AuthDenied | RequestEnd::IpDenied | RequestEnd::CorsDenied => {
                StatusCode::FORBIDDEN
            }
            RequestEnd::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            RequestEnd::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RequestEnd::UpstreamPoolExhausted
            | RequestEnd::NoHealthyUpstream
            | RequestEnd::UpstreamOverloaded
            | RequestEnd::LimitRoute
            | RequestEnd::LimitClientShare
            | RequestEnd::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
            RequestEnd::UpstreamConnectTimeout
            | RequestEnd::UpstreamResponseTimeout
            | RequestEnd::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// After these the client connection is closed: its framing is suspect.
    fn closes_connection(self) -> bool {
        matches!(
            self,
            RequestEnd::BadRequest
                | RequestEnd::HeadersTooLarge
                | RequestEnd::BodyTooLarge
                | RequestEnd::LengthRequired
                | RequestEnd::ClientBodyTimeout
                | RequestEnd::ClientHeaderTimeout
        )
    }
}

/// The proxy's own response for a failed request.
pub fn respond(end: RequestEnd, server: Option<&str>) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(format!(
        "{} ({} side)\n",
        end.as_str(),
        end.side().as_str()
    ))));
    *resp.status_mut() = end.status();
    let h = resp.headers_mut();
    h.insert("gatehouse-error", HeaderValue::from_static(end.as_str()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(s) = server.and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert(header::SERVER, s);
    }
    if end.closes_connection() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

impl From<crate::upstream::UpstreamError> for RequestEnd {
    fn from(e: crate::upstream::UpstreamError) -> RequestEnd {
        use crate::upstream::UpstreamError as U;
        match e {
            U::Unresolved => RequestEnd::UpstreamUnresolved,
            U::Refused => RequestEnd::UpstreamRefused,
            U::ConnectTimeout => RequestEnd::UpstreamConnectTimeout,
            U::ConnectError => RequestEnd::UpstreamConnectError,
            U::TlsVerifyFailed => RequestEnd::UpstreamTlsVerifyFailed,
            U::TlsHandshakeFailed => RequestEnd::UpstreamTlsHandshakeFailed,
            U::ProtocolError | U::InvalidResponse => RequestEnd::UpstreamProtocolError,
            U::PoolExhausted => RequestEnd::UpstreamPoolExhausted,
            U::ClosedBeforeSend | U::ClosedBeforeResponse | U::Reset => RequestEnd::UpstreamReset,
            U::ResponseTimeout => RequestEnd::UpstreamResponseTimeout,
            U::NoHealthy => RequestEnd::NoHealthyUpstream,
            U::Overloaded => RequestEnd::UpstreamOverloaded,
        }
    }
}
