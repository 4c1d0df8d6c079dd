//! Traces and logs through OpenTelemetry, configured by the standard `OTEL_*` variables.
//!
//! Each signal is exported when `OTEL_EXPORTER_OTLP_ENDPOINT` (or its own
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`) is set,
//! `OTEL_SDK_DISABLED` is not `true` and `OTEL_TRACES_EXPORTER` / `OTEL_LOGS_EXPORTER` is not
//! `none`; every `OTEL_EXPORTER_OTLP_*` variable below has a `TRACES_` and a `LOGS_` form that
//! wins over the general one for that signal. Logs are the tracing events the log lines show
//! (the same `RUST_LOG` filter), as OTLP log records with their severity, fields as attributes,
//! and the trace and span id of the span they happen in (see [`crate::logging`]). Metrics are not
//! pushed: they stay on the admin port's `/metrics`, which a Collector scrapes (one source of
//! metric names, see docs/observability.md). The OpenTelemetry SDK reads the rest itself, as the
//! specification says (`OTEL_EXPORTER_OTLP_PROTOCOL` `grpc` | `http/protobuf`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` / `_ARG`,
//! `OTEL_BSP_*`, `OTEL_BLRP_*`, …) — the one place chat-node configuration does not come through clap.
//! (chat-node picks the transport from the protocol variable itself, to hand OTLP/HTTP a
//! client that runs on the Tokio runtime.) An `https://` endpoint is TLS, for gRPC and
//! OTLP/HTTP alike, with the standard `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`,
//! `_CLIENT_CERTIFICATE` and `_CLIENT_KEY` files (see [`tls`]).
//! With export off no span is created at all: every helper here starts with one relaxed atomic
//! load and returns [`Span::none`].
//!
//! Spans (all at INFO, target `chat_node::trace`):
//! - `chat.connect` — a `/ws` or `/sse` handshake: `chat.transport`, `chat.auth`
//!   (`ok` | `off` | `refused` | `skipped`), `chat.result` (`accepted` or the refusal code);
//! - `chat.receive` — a client publish (WebSocket frame or `POST /api/publish`, whose W3C
//!   `traceparent` header becomes its parent): `messaging.destination.name`, `chat.transport`,
//!   `chat.result` (`published` or the error code);
//! - `chat.publish` (producer) — the append + publish in the broker, child of `chat.receive`:
//!   `messaging.destination.name`, `messaging.message.id` (the offset). Its context travels
//!   in the message envelope (`tc`);
//! - `chat.deliver` (consumer) — the local fan-out of one message on one node, a child of the
//!   `chat.publish` span through the envelope's context: `messaging.destination.name`,
//!   `messaging.message.id`, `chat.recipients` (local subscriptions it was queued to). One per
//!   message per node, never one per subscriber; heartbeats have no spans.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::{Key, KeyValue};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::{Dispatch, Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::broker::{Message, TraceContext};
use crate::offset::Offset;

mod tls;
use tls::ExportTls;

/// Target of every span made here (the OpenTelemetry layer listens to `chat_node` only).
pub const TARGET: &str = "chat_node::trace";
/// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE_NAME: &str = "chat-node";
/// How long the shutdown waits for the last spans (and again for the last logs) to be exported.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are being made (an exporter is installed).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns span creation on or off (on once an exporter is installed; tests use it directly).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("bad OpenTelemetry exporter settings (OTEL_EXPORTER_OTLP_*): {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot read {var} file {path}: {error}", path = path.display())]
    TlsFile {
        var: &'static str,
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("{var} file {path} {reason}", path = path.display())]
    TlsPem {
        var: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{set} is set but {missing} is not (a client certificate and its key go together)")]
    TlsPair {
        set: &'static str,
        missing: &'static str,
    },
    #[error("TLS to the OpenTelemetry collector: {0}")]
    Tls(String),
}

/// The installed tracer and logger providers, for the signals exported; flush on
/// [`Telemetry::shutdown`].
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    logs: Option<SdkLoggerProvider>,
}

/// The signals chat-node exports over OTLP. Each reads its own `OTEL_EXPORTER_OTLP_<SIGNAL>_*`
/// variables before the general `OTEL_EXPORTER_OTLP_*` ones, as the specification says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Logs,
}

impl Signal {
    /// The (signal-specific, general) pair of one variable.
    fn var(self, traces: &'static str, logs: &'static str, general: &'static str) -> Var {
        match self {
            Signal::Traces => (traces, general),
            Signal::Logs => (logs, general),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
        }
    }
}

