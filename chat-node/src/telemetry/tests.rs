//! Context propagation through the envelope and HTTP headers, the spans' shape, and the
//! `trace_id`/`span_id` of JSON log lines — on a local subscriber with a collecting exporter.

use std::sync::{Arc, Mutex};

use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use serde_json::Value;
use serde_json::value::RawValue;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

use super::*;
use crate::broker::envelope;
use crate::logging::{JsonLayer, otel_layer};

/// Keeps every finished span.
#[derive(Clone, Debug, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

struct Harness {
    spans: Collect,
    logs: Arc<Mutex<Vec<u8>>>,
    dispatch: Dispatch,
}

impl Harness {
    fn new(sampler: Sampler) -> Harness {
        set_enabled(true);
        let spans = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .with_sampler(sampler)
            .build();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(otel_layer(provider.tracer("test")))
            .with(
                JsonLayer::buffer(logs.clone())
                    .with_filter(tracing::level_filters::LevelFilter::DEBUG),
            );
        Harness {
            spans,
            logs,
            dispatch: Dispatch::new(subscriber),
        }
    }

    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        tracing::dispatcher::with_default(&self.dispatch, f)
    }

    fn span(&self, name: &str) -> SpanData {
        self.spans
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no span {name}"))
    }

    fn attribute(&self, span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    fn log_lines(&self) -> Vec<Value> {
        String::from_utf8(self.logs.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn message(trace: Option<TraceContext>) -> Message {
    Message {
        channel: "room:1".into(),
        offset: Offset::new(7, 0),
        from: "u1".into(),
        ts_us: 1,
        data: RawValue::from_string(r#"{"text":"secret body"}"#.into()).unwrap(),
        trace,
    }
}

#[test]
fn publish_context_travels_in_the_envelope_and_parents_the_delivery() {
    let h = Harness::new(Sampler::AlwaysOn);
    let tc = h.run(|| {
        let span = publish_span("room:1");
        let tc = trace_context(&span).expect("a context for the envelope");
        published(&span, Some(Offset::new(7, 0)));
        tc
    });
    // traceparent: version-traceid-spanid-flags, sampled.
    let parts: Vec<&str> = tc.traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{}", tc.traceparent);
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len(), parts[3]),
        ("00", 32, 16, "01")
    );

    // Through the Redis envelope and back.
    let data = RawValue::from_string("1".into()).unwrap();
    let bytes = envelope::encode("u1", 1, &data, Some(&tc));
    let decoded = envelope::decode("room:1", Offset::new(7, 0), bytes.as_bytes()).unwrap();
    assert_eq!(decoded.trace.as_ref(), Some(&tc));

    h.run(|| deliver(&decoded, || 3));
    let publish = h.span("chat.publish");
    let delivery = h.span("chat.deliver");
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(delivery.span_kind, SpanKind::Consumer);
    assert_eq!(
        delivery.span_context.trace_id(),
        publish.span_context.trace_id(),
        "one trace"
    );
    assert_eq!(delivery.parent_span_id, publish.span_context.span_id());
    assert!(delivery.parent_span_is_remote);
    assert_eq!(publish.span_context.trace_id().to_string(), parts[1]);
    assert_eq!(
        h.attribute(&delivery, "chat.recipients").as_deref(),
        Some("3")
    );
    assert_eq!(
        h.attribute(&delivery, "messaging.destination.name")
            .as_deref(),
        Some("room:1")
    );
    assert_eq!(
        h.attribute(&publish, "messaging.message.id").as_deref(),
        Some("7-0")
    );
    let all = format!("{:?}", h.spans.0.lock().unwrap());
    assert!(!all.contains("secret body"), "no message body in spans");
}

#[test]
fn an_unsampled_publisher_is_not_sampled_downstream() {
    let h = Harness::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    let tc = TraceContext {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into(),
        tracestate: None,
    };
    h.run(|| deliver(&message(Some(tc)), || 1));
    assert!(
        h.spans.0.lock().unwrap().is_empty(),
        "parent said not sampled"
    );
}

#[test]
fn a_malformed_envelope_context_starts_a_new_trace() {
    let h = Harness::new(Sampler::AlwaysOn);
    let tc = TraceContext {
        traceparent: "garbage".into(),
        tracestate: None,
    };
    assert!(remote_context(&tc).is_none());
    h.run(|| deliver(&message(Some(tc)), || 0));
    let delivery = h.span("chat.deliver");
    assert_eq!(
        delivery.parent_span_id,
        opentelemetry::trace::SpanId::INVALID
    );
    assert_eq!(
        h.attribute(&delivery, "chat.recipients").as_deref(),
        Some("0")
    );
}

#[test]
fn http_traceparent_parents_the_receive_span() {
    let h = Harness::new(Sampler::AlwaysOn);
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .unwrap(),
    );
    let tc = h.run(|| {
        let receive = receive_span("http", None, Some(&headers));
        receive.in_scope(|| {
            received_on("room:1");
            let publish = publish_span("room:1");
            let tc = trace_context(&publish);
            drop(publish);
            received("published");
            tc
        })
    });
    let receive = h.span("chat.receive");
    let publish = h.span("chat.publish");
    assert_eq!(
        receive.span_context.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(receive.parent_span_id.to_string(), "b7ad6b7169203331");
    assert_eq!(publish.parent_span_id, receive.span_context.span_id());
    assert_eq!(
        h.attribute(&receive, "messaging.destination.name")
            .as_deref(),
        Some("room:1")
    );
    assert_eq!(
        h.attribute(&receive, "chat.result").as_deref(),
        Some("published")
    );
    assert!(
        tc.unwrap()
            .traceparent
            .contains("0af7651916cd43dd8448eb211c80319c")
    );
}

#[test]
fn connect_span_records_auth_and_result() {
    let h = Harness::new(Sampler::AlwaysOn);
    h.run(|| {
        let span = connect_span("ws");
        connected(&span, "refused", "unauthorized");
    });
    let span = h.span("chat.connect");
    assert_eq!(h.attribute(&span, "chat.auth").as_deref(), Some("refused"));
    assert_eq!(
        h.attribute(&span, "chat.result").as_deref(),
        Some("unauthorized")
    );
    assert_eq!(span.status, opentelemetry::trace::Status::error(""));
}

#[test]
fn json_log_lines_inside_a_span_carry_its_ids() {
    let h = Harness::new(Sampler::AlwaysOn);
    h.run(|| {
        tracing::info!("outside");
        deliver(&message(None), || 2);
    });
    let lines = h.log_lines();
    let outside = lines.iter().find(|l| l["message"] == "outside").unwrap();
    assert!(outside.get("trace_id").is_none() && outside.get("span_id").is_none());
    let inside = lines.iter().find(|l| l["message"] == "delivered").unwrap();
    let delivery = h.span("chat.deliver");
    assert_eq!(
        inside["trace_id"],
        delivery.span_context.trace_id().to_string()
    );
    assert_eq!(
        inside["span_id"],
        delivery.span_context.span_id().to_string()
    );
    for field in ["timestamp", "level", "service", "message"] {
        assert!(inside[field].is_string(), "{field} in {inside}");
    }
    assert_eq!(inside["details"]["recipients"], 2);
    assert!(
        !inside.to_string().contains("secret body"),
        "never the body"
    );
}

#[test]
fn export_is_on_only_with_an_endpoint_and_not_disabled() {
    let on = |endpoint: Option<&str>, traces: Option<&str>, disabled: Option<&str>| {
        ExportSwitch {
            endpoint: endpoint.map(Into::into),
            traces_endpoint: traces.map(Into::into),
            sdk_disabled: disabled.map(Into::into),
            ..ExportSwitch::default()
        }
        .is_on(Signal::Traces)
    };
    assert!(!on(None, None, None));
    assert!(on(Some("http://127.0.0.1:4317"), None, None));
    assert!(on(None, Some("http://127.0.0.1:4318/v1/traces"), None));
    assert!(!on(Some("http://127.0.0.1:4317"), None, Some("TRUE")));
    assert!(on(Some("http://127.0.0.1:4317"), None, Some("false")));
}

#[test]
fn each_signal_has_its_own_endpoint_and_exporter_switch() {
    let general = ExportSwitch {
        endpoint: Some("http://127.0.0.1:4317".into()),
        ..ExportSwitch::default()
    };
    assert!(general.is_on(Signal::Traces) && general.is_on(Signal::Logs));
    // A signal-specific endpoint turns on that signal only.
    let logs_only = ExportSwitch {
        logs_endpoint: Some("http://127.0.0.1:4318/v1/logs".into()),
        ..ExportSwitch::default()
    };
    assert!(logs_only.is_on(Signal::Logs) && !logs_only.is_on(Signal::Traces));
    // OTEL_<SIGNAL>_EXPORTER=none turns that signal off, whatever the endpoint.
    let no_logs = ExportSwitch {
        logs_exporter: Some(" None ".into()),
        ..general.clone()
    };
    assert!(no_logs.is_on(Signal::Traces) && !no_logs.is_on(Signal::Logs));
    let no_traces = ExportSwitch {
        traces_exporter: Some("none".into()),
        ..general.clone()
    };
    assert!(!no_traces.is_on(Signal::Traces) && no_traces.is_on(Signal::Logs));
    // OTEL_SDK_DISABLED=true turns both off.
    let disabled = ExportSwitch {
        sdk_disabled: Some("true".into()),
        ..general
    };
    assert!(!disabled.is_on(Signal::Traces) && !disabled.is_on(Signal::Logs));
}

#[test]
fn resource_defaults_service_name_and_instance() {
    // The test process has no OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES (CI neither).
    if std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var_os("OTEL_RESOURCE_ATTRIBUTES").is_some()
    {
        return;
    }
    let r = resource("node-7");
    let get = |k: &'static str| r.get(&Key::from_static_str(k)).map(|v| v.to_string());
    assert_eq!(get("service.name").as_deref(), Some(DEFAULT_SERVICE_NAME));
    assert_eq!(get("service.instance.id").as_deref(), Some("node-7"));
}
