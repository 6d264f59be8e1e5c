//! The authentication kinds' settings: `basic_auth` (password hashes,
//! never plain text), `api_key` (SHA-256 of each key) and `jwt` (one key
//! checked against its algorithm, or a JWKS file checked whole).

use http::HeaderName;
use jsonwebtoken::{Algorithm, DecodingKey, jwk::JwkSet};

use super::{ApiKey, BasicAuth, Jwt, JwtKeyMaterial, JwtKeys, KeyPlace};
use crate::config::Ctx;
use crate::config::raw::{RawFilter, S};

impl Ctx<'_> {
    pub(super) fn realm(&mut self, f: &RawFilter, field: &dyn Fn(&str) -> String) -> String {
        f.realm
            .as_ref()
            .and_then(|r| self.string(r, &field("realm")))
            .filter(|r| !r.contains('"'))
            .unwrap_or_else(|| "gatehouse".into())
    }

    pub(super) fn forward_credentials(&self, f: &RawFilter) -> bool {
        f.forward_credentials.as_ref().is_some_and(|v| *v.get_ref())
    }

    pub(super) fn basic_auth(
        &mut self,
        f: &RawFilter,
        field: &dyn Fn(&str) -> String,
    ) -> Option<BasicAuth> {
        let mut users = Vec::new();
        if let Some(map) = &f.users {
            for (user, hash) in map.get_ref() {
                let Some(h) = self.string(hash, &field(&format!("users.{user}"))) else {
                    continue;
                };
                match password_hash_problem(&h) {
                    None => users.push((user.clone(), h)),
                    Some(m) => self.err(&hash.span(), &field(&format!("users.{user}")), m),
                }
            }
        }
        if let Some(file) = &f.users_file {
            if let Some((path, text)) = self.file_text(file, &field("users_file")) {
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    match line.split_once(':') {
                        Some((user, hash)) if password_hash_problem(hash).is_none() => {
                            users.push((user.to_owned(), hash.to_owned()))
                        }
                        _ => {
                            let message = format!(
                                "{}:{}: not `user:hash` with an argon2 or bcrypt hash",
                                path.display(),
                                n + 1
                            );
                            self.err(&file.span(), &field("users_file"), &message);
                        }
                    }
                }
            }
        }
        if users.is_empty() && f.users.is_none() && f.users_file.is_none() {
            self.err(
                &f.kind.span(),
                &field("users"),
                "basic_auth needs users or users_file",
            );
            return None;
        }
        Some(BasicAuth {
            realm: self.realm(f, field),
            users,
            forward_credentials: self.forward_credentials(f),
        })
    }

    pub(super) fn api_key(
        &mut self,
        f: &RawFilter,
        field: &dyn Fn(&str) -> String,
    ) -> Option<ApiKey> {
        let place = match (&f.header, &f.query) {
            (Some(_), Some(q)) => {
                self.err(&q.span(), &field("query"), "header or query, not both");
                return None;
            }
            (_, Some(q)) => KeyPlace::Query(self.string(q, &field("query"))?),
            (Some(h), None) => KeyPlace::Header(self.header_name(h, &field("header"))?),
            (None, None) => KeyPlace::Header(HeaderName::from_static("x-api-key")),
        };
        const HASHED: &str = "keys are stored hashed: \"sha256:\" and 64 hex digits";
        let mut keys = Vec::new();
        if let Some(map) = &f.keys {
            for (name, v) in map.get_ref() {
                let at = field(&format!("keys.{name}"));
                if let Some(value) = self.string(v, &at) {
                    match key_hash(&value) {
                        Some(h) => keys.push((name.clone(), h)),
                        None => self.err(&v.span(), &at, HASHED),
                    }
                }
            }
        }
        if let Some(file) = &f.keys_file {
            if let Some((_, text)) = self.file_text(file, &field("keys_file")) {
                for line in text.lines().map(str::trim) {
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let (name, value) = line.split_once(char::is_whitespace).unwrap_or(("", line));
                    match key_hash(value.trim()) {
                        Some(h) => keys.push((name.to_owned(), h)),
                        None => self.err(&file.span(), &field("keys_file"), HASHED),
                    }
                }
            }
        }
        if f.keys.is_none() && f.keys_file.is_none() {
            self.err(
                &f.kind.span(),
                &field("keys"),
                "api_key needs keys or keys_file",
            );
            return None;
        }
        Some(ApiKey {
            realm: self.realm(f, field),
            place,
            keys,
            forward_credentials: self.forward_credentials(f),
        })
    }

    pub(super) fn jwt(&mut self, f: &RawFilter, field: &dyn Fn(&str) -> String) -> Option<Jwt> {
        let keys = if let Some(jwks) = &f.jwks_file {
            if let Some(other) = [&f.secret, &f.secret_file, &f.public_key, &f.public_key_file]
                .into_iter()
                .flatten()
                .next()
            {
                self.err(
                    &other.span(),
                    &field("jwks_file"),
                    "jwks_file or one key, not both",
                );
                return None;
            }
            let (path, text) = self.file_text(jwks, &field("jwks_file"))?;
            if let Err(m) = check_jwks(&text) {
                let message = format!("{}: {m}", path.display());
                self.err(&jwks.span(), &field("jwks_file"), &message);
                return None;
            }
            JwtKeys::Jwks { path }
        } else {
            let Some(alg) = &f.algorithm else {
                self.err(
                    &f.kind.span(),
                    &field("algorithm"),
                    "jwt needs jwks_file, or algorithm with a key",
                );
                return None;
            };
            let alg_text = self.string(alg, &field("algorithm"))?;
            let Ok(algorithm) = alg_text.parse::<Algorithm>() else {
                let message = format!(
                    "{alg_text:?} is not one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
                );
                self.err(&alg.span(), &field("algorithm"), &message);
                return None;
            };
            let key = self.jwt_key(f, field, algorithm)?;
            JwtKeys::Static { algorithm, key }
        };
        let list = |ctx: &mut Self, v: &Option<S<Vec<S<String>>>>, at: &str| {
            v.as_ref()
                .map(|l| ctx.strings(l, &field(at)))
                .unwrap_or_default()
        };
        let issuer = list(self, &f.issuer, "issuer");
        let audience = list(self, &f.audience, "audience");
        let clock_skew = match &f.clock_skew {
            Some(v) => self
                .duration(v, &field("clock_skew"), true)
                .flatten()
                .map_or(0, |d| d.as_secs()),
            None => 30,
        };
        let mut claims_to_headers = Vec::new();
        if let Some(map) = &f.claims_to_headers {
            for (claim, header) in map.get_ref() {
                let at = field(&format!("claims_to_headers.{claim}"));
                if let Some(h) = self.header_name(header, &at) {
                    claims_to_headers.push((claim.clone(), h));
                }
            }
        }
        Some(Jwt {
            realm: self.realm(f, field),
            keys,
            issuer,
            audience,
            clock_skew,
            claims_to_headers,
            forward_credentials: self.forward_credentials(f),
        })
    }

    /// The one key of a `jwt` filter, checked against its algorithm.
    pub(super) fn jwt_key(
        &mut self,
        f: &RawFilter,
        field: &dyn Fn(&str) -> String,
        algorithm: Algorithm,
    ) -> Option<JwtKeyMaterial> {
        let hmac = matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        let (which, span, bytes) =
            match (&f.secret, &f.secret_file, &f.public_key, &f.public_key_file) {
                (Some(s), None, None, None) => (
                    "secret",
                    s.span(),
                    self.string(s, &field("secret"))?.into_bytes(),
                ),
                (None, Some(p), None, None) => {
                    let (_, text) = self.file_text(p, &field("secret_file"))?;
                    ("secret_file", p.span(), text.trim_end().as_bytes().to_vec())
                }
                (None, None, Some(k), None) => (
                    "public_key",
                    k.span(),
                    self.string(k, &field("public_key"))?.into_bytes(),
                ),
                (None, None, None, Some(p)) => {
                    let (_, text) = self.file_text(p, &field("public_key_file"))?;
                    ("public_key_file", p.span(), text.into_bytes())
                }
                _ => {
                    self.err(
                        &f.kind.span(),
                        &field("algorithm"),
                        "exactly one of secret, secret_file, public_key, public_key_file",
                    );
                    return None;
                }
            };
        let secret = which.starts_with("secret");
        if hmac != secret {
            let message = if hmac {
                format!("{algorithm:?} verifies with a secret, not a public key")
            } else {
                format!("{algorithm:?} verifies with a public key, not a secret")
            };
            self.err(&span, &field(which), &message);
            return None;
        }
        if hmac {
            if bytes.len() < 32 {
                self.err(
                    &span,
                    &field(which),
                    "an HMAC secret needs at least 32 bytes",
                );
                return None;
            }
            return Some(JwtKeyMaterial::Secret(bytes));
        }
        if let Err(e) = decoding_key(algorithm, &bytes) {
            let message = format!("not a {algorithm:?} public key (PEM): {e}");
            self.err(&span, &field(which), &message);
            return None;
        }
        Some(JwtKeyMaterial::Pem(bytes))
    }
}

