//! Upstream request heads written together. A request head bound for an
//! HTTP/1.1 upstream over plain TCP is queued, and the queue goes out with
//! one `io_uring_enter` for the lot:
//! - on a current-thread runtime (`workers = 1`), by this thread's flusher
//!   task, after every task that was ready when the first send was queued
//!   has run: one submission per round of the scheduler, whatever
//!   connection (HTTP/1.1 or HTTP/2) each request came on;
//! - on a multi-thread runtime, where a task may move between threads, only
//!   while an HTTP/2 connection is being polled (a `Scope`), and its poll
//!   writes them before it returns; other sends are written one by one.
//!
//! Why: each write to an idle upstream wakes it, and when it shares our
//! CPU (a sidecar, a co-located service, the bench), the scheduler may hand
//! it the CPU at once, so it serves one request per wake-up and we pay a
//! context switch for each. Written in one system call, the upstream finds
//! them all at its next wake-up. In the bench's HTTP/2 scenario this took
//! the proxy's context switches from 122 to 7 per 1,000 requests, and its
//! system calls from 2.33 to 1.35 per request (with batches per HTTP/2
//! connection; `docs/performance.md`).
//!
//! The rules:
//! - Every send is non-blocking (`MSG_DONTWAIT`): it completes inside the
//!   submission, written in full, in part or not at all (`EAGAIN`). What was
//!   not written, the caller writes the usual way. Nothing stays in the
//!   kernel's hands after a flush returns.
//! - A queued send owns its bytes. Its future, dropped before the flush
//!   (the client went away, a deadline passed), cancels it, so a socket
//!   closed by that drop is never written to.
//! - Without io_uring (disabled by the system, refused by a seccomp
//!   profile) every send is written by its caller, as without a batch.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use io_uring::IoUring;

use crate::sys::RingSend;

/// Sends submitted per `io_uring_enter`.
const RING_ENTRIES: u32 = 64;

/// Submissions made, and the sends they carried (process-wide, for metrics).
static SUBMISSIONS: AtomicU64 = AtomicU64::new(0);
static SENDS: AtomicU64 = AtomicU64::new(0);

/// `io_uring_enter` calls that carried batched sends.
pub fn submissions() -> u64 {
    SUBMISSIONS.load(Ordering::Relaxed)
}

/// Sends written (in full, in part, or failed) through batches.
pub fn sends() -> u64 {
    SENDS.load(Ordering::Relaxed)
}

/// What became of a send.
pub enum Sent {
    /// Not queued (no scope, or no io_uring): the caller writes it all.
    Direct(Vec<u8>),
    /// Written, `written` bytes of it (all, some, or none when the socket
    /// was full): the caller writes the rest.
    Written { bytes: Vec<u8>, written: usize },
    /// The socket failed (reset, closed).
    Failed,
}

enum SlotState {
    Queued(Vec<u8>),
    Done(Sent),
    /// Taken by its future, or its future was dropped.
    Gone,
}

/// A send's state, shared by its future and the queue (locked by one
/// thread at a time, so never contended: the flush runs on the thread that
/// polls the futures).
struct Slot {
    state: SlotState,
    waker: Option<Waker>,
}

type SharedSlot = Arc<Mutex<Slot>>;

fn lock(slot: &SharedSlot) -> std::sync::MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

struct Entry {
    fd: RawFd,
    slot: SharedSlot,
}

#[derive(Default)]
struct Batch {
    /// Open scopes on this thread.
    depth: u32,
    queued: Vec<Entry>,
    ring: Option<IoUring>,
    /// Setting the ring up failed once: every send is direct.
    unavailable: bool,
    /// This thread's flusher task, if it runs one (current-thread runtime).
    flusher: Option<Waker>,
    /// The flusher was woken for what is queued.
    flusher_woken: bool,
}

impl Batch {
    /// Makes this thread's ring on first use (one file descriptor, kept
    /// for the thread's life). False when io_uring is not to be had.
    fn ring_ready(&mut self) -> bool {
        if self.ring.is_some() {
            return true;
        }
        if self.unavailable {
            return false;
        }
        match IoUring::new(RING_ENTRIES) {
            Ok(r) => {
                self.ring = Some(r);
                true
            }
            Err(e) => {
                tracing::info!(error = %e, "io_uring unavailable: upstream request heads are written one by one");
                self.unavailable = true;
                false
            }
        }
    }
}

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::new(Batch::default());
}

