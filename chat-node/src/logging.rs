//! Logs: one JSON object per line by default —
//! `{"timestamp","level","service","message","target","trace_id","span_id","details":{…}}` —
//! where `details` holds the event's fields (client, channel, error_code, reason, …; never
//! message bodies) and `trace_id`/`span_id` appear when the event happens inside a traced span
//! (see [`crate::telemetry`]). `--log-format text` gives tracing's human format. The filter
//! comes from `RUST_LOG` (default `info,redis=error`, see [`DEFAULT_FILTER`]) and applies to the log lines only; the OpenTelemetry
//! layer, when installed, sees chat-node's own spans and INFO+ events.
//!
//! With logs exported over OTLP (see [`crate::telemetry`]) the same events, through the same
//! `RUST_LOG` filter, also become OTLP log records: severity and level name, the `message` as
//! body, the other fields as attributes (`details.channel`, …), the target, and the trace and
//! span id of the span the event happens in (the OpenTelemetry layer makes an entered span's
//! context the current one). The exporters' own crates (opentelemetry, tonic, hyper, h2, tower)
//! are left out of that stream, so exporting a log never logs again.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracer;
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;
use crate::telemetry;

/// The `service` field of every log line.
pub const SERVICE: &str = "chat-node";

#[derive(Debug, thiserror::Error)]
#[error("failed to install the log subscriber: {0}")]
pub struct LogInitError(String);

/// Crates whose events never become OTLP log records: the exporters' stack, whose logging
/// about an export would otherwise be exported in turn.
const NOT_EXPORTED: [&str; 6] = [
    "opentelemetry",
    "tonic",
    "h2",
    "hyper",
    "tower",
    "tracing_opentelemetry",
];

/// The filter without `RUST_LOG`: `info`, and only errors of redis-rs itself. Its warnings
/// repeat on every retry (while a Redis Cluster shard is down, about ten lines a second of
/// failed connects and slot-map refreshes), and chat-node logs each such event once, with its
/// consequence (`redis cluster shards do not answer`, `redis unreachable, retrying`).
pub const DEFAULT_FILTER: &str = "info,redis=error";

/// The `RUST_LOG` filter (default [`DEFAULT_FILTER`]).
fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// Installs the global subscriber: the log layer and, with a tracer, the OpenTelemetry layer;
/// with a logger provider, the OTLP log layer.
pub fn init(
    format: LogFormat,
    tracer: Option<SdkTracer>,
    logs: Option<&SdkLoggerProvider>,
) -> Result<(), LogInitError> {
    let registry = tracing_subscriber::registry()
        .with(tracer.map(otel_layer))
        .with(logs.map(otlp_log_layer));
    let result = match format {
        LogFormat::Json => registry
            .with(JsonLayer::stdout().with_filter(log_filter()))
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_filter(log_filter()))
            .try_init(),
    };
    result.map_err(|e| LogInitError(e.to_string()))
}

/// The OTLP log layer: the events the log lines show (`RUST_LOG`), minus [`NOT_EXPORTED`].
pub fn otlp_log_layer<S>(provider: &SdkLoggerProvider) -> impl Layer<S> + use<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let filter = NOT_EXPORTED.iter().fold(log_filter(), |filter, target| {
        filter.add_directive(
            format!("{target}=off")
                .parse()
                .expect("a target=off directive parses"),
        )
    });
    OpenTelemetryTracingBridge::new(provider).with_filter(filter)
}

/// The OpenTelemetry layer: chat-node's spans and INFO+ events (as span events), no location
/// or thread attributes and no busy/idle timing (cheaper on the hot path).
pub fn otel_layer<S>(tracer: SdkTracer) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target("chat_node", Level::INFO))
}

/// Where the JSON layer writes (stdout, or a buffer in tests).
#[derive(Clone)]
enum Sink {
    Stdout,
    Buffer(Arc<Mutex<Vec<u8>>>),
}

