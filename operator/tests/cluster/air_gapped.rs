//! Air-gapped installs: the operator-wide pull secrets (`--image-pull-secrets`) and default
//! operand images (`--default-redis-image`, `--default-collector-image`, `--default-node-image`)
//! reach the pods the real controllers create for every workload of a ChatCluster (chat-node,
//! managed Redis, managed Collector), with the ChatCluster's own `spec.imagePullSecrets` added,
//! and follow edits of the spec.

use std::collections::BTreeMap;

use chat_operator::api::ChatCluster;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::*;

const NODE: &str = "mirror.example.invalid/chatcluster/chat-node:1.0.0";
const REDIS: &str = "mirror.example.invalid/library/redis@sha256:9f2a0c8f9b0e4f6f5d3e2c1b0a99887766554433221100ffeeddccbbaa998877";
const COLLECTOR: &str = "mirror.example.invalid/otel/opentelemetry-collector-contrib:0.165.0";

/// Per pod-owning workload of `cluster` (the pods' `app.kubernetes.io/name`): the images and
/// pull secrets of the pods the controllers created, once every workload has one.
async fn pods_by_app(
    client: &Client,
    ns: &str,
    cluster: &str,
    want: impl Fn(&BTreeMap<String, (Vec<String>, Vec<String>)>) -> bool,
) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("app.kubernetes.io/instance={cluster}");
    wait_for("operand pods as wanted", || async {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .ok()?;
        let mut by_app = BTreeMap::new();
        for pod in list.items {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let app = pod.metadata.labels.as_ref()?["app.kubernetes.io/name"].clone();
            by_app.insert(app, pod_summary(pod.spec?));
        }
        want(&by_app).then_some(by_app)
    })
    .await
}

/// The images and pull secrets of a pod spec.
fn pod_summary(spec: PodSpec) -> (Vec<String>, Vec<String>) {
    let images = spec.containers.iter().filter_map(|c| c.image.clone());
    let secrets = spec.image_pull_secrets.iter().flatten();
    (images.collect(), secrets.map(|s| s.name.clone()).collect())
}

fn summary(template: PodTemplateSpec) -> (Vec<String>, Vec<String>) {
    pod_summary(template.spec.unwrap_or_default())
}

#[tokio::test]
async fn pull_secrets_and_default_images_reach_every_operand_pod() {
    let cp = control_plane().await;
    cp.with_temp_ns("air-gapped", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let _operator = start_operator_with(
            cp,
            &ns,
            &[
                "--default-node-image",
                NODE,
                "--default-redis-image",
                REDIS,
                "--default-collector-image",
                COLLECTOR,
                "--image-pull-secrets",
                "mirror-pull",
            ],
        )
        .await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let cluster: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": "offline"},
            "spec": {
                "replicas": 1,
                "imagePullSecrets": [{"name": "team-pull"}, {"name": "mirror-pull"}],
                "observability": {"collector": {}},
            },
        }))
        .unwrap();
        clusters
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap();

        let both = vec!["mirror-pull".to_owned(), "team-pull".to_owned()];
        let pods = pods_by_app(&client, &ns, "offline", |p| p.len() >= 3).await;
        let expected: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::from([
            ("chat-node".into(), (vec![NODE.into()], both.clone())),
            (
                "otel-collector".into(),
                (vec![COLLECTOR.into()], both.clone()),
            ),
            ("redis".into(), (vec![REDIS.into()], both.clone())),
        ]);
        assert_eq!(
            pods.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "one pod-owning workload per operand: {pods:#?}"
        );
        assert_eq!(pods, expected);

        // The cluster drops its own pull secret and pins a Redis version: the workloads' pod
        // templates pull with the operator's secret only, and Redis runs the mirror's repository
        // at that version. (Templates, not pods: without a kubelet no new pod becomes ready, so
        // the rollouts never finish.)
        clusters
            .patch(
                "offline",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {
                    "imagePullSecrets": null,
                    "redis": {"mode": "managed", "version": "7.2"},
                }})),
            )
            .await
            .unwrap();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        let templates = wait_for("the edited pod templates", || async {
            let mut out = BTreeMap::new();
            for name in ["offline", "offline-otel-collector"] {
                let d = deployments.get(name).await.ok()?;
                out.insert(name.to_owned(), summary(d.spec?.template));
            }
            let sts = statefulsets.get("offline-redis").await.ok()?;
            out.insert("offline-redis".to_owned(), summary(sts.spec?.template));
            out.values()
                .all(|(_, secrets)| secrets == &["mirror-pull"])
                .then_some(out)
        })
        .await;
        assert_eq!(
            templates,
            BTreeMap::from([
                (
                    "offline".into(),
                    (vec![NODE.into()], vec!["mirror-pull".into()])
                ),
                (
                    "offline-otel-collector".into(),
                    (vec![COLLECTOR.into()], vec!["mirror-pull".into()])
                ),
                (
                    "offline-redis".into(),
                    (
                        vec!["mirror.example.invalid/library/redis:7.2".into()],
                        vec!["mirror-pull".into()]
                    )
                ),
            ])
        );
    })
    .await;
}
