//! The kernel fast path: routes with `action.engine = "kernel"` forwarded
//! by nftables. Bytes arrive exact both ways; the process's table exists
//! while it runs, is gone after SIGTERM, and is replaced (never doubled)
//! after SIGKILL; other tables are untouched; conntrack shows the
//! connections in `/connections` and `/metrics`; without CAP_NET_ADMIN a
//! `kernel` route falls back with a warning and a `kernel_strict` one
//! stops the start. Tests that need nftables say so and skip where it
//! cannot be used.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;

/// Whether nftables can be used here; if not, says why (the test skips).
fn nft_usable(test: &str) -> bool {
    let out = Command::new("nft").args(["list", "tables"]).output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "SKIPPED {test}: nftables cannot be used here: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("SKIPPED {test}: nft cannot be run here: {e}");
            false
        }
    }
}

/// The `inet` tables named `name` on the host (0, 1; never 2).
fn tables_named(name: &str) -> usize {
    let out = Command::new("nft")
        .args(["-j", "list", "tables"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["table"]["name"] == name)
        .count()
}

/// The rules of table `name`.
fn rules_in(name: &str) -> usize {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "inet", name])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["nftables"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|o| o.get("rule").is_some()).count())
}

/// A name for this test's instance (tests run side by side), and a guard
/// that removes its table when the test ends however it ends (a process
/// the test harness kills leaves it, as any killed process does).
fn instance(tag: &str) -> (String, TestTable) {
    let name = format!("t{}{tag}", std::process::id());
    let guard = TestTable(format!("gatehouse_{name}"));
    (name, guard)
}

fn kernel_config(instance: &str, port: u16, target: SocketAddr, engine: &str) -> String {
    kernel_config_on(
        instance,
        &format!("127.0.0.1:{port}"),
        &target.to_string(),
        engine,
    )
}

/// One listener `in` on `bind`, one route `fast` forwarding to `forward`.
fn kernel_config_on(instance: &str, bind: &str, forward: &str, engine: &str) -> String {
    format!(
        r#"
instance = "{instance}"
admin.bind = "127.0.0.1:0"
[[listeners]]
name = "in"
bind = "{bind}"
[[routes]]
name = "fast"
match.listener = "in"
action.forward = ["{forward}"]
action.engine = "{engine}"
"#
    )
}

/// A table the test removes when it ends.
struct TestTable(String);

impl TestTable {
    /// An unrelated table of the test's own, with a rule.
    fn make(name: &str) -> TestTable {
        let script = format!(
            "add table inet {name}\nadd chain inet {name} c {{ type filter hook input priority 50; }}\nadd rule inet {name} c tcp dport 9 counter accept\n"
        );
        let ok = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(script.as_bytes())?;
                c.wait()
            })
            .unwrap();
        assert!(ok.success());
        TestTable(name.to_owned())
    }
}

impl Drop for TestTable {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.0])
            .status();
    }
}

#[test]
fn kernel_route_moves_bytes_exact_and_owns_only_its_table() {
    if !nft_usable("kernel_route_moves_bytes_exact_and_owns_only_its_table") {
        return;
    }
    let other = TestTable::make(&format!("unrelated_{}", std::process::id()));
    let (name, _table) = instance("a");
    let table = format!("gatehouse_{name}");
    let port = free_port();
    let gh = Gatehouse::start(&kernel_config(&name, port, echo_backend(), "kernel"));
    assert_eq!(tables_named(&table), 1);
    assert_eq!(
        rules_in(&table),
        2,
        "one DNAT rule in prerouting and in output"
    );
    let at: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let sizes = [1, 2, 1000, 65_537, 1 << 20, 16 << 20, 64 << 20];
    for (i, &size) in sizes.iter().enumerate() {
        echo_through(at, size, i as u64 + 3);
    }
    // The kernel took them: the rules counted each, the process none.
    let text = gh.get("/metrics");
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_kernel_connections_total",
            &[("route", "fast")]
        ),
        sizes.len() as u64
    );
    assert_eq!(
        metric_sum(&text, "gatehouse_connections_accepted_total", &[]),
        0
    );
    assert_eq!(metric_sum(&text, "gatehouse_kernel_active", &[]), 1);
    assert_accounted(&gh);
    let status = gh.terminate(Duration::from_secs(10));
    assert!(status.success());
    assert_eq!(tables_named(&table), 0, "the table is removed at shutdown");
    assert_eq!(tables_named(&other.0), 1, "another table is untouched");
    assert_eq!(rules_in(&other.0), 1);
}

