//! A cluster's policy: how it balances (`balance`, `hash_key`), what it
//! does when no endpoint is usable (`panic`), its cap on requests in
//! flight (`max_requests`), its active health check (`health`), its
//! passive health (`outlier`) and its retries (`retries`). A route's
//! `action.forward` cluster has the defaults.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use super::Ctx;
use super::raw::{RawCluster, RawHealth, RawOutlier, RawRetries, S, Scalar};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalanceConfig {
    RoundRobin,
    LeastRequest,
    PeakEwma,
    Hash(HashKey),
}

/// What a request is hashed on (`balance = "hash"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Path,
    Header(HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPolicy {
    pub balance: BalanceConfig,
    pub panic: bool,
    /// Sticky sessions by this cookie (HTTP).
    pub sticky_cookie: Option<String>,
    pub max_requests: Option<u32>,
    /// Requests (or L4 connections) in flight to one endpoint at most: a
    /// full endpoint is passed over.
    pub max_requests_per_endpoint: Option<u32>,
    pub health: Option<HealthCheck>,
    pub outlier: OutlierConfig,
    pub retries: RetryConfig,
}

impl Default for ClusterPolicy {
    fn default() -> Self {
        ClusterPolicy {
            balance: BalanceConfig::RoundRobin,
            panic: false,
            sticky_cookie: None,
            max_requests: None,
            max_requests_per_endpoint: None,
            health: None,
            outlier: OutlierConfig::default(),
            retries: RetryConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: Probe,
    /// Probes over TLS (verified): a handshake, or HTTPS.
    pub tls: Option<super::UpstreamTls>,
    /// Between probes of an endpoint (each waits this ± 10 %).
    pub interval: Duration,
    pub timeout: Duration,
    /// Passing probes in a row that make an unhealthy endpoint healthy.
    pub healthy_threshold: u32,
    /// Failing probes in a row that make an endpoint unhealthy.
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect.
    Tcp,
    Http(HttpProbe),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    pub method: Method,
    pub path: String,
    /// `Host`: the endpoint's configured `host:port` unless set.
    pub host: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Statuses that pass: inclusive ranges.
    pub expect_status: Vec<(u16, u16)>,
    pub body_contains: Option<String>,
}

/// Passive health: consecutive failures (connect failures, resets,
/// timeouts, 5xx) eject an endpoint for `base` × its ejections, at most
/// `max`; at most `max_percent` of the cluster's endpoints at once
/// (rounded down: the only endpoint of a cluster is never ejected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// 0: never eject.
    pub consecutive: u32,
    pub base: Duration,
    pub max: Duration,
    pub max_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive: 3,
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
            max_percent: 50,
        }
    }
}

/// Retries: a connect failure always may go to another endpoint (the
/// request was not sent); a reset or a closed connection before the
/// response, a response timeout, or a listed status, only for idempotent
/// requests whose body (if any) was not taken. All within `attempts` and
/// the budget: retries in flight at most `budget_percent` of the
/// cluster's requests in flight, or `min_concurrent`, whichever is more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    pub attempts: u32,
    pub on_reset: bool,
    pub on_timeout: bool,
    pub statuses: Vec<u16>,
    pub budget_percent: u32,
    pub min_concurrent: u32,
    pub backoff: Duration,
    /// Bodies of idempotent requests up to this size (a known length) are
    /// read whole first and kept, to be sent again; 0: none is.
    pub body_limit: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 2,
            on_reset: true,
            on_timeout: false,
            statuses: Vec::new(),
            budget_percent: 20,
            min_concurrent: 3,
            backoff: Duration::from_millis(10),
            body_limit: 0,
        }
    }
}

