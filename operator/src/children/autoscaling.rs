//! The HorizontalPodAutoscaler of `spec.autoscaling`: it scales the ChatCluster itself through
//! its scale subresource (so `spec.replicas` stays the one number the operator reconciles), on
//! the average of chat-node's `websocket_active_connections` over the pods.
//!
//! Scaling up is the autoscaler's default (fast); scaling down waits for the stabilization
//! window and removes one pod per minute at most: each removed pod drains its clients with
//! 1001, and they reconnect to the others.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{Resource, ResourceExt};

use super::{COMPONENT_SERVER, child_meta, names};
use crate::api::{CONNECTIONS_METRIC, ChatCluster};
use crate::labels;

/// Most pods removed per minute when scaling down.
pub const SCALE_DOWN_PODS_PER_MINUTE: i32 = 1;

/// The autoscaler, when `spec.autoscaling` is set.
pub fn build(cluster: &ChatCluster) -> Option<HorizontalPodAutoscaler> {
    let autoscaling = cluster.spec.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: child_meta(
            cluster,
            names::main(&cluster.name_any()),
            labels::APP_CHAT_NODE,
            COMPONENT_SERVER,
        ),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(ChatCluster::api_version(&()).into_owned()),
                kind: ChatCluster::kind(&()).into_owned(),
                name: cluster.name_any(),
            },
            min_replicas: Some(autoscaling.min_replicas()),
            max_replicas: autoscaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Pods".into(),
                pods: Some(PodsMetricSource {
                    metric: MetricIdentifier {
                        name: CONNECTIONS_METRIC.into(),
                        selector: None,
                    },
                    target: MetricTarget {
                        type_: "AverageValue".into(),
                        average_value: Some(Quantity(
                            autoscaling.target_connections_per_pod().to_string(),
                        )),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(
                        autoscaling.scale_down_stabilization_seconds(),
                    ),
                    select_policy: Some("Min".into()),
                    policies: Some(vec![HPAScalingPolicy {
                        type_: "Pods".into(),
                        value: SCALE_DOWN_PODS_PER_MINUTE,
                        period_seconds: 60,
                    }]),
                    ..HPAScalingRules::default()
                }),
                scale_up: None,
            }),
        },
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AutoscalingSpec;
    use crate::children::fixtures::cluster;

    #[test]
    fn only_with_spec_autoscaling() {
        assert!(build(&cluster("demo")).is_none());
    }

    #[test]
    fn scales_the_chatcluster_on_connections_per_pod_and_down_slowly() {
        let mut c = cluster("demo");
        c.spec.autoscaling = Some(AutoscalingSpec {
            max_replicas: 8,
            target_connections_per_pod: Some(2000),
            ..AutoscalingSpec::default()
        });
        let hpa = build(&c).unwrap();
        assert_eq!(hpa.metadata.name.as_deref(), Some("demo"));
        let spec = hpa.spec;
        let target = &spec.scale_target_ref;
        assert_eq!(
            (
                target.api_version.as_deref(),
                target.kind.as_str(),
                target.name.as_str()
            ),
            (Some("realtime.dev/v1alpha1"), "ChatCluster", "demo")
        );
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 8));
        let pods = spec.metrics.unwrap()[0].pods.clone().unwrap();
        assert_eq!(pods.metric.name, "websocket_active_connections");
        assert_eq!(pods.target.type_, "AverageValue");
        assert_eq!(pods.target.average_value, Some(Quantity("2000".into())));
        let down = spec.behavior.unwrap().scale_down.unwrap();
        assert_eq!(down.stabilization_window_seconds, Some(600));
        let policy = &down.policies.unwrap()[0];
        assert_eq!(
            (policy.type_.as_str(), policy.value, policy.period_seconds),
            ("Pods", 1, 60)
        );
    }
}
