//! The leak audit (`GET /v1/audit`): zero while connections are live and
//! after they end; a socket leaked inside the process (a test-only hook)
//! is reported with its addresses, first as owned by nothing, then, once
//! its peer closes, in CLOSE_WAIT; the metric follows.

#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn audit(gh: &Gatehouse) -> serde_json::Value {
    serde_json::from_str(&gh.get("/v1/audit")).unwrap()
}

fn kinds(report: &serde_json::Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_audit_is_clean_with_live_connections_and_finds_a_leaked_socket() {
    let backend = echo_backend();
    let gh = Gatehouse::start_with_env(
        &simple_config("", "", backend, ""),
        &[("GATEHOUSE_TEST_HOOKS", "1")],
    );
    let addr = gh.addr("in");

    // Live L4 connections: each has its entry, its client socket and its
    // upstream socket.
    let mut live: Vec<TcpStream> = (0..5)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&[i]).unwrap();
            let mut b = [0u8];
            s.read_exact(&mut b).unwrap();
            s
        })
        .collect();
    let report = audit(&gh);
    assert_eq!(report["mismatches"], 0, "{report:#}");
    assert!(report["counts"]["connections"].as_u64().unwrap() >= 5);
    assert!(report["counts"]["outgoing"].as_u64().unwrap() >= 5);
    live.clear();
    gh.wait_empty(Duration::from_secs(5));
    assert_accounted(&gh);

    // A socket nothing owns.
    let (sink, accepted) = capture_backend();
    let (status, leaked) = gh.admin_call("POST", &format!("/v1/audit/leak?to={sink}"), "");
    assert_eq!(status, 200, "{leaked}");
    let leaked_local = leaked["leaked"].as_str().unwrap().to_owned();
    let report = audit(&gh);
    assert_eq!(report["mismatches"], 1, "{report:#}");
    let f = &report["findings"][0];
    assert_eq!(f["kind"], "unowned_upstream_socket", "{report:#}");
    assert_eq!(f["peer"], sink.to_string());
    assert_eq!(f["local"], leaked_local);
    assert_eq!(f["tcp_state"], "ESTABLISHED");

    // Its peer closes: the process never does.
    let far = accepted.recv_timeout(Duration::from_secs(5)).unwrap();
    drop(far);
    let report = audit(&gh);
    assert_eq!(kinds(&report), ["close_wait"], "{report:#}");
    assert_eq!(report["findings"][0]["local"], leaked_local);
    assert_eq!(report["findings"][0]["tcp_state"], "CLOSE_WAIT");
    assert!(gh.metric("gatehouse_audit_mismatches", &[]) >= 1);
    assert!(gh.metric("gatehouse_audit_runs_total", &[]) >= 4);
}

#[test]
fn the_leak_hook_is_off_unless_asked_for() {
    let backend = echo_backend();
    let gh = Gatehouse::start(&simple_config("", "", backend, ""));
    let (status, _) = gh.admin_call("POST", &format!("/v1/audit/leak?to={backend}"), "");
    assert_eq!(status, 405);
    assert_audit_clean(&gh);
}
