//! The certificate store: every `[[certificates]]` entry as a slot holding
//! the certificate currently served, picked per handshake by SNI (exact name,
//! then the longest wildcard, then the default). Slots are swapped one at a
//! time: a handshake sees either the old or the new certificate, and open
//! connections keep what they negotiated. Files are polled for changes (and
//! reloaded on an admin call); a file that fails to load leaves the previous
//! certificate in place. ACME writes its certificates through `install`, and
//! TLS-ALPN-01 challenge certificates are served from `challenges`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::internal::{self, InternalCa};
use crate::config::{CertSource, CertificateConfig, HostMatch};

/// The ALPN protocol of TLS-ALPN-01 challenge handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("certificate and key do not match: {0}")]
    Mismatch(String),
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
}

/// A certificate ready to serve, with what the store needs to know about it.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// The names it serves: the configured hosts, else its DNS SANs.
    pub hosts: Vec<HostMatch>,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
    stamp: Option<(FileStamp, FileStamp)>,
}

/// Modification time and length: a change in either means reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp(SystemTime, u64);

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp(meta.modified().ok()?, meta.len()))
}

pub struct Slot {
    pub config: CertificateConfig,
    /// Where the certificate and key are read from.
    pub paths: (PathBuf, PathBuf),
    current: RwLock<Option<Arc<Loaded>>>,
}

impl Slot {
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn set(&self, loaded: Loaded) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(loaded));
    }
}

pub struct CertStore {
    pub slots: Vec<Slot>,
    provider: Arc<CryptoProvider>,
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// The local CA, when a certificate has `issuer = "internal"`.
    internal: Option<InternalCa>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("slots", &self.slots.len())
            .finish()
    }
}

/// The names of host matches, as certificate names (`*.example.test`).
fn host_names(hosts: &[HostMatch]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| match h {
            HostMatch::Exact(h) => h.clone(),
            HostMatch::Wildcard(h) => format!("*{h}"),
        })
        .collect()
}

