//! A response cache in memory, shared by the routes that name the filter:
//! RFC 9111's rules through `http-cache-semantics` (a shared cache:
//! `no-store`, `private`, `max-age`, `s-maxage`, `no-cache`, `Vary`,
//! responses to requests with `Authorization`, heuristic freshness from
//! `Last-Modified`), with a byte cap and least-recently-used eviction.
//!
//! A fresh stored response answers a `GET` or `HEAD` here, with `Age`. A
//! stale one is revalidated: the request goes upstream with the stored
//! validators (`If-None-Match`, `If-Modified-Since`), and a `304` is
//! answered with the stored body and the refreshed head. A miss goes
//! upstream once: requests for the same object while it is being fetched
//! wait for it (request coalescing) and are answered from the cache when it
//! is stored, or go upstream themselves when it cannot be. A body is stored
//! as it streams to the first client (up to `max_object_bytes`); a request
//! with another method invalidates its target. Every response says what the
//! cache did in `Cache-Status` (RFC 9211).
//!
//! One key holds one response: a response that varies (`Vary`) is stored
//! for the last request's variant, and other variants are misses.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};
use http_cache_semantics::{AfterResponse, BeforeRequest, CachePolicy, RequestLike, ResponseLike};
use tokio::sync::watch;

use super::{Answer, Filter, Request, RequestEnd, Response, Transform};
use crate::config::CacheConfig;

/// How long a request waits for another one fetching the same object.
const COALESCE_WAIT: Duration = Duration::from_secs(10);

fn cache_status() -> HeaderName {
    HeaderName::from_static("cache-status")
}

struct Entry {
    policy: CachePolicy,
    /// The stored response's fields as a hit sends them (less framing and
    /// `Age`), for hits that need no revalidation or `Vary` check.
    fields: Vec<(HeaderName, HeaderValue)>,
    varies: bool,
    body: Bytes,
    size: usize,
    used: u64,
}

#[derive(Default)]
struct Store {
    entries: HashMap<String, Entry>,
    /// Keys by last use, oldest first.
    lru: BTreeMap<u64, String>,
    bytes: usize,
    tick: u64,
    /// Objects being fetched: their fetch's end is signalled here.
    fetching: HashMap<String, watch::Receiver<bool>>,
}

impl Store {
    fn touch(&mut self, key: &str) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.entries.get_mut(key) {
            self.lru.remove(&e.used);
            e.used = tick;
            self.lru.insert(tick, key.to_owned());
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.lru.remove(&e.used);
            self.bytes -= e.size;
        }
    }

    /// `heads`: the bytes of the request and response heads the policy
    /// keeps, counted with the body against the cap.
    fn insert(
        &mut self,
        key: String,
        (policy, fields): (CachePolicy, &HeaderMap),
        body: Bytes,
        heads: usize,
        cap: usize,
    ) {
        self.remove(&key);
        let varies = fields.contains_key(header::VARY);
        let fields = fields
            .iter()
            .filter(|(n, _)| {
                !matches!(
                    *n,
                    &header::CONTENT_LENGTH | &header::TRANSFER_ENCODING | &header::AGE
                ) && n.as_str() != "cache-status"
            })
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        let size = body.len() + key.len() + heads + 256;
        if size > cap {
            return;
        }
        while self.bytes + size > cap {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.size;
            }
        }
        self.tick += 1;
        self.lru.insert(self.tick, key.clone());
        self.bytes += size;
        self.entries.insert(
            key,
            Entry {
                policy,
                fields,
                varies,
                body,
                size,
                used: self.tick,
            },
        );
    }
}

pub struct Cache {
    cfg: CacheConfig,
    store: Arc<Mutex<Store>>,
    /// Bytes of response bodies being copied for the cache now: held
    /// under `max_bytes`, like what is stored.
    buffering: Arc<AtomicUsize>,
}

/// What the request side left for the response side.
#[derive(Clone)]
enum Pending {
    /// Answered from the cache (nothing to do on the way back).
    Hit,
    /// Went upstream without the cache (another method, a conditional
    /// request): says so.
    Bypass(&'static str),
    /// Waited for another request's fetch: answered from the cache (its
    /// answer says so), or went upstream after all.
    Collapsed,
    /// A miss this request fetches, or a stale entry it revalidates.
    Fetch(Arc<Fetch>),
}

struct Fetch {
    key: String,
    request: http::request::Parts,
    /// The stored entry being revalidated, if any.
    stale: Option<(CachePolicy, Bytes)>,
    store: Arc<Mutex<Store>>,
    /// Set when the fetch is over (stored or not): wakes the waiters.
    done: Option<watch::Sender<bool>>,
}

impl Drop for Fetch {
    fn drop(&mut self) {
        // The fetch is over however it ended (stored, not storable, the
        // client gone): the next request for the key fetches again.
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if self.done.is_some() {
            store.fetching.remove(&self.key);
        }
        drop(store);
        if let Some(done) = self.done.take() {
            let _ = done.send(true);
        }
    }
}

struct Req<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
}

