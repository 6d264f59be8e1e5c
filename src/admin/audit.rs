//! The leak audit (`GET /v1/audit`, the `gatehouse_audit_mismatches`
//! metric): the connection table and the upstream pools compared with
//! the process's open descriptors (`/proc/self/fd`) and the kernel's view
//! of its sockets (`/proc/self/net/tcp`, `tcp6`). Every mismatch is
//! reported with the socket's addresses:
//! - `close_wait`: a socket whose peer has closed and the process has not;
//! - `unowned_client_socket`: an accepted socket with no live connection;
//! - `entry_without_socket`: a live connection whose socket is gone;
//! - `unowned_upstream_socket`: more sockets to an address than the pools
//!   (idle or in use), the L4 connections and the health probes hold;
//! - `stray_listener`: more listening sockets than listeners;
//! - `unowned_pipe`: more pipes than the splice pool has made.
//!
//! What the process is doing while it looks (a connection accepted
//! between two reads) can look like a mismatch for a moment: a first look
//! that finds any is followed by a second a moment later, and only what
//! both find is reported.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::conn::ConnState;
use crate::http::Plane;

/// Between the two looks.
const SECOND_LOOK: Duration = Duration::from_millis(250);
/// Between two audits run on their own (for the metric).
pub const EVERY: Duration = Duration::from_secs(60);

/// Mismatches found by the last audit (`gatehouse_audit_mismatches`).
static LAST: AtomicU64 = AtomicU64::new(0);
static RUNS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Finding {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_state: Option<&'static str>,
    pub detail: String,
    /// What makes it the same finding in both looks.
    #[serde(skip)]
    key: String,
}

/// What the process holds, as counted by the second look.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub descriptors: usize,
    pub tcp_sockets: usize,
    pub listening: usize,
    pub accepted: usize,
    pub outgoing: usize,
    pub other_sockets: usize,
    pub pipes: usize,
    pub connections: usize,
    pub upstream_pooled_or_in_use: usize,
    pub splice_pipes: usize,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = AuditReport)]
pub struct Report {
    pub mismatches: usize,
    pub findings: Vec<Finding>,
    pub counts: Counts,
}

/// One TCP socket in the kernel's tables.
#[derive(Debug, Clone, Copy)]
struct Sock {
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
}

const ESTABLISHED: u8 = 0x01;
const SYN_SENT: u8 = 0x02;
const CLOSE_WAIT: u8 = 0x08;
const LISTEN: u8 = 0x0A;

fn state_name(s: u8) -> &'static str {
    match s {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// Runs the audit (two looks when the first finds anything) and records
/// its count for the metric.
pub async fn run(plane: &Plane, admin: SocketAddr) -> Report {
    let first = look(plane, admin);
    let report = if first.findings.is_empty() {
        first
    } else {
        tokio::time::sleep(SECOND_LOOK).await;
        let keys: HashSet<String> = first.findings.into_iter().map(|f| f.key).collect();
        let mut second = look(plane, admin);
        second.findings.retain(|f| keys.contains(&f.key));
        second.mismatches = second.findings.len();
        second
    };
    LAST.store(report.mismatches as u64, Ordering::Relaxed);
    RUNS.fetch_add(1, Ordering::Relaxed);
    if report.mismatches > 0 {
        tracing::warn!(
            mismatches = report.mismatches,
            first = ?report.findings.first(),
            "leak audit: mismatches between the connection table and the process's sockets"
        );
    }
    report
}

/// Audits every `EVERY`, for the metric.
pub async fn periodic(plane: std::sync::Arc<Plane>, admin: SocketAddr) {
    loop {
        tokio::time::sleep(EVERY).await;
        if plane.rt.shutdown.is_draining() {
            return;
        }
        run(&plane, admin).await;
    }
}

pub fn render_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let _ = write!(
        out,
        "# HELP gatehouse_audit_mismatches Mismatches the last leak audit found between the connection table and pools and the process's sockets and pipes (GET /v1/audit; one runs every {}s).\n\
         # TYPE gatehouse_audit_mismatches gauge\ngatehouse_audit_mismatches {}\n\
         # HELP gatehouse_audit_runs_total Leak audits run.\n# TYPE gatehouse_audit_runs_total counter\ngatehouse_audit_runs_total {}\n",
        EVERY.as_secs(),
        LAST.load(Ordering::Relaxed),
        RUNS.load(Ordering::Relaxed),
    );
}

