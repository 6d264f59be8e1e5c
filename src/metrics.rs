//! Counters and histograms of the data plane, and their Prometheus text
//! rendering for `GET /metrics`. Gauges of live connections are not counted
//! separately: they are read from the connection table at scrape time, so
//! they can never drift from it.
//!
//! A route's statistics are found by its name, not its position: a reload
//! that keeps a route (wherever it now is in the file) keeps its counters
//! and its connection count (its limit's), and a removed route's live on
//! while anything (its connections, a request's record) still holds them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::lifecycle::{ConnState, EndReason, RequestEnd};

/// What the connection table says at scrape time (gauges are read from
/// it, not counted apart), keyed by route name (`None`: no route).
pub struct Live {
    pub connections: usize,
    pub by_state: std::collections::HashMap<(Option<Arc<str>>, ConnState), u64>,
    pub bytes: std::collections::HashMap<Option<Arc<str>>, (u64, u64)>,
}

pub struct Metrics {
    pub accepted: AtomicU64,
    /// What no route took: connections refused before routing, requests
    /// without a route.
    none: Arc<RouteStats>,
    /// Every route's statistics, while anything holds them.
    routes: Mutex<Vec<Weak<RouteStats>>>,
    /// Removed routes' statistics, kept so that their last endings
    /// (`route_removed` among them) can still be scraped: the last
    /// `RETIRED_KEPT` removed routes.
    retired: Mutex<std::collections::VecDeque<Arc<RouteStats>>>,
    /// Config reloads by result: applied, rejected.
    pub reloads: [AtomicU64; 2],
    /// The running config's generation (1 at start, +1 per applied reload).
    pub generation: AtomicU64,
}

pub struct RouteStats {
    /// The route's name, the `route` label (`none` for what no route took).
    pub name: Arc<str>,
    /// Connections holding a slot of this route (used for its limit).
    pub active: AtomicU64,
    pub closed: [AtomicU64; EndReason::COUNT],
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub connect_latency: Histogram,
    /// HTTP responses by status class (index 1..=5; 0 when none was sent).
    pub http_status: [AtomicU64; 6],
    /// HTTP requests by how they ended.
    pub http_end: [AtomicU64; RequestEnd::ALL.len()],
    pub http_in_flight: AtomicI64,
    pub http_latency: Histogram,
    /// Copies of its requests for its mirror, by outcome.
    pub mirror: [AtomicU64; MirrorOutcome::ALL.len()],
    /// Drained by an operator: no new connections or requests.
    pub draining: std::sync::atomic::AtomicBool,
}

/// What became of a request's copy for a route's mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorOutcome {
    /// The shadow cluster answered (any status).
    Sent,
    /// The shadow exchange failed or ran out of time.
    Failed,
    /// Every place for copies was taken: not mirrored.
    Dropped,
    /// Its body was too long for a copy, or never finished.
    Skipped,
}

impl MirrorOutcome {
    pub const ALL: [MirrorOutcome; 4] = [
        MirrorOutcome::Sent,
        MirrorOutcome::Failed,
        MirrorOutcome::Dropped,
        MirrorOutcome::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MirrorOutcome::Sent => "sent",
            MirrorOutcome::Failed => "failed",
            MirrorOutcome::Dropped => "dropped",
            MirrorOutcome::Skipped => "skipped",
        }
    }
}

impl RouteStats {
    fn new(name: Arc<str>) -> RouteStats {
        RouteStats {
            name,
            active: AtomicU64::new(0),
            closed: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            connect_latency: Histogram::new(),
            http_status: std::array::from_fn(|_| AtomicU64::new(0)),
            http_end: std::array::from_fn(|_| AtomicU64::new(0)),
            http_in_flight: AtomicI64::new(0),
            http_latency: Histogram::new(),
            mirror: std::array::from_fn(|_| AtomicU64::new(0)),
            draining: Default::default(),
        }
    }

