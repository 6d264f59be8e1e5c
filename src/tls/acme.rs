//! Automatic certificates (ACME, RFC 8555) for `[[certificates]]` entries
//! with `auto = true`: one task keeps every such certificate issued and
//! renewed ahead of expiry, answering HTTP-01 challenges from the HTTP
//! listeners (`/.well-known/acme-challenge/`) and TLS-ALPN-01 challenges
//! (RFC 8737) from the TLS listeners through the certificate store. The
//! account and the certificates live under `acme.storage`; a certificate is
//! written aside and renamed into place, then swapped into the store, so
//! handshakes never see a half-written one. A failed attempt keeps the
//! certificate in use and is retried with exponential backoff.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::certs::{CertStore, acme_paths};
use crate::config::{AcmeChallenge, AcmeConfig, CertSource, HostMatch};

pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("ACME storage {path}: {source}")]
    Storage {
        path: String,
        source: std::io::Error,
    },
    #[error("ACME: {0}")]
    Other(String),
}

fn storage_err(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError + '_ {
    move |source| AcmeError::Storage {
        path: path.display().to_string(),
        source,
    }
}

pub struct AcmeManager {
    config: AcmeConfig,
    store: Arc<CertStore>,
    /// HTTP-01 token → key authorization, while a challenge is open.
    http_tokens: Mutex<HashMap<String, String>>,
    issued: AtomicU64,
    failed: AtomicU64,
}

impl AcmeManager {
    pub fn new(config: AcmeConfig, store: Arc<CertStore>) -> Arc<AcmeManager> {
        Arc::new(AcmeManager {
            config,
            store,
            http_tokens: Mutex::new(HashMap::new()),
            issued: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// The key authorization for an HTTP-01 token we are being asked about.
    pub fn http01_response(&self, token: &str) -> Option<String> {
        self.http_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "# HELP gatehouse_acme_orders_total Certificate orders through ACME, by result.\n# TYPE gatehouse_acme_orders_total counter\ngatehouse_acme_orders_total{{result=\"ok\"}} {}\ngatehouse_acme_orders_total{{result=\"error\"}} {}\n",
            self.issued.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        );
    }

    /// Keeps every ACME certificate valid; runs for the life of the process.
    pub async fn run(self: Arc<Self>) {
        let slots: Vec<usize> = self
            .store
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.config.source, CertSource::Acme))
            .map(|(i, _)| i)
            .collect();
        if slots.is_empty() {
            return;
        }
        let mut account = None;
        // When each slot is due, and its current backoff.
        let now = tokio::time::Instant::now();
        let mut due: Vec<(tokio::time::Instant, Duration)> =
            slots.iter().map(|_| (now, self.config.retry_min)).collect();
        loop {
            for (k, &slot) in slots.iter().enumerate() {
                if due[k].0 > tokio::time::Instant::now() {
                    continue;
                }
                if let Some(wait) = self.renewal_wait(slot) {
                    due[k].0 = tokio::time::Instant::now() + wait;
                    continue;
                }
                let label = self.store.slots[slot].config.label.clone();
                match self.issue(slot, &mut account).await {
                    Ok(()) => {
                        self.issued.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(certificate = %label, "ACME certificate issued");
                        due[k] = (
                            tokio::time::Instant::now()
                                + self
                                    .renewal_wait(slot)
                                    .unwrap_or_default()
                                    .max(self.config.retry_min),
                            self.config.retry_min,
                        );
                    }
                    Err(e) => {
                        self.failed.fetch_add(1, Ordering::Relaxed);
                        let backoff = due[k].1;
                        tracing::warn!(certificate = %label, error = %e, retry_in = ?backoff, "ACME order failed; the current certificate stays in use");
                        due[k] = (
                            tokio::time::Instant::now() + backoff,
                            (backoff * 2).min(self.config.retry_max),
                        );
                    }
                }
            }
            let next = due
                .iter()
                .map(|d| d.0)
                .min()
                .unwrap_or_else(tokio::time::Instant::now);
            let cap = tokio::time::Instant::now() + Duration::from_secs(3600);
            tokio::time::sleep_until(next.min(cap)).await;
        }
    }

    /// `None` when the slot needs a certificate now, else how long until it does.
    fn renewal_wait(&self, slot: usize) -> Option<Duration> {
        let current = self.store.slots[slot].current()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let renew_at = current.not_after - self.config.renew_before.as_secs() as i64;
        (renew_at > now).then(|| Duration::from_secs((renew_at - now) as u64))
    }

