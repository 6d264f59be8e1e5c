//! Our HTTP/1.1 server connection: the loop that owns one client
//! connection through its requests, written out as explicit phases —
//! waiting (keep-alive, no buffer held), reading the head (deadline from the
//! first byte, size-bounded), handling (the request's handler runs while
//! this task feeds it the body and watches for the client leaving), writing
//! the response (streamed frame by frame, chunked or by length), and then
//! keep-alive, close, or an upgrade to a tunnel. Parsing is `httparse`'s;
//! a read buffer exists only while a request is being read, so an idle
//! keep-alive connection holds no buffer at all, and after `PARK_AFTER`
//! idle a plain-TCP connection is handed back to be parked (no task either).

pub mod body;
pub mod head;
pub mod paced;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use http::{Method, Response, StatusCode, Version};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use self::body::Pump;
use self::head::{HeadError, ResponseFraming};
use super::body::{Body, SpliceFailed};
use super::error::{RequestEnd, respond};
use super::proxy::Handler;
use crate::config::HttpListener;
use crate::conn::{ConnGuard, ConnState, EndReason};
use crate::io::Prefixed;
use crate::shutdown::ShutdownSignal;

/// A client connection the HTTP/1 loop can serve.
pub trait ConnIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when a read would make progress, without lending a buffer.
    /// `false` when the stream cannot tell (TLS): then the caller reads.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>>;

    /// Can wait for its next request parked, without a task (`park`).
    fn parkable(&self) -> bool {
        false
    }

    /// Dropping it ends the stream as cleanly as shutting it down first
    /// (plain TCP: `close` sends the FIN); TLS must send close_notify.
    fn drop_is_clean_close(&self) -> bool {
        false
    }

    /// The plain TCP socket underneath, when bytes may be written to it
    /// directly (spliced response bodies), with `count_down` told of them.
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }

    /// Counts bytes written past the stream (through `tcp`) as sent.
    fn count_down(&self, _n: u64) {}
}

impl ConnIo for Prefixed<TcpStream> {
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.has_prefix() {
            return Poll::Ready(Ok(true));
        }
        self.get_ref().poll_read_ready(cx).map_ok(|()| true)
    }

    fn parkable(&self) -> bool {
        !self.has_prefix()
    }

    fn drop_is_clean_close(&self) -> bool {
        true
    }

    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.get_ref())
    }

    fn count_down(&self, n: u64) {
        Prefixed::count_down(self, n);
    }
}

impl ConnIo for crate::tls::ClientTls {
    fn poll_idle(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        Poll::Ready(Ok(false))
    }
}

/// A keep-alive connection idle for `PARK_AFTER` leaves its task and waits
/// parked (`http::park`) when its keep-alive deadline is at least twice that
/// further away: a long-idle connection then costs its socket and a few
/// words, not a task. (Short keep-alive deadlines stay exact in the task.)
pub const PARK_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// An idle keep-alive connection handed back to be parked: no request in
/// flight, nothing buffered.
pub struct Parked<S> {
    pub io: S,
    pub handler: Arc<Handler>,
    /// Requests served so far.
    pub served: u64,
    /// The keep-alive deadline for the next request.
    pub deadline: Instant,
}

/// A connection upgraded after a `101`, handed over to run its tunnel.
pub struct Upgrade<S> {
    pub tunnel: super::tunnel::Tunnel,
    /// Bytes the client sent right after its request.
    pub early: BytesMut,
    pub io: S,
}

/// How the HTTP/1 loop let go of its connection.
pub enum H1End<S> {
    End(EndReason),
    Park(Parked<S>),
    Upgrade(Box<Upgrade<S>>),
}

