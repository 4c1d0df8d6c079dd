//! The managed Redis: a StatefulSet, its Service, its password Secret (created once, never
//! regenerated) and a NetworkPolicy that admits only this cluster's chat-node pods.
//!
//! One pod by default. With `spec.redis.replicas` of 3, 5 or 7 it is highly available: every
//! pod runs Redis and a Sentinel, the Service is headless (a DNS name per pod), the pods find
//! the primary by asking each other's sentinels at start, and a PodDisruptionBudget lets one pod
//! go at a time.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, KeyToPath,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecretVolumeSource, Service, ServicePort, ServiceSpec, TCPSocketAction,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::ObjectMeta;
use rand::distr::{Alphanumeric, SampleString};

use super::{COMPONENT_BROKER, REDIS_PASSWORD_KEY, REDIS_PORT, child_meta, names, node_selector};
use crate::api::{ChatCluster, SecretKeyRef, VolumeRetention};
use crate::labels;

/// The uid/gid of the `redis` user in the official image.
pub const REDIS_USER: i64 = 999;
/// Length of a generated password (alphanumeric: ~190 bits).
pub const PASSWORD_LENGTH: usize = 32;
/// Name of the data volume (and of the volume claim template) mounted at `/data`.
pub const DATA_VOLUME: &str = "data";
const CONFIG_VOLUME: &str = "auth";
/// Key of the configuration Secret `<name>-redis-config` that holds Redis' configuration file.
pub const REDIS_CONFIG_KEY: &str = "redis.conf";
/// Where the configuration file is mounted in the Redis container.
pub const REDIS_CONFIG_MOUNT_PATH: &str = "/etc/redis/auth";

/// Port of Redis Sentinel (high availability, `spec.redis.replicas` > 1).
pub const SENTINEL_PORT: i32 = 26379;
/// The name Sentinel monitors the primary under (the `<master-name>` of chat-node's
/// `redis+sentinel://` URL).
pub const SENTINEL_MASTER: &str = "chat";
/// Where the password Secret is mounted for the high-availability scripts (`masterauth`,
/// `sentinel auth-pass`).
pub const PASSWORD_MOUNT_PATH: &str = "/etc/redis/password";
const PASSWORD_VOLUME: &str = "password";
/// Writable scratch directories of the high-availability containers: the generated Redis
/// configuration, and Sentinel's, which Sentinel rewrites as it learns.
const RUN_VOLUME: &str = "run";
const RUN_MOUNT_PATH: &str = "/run/redis";
const SENTINEL_VOLUME: &str = "sentinel";
const SENTINEL_MOUNT_PATH: &str = "/run/sentinel";
/// How many 2-second rounds a restarted pod waits for the sentinels to stop naming it the
/// primary (its data is gone unless persisted; a replica holds it) before it starts as the
/// primary anyway (every pod restarted at once).
const PROMOTION_WAIT_ROUNDS: u32 = 30;

/// The DNS name of Redis pod `ordinal` (`<name>-redis-<i>.<name>-redis`, through the headless
/// Service): what the pods announce to Sentinel and chat-nodes connect to.
pub fn pod_host(cluster: &str, ordinal: i32) -> String {
    let redis = names::redis(cluster);
    format!("{redis}-{ordinal}.{redis}")
}

