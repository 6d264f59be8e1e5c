//! Clusters that stay healthy, against the real binary: active health
//! checks take a failing endpoint out and bring it back, on fresh
//! connections that leave nothing behind; passive health ejects an
//! endpoint that resets everything while GETs are retried elsewhere and a
//! sent POST is not; the retry budget bounds the attempts when everything
//! fails; the cap on requests in flight answers 503 at once; draining and
//! adding endpoints under load cost no request; and the defaults serve a
//! `forward` list with a dead endpoint without an error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A keep-alive backend answering with its name, counting requests and
/// accepted connections; `GET /healthz` answers 200, or 503 while `sick`.
struct Backend {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    /// Connections that ended.
    closed: Arc<AtomicUsize>,
    sick: Arc<AtomicBool>,
}

fn backend(name: &'static str, delay: Duration) -> Backend {
    let (requests, probes, connections) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let sick = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicUsize::new(0));
    let (r, p, c, k) = (
        requests.clone(),
        probes.clone(),
        connections.clone(),
        sick.clone(),
    );
    let e = closed.clone();
    let addr = thread_backend("127.0.0.1:0", move |mut s| {
        c.fetch_add(1, Ordering::Relaxed);
        while let Some(req) = read_request(&mut s) {
            let resp = if req.request_line().contains("/healthz") {
                p.fetch_add(1, Ordering::Relaxed);
                assert!(req.header("user-agent")[0].starts_with("gatehouse-health/"));
                if k.load(Ordering::Relaxed) {
                    b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy".to_vec()
                } else {
                    ok_response("ok")
                }
            } else {
                r.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(delay);
                ok_response(name)
            };
            if s.write_all(&resp).is_err() {
                break;
            }
        }
        e.fetch_add(1, Ordering::Relaxed);
    });
    Backend {
        addr,
        requests,
        probes,
        connections,
        closed,
        sick,
    }
}

/// A backend that reads each request and resets the connection; counts
/// the requests it saw.
fn resetting_backend(hold: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    let addr = thread_backend("127.0.0.1:0", move |mut s| {
        if read_request(&mut s).is_some() {
            s2.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(hold);
        }
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    });
    (addr, seen)
}

fn get(addr: SocketAddr) -> (String, String) {
    let (head, body) = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    (head, String::from_utf8(body).unwrap())
}

fn clusters(gh: &Gatehouse) -> serde_json::Value {
    serde_json::from_str(&gh.get("/clusters")).unwrap()
}

