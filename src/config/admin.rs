//! Who may use the admin API (`admin.token_file` or `admin.token_env`,
//! `admin.public_reads`) and where the service registry keeps its
//! registrations (`[registry]`).

use std::path::PathBuf;

use super::Ctx;
use super::raw::{RawAdmin, RawRegistry, RawTracing};

/// The most registered instances by default, over every service.
pub const DEFAULT_MAX_INSTANCES: u64 = 100_000;

/// The admin API's write token. Its value is never printed, logged or
/// shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub source: TokenSource,
    /// SHA-256 of the token: what a presented token's digest is compared
    /// with, in constant time (and without revealing the length).
    digest: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    File(PathBuf),
    Env(String),
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken({:?}, (redacted))", self.source)
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl AdminToken {
    pub fn new(source: TokenSource, value: &str) -> AdminToken {
        AdminToken {
            source,
            digest: sha256(value.as_bytes()),
        }
    }

    /// Whether `presented` is the token (constant time).
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        sha256(presented).ct_eq(&self.digest).into()
    }
}

/// TLS on the admin listener (`admin.tls`), read at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates required, signed by these CAs (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Who may use the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAccess {
    /// With a token, every write (any method but GET and HEAD) needs
    /// `Authorization: Bearer <token>`; without one, writes are open (to
    /// whoever can reach the listener: loopback by default).
    pub token: Option<AdminToken>,
    /// Whether reads need the token too (false: they do, when there is one).
    pub public_reads: bool,
}

impl Default for AdminAccess {
    fn default() -> Self {
        AdminAccess {
            token: None,
            public_reads: true,
        }
    }
}

/// The service registry's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Where registrations are kept across restarts (one file per
    /// instance, each written atomically); none: in memory only.
    pub data_dir: Option<PathBuf>,
    /// Registered instances at most, over every service.
    pub max_instances: usize,
}

/// Tracing (`[tracing]`): its presence turns on `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingConfig {
    /// `http://host:port/v1/traces`; none: propagation only.
    pub otlp_endpoint: Option<String>,
    /// 0 to 100.
    pub sample_percent: u8,
    pub service_name: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            data_dir: None,
            max_instances: DEFAULT_MAX_INSTANCES as usize,
        }
    }
}

impl Ctx<'_> {
    pub(super) fn admin_tls(&mut self, raw: Option<&RawAdmin>) -> Option<AdminTls> {
        let t = raw?.tls.as_ref()?;
        let mut path = |v: &super::raw::S<String>, field: &str| -> Option<PathBuf> {
            let p = PathBuf::from(self.string(v, field)?);
            if !p.is_file() {
                self.err(
                    &v.span(),
                    field,
                    &format!("{} is not a readable file", p.display()),
                );
                return None;
            }
            Some(p)
        };
        let cert = path(&t.cert, "admin.tls.cert");
        let key = path(&t.key, "admin.tls.key");
        let client_ca = match &t.client_ca {
            Some(c) => Some(path(c, "admin.tls.client_ca")?),
            None => None,
        };
        Some(AdminTls {
            cert: cert?,
            key: key?,
            client_ca,
        })
    }

    pub(super) fn admin_access(&mut self, raw: Option<&RawAdmin>) -> AdminAccess {
        let Some(a) = raw else {
            return AdminAccess::default();
        };
        let public_reads = a.public_reads.as_ref().is_none_or(|p| *p.get_ref());
        let token = match (&a.token_file, &a.token_env) {
            (Some(f), Some(_)) => {
                self.err(
                    &f.span(),
                    "admin.token_file",
                    "give the token by token_file or token_env, not both",
                );
                None
            }
            (Some(f), None) => self
                .file_text(f, "admin.token_file")
                .and_then(|(path, text)| {
                    self.token_value(
                        &f.span(),
                        "admin.token_file",
                        TokenSource::File(path),
                        &text,
                    )
                }),
            (None, Some(e)) => {
                let name = self.string(e, "admin.token_env");
                match name {
                    Some(name) => match (self.env)(&name) {
                        Some(value) => self.token_value(
                            &e.span(),
                            "admin.token_env",
                            TokenSource::Env(name),
                            &value,
                        ),
                        None => {
                            self.err(
                                &e.span(),
                                "admin.token_env",
                                &format!("the environment variable {name} is not set"),
                            );
                            None
                        }
                    },
                    None => None,
                }
            }
            (None, None) => None,
        };
        if !public_reads && token.is_none() {
            if let Some(p) = &a.public_reads {
                self.err(
                    &p.span(),
                    "admin.public_reads",
                    "public_reads = false needs a token (token_file or token_env)",
                );
            }
        }
        AdminAccess {
            token,
            public_reads,
        }
    }

    fn token_value(
        &mut self,
        span: &std::ops::Range<usize>,
        field: &str,
        source: TokenSource,
        text: &str,
    ) -> Option<AdminToken> {
        let value = text.trim();
        if value.len() < 16 {
            self.err(span, field, "the token must be at least 16 characters");
            return None;
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            self.err(
                span,
                field,
                "the token must be printable ASCII without spaces",
            );
            return None;
        }
        Some(AdminToken::new(source, value))
    }

    pub(super) fn tracing(&mut self, raw: Option<&RawTracing>) -> Option<TracingConfig> {
        let t = raw?;
        let otlp_endpoint = t.otlp_endpoint.as_ref().and_then(|e| {
            let url = self.string(e, "tracing.otlp_endpoint")?;
            let ok = url
                .strip_prefix("http://")
                .and_then(|rest| rest.split('/').next())
                .is_some_and(|authority| !authority.is_empty());
            if !ok {
                self.err(
                    &e.span(),
                    "tracing.otlp_endpoint",
                    &format!("{url:?} is not an http:// URL of an OTLP/HTTP collector (https is not supported: run the collector on the host or a private network)"),
                );
                return None;
            }
            let url = url.trim_end_matches('/');
            Some(if url.ends_with("/v1/traces") {
                url.to_owned()
            } else {
                format!("{url}/v1/traces")
            })
        });
        let sample_percent = match &t.sample_percent {
            None => 100,
            Some(v) => {
                let text = self.scalar_text(v, "tracing.sample_percent")?;
                match text.trim().trim_end_matches('%').parse::<u8>() {
                    Ok(p) if p <= 100 => p,
                    _ => {
                        self.err(
                            &v.span(),
                            "tracing.sample_percent",
                            &format!("{text:?} is not a percentage from 0 to 100"),
                        );
                        return None;
                    }
                }
            }
        };
        let service_name = t
            .service_name
            .as_ref()
            .and_then(|s| self.string(s, "tracing.service_name"))
            .unwrap_or_else(|| "gatehouse".to_owned());
        Some(TracingConfig {
            otlp_endpoint,
            sample_percent,
            service_name,
        })
    }

    pub(super) fn registry(&mut self, raw: Option<&RawRegistry>) -> RegistryConfig {
        let Some(r) = raw else {
            return RegistryConfig::default();
        };
        let data_dir = r
            .data_dir
            .as_ref()
            .and_then(|d| self.string(d, "registry.data_dir"))
            .map(PathBuf::from);
        let max_instances = r
            .max_instances
            .as_ref()
            .and_then(|m| self.count(m, "registry.max_instances", 10_000_000))
            .unwrap_or(DEFAULT_MAX_INSTANCES) as usize;
        RegistryConfig {
            data_dir,
            max_instances,
        }
    }
}