impl RequestLike for Req<'_> {
    fn uri(&self) -> Uri {
        self.uri.clone()
    }
    fn is_same_uri(&self, other: &Uri) -> bool {
        self.uri == other
    }
    fn method(&self) -> &Method {
        self.method
    }
    fn headers(&self) -> &HeaderMap {
        self.headers
    }
}

struct Res<'a>(StatusCode, &'a HeaderMap);

impl ResponseLike for Res<'_> {
    fn status(&self) -> StatusCode {
        self.0
    }
    fn headers(&self) -> &HeaderMap {
        self.1
    }
}

/// An answer from a stored response.
fn hit(parts: http::response::Parts, body: &Bytes, head: bool, status: &str) -> Answer {
    let mut headers: Vec<(HeaderName, HeaderValue)> = parts
        .headers
        .iter()
        .filter(|(n, _)| *n != header::CONTENT_LENGTH && *n != header::TRANSFER_ENCODING)
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    if let Ok(v) = HeaderValue::from_str(status) {
        headers.push((cache_status(), v));
    }
    Answer {
        end: RequestEnd::Ok,
        status: parts.status,
        headers,
        body: if head { Bytes::new() } else { body.clone() },
    }
}

impl Cache {
    pub fn new(cfg: &CacheConfig) -> Cache {
        Cache {
            cfg: cfg.clone(),
            store: Arc::default(),
            buffering: Arc::default(),
        }
    }

    fn key(req: &Request<'_>) -> String {
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        format!("{}{target}", host.to_ascii_lowercase())
    }
}

