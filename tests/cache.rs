//! The `cache` filter against the real binary and a backend that counts
//! its requests: hits, misses, revalidation with `304`, `Vary`, what is
//! never stored (`no-store`, `private`, requests with `Authorization`),
//! invalidation by an unsafe method, eviction under the byte cap, and one
//! upstream request for a hundred concurrent requests of a cold object.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

type Counts = Arc<Mutex<HashMap<String, u32>>>;

fn backend() -> (SocketAddr, Counts, Arc<Mutex<Vec<SeenRequest>>>) {
    let counts: Counts = Arc::default();
    let seen: Arc<Mutex<Vec<SeenRequest>>> = Arc::default();
    let (c, sn) = (counts.clone(), seen.clone());
    let addr = thread_backend("127.0.0.1:0", move |mut s| {
        let mut reader = BufReader::new(s.try_clone().unwrap());
        while let Some(req) = read_request(&mut reader) {
            let target = req
                .request_line()
                .split(' ')
                .nth(1)
                .unwrap_or("/")
                .to_owned();
            let path = target.split('?').next().unwrap_or("/").to_owned();
            let n = {
                let mut c = c.lock().unwrap();
                let n = c.entry(path.clone()).or_insert(0);
                *n += 1;
                *n
            };
            sn.lock().unwrap().push(req.clone());
            let body = format!("{path} #{n}");
            let (status, extra) = match path.as_str() {
                "/fresh" | "/auth" | "/cold" => {
                    ("200 OK", "Cache-Control: max-age=60\r\n".to_owned())
                }
                "/no-store" => ("200 OK", "Cache-Control: no-store\r\n".to_owned()),
                "/private" => (
                    "200 OK",
                    "Cache-Control: private, max-age=60\r\n".to_owned(),
                ),
                "/vary" => (
                    "200 OK",
                    "Cache-Control: max-age=60\r\nVary: Accept-Language\r\n".to_owned(),
                ),
                "/revalidate" => {
                    if req.header("if-none-match") == vec!["\"v1\""] {
                        (
                            "304 Not Modified",
                            "ETag: \"v1\"\r\nCache-Control: no-cache\r\n".to_owned(),
                        )
                    } else {
                        (
                            "200 OK",
                            "ETag: \"v1\"\r\nCache-Control: no-cache\r\n".to_owned(),
                        )
                    }
                }
                "/slow" => {
                    std::thread::sleep(Duration::from_millis(300));
                    ("200 OK", "Cache-Control: max-age=60\r\n".to_owned())
                }
                p if p.starts_with("/big") => {
                    ("200 OK", "Cache-Control: max-age=60\r\n".to_owned())
                }
                _ => ("200 OK", String::new()),
            };
            let body = if path.starts_with("/big") {
                format!("{body}{}", "x".repeat(10_000))
            } else {
                body
            };
            let resp = if status.starts_with("304") {
                format!("HTTP/1.1 {status}\r\n{extra}\r\n")
            } else {
                format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            };
            if s.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    });
    (addr, counts, seen)
}

fn start(backend: SocketAddr, cache: &str) -> Gatehouse {
    Gatehouse::start(&http_config(
        "",
        "",
        backend,
        &format!("filters = [\"cache\"]\n[[filters]]\nname = \"cache\"\nkind = \"cache\"\n{cache}"),
    ))
}

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (String, String) {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: site.test\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let (head, body) = raw_exchange(addr, req.as_bytes());
    (head, String::from_utf8(body).unwrap())
}

fn count(c: &Counts, path: &str) -> u32 {
    c.lock().unwrap().get(path).copied().unwrap_or(0)
}

#[test]
fn hits_misses_and_what_is_never_stored() {
    let (backend, counts, _) = backend();
    let gh = start(backend, "");
    let web = gh.addr("web");
    let (head, body) = get(web, "/fresh", &[]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "/fresh #1");
    assert_eq!(
        head_field(&head, "cache-status"),
        Some("gatehouse; fwd=miss; stored")
    );
    for _ in 0..3 {
        let (head, body) = get(web, "/fresh", &[]);
        assert_eq!(body, "/fresh #1", "{head}");
        assert!(
            head_field(&head, "cache-status")
                .unwrap()
                .starts_with("gatehouse; hit; ttl="),
            "{head}"
        );
        assert!(head_field(&head, "age").is_some(), "{head}");
    }
    assert_eq!(count(&counts, "/fresh"), 1);
    // HEAD from the stored GET.
    let (head, _) = raw_exchange(
        web,
        b"HEAD /fresh HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(count(&counts, "/fresh"), 1);
    // A HEAD first stores nothing (its response has no body): the GET
    // after it gets the body.
    let (head, _) = raw_exchange(
        web,
        b"HEAD /cold HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, body) = get(web, "/cold", &[]);
    assert_eq!(body, "/cold #2", "{head}");
    assert_eq!(get(web, "/cold", &[]).1, "/cold #2");
    // Another host is another object.
    let (_, body) = raw_exchange(
        web,
        b"GET /fresh HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(body, b"/fresh #2");

    for path in ["/no-store", "/private"] {
        get(web, path, &[]);
        let (head, body) = get(web, path, &[]);
        assert_eq!(body, format!("{path} #2"), "{head}");
        assert_eq!(
            head_field(&head, "cache-status"),
            Some("gatehouse; fwd=miss")
        );
    }
    // A response to a request with credentials is not shared.
    get(web, "/auth", &[("Authorization", "Bearer a")]);
    let (_, body) = get(web, "/auth", &[("Authorization", "Bearer b")]);
    assert_eq!(body, "/auth #2");
    // An unsafe method invalidates its target.
    let (head, _) = raw_exchange(web, b"POST /fresh HTTP/1.1\r\nHost: site.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(
        head_field(&head, "cache-status"),
        Some("gatehouse; fwd=method")
    );
    let (_, body) = get(web, "/fresh", &[]);
    assert_eq!(body, "/fresh #4");
}

#[test]
fn stale_objects_are_revalidated_and_variants_kept_apart() {
    let (backend, counts, seen) = backend();
    let gh = start(backend, "");
    let web = gh.addr("web");
    let (_, body) = get(web, "/revalidate", &[]);
    assert_eq!(body, "/revalidate #1");
    let (head, body) = get(web, "/revalidate", &[]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "/revalidate #1", "the stored body after a 304");
    assert_eq!(
        head_field(&head, "cache-status"),
        Some("gatehouse; fwd=stale; fwd-status=304")
    );
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.header("if-none-match"), vec!["\"v1\""]);
    assert_eq!(count(&counts, "/revalidate"), 2);

    let (_, en) = get(web, "/vary", &[("Accept-Language", "en")]);
    let (head, again) = get(web, "/vary", &[("Accept-Language", "en")]);
    assert_eq!(en, again, "{head}");
    let (_, fr) = get(web, "/vary", &[("Accept-Language", "fr")]);
    assert_ne!(fr, en);
    assert_eq!(count(&counts, "/vary"), 2);
}

#[test]
fn the_byte_cap_evicts_the_least_recently_used() {
    let (backend, counts, _) = backend();
    // Room for about four 10 KB objects.
    let gh = start(
        backend,
        "max_bytes = \"45KiB\"\nmax_object_bytes = \"16KiB\"\n",
    );
    let web = gh.addr("web");
    for i in 0..4 {
        get(web, &format!("/big{i}"), &[]);
    }
    // /big0 used again: /big1 is now the least recently used.
    assert!(
        head_field(&get(web, "/big0", &[]).0, "cache-status")
            .unwrap()
            .contains("hit")
    );
    get(web, "/big4", &[]);
    assert!(
        head_field(&get(web, "/big0", &[]).0, "cache-status")
            .unwrap()
            .contains("hit")
    );
    let (head, _) = get(web, "/big1", &[]);
    assert_eq!(
        head_field(&head, "cache-status"),
        Some("gatehouse; fwd=miss; stored")
    );
    assert_eq!(count(&counts, "/big1"), 2);
    assert_eq!(count(&counts, "/big0"), 1);
}

#[test]
fn a_hundred_concurrent_requests_for_a_cold_object_make_one_upstream_request() {
    let (backend, counts, _) = backend();
    let gh = start(backend, "");
    let web = gh.addr("web");
    let threads: Vec<_> = (0..100)
        .map(|_| std::thread::spawn(move || get(web, "/slow", &[])))
        .collect();
    let answers: Vec<(String, String)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (head, body) in &answers {
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "/slow #1");
    }
    assert_eq!(count(&counts, "/slow"), 1);
    let collapsed = answers
        .iter()
        .filter(|(h, _)| head_field(h, "cache-status") == Some("gatehouse; hit; collapsed"))
        .count();
    assert!(collapsed > 50, "{collapsed} of 100 collapsed");
}
