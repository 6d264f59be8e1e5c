//! The connection table for operators, against the real binary: filters
//! (route, listener, state, client network, age), closing one connection
//! or every match (`admin_closed`), and draining a route (new connections
//! and requests refused as `route_draining` while those it has go on),
//! then resuming it.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn echo_once(s: &mut TcpStream, byte: u8) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[byte]).unwrap();
    let mut b = [0u8];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b[0], byte);
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn connections_are_filtered_and_closed_one_or_by_filter() {
    let gh = Gatehouse::start(&simple_config("", "", echo_backend(), ""));
    let addr = gh.addr("in");
    let mut a = connect_from("127.0.0.2", addr);
    let mut b = connect_from("127.0.0.3", addr);
    let mut c = connect_from("127.0.0.3", addr);
    for s in [&mut a, &mut b, &mut c] {
        echo_once(s, 7);
    }

    let (status, all) = gh.admin_call("GET", "/v1/connections?route=r&state=established", "");
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["matching"], 3, "{all}");
    let (_, two) = gh.admin_call("GET", "/v1/connections?client=127.0.0.3/32", "");
    assert_eq!(two["matching"], 2, "{two}");
    let (_, one) = gh.admin_call("GET", "/v1/connections?client=127.0.0.2", "");
    assert_eq!(one["matching"], 1, "{one}");
    let (_, none) = gh.admin_call("GET", "/v1/connections?older_than=1h", "");
    assert_eq!(none["matching"], 0, "{none}");
    let (_, old) = gh.admin_call("GET", "/v1/connections?older_than=0s&listener=in", "");
    assert_eq!(old["matching"], 3, "{old}");
    for bad in ["client=nowhere", "older_than=soon", "colour=red"] {
        let (status, e) = gh.admin_call("GET", &format!("/v1/connections?{bad}"), "");
        assert_eq!(status, 400, "{bad}: {e}");
    }
    // (The unversioned path answers the same.)
    assert_eq!(gh.connections()["active"], 3);

    // One, by id: only it ends, as admin_closed.
    let id = ids(&one)[0];
    let (status, v) = gh.admin_call("DELETE", &format!("/v1/connections/{id}"), "");
    assert_eq!(status, 200, "{v}");
    wait_closed(&mut a, Duration::from_secs(5));
    gh.wait_closed_count("admin_closed", 1);
    echo_once(&mut b, 8);
    let (status, _) = gh.admin_call("DELETE", &format!("/v1/connections/{id}"), "");
    assert_eq!(status, 404);
    let (status, _) = gh.admin_call("DELETE", "/v1/connections/x", "");
    assert_eq!(status, 400);

    // Every match; none without a filter.
    let (status, _) = gh.admin_call("POST", "/v1/connections/close", "");
    assert_eq!(status, 400);
    let (status, v) = gh.admin_call("POST", "/v1/connections/close?client=127.0.0.3/32", "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["closed"].as_array().unwrap().len(), 2, "{v}");
    wait_closed(&mut b, Duration::from_secs(5));
    wait_closed(&mut c, Duration::from_secs(5));
    gh.wait_closed_count("admin_closed", 3);
    gh.wait_empty(Duration::from_secs(5));
    assert_eq!(
        gh.metric(
            "gatehouse_connections_closed_total",
            &[("reason", "admin_closed"), ("side", "proxy")]
        ),
        3
    );
    assert_accounted(&gh);
}

#[test]
fn a_drained_l4_route_refuses_new_connections_and_keeps_its_live_ones() {
    let gh = Gatehouse::start(&simple_config("", "", echo_backend(), ""));
    let addr = gh.addr("in");
    let mut live = TcpStream::connect(addr).unwrap();
    echo_once(&mut live, 1);

    let (status, v) = gh.admin_call("POST", "/v1/routes/r/drain", "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["draining"], true);
    assert_eq!(v["live"], 1);
    let (_, routes) = gh.admin_call("GET", "/v1/routes", "");
    assert_eq!(routes["routes"][0]["name"], "r", "{routes}");
    assert_eq!(routes["routes"][0]["draining"], true, "{routes}");

    let mut refused = TcpStream::connect(addr).unwrap();
    wait_closed(&mut refused, Duration::from_secs(5));
    gh.wait_closed_count("route_draining", 1);
    echo_once(&mut live, 2);

    let (status, _) = gh.admin_call("DELETE", "/v1/routes/r/drain", "");
    assert_eq!(status, 200);
    let mut again = TcpStream::connect(addr).unwrap();
    echo_once(&mut again, 3);
    let (status, _) = gh.admin_call("POST", "/v1/routes/nope/drain", "");
    assert_eq!(status, 404);
    drop((live, again, refused));
    gh.wait_empty(Duration::from_secs(5));
    assert_accounted(&gh);
}

#[test]
fn a_drained_http_route_answers_503_route_draining_until_resumed() {
    let (backend, _) = raw_http_backend(|_| ok_response("hi"));
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let addr = gh.addr("web");
    let get = || {
        raw_exchange(
            addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    };
    assert!(get().0.starts_with("HTTP/1.1 200"));
    let (status, _) = gh.admin_call("POST", "/v1/routes/app/drain", "");
    assert_eq!(status, 200);
    let (head, _) = get();
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert_eq!(
        head_field(&head, "gatehouse-error"),
        Some("route_draining"),
        "{head}"
    );
    assert_eq!(
        gh.metric(
            "gatehouse_http_request_end_total",
            &[("reason", "route_draining"), ("side", "proxy")]
        ),
        1
    );
    let (status, _) = gh.admin_call("DELETE", "/v1/routes/app/drain", "");
    assert_eq!(status, 200);
    assert!(get().0.starts_with("HTTP/1.1 200"));
}
