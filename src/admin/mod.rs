//! The admin listener (separate bind, default 127.0.0.1:9901): `GET /` (the
//! list of endpoints), `GET /healthz`,
//! `GET /connections` (the live connection table as JSON) and `GET /metrics`
//! (Prometheus text), `POST /tls/reload` (read every certificate from disk
//! again; a file that fails keeps its previous certificate), and the
//! running config: `GET /config`, `POST /config/reload`, `POST
//! /config/validate`; the clusters and their endpoints (`clusters`); the
//! registry (`services`); the leak audit (`audit`).
//! Bounded like the data plane: a cap on concurrent
//! admin connections, a deadline on reading request headers, a cap on a
//! request body.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub mod audit;
mod clusters;
mod connections;
mod openapi;
mod services;

use crate::http::Plane;
use crate::reload::Reloader;

const MAX_ADMIN_CONNECTIONS: usize = 64;

/// `GET /`: what the admin API offers.
const INDEX: &str = "Gatehouse admin API\n\
GET  /              this list\n\
GET  /healthz       liveness: 200 \"ok\"\n\
GET  /openapi.json  this API as an OpenAPI 3.1 document\n\
GET  /dashboard     the dashboard (HTML): routes, clusters, services, connections, ends, certificates\n\
GET  /connections   the live connection table (JSON); filters: ?route=&listener=&state=&client=CIDR&older_than=30s\n\
DELETE /connections/ID           close one connection (it ends as admin_closed)\n\
POST /connections/close?FILTERS  close every connection the filters match (at least one filter)\n\
GET  /routes        every route: live connections, requests, bytes, whether it is drained (JSON)\n\
POST /routes/NAME/drain          take no new connections or requests on it (503 / closed: route_draining)\n\
DELETE /routes/NAME/drain        take them again\n\
GET  /metrics       Prometheus metrics (text format 0.0.4)\n\
POST /tls/reload    read every certificate from disk again (JSON: what was reloaded)\n\
GET  /config        the running config (every setting, as TOML) and its generation (JSON)\n\
POST /config/reload read the config file again and apply it (JSON: what changed, or every error)\n\
POST /config/validate  check the TOML in the body without applying it (JSON: every error)\n\
GET  /audit         the leak audit: the connection table and pools against the process's sockets and pipes (JSON: every mismatch)\n\
GET  /clusters      every cluster and endpoint: state, load, latency, last probe, history (JSON)\n\
POST /clusters/NAME/endpoints          add an endpoint: {\"address\": \"ip:port\", \"weight\": 1}\n\
PATCH /clusters/NAME/endpoints/IP:PORT set its weight: {\"weight\": 5}\n\
DELETE /clusters/NAME/endpoints/IP:PORT[?drain=30s]  drain it (no new requests; it leaves when idle or at the deadline; 0s: at once)\n\
GET  /services      registered services and their instances (JSON)\n\
GET  /services/SERVICE           one service's instances (JSON)\n\
PUT  /services/SERVICE/instances/ID            register an instance: {\"address\": \"ip:port\", \"ttl\": \"30s\", \"weight\": 1, \"tags\": []}\n\
POST /services/SERVICE/instances/ID/heartbeat  renew its TTL\n\
DELETE /services/SERVICE/instances/ID          deregister it\n\
Every path is also under /v1 (e.g. /v1/services). With admin.token_file or\n\
admin.token_env set, writes need Authorization: Bearer <token>.\n";

/// The dashboard: one page, embedded, polling this API (no build step,
/// nothing fetched from elsewhere).
const DASHBOARD: &str = include_str!("dashboard.html");

/// The largest config accepted by `POST /config/validate`.
const MAX_CANDIDATE: usize = 1 << 20;

/// A descriptor held in reserve for the admin listener: when the process
/// is out of descriptors, it is given up so that the operator's request
/// can be accepted, then taken again.
fn reserve_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

