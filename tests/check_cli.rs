//! `gatehouse check` accepts good configs and rejects each
//! class of bad config with a message naming the file and line.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::process::Command;

use common::BIN;

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("NOT_SET_ANYWHERE")
        .output()
        .unwrap();
    let stderr =
        String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "c.toml");
    (out.status.success(), stderr)
}

const OK: &str = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[routes]]\nname = \"r\"\naction.forward = [\"127.0.0.1:9\"]\n";

const TLS: &str = "[[listeners]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tls\"\n[[routes]]\nname = \"r\"\nmatch = { listener = \"t\", sni = [\"a.test\"] }\naction.forward = [\"127.0.0.1:9\"]\ntls = \"passthrough\"\n";

#[test]
fn the_examples_are_valid() {
    for f in [
        "examples/gatehouse.toml",
        "examples/proxy-chain.toml",
        "examples/bench/tcp.toml",
        "examples/registry.toml",
    ] {
        let out = Command::new(BIN)
            .args(["check", "--config", f])
            .env("ADMIN_TOKEN", "example-token-0123456789")
            .env("LISTEN_ADDR", "127.0.0.1:1")
            .env("BACKEND_ADDR", "127.0.0.1:2")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(check(OK).0);
}

#[test]
fn each_class_of_bad_config_names_its_line() {
    let cases: &[(&str, String, &str)] = &[
        (
            "unknown field",
            format!("{OK}[limits]\nmax_conns = 3\n"),
            "c.toml:8: limits.max_conns: unknown key `max_conns`: did you mean `max_connections`?",
        ),
        (
            "zero timeout",
            format!("[timeouts]\nconnect = \"0s\"\n{OK}"),
            "c.toml:2: timeouts.connect: must be longer than zero",
        ),
        (
            "bad duration",
            format!("[timeouts]\nidle = \"5 minutes\"\n{OK}"),
            "c.toml:2: timeouts.idle:",
        ),
        (
            "duplicate listener",
            format!("{OK}[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n"),
            "c.toml:8: listeners[1].name: duplicate listener name",
        ),
        (
            "duplicate route",
            format!("{OK}[[routes]]\nname = \"r\"\naction.forward = [\"127.0.0.1:9\"]\n"),
            "c.toml:8: routes[1].name: duplicate route name",
        ),
        (
            "bad CIDR",
            format!("{OK}match.client_cidrs = [\"10.0.0.0/40\"]\n"),
            "c.toml:7: routes[0].match.client_cidrs:",
        ),
        (
            "unknown listener",
            format!("{OK}match.listener = \"nope\"\n"),
            "c.toml:7: routes[0].match.listener: no listener is named \"nope\"",
        ),
        (
            "bad bind",
            OK.replace("127.0.0.1:0", "localhost"),
            "c.toml:3: listeners[0].bind:",
        ),
        (
            "unset env",
            OK.replace("127.0.0.1:9", "${NOT_SET_ANYWHERE}"),
            "c.toml:6: routes[0].action.forward: environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            "zero limit",
            format!("[limits]\nmax_connections = 0\n{OK}"),
            "c.toml:2: limits.max_connections: must be at least 1",
        ),
        (
            "wrong type",
            format!("{OK}policy.max_connections = true\n"),
            "c.toml:7:",
        ),
        (
            "bad proxy version",
            format!("{OK}action.send_proxy_protocol = \"v3\"\n"),
            "c.toml:7: routes[0].action.send_proxy_protocol:",
        ),
        ("toml syntax", format!("{OK}[[routes]\n"), "c.toml:7:"),
        (
            "TLS mode on a TCP listener",
            format!("{OK}match.listener = \"l\"\ntls = \"terminate\"\n"),
            "c.toml:8: routes[0].tls: a TLS mode needs match.listener naming a protocol = \"tls\" listener",
        ),
        (
            "bad TLS mode",
            TLS.replace("tls = \"passthrough\"", "tls = \"decrypt\""),
            "c.toml:9: routes[0].tls: \"decrypt\" is not one of",
        ),
        (
            "terminating without certificates",
            TLS.replace("passthrough", "terminate"),
            "c.toml:9: certificates: terminating TLS needs at least one [[certificates]] entry",
        ),
        (
            "auto certificate without [acme]",
            format!("{TLS}[[certificates]]\nhosts = [\"a.test\"]\nauto = true\n"),
            "c.toml:10: certificates[0].auto: auto = true needs an [acme] table",
        ),
        (
            "certificate without a key",
            format!("{TLS}[[certificates]]\ncert = \"a.crt\"\n"),
            "c.toml:10: certificates[0].cert: give cert and key",
        ),
        (
            "bad minimum TLS version",
            TLS.replace(
                "protocol = \"tls\"",
                "protocol = \"tls\"\ntls.min_version = \"1.1\"",
            ),
            "c.toml:5: listeners[0].tls.min_version: \"1.1\" is not one of \"1.2\", \"1.3\"",
        ),
        (
            "SNI matcher on a TCP listener",
            format!("{OK}match.listener = \"l\"\nmatch.sni = [\"a.test\"]\n"),
            "c.toml:7: routes[0].match: sni and client_identities matchers need a TLS listener",
        ),
        (
            "passthrough with upstream TLS",
            format!("{TLS}upstream.tls = true\n"),
            "c.toml:10: routes[0].upstream: passthrough forwards the client's TLS untouched",
        ),
    ];
    for (name, text, want) in cases {
        let (ok, stderr) = check(text);
        assert!(!ok, "{name}: accepted");
        assert!(
            stderr.lines().any(|l| l.starts_with(want)),
            "{name}: want a line starting {want:?}, got:\n{stderr}"
        );
    }
}

#[test]
fn bad_cluster_settings_are_named_with_their_line_and_field() {
    let text = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\
[[routes]]\nname = \"r\"\naction.cluster = \"nope\"\n\
[[clusters]]\nname = \"empty\"\nendpoints = []\n\
[[clusters]]\nname = \"c\"\n\
endpoints = [{ address = \"127.0.0.1:1\", weight = 0 }]\n\
balance = \"hash\"\n\
hash_key = \"header:\"\n\
health = { interval = \"1s\", timeout = \"2s\", unhealthy_threshold = 0 }\n\
outlier = { base_ejection = \"1m\", max_ejection = \"10s\" }\n\
retries = { on = [\"sometimes\", \"status\"], statuses = [404] }\n";
    let (ok, stderr) = check(text);
    assert!(!ok);
    for want in [
        "c.toml:6: routes[0].action.cluster: no cluster is named",
        "c.toml:9: clusters[0].endpoints: list at least one endpoint",
        "c.toml:12: clusters[1].endpoints[0].weight: must be at least 1",
        "c.toml:14: clusters[1].hash_key: \"header:\" is not a hash key",
        "c.toml:15: clusters[1].health.timeout: 2s is longer than the interval (1s)",
        "c.toml:15: clusters[1].health.unhealthy_threshold: must be at least 1",
        "c.toml:16: clusters[1].outlier.max_ejection: shorter than base_ejection (60s)",
        "c.toml:17: clusters[1].retries.on[0]: \"sometimes\"",
        "c.toml:17: clusters[1].retries.statuses[0]: only 5xx statuses are retried",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(want)),
            "want a line starting {want:?}, got:\n{stderr}"
        );
    }
    // Nothing else: no follow-on error.
    assert_eq!(stderr.lines().count(), 9, "{stderr}");
}

