//! What the data plane reads. `Runtime` is what lives as long as the
//! process: the connection table (and the metrics in it), the shutdown
//! signal, the connection limits. In it, the running `Snapshot` of what the
//! config decides (its generation, the listeners' settings, the routes in
//! their matching order, the clusters, the TLS settings and certificates)
//! sits in an `ArcSwap`: a reload builds a new one with `Snapshot::build`
//! (as the start does) and swaps it in whole; nothing the data plane reads
//! is ever locked for it. The HTTP plane keeps its own state beside it
//! (`http::Plane`: the parking lot, and each snapshot's upstream pools).
//!
//! Which snapshot a connection sees: an L4, TLS or upgraded connection
//! keeps the one it started with, with its route, for its whole life. An
//! HTTP connection keeps its listener's settings from its start, and reads
//! the newest snapshot for each request (routes, pools), parked or not:
//! a keep-alive connection can live for hours, and a reload must reach it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arc_swap::ArcSwap;
use rustls::{ClientConfig, ServerConfig};

use crate::config::{Config, ListenerConfig};
use crate::conn::ConnTable;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::routing::Route;
use crate::shutdown::ShutdownSignal;
use crate::tls::TlsRt;
use crate::upstream::cluster::Cluster;

/// The process state a snapshot is built with.
#[derive(Clone, Copy)]
pub struct Shared<'a> {
    pub metrics: &'a Metrics,
    pub shutdown: &'a ShutdownSignal,
    /// Where clusters that name a service take their endpoints from.
    pub registry: &'a Registry,
}

/// A listener's settings in a snapshot.
pub struct ListenerRt {
    /// Its position in the snapshot's config (what routes match on).
    pub index: usize,
    pub name: Arc<str>,
    pub config: ListenerConfig,
    /// The address every accepted connection has as its local address,
    /// when the listener is bound to one (not a wildcard, not port 0): no
    /// `getsockname` per connection then.
    pub local: Option<SocketAddr>,
    /// TLS server settings (`tls` and `https` listeners).
    pub tls: Option<Arc<ServerConfig>>,
}

/// What one config decides, read-only once built.
pub struct Snapshot {
    /// 1 for the config the process started with, one more per reload.
    pub generation: u64,
    pub config: Arc<Config>,
    pub listeners: Vec<Arc<ListenerRt>>,
    pub routes: Vec<Route>,
    /// Route indices, most specific first (HTTP routing order).
    pub http_order: Vec<usize>,
    /// The clusters, as `config.clusters` (a route's `Forward::cluster`
    /// is an index here).
    pub clusters: Vec<Arc<Cluster>>,
    /// TLS client settings per route towards its targets.
    pub upstream_tls: Vec<Option<Arc<ClientConfig>>>,
    /// The certificate store and the ACME manager.
    pub tls: TlsRt,
    /// The filter definitions, as `config.filters`.
    pub filters: Vec<crate::filter::Built>,
}

impl Snapshot {
    /// The snapshot of `config`. From `previous` (a reload), it keeps what
    /// did not change: route signals by name, clusters whose settings are
    /// the same (endpoints, states, tasks), and the certificate store and
    /// ACME manager when the certificates' settings are. Fails on a certificate, key or CA file that cannot be used.
    pub fn build(
        config: Arc<Config>,
        shared: Shared<'_>,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, crate::tls::settings::SettingsError> {
        let reuse_certs = previous.filter(|p| {
            p.config.certificates == config.certificates
                && p.config.acme == config.acme
                && p.config.internal_ca == config.internal_ca
        });
        let tls = match reuse_certs {
            Some(p) => TlsRt::build_with(&config, p.tls.certs.clone(), p.tls.acme.clone())?,
            None => TlsRt::build(&config)?,
        };
        let listeners = config
            .listeners
            .iter()
            .enumerate()
            .map(|(index, l)| {
                Arc::new(ListenerRt {
                    index,
                    name: l.name.as_str().into(),
                    config: l.clone(),
                    local: (!l.bind.ip().is_unspecified() && l.bind.port() != 0).then_some(l.bind),
                    tls: tls.servers[index].clone(),
                })
            })
            .collect();
        // A definition whose settings stay is kept (a rate limit's counts).
        let filters = crate::filter::build_all(
            &config.filters,
            previous.map_or(&[][..], |p| &p.filters[..]),
        );
        let routes: Vec<Route> = config
            .routes
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, r)| {
                let stats = shared.metrics.route(&r.name);
                // One signal per route name, from its first snapshot on.
                let closing = previous
                    .and_then(|p| p.routes.iter().find(|o| *o.name == *r.name))
                    .map_or_else(|| shared.shutdown.child(), |o| o.closing.clone());
                let chain = crate::filter::Chain::new(
                    r.filters
                        .iter()
                        .filter_map(|&f| filters.get(f).map(|b| b.filter.clone()))
                        .collect(),
                );
                Route::new(i, r, stats, closing, chain)
            })
            .collect();
        // A cluster whose settings stay is kept whole (endpoints, states,
        // tasks); one whose settings changed is made anew, with the run-time
        // changes and endpoint states of the one of its name.
        let clusters: Vec<Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|c| {
                let before =
                    previous.and_then(|p| p.clusters.iter().find(|o| o.name.as_ref() == c.name));
                before
                    .filter(|o| o.config == *c)
                    .cloned()
                    .unwrap_or_else(|| {
                        let cluster = Cluster::new(c.clone(), before.map(|o| &**o));
                        shared.registry.fill(&cluster);
                        cluster.start();
                        cluster
                    })
            })
            .collect();
        Ok(Snapshot {
            generation,
            http_order: crate::routing::http_order(&routes),
            upstream_tls: tls.upstreams.clone(),
            routes,
            clusters,
            listeners,
            config,
            tls,
            filters,
        })
    }

    /// The listener named `name` in this snapshot.
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerRt>> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}