/// Why `hash` is not a password hash we verify, if it is not.
fn password_hash_problem(hash: &str) -> Option<&'static str> {
    if hash.starts_with("$argon2") {
        return argon2::PasswordHash::new(hash)
            .err()
            .map(|_| "not a valid argon2 hash (PHC string)");
    }
    if hash.starts_with("$2") {
        return hash
            .parse::<bcrypt::HashParts>()
            .err()
            .map(|_| "not a valid bcrypt hash");
    }
    Some("passwords are stored hashed: an argon2 PHC string ($argon2id$…) or a bcrypt hash ($2b$…)")
}

/// `sha256:HEX` as bytes.
fn key_hash(v: &str) -> Option<[u8; 32]> {
    let hex = v.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The verifying key of a PEM public key for `algorithm`.
pub fn decoding_key(algorithm: Algorithm, pem: &[u8]) -> Result<DecodingKey, String> {
    use Algorithm as A;
    let key = match algorithm {
        A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => {
            DecodingKey::from_rsa_pem(pem)
        }
        A::ES256 | A::ES384 => DecodingKey::from_ec_pem(pem),
        A::EdDSA => DecodingKey::from_ed_pem(pem),
        A::HS256 | A::HS384 | A::HS512 => return Ok(DecodingKey::from_secret(pem)),
        _ => return Err(format!("{algorithm:?} is not supported")),
    };
    key.map_err(|e| e.to_string())
}

/// Checks a JWKS document: JSON, with keys, each usable for verifying.
pub fn check_jwks(text: &str) -> Result<JwkSet, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    if set.keys.is_empty() {
        return Err("the JWKS has no keys".into());
    }
    for (i, k) in set.keys.iter().enumerate() {
        DecodingKey::from_jwk(k).map_err(|e| format!("key {i}: {e}"))?;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_are_hex() {
        assert!(key_hash(&format!("sha256:{}", "ab".repeat(32))).is_some());
        assert!(key_hash("plain").is_none());
        assert!(key_hash("sha256:zz").is_none());
    }
}