/// The standard variables that decide which signals are exported.
#[derive(Clone, Debug, Default)]
pub struct ExportSwitch {
    pub endpoint: Option<String>,
    pub traces_endpoint: Option<String>,
    pub logs_endpoint: Option<String>,
    pub sdk_disabled: Option<String>,
    /// `OTEL_TRACES_EXPORTER`: `none` turns traces off (anything else means OTLP).
    pub traces_exporter: Option<String>,
    /// `OTEL_LOGS_EXPORTER`: `none` turns logs off (anything else means OTLP).
    pub logs_exporter: Option<String>,
}

impl ExportSwitch {
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        ExportSwitch {
            endpoint: var("OTEL_EXPORTER_OTLP_ENDPOINT"),
            traces_endpoint: var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            logs_endpoint: var("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"),
            sdk_disabled: var("OTEL_SDK_DISABLED"),
            traces_exporter: var("OTEL_TRACES_EXPORTER"),
            logs_exporter: var("OTEL_LOGS_EXPORTER"),
        }
    }

    /// Whether `signal` is exported.
    pub fn is_on(&self, signal: Signal) -> bool {
        let is = |v: &Option<String>, value: &str| {
            v.as_deref()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
        };
        let (own_endpoint, exporter) = match signal {
            Signal::Traces => (&self.traces_endpoint, &self.traces_exporter),
            Signal::Logs => (&self.logs_endpoint, &self.logs_exporter),
        };
        !is(&self.sdk_disabled, "true")
            && !is(exporter, "none")
            && (self.endpoint.is_some() || own_endpoint.is_some())
    }
}

/// The HTTP client of the OTLP/HTTP exporters (TLS from `tls`).
fn http_client(
    tls: Option<&ExportTls>,
    timeout: Duration,
) -> Result<RuntimeHttpClient, TelemetryError> {
    let client: Arc<dyn HttpClient> = match tls {
        Some(tls) => {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.rustls()?)
                .https_or_http()
                .enable_http1()
                .build();
            Arc::new(HyperClient::new(connector, timeout, None))
        }
        None => Arc::new(HyperClient::with_default_connector(timeout, None)),
    };
    Ok(RuntimeHttpClient::new(client))
}

/// Builds the OTLP exporter `$exporter` (`SpanExporter`, `LogExporter`) for `$signal`: gRPC or
/// OTLP/HTTP by the protocol variable, TLS from the certificate variables. (The two exporter
/// builders have the same methods but no common trait.)
macro_rules! otlp_exporter {
    ($exporter:ty, $signal:expr) => {{
        let signal = $signal;
        let env = |name: &str| std::env::var(name).ok();
        let grpc = grpc_requested(&env, signal);
        let tls = ExportTls::load(&env, signal, tls::https_endpoint(&env, signal, grpc))?;
        if grpc {
            let builder = <$exporter>::builder().with_tonic();
            match &tls {
                Some(tls) => builder.with_tls_config(tls.tonic()).build()?,
                None => builder.build()?,
            }
        } else {
            <$exporter>::builder()
                .with_http()
                .with_http_client(http_client(tls.as_ref(), export_timeout(signal))?)
                .build()?
        }
    }};
}

impl Telemetry {
    /// Builds the OTLP exporters and providers of the signals the `OTEL_*` environment turns
    /// on (none when export is off). Must run inside the Tokio runtime (the gRPC channels live
    /// there). `node_id` becomes `service.instance.id` unless `OTEL_RESOURCE_ATTRIBUTES` sets one.
    pub fn from_env(node_id: &str) -> Result<Telemetry, TelemetryError> {
        let switch = ExportSwitch::from_env();
        let mut telemetry = Telemetry::default();
        if switch.is_on(Signal::Traces) {
            let exporter = otlp_exporter!(opentelemetry_otlp::SpanExporter, Signal::Traces);
            telemetry.provider = Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource(node_id))
                    .build(),
            );
        }
        if switch.is_on(Signal::Logs) {
            let exporter = otlp_exporter!(opentelemetry_otlp::LogExporter, Signal::Logs);
            telemetry.logs = Some(
                SdkLoggerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource(node_id))
                    .build(),
            );
        }
        Ok(telemetry)
    }

    /// The logger provider for the OpenTelemetry log layer (none when logs are not exported).
    pub fn logger_provider(&self) -> Option<&SdkLoggerProvider> {
        self.logs.as_ref()
    }

    /// The tracer for the OpenTelemetry layer (none when export is off).
    pub fn tracer(&self) -> Option<SdkTracer> {
        self.provider.as_ref().map(|p| p.tracer("chat-node"))
    }

    /// Installs the layer's prerequisites: from now on spans are made.
    pub fn activate(&self) {
        set_enabled(self.provider.is_some());
    }

    /// Exports what is still buffered and stops the exporters (call after the drain): the
    /// spans first, then the logs (which include the shutdown's own lines).
    pub async fn shutdown(self) {
        set_enabled(false);
        if let Some(provider) = self.provider {
            // The SDK blocks while flushing; keep that off the async workers, which the gRPC
            // channel still needs to send the last batch.
            let result =
                tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                    .await;
            flushed(Signal::Traces, result);
        }
        if let Some(provider) = self.logs {
            let result =
                tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                    .await;
            flushed(Signal::Logs, result);
        }
    }
}

