//! Our HTTP/2 server on one client connection, on the `h2` crate (framing,
//! HPACK, flow control, stream states). It owns the connection and its
//! streams: each stream (its request's handler, then the response being
//! sent) is a future in a set that the connection's future polls along with
//! the connection itself. No task per stream: no spawn, no scheduling round
//! through the runtime, and the connection's end drops what is left of its
//! streams, which cancels their upstream requests. (With the `send-batch`
//! feature, the upstream request heads its streams write in one poll go
//! out together, at its end or with the scheduler round's:
//! `http::pool::send_batch`.) Its deadlines: the
//! handshake within the header read timeout; without an open stream for
//! the keep-alive timeout, GOAWAY (`NO_ERROR`) and the close.
//!
//! A stream's rules: a client's RST_STREAM ends it at once, whether its
//! handler is still waiting for the upstream or its body is being sent; a
//! response body goes out one frame at a time, each sent only when the
//! stream has send capacity again (so at most one frame per stream waits
//! beyond the client's window); connection-specific headers never leave;
//! a response without `Date` gets one. An extended CONNECT (RFC 8441,
//! WebSocket over HTTP/2) goes upstream as an HTTP/1.1 upgrade, and after
//! its `101` the stream itself, as a byte stream (`StreamIo`), is the client
//! side of the same tunnel an HTTP/1.1 upgrade runs (`tunnel::run`).

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use ::h2::ext::Protocol;
use ::h2::server::{Connection, Handshake, SendResponse};
use ::h2::{Reason, RecvStream, SendStream};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};

use super::body::{Body, BodyError, ReqBody, wait_watching};
use super::error::RequestEnd;
use super::headers;
use super::proxy::{ExtendedConnect, Handler};
use super::tunnel::Tunnel;
use crate::config::HttpListener;
use crate::conn::EndReason;

/// A stream's future: its handler, then its response.
type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

enum State<S> {
    /// Until the client's preface and SETTINGS, under the listener's
    /// header read timeout.
    Handshaking(Handshake<S, Bytes>),
    Serving(Connection<S, Bytes>),
}

/// What the connection's timer stands for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// The handshake's deadline.
    Handshake,
    /// Streams are open: no deadline (the connection's idle backstop applies).
    Off,
    /// No stream open since this deadline was set: the keep-alive timeout.
    KeepAlive,
    /// The keep-alive timeout fired and GOAWAY is on its way: the
    /// connection gets one more header read timeout to close.
    Closing,
}

/// One HTTP/2 server connection and its streams, polled together. It ends
/// when the connection does: the client closed it, it failed, or it was
/// shut down gracefully (GOAWAY) and its last stream finished.
pub struct Server<S> {
    state: State<S>,
    handler: Arc<Handler>,
    streams: FuturesUnordered<StreamFuture>,
    /// The handshake's deadline, then the keep-alive deadline whenever no
    /// stream is open (one timer for the connection's life, moved on).
    timer: Pin<Box<tokio::time::Sleep>>,
    timer_is: Timer,
    /// The waker the timer holds (polled at every wake-up while no stream
    /// is open: with the same waker, a poll is one atomic read).
    timer_waker: Option<std::task::Waker>,
    keepalive: Duration,
    close_grace: Duration,
    /// Asked to shut down while still handshaking.
    close_pending: bool,
}

impl<S> Server<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    pub fn new(io: S, handler: Arc<Handler>, cfg: &HttpListener) -> Server<S> {
        let mut builder = ::h2::server::Builder::new();
        builder
            .max_concurrent_streams(cfg.max_concurrent_streams)
            .initial_window_size(cfg.h2_stream_window)
            .initial_connection_window_size(cfg.h2_connection_window)
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
            .max_frame_size(16 * 1024)
            // What waits to be sent on the whole connection, beyond the
            // client's windows (hyper's default).
            .max_send_buffer_size(400 * 1024)
            // Streams a client resets before we accept them, and streams we
            // reset for its errors, are bounded (rapid-reset defense).
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(Some(1024))
            // Extended CONNECT (RFC 8441): WebSocket over HTTP/2, on
            // routes that allow upgrades.
            .enable_connect_protocol();
        Server {
            state: State::Handshaking(builder.handshake(io)),
            handler,
            streams: FuturesUnordered::new(),
            timer: Box::pin(tokio::time::sleep(cfg.header_read_timeout)),
            timer_is: Timer::Handshake,
            timer_waker: None,
            keepalive: cfg.keepalive_timeout,
            close_grace: cfg.header_read_timeout,
            close_pending: false,
        }
    }

    /// Sends GOAWAY: streams already open finish, no new one starts, and
    /// the connection ends after the last.
    pub fn graceful_shutdown(&mut self) {
        match &mut self.state {
            State::Handshaking(_) => self.close_pending = true,
            State::Serving(conn) => conn.graceful_shutdown(),
        }
    }
}

