//! Zero-downtime restart: a successor started with `--takeover` receives
//! the listening sockets over the handover socket while a load generator
//! runs; no request fails, no connection is refused, requests in flight
//! on the old process finish, and the old process exits after its drain.
//! A successor that fails before it is ready leaves the old one serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// One request on a new connection: `Err` says what went wrong.
fn one_request(addr: SocketAddr, path: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    if text.starts_with("HTTP/1.1 200") && text.ends_with("hello") {
        Ok(())
    } else {
        Err(format!("answer: {text:?}"))
    }
}

/// Requests on one keep-alive connection, as HTTP clients make them: a
/// connection the server closed while idle (before any byte of the
/// answer) is replaced and the request sent again on a new one (RFC 9112
/// §9.3.1); any other error is a failure.
fn keep_alive_client(
    addr: SocketAddr,
    stop: &AtomicBool,
    ok: &AtomicU64,
    failures: &Mutex<Vec<String>>,
) {
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let reused = conn.is_some();
        let mut s = match conn.take() {
            Some(s) => s,
            None => match TcpStream::connect(addr) {
                Ok(s) => s,
                Err(e) => {
                    failures.lock().unwrap().push(format!("connect: {e}"));
                    continue;
                }
            },
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let sent = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let (head, body) = match sent {
            Ok(()) => read_response(&mut s),
            Err(_) => (String::new(), Vec::new()),
        };
        if head.is_empty() && reused {
            continue; // closed while idle: a new connection
        }
        if head.starts_with("HTTP/1.1 200") && body == b"hello" {
            ok.fetch_add(1, Ordering::Relaxed);
            if !head.to_ascii_lowercase().contains("connection: close") {
                conn = Some(s);
            }
        } else {
            failures
                .lock()
                .unwrap()
                .push(format!("keep-alive answer: {head:?}"));
        }
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    /// `clients` threads, each a request after another on new connections,
    /// every other one to `/slow` (the backend takes 30 ms); and two
    /// keep-alive clients.
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut threads: Vec<thread::JoinHandle<()>> = (0..2)
            .map(|_| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                thread::spawn(move || keep_alive_client(addr, &stop, &ok, &failures))
            })
            .collect();
        threads.extend((0..clients).map(|i| {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            thread::spawn(move || {
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let path = if n % 2 == 0 { "/slow" } else { "/" };
                    match one_request(addr, path) {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.lock().unwrap().push(e);
                            0
                        }
                    };
                }
            })
        }));
        Load {
            stop,
            ok,
            failures,
            threads,
        }
    }

    fn wait_ok(&self, more: u64) {
        let target = self.ok.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ok.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the load stalled");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

fn backend() -> SocketAddr {
    raw_http_backend(|req| {
        if req.request_line().contains("/slow") {
            thread::sleep(Duration::from_millis(30));
        }
        ok_response("hello")
    })
    .0
}

#[test]
fn a_successor_takes_over_under_load_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("handover.sock");
    let sock = sock.to_str().unwrap();
    let config = http_config("", "", backend(), "");
    let old = Gatehouse::start_with_env(&config, &[("GATEHOUSE_HANDOVER", sock)]);
    let addr = old.addr("web");
    let load = Load::start(addr, 4);
    load.wait_ok(200);

    let new = Gatehouse::start_with_env(
        &config,
        &[("GATEHOUSE_HANDOVER", sock), ("GATEHOUSE_TAKEOVER", "true")],
    );
    assert_eq!(new.addr("web"), addr, "the same socket, not a new bind");
    assert_eq!(new.admin, old.admin);
    new.wait_log("took over from the old process", Duration::from_secs(5));
    let old_log = {
        let status = {
            let log = old.log.clone();
            let status = old.wait_exit(Duration::from_secs(30));
            let text = log.lock().unwrap().join("\n");
            (status, text)
        };
        assert!(status.0.success(), "old process: {:?}", status.0);
        status.1
    };
    assert!(old_log.contains("a successor took over the listening sockets"));
    assert!(old_log.contains("shutdown complete"));
    // The successor alone serves now.
    load.wait_ok(200);
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    assert!(new.metric("gatehouse_http_requests_total", &[("status", "2xx")]) >= 200);
    assert_accounted(&new);
    // It listens for the next successor in turn.
    new.wait_log("handover socket listening", Duration::from_secs(5));
}

#[test]
fn a_successor_that_fails_to_start_leaves_the_old_process_serving() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("handover.sock");
    let config = http_config("", "", backend(), "");
    let old = Gatehouse::start_with_env(&config, &[("GATEHOUSE_HANDOVER", sock.to_str().unwrap())]);
    let addr = old.addr("web");
    // Its config has a listener whose port is taken: it stops before ready.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = format!(
        "{config}\n[[listeners]]\nname = \"taken\"\nbind = \"{}\"\n",
        taken.local_addr().unwrap()
    );
    let bad_path = dir.path().join("bad.toml");
    std::fs::write(&bad_path, bad).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&bad_path)
        .args(["--handover"])
        .arg(&sock)
        .arg("--takeover")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot bind"), "{stderr}");
    old.wait_log("still serving", Duration::from_secs(10));
    one_request(addr, "/").unwrap();
    let (status, _) = old.admin_call("GET", "/healthz", "");
    assert_eq!(status, 200);
    // And a later successor still can take over.
    let new = Gatehouse::start_with_env(
        &config,
        &[
            ("GATEHOUSE_HANDOVER", sock.to_str().unwrap()),
            ("GATEHOUSE_TAKEOVER", "true"),
        ],
    );
    assert_eq!(new.addr("web"), addr);
    assert!(old.wait_exit(Duration::from_secs(30)).success());
    one_request(addr, "/").unwrap();
}