#[test]
fn a_table_left_by_a_killed_run_is_replaced_not_doubled() {
    if !nft_usable("a_table_left_by_a_killed_run_is_replaced_not_doubled") {
        return;
    }
    let (name, _table) = instance("b");
    let table = format!("gatehouse_{name}");
    let port = free_port();
    let config = kernel_config(&name, port, echo_backend(), "kernel");
    let gh = Gatehouse::start(&config);
    gh.signal("KILL");
    let _ = gh.wait_exit(Duration::from_secs(5));
    assert_eq!(tables_named(&table), 1, "SIGKILL leaves the table");
    let gh = Gatehouse::start(&config);
    gh.wait_log(
        "replaced a table an earlier run left behind",
        Duration::from_secs(5),
    );
    assert_eq!(tables_named(&table), 1);
    assert_eq!(rules_in(&table), 2, "the rules are not doubled");
    echo_through(format!("127.0.0.1:{port}").parse().unwrap(), 100_000, 1);
    // Killed again, then started on a config without kernel routes: the
    // table left behind goes.
    gh.signal("KILL");
    let _ = gh.wait_exit(Duration::from_secs(5));
    assert_eq!(tables_named(&table), 1);
    let gh = Gatehouse::start(&config.replace("\"kernel\"", "\"user\""));
    gh.wait_log(
        "removed a table an earlier run left behind",
        Duration::from_secs(5),
    );
    assert_eq!(tables_named(&table), 0);
    echo_through(format!("127.0.0.1:{port}").parse().unwrap(), 100_000, 2);
    assert!(gh.terminate(Duration::from_secs(10)).success());
}

#[test]
fn live_kernel_connections_show_with_their_bytes_and_their_ends() {
    if !nft_usable("live_kernel_connections_show_with_their_bytes_and_their_ends") {
        return;
    }
    let (name, _table) = instance("c");
    let port = free_port();
    let backend = echo_backend();
    let gh = Gatehouse::start(&kernel_config(&name, port, backend, "kernel"));
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let data = pattern(50_000, 9);
    c.write_all(&data).unwrap();
    let mut back = vec![0; data.len()];
    c.read_exact(&mut back).unwrap();
    assert!(back == data);
    let client = c.local_addr().unwrap().to_string();
    let mut seen = serde_json::Value::Null;
    gh.wait_for("the kernel connection", Duration::from_secs(5), |g| {
        let v = g.connections();
        let found = v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["engine"] == "kernel" && c["client"] == client.as_str())
            .cloned();
        // (conntrack counts IP packets: headers too.)
        let full = found.as_ref().is_some_and(|c| {
            c["bytes_client_to_upstream"].as_u64() >= Some(50_000)
                && c["bytes_upstream_to_client"].as_u64() >= Some(50_000)
        });
        if full {
            seen = found.unwrap_or_default();
        }
        full
    });
    assert_eq!(seen["route"], "fast");
    assert_eq!(seen["listener"], "in");
    assert_eq!(seen["state"], "established");
    assert_eq!(seen["upstream"], backend.to_string().as_str());
    let live = |g: &Gatehouse| g.metric("gatehouse_kernel_connections", &[("route", "fast")]);
    assert_eq!(live(&gh), 1);
    // The route filter finds it, and the table's own count is apart.
    let (status, v) = gh.admin_call("GET", "/v1/connections?route=fast", "");
    assert_eq!(status, 200);
    assert_eq!(v["matching"], 1);
    // The route says who forwards it; the kernel cannot drain it: refused.
    let (_, v) = gh.admin_call("GET", "/v1/routes", "");
    assert_eq!(v["routes"][0]["engine"], "kernel");
    let (status, v) = gh.admin_call("POST", "/v1/routes/fast/drain", "");
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("forwarded by the kernel")
    );
    drop(c);
    gh.wait_for("its end", Duration::from_secs(5), |g| {
        g.get("/metrics").contains(
            "gatehouse_kernel_connection_ends_total{route=\"fast\",reason=\"closed\",side=\"unknown\"} 1\n",
        )
    });
    assert_eq!(live(&gh), 0);
    let v = gh.connections();
    assert!(
        !v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["client"] == client.as_str()),
        "a closed connection is no longer listed: {v:#}"
    );
    for direction in ["client_to_upstream", "upstream_to_client"] {
        assert!(
            gh.metric(
                "gatehouse_kernel_bytes_total",
                &[("route", "fast"), ("direction", direction)]
            ) >= 50_000
        );
    }
    assert_accounted(&gh);
}

