//! Proxy chains. Gatehouse A sends PROXY v2 to Gatehouse B,
//! which accepts it and tells the backend the real client; disconnects
//! (including while B is still connecting) empty both tables. The same chain
//! with HAProxy outside (`send-proxy-v2`) and inside (`accept-proxy`).
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn inner_config(target: SocketAddr, top: &str) -> String {
    simple_config(
        top,
        "proxy_protocol.trusted = [\"127.0.0.1/32\"]",
        target,
        "action.send_proxy_protocol = \"v1\"",
    )
}

fn outer_config(target: SocketAddr, top: &str) -> String {
    simple_config(top, "", target, "action.send_proxy_protocol = \"v2\"")
}

/// Reads a v1 header line from a backend connection.
fn read_v1(b: &mut TcpStream) -> String {
    try_read_v1(b).expect("connection closed before a full PROXY v1 header")
}

fn try_read_v1(b: &mut TcpStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        b.read_exact(&mut byte).ok()?;
        line.push(byte[0]);
        assert!(line.len() <= 107);
    }
    Some(String::from_utf8(line).unwrap())
}

#[test]
fn gatehouse_chain_carries_the_real_client() {
    let (backend, conns) = capture_backend();
    let b = Gatehouse::start(&inner_config(backend, ""));
    let a = Gatehouse::start(&outer_config(b.addr("in"), ""));
    let mut c = connect_from("127.0.0.3", a.addr("in"));
    let client_port = c.local_addr().unwrap().port();
    c.write_all(b"hi").unwrap();
    let mut up = conns.recv_timeout(Duration::from_secs(5)).unwrap();
    let header = read_v1(&mut up);
    assert!(
        header.starts_with(&format!("PROXY TCP4 127.0.0.3 127.0.0.1 {client_port} ")),
        "{header}"
    );
    let mut hi = [0u8; 2];
    up.read_exact(&mut hi).unwrap();
    up.write_all(b"yo").unwrap();
    c.read_exact(&mut hi).unwrap();
    assert_eq!(&hi, b"yo");
    let t = b.connections();
    assert_eq!(
        t["connections"][0]["client"],
        format!("127.0.0.3:{client_port}")
    );
    drop(c);
    drop(up);
    a.wait_empty(Duration::from_secs(1));
    b.wait_empty(Duration::from_secs(1));
}

#[test]
fn chain_tables_empty_when_clients_leave_while_inner_is_connecting() {
    let hole = blackhole();
    let b = Gatehouse::start(&inner_config(hole.addr, "timeouts.connect = \"3s\""));
    let a = Gatehouse::start(&outer_config(b.addr("in"), "timeouts.connect = \"3s\""));
    let clients: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(a.addr("in")).unwrap())
        .collect();
    b.wait_for("B connecting", Duration::from_secs(2), |g| {
        let t = g.connections();
        let list = t["connections"].as_array().unwrap();
        list.len() == 5 && list.iter().all(|e| e["state"] == "connecting")
    });
    let left = Instant::now();
    drop(clients);
    // Within 1 s after the deadline that applies (B's connect timeout).
    a.wait_empty(Duration::from_secs(4));
    b.wait_empty(Duration::from_secs(4));
    eprintln!("tables empty {:?} after the clients left", left.elapsed());
    assert_eq!(
        b.closed("upstream_connect_timeout") + b.closed("client_closed"),
        5
    );
    assert_accounted(&a);
    assert_accounted(&b);
}

