//! The config file as written: serde structs that mirror the TOML, every leaf
//! value wrapped in `Spanned` so that validation can name the line it came from.
//! Nothing here is trusted; `super::validate` turns it into the typed model.

use std::borrow::Cow;
use std::ops::Range;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A value that may be written as a number or as a string (so that
/// `"${WORKERS}"` can stand where a number is expected).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Str(String),
}

/// A value and the bytes of the file it was written at. (toml's `Spanned`,
/// wrapped so that the config's JSON Schema describes the value alone.)
#[derive(Debug, Clone)]
pub struct S<T>(Spanned<T>);

impl<T> S<T> {
    pub fn get_ref(&self) -> &T {
        self.0.get_ref()
    }

    pub fn span(&self) -> Range<usize> {
        self.0.span()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for S<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Spanned::deserialize(d).map(S)
    }
}

impl<T: JsonSchema> JsonSchema for S<T> {
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }

    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// A Gatehouse config file (gatehouse.toml). Every string may use
/// `${VAR}` and `${VAR:-default}`; numbers may be written as such strings
/// too. The settings are described in docs/config.md.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Gatehouse configuration")]
pub struct RawConfig {
    pub workers: Option<S<Scalar>>,
    /// This Gatehouse's name on the host: its nftables table (kernel
    /// routes) is `gatehouse_<instance>`. Default: made from the config
    /// file's path.
    pub instance: Option<S<String>>,
    pub admin: Option<RawAdmin>,
    pub registry: Option<RawRegistry>,
    pub tracing: Option<RawTracing>,
    pub log: Option<RawLog>,
    pub timeouts: Option<RawTimeouts>,
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub listeners: Vec<S<RawListener>>,
    #[serde(default)]
    pub routes: Vec<S<RawRoute>>,
    #[serde(default)]
    pub clusters: Vec<S<RawCluster>>,
    /// Filter definitions, referenced by name from routes' `filters`.
    #[serde(default)]
    pub filters: Vec<S<RawFilter>>,
    #[serde(default)]
    pub certificates: Vec<S<RawCertificate>>,
    pub acme: Option<S<RawAcme>>,
    pub internal_ca: Option<S<RawInternalCa>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: S<String>,
    /// The endpoints; or none, with `service`.
    pub endpoints: Option<S<Vec<S<RawEndpoint>>>>,
    /// The registered service whose instances are the endpoints (instead
    /// of `endpoints`).
    pub service: Option<S<String>>,
    pub resolve_every: Option<S<Scalar>>,
    /// "round_robin" (default), "least_request", "peak_ewma" or "hash".
    pub balance: Option<S<String>>,
    /// With `balance = "hash"`: "client_ip", "path", "header:NAME" or "cookie:NAME".
    pub hash_key: Option<S<String>>,
    /// When no endpoint is usable, use them all rather than answer 503.
    pub panic: Option<S<bool>>,
    /// Sticky sessions: the cookie (its name) that keeps a client on the
    /// endpoint it was first sent to.
    pub sticky_cookie: Option<S<String>>,
    /// Requests in flight to the cluster at most (circuit breaking).
    pub max_requests: Option<S<Scalar>>,
    /// Requests in flight to any one endpoint at most.
    pub max_requests_per_endpoint: Option<S<Scalar>>,
    pub health: Option<S<RawHealth>>,
    pub outlier: Option<S<RawOutlier>>,
    pub retries: Option<S<RawRetries>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// "http" (default) or "tcp".
    pub kind: Option<S<String>>,
    pub path: Option<S<String>>,
    pub method: Option<S<String>>,
    pub host: Option<S<String>>,
    pub headers: Option<S<std::collections::BTreeMap<String, S<String>>>>,
    /// Statuses that pass (default: 200 to 399).
    pub expect_status: Option<S<Vec<S<Scalar>>>>,
    pub body_contains: Option<S<String>>,
    pub interval: Option<S<Scalar>>,
    pub timeout: Option<S<Scalar>>,
    pub healthy_threshold: Option<S<Scalar>>,
    pub unhealthy_threshold: Option<S<Scalar>>,
    /// Probes over TLS: the handshake (kind "tcp") or HTTPS (kind "http").
    pub tls: Option<S<bool>>,
    /// With `tls`: the CA bundle the endpoints' certificates are verified with.
    pub ca: Option<S<String>>,
    /// With `tls`: the name sent and verified (default: the endpoint's host).
    pub server_name: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Failures in a row that eject an endpoint, or "off".
    pub consecutive_failures: Option<S<Scalar>>,
    pub base_ejection: Option<S<Scalar>>,
    pub max_ejection: Option<S<Scalar>>,
    pub max_ejected_percent: Option<S<Scalar>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    /// Attempts in all (1: no retry).
    pub attempts: Option<S<Scalar>>,
    /// What is retried besides connect failures: "reset", "timeout", "status".
    pub on: Option<S<Vec<S<String>>>>,
    /// With "status" in `on`: the statuses retried.
    pub statuses: Option<S<Vec<S<Scalar>>>>,
    /// Retries in flight at most this percent of the requests in flight…
    pub budget_percent: Option<S<Scalar>>,
    /// …or this many, whichever is more.
    pub min_concurrent: Option<S<Scalar>>,
    /// The first retry waits up to this (full jitter), doubling each time.
    pub backoff: Option<S<Scalar>>,
    /// Bodies up to this size are kept to be sent again ("64KiB"; default none).
    pub body_limit: Option<S<Scalar>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub address: S<String>,
    pub weight: Option<S<Scalar>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInternalCa {
    pub storage: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub hosts: Option<S<Vec<S<String>>>>,
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
    pub auto: Option<S<bool>>,
    pub issuer: Option<S<String>>,
    pub default: Option<S<bool>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: S<String>,
    pub ca: Option<S<String>>,
    pub storage: S<String>,
    pub contact: Option<S<Vec<S<String>>>>,
    pub challenge: Option<S<String>>,
    pub renew_before: Option<S<Scalar>>,
    pub retry_min: Option<S<Scalar>>,
    pub retry_max: Option<S<Scalar>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTlsListener {
    pub min_version: Option<S<String>>,
    pub handshake_timeout: Option<S<Scalar>>,
    pub alpn: Option<S<Vec<S<String>>>>,
    pub client_ca: Option<S<String>>,
    pub client_auth: Option<S<String>>,
    pub session_resumption: Option<S<bool>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub tls: Option<S<bool>>,
    pub ca: Option<S<String>>,
    pub server_name: Option<S<String>>,
    pub client_cert: Option<S<String>>,
    pub client_key: Option<S<String>>,
    pub protocol: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: Option<S<String>>,
    pub enabled: Option<S<bool>>,
    /// A file holding the token every admin write needs (`Authorization:
    /// Bearer …`); at least 16 characters.
    pub token_file: Option<S<String>>,
    /// The environment variable holding that token (instead of a file).
    pub token_env: Option<S<String>>,
    /// Whether reads (GET) are open without the token (default true).
    pub public_reads: Option<S<bool>>,
    /// TLS on the admin listener; with `client_ca`, mutual TLS.
    pub tls: Option<RawAdminTls>,
}

/// The admin listener's TLS: its certificate and key, and the CA whose
/// client certificates it requires (mTLS).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdminTls {
    /// PEM certificate chain.
    pub cert: S<String>,
    /// PEM private key.
    pub key: S<String>,
    /// PEM CA certificates: every client must present a certificate they
    /// signed (none: no client certificate is asked for).
    pub client_ca: Option<S<String>>,
}

/// The service registry: instances registered over the admin API.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    /// Where registrations are kept across restarts (none: memory only).
    pub data_dir: Option<S<String>>,
    /// Registered instances at most, over every service (default 100000).
    pub max_instances: Option<S<Scalar>>,
}

