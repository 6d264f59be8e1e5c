//! An upstream that ends its side (FIN or reset) while its response waits
//! on a client that takes nothing gives up its pool slot at once: the
//! route's other clients are served long before the send deadline, and
//! the bytes the upstream sent still reach the client that was waiting.
//! The route's pool here has one connection, so a good request succeeds
//! only if the stalled response let its slot go. (A FIN is seen only
//! once the bytes before it reached the proxy: on loopback, the proxy's
//! send buffer toward an HTTP/1 client holds megabytes, so the FIN case
//! is shown on an HTTP/2 stream, which takes one read and waits.)
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const ATTACKER: &str = "127.0.0.2";
/// Sent whole, then the connection is closed: more than one read of the
/// proxy's, little enough that the rest and the FIN fit in the socket
/// buffers between the proxy and the upstream.
const FINITE: usize = 96 << 10;

/// A backend:
/// - `/fin`: `FINITE` bytes with a Content-Length, then a close (FIN);
/// - `/reset`: an endless body (Content-Length, or chunked for
///   `/reset-chunked`) until a write stalls for 200 ms, then a reset;
/// - anything else: a short answer, keep-alive.
fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                while let Some(req) = read_request(&mut s) {
                    let line = req.request_line().to_string();
                    if line.starts_with("GET /fin") {
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {FINITE}\r\n\r\n");
                        let _ = s.write_all(head.as_bytes());
                        let _ = s.write_all(&pattern(FINITE, 7));
                        return; // closed: the FIN follows the body
                    }
                    if line.contains(" /reset") {
                        let chunked = line.contains(" /reset-chunked");
                        let head: &[u8] = if chunked {
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        } else {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n"
                        };
                        let _ = s.write_all(head);
                        s.set_write_timeout(Some(Duration::from_millis(200)))
                            .unwrap();
                        let mut chunk = vec![b'x'; 64 * 1024];
                        if chunked {
                            chunk = [&b"10000\r\n"[..], &chunk, b"\r\n"].concat();
                        }
                        while s.write_all(&chunk).is_ok() {}
                        socket2::SockRef::from(&s)
                            .set_linger(Some(Duration::ZERO))
                            .unwrap();
                        return; // dropped with linger 0: a reset
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

/// One upstream connection for the route, a send deadline far away.
fn start() -> Gatehouse {
    Gatehouse::start(&http_config(
        "[timeouts]\nclient_send = \"60s\"",
        "http.h2c = true",
        backend(),
        "policy.pool_max_connections = 1\npolicy.pool_max_per_client = 1\n\
         policy.pool_wait_timeout = \"30s\"",
    ))
}

/// A client that asks for `path` and reads nothing, with a small receive
/// buffer so that the proxy's writes stall soon.
fn stalled_client(web: SocketAddr, path: &str) -> TcpStream {
    stalled_request(
        web,
        &format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    )
}

fn stalled_request(web: SocketAddr, request: &str) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap(); // before the handshake: a small window
    sock.bind(
        &format!("{ATTACKER}:0")
            .parse::<SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.connect(&web.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.write_all(request.as_bytes()).unwrap();
    s
}

/// The good client gets its answer while the stalled response is still
/// in flight, well before any deadline.
fn assert_good_client_served(gh: &Gatehouse, web: SocketAddr) {
    gh.wait_for(
        "the stalled request to hold the pool",
        Duration::from_secs(10),
        |gh| gh.metric("gatehouse_http_requests_in_flight", &[]) == 1,
    );
    let started = Instant::now();
    let (head, body) = raw_exchange(
        web,
        b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "good client got {head}");
    assert_eq!(body, b"ok");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "good client waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        gh.metric("gatehouse_http_requests_in_flight", &[]),
        1,
        "the stalled response is still in flight"
    );
}

/// The stalled client reads now: what was sent before the reset, then
/// the cut; the request ends as the upstream's doing.
fn assert_cut(gh: &Gatehouse, mut s: TcpStream) {
    let (got, _) = read_to_end(&mut s);
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(got.len() < 1 << 30);
    gh.wait_for("requests to end", Duration::from_secs(10), |gh| {
        gh.metric("gatehouse_http_requests_in_flight", &[]) == 0
    });
    assert_eq!(
        gh.metric(
            "gatehouse_http_request_end_total",
            &[("reason", "upstream_reset")]
        ),
        1
    );
    assert_eq!(gh.close_wait(), 0);
}

#[test]
fn a_spliced_response_the_upstream_reset_lets_its_slot_go() {
    let gh = start();
    let web = gh.addr("web");
    let s = stalled_client(web, "/reset");
    assert_good_client_served(&gh, web);
    assert_cut(&gh, s);
}

#[test]
fn a_copied_response_the_upstream_reset_lets_its_slot_go() {
    let gh = start();
    let web = gh.addr("web");
    let s = stalled_client(web, "/reset-chunked");
    assert_good_client_served(&gh, web);
    assert_cut(&gh, s);
}

/// A request with a body goes through hyper's client: its connection is
/// watched the same way.
#[test]
fn a_response_to_a_request_with_a_body_lets_its_slot_go_when_the_upstream_reset() {
    let gh = start();
    let web = gh.addr("web");
    let s = stalled_request(
        web,
        "POST /reset HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    );
    assert_good_client_served(&gh, web);
    assert_cut(&gh, s);
}

#[test]
fn an_http2_stream_without_window_lets_its_slot_go_when_the_upstream_finished() {
    let gh = start();
    let web = gh.addr("web");
    let rt = test_runtime();
    rt.block_on(async {
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
        // The connection's driver opens the window when told to.
        let (open, opened) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut conn = conn;
            tokio::select! {
                _ = &mut conn => return,
                _ = opened => {}
            }
            conn.set_initial_window_size(1 << 20).unwrap();
            conn.set_target_window_size(1 << 20);
            let _ = conn.await;
        });
        let mut client = client.ready().await.unwrap();
        let req = http::Request::get("http://a/fin").body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let gh = &gh;
        let good = tokio::task::spawn_blocking(move || {
            raw_exchange(
                web,
                b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
        });
        let (head, body) = good.await.unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "good client got {head}");
        assert_eq!(body, b"ok");
        assert_eq!(gh.metric("gatehouse_http_requests_in_flight", &[]), 1);
        // Now the stream gets window: the whole body arrives.
        open.send(()).unwrap();
        let mut body = resp.into_body();
        let mut got = Vec::with_capacity(FINITE);
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            got.extend_from_slice(&data);
            body.flow_control().release_capacity(data.len()).unwrap();
        }
        assert!(got == pattern(FINITE, 7));
    });
    gh.wait_for("requests to end", Duration::from_secs(10), |gh| {
        gh.metric("gatehouse_http_requests_in_flight", &[]) == 0
    });
    assert_eq!(gh.close_wait(), 0);
}
