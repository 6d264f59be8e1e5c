//! Request mirroring (`[routes.mirror]`): a share of a route's requests
//! copied to a shadow cluster, fire and forget. A copy holds one of
//! `PLACES` process-wide places from the moment it is made until its
//! exchange ends; a request that finds them all taken is not mirrored
//! (`dropped`), so copies never pile up. A body is copied as it streams
//! to the real upstream (`Tee`: the copy shares the pieces, it never reads
//! ahead of the real request or slows it); a body longer than the mirror's
//! `max_body`, or one the client does not finish, is not mirrored
//! (`skipped`). The shadow's response is read and dropped; its failures
//! are counted (`failed`), never seen by the client, and never count
//! against the shadow endpoints' passive health.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::super::body::{Body, BodyError, full};
use super::super::headers::SetFields;
use super::super::pool::{RoutePools, Sender, h1};
use crate::config::MirrorConfig;
use crate::metrics::{MirrorOutcome, RouteStats};
use crate::upstream::UpstreamError;

/// Copies in flight (or waiting for their body), process-wide.
pub const PLACES: usize = 1024;

static IN_FLIGHT: Semaphore = Semaphore::const_new(PLACES);

/// A request to copy, from its upstream head: `body` is wrapped so that
/// its bytes are copied as they go (`None`: bodiless). Returns the body
/// to send to the real upstream.
#[allow(clippy::too_many_arguments)]
pub fn tap(
    cfg: &MirrorConfig,
    pools: &Arc<RoutePools>,
    stats: &Arc<RouteStats>,
    connect_timeout: Duration,
    head: &Request<()>,
    set: &SetFields,
    body: Option<Body>,
    length: Option<u64>,
) -> Option<Body> {
    if length.is_some_and(|l| l > cfg.max_body) {
        stats.mirror_outcome(MirrorOutcome::Skipped);
        return body;
    }
    let Ok(place) = IN_FLIGHT.try_acquire() else {
        stats.mirror_outcome(MirrorOutcome::Dropped);
        return body;
    };
    let mut copy = Request::new(());
    *copy.method_mut() = head.method().clone();
    *copy.uri_mut() = head.uri().clone();
    *copy.headers_mut() = head.headers().clone();
    set.clone().apply(copy.headers_mut());
    let copy = Copy {
        pools: pools.clone(),
        head: copy,
        timeout: cfg.timeout,
        connect_timeout,
        stats: stats.clone(),
        _place: place,
    };
    match body {
        None => {
            copy.send(Bytes::new());
            None
        }
        Some(inner) => Some(Body::boxed(Tee {
            inner,
            copy: Some(copy),
            pieces: Vec::new(),
            len: 0,
            max: cfg.max_body,
        })),
    }
}

/// A copy of a request on its way to the shadow cluster.
struct Copy {
    pools: Arc<RoutePools>,
    head: Request<()>,
    timeout: Duration,
    connect_timeout: Duration,
    stats: Arc<RouteStats>,
    _place: SemaphorePermit<'static>,
}

impl Copy {
    /// Sends it in a task of its own, within its deadline; its place is
    /// held until the exchange ends.
    fn send(self, body: Bytes) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.stats.mirror_outcome(MirrorOutcome::Failed); // (never: requests run on tokio)
            return;
        };
        let Copy {
            pools,
            head,
            timeout,
            connect_timeout,
            stats,
            _place: place,
        } = self;
        rt.spawn(async move {
            let sent =
                tokio::time::timeout(timeout, exchange(&pools, connect_timeout, head, body)).await;
            drop(place);
            let cluster = &pools.cluster.name;
            let outcome = match sent {
                Ok(Ok(status)) => {
                    tracing::trace!(%cluster, %status, "mirrored");
                    MirrorOutcome::Sent
                }
                Ok(Err(e)) => {
                    tracing::debug!(%cluster, error = %e, "mirror failed");
                    MirrorOutcome::Failed
                }
                Err(_) => {
                    tracing::debug!(%cluster, "mirror timed out");
                    MirrorOutcome::Failed
                }
            };
            stats.mirror_outcome(outcome);
        });
    }
}

