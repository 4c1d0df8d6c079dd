//! The user-facing API: `spec.observability` and `spec.alerting` of a ChatCluster.
//!
//! Every field is optional and defaulted *in code* (the accessor methods below), not in the CRD
//! schema: the stored object stays exactly what the user wrote, and a default can improve in a
//! later release without rewriting anyone's objects.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Prometheus duration such as `30s`, `5m`, `1h30m` (validated by the API server).
pub const DURATION_PATTERN: &str = r"^(([0-9]+)(ms|s|m|h|d|w|y))+$";

/// Default collector image: the contrib distribution carries every component the generated
/// configuration uses (OTLP receiver, memory_limiter, batch, otlp_grpc, otlp_http, prometheus).
pub const DEFAULT_COLLECTOR_IMAGE: &str = "otel/opentelemetry-collector-contrib:0.165.0";

/// `spec.observability`: metrics, traces and logs wiring for one ChatCluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservabilitySpec {
    /// An OpenTelemetry Collector for this cluster (or the endpoint of an existing one).
    /// Absent: chat-nodes export no traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<CollectorSpec>,
    /// Alert rules (a PrometheusRule). On by default when prometheus-operator is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_rule: Option<PrometheusRuleSpec>,
    /// ServiceMonitors for the chat-nodes' admin port and the collector. On by default when
    /// prometheus-operator is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_monitor: Option<ServiceMonitorSpec>,
    /// A Grafana dashboard ConfigMap for the Grafana sidecar. Created when this section is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<DashboardSpec>,
}

/// The OpenTelemetry Collector: a Deployment + ConfigMap + Service run by the operator, or an
/// existing collector given by `endpoint`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.caSecretRef) || (has(self.endpoint) && self.endpoint.startsWith('https://'))")
        .message("spec.observability.collector.caSecretRef needs an https:// endpoint")
)]
#[serde(rename_all = "camelCase")]
pub struct CollectorSpec {
    /// Default true. False: no collector and no `OTEL_*` variables on chat-nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// OTLP gRPC endpoint of an existing collector (e.g. `http://otel-collector.monitoring:4317`,
    /// or `https://…` for TLS). When set the operator runs no collector and points chat-nodes
    /// at this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// With an `https://` endpoint: the CA certificate (PEM, key default `ca.crt`) chat-nodes
    /// trust for the collector's certificate, mounted as a file and passed as
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`; unset = the image's system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<crate::api::SecretKeyRef>,
    /// Collector image (`repo:tag` or `repo@sha256:…`). Default: the operator's default Collector
    /// image, `otel/opentelemetry-collector-contrib:0.165.0` unless its `--default-collector-image`
    /// names a mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Collector replicas. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Collector resources. Default: requests 100m CPU / 128Mi, limit 512Mi memory.
    /// `memory_limiter` is sized from the memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where traces go: an OTLP endpoint of Jaeger, Tempo or any OTLP backend.
    /// Absent: traces are accepted and dropped (counted by the collector's own metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traces: Option<OtlpDestination>,
    /// Where logs go: Loki's OTLP endpoint (`http://loki:3100/otlp`, protocol `http`) or any
    /// OTLP endpoint. Absent: logs are accepted and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<OtlpDestination>,
    /// Metrics received over OTLP are exposed for Prometheus on this exporter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<CollectorMetricsSpec>,
}

/// An OTLP destination (exporter) of the collector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OtlpDestination {
    /// gRPC: `host:port` or `http(s)://host:port` (`http://` means plaintext).
    /// HTTP: the base URL, e.g. `http://loki.monitoring:3100/otlp` or `http://tempo:4318`.
    #[schemars(length(min = 1))]
    pub endpoint: String,
    /// `grpc` or `http`. Default: `grpc` for traces, `http` for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocol>,
    /// Skip TLS (plaintext). Default: decided by the endpoint's scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// Extra headers that are not secret, e.g. `X-Scope-OrgID` for a multi-tenant Tempo or
    /// Loki. They are written into the collector's ConfigMap, which anyone who may read
    /// ConfigMaps of the namespace can read: put credentials in `headersSecretRef` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Headers whose values are secret (`Authorization`, API keys): each listed header's value
    /// is the Secret key of the same name. The collector gets them as environment variables
    /// from the Secret and its configuration only names those variables (`${env:…}`), so no
    /// value is stored in a ConfigMap. A header also in `headers` takes the Secret's value.
    /// The collector reads the values when its pod starts: restart it after changing them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_ref: Option<HeadersSecretRef>,
}