impl Filter for Cache {
    fn request(&self, req: &mut Request<'_>) -> Result<(), Answer> {
        let key = Cache::key(req);
        let method = req.method.clone();
        if method != Method::GET && method != Method::HEAD {
            // An unsafe method invalidates what is stored for its target.
            if !method.is_safe() {
                self.store
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
            }
            req.state.extensions.insert(Pending::Bypass("fwd=method"));
            return Ok(());
        }
        let head = method == Method::HEAD;
        // (An upgrade is no object to store, nor to wait for.)
        let bypass = req.headers.contains_key(header::UPGRADE)
            || req.headers.contains_key(header::IF_NONE_MATCH)
            || req.headers.contains_key(header::IF_MODIFIED_SINCE)
            || req.headers.contains_key(header::RANGE);
        if bypass {
            req.state.extensions.insert(Pending::Bypass("fwd=request"));
            return Ok(());
        }
        let now = SystemTime::now();
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let mut stale = None;
        // The usual hit: no Vary, no request directives, still fresh.
        let plain = !req.headers.contains_key(header::CACHE_CONTROL)
            && !req.headers.contains_key(header::PRAGMA);
        if let Some(e) = store.entries.get(&key).filter(|e| plain && !e.varies) {
            let ttl = e.policy.time_to_live(now).as_secs();
            if ttl > 0 {
                let mut headers = e.fields.clone();
                headers.push((header::AGE, HeaderValue::from(e.policy.age(now).as_secs())));
                let status = format!("gatehouse; hit; ttl={ttl}");
                if let Ok(v) = HeaderValue::from_str(&status) {
                    headers.push((cache_status(), v));
                }
                let answer = Answer {
                    end: RequestEnd::Ok,
                    status: StatusCode::OK,
                    headers,
                    body: if head { Bytes::new() } else { e.body.clone() },
                };
                store.touch(&key);
                req.state.extensions.insert(Pending::Hit);
                return Err(answer);
            }
        }
        if let Some(e) = store.entries.get(&key) {
            let r = Req {
                method: &Method::GET,
                uri: req.uri,
                headers: req.headers,
            };
            match e.policy.before_request(&r, now) {
                BeforeRequest::Fresh(parts) => {
                    let ttl = e.policy.time_to_live(now).as_secs();
                    let answer = hit(parts, &e.body, head, &format!("gatehouse; hit; ttl={ttl}"));
                    store.touch(&key);
                    req.state.extensions.insert(Pending::Hit);
                    return Err(answer);
                }
                // (A HEAD's response has no body to store or reuse.)
                BeforeRequest::Stale { .. } if head => {}
                BeforeRequest::Stale {
                    request,
                    matches: true,
                } => {
                    // Revalidation: the stored validators go upstream.
                    for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
                        if let Some(v) = request.headers.get(&name) {
                            req.headers.insert(name, v.clone());
                        }
                    }
                    stale = Some((e.policy.clone(), e.body.clone()));
                }
                BeforeRequest::Stale { .. } => {}
            }
        }
        if head {
            // Answered from a stored GET only: its own response has no
            // body to store.
            req.state.extensions.insert(Pending::Bypass("fwd=miss"));
            return Ok(());
        }
        if stale.is_none() {
            if let Some(fetching) = store.fetching.get(&key).cloned() {
                // Coalesced: wait for the request fetching it.
                drop(store);
                req.state.before_upstream = Some(Box::pin(wait_for(
                    fetching,
                    self.store.clone(),
                    key,
                    head,
                    Req {
                        method: &Method::GET,
                        uri: req.uri,
                        headers: req.headers,
                    }
                    .to_parts(),
                )));
                req.state.extensions.insert(Pending::Collapsed);
                return Ok(());
            }
        }
        let (done, waiting) = watch::channel(false);
        let leads = stale.is_none();
        if leads {
            store.fetching.insert(key.clone(), waiting);
        }
        drop(store);
        let fetch = Fetch {
            key,
            request: Req {
                method: &Method::GET,
                uri: req.uri,
                headers: req.headers,
            }
            .to_parts(),
            stale,
            store: self.store.clone(),
            done: leads.then_some(done),
        };
        req.state.extensions.insert(Pending::Fetch(Arc::new(fetch)));
        Ok(())
    }

    fn response(&self, resp: &mut Response<'_>) {
        let pending = resp.state.extensions.get::<Pending>().cloned();
        let fetch = match pending {
            None | Some(Pending::Hit) => return,
            Some(Pending::Collapsed) => {
                let ours = resp
                    .headers
                    .get(cache_status())
                    .is_some_and(|v| v.as_bytes().starts_with(b"gatehouse;"));
                if !ours {
                    resp.headers.insert(
                        cache_status(),
                        HeaderValue::from_static("gatehouse; fwd=miss; collapsed"),
                    );
                }
                return;
            }
            Some(Pending::Bypass(why)) => {
                let v = format!("gatehouse; {why}");
                if let Ok(v) = HeaderValue::from_str(&v) {
                    resp.headers.insert(cache_status(), v);
                }
                return;
            }
            Some(Pending::Fetch(f)) => f,
        };
        let now = SystemTime::now();
        let status = *resp.status;
        if let (Some((policy, body)), StatusCode::NOT_MODIFIED) = (&fetch.stale, status) {
            let res = Res(status, resp.headers);
            if let AfterResponse::NotModified(policy, parts) =
                policy.after_response(&fetch.request, &res, now)
            {
                // Still good: the stored body, with the refreshed head.
                *resp.status = parts.status;
                *resp.headers = parts.headers;
                resp.headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                resp.headers.insert(
                    cache_status(),
                    HeaderValue::from_static("gatehouse; fwd=stale; fwd-status=304"),
                );
                let heads = head_bytes(&fetch.request.headers) + head_bytes(resp.headers);
                let cap = self.cfg.max_bytes as usize;
                let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
                store.insert(
                    fetch.key.clone(),
                    (policy, &*resp.headers),
                    body.clone(),
                    heads,
                    cap,
                );
                drop(store);
                resp.transforms.push(Box::new(Replace(Some(body.clone()))));
                return;
            }
        }
        let fwd = if fetch.stale.is_some() {
            "stale"
        } else {
            "miss"
        };
        let policy = CachePolicy::new(&fetch.request, &Res(status, resp.headers));
        let length = resp
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let storable = policy.is_storable()
            && status == StatusCode::OK
            && length.is_none_or(|l| l <= self.cfg.max_object_bytes);
        let v = if storable {
            format!("gatehouse; fwd={fwd}; stored")
        } else {
            format!("gatehouse; fwd={fwd}")
        };
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers.insert(cache_status(), v);
        }
        if storable {
            let heads = head_bytes(&fetch.request.headers) + head_bytes(resp.headers);
            resp.transforms.push(Box::new(Tee {
                buffering: self.buffering.clone(),
                heads,
                fields: resp.headers.clone(),
                expected: length.map(|l| l as usize),
                fetch: Some(fetch),
                policy: Some(policy),
                body: Vec::new(),
                max_object: self.cfg.max_object_bytes as usize,
                cap: self.cfg.max_bytes as usize,
            }));
        }
    }
}

/// What a head's fields take in memory, about.
fn head_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum()
}

impl Req<'_> {
    fn to_parts(&self) -> http::request::Parts {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.headers = self.headers.clone();
        parts
    }
}

