//! Response compression: zstd, brotli or gzip, by the client's
//! `Accept-Encoding` (its q-values first, then the filter's order), for
//! responses of the listed content types from `min_size` up, as they
//! stream: each piece of the body is compressed and flushed as it comes,
//! so a streamed response is never held back and memory is the encoder's
//! window, not the body. Responses already encoded, marked `no-transform`,
//! partial (206), bodiless (HEAD, 204, 304) or small are left alone.
//! `Vary: Accept-Encoding` goes on every response that could be
//! compressed; a compressed response loses `Content-Length` (it is sent
//! chunked, or as HTTP/2 data) and `Accept-Ranges`, and a strong `ETag`
//! becomes weak.

use std::io::Write;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, StatusCode};

use super::{Answer, Filter, Request, Response, Transform};
use crate::config::{Compress, Encoding};

/// Brotli's quality and window for streaming (quality 11 is for files
/// compressed once; 5 keeps up with a link).
const BROTLI_QUALITY: u32 = 5;
const BROTLI_LGWIN: u32 = 18;
/// zstd's level, and a window of 128 KiB (the default at level 3 is 2 MiB
/// per response in flight).
const ZSTD_LEVEL: i32 = 3;
const ZSTD_WINDOW_LOG: u32 = 17;

pub struct Compressor(pub Compress);

/// The encoding a request's `Accept-Encoding` picked.
#[derive(Clone, Copy)]
struct Chosen(Encoding);

impl Compressor {
    /// The client's best encoding among ours: the highest q-value, then our
    /// order; `None` when it accepts none of them.
    fn choose(&self, headers: &HeaderMap) -> Option<Encoding> {
        let mut best: Option<(u32, usize, Encoding)> = None;
        for (rank, &enc) in self.0.encodings.iter().enumerate() {
            let q = accepted(headers, enc.token());
            if q > 0 && best.is_none_or(|(bq, _, _)| q > bq) {
                best = Some((q, rank, enc));
            }
        }
        best.map(|(_, _, e)| e)
    }

    /// Whether a response of this type and length is one to compress.
    fn eligible(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if !status.is_success()
            || status == StatusCode::PARTIAL_CONTENT
            || status == StatusCode::NO_CONTENT
        {
            return false;
        }
        if headers.contains_key(header::CONTENT_ENCODING) {
            return false;
        }
        let no_transform = headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
            })
        });
        if no_transform {
            return false;
        }
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if length.is_some_and(|l| l < self.0.min_size) {
            return false;
        }
        let Some(ct) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let ct = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.0.types.iter().any(|t| match t.strip_suffix("/*") {
            Some(top) => ct.split('/').next() == Some(top),
            None => *t == ct,
        })
    }
}

/// The q-value (0–1000) `Accept-Encoding` gives `token` (or `*`).
fn accepted(headers: &HeaderMap, token: &str) -> u32 {
    let mut star = None;
    for v in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .or_else(|| p.trim().strip_prefix("Q="))
                })
                .map_or(1000, |q| {
                    (q.trim().parse::<f32>().unwrap_or(0.0).clamp(0.0, 1.0) * 1000.0) as u32
                });
            if name.eq_ignore_ascii_case(token) {
                return q;
            }
            if name == "*" {
                star = Some(q);
            }
        }
    }
    star.unwrap_or(0)
}

impl Filter for Compressor {
    fn request(&self, req: &mut Request<'_>) -> Result<(), Answer> {
        if *req.method != Method::HEAD {
            if let Some(enc) = self.choose(req.headers) {
                req.state.extensions.insert(Chosen(enc));
            }
        }
        Ok(())
    }

