//! The established phase: bytes moved both ways between client and upstream
//! by the connection's own task, as one hand-written state machine per
//! direction (`Direction`). Bytes go zero-copy through a leased pipe
//! (`splice`) when one is free, else through a buffer from a small per-thread
//! pool; either is held only while bytes are in flight, so an idle
//! connection holds neither and its task stays small.
//!
//! EOF on one side is passed on as a write shutdown to the other; the
//! connection ends when both directions are done, on any error (a reset on
//! one side resets the other), or at the idle, lifetime or shutdown deadline.
//! `run_parking` may also stop it idle (`Stopped::Idle`): nothing moved
//! either way for its `park_after`, nothing in flight, both directions
//! open; its caller then parks the two sockets (`http::park`).

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::net::Shutdown;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::{Instant as TokioInstant, sleep_until};

use crate::conn::{ConnGuard, ConnState, EndReason};
use crate::proxy_protocol;
use crate::shutdown::ShutdownSignal;
use crate::splice::Lease;

const BUF_SIZE: usize = 64 * 1024;
const POOL_MAX: usize = 32;
/// Reads (or splices) per direction per poll before yielding to other tasks.
const BURSTS_PER_POLL: usize = 16;

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

#[derive(Clone, Copy)]
pub struct Deadlines {
    pub idle: Option<Duration>,
    pub max_lifetime: Option<Duration>,
    pub started: Instant,
    /// Stop idle (`Stopped::Idle`) after this long without a byte either
    /// way, so that the caller parks the sockets; `None`: never.
    pub park_after: Option<Duration>,
}

/// Where one direction (source → destination) stands.
enum DirState {
    /// Nothing in flight; waiting for the source to be readable.
    Waiting,
    /// Bytes in a leased pipe, to be spliced into the destination.
    SpliceFlush(Lease),
    /// Bytes `start..end` of a pooled buffer, to be written to the destination.
    CopyFlush {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
    /// Bytes owed before anything else (a PROXY header, early client bytes).
    Prefix { data: Vec<u8>, start: usize },
    /// EOF received and passed on.
    Done,
}

enum DirEnd {
    Eof,
    ReadFailed,
    WriteFailed,
    ProxySignature,
}

struct Direction<'a> {
    state: DirState,
    bytes: &'a AtomicU64,
    /// Splice is off while the first bytes must be looked at.
    refuse_proxy_signature: bool,
    splice: bool,
}