#[test]
fn every_error_is_reported_at_once() {
    let text = "[timeouts]\nconnect = \"0s\"\nidle = \"x\"\n[[listeners]]\nname = \"l\"\nbind = \"nope\"\n[[routes]]\nname = \"r\"\naction.forward = [\"bad\"]\n";
    let (ok, stderr) = check(text);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 4, "{stderr}");
}

#[test]
fn every_reader_error_is_reported_at_once_with_the_checks_after_them() {
    // Misspelt keys on lines 2 and 7, a wrong type on line 13, and a
    // value that validation refuses on line 14: all four in one run.
    let text = "[timeouts]\nconect = \"5s\"\n\n[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\nprotocl = \"http\"\n\n[[routes]]\nname = \"r\"\nmatch.listener = \"a\"\naction.forward = [\"127.0.0.1:9000\"]\npolicy.max_connections = [1]\npolicy.idle_timeout = \"5 parsecs\"\n";
    let (ok, stderr) = check(text);
    assert!(!ok);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(
        lines[0].ends_with(":2: timeouts.conect: unknown key `conect`: did you mean `connect`? (known here: connect, proxy_header, idle, max_lifetime, shutdown_drain, route_drain, tls_handshake, client_send)"),
        "{stderr}"
    );
    assert!(
        lines[1]
            .contains(":7: listeners[0].protocl: unknown key `protocl`: did you mean `protocol`?"),
        "{stderr}"
    );
    assert!(
        lines[2].contains(":13: routes[0].policy.max_connections: expected "),
        "{stderr}"
    );
    assert!(
        lines[3].contains(":14: routes[0].policy.idle_timeout: "),
        "{stderr}"
    );

    // A table missing a required key is reported, and a route that names
    // it is not then blamed for a listener it cannot find.
    let text = "[[listeners]]\nname = \"a\"\n\n[[routes]]\nname = \"r\"\nmatch.listener = \"a\"\naction.forwrd = [\"127.0.0.1:9000\"]\n";
    let (ok, stderr) = check(text);
    assert!(!ok);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].contains(":1: listeners[0]: `bind` is required here"),
        "{stderr}"
    );
    assert!(
        lines[1]
            .contains(":7: routes[0].action.forwrd: unknown key `forwrd`: did you mean `forward`?"),
        "{stderr}"
    );

    // Syntax errors are all reported, and nothing after them.
    let text = "[[listeners]]\nname = \"a\nbind = \n[[routes]]\nname = 5 6\n";
    let (ok, stderr) = check(text);
    assert!(!ok);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines[0].contains(":2: listeners[0].name: "), "{stderr}");
    assert!(lines[1].contains(":3: listeners[0].bind: "), "{stderr}");
    assert!(lines[2].contains(":5: routes[0].name: "), "{stderr}");
}

