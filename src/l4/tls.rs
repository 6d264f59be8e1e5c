//! The TLS steps of a connection's task on `tls` and `https` listeners:
//! reading the ClientHello (bounded in size and time) so that routing can
//! see the SNI, the handshake when the route terminates, the upstream TLS
//! handshake when it re-encrypts, and the byte relay between the two
//! streams. Passthrough needs none of this past the ClientHello: the bytes
//! read go to the upstream first, then the L4 pump takes over.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::conn::{ConnGuard, ConnState, EndReason};
use crate::io::Prefixed;
use crate::runtime::{ListenerRt, Runtime, Snapshot};
use crate::shutdown::ShutdownSignal;
use crate::tls::hello::{self, Hello, Parsed};
use crate::tls::settings;

/// Reads until `buf` holds a complete ClientHello (the bytes stay in `buf`).
pub async fn read_hello(client: &TcpStream, buf: &mut Vec<u8>) -> Result<Hello, EndReason> {
    loop {
        match hello::parse(buf) {
            Parsed::Complete(h) => return Ok(h),
            Parsed::Invalid(why) => {
                tracing::debug!(why, "not a TLS ClientHello");
                return Err(EndReason::TlsHelloInvalid);
            }
            Parsed::Incomplete => {}
        }
        match super::read_more(client, buf, hello::MAX_HELLO).await? {
            0 if buf.is_empty() => return Err(EndReason::ClientClosed),
            0 => return Err(EndReason::TlsHelloInvalid),
            _ => {}
        }
    }
}

/// Why no certificate can be served, checked before the handshake so that
/// the end says so (rustls would only report a failed handshake).
pub fn certificate_missing(snap: &Snapshot, hello: &Hello) -> Option<EndReason> {
    let challenge = hello
        .alpn
        .iter()
        .any(|p| p == crate::tls::certs::ACME_TLS_ALPN);
    if challenge || snap.tls.certs.resolve(hello.sni.as_deref()).is_some() {
        return None;
    }
    Some(if hello.sni.is_none() {
        EndReason::TlsNoSni
    } else {
        EndReason::TlsNoCertificate
    })
}

pub use crate::tls::ClientTls;

/// Completes the server handshake (the ClientHello bytes in `early` are
/// replayed to rustls) by `deadline`.
pub async fn accept(
    client: TcpStream,
    early: Vec<u8>,
    guard: &ConnGuard,
    listener: &ListenerRt,
    rt: &Runtime,
    deadline: Instant,
) -> Result<ClientTls, EndReason> {
    let Some(config) = listener.tls.clone() else {
        return Err(EndReason::Internal);
    };
    let io = Prefixed::new(client, early, guard.entry_arc());
    let accepting = tokio_rustls::TlsAcceptor::from(config).accept(io);
    tokio::select! {
        r = timeout_at(deadline, accepting) => match r {
            Err(_) => Err(EndReason::TlsHandshakeFailed),
            Ok(Err(e)) => {
                tracing::debug!(conn = guard.id(), error = %e, "TLS handshake failed");
                Err(EndReason::TlsHandshakeFailed)
            }
            Ok(Ok(s)) => Ok(s),
        },
        _ = rt.shutdown.closing() => Err(EndReason::Shutdown),
    }
}

/// What the handshake established, for routing and HTTP.
pub fn tls_info(stream: &ClientTls) -> crate::http::TlsInfo {
    let (_, conn) = stream.get_ref();
    crate::http::TlsInfo {
        sni: conn.server_name().map(|s| s.to_ascii_lowercase()),
        identity: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(settings::client_identity),
    }
}

/// The negotiated ALPN protocol is HTTP/2.
pub fn negotiated_h2(stream: &ClientTls) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(b"h2")
}

/// Opens TLS to the upstream on a connected socket, verifying its certificate.
pub async fn connect_upstream(
    upstream: TcpStream,
    config: Arc<rustls::ClientConfig>,
    tls: &crate::config::UpstreamTls,
    target: &str,
    deadline: Instant,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, EndReason> {
    let connecting = crate::upstream::connect::tls(upstream, config, tls, target);
    match timeout_at(deadline, connecting).await {
        Err(_) => Err(EndReason::UpstreamConnectTimeout),
        Ok(Ok(s)) => Ok(s),
        Ok(Err(failure)) => Err(failure.error.into()),
    }
}

/// Deadlines of an established relay.
pub struct RelayLimits {
    pub idle: Option<Duration>,
    pub max_lifetime: Option<Duration>,
    pub started: std::time::Instant,
}

/// Moves bytes both ways between two streams (TLS on either side) until
/// both directions end, with half-close propagated, an idle deadline (no
/// byte either way, read from the table entry's counters, which the client
/// side's `Prefixed` keeps) and a lifetime.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    guard: &ConnGuard,
    limits: RelayLimits,
    shutdown: &ShutdownSignal,
) -> EndReason
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let up = copy_half(
        &mut cr,
        &mut uw,
        EndReason::ClientReset,
        EndReason::UpstreamReset,
    );
    let down = copy_half(
        &mut ur,
        &mut cw,
        EndReason::UpstreamReset,
        EndReason::ClientReset,
    );
    tokio::pin!(up, down);
    let entry = guard.entry();
    let moved =
        || entry.bytes_up.load(Ordering::Relaxed) + entry.bytes_down.load(Ordering::Relaxed);
    let mut seen = moved();
    let period = limits.idle.unwrap_or(Duration::from_secs(86400 * 365));
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    let lifetime_end = limits
        .max_lifetime
        .map(|d| Instant::from_std(limits.started + d));
    let lifetime = tokio::time::sleep_until(
        lifetime_end.unwrap_or_else(|| Instant::now() + Duration::from_secs(86400 * 365)),
    );
    tokio::pin!(lifetime);
    let (mut up_done, mut down_done) = (false, false);
    let mut first_eof = None;
    loop {
        tokio::select! {
            r = &mut up, if !up_done => {
                if let Err(reason) = r { return reason; }
                up_done = true;
                first_eof.get_or_insert(EndReason::ClientClosed);
                guard.set_state(ConnState::Draining);
            }
            r = &mut down, if !down_done => {
                if let Err(reason) = r { return reason; }
                down_done = true;
                first_eof.get_or_insert(EndReason::UpstreamClosed);
                guard.set_state(ConnState::Draining);
            }
            _ = tick.tick(), if limits.idle.is_some() => {
                let now = moved();
                if now == seen {
                    return EndReason::IdleTimeout;
                }
                seen = now;
            }
            () = &mut lifetime, if lifetime_end.is_some() => return EndReason::MaxLifetime,
            () = shutdown.closing() => return EndReason::Shutdown,
        }
        if up_done && down_done {
            return first_eof.unwrap_or(EndReason::ClientClosed);
        }
    }
}

/// Copies until EOF, then shuts the writer down (half-close). Errors name
/// the side whose socket failed.
async fn copy_half<R, W>(
    reader: &mut R,
    writer: &mut W,
    read_failed: EndReason,
    write_failed: EndReason,
) -> Result<(), EndReason>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            // A TLS peer that closes without close_notify ends like EOF.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(_) => return Err(read_failed),
        };
        writer
            .write_all(&buf[..n])
            .await
            .map_err(|_| write_failed)?;
        writer.flush().await.map_err(|_| write_failed)?;
    }
    let _ = writer.shutdown().await;
    Ok(())
}
