//! Parked keep-alive connections: an HTTP/1 connection idle between
//! requests for `h1::PARK_AFTER` leaves its task. What it needs to go on —
//! the socket, its handler, its table guard, requests served and the
//! keep-alive deadline — waits in a slot whose waker the socket's readiness
//! holds, so an idle connection costs no task and no buffer. The first byte
//! (or the client's close) wakes the slot, which hands the connection to
//! a new task; it is owned by exactly one of the slot or that task at any
//! time, and the table guard travels with it. The housekeeping sweep ends
//! parked connections past their deadline (`idle_timeout`); the drain at
//! shutdown ends them all (`shutdown`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Wake, Waker};

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Served;
use super::h1::Parked;
use crate::conn::{ConnGuard, EndReason};
use crate::io::Prefixed;
use crate::server::{ListenerRt, Runtime};

type Io = Prefixed<TcpStream>;

/// How often parked connections' deadlines are checked.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The parked connections of one runtime.
#[derive(Default)]
pub struct ParkingLot {
    slots: Mutex<Vec<Arc<Slot>>>,
}

/// One parked connection; empty once it was resumed or ended.
struct Slot {
    conn: Mutex<Option<ParkedConn>>,
}

struct ParkedConn {
    http: Parked<Io>,
    guard: ConnGuard,
    listener: Arc<ListenerRt>,
    rt: Arc<Runtime>,
    /// The runtime to resume on (wakers may run on any thread).
    handle: tokio::runtime::Handle,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ParkingLot {
    /// Connections parked now.
    pub fn len(&self) -> usize {
        lock(&self.slots).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends parked connections past their keep-alive deadline, and forgets
    /// slots whose connection was resumed.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut ended = Vec::new();
        lock(&self.slots).retain(|slot| {
            let mut conn = lock(&slot.conn);
            match conn.as_ref() {
                None => false,
                Some(c) if c.http.deadline <= now => {
                    ended.extend(conn.take());
                    false
                }
                Some(_) => true,
            }
        });
        // Closed outside the locks: dropping a socket touches the reactor.
        for c in ended {
            c.guard.finish(EndReason::IdleTimeout);
        }
    }

    /// Ends every parked connection (the drain at shutdown: idle keep-alive
    /// connections have nothing in flight to finish).
    pub fn close_all(&self) {
        let slots = std::mem::take(&mut *lock(&self.slots));
        for slot in slots {
            let taken = lock(&slot.conn).take();
            if let Some(c) = taken {
                c.guard.finish(EndReason::Shutdown);
            }
        }
    }
}

/// Where a served connection goes next: its end is recorded, or it is
/// parked until its next request.
pub fn settle(served: Served<Io>, guard: ConnGuard, listener: Arc<ListenerRt>, rt: Arc<Runtime>) {
    let http = match served {
        Served::End(reason) => return guard.finish(reason),
        Served::Park(p) => p,
    };
    if rt.shutdown.is_draining() {
        return guard.finish(EndReason::Shutdown);
    }
    let conn = ParkedConn {
        http,
        guard,
        listener,
        rt: rt.clone(),
        handle: tokio::runtime::Handle::current(),
    };
    let slot = Arc::new(Slot {
        conn: Mutex::new(Some(conn)),
    });
    let waker = Waker::from(slot.clone());
    let mut cx = Context::from_waker(&waker);
    // The waker is registered with the slot already filled: a wake from
    // another thread finds the connection (or, if we resume it here first,
    // finds nothing).
    let mut held = lock(&slot.conn);
    let ready = held
        .as_ref()
        .is_some_and(|c| c.http.io.get_ref().poll_read_ready(&mut cx).is_ready());
    if ready {
        let conn = held.take();
        drop(held);
        if let Some(c) = conn {
            resume(c);
        }
        return;
    }
    drop(held);
    lock(&rt.parking.slots).push(slot);
    // A drain that began meanwhile has emptied the lot already: this one too.
    if rt.shutdown.is_draining() {
        rt.parking.close_all();
    }
}

impl Wake for Slot {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let conn = lock(&self.conn).take();
        if let Some(c) = conn {
            resume(c);
        }
    }
}

/// A task again for a parked connection whose client sent something (or left).
fn resume(c: ParkedConn) {
    let ParkedConn {
        http,
        guard,
        listener,
        rt,
        handle,
    } = c;
    handle.spawn(async move {
        let Some(cfg) = listener.config.http.clone() else {
            return guard.finish(EndReason::Internal);
        };
        let Parked {
            io,
            handler,
            served,
            deadline,
        } = http;
        let served = super::serve_h1(io, handler, cfg, Some((served, deadline)), &guard, &rt).await;
        settle(served, guard, listener, rt);
    });
}