/// The pipes the process had when it started (inherited from whatever
/// started it, like a build tool's job server): not the process's own.
static INHERITED_PIPES: std::sync::OnceLock<HashSet<String>> = std::sync::OnceLock::new();

/// Notes the pipes inherited at start; called before anything is opened.
pub fn note_start() {
    let mut pipes = HashSet::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for entry in dir.flatten() {
            if let Ok(target) = std::fs::read_link(entry.path()) {
                let target = target.to_string_lossy().into_owned();
                if target.starts_with("pipe:[") {
                    pipes.insert(target);
                }
            }
        }
    }
    let _ = INHERITED_PIPES.set(pipes);
}

/// The process's descriptors: socket inodes, and how many pipes and others.
fn descriptors() -> (HashSet<u64>, usize, usize) {
    let inherited = INHERITED_PIPES.get();
    let mut sockets = HashSet::new();
    let (mut pipes, mut total) = (0, 0);
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return (sockets, 0, 0);
    };
    for entry in dir.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // (the directory's own descriptor, closed by now)
        };
        total += 1;
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse().ok())
        {
            sockets.insert(inode);
        } else if target.starts_with("pipe:[") && !inherited.is_some_and(|i| i.contains(&*target)) {
            pipes += 1;
        }
    }
    (sockets, pipes, total)
}

/// `/proc/self/net/tcp` or `tcp6`: inode → socket.
fn tcp_table(path: &str, out: &mut HashMap<u64, Sock>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let (Some(local), Some(remote), Ok(state), Ok(inode)) = (
            parse_addr(f[1]),
            parse_addr(f[2]),
            u8::from_str_radix(f[3], 16),
            f[9].parse::<u64>(),
        ) else {
            continue;
        };
        if inode != 0 {
            out.insert(
                inode,
                Sock {
                    local,
                    remote,
                    state,
                },
            );
        }
    }
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit
/// word in the host's byte order. IPv4-mapped addresses come back as IPv4.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b)).to_canonical()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn finding(kind: &'static str, s: Option<&Sock>, detail: String, key: String) -> Finding {
    Finding {
        kind,
        local: s.map(|s| s.local.to_string()),
        peer: s.map(|s| s.remote.to_string()),
        tcp_state: s.map(|s| state_name(s.state)),
        detail,
        key: format!("{kind} {key}"),
    }
}

