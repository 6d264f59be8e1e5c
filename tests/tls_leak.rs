//! The leak checks with TLS: thousands of TLS connections through one
//! Gatehouse process — passthrough, terminate, re-encrypt, HTTPS keep-alive
//! requests — mixed with every fault a TLS peer can cause (half and garbage
//! hellos, clients leaving mid-handshake, clients rejecting our certificate,
//! upstreams with untrusted certificates, unreachable upstreams, clients
//! closing mid-transfer). Afterwards: an empty table, no CLOSE_WAIT, the FD
//! count back at its baseline, every connection accounted for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::tls::{Pki, real_client_hello, tls_connect, tls_echo_backend};
use common::*;

#[test]
fn thousands_of_tls_connections_with_faults_leave_nothing_behind() {
    let pki = Pki::new("ca");
    let (edge_cert, edge_key) = pki.issue(
        "edge",
        &["t.test", "r.test", "bad.test", "hole.test", "www.test"],
    );
    let (up_cert, up_key) = pki.issue("up", &["up.internal"]);
    let rogue = Pki::new("rogue");
    let (rogue_cert, rogue_key) = rogue.issue("rogue", &["up.internal"]);
    let (p_cert, p_key) = pki.issue("p", &["p.test"]);
    let (pass_up, _) = tls_echo_backend(&p_cert, &p_key);
    let (tls_up, _) = tls_echo_backend(&up_cert, &up_key);
    let (rogue_up, _) = tls_echo_backend(&rogue_cert, &rogue_key);
    let plain = echo_backend();
    let (http_up, _) = raw_http_backend(|_| ok_response("hello over tls"));
    let hole = blackhole();
    let ca = pki.ca_pem.display();
    let config = format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 1
[limits]
splice_pipes = 8
[[certificates]]
cert = "{}"
key = "{}"
[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
protocol = "tls"
backlog = 4096
tls.handshake_timeout = "1s"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "https"
backlog = 4096
tls.handshake_timeout = "1s"
[[routes]]
name = "pass"
match = {{ listener = "edge", sni = ["p.test"] }}
action.forward = ["{pass_up}"]
[[routes]]
name = "term"
match = {{ listener = "edge", sni = ["t.test"] }}
tls = "terminate"
action.forward = ["{plain}"]
[[routes]]
name = "re"
match = {{ listener = "edge", sni = ["r.test"] }}
tls = "terminate_and_reencrypt"
action.forward = ["{tls_up}"]
upstream = {{ ca = "{ca}", server_name = "up.internal" }}
[[routes]]
name = "bad"
match = {{ listener = "edge", sni = ["bad.test"] }}
tls = "terminate_and_reencrypt"
action.forward = ["{rogue_up}"]
upstream = {{ ca = "{ca}", server_name = "up.internal" }}
[[routes]]
name = "hole"
match = {{ listener = "edge", sni = ["hole.test"] }}
tls = "terminate"
action.forward = ["{}"]
policy.connect_timeout = "300ms"
[[routes]]
name = "site"
match.listener = "web"
action.forward = ["{http_up}"]
policy.pool_idle_timeout = "1s"
"#,
        edge_cert.display(),
        edge_key.display(),
        hole.addr
    );
    let gh = Gatehouse::start(&config);
    let edge = gh.addr("edge");
    let web = gh.addr("web");
    let good = pki.client(&[]);
    let untrusting = rogue.client(&[]);
    let hello = real_client_hello(&pki, "t.test");

    // Warm up (pools, the splice pipes), then take the baseline.
    let mut s = tls_connect(edge, "p.test", good.clone()).unwrap();
    s.write_all(b"warm").unwrap();
    s.flush().unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    drop(s);
    gh.wait_empty(Duration::from_secs(5));
    // The splice pipes the warm-up leased age out of their pool.
    gh.wait_for("the splice pool to empty", Duration::from_secs(5), |g| {
        g.metric("gatehouse_splice_pipes", &[("state", "existing")]) == 0
    });
    let baseline = gh.fd_count();
    // A reload every second throughout: it must change nothing below.
    let reloads = gh.reload_every(Duration::from_secs(1), &config, "web");

    let hello = Arc::new(hello);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (good, untrusting, hello) = (good.clone(), untrusting.clone(), hello.clone());
            std::thread::spawn(move || {
                for i in 0..150 {
                    match (t * 150 + i) % 12 {
                        0 | 1 => {
                            let name = ["p.test", "t.test"][i % 2];
                            let mut s = tls_connect(edge, name, good.clone()).unwrap();
                            let msg = vec![i as u8; 1000 + i * 37];
                            s.write_all(&msg).unwrap();
                            s.flush().unwrap();
                            let mut got = vec![0u8; msg.len()];
                            s.read_exact(&mut got).unwrap();
                            assert_eq!(got, msg);
                        }
                        2 => {
                            let mut s = tls_connect(edge, "r.test", good.clone()).unwrap();
                            s.write_all(b"re-encrypted").unwrap();
                            s.flush().unwrap();
                            let mut got = [0u8; 12];
                            s.read_exact(&mut got).unwrap();
                        }
                        3 => {
                            // The upstream's certificate is not trusted.
                            let r =
                                tls_connect(edge, "bad.test", good.clone()).and_then(|mut s| {
                                    s.write_all(b"x")?;
                                    s.flush()?;
                                    let mut b = [0u8; 1];
                                    s.read(&mut b)
                                });
                            assert!(!matches!(r, Ok(n) if n > 0));
                        }
                        4 => {
                            // HTTPS keep-alive: three requests on one connection.
                            let mut s = tls_connect(web, "www.test", good.clone()).unwrap();
                            for _ in 0..3 {
                                s.write_all(b"GET / HTTP/1.1\r\nHost: www.test\r\n\r\n")
                                    .unwrap();
                                s.flush().unwrap();
                                let (head, body) = read_response(&mut s);
                                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                                assert_eq!(body, b"hello over tls");
                            }
                        }
                        5 => {
                            // Half a hello, then the client leaves.
                            let mut t = TcpStream::connect(edge).unwrap();
                            t.write_all(&hello[..hello.len() / 3]).unwrap();
                        }
                        6 => {
                            // Half a hello, then silence (ends at the deadline).
                            let mut t =
                                TcpStream::connect(if i % 2 == 0 { edge } else { web }).unwrap();
                            t.write_all(&hello[..20]).unwrap();
                            let _ = wait_closed(&mut t, Duration::from_secs(5));
                        }
                        7 => {
                            let mut t = TcpStream::connect(web).unwrap();
                            t.write_all(b"\x16\x03\x01\x00\x05garbage").unwrap();
                            let _ = wait_closed(&mut t, Duration::from_secs(5));
                        }
                        8 => {
                            // A client that rejects our certificate.
                            assert!(tls_connect(web, "www.test", untrusting.clone()).is_err());
                        }
                        9 => {
                            // Unreachable upstream after the handshake.
                            if let Ok(mut s) = tls_connect(edge, "hole.test", good.clone()) {
                                let mut b = [0u8; 1];
                                let _ = s.read(&mut b);
                            }
                        }
                        10 => {
                            // Closes mid-transfer without close_notify.
                            let mut s = tls_connect(edge, "t.test", good.clone()).unwrap();
                            s.write_all(&[7u8; 50_000]).unwrap();
                            s.flush().unwrap();
                            let _ = s.sock.shutdown(std::net::Shutdown::Both);
                        }
                        _ => {
                            // A full hello, then the client is gone (RST).
                            let t = TcpStream::connect(edge).unwrap();
                            let sock = socket2::SockRef::from(&t);
                            sock.set_linger(Some(Duration::ZERO)).unwrap();
                            (&t).write_all(&hello).unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(reloads.stop() > 0, "no reload during the run");
    gh.wait_empty(Duration::from_secs(10));
    assert_eq!(gh.close_wait(), 0);
    gh.wait_for("FDs back to baseline", Duration::from_secs(10), |g| {
        g.fd_count() <= baseline
    });
    assert_accounted(&gh);
    assert_eq!(gh.closed("internal_error"), 0);
    for reason in [
        "upstream_tls_verify_failed",
        "upstream_connect_timeout",
        "tls_hello_timeout",
        "tls_hello_invalid",
        "tls_handshake_failed",
    ] {
        assert!(gh.closed(reason) > 0, "no {reason}: {}", gh.get("/metrics"));
    }
}
