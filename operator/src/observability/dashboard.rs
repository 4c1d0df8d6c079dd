//! The Grafana dashboard of a ChatCluster, in a ConfigMap the Grafana sidecar picks up
//! (label `grafana_dashboard: "1"` by default, as kube-prometheus-stack's sidecar expects).
//!
//! Queries are scoped to this cluster's series like the alert rules. Panels that break traffic
//! down by channel namespace use chat-node's `channel_namespace` label (the configured
//! namespaces, `default` and `other`); `namespace` is Prometheus' target label, the Kubernetes
//! namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Value, json};

use super::spec::ObservabilitySpec;
use super::{ClusterContext, Error};

/// The sidecar's default label.
pub const DEFAULT_LABEL: (&str, &str) = ("grafana_dashboard", "1");
/// The sidecar's folder annotation (kube-prometheus-stack's `folderAnnotation`).
pub const FOLDER_ANNOTATION: &str = "grafana_folder";

struct Panel {
    title: &'static str,
    unit: &'static str,
    kind: &'static str,
    /// (query, legend); `%SEL%` is the cluster's series selector.
    queries: &'static [(&'static str, &'static str)],
}

const fn panel(
    title: &'static str,
    unit: &'static str,
    queries: &'static [(&'static str, &'static str)],
) -> Panel {
    Panel {
        title,
        unit,
        kind: "timeseries",
        queries,
    }
}

const fn stat(
    title: &'static str,
    unit: &'static str,
    queries: &'static [(&'static str, &'static str)],
) -> Panel {
    Panel {
        title,
        unit,
        kind: "stat",
        queries,
    }
}

const PANELS: &[Panel] = &[
    stat(
        "Active connections",
        "short",
        &[("sum(websocket_active_connections{%SEL%})", "connections")],
    ),
    stat("Nodes up", "short", &[("sum(up{%SEL%})", "nodes up")]),
    stat(
        "Nodes with Redis",
        "short",
        &[("sum(chat_redis_up{%SEL%})", "nodes with Redis")],
    ),
    stat(
        "Messages / s",
        "ops",
        &[(
            "sum(rate(chat_messages_published_total{%SEL%}[$__rate_interval]))",
            "published",
        )],
    ),
    panel(
        "Active connections per node",
        "short",
        &[(
            "sum by (pod, instance) (websocket_active_connections{%SEL%})",
            "{{pod}} {{instance}}",
        )],
    ),
    panel(
        "Connections vs limit per node",
        "percentunit",
        &[
            (
                "websocket_active_connections{%SEL%} / (chat_max_connections{%SEL%} > 0)",
                "connections {{pod}} {{instance}}",
            ),
            (
                "process_open_fds{%SEL%} / (process_max_fds{%SEL%} > 0)",
                "file descriptors {{pod}} {{instance}}",
            ),
        ],
    ),
    panel(
        "Connection rate",
        "ops",
        &[(
            "sum by (status) (rate(websocket_connections_total{%SEL%}[$__rate_interval]))",
            "{{status}}",
        )],
    ),
    panel(
        "Disconnections by reason",
        "ops",
        &[(
            "sum by (reason) (rate(websocket_disconnections_total{%SEL%}[$__rate_interval]))",
            "{{reason}}",
        )],
    ),
    panel(
        "Message latency (receive to hand-on)",
        "s",
        &[
            (
                "histogram_quantile(0.5, sum by (le) (rate(websocket_message_duration_seconds_bucket{%SEL%}[$__rate_interval])))",
                "p50",
            ),
            (
                "histogram_quantile(0.95, sum by (le) (rate(websocket_message_duration_seconds_bucket{%SEL%}[$__rate_interval])))",
                "p95",
            ),
            (
                "histogram_quantile(0.99, sum by (le) (rate(websocket_message_duration_seconds_bucket{%SEL%}[$__rate_interval])))",
                "p99",
            ),
        ],
    ),
    panel(
        "Delivery latency (publish to subscriber socket)",
        "s",
        &[
            (
                "histogram_quantile(0.5, sum by (le) (rate(chat_delivery_latency_seconds_bucket{%SEL%}[$__rate_interval])))",
                "p50",
            ),
            (
                "histogram_quantile(0.95, sum by (le) (rate(chat_delivery_latency_seconds_bucket{%SEL%}[$__rate_interval])))",
                "p95",
            ),
            (
                "histogram_quantile(0.99, sum by (le) (rate(chat_delivery_latency_seconds_bucket{%SEL%}[$__rate_interval])))",
                "p99",
            ),
        ],
    ),
    panel(
        "Error rate",
        "ops",
        &[(
            "sum by (code) (rate(websocket_errors_total{%SEL%}[$__rate_interval]))",
            "{{code}}",
        )],
    ),
    panel(
        "Errors per client frame",
        "percentunit",
        &[(
            "sum(rate(websocket_errors_total{%SEL%}[$__rate_interval])) / sum(rate(websocket_message_duration_seconds_count{%SEL%}[$__rate_interval]))",
            "errors / frames",
        )],
    ),
    panel(
        "Redis health",
        "short",
        &[
            ("chat_redis_up{%SEL%}", "up {{pod}} {{instance}}"),
            (
                "sum by (pod, instance) (increase(chat_redis_reconnects_total{%SEL%}[$__rate_interval]))",
                "reconnects {{pod}} {{instance}}",
            ),
        ],
    ),
    panel(
        "Messages by channel namespace",
        "ops",
        &[
            (
                "sum by (channel_namespace) (rate(chat_messages_published_total{%SEL%}[$__rate_interval]))",
                "published {{channel_namespace}}",
            ),
            (
                "sum by (channel_namespace) (rate(chat_messages_delivered_total{%SEL%}[$__rate_interval]))",
                "delivered {{channel_namespace}}",
            ),
        ],
    ),
    panel(
        "Slow consumers disconnected",
        "ops",
        &[(
            "sum(rate(chat_slow_consumers_total{%SEL%}[$__rate_interval]))",
            "slow consumers",
        )],
    ),
    panel(
        "CPU per node",
        "short",
        &[(
            "rate(process_cpu_seconds_total{%SEL%}[$__rate_interval])",
            "{{pod}} {{instance}} cores",
        )],
    ),
    panel(
        "Memory per node",
        "bytes",
        &[(
            "process_resident_memory_bytes{%SEL%}",
            "{{pod}} {{instance}}",
        )],
    ),
];