fn flushed(
    signal: Signal,
    result: Result<opentelemetry_sdk::error::OTelSdkResult, tokio::task::JoinError>,
) {
    let reason = match result {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::warn!(details.signal = signal.name(), details.reason = %reason, "flushing telemetry failed");
}

/// (signal-specific variable, general variable)
type Var = (&'static str, &'static str);

fn protocol(signal: Signal) -> Var {
    signal.var(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    )
}

/// The first of `var` that is set and not blank, trimmed, with its name.
fn lookup(
    env: &impl Fn(&str) -> Option<String>,
    (signal, general): Var,
) -> Option<(&'static str, String)> {
    [signal, general].into_iter().find_map(|name| {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(|v| (name, v))
    })
}

/// Whether `OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL` ask for gRPC
/// (anything else is OTLP/HTTP protobuf, the specification's default).
fn grpc_requested(env: &impl Fn(&str) -> Option<String>, signal: Signal) -> bool {
    lookup(env, protocol(signal)).is_some_and(|(_, v)| v.eq_ignore_ascii_case("grpc"))
}

/// `OTEL_EXPORTER_OTLP_<SIGNAL>_TIMEOUT` / `OTEL_EXPORTER_OTLP_TIMEOUT` (ms), default 10 s.
fn export_timeout(signal: Signal) -> Duration {
    let (own, general) = signal.var(
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    );
    [own, general]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// The OTLP/HTTP client: hyper's, run on the Tokio runtime. The SDK's batch processor exports
/// from its own thread, where hyper (which needs a Tokio reactor) cannot run by itself.
/// opentelemetry-otlp reports a failed request only as "network error" (the cause at DEBUG), so
/// this logs the cause (a refused certificate, a refused connection, …) at WARN each time it
/// changes, and once at INFO when requests go through again.
#[derive(Debug)]
struct RuntimeHttpClient {
    client: Arc<dyn HttpClient>,
    runtime: tokio::runtime::Handle,
    last_failure: std::sync::Mutex<Option<String>>,
}

impl RuntimeHttpClient {
    fn new(client: Arc<dyn HttpClient>) -> RuntimeHttpClient {
        RuntimeHttpClient {
            client,
            runtime: tokio::runtime::Handle::current(),
            last_failure: std::sync::Mutex::new(None),
        }
    }

    fn note(&self, outcome: Result<(), &HttpError>) {
        let reason = outcome.err().map(|e| error_chain(e.as_ref()));
        let mut last = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
        if *last == reason {
            return;
        }
        match &reason {
            Some(reason) => tracing::warn!(details.reason = %reason, "OTLP/HTTP export failing"),
            None => tracing::info!("OTLP/HTTP export recovered"),
        }
        *last = reason;
    }
}

#[async_trait::async_trait]
impl HttpClient for RuntimeHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let response = self
            .runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?;
        self.note(response.as_ref().map(|_| ()));
        response
    }
}

/// An error with its sources: `a: b: c`.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// The resource: the SDK's (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, SDK attributes),
/// with `service.name` defaulting to `chat-node` and `service.instance.id` to the node id.
pub fn resource(node_id: &str) -> Resource {
    let detected = Resource::builder().build();
    let mut extra = Vec::new();
    let named = detected
        .get(&Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    if !named {
        extra.push(KeyValue::new("service.name", DEFAULT_SERVICE_NAME));
    }
    if detected
        .get(&Key::from_static_str("service.instance.id"))
        .is_none()
    {
        extra.push(KeyValue::new("service.instance.id", node_id.to_owned()));
    }
    if extra.is_empty() {
        return detected;
    }
    Resource::builder().with_attributes(extra).build()
}

// ---- W3C trace context <-> envelope and HTTP headers ----

struct Inject<'a>(&'a mut TraceContext);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.0.traceparent = value,
            "tracestate" if !value.is_empty() => self.0.tracestate = Some(value),
            _ => {}
        }
    }
}

