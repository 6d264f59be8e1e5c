//! A route's extras beside its filters, against the real binary: request
//! mirroring (a sampled, byte-exact copy to a shadow cluster that never
//! slows or fails the real request, in a bounded number of places), gRPC
//! requests answered as gRPC when the proxy fails them, and access-log
//! lines that show the query and chosen headers with secrets redacted.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};

fn mirror_config(real: SocketAddr, shadow: &str, routes: &str) -> String {
    format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 2

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
http.access_log = false

{routes}

[[routes]]
name = "app"
match.listener = "web"
action.forward = ["{real}"]
mirror = {{ cluster = "shadow", percent = 50 }}

[[clusters]]
name = "shadow"
endpoints = [{{ address = "{shadow}" }}]
"#
    )
}

/// `(status, body)` of one request on its own connection.
fn exchange(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let (head, body) = read_response(&mut s);
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body)
}

#[test]
fn mirror_copies_a_share_of_requests_byte_exact() {
    let (real, real_seen) = raw_http_backend(|r| ok_response(&format!("real {}", r.body.len())));
    let (shadow, shadow_seen) = raw_http_backend(|_| ok_response("shadow"));
    let big = r#"[[routes]]
name = "big"
match.listener = "web"
match.path_prefix = "/big"
action.forward = ["REAL"]
mirror = { cluster = "shadow", max_body = "1KiB" }"#
        .replace("REAL", &real.to_string());
    let gh = Gatehouse::start(&mirror_config(real, &shadow.to_string(), &big));
    let web = gh.addr("web");
    // Ten POSTs with different bodies, then ten GETs: half of each mirrored.
    for i in 0..10u64 {
        let body = pattern(500 + i as usize * 37, i);
        let (status, answer) = exchange(web, "POST", &format!("/post/{i}"), &body);
        assert_eq!(
            (status, answer),
            (200, format!("real {}", body.len()).into_bytes())
        );
    }
    for i in 0..10 {
        assert_eq!(exchange(web, "GET", &format!("/get/{i}?q={i}"), b"").0, 200);
    }
    gh.wait_for("ten copies answered", Duration::from_secs(5), |g| {
        g.metric("gatehouse_mirror_requests_total", &[("outcome", "sent")]) == 10
    });
    let copies = shadow_seen.lock().unwrap().clone();
    assert_eq!(copies.len(), 10);
    let real_seen = real_seen.lock().unwrap().clone();
    assert_eq!(
        real_seen.len(),
        20,
        "every request reached the real upstream"
    );
    for copy in &copies {
        // The copy is the request as it went to the real upstream.
        let original = real_seen
            .iter()
            .find(|r| r.request_line() == copy.request_line())
            .unwrap_or_else(|| panic!("{} never went upstream", copy.request_line()));
        assert_eq!(copy.body, original.body, "{}", copy.request_line());
        assert_eq!(copy.header("host"), ["app.test"]);
        assert_eq!(
            copy.header("x-forwarded-for"),
            original.header("x-forwarded-for")
        );
    }
    let posts = copies
        .iter()
        .filter(|c| c.request_line().starts_with("POST"))
        .count();
    assert_eq!(posts, 5, "half of the POSTs, bodies and all");
    // A body longer than the mirror's limit: the request goes, its copy not.
    let body = pattern(4096, 9);
    assert_eq!(exchange(web, "POST", "/big/1", &body).0, 200);
    assert_eq!(exchange(web, "POST", "/big/2", b"small").0, 200);
    gh.wait_for("the small one copied", Duration::from_secs(5), |g| {
        g.metric(
            "gatehouse_mirror_requests_total",
            &[("route", "big"), ("outcome", "sent")],
        ) == 1
    });
    assert_eq!(
        gh.metric(
            "gatehouse_mirror_requests_total",
            &[("route", "big"), ("outcome", "skipped")]
        ),
        1
    );
    let last = shadow_seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.request_line(), "POST /big/2 HTTP/1.1");
    assert_eq!(last.body, b"small");
    // A chunked body is copied as it streams, and sent with its length.
    let mut s = TcpStream::connect(web).unwrap();
    s.write_all(
        b"POST /big/3 HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .unwrap();
    assert!(read_response(&mut s).0.starts_with("HTTP/1.1 200"));
    gh.wait_for("the chunked one copied", Duration::from_secs(5), |g| {
        g.metric(
            "gatehouse_mirror_requests_total",
            &[("route", "big"), ("outcome", "sent")],
        ) == 2
    });
    let last = shadow_seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.request_line(), "POST /big/3 HTTP/1.1");
    assert_eq!(last.body, b"hello world");
    assert_eq!(last.header("content-length"), ["11"]);
    assert!(last.header("transfer-encoding").is_empty());
}

