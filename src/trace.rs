//! Tracing (`[tracing]`): every HTTP request carries a W3C `traceparent`
//! upstream — the client's trace continued with a span of the proxy's own,
//! or a new trace when the client sent none (or an invalid one) — and,
//! when `otlp_endpoint` is set, the proxy's span of each sampled request
//! is exported over OTLP/HTTP by the OpenTelemetry SDK's batch processor
//! (a bounded queue on a thread of its own, never on a request's path:
//! when the collector is slow or away, spans are dropped, not waited for).
//!
//! Without `[tracing]` nothing of this runs: a request pays one atomic
//! load.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};

use crate::config::TracingConfig;

static TRACING: OnceLock<Tracing> = OnceLock::new();

struct Tracing {
    sample_percent: u8,
    export: Option<Export>,
}

struct Export {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::SdkTracer,
}

/// The trace context of one request: the proxy's span and its parent.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The client's span, when it sent a `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
    pub started: SystemTime,
}

impl Span {
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// What a finished request tells its span.
pub struct Outcome<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    pub route: Option<&'a str>,
    pub status: u16,
    pub upstream: Option<std::net::SocketAddr>,
    pub end: &'static str,
    /// `None` for a normal end.
    pub side: Option<&'static str>,
    pub duration: Duration,
}

/// Sets tracing up from the config (at start; a change needs a restart).
/// The exporter's HTTP client runs on the current tokio runtime.
pub fn install(config: Option<&TracingConfig>) -> anyhow::Result<()> {
    let Some(c) = config else { return Ok(()) };
    let export = match &c.otlp_endpoint {
        None => None,
        Some(endpoint) => Some(exporter(c, endpoint)?),
    };
    let _ = TRACING.set(Tracing {
        sample_percent: c.sample_percent,
        export,
    });
    Ok(())
}

fn exporter(c: &TracingConfig, endpoint: &str) -> anyhow::Result<Export> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let client = OnRuntime {
        handle: tokio::runtime::Handle::current(),
        inner: std::sync::Arc::new(
            opentelemetry_http::hyper::HyperClient::with_default_connector(
                Duration::from_secs(10),
                None,
            ),
        ),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(c.service_name.clone())
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("gatehouse");
    Ok(Export { provider, tracer })
}

/// Whether spans are exported (the request's method, host and path are
/// kept for them).
pub fn exporting() -> bool {
    TRACING.get().is_some_and(|t| t.export.is_some())
}

/// Sends what is queued (at shutdown), within a few seconds.
pub fn flush() {
    if let Some(e) = TRACING.get().and_then(|t| t.export.as_ref()) {
        let _ = e.provider.force_flush();
    }
}

/// The exporter's HTTP client: hyper's, run on the proxy's runtime (the
/// SDK's batch thread has none of its own).
#[derive(Debug)]
struct OnRuntime {
    handle: tokio::runtime::Handle,
    inner: std::sync::Arc<opentelemetry_http::hyper::HyperClient>,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let inner = self.inner.clone();
        self.handle
            .spawn(async move { inner.send_bytes(request).await })
            .await?
    }
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None, // (lower case only, as the spec says)
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(b[2 * i])? << 4 | digit(b[2 * i + 1])?;
    }
    Some(out)
}

/// A `traceparent` value (W3C Trace Context, level 1): trace id, parent
/// span id, flags. `None` for an invalid one (which starts a new trace).
pub fn parse(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = value.trim().split('-');
    let version = unhex::<1>(parts.next()?)?[0];
    let trace = unhex::<16>(parts.next()?)?;
    let parent = unhex::<8>(parts.next()?)?;
    let flags = unhex::<1>(parts.next()?)?[0];
    // Version 00 has exactly four fields; a later one may have more.
    if version == 0xff || (version == 0 && parts.next().is_some()) {
        return None;
    }
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags))
}

/// Starts a request's span when tracing is on: its `traceparent` header
/// (the one the upstream gets) is set to the proxy's span, continuing the
/// client's trace or starting one.
pub fn start(headers: &mut HeaderMap) -> Option<Span> {
    let t = TRACING.get()?;
    let incoming = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse);
    let span_id = loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            break id;
        }
    };
    let (trace_id, parent, sampled) = match incoming {
        Some((trace, parent, flags)) => (trace, Some(parent), flags & 1 == 1),
        None => {
            // (A new trace drops the client's `tracestate`, which was
            // about a trace it no longer belongs to.)
            headers.remove("tracestate");
            let sampled = fastrand::u8(0..100) < t.sample_percent;
            (fastrand::u128(1..).to_be_bytes(), None, sampled)
        }
    };
    let value = format!(
        "00-{}-{}-{}",
        hex(&trace_id),
        hex(&span_id),
        if sampled { "01" } else { "00" }
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert("traceparent", v);
    }
    Some(Span {
        trace_id,
        span_id,
        parent,
        sampled,
        started: SystemTime::now(),
    })
}

/// Ends a request's span: exported when sampled and a collector is set.
pub fn finish(span: &Span, outcome: &Outcome<'_>) {
    let Some(export) = TRACING.get().and_then(|t| t.export.as_ref()) else {
        return;
    };
    if !span.sampled {
        return;
    }
    let parent_cx = match span.parent {
        Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(span.trace_id),
            SpanId::from_bytes(parent),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    };
    let mut attributes = vec![
        KeyValue::new("http.request.method", outcome.method.to_owned()),
        KeyValue::new("url.path", outcome.path.to_owned()),
        KeyValue::new("server.address", outcome.host.to_owned()),
        KeyValue::new("http.response.status_code", i64::from(outcome.status)),
        KeyValue::new("gatehouse.end_reason", outcome.end),
    ];
    if let Some(route) = outcome.route {
        attributes.push(KeyValue::new("http.route", route.to_owned()));
    }
    if let Some(up) = outcome.upstream {
        attributes.push(KeyValue::new("network.peer.address", up.ip().to_string()));
        attributes.push(KeyValue::new("network.peer.port", i64::from(up.port())));
    }
    if let Some(side) = outcome.side {
        attributes.push(KeyValue::new("gatehouse.side", side));
    }
    let mut builder = export
        .tracer
        .span_builder(format!(
            "{} {}",
            outcome.method,
            outcome.route.unwrap_or("(no route)")
        ))
        .with_kind(SpanKind::Server)
        .with_start_time(span.started)
        .with_attributes(attributes);
    builder.span_id = Some(SpanId::from_bytes(span.span_id));
    builder.trace_id = Some(TraceId::from_bytes(span.trace_id));
    if outcome.side.is_some() {
        builder.status = Status::error(outcome.end);
    }
    let mut s = builder.start_with_context(&export.tracer, &parent_cx);
    s.end_with_timestamp(span.started + outcome.duration);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_values_parse_as_the_spec_says() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, p, f) = parse(ok).unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p), "00f067aa0ba902b7");
        assert_eq!(f, 1);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
            "",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
    }
}
