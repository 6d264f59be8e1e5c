//! Requests that cannot be retried and upstreams that close reused
//! keep-alive connections: a POST never goes on a connection the upstream
//! may be closing, so none is lost and none is sent twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;

/// A backend that answers the first request of each connection, keeps the
/// connection open, and closes it without an answer when a second request
/// arrives on it (what a backend that times out idle connections does
/// when the request and its close cross). Records every request it read.
fn closes_reused_backend() -> (SocketAddr, Arc<Mutex<Vec<SeenRequest>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let seen = seen2.clone();
            thread::spawn(move || {
                let Some(first) = read_request(&mut s) else {
                    return;
                };
                seen.lock().unwrap().push(first);
                if s.write_all(&ok_response("ok")).is_err() {
                    return;
                }
                if let Some(second) = read_request(&mut s) {
                    seen.lock().unwrap().push(second);
                }
                // Dropped: closed with no answer.
            });
        }
    });
    (addr, seen)
}

fn post(addr: SocketAddr, i: usize, with_body: bool) -> String {
    let req = if with_body {
        format!("POST /p HTTP/1.1\r\nHost: a\r\nX-Id: {i}\r\nContent-Length: 2\r\n\r\nhi")
    } else {
        format!("POST /p HTTP/1.1\r\nHost: a\r\nX-Id: {i}\r\nContent-Length: 0\r\n\r\n")
    };
    raw_exchange(addr, req.as_bytes()).0
}

fn warm_pool(gh: &Gatehouse) {
    for _ in 0..4 {
        let (head, _) = raw_exchange(gh.addr("web"), b"GET /warm HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
}

#[test]
fn posts_all_succeed_once_when_the_upstream_closes_reused_connections() {
    let (backend, seen) = closes_reused_backend();
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let web = gh.addr("web");
    for i in 0..100 {
        // Idle connections in the pool, as a busy route has.
        if i % 10 == 0 {
            warm_pool(&gh);
        }
        let head = post(web, i, i % 2 == 0);
        assert!(head.starts_with("HTTP/1.1 200"), "POST {i}: {head}");
    }
    let seen = seen.lock().unwrap();
    let mut ids: Vec<usize> = seen
        .iter()
        .filter(|r| r.request_line().starts_with("POST"))
        .map(|r| r.header("x-id")[0].parse().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..100).collect::<Vec<_>>(),
        "each POST seen exactly once"
    );
}

/// The same backend with reuse allowed for every method: the race is real,
/// and POSTs on reused connections are lost with 502 `upstream_reset`.
#[test]
fn with_reuse_forced_the_same_backend_loses_posts() {
    let (backend, _seen) = closes_reused_backend();
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        backend,
        "policy.pool_reuse_non_idempotent = true",
    ));
    let web = gh.addr("web");
    warm_pool(&gh);
    let head = post(web, 0, false);
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(head.contains("upstream_reset"), "{head}");
}
