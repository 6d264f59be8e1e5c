//! Clusters at run time. A cluster's endpoint set (every address of every
//! configured endpoint, with its weight and its `EndpointState`, and the
//! balancer made for it) sits in an `ArcSwap` that the data plane reads
//! without a lock; the cluster is the one owner that writes it. The set is
//! made from three things: the configured endpoints as last resolved (names
//! are resolved by the cluster, not per connect: once when it is made,
//! then every `resolve_every` by a task of its own; a name that fails to
//! resolve keeps its last good addresses), the changes made at run time
//! through the endpoint API (`add`, `remove`, `drain`, `set_weight`), and
//! the states kept by endpoint identity (so health survives a change of
//! the set and a reload that keeps the endpoint).
//!
//! A pick asks the set's balancer (`balance`) for an endpoint that is
//! usable (not unhealthy, ejected or draining) and not yet tried by the
//! request; when none is, "panic mode" (if configured) uses any endpoint
//! that is not draining, else `no_healthy_upstream`. The cluster also
//! counts requests in flight (its cap: circuit breaking) and retries in
//! flight (its retry budget), and reports outcomes to passive health.
//! (A route's HTTP pools, one per endpoint, are `http::pool::RoutePools`;
//! active health checks, `health`.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::balance::{self, Balance, Pick};
use super::endpoint::{EndpointState, Outcome, now_ms};
use super::error::UpstreamError;
use crate::config::{ClusterConfig, EndpointConfig};

/// One address to send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    /// The endpoint as configured (`host:port`): the name TLS verifies
    /// and a request without a `Host` gets.
    pub target: Arc<str>,
    /// A registered instance's health-check hint: the path its probes
    /// ask for (`health.path` in its registration).
    pub health_path: Option<Arc<str>>,
    /// How often that hint asks to be probed.
    pub health_every: Option<Duration>,
}

/// A cluster's endpoints at one moment.
#[derive(Debug)]
pub struct EndpointSet {
    /// One more at each change of the set.
    pub generation: u64,
    pub endpoints: Vec<Endpoint>,
    /// Each endpoint's state, in the same order.
    pub states: Vec<Arc<EndpointState>>,
    balancer: Box<dyn Balance>,
    /// Every name has been looked up at least once.
    pub settled: bool,
}

/// Changes made at run time, applied over the configured endpoints.
#[derive(Debug, Default, Clone)]
struct Changes {
    added: Vec<Endpoint>,
    removed: Vec<SocketAddr>,
    weights: Vec<(SocketAddr, u32)>,
}

pub struct Cluster {
    pub name: Arc<str>,
    pub config: ClusterConfig,
    set: ArcSwap<EndpointSet>,
    /// The generation, announced after each resolution round.
    resolved: tokio::sync::watch::Sender<u64>,
    /// The configured endpoints as last resolved, the run-time changes,
    /// and every endpoint's state (the lock also orders set changes).
    inner: Mutex<Inner>,
    /// Requests (or L4 connections) admitted under `max_requests`.
    active: AtomicU32,
    /// Retries in flight.
    retrying: AtomicU32,
    /// Health state changes, ejections and retries (for `/clusters`).
    pub counters: Counters,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub became_unhealthy: AtomicU64,
    pub became_healthy: AtomicU64,
    pub ejections: AtomicU64,
    pub retries: AtomicU64,
    /// Retries the budget refused.
    pub retries_over_budget: AtomicU64,
    pub overloaded: AtomicU64,
}