/// Tracing: W3C `traceparent` on every HTTP request (continued, or
/// generated when absent), and spans exported over OTLP when an endpoint
/// is set.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// The OTLP/HTTP collector, `http://host:4318` (spans go to
    /// `/v1/traces` under it); none: propagation only.
    pub otlp_endpoint: Option<S<String>>,
    /// Requests that start a trace here sampled, in percent (default 100;
    /// a request that carries a `traceparent` keeps its decision).
    pub sample_percent: Option<S<Scalar>>,
    /// The spans' `service.name` (default "gatehouse").
    pub service_name: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<S<String>>,
    pub format: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<S<Scalar>>,
    pub proxy_header: Option<S<Scalar>>,
    pub idle: Option<S<Scalar>>,
    pub max_lifetime: Option<S<Scalar>>,
    pub shutdown_drain: Option<S<Scalar>>,
    pub route_drain: Option<S<Scalar>>,
    pub tls_handshake: Option<S<Scalar>>,
    pub client_send: Option<S<Scalar>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<S<Scalar>>,
    pub max_connections_per_ip: Option<S<Scalar>>,
    pub splice_pipes: Option<S<Scalar>>,
    /// Above this resident memory, new connections are refused (`overload`).
    pub memory_budget: Option<S<Scalar>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: S<String>,
    /// "IP:PORT", or "IP:FIRST-LAST" for a port range (kernel routes only).
    pub bind: S<String>,
    pub backlog: Option<S<Scalar>>,
    pub protocol: Option<S<String>>,
    pub proxy_protocol: Option<RawAcceptProxy>,
    pub http: Option<RawHttpListener>,
    pub tls: Option<S<RawTlsListener>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHttpListener {
    pub max_header_bytes: Option<S<Scalar>>,
    pub max_uri_bytes: Option<S<Scalar>>,
    pub h2c: Option<S<bool>>,
    pub max_concurrent_streams: Option<S<Scalar>>,
    pub h2_stream_window: Option<S<Scalar>>,
    pub h2_connection_window: Option<S<Scalar>>,
    pub max_headers: Option<S<Scalar>>,
    pub header_read_timeout: Option<S<Scalar>>,
    pub keepalive_timeout: Option<S<Scalar>>,
    pub send_timeout: Option<S<Scalar>>,
    pub max_requests_per_connection: Option<S<Scalar>>,
    pub trusted_proxies: Option<S<Vec<S<String>>>>,
    pub forwarded: Option<S<bool>>,
    pub via: Option<S<bool>>,
    pub server_header: Option<S<String>>,
    pub access_log: Option<S<bool>>,
    /// Request headers written in each access-log line (values of
    /// sensitive ones as "(redacted)").
    pub access_log_headers: Option<S<Vec<S<String>>>>,
    /// Write the query string in the access log (sensitive parameters'
    /// values as "(redacted)"); default true.
    pub access_log_query: Option<S<bool>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAcceptProxy {
    pub trusted: S<Vec<S<String>>>,
    pub required: Option<S<bool>>,
    pub timeout: Option<S<Scalar>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: S<String>,
    #[serde(rename = "match", default)]
    pub matcher: Option<RawMatch>,
    pub action: S<RawAction>,
    pub policy: Option<RawPolicy>,
    pub tls: Option<S<String>>,
    pub upstream: Option<S<RawUpstream>>,
    /// Names of `[[filters]]`, run in this order (before the upstream in
    /// this order, after it in reverse).
    pub filters: Option<S<Vec<S<String>>>>,
    /// A copy of (some of) the route's requests sent to a shadow cluster.
    pub mirror: Option<S<RawMirror>>,
    /// Headers and query parameters never written to logs (on top of the
    /// built-in sensitive ones).
    pub log_redact: Option<S<RawLogRedact>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    pub cluster: S<String>,
    /// Share of requests mirrored, 1 to 100 (default 100).
    pub percent: Option<S<Scalar>>,
    /// Requests with a larger body are not mirrored (default "64KiB").
    pub max_body: Option<S<Scalar>>,
    /// The shadow exchange's deadline (default "5s").
    pub timeout: Option<S<Scalar>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLogRedact {
    pub headers: Option<S<Vec<S<String>>>>,
    pub query: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub listener: Option<S<String>>,
    pub port: Option<S<Scalar>>,
    pub client_cidrs: Option<S<Vec<S<String>>>>,
    pub hosts: Option<S<Vec<S<String>>>>,
    pub path: Option<S<String>>,
    pub path_prefix: Option<S<String>>,
    pub path_pattern: Option<S<String>>,
    pub methods: Option<S<Vec<S<String>>>>,
    pub headers: Option<S<std::collections::BTreeMap<String, S<String>>>>,
    pub headers_present: Option<S<Vec<S<String>>>>,
    pub sni: Option<S<Vec<S<String>>>>,
    pub client_identities: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    pub forward: Option<S<Vec<S<String>>>>,
    pub cluster: Option<S<String>>,
    /// Requests (or L4 connections) shared by weight among named clusters:
    /// `[{ cluster = "stable", weight = 95 }, { cluster = "canary", weight = 5 }]`.
    pub split: Option<S<Vec<S<RawSplit>>>>,
    pub send_proxy_protocol: Option<S<String>>,
    pub pass_tlvs: Option<S<bool>>,
    pub redirect_https: Option<S<bool>>,
    pub redirect_port: Option<S<Scalar>>,
    /// "user" (default), "kernel" (nftables forwarding, or the user-space
    /// path with a warning where nftables cannot be used) or
    /// "kernel_strict" (nftables or no start).
    pub engine: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    pub cluster: S<String>,
    pub weight: Option<S<Scalar>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub connect_timeout: Option<S<Scalar>>,
    pub idle_timeout: Option<S<Scalar>>,
    pub max_lifetime: Option<S<Scalar>>,
    pub max_connections: Option<S<Scalar>>,
    pub max_body_size: Option<S<Scalar>>,
    pub allow_chunked_requests: Option<S<bool>>,
    pub allow_upgrade: Option<S<bool>>,
    pub response_header_timeout: Option<S<Scalar>>,
    pub upstream_body_idle_timeout: Option<S<Scalar>>,
    pub client_body_idle_timeout: Option<S<Scalar>>,
    pub request_timeout: Option<S<Scalar>>,
    pub pool_max_idle: Option<S<Scalar>>,
    pub pool_max_connections: Option<S<Scalar>>,
    pub pool_idle_timeout: Option<S<Scalar>>,
    pub pool_wait_timeout: Option<S<Scalar>>,
    pub allow_domain_fronting: Option<S<bool>>,
    pub pool_reuse_non_idempotent: Option<S<bool>>,
    pub pool_max_per_client: Option<S<Scalar>>,
}

/// A filter definition (`[[filters]]`): `kind` says which, and which of
/// the other settings apply (docs/filters.md).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    pub name: S<String>,
    /// "basic_auth", "api_key", "jwt", "ip", "rate_limit", "headers",
    /// "request_id" or "cors".
    pub kind: S<String>,
    // -- authentication (basic_auth, api_key, jwt)
    pub realm: Option<S<String>>,
    /// basic_auth: user name to password hash (argon2 PHC string or bcrypt).
    pub users: Option<S<std::collections::BTreeMap<String, S<String>>>>,
    /// basic_auth: a file of `user:hash` lines.
    pub users_file: Option<S<String>>,
    /// api_key: key name to `sha256:HEX` of the key.
    pub keys: Option<S<std::collections::BTreeMap<String, S<String>>>>,
    /// api_key: a file of `name sha256:HEX` lines.
    pub keys_file: Option<S<String>>,
    /// api_key: the header carrying the key (default `x-api-key`).
    pub header: Option<S<String>>,
    /// api_key: the query parameter carrying the key (instead of a header).
    pub query: Option<S<String>>,
    /// jwt: "HS256", "RS256", "ES256", "EdDSA", … (with `secret` or `public_key`).
    pub algorithm: Option<S<String>>,
    pub secret: Option<S<String>>,
    pub secret_file: Option<S<String>>,
    pub public_key: Option<S<String>>,
    pub public_key_file: Option<S<String>>,
    /// jwt: a JWKS file, read again when it changes.
    pub jwks_file: Option<S<String>>,
    pub issuer: Option<S<Vec<S<String>>>>,
    pub audience: Option<S<Vec<S<String>>>>,
    pub clock_skew: Option<S<Scalar>>,
    /// jwt: claim name to the request header it is forwarded in.
    pub claims_to_headers: Option<S<std::collections::BTreeMap<String, S<String>>>>,
    /// Keep the credentials in the request that goes upstream.
    pub forward_credentials: Option<S<bool>>,
    // -- ip
    pub allow: Option<S<Vec<S<String>>>>,
    pub deny: Option<S<Vec<S<String>>>>,
    // -- rate_limit
    /// "100/s", "600/m" or "1000/h".
    pub rate: Option<S<String>>,
    pub burst: Option<S<Scalar>>,
    /// "client_ip" (default), "header:NAME", "claim:NAME", "api_key",
    /// "user" or "route".
    pub key: Option<S<String>>,
    pub max_keys: Option<S<Scalar>>,
    // -- headers
    pub request_set: Option<S<std::collections::BTreeMap<String, S<String>>>>,
    pub request_add: Option<S<std::collections::BTreeMap<String, S<String>>>>,
    pub request_remove: Option<S<Vec<S<String>>>>,
    pub response_set: Option<S<std::collections::BTreeMap<String, S<String>>>>,
    pub response_add: Option<S<std::collections::BTreeMap<String, S<String>>>>,
    pub response_remove: Option<S<Vec<S<String>>>>,
    // -- request_id
    /// Peers whose request id is kept (default: every peer).
    pub trust_from: Option<S<Vec<S<String>>>>,
    /// Echo the id in the response (default true).
    pub echo: Option<S<bool>>,
    // -- cors
    pub allow_origins: Option<S<Vec<S<String>>>>,
    pub allow_methods: Option<S<Vec<S<String>>>>,
    pub allow_headers: Option<S<Vec<S<String>>>>,
    pub expose_headers: Option<S<Vec<S<String>>>>,
    pub allow_credentials: Option<S<bool>>,
    pub max_age: Option<S<Scalar>>,
    // -- compress
    /// "zstd", "br", "gzip", in the order the proxy prefers them.
    pub encodings: Option<S<Vec<S<String>>>>,
    /// Responses smaller than this (by Content-Length) are sent as they are.
    pub min_size: Option<S<Scalar>>,
    /// Content types compressed ("text/*" matches every text type).
    pub types: Option<S<Vec<S<String>>>>,
    // -- cache
    /// The cache's size cap (bodies and heads), e.g. "64MiB".
    pub max_bytes: Option<S<Scalar>>,
    /// Responses larger than this are not stored.
    pub max_object_bytes: Option<S<Scalar>>,
    // -- a kind registered by a program built on the library
    /// The settings of a custom kind, as its factory reads them.
    pub settings: Option<S<serde_json::Value>>,
}
