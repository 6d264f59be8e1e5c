//! `gatehouse check --print`: the effective config, every default filled
//! in, written back in the config file's own keys, so that the output is
//! itself a config that `check` accepts (and prints the same way again).
//! Values from `${VAR}` appear substituted.

mod filters;

use std::time::Duration;

use toml::{Table, Value};

use super::http::{HostMatch, PathMatch, Segment};
use super::tls::{AcmeChallenge, CertSource, TlsMode, TlsVersion, UpstreamProtocol};
use super::{Config, LogFormat, ProxyVersion, RouteAction, RouteConfig};

/// The config as TOML text.
pub fn print(c: &Config) -> String {
    let mut out = String::from(
        "# The effective config: every setting with the value in force.\n\
         # limits.max_connections, when not written, is 10,000 or what the\n\
         # descriptor limit allows; a route's max_connections, when absent,\n\
         # is not limited.\n",
    );
    out.push_str(&toml::to_string(&document(c)).unwrap_or_default());
    out
}

fn document(c: &Config) -> Table {
    let mut doc = Table::new();
    put(&mut doc, "workers", c.workers as i64);
    if let Some(i) = &c.instance {
        put(&mut doc, "instance", i.as_str());
    }
    let mut admin = Table::new();
    match c.admin {
        Some(a) => put(&mut admin, "bind", a.to_string()),
        None => put(&mut admin, "enabled", false),
    }
    // (Where the token is, never its value.)
    match c.admin_access.token.as_ref().map(|t| &t.source) {
        Some(super::TokenSource::File(p)) => put(&mut admin, "token_file", p.display().to_string()),
        Some(super::TokenSource::Env(n)) => put(&mut admin, "token_env", n.as_str()),
        None => {}
    }
    put(&mut admin, "public_reads", c.admin_access.public_reads);
    if let Some(t) = &c.admin_tls {
        let mut tls = Table::new();
        put(&mut tls, "cert", t.cert.display().to_string());
        put(&mut tls, "key", t.key.display().to_string());
        if let Some(ca) = &t.client_ca {
            put(&mut tls, "client_ca", ca.display().to_string());
        }
        put(&mut admin, "tls", tls);
    }
    put(&mut doc, "admin", admin);
    let mut registry = Table::new();
    if let Some(d) = &c.registry.data_dir {
        put(&mut registry, "data_dir", d.display().to_string());
    }
    put(
        &mut registry,
        "max_instances",
        c.registry.max_instances as i64,
    );
    put(&mut doc, "registry", registry);
    if let Some(t) = &c.tracing {
        let mut tracing = Table::new();
        if let Some(e) = &t.otlp_endpoint {
            put(&mut tracing, "otlp_endpoint", e.as_str());
        }
        put(&mut tracing, "sample_percent", i64::from(t.sample_percent));
        put(&mut tracing, "service_name", t.service_name.as_str());
        put(&mut doc, "tracing", tracing);
    }
    let mut log = Table::new();
    put(&mut log, "level", c.log.level.as_str());
    let format = match c.log.format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    put(&mut log, "format", format);
    put(&mut doc, "log", log);

    let t = &c.timeouts;
    let mut timeouts = Table::new();
    put(&mut timeouts, "connect", duration(t.connect));
    put(&mut timeouts, "proxy_header", duration(t.proxy_header));
    put(&mut timeouts, "idle", off(t.idle));
    put(&mut timeouts, "max_lifetime", off(t.max_lifetime));
    put(&mut timeouts, "shutdown_drain", duration(t.shutdown_drain));
    put(&mut timeouts, "route_drain", duration(t.route_drain));
    put(&mut timeouts, "tls_handshake", duration(t.tls_handshake));
    put(&mut timeouts, "client_send", duration(t.client_send));
    put(&mut doc, "timeouts", timeouts);

    let mut limits = Table::new();
    if let Some(n) = c.limits.max_connections {
        put(&mut limits, "max_connections", n as i64);
    }
    if let Some(n) = c.limits.max_connections_per_ip {
        put(&mut limits, "max_connections_per_ip", n as i64);
    }
    if let Some(b) = c.limits.memory_budget {
        put(
            &mut limits,
            "memory_budget",
            i64::try_from(b).unwrap_or(i64::MAX),
        );
    }
    match c.limits.splice_pipes {
        0 => put(&mut limits, "splice_pipes", "off"),
        n => put(&mut limits, "splice_pipes", n as i64),
    }
    put(&mut doc, "limits", limits);

    let mut ca = Table::new();
    put(&mut ca, "storage", c.internal_ca.display().to_string());
    put(&mut doc, "internal_ca", ca);
    if let Some(a) = &c.acme {
        let mut acme = Table::new();
        put(&mut acme, "directory", a.directory.as_str());
        if let Some(p) = &a.ca {
            put(&mut acme, "ca", p.display().to_string());
        }
        put(&mut acme, "storage", a.storage.display().to_string());
        put(&mut acme, "contact", strings(a.contact.iter()));
        let challenge = match a.challenge {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        };
        put(&mut acme, "challenge", challenge);
        put(&mut acme, "renew_before", duration(a.renew_before));
        put(&mut acme, "retry_min", duration(a.retry_min));
        put(&mut acme, "retry_max", duration(a.retry_max));
        put(&mut doc, "acme", acme);
    }

    let certificates = c.certificates.iter().map(|cert| {
        let mut t = Table::new();
        if !cert.hosts.is_empty() {
            put(&mut t, "hosts", hosts(&cert.hosts));
        }
        match &cert.source {
            CertSource::Files { cert, key } => {
                put(&mut t, "cert", cert.display().to_string());
                put(&mut t, "key", key.display().to_string());
            }
            CertSource::Acme => put(&mut t, "auto", true),
            CertSource::Internal => put(&mut t, "issuer", "internal"),
        }
        put(&mut t, "default", cert.default);
        Value::Table(t)
    });
    let certificates: Vec<Value> = certificates.collect();
    if !certificates.is_empty() {
        put(&mut doc, "certificates", Value::Array(certificates));
    }

    let listeners = c.listeners.iter().map(listener);
    put(&mut doc, "listeners", Value::Array(listeners.collect()));
    let routes = c.routes.iter().map(|r| route(c, r));
    put(&mut doc, "routes", Value::Array(routes.collect()));
    let clusters: Vec<Value> = c
        .clusters
        .iter()
        .filter(|k| !k.inline)
        .map(cluster)
        .collect();
    if !clusters.is_empty() {
        put(&mut doc, "clusters", Value::Array(clusters));
    }
    if !c.filters.is_empty() {
        let list = c.filters.iter().map(filters::filter).collect();
        put(&mut doc, "filters", Value::Array(list));
    }
    doc
}

