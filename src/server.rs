//! Start-up and shutdown: builds the runtime from a validated config, binds
//! every listener and the admin endpoint, and on SIGTERM/SIGINT drains:
//! stop accepting, let live connections finish until the drain deadline,
//! then end the rest with reason `shutdown`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use std::sync::atomic::{AtomicU8, Ordering};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::config::{Config, ListenerConfig};
use crate::conn::ConnTable;
use crate::metrics::Metrics;
use crate::routing::Route;
use crate::tls::TlsRt;
use crate::upstream::TargetPool;

/// Shutdown phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    Running,
    /// Listeners closed; live connections may finish.
    Draining,
    /// Drain deadline passed: every connection ends now.
    Closing,
}

/// The shutdown phase, shared by every task. Waiting on it costs a task
/// only a `Notified` (a few words), since every connection task holds one.
#[derive(Clone)]
pub struct ShutdownSignal(Arc<PhaseState>);

struct PhaseState {
    phase: AtomicU8,
    changed: Notify,
}

impl ShutdownSignal {
    pub fn new() -> ShutdownSignal {
        ShutdownSignal(Arc::new(PhaseState {
            phase: AtomicU8::new(Phase::Running as u8),
            changed: Notify::new(),
        }))
    }

    fn phase(&self) -> u8 {
        self.0.phase.load(Ordering::Acquire)
    }

    /// Moves to `phase` (never backwards) and wakes every waiter.
    pub fn advance(&self, phase: Phase) {
        let before = self.0.phase.fetch_max(phase as u8, Ordering::AcqRel);
        if before < phase as u8 {
            self.0.changed.notify_waiters();
        }
    }

    fn reached(&self, phase: Phase) -> Reached<'_> {
        // The waiter exists before the phase is read: a change after the
        // read wakes it (`notify_waiters` reaches waiters not yet polled).
        let notified = self.0.changed.notified();
        Reached {
            made_at: self.phase(),
            state: &self.0,
            target: phase as u8,
            notified,
            polled_with: None,
        }
    }

    /// Draining (or closing) has begun. A plain read, no waiter registered.
    pub fn is_draining(&self) -> bool {
        self.phase() >= Phase::Draining as u8
    }

    /// The drain is over: every connection ends now.
    pub fn is_closing(&self) -> bool {
        self.phase() >= Phase::Closing as u8
    }

    pub fn draining(&self) -> Reached<'_> {
        self.reached(Phase::Draining)
    }

    pub fn closing(&self) -> Reached<'_> {
        self.reached(Phase::Closing)
    }
}

pin_project_lite::pin_project! {
    /// Resolves once the shutdown reaches a phase. Cheap to poll again,
    /// which a connection's `select!` does at every wake-up: while the phase
    /// and the task's waker are unchanged, a poll is one atomic read (tokio's
    /// `Notified` would take its lock each time).
    pub struct Reached<'a> {
        state: &'a PhaseState,
        target: u8,
        #[pin]
        notified: Notified<'a>,
        // The phase when `notified` was made: each change wakes it once.
        made_at: u8,
        // The waker `notified` was last polled with.
        polled_with: Option<Waker>,
    }
}

