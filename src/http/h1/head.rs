//! HTTP/1.1 message heads on the client side: finding where a request head
//! ends, parsing it with `httparse` into `http` types without copying the
//! bytes (header values and the target are slices of the read buffer),
//! deciding the body's framing under the smuggling rules (RFC 9112 §6), and
//! encoding response heads.

use std::mem::MaybeUninit;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};

/// Why a request head was refused; each is answered before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 431: the head or the header count is over the limit.
    TooLarge,
    /// 414: the request target is over the limit.
    UriTooLong,
    /// 400: malformed, or ambiguous framing.
    Bad(&'static str),
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

pub struct Head {
    pub request: Request<()>,
    pub framing: Framing,
    /// The client lets the connection stay open after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
}

/// What a `Connection` header value says, token by token (shared by the
/// request and response parsers): close, keep-alive, or anything else
/// (headers it names, an upgrade), which keeps it in the header map.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
    pub other: bool,
}

impl ConnectionTokens {
    pub fn of(value: &[u8]) -> ConnectionTokens {
        let mut tokens = ConnectionTokens::default();
        for t in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if t.eq_ignore_ascii_case(b"close") {
                tokens.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                tokens.keep_alive = true;
            } else if !t.is_empty() {
                tokens.other = true;
            }
        }
        tokens
    }
}

/// The length of the head at the start of `buf` (through its blank line),
/// if it is all there. A line ending in a bare LF also ends the search; the
/// parser then refuses it.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr_lf(&buf[from..]) {
        let lf = from + i;
        match buf.get(lf + 1) {
            Some(b'\n') => return Some(lf + 2),
            Some(b'\r') if buf.get(lf + 2) == Some(&b'\n') => return Some(lf + 3),
            Some(b'\r') | Some(_) => from = lf + 1,
            None => return None,
        }
    }
    None
}

fn memchr_lf(b: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', b)
}

/// Parses a complete head (`head_end` bytes).
pub fn parse_request(head: &Bytes, max_headers: usize, max_uri: usize) -> Result<Head, HeadError> {
    // Every line must end in CRLF: a bare LF is read differently by
    // different parsers, so it is refused rather than normalized.
    if memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r') {
        return Err(HeadError::Bad("bare LF"));
    }
    // Slots left uninitialized: httparse writes those it fills, and
    // zeroing 128 of them (4 KiB) cost more than parsing a small head.
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let mut big = Vec::new();
    let slots = if max_headers <= storage.len() {
        &mut storage[..max_headers]
    } else {
        big.reserve_exact(max_headers);
        &mut big.spare_capacity_mut()[..max_headers]
    };
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, slots) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Bad("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Bad("malformed head")),
    }
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Bad("incomplete request line"));
    };
    if path.len() > max_uri {
        return Err(HeadError::UriTooLong);
    }
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Bad("bad method"))?;
    let uri = Uri::from_maybe_shared(head.slice_ref(path.as_bytes()))
        .map_err(|_| HeadError::Bad("bad request target"))?;
    // Room for the headers the request path adds (X-Forwarded-For, -Proto,
    // -Host, Via): no regrowth. (Not more: `HeaderMap` rounds capacity up
    // to 6, 12, 24 entries of 104 bytes, and 12 of them leave the
    // allocator's small-object path.)
    let mut headers = HeaderMap::with_capacity(req.headers.len() + 4);
    // `Connection` tokens: close and keep-alive decide this connection's
    // fate here. A `Connection` header with nothing else never enters the
    // map (it is hop-by-hop); one naming other headers or an upgrade stays
    // for the request path.
    let (mut close, mut keep) = (false, false);
    let (mut lengths, mut framed, mut expect) = (0usize, false, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            if !h
                .value
                .iter()
                .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
            {
                return Err(HeadError::Bad("bad header value"));
            }
            let tokens = ConnectionTokens::of(h.value);
            close |= tokens.close;
            keep |= tokens.keep_alive;
            if !tokens.other {
                continue;
            }
        }
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Bad("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value))
            .map_err(|_| HeadError::Bad("bad header value"))?;
        // (Comparing standard names is an integer compare.)
        if name == header::CONTENT_LENGTH {
            lengths += 1;
        } else if name == header::TRANSFER_ENCODING {
            framed = true;
        } else if name == header::EXPECT {
            expect = true;
        }
        headers.append(name, value);
    }
    // A request with neither header has no body: no lookups needed.
    let framing = if framed || lengths > 0 {
        framing(&headers, version)?
    } else {
        Framing::Empty
    };
    // One Content-Length left when duplicates were identical.
    if let Framing::Length(n) = framing {
        if lengths > 1 {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    let keep_alive = if version == Version::HTTP_11 {
        !close
    } else {
        keep
    };
    let expect_continue = version == Version::HTTP_11
        && expect
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Head {
        request,
        framing,
        keep_alive,
        expect_continue,
    })
}

