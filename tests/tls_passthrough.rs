//! TLS listeners routing by SNI: passthrough to TLS backends (the client
//! sees the backend's certificate), terminate and re-encrypt at L4, PROXY v2
//! with the TLS TLVs, and every ClientHello failure ending with its reason
//! and leaving nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tls::{Pki, peer_names, real_client_hello, tls_connect, tls_echo_backend};
use common::*;

fn echo_roundtrip(s: &mut common::tls::ClientStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    s.flush().unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

fn s_client(addr: std::net::SocketAddr, sni: &str, ca: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            sni,
        ])
        .arg("-CAfile")
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn passthrough_routes_by_sni_and_the_client_sees_the_backends_certificate() {
    let pki = Pki::new("ca");
    let (a_cert, a_key) = pki.issue("a", &["a.test"]);
    let (b_cert, b_key) = pki.issue("b", &["*.b.test"]);
    let (a, a_seen) = tls_echo_backend(&a_cert, &a_key);
    let (b, b_seen) = tls_echo_backend(&b_cert, &b_key);
    let gh = Gatehouse::start(&format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 2
[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
protocol = "tls"
[[routes]]
name = "a"
match = {{ listener = "edge", sni = ["a.test"] }}
action.forward = ["{a}"]
[[routes]]
name = "b"
match = {{ listener = "edge", sni = ["*.b.test"] }}
action.forward = ["{b}"]
"#
    ));
    let edge = gh.addr("edge");

    let mut s = tls_connect(edge, "a.test", pki.client(&[])).unwrap();
    assert_eq!(peer_names(&s), vec!["a.test".to_string()]);
    echo_roundtrip(&mut s, b"through a");
    let mut s2 = tls_connect(edge, "x.b.test", pki.client(&[])).unwrap();
    assert_eq!(peer_names(&s2), vec!["*.b.test".to_string()]);
    echo_roundtrip(&mut s2, b"through b");
    assert_eq!(a_seen.lock().unwrap().as_slice(), &[Some("a.test".into())]);
    // The live table shows the name each connection asked for.
    let table = gh.connections();
    let mut snis: Vec<&str> = table["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["sni"].as_str())
        .collect();
    snis.sort();
    assert_eq!(snis, ["a.test", "x.b.test"], "{table:#}");
    assert_eq!(
        b_seen.lock().unwrap().as_slice(),
        &[Some("x.b.test".into())]
    );

    // The same with openssl s_client, as a user would check it.
    let out = s_client(edge, "a.test", &pki.ca_pem);
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("subject=") && l.contains("a.test")),
        "{out}"
    );
    let out = s_client(edge, "www.b.test", &pki.ca_pem);
    assert!(
        out.lines()
            .any(|l| l.starts_with("subject=") && l.contains("*.b.test")),
        "{out}"
    );

    // A name no route serves ends the connection before any upstream work.
    assert!(tls_connect(edge, "c.test", pki.client(&[])).is_err());
    gh.wait_closed_count("no_route", 1);
    // No SNI at all (an IP address as the name sends none).
    assert!(tls_connect(edge, "127.0.0.1", pki.client(&[])).is_err());
    gh.wait_closed_count("tls_no_sni", 1);
    drop((s, s2));
    gh.wait_empty(Duration::from_secs(5));
}

#[test]
fn partial_garbage_and_slow_hellos_end_with_their_reason_and_leave_nothing() {
    let pki = Pki::new("ca");
    let (a_cert, a_key) = pki.issue("a", &["a.test"]);
    let (a, _) = tls_echo_backend(&a_cert, &a_key);
    let gh = Gatehouse::start(&format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 1
[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
protocol = "tls"
tls.handshake_timeout = "1s"
[[routes]]
name = "a"
match = {{ listener = "edge", sni = ["a.test"] }}
action.forward = ["{a}"]
"#
    ));
    let edge = gh.addr("edge");
    // Warm up, then take the baseline.
    let mut s = tls_connect(edge, "a.test", pki.client(&[])).unwrap();
    echo_roundtrip(&mut s, b"warm");
    drop(s);
    gh.wait_empty(Duration::from_secs(5));
    let baseline = gh.fd_count();

    // Half a ClientHello, then nothing: closed at the handshake deadline.
    let hello = real_client_hello(&pki, "a.test");
    let mut half = TcpStream::connect(edge).unwrap();
    half.write_all(&hello[..hello.len() / 2]).unwrap();
    let took = wait_closed(&mut half, Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(2),
        "{took:?}"
    );
    gh.wait_closed_count("tls_hello_timeout", 1);

    // Garbage: closed at once.
    let mut g = TcpStream::connect(edge).unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let took = wait_closed(&mut g, Duration::from_secs(5));
    assert!(took < Duration::from_millis(500), "{took:?}");
    gh.wait_closed_count("tls_hello_invalid", 1);
    // Both show in the log with their side.
    gh.wait_log(
        r#""reason":"tls_hello_timeout","side":"client""#,
        Duration::from_secs(1),
    );
    gh.wait_log(
        r#""reason":"tls_hello_invalid","side":"client""#,
        Duration::from_secs(1),
    );

    // Many at once, mixed with good ones and clients leaving mid-hello.
    let started = Instant::now();
    let mut held = Vec::new();
    for i in 0..60 {
        match i % 4 {
            0 => {
                let mut s = tls_connect(edge, "a.test", pki.client(&[])).unwrap();
                echo_roundtrip(&mut s, b"ok");
            }
            1 => {
                let mut t = TcpStream::connect(edge).unwrap();
                t.write_all(&hello[..10]).unwrap();
                held.push(t); // stalls
            }
            2 => {
                let mut t = TcpStream::connect(edge).unwrap();
                t.write_all(&hello[..20]).unwrap();
                drop(t); // leaves mid-hello
            }
            _ => {
                let mut t = TcpStream::connect(edge).unwrap();
                t.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3])
                    .unwrap();
                let _ = wait_closed(&mut t, Duration::from_secs(5));
            }
        }
    }
    gh.wait_empty(Duration::from_secs(5));
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(held);
    assert_eq!(gh.close_wait(), 0);
    gh.wait_for("FDs back to baseline", Duration::from_secs(5), |g| {
        g.fd_count() <= baseline
    });
    assert_eq!(gh.closed("internal_error"), 0);
}

