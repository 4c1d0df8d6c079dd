//! `spec.autoscaling`: a HorizontalPodAutoscaler on active WebSocket connections per pod.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Fewest chat-node pods an autoscaled cluster keeps when `minReplicas` is unset.
pub const DEFAULT_MIN_REPLICAS: i32 = 2;
/// Connections per pod the autoscaler aims at when `targetConnectionsPerPod` is unset.
pub const DEFAULT_TARGET_CONNECTIONS_PER_POD: i64 = 5000;
/// How long the autoscaler waits before removing pods when `scaleDownStabilizationSeconds` is
/// unset: every pod removed closes its connections (1001) and its clients reconnect elsewhere,
/// so scaling down follows a lasting drop, not a dip.
pub const DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS: i32 = 600;
/// The per-pod metric the autoscaler reads through the custom metrics API
/// (`custom.metrics.k8s.io`): chat-node's gauge of open WebSocket connections.
pub const CONNECTIONS_METRIC: &str = "websocket_active_connections";

/// Autoscaling of the chat-node pods on connections (docs/autoscaling.md). The operator creates
/// a HorizontalPodAutoscaler `<name>` that scales this ChatCluster through its scale
/// subresource; a custom metrics adapter (e.g. prometheus-adapter) must serve
/// `websocket_active_connections` for pods. Leave `spec.replicas` out of what you apply (the
/// autoscaler owns it) so a GitOps tool does not fight it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.minReplicas) ? self.minReplicas : 2) <= self.maxReplicas")
    .message("spec.autoscaling.minReplicas (default 2) must not exceed maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Fewest pods (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: Option<i32>,

    /// Most pods.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,

    /// Open WebSocket connections per pod the autoscaler aims at (default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub target_connections_per_pod: Option<i64>,

    /// Seconds connections must stay low before pods are removed (default 600). Pods are
    /// removed one per minute at most, so their clients' reconnects are spread out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: Option<i32>,
}

impl AutoscalingSpec {
    /// `minReplicas`, defaulted.
    pub fn min_replicas(&self) -> i32 {
        self.min_replicas.unwrap_or(DEFAULT_MIN_REPLICAS)
    }

    /// `targetConnectionsPerPod`, defaulted.
    pub fn target_connections_per_pod(&self) -> i64 {
        self.target_connections_per_pod
            .unwrap_or(DEFAULT_TARGET_CONNECTIONS_PER_POD)
    }

    /// `scaleDownStabilizationSeconds`, defaulted.
    pub fn scale_down_stabilization_seconds(&self) -> i32 {
        self.scale_down_stabilization_seconds
            .unwrap_or(DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS)
    }
}
