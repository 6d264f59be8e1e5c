//! The admin listener (separate bind, default 127.0.0.1:9901): `GET /` (the
//! list of endpoints), `GET /healthz`,
//! `GET /connections` (the live connection table as JSON) and `GET /metrics`
//! (Prometheus text), `POST /tls/reload` (read every certificate from disk
//! again; a file that fails keeps its previous certificate). Bounded like the data plane: a cap on concurrent admin
//! connections and a deadline on reading request headers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::server::Runtime;

const MAX_ADMIN_CONNECTIONS: usize = 64;

/// `GET /`: what the admin API offers.
const INDEX: &str = "Gatehouse admin API\n\
GET  /              this list\n\
GET  /healthz       liveness: 200 \"ok\"\n\
GET  /connections   the live connection table (JSON)\n\
GET  /metrics       Prometheus metrics (text format 0.0.4)\n\
POST /tls/reload    read every certificate from disk again (JSON: what was reloaded)\n";

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

fn refill_reserve(r: &Reserve) {
    let mut r = r.lock().unwrap_or_else(|p| p.into_inner());
    if r.is_none() {
        *r = reserve_fd();
    }
}

pub async fn serve(listener: TcpListener, rt: Arc<Runtime>) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    // (Shared with the connections' tasks: one that ends frees a
    // descriptor, which the reserve takes back at once.)
    let reserve = Arc::new(std::sync::Mutex::new(reserve_fd()));
    let mut backoff = crate::listener::AcceptBackoff::default();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                if crate::listener::out_of_fds(&e) && take_reserve(&reserve).is_some() {
                    continue; // a descriptor is free now: accept again
                }
                backoff.failed("admin", &e).await;
                continue;
            }
        };
        backoff.succeeded();
        refill_reserve(&reserve);
        let reserve = reserve.clone();
        let rt = rt.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let rt = rt.clone();
                async move { Ok::<_, Infallible>(handle(&rt, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
            refill_reserve(&reserve);
            drop(permit);
        });
    }
}

fn handle(rt: &Runtime, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() == Method::POST && req.uri().path() == "/tls/reload" {
        let loaded = rt.tls.certs.reload_all();
        let body = serde_json::json!({ "reloaded": loaded }).to_string();
        return reply(StatusCode::OK, "application/json", body);
    }
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET (and POST /tls/reload)\n".into(),
        );
    }
    match req.uri().path() {
        "/" => reply(StatusCode::OK, "text/plain", INDEX.into()),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/connections" => {
            let body = serde_json::json!({
                "active": rt.table.active(),
                "connections": rt.table.snapshot(),
            });
            reply(StatusCode::OK, "application/json", body.to_string())
        }
        "/metrics" => {
            let mut text = rt.table.metrics().render(&rt.table);
            rt.tls.certs.render_metrics(&mut text);
            text.push_str(&format!(
                "# HELP gatehouse_http_parked_connections Idle connections waiting without a task: HTTP/1 keep-alive connections and upgraded tunnels.\n# TYPE gatehouse_http_parked_connections gauge\ngatehouse_http_parked_connections {}\n",
                rt.parking.len()
            ));
            if let Some(acme) = &rt.tls.acme {
                acme.render_metrics(&mut text);
            }
            reply(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
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
