//! `spec.channels` on the real control plane: rendered into the chat-node pod template as
//! chat-node's own JSON (`CHAT_NAMESPACES`), so a change of it changes the template and the
//! Deployment rolls the nodes; taking it away takes the variable away.

use chat_operator::api::ChatCluster;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::support::*;

fn namespaces_env(d: &Deployment) -> Option<Value> {
    let c = &d.spec.as_ref()?.template.spec.as_ref()?.containers[0];
    let value = c
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == "CHAT_NAMESPACES")?
        .value
        .as_deref()?;
    Some(serde_json::from_str(value).expect("CHAT_NAMESPACES is JSON"))
}

#[tokio::test]
async fn channel_options_reach_the_pod_template_and_a_change_rolls_it() {
    let cp = control_plane().await;
    cp.with_temp_ns("channels", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let operator = start_operator(cp, &ns).await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let channels = json!({
            "defaults": {"history": {"size": 200, "ttl": "6h"}},
            "namespaces": [
                {"name": "typing", "history": {"enabled": false}},
                {"name": "chat", "presence": true, "joinLeave": true},
            ],
        });
        let cluster: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": "rooms"},
            "spec": {"channels": channels}}))
        .unwrap();
        clusters
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let first = wait_for("CHAT_NAMESPACES in the template", || async {
            let d = deployments.get_opt("rooms").await.ok()??;
            namespaces_env(&d).map(|env| (d, env))
        })
        .await;
        assert_eq!(first.1, channels);
        let generation = first.0.metadata.generation.unwrap();

        // A change: the template changes (a new generation), which rolls the pods.
        clusters
            .patch(
                "rooms",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"channels": {"namespaces": [
                    {"name": "typing", "history": {"enabled": false}},
                    {"name": "announce", "clientPublish": false},
                ]}}})),
            )
            .await
            .unwrap();
        let changed = wait_for("the new CHAT_NAMESPACES", || async {
            let d = deployments.get_opt("rooms").await.ok()??;
            let env = namespaces_env(&d)?;
            (env["namespaces"][1]["name"] == "announce").then_some((d, env))
        })
        .await;
        assert_eq!(
            changed.1,
            json!({
                "defaults": {"history": {"size": 200, "ttl": "6h"}},
                "namespaces": [
                    {"name": "typing", "history": {"enabled": false}},
                    {"name": "announce", "clientPublish": false},
                ],
            })
        );
        assert!(changed.0.metadata.generation.unwrap() > generation);

        // Removed: no variable, chat-node's defaults again.
        clusters
            .patch(
                "rooms",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"channels": null}})),
            )
            .await
            .unwrap();
        wait_for("CHAT_NAMESPACES gone", || async {
            let d = deployments.get_opt("rooms").await.ok()??;
            namespaces_env(&d).is_none().then_some(())
        })
        .await;
        operator.stop().await;
    })
    .await;
}
