//! The PrometheusRule: symptom-based alerts of a chat cluster.
//!
//! Alerts fire on what users feel (dropped connections, slow messages, errors, a lost broker,
//! nodes about to refuse connections), not on causes. Each has a `severity` label used by the
//! AlertmanagerConfig routes, a `chatcluster` label used for grouping and inhibition, and the
//! `summary`, `description` and `runbook_url` annotations. Thresholds, `for:` durations and
//! severities come from [`AlertsSpec`], with the defaults in [`ALERTS`].
//!
//! Every expression is scoped to this cluster's series by `namespace` and `job` (the
//! ServiceMonitor makes `job` the admin Service's name, `<name>-admin`).

use std::collections::BTreeMap;

use super::monitoring::{
    AlertRule, PrometheusRule, PrometheusRuleSpec as RuleObjectSpec, RuleGroup,
};
use super::{ClusterContext, Error, check_duration};
use crate::api::observability::{
    AlertTuning, AlertsSpec, ObservabilitySpec, PrometheusRuleSpec, Severity,
};

/// Default window of every `rate()` / `increase()`.
pub const DEFAULT_RATE_WINDOW: &str = "5m";

/// Below this many connections the drop-rate and spike alerts stay quiet: a handful of users
/// coming and going is not an incident.
pub const MIN_CONNECTIONS_FOR_RATIOS: u32 = 10;

/// Disconnection reasons that are not a drop (the client or the node closed on purpose).
pub const NORMAL_DISCONNECT_REASONS: &str =
    "client_close|draining|token_expired|disconnected|token_revoked";

/// One alert's definition and defaults. In the expression and annotations, `%SEL%` is the
/// cluster's series selector, `%W%` the rate window and `%T%` the threshold.
#[derive(Debug)]
pub struct AlertDefinition {
    /// The alert name, also the runbook file name (`docs/runbooks/<name>.md`).
    pub name: &'static str,
    /// The field of [`AlertsSpec`] that tunes it (camelCase, for error messages and docs).
    pub field: &'static str,
    pub tuning: fn(&AlertsSpec) -> Option<&AlertTuning>,
    pub threshold: Option<f64>,
    pub for_: &'static str,
    pub severity: Severity,
    pub expr: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
}

