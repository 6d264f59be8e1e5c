//! The HTTP plane's own state, beside the process's `Runtime`: the parking
//! lot of idle keep-alive connections (as long as the process), and the
//! plane's view of the running config: the snapshot with each route's
//! upstream HTTP pools (`View`), swapped whole when a reload swaps the
//! snapshot (`publish`). What the plane reads per request it reads here,
//! so the routes and the pools it uses always come from one config.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::park::ParkingLot;
use super::pool::{RoutePools, Upstream};
use crate::runtime::{Runtime, Snapshot};

pub struct Plane {
    pub rt: Arc<Runtime>,
    /// Idle keep-alive HTTP/1 connections (and idle tunnels) waiting
    /// without a task.
    pub parking: ParkingLot,
    live: ArcSwap<View>,
}

/// A snapshot and the upstream HTTP pools of its routes.
pub struct View {
    pub snap: Arc<Snapshot>,
    /// Each route's pools, one per cluster of the route in
    /// `Forward::clusters` order (none for routes that never carry HTTP).
    pub pools: Vec<Vec<Arc<RoutePools>>>,
    /// Each route's pools for its mirror's cluster, when it has one.
    pub mirrors: Vec<Option<Arc<RoutePools>>>,
}

impl Plane {
    /// The plane on the runtime's running snapshot.
    pub fn new(rt: Arc<Runtime>) -> Arc<Plane> {
        let snap = rt.snapshot();
        let view = View {
            pools: build_pools(&snap, None),
            mirrors: build_mirrors(&snap, None),
            snap,
        };
        Arc::new(Plane {
            rt,
            parking: ParkingLot::default(),
            live: ArcSwap::from_pointee(view),
        })
    }

    /// The running view, to keep.
    pub fn view(&self) -> Arc<View> {
        self.live.load_full()
    }

    /// Makes `snap` (the runtime's new snapshot) the plane's view, keeping
    /// the pools that did not change.
    pub fn publish(&self, snap: Arc<Snapshot>) {
        let previous = self.live.load_full();
        let pools = build_pools(&snap, Some(&previous));
        let mirrors = build_mirrors(&snap, Some(&previous));
        self.live.store(Arc::new(View {
            snap,
            pools,
            mirrors,
        }));
    }

    /// Closes pooled upstream connections past their idle lifetime.
    pub fn reap_pools(&self) {
        self.live
            .load()
            .pools
            .iter()
            .flatten()
            .chain(self.live.load().mirrors.iter().flatten())
            .for_each(|p| p.reap());
    }
}

/// The pools of `snap`'s routes. From `previous` (a reload), the pools (and
/// their idle connections) of routes whose pool and upstream settings are
/// the same are kept: a cluster's whole when the cluster is, else its
/// endpoints' that stay (a cluster that gained or lost an endpoint).
fn build_pools(snap: &Snapshot, previous: Option<&View>) -> Vec<Vec<Arc<RoutePools>>> {
    snap.routes
        .iter()
        .map(|r| {
            let Some(forward) = r.config.action.forward() else {
                return Vec::new();
            };
            if !snap.config.route_serves_http(&r.config) {
                return Vec::new();
            }
            let before: &[Arc<RoutePools>] = previous
                .and_then(|p| {
                    let old = p.snap.routes.iter().find(|o| o.name == r.name)?;
                    same_pool_settings(old, r).then_some(p.pools[old.index].as_slice())
                })
                .unwrap_or_default();
            forward
                .clusters()
                .into_iter()
                .filter_map(|k| snap.clusters.get(k))
                .map(|cluster| {
                    if let Some(kept) = before.iter().find(|p| Arc::ptr_eq(&p.cluster, cluster)) {
                        return kept.clone();
                    }
                    let same_name = before.iter().find(|p| p.cluster.name == cluster.name);
                    let upstream =
                        Upstream::new(&r.config.upstream, snap.upstream_tls[r.index].clone());
                    Arc::new(RoutePools::new(
                        cluster.clone(),
                        &r.config.policy.http,
                        upstream,
                        same_name.map(|p| &**p),
                    ))
                })
                .collect()
        })
        .collect()
}

/// The pools of `snap`'s routes' mirrors (with the route's upstream and
/// pool settings), kept from `previous` like the routes' own.
fn build_mirrors(snap: &Snapshot, previous: Option<&View>) -> Vec<Option<Arc<RoutePools>>> {
    snap.routes
        .iter()
        .map(|r| {
            let m = r.config.mirror.as_ref()?;
            let cluster = snap.clusters.get(m.cluster)?;
            let before = previous.and_then(|p| {
                let old = p.snap.routes.iter().find(|o| o.name == r.name)?;
                p.mirrors[old.index]
                    .clone()
                    .filter(|_| same_pool_settings(old, r))
            });
            if let Some(kept) = before.as_ref().filter(|p| Arc::ptr_eq(&p.cluster, cluster)) {
                return Some(kept.clone());
            }
            let same_name = before.filter(|p| p.cluster.name == cluster.name);
            let upstream = Upstream::new(&r.config.upstream, snap.upstream_tls[r.index].clone());
            Some(Arc::new(RoutePools::new(
                cluster.clone(),
                &r.config.policy.http,
                upstream,
                same_name.as_deref(),
            )))
        })
        .collect()
}

/// Whether a route's pools can be kept across a reload: the same upstream
/// protocol and TLS, and the same pool settings.
fn same_pool_settings(old: &crate::routing::Route, new: &crate::routing::Route) -> bool {
    old.config.upstream == new.config.upstream
        && old.config.policy.http.pools_equal(&new.config.policy.http)
}
