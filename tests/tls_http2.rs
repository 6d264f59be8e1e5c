//! HTTP/2 through the proxy: negotiated by ALPN on terminated TLS and by
//! prior knowledge on cleartext, towards HTTP/1.1 and h2c upstreams; many
//! concurrent streams on one connection (h2load), curl, and a stream reset
//! by the client cancelling the upstream request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::tls::Pki;
use common::*;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};

struct H2Backend {
    addr: SocketAddr,
    /// `/slow` handlers dropped before finishing (their stream was reset).
    cancelled: Arc<AtomicUsize>,
    slow_started: mpsc::Receiver<()>,
    versions: Arc<Mutex<Vec<String>>>,
}

struct CountDrop(Arc<AtomicUsize>);
impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// An h2c (HTTP/2 prior knowledge) backend on hyper.
fn h2c_backend() -> H2Backend {
    h2_backend(None)
}

/// An HTTP/2 backend on hyper, over TLS (ALPN h2) when `tls` is given.
fn h2_backend(tls: Option<Arc<rustls::ServerConfig>>) -> H2Backend {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let cancelled = Arc::new(AtomicUsize::new(0));
    let versions = Arc::new(Mutex::new(Vec::new()));
    let (tx, slow_started) = mpsc::channel();
    let (c2, v2) = (cancelled.clone(), versions.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let (s, _) = l.accept().await.unwrap();
                let (c, v, tx) = (c2.clone(), v2.clone(), tx.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (c, v, tx) = (c.clone(), v.clone(), tx.clone());
                            async move {
                                v.lock().unwrap().push(format!("{:?}", req.version()));
                                if req.uri().path() == "/half" {
                                    let _ = tx.send(());
                                    tokio::time::sleep(Duration::from_millis(600)).await;
                                }
                                if req.uri().path() == "/slow" {
                                    let guard = CountDrop(c);
                                    let _ = tx.send(());
                                    tokio::time::sleep(Duration::from_secs(30)).await;
                                    std::mem::forget(guard);
                                }
                                let body = format!("h2c {:?} {}", req.version(), req.uri().path());
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                            }
                        });
                    let builder = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                                .await;
                        }
                        Some(config) => {
                            let Ok(s) = tokio_rustls::TlsAcceptor::from(config).accept(s).await
                            else {
                                return;
                            };
                            assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                            let _ = builder
                                .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                                .await;
                        }
                    }
                });
            }
        });
    });
    H2Backend {
        addr,
        cancelled,
        slow_started,
        versions,
    }
}

fn h2load(args: &[&str]) -> String {
    let out = Command::new("h2load").args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    text
}

