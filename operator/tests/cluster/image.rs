//! The chat-node image across operator upgrades: a ChatCluster without `spec.image` keeps the
//! image it was first given when an operator with another default takes over (also when its
//! status is lost), new clusters get the new default, and `spec.imagePolicy: followOperator`
//! or `spec.image` moves it on request.

use chat_operator::api::ChatCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::*;

const OLD_DEFAULT: &str = "registry.example.invalid/chat-node:1.0.0";
const NEW_DEFAULT: &str = "registry.example.invalid/chat-node:2.0.0";

fn image_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap()
}

async fn deployment(client: &Client, ns: &str, name: &str) -> Deployment {
    Api::namespaced(client.clone(), ns).get(name).await.unwrap()
}

async fn recorded_image(client: &Client, ns: &str, name: &str) -> Option<String> {
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), ns);
    api.get(name).await.ok()?.status?.node_image
}

/// Waits until the Deployment runs `image` and the status records it.
async fn wait_for_image(client: &Client, ns: &str, name: &str, image: &str) {
    wait_for(&format!("{name} on {image}"), || async {
        let d: Deployment = Api::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .ok()??;
        (image_of(&d) == image && recorded_image(client, ns, name).await.as_deref() == Some(image))
            .then_some(())
    })
    .await;
}

async fn create(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), ns);
    let cluster: ChatCluster = serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &cluster).await.unwrap();
}

async fn merge_spec(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": spec })),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn operator_upgrade_keeps_the_chat_node_image_until_asked() {
    let cp = control_plane().await;
    cp.with_temp_ns("image", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let old = start_operator_with(cp, &ns, &["--default-node-image", OLD_DEFAULT]).await;
        create(&client, &ns, "kept", json!({})).await;
        wait_for_image(&client, &ns, "kept", OLD_DEFAULT).await;
        old.stop().await;

        // An operator with a new default takes over: nothing about "kept" moves.
        let before = deployment(&client, &ns, "kept").await;
        // spec.image below names a registry of its own: allowed explicitly.
        let new = start_operator_with(
            cp,
            &ns,
            &[
                "--default-node-image",
                NEW_DEFAULT,
                "--allowed-image-prefixes",
                "registry.example.invalid/",
            ],
        )
        .await;
        new.wait_for_more_runs(3).await;
        let after = deployment(&client, &ns, "kept").await;
        assert_eq!(
            before.spec.as_ref().unwrap().template,
            after.spec.as_ref().unwrap().template,
            "the new operator changed the chat-node pod template"
        );
        assert_eq!(before.metadata.generation, after.metadata.generation);
        assert_eq!(
            recorded_image(&client, &ns, "kept").await.as_deref(),
            Some(OLD_DEFAULT)
        );

        // Status lost (or written by an operator that did not record the image yet): the
        // image the Deployment runs is kept and recorded again.
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        clusters
            .patch_status(
                "kept",
                &PatchParams::default(),
                &Patch::Json::<()>(
                    serde_json::from_value(json!([{"op": "remove", "path": "/status/nodeImage"}]))
                        .unwrap(),
                ),
            )
            .await
            .expect("drop status.nodeImage");
        wait_for_image(&client, &ns, "kept", OLD_DEFAULT).await;
        new.wait_for_more_runs(2).await;
        let after_loss = deployment(&client, &ns, "kept").await;
        assert_eq!(before.metadata.generation, after_loss.metadata.generation);
        assert_eq!(image_of(&after_loss), OLD_DEFAULT);

        // A new ChatCluster gets the new operator's default.
        create(&client, &ns, "fresh", json!({})).await;
        wait_for_image(&client, &ns, "fresh", NEW_DEFAULT).await;

        // Opt in: followOperator adopts the new default (a rollout), with an Event saying so.
        merge_spec(
            &client,
            &ns,
            "kept",
            json!({"imagePolicy": "followOperator"}),
        )
        .await;
        wait_for_image(&client, &ns, "kept", NEW_DEFAULT).await;
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        wait_for("a NodeImageChanged Event", || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("NodeImageChanged")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("kept")
                })
                .filter(|e| {
                    let note = e.note.as_deref().unwrap_or_default();
                    note.contains(OLD_DEFAULT) && note.contains(NEW_DEFAULT)
                })
        })
        .await;

        // Back to pinned: stays on what it followed. spec.image always wins.
        merge_spec(&client, &ns, "kept", json!({"imagePolicy": "pinned"})).await;
        new.wait_for_more_runs(2).await;
        assert_eq!(
            image_of(&deployment(&client, &ns, "kept").await),
            NEW_DEFAULT
        );
        merge_spec(
            &client,
            &ns,
            "kept",
            json!({"image": "registry.example.invalid/mine:3"}),
        )
        .await;
        wait_for_image(&client, &ns, "kept", "registry.example.invalid/mine:3").await;

        // No default was written into anyone's spec.
        for name in ["fresh"] {
            let c = clusters.get(name).await.unwrap();
            assert_eq!(c.spec.image, None, "{name}: spec.image defaulted");
            assert_eq!(
                c.spec.image_policy, None,
                "{name}: spec.imagePolicy defaulted"
            );
        }
        new.stop().await;
    })
    .await;
}
