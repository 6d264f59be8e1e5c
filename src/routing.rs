//! Route selection: the first route, in file order, whose match accepts the
//! connection (listener, local port, client network). Later issues add SNI and
//! HTTP matchers to `RouteMatch`; selection stays here.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{RouteConfig, RouteMatch};
use crate::metrics::RouteStats;
use crate::shutdown::ShutdownSignal;

pub struct Route {
    pub index: usize,
    pub name: Arc<str>,
    pub config: RouteConfig,
    /// Its statistics and connection count, found by its name (kept
    /// across reloads).
    pub stats: Arc<RouteStats>,
    /// Closes its TCP, TLS and upgraded connections: a child of the
    /// shutdown signal, kept by every snapshot that has a route of this
    /// name, and closed on its own `timeouts.route_drain` after a reload
    /// removed the route.
    pub closing: ShutdownSignal,
    /// Its filters, in order (empty for most routes).
    pub filters: crate::filter::Chain,
    /// Its name as a header value (`{route}` in header rules), made once.
    pub name_value: Option<http::HeaderValue>,
    /// Turns of a split (`Forward::pick`).
    turn: std::sync::atomic::AtomicUsize,
    /// Requests counted for its mirror's sampling.
    mirror_turn: std::sync::atomic::AtomicU64,
}

impl Route {
    /// Which of its forward's clusters (`Forward::clusters`) the next
    /// request or connection goes to: by weight with a split, else the one.
    pub fn pick_cluster(&self) -> usize {
        match self.config.action.forward() {
            Some(f) if !f.split.is_empty() => {
                f.pick(self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
            }
            _ => 0,
        }
    }

    /// The next turn of its mirror's sampling.
    pub fn mirror_turn(&self) -> u64 {
        self.mirror_turn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn new(
        index: usize,
        config: RouteConfig,
        stats: Arc<RouteStats>,
        closing: ShutdownSignal,
        filters: crate::filter::Chain,
    ) -> Route {
        Route {
            index,
            name_value: http::HeaderValue::from_str(&stats.name).ok(),
            name: stats.name.clone(),
            config,
            stats,
            closing,
            filters,
            turn: Default::default(),
            mirror_turn: Default::default(),
        }
    }
}

/// What routing knows about a connection.
pub struct RouteInput<'a> {
    pub listener: usize,
    pub local: SocketAddr,
    pub client: SocketAddr,
    /// The TLS server name, lower case (TLS listeners).
    pub sni: Option<&'a str>,
    /// The verified client certificate's identity (mTLS).
    pub identity: Option<&'a str>,
}

fn matches(m: &RouteMatch, input: &RouteInput<'_>) -> bool {
    m.listener.is_none_or(|l| l == input.listener)
        && m.port.is_none_or(|p| p == input.local.port())
        && (m.client_cidrs.is_empty()
            || m.client_cidrs
                .iter()
                .any(|n| n.contains(&input.client.ip())))
        && (m.sni.is_empty()
            || input
                .sni
                .is_some_and(|name| m.sni.iter().any(|h| h.matches(name))))
        && (m.client_identities.is_empty()
            || input
                .identity
                .is_some_and(|id| m.client_identities.iter().any(|x| x == id)))
}

pub fn select<'a>(routes: &'a [Route], input: &RouteInput<'_>) -> Option<&'a Route> {
    // (A route that matches on a request's host, path, method or headers
    // is for HTTP listeners: never a TCP or TLS connection's.)
    routes
        .iter()
        .find(|r| r.config.matcher.http.is_empty() && matches(&r.config.matcher, input))
}

/// What HTTP routing looks at in a request. `host` is lower case, without port.
pub struct RequestView<'a> {
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub method: &'a str,
    pub headers: &'a http::HeaderMap,
}

/// How specific a route's match is; larger wins, ties go to file order.
/// Compared field by field: host (exact > wildcard, longer wildcard first),
/// path (exact > pattern > prefix, longer first), methods, headers, client networks.
pub type Specificity = (u8, usize, u8, usize, bool, usize, bool);

pub fn specificity(m: &RouteMatch) -> Specificity {
    use crate::config::{HostMatch, PathMatch};
    let h = &m.http;
    let (host_rank, host_len) = h
        .hosts
        .iter()
        .map(|host| match host {
            HostMatch::Exact(s) => (2, s.len()),
            HostMatch::Wildcard(s) => (1, s.len()),
        })
        .max()
        .unwrap_or((0, 0));
    let (path_rank, path_len) = match &h.path {
        Some(PathMatch::Exact(p)) => (3, p.len()),
        Some(PathMatch::Pattern(segs)) => (2, segs.len()),
        Some(PathMatch::Prefix(p)) => (1, p.len()),
        None => (0, 0),
    };
    (
        host_rank,
        host_len,
        path_rank,
        path_len,
        !h.methods.is_empty(),
        h.headers.len(),
        !m.client_cidrs.is_empty(),
    )
}

/// Route indices in the order HTTP routing tries them: most specific first.
pub fn http_order(routes: &[Route]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..routes.len()).collect();
    order.sort_by(|&a, &b| {
        specificity(&routes[b].config.matcher)
            .cmp(&specificity(&routes[a].config.matcher))
            .then(a.cmp(&b))
    });
    order
}