/// The `sh` lines shared by the Redis and Sentinel containers of a highly available Redis:
/// read the password, name this pod, and find the primary by asking the other pods'
/// sentinels. A pod that the sentinels still name the primary has restarted: it waits until
/// they promote a replica (which holds the data) instead of coming back as an empty primary;
/// without any answer (the first start, or every pod restarted) pod 0 is the primary.
fn discovery_script(cluster: &ChatCluster) -> String {
    let name = cluster.name_any();
    let replicas = cluster.spec.redis().replicas();
    let peers: Vec<String> = (0..replicas).map(|i| pod_host(&name, i)).collect();
    format!(
        r#"set -eu
PASS=$(cat {PASSWORD_MOUNT_PATH}/{REDIS_PASSWORD_KEY})
ME="$POD_NAME.{svc}"
ask_sentinels() {{
  for peer in {peers}; do
    [ "$peer" = "$ME" ] && continue
    set -- $(timeout 2 redis-cli -h "$peer" -p {SENTINEL_PORT} --raw sentinel get-master-addr-by-name {SENTINEL_MASTER} 2>/dev/null || true)
    if [ $# -ge 1 ] && [ -n "$1" ]; then echo "$1"; return 0; fi
  done
  return 0
}}
primary=$(ask_sentinels)
rounds=0
while [ "$primary" = "$ME" ] && [ $rounds -lt {PROMOTION_WAIT_ROUNDS} ]; do
  echo "the sentinels still name this pod the primary: waiting for them to promote a replica"
  sleep 2
  rounds=$((rounds + 1))
  primary=$(ask_sentinels)
done
[ -n "$primary" ] || primary={first}
echo "primary: $primary"
"#,
        svc = names::redis(&name),
        peers = peers.join(" "),
        first = peers[0],
    )
}

/// The Redis container's script (high availability): its configuration is the Secret's
/// (`requirepass`) plus `masterauth`, the name it announces and, unless it is the primary,
/// `replicaof`; the server's other flags follow as arguments.
pub fn redis_ha_script(cluster: &ChatCluster) -> String {
    format!(
        r#"{discovery}{{
  cat {REDIS_CONFIG_MOUNT_PATH}/{REDIS_CONFIG_KEY}
  echo "masterauth $PASS"
  echo "replica-announce-ip $ME"
  if [ "$primary" != "$ME" ]; then echo "replicaof $primary {REDIS_PORT}"; fi
}} > {RUN_MOUNT_PATH}/redis.conf
exec redis-server {RUN_MOUNT_PATH}/redis.conf "$@"
"#,
        discovery = discovery_script(cluster),
    )
}