impl Future for Reached<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            let now = this.state.phase.load(Ordering::Acquire);
            if now >= *this.target {
                return Poll::Ready(());
            }
            if now != *this.made_at {
                // That waiter was for an earlier change: a new one.
                this.notified.set(this.state.changed.notified());
                *this.made_at = now;
                *this.polled_with = None;
                continue;
            }
            if this
                .polled_with
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            match this.notified.as_mut().poll(cx) {
                Poll::Ready(()) => *this.made_at = u8::MAX, // spent: a new one
                Poll::Pending => {
                    *this.polled_with = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Default for ShutdownSignal {
    fn default() -> Self {
        Self::new()
    }
}

pub struct ListenerRt {
    pub index: usize,
    pub name: Arc<str>,
    pub config: ListenerConfig,
    /// The address every accepted connection has as its local address,
    /// when the listener is bound to one (not a wildcard): no
    /// `getsockname` per connection then.
    pub local: Option<SocketAddr>,
}

/// Everything a connection task needs, shared read-only.
pub struct Runtime {
    pub config: Arc<Config>,
    pub table: Arc<ConnTable>,
    pub routes: Vec<Route>,
    /// Route indices, most specific first (HTTP routing order).
    pub http_order: Vec<usize>,
    /// Upstream HTTP connection pools: `pools[route][target]`.
    pub pools: Vec<Vec<Arc<TargetPool>>>,
    pub shutdown: ShutdownSignal,
    pub tls: TlsRt,
    /// Idle keep-alive HTTP/1 connections waiting without a task.
    pub parking: crate::http::park::ParkingLot,
    /// Live connections the data listeners take: `limits.max_connections`,
    /// lowered to what the descriptor limit allows (`listener::fd_budget`).
    pub max_connections: usize,
    /// Accepted connections numbered at or above it are closed at once:
    /// the descriptors above it are kept for the admin listener and the
    /// process (`listener::fd_ceiling`).
    pub fd_ceiling: std::sync::atomic::AtomicU64,
}

impl Runtime {
    pub fn new(
        config: Arc<Config>,
        table: Arc<ConnTable>,
        shutdown: ShutdownSignal,
        tls: TlsRt,
    ) -> Runtime {
        let routes: Vec<Route> = config
            .routes
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, r)| {
                let stats = table.metrics().route(&r.name);
                Route::new(i, r, stats)
            })
            .collect();
        let pools = routes
            .iter()
            .map(|r| {
                // Routes bound to a TCP listener never carry HTTP requests.
                let on_http = config.route_serves_http(&r.config);
                let Some(f) = r.config.action.forward() else {
                    return Vec::new();
                };
                if !on_http {
                    return Vec::new();
                }
                let upstream = crate::upstream::Upstream::new(
                    &r.config.upstream,
                    tls.upstreams[r.index].clone(),
                );
                f.targets
                    .iter()
                    .map(|t| TargetPool::new(t.clone(), &r.config.policy.http, upstream.clone()))
                    .collect()
            })
            .collect();
        let max_connections = crate::listener::fd_budget(config.limits.max_connections);
        Runtime {
            max_connections,
            fd_ceiling: crate::listener::fd_ceiling().into(),
            http_order: crate::routing::http_order(&routes),
            routes,
            pools,
            config,
            table,
            shutdown,
            tls,
            parking: Default::default(),
        }
    }

    /// Closes pooled upstream connections past their idle lifetime.
    pub fn reap_pools(&self) {
        self.pools.iter().flatten().for_each(|p| p.reap());
    }
}

/// Connections that must have ended (with at most half of the most live
/// left) before memory is given back on that account.
const RELEASE_AFTER_ENDED: usize = 256;

/// Sweeps (a quarter second apart) that give memory back after a crowd is
/// gone.
const RELEASE_SWEEPS: u32 = 8;

/// Wakes parked workers with empty tasks, so that each passes through its
/// park hook again (`alloc::on_worker_park`) soon.
fn wake_workers(workers: usize) {
    if workers > 1 {
        for _ in 0..2 * workers {
            tokio::spawn(async {});
        }
    }
}

