//! HTTP request path: hop-by-hop removal both ways, forwarding headers,
//! Via/Server, request-target bytes untouched, and routing's 404.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::*;

#[test]
fn hop_by_hop_headers_go_both_ways_and_forwarding_headers_are_set() {
    let (backend, seen) = raw_http_backend(|_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-resp-secret\r\nX-Resp-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
          Proxy-Authenticate: Basic\r\nX-Kept: yes\r\nServer: backend\r\n\r\nok"
            .to_vec()
    });
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let req = b"GET /a/../b//c%2f%41?q=1&q=2 HTTP/1.1\r\nHost: App.Example:8080\r\nConnection: keep-alive, X-Secret\r\n\
                X-Secret: s\r\nKeep-Alive: 300\r\nProxy-Authorization: Basic Zm9v\r\nProxy-Connection: keep-alive\r\n\
                TE: trailers, deflate\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
                X-Forwarded-Host: evil.test\r\nX-Keep-Me: 1\r\n\r\n";
    let (head, body) = raw_exchange(gh.addr("web"), req);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    let lower = head.to_ascii_lowercase();
    for gone in ["x-resp-secret", "keep-alive", "proxy-authenticate"] {
        assert!(
            !lower.contains(&format!("\n{gone}:")),
            "{gone} reached the client:\n{head}"
        );
    }
    assert!(lower.contains("\nx-kept: yes"));
    assert!(lower.contains("\nvia: 1.1 gatehouse"), "{head}");
    assert!(
        lower.contains("\nserver: backend"),
        "the upstream's Server header passes unchanged: {head}"
    );

    let seen = seen.lock().unwrap();
    let r = &seen[0];
    assert_eq!(
        r.request_line(),
        "GET /a/../b//c%2f%41?q=1&q=2 HTTP/1.1",
        "target bytes must be forwarded unchanged"
    );
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            r.header(gone).is_empty(),
            "{gone} reached the upstream:\n{}",
            r.head
        );
    }
    assert!(
        r.header("te").is_empty() || r.header("te") == ["trailers"],
        "{:?}",
        r.header("te")
    );
    assert_eq!(r.header("host"), ["App.Example:8080"]);
    assert_eq!(
        r.header("x-forwarded-for"),
        ["127.0.0.1"],
        "an untrusted client's X-Forwarded-For is replaced"
    );
    assert_eq!(r.header("x-forwarded-proto"), ["http"]);
    assert_eq!(r.header("x-forwarded-host"), ["App.Example:8080"]);
    assert_eq!(r.header("via"), ["1.1 gatehouse"]);
    assert_eq!(r.header("x-keep-me"), ["1"]);
}

#[test]
fn trusted_proxies_forwarding_headers_are_appended_and_forwarded_added() {
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let http = "http.trusted_proxies = [\"127.0.0.1/32\"]\nhttp.forwarded = true";
    let gh = Gatehouse::start(&http_config("", http, backend, ""));
    let req = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nForwarded: for=203.0.113.9\r\n\r\n";
    let (head, _) = raw_exchange(gh.addr("web"), req);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let r = seen.lock().unwrap()[0].clone();
    assert_eq!(r.header("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(r.header("x-forwarded-proto"), ["https"]);
    assert_eq!(
        r.header("forwarded"),
        ["for=203.0.113.9, for=127.0.0.1;proto=http;host=\"a.test\""]
    );
}

#[test]
fn client_address_from_proxy_protocol_reaches_x_forwarded_for() {
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config(
        "",
        "proxy_protocol.trusted = [\"127.0.0.1/32\"]",
        backend,
        "",
    ));
    let mut req = b"PROXY TCP4 198.51.100.23 10.0.0.1 5555 80\r\n".to_vec();
    req.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let (head, _) = raw_exchange(gh.addr("web"), &req);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        seen.lock().unwrap()[0].header("x-forwarded-for"),
        ["198.51.100.23"]
    );
}

#[test]
fn no_route_is_a_404_from_the_proxy() {
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config(
        "",
        "",
        backend,
        "match.hosts = [\"only.test\"]",
    ));
    let (head, body) = raw_exchange(
        gh.addr("web"),
        b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("gatehouse-error: no_route"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("server: gatehouse"),
        "{head}"
    );
    assert!(String::from_utf8_lossy(&body).contains("no_route"));
    assert!(seen.lock().unwrap().is_empty());
    let (head, _) = raw_exchange(
        gh.addr("web"),
        b"GET / HTTP/1.1\r\nHost: ONLY.test:81\r\n\r\n",
    );
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "host matching ignores case and port: {head}"
    );
}
