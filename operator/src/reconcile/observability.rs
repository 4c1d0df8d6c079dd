//! What the observability stack adds to a ChatCluster's reconcile plan: its children (as
//! type-erased [`Child`]ren, in apply order), the `OTEL_*` variables of the chat-node
//! container and the `MonitoringReady` condition (its kinds are in `children::kinds`).
//!
//! The monitoring.coreos.com kinds are *optional*: when prometheus-operator is not installed
//! the reconciler skips them, and [`monitoring_ready`] turns that into
//! `MonitoringReady=False` / `CRDNotInstalled` instead of an error (no crash, no hot loop: the
//! periodic resync creates them once the CRDs appear).

use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{Resource, ResourceExt};

use std::collections::BTreeMap;

use crate::api::ChatCluster;
use crate::children::observability::monitoring::PrometheusRule;
use crate::children::observability::{
    ClusterContext, Error, MonitoringDefaults, alertmanager, collector, dashboard, rules,
    service_monitor,
};
use crate::children::operands::OperandDefaults;
use crate::children::{Child, owner_reference};

/// Condition type: are the monitoring objects (PrometheusRule, ServiceMonitors,
/// AlertmanagerConfig) in place?
pub const MONITORING_READY: &str = "MonitoringReady";

/// Reasons of the `MonitoringReady` condition.
pub mod reasons {
    /// Every monitoring object the spec asks for is applied.
    pub const APPLIED: &str = "Applied";
    /// prometheus-operator's CRDs (monitoring.coreos.com) are not installed.
    pub const CRD_NOT_INSTALLED: &str = "CRDNotInstalled";
    /// The spec turns every monitoring object off.
    pub const DISABLED: &str = "Disabled";
}

/// The observability part of a plan.
#[derive(Clone, Debug, Default)]
pub struct ObservabilityPlan {
    /// Children in apply order (collector first, so chat-nodes find it).
    pub children: Vec<Child>,
    /// `OTEL_*` variables for the chat-node container.
    pub node_env: Vec<EnvVar>,
}

/// The builders' context for `cluster`, under the operator-wide `monitoring` settings and
/// `operands` defaults.
pub fn context(
    cluster: &ChatCluster,
    monitoring: &MonitoringDefaults,
    operands: &OperandDefaults,
) -> ClusterContext {
    ClusterContext {
        name: cluster.name_any(),
        namespace: cluster.namespace().unwrap_or_default(),
        owner: Some(owner_reference(cluster)),
        monitoring: monitoring.clone(),
        default_collector_image: operands.collector_image.clone(),
    }
}

/// Everything `spec.observability` and `spec.alerting` ask for, under the operator-wide
/// `monitoring` settings and `operands` defaults. An error is bad user input (a duration
/// Prometheus would refuse, an empty endpoint), said plainly.
pub fn plan(
    cluster: &ChatCluster,
    monitoring: &MonitoringDefaults,
    operands: &OperandDefaults,
) -> Result<ObservabilityPlan, Error> {
    let ctx = context(cluster, monitoring, operands);
    let spec = cluster.spec.observability.clone().unwrap_or_default();
    let mut children = Vec::new();
    if let Some(config_map) = collector::build_collector_config_map(&spec, &ctx)? {
        children.push(Child::new(&config_map));
    }
    if let Some(service) = collector::build_collector_service(&spec, &ctx) {
        children.push(Child::new(&service));
    }
    if let Some(deployment) = collector::build_collector_deployment(&spec, &ctx)? {
        children.push(Child::new(&deployment));
    }
    if let Some(dashboard) = dashboard::build_dashboard_config_map(&spec, &ctx)? {
        children.push(Child::new(&dashboard));
    }
    if let Some(rule) = rules::build_prometheus_rule(&spec, &ctx)? {
        children.push(Child::new(&rule));
    }
    if let Some(monitor) = service_monitor::build_chat_node_monitor(&spec, &ctx)? {
        children.push(Child::new(&monitor));
    }
    if let Some(monitor) = service_monitor::build_collector_monitor(&spec, &ctx)? {
        children.push(Child::new(&monitor));
    }
    if let Some(alerting) = &cluster.spec.alerting {
        children.push(Child::new(&alertmanager::build_alertmanager_config(
            alerting, &ctx,
        )?));
    }
    Ok(ObservabilityPlan {
        children,
        node_env: collector::chat_node_env(&spec, &ctx),
    })
}

/// True for an API of prometheus-operator (`monitoring.coreos.com/...`).
pub fn is_monitoring_api(api_version_and_kind: &str) -> bool {
    api_version_and_kind.starts_with(&format!("{}/", PrometheusRule::group(&())))
}

