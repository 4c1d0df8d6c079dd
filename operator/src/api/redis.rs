//! `spec.redis`: a Redis the operator runs (`managed`) or one it is given (`external`).

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// The image of a managed Redis when neither `spec.redis.image` nor `--default-redis-image`
/// says otherwise: `<DEFAULT_REDIS_IMAGE_REPOSITORY>:<DEFAULT_REDIS_VERSION>`.
pub fn default_redis_image() -> String {
    format!("{DEFAULT_REDIS_IMAGE_REPOSITORY}:{DEFAULT_REDIS_VERSION}")
}

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

/// What a managed Redis drops when it reaches `maxMemory` (Redis' `maxmemory-policy`).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum MaxMemoryPolicy {
    /// Default. Drops the key with the nearest expiry first. Every channel history is a Stream
    /// whose TTL (`node.historyTtl`, 24 h) is renewed by each publish, so this drops the history
    /// of the channel published to longest ago, and publishing never fails. Keys without a TTL
    /// are never dropped.
    #[default]
    VolatileTtl,
    /// Drops nothing: once full, every write (each publish's XADD) fails with `OOM` until keys
    /// expire. Pick it when losing history is worse than refusing messages.
    Noeviction,
    /// Least recently used among keys with a TTL.
    VolatileLru,
    /// Least frequently used among keys with a TTL.
    VolatileLfu,
    /// Any key with a TTL.
    VolatileRandom,
    /// Least recently used among all keys.
    AllkeysLru,
    /// Least frequently used among all keys.
    AllkeysLfu,
    /// Any key.
    AllkeysRandom,
}

impl MaxMemoryPolicy {
    /// The value of Redis' `maxmemory-policy`.
    pub fn as_str(self) -> &'static str {
        match self {
            MaxMemoryPolicy::VolatileTtl => "volatile-ttl",
            MaxMemoryPolicy::Noeviction => "noeviction",
            MaxMemoryPolicy::VolatileLru => "volatile-lru",
            MaxMemoryPolicy::VolatileLfu => "volatile-lfu",
            MaxMemoryPolicy::VolatileRandom => "volatile-random",
            MaxMemoryPolicy::AllkeysLru => "allkeys-lru",
            MaxMemoryPolicy::AllkeysLfu => "allkeys-lfu",
            MaxMemoryPolicy::AllkeysRandom => "allkeys-random",
        }
    }
}

/// `maxMemory` of a managed Redis without one and without a memory limit.
pub const DEFAULT_REDIS_MAX_MEMORY_BYTES: i64 = 256 * 1024 * 1024;
/// Share of the Redis container's memory limit that `maxMemory` defaults to: Redis counts only
/// its dataset, not fragmentation, client buffers or a fork's copied pages, which the rest holds.
pub const REDIS_MAX_MEMORY_SHARE_OF_LIMIT: f64 = 0.75;

/// What becomes of a managed Redis' volume when its ChatCluster is deleted.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum VolumeRetention {
    /// Default. The PersistentVolumeClaim stays: a ChatCluster created again under the same
    /// name and namespace finds its history; delete the claim by hand to free the volume.
    #[default]
    Retain,
    /// The claim is deleted with the ChatCluster (and the volume with it when its
    /// StorageClass' `reclaimPolicy` is `Delete`).
    Delete,
}

impl VolumeRetention {
    /// The value of a StatefulSet's `persistentVolumeClaimRetentionPolicy` fields.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeRetention::Retain => "Retain",
            VolumeRetention::Delete => "Delete",
        }
    }
}

