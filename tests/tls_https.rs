//! `https` listeners: TLS terminated with a certificate per SNI (exact,
//! wildcard, default), TLS 1.2 and 1.3, HTTP/2 by ALPN, re-encryption to
//! verified upstreams, certificates replaced on disk without dropping
//! connections, domain fronting (421), the HTTPS redirect action, and
//! client certificates (mTLS) as a routing input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::tls::{Pki, peer_names, tls_connect, tls_http_backend};
use common::*;

fn https_config(pki: &Pki, certs: &str, routes: &str) -> String {
    let _ = pki;
    format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 2
{certs}
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "https"
{routes}
"#
    )
}

fn cert_entry(cert: &std::path::Path, key: &std::path::Path, extra: &str) -> String {
    format!(
        "[[certificates]]\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n",
        cert.display(),
        key.display()
    )
}

/// curl -v against `https://{host}:{port}{path}` resolved to 127.0.0.1.
fn curl(
    addr: SocketAddr,
    host: &str,
    path: &str,
    ca: &std::path::Path,
    args: &[&str],
) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "10", "--resolve"])
        .arg(format!("{host}:{}:127.0.0.1", addr.port()))
        .arg("--cacert")
        .arg(ca)
        .args(args)
        .args(["-w", "\nhttp_version=%{http_version}"])
        .arg(format!("https://{host}:{}{path}", addr.port()))
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn get(s: &mut common::tls::ClientStream, host: &str, path: &str) -> (String, Vec<u8>) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    s.flush().unwrap();
    read_response(s)
}

#[test]
fn certificates_per_sni_over_tls_12_and_13_with_http2_by_alpn() {
    let pki = Pki::new("ca");
    let (a_cert, a_key) = pki.issue("a", &["a.test"]);
    let (w_cert, w_key) = pki.issue("w", &["*.w.test"]);
    let (d_cert, d_key) = pki.issue("d", &["default.test"]);
    let (backend, seen) = raw_http_backend(|req| {
        ok_response(&format!(
            "proto={} host={}",
            req.header("x-forwarded-proto").join(","),
            req.header("host").join(",")
        ))
    });
    let gh = Gatehouse::start(&https_config(
        &pki,
        &[
            cert_entry(&a_cert, &a_key, ""),
            cert_entry(&w_cert, &w_key, ""),
            cert_entry(&d_cert, &d_key, "default = true"),
        ]
        .concat(),
        &format!(
            "[[routes]]\nname = \"app\"\nmatch.listener = \"web\"\naction.forward = [\"{backend}\"]\n"
        ),
    ));
    let web = gh.addr("web");
    for (version, flags) in [
        ("TLSv1.2", &["--tlsv1.2", "--tls-max", "1.2"][..]),
        ("TLSv1.3", &["--tlsv1.3"][..]),
    ] {
        let (out, err) = curl(web, "a.test", "/x", &pki.ca_pem, flags);
        assert!(out.starts_with("proto=https host=a.test:"), "{out}\n{err}");
        assert!(out.ends_with("http_version=2"), "{out}");
        assert!(
            err.contains(&format!("SSL connection using {version}")),
            "{err}"
        );
        assert!(err.contains("subject: CN=a.test"), "{err}");
        assert!(
            err.contains("ALPN: server accepted h2")
                || err.contains("ALPN, server accepted to use h2"),
            "{err}"
        );
    }
    let (out, err) = curl(web, "api.w.test", "/", &pki.ca_pem, &["--http1.1"]);
    assert!(out.ends_with("http_version=1.1"), "{out}");
    assert!(err.contains("subject: CN=*.w.test"), "{err}");
    // A name with no certificate of its own gets the default one.
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &web.to_string(),
            "-servername",
            "other.test",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.lines()
            .any(|l| l.starts_with("subject=") && l.contains("default.test")),
        "{out}"
    );
    let mut s = tls_connect(web, "default.test", pki.client(&[])).unwrap();
    assert_eq!(peer_names(&s), vec!["default.test".to_string()]);
    let (head, body) = get(&mut s, "default.test", "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"proto=https host=default.test");
    assert_eq!(seen.lock().unwrap().len(), 4);
}

