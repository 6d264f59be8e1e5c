//! Clusters against the real binary: routes (L4 and HTTP) share a named
//! cluster, every address of a name is an endpoint, and a change of what
//! the name resolves to reaches the routes within the re-resolution
//! interval, with the last good addresses kept while it fails. Names come
//! from /etc/hosts in a mount namespace of the proxy's own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// An HTTP backend on `addr` answering every request with its own address.
fn named_backend(addr: &str) -> SocketAddr {
    let ip = addr.rsplit_once(':').unwrap().0.to_string();
    thread_backend(addr, move |mut s| {
        while read_request(&mut s).is_some() {
            if s.write_all(&ok_response(&ip)).is_err() {
                break;
            }
        }
    })
}

fn get(addr: SocketAddr) -> String {
    let (head, body) = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    String::from_utf8(body).unwrap()
}

/// The same request over the L4 listener.
fn get_l4(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    String::from_utf8(body).unwrap()
}

#[test]
fn a_name_that_resolves_elsewhere_is_followed_and_a_failed_lookup_keeps_the_last_answer() {
    let two = named_backend("127.0.0.2:0");
    let port = two.port();
    named_backend(&format!("127.0.0.3:{port}"));
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.2 backend.test\n").unwrap();
    let config = format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 2

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"

[[listeners]]
name = "tcp"
bind = "127.0.0.1:0"

[[clusters]]
name = "api"
resolve_every = "200ms"
endpoints = [{{ address = "backend.test:{port}" }}]

[[routes]]
name = "http"
match.listener = "web"
action.cluster = "api"

[[routes]]
name = "l4"
match.listener = "tcp"
action.cluster = "api"
"#
    );
    let gh = Gatehouse::start_with_hosts(&config, &hosts);
    let (web, tcp) = (gh.addr("web"), gh.addr("tcp"));
    assert_eq!(get(web), "127.0.0.2");
    assert_eq!(get_l4(tcp), "127.0.0.2");

    // The name moves: both routes follow within the interval.
    let moved = Instant::now();
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.3 backend.test\n").unwrap();
    gh.wait_log(
        &format!("\"endpoints\":\"127.0.0.3:{port}\""),
        Duration::from_secs(5),
    );
    let took = moved.elapsed();
    assert!(took < Duration::from_secs(2), "seen after {took:?}");
    assert_eq!(get(web), "127.0.0.3");
    assert_eq!(get_l4(tcp), "127.0.0.3");

    // Two addresses: both are endpoints, in turn.
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.2 backend.test\n127.0.0.3 backend.test\n",
    )
    .unwrap();
    gh.wait_log(
        &format!("\"endpoints\":\"127.0.0.2:{port} 127.0.0.3:{port}\""),
        Duration::from_secs(5),
    );
    let mut seen: Vec<String> = (0..4).map(|_| get(web)).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["127.0.0.2", "127.0.0.3"]);

    // The name is gone: the lookup fails, the last good addresses stay.
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    gh.wait_log("resolution failed", Duration::from_secs(10));
    let mut seen: Vec<String> = (0..4).map(|_| get(web)).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["127.0.0.2", "127.0.0.3"]);
    assert_eq!(gh.closed("upstream_unresolved"), 0);

    // A reload that changes the cluster says so; the routes using it are
    // unchanged (their own settings are).
    let (status, answer) = gh.reload(&config.replace("\"200ms\"", "\"300ms\""));
    assert_eq!(status, 200, "{answer}");
    let applied = &answer["applied"];
    assert_eq!(applied["clusters"]["changed"], serde_json::json!(["api"]));
    assert_eq!(applied["routes"]["changed"], serde_json::json!([]));
}

/// A keep-alive backend that answers with `name` and counts the
/// connections it accepts.
fn counted(name: &'static str) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let addr = thread_backend("127.0.0.1:0", move |mut s| {
        count.fetch_add(1, Ordering::SeqCst);
        while read_request(&mut s).is_some() {
            if s.write_all(&ok_response(name)).is_err() {
                break;
            }
        }
    });
    (addr, accepted)
}

/// A reload that adds an endpoint to a cluster keeps the pools of the
/// endpoints that stay: their idle connections serve on, no new connect.
#[test]
fn an_endpoint_added_by_a_reload_leaves_the_others_idle_connections_alone() {
    use std::sync::atomic::Ordering;
    let (a, a_accepted) = counted("a");
    let (b, b_accepted) = counted("b");
    let config = |endpoints: &str| {
        format!(
            "admin.bind = \"127.0.0.1:0\"\nworkers = 2\n\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\n\
             [[clusters]]\nname = \"api\"\nendpoints = [{endpoints}]\n\n\
             [[routes]]\nname = \"app\"\nmatch.listener = \"web\"\naction.cluster = \"api\"\n"
        )
    };
    let gh = Gatehouse::start(&config(&format!("{{ address = \"{a}\" }}")));
    let web = gh.addr("web");
    assert_eq!(get(web), "a");
    assert_eq!(get(web), "a");
    assert_eq!(
        a_accepted.load(Ordering::SeqCst),
        1,
        "a's connection is pooled"
    );
    let (status, answer) = gh.reload(&config(&format!(
        "{{ address = \"{a}\" }}, {{ address = \"{b}\" }}"
    )));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["applied"]["clusters"]["changed"],
        serde_json::json!(["api"])
    );
    let mut seen: Vec<String> = (0..6).map(|_| get(web)).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["a", "b"]);
    assert_eq!(
        a_accepted.load(Ordering::SeqCst),
        1,
        "a's idle connection was dropped"
    );
    assert_eq!(b_accepted.load(Ordering::SeqCst), 1);
}