/// A shadow that accepts connections and never answers: copies wait until
/// their deadline, holding their places; requests beyond the places are not
/// copied, and the real requests never wait for any of it.
#[test]
fn a_silent_shadow_neither_slows_requests_nor_grows_without_bound() {
    let (real, _) = raw_http_backend(|_| ok_response("ok"));
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let shadow = silent.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in silent.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let gh = Gatehouse::start(&mirror_config(real, &shadow.to_string(), "").replace(
        "percent = 50 }",
        "percent = 100, timeout = \"3s\" }\npolicy.pool_max_connections = 4096",
    ));
    let web = gh.addr("web");
    let fds = gh.fd_count();
    let mut s = TcpStream::connect(web).unwrap();
    let started = Instant::now();
    for i in 0..1300 {
        let req = format!("GET /{i} HTTP/1.1\r\nHost: app.test\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let (head, body) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{i}: {head}");
        assert_eq!(body, b"ok");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "1300 requests took {took:?}"
    );
    drop(s);
    let dropped = gh.metric("gatehouse_mirror_requests_total", &[("outcome", "dropped")]);
    assert!(dropped >= 1300 - 1024, "{dropped} dropped");
    gh.wait_for("every copy timed out", Duration::from_secs(10), |g| {
        g.metric("gatehouse_mirror_requests_total", &[("outcome", "failed")]) + dropped == 1300
    });
    // Their connections are gone with them.
    gh.wait_for("descriptors back", Duration::from_secs(5), |g| {
        g.fd_count() <= fds + 1
    });
    assert_accounted(&gh);
}

fn grpc_config(dead: SocketAddr, silent: SocketAddr, real: SocketAddr) -> String {
    format!(
        r#"admin.bind = "127.0.0.1:0"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
http.h2c = true

[[routes]]
name = "dead"
match.listener = "web"
match.path_prefix = "/dead."
action.forward = ["{dead}"]

[[routes]]
name = "slow"
match.listener = "web"
match.path_prefix = "/slow."
action.forward = ["{silent}"]
policy.response_header_timeout = "300ms"

[[routes]]
name = "limited"
match.listener = "web"
match.path_prefix = "/limited."
action.forward = ["{real}"]
filters = ["one"]

[[filters]]
name = "one"
kind = "rate_limit"
rate = "1/m"
burst = 1
"#
    )
}