#[derive(Default)]
struct Inner {
    base: Vec<Endpoint>,
    changes: Changes,
    states: Vec<Arc<EndpointState>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    /// A cluster whose address endpoints are ready at once; names are
    /// resolved by `start`. `previous`: the cluster of the same name
    /// before a reload, whose run-time changes and endpoint states carry
    /// over.
    pub fn new(config: ClusterConfig, previous: Option<&Cluster>) -> Arc<Cluster> {
        let literal: Vec<Endpoint> = config
            .endpoints
            .iter()
            .filter_map(|e| {
                Some(Endpoint {
                    addr: e.address.parse().ok()?,
                    weight: e.weight,
                    target: e.address.as_str().into(),
                    health_path: None,
                    health_every: None,
                })
            })
            .collect();
        let settled = literal.len() == config.endpoints.len();
        let inner = match previous {
            Some(p) => {
                let old = lock(&p.inner);
                Inner {
                    base: literal,
                    changes: old.changes.clone(),
                    states: old.states.clone(),
                }
            }
            None => Inner {
                base: literal,
                ..Inner::default()
            },
        };
        let empty = EndpointSet {
            generation: 0,
            endpoints: Vec::new(),
            states: Vec::new(),
            balancer: balance::for_set(&config.policy.balance, &[]),
            settled: false,
        };
        let cluster = Arc::new(Cluster {
            name: config.name.as_str().into(),
            set: ArcSwap::from_pointee(empty),
            resolved: tokio::sync::watch::channel(1).0,
            inner: Mutex::new(inner),
            active: AtomicU32::new(0),
            retrying: AtomicU32::new(0),
            counters: Counters::default(),
            config,
        });
        cluster.publish(None, settled);
        cluster
    }

    /// Makes the endpoint set from the resolved endpoints (`base`, when
    /// they are new) and the run-time changes; a new generation when it
    /// differs from the current one.
    fn publish(&self, base: Option<Vec<Endpoint>>, settled: bool) {
        let mut inner = lock(&self.inner);
        if let Some(base) = base {
            inner.base = base;
        }
        let ch = &inner.changes;
        let mut endpoints: Vec<Endpoint> = inner
            .base
            .iter()
            .chain(ch.added.iter())
            .filter(|e| !ch.removed.contains(&e.addr))
            .map(|e| {
                let weight = ch
                    .weights
                    .iter()
                    .rev()
                    .find(|(a, _)| *a == e.addr)
                    .map_or(e.weight, |(_, w)| *w);
                Endpoint {
                    weight,
                    ..e.clone()
                }
            })
            .collect();
        // (An address configured and added keeps its first place. A fast
        // keyed hash: a service's cluster may have tens of thousands, and
        // a large one is rebuilt twice a second while it registers.)
        let hasher = foldhash::fast::RandomState::default();
        let mut seen = std::collections::HashSet::with_capacity_and_hasher(endpoints.len(), hasher);
        endpoints.retain(|e| seen.insert(e.addr));
        drop(seen);
        let current = self.set.load();
        if current.endpoints == endpoints && current.settled == settled {
            return;
        }
        // (By address, which is unique in a set; the state is kept when
        // its target is the same too.)
        let mut known = std::collections::HashMap::with_capacity_and_hasher(
            inner.states.len(),
            foldhash::fast::RandomState::default(),
        );
        known.extend(inner.states.iter().map(|s| (s.addr, s)));
        let states: Vec<Arc<EndpointState>> = endpoints
            .iter()
            .map(|e| match known.get(&e.addr) {
                Some(s) if s.target == e.target => Arc::clone(s),
                _ => EndpointState::new(e.target.clone(), e.addr),
            })
            .collect();
        drop(known);
        // States of endpoints that left go (a request still in flight to
        // one holds its state until it ends).
        inner.states = states.clone();
        let generation = current.generation + 1;
        if current.endpoints != endpoints && current.generation > 0 {
            // (The first few: a service's cluster may have thousands.)
            let mut list: Vec<String> = endpoints
                .iter()
                .take(16)
                .map(|e| e.addr.to_string())
                .collect();
            if endpoints.len() > 16 {
                list.push(format!("(and {} more)", endpoints.len() - 16));
            }
            tracing::info!(cluster = %self.name, count = endpoints.len(), endpoints = %list.join(" "), "cluster endpoints changed");
        }
        let balancer = balance::for_set(&self.config.policy.balance, &endpoints);
        self.set.store(Arc::new(EndpointSet {
            generation,
            endpoints,
            states,
            balancer,
            settled,
        }));
    }

    fn has_names(&self) -> bool {
        self.config
            .endpoints
            .iter()
            .any(|e| e.address.parse::<SocketAddr>().is_err())
    }

