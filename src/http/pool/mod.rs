//! Upstream HTTP connections: one pool per (route, endpoint) with keep-alive
//! reuse, a cap on total connections (callers wait, bounded, for a slot:
//! backpressure), a cap on idle ones, and a bounded idle lifetime. Over
//! TLS when the route says so (verified, with SNI), HTTP/1.1 (our own
//! client, `h1`) or HTTP/2 (hyper's).
//! An HTTP/1.1 connection goes back to the pool only from
//! `PooledConn::release`, which the response body calls after its last
//! byte; anything else (an error, a client that went away mid-body, an
//! upgrade) drops it, which closes it. One whose request goes away
//! before its response head is settled instead (`settle_abandoned`): kept
//! if nothing was sent, or after its response is drained; and one being
//! connected when its request goes away is pooled (`open_detached`).
//! An HTTP/2 connection is shared by every
//! request to the target (one slot); a request that goes away resets only
//! its stream.

pub mod end_watch;
pub mod h1;
mod routes;
#[cfg(feature = "send-batch")]
pub mod send_batch;

pub use routes::{PoolSet, RoutePools};

use crate::upstream::cluster::{Admitted, Endpoint};
use crate::upstream::endpoint::{EndpointState, InFlight};
use crate::upstream::{UpstreamError, connect};

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{HttpPolicy, UpstreamConfig, UpstreamProtocol};
use crate::http::body::Body;

/// How a route's requests reach its targets.
#[derive(Clone)]
pub struct Upstream {
    pub tls: Option<(Arc<ClientConfig>, crate::config::UpstreamTls)>,
    pub http2: bool,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, client: Option<Arc<ClientConfig>>) -> Upstream {
        Upstream {
            tls: client.zip(cfg.tls.clone()),
            http2: cfg.protocol == UpstreamProtocol::Http2,
        }
    }
}

/// An HTTP/1.1 or HTTP/2 connection.
pub enum Sender {
    /// A connection our own HTTP/1.1 client reads and writes in place.
    H1(h1::Conn),
    /// A handle on a shared HTTP/2 connection (hyper's).
    H2(http2::SendRequest<Body>),
}

impl Sender {
    pub fn is_closed(&mut self) -> bool {
        match self {
            Sender::H1(c) => c.is_stale(),
            Sender::H2(s) => s.is_closed(),
        }
    }
    pub fn is_http2(&self) -> bool {
        matches!(self, Sender::H2(_))
    }
}

/// One endpoint's connections for one route.
pub struct TargetPool {
    /// The endpoint as configured (`host:port`).
    target: Arc<str>,
    /// Connections in use per client address (`ClientShares`: the
    /// route's table, shared by its targets), and this target's key in it.
    shares: Arc<ClientShares>,
    share_key: u64,
    upstream: Upstream,
    idle: Mutex<Vec<IdleConn>>,
    /// The shared HTTP/2 connection, when the route speaks HTTP/2.
    shared: Mutex<Option<SharedH2>>,
    slots: Arc<Semaphore>,
    /// Why the last TLS handshake with this target failed (shown on the
    /// connection whose request it failed: `/connections`).
    last_tls_error: Mutex<Option<Arc<str>>>,
    /// The endpoint's address.
    addr: SocketAddr,
    /// What its cluster knows of the endpoint (health, load).
    state: Arc<EndpointState>,
    max_idle: usize,
    /// Its cap on connections (the slots).
    max_connections: usize,
    idle_timeout: Duration,
    wait_timeout: Duration,
}

struct IdleConn {
    /// `H1`.
    sender: Sender,
    permit: OwnedSemaphorePermit,
    peer: SocketAddr,
    since: Instant,
}

struct SharedH2 {
    sender: http2::SendRequest<Body>,
    peer: SocketAddr,
    _permit: Arc<OwnedSemaphorePermit>,
}

