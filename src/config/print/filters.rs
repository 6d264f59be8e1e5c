//! `[[filters]]` written back in the file's keys. An inline HMAC secret is
//! not printed (`GET /config` serves this text): it shows as
//! `"(redacted)"`, which `check` refuses, so a printed config with one
//! needs the secret put back (or kept in `secret_file`).

use toml::{Table, Value};

use super::{duration, put, strings};
use crate::config::filter::{
    FilterConfig, FilterKind, JwtKeyMaterial, JwtKeys, KeyPlace, LimitKey, Part, Template,
};

pub fn filter(f: &FilterConfig) -> Value {
    let mut t = Table::new();
    put(&mut t, "name", f.name.as_str());
    match &f.kind {
        FilterKind::BasicAuth(b) => {
            put(&mut t, "kind", "basic_auth");
            put(&mut t, "realm", b.realm.as_str());
            let users: Table = b
                .users
                .iter()
                .map(|(u, h)| (u.clone(), Value::from(h.as_str())))
                .collect();
            put(&mut t, "users", users);
            put(&mut t, "forward_credentials", b.forward_credentials);
        }
        FilterKind::ApiKey(k) => {
            put(&mut t, "kind", "api_key");
            put(&mut t, "realm", k.realm.as_str());
            match &k.place {
                KeyPlace::Header(h) => put(&mut t, "header", h.as_str()),
                KeyPlace::Query(q) => put(&mut t, "query", q.as_str()),
            }
            let keys: Table = k
                .keys
                .iter()
                .map(|(n, h)| {
                    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
                    (n.clone(), Value::from(format!("sha256:{hex}")))
                })
                .collect();
            put(&mut t, "keys", keys);
            put(&mut t, "forward_credentials", k.forward_credentials);
        }
        FilterKind::Jwt(j) => {
            put(&mut t, "kind", "jwt");
            put(&mut t, "realm", j.realm.as_str());
            match &j.keys {
                JwtKeys::Static { algorithm, key } => {
                    put(&mut t, "algorithm", format!("{algorithm:?}"));
                    match key {
                        JwtKeyMaterial::Secret(_) => put(&mut t, "secret", "(redacted)"),
                        JwtKeyMaterial::Pem(p) => put(
                            &mut t,
                            "public_key",
                            String::from_utf8_lossy(p).into_owned(),
                        ),
                    }
                }
                JwtKeys::Jwks { path } => put(&mut t, "jwks_file", path.display().to_string()),
            }
            if !j.issuer.is_empty() {
                put(&mut t, "issuer", strings(j.issuer.iter()));
            }
            if !j.audience.is_empty() {
                put(&mut t, "audience", strings(j.audience.iter()));
            }
            let skew = std::time::Duration::from_secs(j.clock_skew);
            put(
                &mut t,
                "clock_skew",
                if j.clock_skew == 0 {
                    "off".into()
                } else {
                    duration(skew)
                },
            );
            if !j.claims_to_headers.is_empty() {
                let claims: Table = j
                    .claims_to_headers
                    .iter()
                    .map(|(c, h)| (c.clone(), Value::from(h.as_str())))
                    .collect();
                put(&mut t, "claims_to_headers", claims);
            }
            put(&mut t, "forward_credentials", j.forward_credentials);
        }
        FilterKind::Ip(r) => {
            put(&mut t, "kind", "ip");
            put(&mut t, "allow", strings(r.allow.iter()));
            put(&mut t, "deny", strings(r.deny.iter()));
        }
        FilterKind::RateLimit(l) => {
            put(&mut t, "kind", "rate_limit");
            let unit = match l.window.as_secs() {
                1 => "s",
                60 => "m",
                _ => "h",
            };
            put(&mut t, "rate", format!("{}/{unit}", l.count));
            put(&mut t, "burst", i64::from(l.burst));
            let key = match &l.key {
                LimitKey::ClientIp => "client_ip".to_owned(),
                LimitKey::Header(h) => format!("header:{h}"),
                LimitKey::Claim(c) => format!("claim:{c}"),
                LimitKey::ApiKey => "api_key".to_owned(),
                LimitKey::User => "user".to_owned(),
                LimitKey::Route => "route".to_owned(),
            };
            put(&mut t, "key", key);
            put(&mut t, "max_keys", l.max_keys as i64);
        }
        FilterKind::Headers(h) => {
            put(&mut t, "kind", "headers");
            let map = |list: &[(http::HeaderName, Template)]| -> Table {
                list.iter()
                    .map(|(n, v)| (n.to_string(), Value::from(template(v))))
                    .collect()
            };
            for (key, list) in [
                ("request_set", &h.request_set),
                ("request_add", &h.request_add),
                ("response_set", &h.response_set),
                ("response_add", &h.response_add),
            ] {
                if !list.is_empty() {
                    put(&mut t, key, map(list));
                }
            }
            for (key, list) in [
                ("request_remove", &h.request_remove),
                ("response_remove", &h.response_remove),
            ] {
                if !list.is_empty() {
                    put(&mut t, key, strings(list.iter()));
                }
            }
        }
        FilterKind::RequestId(r) => {
            put(&mut t, "kind", "request_id");
            put(&mut t, "header", r.header.as_str());
            if let Some(nets) = &r.trust_from {
                put(&mut t, "trust_from", strings(nets.iter()));
            }
            put(&mut t, "echo", r.echo);
        }
        FilterKind::Cors(c) => {
            put(&mut t, "kind", "cors");
            let origins = if c.origins.is_empty() {
                strings(["*"].iter())
            } else {
                strings(c.origins.iter())
            };
            put(&mut t, "allow_origins", origins);
            let list = |s: &str| strings(s.split(", "));
            put(&mut t, "allow_methods", list(&c.methods));
            if let Some(h) = &c.headers {
                put(&mut t, "allow_headers", list(h));
            }
            if let Some(e) = &c.expose {
                put(&mut t, "expose_headers", list(e));
            }
            put(&mut t, "allow_credentials", c.credentials);
            if let Some(m) = c.max_age {
                put(
                    &mut t,
                    "max_age",
                    duration(std::time::Duration::from_secs(m)),
                );
            }
        }
        FilterKind::Compress(c) => {
            put(&mut t, "kind", "compress");
            put(
                &mut t,
                "encodings",
                strings(c.encodings.iter().map(|e| e.token())),
            );
            put(&mut t, "min_size", c.min_size as i64);
            put(&mut t, "types", strings(c.types.iter()));
        }
        FilterKind::Cache(c) => {
            put(&mut t, "kind", "cache");
            put(&mut t, "max_bytes", c.max_bytes as i64);
            put(&mut t, "max_object_bytes", c.max_object_bytes as i64);
        }
        FilterKind::Custom { kind, settings } => {
            put(&mut t, "kind", kind.as_str());
            if let Ok(v) = Value::try_from(settings) {
                put(&mut t, "settings", v);
            }
        }
    }
    Value::Table(t)
}

/// A template as written.
fn template(t: &Template) -> String {
    t.0.iter()
        .map(|p| match p {
            Part::Text(s) => s.clone(),
            Part::ClientIp => "{client_ip}".into(),
            Part::Route => "{route}".into(),
            Part::RequestId => "{request_id}".into(),
            Part::Sni => "{sni}".into(),
            Part::Claim(c) => format!("{{claim.{c}}}"),
        })
        .collect()
}