/// A Secret of the ChatCluster's namespace whose keys are header names and whose values are
/// the header values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeadersSecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The headers to send, each a key of the Secret (e.g. `Authorization`). Listed here
    /// because the operator does not read the Secret: the collector pod does, at start. A
    /// missing key keeps the collector pod from starting (the kubelet reports it).
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 253), regex(pattern = HEADER_NAME_PATTERN)))]
    pub headers: Vec<String>,
}

/// A header name that is also a valid Secret key.
pub const HEADER_NAME_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

/// The OTLP transport of a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    Grpc,
    /// OTLP over HTTP/protobuf (port 4318 by convention; Loki serves it under `/otlp`).
    Http,
}

/// The collector's Prometheus exporter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectorMetricsSpec {
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Port of the Prometheus exporter. Default 8889.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// The PrometheusRule with the chat alerts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusRuleSpec {
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Labels on the PrometheusRule object, so the user's Prometheus selects it
    /// (e.g. `release: kube-prometheus-stack`), merged over the operator's monitoring labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Extra labels on every alert (e.g. `team: chat`), usable in Alertmanager routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_labels: Option<BTreeMap<String, String>>,
    /// Base URL of the runbooks; each alert links `<runbookBaseUrl>/<Alert>.md`. Default: the
    /// operator's `--runbook-base-url` (the project's docs/runbooks unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook_base_url: Option<String>,
    /// Window of every `rate()` in the rules. Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub rate_window: Option<String>,
    /// Evaluation interval of the rule group. Default: Prometheus' global interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    /// Per-alert thresholds, `for:` durations, severities, on/off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertsSpec>,
}

/// Tuning of each alert; see docs/observability.md for the meaning of each threshold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertsSpec {
    /// `ChatHighConnectionDropRate`: fraction of connections dropped abnormally (default 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_drop_rate: Option<AlertTuning>,
    /// `ChatHighMessageLatency`: p99 of `websocket_message_duration_seconds` in seconds (0.25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_latency_p99: Option<AlertTuning>,
    /// `ChatHighDeliveryLatency`: p99 of `chat_delivery_latency_seconds` in seconds (0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_latency_p99: Option<AlertTuning>,
    /// `ChatActiveConnectionsSpike`: factor over the previous hour's average (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_connections_spike: Option<AlertTuning>,
    /// `ChatHighErrorRate`: errors per client frame (default 0.05).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<AlertTuning>,
    /// `ChatRedisDown`: a node has lost Redis (no threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_down: Option<AlertTuning>,
    /// `ChatRedisShardDown`: a node sees a Redis Cluster primary not answering (no
    /// threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_shard_down: Option<AlertTuning>,
    /// `ChatNodeNearConnectionLimit`: active / max connections (default 0.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_near_connection_limit: Option<AlertTuning>,
    /// `ChatNodeNearFdLimit`: open / max file descriptors (default 0.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_near_fd_limit: Option<AlertTuning>,
    /// `ChatSlowConsumers`: slow consumers disconnected per rate window (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_consumers: Option<AlertTuning>,
    /// `ChatNodeDown`: a chat-node scrape target is down (no threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_down: Option<AlertTuning>,
    /// `ChatClusterDown`: no chat-node of the cluster is up (no threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_down: Option<AlertTuning>,
    /// `ChatNodeHighCpu` (info): CPU cores a chat-node uses, averaged over the rate window
    /// (default 0.8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_high_cpu: Option<AlertTuning>,
    /// `ChatConnectionsRejected` (info): connections the cluster refused per rate window (at the
    /// connection limit, while draining, or from a refused Origin; default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_rejected: Option<AlertTuning>,
}

