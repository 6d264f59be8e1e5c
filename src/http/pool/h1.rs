//! Our HTTP/1.1 client for bodiless requests over plain TCP: the request
//! head is written and the response read by the task that owns the client's
//! request, with no connection task and no hand-off in between. Requests
//! with a body, upgrades, TLS and HTTP/2 upstreams go through hyper's
//! client instead (`Sender::H1`/`H2`).
//!
//! A response is framed strictly (RFC 9112 §6.3): no body for HEAD, 1xx,
//! 204 and 304; chunked when Transfer-Encoding ends in chunked; else by a
//! valid Content-Length; else until the upstream closes. A connection goes
//! back to the pool only when its response was read exactly to its end,
//! the upstream keeps it alive, and nothing more arrived after it. A
//! request dropped in mid-exchange leaves its connection knowing what it
//! owes (`Pending`): nothing, or a response that `drain` reads and discards
//! (bounded in bytes and time) so that the connection can serve another.

use std::io;
use std::mem::MaybeUninit;
#[cfg(feature = "send-batch")]
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[cfg(feature = "send-batch")]
use super::send_batch::Sent;
use super::{PooledConn, Sender};
use crate::http::body::{BodyError, StreamError};
use crate::http::h1::body::Decoder;
use crate::http::h1::head::{ConnectionTokens, Framing, head_end, write_field};
use crate::http::headers::SetFields;

/// Largest response head accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted from an upstream.
const MAX_HEADERS: usize = 128;

/// A plain TCP connection to an upstream and what was read from it.
pub struct RawConn {
    stream: TcpStream,
    buf: BytesMut,
    /// Where its last request stands, for when that request is dropped
    /// (its client went away) before its response head was read.
    pending: Pending,
}

/// What a connection owes, seen from a request dropped in mid-exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// Nothing: no request on it, or one whose bytes never left.
    Clean,
    /// A request was written whole; its response has not been read.
    Response { head_request: bool },
    /// Anything else (part of a request written, a response half read, a
    /// failure): the connection cannot serve another request.
    Unknown,
}

/// The most a dropped request's response may bring for its connection to
/// be kept (`RawConn::drain`), and how long it may take.
const DRAIN_MAX: usize = 64 * 1024;
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(feature = "send-batch")]
/// The send of a request head, as the exchange awaits it: dropped with the
/// exchange, the connection is clean if no byte left, owes the response if
/// all of them did.
struct Sending<'a> {
    send: super::send_batch::Send,
    pending: &'a mut Pending,
    head_request: bool,
}

#[cfg(feature = "send-batch")]
impl Drop for Sending<'_> {
    fn drop(&mut self) {
        use super::send_batch::Progress;
        *self.pending = match self.send.progress() {
            Progress::Unsent => Pending::Clean,
            Progress::Whole => Pending::Response {
                head_request: self.head_request,
            },
            Progress::Partial => Pending::Unknown,
        };
    }
}

/// Why an exchange on a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeError {
    /// The connection ended (or failed) before any byte of a response:
    /// on a reused connection the request may go again on another one.
    ClosedEarly,
    /// Reset or closed after the response began.
    Reset,
    /// The response is not valid HTTP/1.1.
    Protocol,
}

impl From<ExchangeError> for crate::upstream::UpstreamError {
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::ClosedEarly => Self::ClosedBeforeResponse,
            ExchangeError::Reset => Self::Reset,
            ExchangeError::Protocol => Self::InvalidResponse,
        }
    }
}

/// A response head and how its body is to be read.
pub struct ResponseHead {
    pub response: Response<()>,
    pub decoder: Decoder,
    /// The upstream lets the connection serve another request after this.
    pub keep_alive: bool,
}

impl RawConn {
    pub fn new(stream: TcpStream) -> RawConn {
        RawConn {
            stream,
            buf: BytesMut::new(),
            pending: Pending::Clean,
        }
    }

    pub fn into_stream(self) -> Option<TcpStream> {
        // Bytes already read would be lost to whoever takes the stream.
        self.buf.is_empty().then_some(self.stream)
    }

