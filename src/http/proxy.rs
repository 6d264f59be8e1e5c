//! The request path: smuggling checks, routing, body policy, the upstream
//! request (hop-by-hop removed, forwarding headers added, target bytes
//! untouched), the upstream call under its deadlines, and the response
//! relayed back with a streaming body. Every failure ends as a `RequestEnd`
//! and becomes a response in `error::respond`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use tokio::time::{Sleep, timeout};

use super::body::{Body, BodyOutcome, ClientBody, ReqBody, UpstreamBody, UpstreamInner, empty};
use super::error::{RequestEnd, respond};
use super::headers::{self, ForwardedFor};
use super::log::RequestLog;
use super::pool::{PooledConn, RoutePools, Sender, TargetPool, h1};
use super::tunnel::{Handover, Tunnel, TunnelLog};
use crate::config::{BalanceConfig, HashKey};
use crate::config::{HttpListener, RouteAction};
use crate::conn::ConnEntry;
use crate::routing::{self, RequestView, Route, RouteInput};
use crate::runtime::{Runtime, Snapshot};
use crate::upstream::cluster::{Cluster, RetryToken};
use crate::upstream::endpoint::Outcome;
use crate::upstream::{self, UpstreamError};

/// Marks a request that came as an HTTP/2 extended CONNECT (RFC 8441),
/// handed to the handler as an HTTP/1.1-style upgrade request. For
/// WebSocket, `accept` is what the upstream's `101` must carry in
/// `Sec-WebSocket-Accept` for the key sent on the client's behalf (an
/// HTTP/2 client checks no key: we do, as its HTTP/1.1 side).
#[derive(Clone, Debug)]
pub struct ExtendedConnect {
    pub accept: Option<HeaderValue>,
}

pub struct ConnInfo {
    /// The real client (from a PROXY header when there was one).
    pub client: SocketAddr,
    /// The TCP peer (a proxy in front of us, or the client itself).
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Set when the connection is terminated TLS.
    pub tls: Option<TlsInfo>,
}

/// What the TLS handshake established about a client connection.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// The server name the client asked for, lower case.
    pub sni: Option<String>,
    /// The verified client certificate's identity (mTLS).
    pub identity: Option<String>,
}

/// Response timers a connection keeps between requests: enough for the
/// streams an HTTP/2 client usually keeps in flight; beyond them a request
/// makes its own. (About 100 bytes each, while the connection lives.)
const KEPT_TIMERS: usize = 16;

pub struct Handler {
    rt: Arc<Runtime>,
    /// The connection's listener, found by name in each request's snapshot.
    listener: Arc<str>,
    http: Arc<HttpListener>,
    info: ConnInfo,
    conn_id: u64,
    /// The connection's table entry: shows the route and upstream of the
    /// request in flight, or of the last one.
    entry: Arc<ConnEntry>,
    requests: AtomicU64,
    trusted_peer: bool,
    /// The client address as an `X-Forwarded-For` value.
    client_value: HeaderValue,
    /// Set when a request was upgraded; the connection task runs it.
    tunnel: Mutex<Option<Tunnel>>,
    /// Upstream response timers, kept between requests (one per request in
    /// flight, up to `KEPT_TIMERS`: HTTP/2 streams run side by side):
    /// moving a timer to a later deadline is an atomic store, where a new
    /// one per request is an allocation, an insertion into tokio's wheel
    /// and a removal.
    response_timers: Mutex<Vec<Pin<Box<Sleep>>>>,
}

