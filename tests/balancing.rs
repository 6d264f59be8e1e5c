//! Balancing against the real binary: each algorithm over 10,000 requests
//! shares by weight within 5 %; consistent hashing keeps a key on its
//! endpoint and moves about 1/N of the keys when an endpoint is added
//! through the endpoint API; peak-EWMA turns away from a slow endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

/// A keep-alive backend answering with its name, counting requests.
fn named(name: &'static str, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let addr = thread_backend("127.0.0.1:0", move |mut s| {
        while read_request(&mut s).is_some() {
            c.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(delay);
            if s.write_all(&ok_response(name)).is_err() {
                break;
            }
        }
    });
    (addr, count)
}

/// Sends `n` requests over one keep-alive connection, `header` on each
/// (with `{i}` replaced by the request's number): the body of each answer.
fn requests(addr: SocketAddr, n: usize, header: &str) -> Vec<String> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (0..n)
        .map(|i| {
            let extra = header.replace("{i}", &i.to_string());
            // (One write: a request in pieces would wait on delayed ACKs.)
            s.write_all(format!("GET / HTTP/1.1\r\nHost: a\r\n{extra}\r\n").as_bytes())
                .unwrap();
            let (head, body) = read_response(&mut s);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            String::from_utf8(body).unwrap()
        })
        .collect()
}

fn within_5_percent(counts: &[usize], weights: &[usize], what: &str) {
    let n: usize = counts.iter().sum();
    let total: usize = weights.iter().sum();
    for (c, w) in counts.iter().zip(weights) {
        let want = (n * w) as f64 / total as f64;
        assert!(
            (*c as f64 - want).abs() <= want * 0.05,
            "{what}: {counts:?} for weights {weights:?}"
        );
    }
}

#[test]
fn each_algorithm_shares_ten_thousand_requests_by_weight() {
    let (a, ca) = named("a", Duration::ZERO);
    let (b, cb) = named("b", Duration::ZERO);
    let (c, cc) = named("c", Duration::ZERO);
    let endpoints = format!(
        "endpoints = [{{ address = \"{a}\", weight = 5 }}, {{ address = \"{b}\", weight = 3 }}, {{ address = \"{c}\", weight = 2 }}]"
    );
    // (Least request and bounded-load hashing share by weight while
    // requests do not overlap, as here with one client; under load they
    // follow the requests in flight.)
    for (balance, header, clients) in [
        ("balance = \"round_robin\"", "", 4),
        ("balance = \"least_request\"", "", 1),
        (
            "balance = \"hash\"\nhash_key = \"header:x-user\"",
            "x-user: user-{i}\r\n",
            1,
        ),
    ] {
        let gh = Gatehouse::start(&cluster_config(&format!("{endpoints}\n{balance}")));
        let before = [&ca, &cb, &cc].map(|c| c.load(Ordering::Relaxed));
        // 10,000 requests from the clients at once.
        let addr = gh.addr("web");
        let header = header.to_string();
        let clients: Vec<_> = (0..clients)
            .map(|k| {
                let header = header.replace("{i}", &format!("{k}-{{i}}"));
                std::thread::spawn(move || requests(addr, 10_000 / clients, &header))
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        let counts: Vec<usize> = [&ca, &cb, &cc]
            .iter()
            .zip(before)
            .map(|(c, b)| c.load(Ordering::Relaxed) - b)
            .collect();
        assert_eq!(counts.iter().sum::<usize>(), 10_000);
        within_5_percent(&counts, &[5, 3, 2], balance);
    }
}

#[test]
fn a_key_stays_on_its_endpoint_and_an_added_endpoint_takes_about_one_in_n() {
    let backends: Vec<_> = ["a", "b", "c", "d", "e"]
        .into_iter()
        .map(|n| named(n, Duration::ZERO).0)
        .collect();
    let endpoints: Vec<String> = backends[..4]
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    let gh = Gatehouse::start(&cluster_config(&format!(
        "endpoints = [{}]\nbalance = \"hash\"\nhash_key = \"cookie:session\"",
        endpoints.join(", ")
    )));
    let addr = gh.addr("web");
    let keys = "cookie: theme=dark; session=s{i}\r\n";
    let before = requests(addr, 10_000, keys);
    assert_eq!(before, requests(addr, 10_000, keys), "every key stays put");
    assert!(!before.contains(&"e".to_string()));

    let (status, _) = gh.admin_call(
        "POST",
        "/clusters/pool/endpoints",
        &format!("{{\"address\": \"{}\"}}", backends[4]),
    );
    assert_eq!(status, 200);
    let after = requests(addr, 10_000, keys);
    let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
    let to_new = after.iter().filter(|e| *e == "e").count();
    // 1/5 of the keys belong to the new endpoint; a few more move.
    assert!(
        (1600..=2600).contains(&to_new),
        "{to_new} keys on the new endpoint"
    );
    assert!(
        moved <= to_new + 500,
        "{moved} keys moved, {to_new} to the new endpoint"
    );
}

#[test]
fn peak_ewma_turns_away_from_a_slow_endpoint() {
    let (fast, cf) = named("fast", Duration::ZERO);
    // (Far slower than anything a loaded machine makes of the fast one: a
    // peak on it counts at once and fades over seconds.)
    let (slow, cs) = named("slow", Duration::from_millis(100));
    let gh = Gatehouse::start(&cluster_config(&format!(
        "endpoints = [{{ address = \"{fast}\" }}, {{ address = \"{slow}\" }}]\nbalance = \"peak_ewma\""
    )));
    let addr = gh.addr("web");
    let clients: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || requests(addr, 100, "")))
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let (f, s) = (cf.load(Ordering::Relaxed), cs.load(Ordering::Relaxed));
    assert_eq!(f + s, 400);
    // Round robin would send it 200.
    assert!(s < 100, "the slow endpoint took {s} of 400");
}