type Reserve = Arc<std::sync::Mutex<Option<std::fs::File>>>;

fn take_reserve(r: &Reserve) -> Option<std::fs::File> {
    r.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// An admin connection's socket. When the connection ends it becomes the
/// reserve in place: /dev/null is duplicated onto its descriptor (`dup2`,
/// which closes the socket), so the number is never free for a data
/// listener to take between the close and a refill.
struct AdminIo {
    stream: Option<tokio::net::TcpStream>,
    reserve: Reserve,
    /// /dev/null, kept open to be duplicated.
    null: Option<Arc<std::fs::File>>,
}

impl AdminIo {
    fn stream(&mut self) -> std::io::Result<Pin<&mut tokio::net::TcpStream>> {
        match self.stream.as_mut() {
            Some(s) => Ok(Pin::new(s)),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Drop for AdminIo {
    fn drop(&mut self) {
        let (Some(stream), Some(null)) = (self.stream.take(), &self.null) else {
            return;
        };
        let Ok(stream) = stream.into_std() else {
            return;
        };
        let mut fd = std::os::fd::OwnedFd::from(stream);
        if rustix::io::dup2(&**null, &mut fd).is_ok() {
            let mut r = self.reserve.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(std::fs::File::from(fd));
            }
        }
    }
}

impl tokio::io::AsyncRead for AdminIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncWrite for AdminIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

fn refill_reserve(r: &Reserve) {
    let mut r = r.lock().unwrap_or_else(|p| p.into_inner());
    if r.is_none() {
        *r = reserve_fd();
    }
}

/// The admin listener's accept loop. Its reserve descriptors are opened
/// here, before the loop is spawned, so that they are among the lowest
/// numbers: one freed must be under the descriptor limit even when the
/// limit is later lowered under the running process.
pub fn serve(
    listener: TcpListener,
    plane: Arc<Plane>,
    reloader: Arc<Reloader>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    // (Shared with the connections' tasks: the descriptor of one that
    // ends becomes the reserve when it is missing: `AdminIo`.)
    let reserve = Arc::new(std::sync::Mutex::new(reserve_fd()));
    let null = reserve_fd().map(Arc::new);
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    tokio::spawn(audit::periodic(plane.clone(), addr));
    let shared = Arc::new(Shared {
        plane,
        reloader,
        addr,
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        reserve,
        null,
    });
    accept_loop(listener, shared, stop)
}

/// What the admin listener's connections share.
struct Shared {
    plane: Arc<Plane>,
    reloader: Arc<Reloader>,
    /// The listener's own address (the leak audit's).
    addr: std::net::SocketAddr,
    /// `admin.tls`: every connection's handshake first.
    tls: Option<tokio_rustls::TlsAcceptor>,
    reserve: Reserve,
    null: Option<Arc<std::fs::File>>,
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let mut backoff = crate::listener::AcceptBackoff::default();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        // (A successor that took the socket over accepts from then on.)
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                if crate::listener::out_of_fds(&e) && take_reserve(&shared.reserve).is_some() {
                    continue; // a descriptor is free now: accept again
                }
                backoff.failed("admin", &e).await;
                continue;
            }
        };
        backoff.succeeded();
        refill_reserve(&shared.reserve);
        let io = AdminIo {
            stream: Some(stream),
            reserve: shared.reserve.clone(),
            null: shared.null.clone(),
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            // (One deadline for the handshake and the connection's life.)
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            match &shared.tls {
                None => {
                    let _ = tokio::time::timeout_at(deadline, serve_http(io, &shared)).await;
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(io));
                    if let Ok(Ok(tls)) = handshake.await {
                        let _ = tokio::time::timeout_at(deadline, serve_http(tls, &shared)).await;
                    }
                }
            }
            refill_reserve(&shared.reserve);
            drop(permit);
        });
    }
}

