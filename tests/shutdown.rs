//! On SIGTERM new connections are refused, an in-flight
//! transfer completes within the drain deadline, the rest are closed at the
//! deadline with reason `shutdown`, and the exit code is 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// Waits for the listener to report itself closed, then checks that a new
/// connection is refused. (Probing with connects instead could slip a real
/// connection in before the close, which would then sit in the drain.)
fn wait_refused(gh: &Gatehouse, addr: std::net::SocketAddr) {
    gh.wait_log("listener closed", Duration::from_secs(3));
    let err = TcpStream::connect(addr).expect_err("listener still accepting after SIGTERM");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn in_flight_transfer_completes_and_new_connections_are_refused() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&simple_config(
        "timeouts.shutdown_drain = \"10s\"",
        "",
        backend,
        "",
    ));
    let addr = gh.addr("in");
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"start").unwrap();
    let mut b = conns.recv_timeout(Duration::from_secs(5)).unwrap();
    let mut buf = [0u8; 5];
    b.read_exact(&mut buf).unwrap();

    gh.signal("TERM");
    wait_refused(&gh, addr);

    // The established connection still carries a full transfer both ways.
    let payload = pattern(4 << 20, 3);
    let sender = {
        let payload = payload.clone();
        let mut b2 = b.try_clone().unwrap();
        std::thread::spawn(move || {
            b2.write_all(&payload).unwrap();
            b2.shutdown(Shutdown::Write).unwrap();
        })
    };
    let (got, eof) = read_to_end(&mut c);
    sender.join().unwrap();
    assert!(
        eof && got == payload,
        "transfer cut short: {} of {} bytes",
        got.len(),
        payload.len()
    );
    c.write_all(b"done").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut tail = Vec::new();
    b.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, b"done");
    drop(b);

    let started = Instant::now();
    let status = gh.terminate(Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "exit took {:?} with nothing left to drain",
        started.elapsed()
    );
}

#[test]
fn connections_left_at_the_drain_deadline_are_closed() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&simple_config(
        "timeouts.shutdown_drain = \"700ms\"",
        "",
        backend,
        "",
    ));
    let log = gh.log.clone();
    let mut c = TcpStream::connect(gh.addr("in")).unwrap();
    let mut b = conns.recv_timeout(Duration::from_secs(5)).unwrap();
    gh.wait_for("established", Duration::from_secs(2), |g| {
        g.connections()["connections"][0]["state"] == "established"
    });
    let start = Instant::now();
    let status = gh.terminate(Duration::from_secs(5));
    let took = start.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took >= Duration::from_millis(650) && took < Duration::from_secs(2),
        "exit after {took:?}"
    );
    wait_closed(&mut c, Duration::from_secs(1));
    wait_closed(&mut b, Duration::from_secs(1));
    let log = log.lock().unwrap().join("\n");
    assert!(log.contains("drain deadline reached"), "{log}");
}
