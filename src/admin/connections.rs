//! The connection table and the routes for operators:
//! `GET /connections` with filters (`route`, `listener`, `state`,
//! `client` network, `older_than`), `DELETE /connections/{id}` (close one),
//! `POST /connections/close?<filters>` (close every match), `GET /routes`
//! (each route, its traffic and whether it is drained), and
//! `POST|DELETE /routes/{name}/drain` (stop or resume taking new
//! connections and requests; those it has go on).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::Config;
use crate::conn::{CloseError, ConnSnapshot, ConnTable};
use crate::kernel::Kernel;
use crate::kernel::conntrack::KernelConn;
use crate::runtime::Snapshot;

/// A kernel route's connection in the table's terms (`engine = "kernel"`;
/// the state is conntrack's; the listener is its route's in `config`).
fn kernel_snapshot(k: KernelConn, config: &Config) -> ConnSnapshot {
    let listener = config
        .routes
        .iter()
        .find(|r| r.name == k.route)
        .and_then(|r| config.listeners.get(r.matcher.listener?))
        .map(|l| l.name.clone())
        .unwrap_or_default();
    ConnSnapshot {
        id: k.id,
        listener,
        peer: k.client.to_string(),
        client: k.client.to_string(),
        route: Some(k.route),
        upstream: Some(k.target.to_string()),
        state: k.state,
        engine: "kernel",
        started_unix_ms: k
            .since
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        age_ms: k.age_ms,
        bytes_client_to_upstream: k.bytes_up,
        bytes_upstream_to_client: k.bytes_down,
        proxy_tlvs: Vec::new(),
        sni: None,
        upstream_error: None,
    }
}

/// Which connections a request is about.
#[derive(Debug, Default)]
pub struct Filter {
    route: Option<String>,
    listener: Option<String>,
    state: Option<String>,
    client: Option<ipnet::IpNet>,
    older_than: Option<Duration>,
}

impl Filter {
    /// From a query string: `route=…&listener=…&state=…&client=10.0.0.0/8&older_than=30s`.
    pub fn parse(query: Option<&str>) -> Result<Filter, String> {
        let mut f = Filter::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = v.to_owned();
            match k {
                "route" => f.route = Some(v),
                "listener" => f.listener = Some(v),
                "state" => f.state = Some(v),
                "client" => {
                    let net = v
                        .parse::<ipnet::IpNet>()
                        .or_else(|_| v.parse::<IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| format!("client: {v:?} is not an address or a network"))?;
                    f.client = Some(net);
                }
                "older_than" => {
                    f.older_than = Some(
                        crate::config::duration::parse(&v)
                            .map_err(|e| format!("older_than: {e}"))?,
                    );
                }
                _ => {
                    return Err(format!(
                        "unknown filter {k:?} (route, listener, state, client, older_than)"
                    ));
                }
            }
        }
        Ok(f)
    }

    fn is_empty(&self) -> bool {
        self.route.is_none()
            && self.listener.is_none()
            && self.state.is_none()
            && self.client.is_none()
            && self.older_than.is_none()
    }

    fn matches(&self, c: &ConnSnapshot) -> bool {
        self.route
            .as_deref()
            .is_none_or(|r| c.route.as_deref() == Some(r))
            && self.listener.as_deref().is_none_or(|l| c.listener == l)
            && self.state.as_deref().is_none_or(|s| c.state == s)
            && self.client.is_none_or(|net| {
                c.client
                    .parse::<std::net::SocketAddr>()
                    .is_ok_and(|a| net.contains(&a.ip().to_canonical()))
            })
            && self
                .older_than
                .is_none_or(|d| c.age_ms >= d.as_millis() as u64)
    }
}

/// `GET /connections[?filters]`.
pub fn list(
    (table, kernel): (&ConnTable, &Kernel),
    config: &Config,
    query: Option<&str>,
) -> (u16, Value) {
    let filter = match Filter::parse(query) {
        Ok(f) => f,
        Err(e) => return (400, json!({ "error": e })),
    };
    let mut all = table.snapshot();
    all.extend(
        kernel
            .connections()
            .into_iter()
            .map(|k| kernel_snapshot(k, config)),
    );
    let active = all.len();
    let matching: Vec<ConnSnapshot> = all.into_iter().filter(|c| filter.matches(c)).collect();
    (
        200,
        json!({ "active": active, "matching": matching.len(), "connections": matching }),
    )
}

