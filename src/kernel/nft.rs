//! The nftables side: the table's whole ruleset as one `nft -j` batch
//! (built as JSON, checked against the `nftables` crate's schema, applied
//! in one transaction), removing it, finding it, and reading the rules'
//! counters. Nothing here touches a table but the one it is given.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nftables::schema::{NfListObject, NfObject, Nftables};
use nftables::stmt::{Counter, Statement};
use serde_json::{Value, json};

use crate::config::KernelRoute;

/// Why nftables could not be used, in the words `nft` gave.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NftError(String);

/// How long one `nft` run may take: a reload, or the shutdown, waits for
/// it.
const NFT_DEADLINE: Duration = Duration::from_secs(10);

/// Runs `nft -j ARGS` (with `input` on its standard input): its output.
/// Killed at `NFT_DEADLINE`.
fn nft(args: &[&str], input: Option<String>) -> Result<String, NftError> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("nft")
        .arg("-j")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NftError(format!("cannot run nft: {e}")))?;
    let pid = rustix::process::Pid::from_child(&child);
    // (Fed and waited for on a thread of its own: the wait has a deadline.)
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            // (A failed write shows in nft's answer.)
            let _ = stdin.write_all(text.as_bytes());
        }
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(NFT_DEADLINE) {
        Ok(out) => out,
        Err(_) => {
            // (Not reaped yet: the number is still the child's.)
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let _ = rx.recv();
            return Err(NftError(format!(
                "nft: no answer within {} s",
                NFT_DEADLINE.as_secs()
            )));
        }
    }
    .map_err(|e| NftError(format!("nft: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("failed");
        return Err(NftError(format!("nft: {}", first.trim())));
    }
    String::from_utf8(out.stdout).map_err(|e| NftError(format!("nft: {e}")))
}

/// `nft -j list …`, read through the crate's schema.
fn list(args: &[&str]) -> Result<Nftables<'static>, NftError> {
    let text = nft(args, None)?;
    serde_json::from_str(&text).map_err(|e| NftError(format!("nft output: {e}")))
}

/// Replaces the table `name` (if it is there) by one holding `routes`'
/// rules, in one transaction: no moment without rules, none twice.
pub fn replace(name: &str, routes: &[(String, KernelRoute)]) -> Result<(), NftError> {
    let t = |extra: Value| {
        let mut v = json!({ "family": "inet", "table": name });
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        v
    };
    let table = json!({ "family": "inet", "name": name });
    let mut cmds = vec![
        // (Adding first makes the delete valid where there was none.)
        json!({ "add": { "table": table } }),
        json!({ "delete": { "table": table } }),
        json!({ "add": { "table": table } }),
    ];
    for (chain, hook, prio) in [
        ("prerouting", "prerouting", -100),
        ("output", "output", -100),
        ("postrouting", "postrouting", 100),
    ] {
        cmds.push(json!({ "add": { "chain": t(json!({
            "name": chain, "type": "nat", "hook": hook, "prio": prio, "policy": "accept"
        })) } }));
    }
    if routes.iter().any(|(_, k)| k.max_connections.is_some()) {
        // (Filter chains after conntrack, before the NAT ones: a
        // connection over the limit is reset before it is translated.)
        for hook in ["prerouting", "output"] {
            let chain = format!("{LIMIT_CHAIN}{hook}");
            cmds.push(json!({ "add": { "chain": t(json!({
                "name": chain, "type": "filter", "hook": hook, "prio": -150, "policy": "accept"
            })) } }));
        }
    }
    for (route, k) in routes {
        if let Some(max) = k.max_connections {
            for hook in ["prerouting", "output"] {
                cmds.push(json!({ "add": { "rule": t(json!({
                    "chain": format!("{LIMIT_CHAIN}{hook}"), "comment": route, "expr": limit_rule(k, max)
                })) } }));
            }
        }
        for chain in ["prerouting", "output"] {
            cmds.push(json!({ "add": { "rule": t(json!({
                "chain": chain, "comment": route, "expr": dnat_rule(k)
            })) } }));
        }
        if !k.target.ip().is_loopback() {
            cmds.push(json!({ "add": { "rule": t(json!({
                "chain": "postrouting", "comment": route, "expr": masquerade_rule(k)
            })) } }));
        }
    }
    apply(json!({ "nftables": cmds }))
}

/// Removes the table `name` if it is there.
pub fn remove(name: &str) -> Result<(), NftError> {
    let table = json!({ "family": "inet", "name": name });
    apply(json!({ "nftables": [
        { "add": { "table": table } },
        { "delete": { "table": table } },
    ] }))
}

/// Whether the table `name` is there.
pub fn exists(name: &str) -> Result<bool, NftError> {
    let found = list(&["list", "tables"])?;
    Ok(found.objects.iter().any(|o| match o {
        NfObject::ListObject(NfListObject::Table(t)) => t.name == name,
        _ => false,
    }))
}

/// What the rules' counters say, by route name (their packets: a chain
/// sees the first packet of a connection only).
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Connections each route's DNAT rules took.
    pub taken: Vec<(String, u64)>,
    /// Connections each route's limit rules reset.
    pub reset: Vec<(String, u64)>,
}

