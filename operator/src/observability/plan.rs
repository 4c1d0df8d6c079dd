//! What the observability stack adds to a ChatCluster's reconcile plan: its children (as
//! type-erased [`Child`]ren, in apply order), the `OTEL_*` variables of the chat-node
//! container, the kinds the orphan sweep must look at, and the `MonitoringReady` condition.
//!
//! The monitoring.coreos.com kinds are *optional*: when prometheus-operator is not installed
//! the reconciler skips them, and [`monitoring_ready`] turns that into
//! `MonitoringReady=False` / `CRDNotInstalled` instead of an error (no crash, no hot loop: the
//! periodic resync creates them once the CRDs appear).

use k8s_openapi::api::core::v1::{ConfigMap, EnvVar};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{Resource, ResourceExt};

use super::monitoring::{AlertmanagerConfig, PrometheusRule, ServiceMonitor};
use super::{ClusterContext, Error, alertmanager, collector, dashboard, rules, service_monitor};
use crate::api::ChatCluster;
use crate::children::{Child, SweptKind, owner_reference};

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

/// The builders' context for `cluster`.
pub fn context(cluster: &ChatCluster) -> ClusterContext {
    ClusterContext {
        name: cluster.name_any(),
        namespace: cluster.namespace().unwrap_or_default(),
        owner: Some(owner_reference(cluster)),
    }
}

/// Everything `spec.observability` and `spec.alerting` ask for. An error is bad user input
/// (a duration Prometheus would refuse, an empty endpoint), said plainly.
pub fn plan(cluster: &ChatCluster) -> Result<ObservabilityPlan, Error> {
    let ctx = context(cluster);
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

/// The kinds the observability stack creates, for the orphan sweep (Deployment and Service
/// are already swept for the chat-nodes).
pub fn swept_kinds() -> Vec<SweptKind> {
    vec![
        SweptKind::builtin::<ConfigMap>(),
        SweptKind::optional::<PrometheusRule>(),
        SweptKind::optional::<ServiceMonitor>(),
        SweptKind::optional::<AlertmanagerConfig>(),
    ]
}

/// True for an API of prometheus-operator (`monitoring.coreos.com/...`).
pub fn is_monitoring_api(api_version_and_kind: &str) -> bool {
    api_version_and_kind.starts_with(&format!("{}/", PrometheusRule::group(&())))
}

/// The `MonitoringReady` condition. `missing_apis` are the optional APIs the reconciler had
/// to skip (`"<apiVersion> <Kind>"`); `wanted` says whether the spec asks for any monitoring
/// object at all.
pub fn monitoring_ready(
    cluster: &ChatCluster,
    wanted: bool,
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
        (
            "True",
            reasons::APPLIED,
            "PrometheusRule, ServiceMonitor and AlertmanagerConfig are applied".to_owned(),
        )
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

/// Whether the plan contains any monitoring.coreos.com object.
pub fn wants_monitoring(plan: &ObservabilityPlan) -> bool {
    plan.children
        .iter()
        .any(|c| c.resource.group == PrometheusRule::group(&()))
}
