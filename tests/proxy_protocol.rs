//! PROXY v1/v2 from trusted sources show the original client in
//! /connections and in the header sent upstream; untrusted, malformed,
//! truncated, oversized and missing headers end with the right reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use gatehouse::proxy_protocol::{self, Framing, Tlv};

const ACCEPT: &str =
    "proxy_protocol.trusted = [\"127.0.0.1/32\"]\nproxy_protocol.timeout = \"700ms\"";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Reads exactly one PROXY header from a backend connection.
fn read_header(b: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match proxy_protocol::frame(&buf) {
            Framing::Complete(len) => {
                assert_eq!(len, buf.len());
                return buf;
            }
            Framing::Incomplete => {
                b.read_exact(&mut byte).unwrap();
                buf.push(byte[0]);
            }
            other => panic!("backend got no header: {other:?} after {buf:?}"),
        }
    }
}

fn established_client(gh: &Gatehouse) -> String {
    let mut client = String::new();
    gh.wait_for("an established connection", Duration::from_secs(3), |g| {
        let c = g.connections();
        match c["connections"].as_array().unwrap().first() {
            Some(e) if e["state"] == "established" => {
                client = e["client"].as_str().unwrap().to_string();
                true
            }
            _ => false,
        }
    });
    client
}

#[test]
fn v1_from_trusted_source_is_used_and_sent_on() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&simple_config(
        "",
        ACCEPT,
        backend,
        "action.send_proxy_protocol = \"v1\"",
    ));
    let mut c = TcpStream::connect(gh.addr("in")).unwrap();
    c.write_all(b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\nhello")
        .unwrap();
    let mut b = conns.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        read_header(&mut b),
        b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n"
    );
    let mut hello = [0u8; 5];
    b.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"hello");
    assert_eq!(established_client(&gh), "203.0.113.7:40000");
    // Bytes read together with the header count as the client's.
    let table = gh.connections();
    assert_eq!(
        table["connections"][0]["bytes_client_to_upstream"], 5,
        "{table:#}"
    );
}

#[test]
fn v2_with_tlvs_from_trusted_source_is_passed_on_end_to_end() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&simple_config(
        "",
        ACCEPT,
        backend,
        "action.send_proxy_protocol = \"v2\"\naction.pass_tlvs = true",
    ));
    let tlvs = vec![
        Tlv {
            kind: 0x02,
            value: b"api.example.com".to_vec(),
        },
        Tlv {
            kind: 0x05,
            value: b"req-123".to_vec(),
        },
        Tlv {
            kind: 0xE1,
            value: vec![0, 1, 2, 255],
        },
    ];
    let header = proxy_protocol::encode_v2(
        addr("[2001:db8::7]:50123"),
        addr("[2001:db8::1]:443"),
        &tlvs,
    );
    let mut c = TcpStream::connect(gh.addr("in")).unwrap();
    c.write_all(&header).unwrap();
    c.write_all(b"payload").unwrap();
    let mut b = conns.recv_timeout(Duration::from_secs(5)).unwrap();
    let sent = read_header(&mut b);
    let (decoded, _) = proxy_protocol::decode(&sent).unwrap();
    assert_eq!(
        decoded.addresses,
        Some((addr("[2001:db8::7]:50123"), addr("[2001:db8::1]:443")))
    );
    assert_eq!(decoded.tlvs, tlvs, "TLVs must pass unchanged and in order");
    let mut p = [0u8; 7];
    b.read_exact(&mut p).unwrap();
    assert_eq!(&p, b"payload");
    assert_eq!(established_client(&gh), "[2001:db8::7]:50123");
    let table = gh.connections();
    assert_eq!(table["connections"][0]["proxy_tlvs"][0]["kind"], 2);
}

#[test]
fn v2_without_pass_tlvs_sends_only_addresses() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&simple_config(
        "",
        ACCEPT,
        backend,
        "action.send_proxy_protocol = \"v2\"",
    ));
    let tlvs = vec![Tlv {
        kind: 0x02,
        value: b"x".to_vec(),
    }];
    let mut c = TcpStream::connect(gh.addr("in")).unwrap();
    c.write_all(&proxy_protocol::encode_v2(
        addr("10.9.8.7:1234"),
        addr("10.0.0.1:80"),
        &tlvs,
    ))
    .unwrap();
    let mut b = conns.recv_timeout(Duration::from_secs(5)).unwrap();
    let (decoded, _) = proxy_protocol::decode(&read_header(&mut b)).unwrap();
    assert_eq!(decoded.addresses.unwrap().0, addr("10.9.8.7:1234"));
    assert!(decoded.tlvs.is_empty());
}