/// The `MonitoringReady` condition. `missing_apis` are the optional APIs the reconciler had
/// to skip (`"<apiVersion> <Kind>"`); `wanted` says whether the spec asks for any monitoring
/// object at all; `applied` are the children applied this round (the monitoring ones among
/// them are named in the message with their selection labels).
pub fn monitoring_ready(
    cluster: &ChatCluster,
    wanted: bool,
    applied: &[Child],
    missing_apis: &[String],
    now: &Time,
) -> Condition {
    let missing: Vec<&String> = missing_apis
        .iter()
        .filter(|api| is_monitoring_api(api))
        .collect();
    let (status, reason, message) = if !wanted {
        (
            "True",
            reasons::DISABLED,
            "no monitoring objects are asked for".to_owned(),
        )
    } else if missing.is_empty() {
        ("True", reasons::APPLIED, applied_message(applied))
    } else {
        (
            "False",
            reasons::CRD_NOT_INSTALLED,
            format!(
                "prometheus-operator CRDs not installed ({}); the monitoring objects are created once they are",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    };
    Condition {
        type_: MONITORING_READY.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: cluster.metadata.generation,
        last_transition_time: now.clone(),
    }
}

/// The labels of a monitoring object that a Prometheus or Alertmanager may select it by: all
/// but the standard `app.kubernetes.io/*` ones.
fn selection_labels(child: &Child) -> BTreeMap<String, String> {
    child
        .object
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(key, _)| !key.starts_with("app.kubernetes.io/"))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// "applied <objects> with labels k=v, ..." for each set of selection labels, and a warning
/// for the objects that carry none: kube-prometheus-stack's Prometheus and Alertmanager select
/// only objects labelled `release: <its release>` unless configured otherwise, so unlabelled
/// objects are silently ignored there.
fn applied_message(applied: &[Child]) -> String {
    let mut groups: BTreeMap<BTreeMap<String, String>, Vec<String>> = BTreeMap::new();
    for child in applied
        .iter()
        .filter(|c| c.resource.group == PrometheusRule::group(&()))
    {
        groups
            .entry(selection_labels(child))
            .or_default()
            .push(child.describe());
    }
    let mut parts = Vec::new();
    for (labels, objects) in &mut groups {
        objects.sort();
        let objects = objects.join(", ");
        if labels.is_empty() {
            parts.push(format!(
                "applied {objects} without selection labels: a Prometheus or Alertmanager that \
                 selects by label (kube-prometheus-stack's default: release=<its release>) \
                 ignores them; set the operator's monitoring labels (--monitoring-labels, chart \
                 value monitoring.labels) or the section's labels"
            ));
        } else {
            let labels = labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ");
            parts.push(format!("applied {objects} with labels {labels}"));
        }
    }
    parts.join("; ")
}

/// Whether the plan contains any monitoring.coreos.com object.
pub fn wants_monitoring(plan: &ObservabilityPlan) -> bool {
    plan.children
        .iter()
        .any(|c| c.resource.group == PrometheusRule::group(&()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::observability::ObservabilitySpec;
    use crate::api::observability::ServiceMonitorSpec;
    use crate::children::fixtures::cluster;

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
    }

    fn monitoring_children(plan: &ObservabilityPlan) -> Vec<Child> {
        plan.children
            .iter()
            .filter(|c| c.resource.group == PrometheusRule::group(&()))
            .cloned()
            .collect()
    }

    #[test]
    fn operator_wide_labels_reach_every_monitoring_object_and_the_condition() {
        let mut demo = cluster("demo");
        demo.spec.observability = Some(ObservabilitySpec {
            service_monitor: Some(ServiceMonitorSpec {
                labels: Some(BTreeMap::from([("team".into(), "chat".into())])),
                ..ServiceMonitorSpec::default()
            }),
            ..ObservabilitySpec::default()
        });
        let defaults = MonitoringDefaults {
            labels: BTreeMap::from([("release".into(), "kube-prometheus-stack".into())]),
            ..MonitoringDefaults::default()
        };
        let plan = plan(&demo, &defaults, &OperandDefaults::default()).unwrap();
        let monitoring = monitoring_children(&plan);
        assert_eq!(monitoring.len(), 2, "PrometheusRule and ServiceMonitor");
        for child in &monitoring {
            assert_eq!(
                selection_labels(child).get("release").map(String::as_str),
                Some("kube-prometheus-stack"),
                "{}",
                child.describe()
            );
        }
        let condition = monitoring_ready(&demo, true, &plan.children, &[], &now());
        assert_eq!(condition.status, "True");
        assert_eq!(condition.reason, reasons::APPLIED);
        assert_eq!(
            condition.message,
            "applied PrometheusRule/demo with labels release=kube-prometheus-stack; \
             applied ServiceMonitor/demo with labels release=kube-prometheus-stack, team=chat"
        );
    }

    #[test]
    fn the_condition_warns_about_objects_without_selection_labels() {
        let mut demo = cluster("demo");
        demo.spec.observability = Some(ObservabilitySpec::default());
        let plan = plan(
            &demo,
            &MonitoringDefaults::default(),
            &OperandDefaults::default(),
        )
        .unwrap();
        let condition = monitoring_ready(&demo, true, &plan.children, &[], &now());
        assert_eq!(condition.status, "True");
        assert!(
            condition.message.starts_with(
                "applied PrometheusRule/demo, ServiceMonitor/demo without selection labels"
            ),
            "{}",
            condition.message
        );
        assert!(condition.message.contains("--monitoring-labels"));
    }
}
