//! Why an HTTP request ended, who is to blame, and the one place where a
//! failure becomes the proxy's own response (status, `gatehouse-error`
//! header, short body).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::{Body, full};
use crate::conn::Side;

/// The outcome of one request. `Ok` means the upstream's response was relayed completely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestEnd {
    Ok,
    NoRoute,
    LimitRoute,
    MethodNotAllowed,
    BadRequest,
    UriTooLong,
    BodyTooLarge,
    LengthRequired,
    ClientBodyTimeout,
    ClientAborted,
    UpstreamRefused,
    UpstreamConnectTimeout,
    UpstreamConnectError,
    UpstreamUnresolved,
    UpstreamPoolExhausted,
    UpstreamResponseTimeout,
    UpstreamReset,
    UpstreamProtocolError,
    UpstreamBodyTimeout,
    RequestTimeout,
    Shutdown,
    /// The upstream's TLS certificate did not verify.
    UpstreamTlsVerifyFailed,
    /// The TLS handshake with the upstream failed otherwise.
    UpstreamTlsHandshakeFailed,
    /// On terminated TLS, the request's host is not the connection's SNI.
    MisdirectedRequest,
    /// The request head or its header count is over the listener's limit.
    HeadersTooLarge,
    /// The response made no progress toward the client for the send timeout.
    ClientSendTimeout,
    /// The client already holds its share of the target's connections.
    LimitClientShare,
    /// The client sent part of a request head, then nothing until the
    /// header read timeout.
    ClientHeaderTimeout,
}

impl RequestEnd {
    pub const ALL: [RequestEnd; 28] = [
        RequestEnd::Ok,
        RequestEnd::NoRoute,
        RequestEnd::LimitRoute,
        RequestEnd::MethodNotAllowed,
        RequestEnd::BadRequest,
        RequestEnd::UriTooLong,
        RequestEnd::BodyTooLarge,
        RequestEnd::LengthRequired,
        RequestEnd::ClientBodyTimeout,
        RequestEnd::ClientAborted,
        RequestEnd::UpstreamRefused,
        RequestEnd::UpstreamConnectTimeout,
        RequestEnd::UpstreamConnectError,
        RequestEnd::UpstreamUnresolved,
        RequestEnd::UpstreamPoolExhausted,
        RequestEnd::UpstreamResponseTimeout,
        RequestEnd::UpstreamReset,
        RequestEnd::UpstreamProtocolError,
        RequestEnd::UpstreamBodyTimeout,
        RequestEnd::RequestTimeout,
        RequestEnd::Shutdown,
        RequestEnd::UpstreamTlsVerifyFailed,
        RequestEnd::UpstreamTlsHandshakeFailed,
        RequestEnd::MisdirectedRequest,
        RequestEnd::HeadersTooLarge,
        RequestEnd::ClientSendTimeout,
        RequestEnd::LimitClientShare,
        RequestEnd::ClientHeaderTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestEnd::Ok => "ok",
            RequestEnd::NoRoute => "no_route",
            RequestEnd::LimitRoute => "limit_route",
            RequestEnd::MethodNotAllowed => "method_not_allowed",
            RequestEnd::BadRequest => "bad_request",
            RequestEnd::UriTooLong => "uri_too_long",
            RequestEnd::BodyTooLarge => "body_too_large",
            RequestEnd::LengthRequired => "length_required",
            RequestEnd::ClientBodyTimeout => "client_body_timeout",
            RequestEnd::ClientAborted => "client_aborted",
            RequestEnd::UpstreamRefused => "upstream_refused",
            RequestEnd::UpstreamConnectTimeout => "upstream_connect_timeout",
            RequestEnd::UpstreamConnectError => "upstream_connect_error",
            RequestEnd::UpstreamUnresolved => "upstream_unresolved",
            RequestEnd::UpstreamPoolExhausted => "upstream_pool_exhausted",
            RequestEnd::UpstreamResponseTimeout => "upstream_response_timeout",
            RequestEnd::UpstreamReset => "upstream_reset",
            RequestEnd::UpstreamProtocolError => "upstream_protocol_error",
            RequestEnd::UpstreamBodyTimeout => "upstream_body_timeout",
            RequestEnd::RequestTimeout => "request_timeout",
            RequestEnd::Shutdown => "shutdown",
            RequestEnd::UpstreamTlsVerifyFailed => "upstream_tls_verify_failed",
            RequestEnd::UpstreamTlsHandshakeFailed => "upstream_tls_handshake_failed",
            RequestEnd::MisdirectedRequest => "misdirected_request",
            RequestEnd::HeadersTooLarge => "headers_too_large",
            RequestEnd::ClientSendTimeout => "client_send_timeout",
            RequestEnd::LimitClientShare => "limit_client_share",
            RequestEnd::ClientHeaderTimeout => "client_header_timeout",
        }
    }

    pub fn side(self) -> Side {
        match self {
            RequestEnd::Ok
            | RequestEnd::NoRoute
            | RequestEnd::LimitRoute
            | RequestEnd::RequestTimeout
            | RequestEnd::Shutdown => Side::Proxy,
            RequestEnd::BadRequest
            | RequestEnd::MethodNotAllowed
            | RequestEnd::UriTooLong
            | RequestEnd::BodyTooLarge
            | RequestEnd::LengthRequired
            | RequestEnd::ClientBodyTimeout
            | RequestEnd::ClientAborted
            | RequestEnd::MisdirectedRequest
            | RequestEnd::HeadersTooLarge
            | RequestEnd::ClientSendTimeout
            | RequestEnd::LimitClientShare
            | RequestEnd::ClientHeaderTimeout => Side::Client,
            _ => Side::Upstream,
        }
    }

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
            RequestEnd::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RequestEnd::UpstreamPoolExhausted
            | RequestEnd::LimitRoute
            | RequestEnd::LimitClientShare
            | RequestEnd::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
            RequestEnd::UpstreamConnectTimeout
            | RequestEnd::UpstreamResponseTimeout
            | RequestEnd::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn index(self) -> usize {
        self as usize
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
            U::ProtocolError => RequestEnd::UpstreamProtocolError,
            U::PoolExhausted => RequestEnd::UpstreamPoolExhausted,
        }
    }
}
