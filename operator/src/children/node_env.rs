//! The chat-node container's configuration: environment variables only (INTERFACES.md), plus the
//! Secret volumes that carry a JWT key file, a Redis CA certificate and an external OpenTelemetry
//! Collector's CA certificate.

use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, KeyToPath, ObjectFieldSelector, SecretKeySelector, SecretVolumeSource,
    Volume, VolumeMount,
};
use kube::ResourceExt;

use super::{ADMIN_PORT, API_PORT, REDIS_PASSWORD_KEY, REDIS_PORT, WS_PORT, names, server_api};
use crate::api::{
    ChatCluster, DEFAULT_JWT_PUBLIC_KEY_KEY, DEFAULT_JWT_SECRET_KEY, RedisMode, SecretKeyRef,
};
use crate::children::observability::collector;
use crate::limits;

/// Where the JWT key Secret is mounted.
pub const AUTH_MOUNT_PATH: &str = "/etc/chat-node/auth";
/// Name of the JWT key volume.
pub const AUTH_VOLUME: &str = "jwt-key";
/// Where the external Redis' CA certificate Secret is mounted.
pub const REDIS_CA_MOUNT_PATH: &str = "/etc/chat-node/redis-ca";
/// Name of the Redis CA volume.
pub const REDIS_CA_VOLUME: &str = "redis-ca";
/// Default key of `spec.redis.caSecretRef`.
pub const DEFAULT_REDIS_CA_KEY: &str = "ca.crt";

/// The variable naming the header chat-node reads the client address from.
pub const CLIENT_ADDRESS_HEADER_VAR: &str = "CHAT_CLIENT_ADDRESS_HEADER";
/// The header ingress-nginx, Traefik and Gateway implementations append the peer address to.
pub const CLIENT_ADDRESS_HEADER: &str = "X-Forwarded-For";

