//! `status.endpoint` of an Ingress without a host follows the address the ingress controller
//! publishes in the Ingress's status. No ingress controller runs here: the test writes that
//! status as one would, through the Ingress's status subresource.

use std::time::Duration;

use chat_operator::api::{ChatCluster, ChatClusterSpec, IngressSpec};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::support::*;

async fn endpoint(clusters: &Api<ChatCluster>, name: &str) -> Option<String> {
    clusters.get(name).await.ok()?.status?.endpoint
}

async fn wait_for_endpoint(clusters: &Api<ChatCluster>, name: &str, want: &str) {
    wait_for(&format!("status.endpoint {want}"), || async {
        (endpoint(clusters, name).await.as_deref() == Some(want)).then_some(())
    })
    .await;
}

/// How soon a watched change must show (a resync is an hour away, and other triggers, such as
/// kube-controller-manager's periodic work, come later than this).
const NOTICED_WITHIN: Duration = Duration::from_secs(20);

/// Waits until the operator is quiet, runs `change`, and expects the endpoint `want` within
/// [`NOTICED_WITHIN`]: only a watch event can have triggered that reconcile.
async fn noticed<F: std::future::Future<Output = ()>>(
    operator: &Operator,
    clusters: &Api<ChatCluster>,
    name: &str,
    change: F,
    want: &str,
) {
    wait_until_quiet(operator).await;
    change.await;
    tokio::time::timeout(NOTICED_WITHIN, wait_for_endpoint(clusters, name, want))
        .await
        .unwrap_or_else(|_| panic!("status.endpoint {want} not within {NOTICED_WITHIN:?}"));
}

/// Writes `status.loadBalancer` of Ingress `name` as an ingress controller does.
async fn publish(client: &Client, ns: &str, name: &str, load_balancer: Value) {
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
    ingresses
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": load_balancer}})),
        )
        .await
        .expect("write the Ingress status");
}

/// Waits until the operator has not run for a while (no reconcile in flight or queued).
async fn wait_until_quiet(operator: &Operator) {
    let mut last = operator.runs();
    let mut quiet_since = std::time::Instant::now();
    wait_for("the operator to go quiet", || {
        let now = operator.runs();
        if now != last {
            last = now;
            quiet_since = std::time::Instant::now();
        }
        let quiet = quiet_since.elapsed() >= Duration::from_secs(2);
        async move { quiet.then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn a_hostless_ingress_endpoint_follows_the_published_address() {
    let cp = control_plane().await;
    cp.with_temp_ns("endpoint", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        // Resync once an hour: whatever happens next is noticed through the watches.
        let operator = start_operator_with(cp, &ns, &["--resync-interval", "1h"]).await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let spec = ChatClusterSpec {
            replicas: Some(1),
            anonymous: Some(true),
            ingress: Some(IngressSpec::default()),
            ..ChatClusterSpec::default()
        };
        clusters
            .create(&PostParams::default(), &ChatCluster::new("open", spec))
            .await
            .unwrap();
        let in_cluster = format!("ws://open.{ns}.svc:8080/ws");
        let ingress: Ingress = wait_for_object(&client, &ns, "open").await;
        assert_eq!(ingress.spec.unwrap().rules.unwrap()[0].host, None);
        // Nothing published yet: the in-cluster URL.
        wait_for_endpoint(&clusters, "open", &in_cluster).await;

        let lb = |load_balancer: Value| publish(&client, &ns, "open", load_balancer);
        noticed(
            &operator,
            &clusters,
            "open",
            lb(json!({"ingress": [{"ip": "127.0.0.1"}]})),
            "ws://127.0.0.1/ws",
        )
        .await;
        noticed(
            &operator,
            &clusters,
            "open",
            lb(json!({"ingress": [{"ip": "127.0.0.1", "ports": [{"port": 8000, "protocol": "TCP"}]}]})),
            "ws://127.0.0.1:8000/ws",
        )
        .await;
        noticed(
            &operator,
            &clusters,
            "open",
            lb(json!({"ingress": [{"hostname": "lb.example.com", "ports": [{"port": 80, "protocol": "TCP"}]}]})),
            "ws://lb.example.com/ws",
        )
        .await;
        // The controller withdraws the address: back to the in-cluster URL.
        noticed(
            &operator,
            &clusters,
            "open",
            lb(json!({"ingress": null})),
            &in_cluster,
        )
        .await;
        operator.stop().await;

        // Published again, a fast-resyncing operator keeps it without writing the status again.
        publish(&client, &ns, "open", json!({"ingress": [{"ip": "127.0.0.1"}]})).await;
        let operator = start_operator(cp, &ns).await;
        wait_for_endpoint(&clusters, "open", "ws://127.0.0.1/ws").await;
        // Let the status settle (one run without a change), then several resyncs write nothing.
        let mut last = clusters.get("open").await.unwrap().resource_version();
        for _ in 0..10 {
            operator.wait_for_more_runs(1).await;
            let now = clusters.get("open").await.unwrap().resource_version();
            if now == last {
                break;
            }
            last = now;
        }
        let before = last;
        operator.wait_for_more_runs(3).await;
        let after = clusters.get("open").await.unwrap().resource_version();
        assert_eq!(before, after, "a resync wrote the ChatCluster again");
        operator.stop().await;
    })
    .await;
}
