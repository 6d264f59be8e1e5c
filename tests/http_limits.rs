//! HTTP limits answer with the right status: 414, 431, 413 (up front and
//! while streaming), 411, and a keep-alive request cap that closes cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn status(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("")
}

#[test]
fn limits_answer_with_their_status_codes() {
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config(
        "",
        "http.max_uri_bytes = 2048\nhttp.max_header_bytes = 16384\nhttp.max_headers = 50",
        backend,
        "policy.max_body_size = 1000",
    ));
    let addr = gh.addr("web");
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(4000));
    assert_eq!(status(&raw_exchange(addr, long_uri.as_bytes()).0), "414");
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "h".repeat(20_000)
    );
    assert_eq!(status(&raw_exchange(addr, big_header.as_bytes()).0), "431");
    let many: String = (0..80).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    assert_eq!(
        status(&raw_exchange(addr, many_headers.as_bytes()).0),
        "431"
    );
    let (head, _) = raw_exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n",
    );
    assert_eq!(status(&head), "413", "{head}");
    assert!(head.contains("gatehouse-error: body_too_large"), "{head}");
    // Chunked: the limit is enforced while streaming.
    let chunk = "a".repeat(600);
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let (head, _) = raw_exchange(addr, chunked.as_bytes());
    assert_eq!(status(&head), "413", "{head}");
    // Within limits everything passes.
    let (head, _) = raw_exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(status(&head), "200", "{head}");
    assert!(seen.lock().unwrap().iter().all(|r| r.body.len() <= 1000));
}

#[test]
fn chunked_requests_can_be_refused_with_411() {
    let (backend, _) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        backend,
        "policy.allow_chunked_requests = false",
    ));
    let (head, _) = raw_exchange(
        gh.addr("web"),
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(status(&head), "411", "{head}");
}

#[test]
fn keep_alive_request_cap_closes_the_connection_cleanly() {
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config(
        "",
        "http.max_requests_per_connection = 3",
        backend,
        "",
    ));
    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for i in 1..=3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let (head, body) = read_response(&mut s);
        assert_eq!(status(&head), "200");
        assert_eq!(body, b"ok");
        assert_eq!(
            head.to_ascii_lowercase().contains("connection: close"),
            i == 3,
            "request {i}: {head}"
        );
    }
    let (after, _) = read_response(&mut s);
    assert!(after.is_empty());
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[test]
fn route_limit_caps_requests_in_flight() {
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(gate_rx);
    let (backend, _) = raw_http_backend(move |_| {
        gate.lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10))
            .unwrap();
        ok_response("ok")
    });
    let gh = Gatehouse::start(&http_config("", "", backend, "policy.max_connections = 1"));
    let addr = gh.addr("web");
    let first =
        std::thread::spawn(move || raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    gh.wait_for("one request in flight", Duration::from_secs(3), |g| {
        g.metric("gatehouse_http_requests_in_flight", &[("route", "app")]) == 1
    });
    let (head, _) = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(status(&head), "503", "{head}");
    assert!(head.contains("gatehouse-error: limit_route"), "{head}");
    gate_tx.send(()).unwrap();
    assert_eq!(status(&first.join().unwrap().0), "200");
}
