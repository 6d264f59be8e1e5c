//! Header rules of the request path: request-smuggling checks on what the
//! client sent, hop-by-hop removal (both directions), and the forwarding
//! headers the proxy adds (X-Forwarded-*, Forwarded, Via).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};

/// Rejects anything whose framing could be read two ways. hyper has already
/// refused malformed syntax (bad bytes, obs-fold, invalid lengths); these are
/// the ambiguities it tolerates.
pub fn check_request<B>(req: &Request<B>) -> Result<(), &'static str> {
    check_framing(req)?;
    check_host(req)
}

/// `Host` rules alone (our HTTP/1 parser has applied the framing rules and
/// `http`'s header types have refused control characters already).
pub fn check_host<B>(req: &Request<B>) -> Result<(), &'static str> {
    let h = req.headers();
    let mut hosts = h.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err("more than one Host"),
        // RFC 9112 §3.2: an HTTP/1.1 request without Host gets 400.
        (None, None) if req.version() == Version::HTTP_11 && req.uri().authority().is_none() => {
            return Err("HTTP/1.1 request without Host");
        }
        (host, _) => host,
    };
    // RFC 9112 §3.2: an invalid Host value gets 400; so does an invalid
    // authority in an absolute-form target or HTTP/2's `:authority`.
    if host.is_some_and(|v| !valid_authority(v.as_bytes())) {
        return Err("invalid Host");
    }
    if req
        .uri()
        .authority()
        .is_some_and(|a| !valid_authority(a.as_str().as_bytes()))
    {
        return Err("invalid authority in the target");
    }
    Ok(())
}

/// An authority as a request may name it (RFC 3986 §3.2, without
/// userinfo): `host [":" port]`, the host an IPv6 literal in brackets or a
/// non-empty reg-name of unreserved characters and sub-delims, the port at
/// most 65535. Percent-encoded bytes are refused: no DNS name has them,
/// and a decoded CR LF must never reach a header. (The same rule as
/// nginx and HAProxy apply: what could be read two ways is refused.)
pub fn valid_authority(v: &[u8]) -> bool {
    let (host_ok, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = memchr::memchr(b']', rest) else {
            return false;
        };
        let literal = std::str::from_utf8(&rest[..end])
            .ok()
            .is_some_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
        let port = match &rest[end + 1..] {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return false,
        };
        (literal, port)
    } else {
        let (host, port) = match memchr::memrchr(b':', v) {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        };
        let reg_name = !host.is_empty()
            && host.iter().all(|&b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'-' | b'.' | b'_' | b'~')
                    || matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')')
                    || matches!(b, b'*' | b'+' | b',' | b';' | b'=')
            });
        (reg_name, port)
    };
    let port_ok = port.is_none_or(|p| {
        p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && (p.is_empty()
                || std::str::from_utf8(p)
                    .ok()
                    .and_then(|p| p.parse::<u16>().ok())
                    .is_some())
    });
    host_ok && port_ok
}

fn check_framing<B>(req: &Request<B>) -> Result<(), &'static str> {
    let h = req.headers();
    let mut cl = h.get_all(header::CONTENT_LENGTH).iter();
    let first_cl = cl.next();
    if cl.next().is_some() {
        return Err("more than one Content-Length");
    }
    let te = h.get_all(header::TRANSFER_ENCODING);
    if let Some(v) = first_cl {
        if v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit) {
            return Err("malformed Content-Length");
        }
    }
    if te.iter().next().is_some() {
        if first_cl.is_some() {
            return Err("both Content-Length and Transfer-Encoding");
        }
        if req.version() == Version::HTTP_10 {
            return Err("Transfer-Encoding on HTTP/1.0");
        }
        let codings: Vec<String> = te
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        if codings != ["chunked"] {
            return Err("Transfer-Encoding other than a single chunked");
        }
    }
    for (name, value) in h {
        if value
            .as_bytes()
            .iter()
            .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(if name == header::HOST {
                "control character in Host"
            } else {
                "control character in a header value"
            });
        }
    }
    Ok(())
}

