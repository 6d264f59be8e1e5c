//! `[[listeners]]`: each one's address, protocol, PROXY protocol and TLS
//! and HTTP settings, validated.

use std::ops::Range;

use super::raw::RawConfig;
use super::{AcceptProxy, Ctx, ListenerConfig, Timeouts};

/// What routes need to know of the listeners, by position.
#[derive(Default)]
pub(super) struct ListenerFacts {
    pub names: Vec<String>,
    pub is_http: Vec<bool>,
    pub is_tls: Vec<bool>,
    /// Address, last port of a range, PROXY protocol in (`None`: not valid).
    pub binds: Vec<Option<(std::net::SocketAddr, Option<u16>, bool)>>,
}

impl ListenerFacts {
    pub fn http(&self, i: Option<usize>) -> bool {
        i.is_some_and(|i| self.is_http.get(i).copied().unwrap_or(false))
    }
    pub fn tls(&self, i: Option<usize>) -> bool {
        i.is_some_and(|i| self.is_tls.get(i).copied().unwrap_or(false))
    }
}

impl Ctx<'_> {
    /// The listeners, what routes need to know of them, and where a
    /// listener first needs a certificate (an `https` one).
    pub(super) fn listeners(
        &mut self,
        raw: &RawConfig,
        timeouts: &Timeouts,
    ) -> (Vec<ListenerConfig>, ListenerFacts, Option<Range<usize>>) {
        let mut listeners: Vec<ListenerConfig> = Vec::new();
        let mut facts = ListenerFacts::default();
        let mut needs_certificate = None;
        for (i, rl) in raw.listeners.iter().enumerate() {
            let field = |f: &str| format!("listeners[{i}].{f}");
            let rl_ref = rl.get_ref();
            let name = self
                .string(&rl_ref.name, &field("name"))
                .unwrap_or_default();
            if name.is_empty() {
                self.err(&rl_ref.name.span(), &field("name"), "must not be empty");
            } else if facts.names.contains(&name) {
                self.err(
                    &rl_ref.name.span(),
                    &field("name"),
                    &format!("duplicate listener name {name:?}"),
                );
            }
            facts.names.push(name.clone());
            let (bind, last_port) = match self.bind(&rl_ref.bind, &field("bind")) {
                Some((b, l)) => (Some(b), l),
                None => (None, None),
            };
            // Two listeners on one address (port 0 aside: each gets its own).
            if let Some(b) = bind.filter(|b| b.port() != 0) {
                let ports =
                    |l: &ListenerConfig| l.bind.port()..=l.last_port.unwrap_or(l.bind.port());
                let mine = b.port()..=last_port.unwrap_or(b.port());
                let overlap = |l: &&ListenerConfig| {
                    l.bind.ip() == b.ip()
                        && l.bind.port() != 0
                        && ports(l).start() <= mine.end()
                        && mine.start() <= ports(l).end()
                };
                if let Some(other) = listeners.iter().find(overlap) {
                    self.err(
                        &rl_ref.bind.span(),
                        &field("bind"),
                        &format!("{b} is listener {:?}'s address already", other.name),
                    );
                }
            }
            let backlog = rl_ref
                .backlog
                .as_ref()
                .and_then(|v| self.count(v, &field("backlog"), 65535))
                .map_or(1024, |n| n as u32);
            let accept_proxy = rl_ref.proxy_protocol.as_ref().map(|p| {
                let trusted = self.cidrs(&p.trusted, &field("proxy_protocol.trusted"));
                if p.trusted.get_ref().is_empty() {
                    self.err(
                        &p.trusted.span(),
                        &field("proxy_protocol.trusted"),
                        "list at least one trusted network",
                    );
                }
                AcceptProxy {
                    trusted,
                    required: p.required.as_ref().is_none_or(|r| *r.get_ref()),
                    timeout: self.required_duration(
                        p.timeout.as_ref(),
                        &field("proxy_protocol.timeout"),
                        timeouts.proxy_header,
                    ),
                }
            });
            let (http, tls) = match &rl_ref.protocol {
                None => (None, false),
                Some(p) => match self.string(p, &field("protocol")).as_deref() {
                    Some("tcp") | None => (None, false),
                    Some("http") => (Some(()), false),
                    Some("tls") => (None, true),
                    Some("https") => (Some(()), true),
                    Some(other) => {
                        self.err(
                            &p.span(),
                            &field("protocol"),
                            &format!(
                                "{other:?} is not one of \"tcp\", \"http\", \"tls\", \"https\""
                            ),
                        );
                        (None, false)
                    }
                },
            };
            if !tls && rl_ref.tls.is_some() {
                let span = rl_ref.tls.as_ref().map(|t| t.span()).unwrap_or_default();
                self.err(
                    &span,
                    &field("tls"),
                    "[listeners.tls] needs protocol = \"tls\" or \"https\"",
                );
            }
            if tls && http.is_some() && needs_certificate.is_none() {
                needs_certificate = Some(rl_ref.name.span());
            }
            let tls = tls.then(|| {
                std::sync::Arc::new(self.tls_listener(
                    rl_ref.tls.as_ref(),
                    &field,
                    http.is_some(),
                    timeouts.tls_handshake,
                ))
            });
            if http.is_none() && rl_ref.http.is_some() {
                self.err(
                    &rl_ref.name.span(),
                    &field("http"),
                    "[listeners.http] needs protocol = \"http\" or \"https\"",
                );
            }
            let http = http.map(|()| {
                std::sync::Arc::new(self.http_listener(
                    rl_ref.http.as_ref(),
                    &field,
                    timeouts.client_send,
                ))
            });
            facts.is_http.push(http.is_some());
            facts.is_tls.push(tls.is_some());
            facts
                .binds
                .push(bind.map(|b| (b, last_port, accept_proxy.is_some())));
            if last_port.is_some() && (http.is_some() || tls.is_some()) {
                self.err(
                    &rl_ref.bind.span(),
                    &field("bind"),
                    "a port range is forwarded by the kernel, which reads no HTTP or TLS: protocol = \"tcp\"",
                );
            }
            if let Some(bind) = bind {
                listeners.push(ListenerConfig {
                    name,
                    bind,
                    last_port,
                    backlog,
                    accept_proxy,
                    http,
                    tls,
                });
            }
        }
        if raw.listeners.is_empty() {
            self.err(
                &(0..0),
                "listeners",
                "define at least one [[listeners]] table",
            );
        }

        (listeners, facts, needs_certificate)
    }
}
