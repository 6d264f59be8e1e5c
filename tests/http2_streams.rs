//! Our HTTP/2 server's stream rules, against a real HTTP/2 client (hyper's)
//! on h2c: bodies larger than the stream and connection windows pass both
//! ways on many streams at once (flow control given back as the upstream
//! takes the data, sent as the client grants it); limits answer with their
//! status and reason; the proxy's own answers carry `Date`; trailers reach
//! the client; a client breaking the protocol ends with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::Request;

/// A backend answering each request with its own body (`/echo`), with
/// `n` bytes of a pattern (`/big/n`), or with a chunked body and a trailer
/// (`/trailers`).
fn backend() -> SocketAddr {
    raw_http_backend(|req| {
        let path = req.request_line().split(' ').nth(1).unwrap_or("").to_string();
        if path.ends_with("/trailers") {
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 42\r\n\r\n".to_vec();
        }
        let body = match path.strip_prefix("/big/") {
            Some(n) => pattern(n.parse().unwrap(), 7),
            None => req.body.clone(),
        };
        let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        resp.extend_from_slice(&body);
        resp
    })
    .0
}

#[test]
fn bodies_larger_than_the_windows_pass_both_ways_on_concurrent_streams() {
    // Windows well below the bodies: 64 KiB per stream, 128 KiB per connection.
    let gh = Gatehouse::start(&http_config(
        "",
        "http.h2c = true\nhttp.h2_stream_window = \"64KiB\"\nhttp.h2_connection_window = \"128KiB\"",
        backend(),
        "policy.max_body_size = \"64MiB\"",
    ));
    let addr = gh.addr("web");
    let rt = test_runtime();
    rt.block_on(async {
        let (sender, _conn) = h2c_client::<Full<Bytes>>(addr).await;
        let mut streams = Vec::new();
        for i in 0..6u64 {
            let mut sender = sender.clone();
            streams.push(tokio::spawn(async move {
                // Uploads echoed back, and downloads, side by side.
                let (path, body, expect) = if i % 2 == 0 {
                    let body = pattern(3 * 1024 * 1024 + i as usize, i);
                    ("/echo".to_string(), body.clone(), body)
                } else {
                    let n = 5 * 1024 * 1024 + i as usize;
                    (format!("/big/{n}"), Vec::new(), pattern(n, 7))
                };
                let req = Request::post(format!("http://{addr}{path}"))
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                assert!(resp.headers().contains_key("date"));
                let got = resp.into_body().collect().await.unwrap().to_bytes();
                assert!(
                    got.len() == expect.len() && got[..] == expect[..],
                    "stream {i}: {} bytes",
                    got.len()
                );
            }));
        }
        for s in streams {
            tokio::time::timeout(Duration::from_secs(30), s)
                .await
                .expect("the streams finish")
                .unwrap();
        }
    });
    drop(rt);
    gh.wait_empty(Duration::from_secs(5));
    assert_eq!(gh.closed("internal_error"), 0);
}

#[test]
fn limits_and_the_proxys_own_answers_over_http2() {
    let gh = Gatehouse::start(&format!(
        "{}\n[[routes]]\nname = \"small\"\nmatch = {{ listener = \"web\", path_prefix = \"/small\" }}\naction.forward = [\"{}\"]\npolicy.max_body_size = 1000\n",
        http_config(
            "",
            "http.h2c = true",
            backend(),
            "match.path_prefix = \"/app\""
        ),
        backend()
    ));
    let addr = gh.addr("web");
    test_runtime().block_on(async {
        let (mut sender, _conn) = h2c_client::<Full<Bytes>>(addr).await;
        // A declared length over the route's limit: 413 before any upstream work.
        let req = Request::post(format!("http://{addr}/small"))
            .header("content-length", "5000")
            .body(Full::new(Bytes::from(vec![b'x'; 5000])))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 413);
        assert_eq!(resp.headers()["gatehouse-error"], "body_too_large");
        assert!(resp.headers().contains_key("date"));
        // No route: the proxy's 404, marked as its own, on the same connection.
        let req = Request::get(format!("http://{addr}/elsewhere"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()["gatehouse-error"], "no_route");
        assert!(resp.headers().contains_key("date"));
        assert!(!resp.headers().contains_key("connection"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty());
        // Trailers of a chunked upstream response reach the HTTP/2 client.
        let req = Request::get(format!("http://{addr}/app/trailers"))
            .header("te", "trailers")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["x-sum"], "42");
        assert_eq!(collected.to_bytes(), "abc");
    });
}

