//! Route selection: the first route, in file order, whose match accepts the
//! connection (listener, local port, client network). Later issues add SNI and
//! HTTP matchers to `RouteMatch`; selection stays here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::{RouteConfig, RouteMatch};

pub struct Route {
    pub index: usize,
    pub name: Arc<str>,
    pub config: RouteConfig,
    next_target: AtomicUsize,
}

impl Route {
    pub fn new(index: usize, config: RouteConfig) -> Route {
        Route {
            index,
            name: config.name.as_str().into(),
            config,
            next_target: AtomicUsize::new(0),
        }
    }

    /// Round-robin position for the next upstream connection.
    pub fn next_target(&self, n: usize) -> usize {
        self.next_target.fetch_add(1, Ordering::Relaxed) % n.max(1)
    }
}

/// What routing knows about a connection.
pub struct RouteInput {
    pub listener: usize,
    pub local: SocketAddr,
    pub client: SocketAddr,
}

fn matches(m: &RouteMatch, input: &RouteInput) -> bool {
    m.listener.is_none_or(|l| l == input.listener)
        && m.port.is_none_or(|p| p == input.local.port())
        && (m.client_cidrs.is_empty()
            || m.client_cidrs
                .iter()
                .any(|n| n.contains(&input.client.ip())))
}

pub fn select<'a>(routes: &'a [Route], input: &RouteInput) -> Option<&'a Route> {
    routes.iter().find(|r| matches(&r.config.matcher, input))
}
