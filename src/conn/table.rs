//! The live connection table. Each entry is owned by a `ConnGuard` held by the
//! connection's task; dropping the guard removes the entry, releases the
//! per-IP and per-route slots it claimed and counts the end reason. There is
//! no sweep and no cleanup queue: the table is correct at every instant.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::Notify;

use super::log_limit::{self, Admit, LogLimit};
use super::{ConnState, EndReason, Side};
use crate::metrics::{Metrics, RouteStats};
use crate::proxy_protocol::Tlv;

pub struct ConnTable {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<ConnEntry>>>,
    active: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    metrics: Arc<Metrics>,
    emptied: Notify,
    /// Info lines of client-caused endings, per reason (`log_limit`).
    log_limit: LogLimit<{ EndReason::COUNT }>,
}

/// One live connection. Fields that change on the hot path are atomics; the
/// rest is set a handful of times per connection under a small lock.
pub struct ConnEntry {
    id: u64,
    listener: Arc<str>,
    peer: SocketAddr,
    started: Instant,
    state: AtomicU8,
    /// Client → upstream bytes.
    pub bytes_up: AtomicU64,
    /// Upstream → client bytes.
    pub bytes_down: AtomicU64,
    /// The client socket's descriptor number, and the upstream's where the
    /// connection owns one (L4): what an operator's close shuts down.
    fds: [AtomicI32; 2],
    /// Closed by an operator: it ends as `admin_closed`.
    closed_by_admin: AtomicBool,
    details: Mutex<Details>,
}

impl ConnEntry {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Shows why an upstream TLS handshake for the connection failed.
    pub fn show_upstream_error(&self, why: std::sync::Arc<str>) {
        lock(&self.details).extra().upstream_error = Some(why);
    }

    /// Shows the route and upstream of an HTTP request on the connection
    /// (the request in flight, or the last one); its connection metrics
    /// go to that route too.
    pub fn show_request(&self, route: &Arc<RouteStats>, upstream: SocketAddr) {
        let mut d = lock(&self.details);
        if d.route.as_ref().is_none_or(|r| !Arc::ptr_eq(r, route)) {
            d.route = Some(route.clone());
        }
        d.upstream = Some(upstream);
    }
}

/// Kept small: an idle connection's memory is mostly its entry.
#[derive(Default, Clone)]
struct Details {
    route: Option<Arc<RouteStats>>,
    upstream: Option<SocketAddr>,
    /// An upgraded connection whose end goes to the access log (its
    /// listener logs requests): its totals and end reason.
    log_tunnel: bool,
    /// What only some connections have (a PROXY header, TLS).
    extra: Option<Box<Extra>>,
}

#[derive(Default, Clone)]
struct Extra {
    /// The real client, from a PROXY header.
    client: Option<SocketAddr>,
    tlvs: Vec<Tlv>,
    /// The TLS server name the client asked for (TLS listeners).
    sni: Option<Box<str>>,
    /// Why the last upstream TLS handshake for it failed.
    upstream_error: Option<std::sync::Arc<str>>,
}

impl Details {
    fn client(&self) -> Option<SocketAddr> {
        self.extra.as_ref().and_then(|e| e.client)
    }

    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }
}

/// The wall-clock time of a monotonic instant (for `/connections`).
fn unix_ms(at: Instant) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(at.elapsed()).as_millis() as u64
}

/// Why `ConnTable::close` closed nothing.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    #[error("no live connection has that id")]
    NotFound,
    #[error("the connection is ending: its socket is closed already")]
    Gone,
    #[error("{0}")]
    Io(std::io::Error),
}

/// One live entry as the leak audit sees it (`ConnTable::audit_rows`).
pub struct AuditRow {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub upstream: Option<SocketAddr>,
    pub state: ConnState,
}