#[test]
fn h2_over_tls_to_an_http1_upstream_and_h2c_to_an_h2c_upstream() {
    let pki = Pki::new("ca");
    let (c, k) = pki.issue("site", &["a.test"]);
    let (h1, h1_seen) = raw_http_backend(|req| ok_response(req.request_line()));
    let h2 = h2c_backend();
    let gh = Gatehouse::start(&format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 2
[[certificates]]
cert = "{}"
key = "{}"
default = true
[[listeners]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "https"
[[listeners]]
name = "clear"
bind = "127.0.0.1:0"
protocol = "http"
http.h2c = true
[[routes]]
name = "to-h1"
match = {{ listener = "tls", path_prefix = "/" }}
action.forward = ["{h1}"]
[[routes]]
name = "to-h2-over-tls"
match = {{ listener = "tls", path_prefix = "/h2/" }}
action.forward = ["{h2a}"]
upstream.protocol = "http2"
[[routes]]
name = "to-h2c"
match.listener = "clear"
action.forward = ["{h2a}"]
upstream.protocol = "http2"
"#,
        c.display(),
        k.display(),
        h2a = h2.addr
    ));
    let tls = gh.addr("tls");
    let clear = gh.addr("clear");

    // curl: HTTP/2 over TLS to an HTTP/1.1 upstream, the target kept byte for byte.
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&pki.ca_pem)
        .args(["--resolve", &format!("a.test:{}:127.0.0.1", tls.port())])
        .args(["--path-as-is", "-w", " %{http_version}"])
        .arg(format!("https://a.test:{}/a/../b//c%2f?q", tls.port()))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out, "GET /a/../b//c%2f?q HTTP/1.1 2");
    // ... and to an h2c upstream.
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&pki.ca_pem)
        .args(["--resolve", &format!("a.test:{}:127.0.0.1", tls.port())])
        .arg(format!("https://a.test:{}/h2/x", tls.port()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "h2c HTTP/2.0 /h2/x");
    // curl with prior knowledge on the cleartext listener.
    let out = Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-w", " %{http_version}"])
        .arg(format!("http://{clear}/pk"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "h2c HTTP/2.0 /pk 2");

    // h2load: many concurrent streams on one connection, both ways.
    let text = h2load(&[
        "-n",
        "2000",
        "-c",
        "1",
        "-m",
        "100",
        &format!("https://{tls}/load"),
    ]);
    assert!(text.contains("2000 succeeded"), "{text}");
    assert!(text.contains("Application protocol: h2"), "{text}");
    let text = h2load(&[
        "-n",
        "2000",
        "-c",
        "2",
        "-m",
        "50",
        &format!("http://{clear}/load"),
    ]);
    assert!(text.contains("2000 succeeded"), "{text}");
    assert!(h1_seen.lock().unwrap().len() >= 2001);
    let versions = h2.versions.lock().unwrap();
    assert!(versions.len() >= 2002);
    assert!(versions.iter().all(|v| v == "HTTP/2.0"));
    drop(versions);
    assert_eq!(gh.closed("internal_error"), 0);
}

#[test]
fn a_client_stream_reset_cancels_the_upstream_request() {
    let h2 = h2c_backend();
    let gh = Gatehouse::start(&http_config(
        "",
        "http.h2c = true",
        h2.addr,
        "upstream.protocol = \"http2\"",
    ));
    let web = gh.addr("web");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut sender, _conn) = h2c_client::<Empty<Bytes>>(web).await;
        // One normal request on the connection first.
        let req = Request::get(format!("http://{web}/fast"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"h2c HTTP/2.0 /fast");

        let req = Request::get(format!("http://{web}/slow"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let pending = sender.send_request(req);
        let reset = async {
            tokio::task::spawn_blocking(move || {
                h2.slow_started
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap();
                h2
            })
            .await
            .unwrap()
        };
        // Wait until the upstream has the request, then drop ours: hyper
        // resets the stream (RST_STREAM CANCEL).
        let h2 = tokio::select! {
            h2 = reset => h2,
            _ = pending => panic!("the slow request answered"),
        };
        let started = Instant::now();
        while h2.cancelled.load(Ordering::SeqCst) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "upstream request not cancelled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The connection still serves other streams.
        let req = Request::get(format!("http://{web}/after"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    });
    gh.wait_for("the aborted request counted", Duration::from_secs(2), |g| {
        g.metric(
            "gatehouse_http_request_end_total",
            &[("route", "app"), ("reason", "client_aborted")],
        ) == 1
    });
}

#[test]
fn h2_over_tls_to_the_upstream_by_alpn() {
    let pki = Pki::new("ca");
    let (c, k) = pki.issue("up", &["h2.internal"]);
    let up = h2_backend(Some(common::tls::server_config(&c, &k, &[b"h2"])));
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        up.addr,
        &format!(
            "upstream = {{ tls = true, protocol = \"http2\", ca = \"{}\", server_name = \"h2.internal\" }}",
            pki.ca_pem.display()
        ),
    ));
    for i in 0..3 {
        let (head, body) = raw_exchange(
            gh.addr("web"),
            format!("GET /t{i} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, format!("h2c HTTP/2.0 /t{i}").as_bytes());
    }
    assert_eq!(up.versions.lock().unwrap().len(), 3);
}

#[test]
fn a_stream_in_flight_at_shutdown_completes_then_the_connection_closes() {
    let h2 = h2c_backend();
    let gh = Gatehouse::start(&http_config(
        "timeouts.shutdown_drain = \"10s\"",
        "http.h2c = true",
        h2.addr,
        "upstream.protocol = \"http2\"",
    ));
    let web = gh.addr("web");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gh = rt.block_on(async {
        let (mut sender, conn) = h2c_client::<Empty<Bytes>>(web).await;
        let req = Request::get(format!("http://{web}/half"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let pending = tokio::spawn(sender.send_request(req));
        // The request is upstream (answered 600 ms later) when the drain starts.
        let (h2, gh) = tokio::task::spawn_blocking(move || {
            h2.slow_started
                .recv_timeout(Duration::from_secs(5))
                .unwrap();
            gh.signal("TERM");
            gh.wait_log("listener closed", Duration::from_secs(3));
            (h2, gh)
        })
        .await
        .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("in-flight stream not answered during the drain")
            .unwrap()
            .expect("in-flight stream cut at shutdown");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"h2c HTTP/2.0 /half");
        // Then the proxy ends the connection (GOAWAY, close) on its own.
        tokio::time::timeout(Duration::from_secs(3), conn)
            .await
            .expect("connection left open after its last stream")
            .unwrap()
            .unwrap();
        drop(h2);
        gh
    });
    let started = Instant::now();
    let status = gh.terminate(Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "exit took {:?} with nothing left to drain",
        started.elapsed()
    );
}
