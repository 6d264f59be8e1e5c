//! Configuration: the typed, validated model every other module reads, and the
//! pipeline that produces it: TOML text → `raw` structs (serde, unknown fields
//! rejected) → `validate` (env substitution, defaults, cross-references), with
//! every error naming the file, line and field. A `Config` is immutable once
//! built; live connections hold the `Arc` they started with.

mod admin;
mod cluster;
mod cluster_policy;
pub mod duration;
mod env;
mod filter;
mod http;
mod kernel;
mod lint;
mod listener;
mod print;
mod raw;
mod route;
mod route_http;
mod size;
mod syntax;
mod tls;

pub use admin::{AdminAccess, AdminTls, AdminToken, RegistryConfig, TokenSource, TracingConfig};
pub use cluster::{ClusterConfig, DEFAULT_RESOLVE_EVERY, EndpointConfig, check_service_name};
pub use cluster_policy::{
    BalanceConfig, ClusterPolicy, HashKey, HealthCheck, HttpProbe, OutlierConfig, Probe,
    RetryConfig,
};
pub use duration::parse as parse_duration;
pub use filter::{
    ApiKey, BasicAuth, CacheConfig, Compress, Cors, CustomCheck, Encoding, FilterConfig,
    FilterKind, HeaderRules, IpRules, Jwt, JwtKeyMaterial, JwtKeys, KeyPlace, LimitKey, Part,
    RateLimit, RequestId, Template, check_jwks, decoding_key, register_custom_kind,
};
pub use http::{HostMatch, HttpListener, HttpMatch, HttpPolicy, PathMatch, Segment};
pub use print::print;
pub use route_http::{LogRedact, MirrorConfig};
pub use tls::{
    AcmeChallenge, AcmeConfig, CertSource, CertificateConfig, ClientAuth, TlsListener, TlsMode,
    TlsVersion, UpstreamConfig, UpstreamProtocol, UpstreamTls, host_pattern,
};

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use raw::{RawConfig, S, Scalar};

pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:9901";
pub const DEFAULT_SPLICE_PIPES: usize = 1024;

#[derive(Debug, Clone)]
pub struct Config {
    pub workers: usize,
    /// `instance`: what names this process's nftables table.
    pub instance: Option<String>,
    /// `None` when the admin listener is disabled.
    pub admin: Option<SocketAddr>,
    /// Who may use the admin API.
    pub admin_access: AdminAccess,
    /// The service registry's settings.
    pub registry: RegistryConfig,
    /// Tracing (`traceparent`, OTLP export); none: off.
    pub tracing: Option<TracingConfig>,
    /// TLS (and mTLS) on the admin listener; read at start.
    pub admin_tls: Option<AdminTls>,
    pub log: LogConfig,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    /// Named clusters (`[[clusters]]`), then the routes' own
    /// (`action.forward` lists), in route order.
    pub clusters: Vec<ClusterConfig>,
    /// Filter definitions (`[[filters]]`), which routes name.
    pub filters: Vec<FilterConfig>,
    pub certificates: Vec<CertificateConfig>,
    pub acme: Option<AcmeConfig>,
    /// Where the local CA (`issuer = "internal"`) keeps its files.
    pub internal_ca: std::path::PathBuf,
    /// What is valid but likely not meant (`lint`).
    pub warnings: Vec<ConfigError>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A tracing `EnvFilter` directive, e.g. `info` or `gatehouse=debug`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub proxy_header: Duration,
    pub idle: Option<Duration>,
    pub max_lifetime: Option<Duration>,
    pub shutdown_drain: Duration,
    /// How long the connections of a route a reload removed may go on.
    pub route_drain: Duration,
    /// Default for reading a ClientHello and completing a TLS handshake.
    pub tls_handshake: Duration,
    /// Default for how long a response may make no progress toward the
    /// client (a full socket, an HTTP/2 stream without window).
    pub client_send: Duration,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// `None`: not set, so 10,000 or what the descriptor limit allows
    /// (`listener::fd_budget`).
    pub max_connections: Option<u32>,
    pub max_connections_per_ip: Option<u32>,
    /// Pipes for zero-copy forwarding (two FDs each); 0 turns splicing off.
    pub splice_pipes: usize,
    /// Resident memory above which new connections are refused (bytes).
    pub memory_budget: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    /// A port range (`bind`'s port to this one): forwarded by the kernel
    /// only, never bound by the process.
    pub last_port: Option<u16>,
    pub backlog: u32,
    pub accept_proxy: Option<AcceptProxy>,
    /// `Some` when the listener speaks HTTP (`protocol = "http"` or `"https"`).
    pub http: Option<std::sync::Arc<HttpListener>>,
    /// `Some` when the listener speaks TLS: `protocol = "tls"` (routes by SNI,
    /// each route picks its `TlsMode`) or `"https"` (terminated, then HTTP).
    pub tls: Option<std::sync::Arc<TlsListener>>,
}

