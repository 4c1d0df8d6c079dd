//! `spec.redis`: a Redis the operator runs (`managed`) or one it is given (`external`).

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// Redis version (image tag) of a managed Redis when `spec.redis.version` is unset.
pub const DEFAULT_REDIS_VERSION: &str = "7.4";
/// Image repository of a managed Redis; the tag is the version.
pub const DEFAULT_REDIS_IMAGE_REPOSITORY: &str = "docker.io/library/redis";

/// Who runs Redis.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// The operator runs a single-replica Redis StatefulSet with a generated password.
    #[default]
    Managed,
    /// chat-nodes connect to `url`, with the password from `passwordSecretRef` if set.
    External,
}

/// Persistent storage of a managed Redis. Immutable: a StatefulSet's volume claims cannot change.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisStorage {
    /// Volume size, e.g. `1Gi`.
    pub size: Quantity,
    /// StorageClass; unset uses the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// Redis for fan-out and history.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("self.mode != 'external' || has(self.url)")
        .message("spec.redis.url is required when spec.redis.mode is external"),
    validation = Rule::new("self.mode != 'managed' || (!has(self.url) && !has(self.passwordSecretRef) && !has(self.caSecretRef))")
        .message("spec.redis.url, passwordSecretRef and caSecretRef apply only to mode external"),
    validation = Rule::new("!has(self.caSecretRef) || (has(self.url) && self.url.startsWith('rediss'))")
        .message("spec.redis.caSecretRef needs a TLS URL (rediss:// or rediss+cluster://)"),
    validation = Rule::new("self.mode != 'external' || (!has(self.version) && !has(self.image) && !has(self.storage) && !has(self.resources))")
        .message("spec.redis.version, image, storage and resources apply only to mode managed"),
    validation = Rule::new("has(self.storage) == has(oldSelf.storage) && (!has(self.storage) || self.storage == oldSelf.storage)")
        .message("spec.redis.storage is immutable: a StatefulSet's volume claims cannot change")
)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// `managed` (default when `spec.redis` is absent) or `external`. Immutable.
    pub mode: RedisMode,

    /// managed: Redis version, used as the image tag (default `7.4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9._-]+$')")
        .message("spec.redis.version must be an image tag such as 7.4"))]
    pub version: Option<String>,

    /// managed: full image reference, overriding `docker.io/library/redis:<version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// managed: a PersistentVolumeClaim for `/data`; unset keeps data in an emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<RedisStorage>,

    /// managed: CPU and memory of the Redis container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// external: `redis://host:port`, `rediss://` for TLS, `redis+cluster://` (or
    /// `rediss+cluster://`) for Redis Cluster, or a comma-separated list of cluster node URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^(redis|rediss|redis[+]cluster|rediss[+]cluster)://.+')")
        .message("spec.redis.url must start with redis://, rediss://, redis+cluster:// or rediss+cluster://"))]
    pub url: Option<String>,

    /// external: the Redis password (key default `password`), passed as `CHAT_REDIS_PASSWORD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,

    /// external, TLS: the CA certificate (PEM, key default `ca.crt`) chat-nodes trust for the
    /// Redis server's certificate, mounted as a file and passed as `CHAT_REDIS_CA_FILE`; unset
    /// = the image's system roots. Needs a `rediss://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

impl RedisSpec {
    /// The image of a managed Redis.
    pub fn image(&self) -> String {
        self.image.clone().unwrap_or_else(|| {
            format!(
                "{DEFAULT_REDIS_IMAGE_REPOSITORY}:{}",
                self.version.as_deref().unwrap_or(DEFAULT_REDIS_VERSION)
            )
        })
    }
}
