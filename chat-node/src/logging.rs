//! Logs: one JSON object per line by default —
//! `{"timestamp","level","service","message","details":{…},"trace_id","span_id"}` — where
//! `details` holds the event's fields (client, channel, error_code, reason, …; never message
//! bodies) and `trace_id`/`span_id` appear when the event happens inside a traced span.
//! `--log-format text` gives tracing's human format. The filter comes from `RUST_LOG`.

use std::io::Write;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// The `service` field of every log line.
pub const SERVICE: &str = "chat-node";

/// Trace ids of a span, stored in its extensions by whatever creates traces (OpenTelemetry),
/// copied to the top level of each log line inside that span.
#[derive(Clone, Debug)]
pub struct TraceIds {
    pub trace_id: String,
    pub span_id: String,
}

#[derive(Debug, thiserror::Error)]
#[error("failed to install the log subscriber: {0}")]
pub struct LogInitError(String);

/// Installs the global subscriber.
pub fn init(format: LogFormat) -> Result<(), LogInitError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry.with(JsonLayer).try_init(),
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer()).try_init(),
    };
    result.map_err(|e| LogInitError(e.to_string()))
}

struct JsonLayer;

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
fn render(event: &Event<'_>, trace: Option<&TraceIds>) -> String {
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
    if let Some(trace) = trace {
        line.insert("trace_id".into(), Value::String(trace.trace_id.clone()));
        line.insert("span_id".into(), Value::String(trace.span_id.clone()));
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
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let trace = ctx.event_span(event).and_then(|span| {
            span.scope()
                .find_map(|s| s.extensions().get::<TraceIds>().cloned())
        });
        let mut line = render(event, trace.as_ref());
        line.push('\n');
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}
