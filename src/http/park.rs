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
//!
//! An upgraded connection's tunnel over plain TCP parks the same way after
//! `TUNNEL_PARK_AFTER` without a byte either way: both sockets wait in the
//! set under one slot, the first event on either resumes the pump in a new
//! task. A parked tunnel keeps its idle timeout and max lifetime (the
//! sweep), and is a live connection for the drain: it ends at the drain's
//! end, not its start.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::event::epoll;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Served;
use super::h1::Parked;
use super::plane::Plane;
use super::proxy::{ConnInfo, Handler};
use super::tunnel::PumpTunnel;
use crate::conn::{ConnGuard, EndReason};
use crate::io::Prefixed;
use crate::pump;
use crate::runtime::ListenerRt;
use crate::shutdown::ShutdownSignal;

type Io = Prefixed<TcpStream>;

/// How often parked connections' deadlines are checked.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// An upgraded connection's tunnel (plain TCP both sides) idle this long,
/// nothing in flight, is parked: both sockets wait in the lot.
pub const TUNNEL_PARK_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Readiness events taken from the lot's epoll set per system call.
const EVENTS_PER_WAIT: usize = 256;

/// The parked connections of one HTTP plane.
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
    conn: Option<Occupant>,
}

enum Occupant {
    Http(ParkedConn),
    /// (Boxed: a keep-alive connection's slot stays small.)
    Tunnel(Box<ParkedTunnel>),
}

/// An upgraded connection's tunnel, idle: both plain-TCP sockets wait in
/// the lot's epoll set; the first byte (or close) either way resumes it.
struct ParkedTunnel {
    client: std::net::TcpStream,
    upstream: std::net::TcpStream,
    deadlines: pump::Deadlines,
    /// When the idle timeout and the max lifetime end it, if they do.
    idle_end: Option<Instant>,
    lifetime_end: Option<Instant>,
    /// Its route's signal (`tunnel::Tunnel::closing`).
    closing: ShutdownSignal,
    guard: ConnGuard,
}

impl Occupant {
    /// Why it ends now, if its deadline has passed.
    fn expired(&self, now: Instant) -> Option<EndReason> {
        match self {
            Occupant::Http(c) => (c.deadline <= now).then_some(EndReason::IdleTimeout),
            Occupant::Tunnel(t) => {
                if t.closing.is_closing() {
                    Some(t.closing.end_reason())
                } else if t.lifetime_end.is_some_and(|e| e <= now) {
                    Some(EndReason::MaxLifetime)
                } else if t.idle_end.is_some_and(|e| e <= now) {
                    Some(EndReason::IdleTimeout)
                } else {
                    None
                }
            }
        }
    }

    fn finish(self, reason: EndReason) {
        match self {
            Occupant::Http(c) => c.guard.finish(reason),
            Occupant::Tunnel(t) => t.guard.finish(reason),
        }
    }
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
    fn take(&mut self, index: usize) -> Option<Occupant> {
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

    /// Ends parked connections past their deadline (keep-alive; a tunnel's
    /// idle timeout or max lifetime).
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut ended = Vec::new();
        {
            let mut lot = lock(&self.lot);
            for i in 0..lot.slots.len() {
                let expired = lot.slots[i].conn.as_ref().and_then(|c| c.expired(now));
                if let Some(reason) = expired {
                    ended.extend(lot.take(i).map(|c| (c, reason)));
                }
                if lot.slots.is_empty() {
                    break;
                }
            }
        }
        // Closed outside the lock: closing a socket takes time.
        for (c, reason) in ended {
            c.finish(reason);
        }
    }

    /// Ends every parked keep-alive connection (the drain at shutdown: they
    /// have nothing in flight to finish); with `tunnels`, parked tunnels
    /// too (the drain's end: they end as live connections do).
    pub fn close_all(&self, tunnels: bool) {
        let ended: Vec<Occupant> = {
            // (The generation stays: events already taken from the epoll
            // set must not match slots filled later.)
            let mut lot = lock(&self.lot);
            let mut ended = Vec::new();
            for i in 0..lot.slots.len() {
                let http = matches!(lot.slots[i].conn, Some(Occupant::Http(_)));
                if http || tunnels {
                    ended.extend(lot.take(i));
                }
                if lot.slots.is_empty() {
                    break;
                }
            }
            ended
        };
        for c in ended {
            c.finish(EndReason::Shutdown);
        }
    }

