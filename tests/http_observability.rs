//! One access-log line per request, naming the route, status, bytes, phase
//! durations, upstream and reason, and never a credential; per-route HTTP
//! metrics; graceful shutdown of HTTP connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn access_log_line_per_request_without_secrets() {
    let (backend, _) = raw_http_backend(|_| {
        b"HTTP/1.1 200 OK\r\nSet-Cookie: session=SETCOOKIESECRET\r\nContent-Length: 5\r\n\r\nhello"
            .to_vec()
    });
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let req = b"POST /login?token=QUERYSECRET HTTP/1.1\r\nHost: shop.test\r\nAuthorization: Bearer AUTHSECRET\r\n\
                Cookie: id=COOKIESECRET\r\nProxy-Authorization: Basic PROXYSECRET\r\nContent-Length: 3\r\n\r\nabc";
    let (head, _) = raw_exchange(gh.addr("web"), req);
    assert!(head.starts_with("HTTP/1.1 200"));
    raw_exchange(
        gh.addr("web"),
        b"GET /missing HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 0\r\n\r\n",
    );
    gh.wait_for("two access log lines", Duration::from_secs(3), |g| {
        g.log_text().matches("\"gatehouse::access\"").count() == 2
    });
    let log = gh.log_text();
    for secret in [
        "QUERYSECRET",
        "AUTHSECRET",
        "COOKIESECRET",
        "PROXYSECRET",
        "SETCOOKIESECRET",
    ] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
    let line: serde_json::Value = serde_json::from_str(
        log.lines()
            .find(|l| l.contains("\"gatehouse::access\""))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["method"], "POST");
    assert_eq!(line["host"], "shop.test");
    assert_eq!(line["path"], "/login");
    assert_eq!(line["route"], "app");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_up"], 3);
    assert_eq!(line["bytes_down"], 5);
    assert_eq!(line["reason"], "ok");
    assert!(line["upstream"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(line["headers_ms"].as_f64().is_some() && line["total_ms"].as_f64().is_some());
    // The upstream connection was made once and timed.
    assert_eq!(
        gh.metric(
            "gatehouse_upstream_connect_seconds_count",
            &[("route", "app")]
        ),
        1
    );
    assert_eq!(
        gh.metric(
            "gatehouse_http_requests_total",
            &[("route", "app"), ("status", "2xx")]
        ),
        2
    );
}

#[test]
fn shutdown_finishes_the_request_in_flight_and_closes_idle_keep_alive() {
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(gate_rx);
    let (backend, _) = raw_http_backend(move |r| {
        if r.request_line().contains("/slow") {
            gate.lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10))
                .unwrap();
            ok_response("second")
        } else {
            ok_response("first")
        }
    });
    let gh = Gatehouse::start(&http_config(
        "timeouts.shutdown_drain = \"10s\"",
        "",
        backend,
        "",
    ));
    let addr = gh.addr("web");
    // An idle keep-alive client, and one with a request in flight.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut idle);
    assert!(head.starts_with("HTTP/1.1 200"));
    let mut busy = TcpStream::connect(addr).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    gh.wait_for("the request in flight", Duration::from_secs(3), |g| {
        g.metric("gatehouse_http_requests_in_flight", &[("route", "app")]) == 1
    });
    gh.signal("TERM");
    let closed_in = wait_closed(&mut idle, Duration::from_secs(3));
    assert!(
        closed_in < Duration::from_secs(2),
        "idle keep-alive connection lingered {closed_in:?}"
    );
    gate_tx.send(()).unwrap();
    let (head, body) = read_response(&mut busy);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"second");
    let start = Instant::now();
    let status = gh.terminate(Duration::from_secs(5));
    assert!(status.success());
    assert!(start.elapsed() < Duration::from_secs(3));
}
