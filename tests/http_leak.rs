//! The leak test, for HTTP: 10,000 client connections mixing keep-alive and
//! pipelined requests, upgrades, aborts mid-upload and mid-download,
//! upstream resets, upstream timeouts and garbage. Afterwards the proxy's
//! FDs are back to baseline (once the upstream pool's idle connections have
//! aged out), nothing is in CLOSE_WAIT, the table is empty, and every
//! accepted connection was closed with a reason. The same for 2,000
//! HTTP/2 connections: concurrent streams, downloads and uploads abandoned
//! with their connection, streams reset while the upstream works, upstream
//! resets and timeouts, and protocol errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const TOTAL: usize = 10_000;

/// A small raw HTTP/1.1 backend whose behaviour depends on the path.
async fn backend() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let s = r.get_mut();
                    match path.as_str() {
                        "/reset" => {
                            let _ = socket2::SockRef::from(&*s).set_linger(Some(Duration::ZERO));
                            return;
                        }
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            return;
                        }
                        "/big" => {
                            let big = vec![b'b'; 256 * 1024];
                            let head =
                                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len());
                            if s.write_all(head.as_bytes()).await.is_err()
                                || s.write_all(&big).await.is_err()
                            {
                                return;
                            }
                        }
                        "/upgrade" => {
                            let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").await;
                            let (mut rd, mut wr) = tokio::io::split(r);
                            let _ = tokio::io::copy(&mut rd, &mut wr).await;
                            let _ = wr.shutdown().await;
                            return;
                        }
                        _ => {
                            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Reads one response; returns (status, body length), or None at EOF/error.
async fn response(r: &mut BufReader<TcpStream>) -> Option<(u16, usize)> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await.ok()? == 0 {
            return None;
        }
        if h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
    }
    if status != 101 {
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await.ok()?;
    }
    Some((status, len))
}

const GET_OK: &[u8] = b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n";

