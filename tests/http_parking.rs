//! Idle keep-alive HTTP/1 connections leave their task ("parked") and come
//! back on their next request; parked ones still end at their keep-alive
//! deadline, when the client leaves, and at shutdown, with nothing left
//! behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: app\r\n\r\n";

fn request_ok(s: &mut TcpStream) {
    s.write_all(GET).unwrap();
    let (head, body) = read_response(s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
}

/// `n` connections that have each had one request answered, now idle.
fn keep_alive_clients(web: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(web).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            request_ok(&mut s);
            s
        })
        .collect()
}

fn parked(gh: &Gatehouse) -> u64 {
    gh.metric("gatehouse_http_parked_connections", &[])
}

#[test]
fn idle_connections_park_and_come_back_and_parked_ones_end_cleanly() {
    let (backend, _) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config(
        "",
        "http.keepalive_timeout = \"4s\"",
        backend,
        "",
    ));
    let web = gh.addr("web");
    // The baseline holds the pooled upstream connection the requests share.
    assert_eq!(http_get(web, "/warm-up"), "ok");
    gh.wait_empty(Duration::from_secs(3));
    let baseline_fds = gh.fd_count();
    let mut clients = keep_alive_clients(web, 50);
    gh.wait_for("50 parked connections", Duration::from_secs(5), |g| {
        parked(g) == 50
    });
    assert_eq!(gh.active(), 50, "parked connections stay in the table");

    // Each comes back for its next request, pipelined ones included.
    for s in clients.iter_mut().take(25) {
        request_ok(s);
    }
    clients[25].write_all(&[GET, GET].concat()).unwrap();
    let (h1, _) = read_response(&mut clients[25]);
    let (h2, b2) = read_response(&mut clients[25]);
    assert!(h1.starts_with("HTTP/1.1 200") && h2.starts_with("HTTP/1.1 200") && b2 == b"ok");

    // A client that leaves while parked: its connection ends at once.
    for s in clients.drain(40..) {
        drop(s);
    }
    gh.wait_for(
        "the 10 closed clients to be gone",
        Duration::from_secs(5),
        |g| g.active() == 40,
    );
    assert_eq!(gh.close_wait(), 0);

    // Parked again, then ended at the keep-alive deadline (4 s after the
    // last request, give or take the quarter-second sweep).
    gh.wait_for("40 parked connections", Duration::from_secs(5), |g| {
        parked(g) == 40
    });
    let last = Instant::now();
    let mut probe = clients.pop().unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        probe.read(&mut byte).unwrap_or(0),
        0,
        "closed at the deadline"
    );
    let took = last.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}");
    gh.wait_empty(Duration::from_secs(3));
    assert_eq!(parked(&gh), 0);
    assert!(
        gh.closed("idle_timeout") >= 39,
        "{}",
        gh.closed("idle_timeout")
    );
    drop(clients);
    gh.wait_for("FDs back to baseline", Duration::from_secs(5), |g| {
        g.fd_count() <= baseline_fds
    });
    assert_eq!(gh.close_wait(), 0);
    assert_accounted(&gh);
}

#[test]
fn parked_connections_end_at_once_at_shutdown() {
    let (backend, _) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config(
        "timeouts.shutdown_drain = \"20s\"",
        "http.keepalive_timeout = \"60s\"",
        backend,
        "",
    ));
    let web = gh.addr("web");
    let mut clients = keep_alive_clients(web, 20);
    gh.wait_for("20 parked connections", Duration::from_secs(5), |g| {
        parked(g) == 20
    });
    let started = Instant::now();
    let status = gh.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "idle connections held up the drain: {:?}",
        started.elapsed()
    );
    for s in &mut clients {
        let mut byte = [0u8; 1];
        assert_eq!(s.read(&mut byte).unwrap_or(0), 0);
    }
}

#[test]
fn a_parked_connection_keeps_its_client_address_from_the_proxy_header() {
    // Parking keeps only the socket and the table entry; the request
    // handler is rebuilt from the entry when the client comes back.
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config(
        "",
        "proxy_protocol.trusted = [\"127.0.0.1/32\"]\nhttp.keepalive_timeout = \"60s\"",
        backend,
        "",
    ));
    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"PROXY TCP4 198.51.100.23 10.0.0.1 5555 80\r\n")
        .unwrap();
    request_ok(&mut s);
    gh.wait_for("the connection parked", Duration::from_secs(5), |g| {
        parked(g) == 1
    });
    request_ok(&mut s);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    for r in seen.iter() {
        assert_eq!(r.header("x-forwarded-for"), ["198.51.100.23"]);
    }
    drop(seen);
    let conns = gh.connections();
    assert_eq!(
        conns["connections"][0]["client"], "198.51.100.23:5555",
        "{conns}"
    );
}