/// Receiving PROXY protocol headers on a listener.
#[derive(Debug, Clone)]
pub struct AcceptProxy {
    /// Only peers in these networks may send a header.
    pub trusted: Vec<IpNet>,
    /// When true every connection must come from a trusted peer and start
    /// with a header; when false trusted peers may omit it and untrusted
    /// peers are direct clients (a header from them is refused).
    pub required: bool,
    pub timeout: Duration,
}

/// A route is *match + action + policy*.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub policy: RoutePolicy,
    /// On a `tls` listener: what to do with the TLS connection.
    pub tls_mode: TlsMode,
    /// TLS and protocol towards the targets.
    pub upstream: UpstreamConfig,
    /// Its filters, in order: indices into `Config::filters`.
    pub filters: Vec<usize>,
    /// Copies of its requests to a shadow cluster (HTTP routes).
    pub mirror: Option<MirrorConfig>,
    /// What its access-log lines never show.
    pub log_redact: std::sync::Arc<LogRedact>,
    /// `action.engine = "kernel"`: forwarded by nftables.
    pub kernel: Option<KernelRoute>,
}

/// A route forwarded by the kernel (nftables DNAT): what the rules match
/// and where they send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    /// `kernel_strict`: no start (or reload) without nftables.
    pub strict: bool,
    /// The listener's address (unspecified: any local address) and its
    /// first port.
    pub listen: SocketAddr,
    /// The last port of the listener's range (its one port otherwise).
    pub last_port: u16,
    /// Empty: every client.
    pub clients: Vec<IpNet>,
    /// Where connections go (with a port range, `target`'s port is the
    /// first of the same range: each port goes to the same port).
    pub target: SocketAddr,
    /// `policy.max_connections`: live connections at most (nftables
    /// `ct count`); one more is reset.
    pub max_connections: Option<u32>,
}