/// A connection checked out of a pool. Dropping it closes an HTTP/1.1
/// connection; `release` gives it back.
pub struct PooledConn {
    pub sender: Sender,
    pub peer: SocketAddr,
    pub reused: bool,
    /// The client's claim on the target's connections, released with
    /// the connection (back to the pool or closed).
    pub share: Option<ShareClaim>,
    /// The request's count in its endpoint's requests in flight, and in
    /// its cluster's, until its response ends (with the connection's
    /// return).
    pub load: Option<InFlight>,
    pub admitted: Option<Admitted>,
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<TargetPool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TargetPool {
    /// `shares`: the route's table of client shares.
    pub fn new(
        endpoint: &Endpoint,
        state: Arc<EndpointState>,
        (policy, shares): (&HttpPolicy, &Arc<ClientShares>),
        upstream: Upstream,
    ) -> Arc<TargetPool> {
        let pool = Arc::new(TargetPool {
            addr: endpoint.addr,
            state,
            target: endpoint.target.clone(),
            shares: shares.clone(),
            share_key: ClientShares::target_key(endpoint.addr),
            upstream,
            idle: Mutex::new(Vec::new()),
            shared: Mutex::new(None),
            slots: Arc::new(Semaphore::new(policy.pool_max_connections)),
            last_tls_error: Mutex::new(None),
            max_idle: policy.pool_max_idle,
            max_connections: policy.pool_max_connections,
            idle_timeout: policy.pool_idle_timeout,
            wait_timeout: policy.pool_wait_timeout,
        });
        let mut all = lock(&ALL_POOLS);
        // (Pruned when it has doubled: amortized constant per pool made.)
        if all.len() >= 64 && all.len().is_power_of_two() {
            all.retain(|w| w.strong_count() > 0);
        }
        all.push(Arc::downgrade(&pool));
        pool
    }

    /// A claim for `client` on one of this target's connections, or
    /// `ShareTaken` when it holds its share already. Shared HTTP/2
    /// connections hold no slot per request: no claim.
    pub fn claim(&self, client: IpAddr) -> Result<Option<ShareClaim>, ShareTaken> {
        if self.upstream.http2 {
            return Ok(None);
        }
        self.shares
            .claim(client, self.share_key)
            .map(Some)
            .ok_or(ShareTaken)
    }

    /// The target as configured (`host:port`).
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn idle_count(&self) -> usize {
        lock(&self.idle).len() + usize::from(lock(&self.shared).is_some())
    }

    /// Connections open now (idle or in use).
    pub fn open_count(&self) -> usize {
        self.max_connections - self.slots.available_permits()
    }

    /// Closes idle connections past their lifetime or closed by the upstream.
    pub fn reap(&self) {
        let mut idle = lock(&self.idle);
        self.drop_expired(&mut idle);
        idle.retain_mut(|c| !c.sender.is_closed());
        drop(idle);
        let mut shared = lock(&self.shared);
        if shared.as_ref().is_some_and(|s| s.sender.is_closed()) {
            *shared = None;
        }
    }

    /// Idle connections are kept oldest first, so those past their idle
    /// lifetime are a prefix: found by bisection, without a pass over all.
    fn drop_expired(&self, idle: &mut Vec<IdleConn>) {
        let now = Instant::now();
        let expired = |c: &IdleConn| now.duration_since(c.since) >= self.idle_timeout;
        // Oldest first: usually even the oldest is fresh, and one look does.
        if !idle.first().is_some_and(expired) {
            return;
        }
        let expired = idle.partition_point(expired);
        idle.drain(..expired);
    }

    /// An idle HTTP/1.1 connection, when one is at hand right now: no
    /// future, no allocation (the common case under load). `None`:
    /// `checkout` opens one.
    pub fn take_idle(self: &Arc<Self>) -> Option<PooledConn> {
        if self.upstream.http2 {
            return None;
        }
        loop {
            let mut taken = {
                let mut idle = lock(&self.idle);
                self.drop_expired(&mut idle);
                idle.pop()?
            };
            // (A stale one is dropped, outside the lock, and the next tried.)
            if taken.sender.is_closed() {
                continue;
            }
            return Some(PooledConn {
                sender: taken.sender,
                peer: taken.peer,
                reused: true,
                share: None,
                load: None,
                admitted: None,
                permit: Some(taken.permit),
                pool: self.clone(),
            });
        }
    }

    /// The shared HTTP/2 connection, opened if there is none.
    async fn checkout_h2(
        self: &Arc<Self>,
        connect_timeout: Duration,
    ) -> Result<(PooledConn, Option<Duration>), UpstreamError> {
        {
            let shared = lock(&self.shared);
            if let Some(s) = shared.as_ref().filter(|s| !s.sender.is_closed()) {
                let conn = PooledConn {
                    sender: Sender::H2(s.sender.clone()),
                    peer: s.peer,
                    reused: true,
                    share: None,
                    load: None,
                    admitted: None,
                    permit: None,
                    pool: self.clone(),
                };
                return Ok((conn, None));
            }
        }
        let (sender, peer, permit, took) = self.open(connect_timeout).await?;
        let Sender::H2(h2) = &sender else {
            return Err(UpstreamError::ProtocolError);
        };
        // Another request may have opened one meanwhile: the newest wins,
        // the other stays usable by those holding it and closes after them.
        *lock(&self.shared) = Some(SharedH2 {
            sender: h2.clone(),
            peer,
            _permit: Arc::new(permit),
        });
        let conn = PooledConn {
            sender,
            peer,
            reused: false,
            share: None,
            load: None,
            admitted: None,
            permit: None,
            pool: self.clone(),
        };
        Ok((conn, Some(took)))
    }

    /// A new connection: a slot (waiting at most the pool's wait timeout),
    /// then the connect (and TLS and HTTP handshakes) within its deadline.
    /// Also returns how long the connect took.
    async fn open(
        &self,
        connect_timeout: Duration,
    ) -> Result<(Sender, SocketAddr, OwnedSemaphorePermit, Duration), UpstreamError> {
        let permit = self.slot().await?;
        let started = Instant::now();
        // Boxed: the connect's state is large and needed only here.
        let (sender, peer) = tokio::time::timeout(connect_timeout, Box::pin(self.connect()))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)??;
        Ok((sender, peer, permit, started.elapsed()))
    }