struct Haproxy {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs HAProxy in TCP mode: `bind_opts` on its listener, `server_opts` on its one server.
fn haproxy(bind_opts: &str, server: SocketAddr, server_opts: &str) -> Haproxy {
    let bin = which("haproxy").expect("haproxy is required (scripts/test.sh installs it)");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = format!(
        "global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend fe\n  bind 127.0.0.1:{port} {bind_opts}\n  default_backend be\n\
         backend be\n  server s1 {server} {server_opts}\n"
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Haproxy {
        child,
        addr,
        _dir: dir,
    }
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(bin))
        .find(|p| p.exists())
}

#[test]
fn haproxy_outside_sends_v2_to_gatehouse() {
    let (backend, conns) = capture_backend();
    let gh = Gatehouse::start(&inner_config(backend, ""));
    let hp = haproxy("", gh.addr("in"), "send-proxy-v2");
    // HAProxy's own readiness probe above was a connection too; skip it.
    let mut c = connect_from("127.0.0.4", hp.addr);
    let client_port = c.local_addr().unwrap().port();
    c.write_all(b"ping").unwrap();
    let mut up = loop {
        let mut up = conns.recv_timeout(Duration::from_secs(5)).unwrap();
        let Some(header) = try_read_v1(&mut up) else {
            continue;
        };
        if header.starts_with("PROXY TCP4 127.0.0.4 ") {
            assert!(
                header.starts_with(&format!("PROXY TCP4 127.0.0.4 127.0.0.1 {client_port} ")),
                "{header}"
            );
            break up;
        }
    };
    let mut ping = [0u8; 4];
    up.read_exact(&mut ping).unwrap();
    assert_eq!(&ping, b"ping");
    up.write_all(b"pong").unwrap();
    c.read_exact(&mut ping).unwrap();
    assert_eq!(&ping, b"pong");
}

#[test]
fn haproxy_inside_accepts_v2_from_gatehouse() {
    let (backend, conns) = capture_backend();
    let hp = haproxy("accept-proxy", backend, "send-proxy");
    let gh = Gatehouse::start(&outer_config(hp.addr, ""));
    let mut c = connect_from("127.0.0.5", gh.addr("in"));
    let client_port = c.local_addr().unwrap().port();
    c.write_all(b"ping").unwrap();
    let mut up = conns.recv_timeout(Duration::from_secs(5)).unwrap();
    let header = read_v1(&mut up);
    assert!(
        header.starts_with(&format!("PROXY TCP4 127.0.0.5 127.0.0.1 {client_port} ")),
        "{header}"
    );
    let mut ping = [0u8; 4];
    up.read_exact(&mut ping).unwrap();
    up.write_all(b"pong").unwrap();
    c.read_exact(&mut ping).unwrap();
    assert_eq!(&ping, b"pong");
    drop(c);
    drop(up);
    gh.wait_empty(Duration::from_secs(2));
}

#[test]
fn chain_tables_empty_after_connect_deadline_when_clients_sent_data_first() {
    let hole = blackhole();
    let b = Gatehouse::start(&inner_config(hole.addr, "timeouts.connect = \"2s\""));
    let a = Gatehouse::start(&outer_config(b.addr("in"), "timeouts.connect = \"2s\""));
    let mut clients: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(a.addr("in")).unwrap())
        .collect();
    for c in &mut clients {
        c.write_all(b"early bytes").unwrap();
    }
    b.wait_for("B connecting", Duration::from_secs(2), |g| {
        let t = g.connections();
        let list = t["connections"].as_array().unwrap();
        list.len() == 5 && list.iter().all(|e| e["state"] == "connecting")
    });
    let left = Instant::now();
    drop(clients);
    // Whether B sees its client's EOF at once (the early bytes were read with
    // the PROXY header) or only at its connect deadline (2 s from the start of
    // connecting, less than 2 s from now), both tables are empty by then + 1 s.
    a.wait_empty(Duration::from_secs(3));
    b.wait_empty(Duration::from_secs(3));
    assert!(
        left.elapsed() <= Duration::from_secs(3),
        "{:?}",
        left.elapsed()
    );
    assert_eq!(
        b.closed("upstream_connect_timeout") + b.closed("client_closed"),
        5
    );
    assert_accounted(&a);
    assert_accounted(&b);
}