async fn one(i: usize, addr: std::net::SocketAddr) -> Result<(), String> {
    let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let expect = |got: Option<(u16, usize)>, want: u16| match got {
        Some((st, _)) if st == want => Ok(()),
        other => Err(format!("want {want}, got {other:?}")),
    };
    match i % 10 {
        0..=2 => {
            for _ in 0..3 {
                r.get_mut()
                    .write_all(GET_OK)
                    .await
                    .map_err(|e| e.to_string())?;
                expect(response(&mut r).await, 200)?;
            }
        }
        3 => {
            let three = [GET_OK, GET_OK, GET_OK].concat();
            r.get_mut()
                .write_all(&three)
                .await
                .map_err(|e| e.to_string())?;
            for _ in 0..3 {
                expect(response(&mut r).await, 200)?;
            }
        }
        4 => {
            r.get_mut()
                .write_all(b"GET /upgrade HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            expect(response(&mut r).await, 101)?;
            r.get_mut()
                .write_all(b"ping")
                .await
                .map_err(|e| e.to_string())?;
            let mut pong = [0u8; 4];
            r.read_exact(&mut pong).await.map_err(|e| e.to_string())?;
            if &pong != b"ping" {
                return Err("tunnel echo".into());
            }
        }
        5 => {
            r.get_mut()
                .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut some = [0u8; 1000];
            let _ = r.read(&mut some).await;
            if i % 20 == 5 {
                let _ = socket2::SockRef::from(r.get_ref()).set_linger(Some(Duration::ZERO));
            }
        }
        6 => {
            let _ = r
                .get_mut()
                .write_all(b"POST /post HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
                .await;
            let _ = r.get_mut().write_all(&[b'u'; 100_000]).await;
        }
        7 => {
            r.get_mut()
                .write_all(b"GET /reset HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            expect(response(&mut r).await, 502)?;
        }
        8 => {
            if i % 50 == 8 {
                r.get_mut()
                    .write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
                    .await
                    .map_err(|e| e.to_string())?;
                expect(response(&mut r).await, 504)?;
            } else {
                r.get_mut()
                    .write_all(GET_OK)
                    .await
                    .map_err(|e| e.to_string())?;
                expect(response(&mut r).await, 200)?;
            }
        }
        _ => {
            r.get_mut()
                .write_all(b"GARBAGE\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            expect(response(&mut r).await, 400)?;
        }
    }
    Ok(())
}

/// Runs `total` client connections, `concurrency` at a time, each by
/// `one(i, addr)` under a 20 s bound; how many failed or hung.
fn run_connections<F, Fut>(
    rt: &tokio::runtime::Runtime,
    total: usize,
    concurrency: usize,
    addr: std::net::SocketAddr,
    one: F,
) -> u64
where
    F: Fn(usize, std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let failures = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut tasks = Vec::with_capacity(total);
        for i in 0..total {
            let permit = slots.clone().acquire_owned().await.unwrap();
            let failures = failures.clone();
            let connection = one(i, addr);
            tasks.push(tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(20), connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        eprintln!("connection {i}: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        eprintln!("connection {i} hung");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(permit);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    failures.load(Ordering::Relaxed)
}

/// After the load: the table empties, the FDs come back to `baseline`
/// (once the upstream pool's idle connections have aged out), nothing is
/// in CLOSE_WAIT, every accepted connection (`total`) was closed with a
/// reason (none internal), and the requests ended with each expected
/// reason. Returns the metrics text for further checks.
fn assert_nothing_left(gh: &Gatehouse, baseline: usize, total: usize) -> String {
    gh.wait_empty(Duration::from_secs(5));
    // Idle pooled upstream connections age out after 1 s (the reaper runs every second).
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while gh.fd_count() > baseline + 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = gh.fd_count();
    if after.abs_diff(baseline) > 3 {
        let ss = std::process::Command::new("ss")
            .args(["-tanp"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let pid = format!("pid={},", gh.pid());
        let mine: Vec<&str> = ss.lines().filter(|l| l.contains(&pid)).collect();
        panic!(
            "fds: baseline {baseline}, after {after}; sockets:\n{}\n{}",
            mine.join("\n"),
            gh.get("/metrics")
        );
    }
    assert_eq!(gh.close_wait(), 0);
    assert_accounted(gh);
    assert_eq!(
        gh.metric("gatehouse_connections_accepted_total", &[]),
        total as u64
    );
    let m = gh.get("/metrics");
    for reason in [
        "client_aborted",
        "upstream_reset",
        "upstream_response_timeout",
        "ok",
    ] {
        assert!(
            metric_sum(
                &m,
                "gatehouse_http_request_end_total",
                &[("reason", reason)]
            ) > 0,
            "no {reason}:\n{m}"
        );
    }
    assert_eq!(
        metric_sum(
            &m,
            "gatehouse_connections_closed_total",
            &[("reason", "internal_error")]
        ),
        0
    );
    m
}

#[test]
fn ten_thousand_http_connections_leave_nothing_behind() {
    let rt = test_runtime();
    let upstream = rt.block_on(backend());
    // One worker: the current-thread runtime (where, with the send-batch
    // feature, upstream request heads go out in batches from the flusher
    // task, so that its cancellations meet every fault below).
    let config = http_config(
        "workers = 1\nlimits.max_connections = 20000",
        "http.access_log = false",
        upstream,
        "policy.allow_upgrade = true\npolicy.response_header_timeout = \"300ms\"\npolicy.pool_idle_timeout = \"1s\"",
    );
    let gh = Gatehouse::start(&config);
    let baseline = gh.fd_count();
    // A reload every second throughout: it must change nothing below.
    let reloads = gh.reload_every(Duration::from_secs(1), &config, "web");
    assert_eq!(run_connections(&rt, TOTAL, 100, gh.addr("web"), one), 0);
    assert!(reloads.stop() > 0, "no reload during the run");
    assert_nothing_left(&gh, baseline, TOTAL);
    // The abandoned downloads were spliced: every pipe came back and, once
    // unused for its time, was closed.
    assert!(gh.metric("gatehouse_spliced_bytes_total", &[]) > 0);
    #[cfg(feature = "send-batch")]
    assert!(gh.metric("gatehouse_upstream_batched_sends_total", &[]) > 0);
    gh.wait_for("the splice pipes closed", Duration::from_secs(5), |g| {
        g.metric("gatehouse_splice_pipes", &[("state", "existing")]) == 0
    });
}

/// One HTTP/2 (h2c) client connection of the HTTP/2 leak test, by kind.
async fn one_h2(i: usize, addr: std::net::SocketAddr) -> Result<(), String> {
    use bytes::Bytes;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let tcp = TcpStream::connect(addr).await.map_err(|x| e(&x))?;
    if i % 16 == 3 {
        // This one's abrupt end is a reset.
        socket2::SockRef::from(&tcp)
            .set_linger(Some(Duration::ZERO))
            .map_err(|x| e(&x))?;
    }
    if i % 8 == 7 && i % 16 == 15 {
        // The preface, then a SETTINGS frame of a length no SETTINGS can have.
        let mut tcp = tcp;
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x05\x04\0\0\0\0\0abcde")
            .await
            .map_err(|x| e(&x))?;
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
        return Ok(());
    }
    let (client, conn) = h2::client::handshake(tcp).await.map_err(|x| e(&x))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let get = |path: &str| {
        http::Request::get(format!("http://{addr}{path}"))
            .body(())
            .unwrap()
    };
    // Sends a bodiless request; its status and body length.
    let fetch = |path: &'static str| {
        let mut client = client.clone();
        async move {
            client = client.ready().await.map_err(|x| e(&x))?;
            let (resp, _) = client.send_request(get(path), true).map_err(|x| e(&x))?;
            let resp = resp.await.map_err(|x| e(&x))?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut n = 0;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(|x| e(&x))?;
                n += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            Ok::<_, String>((status, n))
        }
    };
    let expect = |got: (u16, usize), want: u16| {
        if got.0 == want {
            Ok(())
        } else {
            Err(format!("want {want}, got {got:?}"))
        }
    };
    match i % 8 {
        0..=2 => {
            // Five concurrent streams.
            let all = futures_util::future::join_all((0..5).map(|_| fetch("/ok"))).await;
            for r in all {
                expect(r?, 200)?;
            }
        }
        3 => {
            // A download abandoned after its first bytes: the connection goes.
            let mut client = client.clone().ready().await.map_err(|x| e(&x))?;
            let (resp, _) = client.send_request(get("/big"), true).map_err(|x| e(&x))?;
            let resp = resp.await.map_err(|x| e(&x))?;
            let _ = resp.into_body().data().await;
            conn.abort();
            return Ok(());
        }
        4 => {
            // A stream reset while its upstream is slow; the connection goes on.
            let mut client = client.clone().ready().await.map_err(|x| e(&x))?;
            let (_resp, mut stream) = client.send_request(get("/slow"), true).map_err(|x| e(&x))?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            stream.send_reset(h2::Reason::CANCEL);
            expect(fetch("/ok").await?, 200)?;
        }
        5 => {
            // An upload abandoned midway with the connection.
            let mut client = client.clone().ready().await.map_err(|x| e(&x))?;
            let req = http::Request::post(format!("http://{addr}/post"))
                .header("content-length", "1000000")
                .body(())
                .unwrap();
            let (_resp, mut stream) = client.send_request(req, false).map_err(|x| e(&x))?;
            stream
                .send_data(Bytes::from(vec![b'u'; 50_000]), false)
                .map_err(|x| e(&x))?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            conn.abort();
            return Ok(());
        }
        6 => expect(fetch("/reset").await?, 502)?,
        _ => expect(fetch("/slow").await?, 504)?,
    }
    drop(client);
    conn.abort();
    Ok(())
}

#[test]
fn two_thousand_http2_connections_leave_nothing_behind() {
    const H2_TOTAL: usize = 2_000;
    let rt = test_runtime();
    let upstream = rt.block_on(backend());
    let config = http_config(
        "limits.max_connections = 20000",
        "http.access_log = false\nhttp.h2c = true",
        upstream,
        "policy.response_header_timeout = \"300ms\"\npolicy.pool_idle_timeout = \"1s\"",
    );
    let gh = Gatehouse::start(&config);
    let baseline = gh.fd_count();
    let reloads = gh.reload_every(Duration::from_secs(1), &config, "web");
    assert_eq!(
        run_connections(&rt, H2_TOTAL, 50, gh.addr("web"), one_h2),
        0
    );
    assert!(reloads.stop() > 0, "no reload during the run");
    let m = assert_nothing_left(&gh, baseline, H2_TOTAL);
    // (Two workers: batches only within each HTTP/2 connection's poll.)
    #[cfg(feature = "send-batch")]
    assert!(metric_sum(&m, "gatehouse_upstream_batched_sends_total", &[]) > 0);
    assert!(
        metric_sum(
            &m,
            "gatehouse_connections_closed_total",
            &[("reason", "client_protocol_error")]
        ) > 0,
        "{m}"
    );
}