#[test]
fn version_flag() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

fn gatehouse(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("GATEHOUSE_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check FILE`, `check --config FILE` and `check` with $GATEHOUSE_CONFIG
/// read the same file; the summary counts in words.
#[test]
fn the_config_is_found_as_an_argument_an_option_or_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, OK).unwrap();
    let p = path.to_str().unwrap();
    let expected = format!("{p}: ok (1 listener, 1 route)\n");
    for (args, env) in [
        (vec!["check", p], vec![]),
        (vec!["check", "--config", p], vec![]),
        (vec!["check"], vec![("GATEHOUSE_CONFIG", p)]),
    ] {
        let (ok, stdout, stderr) = gatehouse(&args, &env);
        assert!(ok, "{args:?}: {stderr}");
        assert_eq!(stdout, expected, "{args:?}");
    }
    // Without either, the default path is read (and named when missing).
    let (ok, _, stderr) = gatehouse(&["check"], &[]);
    assert!(!ok);
    assert!(stderr.contains("/etc/gatehouse/gatehouse.toml"), "{stderr}");
    let (ok, help, stderr) = gatehouse(&["run", "--help"], &[]);
    assert!(ok);
    assert!(stderr.is_empty(), "{stderr}");
    assert!(help.contains("The config file (TOML)"), "{help}");
    assert!(help.contains("GATEHOUSE_CONFIG"), "{help}");
}

/// A config that cannot be read is said once, in the log's format.
#[test]
fn a_missing_config_is_one_clear_error_in_the_log_format() {
    let (ok, _, stderr) = gatehouse(&["run", "--config", "/nonexistent/g.toml"], &[]);
    assert!(!ok);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    let (ok, _, stderr) = gatehouse(
        &[
            "run",
            "--config",
            "/nonexistent/g.toml",
            "--log-format",
            "json",
        ],
        &[],
    );
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
    assert_eq!(line["level"], "ERROR");
    let message = line["message"].as_str().unwrap();
    assert!(
        message.contains("cannot read config file /nonexistent/g.toml"),
        "{message}"
    );
}

#[test]
fn completion_scripts_for_the_usual_shells() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef gatehouse"),
        ("fish", "complete -c gatehouse"),
    ] {
        let (ok, script, stderr) = gatehouse(&["completions", shell], &[]);
        assert!(ok, "{shell}: {stderr}");
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("check") && script.contains("log-format"),
            "{shell}"
        );
    }
}