/// HTTP/1.1 on one admin connection (plain, or after its TLS handshake).
async fn serve_http<T>(io: T, shared: &Arc<Shared>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let shared = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move {
            Ok::<_, Infallible>(handle(&shared.plane, &shared.reloader, shared.addr, req).await)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(io), service);
    let _ = conn.await;
}

/// The request body, up to `max` bytes (`None`: longer, or cut).
async fn read_body(req: Request<Incoming>, max: usize) -> Option<Bytes> {
    use http_body_util::BodyExt as _;
    let body = http_body_util::Limited::new(req.into_body(), max);
    body.collect().await.ok().map(|b| b.to_bytes())
}

/// With a token configured: a write (any method but GET and HEAD), or a
/// read when reads are not public, without `Authorization: Bearer` is
/// 401; with another token, 403. `None`: let through. The token is never
/// logged or echoed.
fn authorize(
    access: &crate::config::AdminAccess,
    req: &Request<Incoming>,
) -> Option<Response<Full<Bytes>>> {
    let token = access.token.as_ref()?;
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    // (Liveness stays open: probes carry no token.)
    if read && (access.public_reads || req.uri().path() == "/healthz") {
        return None;
    }
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let (status, message) = match presented {
        None => (
            StatusCode::UNAUTHORIZED,
            "this needs the admin token: Authorization: Bearer <token>",
        ),
        Some(t) if token.matches(t.as_bytes()) => return None,
        Some(_) => (
            StatusCode::FORBIDDEN,
            "the admin token presented is not the right one",
        ),
    };
    let mut resp = reply(
        status,
        "application/json",
        serde_json::json!({ "error": message }).to_string(),
    );
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"gatehouse-admin\""),
        );
    }
    Some(resp)
}