#[test]
fn a_client_breaking_the_protocol_ends_with_its_reason() {
    let gh = Gatehouse::start(&http_config("", "http.h2c = true", backend(), ""));
    let mut s = std::net::TcpStream::connect(gh.addr("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The preface, then a SETTINGS frame whose length is no multiple of 6
    // (a FRAME_SIZE_ERROR for the whole connection).
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&[0, 0, 5, 0x4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5])
        .unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    // Our SETTINGS, then GOAWAY (type 7) before the close.
    assert!(frame_types(&all).contains(&7), "{all:?}");
    gh.wait_closed_count("client_protocol_error", 1);
    assert_accounted(&gh);
}

/// The types of the HTTP/2 frames in `bytes`.
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    frames(bytes).into_iter().map(|(ty, _)| ty).collect()
}

/// The HTTP/2 frames in `bytes`: type and payload.
fn frames(mut bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut frames = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let end = (9 + len).min(bytes.len());
        frames.push((bytes[3], &bytes[9..end]));
        bytes = &bytes[end..];
    }
    frames
}

/// A masked WebSocket frame from a client (RFC 6455 §5.2).
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one unmasked frame from a server: (opcode, payload).
async fn ws_read(buf: &mut Vec<u8>, body: &mut h2::RecvStream) -> Option<(u8, Vec<u8>)> {
    loop {
        let header = match buf.get(1).map(|b| b & 0x7f) {
            Some(126) if buf.len() >= 4 => {
                Some((4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))))
            }
            Some(127) if buf.len() >= 10 => {
                let n = u64::from_be_bytes(buf[2..10].try_into().unwrap());
                Some((10, n as usize))
            }
            Some(n) if n < 126 => Some((2, usize::from(n))),
            _ => None,
        };
        if let Some((at, len)) = header {
            if buf.len() >= at + len {
                let frame = (buf[0] & 0x0f, buf[at..at + len].to_vec());
                buf.drain(..at + len);
                return Some(frame);
            }
        }
        let data = body.data().await?.ok()?;
        let _ = body.flow_control().release_capacity(data.len());
        buf.extend_from_slice(&data);
    }
}