/// What is valid but likely a mistake is said, with its line, and the
/// check still passes: a listener no route takes, a route an earlier one
/// always takes first, a setting that does nothing where it is written.
#[test]
fn likely_mistakes_are_warnings() {
    let text = r#"[[listeners]]
name = "tcp"
bind = "127.0.0.1:0"
[[listeners]]
name = "spare"
bind = "127.0.0.1:0"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
[[routes]]
name = "all"
match.listener = "tcp"
action.forward = ["127.0.0.1:9"]
[[routes]]
name = "never"
match = { listener = "tcp", port = 5000 }
action.forward = ["127.0.0.1:9"]
policy.allow_upgrade = true
[[routes]]
name = "site"
match = { listener = "web", path_prefix = "/a" }
action.forward = ["127.0.0.1:9"]
[[routes]]
name = "site-again"
match = { listener = "web", path_prefix = "/a" }
action.forward = ["127.0.0.1:9"]
[[routes]]
name = "root"
match.listener = "web"
action.forward = ["127.0.0.1:9"]
[[clusters]]
name = "idle"
endpoints = [{ address = "127.0.0.1:9" }]
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let (ok, stdout, stderr) = gatehouse(&["check", path.to_str().unwrap()], &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok (3 listeners, 5 routes)"), "{stdout}");
    let stderr = stderr.replace(&path.display().to_string(), "c.toml");
    let expected = [
        "warning: c.toml:4: listeners[1]: no route takes listener \"spare\"",
        "warning: c.toml:15: routes[1]: route \"never\" never matches: route \"all\" (routes[0]) takes everything it would",
        "warning: c.toml:19: routes[1].policy.allow_upgrade: has no effect: the route's listener does not speak HTTP",
        "warning: c.toml:24: routes[3]: route \"site-again\" never matches: route \"site\" (routes[2])",
        "warning: c.toml:32: clusters[0]: no route forwards to cluster \"idle\"",
    ];
    for w in expected {
        assert!(stderr.contains(w), "missing {w:?} in:\n{stderr}");
    }
    // The catch-all HTTP route after more specific ones is fine: no more.
    assert_eq!(stderr.lines().count(), expected.len(), "{stderr}");
}

/// A certificate file that is not there is named with its line and field,
/// and the entry it belongs to still counts: no misleading follow-on error.
#[test]
fn a_missing_certificate_file_is_named_with_its_line_and_field() {
    let text = "[[certificates]]\ncert = \"/nonexistent/site.crt\"\nkey = \"/nonexistent/site.key\"\n[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\n[[routes]]\nname = \"r\"\naction.forward = [\"127.0.0.1:9\"]\n";
    let (ok, stderr) = check(text);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        "c.toml:2: certificates[0].cert: /nonexistent/site.crt: no such file\n\
         c.toml:3: certificates[0].key: /nonexistent/site.key: no such file"
    );
}

/// `check --print` on `path`: the effective config, which `check` accepts
/// and prints the same way again.
fn print_round_trip(path: &std::path::Path, env: &[(&str, &str)]) -> String {
    let print = |p: &std::path::Path| {
        let out = Command::new(BIN)
            .args(["check", "--print"])
            .arg(p)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", p.display());
        String::from_utf8(out.stdout).unwrap()
    };
    let first = print(path);
    let dir = tempfile::tempdir().unwrap();
    let again = dir.path().join("printed.toml");
    std::fs::write(&again, &first).unwrap();
    assert_eq!(print(&again), first, "{}", path.display());
    first
}

