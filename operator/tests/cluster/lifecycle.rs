//! Day-2 behaviour: scale, roll, pause, drift repair, orphan sweep, errors with backoff,
//! garbage collection, and a steady state that writes nothing.

use std::collections::BTreeMap;

use chat_operator::api::{ChatCluster, ChatClusterSpec, NodeSpec, Phase};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::support::*;

async fn create_cluster(
    client: &Client,
    ns: &str,
    name: &str,
    spec: ChatClusterSpec,
) -> ChatCluster {
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &ChatCluster::new(name, spec))
        .await
        .expect("create ChatCluster")
}

async fn merge_spec(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": spec })),
    )
    .await
    .expect("patch spec");
}

fn template_env(d: &Deployment, name: &str) -> Option<String> {
    let c = &d.spec.as_ref()?.template.spec.as_ref()?.containers[0];
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// What only a write by the operator changes: the spec's generation and the operator's own
/// managedFields entries (manager, operation, time, fields).
fn operator_writes(d: &Deployment) -> (Option<i64>, String) {
    let mine: Vec<_> = d
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|f| f.manager.as_deref() == Some(chat_operator::labels::MANAGER))
        .collect();
    (d.metadata.generation, serde_json::to_string(&mine).unwrap())
}

async fn resource_versions(client: &Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    let mut rvs = BTreeMap::new();
    let mut put = |k: &str, rv: Option<String>| {
        rvs.insert(k.to_string(), rv.unwrap_or_default());
    };
    let c: ChatCluster = Api::namespaced(client.clone(), ns).get(name).await.unwrap();
    put("ChatCluster", c.resource_version());
    let d: Deployment = Api::namespaced(client.clone(), ns).get(name).await.unwrap();
    put("Deployment", d.resource_version());
    for svc in [
        name.to_string(),
        format!("{name}-admin"),
        format!("{name}-redis"),
    ] {
        let s: Service = Api::namespaced(client.clone(), ns).get(&svc).await.unwrap();
        put(&format!("Service/{svc}"), s.resource_version());
    }
    let sts: StatefulSet = Api::namespaced(client.clone(), ns)
        .get(&format!("{name}-redis"))
        .await
        .unwrap();
    put("StatefulSet", sts.resource_version());
    let np: NetworkPolicy = Api::namespaced(client.clone(), ns)
        .get(&format!("{name}-redis"))
        .await
        .unwrap();
    put("NetworkPolicy", np.resource_version());
    let secret: Secret = Api::namespaced(client.clone(), ns)
        .get(&format!("{name}-redis-auth"))
        .await
        .unwrap();
    put("Secret", secret.resource_version());
    let pdb: PodDisruptionBudget = Api::namespaced(client.clone(), ns).get(name).await.unwrap();
    put("PodDisruptionBudget", pdb.resource_version());
    rvs
}

#[tokio::test]
async fn steady_state_writes_nothing() {
    // On the real node: the chat-node and Redis pods run and turn Ready by their own probes, so
    // "steady" includes the kubelet's status writes and kube-controller-manager's that follow.
    let cp = node_control_plane().await;
    cp.with_temp_ns("steady", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let operator = start_operator(cp, &ns).await;
        create_cluster(&client, &ns, "calm", ChatClusterSpec::default()).await;
        let _: Deployment = wait_for_object(&client, &ns, "calm").await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        wait_for("calm Ready", || async {
            (clusters.get("calm").await.ok()?.status?.phase == Some(Phase::Ready)).then_some(())
        })
        .await;
        // Let in-flight reconciles and kube-controller-manager's status writes (Deployment,
        // StatefulSet, the PDB's healthy count) that follow the pods' readiness settle: wait
        // for one run with no change at all. An operator that writes on every run never
        // gets there.
        let mut settled = None;
        let mut last = resource_versions(&client, &ns, "calm").await;
        for _ in 0..15 {
            operator.wait_for_more_runs(1).await;
            let now = resource_versions(&client, &ns, "calm").await;
            if now == last {
                settled = Some(now);
                break;
            }
            last = now;
        }
        let before = settled.expect("the objects never stopped changing between two runs");
        let password_before: Secret = Api::namespaced(client.clone(), &ns)
            .get("calm-redis-auth")
            .await
            .unwrap();
        // Several resyncs (1 s each) of an unchanged ChatCluster.
        operator.wait_for_more_runs(4).await;
        let after = resource_versions(&client, &ns, "calm").await;
        assert_eq!(
            before, after,
            "a resync of an unchanged ChatCluster wrote something"
        );
        let password_after: Secret = Api::namespaced(client.clone(), &ns)
            .get("calm-redis-auth")
            .await
            .unwrap();
        assert_eq!(
            password_before.data, password_after.data,
            "the Redis password was regenerated"
        );
        operator.stop().await;
    })
    .await;
}

