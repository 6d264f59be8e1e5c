//! Why an HTTP request ended, who is to blame, and the one place where a
//! failure becomes the proxy's own response (status, `gatehouse-error`
//! header, short body; for a gRPC request, a gRPC status in trailers).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::Frame;

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
            | RequestEnd::RouteDraining
            | RequestEnd::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
            RequestEnd::UpstreamConnectTimeout
            | RequestEnd::UpstreamResponseTimeout
            | RequestEnd::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The gRPC status code a gRPC client is told for this end (the codes
    /// of `grpc/status.h`): the proxy's failures as a gRPC server's.
    pub fn grpc_status(self) -> u8 {
        const INTERNAL: u8 = 13;
        const UNAVAILABLE: u8 = 14;
        const DEADLINE_EXCEEDED: u8 = 4;
        const RESOURCE_EXHAUSTED: u8 = 8;
        const UNAUTHENTICATED: u8 = 16;
        const PERMISSION_DENIED: u8 = 7;
        const UNIMPLEMENTED: u8 = 12;
        const CANCELLED: u8 = 1;
        match self {
            RequestEnd::Ok => 0,
            RequestEnd::NoRoute | RequestEnd::MethodNotAllowed => UNIMPLEMENTED,
            RequestEnd::AuthRequired => UNAUTHENTICATED,
            RequestEnd::AuthDenied | RequestEnd::IpDenied | RequestEnd::CorsDenied => {
                PERMISSION_DENIED
            }
            RequestEnd::RateLimited
            | RequestEnd::BodyTooLarge
            | RequestEnd::HeadersTooLarge
            | RequestEnd::UriTooLong
            | RequestEnd::LimitRoute
            | RequestEnd::LimitClientShare
            | RequestEnd::UpstreamPoolExhausted
            | RequestEnd::UpstreamOverloaded => RESOURCE_EXHAUSTED,
            RequestEnd::UpstreamConnectTimeout
            | RequestEnd::UpstreamResponseTimeout
            | RequestEnd::UpstreamBodyTimeout
            | RequestEnd::RequestTimeout
            | RequestEnd::ClientBodyTimeout
            | RequestEnd::ClientSendTimeout
            | RequestEnd::ClientHeaderTimeout => DEADLINE_EXCEEDED,
            RequestEnd::ClientAborted => CANCELLED,
            RequestEnd::BadRequest
            | RequestEnd::LengthRequired
            | RequestEnd::MisdirectedRequest
            | RequestEnd::UpstreamProtocolError => INTERNAL,
            RequestEnd::UpstreamRefused
            | RequestEnd::UpstreamConnectError
            | RequestEnd::UpstreamUnresolved
            | RequestEnd::UpstreamReset
            | RequestEnd::UpstreamTlsVerifyFailed
            | RequestEnd::UpstreamTlsHandshakeFailed
            | RequestEnd::NoHealthyUpstream
            | RequestEnd::RouteDraining
            | RequestEnd::Shutdown => UNAVAILABLE,
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

/// The proxy's own response for a failed request; for a gRPC request
/// (`grpc`: see `is_grpc`), one a gRPC client reads.
pub fn respond(end: RequestEnd, server: Option<&str>, grpc: bool) -> Response<Body> {
    if grpc {
        return respond_grpc(end, server);
    }
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

/// A gRPC request: `content-type: application/grpc` (or `+proto`, `+json`…;
/// not gRPC-Web, whose clients read trailers from the body).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// A failure as a gRPC server answers it: `200`, `content-type:
/// application/grpc`, no message, and trailers with `grpc-status` and a
/// `grpc-message` naming the reason and the side (`gatehouse-error` in the
/// head as on every other failure).
fn respond_grpc(end: RequestEnd, server: Option<&str>) -> Response<Body> {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert(
        "grpc-status",
        HeaderValue::from(u16::from(end.grpc_status())),
    );
    // (Reasons and sides are plain ASCII words: nothing to percent-encode.)
    let message = format!("{} ({} side)", end.as_str(), end.side().as_str());
    if let Ok(v) = HeaderValue::from_str(&message) {
        trailers.insert("grpc-message", v);
    }
    let mut resp = Response::new(Body::boxed(TrailersOnly(Some(trailers))));
    let h = resp.headers_mut();
    h.insert("gatehouse-error", HeaderValue::from_static(end.as_str()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if let Some(s) = server.and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert(header::SERVER, s);
    }
    resp
}

/// A body of no data and one trailers frame.
struct TrailersOnly(Option<HeaderMap>);

impl http_body::Body for TrailersOnly {
    type Data = Bytes;
    type Error = super::body::BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
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
