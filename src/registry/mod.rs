//! The service registry: instances that announce themselves over the
//! admin API (`admin::services`), renew with heartbeats, and lapse when
//! their TTL runs out. It owns the registrations (in memory, mirrored in
//! a `Store` so that a restart keeps them) and hands each service's
//! instances to the clusters that name it (`[[clusters]] service = …`)
//! as their endpoints.
//!
//! One lock orders everything: a registration, a heartbeat, a removal, a
//! lapse, and the attachment of a new snapshot's clusters. Each change is
//! written to the store, then applied in memory and to the clusters,
//! under it, so a change racing a config reload reaches the clusters of
//! whichever snapshot runs after both. The data plane never takes it: it
//! reads the clusters' endpoint sets.

pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::RegistryConfig;
use crate::upstream::cluster::{Cluster, Endpoint};
pub use store::{FileStore, MemoryStore, Store, StoreError};

/// The shortest and longest TTL an instance may ask for.
pub const TTL_MIN: Duration = Duration::from_secs(1);
/// A service's clusters take its changes at most this often: the first
/// change at once, those after it within this mark together.
pub const COALESCE: Duration = Duration::from_millis(100);
/// The window grows with the service (each of its instances adds
/// `COALESCE_PER_INSTANCE`: a rebuild is linear in them) up to this, so a
/// registration still takes traffic within a second.
pub const COALESCE_MAX: Duration = Duration::from_millis(500);
const COALESCE_PER_INSTANCE: Duration = Duration::from_micros(20);
pub const TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// The largest weight of an instance (as of a configured endpoint).
pub const WEIGHT_MAX: u32 = 10_000;
/// Tags per instance at most, and the longest tag.
pub const TAGS_MAX: usize = 32;
pub const TAG_LEN_MAX: usize = 64;

/// One instance of a service, as registered (and as stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub service: String,
    pub id: String,
    pub address: SocketAddr,
    pub weight: u32,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The TTL in milliseconds.
    pub ttl_ms: u64,
    /// A health-check hint: the path a probe asks for (a service cluster
    /// without a `health` of its own probes the instance by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    /// How often that probe runs, in milliseconds (default 5 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_interval_ms: Option<u64>,
}

