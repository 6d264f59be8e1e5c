//! The upstream call of a request (`Handler::call_upstream`): admitted by
//! the route's cluster, the request's hash key and sticky endpoint, then
//! attempts on endpoints' pools (`attempt`) — our HTTP/1.1 client or
//! hyper's HTTP/2 one (`send_h2`) — each reported to passive health and
//! retried on another endpoint within the cluster's attempts and budget.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Uri, Version};
use http_body::Body as _;
use tokio::time::timeout;

use super::super::body::{Body, UpstreamInner, empty};
use super::super::error::RequestEnd;
use super::super::log::RequestLog;
use super::super::pool::{PooledConn, RoutePools, Sender, TargetPool, h1};
use super::{Answer, Exchanged, Handler, UpstreamHead};
use crate::config::{BalanceConfig, HashKey};
use crate::routing::Route;
use crate::upstream::cluster::{Cluster, RetryToken};
use crate::upstream::endpoint::Outcome;
use crate::upstream::{self, UpstreamError};

impl Handler {
    /// Sends the request to an endpoint of the route's cluster: over
    /// HTTP/1.1 by our own client, over HTTP/2 by hyper's. Admitted within
    /// the cluster's cap on requests in flight; each attempt's outcome is
    /// reported to the endpoint's passive health; a failed attempt goes to
    /// another endpoint when `retry` allows. (A request that a reused
    /// connection could not take, the upstream having closed it while
    /// idle, goes once more on another connection: `goes_again`, not a
    /// retry.)
    pub(super) async fn call_upstream(
        &self,
        route: &Route,
        pools: &RoutePools,
        head: &mut UpstreamHead,
        body: &mut Option<Body>,
        log: &mut RequestLog,
    ) -> Exchanged {
        let policy = &route.config.policy;
        let cluster = &pools.cluster;
        let mut admitted = cluster.admit()?;
        let key = match &cluster.config.policy.balance {
            BalanceConfig::Hash(k) => request_key(k, &head.req, self.info.client.ip()),
            _ => None,
        };
        let sticky_cookie = cluster.config.policy.sticky_cookie.as_deref();
        let sticky = sticky_cookie.and_then(|name| {
            let value = cookie(&head.req, name)?;
            u64::from_str_radix(std::str::from_utf8(value).ok()?, 16).ok()
        });
        let idempotent = head.req.method().is_idempotent();
        // A small enough body of an idempotent request is kept, whole, to
        // be sent again (`retries.body_limit`).
        let kept = match self.keep_body(cluster, idempotent, body, log).await {
            Ok(k) => k,
            Err(end) => return Err(end),
        };
        // Only a request without a body (or with its body kept) may go
        // again once it was sent.
        let bodiless = kept.is_some() || body.as_ref().is_none_or(http_body::Body::is_end_stream);
        // A request that cannot be retried never goes on a reused
        // connection the upstream may be closing (`checkout`).
        let fresh = !policy.http.pool_reuse_non_idempotent && !idempotent;
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut _retry: Option<RetryToken> = None;
        loop {
            let pool = match pools.pick_now(key, sticky, &tried) {
                Ok(p) => p,
                // (The cluster's names are being resolved for the first
                // time, or resolved to nothing.)
                Err(UpstreamError::Unresolved) => {
                    tokio::time::timeout(policy.connect_timeout, pools.pick(key, sticky, &tried))
                        .await
                        .map_err(|_| RequestEnd::UpstreamUnresolved)??
                }
                Err(e) => return Err(e.into()),
            };
            let failed = |e: UpstreamError, tried: &mut Vec<SocketAddr>| {
                cluster.report(pool.state(), Outcome::Failure);
                tried.push(pool.addr());
                self.retry(
                    cluster,
                    e.may_retry(idempotent && bodiless, &cluster.config.policy.retries),
                    tried.len(),
                )
            };
            match self.attempt(route, &pool, head, body, log, fresh).await {
                Attempt::Answered(mut exchanged) => {
                    let status = exchanged.0.status();
                    let retries = &cluster.config.policy.retries;
                    if status.is_server_error() {
                        cluster.report(pool.state(), Outcome::Failure);
                        let retried =
                            retries.statuses.contains(&status.as_u16()) && idempotent && bodiless;
                        tried.push(pool.addr());
                        _retry = None;
                        if let Some(token) = self.retry(cluster, retried, tried.len()).await {
                            _retry = Some(token);
                            if let Some(k) = &kept {
                                *body = Some(super::super::body::full(k.clone()));
                            }
                            continue;
                        }
                    } else {
                        cluster.report(pool.state(), Outcome::Success);
                    }
                    if matches!(cluster.config.policy.balance, BalanceConfig::PeakEwma) {
                        pool.state().observe_latency(log.started.elapsed());
                    }
                    // A sticky cluster's client learns (or keeps) its endpoint.
                    if let Some(name) = sticky_cookie.filter(|_| sticky != Some(pool.state().id)) {
                        let set = format!(
                            "{name}={:016x}; Path=/; HttpOnly; SameSite=Lax",
                            pool.state().id
                        );
                        if let Ok(v) = HeaderValue::from_str(&set) {
                            exchanged.0.headers_mut().append(header::SET_COOKIE, v);
                        }
                    }
                    if let Some(conn) = exchanged.1.as_mut() {
                        conn.admitted = admitted.take();
                    } else if let UpstreamInner::Right(b) = exchanged.0.body_mut() {
                        b.hold(admitted.take());
                    }
                    log.attempts = tried.len() as u32 + 1;
                    return Ok(exchanged);
                }
                Attempt::Again => {}
                Attempt::Failed(e) => {
                    log.attempts = tried.len() as u32 + 1;
                    _retry = None; // (the last retry ended: out of the budget)
                    match failed(e, &mut tried).await {
                        Some(token) => _retry = Some(token),
                        None => return Err(e.into()),
                    }
                    if let Some(k) = &kept {
                        *body = Some(super::super::body::full(k.clone()));
                    }
                }
                Attempt::Ended(end) => return Err(end),
            }
        }
    }

