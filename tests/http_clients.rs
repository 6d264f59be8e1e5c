//! Real clients through the proxy: a WebSocket session with the `websockets`
//! library (echo, ping, close frames both ways, state `upgraded` in the
//! table), curl, and Python's http.client, as a user would use them.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn websocket_echo_and_close_frames_through_the_proxy() {
    let mut server = Command::new("python3")
        .args(["tests/support/ws_peer.py", "server"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let port: u16 = lines
        .next()
        .unwrap()
        .unwrap()
        .strip_prefix("PORT ")
        .unwrap()
        .parse()
        .unwrap();
    let backend = format!("127.0.0.1:{port}").parse().unwrap();
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        backend,
        "policy.allow_upgrade = true\npolicy.idle_timeout = \"30s\"",
    ));
    let url = format!("ws://{}/chat", gh.addr("web"));
    let mut client = Command::new("python3")
        .args(["tests/support/ws_peer.py", "client", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap()).lines();
    assert_eq!(out.next().unwrap().unwrap(), "OPEN");
    let table = gh.connections();
    assert_eq!(table["connections"][0]["state"], "upgraded", "{table:#}");
    assert!(
        table["connections"][0]["bytes_client_to_upstream"]
            .as_u64()
            .unwrap()
            > 70_000,
        "{table:#}"
    );
    writeln!(client.stdin.take().unwrap()).unwrap();
    assert_eq!(out.next().unwrap().unwrap(), "DONE");
    assert!(client.wait().unwrap().success());
    gh.wait_empty(Duration::from_secs(3));
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn upgrade_is_refused_unless_the_route_allows_it() {
    let (backend, seen) = raw_http_backend(|_| ok_response("plain"));
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let req = b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let (head, body) = raw_exchange(gh.addr("web"), req);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"plain");
    let r = seen.lock().unwrap()[0].clone();
    assert!(
        r.header("upgrade").is_empty() && r.header("connection").is_empty(),
        "{}",
        r.head
    );
}

#[test]
fn curl_works_through_the_proxy() {
    let (backend, seen) = raw_http_backend(|r| {
        let body = format!("you sent {} bytes", r.body.len());
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    });
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let url = format!("http://{}/upload?x=1", gh.addr("web"));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "-i",
            "-X",
            "POST",
            "--data-binary",
            "hello curl",
            &url,
            &url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("you sent 10 bytes").count(), 2, "{text}");
    assert!(text.to_ascii_lowercase().contains("via: 1.1 gatehouse"));
    // curl reused its connection: the backend saw both requests.
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[test]
fn python_http_client_works_through_the_proxy() {
    let (backend, _) = raw_http_backend(|r| {
        let body = format!("{} {}", r.request_line(), r.body.len());
        format!(
            "HTTP/1.1 201 Created\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    });
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let addr = gh.addr("web");
    let script = format!(
        "import http.client\n\
         c = http.client.HTTPConnection('{}', {}, timeout=5)\n\
         for i in range(3):\n\
         \x20   c.request('PUT', '/items/%d' % i, body=b'x' * 1000 * (i + 1), headers={{'Content-Type': 'application/octet-stream'}})\n\
         \x20   r = c.getresponse()\n\
         \x20   body = r.read().decode()\n\
         \x20   assert r.status == 201, r.status\n\
         \x20   assert body == 'PUT /items/%d HTTP/1.1 %d' % (i, 1000 * (i + 1)), body\n\
         print('ok')\n",
        addr.ip(),
        addr.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// A raw upgrade backend: answers 101 and echoes bytes until EOF.
fn upgrade_echo_backend() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                if read_request(&mut s).is_none() {
                    return;
                }
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").unwrap();
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    addr
}

#[test]
fn upgraded_connections_live_by_their_idle_timeout_not_request_deadlines() {
    use std::io::Read;
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        upgrade_echo_backend(),
        "policy.allow_upgrade = true\npolicy.idle_timeout = \"1s\"\npolicy.request_timeout = \"300ms\"\n\
         policy.response_header_timeout = \"300ms\"\npolicy.pool_idle_timeout = \"300ms\"",
    ));
    let mut s = std::net::TcpStream::connect(gh.addr("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /tunnel HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Traffic every 300 ms for 2.4 s: far past every request deadline.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(2400) {
        s.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(gh.connections()["connections"][0]["state"], "upgraded");
    // Silence: the idle timeout closes it.
    let quiet = std::time::Instant::now();
    wait_closed(&mut s, Duration::from_secs(3));
    let took = quiet.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took <= Duration::from_millis(2000),
        "{took:?}"
    );
    gh.wait_empty(Duration::from_secs(1));
    assert_eq!(gh.closed("idle_timeout"), 1);
}