fn plain(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The URL chat-nodes use for a managed Redis (the password travels separately).
/// High availability: the sentinels of every Redis pod and the primary's Sentinel name.
pub fn managed_redis_url(cluster: &ChatCluster) -> String {
    let redis = cluster.spec.redis();
    if redis.sentinel() {
        let sentinels: Vec<String> = (0..redis.replicas())
            .map(|i| {
                format!(
                    "{}:{}",
                    super::redis::pod_host(&cluster.name_any(), i),
                    super::redis::SENTINEL_PORT
                )
            })
            .collect();
        return format!(
            "redis+sentinel://{}/{}",
            sentinels.join(","),
            super::redis::SENTINEL_MASTER
        );
    }
    format!("redis://{}:{REDIS_PORT}", names::redis(&cluster.name_any()))
}

/// Every `CHAT_*` (and `RUST_LOG`) variable for the chat-node container, in a stable order.
pub fn build(cluster: &ChatCluster) -> Vec<EnvVar> {
    let spec = &cluster.spec;
    let node = spec.node();
    let mut env = vec![
        plain("CHAT_LISTEN", format!("0.0.0.0:{WS_PORT}")),
        plain("CHAT_ADMIN_LISTEN", format!("0.0.0.0:{ADMIN_PORT}")),
        EnvVar {
            name: "CHAT_NODE_ID".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        },
    ];

    let redis = spec.redis();
    match redis.mode {
        RedisMode::Managed => {
            env.push(plain("CHAT_REDIS_URL", managed_redis_url(cluster)));
            env.push(from_secret(
                "CHAT_REDIS_PASSWORD",
                &names::redis_secret(&cluster.name_any()),
                REDIS_PASSWORD_KEY,
            ));
            if redis.sentinel() {
                // A publish is acknowledged once a replica has it: a failover loses none.
                env.push(plain("CHAT_REDIS_MIN_REPLICAS_ACK", "1".to_owned()));
            }
        }
        RedisMode::External => {
            env.push(plain(
                "CHAT_REDIS_URL",
                redis.url.clone().unwrap_or_default(),
            ));
            if let Some(secret) = &redis.password_secret_ref {
                env.push(from_secret(
                    "CHAT_REDIS_PASSWORD",
                    &secret.name,
                    secret.key_or(REDIS_PASSWORD_KEY),
                ));
            }
            if let Some(secret) = &redis.ca_secret_ref {
                env.push(plain(
                    "CHAT_REDIS_CA_FILE",
                    format!(
                        "{REDIS_CA_MOUNT_PATH}/{}",
                        secret.key_or(DEFAULT_REDIS_CA_KEY)
                    ),
                ));
            }
        }
    }

    let max_connections = node
        .max_connections
        .or_else(|| limits::max_connections_from_resources(spec.resources.as_ref()));
    if let Some(max) = max_connections {
        env.push(plain("CHAT_MAX_CONNECTIONS", max.to_string()));
    }
    if let Some(v) = &node.heartbeat_interval {
        env.push(plain("CHAT_HEARTBEAT_INTERVAL", v.clone()));
    }
    env.push(plain("CHAT_DRAIN_TIMEOUT", node.drain_timeout()));
    if let Some(v) = node.history_size {
        env.push(plain("CHAT_HISTORY_SIZE", v.to_string()));
    }
    if let Some(v) = &node.history_ttl {
        env.push(plain("CHAT_HISTORY_TTL", v.clone()));
    }
    if let Some(v) = node.max_message_bytes {
        env.push(plain("CHAT_MAX_MESSAGE_BYTES", v.to_string()));
    }
    if let Some(v) = node.max_subscriptions {
        env.push(plain("CHAT_MAX_SUBSCRIPTIONS", v.to_string()));
    }
    if let Some(v) = node.send_queue {
        env.push(plain("CHAT_SEND_QUEUE", v.to_string()));
    }
    if let Some(channels) = &spec.channels {
        // chat-node's own JSON: a change of it changes the pod template, so the nodes roll.
        env.push(plain("CHAT_NAMESPACES", channels.to_node_json()));
    }
    if let Some(origins) = node.allowed_origins.as_ref().filter(|o| !o.is_empty()) {
        env.push(plain("CHAT_ALLOWED_ORIGINS", origins.join(",")));
    }
    if spec.ingress.is_some() {
        // Behind the Ingress or HTTPRoute every connection comes from the proxy: the client's
        // address (for per-client rate limits) is the last entry of the header the proxy appends.
        env.push(plain(CLIENT_ADDRESS_HEADER_VAR, CLIENT_ADDRESS_HEADER));
    }
    env.push(plain("CHAT_LOG_FORMAT", node.log_format().as_str()));
    if let Some(filter) = &node.log_filter {
        env.push(plain("RUST_LOG", filter.clone()));
    }
    if let Some((var, key)) = auth_key(cluster).map(|(var, _, key)| (var, key)) {
        env.push(plain(var, format!("{AUTH_MOUNT_PATH}/{key}")));
    }
    env.push(plain("CHAT_API_LISTEN", format!("0.0.0.0:{API_PORT}")));
    env.push(plain("CHAT_API_KEY_FILE", server_api::key_file()));
    env
}

/// `(env var, secret, key)` of the configured JWT key, if any.
fn auth_key(cluster: &ChatCluster) -> Option<(&'static str, &SecretKeyRef, String)> {
    let auth = cluster.spec.auth.as_ref()?;
    if let Some(secret) = &auth.jwt_secret_ref {
        return Some((
            "CHAT_JWT_SECRET_FILE",
            secret,
            secret.key_or(DEFAULT_JWT_SECRET_KEY).to_string(),
        ));
    }
    let public = auth.jwt_public_key_ref.as_ref()?;
    Some((
        "CHAT_JWT_PUBLIC_KEY_FILE",
        public,
        public.key_or(DEFAULT_JWT_PUBLIC_KEY_KEY).to_string(),
    ))
}

/// The Secret volumes of the chat-node container and their mounts: the server API key always,
/// the JWT key when auth is configured, the external Redis' and the external collector's CA
/// certificates when given.
pub fn volumes(cluster: &ChatCluster) -> Vec<(Volume, VolumeMount)> {
    let mut volumes = vec![server_api::volume(cluster)];
    if let Some((_, secret, key)) = auth_key(cluster) {
        volumes.push(secret_file_volume(
            AUTH_VOLUME,
            AUTH_MOUNT_PATH,
            secret,
            key,
        ));
    }
    let redis = cluster.spec.redis();
    if let (RedisMode::External, Some(secret)) = (&redis.mode, &redis.ca_secret_ref) {
        let key = secret.key_or(DEFAULT_REDIS_CA_KEY).to_string();
        volumes.push(secret_file_volume(
            REDIS_CA_VOLUME,
            REDIS_CA_MOUNT_PATH,
            secret,
            key,
        ));
    }
    if let Some(secret) = cluster
        .spec
        .observability
        .as_ref()
        .and_then(collector::chat_node_otlp_ca)
    {
        let key = secret.key_or(collector::DEFAULT_OTLP_CA_KEY).to_string();
        volumes.push(secret_file_volume(
            collector::OTLP_CA_VOLUME,
            collector::OTLP_CA_MOUNT_PATH,
            secret,
            key,
        ));
    }
    volumes
}

/// One key of a Secret as a read-only file `<mount_path>/<key>` (readable by the pod's group).
pub(crate) fn secret_file_volume(
    name: &str,
    mount_path: &str,
    secret: &SecretKeyRef,
    key: String,
) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.name.clone()),
            items: Some(vec![KeyToPath {
                key: key.clone(),
                path: key,
                mode: None,
            }]),
            default_mode: Some(0o440),
            optional: Some(false),
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: name.into(),
        mount_path: mount_path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    (volume, mount)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;
    use crate::api::{AuthSpec, IngressProvider, IngressSpec, NodeSpec, RedisSpec};
    use crate::children::fixtures::cluster;

    /// The Secret key that `CHAT_REDIS_PASSWORD` is read from.
    fn redis_password_ref(env: &[EnvVar]) -> &k8s_openapi::api::core::v1::SecretKeySelector {
        env.iter()
            .find(|e| e.name == "CHAT_REDIS_PASSWORD")
            .and_then(|e| e.value_from.as_ref())
            .and_then(|from| from.secret_key_ref.as_ref())
            .expect("CHAT_REDIS_PASSWORD from a secret key")
    }

    fn value<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
        env.iter().find(|e| e.name == name)?.value.as_deref()
    }

    #[test]
    fn minimal_cluster_gets_listen_addresses_node_id_and_managed_redis() {
        let env = build(&cluster("demo"));
        assert_eq!(value(&env, "CHAT_LISTEN"), Some("0.0.0.0:8080"));
        assert_eq!(value(&env, "CHAT_ADMIN_LISTEN"), Some("0.0.0.0:9091"));
        let node_id = env.iter().find(|e| e.name == "CHAT_NODE_ID").unwrap();
        let field = node_id
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap();
        assert_eq!(field.field_path, "metadata.name");
        assert_eq!(
            value(&env, "CHAT_REDIS_URL"),
            Some("redis://demo-redis:6379")
        );
        let secret = redis_password_ref(&env);
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("demo-redis-auth", "password")
        );
        assert_eq!(value(&env, "CHAT_DRAIN_TIMEOUT"), Some("20s"));
        assert_eq!(value(&env, "CHAT_LOG_FORMAT"), Some("json"));
        assert_eq!(
            value(&env, "CHAT_MAX_CONNECTIONS"),
            None,
            "no memory limit, no derived limit"
        );
        assert_eq!(value(&env, "CHAT_HEARTBEAT_INTERVAL"), None);
        assert_eq!(
            value(&env, CLIENT_ADDRESS_HEADER_VAR),
            None,
            "no proxy in front"
        );
    }

    #[test]
    fn behind_an_ingress_or_route_the_client_address_comes_from_x_forwarded_for() {
        for provider in [IngressProvider::Nginx, IngressProvider::Gateway] {
            let mut c = cluster("demo");
            c.spec.ingress = Some(IngressSpec {
                provider: Some(provider),
                ..IngressSpec::default()
            });
            let env = build(&c);
            assert_eq!(
                value(&env, "CHAT_CLIENT_ADDRESS_HEADER"),
                Some("X-Forwarded-For"),
                "{provider:?}"
            );
        }
    }

    #[test]
    fn node_settings_become_env() {
        let mut c = cluster("demo");
        c.spec.node = Some(NodeSpec {
            max_connections: Some(5000),
            heartbeat_interval: Some("15s".into()),
            drain_timeout: Some("45s".into()),
            history_size: Some(0),
            history_ttl: Some("1h".into()),
            max_message_bytes: Some(4096),
            max_subscriptions: Some(16),
            send_queue: Some(256),
            allowed_origins: Some(vec!["https://a.example".into(), "https://b.example".into()]),
            log_format: Some(crate::api::LogFormat::Text),
            log_filter: Some("debug".into()),
        });
        let env = build(&c);
        for (name, expected) in [
            ("CHAT_MAX_CONNECTIONS", "5000"),
            ("CHAT_HEARTBEAT_INTERVAL", "15s"),
            ("CHAT_DRAIN_TIMEOUT", "45s"),
            ("CHAT_HISTORY_SIZE", "0"),
            ("CHAT_HISTORY_TTL", "1h"),
            ("CHAT_MAX_MESSAGE_BYTES", "4096"),
            ("CHAT_MAX_SUBSCRIPTIONS", "16"),
            ("CHAT_SEND_QUEUE", "256"),
            (
                "CHAT_ALLOWED_ORIGINS",
                "https://a.example,https://b.example",
            ),
            ("CHAT_LOG_FORMAT", "text"),
            ("RUST_LOG", "debug"),
        ] {
            assert_eq!(value(&env, name), Some(expected), "{name}");
        }
    }

    #[test]
    fn channel_namespaces_become_chat_namespaces_json() {
        let mut c = cluster("demo");
        assert_eq!(value(&build(&c), "CHAT_NAMESPACES"), None, "unset: none");
        c.spec.channels = Some(
            serde_json::from_value(serde_json::json!({
                "namespaces": [{"name": "typing", "history": {"enabled": false}}]
            }))
            .unwrap(),
        );
        assert_eq!(
            value(&build(&c), "CHAT_NAMESPACES"),
            Some(r#"{"namespaces":[{"name":"typing","history":{"enabled":false}}]}"#)
        );
    }

    #[test]
    fn connection_limit_is_derived_from_memory_limit_unless_set() {
        let mut c = cluster("demo");
        c.spec.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "memory".into(),
                Quantity("512Mi".into()),
            )])),
            ..ResourceRequirements::default()
        });
        assert_eq!(value(&build(&c), "CHAT_MAX_CONNECTIONS"), Some("14336"));
        c.spec.node = Some(NodeSpec {
            max_connections: Some(100),
            ..NodeSpec::default()
        });
        assert_eq!(value(&build(&c), "CHAT_MAX_CONNECTIONS"), Some("100"));
    }

    #[test]
    fn external_redis_uses_url_and_optional_password_secret() {
        let mut c = cluster("demo");
        c.spec.redis = Some(RedisSpec {
            mode: RedisMode::External,
            url: Some("rediss://redis.example:6380".into()),
            ..RedisSpec::default()
        });
        let env = build(&c);
        assert_eq!(
            value(&env, "CHAT_REDIS_URL"),
            Some("rediss://redis.example:6380")
        );
        assert!(!env.iter().any(|e| e.name == "CHAT_REDIS_PASSWORD"));

        c.spec.redis.as_mut().unwrap().password_secret_ref = Some(SecretKeyRef {
            name: "ext".into(),
            key: None,
        });
        let env = build(&c);
        let secret = redis_password_ref(&env);
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("ext", "password")
        );
    }

    #[test]
    fn jwt_secret_is_mounted_and_pointed_to() {
        let mut c = cluster("demo");
        c.spec.auth = Some(AuthSpec {
            jwt_secret_ref: Some(SecretKeyRef {
                name: "jwt".into(),
                key: None,
            }),
            jwt_public_key_ref: None,
        });
        let env = build(&c);
        assert_eq!(
            value(&env, "CHAT_JWT_SECRET_FILE"),
            Some("/etc/chat-node/auth/secret")
        );
        let [_, (volume, mount)] = volumes(&c).try_into().unwrap();
        assert_eq!(volume.secret.unwrap().secret_name.as_deref(), Some("jwt"));
        assert_eq!(mount.read_only, Some(true));

        c.spec.auth = Some(AuthSpec {
            jwt_secret_ref: None,
            jwt_public_key_ref: Some(SecretKeyRef {
                name: "keys".into(),
                key: Some("es256.pem".into()),
            }),
        });
        assert_eq!(
            value(&build(&c), "CHAT_JWT_PUBLIC_KEY_FILE"),
            Some("/etc/chat-node/auth/es256.pem")
        );
        // Without auth: only the server API key.
        let names: Vec<String> = volumes(&cluster("demo"))
            .into_iter()
            .map(|(v, _)| v.name)
            .collect();
        assert_eq!(names, [server_api::API_KEY_VOLUME]);
    }

    #[test]
    fn external_redis_ca_is_mounted_and_pointed_to() {
        let mut c = cluster("demo");
        c.spec.redis = Some(RedisSpec {
            mode: RedisMode::External,
            url: Some("rediss+cluster://redis.example:6380".into()),
            ca_secret_ref: Some(SecretKeyRef {
                name: "redis-tls".into(),
                key: None,
            }),
            ..RedisSpec::default()
        });
        assert_eq!(
            value(&build(&c), "CHAT_REDIS_CA_FILE"),
            Some("/etc/chat-node/redis-ca/ca.crt")
        );
        let [_, (volume, mount)] = volumes(&c).try_into().unwrap();
        let secret = volume.secret.unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("redis-tls"));
        assert_eq!(secret.items.unwrap()[0].key, "ca.crt");
        assert_eq!(
            (mount.name.as_str(), mount.mount_path.as_str()),
            (REDIS_CA_VOLUME, REDIS_CA_MOUNT_PATH)
        );

        // With auth too: two volumes, distinct names and paths.
        c.spec.auth = Some(AuthSpec {
            jwt_secret_ref: Some(SecretKeyRef {
                name: "jwt".into(),
                key: None,
            }),
            jwt_public_key_ref: None,
        });
        let names: Vec<String> = volumes(&c).into_iter().map(|(v, _)| v.name).collect();
        assert_eq!(
            names,
            [server_api::API_KEY_VOLUME, AUTH_VOLUME, REDIS_CA_VOLUME]
        );

        // And an external https collector's CA: a third volume at its own path.
        c.spec.observability = Some(crate::api::observability::ObservabilitySpec {
            collector: Some(crate::api::observability::CollectorSpec {
                endpoint: Some("https://otel.example:4317".into()),
                ca_secret_ref: Some(SecretKeyRef {
                    name: "otel-ca".into(),
                    key: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mounted: Vec<(String, String)> = volumes(&c)
            .into_iter()
            .map(|(v, m)| (v.name, m.mount_path))
            .collect();
        assert_eq!(
            mounted[3],
            (
                collector::OTLP_CA_VOLUME.to_owned(),
                collector::OTLP_CA_MOUNT_PATH.to_owned()
            )
        );
        // Managed Redis ignores it (the API refuses it there anyway).
        assert!(
            !build(&cluster("demo"))
                .iter()
                .any(|e| e.name == "CHAT_REDIS_CA_FILE")
        );
    }
}
