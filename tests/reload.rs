//! Live configuration against the real binary: reloads (through the admin
//! API and SIGHUP) that change some routes and listeners leave every
//! connection of the others alone, keep their upstream pools, refuse an
//! invalid candidate as a whole, and drain what they remove.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

const HEAD: &str = "admin.bind = \"127.0.0.1:0\"\nworkers = 2\n";

/// A route that matches `/x{i}` on "web": the part of the config each
/// reload changes. Placed first, it moves every other route's position.
fn churn(i: usize) -> String {
    format!(
        "[[routes]]\nname = \"extra{i}\"\nmatch.listener = \"web\"\nmatch.path_prefix = \"/x{i}\"\naction.forward = [\"127.0.0.1:9\"]\n\n"
    )
}

fn read_head(s: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// A backend that answers an upgrade with 101 and then echoes.
fn upgrade_echo_backend() -> SocketAddr {
    thread_backend("127.0.0.1:0", |mut s| {
        read_request(&mut s).unwrap();
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )
        .unwrap();
        echo(s);
    })
}

/// A backend whose one response has a body of `chunks` × `chunk` bytes,
/// written one chunk each time the test sends on the returned channel.
fn paced_backend(chunks: usize, chunk: usize) -> (SocketAddr, mpsc::Sender<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        read_request(&mut s).unwrap();
        let body = pattern(chunks * chunk, 7);
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        for piece in body.chunks(chunk) {
            rx.recv().unwrap();
            s.write_all(piece).unwrap();
        }
    });
    (addr, tx)
}

