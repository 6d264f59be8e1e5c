//! A request body read by the connection task: the task decodes the body's
//! framing (Content-Length or chunked, with trailers) from the client
//! connection and hands frames, one at a time, through a one-slot channel
//! to `RequestBody`, which the upstream request streams. The slot is the
//! backpressure: the task reads the next bytes only after the previous
//! frame was taken. `Expect: 100-continue` is answered when the body is
//! first polled, so a request refused before its body is read never gets
//! its body sent.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

use super::head::Framing;
use crate::conn::EndReason;
use crate::http::body::{BodyError, ReqBody, StreamError};

type Item = Result<Frame<Bytes>, BodyError>;

/// Largest frame handed on at once.
const MAX_FRAME: usize = 64 * 1024;
/// Largest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Default)]
struct Demand {
    wanted: AtomicBool,
    notify: Notify,
}

pub struct RequestBody {
    rx: mpsc::Receiver<Item>,
    demand: Arc<Demand>,
    length: Option<u64>,
    done: bool,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.demand.wanted.swap(true, Ordering::AcqRel) {
            self.demand.notify.notify_one();
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    /// A response body without framing: everything until the upstream closes.
    UntilClose,
    /// The whole body was read.
    Done,
    /// The handler dropped the body, or the framing broke: the rest of it
    /// is never read and the connection closes after the response.
    Abandoned,
}

/// The connection task's side of a request body.
pub struct Pump {
    dec: Decoder,
    tx: Option<mpsc::Sender<Item>>,
    demand: Option<Arc<Demand>>,
    continue_pending: bool,
}

/// An HTTP/1.1 body decoder over a read buffer: by length, chunked (with
/// trailers), or until the connection closes. Used for request bodies from
/// clients and response bodies from upstreams.
pub struct Decoder {
    state: State,
    max_trailer_bytes: usize,
}

impl Pump {
    /// The body for `framing`, and the pump that feeds it.
    pub fn new(
        framing: Framing,
        expect_continue: bool,
        max_trailer_bytes: usize,
    ) -> (ReqBody, Pump) {
        if framing == Framing::Empty {
            let pump = Pump {
                dec: Decoder::new(Framing::Empty, max_trailer_bytes),
                tx: None,
                demand: None,
                continue_pending: false,
            };
            return (ReqBody::Empty, pump);
        }
        let (tx, rx) = mpsc::channel(1);
        let demand = Arc::new(Demand::default());
        let length = match framing {
            Framing::Empty => Some(0),
            Framing::Length(n) => Some(n),
            Framing::Chunked => None,
        };
        let body = RequestBody {
            rx,
            demand: demand.clone(),
            length,
            done: false,
        };
        let pump = Pump {
            dec: Decoder::new(framing, max_trailer_bytes),
            tx: Some(tx),
            demand: Some(demand),
            continue_pending: expect_continue,
        };
        (ReqBody::H1(body), pump)
    }

    /// Still has body bytes to move.
    pub fn active(&self) -> bool {
        !matches!(self.dec.state, State::Done | State::Abandoned)
    }

    /// The body was read to its end: the connection can serve another request.
    pub fn complete(&self) -> bool {
        self.dec.is_done()
    }

    fn abandon(&mut self) {
        self.dec.state = State::Abandoned;
        self.tx = None;
    }

    /// Moves the body one frame forward. Cancel-safe at every await: bytes
    /// read stay in `buf`, a frame is built only once its slot is reserved.
    /// `Err` means the client is gone (the body was failed for the handler).
    pub async fn step<S>(&mut self, io: &mut S, buf: &mut BytesMut) -> Result<(), EndReason>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if let (true, Some(demand)) = (self.continue_pending, self.demand.as_ref()) {
            if !demand.wanted.load(Ordering::Acquire) {
                demand.notify.notified().await;
            }
            if io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .and(io.flush().await)
                .is_err()
            {
                self.abandon();
                return Err(EndReason::ClientReset);
            }
            self.continue_pending = false;
        }
        let Some(tx) = self.tx.clone() else {
            self.dec.state = State::Abandoned;
            return Ok(());
        };
        let Ok(permit) = tx.reserve().await else {
            self.abandon(); // the handler let go of the body
            return Ok(());
        };
        loop {
            match self.dec.advance(buf) {
                Ok(Some(item)) => {
                    permit.send(Ok(item));
                    if self.dec.is_done() {
                        self.tx = None; // the end of the body
                    }
                    return Ok(());
                }
                Ok(None) if self.dec.is_done() => {
                    drop(permit);
                    self.tx = None;
                    return Ok(());
                }
                Ok(None) => {}
                Err(why) => {
                    permit.send(Err(Box::new(StreamError(why))));
                    self.abandon();
                    return Ok(());
                }
            }
            // More bytes are needed.
            buf.reserve(16 * 1024);
            // The slot reserved above carries the failure if the client goes.
            let (why, reason) = match io.read_buf(buf).await {
                Ok(0) => ("client closed mid-body", EndReason::ClientClosed),
                Ok(_) => continue,
                Err(_) => ("client reset mid-body", EndReason::ClientReset),
            };
            permit.send(Err(Box::new(StreamError(why))));
            self.abandon();
            return Err(reason);
        }
    }
}

