//! A real partition, not a closed port: a backend in a network namespace
//! of its own behind a veth pair, cut off mid-traffic by nftables rules
//! that drop its packets both ways. Health checks and passive health take
//! it out, requests already sent to it end at their deadline with
//! `upstream_response_timeout`, and nothing waits longer than its
//! deadline. Skips, saying why, where namespaces or nftables are missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The namespace, its veth pair, the backend in it and the nftables
/// table of the partition; all removed on drop.
struct Partition {
    ns: String,
    host_if: String,
    table: String,
    backend: Option<Child>,
    _dir: tempfile::TempDir,
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A Python backend answering `GET /slow` after 3 s and anything else at
/// once, over HTTP/1.1 keep-alive.
const BACKEND: &str = r#"
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(3)
        body = b"part"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"#;

impl Partition {
    fn new() -> Result<(Partition, SocketAddr), String> {
        if Command::new("nft").arg("--version").output().is_err() {
            return Err("nft is not installed".into());
        }
        let id = std::process::id() % 10_000;
        let net = 200 + (id % 50);
        let (host_ip, ns_ip) = (
            format!("10.{net}.{}.1", id % 250),
            format!("10.{net}.{}.2", id % 250),
        );
        let ns = format!("gh-part-{id}");
        let host_if = format!("ghp{id}a");
        let ns_if = format!("ghp{id}b");
        sh(&["ip", "netns", "add", &ns])?;
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partition {
            ns: ns.clone(),
            host_if: host_if.clone(),
            table: format!("gh_part_{id}"),
            backend: None,
            _dir: dir,
        };
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        sh(&["ip", "link", "set", &ns_if, "netns", &ns])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            &host_if,
        ])?;
        sh(&["ip", "link", "set", &host_if, "up"])?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/24"),
            "dev",
            &ns_if,
        ])?;
        sh(&[
            "ip", "netns", "exec", &ns, "ip", "link", "set", &ns_if, "up",
        ])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        let script = p._dir.path().join("backend.py");
        std::fs::write(&script, BACKEND).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "python3"])
            .arg(&script)
            .args([&ns_ip, "8080"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        p.backend = Some(child);
        let addr: SocketAddr = format!("{ns_ip}:8080").parse().unwrap();
        // Until the backend answers through the veth pair.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err("the backend in the namespace did not start".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((p, addr))
    }

    /// Drops every packet to and from `addr`, both ways.
    fn cut(&self, addr: SocketAddr) -> Result<(), String> {
        let ip = addr.ip().to_string();
        let t = &self.table;
        sh(&["nft", "add", "table", "inet", t])?;
        for (chain, hook, dir) in [("out", "output", "daddr"), ("in", "input", "saddr")] {
            sh(&[
                "nft",
                "add",
                "chain",
                "inet",
                t,
                chain,
                &format!("{{ type filter hook {hook} priority 0; policy accept; }}"),
            ])?;
            sh(&[
                "nft", "add", "rule", "inet", t, chain, "ip", dir, &ip, "drop",
            ])?;
        }
        Ok(())
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Some(mut c) = self.backend.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh(&["nft", "delete", "table", "inet", &self.table]);
        let _ = sh(&["ip", "link", "delete", &self.host_if]);
        let _ = sh(&["ip", "netns", "delete", &self.ns]);
    }
}

#[test]
fn a_partitioned_endpoint_is_taken_out_and_requests_sent_to_it_end_at_their_deadline() {
    let (part, far) = match Partition::new() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED: cannot make a network partition here: {why}");
            return;
        }
    };
    let near = thread_backend("127.0.0.1:0", |mut s| {
        while read_request(&mut s).is_some() {
            if s.write_all(&ok_response("near")).is_err() {
                break;
            }
        }
    });
    let gh = Gatehouse::start(&format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 2

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"

[[routes]]
name = "slow"
match.listener = "web"
match.path = "/slow"
action.cluster = "far"
policy.response_header_timeout = "1s"

[[routes]]
name = "app"
match.listener = "web"
action.cluster = "pool"
policy.connect_timeout = "500ms"
policy.response_header_timeout = "1s"

[[clusters]]
name = "far"
endpoints = [{{ address = "{far}" }}]

[[clusters]]
name = "pool"
endpoints = [{{ address = "{near}" }}, {{ address = "{far}" }}]
health = {{ path = "/", interval = "300ms", timeout = "200ms", unhealthy_threshold = 2 }}
"#
    ));
    let addr = gh.addr("web");
    // Traffic reaches both, over pooled connections.
    let answers: Vec<Vec<u8>> = (0..10)
        .map(|_| {
            raw_exchange(
                addr,
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .1
        })
        .collect();
    assert!(answers.iter().any(|a| a == b"part") && answers.iter().any(|a| a == b"near"));

    // A request is at the far backend when the cut comes.
    let slow = std::thread::spawn(move || {
        let started = Instant::now();
        let (head, _) = raw_exchange(
            addr,
            b"GET /slow HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        (head, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    part.cut(far).unwrap();
    let cut = Instant::now();

    // Requests keep being answered: by the near endpoint, or, for one
    // already sent to the far one, at its deadline.
    let mut timeouts = 0;
    while cut.elapsed() < Duration::from_secs(3) {
        let started = Instant::now();
        let (head, body) = raw_exchange(
            addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(1500),
            "a request took {took:?}: {head}"
        );
        if head.starts_with("HTTP/1.1 504") {
            assert!(
                head.contains("gatehouse-error: upstream_response_timeout"),
                "{head}"
            );
            timeouts += 1;
        } else {
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert_eq!(body, b"near");
        }
    }
    assert!(
        timeouts <= 2,
        "{timeouts} requests timed out at the far endpoint"
    );
    let clusters: serde_json::Value = serde_json::from_str(&gh.get("/clusters")).unwrap();
    let pool = clusters["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "pool")
        .unwrap()
        .clone();
    let far_state = pool["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == far.to_string())
        .unwrap()
        .clone();
    assert!(
        far_state["state"] == "unhealthy" || far_state["state"] == "ejected",
        "{far_state}"
    );
    assert!(
        far_state["last_probe"]
            .as_str()
            .unwrap_or("")
            .starts_with("timeout after"),
        "{far_state}"
    );

    let (head, took) = slow.join().unwrap();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(
        head.contains("gatehouse-error: upstream_response_timeout"),
        "{head}"
    );
    assert!(took < Duration::from_millis(2000), "{took:?}");
    drop(part);
}
