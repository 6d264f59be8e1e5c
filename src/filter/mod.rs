//! The filter chain: what a route does to a request before its upstream
//! and to the response after it. A filter is a `Filter`: `request` sees
//! the request head (method, target, headers, the real client address)
//! and lets it go on, changed or not, or answers it (`Answer`: a
//! rejection with its reason and side, or an answer of its own such as a
//! CORS preflight's); `response` sees the status and headers of every
//! response to a request it let through (the upstream's, or the proxy's
//! own when a later filter or the upstream failed it). A route's filters
//! run in its order before the upstream and in reverse after it.
//!
//! The built-in kinds (`config::FilterKind`) are here: authentication
//! (`auth`: HTTP Basic and API keys; `jwt`), IP rules, header rules,
//! request ids and CORS (`rules`), rate limits (`limit`), compression
//! (`compress`) and the response cache (`cache`); programs built on the
//! library add kinds of their own (`register`). Their
//! definitions are built once per snapshot (`build`) and kept across
//! reloads while their settings stay, so a rate limit's state survives a
//! reload. A route without filters has an empty `Chain`: the proxy does
//! not even make a `State` for its requests.

mod auth;
mod cache;
mod compress;
mod jwt;
mod limit;
mod rules;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use serde_json::Value;

use crate::config::{FilterConfig, FilterKind, Part, Template};
pub use crate::lifecycle::{EndReason, RequestEnd};
pub use auth::{hash_key, hash_password};

/// A filter on a route's requests and their responses.
pub trait Filter: Send + Sync {
    /// Before the upstream: change the request, or answer it (`Err`).
    fn request(&self, req: &mut Request<'_>) -> Result<(), Answer>;

    /// Before the response goes to the client: change its status or
    /// headers. Runs for every request whose `request` this filter passed.
    fn response(&self, _resp: &mut Response<'_>) {}

    /// A TCP or TLS connection from `client` on an L4 route (IP rules and
    /// connection-rate limits are the kinds that work there): `Err` ends it.
    fn connection(&self, _client: IpAddr, _now: std::time::Instant) -> Result<(), EndReason> {
        Ok(())
    }
}

/// A request before its upstream, as a filter sees it.
pub struct Request<'a> {
    pub method: &'a Method,
    pub uri: &'a mut Uri,
    pub headers: &'a mut HeaderMap,
    /// What the filters have learned so far, and the request's facts.
    pub state: &'a mut State,
}

/// A response as a filter sees it.
pub struct Response<'a> {
    pub status: &'a mut StatusCode,
    pub headers: &'a mut HeaderMap,
    pub state: &'a State,
    /// Transforms of the body, applied in order as it streams (a filter
    /// that changes the body adds one; it never holds the whole body).
    pub transforms: &'a mut Vec<Box<dyn Transform>>,
}

/// A streaming change of a response body: each piece of the body in, what
/// is ready out (possibly nothing yet), and at the end what is left.
pub trait Transform: Send {
    fn data(&mut self, chunk: bytes::Bytes) -> std::io::Result<bytes::Bytes>;
    fn finish(&mut self) -> std::io::Result<bytes::Bytes>;
}

/// One request's filter state: its facts (client, route, TLS name) and
/// what filters found (identity, claims, request id), for the filters
/// after them and for header templates.
pub struct State {
    /// When the request began (the one clock read filters use).
    pub now: std::time::Instant,
    /// The real client address (PROXY protocol, or `X-Forwarded-For` from
    /// a trusted proxy).
    pub client: IpAddr,
    /// The address the connection came from (a proxy, or the client).
    pub peer: IpAddr,
    pub route: Arc<str>,
    /// `route` and `client` as header values, when the caller has them
    /// made already (no formatting per request); else made when asked for.
    pub route_value: Option<HeaderValue>,
    pub client_value: Option<HeaderValue>,
    pub sni: Option<Arc<str>>,
    pub request_id: Option<HeaderValue>,
    /// Who the request is from: the Basic user, the API key's name, or
    /// the token's `sub`.
    pub user: Option<Arc<str>>,
    /// The name of the API key the request presented.
    pub api_key: Option<Arc<str>>,
    /// A verified token's claims.
    pub claims: Option<Arc<serde_json::Map<String, Value>>>,
    /// Headers every response to the request gets (rate-limit state, CORS).
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Whatever else a filter keeps for the response side (by type).
    pub extensions: http::Extensions,
    /// Awaited before the upstream request (within the request's
    /// deadline): an answer instead of the upstream's, or none to go on (a
    /// cache's request for an object another request is fetching waits
    /// for it here).
    pub before_upstream: Option<std::pin::Pin<Box<dyn Future<Output = Option<Answer>> + Send>>>,
    /// Filters that ran `request` (their `response` runs).
    ran: usize,
}