/// A coalesced request: waits for the fetch of its object, then answers
/// from the cache if it was stored (`None`: go upstream).
async fn wait_for(
    mut fetching: watch::Receiver<bool>,
    store: Arc<Mutex<Store>>,
    key: String,
    head: bool,
    request: http::request::Parts,
) -> Option<Answer> {
    let _ = tokio::time::timeout(COALESCE_WAIT, fetching.wait_for(|done| *done)).await;
    let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
    let e = store.entries.get(&key)?;
    let now = SystemTime::now();
    let r = Req {
        method: &request.method,
        uri: &request.uri,
        headers: &request.headers,
    };
    match e.policy.before_request(&r, now) {
        BeforeRequest::Fresh(parts) => {
            let answer = hit(parts, &e.body, head, "gatehouse; hit; collapsed");
            store.touch(&key);
            Some(answer)
        }
        BeforeRequest::Stale { .. } => None,
    }
}

/// Passes the body through and keeps a copy; at its end, stores it.
struct Tee {
    /// The cache's count of body bytes being copied (`Cache::buffering`).
    buffering: Arc<AtomicUsize>,
    heads: usize,
    fields: HeaderMap,
    /// The body's length when the response says it: stored at its last
    /// byte, before the client can ask again.
    expected: Option<usize>,
    fetch: Option<Arc<Fetch>>,
    policy: Option<CachePolicy>,
    body: Vec<u8>,
    max_object: usize,
    cap: usize,
}

impl Transform for Tee {
    fn data(&mut self, chunk: Bytes) -> std::io::Result<Bytes> {
        if self.policy.is_some() {
            let n = chunk.len();
            let over_object = self.body.len() + n > self.max_object;
            // Bodies being copied count against the cache's size too, so that
            // many large misses at once cannot hold more than it.
            if over_object || self.buffering.fetch_add(n, Ordering::Relaxed) + n > self.cap {
                if !over_object {
                    self.buffering.fetch_sub(n, Ordering::Relaxed);
                }
                // Too large to keep: passed on, not stored.
                self.policy = None;
                self.release();
            } else {
                self.body.extend_from_slice(&chunk);
                if self.expected == Some(self.body.len()) {
                    self.store();
                }
            }
        }
        Ok(chunk)
    }

    fn finish(&mut self) -> std::io::Result<Bytes> {
        self.store();
        Ok(Bytes::new())
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.release();
    }
}

impl Tee {
    /// Gives the copy up (its bytes leave the buffering count).
    fn release(&mut self) {
        self.buffering.fetch_sub(self.body.len(), Ordering::Relaxed);
        self.body = Vec::new();
    }

    fn store(&mut self) {
        if let (Some(policy), Some(fetch)) = (self.policy.take(), self.fetch.take()) {
            self.buffering.fetch_sub(self.body.len(), Ordering::Relaxed);
            let body = Bytes::from(std::mem::take(&mut self.body));
            let mut store = fetch.store.lock().unwrap_or_else(|p| p.into_inner());
            store.insert(
                fetch.key.clone(),
                (policy, &self.fields),
                body,
                self.heads,
                self.cap,
            );
        }
        // (The fetch ends here, when dropped: waiters find the object.)
    }
}

/// Replaces an empty body (a `304`'s) with a stored one.
struct Replace(Option<Bytes>);

impl Transform for Replace {
    fn data(&mut self, _chunk: Bytes) -> std::io::Result<Bytes> {
        Ok(Bytes::new())
    }

    fn finish(&mut self) -> std::io::Result<Bytes> {
        Ok(self.0.take().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tee(buffering: &Arc<AtomicUsize>) -> Tee {
        let (req, ()) = http::Request::new(()).into_parts();
        let fields = HeaderMap::new();
        Tee {
            buffering: buffering.clone(),
            heads: 0,
            policy: Some(CachePolicy::new(&req, &Res(StatusCode::OK, &fields))),
            fields,
            expected: None,
            fetch: None,
            body: Vec::new(),
            max_object: 1000,
            cap: 1500,
        }
    }

    #[test]
    fn copies_in_flight_count_against_the_cache_size() {
        let buffering = Arc::new(AtomicUsize::new(0));
        let (mut a, mut b) = (tee(&buffering), tee(&buffering));
        let piece = Bytes::from(vec![7u8; 800]);
        assert_eq!(a.data(piece.clone()).unwrap(), piece, "passed on as it is");
        assert!(a.policy.is_some());
        assert_eq!(buffering.load(Ordering::Relaxed), 800);
        // A second copy would pass the cap: given up, the body still passed on.
        assert_eq!(b.data(piece.clone()).unwrap(), piece);
        assert!(b.policy.is_none());
        assert_eq!(buffering.load(Ordering::Relaxed), 800);
        // Too large an object is given up too, and its bytes released.
        assert_eq!(a.data(piece.clone()).unwrap(), piece);
        assert!(a.policy.is_none());
        assert_eq!(buffering.load(Ordering::Relaxed), 0);
        drop((a, b));
        assert_eq!(buffering.load(Ordering::Relaxed), 0);
    }
}
