//! Fuzzes the HTTP/1.1 request head reader: finding the end of a head and
//! parsing it (httparse, framing and smuggling rules) must never panic; a
//! head that parses has unambiguous framing and no bare LF.
#![no_main]

use bytes::Bytes;
use gatehouse::http::h1::head::{self, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let Some(end) = head::head_end(&bytes) else {
        return;
    };
    assert!(end <= bytes.len());
    let h = bytes.slice(..end);
    if let Ok(parsed) = head::parse_request(&h, 100, 8192) {
        let headers = parsed.request.headers();
        let te = headers.contains_key("transfer-encoding");
        let cl = headers.get_all("content-length").iter().count();
        assert!(!(te && cl > 0), "both framings accepted");
        assert!(cl <= 1, "duplicate Content-Length kept");
        if parsed.framing == Framing::Chunked {
            assert!(te);
        }
        for (i, &b) in h.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && h[i - 1] == b'\r', "bare LF accepted");
            }
        }
    }
});
