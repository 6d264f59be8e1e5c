//! One access-log line and one set of metric updates per request, written
//! when the request's record is dropped: after the response body's last
//! byte, when the client goes away, or when the proxy answers itself.
//! No request or response header is logged, so credentials
//! (`Authorization`, `Cookie`, `Set-Cookie`, `Proxy-Authorization`, …) and
//! the query string (often a carrier of tokens) never reach the log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::error::RequestEnd;
use crate::metrics::{Metrics, RouteStats};

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
        RequestLog {
            metrics,
            access_log,
            conn,
            started: Instant::now(),
            // Only the access log line reads these: no copies without it.
            method: if access_log {
                method.to_owned()
            } else {
                String::new()
            },
            host: if access_log {
                host.to_owned()
            } else {
                String::new()
            },
            path: if access_log {
                path.to_owned()
            } else {
                String::new()
            },
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
        }
    }

    /// Counts the request against its route; returns the requests that
    /// were already in flight there.
    pub fn set_route(&mut self, route: &Arc<RouteStats>) -> i64 {
        let before = route.http_in_flight.fetch_add(1, Ordering::Relaxed);
        self.route = Some(route.clone());
        before
    }
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
        if self.access_log {
            tracing::info!(
                target: "gatehouse::access",
                conn = self.conn,
                request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok()),
                method = %self.method,
                host = %self.host,
                path = %self.path,
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
                // (A normal end blames no one.)
                side = (self.end != RequestEnd::Ok).then(|| self.end.side().as_str()),
                "request"
            );
        }
    }
}