#[test]
fn websocket_over_http2_by_extended_connect() {
    use std::io::BufRead;
    let mut server = std::process::Command::new("python3")
        .args(["tests/support/ws_peer.py", "server"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let port: u16 = lines.next().unwrap().unwrap()[5..].parse().unwrap();
    let ws_backend: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // An upstream that switches protocols with an accept that does not
    // answer the key.
    let liar = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let liar_addr = liar.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in liar.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = conn.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            );
            let _ = conn.read(&mut byte);
        }
    });
    let gh = Gatehouse::start(&format!(
        "{}\n[[routes]]\nname = \"closed\"\nmatch = {{ listener = \"web\", path_prefix = \"/closed\" }}\naction.forward = [\"{ws_backend}\"]\n[[routes]]\nname = \"quiet\"\nmatch = {{ listener = \"web\", path_prefix = \"/quiet\" }}\naction.forward = [\"{ws_backend}\"]\npolicy.allow_upgrade = true\npolicy.idle_timeout = \"300ms\"\n[[routes]]\nname = \"liar\"\nmatch = {{ listener = \"web\", path_prefix = \"/liar\" }}\naction.forward = [\"{liar_addr}\"]\npolicy.allow_upgrade = true\n",
        http_config(
            "",
            "http.h2c = true",
            ws_backend,
            "match.path_prefix = \"/chat\"\npolicy.allow_upgrade = true\npolicy.idle_timeout = \"30s\"",
        ),
    ));
    let addr = gh.addr("web");
    test_runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, mut conn) = h2::client::handshake(tcp).await.unwrap();
        let mut ping = conn.ping_pong().unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.unwrap();
        // The server's SETTINGS (which enable the protocol, RFC 8441 §3)
        // come before its answer to our PING.
        ping.ping(h2::Ping::opaque()).await.unwrap();
        assert!(client.is_extended_connect_protocol_enabled());
        let connect = |path: &str| {
            let mut req = Request::connect(format!("http://{addr}{path}"))
                .header("sec-websocket-version", "13")
                .body(())
                .unwrap();
            req.extensions_mut()
                .insert(h2::ext::Protocol::from("websocket"));
            req
        };

        // A route without upgrades refuses it.
        let (resp, _) = client.send_request(connect("/closed"), false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 405);

        // An upstream whose accept does not answer our key is no WebSocket
        // server: 502, blamed on it.
        let (resp, _) = client.send_request(connect("/liar"), false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()["gatehouse-error"], "upstream_protocol_error");

        let (resp, mut send) = client.send_request(connect("/chat"), false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200, "{resp:?}");
        assert!(!resp.headers().contains_key("sec-websocket-accept"));
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        for msg in [&b"hello"[..], b"over h2"] {
            send.send_data(Bytes::from(ws_frame(1, msg)), false)
                .unwrap();
            assert_eq!(ws_read(&mut buf, &mut body).await, Some((1, msg.to_vec())));
        }
        // A message several flow-control windows long, both ways: each
        // side's window is given back as the other side takes the bytes.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut frame = Bytes::from(ws_frame(2, &big));
        let echoed = tokio::time::timeout(Duration::from_secs(10), async {
            while !frame.is_empty() {
                send.reserve_capacity(frame.len());
                let n = std::future::poll_fn(|cx| send.poll_capacity(cx))
                    .await
                    .unwrap()
                    .unwrap()
                    .min(frame.len());
                send.send_data(frame.split_to(n), false).unwrap();
            }
            ws_read(&mut buf, &mut body).await
        })
        .await
        .expect("the large message goes through and comes back");
        assert_eq!(echoed, Some((2, big)));
        let table = gh.connections();
        assert_eq!(
            table["connections"].as_array().unwrap().len(),
            1,
            "{table:#}"
        );
        // A close frame (code 4001) goes through and comes back; the
        // server then closes its connection, which ends the stream.
        send.send_data(Bytes::from(ws_frame(8, &[0x0f, 0xa1])), false)
            .unwrap();
        let (op, payload) = ws_read(&mut buf, &mut body).await.unwrap();
        assert_eq!((op, &payload[..2]), (8, &[0x0f, 0xa1][..]));
        // (An empty DATA frame may carry the END_STREAM.)
        let rest = tokio::time::timeout(Duration::from_secs(5), async {
            let mut rest = Vec::new();
            while let Some(data) = body.data().await {
                rest.extend_from_slice(&data.unwrap());
            }
            rest
        })
        .await
        .expect("the stream ends after the close");
        assert!(rest.is_empty(), "{rest:?}");
        send.send_data(Bytes::new(), true).unwrap();

        // A tunnel with no traffic ends at its route's idle timeout.
        let (resp, _send) = client.send_request(connect("/quiet"), false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let started = std::time::Instant::now();
        let mut body = resp.into_body();
        let end = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match body.data().await {
                    Some(Ok(_)) => {}
                    other => return other.map(|r| r.map(|_| ())),
                }
            }
        })
        .await
        .expect("the idle tunnel ends");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
            "{took:?} {end:?}"
        );
    });
    assert_eq!(lines.next().unwrap().unwrap(), "CLOSED 4001");
    // The idle tunnel's upstream connection was closed too.
    assert!(lines.next().unwrap().unwrap().starts_with("CLOSED"));
    gh.wait_empty(Duration::from_secs(3));
    // Each tunnel's access-log line at its end: its route, upstream,
    // totals (the large message each way) and why it ended.
    let ends = |g: &Gatehouse| -> Vec<serde_json::Value> {
        g.log_text()
            .lines()
            .filter(|l| l.contains("upgraded connection closed"))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    gh.wait_for("the tunnels' lines", Duration::from_secs(5), |g| {
        ends(g).len() == 2
    });
    let ends = ends(&gh);
    let chat = ends.iter().find(|e| e["route"] == "app").unwrap();
    assert_eq!(chat["upstream"], ws_backend.to_string(), "{chat}");
    assert_eq!(chat["reason"], "upstream_closed", "{chat}");
    assert!(chat["bytes_up"].as_u64().unwrap() > 300_000, "{chat}");
    assert!(chat["bytes_down"].as_u64().unwrap() > 300_000, "{chat}");
    let quiet = ends.iter().find(|e| e["route"] == "quiet").unwrap();
    assert_eq!(quiet["reason"], "idle_timeout", "{quiet}");
    assert_eq!(quiet["bytes_up"], 0, "{quiet}");
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn a_client_silent_after_choosing_h2_is_closed_at_the_header_deadline() {
    use common::tls::{Pki, tls_connect};
    let pki = Pki::new("ca");
    let (cert, key) = pki.issue("site", &["a.test"]);
    let gh = Gatehouse::start(&format!(
        r#"admin.bind = "127.0.0.1:0"
[[certificates]]
cert = "{}"
key = "{}"
default = true
[[listeners]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "https"
http.header_read_timeout = "300ms"
[[routes]]
name = "app"
match.listener = "tls"
action.forward = ["{}"]
"#,
        cert.display(),
        key.display(),
        backend()
    ));
    // TLS with ALPN h2, then not even the connection preface.
    let mut s = tls_connect(gh.addr("tls"), "a.test", pki.client(&[b"h2"])).unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"h2"[..]));
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1300),
        "{took:?}"
    );
    gh.wait_closed_count("client_header_timeout", 1);
    assert_accounted(&gh);
}