/// Overrides for one alert. Unset fields keep the alert's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertTuning {
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The alert's threshold (unit depends on the alert; ignored by alerts without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub threshold: Option<f64>,
    /// How long the condition must hold before the alert fires.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub for_: Option<String>,
    /// `critical` (pages), `warning` (chat notification) or `info` (shown, not notified unless
    /// `spec.alerting.info` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
}

/// Alert severity, used by the AlertmanagerConfig routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Pages the on-call (PagerDuty / OpsGenie).
    Critical,
    /// Goes to the team's chat channel (Slack).
    Warning,
    /// Worth knowing, no action needed now (a capacity signal): visible in Alertmanager and
    /// Grafana, notified only to `spec.alerting.info`'s receiver, held back while a critical or
    /// warning alert of the cluster fires.
    Info,
}

impl Severity {
    /// The value of the `severity` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// ServiceMonitors for the chat-nodes' admin port and for the collector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Scrape interval. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    /// Labels on the ServiceMonitor objects, so the user's Prometheus selects them, merged over
    /// the operator's monitoring labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// The Grafana dashboard ConfigMap.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DashboardSpec {
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Labels the Grafana sidecar looks for. Default `grafana_dashboard: "1"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Grafana folder (the sidecar's `grafana_folder` annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
}

/// `spec.alerting`: on-call routing through an AlertmanagerConfig.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertingSpec {
    /// Receiver of `severity=critical` alerts: PagerDuty and/or OpsGenie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical: Option<CriticalReceiver>,
    /// Receiver of `severity=warning` alerts: Slack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<WarningReceiver>,
    /// Receiver of `severity=info` alerts: Slack (e.g. a low-traffic channel). Unset: info
    /// alerts are not notified; they show in Alertmanager and Grafana.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<WarningReceiver>,
    /// Labels that group alerts into one notification. Default `[alertname, namespace, chatcluster]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<Vec<String>>,
    /// Wait before the first notification of a group. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub group_wait: Option<String>,
    /// Wait before notifying about new alerts of a group. Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub group_interval: Option<String>,
    /// Wait before re-sending a notification. Default `4h` (critical: `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub repeat_interval: Option<String>,
    /// Labels on the AlertmanagerConfig object, so the user's Alertmanager selects it, merged
    /// over the operator's monitoring labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Where critical alerts page. Both may be set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CriticalReceiver {
    /// PagerDuty Events API v2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pager_duty: Option<PagerDutyReceiver>,
    /// OpsGenie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_genie: Option<OpsGenieReceiver>,
}

/// PagerDuty receiver; the routing key comes from a Secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PagerDutyReceiver {
    /// Secret (same namespace) holding the Events v2 routing (integration) key.
    pub routing_key_secret_ref: SecretKeyRef,
    /// Events API URL. Default: Alertmanager's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// OpsGenie receiver; the API key comes from a Secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpsGenieReceiver {
    /// Secret (same namespace) holding the OpsGenie API key.
    pub api_key_secret_ref: SecretKeyRef,
    /// API URL (e.g. the EU endpoint). Default: Alertmanager's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
}

/// Where warnings (or, under `info`, info alerts) go.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarningReceiver {
    /// Slack incoming webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackReceiver>,
}

/// Slack receiver; the webhook URL comes from a Secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlackReceiver {
    /// Secret (same namespace) holding the incoming-webhook URL.
    pub api_url_secret_ref: SecretKeyRef,
    /// Channel, e.g. `#chat-alerts`. Default: the webhook's channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// A key of a Secret in the ChatCluster's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key within the Secret.
    pub key: String,
}
