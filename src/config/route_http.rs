//! A route's HTTP settings beside its action: request mirroring to a
//! shadow cluster (`mirror`) and what its access-log lines never show
//! (`log_redact`).

use std::time::Duration;

use http::HeaderName;

use super::Ctx;
use super::cluster::ClusterConfig;
use super::filter::{FilterConfig, FilterKind, KeyPlace};
use super::raw::{RawLogRedact, RawMirror, S};

/// Copies of a route's requests sent to a shadow cluster, fire and forget:
/// the response is read and dropped, a failure is only counted.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorConfig {
    /// Index into `Config::clusters`.
    pub cluster: usize,
    /// Share of requests mirrored, 1 to 100.
    pub percent: u32,
    /// A request whose body is longer is not mirrored (its copy would
    /// have to be held until the body's end).
    pub max_body: u64,
    /// The shadow exchange's whole deadline.
    pub timeout: Duration,
}

/// Headers and query parameters whose values a route's log lines show as
/// "(redacted)", on top of the built-in sensitive ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogRedact {
    /// As configured (lower case).
    pub headers: Vec<HeaderName>,
    pub query: Vec<String>,
    /// Where the route's own filters read credentials (an `api_key`
    /// header or query parameter): redacted without being named.
    pub implied_headers: Vec<HeaderName>,
    pub implied_query: Vec<String>,
}

impl LogRedact {
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
            && self.query.is_empty()
            && self.implied_headers.is_empty()
            && self.implied_query.is_empty()
    }

    /// Whether the header `name` (lower case, as `HeaderName`s are) is
    /// redacted on this route.
    pub fn header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .chain(&self.implied_headers)
            .any(|h| h.as_str() == name)
    }

    /// Whether the query parameter `name` is redacted on this route
    /// (names compared without case).
    pub fn query(&self, name: &str) -> bool {
        self.query
            .iter()
            .chain(&self.implied_query)
            .any(|q| q.eq_ignore_ascii_case(name))
    }
}

impl Ctx<'_> {
    pub(super) fn mirror(
        &mut self,
        v: &S<RawMirror>,
        on_http: bool,
        field: &dyn Fn(&str) -> String,
        clusters: &[ClusterConfig],
    ) -> Option<MirrorConfig> {
        let m = v.get_ref();
        if !on_http {
            self.err(
                &v.span(),
                &field("mirror"),
                "mirroring copies HTTP requests: it needs match.listener naming an HTTP listener (or only HTTP listeners)",
            );
            return None;
        }
        let cluster = self.named_cluster(&m.cluster, &field("mirror.cluster"), clusters);
        let percent = match &m.percent {
            None => Some(100),
            Some(p) => self
                .count(p, &field("mirror.percent"), 100)
                .map(|n| n as u32),
        };
        let max_body = match &m.max_body {
            None => Some(64 * 1024),
            Some(s) => self.size(s, &field("mirror.max_body")),
        };
        let timeout = self.required_duration(
            m.timeout.as_ref(),
            &field("mirror.timeout"),
            Duration::from_secs(5),
        );
        Some(MirrorConfig {
            cluster: cluster?,
            percent: percent?,
            max_body: max_body?,
            timeout,
        })
    }

    /// The route's redaction lists, with the places its filters read
    /// credentials from.
    pub(super) fn log_redact(
        &mut self,
        v: Option<&S<RawLogRedact>>,
        route_filters: &[usize],
        filters: &[FilterConfig],
        field: &dyn Fn(&str) -> String,
    ) -> LogRedact {
        let mut out = LogRedact::default();
        if let Some(r) = v.map(|v| v.get_ref()) {
            if let Some(list) = &r.headers {
                out.headers = list
                    .get_ref()
                    .iter()
                    .filter_map(|h| self.header_name(h, &field("log_redact.headers")))
                    .collect();
            }
            if let Some(list) = &r.query {
                for q in list.get_ref() {
                    match self.string(q, &field("log_redact.query")) {
                        Some(name) if name.is_empty() => {
                            self.err(&q.span(), &field("log_redact.query"), "must not be empty")
                        }
                        Some(name) => out.query.push(name.to_ascii_lowercase()),
                        None => {}
                    }
                }
            }
        }
        for f in route_filters.iter().filter_map(|&i| filters.get(i)) {
            if let FilterKind::ApiKey(k) = &f.kind {
                match &k.place {
                    KeyPlace::Header(h) => out.implied_headers.push(h.clone()),
                    KeyPlace::Query(q) => out.implied_query.push(q.to_ascii_lowercase()),
                }
            }
        }
        out
    }
}
