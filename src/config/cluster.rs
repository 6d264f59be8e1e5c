//! `[[clusters]]`: named sets of endpoints (an address, `host:port` or
//! `ip:port`, and a weight) that routes forward to with `action.cluster`.
//! A route's `action.forward = [...]` is shorthand for a cluster of its
//! own, named after the route (`inline`).

use std::time::Duration;

use super::raw::{RawConfig, S, Scalar};
use super::{Ctx, check_target};

/// How often names in a cluster are resolved again, unless it says.
pub const DEFAULT_RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// The largest endpoint weight (as nginx's).
const MAX_WEIGHT: u64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    pub endpoints: Vec<EndpointConfig>,
    /// The registered service whose instances are the endpoints (then
    /// `endpoints` is empty).
    pub service: Option<String>,
    /// Names among the endpoints are resolved again this often (every
    /// address a name has becomes an endpoint).
    pub resolve_every: Duration,
    /// Made from a route's `action.forward` list.
    pub inline: bool,
    pub policy: super::ClusterPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// `host:port` or `ip:port`.
    pub address: String,
    /// Its share of new connections and requests, relative to the others.
    pub weight: u32,
}

impl Ctx<'_> {
    /// The named clusters, in file order.
    pub(super) fn clusters(&mut self, raw: &RawConfig) -> Vec<ClusterConfig> {
        let mut out: Vec<ClusterConfig> = Vec::new();
        for (i, rc) in raw.clusters.iter().enumerate() {
            let field = |f: &str| format!("clusters[{i}].{f}");
            let c = rc.get_ref();
            let name = self.string(&c.name, &field("name")).unwrap_or_default();
            if name.is_empty() {
                self.err(&c.name.span(), &field("name"), "must not be empty");
            } else if out.iter().any(|o| o.name == name) {
                self.err(
                    &c.name.span(),
                    &field("name"),
                    &format!("duplicate cluster name {name:?}"),
                );
            }
            let mut endpoints = Vec::new();
            let listed = c.endpoints.as_ref().map_or(&[][..], |l| &l.get_ref()[..]);
            for (j, e) in listed.iter().enumerate() {
                let field = |f: &str| format!("clusters[{i}].endpoints[{j}].{f}");
                let e = e.get_ref();
                let weight = match &e.weight {
                    None => Some(1),
                    Some(w) => self.weight(w, &field("weight")),
                };
                if let (Some(address), Some(weight)) =
                    (self.target(&e.address, &field("address")), weight)
                {
                    endpoints.push(EndpointConfig { address, weight });
                }
            }
            let service = c.service.as_ref().and_then(|s| {
                let name = self.string(s, &field("service"))?;
                if let Err(m) = check_service_name(&name) {
                    self.err(&s.span(), &field("service"), &m);
                    return None;
                }
                Some(name)
            });
            match (&c.endpoints, &c.service) {
                (Some(l), Some(_)) => self.err(
                    &l.span(),
                    &field("endpoints"),
                    "a cluster takes its endpoints from a list or from a service, not both",
                ),
                (Some(l), None) if l.get_ref().is_empty() => self.err(
                    &l.span(),
                    &field("endpoints"),
                    "list at least one endpoint: { address = \"host:port\" }",
                ),
                (None, None) => self.err(
                    &c.name.span(),
                    &field("endpoints"),
                    "list at least one endpoint: { address = \"host:port\" }, or name a registered service: service = \"name\"",
                ),
                _ => {}
            }
            let resolve_every = self.required_duration(
                c.resolve_every.as_ref(),
                &field("resolve_every"),
                DEFAULT_RESOLVE_EVERY,
            );
            let policy = self.cluster_policy(c, &format!("clusters[{i}]"));
            out.push(ClusterConfig {
                name,
                endpoints,
                service,
                resolve_every,
                inline: false,
                policy,
            });
        }
        out
    }

    /// A route's `action.forward` list as its own cluster.
    pub(super) fn inline_cluster(
        &mut self,
        route: &str,
        list: &S<Vec<S<String>>>,
        field: &str,
    ) -> ClusterConfig {
        let endpoints = list
            .get_ref()
            .iter()
            .filter_map(|t| self.target(t, field))
            .map(|address| EndpointConfig { address, weight: 1 })
            .collect();
        if list.get_ref().is_empty() {
            self.err(&list.span(), field, "list at least one target");
        }
        ClusterConfig {
            name: route.to_owned(),
            endpoints,
            service: None,
            resolve_every: DEFAULT_RESOLVE_EVERY,
            inline: true,
            policy: super::ClusterPolicy::default(),
        }
    }

    fn target(&mut self, v: &S<String>, field: &str) -> Option<String> {
        let s = self.string(v, field)?;
        match check_target(&s) {
            Ok(()) => Some(s),
            Err(m) => {
                self.err(&v.span(), field, &m);
                None
            }
        }
    }

    fn weight(&mut self, v: &S<Scalar>, field: &str) -> Option<u32> {
        self.count(v, field, MAX_WEIGHT).map(|w| w as u32)
    }
}

/// A service's name or an instance's id: 1 to 128 of letters, digits,
/// `.`, `_` and `-`, beginning with a letter or digit (they name files of
/// the registry's store).
pub fn check_service_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a name: 1 to 128 letters, digits, '.', '_' or '-', beginning with a letter or digit"
        ))
    }
}

impl ClusterConfig {
    /// A route's own cluster of one address.
    pub(super) fn inline_one(route: &str, at: std::net::SocketAddr) -> ClusterConfig {
        ClusterConfig {
            name: route.to_owned(),
            endpoints: vec![EndpointConfig {
                address: at.to_string(),
                weight: 1,
            }],
            service: None,
            resolve_every: DEFAULT_RESOLVE_EVERY,
            inline: true,
            policy: super::ClusterPolicy::default(),
        }
    }
}
