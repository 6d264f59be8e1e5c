//! L4 (TCP) proxying: the task that owns one accepted connection from accept
//! to close. It walks the connection through its states — PROXY header,
//! routing, connecting, established/draining — with a deadline on every wait,
//! and returns exactly one `EndReason`. Both sockets are closed before the
//! table entry (the `ConnGuard`) is dropped.

pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::{BalanceConfig, HashKey};
use crate::config::{ProxyVersion, TlsMode};
use crate::conn::{ConnGuard, ConnState, EndReason};
use crate::http::Plane;
use crate::proxy_protocol::{self, Framing, ProxyHeader, Tlv};
use crate::pump;
use crate::routing::{self, RouteInput};
use crate::runtime::{ListenerRt, Runtime, Snapshot};
use crate::upstream::UpstreamError;
use crate::upstream::balance;
use crate::upstream::cluster::{Admitted, Cluster, Endpoint, backoff};
use crate::upstream::endpoint::{InFlight, Outcome};

/// Owns `client` until it is closed, then records the end in the table.
/// `listener` is the listener's place in `snap`, the snapshot the
/// connection keeps.
pub async fn serve(
    client: TcpStream,
    mut guard: ConnGuard,
    snap: Arc<Snapshot>,
    listener: u32,
    plane: Arc<Plane>,
) {
    let Some(l) = snap.listeners.get(listener as usize) else {
        return guard.finish(EndReason::Internal);
    };
    match run(client, &mut guard, l, &snap, &plane.rt).await {
        Step::End(reason) => guard.finish(reason),
        Step::Http(h) => {
            // Boxed: the HTTP connection's state is not part of an L4
            // connection's task. (An idle HTTP connection leaves this task
            // for good when it is parked; an upgraded one, for a task of
            // its own.) It reads the newest snapshot per request.
            let listener = l.clone();
            drop(snap);
            let served = Box::pin(serve_http(*h, &mut guard, &listener, &plane)).await;
            crate::http::park::settle(served, guard, listener, plane);
        }
    }
}

/// What `run` ends with: a reason, or an HTTP connection to serve.
enum Step {
    End(EndReason),
    Http(Box<HttpHandoff>),
}

struct HttpHandoff {
    client: TcpStream,
    early: Vec<u8>,
    info: crate::http::ConnInfo,
    /// Set on `https` listeners: the handshake's deadline.
    tls_deadline: Option<tokio::time::Instant>,
}

async fn serve_http(
    h: HttpHandoff,
    guard: &mut ConnGuard,
    listener: &Arc<ListenerRt>,
    plane: &Arc<Plane>,
) -> crate::http::Served<crate::io::Prefixed<TcpStream>> {
    match h.tls_deadline {
        // Boxed: TLS state must not enlarge plaintext connections' tasks.
        Some(deadline) => crate::http::Served::End(
            Box::pin(serve_https(
                h.client, h.early, h.info, deadline, guard, listener, plane,
            ))
            .await,
        ),
        None => crate::http::serve(h.client, h.early, h.info, guard, listener, plane).await,
    }
}

