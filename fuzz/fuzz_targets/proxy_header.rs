//! Fuzzes PROXY protocol framing and decoding: any input must be framed and
//! decoded without panicking, within the size bounds, and a decoded header
//! must re-encode to something that decodes to the same addresses and TLVs.
#![no_main]

use gatehouse::proxy_protocol::{self, Framing, MAX_V1_LEN, MAX_V2_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match proxy_protocol::frame(data) {
        Framing::Complete(len) => assert!(len <= data.len() && len <= MAX_V2_LEN.max(MAX_V1_LEN)),
        Framing::Incomplete => assert!(data.len() < MAX_V2_LEN),
        Framing::NotProxy | Framing::Invalid(_) => {}
    }
    if let Ok((header, len)) = proxy_protocol::decode(data) {
        assert!(len <= data.len());
        if let Some((src, dst)) = header.addresses {
            let again = proxy_protocol::encode_v2(src, dst, &header.tlvs);
            let (back, _) = proxy_protocol::decode(&again).expect("our own v2 header decodes");
            assert_eq!(back.tlvs, header.tlvs);
        }
    }
});
