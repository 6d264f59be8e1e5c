//! JWT bearer tokens (`jsonwebtoken`): one key and its algorithm, or a JWKS
//! file read again when it changes (a key found by the token's `kid`).
//! The token's `alg` must be the key's: `none`, and a token signed with
//! another family's algorithm (an HMAC over a public key), are refused.
//! Issuer, audience, expiry and not-before (with clock skew) are checked;
//! chosen claims go upstream as headers (the client's own headers of
//! those names are removed first). Verified tokens are remembered until
//! their expiry (a bounded set), so a client sending the same token on
//! every request costs a lookup, not a signature check.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{Answer, Filter, Request, RequestEnd};
use crate::config::{Jwt, JwtKeyMaterial, JwtKeys};

/// The remembered tokens' hash: a fast one (the whole token is compared
/// on a match, and only tokens whose signature verified are ever stored,
/// so a client cannot choose colliding keys to slow the table down).
#[derive(Default, Clone, Copy)]
struct TokenHash;

struct TokenHasher(u64);

impl std::hash::BuildHasher for TokenHash {
    type Hasher = TokenHasher;
    fn build_hasher(&self) -> TokenHasher {
        TokenHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for TokenHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Verified tokens remembered at most.
const VERIFIED_KEPT: usize = 4096;

/// How often a JWKS file is looked at for a change.
const JWKS_CHECK_EVERY_MS: u64 = 1000;

type Claims = Arc<Map<String, Value>>;

/// A verified token: its claims and what the request gets from them,
/// made once per token.
struct Verified {
    claims: Claims,
    exp: u64,
    user: Option<Arc<str>>,
    /// Each `claims_to_headers` header: the claim's value, or `None` (the
    /// token has no such claim: the client's own header of that name goes).
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

struct Jwks {
    path: PathBuf,
    modified: Mutex<Option<SystemTime>>,
    next_check: AtomicU64,
}

pub struct JwtAuth {
    name: String,
    challenge: HeaderValue,
    invalid: HeaderValue,
    settings: Jwt,
    keys: ArcSwap<Vec<Key>>,
    jwks: Option<Jwks>,
    started: Instant,
    /// Token → its claims and expiry (seconds since the epoch).
    verified: Mutex<HashMap<Box<str>, Arc<Verified>, TokenHash>>,
}

impl JwtAuth {
    pub fn new(name: &str, c: &Jwt) -> JwtAuth {
        let challenge = HeaderValue::from_str(&format!("Bearer realm=\"{}\"", c.realm))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
        let invalid = HeaderValue::from_str(&format!(
            "Bearer realm=\"{}\", error=\"invalid_token\"",
            c.realm
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""));
        let (keys, jwks) = match &c.keys {
            JwtKeys::Static { algorithm, key } => {
                let decoding = match key {
                    JwtKeyMaterial::Secret(s) => Some(DecodingKey::from_secret(s)),
                    JwtKeyMaterial::Pem(p) => crate::config::decoding_key(*algorithm, p).ok(),
                };
                let keys = decoding
                    .map(|key| Key {
                        kid: None,
                        algorithm: *algorithm,
                        validation: validation(c, *algorithm),
                        key,
                    })
                    .into_iter()
                    .collect();
                (keys, None)
            }
            JwtKeys::Jwks { path } => (
                Vec::new(),
                Some(Jwks {
                    path: path.clone(),
                    modified: Mutex::new(None),
                    next_check: AtomicU64::new(0),
                }),
            ),
        };
        let auth = JwtAuth {
            name: name.to_owned(),
            challenge,
            invalid,
            settings: c.clone(),
            keys: ArcSwap::from_pointee(keys),
            jwks,
            started: Instant::now(),
            verified: Mutex::new(HashMap::default()),
        };
        auth.refresh_jwks(Instant::now());
        auth
    }

    /// Reads the JWKS file again if it changed (at most once a second); a
    /// file that cannot be used leaves the keys as they were.
    fn refresh_jwks(&self, now: Instant) {
        let Some(j) = &self.jwks else { return };
        let now = now.saturating_duration_since(self.started).as_millis() as u64;
        let next = j.next_check.load(Ordering::Relaxed);
        if now < next
            || j.next_check
                .compare_exchange(
                    next,
                    now + JWKS_CHECK_EVERY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let modified = std::fs::metadata(&j.path).and_then(|m| m.modified()).ok();
        let mut seen = j.modified.lock().unwrap_or_else(|p| p.into_inner());
        if modified.is_some() && *seen == modified {
            return;
        }
        *seen = modified;
        let read = std::fs::read_to_string(&j.path)
            .map_err(|e| e.to_string())
            .and_then(|t| crate::config::check_jwks(&t));
        match read {
            Ok(set) => {
                let keys: Vec<Key> = set.keys.iter().filter_map(|k| self.jwk_key(k)).collect();
                tracing::info!(filter = %self.name, keys = keys.len(), "JWKS loaded");
                self.keys.store(Arc::new(keys));
                // Tokens verified by keys that may be gone are checked again.
                self.verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
            }
            Err(e) => {
                tracing::warn!(filter = %self.name, file = %j.path.display(), error = %e, "JWKS not usable; keeping the keys before")
            }
        }
    }

    fn jwk_key(&self, k: &Jwk) -> Option<Key> {
        let algorithm = match (&k.common.key_algorithm, &k.algorithm) {
            (Some(a), _) => jwk_algorithm(*a)?,
            (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (None, AlgorithmParameters::EllipticCurve(e)) => match e.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return None,
            },
            (None, AlgorithmParameters::OctetKeyPair(_)) => Algorithm::EdDSA,
            (None, AlgorithmParameters::OctetKey(_)) => Algorithm::HS256,
            (None, _) => return None,
        };
        Some(Key {
            kid: k.common.key_id.clone(),
            algorithm,
            key: DecodingKey::from_jwk(k).ok()?,
            validation: validation(&self.settings, algorithm),
        })
    }

    fn verify(&self, token: &str, now: u64) -> Option<Arc<Verified>> {
        let skew = self.settings.clock_skew;
        {
            let kept = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = kept.get(token) {
                if now <= v.exp.saturating_add(skew) {
                    return Some(v.clone());
                }
            }
        }
        let header = jsonwebtoken::decode_header(token).ok()?;
        let keys = self.keys.load();
        let key = keys.iter().find(|k| {
            k.algorithm == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) | (None, _) => keys.len() == 1 || k.kid.is_none(),
                }
        })?;
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation).ok()?;
        let exp = data.claims.get("exp").and_then(Value::as_u64)?;
        let claims = Arc::new(data.claims);
        let text = |name: &str| super::claim_text(claims.get(name)?);
        let verified = Arc::new(Verified {
            user: text("sub").map(Into::into),
            headers: self
                .settings
                .claims_to_headers
                .iter()
                .map(|(c, h)| {
                    let v = text(c).and_then(|t| HeaderValue::from_str(&t).ok());
                    (h.clone(), v)
                })
                .collect(),
            claims,
            exp,
        });
        let mut kept = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= VERIFIED_KEPT {
            kept.retain(|_, v| now <= v.exp.saturating_add(skew));
            if kept.len() >= VERIFIED_KEPT {
                kept.clear();
            }
        }
        kept.insert(token.into(), verified.clone());
        Some(verified)
    }
}

fn jwk_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    use KeyAlgorithm as K;
    Some(match a {
        K::HS256 => Algorithm::HS256,
        K::HS384 => Algorithm::HS384,
        K::HS512 => Algorithm::HS512,
        K::ES256 => Algorithm::ES256,
        K::ES384 => Algorithm::ES384,
        K::RS256 => Algorithm::RS256,
        K::RS384 => Algorithm::RS384,
        K::RS512 => Algorithm::RS512,
        K::PS256 => Algorithm::PS256,
        K::PS384 => Algorithm::PS384,
        K::PS512 => Algorithm::PS512,
        K::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

fn validation(c: &Jwt, algorithm: Algorithm) -> Validation {
    let mut v = Validation::new(algorithm);
    v.leeway = c.clock_skew;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    if !c.issuer.is_empty() {
        v.set_issuer(&c.issuer);
        required.push("iss");
    }
    if c.audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&c.audience);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

impl Filter for JwtAuth {
    fn request(&self, req: &mut Request<'_>) -> Result<(), Answer> {
        self.refresh_jwks(req.state.now);
        // (Credentials that do not go upstream are taken out at once: one
        // lookup. A request refused here goes nowhere.)
        let credentials = if self.settings.forward_credentials {
            req.headers.get(AUTHORIZATION).cloned()
        } else {
            req.headers.remove(AUTHORIZATION)
        };
        let token = credentials
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let Some(token) = token else {
            return Err(Answer::reject(RequestEnd::AuthRequired)
                .with(WWW_AUTHENTICATE, self.challenge.clone()));
        };
        let Some(verified) = self.verify(token, req.state.unix_secs()) else {
            return Err(
                Answer::reject(RequestEnd::AuthDenied).with(WWW_AUTHENTICATE, self.invalid.clone())
            );
        };
        req.state.claims = Some(verified.claims.clone());
        req.state.user = verified.user.clone();
        // A client's own headers of the names claims go in are not trusted:
        // replaced by the claim's value, or removed.
        for (h, v) in &verified.headers {
            match v {
                Some(v) => req.headers.insert(h.clone(), v.clone()),
                None => req.headers.remove(h),
            };
        }
        Ok(())
    }
}
