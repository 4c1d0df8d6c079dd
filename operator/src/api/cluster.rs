//! The `ChatCluster` resource and its top-level spec.

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{
    AuthSpec, ChannelsSpec, ChatClusterStatus, ImagePolicy, IngressSpec, NodeSpec,
    PodTemplateOverrides, RedisMode, RedisSpec,
};

/// Longest ChatCluster name: the managed Redis StatefulSet `<name>-redis` gets pods labelled
/// `controller-revision-hash: <name>-redis-<hash of up to 10 characters>`, a label value of at
/// most 63 characters; every other child name (`<name>-otel-collector`, a Service name of at
/// most 63) is shorter.
pub const MAX_NAME_LENGTH: usize = 46;

/// CEL on the whole object: the name must make every child name valid (Services need a
/// DNS-1035 label: lowercase letters, digits and `-`, starting with a letter).
const NAME_RULE: &str =
    "size(self.metadata.name) <= 46 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
const NAME_MESSAGE: &str = "metadata.name must be at most 46 characters of lowercase letters, digits and '-', starting with a letter and ending with a letter or digit (no dots): the operator derives Service, StatefulSet and label values from it, e.g. <name>-otel-collector and <name>-redis-<revision>";

/// Replicas when `spec.replicas` is not set: two, so one node can drain while the other serves.
pub const DEFAULT_REPLICAS: i32 = 2;

/// A realtime chat cluster: chat-node WebSocket servers that scale out through Redis,
/// with their Services, an optional sticky-session Ingress and an optional managed Redis.
// clippy reads the repeated `type_ = ...` of separate printcolumns as one duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "realtime.dev",
    version = "v1alpha1",
    kind = "ChatCluster",
    plural = "chatclusters",
    shortname = "chat",
    category = "chatcluster",
    namespaced,
    status = "ChatClusterStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A realtime chat cluster: chat-node WebSocket servers that scale out through Redis.",
    validation = Rule::new(NAME_RULE).message(NAME_MESSAGE),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "desired chat-node pods"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "chat-node pods ready"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "where clients connect"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".status.nodeImage",
        description = "the chat-node image the nodes run",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "!has(self.ingress) || has(self.auth) || (has(self.anonymous) && self.anonymous)"
).message("spec.ingress makes the cluster reachable from outside: configure spec.auth, or set spec.anonymous: true to allow anyone to connect without a token"))]
#[x_kube(validation = Rule::new(
    "!(has(self.anonymous) && self.anonymous && has(self.auth))"
).message("spec.anonymous: true and spec.auth contradict each other: remove one"))]
#[x_kube(validation = Rule::new(
    "(has(self.redis) ? self.redis.mode : 'managed') == (has(oldSelf.redis) ? oldSelf.redis.mode : 'managed')"
).message("spec.redis.mode is immutable: create a new ChatCluster to move between managed and external Redis"))]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterSpec {
    /// Number of chat-node pods (default 2). `kubectl scale` and a HorizontalPodAutoscaler set it
    /// through the scale subresource.
    // Defaulted by the API server, not only here: the scale subresource answers a GET (what the
    // HorizontalPodAutoscaler reads) only when the field exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000), extend("default" = DEFAULT_REPLICAS))]
    pub replicas: Option<i32>,

    /// Scale the chat-node pods on open connections per pod with a HorizontalPodAutoscaler
    /// (needs a custom metrics adapter; docs/autoscaling.md). Unset: `replicas` pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<super::AutoscalingSpec>,

    /// The chat-node image. Unset: the operator's default chat-node image when the cluster is
    /// first reconciled, kept from then on (see `imagePolicy`; the image run is in
    /// `status.nodeImage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Without `image`: `pinned` (default) keeps the chat-node image the cluster got when it was
    /// created, so upgrading the operator does not restart the chat nodes; `followOperator`
    /// always runs the operator's current default image (an operator upgrade rolls the nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_policy: Option<ImagePolicy>,

    /// Secrets of this namespace (type `kubernetes.io/dockerconfigjson`) with which every pod
    /// the operator runs for this cluster (chat-node, managed Redis, managed Collector) pulls
    /// its image, after the operator-wide ones (`--image-pull-secrets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,

    /// CPU and memory for each chat-node container. When `node.maxConnections` is not set,
    /// the connection limit is derived from the memory limit (see docs/api.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// chat-node settings (connection limit, heartbeat, drain, history, message limits, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeSpec>,

    /// Per-namespace channel options (history on/off with size and TTL, presence, join/leave,
    /// client publishing, anonymous subscribing) and the defaults for every other namespace;
    /// rendered into the chat-nodes as `CHAT_NAMESPACES` (a change rolls them). Unset: every
    /// namespace as `node` says (history on, presence off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<ChannelsSpec>,

    /// Token authentication of clients (JWT). Unset: no authentication, which a cluster with
    /// `ingress` must say explicitly with `anonymous: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,

    /// True: anyone who reaches the nodes may connect without a token. Required (instead of
    /// `auth`) when `ingress` makes the cluster reachable from outside, so that an open relay
    /// is a choice written down, not a default. Not with `auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<bool>,

    /// Where the nodes fan out through: a managed Redis (default) or an external one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,

    /// An Ingress with sticky sessions and WebSocket-friendly timeouts. Unset: no Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,

    /// Stop reconciling: the operator writes nothing but the `Paused` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,

    /// Overrides merged into the chat-node pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,

    /// Metrics, traces, logs and dashboards: the OpenTelemetry Collector, PrometheusRule,
    /// ServiceMonitors and Grafana dashboard (docs/observability.md). Alert rules and
    /// ServiceMonitors are created by default when prometheus-operator is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<crate::api::observability::ObservabilitySpec>,

    /// On-call routing of this cluster's alerts (an AlertmanagerConfig): critical to
    /// PagerDuty/OpsGenie, warning to Slack. Unset: no AlertmanagerConfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerting: Option<crate::api::observability::AlertingSpec>,
}

impl ChatClusterSpec {
    /// Desired chat-node replicas. The API server defaults `replicas` to 2 on every object it
    /// stores or serves; for a spec that did not pass through it (unit tests, `plan` on a file)
    /// the same default applies, or with `autoscaling` its `minReplicas`.
    pub fn replicas(&self) -> i32 {
        self.replicas.unwrap_or_else(|| {
            self.autoscaling
                .as_ref()
                .map_or(DEFAULT_REPLICAS, |a| a.min_replicas())
        })
    }

    /// When a cluster without `image` adopts a new default image, defaulted (`pinned`).
    pub fn image_policy(&self) -> ImagePolicy {
        self.image_policy.unwrap_or_default()
    }

    /// chat-node settings, defaulted (every field of the result may still be `None`).
    pub fn node(&self) -> NodeSpec {
        self.node.clone().unwrap_or_default()
    }

    /// The Redis settings; absent means a managed Redis with defaults.
    pub fn redis(&self) -> RedisSpec {
        self.redis.clone().unwrap_or_default()
    }

    /// True when the operator runs Redis itself.
    pub fn redis_is_managed(&self) -> bool {
        self.redis().mode == RedisMode::Managed
    }

    /// True when reconciling is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.unwrap_or(false)
    }

    /// Pod template overrides, defaulted to none.
    pub fn pod_template(&self) -> PodTemplateOverrides {
        self.pod_template.clone().unwrap_or_default()
    }
}