impl Ctx<'_> {
    pub(super) fn cluster_policy(&mut self, c: &RawCluster, at: &str) -> ClusterPolicy {
        let field = |f: &str| format!("{at}.{f}");
        let mut p = ClusterPolicy::default();
        let hash_key = c
            .hash_key
            .as_ref()
            .and_then(|k| self.hash_key(k, &field("hash_key")));
        if let Some(b) = &c.balance {
            let name = self.string(b, &field("balance")).unwrap_or_default();
            p.balance = match name.as_str() {
                "round_robin" => BalanceConfig::RoundRobin,
                "least_request" => BalanceConfig::LeastRequest,
                "peak_ewma" => BalanceConfig::PeakEwma,
                "hash" => match hash_key.clone() {
                    Some(k) => BalanceConfig::Hash(k),
                    None => {
                        if c.hash_key.is_none() {
                            self.err(
                                &b.span(),
                                &field("balance"),
                                "\"hash\" needs hash_key: \"client_ip\", \"path\", \"header:NAME\" or \"cookie:NAME\"",
                            );
                        }
                        BalanceConfig::RoundRobin
                    }
                },
                other => {
                    self.err(
                        &b.span(),
                        &field("balance"),
                        &format!("unknown balance {other:?}: \"round_robin\", \"least_request\", \"peak_ewma\" or \"hash\""),
                    );
                    BalanceConfig::RoundRobin
                }
            };
        }
        // (A hash key that is not one was named already.)
        let hashing = matches!(p.balance, BalanceConfig::Hash(_));
        if let (Some(k), Some(key), false) = (&c.hash_key, hash_key, hashing) {
            if c.balance.as_ref().is_some_and(|b| b.get_ref() != "hash") {
                self.err(
                    &k.span(),
                    &field("hash_key"),
                    "only with balance = \"hash\"",
                );
            } else {
                // (hash_key alone asks for hashing.)
                p.balance = BalanceConfig::Hash(key);
            }
        }
        p.panic = c.panic.as_ref().is_some_and(|b| *b.get_ref());
        if let Some(v) = &c.sticky_cookie {
            let name = self.string(v, &field("sticky_cookie")).unwrap_or_default();
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(token) {
                self.err(
                    &v.span(),
                    &field("sticky_cookie"),
                    &format!("{name:?} is not a cookie name"),
                );
            } else {
                p.sticky_cookie = Some(name);
            }
        }
        p.max_requests = c
            .max_requests
            .as_ref()
            .and_then(|m| self.count(m, &field("max_requests"), u64::from(u32::MAX)))
            .map(|n| n as u32);
        p.max_requests_per_endpoint = c
            .max_requests_per_endpoint
            .as_ref()
            .and_then(|m| self.count(m, &field("max_requests_per_endpoint"), u64::from(u32::MAX)))
            .map(|n| n as u32);
        p.health = c
            .health
            .as_ref()
            .and_then(|h| self.health(h, &field("health")));
        if let Some(o) = &c.outlier {
            p.outlier = self.outlier(o.get_ref(), &field("outlier"));
        }
        if let Some(r) = &c.retries {
            p.retries = self.retries(r.get_ref(), &field("retries"));
        }
        p
    }

    fn hash_key(&mut self, v: &S<String>, field: &str) -> Option<HashKey> {
        let text = self.string(v, field)?;
        let key = match text.split_once(':') {
            None if text == "client_ip" => Some(HashKey::ClientIp),
            None if text == "path" => Some(HashKey::Path),
            Some(("header", name)) => HeaderName::from_bytes(name.trim().as_bytes())
                .ok()
                .map(HashKey::Header),
            Some(("cookie", name)) if !name.trim().is_empty() => {
                Some(HashKey::Cookie(name.trim().to_owned()))
            }
            _ => None,
        };
        if key.is_none() {
            self.err(
                &v.span(),
                field,
                &format!("{text:?} is not a hash key: \"client_ip\", \"path\", \"header:NAME\" or \"cookie:NAME\" with a name"),
            );
        }
        key
    }

    fn threshold(&mut self, v: Option<&S<Scalar>>, field: &str, default: u32) -> u32 {
        v.and_then(|v| self.count(v, field, 100))
            .map_or(default, |n| n as u32)
    }

    fn health(&mut self, h: &S<RawHealth>, at: &str) -> Option<HealthCheck> {
        let field = |f: &str| format!("{at}.{f}");
        let r = h.get_ref();
        let kind = match &r.kind {
            Some(k) => self.string(k, &field("kind"))?,
            None => "http".to_owned(),
        };
        let probe = match kind.as_str() {
            "tcp" => {
                let http_only = [
                    (r.path.as_ref().map(S::span), "path"),
                    (r.method.as_ref().map(S::span), "method"),
                    (r.host.as_ref().map(S::span), "host"),
                    (r.body_contains.as_ref().map(S::span), "body_contains"),
                    (r.expect_status.as_ref().map(S::span), "expect_status"),
                    (r.headers.as_ref().map(S::span), "headers"),
                ];
                for (span, name) in http_only {
                    if let Some(span) = span {
                        self.err(&span, &field(name), "only for kind = \"http\"");
                    }
                }
                Probe::Tcp
            }
            "http" => Probe::Http(self.http_probe(r, at)),
            other => {
                let span = r.kind.as_ref().map_or_else(|| h.span(), S::span);
                self.err(
                    &span,
                    &field("kind"),
                    &format!("unknown kind {other:?}: \"http\" or \"tcp\""),
                );
                return None;
            }
        };
        let interval = self.required_duration(
            r.interval.as_ref(),
            &field("interval"),
            Duration::from_secs(5),
        );
        let timeout = self.required_duration(
            r.timeout.as_ref(),
            &field("timeout"),
            Duration::from_secs(2),
        );
        if timeout > interval {
            let span = r.timeout.as_ref().map_or_else(|| h.span(), S::span);
            self.err(
                &span,
                &field("timeout"),
                &format!("{timeout:?} is longer than the interval ({interval:?})"),
            );
        }
        let tls_on = r.tls.as_ref().is_some_and(|t| *t.get_ref());
        for (v, name) in [(&r.ca, "ca"), (&r.server_name, "server_name")] {
            if let (Some(v), false) = (v, tls_on) {
                self.err(&v.span(), &field(name), "only with tls = true");
            }
        }
        let tls = tls_on.then(|| super::UpstreamTls {
            ca: r.ca.as_ref().and_then(|c| self.file(c, &field("ca"))),
            server_name: r.server_name.as_ref().and_then(|n| {
                let s = self.string(n, &field("server_name"))?;
                if rustls_pki_types::ServerName::try_from(s.as_str()).is_err() {
                    self.err(
                        &n.span(),
                        &field("server_name"),
                        &format!("{s:?} is not a DNS name or IP address"),
                    );
                    return None;
                }
                Some(s)
            }),
            client_cert: None,
        });
        Some(HealthCheck {
            probe,
            tls,
            interval,
            timeout,
            healthy_threshold: self.threshold(
                r.healthy_threshold.as_ref(),
                &field("healthy_threshold"),
                2,
            ),
            unhealthy_threshold: self.threshold(
                r.unhealthy_threshold.as_ref(),
                &field("unhealthy_threshold"),
                3,
            ),
        })
    }

    fn http_probe(&mut self, r: &RawHealth, at: &str) -> HttpProbe {
        let field = |f: &str| format!("{at}.{f}");
        let path = match &r.path {
            Some(p) => {
                let path = self.string(p, &field("path")).unwrap_or_default();
                if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    self.err(
                        &p.span(),
                        &field("path"),
                        "a path starting with / and without spaces",
                    );
                }
                path
            }
            None => "/".to_owned(),
        };
        let method = match &r.method {
            Some(m) => {
                let text = self.string(m, &field("method")).unwrap_or_default();
                match text.as_str() {
                    "GET" | "HEAD" | "OPTIONS" => {
                        Method::from_bytes(text.as_bytes()).unwrap_or(Method::GET)
                    }
                    _ => {
                        self.err(&m.span(), &field("method"), "GET, HEAD or OPTIONS");
                        Method::GET
                    }
                }
            }
            None => Method::GET,
        };
        let host = r.host.as_ref().and_then(|h| {
            let v = self.string(h, &field("host"))?;
            if HeaderValue::from_str(&v).is_err() || v.is_empty() {
                self.err(&h.span(), &field("host"), "not a valid Host value");
                return None;
            }
            Some(v)
        });
        let mut headers = Vec::new();
        if let Some(hs) = &r.headers {
            for (name, value) in hs.get_ref() {
                let f = field(&format!("headers.{name}"));
                let v = self.string(value, &f).unwrap_or_default();
                match (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    (Ok(n), Ok(v)) => headers.push((n, v)),
                    _ => self.err(&value.span(), &f, "not a valid header name and value"),
                }
            }
        }
        let mut expect_status = Vec::new();
        if let Some(list) = &r.expect_status {
            for (j, s) in list.get_ref().iter().enumerate() {
                let f = field(&format!("expect_status[{j}]"));
                if let Some(n) = self.count(s, &f, 599) {
                    if n < 100 {
                        self.err(&s.span(), &f, "a status from 100 to 599");
                    }
                    expect_status.push((n as u16, n as u16));
                }
            }
            if list.get_ref().is_empty() {
                self.err(
                    &list.span(),
                    &field("expect_status"),
                    "list at least one status",
                );
            }
        } else {
            expect_status.push((200, 399));
        }
        let body_contains = r
            .body_contains
            .as_ref()
            .and_then(|b| self.string(b, &field("body_contains")));
        HttpProbe {
            method,
            path,
            host,
            headers,
            expect_status,
            body_contains,
        }
    }

    fn outlier(&mut self, o: &RawOutlier, at: &str) -> OutlierConfig {
        let field = |f: &str| format!("{at}.{f}");
        let mut out = OutlierConfig::default();
        if let Some(v) = &o.consecutive_failures {
            let off = matches!(v.get_ref(), Scalar::Str(s) if s.trim() == "off");
            out.consecutive = if off {
                0
            } else {
                self.count(v, &field("consecutive_failures"), 1000)
                    .map_or(out.consecutive, |n| n as u32)
            };
        }
        out.base =
            self.required_duration(o.base_ejection.as_ref(), &field("base_ejection"), out.base);
        out.max = self.required_duration(o.max_ejection.as_ref(), &field("max_ejection"), out.max);
        if out.max < out.base {
            let span = o
                .max_ejection
                .as_ref()
                .or(o.base_ejection.as_ref())
                .map(S::span);
            if let Some(span) = span {
                self.err(
                    &span,
                    &field("max_ejection"),
                    &format!("shorter than base_ejection ({:?})", out.base),
                );
            }
        }
        if let Some(v) = &o.max_ejected_percent {
            out.max_percent = self
                .count(v, &field("max_ejected_percent"), 100)
                .map_or(out.max_percent, |n| n as u32);
        }
        out
    }

    fn retries(&mut self, r: &RawRetries, at: &str) -> RetryConfig {
        let field = |f: &str| format!("{at}.{f}");
        let mut out = RetryConfig::default();
        if let Some(v) = &r.attempts {
            out.attempts = self
                .count(v, &field("attempts"), 10)
                .map_or(out.attempts, |n| n as u32);
        }
        if let Some(on) = &r.on {
            out.on_reset = false;
            let mut status = false;
            for (j, what) in on.get_ref().iter().enumerate() {
                let f = field(&format!("on[{j}]"));
                match self.string(what, &f).as_deref() {
                    Some("reset") => out.on_reset = true,
                    Some("timeout") => out.on_timeout = true,
                    Some("status") => status = true,
                    Some(other) => self.err(
                        &what.span(),
                        &f,
                        &format!("{other:?}: \"reset\", \"timeout\" or \"status\" (connect failures are always retried)"),
                    ),
                    None => {}
                }
            }
            if status && r.statuses.is_none() {
                self.err(
                    &on.span(),
                    &field("on"),
                    "\"status\" needs statuses = [502, 503, 504]",
                );
            }
        }
        if let Some(list) = &r.statuses {
            for (j, s) in list.get_ref().iter().enumerate() {
                let f = field(&format!("statuses[{j}]"));
                match self.count(s, &f, 599) {
                    Some(n) if n >= 500 => out.statuses.push(n as u16),
                    Some(_) => self.err(&s.span(), &f, "only 5xx statuses are retried"),
                    None => {}
                }
            }
            let listed =
                r.on.as_ref()
                    .is_some_and(|on| on.get_ref().iter().any(|w| w.get_ref() == "status"));
            if !listed {
                self.err(&list.span(), &field("statuses"), "add \"status\" to on");
            }
        }
        if let Some(v) = &r.budget_percent {
            out.budget_percent = self
                .count(v, &field("budget_percent"), 100)
                .map_or(out.budget_percent, |n| n as u32);
        }
        if let Some(v) = &r.min_concurrent {
            out.min_concurrent = self
                .count(v, &field("min_concurrent"), 10_000)
                .map_or(out.min_concurrent, |n| n as u32);
        }
        out.backoff = self.required_duration(r.backoff.as_ref(), &field("backoff"), out.backoff);
        if let Some(v) = &r.body_limit {
            out.body_limit = self.size(v, &field("body_limit")).unwrap_or(0);
        }
        out
    }
}

