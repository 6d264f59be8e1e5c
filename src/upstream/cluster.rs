//! Clusters at run time: a cluster's endpoints (every address of every
//! configured endpoint, with its weight) sit in an `ArcSwap` that the data
//! plane reads without a lock. Names are resolved by the cluster, not per
//! connect: once when it is made, then every `resolve_every` by a task of
//! its own (which ends with the cluster); a name that fails to resolve
//! keeps its last good addresses. Picking is smooth weighted round robin
//! (nginx's), from a precomputed round: an index, no lock.
//! (A route's HTTP pools, one per endpoint, are `http::pool::RoutePools`.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::error::UpstreamError;
use crate::config::ClusterConfig;

/// One address to send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    /// The endpoint as configured (`host:port`): the name TLS verifies
    /// and a request without a `Host` gets.
    pub target: Arc<str>,
}

/// A cluster's endpoints at one moment.
#[derive(Debug, Default)]
pub struct EndpointSet {
    /// One more at each change of the set.
    pub generation: u64,
    pub endpoints: Vec<Endpoint>,
    round: Round,
    /// Every name has been looked up at least once.
    pub settled: bool,
}

/// How picks go round the endpoints, without a lock: a pick is the
/// position `n` of a shared counter in the round.
#[derive(Debug, Default)]
enum Round {
    /// No endpoint.
    #[default]
    Empty,
    /// The endpoints' positions in the order nginx's smooth weighted
    /// round robin picks them (each as often as its weight, spread out).
    Smooth(Vec<u32>),
    /// Above `SCHEDULE_MAX` picks a round: the running sums of the
    /// weights (the same shares, in runs).
    Runs(Vec<u64>),
}

/// The longest round kept as a schedule (4 bytes a pick).
const SCHEDULE_MAX: u64 = 16_384;

impl EndpointSet {
    fn new(generation: u64, endpoints: Vec<Endpoint>, settled: bool) -> EndpointSet {
        let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
        let round = if endpoints.is_empty() {
            Round::Empty
        } else if total <= SCHEDULE_MAX {
            Round::Smooth(smooth_round(&endpoints))
        } else {
            let mut sum = 0;
            Round::Runs(
                endpoints
                    .iter()
                    .map(|e| {
                        sum += u64::from(e.weight);
                        sum
                    })
                    .collect(),
            )
        };
        EndpointSet {
            generation,
            endpoints,
            round,
            settled,
        }
    }

    /// The endpoint at position `n` of the weighted cycle.
    fn at(&self, n: usize) -> Option<usize> {
        match &self.round {
            Round::Empty => None,
            Round::Smooth(order) => Some(order[n % order.len()] as usize),
            Round::Runs(sums) => {
                let n = n as u64 % sums.last()?;
                Some(sums.partition_point(|&c| c <= n))
            }
        }
    }
}

/// One round of smooth weighted round robin (nginx): at each pick every
/// endpoint's current weight grows by its weight, the largest is picked
/// and loses the total.
fn smooth_round(endpoints: &[Endpoint]) -> Vec<u32> {
    let total: i64 = endpoints.iter().map(|e| i64::from(e.weight)).sum();
    let mut current = vec![0i64; endpoints.len()];
    let mut round = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, e) in endpoints.iter().enumerate() {
            current[i] += i64::from(e.weight);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        round.push(best as u32);
    }
    round
}

pub struct Cluster {
    pub name: Arc<str>,
    pub config: ClusterConfig,
    set: ArcSwap<EndpointSet>,
    next: AtomicUsize,
    /// The generation, announced after each resolution round.
    resolved: tokio::sync::watch::Sender<u64>,
}

impl Cluster {
    /// A cluster whose address endpoints are ready at once; names are
    /// resolved by `start_resolving`.
    pub fn new(config: ClusterConfig) -> Arc<Cluster> {
        let literal: Vec<Endpoint> = config
            .endpoints
            .iter()
            .filter_map(|e| {
                Some(Endpoint {
                    addr: e.address.parse().ok()?,
                    weight: e.weight,
                    target: e.address.as_str().into(),
                })
            })
            .collect();
        let settled = literal.len() == config.endpoints.len();
        Arc::new(Cluster {
            name: config.name.as_str().into(),
            set: ArcSwap::from_pointee(EndpointSet::new(1, literal, settled)),
            next: AtomicUsize::new(0),
            resolved: tokio::sync::watch::channel(1).0,
            config,
        })
    }