#[tokio::test]
async fn scale_roll_and_orphan_sweep() {
    let cp = control_plane().await;
    cp.with_temp_ns("scale", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let operator = start_operator(cp, &ns).await;
        create_cluster(&client, &ns, "grow", ChatClusterSpec::default()).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let first: Deployment = wait_for_object(&client, &ns, "grow").await;
        let _: PodDisruptionBudget = wait_for_object(&client, &ns, "grow").await;

        // The generated Redis password names its writer in managedFields (was `unknown`).
        let secret: Secret = wait_for_object(&client, &ns, "grow-redis-auth").await;
        let managers: Vec<_> = secret
            .managed_fields()
            .iter()
            .filter_map(|f| f.manager.as_deref())
            .collect();
        assert_eq!(managers, ["chat-operator"]);

        // kubectl scale goes through the scale subresource.
        kubectl_ok(cp, &["scale", "chat/grow", "-n", &ns, "--replicas=4"]);
        wait_for("Deployment at 4 replicas", || async {
            (deployments.get("grow").await.ok()?.spec?.replicas == Some(4)).then_some(())
        })
        .await;
        let scale = kubectl_ok(
            cp,
            &[
                "get",
                "--raw",
                &format!("/apis/realtime.dev/v1alpha1/namespaces/{ns}/chatclusters/grow/scale"),
            ],
        );
        assert!(scale.contains("\"replicas\":4"), "{scale}");
        assert!(
            scale.contains("app.kubernetes.io/instance=grow"),
            "scale exposes the selector: {scale}"
        );

        // One replica: the PDB is no longer wanted and is swept.
        kubectl_ok(cp, &["scale", "chat/grow", "-n", &ns, "--replicas=1"]);
        wait_for_absence::<PodDisruptionBudget>(&client, &ns, "grow").await;

        // A spec change rolls the Deployment (new pod template).
        merge_spec(
            &client,
            &ns,
            "grow",
            json!({"node": {"heartbeatInterval": "15s"}}),
        )
        .await;
        let rolled = wait_for("new pod template", || async {
            let d = deployments.get("grow").await.ok()?;
            (template_env(&d, "CHAT_HEARTBEAT_INTERVAL").as_deref() == Some("15s")).then_some(d)
        })
        .await;
        assert!(rolled.metadata.generation > first.metadata.generation);

        // Adding an ingress adds an Ingress; removing it sweeps it.
        merge_spec(
            &client,
            &ns,
            "grow",
            json!({"anonymous": true, "ingress": {"host": "chat.example.com"}}),
        )
        .await;
        let _: k8s_openapi::api::networking::v1::Ingress =
            wait_for_object(&client, &ns, "grow").await;
        merge_spec(&client, &ns, "grow", json!({"ingress": null})).await;
        wait_for_absence::<k8s_openapi::api::networking::v1::Ingress>(&client, &ns, "grow").await;
        operator.stop().await;
    })
    .await;
}

#[tokio::test]
async fn drift_is_repaired_and_deletion_garbage_collects() {
    let cp = control_plane().await;
    cp.with_temp_ns("drift", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let operator = start_operator(cp, &ns).await;
        create_cluster(&client, &ns, "fix", ChatClusterSpec::default()).await;
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let original: Service = wait_for_object(&client, &ns, "fix").await;

        // A deleted child comes back.
        services
            .delete("fix", &DeleteParams::default())
            .await
            .unwrap();
        wait_for("Service recreated", || async {
            let s = services.get_opt("fix").await.ok()??;
            (s.uid() != original.uid()).then_some(())
        })
        .await;

        // A hand edit of a field the operator sets is reverted.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let _: Deployment = wait_for_object(&client, &ns, "fix").await;
        kubectl_ok(
            cp,
            &[
                "patch",
                "deployment",
                "fix",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"replicas":7}}"#,
            ],
        );
        wait_for("replicas reverted to 2", || async {
            (deployments.get("fix").await.ok()?.spec?.replicas == Some(2)).then_some(())
        })
        .await;

        // Deleting the ChatCluster garbage-collects every child (kube-controller-manager).
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        clusters
            .delete("fix", &DeleteParams::foreground())
            .await
            .unwrap();
        wait_for_absence::<Deployment>(&client, &ns, "fix").await;
        wait_for_absence::<Service>(&client, &ns, "fix").await;
        wait_for_absence::<StatefulSet>(&client, &ns, "fix-redis").await;
        wait_for_absence::<Secret>(&client, &ns, "fix-redis-auth").await;
        operator.stop().await;
    })
    .await;
}

