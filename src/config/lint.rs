//! Warnings about a valid config that likely does not do what was meant
//! (`gatehouse check` prints them and exits 0; `run` logs them): a listener
//! no route takes, a route that an earlier one always takes first, and a
//! setting that has no effect where it is written.

use super::raw::RawConfig;
use super::{Config, ConfigError, Ctx};

impl Ctx<'_> {
    fn warning(
        &self,
        span: &std::ops::Range<usize>,
        field: String,
        message: String,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: self.line(span),
            field,
            message,
        }
    }

    pub(super) fn lint(&self, raw: &RawConfig, config: &Config) -> Vec<ConfigError> {
        let mut out = Vec::new();
        let takes = |route: &super::RouteConfig, listener: usize| {
            route.matcher.listener.is_none_or(|l| l == listener)
        };
        for (i, l) in config.listeners.iter().enumerate() {
            if !config.routes.iter().any(|r| takes(r, i)) {
                if let Some(rl) = raw.listeners.get(i) {
                    out.push(self.warning(
                        &rl.span(),
                        format!("listeners[{i}]"),
                        format!(
                            "no route takes listener {:?}: its connections would all end no_route",
                            l.name
                        ),
                    ));
                }
            }
        }
        for (i, c) in config
            .clusters
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.inline)
        {
            let used = config.routes.iter().any(|r| {
                r.action
                    .forward()
                    .is_some_and(|f| f.clusters().contains(&i))
            });
            if let (false, Some(rc)) = (used, raw.clusters.get(i)) {
                out.push(self.warning(
                    &rc.span(),
                    format!("clusters[{i}]"),
                    format!("no route forwards to cluster {:?}", c.name),
                ));
            }
        }
        for (j, later) in config.routes.iter().enumerate() {
            let Some(rr) = raw.routes.get(j) else {
                continue;
            };
            for (k, earlier) in config.routes.iter().enumerate().take(j) {
                // On the same listener(s): `earlier` takes every connection
                // of `later`'s listener.
                let same_listener = match (earlier.matcher.listener, later.matcher.listener) {
                    (None, _) => true,
                    (Some(a), Some(b)) => a == b,
                    (Some(_), None) => false,
                };
                if !same_listener {
                    continue;
                }
                let http = later
                    .matcher
                    .listener
                    .and_then(|l| config.listeners.get(l))
                    .is_some_and(|l| l.http.is_some());
                // L4 routes: the first that matches, in file order; HTTP
                // routes: the most specific, ties in file order.
                let shadowed = if http {
                    earlier.matcher == later.matcher
                } else {
                    let m = &earlier.matcher;
                    m.port.is_none()
                        && m.client_cidrs.is_empty()
                        && m.http.is_empty()
                        && m.sni.is_empty()
                        && m.client_identities.is_empty()
                };
                if shadowed {
                    out.push(self.warning(
                        &rr.span(),
                        format!("routes[{j}]"),
                        format!(
                            "route {:?} never matches: route {:?} (routes[{k}]) takes everything it would",
                            later.name, earlier.name
                        ),
                    ));
                    break;
                }
            }
            // Upgrades are HTTP's: on a route of a TCP or TLS listener the
            // setting does nothing.
            let upgrade = rr
                .get_ref()
                .policy
                .as_ref()
                .and_then(|p| p.allow_upgrade.as_ref());
            let l4_only = later
                .matcher
                .listener
                .and_then(|l| config.listeners.get(l))
                .is_some_and(|l| l.http.is_none());
            if let (Some(u), true) = (upgrade, l4_only) {
                out.push(self.warning(
                    &u.span(),
                    format!("routes[{j}].policy.allow_upgrade"),
                    "has no effect: the route's listener does not speak HTTP".to_owned(),
                ));
            }
        }
        out.sort_by_key(|w| w.line);
        out
    }
}
