//! The chat-node PodDisruptionBudget: at most one node drained by a voluntary disruption at a time.
//!
//! `unhealthyPodEvictionPolicy: AlwaysAllow`: a pod that is not ready (crash-looping, stuck
//! without Redis) serves no client, so evicting it costs nothing; with the default
//! (`IfHealthyBudget`) such pods would block every node drain while the budget is spent.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{COMPONENT_SERVER, child_meta, names, node_selector};
use crate::api::ChatCluster;
use crate::labels;

/// The `unhealthyPodEvictionPolicy` (GA in Kubernetes 1.31, on by default since 1.27).
pub const ALWAYS_ALLOW: &str = "AlwaysAllow";

/// The PDB, only when more than one replica is wanted (with one, a PDB would block node drains).
pub fn build(cluster: &ChatCluster) -> Option<PodDisruptionBudget> {
    if cluster.spec.replicas() <= 1 {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: child_meta(
            cluster,
            names::main(&cluster.name_any()),
            labels::APP_CHAT_NODE,
            COMPONENT_SERVER,
        ),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            unhealthy_pod_eviction_policy: Some(ALWAYS_ALLOW.into()),
            selector: Some(LabelSelector {
                match_labels: Some(node_selector(cluster)),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::fixtures::cluster;

    #[test]
    fn only_with_more_than_one_replica() {
        let mut c = cluster("demo");
        c.spec.replicas = Some(1);
        assert!(build(&c).is_none());
        c.spec.replicas = Some(3);
        let pdb = build(&c).unwrap();
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.unhealthy_pod_eviction_policy.as_deref(),
            Some(ALWAYS_ALLOW)
        );
        assert_eq!(
            spec.selector.unwrap().match_labels.unwrap()[labels::INSTANCE],
            "demo"
        );
    }
}
