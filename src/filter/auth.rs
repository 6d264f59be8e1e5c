//! HTTP Basic authentication (password hashes: argon2 or bcrypt) and API
//! keys (stored as SHA-256). No credentials → 401 with a challenge;
//! credentials that are wrong → 403. Credentials are taken out of the
//! request before it goes upstream unless `forward_credentials`.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Uri};
use subtle::ConstantTimeEq;

use super::{Answer, Filter, Request, RequestEnd};
use crate::config::{ApiKey, BasicAuth, KeyPlace};

/// Verified credentials remembered (their SHA-256), so that a client
/// sending the same password on every request costs a hash, not a
/// password-hash verification (tens of milliseconds by design).
const VERIFIED_KEPT: usize = 1024;

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// An argon2id hash of `password` (PHC string), with a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher as _;
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| "no random bytes for a salt".to_owned())?;
    let salt = argon2::password_hash::SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// `sha256:HEX` of an API key.
pub fn hash_key(key: &str) -> String {
    let hex: String = sha256(&[key.as_bytes()])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn challenge(scheme: &str, realm: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("{scheme} realm=\"{realm}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"))
}

pub struct Basic {
    challenge: HeaderValue,
    users: HashMap<String, String>,
    forward: bool,
    verified: Mutex<std::collections::HashSet<[u8; 32]>>,
}

impl Basic {
    pub fn new(c: &BasicAuth) -> Basic {
        Basic {
            challenge: HeaderValue::from_str(&format!(
                "Basic realm=\"{}\", charset=\"UTF-8\"",
                c.realm
            ))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic")),
            users: c.users.iter().cloned().collect(),
            forward: c.forward_credentials,
            verified: Mutex::default(),
        }
    }

    fn check(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let id = sha256(&[
            hash.as_bytes(),
            b"\0",
            user.as_bytes(),
            b"\0",
            password.as_bytes(),
        ]);
        let lock = || self.verified.lock().unwrap_or_else(|p| p.into_inner());
        // (A digest keyed by the stored hash: its lookup's timing tells a
        // client nothing it could use.)
        if lock().contains(&id) {
            return true;
        }
        let ok = if hash.starts_with("$argon2") {
            use argon2::PasswordVerifier as _;
            argon2::PasswordHash::new(hash).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
        } else {
            bcrypt::verify(password, hash).unwrap_or(false)
        };
        if ok {
            let mut kept = lock();
            if kept.len() >= VERIFIED_KEPT {
                kept.clear();
            }
            kept.insert(id);
        }
        ok
    }
}

impl Filter for Basic {
    fn request(&self, req: &mut Request<'_>) -> Result<(), Answer> {
        let missing = || {
            Answer::reject(RequestEnd::AuthRequired).with(WWW_AUTHENTICATE, self.challenge.clone())
        };
        let Some(value) = req.headers.get(AUTHORIZATION) else {
            return Err(missing());
        };
        let bytes = value.as_bytes();
        if bytes.len() < 6 || !bytes[..6].eq_ignore_ascii_case(b"basic ") {
            return Err(missing());
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(bytes[6..].trim_ascii())
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Err(Answer::reject(RequestEnd::AuthDenied));
        };
        if !self.check(user, password) {
            return Err(Answer::reject(RequestEnd::AuthDenied));
        }
        req.state.user = Some(user.into());
        if !self.forward {
            req.headers.remove(AUTHORIZATION);
        }
        Ok(())
    }
}

pub struct ApiKeys {
    challenge: HeaderValue,
    place: KeyPlace,
    keys: Vec<(std::sync::Arc<str>, [u8; 32])>,
    forward: bool,
}

impl ApiKeys {
    pub fn new(c: &ApiKey) -> ApiKeys {
        ApiKeys {
            challenge: challenge("ApiKey", &c.realm),
            place: c.place.clone(),
            keys: c
                .keys
                .iter()
                .map(|(n, h)| (n.as_str().into(), *h))
                .collect(),
            forward: c.forward_credentials,
        }
    }

    /// The key's name, comparing against every key in constant time.
    fn find(&self, key: &[u8]) -> Option<&std::sync::Arc<str>> {
        let hash = sha256(&[key]);
        let mut found = None;
        for (name, h) in &self.keys {
            if bool::from(h.ct_eq(&hash)) {
                found = Some(name);
            }
        }
        found
    }
}

impl Filter for ApiKeys {
    fn request(&self, req: &mut Request<'_>) -> Result<(), Answer> {
        let presented: Option<Vec<u8>> = match &self.place {
            KeyPlace::Header(h) => req.headers.get(h).map(|v| v.as_bytes().to_vec()),
            KeyPlace::Query(q) => query_param(req.uri, q),
        };
        let Some(key) = presented.filter(|k| !k.is_empty()) else {
            return Err(Answer::reject(RequestEnd::AuthRequired)
                .with(WWW_AUTHENTICATE, self.challenge.clone()));
        };
        let Some(name) = self.find(&key) else {
            return Err(Answer::reject(RequestEnd::AuthDenied));
        };
        req.state.api_key = Some(name.clone());
        if req.state.user.is_none() {
            req.state.user = Some(name.clone());
        }
        if !self.forward {
            match &self.place {
                KeyPlace::Header(h) => {
                    req.headers.remove(h);
                }
                KeyPlace::Query(q) => {
                    if let Some(uri) = without_param(req.uri, q) {
                        *req.uri = uri;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The first value of query parameter `name` (percent-decoded).
fn query_param(uri: &Uri, name: &str) -> Option<Vec<u8>> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// `uri` without query parameter `name` (the rest byte for byte).
fn without_param(uri: &Uri, name: &str) -> Option<Uri> {
    let query = uri.query()?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    let mut pq = uri.path().to_owned();
    if !kept.is_empty() {
        pq.push('?');
        pq.push_str(&kept.join("&"));
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_key_is_found_and_taken_out() {
        let uri: Uri = "/a/b?x=1&api_key=s%65cret&y=2".parse().unwrap();
        assert_eq!(query_param(&uri, "api_key").unwrap(), b"secret");
        assert_eq!(without_param(&uri, "api_key").unwrap(), "/a/b?x=1&y=2");
        let only: Uri = "/p?api_key=k".parse().unwrap();
        assert_eq!(without_param(&only, "api_key").unwrap(), "/p");
    }
}
