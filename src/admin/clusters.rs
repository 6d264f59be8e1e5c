//! The clusters on the admin listener: `GET /clusters` (every cluster,
//! its endpoints with their state, load, latency, last probe and recent
//! history), the endpoint API (`POST /clusters/{name}/endpoints` adds one
//! or sets its weight, `PATCH /clusters/{name}/endpoints/{address}` sets
//! a weight, `DELETE /clusters/{name}/endpoints/{address}` drains it,
//! `?drain=0s` removes it at once), and the clusters' metrics.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use crate::http::View;
use crate::runtime::Snapshot;
use crate::upstream::cluster::Cluster;
use crate::upstream::endpoint::{EndpointState, now_ms};

/// How long a drained endpoint waits for its requests unless told.
const DRAIN_DEFAULT: Duration = Duration::from_secs(30);

/// An endpoint's state in one word: draining, ejected, unhealthy,
/// healthy, or unknown (not probed).
fn state_word(s: &EndpointState, now: u64) -> &'static str {
    if s.draining() {
        "draining"
    } else if s.ejected(now).is_some() {
        "ejected"
    } else {
        s.health().as_str()
    }
}

/// Upstream HTTP connections to `addr`, open and idle, over every route's
/// pools on cluster `c`.
fn connections(view: &View, c: &Arc<Cluster>, addr: SocketAddr) -> (usize, usize) {
    let pools = view
        .pools
        .iter()
        .flatten()
        .filter(|p| Arc::ptr_eq(&p.cluster, c));
    pools.fold((0, 0), |(open, idle), p| {
        let set = p.pools();
        let there = set.pools.iter().filter(|t| t.addr() == addr);
        there.fold((open, idle), |(o, i), t| {
            (o + t.open_count(), i + t.idle_count())
        })
    })
}

fn cluster_json(view: &View, c: &Arc<Cluster>) -> Value {
    let set = c.endpoints();
    let now = now_ms();
    // (Latency is followed where the balancing uses it.)
    let ewma = matches!(
        c.config.policy.balance,
        crate::config::BalanceConfig::PeakEwma
    );
    let endpoints: Vec<Value> = set
        .endpoints
        .iter()
        .zip(&set.states)
        .map(|(e, s)| {
            let (open, idle) = connections(view, c, e.addr);
            json!({
                "address": e.addr.to_string(),
                "target": &*e.target,
                "weight": e.weight,
                "state": state_word(s, now),
                "in_flight": s.in_flight(),
                "connections": { "open": open, "idle": idle },
                "ewma_ms": ewma.then(|| s.ewma_us() as f64 / 1000.0),
                "ejected_for_ms": s.ejected(now).map(|until| until - now),
                "last_probe": s.last_probe(),
                "history": s.history(),
            })
        })
        .collect();
    let p = &c.config.policy;
    let k = &c.counters;
    json!({
        "name": &*c.name,
        "inline": c.config.inline,
        "balance": format!("{:?}", p.balance),
        "health_check": p.health.is_some(),
        "panic": p.panic,
        "in_flight": c.active(),
        "max_requests": p.max_requests,
        "generation": set.generation,
        "endpoints": endpoints,
        "counters": {
            "became_unhealthy": k.became_unhealthy.load(Ordering::Relaxed),
            "became_healthy": k.became_healthy.load(Ordering::Relaxed),
            "ejections": k.ejections.load(Ordering::Relaxed),
            "retries": k.retries.load(Ordering::Relaxed),
            "retries_over_budget": k.retries_over_budget.load(Ordering::Relaxed),
            "overloaded": k.overloaded.load(Ordering::Relaxed),
        },
    })
}

/// `GET /clusters`.
pub fn list(view: &View) -> Value {
    let clusters = view.snap.clusters.iter();
    json!({ "clusters": clusters.map(|c| cluster_json(view, c)).collect::<Vec<_>>() })
}

/// What a change to a cluster's endpoints answers: a status and JSON.
pub type Answer = (u16, Value);

fn error(status: u16, message: &str) -> Answer {
    (status, json!({ "error": message }))
}

