//! The chat-node Deployment.
//!
//! Rolling updates never drop below the wanted capacity (`maxUnavailable: 0`). On shutdown a
//! pod first sleeps in `preStop` so endpoints stop routing to it, then chat-node drains its
//! connections over the drain timeout; `terminationGracePeriodSeconds` covers both plus a margin.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, HTTPGetAction, Lifecycle, LifecycleHandler,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SleepAction,
    TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use super::{
    ADMIN_PORT, API_PORT, COMPONENT_SERVER, WS_PORT, child_meta, names, node_env, node_labels,
    node_selector, server_api,
};
use crate::api::ChatCluster;
use crate::labels;

/// Name of the chat-node container.
pub const CONTAINER: &str = "chat-node";
/// Seconds a terminating pod waits before chat-node gets SIGTERM, so that endpoint removal
/// has propagated and no new connection arrives while it drains.
pub const PRE_STOP_SLEEP_SECONDS: i64 = 5;
/// Extra seconds after preStop + drain before the kubelet kills the pod.
pub const GRACE_MARGIN_SECONDS: i64 = 10;
/// The non-root user chat-node runs as (the distroless `nonroot` user).
pub const RUN_AS_USER: i64 = 65532;

/// `terminationGracePeriodSeconds` for this cluster: longer than preStop plus the drain timeout.
pub fn termination_grace_period_seconds(cluster: &ChatCluster) -> i64 {
    PRE_STOP_SLEEP_SECONDS + cluster.spec.node().drain_timeout_seconds() + GRACE_MARGIN_SECONDS
}

