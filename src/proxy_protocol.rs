//! PROXY protocol v1 (text) and v2 (binary): bounded framing of an incoming
//! header, decoding with the `ppp` crate, and encoding headers to send
//! upstream (with v2 TLVs passed through unchanged when a route asks for it).
//!
//! Framing is ours so that reads are bounded before any parser sees a byte:
//! a v1 header is at most 107 bytes, a v2 header at most `MAX_V2_LEN`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use ppp::v2;

/// v1 headers are at most 107 bytes including CRLF (spec §2.1).
pub const MAX_V1_LEN: usize = 107;
/// Largest v2 header we accept (16-byte preamble + addresses + TLVs).
pub const MAX_V2_LEN: usize = 4096;
/// TLV types of PROXY v2 (section 2.2 of the spec).
pub const PP2_TYPE_ALPN: u8 = 0x01;
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_PREFIX: &[u8] = v2::PROTOCOL_PREFIX;

/// A v2 Type-Length-Value entry, kept as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    pub kind: u8,
    pub value: Vec<u8>,
}

/// What a decoded header says about the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// `None` for `PROXY UNKNOWN`, v2 `LOCAL`, or a non-IP address family:
    /// the connection's own addresses then apply.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    pub tlvs: Vec<Tlv>,
}

/// How much of a buffer is a PROXY header.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    /// Could still become a header: read more.
    Incomplete,
    /// The bytes do not start with a PROXY signature.
    NotProxy,
    /// A complete header occupies the first `len` bytes.
    Complete(usize),
    /// Starts like a header but cannot be a valid one (e.g. too long).
    Invalid(&'static str),
}

/// Decides, looking only at the bytes so far, whether and where a header ends.
pub fn frame(buf: &[u8]) -> Framing {
    if buf.is_empty() {
        return Framing::Incomplete;
    }
    if is_prefix_of(buf, V2_PREFIX) {
        if buf.len() < 16 {
            return Framing::Incomplete;
        }
        let len = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if len > MAX_V2_LEN {
            return Framing::Invalid("v2 header longer than the limit");
        }
        return if buf.len() >= len {
            Framing::Complete(len)
        } else {
            Framing::Incomplete
        };
    }
    if is_prefix_of(buf, V1_PREFIX) {
        let window = &buf[..buf.len().min(MAX_V1_LEN)];
        return match window.windows(2).position(|w| w == b"\r\n") {
            Some(pos) => Framing::Complete(pos + 2),
            None if buf.len() >= MAX_V1_LEN => {
                Framing::Invalid("v1 header without CRLF in 107 bytes")
            }
            None => Framing::Incomplete,
        };
    }
    Framing::NotProxy
}

/// True when `buf` and `signature` agree on their common length.
fn is_prefix_of(buf: &[u8], signature: &[u8]) -> bool {
    let n = buf.len().min(signature.len());
    buf[..n] == signature[..n]
}

/// True when `buf` could be the start of a PROXY header (used to refuse a
/// header from an untrusted peer).
pub fn looks_like_header(buf: &[u8]) -> bool {
    !buf.is_empty() && (is_prefix_of(buf, V2_PREFIX) || is_prefix_of(buf, V1_PREFIX))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("malformed v1 header")]
    V1,
    #[error("malformed v2 header")]
    V2,
    #[error("malformed v2 TLVs")]
    Tlvs,
    #[error("{0}")]
    Framing(&'static str),
    #[error("not a PROXY header")]
    NotProxy,
    #[error("truncated header")]
    Truncated,
}

/// Decodes exactly one framed header from `buf` (as returned by `frame`).
/// Never panics, whatever the input.
pub fn decode(buf: &[u8]) -> Result<(ProxyHeader, usize), DecodeError> {
    let len = match frame(buf) {
        Framing::Complete(len) => len,
        Framing::Incomplete => return Err(DecodeError::Truncated),
        Framing::NotProxy => return Err(DecodeError::NotProxy),
        Framing::Invalid(m) => return Err(DecodeError::Framing(m)),
    };
    let bytes = &buf[..len];
    if bytes.starts_with(V1_PREFIX) {
        let h = ppp::v1::Header::try_from(bytes).map_err(|_| DecodeError::V1)?;
        if h.header.len() != len {
            return Err(DecodeError::V1);
        }
        let addresses = match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some((
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )),
            ppp::v1::Addresses::Tcp6(a) => Some((
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )),
            ppp::v1::Addresses::Unknown => None,
        };
        return Ok((
            ProxyHeader {
                addresses,
                tlvs: Vec::new(),
            },
            len,
        ));
    }
    let h = v2::Header::try_from(bytes).map_err(|_| DecodeError::V2)?;
    if h.len() != len {
        return Err(DecodeError::V2);
    }
    let mut tlvs = Vec::new();
    for tlv in h.tlvs() {
        let tlv = tlv.map_err(|_| DecodeError::Tlvs)?;
        tlvs.push(Tlv {
            kind: tlv.kind,
            value: tlv.value.to_vec(),
        });
    }
    let addresses = match (h.command, h.addresses) {
        (v2::Command::Local, _) => None,
        (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )),
        (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )),
        (v2::Command::Proxy, _) => None,
    };
    Ok((ProxyHeader { addresses, tlvs }, len))
}

