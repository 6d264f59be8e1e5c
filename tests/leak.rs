//! 10,000 connections mixing normal transfers, client aborts
//! (RST and FIN) mid-stream, backends resetting, unreachable and refused
//! backends, half-closes and idle timeouts. Afterwards the Gatehouse process
//! has its baseline FD count, no socket in CLOSE_WAIT, an empty table, and
//! accepted = sum of closed by reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const TOTAL: usize = 10_000;

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Reads a little, then resets the connection (SO_LINGER 0).
async fn resetting_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"partial").await;
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            });
        }
    });
    addr
}

async fn read_all(s: &mut TcpStream) -> std::io::Result<usize> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut n = 0;
    loop {
        match s.read(&mut buf).await? {
            0 => return Ok(n),
            k => n += k,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Transfer,
    HalfClose,
    AbortRst,
    AbortFin,
    BackendReset,
    Unreachable,
    Refused,
    Idle,
}

fn kind_of(i: usize) -> Kind {
    match i % 20 {
        0..=6 => Kind::Transfer,
        7 => Kind::HalfClose,
        8..=10 => Kind::AbortRst,
        11..=12 => Kind::AbortFin,
        13..=14 => Kind::BackendReset,
        15 => Kind::Unreachable,
        16..=17 => Kind::Refused,
        _ => Kind::Idle,
    }
}

async fn one(kind: Kind, addrs: &[SocketAddr; 5], i: usize, failures: &AtomicU64) {
    let target = match kind {
        Kind::Transfer | Kind::HalfClose | Kind::AbortRst | Kind::AbortFin => addrs[0],
        Kind::BackendReset => addrs[1],
        Kind::Unreachable => addrs[2],
        Kind::Refused => addrs[3],
        Kind::Idle => addrs[4],
    };
    let Ok(mut s) = TcpStream::connect(target).await else {
        failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let size = 1 + (i * 7919) % 65_536;
    let data = vec![(i % 251) as u8; size];
    let ok = match kind {
        Kind::Transfer | Kind::HalfClose => {
            let (mut r, mut w) = s.split();
            let write = async {
                w.write_all(&data).await?;
                w.shutdown().await
            };
            let read = async {
                let mut buf = vec![0u8; 16 * 1024];
                let mut n = 0;
                loop {
                    match r.read(&mut buf).await? {
                        0 => return Ok::<usize, std::io::Error>(n),
                        k => n += k,
                    }
                }
            };
            let (w, r) = tokio::join!(write, read);
            let ok = w.is_ok() && r.as_ref().is_ok_and(|n| *n == size);
            if !ok {
                eprintln!("connection {i}: write {w:?}, read {r:?} of {size}");
            }
            ok
        }
        Kind::AbortRst => {
            let _ = s.write_all(&data).await;
            let mut buf = [0u8; 100];
            let _ = s.read(&mut buf).await;
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            true
        }
        Kind::AbortFin => {
            let _ = s.write_all(&data[..size / 2]).await;
            true
        }
        Kind::BackendReset => {
            let _ = s.write_all(b"hello").await;
            // Ends with EOF or reset, never hangs.
            let _ = read_all(&mut s).await;
            true
        }
        // Closed by the proxy (EOF, or a reset racing our read) without data.
        Kind::Unreachable | Kind::Refused => !matches!(read_all(&mut s).await, Ok(n) if n > 0),
        Kind::Idle => {
            let _ = s.write_all(b"x").await;
            let mut b = [0u8; 1];
            let got = s.read_exact(&mut b).await;
            // Then nothing: the idle timeout must close it.
            let rest = read_all(&mut s).await;
            if got.is_err() || !rest.as_ref().is_ok_and(|n| *n == 0) {
                eprintln!("connection {i}: echo {got:?}, then {rest:?}");
            }
            got.is_ok() && rest.is_ok_and(|n| n == 0)
        }
    };
    if !ok {
        failures.fetch_add(1, Ordering::Relaxed);
        eprintln!("connection {i} ({kind:?}) did not behave");
    }
}

#[test]
fn ten_thousand_faulty_connections_leave_nothing_behind() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (echo, reset) = rt.block_on(async { (echo_server().await, resetting_server().await) });
    let hole = blackhole();
    let refused = refused_addr();
    let config = format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 1
timeouts.idle = "5s"
limits.max_connections = 20000

[[listeners]]
name = "echo"
bind = "127.0.0.1:0"
[[listeners]]
name = "reset"
bind = "127.0.0.1:0"
[[listeners]]
name = "hole"
bind = "127.0.0.1:0"
[[listeners]]
name = "refused"
bind = "127.0.0.1:0"
[[listeners]]
name = "idle"
bind = "127.0.0.1:0"

[[routes]]
name = "echo"
match.listener = "echo"
action.forward = ["{echo}"]
[[routes]]
name = "reset"
match.listener = "reset"
action.forward = ["{reset}"]
[[routes]]
name = "hole"
match.listener = "hole"
action.forward = ["{hole}"]
policy.connect_timeout = "300ms"
[[routes]]
name = "refused"
match.listener = "refused"
action.forward = ["{refused}"]
[[routes]]
name = "idle"
match.listener = "idle"
action.forward = ["{echo}"]
policy.idle_timeout = "1s"
"#,
        hole = hole.addr,
        refused = refused.addr
    );
    let gh = Gatehouse::start(&config);
    let baseline = gh.fd_count();
    // A reload every second throughout: it must change nothing below.
    let reloads = gh.reload_every(Duration::from_secs(1), &config, "echo");
    let addrs = [
        gh.addr("echo"),
        gh.addr("reset"),
        gh.addr("hole"),
        gh.addr("refused"),
        gh.addr("idle"),
    ];

    let failures = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let slots = Arc::new(Semaphore::new(200));
        let mut tasks = Vec::with_capacity(TOTAL);
        for i in 0..TOTAL {
            let permit = slots.clone().acquire_owned().await.unwrap();
            let failures = failures.clone();
            tasks.push(tokio::spawn(async move {
                let kind = kind_of(i);
                if tokio::time::timeout(Duration::from_secs(20), one(kind, &addrs, i, &failures))
                    .await
                    .is_err()
                {
                    eprintln!("connection {i} ({kind:?}) hung");
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert!(reloads.stop() > 0, "no reload during the run");
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        gh.wait_empty(Duration::from_secs(5));
        let m = gh.get("/metrics");
        let closed: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("gatehouse_connections_closed_total"))
            .collect();
        panic!(
            "{failed} connections misbehaved; proxy saw:\n{}",
            closed.join("\n")
        );
    }

    gh.wait_empty(Duration::from_secs(5));
    // Pooled splice pipes (two FDs each) are closed after 2 s unused.
    gh.wait_for(
        "the splice pipe pool to empty",
        Duration::from_secs(5),
        |g| g.metric("gatehouse_splice_pipes", &[("state", "existing")]) == 0,
    );
    let after = gh.fd_count();
    if after.abs_diff(baseline) > 3 {
        for e in std::fs::read_dir(format!("/proc/{}/fd", gh.pid()))
            .unwrap()
            .flatten()
        {
            eprintln!(
                "fd {:?} -> {:?}",
                e.file_name(),
                std::fs::read_link(e.path())
            );
        }
        eprintln!("{}", gh.get("/metrics"));
    }
    assert!(
        after.abs_diff(baseline) <= 3,
        "fds: baseline {baseline}, after {after}"
    );
    assert_eq!(gh.close_wait(), 0, "sockets in CLOSE_WAIT");
    let m = gh.get("/metrics");
    assert_eq!(
        metric_sum(&m, "gatehouse_connections_accepted_total", &[]),
        TOTAL as u64
    );
    assert_eq!(
        metric_sum(&m, "gatehouse_connections_closed_total", &[]),
        TOTAL as u64
    );
    for reason in [
        "client_closed",
        "upstream_connect_timeout",
        "upstream_refused",
        "idle_timeout",
        "client_reset",
        "upstream_reset",
    ] {
        assert!(
            metric_sum(
                &m,
                "gatehouse_connections_closed_total",
                &[("reason", reason)]
            ) > 0,
            "no {reason} in\n{m}"
        );
    }
    assert_eq!(
        metric_sum(
            &m,
            "gatehouse_connections_closed_total",
            &[("reason", "internal_error")]
        ),
        0
    );
    eprintln!(
        "{}",
        m.lines()
            .filter(|l| l.starts_with("gatehouse_connections_closed_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