/// Every alert, with its defaults (sensible for a chat service: a few seconds of trouble is
/// noise, minutes of it is an incident).
pub const ALERTS: &[AlertDefinition] = &[
    AlertDefinition {
        name: "ChatHighConnectionDropRate",
        field: "connectionDropRate",
        tuning: |a| a.connection_drop_rate.as_ref(),
        threshold: Some(0.1),
        for_: "5m",
        severity: Severity::Warning,
        expr: "sum by (namespace, job) (increase(websocket_disconnections_total{%SEL%,reason!~\"%NORMAL%\"}[%W%]))\n  / sum by (namespace, job) (max_over_time(websocket_active_connections{%SEL%}[%W%]))\n  > %T%\nand sum by (namespace, job) (max_over_time(websocket_active_connections{%SEL%}[%W%])) >= %MIN%",
        summary: "Chat connections are being dropped",
        description: "{{ $value | humanizePercentage }} of the connections of ChatCluster %NS%/%NAME% were dropped abnormally in the last %W% (threshold %T%).",
    },
    AlertDefinition {
        name: "ChatHighMessageLatency",
        field: "messageLatencyP99",
        tuning: |a| a.message_latency_p99.as_ref(),
        threshold: Some(0.25),
        for_: "10m",
        severity: Severity::Warning,
        expr: "histogram_quantile(0.99, sum by (namespace, job, le) (rate(websocket_message_duration_seconds_bucket{%SEL%}[%W%])))\n  > %T%",
        summary: "Chat message handling is slow (p99)",
        description: "The p99 time from receiving a client frame to handing it on is {{ $value | humanizeDuration }} in ChatCluster %NS%/%NAME% (threshold %T%s).",
    },
    AlertDefinition {
        name: "ChatHighDeliveryLatency",
        field: "deliveryLatencyP99",
        tuning: |a| a.delivery_latency_p99.as_ref(),
        threshold: Some(0.5),
        for_: "10m",
        severity: Severity::Warning,
        expr: "histogram_quantile(0.99, sum by (namespace, job, le) (rate(chat_delivery_latency_seconds_bucket{%SEL%}[%W%])))\n  > %T%",
        summary: "Chat message delivery is slow (p99)",
        description: "The p99 time from publish to delivery on the subscriber's socket is {{ $value | humanizeDuration }} in ChatCluster %NS%/%NAME% (threshold %T%s).",
    },
    AlertDefinition {
        name: "ChatActiveConnectionsSpike",
        field: "activeConnectionsSpike",
        tuning: |a| a.active_connections_spike.as_ref(),
        threshold: Some(2.0),
        for_: "5m",
        severity: Severity::Warning,
        expr: "sum by (namespace, job) (websocket_active_connections{%SEL%})\n  > %T% * sum by (namespace, job) (avg_over_time(websocket_active_connections{%SEL%}[1h] offset %W%))\nand sum by (namespace, job) (websocket_active_connections{%SEL%}) >= %MIN%",
        summary: "Sudden spike of chat connections",
        description: "ChatCluster %NS%/%NAME% holds {{ $value }} connections, more than %T% times its average of the previous hour.",
    },
    AlertDefinition {
        name: "ChatHighErrorRate",
        field: "errorRate",
        tuning: |a| a.error_rate.as_ref(),
        threshold: Some(0.05),
        for_: "10m",
        severity: Severity::Warning,
        expr: "sum by (namespace, job) (rate(websocket_errors_total{%SEL%}[%W%]))\n  / sum by (namespace, job) (rate(websocket_message_duration_seconds_count{%SEL%}[%W%]))\n  > %T%",
        summary: "Many chat frames are answered with an error",
        description: "{{ $value | humanizePercentage }} of client frames got an error in ChatCluster %NS%/%NAME% (threshold %T%).",
    },
    AlertDefinition {
        name: "ChatRedisDown",
        field: "redisDown",
        tuning: |a| a.redis_down.as_ref(),
        threshold: None,
        for_: "1m",
        severity: Severity::Critical,
        expr: "chat_redis_up{%SEL%} == 0",
        summary: "A chat-node has lost Redis",
        description: "chat-node {{ $labels.pod }} ({{ $labels.instance }}) of ChatCluster %NS%/%NAME% cannot reach Redis: publishes fail with `unavailable` and it is not ready.",
    },
    AlertDefinition {
        name: "ChatRedisShardDown",
        field: "redisShardDown",
        tuning: |a| a.redis_shard_down.as_ref(),
        threshold: None,
        for_: "1m",
        severity: Severity::Critical,
        expr: "chat_redis_cluster_shards_down{%SEL%} > 0",
        summary: "A Redis Cluster shard is down for a chat-node",
        description: "chat-node {{ $labels.pod }} ({{ $labels.instance }}) of ChatCluster %NS%/%NAME% gets no answer from {{ $value }} Redis Cluster primary(ies): the channels on those shards answer `unavailable`, the other channels are served.",
    },
    AlertDefinition {
        name: "ChatNodeNearConnectionLimit",
        field: "nodeNearConnectionLimit",
        tuning: |a| a.node_near_connection_limit.as_ref(),
        threshold: Some(0.9),
        for_: "5m",
        severity: Severity::Warning,
        expr: "websocket_active_connections{%SEL%} / (chat_max_connections{%SEL%} > 0) > %T%",
        summary: "A chat-node is near its connection limit",
        description: "chat-node {{ $labels.pod }} ({{ $labels.instance }}) of ChatCluster %NS%/%NAME% uses {{ $value | humanizePercentage }} of its connection limit; at the limit it refuses new connections.",
    },
    AlertDefinition {
        name: "ChatNodeNearFdLimit",
        field: "nodeNearFdLimit",
        tuning: |a| a.node_near_fd_limit.as_ref(),
        threshold: Some(0.9),
        for_: "5m",
        severity: Severity::Warning,
        expr: "process_open_fds{%SEL%} / (process_max_fds{%SEL%} > 0) > %T%",
        summary: "A chat-node is near its file descriptor limit",
        description: "chat-node {{ $labels.pod }} ({{ $labels.instance }}) of ChatCluster %NS%/%NAME% uses {{ $value | humanizePercentage }} of its file descriptors.",
    },
    AlertDefinition {
        name: "ChatSlowConsumers",
        field: "slowConsumers",
        tuning: |a| a.slow_consumers.as_ref(),
        threshold: Some(10.0),
        for_: "5m",
        severity: Severity::Warning,
        expr: "sum by (namespace, job) (increase(chat_slow_consumers_total{%SEL%}[%W%])) > %T%",
        summary: "Chat clients are disconnected as slow consumers",
        description: "{{ $value | humanize }} connections of ChatCluster %NS%/%NAME% overflowed their send queue in the last %W% (threshold %T%).",
    },
    AlertDefinition {
        name: "ChatNodeDown",
        field: "nodeDown",
        tuning: |a| a.node_down.as_ref(),
        threshold: None,
        for_: "2m",
        severity: Severity::Warning,
        expr: "up{%SEL%} == 0",
        summary: "A chat-node cannot be scraped",
        description: "Prometheus cannot scrape chat-node {{ $labels.pod }} ({{ $labels.instance }}) of ChatCluster %NS%/%NAME%; its clients have to reconnect elsewhere.",
    },
    AlertDefinition {
        name: "ChatClusterDown",
        field: "clusterDown",
        tuning: |a| a.cluster_down.as_ref(),
        threshold: None,
        for_: "1m",
        severity: Severity::Critical,
        expr: "sum by (namespace, job) (up{%SEL%}) == 0\nor absent(up{%SEL%})",
        summary: "No chat-node of the cluster is up",
        description: "No chat-node of ChatCluster %NS%/%NAME% answers Prometheus: the chat service is down.",
    },
    AlertDefinition {
        name: "ChatNodeHighCpu",
        field: "nodeHighCpu",
        tuning: |a| a.node_high_cpu.as_ref(),
        threshold: Some(0.8),
        for_: "15m",
        severity: Severity::Info,
        expr: "rate(process_cpu_seconds_total{%SEL%}[%W%]) > %T%",
        summary: "A chat-node is busy",
        description: "chat-node {{ $labels.pod }} ({{ $labels.instance }}) of ChatCluster %NS%/%NAME% uses {{ $value | printf \"%.2f\" }} CPU cores (threshold %T%): latency rises if it runs out; add nodes or CPU before it does.",
    },
    AlertDefinition {
        name: "ChatConnectionsRejected",
        field: "connectionsRejected",
        tuning: |a| a.connections_rejected.as_ref(),
        threshold: Some(0.0),
        for_: "10m",
        severity: Severity::Info,
        expr: "sum by (namespace, job) (increase(websocket_connections_total{%SEL%,status=\"rejected\"}[%W%])) > %T%",
        summary: "Chat connections are being refused",
        description: "ChatCluster %NS%/%NAME% refused {{ $value | humanize }} connections in the last %W% (threshold %T%): nodes at their connection limit, draining, or an Origin not allowed.",
    },
];