/// The endpoint `addr` of cluster `name` in `/clusters`.
fn endpoint(gh: &Gatehouse, name: &str, addr: SocketAddr) -> serde_json::Value {
    let all = clusters(gh);
    let cluster = all["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone();
    cluster["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_failing_probe_takes_the_endpoint_out_and_a_passing_one_brings_it_back() {
    let a = backend("a", Duration::ZERO);
    let b = backend("b", Duration::ZERO);
    let gh = Gatehouse::start(&cluster_config(&format!(
        "endpoints = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n\
         health = {{ path = \"/healthz\", interval = \"200ms\", timeout = \"100ms\", healthy_threshold = 2, unhealthy_threshold = 2, body_contains = \"ok\" }}",
        a.addr, b.addr
    )));
    let addr = gh.addr("web");
    gh.wait_for(
        "both endpoints probed healthy",
        Duration::from_secs(5),
        |gh| {
            endpoint(gh, "pool", a.addr)["state"] == "healthy"
                && endpoint(gh, "pool", b.addr)["state"] == "healthy"
        },
    );
    let baseline = gh.fd_count();

    b.sick.store(true, Ordering::Relaxed);
    let since = Instant::now();
    gh.wait_for("b unhealthy", Duration::from_secs(5), |gh| {
        endpoint(gh, "pool", b.addr)["state"] == "unhealthy"
    });
    // interval × threshold, and a probe's round of slack.
    assert!(
        since.elapsed() < Duration::from_millis(1200),
        "{:?}",
        since.elapsed()
    );
    assert_eq!(endpoint(&gh, "pool", b.addr)["last_probe"], "status 503");
    let before = b.requests.load(Ordering::Relaxed);
    for _ in 0..20 {
        assert_eq!(get(addr).1, "a");
    }
    assert_eq!(
        b.requests.load(Ordering::Relaxed),
        before,
        "no traffic to the unhealthy one"
    );

    b.sick.store(false, Ordering::Relaxed);
    gh.wait_for("b healthy again", Duration::from_secs(5), |gh| {
        endpoint(gh, "pool", b.addr)["state"] == "healthy"
    });
    let answers: Vec<String> = (0..20).map(|_| get(addr).1).collect();
    assert!(answers.iter().any(|x| x == "b"), "{answers:?}");
    let history = endpoint(&gh, "pool", b.addr)["history"].to_string();
    assert!(history.contains("unhealthy (status 503)"), "{history}");

    // Probes never use pooled connections: each is a connection of its own.
    assert!(b.connections.load(Ordering::Relaxed) >= b.probes.load(Ordering::Relaxed));
    assert!(
        gh.metric(
            "gatehouse_upstream_health_changes_total",
            &[("to", "unhealthy")]
        ) >= 1
    );
    // Nothing left behind by the probes.
    assert_eq!(gh.close_wait(), 0);
    assert!(
        gh.fd_count() <= baseline + 2,
        "{} fds, {baseline} before",
        gh.fd_count()
    );
}

#[test]
fn an_endpoint_that_resets_everything_is_ejected_while_gets_are_retried_elsewhere() {
    let good = backend("good", Duration::ZERO);
    let (bad, bad_seen) = resetting_backend(Duration::ZERO);
    let gh = Gatehouse::start(&cluster_config(&format!(
        "endpoints = [{{ address = \"{}\" }}, {{ address = \"{bad}\" }}]",
        good.addr
    )));
    let addr = gh.addr("web");
    for _ in 0..50 {
        let (head, body) = get(addr);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "good");
    }
    assert_eq!(endpoint(&gh, "pool", bad)["state"], "ejected");
    // Ejected after three failures in a row: the bad one saw no more.
    assert!(
        bad_seen.load(Ordering::Relaxed) <= 3,
        "{}",
        bad_seen.load(Ordering::Relaxed)
    );
    assert!(gh.metric("gatehouse_upstream_retries_total", &[("cluster", "pool")]) >= 1);
}

#[test]
fn a_post_that_was_sent_is_not_retried() {
    let good = backend("good", Duration::ZERO);
    let (bad, bad_seen) = resetting_backend(Duration::ZERO);
    let gh = Gatehouse::start(&cluster_config(&format!(
        "endpoints = [{{ address = \"{}\" }}, {{ address = \"{bad}\" }}]\noutlier = {{ consecutive_failures = \"off\" }}",
        good.addr
    )));
    let addr = gh.addr("web");
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let (status, _) = http_post(addr, "/", b"payload");
        statuses.push(status);
    }
    let failed = statuses.iter().filter(|&&s| s == 502).count();
    // Round robin: every other POST went to the resetting endpoint, and
    // stayed failed there.
    assert_eq!(failed, 5, "{statuses:?}");
    assert_eq!(bad_seen.load(Ordering::Relaxed), 5);
    assert_eq!(good.requests.load(Ordering::Relaxed), 5);
}

#[test]
fn the_retry_budget_bounds_attempts_when_every_endpoint_fails() {
    let (a, seen_a) = resetting_backend(Duration::from_millis(200));
    let (b, seen_b) = resetting_backend(Duration::from_millis(200));
    let gh = Gatehouse::start(&cluster_config(&format!(
        "endpoints = [{{ address = \"{a}\" }}, {{ address = \"{b}\" }}]\n\
         outlier = {{ consecutive_failures = \"off\" }}\n\
         retries = {{ attempts = 10, budget_percent = 1, min_concurrent = 1, backoff = \"1ms\" }}"
    )));
    let addr = gh.addr("web");
    let clients: Vec<_> = (0..30)
        .map(|_| std::thread::spawn(move || get(addr).0))
        .collect();
    for c in clients {
        let head = c.join().unwrap();
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    }
    let attempts = seen_a.load(Ordering::Relaxed) + seen_b.load(Ordering::Relaxed);
    // Without a budget: 300 attempts. With one retry in flight at a time,
    // 30 first attempts and the few retries that fit.
    assert!((30..=45).contains(&attempts), "{attempts} attempts");
    assert!(
        gh.metric(
            "gatehouse_upstream_retries_over_budget_total",
            &[("cluster", "pool")]
        ) >= 20
    );
}