/// Serves requests on `io` until the connection ends (returns why) or
/// idles long enough to be parked. `resume`: the connection comes back
/// from parking with `served` requests served and this keep-alive deadline.
pub async fn serve<S: ConnIo>(
    mut io: S,
    handler: Arc<Handler>,
    cfg: Arc<HttpListener>,
    guard: &ConnGuard,
    shutdown: &ShutdownSignal,
    resume: Option<(u64, Instant)>,
) -> H1End<S> {
    let mut buf = BytesMut::new();
    let mut served: u64 = resume.map_or(0, |r| r.0);
    let mut resumed_deadline = resume.map(|r| r.1);
    let wait_timer = tokio::time::sleep_until(Instant::now() + cfg.keepalive_timeout);
    tokio::pin!(wait_timer);
    // Likewise one wait for the drain, registered once, not per request.
    let draining = shutdown.draining();
    tokio::pin!(draining);
    loop {
        // --- waiting: keep-alive (or the first request), no buffer held ---
        let wait_limit = if served == 0 {
            cfg.header_read_timeout
        } else {
            cfg.keepalive_timeout
        };
        // (One clock read per request for both deadlines.)
        let now = Instant::now();
        let first_read_deadline = resumed_deadline.take().unwrap_or(now + wait_limit);
        // Whether the wait below could tell readiness (TCP) or not (TLS:
        // the first read of the head then does the waiting).
        let mut waited = !buf.is_empty();
        if buf.is_empty() {
            let park_at = (served > 0 && io.parkable())
                .then(|| now + PARK_AFTER)
                .filter(|&t| t + 2 * PARK_AFTER <= first_read_deadline);
            // One timer for the connection's life, moved on for each wait:
            // a later deadline is an atomic store, where a new timer per
            // request would be an insertion into tokio's wheel and a removal.
            wait_timer
                .as_mut()
                .reset(park_at.unwrap_or(first_read_deadline));
            let ready = tokio::select! {
                biased;
                r = std::future::poll_fn(|cx| io.poll_idle(cx)) => Ok(r),
                () = wait_timer.as_mut() => Err(()),
                () = draining.as_mut() => return H1End::End(EndReason::Shutdown),
            };
            match ready {
                Err(_) if park_at.is_some() => {
                    return H1End::Park(Parked {
                        io,
                        handler,
                        served,
                        deadline: first_read_deadline,
                    });
                }
                Err(_) if served == 0 => return H1End::End(EndReason::ClientHeaderTimeout),
                Err(_) => return H1End::End(EndReason::IdleTimeout),
                Ok(Err(_)) => return H1End::End(EndReason::ClientReset),
                Ok(Ok(ready)) => waited = ready,
            }
        }

        // Boxed: a request's state (head reading, the exchange) is only
        // needed while it is in flight, and the connection's future is what
        // an idle keep-alive connection costs.
        let request = Box::pin(request(
            &mut io,
            &mut buf,
            first_read_deadline,
            waited,
            served,
            &handler,
            &cfg,
            guard.id(),
            shutdown,
        ));
        served += 1;
        let keep_alive = match request.await {
            Exchange::Done { keep_alive } => keep_alive,
            Exchange::End(reason) => return H1End::End(reason),
            Exchange::Upgrade(tunnel) => {
                guard.set_state(ConnState::Upgraded);
                if cfg.access_log {
                    guard.log_tunnel_end();
                }
                // The loop's state (and the handler) end here: the tunnel
                // runs on its own, after them (`tunnel::run_h1`).
                return H1End::Upgrade(Box::new(Upgrade {
                    tunnel,
                    early: std::mem::take(&mut buf),
                    io,
                }));
            }
        };
        if !keep_alive {
            if !io.drop_is_clean_close() {
                let _ = io.shutdown().await;
            }
            return H1End::End(EndReason::ClientClosed);
        }
        if buf.is_empty() {
            // Nothing pipelined: let the buffer go while the connection idles.
            buf = BytesMut::new();
        }
    }
}

