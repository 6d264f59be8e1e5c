//! A response as our HTTP/1.1 client reads it: the head parsed strictly,
//! the body streamed to whoever polls it.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::super::{PooledConn, Sender};
use super::{ExchangeError, Io, MAX_HEAD, MAX_HEADERS, ResponseHead};
use crate::http::body::{BodyError, StreamError};
use crate::http::h1::body::Decoder;
use crate::http::h1::head::{ConnectionTokens, Framing};

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
/// Room made for each read of a response body: 64 KiB reads move a 1 MiB
/// body with a quarter of the system calls 16 KiB ones need (0.46 -> 0.58
/// of direct in the bench's 1 MiB scenario; 128 KiB gained nothing more).
/// Held only while a body is being read.
const BODY_READ: usize = 64 * 1024;

/// A response body read from a `Conn` by whoever polls it. The
/// connection goes back to its pool the moment the body's last byte is
/// read; dropped before that, the connection closes with it.
pub struct ResponseBody {
    conn: Option<PooledConn>,
    decoder: Decoder,
    keep_alive: bool,
    /// While the client takes nothing: to see the upstream end its side
    /// (`poll_upstream_ended`).
    watch: super::super::end_watch::EndWatch,
}

impl ResponseBody {
    pub fn new(conn: PooledConn, decoder: Decoder, keep_alive: bool) -> ResponseBody {
        let mut body = ResponseBody {
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

    /// Keeps the request's count in its cluster's requests in flight until
    /// the body ends (with the connection).
    pub fn hold(&mut self, admitted: Option<crate::upstream::cluster::Admitted>) {
        if let Some(conn) = self.conn.as_mut() {
            conn.admitted = admitted;
        }
    }

    /// A body with nothing to read and no connection (a `101`'s).
    pub fn none() -> ResponseBody {
        ResponseBody {
            conn: None,
            decoder: Decoder::new(Framing::Empty, 0),
            keep_alive: false,
            watch: Default::default(),
        }
    }

    fn finish(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let clean = match &mut conn.sender {
                Sender::H1(c) if c.buf.is_empty() => {
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
            sender: Sender::H1(raw),
            ..
        }) = self.conn.as_ref()
        else {
            return None;
        };
        let left = self.decoder.remaining().filter(|&n| n > 0)?;
        let plain = raw.io.plain()?;
        raw.buf.is_empty().then_some((plain, left))
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
        let Sender::H1(raw) = &conn.sender else {
            return Poll::Pending;
        };
        ready!(self.watch.poll_ended(cx, raw.io.tcp()));
        self.keep_alive = false;
        conn.let_go();
        Poll::Ready(())
    }

    /// The write to the client moved again: the watch is not needed.
    pub fn unwatch(&mut self) {
        self.watch.clear();
    }

    /// The upstream socket, while the body reads from it, when the body's
    /// bytes are its bytes (no TLS).
    pub fn stream(&self) -> Option<&TcpStream> {
        match self.conn.as_ref() {
            Some(PooledConn {
                sender: Sender::H1(raw),
                ..
            }) => raw.io.plain(),
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

impl HttpBody for ResponseBody {
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
                sender: Sender::H1(raw),
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
            match raw.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    if this.decoder.eof() {
                        this.keep_alive = false;
                        continue;
                    }
                    return this.fail("upstream closed mid-body");
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => return this.fail("upstream reset mid-body"),
                Poll::Pending => return Poll::Pending,
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

impl super::Conn {
    /// Reads what the socket has into the buffer (`BODY_READ` at most at
    /// a time): `Ok(0)` at the upstream's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(BODY_READ);
        match &mut self.io {
            Io::Tcp(s) => loop {
                match s.try_read_buf(&mut self.buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready!(s.poll_read_ready(cx))?
                    }
                    r => return Poll::Ready(r),
                }
            },
            io @ Io::Tls(_) => {
                // (A read future holds no state between polls: one per poll.)
                let read = std::pin::pin!(io.read_buf(&mut self.buf));
                std::future::Future::poll(read, cx)
            }
        }
    }
}
