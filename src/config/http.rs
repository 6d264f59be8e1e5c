//! The HTTP parts of the config model: listener settings, request matchers
//! (host, path, method, headers) and per-route HTTP policy, with their
//! validation. Lives beside `mod.rs` and uses its `Ctx` for errors.

use std::time::Duration;

use ipnet::IpNet;

use super::raw::{RawHttpListener, RawMatch, RawPolicy, S, Scalar};
use super::{Ctx, size};

#[derive(Debug, Clone)]
pub struct HttpListener {
    pub max_header_bytes: usize,
    /// Longer request targets get 414.
    pub max_uri_bytes: usize,
    /// Also speak HTTP/2 over cleartext with prior knowledge (h2c).
    pub h2c: bool,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 flow-control windows we grant a client: per stream and per
    /// connection (bytes it may send before we read them).
    pub h2_stream_window: u32,
    pub h2_connection_window: u32,
    pub max_headers: usize,
    /// Deadline for a request's head, from its first byte (slowloris defense).
    pub header_read_timeout: Duration,
    /// How long a connection may wait between requests (HTTP/1.1
    /// keep-alive), or stay without an open stream (HTTP/2: then GOAWAY).
    pub keepalive_timeout: Duration,
    /// How long a response may make no progress toward the client (its
    /// socket full, or its HTTP/2 stream without window): then the
    /// request ends with `client_send_timeout` and its upstream
    /// connection is closed (HTTP/2: the stream is reset).
    pub send_timeout: Duration,
    pub max_requests_per_connection: Option<u64>,
    /// Peers whose X-Forwarded-* / Forwarded headers are kept and appended to.
    pub trusted_proxies: Vec<IpNet>,
    /// Add an RFC 7239 `Forwarded` header.
    pub forwarded: bool,
    /// Add `Via` both ways.
    pub via: bool,
    /// `Server` header on the proxy's own responses (`None`: no header).
    pub server_header: Option<String>,
    pub access_log: bool,
    /// Request headers written in each access-log line.
    pub access_log_headers: Vec<http::HeaderName>,
    /// The query string in the access log (sensitive values redacted).
    pub access_log_query: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`: stored as `.example.com`; matches one or more labels.
    Wildcard(String),
}

impl HostMatch {
    /// Whether `host` (lower case, without port) is this name or, for a
    /// wildcard, one of its subdomains.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => h == host,
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{name}`: exactly one non-empty segment.
    Param(String),
    /// `{*name}`: the rest of the path (last segment only).
    Rest(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Pattern(Vec<Segment>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpMatch {
    pub hosts: Vec<HostMatch>,
    pub path: Option<PathMatch>,
    /// Upper case; empty matches every method.
    pub methods: Vec<String>,
    /// Lower-case names; `None` value: presence is enough.
    pub headers: Vec<(String, Option<String>)>,
}

impl HttpMatch {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
            && self.path.is_none()
            && self.methods.is_empty()
            && self.headers.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct HttpPolicy {
    pub max_body_size: u64,
    pub allow_chunked_requests: bool,
    pub allow_upgrade: bool,
    /// On terminated TLS, serve requests whose host differs from the SNI
    /// (otherwise they get 421).
    pub allow_domain_fronting: bool,
    pub response_header_timeout: Duration,
    pub upstream_body_idle_timeout: Duration,
    pub client_body_idle_timeout: Duration,
    pub request_timeout: Option<Duration>,
    pub pool_max_idle: usize,
    pub pool_max_connections: usize,
    pub pool_idle_timeout: Duration,
    pub pool_wait_timeout: Duration,
    /// Send requests that cannot be retried (non-idempotent methods) on
    /// reused idle connections too. Off by default: such a request goes on
    /// a new connection, so that an upstream closing an idle connection
    /// as the request arrives cannot lose it (HAProxy's `http-reuse safe`).
    pub pool_reuse_non_idempotent: bool,
    /// Upstream connections of one target that one client address may
    /// hold at once (in use, not idle); beyond it its requests get 503
    /// `limit_client_share`. Default: half of `pool_max_connections`.
    pub pool_max_per_client: usize,
}

impl HttpPolicy {
    /// The settings an upstream pool is made with are the same.
    pub fn pools_equal(&self, other: &HttpPolicy) -> bool {
        self.pool_max_idle == other.pool_max_idle
            && self.pool_max_connections == other.pool_max_connections
            && self.pool_idle_timeout == other.pool_idle_timeout
            && self.pool_wait_timeout == other.pool_wait_timeout
            && self.pool_max_per_client == other.pool_max_per_client
    }
}

pub const DEFAULT_MAX_BODY: u64 = 64 << 20;

impl Ctx<'_> {
    pub(super) fn http_listener(
        &mut self,
        raw: Option<&RawHttpListener>,
        field: &dyn Fn(&str) -> String,
        send_timeout: Duration,
    ) -> HttpListener {
        let mut l = HttpListener {
            max_header_bytes: 16 * 1024,
            max_uri_bytes: 8 * 1024,
            h2c: false,
            max_concurrent_streams: 100,
            h2_stream_window: 256 * 1024,
            h2_connection_window: 1024 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(75),
            send_timeout,
            max_requests_per_connection: None,
            trusted_proxies: Vec::new(),
            forwarded: false,
            via: true,
            server_header: Some("gatehouse".into()),
            access_log: true,
            access_log_headers: Vec::new(),
            access_log_query: true,
        };
        let Some(r) = raw else { return l };
        if let Some(v) = &r.max_header_bytes {
            if let Some(n) = self.size(v, &field("http.max_header_bytes")) {
                if n < 8192 {
                    self.err(
                        &v.span(),
                        &field("http.max_header_bytes"),
                        "must be at least 8192",
                    );
                } else {
                    l.max_header_bytes = n as usize;
                }
            }
        }
        for (v, name, slot) in [
            (
                &r.h2_stream_window,
                "http.h2_stream_window",
                &mut l.h2_stream_window,
            ),
            (
                &r.h2_connection_window,
                "http.h2_connection_window",
                &mut l.h2_connection_window,
            ),
        ] {
            let Some(v) = v else { continue };
            match self.size(v, &field(name)) {
                Some(n) if (65_535..=(1 << 31) - 1).contains(&n) => *slot = n as u32,
                Some(_) => self.err(&v.span(), &field(name), "must be 64 KiB - 1 to 2 GiB - 1"),
                None => {}
            }
        }
        if let Some(v) = &r.max_uri_bytes {
            l.max_uri_bytes = self
                .size(v, &field("http.max_uri_bytes"))
                .map_or(l.max_uri_bytes, |n| n as usize);
        }
        if let Some(v) = &r.max_headers {
            l.max_headers = self
                .count(v, &field("http.max_headers"), 10_000)
                .map_or(l.max_headers, |n| n as usize);
        }
        if let Some(v) = &r.header_read_timeout {
            l.header_read_timeout = self.required_duration(
                Some(v),
                &field("http.header_read_timeout"),
                l.header_read_timeout,
            );
        }
        if let Some(v) = &r.keepalive_timeout {
            l.keepalive_timeout = self.required_duration(
                Some(v),
                &field("http.keepalive_timeout"),
                l.keepalive_timeout,
            );
        }
        if let Some(v) = &r.send_timeout {
            l.send_timeout =
                self.required_duration(Some(v), &field("http.send_timeout"), l.send_timeout);
        }
        if let Some(v) = &r.max_requests_per_connection {
            l.max_requests_per_connection =
                self.count(v, &field("http.max_requests_per_connection"), u64::MAX);
        }
        if let Some(v) = &r.trusted_proxies {
            l.trusted_proxies = self.cidrs(v, &field("http.trusted_proxies"));
        }
        l.h2c = r.h2c.as_ref().is_some_and(|b| *b.get_ref());
        if let Some(v) = &r.max_concurrent_streams {
            l.max_concurrent_streams = self
                .count(v, &field("http.max_concurrent_streams"), 10_000)
                .map_or(100, |n| n as u32);
        }
        l.forwarded = r.forwarded.as_ref().is_some_and(|b| *b.get_ref());
        l.via = r.via.as_ref().is_none_or(|b| *b.get_ref());
        l.access_log = r.access_log.as_ref().is_none_or(|b| *b.get_ref());
        l.access_log_query = r.access_log_query.as_ref().is_none_or(|b| *b.get_ref());
        if let Some(list) = &r.access_log_headers {
            l.access_log_headers = list
                .get_ref()
                .iter()
                .filter_map(|h| self.header_name(h, &field("http.access_log_headers")))
                .collect();
        }
        if let Some(v) = &r.server_header {
            let s = self
                .string(v, &field("http.server_header"))
                .unwrap_or_default();
            if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
                self.err(
                    &v.span(),
                    &field("http.server_header"),
                    "control characters are not allowed",
                );
            }
            l.server_header = (!s.is_empty()).then_some(s);
        }
        l
    }

    pub(super) fn http_match(&mut self, m: &RawMatch, field: &dyn Fn(&str) -> String) -> HttpMatch {
        let mut out = HttpMatch::default();
        if let Some(hosts) = &m.hosts {
            out.hosts = self.hosts(hosts, &field("match.hosts"));
        }
        let paths = [
            (&m.path, "match.path"),
            (&m.path_prefix, "match.path_prefix"),
            (&m.path_pattern, "match.path_pattern"),
        ];
        let given: Vec<_> = paths.iter().filter(|(p, _)| p.is_some()).collect();
        if given.len() > 1 {
            let span = given[1].0.as_ref().map(|p| p.span()).unwrap_or_default();
            self.err(
                &span,
                &field(given[1].1),
                "use only one of match.path, match.path_prefix, match.path_pattern",
            );
        }
        if let Some(p) = &m.path {
            out.path = self
                .path_string(p, &field("match.path"))
                .map(PathMatch::Exact);
        } else if let Some(p) = &m.path_prefix {
            out.path = self
                .path_string(p, &field("match.path_prefix"))
                .map(PathMatch::Prefix);
        } else if let Some(p) = &m.path_pattern {
            if let Some(s) = self.path_string(p, &field("match.path_pattern")) {
                match parse_pattern(&s) {
                    Ok(segs) => out.path = Some(PathMatch::Pattern(segs)),
                    Err(msg) => self.err(&p.span(), &field("match.path_pattern"), &msg),
                }
            }
        }
        if let Some(methods) = &m.methods {
            for v in methods.get_ref() {
                let Some(s) = self.string(v, &field("match.methods")) else {
                    continue;
                };
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
                    self.err(
                        &v.span(),
                        &field("match.methods"),
                        &format!("{s:?} is not an HTTP method"),
                    );
                } else {
                    out.methods.push(s.to_ascii_uppercase());
                }
            }
        }
        if let Some(headers) = &m.headers {
            for (name, value) in headers.get_ref() {
                if !valid_header_name(name) {
                    self.err(
                        &value.span(),
                        &field("match.headers"),
                        &format!("{name:?} is not a header name"),
                    );
                    continue;
                }
                if let Some(v) = self.string(value, &field("match.headers")) {
                    out.headers.push((name.to_ascii_lowercase(), Some(v)));
                }
            }
        }
        if let Some(present) = &m.headers_present {
            for v in present.get_ref() {
                let Some(name) = self.string(v, &field("match.headers_present")) else {
                    continue;
                };
                if valid_header_name(&name) {
                    out.headers.push((name.to_ascii_lowercase(), None));
                } else {
                    self.err(
                        &v.span(),
                        &field("match.headers_present"),
                        &format!("{name:?} is not a header name"),
                    );
                }
            }
        }
        out
    }

    fn path_string(&mut self, v: &S<String>, field: &str) -> Option<String> {
        let s = self.string(v, field)?;
        if !s.starts_with('/') {
            self.err(&v.span(), field, &format!("{s:?} must start with '/'"));
            return None;
        }
        Some(s)
    }

    pub(super) fn http_policy(
        &mut self,
        p: Option<&RawPolicy>,
        field: &dyn Fn(&str) -> String,
    ) -> HttpPolicy {
        let get = |f: fn(&RawPolicy) -> &Option<S<Scalar>>| p.and_then(|p| f(p).as_ref());
        let dur = |cx: &mut Self, v, name: &str, default: u64| {
            cx.required_duration(v, &field(name), Duration::from_secs(default))
        };
        let cnt = |cx: &mut Self, v: Option<&S<Scalar>>, name: &str, default: usize| {
            v.and_then(|v| cx.count(v, &field(name), 1 << 20))
                .map_or(default, |n| n as usize)
        };
        let pool_max_connections = cnt(
            self,
            get(|p| &p.pool_max_connections),
            "policy.pool_max_connections",
            1024,
        );
        let pool_max_per_client = cnt(
            self,
            get(|p| &p.pool_max_per_client),
            "policy.pool_max_per_client",
            pool_max_connections.div_ceil(2),
        );
        HttpPolicy {
            max_body_size: get(|p| &p.max_body_size)
                .and_then(|v| self.size(v, &field("policy.max_body_size")))
                .unwrap_or(DEFAULT_MAX_BODY),
            allow_chunked_requests: p
                .and_then(|p| p.allow_chunked_requests.as_ref())
                .is_none_or(|b| *b.get_ref()),
            allow_upgrade: p
                .and_then(|p| p.allow_upgrade.as_ref())
                .is_some_and(|b| *b.get_ref()),
            allow_domain_fronting: p
                .and_then(|p| p.allow_domain_fronting.as_ref())
                .is_some_and(|b| *b.get_ref()),
            pool_reuse_non_idempotent: p
                .and_then(|p| p.pool_reuse_non_idempotent.as_ref())
                .is_some_and(|b| *b.get_ref()),
            response_header_timeout: dur(
                self,
                get(|p| &p.response_header_timeout),
                "policy.response_header_timeout",
                60,
            ),
            upstream_body_idle_timeout: dur(
                self,
                get(|p| &p.upstream_body_idle_timeout),
                "policy.upstream_body_idle_timeout",
                60,
            ),
            client_body_idle_timeout: dur(
                self,
                get(|p| &p.client_body_idle_timeout),
                "policy.client_body_idle_timeout",
                30,
            ),
            request_timeout: self.optional_duration(
                get(|p| &p.request_timeout),
                &field("policy.request_timeout"),
                None,
            ),
            pool_max_idle: cnt(self, get(|p| &p.pool_max_idle), "policy.pool_max_idle", 64),
            pool_max_connections,
            pool_max_per_client,
            pool_idle_timeout: dur(
                self,
                get(|p| &p.pool_idle_timeout),
                "policy.pool_idle_timeout",
                60,
            ),
            pool_wait_timeout: dur(
                self,
                get(|p| &p.pool_wait_timeout),
                "policy.pool_wait_timeout",
                5,
            ),
        }
    }

    /// A size in bytes (a number, or a string like "64KiB"); zero is an error.
    pub(super) fn size(&mut self, v: &S<Scalar>, field: &str) -> Option<u64> {
        let text = self.scalar_text(v, field)?;
        match size::parse(&text) {
            Ok(0) => self.err(&v.span(), field, "must be larger than zero"),
            Ok(n) => return Some(n),
            Err(m) => self.err(&v.span(), field, &m),
        }
        None
    }
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `/users/{id}/files/{*rest}` → segments.
pub fn parse_pattern(s: &str) -> Result<Vec<Segment>, String> {
    let parts: Vec<&str> = s[1..].split('/').collect();
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let seg = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) if name.starts_with('*') => {
                if i != parts.len() - 1 {
                    return Err(format!(
                        "{s:?}: {{*{}}} must be the last segment",
                        &name[1..]
                    ));
                }
                Segment::Rest(name[1..].to_string())
            }
            Some(name)
                if !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                Segment::Param(name.to_string())
            }
            Some(name) => return Err(format!("{s:?}: {{{name}}} is not a parameter name")),
            None if part.contains('{') || part.contains('}') => {
                return Err(format!("{s:?}: braces must enclose a whole segment"));
            }
            None => Segment::Literal((*part).to_string()),
        };
        out.push(seg);
    }
    Ok(out)
}
