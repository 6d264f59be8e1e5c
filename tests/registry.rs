//! The service registry against the real binary: instances register over
//! the admin API and take traffic at once, lapse without heartbeats, leave
//! under load without a failed request, survive a restart in the data
//! directory, and race config reloads without loss; the admin token's
//! 401/403 and every bad registration's 400.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "registry-test-token-0123456789";

/// An HTTP listener `web` whose route `svc` goes to the cluster of service
/// `demo`; `top`: more top-level settings.
fn config(top: &str) -> String {
    format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 2
{top}

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"

[[clusters]]
name = "demo"
service = "demo"

[[routes]]
name = "svc"
match.listener = "web"
action.cluster = "demo"
"#
    )
}

/// With the admin token in `GH_ADMIN_TOKEN` (writes need it).
fn start(top: &str) -> Gatehouse {
    let top = format!("admin.token_env = \"GH_ADMIN_TOKEN\"\n{top}");
    Gatehouse::start_with_env(&config(&top), &[("GH_ADMIN_TOKEN", TOKEN)])
}

/// An admin request with an optional bearer token: status and body.
fn call(
    gh: &Gatehouse,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(gh.admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let (head, body) = read_response(&mut s);
    (
        status_of(&head),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// The status code of a response head (0: none).
fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn register(gh: &Gatehouse, id: &str, addr: SocketAddr, ttl: &str) -> u16 {
    let body = format!(r#"{{"address": "{addr}", "ttl": "{ttl}"}}"#);
    let path = format!("/v1/services/demo/instances/{id}");
    call(gh, "PUT", &path, Some(TOKEN), body.as_bytes()).0
}

/// One GET through the proxy on a fresh connection: status and body.
fn get(gh: &Gatehouse) -> (u16, String) {
    let (head, body) = raw_exchange(
        gh.addr("web"),
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    (
        status_of(&head),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn backend(name: &'static str) -> SocketAddr {
    raw_http_backend(move |_| ok_response(name)).0
}

fn instances(gh: &Gatehouse) -> u64 {
    let (_, body) = call(gh, "GET", "/v1/services", None, b"");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["instances"].as_u64().unwrap()
}

#[test]
fn a_registered_instance_takes_traffic_at_once_and_lapses_without_heartbeats() {
    let gh = start("");
    let (status, body) = get(&gh);
    assert_eq!(status, 503, "{body}");
    gh.wait_log("no_healthy_upstream", Duration::from_secs(5));

    let one = backend("one");
    let t = Instant::now();
    assert_eq!(register(&gh, "one", one, "2s"), 201);
    // The very next request goes to it.
    assert_eq!(get(&gh), (200, "one".to_string()));
    assert!(t.elapsed() < Duration::from_secs(1));
    // The same registration again renews it; heartbeats renew it too.
    assert_eq!(register(&gh, "one", one, "2s"), 200);
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let (status, _) = call(
            &gh,
            "POST",
            "/v1/services/demo/instances/one/heartbeat",
            Some(TOKEN),
            b"",
        );
        assert_eq!(status, 200);
        assert_eq!(get(&gh).0, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
    // Heartbeats stop: it leaves after its TTL, and the answer is 503 again.
    let stopped = Instant::now();
    gh.wait_log("instance lapsed", Duration::from_secs(5));
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        stopped.elapsed()
    );
    assert_eq!(get(&gh).0, 503);
    assert_eq!(instances(&gh), 0);
    let (status, _) = call(
        &gh,
        "POST",
        "/v1/services/demo/instances/one/heartbeat",
        Some(TOKEN),
        b"",
    );
    assert_eq!(status, 404, "a lapsed instance registers again");
}

#[test]
fn deregistering_under_load_fails_no_request() {
    let gh = start("");
    let (a, b) = (backend("a"), backend("b"));
    assert_eq!(register(&gh, "a", a, "30s"), 201);
    assert_eq!(register(&gh, "b", b, "30s"), 201);
    let web = gh.addr("web");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                // Keep-alive connections, as a load generator's.
                let mut s = TcpStream::connect(web).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
                    let (head, _) = read_response(&mut s);
                    if head.starts_with("HTTP/1.1 200") {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let wait_more = |n: u64| {
        let target = ok.load(Ordering::Relaxed) + n;
        while ok.load(Ordering::Relaxed) < target {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_more(200);
    let (status, _) = call(
        &gh,
        "DELETE",
        "/v1/services/demo/instances/a",
        Some(TOKEN),
        b"",
    );
    assert_eq!(status, 200);
    wait_more(500);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    // Only b now.
    for _ in 0..5 {
        assert_eq!(get(&gh), (200, "b".to_string()));
    }
    let (status, _) = call(
        &gh,
        "DELETE",
        "/v1/services/demo/instances/a",
        Some(TOKEN),
        b"",
    );
    assert_eq!(status, 404);
}

#[test]
fn registrations_survive_a_restart_and_the_cluster_is_never_empty() {
    let dir = tempfile::tempdir().unwrap();
    let top = format!("registry.data_dir = \"{}\"", dir.path().display());
    let one = backend("one");
    let gh = start(&top);
    assert_eq!(register(&gh, "one", one, "1m"), 201);
    assert_eq!(get(&gh).0, 200);
    gh.terminate(Duration::from_secs(10));
    // The stored registration is one file, written whole.
    let stored = dir.path().join("services/demo/one.json");
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(&stored).unwrap()).unwrap();
    assert_eq!(kept["address"], one.to_string());
    // The first request of the new process already has it.
    let gh = start(&top);
    assert_eq!(get(&gh), (200, "one".to_string()));
    assert!(gh.log_text().contains("registrations restored"));
    // A deregistration removes the file.
    assert_eq!(
        call(
            &gh,
            "DELETE",
            "/v1/services/demo/instances/one",
            Some(TOKEN),
            b""
        )
        .0,
        200
    );
    assert!(!stored.exists());
}

#[test]
fn registrations_and_reloads_racing_each_lose_nothing() {
    // (No token here: the reloading helper writes without one.)
    let gh = Gatehouse::start_with_env(&config(""), &[]);
    let target = backend("t");
    // Each reload changes the cluster's settings: a new cluster is made
    // for each snapshot, while instances register.
    let (path, admin) = (gh.config_path(), gh.admin);
    let stop = Arc::new(AtomicBool::new(false));
    let reloading = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut applied = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let n = 1000 + applied % 2;
                let text = config("").replace(
                    "service = \"demo\"",
                    &format!("service = \"demo\"\nmax_requests = {n}"),
                );
                std::fs::write(&path, text).unwrap();
                let (status, body) = http_post(admin, "/config/reload", b"");
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                applied += 1;
            }
            applied
        })
    };
    for i in 0..60 {
        // (Each instance its own address: 127.0.0.x of one port.)
        let addr: SocketAddr = format!("127.0.0.{}:{}", i + 2, target.port())
            .parse()
            .unwrap();
        assert_eq!(register(&gh, &format!("i{i}"), addr, "5m"), 201);
        // Each reaches the running cluster within a second (at once, or
        // with the changes that follow it within `registry::COALESCE`),
        // whatever reload runs meanwhile.
        let deadline = Instant::now() + Duration::from_secs(1);
        while demo_endpoints(&gh) != i + 1 {
            assert!(
                Instant::now() < deadline,
                "registration {i} never reached the cluster"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // (Spread over many reloads.)
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let applied = reloading.join().unwrap();
    assert!(applied > 3, "{applied} reloads");
    assert_eq!(demo_endpoints(&gh), 60);
}

/// The endpoints of the running cluster `demo`.
fn demo_endpoints(gh: &Gatehouse) -> usize {
    let clusters: serde_json::Value = serde_json::from_str(&gh.get("/v1/clusters")).unwrap();
    let demo = clusters["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "demo")
        .unwrap()
        .clone();
    demo["endpoints"].as_array().unwrap().len()
}

/// The state word of the running cluster's endpoint at `addr`.
fn endpoint_state(gh: &Gatehouse, addr: SocketAddr) -> String {
    let clusters: serde_json::Value = serde_json::from_str(&gh.get("/v1/clusters")).unwrap();
    clusters["clusters"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .map(|e| e["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[test]
fn instances_registered_with_a_health_hint_are_probed_at_their_path() {
    let gh = start("");
    let good = backend("good");
    // Answers requests, but its readiness path says it is not ready.
    let (sick, _) = raw_http_backend(|req| {
        if req.request_line().starts_with("GET /ready ") {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec()
        } else {
            ok_response("sick")
        }
    });
    let quiet = backend("quiet");
    let hint = r#""health": {"path": "/ready", "interval": "1s"}"#;
    for (id, addr) in [("good", good), ("sick", sick)] {
        let body = format!(r#"{{"address": "{addr}", "ttl": "5m", {hint}}}"#);
        let path = format!("/v1/services/demo/instances/{id}");
        assert_eq!(call(&gh, "PUT", &path, Some(TOKEN), body.as_bytes()).0, 201);
    }
    assert_eq!(register(&gh, "quiet", quiet, "5m"), 201);
    gh.wait_for(
        "the hinted probes' verdicts",
        Duration::from_secs(15),
        |g| endpoint_state(g, sick) == "unhealthy" && endpoint_state(g, good) == "healthy",
    );
    // Without a hint: not probed.
    assert_eq!(endpoint_state(&gh, quiet), "unknown");
    for _ in 0..12 {
        assert_ne!(
            get(&gh),
            (200, "sick".to_string()),
            "an unhealthy instance took a request"
        );
    }
    // A bad hint is refused like any bad field.
    for bad in [
        r#"{"address": "127.0.0.1:9", "health": {"path": "ready"}}"#,
        r#"{"address": "127.0.0.1:9", "health": {"path": "/r", "interval": "0s"}}"#,
        r#"{"address": "127.0.0.1:9", "health": {"path": "/r", "timeout": "1s"}}"#,
    ] {
        let (status, body) = call(
            &gh,
            "PUT",
            "/v1/services/demo/instances/bad",
            Some(TOKEN),
            bad.as_bytes(),
        );
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body.contains("health") || body.contains("`timeout`"),
            "{body}"
        );
    }
}

#[test]
fn admin_writes_need_the_token_and_it_is_never_logged() {
    let gh = start("");
    let one = backend("one");
    let body = format!(r#"{{"address": "{one}"}}"#);
    let path = "/v1/services/demo/instances/one";
    let (status, _) = call(&gh, "PUT", path, None, body.as_bytes());
    assert_eq!(status, 401);
    let (status, _) = call(
        &gh,
        "PUT",
        path,
        Some("not-the-token-at-all-000"),
        body.as_bytes(),
    );
    assert_eq!(status, 403);
    // The older write paths too.
    assert_eq!(call(&gh, "POST", "/config/reload", None, b"").0, 401);
    assert_eq!(
        call(&gh, "POST", "/v1/config/reload", Some(TOKEN), b"").0,
        200
    );
    // Reads are public by default; the same under /v1.
    assert_eq!(call(&gh, "GET", "/v1/services", None, b"").0, 200);
    assert_eq!(call(&gh, "GET", "/clusters", None, b"").0, 200);
    assert_eq!(instances(&gh), 0);
    assert_eq!(call(&gh, "PUT", path, Some(TOKEN), body.as_bytes()).0, 201);
    assert!(!gh.log_text().contains(TOKEN), "the token in the log");
    drop(gh);

    // Private reads: GET needs the token too (liveness stays open).
    let gh = start("admin.public_reads = false");
    let (status, head) = call(&gh, "GET", "/v1/services", None, b"");
    assert_eq!(status, 401, "{head}");
    assert_eq!(
        call(&gh, "GET", "/metrics", Some("wrong-token-0123456789"), b"").0,
        403
    );
    assert_eq!(call(&gh, "GET", "/v1/services", Some(TOKEN), b"").0, 200);
    assert_eq!(call(&gh, "GET", "/healthz", None, b"").0, 200);
}

#[test]
fn bad_registrations_are_400_and_nothing_is_applied() {
    let gh = start("");
    let path = "/v1/services/demo/instances/one";
    let huge = format!(
        r#"{{"address": "127.0.0.1:80", "tags": ["{}"]}}"#,
        "x".repeat(20_000)
    );
    let cases: Vec<(&str, &[u8], &str)> = vec![
        (path, b"{not json", "body"),
        (path, br#"{"address": 80}"#, "body"),
        (
            path,
            br#"{"address": "127.0.0.1:80", "weight": "heavy"}"#,
            "body",
        ),
        (
            path,
            br#"{"address": "127.0.0.1:80", "color": "blue"}"#,
            "unknown field",
        ),
        (path, br#"{"address": "somewhere"}"#, "address"),
        (path, br#"{"address": "127.0.0.1:0"}"#, "address"),
        (path, br#"{"address": "127.0.0.1:80", "ttl": "0s"}"#, "ttl"),
        (
            path,
            br#"{"address": "127.0.0.1:80", "ttl": "3650d"}"#,
            "ttl",
        ),
        (
            path,
            br#"{"address": "127.0.0.1:80", "weight": 0}"#,
            "weight",
        ),
        (path, br#"{}"#, "address"),
        (path, huge.as_bytes(), "at most"),
        (
            "/v1/services/demo/instances/..",
            br#"{"address": "127.0.0.1:80"}"#,
            "id",
        ),
        (
            "/v1/services/de%20mo/instances/one",
            br#"{"address": "127.0.0.1:80"}"#,
            "service",
        ),
    ];
    for (path, body, says) in cases {
        let (status, answer) = call(&gh, "PUT", path, Some(TOKEN), body);
        assert_eq!(
            status,
            400,
            "{path} {}: {answer}",
            String::from_utf8_lossy(body)
        );
        assert!(answer.contains(says), "{answer} should say {says:?}");
    }
    assert_eq!(instances(&gh), 0);
    assert_eq!(get(&gh).0, 503);
}
