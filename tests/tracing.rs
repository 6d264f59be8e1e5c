//! W3C Trace Context and OTLP export against the real binary: with
//! `[tracing]`, a request's `traceparent` is continued upstream with the
//! proxy's own span (or a trace is started when the client sent none or an
//! invalid one), the access log carries the trace id, and each sampled
//! request's span reaches an OTLP/HTTP collector (a test server decoding
//! the protobuf) with its parent, route, status and end reason. Without
//! `[tracing]` the header passes through untouched.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

/// The SDK's batch processor sends every 200 ms instead of every 5 s.
const FAST_EXPORT: &[(&str, &str)] = &[("OTEL_BSP_SCHEDULE_DELAY", "200")];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    let v = span.attributes.iter().find(|a| a.key == key)?;
    match v.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Spans received, each with its resource's service name.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP collector: every span it received, with its service name.
fn collector() -> (std::net::SocketAddr, Received) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let spans2 = spans.clone();
    let (addr, _) = raw_http_backend(move |req| {
        assert!(
            req.request_line().starts_with("POST /v1/traces "),
            "{}",
            req.request_line()
        );
        let export = ExportTraceServiceRequest::decode(&req.body[..]).unwrap();
        // (One export's spans are recorded together.)
        let mut received = spans2.lock().unwrap();
        for rs in export.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    received.push((service.clone(), s));
                }
            }
        }
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
            .to_vec()
    });
    (addr, spans)
}

fn wait_spans(spans: &Mutex<Vec<(String, Span)>>, n: usize) -> Vec<(String, Span)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = spans.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} spans of {n} exported",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn traceparent_is_continued_or_started_and_spans_reach_the_collector() {
    let (backend, seen) = raw_http_backend(|_| ok_response("hi"));
    let (otlp, spans) = collector();
    let top =
        format!("[tracing]\notlp_endpoint = \"http://{otlp}\"\nservice_name = \"edge-test\"\n");
    let gh = Gatehouse::start_with_env(&http_config(&top, "", backend, ""), FAST_EXPORT);
    let addr = gh.addr("web");

    // A client's trace, continued.
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (head, _) = raw_exchange(
        addr,
        format!("GET /a HTTP/1.1\r\nHost: x\r\ntraceparent: {incoming}\r\ntracestate: k=v\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // None (and an invalid one): a trace starts here.
    raw_exchange(
        addr,
        b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    raw_exchange(
        addr,
        b"GET /c HTTP/1.1\r\nHost: x\r\ntraceparent: 00-zz-nope-01\r\ntracestate: stale=1\r\nConnection: close\r\n\r\n",
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let upstream: Vec<String> = seen
        .iter()
        .map(|r| r.header("traceparent")[0].clone())
        .collect();
    let fields: Vec<Vec<&str>> = upstream.iter().map(|t| t.split('-').collect()).collect();
    for f in &fields {
        assert_eq!(f.len(), 4, "{f:?}");
        assert_eq!(
            (f[0], f[1].len(), f[2].len(), f[3]),
            ("00", 32, 16, "01"),
            "{f:?}"
        );
    }
    assert_eq!(
        fields[0][1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "the client's trace"
    );
    assert_ne!(
        fields[0][2], "00f067aa0ba902b7",
        "a span of the proxy's own"
    );
    assert_eq!(seen[0].header("tracestate"), ["k=v"]);
    assert_ne!(fields[1][1], fields[2][1], "two new traces");
    assert!(
        seen[2].header("tracestate").is_empty(),
        "a new trace drops the old tracestate"
    );

    // Each request's span, exported: ids, parent, attributes.
    let got = wait_spans(&spans, 3);
    assert!(got.iter().all(|(service, _)| service == "edge-test"));
    let by_path = |p: &str| {
        got.iter()
            .map(|(_, s)| s)
            .find(|s| attr(s, "url.path").as_deref() == Some(p))
            .unwrap_or_else(|| panic!("no span for {p}"))
    };
    let a = by_path("/a");
    assert_eq!(hex(&a.trace_id), fields[0][1]);
    assert_eq!(
        hex(&a.span_id),
        fields[0][2],
        "the span the upstream was told of"
    );
    assert_eq!(hex(&a.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(attr(a, "http.route").as_deref(), Some("app"));
    assert_eq!(attr(a, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(a, "gatehouse.end_reason").as_deref(), Some("ok"));
    assert_eq!(attr(a, "http.request.method").as_deref(), Some("GET"));
    assert!(a.end_time_unix_nano >= a.start_time_unix_nano);
    let b = by_path("/b");
    assert_eq!(hex(&b.trace_id), fields[1][1]);
    assert!(b.parent_span_id.is_empty(), "a root span");

    // The access log line names the trace.
    gh.wait_log(
        &format!("\"trace_id\":\"{}\"", fields[0][1]),
        Duration::from_secs(5),
    );
}

#[test]
fn failures_are_spans_with_their_reason_and_sampling_holds_the_client_decision() {
    let refused = refused_addr();
    let (otlp, spans) = collector();
    let top = format!("[tracing]\notlp_endpoint = \"http://{otlp}/\"\nsample_percent = 0\n");
    let gh = Gatehouse::start_with_env(&http_config(&top, "", refused.addr, ""), FAST_EXPORT);
    let addr = gh.addr("web");
    // Not sampled here (0 %): no span.
    let (head, _) = raw_exchange(
        addr,
        b"GET /quiet HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    // Sampled by the client: its span is exported, as an error.
    let sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    raw_exchange(
        addr,
        format!(
            "GET /loud HTTP/1.1\r\nHost: x\r\ntraceparent: {sampled}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    // (The unsampled request came first: had its span been exported, it
    // would have come in an earlier export or in the same one.)
    let got = wait_spans(&spans, 1);
    assert_eq!(got.len(), 1, "only the sampled request: {got:?}");
    let s = &got[0].1;
    assert_eq!(attr(s, "url.path").as_deref(), Some("/loud"));
    assert_eq!(
        attr(s, "gatehouse.end_reason").as_deref(),
        Some("upstream_refused")
    );
    assert_eq!(attr(s, "gatehouse.side").as_deref(), Some("upstream"));
    assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("502"));
    assert_eq!(s.status.as_ref().map(|st| st.code), Some(2), "status ERROR");
}

#[test]
fn without_tracing_the_header_passes_through_untouched() {
    let (backend, seen) = raw_http_backend(|_| ok_response("hi"));
    let gh = Gatehouse::start(&http_config("", "", backend, ""));
    let t = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    raw_exchange(
        gh.addr("web"),
        format!("GET / HTTP/1.1\r\nHost: x\r\ntraceparent: {t}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    raw_exchange(
        gh.addr("web"),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].header("traceparent"), [t]);
    assert!(seen[1].header("traceparent").is_empty());
}
