//! `spec.autoscaling` against the real kube-controller-manager's HorizontalPodAutoscaler
//! controller: the operator's HPA targets the ChatCluster's scale subresource, the controller
//! reads it (replicas and the pod selector from the status) and writes `spec.replicas` back
//! through it, and the operator carries that to the Deployment.
//!
//! No custom metrics adapter runs here, so the controller cannot read
//! `websocket_active_connections`: it can only enforce `minReplicas`/`maxReplicas`, which is
//! what these tests drive; that it asks for the right metric is asserted from its condition.

use chat_operator::api::ChatCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::*;

async fn deployment_replicas(deployments: &Api<Deployment>, name: &str, want: i32) {
    wait_for(&format!("Deployment {name} at {want} replicas"), || async {
        let d = deployments.get_opt(name).await.ok().flatten()?;
        (d.spec?.replicas == Some(want)).then_some(())
    })
    .await
}

/// The condition `type_` of the autoscaler once its status is `status` (the controller's
/// discovery learns of the ChatCluster kind within its 30 s refresh; until then it reports
/// `FailedGetScale`).
async fn hpa_condition(
    hpas: &Api<HorizontalPodAutoscaler>,
    name: &str,
    type_: &str,
    status: &str,
) -> (String, String) {
    wait_for(&format!("HPA condition {type_}={status}"), || async {
        let hpa = hpas.get_opt(name).await.ok().flatten()?;
        hpa.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| (c.reason.unwrap_or_default(), c.message.unwrap_or_default()))
    })
    .await
}

#[tokio::test]
async fn the_hpa_controller_scales_the_chatcluster_within_its_bounds() {
    let cp = control_plane().await;
    cp.with_temp_ns("autoscale", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let operator = start_operator(cp, &ns).await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
        // One replica asked for, at least three allowed: the autoscaler must raise it.
        let cluster: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": "talk"},
            "spec": {"anonymous": true, "replicas": 1, "autoscaling": {
                "minReplicas": 3, "maxReplicas": 5, "targetConnectionsPerPod": 100}}}))
        .unwrap();
        clusters
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap();

        let hpa: HorizontalPodAutoscaler = wait_for_object(&client, &ns, "talk").await;
        assert_eq!(hpa.spec.scale_target_ref.kind, "ChatCluster");
        assert_eq!(hpa.metadata.owner_references.unwrap()[0].name, "talk");

        // The controller read the scale subresource (replicas and selector) and wrote 3 to it.
        hpa_condition(&hpas, "talk", "AbleToScale", "True").await;
        wait_for("spec.replicas raised to minReplicas", || async {
            let c = clusters.get("talk").await.ok()?;
            (c.spec.replicas == Some(3)).then_some(())
        })
        .await;
        deployment_replicas(&deployments, "talk", 3).await;

        // Above maxReplicas (someone scaled by hand): brought back to 5.
        clusters
            .patch(
                "talk",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 9}})),
            )
            .await
            .unwrap();
        deployment_replicas(&deployments, "talk", 5).await;

        // Within the bounds it needs the connections metric, which nothing serves here.
        let (reason, message) = hpa_condition(&hpas, "talk", "ScalingActive", "False").await;
        assert_eq!(reason, "FailedGetPodsMetric", "{message}");
        assert!(
            message.contains("websocket_active_connections"),
            "{message}"
        );

        // Without spec.autoscaling the autoscaler is deleted, and replicas stay as they are.
        clusters
            .patch(
                "talk",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"autoscaling": null}})),
            )
            .await
            .unwrap();
        wait_for_absence::<HorizontalPodAutoscaler>(&client, &ns, "talk").await;
        deployment_replicas(&deployments, "talk", 5).await;
        operator.stop().await;
    })
    .await;
}

#[tokio::test]
async fn autoscaling_bounds_are_validated_at_admission() {
    let cp = control_plane().await;
    cp.with_temp_ns("autoscale-bad", |_client, ns| async move {
        for (autoscaling, expected) in [
            (
                json!({"maxReplicas": 1}),
                "minReplicas (default 2) must not exceed maxReplicas",
            ),
            (
                json!({"minReplicas": 4, "maxReplicas": 3}),
                "must not exceed maxReplicas",
            ),
            (
                json!({"minReplicas": 2}),
                "spec.autoscaling.maxReplicas: Required value",
            ),
            (
                json!({"maxReplicas": 3, "targetConnectionsPerPod": 0}),
                "spec.autoscaling.targetConnectionsPerPod: Invalid value",
            ),
        ] {
            let cluster = json!({
                "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
                "metadata": {"name": "bad", "namespace": ns},
                "spec": {"anonymous": true, "autoscaling": autoscaling}});
            let (ok, _, err) = kubectl_stdin(cp, &["create", "-f", "-"], &cluster.to_string());
            assert!(!ok && err.contains(expected), "{autoscaling}: {err}");
        }
    })
    .await;
}