    /// The upstream closed the idle connection, or sent bytes nobody asked
    /// for: it cannot take a request. Uses readiness the runtime already
    /// has, so a live connection costs no system call.
    pub fn is_stale(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Hands a request head to this thread's batch (`send_batch`): what
    /// is left for this task to write, and from where.
    #[cfg(feature = "send-batch")]
    async fn send_batched(
        &mut self,
        request: Vec<u8>,
        head_request: bool,
    ) -> Result<Option<(Vec<u8>, usize)>, ExchangeError> {
        self.pending = Pending::Unknown;
        let mut sending = Sending {
            send: super::send_batch::send(self.stream.as_raw_fd(), request),
            pending: &mut self.pending,
            head_request,
        };
        Ok(match (&mut sending.send).await {
            Sent::Direct(bytes) => Some((bytes, 0)),
            Sent::Written { bytes, written } if written < bytes.len() => Some((bytes, written)),
            Sent::Written { .. } => None,
            Sent::Failed => return Err(ExchangeError::ClosedEarly),
        })
    }

    /// Writes a request head and reads the final response's head (1xx
    /// interim responses are skipped).
    pub async fn exchange(
        &mut self,
        request: Vec<u8>,
        head_request: bool,
    ) -> Result<ResponseHead, ExchangeError> {
        #[cfg(feature = "send-batch")]
        let rest = self.send_batched(request, head_request).await?;
        #[cfg(not(feature = "send-batch"))]
        let rest = Some((request, 0));
        self.pending = Pending::Unknown;
        if let Some((bytes, from)) = rest {
            if from == 0 {
                // (Direct: dropped before this write, nothing has left.)
                self.pending = Pending::Clean;
            }
            let mut written = from;
            while written < bytes.len() {
                match self.stream.write(&bytes[written..]).await {
                    Ok(0) | Err(_) => return Err(ExchangeError::ClosedEarly),
                    Ok(n) => {
                        written += n;
                        self.pending = Pending::Unknown;
                    }
                }
            }
        }
        self.pending = Pending::Response { head_request };
        let result = self.read_head(head_request).await;
        self.pending = match result {
            Ok(_) => Pending::Clean,
            Err(_) => Pending::Unknown,
        };
        result
    }

    /// Where the last request stands (see `Pending`).
    pub fn pending(&self) -> Pending {
        self.pending
    }

    /// Reads and discards the response to a request whose client went
    /// away, so that the connection can serve another: true when it can
    /// (a complete response of at most `DRAIN_MAX` bytes within
    /// `DRAIN_WITHIN`, the connection kept alive). A stream reset by its
    /// client right after it started so costs no upstream connection.
    pub async fn drain(&mut self, head_request: bool) -> bool {
        let drained = tokio::time::timeout(DRAIN_WITHIN, async {
            let head = self.read_head(head_request).await.ok()?;
            let mut decoder = head.decoder;
            let mut read = 0usize;
            while !decoder.is_done() {
                match decoder.advance(&mut self.buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) if decoder.is_done() => break,
                    Ok(None) => {}
                    Err(_) => return None,
                }
                if read > DRAIN_MAX || decoder.is_until_close() {
                    return None;
                }
                self.buf.reserve(4096);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => read += n,
                }
            }
            (head.keep_alive && self.buf.is_empty()).then_some(())
        })
        .await;
        self.pending = match drained {
            Ok(Some(())) => Pending::Clean,
            _ => Pending::Unknown,
        };
        self.pending == Pending::Clean
    }

    /// Reads the final response's head (1xx interim responses skipped).
    async fn read_head(&mut self, head_request: bool) -> Result<ResponseHead, ExchangeError> {
        let mut first = true;
        loop {
            let len = loop {
                if let Some(n) = head_end(&self.buf) {
                    break n;
                }
                if self.buf.len() >= MAX_HEAD {
                    return Err(ExchangeError::Protocol);
                }
                self.buf.reserve(4096);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) if first && self.buf.is_empty() => {
                        return Err(ExchangeError::ClosedEarly);
                    }
                    Ok(0) | Err(_) => return Err(ExchangeError::Reset),
                    Ok(_) => {}
                }
            };
            first = false;
            let bytes = self.buf.split_to(len).freeze();
            let head = parse_response(&bytes, head_request)?;
            if head.response.status().is_informational() {
                if head.response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(ExchangeError::Protocol); // never asked for
                }
                continue;
            }
            return Ok(head);
        }
    }
}

