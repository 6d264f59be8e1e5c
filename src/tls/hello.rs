//! Reading a TLS ClientHello without consuming it: enough of the record and
//! handshake layers to find the server name (SNI) and the offered ALPN
//! protocols, so that a `tls` listener can route before deciding whether to
//! terminate. Bounded: a hello larger than `MAX_HELLO` is invalid. Every
//! length is checked; no input can make this panic (fuzzed by
//! `fuzz/fuzz_targets/client_hello.rs`).

/// The most bytes of records we read to find a complete ClientHello.
pub const MAX_HELLO: usize = 16 * 1024 + 5;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hello {
    /// The `host_name` of the server_name extension, lower case.
    pub sni: Option<String>,
    /// ALPN protocol names offered by the client, in its order.
    pub alpn: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Complete(Hello),
    /// More bytes are needed.
    Incomplete,
    /// Not a TLS ClientHello, or a malformed one.
    Invalid(&'static str),
}

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// Parses the ClientHello at the start of `buf` (the bytes read so far).
pub fn parse(buf: &[u8]) -> Parsed {
    // Reassemble the handshake message from as many records as it spans.
    let mut handshake: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        let Some(header) = buf.get(pos..pos + 5) else {
            return incomplete_or_invalid(buf.len());
        };
        if header[0] != CONTENT_HANDSHAKE {
            return Parsed::Invalid("not a TLS handshake record");
        }
        if header[1] != 3 || header[2] > 4 {
            return Parsed::Invalid("unknown record version");
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16 * 1024 {
            return Parsed::Invalid("bad record length");
        }
        let Some(fragment) = buf.get(pos + 5..pos + 5 + len) else {
            return incomplete_or_invalid(buf.len());
        };
        handshake.extend_from_slice(fragment);
        pos += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != HANDSHAKE_CLIENT_HELLO {
                return Parsed::Invalid("first handshake message is not a ClientHello");
            }
            let body_len = (usize::from(handshake[1]) << 16)
                | (usize::from(handshake[2]) << 8)
                | usize::from(handshake[3]);
            if body_len + 4 > MAX_HELLO {
                return Parsed::Invalid("ClientHello too large");
            }
            if handshake.len() >= body_len + 4 {
                return match client_hello(&handshake[4..4 + body_len]) {
                    Some(hello) => Parsed::Complete(hello),
                    None => Parsed::Invalid("malformed ClientHello"),
                };
            }
        }
    }
}

fn incomplete_or_invalid(have: usize) -> Parsed {
    if have >= MAX_HELLO {
        Parsed::Invalid("ClientHello too large")
    } else {
        Parsed::Incomplete
    }
}

/// A cursor over a byte slice whose reads fail (`None`) past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a `len_bytes`-byte length prefix.
    fn vec(&mut self, len_bytes: usize) -> Option<&'a [u8]> {
        let len = match len_bytes {
            1 => usize::from(self.u8()?),
            _ => usize::from(self.u16()?),
        };
        self.take(len)
    }
}

fn client_hello(body: &[u8]) -> Option<Hello> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec(1)?; // session id
    let suites = r.vec(2)?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return None;
    }
    r.vec(1)?; // compression methods
    let mut hello = Hello::default();
    if r.0.is_empty() {
        return Some(hello); // no extensions at all
    }
    let mut exts = Reader(r.vec(2)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec(2)?;
        match kind {
            EXT_SERVER_NAME => hello.sni = server_name(data)?,
            EXT_ALPN => hello.alpn = alpn(data)?,
            _ => {}
        }
    }
    Some(hello)
}

/// The `host_name` entry of a server_name extension (RFC 6066 §3).
fn server_name(data: &[u8]) -> Option<Option<String>> {
    let mut list = Reader(Reader(data).vec(2)?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec(2)?;
        if kind == 0 {
            // One trailing dot (a fully qualified name) is dropped; what is
            // left must be a name of at most 253 bytes in labels of 1 to 63.
            let name = name.strip_suffix(b".").unwrap_or(name);
            let valid = name.len() <= 253
                && name
                    .split(|&b| b == b'.')
                    .all(|label| !label.is_empty() && label.len() <= 63)
                && name
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
            if !valid {
                return None;
            }
            let name = std::str::from_utf8(name).ok()?.to_ascii_lowercase();
            return Some(Some(name));
        }
    }
    Some(None)
}