/// Every PromQL query of the dashboard, filled in for this cluster (Grafana's
/// `$__rate_interval` left as is).
pub fn dashboard_queries(ctx: &ClusterContext) -> Vec<String> {
    let selector = ctx.series_selector();
    PANELS
        .iter()
        .flat_map(|p| p.queries.iter())
        .map(|(q, _)| q.replace("%SEL%", &selector))
        .collect()
}

/// Grafana's limit on a dashboard UID.
pub const MAX_UID_LENGTH: usize = 40;
/// Hex digits of the hash in a UID: 80 bits, so no two ChatClusters of one Grafana share one.
const UID_HASH_HEX: usize = 20;

/// The dashboard UID: a readable start (`chat-<namespace>-<name>`, cut short) and 80 bits of the
/// SHA-256 of `<namespace>/<name>`, at most [`MAX_UID_LENGTH`] characters. Cutting alone made
/// long names collide, and `chat-<ns>-<name>` alone is ambiguous (`a-b`/`c` and `a`/`b-c`);
/// the hash of the unambiguous `<ns>/<name>` is what keeps UIDs apart. A UID never changes for
/// a given namespace and name, so links to the dashboard keep working.
pub fn uid(ctx: &ClusterContext) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{}/{}", ctx.namespace, ctx.name).as_bytes());
    let hash: String = digest
        .iter()
        .take(UID_HASH_HEX / 2)
        .map(|b| format!("{b:02x}"))
        .collect();
    let readable: String = format!("chat-{}-{}", ctx.namespace, ctx.name)
        .chars()
        .take(MAX_UID_LENGTH - UID_HASH_HEX - 1)
        .collect();
    format!("{}-{hash}", readable.trim_end_matches(['-', '.']))
}