/// `(status, content-type, gatehouse-error, trailers)` of a gRPC call over h2c.
async fn grpc_call(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
) -> (u16, String, String, http::HeaderMap) {
    let (mut send, _conn) = h2c_client::<Full<Bytes>>(addr).await;
    let req = http::Request::post(format!("http://app.test{path}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let field = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, ct, err) = (
        resp.status().as_u16(),
        field("content-type"),
        field("gatehouse-error"),
    );
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    (status, ct, err, trailers)
}

#[test]
fn the_proxys_failures_of_grpc_calls_are_grpc_statuses_in_trailers() {
    let dead = refused_addr();
    // Accepts, never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let (real, _) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&grpc_config(dead.addr, silent.local_addr().unwrap(), real));
    let web = gh.addr("web");
    let rt = test_runtime();
    let expect = |path: &str, code: &str, message: &str| {
        let (status, ct, err, trailers) = rt.block_on(grpc_call(web, path, "application/grpc"));
        assert_eq!(status, 200, "{path}");
        assert_eq!(ct, "application/grpc", "{path}");
        assert_eq!(trailers["grpc-status"], code, "{path}: {trailers:?}");
        assert_eq!(trailers["grpc-message"], message, "{path}");
        assert_eq!(err, message.split(' ').next().unwrap(), "{path}");
    };
    expect("/dead.Svc/Call", "14", "upstream_refused (upstream side)");
    expect(
        "/slow.Svc/Call",
        "4",
        "upstream_response_timeout (upstream side)",
    );
    expect("/nowhere.Svc/Call", "12", "no_route (proxy side)");
    // The first call passes (the upstream answers in HTTP/1.1), the second
    // is over the limit.
    let (status, ..) = rt.block_on(grpc_call(
        web,
        "/limited.Svc/Call",
        "application/grpc+proto",
    ));
    assert_eq!(status, 200);
    let (status, _, err, trailers) = rt.block_on(grpc_call(
        web,
        "/limited.Svc/Call",
        "application/grpc+proto",
    ));
    assert_eq!((status, err.as_str()), (200, "rate_limited"));
    assert_eq!(trailers["grpc-status"], "8", "{trailers:?}");
    // Not gRPC (gRPC-Web, or plain HTTP): the usual error page.
    let (status, ct, err, trailers) =
        rt.block_on(grpc_call(web, "/dead.Svc/Call", "application/grpc-web"));
    assert_eq!(
        (status, ct.as_str(), err.as_str()),
        (502, "text/plain; charset=utf-8", "upstream_refused")
    );
    assert!(trailers.is_empty());
    let (status, _) = exchange(web, "POST", "/dead.Svc/Call", b"x");
    assert_eq!(status, 502);
    // The reasons are counted as always.
    assert_eq!(
        gh.metric(
            "gatehouse_http_request_end_total",
            &[("reason", "upstream_refused")]
        ),
        3
    );
}

#[test]
fn access_lines_show_the_query_and_named_headers_with_secrets_redacted() {
    let (real, _) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&format!(
        r#"admin.bind = "127.0.0.1:0"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
http.access_log_headers = ["user-agent", "x-session", "authorization", "x-tenant"]

[[listeners]]
name = "quiet"
bind = "127.0.0.1:0"
protocol = "http"
http.access_log_query = false

[[routes]]
name = "guarded"
match.path_prefix = "/guarded"
action.forward = ["{real}"]
log_redact = {{ headers = ["x-session"], query = ["ticket"] }}

[[routes]]
name = "open"
action.forward = ["{real}"]
"#
    ));
    let send = |addr: SocketAddr, target: &str, session: &str| {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: app.test\r\nUser-Agent: probe/1.0\r\n\
             X-Session: {session}\r\nAuthorization: Bearer AUTH-SECRET-2\r\n\
             X-Tenant: acme\r\nConnection: close\r\n\r\n"
        );
        let (head, _) = raw_exchange(addr, req.as_bytes());
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    };
    send(
        gh.addr("web"),
        "/guarded/a?page=2&ticket=TICKET-SECRET-3&token=TOKEN-SECRET-4&%74oken=TOKEN-SECRET-5&flag",
        "SESSION-SECRET-1",
    );
    gh.wait_log("/guarded/a", Duration::from_secs(5));
    let line = gh
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("/guarded/a"))
        .cloned()
        .unwrap();
    for shown in [
        "page=2",
        "ticket=(redacted)",
        "token=(redacted)",
        "%74oken=(redacted)",
        "&flag",
        "user-agent: probe/1.0",
        "x-session: (redacted)",
        "authorization: (redacted)",
        "x-tenant: acme",
    ] {
        assert!(line.contains(shown), "{shown:?} not in {line}");
    }
    // Another route: the route's own names are its own (built-in ones hold).
    send(
        gh.addr("web"),
        "/open?ticket=VISIBLE-TICKET&token=TOKEN-SECRET-6",
        "VISIBLE-SESSION",
    );
    gh.wait_log("VISIBLE-TICKET", Duration::from_secs(5));
    gh.wait_log("x-session: VISIBLE-SESSION", Duration::from_secs(5));
    // A listener that logs no query.
    send(gh.addr("quiet"), "/open/q?page=QUIET-PAGE", "-");
    gh.wait_log("/open/q", Duration::from_secs(5));
    let log = gh.log_text();
    assert!(!log.contains("QUIET-PAGE"));
    for secret in [
        "SESSION-SECRET-1",
        "AUTH-SECRET-2",
        "TICKET-SECRET-3",
        "TOKEN-SECRET-4",
        "TOKEN-SECRET-5",
        "TOKEN-SECRET-6",
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[test]
fn check_refuses_a_mirror_without_its_cluster_or_on_a_tcp_route() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"

[[listeners]]
name = "raw"
bind = "127.0.0.1:0"

[[routes]]
name = "app"
match.listener = "web"
action.forward = ["127.0.0.1:1"]
mirror = { cluster = "nope", percent = 0 }
log_redact = { headers = ["bad header"] }

[[routes]]
name = "tcp"
match.listener = "raw"
action.forward = ["127.0.0.1:1"]
mirror = { cluster = "nope" }
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "bad.toml:14: routes[0].mirror.cluster: no cluster is named \"nope\"",
        "bad.toml:14: routes[0].mirror.percent: must be at least 1",
        "bad.toml:15: routes[0].log_redact.headers: \"bad header\" is not a header name",
        "bad.toml:21: routes[1].mirror: mirroring copies HTTP requests",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
}