#[test]
fn beyond_the_cap_on_requests_in_flight_the_answer_is_503_at_once() {
    let slow = backend("slow", Duration::from_millis(1500));
    let gh = Gatehouse::start(&cluster_config(&format!(
        "endpoints = [{{ address = \"{}\" }}]\nmax_requests = 5",
        slow.addr
    )));
    let addr = gh.addr("web");
    let held: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || get(addr).0))
        .collect();
    gh.wait_for(
        "five requests at the backend",
        Duration::from_secs(5),
        |_| slow.requests.load(Ordering::Relaxed) == 5,
    );
    let started = Instant::now();
    let (head, _) = get(addr);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.contains("gatehouse-error: upstream_overloaded"),
        "{head}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    for h in held {
        assert!(h.join().unwrap().starts_with("HTTP/1.1 200"));
    }
    assert_eq!(
        gh.metric(
            "gatehouse_upstream_overloaded_total",
            &[("cluster", "pool")]
        ),
        1
    );
}

/// Keep-alive clients sending GETs until `stop`: the non-200 answers.
fn load(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<usize>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut errors = 0;
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
                    let (head, _) = read_response(&mut s);
                    errors += usize::from(!head.starts_with("HTTP/1.1 200"));
                }
                errors
            })
        })
        .collect()
}

#[test]
fn draining_and_adding_endpoints_under_load_costs_no_request() {
    let a = backend("a", Duration::from_millis(2));
    let b = backend("b", Duration::from_millis(2));
    let c = backend("c", Duration::from_millis(2));
    let gh = Gatehouse::start(&cluster_config(&format!(
        "endpoints = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]",
        a.addr, b.addr
    )));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(gh.addr("web"), 8, stop.clone());
    gh.wait_for("traffic on both", Duration::from_secs(5), |_| {
        a.requests.load(Ordering::Relaxed) > 50 && b.requests.load(Ordering::Relaxed) > 50
    });

    let (status, answer) = gh.admin_call(
        "DELETE",
        &format!("/clusters/pool/endpoints/{}?drain=5s", b.addr),
        "",
    );
    assert_eq!(status, 200, "{answer}");
    // It leaves once its requests in flight end.
    gh.wait_for("b drained and gone", Duration::from_secs(5), |gh| {
        endpoint(gh, "pool", b.addr).is_null()
    });
    let b_after = b.requests.load(Ordering::Relaxed);

    let (status, answer) = gh.admin_call(
        "POST",
        "/clusters/pool/endpoints",
        &format!("{{\"address\": \"{}\", \"weight\": 2}}", c.addr),
    );
    assert_eq!(status, 200, "{answer}");
    let added = Instant::now();
    gh.wait_for("c takes traffic", Duration::from_secs(5), |_| {
        c.requests.load(Ordering::Relaxed) > 0
    });
    assert!(added.elapsed() < Duration::from_secs(1));
    let a_before = a.requests.load(Ordering::Relaxed);
    gh.wait_for("more traffic on a", Duration::from_secs(5), |_| {
        a.requests.load(Ordering::Relaxed) > a_before + 50
    });

    // `/clusters` counts a's upstream connections, open and idle.
    let open = endpoint(&gh, "pool", a.addr)["connections"]["open"]
        .as_u64()
        .unwrap();
    assert!(
        open >= 1 && open as usize <= a.connections.load(Ordering::Relaxed),
        "{open}"
    );
    // None of a's connections was closed by the changes (more were opened
    // for b's share of the load).
    assert_eq!(
        a.closed.load(Ordering::Relaxed),
        0,
        "a's connections stayed"
    );
    stop.store(true, Ordering::Relaxed);
    let errors: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(errors, 0, "a client saw an error");
    assert_eq!(
        b.requests.load(Ordering::Relaxed),
        b_after,
        "no request to b after it left"
    );
}

#[test]
fn a_forward_list_with_a_dead_endpoint_serves_every_get_by_default() {
    let good = backend("good", Duration::ZERO);
    let dead = refused_addr();
    let gh = Gatehouse::start(&http_config("", "", good.addr, "").replace(
        &format!("action.forward = [\"{}\"]", good.addr),
        &format!("action.forward = [\"{}\", \"{}\"]", good.addr, dead.addr),
    ));
    let addr = gh.addr("web");
    for _ in 0..100 {
        let (head, body) = get(addr);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "good");
    }
    assert_eq!(endpoint(&gh, "app", dead.addr)["state"], "ejected");
}

