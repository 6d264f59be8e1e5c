//! What a cluster knows of each endpoint while it runs (`EndpointState`):
//! requests in flight, peak-EWMA latency, active health (probe results
//! against thresholds), passive health (consecutive failures eject it for a
//! time that grows with each ejection), and draining. One state per
//! endpoint identity (its configured target and address), kept by the
//! cluster across changes of its endpoint set and across reloads that keep
//! the cluster, so that health is never lost or shown wrong after a change.
//! The data plane reads it with atomic loads (`usable`); it is written by
//! the requests that go through the endpoint and by the cluster's health
//! task.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::OutlierConfig;

/// Milliseconds since the process's first look at the clock: what the
/// atomics hold.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// An endpoint's health as the active checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not probed (no health check), or not yet decided: takes traffic.
    Unknown = 0,
    Healthy = 1,
    Unhealthy = 2,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// One line of an endpoint's history: a probe's result or a change of state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    pub what: String,
}

/// How many of its probe results and state changes an endpoint keeps.
const HISTORY: usize = 8;

/// The outcome of one attempt through an endpoint, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500 (or a connection that worked).
    Success,
    /// A connect failure, reset, timeout or a 5xx.
    Failure,
}

#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    pub target: Arc<str>,
    /// Its identity as a sticky cookie names it (a hash: no address shown).
    pub id: u64,
    /// Requests (HTTP) or connections (L4) in flight.
    in_flight: AtomicU32,
    /// Peak-EWMA of response latency, in microseconds, and when it was
    /// last updated (`now_ms`).
    ewma_us: AtomicU64,
    ewma_at: AtomicU64,
    health: AtomicU8,
    /// Consecutive probe results in the current direction (successes
    /// while unhealthy, failures otherwise).
    probe_streak: AtomicU32,
    /// Consecutive failed attempts (passive health).
    failures: AtomicU32,
    /// Ejected until this `now_ms` (0: not ejected).
    ejected_until: AtomicU64,
    /// How many times it has been ejected (the next ejection lasts longer).
    ejections: AtomicU32,
    draining: AtomicBool,
    /// Its last probe results and state changes.
    history: Mutex<VecDeque<Event>>,
    /// The last probe's result in words.
    last_probe: Mutex<Option<String>>,
    /// Told when the last request in flight ends (`idle`).
    zero: tokio::sync::Notify,
}

/// The decay window of the latency average.
const EWMA_WINDOW_MS: f64 = 10_000.0;
/// The latency an endpoint without a response yet is assumed to have (µs).
const EWMA_START_US: u64 = 1_000;

impl EndpointState {
    pub fn new(target: Arc<str>, addr: SocketAddr) -> Arc<EndpointState> {
        Arc::new(EndpointState {
            id: super::balance::hash_key(format!("{target}/{addr}").as_bytes()),
            addr,
            target,
            in_flight: AtomicU32::new(0),
            ewma_us: AtomicU64::new(EWMA_START_US),
            ewma_at: AtomicU64::new(now_ms()),
            health: AtomicU8::new(Health::Unknown as u8),
            probe_streak: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            history: Mutex::new(VecDeque::new()),
            last_probe: Mutex::new(None),
            zero: tokio::sync::Notify::new(),
        })
    }

