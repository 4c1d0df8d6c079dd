//! Observability of a ChatCluster: metrics, traces, logs, alerts and on-call routing.
//!
//! Everything here is a pure builder: it takes the user's
//! [`ObservabilitySpec`](crate::api::observability::ObservabilitySpec) /
//! [`AlertingSpec`](crate::api::observability::AlertingSpec) (in `api::observability`) plus a small [`ClusterContext`] (name, namespace, owner reference) and
//! returns the Kubernetes objects to apply. Nothing here talks to the API server, so every
//! object can be unit-tested and checked by the real consumer (promtool, amtool, the
//! OpenTelemetry Collector, Prometheus, Alertmanager) without a cluster.
//!
//! The builders depend on the context rather than on the `ChatCluster` type so that this
//! module is the single owner of what the monitoring stack looks like, while the reconciler
//! (`reconcile::observability`, the plan) owns when it is applied.

pub mod alertmanager;
pub mod collector;
pub mod dashboard;
pub mod monitoring;
pub mod rules;
pub mod service_monitor;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// Port name and number of the chat-nodes' admin (metrics) port, fixed by INTERFACES.md.
pub const ADMIN_PORT_NAME: &str = "admin";
/// Path of the chat-node metrics.
pub const METRICS_PATH: &str = "/metrics";

/// Errors of the observability builders: bad user input, said plainly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A duration that Prometheus / Alertmanager would refuse.
    #[error("invalid duration {value:?} in {field}: expected e.g. 30s, 5m, 1h30m")]
    InvalidDuration { field: &'static str, value: String },
    /// A threshold that makes no sense (negative, NaN).
    #[error("invalid threshold {value} in {field}: expected a finite number >= 0")]
    InvalidThreshold { field: String, value: f64 },
    /// An endpoint that is empty.
    #[error("empty endpoint in {field}")]
    EmptyEndpoint { field: &'static str },
    /// YAML/JSON rendering failed (a bug, not user input).
    #[error("failed to render {what}: {message}")]
    Render { what: &'static str, message: String },
}

/// Operator-wide settings of the monitoring objects (from the command line, the same for every
/// ChatCluster), so a platform team configures its monitoring stack once instead of in every
/// ChatCluster.
#[derive(Clone, Debug, PartialEq)]
pub struct MonitoringDefaults {
    /// Labels on every ServiceMonitor, PrometheusRule and AlertmanagerConfig, under the
    /// ChatCluster's own `labels` of each section (which win on a shared key). This is how
    /// kube-prometheus-stack's Prometheus and Alertmanager select them: by default they only take
    /// objects labelled `release: <its Helm release>`.
    pub labels: BTreeMap<String, String>,
    /// Base URL of the runbooks; each alert links `<base>/<Alert>.md`. A ChatCluster's
    /// `prometheusRule.runbookBaseUrl` wins.
    pub runbook_base_url: String,
}

impl Default for MonitoringDefaults {
    fn default() -> Self {
        MonitoringDefaults {
            labels: BTreeMap::new(),
            runbook_base_url: rules::default_runbook_base_url(),
        }
    }
}

/// What the builders need to know about the ChatCluster they build for.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterContext {
    /// The ChatCluster's name.
    pub name: String,
    /// The ChatCluster's namespace (every child lives there).
    pub namespace: String,
    /// Owner reference to the ChatCluster (controller), put on every child.
    pub owner: Option<OwnerReference>,
    /// The operator-wide monitoring settings.
    pub monitoring: MonitoringDefaults,
    /// Image of a managed Collector without `collector.image` (`--default-collector-image`).
    pub default_collector_image: String,
}

impl ClusterContext {
    /// A context without owner reference (tests, `chat-operator` previews).
    pub fn new(name: &str, namespace: &str) -> Self {
        ClusterContext {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            owner: None,
            monitoring: MonitoringDefaults::default(),
            default_collector_image: crate::api::observability::DEFAULT_COLLECTOR_IMAGE.to_owned(),
        }
    }

    /// The labels of a monitoring.coreos.com object (ServiceMonitor, PrometheusRule,
    /// AlertmanagerConfig) besides the standard ones: the operator-wide
    /// [`MonitoringDefaults::labels`], overridden key by key by the section's own `labels`.
    pub fn monitoring_labels(
        &self,
        section_labels: Option<&BTreeMap<String, String>>,
    ) -> BTreeMap<String, String> {
        let mut labels = self.monitoring.labels.clone();
        labels.extend(section_labels.cloned().unwrap_or_default());
        labels
    }

    /// The standard `app.kubernetes.io/*` labels of a child.
    pub fn labels(&self, app: &str, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), app.to_owned()),
            ("app.kubernetes.io/instance".to_owned(), self.name.clone()),
            (
                "app.kubernetes.io/component".to_owned(),
                component.to_owned(),
            ),
            (
                "app.kubernetes.io/part-of".to_owned(),
                "chatcluster".to_owned(),
            ),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "chat-operator".to_owned(),
            ),
        ])
    }

    /// Labels that select the chat-node Services and pods of this cluster.
    pub fn chat_node_selector(&self) -> BTreeMap<String, String> {
        crate::labels::selector(crate::labels::APP_CHAT_NODE, &self.name)
    }

    /// Metadata of a child: name, namespace, standard labels plus `extra`, owner reference.
    pub fn metadata(
        &self,
        name: String,
        app: &str,
        component: &str,
        extra_labels: Option<&BTreeMap<String, String>>,
    ) -> ObjectMeta {
        // The standard labels win over user-given ones: the orphan sweep and the selectors
        // rely on them.
        let mut labels = extra_labels.cloned().unwrap_or_default();
        labels.extend(self.labels(app, component));
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: self.owner.clone().map(|o| vec![o]),
            ..ObjectMeta::default()
        }
    }

    /// Name of the headless admin Service of the chat-nodes (`<name>-admin`); Prometheus'
    /// `job` label of chat-node series when scraped through the ServiceMonitor.
    pub fn admin_service_name(&self) -> String {
        format!("{}-admin", self.name)
    }

    /// Name of the collector's Deployment, ConfigMap and Service.
    pub fn collector_name(&self) -> String {
        format!("{}-otel-collector", self.name)
    }

    /// PromQL label matchers that select this cluster's chat-node series
    /// (`namespace="ns",job="<name>-admin"`).
    pub fn series_selector(&self) -> String {
        format!(
            "namespace=\"{}\",job=\"{}\"",
            self.namespace,
            self.admin_service_name()
        )
    }
}