#[test]
fn l4_connections_go_round_a_dead_endpoint_and_hold_their_count_while_open() {
    let echo = echo_backend();
    let dead = refused_addr();
    let gh = Gatehouse::start(&format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 2

[[listeners]]
name = "tcp"
bind = "127.0.0.1:0"

[[routes]]
name = "l4"
match.listener = "tcp"
action.cluster = "pool"

[[clusters]]
name = "pool"
endpoints = [{{ address = "{echo}" }}, {{ address = "{}" }}]
"#,
        dead.addr
    ));
    for i in 0..40 {
        let mut s = TcpStream::connect(gh.addr("tcp")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let msg = format!("hello {i}");
        s.write_all(msg.as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let (got, _) = read_to_end(&mut s);
        assert_eq!(got, msg.as_bytes(), "connection {i}");
    }
    assert_eq!(endpoint(&gh, "pool", dead.addr)["state"], "ejected");
    gh.wait_empty(Duration::from_secs(5));
    let live = endpoint(&gh, "pool", echo);
    assert_eq!(live["in_flight"], 0, "{live}");
}

#[test]
fn probes_over_tls_verify_the_endpoint_and_say_why_one_fails() {
    use common::tls::{Pki, tls_http_backend};
    let pki = Pki::new("ca");
    let (cert, key) = pki.issue("backend", &["backend.internal"]);
    let rogue = Pki::new("rogue");
    let (r_cert, r_key) = rogue.issue("rogue", &["backend.internal"]);
    let (good, _) = tls_http_backend(&cert, &key);
    let (bad, _) = tls_http_backend(&r_cert, &r_key);
    let gh = Gatehouse::start(&cluster_config(&format!(
        "endpoints = [{{ address = \"{good}\" }}, {{ address = \"{bad}\" }}]\n\
         health = {{ path = \"/\", tls = true, ca = \"{}\", server_name = \"backend.internal\", interval = \"200ms\", timeout = \"150ms\", unhealthy_threshold = 2 }}",
        pki.ca_pem.display()
    )));
    gh.wait_for(
        "the rogue endpoint unhealthy",
        Duration::from_secs(5),
        |gh| {
            endpoint(gh, "pool", bad)["state"] == "unhealthy"
                && endpoint(gh, "pool", good)["state"] == "healthy"
        },
    );
    let why = endpoint(&gh, "pool", bad)["last_probe"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.starts_with("TLS: ") && why.contains("issuer"), "{why}");
    assert_eq!(gh.close_wait(), 0);
}

#[test]
fn a_full_endpoint_is_passed_over_and_when_all_are_full_the_answer_is_503() {
    let a = backend("a", Duration::from_millis(1500));
    let b = backend("b", Duration::from_millis(1500));
    let gh = Gatehouse::start(&cluster_config(&format!(
        "endpoints = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\nmax_requests_per_endpoint = 2",
        a.addr, b.addr
    )));
    let addr = gh.addr("web");
    let held: Vec<_> = (0..4)
        .map(|_| {
            let h = std::thread::spawn(move || get(addr).0);
            std::thread::sleep(Duration::from_millis(50));
            h
        })
        .collect();
    gh.wait_for(
        "two requests at each endpoint",
        Duration::from_secs(5),
        |_| a.requests.load(Ordering::Relaxed) == 2 && b.requests.load(Ordering::Relaxed) == 2,
    );
    let started = Instant::now();
    let (head, _) = get(addr);
    assert!(
        head.contains("gatehouse-error: upstream_overloaded"),
        "{head}"
    );
    assert!(started.elapsed() < Duration::from_millis(300));
    for h in held {
        assert!(h.join().unwrap().starts_with("HTTP/1.1 200"));
    }
}

#[test]
fn a_kept_body_goes_again_to_another_endpoint_and_a_body_not_kept_does_not() {
    let (good, seen) = raw_http_backend(|_| ok_response("good"));
    let (bad, bad_seen) = resetting_backend(Duration::ZERO);
    let endpoints = format!(
        "endpoints = [{{ address = \"{bad}\" }}, {{ address = \"{good}\" }}]\noutlier = {{ consecutive_failures = \"off\" }}"
    );
    let payload = pattern(4096, 5);
    let put = |addr: SocketAddr| {
        let mut req = format!(
            "PUT /doc HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            payload.len()
        )
        .into_bytes();
        req.extend_from_slice(&payload);
        raw_exchange(addr, &req)
    };

    // Kept (4 KiB within the limit): every PUT is answered, the one that
    // met the resetting endpoint by the other, with the whole body.
    let gh = Gatehouse::start(&cluster_config(&format!(
        "{endpoints}\nretries = {{ body_limit = \"64KiB\" }}"
    )));
    for _ in 0..4 {
        let (head, body) = put(gh.addr("web"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, b"good");
    }
    assert!(bad_seen.load(Ordering::Relaxed) >= 2);
    assert!(seen.lock().unwrap().iter().all(|r| r.body == payload));
    drop(gh);

    // Not kept (no limit): a PUT whose body went to the resetting
    // endpoint is not sent again.
    let gh = Gatehouse::start(&cluster_config(&endpoints));
    let statuses: Vec<bool> = (0..4)
        .map(|_| put(gh.addr("web")).0.starts_with("HTTP/1.1 502"))
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&failed| failed).count(),
        2,
        "{statuses:?}"
    );
}