#[test]
fn print_shows_the_effective_config_which_checks_again() {
    let env = [
        ("LISTEN_ADDR", "127.0.0.1:1"),
        ("BACKEND_ADDR", "127.0.0.1:2"),
    ];
    for f in [
        "examples/gatehouse.toml",
        "examples/http.toml",
        "examples/proxy-chain.toml",
        "examples/filters.toml",
        "examples/bench/http.toml",
        "examples/bench/tcp.toml",
    ] {
        print_round_trip(std::path::Path::new(f), &env);
    }
    let printed = print_round_trip(std::path::Path::new("examples/gatehouse.toml"), &env);
    // Defaults filled in, and ${VAR} substituted.
    for line in [
        "[timeouts]\nconnect = \"5s\"\nproxy_header = \"5s\"\nidle = \"10m\"\nmax_lifetime = \"off\"\nshutdown_drain = \"30s\"",
        "bind = \"127.0.0.1:1\"",
        "forward = [\"127.0.0.1:2\"]",
        "[admin]\nbind = \"127.0.0.1:9901\"",
    ] {
        assert!(printed.contains(line), "{line:?} not in:\n{printed}");
    }

    // TLS, matchers and actions of every kind.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let text = format!(
        r#"
internal_ca.storage = "{}"
[[certificates]]
hosts = ["localhost", "*.local.test"]
issuer = "internal"
default = true
[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
protocol = "https"
tls.min_version = "1.3"
[[listeners]]
name = "sni"
bind = "127.0.0.1:0"
protocol = "tls"
proxy_protocol.trusted = ["127.0.0.0/8"]
[[listeners]]
name = "plain"
bind = "127.0.0.1:0"
protocol = "http"
http = {{ access_log_headers = ["user-agent"], access_log_query = false }}
[[clusters]]
name = "shadow"
endpoints = [{{ address = "127.0.0.1:8" }}]
[[routes]]
name = "users"
mirror = {{ cluster = "shadow", percent = 5, max_body = "4KiB", timeout = "2s" }}
log_redact = {{ headers = ["x-session"], query = ["ticket"] }}
match = {{ listener = "edge", path_pattern = "/users/{{id}}/{{*rest}}", methods = ["GET"], headers = {{ x-env = "prod" }}, headers_present = ["x-trace"] }}
action.forward = ["127.0.0.1:9"]
upstream = {{ tls = true, server_name = "users.internal", protocol = "http2" }}
policy = {{ max_body_size = "1MiB", request_timeout = "1m30s", max_connections = 7 }}
[[routes]]
name = "pass"
match = {{ listener = "sni", sni = ["mail.test"], client_cidrs = ["10.0.0.0/8"] }}
tls = "passthrough"
action = {{ forward = ["127.0.0.1:9"], send_proxy_protocol = "v2", pass_tlvs = true }}
[[routes]]
name = "up"
match.listener = "plain"
action = {{ redirect_https = true, redirect_port = 8443 }}
"#,
        ca.display()
    );
    let path = dir.path().join("all.toml");
    std::fs::write(&path, text).unwrap();
    let printed = print_round_trip(&path, &[]);
    for line in [
        "path_pattern = \"/users/{id}/{*rest}\"",
        "headers_present = [\"x-trace\"]",
        "hosts = [\"localhost\", \"*.local.test\"]",
        "issuer = \"internal\"",
        "min_version = \"1.3\"",
        "alpn = [\"h2\", \"http/1.1\"]",
        "tls = \"passthrough\"",
        "send_proxy_protocol = \"v2\"",
        "redirect_port = 8443",
        "request_timeout = \"1m30s\"",
        "max_body_size = 1048576",
        "server_name = \"users.internal\"",
        "[routes.mirror]\ncluster = \"shadow\"\npercent = 5\nmax_body = 4096\ntimeout = \"2s\"",
        "[routes.log_redact]\nheaders = [\"x-session\"]\nquery = [\"ticket\"]",
        "access_log_headers = [\"user-agent\"]",
        "access_log_query = false",
    ] {
        assert!(printed.contains(line), "{line:?} not in:\n{printed}");
    }
}

#[test]
fn a_clusters_policy_prints_and_checks_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
[[routes]]\nname = \"r\"\naction.cluster = \"c\"\n\
[[routes]]\nname = \"s\"\nmatch.path = \"/s\"\naction.split = [{ cluster = \"c\", weight = 3 }, { cluster = \"d\" }]\n\
[[clusters]]\nname = \"d\"\nendpoints = [{ address = \"127.0.0.1:2\" }]\n\
[[clusters]]\nname = \"c\"\nendpoints = [{ address = \"127.0.0.1:1\", weight = 2 }]\n\
hash_key = \"cookie:session\"\npanic = true\nmax_requests = 500\nmax_requests_per_endpoint = 7\n\
health = { path = \"/healthz\", method = \"HEAD\", host = \"api.test\", headers = { x-check = \"1\" }, expect_status = [200, 204], body_contains = \"ok\", interval = \"3s\", timeout = \"1s\" }\n\
outlier = { consecutive_failures = \"off\" }\n\
retries = { attempts = 3, on = [\"timeout\", \"status\"], statuses = [503], backoff = \"5ms\", body_limit = \"64KiB\" }\n",
    )
    .unwrap();
    let printed = print_round_trip(&path, &[]);
    for line in [
        "balance = \"hash\"",
        "hash_key = \"cookie:session\"",
        "panic = true",
        "max_requests = 500",
        "expect_status = [200, 204]",
        "consecutive_failures = \"off\"",
        "on = [\"timeout\", \"status\"]",
        "statuses = [503]",
        "body_limit = 65536",
        "max_requests_per_endpoint = 7",
        "[[routes.action.split]]\ncluster = \"c\"\nweight = 3\n\n[[routes.action.split]]\ncluster = \"d\"\nweight = 1",
    ] {
        assert!(printed.contains(line), "{line:?} not in:\n{printed}");
    }
}

