//! TLS test support: a throwaway CA that issues certificates into files,
//! rustls clients that trust it, and TLS backends (echo, HTTP) on 127.0.0.1
//! that record the SNI they were reached with.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

use super::{SeenRequest, ok_response, read_request};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate authority whose files live in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    serial: std::sync::atomic::AtomicU64,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_pem = dir.path().join(format!("{name}.pem"));
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        Pki {
            dir,
            ca_pem,
            ca,
            serial: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Issues a certificate for `names` (CN = the first) and returns its
    /// PEM certificate and key.
    pub fn issue_pem(&self, names: &[&str], not_after_year: i32) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        params.serial_number = Some(serial.into());
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Issues into `<stem>.crt` / `<stem>.key` in the CA's directory.
    pub fn issue(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.issue_into(self.dir.path(), stem, names, 2040)
    }

    pub fn issue_into(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        not_after_year: i32,
    ) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue_pem(names, not_after_year);
        let (c, k) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&self.ca_pem).unwrap())
            .unwrap();
        roots
    }

    /// A client that trusts this CA and offers `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut c = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }

    /// A client presenting the certificate in `cert`/`key`.
    pub fn client_with_cert(&self, cert: &Path, key: &Path) -> Arc<ClientConfig> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let c = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
            .with_client_auth_cert(chain, key)
            .unwrap();
        Arc::new(c)
    }
}

/// A client that trusts the CA certificate in the PEM file `ca`.
pub fn client_trusting(ca: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

pub type ClientStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects and completes a TLS handshake with `sni`.
pub fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<ClientStream> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let conn = ClientConnection::new(config, name).unwrap();
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// The DNS names in the certificate the server presented.
pub fn peer_names(s: &ClientStream) -> Vec<String> {
    let der = &s.conn.peer_certificates().unwrap()[0];
    gatehouse::tls::certs::inspect(der).unwrap().1
}

pub fn server_config(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// The SNI each accepted TLS connection asked for, in order.
pub type SeenSni = Arc<Mutex<Vec<Option<String>>>>;

pub fn tls_backend(
    cert: &Path,
    key: &Path,
    serve: impl Fn(StreamOwned<rustls::ServerConnection, TcpStream>) + Send + Sync + 'static,
) -> (SocketAddr, SeenSni) {
    let config = server_config(cert, key, &[]);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen: SeenSni = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let serve = Arc::new(serve);
    thread::spawn(move || {
        for tcp in l.incoming() {
            let Ok(tcp) = tcp else { continue };
            let config = config.clone();
            let seen = seen2.clone();
            let serve = serve.clone();
            thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut s = StreamOwned::new(conn, tcp);
                while s.conn.is_handshaking() {
                    if s.conn.complete_io(&mut s.sock).is_err() {
                        return;
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(s.conn.server_name().map(str::to_owned));
                serve(s);
            });
        }
    });
    (addr, seen)
}

/// A TLS echo backend: echoes every byte, closes after the client does.
pub fn tls_echo_backend(cert: &Path, key: &Path) -> (SocketAddr, SeenSni) {
    tls_backend(cert, key, |mut s| {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).and_then(|_| s.flush()).is_err() {
                        return;
                    }
                }
            }
        }
        s.conn.send_close_notify();
        let _ = s.flush();
    })
}

/// A TLS HTTP/1.1 backend answering every request with `tls:<sni>`.
pub fn tls_http_backend(cert: &Path, key: &Path) -> (SocketAddr, SeenSni) {
    tls_backend(cert, key, |mut s| {
        let sni = s.conn.server_name().unwrap_or("-").to_owned();
        while let Some(_req) = read_request(&mut s) {
            let _: Option<SeenRequest> = None;
            if s.write_all(&ok_response(&format!("tls:{sni}"))).is_err() {
                return;
            }
            let _ = s.flush();
        }
    })
}

/// The first flight of a real TLS client (a complete ClientHello record).
pub fn real_client_hello(pki: &Pki, sni: &str) -> Vec<u8> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let config = pki.client(&[]);
    let sni = sni.to_string();
    let t = std::thread::spawn(move || {
        let _ = tls_connect(addr, &sni, config);
    });
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    let len = u16::from_be_bytes([head[3], head[4]]) as usize;
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).unwrap();
    drop(s);
    drop(l);
    let _ = t.join();
    [head.to_vec(), rest].concat()
}