/// Persistent storage of a managed Redis. `size` and `storageClassName` are immutable (a
/// StatefulSet's volume claims cannot change); `whenDeleted` may change.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisStorage {
    /// Volume size, e.g. `1Gi`.
    pub size: Quantity,
    /// StorageClass; unset uses the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// What becomes of the volume claim when the ChatCluster is deleted: `Retain` (default) or
    /// `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_deleted: Option<VolumeRetention>,
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
    validation = Rule::new("self.mode != 'external' || (!has(self.version) && !has(self.image) && !has(self.storage) && !has(self.ephemeral) && !has(self.resources) && !has(self.maxMemory) && !has(self.maxMemoryPolicy) && !has(self.replicas))")
        .message("spec.redis.version, image, storage, ephemeral, resources, maxMemory, maxMemoryPolicy and replicas apply only to mode managed"),
    validation = Rule::new("!(has(self.storage) && has(self.ephemeral) && self.ephemeral)")
        .message("spec.redis.storage and spec.redis.ephemeral: true contradict each other: remove one"),
    validation = Rule::new("(has(self.ephemeral) && self.ephemeral) == (has(oldSelf.ephemeral) && oldSelf.ephemeral)")
        .message("spec.redis.ephemeral is immutable: a StatefulSet's volume claims cannot change; create a new ChatCluster to change where Redis keeps its data"),
    validation = Rule::new("(has(self.replicas) ? self.replicas : 1) == (has(oldSelf.replicas) ? oldSelf.replicas : 1)")
        .message("spec.redis.replicas is immutable: create a new ChatCluster to change how many Redis pods (and sentinels) it runs"),
    validation = Rule::new("has(self.storage) == has(oldSelf.storage) && (!has(self.storage) || (self.storage.size == oldSelf.storage.size && (has(self.storage.storageClassName) ? self.storage.storageClassName : '') == (has(oldSelf.storage.storageClassName) ? oldSelf.storage.storageClassName : '')))")
        .message("spec.redis.storage (its size and storageClassName) is immutable: a StatefulSet's volume claims cannot change")
)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// `managed` (the default) or `external`. Immutable.
    #[serde(default)]
    #[schemars(extend("default" = "managed"))]
    pub mode: RedisMode,

    /// managed: Redis version, used as the tag of the operator's default Redis image (default:
    /// that image's own tag, `7.4` unless the operator is configured otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9._-]+$')")
        .message("spec.redis.version must be an image tag such as 7.4"))]
    pub version: Option<String>,

    /// managed: full image reference (`repo:tag` or `repo@sha256:…`), overriding the operator's
    /// default Redis image (`docker.io/library/redis:<version>` unless the operator's
    /// `--default-redis-image` names a mirror).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// managed: a PersistentVolumeClaim per Redis pod for `/data` (the append-only file).
    /// Unset: the operator's default (`--default-redis-storage-size`, 1Gi, on the cluster's
    /// default StorageClass or `--default-redis-storage-class`), decided when the Redis
    /// StatefulSet is created and kept after; an emptyDir when the cluster has no default
    /// StorageClass (a Warning Event says so). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<RedisStorage>,

    /// managed: `true` keeps Redis' data in an emptyDir, lost with its pod, where the operator
    /// would otherwise give it a volume (a cache-like chat whose history may be lost). Excludes
    /// `storage`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<bool>,

    /// managed: Redis pods. `1` (default): one Redis. `3`, `5` or `7`: high availability, a
    /// primary and replicas with a Redis Sentinel beside each; Sentinel promotes a replica when
    /// the primary fails, chat-nodes follow it (`redis+sentinel://`) and acknowledge a publish
    /// only once a replica has it. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in [1, 3, 5, 7]")
        .message("spec.redis.replicas must be 1, or 3, 5 or 7 (high availability with Sentinel: an odd number, for a majority)"))]
    pub replicas: Option<i32>,

    /// managed: CPU and memory of the Redis container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// managed: the most memory Redis' dataset may use (`maxmemory`), e.g. `256Mi`. Default:
    /// 75% of `resources.limits.memory`, or 256Mi without a limit. Past it, `maxMemoryPolicy`
    /// applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isQuantity(string(self)) && quantity(string(self)).compareTo(quantity('1Mi')) >= 0")
        .message("spec.redis.maxMemory must be a quantity of at least 1Mi, e.g. 256Mi"))]
    pub max_memory: Option<Quantity>,

    /// managed: what Redis drops at `maxMemory`: `volatile-ttl` (default: the history of the
    /// channel published to longest ago; publishing keeps working) or `noeviction` (nothing
    /// dropped; publishes fail until history expires), or another Redis policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_policy: Option<MaxMemoryPolicy>,

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
    /// `maxmemory` of a managed Redis in bytes (see `max_memory`); `None` when `maxMemory` is
    /// no quantity (the API server refuses that).
    pub fn max_memory_bytes(&self) -> Option<i64> {
        if let Some(max) = &self.max_memory {
            return crate::limits::quantity_to_bytes(max);
        }
        let limit = self
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .and_then(crate::limits::quantity_to_bytes);
        Some(limit.map_or(DEFAULT_REDIS_MAX_MEMORY_BYTES, |limit| {
            (limit as f64 * REDIS_MAX_MEMORY_SHARE_OF_LIMIT) as i64
        }))
    }

    /// Redis pods of a managed Redis (`replicas`, default 1).
    pub fn replicas(&self) -> i32 {
        self.replicas.unwrap_or(1).max(1)
    }

    /// True when the managed Redis is highly available: several pods and Sentinel.
    pub fn sentinel(&self) -> bool {
        self.mode == RedisMode::Managed && self.replicas() > 1
    }

    /// Sentinels that must agree that the primary is down (a majority of them).
    pub fn quorum(&self) -> i32 {
        self.replicas() / 2 + 1
    }

    /// The image of a managed Redis: `image`; else `default` (the operator's,
    /// `--default-redis-image`) with its tag (and digest) replaced by `version` when set.
    pub fn image(&self, default: &str) -> String {
        match (&self.image, &self.version) {
            (Some(image), _) => image.clone(),
            (None, Some(version)) => {
                format!(
                    "{}:{version}",
                    crate::children::operands::repository(default)
                )
            }
            (None, None) => default.to_owned(),
        }
    }
}