/// The crypto provider every TLS config uses (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl CertStore {
    /// Loads every file-backed certificate (an error stops start-up) and
    /// whatever ACME has stored so far under `acme_storage`.
    pub fn load(
        configs: &[CertificateConfig],
        acme_storage: Option<&Path>,
        internal_storage: &Path,
    ) -> Result<CertStore, CertError> {
        let provider = provider();
        let internal = configs
            .iter()
            .any(|c| matches!(c.source, CertSource::Internal))
            .then(|| InternalCa::open(internal_storage))
            .transpose()?;
        let mut slots = Vec::new();
        for c in configs {
            let paths = match &c.source {
                CertSource::Files { cert, key } => (cert.clone(), key.clone()),
                CertSource::Acme => {
                    let dir = acme_storage.unwrap_or(Path::new("."));
                    acme_paths(dir, &c.label)
                }
                CertSource::Internal => InternalCa::paths(internal_storage, &c.label),
            };
            let slot = Slot {
                config: c.clone(),
                paths,
                current: RwLock::new(None),
            };
            let mut loaded = load_pair(&provider, &slot.paths.0, &slot.paths.1, &c.hosts);
            if let Some(ca) = &internal {
                let stale = loaded.as_ref().map_or(true, |l| internal::due(l.not_after));
                if matches!(c.source, CertSource::Internal) && stale {
                    ca.issue(&c.label, &host_names(&c.hosts))?;
                    loaded = load_pair(&provider, &slot.paths.0, &slot.paths.1, &c.hosts);
                }
            }
            match loaded {
                Ok(l) => slot.set(l),
                Err(e) if !matches!(c.source, CertSource::Acme) => return Err(e),
                Err(_) => {} // ACME has not issued it yet
            }
            slots.push(slot);
        }
        Ok(CertStore {
            slots,
            provider,
            challenges: Mutex::new(HashMap::new()),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            internal,
        })
    }

    /// Renews the internal issuer's certificates due for it (`RENEW_BEFORE`
    /// their end); returns how many. Called periodically.
    pub fn renew_internal(&self) -> usize {
        let Some(ca) = &self.internal else {
            return 0;
        };
        let mut renewed = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            if !matches!(slot.config.source, CertSource::Internal)
                || slot.current().is_some_and(|l| !internal::due(l.not_after))
            {
                continue;
            }
            let issued = ca.issue(&slot.config.label, &host_names(&slot.config.hosts));
            match issued.and_then(|_| self.install(i)) {
                Ok(()) => renewed += 1,
                Err(e) => {
                    tracing::warn!(certificate = %slot.config.label, error = %e, "internal CA: renewal failed; the current certificate stays")
                }
            }
        }
        renewed
    }

    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// The certificate for a server name: exact, longest wildcard, default.
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        // One pass, ranking each loaded slot: exact name (3) > wildcard (2,
        // longer suffix first) > default (1). Ties go to file order.
        let mut best: Option<((u8, usize), Arc<Loaded>)> = None;
        for slot in &self.slots {
            let Some(loaded) = slot.current() else {
                continue;
            };
            let by_name = sni.and_then(|name| {
                loaded
                    .hosts
                    .iter()
                    .filter(|h| h.matches(name))
                    .map(|h| match h {
                        HostMatch::Exact(_) => (3, 0),
                        HostMatch::Wildcard(suffix) => (2, suffix.len()),
                    })
                    .max()
            });
            let rank = by_name.or(slot.config.default.then_some((1, 0)));
            if let Some(rank) = rank {
                if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                    best = Some((rank, loaded));
                }
            }
        }
        best.map(|(_, l)| l.key.clone())
    }

    /// Reloads the slots whose files changed; returns how many were replaced.
    pub fn reload_changed(&self) -> usize {
        self.reload(false)
    }

    /// Reloads every slot from disk (admin call); returns how many loaded.
    pub fn reload_all(&self) -> usize {
        self.reload(true)
    }

    fn reload(&self, force: bool) -> usize {
        let mut replaced = 0;
        for slot in &self.slots {
            let now = stamp(&slot.paths.0).zip(stamp(&slot.paths.1));
            let Some(now) = now else {
                continue; // missing files: keep what is served
            };
            let current = slot.current();
            if !force && current.as_ref().is_some_and(|c| c.stamp == Some(now)) {
                continue;
            }
            match load_pair(
                &self.provider,
                &slot.paths.0,
                &slot.paths.1,
                &slot.config.hosts,
            ) {
                Ok(l) => {
                    tracing::info!(certificate = %slot.config.label, not_after = l.not_after, "certificate loaded");
                    slot.set(l);
                    self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                    replaced += 1;
                }
                Err(e) => {
                    // Files caught mid-write fail too; they are tried again
                    // at the next poll since the stamp is not recorded.
                    if current.as_ref().is_none_or(|c| c.stamp != Some(now)) {
                        tracing::warn!(certificate = %slot.config.label, error = %e, "certificate reload failed; the previous one stays in use");
                        self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        replaced
    }

    /// Puts a certificate in place for slot `index` (ACME), already on disk.
    pub fn install(&self, index: usize) -> Result<(), CertError> {
        let slot = &self.slots[index];
        let l = load_pair(
            &self.provider,
            &slot.paths.0,
            &slot.paths.1,
            &slot.config.hosts,
        )?;
        slot.set(l);
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Serves (or stops serving) a TLS-ALPN-01 challenge certificate.
    pub fn set_challenge(&self, name: &str, key: Option<Arc<CertifiedKey>>) {
        let mut c = self.challenges.lock().unwrap_or_else(|p| p.into_inner());
        match key {
            Some(k) => c.insert(name.to_owned(), k),
            None => c.remove(name),
        };
    }

    fn challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Prometheus lines for certificates.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("# HELP gatehouse_tls_certificate_not_after_seconds Expiry of the certificate served, as a Unix time.\n# TYPE gatehouse_tls_certificate_not_after_seconds gauge\n");
        for slot in &self.slots {
            if let Some(l) = slot.current() {
                let _ = writeln!(
                    out,
                    "gatehouse_tls_certificate_not_after_seconds{{certificate=\"{}\"}} {}",
                    crate::metrics::escape_label(&slot.config.label),
                    l.not_after
                );
            }
        }
        let _ = write!(
            out,
            "# HELP gatehouse_tls_certificate_reloads_total Certificates loaded from disk after start-up, by result.\n# TYPE gatehouse_tls_certificate_reloads_total counter\ngatehouse_tls_certificate_reloads_total{{result=\"ok\"}} {}\ngatehouse_tls_certificate_reloads_total{{result=\"error\"}} {}\n",
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed)
        );
    }
}

/// Where ACME keeps the certificate and key of a certificate entry.
pub fn acme_paths(storage: &Path, label: &str) -> (PathBuf, PathBuf) {
    let safe: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    (
        storage.join(format!("{safe}.crt")),
        storage.join(format!("{safe}.key")),
    )
}

fn file_err(path: &Path, message: impl fmt::Display) -> CertError {
    CertError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Reads a PEM certificate chain.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, e))?;
    if chain.is_empty() {
        return Err(file_err(path, "no CERTIFICATE in the file"));
    }
    Ok(chain)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

fn load_pair(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
    hosts: &[HostMatch],
) -> Result<Loaded, CertError> {
    let before = stamp(cert).zip(stamp(key));
    let chain = read_chain(cert)?;
    let key_der = read_key(key)?;
    let certified = CertifiedKey::from_der(chain, key_der, provider)
        .map_err(|e| CertError::Mismatch(e.to_string()))?;
    let (not_after, names) = inspect(&certified.cert[0])?;
    let hosts = if hosts.is_empty() {
        names
            .iter()
            .filter_map(|n| crate::config::host_pattern(n))
            .collect()
    } else {
        hosts.to_vec()
    };
    Ok(Loaded {
        key: Arc::new(certified),
        hosts,
        not_after,
        stamp: before,
    })
}

/// Expiry (Unix seconds) and DNS names of a certificate.
pub fn inspect(der: &CertificateDer<'_>) -> Result<(i64, Vec<String>), CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let not_after = cert.validity().not_after.timestamp();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    Ok((not_after, names))
}

/// Picks the certificate for each handshake from the store.
#[derive(Debug)]
pub struct SniResolver(pub Arc<CertStore>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
        let challenge = hello
            .alpn()
            .is_some_and(|mut p| p.any(|p| p == ACME_TLS_ALPN));
        if challenge {
            return sni.and_then(|name| self.0.challenge(&name));
        }
        self.0.resolve(sni.as_deref())
    }
}
