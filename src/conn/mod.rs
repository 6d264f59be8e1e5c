//! The connection lifecycle vocabulary: the explicit states a connection moves
//! through, the reasons it can end (each with the side to blame), and the
//! connection table whose entries are guards owned by the connection's task.

mod table;

pub use table::{ConnGuard, ConnSnapshot, ConnTable};

/// Where a connection is in its life. Transitions only move forward:
/// accepting → (reading_proxy_header) → routing → connecting → established →
/// draining (one direction finished, the other still flowing) → closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ConnState {
    Accepting = 0,
    ReadingProxyHeader = 1,
    Routing = 2,
    Connecting = 3,
    Established = 4,
    Draining = 5,
    Closed = 6,
}

impl ConnState {
    pub const ALL: [ConnState; 7] = [
        ConnState::Accepting,
        ConnState::ReadingProxyHeader,
        ConnState::Routing,
        ConnState::Connecting,
        ConnState::Established,
        ConnState::Draining,
        ConnState::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Accepting => "accepting",
            ConnState::ReadingProxyHeader => "reading_proxy_header",
            ConnState::Routing => "routing",
            ConnState::Connecting => "connecting",
            ConnState::Established => "established",
            ConnState::Draining => "draining",
            ConnState::Closed => "closed",
        }
    }

    fn from_u8(v: u8) -> ConnState {
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

macro_rules! end_reasons {
    ($($variant:ident => $name:literal, $side:ident;)*) => {
        /// Why a connection ended. Every connection ends with exactly one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum EndReason { $($variant),* }

        impl EndReason {
            pub const ALL: &'static [EndReason] = &[$(EndReason::$variant),*];
            pub const COUNT: usize = Self::ALL.len();

            pub fn as_str(self) -> &'static str {
                match self { $(EndReason::$variant => $name),* }
            }

            pub fn side(self) -> Side {
                match self { $(EndReason::$variant => Side::$side),* }
            }
        }
    };
}

end_reasons! {
    ClientClosed => "client_closed", Client;
    UpstreamClosed => "upstream_closed", Upstream;
    ClientReset => "client_reset", Client;
    UpstreamReset => "upstream_reset", Upstream;
    UpstreamRefused => "upstream_refused", Upstream;
    UpstreamConnectTimeout => "upstream_connect_timeout", Upstream;
    UpstreamConnectError => "upstream_connect_error", Upstream;
    UpstreamUnresolved => "upstream_unresolved", Upstream;
    IdleTimeout => "idle_timeout", Proxy;
    MaxLifetime => "max_lifetime", Proxy;
    ProxyHeaderTimeout => "proxy_header_timeout", Client;
    ProxyHeaderInvalid => "proxy_header_invalid", Client;
    ProxyHeaderUntrusted => "proxy_header_untrusted", Client;
    LimitGlobal => "limit_global", Proxy;
    LimitRoute => "limit_route", Proxy;
    LimitPerIp => "limit_per_ip", Proxy;
    NoRoute => "no_route", Proxy;
    Shutdown => "shutdown", Proxy;
    Internal => "internal_error", Proxy;
}

impl EndReason {
    pub fn index(self) -> usize {
        self as usize
    }
}
