//! Active health checks: a task per cluster with a `health` check probes
//! every endpoint each `interval` (± 10 %, so that probes of many
//! clusters and processes do not line up), all endpoints at once. A probe
//! uses a fresh connection of its own, never a pooled one, has a deadline
//! (`timeout`), reads its response to its end by its framing (or to
//! 64 KiB) and closes,
//! so no socket is left behind in CLOSE_WAIT. Its result is recorded in
//! the endpoint's words: `connect refused`, `timeout after 2s`,
//! `status 503`, `body lacks "ok"`. Thresholds turn results into health
//! (`EndpointState::probed`); a change is logged and counted.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cluster::{Cluster, Endpoint};
use super::endpoint::Health;
use crate::config::{HealthCheck, HttpProbe, Probe};

/// The most of a probe's response read (a body is searched within it).
const READ_MAX: usize = 64 * 1024;

/// The probe of registered instances that gave a health-check hint, in
/// a service cluster without a `health` of its own: `GET` of the hinted
/// path every 5 s (or the hint's interval; 1 s timeout), 200–399 passes,
/// 2 passes make an instance healthy again and 3 failures unhealthy.
pub fn hinted() -> HealthCheck {
    HealthCheck {
        probe: Probe::Http(HttpProbe {
            method: http::Method::GET,
            path: "/".into(),
            host: None,
            headers: Vec::new(),
            expect_status: vec![(200, 399)],
            body_contains: None,
        }),
        tls: None,
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        healthy_threshold: 2,
        unhealthy_threshold: 3,
    }
}

/// The check for endpoint `e`: its hint's path where it gave one.
/// `None`: not probed (`hints_only`, and no hint).
fn check_for<'a>(
    check: &'a HealthCheck,
    e: &Endpoint,
    hints_only: bool,
) -> Option<std::borrow::Cow<'a, HealthCheck>> {
    match (&e.health_path, &check.probe) {
        (None, _) if hints_only => None,
        (Some(path), Probe::Http(p)) if hints_only => {
            let mut c = check.clone();
            c.probe = Probe::Http(HttpProbe {
                path: path.to_string(),
                ..p.clone()
            });
            Some(std::borrow::Cow::Owned(c))
        }
        _ => Some(std::borrow::Cow::Borrowed(check)),
    }
}

/// Probes the cluster's endpoints until the cluster is dropped. With
/// `hints_only`, only endpoints with a health-check hint, each at its
/// hinted path (a cluster's own `health` probes every endpoint its way).
pub async fn run(cluster: Weak<Cluster>, check: HealthCheck, hints_only: bool) {
    // (The probes' TLS client, made once; settings that cannot be used
    // make every probe fail with their reason.)
    let tls = check.tls.as_ref().map(|up| {
        crate::tls::settings::client_config(up, &[b"http/1.1"])
            .map(|c| (c, up.clone()))
            .map_err(|e| format!("TLS settings: {e}"))
    });
    loop {
        let Some(c) = cluster.upgrade() else {
            return;
        };
        let set = c.endpoints().clone();
        // Only the endpoints to probe (with `hints_only`, a service's
        // thousands of instances may have none): no work for the others.
        let checks: Vec<_> = set
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((i, check_for(&check, e, hints_only)?)))
            .collect();
        let tls = tls.as_ref();
        let probes = checks.iter().filter_map(|(i, ch)| {
            let e = set.endpoints.get(*i)?;
            Some(async move { (*i, probe(ch, tls, e).await) })
        });
        let results = futures_util::future::join_all(probes).await;
        for (i, result) in results {
            let (Some(e), Some(state)) = (set.endpoints.get(i), set.states.get(i)) else {
                continue;
            };
            let failed = result.as_ref().err().cloned();
            match state.probed(result, check.healthy_threshold, check.unhealthy_threshold) {
                Some(Health::Unhealthy) => {
                    c.counters.became_unhealthy.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(cluster = %c.name, endpoint = %e.addr, error = failed.as_deref().unwrap_or(""), "endpoint unhealthy");
                }
                Some(_) => {
                    c.counters.became_healthy.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(cluster = %c.name, endpoint = %e.addr, "endpoint healthy again");
                }
                None => {}
            }
        }
        // (Hinted probes run at the shortest interval their instances ask.)
        let interval = if hints_only {
            set.endpoints
                .iter()
                .filter(|e| e.health_path.is_some())
                .filter_map(|e| e.health_every)
                .min()
                .unwrap_or(check.interval)
        } else {
            check.interval
        };
        drop((c, set));
        tokio::time::sleep(interval.mul_f64(0.9 + fastrand::f64() * 0.2)).await;
    }
}

/// The probes' TLS client and its settings, or why it could not be made.
type ProbeTls = Result<
    (
        std::sync::Arc<rustls::ClientConfig>,
        crate::config::UpstreamTls,
    ),
    String,
>;

/// One probe of an endpoint, within the check's timeout.
pub async fn probe(
    check: &HealthCheck,
    tls: Option<&ProbeTls>,
    e: &Endpoint,
) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, attempt(check, tls, e)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout after {}", words(check.timeout))),
    }
}

async fn attempt(check: &HealthCheck, tls: Option<&ProbeTls>, e: &Endpoint) -> Result<(), String> {
    let stream = match tokio::net::TcpStream::connect(e.addr).await {
        Ok(s) => s,
        Err(err) => {
            return Err(match err.kind() {
                std::io::ErrorKind::ConnectionRefused => "connect refused".to_owned(),
                _ => format!("connect failed: {err}"),
            });
        }
    };
    match tls {
        None => exchange(check, e, stream).await,
        Some(Err(why)) => Err(why.clone()),
        Some(Ok((config, up))) => {
            let stream = super::connect::tls(stream, config.clone(), up, &e.target)
                .await
                .map_err(|f| format!("TLS: {}", f.detail))?;
            exchange(check, e, stream).await
        }
    }
}