impl Registration {
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// Whether every field is within its bounds (a message saying which
    /// is not).
    pub fn check(&self) -> Result<(), String> {
        crate::config::check_service_name(&self.service).map_err(|m| format!("service: {m}"))?;
        crate::config::check_service_name(&self.id).map_err(|m| format!("id: {m}"))?;
        if self.address.port() == 0 || self.address.ip().is_unspecified() {
            return Err(format!(
                "address: {} is not an address to send to",
                self.address
            ));
        }
        if self.weight == 0 || self.weight > WEIGHT_MAX {
            return Err(format!("weight: must be 1 to {WEIGHT_MAX}"));
        }
        if !(TTL_MIN..=TTL_MAX).contains(&self.ttl()) {
            return Err("ttl: must be 1s to 24h".into());
        }
        if self.tags.len() > TAGS_MAX {
            return Err(format!("tags: at most {TAGS_MAX}"));
        }
        if let Some(t) = self
            .tags
            .iter()
            .find(|t| t.is_empty() || t.len() > TAG_LEN_MAX || t.chars().any(char::is_control))
        {
            return Err(format!(
                "tags: {t:?} is not a tag (1 to {TAG_LEN_MAX} characters, no control characters)"
            ));
        }
        if self
            .health_interval_ms
            .is_some_and(|ms| !(1_000..=60_000).contains(&ms))
        {
            return Err("health.interval: from 1s to 60s".into());
        }
        if self.health_interval_ms.is_some() && self.health_path.is_none() {
            return Err("health.interval: with health.path".into());
        }
        if let Some(p) = &self.health_path {
            let ok =
                p.starts_with('/') && p.len() <= 256 && p.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(format!(
                    "health.path: {p:?} is not a path (it begins with /, at most 256 visible ASCII characters)"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("the registry is full: {0} instances (registry.max_instances)")]
    Full(usize),
    #[error("no instance {1:?} of service {0:?}")]
    NotFound(String, String),
    #[error("the registration could not be stored: {0}")]
    Store(#[from] StoreError),
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    /// An instance of that id had other settings.
    Updated,
    /// The same registration again: its TTL starts over.
    Renewed,
}

struct Entry {
    reg: Registration,
    expires: Instant,
    /// The address as text (made once: a service may have thousands).
    target: Arc<str>,
}

impl Entry {
    fn new(reg: Registration, expires: Instant) -> Entry {
        let target = reg.address.to_string().into();
        Entry {
            reg,
            expires,
            target,
        }
    }
}

#[derive(Default)]
struct Inner {
    services: BTreeMap<String, BTreeMap<String, Entry>>,
    count: usize,
    /// The running snapshot's clusters that take their endpoints from a
    /// service.
    clusters: Vec<Arc<Cluster>>,
    /// Those of the snapshot before it, still changed with them: the HTTP
    /// plane's view of the snapshots follows the swap a moment later.
    retiring: Vec<Arc<Cluster>>,
    /// The deadline the lapse task waits for: never later than the
    /// earliest instance's (`None`: not known, the next look scans).
    next: Option<Instant>,
    /// Services changed since their clusters last took their instances,
    /// and when each last did (`touch`).
    dirty: BTreeSet<String>,
    applied_at: HashMap<String, Instant>,
}

/// How long `service`'s changes are gathered after its clusters took its
/// instances: `COALESCE`, more for a large service.
fn window(services: &BTreeMap<String, BTreeMap<String, Entry>>, service: &str) -> Duration {
    let n = services.get(service).map_or(0, BTreeMap::len);
    (COALESCE + COALESCE_PER_INSTANCE * u32::try_from(n).unwrap_or(u32::MAX)).min(COALESCE_MAX)
}

impl Inner {
    fn endpoints(&self, service: &str) -> Vec<Endpoint> {
        self.services.get(service).map_or_else(Vec::new, |s| {
            s.values()
                .map(|e| Endpoint {
                    addr: e.reg.address,
                    weight: e.reg.weight,
                    target: e.target.clone(),
                    health_path: e.reg.health_path.as_deref().map(Into::into),
                    health_every: e.reg.health_interval_ms.map(Duration::from_millis),
                })
                .collect()
        })
    }

    /// A change to `service`: its clusters take its instances now, unless
    /// they did less than its window ago (`window`: `COALESCE`, up to
    /// `COALESCE_MAX` for a large service); then at that mark, with every
    /// change made meanwhile (a burst of registrations rebuilds a large
    /// service's endpoint set a few times a second, not once per
    /// registration). `true`: the lapse task must look at the new mark.
    fn touch(&mut self, service: &str, now: Instant) -> bool {
        let window = window(&self.services, service);
        let recent = self
            .applied_at
            .get(service)
            .is_some_and(|at| now.duration_since(*at) < window);
        if recent {
            return self.dirty.insert(service.to_owned());
        }
        self.apply(service);
        self.applied_at.insert(service.to_owned(), now);
        false
    }

    /// Applies the changes whose mark has come; the next mark.
    fn flush_due(&mut self, now: Instant) -> Option<Instant> {
        let due: Vec<String> = self
            .dirty
            .iter()
            .filter(|s| {
                self.applied_at
                    .get(*s)
                    .is_none_or(|at| now.duration_since(*at) >= window(&self.services, s))
            })
            .cloned()
            .collect();
        for s in due {
            self.dirty.remove(&s);
            self.apply(&s);
            self.applied_at.insert(s, now);
        }
        // (Marks of services gone quiet are forgotten.)
        let services = &self.services;
        self.applied_at
            .retain(|s, at| now.duration_since(*at) < window(services, s));
        self.dirty
            .iter()
            .filter_map(|s| self.applied_at.get(s).map(|at| *at + window(services, s)))
            .min()
    }

    /// `service`'s instances to the clusters that name it.
    fn apply(&self, service: &str) {
        let clusters: Vec<&Arc<Cluster>> = self
            .clusters
            .iter()
            .chain(&self.retiring)
            .filter(|c| c.config.service.as_deref() == Some(service))
            .collect();
        let Some((last, others)) = clusters.split_last() else {
            return;
        };
        let endpoints = self.endpoints(service);
        for c in others {
            c.set_base(endpoints.clone());
        }
        // (The last one takes the list itself: a large service's is long.)
        last.set_base(endpoints);
    }
}

pub struct Registry {
    inner: Mutex<Inner>,
    store: Box<dyn Store>,
    max_instances: usize,
    /// Wakes the lapse task when a deadline may have come nearer.
    wake: tokio::sync::Notify,
}

impl Registry {
    /// A registry that keeps nothing across restarts.
    pub fn memory(max_instances: usize) -> Registry {
        Registry {
            inner: Mutex::default(),
            store: Box::new(MemoryStore),
            max_instances,
            wake: tokio::sync::Notify::new(),
        }
    }

    /// The registry of `config`: with a data directory, the registrations
    /// kept there, each with its TTL starting now.
    pub fn open(config: &RegistryConfig) -> Result<Registry, StoreError> {
        let Some(dir) = &config.data_dir else {
            return Ok(Registry::memory(config.max_instances));
        };
        let registry = Registry {
            inner: Mutex::default(),
            store: Box::new(FileStore::open(dir)?),
            max_instances: config.max_instances,
            wake: tokio::sync::Notify::new(),
        };
        // (An empty registry made like the store: every registration kept.)
        let (restored, _) = registry.reconcile()?;
        if restored > 0 {
            tracing::info!(instances = restored, dir = %dir.display(), "registrations restored");
        }
        Ok(registry)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an instance, or renews it (its TTL starts over). Blocks
    /// on the store's write.
    pub fn put(&self, reg: Registration) -> Result<Put, RegistryError> {
        let mut inner = self.lock();
        let now = Instant::now();
        let expires = now + reg.ttl();
        let existing = inner
            .services
            .get(&reg.service)
            .and_then(|s| s.get(&reg.id))
            .map(|e| e.reg == reg);
        let put = match existing {
            Some(true) => Put::Renewed,
            Some(false) => Put::Updated,
            None if inner.count >= self.max_instances => {
                return Err(RegistryError::Full(self.max_instances));
            }
            None => Put::Created,
        };
        if put != Put::Renewed {
            self.store.put(&reg)?;
        }
        let service = reg.service.clone();
        if put == Put::Created {
            inner.count += 1;
            tracing::info!(service = %reg.service, id = %reg.id, address = %reg.address, "instance registered");
        }
        let entries = inner.services.entry(service.clone()).or_default();
        entries.insert(reg.id.clone(), Entry::new(reg, expires));
        let deferred = put != Put::Renewed && inner.touch(&service, now);
        // (The lapse task looks again only if this deadline is nearer.)
        let nearer = deferred || inner.next.is_none_or(|n| expires < n);
        if let Some(n) = inner.next {
            inner.next = Some(n.min(expires));
        }
        drop(inner);
        if nearer {
            self.wake.notify_one();
        }
        Ok(put)
    }

    /// Renews an instance's TTL; its TTL.
    pub fn heartbeat(&self, service: &str, id: &str) -> Result<Duration, RegistryError> {
        let mut inner = self.lock();
        let entry = inner
            .services
            .get_mut(service)
            .and_then(|s| s.get_mut(id))
            .ok_or_else(|| RegistryError::NotFound(service.into(), id.into()))?;
        let ttl = entry.reg.ttl();
        entry.expires = Instant::now() + ttl;
        Ok(ttl)
    }

    /// Deregisters an instance: it takes no new request; those in flight
    /// finish.
    pub fn remove(&self, service: &str, id: &str) -> Result<(), RegistryError> {
        let mut inner = self.lock();
        let known = inner
            .services
            .get(service)
            .is_some_and(|s| s.contains_key(id));
        if !known {
            return Err(RegistryError::NotFound(service.into(), id.into()));
        }
        self.store.remove(service, id)?;
        Self::take(&mut inner, service, id);
        tracing::info!(service, id, "instance deregistered");
        let deferred = inner.touch(service, Instant::now());
        drop(inner);
        if deferred {
            self.wake.notify_one();
        }
        Ok(())
    }

    fn take(inner: &mut Inner, service: &str, id: &str) {
        if let Some(s) = inner.services.get_mut(service) {
            if s.remove(id).is_some() {
                inner.count -= 1;
            }
            if s.is_empty() {
                inner.services.remove(service);
            }
        }
    }

    /// Removes the instances whose TTL has run out by `now`; the next
    /// deadline.
    fn lapse(&self, now: Instant) -> Option<Instant> {
        let mut inner = self.lock();
        // Before the earliest deadline nothing has lapsed: no scan of every
        // instance (a large service's window flushes wake this task twice
        // a second), only the deferred changes that are due.
        // (With none left the scan is free, and there is nothing to wait for.)
        if let Some(next) = inner.next.filter(|n| now < *n && inner.count > 0) {
            return Some(inner.flush_due(now).map_or(next, |f| f.min(next)));
        }
        let lapsed: Vec<(String, String)> = inner
            .services
            .iter()
            .flat_map(|(s, m)| {
                m.iter()
                    .filter(|(_, e)| e.expires <= now)
                    .map(move |(id, _)| (s.clone(), id.clone()))
            })
            .collect();
        let mut touched: Vec<String> = Vec::new();
        for (service, id) in lapsed {
            if let Err(e) = self.store.remove(&service, &id) {
                // (It goes all the same: a restart gives it one more TTL.)
                tracing::warn!(%service, %id, error = %e, "a lapsed registration could not be removed from the store");
            }
            Self::take(&mut inner, &service, &id);
            tracing::info!(%service, %id, "instance lapsed: no heartbeat within its TTL");
            if !touched.contains(&service) {
                touched.push(service);
            }
        }
        for s in &touched {
            inner.touch(s, now);
        }
        let flush = inner.flush_due(now);
        inner.next = inner
            .services
            .values()
            .flat_map(BTreeMap::values)
            .map(|e| e.expires)
            .min();
        // (It wakes for the next lapse or the next deferred change.)
        match (inner.next, flush) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes instances as their TTLs lapse, until `stop`.
    pub async fn run_lapses(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            // (Notified before the look: a change during it is not missed.)
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let next = self.lapse(Instant::now());
            let sleep = match next {
                Some(at) => tokio::time::sleep_until(at.into()),
                None => tokio::time::sleep(TTL_MAX),
            };
            tokio::select! {
                () = sleep => {}
                () = woken => {}
                () = &mut stop => return,
            }
        }
    }

    /// A new snapshot's clusters: those that name a service take its
    /// instances (again: a change racing the reload is not lost). `swap`
    /// (the snapshot's swap) runs under the registry's lock, so a change
    /// is applied either before it, to the old clusters and then again
    /// here, or after it, to the new ones.
    pub fn attach<T>(&self, clusters: &[Arc<Cluster>], swap: impl FnOnce() -> T) -> T {
        let mut inner = self.lock();
        let swapped = swap();
        let next: Vec<Arc<Cluster>> = clusters
            .iter()
            .filter(|c| c.config.service.is_some())
            .cloned()
            .collect();
        let previous = std::mem::replace(&mut inner.clusters, next);
        inner.retiring = previous
            .into_iter()
            .filter(|o| !inner.clusters.iter().any(|c| Arc::ptr_eq(c, o)))
            .collect();
        for c in inner.clusters.iter().chain(&inner.retiring) {
            if let Some(s) = &c.config.service {
                c.set_base(inner.endpoints(s));
            }
        }
        // (Every cluster took every change: nothing is left deferred.)
        inner.dirty.clear();
        swapped
    }

    /// Makes the registrations in memory those of the store: at start, and
    /// in a process that took over from another (what the old one changed
    /// while this one started). Those added start their TTL now. Nothing
    /// with a store that keeps nothing. (added, removed).
    pub fn reconcile(&self) -> Result<(usize, usize), StoreError> {
        if !self.store.persistent() {
            return Ok((0, 0));
        }
        let mut inner = self.lock();
        let (stored, skipped) = self.store.load()?;
        for s in &skipped {
            tracing::warn!(file = %s, "a stored registration could not be read: skipped");
        }
        let now = Instant::now();
        let on_disk: std::collections::HashSet<(String, String)> = stored
            .iter()
            .map(|r| (r.service.clone(), r.id.clone()))
            .collect();
        let gone: Vec<(String, String)> = inner
            .services
            .iter()
            .flat_map(|(s, m)| m.keys().map(move |id| (s.clone(), id.clone())))
            .filter(|k| !on_disk.contains(k))
            .collect();
        let mut touched = BTreeSet::new();
        for (s, id) in &gone {
            Self::take(&mut inner, s, id);
            touched.insert(s.clone());
        }
        let mut added = 0;
        for reg in stored {
            let service = inner.services.entry(reg.service.clone()).or_default();
            let same = service.get(&reg.id).is_some_and(|e| e.reg == reg);
            if !same {
                let expires = now + reg.ttl();
                touched.insert(reg.service.clone());
                if service
                    .insert(reg.id.clone(), Entry::new(reg, expires))
                    .is_none()
                {
                    added += 1;
                }
            }
        }
        inner.count = inner.services.values().map(BTreeMap::len).sum();
        for s in &touched {
            inner.apply(s);
        }
        // (Restored deadlines may be earlier: the next look scans.)
        inner.next = None;
        drop(inner);
        self.wake.notify_one();
        Ok((added, gone.len()))
    }

    /// A cluster being built: its service's instances now, so that it is
    /// never empty in between.
    pub fn fill(&self, cluster: &Cluster) {
        if let Some(s) = &cluster.config.service {
            cluster.set_base(self.lock().endpoints(s));
        }
    }

    pub fn count(&self) -> usize {
        self.lock().count
    }

    /// Whether its changes are written somewhere (then they block on a
    /// file's sync: callers run them off the runtime's threads).
    pub fn persistent(&self) -> bool {
        self.store.persistent()
    }

    /// Every service and its instances (`GET /v1/services`), or one.
    pub fn list(&self, only: Option<&str>) -> Option<Value> {
        let inner = self.lock();
        let now = Instant::now();
        let service = |name: &str, m: &BTreeMap<String, Entry>| {
            let instances: Vec<Value> = m
                .values()
                .map(|e| {
                    json!({
                        "id": e.reg.id,
                        "address": e.reg.address.to_string(),
                        "weight": e.reg.weight,
                        "tags": e.reg.tags,
                        "ttl_ms": e.reg.ttl_ms,
                        "expires_in_ms": e.expires.saturating_duration_since(now).as_millis() as u64,
                    })
                })
                .collect();
            let clusters: Vec<&str> = inner
                .clusters
                .iter()
                .filter(|c| c.config.service.as_deref() == Some(name))
                .map(|c| &*c.name)
                .collect();
            json!({ "name": name, "clusters": clusters, "instances": instances })
        };
        match only {
            Some(name) => inner.services.get(name).map(|m| service(name, m)),
            None => Some(json!({
                "instances": inner.count,
                "services": inner.services.iter().map(|(n, m)| service(n, m)).collect::<Vec<_>>(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str, port: u16, ttl_ms: u64) -> Registration {
        Registration {
            service: "demo".into(),
            id: id.into(),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            tags: vec!["v2".into()],
            ttl_ms,
            health_path: None,
            health_interval_ms: None,
        }
    }

    #[test]
    fn a_successor_takes_what_its_predecessor_changed_in_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let config = RegistryConfig {
            data_dir: Some(dir.path().to_owned()),
            max_instances: 10,
        };
        let old = Registry::open(&config).unwrap();
        old.put(reg("kept", 1, 60_000)).unwrap();
        old.put(reg("leaving", 2, 60_000)).unwrap();
        let new = Registry::open(&config).unwrap();
        assert_eq!(new.count(), 2);
        // While the new one starts, the old one still answers.
        old.put(reg("late", 3, 60_000)).unwrap();
        old.remove("demo", "leaving").unwrap();
        assert_eq!(new.reconcile().unwrap(), (1, 1));
        let listed = new.list(Some("demo")).unwrap().to_string();
        assert!(
            listed.contains("\"late\"") && listed.contains("\"kept\""),
            "{listed}"
        );
        assert!(!listed.contains("leaving"), "{listed}");
        assert_eq!(new.reconcile().unwrap(), (0, 0), "nothing more");
        // A registry that keeps nothing has nothing to read back.
        let memory = Registry::memory(10);
        memory.put(reg("a", 1, 60_000)).unwrap();
        assert_eq!(memory.reconcile().unwrap(), (0, 0));
        assert_eq!(memory.count(), 1);
    }

    #[test]
    fn a_large_service_gathers_its_changes_longer_up_to_half_a_second() {
        let r = Registry::memory(30_000);
        for i in 0..10_000u16 {
            r.put(reg(&format!("i{i}"), 1000 + i, 60_000)).unwrap();
        }
        let inner = r.inner.lock().unwrap();
        assert_eq!(window(&inner.services, "demo"), Duration::from_millis(300));
        assert_eq!(window(&inner.services, "small"), COALESCE);
        drop(inner);
        for i in 10_000..25_000u16 {
            r.put(reg(&format!("i{i}"), 1000 + i, 60_000)).unwrap();
        }
        assert_eq!(
            window(&r.inner.lock().unwrap().services, "demo"),
            COALESCE_MAX
        );
    }

    #[test]
    fn a_burst_of_changes_is_applied_at_once_then_together_at_the_mark() {
        let mut inner = Inner::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert!(!inner.touch("demo", t0), "the first change: at once");
        assert!(inner.touch("demo", t0 + ms(10)), "deferred: the task wakes");
        assert!(!inner.touch("demo", t0 + ms(20)), "deferred already");
        assert!(
            !inner.touch("other", t0 + ms(20)),
            "another service: at once"
        );
        assert_eq!(inner.flush_due(t0 + ms(50)), Some(t0 + COALESCE));
        assert!(inner.dirty.contains("demo"));
        assert_eq!(inner.flush_due(t0 + COALESCE), None);
        assert!(inner.dirty.is_empty());
        assert!(
            !inner.touch("demo", t0 + 3 * COALESCE),
            "quiet again: at once"
        );
    }

    #[test]
    fn registrations_renew_lapse_and_are_bounded() {
        let r = Registry::memory(2);
        assert_eq!(r.put(reg("a", 1, 1000)).unwrap(), Put::Created);
        assert_eq!(r.put(reg("a", 1, 1000)).unwrap(), Put::Renewed);
        assert_eq!(r.put(reg("a", 2, 1000)).unwrap(), Put::Updated);
        assert_eq!(r.put(reg("b", 3, 5000)).unwrap(), Put::Created);
        assert!(matches!(
            r.put(reg("c", 4, 1000)),
            Err(RegistryError::Full(2))
        ));
        // At a moment past a's TTL but not b's: a lapses.
        let later = Instant::now() + Duration::from_millis(2000);
        let next = r.lapse(later).unwrap();
        assert_eq!(r.count(), 1);
        assert!(next > later);
        assert!(matches!(
            r.heartbeat("demo", "a"),
            Err(RegistryError::NotFound(..))
        ));
        assert_eq!(
            r.heartbeat("demo", "b").unwrap(),
            Duration::from_millis(5000)
        );
        r.remove("demo", "b").unwrap();
        assert_eq!(r.count(), 0);
        // (Nothing left to lapse; the removal's deferred change is applied
        // at its mark, then nothing is left to wait for.)
        assert!(r.lapse(later + COALESCE).is_none());
    }

    #[test]
    fn a_shorter_ttl_registered_after_the_last_look_still_lapses_on_time() {
        let r = Registry::memory(10);
        let t0 = Instant::now();
        r.put(reg("long", 1, 60_000)).unwrap();
        // The look knows one deadline, a minute away...
        let next = r.lapse(t0 + COALESCE).unwrap();
        assert!(next > t0 + Duration::from_secs(50));
        // ...then one of a second registers: the task is told to look
        // sooner, and the look before the minute finds it lapsed.
        r.put(reg("short", 2, 1000)).unwrap();
        let next = r.lapse(t0 + COALESCE * 2).unwrap();
        assert!(next <= t0 + Duration::from_millis(1500), "{next:?}");
        r.lapse(t0 + Duration::from_secs(2));
        assert_eq!(r.count(), 1);
        assert!(matches!(
            r.heartbeat("demo", "short"),
            Err(RegistryError::NotFound(..))
        ));
    }

    #[test]
    fn the_file_store_keeps_whole_registrations_and_skips_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let config = RegistryConfig {
            data_dir: Some(dir.path().into()),
            max_instances: 10,
        };
        let r = Registry::open(&config).unwrap();
        r.put(reg("a", 1, 60_000)).unwrap();
        r.put(reg("b", 2, 60_000)).unwrap();
        r.remove("demo", "b").unwrap();
        let services = dir.path().join("services/demo");
        // A write cut short and a damaged file.
        std::fs::write(services.join("c.json.tmp"), "{\"service\"").unwrap();
        std::fs::write(services.join("d.json"), "not json").unwrap();
        drop(r);
        let store = FileStore::open(dir.path()).unwrap();
        let (kept, skipped) = store.load().unwrap();
        assert_eq!(kept, vec![reg("a", 1, 60_000)]);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(!services.join("c.json.tmp").exists());
        let r = Registry::open(&config).unwrap();
        assert_eq!(r.count(), 1);
    }

    #[test]
    fn bounds_are_checked() {
        assert!(reg("a", 1, 1000).check().is_ok());
        assert!(reg("a", 1, 0).check().unwrap_err().starts_with("ttl"));
        assert!(reg("a", 1, 400 * 86_400_000).check().is_err());
        assert!(
            reg("a", 0, 1000)
                .check()
                .unwrap_err()
                .starts_with("address")
        );
        assert!(reg("../x", 1, 1000).check().unwrap_err().starts_with("id"));
        let mut r = reg("a", 1, 1000);
        r.weight = 0;
        assert!(r.check().unwrap_err().starts_with("weight"));
    }
}