/// Runs until a signal has been handled and the drain is over.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let config = Arc::new(config);
    crate::splice::set_max_pipes(config.limits.splice_pipes);
    let metrics = Arc::new(Metrics::new());
    let table = ConnTable::new(metrics);
    let shutdown = ShutdownSignal::new();
    let tls = TlsRt::build(&config).context("TLS settings")?;
    let runtime = Arc::new(Runtime::new(
        config.clone(),
        table.clone(),
        shutdown.clone(),
        tls,
    ));

    // Everything is bound before anything is announced or served: a port
    // taken (the admin's too) stops the start with nothing said listening.
    let mut bound = Vec::new();
    for lc in &config.listeners {
        let socket = crate::listener::bind(lc.bind, lc.backlog)
            .with_context(|| format!("listener {:?}: cannot bind {}", lc.name, lc.bind))?;
        bound.push(socket);
    }
    let admin = match config.admin {
        Some(bind) => Some(
            tokio::net::TcpListener::bind(bind)
                .await
                .with_context(|| format!("admin: cannot bind {bind}"))?,
        ),
        None => None,
    };
    let mut accept_tasks = Vec::new();
    for ((index, lc), socket) in config.listeners.iter().enumerate().zip(bound) {
        let addr: SocketAddr = socket.local_addr()?;
        tracing::info!(listener = %lc.name, addr = %addr, "listening");
        let rt = Arc::new(ListenerRt {
            index,
            name: lc.name.as_str().into(),
            config: lc.clone(),
            local: (!addr.ip().is_unspecified()).then_some(addr),
        });
        accept_tasks.push(tokio::spawn(crate::listener::accept_loop(
            socket,
            rt,
            runtime.clone(),
        )));
    }
    if let Some(admin) = admin {
        tracing::info!(addr = %admin.local_addr()?, "admin listening");
        tokio::spawn(crate::admin::serve(admin, runtime.clone()));
    }
    crate::notify::notify("READY=1");

    if let Some(acme) = runtime.tls.acme.clone() {
        tokio::spawn(acme.run());
    }

    let housekeeping = runtime.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::splice::IDLE_PIPE_TTL / 2);
        let mut renewal_checked = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            // The internal issuer's certificates, renewed days before their
            // end: looked at every few minutes.
            if renewal_checked.elapsed() >= crate::tls::internal::RENEW_CHECK_EVERY {
                renewal_checked = tokio::time::Instant::now();
                housekeeping.tls.certs.renew_internal();
            }
            crate::splice::trim();
            housekeeping.reap_pools();
            // (A descriptor limit changed under the process is seen.)
            housekeeping.fd_ceiling.store(
                crate::listener::fd_ceiling(),
                std::sync::atomic::Ordering::Relaxed,
            );
            housekeeping.tls.certs.reload_changed();
        }
    });

    // Upstream request heads go out once per scheduler round (see
    // `send_batch`): only where every task runs on this one thread.
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread
    {
        tokio::spawn(crate::upstream::send_batch::flusher());
    }
    tokio::spawn(crate::http::park::watch(runtime.clone()));
    // Parked connections' keep-alive deadlines, kept to within a quarter second.
    let parking = runtime.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::http::park::SWEEP_EVERY);
        let mut parked_before = 0;
        // The most live connections since memory was last given back, the
        // number live then, and at the last sweep.
        let mut high = 0;
        let mut settled = 0;
        let mut live_before = 0;
        // Sweeps left that give memory back again: a crowd's last
        // connections end, and are freed (possibly on other workers), over
        // a while, not all at the sweep that noticed.
        let mut again = 0u32;
        loop {
            tick.tick().await;
            parking.parking.sweep();
            // Gone quiet — more parked and few still active, most of a
            // crowd (a flood) gone, or a crowd arrived and settled (its
            // set-up's buffers freed) — : give the memory their tasks and
            // buffers held back to the system.
            let parked = parking.parking.len();
            let live = parking.table.active();
            let active = live.saturating_sub(parked);
            high = high.max(live);
            let crowd_gone = high >= live + RELEASE_AFTER_ENDED && live <= high / 2;
            let crowd_settled = live >= settled + RELEASE_AFTER_ENDED && live == live_before;
            if crowd_gone || crowd_settled {
                again = RELEASE_SWEEPS;
                high = live;
                settled = live;
            }
            settled = settled.min(live);
            live_before = live;
            if (parked > parked_before && active < 16) || again > 0 {
                crate::alloc::release_free_pages();
                wake_workers(parking.config.workers);
                again = again.saturating_sub(1);
            }
            parked_before = parked;
        }
    });

    signals.recv().await;
    tracing::info!(live = table.active(), drain = ?config.timeouts.shutdown_drain, "shutdown: draining");
    crate::notify::notify("STOPPING=1");
    shutdown.advance(Phase::Draining);
    // Parked keep-alive connections have nothing in flight: they end now.
    // (Parked tunnels are live connections: they end with the drain.)
    runtime.parking.close_all(false);
    for task in accept_tasks {
        let _ = task.await;
    }
    if tokio::time::timeout(config.timeouts.shutdown_drain, table.wait_empty())
        .await
        .is_err()
    {
        tracing::info!(
            live = table.active(),
            "shutdown: drain deadline reached, closing the rest"
        );
    }
    shutdown.advance(Phase::Closing);
    runtime.parking.close_all(true);
    if tokio::time::timeout(std::time::Duration::from_secs(5), table.wait_empty())
        .await
        .is_err()
    {
        tracing::warn!(
            live = table.active(),
            "shutdown: connections still open after closing"
        );
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// SIGTERM and SIGINT, caught from the moment this is created (before
/// anything is bound, so an early signal cannot kill the process unhandled).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// A runtime with one listener and one route, for unit tests.
#[cfg(test)]
pub fn test_runtime() -> (Arc<Runtime>, Arc<ListenerRt>) {
    let text = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[routes]]\nname = \"r\"\naction.forward = [\"127.0.0.1:9\"]\n";
    let config = Arc::new(
        crate::config::parse("test.toml", text, &|_| None).unwrap_or_else(|e| panic!("{e}")),
    );
    let metrics = Arc::new(Metrics::new());
    let listener = Arc::new(ListenerRt {
        index: 0,
        name: "l".into(),
        config: config.listeners[0].clone(),
        local: None,
    });
    let runtime = Arc::new(Runtime::new(
        config.clone(),
        ConnTable::new(metrics),
        ShutdownSignal::new(),
        TlsRt::build(&config).unwrap_or_else(|e| panic!("{e}")),
    ));
    (runtime, listener)
}
