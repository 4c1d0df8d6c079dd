//! The `ChatCluster` API (`realtime.dev/v1alpha1`): spec, status and the defaults applied in code.
//!
//! Defaults live in accessor methods (`ChatClusterSpec::replicas()` and friends), not in the
//! schema, so that what a user or a GitOps tool applies is exactly what is stored and no tool
//! sees a spurious diff. Validation that the API server can do is in the schema itself: OpenAPI
//! ranges and CEL rules (`x-kubernetes-validations`) with messages written for people.

mod auth;
mod autoscaling;
mod channels;
mod cluster;
mod image;
mod ingress;
mod node;
pub mod observability;
mod pod_template;
mod redis;
mod status;

pub use auth::{AuthSpec, DEFAULT_JWT_PUBLIC_KEY_KEY, DEFAULT_JWT_SECRET_KEY, SecretKeyRef};
pub use autoscaling::{
    AutoscalingSpec, CONNECTIONS_METRIC, DEFAULT_MIN_REPLICAS,
    DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS, DEFAULT_TARGET_CONNECTIONS_PER_POD,
};
pub use channels::{ChannelHistory, ChannelNamespace, ChannelOptions, ChannelsSpec};
pub use cluster::{ChatCluster, ChatClusterSpec, DEFAULT_REPLICAS, MAX_NAME_LENGTH};
pub use image::{
    ImagePolicy, ImageSource, NODE_IMAGE_REPOSITORY, ResolvedImage, default_node_image,
    needs_running_image, resolve as resolve_node_image,
};
pub use ingress::{DEFAULT_COOKIE_NAME, GatewayRef, IngressProvider, IngressSpec, SessionAffinity};
pub use node::{DEFAULT_DRAIN_TIMEOUT, LogFormat, NodeSpec};
pub use pod_template::PodTemplateOverrides;
pub use redis::{
    DEFAULT_REDIS_IMAGE_REPOSITORY, DEFAULT_REDIS_MAX_MEMORY_BYTES, DEFAULT_REDIS_VERSION,
    MaxMemoryPolicy, RedisMode, RedisSpec, RedisStorage, VolumeRetention, default_redis_image,
};
pub use status::{ChatClusterStatus, Phase, condition_types, reasons};

/// The API group of every type in this module.
pub const GROUP: &str = "realtime.dev";
/// The only served version.
pub const VERSION: &str = "v1alpha1";
