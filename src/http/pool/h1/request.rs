//! A request as our HTTP/1.1 client writes it: the head as bytes (the
//! fields this hop sets in place of the client's), then the body, by
//! Content-Length when the request has one, else chunked (trailers kept).
//! While the body goes, what the upstream sends is read: a final response
//! before the body's end (a 413, a 401) stops the send, and is the
//! answer; the connection then serves no other request.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::Request;
use http_body::Body as HttpBody;
use tokio::io::{AsyncReadExt, AsyncWrite};

use super::{Conn, ExchangeError, MAX_HEAD, parse_response};
use crate::http::body::Body;
use crate::http::h1::head::{head_end, write_field, write_fields};
use crate::http::headers::SetFields;

/// A request's head as it goes upstream: the target's bytes as received,
/// the headers as the request path left them, but for those of the names
/// in `set`, whose fields are `set`'s; `chunked`: the body follows in
/// chunks (the request has a body and no Content-Length).
pub fn encode_request(head: &Request<()>, set: &SetFields, chunked: bool) -> Vec<u8> {
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
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// How a body's send ended.
pub enum BodySent {
    /// Every byte left, the last chunk too.
    Whole,
    /// A final response arrived first: the send stopped there.
    Answered,
}

/// A body on its way: its framed pieces not yet written.
struct Sending<'a> {
    body: &'a mut Body,
    chunked: bool,
    queue: VecDeque<Bytes>,
    /// The body's end is in `queue` (or it needs none).
    ended: bool,
    /// The upstream ended its side: nothing more to read while sending.
    read_closed: bool,
}

impl Conn {
    /// Writes the body of a request whose head has gone, reading what the
    /// upstream sends meanwhile (see the module's note). Errors:
    /// `ClientBody` when the client's body failed, `Reset` when the
    /// upstream stopped taking it.
    pub(super) async fn send_body(
        &mut self,
        body: &mut Body,
        chunked: bool,
    ) -> Result<BodySent, ExchangeError> {
        let mut s = Sending {
            body,
            chunked,
            queue: VecDeque::new(),
            ended: false,
            read_closed: false,
        };
        std::future::poll_fn(|cx| self.poll_send_body(cx, &mut s)).await
    }

    fn poll_send_body(
        &mut self,
        cx: &mut Context<'_>,
        s: &mut Sending<'_>,
    ) -> Poll<Result<BodySent, ExchangeError>> {
        loop {
            // (A response once every byte has gone is no early one.)
            let all_gone = s.ended && s.queue.is_empty();
            if !s.read_closed && !all_gone && self.poll_answered(cx, &mut s.read_closed)? {
                return Poll::Ready(Ok(BodySent::Answered));
            }
            if let Some(front) = s.queue.front_mut() {
                match Pin::new(&mut self.io).poll_write(cx, front) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Err(ExchangeError::Reset)),
                    Poll::Ready(Ok(n)) => {
                        front.advance(n);
                        if front.is_empty() {
                            s.queue.pop_front();
                        }
                        continue;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            if s.ended {
                return match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(BodySent::Whole)),
                    Poll::Ready(Err(_)) => Poll::Ready(Err(ExchangeError::Reset)),
                    Poll::Pending => Poll::Pending,
                };
            }
            match Pin::new(&mut *s.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(ExchangeError::ClientBody)),
                Poll::Ready(None) => {
                    if s.chunked {
                        s.queue.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                    s.ended = true;
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if s.chunked => {
                        s.queue
                            .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                        s.queue.push_back(data);
                        s.queue.push_back(Bytes::from_static(b"\r\n"));
                    }
                    Ok(data) => s.queue.push_back(data),
                    Err(frame) => {
                        // Trailers end a chunked body (a sized one has none).
                        if let (Ok(trailers), true) = (frame.into_trailers(), s.chunked) {
                            let mut last = b"0\r\n".to_vec();
                            write_fields(&mut last, &trailers);
                            last.extend_from_slice(b"\r\n");
                            s.queue.push_back(Bytes::from(last));
                            s.ended = true;
                        }
                    }
                },
            }
        }
    }

    /// Reads what the upstream sent while the body goes: true once a final
    /// response's head is here (it stays in the buffer for `read_head`);
    /// interim (1xx) ones are dropped. `closed`: set when the upstream
    /// ended its side (the send goes on; the response read will tell).
    fn poll_answered(
        &mut self,
        cx: &mut Context<'_>,
        closed: &mut bool,
    ) -> Result<bool, ExchangeError> {
        loop {
            if let Some(len) = head_end(&self.buf) {
                let head = Bytes::copy_from_slice(&self.buf[..len]);
                let parsed = parse_response(&head, false)?;
                let status = parsed.response.status();
                if status.is_informational() && status != http::StatusCode::SWITCHING_PROTOCOLS {
                    self.buf.advance(len);
                    continue;
                }
                return Ok(true);
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(ExchangeError::Protocol);
            }
            self.buf.reserve(4096);
            // (A read future holds no state between polls: one per poll.)
            let read = std::pin::pin!(self.io.read_buf(&mut self.buf));
            match read.poll(cx) {
                Poll::Ready(Ok(0) | Err(_)) => {
                    *closed = true;
                    return Ok(false);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Ok(false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{self, HeaderName, HeaderValue};

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
        let head = encode_request(&req, &set, false);
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

    #[test]
    fn a_body_without_a_length_is_announced_as_chunked() {
        let req = Request::builder()
            .method("POST")
            .uri("/up")
            .header("host", "app.test")
            .body(())
            .unwrap();
        let head = encode_request(&req, &SetFields::default(), true);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /up HTTP/1.1\r\nhost: app.test\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }
}