fn path_matches(m: &crate::config::PathMatch, path: &str) -> bool {
    use crate::config::{PathMatch, Segment};
    match m {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        PathMatch::Pattern(segs) => {
            let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
            for seg in segs {
                match seg {
                    Segment::Rest(_) => return true,
                    Segment::Literal(l) => {
                        if parts.next() != Some(l.as_str()) {
                            return false;
                        }
                    }
                    Segment::Param(_) => {
                        if parts.next().is_none_or(str::is_empty) {
                            return false;
                        }
                    }
                }
            }
            parts.next().is_none()
        }
    }
}

fn http_matches(m: &RouteMatch, req: &RequestView<'_>) -> bool {
    let h = &m.http;
    (h.hosts.is_empty()
        || req
            .host
            .is_some_and(|host| h.hosts.iter().any(|hm| hm.matches(host))))
        && h.path.as_ref().is_none_or(|p| path_matches(p, req.path))
        && (h.methods.is_empty() || h.methods.iter().any(|x| x == req.method))
        && h.headers.iter().all(|(name, value)| {
            let mut values = req.headers.get_all(name.as_str()).iter();
            match value {
                None => values.next().is_some(),
                Some(v) => values.any(|x| x.as_bytes() == v.as_bytes()),
            }
        })
}

/// The most specific route (ties: file order) matching the connection and request.
pub fn select_http<'a>(
    routes: &'a [Route],
    order: &[usize],
    conn: &RouteInput<'_>,
    req: &RequestView<'_>,
) -> Option<&'a Route> {
    order
        .iter()
        .map(|&i| &routes[i])
        .find(|r| matches(&r.config.matcher, conn) && http_matches(&r.config.matcher, req))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(text: &str) -> Vec<Route> {
        let cfg = format!(
            "[[listeners]]\nname = \"h\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n{text}"
        );
        let c = crate::config::parse("t.toml", &cfg, &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let metrics = crate::metrics::Metrics::new();
        c.routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let stats = metrics.route(&r.name);
                Route::new(i, r, stats, ShutdownSignal::new(), Default::default())
            })
            .collect()
    }

    fn pick(
        rs: &[Route],
        host: &str,
        path: &str,
        method: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        let conn = RouteInput {
            listener: 0,
            local: "127.0.0.1:80".parse().unwrap(),
            client: "10.1.2.3:5".parse().unwrap(),
            sni: None,
            identity: None,
        };
        let req = RequestView {
            host: Some(host),
            path,
            method,
            headers: &map,
        };
        select_http(rs, &http_order(rs), &conn, &req).map(|r| r.name.to_string())
    }

    #[test]
    fn most_specific_route_wins_and_ties_go_to_file_order() {
        let rs = routes(
            r#"
[[routes]]
name = "catch-all"
action.forward = ["127.0.0.1:1"]
[[routes]]
name = "api-prefix"
match.path_prefix = "/api/"
action.forward = ["127.0.0.1:1"]
[[routes]]
name = "wild"
match.hosts = ["*.example.com"]
action.forward = ["127.0.0.1:1"]
[[routes]]
name = "exact-host"
match.hosts = ["www.example.com"]
action.forward = ["127.0.0.1:1"]
[[routes]]
name = "user"
match.path_pattern = "/api/users/{id}"
action.forward = ["127.0.0.1:1"]
[[routes]]
name = "health"
match.path = "/api/health"
match.methods = ["GET"]
action.forward = ["127.0.0.1:1"]
[[routes]]
name = "canary"
match.path_prefix = "/api/"
match.headers = { "x-canary" = "1" }
action.forward = ["127.0.0.1:1"]
[[routes]]
name = "api-prefix-again"
match.path_prefix = "/api/"
action.forward = ["127.0.0.1:1"]
"#,
        );
        assert_eq!(
            pick(&rs, "other.test", "/", "GET", &[]).as_deref(),
            Some("catch-all")
        );
        assert_eq!(
            pick(&rs, "other.test", "/api/x", "GET", &[]).as_deref(),
            Some("api-prefix")
        );
        assert_eq!(
            pick(&rs, "other.test", "/api/x", "GET", &[("x-canary", "1")]).as_deref(),
            Some("canary")
        );
        assert_eq!(
            pick(&rs, "other.test", "/api/users/7", "GET", &[]).as_deref(),
            Some("user")
        );
        assert_eq!(
            pick(&rs, "other.test", "/api/users/", "GET", &[]).as_deref(),
            Some("api-prefix")
        );
        assert_eq!(
            pick(&rs, "other.test", "/api/users/7/x", "GET", &[]).as_deref(),
            Some("api-prefix")
        );
        assert_eq!(
            pick(&rs, "other.test", "/api/health", "GET", &[]).as_deref(),
            Some("health")
        );
        assert_eq!(
            pick(&rs, "other.test", "/api/health", "POST", &[]).as_deref(),
            Some("api-prefix")
        );
        assert_eq!(
            pick(&rs, "a.example.com", "/api/health", "GET", &[]).as_deref(),
            Some("wild")
        );
        assert_eq!(
            pick(&rs, "www.example.com", "/", "GET", &[]).as_deref(),
            Some("exact-host")
        );
        assert_eq!(
            pick(&rs, "example.com", "/", "GET", &[]).as_deref(),
            Some("catch-all")
        );
    }
}