/// The chat-node Deployment running `image` (resolved by [`crate::api::resolve_node_image`]).
/// `extra_env` is appended to the container's environment.
pub fn build(cluster: &ChatCluster, image: &str, extra_env: &[EnvVar]) -> Deployment {
    let name = cluster.name_any();
    let overrides = cluster.spec.pod_template();

    let mut pod_labels = overrides.labels.clone().unwrap_or_default();
    pod_labels.extend(node_labels(cluster)); // ours win
    let pod_annotations = overrides.annotations.clone().filter(|a| !a.is_empty());

    let mut env = node_env::build(cluster);
    env.extend(extra_env.iter().cloned());
    let (volumes, mounts): (Vec<_>, Vec<_>) = node_env::volumes(cluster).into_iter().unzip();

    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };

    let container = Container {
        name: CONTAINER.into(),
        image: Some(image.into()),
        ports: Some(vec![
            ContainerPort {
                name: Some("ws".into()),
                container_port: WS_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: ADMIN_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(server_api::PORT_NAME.into()),
                container_port: API_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        env: Some(env),
        resources: cluster.spec.resources.clone(),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(super::restricted_security_context()),
        // None rather than [] when empty: the pod template must not change for clusters that
        // have no volume (an operator upgrade would otherwise roll them).
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Container::default()
    };

    let topology_spread_constraints = overrides
        .topology_spread_constraints
        .clone()
        .unwrap_or_else(|| default_topology_spread(cluster));

    let pod = PodSpec {
        containers: vec![container],
        volumes: (!volumes.is_empty()).then_some(volumes),
        termination_grace_period_seconds: Some(termination_grace_period_seconds(cluster)),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            // The Secret files (API key, JWT key, Redis CA) are mounted 0440: the kubelet gives
            // them this group, or the non-root chat-node could not read them (it crash-looped
            // on the API key with "Permission denied").
            fs_group: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        topology_spread_constraints: Some(topology_spread_constraints),
        node_selector: overrides.node_selector.clone(),
        tolerations: overrides.tolerations.clone(),
        affinity: overrides.affinity.clone(),
        priority_class_name: overrides.priority_class_name.clone(),
        ..PodSpec::default()
    };

    Deployment {
        metadata: child_meta(
            cluster,
            names::main(&name),
            labels::APP_CHAT_NODE,
            COMPONENT_SERVER,
        ),
        spec: Some(DeploymentSpec {
            replicas: Some(cluster.spec.replicas()),
            selector: LabelSelector {
                match_labels: Some(node_selector(cluster)),
                match_expressions: None,
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: pod_annotations,
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// Spread over nodes and zones, best effort (a single-node cluster still schedules).
fn default_topology_spread(cluster: &ChatCluster) -> Vec<TopologySpreadConstraint> {
    ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(node_selector(cluster)),
                match_expressions: None,
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::Toleration;

    use super::*;
    use crate::api::{NodeSpec, PodTemplateOverrides};
    use crate::children::fixtures::cluster;

    const IMAGE: &str = "ghcr.io/chatcluster/chat-node:9.9.9";

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    #[test]
    fn defaults_replicas_image_and_rolling_update_without_unavailability() {
        let d = build(&cluster("demo"), IMAGE, &[]);
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("demo"));
        assert_eq!(spec.replicas, Some(2));
        let rolling = spec
            .strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap();
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
        let c = &pod(&d).containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some(IMAGE),
            "the resolved image, as given"
        );
        assert!(
            c.command.is_none() && c.args.is_none(),
            "config is env-only"
        );
    }

    #[test]
    fn probes_hit_the_admin_port() {
        let d = build(&cluster("demo"), IMAGE, &[]);
        let c = &pod(&d).containers[0];
        let live = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"));
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        assert_eq!(live.port, IntOrString::String("admin".into()));
        assert_eq!(ready.port, IntOrString::String("admin".into()));
        let ports: Vec<_> = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [
                ("ws".to_string(), 8080),
                ("admin".to_string(), 9091),
                ("api".to_string(), 9092)
            ]
        );
    }

    #[test]
    fn grace_period_outlasts_pre_stop_and_drain() {
        let mut c = cluster("demo");
        c.spec.node = Some(NodeSpec {
            drain_timeout: Some("60s".into()),
            ..NodeSpec::default()
        });
        let d = build(&c, IMAGE, &[]);
        let grace = pod(&d).termination_grace_period_seconds.unwrap();
        assert!(grace > PRE_STOP_SLEEP_SECONDS + 60, "grace {grace}");
        let sleep = pod(&d).containers[0]
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .sleep
            .as_ref()
            .unwrap()
            .seconds;
        assert_eq!(sleep, PRE_STOP_SLEEP_SECONDS);
    }

    #[test]
    fn security_context_is_restricted() {
        let d = build(&cluster("demo"), IMAGE, &[]);
        let p = pod(&d);
        let psc = p.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        // the 0440 Secret files belong to the user's group: readable by chat-node
        assert_eq!(psc.fs_group, psc.run_as_user);
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let sc = p.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(p.automount_service_account_token, Some(false));
    }

    #[test]
    fn spreads_over_nodes_and_zones_by_default() {
        let d = build(&cluster("demo"), IMAGE, &[]);
        let tsc = pod(&d).topology_spread_constraints.as_ref().unwrap();
        let keys: Vec<_> = tsc.iter().map(|t| t.topology_key.as_str()).collect();
        assert_eq!(
            keys,
            ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        );
        assert_eq!(
            tsc[0]
                .label_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[labels::INSTANCE],
            "demo"
        );
    }

    #[test]
    fn pod_template_overrides_are_merged_and_selector_labels_win() {
        let mut c = cluster("demo");
        c.spec.pod_template = Some(PodTemplateOverrides {
            labels: Some(BTreeMap::from([
                ("tier".into(), "realtime".into()),
                (labels::NAME.into(), "hijack".into()),
            ])),
            annotations: Some(BTreeMap::from([("a".into(), "b".into())])),
            node_selector: Some(BTreeMap::from([("pool".into(), "chat".into())])),
            tolerations: Some(vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Exists".into()),
                ..Toleration::default()
            }]),
            topology_spread_constraints: Some(vec![]),
            priority_class_name: Some("high".into()),
            affinity: None,
        });
        let d = build(&c, IMAGE, &[]);
        let meta = d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
        let pod_labels = meta.labels.as_ref().unwrap();
        assert_eq!(pod_labels["tier"], "realtime");
        assert_eq!(pod_labels[labels::NAME], "chat-node");
        assert_eq!(meta.annotations.as_ref().unwrap()["a"], "b");
        let p = pod(&d);
        assert_eq!(p.node_selector.as_ref().unwrap()["pool"], "chat");
        assert_eq!(p.tolerations.as_ref().unwrap().len(), 1);
        assert_eq!(p.priority_class_name.as_deref(), Some("high"));
        assert_eq!(p.topology_spread_constraints.as_deref(), Some(&[][..]));
    }

    #[test]
    fn extra_env_is_appended() {
        let extra = EnvVar {
            name: "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            value: Some("http://demo-otel-collector:4317".into()),
            value_from: None,
        };
        let d = build(&cluster("demo"), IMAGE, std::slice::from_ref(&extra));
        let env = pod(&d).containers[0].env.as_ref().unwrap();
        assert_eq!(env.last(), Some(&extra));
    }

    #[test]
    fn replicas_follow_spec() {
        let mut c = cluster("demo");
        c.spec.replicas = Some(5);
        assert_eq!(build(&c, IMAGE, &[]).spec.unwrap().replicas, Some(5));
    }
}