async fn run(
    client: TcpStream,
    guard: &mut ConnGuard,
    listener: &Arc<ListenerRt>,
    snap: &Arc<Snapshot>,
    rt: &Arc<Runtime>,
) -> Step {
    let (peer, _) = guard.addresses();
    let Some(local) = listener.local.or_else(|| client.local_addr().ok()) else {
        return Step::End(EndReason::ClientReset);
    };

    // --- PROXY header -------------------------------------------------
    let mut client_addr = peer;
    let mut original_dst = local;
    let mut tlvs: Vec<Tlv> = Vec::new();
    let mut early_bytes: Vec<u8> = Vec::new();
    let mut refuse_proxy_signature = false;
    if let Some(ap) = &listener.config.accept_proxy {
        let trusted = ap.trusted.iter().any(|n| n.contains(&peer.ip()));
        if !trusted && ap.required {
            return Step::End(EndReason::ProxyHeaderUntrusted);
        }
        if trusted {
            guard.set_state(ConnState::ReadingProxyHeader);
            let read = tokio::select! {
                r = timeout(ap.timeout, read_proxy_header(&client, &mut early_bytes, ap.required)) => r,
                _ = rt.shutdown.closing() => return Step::End(EndReason::Shutdown),
            };
            match read {
                Err(_elapsed) if ap.required || proxy_protocol::looks_like_header(&early_bytes) => {
                    return Step::End(EndReason::ProxyHeaderTimeout);
                }
                Err(_elapsed) => {} // optional header and none came: a direct client
                Ok(Err(reason)) => return Step::End(reason),
                Ok(Ok(None)) => {}
                Ok(Ok(Some(header))) => {
                    if let Some((src, dst)) = header.addresses {
                        client_addr = src;
                        original_dst = dst;
                    }
                    tlvs = header.tlvs;
                    guard.set_client(client_addr, tlvs.clone());
                }
            }
        } else {
            refuse_proxy_signature = true;
        }
    }
    if let Some(limit) = snap.config.limits.max_connections_per_ip {
        if let Err(reason) = guard.claim_ip(client_addr.ip(), limit) {
            return Step::End(reason);
        }
    }

    // --- TLS listeners: the ClientHello, for routing by SNI ---------------
    let mut hello = None;
    let mut tls_deadline = tokio::time::Instant::now();
    if let Some(tls_cfg) = &listener.config.tls {
        guard.set_state(ConnState::Handshaking);
        tls_deadline += tls_cfg.handshake_timeout;
        let read = tokio::select! {
            // Boxed, like the hello: only TLS connections pay for them.
            r = Box::pin(tokio::time::timeout_at(tls_deadline, tls::read_hello(&client, &mut early_bytes))) => r,
            _ = rt.shutdown.closing() => return Step::End(EndReason::Shutdown),
        };
        match read {
            Err(_elapsed) => return Step::End(EndReason::TlsHelloTimeout),
            Ok(Err(reason)) => return Step::End(reason),
            Ok(Ok(h)) => {
                if let Some(name) = &h.sni {
                    guard.set_sni(name);
                }
                hello = Some(Box::new(h));
            }
        }
    }

    // --- HTTP listeners: routing happens per request ---------------------
    if listener.config.http.is_some() {
        let info = crate::http::ConnInfo {
            client: client_addr,
            peer,
            local,
            tls: None,
        };
        if let Some(h) = &hello {
            if let Some(reason) = tls::certificate_missing(snap, h) {
                return Step::End(reason);
            }
        }
        // The HTTP connection goes on in this task, in a future of its own
        // (boxed in `serve`): this one is sized for the L4 states, which
        // HTTP never uses.
        return Step::Http(Box::new(HttpHandoff {
            client,
            early: early_bytes,
            info,
            tls_deadline: hello.is_some().then_some(tls_deadline),
        }));
    }

    // --- routing ------------------------------------------------------
    guard.set_state(ConnState::Routing);
    let sni = hello.as_ref().and_then(|h| h.sni.as_deref());
    let input = RouteInput {
        listener: listener.index,
        local,
        client: client_addr,
        sni,
        identity: None,
    };
    let Some(route) = routing::select(&snap.routes, &input) else {
        if hello.is_some() && sni.is_none() {
            return Step::End(EndReason::TlsNoSni);
        }
        return Step::End(EndReason::NoRoute);
    };
    if let Err(reason) = guard.claim_route(&route.stats, route.config.policy.max_connections) {
        return Step::End(reason);
    }
    // IP rules and connection-rate limits, on the real client.
    if !route.filters.is_empty() {
        if let Err(reason) = route.filters.connection(client_addr.ip()) {
            return Step::End(reason);
        }
    }
    let Some(forward) = route.config.action.forward() else {
        return Step::End(EndReason::NoRoute);
    };
    let policy = &route.config.policy;
    if let Some(h) = &hello {
        if route.config.tls_mode != TlsMode::Passthrough {
            if let Some(reason) = tls::certificate_missing(snap, h) {
                return Step::End(reason);
            }
            return Step::End(
                Box::pin(terminate(
                    client,
                    early_bytes,
                    client_addr,
                    original_dst,
                    tls_deadline,
                    route,
                    guard,
                    listener,
                    snap,
                    rt,
                ))
                .await,
            );
        }
    }

    // --- connecting ---------------------------------------------------
    guard.set_state(ConnState::Connecting);
    let cluster = &snap.clusters[forward.clusters()[route.pick_cluster()]];
    let started = Instant::now();
    let (upstream, endpoint, _load) = tokio::select! {
        // Boxed: the connect future is large and needed only in this state.
        r = Box::pin(timeout(policy.connect_timeout, connect(cluster, client_addr.ip()))) => match r {
            Err(_elapsed) => return Step::End(EndReason::UpstreamConnectTimeout),
            Ok(Err(e)) => return Step::End(e.into()),
            // (Only the address is kept: the task stays small.)
            Ok(Ok((s, e, load))) => (s, e.addr, load),
        },
        reason = client_gone(&client) => return Step::End(reason),
        _ = route.closing.closing() => return Step::End(route.closing.end_reason()),
    };
    route.stats.connect_latency.observe(started.elapsed());
    guard.set_upstream(endpoint);
    guard.set_upstream_fd(std::os::fd::AsRawFd::as_raw_fd(&upstream));

    // Bytes owed to the upstream before anything else the client sends;
    // the client's early bytes count as client bytes, our header does not.
    guard.entry().bytes_up.fetch_add(
        early_bytes.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let first_up = match forward.send_proxy {
        None => early_bytes,
        Some(version) => {
            let mut header = match version {
                ProxyVersion::V1 => proxy_protocol::encode_v1(client_addr, original_dst),
                ProxyVersion::V2 => {
                    let mut passed: Vec<Tlv> = if forward.pass_tlvs { tlvs } else { Vec::new() };
                    if let Some(h) = &hello {
                        passed.extend(tls_tlvs(
                            h.sni.as_deref(),
                            h.alpn.first().map(Vec::as_slice),
                        ));
                    }
                    proxy_protocol::encode_v2(client_addr, original_dst, &passed)
                }
            };
            header.extend_from_slice(&early_bytes);
            header
        }
    };

    // --- established / draining ---------------------------------------
    guard.set_state(ConnState::Established);
    let limits = pump::Deadlines {
        idle: policy.idle_timeout,
        max_lifetime: policy.max_lifetime,
        started: guard.entry().started(),
        park_after: None,
    };
    let parts = pump::Parts {
        client: &client,
        upstream: &upstream,
        first_up,
        refuse_proxy_signature,
    };
    match pump::run_parking(parts, guard, limits, &route.closing).await {
        pump::Stopped::Ended(reason) => Step::End(route.closing.blame(reason)),
        pump::Stopped::Idle => Step::End(EndReason::Internal), // (never: no park_after)
    }
}

/// PROXY v2 TLVs describing a TLS connection: the server name
/// (`PP2_TYPE_AUTHORITY`) and the application protocol (`PP2_TYPE_ALPN`).
fn tls_tlvs(sni: Option<&str>, alpn: Option<&[u8]>) -> Vec<Tlv> {
    let mut out = Vec::new();
    if let Some(alpn) = alpn {
        out.push(Tlv {
            kind: proxy_protocol::PP2_TYPE_ALPN,
            value: alpn.to_vec(),
        });
    }
    if let Some(sni) = sni {
        out.push(Tlv {
            kind: proxy_protocol::PP2_TYPE_AUTHORITY,
            value: sni.as_bytes().to_vec(),
        });
    }
    out
}

/// An `https` listener: the handshake, then HTTP (HTTP/2 when ALPN says so).
async fn serve_https(
    client: TcpStream,
    early: Vec<u8>,
    mut info: crate::http::ConnInfo,
    deadline: tokio::time::Instant,
    guard: &mut ConnGuard,
    listener: &Arc<ListenerRt>,
    plane: &Arc<Plane>,
) -> EndReason {
    let stream = match tls::accept(client, early, guard, listener, &plane.rt, deadline).await {
        Ok(s) => s,
        Err(reason) => return reason,
    };
    if stream.get_ref().1.alpn_protocol() == Some(crate::tls::certs::ACME_TLS_ALPN) {
        // A TLS-ALPN-01 validation: the handshake was the whole answer.
        let mut stream = stream;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        return EndReason::ClientClosed;
    }
    info.tls = Some(tls::tls_info(&stream));
    let h2 = tls::negotiated_h2(&stream);
    guard.set_state(ConnState::Established);
    crate::http::serve_io(stream, h2, info, guard, listener, plane)
        .await
        .finish(guard)
        .await
}

/// A `tls` listener's route that terminates: handshake with the client,
/// connect (and for re-encryption, a verified handshake with the target),
/// then relay the plaintext.
#[allow(clippy::too_many_arguments)]
async fn terminate(
    client: TcpStream,
    early: Vec<u8>,
    client_addr: SocketAddr,
    original_dst: SocketAddr,
    deadline: tokio::time::Instant,
    route: &routing::Route,
    guard: &mut ConnGuard,
    listener: &Arc<ListenerRt>,
    snap: &Snapshot,
    rt: &Arc<Runtime>,
) -> EndReason {
    let Some(forward) = route.config.action.forward() else {
        return EndReason::NoRoute;
    };
    let upstream_tls = &snap.upstream_tls[route.index];
    let policy = &route.config.policy;
    let stream = match tls::accept(client, early, guard, listener, rt, deadline).await {
        Ok(s) => s,
        Err(reason) => return reason,
    };
    let info = tls::tls_info(&stream);
    if !route.config.matcher.client_identities.is_empty()
        && !info
            .identity
            .as_ref()
            .is_some_and(|id| route.config.matcher.client_identities.contains(id))
    {
        return EndReason::NoRoute;
    }
    let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);

    guard.set_state(ConnState::Connecting);
    let cluster = &snap.clusters[forward.clusters()[route.pick_cluster()]];
    let started = Instant::now();
    let connect_deadline = tokio::time::Instant::now() + policy.connect_timeout;
    let (mut upstream, endpoint, _load) = tokio::select! {
        r = Box::pin(tokio::time::timeout_at(connect_deadline, connect(cluster, client_addr.ip()))) => match r {
            Err(_elapsed) => return EndReason::UpstreamConnectTimeout,
            Ok(Err(e)) => return e.into(),
            Ok(Ok(s)) => s,
        },
        _ = route.closing.closing() => return route.closing.end_reason(),
    };
    guard.set_upstream(endpoint.addr);
    guard.set_upstream_fd(std::os::fd::AsRawFd::as_raw_fd(&upstream));
    if let Some(version) = forward.send_proxy {
        let header = match version {
            ProxyVersion::V1 => proxy_protocol::encode_v1(client_addr, original_dst),
            ProxyVersion::V2 => proxy_protocol::encode_v2(
                client_addr,
                original_dst,
                &tls_tlvs(info.sni.as_deref(), alpn.as_deref()),
            ),
        };
        use tokio::io::AsyncWriteExt as _;
        if upstream.write_all(&header).await.is_err() {
            return EndReason::UpstreamReset;
        }
    }
    let limits = tls::RelayLimits {
        idle: policy.idle_timeout,
        max_lifetime: policy.max_lifetime,
        started: guard.entry().started(),
    };
    match (
        route.config.tls_mode,
        upstream_tls,
        &route.config.upstream.tls,
    ) {
        (TlsMode::TerminateAndReencrypt, Some(config), Some(up)) => {
            let upstream = tokio::select! {
                r = tls::connect_upstream(upstream, config.clone(), up, &endpoint.target, connect_deadline) => match r {
                    Ok(s) => s,
                    Err(reason) => return reason,
                },
                _ = route.closing.closing() => return route.closing.end_reason(),
            };
            route.stats.connect_latency.observe(started.elapsed());
            guard.set_state(ConnState::Established);
            let end = tls::relay(stream, upstream, guard, limits, &route.closing).await;
            route.closing.blame(end)
        }
        (TlsMode::TerminateAndReencrypt, _, _) => EndReason::Internal,
        _ => {
            route.stats.connect_latency.observe(started.elapsed());
            guard.set_state(ConnState::Established);
            let end = tls::relay(stream, upstream, guard, limits, &route.closing).await;
            route.closing.blame(end)
        }
    }
}