/// While alive, sends on this thread are queued; dropping it flushes them
/// (unless this thread's flusher will).
pub struct Scope(());

impl Scope {
    pub fn enter() -> Scope {
        BATCH.with_borrow_mut(|b| b.depth += 1);
        Scope(())
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let last = BATCH.with_borrow_mut(|b| {
            b.depth -= 1;
            b.depth == 0
        });
        if last {
            flush_scope();
        }
    }
}

/// The flusher of a current-thread runtime: spawned once, it writes what
/// each round of tasks queued. (On a multi-thread runtime it must not run:
/// it could be polled on another thread than the one whose sends woke it.)
pub async fn flusher() {
    /// Unregisters the flusher when its runtime drops it.
    struct Registered;
    impl Drop for Registered {
        fn drop(&mut self) {
            let queued = BATCH.with_borrow_mut(|b| {
                b.flusher = None;
                b.flusher_woken = false;
                !b.queued.is_empty()
            });
            if queued {
                flush();
            }
        }
    }
    let _registered = Registered;
    // The ring is made now, with the runtime, not at the first request:
    // the process's descriptors are steady from the start, and a system
    // without io_uring says so at start-up.
    BATCH.with_borrow_mut(Batch::ring_ready);
    std::future::poll_fn(|cx| {
        BATCH.with_borrow_mut(|b| {
            if !b.flusher.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                b.flusher = Some(cx.waker().clone());
            }
            b.flusher_woken = false;
        });
        flush();
        Poll::<()>::Pending
    })
    .await
}

/// Flushes what a scope queued, unless this thread's flusher will (with
/// the rest of the round). Returns how many sends were written or failed.
pub fn flush_scope() -> usize {
    if BATCH.with_borrow(|b| b.flusher.is_some()) {
        return 0;
    }
    flush()
}

/// Writes every queued send (one system call per `RING_ENTRIES`) and wakes
/// their futures. Returns how many were written or failed.
fn flush() -> usize {
    let (mut entries, mut ring) = BATCH.with_borrow_mut(|b| {
        if b.queued.is_empty() {
            return (Vec::new(), None);
        }
        (std::mem::take(&mut b.queued), b.ring.take())
    });
    if entries.is_empty() {
        return 0;
    }
    let mut done = 0;
    let mut chunks = entries.chunks(RING_ENTRIES as usize);
    // (Sends are queued only once the ring exists.)
    if let Some(r) = ring.as_mut() {
        for chunk in chunks.by_ref() {
            match submit(r, chunk) {
                Ok(n) => done += n,
                Err(n) => {
                    // The kernel broke the contract (a send it did not
                    // finish): this thread gives its ring up, and writes
                    // directly from now on.
                    done += n;
                    tracing::warn!("io_uring left sends unfinished: upstream sends go one by one");
                    ring = None;
                    break;
                }
            }
        }
    }
    // What was not submitted, its callers write.
    for e in chunks.flatten() {
        let queued = std::mem::replace(&mut lock(&e.slot).state, SlotState::Gone);
        if let SlotState::Queued(bytes) = queued {
            finish(&e.slot, Sent::Direct(bytes));
            done += 1;
        }
    }
    entries.clear();
    BATCH.with_borrow_mut(|b| {
        b.unavailable |= ring.is_none();
        b.ring = ring;
        // The queue's room is kept for the next round. (Nothing was queued
        // meanwhile: nothing polls during a flush.)
        if b.queued.is_empty() {
            b.queued = entries;
        }
    });
    done
}

