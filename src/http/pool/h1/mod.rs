//! Our HTTP/1.1 client, the only one: every HTTP/1.1 request to an
//! upstream, plain or over TLS, with or without a body, upgrades too. The
//! request is written and the response head read by the task that owns
//! the client's request, with no connection task and no hand-off in
//! between (HTTP/2 upstreams go through hyper's client: `Sender::H2`).
//!
//! A response is framed strictly (RFC 9112 §6.3): no body for HEAD, 1xx,
//! 204 and 304; chunked when Transfer-Encoding ends in chunked; else by a
//! valid Content-Length; else until the upstream closes. A connection goes
//! back to the pool only when its request went whole, its response was
//! read exactly to its end, the upstream keeps it alive, and nothing more
//! arrived after it. A request dropped in mid-exchange leaves its
//! connection knowing what it owes (`Pending`): nothing, or a response
//! that `drain` reads and discards (bounded in bytes and time) so that the
//! connection can serve another. After a `101` to an upgrade it asked
//! for, the connection leaves for the tunnel (`Conn::into_upgraded`).

mod io;
mod request;
mod response;

pub use io::Io;
pub use request::encode_request;
pub use response::{ResponseBody, parse_response};

#[cfg(feature = "send-batch")]
use std::os::fd::AsRawFd;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use http::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[cfg(feature = "send-batch")]
use super::send_batch::Sent;
use crate::http::body::Body;
use crate::http::h1::body::Decoder;
use crate::http::h1::head::head_end;
use request::BodySent;

/// Largest response head accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted from an upstream.
const MAX_HEADERS: usize = 128;

/// A connection to an upstream and what was read from it.
pub struct Conn {
    io: Io,
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
    /// Anything else (part of a request written, a body on its way, a
    /// response half read, a failure): the connection cannot serve
    /// another request.
    Unknown,
}

/// The most a dropped request's response may bring for its connection to
/// be kept (`Conn::drain`), and how long it may take.
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
    /// The connection ended (or failed) before any byte of a response,
    /// and before any of the request's body was taken: on a reused
    /// connection the request may go again on another one.
    ClosedEarly,
    /// Reset or closed after the response or the body began.
    Reset,
    /// The response is not valid HTTP/1.1.
    Protocol,
    /// The client's request body failed (its side: the request's record
    /// says how).
    ClientBody,
}

impl From<ExchangeError> for crate::upstream::UpstreamError {
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::ClosedEarly => Self::ClosedBeforeResponse,
            ExchangeError::Reset | ExchangeError::ClientBody => Self::Reset,
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

/// What an exchange sends: the head's bytes, and the body (`None`: none).
pub struct Outgoing<'a> {
    pub head: Vec<u8>,
    pub body: Option<&'a mut Body>,
    /// The body goes in chunks (`encode_request`).
    pub chunked: bool,
    pub head_request: bool,
    /// The request asks to switch protocols: a `101` is its answer.
    pub upgrade: bool,
}

/// An upgraded connection for its tunnel: the stream, and what the
/// upstream sent right after its `101`.
pub struct Upgraded {
    pub io: Io,
    pub early: BytesMut,
}

impl Conn {
    pub fn new(io: Io) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            pending: Pending::Clean,
        }
    }

    /// The connection after a `101`, for its tunnel.
    pub fn into_upgraded(self) -> Upgraded {
        Upgraded {
            io: self.io,
            early: self.buf,
        }
    }

    /// The upstream closed the idle connection, or sent bytes nobody asked
    /// for: it cannot take a request. Uses readiness the runtime already
    /// has, so a live connection costs no system call. (Over TLS, records
    /// that carry no data, such as session tickets, are taken in stride.)
    pub fn is_stale(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let tcp = self.io.tcp();
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                match &mut self.io {
                    Io::Tcp(s) => {
                        !matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                    }
                    Io::Tls(t) => {
                        let mut rb = tokio::io::ReadBuf::new(&mut probe);
                        let read = tokio::io::AsyncRead::poll_read(
                            std::pin::Pin::new(&mut **t),
                            &mut cx,
                            &mut rb,
                        );
                        read.is_ready()
                    }
                }
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
        let Io::Tcp(stream) = &self.io else {
            return Ok(Some((request, 0)));
        };
        self.pending = Pending::Unknown;
        let mut sending = Sending {
            send: super::send_batch::send(stream.as_raw_fd(), request),
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

    /// Writes a request head (and its body, if any) and reads the final
    /// response's head (1xx interim responses are skipped; a `101` is the
    /// final answer to an upgrade).
    pub async fn exchange(&mut self, out: Outgoing<'_>) -> Result<ResponseHead, ExchangeError> {
        let Outgoing {
            head,
            body,
            chunked,
            head_request,
            upgrade,
        } = out;
        #[cfg(feature = "send-batch")]
        let rest = if body.is_none() {
            self.send_batched(head, head_request).await?
        } else {
            Some((head, 0))
        };
        #[cfg(not(feature = "send-batch"))]
        let rest = Some((head, 0));
        self.pending = Pending::Unknown;
        if let Some((bytes, from)) = rest {
            if from == 0 {
                // (Direct: dropped before this write, nothing has left.)
                self.pending = Pending::Clean;
            }
            let mut written = from;
            while written < bytes.len() {
                match self.io.write(&bytes[written..]).await {
                    Ok(0) | Err(_) => return Err(ExchangeError::ClosedEarly),
                    Ok(n) => {
                        written += n;
                        self.pending = Pending::Unknown;
                    }
                }
            }
            if matches!(self.io, Io::Tls(_)) && self.io.flush().await.is_err() {
                return Err(ExchangeError::ClosedEarly);
            }
        }
        let mut answered_early = false;
        let sent_body = body.is_some();
        if let Some(body) = body {
            self.pending = Pending::Unknown;
            answered_early = matches!(self.send_body(body, chunked).await?, BodySent::Answered);
        } else {
            self.pending = Pending::Response { head_request };
        }
        let mut result = self.read_head(head_request, upgrade).await;
        if sent_body && result.as_ref().err() == Some(&ExchangeError::ClosedEarly) {
            // (The body was taken: the request cannot go again.)
            result = Err(ExchangeError::Reset);
        }
        self.pending = match result {
            Ok(_) if !answered_early => Pending::Clean,
            _ => Pending::Unknown,
        };
        let mut head = result?;
        // A response before the request's end: the rest of the request
        // never went, so the connection serves no other.
        head.keep_alive &= !answered_early;
        Ok(head)
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
            let head = self.read_head(head_request, false).await.ok()?;
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
                match self.io.read_buf(&mut self.buf).await {
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

    /// Reads the final response's head (1xx interim responses skipped; a
    /// `101` only when `upgrade` asked for one).
    async fn read_head(
        &mut self,
        head_request: bool,
        upgrade: bool,
    ) -> Result<ResponseHead, ExchangeError> {
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
                match self.io.read_buf(&mut self.buf).await {
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
            let status = head.response.status();
            if status == StatusCode::SWITCHING_PROTOCOLS {
                if !upgrade {
                    return Err(ExchangeError::Protocol); // never asked for
                }
                return Ok(head);
            }
            if status.is_informational() {
                continue;
            }
            return Ok(head);
        }
    }
}