impl ClusterPolicy {
    /// Its settings in the config file's keys (`check --print`).
    pub(super) fn print(&self, t: &mut toml::Table, duration: fn(Duration) -> String) {
        use toml::Value;
        let put = |t: &mut toml::Table, k: &str, v: Value| {
            t.insert(k.to_owned(), v);
        };
        let int = |n: u64| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        let balance = match &self.balance {
            BalanceConfig::RoundRobin => "round_robin",
            BalanceConfig::LeastRequest => "least_request",
            BalanceConfig::PeakEwma => "peak_ewma",
            BalanceConfig::Hash(key) => {
                let key = match key {
                    HashKey::ClientIp => "client_ip".to_owned(),
                    HashKey::Path => "path".to_owned(),
                    HashKey::Header(h) => format!("header:{h}"),
                    HashKey::Cookie(c) => format!("cookie:{c}"),
                };
                put(t, "hash_key", Value::String(key));
                "hash"
            }
        };
        put(t, "balance", Value::String(balance.into()));
        put(t, "panic", Value::Boolean(self.panic));
        if let Some(c) = &self.sticky_cookie {
            put(t, "sticky_cookie", Value::String(c.clone()));
        }
        if let Some(m) = self.max_requests {
            put(t, "max_requests", int(u64::from(m)));
        }
        if let Some(m) = self.max_requests_per_endpoint {
            put(t, "max_requests_per_endpoint", int(u64::from(m)));
        }
        if let Some(h) = &self.health {
            let mut ht = toml::Table::new();
            match &h.probe {
                Probe::Tcp => put(&mut ht, "kind", Value::String("tcp".into())),
                Probe::Http(p) => {
                    put(&mut ht, "kind", Value::String("http".into()));
                    put(&mut ht, "method", Value::String(p.method.to_string()));
                    put(&mut ht, "path", Value::String(p.path.clone()));
                    if let Some(host) = &p.host {
                        put(&mut ht, "host", Value::String(host.clone()));
                    }
                    if !p.headers.is_empty() {
                        let mut hs = toml::Table::new();
                        for (n, v) in &p.headers {
                            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                            put(&mut hs, n.as_str(), Value::String(v));
                        }
                        put(&mut ht, "headers", Value::Table(hs));
                    }
                    if p.expect_status != [(200, 399)] {
                        let list = p.expect_status.iter().map(|&(s, _)| int(u64::from(s)));
                        put(&mut ht, "expect_status", Value::Array(list.collect()));
                    }
                    if let Some(b) = &p.body_contains {
                        put(&mut ht, "body_contains", Value::String(b.clone()));
                    }
                }
            }
            if let Some(tls) = &h.tls {
                put(&mut ht, "tls", Value::Boolean(true));
                if let Some(ca) = &tls.ca {
                    put(&mut ht, "ca", Value::String(ca.display().to_string()));
                }
                if let Some(n) = &tls.server_name {
                    put(&mut ht, "server_name", Value::String(n.clone()));
                }
            }
            put(&mut ht, "interval", Value::String(duration(h.interval)));
            put(&mut ht, "timeout", Value::String(duration(h.timeout)));
            put(
                &mut ht,
                "healthy_threshold",
                int(u64::from(h.healthy_threshold)),
            );
            put(
                &mut ht,
                "unhealthy_threshold",
                int(u64::from(h.unhealthy_threshold)),
            );
            put(t, "health", Value::Table(ht));
        }
        let o = &self.outlier;
        let mut ot = toml::Table::new();
        let consecutive = if o.consecutive == 0 {
            Value::String("off".into())
        } else {
            int(u64::from(o.consecutive))
        };
        put(&mut ot, "consecutive_failures", consecutive);
        put(&mut ot, "base_ejection", Value::String(duration(o.base)));
        put(&mut ot, "max_ejection", Value::String(duration(o.max)));
        put(
            &mut ot,
            "max_ejected_percent",
            int(u64::from(o.max_percent)),
        );
        put(t, "outlier", Value::Table(ot));
        let r = &self.retries;
        let mut rt = toml::Table::new();
        put(&mut rt, "attempts", int(u64::from(r.attempts)));
        let mut on = Vec::new();
        if r.on_reset {
            on.push(Value::String("reset".into()));
        }
        if r.on_timeout {
            on.push(Value::String("timeout".into()));
        }
        if !r.statuses.is_empty() {
            on.push(Value::String("status".into()));
            let list = r.statuses.iter().map(|&s| int(u64::from(s)));
            put(&mut rt, "statuses", Value::Array(list.collect()));
        }
        put(&mut rt, "on", Value::Array(on));
        put(&mut rt, "budget_percent", int(u64::from(r.budget_percent)));
        put(&mut rt, "min_concurrent", int(u64::from(r.min_concurrent)));
        put(&mut rt, "backoff", Value::String(duration(r.backoff)));
        if r.body_limit > 0 {
            put(&mut rt, "body_limit", int(r.body_limit));
        }
        put(t, "retries", Value::Table(rt));
    }
}
