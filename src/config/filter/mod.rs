//! `[[filters]]`: the definitions routes name in `filters`, each of one
//! `kind`, validated with their key material read and checked (a JWKS file
//! that is not one, a key of the wrong type for its algorithm, a password
//! stored in plain text are refused here, by `gatehouse check` too).

use std::collections::BTreeMap;
use std::path::PathBuf;

use http::HeaderName;
use ipnet::IpNet;
use jsonwebtoken::Algorithm;

mod auth;

pub use auth::{check_jwks, decoding_key};

use super::Ctx;
use super::raw::{RawFilter, S};

#[derive(Debug, Clone, PartialEq)]
pub struct FilterConfig {
    pub name: String,
    pub kind: FilterKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FilterKind {
    BasicAuth(BasicAuth),
    ApiKey(ApiKey),
    Jwt(Jwt),
    Ip(IpRules),
    RateLimit(RateLimit),
    Headers(HeaderRules),
    RequestId(RequestId),
    Cors(Cors),
    Compress(Compress),
    Cache(CacheConfig),
    /// A kind a program built on the library registered
    /// (`filter::register`), with its settings.
    Custom {
        kind: String,
        settings: serde_json::Value,
    },
}

impl FilterKind {
    /// Whether it can run on an L4 (TCP or TLS) route: IP rules, and rate
    /// limits of connections per client address or per route.
    pub fn works_at_l4(&self) -> bool {
        match self {
            FilterKind::Ip(_) => true,
            FilterKind::RateLimit(l) => matches!(l.key, LimitKey::ClientIp | LimitKey::Route),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BasicAuth {
    pub realm: String,
    /// User name and password hash (argon2 PHC string, or bcrypt).
    pub users: Vec<(String, String)>,
    pub forward_credentials: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KeyPlace {
    Header(HeaderName),
    Query(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub realm: String,
    pub place: KeyPlace,
    /// Key name and the SHA-256 of the key.
    pub keys: Vec<(String, [u8; 32])>,
    pub forward_credentials: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JwtKeys {
    /// One key and its algorithm.
    Static {
        algorithm: Algorithm,
        key: JwtKeyMaterial,
    },
    /// A JWKS file, read again when it changes (its keys as read now).
    Jwks { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq)]
pub enum JwtKeyMaterial {
    Secret(Vec<u8>),
    Pem(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Jwt {
    pub realm: String,
    pub keys: JwtKeys,
    pub issuer: Vec<String>,
    pub audience: Vec<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub clock_skew: u64,
    pub claims_to_headers: Vec<(String, HeaderName)>,
    pub forward_credentials: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IpRules {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LimitKey {
    ClientIp,
    Header(HeaderName),
    Claim(String),
    ApiKey,
    User,
    Route,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Requests allowed per `window`, in the long run.
    pub count: u32,
    pub window: std::time::Duration,
    /// Requests allowed at once (the bucket's size).
    pub burst: u32,
    pub key: LimitKey,
    /// Keys tracked at most (memory: about 32 bytes each).
    pub max_keys: usize,
}

/// A header value with variables: `{client_ip}`, `{route}`,
/// `{request_id}`, `{sni}`, `{claim.NAME}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(pub Vec<Part>);

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    ClientIp,
    Route,
    RequestId,
    Sni,
    Claim(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderRules {
    pub request_set: Vec<(HeaderName, Template)>,
    pub request_add: Vec<(HeaderName, Template)>,
    pub request_remove: Vec<HeaderName>,
    pub response_set: Vec<(HeaderName, Template)>,
    pub response_add: Vec<(HeaderName, Template)>,
    pub response_remove: Vec<HeaderName>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestId {
    pub header: HeaderName,
    /// Peers whose id is kept; `None`: every peer's.
    pub trust_from: Option<Vec<IpNet>>,
    pub echo: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cors {
    /// Empty: any origin (`*`).
    pub origins: Vec<String>,
    pub methods: String,
    pub headers: Option<String>,
    pub expose: Option<String>,
    pub credentials: bool,
    pub max_age: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Zstd,
    Brotli,
    Gzip,
}

impl Encoding {
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Compress {
    /// In the proxy's order of preference.
    pub encodings: Vec<Encoding>,
    pub min_size: u64,
    /// Content types (`text/*` for a whole top-level type), lower case.
    pub types: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub max_bytes: u64,
    pub max_object_bytes: u64,
}

/// Compressed unless the filter says otherwise.
pub const COMPRESSED_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/wasm",
    "application/x-javascript",
    "application/ld+json",
    "application/manifest+json",
    "application/vnd.api+json",
    "image/svg+xml",
    "font/ttf",
    "font/otf",
];

/// The settings of each kind (besides `name` and `kind`).
const SETTINGS: &[(&str, &[&str])] = &[
    (
        "basic_auth",
        &["realm", "users", "users_file", "forward_credentials"],
    ),
    (
        "api_key",
        &[
            "realm",
            "keys",
            "keys_file",
            "header",
            "query",
            "forward_credentials",
        ],
    ),
    (
        "jwt",
        &[
            "realm",
            "algorithm",
            "secret",
            "secret_file",
            "public_key",
            "public_key_file",
            "jwks_file",
            "issuer",
            "audience",
            "clock_skew",
            "claims_to_headers",
            "forward_credentials",
        ],
    ),
    ("ip", &["allow", "deny"]),
    ("rate_limit", &["rate", "burst", "key", "max_keys"]),
    (
        "headers",
        &[
            "request_set",
            "request_add",
            "request_remove",
            "response_set",
            "response_add",
            "response_remove",
        ],
    ),
    ("request_id", &["header", "trust_from", "echo"]),
    ("compress", &["encodings", "min_size", "types"]),
    ("cache", &["max_bytes", "max_object_bytes"]),
    (
        "cors",
        &[
            "allow_origins",
            "allow_methods",
            "allow_headers",
            "expose_headers",
            "allow_credentials",
            "max_age",
        ],
    ),
];

/// The settings written in `f`, with their places.
fn written(f: &RawFilter) -> Vec<(&'static str, std::ops::Range<usize>)> {
    macro_rules! present {
        ($($field:ident),*) => {{
            let mut out = Vec::new();
            $( if let Some(v) = &f.$field { out.push((stringify!($field), v.span())); } )*
            out
        }};
    }
    present!(
        realm,
        users,
        users_file,
        keys,
        keys_file,
        header,
        query,
        algorithm,
        secret,
        secret_file,
        public_key,
        public_key_file,
        jwks_file,
        issuer,
        audience,
        clock_skew,
        claims_to_headers,
        forward_credentials,
        allow,
        deny,
        rate,
        burst,
        key,
        max_keys,
        request_set,
        request_add,
        request_remove,
        response_set,
        response_add,
        response_remove,
        trust_from,
        echo,
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        allow_credentials,
        max_age,
        encodings,
        min_size,
        types,
        max_bytes,
        max_object_bytes,
        settings
    )
}

/// Checks a custom kind's settings: its factory, run on them.
pub type CustomCheck = Box<dyn Fn(&serde_json::Value) -> Result<(), String> + Send + Sync>;

static CUSTOM: std::sync::Mutex<Vec<(String, std::sync::Arc<CustomCheck>)>> =
    std::sync::Mutex::new(Vec::new());

/// Makes `kind` a filter kind configs may name (`filter::register` calls
/// this): its definitions take one setting, `settings`, which `check`
/// validates. A built-in kind's name cannot be taken.
pub fn register_custom_kind(kind: &str, check: CustomCheck) -> Result<(), String> {
    if SETTINGS.iter().any(|(k, _)| *k == kind) {
        return Err(format!("{kind:?} is a built-in filter kind"));
    }
    let mut custom = CUSTOM.lock().unwrap_or_else(|p| p.into_inner());
    custom.retain(|(k, _)| k != kind);
    custom.push((kind.to_owned(), std::sync::Arc::new(check)));
    Ok(())
}

fn custom_check(kind: &str) -> Option<std::sync::Arc<CustomCheck>> {
    let custom = CUSTOM.lock().unwrap_or_else(|p| p.into_inner());
    custom
        .iter()
        .find(|(k, _)| k == kind)
        .map(|(_, c)| c.clone())
}

impl Ctx<'_> {
    /// The `[[filters]]` definitions, in file order.
    pub(super) fn filters(&mut self, raw: &[S<RawFilter>]) -> Vec<FilterConfig> {
        let mut out: Vec<FilterConfig> = Vec::new();
        for (i, rf) in raw.iter().enumerate() {
            let field = |f: &str| format!("filters[{i}].{f}");
            let f = rf.get_ref();
            let name = self.string(&f.name, &field("name")).unwrap_or_default();
            self.filter_names.push(name.clone());
            if name.is_empty() {
                self.err(&f.name.span(), &field("name"), "must not be empty");
            } else if out.iter().any(|o| o.name == name) {
                let message = format!("duplicate filter name {name:?}");
                self.err(&f.name.span(), &field("name"), &message);
            }
            let Some(kind) = self.string(&f.kind, &field("kind")) else {
                continue;
            };
            if let Some(check) = custom_check(&kind) {
                if let Some(kind) = self.custom(f, &field, kind, &check) {
                    out.push(FilterConfig { name, kind });
                }
                continue;
            }
            let Some((_, allowed)) = SETTINGS.iter().find(|(k, _)| *k == kind) else {
                let kinds: Vec<&str> = SETTINGS.iter().map(|(k, _)| *k).collect();
                let message = format!("unknown filter kind {kind:?} (one of {})", kinds.join(", "));
                self.err(&f.kind.span(), &field("kind"), &message);
                continue;
            };
            let mut stray = false;
            for (setting, span) in written(f) {
                if !allowed.contains(&setting) {
                    let message = format!("not a setting of kind {kind:?}");
                    self.err(&span, &field(setting), &message);
                    stray = true;
                }
            }
            if stray {
                continue;
            }
            let kind = match kind.as_str() {
                "basic_auth" => self.basic_auth(f, &field).map(FilterKind::BasicAuth),
                "api_key" => self.api_key(f, &field).map(FilterKind::ApiKey),
                "jwt" => self.jwt(f, &field).map(FilterKind::Jwt),
                "ip" => Some(FilterKind::Ip(IpRules {
                    allow: f
                        .allow
                        .as_ref()
                        .map(|l| self.cidrs(l, &field("allow")))
                        .unwrap_or_default(),
                    deny: f
                        .deny
                        .as_ref()
                        .map(|l| self.cidrs(l, &field("deny")))
                        .unwrap_or_default(),
                })),
                "rate_limit" => self.rate_limit(f, &field).map(FilterKind::RateLimit),
                "headers" => Some(FilterKind::Headers(self.header_rules(f, &field))),
                "request_id" => self.request_id(f, &field).map(FilterKind::RequestId),
                "compress" => self.compress(f, &field).map(FilterKind::Compress),
                "cache" => {
                    let max_bytes = match &f.max_bytes {
                        Some(v) => self.size(v, &field("max_bytes")),
                        None => Some(64 << 20),
                    };
                    let max_object_bytes = match &f.max_object_bytes {
                        Some(v) => self.size(v, &field("max_object_bytes")),
                        None => Some(1 << 20),
                    };
                    match (max_bytes, max_object_bytes) {
                        (Some(max_bytes), Some(max_object_bytes))
                            if max_object_bytes > max_bytes =>
                        {
                            let span = f
                                .max_object_bytes
                                .as_ref()
                                .map_or(f.kind.span(), |v| v.span());
                            self.err(&span, &field("max_object_bytes"), "larger than max_bytes");
                            None
                        }
                        (Some(max_bytes), Some(max_object_bytes)) => {
                            Some(FilterKind::Cache(CacheConfig {
                                max_bytes,
                                max_object_bytes,
                            }))
                        }
                        _ => None,
                    }
                }
                _ => self.cors(f, &field).map(FilterKind::Cors),
            };
            if let Some(kind) = kind {
                out.push(FilterConfig { name, kind });
            }
        }
        out
    }

    /// A custom kind's definition: only `settings`, checked by its factory.
    fn custom(
        &mut self,
        f: &RawFilter,
        field: &dyn Fn(&str) -> String,
        kind: String,
        check: &CustomCheck,
    ) -> Option<FilterKind> {
        let mut stray = false;
        for (setting, span) in written(f) {
            if setting != "settings" {
                let message = format!("not a setting of kind {kind:?} (it takes `settings`)");
                self.err(&span, &field(setting), &message);
                stray = true;
            }
        }
        let settings = f
            .settings
            .as_ref()
            .map_or(serde_json::Value::Null, |s| s.get_ref().clone());
        if let Err(m) = check(&settings) {
            let span = f.settings.as_ref().map_or(f.kind.span(), |s| s.span());
            self.err(&span, &field("settings"), &m);
            return None;
        }
        (!stray).then_some(FilterKind::Custom { kind, settings })
    }

    pub(super) fn header_name(&mut self, v: &S<String>, field: &str) -> Option<HeaderName> {
        let s = self.string(v, field)?;
        let name = HeaderName::from_bytes(s.as_bytes()).ok();
        if name.is_none() {
            self.err(&v.span(), field, &format!("{s:?} is not a header name"));
        }
        name
    }

    pub(super) fn strings(&mut self, v: &S<Vec<S<String>>>, field: &str) -> Vec<String> {
        v.get_ref()
            .iter()
            .filter_map(|s| self.string(s, field))
            .collect()
    }

    /// A file's text, read at validation (and so at every reload).
    pub(super) fn file_text(&mut self, v: &S<String>, field: &str) -> Option<(PathBuf, String)> {
        let path = PathBuf::from(self.string(v, field)?);
        match std::fs::read_to_string(&path) {
            Ok(text) => Some((path, text)),
            Err(e) => {
                let message = format!("cannot read {}: {e}", path.display());
                self.err(&v.span(), field, &message);
                None
            }
        }
    }

    fn rate_limit(&mut self, f: &RawFilter, field: &dyn Fn(&str) -> String) -> Option<RateLimit> {
        let Some(rate) = &f.rate else {
            self.err(
                &f.kind.span(),
                &field("rate"),
                "rate_limit needs a rate, e.g. \"100/s\"",
            );
            return None;
        };
        let text = self.string(rate, &field("rate"))?;
        let parsed = text.split_once('/').and_then(|(n, w)| {
            let n: u32 = n.trim().parse().ok()?;
            let secs = match w.trim() {
                "s" | "second" => 1,
                "m" | "minute" => 60,
                "h" | "hour" => 3600,
                _ => return None,
            };
            Some((n, std::time::Duration::from_secs(secs)))
        });
        let (count, window) = match parsed {
            Some((n, w)) if n > 0 => (n, w),
            Some(_) => {
                self.err(&rate.span(), &field("rate"), "must be more than zero");
                return None;
            }
            None => {
                let message =
                    format!("{text:?} is not a rate like \"100/s\", \"600/m\" or \"1000/h\"");
                self.err(&rate.span(), &field("rate"), &message);
                return None;
            }
        };
        let burst = match &f.burst {
            Some(b) => self.count(b, &field("burst"), 1_000_000)? as u32,
            None => count.min(1_000_000),
        };
        let key = match &f.key {
            None => LimitKey::ClientIp,
            Some(k) => {
                let text = self.string(k, &field("key"))?;
                match text.as_str() {
                    "client_ip" => LimitKey::ClientIp,
                    "api_key" => LimitKey::ApiKey,
                    "user" => LimitKey::User,
                    "route" => LimitKey::Route,
                    t => match (t.strip_prefix("header:"), t.strip_prefix("claim:")) {
                        (Some(h), _) => match HeaderName::from_bytes(h.as_bytes()) {
                            Ok(h) => LimitKey::Header(h),
                            Err(_) => {
                                self.err(
                                    &k.span(),
                                    &field("key"),
                                    &format!("{h:?} is not a header name"),
                                );
                                return None;
                            }
                        },
                        (_, Some(c)) if !c.is_empty() => LimitKey::Claim(c.to_owned()),
                        _ => {
                            let message = format!(
                                "{t:?} is not client_ip, header:NAME, claim:NAME, api_key, user or route"
                            );
                            self.err(&k.span(), &field("key"), &message);
                            return None;
                        }
                    },
                }
            }
        };
        let max_keys = match &f.max_keys {
            Some(m) => self.count(m, &field("max_keys"), 100_000_000)? as usize,
            None => 100_000,
        };
        Some(RateLimit {
            count,
            window,
            burst,
            key,
            max_keys,
        })
    }

    fn header_rules(&mut self, f: &RawFilter, field: &dyn Fn(&str) -> String) -> HeaderRules {
        let map = |ctx: &mut Self,
                   v: &Option<S<BTreeMap<String, S<String>>>>,
                   at: &str|
         -> Vec<(HeaderName, Template)> {
            let Some(v) = v else { return Vec::new() };
            let mut out = Vec::new();
            for (name, value) in v.get_ref() {
                let at = field(&format!("{at}.{name}"));
                let Ok(h) = HeaderName::from_bytes(name.as_bytes()) else {
                    ctx.err(&v.span(), &at, &format!("{name:?} is not a header name"));
                    continue;
                };
                let Some(text) = ctx.string(value, &at) else {
                    continue;
                };
                match template(&text) {
                    Ok(t) => out.push((h, t)),
                    Err(m) => ctx.err(&value.span(), &at, &m),
                }
            }
            out
        };
        let request_set = map(self, &f.request_set, "request_set");
        let request_add = map(self, &f.request_add, "request_add");
        let response_set = map(self, &f.response_set, "response_set");
        let response_add = map(self, &f.response_add, "response_add");
        let names = |ctx: &mut Self, v: &Option<S<Vec<S<String>>>>, at: &str| {
            let Some(v) = v else { return Vec::new() };
            v.get_ref()
                .iter()
                .filter_map(|s| ctx.header_name(s, &field(at)))
                .collect()
        };
        HeaderRules {
            request_set,
            request_add,
            request_remove: names(self, &f.request_remove, "request_remove"),
            response_set,
            response_add,
            response_remove: names(self, &f.response_remove, "response_remove"),
        }
    }

    fn request_id(&mut self, f: &RawFilter, field: &dyn Fn(&str) -> String) -> Option<RequestId> {
        let header = match &f.header {
            Some(h) => self.header_name(h, &field("header"))?,
            None => HeaderName::from_static("x-request-id"),
        };
        Some(RequestId {
            header,
            trust_from: f
                .trust_from
                .as_ref()
                .map(|l| self.cidrs(l, &field("trust_from"))),
            echo: f.echo.as_ref().is_none_or(|e| *e.get_ref()),
        })
    }

    fn compress(&mut self, f: &RawFilter, field: &dyn Fn(&str) -> String) -> Option<Compress> {
        let encodings = match &f.encodings {
            None => vec![Encoding::Zstd, Encoding::Brotli, Encoding::Gzip],
            Some(list) => {
                let mut out = Vec::new();
                for v in list.get_ref() {
                    let Some(t) = self.string(v, &field("encodings")) else {
                        continue;
                    };
                    match t.as_str() {
                        "zstd" => out.push(Encoding::Zstd),
                        "br" => out.push(Encoding::Brotli),
                        "gzip" => out.push(Encoding::Gzip),
                        _ => {
                            let message = format!("{t:?} is not zstd, br or gzip");
                            self.err(&v.span(), &field("encodings"), &message);
                        }
                    }
                }
                if out.is_empty() {
                    self.err(
                        &list.span(),
                        &field("encodings"),
                        "name at least one encoding",
                    );
                    return None;
                }
                out
            }
        };
        let min_size = match &f.min_size {
            Some(v) => self.size(v, &field("min_size"))?,
            None => 1024,
        };
        let types = match &f.types {
            Some(list) => self
                .strings(list, &field("types"))
                .into_iter()
                .map(|t| t.to_ascii_lowercase())
                .collect(),
            None => COMPRESSED_TYPES.iter().map(|t| (*t).to_owned()).collect(),
        };
        Some(Compress {
            encodings,
            min_size,
            types,
        })
    }

    fn cors(&mut self, f: &RawFilter, field: &dyn Fn(&str) -> String) -> Option<Cors> {
        let Some(origins) = &f.allow_origins else {
            self.err(
                &f.kind.span(),
                &field("allow_origins"),
                "cors needs allow_origins (\"*\" for any)",
            );
            return None;
        };
        let mut list = self.strings(origins, &field("allow_origins"));
        let any = list.iter().any(|o| o == "*");
        let credentials = f.allow_credentials.as_ref().is_some_and(|c| *c.get_ref());
        if any && credentials {
            self.err(
                &origins.span(),
                &field("allow_origins"),
                "\"*\" cannot go with allow_credentials: list the origins",
            );
            return None;
        }
        if any {
            list.clear();
        }
        let joined = |ctx: &mut Self, v: &Option<S<Vec<S<String>>>>, at: &str| {
            v.as_ref()
                .map(|l| ctx.strings(l, &field(at)).join(", "))
                .filter(|s| !s.is_empty())
        };
        Some(Cors {
            origins: list,
            methods: joined(self, &f.allow_methods, "allow_methods")
                .unwrap_or_else(|| "GET, HEAD, POST".into()),
            headers: joined(self, &f.allow_headers, "allow_headers"),
            expose: joined(self, &f.expose_headers, "expose_headers"),
            credentials,
            max_age: match &f.max_age {
                Some(v) => self
                    .duration(v, &field("max_age"), false)
                    .flatten()
                    .map(|d| d.as_secs()),
                None => None,
            },
        })
    }

    /// A route's `filters`: indices into `filters`. Where the route is not
    /// HTTP, only IP rules.
    pub(super) fn route_filters(
        &mut self,
        list: Option<&S<Vec<S<String>>>>,
        filters: &[FilterConfig],
        on_http: bool,
        field: &str,
    ) -> Vec<usize> {
        let Some(list) = list else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for v in list.get_ref() {
            let Some(name) = self.string(v, field) else {
                continue;
            };
            match filters.iter().position(|f| f.name == name) {
                Some(i) if !on_http && !filters[i].kind.works_at_l4() => self.err(
                    &v.span(),
                    field,
                    &format!("filter {name:?} needs an HTTP route (match.listener naming an HTTP listener, or only HTTP listeners): on TCP and TLS connections only ip filters and rate_limit by client_ip or route work"),
                ),
                Some(i) => out.push(i),
                None if self.filter_names.contains(&name) => {}
                None => self.err(&v.span(), field, &format!("no filter is named {name:?}")),
            }
        }
        out
    }
}

/// A header value template.
fn template(text: &str) -> Result<Template, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("unclosed {{ in {text:?}"));
        };
        let var = &rest[open + 1..open + close];
        parts.push(match var {
            "client_ip" => Part::ClientIp,
            "route" => Part::Route,
            "request_id" => Part::RequestId,
            "sni" => Part::Sni,
            v => match v.strip_prefix("claim.") {
                Some(c) if !c.is_empty() => Part::Claim(c.to_owned()),
                _ => {
                    return Err(format!(
                        "unknown variable {{{var}}}: {{client_ip}}, {{route}}, {{request_id}}, {{sni}} or {{claim.NAME}}"
                    ));
                }
            },
        });
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    if let Some(Part::Text(t)) = parts
        .iter()
        .find(|p| matches!(p, Part::Text(t) if http::HeaderValue::from_str(t).is_err()))
    {
        return Err(format!("{t:?} cannot be in a header value"));
    }
    Ok(Template(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_their_variables() {
        let t = template("r={route} c={claim.sub}").unwrap();
        assert_eq!(t.0.len(), 4);
        assert!(template("{nope}").is_err());
        assert!(template("{route").is_err());
    }
}