/// What `/connections` shows for one entry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConnSnapshot {
    pub id: u64,
    pub listener: String,
    pub peer: String,
    pub client: String,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub state: &'static str,
    /// "user" (this process), or "kernel" (nftables; the state is conntrack's).
    pub engine: &'static str,
    pub started_unix_ms: u64,
    pub age_ms: u64,
    pub bytes_client_to_upstream: u64,
    pub bytes_upstream_to_client: u64,
    pub proxy_tlvs: Vec<TlvSnapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Why the last upstream TLS handshake for it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_error: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TlvSnapshot {
    pub kind: u8,
    pub value_hex: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked while holding it; the
    // maps stay structurally valid, so keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConnTable {
    pub fn new(metrics: Arc<Metrics>) -> Arc<ConnTable> {
        Arc::new(ConnTable {
            next_id: AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            metrics,
            emptied: Notify::new(),
            log_limit: LogLimit::default(),
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Registers a just-accepted connection. The returned guard is the entry.
    pub fn register(self: &Arc<Self>, listener: Arc<str>, peer: SocketAddr) -> ConnGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ConnEntry {
            id,
            listener,
            peer,
            started: Instant::now(),
            state: AtomicU8::new(ConnState::Accepting as u8),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            fds: [AtomicI32::new(-1), AtomicI32::new(-1)],
            closed_by_admin: AtomicBool::new(false),
            details: Mutex::new(Details::default()),
        });
        lock(&self.live).insert(id, entry.clone());
        self.active.fetch_add(1, Ordering::AcqRel);
        self.metrics.accepted.fetch_add(1, Ordering::Relaxed);
        ConnGuard {
            table: self.clone(),
            entry,
            ip_slot: None,
            route: None,
            route_slot_taken: false,
            end: None,
        }
    }

    /// Closes live connection `id` for an operator: its sockets are shut
    /// down (both ways), so that whatever its task waits on ends at once,
    /// and it ends as `admin_closed`. The descriptors are found by number
    /// through `pidfd_getfd` (no `unsafe`), and used only when the socket
    /// there still has the connection's peer: a number reused meanwhile is
    /// left alone.
    pub fn close(&self, id: u64) -> Result<(), CloseError> {
        let entry = lock(&self.live)
            .get(&id)
            .cloned()
            .ok_or(CloseError::NotFound)?;
        entry.closed_by_admin.store(true, Ordering::Relaxed);
        let upstream = lock(&entry.details).upstream;
        let pidfd = rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        )
        .map_err(|e| CloseError::Io(e.into()))?;
        let mut shut = false;
        for (fd, peer) in entry.fds.iter().zip([Some(entry.peer), upstream]) {
            let (fd, Some(peer)) = (fd.load(Ordering::Acquire), peer) else {
                continue;
            };
            if fd < 0 {
                continue;
            }
            let Ok(dup) =
                rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
            else {
                continue;
            };
            let same = rustix::net::getpeername(&dup)
                .ok()
                .flatten()
                .and_then(|a| SocketAddr::try_from(a).ok())
                .is_some_and(|a| {
                    a.ip().to_canonical() == peer.ip().to_canonical() && a.port() == peer.port()
                });
            if same {
                let _ = rustix::net::shutdown(&dup, rustix::net::Shutdown::Both);
                shut = true;
            }
        }
        if shut { Ok(()) } else { Err(CloseError::Gone) }
    }

    /// Live connections right now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Vec<ConnSnapshot> {
        let entries: Vec<Arc<ConnEntry>> = lock(&self.live).values().cloned().collect();
        let mut out: Vec<ConnSnapshot> = entries.iter().map(|e| e.snapshot()).collect();
        out.sort_by_key(|s| s.id);
        out
    }

    /// Every live entry as the leak audit sees it: the listener, the TCP
    /// peer, the upstream and the state.
    pub fn audit_rows(&self) -> Vec<AuditRow> {
        let entries: Vec<Arc<ConnEntry>> = lock(&self.live).values().cloned().collect();
        entries
            .iter()
            .map(|e| AuditRow {
                listener: e.listener.clone(),
                peer: e.peer,
                upstream: lock(&e.details).upstream,
                state: e.state(),
            })
            .collect()
    }

    /// Counts of live connections by (route name or none, state).
    pub fn count_by_route_state(&self) -> HashMap<(Option<Arc<str>>, ConnState), u64> {
        let entries: Vec<Arc<ConnEntry>> = lock(&self.live).values().cloned().collect();
        let mut counts = HashMap::new();
        for e in entries {
            let route = lock(&e.details).route.as_ref().map(|r| r.name.clone());
            *counts.entry((route, e.state())).or_insert(0) += 1;
        }
        counts
    }

    /// Bytes moved so far by live connections, per route name (or none): (up, down).
    pub fn live_bytes(&self) -> HashMap<Option<Arc<str>>, (u64, u64)> {
        let entries: Vec<Arc<ConnEntry>> = lock(&self.live).values().cloned().collect();
        let mut out: HashMap<Option<Arc<str>>, (u64, u64)> = HashMap::new();
        for e in entries {
            let route = lock(&e.details).route.as_ref().map(|r| r.name.clone());
            let slot = out.entry(route).or_default();
            slot.0 += e.bytes_up.load(Ordering::Relaxed);
            slot.1 += e.bytes_down.load(Ordering::Relaxed);
        }
        out
    }

    /// Resolves once the table is empty.
    pub async fn wait_empty(&self) {
        loop {
            let notified = self.emptied.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl ConnEntry {
    pub fn state(&self) -> ConnState {
        ConnState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    fn snapshot(&self) -> ConnSnapshot {
        let d = lock(&self.details).clone();
        ConnSnapshot {
            id: self.id,
            listener: self.listener.to_string(),
            peer: self.peer.to_string(),
            client: d.client().unwrap_or(self.peer).to_string(),
            route: d.route.map(|r| r.name.to_string()),
            upstream: d.upstream.map(|u| u.to_string()),
            state: self.state().as_str(),
            engine: "user",
            started_unix_ms: unix_ms(self.started),
            age_ms: self.started.elapsed().as_millis() as u64,
            bytes_client_to_upstream: self.bytes_up.load(Ordering::Relaxed),
            bytes_upstream_to_client: self.bytes_down.load(Ordering::Relaxed),
            proxy_tlvs: d
                .extra
                .iter()
                .flat_map(|e| &e.tlvs)
                .map(|t| TlvSnapshot {
                    kind: t.kind,
                    value_hex: t.value.iter().map(|b| format!("{b:02x}")).collect(),
                })
                .collect(),
            sni: d
                .extra
                .as_ref()
                .and_then(|e| e.sni.as_deref())
                .map(str::to_owned),
            upstream_error: d
                .extra
                .as_ref()
                .and_then(|e| e.upstream_error.as_deref())
                .map(str::to_owned),
        }
    }
}

/// Owns one table entry. Dropping it is the one and only way an entry leaves
/// the table; it records the end reason set by `finish` (or `internal_error`
/// if the owner never set one, e.g. on a panic).
pub struct ConnGuard {
    table: Arc<ConnTable>,
    entry: Arc<ConnEntry>,
    ip_slot: Option<IpAddr>,
    route: Option<Arc<RouteStats>>,
    route_slot_taken: bool,
    end: Option<EndReason>,
}

impl ConnGuard {
    pub fn id(&self) -> u64 {
        self.entry.id
    }

    pub fn entry(&self) -> &ConnEntry {
        &self.entry
    }

    /// The TCP peer, and the real client (learned from a PROXY header, or
    /// the peer itself).
    pub fn addresses(&self) -> (SocketAddr, SocketAddr) {
        let client = lock(&self.entry.details).client();
        (self.entry.peer, client.unwrap_or(self.entry.peer))
    }

    /// A shared handle on the entry, for I/O wrappers that count bytes.
    pub fn entry_arc(&self) -> Arc<ConnEntry> {
        self.entry.clone()
    }

    /// The connection was upgraded (its 101 logged as a request): its end
    /// is logged too, with the tunnel's totals and end reason.
    pub fn log_tunnel_end(&self) {
        lock(&self.entry.details).log_tunnel = true;
    }

    pub fn set_state(&self, state: ConnState) {
        let old = self.entry.state.swap(state as u8, Ordering::Relaxed);
        if old != state as u8 {
            tracing::trace!(
                conn = self.entry.id,
                from = ConnState::from_u8(old).as_str(),
                to = state.as_str(),
                "state"
            );
        }
    }

    /// Records the real client address (from a PROXY header) and its TLVs.
    pub fn set_client(&self, client: SocketAddr, tlvs: Vec<Tlv>) {
        let mut d = lock(&self.entry.details);
        let extra = d.extra();
        extra.client = Some(client);
        extra.tlvs = tlvs;
    }

    pub fn set_sni(&self, sni: &str) {
        lock(&self.entry.details).extra().sni = Some(sni.into());
    }

    pub fn set_upstream(&self, upstream: SocketAddr) {
        lock(&self.entry.details).upstream = Some(upstream);
    }

    /// The client socket's descriptor (for an operator's close).
    pub fn set_client_fd(&self, fd: RawFd) {
        self.entry.fds[0].store(fd, Ordering::Release);
    }

    /// The upstream socket's descriptor, where the connection owns it.
    pub fn set_upstream_fd(&self, fd: RawFd) {
        self.entry.fds[1].store(fd, Ordering::Release);
    }

    /// Takes a per-client-address slot; fails when `limit` are already taken.
    pub fn claim_ip(&mut self, ip: IpAddr, limit: u32) -> Result<(), EndReason> {
        let mut map = lock(&self.table.per_ip);
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                map.remove(&ip);
            }
            return Err(EndReason::LimitPerIp);
        }
        *n += 1;
        self.ip_slot = Some(ip);
        Ok(())
    }

    /// Assigns the connection to a route, taking one of its slots.
    pub fn claim_route(
        &mut self,
        route: &Arc<RouteStats>,
        limit: Option<u32>,
    ) -> Result<(), EndReason> {
        lock(&self.entry.details).route = Some(route.clone());
        self.route = Some(route.clone());
        if route.draining.load(Ordering::Relaxed) {
            return Err(EndReason::RouteDraining);
        }
        let before = route.active.fetch_add(1, Ordering::AcqRel);
        if limit.is_some_and(|l| before >= l as u64) {
            route.active.fetch_sub(1, Ordering::AcqRel);
            return Err(EndReason::LimitRoute);
        }
        self.route_slot_taken = true;
        Ok(())
    }

    /// Sets the end reason; the entry leaves the table when the guard drops.
    pub fn finish(mut self, reason: EndReason) {
        self.end = Some(reason);
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let reason = if self.entry.closed_by_admin.load(Ordering::Relaxed) {
            EndReason::AdminClosed
        } else {
            self.end.unwrap_or(EndReason::Internal)
        };
        let was = self
            .entry
            .state
            .swap(ConnState::Closed as u8, Ordering::Relaxed);
        // (An upgraded tunnel half closed is `draining`.)
        if was == ConnState::Upgraded as u8 || was == ConnState::Draining as u8 {
            self.log_tunnel(reason);
        }
        let table = &self.table;
        if let Some(ip) = self.ip_slot.take() {
            let mut map = lock(&table.per_ip);
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        // (An HTTP connection counts under its last request's route.)
        let route = self
            .route
            .take()
            .or_else(|| lock(&self.entry.details).route.clone());
        let stats = table.metrics.route_or_none(route.as_ref());
        if self.route_slot_taken {
            stats.active.fetch_sub(1, Ordering::AcqRel);
        }
        stats.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
        stats.bytes_up.fetch_add(
            self.entry.bytes_up.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        stats.bytes_down.fetch_add(
            self.entry.bytes_down.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        lock(&table.live).remove(&self.entry.id);
        if reason.is_notable() || tracing::enabled!(tracing::Level::DEBUG) {
            self.log_end(reason);
        }
        if table.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            table.emptied.notify_waiters();
        }
    }
}

impl ConnGuard {
    /// The access-log line of an upgraded connection's end (a WebSocket):
    /// its route, upstream, bytes each way over its whole life, duration
    /// and why it ended.
    fn log_tunnel(&self, reason: EndReason) {
        let d = lock(&self.entry.details);
        if !d.log_tunnel {
            return;
        }
        tracing::info!(
            target: "gatehouse::access",
            conn = self.entry.id,
            route = d.route.as_ref().map(|r| &*r.name),
            upstream = d.upstream.map(|u| u.to_string()),
            bytes_up = self.entry.bytes_up.load(Ordering::Relaxed),
            bytes_down = self.entry.bytes_down.load(Ordering::Relaxed),
            total_ms = self.entry.started.elapsed().as_micros() as f64 / 1000.0,
            reason = reason.as_str(),
            side = reason.side().as_str(),
            "upgraded connection closed"
        );
    }

    fn log_end(&self, reason: EndReason) {
        let d = lock(&self.entry.details);
        macro_rules! end_event {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    conn = self.entry.id,
                    listener = &*self.entry.listener,
                    client = %d.client().unwrap_or(self.entry.peer),
                    route = d.route.as_ref().map(|r| &*r.name),
                    upstream = d.upstream.map(|u| u.to_string()),
                    reason = reason.as_str(),
                    side = reason.side().as_str(),
                    bytes_up = self.entry.bytes_up.load(Ordering::Relaxed),
                    bytes_down = self.entry.bytes_down.load(Ordering::Relaxed),
                    duration_ms = self.entry.started.elapsed().as_millis() as u64,
                    "connection closed"
                )
            };
        }
        if !reason.is_notable() {
            end_event!(tracing::Level::DEBUG);
            return;
        }
        // What a flood of hostile clients multiplies is rate-limited.
        if reason.side() != Side::Client {
            end_event!(tracing::Level::INFO);
            return;
        }
        match self.table.log_limit.admit(reason.index()) {
            Admit::Write { suppressed } => {
                if suppressed > 0 {
                    tracing::info!(
                        reason = reason.as_str(),
                        side = reason.side().as_str(),
                        suppressed,
                        "connection closed: {suppressed} similar suppressed in the last {} s",
                        log_limit::WINDOW.as_secs()
                    );
                }
                end_event!(tracing::Level::INFO);
            }
            Admit::Suppress => end_event!(tracing::Level::DEBUG),
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// An idle keep-alive connection's memory is mostly its entry: it
    /// stays out of the 256-byte allocation class, which tokio's per-socket
    /// record uses (freed when a connection parks, so sharing pages with it
    /// would leave them half empty).
    #[test]
    fn entry_stays_small() {
        let size = std::mem::size_of::<super::ConnEntry>() + 16;
        assert!(size <= 192, "connection table entry takes {size} bytes");
    }
}