#[tokio::test]
async fn paused_stops_all_writes_until_resumed() {
    let cp = control_plane().await;
    cp.with_temp_ns("paused", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let operator = start_operator(cp, &ns).await;
        create_cluster(&client, &ns, "hold", ChatClusterSpec::default()).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let _: Deployment = wait_for_object(&client, &ns, "hold").await;

        merge_spec(&client, &ns, "hold", json!({"paused": true, "replicas": 5})).await;
        wait_for("Paused condition", || async {
            let s = clusters.get("hold").await.ok()?.status?;
            (s.condition("Paused")?.status == "True" && s.phase == Some(Phase::Paused))
                .then_some(())
        })
        .await;
        services
            .delete("hold-admin", &DeleteParams::default())
            .await
            .unwrap();
        // Not the resourceVersion: kube-controller-manager keeps writing the Deployment's
        // status (its ReplicaSet, pod counts) while it settles, paused or not.
        let before = operator_writes(&deployments.get("hold").await.unwrap());
        operator.wait_for_more_runs(3).await;
        let d = deployments.get("hold").await.unwrap();
        assert_eq!(
            operator_writes(&d),
            before,
            "paused, yet the operator wrote the Deployment"
        );
        assert_eq!(d.spec.unwrap().replicas, Some(2));
        assert!(
            services.get_opt("hold-admin").await.unwrap().is_none(),
            "paused, yet a child was restored"
        );

        merge_spec(&client, &ns, "hold", json!({"paused": false})).await;
        wait_for("resumed: replicas 5 and admin Service back", || async {
            let replicas = deployments.get("hold").await.ok()?.spec?.replicas;
            let admin = services.get_opt("hold-admin").await.ok()?;
            (replicas == Some(5) && admin.is_some()).then_some(())
        })
        .await;
        operator.stop().await;
    })
    .await;
}

#[tokio::test]
async fn apply_errors_degrade_with_events_and_recover_with_backoff() {
    let cp = control_plane().await;
    cp.with_temp_ns("errors", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        // A quota of zero Deployments: the API server refuses the apply that would create the
        // chat-node Deployment. (A foreign Deployment of the same name is no apply error any
        // more: the operator leaves it alone with reason Conflict, see ownership.rs.)
        let quota = json!({"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "no-deployments", "namespace": ns},
            "spec": {"hard": {"count/deployments.apps": "0"}}});
        let (ok, _, stderr) = kubectl_stdin(cp, &["apply", "-f", "-"], &quota.to_string());
        assert!(ok, "{stderr}");
        wait_for("the quota to be enforced", || async {
            let (ok, out, _) = kubectl(
                cp,
                &[
                    "get",
                    "resourcequota",
                    "no-deployments",
                    "-n",
                    &ns,
                    "-o",
                    "jsonpath={.status.hard}",
                ],
            );
            (ok && out.contains("count/deployments.apps")).then_some(())
        })
        .await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let operator = start_operator(cp, &ns).await;
        create_cluster(
            &client,
            &ns,
            "clash",
            ChatClusterSpec {
                replicas: Some(1),
                node: Some(NodeSpec::default()),
                ..ChatClusterSpec::default()
            },
        )
        .await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let degraded = wait_for("Degraded", || async {
            let s = clusters.get("clash").await.ok()?.status?;
            let c = s.condition("Degraded")?.clone();
            (c.status == "True").then_some(c)
        })
        .await;
        assert_eq!(degraded.reason, "ReconcileFailed");
        assert!(
            degraded
                .message
                .contains("failed to apply Deployment/clash"),
            "{}",
            degraded.message
        );
        let failures = operator.metrics.encode();
        assert!(
            failures.contains("chat_operator_reconcile_failures_total{error=\"apply_child\"}"),
            "{failures}"
        );
        let events = kubectl_ok(
            cp,
            &[
                "get",
                "events",
                "-n",
                &ns,
                "--field-selector",
                "reason=ReconcileFailed,type=Warning",
                "-o",
                "name",
            ],
        );
        assert!(!events.trim().is_empty(), "a Warning Event per error");

        // Remove the obstacle: the retry (exponential backoff, capped at 2 s here) succeeds.
        kubectl_ok(
            cp,
            &["delete", "resourcequota", "no-deployments", "-n", &ns],
        );
        wait_for("recovered", || async {
            let s = clusters.get("clash").await.ok()?.status?;
            (s.condition("Degraded")?.status == "False").then_some(())
        })
        .await;
        let d = deployments.get("clash").await.unwrap();
        assert_eq!(d.metadata.owner_references.unwrap()[0].kind, "ChatCluster");
        operator.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_older_password_secret_gets_a_redis_config_file_with_the_same_password() {
    let cp = control_plane().await;
    cp.with_temp_ns("upgrade-secret", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        // The Secret as an operator before this one made it: only `password`, controlled by
        // the ChatCluster.
        let cluster = create_cluster(&client, &ns, "old", ChatClusterSpec::default()).await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let old: Secret = serde_json::from_value(json!({
            "metadata": {"name": "old-redis-auth", "ownerReferences": [{
                "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster", "name": "old",
                "uid": cluster.uid().unwrap(), "controller": true}]},
            "stringData": {"password": "Abc123"}
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &old).await.unwrap();

        let operator = start_operator(cp, &ns).await;
        let config: Secret = wait_for_object(&client, &ns, "old-redis-config").await;
        assert_eq!(
            config.data.unwrap()["redis.conf"].0,
            b"requirepass Abc123\n"
        );
        let password = secrets.get("old-redis-auth").await.unwrap();
        assert_eq!(password.data.unwrap()["password"].0, b"Abc123", "kept");
        assert!(chat_operator::children::is_controlled_by(
            &cluster,
            &config.metadata
        ));
        operator.stop().await;
    })
    .await;
}
