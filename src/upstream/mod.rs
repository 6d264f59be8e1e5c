//! Upstream HTTP/1.1 connections: one pool per (route, target) with
//! keep-alive reuse, a cap on total connections (callers wait, bounded, for
//! a slot: backpressure), a cap on idle ones, and a bounded idle lifetime.
//! A connection goes back to the pool only from `PooledConn::release`,
//! which the response body calls after its last byte; anything else (an
//! error, a client that went away, an upgrade) drops it, which closes it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::HttpPolicy;
use crate::http::body::Body;
use crate::http::error::RequestEnd;

pub struct TargetPool {
    target: String,
    idle: Mutex<Vec<IdleConn>>,
    slots: Arc<Semaphore>,
    max_idle: usize,
    idle_timeout: Duration,
    wait_timeout: Duration,
}

struct IdleConn {
    sender: SendRequest<Body>,
    permit: OwnedSemaphorePermit,
    peer: SocketAddr,
    since: Instant,
}

/// A connection checked out of a pool. Dropping it closes the connection;
/// `release` gives it back.
pub struct PooledConn {
    pub sender: SendRequest<Body>,
    pub peer: SocketAddr,
    pub reused: bool,
    permit: OwnedSemaphorePermit,
    pool: Arc<TargetPool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TargetPool {
    pub fn new(target: String, policy: &HttpPolicy) -> Arc<TargetPool> {
        Arc::new(TargetPool {
            target,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(policy.pool_max_connections)),
            max_idle: policy.pool_max_idle,
            idle_timeout: policy.pool_idle_timeout,
            wait_timeout: policy.pool_wait_timeout,
        })
    }

    pub fn idle_count(&self) -> usize {
        lock(&self.idle).len()
    }

    /// Connections open now (idle or in use).
    pub fn open_count(&self, max: usize) -> usize {
        max - self.slots.available_permits()
    }

    /// Closes idle connections past their lifetime or closed by the upstream.
    pub fn reap(&self) {
        let now = Instant::now();
        lock(&self.idle)
            .retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < self.idle_timeout);
    }

    /// An idle connection if one is usable, else a new one (waiting at most
    /// the pool's wait timeout for a slot, then the connect timeout).
    pub async fn checkout(
        self: &Arc<Self>,
        connect_timeout: Duration,
    ) -> Result<(PooledConn, Option<Duration>), RequestEnd> {
        loop {
            let taken = {
                let mut idle = lock(&self.idle);
                let now = Instant::now();
                idle.retain(|c| {
                    !c.sender.is_closed() && now.duration_since(c.since) < self.idle_timeout
                });
                // Newest first, preferring one that is ready right now: a
                // connection whose response just ended may still need its
                // I/O task to run before it can take a request.
                match idle.iter().rposition(|c| c.sender.is_ready()) {
                    Some(pos) => idle.remove(pos),
                    None => match idle.pop() {
                        Some(c) => c,
                        None => break,
                    },
                }
            };
            let mut c = taken;
            if c.sender.is_ready()
                || tokio::time::timeout(Duration::from_millis(100), c.sender.ready())
                    .await
                    .is_ok_and(|r| r.is_ok())
            {
                let conn = PooledConn {
                    sender: c.sender,
                    peer: c.peer,
                    reused: true,
                    permit: c.permit,
                    pool: self.clone(),
                };
                return Ok((conn, None));
            }
        }
        let permit =
            match tokio::time::timeout(self.wait_timeout, self.slots.clone().acquire_owned()).await
            {
                Ok(Ok(p)) => p,
                _ => return Err(RequestEnd::UpstreamPoolExhausted),
            };
        let started = Instant::now();
        let (sender, peer) = tokio::time::timeout(connect_timeout, self.connect())
            .await
            .map_err(|_| RequestEnd::UpstreamConnectTimeout)??;
        Ok((
            PooledConn {
                sender,
                peer,
                reused: false,
                permit,
                pool: self.clone(),
            },
            Some(started.elapsed()),
        ))
    }

    async fn connect(&self) -> Result<(SendRequest<Body>, SocketAddr), RequestEnd> {
        let addr = match self.target.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => tokio::net::lookup_host(self.target.as_str())
                .await
                .ok()
                .and_then(|mut a| a.next())
                .ok_or(RequestEnd::UpstreamUnresolved)?,
        };
        let stream = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => RequestEnd::UpstreamRefused,
            _ => RequestEnd::UpstreamConnectError,
        })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| RequestEnd::UpstreamConnectError)?;
        // The connection's I/O runs in its own task, which ends (closing the
        // socket) when the `SendRequest` is dropped or the upstream closes.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok((sender, addr))
    }
}

impl PooledConn {
    /// Gives a connection whose response was read completely back to the pool.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.pool.idle);
        if idle.len() < self.pool.max_idle {
            idle.push(IdleConn {
                sender: self.sender,
                permit: self.permit,
                peer: self.peer,
                since: Instant::now(),
            });
        }
    }
}