#[test]
fn a_port_range_goes_to_the_same_ports_on_the_target() {
    if !nft_usable("a_port_range_goes_to_the_same_ports_on_the_target") {
        return;
    }
    // Three ports free on 127.0.0.1 (the range) and on 127.0.0.2 (the
    // target), where each backend answers with its own port.
    let (first, backends) = (20_000..40_000u16)
        .step_by(7)
        .find_map(|p| {
            let b: Vec<TcpListener> = (p..p + 3)
                .filter_map(|q| TcpListener::bind(("127.0.0.2", q)).ok())
                .collect();
            let free = (p..p + 3).all(|q| TcpListener::bind(("127.0.0.1", q)).is_ok());
            (b.len() == 3 && free).then_some((p, b))
        })
        .unwrap();
    for l in backends {
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                let port = s.local_addr().unwrap().port();
                let _ = s.write_all(port.to_string().as_bytes());
            }
        });
    }
    let last = first + 2;
    let (name, _table) = instance("d");
    let gh = Gatehouse::start(&kernel_config_on(
        &name,
        &format!("127.0.0.1:{first}-{last}"),
        &format!("127.0.0.2:{first}-{last}"),
        "kernel_strict",
    ));
    for port in [first, first + 1, last] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert_eq!(got, port.to_string());
    }
    assert_eq!(
        gh.metric("gatehouse_kernel_connections_total", &[("route", "fast")]),
        3
    );
    assert!(gh.terminate(Duration::from_secs(10)).success());
}

#[test]
fn a_reload_changes_the_rules_and_a_reload_without_kernel_routes_removes_them() {
    if !nft_usable("a_reload_changes_the_rules") {
        return;
    }
    let (name, _table) = instance("e");
    let table = format!("gatehouse_{name}");
    let port = free_port();
    let word = |w: &'static str| {
        thread_backend("127.0.0.1:0", move |mut s| {
            let _ = s.write_all(w.as_bytes());
        })
    };
    let (first, second) = (word("first"), word("second"));
    let get = |at: SocketAddr| {
        let mut s = TcpStream::connect(at).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        got
    };
    let gh = Gatehouse::start(&kernel_config(&name, port, first, "kernel"));
    let at: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get(at), "first");
    let (status, _) = gh.reload(&kernel_config(&name, port, second, "kernel"));
    assert_eq!(status, 200);
    assert_eq!(get(at), "second");
    assert_eq!(rules_in(&table), 2);
    // The same route in user space: the table goes, the listener serves.
    let (status, _) = gh.reload(&kernel_config(&name, port, first, "user"));
    assert_eq!(status, 200);
    assert_eq!(tables_named(&table), 0);
    assert_eq!(get(at), "first");
    assert_eq!(gh.metric("gatehouse_connections_accepted_total", &[]), 1);
    assert_accounted(&gh);
}