/// Acceptance 1: a WebSocket, a 64 MiB L4 transfer and a slow download,
/// all on routes that stay, go on byte-exact through ten reloads that add,
/// remove and move other routes; each reload happens mid-transfer.
#[test]
fn live_connections_on_kept_routes_survive_ten_reloads() {
    const STEPS: usize = 10;
    const L4_STEP: usize = 64 * 1024 * 1024 / STEPS;
    const DOWN_STEP: usize = 256 * 1024;
    let echo = echo_backend();
    let ws = upgrade_echo_backend();
    let (slow, slow_step) = paced_backend(STEPS + 1, DOWN_STEP);
    let config = |i: usize| {
        format!(
            "{HEAD}\n{}[[listeners]]\nname = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n\
             [[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\n\
             [[routes]]\nname = \"pipe\"\nmatch.listener = \"tcp\"\naction.forward = [\"{echo}\"]\n\n\
             [[routes]]\nname = \"ws\"\nmatch.listener = \"web\"\nmatch.path_prefix = \"/ws\"\naction.forward = [\"{ws}\"]\npolicy.allow_upgrade = true\n\n\
             [[routes]]\nname = \"slow\"\nmatch.listener = \"web\"\nmatch.path_prefix = \"/slow\"\naction.forward = [\"{slow}\"]\n",
            if i == 0 { String::new() } else { churn(i) }
        )
    };
    let gh = Gatehouse::start(&config(0));

    // The 64 MiB transfer: written a tenth after each reload, echoed back.
    let data = Arc::new(pattern(STEPS * L4_STEP, 3));
    let mut l4 = TcpStream::connect(gh.addr("tcp")).unwrap();
    // (The clone below shares the socket, and this deadline.)
    l4.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut l4_reader = l4.try_clone().unwrap();
    let (l4_step, l4_steps) = mpsc::channel::<()>();
    let sent = data.clone();
    let writer = thread::spawn(move || {
        for piece in sent.chunks(L4_STEP) {
            l4_steps.recv().unwrap();
            l4.write_all(piece).unwrap();
        }
        l4.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let reader = thread::spawn(move || read_to_end(&mut l4_reader));

    // The WebSocket.
    let mut sock = TcpStream::connect(gh.addr("web")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    sock.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .unwrap();
    assert!(read_head(&mut sock).starts_with("HTTP/1.1 101"));

    // The slow download: its first chunk before any reload.
    let mut down = TcpStream::connect(gh.addr("web")).unwrap();
    down.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    down.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    slow_step.send(()).unwrap();
    assert!(read_head(&mut down).starts_with("HTTP/1.1 200"));
    let mut got_down = Vec::new();
    let mut piece = vec![0u8; DOWN_STEP];
    down.read_exact(&mut piece).unwrap();
    got_down.extend_from_slice(&piece);

    for i in 1..=STEPS {
        let (status, answer) = gh.reload(&config(i));
        assert_eq!(status, 200, "reload {i}: {answer}");
        let applied = &answer["applied"];
        assert_eq!(applied["generation"], (i + 1) as u64);
        assert_eq!(
            applied["routes"]["added"],
            serde_json::json!([format!("extra{i}")])
        );
        if i > 1 {
            assert_eq!(
                applied["routes"]["removed"],
                serde_json::json!([format!("extra{}", i - 1)])
            );
        }
        assert_eq!(applied["routes"]["changed"], serde_json::json!([]));
        l4_step.send(()).unwrap();
        slow_step.send(()).unwrap();
        let msg = format!("message {i}");
        sock.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        sock.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
        down.read_exact(&mut piece).unwrap();
        got_down.extend_from_slice(&piece);
    }
    writer.join().unwrap();
    let (echoed, eof) = reader.join().unwrap();
    assert!(eof, "the L4 connection was reset");
    assert!(
        echoed == *data,
        "the L4 transfer differs ({} bytes back)",
        echoed.len()
    );
    assert_eq!(got_down, pattern((STEPS + 1) * DOWN_STEP, 7));
    // The WebSocket still works after the last reload, and nothing ended
    // because of a reload.
    sock.write_all(b"last").unwrap();
    let mut back = [0u8; 4];
    sock.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"last");
    assert_eq!(
        gh.metric(
            "gatehouse_connections_closed_total",
            &[("reason", "route_removed")]
        ),
        0
    );
    assert_eq!(
        gh.metric("gatehouse_config_generation", &[]),
        (STEPS + 1) as u64
    );
    assert_eq!(
        gh.metric("gatehouse_config_reloads_total", &[("result", "applied")]),
        STEPS as u64
    );
}

/// A keep-alive HTTP/1.1 backend that counts the connections it accepts.
fn counting_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let addr = thread_backend("127.0.0.1:0", move |mut s| {
        count.fetch_add(1, Ordering::SeqCst);
        while read_request(&mut s).is_some() {
            if s.write_all(&ok_response("ok")).is_err() {
                break;
            }
        }
    });
    (addr, accepted)
}

/// Acceptance 2: load on a route that stays, across 20 reloads (one every
/// 100 ms): no request fails, no connection is refused, and the upstream
/// sees no new connection (the route's pool is kept).
#[test]
fn load_runs_across_twenty_reloads_without_a_failure_or_a_new_upstream_connection() {
    let (backend, accepted) = counting_backend();
    let config = |i: usize| {
        format!(
            "{HEAD}\n{}[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\n\
             [[routes]]\nname = \"app\"\nmatch.listener = \"web\"\naction.forward = [\"{backend}\"]\n",
            churn(i)
        )
    };
    let gh = Gatehouse::start(&config(0));
    let web = gh.addr("web");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    // Two clients: one keep-alive connection, and one new connection per
    // request (so a refused connect would show).
    let clients: Vec<_> = [true, false]
        .into_iter()
        .map(|keep_alive| {
            let (stop, ok) = (stop.clone(), ok.clone());
            thread::spawn(move || -> Result<(), String> {
                let mut conn: Option<TcpStream> = None;
                while !stop.load(Ordering::SeqCst) {
                    let mut s = match conn.take() {
                        Some(s) => s,
                        None => {
                            let s = TcpStream::connect(web).map_err(|e| format!("connect: {e}"))?;
                            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                            s
                        }
                    };
                    let req: &[u8] = if keep_alive {
                        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
                    } else {
                        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                    };
                    s.write_all(req).map_err(|e| format!("write: {e}"))?;
                    let (head, body) = read_response(&mut s);
                    if !head.starts_with("HTTP/1.1 200") || body != b"ok" {
                        return Err(format!("response: {head:?} {body:?}"));
                    }
                    ok.fetch_add(1, Ordering::SeqCst);
                    if keep_alive {
                        conn = Some(s);
                    }
                }
                Ok(())
            })
        })
        .collect();
    // Warmed up: both clients running (one that failed has ended).
    let warm_by = Instant::now() + Duration::from_secs(10);
    while ok.load(Ordering::SeqCst) < 200 {
        assert!(
            Instant::now() < warm_by && clients.iter().all(|c| !c.is_finished()),
            "the clients did not get going"
        );
        thread::yield_now();
    }
    let before = ok.load(Ordering::SeqCst);
    for i in 1..=20 {
        let start = Instant::now();
        let (status, answer) = gh.reload(&config(i));
        assert_eq!(status, 200, "reload {i}: {answer}");
        assert_eq!(
            answer["applied"]["routes"]["changed"],
            serde_json::json!([])
        );
        thread::sleep(Duration::from_millis(100).saturating_sub(start.elapsed()));
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap().unwrap();
    }
    let during = ok.load(Ordering::SeqCst) - before;
    assert!(during > 100, "only {during} requests during the reloads");
    // At most one upstream connection per client ever: a reload that
    // dropped the route's pool would have made about one per reload.
    let upstream = accepted.load(Ordering::SeqCst);
    assert!(
        upstream <= 2,
        "{upstream} upstream connections for two clients over 20 reloads"
    );
    assert_eq!(gh.metric("gatehouse_config_generation", &[]), 21);
}

fn two_listeners(top: &str, web_backend: SocketAddr, echo: SocketAddr, l4: &str) -> String {
    format!(
        "{HEAD}{top}\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\n\
         [[listeners]]\nname = \"{l4}\"\nbind = \"127.0.0.1:0\"\n\n\
         [[routes]]\nname = \"app\"\nmatch.listener = \"web\"\naction.forward = [\"{web_backend}\"]\n\n\
         [[routes]]\nname = \"{l4}\"\nmatch.listener = \"{l4}\"\naction.forward = [\"{echo}\"]\n"
    )
}

fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// Acceptance 3: a reload that adds a route and a listener and removes
/// another: the new ones serve at once, the removed listener refuses, and
/// its live connection ends at the drain deadline with `route_removed`.
#[test]
fn a_removed_listener_refuses_and_its_connections_end_at_the_drain_deadline() {
    let (web_backend, _) = raw_http_backend(|_| ok_response("app"));
    let echo = echo_backend();
    let gh = Gatehouse::start(&two_listeners("", web_backend, echo, "old"));
    let old = gh.addr("old");
    let mut live = TcpStream::connect(old).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo_once(&mut live, b"before");

    let (status, answer) = gh.reload(&two_listeners(
        "timeouts.route_drain = \"1s\"\n",
        web_backend,
        echo,
        "new",
    ));
    assert_eq!(status, 200, "{answer}");
    let applied = &answer["applied"];
    assert_eq!(applied["listeners"]["added"], serde_json::json!(["new"]));
    assert_eq!(applied["listeners"]["removed"], serde_json::json!(["old"]));
    assert_eq!(applied["routes"]["added"], serde_json::json!(["new"]));
    assert_eq!(applied["routes"]["removed"], serde_json::json!(["old"]));
    let reloaded = Instant::now();

    // The new listener and route serve at once; the kept one still does.
    let new = gh.wait_listening("new");
    let mut fresh = TcpStream::connect(new).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo_once(&mut fresh, b"new route");
    let (head, body) = raw_exchange(gh.addr("web"), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200") && body == b"app", "{head}");
    // The removed listener is closed by the time the answer came.
    let refused = TcpStream::connect(old).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    // The live connection goes on during the drain, then ends.
    echo_once(&mut live, b"during the drain");
    wait_closed(&mut live, Duration::from_secs(10));
    let lasted = reloaded.elapsed();
    assert!(
        lasted >= Duration::from_millis(900),
        "ended {lasted:?} after the reload, before the 1s drain"
    );
    gh.wait_closed_count("route_removed", 1);
    let conns = gh.connections();
    let live_routes: Vec<_> = conns["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["route"].clone())
        .collect();
    assert_eq!(live_routes, vec![serde_json::json!("new")], "{conns}");
    echo_once(&mut fresh, b"still here");
}

/// A route removed and brought back before its drain is over keeps its
/// connections.
#[test]
fn a_route_brought_back_within_the_drain_keeps_its_connections() {
    let (web_backend, _) = raw_http_backend(|_| ok_response("app"));
    let echo = echo_backend();
    let top = "timeouts.route_drain = \"1s\"\n";
    let with = two_listeners(top, web_backend, echo, "pipe");
    let gh = Gatehouse::start(&with);
    let mut live = TcpStream::connect(gh.addr("pipe")).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo_once(&mut live, b"one");
    let without = format!(
        "{HEAD}{top}\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\n\
         [[routes]]\nname = \"app\"\nmatch.listener = \"web\"\naction.forward = [\"{web_backend}\"]\n"
    );
    assert_eq!(gh.reload(&without).0, 200);
    assert_eq!(gh.reload(&with).0, 200);
    // Past the first reload's drain deadline.
    gh.wait_log("back before its drain", Duration::from_secs(10));
    echo_once(&mut live, b"two");
    assert_eq!(gh.closed("route_removed"), 0);
}

/// The line `n` lines after the end of `text` (what a test appends).
fn line_of(text: &str, n: usize) -> usize {
    text.lines().count() + n
}

/// Acceptance 4: invalid candidates are refused with every error as
/// file:line:field, nothing of them applies, and each refusal is counted.
#[test]
fn an_invalid_candidate_is_refused_whole_and_the_running_config_stays() {
    let (web_backend, _) = raw_http_backend(|_| ok_response("app"));
    let echo = echo_backend();
    let good = two_listeners("", web_backend, echo, "pipe");
    let gh = Gatehouse::start(&good);
    let mut live = TcpStream::connect(gh.addr("pipe")).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let file = gh.config_path().display().to_string();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let extra_listener = |name: &str, bind: &str| {
        format!(
            "\n[[listeners]]\nname = \"{name}\"\nbind = \"{bind}\"\n\n[[routes]]\nname = \"{name}\"\nmatch.listener = \"{name}\"\naction.forward = [\"{echo}\"]\n"
        )
    };
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "syntax error",
            format!("{good}[[routes]\nname = \"broken\"\n"),
            vec![format!("{file}:")],
        ),
        (
            "unknown field and a missing listener, both",
            format!(
                "{good}\n[[routes]]\nname = \"typo\"\nmatch.listener = \"nowhere\"\naction.foward = [\"{echo}\"]\n"
            ),
            vec![format!(
                "{file}:{}: routes[2].action.foward: unknown key",
                line_of(&good, 5)
            )],
        ),
        (
            "a listener that does not exist",
            format!(
                "{good}\n[[routes]]\nname = \"lost\"\nmatch.listener = \"nowhere\"\naction.forward = [\"{echo}\"]\n"
            ),
            vec![format!(
                "{file}:{}: routes[2].match.listener",
                line_of(&good, 4)
            )],
        ),
        (
            "a cluster that does not exist",
            format!(
                "{good}\n[[routes]]\nname = \"lost\"\nmatch.listener = \"web\"\naction.cluster = \"nowhere\"\n"
            ),
            vec![format!(
                "{file}:{}: routes[2].action.cluster: no cluster is named \"nowhere\"",
                line_of(&good, 5)
            )],
        ),
        (
            "duplicate listener address",
            format!(
                "{good}{}{}",
                extra_listener("a", &free.to_string()),
                extra_listener("b", &free.to_string())
            ),
            vec![format!("{file}:")],
        ),
        (
            "a port that cannot be bound",
            format!(
                "{good}{}{}",
                extra_listener("opens", "127.0.0.1:0"),
                extra_listener("taken", &taken_addr.to_string())
            ),
            vec![format!("listener \"taken\": cannot bind {taken_addr}")],
        ),
    ];
    for (n, (name, text, wants)) in cases.iter().enumerate() {
        let (status, answer) = gh.reload(text);
        assert_eq!(status, 422, "{name}: {answer}");
        let lines: Vec<&str> = answer["refused"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        for want in wants {
            assert!(
                lines.iter().any(|l| l.starts_with(want.as_str())),
                "{name}: no line starting {want:?} in {lines:#?}"
            );
        }
        assert_eq!(
            gh.metric("gatehouse_config_reloads_total", &[("result", "refused")]),
            n as u64 + 1
        );
        assert_eq!(gh.metric("gatehouse_config_generation", &[]), 1, "{name}");
        // The running config still serves, connections and all.
        echo_once(&mut live, name.as_bytes());
    }
    // Nothing of the refused candidate opened.
    assert!(gh.listening("opens").is_none(), "{}", gh.log_text());
    let config: serde_json::Value = serde_json::from_str(&gh.get("/config")).unwrap();
    assert_eq!(config["generation"], 1);
    assert!(!config["config"].as_str().unwrap().contains("\"opens\""));
    drop(taken);
}

/// SIGHUP, what `systemctl reload` sends, reloads the file: the process
/// and its connections stay.
#[test]
fn sighup_reloads_the_file_and_cuts_nothing() {
    let (web_backend, _) = raw_http_backend(|_| ok_response("app"));
    let echo = echo_backend();
    let gh = Gatehouse::start(&two_listeners("", web_backend, echo, "pipe"));
    let mut live = TcpStream::connect(gh.addr("pipe")).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo_once(&mut live, b"before");
    let (added, _) = raw_http_backend(|_| ok_response("added"));
    let mut next = two_listeners("", web_backend, echo, "pipe");
    next.push_str(&format!(
        "\n[[routes]]\nname = \"added\"\nmatch.listener = \"web\"\nmatch.path_prefix = \"/added\"\naction.forward = [\"{added}\"]\n"
    ));
    std::fs::write(gh.config_path(), next).unwrap();
    gh.signal("HUP");
    gh.wait_log("config reloaded", Duration::from_secs(10));
    assert_eq!(gh.metric("gatehouse_config_generation", &[]), 2);
    echo_once(&mut live, b"after");
    let (head, body) = raw_exchange(gh.addr("web"), b"GET /added HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200") && body == b"added",
        "{head}"
    );
}

/// The config file is watched: a change (written in place, or renamed
/// onto it as editors and deploy tools do) is reloaded once, after it
/// settles; an invalid one is refused once and the running config stays.
#[test]
fn a_change_of_the_file_is_reloaded() {
    let (web_backend, _) = raw_http_backend(|_| ok_response("app"));
    let (added, _) = raw_http_backend(|_| ok_response("added"));
    let echo = echo_backend();
    let base = two_listeners("", web_backend, echo, "pipe");
    let gh = Gatehouse::start(&base);
    gh.wait_log("watching the config file", Duration::from_secs(10));
    let path = gh.config_path();
    let with_added = format!(
        "{base}\n[[routes]]\nname = \"added\"\nmatch.listener = \"web\"\nmatch.path_prefix = \"/added\"\naction.forward = [\"{added}\"]\n"
    );
    // Renamed onto the file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &with_added).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    gh.wait_for("the reload", Duration::from_secs(10), |g| {
        g.metric("gatehouse_config_generation", &[]) == 2
    });
    let (head, body) = raw_exchange(gh.addr("web"), b"GET /added HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200") && body == b"added",
        "{head}"
    );

    // Written in place, invalid: refused, and the running config stays.
    std::fs::write(&path, format!("{with_added}\nbogus = 1\n")).unwrap();
    gh.wait_for("the refusal", Duration::from_secs(10), |g| {
        g.metric("gatehouse_config_reloads_total", &[("result", "refused")]) == 1
    });
    let (head, _) = raw_exchange(gh.addr("web"), b"GET /added HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Fixed: applied; the invalid content was tried once.
    std::fs::write(&path, &base).unwrap();
    gh.wait_for("the second reload", Duration::from_secs(10), |g| {
        g.metric("gatehouse_config_generation", &[]) == 3
    });
    assert_eq!(
        gh.metric("gatehouse_config_reloads_total", &[("result", "refused")]),
        1
    );
    assert_eq!(
        gh.metric("gatehouse_config_reloads_total", &[("result", "applied")]),
        2
    );
}

