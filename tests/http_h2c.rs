//! h2c with prior knowledge on an HTTP listener (`http.h2c = true`): HTTP/2
//! clients reach HTTP/1.1 upstreams (Host taken from `:authority`), many
//! streams share one connection, and HTTP/1.1 still works on the same port.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::process::Command;

use common::*;

#[test]
fn http2_prior_knowledge_to_an_http1_upstream() {
    let (backend, seen) = raw_http_backend(|r| {
        ok_response(&format!(
            "{} via {}",
            r.request_line(),
            r.header("host").join(",")
        ))
    });
    let gh = Gatehouse::start(&http_config("", "http.h2c = true", backend, ""));
    let url = format!("http://{}/h2?x=1", gh.addr("web"));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--http2-prior-knowledge",
            "-i",
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
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(
        text.contains(&format!("GET /h2?x=1 HTTP/1.1 via {}", gh.addr("web"))),
        "{text}"
    );
    let r = seen.lock().unwrap()[0].clone();
    assert_eq!(r.header("x-forwarded-host"), [gh.addr("web").to_string()]);
    assert_eq!(r.header("via"), ["2 gatehouse"]);
    // HTTP/1.1 on the same listener.
    let (head, _) = raw_exchange(gh.addr("web"), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[test]
fn many_streams_on_one_connection_with_h2load() {
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config("", "http.h2c = true", backend, ""));
    let url = format!("http://{}/small", gh.addr("web"));
    let out = Command::new("h2load")
        .args(["-n", "400", "-c", "2", "-m", "20", &url])
        .output()
        .expect("h2load is required (scripts/test.sh installs nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("400 succeeded"), "{text}");
    assert!(text.contains("status codes: 400 2xx"), "{text}");
    assert_eq!(seen.lock().unwrap().len(), 400);
    gh.wait_empty(std::time::Duration::from_secs(2));
    assert_eq!(
        gh.metric("gatehouse_connections_accepted_total", &[]),
        2,
        "all streams rode two connections"
    );
}

/// On one worker, the request heads of many streams and of many HTTP/1.1
/// connections go upstream in shared submissions (`upstream::send_batch`):
/// fewer submissions than requests, every request answered.
#[test]
#[cfg(feature = "send-batch")]
fn upstream_request_heads_go_out_in_batches_on_one_worker() {
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config("workers = 1", "http.h2c = true", backend, ""));
    let url = format!("http://{}/small", gh.addr("web"));
    let h2 = Command::new("h2load")
        .args(["-n", "2000", "-c", "4", "-m", "20", &url])
        .output()
        .expect("h2load is required (scripts/test.sh installs nghttp2-client)");
    let text = String::from_utf8_lossy(&h2.stdout);
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
    let h1 = Command::new("h2load")
        .args(["--h1", "-n", "2000", "-c", "20", &url])
        .output()
        .expect("h2load");
    let text = String::from_utf8_lossy(&h1.stdout);
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
    assert_eq!(seen.lock().unwrap().len(), 4000);
    let sends = gh.metric("gatehouse_upstream_batched_sends_total", &[]);
    let batches = gh.metric("gatehouse_upstream_send_batches_total", &[]);
    assert_eq!(sends, 4000, "every request head went through a batch");
    assert!(
        batches < sends / 2,
        "{batches} submissions for {sends} sends: not batched"
    );
}

#[test]
fn idle_http2_connections_end_at_the_idle_deadline() {
    use std::io::{Read, Write};
    let (backend, _) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config(
        "timeouts.idle = \"500ms\"",
        "http.h2c = true",
        backend,
        "",
    ));
    let mut s = std::net::TcpStream::connect(gh.addr("web")).unwrap();
    // Connection preface and an empty SETTINGS frame, then silence.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let mut buf = [0u8; 9];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf[3], 0x04, "the server's SETTINGS frame");
    gh.wait_for("bytes counted", std::time::Duration::from_secs(2), |g| {
        g.connections()["connections"][0]["bytes_client_to_upstream"].as_u64() >= Some(33)
    });
    let took = wait_closed(&mut s, std::time::Duration::from_secs(4));
    assert!(took <= std::time::Duration::from_millis(2000), "{took:?}");
    gh.wait_empty(std::time::Duration::from_secs(1));
    assert_eq!(gh.closed("idle_timeout"), 1);
}