#[test]
fn check_refuses_what_the_kernel_cannot_do_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kernel.toml");
    std::fs::write(
        &path,
        r#"[[listeners]]
name = "in"
bind = "127.0.0.1:19000"
proxy_protocol.trusted = ["127.0.0.0/8"]

[[listeners]]
name = "tls"
bind = "127.0.0.1:19005"
protocol = "tls"

[[routes]]
name = "a"
match.listener = "in"
action.forward = ["127.0.0.1:19001"]
action.engine = "kernel"
action.send_proxy_protocol = "v2"
policy.idle_timeout = "5s"

[[routes]]
name = "b"
match.listener = "tls"
tls = "passthrough"
action.forward = ["backend.internal:19001"]
action.engine = "kernel"

[[listeners]]
name = "plain"
bind = "127.0.0.1:19006"

[[routes]]
name = "c"
match.listener = "plain"
match.client_cidrs = ["fd00::/8"]
action.forward = ["127.0.0.1:19001"]
action.engine = "kernel"
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let file = path.display().to_string();
    for want in [
        format!(
            "{file}:15: routes[0].match.listener: the kernel cannot read PROXY protocol headers"
        ),
        format!(
            "{file}:16: routes[0].action.send_proxy_protocol: the kernel cannot send a PROXY protocol header"
        ),
        format!(
            "{file}:17: routes[0].policy.idle_timeout: the kernel keeps no per-connection policy"
        ),
        format!("{file}:22: routes[1].tls: the kernel does no TLS"),
        format!(
            "{file}:23: routes[1].action.forward[0]: \"backend.internal:19001\": the kernel forwards to an IP address"
        ),
        format!("{file}:24: routes[1].match.listener: the kernel forwards bytes unread"),
        format!(
            "{file}:33: routes[2].match.client_cidrs: no network of the listener's address family"
        ),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn without_net_admin_a_kernel_route_falls_back_with_a_warning_and_a_strict_one_stops() {
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIPPED: setpriv (util-linux) is not installed");
        return;
    }
    let drop_cap = [
        "setpriv",
        "--inh-caps=-net_admin",
        "--bounding-set=-net_admin",
    ];
    let (name, _table) = instance("f");
    let port = free_port();
    let backend = echo_backend();
    let gh = Gatehouse::start_with(
        &kernel_config(&name, port, backend, "kernel"),
        &[],
        &drop_cap,
    );
    gh.wait_log(
        "kernel path unavailable: these routes are forwarded in user space",
        Duration::from_secs(5),
    );
    echo_through(format!("127.0.0.1:{port}").parse().unwrap(), 200_000, 4);
    let text = gh.get("/metrics");
    assert_eq!(metric_sum(&text, "gatehouse_kernel_active", &[]), 0);
    assert_eq!(
        metric_sum(&text, "gatehouse_connections_accepted_total", &[]),
        1,
        "the user-space path took it"
    );
    let warnings = gh
        .log_text()
        .lines()
        .filter(|l| l.contains("kernel path unavailable"))
        .count();
    assert_eq!(warnings, 1);
    let (_, v) = gh.admin_call("GET", "/v1/routes", "");
    assert_eq!(v["routes"][0]["engine"], "user");
    assert_accounted(&gh);
    drop(gh);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strict.toml");
    std::fs::write(
        &path,
        kernel_config(&name, free_port(), backend, "kernel_strict"),
    )
    .unwrap();
    let out = Command::new(drop_cap[0])
        .args(&drop_cap[1..])
        .arg(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("need the kernel path (engine = \"kernel_strict\"), which is unavailable"),
        "{err}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");
}

/// The table named in the log line that put it in force.
fn table_of(gh: &Gatehouse) -> String {
    gh.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "kernel path: nftables forwards these routes")
        .and_then(|v| Some(v["table"].as_str()?.to_owned()))
        .unwrap()
}