/// `DELETE /connections/{id}`.
pub fn close(table: &ConnTable, id: &str) -> (u16, Value) {
    let Ok(id) = id.parse::<u64>() else {
        return (
            400,
            json!({ "error": format!("{id:?} is not a connection id") }),
        );
    };
    match table.close(id) {
        Ok(()) => (200, json!({ "closed": [id] })),
        Err(CloseError::NotFound) => (404, json!({ "error": CloseError::NotFound.to_string() })),
        Err(e) => (409, json!({ "error": e.to_string() })),
    }
}

/// `POST /connections/close?<filters>`: at least one filter.
pub fn close_matching(table: &ConnTable, query: Option<&str>) -> (u16, Value) {
    let filter = match Filter::parse(query) {
        Ok(f) if f.is_empty() => {
            return (
                400,
                json!({ "error": "name at least one filter (route, listener, state, client, older_than)" }),
            );
        }
        Ok(f) => f,
        Err(e) => return (400, json!({ "error": e })),
    };
    let closed: Vec<u64> = table
        .snapshot()
        .iter()
        .filter(|c| filter.matches(c))
        .filter(|c| table.close(c.id).is_ok())
        .map(|c| c.id)
        .collect();
    (200, json!({ "closed": closed }))
}

/// `GET /routes`: every route of the running config, in matching order.
pub fn routes(snap: &Snapshot, table: &ConnTable, kernel: &Kernel) -> Value {
    let by_route = table.count_by_route_state();
    // (A route's byte counters take a connection's bytes when it ends:
    // those of its live connections are added.)
    let live_bytes = table.live_bytes();
    let routes: Vec<Value> = snap
        .routes
        .iter()
        .map(|r| {
            let s = &r.stats;
            let live: u64 = by_route
                .iter()
                .filter(|((name, _), _)| name.as_deref() == Some(&*r.name))
                .map(|(_, n)| n)
                .sum();
            let closed: u64 = s.closed.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            let requests: u64 = s.http_end.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            let errors: u64 = s.http_status[5].load(Ordering::Relaxed);
            let (up, down) = live_bytes
                .get(&Some(r.name.clone()))
                .copied()
                .unwrap_or_default();
            json!({
                "name": &*r.name,
                "engine": if kernel.forwards(&r.name) { "kernel" } else { "user" },
                "draining": s.draining.load(Ordering::Relaxed),
                "connections": { "live": live, "closed": closed },
                "requests": {
                    "total": requests,
                    "in_flight": s.http_in_flight.load(Ordering::Relaxed),
                    "5xx": errors,
                },
                "bytes": {
                    "client_to_upstream": s.bytes_up.load(Ordering::Relaxed) + up,
                    "upstream_to_client": s.bytes_down.load(Ordering::Relaxed) + down,
                },
            })
        })
        .collect();
    json!({ "generation": snap.generation, "routes": routes })
}

/// `POST /routes/{name}/drain` (`drain = true`) or `DELETE` (resume).
pub fn drain(
    snap: &Snapshot,
    (table, kernel): (&ConnTable, &Kernel),
    name: &str,
    drain: bool,
) -> (u16, Value) {
    let Some(route) = snap.routes.iter().find(|r| &*r.name == name) else {
        return (
            404,
            json!({ "error": format!("no route {name:?} in the running config") }),
        );
    };
    if kernel.forwards(name) {
        // (The kernel would go on taking its connections: no silent drain.)
        return (
            409,
            json!({ "error": format!("route {name:?} is forwarded by the kernel (nftables), which cannot drain it: remove it from the config, or set action.engine = \"user\", and reload") }),
        );
    }
    let was = route.stats.draining.swap(drain, Ordering::Relaxed);
    if was != drain {
        tracing::info!(
            route = name,
            draining = drain,
            "{}",
            if drain {
                "route drained by the admin API: no new connections or requests"
            } else {
                "route resumed by the admin API"
            }
        );
    }
    let live: u64 = table
        .count_by_route_state()
        .iter()
        .filter(|((route, _), _)| route.as_deref() == Some(name))
        .map(|(_, n)| n)
        .sum();
    (
        200,
        json!({ "route": name, "draining": drain, "live": live }),
    )
}