struct Extract<'a>(&'a TraceContext);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(&self.0.traceparent),
            "tracestate" => self.0.tracestate.as_deref(),
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The W3C context of `span` for the message envelope (none without tracing).
pub fn trace_context(span: &Span) -> Option<TraceContext> {
    if !enabled() || span.is_none() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut tc = TraceContext {
        traceparent: String::new(),
        tracestate: None,
    };
    TraceContextPropagator::new().inject_context(&cx, &mut Inject(&mut tc));
    (!tc.traceparent.is_empty()).then_some(tc)
}

/// Makes the context in `tc` the parent of `span` (a malformed context is ignored).
fn adopt(span: &Span, parent: opentelemetry::Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The remote span context carried by an envelope, if it parses.
pub fn remote_context(tc: &TraceContext) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&Extract(tc));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

// ---- the spans ----

/// `chat.connect` for a `/ws` or `/sse` handshake; see [`connected`].
pub fn connect_span(transport: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "chat.connect",
        otel.kind = "server",
        chat.transport = transport,
        chat.auth = field::Empty,
        chat.result = field::Empty,
        otel.status_code = field::Empty,
    )
}

/// Records a handshake's outcome on its `chat.connect` span: `auth` as in the module docs,
/// `result` `accepted` or the refusal code.
pub fn connected(span: &Span, auth: &'static str, result: &str) {
    if span.is_none() {
        return;
    }
    span.record("chat.auth", auth);
    span.record("chat.result", result);
    if result != "accepted" {
        span.record("otel.status_code", "error");
    }
}

/// `chat.receive` for a client publish; an HTTP request's `traceparent` becomes its parent.
/// `channel` is `None` when it is not known yet (HTTP: see [`received_on`]).
pub fn receive_span(
    transport: &'static str,
    channel: Option<&str>,
    headers: Option<&HeaderMap>,
) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "chat.receive",
        otel.kind = "server",
        chat.transport = transport,
        messaging.destination.name = field::Empty,
        chat.result = field::Empty,
        otel.status_code = field::Empty,
    );
    if let Some(channel) = channel {
        span.record("messaging.destination.name", channel);
    }
    if let Some(headers) = headers.filter(|h| h.contains_key("traceparent")) {
        adopt(
            &span,
            TraceContextPropagator::new().extract(&Headers(headers)),
        );
    }
    span
}

/// Records how a client publish ended (`published` or an error code) on the current span.
pub fn received(result: &str) {
    if !enabled() {
        return;
    }
    let span = Span::current();
    span.record("chat.result", result);
    if result != "published" {
        span.record("otel.status_code", "error");
    }
}

/// Names the channel on the current `chat.receive` span (HTTP learns it after parsing).
pub fn received_on(channel: &str) {
    if enabled() {
        Span::current().record("messaging.destination.name", channel);
    }
}

/// `chat.publish` (producer): the append + publish through the broker.
pub fn publish_span(channel: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "chat.publish",
        otel.kind = "producer",
        messaging.operation.type = "send",
        messaging.destination.name = channel,
        messaging.message.id = field::Empty,
        otel.status_code = field::Empty,
    )
}

/// Records the broker's answer on a `chat.publish` span.
pub fn published(span: &Span, offset: Option<Offset>) {
    if span.is_none() {
        return;
    }
    match offset {
        Some(offset) => span.record("messaging.message.id", field::display(offset)),
        None => span.record("otel.status_code", "error"),
    };
}

/// Runs the local fan-out of `message` (which returns how many local subscriptions it
/// reached) inside one `chat.deliver` span, a child of the publisher's span via the envelope.
#[inline]
pub fn deliver(message: &Message, fan_out: impl FnOnce() -> usize) {
    if !enabled() {
        fan_out();
        return;
    }
    let span = tracing::info_span!(
        target: TARGET,
        "chat.deliver",
        otel.kind = "consumer",
        messaging.operation.type = "process",
        messaging.destination.name = message.channel.as_str(),
        messaging.message.id = field::display(message.offset),
        chat.recipients = field::Empty,
    );
    if let Some(tc) = &message.trace {
        adopt(&span, TraceContextPropagator::new().extract(&Extract(tc)));
    }
    let _entered = span.enter();
    let recipients = fan_out();
    span.record("chat.recipients", recipients as u64);
    tracing::debug!(
        details.channel = %message.channel,
        details.offset = %message.offset,
        details.recipients = recipients,
        "delivered"
    );
}

/// The trace and span id (lowercase hex) of the span `id`, for log lines, if it is traced.
pub fn ids(id: &tracing::span::Id, dispatch: &Dispatch) -> Option<(String, String)> {
    let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

#[cfg(test)]
mod tests;