/// Hop-by-hop header names. `Trailer` is not one: RFC 9110 §6.6.2 makes it
/// end-to-end, and hyper only relays trailer fields a `Trailer` header
/// announces. `TE` is among them (`TE: trailers` is put back).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers and every header named in `Connection`.
/// With `upgrade`, `Connection: upgrade` and `Upgrade` survive (an upgrade
/// being proxied). `TE: trailers` survives; other `TE` values do not.
pub fn remove_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none of them: one pass over the names, no hashing.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    // Headers named in `Connection`: the usual tokens (close, keep-alive,
    // upgrade) name nothing beyond the hop-by-hop headers themselves, so
    // the list is built only when there is something else.
    let usual = |t: &str| {
        t.is_empty()
            || t.eq_ignore_ascii_case("close")
            || t.eq_ignore_ascii_case("keep-alive")
            || t.eq_ignore_ascii_case("upgrade")
    };
    let tokens = |h: &HeaderMap| {
        h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|t| !usual(t))
    };
    if tokens(h) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !usual(t))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            h.remove(name);
        }
    }
    let upgrade_value = if upgrade {
        h.get(header::UPGRADE).cloned()
    } else {
        None
    };
    let keep_te = h
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // Usually one or two are present: a pass over the names finds each,
    // and only those are looked up to be removed.
    while let Some(name) = h.keys().find(|k| is_hop_by_hop(k)).cloned() {
        h.remove(name);
    }
    if keep_te {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(u) = upgrade_value {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u);
    }
}

// Built at compile time (a `from_static` in a function body may run at
// every call).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const PROTO_HTTP: HeaderValue = HeaderValue::from_static("http");
const PROTO_HTTPS: HeaderValue = HeaderValue::from_static("https");
const VIA_10: HeaderValue = HeaderValue::from_static("1.0 gatehouse");
const VIA_11: HeaderValue = HeaderValue::from_static("1.1 gatehouse");
const VIA_2: HeaderValue = HeaderValue::from_static("2 gatehouse");

pub struct ForwardedFor<'a> {
    pub client: IpAddr,
    /// `client` as a header value, made once per connection.
    pub client_value: &'a HeaderValue,
    pub proto: &'static str,
    pub host: Option<&'a HeaderValue>,
    /// The peer is a trusted proxy: keep and append to its forwarding headers.
    pub trusted: bool,
    pub forwarded: bool,
}

/// Fields this hop sets on a request, decided once and applied where the
/// request is written: into its header map for hyper's HTTP/2 client, or
/// as bytes by our HTTP/1.1 client, which then leaves out the map's fields
/// of those names (a set costs no hashing and no growth of the map). Each
/// entry replaces every field of its name; `None` removes them.
#[derive(Default, Clone)]
pub struct SetFields {
    fields: Vec<(HeaderName, Option<HeaderValue>)>,
}

impl SetFields {
    pub fn with_capacity(n: usize) -> SetFields {
        SetFields {
            fields: Vec::with_capacity(n),
        }
    }

    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.fields.push((name, Some(value)));
    }

    /// Sets `name`, replacing an entry of that name set before.
    pub fn replace(&mut self, name: HeaderName, value: HeaderValue) {
        match self.fields.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => *v = Some(value),
            None => self.set(name, value),
        }
    }

    pub fn remove(&mut self, name: HeaderName) {
        self.fields.push((name, None));
    }

    /// Whether the map's fields of this name are replaced (or removed).
    pub fn replaces(&self, name: &HeaderName) -> bool {
        self.fields.iter().any(|(n, _)| n == name)
    }

    /// The fields set, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.fields
            .iter()
            .filter_map(|(n, v)| v.as_ref().map(|v| (n, v)))
    }

    /// Applies them to `h` (and forgets them: applied once).
    pub fn apply(&mut self, h: &mut HeaderMap) {
        for (name, value) in self.fields.drain(..) {
            match value {
                Some(v) => {
                    h.insert(name, v);
                }
                None => {
                    h.remove(name);
                }
            }
        }
    }
}

/// X-Forwarded-For/Proto/Host and, optionally, `Forwarded` (RFC 7239), for
/// a request with headers `h`, into `set`.
pub fn forwarding_fields(h: &HeaderMap, f: &ForwardedFor<'_>, set: &mut SetFields) {
    let xff = X_FORWARDED_FOR;
    let prior: Vec<&str> = if f.trusted {
        h.get_all(&xff)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    } else {
        Vec::new()
    };
    let value = if prior.is_empty() {
        f.client_value.clone()
    } else {
        let joined = format!("{}, {}", prior.join(", "), f.client);
        HeaderValue::from_str(&joined).unwrap_or_else(|_| f.client_value.clone())
    };
    set.set(xff, value);
    let (xfp, xfh) = (X_FORWARDED_PROTO, X_FORWARDED_HOST);
    if !(f.trusted && h.contains_key(&xfp)) {
        set.set(
            xfp,
            match f.proto {
                "https" => PROTO_HTTPS,
                "http" => PROTO_HTTP,
                other => HeaderValue::from_static(other),
            },
        );
    }
    if !(f.trusted && h.contains_key(&xfh)) {
        match f.host {
            Some(host) => set.set(xfh, host.clone()),
            None => set.remove(xfh),
        }
    }
    if f.forwarded {
        let node = match f.client {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("\"[{ip}]\""),
        };
        let mut element = format!("for={node};proto={}", f.proto);
        if let Some(host) = f.host.and_then(|h| h.to_str().ok()) {
            if host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            {
                element.push_str(&format!(";host=\"{host}\""));
            }
        }
        let prior: Vec<String> = if f.trusted {
            h.get_all(header::FORWARDED)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        };
        let value = if prior.is_empty() {
            element
        } else {
            format!("{}, {element}", prior.join(", "))
        };
        match HeaderValue::from_str(&value) {
            Ok(v) => set.set(header::FORWARDED, v),
            Err(_) => set.remove(header::FORWARDED),
        }
    }
}