fn cluster(k: &super::ClusterConfig) -> Value {
    let mut t = Table::new();
    put(&mut t, "name", k.name.as_str());
    let endpoints = k.endpoints.iter().map(|e| {
        let mut t = Table::new();
        put(&mut t, "address", e.address.as_str());
        put(&mut t, "weight", i64::from(e.weight));
        Value::Table(t)
    });
    match &k.service {
        Some(s) => put(&mut t, "service", s.as_str()),
        None => put(&mut t, "endpoints", Value::Array(endpoints.collect())),
    }
    put(&mut t, "resolve_every", duration(k.resolve_every));
    k.policy.print(&mut t, duration);
    Value::Table(t)
}

fn listener(l: &super::ListenerConfig) -> Value {
    let mut t = Table::new();
    put(&mut t, "name", l.name.as_str());
    match l.last_port {
        Some(last) => put(&mut t, "bind", format!("{}-{last}", l.bind)),
        None => put(&mut t, "bind", l.bind.to_string()),
    }
    put(&mut t, "backlog", l.backlog as i64);
    let protocol = match (l.http.is_some(), l.tls.is_some()) {
        (false, false) => "tcp",
        (true, false) => "http",
        (false, true) => "tls",
        (true, true) => "https",
    };
    put(&mut t, "protocol", protocol);
    if let Some(p) = &l.accept_proxy {
        let mut pp = Table::new();
        put(&mut pp, "trusted", strings(p.trusted.iter()));
        put(&mut pp, "required", p.required);
        put(&mut pp, "timeout", duration(p.timeout));
        put(&mut t, "proxy_protocol", pp);
    }
    if let Some(h) = &l.http {
        let mut http = Table::new();
        put(&mut http, "max_header_bytes", h.max_header_bytes as i64);
        put(&mut http, "max_uri_bytes", h.max_uri_bytes as i64);
        put(&mut http, "h2c", h.h2c);
        put(
            &mut http,
            "max_concurrent_streams",
            h.max_concurrent_streams as i64,
        );
        put(&mut http, "h2_stream_window", h.h2_stream_window as i64);
        put(
            &mut http,
            "h2_connection_window",
            h.h2_connection_window as i64,
        );
        put(&mut http, "max_headers", h.max_headers as i64);
        put(
            &mut http,
            "header_read_timeout",
            duration(h.header_read_timeout),
        );
        put(
            &mut http,
            "keepalive_timeout",
            duration(h.keepalive_timeout),
        );
        put(&mut http, "send_timeout", duration(h.send_timeout));
        if let Some(n) = h.max_requests_per_connection {
            put(&mut http, "max_requests_per_connection", n as i64);
        }
        put(
            &mut http,
            "trusted_proxies",
            strings(h.trusted_proxies.iter()),
        );
        put(&mut http, "forwarded", h.forwarded);
        put(&mut http, "via", h.via);
        put(
            &mut http,
            "server_header",
            h.server_header.clone().unwrap_or_default(),
        );
        put(&mut http, "access_log", h.access_log);
        if !h.access_log_headers.is_empty() {
            put(
                &mut http,
                "access_log_headers",
                strings(h.access_log_headers.iter()),
            );
        }
        put(&mut http, "access_log_query", h.access_log_query);
        put(&mut t, "http", http);
    }
    if let Some(tls) = &l.tls {
        let mut s = Table::new();
        let version = match tls.min_version {
            TlsVersion::V12 => "1.2",
            TlsVersion::V13 => "1.3",
        };
        put(&mut s, "min_version", version);
        put(&mut s, "handshake_timeout", duration(tls.handshake_timeout));
        let alpn = tls.alpn.iter().map(|p| String::from_utf8_lossy(p));
        put(&mut s, "alpn", strings(alpn));
        if let Some(a) = &tls.client_auth {
            put(&mut s, "client_ca", a.ca.display().to_string());
            let auth = if a.required { "required" } else { "optional" };
            put(&mut s, "client_auth", auth);
        }
        put(&mut s, "session_resumption", tls.session_resumption);
        put(&mut t, "tls", s);
    }
    Value::Table(t)
}