    /// A slot for a new connection, waiting at most the pool's wait timeout.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, UpstreamError> {
        match tokio::time::timeout(self.wait_timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(UpstreamError::PoolExhausted),
        }
    }

    /// A new HTTP/1.1 connection (`open`), connected by a task
    /// of its own: a request that goes away while it connects (an HTTP/2
    /// stream reset as soon as it started) leaves the connection to the
    /// pool, idle, instead of closing it unused.
    async fn open_detached(
        self: &Arc<Self>,
        connect_timeout: Duration,
    ) -> Result<(Sender, SocketAddr, OwnedSemaphorePermit, Duration), UpstreamError> {
        let permit = self.slot().await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pool = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let connected = tokio::time::timeout(connect_timeout, pool.connect())
                .await
                .unwrap_or(Err(UpstreamError::ConnectTimeout));
            let (sender, peer) = match connected {
                Ok(c) => c,
                Err(e) => {
                    drop(permit);
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            if let Err(Ok((sender, peer, permit, _))) =
                tx.send(Ok((sender, peer, permit, started.elapsed())))
            {
                abandoned(true);
                pool.keep_idle(sender, peer, permit);
            }
        });
        rx.await.unwrap_or(Err(UpstreamError::ConnectError))
    }

    /// Keeps a connection that can serve another request, if the pool has
    /// room for one more idle; else it closes.
    fn keep_idle(&self, mut sender: Sender, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        if sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(IdleConn {
                sender,
                permit,
                peer,
                since: Instant::now(),
            });
        }
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint's state in its cluster.
    pub fn state(&self) -> &Arc<EndpointState> {
        &self.state
    }

    /// Why the last TLS handshake with this target failed.
    pub fn last_tls_error(&self) -> Option<Arc<str>> {
        lock(&self.last_tls_error).clone()
    }

    /// The scheme requests to this target carry (HTTP/2 needs one).
    pub fn scheme(&self) -> &'static str {
        if self.upstream.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// An idle connection if one is usable, else a new one (waiting at most
    /// the pool's wait timeout for a slot, then the connect timeout).
    /// `fresh`: the request cannot be retried, so it goes on a new
    /// connection (an idle one may be closing as it arrives); the
    /// connection is pooled after its response like any other. (Shared
    /// HTTP/2 connections are not concerned: a stream the upstream did not
    /// process is refused, not lost.)
    pub async fn checkout(
        self: &Arc<Self>,
        connect_timeout: Duration,
        fresh: bool,
    ) -> Result<(PooledConn, Option<Duration>), UpstreamError> {
        if self.upstream.http2 {
            return self.checkout_h2(connect_timeout).await;
        }
        if !fresh {
            if let Some(conn) = self.take_idle() {
                return Ok((conn, None));
            }
        }
        let (sender, peer, permit, took) = self.open_detached(connect_timeout).await?;
        Ok((
            PooledConn {
                sender,
                peer,
                reused: false,
                share: None,
                load: None,
                admitted: None,
                permit: Some(permit),
                pool: self.clone(),
            },
            Some(took),
        ))
    }

    /// A connected stream (TLS when the route says so), with the HTTP/2
    /// handshake when the route speaks it.
    async fn connect(&self) -> Result<(Sender, SocketAddr), UpstreamError> {
        let addr = self.addr;
        let stream = connect::tcp(addr).await?;
        let io = match &self.upstream.tls {
            None => h1::Io::Tcp(stream),
            Some((config, tls)) => {
                let stream = connect::tls(stream, config.clone(), tls, &self.target)
                    .await
                    .map_err(|f| {
                        *lock(&self.last_tls_error) = Some(f.detail);
                        f.error
                    })?;
                h1::Io::Tls(Box::new(stream))
            }
        };
        if self.upstream.http2 {
            return Ok((Self::handshake_h2(io).await?, addr));
        }
        Ok((Sender::H1(h1::Conn::new(io)), addr))
    }

    /// The HTTP/2 handshake on a connected stream; its I/O then runs in
    /// its own task, which ends (closing the socket) when every sender is
    /// dropped or the upstream closes.
    async fn handshake_h2(io: h1::Io) -> Result<Sender, UpstreamError> {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|_| UpstreamError::ProtocolError)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Ok(Sender::H2(sender))
    }
}