/// Base URL of the runbooks (this repository's `docs/runbooks`).
pub fn default_runbook_base_url() -> String {
    format!("{}/blob/main/docs/runbooks", env!("CARGO_PKG_REPOSITORY"))
}

impl ObservabilitySpec {
    /// The PrometheusRule settings in force (absent section = defaults, enabled).
    pub fn prometheus_rule_settings(&self) -> PrometheusRuleSpec {
        self.prometheus_rule.clone().unwrap_or_default()
    }
}

/// The rule group of this cluster, as in a Prometheus rule file; `None` when disabled.
pub fn build_rule_group(
    spec: &ObservabilitySpec,
    ctx: &ClusterContext,
) -> Result<Option<RuleGroup>, Error> {
    let settings = spec.prometheus_rule_settings();
    if settings.enabled == Some(false) {
        return Ok(None);
    }
    let window = match &settings.rate_window {
        Some(w) => check_duration("observability.prometheusRule.rateWindow", w)?,
        None => DEFAULT_RATE_WINDOW.to_owned(),
    };
    let interval = settings
        .interval
        .as_deref()
        .map(|i| check_duration("observability.prometheusRule.interval", i))
        .transpose()?;
    let runbook_base = settings
        .runbook_base_url
        .clone()
        .unwrap_or_else(|| ctx.monitoring.runbook_base_url.clone());
    let alerts = settings.alerts.clone().unwrap_or_default();
    let selector = ctx.series_selector();

    let mut rules = Vec::new();
    for def in ALERTS {
        let tuning = (def.tuning)(&alerts).cloned().unwrap_or_default();
        if tuning.enabled == Some(false) {
            continue;
        }
        let threshold = tuning.threshold.or(def.threshold);
        if let Some(t) = threshold
            && (!t.is_finite() || t < 0.0)
        {
            return Err(Error::InvalidThreshold {
                field: format!(
                    "observability.prometheusRule.alerts.{}.threshold",
                    def.field
                ),
                value: t,
            });
        }
        let for_ = match &tuning.for_ {
            Some(f) => check_duration("observability.prometheusRule.alerts.*.for", f)?,
            None => def.for_.to_owned(),
        };
        let fill = |template: &str| {
            template
                .replace("%SEL%", &selector)
                .replace("%NORMAL%", NORMAL_DISCONNECT_REASONS)
                .replace("%MIN%", &MIN_CONNECTIONS_FOR_RATIOS.to_string())
                .replace("%W%", &window)
                .replace("%NS%", &ctx.namespace)
                .replace("%NAME%", &ctx.name)
                .replace("%T%", &threshold.map(|t| t.to_string()).unwrap_or_default())
        };
        let severity = tuning.severity.unwrap_or(def.severity);
        let mut labels: BTreeMap<String, String> =
            settings.alert_labels.clone().unwrap_or_default();
        labels.insert("severity".into(), severity.as_str().into());
        labels.insert("chatcluster".into(), ctx.name.clone());
        labels.insert("namespace".into(), ctx.namespace.clone());
        let annotations = BTreeMap::from([
            ("summary".to_owned(), fill(def.summary)),
            ("description".to_owned(), fill(def.description)),
            (
                "runbook_url".to_owned(),
                format!("{}/{}.md", runbook_base.trim_end_matches('/'), def.name),
            ),
        ]);
        rules.push(AlertRule {
            alert: def.name.to_owned(),
            expr: fill(def.expr),
            for_: Some(for_),
            labels,
            annotations,
        });
    }
    Ok(Some(RuleGroup {
        name: format!("chatcluster-{}", ctx.name),
        interval,
        rules,
    }))
}

