//! A small backend for trying the example configs: an HTTP server that
//! answers every request with 200 and a line naming itself, the protocol
//! and the client it saw.
//!
//!   cargo run --example backend -- [--proxy] [--tls CERT KEY] ADDR
//!
//! `--proxy`: every connection starts with a PROXY header (v1 or v2), and
//! the client it names is the one reported. `--tls`: HTTPS with the PEM
//! certificate chain and key given, offering HTTP/2 and HTTP/1.1 (ALPN).
//! Without `--tls` it speaks HTTP/1.1. It prints `backend ready ADDR` once
//! listening.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    proxy: bool,
    tls: Option<(String, String)>,
    addr: SocketAddr,
}

fn args() -> Result<Args, Error> {
    let mut it = std::env::args().skip(1);
    let (mut proxy, mut tls, mut addr) = (false, None, None);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--proxy" => proxy = true,
            "--tls" => {
                let cert = it.next().ok_or("--tls needs CERT and KEY")?;
                let key = it.next().ok_or("--tls needs CERT and KEY")?;
                tls = Some((cert, key));
            }
            other => addr = Some(other.parse()?),
        }
    }
    let usage = "usage: backend [--proxy] [--tls CERT KEY] ADDR";
    Ok(Args {
        proxy,
        tls,
        addr: addr.ok_or(usage)?,
    })
}

fn tls_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor, Error> {
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Reads exactly one PROXY header (v1 or v2) off `io`; the client it names.
async fn proxy_header<S: AsyncRead + Unpin>(io: &mut S) -> Result<Option<SocketAddr>, Error> {
    let mut buf = vec![0u8; 12];
    io.read_exact(&mut buf).await?;
    if buf.starts_with(b"PROXY ") {
        while !buf.ends_with(b"\r\n") && buf.len() < 107 {
            buf.push(io.read_u8().await?);
        }
    } else {
        let mut rest = [0u8; 4];
        io.read_exact(&mut rest).await?;
        buf.extend_from_slice(&rest);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let start = buf.len();
        buf.resize(start + len, 0);
        io.read_exact(&mut buf[start..]).await?;
    }
    let (header, _) = gatehouse::proxy_protocol::decode(&buf)?;
    Ok(header.addresses.map(|(src, _)| src))
}

async fn serve<S>(io: S, h2: bool, me: SocketAddr, client: SocketAddr) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
        // Headers a Gatehouse filter set (`x-gatehouse-…`) are shown too.
        let set: String = req
            .headers()
            .iter()
            .filter(|(n, _)| n.as_str().starts_with("x-gatehouse-"))
            .map(|(n, v)| format!(" {n}={}", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        let line = format!(
            "backend {me}: {:?} {} {} from {client}{set}\n",
            req.version(),
            req.method(),
            req.uri()
        );
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(line))))
    });
    let io = TokioIo::new(io);
    if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await?;
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .with_upgrades()
            .await?;
    }
    Ok(())
}

async fn connection(
    mut tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    args: Arc<Args>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<(), Error> {
    let mut client = peer;
    if args.proxy {
        if let Some(src) = proxy_header(&mut tcp).await? {
            client = src;
        }
    }
    match tls {
        None => serve(tcp, false, args.addr, client).await,
        Some(acceptor) => {
            let stream = acceptor.accept(tcp).await?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            serve(stream, h2, args.addr, client).await
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args = Arc::new(args()?);
    let tls = match &args.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let listener = TcpListener::bind(args.addr).await?;
    println!("backend ready {}", args.addr);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let (args, tls) = (args.clone(), tls.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(tcp, peer, args, tls).await {
                eprintln!("backend: {peer}: {e}");
            }
        });
    }
}