/// The Sentinel container's script: waits until the primary answers, then writes Sentinel's
/// configuration (in a writable directory: Sentinel rewrites it as it learns) and starts it.
pub fn sentinel_script(cluster: &ChatCluster) -> String {
    let redis = cluster.spec.redis();
    format!(
        r#"{discovery}export REDISCLI_AUTH="$PASS"
until timeout 2 redis-cli -h "$primary" -p {REDIS_PORT} ping 2>/dev/null | grep -q PONG; do
  echo "waiting for the primary $primary to answer"
  sleep 1
done
unset REDISCLI_AUTH
cat > {SENTINEL_MOUNT_PATH}/sentinel.conf <<CONF
port {SENTINEL_PORT}
dir {SENTINEL_MOUNT_PATH}
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $ME
sentinel monitor {SENTINEL_MASTER} $primary {REDIS_PORT} {quorum}
sentinel auth-pass {SENTINEL_MASTER} $PASS
sentinel down-after-milliseconds {SENTINEL_MASTER} 5000
sentinel failover-timeout {SENTINEL_MASTER} 20000
sentinel parallel-syncs {SENTINEL_MASTER} 1
CONF
exec redis-server {SENTINEL_MOUNT_PATH}/sentinel.conf --sentinel
"#,
        discovery = discovery_script(cluster),
        quorum = redis.quorum(),
    )
}

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
    let mut args = Vec::new();
    // High availability: the script writes the configuration file and passes these flags on.
    if !redis.sentinel() {
        args.push(format!("{REDIS_CONFIG_MOUNT_PATH}/{REDIS_CONFIG_KEY}"));
    }
    args.extend([
        "--appendonly".into(),
        if persistent { "yes" } else { "no" }.into(),
        "--save".into(),
        String::new(),
        "--dir".into(),
        "/data".into(),
    ]);
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
///
/// High availability: the Service is headless, so that every pod has a DNS name
/// (`<name>-redis-<i>.<name>-redis`) that the pods announce to Sentinel and chat-nodes reach,
/// published before the pod is ready (the pods find each other while starting), with the
/// Sentinel port beside Redis'.
pub fn build_service(cluster: &ChatCluster) -> Service {
    let ha = cluster.spec.redis().sentinel();
    let port = |name: &str, number: i32| ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    let mut ports = vec![port("redis", REDIS_PORT)];
    if ha {
        ports.push(port("sentinel", SENTINEL_PORT));
    }
    Service {
        metadata: redis_meta(cluster, names::redis(&cluster.name_any())),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: ha.then(|| "None".into()),
            publish_not_ready_addresses: ha.then_some(true),
            selector: Some(redis_selector(cluster)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The PodDisruptionBudget `<name>-redis` of a highly available Redis: one pod at a time may
/// be evicted (a drain never takes the primary and a replica together). None for one pod: a
/// budget would only block node drains.
pub fn build_pdb(cluster: &ChatCluster) -> Option<PodDisruptionBudget> {
    if !cluster.spec.redis().sentinel() {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: redis_meta(cluster, names::redis(&cluster.name_any())),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(redis_selector(cluster)),
                match_expressions: None,
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// The Redis StatefulSet `<name>-redis`: `replicas` pods (a Sentinel beside each Redis when
/// more than one), password from the Secret, append-only file on a PersistentVolumeClaim when
/// `storage` is set (else an emptyDir). `default_image` is
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
    let ha = redis.sentinel();
    let pod_name = EnvVar {
        name: "POD_NAME".into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    };
    let (command, args, env) = if ha {
        let mut args = vec!["redis".to_owned()];
        args.extend(server_args(cluster));
        (
            vec!["sh".into(), "-c".into(), redis_ha_script(cluster)],
            args,
            vec![cli_password, pod_name.clone()],
        )
    } else {
        (
            vec!["redis-server".into()],
            server_args(cluster),
            vec![cli_password],
        )
    };
    let mut mounts = vec![
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
    ];
    let (password_volume, password_mount) = super::node_env::secret_file_volume(
        PASSWORD_VOLUME,
        PASSWORD_MOUNT_PATH,
        &SecretKeyRef {
            name: names::redis_secret(&cluster.name_any()),
            key: None,
        },
        REDIS_PASSWORD_KEY.to_owned(),
    );
    if ha {
        mounts.push(password_mount.clone());
        mounts.push(VolumeMount {
            name: RUN_VOLUME.into(),
            mount_path: RUN_MOUNT_PATH.into(),
            ..VolumeMount::default()
        });
    }
    let security_context = super::restricted_security_context();
    let container = Container {
        name: "redis".into(),
        image: Some(redis.image(default_image)),
        command: Some(command),
        args: Some(args),
        env: Some(env),
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
        // High availability: a restarted pod may wait a minute for the sentinels to promote a
        // replica before Redis listens; the liveness probe starts after that.
        startup_probe: ha.then(|| Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("redis".into()),
                host: None,
            }),
            period_seconds: Some(5),
            failure_threshold: Some(36),
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
        security_context: Some(security_context.clone()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let mut containers = vec![container];
    if ha {
        containers.push(Container {
            name: "sentinel".into(),
            image: Some(redis.image(default_image)),
            command: Some(vec!["sh".into(), "-c".into(), sentinel_script(cluster)]),
            env: Some(vec![pod_name]),
            ports: Some(vec![ContainerPort {
                name: Some("sentinel".into()),
                container_port: SENTINEL_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }]),
            readiness_probe: Some(Probe {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "sh".into(),
                        "-c".into(),
                        format!("redis-cli -p {SENTINEL_PORT} ping | grep -q PONG"),
                    ]),
                }),
                period_seconds: Some(5),
                timeout_seconds: Some(2),
                ..Probe::default()
            }),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".into(), Quantity("10m".into())),
                    ("memory".into(), Quantity("16Mi".into())),
                ])),
                limits: Some(BTreeMap::from([("memory".into(), Quantity("64Mi".into()))])),
                ..ResourceRequirements::default()
            }),
            security_context: Some(security_context),
            volume_mounts: Some(vec![
                password_mount,
                VolumeMount {
                    name: SENTINEL_VOLUME.into(),
                    mount_path: SENTINEL_MOUNT_PATH.into(),
                    ..VolumeMount::default()
                },
            ]),
            ..Container::default()
        });
    }
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
    if ha {
        volumes.push(password_volume);
        for scratch in [RUN_VOLUME, SENTINEL_VOLUME] {
            volumes.push(Volume {
                name: scratch.into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(Quantity("1Mi".into())),
                }),
                ..Volume::default()
            });
        }
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
            replicas: Some(redis.replicas()),
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
                    containers,
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
                    // The pod count is immutable: never scaled down.
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
    let ha = cluster.spec.redis().sentinel();
    let port = |number: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(number)),
        protocol: Some("TCP".into()),
        end_port: None,
    };
    let mut ports = vec![port(REDIS_PORT)];
    let mut from = vec![NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(node_selector(cluster)),
            match_expressions: None,
        }),
        ..NetworkPolicyPeer::default()
    }];
    if ha {
        // Replication and Sentinel between the Redis pods; chat-nodes ask Sentinel too.
        ports.push(port(SENTINEL_PORT));
        from.push(NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(redis_selector(cluster)),
                match_expressions: None,
            }),
            ..NetworkPolicyPeer::default()
        });
    }
    NetworkPolicy {
        metadata: redis_meta(cluster, names::redis(&cluster.name_any())),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(redis_selector(cluster)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: Some(ports),
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

    fn ha(name: &str) -> ChatCluster {
        let mut c = cluster(name);
        c.spec.redis = Some(RedisSpec {
            mode: RedisMode::Managed,
            replicas: Some(3),
            ..RedisSpec::default()
        });
        c
    }

    #[test]
    fn one_pod_has_no_sentinel_headless_service_or_budget() {
        let c = cluster("demo");
        assert!(build_pdb(&c).is_none());
        let service = build_service(&c).spec.unwrap();
        assert!(service.cluster_ip.is_none());
        assert_eq!(service.ports.unwrap().len(), 1);
        let pod = build_statefulset(&c, REDIS)
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert_eq!(pod.containers.len(), 1);
        assert_eq!(
            crate::children::node_env::managed_redis_url(&c),
            "redis://demo-redis:6379"
        );
    }

    #[test]
    fn three_pods_run_redis_and_sentinel_behind_a_headless_service_and_a_budget() {
        let c = ha("demo");
        let spec = build_statefulset(&c, REDIS).spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["redis", "sentinel"]);
        let redis = &pod.containers[0];
        assert_eq!(redis.command.as_ref().unwrap()[0], "sh");
        let args = redis.args.as_ref().unwrap();
        assert_eq!(args[0], "redis", "$0 of the script");
        assert!(
            !args.iter().any(|a| a.contains("redis.conf")),
            "the script writes the configuration: {args:?}"
        );
        assert!(redis.startup_probe.is_some());
        let service = build_service(&c).spec.unwrap();
        assert_eq!(service.cluster_ip.as_deref(), Some("None"));
        assert_eq!(service.publish_not_ready_addresses, Some(true));
        let ports: Vec<i32> = service.ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(ports, [6379, 26379]);
        let pdb = build_pdb(&c).unwrap().spec.unwrap();
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
        let rule = &build_network_policy(&c).spec.unwrap().ingress.unwrap()[0];
        assert_eq!(
            rule.from.as_ref().unwrap().len(),
            2,
            "chat-nodes and the Redis pods"
        );
        assert_eq!(rule.ports.as_ref().unwrap().len(), 2);
        assert_eq!(
            crate::children::node_env::managed_redis_url(&c),
            "redis+sentinel://demo-redis-0.demo-redis:26379,demo-redis-1.demo-redis:26379,\
             demo-redis-2.demo-redis:26379/chat"
        );
        let scripts = [redis_ha_script(&c), sentinel_script(&c)];
        assert!(scripts[1].contains("sentinel monitor chat $primary 6379 2\n"));
        assert!(scripts[0].contains("demo-redis-0.demo-redis demo-redis-1.demo-redis"));
    }

    /// The scripts are valid `sh` (the real dash, as in the image): `sh -n` parses without
    /// running.
    #[test]
    fn the_high_availability_scripts_parse_in_sh() {
        let c = ha("demo");
        for script in [redis_ha_script(&c), sentinel_script(&c)] {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &script])
                .output()
                .expect("run sh");
            assert!(
                out.status.success(),
                "{}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let broken = std::process::Command::new("sh")
            .args(["-n", "-c", "if true; then echo"])
            .output()
            .unwrap();
        assert!(!broken.status.success(), "sh -n catches a broken script");
    }
}
