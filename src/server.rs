//! Start-up and shutdown, the root of the crate: builds the runtime and
//! its first snapshot from a validated config, binds every listener and
//! the admin endpoint, runs the housekeeping tasks, reloads the config on
//! SIGHUP (`reload`), and on SIGTERM/SIGINT drains: stop accepting, let
//! live connections finish until the drain deadline, then end the rest
//! with reason `shutdown`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::Config;
use crate::conn::ConnTable;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::runtime::{Runtime, Snapshot};
use crate::shutdown::{Phase, ShutdownSignal};

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

/// How the process runs besides its config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Reload when the config file changes.
    pub watch: bool,
    /// Hand the listening sockets to a successor, or take them over.
    pub handover: crate::handover::Options,
}

/// Runs until a signal has been handled (or a successor took over) and
/// the drain is over. `path`: the file the config was read from, read
/// again on a reload.
pub async fn run(config: Config, path: Option<PathBuf>, opts: RunOptions) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    // A successor takes the running process's sockets before anything.
    let mut inherited = match (&opts.handover.path, opts.handover.takeover) {
        (Some(p), true) => {
            let p = p.clone();
            let got = tokio::task::spawn_blocking(move || crate::handover::take(&p))
                .await
                .context("handover")??;
            Some(got)
        }
        _ => None,
    };
    let config = Arc::new(config);
    crate::trace::install(config.tracing.as_ref()).context("tracing")?;
    crate::splice::set_max_pipes(config.limits.splice_pipes);
    let table = ConnTable::new(Arc::new(Metrics::new()));
    let shutdown = ShutdownSignal::new();
    let registry =
        Arc::new(crate::registry::Registry::open(&config.registry).context("registry.data_dir")?);
    let shared = crate::runtime::Shared {
        metrics: table.metrics(),
        shutdown: &shutdown,
        registry: &registry,
    };
    let snapshot = Snapshot::build(config.clone(), shared, 1, None).context("TLS settings")?;
    let limits = (
        crate::listener::fd_budget(config.limits.max_connections),
        crate::listener::fd_ceiling(),
    );
    let kernel = Arc::new(crate::kernel::Kernel::new(
        crate::kernel::Kernel::table_name(config.instance.as_deref(), path.as_deref()),
    ));
    let runtime = Arc::new(Runtime::new(
        snapshot,
        table.clone(),
        shutdown.clone(),
        limits,
        (registry.clone(), kernel.clone()),
    ));
    let stop = shutdown.clone();
    tokio::spawn(async move { registry.run_lapses(stop.draining()).await });
    let plane = crate::http::Plane::new(runtime.clone());
    let reloader = Reloader::new(plane.clone(), path);

    // Everything is bound before anything is announced or served: a port
    // taken (the admin's too) stops the start with nothing said listening.
    let mut bound = Vec::new();
    // (A port range is forwarded by the kernel only: nothing to bind.)
    for lc in config.listeners.iter().filter(|l| l.last_port.is_none()) {
        let taken = inherited
            .as_mut()
            .and_then(|i| i.listener(&lc.name, lc.bind));
        let socket = match taken {
            Some(s) => s,
            None => crate::listener::bind(lc.bind, lc.backlog)
                .with_context(|| format!("listener {:?}: cannot bind {}", lc.name, lc.bind))?,
        };
        bound.push((lc.name.clone(), socket));
    }
    let admin = match config.admin {
        Some(bind) => Some(
            match inherited
                .as_mut()
                .and_then(|i| i.listener(crate::handover::ADMIN, bind))
            {
                Some(s) => s,
                None => tokio::net::TcpListener::bind(bind)
                    .await
                    .with_context(|| format!("admin: cannot bind {bind}"))?,
            },
        ),
        None => None,
    };
    let admin_fd = admin.as_ref().and_then(|a| {
        let fd = std::os::fd::AsFd::as_fd(a).try_clone_to_owned().ok()?;
        Some(crate::handover::Offer {
            name: crate::handover::ADMIN.into(),
            bind: config.admin?,
            fd,
        })
    });
    let (handed_over, admin_stop) = tokio::sync::watch::channel(false);
    let admin_tls = match &config.admin_tls {
        Some(t) => Some(crate::tls::settings::admin_server_config(t).context("admin.tls")?),
        None => None,
    };
    // Reload when the file changes (kept for the process's life). Set up
    // before anything is announced: its descriptors are part of the start.
    let _watch = if opts.watch { reloader.watch() } else { None };
    // (The admin listener's reserve descriptors are opened before any
    // data listener accepts.)
    let admin = match admin {
        Some(a) => Some((
            a.local_addr()?,
            crate::admin::serve(a, plane.clone(), reloader.clone(), admin_tls, admin_stop),
        )),
        None => None,
    };
    // Kernel routes: nftables takes their connections from here on.
    let k = kernel.clone();
    let c = config.clone();
    tokio::task::spawn_blocking(move || k.apply(&c, true))
        .await
        .context("kernel path")??;
    tokio::spawn(kernel.clone().run());
    reloader.start_bound(bound).await;
    if let Some((addr, serve)) = admin {
        tracing::info!(%addr, "admin listening");
        tokio::spawn(serve);
    }
    crate::notify::notify("READY=1");
    if let Some(i) = inherited.take() {
        // (The sockets this config does not use are closed here.)
        let table = kernel.table().to_owned();
        tokio::task::spawn_blocking(move || i.ready(&table))
            .await
            .context("handover")?
            .context("handover: telling the old process")?;
        tracing::info!("took over from the old process: it stops accepting and drains");
        // What the old process's admin API changed while this one started
        // is in the data directory: read once it has stopped (its last
        // request answered within a moment).
        let registry = runtime.registry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            match tokio::task::spawn_blocking(move || registry.reconcile()).await {
                Ok(Ok((added, removed))) if added + removed > 0 => tracing::info!(
                    added,
                    removed,
                    "registrations the old process changed while this one started"
                ),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the registry could not be read again after the takeover")
                }
                _ => {}
            }
        });
    }
    let mut handover = match &opts.handover.path {
        Some(p) => {
            let l = crate::handover::listen(p)
                .with_context(|| format!("handover socket {}", p.display()))?;
            tracing::info!(path = %p.display(), "handover socket listening");
            Some(tokio::spawn(await_successor(l, reloader.clone(), admin_fd)))
        }
        None => None,
    };

    if let Some(acme) = runtime.snapshot().tls.acme.clone() {
        tokio::spawn(acme.run());
    }

    tokio::spawn(housekeeping(plane.clone()));

    // Upstream request heads go out once per scheduler round (see
    // `send_batch`): only where every task runs on this one thread.
    #[cfg(feature = "send-batch")]
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread
    {
        tokio::spawn(crate::http::pool::send_batch::flusher());
    }
    tokio::spawn(crate::http::park::watch(plane.clone()));
    // Parked connections' keep-alive deadlines, kept to within a quarter second.
    tokio::spawn(parking_sweeps(plane.clone()));

    // SIGHUP: reload the config (refused candidates leave it running).
    let mut kernel_owned = true;
    loop {
        let successor = async {
            match handover.as_mut() {
                Some(task) => task.await.unwrap_or(None),
                None => std::future::pending().await,
            }
        };
        let signal = tokio::select! {
            s = signals.recv() => s,
            took = successor => Signal::Successor(took),
        };
        match signal {
            Signal::Reload => {
                crate::notify::notify("RELOADING=1");
                let _ = reloader.reload().await;
                crate::notify::notify("READY=1");
            }
            Signal::Successor(Some(next)) => {
                tracing::info!("a successor took over the listening sockets");
                let _ = handed_over.send(true);
                // (A successor with the same table put it in force: it stays.)
                kernel_owned = next.kernel_table.as_deref() != Some(kernel.table());
                break;
            }
            // (Its task failed: no handover from now on; it is not polled again.)
            Signal::Successor(None) => handover = None,
            Signal::Stop => break,
        }
    }
    // (No successor is served while this process drains.)
    if let Some(task) = handover.take() {
        task.abort();
    }
    let drain = runtime.snapshot().config.timeouts.shutdown_drain;
    tracing::info!(live = table.active(), drain = ?drain, "shutdown: draining");
    crate::notify::notify("STOPPING=1");
    shutdown.advance(Phase::Draining);
    // New connections are no longer forwarded by the kernel either.
    if kernel_owned {
        let k = kernel.clone();
        let _ = tokio::task::spawn_blocking(move || k.remove()).await;
    }
    // Parked keep-alive connections have nothing in flight: they end now.
    // (Parked tunnels are live connections: they end with the drain.)
    plane.parking.close_all(false);
    for task in reloader.take_tasks().await {
        let _ = task.await;
    }
    if tokio::time::timeout(drain, table.wait_empty())
        .await
        .is_err()
    {
        tracing::info!(
            live = table.active(),
            "shutdown: drain deadline reached, closing the rest"
        );
    }
    shutdown.advance(Phase::Closing);
    plane.parking.close_all(true);
    if tokio::time::timeout(std::time::Duration::from_secs(5), table.wait_empty())
        .await
        .is_err()
    {
        tracing::warn!(
            live = table.active(),
            "shutdown: connections still open after closing"
        );
    }
    // (Off the runtime's threads: the export runs on them.)
    let _ = tokio::task::spawn_blocking(crate::trace::flush).await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// SIGTERM and SIGINT (stop), SIGHUP (reload), caught from the moment
