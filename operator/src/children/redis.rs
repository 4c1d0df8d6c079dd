//! The managed Redis: a one-replica StatefulSet, its Service, its password Secret (created once,
//! never regenerated) and a NetworkPolicy that admits only this cluster's chat-node pods.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::ObjectMeta;
use rand::distr::{Alphanumeric, SampleString};

use super::{COMPONENT_BROKER, REDIS_PASSWORD_KEY, REDIS_PORT, child_meta, names, node_selector};
use crate::api::{ChatCluster, VolumeRetention};
use crate::labels;

/// The uid/gid of the `redis` user in the official image.
pub const REDIS_USER: i64 = 999;
/// Length of a generated password (alphanumeric: ~190 bits).
pub const PASSWORD_LENGTH: usize = 32;
const DATA_VOLUME: &str = "data";
const CONFIG_VOLUME: &str = "auth";
/// Key of the configuration Secret `<name>-redis-config` that holds Redis' configuration file.
pub const REDIS_CONFIG_KEY: &str = "redis.conf";
/// Where the configuration file is mounted in the Redis container.
pub const REDIS_CONFIG_MOUNT_PATH: &str = "/etc/redis/auth";

/// The configuration file Redis reads first: the password, so that it is neither on Redis'
/// command line (`ps` shows it) nor in an environment variable of the server process.
pub fn config_file(password: &str) -> String {
    format!("requirepass {password}\n")
}

fn redis_selector(cluster: &ChatCluster) -> BTreeMap<String, String> {
    labels::selector(labels::APP_REDIS, &cluster.name_any())
}

fn redis_meta(cluster: &ChatCluster, name: String) -> ObjectMeta {
    child_meta(cluster, name, labels::APP_REDIS, COMPONENT_BROKER)
}

/// A new random password. Called only when the Secret does not exist yet.
pub fn generate_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), PASSWORD_LENGTH)
}

/// The password Secret `<name>-redis-auth` (key `password`, for chat-nodes and redis-cli). The
/// reconciler creates it once and never updates it: regenerating would lock running chat-nodes
/// out of Redis.
pub fn build_secret(cluster: &ChatCluster, password: &str) -> Secret {
    Secret {
        metadata: redis_meta(cluster, names::redis_secret(&cluster.name_any())),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(
            REDIS_PASSWORD_KEY.to_string(),
            password.to_string(),
        )])),
        ..Secret::default()
    }
}

/// The configuration Secret `<name>-redis-config` (key `redis.conf`) made from the password
/// Secret's password. Created once like it, and never updated (the operator may create Secrets
/// but not change them): a Secret of its own, so that clusters made before it get one too.
pub fn build_config_secret(cluster: &ChatCluster, password: &str) -> Secret {
    Secret {
        metadata: redis_meta(cluster, names::redis_config(&cluster.name_any())),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(
            REDIS_CONFIG_KEY.to_string(),
            config_file(password),
        )])),
        ..Secret::default()
    }
}

/// The arguments of `redis-server`: the configuration file from the Secret first, then the
/// settings that are no secret: persistence, `maxmemory` and its policy.
pub fn server_args(cluster: &ChatCluster) -> Vec<String> {
    let redis = cluster.spec.redis();
    let persistent = redis.storage.is_some();
    let mut args = vec![
        format!("{REDIS_CONFIG_MOUNT_PATH}/{REDIS_CONFIG_KEY}"),
        "--appendonly".into(),
        if persistent { "yes" } else { "no" }.into(),
        "--save".into(),
        String::new(),
        "--dir".into(),
        "/data".into(),
    ];
    if let Some(bytes) = redis.max_memory_bytes() {
        args.extend(["--maxmemory".into(), bytes.to_string()]);
    }
    args.extend([
        "--maxmemory-policy".into(),
        redis.max_memory_policy.unwrap_or_default().as_str().into(),
    ]);
    args
}

