//! HTTP reverse proxying on `http` and `https` listeners: the connection
//! task (this file) runs our HTTP/1.1 loop (`h1`) or our HTTP/2 server (`h2`)
//! for one client connection, owns its table entry, and after an upgrade
//! runs the tunnel itself; an idle HTTP/1 connection is handed to `park`.
//! `plane` is the plane's own state (the parking lot, the view of the
//! running config with its upstream pools). `proxy` handles each request; `body`, `headers`, `error`, `log` and
//! `tunnel` are its parts.

pub mod body;
pub mod error;
pub mod h1;
mod h2;
pub mod headers;
mod log;
pub mod park;
mod plane;
pub mod pool;
mod proxy;
mod tunnel;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Waker;
use std::time::Duration;

use tokio::net::TcpStream;

pub use plane::{Plane, View};
pub use proxy::{ConnInfo, TlsInfo};

use crate::conn::{ConnEntry, ConnGuard, ConnState, EndReason};
use crate::io::Prefixed;
use crate::runtime::ListenerRt;
use crate::shutdown::ShutdownSignal;

/// Serves HTTP on an accepted connection until it ends; returns why.
/// `early` holds bytes already read (after a PROXY header).
pub async fn serve(
    mut client: TcpStream,
    early: Vec<u8>,
    info: ConnInfo,
    guard: &ConnGuard,
    listener: &Arc<ListenerRt>,
    plane: &Arc<Plane>,
) -> Served<Prefixed<TcpStream>> {
    let Some(cfg) = listener.config.http.clone() else {
        return Served::End(EndReason::Internal);
    };
    guard.set_state(ConnState::Established);
    // h2c with prior knowledge: the connection opens with the HTTP/2 preface.
    let mut early = early;
    let h2 = if cfg.h2c {
        match Box::pin(read_preface(
            &mut client,
            &mut early,
            cfg.header_read_timeout,
        ))
        .await
        {
            Ok(h2) => h2,
            Err(reason) => return Served::End(reason),
        }
    } else {
        false
    };
    let io = Prefixed::new(client, early, guard.entry_arc());
    serve_io(io, h2, info, guard, listener, plane).await
}

/// How a server connection's run ended: closed, or idle and handed back
/// to be parked (plain-TCP HTTP/1 only).
pub enum Served<S> {
    End(EndReason),
    Park(h1::Parked<S>),
    /// Upgraded after a `101`: its tunnel is to run (`finish`), with the
    /// HTTP loop's state already gone.
    Upgrade(Box<h1::Upgrade<S>>),
}

impl<S: h1::ConnIo> Served<S> {
    /// For streams that are never parked (TLS): runs an upgraded
    /// connection's tunnel, and returns how the connection ended.
    pub async fn finish(self, guard: &ConnGuard) -> EndReason {
        match self {
            Served::End(r) => r,
            Served::Park(_) => EndReason::Internal,
            Served::Upgrade(u) => {
                let u = *u; // (its box goes now, not with the tunnel)
                Box::pin(tunnel::run_h1(u, guard)).await
            }
        }
    }
}

/// Serves HTTP/1.1 (our connection loop, `h1`) or HTTP/2 (hyper's server,
/// when `h2`) on an established stream — a counted TCP stream, or a
/// terminated TLS stream — until it ends.
pub async fn serve_io<S>(
    io: S,
    h2: bool,
    info: ConnInfo,
    guard: &ConnGuard,
    listener: &Arc<ListenerRt>,
    plane: &Arc<Plane>,
) -> Served<S>
where
    S: h1::ConnIo,
{
    let Some(cfg) = listener.config.http.clone() else {
        return Served::End(EndReason::Internal);
    };
    let handler = Arc::new(proxy::Handler::new(
        plane.clone(),
        listener.name.clone(),
        cfg.clone(),
        info,
        guard.entry_arc(),
    ));
    if !h2 {
        return serve_h1(io, handler, cfg, None, guard, plane).await;
    }
    let idle = idle_rule(&plane.rt, guard);
    // Boxed: an HTTP/2 connection's state is kilobytes, and an HTTP/1
    // connection must not carry it.
    Served::End(Box::pin(serve_h2(io, handler, cfg, idle, guard, plane)).await)
}