/// Makes both addresses the same family (v4-mapped v6 when they differ).
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    fn to_v6(a: SocketAddr) -> SocketAddr {
        match a.ip() {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
            IpAddr::V6(_) => a,
        }
    }
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (to_v6(src), to_v6(dst))
    }
}

/// `PROXY TCP4 src dst sport dport\r\n`.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A v2 PROXY command header over TCP, with the given TLVs in order.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr, tlvs: &[Tlv]) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let mut out =
        Vec::with_capacity(16 + 36 + tlvs.iter().map(|t| 3 + t.value.len()).sum::<usize>());
    out.extend_from_slice(V2_PREFIX);
    out.push(0x21); // version 2, PROXY
    let addr_len: usize = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            out.push(0x11); // AF_INET, STREAM
            12
        }
        _ => {
            out.push(0x21); // AF_INET6, STREAM
            36
        }
    };
    let tlv_len: usize = tlvs.iter().map(|t| 3 + t.value.len()).sum();
    let len = u16::try_from(addr_len + tlv_len).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    for t in tlvs {
        let vlen = u16::try_from(t.value.len()).unwrap_or(u16::MAX);
        out.push(t.kind);
        out.extend_from_slice(&vlen.to_be_bytes());
        out.extend_from_slice(&t.value[..vlen as usize]);
    }
    out
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_round_trip_keeps_payload_after_header() {
        let mut buf = encode_v1(addr("10.1.2.3:4567"), addr("10.0.0.1:80"));
        let hlen = buf.len();
        buf.extend_from_slice(b"GET /");
        assert_eq!(frame(&buf), Framing::Complete(hlen));
        let (h, len) = decode(&buf).unwrap();
        assert_eq!(len, hlen);
        assert_eq!(
            h.addresses,
            Some((addr("10.1.2.3:4567"), addr("10.0.0.1:80")))
        );
    }

    #[test]
    fn v2_round_trip_with_tlvs_and_v6() {
        let tlvs = vec![
            Tlv {
                kind: 0x02,
                value: b"example.com".to_vec(),
            },
            Tlv {
                kind: 0xE0,
                value: vec![1, 2, 3],
            },
        ];
        for (s, d) in [
            ("10.1.2.3:4567", "10.0.0.1:80"),
            ("[2001:db8::1]:5", "[::1]:443"),
            ("10.1.2.3:4567", "[::1]:443"),
        ] {
            let buf = encode_v2(addr(s), addr(d), &tlvs);
            let (h, len) = decode(&buf).unwrap();
            assert_eq!(len, buf.len());
            assert_eq!(h.tlvs, tlvs);
            let (src, _) = h.addresses.unwrap();
            assert_eq!(src.port(), addr(s).port());
        }
    }

    #[test]
    fn framing_is_bounded_and_incremental() {
        let full = encode_v2(addr("1.2.3.4:1"), addr("5.6.7.8:2"), &[]);
        for cut in 0..full.len() {
            assert_eq!(frame(&full[..cut]), Framing::Incomplete, "cut at {cut}");
        }
        let mut huge = full.clone();
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(frame(&huge), Framing::Invalid(_)));
        let long_v1 = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(frame(&long_v1), Framing::Invalid(_)));
        assert_eq!(frame(b"GET / HTTP/1.1\r\n"), Framing::NotProxy);
        assert_eq!(
            decode(b"PROXY TCP4 1.2.3.4\r\n").unwrap_err(),
            DecodeError::V1
        );
    }

    #[test]
    fn decode_never_panics_on_noise() {
        // A deterministic xorshift stream of inputs biased towards both signatures.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..200_000 {
            let len = (next() % 300) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            match i % 3 {
                0 if buf.len() >= 16 => {
                    buf[..12].copy_from_slice(V2_PREFIX);
                    buf[12] = 0x20 | (next() as u8 & 1);
                    buf[14] = 0;
                    buf[15] = (next() % 64) as u8;
                }
                1 if buf.len() >= 6 => buf[..6].copy_from_slice(V1_PREFIX),
                _ => {}
            }
            let _ = decode(&buf);
        }
    }
}
