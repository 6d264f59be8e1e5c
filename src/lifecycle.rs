//! The words every ending is told in, shared by the data plane, the
//! metrics and the logs: the states a connection moves through, why a
//! connection or a request ended, and the side to blame. A leaf: it knows
//! nothing of the modules that use it.

/// Where a connection is in its life. Transitions only move forward:
/// accepting → (reading_proxy_header) → (handshaking) → routing → connecting → established →
/// draining (one direction finished, the other still flowing) → closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ConnState {
    Accepting = 0,
    ReadingProxyHeader = 1,
    /// Reading the ClientHello or completing the TLS handshake.
    Handshaking = 2,
    Routing = 3,
    Connecting = 4,
    Established = 5,
    Draining = 6,
    /// An HTTP connection switched protocols (WebSocket): bytes spliced both ways.
    Upgraded = 7,
    Closed = 8,
}

impl ConnState {
    pub const ALL: [ConnState; 9] = [
        ConnState::Accepting,
        ConnState::ReadingProxyHeader,
        ConnState::Handshaking,
        ConnState::Routing,
        ConnState::Connecting,
        ConnState::Established,
        ConnState::Draining,
        ConnState::Upgraded,
        ConnState::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Accepting => "accepting",
            ConnState::ReadingProxyHeader => "reading_proxy_header",
            ConnState::Handshaking => "handshaking",
            ConnState::Routing => "routing",
            ConnState::Connecting => "connecting",
            ConnState::Established => "established",
            ConnState::Draining => "draining",
            ConnState::Upgraded => "upgraded",
            ConnState::Closed => "closed",
        }
    }

    pub fn from_u8(v: u8) -> ConnState {
        Self::ALL
            .get(v as usize)
            .copied()
            .unwrap_or(ConnState::Closed)
    }
}

/// Who is responsible for a connection ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Proxy,
    Upstream,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Proxy => "proxy",
            Side::Upstream => "upstream",
        }
    }
}

/// Why a connection ended. Every connection ends with exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Both directions finished; the client sent EOF first.
    ClientClosed,
    /// Both directions finished; the upstream sent EOF first.
    UpstreamClosed,
    /// A read or write on the client socket failed.
    ClientReset,
    /// A read or write on the upstream socket failed.
    UpstreamReset,
    /// The upstream refused the connection.
    UpstreamRefused,
    /// No upstream connection within the connect deadline.
    UpstreamConnectTimeout,
    /// Connecting failed otherwise (unreachable network, …).
    UpstreamConnectError,
    /// The target's name did not resolve.
    UpstreamUnresolved,
    /// No bytes either way for the idle deadline.
    IdleTimeout,
    /// The connection reached its maximum lifetime.
    MaxLifetime,
    /// No complete PROXY header within its deadline.
    ProxyHeaderTimeout,
    /// A missing, malformed, truncated or oversized PROXY header.
    ProxyHeaderInvalid,
    /// A PROXY header (or a required one) from an untrusted peer.
    ProxyHeaderUntrusted,
    /// The process-wide connection limit.
    LimitGlobal,
    /// The route's connection limit.
    LimitRoute,
    /// The per-client-address connection limit.
    LimitPerIp,
    /// No route matched.
    NoRoute,
    /// Still open at the end of the shutdown drain.
    Shutdown,
    /// An HTTP client did not send a request head within its deadline.
    ClientHeaderTimeout,
    /// An HTTP client sent something that is not HTTP/1.1 (hyper refused it).
    ClientProtocolError,
    /// No complete TLS ClientHello within the handshake deadline.
    TlsHelloTimeout,
    /// The first bytes are not a TLS ClientHello, or a malformed one.
    TlsHelloInvalid,
    /// The client sent no SNI and no route or certificate serves that.
    TlsNoSni,
    /// No certificate for the client's SNI (and no default one).
    TlsNoCertificate,
    /// The TLS handshake with the client failed (alert, bad message, bad
    /// client certificate) or did not finish within its deadline.
    TlsHandshakeFailed,
    /// The upstream's TLS certificate did not verify.
    UpstreamTlsVerifyFailed,
    /// The TLS handshake with the upstream failed otherwise.
    UpstreamTlsHandshakeFailed,
    /// The owning task ended without a reason (a bug).
    Internal,
    /// A response made no progress toward the client (full socket, no
    /// HTTP/2 window) for the send timeout.
    ClientSendTimeout,
    /// The upstream sent nothing of a response body for its idle timeout.
    UpstreamBodyTimeout,
    /// An HTTP request's total deadline (`policy.request_timeout`) passed
    /// mid-response.
    RequestTimeout,
    /// Its route was removed by a reload, and it was still open at the
    /// end of `timeouts.route_drain`.
    RouteRemoved,
    /// Every endpoint of the cluster is unhealthy, ejected or draining.
    NoHealthyUpstream,
    /// The cluster's cap on requests in flight is reached (circuit breaking).
    UpstreamOverloaded,
    /// Refused at accept: the process is near its descriptor limit or over
    /// its memory budget (load shedding).
    Overload,
    /// The route's IP rules refuse the client's address.
    IpDenied,
    /// Over the route's connection-rate limit.
    RateLimited,
    /// Closed by an operator (`DELETE /v1/connections/{id}`, or by filter).
    AdminClosed,
    /// Its route is being drained (`POST /v1/routes/{name}/drain`): it
    /// takes no new connections or requests.
    RouteDraining,
}