/// Writes each event as one JSON line.
pub struct JsonLayer {
    sink: Sink,
    /// The subscriber this layer belongs to, to look up the OpenTelemetry ids of spans.
    dispatch: OnceLock<WeakDispatch>,
}

impl JsonLayer {
    pub fn stdout() -> Self {
        JsonLayer {
            sink: Sink::Stdout,
            dispatch: OnceLock::new(),
        }
    }

    /// A layer writing into `buffer` (for tests).
    pub fn buffer(buffer: Arc<Mutex<Vec<u8>>>) -> Self {
        JsonLayer {
            sink: Sink::Buffer(buffer),
            dispatch: OnceLock::new(),
        }
    }

    /// Trace and span id of the innermost traced span around the event.
    fn trace_ids<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>) -> Option<(String, String)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        if !telemetry::enabled() {
            return None;
        }
        let span = ctx.event_span(event)?;
        let dispatch = self.dispatch.get()?.upgrade()?;
        span.scope()
            .find_map(|s| telemetry::ids(&s.id(), &dispatch))
    }
}

#[derive(Default)]
struct Fields {
    message: Option<String>,
    details: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            let key = name.strip_prefix("details.").unwrap_or(name);
            self.details.insert(key.to_owned(), value);
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
}

/// Renders one event as a JSON log line (without the newline).
fn render(event: &Event<'_>, trace: Option<&(String, String)>) -> String {
    let mut fields = Fields::default();
    event.record(&mut fields);
    let mut line = Map::new();
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    line.insert("timestamp".into(), Value::String(now));
    line.insert(
        "level".into(),
        Value::String(event.metadata().level().as_str().to_ascii_lowercase()),
    );
    line.insert("service".into(), Value::String(SERVICE.into()));
    line.insert(
        "message".into(),
        Value::String(fields.message.unwrap_or_default()),
    );
    line.insert(
        "target".into(),
        Value::String(event.metadata().target().into()),
    );
    if let Some((trace_id, span_id)) = trace {
        line.insert("trace_id".into(), Value::String(trace_id.clone()));
        line.insert("span_id".into(), Value::String(span_id.clone()));
    }
    if !fields.details.is_empty() {
        line.insert("details".into(), Value::Object(fields.details));
    }
    Value::Object(line).to_string()
}

impl<S> tracing_subscriber::Layer<S> for JsonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let trace = self.trace_ids(event, &ctx);
        let mut line = render(event, trace.as_ref());
        line.push('\n');
        match &self.sink {
            Sink::Stdout => {
                let _ = std::io::stdout().lock().write_all(line.as_bytes());
            }
            Sink::Buffer(buffer) => buffer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(line.as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// redis-rs logs through the `log` crate; the binary's subscriber bridges those records
    /// into tracing (`try_init`), and the default filter must drop its warnings but keep its
    /// errors and every chat-node event.
    #[test]
    fn the_default_filter_drops_redis_rs_warnings_and_keeps_its_errors() {
        let _ = tracing_log::LogTracer::init();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(JsonLayer::buffer(logs.clone()).with_filter(EnvFilter::new(DEFAULT_FILTER)));
        tracing::subscriber::with_default(subscriber, || {
            log::warn!(target: "redis::cluster_handling::async_connection", "Failed to connect to node");
            log::info!(target: "redis::cluster_handling::async_connection", "slot refresh complete");
            log::error!(target: "redis::cluster_handling::async_connection", "a redis-rs error");
            tracing::warn!(target: "chat_node::broker::redis", "redis cluster shards do not answer");
            tracing::info!(target: "chat_node::server", "chat-node listening");
            log::info!(target: "hyper::proto", "another crate at info");
        });
        let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("Failed to connect"), "{text}");
        assert!(!text.contains("slot refresh"), "{text}");
        for kept in [
            "a redis-rs error",
            "shards do not answer",
            "chat-node listening",
            "another crate at info",
        ] {
            assert!(text.contains(kept), "{kept} missing from {text}");
        }
    }
}