#[test]
fn a_connection_without_streams_gets_goaway_at_the_keepalive_timeout() {
    let gh = Gatehouse::start(&http_config(
        "",
        "http.h2c = true\nhttp.keepalive_timeout = \"400ms\"",
        backend(),
        "",
    ));
    // The preface and SETTINGS, then nothing: no stream ever opens.
    let mut s = std::net::TcpStream::connect(gh.addr("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).unwrap();
    let started = std::time::Instant::now();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // GOAWAY with NO_ERROR (its last 4 payload bytes) before the close.
    let goaway = frames(&all)
        .into_iter()
        .find(|(ty, _)| *ty == 7)
        .map(|(_, payload)| payload)
        .expect("a GOAWAY frame");
    assert_eq!(goaway[4..8], [0, 0, 0, 0], "{all:?}");
    gh.wait_closed_count("idle_timeout", 1);

    // A stream that stays open longer than the keep-alive timeout (a slow
    // upload) is not cut; once it is done, the connection's keep-alive
    // timeout runs again.
    let rt = test_runtime();
    rt.block_on(async {
        // (The client keeps its handle: hyper closes a connection whose
        // handles are all gone.)
        type Upload = http_body_util::channel::Channel<Bytes, std::io::Error>;
        let (sender, conn) = h2c_client::<Upload>(gh.addr("web")).await;
        let mut sending = sender.clone();
        let (mut tx, body) = Upload::new(4);
        let req = Request::post("http://web/echo").body(body).unwrap();
        let resp = tokio::spawn(async move { sending.send_request(req).await });
        tx.send_data(Bytes::from_static(b"slow ")).await.unwrap();
        // The scenario itself: a pause longer than the keep-alive timeout.
        tokio::time::sleep(Duration::from_millis(900)).await;
        tx.send_data(Bytes::from_static(b"upload")).await.unwrap();
        drop(tx);
        let resp = resp.await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        let done = std::time::Instant::now();
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes(),
            "slow upload"
        );
        // The connection ends by itself, at the keep-alive timeout.
        tokio::time::timeout(Duration::from_secs(3), conn)
            .await
            .expect("closed at the keep-alive timeout")
            .unwrap()
            .unwrap();
        assert!(
            done.elapsed() >= Duration::from_millis(350),
            "{:?}",
            done.elapsed()
        );
        drop(sender);
    });
    gh.wait_closed_count("idle_timeout", 2);
    assert_accounted(&gh);
}