/// RFC 9112 §6.3, strictly: Transfer-Encoding and Content-Length together,
/// a Transfer-Encoding other than a single final `chunked`, one on HTTP/1.0,
/// or Content-Length values that differ or are not digits: all refused.
fn framing(headers: &HeaderMap, version: Version) -> Result<Framing, HeadError> {
    let has_te = headers.contains_key(header::TRANSFER_ENCODING);
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if has_te {
        if lengths.next().is_some() {
            return Err(HeadError::Bad("both Content-Length and Transfer-Encoding"));
        }
        if version == Version::HTTP_10 {
            return Err(HeadError::Bad("Transfer-Encoding on HTTP/1.0"));
        }
        let mut codings = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|c| c.trim_ascii());
        return match (codings.next(), codings.next()) {
            (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            _ => Err(HeadError::Bad(
                "Transfer-Encoding other than a single chunked",
            )),
        };
    }
    let mut length = None;
    for v in lengths {
        let b = v.as_bytes();
        if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::Bad("malformed Content-Length"));
        }
        let n: u64 = v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(HeadError::Bad("malformed Content-Length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(HeadError::Bad("differing Content-Length values"));
        }
        length = Some(n);
    }
    Ok(match length {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// Exactly this many bytes (a Content-Length is present).
    Length,
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, unknown length).
    Close,
}

// Built at compile time (a `from_static` in a function body checks its
// bytes at every call).
const CHUNKED: HeaderValue = HeaderValue::from_static("chunked");
const CLOSE: HeaderValue = HeaderValue::from_static("close");
const KEEP_ALIVE: HeaderValue = HeaderValue::from_static("keep-alive");

/// Writes the status line and headers of a response into `dst` and says
/// how its body is to be framed. `keep_alive` is turned off when the
/// framing needs the connection to close.
pub fn encode_response(
    dst: &mut Vec<u8>,
    status: StatusCode,
    headers: &mut HeaderMap,
    exact_len: Option<u64>,
    head_request: bool,
    client: Version,
    keep_alive: &mut bool,
) -> ResponseFraming {
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // One pass over the names (a handful; comparing standard names is an
    // integer compare) instead of a lookup for each.
    let (mut has_length, mut asked_close, mut has_date) = (false, false, false);
    for (name, value) in headers.iter() {
        if name == header::CONTENT_LENGTH {
            has_length = true;
        } else if name == header::DATE {
            has_date = true;
        } else if name == header::CONNECTION && value.as_bytes().eq_ignore_ascii_case(b"close") {
            asked_close = true;
        }
    }
    let framing = if bodiless {
        if !head_request && status != StatusCode::NOT_MODIFIED {
            headers.remove(header::CONTENT_LENGTH);
        }
        ResponseFraming::None
    } else if has_length {
        ResponseFraming::Length
    } else if let Some(n) = exact_len {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        ResponseFraming::Length
    } else if client == Version::HTTP_11 {
        headers.insert(header::TRANSFER_ENCODING, CHUNKED);
        ResponseFraming::Chunked
    } else {
        *keep_alive = false;
        ResponseFraming::Close
    };
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if asked_close {
            *keep_alive = false;
        }
        if !*keep_alive && !asked_close {
            headers.insert(header::CONNECTION, CLOSE);
        } else if *keep_alive && client == Version::HTTP_10 {
            headers.insert(header::CONNECTION, KEEP_ALIVE);
        }
    }
    let add_date = !has_date;
    dst.extend_from_slice(b"HTTP/1.1 ");
    dst.extend_from_slice(status.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    dst.extend_from_slice(b"\r\n");
    write_fields(dst, headers);
    if add_date {
        // Written here, not inserted: the map need not grow for it.
        dst.extend_from_slice(b"date: ");
        dst.extend_from_slice(date_now().as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    framing
}

/// Writes header fields as `name: value` lines (a head's, or trailers').
pub fn write_fields(dst: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        write_field(dst, name, value);
    }
}

/// Writes one `name: value` line.
pub fn write_field(dst: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    dst.extend_from_slice(name.as_str().as_bytes());
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value.as_bytes());
    dst.extend_from_slice(b"\r\n");
}

/// The `Date` value for now, formatted once per second per thread.
pub fn date_now() -> HeaderValue {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHE: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
                *c = (secs, v);
            }
        }
        c.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Head, HeadError> {
        let b = Bytes::copy_from_slice(text.as_bytes());
        let end = head_end(&b).expect("complete head");
        parse_request(&b.slice(..end), 100, 8192)
    }

    #[test]
    fn connection_tokens_decide_keep_alive_and_plain_ones_stay_out_of_the_map() {
        let h = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        assert!(!h.request.headers().contains_key("connection"));
        let h = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(h.keep_alive);
        let h = parse("GET / HTTP/1.0\r\nHost: a\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let h = parse("GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(h.keep_alive);
        // Naming another header, or an upgrade: kept for the request path.
        let h = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        assert_eq!(h.request.headers()["connection"], "close, X-Secret");
        let h =
            parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .unwrap();
        assert!(h.keep_alive);
        assert_eq!(h.request.headers()["connection"], "Upgrade");
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\x7f\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
    }

    #[test]
    fn framing_rules() {
        let h = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        let h = parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let h =
            parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
                .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert_eq!(
            h.request.headers().get_all("content-length").iter().count(),
            1
        );
        for bad in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        ] {
            assert!(matches!(parse(bad), Err(HeadError::Bad(_))), "{bad:?}");
        }
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
    }
}