impl State {
    pub fn new(
        now: std::time::Instant,
        client: IpAddr,
        peer: IpAddr,
        route: Arc<str>,
        sni: Option<Arc<str>>,
    ) -> State {
        State {
            now,
            client,
            peer,
            route,
            route_value: None,
            client_value: None,
            sni,
            request_id: None,
            user: None,
            api_key: None,
            claims: None,
            response_headers: Vec::new(),
            extensions: http::Extensions::new(),
            before_upstream: None,
            ran: 0,
        }
    }

    /// Seconds since the Unix epoch at `now`, from one reading of the wall
    /// clock at the process's first request (no clock read per request).
    pub fn unix_secs(&self) -> u64 {
        static BASE: std::sync::OnceLock<(std::time::Instant, u64)> = std::sync::OnceLock::new();
        let (at, secs) = BASE.get_or_init(|| {
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            (std::time::Instant::now(), wall)
        });
        match self.now.checked_duration_since(*at) {
            Some(d) => secs + d.as_secs(),
            None => secs.saturating_sub(at.duration_since(self.now).as_secs()),
        }
    }

    /// A claim of the verified token, as header text.
    pub fn claim(&self, name: &str) -> Option<String> {
        claim_text(self.claims.as_ref()?.get(name)?)
    }

    /// `t` with its variables filled in; `None` when the result is not a
    /// header value (a claim with a line break, say).
    pub fn render(&self, t: &Template) -> Option<HeaderValue> {
        // One variable alone (the usual rule) needs no assembly.
        if let [part] = &t.0[..] {
            return match part {
                Part::Route => match &self.route_value {
                    Some(v) => Some(v.clone()),
                    None => HeaderValue::from_str(&self.route).ok(),
                },
                Part::RequestId => self.request_id.clone(),
                Part::ClientIp if self.client_value.is_some() => self.client_value.clone(),
                Part::ClientIp => {
                    let mut buf = [0u8; 48];
                    let mut w = std::io::Cursor::new(&mut buf[..]);
                    std::io::Write::write_fmt(&mut w, format_args!("{}", self.client)).ok()?;
                    let n = w.position() as usize;
                    HeaderValue::from_bytes(&buf[..n]).ok()
                }
                _ => self.render_parts(t),
            };
        }
        self.render_parts(t)
    }

    fn render_parts(&self, t: &Template) -> Option<HeaderValue> {
        let mut out = String::new();
        for p in &t.0 {
            match p {
                Part::Text(s) => out.push_str(s),
                Part::ClientIp => out.push_str(&self.client.to_string()),
                Part::Route => out.push_str(&self.route),
                Part::RequestId => {
                    out.push_str(self.request_id.as_ref().and_then(|v| v.to_str().ok())?)
                }
                Part::Sni => out.push_str(self.sni.as_deref().unwrap_or("")),
                Part::Claim(c) => out.push_str(&self.claim(c).unwrap_or_default()),
            }
        }
        HeaderValue::from_str(&out).ok()
    }
}

/// A claim's value as header text: a string as it is, other values as
/// JSON, null as nothing.
fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        v => Some(v.to_string()),
    }
}

/// A filter's answer instead of the upstream's.
#[derive(Debug)]
pub struct Answer {
    /// Why the request ends here: a rejection's reason (and so its side
    /// and status), or `Ok` for an answer such as a CORS preflight's.
    pub end: RequestEnd,
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body of an answer that is not a rejection (a cached response's).
    pub body: bytes::Bytes,
}

impl Answer {
    /// A rejection: the reason's status, and the proxy's error body.
    pub fn reject(end: RequestEnd) -> Answer {
        Answer {
            end,
            status: end.status(),
            headers: Vec::new(),
            body: bytes::Bytes::new(),
        }
    }

