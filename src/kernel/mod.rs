//! The kernel fast path: routes with `action.engine = "kernel"` are
//! forwarded by nftables (DNAT, and masquerade towards other hosts) from
//! one table this process owns, `inet gatehouse_<instance>`: made at
//! start (replacing one a killed run left), replaced whole in one
//! transaction when the routes change, removed at shutdown. Where
//! nftables cannot be used, `kernel` routes stay on the user-space path
//! with one warning, and `kernel_strict` ones stop the start (or the
//! reload). conntrack shows their connections (`/connections`) and counts
//! their bytes and ends (`/metrics`); the rules' counters count them.

pub mod conntrack;
pub mod nft;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::{Config, KernelRoute};
use conntrack::{KernelConn, Tracker};

/// How often conntrack is read while kernel routes run (besides each
/// admin request that shows it). A closed connection stays in conntrack
/// for two minutes (`TIME_WAIT`), a refused one ten seconds (`CLOSE`):
/// no end goes unseen, and its last byte counts are the final ones.
const POLL: Duration = Duration::from_secs(5);

/// `kernel_strict` routes that nftables could not take.
#[derive(Debug, thiserror::Error)]
#[error(
    "routes {routes:?} need the kernel path (engine = \"kernel_strict\"), which is unavailable: {reason}"
)]
pub struct KernelError {
    pub routes: Vec<String>,
    pub reason: String,
}