/// Submits one chunk and hands each send its result. `Err` when a send did
/// not complete within the submission (which non-blocking sends always
/// do): its bytes are leaked, as the kernel may still read them
/// (`sys::send_all`), and its request fails; the ring must not be used
/// again.
fn submit(ring: &mut IoUring, chunk: &[Entry]) -> Result<usize, usize> {
    // The bytes of each live send, taken out of its slot for the call (a
    // cancelled one's socket may be closed already: it is skipped). Each
    // fd is open: the future that owns its socket is alive (a dropped one
    // marks its slot gone first).
    let sends: Vec<Option<(RawFd, Vec<u8>)>> = chunk
        .iter()
        .map(
            |e| match std::mem::replace(&mut lock(&e.slot).state, SlotState::Gone) {
                SlotState::Queued(bytes) => Some((e.fd, bytes)),
                _ => None,
            },
        )
        .collect();
    let results = crate::sys::send_all(ring, sends);
    let (mut completed, mut lost) = (0usize, false);
    let mut pushed = 0u64;
    for (e, result) in chunk.iter().zip(results) {
        let sent = match result {
            RingSend::Skipped => continue,
            RingSend::NotQueued(bytes) => Sent::Direct(bytes),
            RingSend::Done { bytes, result } => {
                pushed += 1;
                completed += 1;
                if result >= 0 {
                    Sent::Written {
                        bytes,
                        written: usize::try_from(result).unwrap_or(0),
                    }
                } else if result == -libc::EAGAIN || result == -libc::EINTR {
                    Sent::Written { bytes, written: 0 }
                } else {
                    Sent::Failed
                }
            }
            RingSend::Lost => {
                pushed += 1;
                lost = true;
                Sent::Failed
            }
        };
        finish(&e.slot, sent);
    }
    if pushed > 0 {
        SUBMISSIONS.fetch_add(1, Ordering::Relaxed);
        SENDS.fetch_add(pushed, Ordering::Relaxed);
    }
    if lost { Err(completed) } else { Ok(completed) }
}