#[test]
fn bad_filter_settings_are_named_with_their_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let not_jwks = dir.path().join("keys.json");
    std::fs::write(&not_jwks, "{\"not\": \"a jwks\"}").unwrap();
    let ec_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .public_key_pem();
    let text = format!(
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
[[routes]]\nname = \"r\"\naction.forward = [\"127.0.0.1:9\"]\nfilters = [\"nope\", \"limit\"]\n\
[[filters]]\nname = \"limit\"\nkind = \"rate_limit\"\nrate = \"0/s\"\n\
[[filters]]\nname = \"keys\"\nkind = \"jwt\"\njwks_file = \"{}\"\n\
[[filters]]\nname = \"rsa\"\nkind = \"jwt\"\nalgorithm = \"RS256\"\npublic_key = \"\"\"\n{ec_key}\"\"\"\n\
[[filters]]\nname = \"plain\"\nkind = \"basic_auth\"\nusers = {{ demo = \"demo-pass\" }}\n\
[[filters]]\nname = \"odd\"\nkind = \"gzip\"\n\
[[filters]]\nname = \"mixed\"\nkind = \"ip\"\nrate = \"1/s\"\n",
        not_jwks.display()
    );
    let (ok, stderr) = check(&text);
    assert!(!ok);
    let stderr = stderr.replace(&not_jwks.display().to_string(), "keys.json");
    for want in [
        "c.toml:8: routes[0].filters: no filter is named \"nope\"",
        "c.toml:12: filters[0].rate: must be more than zero",
        "c.toml:16: filters[1].jwks_file: keys.json: not a JWKS document",
        "c.toml:21: filters[2].public_key: not a RS256 public key (PEM)",
        "c.toml:30: filters[3].users.demo: passwords are stored hashed",
        "c.toml:33: filters[4].kind: unknown filter kind \"gzip\"",
        "c.toml:37: filters[5].rate: not a setting of kind \"ip\"",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(want)),
            "want a line starting {want:?}, got:\n{stderr}"
        );
    }
    assert_eq!(stderr.lines().count(), 7, "{stderr}");
    // Only IP rules on a TCP route.
    let tcp = format!("{OK}filters = [\"k\"]\n[[filters]]\nname = \"k\"\nkind = \"request_id\"\n");
    let (ok, stderr) = check(&tcp);
    assert!(!ok);
    assert!(
        stderr.contains("c.toml:7: routes[0].filters: filter \"k\" needs an HTTP route"),
        "{stderr}"
    );
}

#[test]
fn bad_registry_and_admin_settings_are_named_with_their_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.token");
    std::fs::write(&short, "abc\n").unwrap();
    let text = format!(
        "admin.token_file = \"{}\"\n\
registry.max_instances = 0\n\
[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\
[[routes]]\nname = \"r\"\naction.cluster = \"both\"\n\
[[clusters]]\nname = \"both\"\nservice = \"demo\"\n\
endpoints = [{{ address = \"127.0.0.1:1\" }}]\n\
[[clusters]]\nname = \"bad\"\nservice = \"../etc\"\n\
[[clusters]]\nname = \"none\"\n",
        short.display()
    );
    let (ok, stderr) = check(&text);
    assert!(!ok);
    for want in [
        "c.toml:1: admin.token_file: the token must be at least 16 characters",
        "c.toml:2: registry.max_instances: must be at least 1",
        "c.toml:12: clusters[0].endpoints: a cluster takes its endpoints from a list or from a service, not both",
        "c.toml:15: clusters[1].service: \"../etc\" is not a name",
        "c.toml:17: clusters[2].endpoints: list at least one endpoint",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(want)),
            "want a line starting {want:?}, got:\n{stderr}"
        );
    }
    assert_eq!(stderr.lines().count(), 5, "{stderr}");
    // A token's variable that is not set; private reads without a token.
    let (ok, stderr) = check(&format!("admin.token_env = \"NOT_SET_ANYWHERE\"\n{OK}"));
    assert!(!ok);
    assert!(
        stderr.starts_with(
            "c.toml:1: admin.token_env: the environment variable NOT_SET_ANYWHERE is not set"
        ),
        "{stderr}"
    );
    let (ok, stderr) = check(&format!("admin.public_reads = false\n{OK}"));
    assert!(!ok);
    assert!(
        stderr.starts_with("c.toml:1: admin.public_reads: public_reads = false needs a token"),
        "{stderr}"
    );
}
