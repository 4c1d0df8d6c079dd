//! The chat-node server API in a ChatCluster: the key Secret `<name>-api-key` generated once
//! under the operator's field manager and kept across reconciles (a user's rotation included),
//! mounted into chat-nodes with `CHAT_API_KEY_FILE` pointing at it, the ClusterIP Service
//! `<name>-api` on 9092, and an Ingress that routes only the client Service.

use std::collections::BTreeMap;

use chat_operator::api::ChatCluster;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::*;

fn key_of(secret: &Secret) -> Vec<u8> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get("api-key"))
        .map(|k| k.0.clone())
        .expect("the Secret holds `api-key`")
}

#[tokio::test]
async fn api_key_secret_service_and_mount() {
    let cp = control_plane().await;
    cp.with_temp_ns("srvapi", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let operator = start_operator(cp, &ns).await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let cluster: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": "talk"},
            "spec": {"anonymous": true, "ingress": {"host": "chat.example.com"}}}))
        .unwrap();
        clusters
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap();

        // The key: generated, 40 alphanumerics, written by chat-operator, owned by the cluster.
        let secret: Secret = wait_for_object(&client, &ns, "talk-api-key").await;
        let key = key_of(&secret);
        assert_eq!(key.len(), 40);
        assert!(key.iter().all(u8::is_ascii_alphanumeric));
        let managers: Vec<_> = secret
            .managed_fields()
            .iter()
            .filter_map(|f| f.manager.as_deref())
            .collect();
        assert_eq!(managers, ["chat-operator"]);
        assert_eq!(secret.owner_references()[0].name, "talk");

        // The Service: ClusterIP, port 9092 `api`, selecting the chat-nodes.
        let service: Service = wait_for_object(&client, &ns, "talk-api").await;
        let spec = service.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let port = &spec.ports.unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("api"), 9092));
        assert_eq!(
            spec.selector
                .unwrap()
                .get("app.kubernetes.io/instance")
                .map(String::as_str),
            Some("talk")
        );

        // The pods: the key file mounted from the Secret, the API port, the flag's env.
        let deployment: Deployment = wait_for_object(&client, &ns, "talk").await;
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        let env: BTreeMap<_, _> = container
            .env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)))
            .collect();
        assert_eq!(env["CHAT_API_KEY_FILE"], "/etc/chat-node/api/api-key");
        assert_eq!(env["CHAT_API_LISTEN"], "0.0.0.0:9092");
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "api-key")
            .expect("an api-key volume");
        assert_eq!(
            volume.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("talk-api-key")
        );
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "api-key")
            .expect("the api-key volume mounted");
        assert_eq!(mount.mount_path, "/etc/chat-node/api");
        assert!(
            container
                .ports
                .iter()
                .flatten()
                .any(|p| p.name.as_deref() == Some("api") && p.container_port == 9092)
        );

        // The Ingress routes the client Service only, never the API.
        let ingress: Ingress = wait_for_object(&client, &ns, "talk").await;
        let backends: Vec<String> = ingress
            .spec
            .unwrap()
            .rules
            .into_iter()
            .flatten()
            .flat_map(|r| r.http.map(|h| h.paths).unwrap_or_default())
            .filter_map(|p| p.backend.service.map(|s| s.name))
            .collect();
        assert!(!backends.is_empty());
        assert!(backends.iter().all(|b| b == "talk"), "{backends:?}");

        // Kept across reconciles, spec changes included.
        let patch = Patch::Merge(json!({"spec": {"replicas": 3}}));
        clusters
            .patch("talk", &PatchParams::default(), &patch)
            .await
            .unwrap();
        operator.wait_for_more_runs(3).await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let again = secrets.get("talk-api-key").await.unwrap();
        assert_eq!(key_of(&again), key, "the API key was regenerated");
        assert_eq!(again.resource_version(), secret.resource_version());

        // A user's rotation stands: the operator never writes the Secret back.
        let rotated = "rotated-by-the-user-0123456789";
        let patch = Patch::Merge(json!({"data": {"api-key": ByteString(rotated.into())}}));
        secrets
            .patch("talk-api-key", &PatchParams::default(), &patch)
            .await
            .unwrap();
        operator.wait_for_more_runs(3).await;
        assert_eq!(
            key_of(&secrets.get("talk-api-key").await.unwrap()),
            rotated.as_bytes()
        );

        // A deleted Secret is made again, with a new key.
        secrets
            .delete("talk-api-key", &DeleteParams::default())
            .await
            .unwrap();
        let remade = wait_for("a new talk-api-key", || async {
            let s = secrets.get_opt("talk-api-key").await.ok()??;
            (s.uid() != secret.uid()).then_some(s)
        })
        .await;
        let new_key = key_of(&remade);
        assert_eq!(new_key.len(), 40);
        assert_ne!(new_key, key);
        operator.stop().await;
    })
    .await;
}