impl<S> Future for Server<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    type Output = Result<(), Ended>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        let conn = loop {
            match &mut me.state {
                State::Handshaking(hs) => {
                    let mut conn = match Pin::new(hs).poll(cx) {
                        Poll::Ready(conn) => conn.map_err(Ended::Error)?,
                        Poll::Pending => {
                            ready!(me.timer.as_mut().poll(cx));
                            return Poll::Ready(Err(Ended::HandshakeTimeout));
                        }
                    };
                    if me.close_pending {
                        conn.graceful_shutdown();
                    }
                    me.timer_is = Timer::Off;
                    me.state = State::Serving(conn);
                }
                State::Serving(conn) => break conn,
            }
        };
        // Upstream request heads our streams write in this poll go out
        // together (see `send_batch`).
        #[cfg(feature = "send-batch")]
        let _batch = super::pool::send_batch::Scope::enter();
        loop {
            // The streams first: what they queue, the connection's poll
            // below writes out in the same turn.
            while let Poll::Ready(Some(())) = me.streams.poll_next_unpin(cx) {}
            let mut accepted = false;
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        me.streams
                            .push(Box::pin(stream(me.handler.clone(), req, respond)));
                        accepted = true;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Ended::Error(e))),
                    // Closed: whatever is left of its streams can send nothing more.
                    Poll::Ready(None) if me.timer_is == Timer::Closing => {
                        return Poll::Ready(Err(Ended::KeepAliveTimeout));
                    }
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            #[cfg(feature = "send-batch")]
            let accepted = accepted || super::pool::send_batch::flush_scope() > 0;
            if accepted {
                continue;
            }
            // Keep-alive: a connection without streams for the keep-alive
            // timeout gets GOAWAY (NO_ERROR: a request racing it is one the
            // client may retry) and is closed.
            match me.timer_is {
                Timer::Off | Timer::KeepAlive if !me.streams.is_empty() => {
                    me.timer_is = Timer::Off;
                }
                Timer::Off => {
                    me.timer_is = Timer::KeepAlive;
                    let at = tokio::time::Instant::now() + me.keepalive;
                    me.timer.as_mut().reset(at);
                    me.timer_waker = None;
                }
                _ => {}
            }
            if me.timer_is == Timer::Off
                || super::poll_timer(me.timer.as_mut(), &mut me.timer_waker, cx).is_pending()
            {
                return Poll::Pending;
            }
            if me.timer_is == Timer::Closing {
                // GOAWAY could not be written within its grace: dropped.
                return Poll::Ready(Err(Ended::KeepAliveTimeout));
            }
            me.timer_is = Timer::Closing;
            let at = tokio::time::Instant::now() + me.close_grace;
            me.timer.as_mut().reset(at);
            me.timer_waker = None;
            conn.abrupt_shutdown(Reason::NO_ERROR);
        }
    }
}

/// How a connection ended other than by closing cleanly.
#[derive(Debug)]
pub enum Ended {
    Error(::h2::Error),
    /// No preface and SETTINGS within the header read timeout.
    HandshakeTimeout,
    /// No stream open for the keep-alive timeout.
    KeepAliveTimeout,
}

impl Ended {
    /// Why it ended, on the client's side.
    pub fn reason(&self) -> EndReason {
        match self {
            Ended::Error(e) => end_reason(e),
            Ended::HandshakeTimeout => EndReason::ClientHeaderTimeout,
            Ended::KeepAliveTimeout => EndReason::IdleTimeout,
        }
    }
}

fn end_reason(e: &::h2::Error) -> EndReason {
    let protocol = matches!(
        e.reason(),
        Some(Reason::PROTOCOL_ERROR | Reason::FRAME_SIZE_ERROR | Reason::COMPRESSION_ERROR)
    );
    if !e.is_io() && (protocol || (e.is_go_away() && !e.is_remote())) {
        EndReason::ClientProtocolError
    } else {
        EndReason::ClientReset
    }
}

