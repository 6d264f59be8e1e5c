//! TLS settings of the model: certificates (files or ACME), the `[acme]`
//! account, a listener's `[listeners.tls]`, a route's TLS mode and its
//! `[routes.upstream]` (TLS and protocol towards the targets), with their
//! validation. Files are only named here; `tls::certs` reads them.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawAcme, RawCertificate, RawInternalCa, RawTlsListener, RawUpstream, S};
use super::{Ctx, HostMatch};

#[derive(Debug, Clone, PartialEq)]
pub struct CertificateConfig {
    /// Names this certificate serves; empty: the names in the certificate.
    pub hosts: Vec<HostMatch>,
    pub source: CertSource,
    /// Served to clients whose SNI matches no certificate (or who send none).
    pub default: bool,
    /// Shown in metrics and logs: the first host, else the file.
    pub label: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CertSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Obtained and renewed through `[acme]`.
    Acme,
    /// Issued and renewed by the local CA (`issuer = "internal"`, kept under
    /// `[internal_ca] storage`).
    Internal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AcmeConfig {
    pub directory: String,
    /// CA bundle to trust for the directory's HTTPS (else the system's roots).
    pub ca: Option<PathBuf>,
    /// Account key and certificates live here.
    pub storage: PathBuf,
    pub contact: Vec<String>,
    pub challenge: AcmeChallenge,
    pub renew_before: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    Http01,
    TlsAlpn01,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V12,
    V13,
}

#[derive(Debug, Clone)]
pub struct TlsListener {
    pub min_version: TlsVersion,
    /// Reading the ClientHello and completing the handshake.
    pub handshake_timeout: Duration,
    /// ALPN protocols offered when terminating, most preferred first.
    pub alpn: Vec<Vec<u8>>,
    pub client_auth: Option<ClientAuth>,
    /// Let clients resume sessions (TLS 1.3 tickets backed by a bounded
    /// in-memory cache, TLS 1.2 session IDs) instead of a full handshake.
    pub session_resumption: bool,
}

/// Verifying client certificates (mTLS) on a listener.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    pub ca: PathBuf,
    /// Required: a client without a valid certificate fails the handshake.
    pub required: bool,
}

/// What a route on a `tls` listener does with the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Route by SNI and forward the TLS bytes untouched.
    Passthrough,
    /// End TLS here and forward the plaintext.
    Terminate,
    /// End TLS here and open a new, verified TLS connection to the target.
    TerminateAndReencrypt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2: over TLS (ALPN `h2`) when `tls`, else h2c with prior knowledge.
    Http2,
}

/// How a route talks to its targets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamConfig {
    pub tls: Option<UpstreamTls>,
    pub protocol: UpstreamProtocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    /// CA bundle to verify targets with; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// SNI and the name verified; `None`: the target's host.
    pub server_name: Option<String>,
    /// A client certificate and key to present (mTLS to the upstream).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// `a.example.com` or `*.example.com` (lower case); `None` if neither.
pub fn host_pattern(s: &str) -> Option<HostMatch> {
    let s = s.trim().to_ascii_lowercase();
    let valid = |name: &str| {
        !name.is_empty()
            && name
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    };
    match s.strip_prefix("*.") {
        Some(rest) if valid(rest) => Some(HostMatch::Wildcard(format!(".{rest}"))),
        None if valid(&s) => Some(HostMatch::Exact(s)),
        _ => None,
    }
}