impl KernelRoute {
    /// Whether it forwards a port range (each port to the same port).
    pub fn is_range(&self) -> bool {
        self.last_port != self.listen.port()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteMatch {
    /// Index into `Config::listeners`; `None` matches every listener.
    pub listener: Option<usize>,
    /// Local (destination) port of the accepted connection.
    pub port: Option<u16>,
    /// Empty matches every client.
    pub client_cidrs: Vec<IpNet>,
    /// Request matchers; only on HTTP listeners.
    pub http: HttpMatch,
    /// TLS server names (SNI); only on TLS listeners. Empty matches every
    /// client, including those that send no SNI.
    pub sni: Vec<HostMatch>,
    /// Verified client-certificate identities (mTLS); empty matches all.
    pub client_identities: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum RouteAction {
    Forward(Forward),
    /// Answer every request with a permanent redirect to `https://` on the
    /// same host (HTTP routes only).
    RedirectHttps {
        /// The HTTPS port in the `Location`; `None`: the default (443).
        port: Option<u16>,
    },
}

impl RouteAction {
    /// The forwarding action, if this route forwards.
    pub fn forward(&self) -> Option<&Forward> {
        match self {
            RouteAction::Forward(f) => Some(f),
            RouteAction::RedirectHttps { .. } => None,
        }
    }
}

impl Forward {
    /// The route's clusters, in order: the split's, or its one cluster.
    pub fn clusters(&self) -> Vec<usize> {
        if self.split.is_empty() {
            vec![self.cluster]
        } else {
            self.split.iter().map(|&(c, _)| c).collect()
        }
    }

    /// Which of `clusters()` turn `n` goes to: with a split, each cluster
    /// as many turns in a round as its weight, in runs; else the one.
    pub fn pick(&self, n: usize) -> usize {
        if self.split.is_empty() {
            return 0;
        }
        let total: u32 = self.split.iter().map(|&(_, w)| w).sum();
        let mut r = (n % total.max(1) as usize) as u32;
        for (k, &(_, w)) in self.split.iter().enumerate() {
            if r < w {
                return k;
            }
            r -= w;
        }
        0
    }
}

#[derive(Debug, Clone)]
pub struct Forward {
    /// Where to: an index into `Config::clusters` (with a split, the first
    /// of its clusters).
    pub cluster: usize,
    /// A split: every cluster of it (the first is `cluster`) and its
    /// weight. Empty without one.
    pub split: Vec<(usize, u32)>,
    pub send_proxy: Option<ProxyVersion>,
    /// Pass the TLVs of an incoming v2 header on unchanged (v2 only).
    pub pass_tlvs: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

#[derive(Debug, Clone)]
pub struct RoutePolicy {
    pub connect_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub max_lifetime: Option<Duration>,
    pub max_connections: Option<u32>,
    pub http: HttpPolicy,
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.field, self.message
            )
        }
    }
}

impl Config {
    /// The route can carry HTTP requests: it is bound to an HTTP listener,
    /// or to none (then every listener, HTTP ones included).
    pub fn route_serves_http(&self, route: &RouteConfig) -> bool {
        route
            .matcher
            .listener
            .is_none_or(|i| self.listeners.get(i).is_some_and(|l| l.http.is_some()))
    }
}

/// Every problem found in a config file, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    // (`error`, not `source`: the message says it once.)
    #[error("cannot read config file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
}

/// The JSON Schema of the config file, for editors to complete and check
/// `gatehouse.toml` with (`gatehouse schema`; kept as
/// `docs/gatehouse.schema.json`).
pub fn json_schema() -> String {
    // (TOML has no null: an optional key is one that may be left out.)
    let no_null = |schema: &mut schemars::Schema| {
        let Some(obj) = schema.as_object_mut() else {
            return;
        };
        let null = serde_json::json!({ "type": "null" });
        if let Some(serde_json::Value::Array(any)) = obj.get_mut("anyOf") {
            any.retain(|v| *v != null);
            if let [serde_json::Value::Object(only)] = any.as_slice() {
                let only = only.clone();
                obj.remove("anyOf");
                obj.extend(only);
            }
        }
        if let Some(serde_json::Value::Array(types)) = obj.get_mut("type") {
            types.retain(|t| t != "null");
            if let [only] = types.as_slice() {
                let only = only.clone();
                obj.insert("type".into(), only);
            }
        }
    };
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with_transform(schemars::transform::RecursiveTransform(no_null))
        .into_generator();
    let schema = generator.into_root_schema_for::<RawConfig>();
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// Reads, parses and validates a config file, substituting environment variables.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
        path: path.display().to_string(),
        error,
    })?;
    from_text(path, &text)
}

/// The config in `text`, read from `path` (named in errors), with `${VAR}`
/// from the environment.
pub fn from_text(path: &Path, text: &str) -> Result<Config, LoadError> {
    let lookup = |name: &str| std::env::var(name).ok();
    Ok(parse(&path.display().to_string(), text, &lookup)?)
}

