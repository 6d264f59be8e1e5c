//! The established phase: bytes copied both ways between client and upstream
//! by one task: zero-copy through a leased pipe (`splice`) when one is free,
//! else through buffers taken from a small per-thread pool, in both cases only
//! while data is flowing (an idle connection holds neither). EOF on one side is
//! passed on as a write shutdown to the other; the connection ends when both
//! directions are done, on any error (a reset on one side resets the other),
//! or on the idle, lifetime or shutdown deadline.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::{Instant as TokioInstant, sleep_until};

use super::splice;
use crate::conn::{ConnGuard, ConnState, EndReason};
use crate::proxy_protocol;
use crate::server::ShutdownSignal;

const BUF_SIZE: usize = 64 * 1024;
const POOL_MAX: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buffer() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

fn give_buffer(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    });
}

/// Frees this thread's cached buffers.
pub fn release_buffers() {
    POOL.with(|p| p.borrow_mut().clear());
}

pub struct Deadlines {
    pub idle: Option<Duration>,
    pub max_lifetime: Option<Duration>,
    pub started: Instant,
}

/// Milliseconds since the connection started at which bytes last moved.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

enum DirEnd {
    Eof,
    ReadFailed,
    WriteFailed,
    ProxySignature,
}

pub async fn run(
    client: &TcpStream,
    upstream: &TcpStream,
    first_up: Vec<u8>,
    guard: &ConnGuard,
    deadlines: Deadlines,
    refuse_proxy_signature: bool,
    shutdown: &ShutdownSignal,
) -> EndReason {
    let entry = guard.entry();
    let activity = Activity {
        started: deadlines.started,
        last_ms: AtomicU64::new(0),
    };
    activity.touch();
    let up = one_way(
        client,
        upstream,
        first_up,
        &entry.bytes_up,
        &activity,
        refuse_proxy_signature,
    );
    let down = one_way(
        upstream,
        client,
        Vec::new(),
        &entry.bytes_down,
        &activity,
        false,
    );
    tokio::pin!(up, down);

    let far = TokioInstant::now() + Duration::from_secs(86400 * 365);
    let idle = deadlines.idle;
    let idle_timer = sleep_until(idle.map_or(far, |d| TokioInstant::from_std(activity.last() + d)));
    let lifetime = sleep_until(
        deadlines
            .max_lifetime
            .map_or(far, |d| TokioInstant::from_std(deadlines.started + d)),
    );
    tokio::pin!(idle_timer, lifetime);
    let closing = shutdown.closing();
    tokio::pin!(closing);

    let (mut up_done, mut down_done) = (false, false);
    let mut first_eof = None;
    let reason = loop {
        tokio::select! {
            end = &mut up, if !up_done => match end {
                DirEnd::Eof => {
                    up_done = true;
                    first_eof.get_or_insert(EndReason::ClientClosed);
                }
                DirEnd::ReadFailed => break EndReason::ClientReset,
                DirEnd::WriteFailed => break EndReason::UpstreamReset,
                DirEnd::ProxySignature => break EndReason::ProxyHeaderUntrusted,
            },
            end = &mut down, if !down_done => match end {
                DirEnd::Eof => {
                    down_done = true;
                    first_eof.get_or_insert(EndReason::UpstreamClosed);
                }
                DirEnd::ReadFailed | DirEnd::ProxySignature => break EndReason::UpstreamReset,
                DirEnd::WriteFailed => break EndReason::ClientReset,
            },
            () = &mut idle_timer, if idle.is_some() => {
                let deadline = activity.last() + idle.unwrap_or_default();
                if deadline <= Instant::now() {
                    break EndReason::IdleTimeout;
                }
                idle_timer.as_mut().reset(TokioInstant::from_std(deadline));
            },
            () = &mut lifetime => break EndReason::MaxLifetime,
            () = &mut closing => break EndReason::Shutdown,
        }
        match (up_done, down_done) {
            (true, true) => break first_eof.unwrap_or(EndReason::ClientClosed),
            (false, false) => {}
            _ => guard.set_state(ConnState::Draining),
        }
    };
    // Pass a reset on: the other side sees RST, not an orderly FIN.
    match reason {
        EndReason::ClientReset => abort(upstream),
        EndReason::UpstreamReset => abort(client),
        _ => {}
    }
    reason
}

/// Makes the coming close send RST instead of FIN.
fn abort(s: &TcpStream) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
}

async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    pending: Vec<u8>,
    bytes: &AtomicU64,
    activity: &Activity,
    mut refuse_proxy_signature: bool,
) -> DirEnd {
    if !pending.is_empty() && write_all(dst, &pending, activity).await.is_err() {
        return DirEnd::WriteFailed;
    }
    drop(pending);
    loop {
        if src.readable().await.is_err() {
            return DirEnd::ReadFailed;
        }
        // Zero-copy while a pipe is free; bytes must be seen in userspace
        // only while we still look for a PROXY signature.
        if !refuse_proxy_signature {
            if let Some(mut lease) = splice::Lease::take() {
                let moved = |n: usize| {
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                    activity.touch();
                };
                match splice::burst(&mut lease, src, dst, moved).await {
                    splice::Burst::Drained => continue,
                    splice::Burst::Eof => return shutdown_write(dst),
                    splice::Burst::ReadFailed => return DirEnd::ReadFailed,
                    splice::Burst::WriteFailed => return DirEnd::WriteFailed,
                }
            }
        }
        let mut buf = take_buffer();
        let end = loop {
            match src.try_read(&mut buf) {
                Ok(0) => break Some(shutdown_write(dst)),
                Ok(n) => {
                    if refuse_proxy_signature {
                        if proxy_protocol::looks_like_header(&buf[..n]) {
                            break Some(DirEnd::ProxySignature);
                        }
                        refuse_proxy_signature = false;
                    }
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                    activity.touch();
                    if write_all(dst, &buf[..n], activity).await.is_err() {
                        break Some(DirEnd::WriteFailed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Some(DirEnd::ReadFailed),
            }
        };
        give_buffer(buf);
        if let Some(end) = end {
            return end;
        }
    }
}

/// Passes an EOF on.
fn shutdown_write(dst: &TcpStream) -> DirEnd {
    match SockRef::from(dst).shutdown(Shutdown::Write) {
        Ok(()) => DirEnd::Eof,
        Err(_) => DirEnd::WriteFailed,
    }
}

async fn write_all(dst: &TcpStream, mut data: &[u8], activity: &Activity) -> io::Result<()> {
    while !data.is_empty() {
        match dst.try_write(data) {
            Ok(n) => {
                data = &data[n..];
                activity.touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
