//! The admin listener as an operator meets it: `/` lists the endpoints,
//! the metrics carry no empty series for what no route took, and a port
//! that cannot be bound stops the start before anything is announced.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::net::TcpListener;
use std::process::Command;

use common::*;

#[test]
fn the_root_lists_the_endpoints() {
    let gh = Gatehouse::start(&http_config("", "", echo_backend(), ""));
    let index = gh.get("/");
    for line in [
        "GET  /healthz",
        "GET  /connections",
        "GET  /metrics",
        "POST /tls/reload",
    ] {
        assert!(index.contains(line), "{line} missing from:\n{index}");
    }
    // Every endpoint listed answers.
    for path in ["/healthz", "/connections", "/metrics"] {
        gh.get(path);
    }
}

#[test]
fn no_all_zero_series_for_what_no_route_took() {
    let gh = Gatehouse::start(&http_config("", "", echo_backend(), ""));
    let metrics = gh.get("/metrics");
    assert!(!metrics.contains("route=\"\""), "{metrics}");
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("gatehouse_connections_active{route=\"none\"")),
        "{metrics}"
    );
    // The route's own series are there, at zero.
    assert!(
        metrics.contains("gatehouse_connections_active{route=\"app\",state=\"established\"} 0")
    );
}

#[test]
fn a_taken_admin_port_stops_the_start_before_anything_is_announced() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = http_config("", "", echo_backend(), "").replace(
        "admin.bind = \"127.0.0.1:0\"",
        &format!("admin.bind = \"127.0.0.1:{port}\""),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin: cannot bind"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}
