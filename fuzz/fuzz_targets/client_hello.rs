//! Fuzzes the ClientHello reader that `tls` and `https` listeners run on
//! bytes from the network before any TLS library sees them: no input may
//! panic, an answer never needs more than `MAX_HELLO` bytes, a found server
//! name is a valid lower-case host name, and more bytes never change a
//! complete answer.
#![no_main]

use gatehouse::tls::hello::{self, MAX_HELLO, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = hello::parse(data);
    match &first {
        Parsed::Complete(h) => {
            if let Some(name) = &h.sni {
                assert!(!name.is_empty() && name.len() <= 253);
                assert!(name.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'.'
                    || b == b'_'));
            }
            assert!(h.alpn.iter().all(|p| !p.is_empty()));
            // Trailing bytes (the client's next records) change nothing.
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]);
            assert_eq!(hello::parse(&longer), first);
        }
        Parsed::Incomplete => assert!(data.len() < MAX_HELLO),
        Parsed::Invalid(_) => {}
    }
});