fn alpn(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut list = Reader(Reader(data).vec(2)?);
    let mut out = Vec::new();
    while !list.0.is_empty() {
        let name = list.vec(1)?;
        if name.is_empty() {
            return None;
        }
        out.push(name.to_vec());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record as a client would send it.
    pub fn hello_record(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let mut entry = vec![0u8];
            entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
            entry.extend_from_slice(name.as_bytes());
            let mut list = (entry.len() as u16).to_be_bytes().to_vec();
            list.extend_from_slice(&entry);
            exts.extend_from_slice(&0u16.to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
            exts.extend_from_slice(&list);
        }
        if !alpn.is_empty() {
            let mut names = Vec::new();
            for p in alpn {
                names.push(p.len() as u8);
                names.extend_from_slice(p.as_bytes());
            }
            let mut list = (names.len() as u16).to_be_bytes().to_vec();
            list.extend_from_slice(&names);
            exts.extend_from_slice(&16u16.to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
            exts.extend_from_slice(&list);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn finds_sni_and_alpn() {
        let rec = hello_record(Some("A.Test"), &["h2", "http/1.1"]);
        let Parsed::Complete(h) = parse(&rec) else {
            panic!("not complete");
        };
        assert_eq!(h.sni.as_deref(), Some("a.test"));
        assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        // Every strict prefix needs more bytes.
        for n in 0..rec.len() {
            assert_eq!(parse(&rec[..n]), Parsed::Incomplete, "prefix {n}");
        }
    }

    #[test]
    fn no_sni_and_split_records() {
        let rec = hello_record(None, &[]);
        assert_eq!(parse(&rec), Parsed::Complete(Hello::default()));
        // The same handshake split over two records.
        let hs = &rec[5..];
        let (a, b) = hs.split_at(10);
        let mut two = vec![22, 3, 1, 0, a.len() as u8];
        two.extend_from_slice(a);
        two.extend_from_slice(&[22, 3, 1]);
        two.extend_from_slice(&(b.len() as u16).to_be_bytes());
        two.extend_from_slice(b);
        assert_eq!(parse(&two), Parsed::Complete(Hello::default()));
    }

    #[test]
    fn garbage_is_invalid_at_once() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Invalid(_)));
        assert!(matches!(parse(&[22, 9, 9, 0, 1]), Parsed::Invalid(_)));
        assert!(matches!(parse(&[22, 3, 1, 0, 0]), Parsed::Invalid(_)));
        let mut bad = hello_record(Some("a.test"), &[]);
        let n = bad.len();
        bad[n - 3] = b'/'; // an invalid byte in the host name
        assert!(matches!(parse(&bad), Parsed::Invalid(_)));
    }

    /// Names with an empty label, a label over 63 bytes, or longer than 253
    /// bytes once one trailing dot is dropped, are invalid; one trailing
    /// dot is accepted and dropped.
    #[test]
    fn server_name_bounds() {
        for bad in [".", "..", "....", ".a.test", "a..test"] {
            let rec = hello_record(Some(bad), &[]);
            assert!(matches!(parse(&rec), Parsed::Invalid(_)), "{bad:?}");
        }
        let label = "a".repeat(63);
        let long = format!("{label}.{label}.{label}.{label}.");
        let long_label = format!("{}.test", "a".repeat(64));
        for bad in [long, long_label] {
            assert!(matches!(
                parse(&hello_record(Some(&bad), &[])),
                Parsed::Invalid(_)
            ));
        }
        let max = format!("{label}.{label}.{label}.{}.", "a".repeat(61));
        let Parsed::Complete(h) = parse(&hello_record(Some(&max), &[])) else {
            panic!("253-byte name with a trailing dot refused");
        };
        assert_eq!(h.sni.map(|n| n.len()), Some(253));
        let Parsed::Complete(h) = parse(&hello_record(Some("A.test."), &[])) else {
            panic!("fully qualified name refused");
        };
        assert_eq!(h.sni.as_deref(), Some("a.test"));
    }

    /// The input that the `client_hello` fuzz target found after eight
    /// minutes: its reader once returned an empty server name for it.
    #[test]
    fn fuzz_regression_empty_name() {
        const INPUT: &str = "FgMBABYBAAEAAQAAAAACABoBAAEA/0EAfwAlFgMBABYEAAENAQAAAAAAAAABuQEALUEAfyAlFgMBAAEAFgMBAQAAAAABGhYDAQAWAQABAAEAAAAAgniCgjCCggAlAAAAAgAKgoKCgoIAFgMBAQBvAAABGhYDAQAWAQABAP//9QAAAEAAAAASAACCggEWAgEAFgEAAQABAAAAAAAAGgAWAQABAAEAAAAAAS5BARoWAwEAFgEDAQD///UAAABAAAAAEgAAfyAlFgMBAAEAFgMBAQAAAAABFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhoWA5eXl5eXl5eXl5eXl5eXl5eXl5eXl5eXl5eXl5eXl5eXggEVAQABAP8AAAAAAAqCgoKC/0EAw8PDw8PDw8PDLy8ALwAA";
        let data = base64_decode(INPUT);
        if let Parsed::Complete(h) = parse(&data) {
            if let Some(name) = h.sni {
                assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
            }
        }
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
        let mut out = Vec::new();
        for chunk in bytes.chunks(4) {
            let mut acc = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                acc |= u32::from(val(c)) << (18 - 6 * i);
            }
            for i in 0..chunk.len().saturating_sub(1) {
                out.push((acc >> (16 - 8 * i)) as u8);
            }
        }
        out
    }

    #[test]
    fn never_panics_on_mutations() {
        let rec = hello_record(Some("example.test"), &["h2"]);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut m = rec.clone();
            let i = (seed as usize) % m.len();
            m[i] = (seed >> 32) as u8;
            let cut = ((seed >> 40) as usize) % (m.len() + 1);
            let _ = parse(&m[..cut]);
        }
    }
}