/// this is created (before anything is bound, so an early signal cannot
/// kill the process unhandled).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// Every half of the splice pipes' idle lifetime: the internal issuer's
/// renewals, the splice pool's and the upstream pools' idle entries, the
/// descriptor ceiling, certificate files changed on disk.
async fn housekeeping(plane: Arc<crate::http::Plane>) {
    let rt = &plane.rt;
    let mut tick = tokio::time::interval(crate::splice::IDLE_PIPE_TTL / 2);
    let mut renewal_checked = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        // The internal issuer's certificates, renewed days before their
        // end: looked at every few minutes.
        let snap = rt.snapshot();
        if renewal_checked.elapsed() >= crate::tls::internal::RENEW_CHECK_EVERY {
            renewal_checked = tokio::time::Instant::now();
            snap.tls.certs.renew_internal();
        }
        crate::splice::trim();
        plane.reap_pools();
        // (A descriptor limit changed under the process is seen.)
        rt.fd_ceiling.store(
            crate::listener::fd_ceiling(),
            std::sync::atomic::Ordering::Relaxed,
        );
        snap.tls.certs.reload_changed();
    }
}

/// The parking lot's sweeps (keep-alive deadlines, to within a quarter
/// second), and memory given back when the process goes quiet.
async fn parking_sweeps(plane: Arc<crate::http::Plane>) {
    let rt = &plane.rt;
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
        plane.parking.sweep();
        // Gone quiet — more parked and few still active, most of a
        // crowd (a flood) gone, or a crowd arrived and settled (its
        // set-up's buffers freed) — : give the memory their tasks and
        // buffers held back to the system.
        let parked = plane.parking.len();
        let live = rt.table.active();
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
            wake_workers(rt.workers);
            again = again.saturating_sub(1);
        }
        parked_before = parked;
        check_memory_budget(rt);
    }
}