/// One request: its head read (deadline from its first byte, size-bounded)
/// and parsed, then the exchange.
#[allow(clippy::too_many_arguments)]
async fn request<S: ConnIo>(
    io: &mut S,
    buf: &mut BytesMut,
    first_read_deadline: Instant,
    mut waited: bool,
    served: u64,
    handler: &Handler,
    cfg: &HttpListener,
    conn_id: u64,
    shutdown: &ShutdownSignal,
) -> Exchange {
    // --- reading the head: deadline from its first byte ---
    let mut head_deadline = None;
    let head_len = loop {
        // (A read may bring more than was reserved: the limit is checked
        // on the head itself as well as on the buffer.)
        if let Some(n) = head::head_end(buf).filter(|&n| n <= cfg.max_header_bytes) {
            break n;
        }
        if !buf.is_empty() && head_deadline.is_none() {
            head_deadline = Some(Instant::now() + cfg.header_read_timeout);
        }
        if buf.len() >= cfg.max_header_bytes {
            let line_done = buf.contains(&b'\n');
            let end = if !line_done && buf.len() > cfg.max_uri_bytes {
                RequestEnd::UriTooLong
            } else {
                RequestEnd::HeadersTooLarge
            };
            refuse(io, end, cfg).await;
            return Exchange::End(EndReason::ClientProtocolError);
        }
        let deadline = head_deadline.unwrap_or(first_read_deadline);
        // Most heads fit in 1 KiB; the buffer grows for larger ones.
        buf.reserve((cfg.max_header_bytes - buf.len()).min(if buf.is_empty() {
            1024
        } else {
            4096
        }));
        // (A connection caught mid-head at shutdown is ended by the
        // drain deadline, like any other busy connection.)
        let read = if waited {
            timeout_at(deadline, io.read_buf(buf)).await
        } else {
            waited = true;
            tokio::select! {
                r = timeout_at(deadline, io.read_buf(buf)) => r,
                () = shutdown.draining() => return Exchange::End(EndReason::Shutdown),
            }
        };
        match read {
            Err(_) if buf.is_empty() && served > 0 => return Exchange::End(EndReason::IdleTimeout),
            Err(_) if buf.is_empty() => return Exchange::End(EndReason::ClientHeaderTimeout),
            // Part of a head came, then nothing: 408, as HAProxy answers
            // (nothing of a response was sent yet), then the close.
            Err(_) => {
                refuse(io, RequestEnd::ClientHeaderTimeout, cfg).await;
                return Exchange::End(EndReason::ClientHeaderTimeout);
            }
            // Closed mid-head: the client left, it broke no rule.
            Ok(Ok(0)) => return Exchange::End(EndReason::ClientClosed),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Exchange::End(EndReason::ClientReset),
        }
    };
    let head_bytes = buf.split_to(head_len).freeze();
    let parsed = head::parse_request(&head_bytes, cfg.max_headers, cfg.max_uri_bytes);
    drop(head_bytes);
    let head = match parsed {
        Ok(h) => h,
        Err(e) => {
            let end = match e {
                HeadError::TooLarge => RequestEnd::HeadersTooLarge,
                HeadError::UriTooLong => RequestEnd::UriTooLong,
                HeadError::Bad(why) => {
                    tracing::debug!(conn = conn_id, why, "bad request head");
                    RequestEnd::BadRequest
                }
            };
            refuse(io, end, cfg).await;
            return Exchange::End(EndReason::ClientProtocolError);
        }
    };
    exchange(io, buf, head, handler, cfg, shutdown).await
}

/// How one request/response exchange ended.
enum Exchange {
    /// The response was written; the connection may serve another request.
    Done { keep_alive: bool },
    /// The connection ends.
    End(EndReason),
    /// A 101 was written: the connection becomes a tunnel.
    Upgrade(super::tunnel::Tunnel),
}