fn route(c: &Config, r: &RouteConfig) -> Value {
    let mut t = Table::new();
    put(&mut t, "name", r.name.as_str());
    let m = &r.matcher;
    let mut matcher = Table::new();
    let listener = m.listener.and_then(|i| c.listeners.get(i));
    if let Some(l) = listener {
        put(&mut matcher, "listener", l.name.as_str());
    }
    if let Some(p) = m.port {
        put(&mut matcher, "port", p as i64);
    }
    if !m.client_cidrs.is_empty() {
        put(&mut matcher, "client_cidrs", strings(m.client_cidrs.iter()));
    }
    let h = &m.http;
    if !h.hosts.is_empty() {
        put(&mut matcher, "hosts", hosts(&h.hosts));
    }
    match &h.path {
        Some(PathMatch::Exact(p)) => put(&mut matcher, "path", p.as_str()),
        Some(PathMatch::Prefix(p)) => put(&mut matcher, "path_prefix", p.as_str()),
        Some(PathMatch::Pattern(segments)) => put(&mut matcher, "path_pattern", pattern(segments)),
        None => {}
    }
    if !h.methods.is_empty() {
        put(&mut matcher, "methods", strings(h.methods.iter()));
    }
    let valued: Table = h
        .headers
        .iter()
        .filter_map(|(n, v)| Some((n.clone(), Value::String(v.clone()?))))
        .collect();
    if !valued.is_empty() {
        put(&mut matcher, "headers", valued);
    }
    let present = h.headers.iter().filter(|(_, v)| v.is_none());
    let present: Vec<&String> = present.map(|(n, _)| n).collect();
    if !present.is_empty() {
        put(
            &mut matcher,
            "headers_present",
            strings(present.into_iter()),
        );
    }
    if !m.sni.is_empty() {
        put(&mut matcher, "sni", hosts(&m.sni));
    }
    if !m.client_identities.is_empty() {
        put(
            &mut matcher,
            "client_identities",
            strings(m.client_identities.iter()),
        );
    }
    if !matcher.is_empty() {
        put(&mut t, "match", matcher);
    }

    let mut action = Table::new();
    match &r.action {
        RouteAction::Forward(f) => {
            let split = f.split.iter().filter_map(|&(k, w)| {
                let mut e = Table::new();
                put(&mut e, "cluster", c.clusters.get(k)?.name.as_str());
                put(&mut e, "weight", i64::from(w));
                Some(Value::Table(e))
            });
            match c.clusters.get(f.cluster) {
                _ if !f.split.is_empty() => {
                    put(&mut action, "split", Value::Array(split.collect()));
                }
                Some(k) if k.inline => match &r.kernel {
                    // (A port range's target is written with the range.)
                    Some(kr) if kr.last_port != kr.listen.port() => put(
                        &mut action,
                        "forward",
                        strings([format!("{}-{}", kr.target, kr.last_port)].iter()),
                    ),
                    _ => put(
                        &mut action,
                        "forward",
                        strings(k.endpoints.iter().map(|e| &e.address)),
                    ),
                },
                Some(k) => put(&mut action, "cluster", k.name.as_str()),
                None => {}
            }
            if let Some(v) = f.send_proxy {
                let v = match v {
                    ProxyVersion::V1 => "v1",
                    ProxyVersion::V2 => "v2",
                };
                put(&mut action, "send_proxy_protocol", v);
                put(&mut action, "pass_tlvs", f.pass_tlvs);
            }
        }
        RouteAction::RedirectHttps { port } => {
            put(&mut action, "redirect_https", true);
            if let Some(p) = port {
                put(&mut action, "redirect_port", *p as i64);
            }
        }
    }
    if let Some(k) = &r.kernel {
        put(
            &mut action,
            "engine",
            if k.strict { "kernel_strict" } else { "kernel" },
        );
    }
    put(&mut t, "action", action);

    let on_tls = listener.is_some_and(|l| l.tls.is_some() && l.http.is_none());
    if on_tls {
        let mode = match r.tls_mode {
            TlsMode::Passthrough => "passthrough",
            TlsMode::Terminate => "terminate",
            TlsMode::TerminateAndReencrypt => "terminate_and_reencrypt",
        };
        put(&mut t, "tls", mode);
    }
    let serves_http = c.route_serves_http(r);
    let u = &r.upstream;
    if u.tls.is_some() || serves_http {
        let mut up = Table::new();
        put(&mut up, "tls", u.tls.is_some());
        if let Some(tls) = &u.tls {
            if let Some(ca) = &tls.ca {
                put(&mut up, "ca", ca.display().to_string());
            }
            if let Some(n) = &tls.server_name {
                put(&mut up, "server_name", n.as_str());
            }
            if let Some((cert, key)) = &tls.client_cert {
                put(&mut up, "client_cert", cert.display().to_string());
                put(&mut up, "client_key", key.display().to_string());
            }
        }
        if serves_http {
            let protocol = match u.protocol {
                UpstreamProtocol::Http1 => "http1",
                UpstreamProtocol::Http2 => "http2",
            };
            put(&mut up, "protocol", protocol);
        }
        put(&mut t, "upstream", up);
    }
    put(&mut t, "policy", policy(r, serves_http));
    if !r.filters.is_empty() {
        let names = r.filters.iter().filter_map(|&i| c.filters.get(i));
        put(&mut t, "filters", strings(names.map(|f| &f.name)));
    }
    if let Some(m) = &r.mirror {
        let mut mt = Table::new();
        if let Some(cluster) = c.clusters.get(m.cluster) {
            put(&mut mt, "cluster", cluster.name.as_str());
        }
        put(&mut mt, "percent", i64::from(m.percent));
        put(&mut mt, "max_body", m.max_body as i64);
        put(&mut mt, "timeout", duration(m.timeout));
        put(&mut t, "mirror", mt);
    }
    let redact = &r.log_redact;
    if !redact.headers.is_empty() || !redact.query.is_empty() {
        let mut lt = Table::new();
        put(&mut lt, "headers", strings(redact.headers.iter()));
        put(&mut lt, "query", strings(redact.query.iter()));
        put(&mut t, "log_redact", lt);
    }
    Value::Table(t)
}

