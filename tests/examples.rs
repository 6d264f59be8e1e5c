//! Each example config's header instructions, run as a user would run them:
//! its `$` lines in one shell, in order, with `cargo run` standing for the
//! binaries this build made, and every `${VAR:-default}` address given a
//! free port so that the examples run beside the other tests. The requests
//! they make (`curl -f`) must each get a 2xx from a backend, through every
//! route the example describes.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::Command;

use common::BIN;

/// The backend the examples start (`cargo run --example backend`).
fn backend_bin() -> String {
    let dir = std::path::Path::new(BIN).parent().unwrap();
    let bin = dir.join("examples").join("backend");
    if !bin.exists() {
        // (cargo nextest and cargo test build it; a lone test binary may not.)
        let ok = Command::new(env!("CARGO"))
            .args(["build", "--example", "backend"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cargo build --example backend failed");
    }
    bin.display().to_string()
}

/// The `$` lines of the example's header, `cargo run` replaced by the
/// binaries.
fn commands(text: &str) -> Vec<String> {
    let backend = backend_bin();
    text.lines()
        .filter_map(|l| l.strip_prefix("#   $ "))
        .map(|c| {
            c.replace("cargo run --example backend --", &backend)
                .replace("cargo run --release --", BIN)
        })
        .collect()
}

/// A free port for each `${NAME:-127.0.0.1:PORT}` (an address) and
/// `${NAME:-PORT}` (a port) in the file.
fn free_ports(text: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    // (Held until every port is picked: a port let go may be picked again.)
    let mut held = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find('}') else { break };
        let Some((name, default)) = rest[..end].split_once(":-") else {
            continue;
        };
        if env.contains_key(name) {
            continue;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        held.push(listener);
        if default.starts_with("127.0.0.1:") {
            env.insert(name.to_owned(), format!("127.0.0.1:{port}"));
        } else if default.bytes().all(|b| b.is_ascii_digit()) {
            env.insert(name.to_owned(), port.to_string());
        }
    }
    env
}

fn run_example(file: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    let commands = commands(&text);
    let requests = commands
        .iter()
        .filter(|c| (c.starts_with("curl ") || c.starts_with("$CURL ")) && !c.contains("grep"))
        .count();
    assert!(requests > 0, "{file}: no request in its header");
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT\n{}\n",
        commands.join("\n")
    );
    let out = Command::new("timeout")
        .args(["--kill-after=5", "90", "bash", "-c", &script])
        .envs(free_ports(&text))
        .env("CERT_DIR", dir.path())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{file}: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // Every request answered by a backend (its line names the protocol).
    let answers = stdout.lines().filter(|l| l.contains(": HTTP/")).count();
    assert_eq!(answers, requests, "{file}:\n{stdout}\n--- stderr\n{stderr}");
}

#[test]
fn the_minimal_example_runs_as_its_header_says() {
    run_example("examples/gatehouse.toml");
}

#[test]
fn the_http_example_runs_as_its_header_says() {
    run_example("examples/http.toml");
}

#[test]
fn the_proxy_chain_example_runs_as_its_header_says() {
    run_example("examples/proxy-chain.toml");
}

#[test]
fn the_tls_example_runs_as_its_header_says() {
    run_example("examples/tls.toml");
}

#[test]
fn the_filters_example_runs_as_its_header_says() {
    run_example("examples/filters.toml");
}

#[test]
fn the_registry_example_runs_as_its_header_says() {
    run_example("examples/registry.toml");
}