fn finish(slot: &SharedSlot, sent: Sent) {
    let waker = {
        let mut slot = lock(slot);
        slot.state = SlotState::Done(sent);
        slot.waker.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

/// Sends `bytes` on the socket `fd` with this thread's batch, or answers
/// `Direct` when there is none (no flusher, no scope, no io_uring).
pub fn send(fd: RawFd, bytes: Vec<u8>) -> Send {
    Send {
        fd,
        bytes: Some(bytes),
        slot: None,
    }
}

pub struct Send {
    fd: RawFd,
    bytes: Option<Vec<u8>>,
    slot: Option<SharedSlot>,
}

impl Future for Send {
    type Output = Sent;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Sent> {
        let me = self.get_mut();
        if let Some(slot) = &me.slot {
            let mut slot = lock(slot);
            match std::mem::replace(&mut slot.state, SlotState::Gone) {
                SlotState::Done(sent) => return Poll::Ready(sent),
                still => slot.state = still,
            }
            if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                slot.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let Some(bytes) = me.bytes.take() else {
            return Poll::Ready(Sent::Failed);
        };
        let queued = BATCH.with_borrow_mut(|b| {
            if (b.depth == 0 && b.flusher.is_none()) || !b.ring_ready() {
                return Err(bytes);
            }
            let slot = Arc::new(Mutex::new(Slot {
                state: SlotState::Queued(bytes),
                waker: Some(cx.waker().clone()),
            }));
            b.queued.push(Entry {
                fd: me.fd,
                slot: slot.clone(),
            });
            if !b.flusher_woken {
                if let Some(flusher) = &b.flusher {
                    b.flusher_woken = true;
                    flusher.wake_by_ref();
                }
            }
            Ok(slot)
        });
        match queued {
            Ok(slot) => {
                me.slot = Some(slot);
                Poll::Pending
            }
            Err(bytes) => Poll::Ready(Sent::Direct(bytes)),
        }
    }
}

/// How far a send got, seen when its future is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing has gone to the socket, nor will: never polled, or still
    /// queued (dropping it now takes it out of the batch).
    Unsent,
    /// All of it is in the socket.
    Whole,
    /// Part of it, or unknown.
    Partial,
}

impl Send {
    pub fn progress(&self) -> Progress {
        let Some(slot) = &self.slot else {
            return if self.bytes.is_some() {
                Progress::Unsent
            } else {
                Progress::Partial
            };
        };
        match &lock(slot).state {
            SlotState::Queued(_) => Progress::Unsent,
            SlotState::Done(Sent::Written { bytes, written }) if *written == bytes.len() => {
                Progress::Whole
            }
            SlotState::Done(Sent::Written { written: 0, .. } | Sent::Direct(_)) => Progress::Unsent,
            _ => Progress::Partial,
        }
    }
}

impl Drop for Send {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            lock(slot).state = SlotState::Gone;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::task::{Context, Poll, Waker};

    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::{BATCH, Scope, Sent, flush, flusher, send, sends, submissions};

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::pin::Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn queued_sends_go_out_together_and_a_dropped_one_never_does() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, mut a_peer) = pair(&listener).await;
        let (b, mut b_peer) = pair(&listener).await;

        // Outside a scope: the caller writes.
        let mut direct = send(a.as_raw_fd(), b"x".to_vec());
        assert!(matches!(poll_once(&mut direct), Poll::Ready(Sent::Direct(v)) if v == b"x"));

        let scope = Scope::enter();
        let mut to_a = send(a.as_raw_fd(), b"request a".to_vec());
        let mut to_b = send(b.as_raw_fd(), b"request b".to_vec());
        assert!(poll_once(&mut to_a).is_pending(), "queued, not written");
        assert!(poll_once(&mut to_b).is_pending());
        // The stream that owned `b` is dropped before the flush, and its
        // socket with it.
        drop(to_b);
        drop(b);
        assert_eq!(flush(), 1, "only the live send is submitted");
        drop(scope);
        match poll_once(&mut to_a) {
            Poll::Ready(Sent::Written { bytes, written }) => {
                assert_eq!(written, bytes.len());
            }
            _ => panic!("the send completed inside the flush (is io_uring available?)"),
        }
        let mut got = vec![0u8; 9];
        a_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"request a");
        let mut rest = Vec::new();
        b_peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the dropped send wrote {rest:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_socket_is_written_in_part_without_blocking() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, mut a_peer) = pair(&listener).await;
        socket2::SockRef::from(&a)
            .set_send_buffer_size(4096)
            .unwrap();
        let big = vec![7u8; 2 << 20];
        let scope = Scope::enter();
        let mut to_a = send(a.as_raw_fd(), big.clone());
        assert!(poll_once(&mut to_a).is_pending());
        // The peer reads nothing yet: the send cannot complete, and the
        // flush must come back anyway.
        drop(scope);
        let (bytes, written) = match poll_once(&mut to_a) {
            Poll::Ready(Sent::Written { bytes, written }) => (bytes, written),
            _ => panic!("the send completed inside the flush"),
        };
        assert!(
            written < bytes.len(),
            "{written} of {} written",
            bytes.len()
        );
        // The caller writes the rest the usual way.
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut a = a;
            a.write_all(&bytes[written..]).await.unwrap();
        });
        let mut got = Vec::with_capacity(big.len());
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < big.len() {
            let n = a_peer.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        assert!(got == big);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_flusher_writes_each_rounds_sends_in_one_submission() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, mut a_peer) = pair(&listener).await;
        let (b, mut b_peer) = pair(&listener).await;
        let flusher = tokio::spawn(flusher());
        tokio::task::yield_now().await; // the flusher registers
        assert!(BATCH.with_borrow(|b| b.flusher.is_some()));
        // Two connections' tasks send in the same round, outside any scope.
        let task = |s: TcpStream, bytes: &'static [u8]| {
            tokio::spawn(async move {
                let sent = send(s.as_raw_fd(), bytes.to_vec()).await;
                assert!(matches!(sent, Sent::Written { written, .. } if written == bytes.len()));
                s
            })
        };
        let before = (submissions(), sends());
        let (ta, tb) = (task(a, b"from a"), task(b, b"from b"));
        let mut got = [0u8; 6];
        a_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"from a");
        b_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"from b");
        let (a, _b) = (ta.await.unwrap(), tb.await.unwrap());
        assert_eq!(
            (submissions() - before.0, sends() - before.1),
            (1, 2),
            "both sends in one submission"
        );
        // Its runtime dropped it: sends are written by their callers again.
        flusher.abort();
        let _ = flusher.await;
        assert!(BATCH.with_borrow(|b| b.flusher.is_none()));
        assert!(matches!(
            send(a.as_raw_fd(), b"x".to_vec()).await,
            Sent::Direct(_)
        ));
    }
}
