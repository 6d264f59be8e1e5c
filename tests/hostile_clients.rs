//! Hostile clients against the real binary, each while a good client keeps
//! requesting the same route: clients that stop reading (HTTP/1 non-readers
//! and HTTP/2 streams with a zero window) hold at most their share of the
//! route's upstream connections, and only until the send deadline; the good
//! client keeps being served at its usual latency. Bounded in time and count.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Attackers' address (the good client uses 127.0.0.1).
const ATTACKER: &str = "127.0.0.2";
/// The route's pool: small, so that the attack would exhaust it.
const POOL: usize = 64;
/// Upstream connections one client address may hold: the default share.
const SHARE: u64 = POOL as u64 / 2;
const BIG: u64 = 256 << 20;

/// A backend: `/big` answers a body far larger than any socket buffer,
/// written until the connection fails; anything else a short answer.
fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                while let Some(req) = read_request(&mut s) {
                    if req.request_line().starts_with("GET /big") {
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
                        if s.write_all(head.as_bytes()).is_err() {
                            return;
                        }
                        let chunk = vec![b'x'; 64 * 1024];
                        while s.write_all(&chunk).is_ok() {}
                        return;
                    }
                    if s.write_all(&ok_response("ok")).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn config(backend: SocketAddr, h2c: bool) -> String {
    http_config(
        "[timeouts]\nclient_send = \"2s\"",
        if h2c { "http.h2c = true" } else { "" },
        backend,
        &format!("policy.pool_max_connections = {POOL}\npolicy.pool_wait_timeout = \"1s\""),
    )
}

/// One good request on a new connection: its latency, or `None` if it
/// did not get a 200 with its body.
fn good_request(web: SocketAddr) -> Option<Duration> {
    let started = Instant::now();
    let (head, body) = raw_exchange(
        web,
        b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    (head.starts_with("HTTP/1.1 200") && body == b"ok").then(|| started.elapsed())
}

/// The good client: requests one after another until `stop`; returns the
/// latencies of those that succeeded and the number that failed.
fn good_client(
    web: SocketAddr,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(Vec<Duration>, usize)> {
    thread::spawn(move || {
        let (mut ok, mut failed) = (Vec::new(), 0);
        while !stop.load(Ordering::Relaxed) {
            match good_request(web) {
                Some(t) => ok.push(t),
                None => failed += 1,
            }
        }
        (ok, failed)
    })
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

fn request_ends(gh: &Gatehouse, reason: &str) -> u64 {
    gh.metric("gatehouse_http_request_end_total", &[("reason", reason)])
}

/// What both forms of the attack must show: the good client served
/// throughout at its usual latency, each attacker request that got an
/// upstream connection ended at the send deadline, the others refused
/// with their share used, and nothing left behind.
fn assert_survived(
    gh: &Gatehouse,
    baseline: Duration,
    good: (Vec<Duration>, usize),
    attackers: u64,
) {
    let (ok, failed) = good;
    let total = ok.len() + failed;
    assert!(total >= 50, "the good client made only {total} requests");
    assert!(
        failed * 100 <= total,
        "the good client failed {failed} of {total} requests"
    );
    let tail = p99(ok);
    eprintln!(
        "good client: {} of {total} succeeded, p99 {tail:?} (before the attack {baseline:?})",
        total - failed
    );
    assert!(
        tail <= baseline * 5 + Duration::from_millis(100),
        "good client's p99 {tail:?} under attack, {baseline:?} before"
    );
    assert_eq!(request_ends(gh, "client_send_timeout"), SHARE);
    assert_eq!(request_ends(gh, "limit_client_share"), attackers - SHARE);
    gh.wait_for("requests in flight to end", Duration::from_secs(10), |gh| {
        gh.metric("gatehouse_http_requests_in_flight", &[]) == 0
    });
    assert_eq!(gh.close_wait(), 0);
}

fn baseline(web: SocketAddr) -> Duration {
    let lat: Vec<Duration> = (0..100).map(|_| good_request(web).unwrap()).collect();
    p99(lat)
}

/// A route under attack while a good client keeps requesting it.
struct Attack {
    gh: Gatehouse,
    web: SocketAddr,
    /// The good client's p99 before the attack.
    baseline: Duration,
    rss_before: u64,
    stop: Arc<AtomicBool>,
    good: thread::JoinHandle<(Vec<Duration>, usize)>,
}

impl Attack {
    fn start(h2c: bool) -> Attack {
        let gh = Gatehouse::start(&config(backend(), h2c));
        let web = gh.addr("web");
        let baseline = baseline(web);
        let rss_before = gh.rss_kib();
        let stop = Arc::new(AtomicBool::new(false));
        let good = good_client(web, stop.clone());
        Attack {
            gh,
            web,
            baseline,
            rss_before,
            stop,
            good,
        }
    }

    /// Stops the good client and checks what the attack left.
    fn finish(self, attackers: u64, rss_peak: u64) -> Gatehouse {
        self.stop.store(true, Ordering::Relaxed);
        let good = self.good.join().unwrap();
        assert_survived(&self.gh, self.baseline, good, attackers);
        eprintln!(
            "memory: {} KiB before, {rss_peak} KiB under attack, {} KiB after",
            self.rss_before,
            self.gh.rss_kib()
        );
        self.gh
    }
}

#[test]
fn http1_clients_that_stop_reading_hold_only_their_share_until_the_send_deadline() {
    let attack = Attack::start(false);
    let (gh, web) = (&attack.gh, attack.web);
    let attackers = 80u64;
    let held: Vec<TcpStream> = (0..attackers)
        .map(|_| {
            let mut s = connect_from(ATTACKER, web);
            s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap();
            s // never read
        })
        .collect();
    // Every attacker request has its upstream connection or its 503.
    gh.wait_for(
        "attackers to be served or refused",
        Duration::from_secs(10),
        |gh| request_ends(gh, "limit_client_share") == attackers - SHARE,
    );
    let rss_peak = gh.rss_kib();
    // ... and those served end at the send deadline.
    gh.wait_for("the send deadline", Duration::from_secs(10), |gh| {
        request_ends(gh, "client_send_timeout") == SHARE
    });
    let gh = attack.finish(attackers, rss_peak);
    drop(held);
    let closed = gh.metric(
        "gatehouse_connections_closed_total",
        &[("reason", "client_send_timeout")],
    );
    assert_eq!(closed, SHARE, "connections ended by the send deadline");
}

#[test]
fn http2_streams_without_window_hold_only_their_share_until_the_send_deadline() {
    let attack = Attack::start(true);
    let (gh, web) = (&attack.gh, attack.web);
    let rt = test_runtime();
    // Two connections of 40 streams each, SETTINGS_INITIAL_WINDOW_SIZE = 0,
    // never a WINDOW_UPDATE.
    let attackers = 80u64;
    let (resets, rss_peak) = rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..2 {
            let tcp = tokio::net::TcpStream::from_std({
                let s = connect_from(ATTACKER, web);
                s.set_nonblocking(true).unwrap();
                s
            })
            .unwrap();
            let (client, conn) = h2::client::Builder::new()
                .initial_window_size(0)
                .handshake::<_, bytes::Bytes>(tcp)
                .await
                .unwrap();
            tokio::spawn(conn);
            conns.push(client);
        }
        let mut streams = Vec::new();
        for i in 0..attackers as usize {
            let mut client = conns[i % 2].clone().ready().await.unwrap();
            let req = http::Request::get(format!("http://a/big?{i}"))
                .body(())
                .unwrap();
            let (resp, _) = client.send_request(req, true).unwrap();
            streams.push(tokio::spawn(async move {
                let resp = resp.await.unwrap();
                if resp.status() != 200 {
                    return (resp.status().as_u16(), None);
                }
                // The body never gets window: the stream is reset.
                let mut body = resp.into_body();
                let err = loop {
                    match body.data().await {
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => break Some(e.reason()),
                        None => break None,
                    }
                };
                (200, err.flatten())
            }));
        }
        let mut resets = 0;
        let mut refused = 0;
        for s in streams {
            match s.await.unwrap() {
                (200, Some(h2::Reason::CANCEL)) => resets += 1,
                (503, None) => refused += 1,
                other => panic!("attacker stream ended {other:?}"),
            }
        }
        assert_eq!(refused, attackers - SHARE);
        // The connections live on: a request that needs no window (a
        // HEAD) is served on each.
        for client in &conns {
            let mut client = client.clone().ready().await.unwrap();
            let req = http::Request::head("http://a/ok").body(()).unwrap();
            let (resp, _) = client.send_request(req, true).unwrap();
            assert_eq!(resp.await.unwrap().status(), 200);
        }
        (resets, gh.rss_kib())
    });
    assert_eq!(resets, SHARE, "streams reset at the send deadline");
    attack.finish(attackers, rss_peak);
}

fn log_lines(gh: &Gatehouse, needle: &str) -> usize {
    gh.log_text().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_flood_of_invalid_proxy_headers_logs_a_few_lines_and_counts_them_all() {
    let gh = Gatehouse::start(&simple_config(
        "",
        "proxy_protocol.trusted = [\"127.0.0.0/8\"]",
        echo_backend(),
        "",
    ));
    let flood = 300;
    for _ in 0..flood {
        let mut s = TcpStream::connect(gh.addr("in")).unwrap();
        let _ = s.write_all(b"GARBAGE GARBAGE\r\n");
        let _ = wait_closed(&mut s, Duration::from_secs(5));
    }
    gh.wait_closed_count("proxy_header_invalid", flood);
    let lines = log_lines(&gh, "\"reason\":\"proxy_header_invalid\"");
    assert!(
        lines <= gatehouse::conn::log_limit::BURST as usize,
        "{lines} log lines for {flood} invalid headers"
    );
    // The first line of the next window says how many were left out.
    gh.wait_for("the suppression summary", Duration::from_secs(15), |gh| {
        let mut s = TcpStream::connect(gh.addr("in")).unwrap();
        let _ = s.write_all(b"GARBAGE\r\n");
        let _ = wait_closed(&mut s, Duration::from_secs(5));
        gh.log_text().contains("similar suppressed")
    });
    let summary = gh
        .log_text()
        .lines()
        .find(|l| l.contains("similar suppressed"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .unwrap();
    assert_eq!(summary["reason"], "proxy_header_invalid");
    assert!(summary["suppressed"].as_u64().unwrap() >= flood - 10);
}

#[test]
fn the_descriptor_limit_caps_connections_and_the_admin_listener_stays_reachable() {
    // (256 descriptors are kept back; two per connection.)
    let gh = Gatehouse::start_with_nofile(&http_config("", "", backend(), ""), 512);
    assert!(
        gh.log_text().contains("\"lowered_to\":128"),
        "{}",
        gh.log_text()
    );
    let web = gh.addr("web");
    // Past the cap: refused at once, everything else keeps working.
    let held: Vec<TcpStream> = (0..150).map(|_| TcpStream::connect(web).unwrap()).collect();
    gh.wait_closed_count("limit_global", 22);
    for _ in 0..10 {
        gh.get("/healthz");
    }
    drop(held);
    gh.wait_empty(Duration::from_secs(10));

    // Out of descriptors all the same (the limit lowered under the
    // running process): the listeners back off and log a few lines each;
    // with the limit back, connections are served again.
    // (The soft limit: the hard one stays, so that it can be raised again.)
    let set_limit = |n: usize| {
        let status = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", gh.pid()))
            .arg(format!("--nofile={n}:512"))
            .status()
            .unwrap();
        assert!(status.success());
    };
    set_limit(gh.fd_count() + 4);
    let waiting: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(web).unwrap()).collect();
    gh.wait_for("accept failures", Duration::from_secs(10), |gh| {
        log_lines(gh, "accept failed") > 0
    });
    // The back-off at work: retries a second apart, after ten doublings.
    gh.wait_for("the longest back-off", Duration::from_secs(10), |gh| {
        gh.log_text()
            .lines()
            .any(|l| l.contains("\"listener\":\"web\"") && l.contains("\"retry_ms\":1000"))
    });
    // The admin listener answers all the same: its reserved descriptor is
    // given up for the operator's connection.
    for _ in 0..10 {
        gh.get("/healthz");
    }
    for listener in ["web", "admin"] {
        let failures = gh
            .log_text()
            .lines()
            .filter(|l| {
                l.contains("accept failed") && l.contains(&format!("\"listener\":\"{listener}\""))
            })
            .count();
        assert!(
            failures <= gatehouse::conn::log_limit::BURST as usize,
            "{failures} accept-failure lines for {listener}"
        );
    }
    drop(waiting);
    set_limit(512);
    gh.wait_for("requests served again", Duration::from_secs(10), |_| {
        raw_exchange(
            web,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .0
        .starts_with("HTTP/1.1 200")
    });
    gh.get("/healthz");
}

/// One HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Rapid reset: streams reset in the same read as their HEADERS are never
/// started (h2 drops them before they are accepted, counting them against
/// `too_many_resets`), so nothing of them goes upstream.
#[test]
fn http2_streams_reset_with_their_headers_never_reach_the_upstream() {
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config("", "http.h2c = true", backend, ""));
    // The preface, SETTINGS, then per stream HEADERS (GET http://a/, HPACK
    // static indexes) and at once RST_STREAM (CANCEL), all in one write.
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(h2_frame(0x4, 0, 0, &[]));
    let block = [0x82, 0x86, 0x84, 0x41, 0x01, b'a'];
    let streams = 15u32;
    for i in 0..streams {
        let id = 1 + 2 * i;
        bytes.extend(h2_frame(0x1, 0x5, id, &block)); // END_STREAM | END_HEADERS
        bytes.extend(h2_frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    // One request that stays, to know the others were read before it.
    bytes.extend(h2_frame(0x1, 0x5, 1 + 2 * streams, &block));
    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    s.write_all(&bytes).unwrap();
    gh.wait_for("the request that stayed", Duration::from_secs(5), |_| {
        !seen.lock().unwrap().is_empty()
    });
    assert_eq!(seen.lock().unwrap().len(), 1, "reset streams went upstream");
    drop(s);

    // Past 20 such streams the connection gets GOAWAY (ENHANCE_YOUR_CALM)
    // and ends `client_protocol_error`, quietly: no log line per connection.
    for _ in 0..5 {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(h2_frame(0x4, 0, 0, &[]));
        for i in 0..40u32 {
            bytes.extend(h2_frame(0x1, 0x5, 1 + 2 * i, &block));
            bytes.extend(h2_frame(0x3, 0, 1 + 2 * i, &8u32.to_be_bytes()));
        }
        let mut s = TcpStream::connect(gh.addr("web")).unwrap();
        s.write_all(&bytes).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        // A GOAWAY frame (type 7) whose error code is ENHANCE_YOUR_CALM (0xb).
        let goaway = got
            .windows(17)
            .any(|f| f[3] == 7 && f[4] == 0 && f[13..17] == [0, 0, 0, 0xb]);
        assert!(goaway, "no GOAWAY: {got:?}");
    }
    gh.wait_closed_count("client_protocol_error", 5);
    assert_eq!(seen.lock().unwrap().len(), 1);
    let log = gh.log_text();
    assert!(!log.contains("\"WARN\""), "{log}");
}

/// HTTP/2 streams reset after they started (their request already sent
/// upstream) cost no upstream connection: the connection waits out the
/// response it owes, discards it, and serves the next request. Each
/// stream here is reset once the backend holds its request, and answered
/// only once Gatehouse has dropped the stream; the next starts once the
/// connection is counted as kept.
#[test]
fn http2_streams_reset_after_they_started_keep_their_upstream_connection() {
    use std::sync::mpsc;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    let (seen_tx, seen) = mpsc::channel::<()>();
    let (go, go_rx) = mpsc::channel::<()>();
    let go_rx = Arc::new(std::sync::Mutex::new(go_rx));
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let accepted2 = accepted.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            accepted2.fetch_add(1, Ordering::Relaxed);
            let (seen_tx, go_rx) = (seen_tx.clone(), go_rx.clone());
            thread::spawn(move || {
                while read_request(&mut s).is_some() {
                    let _ = seen_tx.send(());
                    let _ = go_rx.lock().unwrap().recv();
                    if s.write_all(&ok_response("ok")).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gh = Gatehouse::start(&http_config("", "http.h2c = true", backend, ""));
    let web = gh.addr("web");
    let rt = test_runtime();
    let streams = 10u64;
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(web).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        for i in 0..streams {
            let mut client = client.clone().ready().await.unwrap();
            let req = http::Request::get("http://a/slow").body(()).unwrap();
            let (_resp, mut send) = client.send_request(req, true).unwrap();
            tokio::task::block_in_place(|| seen.recv_timeout(Duration::from_secs(5)).unwrap());
            send.send_reset(h2::Reason::CANCEL);
            tokio::task::block_in_place(|| {
                gh.wait_for("the reset stream dropped", Duration::from_secs(5), |gh| {
                    request_ends(gh, "client_aborted") == i + 1
                })
            });
            go.send(()).unwrap();
            // Its response drained, the connection is back in the pool.
            tokio::task::block_in_place(|| {
                gh.wait_for("the connection kept", Duration::from_secs(5), |gh| {
                    gh.metric(
                        "gatehouse_upstream_abandoned_total",
                        &[("connection", "kept")],
                    ) == i + 1
                })
            });
        }
        // The connection still serves: a last request answered in full.
        let mut client = client.ready().await.unwrap();
        let req = http::Request::get("http://a/last").body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        tokio::task::block_in_place(|| seen.recv_timeout(Duration::from_secs(5)).unwrap());
        go.send(()).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
    });
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "upstream connections opened for {streams} reset streams and one more request"
    );
}