/// Checks a Prometheus/Alertmanager duration (`30s`, `5m`, `1h30m`, `500ms`).
pub(crate) fn check_duration(field: &'static str, value: &str) -> Result<String, Error> {
    let bad = || Error::InvalidDuration {
        field,
        value: value.to_owned(),
    };
    if value.is_empty() {
        return Err(bad());
    }
    let mut rest = value;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(bad());
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u))
            .ok_or_else(bad)?;
        rest = &rest[unit.len()..];
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_checked() {
        for good in ["30s", "5m", "1h30m", "500ms", "2d"] {
            assert_eq!(check_duration("x", good).unwrap(), good);
        }
        for bad in ["", "5", "m", "5 m", "-5m", "5min", "1.5h"] {
            assert!(check_duration("x", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn metadata_has_standard_labels_and_extras() {
        let ctx = ClusterContext::new("demo", "chat");
        let extra = BTreeMap::from([
            ("release".to_owned(), "kps".to_owned()),
            ("app.kubernetes.io/instance".to_owned(), "hijack".to_owned()),
        ]);
        let meta = ctx.metadata("demo".into(), "chat-node", "alerts", Some(&extra));
        let labels = meta.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/instance"], "demo");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "chat-operator");
        assert_eq!(labels["release"], "kps");
        assert_eq!(meta.namespace.as_deref(), Some("chat"));
    }

    #[test]
    fn monitoring_labels_merge_operator_defaults_under_the_sections_own() {
        let mut ctx = ClusterContext::new("demo", "chat");
        assert!(ctx.monitoring_labels(None).is_empty());
        ctx.monitoring.labels = BTreeMap::from([
            ("release".to_owned(), "kube-prometheus-stack".to_owned()),
            ("team".to_owned(), "platform".to_owned()),
        ]);
        let own = BTreeMap::from([
            ("team".to_owned(), "chat".to_owned()),
            ("tier".to_owned(), "gold".to_owned()),
        ]);
        let labels = ctx.monitoring_labels(Some(&own));
        assert_eq!(labels["release"], "kube-prometheus-stack");
        assert_eq!(labels["team"], "chat", "the ChatCluster's own label wins");
        assert_eq!(labels["tier"], "gold");
        assert_eq!(labels.len(), 3);
    }
}