    /// Puts `conn` in a slot and its sockets in the epoll set; gives it
    /// back when that cannot be done.
    fn park(&self, conn: Occupant) -> Result<(), Occupant> {
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
        let added = match &conn {
            Occupant::Http(c) => epoll::add(epoll, &c.socket, data, interest),
            Occupant::Tunnel(t) => epoll::add(epoll, &t.client, data, interest).and_then(|()| {
                epoll::add(epoll, &t.upstream, data, interest).inspect_err(|_| {
                    let _ = epoll::delete(epoll, &t.client);
                })
            }),
        };
        if added.is_err() {
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
    fn take_woken(&self, events: &[epoll::Event]) -> Vec<Occupant> {
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
pub async fn watch(plane: Arc<Plane>) {
    let Some(epoll) = plane.parking.epoll.clone() else {
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
        match wake_ready(&plane) {
            Ok(()) => ready.clear_ready(),
            Err(e) => {
                tracing::error!(error = %e, "parking lot: epoll_wait failed; closing parked connections");
                plane.parking.close_all(true);
                return;
            }
        }
    }
}

/// Resumes every parked connection the epoll set has an event for.
fn wake_ready(plane: &Arc<Plane>) -> rustix::io::Result<()> {
    let Some(epoll) = &plane.parking.epoll else {
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
        for conn in plane.parking.take_woken(&events) {
            match conn {
                Occupant::Http(c) => resume(c, plane),
                Occupant::Tunnel(t) => resume_tunnel(*t, plane.clone()),
            }
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
fn spawn_upgraded(u: Box<super::h1::Upgrade<Io>>, guard: ConnGuard, plane: Arc<Plane>) {
    use super::tunnel::{Prepared, prepare};
    tokio::spawn(async move {
        match prepare(*u, &guard).await {
            Prepared::Pump(tunnel) => {
                tokio::spawn(run_tunnel(tunnel, guard, plane));
            }
            Prepared::Copy(tunnel) => {
                let reason = Box::pin(tunnel.run()).await;
                guard.finish(reason);
            }
            Prepared::Ended(reason) => guard.finish(reason),
        }
    });
}

/// A plain-TCP tunnel's pump, until the tunnel ends or has been idle for
/// `TUNNEL_PARK_AFTER`: then it is parked.
async fn run_tunnel(tunnel: PumpTunnel<Io>, guard: ConnGuard, plane: Arc<Plane>) {
    // (Without the lot's epoll set, a tunnel stays in its task.)
    let park_after = plane.parking.epoll.is_some().then_some(TUNNEL_PARK_AFTER);
    let idle = match tunnel.run_parking(&guard, park_after).await {
        Ok(reason) => return guard.finish(reason),
        Err(idle) => idle,
    };
    if plane.rt.shutdown.is_closing() {
        return guard.finish(EndReason::Shutdown);
    }
    let (client, upstream, deadlines, closing) = idle.into_parts();
    let (Ok(client), Ok(upstream)) = (client.into_std(), upstream.into_std()) else {
        return guard.finish(EndReason::Internal);
    };
    let now = Instant::now();
    let std_now = std::time::Instant::now();
    let tunnel = ParkedTunnel {
        // The pump parks only after `TUNNEL_PARK_AFTER` without a byte: the
        // idle deadline counts from then.
        idle_end: deadlines
            .idle
            .map(|d| now + d.saturating_sub(TUNNEL_PARK_AFTER)),
        lifetime_end: deadlines
            .max_lifetime
            .map(|d| now + (deadlines.started + d).saturating_duration_since(std_now)),
        client,
        upstream,
        deadlines,
        closing,
        guard,
    };
    if let Err(conn) = plane.parking.park(Occupant::Tunnel(Box::new(tunnel))) {
        if let Occupant::Tunnel(t) = conn {
            resume_tunnel(*t, plane.clone());
        }
        return;
    }
    // A drain that reached its end meanwhile has emptied the lot already:
    // this one too.
    if plane.rt.shutdown.is_closing() {
        plane.parking.close_all(true);
    }
}

/// A task again for a parked tunnel whose client or upstream sent
/// something (or left).
fn resume_tunnel(t: ParkedTunnel, plane: Arc<Plane>) {
    tokio::spawn(async move {
        let ParkedTunnel {
            client,
            upstream,
            deadlines,
            closing,
            guard,
            ..
        } = t;
        if let Some(epoll) = &plane.parking.epoll {
            let _ = epoll::delete(epoll, &client);
            let _ = epoll::delete(epoll, &upstream);
        }
        let (Ok(client), Ok(upstream)) =
            (TcpStream::from_std(client), TcpStream::from_std(upstream))
        else {
            return guard.finish(EndReason::Internal);
        };
        let tunnel = PumpTunnel::from_parts(client, upstream, deadlines, closing, &guard);
        run_tunnel(tunnel, guard, plane).await;
    });
}

/// Where a served connection goes next: its end is recorded, its tunnel
/// is run (upgraded), or it is parked until its next request.
pub fn settle(served: Served<Io>, guard: ConnGuard, listener: Arc<ListenerRt>, plane: Arc<Plane>) {
    let Parked {
        io,
        handler,
        served,
        deadline,
    } = match served {
        Served::End(reason) => return guard.finish(reason),
        Served::Upgrade(u) => return spawn_upgraded(u, guard, plane),
        Served::Park(p) => p,
    };
    if plane.rt.shutdown.is_draining() {
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
    if let Err(conn) = plane.parking.park(Occupant::Http(conn)) {
        if let Occupant::Http(c) = conn {
            resume(c, &plane);
        }
        return;
    }
    // A drain that began meanwhile has emptied the lot already: this one too.
    if plane.rt.shutdown.is_draining() {
        plane.parking.close_all(false);
    }
}

/// A task again for a parked connection whose client sent something (or left).
fn resume(c: ParkedConn, plane: &Arc<Plane>) {
    let plane = plane.clone();
    tokio::spawn(async move {
        let ParkedConn {
            socket,
            served,
            deadline,
            guard,
            listener,
        } = c;
        if let Some(epoll) = &plane.parking.epoll {
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
            plane.clone(),
            listener.name.clone(),
            cfg.clone(),
            info,
            guard.entry_arc(),
        ));
        let io = Prefixed::new(stream, Vec::new(), guard.entry_arc());
        let served =
            super::serve_h1(io, handler, cfg, Some((served, deadline)), &guard, &plane).await;
        settle(served, guard, listener, plane);
    });
}
