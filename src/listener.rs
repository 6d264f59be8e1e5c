//! Listening sockets and accept loops. Each accepted connection is registered
//! in the connection table at once (so `accepted` = sum of `closed`), checked
//! against the global limit, and handed to its own task in `l4`.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::conn::EndReason;
use crate::conn::log_limit::{Admit, LogLimit};
use crate::http::Plane;

pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    // Accepted sockets inherit it (Linux): no setsockopt per connection.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    TcpListener::from_std(socket.into())
}

/// Descriptors kept out of the data listeners' reach: the admin listener
/// and its connections, listening sockets, epoll and io_uring, files.
pub const FD_RESERVE: u64 = 256;

/// Live connections when `limits.max_connections` is not set (and the
/// descriptor limit allows it).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;

/// Raises the soft descriptor limit to the hard one, and returns how many
/// live connections the data listeners may take. Set in the config, that
/// many (with a line saying so when the descriptors could not serve them
/// all: connections past `fd_ceiling` are refused then). Not set, as
/// HAProxy derives `maxconn`: `DEFAULT_MAX_CONNECTIONS`, or fewer when the
/// descriptors could not serve that many — each connection may take two
/// (client and upstream) and `FD_RESERVE` stay free. Accepting stops at
/// the cap instead of failing on `EMFILE`, and the admin listener stays
/// reachable. (Splice pipes are not counted: a pipe that cannot be made
/// leaves its bytes to be copied.)
pub fn fd_budget(max_connections: Option<u32>) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    let wanted = max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS) as usize;
    let Some(nofile) = limit.current else {
        return wanted; // unlimited
    };
    let room = (nofile.saturating_sub(FD_RESERVE) / 2).max(1);
    let budget = usize::try_from(room).unwrap_or(usize::MAX);
    if budget >= wanted {
        return wanted;
    }
    if max_connections.is_some() {
        tracing::info!(
            max_connections = wanted,
            nofile,
            "limits.max_connections is more than the file descriptor limit serves at two per connection; connections past descriptor {} are refused",
            nofile.saturating_sub(FD_RESERVE)
        );
        return wanted;
    }
    tracing::info!(
        max_connections = wanted,
        nofile,
        lowered_to = budget,
        "max_connections lowered to what the file descriptor limit allows"
    );
    budget
}

/// The lowest descriptor number a data listener's accepted connection may
/// not have: the limit less `FD_RESERVE` (descriptors are numbered lowest
/// free first, so a connection numbered above it means the reserve is
/// being eaten into: it is closed at once, `overload`). Read again
/// whenever an accept fails for want of descriptors, so that a limit
/// lowered under the running process is seen.
pub fn fd_ceiling() -> u64 {
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        Some(n) => n.saturating_sub(FD_RESERVE),
        None => u64::MAX,
    }
}

/// The process's resident memory in bytes (`VmRSS` of `/proc/self/status`).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn out_of_fds(e: &std::io::Error) -> bool {
    [rustix::io::Errno::MFILE, rustix::io::Errno::NFILE]
        .iter()
        .any(|n| e.raw_os_error() == Some(n.raw_os_error()))
}

/// How an accept loop deals with failures (`EMFILE`, `ENFILE`, `ENOBUFS`):
/// it backs off, doubling from 10 ms to 1 s while they last (the pending
/// connection stays in the kernel's queue), and logs at most
/// `log_limit::BURST` lines per window with a count of the others.
pub struct AcceptBackoff {
    delay: Duration,
    log: LogLimit<1>,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            delay: Duration::ZERO,
            log: LogLimit::default(),
        }
    }
}

impl AcceptBackoff {
    pub async fn failed(&mut self, listener: &str, e: &std::io::Error) {
        self.delay = (self.delay * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        if let Admit::Write { suppressed } = self.log.admit(0) {
            tracing::warn!(
                listener,
                error = %e,
                suppressed,
                retry_ms = self.delay.as_millis() as u64,
                "accept failed"
            );
        }
        tokio::time::sleep(self.delay).await;
    }

    pub fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }
}

/// Accepts on `listener` until the drain begins or `stop` says so (the
/// listener left the config). Each connection starts on the snapshot
/// running when it was accepted, with the listener's settings in it.
pub async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    plane: Arc<Plane>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<TcpListener> {
    let runtime = &plane.rt;
    let max = runtime.max_connections;
    let draining = runtime.shutdown.draining();
    tokio::pin!(draining);
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut draining => break,
            // A reload stopped this loop: the socket goes back to it (to
            // close, or to serve under a listener's new name).
            _ = stop.wait_for(|s| *s) => return Some(listener),
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                if out_of_fds(&e) {
                    runtime.fd_ceiling.store(fd_ceiling(), Ordering::Relaxed);
                }
                backoff.failed(&name, &e).await;
                continue;
            }
        };
        backoff.succeeded();
        let guard = runtime.table.register(name.clone(), peer);
        guard.set_client_fd(stream.as_raw_fd());
        let fd = stream.as_raw_fd() as u64;
        if runtime.table.active() > max {
            guard.finish(EndReason::LimitGlobal);
            drop(stream);
            continue;
        }
        // Load shedding: near the descriptor limit, or over the memory
        // budget, a new connection is refused at once and costs nothing
        // more, so that those already here keep being served.
        if fd >= runtime.fd_ceiling.load(Ordering::Relaxed)
            || runtime.over_memory.load(Ordering::Relaxed)
        {
            guard.finish(EndReason::Overload);
            drop(stream);
            continue;
        }
        let snapshot = runtime.snapshot();
        let Some(index) = snapshot.listener(&name).map(|l| l.index as u32) else {
            // (Removed by a reload a moment ago: this loop stops next.)
            guard.finish(EndReason::NoRoute);
            continue;
        };
        // Boxed before spawning: the task then holds a pointer, and tokio's
        // moves of the task's future (into its cell, out at its end) copy
        // 8 bytes instead of the connection future's kilobyte and a half.
        tokio::spawn(Box::pin(crate::l4::serve(
            stream,
            guard,
            snapshot,
            index,
            plane.clone(),
        )));
    }
    // Closed before it is reported: once the line is out, a connect is refused.
    drop(listener);
    tracing::info!(listener = &*name, "listener closed");
    None
}