/// This hop appended to the `Via` of `h` (RFC 9110 §7.6.3), into `set`.
pub fn via_field(h: &HeaderMap, version: Version, set: &mut SetFields) {
    let hop = via_hop(version);
    let value = match h.get(header::VIA) {
        None => hop,
        Some(prior) => match merged_via(prior, &hop) {
            Some(v) => v,
            None => return, // (a prior value that is no text stays as it is)
        },
    };
    set.set(header::VIA, value);
}

fn via_hop(version: Version) -> HeaderValue {
    match version {
        Version::HTTP_10 => VIA_10,
        Version::HTTP_2 => VIA_2,
        _ => VIA_11,
    }
}

fn merged_via(prior: &HeaderValue, hop: &HeaderValue) -> Option<HeaderValue> {
    let prior = prior.to_str().ok()?;
    HeaderValue::from_str(&format!(
        "{prior}, {}",
        String::from_utf8_lossy(hop.as_bytes())
    ))
    .ok()
}

/// The `Sec-WebSocket-Accept` a server must answer a `Sec-WebSocket-Key`
/// with (RFC 6455 §4.2.2): base64 of the SHA-1 of the key and the GUID.
pub fn websocket_accept(key: &HeaderValue) -> HeaderValue {
    use base64::Engine as _;
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    let accept = base64::engine::general_purpose::STANDARD.encode(sha1.as_ref());
    // (Base64 is always a valid value.)
    HeaderValue::from_str(&accept).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Appends this hop to `Via` (RFC 9110 §7.6.3).
pub fn add_via(h: &mut HeaderMap, version: Version) {
    let hop = via_hop(version);
    // One lookup: usually there is no `Via` yet.
    match h.entry(header::VIA) {
        http::header::Entry::Vacant(v) => {
            v.insert(hop);
        }
        http::header::Entry::Occupied(mut o) => {
            if let Some(v) = merged_via(o.get(), &hop) {
                o.insert(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn authority_grammar() {
        for good in [
            "a",
            "www.example.test",
            "www.example.test:8080",
            "App.Test:",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "under_score.test",
        ] {
            assert!(valid_authority(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "",
            ":80",
            "a b",
            "evil.com@www.example.test",
            "www.example.test/../x",
            "%0d%0aSet-Cookie:x",
            "a\\b",
            "a:99999",
            "a:8x",
            "a:1:2",
            "[::1",
            "[::1]x",
            "[nothex]",
            "a\"b",
            "a?b",
            "a#b",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad:?}");
        }
    }
    use super::*;

    #[test]
    fn websocket_accept_is_rfc_6455s() {
        // RFC 6455 §1.3's example.
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(websocket_accept(&key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(h.contains_key("x-kept"));
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }

    #[test]
    fn forwarding_headers_replace_untrusted_values() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let host = HeaderValue::from_static("app.test");
        let client_value = HeaderValue::from_static("10.0.0.9");
        let f = ForwardedFor {
            client: "10.0.0.9".parse().unwrap(),
            client_value: &client_value,
            proto: "http",
            host: Some(&host),
            trusted: false,
            forwarded: true,
        };
        let mut set = SetFields::default();
        forwarding_fields(&h, &f, &mut set);
        set.apply(&mut h);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "app.test");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=10.0.0.9;proto=http;host=\"app.test\""
        );
        let mut h2 = HeaderMap::new();
        h2.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h2.insert("forwarded", HeaderValue::from_static("for=1.1.1.1"));
        h2.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let mut set = SetFields::default();
        forwarding_fields(&h2, &ForwardedFor { trusted: true, ..f }, &mut set);
        via_field(&h2, Version::HTTP_11, &mut set);
        set.apply(&mut h2);
        assert_eq!(h2.get("x-forwarded-for").unwrap(), "1.1.1.1, 10.0.0.9");
        assert_eq!(h2.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(
            h2.get("forwarded").unwrap(),
            "for=1.1.1.1, for=10.0.0.9;proto=http;host=\"app.test\""
        );
        assert_eq!(h2.get("via").unwrap(), "1.1 gatehouse");
        assert_eq!(set.fields().count(), 0, "applied once");
    }
}
