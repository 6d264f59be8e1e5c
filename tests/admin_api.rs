//! Gatehouse as an operator meets it: `/` lists the admin endpoints, the
//! metrics carry no empty series for what no route took, a port that
//! cannot be bound stops the start before anything is announced, and a
//! service manager is told when Gatehouse is ready and when it stops.
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
fn the_health_command_asks_the_admin_endpoint() {
    let health = |admin: &str| {
        Command::new(BIN)
            .args(["health", "--admin", admin])
            .output()
            .unwrap()
    };
    let gh = Gatehouse::start(&http_config("", "", echo_backend(), ""));
    let out = health(&gh.admin.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An endpoint that is not there is a failure that says where it looked.
    let gone = refused_addr();
    let out = health(&gone.addr.to_string());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&gone.addr.to_string()), "{stderr}");
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

/// Under systemd (`Type=notify`): READY=1 once the listeners are bound,
/// STOPPING=1 when the drain begins, on $NOTIFY_SOCKET.
#[test]
fn the_service_manager_is_told_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let gh = Gatehouse::start_with_env(
        &http_config("", "", echo_backend(), ""),
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    std::net::TcpStream::connect(gh.addr("web")).unwrap();
    let status = gh.terminate(std::time::Duration::from_secs(5));
    assert!(status.success());
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}