/// One stream: its request handled, its response sent. A client reset
/// drops it wherever it is (and with it the upstream request).
async fn stream(handler: Arc<Handler>, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let (req, tunnel_recv) =
        if req.method() == Method::CONNECT && req.extensions().get::<Protocol>().is_some() {
            let (req, recv) = extended_connect(req);
            (req, Some(recv))
        } else {
            (with_body(req), None)
        };
    // (In a block: the handler's future is gone once it has answered, so
    // this future holds it or the response body's, never both.)
    let resp = {
        let mut handling = std::pin::pin!(handler.handle(req));
        poll_fn(|cx| {
            // A client's RST_STREAM cancels the request: one that came in
            // the same read as the stream's HEADERS (rapid reset), before
            // the handler ever ran, so that nothing of it goes upstream.
            if respond.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            handling.as_mut().poll(cx).map(Some)
        })
        .await
    };
    let Some(mut resp) = resp else { return };
    if let Some(recv) = tunnel_recv {
        if let Some(tunnel) = resp.extensions_mut().remove::<Tunnel>() {
            let (mut parts, _) = resp.into_parts();
            // The tunnel is open: 200 on HTTP/2, without the HTTP/1.1
            // handshake's headers.
            parts.status = StatusCode::OK;
            headers::remove_hop_by_hop(&mut parts.headers, false);
            parts.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
            match respond.send_response(Response::from_parts(parts, ()), false) {
                // (Boxed: the rare path's large future stays out of
                // every stream's.)
                Ok(send) => {
                    Box::pin(run_tunnel(tunnel, recv, send)).await;
                }
                Err(_) => respond.send_reset(Reason::INTERNAL_ERROR),
            }
            return;
        }
    }
    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, false);
    if !parts.headers.contains_key(header::DATE) {
        parts
            .headers
            .insert(header::DATE, super::h1::head::date_now());
    }
    let end = body.is_end_stream();
    if !end && !bodiless(parts.status) {
        if let Some(n) = body.size_hint().exact() {
            if !parts.headers.contains_key(header::CONTENT_LENGTH) {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
    }
    match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(send) if !end => send_body(body, send, handler.send_timeout()).await,
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 response refused");
            respond.send_reset(Reason::INTERNAL_ERROR);
        }
    }
}

/// A request with its body as the handler takes it. (Its declared length
/// is read once, by the handler's body policy; h2 checks the DATA frames
/// against it.)
fn with_body(req: Request<RecvStream>) -> Request<ReqBody> {
    req.map(|recv| {
        ReqBody::H2(H2Body {
            recv,
            data_done: false,
        })
    })
}

/// An extended CONNECT (RFC 8441) as the HTTP/1.1 upgrade request it
/// becomes upstream: `GET` with `Connection: upgrade` and `Upgrade: <the
/// :protocol>`, and for WebSocket the `Sec-WebSocket-Key` that HTTP/2
/// clients do not send (RFC 8441 §5), with the accept its upstream's `101`
/// must carry. The stream's data is kept for the tunnel.
fn extended_connect(req: Request<RecvStream>) -> (Request<ReqBody>, RecvStream) {
    let (mut parts, recv) = req.into_parts();
    let protocol = parts
        .extensions
        .remove::<Protocol>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    parts.method = Method::GET;
    let h = &mut parts.headers;
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&protocol) {
        h.insert(header::UPGRADE, v);
    }
    let mut accept = None;
    if protocol.eq_ignore_ascii_case("websocket") {
        let key = h
            .entry(header::SEC_WEBSOCKET_KEY)
            .or_insert_with(websocket_key);
        accept = Some(headers::websocket_accept(key));
    }
    parts.extensions.insert(ExtendedConnect { accept });
    (Request::from_parts(parts, ReqBody::Empty), recv)
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
fn websocket_key() -> HeaderValue {
    use base64::Engine as _;
    let mut nonce = [0u8; 16];
    // (A failure leaves zeros: the key is a nonce, not a secret.)
    let _ = rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut nonce);
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::from_str(&key)
        .unwrap_or_else(|_| HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAA=="))
}

/// An extended CONNECT's tunnel: the stream, as a byte stream, is the
/// client side of `tunnel::run`, under the same rules as an HTTP/1.1
/// upgrade's (half-closes passed on, the route's idle timeout and max
/// lifetime, shutdown).
async fn run_tunnel(tunnel: Tunnel, recv: RecvStream, send: SendStream<Bytes>) {
    let io = StreamIo {
        recv,
        send,
        pending: Bytes::new(),
        unreleased: 0,
        recv_done: false,
    };
    let started = std::time::Instant::now();
    let log = tunnel.log.clone();
    let end = super::tunnel::run(tunnel, io).await;
    if let Some(log) = log {
        log.write(&end, started);
    }
}

/// An HTTP/2 stream as a byte stream. Reads: its DATA frames, each frame's
/// window given back once the frame has been read through (so the client
/// sends more only as fast as the other side takes it). Writes: DATA frames
/// within the stream's send capacity (a write waits for capacity, so at most
/// what the client's window allows is queued). Shutdown: END_STREAM.
/// Dropped before that, the stream is reset.
struct StreamIo {
    recv: RecvStream,
    send: SendStream<Bytes>,
    /// What is left of the last DATA frame.
    pending: Bytes,
    /// The window that frame took, given back once it is read through.
    unreleased: usize,
    recv_done: bool,
}

