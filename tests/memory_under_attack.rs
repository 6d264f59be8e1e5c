//! Memory under attack, measured on the real binary: an idle WebSocket
//! holds no task and no buffers (it waits parked), and after a flood of
//! slowloris connections ends, the memory it took goes back to the system,
//! with several workers as with one.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A WebSocket backend: answers each upgrade with 101 and keeps the
/// connection, silent.
fn ws_backend() -> (SocketAddr, Arc<Mutex<Vec<TcpStream>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let kept = Arc::new(Mutex::new(Vec::new()));
    let kept2 = kept.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            if read_request(&mut s).is_none() {
                continue;
            }
            let _ = s.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            );
            kept2.lock().unwrap().push(s);
        }
    });
    (addr, kept)
}

fn open_websocket(web: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(web).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

fn parked(gh: &Gatehouse) -> u64 {
    gh.metric("gatehouse_http_parked_connections", &[])
}

/// Growth of the RSS per idle WebSocket tunnel: idle for the parking
/// delay, a tunnel leaves its task and tokio's reactor (both sockets wait
/// in the parking lot), so it holds no buffer, no task and no timer: only
/// its slot, its table entry and the two sockets.
/// (The debug build the tests run: about 0.6 KiB here.)
#[test]
fn an_idle_websocket_holds_no_task_and_no_buffers() {
    let (backend, _kept) = ws_backend();
    let gh = Gatehouse::start(&http_config(
        "limits.max_connections = 20000",
        "http.access_log = false",
        backend,
        "policy.allow_upgrade = true",
    ));
    let web = gh.addr("web");
    // Warm up: pools, timers and the allocator's first pages.
    let mut held: Vec<TcpStream> = (0..200).map(|_| open_websocket(web)).collect();
    let n = 2000;
    gh.wait_for("the first tunnels parked", Duration::from_secs(10), |gh| {
        parked(gh) == 200
    });
    let before = gh.rss_kib();
    held.extend((0..n).map(|_| open_websocket(web)));
    // Settled: every tunnel established, idle and parked.
    gh.wait_for("tunnels parked", Duration::from_secs(15), |gh| {
        parked(gh) == n + 200
    });
    let upgraded = gh.metric("gatehouse_connections_active", &[("state", "upgraded")]);
    assert_eq!(upgraded, n + 200);
    let after = gh.rss_kib();
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    eprintln!("idle WebSocket: {per:.0} bytes each ({before} -> {after} KiB)");
    assert!(
        per <= 2.0 * 1024.0,
        "an idle WebSocket costs {per:.0} bytes"
    );
    drop(held);
}

/// A parked WebSocket wakes up for a byte either way, parks again when
/// idle, and ends at its idle timeout while parked, with that reason.
#[test]
fn a_parked_websocket_carries_bytes_both_ways_and_ends_at_its_idle_timeout() {
    let (backend, kept) = ws_backend();
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        backend,
        "policy.allow_upgrade = true\npolicy.idle_timeout = \"4s\"",
    ));
    let mut ws = open_websocket(gh.addr("web"));
    gh.wait_for("the tunnel parked", Duration::from_secs(10), |gh| {
        parked(gh) == 1
    });
    let mut up = kept.lock().unwrap().pop().unwrap();
    // Client to upstream, from the lot.
    ws.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    up.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    gh.wait_for("the tunnel parked again", Duration::from_secs(10), |gh| {
        parked(gh) == 1
    });
    // Upstream to client, from the lot.
    up.write_all(b"pong").unwrap();
    ws.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    // Then nothing: parked again, and ended at the idle timeout (counted
    // from the last byte, not from the parking).
    let last = Instant::now();
    gh.wait_for("the tunnel parked again", Duration::from_secs(10), |gh| {
        parked(gh) == 1
    });
    let ended = wait_closed(&mut ws, Duration::from_secs(10));
    let idle = last.elapsed();
    assert!(
        idle >= Duration::from_millis(3900) && idle < Duration::from_secs(6),
        "ended after {idle:?} idle ({ended:?})"
    );
    gh.wait_closed_count("idle_timeout", 1);
    assert_eq!(parked(&gh), 0);
    assert_eq!(gh.close_wait(), 0);
}

/// RSS within 25 % of its value before a flood, waited for at most 30 s
/// after the flood's last connection ended.
fn assert_memory_returns(gh: &Gatehouse, before: u64, peak: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let limit = before + before / 4;
    loop {
        let now = gh.rss_kib();
        if now <= limit {
            eprintln!("RSS before {before} KiB, peak {peak} KiB, after {now} KiB");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "RSS still {now} KiB 30 s after the flood (before {before} KiB, peak {peak} KiB)"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Four rounds of 5,000 slowloris connections (half a head each, then
/// nothing), each round cut at the header deadline.
fn slowloris_rounds(workers: &str) {
    let (backend, _kept) = ws_backend();
    let gh = Gatehouse::start(&http_config(
        &format!("{workers}\nlimits.max_connections = 20000"),
        "http.header_read_timeout = \"1s\"\nhttp.access_log = false",
        backend,
        "",
    ));
    let web = gh.addr("web");
    // A few ordinary requests first: the steady state's memory.
    for _ in 0..50 {
        let _ = raw_exchange(
            web,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
    }
    gh.wait_empty(Duration::from_secs(5));
    let before = gh.rss_kib();
    let mut peak = before;
    for round in 1..=4u64 {
        let held: Vec<TcpStream> = (0..5000)
            .map(|_| {
                let mut s = TcpStream::connect(web).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                    .unwrap();
                s
            })
            .collect();
        peak = peak.max(gh.rss_kib());
        gh.wait_for("the round cut", Duration::from_secs(20), |gh| {
            gh.closed("client_header_timeout") >= round * 5000
        });
        drop(held);
    }
    gh.wait_empty(Duration::from_secs(10));
    assert_memory_returns(&gh, before, peak);
}

#[test]
fn memory_taken_by_a_slowloris_flood_is_given_back_with_one_worker() {
    slowloris_rounds("workers = 1");
}

#[test]
fn memory_taken_by_a_slowloris_flood_is_given_back_with_several_workers() {
    slowloris_rounds("workers = 2");
}

/// A parked WebSocket is a live connection: the drain at shutdown waits
/// for it (its deadline), then closes it.
#[test]
fn a_parked_websocket_lives_until_the_drain_deadline() {
    let (backend, kept) = ws_backend();
    let gh = Gatehouse::start(&http_config(
        "[timeouts]\nshutdown_drain = \"1s\"",
        "",
        backend,
        "policy.allow_upgrade = true",
    ));
    let mut ws = open_websocket(gh.addr("web"));
    gh.wait_for("the tunnel parked", Duration::from_secs(10), |gh| {
        parked(gh) == 1
    });
    let start = Instant::now();
    let status = gh.terminate(Duration::from_secs(5));
    let took = start.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "exit after {took:?}"
    );
    wait_closed(&mut ws, Duration::from_secs(1));
    let mut up = kept.lock().unwrap().pop().unwrap();
    wait_closed(&mut up, Duration::from_secs(1));
}
