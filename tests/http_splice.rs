//! Large HTTP/1 response bodies move from the upstream socket to the client
//! with splice(2): the bytes arrive intact, the upstream connection goes
//! back to its pool after the last one, copying takes over when splicing is
//! off, and an upstream that stalls, closes or outlives the request's
//! deadline mid-body cuts the client's response with that reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const BODY: usize = 3 * 1024 * 1024 + 1;

/// Answers every `GET /` on a keep-alive connection with `BODY` bytes of
/// `pattern`, sent in uneven pieces; counts the connections it accepted.
fn pattern_backend() -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let accepted2 = accepted.clone();
    thread::spawn(move || {
        let body = pattern(BODY, 7);
        for s in l.incoming().flatten() {
            accepted2.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            thread::spawn(move || {
                let mut s = s;
                while read_request(&mut s).is_some() {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n");
                    if s.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    for piece in body.chunks(300_007) {
                        if s.write_all(piece).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn get_three_times(gh: &Gatehouse) {
    let want = pattern(BODY, 7);
    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for i in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let (head, body) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        assert_eq!(body.len(), BODY, "request {i}");
        assert!(body == want, "request {i}: the body's bytes differ");
    }
}

#[test]
fn large_bodies_are_spliced_intact_and_the_upstream_connection_is_reused() {
    let (backend, accepted) = pattern_backend();
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    get_three_times(&gh);
    // All but what came with each head (at most one read) went by splice.
    let spliced = gh.metric("gatehouse_spliced_bytes_total", &[]);
    assert!(
        spliced >= 3 * (BODY as u64 - 128 * 1024),
        "spliced only {spliced} bytes"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one pooled connection");
    gh.wait_for(
        "the requests logged as complete",
        Duration::from_secs(2),
        |g| {
            g.metric(
                "gatehouse_http_request_end_total",
                &[("route", "app"), ("reason", "ok")],
            ) == 3
        },
    );
}

#[test]
fn with_splicing_off_large_bodies_are_copied() {
    let (backend, accepted) = pattern_backend();
    let gh = Gatehouse::start(&http_config(
        "[limits]\nsplice_pipes = \"off\"",
        "",
        backend,
        "",
    ));
    get_three_times(&gh);
    assert_eq!(gh.metric("gatehouse_spliced_bytes_total", &[]), 0);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one pooled connection");
}

/// How an upstream misbehaves after sending 512 KiB of a 4 MiB body.
#[derive(Clone, Copy, Debug)]
enum MidBody {
    Stall,
    Close,
    /// Keeps sending, 1 KiB every 100 ms: never idle, but slow.
    Trickle,
}

#[test]
fn an_upstream_failing_mid_splice_cuts_the_response_with_its_reason() {
    let cases = [
        (
            MidBody::Stall,
            "policy.upstream_body_idle_timeout = \"600ms\"",
            "upstream_body_timeout",
        ),
        (MidBody::Close, "", "upstream_reset"),
        (
            MidBody::Trickle,
            "policy.request_timeout = \"900ms\"",
            "request_timeout",
        ),
    ];
    for (how, policy, reason) in cases {
        let (backend, conns) = capture_backend();
        let gh = Gatehouse::start(&http_config("", "", backend, policy));
        thread::spawn(move || {
            let mut s = conns.recv().unwrap();
            let _ = read_request(&mut s);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\n\r\n");
            let _ = s.write_all(&vec![5u8; 512 * 1024]);
            match how {
                MidBody::Stall => {
                    let _ = s.read(&mut [0u8; 16]);
                }
                MidBody::Close => drop(s),
                MidBody::Trickle => {
                    while s.write_all(&[5u8; 1024]).is_ok() {
                        thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
        let started = Instant::now();
        let mut c = TcpStream::connect(gh.addr("web")).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let (head, body) = read_response(&mut c);
        let took = started.elapsed();
        assert!(head.starts_with("HTTP/1.1 200"), "{how:?}: {head}");
        assert!(
            body.len() >= 512 * 1024 && body.len() < 4 * 1024 * 1024,
            "{how:?}: the response must be cut after what the upstream sent, got {}",
            body.len()
        );
        assert!(took < Duration::from_secs(2), "{how:?}: took {took:?}");
        gh.wait_for(reason, Duration::from_secs(2), |g| {
            g.metric(
                "gatehouse_http_request_end_total",
                &[("route", "app"), ("reason", reason)],
            ) == 1
        });
        assert!(
            gh.metric("gatehouse_spliced_bytes_total", &[]) > 0,
            "{how:?}: the body was not spliced"
        );
        gh.wait_empty(Duration::from_secs(2));
        assert_eq!(gh.close_wait(), 0, "{how:?}");
    }
}