impl Direction<'_> {
    /// Moves bytes until the source has none ready or the destination is full.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        activity: &Activity,
    ) -> Poll<DirEnd> {
        for _ in 0..BURSTS_PER_POLL {
            match &mut self.state {
                DirState::Done => return Poll::Ready(DirEnd::Eof),
                DirState::Prefix { data, start } => {
                    match ready!(poll_write(cx, dst, &data[*start..], activity)) {
                        Ok(n) => *start += n,
                        Err(_) => return Poll::Ready(DirEnd::WriteFailed),
                    }
                    if *start == data.len() {
                        self.state = DirState::Waiting;
                    }
                }
                DirState::CopyFlush { buf, start, end } => {
                    match ready!(poll_write(cx, dst, &buf[*start..*end], activity)) {
                        Ok(n) => *start += n,
                        Err(_) => return Poll::Ready(DirEnd::WriteFailed),
                    }
                    if *start == *end {
                        if let DirState::CopyFlush { buf, .. } =
                            std::mem::replace(&mut self.state, DirState::Waiting)
                        {
                            give_buffer(buf);
                        }
                    }
                }
                DirState::SpliceFlush(lease) => {
                    match lease.flush(dst) {
                        Ok(n) => {
                            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                            activity.touch();
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if ready!(dst.poll_write_ready(cx)).is_err() {
                                return Poll::Ready(DirEnd::WriteFailed);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Poll::Ready(DirEnd::WriteFailed),
                    }
                    if lease.in_pipe() == 0 {
                        self.state = DirState::Waiting; // the lease goes back to the pool
                    }
                }
                DirState::Waiting => {
                    if ready!(src.poll_read_ready(cx)).is_err() {
                        return Poll::Ready(DirEnd::ReadFailed);
                    }
                    if let Some(end) = self.read(src, dst, activity) {
                        return Poll::Ready(end);
                    }
                }
            }
        }
        // Fair share used: let other connections run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One read (or splice) from a readable source into the flush state.
    fn read(&mut self, src: &TcpStream, dst: &TcpStream, activity: &Activity) -> Option<DirEnd> {
        if self.splice && !self.refuse_proxy_signature {
            if let Some(mut lease) = Lease::take() {
                return match lease.fill(src, usize::MAX) {
                    Ok(0) => Some(self.eof(dst)),
                    Ok(_) => {
                        activity.touch();
                        self.state = DirState::SpliceFlush(lease);
                        None
                    }
                    Err(e) if retry_later(&e) => None,
                    Err(_) => Some(DirEnd::ReadFailed),
                };
            }
        }
        let mut buf = take_buffer();
        match src.try_read(&mut buf) {
            Ok(0) => {
                give_buffer(buf);
                Some(self.eof(dst))
            }
            Ok(n) => {
                if self.refuse_proxy_signature {
                    if proxy_protocol::looks_like_header(&buf[..n]) {
                        give_buffer(buf);
                        return Some(DirEnd::ProxySignature);
                    }
                    self.refuse_proxy_signature = false;
                }
                self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                activity.touch();
                self.state = DirState::CopyFlush {
                    buf,
                    start: 0,
                    end: n,
                };
                None
            }
            Err(e) if retry_later(&e) => {
                give_buffer(buf);
                None
            }
            Err(_) => {
                give_buffer(buf);
                Some(DirEnd::ReadFailed)
            }
        }
    }

    /// Passes an EOF on.
    fn eof(&mut self, dst: &TcpStream) -> DirEnd {
        self.state = DirState::Done;
        match SockRef::from(dst).shutdown(Shutdown::Write) {
            Ok(()) => DirEnd::Eof,
            Err(_) => DirEnd::WriteFailed,
        }
    }
}

/// The socket has nothing (more) for now, or the call was interrupted.
fn retry_later(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn poll_write(
    cx: &mut Context<'_>,
    dst: &TcpStream,
    data: &[u8],
    activity: &Activity,
) -> Poll<io::Result<usize>> {
    loop {
        match dst.try_write(data) {
            Ok(n) => {
                activity.touch();
                return Poll::Ready(Ok(n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(dst.poll_write_ready(cx))?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// When bytes last moved, in milliseconds since the connection started.
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

/// How a pump that may park stopped.
pub enum Stopped {
    Ended(EndReason),
    /// No byte moved either way for the pump's `park_after`, nothing in
    /// flight and both directions open: the caller may park the sockets.
    Idle,
}

/// What `run_parking` moves bytes between, and when it may stop idle.
pub struct Parts<'a> {
    pub client: &'a TcpStream,
    pub upstream: &'a TcpStream,
    pub first_up: Vec<u8>,
    pub refuse_proxy_signature: bool,
}

/// Moves bytes until the connection ends, or, with `deadlines.park_after`,
/// until nothing has moved for that long (`Stopped::Idle`).
/// (A plain function: the future holds the parts once, not also as one
/// argument; an idle L4 connection's task is mostly this future.)
pub fn run_parking<'a>(
    parts: Parts<'a>,
    guard: &'a ConnGuard,
    deadlines: Deadlines,
    shutdown: &'a ShutdownSignal,
) -> impl Future<Output = Stopped> + 'a {
    let Parts {
        client,
        upstream,
        first_up,
        refuse_proxy_signature,
    } = parts;
    pump(
        (client, upstream),
        first_up,
        guard,
        deadlines,
        refuse_proxy_signature,
        shutdown,
    )
}

async fn pump(
    (client, upstream): (&TcpStream, &TcpStream),
    first_up: Vec<u8>,
    guard: &ConnGuard,
    deadlines: Deadlines,
    refuse_proxy_signature: bool,
    shutdown: &ShutdownSignal,
) -> Stopped {
    let entry = guard.entry();
    let activity = Activity {
        started: deadlines.started,
        last_ms: AtomicU64::new(0),
    };
    activity.touch();
    let splice = crate::splice::enabled();
    let mut up = Direction {
        state: if first_up.is_empty() {
            DirState::Waiting
        } else {
            DirState::Prefix {
                data: first_up,
                start: 0,
            }
        },
        bytes: &entry.bytes_up,
        refuse_proxy_signature,
        splice,
    };
    let mut down = Direction {
        state: DirState::Waiting,
        bytes: &entry.bytes_down,
        refuse_proxy_signature: false,
        splice,
    };

    // One timer serves the idle deadline, the lifetime deadline and the
    // moment to park.
    // (Computed where needed rather than held: an idle connection's task is
    // mostly this future.)
    let lifetime_end = |d: &Deadlines| d.max_lifetime.map(|l| d.started + l);
    let far = || Instant::now() + Duration::from_secs(86400 * 365);
    let next_deadline = |activity: &Activity| -> Option<Instant> {
        let idle_end = deadlines.idle.map(|d| activity.last() + d);
        // (Not parked at its time, bytes being in flight: checked again later.)
        let park_at = deadlines
            .park_after
            .map(|d| (activity.last() + d).max(Instant::now() + d / 4));
        [idle_end, lifetime_end(&deadlines), park_at]
            .into_iter()
            .flatten()
            .min()
    };
    let mut timer = pin!(sleep_until(TokioInstant::from_std(
        next_deadline(&activity).unwrap_or_else(far)
    )));
    let mut closing = pin!(shutdown.closing());
    let mut first_eof = None;
    let mut draining = false;

    let stopped = poll_fn(|cx| {
        let up_done = matches!(up.state, DirState::Done);
        let down_done = matches!(down.state, DirState::Done);
        if !up_done {
            if let Poll::Ready(end) = up.poll(cx, client, upstream, &activity) {
                match end {
                    DirEnd::Eof => {
                        first_eof.get_or_insert(EndReason::ClientClosed);
                    }
                    DirEnd::ReadFailed => {
                        return Poll::Ready(Stopped::Ended(EndReason::ClientReset));
                    }
                    DirEnd::WriteFailed => {
                        return Poll::Ready(Stopped::Ended(EndReason::UpstreamReset));
                    }
                    DirEnd::ProxySignature => {
                        return Poll::Ready(Stopped::Ended(EndReason::ProxyHeaderUntrusted));
                    }
                }
            }
        }
        if !down_done {
            if let Poll::Ready(end) = down.poll(cx, upstream, client, &activity) {
                match end {
                    DirEnd::Eof => {
                        first_eof.get_or_insert(EndReason::UpstreamClosed);
                    }
                    DirEnd::ReadFailed | DirEnd::ProxySignature => {
                        return Poll::Ready(Stopped::Ended(EndReason::UpstreamReset));
                    }
                    DirEnd::WriteFailed => {
                        return Poll::Ready(Stopped::Ended(EndReason::ClientReset));
                    }
                }
            }
        }
        match (
            matches!(up.state, DirState::Done),
            matches!(down.state, DirState::Done),
        ) {
            (true, true) => {
                return Poll::Ready(Stopped::Ended(first_eof.unwrap_or(EndReason::ClientClosed)));
            }
            (false, false) => {}
            _ if !draining => {
                draining = true;
                guard.set_state(ConnState::Draining);
            }
            _ => {}
        }
        while timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if lifetime_end(&deadlines).is_some_and(|end| end <= now) {
                return Poll::Ready(Stopped::Ended(EndReason::MaxLifetime));
            }
            if deadlines.idle.is_some_and(|d| activity.last() + d <= now) {
                return Poll::Ready(Stopped::Ended(EndReason::IdleTimeout));
            }
            let quiet = deadlines
                .park_after
                .is_some_and(|d| activity.last() + d <= now);
            // (Both waiting: nothing in flight, neither direction done.)
            if quiet
                && matches!(
                    (&up.state, &down.state),
                    (DirState::Waiting, DirState::Waiting)
                )
            {
                return Poll::Ready(Stopped::Idle);
            }
            // (Every deadline left is ahead: the idle and lifetime ones
            // passed are handled above, and parking is put off.)
            let next = next_deadline(&activity).unwrap_or_else(far);
            timer.as_mut().reset(TokioInstant::from_std(next));
        }
        if closing.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Stopped::Ended(EndReason::Shutdown));
        }
        Poll::Pending
    })
    .await;

    // Pass a reset on: the other side sees RST, not an orderly FIN.
    match stopped {
        Stopped::Ended(EndReason::ClientReset) => abort(upstream),
        Stopped::Ended(EndReason::UpstreamReset) => abort(client),
        _ => {}
    }
    stopped
}

/// Makes the coming close send RST instead of FIN.
fn abort(s: &TcpStream) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
}
