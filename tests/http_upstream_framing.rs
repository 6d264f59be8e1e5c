//! Response framing from upstreams on the path our own HTTP/1.1 client
//! carries (bodiless requests): chunked with trailers, until-close, HEAD,
//! interim 1xx, Transfer-Encoding with Content-Length, broken heads and
//! cut bodies; connections reused only after a cleanly ended response,
//! and a pooled connection the upstream closed never fails a request.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::*;

/// A backend that answers by path with fixed raw responses; paths ending
/// in `-close` close the connection after their response. Counts accepted
/// connections.
fn scripted_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                while let Some(req) = read_request(&mut s) {
                    let path = req
                        .request_line()
                        .split(' ')
                        .nth(1)
                        .unwrap_or("")
                        .to_string();
                    let resp: &[u8] = match path.trim_end_matches("-close") {
                        "/ok" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                        "/chunked" => {
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n\
                              3\r\nabc\r\n3;ext=1\r\ndef\r\n0\r\nX-T: 1\r\n\r\n"
                        }
                        "/eof" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil-close",
                        "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
                        "/hints" => {
                            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                              HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
                        }
                        "/te-and-cl" => {
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 50\r\n\r\n\
                              3\r\nabc\r\n0\r\n\r\n"
                        }
                        "/no-content" => b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
                        "/bad-length" => b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nok",
                        "/garbage" => b"SPDY/9 what\r\n\r\n",
                        "/cut" => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                    };
                    if s.write_all(resp).is_err() || path.ends_with("-close") || path == "/eof" {
                        break;
                    }
                    if path == "/cut" || path == "/garbage" || path == "/bad-length" {
                        break;
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (addr, accepted)
}

/// Sends `request` (which asks the proxy to close after the response) and
/// returns everything the proxy wrote.
fn exchange_all(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

/// Reads a response head only (through its blank line).
fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).to_string()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
}

#[test]
fn upstream_response_framings_reach_the_client_intact() {
    let (backend, accepted) = scripted_backend();
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let web = gh.addr("web");

    // Chunked, with an extension and trailers: re-chunked, trailers kept.
    let out = exchange_all(web, &get("/chunked"));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("transfer-encoding: chunked"), "{out}");
    let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    assert!(body.contains("abc") && body.contains("def"), "{body:?}");
    assert!(
        body.to_ascii_lowercase().contains("x-t: 1"),
        "trailer lost: {body:?}"
    );
    assert!(body.ends_with("\r\n\r\n"), "{body:?}");

    // Until close: the client gets it whole (chunked on its side).
    let out = exchange_all(web, &get("/eof"));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("until-close"), "{out}");

    // HEAD: a Content-Length but no body; the connection stays in sync.
    let mut s = TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"HEAD /head HTTP/1.1\r\nHost: app\r\n\r\n")
        .unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 100"),
        "{head}"
    );
    let after_head = accepted.load(Ordering::SeqCst);
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: app\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("ok"),
        "{text}"
    );
    drop(s);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        after_head,
        "the HEAD's upstream connection is reused for the next request"
    );

    // Interim 1xx responses are skipped; the final one is relayed.
    let out = exchange_all(web, &get("/hints"));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("final"), "{out}");

    // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3).
    let out = exchange_all(web, &get("/te-and-cl"));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        !out.to_ascii_lowercase().contains("content-length: 50"),
        "{out}"
    );
    assert!(out.contains("abc"), "{out}");

    let out = exchange_all(web, &get("/no-content"));
    assert!(out.starts_with("HTTP/1.1 204"), "{out}");

    // Broken heads: 502 with the reason, blamed on the upstream.
    for path in ["/bad-length", "/garbage"] {
        let out = exchange_all(web, &get(path));
        assert!(out.starts_with("HTTP/1.1 502"), "{path}: {out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("gatehouse-error: upstream_protocol_error"),
            "{path}: {out}"
        );
    }

    // A body cut short: the client sees a cut response, never a complete one.
    let mut s = TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(get("/cut").as_bytes()).unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.len() < 10, "a cut body looked complete: {body:?}");
    drop(s);

    gh.wait_empty(Duration::from_secs(5));
    assert_eq!(gh.close_wait(), 0);
}

#[test]
fn keep_alive_upstream_connections_are_reused_and_closed_ones_are_not_used() {
    reused_and_closed_ones_not_used("");
}

/// The same on one worker, where request heads go out through the send
/// batch (`upstream::send_batch`): a head written to a connection the
/// upstream has closed fails like a direct write, and is sent again.
#[test]
fn on_one_worker_batched_request_heads_meet_closed_pooled_connections_the_same_way() {
    reused_and_closed_ones_not_used("workers = 1");
}

fn reused_and_closed_ones_not_used(top: &str) {
    let (backend, accepted) = scripted_backend();
    let gh = Gatehouse::start(&http_config(top, "", backend, ""));
    let web = gh.addr("web");
    for _ in 0..20 {
        assert_eq!(http_get(web, "/ok"), "ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one pooled connection serves them all"
    );

    // The upstream closes each connection right after its response, without
    // saying so: whether the proxy sees the close before the next request or
    // only when sending it, no request fails.
    for i in 0..50 {
        let path = if i % 2 == 0 { "/ok-close" } else { "/ok" };
        assert_eq!(http_get(web, path), "ok", "request {i}");
    }
    gh.wait_for(
        "no CLOSE_WAIT from closed pooled connections",
        Duration::from_secs(5),
        |g| g.close_wait() == 0,
    );
    if cfg!(feature = "send-batch") && top.contains("workers = 1") {
        // Every head went through the batch, the ones sent again included.
        assert!(gh.metric("gatehouse_upstream_batched_sends_total", &[]) >= 70);
    }
    gh.wait_empty(Duration::from_secs(5));
}