    fn has_names(&self) -> bool {
        self.config
            .endpoints
            .iter()
            .any(|e| e.address.parse::<SocketAddr>().is_err())
    }

    /// Resolves the cluster's names now and every `resolve_every` after,
    /// in a task that ends once the cluster is dropped (no names: no task;
    /// outside a runtime, as in unit tests: nothing).
    pub fn start_resolving(self: &Arc<Self>) {
        if !self.has_names() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
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
        let current = self.set.load_full();
        let deadline = self.config.resolve_every.min(Duration::from_secs(5));
        let mut endpoints = Vec::new();
        for e in &self.config.endpoints {
            let target: Arc<str> = e.address.as_str().into();
            if let Ok(addr) = e.address.parse::<SocketAddr>() {
                endpoints.push(Endpoint {
                    addr,
                    weight: e.weight,
                    target,
                });
                continue;
            }
            let looked_up = tokio::time::timeout(deadline, tokio::net::lookup_host(&e.address))
                .await
                .map_err(|_| format!("no answer in {deadline:?}"))
                .and_then(|r| r.map_err(|err| err.to_string()));
            let last_good = || -> Vec<SocketAddr> {
                let same = current.endpoints.iter().filter(|x| x.target == target);
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
            }));
        }
        let generation = if endpoints == current.endpoints {
            current.generation
        } else {
            let list: Vec<String> = endpoints.iter().map(|e| e.addr.to_string()).collect();
            tracing::info!(cluster = %self.name, endpoints = %list.join(" "), "cluster endpoints changed");
            current.generation + 1
        };
        if generation != current.generation || !current.settled {
            self.set
                .store(Arc::new(EndpointSet::new(generation, endpoints, true)));
        }
        self.resolved.send_replace(generation);
    }

    /// The endpoints now.
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.set.load()
    }

    /// The position in `set` of the next endpoint (weighted round robin).
    pub fn pick_in(&self, set: &EndpointSet) -> Option<usize> {
        set.at(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// The next endpoint, waiting for the first resolution of the names
    /// if it is still under way (the caller bounds the wait).
    pub async fn pick(&self) -> Result<Endpoint, UpstreamError> {
        self.settled().await;
        let set = self.endpoints();
        let i = self.pick_in(&set).ok_or(UpstreamError::Unresolved)?;
        Ok(set.endpoints[i].clone())
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointConfig;

    fn cluster(endpoints: &[(&str, u32)]) -> Arc<Cluster> {
        Cluster::new(ClusterConfig {
            name: "c".into(),
            endpoints: endpoints
                .iter()
                .map(|(a, w)| EndpointConfig {
                    address: (*a).into(),
                    weight: *w,
                })
                .collect(),
            resolve_every: Duration::from_secs(30),
            inline: false,
        })
    }

    #[test]
    fn weights_share_the_cycle_spread_out() {
        // nginx's example: weights 5, 1, 1 give a a b a c a a.
        let c = cluster(&[("127.0.0.1:1", 5), ("127.0.0.1:2", 1), ("127.0.0.1:3", 1)]);
        let set = c.endpoints();
        let picks: Vec<usize> = (0..14).map(|_| c.pick_in(&set).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
        // Equal weights: plain turns.
        let c = cluster(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)]);
        let set = c.endpoints();
        let picks: Vec<usize> = (0..4).map(|_| c.pick_in(&set).unwrap()).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
    }

    #[test]
    fn a_round_too_long_to_keep_still_shares_by_weight() {
        let endpoints: Vec<_> = (0..20)
            .map(|i| Endpoint {
                addr: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                weight: 1000,
                target: "t".into(),
            })
            .collect();
        let set = EndpointSet::new(1, endpoints, true);
        assert!(matches!(set.round, Round::Runs(_)));
        let mut counts = [0usize; 20];
        for n in 0..20_000 {
            counts[set.at(n).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&n| n == 1000), "{counts:?}");
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
        assert_eq!(c.pick().await, Err(UpstreamError::Unresolved));
    }
}
