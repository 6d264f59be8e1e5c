//! `[[routes]]`: each one's match, action, policy, TLS mode and upstream
//! settings, validated against the listeners and clusters.

use std::ops::Range;

use super::cluster::ClusterConfig;
use super::filter::FilterConfig;
use super::kernel::Engine;
use super::listener::ListenerFacts;
use super::raw::{RawConfig, RawRoute, S};
use super::{
    Ctx, Forward, KernelRoute, ProxyVersion, RouteAction, RouteConfig, RouteMatch, RoutePolicy,
    Timeouts, TlsMode, UpstreamProtocol,
};

impl Ctx<'_> {
    /// The routes, in file order. A route's `action.forward` list becomes
    /// a cluster of its own, added to `clusters`.
    pub(super) fn routes(
        &mut self,
        raw: &RawConfig,
        facts: &ListenerFacts,
        timeouts: &Timeouts,
        (clusters, filters): (&mut Vec<ClusterConfig>, &[FilterConfig]),
        needs_certificate: &mut Option<Range<usize>>,
    ) -> Vec<RouteConfig> {
        let mut names: Vec<String> = Vec::new();
        let mut routes = Vec::new();
        for (i, rr) in raw.routes.iter().enumerate() {
            if let Some(r) = self.route(
                i,
                rr,
                (&mut names, &routes),
                facts,
                timeouts,
                (clusters, filters),
                needs_certificate,
            ) {
                routes.push(r);
            }
        }
        if raw.routes.is_empty() {
            self.err(&(0..0), "routes", "define at least one [[routes]] table");
        }
        // A port range is kernel-only: without a kernel route it is dead.
        for (i, rl) in raw.listeners.iter().enumerate() {
            let Some(Some(b)) = facts.binds.get(i) else {
                continue;
            };
            let served = routes
                .iter()
                .any(|r| r.kernel.is_some() && r.matcher.listener == Some(i));
            if b.1.is_some() && !served {
                self.err(
                    &rl.get_ref().bind.span(),
                    &format!("listeners[{i}].bind"),
                    "a port range needs a route with match.listener naming it and action.engine = \"kernel_strict\"",
                );
            }
        }
        routes
    }

    #[allow(clippy::too_many_arguments)]
    fn route(
        &mut self,
        i: usize,
        rr: &S<RawRoute>,
        (names, earlier): (&mut Vec<String>, &[RouteConfig]),
        facts: &ListenerFacts,
        timeouts: &Timeouts,
        (clusters, filters): (&mut Vec<ClusterConfig>, &[FilterConfig]),
        needs_certificate: &mut Option<Range<usize>>,
    ) -> Option<RouteConfig> {
        let field = |f: &str| format!("routes[{i}].{f}");
        let r = rr.get_ref();
        let name = self.string(&r.name, &field("name")).unwrap_or_default();
        if name.is_empty() {
            self.err(&r.name.span(), &field("name"), "must not be empty");
        } else if name == "none" {
            // (The metrics' label for what no route took.)
            self.err(&r.name.span(), &field("name"), "\"none\" is reserved");
        } else if names.contains(&name) {
            self.err(
                &r.name.span(),
                &field("name"),
                &format!("duplicate route name {name:?}"),
            );
        }
        names.push(name.clone());
        let mut matcher = RouteMatch::default();
        if let Some(m) = &r.matcher {
            if let Some(l) = &m.listener {
                if let Some(ln) = self.string(l, &field("match.listener")) {
                    match facts.names.iter().position(|x| x == &ln) {
                        Some(idx) => matcher.listener = Some(idx),
                        None => self.err(
                            &l.span(),
                            &field("match.listener"),
                            &format!("no listener is named {ln:?}"),
                        ),
                    }
                }
            }
            if let Some(p) = &m.port {
                matcher.port = self.count(p, &field("match.port"), 65535).map(|n| n as u16);
            }
            if let Some(c) = &m.client_cidrs {
                matcher.client_cidrs = self.cidrs(c, &field("match.client_cidrs"));
            }
            matcher.http = self.http_match(m, &field);
            if let Some(sni) = &m.sni {
                matcher.sni = self.hosts(sni, &field("match.sni"));
            }
            if let Some(ids) = &m.client_identities {
                matcher.client_identities = ids
                    .get_ref()
                    .iter()
                    .filter_map(|v| self.string(v, &field("match.client_identities")))
                    .collect();
            }
            let on_plain = matcher.listener.is_some() && !facts.tls(matcher.listener);
            if on_plain && (m.sni.is_some() || m.client_identities.is_some()) {
                let span = m.listener.as_ref().map(|l| l.span()).unwrap_or_default();
                self.err(
                    &span,
                    &field("match"),
                    "sni and client_identities matchers need a TLS listener",
                );
            }
            let on_tcp = matcher.listener.is_some() && !facts.http(matcher.listener);
            if on_tcp && !matcher.http.is_empty() {
                let span = m.listener.as_ref().map(|l| l.span()).unwrap_or_default();
                self.err(
                    &span,
                    &field("match"),
                    "host, path, method and header matchers need an HTTP listener",
                );
            }
        }
        let on_http = facts.http(matcher.listener);
        let on_tls = facts.tls(matcher.listener);
        let engine = self.engine(rr, &field);
        let kernel = match engine {
            Engine::Kernel { strict } => {
                self.kernel_route(rr, strict, &matcher, facts, earlier, &field)
            }
            Engine::User => None,
        };
        let range = matcher
            .listener
            .and_then(|l| facts.binds.get(l).copied().flatten())
            .is_some_and(|b| b.1.is_some());
        let action = if range {
            if engine != (Engine::Kernel { strict: true }) {
                self.err(
                    &r.action.span(),
                    &field("action.engine"),
                    "a port range has no user-space path: action.engine = \"kernel_strict\"",
                );
            }
            // (Never used in user space; the route still names a cluster.)
            kernel.as_ref().map(|k| {
                clusters.push(ClusterConfig::inline_one(&name, k.target));
                RouteAction::Forward(Forward {
                    cluster: clusters.len() - 1,
                    split: Vec::new(),
                    send_proxy: None,
                    pass_tlvs: false,
                })
            })
        } else {
            self.action(&name, rr, on_http, &field, clusters)
        };
        let p = r.policy.as_ref();
        let policy = RoutePolicy {
            connect_timeout: self.required_duration(
                p.and_then(|p| p.connect_timeout.as_ref()),
                &field("policy.connect_timeout"),
                timeouts.connect,
            ),
            idle_timeout: self.optional_duration(
                p.and_then(|p| p.idle_timeout.as_ref()),
                &field("policy.idle_timeout"),
                timeouts.idle,
            ),
            max_lifetime: self.optional_duration(
                p.and_then(|p| p.max_lifetime.as_ref()),
                &field("policy.max_lifetime"),
                timeouts.max_lifetime,
            ),
            http: self.http_policy(p, &field),
            max_connections: p
                .and_then(|p| p.max_connections.as_ref())
                .and_then(|v| self.count(v, &field("policy.max_connections"), u32::MAX as u64))
                .map(|n| n as u32),
        };
        let tls_mode = self.tls_mode(r.tls.as_ref(), &field("tls"));
        if r.tls.is_some() && (!on_tls || on_http) {
            let span = r.tls.as_ref().map(|t| t.span()).unwrap_or_default();
            self.err(
                &span,
                &field("tls"),
                "a TLS mode needs match.listener naming a protocol = \"tls\" listener",
            );
        }
        if tls_mode != TlsMode::Passthrough && needs_certificate.is_none() {
            *needs_certificate = r.tls.as_ref().map(|t| t.span());
        }
        let upstream = self.upstream(
            r.upstream.as_ref(),
            &field,
            tls_mode == TlsMode::TerminateAndReencrypt,
        );
        if upstream.protocol == UpstreamProtocol::Http2 && !on_http {
            let span = r.upstream.as_ref().map(|u| u.span()).unwrap_or_default();
            self.err(
                &span,
                &field("upstream.protocol"),
                "http2 towards the targets needs match.listener naming an HTTP listener",
            );
        }
        if on_tls && !on_http && tls_mode == TlsMode::Passthrough && r.upstream.is_some() {
            let span = r.upstream.as_ref().map(|u| u.span()).unwrap_or_default();
            self.err(
                &span,
                &field("upstream"),
                "passthrough forwards the client's TLS untouched; [routes.upstream] needs tls = \"terminate_and_reencrypt\"",
            );
        }
        // HTTP filters where every connection the route takes is HTTP (an
        // L4 connection runs only IP rules: no silent difference).
        let only_http = match matcher.listener {
            Some(_) => on_http,
            None => facts.is_http.iter().all(|&h| h),
        };
        let route_filters =
            self.route_filters(r.filters.as_ref(), filters, only_http, &field("filters"));
        let mirror = r
            .mirror
            .as_ref()
            .and_then(|m| self.mirror(m, only_http, &field, clusters));
        let log_redact = self.log_redact(r.log_redact.as_ref(), &route_filters, filters, &field);
        let kernel = kernel.map(|k| KernelRoute {
            max_connections: policy.max_connections,
            ..k
        });
        Some(RouteConfig {
            name,
            matcher,
            action: action?,
            policy,
            tls_mode,
            upstream,
            filters: route_filters,
            mirror,
            log_redact: std::sync::Arc::new(log_redact),
            kernel,
        })
    }

    /// What a route does: forward (to its own list or a named cluster),
    /// or redirect to HTTPS.
    fn action(
        &mut self,
        name: &str,
        rr: &S<RawRoute>,
        on_http: bool,
        field: &dyn Fn(&str) -> String,
        clusters: &mut Vec<ClusterConfig>,
    ) -> Option<RouteAction> {
        let r = rr.get_ref();
        let a = r.action.get_ref();
        let redirect = a.redirect_https.as_ref().is_some_and(|r| *r.get_ref());
        let chosen = [
            a.forward.is_some(),
            a.cluster.is_some(),
            a.split.is_some(),
            redirect,
        ];
        if chosen.iter().filter(|c| **c).count() > 1 {
            self.err(
                &r.action.span(),
                &field("action"),
                "choose one action: forward, cluster, split or redirect_https",
            );
            return None;
        }
        if redirect {
            let port = a
                .redirect_port
                .as_ref()
                .and_then(|p| self.count(p, &field("action.redirect_port"), 65535))
                .map(|p| p as u16);
            if !on_http {
                self.err(
                    &r.action.span(),
                    &field("action.redirect_https"),
                    "redirects are for HTTP listeners",
                );
            }
            return Some(RouteAction::RedirectHttps { port });
        }
        let mut split = Vec::new();
        let cluster = if let Some(list) = &a.split {
            for (j, e) in list.get_ref().iter().enumerate() {
                let f = field(&format!("action.split[{j}]"));
                let e = e.get_ref();
                let weight = match &e.weight {
                    None => Some(1),
                    Some(w) => self
                        .count(w, &format!("{f}.weight"), 1000)
                        .map(|n| n as u32),
                };
                let at = self.named_cluster(&e.cluster, &format!("{f}.cluster"), clusters);
                if let (Some(c), Some(w)) = (at, weight) {
                    split.push((c, w));
                }
            }
            if list.get_ref().len() < 2 {
                self.err(&list.span(), &field("action.split"), "a split lists two clusters or more: [{ cluster = \"a\", weight = 9 }, { cluster = \"b\", weight = 1 }]");
                return None;
            }
            split.first()?.0
        } else if let Some(list) = &a.forward {
            let c = self.inline_cluster(name, list, &field("action.forward"));
            clusters.push(c);
            clusters.len() - 1
        } else if let Some(c) = &a.cluster {
            self.named_cluster(c, &field("action.cluster"), clusters)?
        } else {
            self.err(
                &r.action.span(),
                &field("action"),
                "an action is required: forward = [\"host:port\", ...], cluster = \"name\", split = [...] or redirect_https = true",
            );
            return None;
        };
        let send_proxy = match &a.send_proxy_protocol {
            None => None,
            Some(v) => match self
                .string(v, &field("action.send_proxy_protocol"))
                .as_deref()
            {
                Some("v1") => Some(ProxyVersion::V1),
                Some("v2") => Some(ProxyVersion::V2),
                Some(other) => {
                    self.err(
                        &v.span(),
                        &field("action.send_proxy_protocol"),
                        &format!("{other:?} is not one of \"v1\", \"v2\""),
                    );
                    None
                }
                None => None,
            },
        };
        let pass_tlvs = a.pass_tlvs.as_ref().is_some_and(|p| *p.get_ref());
        if pass_tlvs && send_proxy != Some(ProxyVersion::V2) {
            let span = a.pass_tlvs.as_ref().map(|p| p.span()).unwrap_or_default();
            self.err(
                &span,
                &field("action.pass_tlvs"),
                "needs send_proxy_protocol = \"v2\" (v1 has no TLVs)",
            );
        }
        if on_http && send_proxy.is_some() {
            let span = a
                .send_proxy_protocol
                .as_ref()
                .map(|p| p.span())
                .unwrap_or_default();
            self.err(
                &span,
                &field("action.send_proxy_protocol"),
                "not available on HTTP routes (upstream connections are pooled across clients)",
            );
        }
        Some(RouteAction::Forward(Forward {
            cluster,
            split,
            send_proxy,
            pass_tlvs,
        }))
    }

    /// The index of the named cluster `v` says (not a route's own).
    pub(super) fn named_cluster(
        &mut self,
        v: &S<String>,
        field: &str,
        clusters: &[ClusterConfig],
    ) -> Option<usize> {
        let wanted = self.string(v, field)?;
        let found = clusters.iter().position(|x| !x.inline && x.name == wanted);
        if found.is_none() {
            let known: Vec<&str> = clusters
                .iter()
                .filter(|x| !x.inline)
                .map(|x| x.name.as_str())
                .collect();
            let known = if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            };
            self.err(
                &v.span(),
                field,
                &format!("no cluster is named {wanted:?} (clusters: {known})"),
            );
        }
        found
    }
}