/// One look at the table, the pools and the process's sockets.
fn look(plane: &Plane, admin: SocketAddr) -> Report {
    let rt = &plane.rt;
    let snap = rt.snapshot();
    // (The table and pools first: a connection made after them shows as
    // a socket with no owner in this look, not in the next.)
    let rows = rt.table.audit_rows();
    let pooled = crate::http::pool::open_by_address();
    let splice_pipes = crate::splice::pipes_existing();
    let (inodes, pipes, total) = descriptors();
    let mut kernel = HashMap::new();
    tcp_table("/proc/self/net/tcp", &mut kernel);
    tcp_table("/proc/self/net/tcp6", &mut kernel);
    let ours: Vec<(u64, Sock)> = inodes
        .iter()
        .filter_map(|i| kernel.get(i).map(|s| (*i, *s)))
        .collect();

    let mut findings = Vec::new();
    let mut counts = Counts {
        descriptors: total,
        tcp_sockets: ours.len(),
        other_sockets: inodes.len() - ours.len(),
        pipes,
        connections: rows.len(),
        upstream_pooled_or_in_use: pooled.values().sum(),
        splice_pipes,
        ..Counts::default()
    };

    let listening: Vec<SocketAddr> = ours
        .iter()
        .filter(|(_, s)| s.state == LISTEN)
        .map(|(_, s)| s.local)
        .collect();
    counts.listening = listening.len();
    let expected = snap.listeners.len() + 1;
    if listening.len() > expected {
        let all: Vec<String> = listening.iter().map(ToString::to_string).collect();
        findings.push(finding(
            "stray_listener",
            None,
            format!(
                "{} listening sockets for {expected} listeners (the admin's included): {}",
                listening.len(),
                all.join(", ")
            ),
            all.join(","),
        ));
    }
    let accepted_on = |local: SocketAddr| {
        listening
            .iter()
            .any(|l| l.port() == local.port() && (l.ip().is_unspecified() || l.ip() == local.ip()))
    };

    let peers: HashSet<SocketAddr> = rows.iter().map(|r| canonical(r.peer)).collect();
    let mut client_peers = HashSet::new();
    let mut outgoing: HashMap<SocketAddr, Vec<(u64, Sock)>> = HashMap::new();
    for (inode, s) in &ours {
        if s.state == CLOSE_WAIT {
            findings.push(finding(
                "close_wait",
                Some(s),
                "the peer closed its side and the process has not closed the socket".into(),
                inode.to_string(),
            ));
        }
        if s.state == LISTEN {
            continue;
        }
        if accepted_on(s.local) {
            counts.accepted += 1;
            if s.local.port() == admin.port() {
                continue; // (the admin listener's own connections)
            }
            client_peers.insert(s.remote);
            if !peers.contains(&s.remote) && s.state != CLOSE_WAIT {
                findings.push(finding(
                    "unowned_client_socket",
                    Some(s),
                    "an accepted socket with no live connection in the table".into(),
                    inode.to_string(),
                ));
            }
        } else if s.state != SYN_SENT {
            counts.outgoing += 1;
            outgoing.entry(s.remote).or_default().push((*inode, *s));
        }
    }

    for r in &rows {
        if !client_peers.contains(&canonical(r.peer)) && r.state != ConnState::Closed {
            findings.push(finding(
                "entry_without_socket",
                None,
                format!(
                    "connection from {} on listener {} ({}) is in the table, its socket is not open",
                    r.peer,
                    r.listener,
                    r.state.as_str()
                ),
                r.peer.to_string(),
            ));
        }
    }

    let owners = upstream_owners(&snap, &rows, pooled);
    for (to, socks) in &outgoing {
        let held = owners.get(to).copied().unwrap_or(0);
        if socks.len() <= held {
            continue;
        }
        // Established ones are reported (close_wait ones already are).
        for (inode, s) in socks.iter().filter(|(_, s)| s.state == ESTABLISHED) {
            findings.push(finding(
                "unowned_upstream_socket",
                Some(s),
                format!(
                    "{} sockets to {to}; its pools, connections and probes hold {held}",
                    socks.len()
                ),
                inode.to_string(),
            ));
        }
    }

    if pipes > 2 * splice_pipes {
        findings.push(finding(
            "unowned_pipe",
            None,
            format!(
                "{pipes} pipe descriptors; the splice pool made {splice_pipes} pipes (two each)"
            ),
            String::new(),
        ));
    }

    Report {
        mismatches: findings.len(),
        findings,
        counts,
    }
}

/// Who may hold a socket to each upstream address: its pools (idle or in
/// use), the L4 connections and tunnels forwarding to it, and one health
/// probe where it is probed (a cluster's `health`, or a registered
/// instance's hint).
fn upstream_owners(
    snap: &crate::runtime::Snapshot,
    rows: &[crate::conn::AuditRow],
    pooled: HashMap<SocketAddr, usize>,
) -> HashMap<SocketAddr, usize> {
    let mut owners: HashMap<SocketAddr, usize> =
        pooled.into_iter().map(|(a, n)| (canonical(a), n)).collect();
    for r in rows {
        let Some(up) = r.upstream else { continue };
        let http = snap
            .listener(&r.listener)
            .is_some_and(|l| l.config.http.is_some());
        if !http || matches!(r.state, ConnState::Upgraded | ConnState::Draining) {
            *owners.entry(canonical(up)).or_default() += 1;
        }
    }
    for c in &snap.clusters {
        let checked = c.config.policy.health.is_some();
        for e in &c.endpoints().endpoints {
            if checked || e.health_path.is_some() {
                *owners.entry(canonical(e.addr)).or_default() += 1;
            }
        }
    }
    owners
}

/// A test hook (`GATEHOUSE_TEST_HOOKS=1`): a connection to `to` that
/// nothing owns, its descriptor forgotten: what the audit must find.
pub fn leak_socket(to: SocketAddr) -> std::io::Result<SocketAddr> {
    let s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    let local = s.local_addr()?;
    std::mem::forget(s);
    Ok(local)
}

pub fn test_hooks() -> bool {
    std::env::var_os("GATEHOUSE_TEST_HOOKS").is_some_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_addresses_parse() {
        assert_eq!(
            parse_addr("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_addr("00000000000000000000000001000000:0050"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            parse_addr("0000000000000000FFFF00000100007F:0050"),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(parse_addr("zz:1"), None);
    }
}
