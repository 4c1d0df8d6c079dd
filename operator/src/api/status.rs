//! `status`: what the operator observed, in the shapes `kubectl` and HPAs expect.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::{Deserialize, Serialize};

/// Condition types (`status.conditions[].type`).
pub mod condition_types {
    /// Every chat-node pod wanted is ready and up to date, and Redis is ready.
    pub const READY: &str = "Ready";
    /// A rollout or scale is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Something is wrong: a child could not be applied, or the rollout is stuck.
    pub const DEGRADED: &str = "Degraded";
    /// The managed Redis is ready (always true for an external Redis, which is not probed).
    pub const REDIS_READY: &str = "RedisReady";
    /// `spec.paused` is true: the operator writes nothing else.
    pub const PAUSED: &str = "Paused";
    /// kstatus (Flux, Helm 4 `--wait`, `kubectl wait`): work toward the spec is under way (a
    /// rollout, pods or the managed Redis not ready yet). "Abnormal-true": False when done.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: the operator cannot reach the spec without a change (a reconcile error, a
    /// rollout past its progress deadline); the same cause as `Degraded`. False otherwise.
    pub const STALLED: &str = "Stalled";
}

/// Condition reasons (`status.conditions[].reason`), CamelCase as the API conventions ask.
pub mod reasons {
    pub const ALL_REPLICAS_READY: &str = "AllReplicasReady";
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
    pub const ROLLOUT_IN_PROGRESS: &str = "RolloutInProgress";
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    pub const RECONCILE_FAILED: &str = "ReconcileFailed";
    /// The spec names an image outside the operator's allow-list.
    pub const IMAGE_NOT_ALLOWED: &str = "ImageNotAllowed";
    /// An object with a child's name exists and this ChatCluster does not control it.
    pub const CONFLICT: &str = "Conflict";
    /// The spec asks what the operator's tenant policy refuses (a snippet annotation, ...).
    pub const POLICY_VIOLATION: &str = "PolicyViolation";
    pub const RECONCILED: &str = "Reconciled";
    pub const ROLLOUT_STUCK: &str = "RolloutStuck";
    pub const REDIS_READY: &str = "RedisReady";
    pub const REDIS_NOT_READY: &str = "RedisNotReady";
    pub const REDIS_EXTERNAL: &str = "ExternalRedis";
    pub const PAUSED: &str = "SpecPaused";
    /// `Stalled=False`: nothing stops the operator from reaching the spec.
    pub const NOT_STALLED: &str = "NotStalled";
    pub const NOT_PAUSED: &str = "NotPaused";
}

/// The coarse state shown in `kubectl get chat`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Phase {
    /// Children applied, no pod ready yet.
    Pending,
    /// Rolling out or scaling.
    Progressing,
    /// Every wanted pod ready.
    Ready,
    /// A reconcile error or a stuck rollout.
    Degraded,
    /// `spec.paused`.
    Paused,
}

/// Observed state of a ChatCluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// chat-node pods that exist (scale subresource `statusReplicasPath`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// chat-node pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Label selector of the chat-node pods, for the scale subresource (HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Pending, Progressing, Ready, Degraded or Paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Where clients connect: the Ingress or HTTPRoute URL (the address its controller
    /// publishes when there is no host), else the in-cluster Service URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The chat-node image the Deployment is set to run: `spec.image`, else the default image
    /// the operator resolved for this cluster (kept across operator upgrades, see
    /// `spec.imagePolicy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_image: Option<String>,
    /// Ready, Progressing, Degraded, Reconciling, Stalled, RedisReady, Paused, MonitoringReady,
    /// and when they apply OptionalApisAvailable and RouteAccepted (metav1.Condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<Condition>>,
}

impl ChatClusterStatus {
    /// The condition of `type_`, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
    }
}