fn policy(r: &RouteConfig, serves_http: bool) -> Table {
    let p = &r.policy;
    let mut t = Table::new();
    put(&mut t, "connect_timeout", duration(p.connect_timeout));
    put(&mut t, "idle_timeout", off(p.idle_timeout));
    put(&mut t, "max_lifetime", off(p.max_lifetime));
    if let Some(n) = p.max_connections {
        put(&mut t, "max_connections", n as i64);
    }
    if !serves_http {
        return t;
    }
    let h = &p.http;
    put(&mut t, "max_body_size", h.max_body_size as i64);
    put(&mut t, "allow_chunked_requests", h.allow_chunked_requests);
    put(&mut t, "allow_upgrade", h.allow_upgrade);
    put(&mut t, "allow_domain_fronting", h.allow_domain_fronting);
    let durations = [
        ("response_header_timeout", h.response_header_timeout),
        ("upstream_body_idle_timeout", h.upstream_body_idle_timeout),
        ("client_body_idle_timeout", h.client_body_idle_timeout),
        ("pool_idle_timeout", h.pool_idle_timeout),
        ("pool_wait_timeout", h.pool_wait_timeout),
    ];
    for (k, d) in durations {
        put(&mut t, k, duration(d));
    }
    put(&mut t, "request_timeout", off(h.request_timeout));
    put(&mut t, "pool_max_idle", h.pool_max_idle as i64);
    put(
        &mut t,
        "pool_max_connections",
        h.pool_max_connections as i64,
    );
    put(
        &mut t,
        "pool_reuse_non_idempotent",
        h.pool_reuse_non_idempotent,
    );
    put(&mut t, "pool_max_per_client", h.pool_max_per_client as i64);
    t
}