async fn handle(
    plane: &Plane,
    reloader: &Reloader,
    admin: std::net::SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let rt = &plane.rt;
    let json = |status, v: serde_json::Value| reply(status, "application/json", v.to_string());
    if let Some(denied) = authorize(&rt.current().config.admin_access, &req) {
        return denied;
    }
    // (Every path is under /v1 too.)
    let path = match req.uri().path().strip_prefix("/v1") {
        Some("") => "/".to_owned(),
        Some(p) if p.starts_with('/') => p.to_owned(),
        _ => req.uri().path().to_owned(),
    };
    if path == "/services" || path.starts_with("/services/") {
        let method = req.method().clone();
        let Some(body) = read_body(req, services::MAX_BODY).await else {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": format!("body: at most {} bytes", services::MAX_BODY) }),
            );
        };
        let (status, v) = services::handle(&rt.registry, &method, &path, &body).await;
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return json(status, v);
    }
    if path == "/connections" || path == "/metrics" {
        rt.kernel.fresh().await;
    }
    if ["/connections", "/routes"].iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }) {
        let (status, v) = table_api(plane, req.method(), &path, req.uri().query());
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return json(status, v);
    }
    match (req.method(), path.as_str()) {
        (&Method::POST, "/tls/reload") => {
            let loaded = rt.snapshot().tls.certs.reload_all();
            return json(StatusCode::OK, serde_json::json!({ "reloaded": loaded }));
        }
        (&Method::POST, "/config/reload") => {
            return match reloader.reload().await {
                Ok(changes) => json(StatusCode::OK, serde_json::json!({ "applied": changes })),
                Err(e) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({ "refused": e.to_string().lines().collect::<Vec<_>>() }),
                ),
            };
        }
        (&Method::POST, "/config/validate") => return validate(req).await,
        (&Method::POST, "/audit/leak") if audit::test_hooks() => {
            let to = req.uri().query().and_then(|q| q.strip_prefix("to="));
            return match to.and_then(|t| t.parse().ok()).map(audit::leak_socket) {
                Some(Ok(local)) => json(
                    StatusCode::OK,
                    serde_json::json!({ "leaked": local.to_string() }),
                ),
                Some(Err(e)) => json(
                    StatusCode::BAD_GATEWAY,
                    serde_json::json!({ "error": e.to_string() }),
                ),
                None => json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": "?to=ip:port" }),
                ),
            };
        }
        (&Method::POST | &Method::PATCH | &Method::DELETE, path)
            if path.starts_with("/clusters/") =>
        {
            return change_cluster(rt, path, req).await;
        }
        (&Method::GET, _) => {}
        _ => {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "only GET (and POST /tls/reload, /config/reload, /config/validate; POST, PATCH, DELETE under /clusters/)\n".into(),
            );
        }
    }
    match path.as_str() {
        "/" => reply(StatusCode::OK, "text/plain", INDEX.into()),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/openapi.json" => reply(StatusCode::OK, "application/json", openapi::document()),
        "/dashboard" => {
            let mut resp = reply(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD.into());
            // (Everything it needs is in the page or on this listener.)
            resp.headers_mut().insert(
                http::header::CONTENT_SECURITY_POLICY,
                http::HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
                ),
            );
            resp
        }
        "/clusters" => json(StatusCode::OK, clusters::list(&plane.view())),
        "/audit" => match serde_json::to_value(audit::run(plane, admin).await) {
            Ok(v) => json(StatusCode::OK, v),
            Err(e) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": e.to_string() }),
            ),
        },
        "/config" => {
            let snap = rt.snapshot();
            json(
                StatusCode::OK,
                serde_json::json!({
                    "generation": snap.generation,
                    "config": crate::config::print(&snap.config),
                }),
            )
        }
        "/metrics" => {
            let snap = rt.snapshot();
            let metrics = rt.table.metrics();
            let live = crate::metrics::Live {
                connections: rt.table.active(),
                by_state: rt.table.count_by_route_state(),
                bytes: rt.table.live_bytes(),
            };
            let mut text = metrics.render(&live);
            process_metrics(&mut text);
            audit::render_metrics(&mut text);
            rt.kernel.render_metrics(&mut text);
            snap.tls.certs.render_metrics(&mut text);
            clusters::render_metrics(&snap, &mut text);
            text.push_str(&format!(
                "# HELP gatehouse_http_parked_connections Idle connections waiting without a task: HTTP/1 keep-alive connections and upgraded tunnels.\n# TYPE gatehouse_http_parked_connections gauge\ngatehouse_http_parked_connections {}\n",
                plane.parking.len()
            ));
            text.push_str(&format!(
                "# HELP gatehouse_config_generation The running config's generation: 1 at start, one more per applied reload.\n# TYPE gatehouse_config_generation gauge\ngatehouse_config_generation {}\n\
                 # HELP gatehouse_config_reloads_total Config reloads, by result: applied, or refused (the running config stayed).\n# TYPE gatehouse_config_reloads_total counter\n\
                 gatehouse_config_reloads_total{{result=\"applied\"}} {}\ngatehouse_config_reloads_total{{result=\"refused\"}} {}\n",
                snap.generation,
                metrics.reloads[0].load(std::sync::atomic::Ordering::Relaxed),
                metrics.reloads[1].load(std::sync::atomic::Ordering::Relaxed),
            ));
            if let Some(acme) = &snap.tls.acme {
                acme.render_metrics(&mut text);
            }
            reply(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// The connection table and the routes (`connections`).
fn table_api(
    plane: &Plane,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> (u16, serde_json::Value) {
    let rt = &plane.rt;
    let table = &rt.table;
    match (method, path) {
        (&Method::GET, "/connections") => {
            connections::list((table, &rt.kernel), &rt.current().config, query)
        }
        (&Method::POST, "/connections/close") => connections::close_matching(table, query),
        (&Method::DELETE, p) if p.starts_with("/connections/") => {
            connections::close(table, &p["/connections/".len()..])
        }
        (&Method::GET, "/routes") => (200, connections::routes(&rt.snapshot(), table, &rt.kernel)),
        (&Method::POST | &Method::DELETE, p)
            if p.starts_with("/routes/") && p.ends_with("/drain") =>
        {
            let name = &p["/routes/".len()..p.len() - "/drain".len()];
            connections::drain(
                &rt.snapshot(),
                (table, &rt.kernel),
                name,
                method == Method::POST,
            )
        }
        _ => (
            404,
            serde_json::json!({ "error": format!("no {method} {path}") }),
        ),
    }
}

/// A change to a cluster's endpoints (`clusters::change`).
async fn change_cluster(
    rt: &crate::runtime::Runtime,
    path: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let Some(body) = read_body(req, 64 * 1024).await else {
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text/plain",
            "at most 64 KiB\n".into(),
        );
    };
    let (status, answer) = clusters::change(&rt.snapshot(), &method, path, query.as_deref(), &body);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    reply(status, "application/json", answer.to_string())
}

/// `POST /config/validate`: the body checked as a config file would be
/// (with this process's environment for `${VAR}`), nothing applied.
async fn validate(req: Request<Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt as _;
    let json = |status, v: serde_json::Value| reply(status, "application/json", v.to_string());
    let body = match http_body_util::Limited::new(req.into_body(), MAX_CANDIDATE)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({ "errors": [format!("a candidate is at most {MAX_CANDIDATE} bytes")] }),
            );
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({ "errors": ["the candidate is not UTF-8 text"] }),
        );
    };
    let env = |name: &str| std::env::var(name).ok();
    match crate::config::parse("candidate", text, &env) {
        Ok(c) => json(
            StatusCode::OK,
            serde_json::json!({
                "valid": true,
                "warnings": c.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        ),
        Err(e) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({
                "valid": false,
                "errors": e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// The process-wide counters of the splice pool and the upstream pools.
fn process_metrics(out: &mut String) {
    use std::fmt::Write as _;
    out.push_str("# HELP gatehouse_splice_pipes Pipes of the splice pool, leased or pooled (two FDs each).\n");
    out.push_str("# TYPE gatehouse_splice_pipes gauge\n");
    let _ = writeln!(
        out,
        "gatehouse_splice_pipes{{state=\"existing\"}} {}",
        crate::splice::pipes_existing()
    );
    let _ = writeln!(
        out,
        "gatehouse_splice_pipes{{state=\"pooled\"}} {}",
        crate::splice::pipes_pooled()
    );
    crate::metrics::render_single(
        out,
        "gatehouse_spliced_bytes_total",
        "counter",
        "Bytes moved with splice(2), never copied through the process (L4 forwarding and HTTP/1 response bodies).",
        crate::splice::bytes_spliced(),
    );

    #[cfg(feature = "send-batch")]
    crate::metrics::render_single(
        out,
        "gatehouse_upstream_send_batches_total",
        "counter",
        "Submissions (one io_uring_enter each) that wrote queued upstream request heads.",
        crate::http::pool::send_batch::submissions(),
    );
    #[cfg(feature = "send-batch")]
    crate::metrics::render_single(
        out,
        "gatehouse_upstream_batched_sends_total",
        "counter",
        "Upstream request heads written through those submissions.",
        crate::http::pool::send_batch::sends(),
    );

    let (kept, closed) = crate::http::pool::abandoned_counts();
    out.push_str(&format!(
        "# HELP gatehouse_upstream_abandoned_total Upstream requests whose client went away before the response head (a reset HTTP/2 stream, a closed connection), by what became of their connection: kept (unused, or its response drained) or closed.\n\
         # TYPE gatehouse_upstream_abandoned_total counter\n\
         gatehouse_upstream_abandoned_total{{connection=\"kept\"}} {kept}\n\
         gatehouse_upstream_abandoned_total{{connection=\"closed\"}} {closed}\n"
    ));
}
