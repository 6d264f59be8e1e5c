//! Unreachable and refused backends, idle timeout and
//! max lifetime, each ending with its reason and an empty table.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn unreachable_backend_ends_at_connect_timeout() {
    let hole = blackhole();
    let gh = Gatehouse::start(&simple_config(
        "timeouts.connect = \"1s\"",
        "",
        hole.addr,
        "",
    ));
    let mut c = TcpStream::connect(gh.addr("in")).unwrap();
    gh.wait_for("connecting state", Duration::from_secs(2), |g| {
        g.connections()["connections"][0]["state"] == "connecting"
    });
    let took = wait_closed(&mut c, Duration::from_secs(5));
    assert!(
        took <= Duration::from_secs(2),
        "closed after {took:?}, want <= connect timeout + 1s"
    );
    gh.wait_empty(Duration::from_millis(500));
    assert_eq!(gh.closed("upstream_connect_timeout"), 1);
    assert_accounted(&gh);
}

#[test]
fn refused_backend_ends_at_once() {
    let refused = refused_addr();
    let gh = Gatehouse::start(&simple_config("", "", refused.addr, ""));
    let start = Instant::now();
    let mut c = TcpStream::connect(gh.addr("in")).unwrap();
    wait_closed(&mut c, Duration::from_secs(5));
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "took {:?}",
        start.elapsed()
    );
    gh.wait_empty(Duration::from_millis(500));
    assert_eq!(gh.closed("upstream_refused"), 1);
    assert_eq!(
        gh.metric(
            "gatehouse_connections_closed_total",
            &[("reason", "upstream_refused"), ("side", "upstream")]
        ),
        1
    );
}

#[test]
fn idle_timeout_closes_both_sides() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&simple_config("timeouts.idle = \"600ms\"", "", backend, ""));
    let mut c = TcpStream::connect(gh.addr("in")).unwrap();
    let mut b = conns.recv_timeout(Duration::from_secs(5)).unwrap();
    // Traffic in either direction pushes the deadline back.
    for _ in 0..4 {
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        b.read_exact(&mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(250));
        b.write_all(b"pong").unwrap();
        c.read_exact(&mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
    let start = Instant::now();
    wait_closed(&mut c, Duration::from_secs(5));
    wait_closed(&mut b, Duration::from_secs(5));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took <= Duration::from_millis(1600),
        "idle close after {took:?}"
    );
    gh.wait_empty(Duration::from_millis(500));
    assert_eq!(gh.closed("idle_timeout"), 1);
    assert_eq!(
        gh.metric(
            "gatehouse_connections_closed_total",
            &[("reason", "idle_timeout"), ("side", "proxy")]
        ),
        1
    );
}

#[test]
fn max_lifetime_closes_busy_connections() {
    let backend = echo_backend();
    let gh = Gatehouse::start(&simple_config(
        "",
        "",
        backend,
        "policy.max_lifetime = \"800ms\"\npolicy.idle_timeout = \"10s\"",
    ));
    let start = Instant::now();
    let mut c = TcpStream::connect(gh.addr("in")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 4];
    let ended = loop {
        if c.write_all(b"busy").is_err() {
            break start.elapsed();
        }
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break start.elapsed(),
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert!(
        ended >= Duration::from_millis(700) && ended <= Duration::from_millis(1800),
        "ended after {ended:?}"
    );
    gh.wait_empty(Duration::from_millis(500));
    assert_eq!(gh.closed("max_lifetime"), 1);
}