impl Handler {
    pub fn new(
        rt: Arc<Runtime>,
        listener: Arc<str>,
        http: Arc<HttpListener>,
        info: ConnInfo,
        entry: Arc<ConnEntry>,
    ) -> Handler {
        let trusted_peer = http
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&info.peer.ip()));
        let client_value = ip_value(info.client.ip());
        Handler {
            rt,
            listener,
            http,
            info,
            conn_id: entry.id(),
            entry,
            requests: AtomicU64::new(0),
            trusted_peer,
            client_value,
            tunnel: Mutex::new(None),
            response_timers: Mutex::new(Vec::new()),
        }
    }

    /// A kept response timer (a new one if requests in flight hold them
    /// all), set to `deadline`.
    fn response_timer(&self, deadline: tokio::time::Instant) -> Pin<Box<Sleep>> {
        let kept = self
            .response_timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        match kept {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// A response timer back from its request, kept for the next one.
    fn keep_response_timer(&self, timer: Pin<Box<Sleep>>) {
        let mut kept = self
            .response_timers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if kept.len() < KEPT_TIMERS {
            kept.push(timer);
        }
    }

    /// How long a response may make no progress toward the client.
    pub fn send_timeout(&self) -> std::time::Duration {
        self.http.send_timeout
    }

    pub fn shutdown(&self) -> &crate::shutdown::ShutdownSignal {
        &self.rt.shutdown
    }

    pub fn take_tunnel(&self) -> Option<Tunnel> {
        self.tunnel.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Handles one request. What can be decided without waiting (checks,
    /// routing, the body policy, the upstream head) is decided here, when
    /// the future is made; the future holds only what the wait for the
    /// upstream needs (an `Outbound`), so it stays small to box and move.
    pub fn handle(
        &self,
        req: Request<ReqBody>,
    ) -> impl Future<Output = Response<Body>> + Send + '_ {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let version = req.version();
        let mut prepared = self.prepare(req);
        async move {
            // `prepared` is borrowed across the wait and consumed after it:
            // moved into a binding, it would be stored twice in this future.
            let exchanged = match &mut prepared {
                Ok(out) => self.exchange(out).await,
                Err(_) => Err(RequestEnd::Ok), // (not read: the answer is ready)
            };
            let mut resp = match prepared {
                Ok(out) => self.relay(out, exchanged),
                Err(answer) => answer,
            };
            // HTTP/2 streams end on their own (our HTTP/2 server removes
            // connection-specific headers from every response).
            if version == Version::HTTP_2 {
                *resp.version_mut() = Version::HTTP_2;
            } else if self
                .http
                .max_requests_per_connection
                .is_some_and(|max| n >= max)
            {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    }

    fn fail(&self, mut log: RequestLog, end: RequestEnd) -> Response<Body> {
        log.end = end;
        log.status = end.status().as_u16();
        respond(end, self.http.server_header.as_deref())
    }

    /// Everything before the upstream: the request's checks, its route and
    /// body policy, and its upstream head (hop-by-hop removed, forwarding
    /// headers added, target bytes untouched). `Err`: the proxy's answer.
    // (The `Ok` side is the larger one: boxing the answer would save nothing.)
    #[allow(clippy::result_large_err)]
    fn prepare(&self, req: Request<ReqBody>) -> Result<Outbound, Response<Body>> {
        // The newest config, for this request.
        let snap = self.rt.snapshot();
        let checked = match req.body() {
            ReqBody::H2(_) => headers::check_request(&req),
            // Our HTTP/1 parser applied the framing rules already.
            ReqBody::H1(_) | ReqBody::Empty => headers::check_host(&req),
        };
        // (An invalid Host is never reflected: not even in the log.)
        let host = checked.is_ok().then(|| request_host(&req)).flatten();
        let mut log = RequestLog::new(
            self.rt.table.metrics().clone(),
            self.http.access_log,
            self.conn_id,
            req.method().as_str(),
            host.as_deref().unwrap_or(""),
            req.uri().path(),
        );
        if uri_len(req.uri()) > self.http.max_uri_bytes {
            return Err(self.fail(log, RequestEnd::UriTooLong));
        }
        // A reverse proxy is no forward proxy: no tunnels to arbitrary hosts.
        if req.method() == http::Method::CONNECT {
            return Err(self.fail(log, RequestEnd::MethodNotAllowed));
        }
        if let Err(why) = checked {
            tracing::debug!(conn = self.conn_id, why, "bad request");
            return Err(self.fail(log, RequestEnd::BadRequest));
        }
        // ACME HTTP-01 challenges we have open are answered here; other
        // tokens go to the routes (an upstream may run its own ACME client).
        if let (Some(acme), Some(token)) = (
            &snap.tls.acme,
            req.uri()
                .path()
                .strip_prefix(crate::tls::acme::HTTP01_PREFIX),
        ) {
            if let Some(answer) = acme.http01_response(token) {
                log.status = 200;
                log.finished = true;
                let mut resp = Response::new(super::body::full(bytes::Bytes::from(answer)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                return Err(resp);
            }
        }
        let tls = self.info.tls.as_ref();
        let conn = RouteInput {
            // (A listener a reload removed: only routes for every listener.)
            listener: snap
                .listener(&self.listener)
                .map_or(usize::MAX, |l| l.index),
            local: self.info.local,
            client: self.info.client,
            sni: tls.and_then(|t| t.sni.as_deref()),
            identity: tls.and_then(|t| t.identity.as_deref()),
        };
        let view = RequestView {
            host: host.as_deref(),
            path: req.uri().path(),
            method: req.method().as_str(),
            headers: req.headers(),
        };
        let Some(route) = routing::select_http(&snap.routes, &snap.http_order, &conn, &view) else {
            return Err(self.fail(log, RequestEnd::NoRoute));
        };
        let policy = &route.config.policy;
        let in_flight = log.set_route(&route.stats);
        if policy
            .max_connections
            .is_some_and(|max| in_flight >= i64::from(max))
        {
            return Err(self.fail(log, RequestEnd::LimitRoute));
        }
        // Domain fronting: on terminated TLS the request must be for the
        // name the connection was set up for (RFC 9110 §7.4: 421).
        if let Some(sni) = tls.and_then(|t| t.sni.as_deref()) {
            if host.as_deref().is_some_and(|h| h != sni) && !policy.http.allow_domain_fronting {
                return Err(self.fail(log, RequestEnd::MisdirectedRequest));
            }
        }
        if let RouteAction::RedirectHttps { port } = &route.config.action {
            return Err(self.redirect_https(&req, host.as_deref(), *port, log));
        }

        // Body policy, checked before any upstream work. (A request whose
        // body has already ended, the usual GET, has no length or coding
        // to check: its framing said so.)
        let ended = req.body().is_end_stream();
        let length = if ended {
            None
        } else {
            req.headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if length.is_some_and(|l| l > policy.http.max_body_size) {
            return Err(self.fail(log, RequestEnd::BodyTooLarge));
        }
        let chunked = !ended && req.headers().contains_key(header::TRANSFER_ENCODING);
        if chunked && !policy.http.allow_chunked_requests {
            return Err(self.fail(log, RequestEnd::LengthRequired));
        }

        // HTTP/1.1 upgrades (the connection loop runs the tunnel) and
        // HTTP/2 extended CONNECTs (RFC 8441; the stream runs it), which our
        // HTTP/2 server hands over as upgrade requests.
        let extended = req.extensions().get::<ExtendedConnect>().cloned();
        if extended.is_some() && !policy.http.allow_upgrade {
            return Err(self.fail(log, RequestEnd::MethodNotAllowed));
        }
        let upgrade = policy.http.allow_upgrade
            && (req.version() == Version::HTTP_11 || extended.is_some())
            && wants_upgrade(&req);
        // No body and no upgrade: nothing to send after the head,
        // and there is no body to watch.
        let bodiless = !upgrade && ended;
        let (mut parts, body) = req.into_parts();
        let body = if bodiless {
            None
        } else {
            let outcome = Arc::new(BodyOutcome::default());
            log.request_body = Some(outcome.clone());
            let body = ClientBody::new(
                body,
                length,
                policy.http.max_body_size,
                policy.http.client_body_idle_timeout,
                outcome,
            );
            Some(Body::boxed(body))
        };

        let host_value = parts.headers.get(header::HOST).cloned().or_else(|| {
            let authority = parts.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        headers::remove_hop_by_hop(&mut parts.headers, upgrade);
        // What this hop sets, applied where the request is written.
        let mut set = headers::SetFields::with_capacity(6);
        let headers = &parts.headers;
        if headers.contains_key(header::EXPECT) {
            set.remove(header::EXPECT); // 100-continue is answered by our server side
        }
        headers::forwarding_fields(
            headers,
            &ForwardedFor {
                client: self.info.client.ip(),
                client_value: &self.client_value,
                proto: if self.info.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                host: host_value.as_ref(),
                trusted: self.trusted_peer,
                forwarded: self.http.forwarded,
            },
            &mut set,
        );
        if self.http.via {
            headers::via_field(headers, parts.version, &mut set);
        }
        // HTTP/2 (and absolute-form) requests carry the host in the target;
        // upstream, over HTTP/1.1, it goes in Host. An HTTP/1.0 request
        // without either gets the target's authority when its target is
        // chosen (`missing_host`).
        let missing_host = host_value.is_none();
        if !headers.contains_key(header::HOST) {
            if let Some(authority) = host_value {
                set.set(header::HOST, authority);
            }
        }
        parts.version = Version::HTTP_11;
        // The request's deadline counts from its record's start.
        let started = tokio::time::Instant::from_std(log.started);
        Ok(Outbound {
            route: route.index,
            snap: snap.clone(),
            head: UpstreamHead {
                req: Request::from_parts(parts, ()),
                set,
                missing_host,
                upgrade,
            },
            body,
            extended,
            deadline: policy.http.request_timeout.map(|d| started + d),
            log,
        })
    }

    /// The upstream exchange under the request's deadline.
    async fn exchange(&self, out: &mut Outbound) -> Exchanged {
        let route = &out.snap.routes[out.route];
        // (A split's cluster by weight.)
        let which = route.pick_cluster();
        let Some(pools) = out.snap.pools[out.route].get(which) else {
            return Err(RequestEnd::NoRoute);
        };
        let call = self.call_upstream(route, pools, &mut out.head, &mut out.body, &mut out.log);
        match out.deadline {
            Some(d) => tokio::time::timeout_at(d, call)
                .await
                .unwrap_or(Err(RequestEnd::RequestTimeout)),
            None => call.await,
        }
    }

    /// The upstream's response relayed with a streaming body (or the end
    /// of the exchange as the proxy's answer).
    fn relay(&self, out: Outbound, exchanged: Exchanged) -> Response<Body> {
        let policy = &out.snap.routes[out.route].config.policy;
        let mut log = out.log;
        let (resp, pooled) = match exchanged {
            Ok(r) => r,
            Err(end) => return self.fail(log, end),
        };
        log.status = resp.status().as_u16();
        if log.access_log {
            // (Only the access log line has this phase: no clock read without it.)
            log.headers_received = Some(log.started.elapsed());
        }

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS && out.head.upgrade {
            // A WebSocket upgrade we asked for on an HTTP/2 client's behalf
            // must prove the upstream speaks it (RFC 6455 §4.1).
            if let Some(accept) = out.extended.as_ref().and_then(|e| e.accept.as_ref()) {
                if resp.headers().get(header::SEC_WEBSOCKET_ACCEPT) != Some(accept) {
                    return self.fail(log, RequestEnd::UpstreamProtocolError);
                }
            }
            // The connection leaves its pool for good, for the tunnel.
            let Some(Sender::H1(conn)) = pooled.map(|p| p.sender) else {
                return self.fail(log, RequestEnd::UpstreamProtocolError);
            };
            let extended = out.extended.is_some();
            let tunnel = Tunnel {
                upstream: Handover::new(conn.into_upgraded()),
                idle: policy.idle_timeout,
                max_lifetime: policy.max_lifetime,
                closing: out.snap.routes[out.route].closing.clone(),
                log: (extended && log.access_log).then(|| {
                    Arc::new(TunnelLog {
                        conn: log.conn,
                        route: log.route.as_ref().map(|r| r.name.clone()),
                        upstream: log.upstream,
                    })
                }),
            };
            let (mut parts, _) = resp.into_parts();
            if extended {
                parts.extensions.insert(tunnel);
            } else {
                *self.tunnel.lock().unwrap_or_else(|p| p.into_inner()) = Some(tunnel);
            }
            headers::remove_hop_by_hop(&mut parts.headers, true);
            if self.http.via {
                headers::add_via(&mut parts.headers, Version::HTTP_11);
            }
            log.finished = true;
            return Response::from_parts(parts, empty());
        }
        // An extended CONNECT answered with success but no switch would
        // tell the client its tunnel is open: it is not.
        if out.extended.is_some() && resp.status().is_success() {
            return self.fail(log, RequestEnd::UpstreamProtocolError);
        }
        let (mut parts, body) = resp.into_parts();
        parts.version = Version::HTTP_11; // our hop's version (HTTP/2 is set in `handle`)
        headers::remove_hop_by_hop(&mut parts.headers, false);
        if self.http.via {
            headers::add_via(&mut parts.headers, Version::HTTP_11);
        }
        Response::from_parts(
            parts,
            Body::Upstream(Box::new(UpstreamBody::new(
                body,
                policy.http.upstream_body_idle_timeout,
                out.deadline,
                pooled,
                log,
            ))),
        )
    }

    /// Sends the request to an endpoint of the route's cluster: over
    /// HTTP/1.1 by our own client, over HTTP/2 by hyper's. Admitted within
    /// the cluster's cap on requests in flight; each attempt's outcome is
    /// reported to the endpoint's passive health; a failed attempt goes to
    /// another endpoint when `retry` allows. (A request that a reused
    /// connection could not take, the upstream having closed it while
    /// idle, goes once more on another connection: `goes_again`, not a
    /// retry.)
    async fn call_upstream(
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
                                *body = Some(super::body::full(k.clone()));
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
                        *body = Some(super::body::full(k.clone()));
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
                *body = Some(super::body::full(bytes.clone()));
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

/// How the upstream exchange ended: its response (with the connection,
/// for hyper's), or why not.
/// A response, and the connection it came on when the body does not
/// hold it (HTTP/2's, or one an upgrade takes).
type Answer = (Response<UpstreamInner>, Option<PooledConn>);
type Exchanged = Result<Answer, RequestEnd>;

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

/// A request's head as it goes upstream: method, target (as received:
/// origin-form is made where it is written), version and headers (less
/// hop-by-hop ones), and the fields this hop sets, applied where it is
/// written.
struct UpstreamHead {
    req: Request<()>,
    set: headers::SetFields,
    /// The client named no host (HTTP/1.0): `Host` is the target's.
    missing_host: bool,
    /// The request asks to switch protocols (`Upgrade`).
    upgrade: bool,
}

/// A request on its way upstream: what the wait for its response needs.
struct Outbound {
    /// The snapshot the request was routed in, and its route there.
    snap: Arc<Snapshot>,
    route: usize,
    head: UpstreamHead,
    /// The request body; `None` when there is none and no upgrade.
    body: Option<Body>,
    /// An HTTP/2 extended CONNECT: its tunnel goes with the response.
    extended: Option<ExtendedConnect>,
    /// The request's deadline (`request_timeout` from the record's start).
    deadline: Option<tokio::time::Instant>,
    log: RequestLog,
}

impl Handler {
    /// `308 Permanent Redirect` to the same host and target over HTTPS.
    fn redirect_https<B>(
        &self,
        req: &Request<B>,
        host: Option<&str>,
        port: Option<u16>,
        mut log: RequestLog,
    ) -> Response<Body> {
        let Some(host) = host else {
            return self.fail(log, RequestEnd::BadRequest);
        };
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let location = match port {
            None | Some(443) => format!("https://{host}{target}"),
            Some(p) => format!("https://{host}:{p}{target}"),
        };
        let Ok(location) = HeaderValue::from_str(&location) else {
            return self.fail(log, RequestEnd::BadRequest);
        };
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
        resp.headers_mut().insert(header::LOCATION, location);
        if let Some(s) = self
            .http
            .server_header
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
        {
            resp.headers_mut().insert(header::SERVER, s);
        }
        log.status = 308;
        log.end = RequestEnd::Ok;
        log.finished = true;
        resp
    }
}

/// Makes a request HTTP/2-ready for an upstream: version 2, and the host
/// moved from `Host` into the target's authority (`:authority`).
fn as_http2(req: &mut Request<Body>, scheme: &str) {
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

/// An address as a header value, formatted on the stack (IPv4 digit by
/// digit, without the formatting machinery): one allocation, the value's own.
fn ip_value(ip: std::net::IpAddr) -> HeaderValue {
    let mut buf = [0u8; 48];
    let len = match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = if octet >= 100 {
                    0
                } else if octet >= 10 {
                    1
                } else {
                    2
                };
                for d in &digits[skip..] {
                    buf[n] = b'0' + d;
                    n += 1;
                }
            }
            Some(n)
        }
        std::net::IpAddr::V6(_) => {
            use std::io::Write as _;
            let mut w = &mut buf[..];
            write!(w, "{ip}").ok().map(|()| 48 - w.len())
        }
    };
    len.and_then(|n| HeaderValue::from_bytes(&buf[..n]).ok())
        .unwrap_or_else(|| HeaderValue::from_static("unknown"))
}

/// Host from `Host` (or an absolute-form target), lower case, without port.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        // (The authority's text without userinfo: `Uri::host` parses it
        // again.)
        .or_else(|| {
            let a = req.uri().authority()?.as_str();
            Some(memchr::memrchr(b'@', a.as_bytes()).map_or(a, |at| &a[at + 1..]))
        })?;
    // (Bytes searched with memchr: `str` patterns cost more than the
    // short names they split.)
    let b = raw.as_bytes();
    let end = if b.first() == Some(&b'[') {
        memchr::memchr(b']', b).map_or(b.len(), |e| e + 1)
    } else {
        memchr::memchr(b':', b).unwrap_or(b.len())
    };
    Some(raw[..end].to_ascii_lowercase())
}

fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Length of the request target as received, without allocating.
fn uri_len(uri: &Uri) -> usize {
    let pq = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    pq + authority + scheme
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_host_is_lower_case_without_port_or_userinfo() {
        let host = |uri: &str, header: Option<&str>| {
            let mut req = Request::builder().uri(uri);
            if let Some(h) = header {
                req = req.header(header::HOST, h);
            }
            request_host(&req.body(()).unwrap())
        };
        assert_eq!(
            host("/", Some("App.Test:8080")).as_deref(),
            Some("app.test")
        );
        assert_eq!(host("/", Some("[::1]:443")).as_deref(), Some("[::1]"));
        assert_eq!(host("/", Some("[::1]")).as_deref(), Some("[::1]"));
        assert_eq!(
            host("http://u:p@Example.ORG:81/x", None).as_deref(),
            Some("example.org")
        );
        assert_eq!(
            host("http://[2001:db8::1]:8080/", None).as_deref(),
            Some("[2001:db8::1]")
        );
        // `Host` wins over the target's authority.
        assert_eq!(
            host("http://a.test/", Some("b.test")).as_deref(),
            Some("b.test")
        );
        assert_eq!(host("/", None), None);
    }

    #[test]
    fn addresses_format_like_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "9.99.199.250",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.1",
        ] {
            let addr: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(addr).to_str().unwrap(), addr.to_string(), "{ip}");
        }
    }
}