#[test]
fn terminate_and_reencrypt_at_l4_and_proxy_v2_carries_sni_and_alpn() {
    let pki = Pki::new("ca");
    let (edge_cert, edge_key) = pki.issue("edge", &["plain.test", "again.test", "pp.test"]);
    let (up_cert, up_key) = pki.issue("up", &["upstream.internal"]);
    let (tls_up, tls_seen) = tls_echo_backend(&up_cert, &up_key);
    let plain = echo_backend();
    let (captured, streams) = capture_backend();
    let gh = Gatehouse::start(&format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 2
[[certificates]]
cert = "{}"
key = "{}"
[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
protocol = "tls"
[[routes]]
name = "plain"
match = {{ listener = "edge", sni = ["plain.test"] }}
tls = "terminate"
action.forward = ["{plain}"]
[[routes]]
name = "again"
match = {{ listener = "edge", sni = ["again.test"] }}
tls = "terminate_and_reencrypt"
action.forward = ["{tls_up}"]
upstream = {{ ca = "{}", server_name = "upstream.internal" }}
[[routes]]
name = "pp"
match = {{ listener = "edge", sni = ["pp.test"] }}
action.forward = ["{captured}"]
action.send_proxy_protocol = "v2"
"#,
        edge_cert.display(),
        edge_key.display(),
        pki.ca_pem.display()
    ));
    let edge = gh.addr("edge");

    // Terminated: the client sees our certificate, the backend plaintext.
    let mut s = tls_connect(edge, "plain.test", pki.client(&[])).unwrap();
    assert!(peer_names(&s).contains(&"plain.test".to_string()));
    echo_roundtrip(&mut s, b"decrypted here");
    // Re-encrypted: a verified TLS connection with the configured SNI.
    let mut r = tls_connect(edge, "again.test", pki.client(&[])).unwrap();
    echo_roundtrip(&mut r, b"encrypted twice");
    assert_eq!(
        tls_seen.lock().unwrap().as_slice(),
        &[Some("upstream.internal".into())]
    );
    // Half-close through both TLS layers: the client's close_notify reaches
    // the backend, whose close comes back.
    r.conn.send_close_notify();
    r.flush().unwrap();
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    drop((s, r));

    // Passthrough with PROXY v2: the header names the server and the protocol.
    let client = std::thread::spawn({
        let config = pki.client(&[b"h2", b"http/1.1"]);
        move || {
            let _ = tls_connect(edge, "pp.test", config);
        }
    });
    let mut up = streams.recv_timeout(Duration::from_secs(5)).unwrap();
    up.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut have = 0;
    let header = loop {
        let n = up.read(&mut buf[have..]).unwrap();
        assert!(n > 0, "upstream closed before the header");
        have += n;
        if let Ok((h, len)) = gatehouse::proxy_protocol::decode(&buf[..have]) {
            break (h, len);
        }
    };
    let (h, len) = header;
    let tlv = |kind: u8| {
        h.tlvs
            .iter()
            .find(|t| t.kind == kind)
            .map(|t| t.value.clone())
    };
    assert_eq!(tlv(0x02).as_deref(), Some(&b"pp.test"[..]));
    assert_eq!(tlv(0x01).as_deref(), Some(&b"h2"[..]));
    assert_eq!(
        buf[len], 0x16,
        "the ClientHello follows the header untouched"
    );
    drop(up);
    let _ = client.join();
    gh.wait_empty(Duration::from_secs(5));
}