/// One exchange with an endpoint of the shadow cluster; the response's
/// body is read and dropped (so its connection goes back to the pool).
async fn exchange(
    pools: &RoutePools,
    connect_timeout: Duration,
    mut head: Request<()>,
    body: Bytes,
) -> Result<StatusCode, UpstreamError> {
    let pool = match pools.pick_now(None, None, &[]) {
        Err(UpstreamError::Unresolved) => pools.pick(None, None, &[]).await?,
        picked => picked?,
    };
    let (mut conn, _) = pool.checkout(connect_timeout, false).await?;
    conn.load = Some(pool.state().start());
    let h = head.headers_mut();
    if !h.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(pool.target()) {
            h.insert(header::HOST, v);
        }
    }
    // The body is whole: sent with its length.
    h.remove(header::TRANSFER_ENCODING);
    if !body.is_empty() {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    if let Sender::H2(sender) = &mut conn.sender {
        let mut req = head.map(|()| full(body));
        super::call::as_http2(&mut req, pool.scheme());
        let resp = sender
            .send_request(req)
            .await
            .map_err(|_| UpstreamError::Reset)?;
        let status = resp.status();
        drain(resp.into_body()).await;
        return Ok(status);
    }
    let mut sending = (!body.is_empty()).then(|| full(body));
    let out = h1::Outgoing {
        head: h1::encode_request(&head, &SetFields::default(), false),
        body: sending.as_mut(),
        chunked: false,
        head_request: head.method() == http::Method::HEAD,
        upgrade: false,
    };
    let answered = match &mut conn.sender {
        Sender::H1(c) => c.exchange(out).await.map_err(UpstreamError::from)?,
        Sender::H2(_) => return Err(UpstreamError::ProtocolError), // (never: HTTP/2 went above)
    };
    let status = answered.response.status();
    drain(h1::ResponseBody::new(
        conn,
        answered.decoder,
        answered.keep_alive,
    ))
    .await;
    Ok(status)
}

/// Reads a body to its end, keeping nothing.
async fn drain<B: http_body::Body + Unpin>(mut body: B) {
    while let Some(Ok(_)) = body.frame().await {}
}

/// A request body passed on as it is, its data copied (up to the
/// mirror's `max_body`) for the copy of its request, which leaves when
/// the body ends.
struct Tee {
    inner: Body,
    copy: Option<Copy>,
    pieces: Vec<Bytes>,
    len: u64,
    max: u64,
}

impl Tee {
    /// The body ended: the copy leaves with it.
    fn finish(&mut self) {
        if let Some(copy) = self.copy.take() {
            let body = match self.pieces.len() {
                0 => Bytes::new(),
                1 => self.pieces.pop().unwrap_or_default(),
                _ => {
                    let mut all = BytesMut::with_capacity(self.len as usize);
                    self.pieces
                        .drain(..)
                        .for_each(|p| all.extend_from_slice(&p));
                    all.freeze()
                }
            };
            copy.send(body);
        }
    }

    /// The copy is given up (its body too long, or never finished).
    fn skip(&mut self) {
        if let Some(copy) = self.copy.take() {
            copy.stats.mirror_outcome(MirrorOutcome::Skipped);
        }
        self.pieces = Vec::new();
    }
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let me = &mut *self;
        let frame = ready!(Pin::new(&mut me.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(_)) = (f.data_ref(), &me.copy) {
                    me.len += data.len() as u64;
                    if me.len > me.max {
                        me.skip();
                    } else {
                        me.pieces.push(data.clone());
                    }
                }
                // (A reader stops at the end of the stream without asking
                // again.)
                if me.inner.is_end_stream() {
                    me.finish();
                }
            }
            None => me.finish(),
            Some(Err(_)) => me.skip(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.skip();
    }
}

/// Whether the `n`th request of a route is mirrored at `percent`: exactly
/// `percent` of every hundred, spread evenly.
pub fn sampled(n: u64, percent: u32) -> bool {
    let p = u64::from(percent);
    (n + 1) * p / 100 > n * p / 100
}

#[cfg(test)]
mod tests {
    use super::sampled;

    #[test]
    fn a_percentage_is_exact_and_spread() {
        for p in [1, 10, 33, 50, 100] {
            let hits: Vec<u64> = (0..1000).filter(|&n| sampled(n, p)).collect();
            assert_eq!(hits.len() as u32, p * 10, "{p}%");
            // Never more than one in a row below 50 %.
            if p <= 50 {
                assert!(hits.windows(2).all(|w| w[1] - w[0] >= 2), "{p}%");
            }
        }
    }
}