    pub fn with(mut self, name: HeaderName, value: HeaderValue) -> Answer {
        self.headers.push((name, value));
        self
    }
}

/// A route's filters, in order.
#[derive(Clone, Default)]
pub struct Chain {
    filters: Arc<[Arc<dyn Filter>]>,
}

impl Chain {
    pub fn new(filters: Vec<Arc<dyn Filter>>) -> Chain {
        Chain {
            filters: filters.into(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Runs the filters' `request` in order, until one answers.
    pub fn request(&self, req: &mut Request<'_>) -> Result<(), Answer> {
        for f in self.filters.iter() {
            req.state.ran += 1;
            f.request(req)?;
        }
        Ok(())
    }

    /// Runs the filters' `connection` (an L4 connection), until one ends it.
    pub fn connection(&self, client: IpAddr) -> Result<(), EndReason> {
        let now = std::time::Instant::now();
        self.filters
            .iter()
            .try_for_each(|f| f.connection(client, now))
    }

    /// Runs `response` of the filters whose `request` ran, in reverse, then
    /// adds the headers they asked every response to get.
    pub fn response(
        &self,
        status: &mut StatusCode,
        headers: &mut HeaderMap,
        state: &mut State,
        transforms: &mut Vec<Box<dyn Transform>>,
    ) {
        for (name, value) in state.response_headers.drain(..) {
            headers.append(name, value);
        }
        let mut resp = Response {
            status,
            headers,
            state,
            transforms,
        };
        for f in self.filters[..state.ran.min(self.filters.len())]
            .iter()
            .rev()
        {
            f.response(&mut resp);
        }
    }
}

/// A built filter definition and the settings it was built from.
pub struct Built {
    pub config: FilterConfig,
    pub filter: Arc<dyn Filter>,
}

/// The filters of `defs`, keeping from `previous` those whose definition is
/// the same (a rate limit keeps its counts across a reload).
pub fn build_all(defs: &[FilterConfig], previous: &[Built]) -> Vec<Built> {
    defs.iter()
        .map(|c| Built {
            filter: previous
                .iter()
                .find(|p| p.config == *c)
                .map_or_else(|| build(c), |p| p.filter.clone()),
            config: c.clone(),
        })
        .collect()
}

/// One filter from its definition.
pub fn build(c: &FilterConfig) -> Arc<dyn Filter> {
    match &c.kind {
        FilterKind::BasicAuth(b) => Arc::new(auth::Basic::new(b)),
        FilterKind::ApiKey(k) => Arc::new(auth::ApiKeys::new(k)),
        FilterKind::Jwt(j) => Arc::new(jwt::JwtAuth::new(&c.name, j)),
        FilterKind::Ip(r) => Arc::new(rules::Ip::new(r)),
        FilterKind::RateLimit(l) => Arc::new(limit::Limiter::new(&c.name, l)),
        FilterKind::Headers(h) => Arc::new(rules::Headers(h.clone())),
        FilterKind::RequestId(r) => Arc::new(rules::RequestIdFilter(r.clone())),
        FilterKind::Cors(c) => Arc::new(rules::CorsFilter::new(c)),
        FilterKind::Compress(c) => Arc::new(compress::Compressor(c.clone())),
        FilterKind::Cache(c) => Arc::new(cache::Cache::new(c)),
        FilterKind::Custom { kind, settings } => {
            let factory = factory(kind);
            match factory
                .ok_or("not registered".to_owned())
                .and_then(|f| f(settings))
            {
                Ok(f) => f,
                Err(e) => {
                    // (Validation ran the same factory on the same settings:
                    // refusing every request is the safe answer if it now fails.)
                    tracing::error!(filter = %c.name, kind = %kind, error = %e, "custom filter not made; its routes refuse every request");
                    Arc::new(Unmade)
                }
            }
        }
    }
}

/// Makes a filter of a custom kind from its definition's `settings`.
pub type Factory = Arc<dyn Fn(&Value) -> Result<Arc<dyn Filter>, String> + Send + Sync>;

static FACTORIES: std::sync::Mutex<Vec<(String, Factory)>> = std::sync::Mutex::new(Vec::new());

/// Registers a filter kind of a program built on this library: configs
/// may then define filters with `kind = "<kind>"` and a `settings` table,
/// which `factory` turns into the filter (at validation too, so that
/// `check` names a bad setting). Call it before the config is loaded.
pub fn register(
    kind: &str,
    factory: impl Fn(&Value) -> Result<Arc<dyn Filter>, String> + Send + Sync + 'static,
) -> Result<(), String> {
    let factory: Factory = Arc::new(factory);
    let check = factory.clone();
    crate::config::register_custom_kind(kind, Box::new(move |v| check(v).map(|_| ())))?;
    let mut all = FACTORIES.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|(k, _)| k != kind);
    all.push((kind.to_owned(), factory));
    Ok(())
}

fn factory(kind: &str) -> Option<Factory> {
    let all = FACTORIES.lock().unwrap_or_else(|p| p.into_inner());
    all.iter().find(|(k, _)| k == kind).map(|(_, f)| f.clone())
}

/// A custom filter whose factory failed: it refuses every request.
struct Unmade;

impl Filter for Unmade {
    fn request(&self, _req: &mut Request<'_>) -> Result<(), Answer> {
        Err(Answer::reject(RequestEnd::AuthDenied))
    }
}
