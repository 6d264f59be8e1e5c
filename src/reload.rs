//! Live configuration: the one path every config change takes (SIGHUP, a
//! change of the file, `POST /config/reload`). The candidate is read and
//! validated like at start; an invalid one is refused with every error
//! and the running config stays. A valid one becomes a new `Snapshot`
//! (keeping the pools and certificates of what did not change), its new
//! listeners are bound (a port that cannot be bound refuses the whole
//! candidate: nothing is half applied), removed listeners stop accepting,
//! and the snapshot is swapped in. Live connections keep what they started
//! with (see `runtime`); listeners whose name and address stay keep their
//! socket, so no connection is refused during a reload.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{self, Config};
use crate::http::Plane;
use crate::runtime::{Runtime, Snapshot};

/// An accept loop this process runs, and how to stop it.
struct Running {
    bind: SocketAddr,
    /// A duplicate of the listening socket, to hand to a successor
    /// (`handover`).
    fd: Option<std::os::fd::OwnedFd>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Option<TcpListener>>,
}

impl Running {
    /// Stops the accept loop; its socket, unless the process is draining.
    async fn stop(self) -> Option<TcpListener> {
        let _ = self.stop.send(true);
        self.task.await.ok().flatten()
    }
}

/// What a reload changed, by name (also the admin API's answer).
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Changes {
    pub generation: u64,
    pub listeners: Diff,
    pub routes: Diff,
    /// Named clusters (`[[clusters]]`).
    pub clusters: Diff,
    pub certificates_changed: bool,
    /// Settings read only at start, changed in the file: in force after a
    /// restart.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub need_restart: Vec<&'static str>,
}

#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Diff {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Why a candidate was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Invalid(config::LoadError),
    #[error("{0}")]
    Settings(String),
    #[error("listener {name:?}: cannot bind {addr}: {error}")]
    Bind {
        name: String,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("the running config was not read from a file: nothing to reload")]
    NoFile,
}

pub struct Reloader {
    /// The HTTP plane, and through it the runtime.
    plane: Arc<Plane>,
    path: Option<PathBuf>,
    /// A hash of the file's bytes at the last reload (applied or refused),
    /// so that a change seen by the watch is tried once.
    last_read: std::sync::Mutex<Option<u64>>,
    /// Accept loops by listener name.
    running: tokio::sync::Mutex<HashMap<String, Running>>,
}

impl Reloader {
    pub fn new(plane: Arc<Plane>, path: Option<PathBuf>) -> Arc<Reloader> {
        Arc::new(Reloader {
            plane,
            path,
            last_read: Default::default(),
            running: Default::default(),
        })
    }

    /// Puts `config`'s kernel routes in force.
    async fn kernel(&self, config: &Arc<Config>) -> Result<(), Refused> {
        let kernel = self.rt().kernel.clone();
        let c = config.clone();
        tokio::task::spawn_blocking(move || kernel.apply(&c, false))
            .await
            .map_err(|e| Refused::Settings(format!("kernel path: {e}")))?
            .map_err(|e| Refused::Settings(e.to_string()))
    }

    fn rt(&self) -> &Arc<Runtime> {
        &self.plane.rt
    }

    /// Starts the accept loops of the listeners bound at start.
    pub async fn start_bound(&self, bound: Vec<(String, TcpListener)>) {
        let snap = self.rt().snapshot();
        let mut running = self.running.lock().await;
        for (name, socket) in bound {
            running.insert(name.clone(), self.start(&snap, name, socket));
        }
    }

    fn start(&self, snap: &Snapshot, name: String, socket: TcpListener) -> Running {
        let bind = snap.listener(&name).map(|l| l.config.bind);
        let addr = socket
            .local_addr()
            .unwrap_or_else(|_| bind.unwrap_or(([0, 0, 0, 0], 0).into()));
        tracing::info!(listener = %name, addr = %addr, "listening");
        let fd = std::os::fd::AsFd::as_fd(&socket).try_clone_to_owned().ok();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(crate::listener::accept_loop(
            socket,
            name.into(),
            self.plane.clone(),
            stopped,
        ));
        Running {
            bind: bind.unwrap_or(addr),
            fd,
            stop,
            task,
        }
    }

    /// The listening sockets running now, each as a duplicate descriptor
    /// with its name and configured bind, for a successor.
    pub async fn offers(&self) -> Vec<crate::handover::Offer> {
        let running = self.running.lock().await;
        running
            .iter()
            .filter_map(|(name, r)| {
                Some(crate::handover::Offer {
                    name: name.clone(),
                    bind: r.bind,
                    fd: r.fd.as_ref()?.try_clone().ok()?,
                })
            })
            .collect()
    }

