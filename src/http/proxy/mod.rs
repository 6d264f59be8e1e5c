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
use tokio::time::Sleep;

use super::body::{Body, BodyOutcome, ClientBody, ReqBody, UpstreamBody, UpstreamInner, empty};
use super::error::{RequestEnd, respond};
use super::headers::{self, ForwardedFor};
use super::log::RequestLog;
use super::pool::{PooledConn, Sender};
use super::tunnel::{Handover, Tunnel, TunnelLog};

mod call;
mod mirror;
use super::plane::{Plane, View};
use crate::config::{HttpListener, RouteAction};
use crate::conn::ConnEntry;
use crate::filter;
use crate::routing::{self, RequestView, RouteInput};

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
    plane: Arc<Plane>,
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
        plane: Arc<Plane>,
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
            plane,
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
        &self.plane.rt.shutdown
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
            // A filter's wait before the upstream (a coalesced cache miss),
            // which may answer the request instead.
            let early = match &mut prepared {
                Ok(out) => match out.filters.as_mut().and_then(|s| s.before_upstream.take()) {
                    // (Boxed: the answer is held across the upstream wait.)
                    Some(wait) => match out.deadline {
                        Some(d) => tokio::time::timeout_at(d, wait).await.ok().flatten(),
                        None => wait.await,
                    }
                    .map(Box::new),
                    None => None,
                },
                Err(_) => None,
            };
            let exchanged = match (&mut prepared, &early) {
                (Ok(out), None) => self.exchange(out).await,
                _ => Err(RequestEnd::Ok), // (not read: the answer is ready)
            };
            let mut resp = match (prepared, early) {
                (Ok(out), Some(answer)) => self.filter_answer(out, *answer),
                (Ok(mut out), None) => match out.filters.take() {
                    None => self.relay(out, exchanged),
                    Some(mut state) => {
                        let chain = out.view.snap.routes[out.route].filters.clone();
                        filtered(&chain, self.relay(out, exchanged), &mut state)
                    }
                },
                (Err(answer), _) => answer,
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
        respond(end, self.http.server_header.as_deref(), log.grpc)
    }

    /// Everything before the upstream: the request's checks, its route and
    /// body policy, and its upstream head (hop-by-hop removed, forwarding
    /// headers added, target bytes untouched). `Err`: the proxy's answer.
    // (The `Ok` side is the larger one: boxing the answer would save nothing.)
    #[allow(clippy::result_large_err)]
    fn prepare(&self, req: Request<ReqBody>) -> Result<Outbound, Response<Body>> {
        // The newest config, for this request.
        let live = self.plane.view();
        let snap = &live.snap;
        let checked = match req.body() {
            ReqBody::H2(_) => headers::check_request(&req),
            // Our HTTP/1 parser applied the framing rules already.
            ReqBody::H1(_) | ReqBody::Empty => headers::check_host(&req),
        };
        // (An invalid Host is never reflected: not even in the log.)
        let host = checked.is_ok().then(|| request_host(&req)).flatten();
        let mut log = RequestLog::new(
            self.plane.rt.table.metrics().clone(),
            self.http.access_log,
            self.conn_id,
            req.method().as_str(),
            host.as_deref().unwrap_or(""),
            req.uri().path(),
        );
        log.grpc = super::error::is_grpc(req.headers());
        log.capture(&self.http, req.uri().query(), req.headers());
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
        log.redact_for(&route.config.log_redact);
        if route
            .stats
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(self.fail(log, RequestEnd::RouteDraining));
        }
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
        // Its trace context, carried upstream (`[tracing]`; off: nothing).
        let mut req = req;
        log.trace = crate::trace::start(req.headers_mut());
        // The route's filters (most routes have none: nothing is made).
        let (req, filters, mut log) = if route.filters.is_empty() {
            (req, None, log)
        } else {
            let (req, state, log) = self.run_filters(route, req, log)?;
            (req, Some(state), log)
        };

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
        let req = Request::from_parts(parts, ());
        // A copy for the route's mirror, sampled.
        let body = match (&route.config.mirror, &live.mirrors[route.index]) {
            (Some(m), Some(pools))
                if !upgrade && mirror::sampled(route.mirror_turn(), m.percent) =>
            {
                mirror::tap(
                    m,
                    pools,
                    &route.stats,
                    policy.connect_timeout,
                    &req,
                    &set,
                    body,
                    length,
                )
            }
            _ => body,
        };
        // The request's deadline counts from its record's start.
        let started = tokio::time::Instant::from_std(log.started);
        Ok(Outbound {
            route: route.index,
            view: live.clone(),
            head: UpstreamHead {
                req,
                set,
                missing_host,
                upgrade,
            },
            body,
            extended,
            deadline: policy.http.request_timeout.map(|d| started + d),
            log,
            filters,
        })
    }

    /// The route's filters on a request: it goes on (changed or not), with
    /// its filter state, or is answered here.
    #[allow(clippy::result_large_err, clippy::type_complexity)]
    fn run_filters(
        &self,
        route: &routing::Route,
        mut req: Request<ReqBody>,
        mut log: RequestLog,
    ) -> Result<(Request<ReqBody>, Box<filter::State>, RequestLog), Response<Body>> {
        let sni = self.info.tls.as_ref().and_then(|t| t.sni.as_deref());
        let client = self.filter_client(req.headers());
        let mut state = Box::new(filter::State::new(
            log.started,
            client,
            self.info.peer.ip(),
            route.name.clone(),
            sni.map(Arc::from),
        ));
        state.route_value = route.name_value.clone();
        if client == self.info.client.ip() {
            state.client_value = Some(self.client_value.clone());
        }
        // (The head stays in place: a standard method's clone is a copy,
        // the target moves out and back.)
        let method = req.method().clone();
        let mut uri = std::mem::take(req.uri_mut());
        let verdict = route.filters.request(&mut filter::Request {
            method: &method,
            uri: &mut uri,
            headers: req.headers_mut(),
            state: &mut state,
        });
        *req.uri_mut() = uri;
        log.request_id = state.request_id.clone();
        match verdict {
            Ok(()) => Ok((req, state, log)),
            Err(answer) => {
                let resp = self.answer_response(answer, log);
                Err(filtered(&route.filters, resp, &mut state))
            }
        }
    }

    /// A filter's answer given instead of the upstream's (after a wait
    /// before the upstream), through the response side of the filters.
    fn filter_answer(&self, mut out: Outbound, answer: filter::Answer) -> Response<Body> {
        let state = out.filters.take();
        let resp = self.answer_response(answer, out.log);
        match state {
            Some(mut state) => {
                let chain = out.view.snap.routes[out.route].filters.clone();
                filtered(&chain, resp, &mut state)
            }
            None => resp,
        }
    }

    /// A filter's answer as the response (a rejection's with the proxy's
    /// error body), and the request's record ended with it.
    fn answer_response(&self, answer: filter::Answer, mut log: RequestLog) -> Response<Body> {
        log.end = answer.end;
        log.status = answer.status.as_u16();
        let mut resp = if answer.end == RequestEnd::Ok {
            log.finished = true;
            log.bytes_down = answer.body.len() as u64;
            Response::new(super::body::full(answer.body))
        } else {
            respond(answer.end, self.http.server_header.as_deref(), log.grpc)
        };
        // (A gRPC client reads the failure in the trailers, under a 200.)
        if answer.end == RequestEnd::Ok || !log.grpc {
            *resp.status_mut() = answer.status;
        }
        for (name, value) in answer.headers {
            resp.headers_mut().append(name, value);
        }
        resp
    }

    /// The client's address for filters: the connection's (after a PROXY
    /// header), or from a trusted proxy, the last `X-Forwarded-For` address
    /// that is not one of the trusted proxies.
    fn filter_client(&self, headers: &http::HeaderMap) -> std::net::IpAddr {
        let direct = self.info.client.ip();
        if !self.trusted_peer {
            return direct;
        }
        let trusted = &self.http.trusted_proxies;
        let listed = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .flat_map(|v| {
                v.to_str()
                    .unwrap_or("")
                    .rsplit(',')
                    .map(|a| a.trim().parse::<std::net::IpAddr>().ok())
            });
        for addr in listed {
            match addr {
                Some(a) if trusted.iter().any(|n| n.contains(&a)) => continue,
                Some(a) => return a,
                None => break,
            }
        }
        direct
    }

    /// The upstream exchange under the request's deadline.
    async fn exchange(&self, out: &mut Outbound) -> Exchanged {
        let route = &out.view.snap.routes[out.route];
        // (A split's cluster by weight.)
        let which = route.pick_cluster();
        let Some(pools) = out.view.pools[out.route].get(which) else {
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
        let policy = &out.view.snap.routes[out.route].config.policy;
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
                closing: out.view.snap.routes[out.route].closing.clone(),
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
}

/// A response, and the connection it came on when the body does not
/// hold it (HTTP/2's, or one an upgrade takes).
type Answer = (Response<UpstreamInner>, Option<PooledConn>);
type Exchanged = Result<Answer, RequestEnd>;

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
    /// The view (snapshot and pools) the request was routed in, and its
    /// route there.
    view: Arc<View>,
    route: usize,
    head: UpstreamHead,
    /// The request body; `None` when there is none and no upgrade.
    body: Option<Body>,
    /// An HTTP/2 extended CONNECT: its tunnel goes with the response.
    extended: Option<ExtendedConnect>,
    /// The request's deadline (`request_timeout` from the record's start).
    deadline: Option<tokio::time::Instant>,
    log: RequestLog,
    /// The filter state of a route with filters.
    filters: Option<Box<filter::State>>,
}

/// `resp` after the response side of the filters that ran on its request.
fn filtered(
    chain: &filter::Chain,
    mut resp: Response<Body>,
    state: &mut filter::State,
) -> Response<Body> {
    let mut status = resp.status();
    let mut transforms = Vec::new();
    chain.response(&mut status, resp.headers_mut(), state, &mut transforms);
    *resp.status_mut() = status;
    if transforms.is_empty() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        Body::boxed(super::body::Transformed::new(body, transforms)),
    )
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