    /// The request's body read whole and kept (and put back as the body to
    /// send), when the cluster keeps bodies for retries and this one is
    /// of an idempotent request with a known length within the limit.
    async fn keep_body(
        &self,
        cluster: &Cluster,
        idempotent: bool,
        body: &mut Option<Body>,
        log: &RequestLog,
    ) -> Result<Option<bytes::Bytes>, RequestEnd> {
        use http_body_util::BodyExt as _;
        let limit = cluster.config.policy.retries.body_limit;
        let fits =
            |b: &Body| !b.is_end_stream() && b.size_hint().exact().is_some_and(|n| n <= limit);
        if limit == 0 || !idempotent || !body.as_ref().is_some_and(fits) {
            return Ok(None);
        }
        let Some(b) = body.take() else {
            return Ok(None);
        };
        match b.collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                *body = Some(super::super::body::full(bytes.clone()));
                Ok(Some(bytes))
            }
            Err(_) => {
                let failure = log.request_body.as_ref().and_then(|o| o.failure());
                Err(failure.unwrap_or(RequestEnd::ClientAborted))
            }
        }
    }

    /// Room for another attempt: within the cluster's attempts and retry
    /// budget, after the backoff; `None` when the request may not go again.
    async fn retry(
        &self,
        cluster: &Arc<Cluster>,
        allowed: bool,
        failed: usize,
    ) -> Option<RetryToken> {
        let retries = &cluster.config.policy.retries;
        if !allowed || failed >= retries.attempts as usize {
            return None;
        }
        let token = cluster.retry_token()?;
        tracing::debug!(conn = self.conn_id, cluster = %cluster.name, attempt = failed + 1, "retrying on another endpoint");
        tokio::time::sleep(upstream::cluster::backoff(retries.backoff, failed as u32)).await;
        Some(token)
    }

    /// One attempt on an endpoint's pool.
    async fn attempt(
        &self,
        route: &Route,
        pool: &Arc<TargetPool>,
        head: &mut UpstreamHead,
        body: &mut Option<Body>,
        log: &mut RequestLog,
        fresh: bool,
    ) -> Attempt {
        let policy = &route.config.policy;
        // The line of a request that fails before a connection names
        // the endpoint all the same.
        log.upstream = Some(pool.addr());
        if head.missing_host {
            if let Ok(v) = HeaderValue::from_str(pool.target()) {
                head.set.replace(header::HOST, v);
            }
        }
        // The client's share of the target's connections, claimed
        // before one is taken (fairness: `ClientShares`).
        let Ok(share) = pool.claim(self.info.client.ip()) else {
            return Attempt::Ended(RequestEnd::LimitClientShare);
        };
        let load = pool.state().start();
        // (An idle connection at hand needs no future at all.)
        let idle = if fresh { None } else { pool.take_idle() };
        let (mut conn, connect_time) = match idle {
            Some(conn) => (conn, None),
            // Boxed: waiting for a slot or a connect is rare and its
            // state is large; keeping it out of the request future
            // keeps that future cheap to move.
            None => match Box::pin(pool.checkout(policy.connect_timeout, fresh)).await {
                Ok(c) => c,
                Err(e @ (UpstreamError::TlsVerifyFailed | UpstreamError::TlsHandshakeFailed)) => {
                    if let Some(why) = pool.last_tls_error() {
                        self.entry.show_upstream_error(why);
                    }
                    return Attempt::Failed(e);
                }
                Err(e) => return Attempt::Failed(e),
            },
        };
        conn.share = share;
        conn.load = Some(load);
        log.upstream = Some(conn.peer);
        self.entry.show_request(&route.stats, conn.peer);
        if let Some(t) = connect_time {
            route.stats.connect_latency.observe(t);
            log.connect = Some(t);
        }
        if conn.sender.is_http2() {
            // Boxed: hyper's request state is large, and the usual
            // request (HTTP/1.1) never needs it.
            let sent = Box::pin(self.send_h2(
                conn,
                pool.scheme(),
                policy.http.response_header_timeout,
                head,
                body,
                log,
            ))
            .await;
            return match sent {
                None => Attempt::Again,
                Some(Ok(exchanged)) => Attempt::Answered(exchanged),
                Some(Err(Sent::Upstream(e))) => Attempt::Failed(e),
                Some(Err(Sent::Ended(end))) => Attempt::Ended(end),
            };
        }
        let reused = conn.reused;
        let idempotent = head.req.method().is_idempotent();
        // A body already at its end (an upgrade's) sends nothing.
        let sending = body.as_mut().filter(|b| !b.is_end_stream());
        let chunked = sending.is_some() && !head.req.headers().contains_key(header::CONTENT_LENGTH);
        let outgoing = h1::Outgoing {
            head: h1::encode_request(&head.req, &head.set, chunked),
            body: sending,
            chunked,
            head_request: head.req.method() == http::Method::HEAD,
            upgrade: head.upgrade,
        };
        let mut exchanging = Exchanging(Some(conn));
        let deadline = tokio::time::Instant::now() + policy.http.response_header_timeout;
        let mut timer = self.response_timer(deadline);
        let exchange = tokio::select! {
            biased;
            r = exchanging.exchange(outgoing) => Ok(r),
            () = timer.as_mut() => Err(()),
        };
        self.keep_response_timer(timer);
        match exchange {
            Err(()) => {
                exchanging.close(); // slow: not drained
                Attempt::Failed(UpstreamError::ResponseTimeout)
            }
            Ok(Ok(h)) => {
                let Some(conn) = exchanging.0.take() else {
                    return Attempt::Ended(RequestEnd::UpstreamReset); // (never: just exchanged)
                };
                if h.response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    // (Only to an upgrade: `relay` hands the connection over.)
                    let none = h1::ResponseBody::none();
                    return Attempt::Answered((
                        h.response.map(|()| UpstreamInner::Right(none)),
                        Some(conn),
                    ));
                }
                let body = h1::ResponseBody::new(conn, h.decoder, h.keep_alive);
                Attempt::Answered((h.response.map(|()| UpstreamInner::Right(body)), None))
            }
            Ok(Err(h1::ExchangeError::ClientBody)) => {
                exchanging.close();
                let failure = log.request_body.as_ref().and_then(|o| o.failure());
                Attempt::Ended(failure.unwrap_or(RequestEnd::ClientAborted))
            }
            Ok(Err(e)) => {
                exchanging.close();
                let e = UpstreamError::from(e);
                tracing::debug!(conn = self.conn_id, error = %e, reused, "upstream request failed");
                if goes_again(e, reused, idempotent) {
                    return Attempt::Again;
                }
                Attempt::Failed(e)
            }
        }
    }

    /// Sends the request through hyper's HTTP/2 client on `conn`. `None`:
    /// the reused connection could not take it (the upstream closed it
    /// while idle) and hyper handed it back, into `head` and `body`, to go
    /// again.
    async fn send_h2(
        &self,
        mut conn: PooledConn,
        scheme: &str,
        response_timeout: std::time::Duration,
        head: &mut UpstreamHead,
        body: &mut Option<Body>,
        log: &RequestLog,
    ) -> Option<Result<Answer, Sent>> {
        let bodiless = body.is_none();
        let idempotent = head.req.method().is_idempotent();
        let mut request = std::mem::replace(&mut head.req, Request::new(()))
            .map(|()| body.take().unwrap_or_else(empty));
        head.set.apply(request.headers_mut());
        as_http2(&mut request, scheme);
        // A bodiless request may go again (on this connection's failure, or
        // a retry): hyper gives back only what it did not send, so keep its
        // head.
        let again = bodiless.then(|| copy_head(&request));
        let Sender::H2(sender) = &mut conn.sender else {
            return Some(Err(Sent::Ended(RequestEnd::UpstreamProtocolError))); // (never: HTTP/2 only)
        };
        let mut e = match timeout(response_timeout, sender.try_send_request(request)).await {
            Err(_) => {
                if let Some(kept) = again {
                    head.req = kept;
                }
                return Some(Err(Sent::Upstream(UpstreamError::ResponseTimeout)));
            }
            Ok(Ok(resp)) => return Some(Ok((resp.map(UpstreamInner::Left), Some(conn)))),
            Ok(Err(e)) => e,
        };
        if let Some(client_side) = log.request_body.as_ref().and_then(|o| o.failure()) {
            return Some(Err(Sent::Ended(client_side)));
        }
        tracing::debug!(conn = self.conn_id, error = %e.error(), reused = conn.reused, "upstream request failed");
        let unsent = e.take_message();
        let kind = if unsent.is_some() {
            UpstreamError::ClosedBeforeSend
        } else if e.error().is_incomplete_message() {
            UpstreamError::ClosedBeforeResponse
        } else if e.error().is_parse() {
            UpstreamError::InvalidResponse
        } else {
            UpstreamError::Reset
        };
        // The head again, for another attempt: what hyper gave back (with
        // the body), or the copy of a bodiless request's. (Without either,
        // a body went: the request cannot go again.)
        let restored = match (unsent, again) {
            (Some(unsent), _) => {
                let (parts, unsent_body) = unsent.into_parts();
                head.req = Request::from_parts(parts, ());
                if !bodiless {
                    *body = Some(unsent_body);
                }
                true
            }
            (None, Some(kept)) => {
                head.req = kept;
                true
            }
            (None, None) => false,
        };
        if restored && goes_again(kind, conn.reused, idempotent) {
            return None;
        }
        Some(Err(Sent::Upstream(kind)))
    }
}