/// The connection's idle timeout (`timeouts.idle`, read from the running
/// config) and the table entry whose traffic resets it.
fn idle_rule<'a>(
    rt: &crate::runtime::Runtime,
    guard: &'a ConnGuard,
) -> Option<(std::time::Duration, &'a crate::conn::ConnEntry)> {
    rt.current()
        .config
        .timeouts
        .idle
        .map(|d| (d, guard.entry()))
}

/// Our HTTP/1.1 loop on a connection, new or back from parking (`resume`:
/// requests served, keep-alive deadline), under the shutdown and idle rules.
pub async fn serve_h1<S: h1::ConnIo>(
    io: S,
    handler: Arc<proxy::Handler>,
    cfg: Arc<crate::config::HttpListener>,
    resume: Option<(u64, tokio::time::Instant)>,
    guard: &ConnGuard,
    plane: &Arc<Plane>,
) -> Served<S> {
    let idle = idle_rule(&plane.rt, guard);
    let conn = h1::serve(io, handler, cfg, guard, &plane.rt.shutdown, resume);
    tokio::pin!(conn);
    match drive(conn, &plane.rt.shutdown, idle, |_| {}).await {
        Driven::Done(h1::H1End::End(reason)) => Served::End(reason),
        Driven::Done(h1::H1End::Upgrade(u)) => Served::Upgrade(u),
        Driven::Done(h1::H1End::Park(mut p)) => {
            // The connection has been idle for `PARK_AFTER`: the global idle
            // deadline keeps running while it is parked.
            if let Some(idle) = plane.rt.current().config.timeouts.idle {
                let cap = tokio::time::Instant::now() + idle.saturating_sub(h1::PARK_AFTER);
                p.deadline = p.deadline.min(cap);
            }
            Served::Park(p)
        }
        Driven::Shutdown => Served::End(EndReason::Shutdown),
        Driven::Idle => Served::End(EndReason::IdleTimeout),
    }
}

