//! The managed Redis: a one-replica StatefulSet, its Service, its password Secret (created once,
//! never regenerated) and a NetworkPolicy that admits only this cluster's chat-node pods.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, SeccompProfile, Secret, SecretKeySelector, SecurityContext, Service, ServicePort,
    ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
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
use crate::api::ChatCluster;
use crate::labels;

/// The uid/gid of the `redis` user in the official image.
pub const REDIS_USER: i64 = 999;
/// Length of a generated password (alphanumeric: ~190 bits).
pub const PASSWORD_LENGTH: usize = 32;
const DATA_VOLUME: &str = "data";

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

/// The password Secret `<name>-redis-auth` (key `password`). The reconciler creates it once and
/// never updates it: regenerating would lock running chat-nodes out of Redis.
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
/// file on a PersistentVolumeClaim when `storage` is set (else an emptyDir).
pub fn build_statefulset(cluster: &ChatCluster) -> StatefulSet {
    let name = names::redis(&cluster.name_any());
    let redis = cluster.spec.redis();
    let persistent = redis.storage.is_some();
    let password_env = |var: &str| EnvVar {
        name: var.into(),
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
        image: Some(redis.image()),
        args: Some(vec![
            "--requirepass".into(),
            "$(REDIS_PASSWORD)".into(),
            "--appendonly".into(),
            if persistent { "yes" } else { "no" }.into(),
            "--save".into(),
            String::new(),
            "--dir".into(),
            "/data".into(),
        ]),
        // REDISCLI_AUTH lets the readiness probe's redis-cli authenticate without a flag.
        env: Some(vec![
            password_env("REDIS_PASSWORD"),
            password_env("REDISCLI_AUTH"),
        ]),
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
        volume_mounts: Some(vec![VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: "/data".into(),
            ..VolumeMount::default()
        }]),
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
    let volumes = (!persistent).then(|| {
        vec![Volume {
            name: DATA_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]
    });
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
                    volumes,
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
    use crate::api::{RedisMode, RedisSpec, RedisStorage};
    use crate::children::fixtures::cluster;

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
    }

    #[test]
    fn statefulset_defaults_to_emptydir_and_reads_password_from_secret() {
        let sts = build_statefulset(&cluster("demo"));
        assert_eq!(sts.metadata.name.as_deref(), Some("demo-redis"));
        let spec = sts.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert!(spec.volume_claim_templates.is_none());
        let pod = spec.template.spec.unwrap();
        assert!(pod.volumes.unwrap()[0].empty_dir.is_some());
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("docker.io/library/redis:7.4"));
        assert!(
            c.args
                .as_ref()
                .unwrap()
                .contains(&"$(REDIS_PASSWORD)".to_string())
        );
        let secret = c.env.as_ref().unwrap()[0]
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
    fn storage_becomes_a_volume_claim_and_version_the_tag() {
        let mut c = cluster("demo");
        c.spec.redis = Some(RedisSpec {
            mode: RedisMode::Managed,
            version: Some("7.2".into()),
            storage: Some(RedisStorage {
                size: Quantity("2Gi".into()),
                storage_class_name: Some("fast".into()),
            }),
            ..RedisSpec::default()
        });
        let spec = build_statefulset(&c).spec.unwrap();
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
        assert!(pod.volumes.is_none());
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
