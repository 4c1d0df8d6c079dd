//! The one table of the kinds of children the operator makes.
//!
//! Three things must agree on it, and all three read it: the controller's watches (a change to
//! any child wakes its ChatCluster, `controller.rs`), the orphan sweep (children no longer
//! desired are deleted, `reconcile::apply::sweep_orphans`) and the API checks (a child of an
//! optional API that is not installed is skipped and reported, `reconcile`). The operator's
//! ClusterRole (`rbac.rs`) is checked against it by a test, and so is every child the builders
//! produce. Add a kind here, and only here, when a builder makes a new one.
//!
//! Not in it: the Secrets (the Redis password, the server API key), which are created once and
//! never changed or swept; garbage collection removes them with their ChatCluster.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Resource;
use kube::api::ApiResource;

use super::gateway_api::HTTPRoute;
use crate::children::observability::monitoring::{
    AlertmanagerConfig, PrometheusRule, ServiceMonitor,
};

/// A kind of child: whatever of this kind carries a cluster's `instance` + `managed-by` labels
/// is watched, and is deleted when no longer desired.
#[derive(Clone, Debug)]
pub struct ChildKind {
    /// The API.
    pub resource: ApiResource,
    /// True when the API may be absent from a cluster (a third-party CRD such as
    /// prometheus-operator's or the Gateway API's): it is watched only when installed, and the
    /// reconciler checks discovery before applying or sweeping it and reports it missing.
    pub optional: bool,
}

impl ChildKind {
    /// A kind of the core Kubernetes APIs, always installed.
    pub fn builtin<K: Resource<DynamicType = ()>>() -> Self {
        Self {
            resource: ApiResource::erase::<K>(&()),
            optional: false,
        }
    }

    /// A kind of a third-party API that may be missing.
    pub fn optional<K: Resource<DynamicType = ()>>() -> Self {
        Self {
            resource: ApiResource::erase::<K>(&()),
            optional: true,
        }
    }
}

/// Every kind of child, builtin ones first.
pub fn child_kinds() -> Vec<ChildKind> {
    vec![
        // The chat cluster: chat-node Deployment, managed Redis StatefulSet, their Services,
        // Ingress, Redis NetworkPolicy, chat-node PodDisruptionBudget, autoscaler.
        ChildKind::builtin::<Deployment>(),
        ChildKind::builtin::<StatefulSet>(),
        ChildKind::builtin::<Service>(),
        ChildKind::builtin::<Ingress>(),
        ChildKind::builtin::<NetworkPolicy>(),
        ChildKind::builtin::<PodDisruptionBudget>(),
        ChildKind::builtin::<HorizontalPodAutoscaler>(),
        // The observability stack: the Collector's configuration and the dashboard.
        ChildKind::builtin::<ConfigMap>(),
        // spec.ingress.provider gateway.
        ChildKind::optional::<HTTPRoute>(),
        // prometheus-operator.
        ChildKind::optional::<PrometheusRule>(),
        ChildKind::optional::<ServiceMonitor>(),
        ChildKind::optional::<AlertmanagerConfig>(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rbac::PERMISSIONS;

    /// The ClusterRole lets the operator do to every child kind what the reconciler does: get
    /// (the create-or-take-over check), list + watch (the watches), create + patch (apply),
    /// delete (the sweep).
    #[test]
    fn the_cluster_role_covers_every_child_kind() {
        for kind in child_kinds() {
            let r = &kind.resource;
            for verb in ["get", "list", "watch", "create", "patch", "delete"] {
                assert!(
                    PERMISSIONS
                        .iter()
                        .any(|p| p.api_groups.contains(&r.group.as_str())
                            && p.resources.contains(&r.plural.as_str())
                            && p.verbs.contains(&verb)),
                    "no `{verb}` on {}.{} in rbac::PERMISSIONS",
                    r.plural,
                    r.group
                );
            }
        }
    }

    #[test]
    fn every_kind_is_listed_once_and_third_party_apis_are_optional() {
        let kinds = child_kinds();
        let mut names: Vec<String> = kinds
            .iter()
            .map(|k| format!("{}/{}", k.resource.api_version, k.resource.kind))
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), kinds.len(), "a kind is listed twice");
        for kind in &kinds {
            let third_party = kind.resource.group.ends_with("coreos.com")
                || kind.resource.group == "gateway.networking.k8s.io";
            assert_eq!(kind.optional, third_party, "{}", kind.resource.kind);
        }
    }
}