/// Our HTTP/2 server on one connection.
async fn serve_h2<S: h1::ConnIo>(
    io: S,
    handler: Arc<proxy::Handler>,
    cfg: Arc<crate::config::HttpListener>,
    idle: Option<(Duration, &ConnEntry)>,
    guard: &ConnGuard,
    plane: &Arc<Plane>,
) -> EndReason {
    let conn = h2::Server::new(io, handler, &cfg);
    tokio::pin!(conn);
    match drive(conn, &plane.rt.shutdown, idle, |c| {
        c.get_mut().graceful_shutdown()
    })
    .await
    {
        Driven::Done(Ok(())) => EndReason::ClientClosed,
        Driven::Done(Err(e)) => {
            tracing::debug!(conn = guard.id(), error = ?e, "HTTP/2 connection ended with an error");
            e.reason()
        }
        Driven::Shutdown => EndReason::Shutdown,
        Driven::Idle => EndReason::IdleTimeout,
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the connection's first bytes into `early` (which the connection
/// then replays to whichever server takes it) until they tell the HTTP/2
/// preface from anything else: usually one read, the one the HTTP/1 loop
/// would have made. Bounded by the header deadline.
async fn read_preface(
    client: &mut TcpStream,
    early: &mut Vec<u8>,
    deadline: Duration,
) -> Result<bool, EndReason> {
    use tokio::io::AsyncReadExt;
    let read = async {
        loop {
            let have = early.len().min(H2_PREFACE.len());
            if early[..have] != H2_PREFACE[..have] {
                return Ok(false);
            }
            if have == H2_PREFACE.len() {
                return Ok(true);
            }
            // Most request heads fit in 1 KiB: the HTTP/1 loop takes it all.
            // (A read through tokio's `poll_read`: one that fills less than
            // the buffer tells tokio the socket is drained, so the next
            // read waits for readiness instead of failing with EAGAIN.)
            early.reserve(1024);
            match client.read_buf(early).await {
                Ok(0) => return Err(EndReason::ClientClosed),
                Ok(_) => {}
                Err(_) => return Err(EndReason::ClientReset),
            }
        }
    };
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or(Err(EndReason::ClientHeaderTimeout))
}

/// How a server connection's run ended.
enum Driven<T> {
    Done(T),
    /// Dropped at the end of the shutdown drain.
    Shutdown,
    /// No byte either way for the idle deadline (a backstop: hyper bounds
    /// idle HTTP/1 keep-alive itself, HTTP/2 has no such deadline).
    Idle,
}

/// Runs a server connection to its end. At shutdown it is asked to finish
/// what is in flight and close; at the drain deadline it is dropped. With
/// an idle deadline, a connection that moved no byte for `idle` (checked
/// every `idle`, so it ends within `idle`..`2 × idle`) is dropped.
async fn drive<C, T>(
    mut conn: Pin<&mut C>,
    shutdown: &ShutdownSignal,
    idle: Option<(Duration, &ConnEntry)>,
    graceful: fn(Pin<&mut C>),
) -> Driven<T>
where
    C: Future<Output = T>,
{
    let moved =
        |e: &ConnEntry| e.bytes_up.load(Ordering::Relaxed) + e.bytes_down.load(Ordering::Relaxed);
    let mut seen = idle.map_or(0, |(_, e)| moved(e));
    let period = idle.map_or(Duration::from_secs(86400 * 365), |(d, _)| d);
    let tick = tokio::time::sleep(period);
    tokio::pin!(tick);
    let mut tick_waker: Option<Waker> = None;
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => return Driven::Done(r),
            () = shutdown.draining(), if !draining => {
                draining = true;
                graceful(conn.as_mut());
            }
            () = shutdown.closing(), if draining => return Driven::Shutdown,
            () = std::future::poll_fn(|cx| poll_timer(tick.as_mut(), &mut tick_waker, cx)), if idle.is_some() => {
                let now = idle.map_or(0, |(_, e)| moved(e));
                if now == seen {
                    return Driven::Idle;
                }
                seen = now;
                tick.as_mut().reset(tokio::time::Instant::now() + period);
                tick_waker = None;
            }
        }
    }
}

/// Polls a timer that is polled at every wake-up of its task (`drive`'s
/// idle check, an HTTP/2 connection's keep-alive): while
/// it has not fired and the task's waker is the one it holds, a poll is one
/// atomic read instead of a visit to tokio's timer entry.
fn poll_timer(
    timer: Pin<&mut tokio::time::Sleep>,
    polled_with: &mut Option<Waker>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<()> {
    if !timer.is_elapsed()
        && polled_with
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
    {
        return std::task::Poll::Pending;
    }
    let polled = timer.poll(cx);
    if polled.is_pending() {
        *polled_with = Some(cx.waker().clone());
    }
    polled
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::test_runtime;

    /// An idle keep-alive connection costs its task's future (no buffer is
    /// held while idle): keep the HTTP connection future small. Large,
    /// rarely used phases (HTTP/2, tunnels, refusals, the request path and
    /// the response writer) are boxed. (Debug-build sizes; release is smaller.)
    #[tokio::test]
    async fn http_connection_future_stays_small() {
        let (rt, listener) = test_runtime();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (stream, peer) = l.accept().await.unwrap();
        let guard = rt.table.register(listener.name.clone(), peer);
        let plane = Plane::new(rt);
        let info = ConnInfo {
            client: peer,
            peer,
            local: peer,
            tls: None,
        };
        let fut = serve(stream, Vec::new(), info, &guard, &listener, &plane);
        let size = std::mem::size_of_val(&fut);
        eprintln!("HTTP connection future: {size} bytes");
        assert!(size <= 2560, "HTTP connection future is {size} bytes");
    }
}