fn put(t: &mut Table, key: &str, v: impl Into<Value>) {
    t.insert(key.to_owned(), v.into());
}

fn strings<T: ToString>(items: impl Iterator<Item = T>) -> Value {
    Value::Array(items.map(|s| Value::String(s.to_string())).collect())
}

fn hosts(hosts: &[HostMatch]) -> Value {
    strings(hosts.iter().map(|h| match h {
        HostMatch::Exact(name) => name.clone(),
        HostMatch::Wildcard(suffix) => format!("*{suffix}"),
    }))
}

fn pattern(segments: &[Segment]) -> String {
    let mut s = String::new();
    for seg in segments {
        s.push('/');
        match seg {
            Segment::Literal(l) => s.push_str(l),
            Segment::Param(n) => s.push_str(&format!("{{{n}}}")),
            Segment::Rest(n) => s.push_str(&format!("{{*{n}}}")),
        }
    }
    s
}

/// A duration in the largest unit that writes it exactly: `"250ms"`,
/// `"5s"`, `"10m"`, `"1h"`, `"1d"`, or a sum such as `"1m30s"`.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut s = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            s.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if s.is_empty() { "0s".into() } else { s }
}

fn off(d: Option<Duration>) -> String {
    d.map_or_else(|| "off".to_owned(), duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_their_largest_exact_unit() {
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_secs(5)), "5s");
        assert_eq!(duration(Duration::from_secs(600)), "10m");
        assert_eq!(duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(duration(Duration::from_secs(86_400 + 3600)), "1d1h");
    }
}
