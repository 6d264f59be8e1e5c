//! A route's HTTP pools (`RoutePools`): one `TargetPool` per endpoint of
//! its cluster, keyed by the endpoint's address, so that a change of the
//! endpoint set keeps the pools (and idle connections) of the endpoints
//! that stay.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::{ClientShares, TargetPool, Upstream};
use crate::config::HttpPolicy;
use crate::upstream::UpstreamError;
use crate::upstream::cluster::{Cluster, EndpointSet};
use std::net::SocketAddr;

/// A route's HTTP pools: one per endpoint of its cluster, with the route's
/// pool settings and upstream protocol.
pub struct RoutePools {
    pub cluster: Arc<Cluster>,
    policy: HttpPolicy,
    upstream: Upstream,
    /// The client shares of every pool of the route (one table).
    shares: Arc<ClientShares>,
    current: ArcSwap<PoolSet>,
    rebuilding: Mutex<()>,
}

/// The pools for one generation of the endpoint set, in its order.
pub struct PoolSet {
    generation: u64,
    pub pools: Vec<Arc<TargetPool>>,
}

impl RoutePools {
    /// `previous`: the same route's pools before a reload, with the same
    /// pool and upstream settings (the caller checks): the pools of its
    /// endpoints that are still endpoints are kept, idle connections and all.
    pub fn new(
        cluster: Arc<Cluster>,
        policy: &HttpPolicy,
        upstream: Upstream,
        previous: Option<&RoutePools>,
    ) -> RoutePools {
        let kept = previous.map(|p| p.current.load().pools.clone());
        // (The kept pools count in the previous table: it goes on.)
        let shares = previous.map_or_else(
            || Arc::new(ClientShares::new(policy.pool_max_per_client)),
            |p| p.shares.clone(),
        );
        let pools = RoutePools {
            cluster,
            policy: policy.clone(),
            upstream,
            shares,
            // (Generation 0: no set has it, so the first look rebuilds,
            // finding these by address.)
            current: ArcSwap::from_pointee(PoolSet {
                generation: 0,
                pools: kept.unwrap_or_default(),
            }),
            rebuilding: Mutex::new(()),
        };
        pools.for_set(&pools.cluster.endpoints());
        pools
    }

    /// The pools matching `set` (made for it, keeping those of endpoints
    /// that were already there, when the set changed).
    pub fn for_set(&self, set: &EndpointSet) -> arc_swap::Guard<Arc<PoolSet>> {
        let now = self.current.load();
        if now.generation == set.generation {
            return now;
        }
        drop(now);
        let _one = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        if old.generation != set.generation {
            // (By address, unique in a set, with a fast keyed hash: linear
            // in the set, which may be a registered service's tens of
            // thousands of instances. A pool is kept for the same state.)
            let mut by_endpoint = std::collections::HashMap::with_capacity_and_hasher(
                old.pools.len(),
                foldhash::fast::RandomState::default(),
            );
            by_endpoint.extend(old.pools.iter().map(|p| (p.addr(), p)));
            let pools = set
                .endpoints
                .iter()
                .zip(&set.states)
                .map(|(e, state)| {
                    by_endpoint
                        .get(&e.addr)
                        .filter(|p| Arc::ptr_eq(p.state(), state))
                        .map(|p| Arc::clone(p))
                        .unwrap_or_else(|| {
                            TargetPool::new(
                                e,
                                state.clone(),
                                (&self.policy, &self.shares),
                                self.upstream.clone(),
                            )
                        })
                })
                .collect();
            self.current.store(Arc::new(PoolSet {
                generation: set.generation,
                pools,
            }));
        }
        self.current.load()
    }

    /// The pool of the endpoint for a request (`key`: its hash key;
    /// `tried`: endpoints it failed on), waiting for the cluster's first
    /// resolution if needed (the caller bounds the wait).
    pub async fn pick(
        &self,
        key: Option<u64>,
        sticky: Option<u64>,
        tried: &[SocketAddr],
    ) -> Result<Arc<TargetPool>, UpstreamError> {
        self.cluster.settled().await;
        self.pick_now(key, sticky, tried)
    }

    /// The pool of the endpoint for a request, from the endpoints now.
    pub fn pick_now(
        &self,
        key: Option<u64>,
        sticky: Option<u64>,
        tried: &[SocketAddr],
    ) -> Result<Arc<TargetPool>, UpstreamError> {
        let set = self.cluster.endpoints();
        let i = self.cluster.pick_in(&set, key, sticky, tried)?;
        self.for_set(&set)
            .pools
            .get(i)
            .cloned()
            .ok_or(UpstreamError::Unresolved)
    }

    /// The pools now, one per endpoint of the set they were made for.
    pub fn pools(&self) -> arc_swap::Guard<Arc<PoolSet>> {
        self.current.load()
    }

    /// Closes idle connections past their lifetime (every endpoint's).
    pub fn reap(&self) {
        self.current.load().pools.iter().for_each(|p| p.reap());
    }
}
