//! An operator watching a list of namespaces (`--namespace a,b`) with its rules bound in those
//! namespaces only (a RoleBinding in each, nothing cluster-wide): it reconciles a ChatCluster
//! in each, and one in a third namespace is left alone. What the chart's Role per watched
//! namespace relies on.

use chat_operator::api::ChatCluster;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use crate::support::*;

async fn create(client: &Client, ns: &str, name: &str) {
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), ns);
    let cluster: ChatCluster = serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
        "metadata": {"name": name}, "spec": {},
    }))
    .unwrap();
    api.create(&PostParams::default(), &cluster).await.unwrap();
}

#[tokio::test]
async fn an_operator_watching_two_namespaces_needs_rights_in_those_only() {
    let cp = control_plane().await;
    cp.with_temp_ns("watch-a", |client, a| async move {
        cp.with_temp_ns("watch-b", |_, b| async move {
            cp.with_temp_ns("watch-c", |_, c| async move {
                grant_operator_rbac(&client, &a).await;
                bind_operator_rules(&client, &b, &a).await;
                let list = format!("{a},{b}");
                let operator = start_operator_with(cp, &a, &["--namespace", &list]).await;
                for ns in [&a, &b, &c] {
                    create(&client, ns, "chat").await;
                }
                for ns in [&a, &b] {
                    let deployment: Deployment = wait_for_object(&client, ns, "chat").await;
                    assert_eq!(deployment.metadata.namespace.as_deref(), Some(ns.as_str()));
                }
                // Several more reconciles (1 s resync): still nothing in the third namespace.
                operator.wait_for_more_runs(4).await;
                let in_c = Api::<Deployment>::namespaced(client.clone(), &c)
                    .list(&ListParams::default())
                    .await
                    .unwrap();
                assert!(in_c.items.is_empty(), "the operator touched {c}");
                operator.stop().await;
            })
            .await
        })
        .await
    })
    .await;
}