    /// The accept loops' tasks, for the drain to wait on.
    pub async fn take_tasks(&self) -> Vec<tokio::task::JoinHandle<Option<TcpListener>>> {
        let mut running = self.running.lock().await;
        running.drain().map(|(_, r)| r.task).collect()
    }

    /// Reads the config file again and applies it.
    pub async fn reload(&self) -> Result<Changes, Refused> {
        let Some(path) = &self.path else {
            return Err(Refused::NoFile);
        };
        // Read once: what is parsed is what the watch compares with.
        let text = std::fs::read_to_string(path).map_err(|error| config::LoadError::Read {
            path: path.display().to_string(),
            error,
        });
        *self.last_read.lock().unwrap_or_else(|p| p.into_inner()) =
            text.as_ref().ok().map(|t| text_hash(t.as_bytes()));
        let result = match text.and_then(|t| config::from_text(path, &t)) {
            Ok(c) => self.apply(c).await,
            Err(e) => Err(Refused::Invalid(e)),
        };
        let metrics = self.rt().metrics();
        match &result {
            Ok(changes) => {
                metrics.reloads[0].fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    generation = changes.generation,
                    changes = %serde_json::to_string(changes).unwrap_or_default(),
                    "config reloaded"
                );
                for what in &changes.need_restart {
                    tracing::warn!(
                        setting = what,
                        "changed in the config file: in force after a restart"
                    );
                }
            }
            Err(e) => {
                metrics.reloads[1].fetch_add(1, Ordering::Relaxed);
                for line in e.to_string().lines() {
                    tracing::warn!(
                        error = line,
                        "config reload refused; the running config stays"
                    );
                }
            }
        }
        result
    }

    /// Makes `config` the running one, or changes nothing.
    async fn apply(&self, config: Config) -> Result<Changes, Refused> {
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        // One reload at a time: the accept loops' map is held throughout.
        let mut running = self.running.lock().await;
        let previous = self.rt().snapshot();
        let old = &previous.config;
        if old.acme != config.acme && (old.acme.is_some() || config.acme.is_some()) {
            return Err(Refused::Settings(
                "[acme] cannot change while running: restart Gatehouse for it".into(),
            ));
        }
        let mut changes = Changes {
            generation: previous.generation + 1,
            certificates_changed: old.certificates != config.certificates
                || old.internal_ca != config.internal_ca,
            ..Default::default()
        };
        let starts_only = [
            (old.workers != config.workers, "workers"),
            (old.instance != config.instance, "instance"),
            (old.admin != config.admin, "admin"),
            (old.registry != config.registry, "registry"),
            (old.tracing != config.tracing, "tracing"),
            (old.admin_tls != config.admin_tls, "admin.tls"),
            (
                old.limits.max_connections != config.limits.max_connections,
                "limits.max_connections",
            ),
            (
                old.log.level != config.log.level || old.log.format != config.log.format,
                "log",
            ),
        ];
        changes.need_restart = starts_only
            .iter()
            .filter(|(c, _)| *c)
            .map(|(_, w)| *w)
            .collect();
        let config = Arc::new(config);
        let next = Snapshot::build(
            config.clone(),
            self.rt().shared(),
            changes.generation,
            Some(&previous),
        )
        .map_err(|e| Refused::Settings(format!("TLS settings: {e}")))?;
        // Kernel routes before the listeners: a strict one nftables cannot
        // take refuses the whole reload, with nothing applied. (A refusal
        // after it puts the running config's rules back.)
        self.kernel(&config).await?;

        // Listeners: kept (same name and address), moved to a new name at
        // the same address (the socket goes with it), removed, added.
        let mut kept: HashMap<String, Running> = HashMap::new();
        let mut gone: Vec<(String, Running)> = Vec::new();
        for (name, r) in running.drain() {
            match config.listeners.iter().find(|l| l.name == name) {
                Some(l) if l.bind == r.bind && l.last_port.is_none() => {
                    if old
                        .listeners
                        .iter()
                        .find(|o| o.name == name)
                        .is_some_and(|o| !same_listener(o, l))
                    {
                        changes.listeners.changed.push(name.clone());
                    }
                    kept.insert(name, r);
                }
                _ => gone.push((name, r)),
            }
        }
        // A listener renamed at the same address takes the old one's
        // socket: no moment without a listener, nothing to bind.
        let mut renamed: Vec<(String, String, TcpListener)> = Vec::new();
        for l in config.listeners.iter().filter(|l| l.last_port.is_none()) {
            if kept.contains_key(&l.name) || l.bind.port() == 0 {
                continue;
            }
            if let Some(i) = gone.iter().position(|(_, r)| r.bind == l.bind) {
                let (old_name, r) = gone.swap_remove(i);
                let Some(socket) = r.stop().await else {
                    let _ = self.kernel(&previous.config).await;
                    // Draining: the loops that are left stay known to the
                    // drain, which waits for them.
                    running.extend(kept);
                    running.extend(gone);
                    return Err(Refused::Settings("the process is shutting down".into()));
                };
                renamed.push((old_name, l.name.clone(), socket));
            }
        }
        let mut bound: Vec<(String, TcpListener)> = Vec::new();
        for l in config.listeners.iter().filter(|l| l.last_port.is_none()) {
            if kept.contains_key(&l.name) || renamed.iter().any(|(_, n, _)| *n == l.name) {
                continue;
            }
            match bind_one(&l.name, l.bind, l.backlog) {
                Ok(s) => bound.push((l.name.clone(), s)),
                Err(e) => {
                    // Nothing applied: the loops go back as they were.
                    let _ = self.kernel(&previous.config).await;
                    running.extend(kept);
                    running.extend(gone);
                    for (old_name, _, socket) in renamed {
                        let r = self.start(&previous, old_name.clone(), socket);
                        running.insert(old_name, r);
                    }
                    return Err(e);
                }
            }
            changes.listeners.added.push(l.name.clone());
        }
        for (old_name, name, socket) in renamed {
            changes.listeners.removed.push(old_name);
            changes.listeners.added.push(name.clone());
            bound.push((name, socket));
        }
        // Closed before the answer: once it is out, a connect is refused.
        for (name, r) in gone {
            drop(r.stop().await);
            tracing::info!(listener = %name, "listener closed");
            changes.listeners.removed.push(name);
        }
        routes_diff(old, &config, &mut changes.routes);
        clusters_diff(old, &config, &mut changes.clusters);
        let next_generation = next.generation;
        let next = Arc::new(next);
        self.rt().swap_arc(next.clone());
        self.plane.publish(next.clone());
        self.rt()
            .metrics()
            .generation
            .store(next_generation, Ordering::Relaxed);
        self.retire(
            &previous,
            &changes.routes.removed,
            config.timeouts.route_drain,
        );
        running.extend(kept);
        for (name, socket) in bound {
            running.insert(name.clone(), self.start(&next, name, socket));
        }
        crate::splice::set_max_pipes(config.limits.splice_pipes);
        if changes.listeners.is_empty()
            && changes.routes.is_empty()
            && changes.clusters.is_empty()
            && !changes.certificates_changed
        {
            tracing::info!(
                generation = next_generation,
                "config reloaded without a change"
            );
        }
        Ok(changes)
    }
}