/// The counters of the table `name`'s rules.
pub fn counters(name: &str) -> Result<Counters, NftError> {
    let found = list(&["list", "table", "inet", name])?;
    let mut out = Counters::default();
    for o in found.objects.iter() {
        let NfObject::ListObject(NfListObject::Rule(r)) = o else {
            continue;
        };
        let Some(route) = &r.comment else {
            continue;
        };
        let packets: u64 = r
            .expr
            .iter()
            .filter_map(|s| match s {
                Statement::Counter(Counter::Anonymous(Some(c))) => c.packets,
                _ => None,
            })
            .map(|p| p as u64)
            .sum();
        let into = if r.chain.starts_with(LIMIT_CHAIN) {
            &mut out.reset
        } else {
            &mut out.taken
        };
        match into.iter_mut().find(|(n, _)| n == route) {
            Some((_, n)) => *n += packets,
            None => into.push((route.to_string(), packets)),
        }
    }
    Ok(out)
}

fn apply(batch: Value) -> Result<(), NftError> {
    // (Checked against the schema, then written as the schema writes it.)
    let typed: Nftables =
        serde_json::from_value(batch).map_err(|e| NftError(format!("batch: {e}")))?;
    let text = serde_json::to_string(&typed).map_err(|e| NftError(format!("batch: {e}")))?;
    nft(&["-f", "-"], Some(text)).map(drop)
}

fn family(ip: IpAddr) -> (&'static str, &'static str) {
    match ip {
        IpAddr::V4(_) => ("ip", "ipv4"),
        IpAddr::V6(_) => ("ip6", "ipv6"),
    }
}

fn eq(left: Value, right: Value) -> Value {
    json!({ "match": { "op": "==", "left": left, "right": right } })
}

fn ports(first: u16, last: u16) -> Value {
    if first == last {
        json!(first)
    } else {
        json!({ "range": [first, last] })
    }
}

/// The start of the limit chains' names (then the hook's).
const LIMIT_CHAIN: &str = "limit_";

/// New connections over a route's limit, reset.
fn limit_rule(k: &KernelRoute, max: u32) -> Vec<Value> {
    let mut expr = matches(k);
    expr.push(
        json!({ "match": { "op": "in", "left": { "ct": { "key": "state" } }, "right": "new" } }),
    );
    expr.push(json!({ "ct count": { "val": max, "inv": true } }));
    expr.push(json!({ "counter": null }));
    expr.push(json!({ "reject": { "type": "tcp reset" } }));
    expr
}

/// What a kernel route's connections match, then DNAT to its target.
fn dnat_rule(k: &KernelRoute) -> Vec<Value> {
    let mut expr = matches(k);
    expr.push(json!({ "counter": null }));
    expr.push(json!({ "dnat": target(k) }));
    expr
}

/// What a kernel route's connections match.
fn matches(k: &KernelRoute) -> Vec<Value> {
    let (proto, nfproto) = family(k.listen.ip());
    let mut expr = Vec::new();
    if k.listen.ip().is_unspecified() {
        expr.push(eq(json!({ "meta": { "key": "nfproto" } }), json!(nfproto)));
        expr.push(eq(
            json!({ "fib": { "result": "type", "flags": ["daddr"] } }),
            json!("local"),
        ));
    } else {
        expr.push(eq(
            json!({ "payload": { "protocol": proto, "field": "daddr" } }),
            json!(k.listen.ip().to_string()),
        ));
    }
    expr.push(eq(
        json!({ "payload": { "protocol": "tcp", "field": "dport" } }),
        ports(k.listen.port(), k.last_port),
    ));
    // (Those of the other family never match: `check` refuses a list
    // without one of this family.)
    let clients: Vec<Value> = k
        .clients
        .iter()
        .filter(|n| n.addr().is_ipv4() == k.listen.is_ipv4())
        .map(|n| json!({ "prefix": { "addr": n.network().to_string(), "len": n.prefix_len() } }))
        .collect();
    if !clients.is_empty() {
        expr.push(eq(
            json!({ "payload": { "protocol": proto, "field": "saddr" } }),
            json!({ "set": clients }),
        ));
    }
    expr
}

fn target(k: &KernelRoute) -> Value {
    let (proto, _) = family(k.target.ip());
    if k.is_range() {
        // Each port to the same port.
        json!({ "family": proto, "addr": k.target.ip().to_string() })
    } else {
        json!({ "family": proto, "addr": k.target.ip().to_string(), "port": k.target.port() })
    }
}

/// Connections DNATed to a target on another host leave with this host's
/// address, so that the answers come back through it.
fn masquerade_rule(k: &KernelRoute) -> Vec<Value> {
    let (proto, _) = family(k.target.ip());
    // (A range's target has the same ports.)
    let last = if k.is_range() {
        k.last_port
    } else {
        k.target.port()
    };
    vec![
        json!({ "match": { "op": "in", "left": { "ct": { "key": "status" } }, "right": "dnat" } }),
        eq(
            json!({ "payload": { "protocol": proto, "field": "daddr" } }),
            json!(k.target.ip().to_string()),
        ),
        eq(
            json!({ "payload": { "protocol": "tcp", "field": "dport" } }),
            ports(k.target.port(), last),
        ),
        json!({ "masquerade": null }),
    ]
}

/// Whether a flow's original destination and answering source are `k`'s:
/// a connection of that route.
pub fn takes(k: &KernelRoute, dst: SocketAddr, answered_by: SocketAddr) -> bool {
    // (A range's target has the same ports.)
    let want_port = if k.is_range() {
        dst.port()
    } else {
        k.target.port()
    };
    (k.listen.port()..=k.last_port).contains(&dst.port())
        && (k.listen.ip().is_unspecified() || dst.ip() == k.listen.ip())
        && dst.is_ipv4() == k.listen.is_ipv4()
        && answered_by == SocketAddr::new(k.target.ip(), want_port)
}