impl tokio::io::AsyncRead for StreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        loop {
            if !me.pending.is_empty() {
                let n = me.pending.len().min(buf.remaining());
                buf.put_slice(&me.pending.split_to(n));
                if me.pending.is_empty() {
                    let _ = me.recv.flow_control().release_capacity(me.unreleased);
                    me.unreleased = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if me.recv_done {
                return Poll::Ready(Ok(())); // end of stream
            }
            match ready!(me.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    me.unreleased = data.len();
                    me.pending = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
                None => me.recv_done = true,
            }
        }
    }
}

impl tokio::io::AsyncWrite for StreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let Some(capacity) = ready!(poll_send_capacity(&mut me.send, buf.len(), cx)) else {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        };
        let n = capacity.min(buf.len());
        me.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(std::io::Error::other)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(())) // the connection writes what streams queue
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        me.send.reserve_capacity(0);
        Poll::Ready(
            me.send
                .send_data(Bytes::new(), true)
                .map_err(std::io::Error::other),
        )
    }
}

fn bodiless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Sends a response body frame by frame. A frame in hand (but the last)
/// waits for the stream to have send capacity (one byte is asked for: `send_data` raises
/// the claim to the frame's length; asking for more before the frame
/// exists could hold back the connection's window from other streams).
/// A stream that gets no capacity for `send_limit` (the client gives no
/// window, or its connection takes nothing) is reset (`CANCEL`) and its
/// request ends with `client_send_timeout`: the upstream connection
/// closes with the body; the client connection lives on.
async fn send_body(body: Body, mut send: SendStream<Bytes>, send_limit: Duration) {
    let mut body = std::pin::pin!(body);
    loop {
        let frame = poll_fn(|cx| {
            if let Poll::Ready(frame) = body.as_mut().poll_frame(cx) {
                return Poll::Ready(Some(frame));
            }
            send.poll_reset(cx).map(|_| None)
        })
        .await;
        let Some(frame) = frame else { return }; // reset by the client
        let frame = match frame {
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 response body failed");
                send.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                // The last frame goes at once: it is the only one that can
                // wait beyond the window, and nothing follows it.
                if !end && !data.is_empty() {
                    match wait_capacity(&mut send, send_limit, body.as_mut().get_mut()).await {
                        Capacity::Ready => {}
                        Capacity::Closed => return,
                        Capacity::TimedOut => {
                            body.as_mut()
                                .get_mut()
                                .end_as(RequestEnd::ClientSendTimeout);
                            send.send_reset(Reason::CANCEL);
                            return;
                        }
                    }
                }
                if send.send_data(data, end).is_err() || end {
                    return;
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            send.reserve_capacity(0);
            let _ = send.send_trailers(trailers);
            return;
        }
    }
}

enum Capacity {
    Ready,
    /// The stream closed or was reset.
    Closed,
    /// None came within the send limit.
    TimedOut,
}

/// Waits until the stream may send again, at most `limit`. (A timer only
/// when the stream has no capacity at once.) A wait that lasts
/// `WATCH_UPSTREAM_AFTER` watches the upstream connection `body` reads
/// from meanwhile: if the upstream ends its side, the connection gives up
/// its pool slot at once (`Body::poll_upstream_ended`).
async fn wait_capacity(send: &mut SendStream<Bytes>, limit: Duration, body: &mut Body) -> Capacity {
    let mut wait = std::pin::pin!(poll_fn(|cx| poll_send_capacity(send, 1, cx)));
    let ready = match poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await {
        Poll::Ready(r) => r,
        Poll::Pending => {
            let waited =
                wait_watching(wait.as_mut(), limit, |cx| body.poll_upstream_ended(cx)).await;
            body.unwatch();
            match waited {
                Some(r) => r,
                None => return Capacity::TimedOut,
            }
        }
    };
    match ready {
        Some(_) => Capacity::Ready,
        None => Capacity::Closed,
    }
}

/// The stream's send capacity, asking for `want` bytes when it has none;
/// `None` if it closed or was reset. (`poll_capacity` answers only once
/// capacity has grown: what is already there is taken first.)
fn poll_send_capacity(
    send: &mut SendStream<Bytes>,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<Option<usize>> {
    let capacity = send.capacity();
    if capacity > 0 {
        return Poll::Ready(Some(capacity));
    }
    send.reserve_capacity(want);
    loop {
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(0)) => {}
            Some(Ok(n)) => return Poll::Ready(Some(n)),
            Some(Err(_)) | None => return Poll::Ready(None),
        }
    }
}

/// A request body arriving on an HTTP/2 stream. The flow-control window is
/// given back as each frame is passed on, so the client sends more only as
/// fast as the upstream takes it.
pub struct H2Body {
    recv: RecvStream,
    data_done: bool,
}

impl HttpBody for H2Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let me = self.get_mut();
        if !me.data_done {
            match ready!(me.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = me.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
                None => me.data_done = true,
            }
        }
        match ready!(me.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}