/// Everything a connection task needs that outlives a config.
pub struct Runtime {
    pub table: Arc<ConnTable>,
    pub shutdown: ShutdownSignal,
    /// Live connections the data listeners take: `limits.max_connections`,
    /// lowered to what the descriptor limit allows (`listener::fd_budget`).
    /// Set at start.
    pub max_connections: usize,
    /// Accepted connections numbered at or above it are closed at once:
    /// the descriptors above it are kept for the admin listener and the
    /// process (`listener::fd_ceiling`).
    pub fd_ceiling: AtomicU64,
    /// Worker threads (set at start).
    pub workers: usize,
    /// Resident memory is over `limits.memory_budget`: new connections are
    /// refused (`overload`) until it is under again (the parking sweeps
    /// look, a few times a second).
    pub over_memory: std::sync::atomic::AtomicBool,
    /// The registered services (for the process's life).
    pub registry: Arc<Registry>,
    /// The nftables table of kernel routes (for the process's life).
    pub kernel: Arc<crate::kernel::Kernel>,
    live: ArcSwap<Snapshot>,
}

impl Runtime {
    /// `limits`: the connection limit and the descriptor ceiling, as the
    /// listeners work them out (`listener::fd_budget`, `fd_ceiling`).
    pub fn new(
        snapshot: Snapshot,
        table: Arc<ConnTable>,
        shutdown: ShutdownSignal,
        limits: (usize, u64),
        (registry, kernel): (Arc<Registry>, Arc<crate::kernel::Kernel>),
    ) -> Runtime {
        registry.attach(&snapshot.clusters, || ());
        Runtime {
            registry,
            kernel,
            max_connections: limits.0,
            fd_ceiling: limits.1.into(),
            workers: snapshot.config.workers,
            over_memory: false.into(),
            table,
            shutdown,
            live: ArcSwap::from_pointee(snapshot),
        }
    }

    /// The running snapshot, to keep.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// The running snapshot, for a moment (not across an await).
    pub fn current(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.live.load()
    }

    /// The process state snapshots are built with.
    pub fn shared(&self) -> Shared<'_> {
        Shared {
            metrics: self.table.metrics(),
            shutdown: &self.shutdown,
            registry: &self.registry,
        }
    }

    /// Makes `next` the running snapshot; returns the one it replaces.
    /// Its clusters that name a service take the registry's instances as
    /// they are after the swap.
    pub fn swap_arc(&self, next: Arc<Snapshot>) -> Arc<Snapshot> {
        let clusters = next.clusters.clone();
        self.registry.attach(&clusters, || self.live.swap(next))
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.table.metrics()
    }
}

/// A runtime with one listener and one route, for unit tests.
#[cfg(test)]
pub fn test_runtime() -> (Arc<Runtime>, Arc<ListenerRt>) {
    let text = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[routes]]\nname = \"r\"\naction.forward = [\"127.0.0.1:9\"]\n";
    let config = Arc::new(
        crate::config::parse("test.toml", text, &|_| None).unwrap_or_else(|e| panic!("{e}")),
    );
    let table = ConnTable::new(Arc::new(Metrics::new()));
    let shutdown = ShutdownSignal::new();
    let registry = Arc::new(Registry::memory(16));
    let shared = Shared {
        metrics: table.metrics(),
        shutdown: &shutdown,
        registry: &registry,
    };
    let snapshot = Snapshot::build(config, shared, 1, None).unwrap_or_else(|e| panic!("{e}"));
    let listener = snapshot.listeners[0].clone();
    let limits = (1024, u64::MAX);
    let runtime = Arc::new(Runtime::new(
        snapshot,
        table,
        shutdown.clone(),
        limits,
        (
            registry,
            Arc::new(crate::kernel::Kernel::new("gatehouse_test".into())),
        ),
    ));
    (runtime, listener)
}