/// The probe on a connected stream: done for a TCP (or TLS handshake)
/// probe; the request and its response for an HTTP one.
async fn exchange<S>(check: &HealthCheck, e: &Endpoint, mut stream: S) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Probe::Http(http) = &check.probe else {
        return Ok(()); // (connected; the stream closes here)
    };
    stream
        .write_all(&request(http, e))
        .await
        .map_err(|err| format!("write failed: {err}"))?;
    // The response is read to its end by its framing (or to the upstream's
    // close), at most `READ_MAX`; then the probe closes its connection.
    let mut buf = Vec::with_capacity(4096);
    loop {
        if buf.len() >= READ_MAX || complete(&buf, http.method == http::Method::HEAD) {
            break;
        }
        buf.reserve(4096);
        match stream.read_buf(&mut buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) if buf.is_empty() => return Err(format!("connection reset: {err}")),
            Err(_) => break,
        }
    }
    judge(http, &buf)
}

/// Whether `buf` holds a whole response: its head, and its body by
/// Content-Length or to the last chunk (else it ends at the close).
fn complete(buf: &[u8], head_request: bool) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(at)) = parsed.parse(buf) else {
        return false;
    };
    let status = parsed.code.unwrap_or(0);
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        return true;
    }
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().ends_with(b"chunked")) {
        return buf[at..].ends_with(b"0\r\n\r\n");
    }
    match header("content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok())
    {
        Some(len) => buf.len() >= at + len,
        None => false,
    }
}

/// The probe's request: `Connection: close`, a `User-Agent` naming
/// Gatehouse, `Host` as configured or the endpoint's `host:port`.
fn request(p: &HttpProbe, e: &Endpoint) -> Vec<u8> {
    let host = p.host.as_deref().unwrap_or(&e.target);
    let mut out = format!(
        "{} {} HTTP/1.1\r\nhost: {host}\r\nuser-agent: gatehouse-health/{}\r\nconnection: close\r\n",
        p.method,
        p.path,
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes();
    for (name, value) in &p.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Whether a response passes: its status among those expected, and its
/// body (what was read of it) holding the substring, if one is asked for.
fn judge(p: &HttpProbe, response: &[u8]) -> Result<(), String> {
    if response.is_empty() {
        return Err("closed without a response".to_owned());
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let body_at = match parsed.parse(response) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err("invalid response".to_owned()),
    };
    let status = parsed.code.unwrap_or(0);
    if !p
        .expect_status
        .iter()
        .any(|&(lo, hi)| (lo..=hi).contains(&status))
    {
        return Err(format!("status {status}"));
    }
    if let Some(needle) = &p.body_contains {
        let body = &response[body_at..];
        if memchr::memmem::find(body, needle.as_bytes()).is_none() {
            return Err(format!("body lacks {needle:?}"));
        }
    }
    Ok(())
}

/// A duration as a config would write it (`2s`, `500ms`).
fn words(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_config() -> HttpProbe {
        HttpProbe {
            method: http::Method::GET,
            path: "/healthz".into(),
            host: None,
            headers: vec![(
                http::HeaderName::from_static("x-check"),
                http::HeaderValue::from_static("1"),
            )],
            expect_status: vec![(200, 399)],
            body_contains: Some("ok".into()),
        }
    }

    #[test]
    fn a_response_passes_on_its_status_and_body() {
        let p = probe_config();
        assert_eq!(
            judge(&p, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            Ok(())
        );
        assert_eq!(
            judge(&p, b"HTTP/1.1 503 Busy\r\ncontent-length: 2\r\n\r\nok"),
            Err("status 503".into())
        );
        assert_eq!(
            judge(&p, b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfail"),
            Err("body lacks \"ok\"".into())
        );
        assert_eq!(
            judge(&p, b"SSH-2.0\r\n\r\n"),
            Err("invalid response".into())
        );
        assert_eq!(judge(&p, b""), Err("closed without a response".into()));
    }

    #[test]
    fn a_response_is_whole_by_its_framing() {
        assert!(!complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\no",
            false
        ));
        assert!(complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false
        ));
        assert!(complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n",
            true
        ));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n";
        assert!(!complete(chunked, false));
        assert!(complete(&[&chunked[..], b"0\r\n\r\n"].concat(), false));
        assert!(!complete(b"HTTP/1.1 200 OK\r\n\r\nuntil close", false));
    }

    #[test]
    fn the_request_names_gatehouse_and_closes() {
        let e = Endpoint {
            addr: "127.0.0.1:8080".parse().unwrap(),
            weight: 1,
            target: "api.internal:8080".into(),
            health_path: None,
            health_every: None,
        };
        let text = String::from_utf8(request(&probe_config(), &e)).unwrap();
        assert!(text.starts_with("GET /healthz HTTP/1.1\r\nhost: api.internal:8080\r\n"));
        assert!(text.contains("user-agent: gatehouse-health/"));
        assert!(text.contains("connection: close\r\n"));
        assert!(text.ends_with("x-check: 1\r\n\r\n"));
        assert_eq!(words(Duration::from_secs(2)), "2s");
        assert_eq!(words(Duration::from_millis(1500)), "1500ms");
    }
}