#[test]
fn a_sticky_cookie_keeps_a_client_on_its_endpoint_until_it_leaves() {
    let backends: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|n| named(n, Duration::ZERO).0)
        .collect();
    let endpoints: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    let gh = Gatehouse::start(&cluster_config(&format!(
        "endpoints = [{}]\nsticky_cookie = \"gh_sticky\"",
        endpoints.join(", ")
    )));
    let addr = gh.addr("web");
    let exchange = |cookie: &str| {
        let req = format!("GET / HTTP/1.1\r\nHost: a\r\n{cookie}Connection: close\r\n\r\n");
        let (head, body) = raw_exchange(addr, req.as_bytes());
        let set = head
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: gh_sticky="))
            .map(|v| v.split(';').next().unwrap().to_string());
        (String::from_utf8(body).unwrap(), set)
    };
    let (first, set) = exchange("");
    let id = set.expect("a cookie names the endpoint");
    assert!(!id.contains("127.0.0.1"), "no address in the cookie");
    for _ in 0..20 {
        let (body, set) = exchange(&format!("Cookie: theme=x; gh_sticky={id}\r\n"));
        assert_eq!(body, first, "a sticky client stays");
        assert_eq!(set, None, "and is not told again");
    }
    // Its endpoint leaves: it goes elsewhere and learns its new endpoint.
    let gone = backends[["a", "b", "c"].iter().position(|n| *n == first).unwrap()];
    let (status, _) = gh.admin_call(
        "DELETE",
        &format!("/clusters/pool/endpoints/{gone}?drain=0s"),
        "",
    );
    assert_eq!(status, 200);
    let (body, set) = exchange(&format!("Cookie: gh_sticky={id}\r\n"));
    assert_ne!(body, first);
    assert!(set.is_some_and(|s| s != id));
}

#[test]
fn a_split_shares_a_route_between_clusters_by_weight() {
    let (stable, cs) = named("stable", Duration::ZERO);
    let (canary, cc) = named("canary", Duration::ZERO);
    // The route splits between the cluster "pool" (stable) and "canary".
    let config = cluster_config(&format!(
        "endpoints = [{{ address = \"{stable}\" }}]\n\n[[clusters]]\nname = \"canary\"\nendpoints = [{{ address = \"{canary}\" }}]"
    ))
    .replace(
        "action.cluster = \"pool\"",
        "action.split = [{ cluster = \"pool\", weight = 9 }, { cluster = \"canary\", weight = 1 }]",
    );
    let gh = Gatehouse::start(&config);
    requests(gh.addr("web"), 1000, "");
    assert_eq!(cs.load(Ordering::Relaxed), 900);
    assert_eq!(cc.load(Ordering::Relaxed), 100);
    let all = gh.get("/clusters");
    assert!(all.contains("\"pool\"") && all.contains("\"canary\""));
}