/// Whether a failed attempt goes again on another connection, for both
/// clients: only after a reused connection failed (a new one failing is
/// the upstream's answer), and only when the failure says the request
/// cannot have been processed (`UpstreamError::retry_safe`).
fn goes_again(e: UpstreamError, reused: bool, idempotent: bool) -> bool {
    reused && e.retry_safe(idempotent)
}

/// A request's head without its body or extensions, to send it again.
fn copy_head<B>(req: &Request<B>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// How an HTTP/2 exchange failed.
enum Sent {
    Upstream(UpstreamError),
    Ended(RequestEnd),
}

/// How an attempt on an endpoint went. (Returned once per attempt, as
/// the response itself would be: no box.)
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Answered(Answer),
    /// A reused connection could not take the request: once more.
    Again,
    /// The endpoint failed (passive health; a retry may follow).
    Failed(UpstreamError),
    /// The request ends here (a limit, the client's side).
    Ended(RequestEnd),
}

/// The request's hash key for a hashing cluster, when it has one.
fn request_key(key: &HashKey, req: &Request<()>, client: std::net::IpAddr) -> Option<u64> {
    let bytes: Vec<u8> = match key {
        HashKey::ClientIp => match client {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        },
        HashKey::Path => req.uri().path().as_bytes().to_vec(),
        HashKey::Header(name) => req.headers().get(name)?.as_bytes().to_vec(),
        HashKey::Cookie(name) => cookie(req, name)?.to_vec(),
    };
    Some(upstream::balance::hash_key(&bytes))
}

