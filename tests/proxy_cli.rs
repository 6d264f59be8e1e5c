//! `gatehouse proxy`: a proxy from the command line alone, HTTP or TCP,
//! on the same config model as `gatehouse run`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;

/// Starts `gatehouse proxy` with `args`; returns it, its stdout line and
/// the address its listener is bound to (from its JSON log).
fn start(args: &[&str]) -> (Child, String, SocketAddr) {
    start_with(args, &[])
}

fn start_with(args: &[&str], env: &[(&str, &Path)]) -> (Child, String, SocketAddr) {
    let mut cmd = Command::new(BIN);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .arg("proxy")
        .args(args)
        .args(["--admin", "127.0.0.1:0", "--log-format", "json"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    for line in stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["message"] == "listening" {
            addr = Some(v["addr"].as_str().unwrap().parse().unwrap());
        }
        if v["message"] == "admin listening" {
            break;
        }
    }
    (child, banner, addr.unwrap())
}

#[test]
fn an_http_proxy_from_the_command_line() {
    let (backend, _) = raw_http_backend(|_| ok_response("hello"));
    let to = backend.to_string();
    let (mut child, banner, addr) = start(&["--from", "127.0.0.1:0", "--to", &to]);
    assert!(banner.contains(&format!("→ {to}")), "{banner}");
    assert!(banner.contains("admin: http://127.0.0.1:0/"), "{banner}");
    let (head, body) = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"hello");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_tcp_proxy_from_the_command_line() {
    let to = echo_backend().to_string();
    let (mut child, banner, addr) = start(&["--from", "127.0.0.1:0", "--to", &to, "--tcp"]);
    assert!(banner.starts_with("gatehouse proxy: tcp"), "{banner}");
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `--tls internal`: HTTPS at once, with a certificate from the local CA
/// (kept under $XDG_DATA_HOME here), which a client that trusts it verifies.
#[test]
fn an_https_proxy_with_a_certificate_from_the_internal_ca() {
    let (backend, _) = raw_http_backend(|_| ok_response("hello"));
    let data = tempfile::tempdir().unwrap();
    let to = backend.to_string();
    let (mut child, banner, addr) = start_with(
        &[
            "--from",
            "127.0.0.1:0",
            "--to",
            &to,
            "--tls",
            "internal",
            "--host",
            "app.test",
        ],
        &[("XDG_DATA_HOME", data.path())],
    );
    assert!(banner.starts_with("gatehouse proxy: https"), "{banner}");
    let ca = data.path().join("gatehouse/pki/ca.crt");
    let mut s =
        common::tls::tls_connect(addr, "app.test", common::tls::client_trusting(&ca)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_bad_target_is_refused_by_the_config_checks() {
    let out = Command::new(BIN)
        .args(["proxy", "--from", "127.0.0.1:0", "--to", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"nope\" is not a target"), "{stderr}");
}
