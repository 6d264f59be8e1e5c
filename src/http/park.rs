//! Parked keep-alive connections: an HTTP/1 connection idle between
//! requests for `h1::PARK_AFTER` leaves its task and tokio's reactor. What
//! it needs to go on — the bare socket, its table guard, requests served and
//! the keep-alive deadline — waits in a slot of the parking lot, and the
//! socket waits in the lot's own epoll set (one-shot: its next byte, or the
//! client's close). An idle connection so costs a slot of about a hundred
//! bytes and its table entry: no task, no buffer, no handler, no reactor
//! record. The lot's watcher task hands a woken connection to a new task,
//! which registers the socket with tokio again and builds its handler; the
//! connection is owned by exactly one of the slot or that task at any time,
//! and the table guard travels with it. The housekeeping sweep ends parked
//! connections past their deadline (`idle_timeout`); the drain at shutdown
//! ends them all (`shutdown`).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::event::epoll;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Served;
use super::h1::Parked;
use super::proxy::{ConnInfo, Handler};
use crate::conn::{ConnGuard, EndReason};
use crate::io::Prefixed;
use crate::server::{ListenerRt, Runtime};

type Io = Prefixed<TcpStream>;

/// How often parked connections' deadlines are checked.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Readiness events taken from the lot's epoll set per system call.
const EVENTS_PER_WAIT: usize = 256;

/// The parked connections of one runtime.
pub struct ParkingLot {
    /// The lot's epoll set; `None` when it could not be made (then a
    /// connection handed over to be parked goes on in a task at once).
    epoll: Option<Arc<OwnedFd>>,
    lot: Mutex<Lot>,
}

#[derive(Default)]
struct Lot {
    slots: Vec<Slot>,
    /// Indices of empty slots.
    free: Vec<u32>,
    parked: usize,
    /// Bumped on every parking: an event names its slot and generation, so
    /// a stale event never wakes a later occupant of the same slot.
    generation: u32,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    conn: Option<ParkedConn>,
}

struct ParkedConn {
    socket: std::net::TcpStream,
    served: u64,
    deadline: Instant,
    guard: ConnGuard,
    listener: Arc<ListenerRt>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn key(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

impl Default for ParkingLot {
    fn default() -> Self {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)
            .inspect_err(
                |e| tracing::warn!(error = %e, "no epoll set for parking idle connections"),
            )
            .ok()
            .map(Arc::new);
        ParkingLot {
            epoll,
            lot: Mutex::default(),
        }
    }
}

impl Lot {
    fn take(&mut self, index: usize) -> Option<ParkedConn> {
        let conn = self.slots.get_mut(index)?.conn.take()?;
        self.free.push(index as u32);
        self.parked -= 1;
        if self.parked == 0 {
            // A burst of idle connections left: give its slots back too.
            self.slots = Vec::new();
            self.free = Vec::new();
        }
        Some(conn)
    }
}

impl ParkingLot {
    /// Connections parked now.
    pub fn len(&self) -> usize {
        lock(&self.lot).parked
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends parked connections past their keep-alive deadline.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut ended = Vec::new();
        {
            let mut lot = lock(&self.lot);
            for i in 0..lot.slots.len() {
                if lot.slots[i]
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.deadline <= now)
                {
                    ended.extend(lot.take(i));
                }
                if lot.slots.is_empty() {
                    break;
                }
            }
        }
        // Closed outside the lock: closing a socket takes time.
        for c in ended {
            c.guard.finish(EndReason::IdleTimeout);
        }
    }

    /// Ends every parked connection (the drain at shutdown: idle keep-alive
    /// connections have nothing in flight to finish).
    pub fn close_all(&self) {
        let slots = {
            // (The generation stays: events already taken from the epoll
            // set must not match slots filled later.)
            let mut lot = lock(&self.lot);
            lot.free = Vec::new();
            lot.parked = 0;
            std::mem::take(&mut lot.slots)
        };
        for c in slots.into_iter().filter_map(|s| s.conn) {
            c.guard.finish(EndReason::Shutdown);
        }
    }

    /// Puts `conn` in a slot and its socket in the epoll set; gives it back
    /// when that cannot be done.
    fn park(&self, conn: ParkedConn) -> Result<(), ParkedConn> {
        let Some(epoll) = &self.epoll else {
            return Err(conn);
        };
        let mut lot = lock(&self.lot);
        lot.generation = lot.generation.wrapping_add(1);
        let generation = lot.generation;
        let index = match lot.free.pop() {
            Some(i) => i as usize,
            None => {
                lot.slots.push(Slot::default());
                lot.slots.len() - 1
            }
        };
        // Level-triggered: bytes that arrived before this call are reported
        // at once. One-shot: reported once, then the socket is ours again.
        let interest =
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
        let data = epoll::EventData::new_u64(key(index as u32, generation));
        if epoll::add(epoll, &conn.socket, data, interest).is_err() {
            lot.free.push(index as u32);
            return Err(conn);
        }
        let slot = &mut lot.slots[index];
        slot.generation = generation;
        slot.conn = Some(conn);
        lot.parked += 1;
        Ok(())
    }

    /// Takes the connections the events name (those still parked).
    fn take_woken(&self, events: &[epoll::Event]) -> Vec<ParkedConn> {
        let mut lot = lock(&self.lot);
        let mut woken = Vec::with_capacity(events.len());
        for ev in events {
            let k = ev.data.u64();
            let (index, generation) = ((k & 0xffff_ffff) as usize, (k >> 32) as u32);
            if lot
                .slots
                .get(index)
                .is_some_and(|s| s.generation == generation)
            {
                woken.extend(lot.take(index));
            }
        }
        woken
    }
}

