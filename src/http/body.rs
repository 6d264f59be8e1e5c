//! Body wrappers on the streaming path. `ClientBody` carries a request body
//! upstream under the route's size limit and idle deadline; `UpstreamBody`
//! carries a response body to the client under the upstream idle deadline,
//! gives the upstream connection back to its pool only after the last byte,
//! and writes the access log line when it ends (or is dropped). Frames pass
//! through one at a time, so memory stays flat; a large body from our own
//! HTTP/1.1 client can instead move socket to socket by `splice(2)`
//! (`UpstreamBody::splice_to`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep, sleep};

use http_body_util::Either;
use tokio::net::TcpStream;

use super::error::RequestEnd;
use super::log::RequestLog;
use super::pool::PooledConn;
use crate::splice::Lease;

/// An idle deadline armed only once a body has had to wait (most small
/// bodies never do), pushed back by every frame.
struct IdleTimer {
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    fn new(idle: Duration) -> IdleTimer {
        IdleTimer { idle, sleep: None }
    }

    /// A frame arrived: the deadline starts again.
    fn touch(&mut self) {
        if let Some(s) = self.sleep.as_mut() {
            s.as_mut().reset(Instant::now() + self.idle);
        }
    }

    /// Ready when the body has waited the whole idle time.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let idle = self.idle;
        self.sleep
            .get_or_insert_with(|| Box::pin(sleep(idle)))
            .as_mut()
            .poll(cx)
    }
}

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A body on the proxy's paths: any body, boxed, or a response body from an
/// upstream kept as itself, so that the HTTP/1 writer can move its bytes
/// with `splice(2)` (`UpstreamBody::splice_to`).
pub enum Body {
    Boxed(UnsyncBoxBody<Bytes, BodyError>),
    Upstream(Box<UpstreamBody>),
}

impl Body {
    pub fn boxed<B>(body: B) -> Body
    where
        B: HttpBody<Data = Bytes, Error = BodyError> + Send + 'static,
    {
        Body::Boxed(body.boxed_unsync())
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Body::Boxed(b) => Pin::new(b).poll_frame(cx),
            Body::Upstream(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Boxed(b) => b.is_end_stream(),
            Body::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Boxed(b) => b.size_hint(),
            Body::Upstream(b) => b.size_hint(),
        }
    }
}