/// Parses a complete response head (`head_end` bytes) and decides how its
/// body is read and whether the connection may serve another request.
pub fn parse_response(head: &Bytes, head_request: bool) -> Result<ResponseHead, ExchangeError> {
    // (Uninitialized slots, as for requests: see `parse_request`.)
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, head, &mut slots)
    {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(ExchangeError::Protocol),
    }
    let (Some(code), Some(minor)) = (resp.code, resp.version) else {
        return Err(ExchangeError::Protocol);
    };
    let status = StatusCode::from_u16(code).map_err(|_| ExchangeError::Protocol)?;
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // One pass over the raw headers decides the framing and the connection's
    // fate. Hop-by-hop headers that only carry that (`Connection` with just
    // close/keep-alive, `Keep-Alive`, `Transfer-Encoding`) never enter the
    // map; a `Connection` naming other headers stays for `remove_hop_by_hop`.
    // Room for `Via` (and no more: see `parse_request` on capacity).
    let mut headers = HeaderMap::with_capacity(resp.headers.len() + 1);
    let (mut close, mut keep) = (false, false);
    let mut chunked_last = None;
    let mut length: Option<u64> = None;
    let mut lengths_differ = false;
    for h in resp.headers.iter() {
        let raw_name = h.name.as_bytes();
        if raw_name.eq_ignore_ascii_case(b"connection") {
            let tokens = ConnectionTokens::of(h.value);
            close |= tokens.close;
            keep |= tokens.keep_alive;
            if !tokens.other {
                continue;
            }
        } else if raw_name.eq_ignore_ascii_case(b"keep-alive") {
            continue;
        } else if raw_name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .map(<[u8]>::trim_ascii);
            chunked_last = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
            continue;
        } else if raw_name.eq_ignore_ascii_case(b"content-length") {
            let b = h.value;
            if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
                return Err(ExchangeError::Protocol);
            }
            let n = b.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            lengths_differ |= length.is_some_and(|l| l != n);
            if length.replace(n).is_some() {
                continue; // identical duplicates collapse to one
            }
        }
        let name = HeaderName::from_bytes(raw_name).map_err(|_| ExchangeError::Protocol)?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value))
            .map_err(|_| ExchangeError::Protocol)?;
        headers.append(name, value);
    }
    let mut keep_alive = if version == Version::HTTP_11 {
        !close
    } else {
        keep && !close
    };
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let decoder = if bodiless {
        Decoder::new(Framing::Empty, 0)
    } else if let Some(chunked) = chunked_last {
        // With a Content-Length too the message is suspect: read it as
        // chunked, as the RFC says, and never reuse the connection.
        if length.is_some() {
            keep_alive = false;
            headers.remove(header::CONTENT_LENGTH);
        }
        if chunked {
            Decoder::new(Framing::Chunked, MAX_HEAD)
        } else {
            keep_alive = false;
            Decoder::until_close()
        }
    } else if lengths_differ {
        return Err(ExchangeError::Protocol);
    } else {
        match length {
            Some(0) => Decoder::new(Framing::Empty, 0),
            Some(n) => Decoder::new(Framing::Length(n), 0),
            None => {
                keep_alive = false;
                Decoder::until_close()
            }
        }
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(ResponseHead {
        response,
        decoder,
        keep_alive,
    })
}

