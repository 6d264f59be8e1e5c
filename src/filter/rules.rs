//! Filters that apply rules: IP allow/deny lists on the real client
//! address, header rules on the request and the response, request ids,
//! and CORS (preflights answered here).

use std::net::IpAddr;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::{Answer, EndReason, Filter, Request, RequestEnd, Response};
use crate::config::{Cors, HeaderRules, IpRules, RequestId};

/// Deny wins; a non-empty allow list admits only its networks.
pub fn ip_allows(r: &IpRules, client: IpAddr) -> bool {
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    !r.deny.iter().any(|n| n.contains(&client))
        && (r.allow.is_empty() || r.allow.iter().any(|n| n.contains(&client)))
}

pub struct Ip(IpRules);

impl Ip {
    pub fn new(r: &IpRules) -> Ip {
        Ip(r.clone())
    }
}

impl Filter for Ip {
    fn request(&self, req: &mut Request<'_>) -> Result<(), Answer> {
        if ip_allows(&self.0, req.state.client) {
            Ok(())
        } else {
            Err(Answer::reject(RequestEnd::IpDenied))
        }
    }

    fn connection(&self, client: IpAddr, _now: std::time::Instant) -> Result<(), EndReason> {
        if ip_allows(&self.0, client) {
            Ok(())
        } else {
            Err(EndReason::IpDenied)
        }
    }
}

pub struct Headers(pub HeaderRules);

impl Filter for Headers {
    fn request(&self, req: &mut Request<'_>) -> Result<(), Answer> {
        let r = &self.0;
        for h in &r.request_remove {
            req.headers.remove(h);
        }
        for (h, t) in &r.request_set {
            match req.state.render(t) {
                Some(v) => req.headers.insert(h.clone(), v),
                None => req.headers.remove(h),
            };
        }
        for (h, t) in &r.request_add {
            if let Some(v) = req.state.render(t) {
                req.headers.append(h.clone(), v);
            }
        }
        Ok(())
    }

    fn response(&self, resp: &mut Response<'_>) {
        let r = &self.0;
        for h in &r.response_remove {
            resp.headers.remove(h);
        }
        for (h, t) in &r.response_set {
            match resp.state.render(t) {
                Some(v) => resp.headers.insert(h.clone(), v),
                None => resp.headers.remove(h),
            };
        }
        for (h, t) in &r.response_add {
            if let Some(v) = resp.state.render(t) {
                resp.headers.append(h.clone(), v);
            }
        }
    }
}

pub struct RequestIdFilter(pub RequestId);

/// A request id as a client may send it: 1 to 128 visible characters.
fn usable_id(v: &HeaderValue) -> bool {
    (1..=128).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

/// A new id: 128 random bits as a UUID (version 4).
pub fn new_request_id() -> HeaderValue {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let id = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

impl Filter for RequestIdFilter {
    fn request(&self, req: &mut Request<'_>) -> Result<(), Answer> {
        let r = &self.0;
        let trusted = r
            .trust_from
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(&req.state.peer)));
        let id = match req.headers.get(&r.header) {
            Some(v) if trusted && usable_id(v) => v.clone(),
            _ => {
                let id = new_request_id();
                req.headers.insert(r.header.clone(), id.clone());
                id
            }
        };
        if r.echo {
            req.state
                .response_headers
                .push((r.header.clone(), id.clone()));
        }
        req.state.request_id = Some(id);
        Ok(())
    }
}

pub struct CorsFilter {
    c: Cors,
    methods: HeaderValue,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

impl CorsFilter {
    pub fn new(c: &Cors) -> CorsFilter {
        let value = |s: &Option<String>| s.as_deref().and_then(|s| HeaderValue::from_str(s).ok());
        CorsFilter {
            methods: HeaderValue::from_str(&c.methods)
                .unwrap_or_else(|_| HeaderValue::from_static("GET, HEAD, POST")),
            headers: value(&c.headers),
            expose: value(&c.expose),
            max_age: c.max_age.map(HeaderValue::from),
            c: c.clone(),
        }
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.c.origins.is_empty() {
            return Some(HeaderValue::from_static("*"));
        }
        let o = origin.to_str().ok()?;
        self.c
            .origins
            .iter()
            .any(|a| a.eq_ignore_ascii_case(o))
            .then(|| origin.clone())
    }
}

impl Filter for CorsFilter {
    fn request(&self, req: &mut Request<'_>) -> Result<(), Answer> {
        let Some(origin) = req.headers.get(header::ORIGIN).cloned() else {
            return Ok(());
        };
        let allowed = self.allow_origin(&origin);
        let preflight = *req.method == Method::OPTIONS
            && req
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let mut out: Vec<(HeaderName, HeaderValue)> = Vec::new();
        if let Some(a) = &allowed {
            out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, a.clone()));
            if self.c.credentials {
                out.push((
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                ));
            }
        }
        if !self.c.origins.is_empty() {
            out.push((header::VARY, HeaderValue::from_static("Origin")));
        }
        if !preflight {
            if allowed.is_some() {
                if let Some(e) = &self.expose {
                    out.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone()));
                }
            }
            req.state.response_headers.extend(out);
            return Ok(());
        }
        if allowed.is_none() {
            return Err(Answer::reject(RequestEnd::CorsDenied));
        }
        out.push((header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone()));
        let asked = req
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned();
        if let Some(h) = self.headers.clone().or(asked) {
            out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, h));
        }
        if let Some(m) = &self.max_age {
            out.push((header::ACCESS_CONTROL_MAX_AGE, m.clone()));
        }
        Err(Answer {
            end: RequestEnd::Ok,
            status: StatusCode::NO_CONTENT,
            headers: out,
            body: bytes::Bytes::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_and_allow_lists_admit_only_theirs() {
        let r = IpRules {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny: vec!["10.1.0.0/16".parse().unwrap()],
        };
        assert!(ip_allows(&r, "10.2.3.4".parse().unwrap()));
        assert!(!ip_allows(&r, "10.1.3.4".parse().unwrap()));
        assert!(!ip_allows(&r, "192.168.1.1".parse().unwrap()));
        assert!(ip_allows(&r, "::ffff:10.2.3.4".parse().unwrap()));
    }

    #[test]
    fn request_ids_are_uuids() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert!(usable_id(&id));
    }
}
