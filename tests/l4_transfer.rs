//! Bytes through a route are identical for payloads from 1 byte
//! to 64 MiB in both directions at once, and half-close works.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use common::*;

const SIZES: [usize; 8] = [1, 2, 1000, 65_535, 65_537, 1 << 20, 16 << 20, 64 << 20];

fn payloads_through(limits: &str) {
    let gh = Gatehouse::start(&simple_config(limits, "", echo_backend(), ""));
    for (i, &size) in SIZES.iter().enumerate() {
        echo_through(gh.addr("in"), size, i as u64 + 7);
    }
    let total: u64 = SIZES.iter().map(|&s| s as u64).sum();
    gh.wait_empty(Duration::from_secs(2));
    assert_eq!(
        gh.metric(
            "gatehouse_bytes_total",
            &[("direction", "client_to_upstream")]
        ),
        total
    );
    assert_eq!(
        gh.metric(
            "gatehouse_bytes_total",
            &[("direction", "upstream_to_client")]
        ),
        total
    );
    assert_eq!(gh.closed("client_closed"), SIZES.len() as u64);
    assert_accounted(&gh);
}

#[test]
fn payloads_from_one_byte_to_64_mib_both_ways_with_splice() {
    payloads_through("");
}

#[test]
fn payloads_from_one_byte_to_64_mib_both_ways_copying() {
    payloads_through("limits.splice_pipes = \"off\"");
}

#[test]
fn concurrent_transfers_share_a_small_pipe_pool() {
    // Two pipes for eight busy directions: the rest fall back to copying.
    let gh = Gatehouse::start(&simple_config(
        "limits.splice_pipes = 2",
        "",
        echo_backend(),
        "",
    ));
    let addr = gh.addr("in");
    let workers: Vec<_> = (0..4)
        .map(|i| thread::spawn(move || echo_through(addr, 8 << 20, 100 + i)))
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert!(gh.metric("gatehouse_splice_pipes", &[("state", "existing")]) <= 2);
    gh.wait_empty(Duration::from_secs(2));
    assert_eq!(gh.closed("client_closed"), 4);
}

#[test]
fn half_close_reaches_backend_and_reply_still_arrives() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&simple_config("", "", backend, ""));
    let mut c = std::net::TcpStream::connect(gh.addr("in")).unwrap();
    c.write_all(b"question").unwrap();
    c.shutdown(Shutdown::Write).unwrap();

    let mut b = conns.recv_timeout(Duration::from_secs(5)).unwrap();
    let mut got = Vec::new();
    b.read_to_end(&mut got).unwrap(); // returns only at EOF: the half-close arrived
    assert_eq!(got, b"question");
    // The proxy keeps the other direction open while the backend answers.
    gh.wait_for("draining state", Duration::from_secs(2), |g| {
        g.connections()["connections"][0]["state"] == "draining"
    });
    b.write_all(b"answer").unwrap();
    b.shutdown(Shutdown::Write).unwrap();

    let (reply, eof) = read_to_end(&mut c);
    assert!(eof);
    assert_eq!(reply, b"answer");
    gh.wait_empty(Duration::from_secs(2));
    assert_eq!(gh.closed("client_closed"), 1);
    assert_accounted(&gh);
}

#[test]
fn upstream_half_close_is_passed_to_the_client() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&simple_config("", "", backend, ""));
    let mut c = std::net::TcpStream::connect(gh.addr("in")).unwrap();
    let mut b = conns.recv_timeout(Duration::from_secs(5)).unwrap();
    b.write_all(b"banner").unwrap();
    b.shutdown(Shutdown::Write).unwrap();
    let mut banner = [0u8; 6];
    c.read_exact(&mut banner).unwrap();
    assert_eq!(
        c.read(&mut [0u8; 8]).unwrap(),
        0,
        "client must see the upstream's EOF"
    );
    c.write_all(b"late words").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    b.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"late words");
    gh.wait_empty(Duration::from_secs(2));
    assert_eq!(gh.closed("upstream_closed"), 1);
}
