//! Host hygiene: an invalid Host (or authority) is refused with 400 and is
//! never reflected upstream, in a response or in the access log; an
//! HTTP/1.0 request without Host goes upstream with the target's authority.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::*;

#[test]
fn invalid_host_values_get_400_and_are_never_forwarded() {
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    for bad in [
        "a b",
        "evil.com@www.example.test",
        "www.example.test/../x",
        "%0d%0aSet-Cookie:%20x=1",
        "www.example.test\\x",
        "www.example.test:99999",
        "",
        "[::1",
    ] {
        let req = format!("GET /ok HTTP/1.1\r\nHost: {bad}\r\nConnection: close\r\n\r\n");
        let (head, body) = raw_exchange(gh.addr("web"), req.as_bytes());
        assert!(head.starts_with("HTTP/1.1 400"), "{bad:?}: {head}");
        assert!(
            head.contains("gatehouse-error: bad_request"),
            "{bad:?}: {head}"
        );
        if !bad.is_empty() {
            let text = format!("{head}{}", String::from_utf8_lossy(&body));
            assert!(!text.contains(bad), "{bad:?} reflected: {text}");
        }
    }
    // Absolute-form targets with an invalid authority too.
    for bad in ["evil.com@www.example.test", "a%0d%0ab"] {
        let req = format!("GET http://{bad}/ok HTTP/1.1\r\nConnection: close\r\n\r\n");
        let (head, _) = raw_exchange(gh.addr("web"), req.as_bytes());
        assert!(head.starts_with("HTTP/1.1 400"), "{bad:?}: {head}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "an invalid Host reached the upstream"
    );
    let log = gh.log_text();
    for bad in ["evil.com@", "%0d%0a", "a b"] {
        assert!(!log.contains(bad), "{bad:?} in the log");
    }
    // Valid ones still pass, the port and an IPv6 literal included.
    for good in ["www.example.test:8080", "[::1]:8080", "a.test"] {
        let req = format!("GET /ok HTTP/1.1\r\nHost: {good}\r\nConnection: close\r\n\r\n");
        let (head, body) = raw_exchange(gh.addr("web"), req.as_bytes());
        assert!(head.starts_with("HTTP/1.1 200"), "{good:?}: {head}");
        assert_eq!(body, b"ok");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[0].header("x-forwarded-host"),
        ["www.example.test:8080"]
    );
}

#[test]
fn http10_without_host_goes_upstream_with_the_targets_authority() {
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let (head, body) = raw_exchange(gh.addr("web"), b"GET /ok HTTP/1.0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    // A body (hyper's client) as well as none (ours).
    let (head, _) = raw_exchange(
        gh.addr("web"),
        b"POST /ok HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    for r in seen.iter() {
        assert!(r.request_line().ends_with("HTTP/1.1"), "{}", r.head);
        assert_eq!(r.header("host"), [backend.to_string()], "{}", r.head);
        assert!(r.header("x-forwarded-host").is_empty(), "{}", r.head);
    }
}

#[test]
fn http2_authority_is_validated_like_host() {
    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let gh = Gatehouse::start(&http_config("", "http.h2c = true", backend, ""));
    let rt = test_runtime();
    rt.block_on(async {
        let (mut client, _conn) =
            h2c_client::<http_body_util::Empty<bytes::Bytes>>(gh.addr("web")).await;
        let status = |uri: &str| {
            http::Request::get(uri)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap()
        };
        let resp = client
            .send_request(status("http://evil.com@www.example.test/ok"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let resp = client
            .send_request(status("http://a.test:8080/ok"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    });
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("host"), ["a.test:8080"]);
}
