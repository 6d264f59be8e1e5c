//! Requests with bodies and upgrades on our HTTP/1.1 client (the only one):
//! a sized body and a chunked one with trailers arrive byte-exact and the
//! connection serves the next request; an upstream that answers before
//! the body's end is the answer, and that connection is not reused; a
//! body and an upgrade go over TLS to the upstream too.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::tls::{Pki, tls_backend};
use common::*;

/// Reads a request head (through the blank line) byte by byte.
fn read_head(s: &mut impl Read) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A backend that keeps each request's raw bytes (head, then a chunked
/// body read through its trailers, or a sized one) and answers 200; counts
/// connections.
type Recorded = Arc<Mutex<Vec<Vec<u8>>>>;

fn raw_recording_backend() -> (SocketAddr, Recorded, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let conns = Arc::new(AtomicUsize::new(0));
    let (seen2, conns2) = (seen.clone(), conns.clone());
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            conns2.fetch_add(1, Ordering::SeqCst);
            let seen = seen2.clone();
            thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                while let Some(head) = read_head(&mut r) {
                    let mut raw = head.clone().into_bytes();
                    let lower = head.to_ascii_lowercase();
                    if lower.contains("transfer-encoding: chunked") {
                        // Chunks, the last one, trailers, the blank line.
                        loop {
                            let mut line = String::new();
                            r.read_line(&mut line).unwrap();
                            raw.extend_from_slice(line.as_bytes());
                            let size = usize::from_str_radix(line.trim(), 16).unwrap();
                            if size == 0 {
                                loop {
                                    let mut t = String::new();
                                    r.read_line(&mut t).unwrap();
                                    raw.extend_from_slice(t.as_bytes());
                                    if t == "\r\n" {
                                        break;
                                    }
                                }
                                break;
                            }
                            let mut chunk = vec![0u8; size + 2];
                            r.read_exact(&mut chunk).unwrap();
                            raw.extend_from_slice(&chunk);
                        }
                    } else if let Some(len) = lower
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                    {
                        let mut body = vec![0u8; len.trim().parse().unwrap()];
                        r.read_exact(&mut body).unwrap();
                        raw.extend_from_slice(&body);
                    }
                    seen.lock().unwrap().push(raw);
                    if w.write_all(&ok_response("got")).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen, conns)
}

fn body_of(raw: &[u8]) -> &[u8] {
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    &raw[at + 4..]
}

#[test]
fn sized_and_chunked_bodies_arrive_exact_and_the_connection_serves_the_next() {
    let (backend, seen, conns) = raw_recording_backend();
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let addr = gh.addr("web");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    let sized = pattern(300_000, 7);
    let mut req = format!(
        "PUT /sized HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        sized.len()
    )
    .into_bytes();
    req.extend_from_slice(&sized);
    s.write_all(&req).unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"got");

    s.write_all(
        b"PUT /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
          5\r\nhello\r\n1;ext=a\r\n \r\n5\r\nworld\r\n0\r\nX-Sum: 42\r\n\r\n",
    )
    .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"got");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    let first = String::from_utf8_lossy(&seen[0]).to_ascii_lowercase();
    assert!(first.contains(&format!("content-length: {}", sized.len())));
    assert!(!first.contains("transfer-encoding"));
    assert_eq!(body_of(&seen[0]), &sized[..]);
    // Re-chunked as it came (extensions are the client's hop's), with its trailer.
    let second = String::from_utf8_lossy(&seen[1]).to_string();
    assert!(
        second
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked\r\n"),
        "{second}"
    );
    let chunked = String::from_utf8_lossy(body_of(&seen[1])).to_string();
    let data: String = chunked
        .split("\r\n")
        .collect::<Vec<_>>()
        .chunks(2)
        .take_while(|c| c[0] != "0")
        .map(|c| c[1])
        .collect();
    assert_eq!(data, "hello world");
    assert!(chunked.contains("0\r\nx-sum: 42\r\n\r\n"), "{chunked:?}");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "one upstream connection for both"
    );
    drop(s);
    gh.wait_empty(Duration::from_secs(5));
}

/// A backend that answers `413` as soon as it has a head with a body
/// announced, without reading the body, then waits for the peer to close.
fn refusing_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let conns2 = conns.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            conns2.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                while let Some(head) = read_head(&mut s) {
                    let resp: &[u8] = if head.starts_with("GET") {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    } else {
                        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\nbig!"
                    };
                    if s.write_all(resp).is_err() {
                        return;
                    }
                    if !head.starts_with("GET") {
                        // Whatever the proxy still sends is drained until it closes.
                        let mut sink = [0u8; 65536];
                        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

#[test]
fn an_answer_before_the_bodys_end_is_the_answer_and_its_connection_is_not_reused() {
    let (backend, conns) = refusing_backend();
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let addr = gh.addr("web");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Announces 8 MiB, sends 64 KiB, then waits for the answer.
    let mut req = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 8388608\r\n\r\n".to_vec();
    req.extend_from_slice(&pattern(65536, 3));
    s.write_all(&req).unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(body, b"big!");
    drop(s);

    // The next request goes on a new upstream connection.
    let (head, body) = raw_exchange(
        addr,
        b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    gh.wait_empty(Duration::from_secs(5));
    assert_eq!(gh.close_wait(), 0);
}

#[test]
fn a_body_and_an_upgrade_go_over_tls_to_the_upstream() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.issue("backend", &["backend.internal"]);
    // Echoes a POST's body back; switches an upgrade to an echo of bytes.
    let (backend, _) = tls_backend(&cert, &key, |mut s| {
        while let Some(req) = read_request(&mut s) {
            if req.header("upgrade").first().map(String::as_str) == Some("echo") {
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nhi from upstream\n")
                    .unwrap();
                s.flush().unwrap();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).and_then(|()| s.flush()).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            let mut resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                req.body.len()
            )
            .into_bytes();
            resp.extend_from_slice(&req.body);
            if s.write_all(&resp).and_then(|()| s.flush()).is_err() {
                return;
            }
        }
    });
    let ca = pki.ca_pem.display();
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        backend,
        &format!(
            "upstream = {{ tls = true, ca = \"{ca}\", server_name = \"backend.internal\" }}\npolicy.allow_upgrade = true\npolicy.idle_timeout = \"10s\""
        ),
    ));
    let addr = gh.addr("web");

    let body = pattern(200_000, 11);
    let (status, echoed) = http_post(addr, "/echo", &body);
    assert_eq!(status, 200);
    assert_eq!(echoed, body);

    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /tunnel HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let head = read_head(&mut s).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(
        line, "hi from upstream\n",
        "what the upstream sent with its 101 comes first"
    );
    for i in 0..20 {
        let msg = format!("message {i}\n");
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = String::new();
        r.read_line(&mut back).unwrap();
        assert_eq!(back, msg);
    }
    drop((s, r));
    gh.wait_empty(Duration::from_secs(5));
}