#[test]
fn across_a_handover_the_table_stays_when_the_successor_uses_it_and_goes_when_not() {
    if !nft_usable("across_a_handover") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("handover.sock");
    let sock = sock.to_str().unwrap();
    let port = free_port();
    let at: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let backend = echo_backend();
    // The same instance: one table, kept by the old process's exit.
    let (name, _table) = instance("g");
    let config = kernel_config(&name, port, backend, "kernel");
    let old = Gatehouse::start_with_env(&config, &[("GATEHOUSE_HANDOVER", sock)]);
    let new = Gatehouse::start_with_env(
        &config,
        &[("GATEHOUSE_HANDOVER", sock), ("GATEHOUSE_TAKEOVER", "true")],
    );
    new.wait_log("took over from the old process", Duration::from_secs(5));
    assert!(old.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(tables_named(&format!("gatehouse_{name}")), 1);
    echo_through(at, 100_000, 5);
    // A successor with a table of another name (no `instance`, another
    // config file): the old process removes its own as it exits.
    let unnamed = config.replace(&format!("instance = \"{name}\""), "");
    let next = Gatehouse::start_with_env(
        &unnamed,
        &[("GATEHOUSE_HANDOVER", sock), ("GATEHOUSE_TAKEOVER", "true")],
    );
    let next_table = table_of(&next);
    let _next_guard = TestTable(next_table.clone());
    next.wait_log("took over from the old process", Duration::from_secs(5));
    assert!(new.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(tables_named(&format!("gatehouse_{name}")), 0);
    assert_eq!(tables_named(&next_table), 1);
    echo_through(at, 100_000, 6);
    assert!(next.terminate(Duration::from_secs(10)).success());
    assert_eq!(tables_named(&next_table), 0);
}

#[test]
fn an_ipv6_kernel_route_forwards_and_counts_too() {
    if !nft_usable("an_ipv6_kernel_route_forwards_and_counts_too") {
        return;
    }
    let Ok(probe) = TcpListener::bind("[::1]:0") else {
        eprintln!("SKIPPED an_ipv6_kernel_route_forwards_and_counts_too: no IPv6 loopback");
        return;
    };
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let backend = thread_backend("[::1]:0", echo);
    let (name, _table) = instance("h");
    let config = kernel_config_on(
        &name,
        &format!("[::1]:{port}"),
        &backend.to_string(),
        "kernel",
    );
    let gh = Gatehouse::start(&config);
    echo_through(format!("[::1]:{port}").parse().unwrap(), 1 << 20, 8);
    assert_eq!(
        gh.metric("gatehouse_kernel_connections_total", &[("route", "fast")]),
        1
    );
    assert_eq!(gh.metric("gatehouse_connections_accepted_total", &[]), 0);
    assert!(gh.terminate(Duration::from_secs(10)).success());
}

#[test]
fn a_kernel_route_limit_resets_connections_over_it() {
    if !nft_usable("a_kernel_route_limit_resets_connections_over_it") {
        return;
    }
    let (name, _table) = instance("i");
    let port = free_port();
    let config =
        kernel_config(&name, port, echo_backend(), "kernel") + "policy.max_connections = 2\n";
    let gh = Gatehouse::start(&config);
    let at: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let open = |n: u8| {
        let mut s = TcpStream::connect(at)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(&[n])?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        assert_eq!(b[0], n);
        Ok::<_, std::io::Error>(s)
    };
    let first = open(1).unwrap();
    let _second = open(2).unwrap();
    let third = open(3);
    assert!(third.is_err(), "a third connection is reset");
    gh.wait_for("the reset counted", Duration::from_secs(5), |g| {
        g.get("/metrics").contains(
            "gatehouse_kernel_connection_ends_total{route=\"fast\",reason=\"limit_route\",side=\"proxy\"} 1\n",
        )
    });
    // One closes: once conntrack shows it closed, a new one fits again.
    drop(first);
    gh.wait_for("the first one's end", Duration::from_secs(5), |g| {
        g.get("/metrics").contains(
            "gatehouse_kernel_connection_ends_total{route=\"fast\",reason=\"closed\",side=\"unknown\"} 1\n",
        )
    });
    let again = open(4).ok();
    assert!(again.is_some(), "room again once one closed");
    assert_eq!(
        gh.metric("gatehouse_kernel_connections_total", &[("route", "fast")]),
        3
    );
    assert!(gh.terminate(Duration::from_secs(10)).success());
}
