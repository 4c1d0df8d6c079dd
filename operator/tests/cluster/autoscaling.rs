//! `spec.autoscaling` against the real kube-controller-manager's HorizontalPodAutoscaler
//! controller: the operator's HPA targets the ChatCluster's scale subresource, the controller
//! reads it (replicas and the pod selector from the status) and writes `spec.replicas` back
//! through it, and the operator carries that to the Deployment.
//!
//! On the API-only control plane no custom metrics adapter runs, so the controller can only
//! enforce `minReplicas`/`maxReplicas`; that it asks for the right metric is asserted from its
//! condition. On the real node, Prometheus and a custom metrics adapter serve the metric, and
//! real connections scale the pods.

use chat_operator::api::ChatCluster;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

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

/// On the real node, with what a platform runs for it: Prometheus scraping the chat-nodes and a
/// custom metrics adapter (the documented prometheus-adapter rule) serving
/// `websocket_active_connections` through the API server's aggregation layer. Real WebSocket
/// connections move the real HorizontalPodAutoscaler controller: up to `maxReplicas` when the
/// pod holds three times its target, and down to `minReplicas` once they close.
#[tokio::test]
async fn open_connections_scale_the_chat_nodes_up_and_down() {
    use chat_operator::api::CONNECTIONS_METRIC;
    use test_harness::metrics::PodMetrics;

    let cp = node_control_plane().await;
    cp.with_temp_ns("autoscale-conn", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let operator = start_operator(cp, &ns).await;
        let metrics = PodMetrics::start(
            cp,
            test_harness::node::BRIDGE_IP,
            &ns,
            "admin",
            CONNECTIONS_METRIC,
        )
        .await
        .unwrap();
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
        let cluster: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": "busy"},
            "spec": {"anonymous": true, "autoscaling": {
                "minReplicas": 1, "maxReplicas": 3, "targetConnectionsPerPod": 2,
                "scaleDownStabilizationSeconds": 0}}}))
        .unwrap();
        clusters
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap();
        // `replicas` left out, as docs/autoscaling.md asks: the API server defaults it (the scale
        // subresource answers the autoscaler only when it exists), and the autoscaler brings it
        // to minReplicas.
        assert_eq!(clusters.get("busy").await.unwrap().spec.replicas, Some(2));
        deployment_replicas(&deployments, "busy", 1).await;
        let selector = "app.kubernetes.io/name=chat-node,app.kubernetes.io/instance=busy";
        let (pod, ip, _) = wait_for("one chat-node ready", || async {
            let pods = ready_pods(&client, &ns, selector).await;
            (pods.len() == 1).then(|| pods[0].clone())
        })
        .await;

        // The metric reaches the API server: Prometheus scraped the pod, the adapter answers.
        let path = format!(
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/*/{CONNECTIONS_METRIC}"
        );
        let value_of = |pod: String| {
            let metrics = &metrics;
            let path = path.clone();
            async move {
                let list: serde_json::Value =
                    serde_json::from_str(&metrics.get_raw(&path).ok()?).ok()?;
                list["items"]
                    .as_array()?
                    .iter()
                    .find(|item| item["describedObject"]["name"] == pod.as_str())
                    .and_then(|item| item["value"].as_str().map(str::to_owned))
            }
        };
        wait_for("the adapter serves 0 connections for the pod", || {
            let value = value_of(pod.clone());
            async move { (value.await.as_deref() == Some("0")).then_some(()) }
        })
        .await;
        let (reason, message) = hpa_condition(&hpas, "busy", "ScalingActive", "True").await;
        assert_eq!(reason, "ValidMetricFound", "{message}");

        // Six open connections on a pod that should hold two: three pods (= maxReplicas). Each
        // is read all along (answering the node's pings) until the test closes it.
        let stop = CancellationToken::new();
        let mut clients = Vec::new();
        for _ in 0..6 {
            let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{ip}:8080/ws"))
                .await
                .unwrap();
            let stop = stop.clone();
            clients.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        message = socket.next() => match message {
                            Some(Ok(Message::Close(frame))) => return Err(format!("closed by the node: {frame:?}")),
                            Some(Ok(_)) => {}
                            Some(Err(err)) => return Err(err.to_string()),
                            None => return Err("connection ended".to_owned()),
                        },
                    }
                }
                socket.close(None).await.map_err(|e| e.to_string())
            }));
        }
        wait_for("the adapter serves 6 connections for the pod", || {
            let value = value_of(pod.clone());
            async move { (value.await.as_deref() == Some("6")).then_some(()) }
        })
        .await;
        deployment_replicas(&deployments, "busy", 3).await;
        assert_eq!(clusters.get("busy").await.unwrap().spec.replicas, Some(3));
        wait_for("three chat-nodes ready", || async {
            (ready_pods(&client, &ns, selector).await.len() == 3).then_some(())
        })
        .await;

        // The connections close: back to minReplicas. (The policy's one pod per minute counts
        // from the pod count a minute ago, at most 2 here, so the autoscaler may go straight to 1.)
        stop.cancel();
        for client in clients {
            client.await.unwrap().expect("each connection stayed open until the test closed it");
        }
        deployment_replicas(&deployments, "busy", 1).await;
        assert_eq!(clusters.get("busy").await.unwrap().spec.replicas, Some(1));

        drop(metrics);
        operator.stop().await;
    })
    .await;
}