impl Decoder {
    pub fn new(framing: Framing, max_trailer_bytes: usize) -> Decoder {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
        };
        Decoder {
            state,
            max_trailer_bytes,
        }
    }

    /// A body delimited by the connection's end (responses only).
    pub fn until_close() -> Decoder {
        Decoder {
            state: State::UntilClose,
            max_trailer_bytes: 0,
        }
    }

    /// The body was read to its end (an until-close body: never before EOF).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The body ends with the connection.
    pub fn is_until_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// Bytes still expected, when the framing says how many.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// `n` bytes of a Content-Length body were moved without passing
    /// through `advance` (spliced); at most what `remaining` says.
    pub fn skip(&mut self, n: u64) {
        if let State::Length(rest) = self.state {
            let left = rest.saturating_sub(n);
            self.state = if left == 0 {
                State::Done
            } else {
                State::Length(left)
            };
        }
    }

    /// The connection ended: the end of an until-close body.
    pub fn eof(&mut self) -> bool {
        if self.state == State::UntilClose {
            self.state = State::Done;
        }
        self.is_done()
    }

    /// Decodes what `buf` holds: a frame, `None` when more bytes are needed
    /// (or a framing line was consumed), or an error for broken framing.
    pub fn advance(&mut self, buf: &mut BytesMut) -> Result<Option<Frame<Bytes>>, &'static str> {
        loop {
            match self.state {
                State::Length(rest) | State::ChunkData(rest) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (rest.min(MAX_FRAME as u64) as usize).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    let left = rest - n as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Some(Frame::data(data)));
                }
                State::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err("chunk size line too long");
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err("malformed chunk size"),
                },
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    if buf.len() >= 2 && &buf[..2] == b"\r\n" {
                        buf.advance(2);
                        self.state = State::Done;
                        return Ok(None);
                    }
                    let Some(end) = super::head::head_end(buf) else {
                        if buf.len() > self.max_trailer_bytes {
                            return Err("trailers too large");
                        }
                        return Ok(None);
                    };
                    let block = buf.split_to(end).freeze();
                    let trailers = parse_trailers(&block)?;
                    self.state = State::Done;
                    return Ok(Some(Frame::trailers(trailers)));
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = buf.len().min(MAX_FRAME);
                    return Ok(Some(Frame::data(buf.split_to(n).freeze())));
                }
                State::Done | State::Abandoned => return Ok(None),
            }
        }
    }
}

fn parse_trailers(block: &Bytes) -> Result<HeaderMap, &'static str> {
    if block.first() == Some(&b'\n') || block.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') {
        return Err("bare LF in trailers");
    }
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let parsed = match httparse::parse_headers(block, &mut slots) {
        Ok(httparse::Status::Complete((_, h))) => h,
        _ => return Err("malformed trailers"),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| "bad trailer name")?;
        let value = HeaderValue::from_maybe_shared(block.slice_ref(h.value))
            .map_err(|_| "bad trailer value")?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(
        wire: &[u8],
        split: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, bool), &'static str> {
        let mut pump = Decoder::new(Framing::Chunked, 1024);
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        for part in [&wire[..split], &wire[split..]] {
            buf.extend_from_slice(part);
            while let Some(frame) = pump.advance(&mut buf)? {
                match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                }
            }
        }
        Ok((data, trailers, pump.is_done()))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_reads() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for split in 0..wire.len() {
            let (data, trailers, done) = decode(wire, split).unwrap();
            assert_eq!(data, b"hello world", "split {split}");
            assert!(done, "split {split}");
            let t = trailers.expect("trailers");
            assert_eq!(t.get("x-t").unwrap(), "1");
        }
        let plain = b"3\r\nabc\r\n0\r\n\r\n";
        for split in 0..plain.len() {
            let (data, trailers, done) = decode(plain, split).unwrap();
            assert_eq!(data, b"abc");
            assert!(trailers.is_none() && done);
        }
    }

    #[test]
    fn broken_chunked_framing_is_an_error() {
        for wire in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
            b"3\r\nabc\r\n0\r\nX-T: 1\n\r\n",
        ] {
            assert!(
                decode(wire, wire.len()).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}
