//! The `compress` filter against the real binary: each encoding round-trips
//! byte-exact for sized and streamed bodies; what must not be compressed
//! is not; and a 1 GiB streamed response is compressed in bounded memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

/// Compressible text: lines that repeat with variations.
fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("line {i} of the body, {} and more\n", i % 97).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

const BIG: u64 = 1 << 30;

/// A backend answering by path: sized and chunked text, and the cases
/// that stay uncompressed; `/big` streams 1 GiB.
fn backend() -> SocketAddr {
    thread_backend("127.0.0.1:0", |mut s| {
        let mut reader = BufReader::new(s.try_clone().unwrap());
        while let Some(req) = read_request(&mut reader) {
            let path = req
                .request_line()
                .split(' ')
                .nth(1)
                .unwrap_or("/")
                .to_owned();
            let body = text(300_000);
            let sized = |extra: &str, body: &[u8]| {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(body);
                r
            };
            let resp = match path.as_str() {
                "/sized" => sized(
                    "Content-Type: text/plain; charset=utf-8\r\nETag: \"v1\"\r\n",
                    &body,
                ),
                "/small" => sized("Content-Type: text/plain\r\n", b"tiny"),
                "/encoded" => sized(
                    "Content-Type: text/plain\r\nContent-Encoding: gzip\r\n",
                    &body,
                ),
                "/image" => sized("Content-Type: image/png\r\n", &body),
                "/no-transform" => sized(
                    "Content-Type: text/plain\r\nCache-Control: public, no-transform\r\n",
                    &body,
                ),
                "/chunked" => {
                    let mut r = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                    for piece in body.chunks(10_007) {
                        r.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                        r.extend_from_slice(piece);
                        r.extend_from_slice(b"\r\n");
                    }
                    r.extend_from_slice(b"0\r\n\r\n");
                    r
                }
                "/big" => {
                    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
                    if s.write_all(head).is_err() {
                        return;
                    }
                    let block = text(1 << 20);
                    let frame =
                        [format!("{:x}\r\n", block.len()).as_bytes(), &block, b"\r\n"].concat();
                    for _ in 0..(BIG >> 20) {
                        if s.write_all(&frame).is_err() {
                            return;
                        }
                    }
                    let _ = s.write_all(b"0\r\n\r\n");
                    continue;
                }
                _ => sized("Content-Type: text/plain\r\n", b"?"),
            };
            if s.write_all(&resp).is_err() {
                return;
            }
        }
    })
}

/// A response's head and a reader of its body (de-chunked when chunked).
fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (String, Box<dyn Read>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let ae = accept
        .map(|a| format!("Accept-Encoding: {a}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: a\r\n{ae}Connection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body: Box<dyn Read> = if chunked {
        Box::new(Dechunk {
            r,
            left: 0,
            done: false,
        })
    } else {
        Box::new(r)
    };
    (head, body)
}

struct Dechunk<R> {
    r: BufReader<R>,
    left: usize,
    done: bool,
}

impl<R: Read> Read for Dechunk<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.r.read_line(&mut line)?;
            if line == "\r\n" {
                line.clear();
                self.r.read_line(&mut line)?;
            }
            self.left = usize::from_str_radix(line.trim(), 16).unwrap();
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left);
        let n = self.r.read(&mut buf[..want])?;
        self.left -= n;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.r.read_exact(&mut crlf)?;
        }
        Ok(n)
    }
}

fn decode(encoding: &str, body: Box<dyn Read>) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .unwrap(),
        "br" => brotli::Decompressor::new(body, 4096)
            .read_to_end(&mut out)
            .unwrap(),
        "zstd" => zstd::stream::read::Decoder::new(body)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap(),
        other => panic!("{other}"),
    };
    out
}

fn start(backend: SocketAddr) -> Gatehouse {
    Gatehouse::start(&http_config(
        "",
        "http.access_log = false",
        backend,
        "filters = [\"compress\"]\n[[filters]]\nname = \"compress\"\nkind = \"compress\"\n",
    ))
}

#[test]
fn each_encoding_round_trips_sized_and_streamed_bodies() {
    let gh = start(backend());
    let web = gh.addr("web");
    let body = text(300_000);
    for enc in ["gzip", "br", "zstd"] {
        for path in ["/sized", "/chunked"] {
            let (head, reader) = get(web, path, Some(&format!("{enc}, identity;q=0.5")));
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert_eq!(
                head_field(&head, "content-encoding"),
                Some(enc),
                "{path}: {head}"
            );
            assert_eq!(head_field(&head, "vary"), Some("Accept-Encoding"), "{head}");
            assert!(head_field(&head, "content-length").is_none(), "{head}");
            if path == "/sized" {
                assert_eq!(head_field(&head, "etag"), Some("W/\"v1\""), "{head}");
            }
            assert_eq!(decode(enc, reader), body, "{enc} {path}");
        }
    }
    // The client's preference first, then the filter's order (zstd, br, gzip).
    let (head, _) = get(web, "/sized", Some("gzip, br"));
    assert_eq!(head_field(&head, "content-encoding"), Some("br"));
    let (head, _) = get(web, "/sized", Some("zstd;q=0.2, gzip"));
    assert_eq!(head_field(&head, "content-encoding"), Some("gzip"));
}

#[test]
fn what_must_not_be_compressed_is_not() {
    let gh = start(backend());
    let web = gh.addr("web");
    for path in ["/small", "/encoded", "/image", "/no-transform"] {
        let (head, mut reader) = get(web, path, Some("gzip, br, zstd"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let ce = head_field(&head, "content-encoding");
        if path == "/encoded" {
            assert_eq!(ce, Some("gzip"), "the upstream's own encoding is kept");
        } else {
            assert!(ce.is_none(), "{path}: {head}");
        }
        // (None of them could be compressed: none varies.)
        assert!(head_field(&head, "vary").is_none(), "{path}: {head}");
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(
            got.len() as u64,
            head_field(&head, "content-length")
                .unwrap()
                .parse::<u64>()
                .unwrap()
        );
    }
    // No Accept-Encoding: as it is, but it says the answer varies.
    let (head, mut reader) = get(web, "/sized", None);
    assert!(head_field(&head, "content-encoding").is_none(), "{head}");
    assert_eq!(head_field(&head, "vary"), Some("Accept-Encoding"));
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert_eq!(got, text(300_000));
}

#[test]
fn a_gigabyte_streamed_response_is_compressed_in_bounded_memory() {
    let gh = start(backend());
    let web = gh.addr("web");
    let before = gh.rss_kib();
    let (head, reader) = get(web, "/big", Some("zstd"));
    assert_eq!(
        head_field(&head, "content-encoding"),
        Some("zstd"),
        "{head}"
    );
    let mut decoder = zstd::stream::read::Decoder::new(reader).unwrap();
    let block = text(1 << 20);
    let mut buf = vec![0u8; 1 << 20];
    let (mut total, mut peak) = (0u64, 0u64);
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = decoder.read(&mut buf[filled..]).unwrap();
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        assert_eq!(&buf[..filled], &block[..filled], "at byte {total}");
        total += filled as u64;
        if total % (64 << 20) == 0 {
            peak = peak.max(gh.rss_kib());
        }
    }
    assert_eq!(total, BIG);
    eprintln!("RSS {before} KiB before, {peak} KiB at most while streaming");
    assert!(peak < before + 32 * 1024, "RSS {before} KiB → {peak} KiB");
}