/// Reads a PROXY header into `buf` (bounded by `MAX_V2_LEN`). On success the
/// header bytes are removed from `buf` and what follows them stays there.
/// `Ok(None)`: no header and none was required (`buf` holds the first bytes).
async fn read_proxy_header(
    client: &TcpStream,
    buf: &mut Vec<u8>,
    required: bool,
) -> Result<Option<ProxyHeader>, EndReason> {
    loop {
        match proxy_protocol::frame(buf) {
            Framing::Complete(len) => {
                let (header, _) =
                    proxy_protocol::decode(buf).map_err(|_| EndReason::ProxyHeaderInvalid)?;
                buf.drain(..len);
                return Ok(Some(header));
            }
            Framing::NotProxy if !required => return Ok(None),
            Framing::NotProxy | Framing::Invalid(_) => return Err(EndReason::ProxyHeaderInvalid),
            Framing::Incomplete => {}
        }
        match read_more(client, buf, proxy_protocol::MAX_V2_LEN).await? {
            0 if buf.is_empty() => return Err(EndReason::ClientClosed),
            0 => return Err(EndReason::ProxyHeaderInvalid),
            _ => {}
        }
    }
}

/// Reads what the client has sent onto the end of `buf`, keeping `buf` at
/// most `max` bytes (at least one more is always read). `Ok(0)` is EOF.
/// Reads straight into `buf`: an array here would be carried by every
/// connection task for its whole life.
pub(crate) async fn read_more(
    client: &TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<usize, EndReason> {
    let room = max.saturating_sub(buf.len()).max(1);
    loop {
        client
            .readable()
            .await
            .map_err(|_| EndReason::ClientReset)?;
        let filled = buf.len();
        buf.resize(filled + room, 0);
        let read = client.try_read(&mut buf[filled..]);
        buf.truncate(filled + read.as_ref().map_or(0, |n| *n));
        match read {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(EndReason::ClientReset),
        }
    }
}

/// A connection to an endpoint of the cluster, within its cap on
/// connections in flight (the caller bounds the wait). A failed connect
/// counts against the endpoint (passive health) and goes to another one
/// within the cluster's attempts and retry budget (nothing was sent).
/// Also returns the connection's count in the endpoint's and the
/// cluster's load, to hold while it lives.
async fn connect(
    cluster: &Arc<Cluster>,
    client: std::net::IpAddr,
) -> Result<(TcpStream, Endpoint, (InFlight, Option<Admitted>)), UpstreamError> {
    let admitted = cluster.admit()?;
    let key = match &cluster.config.policy.balance {
        // (The client's address is the only key a connection has.)
        BalanceConfig::Hash(HashKey::ClientIp) => Some(match client {
            std::net::IpAddr::V4(v4) => balance::hash_key(&v4.octets()),
            std::net::IpAddr::V6(v6) => balance::hash_key(&v6.octets()),
        }),
        _ => None,
    };
    let retries = &cluster.config.policy.retries;
    let mut tried = Vec::new();
    let mut _retry = None;
    loop {
        let (endpoint, state) = cluster.pick(key, &tried).await?;
        let load = state.start();
        match crate::upstream::connect::tcp(endpoint.addr).await {
            Ok(stream) => {
                cluster.report(&state, Outcome::Success);
                return Ok((stream, endpoint, (load, admitted)));
            }
            Err(e) => {
                cluster.report(&state, Outcome::Failure);
                tried.push(endpoint.addr);
                if tried.len() >= retries.attempts as usize {
                    return Err(e);
                }
                _retry = None; // (the last retry ended: out of the budget)
                let Some(token) = cluster.retry_token() else {
                    return Err(e);
                };
                _retry = Some(token);
                tokio::time::sleep(backoff(retries.backoff, tried.len() as u32)).await;
            }
        }
    }
}

/// Resolves when the client closes or resets before the upstream is ready.
/// If the client has sent data, its EOF cannot be seen without consuming
/// that data, so this then waits for the connect deadline instead.
async fn client_gone(client: &TcpStream) -> EndReason {
    std::future::poll_fn(|cx| {
        let mut probe = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut probe);
        match std::task::ready!(client.poll_peek(cx, &mut probe)) {
            Ok(0) => std::task::Poll::Ready(EndReason::ClientClosed),
            // Data is waiting: its EOF cannot be seen without reading it.
            Ok(_) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(EndReason::ClientReset),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::test_runtime;

    /// The task of an idle connection is most of its memory: keep the
    /// future small (no arrays held across awaits, big one-off futures boxed).
    #[tokio::test]
    async fn connection_task_stays_small() {
        let (rt, listener) = test_runtime();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (stream, peer) = l.accept().await.unwrap();
        let guard = rt.table.register(listener.name.clone(), peer);
        let fut = serve(
            stream,
            guard,
            rt.snapshot(),
            listener.index as u32,
            Plane::new(rt.clone()),
        );
        let size = std::mem::size_of_val(&fut);
        eprintln!("connection task future: {size} bytes");
        assert!(size <= 1536, "connection task future is {size} bytes");
    }
}
