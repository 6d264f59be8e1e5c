//! TLS and mutual TLS on the admin listener (`admin.tls`): a client with a
//! certificate from `client_ca` is served; one without, or with another
//! CA's, gets no answer; plain HTTP gets none either. `gatehouse check`
//! refuses files that are missing or do not load.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::process::Command;

use common::tls::*;
use common::*;

/// `GET path` over `s`: the answer's text, or what failed.
fn get_over(mut s: impl Read + Write, path: &str) -> Result<String, String> {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) if !answer.is_empty() => Ok(String::from_utf8_lossy(&answer).into_owned()),
        Ok(_) => Err("closed without an answer".into()),
        Err(e) if !answer.is_empty() => Ok(format!("{}{e}", String::from_utf8_lossy(&answer))),
        Err(e) => Err(format!("read: {e}")),
    }
}

#[test]
fn the_admin_listener_requires_a_client_certificate_from_its_ca() {
    let server_pki = Pki::new("admin-server-ca");
    let (cert, key) = server_pki.issue("admin", &["localhost", "127.0.0.1"]);
    let ops = Pki::new("ops-ca");
    let (client_cert, client_key) = ops.issue("operator", &["operator"]);
    let stranger = Pki::new("other-ca");
    let (other_cert, other_key) = stranger.issue("intruder", &["intruder"]);

    let top = format!(
        "admin.tls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}\n",
        cert.display(),
        key.display(),
        ops.ca_pem.display()
    );
    let config = simple_config(&top, "", echo_backend(), "");
    let gh = Gatehouse::start(&config);

    // (The client trusts the server's CA and shows the operator's certificate.)
    let operator = {
        let mut c = (*server_pki.client_with_cert(&client_cert, &client_key)).clone();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        std::sync::Arc::new(c)
    };
    let s = tls_connect(gh.admin, "localhost", operator).unwrap();
    let answer = get_over(s, "/v1/healthz").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let s = tls_connect(
        gh.admin,
        "localhost",
        server_pki.client_with_cert(&client_cert, &client_key),
    )
    .unwrap();
    let answer = get_over(s, "/v1/connections").unwrap();
    assert!(answer.contains("\"active\""), "{answer}");

    // No certificate; another CA's: no answer.
    let no_cert = tls_connect(gh.admin, "localhost", server_pki.client(&[]));
    if let Ok(s) = no_cert {
        let r = get_over(s, "/v1/healthz");
        assert!(r.is_err() || !r.as_ref().unwrap().contains("200"), "{r:?}");
    }
    let wrong = tls_connect(
        gh.admin,
        "localhost",
        server_pki.client_with_cert(&other_cert, &other_key),
    );
    if let Ok(s) = wrong {
        let r = get_over(s, "/v1/healthz");
        assert!(r.is_err() || !r.as_ref().unwrap().contains("200"), "{r:?}");
    }
    // Plain HTTP: no answer.
    let plain = std::net::TcpStream::connect(gh.admin).unwrap();
    plain
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let r = get_over(plain, "/healthz");
    assert!(
        r.as_ref().is_err() || !r.as_ref().unwrap().contains("200 OK"),
        "{r:?}"
    );
    // The data plane is untouched.
    let mut c = std::net::TcpStream::connect(gh.addr("in")).unwrap();
    c.write_all(b"x").unwrap();
    let mut b = [0u8];
    c.read_exact(&mut b).unwrap();
}

#[test]
fn check_refuses_admin_tls_files_that_are_missing_or_do_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    for (tls, needle) in [
        (
            "admin.tls = { cert = \"/nonexistent.crt\", key = \"/nonexistent.key\" }",
            "admin.tls.cert",
        ),
        (
            &*format!(
                "admin.tls = {{ cert = \"{0}\", key = \"{0}\" }}",
                junk.display()
            ),
            "admin.tls",
        ),
    ] {
        let path = dir.path().join("g.toml");
        std::fs::write(
            &path,
            simple_config(tls, "", "127.0.0.1:9".parse().unwrap(), ""),
        )
        .unwrap();
        let out = Command::new(BIN).arg("check").arg(&path).output().unwrap();
        assert!(!out.status.success(), "{tls}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{tls}: {stderr}");
    }
}
