//! Fuzzes our upstream HTTP/1.1 client's reader: a response head from an
//! upstream (found, parsed, framing decided) and its body decoded from the
//! bytes after it must never panic; a parsed head keeps no
//! Transfer-Encoding and at most one Content-Length, and decoding never
//! yields more bytes than it was given.
#![no_main]

use bytes::{Bytes, BytesMut};
use gatehouse::http::h1::head;
use gatehouse::http::pool::h1::parse_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let bytes = Bytes::copy_from_slice(data);
    let Some(end) = head::head_end(&bytes) else {
        return;
    };
    let Ok(mut parsed) = parse_response(&bytes.slice(..end), flags & 1 == 1) else {
        return;
    };
    let headers = parsed.response.headers();
    assert!(!headers.contains_key("transfer-encoding"));
    assert!(headers.get_all("content-length").iter().count() <= 1);
    let mut rest = BytesMut::from(&bytes[end..]);
    let given = rest.len();
    let mut yielded = 0;
    for _ in 0..4096 {
        match parsed.decoder.advance(&mut rest) {
            Ok(Some(frame)) => {
                if let Some(d) = frame.data_ref() {
                    yielded += d.len();
                }
            }
            Ok(None) if rest.is_empty() || parsed.decoder.is_done() => break,
            Ok(None) => {}
            Err(_) => break,
        }
    }
    assert!(yielded <= given);
});