impl PooledConn {
    /// The upstream ended its side while the response still waits on the
    /// client: the connection gives up its slot and the client's share at
    /// once, and closes when its body is done (it never goes back to the
    /// pool).
    pub fn let_go(&mut self) {
        self.permit = None;
        self.share = None;
    }

    /// The connection holds a slot of its pool (HTTP/2's shared one does not).
    pub fn holds_slot(&self) -> bool {
        self.permit.is_some()
    }

    /// Its request was dropped before the response head was read (see
    /// `h1::Pending`): back to the pool if nothing was sent; if the request
    /// was, a task of its own drains the response first (bounded in bytes
    /// and time), holding the pool slot meanwhile; otherwise it closes.
    pub fn settle_abandoned(mut self) {
        let Sender::H1(raw) = &self.sender else {
            return;
        };
        match raw.pending() {
            h1::Pending::Clean => {
                abandoned(true);
                self.release();
            }
            h1::Pending::Response { head_request } => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return abandoned(false);
                };
                self.share = None; // the client is gone: its share is free
                rt.spawn(async move {
                    if let Sender::H1(raw) = &mut self.sender {
                        let kept = raw.drain(head_request).await;
                        abandoned(kept);
                        if kept {
                            self.release();
                        }
                    }
                });
            }
            h1::Pending::Unknown => abandoned(false),
        }
    }

    /// Gives a connection whose response was read completely back to the pool.
    pub fn release(self) {
        let (sender, Some(permit)) = (self.sender, self.permit) else {
            return; // HTTP/2: the shared connection stays with the pool
        };
        self.pool.keep_idle(sender, self.peer, permit);
    }
}

/// Every target pool made, live or not (weakly): the leak audit counts
/// the connections of those still alive, a retired view's included.
static ALL_POOLS: Mutex<Vec<std::sync::Weak<TargetPool>>> = Mutex::new(Vec::new());

/// Upstream HTTP connections open now (idle or in use), by address, over
/// every pool still alive.
pub fn open_by_address() -> std::collections::HashMap<SocketAddr, usize> {
    let mut all = lock(&ALL_POOLS);
    all.retain(|w| w.strong_count() > 0);
    let mut out = std::collections::HashMap::new();
    for pool in all.iter().filter_map(std::sync::Weak::upgrade) {
        *out.entry(pool.addr).or_default() += pool.open_count();
    }
    out
}