/// The process's nftables table and what conntrack says of its routes.
/// `nft` and netlink run on blocking threads only, under `changing` or
/// `reading`; `state`, which the admin API reads on the runtime, is held
/// for moments, never across them.
pub struct Kernel {
    table: String,
    /// Changes of the table, one at a time; why the kernel path is not
    /// used, when routes ask for it.
    changing: Mutex<Option<String>>,
    /// Reads of conntrack, one at a time, on its netlink socket.
    reading: Mutex<Option<::conntrack::Conntrack>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The rules in force (empty: no table).
    routes: Vec<(String, KernelRoute)>,
    tracker: Tracker,
    live: Vec<KernelConn>,
    counters: nft::Counters,
    refreshed: Option<Instant>,
    /// Whether conntrack counts bytes (`nf_conntrack_acct`).
    accounting: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

const ACCT: &str = "/proc/sys/net/netfilter/nf_conntrack_acct";

impl Kernel {
    /// The table's name: `gatehouse_` and the config's `instance`, or a
    /// hash of the config file's path (the same file, the same table
    /// across restarts; two configs, two tables).
    pub fn table_name(instance: Option<&str>, path: Option<&Path>) -> String {
        match (instance, path) {
            (Some(i), _) => format!("gatehouse_{i}"),
            (None, Some(p)) => {
                let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
                // FNV-1a: stable across builds (unlike the std hasher).
                let h = p
                    .as_os_str()
                    .as_encoded_bytes()
                    .iter()
                    .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
                    });
                format!("gatehouse_{:08x}", h as u32)
            }
            (None, None) => "gatehouse_default".to_owned(),
        }
    }

    pub fn new(table: String) -> Kernel {
        Kernel {
            table,
            changing: Mutex::default(),
            reading: Mutex::default(),
            state: Mutex::default(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Whether nftables forwards the route `name` now.
    pub fn forwards(&self, name: &str) -> bool {
        lock(&self.state).routes.iter().any(|(n, _)| n == name)
    }

    /// Whether the table is in force.
    pub fn active(&self) -> bool {
        !lock(&self.state).routes.is_empty()
    }

    /// Puts `config`'s kernel routes in force (blocking: runs `nft`). At
    /// start (`starting`) a table of this name left by an earlier run is
    /// replaced, or removed when the config has no kernel route.
    pub fn apply(&self, config: &Config, starting: bool) -> Result<(), KernelError> {
        let routes: Vec<(String, KernelRoute)> = config
            .routes
            .iter()
            .filter_map(|r| Some((r.name.clone(), r.kernel.clone()?)))
            .collect();
        let mut unavailable = lock(&self.changing);
        let running = lock(&self.state).routes.clone();
        if routes.is_empty() {
            // (At start, only a table that is there: nothing is made, even
            // for a moment, on a host where no kernel route ever ran.)
            let left = starting && nft::exists(&self.table).unwrap_or(false);
            if left {
                tracing::warn!(table = %self.table, "nftables: removed a table an earlier run left behind");
            }
            if !running.is_empty() || left {
                self.remove_table();
            }
            lock(&self.state).routes.clear();
            *unavailable = None;
            return Ok(());
        }
        if running == routes && unavailable.is_none() {
            return Ok(());
        }
        let stale = starting && nft::exists(&self.table).unwrap_or(false);
        match nft::replace(&self.table, &routes) {
            Ok(()) => {
                if stale {
                    tracing::warn!(table = %self.table, "nftables: replaced a table an earlier run left behind");
                }
                tracing::info!(
                    table = %self.table,
                    routes = ?routes.iter().map(|r| &r.0).collect::<Vec<_>>(),
                    "kernel path: nftables forwards these routes"
                );
                if routes.iter().any(|(_, k)| !k.target.ip().is_loopback()) && !ip_forward() {
                    tracing::warn!(
                        "kernel path: clients on other hosts reach targets on other hosts only with net.ipv4.ip_forward = 1"
                    );
                }
                let accounting = accounting();
                *unavailable = None;
                let mut state = lock(&self.state);
                state.routes = routes;
                state.accounting = accounting;
                Ok(())
            }
            Err(e) => {
                let strict: Vec<String> = routes
                    .iter()
                    .filter(|(_, k)| k.strict)
                    .map(|(n, _)| n.clone())
                    .collect();
                if !strict.is_empty() {
                    return Err(KernelError {
                        routes: strict,
                        reason: e.to_string(),
                    });
                }
                // (One warning per cause, not one per reload.)
                if unavailable.as_deref() != Some(&e.to_string()) {
                    tracing::warn!(
                        reason = %e,
                        routes = ?routes.iter().map(|r| &r.0).collect::<Vec<_>>(),
                        "kernel path unavailable: these routes are forwarded in user space"
                    );
                }
                if !running.is_empty() {
                    self.remove_table();
                    lock(&self.state).routes.clear();
                }
                *unavailable = Some(e.to_string());
                Ok(())
            }
        }
    }

    /// Removes the table (at shutdown; blocking). Connections it forwarded
    /// go on: their translation is in conntrack.
    pub fn remove(&self) {
        let _one = lock(&self.changing);
        if self.active() {
            self.remove_table();
            lock(&self.state).routes.clear();
            tracing::info!(table = %self.table, "nftables table removed");
        }
    }

    fn remove_table(&self) {
        if let Err(e) = nft::remove(&self.table) {
            tracing::warn!(table = %self.table, error = %e, "nftables: removing the table failed");
        }
    }

    /// Reads conntrack (and the rules' counters) again when the last
    /// look is older than `max_age` (blocking).
    pub fn refresh(&self, max_age: Duration) {
        let mut ct = lock(&self.reading);
        let routes = {
            let mut state = lock(&self.state);
            if state.routes.is_empty() || state.refreshed.is_some_and(|t| t.elapsed() < max_age) {
                return;
            }
            state.refreshed = Some(Instant::now());
            state.routes.clone()
        };
        if ct.is_none() {
            match ::conntrack::Conntrack::connect() {
                Ok(c) => *ct = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "conntrack cannot be read");
                    return;
                }
            }
        }
        let flows = match ct.as_ref().map(|c| c.dump()) {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "conntrack dump failed");
                *ct = None;
                return;
            }
            None => return,
        };
        let counters = nft::counters(&self.table);
        let mut state = lock(&self.state);
        let State { tracker, live, .. } = &mut *state;
        *live = tracker.update(&flows, &routes);
        match counters {
            Ok(c) => state.counters = c,
            Err(e) => tracing::debug!(error = %e, "nftables counters"),
        }
    }

    /// The kernel routes' live connections, as of the last look.
    pub fn connections(&self) -> Vec<KernelConn> {
        lock(&self.state).live.clone()
    }

    /// Reads conntrack every `POLL` while kernel routes run.
    pub async fn run(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.active() {
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.refresh(POLL / 2)).await;
            }
        }
    }

    /// Reads conntrack (and the counters) now, for the admin API's answers.
    pub async fn fresh(self: &std::sync::Arc<Self>) {
        if self.active() {
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.refresh(Duration::ZERO)).await;
        }
    }

    /// The `gatehouse_kernel_*` metrics.
    pub fn render_metrics(&self, out: &mut String) {
        let state = lock(&self.state);
        let _ = write!(
            out,
            "# HELP gatehouse_kernel_active Whether this process's nftables table forwards kernel routes (1) or not (0).\n# TYPE gatehouse_kernel_active gauge\ngatehouse_kernel_active {}\n",
            u8::from(!state.routes.is_empty())
        );
        if state.routes.is_empty() && state.tracker.totals.is_empty() {
            return;
        }
        out.push_str("# HELP gatehouse_kernel_connections_total Connections a kernel route's rules took (nftables counters).\n# TYPE gatehouse_kernel_connections_total counter\n");
        for (route, n) in &state.counters.taken {
            let _ = writeln!(
                out,
                "gatehouse_kernel_connections_total{{route=\"{route}\"}} {n}"
            );
        }
        out.push_str("# HELP gatehouse_kernel_connections Live connections of a kernel route (conntrack).\n# TYPE gatehouse_kernel_connections gauge\n");
        for (route, t) in &state.tracker.totals {
            let _ = writeln!(
                out,
                "gatehouse_kernel_connections{{route=\"{route}\"}} {}",
                t.live
            );
        }
        if state.accounting {
            out.push_str("# HELP gatehouse_kernel_bytes_total Bytes of a kernel route's connections, by direction (conntrack accounting).\n# TYPE gatehouse_kernel_bytes_total counter\n");
            for (route, t) in &state.tracker.totals {
                let _ = writeln!(
                    out,
                    "gatehouse_kernel_bytes_total{{route=\"{route}\",direction=\"client_to_upstream\"}} {}\ngatehouse_kernel_bytes_total{{route=\"{route}\",direction=\"upstream_to_client\"}} {}",
                    t.bytes_up, t.bytes_down
                );
            }
        }
        out.push_str("# HELP gatehouse_kernel_connection_ends_total Ended connections of a kernel route, by the reason conntrack shows.\n# TYPE gatehouse_kernel_connection_ends_total counter\n");
        for (route, t) in &state.tracker.totals {
            for ((reason, side), n) in &t.ends {
                let _ = writeln!(
                    out,
                    "gatehouse_kernel_connection_ends_total{{route=\"{route}\",reason=\"{reason}\",side=\"{side}\"}} {n}"
                );
            }
        }
        // Connections over a route's limit, reset by its limit rules.
        let limit = crate::lifecycle::EndReason::LimitRoute;
        for (route, n) in &state.counters.reset {
            let _ = writeln!(
                out,
                "gatehouse_kernel_connection_ends_total{{route=\"{route}\",reason=\"{}\",side=\"{}\"}} {n}",
                limit.as_str(),
                limit.side().as_str()
            );
        }
    }
}

/// Turns conntrack's byte accounting on (for connections from now on)
/// where it is off; whether it is on.
fn accounting() -> bool {
    match std::fs::read_to_string(ACCT) {
        Ok(v) if v.trim() == "1" => true,
        Ok(_) => match std::fs::write(ACCT, "1") {
            Ok(()) => {
                tracing::info!(
                    "kernel path: conntrack accounting turned on (net.netfilter.nf_conntrack_acct = 1) for byte counts"
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "kernel path: conntrack accounting is off and cannot be turned on: no byte counts");
                false
            }
        },
        Err(_) => false,
    }
}

fn ip_forward() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "1")
}