    /// Starts the cluster's tasks: name resolution now and every
    /// `resolve_every` (if it has names) and active health checks (if
    /// configured). They end once the cluster is dropped; outside a
    /// runtime, as in unit tests, nothing starts.
    pub fn start(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(check) = self.config.policy.health.clone() {
            rt.spawn(super::health::run(Arc::downgrade(self), check, false));
        } else if self.config.service.is_some() {
            // (Instances that registered with a health-check hint are
            // probed by it; the others have passive health only.)
            rt.spawn(super::health::run(
                Arc::downgrade(self),
                super::health::hinted(),
                true,
            ));
        }
        if !self.has_names() {
            return;
        }
        let weak = Arc::downgrade(self);
        let every = self.config.resolve_every;
        rt.spawn(async move {
            loop {
                let Some(cluster) = Weak::upgrade(&weak) else {
                    return;
                };
                cluster.resolve().await;
                drop(cluster);
                tokio::time::sleep(every).await;
            }
        });
    }

    /// One resolution round: every name's addresses now, or its last good
    /// ones where the lookup fails.
    pub async fn resolve(&self) {
        let current: Vec<Endpoint> = lock(&self.inner).base.clone();
        let deadline = self.config.resolve_every.min(Duration::from_secs(5));
        let mut endpoints = Vec::new();
        for e in &self.config.endpoints {
            let target: Arc<str> = e.address.as_str().into();
            if let Ok(addr) = e.address.parse::<SocketAddr>() {
                endpoints.push(Endpoint {
                    addr,
                    weight: e.weight,
                    target,
                    health_path: None,
                    health_every: None,
                });
                continue;
            }
            let looked_up = tokio::time::timeout(deadline, tokio::net::lookup_host(&e.address))
                .await
                .map_err(|_| format!("no answer in {deadline:?}"))
                .and_then(|r| r.map_err(|err| err.to_string()));
            let last_good = || -> Vec<SocketAddr> {
                let same = current.iter().filter(|x| x.target == target);
                same.map(|x| x.addr).collect()
            };
            let mut addrs: Vec<SocketAddr> = match looked_up {
                Ok(a) => a.collect(),
                Err(err) => {
                    let kept = last_good();
                    tracing::warn!(cluster = %self.name, name = %e.address, error = %err, kept = kept.len(), "resolution failed: the last good addresses stay");
                    kept
                }
            };
            if addrs.is_empty() {
                // (An answer without an address is no better than none.)
                addrs = last_good();
            }
            addrs.sort();
            addrs.dedup();
            endpoints.extend(addrs.into_iter().map(|addr| Endpoint {
                addr,
                weight: e.weight,
                target: target.clone(),
                health_path: None,
                health_every: None,
            }));
        }
        self.publish(Some(endpoints), true);
        self.resolved.send_replace(self.set.load().generation);
    }