    pub fn mirror_outcome(&self, outcome: MirrorOutcome) {
        self.mirror[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Upper bounds, in seconds, of the latency buckets.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            accepted: AtomicU64::new(0),
            none: Arc::new(RouteStats::new("none".into())),
            routes: Mutex::new(Vec::new()),
            retired: Mutex::new(Default::default()),
            reloads: Default::default(),
            generation: AtomicU64::new(1),
        }
    }

    /// The statistics of the route named `name`: those a route of that
    /// name has had, while anything still holds them, else new ones.
    pub fn route(&self, name: &str) -> Arc<RouteStats> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.retain(|w| w.strong_count() > 0);
        if let Some(s) = routes
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| &*s.name == name)
        {
            return s;
        }
        let s = Arc::new(RouteStats::new(name.into()));
        routes.push(Arc::downgrade(&s));
        s
    }

    /// Keeps a removed route's statistics in the exposition after its
    /// last connection (bounded: the oldest go first).
    pub fn retire(&self, stats: Arc<RouteStats>) {
        const RETIRED_KEPT: usize = 64;
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|s| !Arc::ptr_eq(s, &stats));
        if retired.len() == RETIRED_KEPT {
            retired.pop_front();
        }
        retired.push_back(stats);
    }

    /// What no route took.
    pub fn none(&self) -> &Arc<RouteStats> {
        &self.none
    }

    /// `route`'s statistics, or those of what no route took.
    pub fn route_or_none<'a>(&'a self, route: Option<&'a Arc<RouteStats>>) -> &'a RouteStats {
        route.map_or(&*self.none, |r| &**r)
    }

    /// `none` first, then every route's, by name.
    fn all(&self) -> Vec<Arc<RouteStats>> {
        let mut all: Vec<Arc<RouteStats>> = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.insert(0, self.none.clone());
        all
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, live: &Live) -> String {
        let mut out = String::with_capacity(4096);
        let by_state = &live.by_state;
        let live_bytes = &live.bytes;
        let all = self.all();

        render_single(
            &mut out,
            "gatehouse_connections_accepted_total",
            "counter",
            "Connections accepted on all listeners.",
            self.accepted.load(Ordering::Relaxed),
        );

        render_single(
            &mut out,
            "gatehouse_connections_live",
            "gauge",
            "Entries in the connection table.",
            live.connections as u64,
        );
        out.push_str("# HELP gatehouse_connections_active Live connections by route and state.\n");
        out.push_str("# TYPE gatehouse_connections_active gauge\n");
        for (slot, stats) in all.iter().enumerate() {
            for state in ConnState::ALL {
                if state == ConnState::Closed {
                    continue;
                }
                let key = (slot > 0).then(|| stats.name.clone());
                let n = by_state.get(&(key, state)).copied().unwrap_or(0);
                if slot == 0 && n == 0 {
                    continue; // (`none`: a series only while it counts something)
                }
                let _ = writeln!(
                    out,
                    "gatehouse_connections_active{{route=\"{}\",state=\"{}\"}} {n}",
                    stats.name,
                    state.as_str()
                );
            }
        }

        out.push_str("# HELP gatehouse_connections_closed_total Connections ended, by route, reason and side to blame.\n");
        out.push_str("# TYPE gatehouse_connections_closed_total counter\n");
        for stats in &all {
            for reason in EndReason::ALL {
                let n = stats.closed[reason.index()].load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "gatehouse_connections_closed_total{{route=\"{}\",reason=\"{}\",side=\"{}\"}} {n}",
                    stats.name,
                    reason.as_str(),
                    reason.side().as_str()
                );
            }
        }

        out.push_str("# HELP gatehouse_bytes_total Bytes proxied, by route and direction.\n");
        out.push_str("# TYPE gatehouse_bytes_total counter\n");
        for (slot, stats) in all.iter().enumerate() {
            let key = (slot > 0).then(|| stats.name.clone());
            let (live_up, live_down) = live_bytes.get(&key).copied().unwrap_or((0, 0));
            let up = stats.bytes_up.load(Ordering::Relaxed) + live_up;
            let down = stats.bytes_down.load(Ordering::Relaxed) + live_down;
            let label = &stats.name;
            let _ = writeln!(
                out,
                "gatehouse_bytes_total{{route=\"{label}\",direction=\"client_to_upstream\"}} {up}"
            );
            let _ = writeln!(
                out,
                "gatehouse_bytes_total{{route=\"{label}\",direction=\"upstream_to_client\"}} {down}"
            );
        }

        out.push_str(
            "# HELP gatehouse_upstream_connect_seconds Time to establish upstream connections.\n",
        );
        out.push_str("# TYPE gatehouse_upstream_connect_seconds histogram\n");
        for stats in all.iter().skip(1) {
            render_histogram(
                &mut out,
                "gatehouse_upstream_connect_seconds",
                &stats.name,
                &stats.connect_latency,
            );
        }
        self.render_http(&mut out, &all);
        out
    }

    fn render_http(&self, out: &mut String, all: &[Arc<RouteStats>]) {
        out.push_str("# HELP gatehouse_http_requests_total HTTP requests by route and response status class.\n");
        out.push_str("# TYPE gatehouse_http_requests_total counter\n");
        for stats in all {
            for (class, n) in stats.http_status.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let class = if class == 0 {
                        "none".to_string()
                    } else {
                        format!("{class}xx")
                    };
                    let _ = writeln!(
                        out,
                        "gatehouse_http_requests_total{{route=\"{}\",status=\"{class}\"}} {n}",
                        stats.name
                    );
                }
            }
        }
        out.push_str("# HELP gatehouse_http_request_end_total HTTP requests by route and how they ended (reason, side).\n");
        out.push_str("# TYPE gatehouse_http_request_end_total counter\n");
        for stats in all {
            for end in RequestEnd::ALL {
                let n = stats.http_end[end.index()].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "gatehouse_http_request_end_total{{route=\"{}\",reason=\"{}\",side=\"{}\"}} {n}",
                        stats.name,
                        end.as_str(),
                        end.side().as_str()
                    );
                }
            }
        }
        out.push_str("# HELP gatehouse_mirror_requests_total Copies of requests for routes' mirrors, by outcome (sent, failed, dropped, skipped).\n");
        out.push_str("# TYPE gatehouse_mirror_requests_total counter\n");
        for stats in all {
            for outcome in MirrorOutcome::ALL {
                let n = stats.mirror[outcome as usize].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "gatehouse_mirror_requests_total{{route=\"{}\",outcome=\"{}\"}} {n}",
                        stats.name,
                        outcome.as_str()
                    );
                }
            }
        }
        out.push_str(
            "# HELP gatehouse_http_requests_in_flight HTTP requests being handled, by route.\n",
        );
        out.push_str("# TYPE gatehouse_http_requests_in_flight gauge\n");
        for stats in all.iter().skip(1) {
            let _ = writeln!(
                out,
                "gatehouse_http_requests_in_flight{{route=\"{}\"}} {}",
                stats.name,
                stats.http_in_flight.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP gatehouse_http_request_seconds HTTP request latency (until the response's last byte), by route.\n");
        out.push_str("# TYPE gatehouse_http_request_seconds histogram\n");
        for stats in all {
            render_histogram(
                out,
                "gatehouse_http_request_seconds",
                &stats.name,
                &stats.http_latency,
            );
        }
    }
}

/// One metric without labels: its help, type and value.
pub fn render_single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

fn render_histogram(out: &mut String, name: &str, label: &str, h: &Histogram) {
    let count = h.count.load(Ordering::Relaxed);
    if count == 0 {
        return;
    }
    let mut cumulative = 0;
    for (i, bound) in BUCKETS.iter().enumerate() {
        cumulative += h.counts[i].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{route=\"{label}\",le=\"{bound}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{route=\"{label}\",le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "{name}_sum{{route=\"{label}\"}} {}",
        h.sum_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count{{route=\"{label}\"}} {count}");
}

/// A Prometheus label value with `\\`, `"` and newlines escaped.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