fn expect_rejected(
    gh: &Gatehouse,
    src: &str,
    bytes: &[u8],
    close_after_write: bool,
    reason: &str,
    n: u64,
) {
    let mut c = connect_from(src, gh.addr("in"));
    let _ = c.write_all(bytes);
    if close_after_write {
        let _ = c.shutdown(std::net::Shutdown::Write);
    }
    wait_closed(&mut c, Duration::from_secs(3));
    gh.wait_for(reason, Duration::from_secs(2), |g| g.closed(reason) == n);
}

#[test]
fn bad_headers_end_with_their_reason() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&simple_config("", ACCEPT, backend, ""));
    let v2 = proxy_protocol::encode_v2(addr("1.2.3.4:5"), addr("6.7.8.9:10"), &[]);

    // From an address that is not trusted, even a well-formed header.
    expect_rejected(
        &gh,
        "127.0.0.2",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        false,
        "proxy_header_untrusted",
        1,
    );
    expect_rejected(
        &gh,
        "127.0.0.3",
        b"plain data",
        false,
        "proxy_header_untrusted",
        2,
    );

    let mut invalid = 0;
    let mut bad_version = v2.clone();
    bad_version[12] = 0x31;
    let mut oversized = v2.clone();
    oversized[14..16].copy_from_slice(&60000u16.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "v1 garbage",
            b"PROXY TCP4 not an address\r\n".to_vec(),
            false,
        ),
        (
            "v1 wrong family",
            b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec(),
            false,
        ),
        (
            "v1 no CRLF in 107 bytes",
            [b"PROXY TCP4 ".as_slice(), &[b'9'; 150]].concat(),
            false,
        ),
        (
            "v1 truncated then EOF",
            b"PROXY TCP4 1.2.3.4".to_vec(),
            true,
        ),
        ("v2 bad version", bad_version, false),
        ("v2 oversized length", oversized, false),
        ("v2 truncated then EOF", v2[..20].to_vec(), true),
        ("missing header", b"GET / HTTP/1.1\r\n\r\n".to_vec(), false),
        ("lone CR LF", b"\r\n\r\n".to_vec(), true),
    ];
    for (name, bytes, close) in cases {
        invalid += 1;
        eprintln!("case: {name}");
        expect_rejected(
            &gh,
            "127.0.0.1",
            &bytes,
            close,
            "proxy_header_invalid",
            invalid,
        );
    }

    // A client that never sends the header: closed at the header deadline.
    let mut silent = TcpStream::connect(gh.addr("in")).unwrap();
    let took = wait_closed(&mut silent, Duration::from_secs(3));
    assert!(
        took >= Duration::from_millis(600) && took <= Duration::from_millis(1700),
        "{took:?}"
    );
    gh.wait_closed_count("proxy_header_timeout", 1);

    // Nothing reached the backend, the process is alive, all accounted for.
    assert!(conns.try_recv().is_err());
    gh.wait_empty(Duration::from_secs(1));
    assert_accounted(&gh);
}

#[test]
fn optional_mode_lets_direct_clients_in_but_refuses_their_headers() {
    let backend = echo_backend();
    let listener = "proxy_protocol.trusted = [\"127.0.0.1/32\"]\nproxy_protocol.required = false";
    let gh = Gatehouse::start(&simple_config("", listener, backend, ""));
    // Untrusted direct client: plain bytes pass.
    let mut c = connect_from("127.0.0.2", gh.addr("in"));
    c.write_all(b"direct").unwrap();
    let mut buf = [0u8; 6];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"direct");
    // Untrusted client sending a header: refused.
    expect_rejected(
        &gh,
        "127.0.0.2",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        false,
        "proxy_header_untrusted",
        1,
    );
    // Trusted peer without header: a direct client too.
    let mut t = connect_from("127.0.0.1", gh.addr("in"));
    t.write_all(b"trusted").unwrap();
    let mut buf = [0u8; 7];
    t.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"trusted");
}