/// A bodiless request's head as it goes upstream: the target's bytes as
/// received, the headers as the request path left them, but for those of
/// the names in `set`, whose fields are `set`'s.
pub fn encode_request(head: &Request<()>, set: &SetFields) -> Vec<u8> {
    // The target in origin-form: an absolute-form one's path and query.
    let target = head.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(head.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in head.headers() {
        if !set.replaces(name) {
            write_field(&mut out, name, value);
        }
    }
    for (name, value) in set.fields() {
        write_field(&mut out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Room made for each read of a response body: 64 KiB reads move a 1 MiB
/// body with a quarter of the system calls 16 KiB ones need (0.46 -> 0.58
/// of direct in the bench's 1 MiB scenario; 128 KiB gained nothing more).
/// Held only while a body is being read.
const BODY_READ: usize = 64 * 1024;

/// A response body read from a `RawConn` by whoever polls it. The
/// connection goes back to its pool the moment the body's last byte is
/// read; dropped before that, the connection closes with it.
pub struct RawBody {
    conn: Option<PooledConn>,
    decoder: Decoder,
    keep_alive: bool,
    /// While the client takes nothing: to see the upstream end its side
    /// (`poll_upstream_ended`).
    watch: super::shared_io::EndWatch,
}

impl RawBody {
    pub fn new(conn: PooledConn, decoder: Decoder, keep_alive: bool) -> RawBody {
        let mut body = RawBody {
            conn: Some(conn),
            decoder,
            keep_alive,
            watch: Default::default(),
        };
        if body.decoder.is_done() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let clean = match &mut conn.sender {
                Sender::Raw(c) if c.buf.is_empty() => {
                    // An idle connection keeps no body-sized buffer.
                    if c.buf.capacity() > 8 * 1024 {
                        c.buf = BytesMut::new();
                    }
                    true
                }
                _ => false,
            };
            if self.keep_alive && clean {
                conn.release();
            }
        }
    }

    /// The upstream socket and the bytes of the body still to come on it,
    /// when the rest can move without being read here: a Content-Length
    /// body with bytes to come and none of them buffered.
    pub fn splice_source(&self) -> Option<(&TcpStream, u64)> {
        let Some(PooledConn {
            sender: Sender::Raw(raw),
            ..
        }) = self.conn.as_ref()
        else {
            return None;
        };
        let left = self.decoder.remaining().filter(|&n| n > 0)?;
        raw.buf.is_empty().then_some((&raw.stream, left))
    }

    /// The rest of the body (`splice_source`'s count) was moved: the
    /// connection goes back to its pool as after a read to the end.
    pub fn spliced_to_end(&mut self) {
        if let Some(left) = self.decoder.remaining() {
            self.decoder.skip(left);
        }
        self.finish();
    }

    /// Ready once the upstream has ended its side (FIN or reset) while
    /// the response waits on a client that takes nothing: the connection
    /// then gives up its pool slot and the client's share (`let_go`), and
    /// the bytes already here still go to the client. Pending forever
    /// after that, or when nothing is held. Called only while a write to
    /// the client is stalled: the watch is a second registration of the
    /// socket (a duplicated descriptor), whose readiness can be cleared
    /// without touching the one the body is read with; it lives until
    /// the write moves again.
    pub fn poll_upstream_ended(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(conn) = self.conn.as_mut().filter(|c| c.holds_slot()) else {
            return Poll::Pending;
        };
        let Sender::Raw(raw) = &conn.sender else {
            return Poll::Pending;
        };
        ready!(self.watch.poll_ended(cx, &raw.stream));
        self.keep_alive = false;
        conn.let_go();
        Poll::Ready(())
    }

    /// The write to the client moved again: the watch is not needed.
    pub fn unwatch(&mut self) {
        self.watch.clear();
    }

    /// The upstream socket, while the body reads from it.
    pub fn stream(&self) -> Option<&TcpStream> {
        match self.conn.as_ref() {
            Some(PooledConn {
                sender: Sender::Raw(raw),
                ..
            }) => Some(&raw.stream),
            _ => None,
        }
    }

    /// The body cannot be read to its end: the connection closes.
    pub fn abandon(&mut self) {
        self.conn = None;
    }

    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.abandon();
        Poll::Ready(Some(Err(Box::new(StreamError(why)))))
    }
}

impl HttpBody for RawBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            if this.decoder.is_done() {
                this.finish();
                return Poll::Ready(None);
            }
            let Some(PooledConn {
                sender: Sender::Raw(raw),
                ..
            }) = this.conn.as_mut()
            else {
                return this.fail("upstream connection gone");
            };
            match this.decoder.advance(&mut raw.buf) {
                Ok(Some(frame)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) if this.decoder.is_done() => continue,
                Ok(None) => {}
                Err(why) => return this.fail(why),
            }
            raw.buf.reserve(BODY_READ);
            match raw.stream.try_read_buf(&mut raw.buf) {
                Ok(0) => {
                    if this.decoder.eof() {
                        this.keep_alive = false;
                        continue;
                    }
                    return this.fail("upstream closed mid-body");
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if ready!(raw.stream.poll_read_ready(cx)).is_err() {
                        return this.fail("upstream reset mid-body");
                    }
                }
                Err(_) => return this.fail("upstream reset mid-body"),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_carries_the_set_fields_in_place_of_the_clients() {
        let req = Request::builder()
            .method("GET")
            .uri("http://app.test/a//b?c=%2F")
            .header("x-forwarded-for", "6.6.6.6")
            .header("accept", "*/*")
            .header("expect", "100-continue")
            .header("x-forwarded-for", "7.7.7.7")
            .body(())
            .unwrap();
        let mut set = SetFields::default();
        set.set(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_static("10.0.0.9"),
        );
        set.remove(header::EXPECT);
        set.set(header::HOST, HeaderValue::from_static("app.test"));
        let head = encode_request(&req, &set);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /a//b?c=%2F HTTP/1.1\r\naccept: */*\r\nx-forwarded-for: 10.0.0.9\r\nhost: app.test\r\n\r\n"
        );
        // Applied to a map instead, the same fields result.
        let mut map = req.headers().clone();
        set.apply(&mut map);
        assert_eq!(map.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(map["x-forwarded-for"], "10.0.0.9");
        assert!(!map.contains_key(header::EXPECT));
        assert_eq!(map[header::HOST], "app.test");
    }
}
