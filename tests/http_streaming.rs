//! Bodies stream both ways with bounded buffers: 1 GiB up and 1 GiB down
//! with the proxy's RSS under 64 MiB; a slow chunked response reaches the
//! client chunk by chunk; trailers pass; `Expect: 100-continue` works; a
//! client that goes away mid-upload or mid-download leaves no upstream
//! connection behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const GIB: u64 = 1 << 30;

/// Samples the RSS of `pid` until `stop`; returns the maximum seen.
fn watch_rss(pid: u32, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut max = 0;
        while !stop.load(Ordering::Relaxed) {
            max = max.max(rss_kib_of(pid));
            thread::sleep(Duration::from_millis(50));
        }
        max
    })
}

/// Upload: counts the body and answers with the count. Download: `GET /N` sends N zero bytes.
fn bulk_backend() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut r = BufReader::with_capacity(1 << 20, s.try_clone().unwrap());
                let mut w = s;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let mut len = 0u64;
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        if h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let got = std::io::copy(&mut (&mut r).take(len), &mut std::io::sink()).unwrap();
                    if line.starts_with("GET") {
                        let n: u64 = target.trim_start_matches('/').parse().unwrap_or(0);
                        write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").unwrap();
                        let chunk = vec![0u8; 1 << 20];
                        let mut left = n;
                        while left > 0 {
                            let k = left.min(chunk.len() as u64) as usize;
                            if w.write_all(&chunk[..k]).is_err() {
                                return;
                            }
                            left -= k as u64;
                        }
                    } else {
                        let body = got.to_string();
                        write!(
                            w,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .unwrap();
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn one_gib_each_way_with_flat_memory() {
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        bulk_backend(),
        "policy.max_body_size = \"2GiB\"",
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_rss(gh.pid(), stop.clone());

    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {GIB}\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..1024 {
        s.write_all(&chunk).unwrap();
    }
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(String::from_utf8_lossy(&body), GIB.to_string());

    write!(s, "GET /{GIB} HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let got = std::io::copy(&mut (&mut r).take(GIB), &mut std::io::sink()).unwrap();
    assert_eq!(got, GIB);

    stop.store(true, Ordering::Relaxed);
    let max_kib = watcher.join().unwrap();
    eprintln!("max RSS during 2 GiB of transfers: {max_kib} KiB");
    assert!(max_kib < 64 * 1024, "RSS reached {max_kib} KiB");
}

#[test]
fn chunks_reach_the_client_as_the_backend_produces_them_and_trailers_pass() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let finished = Arc::new(AtomicU64::new(0));
    let finished2 = finished.clone();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    thread::spawn(move || {
        let mut s = conns.recv().unwrap();
        let _ = read_request(&mut s);
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n5\r\nfirst\r\n").unwrap();
        // Hold the rest until the client has seen the first chunk.
        go_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        s.write_all(b"6\r\nsecond\r\n0\r\nX-Checksum: abc\r\n\r\n")
            .unwrap();
        finished2.store(1, Ordering::Relaxed);
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf);
    });
    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("first") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        finished.load(Ordering::Relaxed),
        0,
        "the first chunk arrived before the backend finished"
    );
    go_tx.send(()).unwrap();
    while !seen.ends_with(b"\r\n\r\n") || !String::from_utf8_lossy(&seen).contains("second") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(text.contains("x-checksum: abc"), "trailer lost: {text}");
}

#[test]
fn expect_100_continue_does_not_deadlock() {
    let (backend, seen) = raw_http_backend(|r| ok_response(&format!("{}", r.body.len())));
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    s.write_all(b"hello").unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"5");
    assert!(seen.lock().unwrap()[0].header("expect").is_empty());
}

/// Upstream connections of the proxy that are open right now (by the backend's count).
fn backend_with_counter() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let open = Arc::new(AtomicU64::new(0));
    let open2 = open.clone();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let open = open2.clone();
            open.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let mut s = s;
                while let Some(req) = read_request(&mut s) {
                    if req.request_line().starts_with("GET /big") {
                        let _ =
                            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n");
                        let chunk = vec![1u8; 65536];
                        while s.write_all(&chunk).is_ok() {}
                        break;
                    }
                    if s.write_all(&ok_response("ok")).is_err() {
                        break;
                    }
                }
                // read_request returns None at EOF or reset: the proxy closed it.
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

#[test]
fn clients_leaving_mid_transfer_leave_no_upstream_connection() {
    let (backend, open) = backend_with_counter();
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        backend,
        "policy.max_body_size = \"1GiB\"",
    ));
    let addr = gh.addr("web");
    // Mid-download abort.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < 4 << 20 {
        got += s.read(&mut buf).unwrap();
    }
    drop(s);
    // Mid-upload abort.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000\r\n\r\n")
        .unwrap();
    for _ in 0..4 {
        s.write_all(&buf).unwrap();
    }
    drop(s);
    // Both upstream connections of the aborted requests are closed, not pooled.
    let deadline = Instant::now() + Duration::from_secs(5);
    while open.load(Ordering::SeqCst) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} upstream connections still open",
            open.load(Ordering::SeqCst)
        );
        thread::sleep(Duration::from_millis(20));
    }
    gh.wait_empty(Duration::from_secs(2));
    assert_eq!(
        gh.metric(
            "gatehouse_http_request_end_total",
            &[("reason", "client_aborted")]
        ),
        2
    );
    // Clean requests leave a clean idle connection that the next one reuses.
    for _ in 0..3 {
        let (head, body) = raw_exchange(addr, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, b"ok");
    }
    // Sequential requests reuse pooled connections: three requests need at
    // most two (a connection goes back to the pool just after its response
    // reached the client, so the next request may race it).
    let open_now = open.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&open_now),
        "{open_now} upstream connections for 3 sequential requests"
    );
}
