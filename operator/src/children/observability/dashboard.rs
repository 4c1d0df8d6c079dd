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

use super::{ClusterContext, Error};
use crate::api::observability::ObservabilitySpec;

/// The sidecar's default label.
pub const DEFAULT_LABEL: (&str, &str) = ("grafana_dashboard", "1");
/// The sidecar's folder annotation (kube-prometheus-stack's `folderAnnotation`).
pub const FOLDER_ANNOTATION: &str = "grafana_folder";

/// The shared dashboard (Grafana's JSON model): every ChatCluster of a Prometheus, chosen with
/// its `namespace` and `cluster` variables, as kube-prometheus-stack users expect of a
/// dashboard. The chart ships it as is (value `grafanaDashboard`); the per-cluster dashboard
/// of `spec.observability.dashboard` is the same file with both variables filled in
/// ([`build_dashboard_json`]), so the two cannot drift. Edit the file, not JSON in Rust.
pub const SHARED_DASHBOARD_JSON: &str = include_str!("../../../dashboards/chatcluster.json");

/// The shared dashboard's variables that the per-cluster dashboard fills in.
const CLUSTER_VARIABLES: [&str; 2] = ["namespace", "cluster"];

/// The shared dashboard, parsed (a unit test proves the file parses).
pub fn shared_dashboard() -> Value {
    serde_json::from_str(SHARED_DASHBOARD_JSON).expect("dashboards/chatcluster.json is JSON")
}

/// Every PromQL expression of `dashboard`'s panels, as written.
pub fn panel_queries(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect()
}

/// `query` of the shared dashboard for one cluster: `$namespace` and `$cluster` filled in
/// (Grafana's `$__rate_interval` left as is).
fn fill(query: &str, ctx: &ClusterContext) -> String {
    query
        .replace("$namespace", &ctx.namespace)
        .replace("$cluster", &ctx.name)
}

/// Every PromQL query of the dashboard, filled in for this cluster (Grafana's
/// `$__rate_interval` left as is).
pub fn dashboard_queries(ctx: &ClusterContext) -> Vec<String> {
    panel_queries(&build_dashboard_json(ctx))
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

/// The per-cluster dashboard: the shared one with this cluster's namespace and name in every
/// query instead of the `namespace` and `cluster` variables, and a UID and title of its own.
pub fn build_dashboard_json(ctx: &ClusterContext) -> Value {
    let mut dashboard = shared_dashboard();
    for target in dashboard["panels"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array_mut().into_iter().flatten())
    {
        if let Some(expr) = target["expr"].as_str() {
            target["expr"] = Value::String(fill(expr, ctx));
        }
    }
    if let Some(list) = dashboard["templating"]["list"].as_array_mut() {
        list.retain(|v| !CLUSTER_VARIABLES.contains(&v["name"].as_str().unwrap_or_default()));
    }
    dashboard["uid"] = json!(uid(ctx));
    dashboard["title"] = json!(format!("ChatCluster {}/{}", ctx.namespace, ctx.name));
    dashboard["description"] = json!(format!(
        "chat-node metrics of ChatCluster {}/{} (the shared ChatCluster dashboard with its \
         variables filled in).",
        ctx.namespace, ctx.name
    ));
    dashboard
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
    use crate::api::observability::DashboardSpec;

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

    /// The names chat-node exports: the first column of the metrics table in
    /// docs/protocol.md (a histogram also as `_bucket`, `_sum`, `_count`), and Prometheus' `up`.
    fn exported_metric_names() -> Vec<String> {
        let protocol = include_str!("../../../../docs/protocol.md");
        let table = protocol
            .split("## Metrics")
            .nth(1)
            .expect("a Metrics section")
            .split("\n## ")
            .next()
            .unwrap();
        let mut names = vec!["up".to_owned()];
        for row in table.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            for name in cells[1].split(", ") {
                let name = name.trim_matches('`').to_owned();
                if cells[2] == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.push(format!("{name}{suffix}"));
                    }
                }
                names.push(name);
            }
        }
        assert!(names.len() > 20, "found only {names:?}");
        names
    }

    /// The metric names a PromQL expression selects: every identifier right before a `{`.
    fn selected_metrics(query: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, _) in query.match_indices('{') {
            let name: String = query[..i]
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            out.push(name);
        }
        out
    }

    #[test]
    fn the_shared_dashboard_parses_and_queries_only_chat_nodes_metrics_of_one_cluster() {
        let dashboard = shared_dashboard();
        assert_eq!(dashboard["uid"], "chatcluster");
        let variables: Vec<&str> = dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(variables, ["datasource", "namespace", "cluster"]);
        let exported = exported_metric_names();
        let queries = panel_queries(&dashboard);
        assert!(queries.len() >= 20, "only {} queries", queries.len());
        let mut ids = std::collections::BTreeSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "duplicate panel id"
            );
            assert!(!panel["targets"].as_array().unwrap().is_empty());
        }
        for query in &queries {
            let metrics = selected_metrics(query);
            assert!(!metrics.is_empty(), "no metric selector in {query}");
            for metric in &metrics {
                assert!(
                    exported.contains(metric),
                    "{metric} (in {query}) is not in docs/protocol.md's metrics table"
                );
            }
            // Every selector is scoped to one cluster: as many selectors as cluster matchers.
            assert_eq!(
                query
                    .matches("{namespace=\"$namespace\",job=\"$cluster-admin\"}")
                    .count(),
                metrics.len(),
                "{query}"
            );
        }
        // The variables list from a metric chat-node always exports.
        for variable in &dashboard["templating"]["list"].as_array().unwrap()[1..] {
            let query = variable["query"]["query"].as_str().unwrap();
            for metric in selected_metrics(query).iter().chain(
                query
                    .strip_prefix("label_values(")
                    .and_then(|q| q.split([',', '{']).next())
                    .map(str::to_owned)
                    .iter(),
            ) {
                assert!(exported.contains(metric), "{metric} in {query}");
            }
        }
    }

    #[test]
    fn the_per_cluster_dashboard_is_the_shared_one_filled_in() {
        let ctx = ClusterContext::new("demo", "chat");
        let dashboard = build_dashboard_json(&ctx);
        let shared = shared_dashboard();
        assert_eq!(
            dashboard["panels"].as_array().unwrap().len(),
            shared["panels"].as_array().unwrap().len()
        );
        let filled: Vec<String> = panel_queries(&shared)
            .iter()
            .map(|q| fill(q, &ctx))
            .collect();
        assert_eq!(dashboard_queries(&ctx), filled);
        for query in &filled {
            assert!(
                !query.contains("$namespace") && !query.contains("$cluster"),
                "{query}"
            );
        }
        let variables: Vec<&str> = dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(variables, ["datasource"]);
        assert_eq!(dashboard["uid"], uid(&ctx));
        assert_eq!(dashboard["title"], "ChatCluster chat/demo");
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
