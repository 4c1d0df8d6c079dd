//! The operator's exact least-privilege ClusterRole, as data.
//!
//! This is the one place the operator's permissions are written down: `chat-operator rbac`
//! prints it, `config/rbac/clusterrole.yaml` is generated from it, the Helm chart templates that
//! file, and the integration tests run the operator under it. Add a rule here when a new child
//! kind is reconciled, with the verbs the reconciler actually uses and no more.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::ObjectMeta;

use crate::labels;

/// Name of the ClusterRole.
pub const CLUSTER_ROLE_NAME: &str = "chat-operator";
/// File name of the generated ClusterRole under `config/rbac/`.
pub const CLUSTER_ROLE_FILE: &str = "clusterrole.yaml";

/// One rule: API groups × resources × verbs.
#[derive(Clone, Copy, Debug)]
pub struct Permission {
    /// API groups (`""` is the core group).
    pub api_groups: &'static [&'static str],
    /// Resources, with `/subresource` where that is what is touched.
    pub resources: &'static [&'static str],
    /// Verbs.
    pub verbs: &'static [&'static str],
    /// Why the operator needs it (printed as a comment in the YAML).
    pub why: &'static str,
}

/// Verbs for a child kind that the reconciler applies, watches (`.owns()`) and sweeps.
const OWNED_CHILD: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];

/// Every permission of the operator.
pub const PERMISSIONS: &[Permission] = &[
    Permission {
        api_groups: &["realtime.dev"],
        resources: &["chatclusters"],
        verbs: &["list", "watch"],
        why: "watch ChatClusters (the controller's cache; no single get is ever made)",
    },
    Permission {
        api_groups: &["realtime.dev"],
        resources: &["chatclusters/status"],
        verbs: &["patch"],
        why: "write ChatCluster status (server-side apply; never read back through the subresource)",
    },
    Permission {
        api_groups: &["apps"],
        resources: &["deployments", "statefulsets"],
        verbs: OWNED_CHILD,
        why: "chat-node Deployment, managed Redis StatefulSet",
    },
    Permission {
        api_groups: &[""],
        resources: &["services"],
        verbs: OWNED_CHILD,
        why: "client, admin and Redis Services",
    },
    Permission {
        api_groups: &[""],
        resources: &["secrets"],
        verbs: &["get", "create"],
        why: "the managed Redis password: created once, read back, never listed or changed",
    },
    Permission {
        api_groups: &["networking.k8s.io"],
        resources: &["ingresses", "networkpolicies"],
        verbs: OWNED_CHILD,
        why: "sticky-session Ingress, NetworkPolicy in front of Redis",
    },
    Permission {
        api_groups: &["policy"],
        resources: &["poddisruptionbudgets"],
        verbs: OWNED_CHILD,
        why: "chat-node PodDisruptionBudget",
    },
    Permission {
        api_groups: &["autoscaling"],
        resources: &["horizontalpodautoscalers"],
        verbs: OWNED_CHILD,
        why: "HorizontalPodAutoscaler of spec.autoscaling",
    },
    Permission {
        api_groups: &[""],
        resources: &["configmaps"],
        verbs: OWNED_CHILD,
        why: "OpenTelemetry Collector configuration, Grafana dashboard",
    },
    Permission {
        api_groups: &["monitoring.coreos.com"],
        resources: &["prometheusrules", "servicemonitors", "alertmanagerconfigs"],
        verbs: OWNED_CHILD,
        why: "alert rules, scrape configuration and on-call routes (prometheus-operator)",
    },
    Permission {
        api_groups: &["gateway.networking.k8s.io"],
        resources: &["httproutes"],
        verbs: OWNED_CHILD,
        why: "HTTPRoute of spec.ingress.provider gateway (Gateway API); watched for its acceptance",
    },
    Permission {
        api_groups: &["gateway.networking.k8s.io"],
        resources: &["gateways"],
        verbs: &["get", "list", "watch"],
        why: "the Gateway an HTTPRoute attaches to: read for its listener and published address, never changed",
    },
    Permission {
        api_groups: &["storage.k8s.io"],
        resources: &["storageclasses"],
        verbs: &["list"],
        why: "the default StorageClass, looked up when a managed Redis without spec.redis.storage is created",
    },
    Permission {
        api_groups: &["events.k8s.io"],
        resources: &["events"],
        verbs: &["create", "patch"],
        why: "Events on ChatClusters",
    },
    Permission {
        api_groups: &["coordination.k8s.io"],
        resources: &["leases"],
        verbs: &["get", "create", "patch"],
        why: "leader election",
    },
];

/// The ClusterRole object.
pub fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(CLUSTER_ROLE_NAME.into()),
            labels: Some(
                [
                    (labels::NAME.to_string(), labels::MANAGER.to_string()),
                    (
                        labels::PART_OF.to_string(),
                        labels::PART_OF_VALUE.to_string(),
                    ),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        rules: Some(PERMISSIONS.iter().map(to_rule).collect()),
        aggregation_rule: None,
    }
}

fn to_rule(p: &Permission) -> PolicyRule {
    let strings = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(p.api_groups)),
        resources: Some(strings(p.resources)),
        verbs: strings(p.verbs),
        ..PolicyRule::default()
    }
}

/// The ClusterRole as YAML, each rule preceded by a comment saying why it is there.
pub fn cluster_role_yaml() -> Result<String, serde_yaml_ng::Error> {
    let mut role = cluster_role();
    role.rules = None;
    let mut out = String::from(
        "# Generated by `chat-operator rbac` (make generate). Do not edit: change operator/src/rbac.rs.\n---\n",
    );
    out.push_str(&serde_yaml_ng::to_string(&role)?);
    out.push_str("rules:\n");
    for permission in PERMISSIONS {
        out.push_str(&format!("# {}\n", permission.why));
        let rule = serde_yaml_ng::to_string(&vec![to_rule(permission)])?;
        out.push_str(&rule);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_round_trips_to_the_same_role() {
        let yaml = cluster_role_yaml().unwrap();
        let parsed: ClusterRole = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(parsed, cluster_role());
    }

    #[test]
    fn secrets_are_never_listed_watched_or_changed() {
        let secrets = PERMISSIONS
            .iter()
            .find(|p| p.resources.contains(&"secrets"))
            .unwrap();
        assert_eq!(secrets.verbs, &["get", "create"]);
    }

    #[test]
    fn gateways_are_only_read() {
        let gateways = PERMISSIONS
            .iter()
            .find(|p| p.resources.contains(&"gateways"))
            .unwrap();
        assert_eq!(gateways.api_groups, &["gateway.networking.k8s.io"]);
        assert_eq!(gateways.verbs, &["get", "list", "watch"]);
    }

    #[test]
    fn no_wildcards() {
        for p in PERMISSIONS {
            for s in p.api_groups.iter().chain(p.resources).chain(p.verbs) {
                assert!(!s.contains('*'), "wildcard in {p:?}");
            }
        }
    }
}
