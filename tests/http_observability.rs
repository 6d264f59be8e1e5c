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
    // (The upstream connection goes back to the pool a moment after the
    // client has the whole response: the next request reuses it.)
    gh.wait_for(
        "the upstream connection idle in its pool",
        Duration::from_secs(3),
        |g| {
            let (_, c) = g.admin_call("GET", "/v1/clusters", "");
            c["clusters"][0]["endpoints"][0]["connections"]["idle"] == 1
        },
    );
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

fn access_lines(gh: &Gatehouse) -> Vec<serde_json::Value> {
    gh.log_text()
        .lines()
        .filter(|l| l.contains("\"gatehouse::access\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Durations at most to the microsecond; a normal end blames no side; a
/// request that failed to reach its upstream still names it.
#[test]
fn access_log_lines_are_easy_to_read() {
    let (backend, _) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let (head, _) = raw_exchange(
        gh.addr("web"),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"));
    let refused = refused_addr();
    let gh502 = Gatehouse::start(&http_config("", "", refused.addr, ""));
    let (head, _) = raw_exchange(
        gh502.addr("web"),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    for gh in [&gh, &gh502] {
        gh.wait_for("the access line", Duration::from_secs(3), |g| {
            !access_lines(g).is_empty()
        });
    }
    let ok = &access_lines(&gh)[0];
    assert_eq!(ok["reason"], "ok");
    assert!(ok.get("side").is_none(), "{ok}");
    for field in ["connect_ms", "headers_ms", "total_ms"] {
        assert!(ok[field].as_f64().is_some(), "{field} missing: {ok}");
        let text = ok[field].to_string();
        let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 3, "{field} = {text}");
    }
    let failed = &access_lines(&gh502)[0];
    assert_eq!(failed["status"], 502);
    assert_eq!(failed["side"], "upstream");
    assert_eq!(failed["upstream"], refused.addr.to_string());
}

/// An upgraded connection writes its 101 as a request, then, at its end,
/// a line with the tunnel's totals and why it ended.
#[test]
fn an_upgraded_connection_is_logged_at_its_end_with_its_totals() {
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        read_request(&mut s).unwrap();
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).unwrap();
        s.write_all(b"7 bytes").unwrap();
        // Closed: the upstream ends the tunnel.
    });
    let gh = Gatehouse::start(&http_config("", "", backend, "policy.allow_upgrade = true"));
    let mut c = TcpStream::connect(gh.addr("web")).unwrap();
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    c.write_all(b"hello").unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"7 bytes");
    drop(c);
    gh.wait_for("the tunnel's line", Duration::from_secs(5), |g| {
        access_lines(g).len() == 2
    });
    let lines = access_lines(&gh);
    assert_eq!(lines[0]["status"], 101);
    let end = &lines[1];
    assert_eq!(end["message"], "upgraded connection closed", "{end}");
    assert_eq!(end["route"], "app");
    assert_eq!(end["upstream"], backend.to_string());
    assert_eq!(end["reason"], "upstream_closed");
    // The whole connection: the request head and "hello" up, the 101 and
    // "7 bytes" down.
    assert!(end["bytes_up"].as_u64().unwrap() > 5, "{end}");
    assert!(end["bytes_down"].as_u64().unwrap() > 7, "{end}");
}