    /// It may take a new request or connection now: not draining, not
    /// found unhealthy, not ejected (`now`: `now_ms`, asked for only if
    /// the endpoint has been ejected).
    pub fn usable(&self, now: impl FnOnce() -> u64) -> bool {
        if self.draining.load(Ordering::Relaxed)
            || self.health.load(Ordering::Relaxed) == Health::Unhealthy as u8
        {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || until <= now()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// One more request or connection through it, until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Until no request or connection is in flight through it.
    pub async fn idle(&self) {
        loop {
            let notified = self.zero.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The peak-EWMA latency in microseconds (as of the last response).
    pub fn ewma_us(&self) -> u64 {
        self.ewma_us.load(Ordering::Relaxed)
    }

    /// A response took `took`: the average follows a rise at once (peak)
    /// and a fall by exponential decay over time.
    pub fn observe_latency(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let now = now_ms();
        let last = self.ewma_at.swap(now, Ordering::Relaxed);
        let old = self.ewma_us.load(Ordering::Relaxed);
        let next = if sample > old {
            sample
        } else {
            let w = (-(now.saturating_sub(last) as f64) / EWMA_WINDOW_MS).exp();
            (old as f64 * w + sample as f64 * (1.0 - w)) as u64
        };
        self.ewma_us.store(next.max(1), Ordering::Relaxed);
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self, on: bool) {
        if self.draining.swap(on, Ordering::Relaxed) != on {
            self.note(if on { "draining" } else { "drain cancelled" }.into());
        }
    }

    /// Ejected now (passive health), and until when (`now_ms`).
    pub fn ejected(&self, now_ms: u64) -> Option<u64> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until > now_ms).then_some(until)
    }

    pub fn last_probe(&self) -> Option<String> {
        lock(&self.last_probe).clone()
    }

    pub fn history(&self) -> Vec<Event> {
        lock(&self.history).iter().cloned().collect()
    }

    /// Adds a line to its history (the oldest goes beyond `HISTORY`).
    pub fn note(&self, what: String) {
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        let mut h = lock(&self.history);
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(Event { at_unix_ms, what });
    }

    /// A probe's result (`Err`: why it failed, in words) against the
    /// thresholds; returns the new health when it changed.
    pub fn probed(
        &self,
        result: Result<(), String>,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> Option<Health> {
        let words = match &result {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.clone(),
        };
        *lock(&self.last_probe) = Some(words.clone());
        let now = self.health();
        let (streak_for, next) = match (&result, now) {
            (Ok(()), Health::Unhealthy) => (healthy_after, Health::Healthy),
            (Ok(()), _) => {
                self.probe_streak.store(0, Ordering::Relaxed);
                if now == Health::Unknown {
                    self.health.store(Health::Healthy as u8, Ordering::Relaxed);
                }
                return None;
            }
            (Err(_), Health::Unhealthy) => {
                self.probe_streak.store(0, Ordering::Relaxed);
                return None;
            }
            (Err(_), _) => (unhealthy_after, Health::Unhealthy),
        };
        let streak = self.probe_streak.fetch_add(1, Ordering::Relaxed) + 1;
        if result.is_err() {
            self.note(format!("probe failed: {words}"));
        }
        if streak < streak_for {
            return None;
        }
        self.probe_streak.store(0, Ordering::Relaxed);
        self.health.store(next as u8, Ordering::Relaxed);
        self.note(format!("{} ({words})", next.as_str()));
        Some(next)
    }

    /// An attempt's outcome (passive health). A failure that makes
    /// `eject.consecutive` in a row ejects the endpoint, if `may_eject`
    /// (the cluster's cap on ejected endpoints allows it), for
    /// `eject.base` times the number of its ejections, at most
    /// `eject.max`; returns true when it was ejected now.
    pub fn outcome(
        &self,
        outcome: Outcome,
        eject: &OutlierConfig,
        may_eject: impl FnOnce() -> bool,
    ) -> bool {
        if outcome == Outcome::Success {
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            // A success well after its last ejection ended lowers the
            // next ejection's length.
            let until = self.ejected_until.load(Ordering::Relaxed);
            if until != 0 && now_ms() > until + duration_ms(eject.base) {
                self.ejected_until.store(0, Ordering::Relaxed);
                let n = self.ejections.load(Ordering::Relaxed);
                self.ejections.store(n.saturating_sub(1), Ordering::Relaxed);
            }
            return false;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms();
        if eject.consecutive == 0 || failures < eject.consecutive || self.ejected(now).is_some() {
            return false;
        }
        if !may_eject() {
            return false;
        }
        let times = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = eject.base.saturating_mul(times).min(eject.max);
        self.ejected_until
            .store(now + duration_ms(length).max(1), Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.note(format!(
            "ejected for {length:?} after {failures} failures in a row"
        ));
        true
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request or connection in flight through an endpoint.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 && self.0.draining() {
            self.0.zero.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> Arc<EndpointState> {
        EndpointState::new("t".into(), "127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn thresholds_decide_health_and_history_explains_it() {
        let s = state();
        assert_eq!(s.health(), Health::Unknown);
        assert_eq!(s.probed(Ok(()), 2, 3), None);
        assert_eq!(s.health(), Health::Healthy);
        assert_eq!(s.probed(Err("status 503".into()), 2, 3), None);
        assert_eq!(s.probed(Err("status 503".into()), 2, 3), None);
        assert_eq!(
            s.probed(Err("connect refused".into()), 2, 3),
            Some(Health::Unhealthy)
        );
        assert!(!s.usable(now_ms));
        assert_eq!(s.last_probe().as_deref(), Some("connect refused"));
        assert_eq!(s.probed(Ok(()), 2, 3), None);
        assert_eq!(s.probed(Ok(()), 2, 3), Some(Health::Healthy));
        assert!(s.usable(now_ms));
        let history: Vec<String> = s.history().into_iter().map(|e| e.what).collect();
        assert!(
            history.iter().any(|h| h == "unhealthy (connect refused)"),
            "{history:?}"
        );
    }

    #[test]
    fn consecutive_failures_eject_for_longer_each_time_capped() {
        let s = state();
        let eject = OutlierConfig {
            consecutive: 2,
            base: Duration::from_secs(10),
            max: Duration::from_secs(25),
            max_percent: 50,
        };
        assert!(!s.outcome(Outcome::Failure, &eject, || true));
        assert!(s.outcome(Outcome::Failure, &eject, || true));
        let now = now_ms();
        let until = s.ejected(now).unwrap();
        assert!(until - now <= 10_000 && until - now > 9_000);
        assert!(!s.usable(|| now));
        // The cap: at the third ejection 25 s, not 30.
        s.ejected_until.store(0, Ordering::Relaxed);
        s.outcome(Outcome::Failure, &eject, || true);
        s.outcome(Outcome::Failure, &eject, || true);
        s.ejected_until.store(0, Ordering::Relaxed);
        s.outcome(Outcome::Failure, &eject, || true);
        assert!(s.outcome(Outcome::Failure, &eject, || true));
        let until = s.ejected(now_ms()).unwrap();
        assert!(until - now_ms() > 24_000 && until - now_ms() <= 25_000);
        // Refused by the cluster's cap: not ejected.
        let t = state();
        t.outcome(Outcome::Failure, &eject, || false);
        assert!(!t.outcome(Outcome::Failure, &eject, || false));
        assert!(t.usable(now_ms));
    }

    #[test]
    fn latency_rises_at_once_and_falls_slowly() {
        let s = state();
        s.observe_latency(Duration::from_millis(50));
        assert_eq!(s.ewma_us(), 50_000);
        s.observe_latency(Duration::from_millis(1));
        assert!(s.ewma_us() > 40_000, "no time passed: barely moves");
    }
}
