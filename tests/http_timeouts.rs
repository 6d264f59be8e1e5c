//! Each HTTP deadline and upstream failure produces its status code and
//! `gatehouse-error` reason within the configured time + 1 s.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn expect_error(gh: &Gatehouse, request: &[u8], status: &str, reason: &str, within: Duration) {
    let start = Instant::now();
    let (head, _) = raw_exchange(gh.addr("web"), request);
    let took = start.elapsed();
    assert!(
        head.starts_with(&format!("HTTP/1.1 {status}")),
        "want {status} {reason}, got {head}"
    );
    assert!(
        head.contains(&format!("gatehouse-error: {reason}")),
        "want {reason}: {head}"
    );
    assert!(took <= within, "{reason} took {took:?}, want <= {within:?}");
    gh.wait_for(reason, Duration::from_secs(2), |g| {
        g.metric("gatehouse_http_request_end_total", &[("reason", reason)]) >= 1
    });
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

#[test]
fn upstream_connect_timeout_is_504() {
    let hole = blackhole();
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        hole.addr,
        "policy.connect_timeout = \"700ms\"",
    ));
    expect_error(
        &gh,
        GET,
        "504",
        "upstream_connect_timeout",
        Duration::from_millis(1700),
    );
}

#[test]
fn refused_upstream_is_502() {
    let refused = refused_addr();
    let gh = Gatehouse::start(&http_config("", "", refused.addr, ""));
    expect_error(
        &gh,
        GET,
        "502",
        "upstream_refused",
        Duration::from_millis(500),
    );
}

#[test]
fn silent_upstream_is_504_after_the_response_header_timeout() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        backend,
        "policy.response_header_timeout = \"700ms\"",
    ));
    let holder = thread::spawn(move || {
        let mut s = conns.recv().unwrap();
        let _ = read_request(&mut s);
        // Never answer; wait for the proxy to give up and close.
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf);
    });
    expect_error(
        &gh,
        GET,
        "504",
        "upstream_response_timeout",
        Duration::from_millis(1700),
    );
    holder.join().unwrap();
}

#[test]
fn total_request_timeout_is_504() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        backend,
        "policy.request_timeout = \"600ms\"",
    ));
    thread::spawn(move || {
        let mut s = conns.recv().unwrap();
        let _ = read_request(&mut s);
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf);
    });
    expect_error(
        &gh,
        GET,
        "504",
        "request_timeout",
        Duration::from_millis(1600),
    );
}

#[test]
fn upstream_reset_and_garbage_are_502() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    thread::spawn(move || {
        let mut s = conns.recv().unwrap();
        let _ = read_request(&mut s);
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
        let mut s = conns.recv().unwrap();
        let _ = read_request(&mut s);
        let _ = s.write_all(b"THIS IS NOT HTTP\r\n\r\n");
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf);
    });
    // (POSTs: a GET would be retried once on a reset or a broken answer.)
    let post = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    expect_error(&gh, post, "502", "upstream_reset", Duration::from_secs(1));
    expect_error(
        &gh,
        post,
        "502",
        "upstream_protocol_error",
        Duration::from_secs(1),
    );
}

#[test]
fn exhausted_pool_is_503_after_the_wait_timeout() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        backend,
        // (One client takes the whole pool here: no share smaller than it.)
        "policy.pool_max_connections = 1\npolicy.pool_max_per_client = 2\npolicy.pool_wait_timeout = \"400ms\"\npolicy.response_header_timeout = \"5s\"",
    ));
    let addr = gh.addr("web");
    // The first request holds the only upstream connection.
    let slow = thread::spawn(move || raw_exchange(addr, GET));
    let mut upstream = conns.recv_timeout(Duration::from_secs(5)).unwrap();
    let _ = read_request(&mut upstream);
    expect_error(
        &gh,
        GET,
        "503",
        "upstream_pool_exhausted",
        Duration::from_millis(1400),
    );
    upstream.write_all(&ok_response("late")).unwrap();
    let (head, body) = slow.join().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"late");
}

#[test]
fn slow_client_headers_are_cut_at_the_header_deadline() {
    let (backend, _) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config(
        "",
        "http.header_read_timeout = \"700ms\"",
        backend,
        "",
    ));
    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .unwrap();
    let took = wait_closed(&mut s, Duration::from_secs(3));
    assert!(took <= Duration::from_millis(1700), "{took:?}");
    gh.wait_empty(Duration::from_secs(1));
    assert_eq!(gh.closed("client_header_timeout"), 1);
}

#[test]
fn idle_client_body_is_408() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        backend,
        "policy.client_body_idle_timeout = \"600ms\"",
    ));
    thread::spawn(move || {
        let mut s = conns.recv().unwrap();
        let mut buf = [0u8; 1024];
        while s.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    let start = Instant::now();
    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let (head, _) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        head.contains("gatehouse-error: client_body_timeout"),
        "{head}"
    );
    assert!(
        start.elapsed() <= Duration::from_millis(1600),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn stalled_upstream_body_aborts_the_response() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        backend,
        "policy.upstream_body_idle_timeout = \"600ms\"",
    ));
    thread::spawn(move || {
        let mut s = conns.recv().unwrap();
        let _ = read_request(&mut s);
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            .unwrap();
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf);
    });
    let start = Instant::now();
    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(GET).unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.len() < 100, "the response must be cut short");
    assert!(
        start.elapsed() <= Duration::from_millis(1600),
        "{:?}",
        start.elapsed()
    );
    gh.wait_for("upstream_body_timeout", Duration::from_secs(2), |g| {
        g.metric(
            "gatehouse_http_request_end_total",
            &[("reason", "upstream_body_timeout")],
        ) == 1
    });
}

#[test]
fn the_total_request_deadline_also_cuts_a_slow_response_body() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        backend,
        "policy.request_timeout = \"800ms\"",
    ));
    thread::spawn(move || {
        let mut s = conns.recv().unwrap();
        let _ = read_request(&mut s);
        // A head at once, then a chunk every 200 ms (never idle long enough
        // for the body idle timeout) for ever.
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        while s.write_all(b"1\r\nx\r\n").is_ok() {
            thread::sleep(Duration::from_millis(200));
        }
    });
    let started = Instant::now();
    let mut c = TcpStream::connect(gh.addr("web")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(GET).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the cut response must not look complete: {text}"
    );
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(1800),
        "{took:?}"
    );
    gh.wait_for("the request counted", Duration::from_secs(2), |g| {
        g.metric(
            "gatehouse_http_request_end_total",
            &[("route", "app"), ("reason", "request_timeout")],
        ) == 1
    });
}

#[test]
fn keep_alive_idle_time_has_its_own_deadline() {
    let (backend, _) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config(
        "",
        "http.keepalive_timeout = \"600ms\"\nhttp.header_read_timeout = \"5s\"",
        backend,
        "",
    ));
    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(GET).unwrap();
    let (head, _) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Idle after the response: closed at the keep-alive deadline, not the
    // (longer) header deadline.
    let took = wait_closed(&mut s, Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1600),
        "{took:?}"
    );
    gh.wait_closed_count("idle_timeout", 1);
    // A request that has started is bounded by the header deadline instead.
    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    thread::sleep(Duration::from_millis(1000));
    s.write_all(b"Host: a\r\n\r\n").unwrap();
    let (head, _) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