#[test]
fn without_a_certificate_for_the_name_the_handshake_is_refused_with_a_reason() {
    let pki = Pki::new("ca");
    let (a_cert, a_key) = pki.issue("a", &["a.test"]);
    let (backend, _) = raw_http_backend(|_| ok_response("x"));
    let gh = Gatehouse::start(&https_config(
        &pki,
        &cert_entry(&a_cert, &a_key, ""),
        &format!(
            "[[routes]]\nname = \"app\"\nmatch.listener = \"web\"\naction.forward = [\"{backend}\"]\n"
        ),
    ));
    let web = gh.addr("web");
    assert!(tls_connect(web, "b.test", pki.client(&[])).is_err());
    gh.wait_closed_count("tls_no_certificate", 1);
    assert!(tls_connect(web, "127.0.0.1", pki.client(&[])).is_err());
    gh.wait_closed_count("tls_no_sni", 1);
    // A client that does not trust us fails its handshake: counted as such.
    let other = Pki::new("other");
    assert!(tls_connect(web, "a.test", other.client(&[])).is_err());
    gh.wait_closed_count("tls_handshake_failed", 1);
    for reason in ["tls_no_certificate", "tls_no_sni", "tls_handshake_failed"] {
        gh.wait_log(&format!(r#""reason":"{reason}""#), Duration::from_secs(1));
    }
    gh.wait_empty(Duration::from_secs(5));
}

#[test]
fn reencrypts_to_verified_upstreams_and_blames_an_untrusted_one() {
    let pki = Pki::new("ca");
    let (a_cert, a_key) = pki.issue("a", &["a.test"]);
    let (up_cert, up_key) = pki.issue("up", &["backend.internal"]);
    let (good, good_seen) = tls_http_backend(&up_cert, &up_key);
    let rogue_ca = Pki::new("rogue");
    let (r_cert, r_key) = rogue_ca.issue("rogue", &["backend.internal"]);
    let (rogue, rogue_seen) = tls_http_backend(&r_cert, &r_key);
    let ca = pki.ca_pem.display();
    let gh = Gatehouse::start(&https_config(
        &pki,
        &cert_entry(&a_cert, &a_key, ""),
        &format!(
            r#"[[routes]]
name = "good"
match = {{ listener = "web", path_prefix = "/good" }}
action.forward = ["{good}"]
upstream = {{ tls = true, ca = "{ca}", server_name = "backend.internal" }}
[[routes]]
name = "rogue"
match = {{ listener = "web", path_prefix = "/rogue" }}
action.forward = ["{rogue}"]
upstream = {{ tls = true, ca = "{ca}", server_name = "backend.internal" }}
"#
        ),
    ));
    let web = gh.addr("web");
    let mut s = tls_connect(web, "a.test", pki.client(&[])).unwrap();
    let (head, body) = get(&mut s, "a.test", "/good");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"tls:backend.internal");
    // The pooled TLS connection is reused.
    let (head, _) = get(&mut s, "a.test", "/good");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(good_seen.lock().unwrap().len(), 1);

    let (head, body) = get(&mut s, "a.test", "/rogue");
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(
        head.contains("gatehouse-error: upstream_tls_verify_failed"),
        "{head}"
    );
    assert!(String::from_utf8_lossy(&body).contains("upstream side"));
    assert!(
        rogue_seen.lock().unwrap().is_empty(),
        "no request reached it"
    );
    gh.wait_log("upstream_tls_verify_failed", Duration::from_secs(2));
    // The verifier's reason, at info level and on the connection's entry.
    gh.wait_log("unknown issuer", Duration::from_secs(2));
    let conns = gh.connections();
    let why = conns["connections"][0]["upstream_error"].as_str().unwrap();
    assert!(why.contains("unknown issuer"), "{conns}");
    assert_eq!(
        gh.metric(
            "gatehouse_http_request_end_total",
            &[
                ("route", "rogue"),
                ("reason", "upstream_tls_verify_failed"),
                ("side", "upstream")
            ]
        ),
        1
    );
}

#[test]
fn a_certificate_replaced_on_disk_is_served_to_new_handshakes_without_dropping_open_ones() {
    let pki = Pki::new("ca");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.issue_into(dir.path(), "site", &["a.test"], 2040);
    let (backend, _) = raw_http_backend(|_| ok_response("hello"));
    let gh = Gatehouse::start(&https_config(
        &pki,
        &cert_entry(&cert, &key, ""),
        &format!(
            "[[routes]]\nname = \"app\"\nmatch.listener = \"web\"\naction.forward = [\"{backend}\"]\n"
        ),
    ));
    let web = gh.addr("web");
    let label = cert.display().to_string();
    let not_after = |g: &Gatehouse| {
        g.metric(
            "gatehouse_tls_certificate_not_after_seconds",
            &[("certificate", label.as_str())],
        )
    };
    assert_eq!(not_after(&gh), 2_208_988_800); // 2040-01-01
    let mut open = tls_connect(web, "a.test", pki.client(&[])).unwrap();
    let (head, _) = get(&mut open, "a.test", "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let old_serial = open.conn.peer_certificates().unwrap()[0].to_vec();

    // Replace both files atomically (write aside, rename over).
    let staging = tempfile::tempdir_in(dir.path()).unwrap();
    let (c2, k2) = pki.issue_into(staging.path(), "site", &["a.test"], 2041);
    std::fs::rename(&k2, &key).unwrap();
    std::fs::rename(&c2, &cert).unwrap();
    gh.wait_for("the new certificate", Duration::from_secs(5), |g| {
        not_after(g) == 2_240_611_200 // 2041-01-01
    });
    let fresh = tls_connect(web, "a.test", pki.client(&[])).unwrap();
    assert_ne!(
        fresh.conn.peer_certificates().unwrap()[0].to_vec(),
        old_serial
    );
    // The connection opened before the change goes on.
    let (head, body) = get(&mut open, "a.test", "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"hello");

    // A broken file keeps the current certificate; the admin call reloads.
    std::fs::write(&cert, "not a certificate").unwrap();
    gh.wait_for("the failed reload", Duration::from_secs(5), |g| {
        g.metric(
            "gatehouse_tls_certificate_reloads_total",
            &[("result", "error")],
        ) >= 1
    });
    assert!(tls_connect(web, "a.test", pki.client(&[])).is_ok());
    let (c3, k3) = pki.issue_into(staging.path(), "site3", &["a.test"], 2042);
    std::fs::copy(&k3, &key).unwrap();
    std::fs::copy(&c3, &cert).unwrap();
    let mut s = std::net::TcpStream::connect(gh.admin).unwrap();
    s.write_all(b"POST /tls/reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(String::from_utf8_lossy(&body), r#"{"reloaded":1}"#);
    assert_eq!(not_after(&gh), 2_272_147_200); // 2042-01-01
    let (head, _) = get(&mut open, "a.test", "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[test]
fn domain_fronting_gets_421_unless_allowed_and_http_redirects_to_https() {
    let pki = Pki::new("ca");
    let (c, k) = pki.issue("ab", &["a.test", "b.test", "open.test", "x.open.test"]);
    let (backend, _) = raw_http_backend(|req| ok_response(&req.header("host").join(",")));
    let gh = Gatehouse::start(&format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 2
{}
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "https"
[[listeners]]
name = "plain"
bind = "127.0.0.1:0"
protocol = "http"
[[routes]]
name = "strict"
match = {{ listener = "web", hosts = ["a.test", "b.test"] }}
action.forward = ["{backend}"]
[[routes]]
name = "open"
match = {{ listener = "web", hosts = ["*.open.test", "open.test"] }}
action.forward = ["{backend}"]
policy.allow_domain_fronting = true
[[routes]]
name = "to-https"
match.listener = "plain"
action = {{ redirect_https = true, redirect_port = 8443 }}
"#,
        cert_entry(&c, &k, "")
    ));
    let web = gh.addr("web");
    let mut s = tls_connect(web, "a.test", pki.client(&[])).unwrap();
    let (head, body) = get(&mut s, "a.test", "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"a.test");
    let (head, _) = get(&mut s, "b.test", "/");
    assert!(head.starts_with("HTTP/1.1 421"), "{head}");
    assert!(
        head.contains("gatehouse-error: misdirected_request"),
        "{head}"
    );
    let mut o = tls_connect(web, "open.test", pki.client(&[])).unwrap();
    let (head, body) = get(&mut o, "x.open.test", "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"x.open.test");

    let (head, _) = raw_exchange(
        gh.addr("plain"),
        b"GET /p/a%2Fth?q=1 HTTP/1.1\r\nHost: shop.test\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 308"), "{head}");
    assert!(
        head.contains("location: https://shop.test:8443/p/a%2Fth?q=1"),
        "{head}"
    );
}

#[test]
fn client_certificates_are_required_and_route_by_identity() {
    let pki = Pki::new("ca");
    let (c, k) = pki.issue("site", &["a.test"]);
    let (svc_cert, svc_key) = pki.issue("svc", &["svc-a.clients.test"]);
    let (other_cert, other_key) = pki.issue("other", &["svc-b.clients.test"]);
    let (backend, seen) = raw_http_backend(|_| ok_response("for svc-a"));
    let gh = Gatehouse::start(&format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 2
{}
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "https"
tls = {{ client_ca = "{}", client_auth = "required" }}
[[routes]]
name = "svc-a"
match = {{ listener = "web", client_identities = ["svc-a.clients.test"] }}
action.forward = ["{backend}"]
"#,
        cert_entry(&c, &k, ""),
        pki.ca_pem.display()
    ));
    let web = gh.addr("web");
    // No certificate: the handshake fails (TLS 1.3 reports it on first read).
    let refused = tls_connect(web, "a.test", pki.client(&[])).and_then(|mut s| {
        write!(s, "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")?;
        s.flush()?;
        let mut b = [0u8; 1];
        std::io::Read::read(&mut s, &mut b)
    });
    assert!(refused.is_err() || refused.is_ok_and(|n| n == 0));
    gh.wait_closed_count("tls_handshake_failed", 1);

    let mut s = tls_connect(web, "a.test", pki.client_with_cert(&svc_cert, &svc_key)).unwrap();
    let (head, body) = get(&mut s, "a.test", "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"for svc-a");
    let mut o = tls_connect(web, "a.test", pki.client_with_cert(&other_cert, &other_key)).unwrap();
    let (head, _) = get(&mut o, "a.test", "/");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn the_tls_example_is_valid() {
    let pki = Pki::new("ca");
    let dir = tempfile::tempdir().unwrap();
    pki.issue_into(
        dir.path(),
        "site",
        &["www.example.test", "example.test"],
        2040,
    );
    std::fs::copy(&pki.ca_pem, dir.path().join("internal-ca.pem")).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", "examples/tls.toml"])
        .env("CERT_DIR", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the files, check says which one is missing.
    let out = Command::new(BIN)
        .args(["check", "--config", "examples/tls.toml"])
        .env("CERT_DIR", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/site.crt"), "{err}");
}

#[test]
fn sessions_resume_unless_turned_off() {
    let pki = Pki::new("ca");
    let (c, k) = pki.issue("a", &["a.test"]);
    let (backend, _) = raw_http_backend(|_| ok_response("x"));
    for (setting, expect) in [
        ("", rustls::HandshakeKind::Resumed),
        (
            "tls.session_resumption = false",
            rustls::HandshakeKind::Full,
        ),
    ] {
        let gh = Gatehouse::start(&format!(
            r#"admin.bind = "127.0.0.1:0"
{}
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "https"
{setting}
[[routes]]
name = "app"
match.listener = "web"
action.forward = ["{backend}"]
"#,
            cert_entry(&c, &k, "")
        ));
        let client = pki.client(&[]);
        let web = gh.addr("web");
        let mut first = tls_connect(web, "a.test", client.clone()).unwrap();
        // TLS 1.3 tickets arrive after the handshake: read a response first.
        let (head, _) = get(&mut first, "a.test", "/");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let second = tls_connect(web, "a.test", client).unwrap();
        assert_eq!(second.conn.handshake_kind(), Some(expect), "{setting:?}");
    }
}

/// A self-signed CA certificate (`CA:TRUE`, as `openssl req -x509` makes)
/// used as both the upstream's certificate and the route's CA is refused,
/// and the log says why in words.
#[test]
fn a_ca_certificate_served_as_the_upstreams_own_is_explained() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let pki = Pki::new("ca");
    let (a_cert, a_key) = pki.issue("a", &["a.test"]);
    let dir = tempfile::tempdir().unwrap();
    let mut params = CertificateParams::new(vec!["backend.internal".to_string()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("up.crt"), dir.path().join("up.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let (backend, _) = tls_http_backend(&cert_path, &key_path);
    let gh = Gatehouse::start(&https_config(
        &pki,
        &cert_entry(&a_cert, &a_key, ""),
        &format!(
            r#"[[routes]]
name = "internal"
match.listener = "web"
action.forward = ["{backend}"]
upstream = {{ tls = true, ca = "{}", server_name = "backend.internal" }}
"#,
            cert_path.display()
        ),
    ));
    let mut s = tls_connect(gh.addr("web"), "a.test", pki.client(&[])).unwrap();
    let (head, _) = get(&mut s, "a.test", "/");
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    gh.wait_log("CA:TRUE", Duration::from_secs(2));
    let line = gh
        .log_text()
        .lines()
        .find(|l| l.contains("upstream TLS handshake failed"))
        .unwrap()
        .to_owned();
    assert!(line.contains("\"level\":\"INFO\""), "{line}");
}

/// A config reload that adds a certificate (a new name): new handshakes
/// for that name get it, the answer says certificates changed, and a TLS
/// connection opened before goes on.
#[test]
fn a_reload_adds_a_certificate_without_dropping_open_connections() {
    let pki = Pki::new("ca");
    let (a_cert, a_key) = pki.issue("a", &["a.test"]);
    let (b_cert, b_key) = pki.issue("b", &["b.test"]);
    let (backend, _) = raw_http_backend(|_| ok_response("hello"));
    let routes = format!(
        "[[routes]]\nname = \"app\"\nmatch.listener = \"web\"\naction.forward = [\"{backend}\"]\n"
    );
    let one = https_config(&pki, &cert_entry(&a_cert, &a_key, ""), &routes);
    let gh = Gatehouse::start(&one);
    let web = gh.addr("web");
    let mut open = tls_connect(web, "a.test", pki.client(&[])).unwrap();
    let (head, _) = get(&mut open, "a.test", "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Before: b.test gets a.test's certificate (the only one), which the
    // client refuses.
    assert!(tls_connect(web, "b.test", pki.client(&[])).is_err());

    let both = https_config(
        &pki,
        &format!(
            "{}{}",
            cert_entry(&a_cert, &a_key, ""),
            cert_entry(&b_cert, &b_key, "")
        ),
        &routes,
    );
    let (status, answer) = gh.reload(&both);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["applied"]["certificates_changed"], true);
    let mut fresh = tls_connect(web, "b.test", pki.client(&[])).unwrap();
    assert_eq!(peer_names(&fresh), ["b.test"]);
    let (head, _) = get(&mut fresh, "b.test", "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, body) = get(&mut open, "a.test", "/");
    assert!(
        head.starts_with("HTTP/1.1 200") && body == b"hello",
        "{head}"
    );
}