/// The Redis Service `<name>-redis`, port 6379 named `redis`.
pub fn build_service(cluster: &ChatCluster) -> Service {
    Service {
        metadata: redis_meta(cluster, names::redis(&cluster.name_any())),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(redis_selector(cluster)),
            ports: Some(vec![ServicePort {
                name: Some("redis".into()),
                port: REDIS_PORT,
                target_port: Some(IntOrString::String("redis".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Redis StatefulSet `<name>-redis`: one replica, password from the Secret, append-only
/// file on a PersistentVolumeClaim when `storage` is set (else an emptyDir). `default_image` is
/// the operator's default Redis image (`--default-redis-image`).
pub fn build_statefulset(cluster: &ChatCluster, default_image: &str) -> StatefulSet {
    let name = names::redis(&cluster.name_any());
    let redis = cluster.spec.redis();
    let persistent = redis.storage.is_some();
    // REDISCLI_AUTH lets the readiness probe's redis-cli authenticate without a flag; the
    // server itself reads the password from its configuration file.
    let cli_password = EnvVar {
        name: "REDISCLI_AUTH".into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: names::redis_secret(&cluster.name_any()),
                key: REDIS_PASSWORD_KEY.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    };
    let container = Container {
        name: "redis".into(),
        image: Some(redis.image(default_image)),
        command: Some(vec!["redis-server".into()]),
        args: Some(server_args(cluster)),
        env: Some(vec![cli_password]),
        ports: Some(vec![ContainerPort {
            name: Some("redis".into()),
            container_port: REDIS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: redis.resources.clone(),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("redis".into()),
                host: None,
            }),
            period_seconds: Some(10),
            ..Probe::default()
        }),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "redis-cli ping | grep -q PONG".into(),
                ]),
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(2),
            ..Probe::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: DATA_VOLUME.into(),
                mount_path: "/data".into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: CONFIG_VOLUME.into(),
                mount_path: REDIS_CONFIG_MOUNT_PATH.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let volume_claim_templates = redis.storage.as_ref().map(|storage| {
        vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(DATA_VOLUME.into()),
                labels: Some(labels::standard(
                    labels::APP_REDIS,
                    &cluster.name_any(),
                    COMPONENT_BROKER,
                )),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), storage.size.clone())])),
                    limits: None,
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: None,
        }]
    });
    let mut volumes = vec![Volume {
        name: CONFIG_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names::redis_config(&cluster.name_any())),
            items: Some(vec![KeyToPath {
                key: REDIS_CONFIG_KEY.into(),
                path: REDIS_CONFIG_KEY.into(),
                mode: None,
            }]),
            // Readable by the redis group (fsGroup) only.
            default_mode: Some(0o440),
            optional: Some(false),
        }),
        ..Volume::default()
    }];
    if !persistent {
        volumes.push(Volume {
            name: DATA_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
    }
    let mut pod_labels = redis_selector(cluster);
    pod_labels.extend(labels::standard(
        labels::APP_REDIS,
        &cluster.name_any(),
        COMPONENT_BROKER,
    ));

    StatefulSet {
        metadata: redis_meta(cluster, name.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(name),
            selector: LabelSelector {
                match_labels: Some(redis_selector(cluster)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(REDIS_USER),
                        run_as_group: Some(REDIS_USER),
                        fs_group: Some(REDIS_USER),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates,
            persistent_volume_claim_retention_policy: redis.storage.as_ref().map(|storage| {
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(
                        storage.when_deleted.unwrap_or_default().as_str().to_owned(),
                    ),
                    // One replica: never scaled down.
                    when_scaled: Some(VolumeRetention::Retain.as_str().to_owned()),
                }
            }),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// The NetworkPolicy `<name>-redis`: only this cluster's chat-node pods reach Redis, on 6379.
pub fn build_network_policy(cluster: &ChatCluster) -> NetworkPolicy {
    NetworkPolicy {
        metadata: redis_meta(cluster, names::redis(&cluster.name_any())),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(redis_selector(cluster)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(node_selector(cluster)),
                        match_expressions: None,
                    }),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(REDIS_PORT)),
                    protocol: Some("TCP".into()),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ResourceRequirements;

    use crate::api::{MaxMemoryPolicy, RedisMode, RedisSpec, RedisStorage};
    use crate::children::fixtures::cluster;

    /// The operator's built-in default Redis image.
    const REDIS: &str = "docker.io/library/redis:7.4";

    #[test]
    fn the_image_is_the_specs_else_the_default_with_the_specs_version() {
        let mut c = cluster("demo");
        let image = |c: &ChatCluster, default: &str| {
            build_statefulset(c, default)
                .spec
                .unwrap()
                .template
                .spec
                .unwrap()
                .containers[0]
                .image
                .clone()
                .unwrap()
        };
        assert_eq!(image(&c, REDIS), REDIS);
        assert_eq!(REDIS, crate::api::default_redis_image());
        let mirror = "mirror.example:5000/redis@sha256:0123";
        assert_eq!(image(&c, mirror), mirror, "a digest is kept as given");
        c.spec.redis = Some(RedisSpec {
            version: Some("7.2".into()),
            ..RedisSpec::default()
        });
        assert_eq!(image(&c, mirror), "mirror.example:5000/redis:7.2");
        assert_eq!(image(&c, REDIS), "docker.io/library/redis:7.2");
        c.spec.redis = Some(RedisSpec {
            version: Some("7.2".into()),
            image: Some("mine/redis:8".into()),
            ..RedisSpec::default()
        });
        assert_eq!(image(&c, mirror), "mine/redis:8");
    }

    #[test]
    fn password_is_long_random_and_alphanumeric() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.len(), PASSWORD_LENGTH);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn secret_holds_the_given_password() {
        let s = build_secret(&cluster("demo"), "pw");
        assert_eq!(s.metadata.name.as_deref(), Some("demo-redis-auth"));
        assert_eq!(s.string_data.unwrap()["password"], "pw");
        let config = build_config_secret(&cluster("demo"), "pw");
        assert_eq!(config.metadata.name.as_deref(), Some("demo-redis-config"));
        assert_eq!(
            config.string_data.unwrap()["redis.conf"],
            "requirepass pw\n"
        );
    }

    #[test]
    fn statefulset_defaults_to_emptydir_and_reads_password_from_secret() {
        let sts = build_statefulset(&cluster("demo"), REDIS);
        assert_eq!(sts.metadata.name.as_deref(), Some("demo-redis"));
        let spec = sts.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert!(spec.volume_claim_templates.is_none());
        let pod = spec.template.spec.unwrap();
        let volumes = pod.volumes.clone().unwrap();
        assert!(volumes[1].empty_dir.is_some());
        let config = volumes[0].secret.as_ref().unwrap();
        assert_eq!(config.secret_name.as_deref(), Some("demo-redis-config"));
        assert_eq!(config.items.as_ref().unwrap()[0].key, "redis.conf");
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("docker.io/library/redis:7.4"));
        // The password is in the configuration file only: not on the command line, and only
        // redis-cli's variable carries it.
        assert_eq!(
            c.args.as_ref().unwrap(),
            &[
                "/etc/redis/auth/redis.conf",
                "--appendonly",
                "no",
                "--save",
                "",
                "--dir",
                "/data",
                "--maxmemory",
                "268435456",
                "--maxmemory-policy",
                "volatile-ttl"
            ]
        );
        let env = c.env.as_ref().unwrap();
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].name, "REDISCLI_AUTH");
        let secret = env[0]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(secret.name, "demo-redis-auth");
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    }

    #[test]
    fn maxmemory_follows_the_spec_or_the_memory_limit() {
        let args = |redis: RedisSpec| {
            let mut c = cluster("demo");
            c.spec.redis = Some(redis);
            let args = server_args(&c);
            let at = |flag: &str| {
                let i = args.iter().position(|a| a == flag).unwrap();
                args[i + 1].clone()
            };
            (at("--maxmemory"), at("--maxmemory-policy"))
        };
        let limit = |memory: &str| ResourceRequirements {
            limits: Some(BTreeMap::from([("memory".into(), Quantity(memory.into()))])),
            ..ResourceRequirements::default()
        };
        // 75% of a 1 GiB limit.
        assert_eq!(
            args(RedisSpec {
                resources: Some(limit("1Gi")),
                ..RedisSpec::default()
            }),
            ("805306368".into(), "volatile-ttl".into())
        );
        // Explicit beats the limit; the policy is configurable.
        assert_eq!(
            args(RedisSpec {
                resources: Some(limit("1Gi")),
                max_memory: Some(Quantity("64Mi".into())),
                max_memory_policy: Some(MaxMemoryPolicy::Noeviction),
                ..RedisSpec::default()
            }),
            ("67108864".into(), "noeviction".into())
        );
    }

    #[test]
    fn storage_becomes_a_volume_claim_and_version_the_tag() {
        let mut c = cluster("demo");
        c.spec.redis = Some(RedisSpec {
            mode: RedisMode::Managed,
            version: Some("7.2".into()),
            storage: Some(RedisStorage {
                size: Quantity("2Gi".into()),
                storage_class_name: Some("fast".into()),
                when_deleted: None,
            }),
            ..RedisSpec::default()
        });
        let spec = build_statefulset(&c, REDIS).spec.unwrap();
        let retention = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .unwrap();
        assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
        assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
        let claim = &spec.volume_claim_templates.unwrap()[0];
        let claim_spec = claim.spec.as_ref().unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim_spec
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"],
            Quantity("2Gi".into())
        );
        let pod = spec.template.spec.unwrap();
        let volumes = pod.volumes.unwrap();
        assert_eq!(
            volumes.len(),
            1,
            "the configuration only: /data is the claim"
        );
        assert!(volumes[0].secret.is_some());
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("docker.io/library/redis:7.2"));
        assert!(
            c.args
                .as_ref()
                .unwrap()
                .windows(2)
                .any(|w| w == ["--appendonly", "yes"])
        );
    }

    #[test]
    fn network_policy_admits_only_this_clusters_chat_nodes() {
        let np = build_network_policy(&cluster("demo"));
        let spec = np.spec.unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap()[labels::NAME],
            "redis"
        );
        let rule = &spec.ingress.unwrap()[0];
        let peer = &rule.from.as_ref().unwrap()[0];
        let from = peer
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(from[labels::NAME], "chat-node");
        assert_eq!(from[labels::INSTANCE], "demo");
        assert!(peer.namespace_selector.is_none(), "same namespace only");
        assert_eq!(
            rule.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(6379))
        );
    }

    #[test]
    fn service_selects_redis_pods() {
        let s = build_service(&cluster("demo"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.selector.unwrap()[labels::NAME], "redis");
        assert_eq!(spec.ports.unwrap()[0].port, 6379);
    }
}