/// The PrometheusRule `<name>`; `None` when disabled.
pub fn build_prometheus_rule(
    spec: &ObservabilitySpec,
    ctx: &ClusterContext,
) -> Result<Option<PrometheusRule>, Error> {
    let Some(group) = build_rule_group(spec, ctx)? else {
        return Ok(None);
    };
    let settings = spec.prometheus_rule_settings();
    let mut rule = PrometheusRule::new(
        &ctx.name,
        RuleObjectSpec {
            groups: vec![group],
        },
    );
    rule.metadata = ctx.metadata(
        ctx.name.clone(),
        "chat-node",
        "alerts",
        Some(&ctx.monitoring_labels(settings.labels.as_ref())),
    );
    Ok(Some(rule))
}

/// A Prometheus rule file (`groups:`) with the given groups, for `promtool` and Prometheus.
pub fn rule_file_yaml(groups: &[RuleGroup]) -> Result<String, Error> {
    #[derive(serde::Serialize)]
    struct RuleFile<'a> {
        groups: &'a [RuleGroup],
    }
    serde_yaml_ng::to_string(&RuleFile { groups }).map_err(|e| Error::Render {
        what: "rule file",
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::observability::{AlertsSpec, PrometheusRuleSpec};

    fn ctx() -> ClusterContext {
        ClusterContext::new("demo", "chat")
    }

    #[test]
    fn default_group_has_every_alert_scoped_to_the_cluster() {
        let group = build_rule_group(&ObservabilitySpec::default(), &ctx())
            .unwrap()
            .unwrap();
        assert_eq!(group.rules.len(), ALERTS.len());
        for rule in &group.rules {
            assert!(
                rule.expr.contains("namespace=\"chat\",job=\"demo-admin\""),
                "{} not scoped: {}",
                rule.alert,
                rule.expr
            );
            assert!(
                !rule.expr.contains('%'),
                "unfilled placeholder in {}",
                rule.expr
            );
            assert!(rule.annotations["runbook_url"].ends_with(&format!("/{}.md", rule.alert)));
            assert!(["critical", "warning", "info"].contains(&rule.labels["severity"].as_str()));
            assert_eq!(rule.labels["chatcluster"], "demo");
        }
    }

    #[test]
    fn tuning_overrides_defaults_and_can_disable() {
        let spec = ObservabilitySpec {
            prometheus_rule: Some(PrometheusRuleSpec {
                rate_window: Some("1m".into()),
                alert_labels: Some(BTreeMap::from([("team".into(), "chat".into())])),
                alerts: Some(AlertsSpec {
                    message_latency_p99: Some(AlertTuning {
                        threshold: Some(1.5),
                        for_: Some("30s".into()),
                        severity: Some(Severity::Critical),
                        ..AlertTuning::default()
                    }),
                    slow_consumers: Some(AlertTuning {
                        enabled: Some(false),
                        ..AlertTuning::default()
                    }),
                    ..AlertsSpec::default()
                }),
                ..PrometheusRuleSpec::default()
            }),
            ..ObservabilitySpec::default()
        };
        let group = build_rule_group(&spec, &ctx()).unwrap().unwrap();
        assert!(group.rules.iter().all(|r| r.alert != "ChatSlowConsumers"));
        let latency = group
            .rules
            .iter()
            .find(|r| r.alert == "ChatHighMessageLatency")
            .unwrap();
        assert!(latency.expr.ends_with("> 1.5"), "{}", latency.expr);
        assert!(latency.expr.contains("[1m]"));
        assert_eq!(latency.for_.as_deref(), Some("30s"));
        assert_eq!(latency.labels["severity"], "critical");
        assert_eq!(latency.labels["team"], "chat");
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let mut spec = ObservabilitySpec {
            prometheus_rule: Some(PrometheusRuleSpec {
                rate_window: Some("5 minutes".into()),
                ..PrometheusRuleSpec::default()
            }),
            ..ObservabilitySpec::default()
        };
        let err = build_rule_group(&spec, &ctx()).unwrap_err().to_string();
        assert!(err.contains("rateWindow"), "{err}");

        spec.prometheus_rule = Some(PrometheusRuleSpec {
            alerts: Some(AlertsSpec {
                error_rate: Some(AlertTuning {
                    threshold: Some(-1.0),
                    ..AlertTuning::default()
                }),
                ..AlertsSpec::default()
            }),
            ..PrometheusRuleSpec::default()
        });
        let err = build_rule_group(&spec, &ctx()).unwrap_err().to_string();
        assert!(err.contains("errorRate"), "{err}");
    }

    #[test]
    fn disabled_rule_builds_nothing() {
        let spec = ObservabilitySpec {
            prometheus_rule: Some(PrometheusRuleSpec {
                enabled: Some(false),
                ..PrometheusRuleSpec::default()
            }),
            ..ObservabilitySpec::default()
        };
        assert!(build_prometheus_rule(&spec, &ctx()).unwrap().is_none());
    }

    #[test]
    fn object_carries_selection_labels() {
        let spec = ObservabilitySpec {
            prometheus_rule: Some(PrometheusRuleSpec {
                labels: Some(BTreeMap::from([(
                    "release".into(),
                    "kube-prometheus-stack".into(),
                )])),
                ..PrometheusRuleSpec::default()
            }),
            ..ObservabilitySpec::default()
        };
        let rule = build_prometheus_rule(&spec, &ctx()).unwrap().unwrap();
        let value = serde_json::to_value(&rule).unwrap();
        assert_eq!(value["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(value["kind"], "PrometheusRule");
        assert_eq!(
            value["metadata"]["labels"]["release"],
            "kube-prometheus-stack"
        );
        assert_eq!(value["spec"]["groups"][0]["rules"][0]["for"], "5m");
    }
}