/// `POST`, `PATCH` and `DELETE` under `/clusters/{name}/endpoints`.
pub fn change(
    snap: &Snapshot,
    method: &str,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Answer {
    let rest = path.trim_start_matches("/clusters/");
    let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(cluster) = snap.clusters.iter().find(|c| &*c.name == name) else {
        return error(404, &format!("no cluster {name:?}"));
    };
    let address = tail
        .strip_prefix("endpoints")
        .map(|a| a.trim_start_matches('/'));
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return error(400, &format!("the body is not JSON: {e}")),
        }
    };
    let weight = |v: &Value| -> Result<Option<u32>, Answer> {
        match v.get("weight") {
            None => Ok(None),
            Some(w) => match w.as_u64() {
                Some(n @ 1..=1000) => Ok(Some(n as u32)),
                _ => Err(error(400, "weight: an integer from 1 to 1000")),
            },
        }
    };
    match (method, address) {
        ("POST", Some("")) => {
            let Some(addr) = body.get("address").and_then(Value::as_str) else {
                return error(400, "address: \"ip:port\" is required");
            };
            let Ok(addr) = addr.parse::<SocketAddr>() else {
                return error(400, &format!("address: {addr:?} is not ip:port"));
            };
            let weight = match weight(&body) {
                Ok(w) => w.unwrap_or(1),
                Err(a) => return a,
            };
            cluster.add(addr, weight);
            (200, json!({ "added": addr.to_string(), "weight": weight }))
        }
        ("PATCH", Some(a)) if !a.is_empty() => {
            let Ok(addr) = a.parse::<SocketAddr>() else {
                return error(400, &format!("{a:?} is not ip:port"));
            };
            match weight(&body) {
                Ok(Some(w)) if cluster.set_weight(addr, w) => {
                    (200, json!({ "endpoint": a, "weight": w }))
                }
                Ok(Some(_)) => error(404, &format!("no endpoint {a} in {name:?}")),
                Ok(None) => error(400, "weight is required"),
                Err(a) => a,
            }
        }
        ("DELETE", Some(a)) if !a.is_empty() => {
            let Ok(addr) = a.parse::<SocketAddr>() else {
                return error(400, &format!("{a:?} is not ip:port"));
            };
            let drain = query
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("drain=")))
                .map(crate::config::parse_duration);
            let deadline = match drain {
                None => DRAIN_DEFAULT,
                Some(Ok(d)) => d,
                Some(Err(m)) => return error(400, &format!("drain: {m}")),
            };
            let done = if deadline.is_zero() {
                cluster.remove(addr)
            } else {
                cluster.drain(addr, deadline)
            };
            if !done {
                return error(404, &format!("no endpoint {a} in {name:?}"));
            }
            let word = if deadline.is_zero() {
                "removed"
            } else {
                "draining"
            };
            (
                200,
                json!({ word: a, "deadline_ms": deadline.as_millis() as u64 }),
            )
        }
        _ => error(
            405,
            "POST /clusters/{name}/endpoints, PATCH or DELETE /clusters/{name}/endpoints/{ip:port}",
        ),
    }
}

/// The clusters' metrics: per endpoint (labels bounded by the config and
/// the endpoint API) its health and requests in flight; per cluster its
/// requests in flight and counters.
pub fn render_metrics(snap: &Snapshot, out: &mut String) {
    let now = now_ms();
    out.push_str("# HELP gatehouse_upstream_endpoint_up Whether an endpoint takes new requests (1) or not: unhealthy, ejected or draining (0).\n# TYPE gatehouse_upstream_endpoint_up gauge\n");
    for c in &snap.clusters {
        let set = c.endpoints();
        for (e, s) in set.endpoints.iter().zip(&set.states) {
            let _ = writeln!(
                out,
                "gatehouse_upstream_endpoint_up{{cluster=\"{}\",endpoint=\"{}\",state=\"{}\"}} {}",
                c.name,
                e.addr,
                state_word(s, now),
                u8::from(s.usable(|| now))
            );
        }
    }
    out.push_str("# HELP gatehouse_upstream_endpoint_in_flight Requests (HTTP) or connections (L4) in flight per endpoint.\n# TYPE gatehouse_upstream_endpoint_in_flight gauge\n");
    for c in &snap.clusters {
        let set = c.endpoints();
        for (e, s) in set.endpoints.iter().zip(&set.states) {
            let _ = writeln!(
                out,
                "gatehouse_upstream_endpoint_in_flight{{cluster=\"{}\",endpoint=\"{}\"}} {}",
                c.name,
                e.addr,
                s.in_flight()
            );
        }
    }
    let families = [
        (
            "health_changes_total",
            "Endpoints found unhealthy, or healthy again, by the active checks.",
        ),
        (
            "ejections_total",
            "Endpoints ejected by passive health (failures in a row).",
        ),
        ("retries_total", "Attempts retried on another endpoint."),
        (
            "retries_over_budget_total",
            "Retries the retry budget refused.",
        ),
    ];
    for (i, (family, help)) in families.into_iter().enumerate() {
        let _ = writeln!(
            out,
            "# HELP gatehouse_upstream_{family} {help}\n# TYPE gatehouse_upstream_{family} counter"
        );
        for c in &snap.clusters {
            let k = &c.counters;
            let name = &c.name;
            let _ = match i {
                0 => writeln!(
                    out,
                    "gatehouse_upstream_{family}{{cluster=\"{name}\",to=\"unhealthy\"}} {}\ngatehouse_upstream_{family}{{cluster=\"{name}\",to=\"healthy\"}} {}",
                    k.became_unhealthy.load(Ordering::Relaxed),
                    k.became_healthy.load(Ordering::Relaxed)
                ),
                1 => writeln!(
                    out,
                    "gatehouse_upstream_{family}{{cluster=\"{name}\"}} {}",
                    k.ejections.load(Ordering::Relaxed)
                ),
                2 => writeln!(
                    out,
                    "gatehouse_upstream_{family}{{cluster=\"{name}\"}} {}",
                    k.retries.load(Ordering::Relaxed)
                ),
                _ => writeln!(
                    out,
                    "gatehouse_upstream_{family}{{cluster=\"{name}\"}} {}",
                    k.retries_over_budget.load(Ordering::Relaxed)
                ),
            };
        }
    }
    out.push_str("# HELP gatehouse_upstream_overloaded_total Requests refused at a cluster's cap on requests in flight.\n# TYPE gatehouse_upstream_overloaded_total counter\n");
    for c in &snap.clusters {
        let _ = writeln!(
            out,
            "gatehouse_upstream_overloaded_total{{cluster=\"{}\"}} {}",
            c.name,
            c.counters.overloaded.load(Ordering::Relaxed)
        );
    }
}