pub fn full(bytes: Bytes) -> Body {
    Body::boxed(http_body_util::Full::new(bytes).map_err(|never| match never {}))
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// How a request body ended, as seen by the handler after the upstream call.
#[derive(Default)]
pub struct BodyOutcome(AtomicU8, AtomicU64);

impl BodyOutcome {
    const TOO_LARGE: u8 = 1;
    const IDLE: u8 = 2;
    const ABORTED: u8 = 3;

    fn set(&self, v: u8) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Request body bytes passed upstream so far.
    pub fn bytes(&self) -> u64 {
        self.1.load(Ordering::Relaxed)
    }

    /// The client-side failure, if the request body failed.
    pub fn failure(&self) -> Option<RequestEnd> {
        match self.0.load(Ordering::Relaxed) {
            Self::TOO_LARGE => Some(RequestEnd::BodyTooLarge),
            Self::IDLE => Some(RequestEnd::ClientBodyTimeout),
            Self::ABORTED => Some(RequestEnd::ClientAborted),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StreamError(pub &'static str);

/// A request body as it arrives: from our HTTP/2 server or our HTTP/1
/// connection loop.
pub enum ReqBody {
    H2(super::h2::H2Body),
    H1(super::h1::body::RequestBody),
    /// No body at all.
    Empty,
}

impl HttpBody for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ReqBody::H2(b) => Pin::new(b).poll_frame(cx),
            ReqBody::H1(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::H2(b) => b.is_end_stream(),
            ReqBody::H1(b) => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::H2(b) => b.size_hint(),
            ReqBody::H1(b) => b.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

pub struct ClientBody {
    inner: ReqBody,
    /// The request's `Content-Length`, when it declared one: its exact
    /// size hint whichever protocol carried it.
    declared: Option<u64>,
    limit: u64,
    seen: u64,
    idle: IdleTimer,
    outcome: Arc<BodyOutcome>,
}

impl ClientBody {
    pub fn new(
        inner: ReqBody,
        declared: Option<u64>,
        limit: u64,
        idle: Duration,
        outcome: Arc<BodyOutcome>,
    ) -> ClientBody {
        ClientBody {
            inner,
            declared,
            limit,
            seen: 0,
            idle: IdleTimer::new(idle),
            outcome,
        }
    }
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    this.outcome.1.store(this.seen, Ordering::Relaxed);
                    if this.seen > this.limit {
                        this.outcome.set(BodyOutcome::TOO_LARGE);
                        return Poll::Ready(Some(Err(Box::new(StreamError(
                            "request body over the limit",
                        )))));
                    }
                }
                this.idle.touch();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.outcome.set(BodyOutcome::ABORTED);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(this.idle.poll_expired(cx));
                this.outcome.set(BodyOutcome::IDLE);
                Poll::Ready(Some(Err(Box::new(StreamError(
                    "request body idle timeout",
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.declared
            .map_or_else(|| self.inner.size_hint(), SizeHint::with_exact)
    }
}

/// A response body from an upstream: read by hyper's HTTP/2 client
/// (`Left`), or by our HTTP/1.1 one (`Right`).
pub type UpstreamInner = http_body_util::Either<Incoming, super::pool::h1::ResponseBody>;

pub struct UpstreamBody {
    inner: UpstreamInner,
    idle: IdleTimer,
    /// The route's total request deadline, when it has one.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The upstream connection, returned to its pool at end of stream.
    conn: Option<PooledConn>,
    log: RequestLog,
}

impl UpstreamBody {
    pub fn new(
        inner: UpstreamInner,
        idle: Duration,
        deadline: Option<Instant>,
        conn: Option<PooledConn>,
        log: RequestLog,
    ) -> UpstreamBody {
        UpstreamBody {
            inner,
            idle: IdleTimer::new(idle),
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            conn,
            log,
        }
    }

    /// The total request deadline passed: the response is cut.
    fn expire(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.conn = None; // half-read: never back to the pool
        self.log.end = RequestEnd::RequestTimeout;
        Poll::Ready(Some(Err(Box::new(StreamError("request timeout")))))
    }
}

impl Body {
    /// Why an upstream body that failed mid-response cut it, in the
    /// connection's words: the same reason the request's record has.
    pub fn failure(&self) -> crate::conn::EndReason {
        use crate::conn::EndReason;
        match self {
            Body::Upstream(u) => match u.log.end {
                RequestEnd::UpstreamBodyTimeout => EndReason::UpstreamBodyTimeout,
                RequestEnd::RequestTimeout => EndReason::RequestTimeout,
                _ => EndReason::UpstreamReset,
            },
            _ => EndReason::UpstreamReset,
        }
    }

    /// Ready once the upstream connection this body reads from has ended
    /// its side (and given up its pool slot: `ResponseBody::poll_upstream_ended`).
    /// Pending for bodies without one of our own connections.
    pub fn poll_upstream_ended(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            // (A shared HTTP/2 connection holds no slot per response.)
            Body::Upstream(u) => match &mut u.inner {
                Either::Right(raw) => raw.poll_upstream_ended(cx),
                Either::Left(_) => Poll::Pending,
            },
            Body::Boxed(_) => Poll::Pending,
        }
    }

    /// The client takes bytes again: stop watching the upstream.
    pub fn unwatch(&mut self) {
        if let Body::Upstream(u) = self {
            if let Either::Right(raw) = &mut u.inner {
                raw.unwatch();
            }
        }
    }

    /// Records why a response was cut on the client's side, when it is
    /// an upstream's (the request's record is the body's).
    pub fn end_as(&mut self, end: RequestEnd) {
        if let Body::Upstream(u) = self {
            if !u.log.finished {
                u.log.end = end;
            }
        }
    }
}

/// A write to the client stalled this long starts watching the upstream
/// for the end of its side (`Body::poll_upstream_ended`): a slot held by a
/// response the upstream has finished with is given up within about this.
pub const WATCH_UPSTREAM_AFTER: Duration = Duration::from_secs(1);

/// Awaits `wait` for at most `limit`; once it has waited
/// `WATCH_UPSTREAM_AFTER`, also polls `upstream_ended` (a body's
/// `poll_upstream_ended`: the upstream's end gives up the connection's pool
/// slot) and goes on waiting. `None`: the limit passed first. (The callers
/// stop the watch, `unwatch`, once this returns.)
pub async fn wait_watching<T>(
    wait: impl Future<Output = T>,
    limit: Duration,
    mut upstream_ended: impl FnMut(&mut Context<'_>) -> Poll<()>,
) -> Option<T> {
    let since = Instant::now();
    let mut wait = std::pin::pin!(wait);
    let mut watching = limit > WATCH_UPSTREAM_AFTER;
    loop {
        tokio::select! {
            r = wait.as_mut() => return Some(r),
            () = tokio::time::sleep_until(since + limit) => return None,
            () = async {
                tokio::time::sleep_until(since + WATCH_UPSTREAM_AFTER).await;
                std::future::poll_fn(&mut upstream_ended).await;
            }, if watching => watching = false,
        }
    }
}

/// A body at least this large still to come is spliced, not copied.
pub const SPLICE_MIN: u64 = 32 * 1024;

/// The side that ended a spliced body early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceFailed {
    /// The client reset or closed its connection: the response is cut.
    Client,
    /// The client's socket took nothing for the send timeout.
    ClientSendTimeout,
    /// The upstream reset, closed or went idle mid-body, or the request's
    /// deadline passed: the client's response is cut (the reason is in
    /// the access log).
    Upstream,
}

impl UpstreamBody {
    /// Moves the rest of the body from the upstream socket into `dst`
    /// with `splice(2)`, the bytes never entering this process, when it
    /// can: a body from our own HTTP/1.1 client, Content-Length framed,
    /// at least `SPLICE_MIN` bytes still to come and none of them already
    /// read, and a pipe free in the pool. `None` when it cannot (nothing
    /// moved; the caller reads frames). Waiting for the upstream is
    /// bounded by the body idle timeout, and every wait by the request's
    /// deadline, as when frames are read. `written` is told each count of
    /// bytes that reached `dst`.
    pub async fn splice_to(
        &mut self,
        dst: &TcpStream,
        send_limit: Duration,
        mut written: impl FnMut(u64),
    ) -> Option<Result<(), SpliceFailed>> {
        let UpstreamBody {
            inner: Either::Right(raw),
            idle,
            deadline,
            log,
            ..
        } = self
        else {
            return None;
        };
        let (_, mut left) = raw.splice_source().filter(|&(_, n)| n >= SPLICE_MIN)?;
        let mut lease = Lease::take()?;
        let mut deadline_passed = async || match deadline.as_mut() {
            Some(d) => d.as_mut().await,
            None => std::future::pending().await,
        };
        let end = loop {
            let Some(src) = raw.stream() else {
                break RequestEnd::UpstreamReset;
            };
            if lease.in_pipe() == 0 {
                if left == 0 {
                    break RequestEnd::Ok;
                }
                match lease.fill(src, usize::try_from(left).unwrap_or(usize::MAX)) {
                    Ok(0) => break RequestEnd::UpstreamReset, // closed mid-body
                    Ok(n) => {
                        left -= n as u64;
                        idle.touch();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        tokio::select! {
                            r = src.readable() => match r {
                                Ok(()) => continue,
                                Err(_) => break RequestEnd::UpstreamReset,
                            },
                            () = std::future::poll_fn(|cx| idle.poll_expired(cx)) => {
                                break RequestEnd::UpstreamBodyTimeout;
                            }
                            () = deadline_passed() => break RequestEnd::RequestTimeout,
                        }
                    }
                    Err(_) => break RequestEnd::UpstreamReset,
                }
            }
            match lease.flush(dst) {
                Ok(n) => {
                    log.bytes_down += n as u64;
                    written(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // (A timer only when the client's socket is full.)
                    let writable = async {
                        tokio::select! {
                            r = dst.writable() => Some(r.is_ok()),
                            () = deadline_passed() => None,
                        }
                    };
                    let waited =
                        wait_watching(writable, send_limit, |cx| raw.poll_upstream_ended(cx)).await;
                    raw.unwatch();
                    match waited {
                        Some(Some(true)) => {}
                        Some(Some(false)) => break RequestEnd::ClientAborted,
                        Some(None) => break RequestEnd::RequestTimeout,
                        None => break RequestEnd::ClientSendTimeout,
                    }
                }
                Err(_) => break RequestEnd::ClientAborted,
            }
        };
        Some(match end {
            RequestEnd::Ok => {
                raw.spliced_to_end();
                log.end = RequestEnd::Ok;
                log.finished = true;
                Ok(())
            }
            RequestEnd::ClientAborted => {
                raw.abandon(); // half-read: never back to the pool
                Err(SpliceFailed::Client) // (logged as aborted on drop)
            }
            RequestEnd::ClientSendTimeout => {
                raw.abandon();
                log.end = end;
                Err(SpliceFailed::ClientSendTimeout)
            }
            end => {
                raw.abandon();
                log.end = end;
                Err(SpliceFailed::Upstream)
            }
        })
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.deadline.as_ref().is_some_and(|d| d.is_elapsed()) {
            return this.expire();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.log.bytes_down += data.len() as u64;
                }
                this.idle.touch();
                // The last byte read: the connection can serve another
                // request now, before this frame reaches the client.
                if this.inner.is_end_stream() {
                    if let Some(conn) = this.conn.take() {
                        conn.release();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn = None; // half-read: never back to the pool
                this.log.end = RequestEnd::UpstreamReset;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let Some(conn) = this.conn.take() {
                    conn.release();
                }
                this.log.end = RequestEnd::Ok;
                this.log.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(d) = this.deadline.as_mut() {
                    if d.as_mut().poll(cx).is_ready() {
                        return this.expire();
                    }
                }
                ready!(this.idle.poll_expired(cx));
                this.conn = None;
                this.log.end = RequestEnd::UpstreamBodyTimeout;
                Poll::Ready(Some(Err(Box::new(StreamError(
                    "upstream body idle timeout",
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            if let Some(conn) = self.conn.take() {
                conn.release();
            }
            self.log.finished = true;
        } else if !self.log.finished && self.log.end == RequestEnd::Ok {
            // Dropped before the end: the client went away mid-response.
            self.log.end = RequestEnd::ClientAborted;
        }
    }
}

/// A response body through filters' transforms (`filter::Transform`), in
/// order, as it streams: pieces in, what each transform has ready out; at
/// the body's end (before its trailers) what each has left.
pub struct Transformed {
    inner: Body,
    transforms: Vec<Box<dyn crate::filter::Transform>>,
    trailers: Option<http::HeaderMap>,
    done: bool,
}

impl Transformed {
    pub fn new(inner: Body, transforms: Vec<Box<dyn crate::filter::Transform>>) -> Transformed {
        Transformed {
            inner,
            transforms,
            trailers: None,
            done: false,
        }
    }

    /// `data` through every transform; with `end`, each one's rest too
    /// (fed to the ones after it).
    fn run(&mut self, mut out: Bytes, end: bool) -> io::Result<Bytes> {
        for t in &mut self.transforms {
            if !out.is_empty() {
                out = t.data(out)?;
            }
            if end {
                let rest = t.finish()?;
                if !rest.is_empty() {
                    let mut joined = Vec::with_capacity(out.len() + rest.len());
                    joined.extend_from_slice(&out);
                    joined.extend_from_slice(&rest);
                    out = joined.into();
                }
            }
        }
        Ok(out)
    }
}

impl HttpBody for Transformed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.done = true;
                    let rest = this.run(Bytes::new(), true)?;
                    if rest.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            };
            let out = match frame.into_data() {
                Ok(data) => this.run(data, false)?,
                Err(frame) => {
                    // Trailers: the transformed body ends before them.
                    this.trailers = frame.into_trailers().ok();
                    this.done = true;
                    this.run(Bytes::new(), true)?
                }
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }
}