/// Sets `Runtime::over_memory` from the resident memory and the running
/// config's `limits.memory_budget`; a change is logged.
fn check_memory_budget(rt: &Runtime) {
    use std::sync::atomic::Ordering;
    let budget = rt.current().config.limits.memory_budget;
    let over = match budget {
        None => false,
        Some(b) => crate::listener::resident_bytes().is_some_and(|r| r > b),
    };
    if rt.over_memory.swap(over, Ordering::Relaxed) != over {
        let resident = crate::listener::resident_bytes().unwrap_or(0);
        if over {
            tracing::warn!(
                resident,
                budget,
                "over the memory budget: new connections are refused (overload)"
            );
        } else {
            tracing::info!(
                resident,
                budget,
                "under the memory budget again: new connections are taken"
            );
        }
    }
}

enum Signal {
    Stop,
    Reload,
    /// The handover task ended: `Some`, a successor took the listening
    /// sockets.
    Successor(Option<crate::handover::Successor>),
}

/// Serves successors on the handover socket until one takes over (`true`).
/// One that fails before saying it is ready leaves this process as it was.
async fn await_successor(
    listener: tokio::net::UnixListener,
    reloader: Arc<Reloader>,
    admin: Option<crate::handover::Offer>,
) -> Option<crate::handover::Successor> {
    loop {
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::warn!(error = %e, "handover socket: accept failed");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut offers = reloader.offers().await;
        if let Some(a) = admin.as_ref().and_then(|a| {
            Some(crate::handover::Offer {
                name: a.name.clone(),
                bind: a.bind,
                fd: a.fd.try_clone().ok()?,
            })
        }) {
            offers.push(a);
        }
        tracing::info!(sockets = offers.len(), "handover: a successor connected");
        let given = match conn.into_std() {
            Ok(conn) => tokio::task::spawn_blocking(move || crate::handover::give(conn, &offers))
                .await
                .unwrap_or(Ok(None)),
            Err(e) => Err(e.into()),
        };
        match given {
            Ok(Some(next)) => return Some(next),
            Ok(None) => tracing::warn!(
                "handover: the successor went away before it was ready; still serving"
            ),
            Err(e) => tracing::warn!(error = %e, "handover failed; still serving"),
        }
    }
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => { tracing::info!("SIGTERM received"); Signal::Stop }
            _ = self.int.recv() => { tracing::info!("SIGINT received"); Signal::Stop }
            _ = self.hup.recv() => { tracing::info!("SIGHUP received: reloading the config"); Signal::Reload }
        }
    }
}