/// Requests dropped in mid-exchange (their client went away) whose
/// connection was kept (returned unused, drained, or connected for no one
/// and pooled), and those whose connection closed (process-wide).
static ABANDONED_KEPT: AtomicU64 = AtomicU64::new(0);
static ABANDONED_CLOSED: AtomicU64 = AtomicU64::new(0);

fn abandoned(kept: bool) {
    let counter = if kept {
        &ABANDONED_KEPT
    } else {
        &ABANDONED_CLOSED
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// (kept, closed): see `ABANDONED_KEPT`.
pub fn abandoned_counts() -> (u64, u64) {
    (
        ABANDONED_KEPT.load(Ordering::Relaxed),
        ABANDONED_CLOSED.load(Ordering::Relaxed),
    )
}

/// Buckets of `ClientShares`: a fixed table, so that memory stays bounded
/// whatever the number of client addresses.
const SHARE_BUCKETS: usize = 4096;

/// How many of each target's connections each client address holds (in
/// use: checked out for a request), so that a few clients that stop
/// reading cannot take every connection of a route from everyone else.
/// One table per route's pools, whatever the number of its targets (a
/// registered service's thousands of instances cost no table each): a
/// (client address, target) pair is hashed into `SHARE_BUCKETS` counters;
/// two pairs that share a bucket share its count (an IPv6 client is
/// counted by its /64).
pub struct ClientShares {
    buckets: Box<[AtomicU32]>,
    max: u32,
}

impl ClientShares {
    pub fn new(max: usize) -> ClientShares {
        ClientShares {
            buckets: (0..SHARE_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            max: u32::try_from(max).unwrap_or(u32::MAX),
        }
    }

    /// What tells a target's pairs from another's (`TargetPool::share_key`).
    fn target_key(addr: SocketAddr) -> u64 {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => {
                let bits = v6.to_bits();
                (bits >> 64) as u64 ^ bits as u64
            }
        };
        ((ip << 16) ^ u64::from(addr.port())).wrapping_mul(0xD6E8_FEB8_6659_FD93)
    }

    fn bucket(ip: IpAddr, target: u64) -> usize {
        let key = match ip {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => u64::from(u32::from(v4)),
                None => (v6.to_bits() >> 64) as u64,
            },
        };
        // Fibonacci hashing: the top bits of a multiplication.
        ((key ^ target).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> (64 - SHARE_BUCKETS.trailing_zeros())) as usize
    }

    fn claim(self: &Arc<Self>, ip: IpAddr, target: u64) -> Option<ShareClaim> {
        let bucket = Self::bucket(ip, target);
        let count = &self.buckets[bucket];
        if count.fetch_add(1, Ordering::Relaxed) >= self.max {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ShareClaim {
            shares: self.clone(),
            bucket,
        })
    }

    /// Connections of the target `target` held by `ip`'s bucket now.
    pub fn held(&self, ip: IpAddr, target: SocketAddr) -> u32 {
        self.buckets[Self::bucket(ip, Self::target_key(target))].load(Ordering::Relaxed)
    }
}

/// The client holds its share of the target's connections already.
#[derive(Debug)]
pub struct ShareTaken;

/// One connection held for a client address; dropping it gives it back.
pub struct ShareClaim {
    shares: Arc<ClientShares>,
    bucket: usize,
}

impl Drop for ShareClaim {
    fn drop(&mut self) {
        self.shares.buckets[self.bucket].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_its_share() {
        let shares = Arc::new(ClientShares::new(3));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let other: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let (tk, ok) = (ClientShares::target_key(t), ClientShares::target_key(other));
        let held: Vec<_> = (0..3).filter_map(|_| shares.claim(a, tk)).collect();
        assert_eq!(held.len(), 3);
        assert_eq!(shares.held(a, t), 3);
        assert!(shares.claim(a, tk).is_none(), "a fourth connection for a");
        assert!(
            shares.claim(b, tk).is_some(),
            "another address is not limited by a"
        );
        assert!(
            shares.claim(a, ok).is_some(),
            "a's share of another target is its own"
        );
        drop(held);
        assert_eq!(shares.held(a, t), 0);
        assert!(shares.claim(a, tk).is_some());
    }
}
