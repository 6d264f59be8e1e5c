//! An upgraded connection (WebSocket or any `Upgrade`) after `101`: bytes
//! spliced both ways by the connection's own task, with half-close, the
//! route's idle timeout (traffic either way, pings included, resets it),
//! its max lifetime and shutdown — never a request timeout or pool recycling.
//! (An HTTP/2 extended CONNECT's tunnel runs here too, in its stream's
//! future, with the stream as the client side: `h2::StreamIo`.)

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::pool::h1::{Io, Upgraded};

use super::h1::{ConnIo, Replay};
use crate::conn::{ConnGuard, EndReason};
use crate::pump;
use crate::shutdown::ShutdownSignal;

/// The upstream's connection after its `101`, taken once by the tunnel.
/// (Shared only so that the tunnel can travel in a response's extensions,
/// which must be `Clone`.)
#[derive(Clone)]
pub struct Handover(std::sync::Arc<std::sync::Mutex<Option<Upgraded>>>);

impl Handover {
    pub fn new(upgraded: Upgraded) -> Handover {
        Handover(std::sync::Arc::new(std::sync::Mutex::new(Some(upgraded))))
    }

    fn take(&self) -> Option<Upgraded> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[derive(Clone)]
pub struct Tunnel {
    pub upstream: Handover,
    pub idle: Option<Duration>,
    pub max_lifetime: Option<Duration>,
    /// For the access-log line at the tunnel's end, where the tunnel is
    /// one stream of a connection (HTTP/2); an HTTP/1.1 upgrade is its
    /// whole connection, whose guard writes that line.
    pub log: Option<std::sync::Arc<TunnelLog>>,
    /// Its route's signal: the shutdown's, or the route's own when a
    /// reload removed it (then the tunnel ends with `route_removed`).
    pub closing: ShutdownSignal,
}

/// What the end-of-tunnel line names besides its totals.
pub struct TunnelLog {
    pub conn: u64,
    pub route: Option<std::sync::Arc<str>>,
    pub upstream: Option<std::net::SocketAddr>,
}

/// How a tunnel ended, and the bytes it carried each way.
pub struct TunnelEnd {
    pub reason: EndReason,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl TunnelLog {
    /// The access-log line of a stream's tunnel at its end.
    pub fn write(&self, end: &TunnelEnd, started: Instant) {
        tracing::info!(
            target: "gatehouse::access",
            conn = self.conn,
            route = self.route.as_deref(),
            upstream = self.upstream.map(|u| u.to_string()),
            bytes_up = end.bytes_up,
            bytes_down = end.bytes_down,
            total_ms = started.elapsed().as_micros() as f64 / 1000.0,
            reason = end.reason.as_str(),
            side = end.reason.side().as_str(),
            "upgraded connection closed"
        );
    }
}

/// Stamps activity and notes which side ended first. (Bytes are counted
/// into the table entry by the client stream underneath, once each way.)
struct Counted<'a, T> {
    inner: T,
    last: &'a AtomicU64,
    started: Instant,
    /// Which side sent EOF first (`SIDE_*`), shared by both wrappers.
    first_eof: &'a AtomicU8,
    side: u8,
    /// Set by a failed read: this side reset the connection.
    failed: &'a AtomicU8,
    /// Bytes read from this side.
    read: u64,
}

const SIDE_CLIENT: u8 = 1;
const SIDE_UPSTREAM: u8 = 2;

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        match &r {
            Poll::Ready(Ok(())) if n == 0 && buf.remaining() > 0 => {
                let _ = self.first_eof.compare_exchange(
                    0,
                    self.side,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(Err(_)) => {
                let _ = self.failed.compare_exchange(
                    0,
                    self.side,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            _ => {}
        }
        if n > 0 {
            self.read += n as u64;
            self.last
                .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The upstream's upgraded connection, as it was handed over; what it
/// sent right after its `101` is read first.
type UpstreamIo = Replay<Io>;

fn handover(tunnel: &Tunnel) -> Result<Upgraded, EndReason> {
    tunnel.upstream.take().ok_or(EndReason::Internal) // (never: taken once)
}

/// Runs an HTTP/1.1 upgrade's tunnel: the client connection handed over
/// by the HTTP/1 loop after writing the 101 (`early`: bytes it sent right
/// after its request), and the upstream's upgraded one. When both are
/// plain TCP, the L4 pump moves the bytes: no buffer is held while the
/// tunnel is idle. Otherwise (TLS on either side) they are
/// copied. (A plain-TCP connection's tunnel runs in a task of its own
/// instead: `http::park::spawn_upgraded`.)
pub async fn run_h1<S: ConnIo>(upgrade: super::h1::Upgrade<S>, guard: &ConnGuard) -> EndReason {
    match Box::pin(prepare(upgrade, guard)).await {
        Prepared::Pump(p) => p.run(guard).await,
        Prepared::Copy(c) => Box::pin(c.run()).await,
        Prepared::Ended(reason) => reason,
    }
}

/// An upgraded connection, ready for its tunnel.
pub enum Prepared<S> {
    /// Plain TCP both ways: the L4 pump.
    Pump(PumpTunnel<S>),
    /// TLS on either side: copied both ways.
    Copy(CopyTunnel<S>),
    Ended(EndReason),
}

pub struct PumpTunnel<S> {
    io: S,
    upstream: TcpStream,
    /// Bytes the client sent right after its request.
    first_up: Vec<u8>,
    deadlines: pump::Deadlines,
    /// Its route's signal (`Tunnel::closing`).
    closing: ShutdownSignal,
}

impl<S: ConnIo> PumpTunnel<S> {
    /// The tunnel until it ends: its future is the pump's and the two
    /// sockets.
    pub async fn run(self, guard: &ConnGuard) -> EndReason {
        let PumpTunnel {
            io,
            upstream,
            first_up,
            deadlines,
            closing,
        } = self;
        let Some(client) = io.tcp() else {
            return EndReason::Internal;
        };
        let parts = pump::Parts {
            client,
            upstream: &upstream,
            first_up,
            refuse_proxy_signature: false,
        };
        match pump::run_parking(parts, guard, deadlines, &closing).await {
            pump::Stopped::Ended(reason) => closing.blame(reason),
            pump::Stopped::Idle => EndReason::Internal, // (never: no park_after)
        }
    }
}

impl PumpTunnel<crate::io::Prefixed<TcpStream>> {
    /// The tunnel until it ends (`Ok`), or until nothing has moved either
    /// way for `park_after` (if given) with nothing in flight: then it is given back
    /// (`Err`), to wait in the parking lot (`http::park`).
    pub async fn run_parking(
        mut self,
        guard: &ConnGuard,
        park_after: Option<Duration>,
    ) -> Result<EndReason, Self> {
        let Some(client) = self.io.tcp() else {
            return Ok(EndReason::Internal);
        };
        let parts = pump::Parts {
            client,
            upstream: &self.upstream,
            first_up: std::mem::take(&mut self.first_up),
            refuse_proxy_signature: false,
        };
        let deadlines = pump::Deadlines {
            park_after,
            ..self.deadlines
        };
        let closing = self.closing.clone();
        match pump::run_parking(parts, guard, deadlines, &closing).await {
            pump::Stopped::Ended(reason) => Ok(closing.blame(reason)),
            pump::Stopped::Idle => Err(self),
        }
    }

    /// The two sockets, the deadlines and the route's signal, to be parked.
    pub fn into_parts(self) -> (TcpStream, TcpStream, pump::Deadlines, ShutdownSignal) {
        (
            self.io.into_inner(),
            self.upstream,
            self.deadlines,
            self.closing,
        )
    }

    /// A parked tunnel's sockets, back in tokio's hands.
    pub fn from_parts(
        client: TcpStream,
        upstream: TcpStream,
        deadlines: pump::Deadlines,
        closing: ShutdownSignal,
        guard: &ConnGuard,
    ) -> Self {
        PumpTunnel {
            io: crate::io::Prefixed::new(client, Vec::new(), guard.entry_arc()),
            upstream,
            first_up: Vec::new(),
            deadlines,
            closing,
        }
    }
}

pub struct CopyTunnel<S> {
    tunnel: Tunnel,
    upstream: UpstreamIo,
    client: Replay<S>,
}

impl<S: ConnIo> CopyTunnel<S> {
    pub async fn run(self) -> EndReason {
        let closing = self.tunnel.closing.clone();
        let end = copy(&self.tunnel, self.upstream, self.client, &closing).await;
        closing.blame(end.reason)
    }
}

/// The hand-over: the upstream's upgraded connection, and, for the pump,
/// what the upstream sent right after its 101 written to the client first
/// (usually nothing, at most what one read brought).
pub async fn prepare<S: ConnIo>(upgrade: super::h1::Upgrade<S>, guard: &ConnGuard) -> Prepared<S> {
    let super::h1::Upgrade { tunnel, early, io } = upgrade;
    let Upgraded {
        io: upstream,
        early: owed,
    } = match handover(&tunnel) {
        Ok(u) => u,
        Err(reason) => return Prepared::Ended(reason),
    };
    // (`parkable`: plain TCP with no replayed bytes left in the wrapper.)
    let upstream = match (io.tcp(), io.parkable(), upstream) {
        (Some(client), true, Io::Tcp(upstream)) => {
            let wait = tunnel.idle.unwrap_or(Duration::from_secs(30));
            let owed = write_owed(client, &owed, &guard.entry().bytes_down);
            match tokio::time::timeout(wait, owed).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Prepared::Ended(EndReason::ClientReset),
                Err(_) => return Prepared::Ended(EndReason::ClientSendTimeout),
            }
            return Prepared::Pump(PumpTunnel {
                io,
                upstream,
                // Only the bytes owed are kept: the loop's buffer goes.
                first_up: early.to_vec(),
                deadlines: pump::Deadlines {
                    idle: tunnel.idle,
                    max_lifetime: tunnel.max_lifetime,
                    started: Instant::now(),
                    park_after: None,
                },
                closing: tunnel.closing.clone(),
            });
        }
        (_, _, upstream) => Replay::new(owed, upstream),
    };
    Prepared::Copy(CopyTunnel {
        tunnel,
        upstream,
        client: Replay::new(early, io),
    })
}

/// Writes all of `bytes` to a client socket, counted into `sent`.
async fn write_owed(client: &TcpStream, mut bytes: &[u8], sent: &AtomicU64) -> io::Result<()> {
    while !bytes.is_empty() {
        client.writable().await?;
        match client.try_write(bytes) {
            Ok(n) => {
                sent.fetch_add(n as u64, Ordering::Relaxed);
                bytes = &bytes[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs the tunnel between a client stream and the upstream's upgraded
/// connection (an HTTP/2 extended CONNECT's: the stream is the client).
pub async fn run<C>(tunnel: Tunnel, client: C) -> TunnelEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    match handover(&tunnel) {
        Ok(Upgraded { io, early }) => {
            let upstream = Replay::new(early, io);
            let closing = tunnel.closing.clone();
            let mut end = copy(&tunnel, upstream, client, &closing).await;
            end.reason = closing.blame(end.reason);
            end
        }
        Err(reason) => TunnelEnd {
            reason,
            bytes_up: 0,
            bytes_down: 0,
        },
    }
}

/// Copies both ways (8 KiB buffers each way, held for the tunnel's life).
async fn copy<C>(
    tunnel: &Tunnel,
    upstream: UpstreamIo,
    client: C,
    shutdown: &ShutdownSignal,
) -> TunnelEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last = AtomicU64::new(0);
    let (first_eof, failed) = (AtomicU8::new(0), AtomicU8::new(0));
    let mut client = Counted {
        inner: client,
        last: &last,
        started,
        first_eof: &first_eof,
        side: SIDE_CLIENT,
        failed: &failed,
        read: 0,
    };
    let mut upstream = Counted {
        inner: upstream,
        last: &last,
        started,
        first_eof: &first_eof,
        side: SIDE_UPSTREAM,
        failed: &failed,
        read: 0,
    };
    // (The copy, and its borrows of the two sides, end with this block.)
    let reason = {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        let far = Duration::from_secs(86400 * 365);
        let lifetime = tokio::time::sleep(tunnel.max_lifetime.unwrap_or(far));
        tokio::pin!(lifetime);
        let idle = tunnel.idle.unwrap_or(far);
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer);
        let closing = shutdown.closing();
        tokio::pin!(closing);
        loop {
            tokio::select! {
                r = &mut copy => break match r {
                    Ok(_) if first_eof.load(Ordering::Relaxed) == SIDE_UPSTREAM => EndReason::UpstreamClosed,
                    Ok(_) => EndReason::ClientClosed,
                    // A failed read names its side; otherwise a write failed.
                    Err(_) if failed.load(Ordering::Relaxed) == SIDE_UPSTREAM => EndReason::UpstreamReset,
                    Err(_) if failed.load(Ordering::Relaxed) == SIDE_CLIENT => EndReason::ClientReset,
                    Err(_) => EndReason::UpstreamReset,
                },
                () = &mut idle_timer => {
                    let deadline = started + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
                    if deadline <= Instant::now() {
                        break EndReason::IdleTimeout;
                    }
                    idle_timer.as_mut().reset(tokio::time::Instant::from_std(deadline));
                }
                () = &mut lifetime => break EndReason::MaxLifetime,
                () = &mut closing => break EndReason::Shutdown,
            }
        }
    };
    TunnelEnd {
        reason,
        bytes_up: client.read,
        bytes_down: upstream.read,
    }
}
