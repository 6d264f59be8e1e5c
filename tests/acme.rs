//! ACME end to end against Pebble (Debian's ACME test CA) on loopback:
//! certificates obtained by HTTP-01 and by TLS-ALPN-01, served, renewed
//! ahead of expiry; a failing challenge retried with backoff, reported in
//! logs and metrics, while the previous certificate stays in service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tls::{Pki, tls_connect};
use common::*;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

struct Pebble {
    dir: tempfile::TempDir,
    port: u16,
    mgmt: u16,
    children: Vec<Child>,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Pebble {
    /// Starts Pebble (and its fake DNS, resolving every name to 127.0.0.1)
    /// validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`.
    fn start(pki: &Pki, http_port: u16, tls_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pki.issue_into(dir.path(), "pebble", &["localhost", "127.0.0.1"], 2040);
        let (port, mgmt, dns, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let dns_srv = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Pebble {
            dir,
            port,
            mgmt,
            children: vec![dns_srv, pebble],
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err()
            || TcpStream::connect(("127.0.0.1", mgmt)).is_err()
            || TcpStream::connect(("127.0.0.1", dns_mgmt)).is_err()
        {
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The root Pebble issues under (it changes at every start).
    fn issuing_root(&self, pki: &Pki) -> PathBuf {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&pki.ca_pem)
            .arg(format!("https://127.0.0.1:{}/roots/0", self.mgmt))
            .output()
            .unwrap();
        assert!(out.status.success());
        let path = self.dir.path().join("issuing-root.pem");
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }
}

fn client_trusting(root: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(root).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

#[allow(clippy::too_many_arguments)]
fn acme_config(
    pebble: &Pebble,
    pki: &Pki,
    storage: &Path,
    challenge: &str,
    http_port: u16,
    tls_port: u16,
    host: &str,
    backend: SocketAddr,
    renew_before: &str,
) -> String {
    format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 2
[acme]
directory = "{}"
ca = "{}"
storage = "{}"
challenge = "{challenge}"
contact = ["mailto:ops@example.test"]
renew_before = "{renew_before}"
retry_min = "1s"
retry_max = "4s"
[[certificates]]
hosts = ["{host}"]
auto = true
[[listeners]]
name = "http"
bind = "127.0.0.1:{http_port}"
protocol = "http"
[[listeners]]
name = "https"
bind = "127.0.0.1:{tls_port}"
protocol = "https"
[[routes]]
name = "site"
match.hosts = ["{host}"]
action.forward = ["{backend}"]
"#,
        pebble.directory(),
        pki.ca_pem.display(),
        storage.display()
    )
}

fn served_cert(addr: SocketAddr, host: &str, config: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let s = tls_connect(addr, host, config).unwrap();
    s.conn.peer_certificates().unwrap()[0].to_vec()
}

fn orders(gh: &Gatehouse, result: &str) -> u64 {
    gh.metric("gatehouse_acme_orders_total", &[("result", result)])
}

#[test]
fn http01_issues_serves_and_renews() {
    let pki = Pki::new("pebble-ca");
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(&pki, http_port, tls_port);
    let storage = tempfile::tempdir().unwrap();
    let (backend, _) = raw_http_backend(|_| ok_response("acme site"));
    // A renewal window longer than Pebble's validity: renewed at every chance.
    let gh = Gatehouse::start(&acme_config(
        &pebble,
        &pki,
        storage.path(),
        "http-01",
        http_port,
        tls_port,
        "a.test",
        backend,
        "100000d",
    ));
    gh.wait_for("the first certificate", Duration::from_secs(30), |g| {
        orders(g, "ok") >= 1
    });
    let client = client_trusting(&pebble.issuing_root(&pki));
    let https = gh.addr("https");
    let first = served_cert(https, "a.test", client.clone());
    let mut s = tls_connect(https, "a.test", client.clone()).unwrap();
    std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"acme site");
    assert!(storage.path().join("account.json").exists());
    assert!(storage.path().join("a.test.crt").exists());

    // Renewed and served without a restart; the open connection goes on.
    gh.wait_for("a renewal", Duration::from_secs(30), |g| {
        orders(g, "ok") >= 2
    });
    gh.wait_for(
        "the renewed certificate served",
        Duration::from_secs(10),
        |_| served_cert(https, "a.test", client.clone()) != first,
    );
    std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
    let (head, _) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(orders(&gh, "error"), 0, "{}", gh.log_text());
}

#[test]
fn tls_alpn01_issues_and_serves() {
    let pki = Pki::new("pebble-ca");
    let (http_port, tls_port) = (free_port(), free_port());
    let refused = refused_addr();
    let pebble = Pebble::start(&pki, refused.addr.port(), tls_port);
    let storage = tempfile::tempdir().unwrap();
    let (backend, _) = raw_http_backend(|_| ok_response("alpn site"));
    let gh = Gatehouse::start(&acme_config(
        &pebble,
        &pki,
        storage.path(),
        "tls-alpn-01",
        http_port,
        tls_port,
        "b.test",
        backend,
        "30d",
    ));
    gh.wait_for("the certificate", Duration::from_secs(30), |g| {
        assert_eq!(orders(g, "error"), 0, "{}", g.log_text());
        orders(g, "ok") >= 1
    });
    let client = client_trusting(&pebble.issuing_root(&pki));
    let names = common::tls::peer_names(&tls_connect(gh.addr("https"), "b.test", client).unwrap());
    assert_eq!(names, vec!["b.test".to_string()]);
    // Far from expiry with a 30-day window: no second order.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(orders(&gh, "ok"), 1);
    assert_eq!(orders(&gh, "error"), 0, "{}", gh.log_text());
}

#[test]
fn a_failing_challenge_backs_off_and_the_previous_certificate_stays() {
    let pki = Pki::new("pebble-ca");
    let (http_port, tls_port) = (free_port(), free_port());
    // Pebble validates HTTP-01 against a port where nothing listens.
    let refused = refused_addr();
    let pebble = Pebble::start(&pki, refused.addr.port(), tls_port);
    let storage = tempfile::tempdir().unwrap();
    // The certificate from an earlier run, due for renewal.
    let own = Pki::new("earlier");
    own.issue_into(storage.path(), "c.test", &["c.test"], 2040);
    let (backend, _) = raw_http_backend(|_| ok_response("still here"));
    let gh = Gatehouse::start(&acme_config(
        &pebble,
        &pki,
        storage.path(),
        "http-01",
        http_port,
        tls_port,
        "c.test",
        backend,
        "100000d",
    ));
    let mut failures = Vec::new();
    let started = Instant::now();
    while failures.len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            gh.log_text()
        );
        let n = orders(&gh, "error") as usize;
        if n > failures.len() {
            failures.push(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Backoff: 1 s, then 2 s between attempts (plus the attempts' own time).
    let gap1 = failures[1] - failures[0];
    let gap2 = failures[2] - failures[1];
    assert!(gap1 >= Duration::from_millis(900), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(1900), "{gap2:?}");
    gh.wait_log("ACME order failed", Duration::from_secs(1));
    assert_eq!(orders(&gh, "ok"), 0);
    // Meanwhile the route serves the certificate it had.
    let mut s = tls_connect(gh.addr("https"), "c.test", own.client(&[])).unwrap();
    assert_eq!(common::tls::peer_names(&s), vec!["c.test".to_string()]);
    std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: c.test\r\n\r\n").unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"still here");
}
