//! The internal issuer (`issuer = "internal"`): a local CA made once in
//! its storage directory (key 0600), certificates for the configured names
//! that verify against it, the CA kept across restarts, a certificate near
//! its end renewed, and the config's rules for it.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::tls::*;
use common::*;

fn config(storage: &Path, backend: std::net::SocketAddr) -> String {
    format!(
        r#"admin.bind = "127.0.0.1:0"
[internal_ca]
storage = "{}"
[[certificates]]
hosts = ["localhost", "a.test"]
issuer = "internal"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "https"
[[routes]]
name = "app"
match.listener = "web"
action.forward = ["{backend}"]
"#,
        storage.display()
    )
}

/// A request over HTTPS to `sni`, verified against the internal CA only.
fn get_verified(gh: &Gatehouse, ca: &Path, sni: &str) -> (String, Vec<String>) {
    let mut s = tls_connect(gh.addr("web"), sni, client_trusting(ca)).unwrap();
    let names = peer_names(&s);
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), names)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn serves_certificates_from_its_own_ca_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("pki");
    let (backend, _) = raw_http_backend(|_| ok_response("hello"));
    let gh = Gatehouse::start(&config(&storage, backend));
    let ca = storage.join("ca.crt");
    assert!(
        gh.log_text().contains(&ca.display().to_string()),
        "the CA's path is logged"
    );
    assert_eq!(mode(&storage.join("ca.key")), 0o600);
    assert_eq!(mode(&storage), 0o700);
    for sni in ["a.test", "localhost"] {
        let (resp, names) = get_verified(&gh, &ca, sni);
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(names.contains(&sni.to_string()), "{names:?}");
    }
    let ca_before = std::fs::read(&ca).unwrap();
    drop(gh);
    // Restarted: the same CA, still trusted.
    let gh = Gatehouse::start(&config(&storage, backend));
    assert_eq!(std::fs::read(&ca).unwrap(), ca_before);
    let (resp, _) = get_verified(&gh, &ca, "a.test");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[test]
fn a_certificate_near_its_end_is_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("pki");
    let (backend, _) = raw_http_backend(|_| ok_response("hello"));
    drop(Gatehouse::start(&config(&storage, backend)));
    // The issued certificate's files, replaced by one long expired (from
    // another CA, which the client does not trust): renewed at start.
    let other = Pki::new("other");
    let (cert, key) = other.issue_pem(&["a.test"], 2000);
    let leaf = std::fs::read_dir(&storage)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "crt") && !p.ends_with("ca.crt"))
        .unwrap();
    std::fs::write(&leaf, cert).unwrap();
    std::fs::write(leaf.with_extension("key"), key).unwrap();
    let gh = Gatehouse::start(&config(&storage, backend));
    gh.wait_log("internal CA issued a certificate", Duration::from_secs(5));
    let (resp, _) = get_verified(&gh, &storage.join("ca.crt"), "a.test");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[test]
fn the_config_says_what_the_internal_issuer_needs() {
    for (entry, message) in [
        (
            "hosts = [\"a.test\"]\nissuer = \"acme\"",
            "the only issuer is \"internal\"",
        ),
        ("issuer = \"internal\"", "needs the host names to certify"),
        (
            "hosts = [\"a.test\"]\nissuer = \"internal\"\ncert = \"c.pem\"\nkey = \"k.pem\"",
            "leave out cert, key and auto",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(
            &path,
            format!(
                "[[certificates]]\n{entry}\n[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\n[[routes]]\nname = \"r\"\naction.forward = [\"127.0.0.1:9\"]\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(BIN)
            .arg("check")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{entry}: {stderr}");
    }
}
