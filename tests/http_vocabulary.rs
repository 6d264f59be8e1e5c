//! One vocabulary for the same ending everywhere: the request's reason and
//! its connection's agree, a client that leaves mid-head has closed (not
//! broken a rule), a stalled head gets 408, and HTTP connections show and
//! count under the route of their request.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::*;

#[test]
fn a_stalled_upstream_body_has_the_same_reason_on_request_and_connection() {
    // The head and 10 of 100 bytes, then nothing.
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        backend,
        "policy.upstream_body_idle_timeout = \"300ms\"",
    ));
    let web = gh.addr("web");
    let client = thread::spawn(move || raw_exchange(web, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    let mut up = conns.recv_timeout(Duration::from_secs(5)).unwrap();
    read_request(&mut up).unwrap();
    up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let (head, body) = client.join().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        body, b"0123456789",
        "a cut response, never a complete-looking one"
    );
    gh.wait_closed_count("upstream_body_timeout", 1);
    assert_eq!(
        gh.metric(
            "gatehouse_http_request_end_total",
            &[("reason", "upstream_body_timeout"), ("side", "upstream")]
        ),
        1
    );
    assert_eq!(gh.closed("upstream_reset"), 0);
    drop(up);
}

#[test]
fn a_client_closing_mid_head_has_closed_and_a_stalled_head_gets_408() {
    let (backend, _) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config(
        "",
        "http.header_read_timeout = \"500ms\"",
        backend,
        "",
    ));
    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    drop(s);
    gh.wait_closed_count("client_closed", 1);
    assert_eq!(gh.closed("client_protocol_error"), 0);

    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("gatehouse-error: client_header_timeout"),
        "{text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    gh.wait_closed_count("client_header_timeout", 1);

    // Nothing at all before the deadline: closed without an answer.
    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(got.is_empty());
    gh.wait_closed_count("client_header_timeout", 2);
}

#[test]
fn http_connections_show_and_count_under_their_requests_route() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let web = gh.addr("web");
    let (tx, rx) = mpsc::channel();
    let client = thread::spawn(move || {
        let mut s = TcpStream::connect(web).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let got = read_response(&mut s);
        rx.recv().unwrap(); // keep the connection until told
        got
    });
    let mut up = conns.recv_timeout(Duration::from_secs(5)).unwrap();
    read_request(&mut up).unwrap();
    // In flight: the entry names its route and upstream.
    let table = gh.connections();
    let entry = &table["connections"][0];
    assert_eq!(entry["route"], "app", "{table:#}");
    assert_eq!(entry["upstream"], backend.to_string(), "{table:#}");
    up.write_all(&ok_response("ok")).unwrap();
    tx.send(()).unwrap();
    let (head, _) = client.join().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    gh.wait_empty(Duration::from_secs(5));
    assert_eq!(
        gh.metric(
            "gatehouse_connections_closed_total",
            &[("route", "app"), ("reason", "client_closed")]
        ),
        1
    );
    // A connection that no route took is labelled `none`; no label is empty.
    let mut s = TcpStream::connect(web).unwrap();
    s.write_all(b"BAD\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    gh.wait_empty(Duration::from_secs(5));
    let m = gh.get("/metrics");
    assert!(!m.contains("route=\"\""), "{m}");
    assert!(m.contains("route=\"none\""), "{m}");
}