/// The value of the request's cookie `name`, if it has one.
fn cookie<'a>(req: &'a Request<()>, name: &str) -> Option<&'a [u8]> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_bytes())
}

/// Makes a request HTTP/2-ready for an upstream: version 2, and the host
/// moved from `Host` into the target's authority (`:authority`).
pub(super) fn as_http2(req: &mut Request<Body>, scheme: &str) {
    if req.version() == Version::HTTP_2 {
        return;
    }
    *req.version_mut() = Version::HTTP_2;
    let Some(host) = req.headers_mut().remove(header::HOST) else {
        return;
    };
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let absolute = host
        .to_str()
        .ok()
        .and_then(|h| format!("{scheme}://{h}{pq}").parse::<Uri>().ok());
    match absolute {
        Some(uri) => *req.uri_mut() = uri,
        None => {
            req.headers_mut().insert(header::HOST, host);
        }
    }
}

/// A connection of ours in mid-exchange. Dropped with its request (the
/// client went away: a reset HTTP/2 stream, a closed connection) before
/// the response head was read, it is settled rather than closed: back to
/// the pool if nothing was sent, after its response is drained if the
/// request was (`PooledConn::settle_abandoned`). A flood of streams reset
/// right after they start so costs no upstream connections.
struct Exchanging(Option<PooledConn>);

impl Exchanging {
    async fn exchange(
        &mut self,
        out: h1::Outgoing<'_>,
    ) -> Result<h1::ResponseHead, h1::ExchangeError> {
        match self.0.as_mut().map(|c| &mut c.sender) {
            Some(Sender::H1(conn)) => conn.exchange(out).await,
            _ => Err(h1::ExchangeError::Reset), // (never: made for ours only)
        }
    }

    /// The exchange failed: the connection closes.
    fn close(&mut self) {
        self.0 = None;
    }
}

impl Drop for Exchanging {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.settle_abandoned();
        }
    }
}