/// An HTTP keep-alive connection routes each request with the newest
/// config, parked between requests or not: a reload that sends a path
/// elsewhere reaches a connection accepted before it.
#[test]
fn a_keep_alive_connection_routes_its_next_request_with_the_new_config() {
    let (old, _) = raw_http_backend(|_| ok_response("old"));
    let (new, _) = raw_http_backend(|_| ok_response("new"));
    let config = |target: SocketAddr| {
        format!(
            "{HEAD}\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\n\
             [[routes]]\nname = \"app\"\nmatch.listener = \"web\"\naction.forward = [\"{target}\"]\n"
        )
    };
    let gh = Gatehouse::start(&config(old));
    let mut s = TcpStream::connect(gh.addr("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ask = |s: &mut TcpStream| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let (head, body) = read_response(s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        String::from_utf8(body).unwrap()
    };
    assert_eq!(ask(&mut s), "old");
    let (status, answer) = gh.reload(&config(new));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["applied"]["routes"]["changed"],
        serde_json::json!(["app"])
    );
    // Right after the reload, in its task.
    assert_eq!(ask(&mut s), "new");
    // Parked (idle for half a second, out of its task), then asked again.
    gh.wait_for("the connection to park", Duration::from_secs(5), |g| {
        g.metric("gatehouse_http_parked_connections", &[]) == 1
    });
    let (status, _) = gh.reload(&config(old));
    assert_eq!(status, 200);
    assert_eq!(ask(&mut s), "old");
}