/// A hash of a config file's bytes.
fn text_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// How long the file must stay unchanged before a change is reloaded:
/// an editor's save (write, rename, chmod) or a deploy's several writes
/// become one reload.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(250);

impl Reloader {
    /// Watches the config file and reloads it when its content changes
    /// (debounced by `SETTLE`). The directory is watched, not the file:
    /// editors and deploy tools replace a file by renaming another onto
    /// it. The watch lasts as long as the returned watcher.
    pub fn watch(self: &Arc<Self>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher as _;
        let path = self.path.clone()?;
        let name = path.file_name()?.to_owned();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let changed = Arc::new(tokio::sync::Notify::new());
        let seen = changed.clone();
        let watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            if let Ok(e) = e
                && !e.kind.is_access()
                && e.paths.iter().any(|p| p.file_name() == Some(&name))
            {
                seen.notify_one();
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "config file not watched: reload by SIGHUP or the admin API");
                return None;
            }
        };
        if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "config file not watched: reload by SIGHUP or the admin API");
            return None;
        }
        tracing::info!(file = %path.display(), "watching the config file for changes");
        let this = self.clone();
        tokio::spawn(async move {
            let draining = this.rt().shutdown.draining();
            tokio::pin!(draining);
            loop {
                tokio::select! {
                    () = changed.notified() => {}
                    _ = &mut draining => return,
                }
                // Until the file has been quiet for a moment.
                while tokio::time::timeout(SETTLE, changed.notified())
                    .await
                    .is_ok()
                {}
                let now = std::fs::read(&path).ok().map(|b| text_hash(&b));
                let last = *this.last_read.lock().unwrap_or_else(|p| p.into_inner());
                if now.is_some() && now != last {
                    tracing::info!("config file changed: reloading");
                    crate::notify::notify("RELOADING=1");
                    let _ = this.reload().await;
                    crate::notify::notify("READY=1");
                }
            }
        });
        Some(watcher)
    }

    /// The connections of routes a reload removed go on for `drain`, then
    /// end with `route_removed` (unless a later reload brought a route of
    /// that name back).
    fn retire(&self, previous: &Snapshot, removed: &[String], drain: std::time::Duration) {
        for name in removed {
            let Some(route) = previous.routes.iter().find(|r| *r.name == **name) else {
                continue;
            };
            self.rt().metrics().retire(route.stats.clone());
            let closing = route.closing.clone();
            let rt = self.rt().clone();
            let name = name.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(drain) => {}
                    () = closing.closing() => return,
                }
                if rt.current().routes.iter().any(|r| *r.name == *name) {
                    tracing::info!(route = %name, "removed route back before its drain ended: its connections stay");
                    return;
                }
                tracing::info!(route = %name, "removed route's drain over: its connections end");
                closing.close_alone();
            });
        }
    }
}