/// Handling and writing: the handler runs while this task feeds it the
/// request body and watches for the client leaving; then the response is
/// written.
async fn exchange<S: ConnIo>(
    io: &mut S,
    buf: &mut BytesMut,
    head: head::Head,
    handler: &Handler,
    cfg: &HttpListener,
    shutdown: &ShutdownSignal,
) -> Exchange {
    let version = head.request.version();
    let head_request = head.request.method() == Method::HEAD;
    let mut keep_alive = head.keep_alive;
    let (req_body, mut pump) = Pump::new(head.framing, head.expect_continue, cfg.max_header_bytes);
    let request = head.request.map(|()| req_body);
    let mut handling = Box::pin(handler.handle(request));
    let mut client_gone: Option<EndReason> = None;
    let resp = loop {
        let client_side = async {
            if pump.active() {
                Err(pump.step(io, buf).await)
            } else if client_gone.is_none() {
                Ok(watch_client(io, buf, cfg.max_header_bytes).await)
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            biased;
            resp = &mut handling => break resp,
            event = client_side => match event {
                // The body moved, or the client left mid-body (the
                // handler sees the body fail and answers).
                Err(Ok(())) => {}
                Err(Err(reason)) => client_gone = Some(reason),
                // Gone while its request was handled: dropping the
                // handler cancels the upstream request.
                Ok(gone) => return Exchange::End(gone),
            },
        }
    };
    if let Some(reason) = client_gone {
        return Exchange::End(reason);
    }
    keep_alive &= pump.complete();
    keep_alive &= !shutdown.is_draining();
    let status = resp.status();
    let written = write_response(
        io,
        resp,
        head_request,
        version,
        &mut keep_alive,
        cfg.send_timeout,
    );
    if let Err(reason) = written.await {
        return Exchange::End(reason);
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(tunnel) = handler.take_tunnel() {
            return Exchange::Upgrade(tunnel);
        }
    }
    Exchange::Done { keep_alive }
}

/// While a request without a body is being handled: reads what the client
/// sends next (pipelined requests stay in `buf`, up to a head's worth) and
/// returns when the client leaves.
async fn watch_client<S: ConnIo>(io: &mut S, buf: &mut BytesMut, limit: usize) -> EndReason {
    if buf.len() >= limit {
        return std::future::pending().await;
    }
    // Usually nothing comes while a response is awaited: wait for that
    // without a buffer.
    if std::future::poll_fn(|cx| io.poll_idle(cx)).await.is_err() {
        return EndReason::ClientReset;
    }
    buf.reserve((limit - buf.len()).min(4096));
    loop {
        match io.read_buf(buf).await {
            Ok(0) => return EndReason::ClientClosed,
            Err(_) => return EndReason::ClientReset,
            Ok(_) if buf.len() >= limit => return std::future::pending().await,
            Ok(_) => {}
        }
    }
}

/// Answers a request refused before routing, then the connection closes.
async fn refuse<S: ConnIo>(io: &mut S, end: RequestEnd, cfg: &HttpListener) {
    let resp = respond(end, cfg.server_header.as_deref(), false);
    let mut keep_alive = false;
    let limit = cfg.send_timeout;
    if write_response(io, resp, false, Version::HTTP_11, &mut keep_alive, limit)
        .await
        .is_ok()
    {
        let _ = timeout_at(Instant::now() + limit, io.shutdown()).await;
    }
}

/// Polls a future once, without waiting.
fn poll_now<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(f).poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Writes a response, streaming its body frame by frame (each frame is
/// written, and flushed, before the next is read: memory stays at one frame).
/// After the head, the rest of a large upstream body may instead move by
/// splice(2), never entering the process (`UpstreamBody::splice_to`).
/// Every write must make progress within `send_limit`, or the response
/// ends with `client_send_timeout` (`paced`).
async fn write_response<S: ConnIo>(
    io: &mut S,
    resp: Response<Body>,
    head_request: bool,
    version: Version,
    keep_alive: &mut bool,
    send_limit: std::time::Duration,
) -> Result<(), EndReason> {
    let (parts, mut body) = resp.into_parts();
    let mut out = paced::Paced::new(io, send_limit);
    let written = write_parts(
        &mut out,
        parts,
        &mut body,
        head_request,
        version,
        keep_alive,
    )
    .await;
    if written == Err(EndReason::ClientSendTimeout) {
        body.end_as(RequestEnd::ClientSendTimeout);
    }
    written
}

async fn write_parts<S: ConnIo>(
    io: &mut paced::Paced<'_, S>,
    mut parts: http::response::Parts,
    body: &mut Body,
    head_request: bool,
    version: Version,
    keep_alive: &mut bool,
) -> Result<(), EndReason> {
    let exact = body.size_hint().exact();
    let mut out = Vec::with_capacity(256);
    let framing = head::encode_response(
        &mut out,
        parts.status,
        &mut parts.headers,
        exact,
        head_request,
        version,
        keep_alive,
    );
    let write_err = |e: io::Error| match e.kind() {
        io::ErrorKind::TimedOut => EndReason::ClientSendTimeout,
        _ => EndReason::ClientReset,
    };
    if framing == ResponseFraming::None {
        io.write_all(&out).await.map_err(write_err)?;
        return io.flush().await.map_err(write_err);
    }
    let mut head = Some(out);
    loop {
        // After the head, a large upstream body may move by splice(2).
        let conn = io.get_ref();
        if let (None, ResponseFraming::Length, Body::Upstream(upstream), Some(tcp)) =
            (&head, framing, &mut *body, conn.tcp())
        {
            let limit = io.limit();
            let spliced = upstream.splice_to(tcp, limit, |n| conn.count_down(n)).await;
            match spliced {
                None => {}
                Some(Ok(())) => return Ok(()),
                Some(Err(SpliceFailed::Client)) => return Err(EndReason::ClientReset),
                Some(Err(SpliceFailed::ClientSendTimeout)) => {
                    return Err(EndReason::ClientSendTimeout);
                }
                Some(Err(SpliceFailed::Upstream)) => {
                    *keep_alive = false;
                    return Err(body.failure());
                }
            }
        }
        // The first frame, when it is already there, leaves with the head.
        let frame = match head.as_ref().map(|_| poll_now(&mut body.frame())) {
            Some(Some(f)) => f,
            Some(None) => {
                if let Some(h) = head.take() {
                    io.write_all(&h).await.map_err(write_err)?;
                    io.flush().await.map_err(write_err)?;
                }
                continue;
            }
            None => body.frame().await,
        };
        let prefix = head.take().unwrap_or_default();
        match frame {
            None => {
                let mut last: &[u8] = b"";
                if framing == ResponseFraming::Chunked {
                    last = b"0\r\n\r\n";
                }
                let mut out = bytes::Bytes::from(prefix).chain(last);
                io.write_all_buf(&mut out).await.map_err(write_err)?;
                return io.flush().await.map_err(write_err);
            }
            Some(Err(e)) => {
                // The upstream side failed mid-body: the client must see a
                // cut response, never a complete-looking one.
                tracing::debug!(error = %e, "response body failed");
                *keep_alive = false;
                if !prefix.is_empty() {
                    let _ = io.write_all(&prefix).await;
                }
                return Err(body.failure());
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        if !prefix.is_empty() {
                            io.write_all(&prefix).await.map_err(write_err)?;
                        }
                        continue;
                    }
                    if framing == ResponseFraming::Chunked {
                        let mut size = prefix;
                        size.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                        let mut out = bytes::Bytes::from(size).chain(data).chain(&b"\r\n"[..]);
                        io.write_all_watching(body, &mut out).await
                    } else {
                        let mut out = bytes::Bytes::from(prefix).chain(data);
                        io.write_all_watching(body, &mut out).await
                    }
                    .map_err(write_err)?;
                }
                Err(frame) => {
                    if let (Ok(trailers), ResponseFraming::Chunked) =
                        (frame.into_trailers(), framing)
                    {
                        let mut out = prefix;
                        out.extend_from_slice(b"0\r\n");
                        head::write_fields(&mut out, &trailers);
                        out.extend_from_slice(b"\r\n");
                        io.write_all(&out).await.map_err(write_err)?;
                        io.flush().await.map_err(write_err)?;
                        // Trailers end the message; anything after is ignored.
                        return Ok(());
                    }
                }
            },
        }
    }
}

/// The client connection after an upgrade: bytes already read (sent right
/// after the request) come first.
pub struct Replay<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Replay<S> {
    pub fn new(prefix: BytesMut, inner: S) -> Replay<S> {
        Replay { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
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