/// The lot's epoll set registered with tokio's reactor, which reports when
/// it has events.
fn register(epoll: Arc<OwnedFd>) -> std::io::Result<AsyncFd<Arc<OwnedFd>>> {
    crate::sys::register_fd(epoll)
}

/// The lot's watcher: waits for its epoll set to have events, and gives
/// each woken connection a task again. Runs for the runtime's life.
pub async fn watch(rt: Arc<Runtime>) {
    let Some(epoll) = rt.parking.epoll.clone() else {
        return;
    };
    let watched = match register(epoll) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the parking lot; idle connections stay in their tasks");
            return;
        }
    };
    loop {
        let Ok(mut ready) = watched.readable().await else {
            return;
        };
        match wake_ready(&rt) {
            Ok(()) => ready.clear_ready(),
            Err(e) => {
                tracing::error!(error = %e, "parking lot: epoll_wait failed; closing parked connections");
                rt.parking.close_all();
                return;
            }
        }
    }
}

/// Resumes every parked connection the epoll set has an event for.
fn wake_ready(rt: &Arc<Runtime>) -> rustix::io::Result<()> {
    let Some(epoll) = &rt.parking.epoll else {
        return Ok(());
    };
    let no_wait = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS_PER_WAIT);
    loop {
        events.clear();
        match epoll::wait(
            epoll.as_fd(),
            rustix::buffer::spare_capacity(&mut events),
            Some(&no_wait),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
        for conn in rt.parking.take_woken(&events) {
            resume(conn, rt);
        }
        if events.len() < EVENTS_PER_WAIT {
            return Ok(());
        }
    }
}

/// An upgraded connection's tunnel runs in tasks of its own: the
/// connection's first task, sized for every state a connection goes
/// through, ends (as a parked connection's does), and so does the HTTP
/// loop's state. One task takes the hand-over; the pump, which an idle
/// tunnel is, runs in another, whose future is only the pump's and the
/// two sockets.
fn spawn_upgraded(u: Box<super::h1::Upgrade<Io>>, guard: ConnGuard, rt: Arc<Runtime>) {
    use super::tunnel::{Prepared, prepare};
    tokio::spawn(async move {
        match prepare(*u, &guard).await {
            Prepared::Pump(tunnel) => {
                tokio::spawn(async move {
                    let reason = tunnel.run(&guard, &rt.shutdown).await;
                    guard.finish(reason);
                });
            }
            Prepared::Copy(tunnel) => {
                let reason = Box::pin(tunnel.run(&rt.shutdown)).await;
                guard.finish(reason);
            }
            Prepared::Ended(reason) => guard.finish(reason),
        }
    });
}

/// Where a served connection goes next: its end is recorded, its tunnel
/// is run (upgraded), or it is parked until its next request.
pub fn settle(served: Served<Io>, guard: ConnGuard, listener: Arc<ListenerRt>, rt: Arc<Runtime>) {
    let Parked {
        io,
        handler,
        served,
        deadline,
    } = match served {
        Served::End(reason) => return guard.finish(reason),
        Served::Upgrade(u) => return spawn_upgraded(u, guard, rt),
        Served::Park(p) => p,
    };
    if rt.shutdown.is_draining() {
        return guard.finish(EndReason::Shutdown);
    }
    // The handler is rebuilt on the next request; the socket leaves tokio's
    // reactor for the lot's epoll set.
    drop(handler);
    let socket = match io.into_inner().into_std() {
        Ok(s) => s,
        Err(_) => return guard.finish(EndReason::Internal),
    };
    let conn = ParkedConn {
        socket,
        served,
        deadline,
        guard,
        listener,
    };
    if let Err(conn) = rt.parking.park(conn) {
        return resume(conn, &rt);
    }
    // A drain that began meanwhile has emptied the lot already: this one too.
    if rt.shutdown.is_draining() {
        rt.parking.close_all();
    }
}

/// A task again for a parked connection whose client sent something (or left).
fn resume(c: ParkedConn, rt: &Arc<Runtime>) {
    let rt = rt.clone();
    tokio::spawn(async move {
        let ParkedConn {
            socket,
            served,
            deadline,
            guard,
            listener,
        } = c;
        if let Some(epoll) = &rt.parking.epoll {
            // Out of the lot's set (one-shot left it there, disabled), so
            // that it can be parked again.
            let _ = epoll::delete(epoll, &socket);
        }
        let Some(cfg) = listener.config.http.clone() else {
            return guard.finish(EndReason::Internal);
        };
        let Ok(stream) = TcpStream::from_std(socket) else {
            return guard.finish(EndReason::Internal);
        };
        let Some(local) = listener.local.or_else(|| stream.local_addr().ok()) else {
            return guard.finish(EndReason::ClientReset);
        };
        let (peer, client) = guard.addresses();
        let info = ConnInfo {
            client,
            peer,
            local,
            tls: None,
        };
        let handler = Arc::new(Handler::new(
            rt.clone(),
            listener.index,
            cfg.clone(),
            info,
            guard.entry_arc(),
        ));
        let io = Prefixed::new(stream, Vec::new(), guard.entry_arc());
        let served = super::serve_h1(io, handler, cfg, Some((served, deadline)), &guard, &rt).await;
        settle(served, guard, listener, rt);
    });
}