    fn response(&self, resp: &mut Response<'_>) {
        if !self.eligible(*resp.status, resp.headers) {
            return;
        }
        let h = &mut *resp.headers;
        let varies = h.get_all(header::VARY).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("accept-encoding"))
            })
        });
        if !varies {
            h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        let Some(Chosen(enc)) = resp.state.extensions.get::<Chosen>().copied() else {
            return;
        };
        let Ok(encoder) = Encoder::new(enc) else {
            return;
        };
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(enc.token()),
        );
        h.remove(header::CONTENT_LENGTH);
        h.remove(header::ACCEPT_RANGES);
        if let Some(etag) = h.get(header::ETAG) {
            if !etag.as_bytes().starts_with(b"W/") {
                let mut weak = b"W/".to_vec();
                weak.extend_from_slice(etag.as_bytes());
                if let Ok(v) = HeaderValue::from_bytes(&weak) {
                    h.insert(header::ETAG, v);
                }
            }
        }
        resp.transforms.push(Box::new(encoder));
    }
}

/// One response's encoder, writing into a buffer emptied at every piece.
enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Done,
}

impl Encoder {
    fn new(enc: Encoding) -> std::io::Result<Encoder> {
        Ok(match enc {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::default(),
            )),
            Encoding::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                BROTLI_QUALITY,
                BROTLI_LGWIN,
            ))),
            Encoding::Zstd => {
                let mut z = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
                z.window_log(ZSTD_WINDOW_LOG)?;
                Encoder::Zstd(z)
            }
        })
    }
}

impl Transform for Encoder {
    fn data(&mut self, chunk: Bytes) -> std::io::Result<Bytes> {
        let out = match self {
            Encoder::Gzip(e) => {
                e.write_all(&chunk)?;
                e.flush()?;
                e.get_mut()
            }
            Encoder::Brotli(e) => {
                e.write_all(&chunk)?;
                e.flush()?;
                e.get_mut()
            }
            Encoder::Zstd(e) => {
                e.write_all(&chunk)?;
                e.flush()?;
                e.get_mut()
            }
            Encoder::Done => return Ok(Bytes::new()),
        };
        Ok(std::mem::take(out).into())
    }

    fn finish(&mut self) -> std::io::Result<Bytes> {
        let out = match std::mem::replace(self, Encoder::Done) {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Brotli(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
            Encoder::Done => Vec::new(),
        };
        Ok(out.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn roundtrip(enc: Encoding, pieces: &[&[u8]]) -> Vec<u8> {
        let mut e = Encoder::new(enc).unwrap();
        let mut wire = Vec::new();
        for p in pieces {
            wire.extend_from_slice(&e.data(Bytes::copy_from_slice(p)).unwrap());
        }
        wire.extend_from_slice(&e.finish().unwrap());
        let mut out = Vec::new();
        match enc {
            Encoding::Gzip => {
                flate2::read::GzDecoder::new(&wire[..])
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Encoding::Brotli => {
                brotli::Decompressor::new(&wire[..], 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Encoding::Zstd => out = zstd::decode_all(&wire[..]).unwrap(),
        }
        out
    }

    #[test]
    fn each_encoding_round_trips_piece_by_piece() {
        let body: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let pieces: Vec<&[u8]> = body.chunks(7_919).collect();
        for enc in [Encoding::Gzip, Encoding::Brotli, Encoding::Zstd] {
            assert_eq!(roundtrip(enc, &pieces), body, "{enc:?}");
            assert_eq!(roundtrip(enc, &[]), b"", "{enc:?} of nothing");
        }
    }

    #[test]
    fn accept_encoding_q_values_then_our_order() {
        let c = Compressor(Compress {
            encodings: vec![Encoding::Zstd, Encoding::Brotli, Encoding::Gzip],
            min_size: 0,
            types: vec!["text/*".into()],
        });
        let pick = |ae: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(ae).unwrap());
            c.choose(&h).map(|e| e.token())
        };
        assert_eq!(pick("gzip, br"), Some("br"));
        assert_eq!(pick("gzip, br;q=0.5"), Some("gzip"));
        assert_eq!(pick("zstd;q=0, gzip"), Some("gzip"));
        assert_eq!(pick("*"), Some("zstd"));
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("br;q=0.8, *;q=0.9"), Some("zstd"));
    }
}