/// The dashboard JSON model.
pub fn build_dashboard_json(ctx: &ClusterContext) -> Value {
    let selector = ctx.series_selector();
    let datasource = json!({ "type": "prometheus", "uid": "${datasource}" });
    let mut panels = Vec::new();
    let (mut x, mut y) = (0, 0);
    for (id, p) in PANELS.iter().enumerate() {
        let (w, h) = if p.kind == "stat" { (6, 4) } else { (12, 8) };
        if x + w > 24 {
            x = 0;
            y += if PANELS[id - 1].kind == "stat" { 4 } else { 8 };
        }
        let targets: Vec<Value> = p
            .queries
            .iter()
            .enumerate()
            .map(|(i, (q, legend))| {
                json!({
                    "refId": ((b'A' + i as u8) as char).to_string(),
                    "datasource": datasource,
                    "expr": q.replace("%SEL%", &selector),
                    "legendFormat": legend,
                })
            })
            .collect();
        panels.push(json!({
            "id": id + 1,
            "type": p.kind,
            "title": p.title,
            "datasource": datasource,
            "gridPos": { "x": x, "y": y, "w": w, "h": h },
            "fieldConfig": { "defaults": { "unit": p.unit }, "overrides": [] },
            "targets": targets,
        }));
        x += w;
    }
    json!({
        "uid": uid(ctx),
        "title": format!("ChatCluster {}/{}", ctx.namespace, ctx.name),
        "tags": ["chatcluster"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": { "from": "now-1h", "to": "now" },
        "templating": { "list": [{
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
        }]},
        "panels": panels,
    })
}

impl ObservabilitySpec {
    /// Whether the dashboard ConfigMap is wanted (section present and not disabled).
    pub fn dashboard_enabled(&self) -> bool {
        self.dashboard
            .as_ref()
            .is_some_and(|d| d.enabled != Some(false))
    }
}

/// The dashboard ConfigMap `<name>-dashboard`; `None` when not wanted.
pub fn build_dashboard_config_map(
    spec: &ObservabilitySpec,
    ctx: &ClusterContext,
) -> Result<Option<ConfigMap>, Error> {
    if !spec.dashboard_enabled() {
        return Ok(None);
    }
    let settings = spec.dashboard.clone().unwrap_or_default();
    let labels = settings.labels.clone().unwrap_or_else(|| {
        BTreeMap::from([(DEFAULT_LABEL.0.to_owned(), DEFAULT_LABEL.1.to_owned())])
    });
    let mut metadata = ctx.metadata(
        format!("{}-dashboard", ctx.name),
        "chat-node",
        "dashboard",
        Some(&labels),
    );
    if let Some(folder) = &settings.folder {
        metadata.annotations = Some(BTreeMap::from([(
            FOLDER_ANNOTATION.to_owned(),
            folder.clone(),
        )]));
    }
    let json =
        serde_json::to_string_pretty(&build_dashboard_json(ctx)).map_err(|e| Error::Render {
            what: "dashboard",
            message: e.to_string(),
        })?;
    Ok(Some(ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(
            format!("chatcluster-{}-{}.json", ctx.namespace, ctx.name),
            json,
        )])),
        ..ConfigMap::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability::spec::DashboardSpec;

    #[test]
    fn dashboard_has_the_panels_of_the_issue() {
        let dashboard = build_dashboard_json(&ClusterContext::new("demo", "chat"));
        let titles: Vec<&str> = dashboard["panels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["title"].as_str().unwrap())
            .collect();
        for wanted in [
            "Active connections per node",
            "Connection rate",
            "Message latency (receive to hand-on)",
            "Delivery latency (publish to subscriber socket)",
            "Error rate",
            "Redis health",
            "Connections vs limit per node",
        ] {
            assert!(titles.contains(&wanted), "missing panel {wanted}");
        }
        for query in dashboard_queries(&ClusterContext::new("demo", "chat")) {
            assert!(
                query.contains("namespace=\"chat\",job=\"demo-admin\""),
                "{query}"
            );
        }
    }

    #[test]
    fn config_map_only_when_asked_with_sidecar_label() {
        let ctx = ClusterContext::new("demo", "chat");
        assert!(
            build_dashboard_config_map(&ObservabilitySpec::default(), &ctx)
                .unwrap()
                .is_none()
        );
        let spec = ObservabilitySpec {
            dashboard: Some(DashboardSpec {
                folder: Some("Chat".into()),
                ..DashboardSpec::default()
            }),
            ..ObservabilitySpec::default()
        };
        let cm = build_dashboard_config_map(&spec, &ctx).unwrap().unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("demo-dashboard"));
        assert_eq!(
            cm.metadata.labels.as_ref().unwrap()["grafana_dashboard"],
            "1"
        );
        assert_eq!(
            cm.metadata.annotations.as_ref().unwrap()[FOLDER_ANNOTATION],
            "Chat"
        );
        let data = cm.data.unwrap();
        let json: Value = serde_json::from_str(data.values().next().unwrap()).unwrap();
        assert_eq!(json["uid"], uid(&ClusterContext::new("demo", "chat")));
    }

    #[test]
    fn uids_are_short_stable_and_distinct() {
        let uid_of = |ns: &str, name: &str| uid(&ClusterContext::new(name, ns));
        // Pinned: a UID that changed between releases would break every saved link.
        assert_eq!(
            uid_of("chat", "demo"),
            "chat-chat-demo-ff9d8050f46ae151f241"
        );
        let long_ns = "n".repeat(63);
        let long_name = "c".repeat(52);
        let mut seen = std::collections::BTreeSet::new();
        for (ns, name) in [
            ("a-b", "c"),
            ("a", "b-c"),
            (long_ns.as_str(), long_name.as_str()),
            (long_ns.as_str(), &format!("{}x", &long_name[1..])),
            (long_ns.as_str(), "x"),
            ("production-eu-west-1", "chat-frontend-a"),
            ("production-eu-west-1", "chat-frontend-b"),
        ] {
            let uid = uid_of(ns, name);
            assert!(uid.len() <= MAX_UID_LENGTH, "{uid} is {} long", uid.len());
            assert!(
                uid.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{uid}"
            );
            assert!(seen.insert(uid.clone()), "{ns}/{name} collides: {uid}");
        }
    }
}