impl EndReason {
    pub const ALL: [EndReason; 39] = [
        EndReason::ClientClosed,
        EndReason::UpstreamClosed,
        EndReason::ClientReset,
        EndReason::UpstreamReset,
        EndReason::UpstreamRefused,
        EndReason::UpstreamConnectTimeout,
        EndReason::UpstreamConnectError,
        EndReason::UpstreamUnresolved,
        EndReason::IdleTimeout,
        EndReason::MaxLifetime,
        EndReason::ProxyHeaderTimeout,
        EndReason::ProxyHeaderInvalid,
        EndReason::ProxyHeaderUntrusted,
        EndReason::LimitGlobal,
        EndReason::LimitRoute,
        EndReason::LimitPerIp,
        EndReason::NoRoute,
        EndReason::Shutdown,
        EndReason::ClientHeaderTimeout,
        EndReason::ClientProtocolError,
        EndReason::TlsHelloTimeout,
        EndReason::TlsHelloInvalid,
        EndReason::TlsNoSni,
        EndReason::TlsNoCertificate,
        EndReason::TlsHandshakeFailed,
        EndReason::UpstreamTlsVerifyFailed,
        EndReason::UpstreamTlsHandshakeFailed,
        EndReason::Internal,
        EndReason::ClientSendTimeout,
        EndReason::UpstreamBodyTimeout,
        EndReason::RequestTimeout,
        EndReason::RouteRemoved,
        EndReason::NoHealthyUpstream,
        EndReason::UpstreamOverloaded,
        EndReason::Overload,
        EndReason::IpDenied,
        EndReason::RateLimited,
        EndReason::AdminClosed,
        EndReason::RouteDraining,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientClosed => "client_closed",
            EndReason::UpstreamClosed => "upstream_closed",
            EndReason::ClientReset => "client_reset",
            EndReason::UpstreamReset => "upstream_reset",
            EndReason::UpstreamRefused => "upstream_refused",
            EndReason::UpstreamConnectTimeout => "upstream_connect_timeout",
            EndReason::UpstreamConnectError => "upstream_connect_error",
            EndReason::UpstreamUnresolved => "upstream_unresolved",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::MaxLifetime => "max_lifetime",
            EndReason::ProxyHeaderTimeout => "proxy_header_timeout",
            EndReason::ProxyHeaderInvalid => "proxy_header_invalid",
            EndReason::ProxyHeaderUntrusted => "proxy_header_untrusted",
            EndReason::LimitGlobal => "limit_global",
            EndReason::LimitRoute => "limit_route",
            EndReason::LimitPerIp => "limit_per_ip",
            EndReason::NoRoute => "no_route",
            EndReason::Shutdown => "shutdown",
            EndReason::ClientHeaderTimeout => "client_header_timeout",
            EndReason::ClientProtocolError => "client_protocol_error",
            EndReason::TlsHelloTimeout => "tls_hello_timeout",
            EndReason::TlsHelloInvalid => "tls_hello_invalid",
            EndReason::TlsNoSni => "tls_no_sni",
            EndReason::TlsNoCertificate => "tls_no_certificate",
            EndReason::TlsHandshakeFailed => "tls_handshake_failed",
            EndReason::UpstreamTlsVerifyFailed => "upstream_tls_verify_failed",
            EndReason::UpstreamTlsHandshakeFailed => "upstream_tls_handshake_failed",
            EndReason::Internal => "internal_error",
            EndReason::ClientSendTimeout => "client_send_timeout",
            EndReason::UpstreamBodyTimeout => "upstream_body_timeout",
            EndReason::RequestTimeout => "request_timeout",
            EndReason::RouteRemoved => "route_removed",
            EndReason::NoHealthyUpstream => "no_healthy_upstream",
            EndReason::UpstreamOverloaded => "upstream_overloaded",
            EndReason::Overload => "overload",
            EndReason::IpDenied => "ip_denied",
            EndReason::RateLimited => "rate_limited",
            EndReason::AdminClosed => "admin_closed",
            EndReason::RouteDraining => "route_draining",
        }
    }

    /// The side responsible for this end.
    pub fn side(self) -> Side {
        match self {
            EndReason::ClientClosed => Side::Client,
            EndReason::UpstreamClosed => Side::Upstream,
            EndReason::ClientReset => Side::Client,
            EndReason::UpstreamReset => Side::Upstream,
            EndReason::UpstreamRefused => Side::Upstream,
            EndReason::UpstreamConnectTimeout => Side::Upstream,
            EndReason::UpstreamConnectError => Side::Upstream,
            EndReason::UpstreamUnresolved => Side::Upstream,
            EndReason::IdleTimeout => Side::Proxy,
            EndReason::MaxLifetime => Side::Proxy,
            EndReason::ProxyHeaderTimeout => Side::Client,
            EndReason::ProxyHeaderInvalid => Side::Client,
            EndReason::ProxyHeaderUntrusted => Side::Client,
            EndReason::LimitGlobal => Side::Proxy,
            EndReason::LimitRoute => Side::Proxy,
            EndReason::LimitPerIp => Side::Proxy,
            EndReason::NoRoute => Side::Proxy,
            EndReason::Shutdown => Side::Proxy,
            EndReason::ClientHeaderTimeout => Side::Client,
            EndReason::ClientProtocolError => Side::Client,
            EndReason::TlsHelloTimeout => Side::Client,
            EndReason::TlsHelloInvalid => Side::Client,
            EndReason::TlsNoSni => Side::Client,
            EndReason::TlsNoCertificate => Side::Client,
            EndReason::TlsHandshakeFailed => Side::Client,
            EndReason::UpstreamTlsVerifyFailed => Side::Upstream,
            EndReason::UpstreamTlsHandshakeFailed => Side::Upstream,
            EndReason::Internal => Side::Proxy,
            EndReason::ClientSendTimeout => Side::Client,
            EndReason::UpstreamBodyTimeout => Side::Upstream,
            EndReason::RequestTimeout => Side::Proxy,
            EndReason::RouteRemoved => Side::Proxy,
            EndReason::NoHealthyUpstream => Side::Upstream,
            EndReason::UpstreamOverloaded => Side::Upstream,
            EndReason::Overload => Side::Proxy,
            EndReason::IpDenied | EndReason::RateLimited => Side::Client,
            EndReason::AdminClosed | EndReason::RouteDraining => Side::Proxy,
        }
    }
}