impl Ctx<'_> {
    pub(super) fn hosts(&mut self, list: &S<Vec<S<String>>>, field: &str) -> Vec<HostMatch> {
        let mut out = Vec::new();
        for h in list.get_ref() {
            let Some(s) = self.string(h, field) else {
                continue;
            };
            match host_pattern(&s) {
                Some(m) => out.push(m),
                None => self.err(
                    &h.span(),
                    field,
                    &format!("{s:?} is not a host name or *.domain"),
                ),
            }
        }
        out
    }

    fn path(&mut self, v: &S<String>, field: &str) -> Option<PathBuf> {
        let s = self.string(v, field)?;
        if s.trim().is_empty() {
            self.err(&v.span(), field, "must not be empty");
            return None;
        }
        Some(PathBuf::from(s))
    }

    /// Where the local CA and the certificates it issues are kept:
    /// `[internal_ca] storage`, else `$XDG_DATA_HOME/gatehouse/pki`, else
    /// `$HOME/.local/share/gatehouse/pki`, else `/var/lib/gatehouse/pki`.
    pub(super) fn internal_ca(&mut self, raw: Option<&S<RawInternalCa>>) -> PathBuf {
        if let Some(p) = raw
            .and_then(|r| r.get_ref().storage.as_ref())
            .and_then(|s| self.path(s, "internal_ca.storage"))
        {
            return p;
        }
        let data = (self.env)("XDG_DATA_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                (self.env)("HOME")
                    .filter(|h| !h.is_empty())
                    .map(|h| PathBuf::from(h).join(".local/share"))
            });
        match data {
            Some(d) => d.join("gatehouse/pki"),
            None => PathBuf::from("/var/lib/gatehouse/pki"),
        }
    }

    /// A path to a file that must be there and readable now (certificates,
    /// keys, CAs): an error names it, with the line and field.
    pub(super) fn file(&mut self, v: &S<String>, field: &str) -> Option<PathBuf> {
        let p = self.path(v, field)?;
        if let Err(e) = std::fs::File::open(&p) {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".to_owned(),
                std::io::ErrorKind::PermissionDenied => {
                    "not readable (permission denied)".to_owned()
                }
                _ => e.to_string(),
            };
            self.err(&v.span(), field, &format!("{}: {why}", p.display()));
            return None;
        }
        Some(p)
    }

    pub(super) fn certificates(&mut self, raw: &[S<RawCertificate>]) -> Vec<CertificateConfig> {
        let mut out = Vec::new();
        let mut defaults = 0;
        for (i, rc) in raw.iter().enumerate() {
            let field = |f: &str| format!("certificates[{i}].{f}");
            let c = rc.get_ref();
            let hosts = c
                .hosts
                .as_ref()
                .map(|h| self.hosts(h, &field("hosts")))
                .unwrap_or_default();
            let auto = c.auto.as_ref().is_some_and(|a| *a.get_ref());
            let default = c.default.as_ref().is_some_and(|d| *d.get_ref());
            if default {
                defaults += 1;
                if defaults > 1 {
                    let span = c.default.as_ref().map(|d| d.span()).unwrap_or_default();
                    self.err(
                        &span,
                        &field("default"),
                        "only one certificate can be the default",
                    );
                }
            }
            let internal = match &c.issuer {
                None => false,
                Some(v) => match self.string(v, &field("issuer")).as_deref() {
                    Some("internal") => true,
                    Some(_) => {
                        self.err(
                            &v.span(),
                            &field("issuer"),
                            "the only issuer is \"internal\" (a local CA); for ACME, auto = true",
                        );
                        false
                    }
                    None => false,
                },
            };
            let source = if internal {
                if auto || c.cert.is_some() || c.key.is_some() {
                    self.err(
                        &rc.span(),
                        &field("issuer"),
                        "issuer = \"internal\" makes the certificate: leave out cert, key and auto",
                    );
                }
                if hosts.is_empty() {
                    self.err(
                        &rc.span(),
                        &field("hosts"),
                        "issuer = \"internal\" needs the host names to certify",
                    );
                }
                Some(CertSource::Internal)
            } else if auto {
                if c.cert.is_some() || c.key.is_some() {
                    self.err(
                        &rc.span(),
                        &field("auto"),
                        "auto = true obtains the certificate through [acme]: leave out cert and key",
                    );
                }
                if hosts.is_empty() {
                    self.err(
                        &rc.span(),
                        &field("hosts"),
                        "auto = true needs the host names to certify",
                    );
                }
                if hosts.iter().any(|h| matches!(h, HostMatch::Wildcard(_))) {
                    self.err(
                        &rc.span(),
                        &field("hosts"),
                        "wildcard names need the dns-01 challenge, which is not supported",
                    );
                }
                Some(CertSource::Acme)
            } else {
                match (&c.cert, &c.key) {
                    (Some(cert), Some(key)) => {
                        let cert = self.file(cert, &field("cert"));
                        let key = self.file(key, &field("key"));
                        cert.zip(key)
                            .map(|(cert, key)| CertSource::Files { cert, key })
                    }
                    _ => {
                        self.err(
                            &rc.span(),
                            &field("cert"),
                            "give cert and key (PEM files), auto = true (ACME) or issuer = \"internal\"",
                        );
                        None
                    }
                }
            };
            let label = match (&hosts.first(), &source) {
                (Some(HostMatch::Exact(h)), _) => h.clone(),
                (Some(HostMatch::Wildcard(h)), _) => format!("*{h}"),
                (None, Some(CertSource::Files { cert, .. })) => cert.display().to_string(),
                _ => format!("certificates[{i}]"),
            };
            if let Some(source) = source {
                out.push(CertificateConfig {
                    hosts,
                    source,
                    default,
                    label,
                });
            }
        }
        out
    }

    pub(super) fn acme(&mut self, raw: &S<RawAcme>) -> Option<AcmeConfig> {
        let a = raw.get_ref();
        let directory = self.string(&a.directory, "acme.directory")?;
        if !directory.starts_with("https://") {
            self.err(
                &a.directory.span(),
                "acme.directory",
                "must be an https:// URL",
            );
        }
        let storage = self.path(&a.storage, "acme.storage")?;
        let challenge = match a.challenge.as_ref() {
            None => AcmeChallenge::Http01,
            Some(c) => match self.string(c, "acme.challenge").as_deref() {
                Some("http-01") | None => AcmeChallenge::Http01,
                Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
                Some(other) => {
                    self.err(
                        &c.span(),
                        "acme.challenge",
                        &format!("{other:?} is not one of \"http-01\", \"tls-alpn-01\""),
                    );
                    AcmeChallenge::Http01
                }
            },
        };
        let contact = a
            .contact
            .as_ref()
            .map(|c| {
                c.get_ref()
                    .iter()
                    .filter_map(|v| self.string(v, "acme.contact"))
                    .collect()
            })
            .unwrap_or_default();
        Some(AcmeConfig {
            directory,
            ca: a.ca.as_ref().and_then(|c| self.file(c, "acme.ca")),
            storage,
            contact,
            challenge,
            renew_before: self.required_duration(
                a.renew_before.as_ref(),
                "acme.renew_before",
                Duration::from_secs(30 * 86400),
            ),
            retry_min: self.required_duration(
                a.retry_min.as_ref(),
                "acme.retry_min",
                Duration::from_secs(60),
            ),
            retry_max: self.required_duration(
                a.retry_max.as_ref(),
                "acme.retry_max",
                Duration::from_secs(6 * 3600),
            ),
        })
    }

    pub(super) fn tls_listener(
        &mut self,
        raw: Option<&S<RawTlsListener>>,
        field: &dyn Fn(&str) -> String,
        https: bool,
        handshake_default: Duration,
    ) -> TlsListener {
        let default_alpn: Vec<Vec<u8>> = if https {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            Vec::new()
        };
        let Some(raw) = raw else {
            return TlsListener {
                min_version: TlsVersion::V12,
                handshake_timeout: handshake_default,
                alpn: default_alpn,
                client_auth: None,
                session_resumption: true,
            };
        };
        let t = raw.get_ref();
        let min_version = match &t.min_version {
            None => TlsVersion::V12,
            Some(v) => match self.string(v, &field("tls.min_version")).as_deref() {
                Some("1.2") | None => TlsVersion::V12,
                Some("1.3") => TlsVersion::V13,
                Some(other) => {
                    self.err(
                        &v.span(),
                        &field("tls.min_version"),
                        &format!("{other:?} is not one of \"1.2\", \"1.3\""),
                    );
                    TlsVersion::V12
                }
            },
        };
        let alpn = match &t.alpn {
            None => default_alpn,
            Some(list) => list
                .get_ref()
                .iter()
                .filter_map(|p| self.string(p, &field("tls.alpn")))
                .map(String::into_bytes)
                .collect(),
        };
        let client_auth = t.client_ca.as_ref().and_then(|ca| {
            let ca = self.file(ca, &field("tls.client_ca"))?;
            let required = match &t.client_auth {
                None => true,
                Some(v) => match self.string(v, &field("tls.client_auth")).as_deref() {
                    Some("required") | None => true,
                    Some("optional") => false,
                    Some(other) => {
                        self.err(
                            &v.span(),
                            &field("tls.client_auth"),
                            &format!("{other:?} is not one of \"required\", \"optional\""),
                        );
                        true
                    }
                },
            };
            Some(ClientAuth { ca, required })
        });
        if t.client_auth.is_some() && t.client_ca.is_none() {
            self.err(
                &raw.span(),
                &field("tls.client_auth"),
                "needs tls.client_ca, the CA bundle that client certificates are verified against",
            );
        }
        TlsListener {
            min_version,
            handshake_timeout: self.required_duration(
                t.handshake_timeout.as_ref(),
                &field("tls.handshake_timeout"),
                handshake_default,
            ),
            alpn,
            client_auth,
            session_resumption: t.session_resumption.as_ref().is_none_or(|r| *r.get_ref()),
        }
    }

    pub(super) fn tls_mode(&mut self, v: Option<&S<String>>, field: &str) -> TlsMode {
        let Some(v) = v else {
            return TlsMode::Passthrough;
        };
        match self.string(v, field).as_deref() {
            Some("passthrough") | None => TlsMode::Passthrough,
            Some("terminate") => TlsMode::Terminate,
            Some("terminate_and_reencrypt") => TlsMode::TerminateAndReencrypt,
            Some(other) => {
                self.err(
                    &v.span(),
                    field,
                    &format!(
                        "{other:?} is not one of \"passthrough\", \"terminate\", \"terminate_and_reencrypt\""
                    ),
                );
                TlsMode::Passthrough
            }
        }
    }

    pub(super) fn upstream(
        &mut self,
        raw: Option<&S<RawUpstream>>,
        field: &dyn Fn(&str) -> String,
        reencrypt: bool,
    ) -> UpstreamConfig {
        let Some(raw) = raw else {
            return UpstreamConfig {
                tls: reencrypt.then(UpstreamTls::default),
                protocol: UpstreamProtocol::Http1,
            };
        };
        let u = raw.get_ref();
        let tls_on = reencrypt || u.tls.as_ref().is_some_and(|t| *t.get_ref());
        let tls_fields = u.ca.is_some()
            || u.server_name.is_some()
            || u.client_cert.is_some()
            || u.client_key.is_some();
        if tls_fields && !tls_on {
            self.err(
                &raw.span(),
                &field("upstream.tls"),
                "ca, server_name and client_cert need upstream.tls = true",
            );
        }
        let client_cert = match (&u.client_cert, &u.client_key) {
            (Some(c), Some(k)) => self
                .file(c, &field("upstream.client_cert"))
                .zip(self.file(k, &field("upstream.client_key"))),
            (None, None) => None,
            _ => {
                self.err(
                    &raw.span(),
                    &field("upstream.client_cert"),
                    "client_cert and client_key go together",
                );
                None
            }
        };
        let server_name = u.server_name.as_ref().and_then(|n| {
            let s = self.string(n, &field("upstream.server_name"))?;
            if rustls_pki_types::ServerName::try_from(s.as_str()).is_err() {
                self.err(
                    &n.span(),
                    &field("upstream.server_name"),
                    &format!("{s:?} is not a DNS name or IP address"),
                );
                return None;
            }
            Some(s)
        });
        let protocol = match &u.protocol {
            None => UpstreamProtocol::Http1,
            Some(p) => match self.string(p, &field("upstream.protocol")).as_deref() {
                Some("http1") | None => UpstreamProtocol::Http1,
                Some("http2") => UpstreamProtocol::Http2,
                Some(other) => {
                    self.err(
                        &p.span(),
                        &field("upstream.protocol"),
                        &format!("{other:?} is not one of \"http1\", \"http2\""),
                    );
                    UpstreamProtocol::Http1
                }
            },
        };
        UpstreamConfig {
            tls: tls_on.then(|| UpstreamTls {
                ca: u
                    .ca
                    .as_ref()
                    .and_then(|c| self.file(c, &field("upstream.ca"))),
                server_name,
                client_cert,
            }),
            protocol,
        }
    }
}
