//! One access-log line and one set of metric updates per request, written
//! when the request's record is dropped: after the response body's last
//! byte, when the client goes away, or when the proxy answers itself.
//! Only the request headers the listener names (`access_log_headers`) are
//! logged, and the query string (`access_log_query`); the values of
//! sensitive ones — built-in names (`SENSITIVE_HEADERS`,
//! `SENSITIVE_QUERY`), the route's `log_redact` lists, and where its own
//! filters read credentials — are written as "(redacted)".

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::error::RequestEnd;
use crate::config::{HttpListener, LogRedact};
use crate::metrics::{Metrics, RouteStats};

/// Request headers whose values are never logged, on every route.
pub const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
    "x-csrf-token",
    "x-xsrf-token",
    "x-amz-security-token",
];

/// Query parameters whose values are never logged (names without case).
pub const SENSITIVE_QUERY: &[&str] = &[
    "access_token",
    "id_token",
    "refresh_token",
    "token",
    "api_key",
    "apikey",
    "key",
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "code",
    "auth",
    "jwt",
    "session",
    "sessionid",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
];

const REDACTED: &str = "(redacted)";

pub struct RequestLog {
    pub metrics: Arc<Metrics>,
    pub access_log: bool,
    pub conn: u64,
    pub started: Instant,
    pub method: String,
    pub host: String,
    pub path: String,
    pub route: Option<Arc<RouteStats>>,
    pub upstream: Option<SocketAddr>,
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub connect: Option<Duration>,
    /// Attempts on endpoints (more than one: retried).
    pub attempts: u32,
    pub headers_received: Option<Duration>,
    pub end: RequestEnd,
    pub finished: bool,
    /// The request body's counters, read when the record ends.
    pub request_body: Option<Arc<super::body::BodyOutcome>>,
    /// Its id (a `request_id` filter's).
    pub request_id: Option<http::HeaderValue>,
    /// A gRPC request: the proxy's own failures are answered as gRPC.
    pub grpc: bool,
    /// Its trace context (`[tracing]`).
    pub trace: Option<crate::trace::Span>,
    /// The query string as received, for the access line (redacted there).
    query: Option<Box<str>>,
    /// The listener's `access_log_headers` of the request, as received.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The route's redaction lists, when it has any and something to redact.
    redact: Option<Arc<LogRedact>>,
}

impl RequestLog {
    pub fn new(
        metrics: Arc<Metrics>,
        access_log: bool,
        conn: u64,
        method: &str,
        host: &str,
        path: &str,
    ) -> RequestLog {
        // (Only the access log line and exported spans read these.)
        let keep = access_log || crate::trace::exporting();
        RequestLog {
            metrics,
            access_log,
            conn,
            started: Instant::now(),
            method: if keep {
                method.to_owned()
            } else {
                String::new()
            },
            host: if keep { host.to_owned() } else { String::new() },
            path: if keep { path.to_owned() } else { String::new() },
            route: None,
            upstream: None,
            status: 0,
            bytes_up: 0,
            bytes_down: 0,
            connect: None,
            attempts: 0,
            headers_received: None,
            end: RequestEnd::Ok,
            finished: false,
            request_body: None,
            request_id: None,
            grpc: false,
            trace: None,
            query: None,
            headers: Vec::new(),
            redact: None,
        }
    }

    /// Keeps what the listener logs of the request beyond its line: the
    /// query string and the named headers (with an access log only).
    pub fn capture(&mut self, http: &HttpListener, query: Option<&str>, headers: &HeaderMap) {
        if !self.access_log {
            return;
        }
        if http.access_log_query {
            self.query = query.filter(|q| !q.is_empty()).map(Box::from);
        }
        for name in &http.access_log_headers {
            for v in headers.get_all(name) {
                self.headers.push((name.clone(), v.clone()));
            }
        }
    }

    /// The route's redaction lists apply to this line (a route with some,
    /// and something captured).
    pub fn redact_for(&mut self, redact: &Arc<LogRedact>) {
        if !redact.is_empty() && (self.query.is_some() || !self.headers.is_empty()) {
            self.redact = Some(redact.clone());
        }
    }