/// Parses and validates config text. `file` only names the source in errors.
pub fn parse(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut cx = Ctx {
        file,
        text,
        env,
        errors: Vec::new(),
        filter_names: Vec::new(),
    };
    let read = syntax::read_all(text);
    for e in &read.errors {
        cx.err(&e.span, &e.field, &e.message);
    }
    let Some(raw) = read.raw else {
        cx.errors.sort_by_key(|e| e.line);
        return Err(ConfigErrors(cx.errors));
    };
    let mut config = cx.validate(raw);
    if cx.errors.is_empty() {
        // (The raw form again, for the warnings' lines: validation took it.)
        if let Ok(raw) = toml::from_str::<RawConfig>(text) {
            config.warnings = cx.lint(&raw, &config);
        }
        Ok(config)
    } else {
        cx.errors.sort_by_key(|e| e.line);
        Err(ConfigErrors(cx.errors))
    }
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<ConfigError>,
    /// Every `[[filters]]` name, valid or not (a route naming one that
    /// has errors of its own gets no follow-on error).
    filter_names: Vec<String>,
}

impl Ctx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn err(&mut self, span: &Range<usize>, field: &str, message: &str) {
        let line = self.line(span);
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            field: field.to_owned(),
            message: message.to_owned(),
        });
    }

    fn string(&mut self, v: &S<String>, field: &str) -> Option<String> {
        match env::expand(v.get_ref(), self.env) {
            Ok(s) => Some(s),
            Err(m) => {
                self.err(&v.span(), field, &m);
                None
            }
        }
    }

    fn scalar_text(&mut self, v: &S<Scalar>, field: &str) -> Option<String> {
        match v.get_ref() {
            Scalar::Int(i) => Some(i.to_string()),
            Scalar::Str(s) => match env::expand(s, self.env) {
                Ok(s) => Some(s),
                Err(m) => {
                    self.err(&v.span(), field, &m);
                    None
                }
            },
        }
    }

    /// A positive integer no larger than `max`.
    fn count(&mut self, v: &S<Scalar>, field: &str, max: u64) -> Option<u64> {
        let text = self.scalar_text(v, field)?;
        match text.trim().parse::<u64>() {
            Ok(0) => self.err(&v.span(), field, "must be at least 1"),
            Ok(n) if n > max => self.err(&v.span(), field, &format!("must be at most {max}")),
            Ok(n) => return Some(n),
            Err(_) => self.err(
                &v.span(),
                field,
                &format!("{text:?} is not a positive integer"),
            ),
        }
        None
    }

    /// A non-zero duration, or `None` for `"off"` where `allow_off`.
    fn duration(
        &mut self,
        v: &S<Scalar>,
        field: &str,
        allow_off: bool,
    ) -> Option<Option<Duration>> {
        let text = match v.get_ref() {
            Scalar::Int(_) => {
                self.err(
                    &v.span(),
                    field,
                    "durations are strings with a unit, e.g. \"5s\"",
                );
                return None;
            }
            Scalar::Str(_) => self.scalar_text(v, field)?,
        };
        if text.trim() == "off" {
            if allow_off {
                return Some(None);
            }
            self.err(&v.span(), field, "this deadline cannot be turned off");
            return None;
        }
        match duration::parse(&text) {
            Ok(d) if d.is_zero() => self.err(&v.span(), field, "must be longer than zero"),
            Ok(d) => return Some(Some(d)),
            Err(m) => self.err(&v.span(), field, &m),
        }
        None
    }

    fn required_duration(
        &mut self,
        v: Option<&S<Scalar>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        v.and_then(|v| self.duration(v, field, false))
            .flatten()
            .unwrap_or(default)
    }

    fn optional_duration(
        &mut self,
        v: Option<&S<Scalar>>,
        field: &str,
        default: Option<Duration>,
    ) -> Option<Duration> {
        match v {
            Some(v) => self.duration(v, field, true).unwrap_or(default),
            None => default,
        }
    }

    fn socket_addr(&mut self, v: &S<String>, field: &str) -> Option<SocketAddr> {
        let s = self.string(v, field)?;
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    &v.span(),
                    field,
                    &format!("{s:?} is not an address like 127.0.0.1:8080 or [::1]:8080"),
                );
                None
            }
        }
    }

    fn cidrs(&mut self, list: &S<Vec<S<String>>>, field: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for item in list.get_ref() {
            let Some(s) = self.string(item, field) else {
                continue;
            };
            match parse_cidr(&s) {
                Some(net) => out.push(net),
                None => self.err(
                    &item.span(),
                    field,
                    &format!("{s:?} is not a CIDR like 10.0.0.0/8 or an IP address"),
                ),
            }
        }
        out
    }

    fn validate(&mut self, raw: RawConfig) -> Config {
        let workers = match &raw.workers {
            None => default_workers(),
            Some(v) => {
                let text = self.scalar_text(v, "workers");
                match text.as_deref().map(str::trim) {
                    Some("auto") | None => default_workers(),
                    Some(_) => self.count(v, "workers", 1024).map_or(1, |n| n as usize),
                }
            }
        };

        let admin = match &raw.admin {
            Some(a) if a.enabled.as_ref().is_some_and(|e| !*e.get_ref()) => None,
            Some(a) => match &a.bind {
                Some(b) => self.socket_addr(b, "admin.bind"),
                None => DEFAULT_ADMIN_BIND.parse().ok(),
            },
            None => DEFAULT_ADMIN_BIND.parse().ok(),
        };

        let admin_access = self.admin_access(raw.admin.as_ref());
        let registry = self.registry(raw.registry.as_ref());
        let tracing = self.tracing(raw.tracing.as_ref());
        let admin_tls = self.admin_tls(raw.admin.as_ref());
        let log = self.log(&raw);
        let timeouts = self.timeouts(&raw);
        let limits = self.limits(&raw);

        let (listeners, facts, mut needs_certificate) = self.listeners(&raw, &timeouts);
        let mut clusters = self.clusters(&raw);
        let filters = self.filters(&raw.filters);
        let routes = self.routes(
            &raw,
            &facts,
            &timeouts,
            (&mut clusters, &filters),
            &mut needs_certificate,
        );

        let certificates = self.certificates(&raw.certificates);
        let acme = raw.acme.as_ref().and_then(|a| self.acme(a));
        let internal_ca = self.internal_ca(raw.internal_ca.as_ref());
        if let Some(span) = needs_certificate {
            // (An entry with an error of its own is not missing: no follow-on.)
            if raw.certificates.is_empty() {
                self.err(
                    &span,
                    "certificates",
                    "terminating TLS needs at least one [[certificates]] entry",
                );
            }
        }
        if acme.is_none() {
            for (i, c) in raw.certificates.iter().enumerate() {
                if c.get_ref().auto.as_ref().is_some_and(|a| *a.get_ref()) {
                    self.err(
                        &c.span(),
                        &format!("certificates[{i}].auto"),
                        "auto = true needs an [acme] table",
                    );
                }
            }
        }

        let instance = self.instance(raw.instance.as_ref());
        Config {
            workers,
            instance,
            admin,
            admin_access,
            registry,
            tracing,
            admin_tls,
            log,
            timeouts,
            limits,
            listeners,
            routes,
            clusters,
            filters,
            certificates,
            acme,
            internal_ca,
            warnings: Vec::new(),
        }
    }

    fn log(&mut self, raw: &RawConfig) -> LogConfig {
        let mut log = LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        };
        if let Some(l) = &raw.log {
            if let Some(level) = &l.level {
                if let Some(s) = self.string(level, "log.level") {
                    if tracing_subscriber::EnvFilter::try_new(&s).is_err() {
                        self.err(
                            &level.span(),
                            "log.level",
                            &format!(
                                "{s:?} is not a log filter (e.g. \"info\", \"gatehouse=debug\")"
                            ),
                        );
                    }
                    log.level = s;
                }
            }
            if let Some(format) = &l.format {
                match self.string(format, "log.format").as_deref() {
                    Some("text") => log.format = LogFormat::Text,
                    Some("json") => log.format = LogFormat::Json,
                    Some(other) => self.err(
                        &format.span(),
                        "log.format",
                        &format!("{other:?} is not one of \"text\", \"json\""),
                    ),
                    None => {}
                }
            }
        }
        log
    }

    fn timeouts(&mut self, raw: &RawConfig) -> Timeouts {
        let t = raw.timeouts.as_ref();
        Timeouts {
            connect: self.required_duration(
                t.and_then(|t| t.connect.as_ref()),
                "timeouts.connect",
                Duration::from_secs(5),
            ),
            proxy_header: self.required_duration(
                t.and_then(|t| t.proxy_header.as_ref()),
                "timeouts.proxy_header",
                Duration::from_secs(5),
            ),
            idle: self.optional_duration(
                t.and_then(|t| t.idle.as_ref()),
                "timeouts.idle",
                Some(Duration::from_secs(600)),
            ),
            max_lifetime: self.optional_duration(
                t.and_then(|t| t.max_lifetime.as_ref()),
                "timeouts.max_lifetime",
                None,
            ),
            route_drain: self.required_duration(
                t.and_then(|t| t.route_drain.as_ref()),
                "timeouts.route_drain",
                Duration::from_secs(30),
            ),
            shutdown_drain: self.required_duration(
                t.and_then(|t| t.shutdown_drain.as_ref()),
                "timeouts.shutdown_drain",
                Duration::from_secs(30),
            ),
            tls_handshake: self.required_duration(
                t.and_then(|t| t.tls_handshake.as_ref()),
                "timeouts.tls_handshake",
                Duration::from_secs(10),
            ),
            client_send: self.required_duration(
                t.and_then(|t| t.client_send.as_ref()),
                "timeouts.client_send",
                Duration::from_secs(60),
            ),
        }
    }

    fn limits(&mut self, raw: &RawConfig) -> Limits {
        let l = raw.limits.as_ref();
        Limits {
            max_connections: l
                .and_then(|l| l.max_connections.as_ref())
                .and_then(|v| self.count(v, "limits.max_connections", u32::MAX as u64))
                .map(|n| n as u32),
            max_connections_per_ip: l
                .and_then(|l| l.max_connections_per_ip.as_ref())
                .and_then(|v| self.count(v, "limits.max_connections_per_ip", u32::MAX as u64))
                .map(|n| n as u32),
            splice_pipes: match l.and_then(|l| l.splice_pipes.as_ref()) {
                None => DEFAULT_SPLICE_PIPES,
                Some(v) if matches!(v.get_ref(), Scalar::Str(s) if s.trim() == "off") => 0,
                Some(v) => self
                    .count(v, "limits.splice_pipes", 65_536)
                    .map_or(DEFAULT_SPLICE_PIPES, |n| n as usize),
            },
            memory_budget: l
                .and_then(|l| l.memory_budget.as_ref())
                .and_then(|v| self.size(v, "limits.memory_budget")),
        }
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Accepts `10.0.0.0/8`, `::1/128`, or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc());
    }
    s.parse::<std::net::IpAddr>().ok().map(IpNet::from)
}

/// A target is `host:port` (or `[v6]:port`) with a non-zero port.
fn check_target(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return Ok(());
    }
    let bad =
        || format!("{s:?} is not a target like \"10.0.0.5:8080\" or \"backend.internal:8080\"");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests;
