//! Load shedding: over `limits.memory_budget`, new connections are refused
//! at once (reason `overload`, side proxy) while a connection already
//! open keeps being served and the admin listener answers; under the
//! budget again (here: a reload that lifts it), they are taken again. The
//! refusals cost next to no CPU.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn over_the_memory_budget_new_connections_are_refused_and_open_ones_served() {
    let backend = raw_http_backend(|_| ok_response("ok")).0;
    let roomy = http_config("", "", backend, "");
    let gh = Gatehouse::start(&roomy);
    let web = gh.addr("web");
    // A keep-alive connection opened before the budget is lowered.
    let mut open = TcpStream::connect(web).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ask = |s: &mut TcpStream| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let (head, body) = read_response(s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, b"ok");
    };
    ask(&mut open);

    let tight = roomy.replace(
        "workers = 2",
        "workers = 2\nlimits.memory_budget = \"1MiB\"",
    );
    assert_eq!(gh.reload(&tight).0, 200);
    gh.wait_log("over the memory budget", Duration::from_secs(5));

    let before = cpu_ticks(gh.pid());
    for _ in 0..300 {
        let mut s = TcpStream::connect(web).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut buf = [0u8; 64];
        // Closed without an answer.
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    }
    gh.wait_closed_count("overload", 300);
    // (300 refusals: well under a tenth of a second of CPU.)
    let spent = cpu_ticks(gh.pid()) - before;
    assert!(spent < 10, "{spent} ticks for 300 refusals");
    ask(&mut open);
    gh.get("/healthz");
    assert_eq!(
        gh.metric(
            "gatehouse_connections_closed_total",
            &[("reason", "overload"), ("side", "proxy")]
        ),
        300
    );

    assert_eq!(gh.reload(&roomy).0, 200);
    gh.wait_log("under the memory budget again", Duration::from_secs(5));
    let (head, _) = raw_exchange(
        web,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
