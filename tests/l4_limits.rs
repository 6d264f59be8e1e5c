//! The global, per-route and per-client-address limits reject
//! with their reasons, and the counters say so.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn hold(gh: &Gatehouse, n: usize, src: &str) -> Vec<TcpStream> {
    let before = gh.active() as usize;
    let conns: Vec<TcpStream> = (0..n).map(|_| connect_from(src, gh.addr("in"))).collect();
    gh.wait_for(
        "held connections established",
        Duration::from_secs(3),
        |g| {
            let c = g.connections();
            c["connections"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["state"] == "established")
                .count()
                >= before + n
        },
    );
    conns
}

#[test]
fn global_limit() {
    let gh = Gatehouse::start(&simple_config(
        "limits.max_connections = 2",
        "",
        echo_backend(),
        "",
    ));
    let _held = hold(&gh, 2, "127.0.0.1");
    let mut extra = TcpStream::connect(gh.addr("in")).unwrap();
    let took = wait_closed(&mut extra, Duration::from_secs(2));
    assert!(took < Duration::from_millis(500));
    assert_eq!(gh.closed("limit_global"), 1);
    assert_eq!(gh.active(), 2);
}

#[test]
fn route_limit() {
    let gh = Gatehouse::start(&simple_config(
        "",
        "",
        echo_backend(),
        "policy.max_connections = 1",
    ));
    let _held = hold(&gh, 1, "127.0.0.1");
    let mut extra = TcpStream::connect(gh.addr("in")).unwrap();
    wait_closed(&mut extra, Duration::from_secs(2));
    gh.wait_closed_count("limit_route", 1);
    assert_eq!(
        gh.metric(
            "gatehouse_connections_closed_total",
            &[("route", "r"), ("reason", "limit_route")]
        ),
        1
    );
}

#[test]
fn per_ip_limit() {
    let gh = Gatehouse::start(&simple_config(
        "limits.max_connections_per_ip = 2",
        "",
        echo_backend(),
        "",
    ));
    let held = hold(&gh, 2, "127.0.0.1");
    let mut extra = connect_from("127.0.0.1", gh.addr("in"));
    wait_closed(&mut extra, Duration::from_secs(2));
    gh.wait_closed_count("limit_per_ip", 1);
    // Another client address still gets in, and a freed slot can be reused.
    let _other = hold(&gh, 1, "127.0.0.2");
    drop(held);
    gh.wait_for("slots released", Duration::from_secs(2), |g| {
        g.active() == 1
    });
    let _again = hold(&gh, 2, "127.0.0.1");
    assert_eq!(gh.closed("limit_per_ip"), 1);
    assert_accounted(&gh);
}