/// Thousands of slow requests at once against a capped cluster: those
/// beyond the cap are answered 503 at once, memory and descriptors stay
/// bounded while they are held, and come back to where they were after.
/// (8,000 at once: the client and the proxy share this host's limit of
/// 20,000 descriptors per process.)
#[test]
fn thousands_of_slow_requests_against_the_cap_stay_bounded_and_leave_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CLIENTS: usize = 8000;
    const CAP: u32 = 100;
    let slow = backend("slow", Duration::from_millis(3000));
    let gh = Gatehouse::start(
        &cluster_config(&format!(
            "endpoints = [{{ address = \"{}\" }}]\nmax_requests = {CAP}",
            slow.addr
        ))
        .replace("workers = 2", "workers = 2\nlimits.max_connections = 19000")
        .replace(
            "http.access_log = false",
            "http.access_log = false\nhttp.keepalive_timeout = \"1s\"",
        )
        // (Idle upstream connections age out at once: the baseline comes back.)
        .replace(
            "action.cluster = \"pool\"",
            "action.cluster = \"pool\"\npolicy.pool_idle_timeout = \"1s\"",
        ),
    );
    let addr = gh.addr("web");
    let (fds_before, rss_before) = (gh.fd_count(), gh.rss_kib());
    let rt = test_runtime();
    let (ok, overloaded, peak_rss, peak_fds) = rt.block_on(async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|_| {
                tokio::spawn(async move {
                    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                        .await
                        .ok()?;
                    let mut out = Vec::new();
                    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
                        .await
                        .ok()?
                        .ok()?;
                    Some(String::from_utf8_lossy(&out).to_string())
                })
            })
            .collect();
        // While they are held: the cap's requests wait on the backend.
        let mut peak_rss = 0;
        let mut peak_fds = 0;
        while slow.requests.load(Ordering::Relaxed) < CAP as usize {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..5 {
            peak_rss = peak_rss.max(rss_kib_of(gh.pid()));
            peak_fds = peak_fds.max(gh.fd_count());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (mut ok, mut overloaded) = (0, 0);
        for t in tasks {
            let answer = t.await.unwrap().unwrap_or_default();
            if answer.starts_with("HTTP/1.1 200") {
                ok += 1;
            } else if answer.contains("gatehouse-error: upstream_overloaded") {
                overloaded += 1;
            }
        }
        (ok, overloaded, peak_rss, peak_fds)
    });
    assert_eq!(
        ok + overloaded,
        CLIENTS,
        "every request answered: {ok} ok, {overloaded} overloaded"
    );
    assert!(ok >= CAP as usize && ok <= 2 * CAP as usize, "{ok} served");
    assert_eq!(
        slow.requests.load(Ordering::Relaxed),
        ok,
        "nothing past the cap reached the backend"
    );
    // Held: a few KiB per client at most; descriptors: the clients' and
    // the cap's upstream connections, never an upstream one per client.
    assert!(
        peak_rss < rss_before + 64 * 1024,
        "RSS {rss_before} KiB before, {peak_rss} at the peak"
    );
    assert!(
        peak_fds < fds_before + CLIENTS + CAP as usize + 64,
        "{peak_fds} fds at the peak, {fds_before} before"
    );
    gh.wait_empty(Duration::from_secs(10));
    gh.wait_for(
        "descriptors back at baseline",
        Duration::from_secs(10),
        |gh| gh.fd_count() <= fds_before + 3,
    );
    assert_eq!(gh.close_wait(), 0);
}