    /// The query string with the values of sensitive parameters redacted.
    fn logged_query(&self) -> Option<String> {
        let q = self.query.as_deref()?;
        let mut out = String::with_capacity(q.len());
        for (i, pair) in q.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let (name, value) = match pair.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (pair, None),
            };
            out.push_str(name);
            if let Some(v) = value {
                out.push('=');
                let decoded = percent_decoded(name);
                let secret = SENSITIVE_QUERY
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(&decoded))
                    || self.redact.as_ref().is_some_and(|r| r.query(&decoded));
                out.push_str(if secret { REDACTED } else { v });
            }
        }
        Some(out)
    }

    /// The captured headers as `name: value` pairs, sensitive values
    /// redacted (values that are not text shown escaped).
    fn logged_headers(&self) -> Option<String> {
        if self.headers.is_empty() {
            return None;
        }
        let mut out = String::new();
        for (i, (name, value)) in self.headers.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            out.push_str(name.as_str());
            out.push_str(": ");
            let secret = SENSITIVE_HEADERS.contains(&name.as_str())
                || self
                    .redact
                    .as_ref()
                    .is_some_and(|r| r.header(name.as_str()));
            if secret {
                out.push_str(REDACTED);
            } else {
                out.extend(String::from_utf8_lossy(value.as_bytes()).escape_debug());
            }
        }
        Some(out)
    }

    /// Counts the request against its route; returns the requests that
    /// were already in flight there.
    pub fn set_route(&mut self, route: &Arc<RouteStats>) -> i64 {
        let before = route.http_in_flight.fetch_add(1, Ordering::Relaxed);
        self.route = Some(route.clone());
        before
    }
}

/// A query parameter's name with `%XX` escapes and `+` decoded (so an
/// escaped name is recognized), lossily as text.
fn percent_decoded(name: &str) -> String {
    let b = name.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = match b.get(i..i + 3) {
            Some([b'%', h, l]) => hex(*h).zip(hex(*l)).map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match (escaped, b[i]) {
            (Some(c), _) => {
                out.push(c);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Milliseconds, to the microsecond.
fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let total = self.started.elapsed();
        if !self.finished && self.end == RequestEnd::Ok {
            // Dropped before a response: the client went away (an HTTP/2
            // stream reset, a closed connection) while we waited upstream.
            self.end = RequestEnd::ClientAborted;
            if self.status == 0 {
                self.status = 499;
            }
        }
        if let Some(b) = &self.request_body {
            self.bytes_up = b.bytes();
        }
        let stats = self.metrics.route_or_none(self.route.as_ref());
        if self.route.is_some() {
            stats.http_in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        stats.http_status[(self.status as usize / 100).min(5)].fetch_add(1, Ordering::Relaxed);
        stats.http_end[self.end.index()].fetch_add(1, Ordering::Relaxed);
        stats.http_latency.observe(total);
        // (A normal end blames no one.)
        let side = (self.end != RequestEnd::Ok).then(|| self.end.side().as_str());
        if let Some(span) = &self.trace {
            crate::trace::finish(
                span,
                &crate::trace::Outcome {
                    method: &self.method,
                    path: &self.path,
                    host: &self.host,
                    route: self.route.as_ref().map(|r| &*r.name),
                    status: self.status,
                    upstream: self.upstream,
                    end: self.end.as_str(),
                    side,
                    duration: total,
                },
            );
        }
        if self.access_log {
            tracing::info!(
                target: "gatehouse::access",
                conn = self.conn,
                request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok()),
                trace_id = self.trace.as_ref().map(crate::trace::Span::trace_id_hex),
                method = %self.method,
                host = %self.host,
                path = %self.path,
                query = self.logged_query(),
                headers = self.logged_headers(),
                route = self.route.as_ref().map(|r| &*r.name),
                status = self.status,
                bytes_up = self.bytes_up,
                bytes_down = self.bytes_down,
                upstream = self.upstream.map(|u| u.to_string()),
                attempts = (self.attempts > 1).then_some(self.attempts),
                connect_ms = self.connect.map(ms),
                headers_ms = self.headers_received.map(ms),
                total_ms = ms(total),
                reason = self.end.as_str(),
                side,
                "request"
            );
        }
    }
}