/// Listener settings other than the address.
fn same_listener(a: &config::ListenerConfig, b: &config::ListenerConfig) -> bool {
    a.backlog == b.backlog
        && format!("{:?}{:?}{:?}", a.accept_proxy, a.http, a.tls)
            == format!("{:?}{:?}{:?}", b.accept_proxy, b.http, b.tls)
}

fn routes_diff(old: &Config, new: &Config, diff: &mut Diff) {
    for r in &new.routes {
        match old.routes.iter().find(|o| o.name == r.name) {
            None => diff.added.push(r.name.clone()),
            Some(o) if route_key(old, o) != route_key(new, r) => diff.changed.push(r.name.clone()),
            Some(_) => {}
        }
    }
    for o in &old.routes {
        if !new.routes.iter().any(|r| r.name == o.name) {
            diff.removed.push(o.name.clone());
        }
    }
}

fn clusters_diff(old: &Config, new: &Config, diff: &mut Diff) {
    let named = |c: &Config| -> Vec<config::ClusterConfig> {
        c.clusters.iter().filter(|k| !k.inline).cloned().collect()
    };
    let (old, new) = (named(old), named(new));
    for k in &new {
        match old.iter().find(|o| o.name == k.name) {
            None => diff.added.push(k.name.clone()),
            Some(o) if o != k => diff.changed.push(k.name.clone()),
            Some(_) => {}
        }
    }
    for o in &old {
        if !new.iter().any(|k| k.name == o.name) {
            diff.removed.push(o.name.clone());
        }
    }
}

/// What a route is, apart from positions in its config: its listener by
/// name, its cluster as below.
fn route_key(c: &Config, r: &config::RouteConfig) -> String {
    let mut r = r.clone();
    let listener = r
        .matcher
        .listener
        .take()
        .and_then(|i| c.listeners.get(i))
        .map(|l| l.name.as_str());
    // Its own cluster (`action.forward`) by content, a named one by name
    // (a change of that is the cluster's).
    let cluster = match &mut r.action {
        config::RouteAction::Forward(f) if !f.split.is_empty() => {
            f.cluster = 0;
            let names: Vec<(String, u32)> = std::mem::take(&mut f.split)
                .into_iter()
                .filter_map(|(k, w)| Some((c.clusters.get(k)?.name.clone(), w)))
                .collect();
            Some(format!("{names:?}"))
        }
        config::RouteAction::Forward(f) => {
            c.clusters.get(std::mem::take(&mut f.cluster)).map(|k| {
                if k.inline {
                    format!("{k:?}")
                } else {
                    k.name.clone()
                }
            })
        }
        config::RouteAction::RedirectHttps { .. } => None,
    };
    // Its filters by name (a change of one is the filter's).
    let filters: Vec<&str> = std::mem::take(&mut r.filters)
        .into_iter()
        .filter_map(|i| Some(c.filters.get(i)?.name.as_str()))
        .collect();
    format!("{r:?}{listener:?}{cluster:?}{filters:?}")
}

fn bind_one(name: &str, addr: SocketAddr, backlog: u32) -> Result<TcpListener, Refused> {
    crate::listener::bind(addr, backlog).map_err(|error| Refused::Bind {
        name: name.to_owned(),
        addr,
        error,
    })
}
