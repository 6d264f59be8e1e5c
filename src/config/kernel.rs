//! The kernel fast path's settings: a route's `action.engine`, a
//! listener's port range (`bind = "127.0.0.1:10000-10100"`) and the
//! `instance` name that names the nftables table. What nftables forwarding
//! cannot do is refused here, each with the field that asks for it.

use std::net::SocketAddr;

use super::listener::ListenerFacts;
use super::raw::{RawRoute, S};
use super::{Ctx, KernelRoute, RouteConfig, RouteMatch};

/// How a route's connections are forwarded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Engine {
    User,
    Kernel { strict: bool },
}

impl Ctx<'_> {
    /// A listener's `bind`: an address, and the last port of a range.
    pub(super) fn bind(&mut self, v: &S<String>, field: &str) -> Option<(SocketAddr, Option<u16>)> {
        let s = self.string(v, field)?;
        let range = s.rsplit_once(':').and_then(|(host, ports)| {
            let (a, b) = ports.split_once('-')?;
            Some((host, a.parse::<u16>().ok()?, b.parse::<u16>().ok()?))
        });
        let Some((host, first, last)) = range else {
            return self.socket_addr(v, field).map(|a| (a, None));
        };
        let at = format!("{host}:{first}").parse::<SocketAddr>();
        match at {
            Ok(a) if first > 0 && last > first => Some((a, Some(last))),
            Ok(_) => {
                self.err(
                    &v.span(),
                    field,
                    &format!("{s:?}: a port range goes from a port above 0 to a higher one"),
                );
                None
            }
            Err(_) => {
                self.err(
                    &v.span(),
                    field,
                    &format!(
                        "{s:?} is not an address like 127.0.0.1:8080 or 127.0.0.1:10000-10100"
                    ),
                );
                None
            }
        }
    }

    /// `instance`: letters, digits, `_` and `-`, at most 32.
    pub(super) fn instance(&mut self, v: Option<&S<String>>) -> Option<String> {
        let v = v?;
        let s = self.string(v, "instance")?;
        let fits = !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !fits {
            self.err(
                &v.span(),
                "instance",
                "1 to 32 letters, digits, '_' or '-' (it names the nftables table)",
            );
            return None;
        }
        Some(s)
    }

    pub(super) fn engine(&mut self, rr: &S<RawRoute>, field: &dyn Fn(&str) -> String) -> Engine {
        let Some(v) = &rr.get_ref().action.get_ref().engine else {
            return Engine::User;
        };
        match self.string(v, &field("action.engine")).as_deref() {
            Some("user") | None => Engine::User,
            Some("kernel") => Engine::Kernel { strict: false },
            Some("kernel_strict") => Engine::Kernel { strict: true },
            Some(other) => {
                self.err(
                    &v.span(),
                    &field("action.engine"),
                    &format!("{other:?} is not one of \"user\", \"kernel\", \"kernel_strict\""),
                );
                Engine::User
            }
        }
    }

    /// A kernel route's rule, or an error for each setting it also asks
    /// for that nftables forwarding cannot keep (`kernel_refusals`).
    pub(super) fn kernel_route(
        &mut self,
        rr: &S<RawRoute>,
        strict: bool,
        matcher: &RouteMatch,
        facts: &ListenerFacts,
        earlier: &[RouteConfig],
        field: &dyn Fn(&str) -> String,
    ) -> Option<KernelRoute> {
        let r = rr.get_ref();
        let a = r.action.get_ref();
        let engine_span = a.engine.as_ref().map(|e| e.span()).unwrap_or_default();
        let refuse = |ctx: &mut Self, span: std::ops::Range<usize>, f: &str, why: &str| {
            ctx.refuse_kernel(span, &field(f), why);
        };
        let Some(li) = matcher.listener else {
            refuse(
                self,
                engine_span,
                "match.listener",
                "a kernel route needs match.listener naming a protocol = \"tcp\" listener",
            );
            return None;
        };
        let (listen, last_port, proxy_in) = facts.binds.get(li).copied().flatten()?;
        self.kernel_refusals(rr, (li, listen, proxy_in), facts, earlier, field);
        if !matcher.client_cidrs.is_empty()
            && !matcher
                .client_cidrs
                .iter()
                .any(|n| n.addr().is_ipv4() == listen.is_ipv4())
        {
            let span = r.matcher.as_ref().and_then(|m| m.client_cidrs.as_ref());
            refuse(
                self,
                span.map(|c| c.span()).unwrap_or_default(),
                "match.client_cidrs",
                "no network of the listener's address family: no client could match",
            );
        }
        let one = a.forward.as_ref().filter(|f| f.get_ref().len() == 1);
        let Some(target) = one.and_then(|f| f.get_ref().first()) else {
            refuse(
                self,
                engine_span,
                "action",
                "the kernel forwards to one address: action.forward = [\"IP:PORT\"]",
            );
            return None;
        };
        let target_field = field("action.forward[0]");
        let text = self.string(target, &target_field)?;
        let at = match last_port {
            // "IP:FIRST-LAST" with the listener's range: the same ports.
            Some(last) => text
                .strip_suffix(&format!("-{last}"))
                .and_then(|t| t.parse::<SocketAddr>().ok())
                .filter(|t| t.port() == listen.port()),
            None => text.parse::<SocketAddr>().ok(),
        };
        let Some(target_addr) = at.filter(|t| t.is_ipv4() == listen.is_ipv4()) else {
            let want = match last_port {
                Some(last) => format!("\"IP:{}-{last}\" (the listener's range)", listen.port()),
                None => "\"IP:PORT\"".to_owned(),
            };
            self.err(
                &target.span(),
                &target_field,
                &format!(
                    "{text:?}: the kernel forwards to an IP address of the listener's family, written {want}"
                ),
            );
            return None;
        };
        Some(KernelRoute {
            strict,
            listen,
            last_port: last_port.unwrap_or(listen.port()),
            clients: matcher.client_cidrs.clone(),
            target: target_addr,
            // (Set from the route's policy once it is read.)
            max_connections: None,
        })
    }

    /// An error for each setting of a kernel route that nftables
    /// forwarding cannot keep; `earlier`: the routes before it, none of
    /// which may take its listener's connections.
    fn kernel_refusals(
        &mut self,
        rr: &S<RawRoute>,
        (li, listen, proxy_in): (usize, SocketAddr, bool),
        facts: &ListenerFacts,
        earlier: &[RouteConfig],
        field: &dyn Fn(&str) -> String,
    ) {
        let r = rr.get_ref();
        let a = r.action.get_ref();
        let engine_span = a.engine.as_ref().map(|e| e.span()).unwrap_or_default();
        let refuse = |ctx: &mut Self, span: std::ops::Range<usize>, f: &str, why: &str| {
            ctx.refuse_kernel(span, &field(f), why);
        };
        if listen.port() == 0 {
            refuse(
                self,
                engine_span.clone(),
                "match.listener",
                "the kernel's rules match a fixed port: its listener cannot bind port 0",
            );
        }
        if facts.http(Some(li)) || facts.tls(Some(li)) {
            refuse(
                self,
                engine_span.clone(),
                "match.listener",
                "the kernel forwards bytes unread: its listener must be protocol = \"tcp\"",
            );
        }
        if proxy_in {
            refuse(
                self,
                engine_span.clone(),
                "match.listener",
                "the kernel cannot read PROXY protocol headers: its listener has proxy_protocol",
            );
        }
        if let Some(v) = &a.send_proxy_protocol {
            refuse(
                self,
                v.span(),
                "action.send_proxy_protocol",
                "the kernel cannot send a PROXY protocol header",
            );
        }
        if let Some(v) = &r.tls {
            refuse(self, v.span(), "tls", "the kernel does no TLS");
        }
        if let Some(v) = &r.upstream {
            refuse(
                self,
                v.span(),
                "upstream",
                "the kernel does no TLS or HTTP towards the target",
            );
        }
        if let Some(v) = &r.filters {
            refuse(self, v.span(), "filters", "filters run in user space only");
        }
        if let Some(p) = &r.policy {
            let set = [
                (p.connect_timeout.as_ref(), "connect_timeout"),
                (p.idle_timeout.as_ref(), "idle_timeout"),
                (p.max_lifetime.as_ref(), "max_lifetime"),
            ];
            for (v, name) in set {
                if let Some(v) = v {
                    refuse(
                        self,
                        v.span(),
                        &format!("policy.{name}"),
                        "the kernel keeps no per-connection policy; conntrack's own timeouts apply",
                    );
                }
            }
        }
        if let Some(m) = &r.matcher {
            if let Some(p) = &m.port {
                refuse(
                    self,
                    p.span(),
                    "match.port",
                    "a kernel route takes its listener's ports",
                );
            }
        }
        if let Some(e) = earlier
            .iter()
            .find(|e| e.matcher.listener.is_none_or(|l| l == li))
        {
            refuse(
                self,
                engine_span.clone(),
                "match.listener",
                &format!(
                    "a kernel route must be the first route its listener's connections can take: route {:?} comes before it",
                    e.name
                ),
            );
        }
    }

    fn refuse_kernel(&mut self, span: std::ops::Range<usize>, field: &str, why: &str) {
        self.err(&span, field, &format!("{why} (action.engine = \"kernel\")"));
    }
}