    /// The endpoints now.
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.set.load()
    }

    /// The position in `set` of the endpoint for a request (`key`: its
    /// hash key, when the cluster hashes), avoiding those it `tried`
    /// where another is usable.
    pub fn pick_in(
        &self,
        set: &EndpointSet,
        key: Option<u64>,
        sticky: Option<u64>,
        tried: &[SocketAddr],
    ) -> Result<usize, UpstreamError> {
        if set.endpoints.is_empty() {
            // (A service's cluster with no instance registered: none healthy.)
            if self.config.service.is_some() {
                return Err(UpstreamError::NoHealthy);
            }
            return Err(UpstreamError::Unresolved);
        }
        // (The clock only when an endpoint has been ejected.)
        let now = std::cell::Cell::new(0);
        let healthy = |i: usize| {
            set.states[i].usable(|| {
                if now.get() == 0 {
                    now.set(now_ms().max(1));
                }
                now.get()
            })
        };
        let cap = self.config.policy.max_requests_per_endpoint;
        let usable = |i: usize| healthy(i) && cap.is_none_or(|c| set.states[i].in_flight() < c);
        let pick = |usable: &dyn Fn(usize) -> bool| {
            set.balancer.pick(&Pick {
                endpoints: &set.endpoints,
                states: &set.states,
                key,
                usable,
            })
        };
        let fresh = |i: usize| usable(i) && !tried.contains(&set.endpoints[i].addr);
        // A sticky client's endpoint, while it is usable.
        if let Some(i) = sticky.and_then(|id| set.states.iter().position(|s| s.id == id)) {
            if fresh(i) {
                return Ok(i);
            }
        }
        if let Some(i) = pick(&fresh) {
            return Ok(i);
        }
        if !tried.is_empty() {
            if let Some(i) = pick(&usable) {
                return Ok(i);
            }
        }
        // Endpoints there, but every one full: overloaded.
        if cap.is_some() && (0..set.states.len()).any(healthy) {
            self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(UpstreamError::Overloaded);
        }
        if self.config.policy.panic {
            if let Some(i) = pick(&|i| !set.states[i].draining()) {
                return Ok(i);
            }
        }
        Err(UpstreamError::NoHealthy)
    }

    /// The next endpoint and its state, waiting for the first resolution
    /// of the names if it is still under way (the caller bounds the wait).
    pub async fn pick(
        &self,
        key: Option<u64>,
        tried: &[SocketAddr],
    ) -> Result<(Endpoint, Arc<EndpointState>), UpstreamError> {
        self.settled().await;
        let set = self.endpoints();
        let i = self.pick_in(&set, key, None, tried)?;
        Ok((set.endpoints[i].clone(), set.states[i].clone()))
    }

    /// Until every name has been looked up once.
    pub async fn settled(&self) {
        if self.set.load().settled {
            return;
        }
        let mut rx = self.resolved.subscribe();
        while !self.set.load().settled {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// A request (or L4 connection) for the cluster, within its cap on
    /// requests in flight (`max_requests`): `Overloaded` beyond it. `None`:
    /// the cluster has no cap, and nothing is counted.
    pub fn admit(self: &Arc<Self>) -> Result<Option<Admitted>, UpstreamError> {
        let Some(max) = self.config.policy.max_requests else {
            return Ok(None);
        };
        let n = self.active.fetch_add(1, Ordering::Relaxed);
        if n >= max {
            self.active.fetch_sub(1, Ordering::Relaxed);
            self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(UpstreamError::Overloaded);
        }
        Ok(Some(Admitted(self.clone())))
    }

    /// Requests (or L4 connections) in flight now, over every endpoint.
    pub fn active(&self) -> u32 {
        self.endpoints().states.iter().map(|s| s.in_flight()).sum()
    }

    /// Room for one more retry in the budget: retries in flight at most
    /// `budget_percent` of the requests in flight, or `min_concurrent`.
    pub fn retry_token(self: &Arc<Self>) -> Option<RetryToken> {
        let r = &self.config.policy.retries;
        let active = u64::from(self.active());
        let budget = (active * u64::from(r.budget_percent) / 100).max(u64::from(r.min_concurrent));
        let n = self.retrying.fetch_add(1, Ordering::Relaxed);
        if u64::from(n) >= budget {
            self.retrying.fetch_sub(1, Ordering::Relaxed);
            self.counters
                .retries_over_budget
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        Some(RetryToken(self.clone()))
    }

    /// An attempt's outcome through `state`'s endpoint, for passive health.
    pub fn report(&self, state: &EndpointState, outcome: Outcome) {
        let outlier = &self.config.policy.outlier;
        let ejected = state.outcome(outcome, outlier, || {
            let set = self.endpoints();
            let now = now_ms();
            let ejected = set
                .states
                .iter()
                .filter(|s| s.ejected(now).is_some())
                .count();
            // (A cluster of one endpoint never ejects it, as nginx.)
            let cap = set.states.len() * outlier.max_percent as usize / 100;
            ejected < cap
        });
        if ejected {
            self.counters.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(cluster = %self.name, endpoint = %state.addr, "endpoint ejected after failures in a row");
        }
    }

    /// Replaces the endpoints the cluster has from its source (a
    /// registered service's instances); run-time changes still apply over
    /// them. One that leaves takes no new request; those in flight finish.
    pub fn set_base(&self, base: Vec<Endpoint>) {
        self.publish(Some(base), true);
    }

    /// Adds an endpoint at run time (or sets the weight of one there).
    pub fn add(&self, addr: SocketAddr, weight: u32) {
        {
            let mut inner = lock(&self.inner);
            let ch = &mut inner.changes;
            ch.removed.retain(|a| *a != addr);
            ch.weights.retain(|(a, _)| *a != addr);
            ch.added.retain(|e| e.addr != addr);
            ch.added.push(Endpoint {
                addr,
                weight,
                target: addr.to_string().into(),
                health_path: None,
                health_every: None,
            });
            if let Some(s) = inner.states.iter().find(|s| s.addr == addr) {
                s.set_draining(false);
            }
        }
        self.publish(None, self.set.load().settled);
    }

    /// Removes an endpoint at once (its requests in flight finish).
    /// False: no such endpoint.
    pub fn remove(&self, addr: SocketAddr) -> bool {
        if !self.endpoints().endpoints.iter().any(|e| e.addr == addr) {
            return false;
        }
        {
            let mut inner = lock(&self.inner);
            let ch = &mut inner.changes;
            ch.added.retain(|e| e.addr != addr);
            if inner.base.iter().any(|e| e.addr == addr) {
                inner.changes.removed.push(addr);
            }
        }
        self.publish(None, self.set.load().settled);
        true
    }

    /// Changes an endpoint's weight. False: no such endpoint.
    pub fn set_weight(&self, addr: SocketAddr, weight: u32) -> bool {
        if !self.endpoints().endpoints.iter().any(|e| e.addr == addr) {
            return false;
        }
        lock(&self.inner).changes.weights.push((addr, weight));
        self.publish(None, self.set.load().settled);
        true
    }

    /// Drains an endpoint: no new requests or connections; it leaves the
    /// cluster when its last one ends, or at `deadline`. False: no such
    /// endpoint.
    pub fn drain(self: &Arc<Self>, addr: SocketAddr, deadline: Duration) -> bool {
        let set = self.endpoints();
        let Some(state) = set.states.iter().find(|s| s.addr == addr).cloned() else {
            return false;
        };
        drop(set);
        state.set_draining(true);
        let weak = Arc::downgrade(self);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.remove(addr);
            return true;
        };
        rt.spawn(async move {
            let idle = state.idle();
            let ended = tokio::time::timeout(deadline, idle).await.is_ok();
            let Some(cluster) = weak.upgrade() else {
                return;
            };
            // (Unless it was added again meanwhile.)
            if state.draining() {
                tracing::info!(cluster = %cluster.name, endpoint = %addr, in_flight = state.in_flight(), "drained endpoint leaves the cluster{}", if ended { "" } else { " at its deadline" });
                cluster.remove(addr);
            }
        });
        true
    }

    /// The configured endpoint entries (for `/clusters`).
    pub fn configured(&self) -> &[EndpointConfig] {
        &self.config.endpoints
    }
}

/// A request (or L4 connection) in flight through a cluster.
pub struct Admitted(Arc<Cluster>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A retry in flight, within the cluster's budget.
pub struct RetryToken(Arc<Cluster>);

impl Drop for RetryToken {
    fn drop(&mut self) {
        self.0.retrying.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A backoff before retry `n` (1 for the first): up to `base` × 2^(n-1),
/// full jitter, at most a quarter of a second.
pub fn backoff(base: Duration, n: u32) -> Duration {
    let cap = base
        .saturating_mul(1u32 << n.saturating_sub(1).min(10))
        .min(Duration::from_millis(250));
    let us = u64::try_from(cap.as_micros()).unwrap_or(0);
    Duration::from_micros(fastrand::u64(0..=us))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterPolicy, EndpointConfig};

    fn cluster(endpoints: &[(&str, u32)]) -> Arc<Cluster> {
        Cluster::new(
            ClusterConfig {
                name: "c".into(),
                endpoints: endpoints
                    .iter()
                    .map(|(a, w)| EndpointConfig {
                        address: (*a).into(),
                        weight: *w,
                    })
                    .collect(),
                service: None,
                resolve_every: Duration::from_secs(30),
                inline: false,
                policy: ClusterPolicy::default(),
            },
            None,
        )
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn picks_skip_tried_then_unusable_endpoints() {
        let c = cluster(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)]);
        let set = c.endpoints();
        for _ in 0..10 {
            let i = c.pick_in(&set, None, None, &[addr("127.0.0.1:1")]).unwrap();
            assert_eq!(set.endpoints[i].addr, addr("127.0.0.1:2"));
        }
        // Both tried: one is picked all the same.
        let both = [addr("127.0.0.1:1"), addr("127.0.0.1:2")];
        assert!(c.pick_in(&set, None, None, &both).is_ok());
        // Both draining: no healthy endpoint.
        set.states.iter().for_each(|s| s.set_draining(true));
        assert_eq!(
            c.pick_in(&set, None, None, &[]),
            Err(UpstreamError::NoHealthy)
        );
    }

    #[test]
    fn endpoints_change_at_run_time_and_keep_their_state() {
        let c = cluster(&[("127.0.0.1:1", 1)]);
        let first = c.endpoints().states[0].clone();
        c.add(addr("127.0.0.1:2"), 3);
        let set = c.endpoints();
        assert_eq!(set.endpoints.len(), 2);
        assert_eq!(set.endpoints[1].weight, 3);
        assert!(
            Arc::ptr_eq(&set.states[0], &first),
            "the one that stayed keeps its state"
        );
        assert!(c.set_weight(addr("127.0.0.1:1"), 5));
        assert_eq!(c.endpoints().endpoints[0].weight, 5);
        assert!(c.remove(addr("127.0.0.1:1")));
        assert_eq!(c.endpoints().endpoints.len(), 1);
        assert!(!c.remove(addr("127.0.0.1:9")));
        // A reload that changes the cluster keeps what was changed at run time.
        let mut config = c.config.clone();
        config.resolve_every = Duration::from_secs(60);
        let next = Cluster::new(config, Some(&c));
        let set = next.endpoints();
        assert_eq!(set.endpoints.len(), 1);
        assert_eq!(set.endpoints[0].addr, addr("127.0.0.1:2"));
    }

    #[test]
    fn the_cap_and_the_budget_are_counted() {
        let mut c = cluster(&[("127.0.0.1:1", 1)]);
        Arc::get_mut(&mut c).unwrap().config.policy.max_requests = Some(2);
        let a = c.admit().unwrap();
        let _b = c.admit().unwrap();
        assert!(matches!(c.admit(), Err(UpstreamError::Overloaded)));
        drop(a);
        assert!(c.admit().is_ok());
        // Budget: at least `min_concurrent` (3) retries in flight.
        let tokens: Vec<_> = (0..3).filter_map(|_| c.retry_token()).collect();
        assert_eq!(tokens.len(), 3);
        assert!(c.retry_token().is_none());
        drop(tokens);
        assert!(c.retry_token().is_some());
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let base = Duration::from_millis(10);
        assert!(backoff(base, 1) <= Duration::from_millis(10));
        assert!(backoff(base, 3) <= Duration::from_millis(40));
        assert!(backoff(base, 30) <= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn every_address_of_a_name_is_an_endpoint_and_a_failed_lookup_keeps_them() {
        let c = cluster(&[("localhost:80", 1), ("127.0.0.9:81", 2)]);
        assert!(!c.endpoints().settled, "a name waits for its lookup");
        c.resolve().await;
        let set = c.endpoints();
        assert!(set.settled);
        let from_name: Vec<_> = set
            .endpoints
            .iter()
            .filter(|e| &*e.target == "localhost:80")
            .collect();
        assert!(!from_name.is_empty(), "{set:?}");
        assert!(from_name.iter().all(|e| e.addr.ip().is_loopback()));
        // A second round with the same answers changes nothing.
        let generation = set.generation;
        c.resolve().await;
        assert_eq!(c.endpoints().generation, generation);
    }

    #[tokio::test]
    async fn a_name_that_never_resolved_leaves_the_cluster_without_it() {
        let c = cluster(&[("nothing.invalid:80", 1)]);
        c.resolve().await;
        assert!(c.endpoints().settled);
        assert_eq!(
            c.pick(None, &[]).await.map(|(e, _)| e),
            Err(UpstreamError::Unresolved)
        );
    }
}
