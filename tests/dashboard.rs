//! The dashboard in headless Chromium (Debian's `chromium`, driven over
//! the DevTools protocol): it loads from the admin listener with nothing
//! fetched from elsewhere, shows a registered service with its health,
//! updates when a connection opens, and the test saves a screenshot
//! under its output directory (`$CARGO_TARGET_TMPDIR/dashboard/`).
//! `scripts/test.sh` installs Chromium; without it this test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

struct Chromium {
    child: Child,
    ws: Socket,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn start() -> Chromium {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--window-size=1400,1100",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium (Debian's package; scripts/test.sh installs it)");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("chromium exited before its DevTools endpoint")
                .unwrap();
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                break rest.split('/').next().unwrap().parse::<u16>().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let list = devtools_get(port, "/json/list");
        let page = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target");
        let url = page["webSocketDebuggerUrl"].as_str().unwrap();
        let (ws, _) = tungstenite::connect(url).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        }
        Chromium {
            child,
            ws,
            next: 0,
            _profile: profile,
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .unwrap();
        loop {
            let reply = self.ws.read().unwrap();
            let Ok(text) = reply.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap();
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn text(&mut self) -> String {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": "document.body ? document.body.innerText : ''", "returnByValue": true }),
        );
        r["result"]["value"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the page's text satisfies `ok` (the page polls the API
    /// every second).
    fn wait_text(&mut self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.text();
            if ok(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "the dashboard never showed {what}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&mut self, path: &std::path::Path) {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET to the DevTools HTTP endpoint (it wants a Host of an address).
fn devtools_get(port: u16, path: &str) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (_, body) = read_response(&mut s);
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn the_dashboard_shows_services_health_and_live_connections_in_chromium() {
    let (backend, _) = raw_http_backend(|_| ok_response("ok"));
    let config = r#"admin.bind = "127.0.0.1:0"
workers = 2

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"

[[listeners]]
name = "tcp"
bind = "127.0.0.1:0"

[[clusters]]
name = "demo"
service = "demo"
health = { path = "/", interval = "200ms", timeout = "150ms" }

[[routes]]
name = "svc"
match.path_prefix = "/svc/"
action.cluster = "demo"

[[routes]]
name = "raw"
match.listener = "tcp"
action.cluster = "demo"
"#;
    let gh = Gatehouse::start(config);
    let (status, v) = gh.admin_call(
        "PUT",
        "/v1/services/demo/instances/billing-7",
        &format!(r#"{{"address": "{backend}", "ttl": "1h", "tags": ["v2"]}}"#),
    );
    assert_eq!(status, 201, "{v}");

    let mut chromium = Chromium::start();
    chromium.call("Page.enable", json!({}));
    let url = format!("http://{}/v1/dashboard", gh.admin);
    chromium.call("Page.navigate", json!({ "url": url }));
    let backend_text = backend.to_string();
    let text = chromium.wait_text("the registered instance, healthy", |t| {
        t.lines()
            .any(|l| l.contains("billing-7") && l.contains(&backend_text) && l.contains("healthy"))
    });
    assert!(text.contains("config generation"), "{text}");
    assert!(
        text.contains("svc") && text.contains("raw"),
        "routes: {text}"
    );
    assert!(text.contains("no live connection"), "{text}");

    // A connection opens: the page shows it without being reloaded.
    let mut conn = TcpStream::connect(gh.addr("tcp")).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let local = conn.local_addr().unwrap().to_string();
    let text = chromium.wait_text("the new connection", |t| {
        t.lines().any(|l| l.contains(&local) && l.contains("raw"))
    });
    assert!(!text.contains("cannot read the admin API"), "{text}");

    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("dashboard")
        .join("dashboard.png");
    chromium.screenshot(&out);
    assert!(std::fs::metadata(&out).unwrap().len() > 10_000);
    eprintln!("screenshot: {}", out.display());
    drop(conn);
    // Nothing is fetched from anywhere but the admin listener: the page
    // names no outside resource.
    let page = http_get(gh.admin, "/v1/dashboard");
    for external in ["<script src", "<link ", "url(", "https://", "@import"] {
        assert!(!page.contains(external), "the page refers to {external:?}");
    }
}
