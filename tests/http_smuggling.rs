//! Request smuggling: malformed or ambiguous requests are
//! refused with 400 and the connection closed; the backend never sees a
//! second (smuggled) request. Raw sockets, so nothing normalizes the bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

fn cases() -> Vec<(&'static str, String)> {
    let s = SMUGGLED;
    vec![
        (
            "two different CL",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 35\r\n\r\n{s}"
            ),
        ),
        (
            "CL list",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 0\r\n\r\n{s}"),
        ),
        (
            "CL negative",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n{s}"),
        ),
        (
            "CL plus sign",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +0\r\n\r\n{s}"),
        ),
        (
            "CL hex",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x0\r\n\r\n{s}"),
        ),
        (
            "CL overflow",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n{s}"
            ),
        ),
        (
            "TE chunked, identity",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{s}"
            ),
        ),
        (
            "TE identity",
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n{s}"),
        ),
        (
            "TE gzip, chunked",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{s}"
            ),
        ),
        (
            "TE xchunked",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{s}"
            ),
        ),
        (
            "TE twice",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{s}"
            ),
        ),
        (
            "TE on HTTP/1.0",
            format!("POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{s}"),
        ),
        (
            "space before colon",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{s}"
            ),
        ),
        (
            "obs-fold",
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n{s}"),
        ),
        (
            "obs-fold TE",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{s}"
            ),
        ),
        (
            "bare CR in value",
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n{s}"),
        ),
        (
            "NUL in value",
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n{s}"),
        ),
        (
            "bad header name",
            format!("GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n{s}"),
        ),
        (
            "header without colon",
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-A\r\n\r\n{s}"),
        ),
        (
            "two Host headers",
            format!("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n{s}"),
        ),
        (
            "double space in request line",
            format!("GET  / HTTP/1.1\r\nHost: a\r\n\r\n{s}"),
        ),
        (
            "bad version",
            format!("GET / HTTP/1.2x\r\nHost: a\r\n\r\n{s}"),
        ),
        (
            "control char in target",
            format!("GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n{s}"),
        ),
        (
            "HTTP/1.1 without Host",
            format!("GET / HTTP/1.1\r\nX-A: b\r\n\r\n{s}"),
        ),
    ]
}

#[test]
fn ambiguous_requests_are_refused_and_nothing_is_smuggled() {
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let cases = cases();
    assert!(cases.len() >= 20);
    let mut wrong = Vec::new();
    for (name, req) in &cases {
        let mut s = TcpStream::connect(gh.addr("web")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let (head, _) = read_response(&mut s);
        // The connection is closed after the 400: no second response.
        let (after, _) = read_response(&mut s);
        if !head.starts_with("HTTP/1.1 400") || !after.is_empty() {
            wrong.push(format!(
                "{name}: {:?} then {:?}",
                head.lines().next(),
                after.lines().next()
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    let seen = seen.lock().unwrap();
    assert!(
        seen.is_empty(),
        "the backend saw {} request(s): {:?}",
        seen.len(),
        seen.iter()
            .map(|r| r.request_line().to_string())
            .collect::<Vec<_>>()
    );
}

#[test]
fn chunked_bodies_with_bad_framing_never_reach_the_backend_as_two_requests() {
    // Valid heads with broken chunked framing: the head may be forwarded
    // (bodies stream), but the broken body aborts it and no second request follows.
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let bodies = [
        format!("zz\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        format!("ffffffffffffffffffff\r\n{SMUGGLED}"),
        format!("5\r\nhelloXX0\r\n\r\n{SMUGGLED}"),
        format!("3\nabc\n0\n\n{SMUGGLED}"),
    ];
    for body in &bodies {
        let req =
            format!("POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let mut s = TcpStream::connect(gh.addr("web")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let (head, _) = read_response(&mut s);
        assert!(!head.starts_with("HTTP/1.1 200"), "{body:?}: {head}");
    }
    gh.wait_empty(Duration::from_secs(3));
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|r| !r.request_line().contains("smuggled")),
        "{seen:?}"
    );
}

/// Content-Length together with Transfer-Encoding (in either order), and a
/// line ending in a bare LF: refused with 400 and the connection closed,
/// before anything reaches the upstream (RFC 9112 §6.1 lets a server reject
/// the first; bare LF is read differently by different parsers).
#[test]
fn content_length_with_transfer_encoding_and_bare_lf_are_refused() {
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    for req in [
        format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{SMUGGLED}"
        ),
        format!("GET / HTTP/1.1\r\nHost: a\nX-Hidden: 1\r\n\r\n{SMUGGLED}"),
        format!("GET / HTTP/1.1\nHost: a\n\n{SMUGGLED}"),
    ] {
        let mut s = TcpStream::connect(gh.addr("web")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let (head, _) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        let (after, _) = read_response(&mut s);
        assert!(after.is_empty(), "connection stayed open: {after}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}

/// Identical duplicate Content-Length values are merged (RFC 9112 §6.3
/// allows it): one length, no ambiguity, so a pipelined request after it is
/// a request like any other.
#[test]
fn identical_duplicate_content_lengths_are_merged() {
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let req = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
    let (head, _) = raw_exchange(gh.addr("web"), req.as_bytes());
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].header("content-length"), ["3"]);
    assert_eq!(seen[0].body, b"abc");
}

#[test]
fn connect_is_not_tunnelled() {
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let (head, _) = raw_exchange(
        gh.addr("web"),
        b"CONNECT internal.test:22 HTTP/1.1\r\nHost: internal.test:22\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(
        head.contains("gatehouse-error: method_not_allowed"),
        "{head}"
    );
    assert!(seen.lock().unwrap().is_empty());
}