    async fn account(&self) -> Result<Account, AcmeError> {
        std::fs::create_dir_all(&self.config.storage).map_err(storage_err(&self.config.storage))?;
        let path = self.config.storage.join("account.json");
        let builder = || match &self.config.ca {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        };
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(creds) = serde_json::from_str::<AccountCredentials>(&text) {
                return Ok(builder()?.from_credentials(creds).await?);
            }
        }
        let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        let (account, creds) = builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                None,
            )
            .await?;
        let text = serde_json::to_string(&creds).map_err(|e| AcmeError::Other(e.to_string()))?;
        write_private(&path, text.as_bytes())?;
        Ok(account)
    }

    /// One order for a slot: challenges, finalize, store, swap in.
    async fn issue(&self, slot: usize, account: &mut Option<Account>) -> Result<(), AcmeError> {
        if account.is_none() {
            *account = Some(self.account().await?);
        }
        let Some(acct) = account.as_ref() else {
            return Err(AcmeError::Other("no account".into()));
        };
        let names: Vec<String> = self.store.slots[slot]
            .config
            .hosts
            .iter()
            .filter_map(|h| match h {
                HostMatch::Exact(n) => Some(n.clone()),
                HostMatch::Wildcard(_) => None,
            })
            .collect();
        let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
        let mut order = acct.new_order(&NewOrder::new(&identifiers)).await?;
        let kind = match self.config.challenge {
            AcmeChallenge::Http01 => ChallengeType::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut opened: Vec<Opened> = Vec::new();
        let result = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz?;
                if authz.status != AuthorizationStatus::Pending {
                    continue;
                }
                let name = match &authz.identifier().identifier {
                    Identifier::Dns(n) => n.clone(),
                    other => {
                        return Err(AcmeError::Other(format!(
                            "unsupported identifier {other:?}"
                        )));
                    }
                };
                let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                    AcmeError::Other(format!("the CA offers no {kind:?} challenge for {name}"))
                })?;
                let key_auth = challenge.key_authorization();
                match kind {
                    ChallengeType::TlsAlpn01 => {
                        let cert = self.alpn_challenge_cert(&name, key_auth.digest().as_ref())?;
                        self.store.set_challenge(&name, Some(cert));
                        opened.push(Opened::Alpn(name));
                    }
                    _ => {
                        let token = challenge.token.clone();
                        self.http_tokens
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(token.clone(), key_auth.as_str().to_owned());
                        opened.push(Opened::Http(token));
                    }
                }
                challenge.set_ready().await?;
            }
            let retry = RetryPolicy::new()
                .initial_delay(Duration::from_millis(250))
                .timeout(Duration::from_secs(60));
            let status = order.poll_ready(&retry).await?;
            if status != OrderStatus::Ready {
                return Err(AcmeError::Other(format!("order ended {status:?}")));
            }
            let key_pem = order.finalize().await?;
            let chain_pem = order.poll_certificate(&retry).await?;
            Ok((key_pem, chain_pem))
        }
        .await;
        for o in opened {
            match o {
                Opened::Alpn(name) => self.store.set_challenge(&name, None),
                Opened::Http(token) => {
                    self.http_tokens
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&token);
                }
            }
        }
        let (key_pem, chain_pem) = result?;
        let (cert_path, key_path) =
            acme_paths(&self.config.storage, &self.store.slots[slot].config.label);
        write_private(&key_path, key_pem.as_bytes())?;
        write_private(&cert_path, chain_pem.as_bytes())?;
        self.store
            .install(slot)
            .map_err(|e| AcmeError::Other(e.to_string()))
    }

    /// The self-signed certificate answering a TLS-ALPN-01 challenge.
    fn alpn_challenge_cert(
        &self,
        name: &str,
        digest: &[u8],
    ) -> Result<Arc<CertifiedKey>, AcmeError> {
        let other = |e: &dyn std::fmt::Display| AcmeError::Other(e.to_string());
        let mut params =
            rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| other(&e))?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let key = rcgen::KeyPair::generate().map_err(|e| other(&e))?;
        let cert = params.self_signed(&key).map_err(|e| other(&e))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        // Loaded by hand: rustls' own loaders reject the critical acmeIdentifier extension.
        let signing = self
            .store
            .provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| other(&e))?;
        Ok(Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(cert.der().to_vec())],
            signing,
        )))
    }
}

enum Opened {
    Alpn(String),
    Http(String),
}

/// Writes a file readable only by us, aside first, then renamed into place.
fn write_private(path: &PathBuf, bytes: &[u8]) -> Result<(), AcmeError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(storage_err(dir))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(storage_err(&tmp))?;
    f.write_all(bytes).map_err(storage_err(&tmp))?;
    f.sync_all().map_err(storage_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(storage_err(path))
}