impl EndReason {
    /// Ends worth a log line at the default level: failures of the TLS
    /// handshake, the upstream, the PROXY header, routing or the proxy
    /// itself. Normal closes, timeouts and limits a flood can trigger stay
    /// at debug (they are counted in the metrics either way).
    pub fn is_notable(self) -> bool {
        !matches!(
            self,
            EndReason::ClientClosed
                | EndReason::UpstreamClosed
                | EndReason::ClientReset
                | EndReason::IdleTimeout
                | EndReason::MaxLifetime
                | EndReason::Shutdown
                | EndReason::LimitGlobal
                | EndReason::LimitPerIp
                | EndReason::LimitRoute
                | EndReason::Overload
                | EndReason::IpDenied
                | EndReason::RateLimited
        )
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

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
    /// Every endpoint of the cluster is unhealthy, ejected or draining.
    NoHealthyUpstream,
    /// The cluster's cap on requests in flight is reached (circuit breaking).
    UpstreamOverloaded,
    /// A filter asks for credentials and the request has none (401).
    AuthRequired,
    /// The request's credentials are wrong or not allowed (403).
    AuthDenied,
    /// The route's IP rules refuse the client's address.
    IpDenied,
    /// Over a rate limit (429).
    RateLimited,
    /// A CORS preflight from an origin the route does not allow.
    CorsDenied,
    /// Its route is being drained by an operator (503).
    RouteDraining,
}

impl RequestEnd {
    pub const ALL: [RequestEnd; 36] = [
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
        RequestEnd::NoHealthyUpstream,
        RequestEnd::UpstreamOverloaded,
        RequestEnd::AuthRequired,
        RequestEnd::AuthDenied,
        RequestEnd::IpDenied,
        RequestEnd::RateLimited,
        RequestEnd::CorsDenied,
        RequestEnd::RouteDraining,
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
            RequestEnd::NoHealthyUpstream => "no_healthy_upstream",
            RequestEnd::UpstreamOverloaded => "upstream_overloaded",
            RequestEnd::AuthRequired => "auth_required",
            RequestEnd::AuthDenied => "auth_denied",
            RequestEnd::IpDenied => "ip_denied",
            RequestEnd::RateLimited => "rate_limited",
            RequestEnd::CorsDenied => "cors_denied",
            RequestEnd::RouteDraining => "route_draining",
        }
    }

    pub fn side(self) -> Side {
        match self {
            RequestEnd::Ok
            | RequestEnd::NoRoute
            | RequestEnd::LimitRoute
            | RequestEnd::RequestTimeout
            | RequestEnd::RouteDraining
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
            | RequestEnd::ClientHeaderTimeout
            | RequestEnd::AuthRequired
            | RequestEnd::AuthDenied
            | RequestEnd::IpDenied
            | RequestEnd::RateLimited
            | RequestEnd::CorsDenied => Side::Client,
            _ => Side::Upstream,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}
